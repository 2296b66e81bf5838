//! Events in the Worker: the client of the event objects (calls, error decoding, the
//! isolate's config cache and routing state, the waiting-room depth signal); the routes live
//! in `admin`, `public` and `handover`. Everything that must not be lost or happen twice goes
//! through the event's Durable Object (`event_object`).

mod admin;
mod handover;
mod public;

pub use admin::*;
pub use handover::*;
pub use public::*;

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

// ------------------------------------------------------------------ isolate signals

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
