//! Policy I/O: signed bundles in Workers KV, the push / status / rollback routes, and the
//! isolate cache that every quote and checkout reads its bundle through.

use super::http::{env_string, json, kv, kv_err, Ctx};
use crate::error::ApiError;
use crate::policy::{
    self, active_key, cache_key, decide_push, decide_rollback, history_key, lookup_chain,
    revision_key, verify_envelope, verify_rollback, Activation, ActivePointer, CacheLookup,
    History, LoadedBundle, PolicyCache, PolicyStatus, TrustedKeys,
};
use std::cell::RefCell;
use std::sync::Arc;
use worker::{Env, Response};

/// How long an isolate uses an active bundle before reading KV again.
const CACHE_TTL_MS: i64 = 15_000;

thread_local! {
    static CACHE: RefCell<PolicyCache> = RefCell::new(PolicyCache::new(CACHE_TTL_MS));
}

fn trusted_keys(env: &Env) -> Result<TrustedKeys, ApiError> {
    let json = env_string(env, "POLICY_PUBLIC_KEYS").unwrap_or_else(|| "{}".to_string());
    TrustedKeys::from_json(&json).map_err(|e| e.to_api())
}

fn policy_error(e: policy::PolicyError) -> ApiError {
    let mut api = e.to_api();
    let problems: Vec<String> = e
        .problems()
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    if !problems.is_empty() {
        api.message = format!("{} Problems: {}", api.message, problems.join("; "));
    }
    api
}

async fn read_pointer(env: &Env, jur: &str) -> Result<Option<ActivePointer>, ApiError> {
    let text = kv(env, "POLICIES")?
        .get(&active_key(jur))
        .text()
        .await
        .map_err(kv_err)?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

async fn read_history(env: &Env, jur: &str) -> Result<History, ApiError> {
    let text = kv(env, "POLICIES")?
        .get(&history_key(jur))
        .text()
        .await
        .map_err(kv_err)?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

async fn put(env: &Env, key: &str, value: String) -> Result<(), ApiError> {
    kv(env, "POLICIES")?
        .put(key, value)
        .map_err(kv_err)?
        .execute()
        .await
        .map_err(kv_err)
}

/// Writes an accepted activation: the revision first, then the history, the pointer last
/// (the one write that changes what PoPs enforce).
async fn apply(env: &Env, activation: &Activation) -> Result<(), ApiError> {
    if activation.unchanged {
        return Ok(());
    }
    let jur = &activation.jurisdiction;
    if let Some((key, value)) = &activation.store_revision {
        put(env, key, value.clone()).await?;
    }
    let mut history = read_history(env, jur).await?;
    history.record(activation.history_entry.clone());
    put(env, &history_key(jur), encode(&history)).await?;
    put(env, &active_key(jur), encode(&activation.pointer)).await?;
    CACHE.with(|c| c.borrow_mut().invalidate(&cache_key(jur, None)));
    Ok(())
}

/// Encodes the small KV values (plain data, always serializable) without a panic path.
fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn activation_body(a: &Activation) -> crate::api::answers::PolicyActivated {
    crate::api::answers::PolicyActivated {
        jurisdiction: a.jurisdiction.clone(),
        active: a.pointer.clone(),
        unchanged: a.unchanged,
    }
}

/// `PUT /v1/admin/policies`: verify signature and schema, refuse replays, activate.
pub async fn push(env: &Env, ctx: &Ctx, body: &str) -> Result<Response, ApiError> {
    let keys = trusted_keys(env)?;
    let verified = verify_envelope(body, &keys).map_err(policy_error)?;
    let jur = verified.loaded.bundle.jurisdiction.clone();
    let active = read_pointer(env, &jur).await?;
    let activation = decide_push(&verified, active.as_ref(), ctx.now_ms).map_err(policy_error)?;
    apply(env, &activation).await?;
    json(
        if activation.unchanged { 200 } else { 201 },
        &activation_body(&activation),
    )
}

/// `POST /v1/admin/policies/{jurisdiction}/rollback`: a signed statement moves the pointer
/// back to a stored older revision.
pub async fn rollback(env: &Env, ctx: &Ctx, jur: &str, body: &str) -> Result<Response, ApiError> {
    let keys = trusted_keys(env)?;
    let statement = verify_rollback(body, &keys).map_err(policy_error)?;
    if statement.rollback.jurisdiction != jur {
        return Err(ApiError::bad_request(
            "policy_rollback_mismatch",
            "The signed rollback names another jurisdiction than the URL.",
        ));
    }
    let active = read_pointer(env, jur).await?;
    let target = kv(env, "POLICIES")?
        .get(&revision_key(jur, statement.rollback.to_revision))
        .text()
        .await
        .map_err(kv_err)?;
    let activation = decide_rollback(
        &statement,
        active.as_ref(),
        target.as_deref(),
        &keys,
        ctx.now_ms,
    )
    .map_err(policy_error)?;
    apply(env, &activation).await?;
    json(200, &activation_body(&activation))
}

/// `GET /v1/admin/policies/{jurisdiction}`: the active revision and the history.
pub async fn status(env: &Env, jur: &str) -> Result<Response, ApiError> {
    let active = read_pointer(env, jur).await?;
    let history = read_history(env, jur).await?;
    if active.is_none() && history.0.is_empty() {
        return Err(ApiError::new(
            404,
            "policy_not_found",
            format!(
                "No bundle was ever pushed for {}; the strict default applies.",
                clip(jur)
            ),
        ));
    }
    json(
        200,
        &PolicyStatus {
            jurisdiction: jur.to_string(),
            active,
            history: history.0,
        },
    )
}

/// `GET /v1/admin/policies/{jurisdiction}/revisions/{revision}`: a stored signed envelope.
pub async fn revision(env: &Env, jur: &str, rev: &str) -> Result<Response, ApiError> {
    let rev: u64 = rev
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_revision", "A revision is a whole number."))?;
    let text = kv(env, "POLICIES")?
        .get(&revision_key(jur, rev))
        .text()
        .await
        .map_err(kv_err)?;
    match text {
        Some(t) => super::http::raw(200, "application/json", &t),
        None => Err(ApiError::not_found("policy revision")),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(16).collect()
}

/// Loads one jurisdiction's bundle (pinned revision or active), verified, through the cache.
#[allow(dead_code)] // reached through bundle_for
async fn load_one(
    env: &Env,
    jur: &str,
    pin: Option<u64>,
    now_ms: i64,
) -> Option<Arc<LoadedBundle>> {
    let key = cache_key(jur, pin);
    let cached = CACHE.with(|c| c.borrow().lookup(&key, now_ms));
    let stale = match cached {
        CacheLookup::Fresh(b) => return Some(b),
        CacheLookup::Stale(b) => Some(b),
        CacheLookup::Missing => None,
    };
    let loaded = async {
        let keys = trusted_keys(env).ok()?;
        let revision = match pin {
            Some(r) => r,
            None => read_pointer(env, jur).await.ok()??.revision,
        };
        let text = kv(env, "POLICIES")
            .ok()?
            .get(&revision_key(jur, revision))
            .text()
            .await
            .ok()??;
        verify_envelope(&text, &keys).ok().map(|v| v.loaded)
    }
    .await;
    match loaded {
        Some(l) => Some(CACHE.with(|c| c.borrow_mut().store(&key, l, now_ms))),
        None if stale.is_some() => CACHE.with(|c| c.borrow_mut().load_failed(&key, now_ms)),
        None => None,
    }
}

/// The bundle that governs a venue: the most specific jurisdiction with a bundle
/// (`US-CA`, then `US`), else the compiled-in strict default. A pinned revision applies to
/// the venue's own jurisdiction only.
#[allow(dead_code)] // used by the quote and checkout routes
pub async fn bundle_for(
    env: &Env,
    jurisdiction: &str,
    pin: Option<u64>,
    now_ms: i64,
) -> Arc<LoadedBundle> {
    for (i, jur) in lookup_chain(jurisdiction).iter().enumerate() {
        if jur == "default" {
            break;
        }
        let pin = if i == 0 { pin } else { None };
        if let Some(b) = load_one(env, jur, pin, now_ms).await {
            return b;
        }
    }
    Arc::new(policy::default_bundle())
}
