//! Adaptive orchestration of acquirer requests across lanes: concurrency limits, latency
//! percentiles, timeouts, circuit breakers and the routing plan for one checkout.
//!
//! # Model
//!
//! A **lane** is one configured way to reach an acquirer (a Stripe account at a base URL,
//! with its own secret and its own price). The lanes come from configuration
//! ([`parse_lanes`], a JSON list the Worker gets as a var); there must be at least two.
//!
//! A [`Router`] holds, per lane, an adaptive concurrency limit, a sliding window of
//! latencies and a circuit breaker. It lives in the Worker isolate (one per PoP, kept in a
//! `thread_local!` `RefCell`); nothing here is persisted. It is pure: it reads no clock, and
//! every call takes `now_ms` (Unix milliseconds), so tests drive it with a fake clock.
//!
//! # Call order
//!
//! The router is driven by the checkout machine (`crate::checkout`), never by the shell
//! directly: the machine asks for a [`Router::plan`], takes a [`Permit`] per attempt with
//! [`Router::acquire`], and reports each attempt with [`Router::on_complete`]. Whether the
//! next lane may be tried after an attempt is not the router's call: only the one outcome
//! rule (`crate::checkout::outcome::classify`) decides, and it allows another lane only
//! when the acquirer provably did not act on the request (nothing sent, 429, a temporary
//! decline, or a lane misconfigured on our side: see `classify`).
//! An unknown outcome (a timeout, a lost connection, a 5xx) is completed on its own lane
//! with its own idempotency key. The router's [`Outcome`] only feeds limits, latency and
//! breakers.
//!
//! # Adaptive limit: Vegas, not Gradient2
//!
//! Each lane's limit follows the **Vegas** algorithm of Netflix's concurrency-limits. It
//! keeps the lowest round-trip time seen (`rtt_noload`) and, for each sample, estimates the
//! queue built up at the acquirer as `limit · (1 − rtt_noload / rtt)`: a queue at or below
//! `log10(limit)` grows the limit fast (by `6·log10(limit)`), a queue below `3·log10(limit)`
//! grows it by `log10(limit)`, a queue above `6·log10(limit)` shrinks it by `log10(limit)`,
//! and a retryable failure (timeout, 5xx, refused, 429) shrinks it too. The lowest RTT is
//! forgotten every `min_rtt_reset_ms` (60 s, as Envoy re-measures it) so a lane whose
//! baseline moved is measured afresh.
//!
//! Why Vegas: a pop-up market sends a few checkouts per second per PoP at most. Gradient2
//! compares a long and a short exponential average of RTT and needs a steady sample rate
//! for those averages to mean anything; Vegas decides from each single sample against a
//! baseline, so it reacts within a handful of requests. It is also plain integer
//! arithmetic (no floats in the Worker's hot path) and easy to reason about in tests.
//!
//! # Tuning for a drop (the defaults, and why)
//!
//! A micro-drop is 100+ phones pressing Pay in the same second, on one or two isolates.
//! Each lane starts at `initial_limit` 10 (not the floor `min_limit` 1: a cold isolate
//! must not serialize its first burst) and Vegas grows a limit by `6·log10(limit)` per
//! sample while the acquirer shows no queue, so a healthy lane reaches ~30 within a few
//! dozen answers and `max_limit` 200 within a few hundred. A checkout that finds every
//! lane full waits for a permit (`permit_wait_ms` 5 s, `max_waiters` 1024 per isolate: a drop of 500 on one isolate)
//! rather than being refused or stored: with a 50 ms acquirer two lanes of 10 serve 120
//! buyers within about 300 ms, far inside the wait. Only past the wait is it shed with 429
//! (nothing charged). `scripts/bench` releases 120 and 500 buyers at once on one event and
//! checks that all (of 500: at least 99 %) are approved online.
//!
//! # Lane choice ([`Router::plan`])
//!
//! 1. Pass-through mode (`Tuning::pass_through`, for benchmarks): the first lane only, a
//!    fixed timeout, no limits and no breakers.
//! 2. `requests_in_flight ≥ max_requests_in_flight` → [`Mode::Reject`] (shed load:
//!    429 with `Retry-After`, never offline storage).
//! 3. Healthy lanes are those whose breaker admits a request. None (every breaker open:
//!    the acquirer is unreachable) → [`Mode::QueueOffline`]. A lane at its concurrency
//!    limit stays a candidate: a full limit means the acquirer is busy answering, and
//!    buyers (even a hostile caller's own slow checkouts) can fill it, so it must never
//!    move a checkout to offline storage. A checkout that finds every planned lane at its
//!    limit waits for a permit instead ([`Router::join_wait`]), in a bounded per-isolate
//!    queue served in arrival order, for at most `permit_wait_ms`; past that it is shed
//!    with 429 `overloaded` (nothing was charged; the hold is released).
//!
//!    No public signal decides offline acceptance: the waiting room's depth (anyone with
//!    an event id can join it) is not a routing input at all.
//! 4. Every healthy lane *slow* (p95 and newest sample at or above `slow_lane_p95_ms`,
//!    1 s) and the checkout may be queued (`!Signals::require_online`) → online on the
//!    fastest lane with a short answer time (`slow_answer_ms`, 50 ms) and a long
//!    background (`background_timeout_ms`, 15 s): the buyer hears `confirming` after
//!    50 ms while the same request runs on and settles the payment when the acquirer
//!    answers; its permit is given back when the buyer is answered ([`Router::detach`],
//!    [`Router::on_late`]), so a slow acquirer does not fill the limits. In this mode a
//!    lane is slow on its p95 alone (one quick answer among slow ones is no recovery: it
//!    came back before the 50 ms anyway), and a buyer answered after waiting the threshold
//!    counts as a slow sample at once. Why: storing
//!    the payment (the rule before) answered as fast but authorized nothing online, and
//!    a stored payment that declines later is goods gone unpaid. With `slow_answer_ms`
//!    0 the old rule applies: [`Mode::QueueOffline`] (`all_lanes_slow`), except that a lane with nothing in flight
//!    and no request started for `slow_probe_interval_ms` (2 s) gets this checkout alone
//!    as a probe (`slow_probe`, no failover; [`Router::acquire`] refuses a second one).
//!    Why: with both lanes at p50 2 s the old plan ("fastest") sent every checkout online
//!    and each buyer waited seconds; a stored payment answers in tens of milliseconds. One
//!    fast probe answer brings the lane back at once (its newest sample is fast). A lane
//!    also counts as slow while a request has waited on it for the threshold with no fast
//!    answer since (the first buyers after a slowdown do not all wait for the evidence),
//!    and a probe's timeout is at most the threshold (past it, the payment is completed
//!    later on that lane like any unknown outcome).
//! 5. If every healthy lane's p95 is below `latency_target_p95_ms` (a lane without recent
//!    samples counts as meeting it, so it gets measured again), order by cost for this
//!    amount (cheapest first); otherwise order by p95 (fastest first, an unmeasured lane
//!    ranks as if at the target). Ties go to cost, then to configuration order.
//! 6. Each attempt's timeout is `clamp(p99 · 150 %, 1000 ms, 4000 ms)` (defaults; 2500 ms
//!    without samples), and the attempts together fit in the checkout budget (8 s). The
//!    timeout is when the buyer is answered; the request itself may run on up to
//!    `background_timeout_ms` in all (its payment stored meanwhile, see 4).

use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// One acquirer lane, as configured. Costs are integers: a fixed fee in minor units plus
/// a percentage in basis points (1 bp = 0.01 %).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    /// Short lane name, `[a-z0-9_-]{1,32}`; appears in headers and metrics.
    pub name: String,
    /// The connector that speaks to this lane; only `"stripe"` today.
    pub connector: String,
    /// Base URL of the acquirer API, `https://…` (or `http://…` for a local simulator).
    pub base_url: String,
    /// Name of the Worker secret holding this lane's API key (`[A-Z0-9_]+`), never the key.
    pub secret_name: String,
    /// Fixed cost per transaction, in minor units of the checkout currency.
    pub cost_per_tx_minor: i64,
    /// Variable cost in basis points of the amount.
    pub cost_bps: u32,
    /// Where the lane's acquirer sits, e.g. `"eu"`; informational.
    pub region: String,
}

impl LaneConfig {
    /// Cost of a transaction of `amount_minor` on this lane, in minor units (rounded up).
    pub fn cost_minor(&self, amount_minor: i64) -> i64 {
        let variable =
            (i128::from(amount_minor.max(0)) * i128::from(self.cost_bps) + 9_999) / 10_000;
        let total = i128::from(self.cost_per_tx_minor) + variable;
        i64::try_from(total).unwrap_or(i64::MAX)
    }

    fn validate(&self) -> Result<(), RoutingError> {
        let bad = |why: &str| {
            Err(RoutingError::InvalidLanes(format!(
                "lane {:?}: {why}",
                self.name
            )))
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(RoutingError::InvalidLanes(
                "a lane name must be 1 to 32 characters of a-z, 0-9, _ or -".into(),
            ));
        }
        if self.connector != "stripe" {
            return bad("connector must be \"stripe\"");
        }
        if !(self.base_url.starts_with("https://") || self.base_url.starts_with("http://"))
            || self.base_url.len() > 200
        {
            return bad("base_url must start with https:// (or http:// for a local simulator)");
        }
        let secret_ok = !self.secret_name.is_empty()
            && self.secret_name.len() <= 64
            && self
                .secret_name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !secret_ok {
            return bad("secret_name must be the name of a Worker secret (A-Z, 0-9, _)");
        }
        if self.cost_per_tx_minor < 0 {
            return bad("cost_per_tx_minor must not be negative");
        }
        if self.cost_bps > 10_000 {
            return bad("cost_bps must be at most 10000 (100 %)");
        }
        if self.region.len() > 32 {
            return bad("region must be at most 32 characters");
        }
        Ok(())
    }
}

/// Parses and validates the lane list, a JSON array of [`LaneConfig`]s (at least two,
/// unique names).
pub fn parse_lanes(json: &str) -> Result<Vec<LaneConfig>, RoutingError> {
    let lanes: Vec<LaneConfig> = serde_json::from_str(json).map_err(|e| {
        RoutingError::InvalidLanes(format!(
            "not a JSON list of lanes (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    validate_lanes(&lanes)?;
    Ok(lanes)
}

fn validate_lanes(lanes: &[LaneConfig]) -> Result<(), RoutingError> {
    if lanes.len() < 2 {
        return Err(RoutingError::TooFewLanes);
    }
    if lanes.len() > 16 {
        return Err(RoutingError::InvalidLanes("at most 16 lanes".into()));
    }
    for (i, lane) in lanes.iter().enumerate() {
        lane.validate()?;
        if lanes.iter().take(i).any(|other| other.name == lane.name) {
            return Err(RoutingError::InvalidLanes(format!(
                "lane name {:?} appears twice",
                lane.name
            )));
        }
    }
    Ok(())
}

/// Tuning knobs; every field has a default, so `{}` is a valid tuning JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// Disables adaptivity: first lane only, fixed timeout, no limits, no breakers.
    pub pass_through: bool,
    /// The per-attempt timeout in pass-through mode.
    pub pass_through_timeout_ms: u32,
    /// A lane "meets the latency target" when its p95 is below this.
    pub latency_target_p95_ms: u32,
    /// Lower bound of a derived timeout. A timeout after the request was sent does not
    /// fail over (the outcome is unknown): it only turns an online answer into a payment
    /// completed later, at the merchant's risk. So the default floor equals the slow-lane
    /// threshold (`slow_lane_p95_ms`), not a multiple of a fast lane's p99: that is tens of
    /// milliseconds, and a busy isolate (a drop of 120 buyers on two cores) stalls a
    /// healthy answer for longer than that.
    pub min_timeout_ms: u32,
    /// Upper bound of a derived timeout.
    pub max_timeout_ms: u32,
    /// Timeout of a lane without recent samples.
    pub default_timeout_ms: u32,
    /// Timeout = p99 × this / 100, then clamped.
    pub timeout_p99_multiplier_pct: u32,
    /// Total time all attempts of one checkout may take.
    pub checkout_budget_ms: u32,
    /// Latency percentiles cover samples of the last `latency_window_ms` ...
    pub latency_window_ms: u32,
    /// ... and at most this many samples.
    pub latency_max_samples: u32,
    /// Vegas: the limit a lane starts with.
    pub initial_limit: u32,
    /// Vegas: the limit never goes below this.
    pub min_limit: u32,
    /// Vegas: the limit never goes above this.
    pub max_limit: u32,
    /// Vegas: forget the lowest RTT this often so it is re-measured.
    pub min_rtt_reset_ms: u32,
    /// Breaker: error rate is measured over this window ...
    pub breaker_window_ms: u32,
    /// ... once it holds at least this many results.
    pub breaker_min_requests: u32,
    /// Breaker: opens when failures reach this percentage of the window.
    pub breaker_error_rate_pct: u32,
    /// Breaker: opens after this many failures in a row.
    pub breaker_consecutive_failures: u32,
    /// Breaker: stays open this long, then lets one probe through.
    pub breaker_cool_down_ms: u32,
    /// Most checkouts of one isolate waiting for a permit at once; past it a checkout
    /// that finds every lane at its limit is shed at once (429).
    pub max_waiters: u32,
    /// How long a checkout waits for a permit when every lane is at its limit.
    pub permit_wait_ms: u32,
    /// Requests in flight at or above which checkouts are rejected.
    pub max_requests_in_flight: u32,
    /// A permit never completed is forgotten after this long (a lost request must not hold
    /// a slot or a breaker probe forever).
    pub stale_permit_ms: u32,
    /// A lane is *slow* when its p95 and its latest sample are both at or above this. When
    /// every healthy lane is slow, a checkout that may be queued goes offline at once
    /// instead of waiting seconds for the acquirer. 0 turns the rule off.
    pub slow_lane_p95_ms: u32,
    /// While every lane is slow, one checkout per lane per this interval still goes online
    /// (one at a time), so the router learns when a lane is fast again. Only used when
    /// `slow_answer_ms` is 0.
    pub slow_probe_interval_ms: u32,
    /// While every lane is slow (and the checkout may be stored), each checkout is still
    /// sent online at once, and the buyer is answered after this long if the acquirer has
    /// not (`confirming`, the payment stored to complete that very attempt), while the
    /// attempt runs on in the background. 0: store such checkouts at once instead, with a
    /// probe per lane (`slow_probe_interval_ms`).
    pub slow_answer_ms: u32,
    /// How long an attempt may run on after its buyer was answered (see `slow_answer_ms`;
    /// also after any attempt's timeout). Its answer then settles the stored payment at
    /// once instead of waiting for the alarm to send it again. 0: cut every attempt at its
    /// timeout. At most 25 s, below the object's forward timeout (30 s), so the object
    /// never sends the same payment while this attempt may still be out.
    pub background_timeout_ms: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            pass_through: false,
            pass_through_timeout_ms: 2_500,
            latency_target_p95_ms: 800,
            min_timeout_ms: 1_000,
            max_timeout_ms: 4_000,
            default_timeout_ms: 2_500,
            timeout_p99_multiplier_pct: 150,
            checkout_budget_ms: 8_000,
            latency_window_ms: 30_000,
            latency_max_samples: 256,
            initial_limit: 10,
            min_limit: 1,
            max_limit: 200,
            min_rtt_reset_ms: 60_000,
            breaker_window_ms: 30_000,
            breaker_min_requests: 10,
            breaker_error_rate_pct: 50,
            breaker_consecutive_failures: 5,
            breaker_cool_down_ms: 10_000,
            max_waiters: 1_024,
            permit_wait_ms: 5_000,
            max_requests_in_flight: 500,
            stale_permit_ms: 30_000,
            slow_lane_p95_ms: 1_000,
            slow_probe_interval_ms: 2_000,
            slow_answer_ms: 50,
            background_timeout_ms: 15_000,
        }
    }
}

impl Tuning {
    /// Parses a tuning JSON object (missing fields take their defaults) and validates it.
    pub fn parse(json: &str) -> Result<Tuning, RoutingError> {
        let t: Tuning = serde_json::from_str(json).map_err(|e| {
            RoutingError::InvalidTuning(format!(
                "not a valid tuning object (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        t.validate()?;
        Ok(t)
    }

    fn validate(&self) -> Result<(), RoutingError> {
        let bad = |why: &str| Err(RoutingError::InvalidTuning(why.to_string()));
        if self.min_timeout_ms == 0 || self.min_timeout_ms > self.max_timeout_ms {
            return bad("need 0 < min_timeout_ms <= max_timeout_ms");
        }
        if self.default_timeout_ms < self.min_timeout_ms
            || self.default_timeout_ms > self.max_timeout_ms
        {
            return bad("default_timeout_ms must lie between min_timeout_ms and max_timeout_ms");
        }
        if self.pass_through_timeout_ms == 0 {
            return bad("pass_through_timeout_ms must be positive");
        }
        if self.timeout_p99_multiplier_pct < 100 || self.timeout_p99_multiplier_pct > 1_000 {
            return bad("timeout_p99_multiplier_pct must lie between 100 and 1000");
        }
        if self.checkout_budget_ms < self.min_timeout_ms {
            return bad("checkout_budget_ms must be at least min_timeout_ms");
        }
        if self.latency_window_ms == 0 || self.latency_max_samples == 0 {
            return bad("latency_window_ms and latency_max_samples must be positive");
        }
        if self.latency_max_samples > 10_000 {
            return bad("latency_max_samples must be at most 10000");
        }
        if self.min_limit == 0
            || self.min_limit > self.max_limit
            || self.initial_limit < self.min_limit
            || self.initial_limit > self.max_limit
        {
            return bad("need 1 <= min_limit <= initial_limit <= max_limit");
        }
        if self.min_rtt_reset_ms == 0 || self.breaker_window_ms == 0 {
            return bad("min_rtt_reset_ms and breaker_window_ms must be positive");
        }
        if self.breaker_min_requests == 0 || self.breaker_consecutive_failures == 0 {
            return bad("breaker_min_requests and breaker_consecutive_failures must be positive");
        }
        if self.breaker_error_rate_pct == 0 || self.breaker_error_rate_pct > 100 {
            return bad("breaker_error_rate_pct must lie between 1 and 100");
        }
        if self.breaker_cool_down_ms == 0 || self.stale_permit_ms == 0 {
            return bad("breaker_cool_down_ms and stale_permit_ms must be positive");
        }
        if self.slow_probe_interval_ms == 0 {
            return bad("slow_probe_interval_ms must be positive");
        }
        if self.background_timeout_ms > 25_000 {
            return bad("background_timeout_ms must be at most 25000");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// What can go wrong in routing configuration or lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingError {
    /// The lane list is not valid; the text says which lane and why.
    InvalidLanes(String),
    /// Fewer than two lanes are configured.
    TooFewLanes,
    /// The tuning object is not valid.
    InvalidTuning(String),
    /// No lane has that name.
    UnknownLane,
}

impl fmt::Display for RoutingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoutingError::InvalidLanes(why) => write!(f, "invalid lane configuration: {why}"),
            RoutingError::TooFewLanes => f.write_str("at least two lanes are needed"),
            RoutingError::InvalidTuning(why) => write!(f, "invalid routing tuning: {why}"),
            RoutingError::UnknownLane => f.write_str("no lane has that name"),
        }
    }
}

impl std::error::Error for RoutingError {}

impl RoutingError {
    /// The HTTP error for this failure. Messages name lanes and fields, never secrets.
    pub fn to_api(&self) -> ApiError {
        match self {
            RoutingError::InvalidLanes(why) => ApiError::bad_request(
                "routing_lanes_invalid",
                format!("The lane configuration is not valid: {why}."),
            ),
            RoutingError::TooFewLanes => ApiError::bad_request(
                "routing_too_few_lanes",
                "At least two acquirer lanes must be configured.",
            ),
            RoutingError::InvalidTuning(why) => ApiError::bad_request(
                "routing_tuning_invalid",
                format!("The routing tuning is not valid: {why}."),
            ),
            RoutingError::UnknownLane => ApiError::new(
                404,
                "routing_lane_unknown",
                "No lane with that name is configured.",
            ),
        }
    }
}

impl From<RoutingError> for ApiError {
    fn from(e: RoutingError) -> ApiError {
        e.to_api()
    }
}

// ---------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------

/// Why an attempt may be retried on another lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryReason {
    Timeout,
    ServerError,
    ConnectionRefused,
    RateLimited,
}

/// How an attempt on a lane ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The acquirer approved.
    Ok,
    /// The acquirer answered with a decline: the lane is healthy, the card said no. Never
    /// retried on another lane.
    Declined,
    /// The lane failed in a way another lane may not (timeout, 5xx, refused, 429).
    Retryable(RetryReason),
}

impl Outcome {
    /// Failures count against the breaker and shrink the limit. A decline is not one.
    fn is_failure(&self) -> bool {
        matches!(self, Outcome::Retryable(_))
    }

    /// Whether the round-trip time says something about the acquirer's latency: answers
    /// and timeouts do; a quick refusal or 5xx would flatter the percentiles.
    fn measures_latency(&self) -> bool {
        matches!(
            self,
            Outcome::Ok | Outcome::Declined | Outcome::Retryable(RetryReason::Timeout)
        )
    }
}

// ---------------------------------------------------------------------------------------
// Latency window
// ---------------------------------------------------------------------------------------

/// Latency percentiles in whole milliseconds (nearest-rank method).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub p50_ms: u32,
    pub p90_ms: u32,
    pub p95_ms: u32,
    pub p99_ms: u32,
    /// How many samples these come from.
    pub samples: u32,
}

/// Round-trip times of the last `window_ms` milliseconds, at most `max_samples` of them.
#[derive(Debug, Clone)]
pub struct LatencyWindow {
    samples: VecDeque<(i64, u32)>,
    window_ms: i64,
    max_samples: usize,
}

impl LatencyWindow {
    pub fn new(window_ms: u32, max_samples: u32) -> LatencyWindow {
        LatencyWindow {
            samples: VecDeque::new(),
            window_ms: i64::from(window_ms.max(1)),
            max_samples: (max_samples.max(1)) as usize,
        }
    }

    /// Adds one sample taken at `now_ms`, dropping those that left the window.
    pub fn record(&mut self, now_ms: i64, rtt_ms: u32) {
        let oldest = now_ms.saturating_sub(self.window_ms);
        while self.samples.front().is_some_and(|(t, _)| *t < oldest) {
            self.samples.pop_front();
        }
        while self.samples.len() >= self.max_samples {
            self.samples.pop_front();
        }
        self.samples.push_back((now_ms, rtt_ms));
    }

    /// The newest sample still inside the window at `now_ms`, with when it was taken.
    pub fn latest_sample(&self, now_ms: i64) -> Option<(i64, u32)> {
        let oldest = now_ms.saturating_sub(self.window_ms);
        self.samples.back().filter(|(t, _)| *t >= oldest).copied()
    }

    /// The newest sample still inside the window at `now_ms`.
    pub fn latest(&self, now_ms: i64) -> Option<u32> {
        let oldest = now_ms.saturating_sub(self.window_ms);
        self.samples
            .back()
            .filter(|(t, _)| *t >= oldest)
            .map(|(_, rtt)| *rtt)
    }

    /// Percentiles of the samples still inside the window at `now_ms`; `None` without any.
    pub fn percentiles(&self, now_ms: i64) -> Option<Percentiles> {
        let oldest = now_ms.saturating_sub(self.window_ms);
        let mut v: Vec<u32> = self
            .samples
            .iter()
            .filter(|(t, _)| *t >= oldest)
            .map(|(_, rtt)| *rtt)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = |p: usize| -> u32 {
            // Nearest rank: the smallest value with at least p % of samples at or below it.
            let idx = (p * v.len()).div_ceil(100).saturating_sub(1);
            v.get(idx.min(v.len() - 1)).copied().unwrap_or(0)
        };
        Some(Percentiles {
            p50_ms: rank(50),
            p90_ms: rank(90),
            p95_ms: rank(95),
            p99_ms: rank(99),
            samples: u32::try_from(v.len()).unwrap_or(u32::MAX),
        })
    }
}

/// The per-attempt timeout for a lane: `clamp(p99 × multiplier, min, max)`, or the default
/// without samples.
pub fn timeout_from_percentiles(p: Option<&Percentiles>, tuning: &Tuning) -> u32 {
    match p {
        None => tuning.default_timeout_ms,
        Some(p) => {
            let scaled = u64::from(p.p99_ms) * u64::from(tuning.timeout_p99_multiplier_pct) / 100;
            let scaled = u32::try_from(scaled).unwrap_or(u32::MAX);
            scaled.clamp(tuning.min_timeout_ms, tuning.max_timeout_ms)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Vegas limit
// ---------------------------------------------------------------------------------------

/// The Vegas adaptive concurrency limit of one lane (see the module docs).
#[derive(Debug, Clone)]
pub struct VegasLimit {
    limit: u32,
    min_limit: u32,
    max_limit: u32,
    rtt_noload_ms: Option<u32>,
    reset_interval_ms: i64,
    next_reset_ms: Option<i64>,
}

/// `max(1, floor(log10(x)))`, the step function Netflix's Vegas uses.
fn log10_step(x: u32) -> u32 {
    let mut n = 0;
    let mut v = x;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n.max(1)
}

impl VegasLimit {
    pub fn new(tuning: &Tuning) -> VegasLimit {
        VegasLimit {
            limit: tuning.initial_limit,
            min_limit: tuning.min_limit,
            max_limit: tuning.max_limit,
            rtt_noload_ms: None,
            reset_interval_ms: i64::from(tuning.min_rtt_reset_ms),
            next_reset_ms: None,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The lowest RTT seen since the last reset.
    pub fn rtt_noload_ms(&self) -> Option<u32> {
        self.rtt_noload_ms
    }

    /// Feeds one sample: its RTT, the number in flight when it started (itself included),
    /// and whether it failed (a "drop").
    pub fn on_sample(&mut self, rtt_ms: u32, inflight: u32, dropped: bool, now_ms: i64) {
        match self.next_reset_ms {
            None => self.next_reset_ms = Some(now_ms.saturating_add(self.reset_interval_ms)),
            Some(at) if now_ms >= at => {
                self.rtt_noload_ms = None;
                self.next_reset_ms = Some(now_ms.saturating_add(self.reset_interval_ms));
            }
            Some(_) => {}
        }
        let step = log10_step(self.limit);
        let new_limit = if dropped {
            self.limit.saturating_sub(step)
        } else {
            let rtt = rtt_ms.max(1);
            let noload = match self.rtt_noload_ms {
                Some(n) if n <= rtt => n,
                _ => {
                    self.rtt_noload_ms = Some(rtt);
                    rtt
                }
            };
            // Application-limited: too little traffic to say anything about the limit.
            if u64::from(inflight) * 2 < u64::from(self.limit) {
                return;
            }
            let limit = u64::from(self.limit);
            let queue = (limit * u64::from(rtt - noload)).div_ceil(u64::from(rtt));
            let (alpha, beta) = (u64::from(3 * step), u64::from(6 * step));
            if queue <= u64::from(step) {
                self.limit.saturating_add(6 * step)
            } else if queue < alpha {
                self.limit.saturating_add(step)
            } else if queue > beta {
                self.limit.saturating_sub(step)
            } else {
                return;
            }
        };
        self.limit = new_limit.clamp(self.min_limit, self.max_limit);
    }
}

// ---------------------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------------------

/// A lane's breaker state, as reported in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerInner {
    Closed,
    Open {
        until_ms: i64,
    },
    /// One probe may run; `probe` is its permit id and start time.
    HalfOpen {
        probe: Option<(u64, i64)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Normal,
    Probe,
    Refused,
}

/// Per-lane circuit breaker: closed → open on an error rate over a window (with a minimum
/// number of requests) or on consecutive failures; open → half-open after a cool-down;
/// half-open lets one probe through; its success closes, its failure re-opens.
#[derive(Debug, Clone)]
struct Breaker {
    inner: BreakerInner,
    results: VecDeque<(i64, bool)>,
    consecutive_failures: u32,
    window_ms: i64,
    min_requests: usize,
    error_rate_pct: usize,
    max_consecutive: u32,
    cool_down_ms: i64,
    stale_probe_ms: i64,
}

impl Breaker {
    fn new(t: &Tuning) -> Breaker {
        Breaker {
            inner: BreakerInner::Closed,
            results: VecDeque::new(),
            consecutive_failures: 0,
            window_ms: i64::from(t.breaker_window_ms),
            min_requests: t.breaker_min_requests as usize,
            error_rate_pct: t.breaker_error_rate_pct as usize,
            max_consecutive: t.breaker_consecutive_failures,
            cool_down_ms: i64::from(t.breaker_cool_down_ms),
            stale_probe_ms: i64::from(t.stale_permit_ms),
        }
    }

    /// The state at `now_ms`, an expired cool-down already counted as half-open.
    fn inner_at(&self, now_ms: i64) -> BreakerInner {
        match self.inner {
            BreakerInner::Open { until_ms } if now_ms >= until_ms => {
                BreakerInner::HalfOpen { probe: None }
            }
            other => other,
        }
    }

    fn state_at(&self, now_ms: i64) -> BreakerState {
        match self.inner_at(now_ms) {
            BreakerInner::Closed => BreakerState::Closed,
            BreakerInner::Open { .. } => BreakerState::Open,
            BreakerInner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn admission(&self, now_ms: i64) -> Admission {
        match self.inner_at(now_ms) {
            BreakerInner::Closed => Admission::Normal,
            BreakerInner::Open { .. } => Admission::Refused,
            BreakerInner::HalfOpen { probe: None } => Admission::Probe,
            BreakerInner::HalfOpen {
                probe: Some((_, started)),
            } => {
                if now_ms.saturating_sub(started) >= self.stale_probe_ms {
                    Admission::Probe
                } else {
                    Admission::Refused
                }
            }
        }
    }

    fn start_probe(&mut self, permit_id: u64, now_ms: i64) {
        self.inner = BreakerInner::HalfOpen {
            probe: Some((permit_id, now_ms)),
        };
    }

    fn open(&mut self, now_ms: i64) {
        self.inner = BreakerInner::Open {
            until_ms: now_ms.saturating_add(self.cool_down_ms),
        };
        self.results.clear();
        self.consecutive_failures = 0;
    }

    fn close(&mut self) {
        self.inner = BreakerInner::Closed;
        self.results.clear();
        self.consecutive_failures = 0;
    }

    fn prune(&mut self, now_ms: i64) {
        let oldest = now_ms.saturating_sub(self.window_ms);
        while self.results.front().is_some_and(|(t, _)| *t < oldest) {
            self.results.pop_front();
        }
        while self.results.len() > 1_024 {
            self.results.pop_front();
        }
    }

    /// Error rate over the window in basis points, and the number of results.
    fn error_rate_bps(&self, now_ms: i64) -> (u32, u32) {
        let oldest = now_ms.saturating_sub(self.window_ms);
        let (mut total, mut failed) = (0u32, 0u32);
        for (_, f) in self.results.iter().filter(|(t, _)| *t >= oldest) {
            total += 1;
            failed += u32::from(*f);
        }
        ((failed * 10_000).checked_div(total).unwrap_or(0), total)
    }

    fn on_result(&mut self, permit_id: u64, failed: bool, now_ms: i64) {
        self.inner = self.inner_at(now_ms);
        match self.inner {
            BreakerInner::HalfOpen {
                probe: Some((id, _)),
            } if id == permit_id => {
                if failed {
                    self.open(now_ms);
                } else {
                    self.close();
                }
            }
            // A request admitted before the breaker opened: it says nothing new.
            BreakerInner::HalfOpen { .. } | BreakerInner::Open { .. } => {}
            BreakerInner::Closed => {
                self.prune(now_ms);
                self.results.push_back((now_ms, failed));
                if failed {
                    self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                } else {
                    self.consecutive_failures = 0;
                }
                let total = self.results.len();
                let failures = self.results.iter().filter(|(_, f)| *f).count();
                let rate_tripped =
                    total >= self.min_requests && failures * 100 >= self.error_rate_pct * total;
                if self.consecutive_failures >= self.max_consecutive || rate_tripped {
                    self.open(now_ms);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------------------

/// Index of a lane in the router's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct LaneId(usize);

impl LaneId {
    pub fn index(self) -> usize {
        self.0
    }
}

/// A slot on a lane, held while one acquirer request runs. Only [`Router::try_acquire`]
/// makes one; give it back with [`Router::on_complete`]. A permit never given back is
/// forgotten after `stale_permit_ms`.
#[derive(Debug)]
pub struct Permit {
    lane: LaneId,
    id: u64,
    started_ms: i64,
    inflight_at_start: u32,
    probe: bool,
}

/// A request whose permit was given back while it runs on ([`Router::detach`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detached {
    lane: LaneId,
    id: u64,
}

impl Permit {
    pub fn lane(&self) -> LaneId {
        self.lane
    }
    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }
    /// Whether this request is the half-open breaker's probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

#[derive(Debug, Clone)]
struct LaneState {
    config: LaneConfig,
    limit: VegasLimit,
    latency: LatencyWindow,
    breaker: Breaker,
    /// Permits handed out and not yet completed: (id, started_ms).
    outstanding: Vec<(u64, i64)>,
    /// When the last permit on this lane was handed out.
    last_started_ms: Option<i64>,
}

impl LaneState {
    fn in_flight_at(&self, now_ms: i64, stale_ms: i64) -> u32 {
        let n = self
            .outstanding
            .iter()
            .filter(|(_, started)| now_ms.saturating_sub(*started) < stale_ms)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Slow: p95 over the window and the newest sample both at or above `threshold_ms`.
    /// The newest sample lets one fast probe bring the lane back at once, and one slow
    /// answer send it back, without waiting for the window to turn over.
    ///
    /// Also slow before any slow answer has come back: a request has been waiting on the
    /// lane for `threshold_ms` and no answer under `threshold_ms` arrived meanwhile. When
    /// an acquirer slows down, the first buyers would otherwise all wait for its answers.
    ///
    /// With `p95_only` (checkouts of slow lanes are answered soon and run on: calling a lane
    /// slow costs a fast answer nothing, since it still comes back before the answer time
    /// or moments after, while calling it fast makes buyers wait) the newest sample does
    /// not bring the lane back: one quick answer among slow ones is no recovery.
    fn is_slow(&self, now_ms: i64, threshold_ms: u32, stale_ms: i64, p95_only: bool) -> bool {
        if threshold_ms == 0 {
            return false;
        }
        let answered_slow = self
            .latency
            .percentiles(now_ms)
            .is_some_and(|p| p.p95_ms >= threshold_ms)
            && (p95_only
                || self
                    .latency
                    .latest(now_ms)
                    .is_some_and(|l| l >= threshold_ms));
        answered_slow || self.waiting_slow(now_ms, threshold_ms, stale_ms)
    }

    /// The oldest live request has waited `threshold_ms`, with no fast answer since it left.
    fn waiting_slow(&self, now_ms: i64, threshold_ms: u32, stale_ms: i64) -> bool {
        let threshold = i64::from(threshold_ms);
        let Some(oldest) = self
            .outstanding
            .iter()
            .map(|(_, started)| *started)
            .filter(|started| now_ms.saturating_sub(*started) < stale_ms)
            .min()
        else {
            return false;
        };
        now_ms.saturating_sub(oldest) >= threshold
            && !self
                .latency
                .latest_sample(now_ms)
                .is_some_and(|(at, rtt)| at > oldest && rtt < threshold_ms)
    }

    /// Whether a slow-lane probe may start now: nothing in flight on the lane and no
    /// request started on it for `interval_ms`.
    fn slow_probe_due(&self, now_ms: i64, interval_ms: i64, stale_ms: i64) -> bool {
        self.in_flight_at(now_ms, stale_ms) == 0
            && self
                .last_started_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= interval_ms)
    }
}

/// What the caller knows about load right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Signals {
    /// Acquirer requests in flight in this isolate (or for this event).
    pub requests_in_flight: u32,
    /// The amount to charge, in minor units; lane costs are compared for it.
    pub amount_minor: i64,
    /// This checkout must not be queued offline (the buyer asked for `require_online`, or
    /// the event or policy allows no stored payment of this amount): never plan
    /// `QueueOffline` for it because lanes are slow.
    #[serde(default)]
    pub require_online: bool,
}

/// What to do with a checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Try the planned lanes in order.
    Online,
    /// Do not call an acquirer; queue the payment if the event's offline budget allows.
    QueueOffline,
    /// Overloaded: refuse now (429 with Retry-After).
    Reject,
}

/// One planned attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub lane: LaneId,
    pub lane_name: String,
    /// The buyer is answered by then: the attempt's own answer, or (past it) what its
    /// unknown outcome means.
    pub timeout_ms: u32,
    /// How long the request may still run after `timeout_ms` (0: it is cut then). See
    /// `Tuning::background_timeout_ms`.
    pub background_ms: u32,
    /// Every lane is slow and this checkout is the one probing this lane; take its permit
    /// with [`Router::acquire`], which refuses it if another checkout probed meanwhile.
    pub slow_probe: bool,
}

/// The plan for one checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoutingDecision {
    pub mode: Mode,
    /// Lanes to try in order (empty unless `Online`), each with its own timeout.
    pub lanes_in_order: Vec<Attempt>,
    /// Short ASCII explanation for the `X-Poptill-Routing` response header.
    pub reason: String,
    /// The whole checkout must finish by then (Unix ms).
    pub deadline_ms: i64,
    /// An attempt shorter than this is not worth starting.
    pub min_attempt_ms: u32,
}

impl RoutingDecision {
    /// The timeout for attempt `index` started at `now_ms`: its planned timeout, cut to
    /// what is left of the budget. `None` when there is no such attempt or too little time.
    pub fn attempt_timeout_ms(&self, index: usize, now_ms: i64) -> Option<u32> {
        let planned = self.lanes_in_order.get(index)?.timeout_ms;
        let left = self.deadline_ms.saturating_sub(now_ms);
        let left = u32::try_from(left.max(0)).unwrap_or(u32::MAX);
        let t = planned.min(left);
        (t >= self.min_attempt_ms).then_some(t)
    }
}

/// Metrics of one lane for `/v1/admin/routing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct LaneMetrics {
    pub name: String,
    pub region: String,
    pub limit: u32,
    pub in_flight: u32,
    pub p50_ms: Option<u32>,
    pub p95_ms: Option<u32>,
    pub p99_ms: Option<u32>,
    pub latency_samples: u32,
    pub min_rtt_ms: Option<u32>,
    pub timeout_ms: u32,
    /// Failures over the breaker window, in basis points (10000 = every request failed).
    pub error_rate_bps: u32,
    pub breaker: BreakerState,
}

/// The body of `GET /v1/admin/routing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct RoutingSnapshot {
    pub now_ms: i64,
    pub pass_through: bool,
    pub lanes: Vec<LaneMetrics>,
}

/// Per-isolate routing state over the configured lanes.
#[derive(Debug, Clone)]
pub struct Router {
    lanes: Vec<LaneState>,
    tuning: Tuning,
    next_permit_id: u64,
    /// Checkouts waiting for a permit, oldest first: (ticket, waits until).
    waiters: VecDeque<(u64, i64)>,
    next_ticket: u64,
}

/// A checkout's place in the queue for a permit ([`Router::join_wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTicket(u64);

/// Why [`Router::acquire`] gave no permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The lane is at its concurrency limit, or checkouts that came earlier are waiting
    /// for the free permits: waiting may help.
    AtLimit,
    /// The breaker refuses the lane, or another checkout took the slow-lane probe.
    Unavailable,
}

impl Router {
    /// Builds a router; the lanes and tuning are validated again here.
    pub fn new(lanes: Vec<LaneConfig>, tuning: Tuning) -> Result<Router, RoutingError> {
        validate_lanes(&lanes)?;
        tuning.validate()?;
        let lanes = lanes
            .into_iter()
            .map(|config| LaneState {
                config,
                limit: VegasLimit::new(&tuning),
                latency: LatencyWindow::new(tuning.latency_window_ms, tuning.latency_max_samples),
                breaker: Breaker::new(&tuning),
                outstanding: Vec::new(),
                last_started_ms: None,
            })
            .collect();
        Ok(Router {
            lanes,
            tuning,
            next_permit_id: 1,
            waiters: VecDeque::new(),
            next_ticket: 1,
        })
    }

    /// Parses the lanes var (JSON list) and the optional tuning var (JSON object).
    pub fn from_json(lanes_json: &str, tuning_json: Option<&str>) -> Result<Router, RoutingError> {
        let lanes = parse_lanes(lanes_json)?;
        let tuning = match tuning_json {
            Some(t) => Tuning::parse(t)?,
            None => Tuning::default(),
        };
        Router::new(lanes, tuning)
    }

    /// The configured lanes' names, in configuration order.
    pub fn lane_names(&self) -> Vec<String> {
        self.lanes.iter().map(|l| l.config.name.clone()).collect()
    }

    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// The lane with this name.
    pub fn lane_id(&self, name: &str) -> Result<LaneId, RoutingError> {
        self.lanes
            .iter()
            .position(|l| l.config.name == name)
            .map(LaneId)
            .ok_or(RoutingError::UnknownLane)
    }

    /// The configuration of a lane (base URL, secret name, connector).
    pub fn lane_config(&self, lane: LaneId) -> Option<&LaneConfig> {
        self.lanes.get(lane.0).map(|l| &l.config)
    }

    fn stale_ms(&self) -> i64 {
        i64::from(self.tuning.stale_permit_ms)
    }

    /// Takes a slot on `lane`, or `None` when its breaker refuses or it is at its limit.
    /// In pass-through mode every request gets a slot.
    pub fn try_acquire(&mut self, lane: LaneId, now_ms: i64) -> Option<Permit> {
        let stale = self.stale_ms();
        let pass_through = self.tuning.pass_through;
        let id = self.next_permit_id;
        let state = self.lanes.get_mut(lane.0)?;
        state
            .outstanding
            .retain(|(_, started)| now_ms.saturating_sub(*started) < stale);
        let in_flight = u32::try_from(state.outstanding.len()).unwrap_or(u32::MAX);
        let mut probe = false;
        if !pass_through {
            match state.breaker.admission(now_ms) {
                Admission::Refused => return None,
                Admission::Probe => probe = true,
                Admission::Normal => {}
            }
            if in_flight >= state.limit.limit() {
                return None;
            }
            if probe {
                state.breaker.start_probe(id, now_ms);
            }
        }
        state.outstanding.push((id, now_ms));
        state.last_started_ms = Some(now_ms);
        self.next_permit_id = id.wrapping_add(1);
        Some(Permit {
            lane,
            id,
            started_ms: now_ms,
            inflight_at_start: in_flight.saturating_add(1),
            probe,
        })
    }

    /// Takes a slot for a planned attempt: [`Router::try_acquire`], except that a slow-lane
    /// probe is refused when another checkout started on the lane since the plan was made
    /// (plans of concurrent checkouts may all have seen the probe as due), and that the
    /// free permits go to the checkouts waiting for one first, in arrival order: `ticket`
    /// is the caller's place in that queue, `None` if it is not waiting.
    pub fn acquire(
        &mut self,
        attempt: &Attempt,
        ticket: Option<WaitTicket>,
        now_ms: i64,
    ) -> Result<Permit, Busy> {
        self.may_acquire(attempt, ticket, now_ms)?;
        self.try_acquire(attempt.lane, now_ms).ok_or(Busy::AtLimit)
    }

    /// Whether [`Router::acquire`] would give a permit now (changes nothing).
    pub fn may_acquire(
        &self,
        attempt: &Attempt,
        ticket: Option<WaitTicket>,
        now_ms: i64,
    ) -> Result<(), Busy> {
        let stale = self.stale_ms();
        let lane = self.lanes.get(attempt.lane.0).ok_or(Busy::Unavailable)?;
        if attempt.slow_probe {
            let interval = i64::from(self.tuning.slow_probe_interval_ms);
            if !lane.slow_probe_due(now_ms, interval, stale) {
                return Err(Busy::Unavailable);
            }
        }
        if self.tuning.pass_through {
            return Ok(());
        }
        if lane.breaker.admission(now_ms) == Admission::Refused {
            return Err(Busy::Unavailable);
        }
        if lane.in_flight_at(now_ms, stale) >= lane.limit.limit() {
            return Err(Busy::AtLimit);
        }
        // Checkouts waiting ahead of this one take the free permits first.
        let ahead = self.waiting_ahead(ticket, now_ms);
        if ahead > 0 && ahead >= self.free_permits(now_ms) {
            return Err(Busy::AtLimit);
        }
        Ok(())
    }

    /// Free permits over every lane whose breaker admits a request.
    fn free_permits(&self, now_ms: i64) -> usize {
        let stale = self.stale_ms();
        self.lanes
            .iter()
            .filter(|l| l.breaker.admission(now_ms) != Admission::Refused)
            .map(|l| {
                l.limit
                    .limit()
                    .saturating_sub(l.in_flight_at(now_ms, stale)) as usize
            })
            .sum()
    }

    /// Live waiters ahead of `ticket` (all of them for a checkout that is not waiting).
    fn waiting_ahead(&self, ticket: Option<WaitTicket>, now_ms: i64) -> usize {
        self.waiters
            .iter()
            .take_while(|(t, _)| Some(WaitTicket(*t)) != ticket)
            .filter(|(_, until)| *until > now_ms)
            .count()
    }

    /// Joins the queue for a permit until `until_ms` (an entry is forgotten after it, so a
    /// checkout whose Worker died holds no place). `None` when `max_waiters` are waiting.
    pub fn join_wait(&mut self, now_ms: i64, until_ms: i64) -> Option<WaitTicket> {
        self.waiters.retain(|(_, until)| *until > now_ms);
        if self.waiters.len() >= self.tuning.max_waiters as usize {
            return None;
        }
        let t = self.next_ticket;
        self.next_ticket = t.wrapping_add(1);
        self.waiters.push_back((t, until_ms));
        Some(WaitTicket(t))
    }

    /// Leaves the queue for a permit (after taking one, or giving up).
    pub fn leave_wait(&mut self, ticket: WaitTicket) {
        self.waiters.retain(|(t, _)| *t != ticket.0);
    }

    /// Checkouts waiting for a permit now.
    pub fn waiting(&self, now_ms: i64) -> usize {
        self.waiting_ahead(None, now_ms)
    }

    /// Gives a permit back with the measured round-trip time and how the attempt ended.
    /// Feeds the latency window, the Vegas limit and the breaker (the last two not in
    /// pass-through mode).
    pub fn on_complete(&mut self, permit: Permit, rtt_ms: u32, outcome: Outcome, now_ms: i64) {
        let pass_through = self.tuning.pass_through;
        let Some(state) = self.lanes.get_mut(permit.lane.0) else {
            return;
        };
        state.outstanding.retain(|(id, _)| *id != permit.id);
        if outcome.measures_latency() {
            state.latency.record(now_ms, rtt_ms);
        }
        if pass_through {
            return;
        }
        state.limit.on_sample(
            rtt_ms,
            permit.inflight_at_start,
            outcome.is_failure(),
            now_ms,
        );
        state
            .breaker
            .on_result(permit.id, outcome.is_failure(), now_ms);
    }

    /// The buyer was answered while this permit's request runs on (`Attempt::background_ms`):
    /// its slot is given back now, so a slow acquirer does not hold the limit; the request
    /// stays bounded by `background_timeout_ms` and the isolate's `max_requests_in_flight`.
    /// A wait of `slow_lane_p95_ms` or more is a latency sample at once (the lane is at least
    /// that slow: the next checkouts prefer a faster lane or see every lane slow without
    /// waiting for the late answers); a shorter one says nothing yet. Report its end with
    /// [`Router::on_late`].
    pub fn detach(&mut self, permit: Permit, waited_ms: u32, now_ms: i64) -> Detached {
        let slow = self.tuning.slow_lane_p95_ms;
        if let Some(state) = self.lanes.get_mut(permit.lane.0) {
            state.outstanding.retain(|(id, _)| *id != permit.id);
            if slow > 0 && waited_ms >= slow {
                state.latency.record(now_ms, waited_ms);
            }
        }
        Detached {
            lane: permit.lane,
            id: permit.id,
        }
    }

    /// A detached request ended: its latency and result feed the window and the breaker
    /// (a slow answer makes the lane slow; errors open the breaker), not the limit, whose
    /// slot it no longer holds.
    pub fn on_late(&mut self, d: Detached, rtt_ms: u32, outcome: Outcome, now_ms: i64) {
        let pass_through = self.tuning.pass_through;
        let Some(state) = self.lanes.get_mut(d.lane.0) else {
            return;
        };
        if outcome.measures_latency() {
            state.latency.record(now_ms, rtt_ms);
        }
        if !pass_through {
            state.breaker.on_result(d.id, outcome.is_failure(), now_ms);
        }
    }

    /// Plans one checkout (see the module docs for the rules). Does not change state.
    pub fn plan(&self, now_ms: i64, signals: Signals) -> RoutingDecision {
        let t = &self.tuning;
        let deadline_ms = now_ms.saturating_add(i64::from(t.checkout_budget_ms));
        let offline = |mode: Mode, reason: String| RoutingDecision {
            mode,
            lanes_in_order: Vec::new(),
            reason,
            deadline_ms,
            min_attempt_ms: t.min_timeout_ms,
        };

        if t.pass_through {
            let Some(first) = self.lanes.first() else {
                return offline(Mode::QueueOffline, "no_lane".into());
            };
            let timeout_ms = t.pass_through_timeout_ms;
            return RoutingDecision {
                mode: Mode::Online,
                lanes_in_order: vec![Attempt {
                    lane: LaneId(0),
                    lane_name: first.config.name.clone(),
                    timeout_ms,
                    background_ms: 0,
                    slow_probe: false,
                }],
                reason: format!("pass_through;lanes={}", first.config.name),
                deadline_ms: now_ms.saturating_add(i64::from(timeout_ms)),
                min_attempt_ms: 1,
            };
        }
        if signals.requests_in_flight >= t.max_requests_in_flight {
            return offline(
                Mode::Reject,
                format!(
                    "overloaded;in_flight={}>={}",
                    signals.requests_in_flight, t.max_requests_in_flight
                ),
            );
        }
        struct Candidate<'a> {
            id: LaneId,
            name: &'a str,
            cost: i64,
            p95: Option<u32>,
            timeout: u32,
        }
        let stale = self.stale_ms();
        let mut candidates: Vec<Candidate<'_>> = self
            .lanes
            .iter()
            .enumerate()
            .filter(|(_, l)| l.breaker.admission(now_ms) != Admission::Refused)
            .map(|(i, l)| {
                let p = l.latency.percentiles(now_ms);
                Candidate {
                    id: LaneId(i),
                    name: &l.config.name,
                    cost: l.config.cost_minor(signals.amount_minor),
                    p95: p.map(|p| p.p95_ms),
                    timeout: timeout_from_percentiles(p.as_ref(), t),
                }
            })
            .collect();
        if candidates.is_empty() {
            return offline(Mode::QueueOffline, "no_healthy_lane".into());
        }

        // Every healthy lane slow: the buyer would wait seconds for an answer that a stored
        // payment gives at once. Queue offline, but keep measuring: one checkout at a time
        // probes the lane probed least recently, once per interval.
        let slow = t.slow_lane_p95_ms;
        if slow > 0
            && !signals.require_online
            && candidates.iter().all(|c| {
                self.lanes
                    .get(c.id.0)
                    .is_some_and(|l| l.is_slow(now_ms, slow, stale, t.slow_answer_ms > 0))
            })
        {
            if t.slow_answer_ms > 0 {
                // Send it now on the fastest lane and answer the buyer soon: the attempt
                // runs on in the background and settles the payment when the acquirer
                // answers (an approval online, seconds later, instead of a payment left
                // to the alarm).
                let Some(c) = candidates
                    .iter()
                    .min_by_key(|c| (c.p95.unwrap_or(u32::MAX), c.cost, c.id.0))
                else {
                    return offline(Mode::QueueOffline, "no_healthy_lane".into());
                };
                return RoutingDecision {
                    mode: Mode::Online,
                    lanes_in_order: vec![Attempt {
                        lane: c.id,
                        lane_name: c.name.to_string(),
                        timeout_ms: t.slow_answer_ms,
                        background_ms: t.background_timeout_ms,
                        slow_probe: false,
                    }],
                    reason: format!(
                        "all_lanes_slow;p95>={slow};answer_by={};lanes={}",
                        t.slow_answer_ms, c.name
                    ),
                    deadline_ms,
                    min_attempt_ms: t.slow_answer_ms.min(t.min_timeout_ms),
                };
            }
            let interval = i64::from(t.slow_probe_interval_ms);
            let probe = candidates
                .iter()
                .filter_map(|c| {
                    let l = self.lanes.get(c.id.0)?;
                    l.slow_probe_due(now_ms, interval, stale)
                        .then_some((l.last_started_ms.unwrap_or(i64::MIN), c))
                })
                .min_by_key(|(last, c)| (*last, c.id.0))
                .map(|(_, c)| c);
            return match probe {
                None => offline(Mode::QueueOffline, format!("all_lanes_slow;p95>={slow}")),
                Some(c) => RoutingDecision {
                    mode: Mode::Online,
                    lanes_in_order: vec![Attempt {
                        lane: c.id,
                        lane_name: c.name.to_string(),
                        // A probe answers the buyer within the slow threshold either way:
                        // past it, the payment is completed later on this lane (unknown
                        // outcome, same idempotency key), as for any timeout.
                        timeout_ms: c
                            .timeout
                            .min(t.checkout_budget_ms)
                            .min(slow.max(t.min_timeout_ms)),
                        background_ms: 0,
                        slow_probe: true,
                    }],
                    reason: format!("slow_probe;lanes={}", c.name),
                    deadline_ms,
                    min_attempt_ms: t.min_timeout_ms,
                },
            };
        }

        let target = t.latency_target_p95_ms;
        let all_fast = candidates.iter().all(|c| c.p95.is_none_or(|p| p < target));
        let rule = if all_fast {
            candidates.sort_by_key(|c| (c.cost, c.id.0));
            "cheapest"
        } else {
            candidates.sort_by_key(|c| (c.p95.unwrap_or(target), c.cost, c.id.0));
            "fastest"
        };

        let mut left = t.checkout_budget_ms;
        let mut lanes_in_order = Vec::new();
        for c in &candidates {
            let derived = c.timeout.min(left);
            if derived < t.min_timeout_ms {
                break;
            }
            // With a background the buyer waits at most the slow-lane threshold: past it the
            // lane is slow anyway, the buyer hears `confirming` and the request runs on.
            let timeout_ms = if t.background_timeout_ms > derived && t.slow_lane_p95_ms > 0 {
                derived.min(t.slow_lane_p95_ms.max(t.min_timeout_ms))
            } else {
                derived
            };
            left -= timeout_ms;
            lanes_in_order.push(Attempt {
                lane: c.id,
                lane_name: c.name.to_string(),
                timeout_ms,
                background_ms: t.background_timeout_ms.saturating_sub(timeout_ms),
                slow_probe: false,
            });
        }
        let names: Vec<&str> = lanes_in_order
            .iter()
            .map(|a| a.lane_name.as_str())
            .collect();
        RoutingDecision {
            mode: Mode::Online,
            reason: format!("{rule};lanes={}", names.join(",")),
            lanes_in_order,
            deadline_ms,
            min_attempt_ms: t.min_timeout_ms,
        }
    }

    /// Metrics of every lane, for `GET /v1/admin/routing`.
    pub fn snapshot(&self, now_ms: i64) -> RoutingSnapshot {
        let stale = self.stale_ms();
        let lanes = self
            .lanes
            .iter()
            .map(|l| {
                let p = l.latency.percentiles(now_ms);
                LaneMetrics {
                    name: l.config.name.clone(),
                    region: l.config.region.clone(),
                    limit: l.limit.limit(),
                    in_flight: l.in_flight_at(now_ms, stale),
                    p50_ms: p.map(|p| p.p50_ms),
                    p95_ms: p.map(|p| p.p95_ms),
                    p99_ms: p.map(|p| p.p99_ms),
                    latency_samples: p.map_or(0, |p| p.samples),
                    min_rtt_ms: l.limit.rtt_noload_ms(),
                    timeout_ms: timeout_from_percentiles(p.as_ref(), &self.tuning),
                    error_rate_bps: l.breaker.error_rate_bps(now_ms).0,
                    breaker: l.breaker.state_at(now_ms),
                }
            })
            .collect();
        RoutingSnapshot {
            now_ms,
            pass_through: self.tuning.pass_through,
            lanes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LANES: &str = r#"[
      {"name":"cheap","connector":"stripe","base_url":"https://api.stripe.com","secret_name":"STRIPE_CHEAP","cost_per_tx_minor":10,"cost_bps":100,"region":"eu"},
      {"name":"pricey","connector":"stripe","base_url":"https://api.stripe.com","secret_name":"STRIPE_PRICEY","cost_per_tx_minor":25,"cost_bps":250,"region":"us"}
    ]"#;

    fn router_with(tuning: Tuning) -> Router {
        Router::new(parse_lanes(LANES).unwrap(), tuning).unwrap()
    }

    fn router() -> Router {
        router_with(Tuning::default())
    }

    fn storing_router() -> Router {
        router_with(Tuning {
            slow_answer_ms: 0,
            ..Tuning::default()
        })
    }

    fn signals() -> Signals {
        Signals {
            requests_in_flight: 0,
            amount_minor: 2_000,
            require_online: false,
        }
    }

    /// Runs `n` sequential requests of `rtt_ms` on `lane`, advancing the fake clock.
    fn feed(r: &mut Router, lane: LaneId, n: usize, rtt_ms: u32, outcome: Outcome, now: &mut i64) {
        for _ in 0..n {
            let p = r.try_acquire(lane, *now).expect("slot");
            *now += i64::from(rtt_ms);
            r.on_complete(p, rtt_ms, outcome, *now);
        }
    }

    /// Fills the lane to its limit, then completes every request with `rtt_ms`.
    fn saturate(r: &mut Router, lane: LaneId, rtt_ms: u32, now: &mut i64) {
        let mut permits = Vec::new();
        while let Some(p) = r.try_acquire(lane, *now) {
            permits.push(p);
        }
        *now += i64::from(rtt_ms);
        for p in permits {
            r.on_complete(p, rtt_ms, Outcome::Ok, *now);
        }
    }

    fn limit_of(r: &Router, lane: LaneId) -> u32 {
        r.snapshot(0).lanes[lane.index()].limit
    }

    #[test]
    fn lanes_parse_and_validate() {
        let lanes = parse_lanes(LANES).unwrap();
        assert_eq!(lanes.len(), 2);
        assert_eq!(lanes[0].cost_minor(2_000), 10 + 20);
        assert_eq!(lanes[1].cost_minor(2_000), 25 + 50);
        // Rounded up, never negative amounts.
        assert_eq!(lanes[0].cost_minor(1), 11);
        assert_eq!(lanes[0].cost_minor(-5), 10);

        let one = r#"[{"name":"a","connector":"stripe","base_url":"https://x","secret_name":"A","cost_per_tx_minor":1,"cost_bps":1,"region":"eu"}]"#;
        assert_eq!(parse_lanes(one), Err(RoutingError::TooFewLanes));
        let dup = LANES.replace("pricey", "cheap");
        assert!(matches!(
            parse_lanes(&dup),
            Err(RoutingError::InvalidLanes(_))
        ));
        let adyen = LANES.replacen("\"stripe\"", "\"adyen\"", 1);
        assert!(matches!(
            parse_lanes(&adyen),
            Err(RoutingError::InvalidLanes(_))
        ));
        let ftp = LANES.replacen("https://api", "ftp://api", 1);
        assert!(parse_lanes(&ftp).is_err());
        assert!(parse_lanes("{").is_err());
        assert!(parse_lanes("not json").unwrap_err().to_api().status < 500);
        assert_eq!(
            RoutingError::TooFewLanes.to_api().code,
            "routing_too_few_lanes"
        );
    }

    #[test]
    fn tuning_parses_with_defaults_and_rejects_nonsense() {
        assert_eq!(Tuning::parse("{}").unwrap(), Tuning::default());
        let t = Tuning::parse(r#"{"pass_through":true,"min_timeout_ms":100}"#).unwrap();
        assert!(t.pass_through);
        assert_eq!(t.min_timeout_ms, 100);
        assert!(Tuning::parse(r#"{"min_timeout_ms":5000}"#).is_err());
        assert!(Tuning::parse(r#"{"min_limit":0}"#).is_err());
        assert!(Tuning::parse(r#"{"unknown_knob":1}"#).is_err());
        assert!(Router::from_json(LANES, Some(r#"{"breaker_error_rate_pct":101}"#)).is_err());
        assert!(Router::from_json(LANES, None).is_ok());
    }

    #[test]
    fn percentiles_use_nearest_rank_over_a_sliding_window() {
        let mut w = LatencyWindow::new(30_000, 1_000);
        assert_eq!(w.percentiles(0), None);
        for i in 1..=100u32 {
            w.record(i64::from(i), i * 10);
        }
        let p = w.percentiles(100).unwrap();
        assert_eq!(
            (p.p50_ms, p.p90_ms, p.p95_ms, p.p99_ms),
            (500, 900, 950, 990)
        );
        assert_eq!(p.samples, 100);
        // 30 s later the old samples have left the window.
        w.record(30_060, 7);
        let p = w.percentiles(30_060).unwrap();
        assert_eq!(p.samples, 42);
        assert_eq!(p.p50_ms, 790);
        assert_eq!(w.percentiles(90_000), None);

        // The sample cap keeps only the newest.
        let mut w = LatencyWindow::new(30_000, 3);
        for rtt in [900, 800, 10, 20, 30] {
            w.record(1, rtt);
        }
        assert_eq!(w.percentiles(1).unwrap().p99_ms, 30);
    }

    #[test]
    fn limit_grows_under_low_latency_and_shrinks_when_latency_rises() {
        let mut r = router();
        let lane = r.lane_id("cheap").unwrap();
        let mut now = 1_000;
        let start = limit_of(&r, lane);
        assert_eq!(start, 10);
        for _ in 0..5 {
            saturate(&mut r, lane, 50, &mut now);
        }
        let grown = limit_of(&r, lane);
        assert!(
            grown > start + 10,
            "limit {grown} should have grown from {start}"
        );

        // The acquirer slows down fourfold: a queue builds, the limit comes down.
        for _ in 0..5 {
            saturate(&mut r, lane, 200, &mut now);
        }
        let shrunk = limit_of(&r, lane);
        assert!(shrunk < grown, "limit {shrunk} should be below {grown}");

        // Failures shrink it too, down to min_limit at most.
        let before = limit_of(&r, lane);
        let p = r.try_acquire(lane, now).unwrap();
        r.on_complete(p, 10, Outcome::Retryable(RetryReason::RateLimited), now);
        assert!(limit_of(&r, lane) < before);
    }

    #[test]
    fn light_traffic_does_not_inflate_the_limit() {
        let mut r = router();
        let lane = r.lane_id("cheap").unwrap();
        let mut now = 0;
        feed(&mut r, lane, 50, 40, Outcome::Ok, &mut now);
        // One request at a time never shows what a higher limit would do.
        assert_eq!(limit_of(&r, lane), 10);
    }

    #[test]
    fn min_rtt_is_re_measured_after_the_reset_interval() {
        let mut v = VegasLimit::new(&Tuning::default());
        v.on_sample(50, 10, false, 0);
        assert_eq!(v.rtt_noload_ms(), Some(50));
        v.on_sample(300, 10, false, 1_000);
        assert_eq!(v.rtt_noload_ms(), Some(50));
        v.on_sample(300, 10, false, 61_000);
        assert_eq!(v.rtt_noload_ms(), Some(300));
    }

    #[test]
    fn over_the_limit_is_not_acquired() {
        let mut r = router_with(Tuning {
            initial_limit: 3,
            ..Tuning::default()
        });
        let lane = r.lane_id("cheap").unwrap();
        let held: Vec<Permit> = (0..3).map(|_| r.try_acquire(lane, 0).unwrap()).collect();
        assert!(r.try_acquire(lane, 0).is_none());
        assert_eq!(r.snapshot(0).lanes[0].in_flight, 3);
        // The other lane has its own limit.
        assert!(r.try_acquire(r.lane_id("pricey").unwrap(), 0).is_some());
        // A full lane stays in the plan (the acquirer is busy, not down); taking its
        // permit is what fails, and the checkout passes over it or waits.
        let d = r.plan(0, signals());
        assert_eq!(d.mode, Mode::Online);
        assert_eq!(d.lanes_in_order.len(), 2);
        assert_eq!(d.lanes_in_order[0].lane_name, "cheap");
        assert_eq!(
            r.may_acquire(&d.lanes_in_order[0], None, 0),
            Err(Busy::AtLimit)
        );
        assert_eq!(r.may_acquire(&d.lanes_in_order[1], None, 0), Ok(()));
        let mut held = held.into_iter();
        r.on_complete(held.next().unwrap(), 20, Outcome::Ok, 20);
        assert!(r.try_acquire(lane, 20).is_some());
        // Permits never given back are forgotten after stale_permit_ms.
        assert!(r.try_acquire(lane, 21).is_none());
        assert!(r.try_acquire(lane, 31_000).is_some());
    }

    #[test]
    fn breaker_opens_on_consecutive_failures_then_half_opens_and_closes() {
        let mut r = router();
        let lane = r.lane_id("cheap").unwrap();
        let mut now = 0;
        let fail = Outcome::Retryable(RetryReason::ServerError);
        feed(&mut r, lane, 4, 30, fail, &mut now);
        assert_eq!(r.snapshot(now).lanes[0].breaker, BreakerState::Closed);
        feed(&mut r, lane, 1, 30, fail, &mut now);
        assert_eq!(r.snapshot(now).lanes[0].breaker, BreakerState::Open);
        assert!(r.try_acquire(lane, now).is_none());

        // Cool-down over: half-open, exactly one probe.
        now += 10_000;
        assert_eq!(r.snapshot(now).lanes[0].breaker, BreakerState::HalfOpen);
        let probe = r.try_acquire(lane, now).unwrap();
        assert!(probe.is_probe());
        assert!(r.try_acquire(lane, now).is_none());

        // The probe fails: open again for another cool-down.
        r.on_complete(
            probe,
            30,
            Outcome::Retryable(RetryReason::Timeout),
            now + 30,
        );
        now += 30;
        assert_eq!(r.snapshot(now).lanes[0].breaker, BreakerState::Open);
        assert!(r.try_acquire(lane, now + 9_000).is_none());

        // Next probe succeeds (a decline is a healthy answer): closed.
        now += 10_000;
        let probe = r.try_acquire(lane, now).unwrap();
        r.on_complete(probe, 30, Outcome::Declined, now + 30);
        now += 30;
        assert_eq!(r.snapshot(now).lanes[0].breaker, BreakerState::Closed);
        assert!(r.try_acquire(lane, now).is_some());
        assert!(r.try_acquire(lane, now).is_some());
    }

    #[test]
    fn breaker_opens_on_error_rate_over_the_window() {
        let mut r = router();
        let lane = r.lane_id("cheap").unwrap();
        let mut now = 0;
        let fail = Outcome::Retryable(RetryReason::ConnectionRefused);
        // Alternating results: never 5 in a row, but 50 % once 10 requests are in.
        for _ in 0..4 {
            feed(&mut r, lane, 1, 20, Outcome::Ok, &mut now);
            feed(&mut r, lane, 1, 20, fail, &mut now);
        }
        feed(&mut r, lane, 1, 20, Outcome::Ok, &mut now);
        let m = &r.snapshot(now).lanes[0];
        assert_eq!(m.breaker, BreakerState::Closed);
        assert_eq!(m.error_rate_bps, 4 * 10_000 / 9);
        feed(&mut r, lane, 1, 20, fail, &mut now);
        assert_eq!(r.snapshot(now).lanes[0].breaker, BreakerState::Open);
    }

    #[test]
    fn old_failures_leave_the_breaker_window() {
        let mut r = router();
        let lane = r.lane_id("cheap").unwrap();
        let mut now = 0;
        let fail = Outcome::Retryable(RetryReason::ServerError);
        feed(&mut r, lane, 4, 20, fail, &mut now);
        feed(&mut r, lane, 1, 20, Outcome::Ok, &mut now);
        now += 40_000;
        feed(&mut r, lane, 5, 20, Outcome::Ok, &mut now);
        feed(&mut r, lane, 4, 20, fail, &mut now);
        // 4 of the 9 results in the window failed: still closed.
        assert_eq!(r.snapshot(now).lanes[0].breaker, BreakerState::Closed);
    }

    #[test]
    fn a_lost_probe_does_not_block_the_lane_forever() {
        let mut r = router();
        let lane = r.lane_id("cheap").unwrap();
        let mut now = 0;
        feed(
            &mut r,
            lane,
            5,
            20,
            Outcome::Retryable(RetryReason::Timeout),
            &mut now,
        );
        now += 10_000;
        let lost = r.try_acquire(lane, now).unwrap();
        assert!(r.try_acquire(lane, now + 1_000).is_none());
        let again = r.try_acquire(lane, now + 30_000).unwrap();
        assert!(again.is_probe());
        assert!(lost.is_probe());
    }

    #[test]
    fn a_decline_neither_trips_the_breaker_nor_shrinks_the_limit() {
        let mut r = router();
        let lane = r.lane_id("cheap").unwrap();
        let mut now = 0;
        feed(&mut r, lane, 20, 40, Outcome::Declined, &mut now);
        let m = &r.snapshot(now).lanes[0];
        assert_eq!(m.breaker, BreakerState::Closed);
        assert_eq!(m.error_rate_bps, 0);
        assert_eq!(m.limit, 10);
        assert_eq!(m.p50_ms, Some(40));
    }

    #[test]
    fn cheaper_lane_when_both_are_fast_faster_lane_when_the_cheap_one_is_slow() {
        let mut r = router();
        let cheap = r.lane_id("cheap").unwrap();
        let pricey = r.lane_id("pricey").unwrap();
        let mut now = 0;
        // No samples yet: both count as meeting the target, cost decides.
        let d = r.plan(now, signals());
        assert_eq!(d.reason, "cheapest;lanes=cheap,pricey");

        feed(&mut r, cheap, 20, 300, Outcome::Ok, &mut now);
        feed(&mut r, pricey, 20, 100, Outcome::Ok, &mut now);
        let d = r.plan(now, signals());
        assert_eq!(d.mode, Mode::Online);
        let order: Vec<&str> = d
            .lanes_in_order
            .iter()
            .map(|a| a.lane_name.as_str())
            .collect();
        assert_eq!(order, ["cheap", "pricey"]);
        assert_eq!(d.reason, "cheapest;lanes=cheap,pricey");

        // The cheap lane slows beyond the 800 ms p95 target: the faster lane leads.
        feed(&mut r, cheap, 20, 1_200, Outcome::Ok, &mut now);
        let d = r.plan(now, signals());
        let order: Vec<&str> = d
            .lanes_in_order
            .iter()
            .map(|a| a.lane_name.as_str())
            .collect();
        assert_eq!(order, ["pricey", "cheap"]);
        assert_eq!(d.reason, "fastest;lanes=pricey,cheap");

        // Once the slow samples age out of the window, cost decides again.
        now += 31_000;
        assert!(r
            .plan(now, signals())
            .reason
            .starts_with("cheapest;lanes=cheap"));
    }

    #[test]
    fn cost_comparison_depends_on_the_amount() {
        let lanes = r#"[
          {"name":"flat","connector":"stripe","base_url":"https://a","secret_name":"A","cost_per_tx_minor":50,"cost_bps":0,"region":"eu"},
          {"name":"pct","connector":"stripe","base_url":"https://b","secret_name":"B","cost_per_tx_minor":0,"cost_bps":300,"region":"eu"}
        ]"#;
        let r = Router::from_json(lanes, None).unwrap();
        let small = Signals {
            amount_minor: 500,
            ..signals()
        };
        let large = Signals {
            amount_minor: 10_000,
            ..signals()
        };
        assert_eq!(r.plan(0, small).lanes_in_order[0].lane_name, "pct");
        assert_eq!(r.plan(0, large).lanes_in_order[0].lane_name, "flat");
    }

    #[test]
    fn open_lane_is_skipped_and_all_open_means_queue_offline() {
        let mut r = router();
        let cheap = r.lane_id("cheap").unwrap();
        let pricey = r.lane_id("pricey").unwrap();
        let mut now = 0;
        let fail = Outcome::Retryable(RetryReason::ServerError);
        feed(&mut r, cheap, 5, 20, fail, &mut now);
        let d = r.plan(now, signals());
        assert_eq!(d.reason, "cheapest;lanes=pricey");
        feed(&mut r, pricey, 5, 20, fail, &mut now);
        let d = r.plan(now, signals());
        assert_eq!(d.mode, Mode::QueueOffline);
        assert!(d.lanes_in_order.is_empty());
        assert_eq!(d.reason, "no_healthy_lane");
        // After the cool-down the half-open lanes are offered again (as probes).
        let d = r.plan(now + 10_000, signals());
        assert_eq!(d.mode, Mode::Online);
        assert_eq!(d.lanes_in_order.len(), 2);
    }

    #[test]
    fn timeouts_follow_p99_within_bounds_and_fit_the_budget() {
        // With a background (the default) the buyer is answered by the slow-lane threshold
        // and the request runs on for the rest of `background_timeout_ms`.
        let d = router().plan(0, signals());
        assert_eq!(
            (
                d.lanes_in_order[0].timeout_ms,
                d.lanes_in_order[0].background_ms
            ),
            (1_000, 14_000)
        );
        // The derived timeouts, as when every attempt is cut at its timeout.
        let cut = || Tuning {
            background_timeout_ms: 0,
            ..Tuning::default()
        };
        let mut r = router_with(cut());
        let cheap = r.lane_id("cheap").unwrap();
        let pricey = r.lane_id("pricey").unwrap();
        let mut now = 0;
        // Without samples: the default.
        let d = r.plan(now, signals());
        assert_eq!(d.lanes_in_order[0].timeout_ms, 2_500);

        // p99 = 800 → 1200 ms.
        feed(&mut r, cheap, 100, 800, Outcome::Ok, &mut now);
        // Very fast lane: 1.5 × 20 = 30 ms, clamped up to 1000 ms.
        feed(&mut r, pricey, 100, 20, Outcome::Ok, &mut now);
        let d = r.plan(now, signals());
        let by_name = |d: &RoutingDecision, n: &str| {
            d.lanes_in_order
                .iter()
                .find(|a| a.lane_name == n)
                .unwrap()
                .timeout_ms
        };
        assert_eq!(by_name(&d, "cheap"), 1_200);
        assert_eq!(by_name(&d, "pricey"), 1_000);
        assert_eq!(r.snapshot(now).lanes[0].timeout_ms, 1_200);

        // Very slow lane: clamped down to 4000 ms.
        feed(&mut r, cheap, 100, 3_900, Outcome::Ok, &mut now);
        let d = r.plan(now, signals());
        assert_eq!(by_name(&d, "cheap"), 4_000);

        // The budget caps the attempts together.
        let mut r = router_with(Tuning {
            checkout_budget_ms: 4_000,
            ..cut()
        });
        let d = r.plan(0, signals());
        let timeouts: Vec<u32> = d.lanes_in_order.iter().map(|a| a.timeout_ms).collect();
        assert_eq!(timeouts, [2_500, 1_500]);
        assert_eq!(d.deadline_ms, 4_000);
        // At attempt time, what is left of the budget cuts the timeout.
        assert_eq!(d.attempt_timeout_ms(0, 0), Some(2_500));
        assert_eq!(d.attempt_timeout_ms(1, 2_600), Some(1_400));
        assert_eq!(d.attempt_timeout_ms(1, 3_100), None);
        assert_eq!(d.attempt_timeout_ms(1, 2_400), Some(1_500));
        assert_eq!(d.attempt_timeout_ms(2, 0), None);
        let lane = r.lane_id("cheap").unwrap();
        assert!(r.try_acquire(lane, 0).is_some());
    }

    #[test]
    fn overload_is_shed_and_no_load_signal_plans_offline() {
        let r = router();
        let busy = Signals {
            requests_in_flight: 500,
            ..signals()
        };
        let d = r.plan(0, busy);
        assert_eq!(d.mode, Mode::Reject);
        assert!(d.reason.starts_with("overloaded"));
        assert_eq!(
            r.plan(
                0,
                Signals {
                    requests_in_flight: 499,
                    ..signals()
                }
            )
            .mode,
            Mode::Online
        );
    }

    #[test]
    fn lanes_at_their_limit_stay_planned_and_waiters_are_served_in_order() {
        let mut r = router_with(Tuning {
            initial_limit: 1,
            min_limit: 1,
            max_limit: 1,
            max_waiters: 2,
            ..Tuning::default()
        });
        let now = 0;
        let d = r.plan(now, signals());
        let (a, b) = (d.lanes_in_order[0].clone(), d.lanes_in_order[1].clone());
        let pa = r.acquire(&a, None, now).unwrap();
        let pb = r.acquire(&b, None, now).unwrap();
        // Both lanes full: still an online plan with both lanes (it used to be
        // `no_healthy_lane`, that is offline storage).
        let d = r.plan(now, signals());
        assert_eq!(d.mode, Mode::Online, "{}", d.reason);
        assert_eq!(d.lanes_in_order.len(), 2);
        assert_eq!(r.acquire(&a, None, now).err(), Some(Busy::AtLimit));
        // Two wait; a third finds the queue full.
        let first = r.join_wait(now, now + 2_000).unwrap();
        let second = r.join_wait(now, now + 2_000).unwrap();
        assert!(r.join_wait(now, now + 2_000).is_none());
        assert_eq!(r.waiting(now), 2);
        // One permit comes back: the first waiter gets it, not the second, nor a newcomer.
        r.on_complete(pa, 20, Outcome::Ok, now + 20);
        let now = now + 20;
        assert_eq!(r.may_acquire(&a, None, now), Err(Busy::AtLimit));
        assert_eq!(r.may_acquire(&a, Some(second), now), Err(Busy::AtLimit));
        let p1 = r.acquire(&a, Some(first), now).unwrap();
        r.leave_wait(first);
        r.on_complete(pb, 20, Outcome::Ok, now);
        assert!(
            r.acquire(&b, None, now).is_err(),
            "a newcomer jumped the queue"
        );
        let p2 = r.acquire(&b, Some(second), now).unwrap();
        r.leave_wait(second);
        assert_eq!(r.waiting(now), 0);
        // A waiter whose checkout died is forgotten after its deadline.
        let _dead = r.join_wait(now, now + 100).unwrap();
        r.on_complete(p1, 20, Outcome::Ok, now);
        assert!(r.may_acquire(&a, None, now).is_err());
        assert!(r.may_acquire(&a, None, now + 100).is_ok());
        r.on_complete(p2, 20, Outcome::Ok, now);
    }

    #[test]
    fn a_refusing_breaker_is_unavailable_not_at_limit() {
        let mut r = router();
        let cheap = r.lane_id("cheap").unwrap();
        let mut now = 0;
        feed(
            &mut r,
            cheap,
            5,
            20,
            Outcome::Retryable(RetryReason::ServerError),
            &mut now,
        );
        let attempt = Attempt {
            lane: cheap,
            lane_name: "cheap".into(),
            timeout_ms: 1_000,
            background_ms: 0,
            slow_probe: false,
        };
        assert_eq!(
            r.acquire(&attempt, None, now).err(),
            Some(Busy::Unavailable)
        );
    }

    #[test]
    fn pass_through_mode_uses_the_first_lane_with_a_fixed_timeout() {
        let mut r = router_with(Tuning {
            pass_through: true,
            pass_through_timeout_ms: 1_234,
            initial_limit: 1,
            ..Tuning::default()
        });
        let cheap = r.lane_id("cheap").unwrap();
        let mut now = 0;
        // Failures neither open the breaker nor shrink anything; the limit is ignored.
        let held: Vec<Permit> = (0..20)
            .map(|_| r.try_acquire(cheap, now).unwrap())
            .collect();
        for p in held {
            r.on_complete(
                p,
                5_000,
                Outcome::Retryable(RetryReason::Timeout),
                now + 5_000,
            );
        }
        now += 5_000;
        let d = r.plan(now, signals());
        assert_eq!(d.mode, Mode::Online);
        assert_eq!(d.lanes_in_order.len(), 1);
        assert_eq!(d.lanes_in_order[0].lane_name, "cheap");
        assert_eq!(d.lanes_in_order[0].timeout_ms, 1_234);
        assert_eq!(d.reason, "pass_through;lanes=cheap");
        let m = &r.snapshot(now).lanes[0];
        assert_eq!(m.breaker, BreakerState::Closed);
        assert_eq!(m.limit, 1);
        // Latency is still measured, for the benchmark's comparison.
        assert_eq!(m.p99_ms, Some(5_000));
        assert!(r.snapshot(now).pass_through);
    }

    #[test]
    fn all_lanes_slow_queues_offline_with_one_probe_per_lane_per_interval() {
        // The storing rule for slow lanes (`slow_answer_ms` 0).
        let mut r = storing_router();
        let cheap = r.lane_id("cheap").unwrap();
        let pricey = r.lane_id("pricey").unwrap();
        let mut now = 0;
        // Only one lane measured slow: the other (unmeasured) still counts as healthy.
        feed(&mut r, cheap, 3, 2_000, Outcome::Ok, &mut now);
        let d = r.plan(now, signals());
        assert_eq!(d.mode, Mode::Online);
        assert_eq!(d.reason, "fastest;lanes=pricey,cheap");
        // Both slow (answers of 2 s, above the 1 s threshold).
        feed(&mut r, pricey, 3, 2_000, Outcome::Ok, &mut now);
        assert_eq!(now, 12_000);

        // The lane probed least recently (cheap, last started at 4 s) gets this checkout.
        let d = r.plan(now, signals());
        assert_eq!(d.mode, Mode::Online);
        assert_eq!(d.reason, "slow_probe;lanes=cheap");
        assert_eq!(d.lanes_in_order.len(), 1, "a probe never fails over");
        assert!(d.lanes_in_order[0].slow_probe);
        assert!(
            d.lanes_in_order[0].timeout_ms <= 1_000,
            "a probe answers the buyer within the slow threshold: {:?}",
            d.lanes_in_order[0]
        );
        // A concurrent checkout planned before the probe took its permit sees it due too.
        let racer = r.plan(now, signals());
        let probe = r.acquire(&d.lanes_in_order[0], None, now).unwrap();
        assert!(r.acquire(&racer.lanes_in_order[0], None, now).is_err());

        // With cheap probing, the next checkout probes pricey; then everything queues.
        let d = r.plan(now, signals());
        assert_eq!(d.reason, "slow_probe;lanes=pricey");
        let probe2 = r.acquire(&d.lanes_in_order[0], None, now).unwrap();
        let d = r.plan(now + 1, signals());
        assert_eq!(d.mode, Mode::QueueOffline);
        assert_eq!(d.reason, "all_lanes_slow;p95>=1000");
        assert!(d.lanes_in_order.is_empty());

        // The probes answer slowly: no new probe before the interval is over.
        r.on_complete(probe, 1_900, Outcome::Ok, now + 1_900);
        r.on_complete(probe2, 1_900, Outcome::Ok, now + 1_900);
        assert_eq!(r.plan(now + 1_999, signals()).mode, Mode::QueueOffline);
        assert_eq!(
            r.plan(now + 2_000, signals()).reason,
            "slow_probe;lanes=cheap"
        );

        // A checkout that must stay online is never diverted; it gets the usual plan.
        let online = Signals {
            require_online: true,
            ..signals()
        };
        let d = r.plan(now + 1, online);
        assert_eq!(d.mode, Mode::Online);
        assert_eq!(d.lanes_in_order.len(), 2);
        assert!(d.lanes_in_order.iter().all(|a| !a.slow_probe));

        // The rule can be turned off.
        let mut off = router_with(Tuning {
            slow_lane_p95_ms: 0,
            ..Tuning::default()
        });
        let mut t = 0;
        feed(&mut off, cheap, 3, 2_000, Outcome::Ok, &mut t);
        feed(&mut off, pricey, 3, 2_000, Outcome::Ok, &mut t);
        assert_eq!(off.plan(t, signals()).reason, "fastest;lanes=cheap,pricey");
    }

    #[test]
    fn all_lanes_slow_still_sends_online_answers_soon_and_gives_the_slot_back() {
        let mut r = router();
        let cheap = r.lane_id("cheap").unwrap();
        let pricey = r.lane_id("pricey").unwrap();
        let mut now = 0;
        feed(&mut r, cheap, 3, 2_500, Outcome::Ok, &mut now);
        feed(&mut r, pricey, 3, 2_000, Outcome::Ok, &mut now);
        // Every lane slow: online on the fastest, the buyer answered after 50 ms, the
        // request given 15 s in all; never stored at once.
        let d = r.plan(now, signals());
        assert_eq!(d.mode, Mode::Online, "{}", d.reason);
        assert_eq!(
            d.reason,
            "all_lanes_slow;p95>=1000;answer_by=50;lanes=pricey"
        );
        assert_eq!(
            d.lanes_in_order.len(),
            1,
            "an unknown outcome never fails over"
        );
        let a = &d.lanes_in_order[0];
        assert_eq!((a.timeout_ms, a.background_ms), (50, 15_000));
        assert_eq!(d.attempt_timeout_ms(0, now), Some(50));
        // A buyer who must pay online waits for the acquirer as before (no storing plan).
        let online = r.plan(
            now,
            Signals {
                require_online: true,
                ..signals()
            },
        );
        assert!(online.reason.starts_with("fastest;"), "{}", online.reason);

        // Answered, the request runs on: its slot is free again at once.
        let limit = r.snapshot(now).lanes[pricey.index()].limit;
        let mut detached = Vec::new();
        for _ in 0..(limit * 3) {
            let p = r
                .acquire(a, None, now)
                .expect("a slot, the earlier ones given back");
            detached.push(r.detach(p, 50, now));
        }
        assert_eq!(r.snapshot(now).lanes[pricey.index()].in_flight, 0);
        // Their answers keep the lane measured slow (2.4 s) and count in the breaker.
        now += 2_400;
        for d in detached.drain(..) {
            r.on_late(d, 2_400, Outcome::Ok, now);
        }
        let plan = r.plan(now, signals());
        assert!(
            plan.reason.starts_with("all_lanes_slow;"),
            "{}",
            plan.reason
        );
        for _ in 0..5 {
            let p = r.acquire(&plan.lanes_in_order[0], None, now).unwrap();
            let d = r.detach(p, 50, now);
            r.on_late(d, 2_400, Outcome::Retryable(RetryReason::ServerError), now);
        }
        assert_eq!(
            r.snapshot(now).lanes[pricey.index()].breaker,
            BreakerState::Open
        );
        // One fast answer among slow ones is no recovery (it was answered in time anyway);
        // a lane whose p95 is fast again is used as usual.
        feed(&mut r, cheap, 1, 40, Outcome::Ok, &mut now);
        let plan = r.plan(now, signals());
        assert!(
            plan.reason.starts_with("all_lanes_slow;"),
            "{}",
            plan.reason
        );
        feed(&mut r, cheap, 60, 40, Outcome::Ok, &mut now);
        let plan = r.plan(now, signals());
        // (pricey's breaker is open: cheap alone, and fast.)
        assert_eq!(plan.reason, "cheapest;lanes=cheap", "{}", plan.reason);
        assert_eq!(
            plan.lanes_in_order[0].background_ms,
            15_000 - plan.lanes_in_order[0].timeout_ms
        );
    }

    #[test]
    fn a_buyer_answered_after_a_long_wait_marks_the_lane_slow_at_once() {
        let mut r = router();
        let cheap = r.lane_id("cheap").unwrap();
        let mut now = 0;
        feed(&mut r, cheap, 3, 40, Outcome::Ok, &mut now);
        let d = r.plan(now, signals());
        assert_eq!(d.reason, "cheapest;lanes=cheap,pricey");
        // Cheap hangs: its buyer is answered after 1 s and the request runs on.
        let p = r.acquire(&d.lanes_in_order[0], None, now).unwrap();
        now += 1_000;
        let _late = r.detach(p, 1_000, now);
        // The next checkout goes to the other lane first, without waiting for cheap's answer.
        let d = r.plan(now, signals());
        assert_eq!(d.reason, "fastest;lanes=pricey,cheap", "{}", d.reason);
        // A short wait (the 50 ms answer time of slow lanes) is no sample.
        let mut r2 = router();
        let mut t = 0;
        feed(&mut r2, cheap, 3, 40, Outcome::Ok, &mut t);
        let p = r2.try_acquire(cheap, t).unwrap();
        let _ = r2.detach(p, 80, t + 80);
        assert_eq!(r2.snapshot(t + 80).lanes[cheap.index()].latency_samples, 3);
    }

    #[test]
    fn requests_waiting_past_the_threshold_make_a_lane_slow_before_any_answer() {
        // The storing rule for slow lanes (`slow_answer_ms` 0).
        let mut r = storing_router();
        let cheap = r.lane_id("cheap").unwrap();
        let pricey = r.lane_id("pricey").unwrap();
        let mut now = 0;
        // Both lanes fast so far.
        feed(&mut r, cheap, 3, 50, Outcome::Ok, &mut now);
        feed(&mut r, pricey, 3, 50, Outcome::Ok, &mut now);
        // The acquirer slows down: one request on each lane leaves and does not come back.
        let d = r.plan(now, signals());
        let a = r.acquire(&d.lanes_in_order[0], None, now).unwrap();
        let b = r.acquire(&d.lanes_in_order[1], None, now).unwrap();
        assert_eq!(r.plan(now + 999, signals()).mode, Mode::Online);
        // After a second with no answer on either lane, checkouts are stored at once.
        let d = r.plan(now + 1_000, signals());
        assert_eq!(d.mode, Mode::QueueOffline, "{}", d.reason);
        assert_eq!(d.reason, "all_lanes_slow;p95>=1000");
        r.on_complete(a, 1_500, Outcome::Ok, now + 1_500);
        r.on_complete(b, 1_500, Outcome::Ok, now + 1_500);

        // One stuck request is not enough when a fast answer came back after it left.
        let mut r = storing_router();
        let mut now = 0;
        feed(&mut r, cheap, 3, 50, Outcome::Ok, &mut now);
        feed(&mut r, pricey, 3, 50, Outcome::Ok, &mut now);
        let stuck = r.try_acquire(cheap, now + 1).unwrap();
        let stuck2 = r.try_acquire(pricey, now + 1).unwrap();
        let quick = r.try_acquire(cheap, now + 400).unwrap();
        r.on_complete(quick, 40, Outcome::Ok, now + 440);
        let d = r.plan(now + 1_100, signals());
        assert_eq!(d.mode, Mode::Online, "{}", d.reason);
        assert_eq!(d.lanes_in_order[0].lane, cheap);
        r.on_complete(stuck, 1_200, Outcome::Ok, now + 1_201);
        r.on_complete(stuck2, 1_200, Outcome::Ok, now + 1_201);
    }

    #[test]
    fn one_fast_probe_brings_a_slow_lane_back_and_one_slow_answer_sends_it_away() {
        // The storing rule for slow lanes (`slow_answer_ms` 0).
        let mut r = storing_router();
        let cheap = r.lane_id("cheap").unwrap();
        let pricey = r.lane_id("pricey").unwrap();
        let mut now = 0;
        feed(&mut r, cheap, 10, 2_500, Outcome::Ok, &mut now);
        feed(&mut r, pricey, 10, 2_500, Outcome::Ok, &mut now);
        now += 5_000;
        let d = r.plan(now, signals());
        assert_eq!(d.reason, "slow_probe;lanes=cheap");
        let p = r.acquire(&d.lanes_in_order[0], None, now).unwrap();
        // The acquirer recovered: the probe answers in 60 ms. The window's p95 is still
        // 2.5 s, but the newest sample says the lane is fast again: back online at once.
        now += 60;
        r.on_complete(p, 60, Outcome::Ok, now);
        let d = r.plan(now, signals());
        assert_eq!(d.mode, Mode::Online);
        assert!(d.lanes_in_order.iter().all(|a| !a.slow_probe));
        assert_eq!(d.lanes_in_order.len(), 2);
        // The next answer on that lane is slow again: all lanes slow once more. Pricey,
        // idle for over 7 s, probes; once it does, checkouts queue offline.
        feed(&mut r, cheap, 1, 1_500, Outcome::Ok, &mut now);
        let d = r.plan(now, signals());
        assert_eq!(d.reason, "slow_probe;lanes=pricey");
        let _held = r.acquire(&d.lanes_in_order[0], None, now).unwrap();
        assert_eq!(r.plan(now, signals()).mode, Mode::QueueOffline);
        // A timeout counts as a slow sample too (at the timeout it hit).
        let mut r = storing_router();
        let mut now = 0;
        feed(
            &mut r,
            cheap,
            1,
            2_500,
            Outcome::Retryable(RetryReason::Timeout),
            &mut now,
        );
        feed(
            &mut r,
            pricey,
            1,
            2_500,
            Outcome::Retryable(RetryReason::Timeout),
            &mut now,
        );
        assert!(r.plan(now, signals()).reason.starts_with("slow_probe;"));
    }

    #[test]
    fn snapshot_serializes_for_the_admin_route() {
        let mut r = router();
        let lane = r.lane_id("pricey").unwrap();
        let mut now = 0;
        feed(&mut r, lane, 10, 120, Outcome::Ok, &mut now);
        let v = serde_json::to_value(r.snapshot(now)).unwrap();
        let l = &v["lanes"][1];
        assert_eq!(l["name"], "pricey");
        assert_eq!(l["p50_ms"], 120);
        assert_eq!(l["breaker"], "closed");
        assert_eq!(l["in_flight"], 0);
        assert_eq!(v["lanes"][0]["p95_ms"], serde_json::Value::Null);
        let d = serde_json::to_value(r.plan(now, signals())).unwrap();
        assert_eq!(d["mode"], "online");
        assert!(d["lanes_in_order"][0]["timeout_ms"].is_u64());
        // The metrics never carry the lane's secret value, only its name in config.
        assert!(!v.to_string().contains("STRIPE_"));
    }
}
