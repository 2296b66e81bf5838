//! A deterministic, seeded, replayable simulation of buyers, network and acquirer around
//! the real checkout machine ([`Checkout`]), the real object side and the real ledger, in
//! the manner of quinn-proto's `Pair` tests and TigerBeetle's VOPR.
//!
//! Each seed builds a small event (limited stock, so sell-outs happen; a small offline
//! budget, so it runs out), 3 to 30 buyers with one intent each (a cart and one card, or
//! two: a declined card and another one to try next), two Worker isolates (two routers)
//! and the harness of [`super::tests`]: the real object side over a real ledger persisted to
//! rows, and a Stripe-like acquirer with one result per (lane, idempotency key). The seed
//! also picks which faults are switched on and how often (swarm testing): acquirer faults
//! on any attempt, lanes down for a while, Workers that die between any two steps, object
//! calls that fail before or after they apply, object restarts, clock jumps, lost answers,
//! buyers who press Pay again while the first request still runs, buyers who give up.
//!
//! Every request in flight is a session: a machine and, when it waits, the result of the
//! call it made (the object has applied the call, the acquirer has processed the payment;
//! the result reaches the machine at a later step). Each step advances one session, one
//! buyer or the world (the alarm, a restart, an outage, a clock jump), in a random order.
//! After every step: the ledger's invariants, the offline exposure within its budget, at
//! most one charge per buyer intent, and every definitive answer for a key equal to the
//! first. At the end everything heals, waiting buyers retry until they have a definitive
//! answer, every key with a stored answer is sent again, stored payments are forwarded,
//! time passes, lost checkouts are refunded, and the final state must agree with the
//! acquirer (see [`Sim::final_checks`]).
//!
//! `cargo test --lib checkout::sim_tests` runs [`DEFAULT_SEEDS`] seeds; `scripts/sim --seeds
//! N [--from S]` runs more (`POPTILL_SIM_SEEDS`, `POPTILL_SIM_FROM`). A failing seed prints
//! its last events and the command that runs it alone (`POPTILL_SIM_SEED`).

use super::outcome::{Sent, Transport};
use super::protocol::{BeginReply, Completion, FinishReply};
use super::tests::{
    event, input, router, tight_router, AcqFault, FakeAcquirer, FakeObject, ObjFault,
};
use super::tests::{APPROVE, DECLINE, T0};
use super::*;
use crate::ledger::tests::Rng;
use crate::ledger::{AuthState, IDEMPOTENCY_IN_FLIGHT_MS, LOST_CHECKOUT_AFTER_MS};
use crate::money::MinorUnits;
use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Seeds run by a plain `cargo test`.
const DEFAULT_SEEDS: u64 = 200;
/// Events kept for a failing seed's trace.
const TRACE_LEN: usize = 200;
/// Steps before everything heals.
const MAX_STEPS: u64 = 3_000;
/// Steps allowed after healing for every waiting buyer to get a definitive answer.
const HEAL_STEPS: u64 = 20_000;
/// Another card that approves.
const MASTERCARD: &str = "5555555555554444";

const CARTS: [&str; 4] = [
    r#"[{"sku":"ticket","quantity":1}]"#,
    r#"[{"sku":"ticket","quantity":2}]"#,
    r#"[{"sku":"shirt","quantity":1}]"#,
    r#"[{"sku":"ticket","quantity":1},{"sku":"shirt","quantity":1}]"#,
];

const ACQ_FAULTS: [AcqFault; 9] = [
    AcqFault::Refuse,
    AcqFault::TimeoutUnseen,
    AcqFault::ProcessThenTimeout,
    AcqFault::ProcessThenReset,
    AcqFault::Processing,
    AcqFault::Garbage,
    AcqFault::ServerError,
    AcqFault::ProcessThen500,
    AcqFault::RateLimited,
];

/// What one seed switches on, and how often (per cent, or per mille where it says so).
#[derive(Debug)]
struct Knobs {
    buyers: usize,
    stock: u32,
    aggregate_max: i64,
    acq_fault_pct: u64,
    obj_fault_pct: u64,
    death_permille: u64,
    lost_answer_pct: u64,
    press_again_pct: u64,
    seal_fault_pct: u64,
    outages: bool,
    jumps: bool,
    restarts: bool,
    /// Lanes with concurrency limits of one or two, so checkouts wait for permits and
    /// some are shed (429) after waiting.
    tight_limits: bool,
}

impl Knobs {
    fn draw(rng: &mut Rng) -> Knobs {
        let on = |pct: u64, rng: &mut Rng| rng.below(100) < pct;
        let level = |rng: &mut Rng, max: u64| 1 + rng.below(max);
        Knobs {
            // Most worlds small (so a few hundred fit in a debug `cargo test`), some with
            // a few dozen buyers.
            buyers: if rng.below(10) < 7 {
                3 + rng.below(6) as usize
            } else {
                9 + rng.below(22) as usize
            },
            stock: 3 + rng.below(8) as u32,
            aggregate_max: 4_000 + 1_000 * rng.below(17) as i64,
            acq_fault_pct: if on(80, rng) { level(rng, 40) } else { 0 },
            obj_fault_pct: if on(70, rng) { level(rng, 12) } else { 0 },
            death_permille: if on(70, rng) { level(rng, 30) } else { 0 },
            lost_answer_pct: if on(50, rng) { level(rng, 10) } else { 0 },
            press_again_pct: if on(60, rng) { level(rng, 15) } else { 0 },
            seal_fault_pct: if on(30, rng) { level(rng, 30) } else { 0 },
            outages: on(60, rng),
            jumps: on(70, rng),
            restarts: on(60, rng),
            tight_limits: on(30, rng),
        }
    }
}

/// How a buyer's client retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The card frame: may tokenize the card again before each press (a new token string,
    /// the same card and cart: the same fingerprint).
    Frame,
    /// An API client: the identical request again.
    Api,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BuyerState {
    /// Sends its request (again) at this time.
    Idle {
        at_ms: i64,
    },
    /// Waits for the answer of this session.
    Waiting {
        session: u64,
    },
    /// Has a definitive answer (what it was).
    Done {
        outcome: String,
    },
    GaveUp,
}

/// One buyer and its intent: one cart, one or two cards tried in order.
struct Buyer {
    kind: Kind,
    cart: &'static str,
    cards: Vec<&'static str>,
    card: usize,
    /// Every Idempotency-Key of this intent, the one in use last.
    keys: Vec<String>,
    token: u32,
    /// Requests sent with the current key.
    tries: u32,
    /// Gives up after this many requests without a definitive answer.
    patience: Option<u32>,
    /// Pays with a CVC: each token pair carries its own one-time CVC use.
    cvc: bool,
    /// A new key for a new card: the card is tokenized afresh before the next send.
    new_card: bool,
    state: BuyerState,
}

impl Buyer {
    fn key(&self) -> &str {
        self.keys.last().map(String::as_str).unwrap_or_default()
    }

    fn card(&self) -> &'static str {
        self.cards[self.card]
    }
}

/// What a machine waits for: the result of the call it made.
enum Inbox {
    Object(Box<Result<ObjectResult, ApiError>>),
    Attempt(Sent),
}

/// One request in flight: its machine on one Worker isolate.
struct Session {
    id: u64,
    buyer: usize,
    key: String,
    router: usize,
    co: Checkout,
    inbox: Option<Inbox>,
    /// The step the request was sent at.
    sent: u64,
    /// The answer time of the attempt in flight (`Authorize::answer_by_ms`).
    answer_by: Option<u32>,
    /// An attempt still running after its buyer was answered: its result, and when it
    /// comes.
    late: Option<(Sent, i64)>,
    /// The buyer was answered before the checkout ended (`Step::Answer`).
    answered: bool,
}

/// What a definitive answer said, as replays must say it again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: u16,
    /// The body's `status`, or the error's code.
    state: String,
    order: Option<String>,
}

impl Seen {
    fn of(a: &Answer) -> Seen {
        Seen {
            status: a.status,
            state: state_of(a),
            order: a.order_id.clone(),
        }
    }
}

fn state_of(a: &Answer) -> String {
    a.body["status"]
        .as_str()
        .or_else(|| a.body["error"]["code"].as_str())
        .unwrap_or("?")
        .to_string()
}

/// What an answer means to a buyer.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Not definitive: send the same request again after this long.
    Retry { after_ms: i64 },
    /// Approved or accepted (queued).
    Success,
    /// The card was declined: nothing charged, another card may be tried.
    Declined,
    /// A definitive refusal (sold out, the hold lapsed, ...).
    Refused,
    /// No buyer of this simulation may ever get this answer.
    Wrong(String),
}

/// The error codes the OpenAPI document lists for the checkout, per status.
fn documented_checkout_codes() -> &'static BTreeMap<u16, Vec<String>> {
    static CODES: std::sync::OnceLock<BTreeMap<u16, Vec<String>>> = std::sync::OnceLock::new();
    CODES.get_or_init(|| {
        let doc = crate::openapi::document();
        let responses = doc["paths"]["/v1/events/{id}/checkout"]["post"]["responses"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        responses
            .iter()
            .filter_map(|(status, r)| {
                // The error schema, alone or beside the payment's answer (`anyOf`).
                let schema = &r["content"]["application/json"]["schema"];
                let error = schema["anyOf"]
                    .as_array()
                    .and_then(|a| a.iter().find(|s| s.get("allOf").is_some()))
                    .unwrap_or(schema);
                let codes =
                    error["properties"]["error"]["properties"]["code"]["enum"].as_array()?;
                Some((
                    status.parse().ok()?,
                    codes
                        .iter()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect(),
                ))
            })
            .collect()
    })
}

/// Whether an answer is one the API document describes: a payment's answer parses as
/// [`CheckoutAnswer`] (unknown fields denied), an error is `{"error": {...}}` with a code
/// the document lists for its status.
fn contract_problem(a: &Answer) -> Option<String> {
    use crate::api::answers::{CheckoutAnswer, ErrorBody};
    let payment = matches!(a.status, 201 | 202) || a.body["status"] == "declined";
    if payment {
        return serde_json::from_value::<CheckoutAnswer>(a.body.clone())
            .err()
            .map(|e| format!("a {} answer the document does not describe: {e}", a.status));
    }
    if let Err(e) = serde_json::from_value::<ErrorBody>(a.body.clone()) {
        return Some(format!(
            "a {} error body the document does not describe: {e}",
            a.status
        ));
    }
    let code = a.body["error"]["code"].as_str().unwrap_or("");
    let listed = documented_checkout_codes()
        .get(&a.status)
        .is_some_and(|codes| codes.iter().any(|c| c == code));
    (!listed).then(|| {
        format!(
            "{} {code} is not listed for the checkout in the document",
            a.status
        )
    })
}

fn verdict(a: &Answer) -> Verdict {
    if let Some(problem) = contract_problem(a) {
        return Verdict::Wrong(problem);
    }
    let state = a.body["status"].as_str().unwrap_or("");
    let code = a.body["error"]["code"].as_str().unwrap_or("");
    let retryable = a.body["error"]["retryable"].as_bool().unwrap_or(false);
    let after_ms = i64::from(a.retry_after_s.unwrap_or(1)) * 1000;
    match a.status {
        201 if state == "approved" || state == "queued" => Verdict::Success,
        // Accepted, the acquirer still answering: ask again to learn the outcome.
        201 if state == "confirming" => Verdict::Retry { after_ms },
        202 if state == "pending" => Verdict::Retry { after_ms },
        s if (200..300).contains(&s) => Verdict::Wrong(format!("a {s} saying {state:?}")),
        s if s >= 500 => Verdict::Retry { after_ms },
        _ if retryable => Verdict::Retry { after_ms },
        402 if state == "declined" => Verdict::Declined,
        422 if code == "idempotency_mismatch" => {
            Verdict::Wrong("idempotency_mismatch for the buyer's own request".into())
        }
        409 if code == "out_of_stock" || code == "hold_lapsed" => Verdict::Refused,
        _ => Verdict::Wrong(format!("unexpected {} {code:?}", a.status)),
    }
}

fn short(order: &str) -> &str {
    order
        .strip_prefix("ord_")
        .map(|s| &s[..s.len().min(6)])
        .unwrap_or(order)
}

fn describe_command(c: Option<&Command>) -> String {
    match c {
        None => "-".into(),
        Some(Command::Confirm {
            charge_id, lane, ..
        }) => format!("confirm {charge_id} on {}", lane.as_deref().unwrap_or("?")),
        Some(Command::Release { reason, .. }) => format!("release ({reason})"),
        Some(Command::QueueAuthorization(q)) => format!(
            "queue {} on {}{}",
            q.idempotency_key.rsplit('_').next().unwrap_or(""),
            q.lane.as_deref().unwrap_or("?"),
            if q.resolves_attempt {
                " (resolves an unknown attempt)"
            } else {
                ""
            }
        ),
        Some(Command::NoteAttempt { lane, .. }) => format!("note attempt on {lane}"),
        Some(Command::Hold { .. }) => "hold".into(),
        Some(_) => "other command".into(),
    }
}

fn describe_call(c: &ObjectCall) -> String {
    match c {
        ObjectCall::Begin(b) if b.fingerprint.is_none() => "begin (look-up only)".into(),
        ObjectCall::Begin(b) => format!(
            "begin{}",
            b.then
                .as_ref()
                .map(|f| format!(" + {}", describe_command(f.command.as_ref())))
                .unwrap_or_default()
        ),
        ObjectCall::Finish(f) => format!(
            "finish [{}] {}",
            describe_command(f.command.as_ref()),
            match &f.complete {
                Completion::Answer { answer } => format!("keep {}", answer.status),
                Completion::Abandon { .. } => "abandon the key".into(),
            }
        ),
        ObjectCall::Command(c) => describe_command(Some(c)),
    }
}

fn describe_result(r: &Result<ObjectResult, ApiError>) -> String {
    match r {
        Err(e) => format!("error {} {}", e.status, e.code),
        Ok(ObjectResult::Begin(a)) => match a {
            BeginReply::Replay { answer } => format!(
                "replay {} {}",
                answer.status,
                answer.body["status"].as_str().unwrap_or("?")
            ),
            BeginReply::InFlight => "in flight".into(),
            BeginReply::Mismatch => "mismatch".into(),
            BeginReply::NoRecord => "no record".into(),
            BeginReply::Refused { error } => format!("refused {}", error.code),
            BeginReply::Held { order, resumed } => format!(
                "held {} ({}, lane {}){}",
                short(&order.order_id),
                order.state.as_str(),
                order.lane,
                if *resumed { " resumed" } else { "" }
            ),
            BeginReply::Finished { answer } => format!("held and stored {}", answer.status),
            BeginReply::FinishRefused { error } => format!("store refused {}", error.code),
        },
        Ok(ObjectResult::Finish(f)) => match f {
            FinishReply::Stored { answer } => format!(
                "stored {} {}",
                answer.status,
                answer.body["status"].as_str().unwrap_or("?")
            ),
            FinishReply::Abandoned => "abandoned".into(),
            FinishReply::Refused { error } => format!("refused {}", error.code),
        },
        Ok(ObjectResult::Command(Ok(()))) => "ok".into(),
        Ok(ObjectResult::Command(Err(e))) => format!("refused {}", e.code),
    }
}

fn describe_sent(s: &Sent) -> String {
    match s {
        Ok((status, body)) => format!("{status} {}", body.chars().take(70).collect::<String>()),
        Err(Transport::Refused) => "connection refused".into(),
        Err(Transport::Timeout) => "timeout".into(),
        Err(Transport::Lost) => "connection lost".into(),
    }
}

fn describe_answer(a: &Answer) -> String {
    format!(
        "{} {}{}{} [{}]",
        a.status,
        state_of(a),
        a.order_id
            .as_deref()
            .map(|o| format!(" {}", short(o)))
            .unwrap_or_default(),
        if a.replayed { " (replayed)" } else { "" },
        a.routing.as_deref().unwrap_or("")
    )
}

/// One simulated world.
struct Sim {
    seed: u64,
    rng: Rng,
    knobs: Knobs,
    ev: Arc<EventConfig>,
    routers: Vec<Router>,
    obj: FakeObject,
    acq: FakeAcquirer,
    now: i64,
    buyers: Vec<Buyer>,
    sessions: Vec<Session>,
    next_session: u64,
    /// Lanes down, until when.
    down_until: BTreeMap<String, i64>,
    /// No more faults; waiting buyers finish.
    healing: bool,
    /// Each key's first definitive answer that names an order, and the step it came at.
    first: BTreeMap<String, (Seen, u64)>,
    /// Which buyer an order belongs to: the orders its keys derive, and every order a
    /// session of the buyer was seen to hold.
    owner: BTreeMap<String, usize>,
    charges_seen: usize,
    /// The object calls (and whether an alarm or restart happened) at the last check.
    checked_calls: u32,
    dirty: bool,
    step: u64,
    trace: VecDeque<String>,
    /// Print every event as it happens (`POPTILL_SIM_TRACE=1`).
    verbose: bool,
    stats: BTreeMap<&'static str, u64>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
        let knobs = Knobs::draw(&mut rng);
        let mut ev = event(knobs.stock);
        ev.offline.per_transaction_max = MinorUnits(4_000);
        ev.offline.aggregate_max = MinorUnits(knobs.aggregate_max);
        let ev = Arc::new(ev);
        let mut buyers = Vec::with_capacity(knobs.buyers);
        for _ in 0..knobs.buyers {
            let cards = match rng.below(10) {
                0..=5 => vec![APPROVE],
                6 => vec![MASTERCARD],
                7 | 8 => vec![DECLINE, APPROVE],
                _ => vec![DECLINE],
            };
            buyers.push(Buyer {
                kind: if rng.below(2) == 0 {
                    Kind::Frame
                } else {
                    Kind::Api
                },
                cart: CARTS[rng.below(CARTS.len() as u64) as usize],
                cards,
                card: 0,
                keys: Vec::new(),
                token: 0,
                tries: 0,
                patience: (rng.below(4) == 0).then(|| 1 + rng.below(4) as u32),
                cvc: rng.below(3) == 0,
                new_card: false,
                state: BuyerState::Idle {
                    at_ms: T0 + rng.below(20_000) as i64,
                },
            });
        }
        let tight = knobs.tight_limits;
        let mut sim = Sim {
            seed,
            rng,
            knobs,
            obj: FakeObject::new((*ev).clone()),
            ev,
            routers: if tight {
                vec![tight_router(), tight_router()]
            } else {
                vec![router(), router()]
            },
            acq: FakeAcquirer::default(),
            now: T0,
            buyers,
            sessions: Vec::new(),
            next_session: 1,
            down_until: BTreeMap::new(),
            healing: false,
            first: BTreeMap::new(),
            owner: BTreeMap::new(),
            charges_seen: 0,
            checked_calls: 0,
            dirty: true,
            step: 0,
            trace: VecDeque::new(),
            verbose: std::env::var("POPTILL_SIM_TRACE").is_ok_and(|v| v == "1"),
            stats: BTreeMap::new(),
        };
        for b in 0..sim.buyers.len() {
            sim.new_key(b);
        }
        sim
    }

    fn note(&mut self, s: String) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        let line = format!(
            "{:>5} t+{:>9.3}s {s}",
            self.step,
            (self.now - T0) as f64 / 1000.0
        );
        if self.verbose {
            println!("{line}");
        }
        self.trace.push_back(line);
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn chance(&mut self, pct: u64) -> bool {
        pct > 0 && self.rng.below(100) < pct
    }

    #[track_caller]
    fn fail(&self, why: String) -> ! {
        panic!("{why}");
    }

    /// The report of a failed seed: what failed, the seed's knobs and its last events.
    fn report(&self, why: &str) -> String {
        let mut s = format!(
            "checkout simulation failed, seed {}: {why}\nknobs: {:?}\nlast {} events (step, time, what):\n",
            self.seed,
            self.knobs,
            self.trace.len()
        );
        for line in &self.trace {
            s.push_str("  ");
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&format!(
            "buyers: {}\nre-run this seed alone: POPTILL_SIM_SEED={seed} cargo test --lib checkout::sim_tests -- --nocapture\n  (or scripts/sim --seed {seed} --trace, which prints every event)\n",
            self.buyers
                .iter()
                .enumerate()
                .map(|(i, b)| format!("b{i}={:?}", b.state))
                .collect::<Vec<_>>()
                .join(" "),
            seed = self.seed
        ));
        s
    }

    // ---- buyers --------------------------------------------------------------------

    /// Starts a new Idempotency-Key for the buyer's current card.
    fn new_key(&mut self, b: usize) {
        let key = format!("s{}-b{b}-k{}", self.seed, self.buyers[b].keys.len());
        let order = CheckoutKey::derive(Some(&key), [0; 12])
            .map(|k| k.order_id)
            .unwrap_or_default();
        self.own(&order, b);
        let buyer = &mut self.buyers[b];
        buyer.new_card = !buyer.keys.is_empty();
        buyer.keys.push(key);
        buyer.tries = 0;
    }

    fn own(&mut self, order: &str, b: usize) {
        match self.owner.get(order) {
            Some(o) if *o != b => self.fail(format!(
                "order {} belongs to buyers b{o} and b{b}",
                short(order)
            )),
            Some(_) => {}
            None => {
                self.owner.insert(order.to_string(), b);
            }
        }
    }

    /// The buyer sends its request (again), with the same key.
    fn send(&mut self, b: usize) {
        let retokenize = {
            let buyer = &self.buyers[b];
            buyer.token == 0
                || buyer.new_card
                || (buyer.kind == Kind::Frame && self.rng.below(2) == 0)
        };
        let buyer = &mut self.buyers[b];
        if retokenize {
            buyer.token += 1;
            buyer.new_card = false;
        }
        buyer.tries += 1;
        *self.stats.entry("sends").or_default() += 1;
        let buyer = &mut self.buyers[b];
        let token = format!("tok_b{b}_{}", buyer.token);
        let key = buyer.key().to_string();
        let mut inp = input(&self.ev, &key, buyer.cart, buyer.card(), &token, self.now);
        if buyer.cvc {
            with_cvc(&mut inp, &token);
        }
        let co = Checkout::new(inp);
        let id = self.next_session;
        self.next_session += 1;
        buyer.state = BuyerState::Waiting { session: id };
        let line = format!(
            "b{b} {:?} sends {key} try {} ({}, card {}, {token})",
            buyer.kind,
            buyer.tries,
            buyer.cart,
            &buyer.card()[12..]
        );
        let router = self.rng.below(self.routers.len() as u64) as usize;
        self.sessions.push(Session {
            id,
            buyer: b,
            key,
            router,
            co,
            inbox: None,
            sent: self.step,
            answer_by: None,
            late: None,
            answered: false,
        });
        self.note(format!("{line} -> s{id} on isolate {router}"));
        // The Worker starts the machine as soon as the request arrives.
        let last = self.sessions.len() - 1;
        self.step_session(last, false);
    }

    /// The buyer got no answer (a dead Worker, a lost answer).
    fn network_error(&mut self, b: usize, session: u64) {
        if self.buyers[b].state == (BuyerState::Waiting { session }) {
            let after = 300 + self.rng.below(2_000) as i64;
            self.retry_later(b, after);
        }
    }

    fn retry_later(&mut self, b: usize, after_ms: i64) {
        let jitter = self.rng.below(500) as i64;
        let buyer = &mut self.buyers[b];
        if buyer.patience.is_some_and(|p| buyer.tries >= p) {
            buyer.state = BuyerState::GaveUp;
            self.count("buyer gave up");
            self.note(format!("b{b} gives up"));
            return;
        }
        // The frame follows Retry-After; an API client backs off.
        let backoff = match buyer.kind {
            Kind::Frame => after_ms,
            Kind::Api => (after_ms << buyer.tries.min(5).saturating_sub(1)).min(20_000),
        };
        buyer.state = BuyerState::Idle {
            at_ms: self.now + backoff + jitter,
        };
    }

    fn hears(&mut self, b: usize, a: &Answer) {
        match verdict(a) {
            Verdict::Retry { after_ms } => self.retry_later(b, after_ms),
            Verdict::Success => {
                self.buyers[b].state = BuyerState::Done {
                    outcome: state_of(a),
                }
            }
            Verdict::Declined if self.buyers[b].card + 1 < self.buyers[b].cards.len() => {
                self.buyers[b].card += 1;
                self.new_key(b);
                let at_ms = self.now + 500 + self.rng.below(3_000) as i64;
                self.buyers[b].state = BuyerState::Idle { at_ms };
                self.note(format!("b{b} tries its next card with a new key"));
            }
            Verdict::Declined | Verdict::Refused => {
                self.buyers[b].state = BuyerState::Done {
                    outcome: state_of(a),
                }
            }
            Verdict::Wrong(why) => self.fail(format!("b{b} got a wrong answer: {why}")),
        }
    }

    /// Checks an answer against the first definitive answer for its key. `sent` is the
    /// step the request was sent at: a refusal that holds nothing (sold out) may have been
    /// decided before that first answer and delivered after it; a request sent after it
    /// must replay it.
    fn record_answer(&mut self, key: &str, a: &Answer, sent: u64) {
        let v = verdict(a);
        if let Verdict::Wrong(why) = &v {
            self.fail(format!("{key} answered {}: {why}", describe_answer(a)));
        }
        self.count(match a.status {
            201 if state_of(a) == "approved" => "answer approved",
            201 => "answer queued",
            202 => "answer pending",
            402 if state_of(a) == "declined" => "answer declined",
            409 if state_of(a) == "idempotency_in_flight" => "answer in flight",
            409 if state_of(a) == "out_of_stock" => "answer out of stock",
            409 => "answer hold lapsed",
            s if s >= 500 => "answer 5xx",
            _ => "answer other retryable",
        });
        if a.replayed {
            self.count("answer replayed");
        }
        if matches!(v, Verdict::Retry { .. }) {
            return;
        }
        let seen = Seen::of(a);
        match self.first.get(key) {
            Some((first, at)) if *first != seen && (seen.order.is_some() || sent > *at) => self
                .fail(format!(
                    "{key} answered {seen:?}, but its first definitive answer was {first:?}"
                )),
            Some(_) => {}
            None if seen.order.is_some() => {
                self.first.insert(key.to_string(), (seen, self.step));
            }
            None => {}
        }
    }

    // ---- sessions ------------------------------------------------------------------

    fn obj_fault(&mut self) -> ObjFault {
        if self.healing || !self.chance(self.knobs.obj_fault_pct) {
            return ObjFault::None;
        }
        if self.rng.below(2) == 0 {
            ObjFault::Before
        } else {
            ObjFault::After
        }
    }

    fn acq_fault(&mut self) -> AcqFault {
        if self.healing || !self.chance(self.knobs.acq_fault_pct) {
            return AcqFault::None;
        }
        ACQ_FAULTS[self.rng.below(ACQ_FAULTS.len() as u64) as usize]
    }

    /// Advances one session by one step.
    fn step_session(&mut self, idx: usize, may_die: bool) {
        let mut s = self.sessions.swap_remove(idx);
        if may_die && !self.healing && self.rng.below(1000) < self.knobs.death_permille {
            self.count("worker died");
            self.note(format!(
                "s{} b{}: the Worker dies{}",
                s.id,
                s.buyer,
                if s.inbox.is_some() {
                    " before reading its result"
                } else {
                    ""
                }
            ));
            self.network_error(s.buyer, s.id);
            return;
        }
        match s.inbox.take() {
            Some(Inbox::Object(r)) => s.co.handle_object(*r, self.now),
            Some(Inbox::Attempt(sent)) => {
                let took = if self.chance(5) {
                    1_000 + self.rng.below(5_000) as i64
                } else {
                    self.rng.below(300) as i64
                };
                match s.answer_by.take() {
                    // No answer by the answer time: the buyer is answered, the request
                    // runs on and its result comes later.
                    Some(by) if took > i64::from(by) => {
                        self.count("answered before the acquirer");
                        self.now += i64::from(by);
                        let at = self.now + took - i64::from(by);
                        s.late = Some((sent, at));
                        s.co.handle_answer_due(&mut self.routers[s.router], self.now);
                    }
                    _ => {
                        self.now += took;
                        s.co.handle_attempt(&mut self.routers[s.router], sent, self.now);
                    }
                }
            }
            None => match s.co.poll(&mut self.routers[s.router], self.now) {
                Step::Object(call) => {
                    if let ObjectCall::Begin(b) = &call {
                        if b.then.is_some() {
                            self.count("one-call store");
                            let held = self.obj.ledger.order(s.co.order_id()).is_some();
                            if held && self.obj.ledger.idempotency_kept(&b.key) {
                                self.count("one-call store taking over a key");
                            }
                        }
                    }
                    let fault = self.obj_fault();
                    if fault != ObjFault::None {
                        self.count(if fault == ObjFault::Before {
                            "object call lost before"
                        } else {
                            "object call lost after"
                        });
                    }
                    let what = describe_call(&call);
                    let r = self.obj.call(call, self.now, fault);
                    if let Ok(ObjectResult::Begin(BeginReply::Held { order, resumed })) = &r {
                        self.own(&order.order_id.clone(), s.buyer);
                        if *resumed {
                            self.count("resumed order");
                        }
                    }
                    let line = format!(
                        "s{} b{}: object {what} [{fault:?}] -> {}",
                        s.id,
                        s.buyer,
                        describe_result(&r)
                    );
                    self.note(line);
                    s.inbox = Some(Inbox::Object(Box::new(r)));
                }
                Step::SealKey => {
                    let key = if !self.healing && self.chance(self.knobs.seal_fault_pct) {
                        self.count("seal key unavailable");
                        Err(ApiError::new(
                            503,
                            "temporarily_unavailable",
                            "The key store did not answer.",
                        )
                        .retryable())
                    } else {
                        Ok(Secret::new(self.obj.sf_key))
                    };
                    let line = format!(
                        "s{} b{}: sealing key {}",
                        s.id,
                        s.buyer,
                        if key.is_ok() { "read" } else { "unavailable" }
                    );
                    self.note(line);
                    s.co.handle_seal_key(key);
                    // Reading the key is quick: the machine goes on in the same step.
                    self.sessions.push(s);
                    let last = self.sessions.len() - 1;
                    return self.step_session(last, false);
                }
                Step::Authorize(a) => {
                    let fault = self.acq_fault();
                    if fault != AcqFault::None {
                        self.count("acquirer fault");
                    }
                    let sent = self.acq.authorize(&a.lane, &a.call, fault);
                    let line = format!(
                        "s{} b{}: acquirer {}{} [{fault:?}] -> {}",
                        s.id,
                        s.buyer,
                        a.lane,
                        if self.acq.down.contains(&a.lane) {
                            " (down)"
                        } else {
                            ""
                        },
                        describe_sent(&sent)
                    );
                    self.note(line);
                    self.new_charges(Some(s.buyer));
                    s.answer_by = a.answer_by_ms;
                    s.inbox = Some(Inbox::Attempt(sent));
                }
                Step::Wait { ms } => {
                    self.count("waited for a permit");
                    self.now += i64::from(ms);
                }
                Step::Answer(answer) => {
                    self.count("answered early");
                    self.answered(&s, &answer);
                    s.answered = true;
                }
                Step::Late => {
                    let Some((sent, at)) = s.late.take() else {
                        self.fail("the machine asked for a late result it never had".into());
                    };
                    self.now = self.now.max(at);
                    self.note(format!(
                        "s{} b{}: the late acquirer answer -> {}",
                        s.id,
                        s.buyer,
                        describe_sent(&sent)
                    ));
                    s.co.handle_attempt(&mut self.routers[s.router], sent, self.now);
                }
                Step::Done(answer) => {
                    if s.answered {
                        self.note(format!(
                            "s{} b{}: ends after its answer: {}",
                            s.id,
                            s.buyer,
                            describe_answer(&answer)
                        ));
                    } else {
                        self.answered(&s, &answer);
                    }
                    return;
                }
            },
        }
        self.sessions.push(s);
    }

    fn answered(&mut self, s: &Session, a: &Answer) {
        let listening = self.buyers[s.buyer].state == (BuyerState::Waiting { session: s.id });
        let lost = listening && !self.healing && self.chance(self.knobs.lost_answer_pct);
        self.note(format!(
            "s{} b{}: answers {}{}",
            s.id,
            s.buyer,
            describe_answer(a),
            if !listening {
                " (nobody listens)"
            } else if lost {
                " (lost on the way)"
            } else {
                ""
            }
        ));
        self.record_answer(&s.key, a, s.sent);
        if lost {
            self.count("answer lost");
            self.network_error(s.buyer, s.id);
        } else if listening {
            self.hears(s.buyer, a);
        }
    }

    /// Notes the acquirer's new charges and checks that no intent was charged twice.
    fn new_charges(&mut self, by: Option<usize>) {
        while self.charges_seen < self.acq.charges.len() {
            let c = self.acq.charges[self.charges_seen].clone();
            self.charges_seen += 1;
            if let Some(b) = by {
                self.own(&c.order_id, b);
            }
            let line = format!(
                "acquirer charged {} {} for {} on {} (key {})",
                c.id,
                c.amount,
                short(&c.order_id),
                c.lane,
                c.key
            );
            self.note(line);
            let Some(b) = self.owner.get(&c.order_id).copied() else {
                self.fail(format!("charge {} is for an order no buyer holds", c.id));
            };
            let mine: Vec<String> = self
                .acq
                .charges
                .iter()
                .filter(|x| self.owner.get(&x.order_id) == Some(&b))
                .map(|x| format!("{} ({} on {})", x.id, short(&x.order_id), x.lane))
                .collect();
            if mine.len() > 1 {
                self.fail(format!(
                    "buyer b{b} (one intent) was charged {} times: {}",
                    mine.len(),
                    mine.join(", ")
                ));
            }
        }
    }

    // ---- the world -----------------------------------------------------------------

    fn alarm(&mut self) {
        self.count("alarm");
        self.dirty = true;
        let queued = self.queued();
        // Forwards fail like online attempts do, including "processed, then the answer
        // was lost": the next forward must replay the same key on the same lane.
        self.acq.forward_faults.clear();
        for _ in 0..queued {
            let f = self.acq_fault();
            if f != AcqFault::None {
                self.count("forward fault");
            }
            self.acq.forward_faults.push_back(f);
        }
        self.obj.alarm(&mut self.acq, self.now);
        let after = self.queued();
        self.note(format!(
            "alarm fires: {queued} stored payments queued before, {after} after"
        ));
        self.new_charges(None);
    }

    fn queued(&self) -> usize {
        self.obj
            .ledger
            .auths()
            .filter(|a| a.state == AuthState::Queued)
            .count()
    }

    fn world_event(&mut self) {
        let r = self.rng.below(1000);
        if r < 30 {
            self.alarm();
        } else if r < 33 && self.knobs.restarts {
            self.count("object restart");
            self.dirty = true;
            let before = self.obj.ledger.clone();
            self.obj.restart();
            self.note("the event object restarts".into());
            // The ledger's clock (`last_now_ms`, the waiting room's refill time) is only
            // written with a change; everything else must come back from the rows.
            let content = |l: &crate::ledger::EventLedger| {
                let mut v = serde_json::to_value(l).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.remove("last_now_ms");
                }
                if let Some(q) = v.get_mut("queue").and_then(|q| q.as_object_mut()) {
                    q.remove("last_refill_ms");
                }
                v
            };
            if content(&before) != content(&self.obj.ledger) {
                let a = content(&before);
                let b = content(&self.obj.ledger);
                let mut diff = Vec::new();
                if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
                    for (k, v) in a {
                        if b.get(k) != Some(v) {
                            diff.push(format!(
                                "{k}: {v} vs {}",
                                b.get(k).cloned().unwrap_or_default()
                            ));
                        }
                    }
                }
                self.fail(format!(
                    "the persisted rows do not rebuild the ledger: {}",
                    diff.join("; ")
                ));
            }
        } else if r < 50 && self.knobs.outages {
            self.count("lane down");
            let lane = if self.rng.below(2) == 0 {
                "fast"
            } else {
                "cheap"
            };
            let until = self.now + 1_000 + self.rng.below(60_000) as i64;
            self.down_until.insert(lane.to_string(), until);
            self.note(format!(
                "lane {lane} goes down for {} s",
                (until - self.now) / 1000
            ));
        } else if r < 53 && self.knobs.outages {
            // Long enough for the breakers to open and the router to plan offline, and for
            // keys in flight to be taken over meanwhile.
            self.count("every lane down");
            let until = self.now + 20_000 + self.rng.below(130_000) as i64;
            for lane in ["fast", "cheap"] {
                self.down_until.insert(lane.to_string(), until);
            }
            self.note(format!(
                "every lane goes down for {} s",
                (until - self.now) / 1000
            ));
        } else if r < 65 && self.knobs.jumps {
            self.count("clock jump");
            let jump = match self.rng.below(3) {
                0 => 1_000 + self.rng.below(9_000) as i64,
                1 => IDEMPOTENCY_IN_FLIGHT_MS + self.rng.below(5_000) as i64,
                _ => HOLD_MS + self.rng.below(80_000) as i64,
            };
            self.now += jump;
            self.note(format!("the clock jumps {} s", jump / 1000));
        }
    }

    fn lanes(&mut self) {
        let now = self.now;
        self.down_until.retain(|_, until| *until > now);
        self.acq.down = self.down_until.keys().cloned().collect();
    }

    fn settled(&self) -> bool {
        self.sessions.is_empty()
            && self
                .buyers
                .iter()
                .all(|b| matches!(b.state, BuyerState::Done { .. } | BuyerState::GaveUp))
    }

    /// One step: the world, or one session, or one buyer.
    fn step_once(&mut self) {
        self.step += 1;
        self.count("steps");
        self.now += self.rng.below(40) as i64;
        self.lanes();
        if self.healing {
            if self.rng.below(100) < 5 {
                self.alarm();
            }
        } else {
            self.world_event();
        }
        let ready: Vec<usize> = (0..self.buyers.len())
            .filter(|b| matches!(self.buyers[*b].state, BuyerState::Idle { at_ms } if at_ms <= self.now))
            .collect();
        let waiting: Vec<usize> = (0..self.buyers.len())
            .filter(|b| matches!(self.buyers[*b].state, BuyerState::Waiting { .. }))
            .collect();
        let n = self.sessions.len() + ready.len() + waiting.len();
        if n == 0 {
            // Nothing to do until the next buyer wants to send.
            let next = self
                .buyers
                .iter()
                .filter_map(|b| match b.state {
                    BuyerState::Idle { at_ms } => Some(at_ms),
                    _ => None,
                })
                .min();
            self.now = next.unwrap_or(self.now + 1_000).max(self.now);
            return;
        }
        let pick = self.rng.below(n as u64) as usize;
        if pick < self.sessions.len() {
            self.step_session(pick, true);
        } else if pick < self.sessions.len() + ready.len() {
            self.send(ready[pick - self.sessions.len()]);
        } else {
            let b = waiting[pick - self.sessions.len() - ready.len()];
            if self.healing {
                return;
            }
            if self.buyers[b].patience.is_some() && self.chance(3) {
                self.buyers[b].state = BuyerState::GaveUp;
                self.count("buyer gave up");
                self.note(format!("b{b} closes the page while waiting"));
            } else if self.chance(self.knobs.press_again_pct) {
                self.count("pressed again while waiting");
                self.note(format!(
                    "b{b} presses Pay again while its request still runs"
                ));
                self.send(b);
            }
        }
    }

    /// After every step.
    fn check_step(&mut self) {
        // Whenever the ledger may have changed (the harness also checks after each begin,
        // finish and alarm).
        if self.obj.calls != self.checked_calls || self.dirty {
            self.checked_calls = self.obj.calls;
            self.dirty = false;
            if let Err(e) = self.obj.ledger.check_invariants() {
                self.fail(format!("ledger invariant: {e}"));
            }
        }
        let exposure = self.obj.ledger.offline_exposure();
        if exposure > self.ev.offline.aggregate_max {
            self.fail(format!(
                "offline exposure {} above aggregate_max {}",
                exposure.0, self.ev.offline.aggregate_max.0
            ));
        }
        self.new_charges(None);
    }

    // ---- the end -------------------------------------------------------------------

    fn run(&mut self) {
        let line = format!("seed {} knobs {:?}", self.seed, self.knobs);
        self.note(line);
        while self.step < MAX_STEPS && !self.settled() {
            self.step_once();
            self.check_step();
        }
        self.note("everything heals".into());
        self.healing = true;
        self.down_until.clear();
        self.lanes();
        let healed_at = self.step;
        while !self.settled() {
            if self.step - healed_at > HEAL_STEPS {
                self.fail("buyers still have no definitive answer long after healing".into());
            }
            self.step_once();
            self.check_step();
        }
        self.replay_every_answer();
        self.drain();
        self.now += HOLD_MS + LOST_CHECKOUT_AFTER_MS + IDEMPOTENCY_IN_FLIGHT_MS;
        self.alarm();
        self.reconcile_lost();
        self.check_step();
        self.final_checks();
    }

    /// Sends every key with a definitive answer once more: it must answer the same.
    fn replay_every_answer(&mut self) {
        let keys: Vec<(String, Seen)> = self
            .first
            .iter()
            .map(|(k, (s, _))| (k.clone(), s.clone()))
            .collect();
        for (key, first) in keys {
            let Some(b) = self.buyers.iter().position(|b| b.keys.contains(&key)) else {
                self.fail(format!("{key} belongs to no buyer"));
            };
            let card = self.buyers[b]
                .keys
                .iter()
                .position(|k| *k == key)
                .map(|i| self.buyers[b].cards[i.min(self.buyers[b].cards.len() - 1)])
                .unwrap_or(APPROVE);
            let cart = self.buyers[b].cart;
            for attempt in 0.. {
                if attempt > 200 {
                    self.fail(format!("{key} has no definitive answer on replay"));
                }
                let token = format!("tok_replay_{attempt}");
                let mut inp = input(&self.ev, &key, cart, card, &token, self.now);
                if self.buyers[b].cvc {
                    with_cvc(&mut inp, &token);
                }
                let mut co = Checkout::new(inp);
                let a = self.drive_clean(&mut co);
                self.note(format!("replay of {key}: {}", describe_answer(&a)));
                self.record_answer(&key, &a, self.step);
                match verdict(&a) {
                    Verdict::Retry { after_ms } => {
                        self.now += after_ms;
                        self.alarm();
                    }
                    _ => {
                        if Seen::of(&a) != first {
                            self.fail(format!(
                                "replay of {key} answered {:?}, first {first:?}",
                                Seen::of(&a)
                            ));
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Runs one machine to its answer without faults.
    fn drive_clean(&mut self, co: &mut Checkout) -> Answer {
        for _ in 0..1000 {
            self.now += 5;
            match co.poll(&mut self.routers[0], self.now) {
                Step::Object(call) => {
                    let r = self.obj.call(call, self.now, ObjFault::None);
                    co.handle_object(r, self.now);
                }
                Step::SealKey => co.handle_seal_key(Ok(Secret::new(self.obj.sf_key))),
                Step::Authorize(a) => {
                    let sent = self.acq.authorize(&a.lane, &a.call, AcqFault::None);
                    self.new_charges(None);
                    self.now += 20;
                    co.handle_attempt(&mut self.routers[0], sent, self.now);
                }
                Step::Wait { ms } => self.now += i64::from(ms),
                Step::Answer(_) | Step::Late => panic!("no attempt outlives its answer time here"),
                Step::Done(a) => return a,
            }
        }
        self.fail("a checkout did not finish in 1000 steps".into());
    }

    /// Fires the alarm until no stored payment is left queued.
    fn drain(&mut self) {
        for _ in 0..200 {
            if self.queued() == 0 {
                return;
            }
            self.now += 60_000;
            self.alarm();
            self.check_step();
        }
        self.fail(format!(
            "{} stored payments still queued after healing",
            self.queued()
        ));
    }

    /// Reconciliation, as the object runs it: charges whose checkout was lost move their
    /// orders to `Lost` and are refunded once, through the ledger's own refunds.
    fn reconcile_lost(&mut self) {
        let run = self.obj.reconcile(&mut self.acq, self.now);
        for l in &run.lost {
            self.count("lost checkout refunded");
            self.note(format!(
                "reconciliation: refund {} for {}",
                l.charge_id,
                short(&l.order_id)
            ));
        }
        let again = self.obj.reconcile(&mut self.acq, self.now);
        if !again.lost.is_empty() {
            self.fail(format!(
                "a second reconciliation found {} more lost checkouts",
                again.lost.len()
            ));
        }
    }

    /// The end state agrees with the acquirer and with what the buyers were told.
    fn final_checks(&mut self) {
        let ledger = &self.obj.ledger;
        let mut problems: Vec<String> = Vec::new();
        // Every order is final and matches the acquirer.
        for o in ledger.orders() {
            let live: Vec<_> = self
                .acq
                .charges
                .iter()
                .filter(|c| c.order_id == o.order_id && c.refunded < c.amount)
                .collect();
            let ok = match o.state {
                OrderState::Approved | OrderState::Forwarded => {
                    live.len() == 1
                        && Some(live[0].id.as_str()) == o.charge_id.as_deref()
                        && live[0].lane == o.lane
                        && live[0].amount == o.total.0
                }
                OrderState::Declined | OrderState::Expired | OrderState::Abandoned => {
                    live.is_empty()
                }
                // Reconciliation found its charge after the checkout was lost: refunded in
                // full, the goods never handed over.
                OrderState::Lost => live.is_empty() && !o.stock_taken,
                _ => false,
            };
            if !ok {
                problems.push(format!(
                    "order {} is {} on {} (charge {:?}) with unrefunded charges {:?}",
                    short(&o.order_id),
                    o.state.as_str(),
                    o.lane,
                    o.charge_id,
                    live.iter()
                        .map(|c| format!("{} on {}", c.id, c.lane))
                        .collect::<Vec<_>>()
                ));
            }
        }
        for c in &self.acq.charges {
            if c.refunded < c.amount && ledger.order(&c.order_id).is_none() {
                problems.push(format!("charge {} has no order in the ledger", c.id));
            }
        }
        // No oversell, counted from the orders.
        for sku in &self.ev.skus {
            let sold: u32 = ledger
                .orders()
                .filter(|o| o.stock_taken)
                .flat_map(|o| o.lines.iter())
                .filter(|l| l.sku == sku.id)
                .map(|l| l.qty)
                .sum();
            if sold > sku.stock {
                problems.push(format!("{} oversold: {sold} of {}", sku.id, sku.stock));
            }
        }
        if self.queued() > 0 {
            problems.push(format!("{} stored payments left queued", self.queued()));
        }
        // What each key's first definitive answer said is what happened.
        for (key, (seen, _)) in &self.first {
            let Some(order) = seen.order.as_deref().and_then(|o| ledger.order(o)) else {
                problems.push(format!(
                    "{key} answered {seen:?} for an order not in the ledger"
                ));
                continue;
            };
            let paid = matches!(order.state, OrderState::Approved | OrderState::Forwarded);
            let ok = match (seen.status, seen.state.as_str()) {
                (201, "approved") => paid,
                (201, "queued") => {
                    paid || matches!(order.state, OrderState::Declined | OrderState::Expired)
                }
                _ => !paid,
            };
            if !ok {
                problems.push(format!(
                    "{key} answered {seen:?} but its order ended {}",
                    order.state.as_str()
                ));
            }
        }
        // Reconciliation is clean.
        let report = ledger.reconcile(&self.acq.listing());
        if !report.missing_at_edge.is_empty()
            || !report.missing_at_acquirer.is_empty()
            || !report.amount_mismatch.is_empty()
        {
            problems.push(format!(
                "reconciliation: missing at edge {:?}, missing at acquirer {:?}, mismatches {:?}",
                report.missing_at_edge, report.missing_at_acquirer, report.amount_mismatch
            ));
        }
        // Stats for the summary.
        let charges = self.acq.charges.len() as u64;
        let refunded = self.acq.charges.iter().filter(|c| c.refunded > 0).count() as u64;
        *self.stats.entry("charges").or_default() += charges;
        *self.stats.entry("charges refunded").or_default() += refunded;
        *self.stats.entry("buyers").or_default() += self.buyers.len() as u64;
        if !problems.is_empty() {
            self.fail(problems.join("\n"));
        }
    }
}

/// The CVC the frame tokenized with this token: one use, spent by the first key that pays
/// with it (a retry with the same key may use it again; another key may not).
fn with_cvc(inp: &mut CheckoutInput, token: &str) {
    let expires = inp.now_ms + 15 * 60_000;
    if let Ok(p) = &mut inp.prepared {
        p.cvc = Some(crate::vault::OpenedCvc {
            cvc: Secret::new("123".into()),
            use_id: format!("cvu_{token}"),
            expires_at_ms: expires,
        });
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs one seed; on failure, its report.
fn run_seed(seed: u64) -> Result<BTreeMap<&'static str, u64>, String> {
    let mut sim = Sim::new(seed);
    match catch_unwind(AssertUnwindSafe(|| sim.run())) {
        Ok(()) => Ok(std::mem::take(&mut sim.stats)),
        Err(p) => {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(sim.report(&why))
        }
    }
}

#[test]
fn buyers_network_and_acquirer_faults_never_charge_an_intent_twice() {
    let (from, count) = match env_u64("POPTILL_SIM_SEED") {
        Some(s) => (s, 1),
        None => (
            env_u64("POPTILL_SIM_FROM").unwrap_or(0),
            env_u64("POPTILL_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS),
        ),
    };
    let mut failed: Vec<u64> = Vec::new();
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in from..from.saturating_add(count) {
        match run_seed(seed) {
            Ok(stats) => {
                for (k, v) in stats {
                    *totals.entry(k).or_default() += v;
                }
            }
            Err(report) => {
                if failed.len() < 3 {
                    eprintln!("{report}");
                } else {
                    eprintln!("{}", report.lines().next().unwrap_or_default());
                }
                failed.push(seed);
            }
        }
    }
    println!(
        "checkout simulation: seeds {from}..{}, {} failed; {totals:?}",
        from.saturating_add(count),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {count} seeds failed: {:?} (the first ones' traces are above)",
        failed.len(),
        &failed[..failed.len().min(50)]
    );
    if count >= 100 {
        // The simulation is not vacuous: each behaviour it claims to cover happened.
        for what in [
            "answer approved",
            "answer queued",
            "answer declined",
            "answer out of stock",
            "answer hold lapsed",
            "answer pending",
            "answer in flight",
            "answer replayed",
            "resumed order",
            "worker died",
            "object call lost before",
            "object call lost after",
            "acquirer fault",
            "lane down",
            "object restart",
            "clock jump",
            "answer lost",
            "pressed again while waiting",
            "buyer gave up",
            "lost checkout refunded",
            "seal key unavailable",
            "one-call store",
            "every lane down",
        ] {
            assert!(
                totals.get(what).copied().unwrap_or(0) > 0,
                "no seed covered {what:?}: {totals:?}"
            );
        }
    }
}
