//! The two-phase commit's participants: one activity per phase, run once per shard.
//!
//! The PlaceOrder workflow is the coordinator and its history is the coordinator's log:
//! it prepares every shard's part, records its decision, then commits (or rolls back) every
//! part, retrying until each is done. Each activity is safe to run again at any point:
//! - `PreparePart` runs once per part key ([`two_phase::prepare_once`]), the key inside the
//!   transaction it prepares; it returns at once if its gid is already prepared (checked in the
//!   claim's own statement). A duplicate attempt running meanwhile waits on that key until the
//!   shard's `lock_timeout` (`orders_core::shards::LOCK_TIMEOUT`, 3 s) fails it; its retry then
//!   finds the part prepared or committed.
//! - `CommitPart` commits the prepared gid, or finds the part's key committed: already done.
//! - `RollbackPart` rolls the gid back if prepared, then tombstones the key, so an attempt
//!   of `PreparePart` still in flight cannot prepare the part afterwards.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};
use serde::{Deserialize, Serialize};
use temporalio_macros::activities;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::stock::{StockLine, stock_rejection, wanted};
use orders_core::FailureType;
use orders_core::failpoints;
use orders_core::failure::{Rejection, StepError};
use orders_core::metrics::OrderMetrics;
use orders_core::order_input::ValidOrder;
use orders_core::shards::{PING_TIMEOUT, Shard, Shards};
use orders_core::store::idempotency::{self, Claim};
use orders_core::store::two_phase::{self, Gid, PrepareOnce};
use orders_core::store::{credit, inventory, orders};
use orders_read::OrderCache;

/// One shard's part of a two-phase order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TwoPhasePart {
    /// The prepared transaction's id.
    pub gid: Gid,
    /// `<workflow key>/two-phase/shard-<n>`.
    pub idempotency_key: String,
    pub shard: usize,
    pub order_id: i64,
    /// On the customer's shard: the order, written `confirmed`, with its total held on the
    /// customer's credit.
    pub order: Option<ValidOrder>,
    /// The order's products this shard stocks.
    pub stock: Vec<StockLine>,
}

/// The two-phase activities' shared state.
pub struct TwoPhaseActivities {
    shards: Shards,
    metrics: Arc<OrderMetrics>,
    cache: Arc<OrderCache>,
}

impl TwoPhaseActivities {
    pub fn new(shards: Shards, metrics: Arc<OrderMetrics>, cache: Arc<OrderCache>) -> Self {
        Self {
            shards,
            metrics,
            cache,
        }
    }
}

/// Refuses the part if the map in use gives one of its rows' buckets to another shard than
/// the planned one (see [`Rejection::ShardMapChanged`]). A worker whose map is older than
/// the move is refused by the bucket's fence instead, re-reads the map, and lands here.
fn still_owned(shards: &Shards, part: &TwoPhasePart) -> Result<(), Rejection> {
    let customer = part.order.as_ref().map(|o| o.customer_id);
    let ids = customer
        .into_iter()
        .chain(part.stock.iter().map(|line| line.product_id));
    for id in ids {
        let owner = shards.for_customer(id).index;
        if owner != part.shard {
            return Err(Rejection::ShardMapChanged {
                order_id: part.order_id,
                bucket: orders_core::routing::bucket_of(id),
                planned: part.shard,
                owner,
            });
        }
    }
    Ok(())
}

/// Writes the part's rows inside `txn`; a rejection means nothing may be kept.
async fn write_part(
    txn: &impl ConnectionTrait,
    shard: &Shard,
    part: &TwoPhasePart,
) -> Result<(), StepError> {
    if let Some(order) = &part.order {
        let unknown_customer = || Rejection::UnknownCustomer {
            customer_id: order.customer_id,
            shard: shard.index,
        };
        if orders::create_confirmed_with_id(txn, order, part.order_id)
            .await?
            .is_none()
        {
            return Err(unknown_customer().into());
        }
        // Its created_at becomes its PREPARE time, which listings can see (a prepared
        // transaction's start is not shown anywhere).
        two_phase::stamp_at_prepare(txn, part.order_id).await?;
        let total = order.total();
        let rejection = match credit::reserve(txn, part.order_id, order.customer_id, total).await? {
            credit::Reserve::Reserved | credit::Reserve::AlreadyHeld => None,
            credit::Reserve::Declined { available } => Some(Rejection::PaymentDeclined {
                customer_id: order.customer_id,
                total,
                available,
            }),
            credit::Reserve::UnknownCustomer => Some(unknown_customer()),
            credit::Reserve::AlreadyReleased => Some(Rejection::AlreadyCompensated {
                step: format!("the credit hold of order {}", part.order_id),
            }),
        };
        if let Some(rejection) = rejection {
            return Err(rejection.into());
        }
    }
    if part.stock.is_empty() {
        return Ok(());
    }
    let outcome = inventory::reserve(txn, part.order_id, &wanted(&part.stock)).await?;
    match stock_rejection(outcome) {
        Some(rejection) => Err(rejection.into()),
        None => Ok(()),
    }
}

impl TwoPhaseActivities {
    /// [`Self::prepare_one`], on a shard that answers (see [`Self::on_an_answering_shard`]):
    /// the parts prepared before it would hold their rows through every retry. The workflow
    /// rolls them back and tries again later.
    async fn prepare_answering(self: &Arc<Self>, part: &TwoPhasePart) -> Result<(), ActivityError> {
        let (this, owned) = (Arc::clone(self), part.clone());
        self.on_an_answering_shard(part.shard, async move { this.prepare_one(&owned).await })
            .await
    }

    /// Runs `attempt` on shard `index`, except that a shard the sampler found down and that
    /// still does not answer, or one that stops answering during `attempt`, ends the step at
    /// once with `ShardUnavailable` instead of being retried: the caller holds rows on other
    /// shards that must not wait for this one. An attempt that takes longer than
    /// [`ASK_EVERY`] is not waited out: the shard is asked whether it still answers meanwhile
    /// (a pool retries a refused connect for its whole timeout). The step stops waiting for
    /// an attempt on a shard that stopped answering and leaves it to end on its own (see
    /// [`unless`]); a part it may still prepare is rolled back with the others.
    async fn on_an_answering_shard<T: Send + 'static>(
        &self,
        index: usize,
        attempt: impl Future<Output = Result<T, ActivityError>> + Send + 'static,
    ) -> Result<T, ActivityError> {
        let shard = self.shards.get(index);
        let unavailable =
            |why: String| ActivityError::application(FailureType::ShardUnavailable.failure(why));
        if shard.seems_down() && !shard.answers().await {
            return Err(unavailable(format!("shard {index} does not answer")));
        }
        let Some(outcome) = unless(attempt, stops_answering(shard)).await else {
            return Err(unavailable(format!(
                "shard {index} stopped answering during the step"
            )));
        };
        let failure = match outcome {
            Ok(done) => return Ok(done),
            Err(ActivityError::Application(failure)) if !failure.is_non_retryable() => failure,
            Err(other) => return Err(other),
        };
        if shard.answers().await {
            return Err(ActivityError::Application(failure));
        }
        Err(unavailable(format!(
            "shard {index} does not answer: {failure}"
        )))
    }

    async fn prepare_one(&self, part: &TwoPhasePart) -> Result<(), ActivityError> {
        failpoints::hit("prepare_part.before").await?;
        let shard = self.shards.get(part.shard);
        let _timer = self.metrics.time(shard, "PreparePart");
        let prepared =
            two_phase::prepare_once(&shard.conn, &part.idempotency_key, &part.gid, async |txn| {
                still_owned(&self.shards, part)?;
                write_part(txn, shard, part).await
            })
            .await
            .map_err(|e| e.on(shard))?;
        match prepared {
            PrepareOnce::AlreadyPrepared => {
                tracing::info!(gid = %part.gid, "part already prepared");
                return Ok(());
            }
            PrepareOnce::AlreadyCommitted => {
                tracing::info!(gid = %part.gid, "part already committed");
                return Ok(());
            }
            PrepareOnce::Prepared => {}
        }
        failpoints::hit("prepare_part.after_prepare").await?;
        tracing::info!(gid = %part.gid, order_id = part.order_id, "part prepared");
        Ok(())
    }

    /// Records on `part`'s shard that its order decided commit, before any part commits:
    /// through the backup gate, so a restore point has the decision on its side or not at
    /// all (the history's memo is not comparable with a point).
    async fn record_decision(&self, part: &TwoPhasePart) -> Result<(), ActivityError> {
        failpoints::hit("commit_decision.before").await?;
        let shard = self.shards.get(part.shard);
        let key = part.gid.parts().decision_key();
        let resolver = shard.resolver.clone();
        within_a_ping(part, async move {
            two_phase::record_commit_decision(&resolver, &key).await
        })
        .await?
        .map_err(|e| shard.error(e))?;
        Ok(())
    }

    /// Commits `part`: whether it is committed now (`false`: it is neither prepared nor
    /// committed, see [`commit_on`]).
    async fn commit_one(&self, part: &TwoPhasePart) -> Result<bool, ActivityError> {
        failpoints::hit("commit_part.before").await?;
        if part.order.is_none() {
            failpoints::hit("commit_stock_part.before").await?;
        }
        let shard = self.shards.get(part.shard);
        let _timer = self.metrics.time(shard, "CommitPart");
        let (on, gid, key) = (
            shard.clone(),
            part.gid.clone(),
            part.idempotency_key.clone(),
        );
        let committed = within_a_ping(part, async move { commit_on(&on, &gid, &key).await })
            .await?
            .map_err(|e| shard.error(e))?;
        if committed {
            tracing::info!(gid = %part.gid, order_id = part.order_id, "part committed");
            if part.order.is_some() {
                self.cache.invalidate(part.order_id).await;
            }
        }
        Ok(committed)
    }
}

/// `work`'s output, unless `give_up` resolves first (`None`). `work` runs as a task of its
/// own, and giving up leaves it to finish rather than cancelling it: sqlx 0.9.0 leaves a
/// connection inside a transaction if a future is dropped while its `BEGIN` is in flight
/// (launchbadge/sqlx#4393), and the pool would hand that connection out again.
async fn unless<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
    give_up: impl Future<Output = ()>,
) -> Option<T> {
    let mut task = tokio::spawn(work.in_current_span());
    tokio::select! {
        biased;
        done = &mut task => Some(done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))),
        () = give_up => None,
    }
}

/// How often a step that holds rows elsewhere asks whether its shard still answers.
const ASK_EVERY: Duration = Duration::from_millis(250);

/// Resolves once `shard` stops answering, asked every [`ASK_EVERY`].
async fn stops_answering(shard: &Shard) {
    loop {
        tokio::time::sleep(ASK_EVERY).await;
        if !shard.answers().await {
            return;
        }
    }
}

/// `work` on `part`'s shard, given a ping's timeout: phase two's statements never wait for a
/// row, so one that takes longer is on a shard that is going away (a connect to a shard that
/// just crashed is retried for the pool's whole timeout), and the order's other parts must
/// not hold their rows meanwhile. A timeout is a retryable failure.
async fn within_a_ping<T: Send + 'static>(
    part: &TwoPhasePart,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, ActivityError> {
    unless(work, tokio::time::sleep(PING_TIMEOUT))
        .await
        .ok_or_else(|| {
            ActivityError::Application(Box::new(
                ApplicationFailure::builder(format!(
                    "shard {} did not answer phase two within {PING_TIMEOUT:?}",
                    part.shard
                ))
                .build(),
            ))
        })
}

/// A part that phase two found neither prepared nor committed: rolled back outside the
/// workflow (see [`Rejection::PreparedPartMissing`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingPart {
    pub gid: String,
    pub shard: usize,
}

impl MissingPart {
    fn of(part: &TwoPhasePart) -> Self {
        Self {
            gid: part.gid.to_string(),
            shard: part.shard,
        }
    }
}

impl std::fmt::Display for MissingPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rejection = Rejection::PreparedPartMissing {
            gid: self.gid.clone(),
            shard: self.shard,
        };
        write!(f, "{}: {rejection}", rejection.failure_type())
    }
}

#[activities]
impl TwoPhaseActivities {
    /// Phase one: writes this shard's part and prepares it under the part's gid.
    #[activity(name = "PreparePart")]
    pub async fn prepare_part(
        self: Arc<Self>,
        _ctx: ActivityContext,
        part: TwoPhasePart,
    ) -> Result<(), ActivityError> {
        self.prepare_answering(&part).await
    }

    /// Phase one for a whole round: prepares `parts` one after another, in the order given
    /// (shard order, see the workflow), and stops at the first refusal, which it returns.
    /// One step instead of one per part: the parts are prepared one after another either
    /// way, and each is retry-safe on its own, so a retry finds the ones before it prepared.
    #[activity(name = "PrepareParts")]
    pub async fn prepare_parts(
        self: Arc<Self>,
        _ctx: ActivityContext,
        parts: Vec<TwoPhasePart>,
    ) -> Result<(), ActivityError> {
        for part in &parts {
            self.prepare_answering(part).await?;
        }
        Ok(())
    }

    /// Phase two, commit, of a whole round in one step: the first part (the home part, the
    /// order's commit record), then the others side by side. Returns the parts found
    /// neither prepared nor committed: the first alone if it is (the others are left as
    /// they are, for the workflow to roll back). A part that failed otherwise fails the
    /// step, retried once the others are done; a retry finds the committed ones committed.
    ///
    /// A home shard that does not answer ends the step at once with `ShardUnavailable`, its
    /// part committed at most (a commit it stopped waiting for may still land): the others must not commit before the home part until the decision
    /// is in the history, and waiting here would hold their rows for the whole outage. The
    /// workflow then commits every part as activities of their own (see its `commit_together`).
    #[activity(name = "CommitParts")]
    pub async fn commit_parts(
        self: Arc<Self>,
        _ctx: ActivityContext,
        parts: Vec<TwoPhasePart>,
    ) -> Result<Vec<MissingPart>, ActivityError> {
        let Some((home, others)) = parts.split_first() else {
            return Ok(Vec::new());
        };
        let (this, owned) = (Arc::clone(&self), home.clone());
        let decided_and_committed = async move {
            this.record_decision(&owned).await?;
            this.commit_one(&owned).await
        };
        if !self
            .on_an_answering_shard(home.shard, decided_and_committed)
            .await?
        {
            return Ok(vec![MissingPart::of(home)]);
        }
        let results =
            futures::future::join_all(others.iter().map(|part| self.commit_one(part))).await;
        let mut missing = Vec::new();
        let mut failed = None;
        for (part, result) in others.iter().zip(results) {
            match result {
                Ok(true) => {}
                Ok(false) => missing.push(MissingPart::of(part)),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(missing),
        }
    }

    /// Phase two, commit: makes the part visible. Retried until it succeeds.
    #[activity(name = "CommitPart")]
    pub async fn commit_part(
        self: Arc<Self>,
        _ctx: ActivityContext,
        part: TwoPhasePart,
    ) -> Result<(), ActivityError> {
        self.record_decision(&part).await?;
        if self.commit_one(&part).await? {
            Ok(())
        } else {
            Err(Rejection::PreparedPartMissing {
                gid: part.gid.to_string(),
                shard: part.shard,
            }
            .into_activity_error())
        }
    }

    /// Phase two, rollback: discards the part, prepared or not, and keeps it discarded.
    #[activity(name = "RollbackPart")]
    pub async fn rollback_part(
        self: Arc<Self>,
        _ctx: ActivityContext,
        part: TwoPhasePart,
    ) -> Result<(), ActivityError> {
        failpoints::hit("rollback_part.before").await?;
        let shard = self.shards.get(part.shard);
        let _timer = self.metrics.time(shard, "RollbackPart");
        if !roll_back_on(shard, &part.gid, &part.idempotency_key)
            .await
            .map_err(|e| shard.error(e))?
        {
            let rejection = Rejection::PartAlreadyCommitted {
                gid: part.gid.to_string(),
                shard: shard.index,
            };
            tracing::error!(%rejection, "rollback refused");
            return Err(rejection.into_activity_error());
        }
        tracing::info!(gid = %part.gid, "part rolled back");
        Ok(())
    }
}

/// Phase two's commit of one part (`gid`, whose idempotency key is `key`), for the workflow
/// and for `orders recover` alike, on the shard's resolver connections: COMMIT PREPARED.
/// Returns whether the part
/// is committed now; `false` means it is neither prepared nor committed (it was rolled back
/// outside its coordinator). Safe to run twice, and alongside another resolver.
pub async fn commit_on(shard: &Shard, gid: &Gid, key: &str) -> Result<bool, DbErr> {
    // Prepared is the usual case, so try first and look only when that fails: the part is
    // not prepared (committed by an earlier attempt or by someone else, a duplicate or
    // `orders recover`, or rolled back), or the shard failed.
    let Err(e) = two_phase::commit_prepared(&shard.resolver, gid).await else {
        return Ok(true);
    };
    if key_committed(shard, key).await? {
        return Ok(true);
    }
    if two_phase::is_prepared(&shard.resolver, gid).await? {
        return Err(e);
    }
    // Neither prepared nor committed; unless it committed between the two looks.
    key_committed(shard, key).await
}

/// Phase two's rollback of one part: ROLLBACK PREPARED if it is prepared, then a tombstone on
/// its key, so an attempt of `PreparePart` still in flight cannot prepare it again. Returns
/// `false`, changing nothing, if the part had committed.
pub async fn roll_back_on(shard: &Shard, gid: &Gid, key: &str) -> Result<bool, DbErr> {
    if two_phase::is_prepared(&shard.resolver, gid).await?
        && let Err(e) = two_phase::rollback_prepared(&shard.resolver, gid).await
        && two_phase::is_prepared(&shard.resolver, gid).await?
    {
        return Err(e);
    }
    let txn = shard.resolver.begin().await?;
    if idempotency::mark_compensated(&txn, key).await?.is_some() {
        // Only a committed part leaves its result visible.
        txn.rollback().await?;
        return Ok(false);
    }
    txn.commit().await?;
    Ok(true)
}

/// Whether the part whose key is `key` committed: the key is there with a result.
async fn key_committed(shard: &Shard, key: &str) -> Result<bool, DbErr> {
    let found = idempotency::lookup(&shard.resolver, key).await?;
    Ok(matches!(found, Some(Claim::Done(_))))
}
