//! The order steps: the Temporal activities `PlaceOrder` and `OrderLifecycle` call, each
//! safe to retry (its body runs through `orders_core::store::idempotency::run_once`).
//!
//! Start at [`order_steps`] (create, credit, confirm, status changes, the undoing of each),
//! then [`stock`] (reserving and releasing stock on each product's shard) and [`two_phase`]
//! (preparing, committing and rolling back an order's parts); [`lifecycle`] starts an
//! order's lifecycle workflow and [`search_attributes`] names what both set in visibility.

pub mod lifecycle;
pub mod order_steps;
pub mod search_attributes;
pub mod stock;
pub mod two_phase;

pub use order_steps::{
    ConfirmedOrder, CreateOrderInput, CreatedOrder, CreditInput, OrderActivities, OrderRef,
    PlacedOrder, StatusChange,
};
