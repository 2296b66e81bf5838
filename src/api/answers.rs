//! Answer bodies of the shell's own routes, as typed structs: the handlers serialize these
//! and the OpenAPI document describes them from the same derives. Answers that are core
//! types already (a quote, an event summary, a receipt, a policy status) are described
//! from those types.

use crate::ledger::{Category, EventConfig, EventSummary, Reply};
use crate::money::{Currency, MinorUnits};
use schemars::JsonSchema;
use serde::Serialize;

/// `GET /healthz`.
#[derive(Serialize, JsonSchema)]
pub struct Health {
    /// Always `poptill`.
    pub name: &'static str,
    pub version: &'static str,
    /// The PoP that answered.
    pub colo: String,
    /// RFC 3339 UTC.
    pub time: String,
    pub time_ms: i64,
}

/// `POST /v1/tokens`: the card's token (and its security code's, when one was given).
#[derive(Serialize, JsonSchema)]
pub struct TokenCreated {
    /// Pays this event once (`tok_…`); lives one hour.
    pub token: String,
    /// The security code, sealed apart and usable once.
    pub cvc_token: Option<String>,
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: u32,
    /// RFC 3339 UTC.
    pub expires_at: String,
    pub expires_at_ms: i64,
}

/// `POST /v1/admin/merchants`.
#[derive(Serialize, JsonSchema)]
pub struct MerchantCreated {
    pub merchant_id: String,
    pub name: String,
    /// Shown once: poptill keeps only its hash.
    pub api_key: String,
    pub webhook_url: Option<String>,
    /// Signs webhook deliveries (`Poptill-Signature`); shown once.
    pub webhook_secret: Option<String>,
    pub note: &'static str,
}

/// A vault data key as `GET /v1/admin/keys` lists it (never key material).
#[derive(Serialize, JsonSchema)]
pub struct KeyInfo {
    pub kid: String,
    pub kek_id: String,
    /// `active`, `retiring`, `expired` or `revoked`.
    pub state: &'static str,
    pub created: String,
    pub rotate_after: String,
    pub expires: String,
}

/// `GET /v1/admin/keys`.
#[derive(Serialize, JsonSchema)]
pub struct KeyList {
    pub colo: String,
    /// This PoP's current key, if it has one.
    pub current: Option<String>,
    pub keys: Vec<KeyInfo>,
    pub rotate_every_seconds: i64,
    pub grace_seconds: i64,
}

/// `POST /v1/admin/keys/rotate`.
#[derive(Serialize, JsonSchema)]
pub struct KeyRotated {
    pub kid: String,
    /// `active`.
    pub state: &'static str,
    pub rotate_after: String,
    pub expires: String,
}

/// `POST /v1/admin/keys/{kid}/revoke`.
#[derive(Serialize, JsonSchema)]
pub struct KeyRevoked {
    pub kid: String,
    /// `revoked`.
    pub state: &'static str,
}

/// One item as a checkout page shows it.
#[derive(Serialize, JsonSchema)]
pub struct PublicSku {
    pub id: String,
    pub name: String,
    pub category: Category,
    pub price: MinorUnits,
    /// Units not sold or held now.
    pub available: u32,
}

/// `GET /v1/events/{id}/public`: what a checkout page shows before the quote.
#[derive(Serialize, JsonSchema)]
pub struct EventPublic {
    pub event_id: String,
    pub title: String,
    pub currency: Currency,
    /// Digits after the decimal point (ISO 4217).
    pub currency_exponent: u8,
    /// The languages the policy's prompts are written in.
    pub languages: Vec<String>,
    pub jurisdiction: String,
    pub skus: Vec<PublicSku>,
    pub allowed_origins: Vec<String>,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The policy bundle an event follows.
#[derive(Serialize, JsonSchema)]
pub struct PolicyRef {
    pub jurisdiction: String,
    pub revision: u64,
    pub hash: String,
}

/// `POST /v1/admin/events`.
#[derive(Serialize, JsonSchema)]
pub struct EventCreated {
    pub event_id: String,
    pub config: EventConfig,
    pub policy: PolicyRef,
    pub summary: EventSummary,
}

/// `GET /v1/admin/events/{id}`.
#[derive(Serialize, JsonSchema)]
pub struct EventShown<'a> {
    pub event_id: &'a str,
    pub config: &'a EventConfig,
    pub summary: EventSummary,
}

/// `POST /v1/admin/events/{id}/sync`.
#[derive(Serialize, JsonSchema)]
pub struct Synced {
    pub result: Reply,
    pub summary: EventSummary,
}

/// `POST /v1/receipts/verify` for a receipt.
#[derive(Serialize, JsonSchema)]
pub struct ReceiptVerified {
    pub valid: bool,
    pub receipt_id: String,
    pub status: crate::receipt::ReceiptStatus,
    pub kid: String,
    pub policy_revision: String,
}

/// `POST /v1/receipts/verify` for an event's signed report.
#[derive(Serialize, JsonSchema)]
pub struct ReportVerified {
    pub valid: bool,
    /// `report`.
    pub kind: &'static str,
    pub event_id: String,
    pub generated_ms: i64,
    pub end_of_event: bool,
    pub clean: bool,
    pub kid: String,
}

/// What `POST /v1/receipts/verify` answers: a receipt's or a report's check.
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Verified {
    Receipt(ReceiptVerified),
    Report(ReportVerified),
}

/// A place in the event's waiting room.
#[derive(Serialize, JsonSchema)]
pub struct QueueTicket {
    /// Keep it: polling with it keeps the place; an admitted ticket may check out.
    pub ticket: String,
    /// 1-based place in line; `null` once admitted.
    pub position: Option<u32>,
    pub admitted: bool,
    /// RFC 3339 UTC, once admitted.
    pub admitted_until: Option<String>,
    pub depth: u32,
    pub poll_after_ms: i64,
}

/// `GET /v1/admin/routing`.
#[derive(Serialize, JsonSchema)]
pub struct RoutingState {
    pub colo: String,
    pub routing: crate::routing::RoutingSnapshot,
}

/// A lost checkout's charge that reconciliation refunded.
#[derive(Serialize, JsonSchema)]
pub struct LostRefunded {
    pub charge_id: String,
    pub order_id: String,
    pub amount: MinorUnits,
}

/// `POST /v1/admin/events/{id}/reconcile`: what the run found and did.
#[derive(Serialize, JsonSchema)]
pub struct ReconcileAnswer {
    pub event_id: String,
    /// Charges the acquirers listed for the event.
    pub acquirer_charges: usize,
    pub report: crate::ledger::ReconReport,
    /// Whether the edge and the acquirers agree, nothing left to settle.
    pub clean: bool,
    /// Whether the acquirers' listing was cut short (more charges than one run reads).
    pub truncated: bool,
    /// Stored payments folded in as late approvals (auth ids).
    pub late_approvals: Vec<String>,
    pub lost_checkouts_refunded: Vec<LostRefunded>,
}

/// `POST /v1/admin/bench/counter/{name}`.
#[derive(Serialize, JsonSchema)]
pub struct Count {
    pub name: String,
    pub count: i64,
}

/// `PUT /v1/admin/policies` and the rollback: what is active now.
#[derive(Serialize, JsonSchema)]
pub struct PolicyActivated {
    pub jurisdiction: String,
    pub active: crate::policy::ActivePointer,
    /// The same revision was already active: nothing changed.
    pub unchanged: bool,
}

/// Where a payment stands, as the checkout and its status URL answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// The acquirer authorized it.
    Approved,
    /// Stored in this PoP while the acquirer cannot be reached; forwarded exactly once.
    Queued,
    /// Accepted while the acquirer is still answering: ask again after `retry_after_s`.
    Confirming,
    /// The outcome is not known yet; do not pay again.
    Pending,
    Declined,
    Canceled,
}

/// The reason a card was declined, in words a buyer can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decline {
    pub code: String,
    pub message: String,
}

/// The `error` member of every error answer ([`crate::error::ApiError::body`]), and the one
/// a declined checkout carries beside `decline`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorInfo {
    /// Stable and machine-readable.
    pub code: String,
    /// A sentence for a person; never a secret or card data.
    pub message: String,
    /// Whether the same request can succeed later.
    pub retryable: bool,
}

/// An error answer's body, `{"error": {...}}` (`components.schemas.Error`; each operation
/// narrows `code` to the codes it lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Error")]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

/// The body of a checkout's answer (`POST /v1/events/{id}/checkout`) and of its status
/// URL. The checkout machine builds it; the seeded simulation checks that every answer it
/// gives parses as this type (unknown fields denied), so the document cannot promise less
/// or other than the machine says.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutAnswer {
    pub status: PaymentState,
    pub order_id: String,
    /// A sentence for the buyer.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<MinorUnits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last4: Option<String>,
    /// The policy revision the payment was decided under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// How the edge routed it (also `X-Poptill-Routing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<String>,
    /// The signed receipt (approved, queued, confirming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<crate::receipt::SignedReceipt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_id: Option<String>,
    /// The receipt's page (a capability: whoever has it can read the receipt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_url: Option<String>,
    /// When to ask again (`pending`, `confirming`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u32>,
    /// Where the payment stands (GET), for a `pending` answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline: Option<Decline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// `POST /v1/events/{id}/handover`: the session and where to find it.
#[derive(Serialize, JsonSchema)]
pub struct HandoverCreated {
    #[serde(flatten)]
    pub view: crate::handover::HandoverView,
    /// The buyer's pay page (`/p/{session_id}`), the QR code's text.
    pub pay_url: String,
    pub ws_url: String,
    pub status_url: String,
    pub qr_url: String,
}
