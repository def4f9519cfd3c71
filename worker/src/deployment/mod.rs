//! What a worker checks about its deployment before it polls, and how the schema of every
//! shard is brought to this build's: [`migrate`] (apply, compare, roll back),
//! [`shard_identity`] (which deployment and index each shard belongs to), [`id_sequences`]
//! (each shard's ids in a class of their own), [`collation`] (every shard sorting text alike)
//! and [`preflight`] (the checks, each problem with its fix; see [`Problem`]).

pub mod collation;
pub mod id_sequences;
pub mod migrate;
pub mod preflight;
mod problem;
pub mod shard_identity;

pub use problem::{Problem, Refusal};
