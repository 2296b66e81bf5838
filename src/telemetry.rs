//! Business telemetry: the events a checkout produces, their mergeable per-event aggregate,
//! and the metrics and cost report computed from it.
//!
//! # Model
//!
//! A PoP records one [`Event`] per business step (a checkout started and answered, a quote
//! shown, a card tokenized, an approval, a decline, a payment queued offline; the event's
//! Durable Object adds forwarded, expired, refund and receipt-sent). Events carry a latency,
//! the PoP colo, the lane and the policy revision, short codes only: no field can hold
//! card data, and [`Event::sanitized`] drops any label that looks like a card number.
//!
//! Events are folded into an [`Aggregate`]: funnel counts, decline reasons, latency
//! histograms per PoP and per lane, a per-minute latency series per PoP, and started versus
//! converted checkouts per latency bucket. Histograms use the fixed log-spaced buckets of
//! [`BUCKET_BOUNDS_MS`], so two aggregates [`Aggregate::merge`] exactly (counts add) and
//! percentiles come from the buckets ([`Histogram::percentile`]: the upper bound of the
//! bucket holding the rank, an overestimate by at most one bucket width).
//!
//! The aggregate is stored in small rows ([`Aggregate::to_rows`]): one row of totals, one
//! per PoP, one per lane and one per PoP and minute; a batch touches only its own rows.
//!
//! [`metrics`] turns an aggregate plus the ledger's queue state and the lanes' prices into
//! the JSON served at `GET /v1/admin/events/{id}/metrics`, with the cost report
//! ([`cost_report`]) and the estimated revenue effect of a lower p95 ([`latency_effect`]).
//! Pure: no clock (times enter as `now_ms`), no I/O.

use crate::money::{Currency, MinorUnits};
use crate::routing::LaneConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Upper bounds (inclusive, ms) of the latency buckets; one more bucket holds everything
/// slower than the last bound. Roughly log-spaced (1-1.5-2-3-5-7 per decade).
pub const BUCKET_BOUNDS_MS: [u32; 27] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1_000, 1_500, 2_000,
    3_000, 5_000, 7_000, 10_000, 15_000, 20_000, 30_000,
];
/// Number of buckets: the bounded ones plus the overflow bucket.
pub const BUCKETS: usize = BUCKET_BOUNDS_MS.len() + 1;
/// The per-minute series keeps this many minutes, up to the newest one recorded.
pub const SERIES_MINUTES: i64 = 360;
/// The latency effect needs at least this many answered checkouts to say anything.
pub const MIN_STARTED_FOR_EFFECT: u64 = 20;
/// The latency reduction the cost report prices.
pub const EFFECT_MS: f64 = 50.0;

const MINUTE_MS: i64 = 60_000;
const LABEL_MAX: usize = 40;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A checkout was answered (any answer); `latency_ms` is its answer time and
    /// `converted` whether the answer was approved or queued.
    CheckoutStarted,
    QuoteShown,
    TokenIssued,
    /// Approved online; `lane`, `amount_minor`, `latency_ms` (request start to approval).
    Approved,
    /// Declined by the acquirer; `reason` is the decline code.
    Declined,
    /// Accepted offline (store-and-forward); `amount_minor`.
    Queued,
    /// A queued payment reached the acquirer and was approved.
    Forwarded,
    /// A queued payment expired (or was declined when forwarded; `reason` says which).
    Expired,
    /// A batch of receipts was delivered to the merchant's webhook.
    ReceiptSent,
    /// A refund succeeded at the acquirer; `amount_minor`.
    Refund,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::CheckoutStarted,
        Kind::QuoteShown,
        Kind::TokenIssued,
        Kind::Approved,
        Kind::Declined,
        Kind::Queued,
        Kind::Forwarded,
        Kind::Expired,
        Kind::ReceiptSent,
        Kind::Refund,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::CheckoutStarted => "checkout_started",
            Kind::QuoteShown => "quote_shown",
            Kind::TokenIssued => "token_issued",
            Kind::Approved => "approved",
            Kind::Declined => "declined",
            Kind::Queued => "queued",
            Kind::Forwarded => "forwarded",
            Kind::Expired => "expired",
            Kind::ReceiptSent => "receipt_sent",
            Kind::Refund => "refund",
        }
    }
}

/// One business event. Labels are short codes; there is no field for card data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub kind: Kind,
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted: Option<bool>,
}

impl Event {
    /// An event of `kind` at `at_ms` with no other fields.
    pub fn new(kind: Kind, at_ms: i64) -> Event {
        Event {
            kind,
            at_ms,
            latency_ms: None,
            colo: None,
            lane: None,
            policy_revision: None,
            reason: None,
            amount_minor: None,
            converted: None,
        }
    }

    pub fn latency(mut self, ms: i64) -> Event {
        self.latency_ms = Some(u32::try_from(ms.max(0)).unwrap_or(u32::MAX));
        self
    }
    pub fn colo(mut self, colo: &str) -> Event {
        self.colo = Some(colo.to_string());
        self
    }
    pub fn lane(mut self, lane: &str) -> Event {
        self.lane = Some(lane.to_string());
        self
    }
    pub fn revision(mut self, rev: impl ToString) -> Event {
        self.policy_revision = Some(rev.to_string());
        self
    }
    pub fn reason(mut self, reason: &str) -> Event {
        self.reason = Some(reason.to_string());
        self
    }
    pub fn amount(mut self, minor: i64) -> Event {
        self.amount_minor = Some(minor);
        self
    }
    pub fn converted(mut self, yes: bool) -> Event {
        self.converted = Some(yes);
        self
    }

    /// The event with every label cut to a short code: at most 40 characters of
    /// `[A-Za-z0-9_.-]`, and a label holding 12 or more digits in a row (which could be a
    /// card number) replaced by `redacted`. Aggregation applies this to every event.
    pub fn sanitized(mut self) -> Event {
        for l in [
            &mut self.colo,
            &mut self.lane,
            &mut self.policy_revision,
            &mut self.reason,
        ] {
            if let Some(s) = l.take() {
                *l = Some(label(&s));
            }
        }
        self
    }
}

fn label(s: &str) -> String {
    let mut run = 0usize;
    let mut longest = 0usize;
    for c in s.chars() {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    if longest >= 12 {
        return "redacted".into();
    }
    let cleaned: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(LABEL_MAX)
        .collect();
    if cleaned.is_empty() {
        "unknown".into()
    } else {
        cleaned
    }
}

/// The bucket index of a latency.
pub fn bucket_of(ms: u32) -> usize {
    BUCKET_BOUNDS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(BUCKETS - 1)
}

/// `(lower, upper)` bounds of bucket `i` in ms; the overflow bucket's upper is `None`.
pub fn bucket_range(i: usize) -> (u32, Option<u32>) {
    let lower = if i == 0 {
        0
    } else {
        BUCKET_BOUNDS_MS.get(i - 1).copied().unwrap_or(0)
    };
    (lower, BUCKET_BOUNDS_MS.get(i).copied())
}

/// A latency histogram over the fixed buckets. Serialized sparsely as `{"bucket": count}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Histogram {
    counts: BTreeMap<u8, u64>,
}

impl Histogram {
    pub fn record(&mut self, ms: u32) {
        *self
            .counts
            .entry(u8::try_from(bucket_of(ms)).unwrap_or(u8::MAX))
            .or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (b, n) in &other.counts {
            *self.counts.entry(*b).or_insert(0) += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The `q` quantile (0 < q ≤ 1) as the upper bound of the bucket that holds the
    /// `ceil(q·n)`-th smallest sample; for the overflow bucket, the last bound (a floor:
    /// "at least 30 s"). `None` when empty.
    pub fn percentile(&self, q: f64) -> Option<u32> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (b, c) in &self.counts {
            seen += c;
            if seen >= rank {
                let (lower, upper) = bucket_range(usize::from(*b));
                return Some(upper.unwrap_or(lower));
            }
        }
        None
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            p50_ms: self.percentile(0.50),
            p95_ms: self.percentile(0.95),
            p99_ms: self.percentile(0.99),
        }
    }
}

/// Count and percentiles of one histogram, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: Option<u32>,
    pub p95_ms: Option<u32>,
    pub p99_ms: Option<u32>,
}

/// Charged transactions on one lane (approved online or forwarded later).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneTally {
    pub transactions: u64,
    pub amount_minor: i64,
}

/// Started and converted (approved or queued) checkouts per latency bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionCell {
    pub started: u64,
    pub converted: u64,
}

/// The small, fixed-size part of the aggregate: one storage row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub funnel: BTreeMap<Kind, u64>,
    pub declines: BTreeMap<String, u64>,
    /// Keyed by bucket index.
    pub conversion: BTreeMap<u8, ConversionCell>,
    pub lanes: BTreeMap<String, LaneTally>,
    pub policy_revisions: BTreeMap<String, u64>,
    /// Amount of converted checkouts (approved + queued), for the average order value.
    pub converted_amount_minor: i64,
    pub converted_with_amount: u64,
    pub refunded_minor: i64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

/// Everything recorded for one event. Mergeable: `a.merge(&b)` equals aggregating the
/// events of both (the per-minute series keeps the newest [`SERIES_MINUTES`] minutes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    pub totals: Totals,
    /// Checkout answer latency per PoP colo.
    pub by_colo: BTreeMap<String, Histogram>,
    /// Time to the acquirer's answer (approved or declined) per lane.
    pub by_lane: BTreeMap<String, Histogram>,
    /// Checkout answer latency per PoP and minute (minute start, Unix ms).
    pub series: BTreeMap<String, BTreeMap<i64, Histogram>>,
}

impl Aggregate {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Aggregate {
        let mut a = Aggregate::default();
        for e in events {
            a.record(e);
        }
        a
    }

    /// Folds one event in (sanitized first).
    pub fn record(&mut self, event: &Event) {
        let e = event.clone().sanitized();
        let t = &mut self.totals;
        *t.funnel.entry(e.kind).or_insert(0) += 1;
        t.first_ms = Some(t.first_ms.map_or(e.at_ms, |f| f.min(e.at_ms)));
        t.last_ms = Some(t.last_ms.map_or(e.at_ms, |l| l.max(e.at_ms)));
        if let Some(rev) = &e.policy_revision {
            *t.policy_revisions.entry(rev.clone()).or_insert(0) += 1;
        }
        let colo = e.colo.clone().unwrap_or_else(|| "unknown".into());
        match e.kind {
            Kind::CheckoutStarted => {
                if let Some(ms) = e.latency_ms {
                    let cell = t
                        .conversion
                        .entry(u8::try_from(bucket_of(ms)).unwrap_or(u8::MAX))
                        .or_default();
                    cell.started += 1;
                    if e.converted == Some(true) {
                        cell.converted += 1;
                    }
                    self.by_colo.entry(colo.clone()).or_default().record(ms);
                    let minute = e.at_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
                    self.series
                        .entry(colo)
                        .or_default()
                        .entry(minute)
                        .or_default()
                        .record(ms);
                    self.prune_series();
                }
            }
            Kind::Approved | Kind::Queued => {
                if let Some(amount) = e.amount_minor {
                    t.converted_amount_minor = t.converted_amount_minor.saturating_add(amount);
                    t.converted_with_amount += 1;
                }
                if e.kind == Kind::Approved {
                    self.charge(&e);
                    if let (Some(lane), Some(ms)) = (&e.lane, e.latency_ms) {
                        self.by_lane.entry(lane.clone()).or_default().record(ms);
                    }
                }
            }
            Kind::Declined => {
                let reason = e.reason.clone().unwrap_or_else(|| "unknown".into());
                *t.declines.entry(reason).or_insert(0) += 1;
                if let (Some(lane), Some(ms)) = (&e.lane, e.latency_ms) {
                    self.by_lane.entry(lane.clone()).or_default().record(ms);
                }
            }
            Kind::Forwarded => self.charge(&e),
            Kind::Refund => {
                t.refunded_minor = t.refunded_minor.saturating_add(e.amount_minor.unwrap_or(0));
            }
            Kind::QuoteShown | Kind::TokenIssued | Kind::Expired | Kind::ReceiptSent => {}
        }
    }

    fn charge(&mut self, e: &Event) {
        let lane = e.lane.clone().unwrap_or_else(|| "unknown".into());
        let tally = self.totals.lanes.entry(lane).or_default();
        tally.transactions += 1;
        tally.amount_minor = tally
            .amount_minor
            .saturating_add(e.amount_minor.unwrap_or(0));
    }

    /// The oldest minute the series keeps: [`SERIES_MINUTES`] minutes up to the newest
    /// minute any PoP recorded. Storage deletes series rows before it.
    pub fn series_floor_ms(&self) -> Option<i64> {
        let newest = self
            .series
            .values()
            .filter_map(|m| m.keys().next_back().copied())
            .max()?;
        Some(newest - (SERIES_MINUTES - 1) * MINUTE_MS)
    }

    fn prune_series(&mut self) {
        let Some(floor) = self.series_floor_ms() else {
            return;
        };
        for minutes in self.series.values_mut() {
            minutes.retain(|m, _| *m >= floor);
        }
        self.series.retain(|_, m| !m.is_empty());
    }

    /// Adds `other` into `self`; exact for every count and histogram.
    pub fn merge(&mut self, other: &Aggregate) {
        let (t, o) = (&mut self.totals, &other.totals);
        for (k, n) in &o.funnel {
            *t.funnel.entry(*k).or_insert(0) += n;
        }
        for (k, n) in &o.declines {
            *t.declines.entry(k.clone()).or_insert(0) += n;
        }
        for (k, c) in &o.conversion {
            let cell = t.conversion.entry(*k).or_default();
            cell.started += c.started;
            cell.converted += c.converted;
        }
        for (k, l) in &o.lanes {
            let tally = t.lanes.entry(k.clone()).or_default();
            tally.transactions += l.transactions;
            tally.amount_minor = tally.amount_minor.saturating_add(l.amount_minor);
        }
        for (k, n) in &o.policy_revisions {
            *t.policy_revisions.entry(k.clone()).or_insert(0) += n;
        }
        t.converted_amount_minor = t
            .converted_amount_minor
            .saturating_add(o.converted_amount_minor);
        t.converted_with_amount += o.converted_with_amount;
        t.refunded_minor = t.refunded_minor.saturating_add(o.refunded_minor);
        t.first_ms = match (t.first_ms, o.first_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        t.last_ms = match (t.last_ms, o.last_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for (k, h) in &other.by_colo {
            self.by_colo.entry(k.clone()).or_default().merge(h);
        }
        for (k, h) in &other.by_lane {
            self.by_lane.entry(k.clone()).or_default().merge(h);
        }
        for (colo, minutes) in &other.series {
            let mine = self.series.entry(colo.clone()).or_default();
            for (m, h) in minutes {
                mine.entry(*m).or_default().merge(h);
            }
        }
        self.prune_series();
    }

    /// The aggregate as storage rows `(key, json)`: `totals`, `colo:<colo>`, `lane:<lane>`
    /// and `series:<colo>:<minute_ms>`. Each row is small (a few hundred bytes).
    pub fn to_rows(&self) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        let enc = |v: &dyn erased::Json| v.json();
        rows.push(("totals".to_string(), enc(&self.totals)));
        for (k, h) in &self.by_colo {
            rows.push((format!("colo:{k}"), enc(h)));
        }
        for (k, h) in &self.by_lane {
            rows.push((format!("lane:{k}"), enc(h)));
        }
        for (colo, minutes) in &self.series {
            for (m, h) in minutes {
                rows.push((format!("series:{colo}:{m}"), enc(h)));
            }
        }
        rows
    }

    /// Rebuilds an aggregate from its rows; unreadable rows are skipped.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str)>) -> Aggregate {
        let mut a = Aggregate::default();
        for (k, v) in rows {
            if k == "totals" {
                if let Ok(t) = serde_json::from_str(v) {
                    a.totals = t;
                }
            } else if let Some(c) = k.strip_prefix("colo:") {
                if let Ok(h) = serde_json::from_str(v) {
                    a.by_colo.insert(c.to_string(), h);
                }
            } else if let Some(l) = k.strip_prefix("lane:") {
                if let Ok(h) = serde_json::from_str(v) {
                    a.by_lane.insert(l.to_string(), h);
                }
            } else if let Some(rest) = k.strip_prefix("series:") {
                let Some((colo, minute)) = rest.rsplit_once(':') else {
                    continue;
                };
                if let (Ok(m), Ok(h)) = (minute.parse::<i64>(), serde_json::from_str(v)) {
                    a.series.entry(colo.to_string()).or_default().insert(m, h);
                }
            }
        }
        a.prune_series();
        a
    }

    /// The storage keys a batch's aggregate touches: write these rows of the merged
    /// aggregate back (and delete series rows before [`Aggregate::series_floor_ms`]).
    pub fn row_keys(&self) -> Vec<String> {
        self.to_rows().into_iter().map(|(k, _)| k).collect()
    }
}

mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
        }
    }
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

/// The ledger's live queue state (from its summary).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct QueueState {
    pub queued_count: u32,
    pub queued_exposure: MinorUnits,
    pub aggregate_max: MinorUnits,
    pub refunds_pending: u32,
    pub waiting_room_depth: u32,
    pub waiting_room_admitted: u32,
}

impl From<&crate::ledger::EventSummary> for QueueState {
    fn from(s: &crate::ledger::EventSummary) -> QueueState {
        QueueState {
            queued_count: s.queued_count,
            queued_exposure: s.queued_exposure,
            aggregate_max: s.aggregate_max,
            refunds_pending: s.refunds_pending,
            waiting_room_depth: s.queue_depth,
            waiting_room_admitted: s.queue_admitted,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Funnel {
    pub quote_shown: u64,
    pub token_issued: u64,
    pub checkout_started: u64,
    pub approved: u64,
    pub queued: u64,
    pub declined: u64,
    pub forwarded: u64,
    pub expired: u64,
    pub receipt_sent: u64,
    pub refund: u64,
    /// Answered checkouts that were approved or queued.
    pub converted: u64,
    /// `converted / checkout_started`, or `None` before the first checkout.
    pub conversion_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ConversionBucket {
    /// The bucket's bounds in ms: answers slower than `gt_ms` and at most `le_ms`
    /// (`None`: slower than every bound).
    pub gt_ms: u32,
    pub le_ms: Option<u32>,
    pub started: u64,
    pub converted: u64,
    pub rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SeriesPoint {
    pub minute_ms: i64,
    pub count: u64,
    pub p50_ms: Option<u32>,
    pub p95_ms: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct LaneCost {
    pub lane: String,
    pub transactions: u64,
    pub amount_minor: i64,
    /// `transactions × cost_per_tx_minor + ⌈amount × cost_bps / 10 000⌉`.
    pub cost_minor: i64,
    /// Transactions charged on this lane per one major unit (e.g. 1 EUR) of its cost.
    pub conversions_per_cost_unit: Option<f64>,
    /// Amount charged per minor unit of cost.
    pub revenue_per_cost_minor: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct LatencyEffect {
    /// The model, in words, with the figures it used.
    pub model: String,
    /// Fitted change of the conversion rate per 100 ms more answer latency.
    pub slope_per_100ms: Option<f64>,
    /// Change of the conversion rate if p95 (and every answer) were 50 ms faster.
    pub conversion_delta: Option<f64>,
    /// Estimated revenue effect over the checkouts observed so far, in minor units.
    pub revenue_effect_minor: Option<i64>,
    /// Why there is no estimate, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insufficient: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CostReport {
    pub currency: Currency,
    pub lanes: Vec<LaneCost>,
    pub total_cost_minor: i64,
    /// Converted checkouts per one major unit of total lane cost.
    pub conversions_per_cost_unit: Option<f64>,
    pub latency_effect: LatencyEffect,
}

/// `GET /v1/admin/events/{id}/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Metrics {
    pub event_id: String,
    pub generated_ms: i64,
    pub currency: Currency,
    pub funnel: Funnel,
    pub latency: LatencyBlock,
    pub latency_series: BTreeMap<String, Vec<SeriesPoint>>,
    pub conversion_by_latency: Vec<ConversionBucket>,
    pub queue: QueueState,
    pub declines: BTreeMap<String, u64>,
    pub policy_revisions: BTreeMap<String, u64>,
    pub refunded_minor: i64,
    pub cost: CostReport,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct LatencyBlock {
    /// Checkout answer latency per PoP.
    pub by_colo: BTreeMap<String, LatencySummary>,
    /// Time to the acquirer's answer per lane.
    pub by_lane: BTreeMap<String, LatencySummary>,
    /// All PoPs together.
    pub overall: LatencySummary,
}

fn count(a: &Aggregate, k: Kind) -> u64 {
    a.totals.funnel.get(&k).copied().unwrap_or(0)
}

/// The metrics document for one event.
pub fn metrics(
    event_id: &str,
    agg: &Aggregate,
    queue: QueueState,
    lanes: &[LaneConfig],
    currency: Currency,
    now_ms: i64,
) -> Metrics {
    let converted: u64 = agg.totals.conversion.values().map(|c| c.converted).sum();
    let started = count(agg, Kind::CheckoutStarted);
    let funnel = Funnel {
        quote_shown: count(agg, Kind::QuoteShown),
        token_issued: count(agg, Kind::TokenIssued),
        checkout_started: started,
        approved: count(agg, Kind::Approved),
        queued: count(agg, Kind::Queued),
        declined: count(agg, Kind::Declined),
        forwarded: count(agg, Kind::Forwarded),
        expired: count(agg, Kind::Expired),
        receipt_sent: count(agg, Kind::ReceiptSent),
        refund: count(agg, Kind::Refund),
        converted,
        conversion_rate: (started > 0).then(|| converted as f64 / started as f64),
    };
    let mut overall = Histogram::default();
    for h in agg.by_colo.values() {
        overall.merge(h);
    }
    let latency = LatencyBlock {
        by_colo: agg
            .by_colo
            .iter()
            .map(|(k, h)| (k.clone(), h.summary()))
            .collect(),
        by_lane: agg
            .by_lane
            .iter()
            .map(|(k, h)| (k.clone(), h.summary()))
            .collect(),
        overall: overall.summary(),
    };
    let latency_series = agg
        .series
        .iter()
        .map(|(colo, minutes)| {
            let points = minutes
                .iter()
                .map(|(m, h)| SeriesPoint {
                    minute_ms: *m,
                    count: h.count(),
                    p50_ms: h.percentile(0.5),
                    p95_ms: h.percentile(0.95),
                })
                .collect();
            (colo.clone(), points)
        })
        .collect();
    Metrics {
        event_id: event_id.to_string(),
        generated_ms: now_ms,
        currency,
        funnel,
        latency,
        latency_series,
        conversion_by_latency: conversion_curve(agg),
        queue,
        declines: agg.totals.declines.clone(),
        policy_revisions: agg.totals.policy_revisions.clone(),
        refunded_minor: agg.totals.refunded_minor,
        cost: cost_report(agg, lanes, currency),
        first_ms: agg.totals.first_ms,
        last_ms: agg.totals.last_ms,
    }
}

/// Started and converted checkouts per latency bucket, for the buckets that saw any.
pub fn conversion_curve(agg: &Aggregate) -> Vec<ConversionBucket> {
    agg.totals
        .conversion
        .iter()
        .filter(|(_, c)| c.started > 0)
        .map(|(b, c)| {
            let (gt_ms, le_ms) = bucket_range(usize::from(*b));
            ConversionBucket {
                gt_ms,
                le_ms,
                started: c.started,
                converted: c.converted,
                rate: c.converted as f64 / c.started as f64,
            }
        })
        .collect()
}

/// Cost per lane from its configured price, conversion per unit of cost, and the latency
/// effect. Lanes charged that are no longer configured are reported with cost 0.
pub fn cost_report(agg: &Aggregate, lanes: &[LaneConfig], currency: Currency) -> CostReport {
    let unit = 10f64.powi(i32::from(currency.exponent()));
    let mut out = Vec::new();
    let mut total = 0i64;
    for (name, tally) in &agg.totals.lanes {
        let cost = lanes
            .iter()
            .find(|l| &l.name == name)
            .map(|l| {
                let tx = i128::from(l.cost_per_tx_minor) * i128::from(tally.transactions);
                let variable = (i128::from(tally.amount_minor.max(0)) * i128::from(l.cost_bps)
                    + 9_999)
                    / 10_000;
                i64::try_from(tx + variable).unwrap_or(i64::MAX)
            })
            .unwrap_or(0);
        total = total.saturating_add(cost);
        out.push(LaneCost {
            lane: name.clone(),
            transactions: tally.transactions,
            amount_minor: tally.amount_minor,
            cost_minor: cost,
            conversions_per_cost_unit: (cost > 0)
                .then(|| tally.transactions as f64 / (cost as f64 / unit)),
            revenue_per_cost_minor: (cost > 0).then(|| tally.amount_minor as f64 / cost as f64),
        });
    }
    let converted: u64 = agg.totals.conversion.values().map(|c| c.converted).sum();
    CostReport {
        currency,
        lanes: out,
        total_cost_minor: total,
        conversions_per_cost_unit: (total > 0).then(|| converted as f64 / (total as f64 / unit)),
        latency_effect: latency_effect(agg),
    }
}

/// A representative latency for bucket `i`: the geometric mean of its bounds (0.5 ms for
/// the first bucket, 1.5 × the last bound for the overflow bucket).
pub fn bucket_mid_ms(i: usize) -> f64 {
    match bucket_range(i) {
        (0, Some(u)) => f64::from(u) / 2.0,
        (l, Some(u)) => (f64::from(l) * f64::from(u)).sqrt(),
        (l, None) => f64::from(l) * 1.5,
    }
}

/// The estimated revenue effect of answering 50 ms sooner. The model, stated in the
/// output: conversion rate is a straight line in answer latency, fitted by least squares
/// to the observed buckets (each weighted by its started checkouts, placed at the
/// geometric middle of the bucket); taking 50 ms off every answer (so off p95) changes
/// the conversion rate by −50 ms × slope; revenue effect = that change × checkouts started
/// so far × the average converted order value so far. No estimate with fewer than
/// [`MIN_STARTED_FOR_EFFECT`] answered checkouts or fewer than two distinct buckets.
pub fn latency_effect(agg: &Aggregate) -> LatencyEffect {
    let cells: Vec<(f64, f64, f64)> = agg
        .totals
        .conversion
        .iter()
        .filter(|(_, c)| c.started > 0)
        .map(|(b, c)| {
            (
                bucket_mid_ms(usize::from(*b)),
                c.converted as f64 / c.started as f64,
                c.started as f64,
            )
        })
        .collect();
    let started: f64 = cells.iter().map(|c| c.2).sum();
    let aov = if agg.totals.converted_with_amount > 0 {
        agg.totals.converted_amount_minor as f64 / agg.totals.converted_with_amount as f64
    } else {
        0.0
    };
    let base = "Model: conversion rate = a + b × answer latency, a least-squares line through \
                the observed latency buckets (weighted by checkouts started, each bucket at \
                its geometric middle). 50 ms less on every answer (so on p95) changes \
                conversion by −50 ms × b; revenue effect = that change × checkouts started \
                so far × average converted order value so far. A correlation, not a \
                controlled experiment.";
    let none = |why: String| LatencyEffect {
        model: base.to_string(),
        slope_per_100ms: None,
        conversion_delta: None,
        revenue_effect_minor: None,
        insufficient: Some(why),
    };
    if (started as u64) < MIN_STARTED_FOR_EFFECT {
        return none(format!(
            "{} answered checkouts so far; the estimate needs at least {MIN_STARTED_FOR_EFFECT}.",
            started as u64
        ));
    }
    if cells.len() < 2 {
        return none("Every checkout so far was answered within one latency bucket, so there is no curve to read.".into());
    }
    let mx = cells.iter().map(|c| c.0 * c.2).sum::<f64>() / started;
    let my = cells.iter().map(|c| c.1 * c.2).sum::<f64>() / started;
    let sxx: f64 = cells.iter().map(|c| c.2 * (c.0 - mx).powi(2)).sum();
    let sxy: f64 = cells.iter().map(|c| c.2 * (c.0 - mx) * (c.1 - my)).sum();
    if sxx <= 0.0 {
        return none("No spread in latency to fit a line to.".into());
    }
    let slope = sxy / sxx;
    let delta = -slope * EFFECT_MS;
    let effect = delta * started * aov;
    LatencyEffect {
        model: format!(
            "{base} Fitted on {} checkouts in {} buckets: b = {:+.5} per 100 ms, average order {:.0} minor units.",
            started as u64,
            cells.len(),
            slope * 100.0,
            aov
        ),
        slope_per_100ms: Some(slope * 100.0),
        conversion_delta: Some(delta),
        revenue_effect_minor: Some(effect.round() as i64),
        insufficient: None,
    }
}

// ---------------------------------------------------------------------------------------
// Structured logs
// ---------------------------------------------------------------------------------------

/// One log line: a single JSON object with `level`, `msg`, then `request_id`, `colo` and
/// `event_id` when known, then the fields of `extra` (an object; it cannot override the
/// fields before it). String values of `extra` are cut to 200 characters and every run of
/// 12 or more digits (which could be a card number) becomes `[digits]`.
pub fn log_line(
    level: &str,
    msg: &str,
    request_id: Option<&str>,
    colo: Option<&str>,
    event_id: Option<&str>,
    extra: serde_json::Value,
) -> String {
    let mut line = serde_json::Map::new();
    line.insert("level".into(), level.into());
    line.insert("msg".into(), msg.into());
    for (k, v) in [
        ("request_id", request_id),
        ("colo", colo),
        ("event_id", event_id),
    ] {
        if let Some(v) = v {
            line.insert(k.into(), v.into());
        }
    }
    if let serde_json::Value::Object(fields) = extra {
        for (k, v) in fields {
            line.entry(k).or_insert(mask_value(v));
        }
    }
    serde_json::Value::Object(line).to_string()
}

/// Masks what must never reach a log in clear, in a string value: a run of 12 or more
/// digits, also when spaces or dashes separate them (a card number as typed,
/// `4242 4242 4242 4242`), becomes `[digits]`; a run of 32 or more hex characters (a
/// capability: a waiting-room ticket, a receipt URL's token, a handover session) becomes
/// `[id]`. At most 200 characters are kept.
fn mask_digits(s: &str) -> String {
    let chars: Vec<char> = s.chars().take(200).collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_hexdigit() {
            let run = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            if run >= 32 {
                out.push_str("[id]");
                i += run;
                continue;
            }
        }
        if c.is_ascii_digit() {
            // A digit run, separators allowed between digits.
            let mut j = i;
            let mut digits = 0;
            let mut end = i;
            while j < chars.len() {
                if chars[j].is_ascii_digit() {
                    digits += 1;
                    j += 1;
                    end = j;
                } else if (chars[j] == ' ' || chars[j] == '-')
                    && chars.get(j + 1).is_some_and(|n| n.is_ascii_digit())
                {
                    j += 1;
                } else {
                    break;
                }
            }
            if digits >= 12 {
                out.push_str("[digits]");
                i = end;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// [`mask_digits`] over every string inside a JSON value.
fn mask_value(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::String(s) => serde_json::Value::String(mask_digits(&s)),
        serde_json::Value::Array(a) => a.into_iter().map(mask_value).collect(),
        serde_json::Value::Object(o) => o.into_iter().map(|(k, v)| (k, mask_value(v))).collect(),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::parse_lanes;

    const T0: i64 = 1_790_000_000_000;

    /// A fake clock: every call is one second later.
    struct Clock(i64);
    impl Clock {
        fn tick(&mut self) -> i64 {
            self.0 += 1_000;
            self.0
        }
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn lanes() -> Vec<LaneConfig> {
        parse_lanes(r#"[
          {"name":"fast","connector":"stripe","base_url":"http://x/fast","secret_name":"A","cost_per_tx_minor":30,"cost_bps":290,"region":"eu"},
          {"name":"cheap","connector":"stripe","base_url":"http://x/cheap","secret_name":"A","cost_per_tx_minor":10,"cost_bps":150,"region":"eu"}
        ]"#).unwrap()
    }

    fn started(at: i64, colo: &str, ms: i64, converted: bool) -> Event {
        Event::new(Kind::CheckoutStarted, at)
            .colo(colo)
            .latency(ms)
            .converted(converted)
    }

    #[test]
    fn buckets_are_log_spaced_and_cover_everything() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(100), 11);
        assert_eq!(bucket_of(101), 12);
        assert_eq!(bucket_of(30_000), BUCKETS - 2);
        assert_eq!(bucket_of(u32::MAX), BUCKETS - 1);
        for w in BUCKET_BOUNDS_MS.windows(2) {
            assert!(w[1] > w[0]);
            // No bucket is more than twice as wide as the one before it in ratio terms.
            assert!(f64::from(w[1]) / f64::from(w[0]) <= 2.0, "{w:?}");
        }
        assert_eq!(bucket_range(0), (0, Some(1)));
        assert_eq!(bucket_range(12), (100, Some(150)));
        assert_eq!(bucket_range(BUCKETS - 1), (30_000, None));
    }

    #[test]
    fn percentiles_come_from_bucket_upper_bounds() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(0.5), None);
        // 90 fast answers (40 ms → bucket ≤50), 8 at 180 ms (≤200), 2 at 2.5 s (≤3000).
        for _ in 0..90 {
            h.record(40);
        }
        for _ in 0..8 {
            h.record(180);
        }
        for _ in 0..2 {
            h.record(2_500);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile(0.50), Some(50));
        assert_eq!(h.percentile(0.90), Some(50));
        assert_eq!(h.percentile(0.95), Some(200));
        assert_eq!(h.percentile(0.98), Some(200));
        assert_eq!(h.percentile(0.99), Some(3_000));
        let mut slow = Histogram::default();
        slow.record(90_000);
        assert_eq!(
            slow.percentile(0.5),
            Some(30_000),
            "overflow reports the floor"
        );
    }

    #[test]
    fn merging_is_exact_whatever_the_split() {
        let mut clock = Clock(T0);
        let mut events = Vec::new();
        for i in 0..200i64 {
            let at = clock.tick();
            let colo = ["LHR", "CDG", "FRA"][(i % 3) as usize];
            let ms = (i * 37) % 4_000;
            events.push(started(at, colo, ms, i % 4 != 0));
            if i % 4 == 0 {
                events.push(
                    Event::new(Kind::Declined, at)
                        .lane("fast")
                        .latency(ms)
                        .reason(["card_declined", "insufficient_funds"][(i % 8 / 4) as usize]),
                );
            } else {
                events.push(
                    Event::new(Kind::Approved, at)
                        .lane(["fast", "cheap"][(i % 2) as usize])
                        .latency(ms)
                        .amount(1_500)
                        .revision(3),
                );
            }
        }
        let whole = Aggregate::from_events(&events);
        for split in [1usize, 7, 100, 399] {
            let mut a = Aggregate::from_events(&events[..split]);
            let b = Aggregate::from_events(&events[split..]);
            a.merge(&b);
            assert_eq!(a, whole, "split at {split}");
            // Merging in the other order gives the same result too.
            let mut b2 = Aggregate::from_events(&events[split..]);
            b2.merge(&Aggregate::from_events(&events[..split]));
            assert_eq!(b2, whole);
        }
        assert_eq!(whole.totals.funnel[&Kind::CheckoutStarted], 200);
        assert_eq!(whole.totals.declines["card_declined"], 25);
        assert_eq!(whole.totals.declines["insufficient_funds"], 25);
        assert_eq!(
            whole.by_colo.values().map(Histogram::count).sum::<u64>(),
            200
        );
    }

    #[test]
    fn rows_round_trip_and_a_batch_touches_only_its_rows() {
        let mut clock = Clock(T0);
        let mut stored = Aggregate::default();
        for i in 0..50 {
            stored.record(&started(clock.tick(), "LHR", 40 + i, true));
        }
        let rows = stored.to_rows();
        let back = Aggregate::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(back, stored);
        assert!(rows.iter().all(|(_, v)| v.len() < 2_000), "rows stay small");
        // A later batch from another PoP touches totals, its colo and its minute only.
        let at = clock.tick();
        let batch = Aggregate::from_events(&[started(at, "SIN", 80, false)]);
        let keys = batch.row_keys();
        let minute = at.div_euclid(60_000) * 60_000;
        assert_eq!(
            keys,
            vec![
                "totals".to_string(),
                "colo:SIN".into(),
                format!("series:SIN:{minute}")
            ]
        );
        // Writing back only those rows of the merged aggregate reproduces it.
        stored.merge(&batch);
        let merged_rows: BTreeMap<String, String> = stored.to_rows().into_iter().collect();
        let mut table: BTreeMap<String, String> = rows.into_iter().collect();
        for k in keys {
            table.insert(k.clone(), merged_rows[&k].clone());
        }
        let reread = Aggregate::from_rows(table.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(reread, stored);
    }

    #[test]
    fn the_series_buckets_per_minute_and_keeps_a_window() {
        let m0 = T0.div_euclid(60_000) * 60_000;
        let mut a = Aggregate::default();
        a.record(&started(m0, "LHR", 30, true));
        a.record(&started(m0 + 59_999, "LHR", 900, true));
        a.record(&started(m0 + 60_000, "LHR", 40, true));
        let m = metrics("evt", &a, QueueState::default(), &lanes(), eur(), T0);
        let pts = &m.latency_series["LHR"];
        assert_eq!(pts.len(), 2);
        assert_eq!((pts[0].minute_ms, pts[0].count), (m0, 2));
        assert_eq!(pts[0].p95_ms, Some(1_000));
        assert_eq!((pts[1].minute_ms, pts[1].count), (m0 + 60_000, 1));
        assert_eq!(pts[1].p95_ms, Some(50));
        let mut long = Aggregate::default();
        for i in 0..(SERIES_MINUTES + 10) {
            long.record(&started(T0 + i * 60_000, "LHR", 30, true));
        }
        assert_eq!(long.series["LHR"].len() as i64, SERIES_MINUTES);
        assert_eq!(
            *long.series["LHR"].keys().next().unwrap(),
            (T0 + 10 * 60_000).div_euclid(60_000) * 60_000,
            "the oldest minutes go first"
        );
        // The per-PoP histogram keeps everything.
        assert_eq!(long.by_colo["LHR"].count() as i64, SERIES_MINUTES + 10);
    }

    #[test]
    fn no_label_can_carry_a_card_number() {
        let e = Event::new(Kind::Declined, T0)
            .reason("card 4242424242424242 declined")
            .lane("fast\n{\"x\":1}")
            .colo("");
        let s = e.sanitized();
        assert_eq!(s.reason.as_deref(), Some("redacted"));
        assert_eq!(s.lane.as_deref(), Some("fastx1"));
        assert_eq!(s.colo.as_deref(), Some("unknown"));
        let a =
            Aggregate::from_events(&[Event::new(Kind::Declined, T0).reason("4000000000000002")]);
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains("4000000000000002"));
        assert_eq!(a.totals.declines["redacted"], 1);
        // Unknown fields are refused, so a card field cannot ride along in a batch.
        assert!(serde_json::from_str::<Event>(
            r#"{"kind":"approved","at_ms":1,"card_number":"4242424242424242"}"#
        )
        .is_err());
    }

    #[test]
    fn metrics_report_funnel_conversion_latency_and_queue() {
        let mut clock = Clock(T0);
        let mut ev = Vec::new();
        for _ in 0..10 {
            ev.push(Event::new(Kind::QuoteShown, clock.tick()).colo("LHR"));
        }
        for _ in 0..8 {
            ev.push(Event::new(Kind::TokenIssued, clock.tick()).colo("LHR"));
        }
        // 5 approved at ~40 ms on fast, 1 queued at 900 ms, 2 declined at 60 ms.
        for _ in 0..5 {
            let at = clock.tick();
            ev.push(started(at, "LHR", 40, true));
            ev.push(
                Event::new(Kind::Approved, at)
                    .lane("fast")
                    .latency(35)
                    .amount(1_500),
            );
        }
        let at = clock.tick();
        ev.push(started(at, "CDG", 900, true));
        ev.push(Event::new(Kind::Queued, at).lane("fast").amount(1_500));
        for _ in 0..2 {
            let at = clock.tick();
            ev.push(started(at, "LHR", 60, false));
            ev.push(
                Event::new(Kind::Declined, at)
                    .lane("cheap")
                    .latency(55)
                    .reason("card_declined"),
            );
        }
        // The queued payment is forwarded later on the cheap lane.
        ev.push(
            Event::new(Kind::Forwarded, clock.tick())
                .lane("cheap")
                .amount(1_500),
        );
        let agg = Aggregate::from_events(&ev);
        let queue = QueueState {
            queued_count: 1,
            queued_exposure: MinorUnits(1_500),
            aggregate_max: MinorUnits(50_000),
            ..QueueState::default()
        };
        let m = metrics("evt_1", &agg, queue, &lanes(), eur(), clock.tick());
        assert_eq!(m.funnel.quote_shown, 10);
        assert_eq!(m.funnel.token_issued, 8);
        assert_eq!(m.funnel.checkout_started, 8);
        assert_eq!(
            (m.funnel.approved, m.funnel.queued, m.funnel.declined),
            (5, 1, 2)
        );
        assert_eq!(m.funnel.converted, 6);
        assert_eq!(m.funnel.conversion_rate, Some(0.75));
        assert_eq!(m.latency.by_colo["LHR"].count, 7);
        assert_eq!(m.latency.by_colo["LHR"].p50_ms, Some(50));
        assert_eq!(m.latency.by_colo["LHR"].p95_ms, Some(70));
        assert_eq!(m.latency.by_colo["CDG"].p99_ms, Some(1_000));
        assert_eq!(m.latency.by_lane["fast"].count, 5);
        assert_eq!(m.latency.by_lane["cheap"].p50_ms, Some(70));
        assert_eq!(m.latency.overall.count, 8);
        assert_eq!(m.declines["card_declined"], 2);
        assert_eq!(m.queue.queued_exposure, MinorUnits(1_500));
        let curve: Vec<(Option<u32>, u64, u64)> = m
            .conversion_by_latency
            .iter()
            .map(|b| (b.le_ms, b.started, b.converted))
            .collect();
        assert_eq!(
            curve,
            vec![(Some(50), 5, 5), (Some(70), 2, 0), (Some(1_000), 1, 1)]
        );
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["funnel"]["checkout_started"], 8);
        assert_eq!(json["queue"]["queued_exposure"], 1_500);
    }

    #[test]
    fn cost_per_lane_uses_the_configured_prices() {
        let mut ev = Vec::new();
        for _ in 0..4 {
            ev.push(started(T0, "LHR", 40, true));
            ev.push(
                Event::new(Kind::Approved, T0)
                    .lane("fast")
                    .latency(40)
                    .amount(2_000),
            );
        }
        ev.push(Event::new(Kind::Forwarded, T0).lane("cheap").amount(1_000));
        ev.push(Event::new(Kind::Approved, T0).lane("gone").amount(500));
        let c = cost_report(&Aggregate::from_events(&ev), &lanes(), eur());
        let fast = c.lanes.iter().find(|l| l.lane == "fast").unwrap();
        // 4 × 30 + ⌈8000 × 2.9 %⌉ = 120 + 232
        assert_eq!(
            (fast.transactions, fast.amount_minor, fast.cost_minor),
            (4, 8_000, 352)
        );
        assert_eq!(
            fast,
            &LaneCost {
                conversions_per_cost_unit: Some(4.0 / 3.52),
                revenue_per_cost_minor: Some(8_000.0 / 352.0),
                ..fast.clone()
            }
        );
        let cheap = c.lanes.iter().find(|l| l.lane == "cheap").unwrap();
        assert_eq!(cheap.cost_minor, 10 + 15);
        let gone = c.lanes.iter().find(|l| l.lane == "gone").unwrap();
        assert_eq!((gone.cost_minor, gone.conversions_per_cost_unit), (0, None));
        assert_eq!(c.total_cost_minor, 352 + 25);
        assert_eq!(c.conversions_per_cost_unit, Some(4.0 / 3.77));
        // Zero-decimal currencies count cost units in whole yen.
        let jpy = cost_report(
            &Aggregate::from_events(&ev),
            &lanes(),
            Currency::parse("JPY").unwrap(),
        );
        assert_eq!(jpy.conversions_per_cost_unit, Some(4.0 / 377.0));
    }

    #[test]
    fn the_latency_effect_reads_the_observed_curve() {
        // Fast answers convert 90 %, slow ones (≈ 1.2 s) 60 %: every 100 ms costs conversion.
        let mut ev = Vec::new();
        for i in 0..100 {
            ev.push(started(T0, "LHR", 40, i % 10 != 0));
            ev.push(started(T0, "LHR", 1_200, i % 10 < 6));
        }
        for _ in 0..150 {
            ev.push(Event::new(Kind::Approved, T0).lane("fast").amount(2_000));
        }
        let agg = Aggregate::from_events(&ev);
        let e = latency_effect(&agg);
        assert!(e.insufficient.is_none(), "{e:?}");
        // Two points: (√(30·50) ≈ 38.7 ms, 0.9) and (√(1000·1500) ≈ 1224.7 ms, 0.6).
        let slope = (0.6 - 0.9) / (1_500_000f64.sqrt() - 1_500f64.sqrt());
        let got = e.slope_per_100ms.unwrap();
        assert!(
            (got - slope * 100.0).abs() < 1e-9,
            "{got} vs {}",
            slope * 100.0
        );
        let delta = e.conversion_delta.unwrap();
        assert!((delta - (-slope * 50.0)).abs() < 1e-12);
        assert!(delta > 0.0, "faster answers convert more here");
        let expected = (-slope * 50.0 * 200.0 * 2_000.0).round() as i64;
        assert_eq!(e.revenue_effect_minor, Some(expected));
        assert!(e.model.contains("least-squares") && e.model.contains("50 ms"));
        assert!(e.model.contains("200 checkouts"), "{}", e.model);
        // Flat conversion: no effect.
        let flat: Vec<Event> = (0..40)
            .map(|i| started(T0, "LHR", if i % 2 == 0 { 40 } else { 900 }, true))
            .collect();
        let e = latency_effect(&Aggregate::from_events(&flat));
        assert_eq!(e.conversion_delta, Some(0.0));
    }

    #[test]
    fn the_latency_effect_refuses_thin_data() {
        let few: Vec<Event> = (0..5).map(|_| started(T0, "LHR", 40, true)).collect();
        let e = latency_effect(&Aggregate::from_events(&few));
        assert_eq!(e.revenue_effect_minor, None);
        assert!(e.insufficient.unwrap().contains("at least 20"));
        let one_bucket: Vec<Event> = (0..30).map(|_| started(T0, "LHR", 40, true)).collect();
        let e = latency_effect(&Aggregate::from_events(&one_bucket));
        assert!(e.insufficient.unwrap().contains("one latency bucket"));
    }

    #[test]
    fn log_lines_are_one_json_object_without_card_numbers() {
        let line = log_line(
            "info",
            "request",
            Some("req_abc"),
            Some("LHR"),
            Some("evt_1"),
            serde_json::json!({"path": "/x/4242424242424242/y", "status": 201, "level": "debug", "n": "12345678901"}),
        );
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "info", "extra cannot override the level");
        assert_eq!(v["msg"], "request");
        assert_eq!(v["request_id"], "req_abc");
        assert_eq!(
            (v["colo"].as_str(), v["event_id"].as_str()),
            (Some("LHR"), Some("evt_1"))
        );
        assert_eq!(v["path"], "/x/[digits]/y");
        assert_eq!(v["n"], "12345678901", "short numbers stay");
        // Card numbers as people type them, capabilities, and values nested anywhere.
        let typed = log_line(
            "info",
            "m",
            None,
            None,
            None,
            serde_json::json!({
                "spaced": "card 4242 4242 4242 4242 end",
                "dashed": "5555-5555-5555-4444",
                "amex": "3782 822463 10005",
                "date": "2026-12-02 10:00",
                "nested": {"list": ["x 4000 0000 0000 0002"], "ticket": "q_0123456789abcdef0123456789abcdef"},
                "receipt": "/v1/receipts/rcpt_evt_1-000001.00112233445566778899aabbccddeeffk1",
                "order": "ord_0123456789abcdef",
            }),
        );
        let w: serde_json::Value = serde_json::from_str(&typed).unwrap();
        assert_eq!(w["spaced"], "card [digits] end");
        assert_eq!(w["dashed"], "[digits]");
        assert_eq!(w["amex"], "[digits]");
        assert_eq!(w["date"], "2026-12-02 10:00", "dates stay");
        assert_eq!(w["nested"]["list"][0], "x [digits]");
        assert_eq!(w["nested"]["ticket"], "q_[id]");
        assert_eq!(w["receipt"], "/v1/receipts/rcpt_evt_1-000001.[id]k1");
        assert_eq!(w["order"], "ord_0123456789abcdef", "order ids stay");
        assert_eq!(v["status"], 201);
        let bare = log_line("warn", "m", None, None, None, serde_json::json!({}));
        assert_eq!(bare, r#"{"level":"warn","msg":"m"}"#);
        let long = log_line(
            "info",
            "m",
            None,
            None,
            None,
            serde_json::json!({"s": "a".repeat(500)}),
        );
        assert!(long.len() < 260);
    }

    #[test]
    fn events_round_trip_compactly() {
        let e = Event::new(Kind::Approved, T0)
            .colo("LHR")
            .lane("fast")
            .latency(42)
            .revision(7)
            .amount(1_500);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"approved","at_ms":1790000000000,"latency_ms":42,"colo":"LHR","lane":"fast","policy_revision":"7","amount_minor":1500}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        assert_eq!(
            Event::new(Kind::Approved, 0).latency(-5).latency_ms,
            Some(0)
        );
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
