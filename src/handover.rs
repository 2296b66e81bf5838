//! Staff-till handover sessions: a till's pay link for a cart, the buyer's checkout that
//! claims it, how that checkout ended, and the link lapsing.
//!
//! The rules are pure functions over a `now_ms`. The event object only loads and saves
//! the rows (table `handover`, one [`HandoverSession`] as JSON per id), looks the claimed
//! order up in its ledger ([`HandoverSession::claimed_order`]) and calls
//! [`HandoverSession::claim`] or [`HandoverSession::settle`] without an await in between,
//! so two claims cannot both see the session free. Callers (the Worker's routes, the
//! till's WebSocket) only ever get a [`HandoverView`], which has no field for the claim.
//!
//! `open → paying` (a checkout claims it) `→ paid` (accepted) `| open` (nothing charged);
//! `open → expired` once the link lapses. A different checkout takes over a `paying`
//! session only when the first one provably cannot charge any more
//! ([`ClaimedOrder::cannot_charge`]) and its claim is older than [`TAKEOVER_AFTER_MS`].

use crate::checkout::request::CartItem;
use crate::error::ApiError;
use crate::ledger::{Order, OrderState};
use crate::money::{Currency, MinorUnits};
use serde::{Deserialize, Serialize};

/// How long a claim protects a `paying` session even when its order looks harmless: longer
/// than a checkout's hold ([`crate::checkout::HOLD_MS`]) plus the lost-checkout delay, so
/// a checkout still between its claim and its hold (no order yet) is never taken over.
pub const TAKEOVER_AFTER_MS: i64 = 180_000;
const _: () =
    assert!(TAKEOVER_AFTER_MS > crate::checkout::HOLD_MS + crate::ledger::LOST_CHECKOUT_AFTER_MS);

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HandoverStatus {
    Open,
    Paying,
    Paid,
    Expired,
}

/// Most handover sessions one event keeps: a till opens one per sale, and the route that
/// opens them is reachable by anyone with the event id, so the table must not grow without
/// bound.
pub const MAX_SESSIONS: usize = 1_000;
/// How long a lapsed session's row is kept (the till may still show it), then dropped.
pub const KEEP_AFTER_MS: i64 = 3_600_000;

/// Whether opening a session beside `stored` rows first drops the prunable ones: only at
/// the cap, so an ordinary open costs one count, not a scan of the table.
pub fn prune_now(stored: usize) -> bool {
    stored >= MAX_SESSIONS
}

/// Whether a new session may be opened beside `kept` stored ones (after dropping the
/// [`HandoverSession::prunable`] ones): `429 too_many_handovers` at [`MAX_SESSIONS`].
pub fn admit(kept: usize) -> Result<(), crate::error::ApiError> {
    if kept < MAX_SESSIONS {
        return Ok(());
    }
    Err(crate::error::ApiError::new(
        429,
        "too_many_handovers",
        "This event has too many pay-on-phone requests open; let some finish or lapse, then try again.",
    )
    .retryable())
}

/// A session as the till, the pay page and the Worker see it (the JSON they read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HandoverView {
    pub session_id: String,
    pub event_id: String,
    pub items: Vec<CartItem>,
    pub total: MinorUnits,
    pub currency: Currency,
    pub status: HandoverStatus,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// `expires_ms` as ISO 8601 (the till shows it).
    pub expires_at: String,
    /// When the current checkout claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_ms: Option<i64>,
    /// Once paid: the receipt, the payment's status (`approved`, `queued`) and its order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}

/// A stored session: the view and the claim of the checkout paying it. The claim never
/// leaves the event object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverSession {
    #[serde(flatten)]
    pub view: HandoverView,
    /// The claiming checkout's idempotency record key (`co_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_key: Option<String>,
    /// The order that checkout holds and pays (`ord_…`, from the same Idempotency-Key).
    /// Rows written before it was kept have none: their claim is never taken over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_order_id: Option<String>,
}

/// How a handover's checkout ended: paid (with what the till shows), or open again.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HandoverSettle {
    /// The checkout's record key: only the checkout holding the claim settles it.
    pub order_key: String,
    pub paid: bool,
    #[serde(default)]
    pub receipt_url: Option<String>,
    #[serde(default)]
    pub payment_status: Option<String>,
    #[serde(default)]
    pub order_id: Option<String>,
}

/// What the event ledger says of the order the current claim's checkout pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimedOrder {
    /// The session does not say which order (no claim, or a row from before the order id
    /// was kept).
    Unknown,
    /// The ledger has no such order: never held, or forgotten (nothing was sent).
    Absent,
    /// The order's state, and whether a charge or a stored authorization is attached.
    Known {
        state: OrderState,
        charge_or_auth: bool,
    },
}

impl ClaimedOrder {
    /// The ledger's order (or its absence) in the rule's terms.
    pub fn of(order: Option<&Order>) -> ClaimedOrder {
        match order {
            None => ClaimedOrder::Absent,
            Some(o) => ClaimedOrder::Known {
                state: o.state,
                charge_or_auth: o.charge_id.is_some() || o.auth_id.is_some(),
            },
        }
    }

    /// Whether the first checkout provably can no longer charge the buyer: its order does
    /// not exist, or was declined or abandoned with no charge and no stored payment. A
    /// pending or queued order may still be charged (a stored payment up to 23 h later),
    /// an approved one was; anything unknown is treated as chargeable.
    pub fn cannot_charge(self) -> bool {
        match self {
            ClaimedOrder::Absent => true,
            ClaimedOrder::Known {
                state: OrderState::Declined | OrderState::Abandoned,
                charge_or_auth: false,
            } => true,
            ClaimedOrder::Unknown | ClaimedOrder::Known { .. } => false,
        }
    }
}

/// Why a checkout may not claim a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverError {
    /// The pay link lapsed (410).
    Expired,
    /// Another checkout paid it (409).
    Paid,
    /// Another checkout holds it and may still charge (409).
    InProgress,
}

impl HandoverError {
    pub fn to_api(self) -> ApiError {
        match self {
            HandoverError::Expired => ApiError::new(
                410,
                "handover_expired",
                "This pay link has expired; ask for a new one.",
            ),
            HandoverError::Paid => {
                ApiError::new(409, "handover_paid", "This sale is already paid.")
            }
            HandoverError::InProgress => ApiError::new(
                409,
                "handover_in_progress",
                "A payment for this sale is in progress; wait for it to finish, or ask for a new pay link.",
            ),
        }
    }
}

impl From<HandoverError> for ApiError {
    fn from(e: HandoverError) -> ApiError {
        e.to_api()
    }
}

/// What a till asks for when it opens a pay link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoverOpen {
    pub session_id: String,
    pub event_id: String,
    pub items: Vec<CartItem>,
    pub total: MinorUnits,
    pub currency: Currency,
    pub ttl_ms: i64,
}

impl HandoverSession {
    /// A new open session whose link lapses `ttl_ms` after `now_ms`.
    pub fn open(o: HandoverOpen, now_ms: i64) -> HandoverSession {
        let expires_ms = now_ms.saturating_add(o.ttl_ms);
        HandoverSession {
            view: HandoverView {
                session_id: o.session_id,
                event_id: o.event_id,
                items: o.items,
                total: o.total,
                currency: o.currency,
                status: HandoverStatus::Open,
                created_ms: now_ms,
                expires_ms,
                expires_at: crate::time::iso8601(expires_ms),
                claimed_ms: None,
                receipt_url: None,
                payment_status: None,
                order_id: None,
            },
            order_key: None,
            claim_order_id: None,
        }
    }

    /// What callers may see: everything but the claim.
    pub fn view(&self) -> HandoverView {
        self.view.clone()
    }

    pub fn status(&self) -> HandoverStatus {
        self.view.status
    }

    /// Whether the link has lapsed at `now_ms`.
    fn lapsed(&self, now_ms: i64) -> bool {
        self.view.expires_ms < now_ms
    }

    /// Marks an open session expired once its link has lapsed. A `paying` one stays as it
    /// is (its checkout may still end either way); it expires when it is opened again.
    /// Whether the stored row may be dropped: its pay link lapsed [`KEEP_AFTER_MS`] ago and
    /// no checkout is paying it (a `paying` session waits for its order, however long).
    /// A paid one's receipt lives on with its order.
    pub fn prunable(&self, now_ms: i64) -> bool {
        self.view.status != HandoverStatus::Paying
            && now_ms >= self.view.expires_ms.saturating_add(KEEP_AFTER_MS)
    }

    pub fn expire(&mut self, now_ms: i64) {
        if self.view.status == HandoverStatus::Open && self.lapsed(now_ms) {
            self.view.status = HandoverStatus::Expired;
        }
    }

    /// The order the current claim's checkout pays, as `order` (the ledger's lookup)
    /// finds it.
    pub fn claimed_order<'a>(&self, order: impl FnOnce(&str) -> Option<&'a Order>) -> ClaimedOrder {
        match (&self.order_key, &self.claim_order_id) {
            (Some(_), Some(id)) => ClaimedOrder::of(order(id)),
            _ => ClaimedOrder::Unknown,
        }
    }

    /// The checkout with record key `order_key` (paying `order_id`) claims the session.
    ///
    /// The same checkout again (same key) may always claim: it continues, or replays its
    /// stored answer once paid. A different one may claim an open session, or take over a
    /// `paying` one only when `first` (the current claim's order, see
    /// [`HandoverSession::claimed_order`]) [cannot charge](ClaimedOrder::cannot_charge)
    /// and the claim is older than [`TAKEOVER_AFTER_MS`].
    pub fn claim(
        &mut self,
        order_key: &str,
        order_id: &str,
        first: ClaimedOrder,
        now_ms: i64,
    ) -> Result<(), HandoverError> {
        self.expire(now_ms);
        let same = self.order_key.as_deref() == Some(order_key);
        match self.view.status {
            HandoverStatus::Expired => return Err(HandoverError::Expired),
            HandoverStatus::Paying | HandoverStatus::Paid if same => return Ok(()),
            HandoverStatus::Paid => return Err(HandoverError::Paid),
            HandoverStatus::Open => {}
            HandoverStatus::Paying => {
                let claimed = self.view.claimed_ms.unwrap_or(0);
                let old = claimed.saturating_add(TAKEOVER_AFTER_MS) < now_ms;
                if !(old && first.cannot_charge()) {
                    return Err(HandoverError::InProgress);
                }
                if self.lapsed(now_ms) {
                    self.release();
                    self.view.status = HandoverStatus::Expired;
                    return Err(HandoverError::Expired);
                }
            }
        }
        self.view.status = HandoverStatus::Paying;
        self.view.claimed_ms = Some(now_ms);
        self.order_key = Some(order_key.to_string());
        self.claim_order_id = Some(order_id.to_string());
        Ok(())
    }

    /// Drops the claim (the session is open again, or expired).
    fn release(&mut self) {
        self.view.claimed_ms = None;
        self.order_key = None;
        self.claim_order_id = None;
    }

    /// How the claiming checkout ended. Only the checkout holding the claim settles it: a
    /// late settle from one that was taken over changes nothing. Paid stays paid (a replay
    /// may only refresh what the till shows); not paid opens the session again (or expires
    /// it, if its link lapsed meanwhile).
    pub fn settle(&mut self, s: &HandoverSettle, now_ms: i64) {
        if self.order_key.as_deref() != Some(s.order_key.as_str()) {
            return;
        }
        match (self.view.status, s.paid) {
            (HandoverStatus::Paying | HandoverStatus::Paid, true) => {
                self.view.status = HandoverStatus::Paid;
                self.view.receipt_url = s.receipt_url.clone();
                self.view.payment_status = s.payment_status.clone();
                self.view.order_id = s.order_id.clone();
            }
            (HandoverStatus::Paying, false) => {
                self.view.status = HandoverStatus::Open;
                self.release();
                self.expire(now_ms);
            }
            _ => {}
        }
    }
}

impl HandoverSettle {
    /// What a handover checkout's answer means for its session: paid (an accepted
    /// payment: approved, or stored offline), open again (a definitive refusal: nothing
    /// was charged), or nothing yet (`None`: `202 pending` or an answer the same checkout
    /// may retry; the claim stays, and [`HandoverSession::follow`] settles it once the
    /// order does).
    pub fn from_answer(
        order_key: &str,
        status: u16,
        body: &serde_json::Value,
        retryable: bool,
    ) -> Option<HandoverSettle> {
        let text = |k: &str| body[k].as_str().map(str::to_string);
        match status {
            // Accepted while the acquirer still answers: the session follows its order.
            201 if crate::checkout::status::is_confirming(status, body) => None,
            200 | 201 => Some(HandoverSettle {
                order_key: order_key.to_string(),
                paid: true,
                receipt_url: text("receipt_url"),
                payment_status: text("status"),
                order_id: text("order_id"),
            }),
            202 => None,
            _ if retryable => None,
            _ => Some(HandoverSettle {
                order_key: order_key.to_string(),
                ..HandoverSettle::default()
            }),
        }
    }
}

impl HandoverSession {
    /// The claimed order settled after its checkout answered (a `pending` payment the
    /// acquirer later approved or declined): a `paying` session whose claim pays `order`
    /// becomes paid once the order is, and open again once it provably cannot charge.
    /// Anything else changes nothing.
    pub fn follow(&mut self, order: &Order, receipt_url: Option<String>, now_ms: i64) {
        if self.view.status != HandoverStatus::Paying
            || self.claim_order_id.as_deref() != Some(order.order_id.as_str())
        {
            return;
        }
        let Some(order_key) = self.order_key.clone() else {
            return;
        };
        let paid = matches!(
            crate::checkout::status::settled(order),
            Some((_, "approved", _))
        );
        if paid {
            self.settle(
                &HandoverSettle {
                    order_key,
                    paid: true,
                    receipt_url,
                    payment_status: Some("approved".into()),
                    order_id: Some(order.order_id.clone()),
                },
                now_ms,
            );
        } else if ClaimedOrder::of(Some(order)).cannot_charge() {
            self.settle(
                &HandoverSettle {
                    order_key,
                    ..HandoverSettle::default()
                },
                now_ms,
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
