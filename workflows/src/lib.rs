//! Temporal workflows of the order service.
//!
//! Workflow code here is deterministic: it only talks to the world through activities,
//! timers and the SDK's own primitives, and it never reads clocks or randomness itself.
//!
//! Start at [`place_order`] (an order, as a saga in `place_order::with_saga` or with two-phase
//! commit in `place_order::two_phase`), then [`order_lifecycle`] (after confirmation),
//! [`import_orders`] (bulk import), [`in_doubt_recovery`] and [`idempotency_retention`]
//! (maintenance), [`reshard`] (moving buckets between shards). [`saga`] is the compensation
//! mechanism and [`steps`] how each step runs (local activity or activity); [`failures`] turns an
//! activity's failure into the workflow's; [`progress`], [`search_attributes`] and [`outcomes`] are
//! how a run shows itself.

pub mod failures;
pub mod idempotency_retention;
pub mod import_orders;
pub mod in_doubt_recovery;
pub mod order_lifecycle;
pub mod outcomes;
pub mod place_order;
pub mod progress;
pub mod reshard;
pub mod saga;
pub mod search_attributes;
pub mod steps;

pub use idempotency_retention::IdempotencyRetentionWorkflow;
pub use import_orders::ImportOrdersWorkflow;
pub use in_doubt_recovery::InDoubtRecoveryWorkflow;
pub use order_lifecycle::OrderLifecycleWorkflow;
pub use place_order::PlaceOrderWorkflow;
pub use reshard::ReshardWorkflow;
