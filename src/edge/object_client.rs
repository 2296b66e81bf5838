//! The only caller of event objects: sends an [`ObjectRequest`] to the event's Durable
//! Object and decodes its [`ObjectAnswer`] (`crate::event_protocol`), with one typed
//! function per call. Errors arrive as the object sent them (status, code, sentence,
//! retryability); only an unreadable answer or a failed fetch is 503 retryable. Also keeps
//! the isolate's short cache of event configurations.

use super::http::internal;
use crate::checkout::protocol::{BeginReply, BeginRequest, FinishReply, FinishRequest};
use crate::error::ApiError;
use crate::event_id;
use crate::event_protocol::{
    decode_answer, unexpected, ExportFormat, HandoverSettle, ObjectAnswer, ObjectRequest,
    REQUEST_HEADER,
};
use crate::handover::HandoverView;
use crate::ledger::{self, Command, EventConfig, EventSummary, Order, Reply};
use crate::telemetry::Event;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use worker::{Env, Headers, Method, Request, RequestInit, Response, Stub};

/// How long an isolate trusts a cached event configuration.
const CONFIG_TTL_MS: i64 = 5_000;
/// Most event configurations an isolate keeps.
const CONFIGS_MAX: usize = 1024;

thread_local! {
    static CONFIGS: RefCell<HashMap<String, (Arc<EventConfig>, i64)>> = RefCell::new(HashMap::new());
}

/// The event's object, for an id the edge made (`crate::event_id`): a made-up id is `404`
/// before any object is addressed, so it creates no Durable Object and no schema.
fn stub(env: &Env, event_id: &str) -> Result<Stub, ApiError> {
    let keys = super::http::receipt_keys(env)?;
    if !ledger::valid_id(event_id) || !event_id::is_genuine(&keys, event_id) {
        return Err(ApiError::not_found("event"));
    }
    env.durable_object("EVENTS")
        .and_then(|ns| ns.get_by_name(event_id))
        .map_err(internal)
}

/// One call: the request as the JSON body of `POST https://event/`.
async fn ask(env: &Env, event_id: &str, req: &ObjectRequest) -> Result<ObjectAnswer, ApiError> {
    let stub = stub(env, event_id)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post);
    let h = Headers::new();
    h.set("Content-Type", "application/json")
        .map_err(internal)?;
    init.with_headers(h);
    init.with_body(Some(wasm_bindgen::JsValue::from_str(&req.encode())));
    let request = Request::new_with_init("https://event/", &init).map_err(internal)?;
    let mut resp = stub.fetch_with_request(request).await.map_err(internal)?;
    let text = resp.text().await.map_err(internal)?;
    decode_answer(resp.status_code(), &text)
}

/// Picks the expected kind out of an answer; any other kind is unreadable.
macro_rules! expect {
    ($answer:expr, $pattern:pat => $value:expr) => {
        match $answer? {
            $pattern => Ok($value),
            _ => Err(unexpected()),
        }
    };
}

/// Runs ledger commands in the event's object; one result per command.
pub async fn commands(
    env: &Env,
    event_id: &str,
    now_ms: i64,
    commands: Vec<Command>,
) -> Result<Vec<Result<Reply, ApiError>>, ApiError> {
    let req = ObjectRequest::Commands { now_ms, commands };
    let results =
        expect!(ask(env, event_id, &req).await, ObjectAnswer::Results { results } => results)?;
    Ok(results.into_iter().map(|r| r.into_result()).collect())
}

/// One ledger command.
pub async fn one(env: &Env, event_id: &str, now_ms: i64, cmd: Command) -> Result<Reply, ApiError> {
    let mut results = commands(env, event_id, now_ms, vec![cmd]).await?;
    results.pop().unwrap_or_else(|| Err(unexpected()))
}

/// The event's configuration, cached per isolate for a few seconds.
pub async fn config(env: &Env, event_id: &str, now_ms: i64) -> Result<Arc<EventConfig>, ApiError> {
    if let Some(c) = CONFIGS.with(|m| {
        m.borrow()
            .get(event_id)
            .filter(|(_, at)| now_ms - at < CONFIG_TTL_MS)
            .map(|(c, _)| c.clone())
    }) {
        return Ok(c);
    }
    let c: Arc<EventConfig> = expect!(ask(env, event_id, &ObjectRequest::Config).await, ObjectAnswer::Config { config } => Arc::from(config))?;
    CONFIGS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= CONFIGS_MAX {
            m.retain(|_, (_, at)| now_ms - *at < CONFIG_TTL_MS);
        }
        if m.len() < CONFIGS_MAX {
            m.insert(event_id.to_string(), (c.clone(), now_ms));
        }
    });
    Ok(c)
}

/// Creates the event's object; its first summary.
pub async fn init(env: &Env, config: &EventConfig) -> Result<EventSummary, ApiError> {
    let req = ObjectRequest::Init {
        config: Box::new(config.clone()),
    };
    expect!(ask(env, &config.event_id, &req).await, ObjectAnswer::Created { summary } => *summary)
}

pub async fn summary(env: &Env, event_id: &str) -> Result<EventSummary, ApiError> {
    expect!(ask(env, event_id, &ObjectRequest::Summary).await, ObjectAnswer::Summary { summary } => *summary)
}

pub async fn order(env: &Env, event_id: &str, order_id: &str) -> Result<Order, ApiError> {
    let req = ObjectRequest::Order {
        order_id: order_id.to_string(),
    };
    expect!(ask(env, event_id, &req).await, ObjectAnswer::Order { order } => *order)
}

pub async fn set_webhook(
    env: &Env,
    event_id: &str,
    url: &str,
    secret: &str,
) -> Result<(), ApiError> {
    let req = ObjectRequest::SetWebhook {
        url: url.to_string(),
        secret: secret.to_string(),
    };
    expect!(ask(env, event_id, &req).await, ObjectAnswer::Done => ())
}

/// A checkout's first call.
pub async fn begin(env: &Env, event_id: &str, b: BeginRequest) -> Result<BeginReply, ApiError> {
    let req = ObjectRequest::Begin(Box::new(b));
    expect!(ask(env, event_id, &req).await, ObjectAnswer::Begin { reply } => reply)
}

/// A checkout's last call.
pub async fn finish(env: &Env, event_id: &str, f: FinishRequest) -> Result<FinishReply, ApiError> {
    let req = ObjectRequest::Finish(Box::new(f));
    expect!(ask(env, event_id, &req).await, ObjectAnswer::Finish { reply } => reply)
}

/// The event's store-and-forward key, wrapped by the KEK.
pub async fn seal_key(env: &Env, event_id: &str) -> Result<String, ApiError> {
    expect!(ask(env, event_id, &ObjectRequest::SealKey).await, ObjectAnswer::SealKey { wrapped } => wrapped)
}

pub async fn telemetry(env: &Env, event_id: &str, events: Vec<Event>) -> Result<(), ApiError> {
    let req = ObjectRequest::Telemetry { events };
    expect!(ask(env, event_id, &req).await, ObjectAnswer::Done => ())
}

/// The stored telemetry rows and the ledger's summary.
pub async fn metrics(
    env: &Env,
    event_id: &str,
) -> Result<(Vec<(String, String)>, EventSummary), ApiError> {
    expect!(ask(env, event_id, &ObjectRequest::Metrics).await, ObjectAnswer::Metrics { rows, summary } => (rows, *summary))
}

pub async fn reconcile(env: &Env, event_id: &str) -> Result<serde_json::Value, ApiError> {
    expect!(ask(env, event_id, &ObjectRequest::Reconcile).await, ObjectAnswer::Reconciled { result } => result)
}

/// The signed report, as JSON text.
pub async fn report(env: &Env, event_id: &str) -> Result<String, ApiError> {
    expect!(ask(env, event_id, &ObjectRequest::Report).await, ObjectAnswer::Report { json } => json)
}

pub async fn export(
    env: &Env,
    event_id: &str,
    format: ExportFormat,
    email: bool,
) -> Result<String, ApiError> {
    let req = ObjectRequest::Export { format, email };
    expect!(ask(env, event_id, &req).await, ObjectAnswer::Export { body } => body)
}

/// A signed receipt, as JSON text.
pub async fn receipt(env: &Env, event_id: &str, receipt_id: &str) -> Result<String, ApiError> {
    let req = ObjectRequest::GetReceipt {
        receipt_id: receipt_id.to_string(),
    };
    expect!(ask(env, event_id, &req).await, ObjectAnswer::Receipt { json } => json)
}

/// A till's handover session after a handover call (open, get, claim, settle), as
/// callers may see it.
pub async fn handover(
    env: &Env,
    event_id: &str,
    req: ObjectRequest,
) -> Result<HandoverView, ApiError> {
    expect!(ask(env, event_id, &req).await, ObjectAnswer::Session { session } => *session)
}

/// How a handover's checkout ended.
pub async fn settle_handover(
    env: &Env,
    event_id: &str,
    session_id: &str,
    settle: HandoverSettle,
) -> Result<(), ApiError> {
    let req = ObjectRequest::SettleHandover {
        session_id: session_id.to_string(),
        settle,
    };
    handover(env, event_id, req).await.map(|_| ())
}

/// The till's WebSocket: the upgrade request's headers go on to the object, with the call
/// in [`REQUEST_HEADER`].
pub async fn watch_handover(
    env: &Env,
    event_id: &str,
    session_id: &str,
    upgrade: &Headers,
) -> Result<Response, ApiError> {
    let stub = stub(env, event_id)?;
    let req = ObjectRequest::WatchHandover {
        session_id: session_id.to_string(),
    };
    // A fresh set: an incoming request's headers are immutable.
    let headers = Headers::new();
    for (name, value) in upgrade.entries() {
        headers.set(&name, &value).map_err(internal)?;
    }
    headers
        .set(REQUEST_HEADER, &req.encode())
        .map_err(internal)?;
    let mut init = RequestInit::new();
    init.with_headers(headers);
    let fwd = Request::new_with_init("https://event/", &init).map_err(internal)?;
    stub.fetch_with_request(fwd).await.map_err(internal)
}
