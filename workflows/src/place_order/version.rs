//! Which shape of PlaceOrder a run follows, read from the patch markers its history carries.
//!
//! Every `ctx.patched` of PlaceOrder is here. A patch records its marker the first time a new
//! run asks it and gets yes; on replay it answers from the history, and the marker must come
//! back at the same point among the run's commands. So each patch is asked exactly where, and
//! under exactly the conditions, PlaceOrder has always asked it: the five that decide the
//! shape before the first command, in `Version::of`; the others later, by the methods
//! below, where their markers sit in recorded histories.
//!
//! A worker started with `ORDERS_STEPS=remote` declines [`LOCAL_STEP_PATCHES`] (see
//! `orders_worker`), so its orders take `Version::Remote`. See
//! `docs/decisions/patch-versioning.md` for why patches and not worker versioning, and
//! `legacy` for when an old shape goes.

use temporalio_sdk::WorkflowContext;

use super::PlaceOrderWorkflow;
use crate::steps::Steps;

/// A round's parts prepared in one step and committed in one (see [`super::two_phase`]).
/// The newest patch: it marks every order a worker with local steps starts.
pub(crate) const GROUPED_STEPS_PATCH: &str = "two-phase-grouped-steps";

/// PlaceOrder leaves the order's lifecycle to its first status change (see
/// [`crate::order_lifecycle`]).
pub(crate) const LAZY_LIFECYCLE_PATCH: &str = "lazy-lifecycle";

/// A saga reserves its stock parts side by side and reserves credit and confirms in one step
/// (see [`super::with_saga`]).
pub(crate) const LEAN_SAGA_PATCH: &str = "lean-saga";

/// An order costs the server one workflow task: every step runs as a local activity (see
/// [`crate::steps`]), search attributes go out together (see `publish`), and a
/// local activity starts the lifecycle.
pub(crate) const ONE_TASK_PATCH: &str = "one-task-order";

/// Two-phase steps run as local activities; replaced by [`ONE_TASK_PATCH`].
pub(crate) const LOCAL_STEPS_PATCH: &str = "two-phase-local-steps";

/// A two-phase order whose plan a bucket move made stale rolls that round back and plans
/// again, instead of failing.
pub(crate) const REPLAN_PATCH: &str = "two-phase-replan";

/// Stock (the `PlanOrder` and `ReserveStock` steps, the `OrderId` search attribute) and
/// two-phase commit.
pub(crate) const INVENTORY_PATCH: &str = "inventory";

/// The `order` memo (the placed order, shown in the Web UI).
pub(crate) const ORDER_MEMO_PATCH: &str = "order-memo";

/// The confirmed order's [`crate::OrderLifecycleWorkflow`] started as a child workflow.
pub(crate) const ORDER_LIFECYCLE_PATCH: &str = "order-lifecycle";

/// The patches a worker started with `ORDERS_STEPS=remote` declines for new orders, so that
/// they run every step as an activity of its own (`Version::Remote`). Histories follow
/// what they recorded either way.
pub const LOCAL_STEP_PATCHES: [&str; 5] = [
    GROUPED_STEPS_PATCH,
    LAZY_LIFECYCLE_PATCH,
    LEAN_SAGA_PATCH,
    ONE_TASK_PATCH,
    LOCAL_STEPS_PATCH,
];

/// The shape a PlaceOrder run follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// What a worker starts by default ([`GROUPED_STEPS_PATCH`] and every patch before it):
    /// local steps, the lean saga, grouped two-phase steps, the lifecycle left to its first
    /// status change.
    Current,
    /// What a worker started with `ORDERS_STEPS=remote` starts ([`INVENTORY_PATCH`], the
    /// local-step patches declined): every step an activity of its own, the saga step by step,
    /// the lifecycle started as a child workflow. An invalid order from before
    /// [`ONE_TASK_PATCH`] reads as this too: it fails before `inventory` is asked, the same
    /// way in every shape.
    Remote,
    /// A shape only recorded histories have (see `legacy`).
    Legacy(Shape),
}

impl Version {
    /// Asks the patches that decide the shape, before the run's first command. Newest first,
    /// each implying the ones after it (such histories do not mark them one by one), so the
    /// first yes ends the questions. `valid`: whether the input is an order; an invalid one
    /// fails right away and was never asked [`INVENTORY_PATCH`].
    pub(crate) fn of(ctx: &WorkflowContext<PlaceOrderWorkflow>, valid: bool) -> Self {
        if ctx.patched(GROUPED_STEPS_PATCH) {
            Version::Current
        } else if ctx.patched(LAZY_LIFECYCLE_PATCH) {
            Version::Legacy(Shape::LazyLifecycle)
        } else if ctx.patched(LEAN_SAGA_PATCH) {
            Version::Legacy(Shape::LeanSaga)
        } else if ctx.patched(ONE_TASK_PATCH) {
            Version::Legacy(Shape::OneTask)
        } else if !valid || ctx.patched(INVENTORY_PATCH) {
            Version::Remote
        } else {
            Version::Legacy(Shape::WithoutStock)
        }
    }

    /// Whether search attributes wait for `publish` ([`ONE_TASK_PATCH`] on) or go out
    /// at once.
    pub(crate) fn holds_attributes(self) -> bool {
        !matches!(self, Version::Remote | Version::Legacy(Shape::WithoutStock))
    }

    /// How a `Version::Remote` two-phase order's steps run: as activities, or as local
    /// activities in histories recorded under [`LOCAL_STEPS_PATCH`] (replay only: remote
    /// workers decline it). Asked once the order's search attributes are set, where those
    /// histories have its marker.
    pub(crate) fn remote_two_phase_steps(ctx: &WorkflowContext<PlaceOrderWorkflow>) -> Steps {
        if ctx.patched(LOCAL_STEPS_PATCH) {
            Steps::Local
        } else {
            Steps::Remote
        }
    }

    /// Whether a round whose plan went stale is planned again ([`REPLAN_PATCH`]); no only in
    /// histories recorded before it, which fail the order instead. Asked when a plan first
    /// goes stale and the order may plan again, in every shape, so its marker sits where
    /// the first new plan starts. The patch predates [`LEAN_SAGA_PATCH`], so a run of
    /// `Version::Current` always gets yes.
    pub(crate) fn replans(ctx: &WorkflowContext<PlaceOrderWorkflow>) -> bool {
        ctx.patched(REPLAN_PATCH)
    }

    /// Asks `patch` on a `Version::Remote` run, for its marker alone. Remote runs ask
    /// [`ORDER_MEMO_PATCH`] and then [`ORDER_LIFECYCLE_PATCH`] once the order is confirmed, as
    /// every shape before [`ONE_TASK_PATCH`] did, and always get yes: both predate
    /// [`INVENTORY_PATCH`], which every remote run carries. (A history without the marker
    /// would still fail replay: the memo or the child that follows would not match it.)
    pub(crate) fn mark_remote(ctx: &WorkflowContext<PlaceOrderWorkflow>, patch: &str) {
        let _always_yes = ctx.patched(patch);
    }

    /// Whether the confirmed order goes into the `order` memo ([`ORDER_MEMO_PATCH`]), asked
    /// once the order is confirmed, in shapes before [`ONE_TASK_PATCH`].
    pub(crate) fn records_order_memo(ctx: &WorkflowContext<PlaceOrderWorkflow>) -> bool {
        ctx.patched(ORDER_MEMO_PATCH)
    }

    /// Whether PlaceOrder starts the order's lifecycle as a child workflow
    /// ([`ORDER_LIFECYCLE_PATCH`]), asked after the memo, in shapes before
    /// [`ONE_TASK_PATCH`].
    pub(crate) fn starts_child_lifecycle(ctx: &WorkflowContext<PlaceOrderWorkflow>) -> bool {
        ctx.patched(ORDER_LIFECYCLE_PATCH)
    }
}

/// The shapes only recorded histories have, newest first; each is named by the patch that
/// introduced it (the constants above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `lazy-lifecycle`: today's saga, two-phase with a local step per part.
    LazyLifecycle,
    /// `lean-saga`: as [`Shape::LazyLifecycle`], and a local activity starts the lifecycle.
    LeanSaga,
    /// `one-task-order`: as [`Shape::LeanSaga`], with the saga step by step.
    OneTask,
    /// Before `inventory`: a saga without stock steps (two-phase orders ran as sagas), every
    /// step an activity, the memo and a child lifecycle each behind its own patch.
    WithoutStock,
}
