//! Vault I/O: data keys in Workers KV (one current-key pointer per PoP), an isolate cache of
//! unwrapped keys, and the token and key-admin routes. The cryptography is in `crate::vault`.

use super::http::{env_string, json, kv, kv_err, random, Ctx};
use crate::api::answers::{KeyInfo, KeyList, KeyRevoked, KeyRotated, TokenCreated};
use crate::api::bodies::CardInput;
use crate::card::{Card, Expiry};
use crate::error::ApiError;
use crate::time::iso8601;
use crate::vault::{
    self, kv_key_current, kv_key_record, needs_rotation, new_key_record, unwrap_key, DataKey,
    KekSet, KeyCache, KeyPolicy, KeyRecord, TokenBinding, PURPOSE_PAYMENT,
};
use std::cell::RefCell;
use worker::{Env, Response};

/// Card tokens live one hour (the key grace period), so rotation never shreds a live token.
const TOKEN_TTL_MS: i64 = 60 * 60 * 1000;
/// How long an isolate trusts an unwrapped key before reading KV again (revocations reach
/// every isolate within this time, about KV's own propagation delay).
const CACHE_TTL_MS: i64 = 30_000;

thread_local! {
    static CACHE: RefCell<KeyCache> = RefCell::new(KeyCache::new(CACHE_TTL_MS, 64));
}

pub fn key_policy(env: &Env) -> KeyPolicy {
    let secs = |name: &str, default: i64| {
        env_string(env, name)
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|v| *v > 0)
            .unwrap_or(default)
    };
    let d = KeyPolicy::default();
    KeyPolicy {
        rotate_every_ms: secs("VAULT_ROTATE_SECONDS", d.rotate_every_ms / 1000) * 1000,
        grace_ms: secs("VAULT_GRACE_SECONDS", d.grace_ms / 1000) * 1000,
    }
}

/// The vault's key-encryption keys from the secrets (`VAULT_KEK`, optional
/// `VAULT_KEK_PREVIOUS` while rotating).
pub(super) fn keks(env: &Env) -> Result<KekSet, ApiError> {
    let current = env_string(env, "VAULT_KEK").unwrap_or_default();
    let previous = env_string(env, "VAULT_KEK_PREVIOUS");
    KekSet::parse(&current, previous.as_deref()).map_err(|e| e.to_api())
}

async fn read_record(env: &Env, kid: &str) -> Result<Option<KeyRecord>, ApiError> {
    let text = kv(env, "VAULT")?
        .get(&kv_key_record(kid))
        .text()
        .await
        .map_err(kv_err)?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

async fn write_record(env: &Env, record: &KeyRecord, now_ms: i64) -> Result<(), ApiError> {
    let body = serde_json::to_string(record).map_err(|_| {
        ApiError::new(
            503,
            "temporarily_unavailable",
            "Could not encode a key record.",
        )
    })?;
    kv(env, "VAULT")?
        .put(&kv_key_record(&record.kid), body)
        .map_err(kv_err)?
        .expiration_ttl(record.kv_expiration_ttl_secs(now_ms))
        .execute()
        .await
        .map_err(kv_err)
}

/// Makes a new data key for this PoP, stores it and points the PoP's pointer at it.
async fn rotate(env: &Env, ctx: &Ctx) -> Result<DataKey, ApiError> {
    let keks = keks(env)?;
    let kid = vault::new_kid(&ctx.colo, ctx.now_ms, random::<8>()?);
    let (record, key) = new_key_record(
        &kid,
        random::<32>()?,
        random::<12>()?,
        &keks,
        ctx.now_ms,
        &key_policy(env),
    )
    .map_err(|e| e.to_api())?;
    write_record(env, &record, ctx.now_ms).await?;
    kv(env, "VAULT")?
        .put(&kv_key_current(&ctx.colo), kid.clone())
        .map_err(kv_err)?
        .expiration_ttl(record.kv_expiration_ttl_secs(ctx.now_ms))
        .execute()
        .await
        .map_err(kv_err)?;
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.insert(key.clone(), ctx.now_ms);
        c.set_current(&kid);
    });
    Ok(key)
}

/// This PoP's current data key, rotating when it is due.
async fn current_key(env: &Env, ctx: &Ctx) -> Result<DataKey, ApiError> {
    if let Some(k) = CACHE.with(|c| c.borrow().current(ctx.now_ms).cloned()) {
        return Ok(k);
    }
    let pointer = kv(env, "VAULT")?
        .get(&kv_key_current(&ctx.colo))
        .text()
        .await
        .map_err(kv_err)?;
    let record = match pointer {
        Some(kid) => read_record(env, &kid).await?,
        None => None,
    };
    match record {
        Some(r) if !needs_rotation(Some(&r), ctx.now_ms) => {
            let key = unwrap_key(&r, &keks(env)?).map_err(|e| e.to_api())?;
            CACHE.with(|c| {
                let mut c = c.borrow_mut();
                c.insert(key.clone(), ctx.now_ms);
                c.set_current(&r.kid);
            });
            Ok(key)
        }
        _ => rotate(env, ctx).await,
    }
}

/// The data key for a token's kid, from the cache or KV; `None` when the record is gone.
/// A key made moments ago that KV has not brought here yet is a retryable 503, not a gone
/// key (`vault::missing_key_error`).
#[allow(dead_code)] // used by checkout
pub async fn key_for_token(
    env: &Env,
    token: &str,
    now_ms: i64,
) -> Result<Option<DataKey>, ApiError> {
    let kid = vault::token_kid(token).map_err(|e| e.to_api())?;
    if let Some(k) = CACHE.with(|c| c.borrow().get(&kid, now_ms).cloned()) {
        return Ok(Some(k));
    }
    let Some(record) = read_record(env, &kid).await? else {
        return match vault::missing_key_error(&kid, now_ms) {
            vault::VaultError::TokenExpired => Ok(None),
            not_yet => Err(not_yet.to_api()),
        };
    };
    let key = unwrap_key(&record, &keks(env)?).map_err(|e| e.to_api())?;
    CACHE.with(|c| c.borrow_mut().insert(key.clone(), now_ms));
    Ok(Some(key))
}

/// Opens a card token for the acquirer connector. Never exposed through a route.
#[allow(dead_code)] // used by checkout
pub async fn detokenize(
    env: &Env,
    token: &str,
    binding: &TokenBinding<'_>,
    now_ms: i64,
) -> Result<Card, ApiError> {
    let key = key_for_token(env, token, now_ms).await?;
    vault::detokenize(token, binding, |_| key.as_ref(), now_ms).map_err(|e| e.to_api())
}

/// Validates a card and seals it (and its CVC) for `binding`.
pub async fn tokenize_card(
    env: &Env,
    ctx: &Ctx,
    input: CardInput,
    binding: &TokenBinding<'_>,
) -> Result<TokenCreated, ApiError> {
    let expiry = Expiry::new(input.exp_month, input.exp_year).map_err(|e| e.to_api())?;
    let card = Card::parse(&input.number, expiry, input.cvc.as_deref(), ctx.now_ms)
        .map_err(|e| e.to_api())?;
    drop(input);
    let key = current_key(env, ctx).await?;
    let token = vault::tokenize(
        &card,
        binding,
        &key,
        random::<12>()?,
        ctx.now_ms,
        TOKEN_TTL_MS,
    )
    .map_err(|e| e.to_api())?;
    let cvc_token = match card.cvc() {
        Some(_) => Some(
            vault::tokenize_cvc(
                &card,
                &token.token,
                binding,
                &key,
                random::<12>()?,
                ctx.now_ms,
                TOKEN_TTL_MS,
            )
            .map_err(|e| e.to_api())?,
        ),
        None => None,
    };
    Ok(TokenCreated {
        token: token.token,
        cvc_token: cvc_token.map(|c| c.token),
        brand: token.brand.to_string(),
        last4: token.last4.to_string(),
        exp_month: token.exp_month.into(),
        exp_year: token.exp_year.into(),
        expires_at: iso8601(token.expires_at_ms),
        expires_at_ms: token.expires_at_ms,
    })
}

pub fn binding<'a>(merchant_id: &'a str, event_id: &'a str) -> TokenBinding<'a> {
    TokenBinding {
        merchant_id,
        event_id,
        purpose: PURPOSE_PAYMENT,
    }
}

fn key_state(r: &KeyRecord, now_ms: i64) -> &'static str {
    if r.revoked {
        "revoked"
    } else if now_ms > r.expires_ms {
        "expired"
    } else if now_ms >= r.rotate_after_ms {
        "retiring"
    } else {
        "active"
    }
}

/// `GET /v1/admin/keys`: ids, times and states, never key material.
pub async fn list_keys(env: &Env, ctx: &Ctx) -> Result<Response, ApiError> {
    let store = kv(env, "VAULT")?;
    let listed = store
        .list()
        .prefix("vault:key:".to_string())
        .execute()
        .await
        .map_err(kv_err)?;
    let mut keys = Vec::new();
    for k in listed.keys {
        let kid = k.name.trim_start_matches("vault:key:");
        if let Some(r) = read_record(env, kid).await? {
            keys.push(KeyInfo {
                state: key_state(&r, ctx.now_ms),
                created: iso8601(r.created_ms),
                rotate_after: iso8601(r.rotate_after_ms),
                expires: iso8601(r.expires_ms),
                kid: r.kid,
                kek_id: r.kek_id,
            });
        }
    }
    let current = store
        .get(&kv_key_current(&ctx.colo))
        .text()
        .await
        .map_err(kv_err)?;
    let policy = key_policy(env);
    json(
        200,
        &KeyList {
            colo: ctx.colo.clone(),
            current,
            keys,
            rotate_every_seconds: policy.rotate_every_ms / 1000,
            grace_seconds: policy.grace_ms / 1000,
        },
    )
}

/// `POST /v1/admin/keys/rotate`: a new current key for this PoP now.
pub async fn rotate_now(env: &Env, ctx: &Ctx) -> Result<Response, ApiError> {
    let key = rotate(env, ctx).await?;
    json(
        201,
        &KeyRotated {
            state: "active",
            rotate_after: iso8601(key.rotate_after_ms),
            expires: iso8601(key.expires_ms),
            kid: key.kid,
        },
    )
}

/// `POST /v1/admin/keys/{kid}/revoke`: its tokens can no longer be opened.
pub async fn revoke(env: &Env, ctx: &Ctx, kid: &str) -> Result<Response, ApiError> {
    let Some(mut record) = read_record(env, kid).await? else {
        return Err(ApiError::not_found("key"));
    };
    record.revoke();
    write_record(env, &record, ctx.now_ms).await?;
    CACHE.with(|c| c.borrow_mut().remove(kid));
    let pointer = kv(env, "VAULT")?
        .get(&kv_key_current(&ctx.colo))
        .text()
        .await
        .map_err(kv_err)?;
    if pointer.as_deref() == Some(kid) {
        kv(env, "VAULT")?
            .delete(&kv_key_current(&ctx.colo))
            .await
            .map_err(kv_err)?;
    }
    json(
        200,
        &KeyRevoked {
            kid: kid.to_string(),
            state: "revoked",
        },
    )
}
