//! What the event's Durable Object does for a checkout, as pure functions over its
//! [`EventLedger`] and a small [`ObjectStore`] (CVC uses and signed receipts).
//!
//! `begin` and `finish` apply several ledger commands; the object persists the ledger
//! **once**, after the function returns, and only then performs the effects and answers.
//! When [`Done::discard`] is set, a later step failed after an earlier one changed the
//! ledger in memory: the object must drop its memory and reload instead of persisting, so
//! a finish is applied whole or not at all.

use super::protocol::{
    BeginReply, BeginRequest, Completion, FinishReply, FinishRequest, StoredAnswer, WireError,
};
use crate::error::ApiError;
use crate::ledger::{
    Command, Effect, EventLedger, IdempotencyBegin, IdempotencyPeek, OrderState, Reply,
};
use crate::receipt::{self, ReceiptKeys};

/// The object's own storage besides the ledger: single-use CVC uses and signed receipts.
pub trait ObjectStore {
    /// The idempotency key that spent this CVC use, if it was spent and has not expired.
    fn cvc_spender(&mut self, use_id: &str, now_ms: i64) -> Result<Option<String>, ApiError>;
    fn spend_cvc(&mut self, use_id: &str, key: &str, expires_at_ms: i64) -> Result<(), ApiError>;
    fn give_back_cvc(&mut self, use_id: &str) -> Result<(), ApiError>;
    /// A signed receipt's JSON.
    fn receipt(&mut self, receipt_id: &str) -> Result<Option<String>, ApiError>;
    fn store_receipt(&mut self, id: &str, order_id: &str, json: &str) -> Result<(), ApiError>;
}

/// A receipt signed and stored by this call (for the merchant's webhook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptNote {
    pub id: String,
    pub status: String,
    pub json: String,
}

/// The result of one begin or finish: the reply, the ledger's effects to perform after
/// persisting, receipts to announce, and whether to persist or discard.
#[derive(Debug)]
pub struct Done<T> {
    pub reply: T,
    pub effects: Vec<Effect>,
    pub receipts: Vec<ReceiptNote>,
    /// The ledger changed: persist it before answering.
    pub changed: bool,
    /// A step failed after the ledger changed in memory: drop memory and reload.
    pub discard: bool,
    /// Problems worth a log line (codes only, never card data).
    pub problems: Vec<&'static str>,
}

impl<T> Done<T> {
    fn new(reply: T) -> Done<T> {
        Done {
            reply,
            effects: Vec::new(),
            receipts: Vec::new(),
            changed: false,
            discard: false,
            problems: Vec::new(),
        }
    }

    fn absorb<U>(&mut self, other: Done<U>) -> U {
        self.effects.extend(other.effects);
        self.receipts.extend(other.receipts);
        self.changed |= other.changed;
        self.discard |= other.discard;
        self.problems.extend(other.problems);
        other.reply
    }
}

/// Everything the object side needs besides the request.
pub struct ObjectCtx<'a> {
    pub ledger: &'a mut EventLedger,
    pub store: &'a mut dyn ObjectStore,
    /// The receipt signing keys; `None` when they are not configured (receipts are then
    /// not signed, and the payment still stands).
    pub keys: Option<&'a ReceiptKeys>,
    pub now_ms: i64,
    pub entropy: [u8; 8],
}

impl ObjectCtx<'_> {
    fn apply<T>(&mut self, cmd: Command, done: &mut Done<T>) -> Result<Reply, ApiError> {
        let out = self.ledger.handle(cmd, self.now_ms, self.entropy);
        done.effects.extend(out.effects);
        done.changed |= out.changed;
        out.reply.map_err(ApiError::from)
    }
}

/// A checkout's first call (`ObjectRequest::Begin`).
pub fn begin(cx: &mut ObjectCtx<'_>, req: BeginRequest) -> Done<BeginReply> {
    let mut done = Done::new(BeginReply::NoRecord);
    done.reply = begin_inner(cx, req, &mut done);
    done
}

fn begin_inner(
    cx: &mut ObjectCtx<'_>,
    req: BeginRequest,
    done: &mut Done<BeginReply>,
) -> BeginReply {
    let refused = |e: ApiError| BeginReply::Refused {
        error: WireError::from(e),
    };
    let Some(fingerprint) = req.fingerprint else {
        return match cx.ledger.idempotency_peek(&req.key, cx.now_ms) {
            IdempotencyPeek::Completed {
                response,
                body_hash,
            } if super::request::same_cart(&body_hash, &req.cart) => replay(cx, &response, done),
            IdempotencyPeek::Completed { .. } => BeginReply::Mismatch,
            IdempotencyPeek::InFlight => BeginReply::InFlight,
            // An earlier checkout with this key stopped part way and may have charged: this
            // request cannot resume it (its card cannot be opened), and a fresh start would
            // be a second payment. Say "in progress" until the order is settled.
            IdempotencyPeek::Absent => match req
                .order_id
                .as_deref()
                .and_then(|id| cx.ledger.order(id))
                .map(|o| o.state)
            {
                Some(OrderState::Pending | OrderState::Abandoned) => BeginReply::InFlight,
                Some(OrderState::Lost) => BeginReply::Refused {
                    error: WireError::from(ApiError::new(
                        409,
                        "checkout_lost",
                        "An earlier payment with this Idempotency-Key was not completed and its charge is refunded; start a new payment.",
                    )),
                },
                _ => BeginReply::NoRecord,
            },
        };
    };
    let begun = cx.apply(
        Command::BeginIdempotent {
            key: req.key.clone(),
            body_hash: fingerprint,
        },
        done,
    );
    match begun {
        Ok(Reply::Idempotency {
            result: IdempotencyBegin::New,
        }) => {}
        Ok(Reply::Idempotency {
            result: IdempotencyBegin::Replay { response },
        }) => return replay(cx, &response, done),
        Ok(Reply::Idempotency {
            result: IdempotencyBegin::InFlight,
        }) => return BeginReply::InFlight,
        Ok(Reply::Idempotency {
            result: IdempotencyBegin::Mismatch,
        }) => return BeginReply::Mismatch,
        Ok(_) => return refused(unreadable()),
        Err(e) => return refused(e),
    }
    // A new request (or one taking over a dead one): spend the CVC, hold the stock. A
    // refusal here leaves no record for the key (nothing was held, nothing to replay).
    let forget = |cx: &mut ObjectCtx<'_>, done: &mut Done<BeginReply>, cvc: Option<&str>| {
        if let Some(use_id) = cvc {
            if cx.store.give_back_cvc(use_id).is_err() {
                done.problems.push("cvc_give_back_failed");
            }
        }
        let _ = cx.apply(
            Command::AbandonIdempotent {
                key: req.key.clone(),
            },
            done,
        );
    };
    let mut spent: Option<&str> = None;
    if let Some(u) = &req.cvc {
        match cx.store.cvc_spender(&u.use_id, cx.now_ms) {
            // Spent by this same key: an earlier attempt of this very request.
            Ok(Some(k)) if k == req.key => {}
            Ok(Some(_)) => {
                forget(cx, done, None);
                return refused(crate::vault::VaultError::CvcAlreadyUsed.to_api());
            }
            Ok(None) => match cx.store.spend_cvc(&u.use_id, &req.key, u.expires_at_ms) {
                Ok(()) => spent = Some(u.use_id.as_str()),
                Err(e) => {
                    forget(cx, done, None);
                    return refused(e);
                }
            },
            Err(e) => {
                forget(cx, done, None);
                return refused(e);
            }
        }
    }
    let Some(hold) = req.hold else {
        forget(cx, done, spent);
        return refused(unreadable());
    };
    let order_id = match &hold {
        Command::Hold { order_id, .. } => order_id.clone(),
        _ => String::new(),
    };
    // The order exists already: this request takes over one whose Worker died, which may
    // have charged on the order's lane. (An undone checkout forgot its order with its key.)
    let resumed = cx.ledger.order(&order_id).is_some();
    let order = match cx.apply(hold, done) {
        Ok(Reply::Order { order }) => order,
        Ok(_) => {
            forget(cx, done, spent);
            return refused(unreadable());
        }
        Err(e) => {
            forget(cx, done, spent);
            return refused(e);
        }
    };
    let Some(then) = req.then.filter(|_| !resumed) else {
        // A resumed order's lane may hold a charge from the request this one took over:
        // never store a new payment for it here; the checkout completes that attempt.
        return BeginReply::Held {
            order: Box::new(order),
            resumed,
        };
    };
    let mut inner = finish(cx, then);
    let reply = std::mem::replace(&mut inner.reply, FinishReply::Abandoned);
    done.absorb(inner);
    match reply {
        FinishReply::Stored { answer } => BeginReply::Finished { answer },
        FinishReply::Refused { error } => {
            // Refused (the offline budget): undo the hold, the key and the CVC.
            let _ = cx.apply(Command::Forget { order_id }, done);
            forget(cx, done, spent);
            BeginReply::FinishRefused { error }
        }
        FinishReply::Abandoned => BeginReply::FinishRefused {
            error: WireError::from(unreadable()),
        },
    }
}

/// A stored answer sent again: with its receipt as it is now, and a `pending` answer
/// brought up to date with its order.
fn replay(cx: &mut ObjectCtx<'_>, stored: &str, done: &mut Done<BeginReply>) -> BeginReply {
    match kept_answer(cx, stored, done) {
        Some(answer) => BeginReply::Replay { answer },
        None => BeginReply::Refused {
            error: WireError::from(unreadable()),
        },
    }
}

fn kept_answer<T>(
    cx: &mut ObjectCtx<'_>,
    stored: &str,
    done: &mut Done<T>,
) -> Option<StoredAnswer> {
    let Some(mut answer) = StoredAnswer::from_stored_json(stored).or_else(|| legacy(stored)) else {
        done.problems.push("stored_answer_unreadable");
        return None;
    };
    refresh_pending(cx.ledger, cx.keys, &mut answer);
    attach_receipt(cx, &mut answer, done);
    Some(answer)
}

/// Answers stored before the typed protocol: `{"status_code", "body"}`.
fn legacy(stored: &str) -> Option<StoredAnswer> {
    let v: serde_json::Value = serde_json::from_str(stored).ok()?;
    let status = u16::try_from(v.get("status_code")?.as_u64()?).ok()?;
    let mut body = v.get("body")?.clone();
    let receipt_id = body
        .get("receipt_id")
        .and_then(|r| r.as_str())
        .map(str::to_string);
    if let Some(o) = body.as_object_mut() {
        o.remove("receipt");
    }
    Some(StoredAnswer {
        status,
        body,
        receipt_id,
        receipt: None,
    })
}

/// A `pending` or `confirming` answer (the outcome was not known when it was given)
/// follows its order: once the order is paid it replays as approved, once declined as
/// declined.
pub fn refresh_pending(
    ledger: &EventLedger,
    keys: Option<&ReceiptKeys>,
    answer: &mut StoredAnswer,
) {
    if answer.status != 202 && !super::status::is_confirming(answer.status, &answer.body) {
        return;
    }
    let Some(order) = answer
        .body
        .get("order_id")
        .and_then(|o| o.as_str())
        .and_then(|id| ledger.order(id))
    else {
        return;
    };
    let Some((status, state, message)) = super::status::settled(order) else {
        return;
    };
    answer.status = status;
    answer.body["status"] = state.into();
    answer.body["message"] = message.into();
    if let Some(o) = answer.body.as_object_mut() {
        o.remove("retry_after_s");
    }
    if let Some(id) = super::status::link_receipt(&mut answer.body, order, keys) {
        answer.receipt_id = Some(id);
    }
}

fn attach_receipt<T>(cx: &mut ObjectCtx<'_>, answer: &mut StoredAnswer, done: &mut Done<T>) {
    let Some(id) = answer.receipt_id.clone() else {
        return;
    };
    match cx.store.receipt(&id) {
        Ok(Some(json)) => answer.receipt = serde_json::from_str(&json).ok(),
        Ok(None) => {}
        Err(_) => done.problems.push("receipt_unreadable"),
    }
}

/// A checkout's last call (`ObjectRequest::Finish`). When the key already has an answer (another request with the
/// same key finished first: a retry that took over, or the first attempt finishing late),
/// that answer stands: it is the reply, and this finish applies nothing.
pub fn finish(cx: &mut ObjectCtx<'_>, req: FinishRequest) -> Done<FinishReply> {
    let mut done = Done::new(FinishReply::Abandoned);
    if let IdempotencyPeek::Completed {
        response: stored, ..
    } = cx.ledger.idempotency_peek(&req.key, cx.now_ms)
    {
        if let Some(answer) = kept_answer(cx, &stored, &mut done) {
            done.reply = FinishReply::Stored { answer };
            return done;
        }
        done.reply = FinishReply::Refused {
            error: WireError::from(unreadable()),
        };
        return done;
    }
    let order_id = req.command.as_ref().and_then(|c| match c {
        Command::Confirm { order_id, .. } | Command::Release { order_id, .. } => {
            Some(order_id.clone())
        }
        Command::QueueAuthorization(q) => Some(q.order_id.clone()),
        _ => None,
    });
    let receipt = req.receipt;
    let mut hand_out = true;
    let mut complete = req.complete;
    if let Some(cmd) = req.command {
        match cx.apply(cmd, &mut done) {
            Err(e) => {
                done.reply = FinishReply::Refused {
                    error: WireError::from(e),
                };
                return done;
            }
            // Stored but not accepted (an unknown outcome past its bound, or a buyer who
            // asked for an online payment): the buyer hears `pending`, with no receipt yet.
            // Its receipt is kept (forwarding brings it up to date, and the status URL
            // and replays hand it out once the payment is settled), not handed out now.
            Ok(Reply::Auth { auth }) if !auth.accepted => {
                if let Completion::Answer { answer } = &mut complete {
                    not_accepted(answer);
                }
                hand_out = false;
            }
            Ok(_) => {}
        }
    }
    match complete {
        Completion::Abandon { release_cvc } => {
            if let Some(use_id) = release_cvc {
                if cx.store.give_back_cvc(&use_id).is_err() {
                    done.problems.push("cvc_give_back_failed");
                }
            }
            let _ = cx.apply(Command::AbandonIdempotent { key: req.key }, &mut done);
            done.reply = FinishReply::Abandoned;
            done
        }
        Completion::Answer { mut answer } => {
            if let Some(draft) = receipt {
                match sign_and_store(cx, draft, order_id.as_deref()) {
                    Ok(note) => {
                        if hand_out {
                            answer.body["receipt_id"] = note.id.as_str().into();
                            if let Some(u) = cx.keys.and_then(|k| receipt::url(k, &note.id).ok()) {
                                answer.body["receipt_url"] = u.into();
                            }
                            answer.receipt_id = Some(note.id.clone());
                            answer.receipt = serde_json::from_str(&note.json).ok();
                        }
                        done.receipts.push(note);
                    }
                    // The payment stands; the buyer gets an answer without a receipt
                    // rather than an error after being charged.
                    Err(_) => done.problems.push("receipt_not_stored"),
                }
            }
            let stored = match answer.to_stored_json() {
                Ok(s) => s,
                Err(e) => return failed(done, e),
            };
            if let Err(e) = cx.apply(
                Command::CompleteIdempotent {
                    key: req.key,
                    response: stored,
                },
                &mut done,
            ) {
                // Never "charged but no answer kept": undo the whole finish.
                return failed(done, e);
            }
            done.reply = FinishReply::Stored { answer };
            done
        }
    }
}

/// Turns a stored payment's answer into `202 pending`.
fn not_accepted(answer: &mut StoredAnswer) {
    answer.status = 202;
    answer.body["status"] = "pending".into();
    answer.body["message"] = "Your payment is being confirmed with the card acquirer. Do not pay again: send the same request again in a few seconds to see the result.".into();
    answer.body["retry_after_s"] = super::PENDING_RETRY_S.into();
}

fn failed(mut done: Done<FinishReply>, e: ApiError) -> Done<FinishReply> {
    done.discard = true;
    done.problems.push("answer_not_kept");
    let mut e = e;
    e.status = 503;
    e.retryable = true;
    done.reply = FinishReply::Refused {
        error: WireError::from(e),
    };
    done
}

/// Signs a checkout's receipt under its order's receipt number and stores it.
fn sign_and_store(
    cx: &mut ObjectCtx<'_>,
    mut draft: receipt::Receipt,
    order_id: Option<&str>,
) -> Result<ReceiptNote, ApiError> {
    let order = order_id
        .and_then(|id| cx.ledger.order(id))
        .ok_or_else(|| ApiError::not_found("order"))?;
    let number = order
        .receipt_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", draft.event_id, order.order_id));
    draft.id = format!("rcpt_{number}");
    let keys = cx.keys.ok_or_else(|| {
        ApiError::new(
            503,
            "receipt_keys_missing",
            "Receipt keys are not configured.",
        )
    })?;
    let signed = receipt::sign(draft, keys).map_err(|e| e.to_api())?;
    let json = signed.to_json().map_err(|e| e.to_api())?;
    cx.store
        .store_receipt(&signed.receipt.id, &signed.receipt.order_id, &json)?;
    Ok(ReceiptNote {
        id: signed.receipt.id.clone(),
        status: signed.receipt.status.as_str().to_string(),
        json,
    })
}

fn unreadable() -> ApiError {
    ApiError::new(
        503,
        "temporarily_unavailable",
        "The event could not process this request; try again.",
    )
    .retryable()
}

/// A stored receipt brought up to date with its order: `Some` (re-signed) when the order's
/// state changes what the receipt says (a stored payment charged, expired or declined
/// when forwarded, a late approval of an expired one, a refund not on the receipt yet),
/// `None` when nothing changes. Several changes at once (charged, then refunded) are
/// applied in order. The object calls this for each receipt of an order whose state
/// changed.
pub fn receipt_after(
    order: &crate::ledger::Order,
    signed: &receipt::SignedReceipt,
    now_ms: i64,
    keys: &ReceiptKeys,
) -> Option<receipt::SignedReceipt> {
    let mut current: Option<receipt::SignedReceipt> = None;
    for _ in 0..3 {
        let at = current.as_ref().unwrap_or(signed);
        let Some(change) = receipt_change(order, &at.receipt) else {
            break;
        };
        match receipt::update_status(at, change, now_ms, keys) {
            Ok(next) => current = Some(next),
            Err(_) => break,
        }
    }
    current
}

/// The next change a receipt needs to say what its order's state says.
fn receipt_change(
    order: &crate::ledger::Order,
    r: &receipt::Receipt,
) -> Option<receipt::StatusChange> {
    use receipt::{ReceiptStatus as R, StatusChange as C};
    let charged = matches!(
        order.state,
        OrderState::Forwarded | OrderState::Refunded | OrderState::PartiallyRefunded
    );
    match r.status {
        R::Queued | R::Expired if charged => Some(C::Forwarded),
        R::Queued if order.state == OrderState::Expired => Some(C::Expired),
        R::Queued if order.state == OrderState::Declined => Some(C::Declined),
        R::Approved | R::Forwarded | R::PartiallyRefunded => {
            let before = r.refunded_amount.unwrap_or_default();
            let delta = order.refunded.0 - before.0;
            (delta > 0).then_some(C::Refund {
                amount: crate::money::MinorUnits(delta),
            })
        }
        _ => None,
    }
}
