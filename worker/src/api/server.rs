//! The read API's connections, with the bounds a public HTTP endpoint needs and
//! `axum::serve` lacks: a client must send each request's headers within
//! [`HEADER_READ_TIMEOUT`] (one that trickles them, or connects and says nothing, is
//! disconnected), and at most [`MAX_CONNECTIONS`] are open at once (more are closed as soon
//! as they are accepted), so no client can hold the worker's sockets or memory.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a client has to send a request's headers, on a new connection and between the
/// requests of a kept-alive one.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Open connections at most.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight finish
/// for up to [`super::REQUEST_TIMEOUT`].
pub(super) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait instead of spinning.
                    tracing::warn!(error = %e, "read API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::debug!(%peer, MAX_CONNECTIONS, "read API connection closed: too many open");
            continue;
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "read API connection ended");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(super::REQUEST_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("read API requests still in flight at shutdown were dropped");
    }
}
