//! A bounded, time-limited cache of orders with their items, for the worker's read API.
//!
//! Entries expire `ttl` after they were loaded and the least-used are evicted beyond
//! `capacity` (moka's TinyLFU). This worker drops an order's entry whenever one of its own
//! activities changes or deletes that order, so its readers see its writes at once. Writes
//! made by *other* workers are not seen until the entry expires: with several workers, a read
//! can be up to `ttl` stale (see docs/architecture.md, "Read API and order cache").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;
use serde::Serialize;

use super::lookup;
use orders_core::metrics::OrderMetrics;
use orders_core::shards::{ShardError, Shards};
use orders_core::store::orders::OrderWithItems;

/// How big the cache may grow and how long an entry lives.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub capacity: u64,
    pub ttl: Duration,
}

/// An order found by id, with the shard it lives on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FoundOrder {
    pub shard: usize,
    pub order: OrderWithItems,
}

/// Hit and miss counts since the worker started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub hit_ratio: f64,
}

/// Orders by id, read through from the shards.
pub struct OrderCache {
    entries: Cache<i64, Arc<FoundOrder>>,
    /// Bumped by every invalidation. A load that overlapped one drops its own entry again, so
    /// a read that raced a write cannot leave the old row cached after the write. It is one
    /// counter for all orders: simple, at the price of a few extra misses under heavy writes.
    generation: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    metrics: Arc<OrderMetrics>,
}

impl OrderCache {
    pub fn new(settings: CacheSettings, metrics: Arc<OrderMetrics>) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(settings.ttl)
                .build(),
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            metrics,
        }
    }

    /// The order with `order_id`, from the cache or else from its shard. Absent orders are
    /// not cached, so an order is visible as soon as it is created.
    pub async fn get(
        &self,
        shards: &Shards,
        order_id: i64,
    ) -> Result<Option<Arc<FoundOrder>>, ShardError> {
        if let Some(found) = self.entries.get(&order_id).await {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.metrics.cache_lookup(true);
            return Ok(Some(found));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.metrics.cache_lookup(false);
        let generation = self.generation.load(Ordering::Acquire);
        let Some((shard, order)) = lookup::find_order(shards, order_id).await? else {
            return Ok(None);
        };
        let found = Arc::new(FoundOrder { shard, order });
        self.entries.insert(order_id, found.clone()).await;
        // A write that committed after our read bumped the generation: its invalidation may
        // have run before our insert, so drop what we just cached. (A write that bumps it
        // after this check also invalidates after our insert, so it removes the entry itself.)
        if self.generation.load(Ordering::Acquire) != generation {
            self.entries.invalidate(&order_id).await;
        }
        Ok(Some(found))
    }

    /// Drops `order_id`'s entry; call after changing or deleting the order.
    pub async fn invalidate(&self, order_id: i64) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(&order_id).await;
    }

    pub fn stats(&self) -> CacheStats {
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let lookups = hits + misses;
        CacheStats {
            hits,
            misses,
            entries: self.entries.entry_count(),
            hit_ratio: if lookups == 0 {
                0.0
            } else {
                hits as f64 / lookups as f64
            },
        }
    }
}
