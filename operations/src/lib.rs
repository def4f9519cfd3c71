//! What maintains a deployment rather than places an order: the activities behind the
//! maintenance workflows and the commands operators run.
//!
//! - [`reshard`]: moving buckets between shards while orders flow (copy, catch up, fence,
//!   verify, cut over);
//! - [`recovery`]: resolving two-phase parts whose coordinator stopped caring;
//! - [`retention`]: deleting idempotency keys past their retention;
//! - [`import`]: bulk import of orders from a JSON Lines file.

pub mod heartbeat;
pub mod import;
pub mod recovery;
pub mod reshard;
pub mod retention;
