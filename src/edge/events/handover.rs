//! Staff-terminal handover: pay links and their QR codes, the till's WebSocket, and the
//! claim and settle a checkout makes for a handover sale.

use super::*;
use crate::event_protocol::{HandoverSettle, ObjectRequest};

// ------------------------------------------------------------------ staff-terminal handover

/// Handover session ids carry their event: `hs_<16 hex>_<event_id>`.
pub(in crate::edge) fn session_event(sid: &str) -> Option<&str> {
    let rest = sid.strip_prefix("hs_")?;
    let (hexpart, event) = rest.split_at_checked(16)?;
    (hexpart.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    event.strip_prefix('_')
}

pub(in crate::edge) async fn handover_session(
    env: &Env,
    sid: &str,
) -> Result<serde_json::Value, ApiError> {
    let event_id = session_event(sid).ok_or_else(|| ApiError::not_found("handover session"))?;
    let req = ObjectRequest::GetHandover {
        session_id: sid.to_string(),
    };
    object::handover(env, event_id, req).await
}

/// How long a pay link stays open unless the till asks otherwise (seconds).
pub(in crate::edge) const HANDOVER_TTL_DEFAULT_S: i64 = 600;
/// The shortest and longest pay-link lifetime a till may ask for (seconds).
pub(in crate::edge) const HANDOVER_TTL_MIN_S: i64 = 5;
pub(in crate::edge) const HANDOVER_TTL_MAX_S: i64 = 1800;

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
pub(in crate::edge) fn handover_ttl_ms(ttl_seconds: Option<i64>) -> Result<i64, ApiError> {
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
    let req = ObjectRequest::OpenHandover {
        session_id: sid.clone(),
        session: session.clone(),
    };
    object::handover(env, event_id, req).await?;
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
    crate::edge::http::raw(200, "image/svg+xml", &svg)
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
    object::watch_handover(env, event_id, sid, req.headers()).await
}

// ------------------------------------------------------------------ handover and checkout

/// Claims a till's handover session for the checkout with record key `key` and returns
/// its items. A retry of the same checkout (same key) may claim again, also once the sale
/// is paid, so that it gets its stored answer.
pub(in crate::edge) async fn claim_handover(
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
    let claim = ObjectRequest::ClaimHandover {
        session_id: sid.to_string(),
        order_key: key.to_string(),
    };
    object::handover(env, event_id, claim).await?;
    Ok(items)
}

/// Tells the session how its checkout ended: paid (an accepted payment) or open again
/// (nothing was charged). An outcome still unknown (`202 pending`) leaves it claimed.
pub(in crate::edge) async fn settle_handover(
    env: &Env,
    event_id: &str,
    sid: &str,
    answer: &Answer,
) -> Result<(), ApiError> {
    let b = &answer.body;
    let text = |k: &str| b[k].as_str().map(str::to_string);
    let settle = match answer.status {
        201 | 200 => HandoverSettle {
            paid: true,
            receipt_url: text("receipt_url"),
            payment_status: text("status"),
            order_id: text("order_id"),
        },
        // Unknown yet, or a retry the same checkout may make (it can claim again).
        _ if answer.status == 202 || answer.retry_after_s.is_some() => return Ok(()),
        _ => HandoverSettle::default(),
    };
    object::settle_handover(env, event_id, sid, settle).await
}
