//! The edge token vault: card numbers and CVCs sealed into `tok_`/`cvt_` tokens under
//! short-lived data keys, which are wrapped by a key-encryption key (KEK) and kept in KV.
//!
//! Pure core: no I/O, no clock, no randomness. The shell passes `now_ms`, fresh random
//! bytes (data keys, nonces) and whatever it read from KV.
//!
//! # Storage layout (Workers KV, binding chosen by the shell)
//! - `vault:key:<kid>` -> [`KeyRecord`] as JSON, written with `expiration_ttl =`
//!   [`KeyRecord::kv_expiration_ttl_secs`] so KV deletes it after the key expires
//!   (crypto-shredding: once the record is gone, every token under it is unreadable).
//! - `vault:current:<colo>` -> the kid (plain string) of the PoP's current data key. One
//!   pointer per PoP (colo), because KV allows one write per second per key and each PoP
//!   rotates on its own. Written with the same TTL as the record it points to.
//!
//! Kids look like `dk_<colo>_<created unix seconds>_<16 hex>` ([`new_kid`]; the shell draws
//! the hex from 8 random bytes); [`valid_kid`] states what is allowed. The readable creation
//! time lets another PoP tell a key KV has not propagated yet from one that is gone
//! ([`missing_key_error`]).
//!
//! # Shell flow
//! Tokenize (`POST` from the hosted card frame):
//! 1. `cache.current(now)`; if `None`, read `vault:current:<colo>` and `vault:key:<kid>`.
//! 2. If [`needs_rotation`]`(record, now)`: draw 32 key bytes and a 12-byte nonce, call
//!    [`new_key_record`], put `vault:key:<kid>` then `vault:current:<colo>`. Otherwise
//!    [`unwrap_key`] the record. Then `cache.insert(key, now)` and `cache.set_current`.
//! 3. [`tokenize`] (and [`tokenize_cvc`] if a CVC was given) with fresh 12-byte nonces.
//!
//! Detokenize (just before the acquirer call):
//! 1. [`token_kid`] tells which key; `cache.get(kid, now)`, else read `vault:key:<kid>`
//!    and [`unwrap_key`] it and cache it. A missing record is [`missing_key_error`]:
//!    `token_expired`, or a retryable 503 for a key made moments ago.
//! 2. [`detokenize`]; for a CVC, [`detokenize_cvc`], then have the event's Durable Object
//!    record [`OpenedCvc::use_id`] (see [`CvcUseLedger`]) before using the CVC.
//!
//! Two isolates of one PoP may both rotate at the same moment: both records are valid, the
//! last pointer write wins, and tokens under either key keep opening. Keep one
//! [`KeyCache`] per isolate (e.g. `KeyCache::new(60_000, 64)`): a revocation then reaches
//! every isolate within the cache ttl. [`unwrap_key`] does not judge expiry or revocation;
//! [`detokenize`] does (`token_expired`, `key_revoked`), and a lookup answering `None`
//! (record gone from KV) gives `token_expired`.
//!
//! KEK rotation: set the new secret as `VAULT_KEK`, the old one in `VAULT_KEK_PREVIOUS`,
//! then for each live record where [`needs_rewrap`] holds, [`rewrap`] and put it back
//! (same TTL helper). When no record uses the old KEK (at the latest after the longest key
//! lifetime), remove `VAULT_KEK_PREVIOUS`.

mod aead;
mod cache;
mod error;
mod forwarding;
mod keys;
mod token;

pub use aead::{associated_data, open, seal, AeadError, NONCE_LEN, TAG_LEN};
pub use cache::KeyCache;
pub use error::VaultError;
pub use forwarding::{
    card_fingerprint, open_for_forwarding, seal_for_forwarding, unwrap_sf_key, wrap_sf_key,
};
pub use keys::{
    kek_id_for, kid_created_ms, missing_key_error, needs_rewrap, needs_rotation, new_key_record,
    new_kid, rewrap, unwrap_key, valid_kid, DataKey, Kek, KekSet, KeyPolicy, KeyRecord,
    KV_MIN_TTL_SECS, KV_PROPAGATION_MS,
};
pub use token::{
    cvc_use_id, detokenize, detokenize_cvc, token_kid, tokenize, tokenize_cvc, CvcToken,
    CvcUseLedger, OpenedCvc, Token, TokenBinding, CARD_TOKEN_PREFIX, CVC_MAX_TTL_MS,
    CVC_TOKEN_PREFIX, PURPOSE_PAYMENT,
};

/// KV key of a data-key record.
pub fn kv_key_record(kid: &str) -> String {
    format!("vault:key:{kid}")
}

/// KV key of a PoP's current-key pointer.
pub fn kv_key_current(colo: &str) -> String {
    format!("vault:current:{colo}")
}

#[cfg(test)]
mod tests;
