//! Jurisdictional policy bundles: types, validation, canonical bytes and hash, Ed25519
//! signatures, the activation decision for pushes and rollbacks, and the PoP's cache.
//!
//! Everything here is pure. The edge shell reads KV, calls these functions and writes what
//! they return. The KV layout it is expected to use:
//!
//! | key                         | value                                                  |
//! |-----------------------------|--------------------------------------------------------|
//! | `policy:rev:<JUR>:<REV>`    | the signed envelope exactly as pushed (immutable)      |
//! | `policy:active:<JUR>`       | [`ActivePointer`] JSON: `{revision, hash, highest_revision, activated_ms, via}` |
//! | `policy:history:<JUR>`      | [`History`] JSON: array of [`HistoryEntry`], oldest first, capped |
//!
//! A push or rollback writes the revision first, then the history, and the pointer last:
//! moving the pointer is the one write that changes what PoPs enforce.

use crate::error::ApiError;
use crate::money::{Currency, MinorUnits};
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// The bundle format this code reads and writes (`"format": 1`).
pub const FORMAT_VERSION: u32 = 1;
/// The name of the strict fallback bundle's jurisdiction.
pub const DEFAULT_JURISDICTION: &str = "default";
/// Bytes placed before a bundle's canonical bytes when signing, so that a signature over a
/// bundle can never be read as a signature over a rollback statement, or the reverse.
pub const BUNDLE_SIGNING_CONTEXT: &[u8] = b"poptill-policy-bundle-v1\n";
/// Bytes placed before a rollback statement's canonical bytes when signing.
pub const ROLLBACK_SIGNING_CONTEXT: &[u8] = b"poptill-policy-rollback-v1\n";
/// The only signature algorithm accepted.
pub const SIGNATURE_ALG: &str = "Ed25519";
/// How many entries `policy:history:<JUR>` keeps (every revision stays under its own key).
pub const HISTORY_CAP: usize = 200;

// ---------------------------------------------------------------------------------------
// Bundle types
// ---------------------------------------------------------------------------------------

/// The item categories a bundle sets rules for. `ticket` is accepted for `admission`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    #[serde(alias = "ticket")]
    Admission,
    Merchandise,
    FoodAndDrink,
}

impl Category {
    pub const ALL: [Category; 3] = [
        Category::Admission,
        Category::Merchandise,
        Category::FoodAndDrink,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Admission => "admission",
            Category::Merchandise => "merchandise",
            Category::FoodAndDrink => "food_and_drink",
        }
    }
}

/// One value per category; every category must be present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerCategory<T> {
    pub admission: T,
    pub merchandise: T,
    pub food_and_drink: T,
}

impl<T> PerCategory<T> {
    pub fn get(&self, category: Category) -> &T {
        match category {
            Category::Admission => &self.admission,
            Category::Merchandise => &self.merchandise,
            Category::FoodAndDrink => &self.food_and_drink,
        }
    }
}

/// Age gates per category: a category without a gate may be left out or `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgeGates {
    #[serde(default)]
    pub admission: Option<u8>,
    #[serde(default)]
    pub merchandise: Option<u8>,
    #[serde(default)]
    pub food_and_drink: Option<u8>,
}

impl AgeGates {
    pub fn get(&self, category: Category) -> Option<u8> {
        match category {
            Category::Admission => self.admission,
            Category::Merchandise => self.merchandise,
            Category::FoodAndDrink => self.food_and_drink,
        }
    }
}

/// A policy bundle: the rules of one place. See policies/README.md for every field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: u32,
    pub manifest: Manifest,
    /// ISO 3166-1 alpha-2 (`DE`) or ISO 3166-2 (`US-CA`), or `default`.
    pub jurisdiction: String,
    /// ISO 4217; only the `default` bundle may leave it out (it follows the event's).
    #[serde(default)]
    pub currency: Option<Currency>,
    /// The place's languages (BCP 47, e.g. `de`, `fr-CA`); consent texts exist for each.
    pub languages: Vec<String>,
    pub metadata: Metadata,
    pub tax: TaxRules,
    pub refunds: PerCategory<RefundRule>,
    pub compliance: Compliance,
    pub receipt: ReceiptRules,
    pub retention_days: u32,
    pub offline: OfflineLimits,
    /// Purchase limits against hoarding; absent: [`PurchaseLimits::default`].
    #[serde(default)]
    pub purchase: PurchaseLimits,
}

/// How much one buyer may take, so nobody can hold an event's stock with one cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseLimits {
    /// Units of one item per order, unless the merchant sets the item's own
    /// `max_per_order` (which may not be above this).
    pub max_per_sku_per_order: u32,
}

impl Default for PurchaseLimits {
    fn default() -> Self {
        PurchaseLimits {
            max_per_sku_per_order: 10,
        }
    }
}

impl PurchaseLimits {
    /// Gives every item of a new event its per-order limit: the merchant's, or the
    /// policy's when absent. A merchant limit above the policy's, or of 0, is refused
    /// (422 `purchase_limit_over_policy`).
    pub fn apply(
        &self,
        skus: &mut [crate::ledger::Sku],
        jurisdiction: &str,
    ) -> Result<(), ApiError> {
        let max = self.max_per_sku_per_order;
        for s in skus.iter_mut() {
            match s.max_per_order {
                None => s.max_per_order = Some(max),
                Some(n) if (1..=max).contains(&n) => {}
                Some(_) => {
                    return Err(ApiError::new(
                        422,
                        "purchase_limit_over_policy",
                        format!(
                            "An item's max_per_order must be between 1 and {max}, the policy's limit for {jurisdiction}."
                        ),
                    ))
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Strictly increasing per jurisdiction.
    pub revision: u64,
    /// The jurisdictions this bundle owns: its own, and optionally subdivisions of it.
    pub jurisdictions: Vec<String>,
    pub created_ms: i64,
    /// The key id that signs it; must equal the envelope's `signature.kid`.
    pub author_kid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    /// Where the rates and rules come from; at least one.
    pub sources: Vec<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub title: String,
    pub url: String,
    /// The day the source was read, `YYYY-MM-DD`.
    pub retrieved: String,
}

/// Whether listed prices already contain the tax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceMode {
    Inclusive,
    Exclusive,
}

/// How a fractional tax amount becomes whole minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoundingMode {
    /// Half a minor unit and above rounds up.
    HalfUp,
    /// Half a minor unit rounds to the even neighbour (banker's rounding).
    HalfEven,
    /// Always towards zero (truncation), e.g. Japan's common 切り捨て.
    Down,
}

/// Whether tax is rounded on each line or once per rate over the whole quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoundingScope {
    PerLine,
    PerTotal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaxRules {
    /// What a receipt calls the tax: `MwSt.`, `TVA`, `VAT`, `GST`, `Sales tax`.
    pub label: String,
    pub prices: PriceMode,
    pub rounding: RoundingMode,
    pub rounding_scope: RoundingScope,
    /// The place's published standard rate, parts per million (19% = 190000).
    pub standard_rate_ppm: u32,
    /// The place's published reduced rates, parts per million.
    pub reduced_rates_ppm: Vec<u32>,
    /// The rate applied per category: 0, the standard rate or one of the reduced rates.
    pub rates_ppm: PerCategory<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRule {
    /// Days after purchase in which a refund may be asked for; 0 for none.
    pub window_days: u32,
    /// EU 2011/83/EU Art. 16(l): no right of withdrawal for leisure services on a specific
    /// date. Only meaningful for `admission`.
    pub dated_leisure_exempt: bool,
    /// Whether part of a line may be refunded.
    pub partial: bool,
    /// Whether a refund may be queued while the PoP is offline.
    pub offline_queue: bool,
}

/// Buyer details a checkout must collect.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BuyerField {
    Email,
    Name,
    Phone,
    PostalAddress,
    DateOfBirth,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compliance {
    /// Minimum age for every line of a category.
    #[serde(default)]
    pub age_gate: AgeGates,
    /// Minimum age for items flagged `age_restricted` (alcohol and the like).
    pub restricted_min_age: u8,
    /// Consent text per language (key: one of `languages`); empty for none.
    #[serde(default)]
    pub consent: BTreeMap<String, String>,
    /// Buyer fields a checkout must collect (e.g. `email` for e-receipts).
    #[serde(default)]
    pub buyer_fields: Vec<BuyerField>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptRules {
    /// The receipt must show net, tax and gross per rate.
    pub tax_breakdown: bool,
    /// The receipt must show the seller's tax id.
    pub seller_tax_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineLimits {
    /// Largest amount one offline transaction may take, in minor units; 0 = never offline.
    pub per_transaction_cap: MinorUnits,
    /// Largest sum of offline transactions per event, in minor units.
    pub per_event_cap: MinorUnits,
    /// Longest time a queued authorization may wait before it must be forwarded, seconds.
    pub max_queue_age_secs: u64,
    /// Largest sum, per event, of accepted payments whose online attempt has an unknown
    /// outcome (the acquirer may have charged; each is completed later on its lane), in
    /// minor units. Absent: `per_event_cap`. Past it the buyer hears `pending`, not the goods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_exposure_cap: Option<MinorUnits>,
}

impl OfflineLimits {
    /// The bound on accepted payments of unknown outcome.
    pub fn unknown_cap(&self) -> MinorUnits {
        self.unknown_exposure_cap.unwrap_or(self.per_event_cap)
    }

    /// An event's offline budget under these limits: the merchant's `requested` one, or the
    /// policy's own limits when absent. A budget above the policy is refused (422
    /// `offline_budget_over_policy`); an event without its own unknown-outcome bound gets
    /// the policy's.
    pub fn event_budget(
        &self,
        requested: Option<crate::ledger::OfflineBudget>,
        currency: Currency,
        jurisdiction: &str,
    ) -> Result<crate::ledger::OfflineBudget, ApiError> {
        let mut b = requested.unwrap_or(crate::ledger::OfflineBudget {
            per_transaction_max: self.per_transaction_cap,
            aggregate_max: self.per_event_cap,
            per_card_max_count: 3,
            per_card_window_ms: 3_600_000,
            unknown_max: None,
        });
        let unknown = b.unknown_max.unwrap_or(self.unknown_cap());
        if b.per_transaction_max > self.per_transaction_cap
            || b.aggregate_max > self.per_event_cap
            || unknown > self.unknown_cap()
        {
            return Err(ApiError::new(
                422,
                "offline_budget_over_policy",
                format!(
                    "The offline budget is above the policy's limits for {jurisdiction}: at most {} per transaction, {} in all and {} of unconfirmed payments.",
                    self.per_transaction_cap.display(currency),
                    self.per_event_cap.display(currency),
                    self.unknown_cap().display(currency)
                ),
            ));
        }
        b.unknown_max = Some(unknown);
        Ok(b)
    }
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// One problem in a bundle: where (`tax.rates_ppm.admission`) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

const TOP_LEVEL: &[&str] = &[
    "format",
    "manifest",
    "jurisdiction",
    "currency",
    "languages",
    "metadata",
    "tax",
    "refunds",
    "compliance",
    "receipt",
    "retention_days",
    "offline",
    "purchase",
];

/// Checks a bundle given as JSON and returns it typed, or every problem found: unknown and
/// missing fields and type errors (the first per top-level section) and all rule problems.
pub fn validate_value(value: &Value) -> Result<Bundle, Vec<Problem>> {
    let mut problems = Vec::new();
    let Some(obj) = value.as_object() else {
        return Err(vec![Problem::new("", "a bundle must be a JSON object")]);
    };
    for key in obj.keys() {
        if !TOP_LEVEL.contains(&key.as_str()) {
            problems.push(Problem::new(key.clone(), "unknown field"));
        }
    }
    let p = &mut problems;
    let format = section::<u32>(obj, "format", true, p);
    let manifest = section::<Manifest>(obj, "manifest", true, p);
    let jurisdiction = section::<String>(obj, "jurisdiction", true, p);
    let currency = section::<Option<Currency>>(obj, "currency", false, p).flatten();
    let languages = section::<Vec<String>>(obj, "languages", true, p);
    let metadata = section::<Metadata>(obj, "metadata", true, p);
    let tax = section::<TaxRules>(obj, "tax", true, p);
    let refunds = section::<PerCategory<RefundRule>>(obj, "refunds", true, p);
    let compliance = section::<Compliance>(obj, "compliance", true, p);
    let receipt = section::<ReceiptRules>(obj, "receipt", true, p);
    let retention_days = section::<u32>(obj, "retention_days", true, p);
    let offline = section::<OfflineLimits>(obj, "offline", true, p);
    let purchase = section::<PurchaseLimits>(obj, "purchase", false, p).unwrap_or_default();

    if let (
        Some(format),
        Some(manifest),
        Some(jurisdiction),
        Some(languages),
        Some(metadata),
        Some(tax),
        Some(refunds),
        Some(compliance),
        Some(receipt),
        Some(retention_days),
        Some(offline),
    ) = (
        format,
        manifest.clone(),
        jurisdiction.clone(),
        languages.clone(),
        metadata.clone(),
        tax.clone(),
        refunds.clone(),
        compliance.clone(),
        receipt,
        retention_days,
        offline.clone(),
    ) {
        let bundle = Bundle {
            format,
            manifest,
            jurisdiction,
            currency,
            languages,
            metadata,
            tax,
            refunds,
            compliance,
            receipt,
            retention_days,
            offline,
            purchase,
        };
        problems.extend(validate(&bundle));
        return if problems.is_empty() {
            Ok(bundle)
        } else {
            Err(problems)
        };
    }
    // Some section did not parse: still report the rule problems of those that did.
    let jur = jurisdiction.as_deref();
    if let Some(f) = format {
        check_format(f, &mut problems);
    }
    if let Some(j) = jur {
        check_jurisdiction(j, currency.as_ref(), &mut problems);
    }
    if let Some(m) = &manifest {
        check_manifest(m, jur, &mut problems);
    }
    if let Some(l) = &languages {
        check_languages(l, &mut problems);
    }
    if let Some(m) = &metadata {
        check_metadata(m, jur, &mut problems);
    }
    if let Some(t) = &tax {
        check_tax(t, &mut problems);
    }
    if let Some(r) = &refunds {
        check_refunds(r, &mut problems);
    }
    if let Some(c) = &compliance {
        check_compliance(c, languages.as_deref(), &mut problems);
    }
    if let Some(r) = retention_days {
        check_retention(r, &mut problems);
    }
    if let Some(o) = &offline {
        check_offline(o, &mut problems);
    }
    check_purchase(&purchase, &mut problems);
    Err(problems)
}

/// Parses one top-level field, recording a problem (with its full path) if it fails.
fn section<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    key: &str,
    required: bool,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let Some(v) = obj.get(key) else {
        if required {
            problems.push(Problem::new(key, "missing required field"));
        }
        return None;
    };
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                key.to_string()
            } else {
                format!("{key}.{inner}")
            };
            problems.push(Problem::new(path, e.into_inner().to_string()));
            None
        }
    }
}

/// Every rule problem of a typed bundle, all at once (empty when the bundle is valid).
pub fn validate(bundle: &Bundle) -> Vec<Problem> {
    let mut p = Vec::new();
    check_format(bundle.format, &mut p);
    check_jurisdiction(&bundle.jurisdiction, bundle.currency.as_ref(), &mut p);
    check_manifest(&bundle.manifest, Some(&bundle.jurisdiction), &mut p);
    check_languages(&bundle.languages, &mut p);
    check_metadata(&bundle.metadata, Some(&bundle.jurisdiction), &mut p);
    check_tax(&bundle.tax, &mut p);
    check_refunds(&bundle.refunds, &mut p);
    check_compliance(&bundle.compliance, Some(&bundle.languages), &mut p);
    check_retention(bundle.retention_days, &mut p);
    check_offline(&bundle.offline, &mut p);
    check_purchase(&bundle.purchase, &mut p);
    p
}

fn check_format(format: u32, p: &mut Vec<Problem>) {
    if format != FORMAT_VERSION {
        p.push(Problem::new(
            "format",
            format!("unsupported format {format}; this version reads format {FORMAT_VERSION}"),
        ));
    }
}

/// Whether `code` has the shape of an ISO 3166-1 alpha-2 code (`DE`) or an ISO 3166-2
/// subdivision code (`US-CA`, `CA-ON`, `ES-CN`).
pub fn is_jurisdiction_code(code: &str) -> bool {
    let (country, sub) = match code.split_once('-') {
        Some((c, s)) => (c, Some(s)),
        None => (code, None),
    };
    let country_ok = country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase());
    let sub_ok = match sub {
        None => true,
        Some(s) => {
            (1..=3).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        }
    };
    country_ok && sub_ok
}

/// The bundles to try for a place, most specific first, ending with `default`:
/// `US-CA` gives `["US-CA", "US", "default"]`.
pub fn lookup_chain(jurisdiction: &str) -> Vec<String> {
    let mut chain = Vec::new();
    if is_jurisdiction_code(jurisdiction) {
        chain.push(jurisdiction.to_string());
        if let Some((country, _)) = jurisdiction.split_once('-') {
            chain.push(country.to_string());
        }
    }
    chain.push(DEFAULT_JURISDICTION.to_string());
    chain
}

fn check_jurisdiction(jur: &str, currency: Option<&Currency>, p: &mut Vec<Problem>) {
    if jur != DEFAULT_JURISDICTION && !is_jurisdiction_code(jur) {
        p.push(Problem::new(
            "jurisdiction",
            "must be an ISO 3166-1 alpha-2 code (DE), an ISO 3166-2 code (US-CA) or \"default\"",
        ));
    }
    if jur != DEFAULT_JURISDICTION && currency.is_none() {
        p.push(Problem::new(
            "currency",
            "missing: only the default bundle may leave out the currency",
        ));
    }
}

fn is_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 64
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn check_manifest(m: &Manifest, jur: Option<&str>, p: &mut Vec<Problem>) {
    if m.revision == 0 {
        p.push(Problem::new("manifest.revision", "must be 1 or more"));
    }
    if m.created_ms <= 0 {
        p.push(Problem::new(
            "manifest.created_ms",
            "must be a Unix time in milliseconds",
        ));
    }
    if !is_kid(&m.author_kid) {
        p.push(Problem::new(
            "manifest.author_kid",
            "must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    if m.jurisdictions.is_empty() {
        p.push(Problem::new(
            "manifest.jurisdictions",
            "must list at least the bundle's own jurisdiction",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, j) in m.jurisdictions.iter().enumerate() {
        let path = format!("manifest.jurisdictions[{i}]");
        if !seen.insert(j.as_str()) {
            p.push(Problem::new(path.clone(), format!("{j:?} is listed twice")));
        }
        if let Some(own) = jur {
            let owned =
                j == own || (own != DEFAULT_JURISDICTION && j.starts_with(&format!("{own}-")));
            if !owned || (j != own && !is_jurisdiction_code(j)) {
                p.push(Problem::new(
                    path,
                    format!("{j:?} is neither {own:?} nor a subdivision of it"),
                ));
            }
        }
    }
    if let Some(own) = jur {
        if !m.jurisdictions.iter().any(|j| j == own) {
            p.push(Problem::new(
                "manifest.jurisdictions",
                format!("must include the bundle's jurisdiction {own:?}"),
            ));
        }
    }
}

fn check_languages(langs: &[String], p: &mut Vec<Problem>) {
    if langs.is_empty() {
        p.push(Problem::new("languages", "must list at least one language"));
    }
    let mut seen = BTreeSet::new();
    for (i, l) in langs.iter().enumerate() {
        let (primary, region) = match l.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (l.as_str(), None),
        };
        let ok = (2..=3).contains(&primary.len())
            && primary.bytes().all(|b| b.is_ascii_lowercase())
            && region.is_none_or(|r| r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()));
        if !ok {
            p.push(Problem::new(
                format!("languages[{i}]"),
                format!("{l:?} is not a language tag like \"de\" or \"fr-CA\""),
            ));
        }
        if !seen.insert(l.as_str()) {
            p.push(Problem::new(
                format!("languages[{i}]"),
                format!("{l:?} is listed twice"),
            ));
        }
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

fn check_metadata(m: &Metadata, jur: Option<&str>, p: &mut Vec<Problem>) {
    if m.name.trim().is_empty() {
        p.push(Problem::new("metadata.name", "must not be empty"));
    }
    if m.sources.is_empty() && jur != Some(DEFAULT_JURISDICTION) {
        p.push(Problem::new(
            "metadata.sources",
            "must name at least one source for the rates and rules",
        ));
    }
    for (i, s) in m.sources.iter().enumerate() {
        if s.title.trim().is_empty() {
            p.push(Problem::new(
                format!("metadata.sources[{i}].title"),
                "must not be empty",
            ));
        }
        if !s.url.starts_with("https://") {
            p.push(Problem::new(
                format!("metadata.sources[{i}].url"),
                "must be an https:// address",
            ));
        }
        if !is_date(&s.retrieved) {
            p.push(Problem::new(
                format!("metadata.sources[{i}].retrieved"),
                "must be a date YYYY-MM-DD",
            ));
        }
    }
}

/// 100% in parts per million: the largest rate a bundle may set.
pub const PPM: u32 = 1_000_000;

fn check_tax(t: &TaxRules, p: &mut Vec<Problem>) {
    if t.label.trim().is_empty() {
        p.push(Problem::new("tax.label", "must not be empty"));
    }
    if t.standard_rate_ppm > PPM {
        p.push(Problem::new(
            "tax.standard_rate_ppm",
            "must be at most 1000000 (100%)",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, r) in t.reduced_rates_ppm.iter().enumerate() {
        let path = format!("tax.reduced_rates_ppm[{i}]");
        if *r >= t.standard_rate_ppm {
            p.push(Problem::new(
                path.clone(),
                "a reduced rate must be below the standard rate",
            ));
        }
        if !seen.insert(*r) {
            p.push(Problem::new(path, "listed twice"));
        }
    }
    for c in Category::ALL {
        let r = *t.rates_ppm.get(c);
        if r != 0 && r != t.standard_rate_ppm && !t.reduced_rates_ppm.contains(&r) {
            p.push(Problem::new(
                format!("tax.rates_ppm.{}", c.as_str()),
                format!("{r} is neither 0, the standard rate nor one of the reduced rates"),
            ));
        }
    }
}

fn check_refunds(r: &PerCategory<RefundRule>, p: &mut Vec<Problem>) {
    for c in Category::ALL {
        let rule = r.get(c);
        if rule.window_days > 365 {
            p.push(Problem::new(
                format!("refunds.{}.window_days", c.as_str()),
                "must be at most 365 days",
            ));
        }
        if rule.dated_leisure_exempt && c != Category::Admission {
            p.push(Problem::new(
                format!("refunds.{}.dated_leisure_exempt", c.as_str()),
                "the exemption for dated leisure services applies to admission only",
            ));
        }
    }
}

fn check_compliance(c: &Compliance, langs: Option<&[String]>, p: &mut Vec<Problem>) {
    for cat in Category::ALL {
        if let Some(age) = c.age_gate.get(cat) {
            if !(1..=25).contains(&age) {
                p.push(Problem::new(
                    format!("compliance.age_gate.{}", cat.as_str()),
                    "a minimum age must be between 1 and 25 (leave it out for no gate)",
                ));
            }
        }
    }
    if !(14..=25).contains(&c.restricted_min_age) {
        p.push(Problem::new(
            "compliance.restricted_min_age",
            "must be between 14 and 25",
        ));
    }
    for (lang, text) in &c.consent {
        let path = format!("compliance.consent.{lang}");
        if text.trim().is_empty() || text.len() > 2000 {
            p.push(Problem::new(path.clone(), "must be 1 to 2000 characters"));
        }
        if let Some(ls) = langs {
            if !ls.contains(lang) {
                p.push(Problem::new(path, "is not one of the bundle's languages"));
            }
        }
    }
    if let Some(ls) = langs {
        if !c.consent.is_empty() {
            for l in ls {
                if !c.consent.contains_key(l) {
                    p.push(Problem::new(
                        "compliance.consent",
                        format!("has no text in {l:?}, one of the bundle's languages"),
                    ));
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (i, f) in c.buyer_fields.iter().enumerate() {
        if !seen.insert(*f) {
            p.push(Problem::new(
                format!("compliance.buyer_fields[{i}]"),
                "listed twice",
            ));
        }
    }
}

fn check_retention(days: u32, p: &mut Vec<Problem>) {
    if !(1..=36_500).contains(&days) {
        p.push(Problem::new(
            "retention_days",
            "must be between 1 and 36500 days",
        ));
    }
}

/// The longest a queued offline authorization may wait: the ledger's own limit for a stored
/// payment (`crate::ledger::MAX_OFFLINE_WAIT_MS`, 72 hours), so every valid policy can be
/// stored.
pub const MAX_QUEUE_AGE_SECS: u64 = (crate::ledger::MAX_OFFLINE_WAIT_MS / 1000) as u64;

fn check_purchase(l: &PurchaseLimits, p: &mut Vec<Problem>) {
    let max = crate::ledger::MAX_QTY;
    if !(1..=max).contains(&l.max_per_sku_per_order) {
        p.push(Problem::new(
            "purchase.max_per_sku_per_order",
            format!("must be between 1 and {max}"),
        ));
    }
}

fn check_offline(o: &OfflineLimits, p: &mut Vec<Problem>) {
    if o.per_transaction_cap.0 < 0 {
        p.push(Problem::new(
            "offline.per_transaction_cap",
            "must not be negative",
        ));
    }
    if o.per_event_cap.0 < 0 {
        p.push(Problem::new(
            "offline.per_event_cap",
            "must not be negative",
        ));
    }
    if o.unknown_exposure_cap.is_some_and(|c| c.0 < 0) {
        p.push(Problem::new(
            "offline.unknown_exposure_cap",
            "must not be negative",
        ));
    }
    if o.per_transaction_cap > o.per_event_cap {
        p.push(Problem::new(
            "offline.per_transaction_cap",
            "must not exceed offline.per_event_cap",
        ));
    }
    if !(1..=MAX_QUEUE_AGE_SECS).contains(&o.max_queue_age_secs) {
        p.push(Problem::new(
            "offline.max_queue_age_secs",
            format!(
                "must be between 1 and {MAX_QUEUE_AGE_SECS} seconds ({} hours)",
                MAX_QUEUE_AGE_SECS / 3600
            ),
        ));
    }
}

// ---------------------------------------------------------------------------------------
// Canonical bytes, hash, signatures
// ---------------------------------------------------------------------------------------

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace, strings escaped
/// as serde_json does, numbers as serde_json prints them. Independent of map ordering
/// features, so signer and verifier agree.
pub fn canonical_bytes(value: &Value) -> Vec<u8> {
    crate::canonical::canonical_json(value).into_bytes()
}

/// The bundle hash: lower-case hex SHA-256 of the bundle's canonical bytes.
pub fn bundle_hash(bundle: &Value) -> String {
    hex::encode(Sha256::digest(canonical_bytes(bundle)))
}

/// The `signature` member of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureBlock {
    pub kid: String,
    /// Always `Ed25519`.
    #[schemars(regex(pattern = "^Ed25519$"))]
    pub alg: String,
    /// Standard base64 of the 64-byte Ed25519 signature.
    pub sig: String,
}

/// `{ "bundle": {...}, "signature": {...} }`: what `PUT /v1/admin/policies` takes and what
/// `policy:rev:<JUR>:<REV>` stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedBundle {
    /// The bundle as its author signed it (policies/schema.json); its signature is checked
    /// before anything in it is read.
    pub bundle: Value,
    pub signature: SignatureBlock,
}

/// A signed order to move a jurisdiction's active pointer back to a stored revision.
/// `from_revision` must be the revision active when it is applied, so a replayed
/// statement can never undo later pushes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackStatement {
    pub jurisdiction: String,
    pub from_revision: u64,
    pub to_revision: u64,
    pub created_ms: i64,
}

/// `{ "rollback": {...}, "signature": {...} }`: the body of
/// `POST /v1/admin/policies/{jurisdiction}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedRollback {
    pub rollback: RollbackStatement,
    pub signature: SignatureBlock,
}

fn signing_message(context: &[u8], value: &Value) -> Vec<u8> {
    let mut msg = context.to_vec();
    msg.extend_from_slice(&canonical_bytes(value));
    msg
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A key id derived from a public key: `ed25519-` and the first 8 bytes of its SHA-256.
pub fn derive_kid(public: &VerifyingKey) -> String {
    let digest = Sha256::digest(public.as_bytes());
    format!("ed25519-{}", hex::encode(&digest[..8]))
}

/// Signs a bundle (as JSON) with an author key; the signer is expected to have set
/// `manifest.author_kid` to `kid`.
pub fn sign_bundle(bundle: &Value, kid: &str, key: &SigningKey) -> SignedBundle {
    let sig = key.sign(&signing_message(BUNDLE_SIGNING_CONTEXT, bundle));
    SignedBundle {
        bundle: bundle.clone(),
        signature: SignatureBlock {
            kid: kid.to_string(),
            alg: SIGNATURE_ALG.to_string(),
            sig: b64().encode(sig.to_bytes()),
        },
    }
}

/// Signs a rollback statement.
pub fn sign_rollback(statement: &RollbackStatement, kid: &str, key: &SigningKey) -> SignedRollback {
    let value = serde_json::to_value(statement).unwrap_or(Value::Null);
    let sig = key.sign(&signing_message(ROLLBACK_SIGNING_CONTEXT, &value));
    SignedRollback {
        rollback: statement.clone(),
        signature: SignatureBlock {
            kid: kid.to_string(),
            alg: SIGNATURE_ALG.to_string(),
            sig: b64().encode(sig.to_bytes()),
        },
    }
}

/// One trusted author key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub public: VerifyingKey,
    /// A retired key verifies nothing any more, old bundles included.
    pub retired: bool,
}

/// The author keys a PoP trusts, by key id. Built from the Worker var `POLICY_KEYS`:
/// `{"kid": "<base64 public key>", "kid2": {"public_key": "<base64>", "retired": true}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, TrustedKey>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum KeySpec {
    Bare(String),
    Full {
        public_key: String,
        #[serde(default)]
        retired: bool,
    },
}

impl TrustedKeys {
    /// Parses the key set; any malformed entry fails the whole set.
    pub fn from_json(json: &str) -> Result<TrustedKeys, PolicyError> {
        let raw: BTreeMap<String, KeySpec> = serde_json::from_str(json)
            .map_err(|e| PolicyError::KeysConfig(format!("not a JSON object of keys: {e}")))?;
        let mut keys = BTreeMap::new();
        for (kid, spec) in raw {
            if !is_kid(&kid) {
                return Err(PolicyError::KeysConfig(format!(
                    "key id {kid:?} is not 1 to 64 characters of A-Z a-z 0-9 . _ -"
                )));
            }
            let (b, retired) = match spec {
                KeySpec::Bare(b) => (b, false),
                KeySpec::Full {
                    public_key,
                    retired,
                } => (public_key, retired),
            };
            let public = decode_public_key(&b).ok_or_else(|| {
                PolicyError::KeysConfig(format!(
                    "key {kid:?} is not a base64 Ed25519 public key of 32 bytes"
                ))
            })?;
            keys.insert(kid, TrustedKey { public, retired });
        }
        Ok(TrustedKeys { keys })
    }

    /// Adds or replaces one key.
    pub fn insert(&mut self, kid: &str, public: VerifyingKey, retired: bool) {
        self.keys
            .insert(kid.to_string(), TrustedKey { public, retired });
    }

    pub fn get(&self, kid: &str) -> Option<&TrustedKey> {
        self.keys.get(kid)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn verify(
        &self,
        context: &[u8],
        value: &Value,
        block: &SignatureBlock,
    ) -> Result<(), PolicyError> {
        if block.alg != SIGNATURE_ALG {
            return Err(PolicyError::BadSignature(format!(
                "algorithm {:?} is not accepted; only Ed25519 is",
                block.alg.chars().take(16).collect::<String>()
            )));
        }
        let key = self
            .keys
            .get(&block.kid)
            .ok_or_else(|| PolicyError::UnknownKey(short(&block.kid)))?;
        if key.retired {
            return Err(PolicyError::KeyRetired(block.kid.clone()));
        }
        let bytes = b64()
            .decode(block.sig.as_bytes())
            .map_err(|_| PolicyError::BadSignature("the signature is not base64".into()))?;
        let sig = Signature::from_slice(&bytes)
            .map_err(|_| PolicyError::BadSignature("the signature is not 64 bytes long".into()))?;
        key.public
            .verify_strict(&signing_message(context, value), &sig)
            .map_err(|_| {
                PolicyError::BadSignature(
                    "the signature does not match the content; it was changed after signing \
                     or signed by another key"
                        .into(),
                )
            })
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Decodes a standard-base64 Ed25519 public key.
pub fn decode_public_key(b: &str) -> Option<VerifyingKey> {
    let bytes = b64().decode(b.trim().as_bytes()).ok()?;
    let arr: [u8; 32] = bytes.try_into().ok()?;
    VerifyingKey::from_bytes(&arr).ok()
}

/// Encodes a public key the way the key set and `keygen` write it.
pub fn encode_public_key(public: &VerifyingKey) -> String {
    b64().encode(public.as_bytes())
}

// ---------------------------------------------------------------------------------------
// Verified bundles, activation, rollback
// ---------------------------------------------------------------------------------------

/// A bundle whose signature and rules have been checked, with its revision and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedBundle {
    pub bundle: Bundle,
    pub revision: u64,
    /// [`bundle_hash`] of the bundle as signed.
    pub hash: String,
    /// The key that signed it (`None` for the compiled-in default).
    pub kid: Option<String>,
}

/// A pushed envelope that verified: the typed bundle plus the envelope to store.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedBundle {
    pub loaded: LoadedBundle,
    /// The envelope re-encoded (compact JSON) for `policy:rev:<JUR>:<REV>`.
    pub envelope_json: String,
}

/// Verifies an envelope (signature first, then the rules). PoPs call this on every bundle
/// they read from KV; the admin route calls it on every push.
pub fn verify_envelope(json: &str, keys: &TrustedKeys) -> Result<VerifiedBundle, PolicyError> {
    let env: SignedBundle = crate::api::from_json(json).map_err(|e| {
        PolicyError::Malformed(format!(
            "expected {{\"bundle\": {{...}}, \"signature\": {{\"kid\", \"alg\", \"sig\"}}}}: {e}"
        ))
    })?;
    keys.verify(BUNDLE_SIGNING_CONTEXT, &env.bundle, &env.signature)?;
    let bundle = validate_value(&env.bundle).map_err(PolicyError::Invalid)?;
    if bundle.manifest.author_kid != env.signature.kid {
        return Err(PolicyError::Invalid(vec![Problem::new(
            "manifest.author_kid",
            format!(
                "names {:?} but the bundle is signed by {:?}",
                bundle.manifest.author_kid, env.signature.kid
            ),
        )]));
    }
    let hash = bundle_hash(&env.bundle);
    let envelope_json = serde_json::to_string(&env)
        .map_err(|e| PolicyError::Malformed(format!("cannot re-encode the envelope: {e}")))?;
    Ok(VerifiedBundle {
        loaded: LoadedBundle {
            revision: bundle.manifest.revision,
            hash,
            kid: Some(env.signature.kid),
            bundle,
        },
        envelope_json,
    })
}

/// Verifies a signed rollback statement (signature and shape only; [`decide_rollback`]
/// checks it against the stored state).
pub fn verify_rollback(json: &str, keys: &TrustedKeys) -> Result<SignedRollback, PolicyError> {
    let env: SignedRollback = crate::api::from_json(json).map_err(|e| {
        PolicyError::Malformed(format!(
            "expected {{\"rollback\": {{\"jurisdiction\", \"from_revision\", \"to_revision\", \
             \"created_ms\"}}, \"signature\": {{...}}}}: {e}"
        ))
    })?;
    let value = serde_json::to_value(&env.rollback)
        .map_err(|e| PolicyError::Malformed(format!("cannot encode the statement: {e}")))?;
    keys.verify(ROLLBACK_SIGNING_CONTEXT, &value, &env.signature)?;
    Ok(env)
}

/// How the active pointer got where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Push,
    Rollback,
}

/// `policy:active:<JUR>`: which revision PoPs enforce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ActivePointer {
    pub revision: u64,
    pub hash: String,
    /// The highest revision ever activated: a push must go above it, even after a rollback,
    /// so an old signed bundle can never be replayed.
    pub highest_revision: u64,
    pub activated_ms: i64,
    pub via: Via,
}

/// One line of `policy:history:<JUR>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HistoryEntry {
    pub revision: u64,
    pub hash: String,
    pub kid: String,
    pub activated_ms: i64,
    pub via: Via,
    /// For a rollback, the revision it moved away from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<u64>,
}

/// `policy:history:<JUR>`: activations, oldest first, at most [`HISTORY_CAP`] entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct History(pub Vec<HistoryEntry>);

impl History {
    /// Appends an entry, dropping the oldest beyond the cap.
    pub fn record(&mut self, entry: HistoryEntry) {
        self.0.push(entry);
        if self.0.len() > HISTORY_CAP {
            let excess = self.0.len() - HISTORY_CAP;
            self.0.drain(..excess);
        }
    }
}

/// What the shell writes after an accepted push or rollback.
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    pub jurisdiction: String,
    /// New value of `policy:active:<JUR>` (write it last).
    pub pointer: ActivePointer,
    /// Append to `policy:history:<JUR>` with [`History::record`].
    pub history_entry: HistoryEntry,
    /// For a push: the `(key, value)` to write to `policy:rev:<JUR>:<REV>` first.
    pub store_revision: Option<(String, String)>,
    /// The same revision and hash were already active: nothing to write (idempotent push).
    pub unchanged: bool,
    pub loaded: LoadedBundle,
}

/// `policy:rev:<JUR>:<REV>`.
pub fn revision_key(jurisdiction: &str, revision: u64) -> String {
    format!("policy:rev:{jurisdiction}:{revision}")
}

/// `policy:active:<JUR>`.
pub fn active_key(jurisdiction: &str) -> String {
    format!("policy:active:{jurisdiction}")
}

/// `policy:history:<JUR>`.
pub fn history_key(jurisdiction: &str) -> String {
    format!("policy:history:{jurisdiction}")
}

/// Decides a push of a verified bundle against the jurisdiction's current pointer.
/// Refuses a revision not above every revision ever active (`policy_stale_revision`);
/// pushing exactly the active revision and hash again is accepted as `unchanged`.
pub fn decide_push(
    pushed: &VerifiedBundle,
    active: Option<&ActivePointer>,
    now_ms: i64,
) -> Result<Activation, PolicyError> {
    let loaded = &pushed.loaded;
    let jur = loaded.bundle.jurisdiction.clone();
    let kid = loaded.kid.clone().unwrap_or_default();
    let mut highest = loaded.revision;
    if let Some(a) = active {
        if a.revision == loaded.revision && a.hash == loaded.hash {
            return Ok(Activation {
                jurisdiction: jur,
                pointer: a.clone(),
                history_entry: HistoryEntry {
                    revision: a.revision,
                    hash: a.hash.clone(),
                    kid,
                    activated_ms: a.activated_ms,
                    via: a.via,
                    from_revision: None,
                },
                store_revision: None,
                unchanged: true,
                loaded: loaded.clone(),
            });
        }
        let floor = a.highest_revision.max(a.revision);
        if loaded.revision <= floor {
            return Err(PolicyError::StaleRevision {
                pushed: loaded.revision,
                highest: floor,
            });
        }
        highest = highest.max(floor);
    }
    Ok(Activation {
        jurisdiction: jur.clone(),
        pointer: ActivePointer {
            revision: loaded.revision,
            hash: loaded.hash.clone(),
            highest_revision: highest,
            activated_ms: now_ms,
            via: Via::Push,
        },
        history_entry: HistoryEntry {
            revision: loaded.revision,
            hash: loaded.hash.clone(),
            kid,
            activated_ms: now_ms,
            via: Via::Push,
            from_revision: None,
        },
        store_revision: Some((
            revision_key(&jur, loaded.revision),
            pushed.envelope_json.clone(),
        )),
        unchanged: false,
        loaded: loaded.clone(),
    })
}

/// Decides a verified rollback. The shell reads `policy:active:<JUR>` and
/// `policy:rev:<JUR>:<to_revision>` (the stored envelope, verified again here with the
/// current keys, so a bundle signed by a since-retired key cannot come back).
pub fn decide_rollback(
    statement: &SignedRollback,
    active: Option<&ActivePointer>,
    target_envelope: Option<&str>,
    keys: &TrustedKeys,
    now_ms: i64,
) -> Result<Activation, PolicyError> {
    let rb = &statement.rollback;
    let Some(a) = active else {
        return Err(PolicyError::RevisionNotFound {
            jurisdiction: short(&rb.jurisdiction),
            revision: rb.to_revision,
        });
    };
    if rb.from_revision != a.revision {
        return Err(PolicyError::RollbackConflict {
            from: rb.from_revision,
            active: a.revision,
        });
    }
    if rb.to_revision >= a.revision {
        return Err(PolicyError::RollbackNotOlder {
            to: rb.to_revision,
            active: a.revision,
        });
    }
    let Some(target) = target_envelope else {
        return Err(PolicyError::RevisionNotFound {
            jurisdiction: short(&rb.jurisdiction),
            revision: rb.to_revision,
        });
    };
    let verified = verify_envelope(target, keys)?;
    let loaded = verified.loaded;
    if loaded.bundle.jurisdiction != rb.jurisdiction || loaded.revision != rb.to_revision {
        return Err(PolicyError::Invalid(vec![Problem::new(
            "",
            format!(
                "the stored revision is {} revision {}, not {} revision {}",
                loaded.bundle.jurisdiction, loaded.revision, rb.jurisdiction, rb.to_revision
            ),
        )]));
    }
    let pointer = ActivePointer {
        revision: loaded.revision,
        hash: loaded.hash.clone(),
        highest_revision: a.highest_revision.max(a.revision),
        activated_ms: now_ms,
        via: Via::Rollback,
    };
    Ok(Activation {
        jurisdiction: rb.jurisdiction.clone(),
        history_entry: HistoryEntry {
            revision: loaded.revision,
            hash: loaded.hash.clone(),
            kid: statement.signature.kid.clone(),
            activated_ms: now_ms,
            via: Via::Rollback,
            from_revision: Some(a.revision),
        },
        pointer,
        store_revision: None,
        unchanged: false,
        loaded,
    })
}

/// `GET /v1/admin/policies/{jurisdiction}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PolicyStatus {
    pub jurisdiction: String,
    pub active: Option<ActivePointer>,
    pub history: Vec<HistoryEntry>,
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// Not an envelope / statement of the expected shape.
    Malformed(String),
    BadSignature(String),
    UnknownKey(String),
    KeyRetired(String),
    StaleRevision {
        pushed: u64,
        highest: u64,
    },
    Invalid(Vec<Problem>),
    RollbackConflict {
        from: u64,
        active: u64,
    },
    RollbackNotOlder {
        to: u64,
        active: u64,
    },
    RevisionNotFound {
        jurisdiction: String,
        revision: u64,
    },
    /// The Worker's `POLICY_KEYS` var is wrong: an operator's fault, not the client's.
    KeysConfig(String),
}

impl PolicyError {
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::Malformed(_) => "policy_malformed",
            PolicyError::BadSignature(_) => "policy_bad_signature",
            PolicyError::UnknownKey(_) => "policy_unknown_key",
            PolicyError::KeyRetired(_) => "policy_key_retired",
            PolicyError::StaleRevision { .. } => "policy_stale_revision",
            PolicyError::Invalid(_) => "policy_invalid",
            PolicyError::RollbackConflict { .. } => "policy_rollback_conflict",
            PolicyError::RollbackNotOlder { .. } => "policy_rollback_not_older",
            PolicyError::RevisionNotFound { .. } => "policy_revision_not_found",
            PolicyError::KeysConfig(_) => "policy_keys_config",
        }
    }

    pub fn to_api(&self) -> ApiError {
        let status = match self {
            PolicyError::Malformed(_) => 400,
            PolicyError::BadSignature(_) => 422,
            PolicyError::UnknownKey(_) | PolicyError::KeyRetired(_) => 403,
            PolicyError::StaleRevision { .. }
            | PolicyError::RollbackConflict { .. }
            | PolicyError::RollbackNotOlder { .. } => 409,
            PolicyError::Invalid(_) => 422,
            PolicyError::RevisionNotFound { .. } => 404,
            PolicyError::KeysConfig(_) => 500,
        };
        ApiError::new(status, self.code(), self.to_string())
    }

    /// The problems of a `policy_invalid` refusal (empty for other errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            PolicyError::Invalid(p) => p,
            _ => &[],
        }
    }

    /// The JSON error body, with `problems` added for `policy_invalid`.
    pub fn body(&self) -> Value {
        let mut body = self.to_api().body();
        if let (PolicyError::Invalid(p), Some(err)) = (self, body.get_mut("error")) {
            if let Some(obj) = err.as_object_mut() {
                obj.insert(
                    "problems".into(),
                    serde_json::to_value(p).unwrap_or(Value::Null),
                );
            }
        }
        body
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Malformed(m) => write!(f, "The body is not a signed policy: {m}"),
            PolicyError::BadSignature(m) => write!(f, "The signature is not valid: {m}."),
            PolicyError::UnknownKey(k) => {
                write!(
                    f,
                    "The bundle is signed by key {k:?}, which this edge does not trust."
                )
            }
            PolicyError::KeyRetired(k) => {
                write!(
                    f,
                    "The bundle is signed by key {k:?}, which has been retired."
                )
            }
            PolicyError::StaleRevision { pushed, highest } => write!(
                f,
                "Revision {pushed} is not above revision {highest}, the highest one already \
                 activated; push a higher revision, or use a signed rollback."
            ),
            PolicyError::Invalid(p) => {
                write!(f, "The bundle breaks {} rule(s)", p.len())?;
                if let Some(first) = p.first() {
                    write!(f, ", first: {first}")?;
                }
                f.write_str(".")
            }
            PolicyError::RollbackConflict { from, active } => write!(
                f,
                "The rollback starts from revision {from}, but revision {active} is active."
            ),
            PolicyError::RollbackNotOlder { to, active } => write!(
                f,
                "A rollback must go to a revision below the active {active}; {to} is not."
            ),
            PolicyError::RevisionNotFound {
                jurisdiction,
                revision,
            } => write!(
                f,
                "No stored revision {revision} of the {jurisdiction:?} policy exists."
            ),
            PolicyError::KeysConfig(m) => write!(f, "The edge's policy key set is wrong: {m}."),
        }
    }
}

impl std::error::Error for PolicyError {}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> ApiError {
        e.to_api()
    }
}

// ---------------------------------------------------------------------------------------
// The compiled-in default and the PoP cache
// ---------------------------------------------------------------------------------------

/// policies/default.json, compiled in.
pub const DEFAULT_BUNDLE_JSON: &str = include_str!("../policies/default.json");

/// The strict fallback bundle: policies/default.json if it parses and validates, otherwise
/// [`hard_coded_default`]. Never panics.
pub fn default_bundle() -> LoadedBundle {
    serde_json::from_str::<Value>(DEFAULT_BUNDLE_JSON)
        .ok()
        .and_then(|v| {
            let b = validate_value(&v).ok()?;
            Some(LoadedBundle {
                revision: b.manifest.revision,
                hash: bundle_hash(&v),
                kid: None,
                bundle: b,
            })
        })
        .unwrap_or_else(hard_coded_default)
}

/// The last-resort strict bundle, used only if policies/default.json fails to load: no
/// offline sales, no refunds, every age gate at 21, e-mail required.
pub fn hard_coded_default() -> LoadedBundle {
    let no_refund = RefundRule {
        window_days: 0,
        dated_leisure_exempt: false,
        partial: false,
        offline_queue: false,
    };
    let bundle = Bundle {
        format: FORMAT_VERSION,
        manifest: Manifest {
            revision: 0,
            jurisdictions: vec![DEFAULT_JURISDICTION.into()],
            created_ms: 1,
            author_kid: "compiled-in".into(),
        },
        jurisdiction: DEFAULT_JURISDICTION.into(),
        currency: None,
        languages: vec!["en".into()],
        metadata: Metadata {
            name: "Hard-coded strict fallback".into(),
            sources: vec![],
            notes: None,
        },
        tax: TaxRules {
            label: "Tax".into(),
            prices: PriceMode::Exclusive,
            rounding: RoundingMode::HalfUp,
            rounding_scope: RoundingScope::PerLine,
            standard_rate_ppm: 0,
            reduced_rates_ppm: vec![],
            rates_ppm: PerCategory {
                admission: 0,
                merchandise: 0,
                food_and_drink: 0,
            },
        },
        refunds: PerCategory {
            admission: no_refund.clone(),
            merchandise: no_refund.clone(),
            food_and_drink: no_refund,
        },
        compliance: Compliance {
            age_gate: AgeGates::default(),
            restricted_min_age: 21,
            consent: BTreeMap::new(),
            buyer_fields: vec![BuyerField::Email],
        },
        receipt: ReceiptRules {
            tax_breakdown: true,
            seller_tax_id: true,
        },
        retention_days: 3650,
        offline: OfflineLimits {
            per_transaction_cap: MinorUnits(0),
            per_event_cap: MinorUnits(0),
            max_queue_age_secs: 3600,
            unknown_exposure_cap: None,
        },
        purchase: PurchaseLimits::default(),
    };
    let hash = serde_json::to_value(&bundle)
        .map(|v| bundle_hash(&v))
        .unwrap_or_default();
    LoadedBundle {
        bundle,
        revision: 0,
        hash,
        kid: None,
    }
}

/// The cache key of a jurisdiction's active bundle (`DE`) or of a pinned revision (`DE@3`).
pub fn cache_key(jurisdiction: &str, pinned_revision: Option<u64>) -> String {
    match pinned_revision {
        Some(r) => format!("{jurisdiction}@{r}"),
        None => jurisdiction.to_string(),
    }
}

#[derive(Debug, Clone)]
struct CacheEntry {
    loaded: Arc<LoadedBundle>,
    /// When the entry must be checked again; `None` for pinned revisions, which never change.
    fresh_until_ms: Option<i64>,
}

/// What the cache holds for a key.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheLookup {
    /// Use it; no KV read needed.
    Fresh(Arc<LoadedBundle>),
    /// Reload from KV; if that fails, call [`PolicyCache::load_failed`] and keep using it.
    Stale(Arc<LoadedBundle>),
    /// Nothing cached: load from KV.
    Missing,
}

/// A PoP's in-memory cache of verified bundles: a short TTL for active bundles, forever for
/// pinned revisions, and the last good bundle kept when a reload fails.
#[derive(Debug, Clone)]
pub struct PolicyCache {
    ttl_ms: i64,
    entries: BTreeMap<String, CacheEntry>,
}

impl PolicyCache {
    /// `ttl_ms` is how long an active bundle is used before KV is read again (e.g. 30 000).
    pub fn new(ttl_ms: i64) -> PolicyCache {
        PolicyCache {
            ttl_ms: ttl_ms.max(0),
            entries: BTreeMap::new(),
        }
    }

    pub fn lookup(&self, key: &str, now_ms: i64) -> CacheLookup {
        match self.entries.get(key) {
            None => CacheLookup::Missing,
            Some(e) => match e.fresh_until_ms {
                Some(t) if now_ms >= t => CacheLookup::Stale(e.loaded.clone()),
                _ => CacheLookup::Fresh(e.loaded.clone()),
            },
        }
    }

    /// Stores a bundle that verified. Keys with `@` (pinned revisions) never go stale.
    pub fn store(&mut self, key: &str, loaded: LoadedBundle, now_ms: i64) -> Arc<LoadedBundle> {
        let loaded = Arc::new(loaded);
        let fresh_until_ms = if key.contains('@') {
            None
        } else {
            Some(now_ms.saturating_add(self.ttl_ms))
        };
        self.entries.insert(
            key.to_string(),
            CacheEntry {
                loaded: loaded.clone(),
                fresh_until_ms,
            },
        );
        loaded
    }

    /// A reload failed (KV error, bad signature, invalid bundle): keep the last good bundle,
    /// fresh for another TTL so KV is not hammered, and return it. `None` if there is none:
    /// then use the next bundle in [`lookup_chain`], ending with [`default_bundle`].
    pub fn load_failed(&mut self, key: &str, now_ms: i64) -> Option<Arc<LoadedBundle>> {
        let ttl = self.ttl_ms;
        let e = self.entries.get_mut(key)?;
        if e.fresh_until_ms.is_some() {
            e.fresh_until_ms = Some(now_ms.saturating_add(ttl));
        }
        Some(e.loaded.clone())
    }

    /// Forgets a key (e.g. after this PoP itself moved the pointer).
    pub fn invalidate(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

/// The signing key from 32 secret bytes (the CLI reads them from the key file).
pub fn signing_key_from_seed(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

/// Which revision an event uses: its pinned one, otherwise the active one (`None` when the
/// jurisdiction has no active bundle: use the next bundle of [`lookup_chain`]).
pub fn resolve_revision(pinned: Option<u64>, active: Option<&ActivePointer>) -> Option<u64> {
    pinned.or(active.map(|a| a.revision))
}

#[cfg(test)]
pub(crate) mod tests;
