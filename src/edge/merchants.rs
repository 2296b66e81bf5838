//! Merchants and their API keys (Workers KV; keys stored only as SHA-256 hashes), and the
//! principal a request acts as.

use super::http::{json, kv, kv_err, random, Ctx};
use crate::api::bodies::NewMerchant;
use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use worker::{Env, Request, Response};

/// Who is calling an authenticated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An unauthenticated caller of a public route: may manage nothing.
    Public,
    Operator,
    Merchant(String),
}

impl Principal {
    /// Whether this principal may manage events of `merchant_id`. Another merchant's event is
    /// answered as if it did not exist (404), so ids cannot be probed.
    pub fn may_manage(&self, merchant_id: &str) -> bool {
        match self {
            Principal::Public => false,
            Principal::Operator => true,
            Principal::Merchant(m) => m == merchant_id,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Merchant {
    pub id: String,
    pub name: String,
    pub key_hash: String,
    pub created_ms: i64,
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Signs webhook deliveries (`Poptill-Signature`); shown to the merchant once.
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn bearer(req: &Request) -> String {
    let h = req
        .headers()
        .get("Authorization")
        .ok()
        .flatten()
        .unwrap_or_default();
    h.strip_prefix("Bearer ").unwrap_or("").trim().to_string()
}

/// The operator (ADMIN_KEY, constant-time compare) or a merchant (hashed key lookup).
/// Anything else is the same 401.
pub async fn authenticate(
    req: &Request,
    env: &Env,
    allow_merchant: bool,
) -> Result<Principal, ApiError> {
    let given = bearer(req);
    if given.is_empty() {
        return Err(ApiError::unauthorized());
    }
    let expected = env
        .secret("ADMIN_KEY")
        .map(|s| s.to_string())
        .unwrap_or_default();
    if !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return Ok(Principal::Operator);
    }
    if allow_merchant && given.starts_with("mk_") {
        let id = kv(env, "VAULT")?
            .get(&format!("merchant-key:{}", key_hash(&given)))
            .text()
            .await
            .map_err(kv_err)?;
        if let Some(id) = id {
            return Ok(Principal::Merchant(id));
        }
    }
    Err(ApiError::unauthorized())
}

pub async fn get(env: &Env, id: &str) -> Result<Option<Merchant>, ApiError> {
    let text = kv(env, "VAULT")?
        .get(&format!("merchant:{id}"))
        .text()
        .await
        .map_err(kv_err)?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// `POST /v1/admin/merchants`: creates a merchant and its API key (shown once).
pub async fn create(env: &Env, ctx: &Ctx, body: NewMerchant) -> Result<Response, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 120 {
        return Err(ApiError::new(
            422,
            "invalid_name",
            "A merchant name is 1 to 120 characters.",
        ));
    }
    if let Some(url) = &body.webhook_url {
        if !(url.starts_with("https://")
            || url.starts_with("http://127.0.0.1")
            || url.starts_with("http://localhost"))
        {
            return Err(ApiError::new(
                422,
                "invalid_webhook_url",
                "The webhook URL must be https (or http on localhost for development).",
            ));
        }
    }
    let id = format!("m_{}", hex::encode(random::<6>()?));
    let key = format!("mk_{}", hex::encode(random::<24>()?));
    let webhook_secret = match body.webhook_url {
        Some(_) => Some(format!("whsec_{}", hex::encode(random::<24>()?))),
        None => None,
    };
    let merchant = Merchant {
        id: id.clone(),
        name: name.to_string(),
        key_hash: key_hash(&key),
        created_ms: ctx.now_ms,
        webhook_url: body.webhook_url,
        webhook_secret: webhook_secret.clone(),
    };
    let store = kv(env, "VAULT")?;
    let value = serde_json::to_string(&merchant).unwrap_or_default();
    store
        .put(&format!("merchant:{id}"), value)
        .map_err(kv_err)?
        .execute()
        .await
        .map_err(kv_err)?;
    store
        .put(&format!("merchant-key:{}", merchant.key_hash), id.clone())
        .map_err(kv_err)?
        .execute()
        .await
        .map_err(kv_err)?;
    json(
        201,
        &crate::api::answers::MerchantCreated {
            merchant_id: id,
            name: merchant.name,
            api_key: key,
            webhook_url: merchant.webhook_url,
            webhook_secret,
            note: "Store the API key now: poptill keeps only its hash and cannot show it again.",
        },
    )
}
