//! The per-event configuration (items, embed origins, waiting room, offline budget) and its validation.

use super::error::LedgerError;
use crate::money::{Currency, MinorUnits};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What kind of thing a SKU is; refund and tax rules differ per category.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Ticket,
    Merchandise,
    FoodDrink,
}

/// One item on sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Sku {
    #[schemars(regex(pattern = crate::api::bodies::ID_PATTERN))]
    pub id: String,
    /// 1 to 200 characters.
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    pub category: Category,
    /// Unit price in minor units of the event currency.
    pub price: MinorUnits,
    /// Total units on sale for the whole event.
    #[schemars(range(max = MAX_STOCK))]
    pub stock: u32,
    /// Most units of this item in one order (set from the policy's purchase limit when
    /// the merchant leaves it out; `None` only for events made before limits existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_order: Option<u32>,
}

/// How the waiting room orders people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueMode {
    /// First come, first served.
    Fifo,
    /// Everyone who joined before `sale_start_ms` is shuffled at the start; later joiners
    /// queue behind them in arrival order.
    RandomBeforeStart,
}

/// The per-event waiting room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QueueConfig {
    /// Whether `Hold` needs an admitted ticket. When false the queue is still usable.
    pub required: bool,
    pub mode: QueueMode,
    /// Nobody is admitted before this instant.
    pub sale_start_ms: i64,
    /// Most people waiting at once; joins beyond it get `queue_full`.
    pub capacity: u32,
    /// Admissions per second (a token bucket holding at most one second's worth).
    pub admission_rate_per_sec: u32,
    /// A waiting place is dropped after this long without a poll.
    pub place_ttl_ms: i64,
    /// An admitted ticket may start checkouts for this long after admission.
    pub admitted_ttl_ms: i64,
}

/// How much risk the merchant accepts on payments stored while the acquirer is unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OfflineBudget {
    /// Largest single stored payment.
    pub per_transaction_max: MinorUnits,
    /// Largest total of stored payments not yet forwarded.
    pub aggregate_max: MinorUnits,
    /// Most stored payments for one card within `per_card_window_ms`.
    pub per_card_max_count: u32,
    pub per_card_window_ms: i64,
    /// Largest total of accepted payments whose online attempt has an unknown outcome
    /// (completed later on their lane); `None`: the same as `aggregate_max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_max: Option<MinorUnits>,
}

impl OfflineBudget {
    /// The bound on accepted payments of unknown outcome.
    pub fn unknown_bound(&self) -> MinorUnits {
        self.unknown_max.unwrap_or(self.aggregate_max)
    }
}

/// Everything the ledger needs to know about one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventConfig {
    pub event_id: String,
    pub merchant_id: String,
    pub title: String,
    /// Venue jurisdiction, e.g. `DE` or `US-CA` (chooses the policy bundle).
    pub jurisdiction: String,
    pub currency: Currency,
    pub start_ms: i64,
    /// Sales stop at this instant.
    pub end_ms: i64,
    pub skus: Vec<Sku>,
    /// Origins (`https://shop.example`) allowed to embed the checkout.
    pub allowed_origins: Vec<String>,
    pub queue: QueueConfig,
    pub offline: OfflineBudget,
    /// Pins the event to one policy bundle revision; `None` follows the newest.
    #[serde(default)]
    pub policy_revision: Option<String>,
}

/// Upper bounds that keep one event's state small.
pub const MAX_SKUS: usize = 500;
pub const MAX_STOCK: u32 = 1_000_000;
pub const MAX_ORIGINS: usize = 50;
/// The waiting room lives in the event's one state document, so it is kept small.
pub const MAX_QUEUE_CAPACITY: u32 = 10_000;
pub const MAX_ADMISSION_RATE: u32 = 10_000;
/// Longest a stored payment may wait for forwarding (Square's hard limit: 72 h).
pub const MAX_OFFLINE_WAIT_MS: i64 = 72 * 3_600_000;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> LedgerError {
    LedgerError::InvalidConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Ids are 1..=128 characters of `[A-Za-z0-9_.:-]`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

pub(crate) fn check_id(s: &str, field: &'static str) -> Result<(), LedgerError> {
    if valid_id(s) {
        Ok(())
    } else {
        Err(LedgerError::InvalidId { field })
    }
}

fn valid_origin(o: &str) -> bool {
    let rest = if let Some(r) = o.strip_prefix("https://") {
        r
    } else if let Some(r) = o.strip_prefix("http://") {
        // Plain http only for local development.
        let host = r.split(':').next().unwrap_or("");
        if host != "localhost" && host != "127.0.0.1" {
            return false;
        }
        r
    } else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !host.starts_with('.')
        && !host.ends_with('.');
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

impl EventConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), LedgerError> {
        if !valid_id(&self.event_id) {
            return Err(invalid("event_id", "must be 1-128 of [A-Za-z0-9_.:-]"));
        }
        if !valid_id(&self.merchant_id) {
            return Err(invalid("merchant_id", "must be 1-128 of [A-Za-z0-9_.:-]"));
        }
        let title = self.title.trim();
        if title.is_empty() || self.title.chars().count() > 200 {
            return Err(invalid("title", "must be 1-200 characters"));
        }
        if self.title.chars().any(|c| c.is_control()) {
            return Err(invalid("title", "must not contain control characters"));
        }
        let j = &self.jurisdiction;
        if j.len() < 2
            || j.len() > 10
            || !j
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                "jurisdiction",
                "must be an upper-case ISO 3166 code such as DE or US-CA",
            ));
        }
        if self.start_ms >= self.end_ms {
            return Err(invalid("end_ms", "must be after start_ms"));
        }
        if self.skus.is_empty() || self.skus.len() > MAX_SKUS {
            return Err(invalid("skus", format!("must list 1 to {MAX_SKUS} items")));
        }
        let mut ids = BTreeSet::new();
        for (i, sku) in self.skus.iter().enumerate() {
            if !valid_id(&sku.id) {
                return Err(invalid(
                    format!("skus[{i}].id"),
                    "must be 1-128 of [A-Za-z0-9_.:-]",
                ));
            }
            if !ids.insert(sku.id.as_str()) {
                return Err(invalid(
                    format!("skus[{i}].id"),
                    format!("{:?} appears twice", sku.id),
                ));
            }
            if sku.name.trim().is_empty() || sku.name.chars().count() > 200 {
                return Err(invalid(
                    format!("skus[{i}].name"),
                    "must be 1-200 characters",
                ));
            }
            if sku.price.0 <= 0 || sku.price.0 > 10_000_000_000 {
                return Err(invalid(
                    format!("skus[{i}].price"),
                    "must be positive and at most 10^10 minor units",
                ));
            }
            if sku.stock > MAX_STOCK {
                return Err(invalid(
                    format!("skus[{i}].stock"),
                    format!("must be at most {MAX_STOCK}"),
                ));
            }
        }
        if self.allowed_origins.len() > MAX_ORIGINS {
            return Err(invalid(
                "allowed_origins",
                format!("at most {MAX_ORIGINS} origins"),
            ));
        }
        for (i, o) in self.allowed_origins.iter().enumerate() {
            if !valid_origin(o) {
                return Err(invalid(
                    format!("allowed_origins[{i}]"),
                    "must be https://host[:port] in lower case with no path (http only for localhost)",
                ));
            }
        }
        let q = &self.queue;
        if q.capacity == 0 || q.capacity > MAX_QUEUE_CAPACITY {
            return Err(invalid(
                "queue.capacity",
                format!("must be 1 to {MAX_QUEUE_CAPACITY}"),
            ));
        }
        if q.admission_rate_per_sec == 0 || q.admission_rate_per_sec > MAX_ADMISSION_RATE {
            return Err(invalid(
                "queue.admission_rate_per_sec",
                format!("must be 1 to {MAX_ADMISSION_RATE}"),
            ));
        }
        if q.place_ttl_ms < 5_000 || q.place_ttl_ms > 3_600_000 {
            return Err(invalid("queue.place_ttl_ms", "must be between 5 s and 1 h"));
        }
        if q.admitted_ttl_ms < 10_000 || q.admitted_ttl_ms > 86_400_000 {
            return Err(invalid(
                "queue.admitted_ttl_ms",
                "must be between 10 s and 24 h",
            ));
        }
        let b = &self.offline;
        if b.per_transaction_max.0 < 0 {
            return Err(invalid(
                "offline.per_transaction_max",
                "must not be negative",
            ));
        }
        if b.aggregate_max < b.per_transaction_max {
            return Err(invalid(
                "offline.aggregate_max",
                "must be at least per_transaction_max",
            ));
        }
        if b.per_card_max_count == 0 {
            return Err(invalid("offline.per_card_max_count", "must be at least 1"));
        }
        if b.per_card_window_ms <= 0 {
            return Err(invalid("offline.per_card_window_ms", "must be positive"));
        }
        if let Some(rev) = &self.policy_revision {
            if !valid_id(rev) {
                return Err(invalid(
                    "policy_revision",
                    "must be 1-128 of [A-Za-z0-9_.:-]",
                ));
            }
        }
        Ok(())
    }

    /// The SKU with this id.
    pub fn sku(&self, id: &str) -> Option<&Sku> {
        self.skus.iter().find(|s| s.id == id)
    }

    /// Whether `origin` (as sent in the `Origin` header) may embed the checkout.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == origin)
    }
}
