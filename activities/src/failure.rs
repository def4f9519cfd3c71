//! Business rejections: the reasons an order fails that retrying cannot fix.
//!
//! Each becomes a non-retryable Temporal application failure whose *type* is the variant's
//! name, which is what clients in any language match on. Everything else (a shard that is
//! down, a dropped connection) stays a retryable error, and Temporal keeps trying.

use orders_entities::order::OrderStatus;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::ActivityError;

use crate::store::idempotency::Claim;

/// Failure type of an order whose input breaks the rules in [`crate::order_input`].
pub const INVALID_ORDER: &str = "InvalidOrder";
/// Failure type of an order for a customer id no shard knows.
pub const UNKNOWN_CUSTOMER: &str = "UnknownCustomer";
/// Failure type of an order its customer's remaining credit cannot cover.
pub const PAYMENT_DECLINED: &str = "PaymentDeclined";
/// Failure type of a step that found its order already compensated.
pub const ALREADY_COMPENSATED: &str = "AlreadyCompensated";
/// Failure type of a confirmation that found the order no longer pending.
pub const ORDER_NOT_PENDING: &str = "OrderNotPending";
/// Failure type of a status change the order's current status does not allow.
pub const INVALID_TRANSITION: &str = "InvalidTransition";
/// Failure type of an import whose file the worker cannot read.
pub const IMPORT_FILE_UNREADABLE: &str = "ImportFileUnreadable";
/// Failure type of an order for more of a product than is available.
pub const OUT_OF_STOCK: &str = "OutOfStock";
/// Failure type of an order for a product no shard stocks.
pub const UNKNOWN_PRODUCT: &str = "UnknownProduct";
/// Failure type of a two-phase part that is neither prepared nor committed at commit time.
pub const PREPARED_PART_MISSING: &str = "PreparedPartMissing";
/// Failure type of a saga whose compensation could not complete.
pub const COMPENSATION_FAILED: &str = "CompensationFailed";

/// A reason to stop the order for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The input breaks a validation rule.
    #[error("{0}")]
    InvalidOrder(String),
    /// No customer with this id exists on the shard that owns it.
    #[error("customer {customer_id} does not exist (shard {shard})")]
    UnknownCustomer { customer_id: i64, shard: usize },
    /// Reserving the order total would exceed the customer's credit limit.
    #[error(
        "payment declined: order total {total} exceeds the available credit {available} of customer {customer_id}"
    )]
    PaymentDeclined {
        customer_id: i64,
        total: rust_decimal::Decimal,
        available: rust_decimal::Decimal,
    },
    /// The saga already undid this step, so doing it now would resurrect a cancelled order.
    #[error("{step} for {what} was already compensated")]
    AlreadyCompensated { step: &'static str, what: String },
    /// ConfirmOrder found the order gone or past `pending`.
    #[error("order {order_id} cannot be confirmed from status {found:?}")]
    OrderNotPending {
        order_id: i64,
        found: Option<OrderStatus>,
    },
    /// A status change found the order in none of the statuses it applies to.
    #[error("order {order_id} is {found:?}, not one of {allowed:?}")]
    InvalidTransition {
        order_id: i64,
        found: Option<OrderStatus>,
        allowed: Vec<OrderStatus>,
    },
    /// A product's available stock cannot cover the quantity ordered.
    #[error(
        "out of stock: product {product_id} has {available} available, the order needs {requested}"
    )]
    OutOfStock {
        product_id: i64,
        requested: i32,
        available: i32,
    },
    /// No product with this id is stocked on the shard that owns it.
    #[error(
        "product {product_id} does not exist (add it with `orders product add --id {product_id} --stock N`)"
    )]
    UnknownProduct { product_id: i64 },
    /// A commit was decided, but this shard's prepared part is gone without having committed:
    /// it was rolled back outside the workflow (by hand, or by `orders recover` while the
    /// workflow could not be asked). Retrying cannot bring it back.
    #[error(
        "prepared transaction {gid} on shard {shard} is neither prepared nor committed: it was rolled back outside the workflow"
    )]
    PreparedPartMissing { gid: String, shard: usize },
    /// The worker cannot read the file an import names.
    #[error("the worker cannot read {path}: {error} (the path must exist on the worker's machine)")]
    ImportFileUnreadable { path: String, error: String },
}

impl Rejection {
    /// The Temporal failure type clients match on.
    pub fn failure_type(&self) -> &'static str {
        match self {
            Rejection::InvalidOrder(_) => INVALID_ORDER,
            Rejection::UnknownCustomer { .. } => UNKNOWN_CUSTOMER,
            Rejection::PaymentDeclined { .. } => PAYMENT_DECLINED,
            Rejection::AlreadyCompensated { .. } => ALREADY_COMPENSATED,
            Rejection::OrderNotPending { .. } => ORDER_NOT_PENDING,
            Rejection::InvalidTransition { .. } => INVALID_TRANSITION,
            Rejection::OutOfStock { .. } => OUT_OF_STOCK,
            Rejection::UnknownProduct { .. } => UNKNOWN_PRODUCT,
            Rejection::PreparedPartMissing { .. } => PREPARED_PART_MISSING,
            Rejection::ImportFileUnreadable { .. } => IMPORT_FILE_UNREADABLE,
        }
    }

    /// The non-retryable application failure carrying this rejection.
    pub fn into_application_failure(self) -> ApplicationFailure {
        non_retryable(self.failure_type(), self.to_string())
    }

    /// The activity error that reports this rejection to the workflow without retries.
    pub fn into_activity_error(self) -> ActivityError {
        ActivityError::application(self.into_application_failure())
    }
}

/// What a forward step does with the idempotency key it claimed: `Some(result)` if it
/// already ran (return that), `None` to do the work, and `AlreadyCompensated` if a
/// compensation undid it first (doing it now would resurrect what was undone).
pub fn already_done(
    claim: Claim,
    step: &'static str,
    what: &str,
) -> Result<Option<serde_json::Value>, ActivityError> {
    match claim {
        Claim::Done(result) => Ok(Some(result)),
        Claim::New => Ok(None),
        Claim::Compensated => Err(Rejection::AlreadyCompensated {
            step,
            what: what.to_owned(),
        }
        .into_activity_error()),
    }
}

/// A non-retryable application failure of type `failure_type`.
pub fn non_retryable(failure_type: &str, message: String) -> ApplicationFailure {
    ApplicationFailure::builder(message)
        .type_name(failure_type.to_owned())
        .non_retryable(true)
        .build()
}
