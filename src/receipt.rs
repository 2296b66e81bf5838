//! Signed receipts: the receipt record, its canonical JSON, HMAC-SHA256 signatures under
//! rotating keys, status changes that re-sign, and an HTML page for the buyer.
//!
//! # Signing
//!
//! The signed bytes are
//! `"poptill-receipt-v1\n" ‖ kid ‖ "\n" ‖ canonical_json(receipt)`, MACed with
//! HMAC-SHA256 under the key named `kid`. Canonical JSON is the receipt serialized with
//! object keys sorted (byte order), no whitespace, integers only, and `refunded_amount`
//! left out when absent. Because it is computed from the typed [`Receipt`] (unknown fields
//! are refused), the bytes do not depend on how the stored JSON happened to be ordered.
//! The signature travels next to the receipt:
//!
//! ```json
//! {"receipt": {...}, "signature": {"kid": "r2", "alg": "HS256", "mac": "<base64url, no padding>"}}
//! ```
//!
//! # End-of-event reports
//!
//! The event's reconciliation report ([`crate::ledger::EventReport`]) is signed the same
//! way under the same keys with its own domain, `"poptill-report-v1\n"`, so a receipt's
//! MAC never verifies a report or the reverse: `{"report": {...}, "signature": {...}}`
//! ([`sign_report`], [`verify_report`]); `POST /v1/receipts/verify` checks either.
//!
//! # Keys
//!
//! [`ReceiptKeys::parse`] reads the `RECEIPT_KEY` secret in one of two forms:
//! - `kid1:KEY1,kid2:KEY2,…` — the **first** entry is the current signing key; the others
//!   only verify receipts signed before a rotation. To rotate, put the new key first and
//!   keep the old ones after it until their receipts no longer need verifying.
//! - `KEY` alone (what `scripts/setup` writes) — the same as `r1:KEY`.
//!
//! A KEY is at least 32 bytes, base64url or standard base64, padding optional. A kid is
//! 1–32 characters of `A-Z a-z 0-9 _ - .`.
//!
//! # Card data
//!
//! A receipt holds the card brand and [`Last4`], which accepts exactly four digits: a full
//! card number cannot be stored in it, and unknown fields (a stray `pan`) are refused.

use crate::error::ApiError;
use crate::money::{Currency, MinorUnits};
use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use std::fmt;
use std::fmt::Write as _;

type HmacSha256 = Hmac<Sha256>;

/// The only signature algorithm receipts use.
pub const ALG: &str = "HS256";
const DOMAIN: &[u8] = b"poptill-receipt-v1\n";
const REPORT_DOMAIN: &[u8] = b"poptill-report-v1\n";
/// The kid given to a bare key without one.
pub const DEFAULT_KID: &str = "r1";

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// The last four digits of a card number; nothing longer fits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Last4(String);

/// Described as what [`Last4::parse`] accepts.
impl schemars::JsonSchema for Last4 {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Last4".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "The last four digits of a card number; nothing longer fits.",
            "pattern": "^[0-9]{4}$",
        })
    }
}

impl Last4 {
    /// Exactly four ASCII digits.
    pub fn parse(s: &str) -> Result<Last4, ReceiptError> {
        if s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Last4(s.to_string()))
        } else {
            Err(ReceiptError::InvalidReceipt(
                "last4 must be exactly four digits".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Last4 {
    type Error = ReceiptError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Last4::parse(&s)
    }
}

impl From<Last4> for String {
    fn from(l: Last4) -> String {
        l.0
    }
}

impl fmt::Display for Last4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// Charged online.
    Approved,
    /// Accepted offline; not charged yet.
    Queued,
    /// Accepted offline, then charged.
    Forwarded,
    /// Accepted offline, never charged: the stored payment expired.
    Expired,
    /// The issuer said no (online, or when the queued payment was forwarded).
    Declined,
    Refunded,
    PartiallyRefunded,
}

impl ReceiptStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReceiptStatus::Approved => "approved",
            ReceiptStatus::Queued => "queued",
            ReceiptStatus::Forwarded => "forwarded",
            ReceiptStatus::Expired => "expired",
            ReceiptStatus::Declined => "declined",
            ReceiptStatus::Refunded => "refunded",
            ReceiptStatus::PartiallyRefunded => "partially_refunded",
        }
    }
}

/// One line of the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptLine {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price: MinorUnits,
    /// Tax rate of this line in basis points (2000 = 20 %).
    pub tax_rate_bps: u32,
    /// Tax amount of this line.
    pub tax: MinorUnits,
}

/// Tax charged at one rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaxLine {
    pub rate_bps: u32,
    pub amount: MinorUnits,
}

/// Totals: `total = subtotal + tax` (subtotal is net of tax), all in `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub currency: Currency,
    pub subtotal: MinorUnits,
    pub tax: MinorUnits,
    pub total: MinorUnits,
}

/// The card as a receipt may show it: brand and last four digits, nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CardSummary {
    /// e.g. `"Visa"`, `"Mastercard"`: letters, spaces and hyphens only.
    pub brand: String,
    pub last4: Last4,
}

/// A receipt. Built by the checkout (ids, lines, totals are the caller's), signed here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// `rcpt_…`, given by the caller.
    pub id: String,
    pub event_id: String,
    pub merchant_id: String,
    pub order_id: String,
    pub lines: Vec<ReceiptLine>,
    /// Tax per rate; the amounts add up to `totals.tax`.
    pub tax_breakdown: Vec<TaxLine>,
    pub totals: Totals,
    pub card: CardSummary,
    pub status: ReceiptStatus,
    pub policy_revision: String,
    pub policy_hash: String,
    /// The Cloudflare colo (PoP) that took the payment, e.g. `"FRA"`.
    pub pop_colo: String,
    /// The acquirer lane that charged (or will charge) the card.
    pub lane: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Refunded so far; present only when refunded or partially refunded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_amount: Option<MinorUnits>,
}

/// The signature block of a signed receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub kid: String,
    /// Always `HS256`.
    #[schemars(regex(pattern = "^HS256$"))]
    pub alg: String,
    /// HMAC-SHA256, base64url without padding.
    pub mac: String,
}

/// A receipt with its signature; this is what is stored and handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    pub signature: Signature,
}

impl SignedReceipt {
    /// Parses a stored signed receipt. Does not verify it: call [`verify`].
    pub fn from_json(json: &str) -> Result<SignedReceipt, ReceiptError> {
        crate::api::from_json(json).map_err(|e| {
            ReceiptError::Malformed(format!(
                "not a signed receipt (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }

    /// The JSON to store or return (compact).
    pub fn to_json(&self) -> Result<String, ReceiptError> {
        let v = serde_json::to_value(self)
            .map_err(|_| ReceiptError::Malformed("receipt cannot be serialized".into()))?;
        Ok(canonical_json(&v))
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// What can go wrong with a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptError {
    /// The signature does not match the contents.
    Tampered,
    /// The receipt names a key id not in the key set.
    UnknownKey,
    /// The stored receipt or its signature block cannot be read.
    Malformed(String),
    /// The `RECEIPT_KEY` secret cannot be read; the text never contains key material.
    InvalidKeys(String),
    /// A receipt to sign breaks an invariant (ids, amounts, totals, card fields).
    InvalidReceipt(String),
    /// That status change is not allowed from the current status.
    InvalidTransition {
        from: ReceiptStatus,
        to: ReceiptStatus,
    },
    /// The refunds would add up to more than the total.
    RefundTooLarge,
}

impl fmt::Display for ReceiptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiptError::Tampered => f.write_str("receipt signature does not match"),
            ReceiptError::UnknownKey => f.write_str("receipt signed with an unknown key id"),
            ReceiptError::Malformed(why) => write!(f, "malformed receipt: {why}"),
            ReceiptError::InvalidKeys(why) => write!(f, "invalid receipt keys: {why}"),
            ReceiptError::InvalidReceipt(why) => write!(f, "invalid receipt: {why}"),
            ReceiptError::InvalidTransition { from, to } => write!(
                f,
                "receipt cannot go from {} to {}",
                from.as_str(),
                to.as_str()
            ),
            ReceiptError::RefundTooLarge => f.write_str("refunds exceed the total"),
        }
    }
}

impl std::error::Error for ReceiptError {}

impl ReceiptError {
    /// The HTTP error for this failure.
    pub fn to_api(&self) -> ApiError {
        match self {
            ReceiptError::Tampered => ApiError::new(
                422,
                "receipt_tampered",
                "The receipt does not match its signature: it was changed after it was issued.",
            ),
            ReceiptError::UnknownKey => ApiError::new(
                422,
                "receipt_unknown_key",
                "The receipt was signed with a key this server does not know.",
            ),
            ReceiptError::Malformed(why) => ApiError::bad_request(
                "receipt_malformed",
                format!("The receipt cannot be read: {why}."),
            ),
            ReceiptError::InvalidKeys(_) => ApiError::bad_request(
                "receipt_keys_invalid",
                "The receipt signing keys are not configured correctly.",
            ),
            ReceiptError::InvalidReceipt(why) => ApiError::new(
                422,
                "receipt_invalid",
                format!("The receipt is not valid: {why}."),
            ),
            ReceiptError::InvalidTransition { from, to } => ApiError::new(
                409,
                "receipt_invalid_transition",
                format!("A {} receipt cannot become {}.", from.as_str(), to.as_str()),
            ),
            ReceiptError::RefundTooLarge => ApiError::new(
                422,
                "refund_exceeds_total",
                "The refunds would add up to more than the amount paid.",
            ),
        }
    }
}

impl From<ReceiptError> for ApiError {
    fn from(e: ReceiptError) -> ApiError {
        e.to_api()
    }
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

/// The receipt keys: the first signs, all verify. Debug never shows key bytes.
#[derive(Debug, Clone)]
pub struct ReceiptKeys {
    keys: Vec<(String, Secret<Vec<u8>>)>,
}

fn decode_key(b64: &str) -> Option<Vec<u8>> {
    let normalized: String = b64
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            other => other,
        })
        .collect();
    URL_SAFE_NO_PAD.decode(normalized.as_bytes()).ok()
}

fn kid_ok(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 32
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl ReceiptKeys {
    /// Parses `kid1:KEY1,kid2:KEY2` (first is current) or a bare `KEY` (kid `r1`).
    pub fn parse(secret: &str) -> Result<ReceiptKeys, ReceiptError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(ReceiptError::InvalidKeys("the key secret is empty".into()));
        }
        let mut keys: Vec<(String, Secret<Vec<u8>>)> = Vec::new();
        for (i, entry) in secret.split(',').enumerate() {
            let entry = entry.trim();
            let (kid, b64) = match entry.split_once(':') {
                Some((kid, b64)) => (kid.trim(), b64),
                None if !secret.contains(',') => (DEFAULT_KID, entry),
                None => {
                    return Err(ReceiptError::InvalidKeys(format!(
                        "entry {} has no kid (expected kid:key)",
                        i + 1
                    )))
                }
            };
            if !kid_ok(kid) {
                return Err(ReceiptError::InvalidKeys(format!(
                    "entry {} has an invalid kid (1-32 of A-Z a-z 0-9 _ - .)",
                    i + 1
                )));
            }
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(ReceiptError::InvalidKeys(format!(
                    "kid {kid:?} appears twice"
                )));
            }
            let Some(bytes) = decode_key(b64) else {
                return Err(ReceiptError::InvalidKeys(format!(
                    "the key of kid {kid:?} is not base64"
                )));
            };
            if bytes.len() < 32 {
                return Err(ReceiptError::InvalidKeys(format!(
                    "the key of kid {kid:?} is shorter than 32 bytes"
                )));
            }
            keys.push((kid.to_string(), Secret::new(bytes)));
        }
        Ok(ReceiptKeys { keys })
    }

    /// Builds a key set from raw keys, current first (for tests and tools).
    pub fn from_raw(keys: Vec<(String, Vec<u8>)>) -> Result<ReceiptKeys, ReceiptError> {
        if keys.is_empty() {
            return Err(ReceiptError::InvalidKeys("no keys".into()));
        }
        let mut out: Vec<(String, Secret<Vec<u8>>)> = Vec::new();
        for (kid, bytes) in keys {
            if !kid_ok(&kid) || out.iter().any(|(k, _)| *k == kid) {
                return Err(ReceiptError::InvalidKeys("invalid or repeated kid".into()));
            }
            if bytes.len() < 32 {
                return Err(ReceiptError::InvalidKeys(
                    "a key is shorter than 32 bytes".into(),
                ));
            }
            out.push((kid, Secret::new(bytes)));
        }
        Ok(ReceiptKeys { keys: out })
    }

    /// The kid new signatures use.
    pub fn current_kid(&self) -> &str {
        self.keys.first().map(|(k, _)| k.as_str()).unwrap_or("")
    }

    /// Every kid that still verifies, current first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn key(&self, kid: &str) -> Option<&Secret<Vec<u8>>> {
        self.keys.iter().find(|(k, _)| k == kid).map(|(_, s)| s)
    }
}

/// The priced parts of a receipt, taken from the quote the buyer paid: one line per quoted
/// line, the tax per rate (ppm to basis points), and the totals in the quote's currency.
pub fn priced_from_quote(q: &crate::quote::Quote) -> (Vec<ReceiptLine>, Vec<TaxLine>, Totals) {
    let lines = q
        .lines
        .iter()
        .map(|l| ReceiptLine {
            sku: l.sku.clone(),
            name: l.name.clone(),
            quantity: l.quantity,
            unit_price: l.unit_price,
            tax_rate_bps: l.rate_ppm / 100,
            tax: l.tax,
        })
        .collect();
    let tax_breakdown = q
        .tax_breakdown
        .iter()
        .map(|t| TaxLine {
            rate_bps: t.rate_ppm / 100,
            amount: t.tax,
        })
        .collect();
    let totals = Totals {
        currency: q.currency,
        subtotal: q.subtotal,
        tax: q.tax_total,
        total: q.total,
    };
    (lines, tax_breakdown, totals)
}

// ---------------------------------------------------------------------------------------
// Canonical JSON, sign, verify
// ---------------------------------------------------------------------------------------

/// JSON with object keys sorted by bytes and no whitespace. Strings use serde_json's
/// escaping, which is deterministic.
pub fn canonical_json(value: &Value) -> String {
    crate::canonical::canonical_json(value)
}

/// The canonical bytes of a receipt (what the MAC covers, after the domain and kid).
pub fn canonical_bytes(receipt: &Receipt) -> Result<Vec<u8>, ReceiptError> {
    let v = serde_json::to_value(receipt)
        .map_err(|_| ReceiptError::Malformed("receipt cannot be serialized".into()))?;
    Ok(canonical_json(&v).into_bytes())
}

fn mac_in(
    domain: &[u8],
    key: &Secret<Vec<u8>>,
    kid: &str,
    canonical: &[u8],
) -> Result<HmacSha256, ReceiptError> {
    let mut mac = HmacSha256::new_from_slice(key.expose())
        .map_err(|_| ReceiptError::InvalidKeys("unusable key".into()))?;
    mac.update(domain);
    mac.update(kid.as_bytes());
    mac.update(b"\n");
    mac.update(canonical);
    Ok(mac)
}

/// HMAC-SHA256 of `data` under every key of the set (current first), in `domain`: for ids
/// the edge makes and later recognizes without storage (see `crate::event_id`).
pub fn tags(keys: &ReceiptKeys, domain: &[u8], data: &[u8]) -> Vec<[u8; 32]> {
    keys.keys
        .iter()
        .filter_map(|(kid, key)| mac_in(domain, key, kid, data).ok())
        .map(|m| m.finalize().into_bytes().into())
        .collect()
}

/// Domain of the receipt URL capability (never valid as a receipt or report signature).
const URL_DOMAIN: &[u8] = b"poptill-receipt-url-v1\n";

/// The unguessable part of a receipt's URL: 128 bits of HMAC-SHA256 over the receipt id
/// under the current key, hex. The receipt number is sequential per event; without this
/// part nobody can read a receipt by counting (it is what makes the URL a capability).
pub fn url_token(keys: &ReceiptKeys, receipt_id: &str) -> Result<String, ReceiptError> {
    capability(keys, URL_DOMAIN, receipt_id.as_bytes())
}

/// A capability token over `data` in `domain`: 128 bits of HMAC-SHA256 under the current
/// key, hex, then the key's id (so a token made before a rotation is checked with its own
/// key while that key is kept).
pub fn capability(keys: &ReceiptKeys, domain: &[u8], data: &[u8]) -> Result<String, ReceiptError> {
    let (kid, key) = keys
        .keys
        .first()
        .ok_or_else(|| ReceiptError::InvalidKeys("no keys".into()))?;
    capability_with(key, kid, domain, data)
}

fn capability_with(
    key: &Secret<Vec<u8>>,
    kid: &str,
    domain: &[u8],
    data: &[u8],
) -> Result<String, ReceiptError> {
    let tag = mac_in(domain, key, kid, data)?.finalize().into_bytes();
    let mut out = String::with_capacity(33 + kid.len());
    for b in tag.iter().take(16) {
        let _ = write!(out, "{b:02x}");
    }
    let _ = write!(out, "{kid}");
    Ok(out)
}

/// Whether `token` is [`capability`] over `data` in `domain` under any key of the set
/// (compared in constant time).
pub fn is_capability(keys: &ReceiptKeys, domain: &[u8], data: &[u8], token: &str) -> bool {
    if token.len() < 33 || !token.is_ascii() {
        return false;
    }
    let kid = &token[32..];
    let Some((_, key)) = keys.keys.iter().find(|(k, _)| k == kid) else {
        return false;
    };
    let Ok(want) = capability_with(key, kid, domain, data) else {
        return false;
    };
    want.len() == token.len()
        && want
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A receipt's public URL: `/v1/receipts/<id>.<token>`.
pub fn url(keys: &ReceiptKeys, receipt_id: &str) -> Result<String, ReceiptError> {
    Ok(format!(
        "/v1/receipts/{receipt_id}.{}",
        url_token(keys, receipt_id)?
    ))
}

/// The receipt id of a URL path part `<id>.<token>` whose token is right under any key of
/// the set (so URLs survive a rotation while the old key is kept); `None` otherwise,
/// including a bare id.
pub fn open_url<'a>(keys: &ReceiptKeys, part: &'a str) -> Option<&'a str> {
    let (id, token) = part.split_once('.')?;
    is_capability(keys, URL_DOMAIN, id.as_bytes(), token).then_some(id)
}

/// Checks the receipt's invariants, then signs it with the current key.
pub fn sign(receipt: Receipt, keys: &ReceiptKeys) -> Result<SignedReceipt, ReceiptError> {
    validate(&receipt)?;
    let signature = sign_bytes(DOMAIN, keys, &canonical_bytes(&receipt)?)?;
    Ok(SignedReceipt { receipt, signature })
}

/// Verifies the signature in constant time (`hmac`'s `verify_slice`).
pub fn verify(signed: &SignedReceipt, keys: &ReceiptKeys) -> Result<(), ReceiptError> {
    let canonical = canonical_bytes(&signed.receipt)?;
    verify_bytes(DOMAIN, &signed.signature, keys, &canonical)
}

fn sign_bytes(
    domain: &[u8],
    keys: &ReceiptKeys,
    canonical: &[u8],
) -> Result<Signature, ReceiptError> {
    let kid = keys.current_kid().to_string();
    let key = keys.key(&kid).ok_or(ReceiptError::UnknownKey)?;
    let tag = mac_in(domain, key, &kid, canonical)?
        .finalize()
        .into_bytes();
    Ok(Signature {
        kid,
        alg: ALG.to_string(),
        mac: URL_SAFE_NO_PAD.encode(tag),
    })
}

fn verify_bytes(
    domain: &[u8],
    sig: &Signature,
    keys: &ReceiptKeys,
    canonical: &[u8],
) -> Result<(), ReceiptError> {
    if sig.alg != ALG {
        return Err(ReceiptError::Malformed(
            "the signature algorithm must be HS256".into(),
        ));
    }
    let key = keys.key(&sig.kid).ok_or(ReceiptError::UnknownKey)?;
    let tag = URL_SAFE_NO_PAD
        .decode(sig.mac.as_bytes())
        .map_err(|_| ReceiptError::Malformed("the mac is not base64url".into()))?;
    if tag.len() != 32 {
        return Err(ReceiptError::Malformed(
            "the mac has the wrong length".into(),
        ));
    }
    mac_in(domain, key, &sig.kid, canonical)?
        .verify_slice(&tag)
        .map_err(|_| ReceiptError::Tampered)
}

/// A signed end-of-event report: what the object stores and
/// `GET /v1/admin/events/{id}/report` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedReport {
    pub report: crate::ledger::EventReport,
    pub signature: Signature,
}

impl SignedReport {
    /// Parses a signed report. Does not verify it: call [`verify_report`].
    pub fn from_json(json: &str) -> Result<SignedReport, ReceiptError> {
        crate::api::from_json(json).map_err(|e| {
            ReceiptError::Malformed(format!(
                "not a signed report (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }

    /// The JSON to store or return (canonical, compact).
    pub fn to_json(&self) -> Result<String, ReceiptError> {
        let v = serde_json::to_value(self)
            .map_err(|_| ReceiptError::Malformed("report cannot be serialized".into()))?;
        Ok(canonical_json(&v))
    }
}

fn report_bytes(report: &crate::ledger::EventReport) -> Result<Vec<u8>, ReceiptError> {
    let v = serde_json::to_value(report)
        .map_err(|_| ReceiptError::Malformed("report cannot be serialized".into()))?;
    Ok(canonical_json(&v).into_bytes())
}

/// Signs an end-of-event report with the current receipt key, under the report domain.
pub fn sign_report(
    report: crate::ledger::EventReport,
    keys: &ReceiptKeys,
) -> Result<SignedReport, ReceiptError> {
    let signature = sign_bytes(REPORT_DOMAIN, keys, &report_bytes(&report)?)?;
    Ok(SignedReport { report, signature })
}

/// Verifies a signed report in constant time, like [`verify`] for receipts.
pub fn verify_report(signed: &SignedReport, keys: &ReceiptKeys) -> Result<(), ReceiptError> {
    let canonical = report_bytes(&signed.report)?;
    verify_bytes(REPORT_DOMAIN, &signed.signature, keys, &canonical)
}

impl ReceiptError {
    /// The HTTP error for a report that does not verify (as [`ReceiptError::to_api`], with
    /// codes and sentences about a report).
    pub fn to_report_api(&self) -> ApiError {
        match self {
            ReceiptError::Tampered => ApiError::new(
                422,
                "report_tampered",
                "The report does not match its signature: it was changed after it was issued.",
            ),
            ReceiptError::UnknownKey => ApiError::new(
                422,
                "report_unknown_key",
                "The report was signed with a key this server does not know.",
            ),
            ReceiptError::Malformed(why) => ApiError::bad_request(
                "report_malformed",
                format!("The report cannot be read: {why}."),
            ),
            other => other.to_api(),
        }
    }
}

fn id_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.' || b == b':')
}

/// The invariants every signed receipt keeps.
pub fn validate(r: &Receipt) -> Result<(), ReceiptError> {
    let bad = |why: &str| Err(ReceiptError::InvalidReceipt(why.to_string()));
    if !r.id.starts_with("rcpt_") || !id_ok(&r.id, 64) {
        return bad("id must look like rcpt_… (at most 64 characters)");
    }
    for (name, v) in [
        ("event_id", &r.event_id),
        ("merchant_id", &r.merchant_id),
        ("order_id", &r.order_id),
        ("lane", &r.lane),
    ] {
        if !id_ok(v, 128) {
            return Err(ReceiptError::InvalidReceipt(format!(
                "{name} must be 1-128 characters of letters, digits, _ - . :"
            )));
        }
    }
    if r.pop_colo.len() > 16 || r.policy_revision.len() > 128 || r.policy_hash.len() > 128 {
        return bad("pop_colo, policy_revision or policy_hash is too long");
    }
    if r.lines.is_empty() || r.lines.len() > 500 {
        return bad("a receipt has 1 to 500 lines");
    }
    for line in &r.lines {
        if line.quantity == 0 || line.unit_price.0 < 0 || line.tax.0 < 0 {
            return bad("line quantities must be positive and amounts not negative");
        }
        if line.name.is_empty() || line.name.len() > 200 || line.sku.len() > 64 {
            return bad("a line needs a name (at most 200 bytes) and a sku of at most 64");
        }
    }
    let t = &r.totals;
    if t.subtotal.0 < 0 || t.tax.0 < 0 {
        return bad("totals must not be negative");
    }
    if t.subtotal.checked_add(t.tax) != Some(t.total) {
        return bad("total must equal subtotal plus tax");
    }
    let mut tax_sum = MinorUnits::ZERO;
    for tl in &r.tax_breakdown {
        tax_sum = tax_sum
            .checked_add(tl.amount)
            .ok_or_else(|| ReceiptError::InvalidReceipt("tax breakdown overflows".into()))?;
    }
    if tax_sum != t.tax {
        return bad("the tax breakdown must add up to the tax total");
    }
    let brand = &r.card.brand;
    if brand.is_empty()
        || brand.len() > 24
        || !brand
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b' ' || b == b'-')
    {
        return bad("card brand must be 1-24 letters, spaces or hyphens");
    }
    if r.updated_ms < r.created_ms {
        return bad("updated_ms must not be before created_ms");
    }
    match (r.status, r.refunded_amount) {
        (ReceiptStatus::Refunded, Some(a)) if a == t.total => {}
        (ReceiptStatus::PartiallyRefunded, Some(a)) if a.0 > 0 && a < t.total => {}
        (ReceiptStatus::Refunded | ReceiptStatus::PartiallyRefunded, _) => {
            return bad("refunded_amount must match the refund status");
        }
        (_, Some(_)) => return bad("refunded_amount only belongs to refunded receipts"),
        (_, None) => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Status changes
// ---------------------------------------------------------------------------------------

/// A change to a receipt after it was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StatusChange {
    /// A queued payment was charged.
    Forwarded,
    /// A queued payment expired before it could be charged.
    Expired,
    /// A queued payment was declined when forwarded.
    Declined,
    /// Part or all of the amount was refunded (this refund only, not the running total).
    Refund { amount: MinorUnits },
}

/// Verifies `signed`, applies `change` (allowed: queued → forwarded | expired | declined;
/// expired → forwarded, a late approval; approved | forwarded | partially_refunded →
/// refund), sets `updated_ms` and re-signs with the current key.
pub fn update_status(
    signed: &SignedReceipt,
    change: StatusChange,
    now_ms: i64,
    keys: &ReceiptKeys,
) -> Result<SignedReceipt, ReceiptError> {
    verify(signed, keys)?;
    let mut r = signed.receipt.clone();
    let from = r.status;
    let to = match change {
        StatusChange::Forwarded => ReceiptStatus::Forwarded,
        StatusChange::Expired => ReceiptStatus::Expired,
        StatusChange::Declined => ReceiptStatus::Declined,
        StatusChange::Refund { amount } => {
            let refundable = matches!(
                from,
                ReceiptStatus::Approved
                    | ReceiptStatus::Forwarded
                    | ReceiptStatus::PartiallyRefunded
            );
            if !refundable || amount.0 <= 0 {
                return Err(ReceiptError::InvalidTransition {
                    from,
                    to: ReceiptStatus::Refunded,
                });
            }
            let so_far = r.refunded_amount.unwrap_or(MinorUnits::ZERO);
            let total_refunded = so_far
                .checked_add(amount)
                .ok_or(ReceiptError::RefundTooLarge)?;
            if total_refunded > r.totals.total {
                return Err(ReceiptError::RefundTooLarge);
            }
            r.refunded_amount = Some(total_refunded);
            if total_refunded == r.totals.total {
                ReceiptStatus::Refunded
            } else {
                ReceiptStatus::PartiallyRefunded
            }
        }
    };
    let queued_change = matches!(
        change,
        StatusChange::Forwarded | StatusChange::Expired | StatusChange::Declined
    );
    let late_approval = change == StatusChange::Forwarded && from == ReceiptStatus::Expired;
    if queued_change && from != ReceiptStatus::Queued && !late_approval {
        return Err(ReceiptError::InvalidTransition { from, to });
    }
    r.status = to;
    r.updated_ms = now_ms.max(r.updated_ms);
    sign(r, keys)
}

// ---------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// `2000` → `20%`, `550` → `5.5%`, `1025` → `10.25%`.
fn format_rate(bps: u32) -> String {
    let (whole, frac) = (bps / 100, bps % 100);
    if frac == 0 {
        format!("{whole}%")
    } else if frac % 10 == 0 {
        format!("{whole}.{}%", frac / 10)
    } else {
        format!("{whole}.{frac:02}%")
    }
}

/// `YYYY-MM-DD HH:MM UTC` from Unix milliseconds (proleptic Gregorian calendar).
fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        sod / 3_600,
        (sod % 3_600) / 60
    )
}

/// The headline and the plain explanation of a status.
fn status_text(r: &Receipt) -> (&'static str, String) {
    let cur = r.totals.currency;
    let total = r.totals.total.display(cur);
    let refunded = r.refunded_amount.unwrap_or(MinorUnits::ZERO).display(cur);
    match r.status {
        ReceiptStatus::Approved => ("Paid", format!("{total} was charged to your card.")),
        ReceiptStatus::Queued => (
            "Accepted offline — not charged yet",
            format!(
                "Accepted offline, will be charged when the acquirer answers. {total} has not \
                 been taken from your card yet. If the charge is declined later, this receipt \
                 will say so."
            ),
        ),
        ReceiptStatus::Forwarded => (
            "Paid",
            format!("Accepted offline, then charged: {total} was taken from your card."),
        ),
        ReceiptStatus::Expired => (
            "Not charged",
            "This payment was accepted offline but could not be sent to the acquirer in time. \
             Nothing was taken from your card."
                .to_string(),
        ),
        ReceiptStatus::Declined => (
            "Declined",
            "The card issuer declined this payment. Nothing was taken from your card.".to_string(),
        ),
        ReceiptStatus::Refunded => (
            "Refunded",
            format!("The full amount, {refunded}, was refunded to your card."),
        ),
        ReceiptStatus::PartiallyRefunded => (
            "Partially refunded",
            format!("{refunded} of {total} was refunded to your card."),
        ),
    }
}

/// A self-contained HTML page for the buyer. Every value from the receipt is escaped.
pub fn render_html(signed: &SignedReceipt) -> String {
    let r = &signed.receipt;
    let cur = r.totals.currency;
    let money = |m: MinorUnits| escape_html(&m.display(cur));
    let (headline, explanation) = status_text(r);
    let mut h = String::with_capacity(4_096);
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Receipt {id}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;\
         padding:0 1rem;color:#111}}table{{width:100%;border-collapse:collapse}}\
         td,th{{padding:.3rem;border-bottom:1px solid #ddd;text-align:left}}\
         .num{{text-align:right}}.status{{padding:.8rem;border:2px solid #333;border-radius:.4rem}}\
         .status-queued{{border-color:#b58100;background:#fff8e1}}\
         .status-declined,.status-expired{{border-color:#b00020;background:#fdecea}}\
         small{{color:#555}}</style></head><body><main>\n\
         <h1>Receipt</h1>\n\
         <section class=\"status status-{status}\" data-status=\"{status}\">\
         <p><strong>{headline}</strong></p><p>{explanation}</p></section>\n",
        id = escape_html(&r.id),
        status = escape_html(r.status.as_str()),
        headline = escape_html(headline),
        explanation = escape_html(&explanation),
    );
    h.push_str(
        "<table class=\"lines\"><thead><tr><th>Item</th><th class=\"num\">Qty</th>\
         <th class=\"num\">Unit price</th><th class=\"num\">Tax rate</th>\
         <th class=\"num\">Amount</th></tr></thead><tbody>\n",
    );
    for line in &r.lines {
        let amount = line
            .unit_price
            .checked_mul(i64::from(line.quantity))
            .map(money)
            .unwrap_or_else(|| "—".to_string());
        let _ = writeln!(
            h,
            "<tr><td>{name}<br><small>{sku}</small></td><td class=\"num\">{qty}</td>\
             <td class=\"num\">{unit}</td><td class=\"num\">{rate}</td>\
             <td class=\"num\">{amount}</td></tr>",
            name = escape_html(&line.name),
            sku = escape_html(&line.sku),
            qty = line.quantity,
            unit = money(line.unit_price),
            rate = format_rate(line.tax_rate_bps),
        );
    }
    h.push_str("</tbody></table>\n<table class=\"totals\"><tbody>\n");
    let _ = writeln!(
        h,
        "<tr><th>Subtotal</th><td class=\"num\">{}</td></tr>",
        money(r.totals.subtotal)
    );
    for tl in &r.tax_breakdown {
        let _ = writeln!(
            h,
            "<tr><th>Tax {}</th><td class=\"num\">{}</td></tr>",
            format_rate(tl.rate_bps),
            money(tl.amount)
        );
    }
    let _ = writeln!(
        h,
        "<tr><th>Tax total</th><td class=\"num\">{}</td></tr>\n\
         <tr><th>Total</th><td class=\"num\"><strong>{}</strong></td></tr>",
        money(r.totals.tax),
        money(r.totals.total)
    );
    if let Some(refunded) = r.refunded_amount {
        let _ = writeln!(
            h,
            "<tr><th>Refunded</th><td class=\"num\">{}</td></tr>",
            money(refunded)
        );
    }
    h.push_str("</tbody></table>\n");
    let _ = write!(
        h,
        "<p>Card: {brand} ending in {last4}</p>\n<dl>\
         <dt>Receipt</dt><dd>{id}</dd><dt>Order</dt><dd>{order}</dd>\
         <dt>Date</dt><dd>{created}</dd><dt>Last updated</dt><dd>{updated}</dd>\
         <dt>Merchant</dt><dd>{merchant}</dd><dt>Event</dt><dd>{event}</dd></dl>\n\
         <p><small>Taken at {colo} via {lane}; rules revision {rev} ({hash}); \
         signed with key {kid}.</small></p>\n</main></body></html>\n",
        brand = escape_html(&r.card.brand),
        last4 = escape_html(r.card.last4.as_str()),
        id = escape_html(&r.id),
        order = escape_html(&r.order_id),
        created = format_utc(r.created_ms),
        updated = format_utc(r.updated_ms),
        merchant = escape_html(&r.merchant_id),
        event = escape_html(&r.event_id),
        colo = escape_html(&r.pop_colo),
        lane = escape_html(&r.lane),
        rev = escape_html(&r.policy_revision),
        hash = escape_html(&r.policy_hash.chars().take(16).collect::<String>()),
        kid = escape_html(&signed.signature.kid),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [7u8; 32];
    const K2: [u8; 32] = [9u8; 32];

    fn b64(k: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(k)
    }

    fn keys_v1() -> ReceiptKeys {
        ReceiptKeys::parse(&format!("k1:{}", b64(&K1))).unwrap()
    }

    #[test]
    fn a_receipt_url_is_a_capability_that_survives_rotation() {
        let keys = keys_v1();
        let id = "rcpt_evt_abc-000001";
        let u = url(&keys, id).unwrap();
        let part = u.strip_prefix("/v1/receipts/").unwrap();
        assert_eq!(open_url(&keys, part), Some(id));
        // 128 bits of tag, then the kid.
        let token = part.split_once('.').unwrap().1;
        assert_eq!(token.len(), 32 + 2);
        // A bare id, a counted neighbour with this token, a flipped bit: not found.
        assert_eq!(open_url(&keys, id), None);
        assert_eq!(
            open_url(&keys, &format!("rcpt_evt_abc-000002.{token}")),
            None
        );
        let mut bad = part.to_string().into_bytes();
        bad[part.len() - 3] ^= 1;
        assert_eq!(open_url(&keys, std::str::from_utf8(&bad).unwrap()), None);
        // After a rotation that keeps the old key, old URLs still open; new ones use k2.
        let rotated = ReceiptKeys::parse(&format!("k2:{},k1:{}", b64(&K2), b64(&K1))).unwrap();
        assert_eq!(open_url(&rotated, part), Some(id));
        let newer = url(&rotated, id).unwrap();
        assert!(newer.ends_with("k2"));
        assert_eq!(
            open_url(&keys, newer.strip_prefix("/v1/receipts/").unwrap()),
            None
        );
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn receipt() -> Receipt {
        Receipt {
            id: "rcpt_01HZX".into(),
            event_id: "evt_market".into(),
            merchant_id: "mer_42".into(),
            order_id: "ord_7".into(),
            lines: vec![
                ReceiptLine {
                    sku: "TSHIRT-M".into(),
                    name: "T-shirt".into(),
                    quantity: 2,
                    unit_price: MinorUnits(1_500),
                    tax_rate_bps: 2_000,
                    tax: MinorUnits(600),
                },
                ReceiptLine {
                    sku: "TICKET".into(),
                    name: "Entry".into(),
                    quantity: 1,
                    unit_price: MinorUnits(1_000),
                    tax_rate_bps: 550,
                    tax: MinorUnits(55),
                },
            ],
            tax_breakdown: vec![
                TaxLine {
                    rate_bps: 2_000,
                    amount: MinorUnits(600),
                },
                TaxLine {
                    rate_bps: 550,
                    amount: MinorUnits(55),
                },
            ],
            totals: Totals {
                currency: eur(),
                subtotal: MinorUnits(4_000),
                tax: MinorUnits(655),
                total: MinorUnits(4_655),
            },
            card: CardSummary {
                brand: "Visa".into(),
                last4: Last4::parse("4242").unwrap(),
            },
            status: ReceiptStatus::Approved,
            policy_revision: "fr-2025.11.3".into(),
            policy_hash: "sha256:9f2c1e0d4b7a".into(),
            pop_colo: "CDG".into(),
            lane: "stripe_eu".into(),
            created_ms: 1_764_209_580_000,
            updated_ms: 1_764_209_580_000,
            refunded_amount: None,
        }
    }

    #[test]
    fn sign_verify_round_trip_through_json() {
        let keys = keys_v1();
        let signed = sign(receipt(), &keys).unwrap();
        assert_eq!(signed.signature.kid, "k1");
        assert_eq!(signed.signature.alg, "HS256");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&signed.signature.mac).unwrap().len(),
            32
        );
        assert_eq!(verify(&signed, &keys), Ok(()));
        let json = signed.to_json().unwrap();
        let back = SignedReceipt::from_json(&json).unwrap();
        assert_eq!(back, signed);
        assert_eq!(verify(&back, &keys), Ok(()));
        // A different key of the same kid does not verify.
        let other = ReceiptKeys::parse(&format!("k1:{}", b64(&K2))).unwrap();
        assert_eq!(verify(&signed, &other), Err(ReceiptError::Tampered));
    }

    #[test]
    fn any_changed_field_is_tampered() {
        let keys = keys_v1();
        let signed = sign(receipt(), &keys).unwrap();
        let changes: Vec<fn(&mut Receipt)> = vec![
            |r| r.totals.total = MinorUnits(4_654),
            |r| r.lines[0].unit_price = MinorUnits(1),
            |r| r.status = ReceiptStatus::Refunded,
            |r| r.card.last4 = Last4::parse("4243").unwrap(),
            |r| r.updated_ms += 1,
            |r| r.refunded_amount = Some(MinorUnits(1)),
            |r| r.lines[1].name.push(' '),
            |r| r.totals.currency = Currency::parse("USD").unwrap(),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut t = signed.clone();
            change(&mut t.receipt);
            assert_ne!(t.receipt, signed.receipt, "change {i} changed nothing");
            assert_eq!(verify(&t, &keys), Err(ReceiptError::Tampered), "change {i}");
        }
        // The same through stored JSON text.
        let json = signed.to_json().unwrap();
        for (from, to) in [
            ("\"total\":4655", "\"total\":4555"),
            ("\"status\":\"approved\"", "\"status\":\"refunded\""),
            ("\"last4\":\"4242\"", "\"last4\":\"1111\""),
        ] {
            assert!(json.contains(from), "{from} not in {json}");
            let t = SignedReceipt::from_json(&json.replace(from, to)).unwrap();
            assert_eq!(verify(&t, &keys), Err(ReceiptError::Tampered));
            assert_eq!(
                verify(&t, &keys).unwrap_err().to_api().code,
                "receipt_tampered"
            );
        }
        // A changed mac is tampered too.
        let mut t = signed.clone();
        let mut mac = URL_SAFE_NO_PAD.decode(&t.signature.mac).unwrap();
        mac[0] ^= 1;
        t.signature.mac = b64(&mac);
        assert_eq!(verify(&t, &keys), Err(ReceiptError::Tampered));
    }

    #[test]
    fn unknown_kid_and_malformed_signatures() {
        let keys = keys_v1();
        let mut signed = sign(receipt(), &keys).unwrap();
        let mut t = signed.clone();
        t.signature.kid = "k9".into();
        assert_eq!(verify(&t, &keys), Err(ReceiptError::UnknownKey));
        assert_eq!(
            ReceiptError::UnknownKey.to_api().code,
            "receipt_unknown_key"
        );
        let mut t = signed.clone();
        t.signature.alg = "none".into();
        assert!(matches!(verify(&t, &keys), Err(ReceiptError::Malformed(_))));
        signed.signature.mac = "!!!".into();
        assert!(matches!(
            verify(&signed, &keys),
            Err(ReceiptError::Malformed(_))
        ));
        signed.signature.mac = b64(&[1, 2, 3]);
        assert!(matches!(
            verify(&signed, &keys),
            Err(ReceiptError::Malformed(_))
        ));
        let e = SignedReceipt::from_json("{\"receipt\":").unwrap_err();
        assert_eq!(e.to_api().code, "receipt_malformed");
        assert_eq!(e.to_api().status, 400);
    }

    #[test]
    fn old_key_still_verifies_after_rotation() {
        let v1 = keys_v1();
        let old = sign(receipt(), &v1).unwrap();
        let v2 = ReceiptKeys::parse(&format!("k2:{}, k1:{}", b64(&K2), b64(&K1))).unwrap();
        assert_eq!(v2.current_kid(), "k2");
        assert_eq!(v2.kids(), ["k2", "k1"]);
        assert_eq!(verify(&old, &v2), Ok(()));
        let new = sign(receipt(), &v2).unwrap();
        assert_eq!(new.signature.kid, "k2");
        assert_ne!(new.signature.mac, old.signature.mac);
        assert_eq!(verify(&new, &v2), Ok(()));
        // Old servers do not know k2; once k1 is retired its receipts stop verifying.
        assert_eq!(verify(&new, &v1), Err(ReceiptError::UnknownKey));
        let v3 = ReceiptKeys::parse(&format!("k2:{}", b64(&K2))).unwrap();
        assert_eq!(verify(&old, &v3), Err(ReceiptError::UnknownKey));
        // Updating an old receipt re-signs it with the current key.
        let refunded = update_status(
            &old,
            StatusChange::Refund {
                amount: MinorUnits(655),
            },
            old.receipt.updated_ms + 5,
            &v2,
        )
        .unwrap();
        assert_eq!(refunded.signature.kid, "k2");
    }

    #[test]
    fn key_set_parsing() {
        // A bare key, as scripts/setup writes it, is kid r1; standard base64 works too.
        let bare = ReceiptKeys::parse(&b64(&K1)).unwrap();
        assert_eq!(bare.current_kid(), DEFAULT_KID);
        use base64::engine::general_purpose::STANDARD;
        let std = ReceiptKeys::parse(&format!("r1:{}", STANDARD.encode([0xfbu8; 33]))).unwrap();
        assert_eq!(std.current_kid(), "r1");
        let signed = sign(receipt(), &bare).unwrap();
        let explicit = ReceiptKeys::parse(&format!("r1:{}", b64(&K1))).unwrap();
        assert_eq!(verify(&signed, &explicit), Ok(()));

        assert!(ReceiptKeys::parse("").is_err());
        assert!(ReceiptKeys::parse("k1:short").is_err());
        assert!(ReceiptKeys::parse(&format!("k1:{}", b64(&[1u8; 16]))).is_err());
        assert!(ReceiptKeys::parse(&format!("k1:{0},k1:{0}", b64(&K1))).is_err());
        assert!(ReceiptKeys::parse(&format!("k1:{0},{0}", b64(&K1))).is_err());
        assert!(ReceiptKeys::parse(&format!("bad kid:{}", b64(&K1))).is_err());
        assert!(ReceiptKeys::parse("k1:@@@@").is_err());
        // Neither Debug nor errors show key material.
        let printed = format!("{:?}", keys_v1());
        assert!(!printed.contains(&b64(&K1)));
        assert!(!printed.contains("7, 7, 7"));
        let err = ReceiptKeys::parse(&format!("k1:{}", b64(&[3u8; 8]))).unwrap_err();
        assert!(!err.to_string().contains(&b64(&[3u8; 8])));
        assert!(!err.to_api().message.contains(&b64(&[3u8; 8])));
    }

    #[test]
    fn canonical_bytes_do_not_depend_on_input_field_order() {
        let v: Value =
            serde_json::from_str(r#"{ "b": 1, "a": {"d": [1, {"z": 0, "y": " x "}], "c": null} }"#)
                .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[1,{"y":" x ","z":0}]},"b":1}"#
        );

        let keys = keys_v1();
        let signed = sign(receipt(), &keys).unwrap();
        let forward = serde_json::to_string(&signed).unwrap();
        // Same data, keys reversed at every level and pretty-printed.
        fn reversed(v: &Value) -> Value {
            match v {
                Value::Object(m) => {
                    let mut out = serde_json::Map::new();
                    let mut entries: Vec<_> = m.iter().collect();
                    entries.reverse();
                    for (k, v) in entries {
                        out.insert(k.clone(), reversed(v));
                    }
                    Value::Object(out)
                }
                Value::Array(a) => Value::Array(a.iter().map(reversed).collect()),
                other => other.clone(),
            }
        }
        let pretty =
            serde_json::to_string_pretty(&reversed(&serde_json::from_str(&forward).unwrap()))
                .unwrap();
        let a = SignedReceipt::from_json(&forward).unwrap();
        let b = SignedReceipt::from_json(&pretty).unwrap();
        assert_eq!(
            canonical_bytes(&a.receipt).unwrap(),
            canonical_bytes(&b.receipt).unwrap()
        );
        assert_eq!(verify(&b, &keys), Ok(()));
        let canon = String::from_utf8(canonical_bytes(&a.receipt).unwrap()).unwrap();
        assert!(canon.starts_with("{\"card\":{\"brand\":\"Visa\",\"last4\":\"4242\"}"));
        assert!(canon.contains(
            "\"totals\":{\"currency\":\"EUR\",\"subtotal\":4000,\"tax\":655,\"total\":4655}"
        ));
        assert!(!canon.contains('\n'));
        assert!(!canon.contains("refunded_amount"));
    }

    #[test]
    fn no_full_card_number_ever() {
        assert!(Last4::parse("4242424242424242").is_err());
        assert!(Last4::parse("424").is_err());
        assert!(Last4::parse("42a2").is_err());
        let signed = sign(receipt(), &keys_v1()).unwrap();
        let json = signed.to_json().unwrap();
        let with_pan = json.replace("\"last4\":\"4242\"", "\"last4\":\"4242424242424242\"");
        assert!(matches!(
            SignedReceipt::from_json(&with_pan),
            Err(ReceiptError::Malformed(_))
        ));
        // The error does not echo the number.
        let e = SignedReceipt::from_json(&with_pan).unwrap_err();
        assert!(!e.to_string().contains("4242424242424242"));
        let extra = json.replace("\"last4\":", "\"pan\":\"4242424242424242\",\"last4\":");
        assert!(SignedReceipt::from_json(&extra).is_err());
        // Nor can the brand carry digits.
        let mut r = receipt();
        r.card.brand = "4242424242424242".into();
        assert!(matches!(
            sign(r, &keys_v1()),
            Err(ReceiptError::InvalidReceipt(_))
        ));
        // No run of 5+ digits that looks like a PAN reaches the stored JSON or the page.
        for text in [json, render_html(&signed)] {
            assert!(!text.contains("4242424242"));
        }
    }

    #[test]
    fn sign_refuses_inconsistent_receipts() {
        let keys = keys_v1();
        let cases: Vec<fn(&mut Receipt)> = vec![
            |r| r.id = "ord_1".into(),
            |r| r.totals.total = MinorUnits(1),
            |r| {
                r.tax_breakdown.pop();
            },
            |r| r.lines.clear(),
            |r| r.lines[0].quantity = 0,
            |r| r.updated_ms = r.created_ms - 1,
            |r| r.refunded_amount = Some(MinorUnits(5)),
            |r| r.status = ReceiptStatus::Refunded,
            |r| r.event_id = "<script>".into(),
        ];
        for (i, case) in cases.iter().enumerate() {
            let mut r = receipt();
            case(&mut r);
            assert!(
                matches!(sign(r, &keys), Err(ReceiptError::InvalidReceipt(_))),
                "case {i}"
            );
        }
        assert_eq!(
            ReceiptError::InvalidReceipt("x".into()).to_api().status,
            422
        );
    }

    #[test]
    fn status_changes_re_sign_with_a_new_updated_ms() {
        let keys = keys_v1();
        let mut r = receipt();
        r.status = ReceiptStatus::Queued;
        let queued = sign(r, &keys).unwrap();
        let t0 = queued.receipt.updated_ms;

        let fwd = update_status(&queued, StatusChange::Forwarded, t0 + 60_000, &keys).unwrap();
        assert_eq!(fwd.receipt.status, ReceiptStatus::Forwarded);
        assert_eq!(fwd.receipt.updated_ms, t0 + 60_000);
        assert_eq!(fwd.receipt.created_ms, queued.receipt.created_ms);
        assert_ne!(fwd.signature.mac, queued.signature.mac);
        assert_eq!(verify(&fwd, &keys), Ok(()));

        let exp = update_status(&queued, StatusChange::Expired, t0 + 86_400_000, &keys).unwrap();
        assert_eq!(exp.receipt.status, ReceiptStatus::Expired);
        assert_eq!(verify(&exp, &keys), Ok(()));
        let dec = update_status(&queued, StatusChange::Declined, t0 + 1, &keys).unwrap();
        assert_eq!(dec.receipt.status, ReceiptStatus::Declined);

        // Only queued payments are forwarded or expire; queued ones are not refunded.
        assert_eq!(
            update_status(&fwd, StatusChange::Expired, t0 + 2, &keys),
            Err(ReceiptError::InvalidTransition {
                from: ReceiptStatus::Forwarded,
                to: ReceiptStatus::Expired
            })
        );
        let refund = |a| StatusChange::Refund {
            amount: MinorUnits(a),
        };
        assert!(matches!(
            update_status(&queued, refund(100), t0 + 2, &keys),
            Err(ReceiptError::InvalidTransition { .. })
        ));
        assert!(matches!(
            update_status(&exp, refund(100), t0 + 2, &keys),
            Err(ReceiptError::InvalidTransition { .. })
        ));
        // An expired payment whose charge came in after all (a late approval that
        // reconciliation found) is forwarded; a declined one is not.
        let late = update_status(&exp, StatusChange::Forwarded, t0 + 3, &keys).unwrap();
        assert_eq!(late.receipt.status, ReceiptStatus::Forwarded);
        assert_eq!(verify(&late, &keys), Ok(()));
        assert!(matches!(
            update_status(&dec, StatusChange::Forwarded, t0 + 3, &keys),
            Err(ReceiptError::InvalidTransition { .. })
        ));

        // Refunds: partial, then too much, then the rest.
        let part = update_status(&fwd, refund(1_000), t0 + 120_000, &keys).unwrap();
        assert_eq!(part.receipt.status, ReceiptStatus::PartiallyRefunded);
        assert_eq!(part.receipt.refunded_amount, Some(MinorUnits(1_000)));
        assert_eq!(verify(&part, &keys), Ok(()));
        assert_eq!(
            update_status(&part, refund(3_656), t0 + 130_000, &keys),
            Err(ReceiptError::RefundTooLarge)
        );
        assert!(update_status(&part, refund(0), t0 + 130_000, &keys).is_err());
        let full = update_status(&part, refund(3_655), t0 + 140_000, &keys).unwrap();
        assert_eq!(full.receipt.status, ReceiptStatus::Refunded);
        assert_eq!(full.receipt.refunded_amount, Some(MinorUnits(4_655)));
        assert_eq!(full.receipt.updated_ms, t0 + 140_000);
        assert!(update_status(&full, refund(1), t0 + 150_000, &keys).is_err());

        // A tampered receipt is not re-signed.
        let mut forged = queued.clone();
        forged.receipt.totals.total = MinorUnits(1);
        assert_eq!(
            update_status(&forged, StatusChange::Forwarded, t0 + 1, &keys),
            Err(ReceiptError::Tampered)
        );
    }

    #[test]
    fn html_escapes_and_explains_the_status() {
        let keys = keys_v1();
        let mut r = receipt();
        r.lines[0].name = "<script>alert('x')</script> & \"more\"".into();
        r.status = ReceiptStatus::Queued;
        let html = render_html(&sign(r, &keys).unwrap());
        assert!(!html.contains("<script>"));
        assert!(
            html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;more&quot;")
        );
        assert!(html.contains("Accepted offline, will be charged when the acquirer answers."));
        assert!(html.contains("data-status=\"queued\""));
        assert!(html.contains("46.55 EUR has not been taken from your card yet"));
        assert!(html.contains("<td class=\"num\">15.00 EUR</td>"));
        assert!(html.contains("<td class=\"num\">30.00 EUR</td>"));
        assert!(html.contains("<tr><th>Tax 20%</th><td class=\"num\">6.00 EUR</td></tr>"));
        assert!(html.contains("<tr><th>Tax 5.5%</th><td class=\"num\">0.55 EUR</td></tr>"));
        assert!(html.contains("<strong>46.55 EUR</strong>"));
        assert!(html.contains("Visa ending in 4242"));
        assert!(html.contains("2025-11-27 02:13 UTC"));
        assert!(html.contains("signed with key k1"));

        // Approved, in a currency without minor digits.
        let mut r = receipt();
        r.totals.currency = Currency::parse("JPY").unwrap();
        let html = render_html(&sign(r, &keys).unwrap());
        assert!(html.contains("<strong>4655 JPY</strong>"));
        assert!(html.contains("<strong>Paid</strong>"));
        assert!(!html.contains("offline"));
    }

    #[test]
    fn html_for_refunds_and_expiry() {
        let keys = keys_v1();
        let signed = sign(receipt(), &keys).unwrap();
        let part = update_status(
            &signed,
            StatusChange::Refund {
                amount: MinorUnits(1_000),
            },
            signed.receipt.updated_ms + 1,
            &keys,
        )
        .unwrap();
        let html = render_html(&part);
        assert!(html.contains("10.00 EUR of 46.55 EUR was refunded to your card."));
        assert!(html.contains("<tr><th>Refunded</th><td class=\"num\">10.00 EUR</td></tr>"));

        let mut r = receipt();
        r.status = ReceiptStatus::Queued;
        let q = sign(r, &keys).unwrap();
        let exp =
            update_status(&q, StatusChange::Expired, q.receipt.updated_ms + 1, &keys).unwrap();
        let html = render_html(&exp);
        assert!(html.contains("<strong>Not charged</strong>"));
        assert!(html.contains("Nothing was taken from your card."));
    }

    #[test]
    fn a_report_mac_is_not_a_receipt_mac() {
        let keys = keys_v1();
        let report: crate::ledger::EventReport = serde_json::from_value(serde_json::json!({
            "event_id": "evt_1", "merchant_id": "m_1", "currency": "EUR",
            "event_end_ms": 10, "generated_ms": 11, "reason": "event_end",
            "end_of_event": true, "covered": {"from_ms": 0, "to_ms": 11},
            "truncated": false, "clean": true,
            "totals": {"orders": 0, "paid_orders": 0, "sales": 0, "refunded": 0, "net": 0,
                "awaiting_forward": 0, "acquirer_charges": 0, "acquirer_charged": 0,
                "acquirer_refunded": 0, "lost_charges": 0, "lost_charged": 0, "lost_refunded": 0},
            "lanes": [], "refunds": {"succeeded": 0, "succeeded_amount": 0, "pending": 0,
                "pending_amount": 0, "failed": 0},
            "orders_by_state": {}, "matched": 0,
            "discrepancies": {"missing_at_acquirer": [], "missing_at_edge": [],
                "amount_mismatch": [], "awaiting_forward": [], "lost_refunding": [],
                "refunded_unpaid": []}
        }))
        .unwrap();
        let signed = sign_report(report.clone(), &keys).unwrap();
        assert_eq!(verify_report(&signed, &keys), Ok(()));
        // The same bytes MACed under the receipt domain give another tag.
        let bytes = report_bytes(&report).unwrap();
        let kid = keys.current_kid();
        let receipt_tag = mac_in(DOMAIN, keys.key(kid).unwrap(), kid, &bytes)
            .unwrap()
            .finalize()
            .into_bytes();
        let mut forged = signed.clone();
        forged.signature.mac = URL_SAFE_NO_PAD.encode(receipt_tag);
        assert_ne!(forged.signature.mac, signed.signature.mac);
        assert_eq!(verify_report(&forged, &keys), Err(ReceiptError::Tampered));
        // And a receipt is not a report.
        let receipt_json = sign(receipt(), &keys).unwrap().to_json().unwrap();
        assert!(SignedReport::from_json(&receipt_json).is_err());
    }

    #[test]
    fn small_formatters() {
        assert_eq!(format_rate(2_000), "20%");
        assert_eq!(format_rate(550), "5.5%");
        assert_eq!(format_rate(1_025), "10.25%");
        assert_eq!(format_rate(7), "0.07%");
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(-60_000), "1969-12-31 23:59 UTC");
        assert_eq!(escape_html("a<b>&'\""), "a&lt;b&gt;&amp;&#39;&quot;");
    }
}

#[cfg(test)]
mod priced_tests {
    use super::*;
    use crate::money::{Currency, MinorUnits};
    use crate::policy::{default_bundle, Category};
    use crate::quote::{quote_in, QuoteItem};

    #[test]
    fn priced_parts_mirror_the_quote() {
        let eur = Currency::parse("EUR").unwrap();
        let item = |sku: &str, category, price, quantity| QuoteItem {
            sku: sku.into(),
            name: sku.to_uppercase(),
            category,
            unit_price: MinorUnits(price),
            quantity,
            age_restricted: false,
        };
        let items = [
            item("t", Category::Admission, 1500, 2),
            item("m", Category::Merchandise, 2500, 1),
        ];
        let q = quote_in(&items, &default_bundle(), Some(eur), 0).unwrap();
        let (lines, tax, totals) = priced_from_quote(&q);
        assert_eq!(lines.len(), q.lines.len());
        for (l, ql) in lines.iter().zip(&q.lines) {
            assert_eq!(
                (l.sku.as_str(), l.quantity, l.unit_price, l.tax),
                (ql.sku.as_str(), ql.quantity, ql.unit_price, ql.tax)
            );
            assert_eq!(l.tax_rate_bps * 100, ql.rate_ppm);
        }
        assert_eq!(tax.iter().map(|t| t.amount.0).sum::<i64>(), q.tax_total.0);
        assert_eq!(
            (totals.currency, totals.subtotal, totals.tax, totals.total),
            (eur, q.subtotal, q.tax_total, q.total)
        );
        assert_eq!(totals.total.0, totals.subtotal.0 + totals.tax.0);
    }
}
