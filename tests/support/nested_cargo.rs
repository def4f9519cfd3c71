//! Running cargo from inside a test or benchmark without rebuilding what the outer cargo built.

use std::process::Command;

/// A `cargo` command (the one running these tests) cleared of what cargo sets for the
/// package under test (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...): the nested cargo would pass
/// them to build scripts, and `ring`'s reruns when `CARGO_MANIFEST_DIR` changes, which rebuilt
/// the TLS stack and the `orders` binary on every run.
pub(crate) fn cargo() -> Command {
    let mut cargo = Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*key,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
            )
        {
            cargo.env_remove(&*key);
        }
    }
    cargo
}
