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

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use orders_activities::Shards;
use orders_activities::read::OrderCache;
use orders_activities::read::pages::{self, ListError};
use serde::Deserialize;

#[derive(Clone)]
struct Api {
    shards: Shards,
    cache: Arc<OrderCache>,
}

/// Serves the API on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    shards: Shards,
    cache: Arc<OrderCache>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/orders", get(orders_page))
        .route("/orders/counts", get(counts))
        .route("/orders/{id}", get(order))
        .route("/customers/{id}/orders", get(customer_orders))
        .route("/cache", get(cache_stats))
        .with_state(Api { shards, cache });
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
