//! The checkout's half of the Worker ↔ event object protocol: typed requests and replies
//! for a checkout's begin and finish calls, carried as `ObjectRequest::Begin` and
//! `ObjectRequest::Finish` (`crate::event_protocol`) and serialized with serde on both sides.

use crate::error::ApiError;
use crate::ledger::{Command, Order};
use crate::receipt::Receipt;
use serde::{Deserialize, Serialize};

/// A single-use CVC token's use, spent by the checkout that first sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CvcUse {
    pub use_id: String,
    pub expires_at_ms: i64,
}

/// A checkout's first call: the idempotency record; for a new request the CVC and the hold;
/// when the payment is to be stored at once, the finish too (one call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeginRequest {
    /// The idempotency record's key (`co_…`, derived from the buyer's Idempotency-Key).
    pub key: String,
    /// What the buyer asked for and the card, as a hash (`checkout::request::fingerprint`).
    /// `None`: the request failed before it could hold anything; only look the key up,
    /// matching `cart`.
    pub fingerprint: Option<String>,
    /// The card-free part of the fingerprint (`checkout::request::cart_fingerprint`).
    #[serde(default)]
    pub cart: String,
    /// The order the key stands for (looked at when only looking the key up).
    #[serde(default)]
    pub order_id: Option<String>,
    #[serde(default)]
    pub cvc: Option<CvcUse>,
    /// The `Hold` command (with an order id derived from the key).
    #[serde(default)]
    pub hold: Option<Command>,
    /// The finish, when it is known before the hold (a payment stored at once).
    #[serde(default)]
    pub then: Option<FinishRequest>,
}

/// The object's answer to [`BeginRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BeginReply {
    /// Answered before: send this again.
    Replay { answer: StoredAnswer },
    /// The first request with this key is still running.
    InFlight,
    /// The key was used for another purchase.
    Mismatch,
    /// Look-up only, and the key has no record.
    NoRecord,
    /// The CVC or the hold was refused; nothing is recorded for the key.
    Refused { error: WireError },
    /// Held: pay for this order. `resumed`: the order already existed and this request
    /// took the key over from an earlier one that stopped part way (its Worker died), so
    /// the order's lane may already hold a charge. An order left by an undone checkout
    /// (its key forgotten, nothing charged) is held again with `resumed: false`.
    Held { order: Box<Order>, resumed: bool },
    /// Held and finished in the same call (`then`).
    Finished { answer: StoredAnswer },
    /// The `then` finish was refused; the hold, the key and the CVC were undone.
    FinishRefused { error: WireError },
}

/// How a finish closes the idempotency record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Completion {
    /// Keep this answer for replays.
    Answer { answer: StoredAnswer },
    /// Forget the key (nothing was charged; the buyer may retry at once) and give back
    /// the single-use CVC the attempt spent.
    Abandon {
        #[serde(default)]
        release_cvc: Option<String>,
    },
}

/// A checkout's last call: the outcome for the ledger, the receipt to sign under the
/// order's receipt number, and how to close the key, applied together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishRequest {
    pub key: String,
    #[serde(default)]
    pub command: Option<Command>,
    /// The unsigned receipt; the object sets its id and signs it.
    #[serde(default)]
    pub receipt: Option<Receipt>,
    pub complete: Completion,
}

/// The object's answer to [`FinishRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FinishReply {
    /// Applied and stored; the answer carries the signed receipt.
    Stored { answer: StoredAnswer },
    /// The key was abandoned.
    Abandoned,
    /// The ledger refused the command; nothing was applied or completed.
    Refused { error: WireError },
}

/// An answer kept for replays. Small on purpose: the receipt is kept in its own table
/// and attached (`receipt`) when the answer is sent, never stored inside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_id: Option<String>,
    /// The signed receipt, attached on the way out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<serde_json::Value>,
}

impl StoredAnswer {
    /// The form kept in the idempotency record (without the attached receipt).
    pub fn to_stored_json(&self) -> Result<String, ApiError> {
        let mut a = self.clone();
        a.receipt = None;
        serde_json::to_string(&a).map_err(|_| {
            ApiError::new(
                503,
                "temporarily_unavailable",
                "The answer could not be kept.",
            )
            .retryable()
        })
    }

    pub fn from_stored_json(s: &str) -> Option<StoredAnswer> {
        serde_json::from_str(s).ok()
    }
}

/// An [`ApiError`] on the wire between the Worker and the object: its status, code,
/// sentence and retryability survive the trip unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub status: u16,
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub retryable: bool,
}

impl From<&ApiError> for WireError {
    fn from(e: &ApiError) -> WireError {
        WireError {
            status: e.status,
            code: e.code.to_string(),
            message: e.message.clone(),
            retryable: e.retryable,
        }
    }
}

impl From<ApiError> for WireError {
    fn from(e: ApiError) -> WireError {
        WireError::from(&e)
    }
}

impl WireError {
    pub fn to_api(&self) -> ApiError {
        let code: String = self.code.chars().take(64).collect();
        let mut e = ApiError::with_code(self.status, code, self.message.clone());
        e.retryable = self.retryable;
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_answers_leave_the_receipt_out_and_errors_keep_their_code() {
        let a = StoredAnswer {
            status: 201,
            body: serde_json::json!({"status": "approved"}),
            receipt_id: Some("rcpt_x".into()),
            receipt: Some(serde_json::json!({"big": "x".repeat(10_000)})),
        };
        let s = a.to_stored_json().unwrap();
        assert!(s.len() < 200, "{s}");
        let back = StoredAnswer::from_stored_json(&s).unwrap();
        assert_eq!(back.receipt_id.as_deref(), Some("rcpt_x"));
        assert!(back.receipt.is_none());
        let e = ApiError::new(422, "offline_card_velocity", "x").retryable();
        let w = WireError::from(&e);
        let json = serde_json::to_string(&w).unwrap();
        let back: WireError = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_api(), e);
    }
}
