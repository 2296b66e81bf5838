//! The per-event waiting room: join, poll to keep a place, admission at a fixed rate,
//! FIFO or a shuffle of everyone who joined before the sale started.

use super::config::{QueueConfig, QueueMode};
use super::LedgerError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Place {
    ticket: String,
    joined_ms: i64,
    last_poll_ms: i64,
    /// Random key drawn at join; sorting by it shuffles the pre-sale crowd uniformly.
    shuffle_key: u64,
    /// The poll time last included in a write the shell was asked to persist. Polls write
    /// only every third of the place TTL, so a crowd polling does not rewrite the state on
    /// every request; after a restart a place has still two thirds of its TTL left.
    #[serde(default)]
    durable_poll_ms: i64,
}

/// What a person in the waiting room sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QueueStatus {
    /// Opaque admission ticket (128 random bits, hex); the bearer's proof of place.
    pub ticket: String,
    /// 1-based place in line; `None` once admitted.
    pub position: Option<u32>,
    pub admitted: bool,
    /// Until when an admitted ticket may start checkouts.
    pub admitted_until_ms: Option<i64>,
    /// People waiting in total.
    pub depth: u32,
}

/// Waiting places, admitted tickets and the admission token bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingQueue {
    waiting: VecDeque<Place>,
    admitted: BTreeMap<String, i64>,
    /// Whether the pre-sale crowd has been ordered (at the first moment after the start).
    started: bool,
    /// Admission credit in thousandths of a person; at most one second's worth.
    credit_milli: i64,
    last_refill_ms: i64,
    /// Places dropped for not polling, and people admitted, since the start.
    pub dropped_total: u64,
    pub admitted_total: u64,
}

/// The admission meter: small, changes on almost every command (stored in the ledger head).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueMeter {
    started: bool,
    credit_milli: i64,
    last_refill_ms: i64,
    dropped_total: u64,
    admitted_total: u64,
}

/// Who waits and who is admitted: can be large, changes only when people join, are
/// admitted or leave (stored in its own row).
#[derive(Serialize)]
pub(crate) struct QueueMembersRef<'a> {
    waiting: &'a VecDeque<Place>,
    admitted: &'a BTreeMap<String, i64>,
}

#[derive(Deserialize)]
pub(crate) struct QueueMembers {
    waiting: VecDeque<Place>,
    admitted: BTreeMap<String, i64>,
}

impl WaitingQueue {
    pub(crate) fn meter(&self) -> QueueMeter {
        QueueMeter {
            started: self.started,
            credit_milli: self.credit_milli,
            last_refill_ms: self.last_refill_ms,
            dropped_total: self.dropped_total,
            admitted_total: self.admitted_total,
        }
    }

    pub(crate) fn members(&self) -> QueueMembersRef<'_> {
        QueueMembersRef {
            waiting: &self.waiting,
            admitted: &self.admitted,
        }
    }

    pub(crate) fn from_parts(m: QueueMeter, members: Option<QueueMembers>) -> WaitingQueue {
        let (waiting, admitted) =
            members.map_or_else(Default::default, |p| (p.waiting, p.admitted));
        WaitingQueue {
            waiting,
            admitted,
            started: m.started,
            credit_milli: m.credit_milli,
            last_refill_ms: m.last_refill_ms,
            dropped_total: m.dropped_total,
            admitted_total: m.admitted_total,
        }
    }

    pub(crate) fn new(cfg: &QueueConfig) -> WaitingQueue {
        WaitingQueue {
            waiting: VecDeque::new(),
            admitted: BTreeMap::new(),
            started: false,
            credit_milli: 0,
            last_refill_ms: cfg.sale_start_ms,
            dropped_total: 0,
            admitted_total: 0,
        }
    }

    pub(crate) fn reconfigure(&mut self, cfg: &QueueConfig) {
        if !self.started {
            self.last_refill_ms = cfg.sale_start_ms;
        }
        self.credit_milli = self.credit_milli.min(bucket_cap(cfg));
    }

    pub fn depth(&self) -> u32 {
        u32::try_from(self.waiting.len()).unwrap_or(u32::MAX)
    }

    pub fn admitted_count(&self) -> u32 {
        u32::try_from(self.admitted.len()).unwrap_or(u32::MAX)
    }

    pub fn is_admitted(&self, ticket: &str, now: i64) -> bool {
        self.admitted.get(ticket).is_some_and(|until| now < *until)
    }

    /// Drops silent places and lapsed admissions, orders the pre-sale crowd at the start,
    /// and admits as many as the rate allows. Returns whether anything changed.
    pub(crate) fn maintain(&mut self, cfg: &QueueConfig, now: i64) -> bool {
        let before = (self.waiting.len(), self.admitted.len(), self.started);
        self.admitted.retain(|_, until| now < *until);
        let ttl = cfg.place_ttl_ms;
        let len = self.waiting.len();
        self.waiting
            .retain(|p| now.saturating_sub(p.last_poll_ms) <= ttl);
        self.dropped_total += (len - self.waiting.len()) as u64;
        if now < cfg.sale_start_ms {
            return before != (self.waiting.len(), self.admitted.len(), self.started);
        }
        if !self.started {
            self.started = true;
            if cfg.mode == QueueMode::RandomBeforeStart {
                let start = cfg.sale_start_ms;
                let mut v: Vec<Place> = self.waiting.drain(..).collect();
                // Stable: pre-sale joiners shuffled first, later joiners keep arrival order.
                v.sort_by_key(|p| {
                    if p.joined_ms < start {
                        (0u8, p.shuffle_key)
                    } else {
                        (1u8, 0)
                    }
                });
                self.waiting = v.into();
            }
            // The sale opens with one second's worth of admissions available.
            self.credit_milli = bucket_cap(cfg);
            self.last_refill_ms = now;
        }
        let elapsed = now.saturating_sub(self.last_refill_ms).max(0);
        self.credit_milli = self
            .credit_milli
            .saturating_add(elapsed.saturating_mul(cfg.admission_rate_per_sec as i64))
            .min(bucket_cap(cfg));
        self.last_refill_ms = now;
        while self.credit_milli >= 1000 {
            let Some(p) = self.waiting.pop_front() else {
                break;
            };
            self.credit_milli -= 1000;
            self.admitted
                .insert(p.ticket, now.saturating_add(cfg.admitted_ttl_ms));
            self.admitted_total += 1;
        }
        // The refill alone need not be persisted: refilling from an older stored point
        // gives the same credit, because the bucket is linear up to its cap.
        before != (self.waiting.len(), self.admitted.len(), self.started)
    }

    pub(crate) fn join(
        &mut self,
        cfg: &QueueConfig,
        random: [u8; 32],
        now: i64,
    ) -> Result<QueueStatus, LedgerError> {
        let ticket = format!("q_{}", hex::encode(&random[..16]));
        if self.admitted.contains_key(&ticket) || self.waiting.iter().any(|p| p.ticket == ticket) {
            return self.poll(&ticket, now);
        }
        if self.waiting.len() >= cfg.capacity as usize {
            return Err(LedgerError::QueueFull);
        }
        let mut k = [0u8; 8];
        k.copy_from_slice(&random[16..24]);
        self.waiting.push_back(Place {
            ticket: ticket.clone(),
            joined_ms: now,
            last_poll_ms: now,
            shuffle_key: u64::from_le_bytes(k),
            durable_poll_ms: now,
        });
        // An empty room with credit left admits at once.
        self.maintain(cfg, now);
        self.poll(&ticket, now)
    }

    /// Like `poll`; also says whether this poll must be persisted (see `durable_poll_ms`).
    pub(crate) fn poll_durably(
        &mut self,
        ticket: &str,
        now: i64,
        place_ttl_ms: i64,
    ) -> Result<(QueueStatus, bool), LedgerError> {
        let status = self.poll(ticket, now)?;
        let mut durable = false;
        if let Some(p) = self.waiting.iter_mut().find(|p| p.ticket == ticket) {
            if now.saturating_sub(p.durable_poll_ms) >= place_ttl_ms / 3 {
                p.durable_poll_ms = now;
                durable = true;
            }
        }
        Ok((status, durable))
    }

    pub(crate) fn poll(&mut self, ticket: &str, now: i64) -> Result<QueueStatus, LedgerError> {
        let depth = self.depth();
        if let Some(until) = self.admitted.get(ticket).filter(|u| now < **u) {
            return Ok(QueueStatus {
                ticket: ticket.to_string(),
                position: None,
                admitted: true,
                admitted_until_ms: Some(*until),
                depth,
            });
        }
        let (i, place) = self
            .waiting
            .iter_mut()
            .enumerate()
            .find(|(_, p)| p.ticket == ticket)
            .ok_or(LedgerError::TicketNotFound)?;
        place.last_poll_ms = now;
        Ok(QueueStatus {
            ticket: ticket.to_string(),
            position: Some(u32::try_from(i + 1).unwrap_or(u32::MAX)),
            admitted: false,
            admitted_until_ms: None,
            depth,
        })
    }
}

fn bucket_cap(cfg: &QueueConfig) -> i64 {
    (cfg.admission_rate_per_sec as i64).saturating_mul(1000)
}
