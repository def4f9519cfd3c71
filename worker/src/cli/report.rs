//! What a command prints, and the one place that decides its exit status.
//!
//! Every command returns a report: `Serialize` for `--json`, `Display` for people, both on
//! stdout. A report that says the command failed ([`Report::failure`]) also says why on
//! stderr, and the process exits 1. An error (a service unreachable, bad input) is not a
//! report: `main` prints it with its causes and exits 1 too.

use std::fmt::Display;
use std::process::ExitCode;

use serde::Serialize;

/// A command's result, as it is printed.
pub(crate) trait Report: Serialize + Display {
    /// Why the command failed, when it did: printed on stderr, and the exit status is 1.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// Prints `report` as JSON or for people and returns the exit status it calls for.
pub(crate) fn emit(report: &impl Report, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        let text = report.to_string();
        if !text.is_empty() {
            println!("{text}");
        }
    }
    Ok(match report.failure() {
        Some(why) => {
            eprintln!("{why}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    })
}
