//! Commands about one order or a page of them: `submit`, `get`, `list`, `counts`, `cancel`,
//! `set-status`. Writes go through the workflows (Temporal); reads go to the shards.

use std::fmt;

use orders_activities::PlacedOrder;
use orders_core::store::orders::OrderWithItems;
use orders_core::{OrderRequest, Shards};
use orders_entities::order::OrderStatus;
use orders_read::{OrderPage, StatusCounts, pages};
use orders_workflows::progress::Acceptance;
use sea_orm::ActiveEnum;
use serde::{Serialize, Serializer};
use temporalio_client::Client;

use super::args::PageArgs;
use super::report::Report;
use crate::client::{self, CancelOutcome, OrderOutcome};

/// What `orders submit` learnt: accepted or refused at once, or (with `--wait`) the end.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum Submission {
    /// The `Accepted` update's answer.
    Answered {
        workflow_id: String,
        #[serde(flatten)]
        acceptance: Acceptance,
    },
    /// How the workflow ended.
    Finished(Finished),
}

/// Starts PlaceOrder for `request` with update-with-start; waits for its end if `wait`.
pub(super) async fn submit(
    client: &Client,
    task_queue: &str,
    request: &OrderRequest,
    workflow_id: Option<String>,
    wait: bool,
) -> anyhow::Result<Submission> {
    let workflow_id =
        workflow_id.unwrap_or_else(|| format!("place-order-{}", uuid::Uuid::new_v4()));
    let acceptance = client::submit_order(client, task_queue, &workflow_id, request).await?;
    if !wait || !acceptance.accepted {
        return Ok(Submission::Answered {
            workflow_id,
            acceptance,
        });
    }
    let outcome = client::order_outcome(client, &workflow_id).await?;
    Ok(Submission::Finished(Finished {
        workflow_id,
        outcome,
    }))
}

impl fmt::Display for Submission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Submission::Answered {
                workflow_id,
                acceptance,
            } if acceptance.accepted => write!(
                f,
                "order {} accepted on shard {} ({workflow_id}); payment and confirmation continue in the workflow",
                acceptance.order_id.unwrap_or_default(),
                acceptance.shard.unwrap_or_default()
            ),
            // A refusal is said once, on stderr (see `failure`).
            Submission::Answered { .. } => Ok(()),
            Submission::Finished(finished) => finished.fmt(f),
        }
    }
}

impl Report for Submission {
    fn failure(&self) -> Option<String> {
        match self {
            Submission::Answered {
                workflow_id,
                acceptance,
            } if !acceptance.accepted => Some(format!(
                "order refused: {} ({workflow_id})",
                acceptance.failure.as_deref().unwrap_or("no reason given")
            )),
            Submission::Answered { .. } => None,
            Submission::Finished(finished) => finished.failure(),
        }
    }
}

/// How a PlaceOrder run ended. As JSON: the placed order, or the workflow id with the
/// failure type and message (`cancelled: true` for a cancellation).
#[derive(Debug)]
pub(super) struct Finished {
    workflow_id: String,
    outcome: OrderOutcome,
}

impl Serialize for Finished {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let workflow_id = &self.workflow_id;
        match &self.outcome {
            OrderOutcome::Placed(placed) => placed.serialize(serializer),
            OrderOutcome::Failed {
                failure_type,
                message,
            } => serde_json::json!({"workflow_id": workflow_id, "failure_type": failure_type, "message": message})
                .serialize(serializer),
            OrderOutcome::Cancelled => {
                serde_json::json!({"workflow_id": workflow_id, "cancelled": true})
                    .serialize(serializer)
            }
            OrderOutcome::Other(message) => {
                serde_json::json!({"workflow_id": workflow_id, "message": message})
                    .serialize(serializer)
            }
        }
    }
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            OrderOutcome::Placed(p) => write!(
                f,
                "order {} confirmed ({}) on shard {} for customer {}, total {} ({})",
                p.order_id, p.consistency, p.shard, p.customer_id, p.total_amount, self.workflow_id
            ),
            _ => Ok(()),
        }
    }
}

impl Report for Finished {
    fn failure(&self) -> Option<String> {
        let workflow_id = &self.workflow_id;
        match &self.outcome {
            OrderOutcome::Placed(_) => None,
            OrderOutcome::Failed {
                failure_type,
                message,
            } => Some(format!(
                "order failed: {failure_type}: {message} ({workflow_id})"
            )),
            OrderOutcome::Cancelled => Some(format!("order cancelled ({workflow_id})")),
            OrderOutcome::Other(message) => {
                Some(format!("order did not complete: {message} ({workflow_id})"))
            }
        }
    }
}

/// An order with its items and the shard holding it.
#[derive(Debug, Serialize)]
pub(super) struct ShownOrder {
    #[serde(flatten)]
    order: OrderWithItems,
    shard: usize,
}

/// Finds order `order_id` by id alone.
pub(super) async fn get(shards: &Shards, order_id: i64) -> anyhow::Result<ShownOrder> {
    let Some((shard, order)) = orders_read::find_order(shards, order_id).await? else {
        anyhow::bail!(
            "order {order_id} does not exist on any of the {} shards",
            shards.len()
        );
    };
    Ok(ShownOrder { order, shard })
}

impl fmt::Display for ShownOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = &self.order;
        writeln!(f, "order {} (shard {})", order.id, self.shard)?;
        write!(
            f,
            "  customer {}  status {}  total {}",
            order.customer_id,
            order.status.to_value(),
            order.total_amount
        )?;
        if let Some(notes) = &order.notes {
            write!(f, "\n  notes    {notes}")?;
        }
        write!(
            f,
            "\n  created  {}  updated {}",
            order.created_at, order.updated_at
        )?;
        for item in &order.items {
            write!(
                f,
                "\n  - product {} × {} @ {}",
                item.product_id, item.quantity, item.price
            )?;
        }
        Ok(())
    }
}

impl Report for ShownOrder {}

/// One page of orders, newest first.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(super) struct Page(OrderPage);

/// Reads one page: a customer's from their shard, or every shard's by keyset (or OFFSET).
pub(super) async fn list(shards: &Shards, page: PageArgs) -> anyhow::Result<Page> {
    let PageArgs {
        customer,
        cursor,
        offset,
        limit,
    } = page;
    let page = match (customer, offset) {
        (Some(customer), _) => {
            pages::customer_orders_page(shards, customer, cursor.as_deref(), limit).await?
        }
        (None, Some(offset)) => OrderPage {
            orders: pages::orders_page_at_offset(shards, offset, limit).await?,
            next_cursor: None,
            complete_before: None,
        },
        (None, None) => pages::orders_page(shards, cursor.as_deref(), limit).await?,
    };
    Ok(Page(page))
}

impl fmt::Display for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for listed in &self.0.orders {
            let o = &listed.order;
            writeln!(
                f,
                "{:>12}  shard {}  {}  customer {} ({})  {:<9}  {:>10}",
                o.id,
                listed.shard,
                o.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                o.customer_id,
                o.customer_name.as_deref().unwrap_or("?"),
                o.status.to_value(),
                o.total_amount
            )?;
        }
        match &self.0.next_cursor {
            Some(next) => write!(f, "next page: --cursor {next}"),
            None => write!(f, "(last page)"),
        }
    }
}

impl Report for Page {}

/// Orders by status over every shard that answered.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(super) struct Counts {
    counts: StatusCounts,
    #[serde(skip)]
    shards: usize,
}

pub(super) async fn counts(shards: &Shards) -> Counts {
    Counts {
        counts: pages::count_by_status(shards).await,
        shards: shards.len(),
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (status, n) in &self.counts.by_status {
            writeln!(f, "{status:<10} {n:>10}")?;
        }
        write!(f, "{:<10} {:>10}", "total", self.counts.total)
    }
}

impl Report for Counts {
    fn failure(&self) -> Option<String> {
        if self.counts.is_complete() {
            return None;
        }
        let mut why = String::new();
        for missing in &self.counts.missing_shards {
            why.push_str(&format!(
                "missing shard {}: {}\n",
                missing.shard, missing.error
            ));
        }
        why.push_str(&format!(
            "counts are incomplete: {} of {} shards did not answer (their orders are not included)",
            self.counts.missing_shards.len(),
            self.shards
        ));
        Some(why)
    }
}

/// What `orders cancel` did.
#[derive(Debug, Serialize)]
#[serde(tag = "cancelled", rename_all = "snake_case")]
pub(super) enum Cancellation {
    /// PlaceOrder stopped and undid what it wrote.
    WhilePending { order_id: i64, workflow_id: String },
    /// The lifecycle cancelled the confirmed order and returned its credit and stock.
    AfterConfirmation { order: PlacedOrder },
}

pub(super) async fn cancel(
    client: &Client,
    task_queue: &str,
    order_id: i64,
) -> anyhow::Result<Cancellation> {
    Ok(
        match client::cancel_order(client, task_queue, order_id).await? {
            CancelOutcome::CancelledWhilePending { workflow_id } => Cancellation::WhilePending {
                order_id,
                workflow_id,
            },
            CancelOutcome::CancelledAfterConfirmation(order) => {
                Cancellation::AfterConfirmation { order }
            }
        },
    )
}

impl fmt::Display for Cancellation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cancellation::WhilePending {
                order_id,
                workflow_id,
            } => write!(
                f,
                "order {order_id} cancelled while pending ({workflow_id}); what it wrote was undone"
            ),
            Cancellation::AfterConfirmation { order } => write!(
                f,
                "order {} cancelled; credit and stock returned",
                order.order_id
            ),
        }
    }
}

impl Report for Cancellation {}

/// The order after `orders set-status`.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(super) struct StatusChanged(PlacedOrder);

pub(super) async fn set_status(
    client: &Client,
    task_queue: &str,
    order_id: i64,
    status: OrderStatus,
) -> anyhow::Result<StatusChanged> {
    Ok(StatusChanged(
        client::set_order_status(client, task_queue, order_id, status).await?,
    ))
}

impl fmt::Display for StatusChanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "order {} is now {}",
            self.0.order_id,
            self.0.status.to_value()
        )
    }
}

impl Report for StatusChanged {}
