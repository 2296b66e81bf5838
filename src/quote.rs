//! Pure price quotes: lines, tax and totals in integer minor units, refund terms and the
//! prompts a checkout must show, all from items, a verified policy bundle and the time.
//!
//! Tax per line is `amount · rate / 1 000 000` for tax-exclusive prices and
//! `amount · rate / (1 000 000 + rate)` for tax-inclusive ones, computed exactly in `i128`
//! and rounded once as the bundle says. With `per_total` scope the tax of each rate is
//! rounded once over the sum of its lines and then shared out to the lines (largest
//! remainder first), so line taxes always add up to the totals.

use crate::error::ApiError;
use crate::money::{Currency, MinorUnits};
use crate::policy::{
    BuyerField, Category, LoadedBundle, PriceMode, ReceiptRules, RoundingMode, RoundingScope, PPM,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Most lines one quote may have.
pub const MAX_ITEMS: usize = 200;
/// Most units of one line.
pub const MAX_QUANTITY: u32 = 10_000;
const DAY_MS: i64 = 86_400_000;

/// One thing the buyer wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteItem {
    pub sku: String,
    pub name: String,
    pub category: Category,
    /// The listed price of one unit: gross for tax-inclusive bundles, net for exclusive.
    pub unit_price: MinorUnits,
    pub quantity: u32,
    /// Alcohol and the like: needs the bundle's `restricted_min_age`.
    #[serde(default)]
    pub age_restricted: bool,
}

/// The body of `POST /v1/events/{id}/quote`. The event supplies the place (and an optional
/// pinned policy revision) and the currency; the buyer supplies only the items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    pub items: Vec<QuoteItem>,
}

/// The refund terms of one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RefundTerms {
    /// Whether the buyer may ask for a refund at all.
    pub refundable: bool,
    pub window_days: u32,
    /// Last moment a refund may be asked for (`None` when not refundable).
    pub refundable_until_ms: Option<i64>,
    pub partial: bool,
    /// Whether a refund of this line may be queued while offline.
    pub offline_queue: bool,
    /// Why: a sentence for the receipt and the checkout page.
    pub basis: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QuoteLine {
    pub sku: String,
    pub name: String,
    pub category: Category,
    pub unit_price: MinorUnits,
    pub quantity: u32,
    pub rate_ppm: u32,
    pub net: MinorUnits,
    pub tax: MinorUnits,
    pub gross: MinorUnits,
    pub refund: RefundTerms,
    /// The minimum age this line needs, if any.
    pub min_age: Option<u8>,
}

/// Net, tax and gross of all lines at one rate (the receipt's tax breakdown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaxBreakdown {
    pub rate_ppm: u32,
    pub net: MinorUnits,
    pub tax: MinorUnits,
    pub gross: MinorUnits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgeGatePrompt {
    pub min_age: u8,
    /// The lines that need it.
    pub skus: Vec<String>,
}

/// What the checkout must ask before it may take payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RequiredPrompts {
    pub age_gate: Option<AgeGatePrompt>,
    /// Consent text per language; empty when none is needed.
    pub consent: BTreeMap<String, String>,
    pub buyer_fields: Vec<BuyerField>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Quote {
    pub jurisdiction: String,
    pub currency: Currency,
    pub prices: PriceMode,
    pub rounding: RoundingMode,
    pub rounding_scope: RoundingScope,
    pub tax_label: String,
    pub lines: Vec<QuoteLine>,
    pub tax_breakdown: Vec<TaxBreakdown>,
    /// Sum of net amounts.
    pub subtotal: MinorUnits,
    pub tax_total: MinorUnits,
    /// What the buyer pays.
    pub total: MinorUnits,
    pub prompts: RequiredPrompts,
    pub receipt: ReceiptRules,
    pub policy_revision: u64,
    pub policy_hash: String,
    pub quoted_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuoteError {
    NoItems,
    TooManyItems(usize),
    BadQuantity {
        sku: String,
        quantity: u32,
    },
    NegativePrice {
        sku: String,
    },
    Overflow,
    /// The bundle (the `default` one) has no currency and none was given.
    NoCurrency,
    CurrencyMismatch {
        bundle: Currency,
        asked: Currency,
    },
}

impl QuoteError {
    pub fn code(&self) -> &'static str {
        match self {
            QuoteError::NoItems => "quote_no_items",
            QuoteError::TooManyItems(_) => "quote_too_many_items",
            QuoteError::BadQuantity { .. } => "quote_bad_quantity",
            QuoteError::NegativePrice { .. } => "quote_negative_price",
            QuoteError::Overflow => "quote_overflow",
            QuoteError::NoCurrency => "quote_no_currency",
            QuoteError::CurrencyMismatch { .. } => "quote_currency_mismatch",
        }
    }

    pub fn to_api(&self) -> ApiError {
        let status = match self {
            // What the document's schema says of a cart (1 to MAX_ITEMS lines, quantities 1 to
            // MAX_QUANTITY) is a 400 like any body the schema refuses; the rest is a 422.
            QuoteError::NoItems | QuoteError::TooManyItems(_) | QuoteError::BadQuantity { .. } => {
                400
            }
            _ => 422,
        };
        ApiError::new(status, self.code(), self.to_string())
    }
}

impl fmt::Display for QuoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuoteError::NoItems => f.write_str("A quote needs at least one item."),
            QuoteError::TooManyItems(n) => {
                write!(f, "A quote may have at most {MAX_ITEMS} items, not {n}.")
            }
            QuoteError::BadQuantity { sku, quantity } => write!(
                f,
                "Item {sku:?} has quantity {quantity}; it must be 1 to {MAX_QUANTITY}."
            ),
            QuoteError::NegativePrice { sku } => {
                write!(f, "Item {sku:?} has a negative price.")
            }
            QuoteError::Overflow => f.write_str("The amounts are too large to add up."),
            QuoteError::NoCurrency => {
                f.write_str("The policy names no currency and the event gave none.")
            }
            QuoteError::CurrencyMismatch { bundle, asked } => write!(
                f,
                "The event sells in {asked} but the place's policy is written for {bundle}."
            ),
        }
    }
}

impl std::error::Error for QuoteError {}

impl From<QuoteError> for ApiError {
    fn from(e: QuoteError) -> ApiError {
        e.to_api()
    }
}

/// Rounds `num / den` (both non-negative, `den > 0`) to an integer.
pub fn round_div(num: i128, den: i128, mode: RoundingMode) -> i128 {
    let q = num / den;
    let r = num % den;
    match mode {
        RoundingMode::Down => q,
        RoundingMode::HalfUp => {
            if 2 * r >= den {
                q + 1
            } else {
                q
            }
        }
        RoundingMode::HalfEven => {
            if 2 * r > den || (2 * r == den && q % 2 != 0) {
                q + 1
            } else {
                q
            }
        }
    }
}

/// Quotes `items` under `policy`, in the bundle's currency.
pub fn quote(items: &[QuoteItem], policy: &LoadedBundle, now_ms: i64) -> Result<Quote, QuoteError> {
    quote_in(items, policy, None, now_ms)
}

/// Quotes in the event's `currency`: it must match the bundle's, and is required when the
/// bundle has none (the `default` bundle follows the event's currency).
pub fn quote_in(
    items: &[QuoteItem],
    policy: &LoadedBundle,
    currency: Option<Currency>,
    now_ms: i64,
) -> Result<Quote, QuoteError> {
    let b = &policy.bundle;
    let currency = match (b.currency, currency) {
        (Some(bc), Some(asked)) if bc != asked => {
            return Err(QuoteError::CurrencyMismatch { bundle: bc, asked })
        }
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) => return Err(QuoteError::NoCurrency),
    };
    if items.is_empty() {
        return Err(QuoteError::NoItems);
    }
    if items.len() > MAX_ITEMS {
        return Err(QuoteError::TooManyItems(items.len()));
    }
    let tax = &b.tax;
    let ppm = i128::from(PPM);

    // Amount, rate and the exact tax as a fraction num/den for each line.
    let mut amounts = Vec::with_capacity(items.len());
    let mut fractions = Vec::with_capacity(items.len());
    for item in items {
        if item.quantity == 0 || item.quantity > MAX_QUANTITY {
            return Err(QuoteError::BadQuantity {
                sku: item.sku.chars().take(64).collect(),
                quantity: item.quantity,
            });
        }
        if item.unit_price.0 < 0 {
            return Err(QuoteError::NegativePrice {
                sku: item.sku.chars().take(64).collect(),
            });
        }
        let amount = item
            .unit_price
            .checked_mul(i64::from(item.quantity))
            .ok_or(QuoteError::Overflow)?;
        let rate = i128::from(*tax.rates_ppm.get(item.category));
        let den = match tax.prices {
            PriceMode::Exclusive => ppm,
            PriceMode::Inclusive => ppm + rate,
        };
        amounts.push(amount);
        fractions.push((i128::from(amount.0) * rate, den));
    }

    let line_tax: Vec<i128> = match tax.rounding_scope {
        RoundingScope::PerLine => fractions
            .iter()
            .map(|(n, d)| round_div(*n, *d, tax.rounding))
            .collect(),
        RoundingScope::PerTotal => {
            let mut out = vec![0i128; items.len()];
            let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for (i, item) in items.iter().enumerate() {
                groups
                    .entry(*tax.rates_ppm.get(item.category))
                    .or_default()
                    .push(i);
            }
            for idx in groups.values() {
                let den = idx.first().map(|&i| fractions[i].1).unwrap_or(ppm);
                let total_num: i128 = idx.iter().map(|&i| fractions[i].0).sum();
                let group_tax = round_div(total_num, den, tax.rounding);
                let mut floors: i128 = 0;
                for &i in idx {
                    out[i] = fractions[i].0 / den;
                    floors += out[i];
                }
                // Share the rest out by largest remainder, earlier lines first on ties.
                let mut order: Vec<usize> = idx.clone();
                order.sort_by(|&a, &b| (fractions[b].0 % den).cmp(&(fractions[a].0 % den)));
                let extra = usize::try_from(group_tax - floors).unwrap_or(0);
                for &i in order.iter().take(extra) {
                    out[i] += 1;
                }
            }
            out
        }
    };

    let mut lines = Vec::with_capacity(items.len());
    let mut breakdown: BTreeMap<u32, (i64, i64, i64)> = BTreeMap::new();
    let (mut subtotal, mut tax_total, mut total) = (0i64, 0i64, 0i64);
    let mut age_gate: Option<AgeGatePrompt> = None;
    for (i, item) in items.iter().enumerate() {
        let amount = amounts[i].0;
        let t = i64::try_from(line_tax[i]).map_err(|_| QuoteError::Overflow)?;
        let (net, gross) = match tax.prices {
            PriceMode::Exclusive => (amount, amount.checked_add(t).ok_or(QuoteError::Overflow)?),
            PriceMode::Inclusive => (amount - t, amount),
        };
        let rate = *tax.rates_ppm.get(item.category);
        let e = breakdown.entry(rate).or_insert((0, 0, 0));
        e.0 = e.0.checked_add(net).ok_or(QuoteError::Overflow)?;
        e.1 = e.1.checked_add(t).ok_or(QuoteError::Overflow)?;
        e.2 = e.2.checked_add(gross).ok_or(QuoteError::Overflow)?;
        subtotal = subtotal.checked_add(net).ok_or(QuoteError::Overflow)?;
        tax_total = tax_total.checked_add(t).ok_or(QuoteError::Overflow)?;
        total = total.checked_add(gross).ok_or(QuoteError::Overflow)?;

        let category_age = b.compliance.age_gate.get(item.category);
        let restricted_age = item
            .age_restricted
            .then_some(b.compliance.restricted_min_age);
        let min_age = category_age.max(restricted_age);
        if let Some(age) = min_age {
            let gate = age_gate.get_or_insert(AgeGatePrompt {
                min_age: age,
                skus: Vec::new(),
            });
            gate.min_age = gate.min_age.max(age);
            if !gate.skus.contains(&item.sku) {
                gate.skus.push(item.sku.clone());
            }
        }

        lines.push(QuoteLine {
            sku: item.sku.clone(),
            name: item.name.clone(),
            category: item.category,
            unit_price: item.unit_price,
            quantity: item.quantity,
            rate_ppm: rate,
            net: MinorUnits(net),
            tax: MinorUnits(t),
            gross: MinorUnits(gross),
            refund: refund_terms(policy, item.category, now_ms),
            min_age,
        });
    }

    Ok(Quote {
        jurisdiction: b.jurisdiction.clone(),
        currency,
        prices: tax.prices,
        rounding: tax.rounding,
        rounding_scope: tax.rounding_scope,
        tax_label: tax.label.clone(),
        lines,
        tax_breakdown: breakdown
            .into_iter()
            .map(|(rate_ppm, (net, t, gross))| TaxBreakdown {
                rate_ppm,
                net: MinorUnits(net),
                tax: MinorUnits(t),
                gross: MinorUnits(gross),
            })
            .collect(),
        subtotal: MinorUnits(subtotal),
        tax_total: MinorUnits(tax_total),
        total: MinorUnits(total),
        prompts: RequiredPrompts {
            age_gate,
            consent: b.compliance.consent.clone(),
            buyer_fields: b.compliance.buyer_fields.clone(),
        },
        receipt: b.receipt.clone(),
        policy_revision: policy.revision,
        policy_hash: policy.hash.clone(),
        quoted_ms: now_ms,
    })
}

/// The refund terms of a line of `category` bought at `now_ms`.
pub fn refund_terms(policy: &LoadedBundle, category: Category, now_ms: i64) -> RefundTerms {
    let rule = policy.bundle.refunds.get(category);
    let exempt = category == Category::Admission && rule.dated_leisure_exempt;
    let refundable = rule.window_days > 0;
    let until = refundable
        .then(|| now_ms.saturating_add(i64::from(rule.window_days).saturating_mul(DAY_MS)));
    let basis = match (exempt, refundable) {
        (true, false) => "No right of withdrawal: a leisure service on a specific date \
                          (Directive 2011/83/EU, Art. 16(l))."
            .to_string(),
        (true, true) => format!(
            "No statutory right of withdrawal (Directive 2011/83/EU, Art. 16(l)); the seller \
             refunds within {} days.",
            rule.window_days
        ),
        (false, true) => format!("Refunds within {} days of purchase.", rule.window_days),
        (false, false) => "Not refundable under this place's policy.".to_string(),
    };
    RefundTerms {
        refundable,
        window_days: rule.window_days,
        refundable_until_ms: until,
        partial: refundable && rule.partial,
        offline_queue: refundable && rule.offline_queue,
        basis,
    }
}

#[cfg(test)]
mod tests;
