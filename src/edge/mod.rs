//! The Worker shell: decodes requests, calls the core, performs I/O, encodes responses.
//!
//! Only compiled for wasm32. Every request goes through [`fetch`]: it resolves the route in
//! the core's table ([`crate::api`]), checks access, runs the handler, and turns any
//! [`ApiError`] into a JSON error with a stable code. Every response carries `X-Request-Id`
//! and `X-Poptill-Colo`, and one structured JSON log line is written per request.

pub mod embed;
mod event_object;
mod http;
mod policy;
mod vault;

use crate::api::{self, Access, RouteId};
use crate::error::ApiError;
use http::{json, Ctx};
use worker::{event, Context, Date, Env, Request, Response, Result};

pub use event_object::EventObject;

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _worker_ctx: Context) -> Result<Response> {
    let now_ms = Date::now().as_millis() as i64;
    let ctx = Ctx::new(&req, now_ms);
    let method = req.method().to_string();
    let path = req.path();
    let outcome = handle(req, &env, &ctx).await;
    let mut response = match outcome {
        Ok(r) => r,
        Err(e) => http::error_response(&e)?,
    };
    ctx.stamp(&mut response)?;
    let took = Date::now().as_millis() as i64 - now_ms;
    http::log_request(&ctx, &method, &path, response.status_code(), took);
    Ok(response)
}

async fn handle(mut req: Request, env: &Env, ctx: &Ctx) -> std::result::Result<Response, ApiError> {
    let method = req.method().to_string();
    let path = req.path();
    if method == "OPTIONS" {
        return http::preflight(&path);
    }
    let matched = api::resolve(&method, &path)?;
    if matched.route.access == Access::Operator {
        http::require_operator(&req, env)?;
    }
    match matched.route.id {
        RouteId::Healthz => json(
            200,
            &serde_json::json!({
                "name": "poptill",
                "version": crate::VERSION,
                "colo": ctx.colo,
                "time": http::iso8601(ctx.now_ms),
                "time_ms": ctx.now_ms,
            }),
        ),
        RouteId::OpenApi => http::raw(200, "application/json", api::OPENAPI_JSON),
        RouteId::CreateToken => {
            let body: TokenRequest = http::body_json(&mut req).await?;
            let merchant = body.merchant_id.unwrap_or_default();
            let binding = vault::binding(&merchant, &body.event_id);
            let out = vault::tokenize_card(env, ctx, body.card, &binding).await?;
            json(201, &out)
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
    }
}

fn param<'a>(m: &'a api::Matched, name: &str) -> &'a str {
    m.params.get(name).map(String::as_str).unwrap_or("")
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    event_id: String,
    #[serde(default)]
    merchant_id: Option<String>,
    card: vault::CardInput,
}
