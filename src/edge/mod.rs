//! The Worker shell: decodes requests, calls the core, performs I/O, encodes responses.
//!
//! Only compiled for wasm32. Every request goes through [`fetch`]: it resolves the route in
//! the core's table ([`crate::api`]), checks access, runs the handler, and turns any
//! [`ApiError`] into a JSON error with a stable code. Every response carries `X-Request-Id`
//! and `X-Poptill-Colo`, and one structured JSON log line is written per request.

mod event_object;
mod http;

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

async fn handle(req: Request, env: &Env, ctx: &Ctx) -> std::result::Result<Response, ApiError> {
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
    }
}
