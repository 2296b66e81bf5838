//! The per-event Durable Object (SQLite-backed): the single writer of an event's ledger.
//!
//! It keeps the `crate::ledger::EventLedger` in memory, persists it to SQLite after every
//! command that changed it (before answering or acting), sets the alarm the ledger asks
//! for, and performs the ledger's effects: forwarding queued authorizations and refunds to
//! the acquirer (same idempotency key on every attempt) and re-signing receipts when a
//! queued payment is forwarded, declined or expires. SQLite calls are synchronous, so each
//! command is applied and persisted atomically with respect to other requests.
//!
//! It serves `crate::event_protocol` (`serve`): one `ObjectRequest` per call, answered
//! with one `ObjectAnswer` or the error as the ledger gave it; `edge::object_client` is its
//! only caller. The checkout's two calls (begin, finish) are `crate::checkout::object_side`
//! over the ledger, applied in memory and persisted once (`checkout_step`).

mod forward;
mod handover;
mod reconcile;
mod serve;
mod store;
mod webhooks;

use serve::answer;
use store::SqlStore;

use super::acquirer_io::{lane_secret, lanes, send, NoAnswer};
use super::http::env_string;
use crate::acquirer::{self, AuthorizeRequest};
use crate::checkout::object_side::{self, Done, ObjectCtx, ObjectStore};
use crate::error::ApiError;
use crate::event_protocol::ObjectRequest;
use crate::ledger::{
    answer_to_classify, forward_outcome, intent_to_read, lost_refund_id, refund_outcome,
    AcquirerCharge, AcquirerResult, Alert, Command, Delta, Effect, EventLedger, EventReport,
    ForwardAttempt, ForwardRequest, Listing, OrderState, ReconcileReason, ReconcileRequest,
    Reconciled, RefundAttempt, RefundOutcome, RefundRequest, RefundState, Reply, Transport,
};
use crate::receipt::{self, SignedReceipt};
use crate::vault::{self, KekSet};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use wasm_bindgen::{closure::Closure, JsCast, JsValue};
use worker::{durable_object, js_sys, Date, DurableObject, Env, Request, Response, Result, State};

#[durable_object]
pub struct EventObject {
    state: State,
    env: Env,
    /// The JavaScript `DurableObjectStorage`, for `transactionSync` (which workers-rs 0.8.7
    /// does not wrap).
    storage_js: Option<JsValue>,
    ledger: RefCell<Option<EventLedger>>,
    loaded: RefCell<bool>,
}

fn now() -> i64 {
    Date::now().as_millis() as i64
}

/// At most this many acquirer calls per run of effects (a guard against a loop of
/// follow-ups; the ledger already caps forwards per wake at 25). Forwards past it are fed
/// back as not sent, so they back off and the alarm stays armed.
const MAX_CALLS_PER_RUN: usize = 200;

/// What `send` saw, for the outcome rule. `fetch` rejecting does not say whether the
/// request left (a refused connection and a reset look the same), and a body that failed
/// to read came after the status: both are an unknown outcome, never "not sent".
fn transport(answer: &std::result::Result<(u16, String), NoAnswer>) -> Transport<'_> {
    match answer {
        Ok((status, body)) => Transport::Answered {
            status: *status,
            body,
        },
        Err(NoAnswer::Refused) => Transport::NotSent,
        Err(NoAnswer::Timeout) | Err(NoAnswer::Network) => Transport::NoAnswer,
    }
}

impl EventObject {
    /// Applies one command atomically: handle, persist if changed. Returns the reply and
    /// the effects still to perform.
    fn apply(
        &self,
        cmd: Command,
        now_ms: i64,
    ) -> (std::result::Result<Reply, ApiError>, Vec<Effect>) {
        let mut entropy = [0u8; 8];
        let _ = getrandom::getrandom(&mut entropy);
        let outcome = {
            let mut guard = self.ledger.borrow_mut();
            let Some(ledger) = guard.as_mut() else {
                return (Err(ApiError::not_found("event")), vec![]);
            };
            ledger.handle(cmd, now_ms, entropy)
        };
        if outcome.changed {
            if let Err(e) = self.persist() {
                // The transaction rolled back: memory is ahead of storage. Drop it and
                // read storage again now, so the rest of this request works on the state
                // as saved (not "event not found").
                *self.ledger.borrow_mut() = None;
                *self.loaded.borrow_mut() = false;
                let reloaded = self.load().map_err(|e| e.to_string()).err();
                let error = serde_json::json!({"error": e.to_string(), "reload_error": reloaded});
                super::http::log("error", "persist failed", None, None, error);
                return (
                    Err(ApiError::new(
                        503,
                        "temporarily_unavailable",
                        "The event could not be saved; try again.",
                    )
                    .retryable()),
                    vec![],
                );
            }
        }
        (outcome.reply.map_err(ApiError::from), outcome.effects)
    }

    /// Runs commands and every effect they cause, feeding acquirer answers back in.
    async fn run(
        &self,
        commands: Vec<Command>,
        now_ms: i64,
    ) -> Vec<std::result::Result<Reply, ApiError>> {
        let mut replies = Vec::new();
        let mut effects = Vec::new();
        for cmd in commands {
            let (reply, fx) = self.apply(cmd, now_ms);
            replies.push(reply);
            effects.extend(fx);
        }
        self.run_effects(effects).await;
        replies
    }

    /// Performs effects in order (forwards, refunds, receipt updates), feeding the acquirer's
    /// answers back in, then sets the alarm for whatever is still waiting
    /// (`EventLedger::next_deadline`) after every run with effects, so no cap on this loop can
    /// leave queued work without a wake-up. (A command that moves the deadline, or finds it
    /// overdue, always has a `SetAlarm` effect; one with no effects left the deadline alone.)
    async fn run_effects(&self, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let mut effects: VecDeque<Effect> = effects.into();
        // Acquirer calls made by this run. The ledger caps forwards per wake; this only stops
        // a loop of follow-ups. Effects that make no call never count.
        let mut calls = 0usize;
        // Lanes found down in this run: their other forwards wait for their backoff instead
        // of opening connection after connection. Other lanes go on.
        let mut down: BTreeSet<String> = BTreeSet::new();
        while let Some(effect) = effects.pop_front() {
            let follow_up = match effect {
                // The alarm is set once, below, from the deadline after everything ran.
                Effect::SetAlarm { .. } | Effect::PurgeSealed { .. } => None,
                Effect::Notify { order_id, state } => {
                    self.on_order_state(&order_id, state, now()).await;
                    None
                }
                Effect::Forward(req) if calls >= MAX_CALLS_PER_RUN => {
                    Some(Command::ForwardResult {
                        auth_id: req.auth_id,
                        result: AcquirerResult::NotCharged,
                    })
                }
                Effect::ForwardRefund(req) if calls >= MAX_CALLS_PER_RUN => {
                    Some(Command::RefundResult {
                        refund_id: req.refund_id,
                        result: RefundOutcome::Unavailable,
                    })
                }
                Effect::Forward(req) => {
                    let (cmd, sent, lane_down) = self.forward(req, &down).await;
                    calls += usize::from(sent);
                    down.extend(lane_down);
                    Some(cmd)
                }
                Effect::ForwardRefund(req) => {
                    let (cmd, sent, lane_down) = self.forward_refund(req, &down).await;
                    calls += usize::from(sent);
                    down.extend(lane_down);
                    Some(cmd)
                }
                Effect::Reconcile(req) => {
                    effects.extend(self.reconcile_effect(req).await);
                    None
                }
            };
            if let Some(cmd) = follow_up {
                let (_, fx) = self.apply(cmd, now());
                effects.extend(fx);
            }
        }
        let next = self
            .ledger
            .borrow()
            .as_ref()
            .and_then(|l| l.next_deadline());
        if let Some(at_ms) = next {
            self.schedule(at_ms).await;
        }
    }

    /// The object's half of a checkout (`crate::checkout::object_side`): applied in
    /// memory, persisted once, then its webhooks and effects. Uses the object's own clock.
    async fn checkout_step<T>(
        &self,
        run: impl FnOnce(&mut ObjectCtx<'_>) -> Done<T>,
    ) -> std::result::Result<T, ApiError> {
        let keys = crate::edge::http::receipt_keys(&self.env).ok();
        let sql = self.sql();
        let mut store = SqlStore { sql: &sql };
        let mut entropy = [0u8; 8];
        let _ = getrandom::getrandom(&mut entropy);
        let done = {
            let mut guard = self.ledger.borrow_mut();
            let Some(ledger) = guard.as_mut() else {
                return Err(ApiError::not_found("event"));
            };
            let mut cx = ObjectCtx {
                ledger,
                store: &mut store,
                keys: keys.as_ref(),
                now_ms: now(),
                entropy,
            };
            run(&mut cx)
        };
        let event_id = self.event_id();
        for p in &done.problems {
            super::http::log(
                "error",
                "checkout step",
                None,
                Some(&event_id),
                serde_json::json!({"problem": p}),
            );
        }
        let saved = if done.discard {
            Err(())
        } else if done.changed {
            self.persist().map_err(|_| ())
        } else {
            Ok(())
        };
        if saved.is_err() {
            // Memory is ahead of storage (or a step failed part way): forget it and reload.
            *self.ledger.borrow_mut() = None;
            *self.loaded.borrow_mut() = false;
            let _ = self.load();
            return Err(ApiError::new(
                503,
                "temporarily_unavailable",
                "The event could not be saved; try again.",
            )
            .retryable());
        }
        for r in &done.receipts {
            self.enqueue_webhook(&r.id, &r.status, &r.json).await;
        }
        self.run_effects(done.effects).await;
        Ok(done.reply)
    }

    /// One alarm serves the ledger and the webhook outbox: keep the earliest future instant.
    async fn schedule(&self, at_ms: i64) {
        let storage = self.state.storage();
        let now_ms = now();
        if let Ok(Some(existing)) = storage.get_alarm().await {
            if existing > now_ms && existing <= at_ms {
                return;
            }
        }
        let _ = storage.set_alarm((at_ms - now_ms).max(0)).await;
    }
}

impl DurableObject for EventObject {
    fn new(state: State, env: Env) -> Self {
        let raw = state._inner();
        let storage_js = raw.storage().ok().map(JsValue::from);
        EventObject {
            state: State::from(raw),
            env,
            storage_js,
            ledger: RefCell::new(None),
            loaded: RefCell::new(false),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let request = match self.read_request(req).await {
            Ok(r) => r,
            Err(e) => return answer(Err(e)),
        };
        if let ObjectRequest::WatchHandover { session_id } = &request {
            return match self.watch_handover(session_id) {
                Ok(r) => Ok(r),
                Err(e) => answer(Err(e)),
            };
        }
        answer(self.serve(request).await)
    }

    async fn websocket_message(
        &self,
        ws: worker::WebSocket,
        _message: worker::WebSocketIncomingMessage,
    ) -> Result<()> {
        // The till only listens; answer anything it sends with a pong so proxies keep it open.
        let _ = ws.send_with_str("{\"type\":\"pong\"}");
        Ok(())
    }

    async fn websocket_close(
        &self,
        _ws: worker::WebSocket,
        _code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        Ok(())
    }

    async fn websocket_error(&self, _ws: worker::WebSocket, _error: worker::Error) -> Result<()> {
        Ok(())
    }

    async fn alarm(&self) -> Result<Response> {
        self.load()?;
        if self.ledger.borrow().is_some() {
            self.run(vec![Command::Alarm], now()).await;
            self.flush_webhooks().await;
        }
        Response::ok("alarm handled")
    }
}
