//! Reads that span shards: one page of all orders, merged from every shard queried at once;
//! one customer's orders from their shard; and order counts that say which shards are missing.
//!
//! Pages are cut by keyset, not offset: the cursor is the position (created_at, id) of the
//! last order shown, and the next page is "the newest orders strictly after it" on every
//! shard. An order placed while a reader pages is newer than the cursor, so it never shifts
//! an older order onto the next page: nothing is skipped or shown twice.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use futures::future::join_all;
use serde::{Deserialize, Serialize};

use orders_core::shards::{Shard, ShardError, Shards};
use orders_core::store::listing::{self, OrderSummary, Position, Served};

/// The largest page a caller may ask for.
pub const MAX_PAGE_SIZE: u64 = 500;
/// The deepest OFFSET page served: each shard reads `offset + limit` rows for it.
pub const MAX_OFFSET: u64 = 100_000;

/// One page of orders, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPage {
    pub orders: Vec<ListedOrder>,
    /// Pass this back to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
    /// On a first page: paging on from it lists every order created before this time, none
    /// skipped, even those whose transaction commits late. Orders created since are in the
    /// next listing from the top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_before: Option<chrono::DateTime<chrono::FixedOffset>>,
}

/// An order in a listing, with the shard it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedOrder {
    pub shard: usize,
    #[serde(flatten)]
    pub order: OrderSummary,
}

/// Why a listing could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("cursor {0:?} is not one this service issued; start again without a cursor")]
    BadCursor(String),
    #[error("page size must be between 1 and {MAX_PAGE_SIZE}, got {0}")]
    BadPageSize(u64),
    #[error("offset must be at most {MAX_OFFSET}, got {0}; page deeper with the keyset cursor")]
    BadOffset(u64),
    /// A page needs every shard; a missing one would silently drop its orders.
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// Encodes `position` as an opaque, URL-safe cursor.
pub(crate) fn encode_cursor(position: Position) -> String {
    let raw = format!(
        "v1:{}:{}",
        position.created_at.timestamp_micros(),
        position.id
    );
    URL_SAFE_NO_PAD.encode(raw)
}

/// Reads a cursor made by [`encode_cursor`].
pub(crate) fn decode_cursor(cursor: &str) -> Result<Position, ListError> {
    let bad = || ListError::BadCursor(cursor.to_owned());
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = raw.split(':');
    let (Some("v1"), Some(micros), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    Ok(Position {
        created_at: DateTime::from_timestamp_micros(micros)
            .ok_or_else(bad)?
            .fixed_offset(),
        id: id.parse().map_err(|_| bad())?,
    })
}

fn check_page_size(limit: u64) -> Result<(), ListError> {
    if (1..=MAX_PAGE_SIZE).contains(&limit) {
        Ok(())
    } else {
        Err(ListError::BadPageSize(limit))
    }
}

/// A page of every order on every shard, newest first. All shards are asked concurrently
/// for their `limit + 1` newest orders after the cursor; the merged page is the `limit`
/// newest of those, which are exactly the `limit` newest overall, and the extra row says
/// whether there is a next page.
pub async fn orders_page(
    shards: &Shards,
    cursor: Option<&str>,
    limit: u64,
) -> Result<OrderPage, ListError> {
    check_page_size(limit)?;
    let (after, complete_before) = match cursor {
        Some(cursor) => (decode_cursor(cursor)?, None),
        None => {
            let horizons = on_every_shard(shards, |shard| async move {
                listing::visibility_horizon(&shard.conn).await
            })
            .await?;
            let horizon = horizons
                .into_iter()
                .map(|(_, horizon)| horizon)
                .min()
                .expect("a deployment has at least one shard");
            (Position::before(horizon), Some(horizon))
        }
    };
    let map = shards.map();
    let per_shard = on_every_shard(shards, move |shard| {
        let served = Served::by(&map, shard.index);
        async move { listing::newest(&shard.conn, &served, Some(after), limit + 1).await }
    })
    .await?;
    Ok(OrderPage {
        complete_before,
        ..merge_page(per_shard, 0, limit)
    })
}

/// The article's OFFSET pagination across shards, kept to compare against: every shard must
/// return `offset + limit` rows for the merge to be right, so deep pages cost ever more.
pub async fn orders_page_at_offset(
    shards: &Shards,
    offset: u64,
    limit: u64,
) -> Result<Vec<ListedOrder>, ListError> {
    check_page_size(limit)?;
    if offset > MAX_OFFSET {
        return Err(ListError::BadOffset(offset));
    }
    let map = shards.map();
    let per_shard = on_every_shard(shards, move |shard| {
        let served = Served::by(&map, shard.index);
        async move { listing::newest_at_offset(&shard.conn, &served, 0, offset + limit).await }
    })
    .await?;
    Ok(merge_page(per_shard, offset as usize, limit).orders)
}

/// A page of one customer's orders, newest first, from the customer's shard alone.
pub async fn customer_orders_page(
    shards: &Shards,
    customer_id: i64,
    cursor: Option<&str>,
    limit: u64,
) -> Result<OrderPage, ListError> {
    check_page_size(limit)?;
    let shard = shards.for_customer(customer_id);
    let (after, complete_before) = match cursor {
        Some(cursor) => (decode_cursor(cursor)?, None),
        None => {
            let horizon = listing::visibility_horizon(&shard.conn)
                .await
                .map_err(|e| shard.error(e))?;
            (Position::before(horizon), Some(horizon))
        }
    };
    let orders = listing::customer_newest(&shard.conn, customer_id, Some(after), limit + 1)
        .await
        .map_err(|e| shard.error(e))?;
    Ok(OrderPage {
        complete_before,
        ..merge_page(vec![(shard.index, orders)], 0, limit)
    })
}

/// Runs `query` on every shard at once, each on its own task so that decoding the rows
/// also runs in parallel; fails with the first failing shard's error.
async fn on_every_shard<F, Fut, T>(shards: &Shards, query: F) -> Result<Vec<(usize, T)>, ShardError>
where
    F: Fn(Shard) -> Fut,
    Fut: Future<Output = Result<T, sea_orm::DbErr>> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = shards
        .iter()
        .map(|shard| (shard.clone(), tokio::spawn(query(shard.clone()))))
        .collect();
    let mut pages = Vec::with_capacity(tasks.len());
    for (shard, task) in tasks {
        let rows = task
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
            .map_err(|e| shard.error(e))?;
        pages.push((shard.index, rows));
    }
    Ok(pages)
}

fn merge_page(per_shard: Vec<(usize, Vec<OrderSummary>)>, skip: usize, limit: u64) -> OrderPage {
    let mut all: Vec<ListedOrder> = per_shard
        .into_iter()
        .flat_map(|(shard, orders)| {
            orders
                .into_iter()
                .map(move |order| ListedOrder { shard, order })
        })
        .collect();
    all.sort_by_key(|listed| std::cmp::Reverse(listed.order.position()));
    let more = all.len() > skip + limit as usize;
    let orders: Vec<ListedOrder> = all.into_iter().skip(skip).take(limit as usize).collect();
    let next_cursor = more
        .then(|| orders.last().map(|o| encode_cursor(o.order.position())))
        .flatten();
    OrderPage {
        orders,
        next_cursor,
        complete_before: None,
    }
}

/// Orders per status over the shards that answered, and the shards that did not.
#[derive(Debug, Clone, Serialize)]
pub struct StatusCounts {
    pub by_status: BTreeMap<String, i64>,
    pub total: i64,
    /// Shards whose orders are not in the counts; empty when the counts are complete.
    pub missing_shards: Vec<MissingShard>,
}

/// A shard left out of an answer, and why.
#[derive(Debug, Clone, Serialize)]
pub struct MissingShard {
    pub shard: usize,
    pub error: String,
}

impl StatusCounts {
    /// Whether every shard is counted.
    pub fn is_complete(&self) -> bool {
        self.missing_shards.is_empty()
    }
}

/// Counts orders by status on every shard concurrently. A shard that fails is listed in
/// `missing_shards` instead of failing the whole answer or being silently counted as zero.
pub async fn count_by_status(shards: &Shards) -> StatusCounts {
    let map = shards.map();
    let map = &map;
    let answers = join_all(shards.iter().map(|shard| async move {
        (
            shard.index,
            listing::count_by_status(&shard.conn, &Served::by(map, shard.index))
                .await
                .map_err(|e| shard.error(e)),
        )
    }))
    .await;
    let mut counts = StatusCounts {
        by_status: BTreeMap::new(),
        total: 0,
        missing_shards: Vec::new(),
    };
    for (shard, answer) in answers {
        match answer {
            Ok(rows) => {
                for (status, n) in rows {
                    *counts
                        .by_status
                        .entry(sea_orm::ActiveEnum::to_value(&status))
                        .or_default() += n;
                    counts.total += n;
                }
            }
            Err(e) => counts.missing_shards.push(MissingShard {
                shard,
                error: e.to_string(),
            }),
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_to_the_microsecond() {
        let position = Position {
            created_at: DateTime::from_timestamp_micros(1_764_000_000_123_456)
                .unwrap()
                .fixed_offset(),
            id: 42 * 1024 + 7,
        };
        assert_eq!(decode_cursor(&encode_cursor(position)).unwrap(), position);
    }

    #[test]
    fn a_forged_or_damaged_cursor_is_refused() {
        for bad in [
            "",
            "not base64!",
            &URL_SAFE_NO_PAD.encode("v2:1:2"),
            &URL_SAFE_NO_PAD.encode("v1:x:2"),
        ] {
            assert!(
                matches!(decode_cursor(bad), Err(ListError::BadCursor(_))),
                "{bad}"
            );
        }
    }
}
