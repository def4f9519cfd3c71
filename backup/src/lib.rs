//! Backups of every shard to one consistent point, and restores of them: pgBackRest does
//! the copying (one stanza per shard, WAL archived), this crate the orchestration.

pub mod pgbackrest;
pub mod point;
pub mod restore;
pub mod settle;
