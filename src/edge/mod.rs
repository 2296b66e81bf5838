//! The Worker shell: decodes requests, calls the core, performs I/O, encodes responses.
//!
//! Only compiled for wasm32. Every request goes through [`fetch`]: it resolves the route in
//! the core's table ([`crate::api`]), checks access, runs the handler, and turns any
//! [`ApiError`] into a JSON error with a stable code. Every response carries `X-Request-Id`
//! and `X-Poptill-Colo`, and one structured JSON log line is written per request.

mod acquirer_io;
mod checkout;
mod counter_object;
mod embed;
mod event_object;
mod events;
mod http;
mod merchants;
mod object_client;
mod policy;
mod telemetry;
mod vault;

use crate::api::bodies::TokenRequest;
use crate::api::{self, Access, RouteId};
use crate::error::ApiError;
use http::{json, Ctx};
use worker::{event, Context, Date, Env, Request, Response, Result};

pub use counter_object::CounterObject;
pub use event_object::EventObject;

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, worker_ctx: Context) -> Result<Response> {
    let now_ms = Date::now().as_millis() as i64;
    let ctx = Ctx::new(&req, now_ms);
    // The method as the client sent it: workers-rs maps a method it does not know (QUERY,
    // a made-up one) to GET, which would run a GET route for it.
    let method = req.inner().method().to_ascii_uppercase();
    let path = req.path();
    let origin = req.headers().get("Origin").ok().flatten();
    let outcome = handle(req, &method, &env, &ctx, &worker_ctx).await;
    let mut response = match outcome {
        Ok(r) => r,
        Err(e) => http::error_response(&e)?,
    };
    // A WebSocket upgrade (101) comes from the event object with immutable headers.
    if response.status_code() != 101 {
        http::reflect_cors(&method, &path, origin.as_deref(), &mut response)?;
        ctx.stamp(&mut response)?;
    }
    let took = Date::now().as_millis() as i64 - now_ms;
    let matched = api::resolve(&method, &path).ok();
    let event_id = matched
        .as_ref()
        .filter(|m| m.route.path.contains("/events/{id}"))
        .map(|m| param(m, "id"));
    let status = response.status_code();
    http::log_request(&ctx, event_id, &method, &path, status, took);
    if let (Some(m), Some(event_id)) = (&matched, event_id) {
        let replayed = response
            .headers()
            .has("Idempotent-Replayed")
            .unwrap_or(false);
        match m.route.id {
            RouteId::Checkout if status != 404 && !replayed => {
                telemetry::checkout_answered(&ctx, event_id, status, took)
            }
            RouteId::Quote if status == 200 => telemetry::quote_shown(&ctx, event_id),
            _ => {}
        }
    }
    telemetry::flush_due(&env, &worker_ctx, now_ms + took);
    Ok(response)
}

async fn handle(
    mut req: Request,
    method: &str,
    env: &Env,
    ctx: &Ctx,
    worker_ctx: &Context,
) -> std::result::Result<Response, ApiError> {
    let path = req.path();
    if method == "OPTIONS" {
        return http::preflight(&path);
    }
    if path.starts_with("/v1/checkout.") && path != "/v1/checkout.js" {
        // Versioned, immutable copies of checkout.js: `/v1/checkout.<version>.js`.
        return embed::respond(&path, &[])?.ok_or_else(|| {
            ApiError::new(
                404,
                "route_not_found",
                "No such checkout.js version; use /v1/checkout.js.",
            )
        });
    }
    let matched = api::resolve(method, &path)?;
    let who = match matched.route.access {
        Access::Public => merchants::Principal::Public,
        Access::Operator => merchants::authenticate(&req, env, false).await?,
        Access::Merchant => merchants::authenticate(&req, env, true).await?,
    };
    let id = || param(&matched, "id");
    let header = |name: &str| req.headers().get(name).ok().flatten();
    match matched.route.id {
        RouteId::Healthz => json(
            200,
            &api::answers::Health {
                name: "poptill",
                version: crate::VERSION,
                colo: ctx.colo.clone(),
                time: http::iso8601(ctx.now_ms),
                time_ms: ctx.now_ms,
            },
        ),
        RouteId::OpenApi => http::raw(200, "application/json", api::OPENAPI_JSON),
        RouteId::CreateToken => {
            let origin = header("Origin");
            let body: TokenRequest = http::body_json(&mut req).await?;
            let event = object_client::config(env, &body.event_id, ctx.now_ms).await?;
            let cors = events::cors_origin(
                crate::origin::OriginRule::CardPages,
                &event,
                origin.as_deref(),
                &ctx.self_origin,
            )?;
            let binding = vault::binding(&event.merchant_id, &body.event_id);
            let out = vault::tokenize_card(env, ctx, body.card, &binding).await?;
            telemetry::token_issued(ctx, &body.event_id);
            events::with_cors(json(201, &out)?, cors)
        }
        RouteId::ListKeys => vault::list_keys(env, ctx).await,
        RouteId::RotateKey => vault::rotate_now(env, ctx).await,
        RouteId::RevokeKey => vault::revoke(env, ctx, param(&matched, "kid")).await,
        RouteId::PushPolicy => policy::push(env, ctx, &http::body_text(&mut req).await?).await,
        RouteId::PolicyStatus => policy::status(env, param(&matched, "jurisdiction")).await,
        RouteId::PolicyRevision => {
            policy::revision(
                env,
                param(&matched, "jurisdiction"),
                param(&matched, "revision"),
            )
            .await
        }
        RouteId::RollbackPolicy => {
            let body = http::body_text(&mut req).await?;
            policy::rollback(env, ctx, param(&matched, "jurisdiction"), &body).await
        }
        RouteId::CreateMerchant => {
            merchants::create(env, ctx, http::body_json(&mut req).await?).await
        }
        RouteId::CreateEvent => {
            events::create(env, ctx, &who, http::body_json(&mut req).await?).await
        }
        RouteId::ShowEvent => events::show(env, ctx, &who, id()).await,
        RouteId::SyncEvent => events::sync_now(env, ctx, &who, id()).await,
        RouteId::RefundOrder => {
            let idem = header("Idempotency-Key");
            events::refund(env, ctx, &who, id(), idem, http::body_json(&mut req).await?).await
        }
        RouteId::ReconcileEvent => events::reconcile(env, ctx, &who, id()).await,
        RouteId::EventReport => events::report(env, ctx, &who, id()).await,
        RouteId::ExportEvent => {
            let url = req.url().map_err(http::internal)?;
            let format = url
                .query_pairs()
                .find(|(k, _)| k == "format")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| "csv".into());
            events::export(env, ctx, &who, id(), &format).await
        }
        RouteId::Routing => events::routing_snapshot(env, ctx),
        RouteId::ResetRouting => events::reset_routing(env, ctx),
        RouteId::BenchCounter => counter_object::increment(env, param(&matched, "name")).await,
        RouteId::EventPublic => events::public(env, ctx, id()).await,
        RouteId::Quote => {
            events::quote_route(env, ctx, id(), http::body_json(&mut req).await?).await
        }
        RouteId::Checkout => {
            let idem = header("Idempotency-Key");
            let origin = header("Origin");
            let body = http::body_text(&mut req).await?;
            checkout::route(env, ctx, worker_ctx, id(), idem, origin, body).await
        }
        RouteId::CheckoutStatus => {
            let origin = header("Origin");
            events::checkout_status(env, ctx, id(), param(&matched, "status"), origin.as_deref())
                .await
        }
        RouteId::GetReceipt => {
            let html = header("Accept")
                .map(|a| a.contains("text/html"))
                .unwrap_or(false);
            events::get_receipt(env, id(), html).await
        }
        RouteId::VerifyReceipt => events::verify_receipt(env, &http::body_text(&mut req).await?),
        RouteId::CheckoutJs | RouteId::FrameJs | RouteId::PayPage => {
            embed::respond(&path, &[])?.ok_or_else(|| ApiError::not_found("page"))
        }
        RouteId::Frame => {
            let url = req.url().map_err(http::internal)?;
            let event = url
                .query_pairs()
                .find(|(k, _)| k == "event")
                .map(|(_, v)| v.into_owned());
            let origins = match event {
                Some(e) => object_client::config(env, &e, ctx.now_ms)
                    .await
                    .map(|c| c.allowed_origins.clone())
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            embed::respond(&path, &origins)?.ok_or_else(|| ApiError::not_found("page"))
        }
        RouteId::CreateHandover => {
            let origin = header("Origin");
            events::create_handover(env, ctx, id(), origin, http::body_json(&mut req).await?).await
        }
        RouteId::GetHandover => events::get_handover(env, id()).await,
        RouteId::HandoverQr => events::handover_qr(env, ctx, id()).await,
        RouteId::HandoverWs => events::handover_ws(env, id(), req).await,
        RouteId::JoinQueue => events::join_queue(env, ctx, id()).await,
        RouteId::PollQueue => events::poll_queue(env, ctx, id(), param(&matched, "ticket")).await,
        RouteId::EventMetrics => telemetry::metrics_route(env, ctx, &who, id()).await,
        RouteId::OpsDashboard | RouteId::OpsDashboardJs => {
            embed::respond(&path, &[])?.ok_or_else(|| ApiError::not_found("page"))
        }
    }
}

fn param<'a>(m: &'a api::Matched, name: &str) -> &'a str {
    m.params.get(name).map(String::as_str).unwrap_or("")
}
