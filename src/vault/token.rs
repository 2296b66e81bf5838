//! Card tokens (`tok_…`) and single-use CVC tokens (`cvt_…`): sealing, opening and the
//! single-use rule for CVCs.
//!
//! Token bytes (then base64url without padding, after the prefix):
//! `version (1) | kid length (1) | kid | nonce (12) | ChaCha20-Poly1305 ciphertext + tag`.
//! The kid is readable (the shell needs it to load the key); everything about the card is
//! sealed. The card number is padded to 19 digits before sealing, so the token length does
//! not reveal the number's length or brand.
//!
//! Associated data binds the token kind and version, the kid, the merchant id, the event
//! id and the purpose (a CVC token also binds a SHA-256 of its card token), so a token
//! replayed for another merchant, event or purpose, or with any byte changed, fails with
//! the one answer `invalid_token`.

use super::aead::{associated_data, open, seal, NONCE_LEN, TAG_LEN};
use super::error::VaultError;
use super::keys::{valid_kid, DataKey};
use crate::card::{Brand, Card, Expiry};
use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

pub const CARD_TOKEN_PREFIX: &str = "tok_";
/// The purpose used when a card token is made for paying at checkout.
pub const PURPOSE_PAYMENT: &str = "payment";
pub const CVC_TOKEN_PREFIX: &str = "cvt_";
/// A CVC token lives at most one hour (PCI DSS: no CVC storage after authorization).
pub const CVC_MAX_TTL_MS: i64 = 60 * 60 * 1000;

const VERSION: u8 = 1;
const CARD_LABEL: &str = "poptill/vault/card-token/v1";
const CVC_LABEL: &str = "poptill/vault/cvc-token/v1";
const CVC_USE_LABEL: &[u8] = b"poptill/vault/cvc-use/v1\0";
const CARD_TOKEN_HASH_LABEL: &[u8] = b"poptill/vault/card-token-hash/v1\0";
/// Longest token string looked at; anything longer is refused before decoding.
const MAX_TOKEN_LEN: usize = 512;

const NUMBER_FIELD: usize = 19;
/// exp month (1) | exp year (2) | expires_at_ms (8) | number length (1) | number (19).
const CARD_PLAIN_LEN: usize = 1 + 2 + 8 + 1 + NUMBER_FIELD;
const CVC_FIELD: usize = 4;
/// expires_at_ms (8) | cvc length (1) | cvc (4).
const CVC_PLAIN_LEN: usize = 8 + 1 + CVC_FIELD;

/// Who may open a token and for what. All three are bound into the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBinding<'a> {
    pub merchant_id: &'a str,
    pub event_id: &'a str,
    /// What the card will be used for, e.g. `"payment"`.
    pub purpose: &'a str,
}

/// A sealed card and the facts about it that are safe to show (returned to the page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Token {
    pub token: String,
    pub brand: Brand,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
    pub expires_at_ms: i64,
}

/// A sealed CVC. `use_id` is what the event's Durable Object records to refuse reuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CvcToken {
    pub token: String,
    pub use_id: String,
    pub expires_at_ms: i64,
}

/// An opened CVC token. Before using `cvc`, the shell must have the event's Durable Object
/// accept `use_id` (see [`CvcUseLedger::try_use`]); a second use is refused there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedCvc {
    pub cvc: Secret<String>,
    pub use_id: String,
    pub expires_at_ms: i64,
}

/// Seals a card under `key` for `binding`. `nonce` must be 12 fresh random bytes. The
/// token expires at `now_ms + ttl_ms`, but never after the key itself expires (so keep
/// `ttl_ms` at most the key policy's grace period to get the full ttl).
pub fn tokenize(
    card: &Card,
    binding: &TokenBinding<'_>,
    key: &DataKey,
    nonce: [u8; NONCE_LEN],
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Token, VaultError> {
    check_key_for_sealing(key, now_ms)?;
    let expires_at_ms = now_ms.saturating_add(ttl_ms.max(0)).min(key.expires_ms);
    let number = card.number().expose().as_bytes();
    let number_len = u8::try_from(number.len())
        .ok()
        .filter(|&n| usize::from(n) <= NUMBER_FIELD)
        .ok_or(VaultError::SealFailed)?;
    let mut plain = Zeroizing::new(Vec::with_capacity(CARD_PLAIN_LEN));
    plain.push(card.exp_month);
    plain.extend_from_slice(&card.exp_year.to_be_bytes());
    plain.extend_from_slice(&expires_at_ms.to_be_bytes());
    plain.push(number_len);
    plain.extend_from_slice(number);
    plain.resize(CARD_PLAIN_LEN, 0);
    let aad = card_aad(&key.kid, binding);
    let token = assemble(CARD_TOKEN_PREFIX, key, &nonce, &aad, &plain)?;
    Ok(Token {
        token,
        brand: card.brand(),
        last4: card.last4(),
        exp_month: card.exp_month,
        exp_year: card.exp_year,
        expires_at_ms,
    })
}

/// Opens a card token. `lookup` gives the data key for the token's kid (from the cache or
/// from KV via [`super::unwrap_key`]); `None` means the record is gone from KV.
///
/// Errors: `token_expired` (token past its expiry, key expired, or key record gone),
/// `key_revoked`, and `invalid_token` for everything else (malformed, tampered, or another
/// merchant, event or purpose) without saying which.
pub fn detokenize<'k>(
    token: &str,
    binding: &TokenBinding<'_>,
    lookup: impl FnOnce(&str) -> Option<&'k DataKey>,
    now_ms: i64,
) -> Result<Card, VaultError> {
    let parsed = parse(CARD_TOKEN_PREFIX, token, CARD_PLAIN_LEN)?;
    let key = usable_key(&parsed, lookup, now_ms)?;
    let aad = card_aad(&parsed.kid, binding);
    let plain = open(key.bytes(), &parsed.nonce, &aad, &parsed.sealed)
        .map_err(|_| VaultError::InvalidToken)?;
    let (month, rest) = plain.split_first().ok_or(VaultError::InvalidToken)?;
    let (year, rest) = rest
        .split_first_chunk::<2>()
        .ok_or(VaultError::InvalidToken)?;
    let (expires, rest) = rest
        .split_first_chunk::<8>()
        .ok_or(VaultError::InvalidToken)?;
    let (number_len, number_field) = rest.split_first().ok_or(VaultError::InvalidToken)?;
    if now_ms > i64::from_be_bytes(*expires) {
        return Err(VaultError::TokenExpired);
    }
    let number = number_field
        .get(..usize::from(*number_len))
        .ok_or(VaultError::InvalidToken)?;
    let number =
        Secret::new(String::from_utf8(number.to_vec()).map_err(|_| VaultError::InvalidToken)?);
    let expiry = Expiry {
        month: *month,
        year: u16::from_be_bytes(*year),
    };
    Ok(Card::from_sealed(number, expiry)?)
}

/// The kid inside a `tok_…` or `cvt_…` token, so the shell knows which record to load.
/// Fails with `invalid_token` if the token is malformed (the seal is not checked here).
pub fn token_kid(token: &str) -> Result<String, VaultError> {
    let parsed = if token.starts_with(CVC_TOKEN_PREFIX) {
        parse(CVC_TOKEN_PREFIX, token, CVC_PLAIN_LEN)?
    } else {
        parse(CARD_TOKEN_PREFIX, token, CARD_PLAIN_LEN)?
    };
    Ok(parsed.kid)
}

/// Seals the card's CVC into a single-use `cvt_…` token bound to `card_token` (the `tok_…`
/// made from the same card) and to `binding`. Lives `min(ttl_ms, 1 h)`, never past the
/// key's expiry. Fails with `invalid_cvc` if the card has no CVC.
pub fn tokenize_cvc(
    card: &Card,
    card_token: &str,
    binding: &TokenBinding<'_>,
    key: &DataKey,
    nonce: [u8; NONCE_LEN],
    now_ms: i64,
    ttl_ms: i64,
) -> Result<CvcToken, VaultError> {
    check_key_for_sealing(key, now_ms)?;
    let cvc = card
        .cvc()
        .ok_or(VaultError::Card(crate::card::CardError::InvalidCvc))?
        .expose()
        .as_bytes();
    let cvc_len = u8::try_from(cvc.len())
        .ok()
        .filter(|&n| usize::from(n) <= CVC_FIELD)
        .ok_or(VaultError::Card(crate::card::CardError::InvalidCvc))?;
    let expires_at_ms = now_ms
        .saturating_add(ttl_ms.clamp(0, CVC_MAX_TTL_MS))
        .min(key.expires_ms);
    let mut plain = Zeroizing::new(Vec::with_capacity(CVC_PLAIN_LEN));
    plain.extend_from_slice(&expires_at_ms.to_be_bytes());
    plain.push(cvc_len);
    plain.extend_from_slice(cvc);
    plain.resize(CVC_PLAIN_LEN, 0);
    let aad = cvc_aad(&key.kid, binding, card_token);
    let token = assemble(CVC_TOKEN_PREFIX, key, &nonce, &aad, &plain)?;
    Ok(CvcToken {
        use_id: cvc_use_id(&token),
        token,
        expires_at_ms,
    })
}

/// Opens a CVC token presented together with its card token. Same errors as
/// [`detokenize`]. Does not itself enforce single use: see [`OpenedCvc`].
pub fn detokenize_cvc<'k>(
    cvc_token: &str,
    card_token: &str,
    binding: &TokenBinding<'_>,
    lookup: impl FnOnce(&str) -> Option<&'k DataKey>,
    now_ms: i64,
) -> Result<OpenedCvc, VaultError> {
    let parsed = parse(CVC_TOKEN_PREFIX, cvc_token, CVC_PLAIN_LEN)?;
    let key = usable_key(&parsed, lookup, now_ms)?;
    let aad = cvc_aad(&parsed.kid, binding, card_token);
    let plain = open(key.bytes(), &parsed.nonce, &aad, &parsed.sealed)
        .map_err(|_| VaultError::InvalidToken)?;
    let (expires, rest) = plain
        .split_first_chunk::<8>()
        .ok_or(VaultError::InvalidToken)?;
    let (cvc_len, cvc_field) = rest.split_first().ok_or(VaultError::InvalidToken)?;
    let expires_at_ms = i64::from_be_bytes(*expires);
    if now_ms > expires_at_ms {
        return Err(VaultError::TokenExpired);
    }
    let cvc = cvc_field
        .get(..usize::from(*cvc_len))
        .ok_or(VaultError::InvalidToken)?;
    let cvc = Secret::new(String::from_utf8(cvc.to_vec()).map_err(|_| VaultError::InvalidToken)?);
    Ok(OpenedCvc {
        cvc,
        use_id: cvc_use_id(cvc_token),
        expires_at_ms,
    })
}

/// `cvu_` + 32 hex digits of SHA-256 over a label and the whole `cvt_…` token: stable for
/// one token, different for every other (each token has its own random nonce).
pub fn cvc_use_id(cvc_token: &str) -> String {
    let digest = Sha256::new()
        .chain_update(CVC_USE_LABEL)
        .chain_update(cvc_token.as_bytes())
        .finalize();
    format!("cvu_{}", hex::encode(digest.get(..16).unwrap_or_default()))
}

/// The single-use rule for CVC tokens, as the event's Durable Object applies it: each
/// `use_id` is accepted once; it is remembered until its token expires (after that the
/// token is refused by [`detokenize_cvc`] anyway, so the entry can go). Serializable so the
/// Durable Object can keep it in storage; a SQLite table `(use_id PRIMARY KEY,
/// expires_at_ms)` with the same rule works as well.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CvcUseLedger {
    used: BTreeMap<String, i64>,
}

impl CvcUseLedger {
    pub fn new() -> CvcUseLedger {
        CvcUseLedger::default()
    }

    /// Accepts `use_id` once; a second time answers `cvc_already_used`.
    pub fn try_use(
        &mut self,
        use_id: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), VaultError> {
        self.prune(now_ms);
        if self.used.contains_key(use_id) {
            return Err(VaultError::CvcAlreadyUsed);
        }
        self.used.insert(use_id.to_owned(), expires_at_ms);
        Ok(())
    }

    /// Forgets uses whose tokens have expired.
    pub fn prune(&mut self, now_ms: i64) {
        self.used.retain(|_, expires| now_ms <= *expires);
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

struct Parsed {
    kid: String,
    nonce: [u8; NONCE_LEN],
    sealed: Vec<u8>,
}

fn check_key_for_sealing(key: &DataKey, now_ms: i64) -> Result<(), VaultError> {
    if !valid_kid(&key.kid) {
        return Err(VaultError::InvalidKid);
    }
    if !key.usable_for_new_tokens(now_ms) {
        return Err(VaultError::KeyUnusable {
            kid: key.kid.clone(),
        });
    }
    Ok(())
}

fn usable_key<'k>(
    parsed: &Parsed,
    lookup: impl FnOnce(&str) -> Option<&'k DataKey>,
    now_ms: i64,
) -> Result<&'k DataKey, VaultError> {
    let key = lookup(&parsed.kid).ok_or(VaultError::TokenExpired)?;
    if key.kid != parsed.kid {
        return Err(VaultError::InvalidToken);
    }
    if key.revoked {
        return Err(VaultError::KeyRevoked);
    }
    if now_ms > key.expires_ms {
        return Err(VaultError::TokenExpired);
    }
    Ok(key)
}

fn assemble(
    prefix: &str,
    key: &DataKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plain: &[u8],
) -> Result<String, VaultError> {
    let kid = key.kid.as_bytes();
    let kid_len = u8::try_from(kid.len()).map_err(|_| VaultError::InvalidKid)?;
    let sealed = seal(key.bytes(), nonce, aad, plain).map_err(|_| VaultError::SealFailed)?;
    let mut bytes = Vec::with_capacity(2 + kid.len() + NONCE_LEN + sealed.len());
    bytes.push(VERSION);
    bytes.push(kid_len);
    bytes.extend_from_slice(kid);
    bytes.extend_from_slice(nonce);
    bytes.extend_from_slice(&sealed);
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

fn parse(prefix: &str, token: &str, plain_len: usize) -> Result<Parsed, VaultError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(VaultError::InvalidToken);
    }
    let body = token.strip_prefix(prefix).ok_or(VaultError::InvalidToken)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body.as_bytes())
        .map_err(|_| VaultError::InvalidToken)?;
    let (&version, rest) = bytes.split_first().ok_or(VaultError::InvalidToken)?;
    if version != VERSION {
        return Err(VaultError::InvalidToken);
    }
    let (&kid_len, rest) = rest.split_first().ok_or(VaultError::InvalidToken)?;
    let (kid, rest) = rest
        .split_at_checked(usize::from(kid_len))
        .ok_or(VaultError::InvalidToken)?;
    let kid = std::str::from_utf8(kid).map_err(|_| VaultError::InvalidToken)?;
    if !valid_kid(kid) {
        return Err(VaultError::InvalidToken);
    }
    let (nonce, sealed) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(VaultError::InvalidToken)?;
    if sealed.len() != plain_len + TAG_LEN {
        return Err(VaultError::InvalidToken);
    }
    Ok(Parsed {
        kid: kid.to_owned(),
        nonce: *nonce,
        sealed: sealed.to_vec(),
    })
}

fn binding_fields<'a>(kid: &'a str, binding: &TokenBinding<'a>) -> [&'a [u8]; 5] {
    [
        std::slice::from_ref(&VERSION),
        kid.as_bytes(),
        binding.merchant_id.as_bytes(),
        binding.event_id.as_bytes(),
        binding.purpose.as_bytes(),
    ]
}

fn card_aad(kid: &str, binding: &TokenBinding<'_>) -> Vec<u8> {
    associated_data(CARD_LABEL, &binding_fields(kid, binding))
}

fn cvc_aad(kid: &str, binding: &TokenBinding<'_>, card_token: &str) -> Vec<u8> {
    let card_token_hash = Sha256::new()
        .chain_update(CARD_TOKEN_HASH_LABEL)
        .chain_update(card_token.as_bytes())
        .finalize();
    let [v, k, m, e, p] = binding_fields(kid, binding);
    associated_data(CVC_LABEL, &[v, k, m, e, p, card_token_hash.as_slice()])
}
