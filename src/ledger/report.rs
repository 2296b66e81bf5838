//! Read-only views: the live admin summary, reconciliation against the acquirer, the
//! end-of-event report, and order exports as CSV and NDJSON.

use super::config::valid_id;
use super::recon::{lost_refund_id, Listing, ReconcileReason};
use super::{AuthState, EventLedger, Order, OrderState, RefundState};
use crate::money::{Currency, MinorUnits};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Stock of one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SkuSummary {
    pub sku: String,
    pub name: String,
    pub stock: u32,
    pub sold: u32,
    pub held: u32,
    pub available: u32,
}

/// The body of `GET /v1/admin/events/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventSummary {
    pub event_id: String,
    pub title: String,
    pub currency: Currency,
    pub skus: Vec<SkuSummary>,
    /// Pending orders whose hold has not lapsed.
    pub active_holds: u32,
    #[schemars(extend("propertyNames" = {"$ref": "#/components/schemas/OrderState"}))]
    pub orders_by_state: BTreeMap<OrderState, u32>,
    /// Stored payments not yet forwarded: count, total, and the cap.
    pub queued_count: u32,
    pub queued_exposure: MinorUnits,
    pub aggregate_max: MinorUnits,
    pub refunds_pending: u32,
    pub queue_depth: u32,
    pub queue_admitted: u32,
    pub next_alarm_ms: Option<i64>,
}

/// One charge as the acquirer lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquirerCharge {
    pub id: String,
    pub amount: MinorUnits,
    pub currency: Currency,
    pub status: ChargeStatus,
    pub idempotency_key: Option<String>,
    /// The `order_id` the shell put in the charge's metadata.
    pub order_id: Option<String>,
    pub refunded_amount: MinorUnits,
    /// The lane (acquirer account) whose listing had it.
    #[serde(default)]
    pub lane: String,
}

impl AcquirerCharge {
    pub fn succeeded(&self) -> bool {
        self.status == ChargeStatus::Succeeded
    }

    /// The charges of `event_id` among a lane's listed payment intents (the others belong
    /// to other events on the same account). An intent in a currency that is not ISO 4217
    /// cannot be one of ours and is left out.
    pub fn of_event(
        records: Vec<crate::acquirer::ChargeRecord>,
        event_id: &str,
        lane: &str,
    ) -> Vec<AcquirerCharge> {
        use crate::acquirer::ChargeStatus as S;
        records
            .into_iter()
            .filter(|c| c.event_id.as_deref() == Some(event_id))
            .filter_map(|c| {
                Some(AcquirerCharge {
                    currency: Currency::parse(&c.currency).ok()?,
                    amount: if c.amount_received.0 > 0 {
                        c.amount_received
                    } else {
                        c.amount
                    },
                    status: match c.status {
                        S::Succeeded => ChargeStatus::Succeeded,
                        S::Processing | S::RequiresCapture => ChargeStatus::Pending,
                        _ => ChargeStatus::Failed,
                    },
                    idempotency_key: c.idempotency_key,
                    order_id: c.order_id,
                    refunded_amount: c.amount_refunded.unwrap_or_default(),
                    lane: lane.to_string(),
                    id: c.payment_intent_id,
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Succeeded,
    Failed,
    Pending,
}

/// An order whose money differs between the edge and the acquirer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmountMismatch {
    pub order_id: String,
    pub charge_id: String,
    pub edge_amount: MinorUnits,
    pub acquirer_amount: MinorUnits,
    pub edge_refunded: MinorUnits,
    pub acquirer_refunded: MinorUnits,
    pub currency_differs: bool,
}

/// The outcome of comparing the ledger with the acquirer's charge list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReconReport {
    /// `(order_id, charge_id)` pairs that agree.
    pub matched: Vec<(String, String)>,
    /// Orders the edge counts as paid with no successful charge at the acquirer.
    pub missing_at_acquirer: Vec<String>,
    /// Successful acquirer charges no paid order accounts for (charge ids).
    pub missing_at_edge: Vec<String>,
    pub amount_mismatch: Vec<AmountMismatch>,
    /// Stored payments not forwarded yet (order ids), so not expected at the acquirer; a
    /// charge of one of them (the online attempt of unknown outcome did charge) is not a
    /// difference either.
    pub awaiting_forward: Vec<String>,
    /// Charges no paid order accounts for that were refunded in full (e.g. the charge of a
    /// checkout that died between the acquirer and the ledger): settled, not a discrepancy.
    #[serde(default)]
    pub refunded_unpaid: Vec<String>,
    /// Charges of lost checkouts whose refund (`lost_{charge}`) is on its way.
    #[serde(default)]
    pub lost_refunding: Vec<String>,
    /// The acquirer listing stopped before its end: the comparison is incomplete.
    #[serde(default)]
    pub truncated: bool,
}

impl ReconReport {
    /// No difference and a complete listing. Payments and refunds still on their way
    /// (`awaiting_forward`, `lost_refunding`) are not differences.
    pub fn is_clean(&self) -> bool {
        self.missing_at_acquirer.is_empty()
            && self.missing_at_edge.is_empty()
            && self.amount_mismatch.is_empty()
            && !self.truncated
    }
}

/// A successful charge whose checkout was lost between the acquirer and the ledger (its
/// Worker died, or its hold lapsed first): reconciliation moves the order to `Lost` and
/// refunds the charge in full (see [`EventLedger::lost_checkouts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LostCheckout {
    pub charge_id: String,
    pub order_id: String,
    /// What is left to refund.
    pub amount: MinorUnits,
    /// The lane whose account holds the charge.
    #[serde(default)]
    pub lane: String,
}

/// This long after a hold lapsed with no outcome, no live checkout owns the order (a
/// checkout's whole budget is 8 s; until its hold lapses a slow `Confirm` may still come).
pub const LOST_CHECKOUT_AFTER_MS: i64 = 30_000;

/// The period a report's acquirer listing covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeRange {
    /// Charges created at or after this instant (Unix ms).
    pub from_ms: i64,
    /// When the listing started.
    pub to_ms: i64,
}

/// Money totals of a report, in the event's currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportTotals {
    pub orders: u32,
    /// Orders the acquirer holds money for (approved or forwarded, refunds aside).
    pub paid_orders: u32,
    /// What the paid orders were charged.
    pub sales: MinorUnits,
    /// Refunded on paid orders, as the acquirer confirmed.
    pub refunded: MinorUnits,
    /// `sales - refunded`.
    pub net: MinorUnits,
    /// Stored payments not forwarded yet: sold, not charged.
    pub awaiting_forward: MinorUnits,
    /// Succeeded charges the acquirer listed for this event, and what of them is refunded.
    pub acquirer_charges: u32,
    pub acquirer_charged: MinorUnits,
    pub acquirer_refunded: MinorUnits,
    /// Charges of lost checkouts, and what of them is refunded so far.
    pub lost_charges: u32,
    pub lost_charged: MinorUnits,
    pub lost_refunded: MinorUnits,
}

/// One lane's succeeded charges for the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LaneTotals {
    pub lane: String,
    pub charges: u32,
    pub charged: MinorUnits,
    pub refunded: MinorUnits,
}

/// The event's own refunds (lost-checkout refunds are in the totals' `lost_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundTotals {
    pub succeeded: u32,
    pub succeeded_amount: MinorUnits,
    pub pending: u32,
    pub pending_amount: MinorUnits,
    pub failed: u32,
}

/// Where the edge and the acquirer differ, and what is still on its way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Discrepancies {
    pub missing_at_acquirer: Vec<String>,
    pub missing_at_edge: Vec<String>,
    pub amount_mismatch: Vec<AmountMismatch>,
    pub awaiting_forward: Vec<String>,
    pub lost_refunding: Vec<String>,
    pub refunded_unpaid: Vec<String>,
}

/// The event's books against the acquirer after a reconciliation: what the shell signs
/// (`crate::receipt::sign_report`) and `GET /v1/admin/events/{id}/report` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventReport {
    pub event_id: String,
    pub merchant_id: String,
    pub currency: Currency,
    pub event_end_ms: i64,
    pub generated_ms: i64,
    pub reason: ReconcileReason,
    /// Made after the event's end with no stored payment, refund or hold open: the
    /// end-of-event report (a later one replaces it only when the books change).
    pub end_of_event: bool,
    pub covered: TimeRange,
    /// The acquirer listing stopped before its end: this report is incomplete.
    pub truncated: bool,
    /// No difference and a complete listing (see [`ReconReport::is_clean`]).
    pub clean: bool,
    pub totals: ReportTotals,
    pub lanes: Vec<LaneTotals>,
    pub refunds: RefundTotals,
    #[schemars(extend("propertyNames" = {"$ref": "#/components/schemas/OrderState"}))]
    pub orders_by_state: BTreeMap<OrderState, u32>,
    /// Orders whose charge matched.
    pub matched: u32,
    pub discrepancies: Discrepancies,
}

impl EventLedger {
    /// The live admin view at `now_ms`.
    pub fn summary(&self, now_ms: i64) -> EventSummary {
        let skus = self
            .config
            .skus
            .iter()
            .map(|s| {
                let c = self.counts.get(&s.id).copied().unwrap_or_default();
                SkuSummary {
                    sku: s.id.clone(),
                    name: s.name.clone(),
                    stock: s.stock,
                    sold: c.sold,
                    held: c.held,
                    available: self.available(&s.id),
                }
            })
            .collect();
        let mut orders_by_state = BTreeMap::new();
        for o in self.orders.values() {
            *orders_by_state.entry(o.state).or_insert(0u32) += 1;
        }
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        EventSummary {
            event_id: self.config.event_id.clone(),
            title: self.config.title.clone(),
            currency: self.config.currency,
            skus,
            active_holds: count(self.holds.values().filter(|at| **at > now_ms).count()),
            orders_by_state,
            queued_count: count(
                self.auths
                    .values()
                    .filter(|a| a.state == AuthState::Queued)
                    .count(),
            ),
            queued_exposure: self.queued_exposure(),
            aggregate_max: self.config.offline.aggregate_max,
            refunds_pending: count(
                self.refunds
                    .values()
                    .filter(|r| matches!(r.state, RefundState::Sending | RefundState::Queued))
                    .count(),
            ),
            queue_depth: self.queue.depth(),
            queue_admitted: self.queue.admitted_count(),
            next_alarm_ms: self.next_deadline(),
        }
    }

    /// Successful, not fully refunded charges for orders of this event that the ledger
    /// never counted as paid, whose checkout is over: the order's hold lapsed with no outcome
    /// `LOST_CHECKOUT_AFTER_MS` ago, it was declined before any goods were handed over, or it
    /// is already `Lost` (a second charge). Charges with a lost refund already are left out:
    /// each is refunded once.
    pub fn lost_checkouts(&self, charges: &[AcquirerCharge], now_ms: i64) -> Vec<LostCheckout> {
        let report = self.reconcile(charges);
        report
            .missing_at_edge
            .iter()
            .filter_map(|id| charges.iter().find(|c| &c.id == id))
            .filter(|c| c.succeeded() && c.refunded_amount < c.amount)
            .filter(|c| {
                let refund_id = lost_refund_id(&c.id);
                valid_id(&refund_id) && self.refunds.get(&refund_id).is_none()
            })
            .filter_map(|c| {
                let o = self.orders.get(c.order_id.as_deref()?)?;
                let lost = match o.state {
                    OrderState::Abandoned => {
                        now_ms >= o.hold_expires_ms.saturating_add(LOST_CHECKOUT_AFTER_MS)
                    }
                    OrderState::Declined => !o.stock_taken,
                    OrderState::Lost => true,
                    _ => false,
                };
                lost.then(|| LostCheckout {
                    charge_id: c.id.clone(),
                    order_id: o.order_id.clone(),
                    amount: MinorUnits(c.amount.0 - c.refunded_amount.0),
                    lane: c.lane.clone(),
                })
            })
            .collect()
    }

    /// What of a charge is refunded: the acquirer's figure, or all of it once the ledger's
    /// refund of a lost checkout succeeded (a listing may predate it).
    fn effective_refunded(&self, ch: &AcquirerCharge) -> MinorUnits {
        match self.refunds.get(&lost_refund_id(&ch.id)) {
            Some(r) if matches!(r.state, RefundState::Succeeded { .. }) => {
                ch.refunded_amount.max(ch.amount)
            }
            _ => ch.refunded_amount,
        }
    }

    /// Compares paid orders with the acquirer's charges for this event.
    pub fn reconcile(&self, charges: &[AcquirerCharge]) -> ReconReport {
        let mut report = ReconReport::default();
        let paid: Vec<&Order> = self
            .orders
            .values()
            .filter(|o| o.state.is_captured())
            .collect();
        let by_charge: BTreeMap<&str, &Order> = paid
            .iter()
            .filter_map(|o| o.charge_id.as_deref().map(|c| (c, *o)))
            .collect();
        let by_key: BTreeMap<&str, &str> = self
            .auths
            .values()
            .map(|a| (a.idempotency_key.as_str(), a.order_id.as_str()))
            .collect();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for ch in charges.iter().filter(|c| c.succeeded()) {
            let oid = ch.order_id.as_deref().or_else(|| {
                ch.idempotency_key
                    .as_deref()
                    .and_then(|k| by_key.get(k).copied())
            });
            let order = by_charge.get(ch.id.as_str()).copied().or_else(|| {
                paid.iter()
                    .copied()
                    .find(|o| Some(o.order_id.as_str()) == oid)
            });
            let refunded = self.effective_refunded(ch);
            let Some(o) = order else {
                let lost_refund = self.refunds.get(&lost_refund_id(&ch.id));
                let queued = oid
                    .and_then(|id| self.orders.get(id))
                    .is_some_and(|o| o.state == OrderState::Queued);
                if refunded >= ch.amount {
                    report.refunded_unpaid.push(ch.id.clone());
                } else if lost_refund
                    .is_some_and(|r| matches!(r.state, RefundState::Sending | RefundState::Queued))
                {
                    report.lost_refunding.push(ch.id.clone());
                } else if !queued {
                    report.missing_at_edge.push(ch.id.clone());
                }
                continue;
            };
            if !seen.insert(o.order_id.as_str()) {
                // A second successful charge for one order: a double charge.
                report.missing_at_edge.push(ch.id.clone());
                continue;
            }
            let charge_id = o.charge_id.clone().unwrap_or_default();
            if o.total != ch.amount
                || o.refunded != refunded
                || o.currency != ch.currency
                || charge_id != ch.id
            {
                report.amount_mismatch.push(AmountMismatch {
                    order_id: o.order_id.clone(),
                    charge_id: ch.id.clone(),
                    edge_amount: o.total,
                    acquirer_amount: ch.amount,
                    edge_refunded: o.refunded,
                    acquirer_refunded: refunded,
                    currency_differs: o.currency != ch.currency,
                });
            } else {
                report.matched.push((o.order_id.clone(), charge_id));
            }
        }
        for o in &paid {
            if !seen.contains(o.order_id.as_str()) {
                report.missing_at_acquirer.push(o.order_id.clone());
            }
        }
        report.awaiting_forward = self
            .auths
            .values()
            .filter(|a| a.state == AuthState::Queued)
            .map(|a| a.order_id.clone())
            .collect();
        report
    }

    /// The event's report for a listing of its charges at `now_ms`: totals, per-lane
    /// charges, refunds and every difference (see [`EventReport`]).
    pub fn event_report(
        &self,
        charges: &[AcquirerCharge],
        listing: &Listing,
        reason: ReconcileReason,
        now_ms: i64,
    ) -> EventReport {
        let mut rec = self.reconcile(charges);
        rec.truncated = listing.truncated;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let add = |a: MinorUnits, b: MinorUnits| MinorUnits(a.0.saturating_add(b.0));
        let currency = self.config.currency;
        let mut t = ReportTotals {
            orders: count(self.orders.len()),
            awaiting_forward: self.queued_exposure(),
            ..ReportTotals::default()
        };
        let mut orders_by_state = BTreeMap::new();
        for o in self.orders.values() {
            *orders_by_state.entry(o.state).or_insert(0u32) += 1;
            if o.state.is_captured() {
                t.paid_orders += 1;
                t.sales = add(t.sales, o.total);
                t.refunded = add(t.refunded, o.refunded);
            }
        }
        t.net = MinorUnits(t.sales.0.saturating_sub(t.refunded.0));
        let mut lanes: BTreeMap<&str, LaneTotals> = BTreeMap::new();
        for ch in charges
            .iter()
            .filter(|c| c.succeeded() && c.currency == currency)
        {
            let refunded = self.effective_refunded(ch);
            t.acquirer_charges += 1;
            t.acquirer_charged = add(t.acquirer_charged, ch.amount);
            t.acquirer_refunded = add(t.acquirer_refunded, refunded);
            let lane = lanes.entry(ch.lane.as_str()).or_insert_with(|| LaneTotals {
                lane: ch.lane.clone(),
                charges: 0,
                charged: MinorUnits::ZERO,
                refunded: MinorUnits::ZERO,
            });
            lane.charges += 1;
            lane.charged = add(lane.charged, ch.amount);
            lane.refunded = add(lane.refunded, refunded);
        }
        let mut refunds = RefundTotals::default();
        for r in self.refunds.values() {
            let done = matches!(r.state, RefundState::Succeeded { .. });
            if r.lost_checkout {
                t.lost_charges += 1;
                t.lost_charged = add(t.lost_charged, r.amount);
                if done {
                    t.lost_refunded = add(t.lost_refunded, r.amount);
                }
                continue;
            }
            match r.state {
                RefundState::Succeeded { .. } => {
                    refunds.succeeded += 1;
                    refunds.succeeded_amount = add(refunds.succeeded_amount, r.amount);
                }
                RefundState::Sending | RefundState::Queued => {
                    refunds.pending += 1;
                    refunds.pending_amount = add(refunds.pending_amount, r.amount);
                }
                RefundState::Failed { .. } => refunds.failed += 1,
            }
        }
        EventReport {
            event_id: self.config.event_id.clone(),
            merchant_id: self.config.merchant_id.clone(),
            currency,
            event_end_ms: self.config.end_ms,
            generated_ms: now_ms,
            reason,
            end_of_event: now_ms >= self.config.end_ms && self.nothing_open(),
            covered: TimeRange {
                from_ms: listing.since_ms,
                to_ms: listing.started_ms,
            },
            truncated: listing.truncated,
            clean: rec.is_clean(),
            totals: t,
            lanes: lanes.into_values().collect(),
            refunds,
            orders_by_state,
            matched: count(rec.matched.len()),
            discrepancies: Discrepancies {
                missing_at_acquirer: rec.missing_at_acquirer,
                missing_at_edge: rec.missing_at_edge,
                amount_mismatch: rec.amount_mismatch,
                awaiting_forward: rec.awaiting_forward,
                lost_refunding: rec.lost_refunding,
                refunded_unpaid: rec.refunded_unpaid,
            },
        }
    }

    /// Orders as CSV (RFC 4180, CRLF line ends). The buyer e-mail column is present only
    /// when `include_email` is true. Text cells that a spreadsheet would run as a formula
    /// are prefixed with `'`.
    pub fn export_csv(&self, include_email: bool) -> String {
        let mut out = String::new();
        let mut header = vec![
            "order_id",
            "state",
            "created_ms",
            "sold_ms",
            "currency",
            "total_minor",
            "refunded_minor",
            "receipt_id",
            "charge_id",
            "lane",
            "lines",
        ];
        if include_email {
            header.push("buyer_email");
        }
        out.push_str(&header.join(","));
        out.push_str("\r\n");
        for o in self.orders.values() {
            let mut row = vec![
                csv_text(&o.order_id),
                o.state.as_str().to_string(),
                o.created_ms.to_string(),
                o.sold_ms.map(|v| v.to_string()).unwrap_or_default(),
                o.currency.to_string(),
                o.total.0.to_string(),
                o.refunded.0.to_string(),
                csv_text(o.receipt_id.as_deref().unwrap_or("")),
                csv_text(o.charge_id.as_deref().unwrap_or("")),
                csv_text(&o.lane),
                csv_text(&lines_text(o)),
            ];
            if include_email {
                row.push(csv_text(o.buyer_email.as_deref().unwrap_or("")));
            }
            out.push_str(&row.join(","));
            out.push_str("\r\n");
        }
        out
    }

    /// Orders as newline-delimited JSON, one object per line; `buyer_email` only when
    /// `include_email` is true.
    pub fn export_ndjson(&self, include_email: bool) -> String {
        let mut out = String::new();
        for o in self.orders.values() {
            let mut v = serde_json::json!({
                "order_id": o.order_id,
                "state": o.state,
                "created_ms": o.created_ms,
                "sold_ms": o.sold_ms,
                "currency": o.currency,
                "total_minor": o.total,
                "refunded_minor": o.refunded,
                "receipt_id": o.receipt_id,
                "charge_id": o.charge_id,
                "lane": o.lane,
                "lines": o.lines,
            });
            if include_email {
                if let Some(m) = v.as_object_mut() {
                    m.insert("buyer_email".into(), serde_json::json!(o.buyer_email));
                }
            }
            out.push_str(&v.to_string());
            out.push('\n');
        }
        out
    }
}

fn lines_text(o: &Order) -> String {
    o.lines
        .iter()
        .map(|l| format!("{}x{}", l.qty, l.sku))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One CSV text cell: formula-looking text defused, quoted when needed, quotes doubled.
pub(crate) fn csv_text(s: &str) -> String {
    let defused;
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        defused = format!("'{s}");
        defused.as_str()
    } else {
        s
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
