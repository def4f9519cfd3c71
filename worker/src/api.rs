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

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use orders_core::Shards;
use orders_read::OrderCache;
use orders_read::pages::{self, ListError};
use serde::Deserialize;

#[derive(Clone)]
struct Api {
    shards: Shards,
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

/// Serves the API on `addr` until `shutdown` resolves; with `token`, only to requests that
/// carry it.
pub async fn serve(
    addr: SocketAddr,
    token: Option<ApiToken>,
    shards: Shards,
    cache: Arc<OrderCache>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut app = Router::new()
        .route("/orders", get(orders_page))
        .route("/orders/counts", get(counts))
        .route("/orders/{id}", get(order))
        .route("/customers/{id}/orders", get(customer_orders))
        .route("/cache", get(cache_stats))
        .with_state(Api { shards, cache });
    match token {
        Some(token) => app = app.layer(middleware::from_fn_with_state(token, require_token)),
        None if !addr.ip().is_loopback() => tracing::warn!(
            %addr,
            "the read API serves customers' names and emails beyond loopback without a token; set ORDERS_API_TOKEN"
        ),
        None => {}
    }
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot serve the read API on {addr} (set ORDERS_API_ADDR to a free address, or off)"
        )
    })?;
    tracing::info!(addr = %listener.local_addr()?, "serving the read API");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("read API stopped")
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
    match api.cache.get(&api.shards, id).await {
        Ok(Some(found)) => Json(found.as_ref().clone()).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("order {id} does not exist on any shard"),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn orders_page(State(api): State<Api>, Query(page): Query<PageQuery>) -> Response {
    page_response(pages::orders_page(&api.shards, page.cursor.as_deref(), page.limit).await)
}

async fn customer_orders(
    State(api): State<Api>,
    Path(customer_id): Path<i64>,
    Query(page): Query<PageQuery>,
) -> Response {
    page_response(
        pages::customer_orders_page(&api.shards, customer_id, page.cursor.as_deref(), page.limit)
            .await,
    )
}

async fn counts(State(api): State<Api>) -> Response {
    Json(pages::count_by_status(&api.shards).await).into_response()
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
        Err(e @ ListError::Shard(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
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
}
