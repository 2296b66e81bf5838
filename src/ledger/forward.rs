//! Store-and-forward: stored authorizations within the offline budget, their forwarding
//! with backoff, expiry and sealed-card purge; and refunds, queued while the acquirer is down.

use super::config::{check_id, MAX_OFFLINE_WAIT_MS};
use super::{Effect, EventLedger, Fx, LedgerError, OfflineLimit, OrderState, Reply};
use crate::money::{Currency, MinorUnits};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// First retry delay; doubles per attempt up to `BACKOFF_MAX_MS`.
pub const BACKOFF_BASE_MS: i64 = 2_000;
pub const BACKOFF_MAX_MS: i64 = 300_000;
/// A forward without an answer after this long is considered lost and is retried with the
/// same acquirer idempotency key.
pub const FORWARD_TIMEOUT_MS: i64 = 30_000;
/// At most this many acquirer calls are asked for per wake-up (Worker subrequest limits);
/// the rest follow at the next alarm, which is then due at once.
pub const MAX_FORWARDS_PER_WAKE: usize = 25;
/// Largest sealed card blob accepted.
pub const MAX_SEALED_LEN: usize = 8_192;
/// How long after the first request under a stored payment's acquirer idempotency key that
/// may have reached the acquirer the payment may still be forwarded with that key. Stripe
/// keeps a key for 24 hours; after that a resend is a new charge. Past this window a
/// payment whose outcome is still unknown stops and expires, and reconciliation settles it
/// from the acquirer's own records (a charge found there is a late approval).
pub const KEY_WINDOW_MS: i64 = 23 * 3_600_000;

/// The card as sealed (encrypted) by the vault: opaque ciphertext, never a card number.
/// Its `Debug` is masked so it never lands in a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedCard(pub String);

impl fmt::Debug for SealedCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedCard(<{} bytes>)", self.0.len())
    }
}

/// A payment to store while the acquirer is unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueAuth {
    pub auth_id: String,
    pub order_id: String,
    pub amount: MinorUnits,
    pub currency: Currency,
    /// A keyed hash of the card number (never the number), for per-card velocity.
    pub card_fingerprint: String,
    pub sealed_card: SealedCard,
    /// Sent with every forward attempt, so the acquirer charges at most once.
    pub idempotency_key: String,
    /// After this long without a successful forward the payment expires (money lost).
    pub max_wait_ms: i64,
    /// Forward on this lane (the order's lane becomes it).
    #[serde(default)]
    pub lane: Option<String>,
    /// The payment was already sent online and its outcome is unknown (the acquirer timed
    /// out or failed after receiving it). Forwarding repeats that request, with the same
    /// idempotency key on the same lane, which completes it or replays its result: never a
    /// second charge. Outside the offline budget, which is for payments never sent.
    #[serde(default)]
    pub resolves_attempt: bool,
    /// The buyer must not be told "accepted" before the acquirer confirms (they asked for
    /// an online payment): a resolving payment is then stored but not accepted.
    #[serde(default)]
    pub confirm_first: bool,
    /// The online attempt this payment resolves is still running (its buyer was answered
    /// first, `crate::checkout`): its own answer settles the payment with `ForwardResult`.
    /// Nothing is forwarded until then, or until `FORWARD_TIMEOUT_MS` has passed, so the
    /// same payment is never out twice at once.
    #[serde(default)]
    pub attempt_out: bool,
}

fn accepted_by_default() -> bool {
    true
}

/// Where a stored payment is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AuthState {
    Queued,
    Forwarded { charge_id: String },
    Declined { reason: String },
    Expired,
}

/// A stored payment and its forwarding schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAuth {
    pub auth_id: String,
    pub order_id: String,
    pub amount: MinorUnits,
    pub currency: Currency,
    pub card_fingerprint: String,
    /// Present only while `Queued`.
    pub sealed_card: Option<SealedCard>,
    pub idempotency_key: String,
    pub created_ms: i64,
    pub expires_at_ms: i64,
    pub state: AuthState,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    /// Set while a forward is out; cleared by its result or after `FORWARD_TIMEOUT_MS`.
    pub in_flight_until: Option<i64>,
    /// An approval arrived after the payment had expired.
    #[serde(default)]
    pub late_approval: bool,
    /// Completes an online attempt of unknown outcome (see [`QueueAuth::resolves_attempt`]).
    #[serde(default)]
    pub resolves_attempt: bool,
    /// Whether the buyer was told the payment is accepted (and may have the goods). A
    /// resolving payment past the event's unknown-outcome bound, or one whose buyer asked
    /// for an online payment, is stored but not accepted: the buyer hears `pending`.
    #[serde(default = "accepted_by_default")]
    pub accepted: bool,
    /// When a request under `idempotency_key` first may have reached the acquirer (the
    /// online attempt for a resolving payment; else the first forward whose outcome was
    /// unknown). The payment is forwarded only within [`KEY_WINDOW_MS`] of it.
    #[serde(default)]
    pub key_sent_ms: Option<i64>,
}

/// A stored payment as replies show it: everything but the sealed card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuthView {
    pub auth_id: String,
    pub order_id: String,
    pub amount: MinorUnits,
    pub currency: Currency,
    pub created_ms: i64,
    pub expires_at_ms: i64,
    pub state: AuthState,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub late_approval: bool,
    #[serde(default = "accepted_by_default")]
    pub accepted: bool,
}

impl StoredAuth {
    /// When the payment stops being forwarded: its own expiry, or the end of its acquirer
    /// key's window, whichever comes first.
    pub fn deadline_ms(&self) -> i64 {
        match self.key_sent_ms {
            Some(t) => self.expires_at_ms.min(t.saturating_add(KEY_WINDOW_MS)),
            None => self.expires_at_ms,
        }
    }

    /// Whether the payment expired (or will) at the end of its key window rather than at
    /// its own expiry.
    pub fn ends_at_key_window(&self) -> bool {
        self.deadline_ms() < self.expires_at_ms
    }

    /// Notes that a request under the key may have reached the acquirer at `sent_ms`.
    fn key_sent(&mut self, sent_ms: i64) {
        self.key_sent_ms = Some(self.key_sent_ms.map_or(sent_ms, |t| t.min(sent_ms)));
    }

    /// The reply form, without the sealed card.
    pub fn view(&self) -> AuthView {
        AuthView {
            auth_id: self.auth_id.clone(),
            order_id: self.order_id.clone(),
            amount: self.amount,
            currency: self.currency,
            created_ms: self.created_ms,
            expires_at_ms: self.deadline_ms(),
            state: self.state.clone(),
            attempts: self.attempts,
            next_attempt_ms: self.next_attempt_ms,
            late_approval: self.late_approval,
            accepted: self.accepted,
        }
    }
}

/// What the shell sends to the acquirer for a `Forward` effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub auth_id: String,
    pub order_id: String,
    pub amount: MinorUnits,
    pub currency: Currency,
    pub sealed_card: SealedCard,
    pub idempotency_key: String,
    pub attempt: u32,
}

/// The acquirer's answer to a forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AcquirerResult {
    Approved {
        charge_id: String,
    },
    Declined {
        reason: String,
    },
    /// The outcome is unknown: the request may have reached the acquirer (a timeout, a
    /// reset, a 5xx, a `processing` intent, an unreadable answer). Retried later with the
    /// same key; starts the key's window ([`KEY_WINDOW_MS`]) if it had not started.
    Unavailable,
    /// This attempt provably charged nothing: it was never sent (lane unknown, sealed card
    /// unreadable, connection refused) or the acquirer refused it before charging (401/403,
    /// 404, 400, 429, a temporary issuer failure). Retried later; the payment keeps its
    /// card until it expires. See `super::forward_outcome`.
    NotCharged,
}

/// What the event's refund policy says, as the shell got it from the policy module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRule {
    pub allowed: bool,
    /// Refunds allowed until this long after the sale.
    pub window_ms: i64,
    pub partial_allowed: bool,
    /// Whether a refund may wait for the acquirer to come back.
    pub may_queue_offline: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RefundState {
    /// Sent to the acquirer; waiting for its answer.
    Sending,
    /// Waiting for the acquirer to come back (`RefundQueued` to the caller).
    Queued,
    Succeeded {
        acquirer_refund_id: String,
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Refund {
    pub refund_id: String,
    pub order_id: String,
    pub charge_id: String,
    pub amount: MinorUnits,
    pub currency: Currency,
    pub idempotency_key: String,
    pub created_ms: i64,
    pub may_queue: bool,
    pub state: RefundState,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub in_flight_until: Option<i64>,
    /// The refund of a lost checkout's charge (its order is `Lost`, not paid).
    #[serde(default)]
    pub lost_checkout: bool,
}

/// What the shell sends to the acquirer for a `ForwardRefund` effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub refund_id: String,
    pub order_id: String,
    pub charge_id: String,
    pub amount: MinorUnits,
    pub currency: Currency,
    pub idempotency_key: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RefundOutcome {
    Succeeded { acquirer_refund_id: String },
    Failed { reason: String },
    Unavailable,
}

/// Exponential backoff with "equal jitter": half the delay fixed, half random. The random
/// part mixes the caller's entropy with the id, so ids retried together spread out.
pub fn backoff_ms(attempts: u32, id: &str, entropy: [u8; 8]) -> i64 {
    let delay = BACKOFF_BASE_MS
        .saturating_mul(1i64 << attempts.min(20))
        .min(BACKOFF_MAX_MS);
    let mut h = Sha256::new();
    h.update(entropy);
    h.update(id.as_bytes());
    h.update(attempts.to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    let r = u64::from_le_bytes(b);
    let half = delay / 2;
    half + (r % (half as u64 + 1)) as i64
}

/// A refund as the merchant asks for it (`Command::RequestRefund`'s fields).
pub(crate) struct RefundAsk {
    pub refund_id: String,
    pub order_id: String,
    pub amount: Option<MinorUnits>,
    pub rule: RefundRule,
    /// Whether the shell believes the acquirer is reachable right now.
    pub acquirer_online: bool,
}

impl EventLedger {
    pub(crate) fn queue_authorization(
        &mut self,
        q: QueueAuth,
        now: i64,
        entropy: [u8; 8],
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        check_id(&q.auth_id, "auth_id")?;
        check_id(&q.order_id, "order_id")?;
        check_id(&q.card_fingerprint, "card_fingerprint")?;
        check_id(&q.idempotency_key, "idempotency_key")?;
        if let Some(a) = self.auths.get(&q.auth_id) {
            let same = a.order_id == q.order_id
                && a.amount == q.amount
                && a.card_fingerprint == q.card_fingerprint
                && a.idempotency_key == q.idempotency_key;
            return if same {
                Ok(Reply::Auth { auth: a.view() })
            } else {
                Err(LedgerError::Conflict(q.auth_id))
            };
        }
        // One acquirer key, one payment: a reused key would return another order's charge.
        if self
            .auths
            .values()
            .any(|a| a.idempotency_key == q.idempotency_key)
        {
            return Err(LedgerError::Conflict(q.idempotency_key));
        }
        if q.sealed_card.0.is_empty() || q.sealed_card.0.len() > MAX_SEALED_LEN {
            return Err(LedgerError::InvalidHold(
                "The sealed card is empty or too large.".into(),
            ));
        }
        if q.max_wait_ms <= 0 || q.max_wait_ms > MAX_OFFLINE_WAIT_MS {
            return Err(LedgerError::InvalidHold(
                "A stored payment may wait between 1 ms and 72 hours.".into(),
            ));
        }
        let order = self
            .orders
            .get(&q.order_id)
            .ok_or_else(|| LedgerError::OrderNotFound(q.order_id.clone()))?;
        if q.currency != self.config.currency {
            return Err(LedgerError::CurrencyMismatch);
        }
        if q.amount != order.total {
            return Err(LedgerError::AmountMismatch);
        }
        if !matches!(order.state, OrderState::Pending | OrderState::Abandoned) {
            return Err(LedgerError::InvalidTransition {
                order_id: q.order_id,
                state: order.state.as_str(),
                action: "stored for offline payment",
            });
        }
        // The budget: checked and taken in this one call, so no interleaving can exceed it.
        // A payment already sent online must be completed whatever the budget says; it
        // counts against the unknown-outcome bound, and past it is stored, not accepted.
        let budget = &self.config.offline;
        let accepted = !q.resolves_attempt
            || (!q.confirm_first
                && self
                    .unknown_exposure()
                    .checked_add(q.amount)
                    .is_some_and(|t| t <= budget.unknown_bound()));
        if !q.resolves_attempt {
            if q.amount > budget.per_transaction_max {
                return Err(LedgerError::OfflineLimit(OfflineLimit::PerTransaction));
            }
            let exposure = self.offline_exposure();
            if exposure
                .checked_add(q.amount)
                .is_none_or(|t| t > budget.aggregate_max)
            {
                return Err(LedgerError::OfflineLimit(OfflineLimit::Aggregate));
            }
            let since = now.saturating_sub(budget.per_card_window_ms);
            let recent = self
                .auths
                .values()
                .filter(|a| !a.resolves_attempt)
                .filter(|a| a.card_fingerprint == q.card_fingerprint && a.created_ms > since)
                .count();
            if recent >= budget.per_card_max_count as usize {
                return Err(LedgerError::OfflineLimit(OfflineLimit::PerCard));
            }
        }
        self.take_stock(&q.order_id)?;
        self.holds.remove(&q.order_id);
        let receipt = self.next_receipt_id();
        if let Some(o) = self.orders.get_mut(&q.order_id) {
            o.state = OrderState::Queued;
            o.sold_ms = Some(now);
            o.receipt_id = Some(receipt);
            o.auth_id = Some(q.auth_id.clone());
            if let Some(lane) = q.lane {
                o.lane = lane;
            }
        }
        let auth = StoredAuth {
            next_attempt_ms: now.saturating_add(backoff_ms(0, &q.auth_id, entropy)),
            auth_id: q.auth_id.clone(),
            order_id: q.order_id.clone(),
            amount: q.amount,
            currency: q.currency,
            card_fingerprint: q.card_fingerprint,
            sealed_card: Some(q.sealed_card),
            idempotency_key: q.idempotency_key,
            created_ms: now,
            expires_at_ms: now.saturating_add(q.max_wait_ms),
            state: AuthState::Queued,
            attempts: 0,
            in_flight_until: (q.resolves_attempt && q.attempt_out)
                .then(|| now.saturating_add(FORWARD_TIMEOUT_MS)),
            late_approval: false,
            resolves_attempt: q.resolves_attempt,
            accepted,
            // The online attempt was just sent under this key.
            key_sent_ms: q.resolves_attempt.then_some(now),
        };
        let view = auth.view();
        self.auths.insert(q.auth_id, auth);
        fx.changed = true;
        fx.push(Effect::Notify {
            order_id: q.order_id,
            state: OrderState::Queued,
        });
        Ok(Reply::Auth { auth: view })
    }

    /// Ends a stored payment: drops its sealed card, sets the order's state, tells the shell.
    fn finish_auth(&mut self, auth_id: &str, state: AuthState, fx: &mut Fx) {
        let Some(a) = self.auths.get_mut(auth_id) else {
            return;
        };
        let order_state = match &state {
            AuthState::Forwarded { .. } => OrderState::Forwarded,
            AuthState::Declined { .. } => OrderState::Declined,
            AuthState::Expired => OrderState::Expired,
            AuthState::Queued => OrderState::Queued,
        };
        let had_sealed = a.sealed_card.take().is_some();
        a.in_flight_until = None;
        let order_id = a.order_id.clone();
        if let Some(o) = self.orders.get_mut(&order_id) {
            match &state {
                AuthState::Forwarded { charge_id } => o.charge_id = Some(charge_id.clone()),
                AuthState::Declined { reason } => o.decline_reason = Some(reason.clone()),
                _ => {}
            }
            o.state = order_state;
        }
        a.state = state;
        self.books_changed();
        fx.changed = true;
        if had_sealed {
            fx.push(Effect::PurgeSealed {
                auth_id: auth_id.to_string(),
            });
        }
        fx.push(Effect::Notify {
            order_id,
            state: order_state,
        });
    }

    pub(crate) fn forward_result(
        &mut self,
        auth_id: &str,
        result: AcquirerResult,
        now: i64,
        entropy: [u8; 8],
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        let a = self
            .auths
            .get(auth_id)
            .ok_or_else(|| LedgerError::AuthNotFound(auth_id.to_string()))?;
        match (&a.state, result) {
            (AuthState::Queued, AcquirerResult::Approved { charge_id }) => {
                check_id(&charge_id, "charge_id")?;
                self.finish_auth(auth_id, AuthState::Forwarded { charge_id }, fx);
            }
            (AuthState::Queued, AcquirerResult::Declined { reason }) => {
                let reason = reason.chars().take(200).collect();
                self.finish_auth(auth_id, AuthState::Declined { reason }, fx);
            }
            (
                AuthState::Queued,
                result @ (AcquirerResult::Unavailable | AcquirerResult::NotCharged),
            ) => {
                let attempts = a.attempts;
                if let Some(a) = self.auths.get_mut(auth_id) {
                    if result == AcquirerResult::Unavailable {
                        // Sent when the forward went out (or now, if its window was lost).
                        let sent = a
                            .in_flight_until
                            .map_or(now, |t| t.saturating_sub(FORWARD_TIMEOUT_MS));
                        a.key_sent(sent);
                    }
                    a.in_flight_until = None;
                    a.next_attempt_ms = now.saturating_add(backoff_ms(attempts, auth_id, entropy));
                }
                fx.changed = true;
            }
            // A duplicate of the answer already recorded changes nothing.
            (AuthState::Forwarded { charge_id: have }, AcquirerResult::Approved { charge_id })
                if *have == charge_id => {}
            (AuthState::Declined { .. }, AcquirerResult::Declined { .. }) => {}
            (_, AcquirerResult::Unavailable | AcquirerResult::NotCharged) => {}
            (AuthState::Expired, AcquirerResult::Declined { .. }) => {}
            // The acquirer charged after we gave up: the money is real, so record it.
            (AuthState::Expired, AcquirerResult::Approved { charge_id }) => {
                check_id(&charge_id, "charge_id")?;
                self.finish_auth(auth_id, AuthState::Forwarded { charge_id }, fx);
                if let Some(a) = self.auths.get_mut(auth_id) {
                    a.late_approval = true;
                }
            }
            _ => return Err(LedgerError::ConflictingResult(auth_id.to_string())),
        }
        let auth = self
            .auths
            .get(auth_id)
            .map(StoredAuth::view)
            .ok_or_else(|| LedgerError::AuthNotFound(auth_id.to_string()))?;
        Ok(Reply::Auth { auth })
    }

    /// Expires stored payments past their wait and forgets forwards that never answered.
    pub(crate) fn expire_and_unstick(&mut self, now: i64, fx: &mut Fx) {
        let mut expired = Vec::new();
        // Only touch (and so rewrite) the records that change.
        let stuck: Vec<String> = self
            .auths
            .iter()
            .filter(|(_, a)| a.state == AuthState::Queued)
            .filter(|(_, a)| {
                a.in_flight_until.is_some_and(|t| t <= now)
                    || (a.in_flight_until.is_none() && now >= a.deadline_ms())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in stuck {
            let Some(a) = self.auths.get_mut(&key) else {
                continue;
            };
            if let Some(t) = a.in_flight_until.filter(|t| *t <= now) {
                // A forward that never answered may have reached the acquirer.
                a.key_sent(t.saturating_sub(FORWARD_TIMEOUT_MS));
                a.in_flight_until = None;
                fx.changed = true;
            }
            // Never expire while a forward is out: its answer may be an approval.
            if a.in_flight_until.is_none() && now >= a.deadline_ms() {
                expired.push(a.auth_id.clone());
            }
        }
        for id in expired {
            self.finish_auth(&id, AuthState::Expired, fx);
        }
        let stuck: Vec<String> = self
            .refunds
            .iter()
            .filter(|(_, r)| {
                r.state == RefundState::Sending && r.in_flight_until.is_some_and(|t| t <= now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in stuck {
            if let Some(r) = self.refunds.get_mut(&key) {
                r.in_flight_until = None;
                r.state = RefundState::Queued;
                r.next_attempt_ms = now;
                fx.changed = true;
            }
        }
    }

    /// Asks the shell to forward what is due (everything when `force`).
    pub(crate) fn emit_forwards(&mut self, now: i64, force: bool, fx: &mut Fx) -> Reply {
        let mut forwards = 0u32;
        let mut budget = MAX_FORWARDS_PER_WAKE;
        let due_auths: Vec<String> = self
            .auths
            .iter()
            .filter(|(_, a)| {
                a.state == AuthState::Queued
                    && a.in_flight_until.is_none()
                    && now < a.deadline_ms()
                    && (force || a.next_attempt_ms <= now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due_auths {
            let Some(a) = self.auths.get_mut(&key) else {
                continue;
            };
            if budget == 0 {
                // Over the per-wake cap: due now, so the next alarm comes at once.
                a.next_attempt_ms = a.next_attempt_ms.min(now);
                fx.changed = true;
                continue;
            }
            let Some(sealed) = a.sealed_card.clone() else {
                continue;
            };
            a.attempts = a.attempts.saturating_add(1);
            a.in_flight_until = Some(now.saturating_add(FORWARD_TIMEOUT_MS));
            fx.push(Effect::Forward(ForwardRequest {
                auth_id: a.auth_id.clone(),
                order_id: a.order_id.clone(),
                amount: a.amount,
                currency: a.currency,
                sealed_card: sealed,
                idempotency_key: a.idempotency_key.clone(),
                attempt: a.attempts,
            }));
            fx.changed = true;
            forwards += 1;
            budget -= 1;
        }
        let mut refunds = 0u32;
        let due_refunds: Vec<String> = self
            .refunds
            .iter()
            .filter(|(_, r)| r.state == RefundState::Queued && (force || r.next_attempt_ms <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due_refunds {
            let Some(r) = self.refunds.get_mut(&key) else {
                continue;
            };
            if budget == 0 {
                r.next_attempt_ms = r.next_attempt_ms.min(now);
                fx.changed = true;
                continue;
            }
            fx.push(Effect::ForwardRefund(start_refund(r, now)));
            fx.changed = true;
            refunds += 1;
            budget -= 1;
        }
        Reply::Synced { forwards, refunds }
    }

    pub(crate) fn request_refund(
        &mut self,
        ask: RefundAsk,
        now: i64,
        entropy: [u8; 8],
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        let RefundAsk {
            refund_id,
            order_id,
            amount,
            rule,
            acquirer_online,
        } = ask;
        let order_id = order_id.as_str();
        check_id(&refund_id, "refund_id")?;
        if let Some(r) = self.refunds.get(&refund_id) {
            return if r.order_id == order_id && amount.is_none_or(|a| a == r.amount) {
                Ok(Reply::Refund { refund: r.clone() })
            } else {
                Err(LedgerError::Conflict(refund_id))
            };
        }
        let order = self
            .orders
            .get(order_id)
            .ok_or_else(|| LedgerError::OrderNotFound(order_id.to_string()))?;
        if !rule.allowed {
            return Err(LedgerError::RefundNotAllowed);
        }
        let (Some(charge_id), true) = (order.charge_id.clone(), order.state.is_captured()) else {
            return Err(LedgerError::NotCaptured(order_id.to_string()));
        };
        let sold = order.sold_ms.unwrap_or(order.created_ms);
        if now > sold.saturating_add(rule.window_ms) {
            return Err(LedgerError::RefundWindowClosed);
        }
        let in_progress: i64 = self
            .refunds
            .values()
            .filter(|r| {
                r.order_id == order_id
                    && matches!(r.state, RefundState::Sending | RefundState::Queued)
            })
            .map(|r| r.amount.0)
            .sum();
        let remaining = order.captured_left().0 - in_progress;
        let amount = amount.unwrap_or(MinorUnits(remaining));
        if amount.0 <= 0 {
            return Err(LedgerError::RefundExceedsCaptured {
                remaining: remaining.max(0),
            });
        }
        if amount.0 > remaining {
            return Err(LedgerError::RefundExceedsCaptured {
                remaining: remaining.max(0),
            });
        }
        if !rule.partial_allowed && (amount != order.total || order.refunded.0 != 0) {
            return Err(LedgerError::PartialRefundNotAllowed);
        }
        if !acquirer_online && !rule.may_queue_offline {
            return Err(LedgerError::AcquirerUnavailable);
        }
        let mut refund = Refund {
            idempotency_key: format!("{}:refund:{}", self.config.event_id, refund_id),
            refund_id: refund_id.clone(),
            order_id: order_id.to_string(),
            charge_id,
            amount,
            currency: order.currency,
            created_ms: now,
            may_queue: rule.may_queue_offline,
            state: RefundState::Queued,
            attempts: 0,
            next_attempt_ms: now.saturating_add(backoff_ms(0, &refund_id, entropy)),
            in_flight_until: None,
            lost_checkout: false,
        };
        if acquirer_online {
            fx.push(Effect::ForwardRefund(start_refund(&mut refund, now)));
        }
        self.refunds.insert(refund_id, refund.clone());
        fx.changed = true;
        Ok(Reply::Refund { refund })
    }

    pub(crate) fn refund_result(
        &mut self,
        refund_id: &str,
        result: RefundOutcome,
        now: i64,
        entropy: [u8; 8],
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        let r = self
            .refunds
            .get_mut(refund_id)
            .ok_or_else(|| LedgerError::RefundNotFound(refund_id.to_string()))?;
        let pending = matches!(r.state, RefundState::Sending | RefundState::Queued);
        let mut succeeded = None;
        match (pending, result) {
            (true, RefundOutcome::Succeeded { acquirer_refund_id }) => {
                check_id(&acquirer_refund_id, "acquirer_refund_id")?;
                r.state = RefundState::Succeeded { acquirer_refund_id };
                r.in_flight_until = None;
                succeeded = Some((r.order_id.clone(), r.amount));
            }
            (true, RefundOutcome::Failed { reason }) => {
                r.state = RefundState::Failed {
                    reason: reason.chars().take(200).collect(),
                };
                r.in_flight_until = None;
            }
            // "Unavailable" includes timeouts, after which the acquirer may still have
            // refunded: the refund is retried with its key until a definite answer comes,
            // even when the policy did not allow queuing it (that choice was made when it
            // was requested). Failing it here could refund twice.
            (true, RefundOutcome::Unavailable) => {
                r.in_flight_until = None;
                r.state = RefundState::Queued;
                r.next_attempt_ms = now.saturating_add(backoff_ms(r.attempts, refund_id, entropy));
            }
            (false, RefundOutcome::Succeeded { acquirer_refund_id }) => match &r.state {
                RefundState::Succeeded {
                    acquirer_refund_id: have,
                } if *have == acquirer_refund_id => return Ok(Reply::Refund { refund: r.clone() }),
                _ => return Err(LedgerError::ConflictingResult(refund_id.to_string())),
            },
            (false, _) => return Ok(Reply::Refund { refund: r.clone() }),
        }
        let refund = r.clone();
        fx.changed = true;
        if refund.lost_checkout {
            // The order was never paid: it stays `Lost`; the report counts the refund.
            self.books_changed();
        } else if let Some((order_id, amount)) = succeeded {
            self.add_refunded(&order_id, amount);
            if let Some(o) = self.orders.get(&order_id) {
                fx.push(Effect::Notify {
                    order_id,
                    state: o.state,
                });
            }
        }
        Ok(Reply::Refund { refund })
    }
}

pub(super) fn start_refund(r: &mut Refund, now: i64) -> RefundRequest {
    r.attempts = r.attempts.saturating_add(1);
    r.state = RefundState::Sending;
    r.in_flight_until = Some(now.saturating_add(FORWARD_TIMEOUT_MS));
    RefundRequest {
        refund_id: r.refund_id.clone(),
        order_id: r.order_id.clone(),
        charge_id: r.charge_id.clone(),
        amount: r.amount,
        currency: r.currency,
        idempotency_key: r.idempotency_key.clone(),
        attempt: r.attempts,
    }
}
