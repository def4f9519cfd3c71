//! `orders load` run as a separate process next to a test, as a user runs it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::TestApp;

/// A running `orders load`, killed if the test ends before it does (a panic must not leave
/// it waiting forever for a worker that is gone).
pub(crate) struct LoadProcess {
    child: std::process::Child,
    report_file: std::path::PathBuf,
}

impl LoadProcess {
    /// Starts `orders` orders in `consistency`, `concurrency` in flight, over its own pool of
    /// 8 customers and 6 products holding `stock` each.
    pub(crate) fn start(
        app: &TestApp,
        consistency: &str,
        orders: u64,
        concurrency: usize,
        stock: i32,
    ) -> Self {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let report_file = app
            .worker_log()
            .with_extension(format!("load-{consistency}-{run}.json"));
        let child = app
            .orders_command()
            .args(["load", "--orders", &orders.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--consistency", consistency])
            .args(["--customers", "8", "--products", "6"])
            .args(["--stock", &stock.to_string(), "--json"])
            .stdout(std::fs::File::create(&report_file).expect("report file"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("orders load starts");
        Self { child, report_file }
    }

    /// Waits up to `limit` for the load to succeed, and returns its JSON report.
    pub(crate) async fn report(mut self, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self
                .child
                .try_wait()
                .expect("orders load can be waited for")
            {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the load did not finish within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(status.success(), "orders load failed ({status})");
        serde_json::from_slice(&std::fs::read(&self.report_file).expect("the report was written"))
            .expect("orders load --json prints JSON")
    }
}

impl Drop for LoadProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
