//! The checkout as one pure state machine: from a validated request to the buyer's answer,
//! with the event's object and the acquirer as inputs and outputs, no I/O, no clock.
//!
//! # Call order (for the Worker, the simulation and the bench alike)
//!
//! ```text
//! let mut co = Checkout::new(input);             // validated request, card, quote, key
//! loop {
//!     match co.poll(&mut router, now) {
//!         Step::Object(call)   => co.handle_object(result_of(call), now),
//!         Step::SealKey        => co.handle_seal_key(the event's store-and-forward key),
//!         Step::Authorize(a)   => match a.answer_by_ms {
//!             // the same request, given until a.timeout_ms in all
//!             Some(ms) if no answer after ms => co.handle_answer_due(&mut router, now),
//!             _ => co.handle_attempt(&mut router, send(a.call, a.timeout_ms), now),
//!         },
//!         Step::Answer(answer) => answer the buyer now, and go on,
//!         Step::Late           => co.handle_attempt(&mut router, the request still out, now),
//!         Step::Wait { ms }    => sleep ms,
//!         Step::Done(answer)   => break answer,   // status, body, routing, telemetry
//!     }
//! }
//! ```
//!
//! `poll` never blocks and is called again after each `handle_*`. The sequence:
//! 1. the router plans (`Reject` answers 429 at once; a plan to store offline, when the
//!    policy allows it, asks for the sealing key and then makes the whole checkout one
//!    object call);
//! 2. **begin** (object): the idempotency record, the single-use CVC, the hold. A replay,
//!    a request in flight, a mismatch or a refused hold ends here;
//! 3. **authorize** on the planned lanes. Each result goes through [`outcome::classify`]:
//!    approved and declined finish; an attempt the acquirer provably did not process may
//!    move to the next lane (after the object recorded that lane); an **unknown** outcome
//!    never does: the payment is stored to complete that attempt later on that lane with
//!    the same acquirer key;
//!    When the acquirer has not answered by the attempt's answer time (`answer_by_ms`: its
//!    timeout, capped at 1 s, or 50 ms while every lane is slow) the request is not cut: the buyer is
//!    answered from a payment stored to complete that very attempt (`201 confirming`, or
//!    `202 pending` past the unknown-outcome bound), and the request runs on (`Step::Late`)
//!    until its own answer settles the stored payment (`ForwardResult`), an approval or a
//!    decline the buyer's page learns by asking again with the same key. The object
//!    forwards nothing meanwhile; if this Worker dies, it completes the payment later with
//!    the same acquirer key;
//! 4. **finish** (object): confirm, release or store, the signed receipt and the stored
//!    answer together. After an approval or an unknown outcome the order is never released
//!    and the key never abandoned: a failed finish is retried, and if the object stays
//!    unreachable the buyer gets `202 pending` (a retry with the same key finds out).
//!
//! The order id derives from the Idempotency-Key ([`request::CheckoutKey`]): a retry
//! after a dead Worker holds the same order and sends the acquirer the same key.

pub mod object_side;
pub mod outcome;
pub mod protocol;
pub mod request;
pub mod status;

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

use crate::acquirer::{self, AuthorizeRequest, HttpCall};
use crate::card::Card;
use crate::error::ApiError;
use crate::ledger::{
    self, Command, EventConfig, LineRequest, Order, OrderState, QueueAuth, SealedCard,
};
use crate::policy::LoadedBundle;
use crate::quote::Quote;
use crate::receipt::{self, CardSummary, Receipt, ReceiptStatus};
use crate::routing::{Busy, Detached, Mode, Permit, Router, RoutingDecision, Signals, WaitTicket};
use crate::secret::Secret;
use crate::vault::{self, OpenedCvc};
use outcome::{AttemptResult, Sent, Transport};
use protocol::{
    BeginReply, BeginRequest, Completion, CvcUse, FinishReply, FinishRequest, StoredAnswer,
    WireError,
};
use request::CheckoutKey;
use std::sync::Arc;

/// How long a checkout holds stock while it talks to the acquirer.
pub const HOLD_MS: i64 = 120_000;
/// How many times a finish is sent before the buyer is told `pending`.
pub const FINISH_TRIES: u8 = 3;
/// How long a payment completing an attempt of unknown outcome may wait: inside the
/// acquirer's 24 h idempotency window, so a late resend cannot become a second charge.
pub const RESOLVE_WAIT_MS: i64 = 23 * 3_600_000;
/// How often a checkout waiting for a permit looks again, ms.
pub const PERMIT_POLL_MS: u32 = 5;
/// What `Retry-After` says on a `pending` or in-flight answer, seconds.
pub const PENDING_RETRY_S: u32 = 2;
/// What `Retry-After` says on a `confirming` answer (the acquirer is answering, slowly).
pub const CONFIRMING_RETRY_S: u32 = 1;
/// A checkout this old may have been taken over by a retry with the same key (after
/// `IDEMPOTENCY_IN_FLIGHT_MS`), which pays on the order's lane, or counted as lost by
/// reconciliation: it finishes what it sent but stores no new payment and does not
/// forget the key.
pub const STALE_AFTER_MS: i64 = ledger::LOST_CHECKOUT_AFTER_MS;

/// Everything a checkout works out before the machine starts: validated and priced, the
/// card detokenized and the CVC opened in this PoP. No storage was written.
pub struct Prepared {
    pub bundle: Arc<LoadedBundle>,
    pub quote: Quote,
    pub lines: Vec<LineRequest>,
    pub buyer_email: Option<String>,
    pub admission_ticket: Option<String>,
    pub require_online: bool,
    pub card: Card,
    pub cvc: Option<OpenedCvc>,
    /// The purchase's idempotency fingerprint ([`request::fingerprint`]).
    pub fingerprint: String,
    /// The card to the event's purchase limits ([`request::card_holder`]).
    pub holder: String,
}

/// The machine's input.
pub struct CheckoutInput {
    pub event: Arc<EventConfig>,
    pub key: CheckoutKey,
    /// [`request::cart_fingerprint`] of the request.
    pub cart: String,
    /// What preparing found; an error is still checked against the idempotency record
    /// first (a completed request answers its stored answer whatever this retry holds).
    pub prepared: Result<Prepared, ApiError>,
    /// Each lane's API key, by the lane's `secret_name`.
    pub secrets: Vec<(String, Secret<String>)>,
    pub colo: String,
    pub now_ms: i64,
    /// Load signals for the plan (`amount_minor` and `require_online` are set here).
    pub signals: Signals,
    /// 12 fresh random bytes (the sealed card's nonce).
    pub nonce: [u8; 12],
}

/// What the caller must do next.
#[derive(Debug)]
pub enum Step {
    /// Call the event's object and feed the result to [`Checkout::handle_object`].
    Object(ObjectCall),
    /// Get the event's store-and-forward key and feed it to [`Checkout::handle_seal_key`].
    SealKey,
    /// Send this request and feed what came back to [`Checkout::handle_attempt`].
    Authorize(Authorize),
    /// Every lane the checkout may use is at its concurrency limit: sleep this long, then
    /// poll again (the machine has a place in the router's queue for a permit and gives
    /// up by itself at its deadline).
    Wait { ms: u32 },
    /// Answer the buyer now (`201 confirming` or `202 pending`), then poll again: the
    /// attempt sent earlier is still running.
    Answer(Answer),
    /// Wait for the attempt that is still running (the last [`Step::Authorize`], whose
    /// answer time passed) and feed its result to [`Checkout::handle_attempt`].
    Late,
    /// Answer the buyer (after a [`Step::Answer`], the checkout's final word: no buyer
    /// listens to it).
    Done(Answer),
}

/// One call to the event's object.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectCall {
    Begin(Box<BeginRequest>),
    Finish(Box<FinishRequest>),
    /// One ledger command (`NoteAttempt`).
    Command(Box<Command>),
}

/// What the object answered.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectResult {
    Begin(BeginReply),
    Finish(FinishReply),
    Command(Result<(), WireError>),
}

/// An authorization request to send.
#[derive(Debug)]
pub struct Authorize {
    pub lane: String,
    pub call: HttpCall,
    /// The request is cut after this long.
    pub timeout_ms: u32,
    /// Without an answer after this long (shorter than `timeout_ms`), call
    /// [`Checkout::handle_answer_due`] and keep the request running.
    pub answer_by_ms: Option<u32>,
}

/// Business events for telemetry, recorded by the shell (no card data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Approved { lane: String },
    Declined { lane: String, reason: String },
    Queued { lane: String },
}

/// The buyer's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    /// `X-Poptill-Routing`.
    pub routing: Option<String>,
    pub replayed: bool,
    pub retry_after_s: Option<u32>,
    pub notes: Vec<Note>,
    /// The order this answer is about, when one was held.
    pub order_id: Option<String>,
}

impl Answer {
    /// An error answer (its `Retry-After` set when it is retryable).
    pub fn error(e: &ApiError) -> Answer {
        Answer {
            status: e.status,
            body: e.body(),
            routing: None,
            replayed: false,
            retry_after_s: e.retryable.then_some(PENDING_RETRY_S),
            notes: Vec::new(),
            order_id: None,
        }
    }

    fn stored(a: StoredAnswer, replayed: bool) -> Answer {
        let mut body = a.body;
        if let Some(r) = a.receipt {
            body["receipt"] = r;
        }
        let routing = body
            .get("routing")
            .and_then(|r| r.as_str())
            .map(str::to_string);
        let order_id = body
            .get("order_id")
            .and_then(|r| r.as_str())
            .map(str::to_string);
        Answer {
            status: a.status,
            retry_after_s: if a.status == 202 {
                Some(PENDING_RETRY_S)
            } else if status::is_confirming(a.status, &body) {
                Some(CONFIRMING_RETRY_S)
            } else {
                None
            },
            body,
            routing,
            replayed,
            notes: Vec::new(),
            order_id,
        }
    }
}

/// Where the machine is.
enum State {
    Start,
    /// Send this begin call.
    SendBegin(ObjectCall),
    /// Begin the two-call checkout.
    BeginPlain,
    /// Waiting for the sealing key before a one-call store.
    SealBeforeBegin,
    AwaitBegin,
    /// Try planned attempt `index` next.
    Attempt {
        index: usize,
    },
    /// Waiting for a permit (after [`Step::Wait`]); then try attempt `index` again.
    AwaitPermit {
        index: usize,
    },
    /// Waiting for the object to record the lane of attempt `index`.
    AwaitNote {
        index: usize,
    },
    AwaitAttempt {
        index: usize,
        permit: Permit,
        lane: String,
        started_ms: i64,
    },
    /// No lane gave a definitive answer: store the payment, or refuse.
    Offline,
    AwaitSeal,
    Finish,
    AwaitFinish,
    /// Answer the buyer, then wait for the attempt still running.
    AnswerEarly(Answer),
    AwaitLate,
    /// Send the late attempt once more (same key, same lane), then wait for it.
    ResendLate(Box<Authorize>),
    /// Record the late attempt's result on the stored payment.
    RecordLate(Box<Command>),
    AwaitLateRecord,
    Done(Answer),
    Finished,
}

/// An attempt still running after its buyer was answered.
struct Late {
    detached: Detached,
    lane: String,
    started_ms: i64,
    /// The request is given up then (its `Authorize::timeout_ms`).
    until_ms: i64,
    /// It is the one resend after an unknown outcome.
    resent: bool,
}

/// What a finish is for, which decides what a failed finish means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Confirm an approval or store a payment: after a charge (or maybe one).
    Settle,
    /// Store a payment never sent to an acquirer: refused by the budget means "undo".
    StoreOffline,
    /// Release a declined order (no charge).
    Decline,
    /// Release the hold and forget the key (nothing was charged).
    Undo,
}

/// One checkout in progress.
pub struct Checkout {
    event: Arc<EventConfig>,
    key: CheckoutKey,
    cart: String,
    prepared: Option<Prepared>,
    prepare_error: Option<ApiError>,
    secrets: Vec<(String, Secret<String>)>,
    colo: String,
    started_ms: i64,
    signals: Signals,
    nonce: [u8; 12],
    state: State,
    plan: Option<RoutingDecision>,
    routing: String,
    first_lane: String,
    /// The lane the object has recorded for the order (where a charge may exist).
    recorded_lane: Option<String>,
    /// The order already existed: only its recorded lane may be used.
    resumed: bool,
    /// The lane of an attempt whose outcome is unknown.
    unknown_on: Option<String>,
    /// A lost connection was already sent again once.
    resent: bool,
    /// The place in the router's queue for a permit, while every lane is at its limit.
    ticket: Option<WaitTicket>,
    /// Waiting for a permit ends then.
    wait_until_ms: Option<i64>,
    seal_key: Option<Secret<[u8; 32]>>,
    finish: Option<(FinishRequest, Purpose)>,
    finish_tries: u8,
    /// What to answer when the finish of `Purpose::Undo` cannot be kept (a retryable
    /// error: nothing was charged). A decline is only answered once it is kept.
    fallback: Option<Answer>,
    notes: Vec<Note>,
    /// The attempt that runs on after its answer time.
    late: Option<Late>,
    /// `Authorize::timeout_ms` of the attempt in flight.
    sent_timeout_ms: u32,
}

impl Checkout {
    pub fn new(input: CheckoutInput) -> Checkout {
        let (prepared, prepare_error) = match input.prepared {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        };
        Checkout {
            event: input.event,
            key: input.key,
            cart: input.cart,
            prepared,
            prepare_error,
            secrets: input.secrets,
            colo: input.colo,
            started_ms: input.now_ms,
            signals: input.signals,
            nonce: input.nonce,
            state: State::Start,
            plan: None,
            routing: String::new(),
            first_lane: String::new(),
            recorded_lane: None,
            resumed: false,
            unknown_on: None,
            resent: false,
            ticket: None,
            wait_until_ms: None,
            seal_key: None,
            finish: None,
            finish_tries: 0,
            fallback: None,
            notes: Vec::new(),
            late: None,
            sent_timeout_ms: 0,
        }
    }

    /// What preparing found (the quote and policy, for telemetry), if it succeeded.
    pub fn prepared(&self) -> Option<&Prepared> {
        self.prepared.as_ref()
    }

    /// The order this checkout holds.
    pub fn order_id(&self) -> &str {
        &self.key.order_id
    }

    /// The next step. Call again after feeding each result back.
    pub fn poll(&mut self, router: &mut Router, now_ms: i64) -> Step {
        loop {
            match std::mem::replace(&mut self.state, State::Finished) {
                State::Start => {
                    if let Some(step) = self.start(router, now_ms) {
                        return step;
                    }
                }
                State::SealBeforeBegin => {
                    self.state = State::SealBeforeBegin;
                    return Step::SealKey;
                }
                State::SendBegin(call) => {
                    self.state = State::AwaitBegin;
                    return Step::Object(call);
                }
                State::BeginPlain => return self.begin(None),
                State::Attempt { index } | State::AwaitPermit { index } => {
                    if let Some(step) = self.attempt(router, index, now_ms) {
                        return step;
                    }
                }
                State::Offline => {
                    if let Some(step) = self.offline(now_ms) {
                        return step;
                    }
                }
                State::Finish => {
                    let Some((req, purpose)) = &self.finish else {
                        self.state = State::Done(Answer::error(&unreadable()));
                        continue;
                    };
                    if self.stale(now_ms) {
                        // Too late to store a new payment (see `offline`) or to forget the
                        // key: a retry may have taken the key over and be paying; forgetting
                        // its key would make the next retry take the order for an undone
                        // one. Nothing was charged by this checkout.
                        match purpose {
                            Purpose::StoreOffline => {
                                self.state =
                                    State::Done(pending(&self.key.order_id, &self.routing));
                                continue;
                            }
                            Purpose::Undo => {
                                self.state = State::Done(
                                    self.fallback
                                        .clone()
                                        .unwrap_or_else(|| Answer::error(&unreadable())),
                                );
                                continue;
                            }
                            Purpose::Settle | Purpose::Decline => {}
                        }
                    }
                    let call = ObjectCall::Finish(Box::new(req.clone()));
                    self.state = State::AwaitFinish;
                    return Step::Object(call);
                }
                State::AnswerEarly(mut answer) => {
                    answer.notes.append(&mut self.notes);
                    self.state = State::AwaitLate;
                    return Step::Answer(answer);
                }
                State::AwaitLate => {
                    self.state = State::AwaitLate;
                    return Step::Late;
                }
                State::ResendLate(a) => {
                    self.state = State::AwaitLate;
                    return Step::Authorize(*a);
                }
                State::RecordLate(cmd) => {
                    self.state = State::AwaitLateRecord;
                    return Step::Object(ObjectCall::Command(cmd));
                }
                State::Done(mut answer) => {
                    answer.notes.append(&mut self.notes);
                    return Step::Done(answer);
                }
                State::Finished => return Step::Done(Answer::error(&unreadable())),
                s @ (State::AwaitBegin
                | State::AwaitNote { .. }
                | State::AwaitAttempt { .. }
                | State::AwaitSeal
                | State::AwaitFinish
                | State::AwaitLateRecord) => {
                    // Polled while waiting for a result: the result is lost. Nothing was
                    // charged that a retry with the same key cannot find.
                    self.state = s;
                    return Step::Done(pending(&self.key.order_id, &self.routing));
                }
            }
        }
    }

    fn start(&mut self, router: &mut Router, now_ms: i64) -> Option<Step> {
        let Some(p) = &self.prepared else {
            let call = ObjectCall::Begin(Box::new(BeginRequest {
                key: self.key.key.clone(),
                fingerprint: None,
                cart: self.cart.clone(),
                order_id: Some(self.key.order_id.clone()),
                cvc: None,
                hold: None,
                then: None,
            }));
            self.state = State::AwaitBegin;
            return Some(Step::Object(call));
        };
        let offline_cap = self
            .event
            .offline
            .per_transaction_max
            .0
            .min(p.bundle.bundle.offline.per_transaction_cap.0);
        let signals = Signals {
            amount_minor: p.quote.total.0,
            require_online: p.require_online || p.quote.total.0 > offline_cap,
            ..self.signals
        };
        let plan = router.plan(now_ms, signals);
        self.routing = plan.reason.clone();
        if plan.mode == Mode::Reject {
            let mut a = Answer::error(&overloaded());
            a.routing = Some(self.routing.clone());
            self.state = State::Done(a);
            return None;
        }
        self.first_lane = plan
            .lanes_in_order
            .first()
            .map(|a| a.lane_name.clone())
            .or_else(|| router.lane_names().first().cloned())
            .unwrap_or_default();
        let store_at_once = plan.mode == Mode::QueueOffline && offline_refusal(p).is_none();
        self.plan = Some(plan);
        if store_at_once {
            self.state = State::SealBeforeBegin;
            return None;
        }
        Some(self.begin(None))
    }

    fn hold_command(&self, p: &Prepared) -> Command {
        Command::Hold {
            order_id: self.key.order_id.clone(),
            lines: p.lines.clone(),
            expires_ms: self.started_ms + HOLD_MS,
            buyer_email: p.buyer_email.clone(),
            lane: self.first_lane.clone(),
            admission_ticket: p.admission_ticket.clone(),
            charge_total: Some(p.quote.total),
            holder: Some(p.holder.clone()).filter(|h| !h.is_empty()),
        }
    }

    fn begin(&mut self, then: Option<FinishRequest>) -> Step {
        let Some(p) = &self.prepared else {
            return Step::Done(Answer::error(&unreadable()));
        };
        let call = ObjectCall::Begin(Box::new(BeginRequest {
            key: self.key.key.clone(),
            fingerprint: Some(p.fingerprint.clone()),
            cart: self.cart.clone(),
            order_id: Some(self.key.order_id.clone()),
            cvc: p.cvc.as_ref().map(|c| CvcUse {
                use_id: c.use_id.clone(),
                expires_at_ms: c.expires_at_ms,
            }),
            hold: Some(self.hold_command(p)),
            then,
        }));
        self.state = State::AwaitBegin;
        Step::Object(call)
    }

    fn attempt(&mut self, router: &mut Router, mut index: usize, now_ms: i64) -> Option<Step> {
        let Some(plan) = self.plan.clone() else {
            self.state = State::Offline;
            return None;
        };
        let first = index;
        let mut at_limit = false;
        loop {
            let Some(attempt) = plan.lanes_in_order.get(index) else {
                if at_limit {
                    return self.wait_for_permit(router, &plan, first, now_ms);
                }
                self.leave_wait(router);
                self.state = State::Offline;
                return None;
            };
            // After an unknown outcome only that lane may be tried again (never another),
            // and a resumed order may only be paid on the lane it was recorded on: skip the
            // others (a resumed order's lane may come later in the plan).
            let other_than_unknown = self
                .unknown_on
                .as_ref()
                .is_some_and(|u| *u != attempt.lane_name);
            let other_than_recorded =
                self.resumed && self.recorded_lane.as_deref() != Some(attempt.lane_name.as_str());
            if other_than_unknown || other_than_recorded {
                index += 1;
                continue;
            }
            let Some(timeout_ms) = plan.attempt_timeout_ms(index, now_ms) else {
                self.leave_wait(router);
                self.state = State::Offline;
                return None;
            };
            // A lane at its limit (or whose free permits go to checkouts waiting ahead)
            // is passed over; if every lane is, the checkout waits for a permit.
            match router.may_acquire(attempt, self.ticket, now_ms) {
                Ok(()) => {}
                Err(busy) => {
                    at_limit |= busy == Busy::AtLimit;
                    index += 1;
                    continue;
                }
            }
            if self.recorded_lane.as_deref() != Some(attempt.lane_name.as_str()) {
                // Record the lane before sending, so a resumed checkout knows where a
                // charge may be.
                self.state = State::AwaitNote { index };
                return Some(Step::Object(ObjectCall::Command(Box::new(
                    Command::NoteAttempt {
                        order_id: self.key.order_id.clone(),
                        lane: attempt.lane_name.clone(),
                    },
                ))));
            }
            let permit = match router.acquire(attempt, self.ticket, now_ms) {
                Ok(p) => p,
                Err(busy) => {
                    at_limit |= busy == Busy::AtLimit;
                    index += 1;
                    continue;
                }
            };
            self.leave_wait(router);
            let built = router
                .lane_config(attempt.lane)
                .cloned()
                .ok_or(())
                .and_then(|lane| self.build_call(&lane).map(|c| (lane, c)).map_err(|_| ()));
            let (lane, call) = match built {
                Ok(x) => x,
                Err(()) => {
                    // Nothing was sent: the lane cannot be used (its configuration).
                    router.on_complete(
                        permit,
                        0,
                        crate::routing::Outcome::Retryable(
                            crate::routing::RetryReason::ConnectionRefused,
                        ),
                        now_ms,
                    );
                    self.routing
                        .push_str(&format!("; {} misconfigured", attempt.lane_name));
                    index += 1;
                    continue;
                }
            };
            self.state = State::AwaitAttempt {
                index,
                permit,
                lane: lane.name.clone(),
                started_ms: now_ms,
            };
            // Past its answer time the request runs on in the background (its buyer
            // answered from a stored payment), unless the plan cuts it then.
            let background = attempt.background_ms;
            self.sent_timeout_ms = timeout_ms.saturating_add(background);
            return Some(Step::Authorize(Authorize {
                lane: lane.name,
                call,
                timeout_ms: self.sent_timeout_ms,
                answer_by_ms: (background > 0).then_some(timeout_ms),
            }));
        }
    }

    /// Every lane this checkout may use is at its limit: wait for a permit in the router's
    /// queue, until the tuning's `permit_wait_ms` or the checkout's deadline. A full limit
    /// means the acquirer is busy, not unreachable, so giving up never stores the payment
    /// offline: it is shed with 429 (nothing was sent; the hold and the key are undone).
    /// Only a resend after an unknown outcome, or a resumed order, is completed later on
    /// its lane instead, as for any attempt that cannot go now.
    fn wait_for_permit(
        &mut self,
        router: &mut Router,
        plan: &RoutingDecision,
        index: usize,
        now_ms: i64,
    ) -> Option<Step> {
        let until = *self.wait_until_ms.get_or_insert_with(|| {
            let wait = i64::from(router.tuning().permit_wait_ms);
            let last_start = plan
                .deadline_ms
                .saturating_sub(i64::from(plan.min_attempt_ms));
            now_ms.saturating_add(wait).min(last_start)
        });
        if self.ticket.is_none() && now_ms < until {
            self.ticket = router.join_wait(now_ms, until);
            if self.ticket.is_some() {
                self.routing.push_str("; waited for a permit");
            } else {
                self.routing.push_str("; permit queue full");
            }
        }
        if self.ticket.is_some() && now_ms < until {
            self.state = State::AwaitPermit { index };
            let ms = u32::try_from(until - now_ms).unwrap_or(u32::MAX);
            return Some(Step::Wait {
                ms: ms.min(PERMIT_POLL_MS),
            });
        }
        self.leave_wait(router);
        if self.unknown_on.is_some() || self.resumed {
            self.routing.push_str("; no permit in time");
            self.state = State::Offline;
            return None;
        }
        self.routing.push_str("; shed: every lane at its limit");
        self.undo(overloaded());
        None
    }

    fn leave_wait(&mut self, router: &mut Router) {
        if let Some(t) = self.ticket.take() {
            router.leave_wait(t);
        }
    }

    fn build_call(&self, lane: &crate::routing::LaneConfig) -> Result<HttpCall, ApiError> {
        let Some(p) = &self.prepared else {
            return Err(unreadable());
        };
        let secret = self
            .secrets
            .iter()
            .find(|(n, _)| *n == lane.secret_name)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| Secret::new(String::new()));
        acquirer::build_authorize(
            &lane.base_url,
            &secret,
            &self.authorize_request(p, format!("{}_online", self.key.order_id)),
        )
        .map_err(|e| e.to_api())
    }

    fn authorize_request(&self, p: &Prepared, idempotency_key: String) -> AuthorizeRequest {
        AuthorizeRequest {
            amount: p.quote.total,
            currency: self.event.currency,
            card_number: p.card.number().clone(),
            exp_month: p.card.exp_month,
            exp_year: p.card.exp_year,
            cvc: p.cvc.as_ref().map(|c| c.cvc.clone()),
            idempotency_key,
            order_id: self.key.order_id.clone(),
            event_id: self.event.event_id.clone(),
            capture: true,
        }
    }

    /// Feeds the object's answer (or the failure to reach it) back in.
    pub fn handle_object(&mut self, result: Result<ObjectResult, ApiError>, now_ms: i64) {
        let _ = now_ms;
        match std::mem::replace(&mut self.state, State::Finished) {
            State::AwaitBegin => self.on_begin(result),
            State::AwaitNote { index } => match result {
                Ok(ObjectResult::Command(Ok(()))) => {
                    if let Some(a) = self.plan.as_ref().and_then(|p| p.lanes_in_order.get(index)) {
                        self.recorded_lane = Some(a.lane_name.clone());
                    }
                    self.state = State::Attempt { index };
                }
                // Could not record the lane: do not send. Nothing was charged on it.
                _ => {
                    self.routing.push_str("; could not record the lane");
                    self.undo(unreadable());
                }
            },
            State::AwaitFinish => self.on_finish(result),
            // Recorded, or not (the object then completes the payment when its forward
            // timeout passes): the buyer's answer was given already.
            State::AwaitLateRecord => {
                let kept = matches!(result, Ok(ObjectResult::Command(Ok(()))));
                if !kept {
                    self.routing.push_str("; left to the object");
                }
                self.state = State::Done(pending(&self.key.order_id, &self.routing));
            }
            other => self.state = other,
        }
    }

    fn on_begin(&mut self, result: Result<ObjectResult, ApiError>) {
        let answer = match result {
            Ok(ObjectResult::Begin(a)) => a,
            Ok(_) => {
                self.state = State::Done(Answer::error(&unreadable()));
                return;
            }
            Err(e) => {
                // The hold may or may not be recorded: a retry with the same key finds out.
                let mut e = e;
                e.retryable = true;
                if e.status >= 500 || e.status < 400 {
                    e.status = 503;
                }
                self.state = State::Done(Answer::error(&e));
                return;
            }
        };
        self.state = match answer {
            BeginReply::Replay { answer } => State::Done(Answer::stored(answer, true)),
            BeginReply::InFlight => State::Done(Answer::error(
                &ledger::LedgerError::IdempotencyInFlight.to_api(),
            )),
            BeginReply::Mismatch => State::Done(Answer::error(
                &ledger::LedgerError::IdempotencyMismatch.to_api(),
            )),
            BeginReply::NoRecord => State::Done(Answer::error(
                &self.prepare_error.clone().unwrap_or_else(unreadable),
            )),
            BeginReply::Refused { error } => State::Done(Answer::error(&error.to_api())),
            BeginReply::Finished { answer } => {
                self.notes.push(Note::Queued {
                    lane: self.first_lane.clone(),
                });
                State::Done(Answer::stored(answer, false))
            }
            BeginReply::FinishRefused { error } => {
                State::Done(Answer::error(&offline_refused(&error.to_api())))
            }
            BeginReply::Held { order, resumed } => self.on_held(*order, resumed),
        };
    }

    fn on_held(&mut self, order: Order, resumed: bool) -> State {
        self.resumed = resumed;
        self.recorded_lane = Some(order.lane.clone());
        if resumed {
            self.routing
                .push_str(&format!("; resumed on {}", order.lane));
            // Whatever happens now, that earlier attempt's outcome is unknown.
            self.unknown_on = Some(order.lane.clone());
            // An earlier attempt with this key may have charged on the order's lane.
            if order.state == OrderState::Lost {
                self.lapsed();
                return std::mem::replace(&mut self.state, State::Finished);
            }
            if !matches!(order.state, OrderState::Pending | OrderState::Abandoned) {
                return State::Done(pending(&self.key.order_id, &self.routing));
            }
            let planned = self.plan.as_ref().is_some_and(|p| {
                p.mode == Mode::Online && p.lanes_in_order.iter().any(|a| a.lane_name == order.lane)
            });
            if !planned {
                self.unknown_on = Some(order.lane.clone());
                return State::Offline;
            }
        }
        match self.plan.as_ref().map(|p| p.mode) {
            Some(Mode::Online) => State::Attempt { index: 0 },
            _ => State::Offline,
        }
    }

    /// The attempt sent with `answer_by_ms` has not answered by then: answer the buyer from
    /// a payment stored to complete it (its outcome is unknown until it answers), and keep
    /// it running: its result comes later through [`Step::Late`].
    pub fn handle_answer_due(&mut self, router: &mut Router, now_ms: i64) {
        let State::AwaitAttempt {
            permit,
            lane,
            started_ms,
            ..
        } = std::mem::replace(&mut self.state, State::Finished)
        else {
            return;
        };
        let waited = elapsed_ms(started_ms, now_ms);
        self.routing.push_str(&format!(
            "; {lane} not answered in {waited} ms, answering now"
        ));
        self.unknown_on = Some(lane.clone());
        self.late = Some(Late {
            detached: router.detach(permit, waited, now_ms),
            lane,
            started_ms,
            until_ms: started_ms.saturating_add(i64::from(self.sent_timeout_ms)),
            resent: false,
        });
        self.state = State::Offline;
    }

    /// The attempt still running after its buyer was answered has its result: it settles
    /// the stored payment now (approved or declined), or leaves it to the object's alarm
    /// (unknown, not charged), which sends it again with the same acquirer key.
    fn on_late(&mut self, router: &mut Router, sent: Sent, now_ms: i64) {
        let Some(late) = self.late.take() else {
            self.state = State::Done(pending(&self.key.order_id, &self.routing));
            return;
        };
        let result = outcome::classify(&sent);
        let rtt = elapsed_ms(late.started_ms, now_ms);
        router.on_late(
            late.detached,
            rtt,
            outcome::route_outcome(&sent, &result),
            now_ms,
        );
        self.routing
            .push_str(&format!("; then {} {}", late.lane, result.label()));
        // An unknown outcome (a 5xx, a lost connection): sent once more at once with the
        // same acquirer key on the same lane, which replays or completes it; what the
        // object's alarm would do later, while the buyer's page is still asking.
        let left = late.until_ms.saturating_sub(now_ms);
        if matches!(result, AttemptResult::Unknown { .. })
            && !late.resent
            && left >= i64::from(router.tuning().min_timeout_ms)
        {
            let call = router
                .lane_id(&late.lane)
                .ok()
                .and_then(|id| router.lane_config(id).cloned())
                .and_then(|lane| self.build_call(&lane).ok());
            if let Some(call) = call {
                self.routing.push_str(", sending again");
                let timeout_ms = u32::try_from(left).unwrap_or(u32::MAX);
                self.late = Some(Late {
                    started_ms: now_ms,
                    resent: true,
                    ..late
                });
                self.state = State::ResendLate(Box::new(Authorize {
                    lane: self
                        .late
                        .as_ref()
                        .map(|l| l.lane.clone())
                        .unwrap_or_default(),
                    call,
                    timeout_ms,
                    answer_by_ms: None,
                }));
                return;
            }
        }
        self.state = State::RecordLate(Box::new(Command::ForwardResult {
            auth_id: auth_id(&self.key.order_id),
            result: result.stored_result(),
        }));
    }

    /// Feeds an attempt's result back in.
    pub fn handle_attempt(&mut self, router: &mut Router, sent: Sent, now_ms: i64) {
        if matches!(self.state, State::AwaitLate) {
            return self.on_late(router, sent, now_ms);
        }
        let State::AwaitAttempt {
            index,
            permit,
            lane,
            started_ms,
        } = std::mem::replace(&mut self.state, State::Finished)
        else {
            return;
        };
        let result = outcome::classify(&sent);
        let rtt = elapsed_ms(started_ms, now_ms);
        router.on_complete(permit, rtt, outcome::route_outcome(&sent, &result), now_ms);
        let Some(p) = &self.prepared else {
            self.state = State::Done(Answer::error(&unreadable()));
            return;
        };
        match result {
            AttemptResult::Approved {
                payment_intent_id, ..
            } => {
                self.routing.push_str(&format!("; approved on {lane}"));
                self.notes.push(Note::Approved { lane: lane.clone() });
                let (receipt, body) = self.receipt_and_answer(
                    p,
                    ReceiptStatus::Approved,
                    &lane,
                    "approved",
                    "Payment approved.",
                );
                self.set_finish(
                    Some(Command::Confirm {
                        order_id: self.key.order_id.clone(),
                        charge_id: payment_intent_id,
                        lane: Some(lane),
                    }),
                    receipt,
                    Completion::Answer {
                        answer: answer(201, body),
                    },
                    Purpose::Settle,
                );
            }
            AttemptResult::Declined {
                reason,
                message,
                code: acquirer_code,
                decline_code,
            } => {
                self.routing.push_str(&format!("; declined on {lane}"));
                // The buyer hears the neutral reason; the merchant's records keep the
                // acquirer's precise code.
                let code = reason.as_str();
                let kept =
                    outcome::merchant_decline_code(reason, &acquirer_code, decline_code.as_deref());
                self.notes.push(Note::Declined {
                    lane,
                    reason: kept.clone(),
                });
                let body = serde_json::json!({
                    "status": "declined", "order_id": self.key.order_id, "routing": self.routing,
                    "decline": {"code": code, "message": message},
                    "error": {"code": code, "message": message, "retryable": false},
                    "message": message,
                });
                self.set_finish(
                    Some(Command::Release {
                        order_id: self.key.order_id.clone(),
                        reason: kept,
                    }),
                    None,
                    Completion::Answer {
                        answer: answer(402, body),
                    },
                    Purpose::Decline,
                );
            }
            r if r.allows_failover() && self.unknown_on.is_none() => {
                self.routing.push_str(&format!("; {lane} {}", r.label()));
                self.state = State::Attempt { index: index + 1 };
            }
            r => {
                // Never try another lane now: that could charge the card twice. A lost
                // connection is sent once more at once, same lane and key (the acquirer
                // replays or charges once); otherwise the attempt is completed later.
                self.routing.push_str(&format!("; {lane} {}", r.label()));
                self.unknown_on = Some(lane.clone());
                if sent == Err(Transport::Lost) && !self.resent {
                    self.resent = true;
                    self.routing.push_str(", sending again");
                    self.state = State::Attempt { index };
                    return;
                }
                self.routing
                    .push_str(&format!("; outcome unknown, completing on {lane}"));
                self.state = State::Offline;
            }
        }
    }

    fn set_finish(
        &mut self,
        command: Option<Command>,
        receipt: Option<Receipt>,
        complete: Completion,
        purpose: Purpose,
    ) {
        self.finish = Some((
            FinishRequest {
                key: self.key.key.clone(),
                command,
                receipt,
                complete,
            },
            purpose,
        ));
        self.finish_tries = 0;
        self.state = State::Finish;
    }

    /// Forgets the order and the key (nothing was sent anywhere), then answers `error`.
    fn undo(&mut self, error: ApiError) {
        if self.unknown_on.is_some() {
            // An attempt may have charged: never forget the order or the key. The buyer
            // hears `pending`; a retry or reconciliation settles it.
            self.routing
                .push_str(&format!("; not undone ({}): outcome unknown", error.code));
            self.state = State::Done(pending(&self.key.order_id, &self.routing));
            return;
        }
        let mut answer = Answer::error(&error);
        answer.routing = Some(self.routing.clone());
        self.fallback = Some(answer);
        let release_cvc = self
            .prepared
            .as_ref()
            .and_then(|p| p.cvc.as_ref())
            .map(|c| c.use_id.clone());
        self.set_finish(
            Some(Command::Forget {
                order_id: self.key.order_id.clone(),
            }),
            None,
            Completion::Abandon { release_cvc },
            Purpose::Undo,
        );
    }

    /// Whether a retry with the same key may have taken this checkout over.
    fn stale(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.started_ms) >= STALE_AFTER_MS
    }

    fn offline(&mut self, now_ms: i64) -> Option<Step> {
        let Some(p) = &self.prepared else {
            self.state = State::Done(Answer::error(&unreadable()));
            return None;
        };
        if self.unknown_on.is_none() && self.resumed {
            // An earlier attempt with this key may have charged on the order's lane (its
            // Worker died after sending): complete that attempt there with the same
            // acquirer key; a new payment beside it could charge the card twice.
            self.routing
                .push_str("; the earlier attempt's outcome is unknown");
            self.unknown_on = self.recorded_lane.clone();
        }
        if self.unknown_on.is_none() && self.stale(now_ms) {
            // Too old to store a new payment: a retry that took the key over may be paying
            // on the order's lane right now, and a stored payment (another acquirer key,
            // maybe another lane) would charge the card a second time. Nothing was sent by
            // this checkout; leave the order and the key to the retry.
            self.routing.push_str("; too late to store the payment");
            self.state = State::Done(pending(&self.key.order_id, &self.routing));
            return None;
        }
        if self.unknown_on.is_none() {
            if let Some(refusal) = offline_refusal(p) {
                self.undo(refusal);
                return None;
            }
        }
        if self.seal_key.is_none() {
            self.state = State::AwaitSeal;
            return Some(Step::SealKey);
        }
        match self.stored_payment() {
            Ok((finish, purpose)) => {
                self.finish = Some((finish, purpose));
                self.finish_tries = 0;
                self.state = State::Finish;
            }
            Err(e) => self.cannot_store(e),
        }
        None
    }

    /// The payment cannot be stored (no sealing key, sealing failed).
    fn cannot_store(&mut self, e: ApiError) {
        self.routing.push_str("; could not store the payment");
        if self.unknown_on.is_some() {
            // It may have been charged: keep the hold and the key; reconciliation settles
            // a charge of an order whose checkout never finished.
            self.state = State::Done(pending(&self.key.order_id, &self.routing));
        } else {
            let mut e = e;
            e.status = 503;
            e.retryable = true;
            self.undo(e);
        }
    }

    /// Feeds the event's store-and-forward key back in.
    pub fn handle_seal_key(&mut self, key: Result<Secret<[u8; 32]>, ApiError>) {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::SealBeforeBegin => match key {
                Ok(k) => {
                    self.seal_key = Some(k);
                    match self.stored_payment() {
                        Ok((finish, _)) => match self.begin(Some(finish)) {
                            Step::Object(call) => self.state = State::SendBegin(call),
                            Step::Done(a) => self.state = State::Done(a),
                            _ => self.state = State::Done(Answer::error(&unreadable())),
                        },
                        // Fall back to the two-call checkout.
                        Err(_) => self.state = State::BeginPlain,
                    }
                }
                Err(_) => self.state = State::BeginPlain,
            },
            State::AwaitSeal => match key {
                Ok(k) => {
                    self.seal_key = Some(k);
                    self.state = State::Offline;
                }
                Err(e) => self.cannot_store(e),
            },
            other => self.state = other,
        }
    }

    /// The stored payment's finish: `QueueAuthorization`, the queued receipt, the answer.
    fn stored_payment(&self) -> Result<(FinishRequest, Purpose), ApiError> {
        let (Some(p), Some(sf_key)) = (&self.prepared, &self.seal_key) else {
            return Err(unreadable());
        };
        let resolving = self.unknown_on.is_some();
        let order_id = &self.key.order_id;
        let auth_id = auth_id(order_id);
        // Completing an attempt repeats it exactly, so its CVC is sealed with the card
        // until the payment is final; a payment never sent is stored without the CVC.
        let cvc = p.cvc.as_ref().map(|c| &c.cvc).filter(|_| resolving);
        let sealed = vault::seal_for_forwarding(
            sf_key,
            &self.event.event_id,
            &auth_id,
            &p.card,
            cvc,
            self.nonce,
        )
        .map_err(|e| e.to_api())?;
        let mut routing = self.routing.clone();
        let (message, lane, idempotency_key, max_wait_ms) = match &self.unknown_on {
            Some(lane) => (
                "The card acquirer did not confirm this payment in time. It is stored securely and will be confirmed with the acquirer automatically; it is never charged twice. Your receipt shows it as queued until then.",
                lane.clone(),
                format!("{order_id}_online"),
                RESOLVE_WAIT_MS,
            ),
            None => {
                routing.push_str("; queued offline");
                (
                    "Accepted offline: the card acquirer is not answering, so this payment is stored securely and will be charged automatically when it is back. Your receipt shows it as queued until then.",
                    self.first_lane.clone(),
                    format!("{order_id}_queued"),
                    i64::try_from(p.bundle.bundle.offline.max_queue_age_secs)
                        .unwrap_or(86_400)
                        .saturating_mul(1000)
                        .clamp(1, ledger::MAX_OFFLINE_WAIT_MS),
                )
            }
        };
        let (state, message) = if self.late.is_some() {
            (
                "confirming",
                "Your bank is taking a moment to confirm this payment. It is accepted and never charged twice; this page shows the result in a few seconds.",
            )
        } else {
            ("queued", message)
        };
        let (receipt, mut body) =
            self.receipt_and_answer(p, ReceiptStatus::Queued, &lane, state, message);
        if self.late.is_some() {
            body["retry_after_s"] = CONFIRMING_RETRY_S.into();
        }
        body["routing"] = routing.into();
        let queue = Command::QueueAuthorization(QueueAuth {
            auth_id,
            order_id: order_id.clone(),
            amount: p.quote.total,
            currency: self.event.currency,
            card_fingerprint: vault::card_fingerprint(sf_key, &p.card),
            sealed_card: SealedCard(sealed),
            idempotency_key,
            max_wait_ms,
            lane: Some(lane),
            resolves_attempt: resolving,
            confirm_first: p.require_online,
            attempt_out: self.late.is_some(),
        });
        let purpose = if resolving {
            Purpose::Settle
        } else {
            Purpose::StoreOffline
        };
        Ok((
            FinishRequest {
                key: self.key.key.clone(),
                command: Some(queue),
                receipt,
                complete: Completion::Answer {
                    answer: answer(201, body),
                },
            },
            purpose,
        ))
    }

    fn on_finish(&mut self, result: Result<ObjectResult, ApiError>) {
        let Some(purpose) = self.finish.as_ref().map(|(_, p)| *p) else {
            self.state = State::Done(Answer::error(&unreadable()));
            return;
        };
        match result {
            Ok(ObjectResult::Finish(FinishReply::Stored { answer })) => {
                let accepted = answer.status == 201;
                if accepted && (purpose == Purpose::StoreOffline || self.unknown_on.is_some()) {
                    self.notes.push(Note::Queued {
                        lane: self
                            .unknown_on
                            .clone()
                            .unwrap_or_else(|| self.first_lane.clone()),
                    });
                }
                let answer = Answer::stored(answer, false);
                self.state = if self.late.is_some() {
                    State::AnswerEarly(answer)
                } else {
                    State::Done(answer)
                };
            }
            Ok(ObjectResult::Finish(FinishReply::Abandoned)) => {
                self.state = State::Done(
                    self.fallback
                        .clone()
                        .unwrap_or_else(|| Answer::error(&unreadable())),
                );
            }
            Ok(ObjectResult::Finish(FinishReply::Refused { error })) => {
                let e = error.to_api();
                match purpose {
                    // The budget (or another ledger rule) refused to store it: nothing
                    // was charged; undo and say why, keeping the ledger's own code.
                    Purpose::StoreOffline => self.undo(offline_refused(&e)),
                    Purpose::Settle => {
                        // The hold lapsed and the stock is gone, or reconciliation already
                        // counted the checkout lost and refunds its charge.
                        if e.code == "hold_lapsed" || e.code == "invalid_order_state" {
                            self.lapsed();
                        } else {
                            // Charged (or maybe): never release, never abandon. A retry
                            // with the same key finds the outcome.
                            self.routing
                                .push_str(&format!("; finish refused ({})", e.code));
                            self.state = State::Done(pending(&self.key.order_id, &self.routing));
                        }
                    }
                    // The decline could not be kept: another request with this key
                    // moved the order. A retry finds out what was kept.
                    Purpose::Decline => {
                        self.state = State::Done(pending(&self.key.order_id, &self.routing))
                    }
                    Purpose::Undo => {
                        self.state =
                            State::Done(self.fallback.clone().unwrap_or_else(|| Answer::error(&e)))
                    }
                }
            }
            Ok(_) | Err(_) => {
                self.finish_tries += 1;
                if self.finish_tries < FINISH_TRIES {
                    self.state = State::Finish;
                    return;
                }
                self.state = match purpose {
                    // A definitive answer is only given once it is kept: until then a retry
                    // with the same key could learn something else (it takes the key over,
                    // and may complete the attempt offline instead).
                    Purpose::Settle | Purpose::StoreOffline | Purpose::Decline => {
                        State::Done(pending(&self.key.order_id, &self.routing))
                    }
                    Purpose::Undo => State::Done(
                        self.fallback
                            .clone()
                            .unwrap_or_else(|| Answer::error(&unreadable())),
                    ),
                };
            }
        }
    }

    /// The acquirer charged after the hold had lapsed and the stock was sold meanwhile:
    /// keep that answer for the key; reconciliation refunds the charge.
    fn lapsed(&mut self) {
        let message = "Your reservation ran out before the payment was confirmed and the items are gone. The charge will be refunded automatically.";
        let body = serde_json::json!({
            "status": "declined", "order_id": self.key.order_id, "routing": self.routing,
            "error": {"code": "hold_lapsed", "message": message, "retryable": false},
            "message": message,
        });
        self.set_finish(
            None,
            None,
            Completion::Answer {
                answer: answer(409, body),
            },
            Purpose::Decline,
        );
    }

    /// The unsigned receipt (the object numbers and signs it) and the answer around it.
    fn receipt_and_answer(
        &self,
        p: &Prepared,
        status: ReceiptStatus,
        lane: &str,
        state: &str,
        message: &str,
    ) -> (Option<Receipt>, serde_json::Value) {
        let (lines, tax_breakdown, totals) = receipt::priced_from_quote(&p.quote);
        let last4 = p.card.last4();
        let receipt = receipt::Last4::parse(&last4).ok().map(|last4| Receipt {
            id: String::new(),
            event_id: self.event.event_id.clone(),
            merchant_id: self.event.merchant_id.clone(),
            order_id: self.key.order_id.clone(),
            lines,
            tax_breakdown,
            totals,
            card: CardSummary {
                brand: p.card.brand().as_str().to_string(),
                last4,
            },
            status,
            policy_revision: p.bundle.revision.to_string(),
            policy_hash: p.bundle.hash.clone(),
            pop_colo: self.colo.clone(),
            lane: lane.to_string(),
            created_ms: self.started_ms,
            updated_ms: self.started_ms,
            refunded_amount: None,
        });
        let body = serde_json::json!({
            "status": state, "order_id": self.key.order_id,
            "total": p.quote.total, "currency": self.event.currency,
            "brand": p.card.brand().as_str(), "last4": last4,
            "policy_revision": p.bundle.revision, "policy_hash": p.bundle.hash,
            "routing": self.routing, "message": message,
        });
        (receipt, body)
    }
}

/// Milliseconds from `since` to `now_ms` (0 if the clock went back).
fn elapsed_ms(since: i64, now_ms: i64) -> u32 {
    u32::try_from(now_ms.saturating_sub(since).max(0)).unwrap_or(u32::MAX)
}

/// The stored payment of an order (one per order).
fn auth_id(order_id: &str) -> String {
    format!("auth_{}", order_id.trim_start_matches("ord_"))
}

fn answer(status: u16, body: serde_json::Value) -> StoredAnswer {
    StoredAnswer {
        status,
        body,
        receipt_id: None,
        receipt: None,
    }
}

/// `202 pending`: the outcome is not known to the edge yet; the same request again (same
/// Idempotency-Key) finds it out. Never a charge for the buyer to repeat.
pub fn pending(order_id: &str, routing: &str) -> Answer {
    let message = "Your payment is being confirmed. Do not pay again: send the same request again in a few seconds to see the result.";
    Answer {
        status: 202,
        body: serde_json::json!({
            "status": "pending", "order_id": order_id, "routing": routing, "message": message,
            "retry_after_s": PENDING_RETRY_S,
        }),
        routing: Some(routing.to_string()),
        replayed: false,
        retry_after_s: Some(PENDING_RETRY_S),
        notes: Vec::new(),
        order_id: Some(order_id.to_string()),
    }
}

/// Why a payment may not be stored offline here, if it may not.
fn offline_refusal(p: &Prepared) -> Option<ApiError> {
    let limits = &p.bundle.bundle.offline;
    if !p.require_online && limits.per_transaction_cap.0 > 0 {
        return None;
    }
    let why = if p.require_online {
        "online payment required"
    } else {
        "this place's policy allows no offline payments"
    };
    Some(ApiError::new(402, "acquirer_unavailable", format!("The card acquirer is not answering right now ({why}); nothing was charged. Try again in a minute.")).retryable())
}

/// A ledger refusal to store a payment offline, as the buyer hears it: a retryable 402
/// (like Stripe's `try_again_later`) that keeps the ledger's own code.
fn offline_refused(e: &ApiError) -> ApiError {
    let mut err = ApiError::with_code(
        402,
        e.code.to_string(),
        format!(
            "The card acquirer is not answering and this payment cannot be stored now ({}); nothing was charged. Try again in a minute.",
            e.message
        ),
    )
    .retryable();
    err.message.truncate(400);
    err
}

fn unreadable() -> ApiError {
    ApiError::new(
        503,
        "temporarily_unavailable",
        "The event could not answer; try again.",
    )
    .retryable()
}

/// Shed load: 429 with `Retry-After`; nothing was charged.
fn overloaded() -> ApiError {
    ApiError::new(
        429,
        "overloaded",
        "The checkout is very busy right now; nothing was charged. Try again in a few seconds.",
    )
    .retryable()
}
