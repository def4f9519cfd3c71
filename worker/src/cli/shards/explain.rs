//! `orders explain`: EXPLAIN (ANALYZE, BUFFERS) of every hot query on every shard, with
//! parameters sampled from the shard's own data, so the plans are the ones production gets.

use futures::future::join_all;
use orders_core::Shards;
use orders_core::shards::Shard;
use orders_core::store::listing;
use orders_core::store::orders::FIND_WITH_ITEMS;
use orders_core::store::plans;
use sea_orm::{DbErr, Value};
use serde::Serialize;

/// Rows a listing page asks for.
const PAGE: i64 = 50;
/// How deep into the newest-first order the keyset and customer samples sit.
const SAMPLE_DEPTH: i64 = 1000;

/// A hot query's plan on one shard.
#[derive(Debug, Clone, Serialize)]
pub struct QueryPlan {
    pub query: &'static str,
    /// Whether a missing index would hurt it (aggregates over the whole table are expected
    /// to scan it).
    pub lookup: bool,
    /// EXPLAIN (ANALYZE, BUFFERS) as Postgres prints it; the lists below are read from it.
    pub plan: String,
    /// Tables the plan reads with a sequential scan.
    pub seq_scans: Vec<String>,
    /// Indexes the plan uses.
    pub indexes: Vec<String>,
}

/// Every hot query's plan on one shard, or why there is none.
#[derive(Debug, Clone, Serialize)]
pub struct ShardPlans {
    pub shard: usize,
    pub plans: Vec<QueryPlan>,
    pub error: Option<String>,
}

/// Every shard's plans. As JSON: the list of shards.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct QueryPlans(pub Vec<ShardPlans>);

impl QueryPlans {
    /// The first shard that could not be explained, and why.
    pub fn first_error(&self) -> Option<&str> {
        self.0.iter().find_map(|p| p.error.as_deref())
    }
}

/// Explains every hot query on every shard, concurrently.
pub async fn explain_all(shards: &Shards) -> QueryPlans {
    let map = shards.map();
    let map = &map;
    QueryPlans(
        join_all(shards.iter().map(|shard| async move {
            let served = listing::Served::by(map, shard.index).value();
            match explain_shard(shard, served).await {
                Ok(plans) => ShardPlans {
                    shard: shard.index,
                    plans,
                    error: None,
                },
                Err(e) => ShardPlans {
                    shard: shard.index,
                    plans: Vec::new(),
                    error: Some(shard.error(e).to_string()),
                },
            }
        }))
        .await,
    )
}

/// `served`: the buckets the map gives the shard, as the listings pass them.
async fn explain_shard(shard: &Shard, served: Value) -> Result<Vec<QueryPlan>, DbErr> {
    let Some(sample) = plans::sample(&shard.conn, SAMPLE_DEPTH).await? else {
        return Err(DbErr::Custom(
            "no orders to sample parameters from; place or load some orders first".into(),
        ));
    };
    let queries: [(&'static str, bool, &str, Vec<Value>); 6] = [
        (
            "order with items by id",
            true,
            FIND_WITH_ITEMS,
            vec![sample.order_id.into()],
        ),
        (
            "newest orders (first page)",
            true,
            listing::NEWEST,
            vec![PAGE.into(), served.clone()],
        ),
        (
            "newest orders after a cursor",
            true,
            listing::NEWEST_AFTER,
            vec![
                sample.created_at.into(),
                sample.order_id.into(),
                PAGE.into(),
                served.clone(),
            ],
        ),
        (
            "a customer's newest orders",
            true,
            listing::CUSTOMER_NEWEST,
            vec![sample.customer_id.into(), PAGE.into()],
        ),
        (
            "a customer's orders after a cursor",
            true,
            listing::CUSTOMER_NEWEST_AFTER,
            vec![
                sample.customer_id.into(),
                sample.created_at.into(),
                sample.order_id.into(),
                PAGE.into(),
            ],
        ),
        (
            "order counts by status",
            false,
            listing::COUNT_BY_STATUS,
            vec![served],
        ),
    ];
    let mut plans = Vec::with_capacity(queries.len());
    for (query, lookup, sql, values) in queries {
        let plan = plans::explain_analyze(&shard.conn, sql, values).await?;
        let (seq_scans, indexes) = scans_in(&plan);
        plans.push(QueryPlan {
            query,
            lookup,
            plan,
            seq_scans,
            indexes,
        });
    }
    Ok(plans)
}

/// The tables a text plan reads by sequential scan, and the indexes it uses.
fn scans_in(plan: &str) -> (Vec<String>, Vec<String>) {
    let word_after = |line: &str, marker: &str| {
        line.split_once(marker)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    let mut seq_scans = Vec::new();
    let mut indexes = Vec::new();
    for line in plan.lines() {
        if let Some(table) = word_after(line, "Seq Scan on ") {
            seq_scans.push(table);
        }
        if let Some(index) =
            word_after(line, "Bitmap Index Scan on ").or_else(|| word_after(line, " using "))
        {
            indexes.push(index);
        }
    }
    (seq_scans, indexes)
}

impl std::fmt::Display for QueryPlans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut lines = Vec::new();
        for shard in &self.0 {
            lines.push(format!("══ shard {} ══", shard.shard));
            if let Some(error) = &shard.error {
                lines.push(format!("  cannot explain: {error}"));
                continue;
            }
            for plan in &shard.plans {
                let verdict = match (plan.lookup, plan.seq_scans.is_empty()) {
                    (true, true) => format!("indexes: {}", plan.indexes.join(", ")),
                    (true, false) => format!("SEQUENTIAL SCAN of {}", plan.seq_scans.join(", ")),
                    (false, _) => "aggregate over the table".to_owned(),
                };
                lines.push(format!("── {} ({verdict})", plan.query));
                lines.extend(plan.plan.lines().map(|line| format!("   {line}")));
            }
        }
        f.write_str(&lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::scans_in;

    #[test]
    fn a_text_plan_names_its_sequential_scans_and_indexes() {
        let plan = "Limit  (cost=0.42..3.1 rows=50 width=80)
  ->  Nested Loop
        ->  Index Scan Backward using idx_orders_created_at_id on orders  (cost=0.42..8.44)
        ->  Bitmap Heap Scan on order_items
              ->  Bitmap Index Scan on idx_order_items_order_id
        ->  Seq Scan on customers c  (cost=0.00..1.04)";
        let (seq, indexes) = scans_in(plan);
        assert_eq!(seq, ["customers"]);
        assert_eq!(
            indexes,
            ["idx_orders_created_at_id", "idx_order_items_order_id"]
        );
    }
}
