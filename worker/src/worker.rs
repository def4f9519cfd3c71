//! The Temporal worker: PlaceOrder and the order activities on one task queue.

use anyhow::Context;
use orders_activities::{OrderActivities, Shards};
use orders_workflows::PlaceOrderWorkflow;
use temporalio_client::Client;
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

/// Runs the worker until `shutdown` resolves, then drains in-flight tasks and returns.
pub async fn run(
    client: Client,
    task_queue: &str,
    shards: Shards,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let runtime = Runtime::from_current_tokio(Default::default())
        .context("failed to start the Temporal SDK runtime")?;
    let options = WorkerOptions::new(task_queue)
        .register_activities(OrderActivities::new(shards))
        .register_workflow::<PlaceOrderWorkflow>()?
        .build();
    let mut worker =
        Worker::new(&runtime, client, options).context("failed to create the worker")?;
    let stop = worker.shutdown_handle();
    tracing::info!(task_queue, "worker polling");
    let run = worker.run();
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => return result.context("worker stopped with an error"),
        () = shutdown => {
            tracing::info!("shutting down: finishing in-flight tasks");
            stop();
        }
    }
    run.await.context("worker stopped with an error")
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
