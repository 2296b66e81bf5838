//! Unit tests of the event ledger.

use super::*;
use crate::money::Currency;
use std::collections::BTreeMap;

/// The Durable Object's tables, in memory: head, waiting room, one row per record.
#[derive(Default, Clone)]
pub(crate) struct RowStore {
    head: String,
    queue: Option<String>,
    rows: BTreeMap<(&'static str, String), String>,
}

impl RowStore {
    pub(crate) fn apply(&mut self, d: Delta) {
        self.head = d.head;
        if let Some(q) = d.queue {
            self.queue = Some(q);
        }
        for r in d.rows {
            match r.data {
                Some(data) => self.rows.insert((r.kind, r.id), data),
                None => self.rows.remove(&(r.kind, r.id)),
            };
        }
    }

    pub(crate) fn load(&self) -> EventLedger {
        EventLedger::from_rows(
            &self.head,
            self.queue.as_deref(),
            self.rows
                .iter()
                .map(|((k, id), d)| (*k, id.as_str(), d.as_str())),
        )
        .unwrap()
    }

    pub(crate) fn dump(&self) -> String {
        let rows: Vec<&str> = self.rows.values().map(String::as_str).collect();
        format!("{}{:?}{}", self.head, self.queue, rows.concat())
    }
}

pub(crate) const T0: i64 = 1_800_000_000_000;
const MIN: i64 = 60_000;

pub(crate) fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

pub(crate) fn config() -> EventConfig {
    EventConfig {
        event_id: "evt_1".into(),
        merchant_id: "m_1".into(),
        title: "Night market".into(),
        jurisdiction: "DE".into(),
        currency: eur(),
        start_ms: T0,
        end_ms: T0 + 24 * 60 * MIN,
        skus: vec![
            Sku {
                id: "ticket".into(),
                name: "Entry".into(),
                category: Category::Ticket,
                price: MinorUnits(1500),
                stock: 10,
                max_per_order: None,
            },
            Sku {
                id: "shirt".into(),
                name: "T-shirt".into(),
                category: Category::Merchandise,
                price: MinorUnits(2000),
                stock: 5,
                max_per_order: None,
            },
            Sku {
                id: "beer".into(),
                name: "Beer".into(),
                category: Category::FoodDrink,
                price: MinorUnits(450),
                stock: 100,
                max_per_order: None,
            },
        ],
        allowed_origins: vec![
            "https://shop.example".into(),
            "http://localhost:8787".into(),
        ],
        queue: QueueConfig {
            required: false,
            mode: QueueMode::Fifo,
            sale_start_ms: T0,
            capacity: 100,
            admission_rate_per_sec: 2,
            place_ttl_ms: 30_000,
            admitted_ttl_ms: 10 * MIN,
        },
        offline: OfflineBudget {
            per_transaction_max: MinorUnits(5000),
            aggregate_max: MinorUnits(10_000),
            per_card_max_count: 2,
            per_card_window_ms: 60 * MIN,
            unknown_max: None,
        },
        policy_revision: Some("rev-7".into()),
    }
}

pub(crate) fn ledger() -> EventLedger {
    EventLedger::new(config(), T0 - 60 * MIN).unwrap()
}

pub(crate) fn run(l: &mut EventLedger, cmd: Command, now: i64) -> Outcome {
    l.handle(cmd, now, [7; 8])
}

pub(crate) fn ok(l: &mut EventLedger, cmd: Command, now: i64) -> Reply {
    let out = run(l, cmd, now);
    match out.reply {
        Ok(r) => r,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err(l: &mut EventLedger, cmd: Command, now: i64) -> LedgerError {
    run(l, cmd, now).reply.unwrap_err()
}

pub(crate) fn hold_cmd(order_id: &str, lines: &[(&str, u32)], expires_ms: i64) -> Command {
    Command::Hold {
        order_id: order_id.into(),
        lines: lines
            .iter()
            .map(|(s, q)| LineRequest {
                sku: s.to_string(),
                qty: *q,
            })
            .collect(),
        expires_ms,
        buyer_email: Some("ana@example.org".into()),
        lane: "primary".into(),
        charge_total: None,
        admission_ticket: None,
        holder: None,
    }
}

pub(crate) fn queue_cmd(auth: &str, order: &str, amount: i64, card: &str) -> Command {
    Command::QueueAuthorization(QueueAuth {
        auth_id: auth.into(),
        order_id: order.into(),
        amount: MinorUnits(amount),
        currency: eur(),
        card_fingerprint: card.into(),
        sealed_card: SealedCard(format!("sealed-{auth}-ciphertext")),
        idempotency_key: format!("idem-{auth}"),
        max_wait_ms: 60 * MIN,
        lane: None,
        resolves_attempt: false,
        confirm_first: false,
        attempt_out: false,
    })
}

fn order_of(r: Reply) -> Order {
    match r {
        Reply::Order { order } => order,
        other => panic!("expected an order, got {other:?}"),
    }
}

fn forwards(out: &Outcome) -> Vec<ForwardRequest> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Forward(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn refund_forwards(out: &Outcome) -> Vec<RefundRequest> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::ForwardRefund(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn rule() -> RefundRule {
    RefundRule {
        allowed: true,
        window_ms: 14 * 24 * 60 * MIN,
        partial_allowed: true,
        may_queue_offline: true,
    }
}

fn refund_cmd(
    id: &str,
    order: &str,
    amount: Option<i64>,
    rule: RefundRule,
    online: bool,
) -> Command {
    Command::RequestRefund {
        refund_id: id.into(),
        order_id: order.into(),
        amount: amount.map(MinorUnits),
        rule,
        acquirer_online: online,
    }
}

// ---------- configuration ----------

#[test]
fn valid_config_is_accepted_and_bad_fields_are_named() {
    assert!(config().validate().is_ok());
    type Mutate = Box<dyn Fn(&mut EventConfig)>;
    let cases: Vec<(&str, Mutate)> = vec![
        ("event_id", Box::new(|c| c.event_id = "bad id".into())),
        ("title", Box::new(|c| c.title = "  ".into())),
        ("jurisdiction", Box::new(|c| c.jurisdiction = "de".into())),
        ("end_ms", Box::new(|c| c.end_ms = c.start_ms)),
        ("skus", Box::new(|c| c.skus.clear())),
        ("skus[1].id", Box::new(|c| c.skus[1].id = "ticket".into())),
        (
            "skus[0].price",
            Box::new(|c| c.skus[0].price = MinorUnits(0)),
        ),
        (
            "skus[2].stock",
            Box::new(|c| c.skus[2].stock = MAX_STOCK_PLUS),
        ),
        (
            "allowed_origins[0]",
            Box::new(|c| c.allowed_origins[0] = "https://shop.example/path".into()),
        ),
        (
            "allowed_origins[1]",
            Box::new(|c| c.allowed_origins[1] = "http://evil.example".into()),
        ),
        ("queue.capacity", Box::new(|c| c.queue.capacity = 0)),
        (
            "queue.admission_rate_per_sec",
            Box::new(|c| c.queue.admission_rate_per_sec = 0),
        ),
        (
            "queue.place_ttl_ms",
            Box::new(|c| c.queue.place_ttl_ms = 10),
        ),
        (
            "offline.aggregate_max",
            Box::new(|c| c.offline.aggregate_max = MinorUnits(1)),
        ),
        (
            "offline.per_card_max_count",
            Box::new(|c| c.offline.per_card_max_count = 0),
        ),
        (
            "policy_revision",
            Box::new(|c| c.policy_revision = Some(String::new())),
        ),
    ];
    for (field, mutate) in cases {
        let mut c = config();
        mutate(&mut c);
        match c.validate() {
            Err(LedgerError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        }
        let api = c.validate().unwrap_err().to_api();
        assert_eq!(api.status, 422);
        assert_eq!(api.code, "invalid_event_config");
        assert!(api.message.contains(field), "{}", api.message);
        assert!(EventLedger::new(c, T0).is_err());
    }
    assert!(config().origin_allowed("https://shop.example"));
    assert!(!config().origin_allowed("https://shop.example.evil"));
}

const MAX_STOCK_PLUS: u32 = 1_000_001;

#[test]
fn update_config_keeps_sold_stock_and_budget_consistent() {
    let mut l = ledger();
    ok(&mut l, hold_cmd("o1", &[("shirt", 3)], T0 + MIN), T0);
    let mut c = config();
    c.skus[1].stock = 2;
    assert!(matches!(
        err(&mut l, Command::UpdateConfig { config: c }, T0),
        LedgerError::InvalidConfig { .. }
    ));
    let mut c = config();
    c.skus.remove(1);
    assert!(matches!(
        err(&mut l, Command::UpdateConfig { config: c }, T0),
        LedgerError::InvalidConfig { .. }
    ));
    let mut c = config();
    c.skus[1].stock = 8;
    c.skus[1].price = MinorUnits(2500);
    ok(&mut l, Command::UpdateConfig { config: c }, T0);
    assert_eq!(l.available("shirt"), 5);
    // The held order keeps the price it was held at.
    assert_eq!(l.order("o1").unwrap().total, MinorUnits(6000));
    l.check_invariants().unwrap();
}

// ---------- persistence ----------

#[test]
fn state_round_trips_exactly_and_continues_after_restart() {
    let mut l = ledger();
    ok(
        &mut l,
        hold_cmd("o1", &[("ticket", 2), ("beer", 1)], T0 + 5 * MIN),
        T0,
    );
    ok(&mut l, hold_cmd("o2", &[("shirt", 1)], T0 + 5 * MIN), T0);
    ok(&mut l, queue_cmd("a2", "o2", 2000, "card_x"), T0 + 1);
    ok(&mut l, hold_cmd("o3", &[("beer", 2)], T0 + 5 * MIN), T0 + 2);
    ok(
        &mut l,
        Command::Confirm {
            order_id: "o3".into(),
            charge_id: "ch_3".into(),
            lane: None,
        },
        T0 + 3,
    );
    ok(
        &mut l,
        refund_cmd("r1", "o3", Some(100), rule(), false),
        T0 + 4,
    );
    ok(
        &mut l,
        Command::BeginIdempotent {
            key: "k1".into(),
            body_hash: "h1".into(),
        },
        T0 + 5,
    );
    ok(
        &mut l,
        Command::CompleteIdempotent {
            key: "k1".into(),
            response: "{\"ok\":true}".into(),
        },
        T0 + 6,
    );
    ok(&mut l, Command::JoinQueue { random: [3; 32] }, T0 - 5_000);
    let json = l.to_json().unwrap();
    let restored = EventLedger::from_json(&json).unwrap();
    assert_eq!(restored, l);
    assert_eq!(restored.to_json().unwrap(), json);

    // Both copies answer the same commands the same way.
    let mut a = l;
    let mut b = restored;
    let cmds = vec![
        (Command::Alarm, T0 + 10 * MIN),
        (
            Command::ForwardResult {
                auth_id: "a2".into(),
                result: AcquirerResult::Approved {
                    charge_id: "ch_2".into(),
                },
            },
            T0 + 10 * MIN + 5,
        ),
        (
            hold_cmd("o4", &[("ticket", 8)], T0 + 20 * MIN),
            T0 + 11 * MIN,
        ),
        (Command::SyncNow, T0 + 12 * MIN),
    ];
    for (cmd, now) in cmds {
        assert_eq!(run(&mut a, cmd.clone(), now), run(&mut b, cmd, now));
        assert_eq!(a, b);
    }
    assert_eq!(a.order("o1").unwrap().state, OrderState::Abandoned);
    assert_eq!(a.order("o2").unwrap().state, OrderState::Forwarded);
    a.check_invariants().unwrap();
}

#[test]
fn state_splits_into_chunks_at_character_boundaries() {
    let mut c = config();
    c.title = "Nachtmarkt Köln — 夜市".into();
    let mut l = EventLedger::new(c, T0).unwrap();
    ok(&mut l, hold_cmd("o1", &[("beer", 1)], T0 + MIN), T0);
    let chunks = l.to_json_chunks(7).unwrap();
    assert!(chunks.len() > 10);
    assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= 7));
    assert_eq!(chunks.concat(), l.to_json().unwrap());
    assert_eq!(EventLedger::from_json_chunks(&chunks).unwrap(), l);
    assert_eq!(l.to_json_chunks(1 << 20).unwrap().len(), 1);
}

#[test]
fn corrupt_state_is_an_error_not_a_panic() {
    assert!(EventLedger::from_json("{\"config\": 1}").is_err());
    assert!(EventLedger::from_json("").is_err());
}

// ---------- inventory and orders ----------

#[test]
fn hold_reserves_confirm_takes_release_returns() {
    let mut l = ledger();
    let o = order_of(ok(
        &mut l,
        hold_cmd("o1", &[("shirt", 2), ("beer", 3), ("shirt", 1)], T0 + MIN),
        T0,
    ));
    assert_eq!(o.state, OrderState::Pending);
    assert_eq!(o.total, MinorUnits(3 * 2000 + 3 * 450));
    assert_eq!(o.lines.len(), 2, "repeated SKUs are merged");
    assert_eq!(l.available("shirt"), 2);
    assert_eq!(
        err(&mut l, hold_cmd("o2", &[("shirt", 3)], T0 + MIN), T0),
        LedgerError::OutOfStock {
            sku: "shirt".into(),
            available: 2
        }
    );
    let o = order_of(ok(
        &mut l,
        Command::Confirm {
            order_id: "o1".into(),
            charge_id: "ch_1".into(),
            lane: None,
        },
        T0 + 1,
    ));
    assert_eq!(o.state, OrderState::Approved);
    assert_eq!(o.receipt_id.as_deref(), Some("evt_1-000001"));
    assert_eq!(l.counts("shirt"), Some(SkuCounts { sold: 3, held: 0 }));
    // A repeated confirmation is answered, a different charge id is refused.
    ok(
        &mut l,
        Command::Confirm {
            order_id: "o1".into(),
            charge_id: "ch_1".into(),
            lane: None,
        },
        T0 + 2,
    );
    assert!(matches!(
        err(
            &mut l,
            Command::Confirm {
                order_id: "o1".into(),
                charge_id: "ch_9".into(),
                lane: None,
            },
            T0 + 2
        ),
        LedgerError::ConflictingResult(_)
    ));
    ok(&mut l, hold_cmd("o2", &[("shirt", 2)], T0 + MIN), T0 + 3);
    let o = order_of(ok(
        &mut l,
        Command::Release {
            order_id: "o2".into(),
            reason: "do_not_honor".into(),
        },
        T0 + 4,
    ));
    assert_eq!(o.state, OrderState::Declined);
    assert_eq!(l.available("shirt"), 2);
    assert!(matches!(
        err(
            &mut l,
            Command::Release {
                order_id: "o1".into(),
                reason: "x".into()
            },
            T0 + 5
        ),
        LedgerError::InvalidTransition { .. }
    ));
    assert!(matches!(
        err(&mut l, hold_cmd("o3", &[("nope", 1)], T0 + MIN), T0),
        LedgerError::UnknownSku(_)
    ));
    assert!(matches!(
        err(&mut l, hold_cmd("o3", &[("beer", 0)], T0 + MIN), T0),
        LedgerError::InvalidQuantity { .. }
    ));
    assert!(matches!(
        err(&mut l, hold_cmd("o3", &[("beer", 1)], T0 - 1), T0),
        LedgerError::InvalidHold(_)
    ));
    assert!(matches!(
        err(&mut l, hold_cmd("o3", &[("beer", 1)], T0 + 31 * MIN), T0),
        LedgerError::InvalidHold(_)
    ));
    assert!(matches!(
        err(&mut l, hold_cmd("o 3", &[("beer", 1)], T0 + MIN), T0),
        LedgerError::InvalidId { .. }
    ));
    l.check_invariants().unwrap();
}

#[test]
fn repeated_hold_is_idempotent_and_different_contents_conflict() {
    let mut l = ledger();
    let a = order_of(ok(&mut l, hold_cmd("o1", &[("ticket", 2)], T0 + MIN), T0));
    let b = order_of(ok(
        &mut l,
        hold_cmd("o1", &[("ticket", 2)], T0 + MIN),
        T0 + 1,
    ));
    assert_eq!(a, b);
    assert_eq!(l.available("ticket"), 8);
    assert_eq!(
        err(&mut l, hold_cmd("o1", &[("ticket", 3)], T0 + MIN), T0 + 2),
        LedgerError::OrderConflict("o1".into())
    );
}

#[test]
fn lapsed_holds_return_stock_lazily_and_late_payments_are_handled() {
    let mut l = ledger();
    ok(&mut l, hold_cmd("o1", &[("shirt", 5)], T0 + MIN), T0);
    assert_eq!(l.available("shirt"), 0);
    // The next command after the expiry releases it, with no alarm needed.
    ok(
        &mut l,
        hold_cmd("o2", &[("beer", 1)], T0 + 2 * MIN),
        T0 + MIN,
    );
    assert_eq!(l.order("o1").unwrap().state, OrderState::Abandoned);
    assert_eq!(l.available("shirt"), 5);
    // A payment approved after the lapse still takes the stock if it is there...
    ok(
        &mut l,
        Command::Confirm {
            order_id: "o1".into(),
            charge_id: "ch_1".into(),
            lane: None,
        },
        T0 + MIN + 1,
    );
    assert_eq!(l.order("o1").unwrap().state, OrderState::Approved);
    assert_eq!(l.counts("shirt"), Some(SkuCounts { sold: 5, held: 0 }));
    l.check_invariants().unwrap();
    // ...and is refused when it is not.
    let mut l = ledger();
    ok(&mut l, hold_cmd("o1", &[("shirt", 5)], T0 + MIN), T0);
    ok(
        &mut l,
        hold_cmd("o2", &[("shirt", 5)], T0 + 3 * MIN),
        T0 + 2 * MIN,
    );
    assert_eq!(
        err(
            &mut l,
            Command::Confirm {
                order_id: "o1".into(),
                charge_id: "ch_1".into(),
                lane: None,
            },
            T0 + 2 * MIN
        ),
        LedgerError::HoldLapsed("o1".into())
    );
    // A decline after the lapse changes nothing.
    let o = order_of(ok(
        &mut l,
        Command::Release {
            order_id: "o1".into(),
            reason: "x".into(),
        },
        T0 + 2 * MIN,
    ));
    assert_eq!(o.state, OrderState::Abandoned);
    l.check_invariants().unwrap();
}

#[test]
fn sales_open_at_the_sale_start() {
    let mut l = ledger();
    let start = config().queue.sale_start_ms;
    assert_eq!(
        err(
            &mut l,
            hold_cmd("o1", &[("beer", 1)], start + MIN),
            start - 1
        ),
        LedgerError::SalesNotStarted
    );
    assert_eq!(LedgerError::SalesNotStarted.to_api().status, 409);
    ok(&mut l, hold_cmd("o1", &[("beer", 1)], start + MIN), start);
}

#[test]
fn sales_close_at_end() {
    let mut l = ledger();
    let end = config().end_ms;
    assert_eq!(
        err(&mut l, hold_cmd("o1", &[("beer", 1)], end + MIN), end),
        LedgerError::SalesClosed
    );
}

/// splitmix64: a small deterministic generator for the property tests.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes8(&mut self) -> [u8; 8] {
        self.next().to_le_bytes()
    }
}

#[test]
fn never_oversold_under_interleaved_commands() {
    for seed in 0..40u64 {
        let mut rng = Rng(seed);
        let mut l = ledger();
        let mut now = T0;
        let skus = ["ticket", "shirt", "beer"];
        for step in 0..400 {
            now += rng.below(20_000) as i64;
            let id = format!("o{}", rng.below(60));
            let cmd = match rng.below(6) {
                0 | 1 => {
                    let n = 1 + rng.below(3) as usize;
                    let lines: Vec<(&str, u32)> = (0..n)
                        .map(|_| (skus[rng.below(3) as usize], 1 + rng.below(4) as u32))
                        .collect();
                    hold_cmd(&id, &lines, now + 1 + rng.below(3 * MIN as u64) as i64)
                }
                2 => Command::Confirm {
                    order_id: id,
                    charge_id: format!("ch_{step}"),
                    lane: None,
                },
                3 => Command::Release {
                    order_id: id,
                    reason: "declined".into(),
                },
                4 => {
                    let total = l.order(&id).map_or(1, |o| o.total.0);
                    queue_cmd(
                        &format!("a{step}"),
                        &id,
                        total,
                        &format!("card{}", rng.below(5)),
                    )
                }
                _ => Command::Alarm,
            };
            let _ = l.handle(cmd, now, rng.bytes8());
            l.check_invariants()
                .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
            for s in &config().skus {
                let c = l.counts(&s.id).unwrap();
                assert!(c.sold + c.held <= s.stock, "seed {seed}: {} oversold", s.id);
                // Independently: units in orders that took stock never exceed the stock.
                let taken: u32 = l
                    .orders()
                    .filter(|o| o.stock_taken || o.state == OrderState::Pending)
                    .flat_map(|o| o.lines.iter())
                    .filter(|x| x.sku == s.id)
                    .map(|x| x.qty)
                    .sum();
                assert!(taken <= s.stock);
            }
        }
    }
}

// ---------- idempotency ----------

fn begin(l: &mut EventLedger, key: &str, hash: &str, now: i64) -> IdempotencyBegin {
    match ok(
        l,
        Command::BeginIdempotent {
            key: key.into(),
            body_hash: hash.into(),
        },
        now,
    ) {
        Reply::Idempotency { result } => result,
        other => panic!("{other:?}"),
    }
}

#[test]
fn idempotency_new_inflight_replay_mismatch_and_pruning() {
    let mut l = ledger();
    assert_eq!(begin(&mut l, "k", "h", T0), IdempotencyBegin::New);
    assert_eq!(begin(&mut l, "k", "h", T0 + 1), IdempotencyBegin::InFlight);
    assert_eq!(IdempotencyBegin::InFlight.as_error().unwrap().status, 409);
    assert_eq!(
        begin(&mut l, "k", "other", T0 + 1),
        IdempotencyBegin::Mismatch
    );
    assert_eq!(IdempotencyBegin::Mismatch.as_error().unwrap().status, 422);
    ok(
        &mut l,
        Command::CompleteIdempotent {
            key: "k".into(),
            response: "R1".into(),
        },
        T0 + 2,
    );
    // The first answer stays.
    ok(
        &mut l,
        Command::CompleteIdempotent {
            key: "k".into(),
            response: "R2".into(),
        },
        T0 + 3,
    );
    assert_eq!(
        begin(&mut l, "k", "h", T0 + 4),
        IdempotencyBegin::Replay {
            response: "R1".into()
        }
    );
    let day = IDEMPOTENCY_RETENTION_MS;
    assert_eq!(
        begin(&mut l, "k", "h", T0 + 1 + day),
        IdempotencyBegin::Replay {
            response: "R1".into()
        }
    );
    assert_eq!(l.idempotency_records(), 1);
    // Pruned at 24 h after completion; the key is then new again.
    assert_eq!(
        begin(&mut l, "k", "h2", T0 + 2 + day),
        IdempotencyBegin::New
    );
    assert_eq!(
        err(
            &mut l,
            Command::CompleteIdempotent {
                key: "nope".into(),
                response: "x".into()
            },
            T0 + 2 + day
        ),
        LedgerError::IdempotencyNotFound
    );
    assert!(matches!(
        err(
            &mut l,
            Command::BeginIdempotent {
                key: "".into(),
                body_hash: "h".into()
            },
            T0
        ),
        LedgerError::InvalidId { .. }
    ));
}

#[test]
fn stale_in_flight_key_is_taken_over_and_abandon_frees_it() {
    let mut l = ledger();
    assert_eq!(begin(&mut l, "k", "h", T0), IdempotencyBegin::New);
    assert_eq!(
        begin(&mut l, "k", "h", T0 + IDEMPOTENCY_IN_FLIGHT_MS - 1),
        IdempotencyBegin::InFlight
    );
    assert_eq!(
        begin(&mut l, "k", "h", T0 + IDEMPOTENCY_IN_FLIGHT_MS + 5),
        IdempotencyBegin::New
    );
    ok(
        &mut l,
        Command::AbandonIdempotent { key: "k".into() },
        T0 + IDEMPOTENCY_IN_FLIGHT_MS + 6,
    );
    assert_eq!(
        begin(&mut l, "k", "h3", T0 + IDEMPOTENCY_IN_FLIGHT_MS + 7),
        IdempotencyBegin::New
    );
}

// ---------- waiting room ----------

fn queue_status(r: Reply) -> QueueStatus {
    match r {
        Reply::Queue { status } => status,
        other => panic!("{other:?}"),
    }
}

fn rand32(n: u8, shuffle: u64) -> [u8; 32] {
    let mut r = [n; 32];
    r[16..24].copy_from_slice(&shuffle.to_le_bytes());
    r
}

#[test]
fn fifo_queue_admits_at_the_configured_rate() {
    let mut l = ledger();
    let mut tickets = Vec::new();
    for i in 0..6u8 {
        let s = queue_status(ok(
            &mut l,
            Command::JoinQueue {
                random: rand32(i, 0),
            },
            T0 - 10_000 + i as i64,
        ));
        assert_eq!(s.position, Some(i as u32 + 1));
        assert!(!s.admitted);
        tickets.push(s.ticket);
    }
    assert_eq!(l.queue_depth(), 6);
    assert!(tickets[0].starts_with("q_") && tickets[0].len() == 34);
    // At the start one second's worth (2) is admitted, in order.
    let s = queue_status(ok(
        &mut l,
        Command::PollQueue {
            ticket: tickets[0].clone(),
        },
        T0,
    ));
    assert!(s.admitted);
    assert!(l.admitted(&tickets[1], T0));
    assert!(!l.admitted(&tickets[2], T0));
    assert_eq!(l.queue_depth(), 4);
    // 2 per second: after 500 ms one more.
    let s = queue_status(ok(
        &mut l,
        Command::PollQueue {
            ticket: tickets[3].clone(),
        },
        T0 + 500,
    ));
    assert!(l.admitted(&tickets[2], T0 + 500));
    assert_eq!(s.position, Some(1));
    ok(
        &mut l,
        Command::PollQueue {
            ticket: tickets[3].clone(),
        },
        T0 + 1_500,
    );
    assert!(l.admitted(&tickets[4], T0 + 1_500));
    assert!(!l.admitted(&tickets[5], T0 + 1_500));
    // Admission lapses after admitted_ttl_ms.
    assert!(!l.admitted(&tickets[0], T0 + 10 * MIN));
}

#[test]
fn silent_places_are_dropped_and_polling_keeps_them() {
    let mut l = ledger();
    let a = queue_status(ok(
        &mut l,
        Command::JoinQueue {
            random: rand32(1, 0),
        },
        T0 - 60_000,
    ))
    .ticket;
    let b = queue_status(ok(
        &mut l,
        Command::JoinQueue {
            random: rand32(2, 0),
        },
        T0 - 60_000,
    ))
    .ticket;
    ok(
        &mut l,
        Command::PollQueue { ticket: b.clone() },
        T0 - 35_000,
    );
    let s = queue_status(ok(
        &mut l,
        Command::PollQueue { ticket: b.clone() },
        T0 - 10_000,
    ));
    assert_eq!(s.position, Some(1), "a was dropped, b moved up");
    assert_eq!(
        err(&mut l, Command::PollQueue { ticket: a }, T0 - 9_000),
        LedgerError::TicketNotFound
    );
}

#[test]
fn random_mode_shuffles_only_the_pre_sale_crowd() {
    let mut c = config();
    c.queue.mode = QueueMode::RandomBeforeStart;
    c.queue.admission_rate_per_sec = 1;
    let mut l = EventLedger::new(c, T0 - 60 * MIN).unwrap();
    let keys = [50u64, 10, 40, 20, 30];
    let mut tickets = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let s = queue_status(ok(
            &mut l,
            Command::JoinQueue {
                random: rand32(i as u8, *k),
            },
            T0 - 20_000,
        ));
        tickets.push(s.ticket);
    }
    // After the start, at 1/s, admission follows the shuffle keys: 10, 20, 30, 40, 50.
    let mut order = Vec::new();
    for s in 0..5i64 {
        let now = T0 + s * 1000;
        for t in &tickets {
            let _ = run(&mut l, Command::PollQueue { ticket: t.clone() }, now);
        }
        for (i, t) in tickets.iter().enumerate() {
            if l.admitted(t, now) && !order.contains(&i) {
                order.push(i);
            }
        }
        // A late joiner (after the start) goes behind the whole crowd.
        if s == 0 {
            let late = queue_status(ok(
                &mut l,
                Command::JoinQueue {
                    random: rand32(99, 0),
                },
                now,
            ));
            assert_eq!(late.position, Some(5));
        }
    }
    assert_eq!(order, vec![1, 3, 4, 2, 0]);
}

#[test]
fn full_queue_and_required_admission() {
    let mut c = config();
    c.queue.capacity = 2;
    c.queue.required = true;
    let mut l = EventLedger::new(c, T0 - 60 * MIN).unwrap();
    ok(
        &mut l,
        Command::JoinQueue {
            random: rand32(1, 0),
        },
        T0 - 1000,
    );
    let t2 = queue_status(ok(
        &mut l,
        Command::JoinQueue {
            random: rand32(2, 0),
        },
        T0 - 1000,
    ))
    .ticket;
    assert_eq!(
        err(
            &mut l,
            Command::JoinQueue {
                random: rand32(3, 0)
            },
            T0 - 999
        ),
        LedgerError::QueueFull
    );
    // Load, not a fault: 429 with Retry-After, like every other shed request.
    assert_eq!(LedgerError::QueueFull.to_api().status, 429);
    assert!(LedgerError::QueueFull.to_api().retryable);
    let mut h = hold_cmd("o1", &[("beer", 1)], T0 + MIN);
    assert_eq!(
        err(&mut l, h.clone(), T0 - 500),
        LedgerError::SalesNotStarted
    );
    assert_eq!(err(&mut l, h.clone(), T0 + 5), LedgerError::NotAdmitted);
    if let Command::Hold {
        admission_ticket, ..
    } = &mut h
    {
        *admission_ticket = Some(t2);
    }
    ok(&mut l, h, T0 + 10);
}

// ---------- store-and-forward ----------

#[test]
fn offline_budget_caps_per_transaction_aggregate_and_card() {
    let mut l = ledger();
    ok(&mut l, hold_cmd("big", &[("shirt", 3)], T0 + MIN), T0);
    assert_eq!(
        err(&mut l, queue_cmd("a0", "big", 6000, "c1"), T0),
        LedgerError::OfflineLimit(OfflineLimit::PerTransaction)
    );
    for (i, o) in ["o1", "o2", "o3", "o4", "o5", "o6"].iter().enumerate() {
        ok(
            &mut l,
            hold_cmd(o, &[("ticket", 1)], T0 + MIN),
            T0 + i as i64,
        );
    }
    ok(&mut l, queue_cmd("a1", "o1", 1500, "c1"), T0 + 10);
    ok(&mut l, queue_cmd("a2", "o2", 1500, "c1"), T0 + 11);
    assert_eq!(
        err(&mut l, queue_cmd("a3", "o3", 1500, "c1"), T0 + 12),
        LedgerError::OfflineLimit(OfflineLimit::PerCard)
    );
    ok(&mut l, queue_cmd("a3", "o3", 1500, "c2"), T0 + 12);
    ok(&mut l, queue_cmd("a4", "o4", 1500, "c3"), T0 + 13);
    ok(&mut l, queue_cmd("a5", "o5", 1500, "c4"), T0 + 14);
    assert_eq!(l.queued_exposure(), MinorUnits(7500));
    ok(&mut l, hold_cmd("o7", &[("shirt", 2)], T0 + MIN), T0 + 15);
    assert_eq!(
        err(&mut l, queue_cmd("a7", "o7", 4000, "c5"), T0 + 16),
        LedgerError::OfflineLimit(OfflineLimit::Aggregate)
    );
    assert!(
        LedgerError::OfflineLimit(OfflineLimit::Aggregate)
            .to_api()
            .retryable
    );
    assert_eq!(
        err(&mut l, queue_cmd("a6", "o6", 1499, "c5"), T0 + 16),
        LedgerError::AmountMismatch
    );
    // Same auth again: the same answer, no double counting.
    ok(&mut l, queue_cmd("a5", "o5", 1500, "c4"), T0 + 17);
    assert_eq!(l.queued_exposure(), MinorUnits(7500));
    assert!(matches!(
        err(&mut l, queue_cmd("a5", "o6", 1500, "c4"), T0 + 17),
        LedgerError::Conflict(_)
    ));
    // A second payment may not reuse another's acquirer key.
    let mut reuse = queue_cmd("a6", "o6", 1500, "c5");
    if let Command::QueueAuthorization(q) = &mut reuse {
        q.idempotency_key = "idem-a5".into();
    }
    assert_eq!(
        err(&mut l, reuse, T0 + 17),
        LedgerError::Conflict("idem-a5".into())
    );
    // The per-card window slides.
    ok(
        &mut l,
        Command::ForwardResult {
            auth_id: "a1".into(),
            result: AcquirerResult::Approved {
                charge_id: "ch1".into(),
            },
        },
        T0 + 18,
    );
    assert_eq!(l.queued_exposure(), MinorUnits(6000));
    ok(
        &mut l,
        hold_cmd("o8", &[("ticket", 1)], T0 + 61 * MIN),
        T0 + 60 * MIN,
    );
    ok(
        &mut l,
        queue_cmd("a8", "o8", 1500, "c1"),
        T0 + 60 * MIN + 11,
    );
    l.check_invariants().unwrap();
}

#[test]
fn forwarding_backs_off_keeps_the_key_and_purges_the_card() {
    let mut l = ledger();
    ok(&mut l, hold_cmd("o1", &[("ticket", 2)], T0 + MIN), T0);
    let out = run(&mut l, queue_cmd("a1", "o1", 3000, "c1"), T0);
    let first = match out.effects.iter().find_map(|e| match e {
        Effect::SetAlarm { at_ms } => Some(*at_ms),
        _ => None,
    }) {
        Some(at) => at,
        None => panic!("no alarm set: {:?}", out.effects),
    };
    assert!((T0 + BACKOFF_HALF..=T0 + 2_000).contains(&first), "{first}");
    assert_eq!(l.order("o1").unwrap().state, OrderState::Queued);
    assert_eq!(l.counts("ticket"), Some(SkuCounts { sold: 2, held: 0 }));
    // Nothing is forwarded before it is due.
    assert!(forwards(&run(&mut l, Command::Alarm, first - 1)).is_empty());
    let mut now = first;
    let mut gaps = Vec::new();
    for attempt in 1..=5u32 {
        let out = run(&mut l, Command::Alarm, now);
        let f = forwards(&out);
        assert_eq!(f.len(), 1, "attempt {attempt}");
        assert_eq!(f[0].idempotency_key, "idem-a1");
        assert_eq!(f[0].attempt, attempt);
        assert_eq!(f[0].sealed_card.0, "sealed-a1-ciphertext");
        // While the forward is out, another alarm does not send it again.
        assert!(forwards(&run(&mut l, Command::Alarm, now + 1)).is_empty());
        ok(
            &mut l,
            Command::ForwardResult {
                auth_id: "a1".into(),
                result: AcquirerResult::Unavailable,
            },
            now + 2,
        );
        let next = l.auth("a1").unwrap().next_attempt_ms;
        let delay = next - (now + 2);
        let full = (2_000i64 << attempt).min(300_000);
        assert!(
            delay >= full / 2 && delay <= full,
            "attempt {attempt}: {delay} vs {full}"
        );
        gaps.push(delay);
        now = next;
    }
    assert!(
        gaps.windows(2).all(|w| w[1] > w[0]),
        "backoff grows: {gaps:?}"
    );
    let out = run(&mut l, Command::Alarm, now);
    assert_eq!(forwards(&out).len(), 1);
    let out = run(
        &mut l,
        Command::ForwardResult {
            auth_id: "a1".into(),
            result: AcquirerResult::Approved {
                charge_id: "ch_a1".into(),
            },
        },
        now + 5,
    );
    assert!(out.effects.contains(&Effect::PurgeSealed {
        auth_id: "a1".into()
    }));
    assert!(out.effects.contains(&Effect::Notify {
        order_id: "o1".into(),
        state: OrderState::Forwarded
    }));
    let a = l.auth("a1").unwrap();
    assert_eq!(
        a.state,
        AuthState::Forwarded {
            charge_id: "ch_a1".into()
        }
    );
    assert!(a.sealed_card.is_none());
    assert!(!l.to_json().unwrap().contains("sealed-a1"));
    let o = l.order("o1").unwrap();
    assert_eq!(
        (o.state, o.charge_id.as_deref()),
        (OrderState::Forwarded, Some("ch_a1"))
    );
    // A duplicate result changes nothing; a contradicting one is refused.
    let before = (
        l.auth("a1").cloned(),
        l.order("o1").cloned(),
        l.summary(now),
    );
    let dup = run(
        &mut l,
        Command::ForwardResult {
            auth_id: "a1".into(),
            result: AcquirerResult::Approved {
                charge_id: "ch_a1".into(),
            },
        },
        now + 6,
    );
    assert!(dup.reply.is_ok() && !dup.changed && dup.effects.is_empty());
    assert_eq!(
        (
            l.auth("a1").cloned(),
            l.order("o1").cloned(),
            l.summary(now)
        ),
        before
    );
    assert!(matches!(
        err(
            &mut l,
            Command::ForwardResult {
                auth_id: "a1".into(),
                result: AcquirerResult::Declined { reason: "x".into() }
            },
            now + 7
        ),
        LedgerError::ConflictingResult(_)
    ));
    // Nothing waits on time but the end-of-event reconciliation.
    assert_eq!(l.next_deadline(), Some(config().end_ms));
    l.check_invariants().unwrap();
}

const BACKOFF_HALF: i64 = 1_000;

#[test]
fn decline_expiry_sync_and_lost_results() {
    let mut l = ledger();
    for o in ["o1", "o2", "o3"] {
        ok(&mut l, hold_cmd(o, &[("beer", 2)], T0 + MIN), T0);
    }
    ok(&mut l, queue_cmd("a1", "o1", 900, "c1"), T0);
    ok(&mut l, queue_cmd("a2", "o2", 900, "c2"), T0);
    let mut q3 = queue_cmd("a3", "o3", 900, "c3");
    if let Command::QueueAuthorization(q) = &mut q3 {
        q.max_wait_ms = 10 * MIN;
    }
    ok(&mut l, q3, T0);
    // The operator forces a sync before anything is due.
    let out = run(&mut l, Command::SyncNow, T0 + 1);
    assert_eq!(forwards(&out).len(), 3);
    assert_eq!(
        out.reply,
        Ok(Reply::Synced {
            forwards: 3,
            refunds: 0
        })
    );
    let out = run(
        &mut l,
        Command::ForwardResult {
            auth_id: "a1".into(),
            result: AcquirerResult::Declined {
                reason: "insufficient_funds".into(),
            },
        },
        T0 + 2,
    );
    assert!(out.effects.contains(&Effect::PurgeSealed {
        auth_id: "a1".into()
    }));
    assert_eq!(l.order("o1").unwrap().state, OrderState::Declined);
    // The goods were handed over, so the stock stays taken.
    assert!(l.order("o1").unwrap().stock_taken);
    // a2's and a3's results are lost; after the forward timeout they are sent again.
    assert!(forwards(&run(&mut l, Command::Alarm, T0 + 20_000)).is_empty());
    let out = run(&mut l, Command::Alarm, T0 + 1 + FORWARD_TIMEOUT_MS);
    let f = forwards(&out);
    assert_eq!(
        f.iter().map(|f| f.auth_id.as_str()).collect::<Vec<_>>(),
        vec!["a2", "a3"]
    );
    assert!(f.iter().all(|f| f.attempt == 2));
    // a3 is in flight at its deadline: it is not expired under a pending answer...
    assert_eq!(
        forwards(&run(&mut l, Command::SyncNow, T0 + 10 * MIN - 1_000)).len(),
        2
    );
    let out = run(&mut l, Command::Alarm, T0 + 10 * MIN);
    assert_eq!(l.auth("a3").unwrap().state, AuthState::Queued);
    assert!(forwards(&out).is_empty());
    ok(
        &mut l,
        Command::ForwardResult {
            auth_id: "a3".into(),
            result: AcquirerResult::Unavailable,
        },
        T0 + 10 * MIN + 1,
    );
    // ...but once the answer says "unavailable" past the deadline, it expires.
    let out = run(&mut l, Command::Alarm, T0 + 10 * MIN + 2);
    assert_eq!(l.auth("a3").unwrap().state, AuthState::Expired);
    assert!(out.effects.contains(&Effect::PurgeSealed {
        auth_id: "a3".into()
    }));
    assert_eq!(l.order("o3").unwrap().state, OrderState::Expired);
    // A late approval is real money: it is recorded, once.
    ok(
        &mut l,
        Command::ForwardResult {
            auth_id: "a3".into(),
            result: AcquirerResult::Approved {
                charge_id: "ch3".into(),
            },
        },
        T0 + 11 * MIN,
    );
    assert!(l.auth("a3").unwrap().late_approval);
    assert_eq!(l.order("o3").unwrap().state, OrderState::Forwarded);
    assert!(l
        .auths()
        .all(|a| a.state == AuthState::Queued || a.sealed_card.is_none()));
    l.check_invariants().unwrap();
}

#[test]
fn sealed_card_never_prints() {
    let s = SealedCard("very-secret-blob".into());
    assert!(!format!("{s:?}").contains("very-secret"));
    let mut l = ledger();
    ok(&mut l, hold_cmd("o1", &[("beer", 1)], T0 + MIN), T0);
    ok(&mut l, queue_cmd("a1", "o1", 450, "c1"), T0);
    let out = run(&mut l, Command::SyncNow, T0 + 1);
    assert!(!format!("{out:?}").contains("sealed-a1"));
    assert!(!format!("{l:?}").contains("sealed-a1"));
}

// ---------- refunds ----------

fn approved(l: &mut EventLedger, order: &str, lines: &[(&str, u32)], now: i64) {
    ok(l, hold_cmd(order, lines, now + MIN), now);
    ok(
        l,
        Command::Confirm {
            order_id: order.into(),
            charge_id: format!("ch_{order}"),
            lane: None,
        },
        now,
    );
}

fn refund_of(r: Reply) -> Refund {
    match r {
        Reply::Refund { refund } => refund,
        other => panic!("{other:?}"),
    }
}

#[test]
fn partial_and_full_refunds_never_exceed_captured() {
    let mut l = ledger();
    approved(&mut l, "o1", &[("shirt", 2)], T0); // 4000
    let out = run(
        &mut l,
        refund_cmd("r1", "o1", Some(1500), rule(), true),
        T0 + 1,
    );
    let f = refund_forwards(&out);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].idempotency_key, "evt_1:refund:r1");
    assert_eq!(f[0].charge_id, "ch_o1");
    // While r1 is in flight, only 2500 remain.
    assert_eq!(
        err(
            &mut l,
            refund_cmd("r2", "o1", Some(3000), rule(), true),
            T0 + 2
        ),
        LedgerError::RefundExceedsCaptured { remaining: 2500 }
    );
    ok(
        &mut l,
        Command::RefundResult {
            refund_id: "r1".into(),
            result: RefundOutcome::Succeeded {
                acquirer_refund_id: "re_1".into(),
            },
        },
        T0 + 3,
    );
    assert_eq!(l.order("o1").unwrap().state, OrderState::PartiallyRefunded);
    // A duplicate success is not counted twice.
    ok(
        &mut l,
        Command::RefundResult {
            refund_id: "r1".into(),
            result: RefundOutcome::Succeeded {
                acquirer_refund_id: "re_1".into(),
            },
        },
        T0 + 4,
    );
    assert_eq!(l.order("o1").unwrap().refunded, MinorUnits(1500));
    // The rest (amount: None = all that remains).
    let r = refund_of(ok(
        &mut l,
        refund_cmd("r2", "o1", None, rule(), true),
        T0 + 5,
    ));
    assert_eq!(r.amount, MinorUnits(2500));
    ok(
        &mut l,
        Command::RefundResult {
            refund_id: "r2".into(),
            result: RefundOutcome::Succeeded {
                acquirer_refund_id: "re_2".into(),
            },
        },
        T0 + 6,
    );
    let o = l.order("o1").unwrap();
    assert_eq!(
        (o.state, o.refunded),
        (OrderState::Refunded, MinorUnits(4000))
    );
    assert!(matches!(
        err(
            &mut l,
            refund_cmd("r3", "o1", Some(1), rule(), true),
            T0 + 7
        ),
        LedgerError::RefundExceedsCaptured { .. }
    ));
    l.check_invariants().unwrap();
}

#[test]
fn refund_rules_are_enforced() {
    let mut l = ledger();
    approved(&mut l, "o1", &[("shirt", 2)], T0);
    let mut r = rule();
    r.allowed = false;
    assert_eq!(
        err(&mut l, refund_cmd("r1", "o1", None, r, true), T0),
        LedgerError::RefundNotAllowed
    );
    let mut r = rule();
    r.partial_allowed = false;
    assert_eq!(
        err(&mut l, refund_cmd("r1", "o1", Some(100), r, true), T0),
        LedgerError::PartialRefundNotAllowed
    );
    let mut r = rule();
    r.may_queue_offline = false;
    assert_eq!(
        err(&mut l, refund_cmd("r1", "o1", None, r, false), T0),
        LedgerError::AcquirerUnavailable
    );
    assert_eq!(
        err(&mut l, refund_cmd("r1", "o1", Some(0), rule(), true), T0),
        LedgerError::RefundExceedsCaptured { remaining: 4000 }
    );
    ok(&mut l, hold_cmd("o2", &[("beer", 1)], T0 + MIN), T0);
    assert_eq!(
        err(&mut l, refund_cmd("r1", "o2", None, rule(), true), T0),
        LedgerError::NotCaptured("o2".into())
    );
    ok(&mut l, queue_cmd("a2", "o2", 450, "c"), T0);
    assert_eq!(
        err(&mut l, refund_cmd("r1", "o2", None, rule(), true), T0),
        LedgerError::NotCaptured("o2".into())
    );
    // An ambiguous answer keeps the refund (and its amount) until a definite one, even
    // when queuing was not allowed: the acquirer may have refunded already.
    let mut r = rule();
    r.may_queue_offline = false;
    ok(&mut l, refund_cmd("r9", "o1", Some(3000), r, true), T0 + 1);
    let f = refund_of(ok(
        &mut l,
        Command::RefundResult {
            refund_id: "r9".into(),
            result: RefundOutcome::Unavailable,
        },
        T0 + 2,
    ));
    assert_eq!(f.state, RefundState::Queued);
    assert_eq!(
        err(
            &mut l,
            refund_cmd("r10", "o1", Some(1001), rule(), true),
            T0 + 3
        ),
        LedgerError::RefundExceedsCaptured { remaining: 1000 }
    );
    // A definite failure frees the amount.
    ok(
        &mut l,
        Command::RefundResult {
            refund_id: "r9".into(),
            result: RefundOutcome::Failed {
                reason: "charge_disputed".into(),
            },
        },
        T0 + 3,
    );
    ok(
        &mut l,
        refund_cmd("r10", "o1", Some(100), rule(), true),
        T0 + 3,
    );
    let mut r = rule();
    r.window_ms = MIN;
    assert_eq!(
        err(&mut l, refund_cmd("r11", "o1", None, r, true), T0 + MIN + 1),
        LedgerError::RefundWindowClosed
    );
    r.window_ms = MIN + 1;
    ok(&mut l, refund_cmd("r11", "o1", None, r, true), T0 + MIN + 1);
    l.check_invariants().unwrap();
}

#[test]
fn refunds_queue_while_offline_and_forward_later_with_their_own_key() {
    let mut l = ledger();
    approved(&mut l, "o1", &[("ticket", 1)], T0);
    let out = run(&mut l, refund_cmd("r1", "o1", None, rule(), false), T0 + 1);
    assert!(refund_forwards(&out).is_empty());
    assert_eq!(refund_of(out.reply.unwrap()).state, RefundState::Queued);
    assert!(out
        .effects
        .iter()
        .any(|e| matches!(e, Effect::SetAlarm { .. })));
    let due = l.next_deadline().unwrap();
    let f = refund_forwards(&run(&mut l, Command::Alarm, due));
    assert_eq!(f.len(), 1);
    ok(
        &mut l,
        Command::RefundResult {
            refund_id: "r1".into(),
            result: RefundOutcome::Unavailable,
        },
        due + 1,
    );
    assert_eq!(l.refund("r1").unwrap().state, RefundState::Queued);
    let due2 = l.next_deadline().unwrap();
    assert!(due2 > due + 1);
    let f2 = refund_forwards(&run(&mut l, Command::Alarm, due2));
    assert_eq!(f2[0].idempotency_key, f[0].idempotency_key);
    assert_eq!(f2[0].attempt, 2);
    ok(
        &mut l,
        Command::RefundResult {
            refund_id: "r1".into(),
            result: RefundOutcome::Succeeded {
                acquirer_refund_id: "re1".into(),
            },
        },
        due2 + 1,
    );
    assert_eq!(l.order("o1").unwrap().state, OrderState::Refunded);
    // Same refund id again returns the refund; a different amount conflicts.
    assert_eq!(
        refund_of(ok(
            &mut l,
            refund_cmd("r1", "o1", None, rule(), true),
            due2 + 2
        ))
        .amount,
        MinorUnits(1500)
    );
    assert!(matches!(
        err(
            &mut l,
            refund_cmd("r1", "o1", Some(5), rule(), true),
            due2 + 2
        ),
        LedgerError::Conflict(_)
    ));
}

// ---------- reconciliation, exports, summary ----------

fn charge(id: &str, amount: i64, order: Option<&str>, refunded: i64) -> AcquirerCharge {
    AcquirerCharge {
        id: id.into(),
        amount: MinorUnits(amount),
        currency: eur(),
        status: ChargeStatus::Succeeded,
        idempotency_key: None,
        order_id: order.map(String::from),
        refunded_amount: MinorUnits(refunded),
        lane: "primary".into(),
    }
}

#[test]
fn reconciliation_finds_every_kind_of_difference() {
    let mut l = ledger();
    approved(&mut l, "o1", &[("ticket", 1)], T0); // 1500, ch_o1
    approved(&mut l, "o2", &[("shirt", 1)], T0); // 2000, ch_o2
    approved(&mut l, "o3", &[("beer", 2)], T0); // 900, ch_o3
    ok(&mut l, hold_cmd("o4", &[("beer", 1)], T0 + MIN), T0);
    ok(&mut l, queue_cmd("a4", "o4", 450, "c"), T0);
    ok(&mut l, hold_cmd("o5", &[("beer", 1)], T0 + MIN), T0);
    ok(&mut l, queue_cmd("a5", "o5", 450, "c2"), T0);
    ok(
        &mut l,
        Command::ForwardResult {
            auth_id: "a5".into(),
            result: AcquirerResult::Approved {
                charge_id: "ch_a5".into(),
            },
        },
        T0 + 1,
    );
    let mut by_key = charge("ch_a5", 450, None, 0);
    by_key.idempotency_key = Some("idem-a5".into());
    let mut failed = charge("ch_failed", 100, Some("o9"), 0);
    failed.status = ChargeStatus::Failed;
    let charges = vec![
        charge("ch_o1", 1500, Some("o1"), 0),
        charge("ch_o2", 2100, Some("o2"), 0),
        charge("ch_stray", 700, Some("o77"), 0),
        charge("ch_dup", 1500, Some("o1"), 0),
        by_key,
        failed,
    ];
    let r = l.reconcile(&charges);
    assert_eq!(
        r.matched,
        vec![
            ("o1".to_string(), "ch_o1".to_string()),
            ("o5".into(), "ch_a5".into())
        ]
    );
    assert_eq!(r.amount_mismatch.len(), 1);
    assert_eq!(r.amount_mismatch[0].order_id, "o2");
    assert_eq!(r.amount_mismatch[0].acquirer_amount, MinorUnits(2100));
    assert_eq!(r.missing_at_acquirer, vec!["o3".to_string()]);
    assert_eq!(
        r.missing_at_edge,
        vec!["ch_stray".to_string(), "ch_dup".into()]
    );
    assert_eq!(r.awaiting_forward, vec!["o4".to_string()]);
}

#[test]
fn csv_quotes_and_hides_email_unless_allowed() {
    let mut l = ledger();
    let mut h = hold_cmd("o1", &[("ticket", 1), ("beer", 2)], T0 + MIN);
    if let Command::Hold {
        buyer_email, lane, ..
    } = &mut h
    {
        *buyer_email = Some("=cmd@evil.example".into());
        *lane = "lane-b".into();
    }
    ok(&mut l, h, T0);
    ok(
        &mut l,
        Command::Confirm {
            order_id: "o1".into(),
            charge_id: "ch_1".into(),
            lane: None,
        },
        T0,
    );
    let csv = l.export_csv(false);
    let mut rows = csv.split("\r\n");
    assert_eq!(rows.next().unwrap(), "order_id,state,created_ms,sold_ms,currency,total_minor,refunded_minor,receipt_id,charge_id,lane,lines");
    assert_eq!(
        rows.next().unwrap(),
        format!("o1,approved,{T0},{T0},EUR,2400,0,evt_1-000001,ch_1,lane-b,2xbeer 1xticket")
    );
    assert!(!csv.contains("evil"));
    let csv = l.export_csv(true);
    assert!(csv.lines().next().unwrap().ends_with(",buyer_email"));
    assert!(csv.contains(",'=cmd@evil.example\r\n"));
    assert_eq!(report::csv_text("a,b"), "\"a,b\"");
    assert_eq!(report::csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(report::csv_text("two\nlines"), "\"two\nlines\"");
    assert_eq!(report::csv_text("+1"), "'+1");
    assert_eq!(report::csv_text("plain"), "plain");

    let nd = l.export_ndjson(false);
    let v: serde_json::Value = serde_json::from_str(nd.lines().next().unwrap()).unwrap();
    assert_eq!(v["total_minor"], 2400);
    assert!(v.get("buyer_email").is_none());
    let nd = l.export_ndjson(true);
    let v: serde_json::Value = serde_json::from_str(nd.lines().next().unwrap()).unwrap();
    assert_eq!(v["buyer_email"], "=cmd@evil.example");
    assert_eq!(nd.lines().count(), 1);
}

#[test]
fn summary_reports_stock_states_exposure_and_queue() {
    let mut l = ledger();
    approved(&mut l, "o1", &[("shirt", 2)], T0);
    ok(&mut l, hold_cmd("o2", &[("shirt", 1)], T0 + MIN), T0);
    ok(&mut l, hold_cmd("o3", &[("ticket", 2)], T0 + MIN), T0);
    ok(&mut l, queue_cmd("a3", "o3", 3000, "c"), T0);
    ok(
        &mut l,
        Command::JoinQueue {
            random: rand32(1, 0),
        },
        T0 - 100,
    );
    ok(
        &mut l,
        Command::JoinQueue {
            random: rand32(2, 0),
        },
        T0 - 100,
    );
    ok(
        &mut l,
        Command::JoinQueue {
            random: rand32(3, 0),
        },
        T0 - 100,
    );
    let s = l.summary(T0 - 50);
    let shirt = s.skus.iter().find(|x| x.sku == "shirt").unwrap();
    assert_eq!((shirt.sold, shirt.held, shirt.available), (2, 1, 2));
    assert_eq!(s.active_holds, 1);
    assert_eq!(s.orders_by_state.get(&OrderState::Approved), Some(&1));
    assert_eq!(s.orders_by_state.get(&OrderState::Pending), Some(&1));
    assert_eq!(s.orders_by_state.get(&OrderState::Queued), Some(&1));
    assert_eq!((s.queued_count, s.queued_exposure), (1, MinorUnits(3000)));
    // The sale had started (the clock never runs back), so 2 (one second's worth) are in.
    assert_eq!((s.queue_depth, s.queue_admitted), (1, 2));
    assert_eq!(l.summary(T0 + MIN).active_holds, 0);
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["orders_by_state"]["approved"], 1);
}

#[test]
fn every_error_maps_to_a_stable_code_and_status() {
    let errors = vec![
        LedgerError::InvalidId { field: "order_id" },
        LedgerError::OutOfStock {
            sku: "x".into(),
            available: 1,
        },
        LedgerError::SalesClosed,
        LedgerError::NotAdmitted,
        LedgerError::OrderNotFound("o".into()),
        LedgerError::HoldLapsed("o".into()),
        LedgerError::OfflineLimit(OfflineLimit::PerCard),
        LedgerError::RefundWindowClosed,
        LedgerError::AcquirerUnavailable,
        LedgerError::IdempotencyInFlight,
        LedgerError::IdempotencyMismatch,
    ];
    let mut codes = std::collections::BTreeSet::new();
    for e in errors {
        let a = e.to_api();
        assert!((400..600).contains(&a.status));
        assert!(a.code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        assert!(
            a.message.ends_with('.') || a.message.ends_with(';'),
            "{}",
            a.message
        );
        assert!(codes.insert(a.code.clone()), "duplicate code {}", a.code);
    }
}

// ---------- wire format between the Worker and the Durable Object ----------

#[test]
fn commands_and_replies_have_a_stable_json_shape() {
    let cmd: Command = serde_json::from_value(serde_json::json!({
        "type": "hold",
        "order_id": "o1",
        "lines": [{"sku": "beer", "qty": 2}],
        "expires_ms": T0 + MIN,
        "buyer_email": null,
        "lane": "primary",
        "admission_ticket": null
    }))
    .unwrap();
    let mut l = ledger();
    let reply = ok(&mut l, cmd, T0);
    let j = serde_json::to_value(&reply).unwrap();
    assert_eq!(j["type"], "order");
    assert_eq!(j["order"]["state"], "pending");
    assert_eq!(j["order"]["total"], 900);
    assert_eq!(serde_json::from_value::<Reply>(j).unwrap(), reply);

    let q: Command = serde_json::from_value(serde_json::json!({
        "type": "queue_authorization",
        "auth_id": "a1", "order_id": "o1", "amount": 900, "currency": "EUR",
        "card_fingerprint": "fp1", "sealed_card": "v1.sealed.blob",
        "idempotency_key": "k1", "max_wait_ms": 3_600_000
    }))
    .unwrap();
    let reply = ok(&mut l, q, T0 + 1);
    let j = serde_json::to_string(&reply).unwrap();
    assert!(j.contains("\"state\":\"queued\""), "{j}");
    assert!(
        !j.contains("v1.sealed.blob"),
        "replies never carry the sealed card"
    );
    let r: Command = serde_json::from_value(serde_json::json!({
        "type": "forward_result", "auth_id": "a1",
        "result": {"result": "approved", "charge_id": "ch_1"}
    }))
    .unwrap();
    ok(&mut l, r, T0 + 2);
    assert_eq!(l.order("o1").unwrap().state, OrderState::Forwarded);
    let e = serde_json::to_value(Effect::SetAlarm { at_ms: 5 }).unwrap();
    assert_eq!(e, serde_json::json!({"type": "set_alarm", "at_ms": 5}));
    let s = serde_json::to_value(ok(&mut l, Command::SyncNow, T0 + 3)).unwrap();
    assert_eq!(
        s,
        serde_json::json!({"type": "synced", "forwards": 0, "refunds": 0})
    );
}

#[test]
fn forwards_are_capped_per_wake_and_the_rest_follow_at_once() {
    let mut c = config();
    c.offline.aggregate_max = MinorUnits(100_000);
    let mut l = EventLedger::new(c, T0).unwrap();
    for i in 0..30 {
        let o = format!("o{i}");
        ok(&mut l, hold_cmd(&o, &[("beer", 1)], T0 + MIN), T0);
        ok(
            &mut l,
            queue_cmd(&format!("a{i}"), &o, 450, &format!("card{i}")),
            T0,
        );
    }
    let out = run(&mut l, Command::SyncNow, T0 + 1);
    assert_eq!(forwards(&out).len(), MAX_FORWARDS_PER_WAKE);
    // The rest are due now, so the alarm is asked for now.
    assert!(
        out.effects.contains(&Effect::SetAlarm { at_ms: T0 + 1 }),
        "{:?}",
        out.effects.last()
    );
    let out = run(&mut l, Command::Alarm, T0 + 1);
    let f = forwards(&out);
    assert_eq!(f.len(), 30 - MAX_FORWARDS_PER_WAKE);
    assert!(f.iter().all(|f| f.attempt == 1));
    // Then the next deadline is the forward timeout.
    assert_eq!(l.next_deadline(), Some(T0 + 1 + FORWARD_TIMEOUT_MS));
}

#[test]
fn answers_that_change_nothing_ask_for_no_write() {
    let mut l = ledger();
    begin(&mut l, "k", "h", T0);
    ok(
        &mut l,
        Command::CompleteIdempotent {
            key: "k".into(),
            response: "R".into(),
        },
        T0,
    );
    let out = run(
        &mut l,
        Command::BeginIdempotent {
            key: "k".into(),
            body_hash: "h".into(),
        },
        T0 + 1,
    );
    assert!(!out.changed && out.effects.is_empty());
    let out = run(
        &mut l,
        Command::BeginIdempotent {
            key: "k".into(),
            body_hash: "x".into(),
        },
        T0 + 2,
    );
    assert!(!out.changed);
    let out = run(
        &mut l,
        Command::BeginIdempotent {
            key: "k2".into(),
            body_hash: "x".into(),
        },
        T0 + 3,
    );
    assert!(out.changed);
    let out = run(&mut l, hold_cmd("o1", &[("nope", 1)], T0 + MIN), T0 + 4);
    assert!(out.reply.is_err() && !out.changed);
}

#[test]
fn frequent_polls_are_not_all_written_and_a_restart_keeps_the_place() {
    let mut l = ledger(); // place_ttl_ms = 30 s: a poll is written every 10 s at most
    let t = queue_status(ok(
        &mut l,
        Command::JoinQueue {
            random: rand32(1, 0),
        },
        T0 - 60_000,
    ))
    .ticket;
    let mut stored = l.to_json().unwrap();
    let mut writes = 0;
    for i in 1..=20i64 {
        let out = run(
            &mut l,
            Command::PollQueue { ticket: t.clone() },
            T0 - 60_000 + i * 2_000,
        );
        assert!(out.reply.is_ok());
        if out.changed {
            writes += 1;
            stored = l.to_json().unwrap();
        }
    }
    assert_eq!(writes, 4, "one write per 10 s of polling over 40 s");
    // The object restarts from what was written; the place is still there and its holder
    // keeps polling.
    let mut restored = EventLedger::from_json(&stored).unwrap();
    let s = queue_status(ok(
        &mut restored,
        Command::PollQueue { ticket: t },
        T0 - 60_000 + 42_000 + 15_000,
    ));
    assert_eq!(s.position, Some(1));
}

#[test]
fn charge_total_overrides_list_prices_and_confirm_records_the_failover_lane() {
    let mut l = ledger();
    let mut cmd = hold_cmd("o_tax", &[(first_sku().as_str(), 1)], T0 + 60_000);
    if let Command::Hold { charge_total, .. } = &mut cmd {
        *charge_total = Some(MinorUnits(1234));
    }
    let order = order_of(ok(&mut l, cmd, T0));
    assert_eq!(
        order.total,
        MinorUnits(1234),
        "tax-exclusive total is what the buyer pays"
    );
    let order = order_of(ok(
        &mut l,
        Command::Confirm {
            order_id: "o_tax".into(),
            charge_id: "pi_1".into(),
            lane: Some("cheap".into()),
        },
        T0 + 1,
    ));
    assert_eq!(order.state, OrderState::Approved);
    assert_eq!(l.order("o_tax").unwrap().lane, "cheap");
    let mut bad = hold_cmd("o_zero", &[(first_sku().as_str(), 1)], T0 + 60_000);
    if let Command::Hold { charge_total, .. } = &mut bad {
        *charge_total = Some(MinorUnits(0));
    }
    assert_eq!(err(&mut l, bad, T0), LedgerError::AmountOutOfRange);
}

fn first_sku() -> String {
    config().skus[0].id.clone()
}

#[test]
fn a_payment_of_unknown_outcome_is_stored_outside_the_budget_on_its_lane() {
    let mut c = config();
    c.offline.aggregate_max = MinorUnits(1_000);
    c.offline.per_transaction_max = MinorUnits(1_000);
    let mut l = EventLedger::new(c, T0 - MIN).unwrap();
    ok(&mut l, hold_cmd("o1", &[("shirt", 1)], T0 + MIN), T0);
    // 2,000 is over both limits: refused as a new offline payment...
    assert!(matches!(
        err(&mut l, queue_cmd("a1", "o1", 2000, "card_x"), T0 + 1),
        LedgerError::OfflineLimit(_)
    ));
    // ...but stored when it completes an online attempt whose answer was lost, on that lane
    // and with that attempt's idempotency key.
    let mut resolve = queue_cmd("a1", "o1", 2000, "card_x");
    if let Command::QueueAuthorization(q) = &mut resolve {
        q.resolves_attempt = true;
        q.lane = Some("backup".into());
        q.idempotency_key = "o1_online".into();
    }
    ok(&mut l, resolve, T0 + 2);
    assert_eq!(l.order("o1").unwrap().lane, "backup");
    assert_eq!(l.order("o1").unwrap().state, OrderState::Queued);
    assert_eq!(l.queued_exposure(), MinorUnits(2000));
    assert_eq!(l.offline_exposure(), MinorUnits::ZERO);
    l.check_invariants().unwrap();
    // The budget for new offline payments is untouched by it.
    ok(&mut l, hold_cmd("o2", &[("beer", 1)], T0 + MIN), T0 + 3);
    ok(&mut l, queue_cmd("a2", "o2", 450, "card_x"), T0 + 4);
    let out = run(&mut l, Command::SyncNow, T0 + 5);
    let keys: Vec<String> = out
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Forward(f) => Some(f.idempotency_key.clone()),
            _ => None,
        })
        .collect();
    assert!(keys.contains(&"o1_online".to_string()), "{keys:?}");
}

#[test]
fn charges_of_lost_checkouts_are_found_and_settled_once_refunded() {
    let mut l = ledger();
    ok(&mut l, hold_cmd("o1", &[("beer", 1)], T0 + 10 * MIN), T0);
    ok(&mut l, hold_cmd("o2", &[("beer", 1)], T0 + MIN), T0);
    ok(&mut l, hold_cmd("o3", &[("beer", 2)], T0 + 10 * MIN), T0);
    ok(
        &mut l,
        Command::Confirm {
            order_id: "o3".into(),
            charge_id: "ch3".into(),
            lane: None,
        },
        T0 + 1,
    );
    // o2's hold lapses: its checkout is over, unpaid.
    ok(&mut l, Command::SyncNow, T0 + MIN);
    assert_eq!(l.order("o2").unwrap().state, OrderState::Abandoned);
    let charge = |id: &str, order: &str, amount: i64, refunded: i64| AcquirerCharge {
        id: id.into(),
        amount: MinorUnits(amount),
        currency: eur(),
        status: ChargeStatus::Succeeded,
        idempotency_key: None,
        order_id: Some(order.into()),
        refunded_amount: MinorUnits(refunded),
        lane: "primary".into(),
    };
    let charges = vec![
        charge("ch1", "o1", 450, 0),
        charge("ch2", "o2", 450, 0),
        charge("ch3", "o3", 900, 0),
        charge("ch9", "o_unknown", 450, 0),
    ];
    // Right after o2's hold lapsed a slow Confirm may still come; o1's hold still runs.
    assert!(l.lost_checkouts(&charges, T0 + MIN + 10_000).is_empty());
    let lost = l.lost_checkouts(&charges, T0 + MIN + LOST_CHECKOUT_AFTER_MS);
    assert_eq!(
        lost,
        vec![LostCheckout {
            charge_id: "ch2".into(),
            order_id: "o2".into(),
            amount: MinorUnits(450),
            lane: "primary".into(),
        }]
    );
    // Once o1's hold lapsed too, no live checkout owns it. A charge for an order this
    // event never saw is left for a person to look at.
    let later = T0 + 10 * MIN + LOST_CHECKOUT_AFTER_MS;
    ok(&mut l, Command::SyncNow, later);
    let lost = l.lost_checkouts(&charges, later);
    let ids: Vec<&str> = lost.iter().map(|x| x.charge_id.as_str()).collect();
    assert_eq!(ids, vec!["ch1", "ch2"]);
    // Once refunded in full they are settled: reconciliation is clean but for ch9.
    let settled = vec![
        charge("ch1", "o1", 450, 450),
        charge("ch2", "o2", 450, 450),
        charge("ch3", "o3", 900, 0),
        charge("ch9", "o_unknown", 450, 0),
    ];
    let report = l.reconcile(&settled);
    assert_eq!(report.refunded_unpaid, vec!["ch1", "ch2"]);
    assert_eq!(report.missing_at_edge, vec!["ch9"]);
    assert!(l.lost_checkouts(&settled, later).is_empty());
}

#[test]
fn an_order_over_an_items_purchase_limit_holds_nothing() {
    let mut c = config();
    c.skus[0].max_per_order = Some(2);
    let sku = c.skus[0].id.clone();
    let mut l = EventLedger::new(c, T0 - 60 * MIN).unwrap();
    let before = l.available(&sku);
    // Split over two lines, the merged quantity counts.
    let e = err(
        &mut l,
        hold_cmd("o1", &[(&sku, 2), (&sku, 1)], T0 + MIN),
        T0,
    );
    assert_eq!(
        e,
        LedgerError::PurchaseLimit {
            sku: sku.clone(),
            max: 2
        }
    );
    assert_eq!(e.to_api().code, "purchase_limit");
    assert_eq!(l.available(&sku), before);
    ok(&mut l, hold_cmd("o2", &[(&sku, 2)], T0 + MIN), T0);
}
