//! Events: the admin routes (create, live state, sync, refunds, reconcile, export), the
//! public routes (event card, quote, checkout) and receipts. Everything that must not be
//! lost or happen twice goes through the event's Durable Object (`event_object.rs`).

use super::acquirer_io::{lane_secret, send, NoAnswer};
use super::http::{env_string, internal, json, random, Ctx};
use super::merchants::Principal;
use crate::acquirer::{self, AuthorizeOutcome, AuthorizeRequest};
use crate::error::ApiError;
use crate::ledger::{
    self, Category as SkuCategory, Command, EventConfig, IdempotencyBegin, LineRequest,
    OfflineBudget, Order, QueueAuth, QueueConfig, QueueMode, Reply, SealedCard, Sku,
};
use crate::money::{Currency, MinorUnits};
use crate::policy::{BuyerField, Category as PolicyCategory, LoadedBundle};
use crate::quote::{self, Quote, QuoteItem};
use crate::receipt::{self, CardSummary, Receipt, ReceiptKeys, ReceiptStatus};
use crate::routing::{Mode, Outcome as RouteOutcome, RetryReason, Router, Signals};
use crate::vault;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use worker::{Env, Headers, Method, Request, RequestInit, Response, Stub};

/// How long an isolate trusts a cached event configuration.
const CONFIG_TTL_MS: i64 = 5_000;
/// How long a checkout holds stock while it talks to the acquirer.
const HOLD_MS: i64 = 120_000;

thread_local! {
    static CONFIGS: RefCell<HashMap<String, (Arc<EventConfig>, i64)>> = RefCell::new(HashMap::new());
    static ROUTER: RefCell<Option<(String, Router)>> = const { RefCell::new(None) };
    static IN_FLIGHT: Cell<u32> = const { Cell::new(0) };
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

async fn one(env: &Env, event_id: &str, now_ms: i64, cmd: Command) -> Result<Reply, ApiError> {
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

fn policy_category(c: SkuCategory) -> PolicyCategory {
    match c {
        SkuCategory::Ticket => PolicyCategory::Admission,
        SkuCategory::Merchandise => PolicyCategory::Merchandise,
        SkuCategory::FoodDrink => PolicyCategory::FoodAndDrink,
    }
}

async fn bundle_of(env: &Env, c: &EventConfig, now_ms: i64) -> Arc<LoadedBundle> {
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

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CartItem {
    sku: String,
    quantity: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteBody {
    items: Vec<CartItem>,
}

fn quote_for(
    c: &EventConfig,
    bundle: &LoadedBundle,
    items: &[CartItem],
    now_ms: i64,
) -> Result<Quote, ApiError> {
    let mut q = Vec::with_capacity(items.len());
    for i in items {
        let sku = c.skus.iter().find(|s| s.id == i.sku).ok_or_else(|| {
            ApiError::new(
                422,
                "unknown_sku",
                format!(
                    "This event sells no item {:?}.",
                    i.sku.chars().take(40).collect::<String>()
                ),
            )
        })?;
        q.push(QuoteItem {
            sku: sku.id.clone(),
            name: sku.name.clone(),
            category: policy_category(sku.category),
            unit_price: sku.price,
            quantity: i.quantity,
            age_restricted: false,
        });
    }
    quote::quote_in(&q, bundle, Some(c.currency), now_ms).map_err(|e| e.to_api())
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
    json(200, &quote_for(&c, &bundle, &body.items, ctx.now_ms)?)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Buyer {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    age_confirmed: bool,
    #[serde(default)]
    consent_accepted: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    items: Vec<CartItem>,
    token: String,
    #[serde(default)]
    cvc_token: Option<String>,
    #[serde(default)]
    buyer: Buyer,
    #[serde(default)]
    admission_ticket: Option<String>,
    /// `prefer_online` (default: queue offline when the acquirer is unavailable) or
    /// `require_online` (never queue).
    #[serde(default)]
    mode: Option<String>,
    /// Pays a staff terminal's handover session (its items win over `items`).
    #[serde(default)]
    handover_session: Option<String>,
}

fn router_with<R>(env: &Env, f: impl FnOnce(&mut Router) -> R) -> Result<R, ApiError> {
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

/// `POST /v1/events/{id}/checkout`: validate, quote, hold, authorize (or queue), receipt.
pub async fn checkout(
    env: &Env,
    ctx: &Ctx,
    event_id: &str,
    idem_key: Option<String>,
    origin: Option<String>,
    raw_body: String,
) -> Result<Response, ApiError> {
    let c = config(env, event_id, ctx.now_ms).await?;
    let cors = cors_origin(&c, origin.as_deref(), &ctx.self_origin)?;
    let mut body: CheckoutBody = super::http::parse_json_body(&raw_body)?;
    if let Some(sid) = body.handover_session.clone() {
        let session = handover_session(env, &sid).await?;
        if session["event_id"].as_str() != Some(event_id) {
            return Err(ApiError::not_found("handover session"));
        }
        body.items = serde_json::from_value(session["items"].clone()).unwrap_or_default();
        let claim = serde_json::json!({"order_key": idem_key.clone()}).to_string();
        call(
            env,
            event_id,
            Method::Post,
            &format!("/handover/{sid}/claim"),
            Some(claim),
        )
        .await?;
        let result = checkout_body(env, ctx, &c, idem_key, &raw_body, body).await;
        let settle = match &result {
            Ok((status, v)) if *status < 300 => {
                serde_json::json!({"paid": true, "receipt_url": v["receipt_url"], "payment_status": v["status"], "order_id": v["order_id"]})
            }
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
        return respond_checkout(result?, cors);
    }
    let result = checkout_body(env, ctx, &c, idem_key, &raw_body, body).await?;
    respond_checkout(result, cors)
}

fn respond_checkout(
    (status, body): (u16, serde_json::Value),
    cors: Option<String>,
) -> Result<Response, ApiError> {
    let replayed = body.get("_replayed").is_some();
    let mut body = body;
    let mut timing = None;
    if let Some(o) = body.as_object_mut() {
        o.remove("_replayed");
        timing = o.remove("_server_timing");
    }
    let routing = body["routing"].as_str().map(str::to_string);
    let mut r = json(status, &body)?;
    if let Some(reason) = routing {
        r.headers_mut()
            .set("X-Poptill-Routing", &reason)
            .map_err(internal)?;
    }
    if replayed {
        r.headers_mut()
            .set("Idempotent-Replayed", "true")
            .map_err(internal)?;
    }
    if let Some(t) = timing.as_ref().and_then(|t| t.as_str()) {
        r.headers_mut().set("Server-Timing", t).map_err(internal)?;
    }
    with_cors(r, cors)
}

/// Where one checkout's time went, for its `Server-Timing` header: the calls to the event's
/// object and to the acquirer (count and wall time; the clock advances across I/O).
#[derive(Default)]
struct Trace {
    event_calls: Cell<u32>,
    event_ms: Cell<i64>,
    acquirer_calls: Cell<u32>,
    acquirer_ms: Cell<i64>,
}

impl Trace {
    fn now() -> i64 {
        worker::Date::now().as_millis() as i64
    }

    async fn event<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let t0 = Trace::now();
        let out = f.await;
        self.event_calls.set(self.event_calls.get() + 1);
        self.event_ms.set(self.event_ms.get() + (Trace::now() - t0));
        out
    }

    fn header(&self, total_ms: i64) -> String {
        let plural = |n: u32| if n == 1 { "call" } else { "calls" };
        format!(
            "event;dur={};desc=\"{} {}\", acquirer;dur={};desc=\"{} {}\", total;dur={}",
            self.event_ms.get(),
            self.event_calls.get(),
            plural(self.event_calls.get()),
            self.acquirer_ms.get(),
            self.acquirer_calls.get(),
            plural(self.acquirer_calls.get()),
            total_ms
        )
    }
}

/// Everything a checkout works out before touching the event's object: the quote under
/// the policy, the buyer's answers to its prompts, the card (detokenized in this PoP), the
/// single-use CVC, and the routing plan.
struct Prepared {
    bundle: Arc<LoadedBundle>,
    quote: Quote,
    card: crate::card::Card,
    cvc: Option<crate::secret::Secret<String>>,
    cvc_use: Option<serde_json::Value>,
    order_id: String,
    decision: crate::routing::RoutingDecision,
    first_lane: String,
}

/// The checkout: two calls to the event's object whatever happens (`/checkout/begin`:
/// idempotency, CVC, stock hold; `/checkout/finish`: outcome, signed receipt, stored
/// answer), with the acquirer in between.
async fn checkout_body(
    env: &Env,
    ctx: &Ctx,
    c: &EventConfig,
    idem_key: Option<String>,
    raw_body: &str,
    body: CheckoutBody,
) -> Result<(u16, serde_json::Value), ApiError> {
    let trace = Trace::default();
    let t0 = Trace::now();
    let mut out = checkout_traced(env, ctx, c, idem_key, raw_body, body, &trace).await;
    if let Ok((_, b)) = &mut out {
        b["_server_timing"] = trace.header(Trace::now() - t0).into();
    }
    out
}

async fn checkout_traced(
    env: &Env,
    ctx: &Ctx,
    c: &EventConfig,
    idem_key: Option<String>,
    raw_body: &str,
    body: CheckoutBody,
    tr: &Trace,
) -> Result<(u16, serde_json::Value), ApiError> {
    let event_id = c.event_id.as_str();
    let body_hash = hex::encode(Sha256::digest(raw_body.as_bytes()));
    let idem_key = match idem_key {
        Some(k) if !k.is_empty() && k.len() <= 200 && k.chars().all(|ch| ch.is_ascii_graphic()) => {
            k
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key is 1 to 200 printable ASCII characters.",
            ))
        }
        None => format!("auto_{}", hex::encode(random::<12>()?)),
    };
    let key = format!(
        "co_{}",
        &hex::encode(Sha256::digest(idem_key.as_bytes()))[..32]
    );
    let prep = prepare(env, ctx, c, &body).await;
    if let Ok(p) = &prep {
        if p.decision.mode == Mode::Reject {
            // Shed before any storage work; a retry with the same key is answered normally.
            return Err(ApiError::new(
                429,
                "overloaded",
                "The checkout is very busy right now; try again in a few seconds.",
            )
            .retryable());
        }
    }
    let hold = prep.as_ref().ok().map(|p| Command::Hold {
        order_id: p.order_id.clone(),
        lines: body
            .items
            .iter()
            .map(|i| LineRequest {
                sku: i.sku.clone(),
                qty: i.quantity,
            })
            .collect(),
        expires_ms: ctx.now_ms + HOLD_MS,
        buyer_email: body.buyer.email.clone(),
        lane: p.first_lane.clone(),
        admission_ticket: body.admission_ticket.clone(),
        charge_total: Some(p.quote.total),
    });
    // When the plan already says "store it" (every lane slow or down), the whole checkout
    // is one call: the object holds, stores the payment, signs the receipt and keeps the
    // answer, or refuses and undoes it all.
    let mut then = serde_json::Value::Null;
    if let Ok(p) = &prep {
        let require_online = body.mode.as_deref() == Some("require_online");
        if p.decision.mode == Mode::QueueOffline
            && offline_refusal(require_online, &p.bundle.bundle.offline).is_none()
        {
            let mut routing = p.decision.reason.clone();
            let parts = (
                p.bundle.as_ref(),
                &p.quote,
                &p.card,
                None,
                p.order_id.as_str(),
                p.first_lane.as_str(),
            );
            if let Ok((cmd, receipt, answer)) =
                stored_payment(env, ctx, c, parts, &mut routing, None, ctx.now_ms, tr).await
            {
                then = serde_json::json!({
                    "command": cmd, "receipt": receipt,
                    "complete": stored_answer(201, answer),
                });
            }
        }
    }
    let begin = serde_json::json!({
        "now_ms": ctx.now_ms, "key": key, "body_hash": body_hash,
        "cvc_use": prep.as_ref().ok().and_then(|p| p.cvc_use.clone()), "hold": hold,
        "then": then,
    });
    let (_, text) = tr
        .event(call(
            env,
            event_id,
            Method::Post,
            "/checkout/begin",
            Some(begin.to_string()),
        ))
        .await?;
    let begun: serde_json::Value = serde_json::from_str(&text).map_err(|_| unreadable())?;
    if let Some(d) = begun["queue_depth"].as_u64() {
        DEPTH.with(|m| {
            m.borrow_mut()
                .insert(event_id.to_string(), u32::try_from(d).unwrap_or(u32::MAX))
        });
    }
    match decode_result(&begun["begin"])? {
        Reply::Idempotency {
            result: IdempotencyBegin::New,
        } => {}
        Reply::Idempotency {
            result: IdempotencyBegin::Replay { response },
        } => {
            let stored: serde_json::Value = serde_json::from_str(&response).unwrap_or_default();
            let status = stored["status_code"].as_u64().unwrap_or(200) as u16;
            let mut b = stored["body"].clone();
            b["_replayed"] = true.into();
            return Ok((status, b));
        }
        Reply::Idempotency { result } => {
            return Err(result.as_error().unwrap_or_else(|| {
                ApiError::new(
                    409,
                    "idempotency_conflict",
                    "This Idempotency-Key is in use.",
                )
            }));
        }
        _ => return Err(unreadable()),
    }
    let spent_cvc = match (&prep, begun.get("cvc_error")) {
        (Ok(p), None) => p
            .cvc_use
            .as_ref()
            .and_then(|u| u["use_id"].as_str().map(str::to_string)),
        _ => None,
    };
    let failed = match (prep, begun.get("cvc_error")) {
        (Err(e), _) => e,
        (Ok(_), Some(e)) => decode_error(
            e["status"].as_u64().unwrap_or(409) as u16,
            &serde_json::json!({ "error": e }).to_string(),
        ),
        (Ok(p), None) => match (decode_result(&begun["hold"]), begun.get("finish")) {
            (Ok(_), None) => return pay(env, ctx, c, &body, p, &key, tr).await,
            // Stored in the same call; or refused, and the object undid the hold and the key.
            (Ok(_), Some(f)) => {
                return match finish_answer(f) {
                    Ok(Some(answer)) => {
                        super::telemetry::queued(ctx, event_id, &p.first_lane, &p.bundle, &p.quote);
                        Ok(answer)
                    }
                    Ok(None) => Err(budget_refusal(&unreadable())),
                    Err(e) => Err(budget_refusal(&e)),
                };
            }
            (Err(e), _) => e,
        },
    };
    // Failed before any payment: keep the answer for replays, or forget the key when the
    // client should simply retry.
    let complete = if failed.retryable || failed.status >= 500 {
        serde_json::json!({"kind": "abandon", "release_cvc": spent_cvc})
    } else {
        stored_answer(failed.status, failed.body())
    };
    let _ = finish_call(env, event_id, ctx.now_ms, &key, None, None, complete, tr).await;
    if failed.retryable || failed.status >= 500 {
        return Err(failed);
    }
    Ok((failed.status, failed.body()))
}

fn unreadable() -> ApiError {
    ApiError::new(
        503,
        "temporarily_unavailable",
        "The event answered unreadably.",
    )
    .retryable()
}

/// Decodes one `{"ok": reply}` / `{"error": .., "status": ..}` result from the object.
fn decode_result(v: &serde_json::Value) -> Result<Reply, ApiError> {
    if let Some(ok) = v.get("ok") {
        serde_json::from_value::<Reply>(ok.clone()).map_err(|_| unreadable())
    } else if v.get("error").is_some() {
        let status = v.get("status").and_then(|s| s.as_u64()).unwrap_or(400) as u16;
        Err(decode_error(
            status,
            &serde_json::json!({"error": v.get("error")}).to_string(),
        ))
    } else {
        Err(unreadable())
    }
}

/// The checkout's second call; returns the stored answer (`None` when abandoned).
#[allow(clippy::too_many_arguments)]
async fn finish_call(
    env: &Env,
    event_id: &str,
    now_ms: i64,
    key: &str,
    command: Option<Command>,
    receipt: Option<Receipt>,
    complete: serde_json::Value,
    tr: &Trace,
) -> Result<Option<(u16, serde_json::Value)>, ApiError> {
    let body = serde_json::json!({
        "now_ms": now_ms, "key": key, "command": command, "receipt": receipt, "complete": complete,
    });
    let (_, text) = tr
        .event(call(
            env,
            event_id,
            Method::Post,
            "/checkout/finish",
            Some(body.to_string()),
        ))
        .await?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| unreadable())?;
    finish_answer(&v)
}

/// Decodes a finish result (`/checkout/finish`, or the `finish` of a one-call
/// `/checkout/begin`): the stored answer, `None` when the key was abandoned, or the error.
fn finish_answer(v: &serde_json::Value) -> Result<Option<(u16, serde_json::Value)>, ApiError> {
    let Some(ok) = v.get("ok") else {
        return Err(decode_result(v).err().unwrap_or_else(unreadable));
    };
    let answer = &ok["answer"];
    if answer.is_null() {
        return Ok(None);
    }
    let status = answer["status_code"].as_u64().unwrap_or(200) as u16;
    Ok(Some((status, answer["body"].clone())))
}

/// How a finish call closes the idempotency record: keep this answer for replays.
fn stored_answer(status: u16, body: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"kind": "answer", "status_code": status, "body": body})
}

/// A declined payment's finish call: release the stock and keep the 402 answer.
/// `(code, message, release_reason)`: what the buyer is told, and why the ledger releases.
#[allow(clippy::too_many_arguments)]
async fn finish_declined(
    env: &Env,
    event_id: &str,
    now_ms: i64,
    key: &str,
    order_id: &str,
    routing: &str,
    (code, message, release_reason): (&str, &str, &str),
    tr: &Trace,
) -> Result<Option<(u16, serde_json::Value)>, ApiError> {
    let body = serde_json::json!({
        "status": "declined", "order_id": order_id, "routing": routing,
        "decline": {"code": code, "message": message},
        "error": {"code": code, "message": message, "retryable": false},
        "message": message,
    });
    let release = Command::Release {
        order_id: order_id.to_string(),
        reason: release_reason.to_string(),
    };
    finish_call(
        env,
        event_id,
        now_ms,
        key,
        Some(release),
        None,
        stored_answer(402, body),
        tr,
    )
    .await
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

/// Quote, prompts, card and CVC, routing plan: no storage writes.
async fn prepare(
    env: &Env,
    ctx: &Ctx,
    c: &EventConfig,
    body: &CheckoutBody,
) -> Result<Prepared, ApiError> {
    let event_id = c.event_id.as_str();
    let bundle = bundle_of(env, c, ctx.now_ms).await;
    let quote = quote_for(c, &bundle, &body.items, ctx.now_ms)?;
    let prompts = &quote.prompts;
    if let Some(gate) = &prompts.age_gate {
        if !body.buyer.age_confirmed {
            return Err(ApiError::new(
                422,
                "age_confirmation_required",
                format!(
                    "The buyer must confirm being at least {} years old.",
                    gate.min_age
                ),
            ));
        }
    }
    if !prompts.consent.is_empty() && !body.buyer.consent_accepted {
        return Err(ApiError::new(
            422,
            "consent_required",
            "The buyer must accept the consent text shown at checkout.",
        ));
    }
    if prompts.buyer_fields.contains(&BuyerField::Email)
        && body.buyer.email.as_deref().unwrap_or("").is_empty()
    {
        return Err(ApiError::new(
            422,
            "email_required",
            "An e-mail address is needed here for the receipt.",
        ));
    }
    let binding = super::vault::binding(&c.merchant_id, event_id);
    let card = super::vault::detokenize(env, &body.token, &binding, ctx.now_ms).await?;
    let (cvc, cvc_use) = match &body.cvc_token {
        Some(cvt) => {
            let key = super::vault::key_for_token(env, cvt, ctx.now_ms).await?;
            let opened =
                vault::detokenize_cvc(cvt, &body.token, &binding, |_| key.as_ref(), ctx.now_ms)
                    .map_err(|e| e.to_api())?;
            let use_body =
                serde_json::json!({"use_id": opened.use_id, "expires_at_ms": opened.expires_at_ms});
            (Some(opened.cvc), Some(use_body))
        }
        None => (None, None),
    };
    let order_id = format!("ord_{}", hex::encode(random::<8>()?));
    let depth_probe = DEPTH.with(|d| d.borrow().get(event_id).copied().unwrap_or(0));
    let in_flight = IN_FLIGHT.with(|f| f.get());
    let decision = router_with(env, |r| {
        r.plan(
            ctx.now_ms,
            Signals {
                queue_depth: depth_probe,
                requests_in_flight: in_flight,
                amount_minor: quote.total.0,
                require_online: body.mode.as_deref() == Some("require_online")
                    || quote.total.0
                        > c.offline
                            .per_transaction_max
                            .0
                            .min(bundle.bundle.offline.per_transaction_cap.0),
            },
        )
    })?;
    let first_lane = decision
        .lanes_in_order
        .first()
        .map(|a| a.lane_name.clone())
        .unwrap_or_else(|| {
            router_with(env, |r| {
                r.snapshot(ctx.now_ms)
                    .lanes
                    .first()
                    .map(|l| l.name.clone())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
        });
    Ok(Prepared {
        bundle,
        quote,
        card,
        cvc,
        cvc_use,
        order_id,
        decision,
        first_lane,
    })
}

/// After the hold: authorize on the planned lanes, or queue offline, and finish. Any
/// failure here releases the stock and frees the idempotency key.
async fn pay(
    env: &Env,
    ctx: &Ctx,
    c: &EventConfig,
    body: &CheckoutBody,
    p: Prepared,
    key: &str,
    tr: &Trace,
) -> Result<(u16, serde_json::Value), ApiError> {
    let order_id = p.order_id.clone();
    let cvc_use = p
        .cvc_use
        .as_ref()
        .and_then(|u| u["use_id"].as_str().map(str::to_string));
    match pay_inner(env, ctx, c, body, p, key, tr).await {
        Ok(answer) => Ok(answer),
        Err((e, released)) => {
            let now = worker::Date::now().as_millis() as i64;
            let release = (!released).then(|| Command::Release {
                order_id,
                reason: e.code.to_string(),
            });
            let _ = finish_call(
                env,
                &c.event_id,
                now,
                key,
                release,
                None,
                // The client may retry at once with the same body: give its CVC back.
                serde_json::json!({"kind": "abandon", "release_cvc": cvc_use}),
                tr,
            )
            .await;
            Err(e)
        }
    }
}

/// `Err((error, stock_already_released))`.
async fn pay_inner(
    env: &Env,
    ctx: &Ctx,
    c: &EventConfig,
    body: &CheckoutBody,
    p: Prepared,
    key: &str,
    tr: &Trace,
) -> Result<(u16, serde_json::Value), (ApiError, bool)> {
    let event_id = c.event_id.as_str();
    let Prepared {
        bundle,
        quote,
        card,
        cvc,
        order_id,
        decision,
        first_lane,
        ..
    } = p;
    let fail = |e: ApiError| (e, false);
    let mut routing = decision.reason.clone();
    // The lane of an attempt the acquirer may have acted on without telling us.
    let mut unknown_on: Option<String> = None;
    let finished = |r: Result<Option<(u16, serde_json::Value)>, ApiError>| match r {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err((unreadable(), true)),
        Err(e) => Err((e, false)),
    };
    if decision.mode == Mode::Online {
        for (i, attempt) in decision.lanes_in_order.iter().enumerate() {
            let now = worker::Date::now().as_millis() as i64;
            let Some(timeout) = decision.attempt_timeout_ms(i, now) else {
                break;
            };
            let Some(permit) = router_with(env, |r| r.acquire(attempt, now)).map_err(fail)? else {
                routing.push_str(&format!("; {} over limit", attempt.lane_name));
                continue;
            };
            let lane = router_with(env, |r| r.lane_config(attempt.lane).cloned()).map_err(fail)?;
            let Some(lane) = lane else { continue };
            let call = acquirer::build_authorize(
                &lane.base_url,
                &lane_secret(env, &lane),
                &AuthorizeRequest {
                    amount: quote.total,
                    currency: c.currency,
                    card_number: card.number().clone(),
                    exp_month: card.exp_month,
                    exp_year: card.exp_year,
                    cvc: cvc.clone(),
                    idempotency_key: format!("{order_id}_online"),
                    order_id: order_id.clone(),
                    event_id: event_id.to_string(),
                    capture: true,
                },
            )
            .map_err(|e| fail(e.to_api()))?;
            IN_FLIGHT.with(|f| f.set(f.get() + 1));
            let sent = send(&call, u64::from(timeout)).await;
            tr.acquirer_calls.set(tr.acquirer_calls.get() + 1);
            tr.acquirer_ms
                .set(tr.acquirer_ms.get() + (Trace::now() - now));
            IN_FLIGHT.with(|f| f.set(f.get().saturating_sub(1)));
            let done = worker::Date::now().as_millis() as i64;
            let rtt = u32::try_from((done - now).max(0)).unwrap_or(u32::MAX);
            let outcome = match &sent {
                Ok((status, text)) => acquirer::parse_authorize(*status, text),
                Err(NoAnswer::Timeout) => AuthorizeOutcome::Retryable {
                    reason: "timeout".into(),
                    new_attempt: false,
                },
                Err(NoAnswer::Network) => AuthorizeOutcome::Retryable {
                    reason: "connection refused".into(),
                    new_attempt: false,
                },
            };
            let route_outcome = match &outcome {
                AuthorizeOutcome::Approved { .. } => RouteOutcome::Ok,
                AuthorizeOutcome::Declined { .. } | AuthorizeOutcome::Invalid { .. } => {
                    RouteOutcome::Declined
                }
                AuthorizeOutcome::Retryable { .. } => RouteOutcome::Retryable(match sent {
                    Err(NoAnswer::Timeout) => RetryReason::Timeout,
                    Err(NoAnswer::Network) => RetryReason::ConnectionRefused,
                    Ok((429, _)) => RetryReason::RateLimited,
                    Ok(_) => RetryReason::ServerError,
                }),
            };
            // Did the acquirer perhaps act on it? A timeout or a 5xx after sending may hide a
            // charge; a refused connection or a 429 did not reach (or was not processed).
            let unknown_outcome = matches!(sent, Err(NoAnswer::Timeout))
                || matches!(&sent, Ok((status, _)) if *status >= 500);
            router_with(env, |r| r.on_complete(permit, rtt, route_outcome, done)).map_err(fail)?;
            match outcome {
                AuthorizeOutcome::Approved {
                    payment_intent_id, ..
                } => {
                    routing.push_str(&format!("; approved on {}", lane.name));
                    super::telemetry::approved(ctx, event_id, &lane.name, &bundle, &quote);
                    let (receipt, body) = receipt_and_answer(
                        ctx,
                        c,
                        &bundle,
                        &quote,
                        &order_id,
                        &card,
                        ReceiptStatus::Approved,
                        &lane.name,
                        &routing,
                        "Payment approved.",
                    )
                    .map_err(fail)?;
                    let confirm = Command::Confirm {
                        order_id: order_id.clone(),
                        charge_id: payment_intent_id,
                        lane: Some(lane.name.clone()),
                    };
                    return finished(
                        finish_call(
                            env,
                            event_id,
                            done,
                            key,
                            Some(confirm),
                            Some(receipt),
                            stored_answer(201, body),
                            tr,
                        )
                        .await,
                    );
                }
                AuthorizeOutcome::Declined {
                    reason, message, ..
                } => {
                    routing.push_str(&format!("; declined on {}", lane.name));
                    super::telemetry::declined(ctx, event_id, &lane.name, &bundle, reason.as_str());
                    let code = reason.as_str();
                    return finished(
                        finish_declined(
                            env,
                            event_id,
                            done,
                            key,
                            &order_id,
                            &routing,
                            (code, message, code),
                            tr,
                        )
                        .await,
                    );
                }
                AuthorizeOutcome::Invalid { code, .. } => {
                    routing.push_str(&format!("; {} refused the request ({code})", lane.name));
                    super::telemetry::declined(
                        ctx,
                        event_id,
                        &lane.name,
                        &bundle,
                        "processing_error",
                    );
                    let msg = "The payment could not be processed. Try another card.";
                    return finished(
                        finish_declined(
                            env,
                            event_id,
                            done,
                            key,
                            &order_id,
                            &routing,
                            ("processing_error", msg, &code),
                            tr,
                        )
                        .await,
                    );
                }
                AuthorizeOutcome::Retryable { reason, .. } => {
                    routing.push_str(&format!("; {} {}", lane.name, reason));
                    if unknown_outcome {
                        // Never try another lane now: that could charge the card twice.
                        // Complete this attempt later, same lane, same idempotency key.
                        routing
                            .push_str(&format!("; outcome unknown, completing on {}", lane.name));
                        unknown_on = Some(lane.name.clone());
                        break;
                    }
                }
            }
        }
    }
    // Offline: the acquirer is unavailable (or the plan said so). Queue within the budget.
    // Both refusals are 402s with `retryable: true`, like Stripe's `try_again_later`: the
    // edge is healthy, the payment could not be made now, nothing was charged.
    let require_online = body.mode.as_deref() == Some("require_online");
    let limits = &bundle.bundle.offline;
    let now = worker::Date::now().as_millis() as i64;
    if unknown_on.is_none() {
        if let Some(refusal) = offline_refusal(require_online, limits) {
            return Err(fail(refusal));
        }
    }
    let (queue, receipt, answer_body) = stored_payment(
        env,
        ctx,
        c,
        (&bundle, &quote, &card, cvc.as_ref(), &order_id, &first_lane),
        &mut routing,
        unknown_on.as_deref(),
        now,
        tr,
    )
    .await
    .map_err(fail)?;
    match finish_call(
        env,
        event_id,
        now,
        key,
        Some(queue),
        Some(receipt),
        stored_answer(201, answer_body),
        tr,
    )
    .await
    {
        Ok(Some(a)) => {
            super::telemetry::queued(ctx, event_id, &first_lane, &bundle, &quote);
            Ok(a)
        }
        Ok(None) => Err((unreadable(), true)),
        Err(e) if e.status < 500 => Err((budget_refusal(&e), false)),
        Err(e) => Err((e, false)),
    }
}

/// Why a payment may not be stored offline here, if it may not.
fn offline_refusal(
    require_online: bool,
    limits: &crate::policy::OfflineLimits,
) -> Option<ApiError> {
    if !require_online && limits.per_transaction_cap.0 > 0 {
        return None;
    }
    let why = if require_online {
        "online payment required"
    } else {
        "this place's policy allows no offline payments"
    };
    Some(ApiError::new(402, "acquirer_unavailable", format!("The card acquirer is not answering right now ({why}); nothing was charged. Try again in a minute.")).retryable())
}

/// The finish call's parts for a stored payment: the `QueueAuthorization`, the queued
/// receipt and the answer. `unknown_on` names the lane of an online attempt whose outcome
/// is unknown (the payment then completes that attempt, see `QueueAuth::resolves_attempt`).
#[allow(clippy::too_many_arguments)]
async fn stored_payment(
    env: &Env,
    ctx: &Ctx,
    c: &EventConfig,
    (bundle, quote, card, cvc, order_id, first_lane): (
        &LoadedBundle,
        &Quote,
        &crate::card::Card,
        Option<&crate::secret::Secret<String>>,
        &str,
        &str,
    ),
    routing: &mut String,
    unknown_on: Option<&str>,
    now: i64,
    tr: &Trace,
) -> Result<(Command, Receipt, serde_json::Value), ApiError> {
    let event_id = c.event_id.as_str();
    let limits = &bundle.bundle.offline;
    let resolving = unknown_on.is_some();
    let sf_key = sf_key(env, event_id, now, tr).await?;
    let auth_id = format!("auth_{}", order_id.trim_start_matches("ord_"));
    // Completing an attempt repeats it exactly, so its CVC is sealed with the card until
    // the payment is final; a payment never sent is stored without the CVC.
    let sealed = vault::seal_for_forwarding(
        &sf_key,
        event_id,
        &auth_id,
        card,
        if resolving { cvc } else { None },
        random::<12>()?,
    )
    .map_err(|e| e.to_api())?;
    let (message, lane, idempotency_key, max_wait_ms) = match unknown_on {
        Some(lane) => (
            "The card acquirer did not confirm this payment in time. It is stored securely and will be confirmed with the acquirer automatically; it is never charged twice. Your receipt shows it as queued until then.",
            lane.to_string(),
            format!("{order_id}_online"),
            ledger::MAX_OFFLINE_WAIT_MS,
        ),
        None => {
            routing.push_str("; queued offline");
            (
                "Accepted offline: the card acquirer is not answering, so this payment is stored securely and will be charged automatically when it is back. Your receipt shows it as queued until then.",
                first_lane.to_string(),
                format!("{order_id}_queued"),
                i64::try_from(limits.max_queue_age_secs)
                    .unwrap_or(86_400)
                    .saturating_mul(1000),
            )
        }
    };
    let (receipt, answer_body) = receipt_and_answer(
        ctx,
        c,
        bundle,
        quote,
        order_id,
        card,
        ReceiptStatus::Queued,
        &lane,
        routing,
        message,
    )?;
    let queue = Command::QueueAuthorization(QueueAuth {
        auth_id,
        order_id: order_id.to_string(),
        amount: quote.total,
        currency: c.currency,
        card_fingerprint: vault::card_fingerprint(&sf_key, card),
        sealed_card: SealedCard(sealed),
        idempotency_key,
        max_wait_ms,
        lane: Some(lane),
        resolves_attempt: resolving,
    });
    Ok((queue, receipt, answer_body))
}

fn budget_refusal(e: &ApiError) -> ApiError {
    let mut err = ApiError::new(402, "offline_budget_exhausted", format!("The card acquirer is not answering and this event's offline limit is reached ({}); nothing was charged. Try again in a minute.", e.message)).retryable();
    err.message.truncate(400);
    err
}

thread_local! {
    /// Each event's store-and-forward key, wrapped by the KEK, as its object keeps it.
    static SF_KEYS: RefCell<HashMap<String, (String, i64)>> = RefCell::new(HashMap::new());
}

/// How long an isolate keeps an event's wrapped store-and-forward key.
const SF_KEY_TTL_MS: i64 = 60_000;

/// The event's store-and-forward key, unwrapped with the KEK (the wrapped form is cached
/// per isolate, so a queued checkout does not cost a third call to the object).
async fn sf_key(
    env: &Env,
    event_id: &str,
    now_ms: i64,
    tr: &Trace,
) -> Result<crate::secret::Secret<[u8; 32]>, ApiError> {
    let keks = super::vault::keks(env)?;
    let cached = SF_KEYS.with(|m| {
        m.borrow()
            .get(event_id)
            .filter(|(_, at)| now_ms - at < SF_KEY_TTL_MS)
            .map(|(w, _)| w.clone())
    });
    if let Some(wrapped) = cached {
        if let Ok(k) = vault::unwrap_sf_key(&keks, event_id, &wrapped) {
            return Ok(k);
        }
    }
    let (_, text) = tr
        .event(call(env, event_id, Method::Get, "/sf-key", None))
        .await?;
    let wrapped = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["wrapped"].as_str().map(str::to_string))
        .unwrap_or_default();
    let key = vault::unwrap_sf_key(&keks, event_id, &wrapped).map_err(|e| e.to_api())?;
    SF_KEYS.with(|m| {
        m.borrow_mut()
            .insert(event_id.to_string(), (wrapped, now_ms))
    });
    Ok(key)
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

/// The unsigned receipt (the object numbers and signs it) and the answer around it.
#[allow(clippy::too_many_arguments)]
fn receipt_and_answer(
    ctx: &Ctx,
    c: &EventConfig,
    bundle: &LoadedBundle,
    quote: &Quote,
    order_id: &str,
    card: &crate::card::Card,
    status: ReceiptStatus,
    lane: &str,
    routing: &str,
    message: &str,
) -> Result<(Receipt, serde_json::Value), ApiError> {
    let (lines, tax_breakdown, totals) = receipt::priced_from_quote(quote);
    let receipt = Receipt {
        id: String::new(),
        event_id: c.event_id.clone(),
        merchant_id: c.merchant_id.clone(),
        order_id: order_id.to_string(),
        lines,
        tax_breakdown,
        totals,
        card: CardSummary {
            brand: card.brand().as_str().to_string(),
            last4: receipt::Last4::parse(&card.last4()).map_err(|e| e.to_api())?,
        },
        status,
        policy_revision: bundle.revision.to_string(),
        policy_hash: bundle.hash.clone(),
        pop_colo: ctx.colo.clone(),
        lane: lane.to_string(),
        created_ms: ctx.now_ms,
        updated_ms: ctx.now_ms,
        refunded_amount: None,
    };
    let state = match status {
        ReceiptStatus::Queued => "queued",
        _ => "approved",
    };
    Ok((
        receipt,
        serde_json::json!({
            "status": state, "order_id": order_id,
            "total": quote.total, "currency": c.currency, "brand": card.brand().as_str(), "last4": card.last4(),
            "policy_revision": bundle.revision, "policy_hash": bundle.hash, "routing": routing, "message": message,
        }),
    ))
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
    let quote = quote_for(&c, &bundle, &body.items, ctx.now_ms)?;
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
