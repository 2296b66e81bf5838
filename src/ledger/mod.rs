//! The per-event ledger: a pure state machine the event's Durable Object feeds commands to.
//!
//! One SQLite-backed Durable Object per event is the single writer for stock, orders,
//! stored (offline) payments, refunds, idempotency records and the waiting room. This
//! module is that object's brain, with no I/O: the shell
//!
//! 1. loads the state once per object start ([`EventLedger::from_rows`]),
//! 2. calls [`EventLedger::handle`] with a [`Command`], the current time and 8 random bytes,
//! 3. if [`Outcome::changed`], writes what changed ([`EventLedger::take_delta`]) **before**
//!    answering or acting,
//! 4. performs every [`Effect`] in order (set the alarm, call the acquirer, ...), and feeds
//!    acquirer answers back as new commands (`ForwardResult`, `RefundResult`).
//!
//! Call order for a checkout: `BeginIdempotent` → `Hold` → (acquirer online: charge, then
//! `Confirm` or `Release`; acquirer down: `QueueAuthorization`) → `CompleteIdempotent`.
//! Stored payments are forwarded only from `Alarm` and `SyncNow`; refunds requested while
//! the acquirer is online are sent at once (`ForwardRefund`), queued ones from the alarm.
//! Reconciliation with the acquirer is due by itself after lost checkouts and at the
//! event's end (`recon.rs`): `Alarm` emits `Reconcile`, the shell lists the charges and
//! answers `Command::Reconcile`, which refunds lost checkouts and gives the report to sign.
//!
//! Storage: per row, see `storage.rs` (a small head, the waiting room, one row per order,
//! stored payment, refund and idempotency record; only changed rows are written). The
//! single-document form ([`EventLedger::to_json`], [`EventLedger::to_json_chunks`]) remains
//! for tests and for reading state saved by the first layout.
//!
//! Wire format: `Command`, `Reply` and `Effect` are internally tagged JSON
//! (`{"type": "hold", ...}`), so the Worker can post commands to the object and decode the
//! replies. Replies never carry a sealed card; only `Effect::Forward` does.
//!
//! Architecture invariants: stock sold plus stock held never exceeds stock; the total of
//! stored payments not yet forwarded never exceeds the event's `aggregate_max`; a sealed
//! card never outlives its stored payment's final state; one stored payment reaches
//! `Forwarded` at most once; refunds never exceed what was captured. Errors never lose the
//! timer work (lapsed holds, expiries) done at the start of the same call.

mod config;
mod error;
mod forward;
mod forward_outcome;
mod idempotency;
mod orders;
mod queue;
mod recon;
mod report;
mod storage;
mod tracked;

#[cfg(test)]
mod forward_tests;
#[cfg(test)]
mod limits_tests;
#[cfg(test)]
mod recon_tests;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
pub(crate) mod tests;

pub use config::{
    valid_id, Category, EventConfig, OfflineBudget, QueueConfig, QueueMode, Sku,
    MAX_OFFLINE_WAIT_MS, MAX_ORIGINS, MAX_SKUS,
};
pub use error::{LedgerError, OfflineLimit};
pub use forward::{
    backoff_ms, AcquirerResult, AuthState, AuthView, ForwardRequest, QueueAuth, Refund,
    RefundOutcome, RefundRequest, RefundRule, RefundState, SealedCard, StoredAuth, BACKOFF_BASE_MS,
    BACKOFF_MAX_MS, FORWARD_TIMEOUT_MS, KEY_WINDOW_MS, MAX_FORWARDS_PER_WAKE,
};
pub use forward_outcome::{
    answer_to_classify, forward_outcome, intent_to_read, refund_outcome, Alert, ForwardAttempt,
    ForwardVerdict, RefundAttempt, RefundVerdict, Transport,
};
pub use idempotency::{
    IdempotencyBegin, IdempotencyPeek, IDEMPOTENCY_IN_FLIGHT_MS, IDEMPOTENCY_RETENTION_MS,
    MAX_RESPONSE_LEN,
};
pub use orders::{LineRequest, Order, OrderLine, OrderState, MAX_QTY};
pub use queue::{QueueStatus, WaitingQueue};
pub use recon::{
    lost_refund_id, Listing, ReconSchedule, ReconcileReason, ReconcileRequest, Reconciled,
    RECONCILE_MARGIN_MS, RECONCILE_MIN_INTERVAL_MS, RECONCILE_TIMEOUT_MS,
};
pub use report::{
    AcquirerCharge, AmountMismatch, ChargeStatus, Discrepancies, EventReport, EventSummary,
    LaneTotals, LostCheckout, ReconReport, RefundTotals, ReportTotals, SkuSummary, TimeRange,
    LOST_CHECKOUT_AFTER_MS,
};
pub use storage::{Delta, DeltaRow};
pub use tracked::Tracked;

use crate::money::MinorUnits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Units of one SKU that are sold (taken for good) or held (reserved by a pending order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuCounts {
    pub sold: u32,
    pub held: u32,
}

/// A "not yet saved" flag: bookkeeping for the shell, not part of the state, so two
/// ledgers with the same content are equal whatever they still have to write.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Unsaved(pub bool);

impl PartialEq for Unsaved {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Unsaved {}

/// The whole state of one event. Serialize it with [`EventLedger::to_json`] after every
/// command whose outcome says `changed`, and restore it with [`EventLedger::from_json`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLedger {
    config: EventConfig,
    counts: BTreeMap<String, SkuCounts>,
    orders: Tracked<Order>,
    /// Pending orders and when their hold lapses.
    holds: BTreeMap<String, i64>,
    auths: Tracked<StoredAuth>,
    refunds: Tracked<Refund>,
    idempotency: Tracked<idempotency::IdemRecord>,
    queue: WaitingQueue,
    /// Whether the waiting room changed since the last [`EventLedger::take_delta`].
    #[serde(skip)]
    queue_dirty: Unsaved,
    next_receipt: u64,
    /// The latest `now_ms` seen; time never runs backwards inside the ledger.
    last_now_ms: i64,
    /// The alarm the shell was last asked to set, cleared when it fires.
    alarm_at_ms: Option<i64>,
    /// When reconciliation is due (see `recon.rs`).
    #[serde(default)]
    recon: ReconSchedule,
}

/// A request to the ledger. Every variant is handled atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Replace the configuration (prices, stock, origins, budget). Stock cannot drop below
    /// what is sold or held; SKUs with sales cannot be removed; the currency and event id
    /// cannot change once there are orders.
    UpdateConfig {
        config: EventConfig,
    },
    /// Reserve stock for a new order until `expires_ms`.
    Hold {
        order_id: String,
        lines: Vec<LineRequest>,
        expires_ms: i64,
        buyer_email: Option<String>,
        /// The routing lane that served the checkout (free text id, for reports).
        lane: String,
        /// Needed when the event's queue is `required`.
        admission_ticket: Option<String>,
        /// What the buyer pays when it differs from the sum of list prices (tax added on
        /// top for tax-exclusive places); the order's total, and what reconciliation expects.
        #[serde(default)]
        charge_total: Option<MinorUnits>,
        /// A keyed hash of the card (`checkout::request::card_holder`): the per-card
        /// limits (units per SKU, pending orders, recent declines) count by it.
        #[serde(default)]
        holder: Option<String>,
    },
    /// The acquirer approved the order's payment online: take the stock.
    Confirm {
        order_id: String,
        charge_id: String,
        /// The lane that charged, when failover moved the payment off the held lane.
        #[serde(default)]
        lane: Option<String>,
    },
    /// An online attempt for this pending order is about to be sent to `lane`. Recorded
    /// before it is sent, so a checkout that resumes after its Worker died knows on which
    /// lane a charge may exist (and completes it there instead of trying another).
    NoteAttempt {
        order_id: String,
        lane: String,
    },
    /// A checkout that never sent its payment anywhere is given up (the buyer may retry
    /// with the same Idempotency-Key): the pending order is removed and its stock freed, so
    /// the retry holds it afresh. Refused for an order with a charge or a stored payment.
    Forget {
        order_id: String,
    },
    /// The acquirer declined: give the stock back.
    Release {
        order_id: String,
        reason: String,
    },
    /// Store a payment for later forwarding (acquirer unreachable); within the offline budget.
    QueueAuthorization(QueueAuth),
    /// The acquirer's answer to a `Forward` effect.
    ForwardResult {
        auth_id: String,
        result: AcquirerResult,
    },
    /// Operator: forward every stored payment and queued refund now.
    SyncNow,
    /// The Durable Object alarm fired.
    Alarm,
    /// Refund all (`amount: None`) or part of an approved order.
    RequestRefund {
        refund_id: String,
        order_id: String,
        amount: Option<MinorUnits>,
        rule: RefundRule,
        /// Whether the shell believes the acquirer is reachable right now.
        acquirer_online: bool,
    },
    /// The acquirer's answer to a `ForwardRefund` effect.
    RefundResult {
        refund_id: String,
        result: RefundOutcome,
    },
    BeginIdempotent {
        key: String,
        body_hash: String,
    },
    CompleteIdempotent {
        key: String,
        response: String,
    },
    /// Forget an in-flight key after a retryable failure so the client may retry at once.
    AbandonIdempotent {
        key: String,
    },
    /// Join the waiting room; `random` must be 32 fresh random bytes.
    JoinQueue {
        random: [u8; 32],
    },
    /// Keep a waiting place alive and learn the position.
    PollQueue {
        ticket: String,
    },
    /// The acquirer's charges for this event (every lane, since `listing.since_ms`), for a
    /// `Reconcile` effect or an operator's request: folds known states in, refunds lost
    /// checkouts once, answers `Reconciled` with the report to sign.
    Reconcile {
        charges: Vec<AcquirerCharge>,
        listing: Listing,
        reason: ReconcileReason,
    },
    /// A `Reconcile` effect could not list the charges; it is asked for again after a backoff.
    ReconcileFailed {
        reason: String,
    },
}

/// What the shell answers the caller with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Order { order: Order },
    Auth { auth: AuthView },
    Refund { refund: Refund },
    Idempotency { result: IdempotencyBegin },
    Queue { status: QueueStatus },
    Synced { forwards: u32, refunds: u32 },
    Reconciled { result: Box<Reconciled> },
}

/// Something the shell must do after persisting the state, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// Set the Durable Object alarm to this instant (workers-rs `set_alarm` takes an
    /// offset: pass `at_ms - now`, at least 0).
    SetAlarm { at_ms: i64 },
    /// Send this stored authorization to the acquirer, then feed back `ForwardResult`.
    Forward(ForwardRequest),
    /// The stored payment reached a final state: delete any copy of its sealed card.
    PurgeSealed { auth_id: String },
    /// Send this refund to the acquirer, then feed back `RefundResult`.
    ForwardRefund(RefundRequest),
    /// An order reached a new state the buyer or merchant may need to hear about.
    Notify { order_id: String, state: OrderState },
    /// List the acquirer's charges for this event and answer `Command::Reconcile` (or
    /// `ReconcileFailed`); then sign and keep the report it answers.
    Reconcile(ReconcileRequest),
}

/// The result of one command: the reply (or error), the effects, and whether to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reply: Result<Reply, LedgerError>,
    pub effects: Vec<Effect>,
    /// Whether the state changed and must be written back before acting on the effects.
    pub changed: bool,
}

/// Collects effects and whether anything changed during one command.
#[derive(Debug, Default)]
pub(crate) struct Fx {
    pub effects: Vec<Effect>,
    pub changed: bool,
}

impl Fx {
    pub fn push(&mut self, e: Effect) {
        self.effects.push(e);
    }
}

impl EventLedger {
    /// A new, empty ledger for a validated configuration.
    pub fn new(config: EventConfig, now_ms: i64) -> Result<EventLedger, LedgerError> {
        config.validate()?;
        let counts = config
            .skus
            .iter()
            .map(|s| (s.id.clone(), SkuCounts::default()))
            .collect();
        Ok(EventLedger {
            queue: WaitingQueue::new(&config.queue),
            config,
            counts,
            orders: Tracked::default(),
            holds: BTreeMap::new(),
            auths: Tracked::default(),
            refunds: Tracked::default(),
            idempotency: Tracked::default(),
            queue_dirty: Unsaved(true),
            next_receipt: 1,
            last_now_ms: now_ms,
            alarm_at_ms: None,
            recon: ReconSchedule::default(),
        })
    }

    /// The state as one JSON document (the single SQLite row the shell stores).
    pub fn to_json(&self) -> Result<String, LedgerError> {
        serde_json::to_string(self).map_err(|_| LedgerError::StateCorrupt)
    }

    /// Restores a state written by [`EventLedger::to_json`].
    pub fn from_json(s: &str) -> Result<EventLedger, LedgerError> {
        serde_json::from_str(s).map_err(|_| LedgerError::StateCorrupt)
    }

    /// The state as JSON split into pieces of at most `max_bytes` (at character
    /// boundaries), for storage that limits one value's size (Durable Object SQLite rows:
    /// 2 MB). Write all pieces in one transaction, e.g. rows `(chunk INTEGER PRIMARY KEY,
    /// data TEXT)` numbered from 0, deleting rows past the new count.
    pub fn to_json_chunks(&self, max_bytes: usize) -> Result<Vec<String>, LedgerError> {
        let json = self.to_json()?;
        let max = max_bytes.max(4);
        let mut chunks = Vec::new();
        let mut rest = json.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(max);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (head, tail) = rest.split_at(cut);
            chunks.push(head.to_string());
            rest = tail;
        }
        Ok(chunks)
    }

    /// Restores a state from the pieces of [`EventLedger::to_json_chunks`], in order.
    pub fn from_json_chunks(chunks: &[String]) -> Result<EventLedger, LedgerError> {
        EventLedger::from_json(&chunks.concat())
    }

    pub fn config(&self) -> &EventConfig {
        &self.config
    }

    pub fn order(&self, order_id: &str) -> Option<&Order> {
        self.orders.get(order_id)
    }

    pub fn orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.values()
    }

    pub fn auth(&self, auth_id: &str) -> Option<&StoredAuth> {
        self.auths.get(auth_id)
    }

    pub fn auths(&self) -> impl Iterator<Item = &StoredAuth> {
        self.auths.values()
    }

    pub fn refund(&self, refund_id: &str) -> Option<&Refund> {
        self.refunds.get(refund_id)
    }

    pub fn counts(&self, sku: &str) -> Option<SkuCounts> {
        self.counts.get(sku).copied()
    }

    /// Units of `sku` that can still be held.
    pub fn available(&self, sku: &str) -> u32 {
        match (self.config.sku(sku), self.counts.get(sku)) {
            (Some(s), Some(c)) => s.stock.saturating_sub(c.sold.saturating_add(c.held)),
            _ => 0,
        }
    }

    /// Total of stored payments not yet forwarded, declined or expired.
    pub fn queued_exposure(&self) -> MinorUnits {
        MinorUnits(
            self.auths
                .values()
                .filter(|a| a.state == AuthState::Queued)
                .map(|a| a.amount.0)
                .sum(),
        )
    }

    /// The part of [`EventLedger::queued_exposure`] the offline budget limits: payments
    /// never sent to the acquirer (not those completing an online attempt of unknown
    /// outcome).
    pub fn offline_exposure(&self) -> MinorUnits {
        MinorUnits(
            self.auths
                .values()
                .filter(|a| a.state == AuthState::Queued && !a.resolves_attempt)
                .map(|a| a.amount.0)
                .sum(),
        )
    }

    /// Accepted payments completing an online attempt of unknown outcome, not yet final:
    /// limited by [`OfflineBudget::unknown_bound`].
    pub fn unknown_exposure(&self) -> MinorUnits {
        MinorUnits(
            self.auths
                .values()
                .filter(|a| a.state == AuthState::Queued && a.resolves_attempt && a.accepted)
                .map(|a| a.amount.0)
                .sum(),
        )
    }

    /// People waiting in the queue (a routing signal).
    pub fn queue_depth(&self) -> u32 {
        self.queue.depth()
    }

    /// Whether `ticket` may start a checkout at `now_ms`.
    pub fn admitted(&self, ticket: &str, now_ms: i64) -> bool {
        self.queue.is_admitted(ticket, now_ms.max(self.last_now_ms))
    }

    /// When the shell's alarm should next fire, if anything is waiting on time.
    pub fn next_deadline(&self) -> Option<i64> {
        let auths = self
            .auths
            .values()
            .filter(|a| a.state == AuthState::Queued)
            .map(|a| match a.in_flight_until {
                Some(t) => t,
                None => a.next_attempt_ms.min(a.deadline_ms()),
            });
        let refunds = self.refunds.values().filter_map(|r| match r.state {
            RefundState::Queued => Some(r.next_attempt_ms),
            RefundState::Sending => r.in_flight_until,
            _ => None,
        });
        auths.chain(refunds).chain(self.reconcile_deadline()).min()
    }

    /// Applies one command at `now_ms`. `entropy` (8 fresh random bytes) jitters retry
    /// backoff. Never panics; on error the state may still have changed through timer work
    /// done first (see `Outcome::changed`).
    pub fn handle(&mut self, cmd: Command, now_ms: i64, entropy: [u8; 8]) -> Outcome {
        let now = now_ms.max(self.last_now_ms);
        let mut fx = Fx::default();
        if now != self.last_now_ms {
            self.last_now_ms = now;
        }
        self.advance(now, &mut fx);
        let reply = self.dispatch(cmd, now, entropy, &mut fx);
        self.alarm_effect(now, &mut fx);
        Outcome {
            reply,
            effects: fx.effects,
            changed: fx.changed,
        }
    }

    fn dispatch(
        &mut self,
        cmd: Command,
        now: i64,
        entropy: [u8; 8],
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        match cmd {
            Command::UpdateConfig { config } => self.update_config(config, fx),
            Command::Hold {
                order_id,
                lines,
                expires_ms,
                buyer_email,
                lane,
                admission_ticket,
                charge_total,
                holder,
            } => self.hold(
                orders::HoldRequest {
                    order_id,
                    lines,
                    expires_ms,
                    buyer_email,
                    lane,
                    admission_ticket,
                    charge_total,
                    holder,
                },
                now,
                fx,
            ),
            Command::Confirm {
                order_id,
                charge_id,
                lane,
            } => {
                let reply = self.confirm(&order_id, &charge_id, now, fx);
                if let (Ok(_), Some(lane)) = (&reply, lane) {
                    self.set_order_lane(&order_id, lane);
                }
                reply
            }
            Command::NoteAttempt { order_id, lane } => self.note_attempt(&order_id, lane, fx),
            Command::Release { order_id, reason } => self.release(&order_id, &reason, fx),
            Command::Forget { order_id } => self.forget(&order_id, fx),
            Command::QueueAuthorization(q) => self.queue_authorization(q, now, entropy, fx),
            Command::ForwardResult { auth_id, result } => {
                self.forward_result(&auth_id, result, now, entropy, fx)
            }
            Command::SyncNow => Ok(self.emit_forwards(now, true, fx)),
            Command::Alarm => {
                if self.alarm_at_ms.take().is_some() {
                    fx.changed = true;
                }
                let reply = self.emit_forwards(now, false, fx);
                self.emit_reconcile(now, fx);
                Ok(reply)
            }
            Command::Reconcile {
                charges,
                listing,
                reason,
            } => self.reconcile_command(charges, listing, reason, now, entropy, fx),
            Command::ReconcileFailed { .. } => self.reconcile_failed(now, entropy, fx),
            Command::RequestRefund {
                refund_id,
                order_id,
                amount,
                rule,
                acquirer_online,
            } => {
                let ask = forward::RefundAsk {
                    refund_id,
                    order_id,
                    amount,
                    rule,
                    acquirer_online,
                };
                self.request_refund(ask, now, entropy, fx)
            }
            Command::RefundResult { refund_id, result } => {
                self.refund_result(&refund_id, result, now, entropy, fx)
            }
            Command::BeginIdempotent { key, body_hash } => {
                self.begin_idempotent(key, body_hash, now, fx)
            }
            Command::CompleteIdempotent { key, response } => {
                self.complete_idempotent(&key, response, now, fx)
            }
            Command::AbandonIdempotent { key } => self.abandon_idempotent(&key, fx),
            Command::JoinQueue { random } => {
                let status = self.queue.join(&self.config.queue, random, now)?;
                fx.changed = true;
                self.queue_dirty = Unsaved(true);
                Ok(Reply::Queue { status })
            }
            Command::PollQueue { ticket } => {
                let (status, durable) =
                    self.queue
                        .poll_durably(&ticket, now, self.config.queue.place_ttl_ms)?;
                if durable {
                    fx.changed = true;
                    self.queue_dirty = Unsaved(true);
                }
                Ok(Reply::Queue { status })
            }
        }
    }

    /// Timer work done lazily at the start of every command, so a lost alarm only delays
    /// forwarding and never leaves stock held or budgets used past their time.
    fn advance(&mut self, now: i64, fx: &mut Fx) {
        self.lapse_holds(now, fx);
        self.expire_and_unstick(now, fx);
        self.unstick_reconcile(now, fx);
        self.prune_idempotency(now, fx);
        if self.queue.maintain(&self.config.queue, now) {
            fx.changed = true;
            self.queue_dirty = Unsaved(true);
        }
    }

    fn alarm_effect(&mut self, now: i64, fx: &mut Fx) {
        let Some(at) = self.next_deadline() else {
            return;
        };
        // Re-ask when the deadline moved or the alarm is overdue (it may have been lost).
        if self.alarm_at_ms != Some(at) || at <= now {
            self.alarm_at_ms = Some(at);
            fx.changed = true;
            fx.push(Effect::SetAlarm { at_ms: at });
        }
    }

    fn update_config(&mut self, config: EventConfig, fx: &mut Fx) -> Result<Reply, LedgerError> {
        config.validate()?;
        let bad = |field: &str, reason: &str| LedgerError::InvalidConfig {
            field: field.to_string(),
            reason: reason.to_string(),
        };
        if config.event_id != self.config.event_id {
            return Err(bad("event_id", "cannot change"));
        }
        if config.currency != self.config.currency && !self.orders.is_empty() {
            return Err(bad("currency", "cannot change once there are orders"));
        }
        for (sku, c) in &self.counts {
            let used = c.sold.saturating_add(c.held);
            match config.sku(sku) {
                None if used > 0 || self.orders.values().any(|o| o.has_sku(sku)) => {
                    return Err(bad("skus", "an item with orders cannot be removed"));
                }
                Some(s) if s.stock < used => {
                    return Err(LedgerError::InvalidConfig {
                        field: format!("skus[{sku}].stock"),
                        reason: format!("must be at least the {used} units sold or held"),
                    });
                }
                _ => {}
            }
        }
        if config.offline.aggregate_max < self.offline_exposure() {
            return Err(bad(
                "offline.aggregate_max",
                "must be at least the amount already stored",
            ));
        }
        let mut counts = BTreeMap::new();
        for s in &config.skus {
            counts.insert(
                s.id.clone(),
                self.counts.get(&s.id).copied().unwrap_or_default(),
            );
        }
        self.counts = counts;
        self.queue.reconfigure(&config.queue);
        self.queue_dirty = Unsaved(true);
        self.config = config;
        fx.changed = true;
        Ok(Reply::Done)
    }

    /// Checks every invariant from scratch; `Err` describes the first broken one. Cheap
    /// enough for tests and an operator's health check.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut expect: BTreeMap<&str, SkuCounts> = BTreeMap::new();
        let mut reserved: BTreeMap<&str, i64> = BTreeMap::new();
        for r in self.refunds.values() {
            let order_lost = self
                .orders
                .get(&r.order_id)
                .is_some_and(|o| o.state == OrderState::Lost);
            if r.lost_checkout != order_lost {
                return Err(format!(
                    "refund {} lost_checkout {} vs its order",
                    r.refund_id, r.lost_checkout
                ));
            }
            if !r.lost_checkout && !matches!(r.state, RefundState::Failed { .. }) {
                *reserved.entry(r.order_id.as_str()).or_default() += r.amount.0;
            }
        }
        for o in self.orders.values() {
            for l in &o.lines {
                let c = expect.entry(l.sku.as_str()).or_default();
                if o.state == OrderState::Pending {
                    c.held += l.qty;
                } else if o.stock_taken {
                    c.sold += l.qty;
                }
            }
            if (o.state == OrderState::Pending) != self.holds.contains_key(&o.order_id) {
                return Err(format!("order {} hold index out of step", o.order_id));
            }
            if o.refunded.0 < 0 || o.refunded > o.total {
                return Err(format!("order {} refunded more than captured", o.order_id));
            }
            if o.state == OrderState::Lost
                && (o.stock_taken || !self.refunds.values().any(|r| r.order_id == o.order_id))
            {
                return Err(format!(
                    "lost order {} sold or without a refund",
                    o.order_id
                ));
            }
            let reserved = reserved.get(o.order_id.as_str()).copied().unwrap_or(0);
            if reserved > o.total.0 {
                return Err(format!("order {} refunds exceed its total", o.order_id));
            }
        }
        for sku in &self.config.skus {
            let have = self.counts.get(&sku.id).copied().unwrap_or_default();
            let want = expect.get(sku.id.as_str()).copied().unwrap_or_default();
            if have != want {
                return Err(format!(
                    "counts for {} are {have:?}, orders say {want:?}",
                    sku.id
                ));
            }
            if have.sold as u64 + have.held as u64 > sku.stock as u64 {
                return Err(format!("{} oversold: {have:?} of {}", sku.id, sku.stock));
            }
        }
        if self.offline_exposure() > self.config.offline.aggregate_max {
            return Err("queued exposure above aggregate_max".into());
        }
        if self.unknown_exposure() > self.config.offline.unknown_bound() {
            return Err("unknown-outcome exposure above its bound".into());
        }
        for a in self.auths.values() {
            if a.state != AuthState::Queued && a.sealed_card.is_some() {
                return Err(format!(
                    "auth {} keeps a sealed card after {:?}",
                    a.auth_id, a.state
                ));
            }
            let Some(o) = self.orders.get(&a.order_id) else {
                return Err(format!("auth {} has no order", a.auth_id));
            };
            let ok = match &a.state {
                AuthState::Queued => o.state == OrderState::Queued,
                AuthState::Forwarded { charge_id } => {
                    o.charge_id.as_deref() == Some(charge_id.as_str()) && o.state.is_captured()
                }
                AuthState::Declined { .. } => o.state == OrderState::Declined,
                AuthState::Expired => o.state == OrderState::Expired,
            };
            if !ok {
                return Err(format!(
                    "auth {} {:?} vs order {:?}",
                    a.auth_id, a.state, o.state
                ));
            }
        }
        Ok(())
    }
}
