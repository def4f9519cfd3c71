//! `orders audit`: checks the invariants that hold across all shards when no order is in
//! flight, and lists every violation.
//!
//! Per shard: every order has items, totals equal Σ quantity × price, no item without its
//! order, each customer's `credit_used` equals the totals of their live placed orders, and
//! credit holds agree with their orders. Across shards: each product's `reserved` equals the
//! quantities of the live placed orders (on whatever shard) that name it, and equals the
//! sum of its held `stock_holds`. Finally, none of our prepared transactions is older than
//! the grace period (an older one is in doubt: `orders recover` resolves it).
//!
//! An order in flight (a saga between two steps, a two-phase order between prepare and
//! commit) shows up as a difference; run the audit when the system is quiet.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use orders_core::Shards;
use orders_core::store::{audit, inventory, two_phase};
use serde::Serialize;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub check: &'static str,
    /// The shard it was found on, when it belongs to one.
    pub shard: Option<usize>,
    pub detail: String,
}

/// What the audit found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    pub shards: usize,
    pub products: usize,
    pub violations: Vec<Violation>,
}

impl AuditReport {
    fn add(&mut self, check: &'static str, shard: Option<usize>, detail: String) {
        self.violations.push(Violation {
            check,
            shard,
            detail,
        });
    }
}

/// Runs every check on every shard. Fails (naming the shard) if a shard cannot be read:
/// an audit that skipped a shard would prove nothing.
pub async fn run(shards: &Shards, grace: Duration) -> anyhow::Result<AuditReport> {
    let mut report = AuditReport {
        shards: shards.len(),
        ..AuditReport::default()
    };
    let mut expected: BTreeMap<i64, i64> = BTreeMap::new();
    let mut stocked: Vec<(usize, i64, i64, i64)> = Vec::new();
    for shard in shards.iter() {
        let at = Some(shard.index);
        let fail = |what: &str| {
            format!(
                "audit cannot read {what} on shard {} ({})",
                shard.index, shard.url
            )
        };
        let conn = &shard.conn;
        for id in audit::orders_without_items(conn)
            .await
            .with_context(|| fail("orders"))?
        {
            report.add("order has items", at, format!("order {id} has no items"));
        }
        for (id, total, items) in audit::wrong_totals(conn)
            .await
            .with_context(|| fail("totals"))?
        {
            report.add(
                "total = Σ quantity × price",
                at,
                format!("order {id}: total {total}, items sum to {items}"),
            );
        }
        for id in audit::orphan_items(conn)
            .await
            .with_context(|| fail("items"))?
        {
            report.add("no orphan items", at, format!("item {id} has no order"));
        }
        for (customer, used, live) in audit::wrong_credit(conn)
            .await
            .with_context(|| fail("credit"))?
        {
            report.add(
                "credit used = Σ live orders",
                at,
                format!("customer {customer}: credit_used {used}, live orders total {live}"),
            );
        }
        for (order, hold, status) in audit::stray_credit_holds(conn)
            .await
            .with_context(|| fail("credit holds"))?
        {
            report.add(
                "credit holds match orders",
                at,
                format!("order {order} is {status} but its credit hold is {hold}"),
            );
        }
        for (product, quantity) in audit::live_quantities(conn)
            .await
            .with_context(|| fail("order items"))?
        {
            *expected.entry(product).or_default() += quantity;
        }
        for (product, reserved, held) in inventory::reserved_vs_held(conn)
            .await
            .with_context(|| fail("inventory"))?
        {
            stocked.push((shard.index, product, reserved, held));
        }
        for prepared in two_phase::in_doubt(conn)
            .await
            .with_context(|| fail("pg_prepared_xacts"))?
        {
            if prepared.age_secs as u64 >= grace.as_secs() {
                report.add(
                    "no old prepared transactions",
                    at,
                    format!(
                        "{} prepared {} s ago (run `orders recover`)",
                        prepared.gid, prepared.age_secs
                    ),
                );
            }
        }
    }
    let mut stocked_on: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (shard, product, _, _) in &stocked {
        stocked_on.entry(*product).or_default().push(*shard);
    }
    for (product, shards) in stocked_on.iter().filter(|(_, s)| s.len() > 1) {
        report.add(
            "each product on one shard",
            None,
            format!("product {product} is stocked on shards {shards:?}"),
        );
    }
    report.products = stocked_on.len();
    for (shard, product, reserved, held) in stocked {
        let live = expected.remove(&product).unwrap_or(0);
        if reserved != live {
            report.add(
                "stock reserved = Σ live orders",
                Some(shard),
                format!("product {product}: reserved {reserved}, live orders need {live}"),
            );
        }
        if reserved != held {
            report.add(
                "stock reserved = Σ held stock",
                Some(shard),
                format!("product {product}: reserved {reserved}, holds add up to {held}"),
            );
        }
    }
    for (product, live) in expected {
        report.add(
            "ordered products are stocked",
            None,
            format!("product {product}: live orders need {live} but no shard stocks it"),
        );
    }
    Ok(report)
}

impl std::fmt::Display for AuditReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.violations.is_empty() {
            return write!(
                f,
                "audit clean: {} shards, {} products, every invariant holds",
                self.shards, self.products
            );
        }
        write!(f, "audit found {} violation(s):", self.violations.len())?;
        let mut by_check: BTreeMap<&str, Vec<&Violation>> = BTreeMap::new();
        for violation in &self.violations {
            by_check.entry(violation.check).or_default().push(violation);
        }
        for (check, violations) in by_check {
            write!(f, "\n  {check}:")?;
            for v in violations {
                match v.shard {
                    Some(shard) => write!(f, "\n    shard {shard}: {}", v.detail)?,
                    None => write!(f, "\n    {}", v.detail)?,
                }
            }
        }
        Ok(())
    }
}
