//! The worker's HTTP read API: orders by id (through the order cache), pages of all orders
//! or of one customer's, and counts by status. JSON in and out; errors are
//! `{"error": "..."}` with a status code that says whose fault it is.
//!
//! | route | answer |
//! |---|---|
//! | `GET /orders/{id}` | the order with its items and shard; 404 if no shard has it |
//! | `GET /orders?limit=&cursor=` | a page of every shard's orders, newest first |
//! | `GET /customers/{id}/orders?limit=&cursor=` | a page of one customer's orders |
//! | `GET /orders/counts` | orders per status, and `missing_shards` if some did not answer |
//! | `GET /cache` | order cache hits, misses, entries and hit ratio |
//!
//! It serves customers' names and emails, so it listens on loopback unless told otherwise,
//! and with `ORDERS_API_TOKEN` set every request needs `Authorization: Bearer <token>`.
//!
//! Its clients cannot be trusted to be few, quick or polite, and the order steps must not
//! pay for them: it reads through pools of its own ([`orders_core::read_pools`]), serves at
//! most [`MAX_CONCURRENT_REQUESTS`] requests at once (503 beyond), gives each
//! [`REQUEST_TIMEOUT`], and [`server`] bounds connections and the time to send headers. An
//! error body names a shard by its number alone; its server, user, database and certificate
//! paths go to the worker's log.

mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use orders_core::ShardError;
use orders_core::read_pools::ReadPools;
use orders_read::OrderCache;
use orders_read::pages::{self, ListError};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use server::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};

/// Requests served at once; more are answered 503 at once rather than queued behind them.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// The longest a request may take, its shard reads included; then it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Api {
    reads: ReadPools,
    cache: Arc<OrderCache>,
}

/// The bearer token every request must carry. `Debug` does not show it.
#[derive(Clone)]
pub struct ApiToken(Arc<str>);

impl ApiToken {
    /// A token; an empty one is refused, as it would let anyone in who sends `Bearer `.
    pub fn new(token: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !token.is_empty(),
            "ORDERS_API_TOKEN is set but empty: set it to a secret, or unset it"
        );
        Ok(Self(token.into()))
    }

    /// Whether `header` is `Bearer <this token>`, compared in constant time.
    fn admits(&self, header: Option<&[u8]>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        constant_time_eq(given, self.0.as_bytes())
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

/// Byte equality that takes as long wherever the first difference is (the length is not
/// secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    difference == 0
}

/// Answers 401 unless the request carries the token.
async fn require_token(State(token): State<ApiToken>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes());
    if token.admits(given) {
        next.run(request).await
    } else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <ORDERS_API_TOKEN>".into(),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

/// Answers 503 at once when [`MAX_CONCURRENT_REQUESTS`] are in flight, and when a request
/// runs past [`REQUEST_TIMEOUT`] (dropping it cancels its shard reads).
async fn limit(State(in_flight): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    let Ok(_permit) = in_flight.try_acquire_owned() else {
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the read API is serving {MAX_CONCURRENT_REQUESTS} requests already; try again shortly"
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%path, timeout_secs = REQUEST_TIMEOUT.as_secs(), "read API request timed out");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the request took longer than {} s; try again later",
                    REQUEST_TIMEOUT.as_secs()
                ),
            )
        }
    }
}

/// Binds the read API's address; fails naming it and what to do, so that a worker whose API
/// cannot be served refuses to start instead of running without it.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot serve the read API on {addr}: set ORDERS_API_ADDR to a free address, or to off to run without the read API"
        )
    })
}

/// Serves the API on `listener` until `shutdown` resolves; with `token`, only to requests
/// that carry it. An order by id is read from its shard's primary, listings and counts from
/// a standby within the lag bound when there is one ([`ReadPools`]).
pub async fn serve(
    listener: TcpListener,
    token: Option<ApiToken>,
    reads: ReadPools,
    cache: Arc<OrderCache>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
    let mut app = Router::new()
        .route("/orders", get(orders_page))
        .route("/orders/counts", get(counts))
        .route("/orders/{id}", get(order))
        .route("/customers/{id}/orders", get(customer_orders))
        .route("/cache", get(cache_stats))
        .with_state(Api { reads, cache })
        .layer(middleware::from_fn_with_state(in_flight, limit));
    // The token is checked first, so requests without it never take a request's place.
    let beyond_loopback = listener
        .local_addr()
        .is_ok_and(|addr| !addr.ip().is_loopback());
    match token {
        Some(token) => app = app.layer(middleware::from_fn_with_state(token, require_token)),
        None if beyond_loopback => tracing::warn!(
            "the read API serves customers' names and emails beyond loopback without a token; set ORDERS_API_TOKEN"
        ),
        None => {}
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving the read API");
    }
    server::serve_connections(listener, app, shutdown).await;
}

/// `?limit=&cursor=`.
#[derive(Deserialize)]
struct PageQuery {
    #[serde(default = "default_limit")]
    limit: u64,
    cursor: Option<String>,
}

fn default_limit() -> u64 {
    50
}

async fn order(State(api): State<Api>, Path(id): Path<i64>) -> Response {
    match api.cache.get(&api.reads.primaries(), id).await {
        Ok(Some(found)) => Json(found.as_ref().clone()).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("order {id} does not exist on any shard"),
        ),
        Err(e) => shard_unavailable(&e),
    }
}

async fn orders_page(State(api): State<Api>, Query(page): Query<PageQuery>) -> Response {
    page_response(
        pages::orders_page(&api.reads.within_lag(), page.cursor.as_deref(), page.limit).await,
    )
}

async fn customer_orders(
    State(api): State<Api>,
    Path(customer_id): Path<i64>,
    Query(page): Query<PageQuery>,
) -> Response {
    page_response(
        pages::customer_orders_page(
            &api.reads.within_lag(),
            customer_id,
            page.cursor.as_deref(),
            page.limit,
        )
        .await,
    )
}

async fn counts(State(api): State<Api>) -> Response {
    let mut counts = pages::count_by_status(&api.reads.within_lag()).await;
    for missing in &mut counts.missing_shards {
        tracing::warn!(shard = missing.shard, error = %missing.error, "read API: a shard left out of the counts");
        missing.error = UNAVAILABLE.to_owned();
    }
    Json(counts).into_response()
}

async fn cache_stats(State(api): State<Api>) -> Response {
    Json(api.cache.stats()).into_response()
}

fn page_response(page: Result<pages::OrderPage, ListError>) -> Response {
    match page {
        Ok(page) => Json(page).into_response(),
        Err(
            e @ (ListError::BadCursor(_) | ListError::BadPageSize(_) | ListError::BadOffset(_)),
        ) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(ListError::Shard(e)) => shard_unavailable(&e),
    }
}

/// What a client is told of a shard that failed: the rest is the operator's business.
const UNAVAILABLE: &str = "unavailable; try again later";

/// 503 naming the shard by its number; the error, with the shard's URL, goes to the log.
fn shard_unavailable(e: &ShardError) -> Response {
    tracing::warn!(shard = e.shard, error = %e, "read API: a shard did not answer");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("shard {} {UNAVAILABLE}", e.shard),
    )
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = ApiToken::new("s3cret").unwrap();
        assert!(token.admits(Some(b"Bearer s3cret")));
        for refused in [
            None,
            Some(&b"Bearer s3cre"[..]),
            Some(b"Bearer s3cret "),
            Some(b"bearer s3cret"),
            Some(b"s3cret"),
            Some(b"Bearer "),
        ] {
            assert!(!token.admits(refused), "{refused:?}");
        }
    }

    #[test]
    fn an_empty_token_is_refused() {
        assert!(ApiToken::new("").is_err());
    }

    #[tokio::test]
    async fn a_failed_shard_is_named_by_its_number_alone() {
        let failed = ShardError {
            shard: 2,
            url: "postgres://reader@db-2.internal:5432/orders?sslrootcert=/etc/orders/ca.crt"
                .into(),
            source: sea_orm::DbErr::Custom("could not read /etc/orders/ca.crt".into()),
        };
        let response = shard_unavailable(&failed);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            body,
            r#"{"error":"shard 2 unavailable; try again later"}"#.as_bytes()
        );
    }
}
