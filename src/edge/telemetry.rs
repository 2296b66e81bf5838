//! Business telemetry in the shell: an isolate-local buffer the request path records into,
//! batches flushed to each event's Durable Object off the request's path
//! (`Context::wait_until`), the object's SQLite rows, and the metrics route.
//!
//! The request path only pushes a small [`Event`] into a `thread_local!` buffer (no I/O, no
//! await). After the response is ready, [`flush_due`] hands every buffered batch to
//! `wait_until` once the buffer holds [`FLUSH_EVENTS`] events or its oldest event is
//! [`FLUSH_AGE_MS`] old, so a buyer never waits for telemetry. The metrics route also sends
//! the answering isolate's own batch for that event first, so an operator sees their PoP's
//! latest checkouts at once. A batch that cannot be delivered is dropped (and logged): the
//! numbers are for operating the event, the ledger stays the record of money.
//!
//! In the event object, `ObjectRequest::Telemetry` folds a batch into the stored aggregate: it reads
//! only the rows the batch touches (see [`crate::telemetry::Aggregate::to_rows`]), merges,
//! and writes them back, so each batch is a handful of small row writes. Events the object
//! sees itself (forwarded, expired, refund, receipts sent to the webhook) go straight to
//! [`store`].

use super::http::{internal, json, Ctx};
use super::merchants::Principal;
use super::object_client as object;
use crate::error::ApiError;
use crate::policy::LoadedBundle;
use crate::quote::Quote;
use crate::telemetry::{self, Aggregate, Event, Kind, QueueState};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::HashMap;
use worker::{Context, Env, Response, SqlStorage};

/// Flush when this many events are buffered in the isolate…
pub const FLUSH_EVENTS: usize = 25;
/// …or when the oldest buffered event is this old.
pub const FLUSH_AGE_MS: i64 = 2_000;
/// The buffer never holds more than this; the oldest events are dropped first.
const BUFFER_MAX: usize = 2_000;
/// A batch the event object accepts at once.
const BATCH_MAX: usize = 1_000;

#[derive(Default)]
struct Buffer {
    by_event: HashMap<String, Vec<Event>>,
    len: usize,
    oldest_ms: Option<i64>,
    dropped: u64,
}

thread_local! {
    static BUFFER: RefCell<Buffer> = RefCell::new(Buffer::default());
}

/// Records an event for `event_id` in this isolate's buffer. No I/O; never fails.
pub fn record(event_id: &str, event: Event) {
    if !crate::ledger::valid_id(event_id) {
        return;
    }
    BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        if b.len >= BUFFER_MAX {
            b.dropped += 1;
            return;
        }
        b.oldest_ms = Some(b.oldest_ms.map_or(event.at_ms, |o| o.min(event.at_ms)));
        b.len += 1;
        b.by_event
            .entry(event_id.to_string())
            .or_default()
            .push(event.sanitized());
    });
}

fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

/// A business event at this PoP, now.
pub fn at(ctx: &Ctx, kind: Kind) -> Event {
    Event::new(kind, now_ms()).colo(&ctx.colo)
}

// ---- one-line hooks for the request path -----------------------------------------------

/// A quote was shown (`POST /v1/events/{id}/quote` answered 200).
pub fn quote_shown(ctx: &Ctx, event_id: &str) {
    record(event_id, at(ctx, Kind::QuoteShown));
}

/// A card was tokenized for the event.
pub fn token_issued(ctx: &Ctx, event_id: &str) {
    record(event_id, at(ctx, Kind::TokenIssued));
}

/// A checkout was answered with `status` after `took_ms` (replays are not counted).
pub fn checkout_answered(ctx: &Ctx, event_id: &str, status: u16, took_ms: i64) {
    record(
        event_id,
        at(ctx, Kind::CheckoutStarted)
            .latency(took_ms)
            .converted(status == 201),
    );
}

/// The acquirer approved on `lane`.
pub fn approved(ctx: &Ctx, event_id: &str, lane: &str, bundle: &LoadedBundle, quote: &Quote) {
    converted(ctx, event_id, Kind::Approved, lane, bundle, quote);
}

/// A converted checkout (approved or stored) of `quote`'s amount on `lane`.
fn converted(
    ctx: &Ctx,
    event_id: &str,
    kind: Kind,
    lane: &str,
    bundle: &LoadedBundle,
    quote: &Quote,
) {
    let e = at(ctx, kind);
    let took = e.at_ms - ctx.now_ms;
    record(
        event_id,
        e.lane(lane)
            .revision(bundle.revision)
            .amount(quote.total.0)
            .latency(took),
    );
}

/// The acquirer declined on `lane` with the decline code `reason`.
pub fn declined(ctx: &Ctx, event_id: &str, lane: &str, bundle: &LoadedBundle, reason: &str) {
    let e = at(ctx, Kind::Declined);
    let took = e.at_ms - ctx.now_ms;
    record(
        event_id,
        e.lane(lane)
            .revision(bundle.revision)
            .reason(reason)
            .latency(took),
    );
}

/// The payment was accepted offline, to be forwarded on `lane`.
pub fn queued(ctx: &Ctx, event_id: &str, lane: &str, bundle: &LoadedBundle, quote: &Quote) {
    converted(ctx, event_id, Kind::Queued, lane, bundle, quote);
}

// ---- flushing --------------------------------------------------------------------------

fn take_all() -> Vec<(String, Vec<Event>)> {
    BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        b.len = 0;
        b.oldest_ms = None;
        b.by_event.drain().collect()
    })
}

fn take_event(event_id: &str) -> Vec<Event> {
    BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        let taken = b.by_event.remove(event_id).unwrap_or_default();
        b.len = b.len.saturating_sub(taken.len());
        if b.len == 0 {
            b.oldest_ms = None;
        }
        taken
    })
}

/// After a response: sends the buffered batches off the request's path when the buffer
/// is big or old enough.
pub fn flush_due(env: &Env, wctx: &Context, now_ms: i64) {
    let due = BUFFER.with(|b| {
        let b = b.borrow();
        b.len >= FLUSH_EVENTS || b.oldest_ms.is_some_and(|o| now_ms - o >= FLUSH_AGE_MS)
    });
    if !due {
        return;
    }
    for (event_id, events) in take_all() {
        let env = env.clone();
        wctx.wait_until(async move {
            send(&env, &event_id, events).await;
        });
    }
}

async fn send(env: &Env, event_id: &str, events: Vec<Event>) {
    for chunk in events.chunks(BATCH_MAX) {
        if let Err(e) = object::telemetry(env, event_id, chunk.to_vec()).await {
            super::http::log(
                "warn",
                "telemetry batch dropped",
                None,
                Some(event_id),
                serde_json::json!({"events": chunk.len(), "error": e.code}),
            );
        }
    }
}

// ---- the metrics route -----------------------------------------------------------------

/// `GET /v1/admin/events/{id}/metrics` (operator key or the event's merchant key).
pub async fn metrics_route(
    env: &Env,
    ctx: &Ctx,
    who: &Principal,
    event_id: &str,
) -> Result<Response, ApiError> {
    let c = object::config(env, event_id, ctx.now_ms).await?;
    if !who.may_manage(&c.merchant_id) {
        return Err(ApiError::not_found("event"));
    }
    let mine = take_event(event_id);
    if !mine.is_empty() {
        send(env, event_id, mine).await;
    }
    let (rows, summary) = object::metrics(env, event_id).await?;
    let agg = Aggregate::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let lanes = super::acquirer_io::lanes(env).unwrap_or_default();
    let m = telemetry::metrics(
        event_id,
        &agg,
        QueueState::from(&summary),
        &lanes,
        c.currency,
        now_ms(),
    );
    json(200, &m)
}

// ---- the event object's side -----------------------------------------------------------

/// Creates the telemetry table (idempotent): one small row per aggregate part.
pub fn ensure_table(sql: &SqlStorage) -> worker::Result<()> {
    sql.exec(
        "CREATE TABLE IF NOT EXISTS telemetry (k TEXT PRIMARY KEY, v TEXT NOT NULL, minute INTEGER)",
        None,
    )?;
    Ok(())
}

/// Folds events into the stored aggregate: reads the rows they touch, merges, writes them
/// back, and deletes per-minute rows that fell out of the series window.
pub fn store(sql: &SqlStorage, events: &[Event]) -> worker::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    ensure_table(sql)?;
    let batch = Aggregate::from_events(events);
    #[derive(Deserialize)]
    struct Row {
        v: String,
    }
    let mut existing = Vec::new();
    for k in batch.row_keys() {
        let rows: Vec<Row> = sql
            .exec(
                "SELECT v FROM telemetry WHERE k = ?",
                Some(vec![k.as_str().into()]),
            )?
            .to_array()?;
        if let Some(r) = rows.into_iter().next() {
            existing.push((k, r.v));
        }
    }
    let mut merged = Aggregate::from_rows(existing.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    merged.merge(&batch);
    for (k, v) in merged.to_rows() {
        let minute = k
            .strip_prefix("series:")
            .and_then(|r| r.rsplit_once(':'))
            .and_then(|(_, m)| m.parse::<i64>().ok());
        sql.exec(
            "INSERT OR REPLACE INTO telemetry (k, v, minute) VALUES (?, ?, ?)",
            Some(vec![
                k.as_str().into(),
                v.as_str().into(),
                minute.map(|m| m as f64).into(),
            ]),
        )?;
    }
    if let Some(floor) = merged.series_floor_ms() {
        sql.exec(
            "DELETE FROM telemetry WHERE minute IS NOT NULL AND minute < ?",
            Some(vec![(floor as f64).into()]),
        )?;
    }
    Ok(())
}

/// Records one event the object saw itself; a failure is logged, never raised.
pub fn store_one(sql: &SqlStorage, event_id: &str, event: Event) {
    if let Err(e) = store(sql, &[event]) {
        super::http::log(
            "warn",
            "telemetry not stored",
            None,
            Some(event_id),
            serde_json::json!({"error": e.to_string()}),
        );
    }
}

/// `ObjectRequest::Telemetry` in the event object: a PoP's batch.
pub fn accept_batch(sql: &SqlStorage, events: &[Event]) -> Result<(), ApiError> {
    if events.len() > BATCH_MAX {
        return Err(ApiError::bad_request(
            "batch_too_large",
            "A telemetry batch holds at most 1000 events.",
        ));
    }
    store(sql, events).map_err(internal)
}

/// `ObjectRequest::Metrics` in the event object: the stored rows and the ledger's summary.
pub fn stored_rows(sql: &SqlStorage) -> Result<Vec<(String, String)>, ApiError> {
    ensure_table(sql).map_err(internal)?;
    #[derive(Deserialize)]
    struct Row {
        k: String,
        v: String,
    }
    let rows: Vec<Row> = sql
        .exec("SELECT k, v FROM telemetry", None)
        .and_then(|c| c.to_array())
        .map_err(internal)?;
    Ok(rows.into_iter().map(|r| (r.k, r.v)).collect())
}
