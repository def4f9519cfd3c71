//! How failures reach clients: the one list of failure types ([`FailureType`]), the business
//! rejections that retrying cannot fix ([`Rejection`]), and the error a retry-safe step's
//! body returns ([`StepError`]).
//!
//! A rejection becomes a non-retryable Temporal application failure whose *type* is a
//! [`FailureType`], which is what clients in any language match on. Everything else (a shard
//! that is down, a dropped connection) stays a retryable error, and Temporal keeps trying.

use orders_entities::order::OrderStatus;
use sea_orm::DbErr;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::ActivityError;

use crate::order_input::InvalidOrder;
use crate::shards::Shard;
use crate::store::idempotency::Compensated;

/// Every failure type a client can see, and nothing else: the wire name of each is its
/// [`as_str`](FailureType::as_str), what clients in any language match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureType {
    /// The order's input breaks the rules in [`crate::order_input`].
    InvalidOrder,
    /// The order is for a customer id no shard knows.
    UnknownCustomer,
    /// The customer's remaining credit cannot cover the order.
    PaymentDeclined,
    /// A step found its order already compensated.
    AlreadyCompensated,
    /// A confirmation found the order no longer pending.
    OrderNotPending,
    /// A status change the order's current status does not allow.
    InvalidTransition,
    /// A status change names an order id no shard holds.
    UnknownOrder,
    /// The worker cannot read the file an import names.
    ImportFileUnreadable,
    /// The order asks for more of a product than is available.
    OutOfStock,
    /// The order names a product no shard stocks.
    UnknownProduct,
    /// A two-phase part is neither prepared nor committed at commit time.
    PreparedPartMissing,
    /// A two-phase rollback found its part already committed.
    PartAlreadyCommitted,
    /// A saga's compensation could not complete: the order needs repair by hand.
    CompensationFailed,
    /// A two-phase order's phase two could not be carried out.
    TwoPhaseIncomplete,
    /// A two-phase order was planned for a shard that no longer owns some of its rows (their
    /// bucket moved before the part was prepared), and kept meeting moved buckets after
    /// planning again: it was rolled back, submit it again. PlaceOrder plans again by itself
    /// (up to 8 plans), so a client sees this only if buckets keep moving under the order.
    ShardMapChanged,
    /// A step failed for a reason that is not a business rejection (it ran out of retries).
    StepFailed,
    /// A shard a two-phase order needs did not answer for minutes. Each time it failed to
    /// answer, the order rolled back what it had prepared (releasing those rows) and tried
    /// again later; then it gave up. Nothing was written: submit it again once the shard is
    /// back.
    ShardUnavailable,
    /// A reshard request the deployment cannot carry out (another move running, a shard count
    /// it cannot reach); the message says what to do instead.
    ReshardRefused,
    /// A reshard stopped: a bucket move failed and was rolled back; the message names it.
    ReshardFailed,
}

impl FailureType {
    /// Every failure type, for documentation and tests.
    pub const ALL: [FailureType; 19] = [
        FailureType::InvalidOrder,
        FailureType::UnknownCustomer,
        FailureType::PaymentDeclined,
        FailureType::AlreadyCompensated,
        FailureType::OrderNotPending,
        FailureType::InvalidTransition,
        FailureType::UnknownOrder,
        FailureType::ImportFileUnreadable,
        FailureType::OutOfStock,
        FailureType::UnknownProduct,
        FailureType::PreparedPartMissing,
        FailureType::PartAlreadyCommitted,
        FailureType::CompensationFailed,
        FailureType::TwoPhaseIncomplete,
        FailureType::ShardMapChanged,
        FailureType::StepFailed,
        FailureType::ShardUnavailable,
        FailureType::ReshardRefused,
        FailureType::ReshardFailed,
    ];

    /// The wire name: the Temporal application failure's type.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureType::InvalidOrder => "InvalidOrder",
            FailureType::UnknownCustomer => "UnknownCustomer",
            FailureType::PaymentDeclined => "PaymentDeclined",
            FailureType::AlreadyCompensated => "AlreadyCompensated",
            FailureType::OrderNotPending => "OrderNotPending",
            FailureType::InvalidTransition => "InvalidTransition",
            FailureType::UnknownOrder => "UnknownOrder",
            FailureType::ImportFileUnreadable => "ImportFileUnreadable",
            FailureType::OutOfStock => "OutOfStock",
            FailureType::UnknownProduct => "UnknownProduct",
            FailureType::PreparedPartMissing => "PreparedPartMissing",
            FailureType::PartAlreadyCommitted => "PartAlreadyCommitted",
            FailureType::CompensationFailed => "CompensationFailed",
            FailureType::TwoPhaseIncomplete => "TwoPhaseIncomplete",
            FailureType::ShardMapChanged => "ShardMapChanged",
            FailureType::StepFailed => "StepFailed",
            FailureType::ShardUnavailable => "ShardUnavailable",
            FailureType::ReshardRefused => "ReshardRefused",
            FailureType::ReshardFailed => "ReshardFailed",
        }
    }

    /// The type with this wire name, if it is one of ours.
    pub fn from_wire(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// A non-retryable application failure of this type.
    pub fn failure(self, message: impl Into<String>) -> ApplicationFailure {
        ApplicationFailure::builder(message.into())
            .type_name(self.as_str().to_owned())
            .non_retryable(true)
            .build()
    }
}

impl std::fmt::Display for FailureType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason to stop the order for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The input breaks a validation rule.
    #[error(transparent)]
    InvalidOrder(#[from] InvalidOrder),
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
    #[error("{step} was already compensated")]
    AlreadyCompensated { step: String },
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
    /// No shard holds an order with this id (a two-phase order whose home part has not
    /// committed yet is not visible either).
    #[error(
        "order {order_id} does not exist on any shard (an order still being placed becomes visible once confirmed)"
    )]
    UnknownOrder { order_id: i64 },
    /// Imported orders are history: they move through no lifecycle.
    #[error(
        "order {order_id} was imported ({import_id}): imported orders are history and have no lifecycle"
    )]
    ImportedOrder { order_id: i64, import_id: String },
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
    /// A rollback was decided, but this shard's part had already committed.
    #[error("part {gid} on shard {shard} was already committed; it cannot be rolled back")]
    PartAlreadyCommitted { gid: String, shard: usize },
    /// The worker cannot read the file an import names.
    #[error("the worker cannot read {path}: {error}")]
    ImportFileUnreadable { path: String, error: String },
    /// A two-phase part's rows are no longer owned by the shard it was planned on: a bucket
    /// moved between the plan and the prepare. Phase two must find every part where it was
    /// prepared, so the part cannot follow the bucket: the workflow rolls the round back and
    /// plans again, and fails with this only when its rounds run out.
    #[error(
        "bucket {bucket} moved from shard {planned} to shard {owner} after order {order_id} was planned; the order was rolled back, nothing is written: submit it again"
    )]
    ShardMapChanged {
        order_id: i64,
        bucket: u16,
        planned: usize,
        owner: usize,
    },
}

impl Rejection {
    /// The Temporal failure type clients match on.
    pub fn failure_type(&self) -> FailureType {
        match self {
            Rejection::InvalidOrder(_) => FailureType::InvalidOrder,
            Rejection::UnknownCustomer { .. } => FailureType::UnknownCustomer,
            Rejection::PaymentDeclined { .. } => FailureType::PaymentDeclined,
            Rejection::AlreadyCompensated { .. } => FailureType::AlreadyCompensated,
            Rejection::OrderNotPending { .. } => FailureType::OrderNotPending,
            Rejection::InvalidTransition { .. } => FailureType::InvalidTransition,
            Rejection::UnknownOrder { .. } => FailureType::UnknownOrder,
            Rejection::ImportedOrder { .. } => FailureType::InvalidTransition,
            Rejection::OutOfStock { .. } => FailureType::OutOfStock,
            Rejection::UnknownProduct { .. } => FailureType::UnknownProduct,
            Rejection::PreparedPartMissing { .. } => FailureType::PreparedPartMissing,
            Rejection::PartAlreadyCommitted { .. } => FailureType::PartAlreadyCommitted,
            Rejection::ImportFileUnreadable { .. } => FailureType::ImportFileUnreadable,
            Rejection::ShardMapChanged { .. } => FailureType::ShardMapChanged,
        }
    }

    /// The non-retryable application failure carrying this rejection.
    pub fn into_application_failure(self) -> ApplicationFailure {
        self.failure_type().failure(self.to_string())
    }

    /// The activity error that reports this rejection to the workflow without retries.
    pub fn into_activity_error(self) -> ActivityError {
        ActivityError::application(self.into_application_failure())
    }
}

impl From<Compensated> for Rejection {
    fn from(compensated: Compensated) -> Self {
        Rejection::AlreadyCompensated {
            step: compensated.key,
        }
    }
}

/// Why the body of a retry-safe step stopped (see [`crate::store::idempotency::run_once`]).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A business rule refused the step; nothing was written. Not retried.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The shard failed; the step's transaction rolled back. Retried.
    #[error(transparent)]
    Database(#[from] DbErr),
}

impl From<Compensated> for StepError {
    fn from(compensated: Compensated) -> Self {
        StepError::Rejected(compensated.into())
    }
}

impl StepError {
    /// The activity error reporting this: a rejection as a non-retryable failure, a
    /// database error as a retryable one naming `shard`.
    pub fn on(self, shard: &Shard) -> ActivityError {
        match self {
            StepError::Rejected(rejection) => rejection.into_activity_error(),
            StepError::Database(e) => shard.error(e).into(),
        }
    }
}
