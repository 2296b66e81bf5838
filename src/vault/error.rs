//! The vault's error enum and its mapping to API errors.

use crate::card::CardError;
use crate::error::ApiError;
use std::fmt;

/// Why a vault operation failed. Client-facing variants say nothing about which part of a
/// token was wrong; server-side variants carry detail for logs only (never key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultError {
    /// Malformed or tampered token, or bound to another merchant, event or purpose.
    InvalidToken,
    /// The token's own expiry passed, or its data key expired or is gone from KV.
    TokenExpired,
    /// The token's data key was revoked.
    KeyRevoked,
    /// The token's data key is not in KV yet: it was made moments ago (in another PoP, most
    /// likely) and KV has not propagated it here. Retryable; see
    /// [`super::missing_key_error`].
    KeyNotYetVisible,
    /// A single-use CVC token was presented a second time.
    CvcAlreadyUsed,
    /// The card data sealed in a token no longer passes validation (should not happen).
    Card(CardError),
    /// A KEK secret is missing or not 32 bytes of base64/base64url. `which` names the
    /// secret (e.g. `VAULT_KEK`), never its value.
    KekMisconfigured { which: String, reason: &'static str },
    /// A key record is wrapped under a KEK id that is not in the KEK set.
    KekUnknown { kek_id: String },
    /// A key record did not unwrap (corrupt, edited, or wrapped under another KEK).
    KeyRecordCorrupt { kid: String },
    /// The shell offered a revoked or expired data key for tokenizing.
    KeyUnusable { kid: String },
    /// A kid with characters or length outside [`super::valid_kid`].
    InvalidKid,
    /// The cipher refused to seal (input beyond its size limit).
    SealFailed,
}

impl VaultError {
    pub fn code(&self) -> &'static str {
        match self {
            VaultError::InvalidToken => "invalid_token",
            VaultError::TokenExpired => "token_expired",
            VaultError::KeyRevoked => "key_revoked",
            VaultError::KeyNotYetVisible => "temporarily_unavailable",
            VaultError::CvcAlreadyUsed => "cvc_already_used",
            VaultError::Card(e) => e.code(),
            VaultError::KekMisconfigured { .. }
            | VaultError::KekUnknown { .. }
            | VaultError::KeyRecordCorrupt { .. }
            | VaultError::KeyUnusable { .. }
            | VaultError::InvalidKid
            | VaultError::SealFailed => "vault_unavailable",
        }
    }

    pub fn to_api(&self) -> ApiError {
        match self {
            VaultError::InvalidToken => ApiError::bad_request(
                "invalid_token",
                "The card token is not valid for this merchant, event and purpose.",
            ),
            VaultError::TokenExpired => ApiError::new(
                410,
                "token_expired",
                "The card token has expired; please enter the card again.",
            ),
            VaultError::KeyRevoked => ApiError::new(
                410,
                "key_revoked",
                "The card token can no longer be used; please enter the card again.",
            ),
            VaultError::KeyNotYetVisible => ApiError::new(
                503,
                "temporarily_unavailable",
                "The card was just entered at another location and is not readable here yet; please try again in a few seconds.",
            )
            .retryable(),
            VaultError::CvcAlreadyUsed => ApiError::new(
                409,
                "cvc_already_used",
                "The security code was already used once; please enter it again.",
            ),
            VaultError::Card(e) => e.to_api(),
            VaultError::KeyUnusable { .. } => ApiError::new(
                503,
                "vault_unavailable",
                "The card vault is rotating its keys; please try again.",
            )
            .retryable(),
            _ => ApiError::new(
                500,
                "vault_unavailable",
                "The card vault is not available right now.",
            ),
        }
    }
}

impl fmt::Display for VaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VaultError::Card(e) => write!(f, "sealed card no longer valid: {e}"),
            VaultError::KekMisconfigured { which, reason } => {
                write!(f, "secret {which} is not usable as a KEK: {reason}")
            }
            VaultError::KekUnknown { kek_id } => {
                write!(
                    f,
                    "key record wrapped under KEK {kek_id}, which is not configured"
                )
            }
            VaultError::KeyRecordCorrupt { kid } => write!(f, "key record {kid} did not unwrap"),
            VaultError::KeyUnusable { kid } => {
                write!(f, "data key {kid} is revoked or expired; rotate first")
            }
            VaultError::InvalidKid => f.write_str("kid must be 1-64 chars of [A-Za-z0-9_-]"),
            VaultError::SealFailed => f.write_str("sealing failed"),
            other => f.write_str(&other.to_api().message),
        }
    }
}

impl std::error::Error for VaultError {}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        e.to_api()
    }
}

impl From<CardError> for VaultError {
    fn from(e: CardError) -> Self {
        VaultError::Card(e)
    }
}
