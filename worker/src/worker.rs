//! The Temporal worker: every workflow of the service (PlaceOrder, OrderLifecycle,
//! ImportOrders, InDoubtRecovery, IdempotencyRetention, Reshard) with the order steps and the
//! operations' activities on one task queue, the SDK's metrics and ours served for
//! Prometheus, and the read API over the order cache.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use orders_activities::OrderActivities;
use orders_activities::lifecycle::LifecycleActivities;
use orders_activities::stock::StockActivities;
use orders_activities::two_phase::TwoPhaseActivities;
use orders_core::Shards;
use orders_core::metrics::OrderMetrics;
use orders_core::read_pools::{ReadPoolSettings, ReadPools};
use orders_core::store::{backup_points, two_phase};
use orders_operations::import::ImportActivities;
use orders_operations::import::policy::ImportPolicy;
use orders_operations::recovery::RecoveryActivities;
use orders_operations::reshard::ReshardActivities;
use orders_operations::retention::RetentionActivities;
use orders_read::{CacheSettings, OrderCache};
use orders_workflows::idempotency_retention::{self, RetentionSchedule};
use orders_workflows::in_doubt_recovery::{self, RecoverySchedule};
use orders_workflows::place_order::LOCAL_STEP_PATCHES;
use orders_workflows::{
    IdempotencyRetentionWorkflow, ImportOrdersWorkflow, InDoubtRecoveryWorkflow,
    OrderLifecycleWorkflow, PlaceOrderWorkflow, ReshardWorkflow,
};
use temporalio_client::{Client, WorkflowIdConflictPolicy, WorkflowStartOptions};
use temporalio_common::telemetry::metrics::CoreMeter;
use temporalio_common::telemetry::{
    PrometheusExporterOptions, TelemetryOptions, start_prometheus_metric_exporter,
};
use temporalio_sdk::runtime::PollerBehavior;
use temporalio_sdk::runtime::RuntimeOptions;
use temporalio_sdk::{
    PatchActivationCallback, PatchActivationInput, Runtime, Worker, WorkerOptions,
};

use crate::config::StepPlacement;

/// How long a workflow task waits on this worker's sticky queue before Temporal hands it to
/// any worker (the SDK's default is 10 s). It is most of what a dead worker costs an order
/// whose workflow it had cached; a live worker picks its sticky tasks up in milliseconds.
pub const STICKY_SCHEDULE_TO_START: Duration = Duration::from_secs(3);

/// Concurrent workflow-task polls, and the share of them on the task queue itself rather
/// than this worker's sticky queue. An order runs in its first workflow task, which always
/// comes from the task queue, and a task queue has partitions (four by default) whose tasks
/// wait for poll forwarding when no poll sits on them. With the SDK's default, one poll of
/// five on the task queue, orders waited 4 s for their task at 16 in flight; measured on the
/// dev server, one partition instead of four took orders/s from 13 to 17 and p95 from 4.1 s
/// to 1.1 s. The sticky queue keeps two polls for the lifecycles' later tasks.
const WORKFLOW_TASK_POLLS: usize = 10;
const TASK_QUEUE_POLL_SHARE: f32 = 0.8;

/// How long cancelled activities get to report after the shutdown grace, before the worker
/// exits regardless.
const SHUTDOWN_REPORTING: Duration = Duration::from_secs(2);

/// What the worker serves besides its task queue.
#[derive(Debug, Clone)]
pub struct Serving {
    /// Prometheus metrics at `http://<addr>/metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// The read API (see [`crate::api`]).
    pub api_addr: Option<SocketAddr>,
    /// The bearer token the read API requires, if any.
    pub api_token: Option<crate::api::ApiToken>,
    pub cache: CacheSettings,
    /// How often to re-read the shard map.
    pub map_refresh: Duration,
    /// The read API's pools, and how stale its listings may be when read from standbys.
    pub reads: ReadPoolSettings,
    /// The in-doubt recovery loop this worker makes sure is running.
    pub recovery: RecoverySchedule,
    /// The idempotency-key retention loop this worker makes sure is running.
    pub retention: RetentionSchedule,
    /// How long in-flight tasks may run on after shutdown begins.
    pub shutdown_grace: Duration,
    /// Where new orders run their steps.
    pub steps: StepPlacement,
    /// Which files imports may read.
    pub imports: ImportPolicy,
}

/// With [`StepPlacement::Remote`], declines the patches that run PlaceOrder's steps as local
/// activities, so new orders take the activity path. A declined patch leaves no marker, so
/// such a run replays the same way on any worker.
fn step_patches(steps: StepPlacement) -> Option<PatchActivationCallback> {
    match steps {
        StepPlacement::Local => None,
        StepPlacement::Remote => Some(Arc::new(|input: PatchActivationInput| {
            !LOCAL_STEP_PATCHES.contains(&input.patch_id.as_str())
        })),
    }
}

/// The shutdown grace of `orders dev` (`orders worker` reads `ORDERS_SHUTDOWN_GRACE_SECS`).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Checks the deployment (see [`crate::deployment::preflight`]), then runs the worker until
/// `shutdown` resolves, drains in-flight tasks and returns. An address it cannot serve on is
/// an error before anything starts: a worker running without the API it was told to serve
/// would look healthy to everything but that API's clients.
pub async fn run(
    client: Client,
    task_queue: &str,
    shards: Shards,
    serving: Serving,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let api_listener = match serving.api_addr {
        Some(addr) => Some(crate::api::bind(addr).await?),
        None => None,
    };
    crate::deployment::preflight::check(&client, &shards).await?;
    let meter: Option<Arc<dyn CoreMeter>> = match serving.metrics_addr {
        Some(addr) => {
            let server = start_prometheus_metric_exporter(
                PrometheusExporterOptions::builder()
                    .socket_addr(addr)
                    .build(),
            )
            .with_context(|| {
                format!(
                    "cannot serve metrics on {addr} (set ORDERS_METRICS_ADDR to a free address)"
                )
            })?;
            tracing::info!(addr = %server.bound_addr, "serving Prometheus metrics at /metrics");
            Some(server.meter)
        }
        None => None,
    };
    let telemetry = TelemetryOptions::builder()
        .maybe_metrics(meter.clone())
        .build();
    let runtime_options = RuntimeOptions::builder()
        .telemetry_options(telemetry)
        .build()
        .map_err(anyhow::Error::msg)?;
    let runtime = Runtime::from_current_tokio(runtime_options)
        .context("failed to start the Temporal SDK runtime")?;
    let metrics = Arc::new(
        meter
            .map(OrderMetrics::new)
            .unwrap_or_else(OrderMetrics::disabled),
    );
    orders_workflows::outcomes::install(metrics.clone());
    let shard_samples = tokio::spawn(sample_shards(shards.clone(), metrics.clone()));
    let map_refresh = tokio::spawn(refresh_shard_map(shards.clone(), serving.map_refresh));
    let cache = Arc::new(OrderCache::new(serving.cache, metrics.clone()));
    let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = api_listener.map(|listener| {
        tokio::spawn(crate::api::serve(
            listener,
            serving.api_token.clone(),
            ReadPools::new(&shards, serving.reads),
            cache.clone(),
            async move {
                let _ = api_stopped.await;
            },
        ))
    });

    ensure_running(
        &client,
        InDoubtRecoveryWorkflow::run,
        in_doubt_recovery::WORKFLOW_ID,
        serving.recovery,
        task_queue,
        "run `orders recover` by hand",
    )
    .await;
    ensure_running(
        &client,
        IdempotencyRetentionWorkflow::run,
        idempotency_retention::WORKFLOW_ID,
        serving.retention,
        task_queue,
        "idempotency keys are not pruned until a worker starts it",
    )
    .await;
    let options = WorkerOptions::new(task_queue)
        // A workflow task on a dead worker's sticky queue moves to any worker after this.
        .sticky_queue_schedule_to_start_timeout(STICKY_SCHEDULE_TO_START)
        .workflow_task_poller_behavior(PollerBehavior::SimpleMaximum(WORKFLOW_TASK_POLLS))
        .nonsticky_to_sticky_poll_ratio(TASK_QUEUE_POLL_SHARE)
        // Activities still running when the grace ends are cancelled, so the worker can go.
        .graceful_shutdown_period(serving.shutdown_grace)
        .maybe_patch_activation_callback(step_patches(serving.steps))
        .register_activities(OrderActivities::new(
            shards.clone(),
            metrics.clone(),
            cache.clone(),
        ))
        .register_activities(StockActivities::new(
            shards.clone(),
            metrics.clone(),
            cache.clone(),
        ))
        .register_activities(TwoPhaseActivities::new(
            shards.clone(),
            metrics.clone(),
            cache,
        ))
        .register_activities(RecoveryActivities::new(
            shards.clone(),
            client.clone(),
            metrics.clone(),
        ))
        .register_activities(RetentionActivities::new(
            shards.clone(),
            client.clone(),
            metrics.clone(),
        ))
        .register_activities(ImportActivities::with_policy(
            shards.clone(),
            metrics.clone(),
            serving.imports.clone(),
        ))
        .register_activities(LifecycleActivities::new(client.clone()))
        .register_activities(ReshardActivities::new(shards, metrics))
        .register_workflow::<PlaceOrderWorkflow>()?
        .register_workflow::<OrderLifecycleWorkflow>()?
        .register_workflow::<ImportOrdersWorkflow>()?
        .register_workflow::<InDoubtRecoveryWorkflow>()?
        .register_workflow::<IdempotencyRetentionWorkflow>()?
        .register_workflow::<ReshardWorkflow>()?
        .build();
    let mut worker =
        Worker::new(&runtime, client, options).context("failed to create the worker")?;
    let stop = worker.shutdown_handle();
    tracing::info!(task_queue, "worker polling");
    let run = worker.run();
    tokio::pin!(run);
    let result = tokio::select! {
        result = &mut run => result,
        () = shutdown => {
            let grace = serving.shutdown_grace;
            tracing::info!(grace_secs = grace.as_secs(), "shutting down: polling stopped, finishing in-flight tasks");
            stop();
            // Past the grace, cancelled activities get a moment to report; then go anyway:
            // their tasks time out on the server and another worker runs them, and every
            // step is idempotent.
            match tokio::time::timeout(grace + SHUTDOWN_REPORTING, &mut run).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(grace_secs = grace.as_secs(), "tasks still in flight after the shutdown grace; exiting without them (Temporal retries them elsewhere)");
                    Ok(())
                }
            }
        }
    };
    shard_samples.abort();
    map_refresh.abort();
    let _ = api_stop.send(());
    if let Some(api) = api {
        api.await.context("read API panicked")?;
    }
    result.context("worker stopped with an error")
}

/// Starts one of the namespace's maintenance loops unless it already runs (restarting it on
/// every worker start would let a crash-looping or scaling fleet starve it). Failing to
/// start it is logged, not fatal: orders still work, and `otherwise` says what that costs.
async fn ensure_running<W>(
    client: &Client,
    run: W,
    workflow_id: &str,
    input: W::Input,
    task_queue: &str,
    otherwise: &str,
) where
    W: temporalio_common::HasWorkflowDefinition,
    W::Input: Send + std::fmt::Debug + Clone,
{
    let options = WorkflowStartOptions::new(task_queue, workflow_id)
        .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
        .build();
    match client.start_workflow(run, input.clone(), options).await {
        Ok(_) => tracing::info!(workflow_id, ?input, "maintenance loop running"),
        Err(e) => {
            tracing::warn!(workflow_id, error = %e, "could not start a maintenance loop; {otherwise}")
        }
    }
}

/// Adopts newer shard map versions as they are stored: every `every`, and at once when a
/// shard refused a write because its bucket moved.
async fn refresh_shard_map(shards: Shards, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shards.map_stale() => {}
        }
        if let Err(e) = shards.refresh_map().await {
            tracing::warn!(error = %e, "could not refresh the shard map; routing by the last one read");
        }
    }
}

/// Samples every shard every two seconds: its pool's size, whether it answers, and its
/// prepared two-phase parts (how many, the oldest one's age), which hold locks until decided.
async fn sample_shards(shards: Shards, metrics: Arc<OrderMetrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut failovers_seen = vec![0; shards.len()];
    loop {
        tick.tick().await;
        // Side by side: a shard that is down costs its own sample the ping's timeout, not
        // the others'.
        futures::future::join_all(shards.iter().map(|shard| sample(shard, &metrics))).await;
        // The hosts' roles and lags, as the shards' followers last probed them.
        for (shard, seen) in shards.iter().zip(&mut failovers_seen) {
            let failovers = shard.hosts.failovers();
            metrics.shard_hosts(
                shard.index,
                &shard.hosts.states(),
                failovers - *seen,
                !shard.seems_down(),
            );
            *seen = failovers;
        }
    }
}

/// One shard's sample: its pool, whether it answers a ping (which `Shard::seems_down`
/// remembers, so two-phase steps stop waiting for it), its prepared parts, and when its
/// newest restore point was taken.
async fn sample(shard: &orders_core::Shard, metrics: &OrderMetrics) {
    let pool = shard.conn.get_postgres_connection_pool();
    let idle = pool.num_idle() as u64;
    metrics.pool_connections(
        shard.index,
        u64::from(pool.size()).saturating_sub(idle),
        idle,
    );
    if !shard.answers().await {
        // A shard that is down keeps its last prepared-part values and reports down.
        metrics.shard_up(shard.index, false);
        return;
    }
    match two_phase::in_doubt(&shard.conn).await {
        Ok(prepared) => {
            let oldest = prepared.first().map_or(0, |p| p.age_secs.max(0) as u64);
            metrics.prepared_parts(shard.index, prepared.len() as u64, oldest);
            metrics.shard_up(shard.index, true);
        }
        Err(_) => metrics.shard_up(shard.index, false),
    }
    // 0 until the first point: the `NoRecentRestorePoint` alert ignores shards without one.
    if let Ok(newest) = backup_points::newest_taken_at(&shard.conn).await {
        metrics.restore_point_taken(shard.index, newest.unwrap_or(0).max(0) as u64);
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("failed to listen for SIGTERM");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
