//! What the deployment checks and the migration runner report: a problem with its fix, and
//! the refusal that lists them. Its own module so that `migrate` and `preflight`, which both
//! report problems, do not depend on each other for it.

use std::fmt;

/// One thing wrong with the deployment, and what fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

/// Why the worker will not start: every problem found, each with its fix.
#[derive(Debug, thiserror::Error)]
pub struct Refusal(pub Vec<Problem>);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(
            f,
            "the worker did not start: {count} problem{} with this deployment",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.0 {
            write!(f, "\n  - {}\n    fix: {}", problem.what, problem.fix)?;
        }
        Ok(())
    }
}
