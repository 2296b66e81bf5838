//! Row layout of a ledger in storage: a small head, the waiting room, one row per record.
//!
//! An event with a thousand orders must not rewrite a thousand orders to take one more.
//! The shell stores:
//! - `head`: configuration, stock counts, pending holds, the waiting room's admission
//!   meter and counters (a few KB, rewritten on every change);
//! - `queue`: who waits and who is admitted, rewritten only when that changed (a poll
//!   that only refreshes a place is written every third of the place TTL, see
//!   `queue::Place::durable_poll_ms`);
//! - one row per order, stored payment, refund and idempotency record, keyed by
//!   `(kind, id)`, written only when that record changed ([`Delta::rows`]; `data: None`
//!   means delete).
//!
//! [`EventLedger::take_delta`] returns what to write after a command; write it in one
//! transaction. [`EventLedger::from_rows`] rebuilds the ledger from everything stored.

use super::queue::{QueueMembers, QueueMeter};
use super::{EventLedger, LedgerError, SkuCounts, Tracked, Unsaved, WaitingQueue};
use crate::ledger::{EventConfig, Order, ReconSchedule, Refund, StoredAuth};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One record row to upsert (`data: Some`) or delete (`data: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRow {
    pub kind: &'static str,
    pub id: String,
    pub data: Option<String>,
}

/// What changed since the last save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub head: String,
    /// The waiting room, when it changed.
    pub queue: Option<String>,
    pub rows: Vec<DeltaRow>,
}

pub const KIND_ORDER: &str = "order";
pub const KIND_AUTH: &str = "auth";
pub const KIND_REFUND: &str = "refund";
pub const KIND_IDEMPOTENCY: &str = "idem";

#[derive(Serialize)]
struct HeadRef<'a> {
    config: &'a EventConfig,
    counts: &'a BTreeMap<String, SkuCounts>,
    holds: &'a BTreeMap<String, i64>,
    queue_meter: QueueMeter,
    next_receipt: u64,
    last_now_ms: i64,
    alarm_at_ms: Option<i64>,
    recon: &'a ReconSchedule,
}

#[derive(Deserialize)]
struct Head {
    config: EventConfig,
    counts: BTreeMap<String, SkuCounts>,
    holds: BTreeMap<String, i64>,
    queue_meter: QueueMeter,
    next_receipt: u64,
    last_now_ms: i64,
    alarm_at_ms: Option<i64>,
    /// Absent in heads written before reconciliation ran by itself.
    #[serde(default)]
    recon: ReconSchedule,
}

fn encode<T: Serialize>(v: &T) -> Result<String, LedgerError> {
    serde_json::to_string(v).map_err(|_| LedgerError::StateCorrupt)
}

fn rows_of<V: Serialize>(
    kind: &'static str,
    map: &mut Tracked<V>,
    out: &mut Vec<DeltaRow>,
) -> Result<(), LedgerError> {
    for (id, v) in map.take_changes() {
        let data = v.map(encode).transpose()?;
        out.push(DeltaRow { kind, id, data });
    }
    Ok(())
}

fn decode<V: for<'de> Deserialize<'de>>(s: &str) -> Result<V, LedgerError> {
    serde_json::from_str(s).map_err(|_| LedgerError::StateCorrupt)
}

impl EventLedger {
    /// The rows to write after a change (the head always; the queue and records only when
    /// they changed), and forgets the pending changes.
    pub fn take_delta(&mut self) -> Result<Delta, LedgerError> {
        let head = encode(&HeadRef {
            config: &self.config,
            counts: &self.counts,
            holds: &self.holds,
            queue_meter: self.queue.meter(),
            next_receipt: self.next_receipt,
            last_now_ms: self.last_now_ms,
            alarm_at_ms: self.alarm_at_ms,
            recon: &self.recon,
        })?;
        let queue = if self.queue_dirty.0 {
            Some(encode(&self.queue.members())?)
        } else {
            None
        };
        let mut rows = Vec::new();
        rows_of(KIND_ORDER, &mut self.orders, &mut rows)?;
        rows_of(KIND_AUTH, &mut self.auths, &mut rows)?;
        rows_of(KIND_REFUND, &mut self.refunds, &mut rows)?;
        rows_of(KIND_IDEMPOTENCY, &mut self.idempotency, &mut rows)?;
        self.queue_dirty = Unsaved(false);
        Ok(Delta { head, queue, rows })
    }

    /// Everything, as if every record had changed (moving from an older storage layout).
    pub fn full_delta(&mut self) -> Result<Delta, LedgerError> {
        self.orders.mark_all();
        self.auths.mark_all();
        self.refunds.mark_all();
        self.idempotency.mark_all();
        self.queue_dirty = Unsaved(true);
        self.take_delta()
    }

    /// Rebuilds a ledger from its stored head, waiting room and `(kind, id, data)` record rows.
    /// Unknown kinds are refused: they mean the storage is newer than this code.
    pub fn from_rows<'a>(
        head: &str,
        queue: Option<&str>,
        rows: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> Result<EventLedger, LedgerError> {
        let h: Head = decode(head)?;
        let members: Option<QueueMembers> = queue.map(decode).transpose()?;
        let queue = WaitingQueue::from_parts(h.queue_meter, members);
        let mut orders: Vec<(String, Order)> = Vec::new();
        let mut auths: Vec<(String, StoredAuth)> = Vec::new();
        let mut refunds: Vec<(String, Refund)> = Vec::new();
        // Rows come keyed by the map key they were saved under.
        let mut idem = Vec::new();
        for (kind, id, data) in rows {
            let id = id.to_string();
            match kind {
                KIND_ORDER => orders.push((id, decode(data)?)),
                KIND_AUTH => auths.push((id, decode(data)?)),
                KIND_REFUND => refunds.push((id, decode(data)?)),
                KIND_IDEMPOTENCY => {
                    idem.push((id, decode::<super::idempotency::IdemRecord>(data)?))
                }
                _ => return Err(LedgerError::StateCorrupt),
            }
        }
        Ok(EventLedger {
            config: h.config,
            counts: h.counts,
            orders: Tracked::from_rows(orders),
            holds: h.holds,
            auths: Tracked::from_rows(auths),
            refunds: Tracked::from_rows(refunds),
            idempotency: Tracked::from_rows(idem),
            queue,
            queue_dirty: Unsaved(false),
            next_receipt: h.next_receipt,
            last_now_ms: h.last_now_ms,
            alarm_at_ms: h.alarm_at_ms,
            recon: h.recon,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{config, hold_cmd, ok, queue_cmd, T0};
    use super::*;
    use crate::ledger::Command;
    use std::collections::BTreeMap;

    const MIN: i64 = 60_000;

    type Rows = BTreeMap<(&'static str, String), String>;

    fn apply(rows: &mut Rows, d: &Delta) {
        for r in &d.rows {
            match &r.data {
                Some(data) => rows.insert((r.kind, r.id.clone()), data.clone()),
                None => rows.remove(&(r.kind, r.id.clone())),
            };
        }
    }

    fn load(head: &str, queue: Option<&str>, rows: &Rows) -> Result<EventLedger, LedgerError> {
        EventLedger::from_rows(
            head,
            queue,
            rows.iter()
                .map(|((k, id), d)| (*k, id.as_str(), d.as_str())),
        )
    }

    fn checkout(l: &mut EventLedger, i: u32, now: i64) {
        let order = format!("o{i}");
        ok(l, hold_cmd(&order, &[("beer", 1)], now + MIN), now);
        ok(
            l,
            Command::BeginIdempotent {
                key: format!("k{i}"),
                body_hash: "h".into(),
            },
            now,
        );
        ok(
            l,
            Command::Confirm {
                order_id: order,
                charge_id: format!("ch_{i}"),
                lane: None,
            },
            now,
        );
        ok(
            l,
            Command::CompleteIdempotent {
                key: format!("k{i}"),
                response: format!("{{\"receipt\":\"{}\"}}", "x".repeat(1500)),
            },
            now,
        );
    }

    #[test]
    fn rows_rebuild_the_ledger_and_each_delta_carries_only_what_changed() {
        let mut c = config();
        c.skus[2].stock = 10_000;
        let mut l = EventLedger::new(c, T0 - MIN).unwrap();
        let mut rows = Rows::new();
        let first = l.full_delta().unwrap();
        assert!(first.queue.is_some() && first.rows.is_empty());
        let mut queue = first.queue.clone();
        let mut head = first.head;
        for i in 0..1000 {
            checkout(&mut l, i, T0 + i64::from(i));
            let d = l.take_delta().unwrap();
            apply(&mut rows, &d);
            head = d.head;
            queue = d.queue.or(queue);
        }
        assert_eq!(load(&head, queue.as_deref(), &rows).unwrap(), l);

        // One more checkout on an event with a thousand orders writes one order and one
        // idempotency record, and a head of a few KB; the whole state is far larger.
        checkout(&mut l, 1000, T0 + 2000);
        let d = l.take_delta().unwrap();
        let kinds: Vec<(&str, &str)> = d.rows.iter().map(|r| (r.kind, r.id.as_str())).collect();
        assert_eq!(
            kinds,
            vec![(KIND_ORDER, "o1000"), (KIND_IDEMPOTENCY, "k1000")]
        );
        assert!(d.queue.is_none(), "the waiting room did not change");
        let written: usize = d.head.len()
            + d.rows
                .iter()
                .filter_map(|r| r.data.as_ref())
                .map(String::len)
                .sum::<usize>();
        let whole = l.to_json().unwrap().len();
        assert!(written < 6_000, "wrote {written} bytes");
        assert!(
            whole > 100 * written,
            "whole state {whole} vs delta {written}"
        );
        apply(&mut rows, &d);
        assert_eq!(load(&d.head, queue.as_deref(), &rows).unwrap(), l);
    }

    #[test]
    fn removals_queue_changes_and_a_legacy_state_move_to_rows() {
        let mut l = EventLedger::new(config(), T0 - MIN).unwrap();
        ok(&mut l, hold_cmd("o1", &[("shirt", 1)], T0 + MIN), T0);
        ok(&mut l, queue_cmd("a1", "o1", 2000, "card_x"), T0 + 1);
        ok(&mut l, Command::JoinQueue { random: [5; 32] }, T0 + 2);
        // A state saved by the old single-document layout moves to rows in full.
        let legacy = EventLedger::from_json(&l.to_json().unwrap()).unwrap();
        let mut moved = legacy.clone();
        let d = moved.full_delta().unwrap();
        let mut rows = Rows::new();
        apply(&mut rows, &d);
        assert_eq!(rows.len(), 2, "one order and one stored payment");
        let rebuilt = load(&d.head, d.queue.as_deref(), &rows).unwrap();
        assert_eq!(rebuilt, l);

        // Joining the queue writes the queue row; idempotency records that lapse are deleted.
        let mut l = rebuilt;
        ok(
            &mut l,
            Command::BeginIdempotent {
                key: "k".into(),
                body_hash: "h".into(),
            },
            T0 + 3,
        );
        let _ = l.take_delta().unwrap();
        ok(&mut l, Command::JoinQueue { random: [6; 32] }, T0 + 4);
        assert!(l.take_delta().unwrap().queue.is_some());
        let later = T0 + 3 + crate::ledger::IDEMPOTENCY_RETENTION_MS + 1;
        ok(&mut l, Command::SyncNow, later);
        let d = l.take_delta().unwrap();
        assert!(d
            .rows
            .iter()
            .any(|r| r.kind == KIND_IDEMPOTENCY && r.id == "k" && r.data.is_none()));
    }

    #[test]
    fn unreadable_rows_are_an_error_not_a_panic() {
        let mut l = EventLedger::new(config(), T0).unwrap();
        let d = l.full_delta().unwrap();
        let bad = |rows: Vec<(&'static str, &'static str, &'static str)>| {
            EventLedger::from_rows(&d.head, d.queue.as_deref(), rows).is_err()
        };
        assert!(bad(vec![("order", "o1", "{")]));
        assert!(bad(vec![("mystery", "x", "{}")]));
        assert!(EventLedger::from_rows("{}", None, Vec::new()).is_err());
        assert!(!bad(vec![]));
    }
}
