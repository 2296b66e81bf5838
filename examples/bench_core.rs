//! Native cost of the pure core on one checkout's hot path (tokenize, detokenize, quote,
//! routing, acquirer encode/decode, receipt, ledger and its JSON persist), timed with
//! `std::time::Instant`.
//!
//! Run it through `scripts/bench`, or by hand:
//!
//! ```text
//! cargo run --profile bench-native --example bench_core -- --out artifacts/bench/core.json
//! ```
//!
//! Each operation runs `RUNS` times `iters` iterations; the figure reported is the median of
//! the per-run averages (ns per operation), with the fastest and slowest run beside it. The
//! inputs are fixed, so two runs on one machine measure the same work. These are native
//! (x86-64/aarch64, opt-level 3) figures: the Worker runs the same code as WebAssembly built
//! for size (`opt-level = "z"`), which is slower; `scripts/bench` states the factor it
//! assumes when it turns these into a CPU estimate.

use poptill::acquirer::{self, AuthorizeRequest};
use poptill::card::{Card, Expiry};
use poptill::checkout::object_side::{self, ObjectCtx, ObjectStore};
use poptill::checkout::protocol::WireError;
use poptill::checkout::request::{self, CheckoutBody, CheckoutKey};
use poptill::checkout::{Checkout, CheckoutInput, ObjectCall, ObjectResult, Prepared, Step};
use poptill::error::ApiError;
use poptill::ledger::{
    Category as SkuCategory, Command, EventConfig, EventLedger, LineRequest, OfflineBudget,
    QueueConfig, QueueMode, Reply, Sku,
};
use poptill::money::{Currency, MinorUnits};
use poptill::policy::{self, Category, LoadedBundle};
use poptill::quote::{self, QuoteItem};
use poptill::receipt::{self, CardSummary, Last4, Receipt, ReceiptKeys, ReceiptStatus};
use poptill::routing::{Outcome, Router, Signals};
use poptill::secret::Secret;
use poptill::vault::{self, Kek, KekSet, KeyPolicy, TokenBinding};
use sha2::{Digest, Sha256};
use std::error::Error;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

/// 2030-06-15T00:00:00Z: a fixed "now" (cards expire 12/2034).
const NOW: i64 = 1_907_712_000_000;
const RUNS: usize = 7;

type Res<T> = Result<T, Box<dyn Error>>;

/// One measured operation.
struct Row {
    name: &'static str,
    what: &'static str,
    iters: u64,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
}

/// Times `f` (one call = one operation): `RUNS` runs of `iters` calls after a warm-up run.
fn time<F: FnMut() -> Res<()>>(
    name: &'static str,
    what: &'static str,
    iters: u64,
    mut f: F,
) -> Res<Row> {
    for _ in 0..iters.min(100) {
        f()?;
    }
    let mut per_op = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        per_op.push(start.elapsed().as_nanos() as f64 / iters as f64);
    }
    per_op.sort_by(|a, b| a.total_cmp(b));
    Ok(Row {
        name,
        what,
        iters,
        median_ns: per_op[RUNS / 2],
        min_ns: per_op[0],
        max_ns: per_op[RUNS - 1],
    })
}

/// Deterministic stand-in for random bytes: SHA-256 of a counter.
struct Bytes(u64);

impl Bytes {
    fn b32(&mut self) -> [u8; 32] {
        self.0 += 1;
        Sha256::digest(self.0.to_be_bytes()).into()
    }
    fn b12(&mut self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out.copy_from_slice(&self.b32()[..12]);
        out
    }
    fn b8(&mut self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(&self.b32()[..8]);
        out
    }
}

fn de_bundle() -> Res<LoadedBundle> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/DE.json");
    let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let bundle = policy::validate_value(&value)
        .map_err(|problems| format!("policies/DE.json is invalid: {problems:?}"))?;
    Ok(LoadedBundle {
        bundle,
        revision: 1,
        hash: policy::bundle_hash(&value),
        kid: None,
    })
}

fn event_config(eur: Currency) -> EventConfig {
    EventConfig {
        event_id: "evt_bench000001".into(),
        merchant_id: "mer_bench".into(),
        title: "Bench Night".into(),
        jurisdiction: "DE".into(),
        currency: eur,
        start_ms: NOW - 3_600_000,
        end_ms: NOW + 7 * 86_400_000,
        skus: vec![
            Sku {
                id: "entry".into(),
                name: "Entry".into(),
                category: SkuCategory::Ticket,
                price: MinorUnits(1_200),
                stock: 100_000,
                max_per_order: None,
            },
            Sku {
                id: "tote".into(),
                name: "Tote bag".into(),
                category: SkuCategory::Merchandise,
                price: MinorUnits(1_500),
                stock: 100_000,
                max_per_order: None,
            },
        ],
        allowed_origins: vec!["https://shop.example".into()],
        queue: QueueConfig {
            required: false,
            mode: QueueMode::Fifo,
            sale_start_ms: NOW - 3_600_000,
            capacity: 1_000,
            admission_rate_per_sec: 10,
            place_ttl_ms: 60_000,
            admitted_ttl_ms: 600_000,
        },
        offline: OfflineBudget {
            per_transaction_max: MinorUnits(10_000),
            aggregate_max: MinorUnits(200_000),
            per_card_max_count: 3,
            per_card_window_ms: 3_600_000,
            unknown_max: None,
        },
        policy_revision: None,
    }
}

/// Hold then confirm one new order (what an approved online checkout asks of the ledger).
fn hold_confirm(ledger: &mut EventLedger, n: u64, now: i64, rng: &mut Bytes) -> Res<()> {
    let order_id = format!("ord_{n:016x}");
    let hold = ledger.handle(
        Command::Hold {
            order_id: order_id.clone(),
            lines: vec![
                LineRequest {
                    sku: "entry".into(),
                    qty: 2,
                },
                LineRequest {
                    sku: "tote".into(),
                    qty: 1,
                },
            ],
            expires_ms: now + 120_000,
            buyer_email: Some("b@example.org".into()),
            lane: "fast".into(),
            admission_ticket: None,
            charge_total: None,
            // Every buyer their own card: the per-card limits scan the event's orders.
            holder: Some(format!("cd_{n:032x}")),
        },
        now,
        rng.b8(),
    );
    hold.reply.map_err(|e| format!("hold: {e:?}"))?;
    let confirm = ledger.handle(
        Command::Confirm {
            order_id,
            charge_id: format!("pi_{n:024x}"),
            lane: None,
        },
        now + 1,
        rng.b8(),
    );
    match confirm.reply {
        Ok(Reply::Order { .. }) => Ok(()),
        other => Err(format!("confirm: {other:?}").into()),
    }
}

/// The object's storage for the benchmark: CVC uses and receipts in memory (the Durable
/// Object keeps them in SQLite tables).
#[derive(Default)]
struct MemStore {
    cvc: std::collections::HashMap<String, String>,
    receipts: std::collections::HashMap<String, String>,
}

impl ObjectStore for MemStore {
    fn cvc_spender(&mut self, use_id: &str, _now_ms: i64) -> Result<Option<String>, ApiError> {
        Ok(self.cvc.get(use_id).cloned())
    }
    fn spend_cvc(&mut self, use_id: &str, key: &str, _exp: i64) -> Result<(), ApiError> {
        self.cvc.insert(use_id.into(), key.into());
        Ok(())
    }
    fn give_back_cvc(&mut self, use_id: &str) -> Result<(), ApiError> {
        self.cvc.remove(use_id);
        Ok(())
    }
    fn receipt(&mut self, receipt_id: &str) -> Result<Option<String>, ApiError> {
        Ok(self.receipts.get(receipt_id).cloned())
    }
    fn store_receipt(&mut self, id: &str, _order_id: &str, json: &str) -> Result<(), ApiError> {
        self.receipts.insert(id.into(), json.into());
        Ok(())
    }
}

/// The event's object, as the Worker's shell runs it: the core's begin/finish over the
/// ledger, each persisted as the changed rows (`take_delta`).
struct Object {
    ledger: EventLedger,
    store: MemStore,
    keys: ReceiptKeys,
    persisted_bytes: usize,
}

impl Object {
    fn call(&mut self, call: ObjectCall, now_ms: i64, entropy: [u8; 8]) -> Res<ObjectResult> {
        let mut cx = ObjectCtx {
            ledger: &mut self.ledger,
            store: &mut self.store,
            keys: Some(&self.keys),
            now_ms,
            entropy,
        };
        let (result, changed) = match call {
            ObjectCall::Begin(req) => {
                let done = object_side::begin(&mut cx, *req);
                (ObjectResult::Begin(done.reply), done.changed)
            }
            ObjectCall::Finish(req) => {
                let done = object_side::finish(&mut cx, *req);
                (ObjectResult::Finish(done.reply), done.changed)
            }
            ObjectCall::Command(cmd) => {
                let out = self.ledger.handle(*cmd, now_ms, entropy);
                let changed = out.changed;
                let r = out
                    .reply
                    .map(|_| ())
                    .map_err(|e| WireError::from(e.to_api()));
                (ObjectResult::Command(r), changed)
            }
        };
        if changed {
            // The rows are already JSON (the ledger encodes what changed).
            let delta = self.ledger.take_delta().map_err(|e| format!("{e:?}"))?;
            self.persisted_bytes += delta.head.len()
                + delta.queue.map_or(0, |q| q.len())
                + delta
                    .rows
                    .iter()
                    .map(|r| r.data.as_ref().map_or(0, String::len))
                    .sum::<usize>();
        }
        Ok(result)
    }
}

/// One whole online checkout driven through the real checkout machine
/// (`poptill::checkout::Checkout`), the object's half (`object_side`) and the ledger, with
/// a Stripe answer for the authorization: the same machine the Worker and the simulation
/// drive. Returns the answer's status.
#[allow(clippy::too_many_arguments)]
fn machine_checkout(
    ev: &Arc<EventConfig>,
    bundle: &Arc<LoadedBundle>,
    body: &CheckoutBody,
    card: &Card,
    router: &mut Router,
    obj: &mut Object,
    n: u64,
    now_ms: i64,
    approved: &str,
) -> Res<u16> {
    let quote = request::quote_cart(ev, bundle, &body.items, now_ms)?;
    request::check_prompts(&quote, &body.buyer)?;
    let idem = format!("bench-{n:016x}");
    let input = CheckoutInput {
        event: ev.clone(),
        key: CheckoutKey::derive(Some(&idem), [0; 12])?,
        cart: request::cart_fingerprint(body),
        prepared: Ok(Prepared {
            bundle: bundle.clone(),
            quote,
            lines: body.lines(),
            buyer_email: body.buyer.email.clone(),
            admission_ticket: None,
            require_online: body.require_online(),
            card: card.clone(),
            cvc: None,
            fingerprint: request::fingerprint(body, card.number(), &[9u8; 32]),
            holder: request::card_holder(card.number(), &[9u8; 32]),
        }),
        secrets: vec![(
            "ACQUIRER_SECRET".into(),
            Secret::new("sk_test_bench".into()),
        )],
        colo: "FRA".into(),
        now_ms,
        signals: Signals::default(),
        nonce: [3; 12],
    };
    let mut co = Checkout::new(input);
    for _ in 0..32 {
        match co.poll(router, now_ms) {
            Step::Object(call) => {
                let r = obj.call(call, now_ms, n.to_le_bytes())?;
                co.handle_object(Ok(r), now_ms);
            }
            Step::Authorize(a) => {
                black_box(&a.call);
                co.handle_attempt(router, Ok((200, approved.to_string())), now_ms + 1);
            }
            Step::SealKey => co.handle_seal_key(Ok(Secret::new([7; 32]))),
            Step::Wait { .. } => return Err("waited for a permit".into()),
            Step::Answer(_) | Step::Late => return Err("answered before the acquirer".into()),
            Step::Done(answer) => return Ok(answer.status),
        }
    }
    Err("the checkout did not answer in 32 steps".into())
}

fn main() -> Res<()> {
    let mut out_path: Option<String> = None;
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out_path = args.next(),
            "--quick" => quick = true,
            other => {
                return Err(format!("unknown argument {other:?} (use --out FILE, --quick)").into())
            }
        }
    }
    let scale = |n: u64| if quick { (n / 10).max(10) } else { n };
    let eur = Currency::parse("EUR").map_err(|e| format!("{e:?}"))?;
    let mut rng = Bytes(0);
    let mut rows = Vec::new();

    // ---- vault: tokenize and detokenize (the key already unwrapped, as in a warm isolate)
    let keks = KekSet::new(Kek::from_bytes([0x11; 32]), vec![]);
    let (_, key) = vault::new_key_record(
        "dk_ams_00000001",
        rng.b32(),
        rng.b12(),
        &keks,
        NOW,
        &KeyPolicy::default(),
    )?;
    let binding = TokenBinding {
        merchant_id: "mer_bench",
        event_id: "evt_bench000001",
        purpose: vault::PURPOSE_PAYMENT,
    };
    rows.push(time(
        "tokenize",
        "Card::parse (Luhn, brand, expiry, CVC) + vault::tokenize + vault::tokenize_cvc",
        scale(20_000),
        || {
            let card = Card::parse(
                "4242 4242 4242 4242",
                Expiry::new(12, 2034)?,
                Some("123"),
                NOW,
            )?;
            let t = vault::tokenize(&card, &binding, &key, rng.b12(), NOW, 900_000)?;
            let c = vault::tokenize_cvc(&card, &t.token, &binding, &key, rng.b12(), NOW, 900_000)?;
            black_box((t, c));
            Ok(())
        },
    )?);
    let card = Card::parse("4242424242424242", Expiry::new(12, 2034)?, Some("123"), NOW)?;
    let token = vault::tokenize(&card, &binding, &key, rng.b12(), NOW, 900_000)?;
    let cvc_token =
        vault::tokenize_cvc(&card, &token.token, &binding, &key, rng.b12(), NOW, 900_000)?;
    rows.push(time(
        "detokenize",
        "vault::detokenize + vault::detokenize_cvc (key from the isolate cache)",
        scale(20_000),
        || {
            let c = vault::detokenize(&token.token, &binding, |_| Some(&key), NOW)?;
            let v = vault::detokenize_cvc(
                &cvc_token.token,
                &token.token,
                &binding,
                |_| Some(&key),
                NOW,
            )?;
            black_box((c, v));
            Ok(())
        },
    )?);

    // ---- quote: 5 lines under the German bundle
    let de = de_bundle()?;
    let items: Vec<QuoteItem> = [
        ("entry", Category::Admission, 1_200, 2),
        ("vip", Category::Admission, 4_500, 1),
        ("tote", Category::Merchandise, 1_500, 1),
        ("shirt", Category::Merchandise, 2_499, 2),
        ("lemonade", Category::FoodAndDrink, 350, 3),
    ]
    .into_iter()
    .map(|(sku, category, price, quantity)| QuoteItem {
        sku: sku.into(),
        name: format!("{sku} (bench)"),
        category,
        unit_price: MinorUnits(price),
        quantity,
        age_restricted: false,
    })
    .collect();
    rows.push(time(
        "quote_5_lines",
        "quote::quote_in, 5 lines, DE bundle (inclusive VAT, per-line rounding)",
        scale(50_000),
        || {
            black_box(quote::quote_in(&items, &de, Some(eur), NOW)?);
            Ok(())
        },
    )?);
    let q = quote::quote_in(&items, &de, Some(eur), NOW)?;

    // ---- routing: plan, acquire, complete
    let lanes = r#"[{"name":"fast","connector":"stripe","base_url":"http://127.0.0.1:8788/lanes/fast","secret_name":"ACQUIRER_SECRET","cost_per_tx_minor":30,"cost_bps":290,"region":"eu"},{"name":"cheap","connector":"stripe","base_url":"http://127.0.0.1:8788/lanes/cheap","secret_name":"ACQUIRER_SECRET","cost_per_tx_minor":10,"cost_bps":150,"region":"eu"}]"#;
    let mut router = Router::from_json(lanes, None)?;
    let mut clock = NOW;
    rows.push(time(
        "routing_plan_acquire_complete",
        "Router::plan + try_acquire + on_complete (window of up to 256 samples)",
        scale(30_000),
        || {
            clock += 3;
            let d = router.plan(
                clock,
                Signals {
                    requests_in_flight: 0,
                    amount_minor: q.total.0,
                    require_online: false,
                },
            );
            let first = d.lanes_in_order.first().ok_or("no lane planned")?;
            let permit = router
                .acquire(first, None, clock)
                .map_err(|_| "no permit")?;
            router.on_complete(permit, 40, Outcome::Ok, clock + 40);
            black_box(d);
            Ok(())
        },
    )?);

    // ---- acquirer: build the authorize call, parse a Stripe answer
    let secret = Secret::new("sk_test_bench".to_string());
    let pi = r#"{"id":"pi_3MtwBwLkdIwHu7ix28a3tqPa","object":"payment_intent","amount":1250,"amount_capturable":0,"amount_received":1250,"capture_method":"automatic","client_secret":"pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_Yr","confirmation_method":"automatic","created":1680800504,"currency":"eur","latest_charge":"ch_3MtwBwLkdIwHu7ix28a3tqPa","livemode":false,"metadata":{"order_id":"ord_1","event_id":"evt_1"},"next_action":null,"payment_method":"pm_1","payment_method_types":["card"],"status":"succeeded"}"#;
    rows.push(time(
        "acquirer_build_parse",
        "acquirer::build_authorize (form body) + parse_authorize (Stripe JSON)",
        scale(50_000),
        || {
            let call = acquirer::build_authorize(
                "http://127.0.0.1:8788/lanes/fast",
                &secret,
                &AuthorizeRequest {
                    amount: q.total,
                    currency: eur,
                    card_number: card.number().clone(),
                    exp_month: card.exp_month,
                    exp_year: card.exp_year,
                    cvc: card.cvc().cloned(),
                    idempotency_key: "ord_0123456789abcdef_online".into(),
                    order_id: "ord_0123456789abcdef".into(),
                    event_id: "evt_bench000001".into(),
                    capture: true,
                },
            )?;
            black_box((call, acquirer::parse_authorize(200, pi)));
            Ok(())
        },
    )?);

    // ---- receipt: sign, serialize, verify
    let keys = ReceiptKeys::from_raw(vec![("r1".to_string(), vec![0x42; 32])])?;
    let receipt_of = |q: &quote::Quote| -> Res<Receipt> {
        let (lines, tax_breakdown, totals) = receipt::priced_from_quote(q);
        Ok(Receipt {
            id: "rcpt_evt_bench000001-1".into(),
            event_id: "evt_bench000001".into(),
            merchant_id: "mer_bench".into(),
            order_id: "ord_0123456789abcdef".into(),
            lines,
            tax_breakdown,
            totals,
            card: CardSummary {
                brand: "visa".into(),
                last4: Last4::parse("4242")?,
            },
            status: ReceiptStatus::Approved,
            policy_revision: "1".into(),
            policy_hash: de.hash.clone(),
            pop_colo: "local".into(),
            lane: "fast".into(),
            created_ms: NOW,
            updated_ms: NOW,
            refunded_amount: None,
        })
    };
    rows.push(time(
        "receipt_sign_verify",
        "receipt::sign (canonical JSON + HMAC-SHA256) + to_json + receipt::verify, 5 lines",
        scale(3_000),
        || {
            let signed = receipt::sign(receipt_of(&q)?, &keys)?;
            let json = signed.to_json()?;
            receipt::verify(&signed, &keys)?;
            black_box(json);
            Ok(())
        },
    )?);

    // ---- telemetry: a PoP's batch folded into stored rows, and the metrics document
    use poptill::telemetry::{Aggregate, Event, Kind, QueueState};
    let batch: Vec<Event> = (0..25i64)
        .map(|i| {
            Event::new(Kind::CheckoutStarted, NOW + i * 100)
                .colo("FRA")
                .latency(20 + i * 7)
                .converted(i % 5 != 0)
        })
        .collect();
    let mut stored = Aggregate::default();
    for m in 0..180i64 {
        for c in ["FRA", "AMS", "CDG"] {
            for i in 0..20i64 {
                stored.record(
                    &Event::new(Kind::CheckoutStarted, NOW - m * 60_000 + i)
                        .colo(c)
                        .latency(15 + (i * 37 + m) % 900)
                        .converted(i % 7 != 0),
                );
                stored.record(
                    &Event::new(Kind::Approved, NOW - m * 60_000 + i)
                        .lane("fast")
                        .latency(30 + i)
                        .amount(1_500),
                );
            }
        }
    }
    let stored_rows = stored.to_rows();
    rows.push(time(
        "telemetry_batch_fold",
        "one 25-event batch into stored rows: aggregate it, read back the rows it touches, merge, encode them (the object's work per batch, no SQLite)",
        scale(2_000),
        || {
            let b = Aggregate::from_events(&batch);
            let keys = b.row_keys();
            let touched = stored_rows.iter().filter(|(k, _)| keys.contains(k));
            let mut merged = Aggregate::from_rows(touched.map(|(k, v)| (k.as_str(), v.as_str())));
            merged.merge(&b);
            black_box(merged.to_rows());
            Ok(())
        },
    )?);
    let lane_cfg = poptill::routing::parse_lanes(lanes)?;
    rows.push(time(
        "telemetry_metrics_10800",
        "the metrics document (funnel, percentiles, series, curve, cost report) from 10,800 checkouts over 3 PoPs and 180 minutes, rows decoded first",
        scale(50),
        || {
            let a = Aggregate::from_rows(stored_rows.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let m = poptill::telemetry::metrics("evt", &a, QueueState::default(), &lane_cfg, eur, NOW);
            black_box(serde_json::to_string(&m)?);
            Ok(())
        },
    )?);

    // ---- ledger: an event with 1,000 confirmed orders
    let mut ledger = EventLedger::new(event_config(eur), NOW)?;
    for n in 0..1_000u64 {
        hold_confirm(&mut ledger, n, NOW + n as i64 * 10, &mut rng)?;
    }
    let base = ledger.clone();
    let t_after = NOW + 20_000;
    let mut next = 1_000u64;
    let hc_iters = scale(200);
    // Every run starts again from the same 1,000 orders (the clone is outside the timing).
    let mut per_op = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut l = base.clone();
        let start = Instant::now();
        for _ in 0..hc_iters {
            next += 1;
            hold_confirm(&mut l, next, t_after + next as i64, &mut rng)?;
        }
        per_op.push(start.elapsed().as_nanos() as f64 / hc_iters as f64);
        black_box(l);
    }
    per_op.sort_by(|a, b| a.total_cmp(b));
    rows.push(Row {
        name: "ledger_hold_confirm_1000",
        what: "EventLedger::handle(Hold) + handle(Confirm) on an event holding 1,000 orders (no persist)",
        iters: hc_iters,
        median_ns: per_op[RUNS / 2],
        min_ns: per_op[0],
        max_ns: per_op[RUNS - 1],
    });
    let state_json = base.to_json()?;
    let persist_bytes = state_json.len();
    rows.push(time(
        "ledger_to_json_1000",
        "EventLedger::to_json of that event (the Durable Object writes it after every change)",
        scale(100),
        || {
            black_box(base.to_json()?);
            Ok(())
        },
    )?);
    rows.push(time(
        "ledger_from_json_1000",
        "EventLedger::from_json of that event (once per object start)",
        scale(40),
        || {
            black_box(EventLedger::from_json(&state_json)?);
            Ok(())
        },
    )?);

    // ---- the whole checkout through the checkout machine (what the Worker drives)
    let de_arc = Arc::new(de_bundle()?);
    let ev = Arc::new(event_config(eur));
    let body: CheckoutBody = serde_json::from_str(
        r#"{"items":[{"sku":"entry","quantity":2},{"sku":"tote","quantity":1}],"token":"tok_bench","buyer":{"email":"b@example.org","consent_accepted":true,"age_confirmed":true}}"#,
    )?;
    let mut machine_router = Router::from_json(lanes, None)?;
    let mut obj = Object {
        ledger: EventLedger::new((*ev).clone(), NOW)?,
        store: MemStore::default(),
        keys: keys.clone(),
        persisted_bytes: 0,
    };
    for n in 0..1_000u64 {
        hold_confirm(
            &mut obj.ledger,
            1_000_000 + n,
            NOW + n as i64 * 10,
            &mut rng,
        )?;
    }
    let _ = obj.ledger.take_delta();
    let mut m_next = 0u64;
    let mut m_clock = NOW + 20_000;
    let machine_iters = scale(2_000);
    let approved_pi = pi;
    rows.push(time(
        "checkout_machine_approved",
        "one approved online checkout through checkout::Checkout (quote, prompts, plan, begin, authorize call built and answer classified, receipt signed, finish) with object_side and the ledger (1,000 orders already), changed rows encoded as JSON",
        machine_iters,
        || {
            m_next += 1;
            m_clock += 5;
            let status = machine_checkout(
                &ev,
                &de_arc,
                &body,
                &card,
                &mut machine_router,
                &mut obj,
                m_next,
                m_clock,
                approved_pi,
            )?;
            if status != 201 {
                return Err(format!("the machine answered {status}").into());
            }
            Ok(())
        },
    )?);
    let persisted_per_checkout = obj.persisted_bytes as f64 / m_next.max(1) as f64;

    // ---- report
    let by = |n: &str| {
        rows.iter()
            .find(|r| r.name == n)
            .map_or(0.0, |r| r.median_ns)
    };
    // The core work one approved online checkout does in the Worker (not the Durable Object).
    let worker_checkout_ns = by("detokenize")
        + by("quote_5_lines")
        + by("routing_plan_acquire_complete")
        + by("acquirer_build_parse")
        + by("receipt_sign_verify");
    // What the event's object does for it: four state changes, each persisted as JSON.
    let object_checkout_ns = by("ledger_hold_confirm_1000") + 4.0 * by("ledger_to_json_1000");

    println!(
        "{:<32} {:>12} {:>12} {:>12} {:>8}",
        "operation", "median ns", "min ns", "max ns", "iters"
    );
    for r in &rows {
        println!(
            "{:<32} {:>12.0} {:>12.0} {:>12.0} {:>8}",
            r.name, r.median_ns, r.min_ns, r.max_ns, r.iters
        );
    }
    println!("ledger state with 1,000 orders: {persist_bytes} bytes of JSON");
    println!(
        "one checkout through the checkout machine: {:.1} µs, {persisted_per_checkout:.0} bytes of changed rows",
        by("checkout_machine_approved") / 1e3
    );
    println!(
        "core work per checkout in the Worker: {:.1} µs; in the event object: {:.1} µs",
        worker_checkout_ns / 1e3,
        object_checkout_ns / 1e3
    );

    let json = serde_json::json!({
        "runs": RUNS,
        "profile": "bench-native (release, opt-level 3, no LTO)",
        "target": std::env::consts::ARCH,
        "operations": rows.iter().map(|r| serde_json::json!({
            "name": r.name, "what": r.what, "iters_per_run": r.iters,
            "median_ns": r.median_ns.round(), "min_ns": r.min_ns.round(), "max_ns": r.max_ns.round(),
        })).collect::<Vec<_>>(),
        "ledger_orders": 1_000,
        "ledger_json_bytes": persist_bytes,
        "checkout_core_worker_ns": worker_checkout_ns.round(),
        "checkout_core_object_ns": object_checkout_ns.round(),
        "checkout_machine_ns": by("checkout_machine_approved").round(),
        "checkout_machine_persisted_bytes": persisted_per_checkout.round(),
    });
    let text = serde_json::to_string_pretty(&json)?;
    match out_path {
        Some(p) => std::fs::write(&p, text + "\n")?,
        None => println!("{text}"),
    }
    Ok(())
}
