//! Integration tests for the order service live in `tests/`; this crate has no library code.
