//! The admin routes of events: create, live state, sync, refunds, reconcile, the signed
//! report, export, and the isolate's routing state.

use super::*;
use crate::api::answers::{EventCreated, EventShown, PolicyRef, Synced};
use crate::api::bodies::{NewEvent, RefundBody};
use crate::event_protocol::ExportFormat;

// ------------------------------------------------------------------ admin routes

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
            return Err(ApiError::new(
                422,
                "merchant_id_required",
                "The operator must name the event's merchant_id.",
            ))
        }
    };
    let Some(merchant) = crate::edge::merchants::get(env, &merchant_id).await? else {
        return Err(ApiError::new(
            422,
            "unknown_merchant",
            "No merchant with that id exists; create it first.",
        ));
    };
    let currency = Currency::parse(&body.currency)
        .map_err(|e| ApiError::new(422, "invalid_currency", e.to_string()))?;
    let bundle =
        crate::edge::policy::bundle_for(env, &body.jurisdiction, body.policy_revision, ctx.now_ms)
            .await;
    let offline =
        bundle
            .bundle
            .offline
            .event_budget(body.offline, currency, &bundle.bundle.jurisdiction)?;
    let mut skus = body.skus;
    bundle
        .bundle
        .purchase
        .apply(&mut skus, &bundle.bundle.jurisdiction)?;
    let keys = crate::edge::http::receipt_keys(env)?;
    let event_id = crate::event_id::new(&keys, random::<8>()?);
    let config = EventConfig {
        event_id: event_id.clone(),
        merchant_id,
        title: body.title,
        jurisdiction: body.jurisdiction,
        currency,
        start_ms: body.start_ms,
        end_ms: body.end_ms,
        skus,
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
    let summary = object::init(env, &config).await?;
    if let (Some(url), Some(secret)) = (&merchant.webhook_url, &merchant.webhook_secret) {
        object::set_webhook(env, &event_id, url, secret).await?;
    }
    json(
        201,
        &EventCreated {
            event_id,
            config,
            policy: PolicyRef {
                jurisdiction: bundle.bundle.jurisdiction.clone(),
                revision: bundle.revision,
                hash: bundle.hash.clone(),
            },
            summary,
        },
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
    let summary = object::summary(env, event_id).await?;
    json(
        200,
        &EventShown {
            event_id,
            config: &c,
            summary,
        },
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
    let reply = object::one(env, event_id, ctx.now_ms, Command::SyncNow).await?;
    let summary = object::summary(env, event_id).await?;
    json(
        200,
        &Synced {
            result: reply,
            summary,
        },
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
    json(200, &object::reconcile(env, event_id).await?)
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
    let signed = object::report(env, event_id).await?;
    crate::edge::http::raw(200, "application/json", &signed)
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
    let Some(format) = ExportFormat::parse(format) else {
        return Err(ApiError::bad_request(
            "invalid_format",
            "format is csv or ndjson.",
        ));
    };
    let bundle = bundle_of(env, &c, ctx.now_ms).await;
    let email = bundle
        .bundle
        .compliance
        .buyer_fields
        .contains(&BuyerField::Email);
    let text = object::export(env, event_id, format, email).await?;
    crate::edge::http::raw(200, format.content_type(), &text)
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
    let idem = crate::api::idempotency_key(idem.as_deref())?;
    let c = managed(env, who, event_id, ctx.now_ms).await?;
    let bundle = bundle_of(env, &c, ctx.now_ms).await;
    let order = object::order(env, event_id, &body.order_id).await?;
    let rule = crate::refunds::rule(&order, &c.skus, &bundle.bundle.refunds, body.goodwill);
    let refund_id = crate::refunds::refund_id(event_id, idem, random::<8>()?);
    let reply = object::one(
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
