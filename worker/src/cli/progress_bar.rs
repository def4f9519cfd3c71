//! The progress bar long-running commands (`orders import`, `orders load`) draw on stderr.

use std::time::Duration;

/// `[#####-------]  42%`, 24 cells wide.
pub(crate) fn bar(fraction: f64) -> String {
    let width = 24;
    let fraction = fraction.clamp(0.0, 1.0);
    let filled = (fraction * width as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        "-".repeat(width - filled),
        fraction * 100.0
    )
}

/// `ETA 12s` from the time spent so far, or `ETA -` before there is anything to go on.
pub(crate) fn eta(fraction: f64, elapsed: Duration) -> String {
    if fraction > 0.0 && fraction < 1.0 {
        format!(
            "ETA {:.0}s",
            elapsed.as_secs_f64() * (1.0 - fraction) / fraction
        )
    } else {
        "ETA -".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_fraction_and_the_eta_extrapolates() {
        assert_eq!(
            bar(0.5),
            format!("[{}{}]  50%", "#".repeat(12), "-".repeat(12))
        );
        assert_eq!(bar(2.0), format!("[{}] 100%", "#".repeat(24)));
        assert_eq!(eta(0.25, Duration::from_secs(10)), "ETA 30s");
        assert_eq!(eta(0.0, Duration::from_secs(10)), "ETA -");
    }
}
