//! Reconciliation that runs by itself: when it is due, and what a run changes in the ledger.
//!
//! The ledger decides *when*: [`EventLedger::reconcile_trigger`] is due
//! - `LOST_CHECKOUT_AFTER_MS` after a hold lapsed with no outcome (a checkout that may have
//!   been charged and then lost), unless a later run already covered that instant, and at
//!   most once per [`RECONCILE_MIN_INTERVAL_MS`];
//! - at the event's `end_ms`, once;
//! - after the end, whenever the books changed since the last run and nothing is in flight
//!   (no stored payment, refund or hold open), so the end-of-event report ends true.
//!
//! The deadline is part of [`EventLedger::next_deadline`], so the object's alarm wakes for
//! it, and `Alarm` emits [`Effect::Reconcile`] (one at a time; a run with no answer after
//! [`RECONCILE_TIMEOUT_MS`] is asked for again). The shell lists every lane's charges since
//! [`ReconcileRequest::since_ms`] and feeds them back as `Command::Reconcile`, or
//! `Command::ReconcileFailed` (retried with backoff). A run, in one command:
//! 1. folds known states in: a succeeded charge of an `Expired` stored payment is its late
//!    approval (`Forwarded`, `late_approval`);
//! 2. moves each lost checkout's order to `Lost` and starts its refund (id and acquirer key
//!    `lost_{charge}`, so it is refunded once), synchronously, so a late `Confirm` is
//!    refused instead of selling an order whose money is going back;
//! 3. answers the event's report ([`EventLedger::event_report`]), which the shell signs.

use super::forward::start_refund;
use super::report::{AcquirerCharge, EventReport, LostCheckout, LOST_CHECKOUT_AFTER_MS};
use super::{
    backoff_ms, AcquirerResult, AuthState, Effect, EventLedger, Fx, LedgerError, OrderState,
    Refund, RefundState, Reply,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Runs for lost checkouts start at least this long after the last run.
pub const RECONCILE_MIN_INTERVAL_MS: i64 = 60_000;
/// A run without an answer after this long (the Worker died mid-listing) is asked for again.
pub const RECONCILE_TIMEOUT_MS: i64 = 10 * 60_000;
/// Listings start this long before the event's first order or its start, whichever is
/// earlier (clock differences between the edge and the acquirer).
pub const RECONCILE_MARGIN_MS: i64 = 15 * 60_000;

/// Why a reconciliation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileReason {
    /// A hold lapsed with no outcome `LOST_CHECKOUT_AFTER_MS` ago.
    LostCheckouts,
    /// The event ended.
    EventEnd,
    /// After the end, the books changed since the last run.
    BooksChanged,
    /// The operator or merchant asked (`POST /v1/admin/events/{id}/reconcile`).
    Requested,
}

/// What the shell lists for an [`Effect::Reconcile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileRequest {
    /// List charges created at or after this instant (Unix ms; Stripe's `created[gte]` is
    /// in seconds).
    pub since_ms: i64,
    pub reason: ReconcileReason,
}

/// How a listing went, as the shell reports it with `Command::Reconcile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Charges created at or after this instant were asked for.
    pub since_ms: i64,
    /// When the listing started (the object's clock).
    pub started_ms: i64,
    /// The listing stopped before the end (a page bound, or a cursor that did not move).
    pub truncated: bool,
}

/// The reconciliation schedule, kept in the ledger's head.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconSchedule {
    /// Bumped whenever an order's money state changes (paid, forwarded, refunded, lost).
    #[serde(default)]
    pub books_version: u64,
    /// When the last completed run started listing.
    #[serde(default)]
    pub covered_ms: Option<i64>,
    /// `books_version` after the last completed run.
    #[serde(default)]
    pub covered_version: u64,
    /// Set while an emitted run has not answered.
    #[serde(default)]
    pub in_flight_until: Option<i64>,
    /// Failed runs in a row, and when the next may start.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub retry_at_ms: Option<i64>,
    /// Orders whose hold lapsed with no outcome, and when they count as lost
    /// (`hold_expires_ms + LOST_CHECKOUT_AFTER_MS`); dropped once a run covered that instant.
    #[serde(default)]
    pub lapsed: BTreeMap<String, i64>,
    #[serde(default)]
    pub runs: u32,
}

/// What `Command::Reconcile` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Reconciled {
    /// Lost checkouts found by this run (their refunds are among the effects).
    pub lost: Vec<LostCheckout>,
    /// Stored payments folded in as late approvals (auth ids).
    pub late_approvals: Vec<String>,
    pub report: EventReport,
}

impl EventLedger {
    pub(crate) fn books_changed(&mut self) {
        self.recon.books_version = self.recon.books_version.wrapping_add(1);
    }

    /// Whether nothing waits on the acquirer: no stored payment queued, no refund open and
    /// no hold running.
    pub(crate) fn nothing_open(&self) -> bool {
        self.holds.is_empty()
            && !self.auths.values().any(|a| a.state == AuthState::Queued)
            && !self
                .refunds
                .values()
                .any(|r| matches!(r.state, RefundState::Sending | RefundState::Queued))
    }

    /// When a reconciliation is next due and why, ignoring a run in flight and the retry
    /// backoff (see the module header). `None`: nothing to reconcile.
    pub fn reconcile_trigger(&self) -> Option<(i64, ReconcileReason)> {
        let covered = self.recon.covered_ms.unwrap_or(i64::MIN);
        let pending = self
            .holds
            .values()
            .map(|at| at.saturating_add(LOST_CHECKOUT_AFTER_MS));
        let lapsed = self
            .recon
            .lapsed
            .iter()
            .filter(|(id, _)| {
                self.orders
                    .get(id.as_str())
                    .is_some_and(|o| o.state == OrderState::Abandoned)
            })
            .map(|(_, at)| *at);
        // A burst of lost checkouts costs a run a minute, not one each.
        let spaced = covered.saturating_add(RECONCILE_MIN_INTERVAL_MS);
        let lost = pending
            .chain(lapsed)
            .filter(|at| *at > covered)
            .min()
            .map(|at| (at.max(spaced), ReconcileReason::LostCheckouts));
        let end = self.config.end_ms;
        let end = (covered < end).then_some((end, ReconcileReason::EventEnd));
        let changed = (covered >= self.config.end_ms
            && self.recon.books_version != self.recon.covered_version
            && self.nothing_open())
        .then_some((self.last_now_ms, ReconcileReason::BooksChanged));
        [lost, end, changed]
            .into_iter()
            .flatten()
            .min_by_key(|x| x.0)
    }

    /// The instant the alarm must wake for reconciliation.
    pub(crate) fn reconcile_deadline(&self) -> Option<i64> {
        if let Some(t) = self.recon.in_flight_until {
            return Some(t);
        }
        let (at, _) = self.reconcile_trigger()?;
        Some(at.max(self.recon.retry_at_ms.unwrap_or(i64::MIN)))
    }

    /// Where the acquirer listing starts: before the event's start and its first order.
    pub fn reconcile_since_ms(&self) -> i64 {
        let first = self
            .orders
            .values()
            .map(|o| o.created_ms)
            .min()
            .unwrap_or(self.config.start_ms);
        first
            .min(self.config.start_ms)
            .saturating_sub(RECONCILE_MARGIN_MS)
            .max(0)
    }

    /// A run whose answer never came is asked for again.
    pub(crate) fn unstick_reconcile(&mut self, now: i64, fx: &mut Fx) {
        if self.recon.in_flight_until.is_some_and(|t| t <= now) {
            self.recon.in_flight_until = None;
            fx.changed = true;
        }
    }

    /// From `Alarm`: asks the shell for a run when one is due.
    pub(crate) fn emit_reconcile(&mut self, now: i64, fx: &mut Fx) {
        if self.recon.in_flight_until.is_some() {
            return;
        }
        let Some((_, reason)) = self.reconcile_trigger() else {
            return;
        };
        match self.reconcile_deadline() {
            Some(at) if at <= now => {}
            _ => return,
        }
        self.recon.in_flight_until = Some(now.saturating_add(RECONCILE_TIMEOUT_MS));
        fx.changed = true;
        fx.push(Effect::Reconcile(ReconcileRequest {
            since_ms: self.reconcile_since_ms(),
            reason,
        }));
    }

    /// `Command::ReconcileFailed`: the listing could not be read; try again after a backoff.
    pub(crate) fn reconcile_failed(
        &mut self,
        now: i64,
        entropy: [u8; 8],
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        self.recon.in_flight_until = None;
        self.recon.failures = self.recon.failures.saturating_add(1);
        let delay = backoff_ms(self.recon.failures, "reconcile", entropy);
        self.recon.retry_at_ms = Some(now.saturating_add(delay));
        fx.changed = true;
        Ok(Reply::Done)
    }

    /// `Command::Reconcile`: folds the acquirer's charges in (see the module header).
    pub(crate) fn reconcile_command(
        &mut self,
        charges: Vec<AcquirerCharge>,
        listing: Listing,
        reason: ReconcileReason,
        now: i64,
        entropy: [u8; 8],
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        let late_approvals = self.fold_late_approvals(&charges, now, entropy, fx);
        let lost = self.lost_checkouts(&charges, now);
        for l in &lost {
            self.mark_lost(l, now, fx);
        }
        let covered = listing.started_ms.min(now);
        self.recon.lapsed.retain(|_, at| *at > covered);
        self.recon.covered_ms = Some(self.recon.covered_ms.map_or(covered, |c| c.max(covered)));
        self.recon.covered_version = self.recon.books_version;
        self.recon.in_flight_until = None;
        self.recon.failures = 0;
        self.recon.retry_at_ms = None;
        self.recon.runs = self.recon.runs.saturating_add(1);
        fx.changed = true;
        let report = self.event_report(&charges, &listing, reason, now);
        Ok(Reply::Reconciled {
            result: Box::new(Reconciled {
                lost,
                late_approvals,
                report,
            }),
        })
    }

    /// A succeeded charge of a stored payment that expired is its late approval: the money
    /// came in after the ledger gave up. Matched by the payment's acquirer key, or by order
    /// with the same amount and currency.
    fn fold_late_approvals(
        &mut self,
        charges: &[AcquirerCharge],
        now: i64,
        entropy: [u8; 8],
        fx: &mut Fx,
    ) -> Vec<String> {
        let mut folded = Vec::new();
        for ch in charges.iter().filter(|c| c.succeeded()) {
            let auth = self
                .auths
                .values()
                .filter(|a| a.state == AuthState::Expired)
                .find(|a| {
                    let by_key = ch.idempotency_key.as_deref() == Some(&a.idempotency_key);
                    let by_order = ch.order_id.as_deref() == Some(&a.order_id)
                        && ch.amount == a.amount
                        && ch.currency == a.currency;
                    by_key || by_order
                })
                .map(|a| a.auth_id.clone());
            let Some(auth_id) = auth else { continue };
            let result = AcquirerResult::Approved {
                charge_id: ch.id.clone(),
            };
            if self
                .forward_result(&auth_id, result, now, entropy, fx)
                .is_ok()
            {
                folded.push(auth_id);
            }
        }
        folded
    }

    /// Moves a lost checkout's order to `Lost` (giving back a hold it still has) and starts
    /// the refund of its charge, once per charge.
    fn mark_lost(&mut self, l: &LostCheckout, now: i64, fx: &mut Fx) {
        let refund_id = lost_refund_id(&l.charge_id);
        if self.refunds.get(&refund_id).is_some() {
            return;
        }
        let Some(order) = self.orders.get_mut(&l.order_id) else {
            return;
        };
        if order.state == OrderState::Pending {
            for line in &order.lines {
                if let Some(c) = self.counts.get_mut(&line.sku) {
                    c.held = c.held.saturating_sub(line.qty);
                }
            }
            self.holds.remove(&l.order_id);
        }
        order.state = OrderState::Lost;
        if !l.lane.is_empty() {
            // The refund goes to the account that holds the money.
            order.lane = l.lane.clone();
        }
        let mut refund = Refund {
            refund_id: refund_id.clone(),
            order_id: l.order_id.clone(),
            charge_id: l.charge_id.clone(),
            amount: l.amount,
            currency: order.currency,
            idempotency_key: refund_id.clone(),
            created_ms: now,
            may_queue: true,
            state: RefundState::Queued,
            attempts: 0,
            next_attempt_ms: now,
            in_flight_until: None,
            lost_checkout: true,
        };
        fx.push(Effect::ForwardRefund(start_refund(&mut refund, now)));
        fx.push(Effect::Notify {
            order_id: l.order_id.clone(),
            state: OrderState::Lost,
        });
        self.refunds.insert(refund_id, refund);
        self.books_changed();
        fx.changed = true;
    }
}

/// The refund id, and the acquirer idempotency key, of a lost checkout's charge.
pub fn lost_refund_id(charge_id: &str) -> String {
    format!("lost_{charge_id}")
}
