//! Request bodies the Worker shell parses for its own routes (the checkout's is
//! [`crate::checkout::request::CheckoutBody`]). serde parses them and `schemars` describes
//! them from the same derives, so the OpenAPI document ([`crate::openapi`]) says exactly
//! what the parser accepts: `deny_unknown_fields` becomes `additionalProperties: false`, and
//! the `schemars` attributes state the bounds the handlers enforce.

use crate::checkout::request::CartItem;
use crate::ledger::{OfflineBudget, QueueConfig, Sku};
use crate::money::MinorUnits;
use schemars::JsonSchema;
use serde::Deserialize;

/// The ids poptill takes (events, merchants, SKUs): 1 to 128 of `[A-Za-z0-9_.:-]`, as
/// [`crate::ledger::valid_id`] checks them.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,128}$";

/// `POST /v1/tokens`: a card, sealed in this PoP for one event.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The event the token may pay (a token is bound to its event and merchant).
    pub event_id: String,
    pub card: CardInput,
}

/// A card as the hosted frame sends it. It never leaves the PoP in clear.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CardInput {
    /// The card number (PAN), digits with optional spaces or dashes.
    pub number: String,
    #[schemars(range(min = 1, max = 12))]
    pub exp_month: u32,
    /// Four digits, or two (20xx).
    #[schemars(range(max = 9999))]
    pub exp_year: u32,
    /// The card's security code (3 digits, 4 for American Express).
    #[serde(default)]
    pub cvc: Option<String>,
}

/// `POST /v1/admin/merchants`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMerchant {
    /// 1 to 120 characters (surrounding spaces are trimmed).
    pub name: String,
    /// Where receipts are POSTed in signed batches: https, or http on localhost.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// `POST /v1/admin/events`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// Required with the operator key; with a merchant key, its own id or nothing.
    #[serde(default)]
    #[schemars(regex(pattern = ID_PATTERN))]
    pub merchant_id: Option<String>,
    /// 1 to 200 characters, no control characters, not only spaces.
    #[schemars(
        length(min = 1, max = 200),
        regex(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")
    )]
    pub title: String,
    /// The policy bundle's place: an upper-case ISO 3166 code such as `DE` or `US-CA`.
    #[schemars(regex(pattern = r"^[A-Z0-9-]{2,10}$"))]
    pub jurisdiction: String,
    /// ISO 4217 code of the event's prices.
    #[schemars(with = "crate::money::Currency")]
    pub currency: String,
    /// When sales open (Unix milliseconds).
    pub start_ms: i64,
    /// When the event ends (after `start_ms`).
    pub end_ms: i64,
    /// 1 to 500 items on sale.
    #[schemars(length(min = 1, max = crate::ledger::MAX_SKUS))]
    pub skus: Vec<Sku>,
    /// The merchant pages that may embed the card frame and call the card routes
    /// (`https://shop.example`), at most 50.
    #[serde(default)]
    #[schemars(length(max = crate::ledger::MAX_ORIGINS))]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub queue: Option<QueueConfig>,
    /// The offline risk budget, within the policy's limits (the policy's when left out).
    #[serde(default)]
    pub offline: Option<OfflineBudget>,
    /// Pins a policy revision instead of following the active one.
    #[serde(default)]
    pub policy_revision: Option<u64>,
}

/// `POST /v1/admin/events/{id}/refunds`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    pub order_id: String,
    /// Part of the order's total; the whole remaining amount when left out.
    #[serde(default)]
    pub amount: Option<MinorUnits>,
    /// The operator refunds outside the buyer's statutory window (e.g. a cancelled night).
    #[serde(default)]
    pub goodwill: bool,
}

/// `POST /v1/events/{id}/quote`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteBody {
    #[schemars(length(min = 1, max = crate::quote::MAX_ITEMS))]
    pub items: Vec<CartItem>,
}

/// How long a pay link stays open unless the till asks otherwise (seconds).
pub const HANDOVER_TTL_DEFAULT_S: i64 = 600;
/// The shortest and longest pay-link lifetime a till may ask for (seconds).
pub const HANDOVER_TTL_MIN_S: i64 = 5;
pub const HANDOVER_TTL_MAX_S: i64 = 1800;

/// `POST /v1/events/{id}/handover`: the cart and, optionally, how long the pay link stays
/// open.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoverBody {
    #[schemars(length(min = 1, max = crate::quote::MAX_ITEMS))]
    pub items: Vec<CartItem>,
    /// 5 to 1800 seconds; 600 when left out.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

/// `POST /v1/receipts/verify`: a signed receipt or an event's signed report, as they were
/// handed out. Described for the document only: the handler reads the body as text and
/// parses it as [`crate::receipt::SignedReport`] when it has a `report` member, else as
/// [`crate::receipt::SignedReceipt`].
#[derive(JsonSchema)]
#[serde(untagged)]
pub enum VerifyBody {
    Receipt(crate::receipt::SignedReceipt),
    Report(crate::receipt::SignedReport),
}
