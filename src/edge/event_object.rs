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
use crate::acquirer::{self, AuthorizeOutcome, AuthorizeRequest, RefundOutcome as AcqRefund};
use crate::error::ApiError;
use crate::ledger::{
    lost_refund_id, AcquirerCharge, AcquirerResult, Command, Delta, Effect, EventConfig,
    EventLedger, EventReport, ForwardRequest, IdempotencyBegin, Listing, OrderState,
    ReconcileReason, ReconcileRequest, Reconciled, RefundOutcome, RefundRequest, RefundState,
    Reply,
};
use crate::receipt::{self, Receipt, ReceiptKeys, SignedReceipt, StatusChange};
use crate::vault::{self, KekSet};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::VecDeque;
use worker::{durable_object, Date, DurableObject, Env, Request, Response, Result, State};

#[durable_object]
pub struct EventObject {
    state: State,
    env: Env,
    ledger: RefCell<Option<EventLedger>>,
    loaded: RefCell<bool>,
}

#[derive(Deserialize)]
struct CmdBody {
    now_ms: i64,
    commands: Vec<Command>,
}

#[derive(Deserialize)]
struct CvcUse {
    use_id: String,
    expires_at_ms: i64,
}

/// `POST /checkout/begin`.
#[derive(Deserialize)]
struct BeginBody {
    now_ms: i64,
    key: String,
    body_hash: String,
    #[serde(default)]
    cvc_use: Option<CvcUse>,
    /// A `Hold` command, absent when the request failed before it (the call then only
    /// finds out whether it is a replay).
    #[serde(default)]
    hold: Option<Command>,
    /// The rest of the checkout when it is already known (a payment to store): applied
    /// right after a successful hold, as `/checkout/finish` would.
    #[serde(default)]
    then: Option<ThenFinish>,
}

/// A finish carried by `/checkout/begin`.
#[derive(Deserialize)]
struct ThenFinish {
    command: Command,
    #[serde(default)]
    receipt: Option<Receipt>,
    complete: Completion,
}

/// How `POST /checkout/finish` closes the idempotency record.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Completion {
    /// Store this answer for replays.
    Answer {
        status_code: u16,
        body: serde_json::Value,
    },
    /// Forget the key (a retryable failure: the client may retry at once), and give back
    /// the single-use CVC the attempt spent, so the same request can be sent again.
    Abandon {
        #[serde(default)]
        release_cvc: Option<String>,
    },
}

/// `POST /checkout/finish`.
#[derive(Deserialize)]
struct FinishBody {
    now_ms: i64,
    key: String,
    #[serde(default)]
    command: Option<Command>,
    /// The unsigned receipt (its id is set here from the order's receipt number).
    #[serde(default)]
    receipt: Option<Receipt>,
    complete: Completion,
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

    /// Writes what changed since the last save (all in one implicit transaction: no await).
    fn persist(&self) -> Result<()> {
        let delta = match self.ledger.borrow_mut().as_mut() {
            Some(l) => l
                .take_delta()
                .map_err(|_| worker::Error::RustError("encode".into()))?,
            None => return Ok(()),
        };
        self.write_delta(delta)
    }

    fn write_delta(&self, delta: Delta) -> Result<()> {
        let sql = self.sql();
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
                // Memory is now ahead of storage: forget it and reload on the next request.
                *self.ledger.borrow_mut() = None;
                *self.loaded.borrow_mut() = false;
                let error = serde_json::json!({"error": e.to_string()});
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

    /// Performs effects in order (alarm, forwards, refunds, receipt updates), feeding the
    /// acquirer's answers back in as commands.
    async fn run_effects(&self, effects: Vec<Effect>) {
        let mut effects: VecDeque<Effect> = effects.into();
        let mut guard = 0;
        // Once a forward finds the acquirer unreachable, the rest of this batch waits for
        // its backoff instead of opening connection after connection to a dead lane.
        let mut unreachable = false;
        while let Some(effect) = effects.pop_front() {
            guard += 1;
            if guard > 200 {
                break;
            }
            let follow_up = match effect {
                Effect::SetAlarm { at_ms } => {
                    self.schedule(at_ms).await;
                    None
                }
                Effect::Forward(req) if unreachable => Some(Command::ForwardResult {
                    auth_id: req.auth_id,
                    result: AcquirerResult::Unavailable,
                }),
                Effect::Forward(req) => {
                    let cmd = self.forward(req).await;
                    if matches!(
                        cmd,
                        Command::ForwardResult {
                            result: AcquirerResult::Unavailable,
                            ..
                        }
                    ) {
                        unreachable = true;
                    }
                    Some(cmd)
                }
                Effect::ForwardRefund(req) => Some(self.forward_refund(req).await),
                Effect::PurgeSealed { .. } => None,
                Effect::Notify { order_id, state } => {
                    self.on_order_state(&order_id, state, now()).await;
                    None
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
    }

    /// `POST /checkout/begin`: the first of a checkout's two calls. Starts the idempotency
    /// record; for a new request, spends the single-use CVC and holds the stock, all in
    /// this one call. A replay or a conflict stops at the idempotency answer.
    async fn checkout_begin(&self, b: BeginBody) -> serde_json::Value {
        let key = b.key.clone();
        let (begin, mut effects) = self.apply(
            Command::BeginIdempotent {
                key: b.key,
                body_hash: b.body_hash,
            },
            b.now_ms,
        );
        let is_new = matches!(
            begin,
            Ok(Reply::Idempotency {
                result: IdempotencyBegin::New
            })
        );
        let mut out = serde_json::json!({"begin": result_json(begin)});
        if is_new {
            let cvc = match &b.cvc_use {
                Some(u) => self.use_cvc(&u.use_id, u.expires_at_ms, b.now_ms),
                None => Ok(()),
            };
            match cvc {
                Err(e) => out["cvc_error"] = serde_json::json!(e),
                Ok(()) => {
                    if let Some(hold) = b.hold {
                        let order_id = match &hold {
                            Command::Hold { order_id, .. } => order_id.clone(),
                            _ => String::new(),
                        };
                        let (r, fx) = self.apply(hold, b.now_ms);
                        effects.extend(fx);
                        let held = r.is_ok();
                        out["hold"] = result_json(r);
                        if let (true, Some(then)) = (held, b.then) {
                            let finished = self
                                .checkout_finish(FinishBody {
                                    now_ms: b.now_ms,
                                    key: key.clone(),
                                    command: Some(then.command),
                                    receipt: then.receipt,
                                    complete: then.complete,
                                })
                                .await;
                            if finished.get("ok").is_none() {
                                // Refused (e.g. the offline budget): undo the hold, free the
                                // key and the CVC, so the buyer may simply retry.
                                let release_cvc = b.cvc_use.as_ref().map(|u| u.use_id.clone());
                                self.checkout_finish(FinishBody {
                                    now_ms: b.now_ms,
                                    key: key.clone(),
                                    command: Some(Command::Release {
                                        order_id,
                                        reason: "offline_budget".into(),
                                    }),
                                    receipt: None,
                                    complete: Completion::Abandon { release_cvc },
                                })
                                .await;
                            }
                            out["finish"] = finished;
                        }
                    }
                }
            }
        }
        self.run_effects(effects).await;
        out["queue_depth"] = self.queue_depth().into();
        out
    }

    /// `POST /checkout/finish`: the second call. Applies the outcome (`Confirm`,
    /// `QueueAuthorization` or `Release`), signs and stores the receipt under the order's
    /// receipt number, puts it in the answer, and completes (or abandons) the idempotency
    /// record, so the stored answer and the ledger never disagree. A refused command
    /// (e.g. the offline budget is spent) comes back as `error` and completes nothing.
    async fn checkout_finish(&self, b: FinishBody) -> serde_json::Value {
        let mut effects = Vec::new();
        let mut reply = serde_json::Value::Null;
        let order_id = b.command.as_ref().and_then(|c| match c {
            Command::Confirm { order_id, .. } | Command::Release { order_id, .. } => {
                Some(order_id.clone())
            }
            Command::QueueAuthorization(q) => Some(q.order_id.clone()),
            _ => None,
        });
        if let Some(cmd) = b.command {
            let (r, fx) = self.apply(cmd, b.now_ms);
            effects.extend(fx);
            match r {
                Ok(r) => reply = serde_json::json!(r),
                Err(e) => {
                    self.run_effects(effects).await;
                    return result_json(Err(e));
                }
            }
        }
        let mut webhook = None;
        let complete = match b.complete {
            Completion::Abandon { release_cvc } => {
                if let Some(use_id) = release_cvc {
                    let _ = self.sql().exec(
                        "DELETE FROM cvc_uses WHERE use_id = ?",
                        Some(vec![use_id.as_str().into()]),
                    );
                }
                Command::AbandonIdempotent { key: b.key }
            }
            Completion::Answer {
                status_code,
                mut body,
            } => {
                if let Some(receipt) = b.receipt {
                    match self.sign_and_store(receipt, order_id.as_deref()) {
                        Ok((id, signed, json)) => {
                            body["receipt_id"] = id.as_str().into();
                            body["receipt_url"] = format!("/v1/receipts/{id}").into();
                            body["receipt"] = serde_json::json!(signed);
                            let status = serde_json::to_value(signed.receipt.status)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_default();
                            webhook = Some((id, status, json));
                        }
                        Err(e) => {
                            // The payment stands; the buyer gets an answer without a
                            // receipt rather than an error after being charged.
                            let (event_id, error) =
                                (self.event_id(), serde_json::json!({"error": e.code}));
                            super::http::log(
                                "error",
                                "receipt not stored",
                                None,
                                Some(&event_id),
                                error,
                            );
                        }
                    }
                }
                let response = serde_json::json!({"status_code": status_code, "body": body});
                let stored = response.to_string();
                let (_, fx) = self.apply(
                    Command::CompleteIdempotent {
                        key: b.key,
                        response: stored,
                    },
                    b.now_ms,
                );
                effects.extend(fx);
                reply = serde_json::json!({"reply": reply, "answer": response});
                if let Some((id, status, json)) = &webhook {
                    self.enqueue_webhook(id, status, json).await;
                }
                self.run_effects(effects).await;
                return serde_json::json!({"ok": reply});
            }
        };
        let (_, fx) = self.apply(complete, b.now_ms);
        effects.extend(fx);
        self.run_effects(effects).await;
        serde_json::json!({"ok": {"reply": reply, "answer": null}})
    }

    /// Signs a checkout's receipt under its order's receipt number and stores it.
    fn sign_and_store(
        &self,
        mut receipt: Receipt,
        order_id: Option<&str>,
    ) -> std::result::Result<(String, SignedReceipt, String), ApiError> {
        let number = {
            let guard = self.ledger.borrow();
            let order = guard
                .as_ref()
                .and_then(|l| order_id.and_then(|id| l.order(id)))
                .ok_or_else(|| ApiError::not_found("order"))?;
            order
                .receipt_id
                .clone()
                .unwrap_or_else(|| format!("{}-{}", receipt.event_id, order.order_id))
        };
        receipt.id = format!("rcpt_{number}");
        let keys = ReceiptKeys::parse(&env_string(&self.env, "RECEIPT_KEY").unwrap_or_default())
            .map_err(|e| e.to_api())?;
        let signed = receipt::sign(receipt, &keys).map_err(|e| e.to_api())?;
        let json = signed.to_json().map_err(|e| e.to_api())?;
        self.store_receipt(&signed, &json)?;
        Ok((signed.receipt.id.clone(), signed, json))
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

    /// Spends a single-use CVC token (`cvc_already_used` the second time).
    fn use_cvc(
        &self,
        use_id: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> std::result::Result<(), ApiError> {
        let sql = self.sql();
        sql.exec(
            "DELETE FROM cvc_uses WHERE expires_ms < ?",
            Some(vec![(now_ms as f64).into()]),
        )
        .map_err(super::http::internal)?;
        #[derive(Deserialize)]
        struct N {
            n: i64,
        }
        let seen: Vec<N> = sql
            .exec(
                "SELECT COUNT(*) AS n FROM cvc_uses WHERE use_id = ?",
                Some(vec![use_id.into()]),
            )
            .and_then(|c| c.to_array())
            .map_err(super::http::internal)?;
        if seen.first().map(|r| r.n).unwrap_or(0) > 0 {
            return Err(crate::vault::VaultError::CvcAlreadyUsed.to_api());
        }
        sql.exec(
            "INSERT INTO cvc_uses (use_id, expires_ms) VALUES (?, ?)",
            Some(vec![use_id.into(), (expires_at_ms as f64).into()]),
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

    /// Sends one stored authorization to its lane and turns the answer into a command.
    async fn forward(&self, req: ForwardRequest) -> Command {
        let auth_id = req.auth_id.clone();
        let unavailable = Command::ForwardResult {
            auth_id: auth_id.clone(),
            result: AcquirerResult::Unavailable,
        };
        let (lane_name, event_id) = {
            let guard = self.ledger.borrow();
            match guard.as_ref() {
                Some(l) => (
                    l.order(&req.order_id)
                        .map(|o| o.lane.clone())
                        .unwrap_or_default(),
                    l.config().event_id.clone(),
                ),
                None => return unavailable,
            }
        };
        let Ok(all) = lanes(&self.env) else {
            return unavailable;
        };
        let Some(lane) = all.iter().find(|l| l.name == lane_name).or(all.first()) else {
            return unavailable;
        };
        let (card, cvc) = match self
            .sf_key_wrapped()
            .and_then(|w| {
                vault::unwrap_sf_key(&self.keks()?, &event_id, &w).map_err(|e| e.to_api())
            })
            .and_then(|k| {
                vault::open_for_forwarding(&k, &event_id, &auth_id, &req.sealed_card.0)
                    .map_err(|e| e.to_api())
            }) {
            Ok(c) => c,
            Err(_) => {
                return Command::ForwardResult {
                    auth_id,
                    result: AcquirerResult::Declined {
                        reason: "sealed_card_unreadable".into(),
                    },
                }
            }
        };
        let call = acquirer::build_authorize(
            &lane.base_url,
            &lane_secret(&self.env, lane),
            &AuthorizeRequest {
                amount: req.amount,
                currency: req.currency,
                card_number: card.number().clone(),
                exp_month: card.exp_month,
                exp_year: card.exp_year,
                // Present only when this completes an online attempt of unknown outcome:
                // the same parameters make the acquirer replay, not charge again.
                cvc,
                idempotency_key: req.idempotency_key.clone(),
                order_id: req.order_id.clone(),
                event_id: event_id.clone(),
                capture: true,
            },
        );
        drop(card);
        let Ok(call) = call else { return unavailable };
        let result = match send(&call, 8_000).await {
            Ok((status, body)) => match acquirer::parse_authorize(status, &body) {
                AuthorizeOutcome::Approved {
                    payment_intent_id, ..
                } => AcquirerResult::Approved {
                    charge_id: payment_intent_id,
                },
                AuthorizeOutcome::Declined { reason, .. } => AcquirerResult::Declined {
                    reason: reason.as_str().to_string(),
                },
                AuthorizeOutcome::Retryable { .. } => AcquirerResult::Unavailable,
                // Our own request was refused (key, configuration): not the buyer's fault,
                // so keep the payment queued and retry after the operator fixes it.
                AuthorizeOutcome::Invalid {
                    status: 401 | 403, ..
                } => AcquirerResult::Unavailable,
                AuthorizeOutcome::Invalid { code, .. } => AcquirerResult::Declined { reason: code },
            },
            Err(NoAnswer::Timeout) | Err(NoAnswer::Network) => AcquirerResult::Unavailable,
        };
        let outcome = match &result {
            AcquirerResult::Approved { .. } => "approved",
            AcquirerResult::Declined { .. } => "declined",
            _ => "unavailable",
        };
        let fields = serde_json::json!({"auth_id": auth_id, "lane": lane.name, "attempt": req.attempt, "result": outcome});
        super::http::log("info", "forward", None, Some(&event_id), fields);
        if let AcquirerResult::Declined { reason } = &result {
            let e = crate::telemetry::Event::new(crate::telemetry::Kind::Expired, now());
            let e = e
                .lane(&lane.name)
                .reason(&format!("forward_declined_{reason}"));
            super::telemetry::store_one(&self.sql(), &event_id, e);
        }
        Command::ForwardResult { auth_id, result }
    }

    async fn forward_refund(&self, req: RefundRequest) -> Command {
        let refund_id = req.refund_id.clone();
        let unavailable = Command::RefundResult {
            refund_id: refund_id.clone(),
            result: RefundOutcome::Unavailable,
        };
        let lane_name = self
            .ledger
            .borrow()
            .as_ref()
            .and_then(|l| l.order(&req.order_id).map(|o| o.lane.clone()))
            .unwrap_or_default();
        let Ok(all) = lanes(&self.env) else {
            return unavailable;
        };
        let Some(lane) = all.iter().find(|l| l.name == lane_name).or(all.first()) else {
            return unavailable;
        };
        let Ok(call) = acquirer::build_refund(
            &lane.base_url,
            &lane_secret(&self.env, lane),
            &req.charge_id,
            Some(req.amount),
            &req.idempotency_key,
        ) else {
            return unavailable;
        };
        let result = match send(&call, 8_000).await {
            Ok((status, body)) => match acquirer::parse_refund(status, &body) {
                AcqRefund::Refunded { refund_id: rid, .. } => RefundOutcome::Succeeded {
                    acquirer_refund_id: rid,
                },
                AcqRefund::Refused { code, .. } => RefundOutcome::Failed { reason: code },
                AcqRefund::Retryable { .. } => RefundOutcome::Unavailable,
            },
            Err(_) => RefundOutcome::Unavailable,
        };
        if let RefundOutcome::Succeeded { .. } = &result {
            let e = crate::telemetry::Event::new(crate::telemetry::Kind::Refund, now());
            let e = e.lane(&lane.name).amount(req.amount.0);
            super::telemetry::store_one(&self.sql(), &self.event_id(), e);
        }
        Command::RefundResult { refund_id, result }
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
        let (lane, amount) = {
            let guard = self.ledger.borrow();
            match guard.as_ref().and_then(|l| l.order(order_id)) {
                Some(o) => (o.lane.clone(), o.total.0),
                None => return,
            }
        };
        let mut e = Event::new(kind, now_ms).lane(&lane).amount(amount);
        if kind == Kind::Expired {
            e = e.reason("max_queue_age");
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
        if method == "PUT" && op.is_empty() {
            let v: serde_json::Value = super::http::body_json(&mut req).await?;
            self.save_session(sid, &v)?;
            return super::http::json(201, &v);
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
                let order: serde_json::Value = super::http::body_json(&mut req).await?;
                let status = session["status"].as_str().unwrap_or("");
                let stale_claim = status == "paying"
                    && session["claimed_ms"].as_i64().unwrap_or(0) + 180_000 < now_ms;
                match status {
                    "open" => {}
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
                let body: serde_json::Value = super::http::body_json(&mut req).await?;
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
            ("POST", "/cvc-use") => {
                #[derive(Deserialize)]
                struct U {
                    use_id: String,
                    expires_at_ms: i64,
                    now_ms: i64,
                }
                let u: U = super::http::body_json(&mut req).await?;
                self.use_cvc(&u.use_id, u.expires_at_ms, u.now_ms)?;
                super::http::json(201, &serde_json::json!({"used": true}))
            }
            ("POST", "/checkout/begin") => {
                let b: BeginBody = super::http::body_json(&mut req).await?;
                super::http::json(200, &self.checkout_begin(b).await)
            }
            ("POST", "/checkout/finish") => {
                let b: FinishBody = super::http::body_json(&mut req).await?;
                super::http::json(200, &self.checkout_finish(b).await)
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
        EventObject {
            state,
            env,
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
