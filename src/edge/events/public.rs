//! The public routes of events: the event card, quotes, receipts and the waiting room.

use super::*;
use crate::api::answers::{
    EventPublic, PublicSku, QueueTicket, ReceiptVerified, ReportVerified, RoutingState, Verified,
};
use crate::api::bodies::QuoteBody;

// ------------------------------------------------------------------ public routes

pub(in crate::edge) async fn bundle_of(
    env: &Env,
    c: &EventConfig,
    now_ms: i64,
) -> Arc<LoadedBundle> {
    let pin = c.policy_revision.as_deref().and_then(|r| r.parse().ok());
    crate::edge::policy::bundle_for(env, &c.jurisdiction, pin, now_ms).await
}

/// CORS for a card or till route: the event's allowed origins, decided by
/// [`crate::origin::check`]. Returns the header value to send back, if any.
pub fn cors_origin(
    rule: crate::origin::OriginRule,
    c: &EventConfig,
    origin: Option<&str>,
    self_origin: &str,
) -> Result<Option<String>, ApiError> {
    crate::origin::check(rule, origin, self_origin, &c.allowed_origins)
}

/// `GET /v1/events/{id}/public`: what a checkout page shows before the quote.
pub async fn public(env: &Env, ctx: &Ctx, event_id: &str) -> Result<Response, ApiError> {
    let c = config(env, event_id, ctx.now_ms).await?;
    let summary = object::summary(env, event_id).await?;
    let bundle = bundle_of(env, &c, ctx.now_ms).await;
    let available: HashMap<&str, u32> = summary
        .skus
        .iter()
        .map(|s| (s.sku.as_str(), s.available))
        .collect();
    let skus = c
        .skus
        .iter()
        .map(|s| PublicSku {
            id: s.id.clone(),
            name: s.name.clone(),
            category: s.category,
            price: s.price,
            available: available.get(s.id.as_str()).copied().unwrap_or(s.stock),
        })
        .collect();
    json(
        200,
        &EventPublic {
            event_id: c.event_id.clone(),
            title: c.title.clone(),
            currency: c.currency,
            currency_exponent: c.currency.exponent(),
            languages: bundle.bundle.languages.clone(),
            jurisdiction: c.jurisdiction.clone(),
            skus,
            allowed_origins: c.allowed_origins.clone(),
            start_ms: c.start_ms,
            end_ms: c.end_ms,
        },
    )
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

pub(in crate::edge) fn router_with<R>(
    env: &Env,
    f: impl FnOnce(&mut Router) -> R,
) -> Result<R, ApiError> {
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
    json(
        200,
        &RoutingState {
            colo: ctx.colo.clone(),
            routing: snap,
        },
    )
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

// ------------------------------------------------------------------ receipts

/// The event a receipt belongs to: `rcpt_<event_id>-<n>`.
pub(in crate::edge) fn receipt_event(receipt_id: &str) -> Option<&str> {
    receipt_id
        .strip_prefix("rcpt_")
        .and_then(|r| r.rsplit_once('-'))
        .map(|(e, _)| e)
}

/// `GET /v1/receipts/{id}` (`{id}` is `<receipt id>.<token>`, see [`receipt::url`]): JSON,
/// or an HTML page when a browser asks for HTML.
pub async fn get_receipt(
    env: &Env,
    receipt_id: &str,
    wants_html: bool,
) -> Result<Response, ApiError> {
    // The URL is a capability (`<id>.<token>`): a bare or counted id is not found, as if
    // it did not exist.
    let keys = crate::edge::http::receipt_keys(env).map_err(|_| ApiError::not_found("receipt"))?;
    let receipt_id =
        receipt::open_url(&keys, receipt_id).ok_or_else(|| ApiError::not_found("receipt"))?;
    let event_id = receipt_event(receipt_id).ok_or_else(|| ApiError::not_found("receipt"))?;
    let text = object::receipt(env, event_id, receipt_id).await?;
    if wants_html {
        let signed = receipt::SignedReceipt::from_json(&text).map_err(|e| e.to_api())?;
        let html = receipt::render_html(&signed);
        let r = crate::edge::http::raw(200, "text/html; charset=utf-8", &html)?;
        return capability_headers(r, true);
    }
    capability_headers(
        crate::edge::http::raw(200, "application/json", &text)?,
        false,
    )
}

/// `GET /v1/events/{id}/checkouts/{order}.{token}`: where a checkout that answered
/// `202 pending` stands (`crate::checkout::status`). A wrong token is not found, as if the
/// checkout did not exist.
pub async fn checkout_status(
    env: &Env,
    ctx: &Ctx,
    event_id: &str,
    part: &str,
    origin: Option<&str>,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found("checkout");
    let keys = crate::edge::http::receipt_keys(env).map_err(|_| missing())?;
    let order_id = crate::checkout::status::open(&keys, event_id, part).ok_or_else(missing)?;
    let c = config(env, event_id, ctx.now_ms).await?;
    let cors = cors_origin(
        crate::origin::OriginRule::CardPages,
        &c,
        origin,
        &ctx.self_origin,
    )?;
    let order = match object::order(env, event_id, order_id).await {
        Err(e) if e.status == 404 => return Err(missing()),
        r => r?,
    };
    let view = crate::checkout::status::view(&order, Some(&keys));
    let mut r = json(view.status, &view.body)?;
    if let Some(s) = view.body["retry_after_s"].as_u64() {
        r.headers_mut()
            .set("Retry-After", &s.to_string())
            .map_err(internal)?;
    }
    with_cors(capability_headers(r, false)?, cors)
}

/// A receipt's URL is a capability: its page runs nothing, is framed by nobody, never
/// sends its URL on as a referrer and is kept by no shared cache.
fn capability_headers(mut r: Response, html: bool) -> Result<Response, ApiError> {
    let h = r.headers_mut();
    let set = |k: &str, v: &str| h.set(k, v).map_err(crate::edge::http::internal);
    set("X-Content-Type-Options", "nosniff")?;
    set("Referrer-Policy", "no-referrer")?;
    set("Cache-Control", "private, no-store")?;
    if html {
        set(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        )?;
        set("X-Frame-Options", "DENY")?;
    }
    Ok(r)
}

/// `POST /v1/receipts/verify`: anyone holding a receipt, or an event's signed report, can
/// check it.
pub fn verify_receipt(env: &Env, body: &str) -> Result<Response, ApiError> {
    let keys = crate::edge::http::receipt_keys(env)?;
    let is_report =
        serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| v.get("report").is_some());
    if is_report {
        let signed = receipt::SignedReport::from_json(body).map_err(|e| e.to_report_api())?;
        receipt::verify_report(&signed, &keys).map_err(|e| e.to_report_api())?;
        let r = &signed.report;
        return json(
            200,
            &Verified::Report(ReportVerified {
                valid: true,
                kind: "report",
                event_id: r.event_id.clone(),
                generated_ms: r.generated_ms,
                end_of_event: r.end_of_event,
                clean: r.clean,
                kid: signed.signature.kid.clone(),
            }),
        );
    }
    let signed = receipt::SignedReceipt::from_json(body).map_err(|e| e.to_api())?;
    receipt::verify(&signed, &keys).map_err(|e| e.to_api())?;
    json(
        200,
        &Verified::Receipt(ReceiptVerified {
            valid: true,
            receipt_id: signed.receipt.id,
            status: signed.receipt.status,
            kid: signed.signature.kid,
            policy_revision: signed.receipt.policy_revision,
        }),
    )
}

// ------------------------------------------------------------------ waiting queue

/// How often a waiting buyer's page should poll to keep its place.
pub(in crate::edge) const QUEUE_POLL_MS: i64 = 5_000;

pub(in crate::edge) fn queue_answer(reply: Reply) -> Result<Response, ApiError> {
    match reply {
        Reply::Queue { status } => json(
            200,
            &QueueTicket {
                ticket: status.ticket,
                position: status.position,
                admitted: status.admitted,
                admitted_until: status.admitted_until_ms.map(crate::time::iso8601),
                depth: status.depth,
                poll_after_ms: QUEUE_POLL_MS,
            },
        ),
        _ => Err(
            ApiError::new(503, "temporarily_unavailable", "Unexpected event reply.").retryable(),
        ),
    }
}

/// `POST /v1/events/{id}/queue`: join the event's waiting room.
pub async fn join_queue(env: &Env, ctx: &Ctx, event_id: &str) -> Result<Response, ApiError> {
    let random = random::<32>()?;
    queue_answer(object::one(env, event_id, ctx.now_ms, Command::JoinQueue { random }).await?)
}

/// `GET /v1/events/{id}/queue/{ticket}`: keep the place and learn the position.
pub async fn poll_queue(
    env: &Env,
    ctx: &Ctx,
    event_id: &str,
    ticket: &str,
) -> Result<Response, ApiError> {
    queue_answer(
        object::one(
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
