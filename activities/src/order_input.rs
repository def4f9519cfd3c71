//! PlaceOrder's input, parsed and validated in one place.
//!
//! The workflow receives raw JSON (so a malformed payload fails the order with
//! `InvalidOrder` instead of wedging the workflow task) and turns it into a [`ValidOrder`]
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

/// Why an order's input was refused. The message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid order: {0}")]
pub struct InvalidOrder(pub String);

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

/// How an order's writes across shards are kept consistent (see README, "Consistency").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// One local transaction per step; a failure runs compensations in reverse.
    #[default]
    Saga,
    /// Every shard's part is prepared (`PREPARE TRANSACTION`), then all commit or none.
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
        let raw: RawOrder = serde_json::from_value(input.clone())
            .map_err(|e| InvalidOrder(format!("malformed input: {e}")))?;
        raw.validate()
    }
}

/// The wire shape, before any rule is checked. Unknown fields are refused so a typo such as
/// `"qty"` is reported instead of silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrder {
    customer_id: i64,
    items: Vec<RawLine>,
    #[serde(default)]
    notes: Option<String>,
    #[serde(default)]
    consistency: Consistency,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    product_id: i64,
    quantity: i64,
    /// A decimal string such as `"19.99"`; a JSON number is accepted as written.
    unit_price: serde_json::Value,
}

impl RawOrder {
    fn validate(self) -> Result<ValidOrder, InvalidOrder> {
        if self.customer_id <= 0 {
            return Err(InvalidOrder(format!(
                "customer_id must be positive, got {}",
                self.customer_id
            )));
        }
        if self.items.is_empty() {
            return Err(InvalidOrder("an order needs at least one item".into()));
        }
        if self.items.len() > MAX_ITEMS {
            return Err(InvalidOrder(format!(
                "an order may have at most {MAX_ITEMS} items, got {} (use `orders import` for bulk data)",
                self.items.len()
            )));
        }
        if let Some(notes) = &self.notes
            && notes.chars().count() > MAX_NOTES_CHARS
        {
            return Err(InvalidOrder(format!(
                "notes may be at most {MAX_NOTES_CHARS} characters"
            )));
        }
        let items = self
            .items
            .into_iter()
            .enumerate()
            .map(|(index, line)| line.validate(index))
            .collect::<Result<Vec<_>, _>>()?;
        let order = ValidOrder {
            customer_id: self.customer_id,
            items,
            notes: self.notes,
            consistency: self.consistency,
        };
        if order.total() > MAX_TOTAL {
            return Err(InvalidOrder(format!(
                "order total {} exceeds the maximum {MAX_TOTAL}",
                order.total()
            )));
        }
        Ok(order)
    }
}

impl RawLine {
    fn validate(self, index: usize) -> Result<OrderLine, InvalidOrder> {
        let at = |msg: String| InvalidOrder(format!("item {index}: {msg}"));
        if self.product_id <= 0 {
            return Err(at(format!(
                "product_id must be positive, got {}",
                self.product_id
            )));
        }
        if !(1..=MAX_QUANTITY).contains(&self.quantity) {
            return Err(at(format!(
                "quantity must be between 1 and {MAX_QUANTITY}, got {}",
                self.quantity
            )));
        }
        let unit_price = parse_price(&self.unit_price).map_err(at)?;
        Ok(OrderLine {
            product_id: self.product_id,
            quantity: self.quantity as i32,
            unit_price,
        })
    }
}

/// Parses a money amount: non-negative, at most two decimals, within NUMERIC(10,2).
pub fn parse_price(value: &serde_json::Value) -> Result<Decimal, String> {
    let text = match value {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        other => {
            return Err(format!(
                "unit_price must be a decimal string like \"19.99\", got {other}"
            ));
        }
    };
    let price = Decimal::from_str(&text)
        .map_err(|_| format!("unit_price {text:?} is not a decimal number"))?;
    check_money("unit_price", price, MAX_UNIT_PRICE)
}

/// The rule every amount of money follows: not negative, at most two decimals (cents), at
/// most `max` (what its column holds). Returns the amount with exactly two decimals.
pub fn check_money(what: &str, amount: Decimal, max: Decimal) -> Result<Decimal, String> {
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(format!("{what} must not be negative, got {amount}"));
    }
    if amount.normalize().scale() > 2 {
        return Err(format!("{what} may have at most 2 decimals, got {amount}"));
    }
    if amount > max {
        return Err(format!("{what} must be at most {max}, got {amount}"));
    }
    Ok(amount.round_dp(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order_with(item: serde_json::Value) -> serde_json::Value {
        json!({"customer_id": 42, "items": [item]})
    }

    fn rejection(input: serde_json::Value) -> String {
        ValidOrder::from_json(&input).unwrap_err().0
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
    fn malformed_json_shapes_are_refused_with_the_serde_reason() {
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
        assert!(msg.contains("qty"), "{msg}");
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
}
