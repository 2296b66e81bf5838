//! Events: the admin routes (create, live state, sync, refunds, reconcile, export), the
//! public routes (event card, quote, checkout) and receipts. Everything that must not be
//! lost or happen twice goes through the event's Durable Object (`event_object.rs`).

use super::http::{env_string, internal, json, random, Ctx};
use super::merchants::Principal;
use crate::checkout::request::{policy_category, quote_cart, CartItem};
use crate::checkout::Answer;
use crate::error::ApiError;
use crate::ledger::{
    self, Command, EventConfig, OfflineBudget, Order, QueueConfig, QueueMode, Reply, Sku,
};
use crate::money::{Currency, MinorUnits};
use crate::policy::{BuyerField, Category as PolicyCategory, LoadedBundle};
use crate::receipt::{self, ReceiptKeys};
use crate::routing::Router;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use worker::{Env, Headers, Method, Request, RequestInit, Response, Stub};

/// How long an isolate trusts a cached event configuration.
const CONFIG_TTL_MS: i64 = 5_000;

thread_local! {
    static CONFIGS: RefCell<HashMap<String, (Arc<EventConfig>, i64)>> = RefCell::new(HashMap::new());
    static ROUTER: RefCell<Option<(String, Router)>> = const { RefCell::new(None) };
    static DEPTH: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

// ------------------------------------------------------------------ Durable Object client

fn stub(env: &Env, event_id: &str) -> Result<Stub, ApiError> {
    if !ledger::valid_id(event_id) {
        return Err(ApiError::not_found("event"));
    }
    env.durable_object("EVENTS")
        .and_then(|ns| ns.get_by_name(event_id))
        .map_err(internal)
}

/// One call to the event's object; its JSON errors come back as `ApiError`s.
pub(super) async fn call(
    env: &Env,
    event_id: &str,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(u16, String), ApiError> {
    let stub = stub(env, event_id)?;
    let mut init = RequestInit::new();
    init.with_method(method);
    if let Some(b) = body {
        let h = Headers::new();
        h.set("Content-Type", "application/json")
            .map_err(internal)?;
        init.with_headers(h);
        init.with_body(Some(wasm_bindgen::JsValue::from_str(&b)));
    }
    let req = Request::new_with_init(&format!("https://event{path}"), &init).map_err(internal)?;
    let mut resp = stub.fetch_with_request(req).await.map_err(internal)?;
    let status = resp.status_code();
    let text = resp.text().await.map_err(internal)?;
    if status >= 400 {
        return Err(decode_error(status, &text));
    }
    Ok((status, text))
}

fn decode_error(status: u16, text: &str) -> ApiError {
    #[derive(Deserialize)]
    struct E {
        code: String,
        message: String,
        #[serde(default)]
        retryable: bool,
    }
    #[derive(Deserialize)]
    struct B {
        error: E,
    }
    match serde_json::from_str::<B>(text) {
        Ok(b) => {
            let code: String = b.error.code.chars().take(64).collect();
            let mut e = ApiError::with_code(status, code, b.error.message);
            e.retryable = b.error.retryable;
            e
        }
        Err(_) => ApiError::new(
            503,
            "temporarily_unavailable",
            "The event could not answer; try again.",
        )
        .retryable(),
    }
}

/// Runs ledger commands in the event's object; one result per command.
async fn commands(
    env: &Env,
    event_id: &str,
    now_ms: i64,
    cmds: Vec<Command>,
) -> Result<(Vec<Result<Reply, ApiError>>, u32), ApiError> {
    let body = serde_json::json!({"now_ms": now_ms, "commands": cmds}).to_string();
    let (_, text) = call(env, event_id, Method::Post, "/cmd", Some(body)).await?;
    #[derive(Deserialize)]
    struct R {
        results: Vec<serde_json::Value>,
        queue_depth: u32,
    }
    let r: R = serde_json::from_str(&text).map_err(|_| {
        ApiError::new(
            503,
            "temporarily_unavailable",
            "The event answered unreadably.",
        )
        .retryable()
    })?;
    DEPTH.with(|d| d.borrow_mut().insert(event_id.to_string(), r.queue_depth));
    let results = r
        .results
        .into_iter()
        .map(|v| {
            if let Some(ok) = v.get("ok") {
                serde_json::from_value::<Reply>(ok.clone()).map_err(|_| {
                    ApiError::new(503, "temporarily_unavailable", "Unreadable event reply.")
                        .retryable()
                })
            } else {
                let status = v.get("status").and_then(|s| s.as_u64()).unwrap_or(400) as u16;
                Err(decode_error(
                    status,
                    &serde_json::json!({"error": v.get("error")}).to_string(),
                ))
            }
        })
        .collect();
    Ok((results, r.queue_depth))
}

pub(super) async fn one(
    env: &Env,
    event_id: &str,
    now_ms: i64,
    cmd: Command,
) -> Result<Reply, ApiError> {
    let (mut results, _) = commands(env, event_id, now_ms, vec![cmd]).await?;
    results.pop().unwrap_or_else(|| {
        Err(ApiError::new(503, "temporarily_unavailable", "No reply from the event.").retryable())
    })
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
    let (_, text) = call(env, event_id, Method::Get, "/config", None).await?;
    #[derive(Deserialize)]
    struct R {
        config: EventConfig,
    }
    let r: R = serde_json::from_str(&text).map_err(|_| ApiError::not_found("event"))?;
    let c = Arc::new(r.config);
    CONFIGS.with(|m| {
        m.borrow_mut()
            .insert(event_id.to_string(), (c.clone(), now_ms))
    });
    Ok(c)
}

/// The event's config if `who` may manage it; otherwise 404, as if it did not exist.
async fn managed(
    env: &Env,
    who: &Principal,
    event_id: &str,
    now_ms: i64,
) -> Result<Arc<EventConfig>, ApiError> {
    let c = config(env, event_id, now_ms).await?;
    if who.may_manage(&c.merchant_id) {
        Ok(c)
    } else {
        Err(ApiError::not_found("event"))
    }
}

// ------------------------------------------------------------------ admin routes

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    #[serde(default)]
    merchant_id: Option<String>,
    title: String,
    jurisdiction: String,
    currency: String,
    start_ms: i64,
    end_ms: i64,
    skus: Vec<Sku>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    queue: Option<QueueConfig>,
    #[serde(default)]
    offline: Option<OfflineBudget>,
    #[serde(default)]
    policy_revision: Option<u64>,
}

/// `POST /v1/admin/events`.
pub async fn create(
    env: &Env,
    ctx: &Ctx,
    who: &Principal,
    body: NewEvent,
) -> Result<Response, ApiError> {
    let merchant_id = match (who, body.merchant_id) {
        (Principal::Public, _) => return Err(ApiError::unauthorized()),
        (Principal::Merchant(m), None) => m.clone(),
        (Principal::Merchant(m), Some(asked)) if &asked == m => asked,
        (Principal::Merchant(_), Some(_)) => {
            return Err(ApiError::new(
                403,
                "forbidden",
                "A merchant key creates events for its own merchant only.",
            ))
        }
        (Principal::Operator, Some(m)) => m,
        (Principal::Operator, None) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "The operator must name the event's merchant_id.",
            ))
        }
    };
    let Some(merchant) = super::merchants::get(env, &merchant_id).await? else {
        return Err(ApiError::new(
            422,
            "unknown_merchant",
            "No merchant with that id exists; create it first.",
        ));
    };
    let currency = Currency::parse(&body.currency)
        .map_err(|e| ApiError::new(422, "invalid_currency", e.to_string()))?;
    let bundle =
        super::policy::bundle_for(env, &body.jurisdiction, body.policy_revision, ctx.now_ms).await;
    let limits = &bundle.bundle.offline;
    let offline = body.offline.unwrap_or(OfflineBudget {
        per_transaction_max: limits.per_transaction_cap,
        aggregate_max: limits.per_event_cap,
        per_card_max_count: 3,
        per_card_window_ms: 3_600_000,
        unknown_max: None,
    });
    if offline.per_transaction_max > limits.per_transaction_cap
        || offline.aggregate_max > limits.per_event_cap
    {
        return Err(ApiError::new(
            422,
            "offline_budget_over_policy",
            format!(
                "The offline budget is above the policy's limits for {}: at most {} per transaction and {} in all.",
                bundle.bundle.jurisdiction,
                limits.per_transaction_cap.display(currency),
                limits.per_event_cap.display(currency)
            ),
        ));
    }
    let event_id = format!("evt_{}", hex::encode(random::<6>()?));
    let config = EventConfig {
        event_id: event_id.clone(),
        merchant_id,
        title: body.title,
        jurisdiction: body.jurisdiction,
        currency,
        start_ms: body.start_ms,
        end_ms: body.end_ms,
        skus: body.skus,
        allowed_origins: body.allowed_origins,
        queue: body.queue.unwrap_or(QueueConfig {
            required: false,
            mode: QueueMode::Fifo,
            sale_start_ms: body.start_ms,
            capacity: 1000,
            admission_rate_per_sec: 10,
            place_ttl_ms: 60_000,
            admitted_ttl_ms: 600_000,
        }),
        offline,
        policy_revision: body.policy_revision.map(|r| r.to_string()),
    };
    config.validate().map_err(ApiError::from)?;
    let (_, text) = call(
        env,
        &event_id,
        Method::Post,
        "/init",
        Some(serde_json::to_string(&config).unwrap_or_default()),
    )
    .await?;
    if let (Some(url), Some(secret)) = (&merchant.webhook_url, &merchant.webhook_secret) {
        let w = serde_json::json!({"url": url, "secret": secret}).to_string();
        call(env, &event_id, Method::Put, "/webhook", Some(w)).await?;
    }
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    json(
        201,
        &serde_json::json!({"event_id": event_id, "config": config, "policy": {"jurisdiction": bundle.bundle.jurisdiction, "revision": bundle.revision, "hash": bundle.hash}, "summary": summary}),
    )
}

/// `GET /v1/admin/events/{id}`: live state.
pub async fn show(
    env: &Env,
    ctx: &Ctx,
    who: &Principal,
    event_id: &str,
) -> Result<Response, ApiError> {
    let c = managed(env, who, event_id, ctx.now_ms).await?;
    let (_, text) = call(env, event_id, Method::Get, "/summary", None).await?;
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    json(
        200,
        &serde_json::json!({"event_id": event_id, "config": &*c, "summary": summary}),
    )
}

/// `POST /v1/admin/events/{id}/sync`: forward every stored payment now.
pub async fn sync_now(
    env: &Env,
    ctx: &Ctx,
    who: &Principal,
    event_id: &str,
) -> Result<Response, ApiError> {
    managed(env, who, event_id, ctx.now_ms).await?;
    let reply = one(env, event_id, ctx.now_ms, Command::SyncNow).await?;
    let (_, text) = call(env, event_id, Method::Get, "/summary", None).await?;
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    json(
        200,
        &serde_json::json!({"result": reply, "summary": summary}),
    )
}

/// `POST /v1/admin/events/{id}/reconcile`.
pub async fn reconcile(
    env: &Env,
    ctx: &Ctx,
    who: &Principal,
    event_id: &str,
) -> Result<Response, ApiError> {
    managed(env, who, event_id, ctx.now_ms).await?;
    let (_, text) = call(env, event_id, Method::Post, "/reconcile", Some("{}".into())).await?;
    super::http::raw(200, "application/json", &text)
}

/// `GET /v1/admin/events/{id}/report`: the signed report of the event's last
/// reconciliation (made by itself after lost checkouts and at the event's end).
pub async fn report(
    env: &Env,
    ctx: &Ctx,
    who: &Principal,
    event_id: &str,
) -> Result<Response, ApiError> {
    managed(env, who, event_id, ctx.now_ms).await?;
    let (_, text) = call(env, event_id, Method::Get, "/report", None).await?;
    super::http::raw(200, "application/json", &text)
}

/// `GET /v1/admin/events/{id}/export?format=csv|ndjson`; buyer e-mail only where the
/// policy's receipt rules collect it.
pub async fn export(
    env: &Env,
    ctx: &Ctx,
    who: &Principal,
    event_id: &str,
    format: &str,
) -> Result<Response, ApiError> {
    let c = managed(env, who, event_id, ctx.now_ms).await?;
    if format != "csv" && format != "ndjson" {
        return Err(ApiError::bad_request(
            "invalid_format",
            "format is csv or ndjson.",
        ));
    }
    let bundle = bundle_of(env, &c, ctx.now_ms).await;
    let email = bundle
        .bundle
        .compliance
        .buyer_fields
        .contains(&BuyerField::Email);
    let (_, text) = call(
        env,
        event_id,
        Method::Get,
        &format!("/export?format={format}&email={}", u8::from(email)),
        None,
    )
    .await?;
    let ct = if format == "csv" {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    super::http::raw(200, ct, &text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    order_id: String,
    #[serde(default)]
    amount: Option<MinorUnits>,
    /// The operator refunds outside the buyer's statutory window (e.g. a cancelled night).
    #[serde(default)]
    goodwill: bool,
}

/// `POST /v1/admin/events/{id}/refunds`.
pub async fn refund(
    env: &Env,
    ctx: &Ctx,
    who: &Principal,
    event_id: &str,
    idem: Option<String>,
    body: RefundBody,
) -> Result<Response, ApiError> {
    let c = managed(env, who, event_id, ctx.now_ms).await?;
    let bundle = bundle_of(env, &c, ctx.now_ms).await;
    // The most restrictive rule among the order's lines' categories applies.
    let order = fetch_order(env, event_id, &body.order_id).await?;
    let categories: Vec<PolicyCategory> = order
        .lines
        .iter()
        .filter_map(|l| c.skus.iter().find(|s| s.id == l.sku))
        .map(|s| policy_category(s.category))
        .collect();
    let mut allowed = true;
    let mut window_days = u32::MAX;
    let mut partial = true;
    let mut offline_queue = true;
    for cat in categories {
        let r = bundle.bundle.refunds.get(cat);
        allowed &= r.window_days > 0;
        window_days = window_days.min(r.window_days);
        partial &= r.partial;
        offline_queue &= r.offline_queue;
    }
    let rule = ledger::RefundRule {
        allowed: allowed || body.goodwill,
        window_ms: if body.goodwill {
            i64::MAX / 4
        } else {
            i64::from(window_days.min(3650)) * 86_400_000
        },
        partial_allowed: partial || body.goodwill,
        may_queue_offline: offline_queue,
    };
    let refund_id = match idem {
        Some(k) => format!(
            "rf_{}",
            &hex::encode(Sha256::digest(format!("{event_id}|{k}")))[..20]
        ),
        None => format!("rf_{}", hex::encode(random::<8>()?)),
    };
    let reply = one(
        env,
        event_id,
        ctx.now_ms,
        Command::RequestRefund {
            refund_id,
            order_id: body.order_id,
            amount: body.amount,
            rule,
            acquirer_online: true,
        },
    )
    .await?;
    json(201, &reply)
}

// ------------------------------------------------------------------ public routes

pub(super) async fn bundle_of(env: &Env, c: &EventConfig, now_ms: i64) -> Arc<LoadedBundle> {
    let pin = c.policy_revision.as_deref().and_then(|r| r.parse().ok());
    super::policy::bundle_for(env, &c.jurisdiction, pin, now_ms).await
}

/// CORS: the event's allowed origins (or any origin when the event lists none, as for the
/// edge's own pages). Returns the header value to send back, if any.
pub fn cors_origin(
    c: &EventConfig,
    origin: Option<&str>,
    self_origin: &str,
) -> Result<Option<String>, ApiError> {
    match origin {
        None => Ok(None),
        Some(o) if o == self_origin => Ok(None),
        Some(o) if c.allowed_origins.iter().any(|a| a == o) => Ok(Some(o.to_string())),
        Some(_) if c.allowed_origins.is_empty() => Ok(Some("*".into())),
        Some(_) => Err(ApiError::new(
            403,
            "origin_not_allowed",
            "This page's origin is not allowed to use this event's checkout.",
        )),
    }
}

/// `GET /v1/events/{id}/public`: what a checkout page shows before the quote.
pub async fn public(env: &Env, ctx: &Ctx, event_id: &str) -> Result<Response, ApiError> {
    let c = config(env, event_id, ctx.now_ms).await?;
    let (_, text) = call(env, event_id, Method::Get, "/summary", None).await?;
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let bundle = bundle_of(env, &c, ctx.now_ms).await;
    let available: HashMap<String, u64> = summary["skus"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    Some((
                        s["sku"].as_str().or(s["id"].as_str())?.to_string(),
                        s["available"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let skus: Vec<serde_json::Value> = c
        .skus
        .iter()
        .map(|s| serde_json::json!({"id": s.id, "name": s.name, "category": s.category, "price": s.price, "available": available.get(&s.id).copied().unwrap_or(u64::from(s.stock))}))
        .collect();
    json(
        200,
        &serde_json::json!({
            "event_id": c.event_id, "title": c.title, "currency": c.currency,
            "currency_exponent": c.currency.exponent(), "languages": bundle.bundle.languages,
            "jurisdiction": c.jurisdiction, "skus": skus, "allowed_origins": c.allowed_origins,
            "start_ms": c.start_ms, "end_ms": c.end_ms,
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteBody {
    items: Vec<CartItem>,
}

/// `POST /v1/events/{id}/quote`.
pub async fn quote_route(
    env: &Env,
    ctx: &Ctx,
    event_id: &str,
    body: QuoteBody,
) -> Result<Response, ApiError> {
    let c = config(env, event_id, ctx.now_ms).await?;
    let bundle = bundle_of(env, &c, ctx.now_ms).await;
    json(200, &quote_cart(&c, &bundle, &body.items, ctx.now_ms)?)
}

pub(super) fn router_with<R>(env: &Env, f: impl FnOnce(&mut Router) -> R) -> Result<R, ApiError> {
    let lanes = env_string(env, "LANES").unwrap_or_else(|| "[]".into());
    let tuning = env_string(env, "ROUTING_TUNING");
    let key = format!("{lanes}|{}", tuning.as_deref().unwrap_or(""));
    ROUTER.with(|cell| {
        let mut guard = cell.borrow_mut();
        if guard.as_ref().map(|(k, _)| k != &key).unwrap_or(true) {
            let r = Router::from_json(&lanes, tuning.as_deref()).map_err(|e| {
                ApiError::new(
                    503,
                    "lanes_misconfigured",
                    format!("The acquirer lanes are misconfigured: {e}"),
                )
            })?;
            *guard = Some((key, r));
        }
        match guard.as_mut() {
            Some((_, r)) => Ok(f(r)),
            None => Err(ApiError::new(
                503,
                "lanes_misconfigured",
                "No acquirer lanes.",
            )),
        }
    })
}

/// `GET /v1/admin/routing`: the adaptive limiter, latency and breaker state per lane.
pub fn routing_snapshot(env: &Env, ctx: &Ctx) -> Result<Response, ApiError> {
    let snap = router_with(env, |r| r.snapshot(ctx.now_ms))?;
    json(200, &serde_json::json!({"colo": ctx.colo, "routing": snap}))
}

/// `POST /v1/admin/routing/reset`: forget this isolate's learned lane state (limits,
/// latency, open breakers) and start measuring afresh, e.g. after an acquirer incident is
/// over. Each isolate (PoP) keeps its own state; this resets the one that answers.
pub fn reset_routing(env: &Env, ctx: &Ctx) -> Result<Response, ApiError> {
    ROUTER.with(|cell| cell.borrow_mut().take());
    routing_snapshot(env, ctx)
}

pub fn with_cors(mut r: Response, origin: Option<String>) -> Result<Response, ApiError> {
    if let Some(o) = origin {
        let h = r.headers_mut();
        h.set("Access-Control-Allow-Origin", &o).map_err(internal)?;
        h.set("Vary", "Origin").map_err(internal)?;
        h.set(
            "Access-Control-Expose-Headers",
            "X-Request-Id, X-Poptill-Colo, X-Poptill-Routing, Idempotent-Replayed, Retry-After, Server-Timing",
        )
        .map_err(internal)?;
    }
    Ok(r)
}

async fn fetch_order(env: &Env, event_id: &str, order_id: &str) -> Result<Order, ApiError> {
    let (_, text) = call(
        env,
        event_id,
        Method::Get,
        &format!("/order/{order_id}"),
        None,
    )
    .await?;
    serde_json::from_str(&text)
        .map_err(|_| ApiError::new(503, "temporarily_unavailable", "Order unreadable.").retryable())
}

// ------------------------------------------------------------------ receipts

/// The event a receipt belongs to: `rcpt_<event_id>-<n>`.
fn receipt_event(receipt_id: &str) -> Option<&str> {
    receipt_id
        .strip_prefix("rcpt_")
        .and_then(|r| r.rsplit_once('-'))
        .map(|(e, _)| e)
}

/// `GET /v1/receipts/{id}`: JSON, or an HTML page when a browser asks for HTML.
pub async fn get_receipt(
    env: &Env,
    receipt_id: &str,
    wants_html: bool,
) -> Result<Response, ApiError> {
    let event_id = receipt_event(receipt_id).ok_or_else(|| ApiError::not_found("receipt"))?;
    let (_, text) = call(
        env,
        event_id,
        Method::Get,
        &format!("/receipts/{receipt_id}"),
        None,
    )
    .await?;
    if wants_html {
        let signed = receipt::SignedReceipt::from_json(&text).map_err(|e| e.to_api())?;
        let html = receipt::render_html(&signed);
        return super::http::raw(200, "text/html; charset=utf-8", &html);
    }
    super::http::raw(200, "application/json", &text)
}

/// `POST /v1/receipts/verify`: anyone holding a receipt, or an event's signed report, can
/// check it.
pub fn verify_receipt(env: &Env, body: &str) -> Result<Response, ApiError> {
    let keys = ReceiptKeys::parse(&env_string(env, "RECEIPT_KEY").unwrap_or_default())
        .map_err(|e| e.to_api())?;
    let is_report =
        serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| v.get("report").is_some());
    if is_report {
        let signed = receipt::SignedReport::from_json(body).map_err(|e| e.to_report_api())?;
        receipt::verify_report(&signed, &keys).map_err(|e| e.to_report_api())?;
        let r = &signed.report;
        return json(
            200,
            &serde_json::json!({"valid": true, "kind": "report", "event_id": r.event_id, "generated_ms": r.generated_ms, "end_of_event": r.end_of_event, "clean": r.clean, "kid": signed.signature.kid}),
        );
    }
    let signed = receipt::SignedReceipt::from_json(body).map_err(|e| e.to_api())?;
    receipt::verify(&signed, &keys).map_err(|e| e.to_api())?;
    json(
        200,
        &serde_json::json!({"valid": true, "receipt_id": signed.receipt.id, "status": signed.receipt.status, "kid": signed.signature.kid, "policy_revision": signed.receipt.policy_revision}),
    )
}

// ------------------------------------------------------------------ staff-terminal handover

/// Handover session ids carry their event: `hs_<16 hex>_<event_id>`.
fn session_event(sid: &str) -> Option<&str> {
    let rest = sid.strip_prefix("hs_")?;
    let (hexpart, event) = rest.split_at_checked(16)?;
    (hexpart.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    event.strip_prefix('_')
}

async fn handover_session(env: &Env, sid: &str) -> Result<serde_json::Value, ApiError> {
    let event_id = session_event(sid).ok_or_else(|| ApiError::not_found("handover session"))?;
    let (_, text) = call(
        env,
        event_id,
        Method::Get,
        &format!("/handover/{sid}"),
        None,
    )
    .await?;
    serde_json::from_str(&text).map_err(|_| ApiError::not_found("handover session"))
}

/// How long a pay link stays open unless the till asks otherwise (seconds).
const HANDOVER_TTL_DEFAULT_S: i64 = 600;
/// The shortest and longest pay-link lifetime a till may ask for (seconds).
const HANDOVER_TTL_MIN_S: i64 = 5;
const HANDOVER_TTL_MAX_S: i64 = 1800;

/// The body of `POST /v1/events/{id}/handover`: the cart and, optionally, how long the
/// pay link stays open (`ttl_seconds`, 5..=1800, default 600).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoverBody {
    items: Vec<CartItem>,
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

/// The pay link's lifetime in milliseconds, or 422 `invalid_ttl` when out of bounds.
fn handover_ttl_ms(ttl_seconds: Option<i64>) -> Result<i64, ApiError> {
    let s = ttl_seconds.unwrap_or(HANDOVER_TTL_DEFAULT_S);
    if !(HANDOVER_TTL_MIN_S..=HANDOVER_TTL_MAX_S).contains(&s) {
        return Err(ApiError::new(
            422,
            "invalid_ttl",
            format!(
                "ttl_seconds must be between {HANDOVER_TTL_MIN_S} and {HANDOVER_TTL_MAX_S} seconds."
            ),
        ));
    }
    Ok(s * 1000)
}

/// `POST /v1/events/{id}/handover`: a staff terminal opens a pay link for a cart.
pub async fn create_handover(
    env: &Env,
    ctx: &Ctx,
    event_id: &str,
    origin: Option<String>,
    body: HandoverBody,
) -> Result<Response, ApiError> {
    let ttl_ms = handover_ttl_ms(body.ttl_seconds)?;
    let c = config(env, event_id, ctx.now_ms).await?;
    let cors = cors_origin(&c, origin.as_deref(), &ctx.self_origin)?;
    let bundle = bundle_of(env, &c, ctx.now_ms).await;
    let quote = quote_cart(&c, &bundle, &body.items, ctx.now_ms)?;
    let sid = format!("hs_{}_{}", hex::encode(random::<8>()?), event_id);
    let items: Vec<serde_json::Value> = body
        .items
        .iter()
        .map(|i| serde_json::json!({"sku": i.sku, "quantity": i.quantity}))
        .collect();
    let expires_ms = ctx.now_ms + ttl_ms;
    let session = serde_json::json!({
        "session_id": sid, "event_id": event_id, "items": items, "total": quote.total,
        "currency": c.currency, "status": "open", "created_ms": ctx.now_ms, "expires_ms": expires_ms,
        "expires_at": crate::time::iso8601(expires_ms),
    });
    call(
        env,
        event_id,
        Method::Put,
        &format!("/handover/{sid}"),
        Some(session.to_string()),
    )
    .await?;
    let mut out = session.clone();
    out["pay_url"] = format!("{}/p/{sid}", ctx.self_origin).into();
    out["ws_url"] = format!("/v1/handover/{sid}/ws").into();
    out["status_url"] = format!("/v1/handover/{sid}").into();
    out["qr_url"] = format!("/v1/handover/{sid}/qr.svg").into();
    with_cors(json(201, &out)?, cors)
}

/// `GET /v1/handover/{id}`.
pub async fn get_handover(env: &Env, sid: &str) -> Result<Response, ApiError> {
    let s = handover_session(env, sid).await?;
    json(200, &s)
}

/// `GET /v1/handover/{id}/qr.svg`: the pay link as a QR code.
pub async fn handover_qr(env: &Env, ctx: &Ctx, sid: &str) -> Result<Response, ApiError> {
    handover_session(env, sid).await?;
    let svg = crate::qr::qr_svg(&format!("{}/p/{sid}", ctx.self_origin)).map_err(|e| e.to_api())?;
    super::http::raw(200, "image/svg+xml", &svg)
}

/// `GET /v1/handover/{id}/ws`: the till's live channel, served by the event's object
/// (hibernating WebSocket).
pub async fn handover_ws(env: &Env, sid: &str, req: Request) -> Result<Response, ApiError> {
    let event_id = session_event(sid).ok_or_else(|| ApiError::not_found("handover session"))?;
    if req
        .headers()
        .get("Upgrade")
        .ok()
        .flatten()
        .map(|u| u.eq_ignore_ascii_case("websocket"))
        != Some(true)
    {
        return Err(ApiError::new(
            426,
            "upgrade_required",
            "This URL speaks WebSocket; poll /v1/handover/{id} instead.",
        ));
    }
    let stub = stub(env, event_id)?;
    let mut init = RequestInit::new();
    init.with_headers(req.headers().clone());
    let fwd = Request::new_with_init(&format!("https://event/handover/{sid}/ws"), &init)
        .map_err(internal)?;
    stub.fetch_with_request(fwd).await.map_err(internal)
}

// ------------------------------------------------------------------ waiting queue

/// How often a waiting buyer's page should poll to keep its place.
const QUEUE_POLL_MS: i64 = 5_000;

fn queue_answer(reply: Reply) -> Result<Response, ApiError> {
    match reply {
        Reply::Queue { status } => json(
            200,
            &serde_json::json!({
                "ticket": status.ticket, "position": status.position, "admitted": status.admitted,
                "admitted_until": status.admitted_until_ms.map(crate::time::iso8601),
                "depth": status.depth, "poll_after_ms": QUEUE_POLL_MS,
            }),
        ),
        _ => Err(
            ApiError::new(503, "temporarily_unavailable", "Unexpected event reply.").retryable(),
        ),
    }
}

/// `POST /v1/events/{id}/queue`: join the event's waiting room.
pub async fn join_queue(env: &Env, ctx: &Ctx, event_id: &str) -> Result<Response, ApiError> {
    let random = random::<32>()?;
    queue_answer(one(env, event_id, ctx.now_ms, Command::JoinQueue { random }).await?)
}

/// `GET /v1/events/{id}/queue/{ticket}`: keep the place and learn the position.
pub async fn poll_queue(
    env: &Env,
    ctx: &Ctx,
    event_id: &str,
    ticket: &str,
) -> Result<Response, ApiError> {
    queue_answer(
        one(
            env,
            event_id,
            ctx.now_ms,
            Command::PollQueue {
                ticket: ticket.to_string(),
            },
        )
        .await?,
    )
}

// ------------------------------------------------------------------ isolate signals

/// The waiting room's depth as the event's object last reported it to this isolate.
pub(super) fn queue_depth(event_id: &str) -> u32 {
    DEPTH.with(|d| d.borrow().get(event_id).copied().unwrap_or(0))
}

/// Most events whose waiting-room depth an isolate remembers.
const DEPTH_MAX: usize = 1024;

pub(super) fn set_queue_depth(event_id: &str, depth: u32) {
    DEPTH.with(|d| {
        let mut d = d.borrow_mut();
        if d.len() >= DEPTH_MAX && !d.contains_key(event_id) {
            d.clear();
        }
        d.insert(event_id.to_string(), depth);
    });
}

// ------------------------------------------------------------------ handover and checkout

/// Claims a till's handover session for the checkout with record key `key` and returns
/// its items. A retry of the same checkout (same key) may claim again, also once the sale
/// is paid, so that it gets its stored answer.
pub(super) async fn claim_handover(
    env: &Env,
    event_id: &str,
    sid: &str,
    key: &str,
) -> Result<Vec<CartItem>, ApiError> {
    let session = handover_session(env, sid).await?;
    if session["event_id"].as_str() != Some(event_id) {
        return Err(ApiError::not_found("handover session"));
    }
    let items: Vec<CartItem> = serde_json::from_value(session["items"].clone())
        .map_err(|_| ApiError::not_found("handover session"))?;
    let claim = serde_json::json!({"order_key": key}).to_string();
    call(
        env,
        event_id,
        Method::Post,
        &format!("/handover/{sid}/claim"),
        Some(claim),
    )
    .await?;
    Ok(items)
}

/// Tells the session how its checkout ended: paid (an accepted payment) or open again
/// (nothing was charged). An outcome still unknown (`202 pending`) leaves it claimed.
pub(super) async fn settle_handover(
    env: &Env,
    event_id: &str,
    sid: &str,
    answer: &Answer,
) -> Result<(), ApiError> {
    let b = &answer.body;
    let settle = match answer.status {
        201 | 200 => serde_json::json!({
            "paid": true, "receipt_url": b["receipt_url"], "payment_status": b["status"], "order_id": b["order_id"],
        }),
        // Unknown yet, or a retry the same checkout may make (it can claim again).
        _ if answer.status == 202 || answer.retry_after_s.is_some() => return Ok(()),
        _ => serde_json::json!({"paid": false}),
    };
    call(
        env,
        event_id,
        Method::Post,
        &format!("/handover/{sid}/settle"),
        Some(settle.to_string()),
    )
    .await?;
    Ok(())
}
