//! Idempotency keys: one answer per key for 24 hours, 409 while in flight, 422 on a new body.

use super::{EventLedger, Fx, LedgerError, Reply};
use crate::error::ApiError;
use serde::{Deserialize, Serialize};

/// Completed answers are kept this long, then pruned.
pub const IDEMPOTENCY_RETENTION_MS: i64 = 24 * 3_600_000;
/// A request still "in flight" after this long is presumed dead (its Worker was reset) and
/// the next request with the key takes over.
pub const IDEMPOTENCY_IN_FLIGHT_MS: i64 = 60_000;
/// Largest stored response.
pub const MAX_RESPONSE_LEN: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IdemRecord {
    body_hash: String,
    started_ms: i64,
    /// `Some` once completed: the stored response and when.
    completed: Option<(String, i64)>,
}

/// The answer to `BeginIdempotent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IdempotencyBegin {
    /// First time: process the request, then send `CompleteIdempotent`.
    New,
    /// Already answered: send this stored response again.
    Replay { response: String },
    /// The first request is still being processed (answer 409).
    InFlight,
    /// The key was used with another body (answer 422).
    Mismatch,
}

impl IdempotencyBegin {
    /// The error to answer with, for `InFlight` and `Mismatch`.
    pub fn as_error(&self) -> Option<ApiError> {
        match self {
            IdempotencyBegin::InFlight => Some(LedgerError::IdempotencyInFlight.to_api()),
            IdempotencyBegin::Mismatch => Some(LedgerError::IdempotencyMismatch.to_api()),
            _ => None,
        }
    }
}

/// Keys are 1..=255 printable ASCII characters (the shell should prefix them with the route
/// and caller so two merchants' keys never collide).
fn check_key(key: &str) -> Result<(), LedgerError> {
    if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Ok(())
    } else {
        Err(LedgerError::InvalidId {
            field: "idempotency key",
        })
    }
}

impl EventLedger {
    pub(crate) fn begin_idempotent(
        &mut self,
        key: String,
        body_hash: String,
        now: i64,
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        check_key(&key)?;
        check_key(&body_hash)?;
        let result = match self.idempotency.get_mut(&key) {
            Some(r) if r.body_hash != body_hash => IdempotencyBegin::Mismatch,
            Some(IdemRecord {
                completed: Some((response, _)),
                ..
            }) => IdempotencyBegin::Replay {
                response: response.clone(),
            },
            Some(r) if now < r.started_ms.saturating_add(IDEMPOTENCY_IN_FLIGHT_MS) => {
                IdempotencyBegin::InFlight
            }
            Some(r) => {
                r.started_ms = now;
                fx.changed = true;
                IdempotencyBegin::New
            }
            None => {
                self.idempotency.insert(
                    key,
                    IdemRecord {
                        body_hash,
                        started_ms: now,
                        completed: None,
                    },
                );
                fx.changed = true;
                IdempotencyBegin::New
            }
        };
        Ok(Reply::Idempotency { result })
    }

    pub(crate) fn complete_idempotent(
        &mut self,
        key: &str,
        response: String,
        now: i64,
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        if response.len() > MAX_RESPONSE_LEN {
            return Err(LedgerError::InvalidHold(
                "The response to remember is too large.".into(),
            ));
        }
        let r = self
            .idempotency
            .get_mut(key)
            .ok_or(LedgerError::IdempotencyNotFound)?;
        // The first stored answer stays: a replay must always see the same response.
        if r.completed.is_none() {
            r.completed = Some((response, now));
            fx.changed = true;
        }
        Ok(Reply::Done)
    }

    pub(crate) fn abandon_idempotent(
        &mut self,
        key: &str,
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        if self
            .idempotency
            .get(key)
            .is_some_and(|r| r.completed.is_none())
        {
            self.idempotency.remove(key);
            fx.changed = true;
        }
        Ok(Reply::Done)
    }

    /// Drops records older than the retention (counted from completion, or from the start
    /// for requests that never completed).
    pub(crate) fn prune_idempotency(&mut self, now: i64, fx: &mut Fx) {
        let before = self.idempotency.len();
        self.idempotency.retain(|_, r| {
            let since = r.completed.as_ref().map_or(r.started_ms, |(_, at)| *at);
            now < since.saturating_add(IDEMPOTENCY_RETENTION_MS)
        });
        if self.idempotency.len() != before {
            fx.changed = true;
        }
    }

    /// Idempotency records currently kept.
    pub fn idempotency_records(&self) -> usize {
        self.idempotency.len()
    }

    /// Whether a record is kept for `key` (completed, or in flight however long ago).
    pub fn idempotency_kept(&self, key: &str) -> bool {
        self.idempotency.get(key).is_some()
    }
}

/// What a key's record says, without starting one (see [`EventLedger::idempotency_peek`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyPeek {
    /// Answered: the stored response, and the fingerprint it was recorded with.
    Completed { response: String, body_hash: String },
    /// A request with this key is still running.
    InFlight,
    /// No live record.
    Absent,
}

impl EventLedger {
    /// Looks a key up without recording anything: for a request that failed before it
    /// could hold stock, which must still get a completed request's answer.
    pub fn idempotency_peek(&self, key: &str, now_ms: i64) -> IdempotencyPeek {
        let now = now_ms.max(self.last_now_ms);
        match self.idempotency.get(key) {
            Some(IdemRecord {
                completed: Some((response, _)),
                body_hash,
                ..
            }) => IdempotencyPeek::Completed {
                response: response.clone(),
                body_hash: body_hash.clone(),
            },
            Some(r) if now < r.started_ms.saturating_add(IDEMPOTENCY_IN_FLIGHT_MS) => {
                IdempotencyPeek::InFlight
            }
            _ => IdempotencyPeek::Absent,
        }
    }
}
