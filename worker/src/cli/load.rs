//! `orders load`: places many orders at once through PlaceOrder and measures them.
//!
//! It makes its own pool (customers with room on their credit, products with stock) so it
//! never disturbs existing data, then keeps `concurrency` orders in flight until `orders`
//! have finished, drawing a progress bar. The summary gives orders/s, latency percentiles
//! (start of the workflow to its result) and failures by reason. Orders are pseudo-random
//! from `seed`, so a run can be repeated exactly.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use orders_core::store::customers::NewCustomer;
use orders_core::{Consistency, OrderRequest, RequestedItem, Shards};
use rust_decimal::Decimal;
use serde::Serialize;
use temporalio_client::Client;

use crate::cli::catalog::customers;
use crate::cli::catalog::products;
use crate::cli::progress_bar::{bar, eta};
use crate::cli::report::Report;
use crate::client::{self, OrderOutcome};

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub orders: u64,
    pub concurrency: usize,
    pub consistency: Consistency,
    pub customers: usize,
    pub products: usize,
    /// Stock each pool product starts with.
    pub stock: i32,
    pub seed: u64,
    /// Prefix of the workflow ids.
    pub run_id: String,
}

/// How one order of the load ended.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedOrder {
    pub workflow_id: String,
    /// `placed`, `failed`, `cancelled`, `other`, or `client_error` when this client could
    /// not start the order or learn its outcome (the order itself may well have completed).
    pub outcome: &'static str,
    pub order_id: Option<i64>,
    pub failure_type: Option<String>,
    /// What went wrong on the client's side, for `client_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_error: Option<String>,
    pub latency_ms: f64,
}

const CLIENT_ERROR: &str = "client_error";

/// The summary `orders load` prints.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub consistency: Consistency,
    pub orders: u64,
    pub placed: u64,
    /// Order outcomes other than placed, by failure type.
    pub failures: BTreeMap<String, u64>,
    /// Orders this client could not start or follow; not counted as order failures, nor in
    /// the latencies.
    pub client_errors: u64,
    pub elapsed_secs: f64,
    pub orders_per_sec: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub customers: Vec<i64>,
    pub products: Vec<i64>,
    pub results: Vec<LoadedOrder>,
}

/// xorshift64*: reproducible pseudo-random orders without a dependency. Also drives the
/// failover benchmark's load, so both draw orders alike. Seed it with an odd number.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Creates the load's customers and products.
async fn make_pool(shards: &Shards, plan: &LoadPlan) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    let mut customer_ids = Vec::with_capacity(plan.customers);
    for n in 0..plan.customers {
        let customer = customers::add(
            shards,
            NewCustomer {
                id: None,
                first_name: "Load".to_owned(),
                last_name: format!("{} {n}", plan.run_id),
                email: format!("load-{}-{n}@example.com", plan.run_id),
                credit_limit: Decimal::new(1_000_000_000, 2),
            },
        )
        .await?;
        customer_ids.push(customer.id);
    }
    let first = products::next_free_id(shards).await?;
    let mut product_ids = Vec::with_capacity(plan.products);
    for id in first..first + plan.products as i64 {
        products::add(
            shards,
            id,
            Some(&format!("load {}", plan.run_id)),
            plan.stock,
        )
        .await?;
        product_ids.push(id);
    }
    Ok((customer_ids, product_ids))
}

/// The next order: 1–3 lines of 1–3 units at 1.00–99.99.
fn order_request(
    rng: &mut Rng,
    plan: &LoadPlan,
    customers: &[i64],
    products: &[i64],
) -> OrderRequest {
    let customer_id = customers[rng.below(customers.len() as u64) as usize];
    let lines = 1 + rng.below(3);
    let items = (0..lines)
        .map(|_| {
            let product_id = products[rng.below(products.len() as u64) as usize];
            let cents = 100 + rng.below(9_900) as i64;
            RequestedItem {
                product_id,
                quantity: 1 + rng.below(3) as i64,
                unit_price: Decimal::new(cents, 2).into(),
            }
        })
        .collect();
    OrderRequest {
        customer_id,
        items,
        notes: None,
        consistency: plan.consistency,
    }
}

/// The `p`th percentile (0–100) of `sorted_ms`, nearest rank; 0 when empty.
pub(crate) fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_ms.len() as f64).ceil() as usize;
    sorted_ms[rank.clamp(1, sorted_ms.len()) - 1]
}

/// Runs the load and returns its report; the bar goes to stderr when `progress` is set.
pub async fn run(
    client: &Client,
    task_queue: &str,
    shards: &Shards,
    plan: &LoadPlan,
    progress: bool,
) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(plan.orders > 0, "--orders must be at least 1");
    anyhow::ensure!(plan.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        plan.customers > 0 && plan.products > 0,
        "the pool needs at least one customer and one product"
    );
    let (customer_ids, product_ids) = make_pool(shards, plan)
        .await
        .context("cannot create the load's customers and products")?;
    let mut rng = Rng(plan.seed | 1);
    let requests: Vec<(String, OrderRequest)> = (0..plan.orders)
        .map(|n| {
            (
                format!("load-{}-{n}", plan.run_id),
                order_request(&mut rng, plan, &customer_ids, &product_ids),
            )
        })
        .collect();
    let started = Instant::now();
    let mut results = futures::stream::iter(requests)
        .map(|(workflow_id, request)| async move {
            let begun = Instant::now();
            let followed = async {
                client::start_order(client, task_queue, &workflow_id, &request).await?;
                client::order_outcome(client, &workflow_id).await
            };
            match followed.await {
                Ok(outcome) => loaded(workflow_id, &outcome, begun.elapsed()),
                Err(e) => {
                    tracing::warn!(workflow_id, error = %format!("{e:#}"), "client error; the load goes on");
                    client_error(workflow_id, &e, begun.elapsed())
                }
            }
        })
        .buffer_unordered(plan.concurrency);
    let mut done = Vec::with_capacity(plan.orders as usize);
    let mut last_draw = Instant::now();
    while let Some(result) = results.next().await {
        done.push(result);
        if progress
            && (last_draw.elapsed() >= Duration::from_millis(200)
                || done.len() as u64 == plan.orders)
        {
            last_draw = Instant::now();
            let fraction = done.len() as f64 / plan.orders as f64;
            let elapsed = started.elapsed();
            let failed = done.iter().filter(|o| o.outcome != "placed").count();
            eprint!(
                "\r{}  {}/{} orders  {:.1} orders/s  {}  not placed {failed}   ",
                bar(fraction),
                done.len(),
                plan.orders,
                done.len() as f64 / elapsed.as_secs_f64().max(0.001),
                eta(fraction, elapsed)
            );
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    let elapsed = started.elapsed();
    Ok(summarise(plan, done, elapsed, customer_ids, product_ids))
}

fn loaded(workflow_id: String, outcome: &OrderOutcome, latency: Duration) -> LoadedOrder {
    let (outcome, order_id, failure_type) = match outcome {
        OrderOutcome::Placed(placed) => ("placed", Some(placed.order_id), None),
        OrderOutcome::Failed { failure_type, .. } => ("failed", None, Some(failure_type.clone())),
        OrderOutcome::Cancelled => ("cancelled", None, None),
        OrderOutcome::Other(what) => ("other", None, Some(what.clone())),
    };
    LoadedOrder {
        workflow_id,
        outcome,
        order_id,
        failure_type,
        client_error: None,
        latency_ms: latency.as_secs_f64() * 1000.0,
    }
}

fn client_error(workflow_id: String, error: &anyhow::Error, latency: Duration) -> LoadedOrder {
    LoadedOrder {
        workflow_id,
        outcome: CLIENT_ERROR,
        order_id: None,
        failure_type: None,
        client_error: Some(format!("{error:#}")),
        latency_ms: latency.as_secs_f64() * 1000.0,
    }
}

fn summarise(
    plan: &LoadPlan,
    results: Vec<LoadedOrder>,
    elapsed: Duration,
    customers: Vec<i64>,
    products: Vec<i64>,
) -> LoadReport {
    let mut failures = BTreeMap::new();
    let client_errors = results.iter().filter(|o| o.outcome == CLIENT_ERROR).count() as u64;
    for order in results
        .iter()
        .filter(|o| o.outcome != "placed" && o.outcome != CLIENT_ERROR)
    {
        let reason = order
            .failure_type
            .clone()
            .unwrap_or_else(|| order.outcome.to_owned());
        *failures.entry(reason).or_insert(0) += 1;
    }
    let mut latencies: Vec<f64> = results
        .iter()
        .filter(|o| o.outcome != CLIENT_ERROR)
        .map(|o| o.latency_ms)
        .collect();
    latencies.sort_by(f64::total_cmp);
    LoadReport {
        consistency: plan.consistency,
        orders: results.len() as u64,
        placed: results.iter().filter(|o| o.outcome == "placed").count() as u64,
        failures,
        client_errors,
        elapsed_secs: elapsed.as_secs_f64(),
        orders_per_sec: (results.len() as u64 - client_errors) as f64
            / elapsed.as_secs_f64().max(0.001),
        p50_ms: percentile(&latencies, 50.0),
        p95_ms: percentile(&latencies, 95.0),
        p99_ms: percentile(&latencies, 99.0),
        customers,
        products,
        results,
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} orders ({}): {} placed in {:.1} s = {:.1} orders/s",
            self.orders, self.consistency, self.placed, self.elapsed_secs, self.orders_per_sec
        )?;
        writeln!(
            f,
            "latency p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms",
            self.p50_ms, self.p95_ms, self.p99_ms
        )?;
        if self.client_errors > 0 {
            writeln!(
                f,
                "client errors: {} (this client could not start or follow them; see --json for each)",
                self.client_errors
            )?;
        }
        if self.failures.is_empty() {
            return write!(f, "no order failures");
        }
        write!(f, "failures by reason:")?;
        for (reason, count) in &self.failures {
            write!(f, "\n  {reason}: {count}")?;
        }
        Ok(())
    }
}

impl Report for LoadReport {
    /// The figures are incomplete when the client lost orders from sight.
    fn failure(&self) -> Option<String> {
        (self.client_errors > 0).then(|| {
            let first = self
                .results
                .iter()
                .find_map(|o| o.client_error.as_deref())
                .unwrap_or_default();
            format!(
                "{} of {} orders could not be started or followed by this client (their outcomes are unknown here; `orders get` or the Web UI shows them); the first: {first}",
                self.client_errors, self.orders
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.0);
        assert_eq!(percentile(&sorted, 95.0), 95.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
