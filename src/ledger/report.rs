//! Read-only views: the live admin summary, reconciliation against the acquirer, and
//! order exports as CSV and NDJSON.

use super::{AuthState, EventLedger, Order, OrderState, RefundState};
use crate::money::{Currency, MinorUnits};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Stock of one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuSummary {
    pub sku: String,
    pub name: String,
    pub stock: u32,
    pub sold: u32,
    pub held: u32,
    pub available: u32,
}

/// The body of `GET /v1/admin/events/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSummary {
    pub event_id: String,
    pub title: String,
    pub currency: Currency,
    pub skus: Vec<SkuSummary>,
    /// Pending orders whose hold has not lapsed.
    pub active_holds: u32,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Succeeded,
    Failed,
    Pending,
}

/// An order whose money differs between the edge and the acquirer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconReport {
    /// `(order_id, charge_id)` pairs that agree.
    pub matched: Vec<(String, String)>,
    /// Orders the edge counts as paid with no successful charge at the acquirer.
    pub missing_at_acquirer: Vec<String>,
    /// Successful acquirer charges no paid order accounts for (charge ids).
    pub missing_at_edge: Vec<String>,
    pub amount_mismatch: Vec<AmountMismatch>,
    /// Stored payments not forwarded yet, so not expected at the acquirer.
    pub awaiting_forward: Vec<String>,
    /// Charges no paid order accounts for that were refunded in full (e.g. the charge of a
    /// checkout that died between the acquirer and the ledger): settled, not a discrepancy.
    #[serde(default)]
    pub refunded_unpaid: Vec<String>,
}

/// A successful charge whose checkout was lost between the acquirer and the ledger (its
/// Worker died, or its hold lapsed first): the shell refunds it in full, after releasing
/// the order when it is still pending (see [`EventLedger::lost_checkouts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostCheckout {
    pub charge_id: String,
    pub order_id: String,
    pub amount: MinorUnits,
    /// Release the order first (it is still pending in the ledger).
    pub release: bool,
}

/// A pending order older than this has no live checkout (whose whole budget is 8 s).
pub const LOST_CHECKOUT_AFTER_MS: i64 = 30_000;

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

    /// Compares paid orders with the acquirer's charges for this event.
    /// Successful, not fully refunded charges for orders of this event that the ledger
    /// never counted as paid, whose checkout is over: the order ended unpaid (abandoned,
    /// declined) or is still pending long after any live checkout would have finished.
    pub fn lost_checkouts(&self, charges: &[AcquirerCharge], now_ms: i64) -> Vec<LostCheckout> {
        let report = self.reconcile(charges);
        report
            .missing_at_edge
            .iter()
            .filter_map(|id| charges.iter().find(|c| &c.id == id))
            .filter(|c| c.status == ChargeStatus::Succeeded && c.refunded_amount < c.amount)
            .filter_map(|c| {
                let o = self.orders.get(c.order_id.as_deref()?)?;
                let release = match o.state {
                    OrderState::Pending => {
                        if now_ms.saturating_sub(o.created_ms) < LOST_CHECKOUT_AFTER_MS {
                            return None;
                        }
                        true
                    }
                    OrderState::Abandoned | OrderState::Declined => false,
                    _ => return None,
                };
                Some(LostCheckout {
                    charge_id: c.id.clone(),
                    order_id: o.order_id.clone(),
                    amount: MinorUnits(c.amount.0 - c.refunded_amount.0),
                    release,
                })
            })
            .collect()
    }

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
        for ch in charges
            .iter()
            .filter(|c| c.status == ChargeStatus::Succeeded)
        {
            let order = by_charge.get(ch.id.as_str()).copied().or_else(|| {
                let oid = ch.order_id.as_deref().or_else(|| {
                    ch.idempotency_key
                        .as_deref()
                        .and_then(|k| by_key.get(k).copied())
                })?;
                paid.iter().copied().find(|o| o.order_id == oid)
            });
            let Some(o) = order else {
                if ch.refunded_amount >= ch.amount {
                    report.refunded_unpaid.push(ch.id.clone());
                } else {
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
                || o.refunded != ch.refunded_amount
                || o.currency != ch.currency
                || charge_id != ch.id
            {
                report.amount_mismatch.push(AmountMismatch {
                    order_id: o.order_id.clone(),
                    charge_id: ch.id.clone(),
                    edge_amount: o.total,
                    acquirer_amount: ch.amount,
                    edge_refunded: o.refunded,
                    acquirer_refunded: ch.refunded_amount,
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
