//! Deterministic simulation of the event ledger under duplicates, lost alarms, outages and restarts.
//!
//! A fake shell drives the ledger the way the Durable Object does: whenever an outcome says
//! `changed` it writes the delta rows ([`EventLedger::take_delta`]) into a fake row store,
//! performs effects, and feeds acquirer answers back. A seeded generator injects duplicate commands, skipped alarm firings, acquirer
//! outages and lost answers, and restarts (the in-memory ledger is rebuilt from the stored
//! rows, and answers in flight are lost). After every call the rows must rebuild exactly the
//! ledger in memory: a change the delta missed fails the test. Invariants are checked after every
//! step, and again after a recovery phase in which everything must reach a final state.

use super::tests::{config, eur, hold_cmd, Rng, RowStore, T0};
use super::*;
use std::collections::{BTreeMap, BTreeSet};

const MIN: i64 = 60_000;

/// The acquirer: one decision per idempotency key, forever (as a real acquirer does).
#[derive(Default)]
struct FakeAcquirer {
    up: bool,
    /// idempotency key -> (charge id or decline, order id, amount)
    charges: BTreeMap<String, (Option<String>, String, i64)>,
    /// refund idempotency key -> (charge id, amount)
    refunds: BTreeMap<String, (String, i64)>,
    voided: BTreeSet<String>,
}

impl FakeAcquirer {
    fn charge(&mut self, key: &str, order_id: &str, amount: i64, seed: u64) -> AcquirerResult {
        if !self.up {
            return AcquirerResult::Unavailable;
        }
        let n = self.charges.len();
        let entry = self.charges.entry(key.to_string()).or_insert_with(|| {
            let decline = (seed ^ key.len() as u64)
                .wrapping_mul(n as u64 + 7)
                .is_multiple_of(5);
            let id = (!decline).then(|| format!("ch_{n}"));
            (id, order_id.to_string(), amount)
        });
        assert_eq!(entry.1, order_id, "one key, one order");
        match &entry.0 {
            Some(id) => AcquirerResult::Approved {
                charge_id: id.clone(),
            },
            None => AcquirerResult::Declined {
                reason: "do_not_honor".into(),
            },
        }
    }

    fn refund(&mut self, r: &RefundRequest) -> RefundOutcome {
        if !self.up {
            return RefundOutcome::Unavailable;
        }
        let n = self.refunds.len();
        self.refunds
            .entry(r.idempotency_key.clone())
            .or_insert_with(|| (r.charge_id.clone(), r.amount.0));
        RefundOutcome::Succeeded {
            acquirer_refund_id: format!("re_{n}_{}", r.refund_id),
        }
    }

    fn listing(&self) -> Vec<AcquirerCharge> {
        self.charges
            .iter()
            .filter_map(|(key, (id, order, amount))| {
                let id = id.clone()?;
                if self.voided.contains(&id) {
                    return None;
                }
                let refunded: i64 = self
                    .refunds
                    .values()
                    .filter(|(c, _)| *c == id)
                    .map(|(_, a)| a)
                    .sum();
                Some(AcquirerCharge {
                    id,
                    amount: MinorUnits(*amount),
                    currency: eur(),
                    status: ChargeStatus::Succeeded,
                    idempotency_key: Some(key.clone()),
                    order_id: Some(order.clone()),
                    refunded_amount: MinorUnits(refunded),
                    lane: "primary".into(),
                })
            })
            .collect()
    }
}

enum Pending {
    Forward(ForwardRequest),
    Refund(RefundRequest),
    Reconcile(ReconcileRequest),
}

struct Sim {
    ledger: EventLedger,
    /// The last persisted state (kept as a value; it goes through JSON at each restart).
    stored: RowStore,
    now: i64,
    rng: Rng,
    seed: u64,
    acq: FakeAcquirer,
    /// Acquirer calls made but whose answers have not been fed back yet.
    in_flight: Vec<Pending>,
    alarm: Option<i64>,
    /// Charge ids ever recorded per auth / order: must never change once set.
    seen_charge: BTreeMap<String, String>,
    orders_made: u32,
    restarts: u32,
    lost_alarms: u32,
    duplicates: u32,
    saves: u64,
    ambiguous: u32,
    /// The report of the last reconciliation the ledger asked for by itself.
    last_report: Option<EventReport>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut c = config();
        c.skus[0].stock = 40;
        c.skus[1].stock = 15;
        c.skus[2].stock = 60;
        c.offline.aggregate_max = MinorUnits(20_000);
        c.offline.per_card_max_count = 3;
        let mut ledger = EventLedger::new(c, T0 - MIN).unwrap();
        let mut stored = RowStore::default();
        stored.apply(ledger.take_delta().unwrap());
        Sim {
            stored,
            ledger,
            now: T0,
            rng: Rng(seed),
            seed,
            acq: FakeAcquirer {
                up: true,
                ..Default::default()
            },
            in_flight: Vec::new(),
            alarm: None,
            seen_charge: BTreeMap::new(),
            orders_made: 0,
            restarts: 0,
            lost_alarms: 0,
            duplicates: 0,
            saves: 0,
            ambiguous: 0,
            last_report: None,
        }
    }

    /// One call through the fake shell: handle, persist if changed, collect effects.
    fn call(&mut self, cmd: Command) -> Result<Reply, LedgerError> {
        let entropy = self.rng.bytes8();
        let out = self.ledger.handle(cmd, self.now, entropy);
        if out.changed {
            self.stored.apply(self.ledger.take_delta().unwrap());
            // Right after a save, the rows must rebuild exactly the ledger in memory. (A
            // command that changes nothing may still move the clock fields in memory.)
            // Checked on every 32nd save and at every restart, to keep the test quick.
            self.saves += 1;
            if self.saves.is_multiple_of(32) {
                self.check_rows();
            }
        }
        for e in out.effects {
            match e {
                Effect::SetAlarm { at_ms } => self.alarm = Some(at_ms),
                Effect::Forward(f) => self.in_flight.push(Pending::Forward(f)),
                Effect::ForwardRefund(r) => self.in_flight.push(Pending::Refund(r)),
                Effect::PurgeSealed { auth_id } => {
                    let a = self.ledger.auth(&auth_id).unwrap();
                    assert!(a.sealed_card.is_none() && a.state != AuthState::Queued);
                }
                Effect::Notify { .. } => {}
                Effect::Reconcile(r) => self.in_flight.push(Pending::Reconcile(r)),
            }
        }
        self.check();
        out.reply
    }

    /// Sends a command, sometimes twice (a retried request).
    fn call_maybe_twice(&mut self, cmd: Command) -> Result<Reply, LedgerError> {
        let first = self.call(cmd.clone());
        if self.rng.below(4) == 0 {
            self.duplicates += 1;
            let second = self.call(cmd);
            // A repeat never turns a success into something else.
            if let (Ok(a), Ok(b)) = (&first, &second) {
                assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b));
            }
        }
        first
    }

    fn check(&mut self) {
        let l = &self.ledger;
        if let Err(e) = l.check_invariants() {
            panic!("seed {}: invariant broken: {e}", self.seed);
        }
        assert!(l.offline_exposure() <= l.config().offline.aggregate_max);
        for a in l.auths() {
            if let AuthState::Forwarded { charge_id } = &a.state {
                let was = self
                    .seen_charge
                    .entry(a.auth_id.clone())
                    .or_insert(charge_id.clone());
                assert_eq!(
                    was, charge_id,
                    "seed {}: auth {} charged twice",
                    self.seed, a.auth_id
                );
            }
        }
        for o in l.orders() {
            if let Some(c) = &o.charge_id {
                let key = format!("order:{}", o.order_id);
                let was = self.seen_charge.entry(key).or_insert(c.clone());
                assert_eq!(
                    was, c,
                    "seed {}: order {} got a second charge",
                    self.seed, o.order_id
                );
            }
        }
    }

    fn checkout(&mut self) {
        let id = format!("o{}", self.orders_made);
        self.orders_made += 1;
        let skus = ["ticket", "shirt", "beer"];
        let n = 1 + self.rng.below(2) as usize;
        let lines: Vec<(&str, u32)> = (0..n)
            .map(|_| {
                (
                    skus[self.rng.below(3) as usize],
                    1 + self.rng.below(3) as u32,
                )
            })
            .collect();
        let expires = self.now + 30_000 + self.rng.below(5 * MIN as u64) as i64;
        let Ok(Reply::Order { order }) = self.call_maybe_twice(hold_cmd(&id, &lines, expires))
        else {
            return;
        };
        // Sometimes the buyer walks away and the hold lapses.
        if self.rng.below(8) == 0 {
            return;
        }
        let key = format!("idem-{id}");
        if self.acq.up && self.rng.below(6) == 0 {
            // The acquirer got the request and decided, but its answer never came back (a
            // timeout): the shell stores the payment to complete it with the same key.
            let _ = self.acq.charge(&key, &id, order.total.0, self.seed);
            self.ambiguous += 1;
            let cmd = Command::QueueAuthorization(QueueAuth {
                auth_id: format!("a_{id}"),
                order_id: id.clone(),
                amount: order.total,
                currency: eur(),
                card_fingerprint: format!("card{}", self.rng.below(6)),
                sealed_card: SealedCard(format!("sealed:{id}")),
                idempotency_key: key,
                max_wait_ms: (10 + self.rng.below(50) as i64) * MIN,
                lane: None,
                resolves_attempt: true,
                confirm_first: false,
                attempt_out: false,
            });
            // Never refused for budget reasons: the payment may already be made.
            let r = self.call_maybe_twice(cmd);
            assert!(
                !matches!(r, Err(LedgerError::OfflineLimit(_))),
                "seed {}: a payment of unknown outcome was refused: {r:?}",
                self.seed
            );
        } else if self.acq.up {
            let result = self.acq.charge(&key, &id, order.total.0, self.seed);
            let cmd = match result {
                AcquirerResult::Approved { charge_id } => Command::Confirm {
                    order_id: id.clone(),
                    charge_id,
                    lane: None,
                },
                _ => Command::Release {
                    order_id: id.clone(),
                    reason: "declined".into(),
                },
            };
            if let Err(LedgerError::HoldLapsed(_)) = self.call_maybe_twice(cmd.clone()) {
                if let Command::Confirm { charge_id, .. } = cmd {
                    self.acq.voided.insert(charge_id);
                }
            }
        } else {
            let card = format!("card{}", self.rng.below(6));
            let cmd = Command::QueueAuthorization(QueueAuth {
                auth_id: format!("a_{id}"),
                order_id: id.clone(),
                amount: order.total,
                currency: eur(),
                card_fingerprint: card,
                sealed_card: SealedCard(format!("sealed:{id}")),
                idempotency_key: key,
                max_wait_ms: (10 + self.rng.below(50) as i64) * MIN,
                lane: None,
                resolves_attempt: false,
                confirm_first: false,
                attempt_out: false,
            });
            if self.call_maybe_twice(cmd).is_err() {
                // Over budget: the shell declines the sale.
                let _ = self.call(Command::Release {
                    order_id: id,
                    reason: "offline_limit".into(),
                });
            }
        }
    }

    fn refund_something(&mut self) {
        let captured: Vec<(String, i64)> = self
            .ledger
            .orders()
            .filter(|o| o.state.is_captured())
            .map(|o| (o.order_id.clone(), o.total.0))
            .collect();
        if captured.is_empty() {
            return;
        }
        let (order_id, total) = captured[self.rng.below(captured.len() as u64) as usize].clone();
        let amount = match self.rng.below(3) {
            0 => None,
            _ => Some(MinorUnits(1 + self.rng.below(total as u64) as i64)),
        };
        let rule = RefundRule {
            allowed: true,
            window_ms: 24 * 60 * MIN,
            partial_allowed: true,
            may_queue_offline: self.rng.below(3) != 0,
        };
        let refund_id = format!("r{}", self.rng.next() % 1_000_000);
        let _ = self.call_maybe_twice(Command::RequestRefund {
            refund_id,
            order_id,
            amount,
            rule,
            acquirer_online: self.acq.up,
        });
    }

    /// Performs some acquirer calls and feeds their answers back (some lost, some twice).
    fn deliver(&mut self, lossy: bool) {
        let mut calls = std::mem::take(&mut self.in_flight);
        while let Some(p) = calls.pop() {
            if lossy && self.rng.below(3) == 0 {
                // Keep it for later.
                self.in_flight.push(p);
                continue;
            }
            let cmd = match &p {
                Pending::Forward(f) => {
                    assert!(f.sealed_card.0.starts_with("sealed:"));
                    let result =
                        self.acq
                            .charge(&f.idempotency_key, &f.order_id, f.amount.0, self.seed);
                    Command::ForwardResult {
                        auth_id: f.auth_id.clone(),
                        result,
                    }
                }
                Pending::Refund(r) => Command::RefundResult {
                    refund_id: r.refund_id.clone(),
                    result: self.acq.refund(r),
                },
                Pending::Reconcile(r) if self.acq.up => Command::Reconcile {
                    charges: self.acq.listing(),
                    listing: Listing {
                        since_ms: r.since_ms,
                        started_ms: self.now,
                        truncated: false,
                    },
                    reason: r.reason,
                },
                Pending::Reconcile(_) => Command::ReconcileFailed {
                    reason: "acquirer_unavailable".into(),
                },
            };
            if lossy && self.rng.below(10) == 0 {
                continue; // The answer is lost (the call happened).
            }
            let reply = if lossy {
                self.call_maybe_twice(cmd)
            } else {
                self.call(cmd)
            };
            if let Ok(Reply::Reconciled { result }) = reply {
                self.last_report = Some(result.report);
            }
        }
    }

    /// The stored rows rebuild exactly the ledger in memory (call right after a save).
    fn check_rows(&self) {
        assert_eq!(
            self.stored.load(),
            self.ledger,
            "seed {}: the stored rows differ from the ledger in memory",
            self.seed
        );
    }

    fn restart(&mut self) {
        self.restarts += 1;
        self.ledger = self.stored.load();
        // Answers the old instance was waiting for are gone.
        self.in_flight.clear();
        self.check();
    }

    fn step(&mut self) {
        self.now += self.rng.below(8_000) as i64;
        if self.rng.below(25) == 0 {
            self.acq.up = !self.acq.up;
        }
        match self.rng.below(20) {
            0..=8 => self.checkout(),
            9..=10 => self.refund_something(),
            11..=13 => self.deliver(true),
            14 => {
                let _ = self.call(Command::SyncNow);
            }
            15 => self.restart(),
            _ => {}
        }
        if let Some(at) = self.alarm.filter(|at| *at <= self.now) {
            self.alarm = None;
            if self.rng.below(4) == 0 {
                self.lost_alarms += 1; // The firing is lost.
            } else {
                let _ = self.call(Command::Alarm);
            }
            let _ = at;
        }
    }

    /// The acquirer is back, nothing is lost: alarms run until nothing waits on time,
    /// which is past the event's end and its end-of-event reconciliation.
    fn recover(&mut self) {
        self.acq.up = true;
        self.restart();
        self.run_alarms();
        // Past every hold.
        self.now += 31 * MIN;
        let _ = self.call(Command::Alarm);
        self.run_alarms();
    }

    fn run_alarms(&mut self) {
        for _ in 0..500 {
            self.deliver(false);
            let Some(at) = self.ledger.next_deadline() else {
                break;
            };
            self.now = self.now.max(at);
            let _ = self.call(Command::Alarm);
        }
        self.deliver(false);
    }
}

#[test]
fn simulation_keeps_invariants_through_faults_and_recovers_to_final_states() {
    let mut totals = (0u32, 0u32, 0u32, 0u32, 0u32);
    let mut ambiguous = 0u32;
    let mut late = 0u32;
    for seed in 1..=20u64 {
        let mut sim = Sim::new(seed);
        for _ in 0..500 {
            sim.step();
        }
        sim.recover();
        let l = &sim.ledger;
        for o in l.orders() {
            assert!(
                o.state.is_final(),
                "seed {seed}: order {} left {:?}",
                o.order_id,
                o.state
            );
        }
        for a in l.auths() {
            assert!(
                a.state != AuthState::Queued,
                "seed {seed}: auth {} still queued",
                a.auth_id
            );
            assert!(a.sealed_card.is_none());
        }
        let json = sim.stored.dump();
        assert!(
            !json.contains("sealed:"),
            "seed {seed}: a sealed card survived"
        );
        assert!(
            l.next_deadline().is_none(),
            "seed {seed}: work left after recovery"
        );
        assert_eq!(l.queued_exposure(), MinorUnits::ZERO);
        for r in ["r"]
            .iter()
            .flat_map(|_| l.orders())
            .filter_map(|o| o.auth_id.clone())
        {
            let _ = r;
        }
        // The books agree with the acquirer: the ledger reconciled by itself at the end,
        // and charges the acquirer made for stored payments the edge had given up on
        // (expired) were folded in as late approvals.
        let report = l.reconcile(&sim.acq.listing());
        assert!(report.is_clean(), "seed {seed}: {report:?}");
        assert!(report.awaiting_forward.is_empty());
        let last = sim
            .last_report
            .as_ref()
            .expect("the ledger reconciled by itself");
        assert!(
            last.clean && last.end_of_event,
            "seed {seed}: the end-of-event report {last:?}"
        );
        assert_eq!(last.totals.paid_orders, report.matched.len() as u32);
        late += l.auths().filter(|a| a.late_approval).count() as u32;
        // Every order that reached the acquirer at most once.
        let mut per_order: BTreeMap<&str, u32> = BTreeMap::new();
        for (id, order, _) in sim.acq.charges.values() {
            if id.is_some() {
                *per_order.entry(order.as_str()).or_default() += 1;
            }
        }
        assert!(per_order.values().all(|n| *n == 1));
        // And the state still round-trips after all that.
        assert_eq!(&EventLedger::from_json(&l.to_json().unwrap()).unwrap(), l);
        let forwarded = l
            .auths()
            .filter(|a| matches!(a.state, AuthState::Forwarded { .. }))
            .count();
        totals.0 += sim.restarts;
        totals.1 += sim.lost_alarms;
        totals.2 += sim.duplicates;
        totals.3 += forwarded as u32;
        totals.4 += l.orders().filter(|o| o.refunded.0 > 0).count() as u32;
        ambiguous += sim.ambiguous;
    }
    eprintln!("sim totals (restarts, lost alarms, duplicates, forwarded, refunded): {totals:?}");
    // The faults really happened (the test would be vacuous otherwise).
    let (restarts, lost, dups, forwarded, refunded) = totals;
    assert!(restarts > 100 && lost > 20 && dups > 500, "{totals:?}");
    assert!(forwarded > 30 && refunded > 30, "{totals:?}");
    // Lost answers from the acquirer happened too, and (checked per seed above) none of
    // those payments was charged twice.
    assert!(ambiguous > 50, "ambiguous attempts: {ambiguous}");
    eprintln!("late approvals folded in by reconciliation: {late}");
}
