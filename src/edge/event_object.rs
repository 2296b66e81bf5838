//! The per-event Durable Object (SQLite-backed): the single writer of an event's ledger.
//!
//! It keeps the `crate::ledger::EventLedger` in memory, persists it to SQLite after every
//! command that changed it (before answering or acting), sets the alarm the ledger asks
//! for, and performs the ledger's effects: forwarding queued authorizations and refunds to
//! the acquirer (same idempotency key on every attempt) and re-signing receipts when a
//! queued payment is forwarded, declined or expires. SQLite calls are synchronous, so each
//! command is applied and persisted atomically with respect to other requests.
//!
//! Internal protocol (the Worker calls `https://event/<op>` on the stub):
//! `POST /init` (EventConfig), `POST /cmd` ({now_ms, commands}), `GET /config`,
//! `POST /checkout/begin` and `POST /checkout/finish` (a checkout's two calls: idempotency +
//! CVC + hold; outcome + signed receipt + stored answer),
//! `GET /summary`, `GET /sf-key`, `PUT|GET /receipts/{id}`, `POST /reconcile`, `GET /report`
//! (the signed report of the last reconciliation, which also runs by itself from the alarm),
//! `GET /export?format=csv|ndjson&email=0|1`, `POST /telemetry` (a batch of business
//! events from a PoP), `GET /metrics` (the stored telemetry rows and the summary).

use super::acquirer_io::{lane_secret, lanes, send, NoAnswer};
use super::http::env_string;
use crate::acquirer::{self, AuthorizeRequest};
use crate::checkout::object_side::{self, Done, ObjectCtx, ObjectStore};
use crate::checkout::protocol::{BeginRequest, FinishRequest};
use crate::error::ApiError;
use crate::ledger::{
    forward_outcome, lost_refund_id, refund_outcome, AcquirerCharge, AcquirerResult, Alert,
    Command, Delta, Effect, EventConfig, EventLedger, EventReport, ForwardAttempt, ForwardRequest,
    Listing, OrderState, ReconcileReason, ReconcileRequest, Reconciled, RefundAttempt,
    RefundOutcome, RefundRequest, RefundState, Reply, Transport,
};
use crate::receipt::{self, ReceiptKeys, SignedReceipt, StatusChange};
use crate::vault::{self, KekSet};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use wasm_bindgen::{closure::Closure, JsCast, JsValue};
use worker::{durable_object, js_sys, Date, DurableObject, Env, Request, Response, Result, State};

/// The object's CVC uses and receipts in SQLite, for `crate::checkout::object_side`.
struct SqlStore<'a> {
    sql: &'a worker::SqlStorage,
}

#[derive(Deserialize)]
struct KeyRow {
    idem_key: String,
}

#[derive(Deserialize)]
struct JsonRow {
    json: String,
}

impl ObjectStore for SqlStore<'_> {
    fn cvc_spender(
        &mut self,
        use_id: &str,
        now_ms: i64,
    ) -> std::result::Result<Option<String>, ApiError> {
        let sql = self.sql;
        sql.exec(
            "DELETE FROM cvc_spent WHERE expires_ms < ?",
            Some(vec![(now_ms as f64).into()]),
        )
        .map_err(super::http::internal)?;
        let rows: Vec<KeyRow> = sql
            .exec(
                "SELECT idem_key FROM cvc_spent WHERE use_id = ?",
                Some(vec![use_id.into()]),
            )
            .and_then(|c| c.to_array())
            .map_err(super::http::internal)?;
        if let Some(r) = rows.into_iter().next() {
            return Ok(Some(r.idem_key));
        }
        // Spent before the checkout machine kept the spender (the older table).
        #[derive(Deserialize)]
        struct N {
            n: i64,
        }
        let old: Vec<N> = sql
            .exec(
                "SELECT COUNT(*) AS n FROM cvc_uses WHERE use_id = ? AND expires_ms >= ?",
                Some(vec![use_id.into(), (now_ms as f64).into()]),
            )
            .and_then(|c| c.to_array())
            .map_err(super::http::internal)?;
        Ok((old.first().map(|r| r.n).unwrap_or(0) > 0).then(String::new))
    }

    fn spend_cvc(
        &mut self,
        use_id: &str,
        key: &str,
        expires_at_ms: i64,
    ) -> std::result::Result<(), ApiError> {
        self.sql
            .exec(
                "INSERT OR REPLACE INTO cvc_spent (use_id, idem_key, expires_ms) VALUES (?, ?, ?)",
                Some(vec![
                    use_id.into(),
                    key.into(),
                    (expires_at_ms as f64).into(),
                ]),
            )
            .map_err(super::http::internal)?;
        Ok(())
    }

    fn give_back_cvc(&mut self, use_id: &str) -> std::result::Result<(), ApiError> {
        self.sql
            .exec(
                "DELETE FROM cvc_spent WHERE use_id = ?",
                Some(vec![use_id.into()]),
            )
            .map_err(super::http::internal)?;
        Ok(())
    }

    fn receipt(&mut self, receipt_id: &str) -> std::result::Result<Option<String>, ApiError> {
        let rows: Vec<JsonRow> = self
            .sql
            .exec(
                "SELECT json FROM receipts WHERE id = ?",
                Some(vec![receipt_id.into()]),
            )
            .and_then(|c| c.to_array())
            .map_err(super::http::internal)?;
        Ok(rows.into_iter().next().map(|r| r.json))
    }

    fn store_receipt(
        &mut self,
        id: &str,
        order_id: &str,
        json: &str,
    ) -> std::result::Result<(), ApiError> {
        self.sql
            .exec(
                "INSERT OR REPLACE INTO receipts (id, order_id, json) VALUES (?, ?, ?)",
                Some(vec![id.into(), order_id.into(), json.into()]),
            )
            .map_err(super::http::internal)?;
        Ok(())
    }
}

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

#[derive(Deserialize)]
struct CmdBody {
    now_ms: i64,
    commands: Vec<Command>,
}

/// One command's result on the wire: `{"ok": reply}` or `{"error": .., "status": ..}`.
fn result_json(r: std::result::Result<Reply, ApiError>) -> serde_json::Value {
    match r {
        Ok(reply) => serde_json::json!({"ok": reply}),
        Err(e) => serde_json::json!({"error": e, "status": e.status}),
    }
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

fn reply_json(status: u16, v: &serde_json::Value) -> Result<Response> {
    Ok(Response::from_json(v)?.with_status(status))
}

fn api_error(e: &ApiError) -> Result<Response> {
    reply_json(e.status, &e.body())
}

impl EventObject {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    fn ensure_schema(&self) -> Result<()> {
        let sql = self.sql();
        // Older layout (one JSON document in chunks), read once and moved to the rows below.
        sql.exec("CREATE TABLE IF NOT EXISTS ledger_state (chunk INTEGER PRIMARY KEY, data TEXT NOT NULL)", None)?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS ledger_head (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
            None,
        )?;
        sql.exec("CREATE TABLE IF NOT EXISTS ledger_rows (kind TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, id))", None)?;
        sql.exec("CREATE TABLE IF NOT EXISTS receipts (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, json TEXT NOT NULL)", None)?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
            None,
        )?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS cvc_uses (use_id TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL)",
            None,
        )?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS cvc_spent (use_id TEXT PRIMARY KEY, idem_key TEXT NOT NULL, expires_ms INTEGER NOT NULL)",
            None,
        )?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS handover (id TEXT PRIMARY KEY, json TEXT NOT NULL)",
            None,
        )?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, json TEXT NOT NULL, attempts INTEGER NOT NULL, next_ms INTEGER NOT NULL)",
            None,
        )?;
        super::telemetry::ensure_table(&sql)?;
        Ok(())
    }

    /// Loads the ledger from SQLite once per object start: the head row, the waiting room
    /// and one row per record (see `crate::ledger::Delta`). A ledger saved by the older
    /// single-document layout (`ledger_state`) is moved to rows on the way.
    fn load(&self) -> Result<()> {
        if *self.loaded.borrow() {
            return Ok(());
        }
        self.ensure_schema()?;
        #[derive(Deserialize)]
        struct Kv {
            k: String,
            v: String,
        }
        #[derive(Deserialize)]
        struct Row {
            kind: String,
            id: String,
            data: String,
        }
        let sql = self.sql();
        let parts: Vec<Kv> = sql.exec("SELECT k, v FROM ledger_head", None)?.to_array()?;
        let part = |name: &str| parts.iter().find(|p| p.k == name).map(|p| p.v.as_str());
        let unreadable = || worker::Error::RustError("ledger state unreadable".into());
        if let Some(head) = part("head") {
            let rows: Vec<Row> = sql
                .exec("SELECT kind, id, data FROM ledger_rows", None)?
                .to_array()?;
            let ledger = EventLedger::from_rows(
                head,
                part("queue"),
                rows.iter()
                    .map(|r| (r.kind.as_str(), r.id.as_str(), r.data.as_str())),
            )
            .map_err(|_| unreadable())?;
            *self.ledger.borrow_mut() = Some(ledger);
        } else {
            #[derive(Deserialize)]
            struct Chunk {
                data: String,
            }
            let chunks: Vec<String> = sql
                .exec("SELECT data FROM ledger_state ORDER BY chunk", None)?
                .to_array::<Chunk>()?
                .into_iter()
                .map(|c| c.data)
                .collect();
            if !chunks.is_empty() {
                let mut ledger =
                    EventLedger::from_json_chunks(&chunks).map_err(|_| unreadable())?;
                let delta = ledger.full_delta().map_err(|_| unreadable())?;
                self.write_delta(delta)?;
                sql.exec("DELETE FROM ledger_state", None)?;
                *self.ledger.borrow_mut() = Some(ledger);
            }
        }
        *self.loaded.borrow_mut() = true;
        Ok(())
    }

    /// Writes what changed since the last save, in one SQLite transaction.
    fn persist(&self) -> Result<()> {
        let delta = match self.ledger.borrow_mut().as_mut() {
            Some(l) => l
                .take_delta()
                .map_err(|_| worker::Error::RustError("encode".into()))?,
            None => return Ok(()),
        };
        self.write_delta(delta)
    }

    /// Writes a delta (head, waiting room, rows) inside the storage's `transactionSync`: all
    /// of it or, when any statement fails, none of it. A head written without its order row
    /// would hold stock for ever.
    fn write_delta(&self, delta: Delta) -> Result<()> {
        let fault = self.injected_fault("persist_order_row");
        let sql = self.sql();
        let write = move || -> Result<()> {
            sql.exec(
                "INSERT OR REPLACE INTO ledger_head (k, v) VALUES ('head', ?)",
                Some(vec![delta.head.as_str().into()]),
            )?;
            if let Some(q) = &delta.queue {
                sql.exec(
                    "INSERT OR REPLACE INTO ledger_head (k, v) VALUES ('queue', ?)",
                    Some(vec![q.as_str().into()]),
                )?;
            }
            for r in &delta.rows {
                if fault && r.kind == "order" {
                    return Err(worker::Error::RustError(
                        "injected fault: order row not written".into(),
                    ));
                }
                match &r.data {
                    Some(data) => sql.exec(
                        "INSERT OR REPLACE INTO ledger_rows (kind, id, data) VALUES (?, ?, ?)",
                        Some(vec![
                            r.kind.into(),
                            r.id.as_str().into(),
                            data.as_str().into(),
                        ]),
                    )?,
                    None => sql.exec(
                        "DELETE FROM ledger_rows WHERE kind = ? AND id = ?",
                        Some(vec![r.kind.into(), r.id.as_str().into()]),
                    )?,
                };
            }
            Ok(())
        };
        self.transaction_sync(write)
    }

    /// Runs `f` inside `ctx.storage.transactionSync`: its SQL statements commit together, or
    /// roll back together when it fails.
    fn transaction_sync(&self, f: impl FnOnce() -> Result<()> + 'static) -> Result<()> {
        let missing = || worker::Error::RustError("storage.transactionSync unavailable".into());
        let storage = self.storage_js.as_ref().ok_or_else(missing)?;
        let func = js_sys::Reflect::get(storage, &JsValue::from_str("transactionSync"))
            .map_err(worker::Error::from)?
            .dyn_into::<js_sys::Function>()
            .map_err(|_| missing())?;
        let body = Closure::once(move || -> std::result::Result<JsValue, JsValue> {
            // An error thrown out of the callback is what makes SQLite roll back.
            f().map(|()| JsValue::UNDEFINED)
                .map_err(|e| JsValue::from(js_sys::Error::new(&e.to_string())))
        });
        func.call1(storage, body.as_ref()).map(|_| ()).map_err(|e| {
            let message = e
                .dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
                .unwrap_or_else(|| "transaction failed".into());
            worker::Error::RustError(message)
        })
    }

    /// Test-only fault injection, for local runs only (`POPTILL_ENV` = `local`): an event
    /// whose title contains `[fault:<name>]` has that fault. `persist_order_row` fails every
    /// write of an order row after the head was written (the e2e test of the ledger's
    /// transaction). Never on in staging or production.
    fn injected_fault(&self, name: &str) -> bool {
        if env_string(&self.env, "POPTILL_ENV").as_deref() != Some("local") {
            return false;
        }
        let marker = format!("[fault:{name}]");
        self.ledger
            .try_borrow()
            .ok()
            .and_then(|g| g.as_ref().map(|l| l.config().title.contains(&marker)))
            .unwrap_or(false)
    }

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
        let keys =
            ReceiptKeys::parse(&env_string(&self.env, "RECEIPT_KEY").unwrap_or_default()).ok();
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

    fn store_receipt(
        &self,
        signed: &SignedReceipt,
        json: &str,
    ) -> std::result::Result<(), ApiError> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO receipts (id, order_id, json) VALUES (?, ?, ?)",
                Some(vec![
                    signed.receipt.id.as_str().into(),
                    signed.receipt.order_id.as_str().into(),
                    json.into(),
                ]),
            )
            .map_err(super::http::internal)?;
        Ok(())
    }

    fn queue_depth(&self) -> u32 {
        self.ledger
            .borrow()
            .as_ref()
            .map(|l| l.queue_depth())
            .unwrap_or(0)
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

    fn meta(&self, key: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct V {
            v: String,
        }
        self.sql()
            .exec("SELECT v FROM meta WHERE k = ?", Some(vec![key.into()]))
            .and_then(|c| c.to_array::<V>())
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .map(|r| r.v)
    }

    /// Queues a receipt (new or re-signed) for the merchant's webhook, if one is set. The
    /// delivery happens from the alarm, in batches, off the request's path.
    async fn enqueue_webhook(&self, receipt_id: &str, status: &str, json: &str) {
        if self.meta("webhook_url").is_none() {
            return;
        }
        let id = format!("{receipt_id}:{status}");
        let due = now() + crate::webhook::BATCH_WINDOW_MS;
        let _ = self.sql().exec(
            "INSERT OR REPLACE INTO outbox (id, json, attempts, next_ms) VALUES (?, ?, 0, ?)",
            Some(vec![id.as_str().into(), json.into(), (due as f64).into()]),
        );
        self.schedule(due).await;
    }

    /// Delivers due receipts to the merchant's webhook in batches; failures back off.
    async fn flush_webhooks(&self) {
        let (Some(url), Some(secret)) = (self.meta("webhook_url"), self.meta("webhook_secret"))
        else {
            return;
        };
        #[derive(Deserialize)]
        struct Row {
            id: String,
            json: String,
            attempts: i64,
        }
        let now_ms = now();
        let rows: Vec<Row> = match self
            .sql()
            .exec(
                "SELECT id, json, attempts FROM outbox WHERE next_ms <= ? ORDER BY next_ms LIMIT ?",
                // Everything due within the next batching window rides along in this batch.
                Some(vec![
                    ((now_ms + crate::webhook::BATCH_WINDOW_MS) as f64).into(),
                    (crate::webhook::MAX_BATCH as f64).into(),
                ]),
            )
            .and_then(|c| c.to_array())
        {
            Ok(r) => r,
            Err(_) => return,
        };
        if !rows.is_empty() {
            let receipts: Vec<String> = rows.iter().map(|r| r.json.clone()).collect();
            let body = crate::webhook::batch_body(&receipts);
            let call = crate::acquirer::HttpCall {
                method: crate::acquirer::HttpMethod::Post,
                url: url.clone(),
                headers: vec![
                    ("Content-Type".into(), "application/json".into()),
                    (
                        "Poptill-Signature".into(),
                        crate::webhook::signature_header(secret.as_bytes(), now_ms, &body),
                    ),
                ],
                body: crate::secret::Secret::new(body),
            };
            let delivered =
                matches!(send(&call, 5_000).await, Ok((status, _)) if (200..300).contains(&status));
            for r in &rows {
                if delivered {
                    let _ = self.sql().exec(
                        "DELETE FROM outbox WHERE id = ?",
                        Some(vec![r.id.as_str().into()]),
                    );
                } else {
                    let attempts = u32::try_from(r.attempts).unwrap_or(0);
                    let next = now_ms + crate::webhook::retry_delay_ms(attempts);
                    let _ = self.sql().exec(
                        "UPDATE outbox SET attempts = attempts + 1, next_ms = ? WHERE id = ?",
                        Some(vec![(next as f64).into(), r.id.as_str().into()]),
                    );
                }
            }
            let event_id = self.event_id();
            let fields = serde_json::json!({"receipts": rows.len(), "delivered": delivered});
            super::http::log("info", "webhook delivery", None, Some(&event_id), fields);
            for _ in rows.iter().filter(|_| delivered) {
                let sent =
                    crate::telemetry::Event::new(crate::telemetry::Kind::ReceiptSent, now_ms);
                super::telemetry::store_one(&self.sql(), &event_id, sent);
            }
        }
        #[derive(Deserialize)]
        struct Next {
            next_ms: Option<f64>,
        }
        let next: Option<i64> = self
            .sql()
            .exec("SELECT MIN(next_ms) AS next_ms FROM outbox", None)
            .and_then(|c| c.to_array::<Next>())
            .ok()
            .and_then(|r| r.into_iter().next())
            .and_then(|n| n.next_ms)
            .map(|f| f as i64);
        if let Some(at) = next {
            self.schedule(at).await;
        }
    }

    fn keks(&self) -> std::result::Result<KekSet, ApiError> {
        super::vault::keks(&self.env)
    }

    fn event_id(&self) -> String {
        self.ledger
            .borrow()
            .as_ref()
            .map(|l| l.config().event_id.clone())
            .unwrap_or_default()
    }

    /// The event's store-and-forward key, wrapped by the KEK; made on first use.
    fn sf_key_wrapped(&self) -> std::result::Result<String, ApiError> {
        #[derive(Deserialize)]
        struct V {
            v: String,
        }
        let rows: Vec<V> = self
            .sql()
            .exec("SELECT v FROM meta WHERE k = 'sf_key'", None)
            .and_then(|c| c.to_array())
            .map_err(super::http::internal)?;
        if let Some(row) = rows.into_iter().next() {
            // After a master-key rotation, re-wrap under the current KEK on first use, so the
            // previous KEK can be retired without losing queued payments.
            let keks = self.keks()?;
            let current_prefix = format!("{}.", keks.current.id);
            if row.v.starts_with(&current_prefix) {
                return Ok(row.v);
            }
            let key =
                vault::unwrap_sf_key(&keks, &self.event_id(), &row.v).map_err(|e| e.to_api())?;
            let rewrapped = vault::wrap_sf_key(
                &keks,
                &self.event_id(),
                key.expose(),
                super::http::random::<12>()?,
            )
            .map_err(|e| e.to_api())?;
            self.sql()
                .exec(
                    "UPDATE meta SET v = ? WHERE k = 'sf_key'",
                    Some(vec![rewrapped.as_str().into()]),
                )
                .map_err(super::http::internal)?;
            return Ok(rewrapped);
        }
        let key = super::http::random::<32>()?;
        let wrapped = vault::wrap_sf_key(
            &self.keks()?,
            &self.event_id(),
            &key,
            super::http::random::<12>()?,
        )
        .map_err(|e| e.to_api())?;
        self.sql()
            .exec(
                "INSERT OR IGNORE INTO meta (k, v) VALUES ('sf_key', ?)",
                Some(vec![wrapped.as_str().into()]),
            )
            .map_err(super::http::internal)?;
        Ok(wrapped)
    }

    /// The order's own lane, never another: another lane is another acquirer account, where
    /// the payment's idempotency key means nothing (a resolving payment would be charged
    /// twice, a refund would fail). `None` when `LANES` no longer names it.
    fn order_lane(&self, order_id: &str) -> Option<crate::routing::LaneConfig> {
        let name = self
            .ledger
            .borrow()
            .as_ref()
            .and_then(|l| l.order(order_id).map(|o| o.lane.clone()))?;
        lanes(&self.env).ok()?.into_iter().find(|l| l.name == name)
    }

    /// Logs what the operator must fix (a lane gone, a KEK missing, a lane URL or key that
    /// the acquirer refuses): the payment or refund waits meanwhile.
    fn alert(&self, what: &str, id: &str, lane: Option<&str>, alert: &Alert) {
        let fields = serde_json::json!({
            "id": id, "lane": lane, "alert": alert.code, "detail": alert.detail,
        });
        super::http::log("error", what, None, Some(&self.event_id()), fields);
    }

    /// Opens a stored payment's sealed card with the event's store-and-forward key.
    fn open_sealed(
        &self,
        req: &ForwardRequest,
        event_id: &str,
    ) -> std::result::Result<(crate::card::Card, Option<crate::secret::Secret<String>>), ApiError>
    {
        let wrapped = self.sf_key_wrapped()?;
        let key =
            vault::unwrap_sf_key(&self.keks()?, event_id, &wrapped).map_err(|e| e.to_api())?;
        vault::open_for_forwarding(&key, event_id, &req.auth_id, &req.sealed_card.0)
            .map_err(|e| e.to_api())
    }

    /// Sends one stored authorization to its order's lane and turns what happened into a
    /// `ForwardResult` (`crate::ledger::forward_outcome`). Also says whether a request was
    /// sent and which lane is down, if any. A lane already down in this run is not called.
    async fn forward(
        &self,
        req: ForwardRequest,
        down: &BTreeSet<String>,
    ) -> (Command, bool, Option<String>) {
        let auth_id = req.auth_id.clone();
        let event_id = self.event_id();
        let lane = self.order_lane(&req.order_id);
        let mut sent = false;
        let verdict = match &lane {
            None => forward_outcome(ForwardAttempt::LaneUnknown),
            Some(l) if down.contains(&l.name) => {
                forward_outcome(ForwardAttempt::Sent(Transport::NotSent))
            }
            Some(l) => match self.open_sealed(&req, &event_id) {
                Err(_) => forward_outcome(ForwardAttempt::CardUnreadable),
                Ok((card, cvc)) => {
                    let call = acquirer::build_authorize(
                        &l.base_url,
                        &lane_secret(&self.env, l),
                        &AuthorizeRequest {
                            amount: req.amount,
                            currency: req.currency,
                            card_number: card.number().clone(),
                            exp_month: card.exp_month,
                            exp_year: card.exp_year,
                            // Present only when this completes an online attempt of unknown
                            // outcome: the same parameters make the acquirer replay, not
                            // charge again.
                            cvc,
                            idempotency_key: req.idempotency_key.clone(),
                            order_id: req.order_id.clone(),
                            event_id: event_id.clone(),
                            capture: true,
                        },
                    );
                    drop(card);
                    match call {
                        Err(_) => forward_outcome(ForwardAttempt::CallInvalid),
                        Ok(call) => {
                            sent = true;
                            let mut answer = send(&call, 8_000).await;
                            // A replay keeps answering `processing`: read the intent itself.
                            let processing = match &answer {
                                Ok((status, body)) => acquirer::processing_intent(*status, body),
                                Err(_) => None,
                            };
                            if let Some(id) = processing {
                                if let Ok(get) = acquirer::build_retrieve_intent(
                                    &l.base_url,
                                    &lane_secret(&self.env, l),
                                    &id,
                                ) {
                                    if let Ok(now) = send(&get, 8_000).await {
                                        answer = Ok(now);
                                    }
                                }
                            }
                            forward_outcome(ForwardAttempt::Sent(transport(&answer)))
                        }
                    }
                }
            },
        };
        let lane_name = lane.as_ref().map(|l| l.name.as_str());
        if let Some(a) = &verdict.alert {
            self.alert("forward waits for the operator", &auth_id, lane_name, a);
        }
        let outcome = match &verdict.result {
            AcquirerResult::Approved { .. } => "approved",
            AcquirerResult::Declined { .. } => "declined",
            AcquirerResult::Unavailable => "unknown",
            AcquirerResult::NotCharged => "not_charged",
        };
        let fields = serde_json::json!({"auth_id": auth_id, "lane": lane_name, "attempt": req.attempt, "result": outcome, "sent": sent});
        super::http::log("info", "forward", None, Some(&event_id), fields);
        if let (AcquirerResult::Declined { reason }, Some(l)) = (&verdict.result, &lane) {
            let e = crate::telemetry::Event::new(crate::telemetry::Kind::Expired, now());
            let e = e
                .lane(&l.name)
                .reason(&format!("forward_declined_{reason}"));
            super::telemetry::store_one(&self.sql(), &event_id, e);
        }
        let lane_down = lane.filter(|_| verdict.lane_down).map(|l| l.name);
        let cmd = Command::ForwardResult {
            auth_id,
            result: verdict.result,
        };
        (cmd, sent, lane_down)
    }

    /// Sends one refund to its order's lane (never another) and turns what happened into a
    /// `RefundResult` (`crate::ledger::refund_outcome`).
    async fn forward_refund(
        &self,
        req: RefundRequest,
        down: &BTreeSet<String>,
    ) -> (Command, bool, Option<String>) {
        let refund_id = req.refund_id.clone();
        let lane = self.order_lane(&req.order_id);
        let mut sent = false;
        let verdict = match &lane {
            None => refund_outcome(RefundAttempt::LaneUnknown),
            Some(l) if down.contains(&l.name) => {
                refund_outcome(RefundAttempt::Sent(Transport::NotSent))
            }
            Some(l) => match acquirer::build_refund(
                &l.base_url,
                &lane_secret(&self.env, l),
                &req.charge_id,
                Some(req.amount),
                &req.idempotency_key,
            ) {
                Err(_) => refund_outcome(RefundAttempt::CallInvalid),
                Ok(call) => {
                    sent = true;
                    let answer = send(&call, 8_000).await;
                    refund_outcome(RefundAttempt::Sent(transport(&answer)))
                }
            },
        };
        let lane_name = lane.as_ref().map(|l| l.name.as_str());
        if let Some(a) = &verdict.alert {
            self.alert("refund waits for the operator", &refund_id, lane_name, a);
        }
        if let (RefundOutcome::Succeeded { .. }, Some(l)) = (&verdict.result, &lane) {
            let e = crate::telemetry::Event::new(crate::telemetry::Kind::Refund, now());
            let e = e.lane(&l.name).amount(req.amount.0);
            super::telemetry::store_one(&self.sql(), &self.event_id(), e);
        }
        let lane_down = lane.filter(|_| verdict.lane_down).map(|l| l.name);
        let cmd = Command::RefundResult {
            refund_id,
            result: verdict.result,
        };
        (cmd, sent, lane_down)
    }

    /// Keeps the buyer's receipt true when a queued payment reaches its final state.
    async fn on_order_state(&self, order_id: &str, state: OrderState, now_ms: i64) {
        self.record_final_state(order_id, state, now_ms);
        let refunded_total = self
            .ledger
            .borrow()
            .as_ref()
            .and_then(|l| l.order(order_id).map(|o| o.refunded));
        let change = match state {
            OrderState::Forwarded => Some(StatusChange::Forwarded),
            OrderState::Expired => Some(StatusChange::Expired),
            OrderState::Declined => Some(StatusChange::Declined),
            // The refund amount is the difference between the ledger and the receipt.
            OrderState::Refunded | OrderState::PartiallyRefunded => None,
            _ => return,
        };
        #[derive(Deserialize)]
        struct Row {
            id: String,
            json: String,
        }
        let rows: Vec<Row> = match self
            .sql()
            .exec(
                "SELECT id, json FROM receipts WHERE order_id = ?",
                Some(vec![order_id.into()]),
            )
            .and_then(|c| c.to_array())
        {
            Ok(r) => r,
            Err(_) => return,
        };
        let Some(keys) =
            env_string(&self.env, "RECEIPT_KEY").and_then(|k| ReceiptKeys::parse(&k).ok())
        else {
            return;
        };
        for row in rows {
            let Ok(signed) = SignedReceipt::from_json(&row.json) else {
                continue;
            };
            let change = match (&change, refunded_total) {
                (Some(c), _) => *c,
                (None, Some(total)) => {
                    let before = signed.receipt.refunded_amount.unwrap_or_default();
                    let delta = total.0 - before.0;
                    if delta <= 0 {
                        continue;
                    }
                    StatusChange::Refund {
                        amount: crate::money::MinorUnits(delta),
                    }
                }
                (None, None) => continue,
            };
            if let Ok(updated) = receipt::update_status(&signed, change, now_ms, &keys) {
                if let Ok(json) = updated.to_json() {
                    let _ = self.sql().exec(
                        "UPDATE receipts SET json = ? WHERE id = ?",
                        Some(vec![json.as_str().into(), row.id.as_str().into()]),
                    );
                    let status = serde_json::to_value(updated.receipt.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    self.enqueue_webhook(&row.id, &status, &json).await;
                }
            }
        }
    }

    /// Telemetry for a queued payment's end: forwarded (charged on its lane) or expired.
    fn record_final_state(&self, order_id: &str, state: OrderState, now_ms: i64) {
        use crate::telemetry::{Event, Kind};
        let kind = match state {
            OrderState::Forwarded => Kind::Forwarded,
            OrderState::Expired => Kind::Expired,
            _ => return,
        };
        let (lane, amount, key_window) = {
            let guard = self.ledger.borrow();
            let Some(l) = guard.as_ref() else { return };
            let Some(o) = l.order(order_id) else { return };
            let key_window = o
                .auth_id
                .as_deref()
                .and_then(|a| l.auth(a))
                .is_some_and(|a| a.ends_at_key_window());
            (o.lane.clone(), o.total.0, key_window)
        };
        let mut e = Event::new(kind, now_ms).lane(&lane).amount(amount);
        if kind == Kind::Expired {
            // Past the acquirer key's window the outcome is left to reconciliation.
            e = e.reason(if key_window {
                "key_window"
            } else {
                "max_queue_age"
            });
        }
        super::telemetry::store_one(&self.sql(), &self.event_id(), e);
    }

    /// Lists this event's charges on every lane, created since `since_ms`, page by page to
    /// the end (`crate::acquirer::ChargeListing`); `truncated` when a lane's listing
    /// stopped at its page bound. A lane that does not answer fails the whole listing.
    async fn list_charges(
        &self,
        since_ms: i64,
    ) -> std::result::Result<(Vec<AcquirerCharge>, bool), ApiError> {
        let all = lanes(&self.env).map_err(|e| ApiError::new(503, "lanes_misconfigured", e))?;
        let event_id = self.event_id();
        let mut charges = Vec::new();
        let mut truncated = false;
        for lane in &all {
            let secret = lane_secret(&self.env, lane);
            let mut listing =
                acquirer::ChargeListing::new(since_ms.div_euclid(1000), acquirer::MAX_LIST_PAGES);
            while let Some(call) = listing.next_call(&lane.base_url, &secret) {
                let call = call.map_err(|e| e.to_api())?;
                let (status, body) = send(&call, 8_000).await.map_err(|_| {
                    ApiError::new(503, "acquirer_unavailable", format!("Lane {} did not answer the charge list; reconcile again when it is back.", lane.name)).retryable()
                })?;
                listing.feed(status, &body).map_err(|e| e.to_api())?;
            }
            let (records, cut) = listing.finish();
            truncated |= cut;
            charges.extend(AcquirerCharge::of_event(records, &event_id, &lane.name));
        }
        Ok((charges, truncated))
    }

    /// One reconciliation: list the charges, let the ledger fold them in (lost checkouts
    /// become `Lost` and their refunds effects), then sign and keep its report. Returns the
    /// ledger's answer, the listing and the effects still to perform.
    async fn reconcile_run(
        &self,
        since_ms: i64,
        reason: ReconcileReason,
    ) -> std::result::Result<(Reconciled, Vec<AcquirerCharge>, Vec<Effect>), ApiError> {
        let started_ms = now();
        let (charges, truncated) = self.list_charges(since_ms).await?;
        let listing = Listing {
            since_ms,
            started_ms,
            truncated,
        };
        let command = Command::Reconcile {
            charges: charges.clone(),
            listing,
            reason,
        };
        let (reply, effects) = self.apply(command, now());
        let Reply::Reconciled { result } = reply? else {
            let e = worker::Error::RustError("unexpected reconcile reply".into());
            return Err(super::http::internal(e));
        };
        let event_id = self.event_id();
        for l in &result.lost {
            let fields = serde_json::json!({"order_id": l.order_id, "charge_id": l.charge_id, "lane": l.lane, "amount": l.amount});
            super::http::log(
                "warn",
                "lost checkout refunding",
                None,
                Some(&event_id),
                fields,
            );
        }
        if let Err(e) = self.keep_report(result.report.clone()) {
            let fields = serde_json::json!({"error": e.code});
            super::http::log("error", "report not signed", None, Some(&event_id), fields);
        }
        Ok((*result, charges, effects))
    }

    /// Signs the report with the receipt keys and keeps it (the latest replaces the last).
    fn keep_report(&self, report: EventReport) -> std::result::Result<(), ApiError> {
        let keys = ReceiptKeys::parse(&env_string(&self.env, "RECEIPT_KEY").unwrap_or_default())
            .map_err(|e| e.to_api())?;
        let signed = receipt::sign_report(report, &keys).map_err(|e| e.to_api())?;
        let json = signed.to_json().map_err(|e| e.to_api())?;
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('report', ?)",
                Some(vec![json.as_str().into()]),
            )
            .map_err(super::http::internal)?;
        Ok(())
    }

    /// `Effect::Reconcile` (the ledger asked from its alarm): a run, or `ReconcileFailed`
    /// so the ledger tries again later. Returns the effects that follow.
    async fn reconcile_effect(&self, req: ReconcileRequest) -> Vec<Effect> {
        match self.reconcile_run(req.since_ms, req.reason).await {
            Ok((_, _, effects)) => effects,
            Err(e) => {
                let fields = serde_json::json!({"reason": req.reason, "error": e.code});
                super::http::log(
                    "warn",
                    "reconcile failed",
                    None,
                    Some(&self.event_id()),
                    fields,
                );
                let failed = Command::ReconcileFailed {
                    reason: e.code.to_string(),
                };
                self.apply(failed, now()).1
            }
        }
    }

    /// `POST /reconcile` (the admin route): a run now, its lost-checkout refunds sent before
    /// answering, and the report signed again with their outcome.
    async fn reconcile(&self) -> std::result::Result<serde_json::Value, ApiError> {
        let since_ms = self
            .ledger
            .borrow()
            .as_ref()
            .map(|l| l.reconcile_since_ms())
            .ok_or_else(|| ApiError::not_found("event"))?;
        let (result, charges, effects) = self
            .reconcile_run(since_ms, ReconcileReason::Requested)
            .await?;
        self.run_effects(effects).await;
        let (report, event_report, refunded_lost) = {
            let guard = self.ledger.borrow();
            let ledger = guard.as_ref().ok_or_else(|| ApiError::not_found("event"))?;
            let mut report = ledger.reconcile(&charges);
            report.truncated = result.report.truncated;
            let listing = Listing {
                since_ms,
                started_ms: result.report.covered.to_ms,
                truncated: result.report.truncated,
            };
            let event_report =
                ledger.event_report(&charges, &listing, ReconcileReason::Requested, now());
            let refunded: Vec<serde_json::Value> = result
                .lost
                .iter()
                .filter(|l| {
                    ledger
                        .refund(&lost_refund_id(&l.charge_id))
                        .is_some_and(|r| matches!(r.state, RefundState::Succeeded { .. }))
                })
                .map(|l| serde_json::json!({"charge_id": l.charge_id, "order_id": l.order_id, "amount": l.amount}))
                .collect();
            (report, event_report, refunded)
        };
        let clean = event_report.clean;
        self.keep_report(event_report)?;
        Ok(serde_json::json!({
            "event_id": self.event_id(), "acquirer_charges": charges.len(), "report": report,
            "clean": clean, "truncated": report.truncated,
            "late_approvals": result.late_approvals, "lost_checkouts_refunded": refunded_lost,
        }))
    }

    fn load_session(&self, sid: &str) -> std::result::Result<Option<serde_json::Value>, ApiError> {
        #[derive(Deserialize)]
        struct Row {
            json: String,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec(
                "SELECT json FROM handover WHERE id = ?",
                Some(vec![sid.into()]),
            )
            .and_then(|c| c.to_array())
            .map_err(super::http::internal)?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| serde_json::from_str(&r.json).ok()))
    }

    fn save_session(&self, sid: &str, v: &serde_json::Value) -> std::result::Result<(), ApiError> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO handover (id, json) VALUES (?, ?)",
                Some(vec![sid.into(), v.to_string().as_str().into()]),
            )
            .map_err(super::http::internal)?;
        for ws in self.state.get_websockets_with_tag(sid) {
            let _ = ws.send_with_str(v.to_string());
        }
        Ok(())
    }

    /// Staff-terminal handover sessions: create, read, claim for a checkout, settle, and
    /// a hibernating WebSocket that pushes every change to the till.
    async fn handover(
        &self,
        method: &str,
        path: &str,
        mut req: Request,
    ) -> std::result::Result<Response, ApiError> {
        let rest = path.trim_start_matches("/handover/");
        let (sid, op) = rest.split_once('/').unwrap_or((rest, ""));
        let now_ms = now();
        // Read any body first: from loading the session to saving it there is no await, so
        // two claims cannot both see it open.
        let body: serde_json::Value = if method == "POST" || method == "PUT" {
            super::http::body_json(&mut req).await?
        } else {
            serde_json::Value::Null
        };
        if method == "PUT" && op.is_empty() {
            self.save_session(sid, &body)?;
            return super::http::json(201, &body);
        }
        let mut session = self
            .load_session(sid)?
            .ok_or_else(|| ApiError::not_found("handover session"))?;
        let expired = session["expires_ms"].as_i64().unwrap_or(0) < now_ms;
        if expired && session["status"] == "open" {
            session["status"] = "expired".into();
            self.save_session(sid, &session)?;
        }
        match (method, op) {
            ("GET", "") => super::http::json(200, &session),
            ("GET", "ws") => {
                let pair = worker::WebSocketPair::new().map_err(super::http::internal)?;
                self.state.accept_websocket_with_tags(&pair.server, &[sid]);
                let _ = pair.server.send_with_str(session.to_string());
                Response::from_websocket(pair.client).map_err(super::http::internal)
            }
            ("POST", "claim") => {
                let order = &body;
                let status = session["status"].as_str().unwrap_or("");
                let stale_claim = status == "paying"
                    && session["claimed_ms"].as_i64().unwrap_or(0) + 180_000 < now_ms;
                // The same checkout (same key) again: it continues, or replays its answer.
                let same =
                    order["order_key"].is_string() && session["order_key"] == order["order_key"];
                match status {
                    "open" => {}
                    "paying" | "paid" if same => return super::http::json(200, &session),
                    "paying" if stale_claim => {}
                    "paid" => {
                        return Err(ApiError::new(
                            409,
                            "handover_paid",
                            "This sale is already paid.",
                        ))
                    }
                    "expired" => {
                        return Err(ApiError::new(
                            410,
                            "handover_expired",
                            "This pay link has expired; ask for a new one.",
                        ))
                    }
                    _ => {
                        return Err(ApiError::new(
                            409,
                            "handover_in_progress",
                            "A payment for this sale is in progress.",
                        ))
                    }
                }
                session["status"] = "paying".into();
                session["claimed_ms"] = now_ms.into();
                session["order_key"] = order["order_key"].clone();
                self.save_session(sid, &session)?;
                super::http::json(200, &session)
            }
            ("POST", "settle") => {
                let paid = body["paid"].as_bool().unwrap_or(false);
                session["status"] = if paid { "paid" } else { "open" }.into();
                if paid {
                    session["receipt_url"] = body["receipt_url"].clone();
                    session["payment_status"] = body["payment_status"].clone();
                    session["order_id"] = body["order_id"].clone();
                }
                self.save_session(sid, &session)?;
                super::http::json(200, &session)
            }
            _ => Err(ApiError::new(
                404,
                "route_not_found",
                "Unknown handover operation.",
            )),
        }
    }

    async fn route(&self, mut req: Request) -> std::result::Result<Response, ApiError> {
        self.load().map_err(super::http::internal)?;
        let path = req.path();
        let method = req.method().to_string();
        let exists = self.ledger.borrow().is_some();
        match (method.as_str(), path.as_str()) {
            ("POST", "/init") => {
                let config: EventConfig = super::http::body_json(&mut req).await?;
                if exists {
                    return Err(ApiError::new(
                        409,
                        "event_exists",
                        "An event with this id already exists.",
                    ));
                }
                let ledger = EventLedger::new(config, now()).map_err(ApiError::from)?;
                *self.ledger.borrow_mut() = Some(ledger);
                self.persist().map_err(super::http::internal)?;
                let summary = self.ledger.borrow().as_ref().map(|l| l.summary(now()));
                super::http::json(201, &summary)
            }
            _ if !exists => Err(ApiError::not_found("event")),
            ("POST", "/cmd") => {
                let body: CmdBody = super::http::body_json(&mut req).await?;
                let replies = self.run(body.commands, body.now_ms).await;
                let results: Vec<serde_json::Value> =
                    replies.into_iter().map(result_json).collect();
                let depth = self.queue_depth();
                super::http::json(
                    200,
                    &serde_json::json!({"results": results, "queue_depth": depth}),
                )
            }
            ("GET", "/config") => {
                let guard = self.ledger.borrow();
                let l = guard.as_ref().ok_or_else(|| ApiError::not_found("event"))?;
                let summary = l.summary(now());
                super::http::json(
                    200,
                    &serde_json::json!({"config": l.config(), "summary": summary}),
                )
            }
            ("GET", "/summary") => {
                let s = self.ledger.borrow().as_ref().map(|l| l.summary(now()));
                super::http::json(200, &s)
            }
            ("POST", "/checkout/begin") => {
                let b: BeginRequest = super::http::body_json(&mut req).await?;
                let a = self.checkout_step(|cx| object_side::begin(cx, b)).await?;
                super::http::json(200, &a)
            }
            ("POST", "/checkout/finish") => {
                let b: FinishRequest = super::http::body_json(&mut req).await?;
                let a = self.checkout_step(|cx| object_side::finish(cx, b)).await?;
                super::http::json(200, &a)
            }
            ("GET", p) if p.starts_with("/order/") => {
                let id = p.trim_start_matches("/order/");
                let guard = self.ledger.borrow();
                let order = guard
                    .as_ref()
                    .and_then(|l| l.order(id))
                    .ok_or_else(|| ApiError::not_found("order"))?;
                super::http::json(200, order)
            }
            (m, p) if p.starts_with("/handover/") => self.handover(m, p, req).await,
            ("PUT", "/webhook") => {
                #[derive(Deserialize)]
                struct W {
                    url: String,
                    secret: String,
                }
                let w: W = super::http::body_json(&mut req).await?;
                for (k, v) in [("webhook_url", w.url), ("webhook_secret", w.secret)] {
                    self.sql()
                        .exec(
                            "INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)",
                            Some(vec![k.into(), v.as_str().into()]),
                        )
                        .map_err(super::http::internal)?;
                }
                super::http::json(200, &serde_json::json!({"webhook": true}))
            }
            ("POST", "/telemetry") => {
                let text = super::http::body_text(&mut req).await?;
                super::telemetry::accept_batch(&self.sql(), &text)
            }
            ("GET", "/metrics") => {
                let rows = super::telemetry::stored_rows(&self.sql())?;
                let summary = self.ledger.borrow().as_ref().map(|l| l.summary(now()));
                super::http::json(200, &serde_json::json!({"rows": rows, "summary": summary}))
            }
            ("GET", "/sf-key") => {
                super::http::json(200, &serde_json::json!({"wrapped": self.sf_key_wrapped()?}))
            }
            ("POST", "/reconcile") => super::http::json(200, &self.reconcile().await?),
            ("GET", "/report") => match self.meta("report") {
                Some(json) => super::http::raw(200, "application/json", &json),
                None => Err(ApiError::new(
                    404,
                    "report_not_ready",
                    "This event has no reconciliation report yet: one is made after a lost checkout, at the event's end, or by POST /v1/admin/events/{id}/reconcile.",
                )),
            },
            ("GET", "/export") => {
                let url = req.url().map_err(super::http::internal)?;
                let q: std::collections::HashMap<String, String> =
                    url.query_pairs().into_owned().collect();
                let email = q.get("email").map(|v| v == "1").unwrap_or(false);
                let guard = self.ledger.borrow();
                let l = guard.as_ref().ok_or_else(|| ApiError::not_found("event"))?;
                match q.get("format").map(String::as_str) {
                    Some("ndjson") => {
                        super::http::raw(200, "application/x-ndjson", &l.export_ndjson(email))
                    }
                    _ => super::http::raw(200, "text/csv; charset=utf-8", &l.export_csv(email)),
                }
            }
            (m, p) if p.starts_with("/receipts/") => {
                let id = p.trim_start_matches("/receipts/").to_string();
                if m == "PUT" {
                    let text = super::http::body_text(&mut req).await?;
                    let signed = SignedReceipt::from_json(&text).map_err(|e| e.to_api())?;
                    if signed.receipt.id != id {
                        return Err(ApiError::bad_request(
                            "receipt_id_mismatch",
                            "The receipt's id is not the one in the path.",
                        ));
                    }
                    self.store_receipt(&signed, &text)?;
                    let status = serde_json::to_value(signed.receipt.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    self.enqueue_webhook(&id, &status, &text).await;
                    super::http::json(201, &serde_json::json!({"id": id}))
                } else {
                    #[derive(Deserialize)]
                    struct Row {
                        json: String,
                    }
                    let rows: Vec<Row> = self
                        .sql()
                        .exec(
                            "SELECT json FROM receipts WHERE id = ?",
                            Some(vec![id.as_str().into()]),
                        )
                        .and_then(|c| c.to_array())
                        .map_err(super::http::internal)?;
                    match rows.into_iter().next() {
                        Some(r) => super::http::raw(200, "application/json", &r.json),
                        None => Err(ApiError::not_found("receipt")),
                    }
                }
            }
            _ => Err(ApiError::new(
                404,
                "route_not_found",
                "Unknown event object operation.",
            )),
        }
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
        match self.route(req).await {
            Ok(r) => Ok(r),
            Err(e) => api_error(&e),
        }
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
