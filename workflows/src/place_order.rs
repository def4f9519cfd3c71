//! `PlaceOrder`: validate → create the order (pending) → reserve credit → confirm.
//!
//! Input and result are plain JSON (see README, "Public contract"), so any Temporal client
//! can start it. The input is taken as raw JSON and validated here, so malformed input fails
//! the workflow with `InvalidOrder` instead of failing workflow tasks forever.
//!
//! The activities' idempotency key is `<workflow id>/<run id>/<step>`: stable across worker
//! crashes and activity retries of one run, distinct for a new run that reuses the id.

use orders_activities::failure::{COMPENSATION_FAILED, INVALID_ORDER, non_retryable};
use orders_activities::{
    CreateOrderInput, CreditInput, OrderActivities, OrderRef, PlacedOrder, ValidOrder,
};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityExecutionError, WorkflowContext, WorkflowResult, WorkflowTermination,
};

use crate::failures::workflow_failure;
use crate::saga::Saga;

/// The workflow type other clients start by name: `PlaceOrder`.
pub const WORKFLOW_TYPE: &str = "PlaceOrder";

#[workflow]
#[derive(Default)]
pub struct PlaceOrderWorkflow;

#[workflow_methods]
impl PlaceOrderWorkflow {
    #[run(name = "PlaceOrder")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: serde_json::Value,
    ) -> WorkflowResult<PlacedOrder> {
        let order = ValidOrder::from_json(&input)
            .map_err(|invalid| non_retryable(INVALID_ORDER, invalid.0))?;
        let key = format!("{}/{}", ctx.workflow_id(), ctx.run_id());
        let mut saga = Saga::new(ctx);
        let outcome = place(&mut saga, order, &key).await;
        let err = match outcome {
            Ok(placed) => return Ok(placed),
            Err(err) => err,
        };
        let cancelled = ctx.cancellation_token().is_cancelled();
        let failed = saga.compensate().await;
        if !failed.is_empty() {
            let detail = failed
                .iter()
                .map(|f| format!("{}: {}", f.activity, f.error))
                .collect::<Vec<_>>()
                .join("; ");
            if !ctx.is_replaying() {
                tracing::error!(workflow_id = ctx.workflow_id(), %detail, "compensation failed; manual repair needed");
            }
            return Err(non_retryable(
                COMPENSATION_FAILED,
                format!("order failed ({err}) and compensation did not complete: {detail}"),
            )
            .into());
        }
        if cancelled {
            return Err(WorkflowTermination::cancelled());
        }
        Err(workflow_failure(&err).into())
    }
}

/// The forward path. Each step registers its compensation before it runs.
async fn place(
    saga: &mut Saga<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
) -> Result<PlacedOrder, ActivityExecutionError> {
    let create_key = format!("{key}/create-order");
    let customer_id = order.customer_id;
    let created = saga
        .step(
            OrderActivities::create_order,
            CreateOrderInput {
                idempotency_key: create_key.clone(),
                order,
            },
            OrderActivities::delete_order,
            OrderRef {
                idempotency_key: create_key,
                customer_id,
            },
        )
        .await?;
    let credit = CreditInput {
        order_id: created.order_id,
        customer_id,
        amount: created.total_amount,
    };
    saga.step(
        OrderActivities::reserve_credit,
        credit.clone(),
        OrderActivities::release_credit,
        credit,
    )
    .await?;
    saga.final_step(OrderActivities::confirm_order, created)
        .await
}
