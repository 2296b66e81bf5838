//! Staff-terminal handover: pay links and their QR codes, the till's WebSocket, and the
//! claim and settle a checkout makes for a handover sale.

use super::*;
use crate::checkout::request::CheckoutKey;
use crate::event_protocol::{HandoverSettle, ObjectRequest};
use crate::handover::{HandoverOpen, HandoverSession, HandoverView};

// ------------------------------------------------------------------ staff-terminal handover

/// Handover session ids carry their event: `hs_<16 hex>_<event_id>`.
pub(in crate::edge) fn session_event(sid: &str) -> Option<&str> {
    let rest = sid.strip_prefix("hs_")?;
    let (hexpart, event) = rest.split_at_checked(16)?;
    (hexpart.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    event.strip_prefix('_')
}

/// The session as callers may see it (the claim never leaves the object).
pub(in crate::edge) async fn handover_session(
    env: &Env,
    sid: &str,
) -> Result<HandoverView, ApiError> {
    let event_id = session_event(sid).ok_or_else(|| ApiError::not_found("handover session"))?;
    let req = ObjectRequest::GetHandover {
        session_id: sid.to_string(),
    };
    object::handover(env, event_id, req).await
}

pub(in crate::edge) use crate::api::bodies::{
    HandoverBody, HANDOVER_TTL_DEFAULT_S, HANDOVER_TTL_MAX_S, HANDOVER_TTL_MIN_S,
};

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
    let cors = cors_origin(
        crate::origin::OriginRule::TillPages,
        &c,
        origin.as_deref(),
        &ctx.self_origin,
    )?;
    let bundle = bundle_of(env, &c, ctx.now_ms).await;
    let quote = quote_cart(&c, &bundle, &body.items, ctx.now_ms)?;
    let sid = format!("hs_{}_{}", hex::encode(random::<8>()?), event_id);
    let session = HandoverSession::open(
        HandoverOpen {
            session_id: sid.clone(),
            event_id: event_id.to_string(),
            items: body.items,
            total: quote.total,
            currency: c.currency,
            ttl_ms,
        },
        ctx.now_ms,
    );
    let req = ObjectRequest::OpenHandover {
        session_id: sid.clone(),
        session: Box::new(session),
    };
    let view = object::handover(env, event_id, req).await?;
    let out = crate::api::answers::HandoverCreated {
        pay_url: format!("{}/p/{sid}", ctx.self_origin),
        ws_url: format!("/v1/handover/{sid}/ws"),
        status_url: format!("/v1/handover/{sid}"),
        qr_url: format!("/v1/handover/{sid}/qr.svg"),
        view,
    };
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

/// Claims a till's handover session for the checkout with key `key` and returns its
/// items. A retry of the same checkout (same key) may claim again, also once the sale is
/// paid, so that it gets its stored answer; another checkout is refused while the first
/// may still charge (the object decides, `crate::handover`).
pub(in crate::edge) async fn claim_handover(
    env: &Env,
    event_id: &str,
    sid: &str,
    key: &CheckoutKey,
) -> Result<Vec<CartItem>, ApiError> {
    // The session id names its event: a session of another event does not exist here.
    if session_event(sid) != Some(event_id) {
        return Err(ApiError::not_found("handover session"));
    }
    let claim = ObjectRequest::ClaimHandover {
        session_id: sid.to_string(),
        order_key: key.key.clone(),
        order_id: key.order_id.clone(),
    };
    Ok(object::handover(env, event_id, claim).await?.items)
}

/// Tells the session how the checkout with record key `order_key` ended: paid (an
/// accepted payment) or open again (nothing was charged). An outcome still unknown
/// (`202 pending`) leaves it claimed.
pub(in crate::edge) async fn settle_handover(
    env: &Env,
    event_id: &str,
    sid: &str,
    order_key: &str,
    answer: &Answer,
) -> Result<(), ApiError> {
    let retryable = answer.retry_after_s.is_some();
    let Some(settle) =
        HandoverSettle::from_answer(order_key, answer.status, &answer.body, retryable)
    else {
        return Ok(());
    };
    object::settle_handover(env, event_id, sid, settle).await
}
