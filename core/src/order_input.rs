//! PlaceOrder's input, parsed and validated in one place.
//!
//! Clients build an [`OrderRequest`] (the documented JSON as a type). The workflow receives
//! raw JSON (so a malformed payload fails the order with `InvalidOrder` instead of wedging
//! the workflow task), reads it as an `OrderRequest` and validates it into a [`ValidOrder`]
//! here. This code is pure and deterministic, so it can run inside workflow code.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Most items one order may carry; bigger orders belong to the bulk import.
pub const MAX_ITEMS: usize = 1_000;
/// Largest quantity of one item.
pub const MAX_QUANTITY: i64 = 10_000;
/// Largest unit price `order_items.price NUMERIC(10,2)` can hold.
pub const MAX_UNIT_PRICE: Decimal = Decimal::from_parts(1_410_065_407, 2, 0, false, 2);
/// Largest total `orders.total_amount NUMERIC(12,2)` can hold.
pub const MAX_TOTAL: Decimal = Decimal::from_parts(3_567_587_327, 232, 0, false, 2);
/// Longest note accepted, in characters.
pub const MAX_NOTES_CHARS: usize = 2_000;

/// Why an order's input was refused. The message names the field and the rule broken, never
/// the value sent: the input is client data, and a refusal must not hand it (or a file an
/// import was pointed at) back to whoever reads the failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOrder {
    /// The JSON does not have the documented shape; says which field and what it must be.
    #[error("malformed input: {0}")]
    Malformed(String),
    #[error("customer_id must be positive")]
    CustomerIdNotPositive,
    #[error("an order needs at least one item")]
    NoItems,
    /// The count of items sent (a count, not a value sent).
    #[error(
        "an order may have at most {MAX_ITEMS} items, got {0} (use `orders import` for bulk data)"
    )]
    TooManyItems(usize),
    #[error("notes may be at most {MAX_NOTES_CHARS} characters")]
    NotesTooLong,
    /// One item breaks a rule; `index` counts from 0.
    #[error("item {index}: {problem}")]
    Item { index: usize, problem: InvalidItem },
    #[error("the order's total exceeds the maximum {MAX_TOTAL}")]
    TotalTooLarge,
}

/// Why one item of an order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidItem {
    #[error("product_id must be positive")]
    ProductIdNotPositive,
    #[error("quantity must be between 1 and {MAX_QUANTITY}")]
    QuantityOutOfRange,
    #[error(transparent)]
    Price(#[from] InvalidMoney),
}

/// Why an amount of money was refused; `what` names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMoney {
    #[error("{what} is not a decimal number (write it like \"19.99\")")]
    NotANumber { what: &'static str },
    #[error("{what} must not be negative")]
    Negative { what: &'static str },
    #[error("{what} may have at most 2 decimals")]
    TooManyDecimals { what: &'static str },
    #[error("{what} must be at most {max}")]
    TooLarge { what: &'static str, max: Decimal },
}

/// How an order's writes across shards are kept consistent (see docs/architecture.md,
/// "Consistency").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// One local transaction per step; a failure runs compensations in reverse.
    #[default]
    Saga,
    /// Every shard's part is prepared (`PREPARE TRANSACTION`), then all commit or none.
    #[cfg_attr(feature = "cli", value(name = "two_phase"))]
    TwoPhase,
}

impl Consistency {
    /// The wire name: `saga` or `two_phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Saga => "saga",
            Consistency::TwoPhase => "two_phase",
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// PlaceOrder's input, the documented JSON (docs/contract.md) as a type: what
/// `orders submit`, `orders load` and `orders dev` send, and what the workflow parses.
/// Clients in other languages send the same JSON. Unknown fields are refused, so a typo such
/// as `"qty"` is reported instead of silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub customer_id: i64,
    pub items: Vec<RequestedItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Absent in orders recorded before two-phase commit existed: those were sagas.
    #[serde(default)]
    pub consistency: Consistency,
}

/// One line of an [`OrderRequest`], before any rule is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedItem {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: WrittenPrice,
}

/// A price as the client wrote it: a decimal string such as `"19.99"`, or a JSON number read
/// as written. Sent as a string, so no float ever carries money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct WrittenPrice(String);

impl From<Decimal> for WrittenPrice {
    fn from(price: Decimal) -> Self {
        WrittenPrice(price.to_string())
    }
}

impl<'de> Deserialize<'de> for WrittenPrice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = WrittenPrice;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a decimal string like \"19.99\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<WrittenPrice, E> {
                Ok(WrittenPrice(text.trim().to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<WrittenPrice, E> {
                Ok(WrittenPrice(n.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<WrittenPrice, E> {
                Ok(WrittenPrice(n.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<WrittenPrice, E> {
                Ok(WrittenPrice(n.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Why an `--item` argument could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemSyntaxError {
    #[error("{0:?} must look like PRODUCT:QUANTITY:UNIT_PRICE, e.g. 7:2:19.99")]
    Shape(String),
    #[error("the product id in {0:?} is not a whole number")]
    ProductId(String),
    #[error("the quantity in {0:?} is not a whole number")]
    Quantity(String),
}

/// `PRODUCT:QUANTITY:UNIT_PRICE`, e.g. `7:2:19.99`, as `orders submit --item` takes it. Only
/// the syntax is checked here; the rules are the workflow's, so every client gets the same.
impl FromStr for RequestedItem {
    type Err = ItemSyntaxError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let [product, quantity, price] = text.split(':').collect::<Vec<_>>()[..] else {
            return Err(ItemSyntaxError::Shape(text.to_owned()));
        };
        Ok(RequestedItem {
            product_id: product
                .parse()
                .map_err(|_| ItemSyntaxError::ProductId(text.to_owned()))?,
            quantity: quantity
                .parse()
                .map_err(|_| ItemSyntaxError::Quantity(text.to_owned()))?,
            unit_price: WrittenPrice(price.trim().to_owned()),
        })
    }
}

/// One validated line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: i64,
    pub quantity: i32,
    pub unit_price: Decimal,
}

impl OrderLine {
    /// quantity × unit price.
    pub fn line_total(&self) -> Decimal {
        Decimal::from(self.quantity) * self.unit_price
    }
}

/// An order that passed every rule: at least one item, positive quantities, prices with at
/// most two decimals, totals that fit the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidOrder {
    pub customer_id: i64,
    pub items: Vec<OrderLine>,
    pub notes: Option<String>,
    /// Absent in orders recorded before two-phase commit existed: those were sagas.
    #[serde(default)]
    pub consistency: Consistency,
}

impl ValidOrder {
    /// Σ quantity × unit price, exact.
    pub fn total(&self) -> Decimal {
        self.items.iter().map(OrderLine::line_total).sum()
    }

    /// Parses and validates PlaceOrder's JSON argument.
    pub fn from_json(input: &serde_json::Value) -> Result<Self, InvalidOrder> {
        OrderRequest::deserialize(input)
            .map_err(|_| InvalidOrder::Malformed(shape_problem(input)))?
            .validate()
    }
}

impl OrderRequest {
    /// Checks every rule and returns the order they let through.
    pub fn validate(self) -> Result<ValidOrder, InvalidOrder> {
        if self.customer_id <= 0 {
            return Err(InvalidOrder::CustomerIdNotPositive);
        }
        if self.items.is_empty() {
            return Err(InvalidOrder::NoItems);
        }
        if self.items.len() > MAX_ITEMS {
            return Err(InvalidOrder::TooManyItems(self.items.len()));
        }
        if let Some(notes) = &self.notes
            && notes.chars().count() > MAX_NOTES_CHARS
        {
            return Err(InvalidOrder::NotesTooLong);
        }
        let items = self
            .items
            .into_iter()
            .enumerate()
            .map(|(index, line)| {
                line.validate()
                    .map_err(|problem| InvalidOrder::Item { index, problem })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let order = ValidOrder {
            customer_id: self.customer_id,
            items,
            notes: self.notes,
            consistency: self.consistency,
        };
        if order.total() > MAX_TOTAL {
            return Err(InvalidOrder::TotalTooLarge);
        }
        Ok(order)
    }
}

impl RequestedItem {
    fn validate(self) -> Result<OrderLine, InvalidItem> {
        if self.product_id <= 0 {
            return Err(InvalidItem::ProductIdNotPositive);
        }
        if !(1..=MAX_QUANTITY).contains(&self.quantity) {
            return Err(InvalidItem::QuantityOutOfRange);
        }
        Ok(OrderLine {
            product_id: self.product_id,
            quantity: self.quantity as i32,
            unit_price: parse_price(&self.unit_price.0)?,
        })
    }
}

/// Parses a unit price: non-negative, at most two decimals, within NUMERIC(10,2).
pub fn parse_price(text: &str) -> Result<Decimal, InvalidMoney> {
    let price =
        Decimal::from_str(text).map_err(|_| InvalidMoney::NotANumber { what: "unit_price" })?;
    check_money("unit_price", price, MAX_UNIT_PRICE)
}

/// The rule every amount of money follows: not negative, at most two decimals (cents), at
/// most `max` (what its column holds). Returns the amount with exactly two decimals.
pub fn check_money(
    what: &'static str,
    amount: Decimal,
    max: Decimal,
) -> Result<Decimal, InvalidMoney> {
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(InvalidMoney::Negative { what });
    }
    if amount.normalize().scale() > 2 {
        return Err(InvalidMoney::TooManyDecimals { what });
    }
    if amount > max {
        return Err(InvalidMoney::TooLarge { what, max });
    }
    Ok(amount.round_dp(2))
}

/// Fields of [`OrderRequest`] and [`RequestedItem`], as the shape messages list them.
const ORDER_FIELDS: [&str; 4] = ["customer_id", "items", "notes", "consistency"];
const ITEM_FIELDS: [&str; 3] = ["product_id", "quantity", "unit_price"];

/// The first field of `input` that does not fit [`OrderRequest`], and what it must be. serde
/// has already refused `input`, but its messages quote what was sent (`invalid type: string
/// "…"`, `unknown field `…``), so the shape is walked again here to say it in our words.
fn shape_problem(input: &serde_json::Value) -> String {
    let Some(order) = input.as_object() else {
        return "the input must be a JSON object".into();
    };
    if let Some(problem) = unknown_field("the order", order, &ORDER_FIELDS)
        .or_else(|| whole_number(order, "customer_id", "customer_id"))
    {
        return problem;
    }
    let Some(items) = order.get("items") else {
        return "items is missing".into();
    };
    let Some(items) = items.as_array() else {
        return "items must be a list of items".into();
    };
    for (index, item) in items.iter().enumerate() {
        let at = format!("items[{index}]");
        let Some(item) = item.as_object() else {
            return format!("{at} must be an object");
        };
        let problem = unknown_field(&at, item, &ITEM_FIELDS)
            .or_else(|| whole_number(item, "product_id", &format!("{at}.product_id")))
            .or_else(|| whole_number(item, "quantity", &format!("{at}.quantity")));
        if let Some(problem) = problem {
            return problem;
        }
        match item.get("unit_price") {
            None => return format!("{at}.unit_price is missing"),
            Some(price) if WrittenPrice::deserialize(price).is_err() => {
                return format!(
                    "{at}.unit_price must be a decimal string like \"19.99\" or a number"
                );
            }
            Some(_) => {}
        }
    }
    if order
        .get("notes")
        .is_some_and(|notes| !(notes.is_string() || notes.is_null()))
    {
        return "notes must be a string".into();
    }
    if order
        .get("consistency")
        .is_some_and(|c| Consistency::deserialize(c).is_err())
    {
        return "consistency must be \"saga\" or \"two_phase\"".into();
    }
    "the input does not have the documented shape (docs/contract.md)".into()
}

/// A key of `object` that is not among `fields`, named by where it is, not by itself.
fn unknown_field(
    at: &str,
    object: &serde_json::Map<String, serde_json::Value>,
    fields: &[&str],
) -> Option<String> {
    object
        .keys()
        .any(|key| !fields.contains(&key.as_str()))
        .then(|| {
            format!(
                "{at} has an unknown field (its fields are {})",
                fields.join(", ")
            )
        })
}

/// Whether `object[field]` is missing or not a whole number that fits 64 bits.
fn whole_number(
    object: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    path: &str,
) -> Option<String> {
    match object.get(field) {
        None => Some(format!("{path} is missing")),
        Some(value) if value.as_i64().is_none() => Some(format!("{path} must be a whole number")),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order_with(item: serde_json::Value) -> serde_json::Value {
        json!({"customer_id": 42, "items": [item]})
    }

    fn rejection(input: serde_json::Value) -> String {
        ValidOrder::from_json(&input).unwrap_err().to_string()
    }

    #[test]
    fn the_documented_example_is_valid_and_totals_exactly() {
        let order = ValidOrder::from_json(&json!({
            "customer_id": 42,
            "items": [{"product_id": 7, "quantity": 2, "unit_price": "19.99"}],
            "notes": "optional"
        }))
        .unwrap();
        assert_eq!(order.total().to_string(), "39.98");
        assert_eq!(order.notes.as_deref(), Some("optional"));
    }

    #[test]
    fn a_json_number_price_is_read_as_written() {
        let order = ValidOrder::from_json(&order_with(
            json!({"product_id": 7, "quantity": 3, "unit_price": 0.1}),
        ))
        .unwrap();
        assert_eq!(order.total().to_string(), "0.3");
    }

    #[test]
    fn an_order_without_items_is_refused() {
        assert!(rejection(json!({"customer_id": 42, "items": []})).contains("at least one item"));
    }

    #[test]
    fn zero_and_negative_quantities_are_refused() {
        for quantity in [0, -1] {
            let msg = rejection(order_with(
                json!({"product_id": 7, "quantity": quantity, "unit_price": "1.00"}),
            ));
            assert!(msg.contains("quantity"), "{msg}");
        }
    }

    #[test]
    fn a_price_with_three_decimals_is_refused() {
        let msg = rejection(order_with(
            json!({"product_id": 7, "quantity": 1, "unit_price": "19.999"}),
        ));
        assert!(msg.contains("at most 2 decimals"), "{msg}");
    }

    #[test]
    fn trailing_zeros_do_not_count_as_decimals() {
        let order = ValidOrder::from_json(&order_with(
            json!({"product_id": 7, "quantity": 1, "unit_price": "19.9000"}),
        ))
        .unwrap();
        assert_eq!(order.items[0].unit_price.to_string(), "19.90");
    }

    #[test]
    fn a_negative_price_is_refused() {
        assert!(
            rejection(order_with(
                json!({"product_id": 7, "quantity": 1, "unit_price": "-0.01"})
            ))
            .contains("negative")
        );
    }

    #[test]
    fn a_price_that_does_not_fit_the_column_is_refused() {
        assert!(
            rejection(order_with(
                json!({"product_id": 7, "quantity": 1, "unit_price": "100000000.00"})
            ))
            .contains("at most")
        );
    }

    #[test]
    fn malformed_json_shapes_are_refused_naming_the_field() {
        for input in [
            json!("not an object"),
            json!({"customer_id": "42", "items": []}),
            json!({"items": []}),
        ] {
            assert!(rejection(input).starts_with("malformed input"));
        }
    }

    #[test]
    fn a_misspelt_field_is_refused_rather_than_ignored() {
        let msg = rejection(order_with(
            json!({"product_id": 7, "qty": 1, "unit_price": "1.00"}),
        ));
        assert!(
            msg.contains("items[0]") && msg.contains("unknown field"),
            "{msg}"
        );
        assert!(
            msg.contains("quantity"),
            "the allowed fields are listed: {msg}"
        );
    }

    #[test]
    fn a_refusal_names_the_field_and_the_rule_never_what_the_client_sent() {
        let item = json!({"product_id": 7, "quantity": 1, "unit_price": "1.00"});
        for (input, names) in [
            (
                json!({"customer_id": "SECRET", "items": [item]}),
                "customer_id must be a whole number",
            ),
            (
                json!({"customer_id": 1.5, "items": [item]}),
                "customer_id must be a whole number",
            ),
            (
                json!({"customer_id": 1, "items": [item], "SECRET": 1}),
                "unknown field",
            ),
            (json!({"items": [item]}), "customer_id is missing"),
            (
                json!({"customer_id": 1, "items": "SECRET"}),
                "items must be a list",
            ),
            (
                json!({"customer_id": 1, "items": ["SECRET"]}),
                "items[0] must be an object",
            ),
            (
                json!({"customer_id": 1, "items": [item, {"product_id": "SECRET", "quantity": 1, "unit_price": "1"}]}),
                "items[1].product_id must be a whole number",
            ),
            (
                json!({"customer_id": 1, "items": [{"product_id": 7, "quantity": 1, "unit_price": "SECRET"}]}),
                "unit_price is not a decimal number",
            ),
            (
                json!({"customer_id": 1, "items": [{"product_id": 7, "quantity": 1, "unit_price": ["SECRET"]}]}),
                "items[0].unit_price must be",
            ),
            (
                json!({"customer_id": 1, "items": [item], "notes": 7}),
                "notes must be a string",
            ),
            (
                json!({"customer_id": 1, "items": [item], "consistency": "SECRET"}),
                "consistency must be",
            ),
            (json!("SECRET"), "must be a JSON object"),
            (
                json!({"customer_id": -987654321, "items": [item]}),
                "customer_id must be positive",
            ),
            (
                json!({"customer_id": 1, "items": [{"product_id": -987654321, "quantity": 1, "unit_price": "1"}]}),
                "product_id must be positive",
            ),
            (
                json!({"customer_id": 1, "items": [{"product_id": 7, "quantity": 987654321, "unit_price": "1"}]}),
                "quantity must be between",
            ),
            (
                json!({"customer_id": 1, "items": [{"product_id": 7, "quantity": 1, "unit_price": "-987654321"}]}),
                "must not be negative",
            ),
        ] {
            let msg = rejection(input.clone());
            assert!(msg.contains(names), "{input}: {msg:?} should say {names:?}");
            assert!(
                !msg.contains("SECRET") && !msg.contains("987654321"),
                "{input}: {msg:?} repeats what the client sent"
            );
        }
    }

    #[test]
    fn an_oversized_order_points_to_the_bulk_import() {
        let items: Vec<_> = (0..=MAX_ITEMS)
            .map(|_| json!({"product_id": 1, "quantity": 1, "unit_price": "1.00"}))
            .collect();
        assert!(rejection(json!({"customer_id": 1, "items": items})).contains("orders import"));
    }

    #[test]
    fn the_largest_allowed_order_fits_numeric_12_2() {
        assert_eq!(MAX_TOTAL.to_string(), "9999999999.99");
        assert_eq!(MAX_UNIT_PRICE.to_string(), "99999999.99");
    }

    #[test]
    fn a_price_that_is_neither_text_nor_number_is_refused_as_malformed() {
        let msg = rejection(order_with(
            json!({"product_id": 7, "quantity": 1, "unit_price": true}),
        ));
        assert!(msg.contains("a decimal string like"), "{msg}");
    }

    #[test]
    fn a_request_built_by_a_client_is_the_documented_json() {
        let request = OrderRequest {
            customer_id: 42,
            items: vec!["7:2:19.99".parse().unwrap()],
            notes: None,
            consistency: Consistency::TwoPhase,
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            json!({"customer_id": 42, "items": [{"product_id": 7, "quantity": 2, "unit_price": "19.99"}], "consistency": "two_phase"})
        );
        assert_eq!(
            ValidOrder::from_json(&json).unwrap().total().to_string(),
            "39.98"
        );
    }

    #[test]
    fn an_item_argument_that_is_not_product_quantity_price_is_refused() {
        assert!(matches!(
            "7:2".parse::<RequestedItem>(),
            Err(ItemSyntaxError::Shape(_))
        ));
        assert!(matches!(
            "x:2:1.00".parse::<RequestedItem>(),
            Err(ItemSyntaxError::ProductId(_))
        ));
    }
}
