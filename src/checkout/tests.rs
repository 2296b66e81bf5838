//! Tests of the checkout machine, and the harness the simulation shares: an in-memory
//! event object (the real [`object_side`] over a real [`EventLedger`], persisted to rows
//! and reloadable) and a Stripe-like acquirer with one stored result per idempotency key
//! per lane, and the faults real networks have.

use super::object_side::{self, ObjectCtx, ObjectStore};
use super::outcome::{Sent, Transport};
use super::protocol::*;
use super::request::{self, CheckoutBody, CheckoutKey};
use super::*;
use crate::ledger::tests::RowStore;
use crate::ledger::{
    AcquirerCharge, AcquirerResult, ChargeStatus, Effect, EventLedger, ForwardRequest, OrderState,
    Sku,
};
use crate::money::{Currency, MinorUnits};
use crate::receipt::ReceiptKeys;
use crate::routing::Router;
use std::collections::BTreeMap;

pub(crate) const T0: i64 = 1_800_000_000_000;
pub(crate) const LANES: &str = r#"[
  {"name":"fast","connector":"stripe","base_url":"https://fast.acquirer.test","secret_name":"STRIPE_FAST","cost_per_tx_minor":10,"cost_bps":100,"region":"eu"},
  {"name":"cheap","connector":"stripe","base_url":"https://cheap.acquirer.test","secret_name":"STRIPE_CHEAP","cost_per_tx_minor":5,"cost_bps":50,"region":"eu"}
]"#;
pub(crate) const APPROVE: &str = "4242424242424242";
pub(crate) const DECLINE: &str = "4000000000000002";

pub(crate) fn event(stock: u32) -> EventConfig {
    let mut c = crate::ledger::EventConfig {
        event_id: "evt_sim".into(),
        merchant_id: "m_sim".into(),
        title: "Sim night".into(),
        jurisdiction: "DE".into(),
        currency: Currency::parse("EUR").unwrap(),
        start_ms: T0 - 3_600_000,
        end_ms: T0 + 48 * 3_600_000,
        skus: vec![
            Sku {
                id: "ticket".into(),
                name: "Entry".into(),
                category: crate::ledger::Category::Ticket,
                price: MinorUnits(1500),
                stock,
                max_per_order: None,
            },
            Sku {
                id: "shirt".into(),
                name: "T-shirt".into(),
                category: crate::ledger::Category::Merchandise,
                price: MinorUnits(2000),
                stock,
                max_per_order: None,
            },
        ],
        ..crate::ledger::tests::config()
    };
    c.offline.aggregate_max = MinorUnits(20_000);
    c.offline.per_transaction_max = MinorUnits(10_000);
    c.offline.per_card_max_count = 50;
    c
}

/// The policy bundle, loaded once (validating it costs more than a whole checkout).
pub(crate) fn bundle() -> Arc<LoadedBundle> {
    static BUNDLE: std::sync::OnceLock<Arc<LoadedBundle>> = std::sync::OnceLock::new();
    BUNDLE
        .get_or_init(|| {
            let mut b = crate::policy::default_bundle();
            b.bundle.offline.per_transaction_cap = MinorUnits(10_000);
            b.bundle.offline.per_event_cap = MinorUnits(20_000);
            b.bundle.offline.max_queue_age_secs = 86_400;
            Arc::new(b)
        })
        .clone()
}

pub(crate) fn router() -> Router {
    Router::from_json(LANES, None).unwrap()
}

/// Lanes that allow one or two requests at a time, and a short wait for a permit.
pub(crate) fn tight_router() -> Router {
    Router::from_json(
        LANES,
        Some(r#"{"initial_limit":1,"min_limit":1,"max_limit":2,"permit_wait_ms":400,"max_waiters":3}"#),
    )
    .unwrap()
}

/// The object's SQL tables, in memory.
#[derive(Default, Clone)]
pub(crate) struct MemStore {
    pub cvc: BTreeMap<String, (String, i64)>,
    pub receipts: BTreeMap<String, String>,
}

impl ObjectStore for MemStore {
    fn cvc_spender(&mut self, use_id: &str, now_ms: i64) -> Result<Option<String>, ApiError> {
        self.cvc.retain(|_, (_, exp)| *exp >= now_ms);
        Ok(self.cvc.get(use_id).map(|(k, _)| k.clone()))
    }
    fn spend_cvc(&mut self, use_id: &str, key: &str, expires_at_ms: i64) -> Result<(), ApiError> {
        self.cvc
            .insert(use_id.to_string(), (key.to_string(), expires_at_ms));
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
        self.receipts.insert(id.to_string(), json.to_string());
        Ok(())
    }
}

/// How one object call goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ObjFault {
    None,
    /// The call never reached the object.
    Before,
    /// Applied and persisted, but the answer was lost.
    After,
}

/// The event's Durable Object, in memory: the real object side over the real ledger.
pub(crate) struct FakeObject {
    pub ledger: EventLedger,
    pub rows: RowStore,
    pub store: MemStore,
    pub keys: ReceiptKeys,
    pub sf_key: [u8; 32],
    pub effects: Vec<Effect>,
    pub calls: u32,
    entropy: u64,
}

impl FakeObject {
    pub fn new(config: EventConfig) -> FakeObject {
        let mut ledger = EventLedger::new(config, T0 - 60_000).unwrap();
        let mut rows = RowStore::default();
        rows.apply(ledger.take_delta().unwrap());
        FakeObject {
            ledger,
            rows,
            store: MemStore::default(),
            keys: ReceiptKeys::parse("r1:c2ltLXJlY2VpcHQta2V5LTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDEy")
                .unwrap(),
            sf_key: [5u8; 32],
            effects: Vec::new(),
            calls: 0,
            entropy: 1,
        }
    }

    /// The object restarts: memory is rebuilt from what was persisted.
    pub fn restart(&mut self) {
        self.ledger = self.rows.load();
    }

    fn persist<T>(&mut self, done: &object_side::Done<T>) {
        if done.discard {
            self.restart();
        } else if done.changed {
            self.rows.apply(self.ledger.take_delta().unwrap());
        }
        self.ledger.check_invariants().unwrap();
    }

    pub fn call(
        &mut self,
        call: ObjectCall,
        now_ms: i64,
        fault: ObjFault,
    ) -> Result<ObjectResult, ApiError> {
        let lost = || {
            ApiError::new(503, "temporarily_unavailable", "Network connection lost.").retryable()
        };
        if fault == ObjFault::Before {
            return Err(lost());
        }
        self.calls += 1;
        self.entropy = self
            .entropy
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1);
        let mut cx = ObjectCtx {
            ledger: &mut self.ledger,
            store: &mut self.store,
            keys: Some(&self.keys),
            now_ms,
            entropy: self.entropy.to_le_bytes(),
        };
        let result = match call {
            ObjectCall::Begin(req) => {
                let req = *req;
                let done = object_side::begin(&mut cx, req);
                self.persist(&done);
                self.effects.extend(done.effects);
                ObjectResult::Begin(done.reply)
            }
            ObjectCall::Finish(req) => {
                let req = *req;
                let done = object_side::finish(&mut cx, req);
                self.persist(&done);
                self.effects.extend(done.effects);
                ObjectResult::Finish(done.reply)
            }
            ObjectCall::Command(cmd) => {
                let cmd = *cmd;
                let out = self.ledger.handle(cmd, now_ms, self.entropy.to_le_bytes());
                if out.changed {
                    self.rows.apply(self.ledger.take_delta().unwrap());
                }
                self.effects.extend(out.effects);
                ObjectResult::Command(
                    out.reply
                        .map(|_| ())
                        .map_err(|e| WireError::from(e.to_api())),
                )
            }
        };
        if fault == ObjFault::After {
            return Err(lost());
        }
        Ok(result)
    }

    /// The alarm fires: forwards stored payments to the acquirer, feeding answers back.
    pub fn alarm(&mut self, acq: &mut FakeAcquirer, now_ms: i64) {
        self.effects.clear();
        let out = self.ledger.handle(Command::Alarm, now_ms, [1; 8]);
        if out.changed {
            self.rows.apply(self.ledger.take_delta().unwrap());
        }
        let mut queue: Vec<Effect> = out.effects;
        let mut guard = 0;
        while let Some(e) = queue.pop() {
            guard += 1;
            assert!(guard < 10_000, "effects do not converge");
            let answer = match e {
                Effect::Forward(req) => {
                    let lane = self
                        .ledger
                        .order(&req.order_id)
                        .map(|o| o.lane.clone())
                        .unwrap_or_default();
                    let result =
                        acq.forward(&lane, &req, &self.sf_key, &self.ledger.config().event_id);
                    Command::ForwardResult {
                        auth_id: req.auth_id,
                        result,
                    }
                }
                Effect::ForwardRefund(req) => Command::RefundResult {
                    result: acq.refund_once(&req.idempotency_key, &req.charge_id, req.amount.0),
                    refund_id: req.refund_id,
                },
                Effect::Reconcile(req) => Command::Reconcile {
                    charges: acq.listing(),
                    listing: crate::ledger::Listing {
                        since_ms: req.since_ms,
                        started_ms: now_ms,
                        truncated: false,
                    },
                    reason: req.reason,
                },
                Effect::Notify { order_id, .. } => {
                    self.update_receipts(&order_id, now_ms);
                    continue;
                }
                _ => continue,
            };
            let out = self.ledger.handle(answer, now_ms, [2; 8]);
            if out.changed {
                self.rows.apply(self.ledger.take_delta().unwrap());
            }
            queue.extend(out.effects);
        }
        self.ledger.check_invariants().unwrap();
    }

    /// What the object does on `Effect::Notify`: each receipt of the order brought up to
    /// date (`object_side::receipt_after`).
    fn update_receipts(&mut self, order_id: &str, now_ms: i64) {
        let Some(order) = self.ledger.order(order_id).cloned() else {
            return;
        };
        for json in self.store.receipts.values_mut() {
            let signed = crate::receipt::SignedReceipt::from_json(json).unwrap();
            if signed.receipt.order_id != order_id {
                continue;
            }
            if let Some(next) = object_side::receipt_after(&order, &signed, now_ms, &self.keys) {
                *json = next.to_json().unwrap();
            }
        }
    }

    /// An operator's reconciliation: lists the charges, refunds lost checkouts through the
    /// ledger's own refunds (performed at once), and answers what the run found.
    pub fn reconcile(&mut self, acq: &mut FakeAcquirer, now_ms: i64) -> crate::ledger::Reconciled {
        let out = self.ledger.handle(
            Command::Reconcile {
                charges: acq.listing(),
                listing: crate::ledger::Listing {
                    since_ms: 0,
                    started_ms: now_ms,
                    truncated: false,
                },
                reason: crate::ledger::ReconcileReason::Requested,
            },
            now_ms,
            [3; 8],
        );
        if out.changed {
            self.rows.apply(self.ledger.take_delta().unwrap());
        }
        let Ok(crate::ledger::Reply::Reconciled { result }) = out.reply else {
            panic!("reconcile answered {:?}", out.reply);
        };
        for e in out.effects {
            if let Effect::ForwardRefund(req) = e {
                let result = acq.refund_once(&req.idempotency_key, &req.charge_id, req.amount.0);
                let out = self.ledger.handle(
                    Command::RefundResult {
                        refund_id: req.refund_id,
                        result,
                    },
                    now_ms,
                    [4; 8],
                );
                if out.changed {
                    self.rows.apply(self.ledger.take_delta().unwrap());
                }
            }
        }
        self.ledger.check_invariants().unwrap();
        *result
    }
}

/// How one acquirer request goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcqFault {
    None,
    /// Connection refused: nothing sent.
    Refuse,
    /// Times out before the acquirer saw it.
    TimeoutUnseen,
    /// Processed, then the deadline passed.
    ProcessThenTimeout,
    /// Processed, then the connection was reset.
    ProcessThenReset,
    /// Processed; the answer is a `processing` intent.
    Processing,
    /// Processed; the 2xx answer is garbage.
    Garbage,
    /// A 500 without processing.
    ServerError,
    /// Processed, then a 500.
    ProcessThen500,
    /// 429.
    RateLimited,
}

/// One charge the acquirer made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Charge {
    pub lane: String,
    pub key: String,
    pub order_id: String,
    pub id: String,
    pub amount: i64,
    pub refunded: i64,
}

/// A Stripe-like acquirer: per lane (one account each), one stored result per
/// idempotency key, replayed for every later request with that key.
#[derive(Default)]
pub(crate) struct FakeAcquirer {
    /// (lane, key) → Some(charge id) when charged, None when declined.
    results: BTreeMap<(String, String), Option<String>>,
    pub charges: Vec<Charge>,
    pub requests: u32,
    /// The lane of every online request, in order.
    pub lanes_seen: Vec<String>,
    /// Lanes that refuse every connection right now.
    pub down: Vec<String>,
    /// Idempotency keys of refunds already made.
    refund_keys: std::collections::BTreeSet<String>,
    /// How the next forwards of stored payments go wrong (first listed, first used).
    pub forward_faults: std::collections::VecDeque<AcqFault>,
    /// Forwards of stored payments received (by the object's alarm).
    pub forwards: u32,
}

impl FakeAcquirer {
    fn process(
        &mut self,
        lane: &str,
        key: &str,
        order_id: &str,
        number: &str,
        amount: i64,
    ) -> Option<String> {
        if let Some(r) = self.results.get(&(lane.to_string(), key.to_string())) {
            return r.clone();
        }
        let r = (number != DECLINE).then(|| format!("pi_{}", self.charges.len() + 1));
        if let Some(id) = &r {
            self.charges.push(Charge {
                lane: lane.to_string(),
                key: key.to_string(),
                order_id: order_id.to_string(),
                id: id.clone(),
                amount,
                refunded: 0,
            });
        }
        self.results
            .insert((lane.to_string(), key.to_string()), r.clone());
        r
    }

    fn answer(r: &Option<String>, amount: i64) -> (u16, String) {
        match r {
            Some(id) => (
                200,
                format!(r#"{{"id":"{id}","object":"payment_intent","status":"succeeded","amount":{amount},"currency":"eur"}}"#),
            ),
            None => (
                402,
                r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"generic_decline","message":"Your card was declined."}}"#.into(),
            ),
        }
    }

    /// An online authorization as sent by the checkout.
    pub fn authorize(&mut self, lane: &str, call: &HttpCall, fault: AcqFault) -> Sent {
        self.requests += 1;
        self.lanes_seen.push(lane.to_string());
        if self.down.iter().any(|d| d == lane) {
            return Err(Transport::Lost);
        }
        let form: BTreeMap<String, String> = form_urlencoded::parse(call.body.expose().as_bytes())
            .into_owned()
            .collect();
        let key = call
            .header("Idempotency-Key")
            .unwrap_or_default()
            .to_string();
        let order = form.get("metadata[order_id]").cloned().unwrap_or_default();
        let number = form
            .get("payment_method_data[card][number]")
            .cloned()
            .unwrap_or_default();
        let amount: i64 = form.get("amount").and_then(|a| a.parse().ok()).unwrap_or(0);
        let run = |s: &mut FakeAcquirer| s.process(lane, &key, &order, &number, amount);
        match fault {
            AcqFault::None => Ok(Self::answer(&run(self), amount)),
            AcqFault::Refuse => Err(Transport::Refused),
            AcqFault::TimeoutUnseen => Err(Transport::Timeout),
            AcqFault::ProcessThenTimeout => {
                run(self);
                Err(Transport::Timeout)
            }
            AcqFault::ProcessThenReset => {
                run(self);
                Err(Transport::Lost)
            }
            AcqFault::Processing => {
                let r = run(self);
                match r {
                    Some(id) => Ok((
                        200,
                        format!(
                            r#"{{"id":"{id}","object":"payment_intent","status":"processing","amount":{amount},"currency":"eur"}}"#
                        ),
                    )),
                    None => Ok(Self::answer(&r, amount)),
                }
            }
            AcqFault::Garbage => {
                run(self);
                Ok((200, r#"{"id":"pi_"#.into()))
            }
            AcqFault::ServerError => Ok((
                500,
                r#"{"error":{"type":"api_error","message":"x"}}"#.into(),
            )),
            AcqFault::ProcessThen500 => {
                run(self);
                Ok((
                    500,
                    r#"{"error":{"type":"api_error","message":"x"}}"#.into(),
                ))
            }
            AcqFault::RateLimited => Ok((
                429,
                r#"{"error":{"type":"invalid_request_error","code":"rate_limit","message":"x"}}"#
                    .into(),
            )),
        }
    }

    /// A forward of a stored payment (the object's alarm), on the order's own lane.
    pub fn forward(
        &mut self,
        lane: &str,
        req: &ForwardRequest,
        sf_key: &[u8; 32],
        event_id: &str,
    ) -> AcquirerResult {
        if self.down.iter().any(|d| d == lane) || lane.is_empty() {
            return AcquirerResult::Unavailable;
        }
        self.forwards += 1;
        let key = crate::secret::Secret::new(*sf_key);
        let Ok((card, _)) =
            crate::vault::open_for_forwarding(&key, event_id, &req.auth_id, &req.sealed_card.0)
        else {
            return AcquirerResult::Unavailable;
        };
        let fault = self.forward_faults.pop_front().unwrap_or(AcqFault::None);
        match fault {
            // Nothing reached the acquirer.
            AcqFault::Refuse | AcqFault::RateLimited => return AcquirerResult::NotCharged,
            AcqFault::TimeoutUnseen | AcqFault::ServerError => return AcquirerResult::Unavailable,
            _ => {}
        }
        let number = card.number().expose().clone();
        let r = self.process(
            lane,
            &req.idempotency_key,
            &req.order_id,
            &number,
            req.amount.0,
        );
        if fault != AcqFault::None {
            // Processed, then the answer was lost (timeout, reset, 500, `processing`,
            // garbage): the forward's outcome is unknown to the object.
            return AcquirerResult::Unavailable;
        }
        match r {
            Some(id) => AcquirerResult::Approved { charge_id: id },
            None => AcquirerResult::Declined {
                reason: "card_declined".into(),
            },
        }
    }

    /// Refunds a charge (reconciliation of a lost checkout), once per charge.
    /// A refund with an idempotency key, applied once however often it is sent.
    pub fn refund_once(
        &mut self,
        key: &str,
        charge_id: &str,
        amount: i64,
    ) -> crate::ledger::RefundOutcome {
        if self.refund_keys.insert(key.to_string()) {
            self.refund(charge_id, amount);
        }
        crate::ledger::RefundOutcome::Succeeded {
            acquirer_refund_id: format!("re_{key}"),
        }
    }

    pub fn refund(&mut self, charge_id: &str, amount: i64) {
        if let Some(c) = self.charges.iter_mut().find(|c| c.id == charge_id) {
            c.refunded = (c.refunded + amount).min(c.amount);
        }
    }

    /// The charges as reconciliation lists them.
    pub fn listing(&self) -> Vec<AcquirerCharge> {
        self.charges
            .iter()
            .map(|c| AcquirerCharge {
                id: c.id.clone(),
                amount: MinorUnits(c.amount),
                currency: Currency::parse("EUR").unwrap(),
                status: ChargeStatus::Succeeded,
                idempotency_key: Some(c.key.clone()),
                order_id: Some(c.order_id.clone()),
                refunded_amount: MinorUnits(c.refunded),
                lane: c.lane.clone(),
            })
            .collect()
    }
}

/// A buyer's request, made into the machine's input the way the Worker does it.
pub(crate) fn input(
    ev: &Arc<EventConfig>,
    idem: &str,
    items: &str,
    card: &str,
    token: &str,
    now_ms: i64,
) -> CheckoutInput {
    let body: CheckoutBody = serde_json::from_str(&format!(
        r#"{{"items":{items},"token":"{token}","buyer":{{"email":"buyer@example.com","consent_accepted":true,"age_confirmed":true}}}}"#
    ))
    .unwrap();
    let key = CheckoutKey::derive(Some(idem), [0; 12]).unwrap();
    let b = bundle();
    let prepared = (|| {
        let quote = request::quote_cart(ev, &b, &body.items, now_ms)?;
        request::check_prompts(&quote, &body.buyer)?;
        let card = Card::parse(
            card,
            crate::card::Expiry {
                month: 12,
                year: 2034,
            },
            None,
            now_ms,
        )
        .map_err(|e| e.to_api())?;
        let fingerprint = request::fingerprint(&body, card.number(), &[9u8; 32]);
        let holder = request::card_holder(card.number(), &[9u8; 32]);
        Ok(Prepared {
            bundle: b.clone(),
            quote,
            lines: body.lines(),
            buyer_email: body.buyer.email.clone(),
            admission_ticket: None,
            require_online: body.require_online(),
            card,
            cvc: None,
            fingerprint,
            holder,
        })
    })();
    CheckoutInput {
        event: ev.clone(),
        key,
        cart: request::cart_fingerprint(&body),
        prepared,
        secrets: vec![
            ("STRIPE_FAST".into(), Secret::new("sk_test_fast".into())),
            ("STRIPE_CHEAP".into(), Secret::new("sk_test_cheap".into())),
        ],
        colo: "SIM".into(),
        now_ms,
        signals: Signals::default(),
        nonce: [3; 12],
    }
}

/// Drives one checkout to its answer with the given faults (first listed, first used).
pub(crate) fn drive(
    co: &mut Checkout,
    router: &mut Router,
    obj: &mut FakeObject,
    acq: &mut FakeAcquirer,
    now: &mut i64,
    obj_faults: &mut Vec<ObjFault>,
    acq_faults: &mut Vec<AcqFault>,
) -> Answer {
    for _ in 0..1000 {
        *now += 3;
        match co.poll(router, *now) {
            Step::Object(call) => {
                let f = if obj_faults.is_empty() {
                    ObjFault::None
                } else {
                    obj_faults.remove(0)
                };
                let r = obj.call(call, *now, f);
                co.handle_object(r, *now);
            }
            Step::SealKey => co.handle_seal_key(Ok(Secret::new(obj.sf_key))),
            Step::Authorize(a) => {
                let f = if acq_faults.is_empty() {
                    AcqFault::None
                } else {
                    acq_faults.remove(0)
                };
                let sent = acq.authorize(&a.lane, &a.call, f);
                *now += 20;
                co.handle_attempt(router, sent, *now);
            }
            Step::Wait { ms } => *now += i64::from(ms),
            Step::Answer(_) | Step::Late => panic!("no attempt outlives its answer time here"),
            Step::Done(a) => return a,
        }
    }
    panic!("the checkout did not finish in 1000 steps");
}

pub(crate) struct World {
    pub ev: Arc<EventConfig>,
    pub router: Router,
    pub obj: FakeObject,
    pub acq: FakeAcquirer,
    pub now: i64,
}

impl World {
    pub fn new(stock: u32) -> World {
        let ev = Arc::new(event(stock));
        World {
            obj: FakeObject::new((*ev).clone()),
            ev,
            router: router(),
            acq: FakeAcquirer::default(),
            now: T0,
        }
    }

    pub fn pay(
        &mut self,
        idem: &str,
        items: &str,
        card: &str,
        token: &str,
        obj: &[ObjFault],
        acq: &[AcqFault],
    ) -> Answer {
        let mut co = Checkout::new(input(&self.ev, idem, items, card, token, self.now));
        drive(
            &mut co,
            &mut self.router,
            &mut self.obj,
            &mut self.acq,
            &mut self.now,
            &mut obj.to_vec(),
            &mut acq.to_vec(),
        )
    }

    fn charges_of(&self, order_id: &str) -> usize {
        self.acq
            .charges
            .iter()
            .filter(|c| c.order_id == order_id)
            .count()
    }
}

const CART: &str = r#"[{"sku":"ticket","quantity":2}]"#;

#[test]
fn approved_online_with_a_signed_receipt_and_a_small_stored_answer() {
    let mut w = World::new(10);
    let a = w.pay("k1", CART, APPROVE, "tok_a", &[], &[]);
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["status"], "approved");
    assert!(a.body["receipt"]["signature"].is_object(), "{}", a.body);
    assert_eq!(
        a.notes,
        vec![Note::Approved {
            lane: "cheap".into()
        }]
    );
    let order = a.order_id.clone().unwrap();
    assert_eq!(
        w.obj.ledger.order(&order).unwrap().state,
        OrderState::Approved
    );
    assert_eq!(w.charges_of(&order), 1);
    // The replay answers the same, with the receipt read back from its table.
    let r = w.pay("k1", CART, APPROVE, "tok_a", &[], &[]);
    assert!(r.replayed);
    assert_eq!((r.status, &r.body["order_id"]), (201, &a.body["order_id"]));
    assert_eq!(r.body["receipt"], a.body["receipt"]);
}

#[test]
fn a_retokenized_retry_of_the_same_cart_and_card_replays_instead_of_charging_again() {
    let mut w = World::new(10);
    let first = w.pay("k1", CART, APPROVE, "tok_first", &[], &[]);
    assert_eq!(first.status, 201);
    let again = w.pay("k1", CART, APPROVE, "tok_second", &[], &[]);
    assert_eq!(again.status, 201, "{}", again.body);
    assert!(again.replayed);
    assert_eq!(w.acq.charges.len(), 1);
    // Another cart under the same key is a mismatch, never a charge.
    let other = w.pay(
        "k1",
        r#"[{"sku":"ticket","quantity":3}]"#,
        APPROVE,
        "tok_x",
        &[],
        &[],
    );
    assert_eq!(other.status, 422);
    assert_eq!(w.acq.charges.len(), 1);
}

#[test]
fn a_lost_answer_after_processing_is_never_failed_over_to_another_lane() {
    for fault in [
        AcqFault::ProcessThenTimeout,
        AcqFault::Processing,
        AcqFault::Garbage,
        AcqFault::ProcessThen500,
    ] {
        let mut w = World::new(10);
        let a = w.pay("k1", CART, APPROVE, "tok", &[], &[fault]);
        assert_eq!(w.acq.requests, 1, "{fault:?}: no second lane may be tried");
        assert_eq!(a.status, 201, "{fault:?}: {}", a.body);
        assert_eq!(a.body["status"], "queued", "{fault:?}");
        let order = a.order_id.clone().unwrap();
        let auth = w.obj.ledger.auths().find(|x| x.order_id == order).unwrap();
        assert!(auth.resolves_attempt, "{fault:?}");
        assert_eq!(auth.idempotency_key, format!("{order}_online"));
        // Forwarding completes that attempt: the acquirer replays, nothing is charged twice.
        w.now += 10 * 60_000;
        let mut acq = std::mem::take(&mut w.acq);
        w.obj.alarm(&mut acq, w.now);
        w.acq = acq;
        assert_eq!(w.charges_of(&order), 1, "{fault:?}");
        assert_eq!(
            w.obj.ledger.order(&order).unwrap().state,
            OrderState::Forwarded,
            "{fault:?}"
        );
    }
}

#[test]
fn refused_connections_and_rate_limits_fail_over_after_recording_the_lane() {
    for fault in [
        AcqFault::Refuse,
        AcqFault::RateLimited,
        AcqFault::ServerError,
    ] {
        let mut w = World::new(10);
        let a = w.pay("k1", CART, APPROVE, "tok", &[], &[fault]);
        if fault == AcqFault::ServerError {
            // A 500 may hide a charge: unknown, stored on that lane.
            assert_eq!(a.body["status"], "queued");
            assert_eq!(w.acq.requests, 1);
            continue;
        }
        assert_eq!(a.status, 201, "{fault:?}: {}", a.body);
        assert_eq!(a.body["status"], "approved");
        assert_eq!(w.acq.requests, 2);
        let order = a.order_id.unwrap();
        assert_eq!(w.obj.ledger.order(&order).unwrap().lane, "fast");
    }
}

#[test]
fn a_failed_finish_after_an_approval_never_releases_and_a_retry_replays_the_charge() {
    let mut w = World::new(10);
    // begin ok; all three finish calls fail before reaching the object.
    let a = w.pay(
        "k1",
        CART,
        APPROVE,
        "tok",
        &[
            ObjFault::None,
            ObjFault::Before,
            ObjFault::Before,
            ObjFault::Before,
        ],
        &[],
    );
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["status"], "pending");
    let order = a.order_id.clone().unwrap();
    assert_eq!(
        w.obj.ledger.order(&order).unwrap().state,
        OrderState::Pending
    );
    // While the key is in flight the retry is told so; later it takes over the same order
    // and the acquirer replays its approval.
    let busy = w.pay("k1", CART, APPROVE, "tok2", &[], &[]);
    assert_eq!(busy.status, 409);
    w.now += crate::ledger::IDEMPOTENCY_IN_FLIGHT_MS + 1;
    let r = w.pay("k1", CART, APPROVE, "tok3", &[], &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["order_id"], a.body["order_id"]);
    assert_eq!(w.acq.charges.len(), 1);
    assert_eq!(
        w.obj.ledger.order(&order).unwrap().state,
        OrderState::Approved
    );
}

#[test]
fn a_finish_applied_whose_answer_was_lost_is_retried_and_answers_the_stored_result() {
    let mut w = World::new(10);
    let a = w.pay(
        "k1",
        CART,
        APPROVE,
        "tok",
        &[ObjFault::None, ObjFault::After],
        &[],
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(w.acq.charges.len(), 1);
    assert_eq!(w.obj.ledger.orders().count(), 1);
}

#[test]
fn a_worker_that_died_after_charging_is_resumed_on_the_same_lane_and_key() {
    let mut w = World::new(10);
    // The cheap lane (planned first) refuses the connection; the fast lane is recorded and
    // charges; the Worker dies before finishing.
    let mut co = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok", w.now));
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 50);
        match co.poll(&mut w.router, w.now) {
            Step::Object(call) => {
                let r = w.obj.call(call, w.now, ObjFault::None);
                co.handle_object(r, w.now);
            }
            Step::Authorize(a) if a.lane == "cheap" => {
                let sent = w.acq.authorize(&a.lane, &a.call, AcqFault::Refuse);
                co.handle_attempt(&mut w.router, sent, w.now);
            }
            Step::Authorize(a) => {
                let _ = w.acq.authorize(&a.lane, &a.call, AcqFault::None);
                break; // the Worker dies here
            }
            other => panic!("{other:?}"),
        }
    }
    drop(co);
    assert_eq!(w.acq.charges.len(), 1);
    w.now += crate::ledger::IDEMPOTENCY_IN_FLIGHT_MS + 1;
    // The cheap lane is healthy again and would be planned first; the resumed checkout
    // must still go to the fast lane, where the acquirer replays the charge.
    let r = w.pay("k1", CART, APPROVE, "tok2", &[], &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(w.acq.charges.len(), 1, "charged twice");
    assert!(r.routing.unwrap().contains("resumed on fast"));
}

#[test]
fn declines_release_the_stock_and_replay() {
    let mut w = World::new(2);
    let a = w.pay("k1", CART, DECLINE, "tok", &[], &[]);
    assert_eq!(a.status, 402, "{}", a.body);
    assert_eq!(a.body["status"], "declined");
    // The buyer's code is the neutral reason; the order and the metrics keep the issuer's.
    assert_eq!(a.body["decline"]["code"], "card_declined");
    assert_eq!(
        a.notes,
        vec![Note::Declined {
            lane: "cheap".into(),
            reason: "generic_decline".into()
        }]
    );
    let order = w.obj.ledger.order(a.order_id.as_deref().unwrap()).unwrap();
    assert_eq!(order.decline_reason.as_deref(), Some("generic_decline"));
    assert_eq!(w.obj.ledger.available("ticket"), 2);
    let r = w.pay("k1", CART, DECLINE, "tok", &[], &[]);
    assert!(r.replayed);
    assert_eq!(r.status, 402);
}

#[test]
fn a_failed_request_before_the_hold_keeps_no_record_but_a_completed_one_still_replays() {
    let mut w = World::new(10);
    let bad = w.pay(
        "k1",
        r#"[{"sku":"nope","quantity":1}]"#,
        APPROVE,
        "tok",
        &[],
        &[],
    );
    assert_eq!(bad.status, 422);
    assert_eq!(w.obj.ledger.idempotency_records(), 0);
    let ok = w.pay("k2", CART, APPROVE, "tok", &[], &[]);
    assert_eq!(ok.status, 201);
    // The same purchase under the same key, in a request that now fails to prepare (its
    // card token can no longer be opened), still gets the completed answer...
    let again = w.pay("k2", CART, "4242", "tok", &[], &[]);
    assert_eq!(again.status, 201, "{}", again.body);
    assert!(again.replayed);
    // ...but another purchase under that key does not.
    let other = w.pay(
        "k2",
        r#"[{"sku":"nope","quantity":1}]"#,
        APPROVE,
        "tok",
        &[],
        &[],
    );
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.body["error"]["code"], "idempotency_mismatch");
}

#[test]
fn out_of_stock_keeps_no_record() {
    let mut w = World::new(1);
    let a = w.pay("k1", CART, APPROVE, "tok", &[], &[]);
    assert_eq!(a.status, 409, "{}", a.body);
    assert_eq!(w.obj.ledger.idempotency_records(), 0);
}

#[test]
fn a_fifty_line_cart_with_long_names_replays() {
    let mut ev = event(1000);
    ev.skus = (0..50)
        .map(|i| Sku {
            id: format!("sku{i}"),
            name: format!("{i:02} {}", "a very long item name ".repeat(9))
                .chars()
                .take(200)
                .collect(),
            category: crate::ledger::Category::Merchandise,
            price: MinorUnits(100),
            stock: 100,
            max_per_order: None,
        })
        .collect();
    let mut w = World::new(10);
    w.ev = Arc::new(ev.clone());
    w.obj = FakeObject::new(ev);
    let cart = serde_json::to_string(
        &(0..50)
            .map(|i| serde_json::json!({"sku": format!("sku{i}"), "quantity": 1}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let a = w.pay("k1", &cart, APPROVE, "tok", &[], &[]);
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(
        a.body["receipt"].to_string().len() > 8 * 1024,
        "a big receipt"
    );
    let r = w.pay("k1", &cart, APPROVE, "tok", &[], &[]);
    assert!(r.replayed, "{}", r.body);
    assert_eq!(r.status, 201);
    assert_eq!(r.body["receipt"], a.body["receipt"]);
}

#[test]
fn all_lanes_down_stores_offline_in_one_call_within_the_budget() {
    let mut w = World::new(100);
    let mut ev = (*w.ev).clone();
    ev.offline.aggregate_max = MinorUnits(1_000_000);
    w.ev = Arc::new(ev.clone());
    w.obj = FakeObject::new(ev);
    w.acq.down = vec!["fast".into(), "cheap".into()];
    // Teach the router that both lanes refuse (breakers open).
    for i in 0..30 {
        let a = w.pay(
            &format!("warm{i}"),
            r#"[{"sku":"shirt","quantity":1}]"#,
            APPROVE,
            "tok",
            &[],
            &[],
        );
        assert!(a.status < 500, "{}", a.body);
    }
    let calls = w.obj.calls;
    let a = w.pay("k1", CART, APPROVE, "tok", &[], &[]);
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["status"], "queued");
    assert_eq!(w.obj.calls - calls, 1, "one object call");
    assert!(w.obj.ledger.offline_exposure() <= w.ev.offline.aggregate_max);
}

#[test]
fn a_timeout_the_acquirer_never_saw_is_completed_later_and_charged_once() {
    let mut w = World::new(10);
    let a = w.pay("k1", CART, APPROVE, "tok", &[], &[AcqFault::TimeoutUnseen]);
    assert_eq!(a.body["status"], "queued", "{}", a.body);
    assert!(w.acq.charges.is_empty());
    w.now += 10 * 60_000;
    let mut acq = std::mem::take(&mut w.acq);
    w.obj.alarm(&mut acq, w.now);
    w.acq = acq;
    assert_eq!(w.acq.charges.len(), 1);
    let report = w.obj.ledger.reconcile(&w.acq.listing());
    assert!(report.missing_at_edge.is_empty() && report.missing_at_acquirer.is_empty());
}

#[test]
fn a_charge_whose_buyer_gave_up_is_found_by_reconciliation_and_refunded() {
    let mut w = World::new(10);
    // The Worker dies right after the acquirer charged; the buyer never comes back.
    let mut co = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok", w.now));
    loop {
        match co.poll(&mut w.router, w.now) {
            Step::Object(call) => {
                let r = w.obj.call(call, w.now, ObjFault::None);
                co.handle_object(r, w.now);
            }
            Step::Authorize(a) => {
                let _ = w.acq.authorize(&a.lane, &a.call, AcqFault::None);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    w.now += crate::ledger::LOST_CHECKOUT_AFTER_MS + HOLD_MS;
    // Any command lapses the hold (the alarm would).
    let _ = w.obj.ledger.handle(Command::SyncNow, w.now, [0; 8]);
    let lost = w.obj.ledger.lost_checkouts(&w.acq.listing(), w.now);
    assert_eq!(lost.len(), 1);
    w.acq.refund(&lost[0].charge_id, lost[0].amount.0);
    let report = w.obj.ledger.reconcile(&w.acq.listing());
    assert!(report.missing_at_edge.is_empty(), "{report:?}");
    assert_eq!(report.refunded_unpaid.len(), 1);
}

#[test]
fn unknown_outcomes_past_their_bound_are_stored_but_the_buyer_hears_pending_until_confirmed() {
    let mut w = World::new(100);
    let mut ev = (*w.ev).clone();
    // The bound comes from the policy bundle (offline.unknown_exposure_cap).
    let mut limits = bundle().bundle.offline.clone();
    limits.unknown_exposure_cap = Some(MinorUnits(4000));
    ev.offline = limits
        .event_budget(Some(ev.offline.clone()), ev.currency, "XX")
        .unwrap();
    assert_eq!(ev.offline.unknown_max, Some(MinorUnits(4000)));
    w.ev = Arc::new(ev.clone());
    w.obj = FakeObject::new(ev);
    let a = w.pay(
        "k1",
        CART,
        APPROVE,
        "t",
        &[],
        &[AcqFault::ProcessThenTimeout],
    );
    assert_eq!((a.status, a.body["status"].as_str()), (201, Some("queued")));
    let b = w.pay(
        "k2",
        CART,
        APPROVE,
        "t",
        &[],
        &[AcqFault::ProcessThenTimeout],
    );
    assert_eq!(b.status, 202, "{}", b.body);
    assert_eq!(b.body["status"], "pending");
    assert!(
        b.body.get("receipt").is_none(),
        "no receipt before it is confirmed"
    );
    assert!(w.obj.ledger.unknown_exposure() <= MinorUnits(4000));
    // The pending answer links where the checkout stands; that URL says pending too.
    let mut linked = b.clone();
    super::status::link(&mut linked, Some(&w.obj.keys), &w.ev.event_id);
    let url = linked.body["status_url"].as_str().unwrap().to_string();
    let part = url.rsplit('/').next().unwrap();
    let order_id = super::status::open(&w.obj.keys, &w.ev.event_id, part).unwrap();
    assert_eq!(Some(order_id), b.body["order_id"].as_str());
    let view = |w: &World| {
        super::status::view(w.obj.ledger.order(order_id).unwrap(), Some(&w.obj.keys)).body
    };
    assert_eq!(view(&w)["status"], "pending");
    assert!(view(&w).get("receipt_url").is_none());
    // Stored all the same: forwarding completes it, and the replay then says approved.
    w.now += 10 * 60_000;
    let mut acq = std::mem::take(&mut w.acq);
    w.obj.alarm(&mut acq, w.now);
    w.acq = acq;
    assert_eq!(view(&w)["status"], "approved", "{}", view(&w));
    // The receipt was kept while pending and now says the payment was charged.
    let rid = view(&w)["receipt_id"].as_str().unwrap().to_string();
    let kept = crate::receipt::SignedReceipt::from_json(&w.obj.store.receipts[&rid]).unwrap();
    assert_eq!(kept.receipt.status, ReceiptStatus::Forwarded);
    assert!(view(&w)["receipt_url"].is_string(), "{}", view(&w));
    let r = w.pay("k2", CART, APPROVE, "t", &[], &[]);
    assert!(r.replayed);
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (201, Some("approved")),
        "{}",
        r.body
    );
    assert_eq!(w.acq.charges.len(), 2);
}

#[test]
fn a_buyer_who_asked_for_an_online_payment_hears_pending_on_an_unknown_outcome() {
    let mut w = World::new(10);
    let mut inp = input(&w.ev, "k1", CART, APPROVE, "t", w.now);
    if let Ok(p) = &mut inp.prepared {
        p.require_online = true;
    }
    let mut co = Checkout::new(inp);
    let a = drive(
        &mut co,
        &mut w.router,
        &mut w.obj,
        &mut w.acq,
        &mut w.now,
        &mut vec![],
        &mut vec![AcqFault::ProcessThenTimeout],
    );
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(w.obj.ledger.auths().count(), 1, "stored to be completed");
    assert_eq!(w.acq.requests, 1);
}

#[test]
fn a_lost_connection_is_sent_again_on_the_same_lane_and_the_acquirer_replays() {
    let mut w = World::new(10);
    let a = w.pay("k1", CART, APPROVE, "t", &[], &[AcqFault::ProcessThenReset]);
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (201, Some("approved")),
        "{}",
        a.body
    );
    assert_eq!(
        w.acq.lanes_seen,
        vec!["cheap".to_string(), "cheap".to_string()]
    );
    assert_eq!(w.acq.charges.len(), 1);
    // Lost twice: stored to complete on that lane, never sent elsewhere.
    let mut w = World::new(10);
    let b = w.pay(
        "k1",
        CART,
        APPROVE,
        "t",
        &[],
        &[AcqFault::ProcessThenReset, AcqFault::ProcessThenReset],
    );
    assert_eq!(b.body["status"], "queued", "{}", b.body);
    assert!(w.acq.lanes_seen.iter().all(|l| l == "cheap"));
    // A 429 on the resend does not make the first attempt's outcome any less unknown.
    let mut w = World::new(10);
    let c = w.pay(
        "k1",
        CART,
        APPROVE,
        "t",
        &[],
        &[AcqFault::ProcessThenReset, AcqFault::RateLimited],
    );
    assert_eq!(c.body["status"], "queued", "{}", c.body);
    assert!(
        w.acq.lanes_seen.iter().all(|l| l == "cheap"),
        "{:?}",
        w.acq.lanes_seen
    );
}

#[test]
fn a_refusal_before_anything_was_sent_frees_the_key_and_the_order_for_the_same_retry() {
    let mut w = World::new(2);
    let online = |w: &World| {
        let mut inp = input(&w.ev, "k1", CART, APPROVE, "t", w.now);
        if let Ok(p) = &mut inp.prepared {
            p.require_online = true;
        }
        Checkout::new(inp)
    };
    let mut co = online(&w);
    let a = drive(
        &mut co,
        &mut w.router,
        &mut w.obj,
        &mut w.acq,
        &mut w.now,
        &mut vec![],
        &mut vec![AcqFault::RateLimited, AcqFault::RateLimited],
    );
    assert_eq!(a.status, 402, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "acquirer_unavailable");
    assert_eq!(w.obj.ledger.available("ticket"), 2);
    assert_eq!(w.obj.ledger.orders().count(), 0);
    assert_eq!(w.obj.ledger.idempotency_records(), 0);
    let mut co = online(&w);
    let b = drive(
        &mut co,
        &mut w.router,
        &mut w.obj,
        &mut w.acq,
        &mut w.now,
        &mut vec![],
        &mut vec![],
    );
    assert_eq!(
        (b.status, b.body["status"].as_str()),
        (201, Some("approved")),
        "{}",
        b.body
    );
    assert_eq!(w.acq.charges.len(), 1);
}

#[test]
fn a_resend_that_finds_its_lane_full_is_completed_later_never_sent_to_another_lane() {
    // Found by the chaos run: the resend after a lost connection found no permit on its
    // lane and moved on to the next one, which charged the card a second time.
    let mut w = World::new(10);
    let mut co = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "t", w.now));
    let mut co_steps = 0;
    let mut waited = 0;
    let answer = loop {
        co_steps += 1;
        assert!(co_steps < 30);
        match co.poll(&mut w.router, w.now) {
            Step::Object(call) => {
                let r = w.obj.call(call, w.now, ObjFault::None);
                co.handle_object(r, w.now);
            }
            Step::Authorize(a) => {
                let sent = w
                    .acq
                    .authorize(&a.lane, &a.call, AcqFault::ProcessThenReset);
                // Meanwhile other checkouts fill the lane's limit.
                let lane = w.router.lane_id(&a.lane).unwrap();
                let mut held = Vec::new();
                while let Some(p) = w.router.try_acquire(lane, w.now) {
                    held.push(p);
                    assert!(held.len() < 1000);
                }
                co.handle_attempt(&mut w.router, sent, w.now);
            }
            Step::SealKey => co.handle_seal_key(Ok(Secret::new(w.obj.sf_key))),
            Step::Wait { ms } => {
                // The lane stays full: the resend waits for its permit, then gives up.
                co_steps -= 1;
                waited += ms;
                w.now += i64::from(ms);
            }
            Step::Answer(_) | Step::Late => panic!("no attempt outlives its answer time here"),
            Step::Done(a) => break a,
        }
    };
    assert!(waited > 0, "the resend did not wait for a permit");
    assert_eq!(answer.body["status"], "queued", "{}", answer.body);
    assert!(
        w.acq.lanes_seen.iter().all(|l| *l == w.acq.lanes_seen[0]),
        "{:?}",
        w.acq.lanes_seen
    );
    assert_eq!(w.acq.charges.len(), 1);
}

#[test]
fn a_retry_that_cannot_open_its_card_waits_for_an_earlier_attempt_that_may_have_charged() {
    // Found by the chaos run: a Worker died after charging; the buyer's retry, once the key
    // was stale, could not open its (revoked) card token and was told so; it tokenized
    // again under a new key and was charged a second time.
    let mut w = World::new(10);
    let mut co = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "t", w.now));
    loop {
        match co.poll(&mut w.router, w.now) {
            Step::Object(call) => {
                let r = w.obj.call(call, w.now, ObjFault::None);
                co.handle_object(r, w.now);
            }
            Step::Authorize(a) => {
                let _ = w.acq.authorize(&a.lane, &a.call, AcqFault::None);
                break; // the Worker dies
            }
            other => panic!("{other:?}"),
        }
    }
    w.now += crate::ledger::IDEMPOTENCY_IN_FLIGHT_MS + 1;
    // The retry's card token no longer opens (prepare fails).
    let r = w.pay("k1", CART, "4242", "t2", &[], &[]);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "idempotency_in_flight");
    assert_eq!(r.body["error"]["retryable"], true);
}

/// Polls a checkout, answering its object calls, up to its first authorization.
fn to_authorize(w: &mut World, co: &mut Checkout) -> Authorize {
    for _ in 0..20 {
        match co.poll(&mut w.router, w.now) {
            Step::Object(call) => {
                let r = w.obj.call(call, w.now, ObjFault::None);
                co.handle_object(r, w.now);
            }
            Step::Authorize(a) => return a,
            Step::SealKey => co.handle_seal_key(Ok(Secret::new(w.obj.sf_key))),
            other => panic!("{other:?}"),
        }
    }
    panic!("no authorization in 20 steps");
}

/// Feeds an attempt's result and drives the checkout to its answer without faults.
fn answer_after(w: &mut World, co: &mut Checkout, sent: Sent) -> Answer {
    co.handle_attempt(&mut w.router, sent, w.now);
    drive(
        co,
        &mut w.router,
        &mut w.obj,
        &mut w.acq,
        &mut w.now,
        &mut vec![],
        &mut vec![],
    )
}

#[test]
fn a_finish_for_a_key_already_answered_replays_that_answer_and_applies_nothing() {
    // Found by the simulation (seed 19): the first checkout stored "hold lapsed, will be
    // refunded", then the retry that had taken over the key confirmed the same charge and
    // told the buyer "approved"; replays said the first, the ledger the second.
    let mut w = World::new(2);
    let mut first = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok", w.now));
    let a = to_authorize(&mut w, &mut first);
    let charged = w.acq.authorize(&a.lane, &a.call, AcqFault::None);
    // The first checkout stalls; its hold lapses and another buyer holds the stock.
    w.now += HOLD_MS + 1_000;
    let mut other = Checkout::new(input(&w.ev, "k2", CART, APPROVE, "tok2", w.now));
    let _ = to_authorize(&mut w, &mut other);
    // A retry takes the key over and is sent the same charge again.
    w.now += 1_000;
    let mut retry = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok3", w.now));
    let b = to_authorize(&mut w, &mut retry);
    let replayed = w.acq.authorize(&b.lane, &b.call, AcqFault::None);
    assert_eq!(w.acq.charges.len(), 1);
    // The first checkout learns of its charge: the stock is gone, its answer is kept.
    let lapsed = answer_after(&mut w, &mut first, charged);
    assert_eq!(
        (lapsed.status, lapsed.body["error"]["code"].as_str()),
        (409, Some("hold_lapsed")),
        "{}",
        lapsed.body
    );
    // The other buyer's hold lapses too; the stock is back when the retry confirms.
    w.now += HOLD_MS + 1_000;
    let late = answer_after(&mut w, &mut retry, replayed);
    assert_eq!(late.status, 409, "{}", late.body);
    assert_eq!(late.body["error"]["code"], "hold_lapsed");
    let order = lapsed.order_id.unwrap();
    assert_eq!(
        w.obj.ledger.order(&order).unwrap().state,
        OrderState::Abandoned
    );
    // What the buyer was told is what happens: the charge is refunded.
    let lost = w.obj.ledger.lost_checkouts(&w.acq.listing(), w.now);
    assert_eq!(lost.len(), 1, "{lost:?}");
}

#[test]
fn a_resumed_checkout_that_cannot_send_in_time_completes_the_earlier_attempt() {
    // Found by the simulation (seed 2): the Worker died after the acquirer charged; the
    // retry resumed the order but its deadline passed before it could send, and it stored
    // the payment as a new offline payment (another acquirer key): charged twice.
    let mut w = World::new(10);
    let mut co = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok", w.now));
    let a = to_authorize(&mut w, &mut co);
    let _ = w.acq.authorize(&a.lane, &a.call, AcqFault::None);
    drop(co); // the Worker dies
    w.now += crate::ledger::IDEMPOTENCY_IN_FLIGHT_MS + 1;
    let mut retry = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok2", w.now));
    match retry.poll(&mut w.router, w.now) {
        Step::Object(call) => {
            let r = w.obj.call(call, w.now, ObjFault::None);
            retry.handle_object(r, w.now);
        }
        other => panic!("{other:?}"),
    }
    // The object answered slowly: the checkout's time is up before it can send.
    w.now += 10_000;
    let r = drive(
        &mut retry,
        &mut w.router,
        &mut w.obj,
        &mut w.acq,
        &mut w.now,
        &mut vec![],
        &mut vec![],
    );
    assert_eq!((r.status, r.body["status"].as_str()), (201, Some("queued")));
    let order = r.order_id.unwrap();
    w.now += 10 * 60_000;
    let mut acq = std::mem::take(&mut w.acq);
    w.obj.alarm(&mut acq, w.now);
    w.acq = acq;
    assert_eq!(w.acq.charges.len(), 1, "charged twice");
    let auth = w.obj.ledger.auths().find(|x| x.order_id == order).unwrap();
    assert_eq!(auth.idempotency_key, format!("{order}_online"));
    assert!(auth.resolves_attempt);
    assert_eq!(
        w.obj.ledger.order(&order).unwrap().state,
        OrderState::Forwarded
    );
}

#[test]
fn a_checkout_taken_over_by_a_retry_stores_no_new_payment() {
    // Found by the simulation (seed 16): the first checkout recorded the fast lane after
    // the cheap one refused, then stalled; a retry took the key over and charged on fast,
    // and its Worker died; the first checkout, now past its deadline, stored the payment
    // offline on cheap with another acquirer key, which forwarding charged again.
    let mut w = World::new(10);
    let mut first = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok", w.now));
    let a = to_authorize(&mut w, &mut first);
    assert_eq!(a.lane, "cheap");
    first.handle_attempt(&mut w.router, Err(Transport::Refused), w.now);
    match first.poll(&mut w.router, w.now) {
        Step::Object(call) => {
            assert!(
                matches!(&call, ObjectCall::Command(c) if matches!(**c, Command::NoteAttempt { .. }))
            );
            let r = w.obj.call(call, w.now, ObjFault::None);
            first.handle_object(r, w.now);
        }
        other => panic!("{other:?}"),
    }
    // The first checkout stalls; a retry takes over, charges on fast, and dies.
    w.now += crate::ledger::IDEMPOTENCY_IN_FLIGHT_MS + 1;
    let mut retry = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok2", w.now));
    let b = to_authorize(&mut w, &mut retry);
    assert_eq!(b.lane, "fast");
    let _ = w.acq.authorize(&b.lane, &b.call, AcqFault::None);
    drop(retry);
    let late = drive(
        &mut first,
        &mut w.router,
        &mut w.obj,
        &mut w.acq,
        &mut w.now,
        &mut vec![],
        &mut vec![],
    );
    assert_eq!(late.status, 202, "{}", late.body);
    // The buyer's next retry, once the dead retry's key is stale, finds the charge.
    w.now += crate::ledger::IDEMPOTENCY_IN_FLIGHT_MS + 1;
    let r = w.pay("k1", CART, APPROVE, "tok3", &[], &[]);
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (201, Some("approved")),
        "{}",
        r.body
    );
    // Nothing else was stored to be charged later.
    w.now += 10 * 60_000;
    let mut acq = std::mem::take(&mut w.acq);
    w.obj.alarm(&mut acq, w.now);
    w.acq = acq;
    assert_eq!(w.acq.charges.len(), 1, "charged twice");
    assert_eq!(w.acq.charges[0].refunded, 0);
}

#[test]
fn a_retry_after_a_checkout_was_undone_can_pay_with_the_same_key() {
    // Found by the simulation (seed 1): an undone checkout (nothing charged, "try again")
    // released its order; the order id derives from the key, so every retry with that key
    // found the released order and answered 202 pending, forever.
    let mut w = World::new(10);
    // The cheap lane refuses; recording the fast lane fails: nothing is sent, undo.
    let a = w.pay(
        "k1",
        CART,
        APPROVE,
        "tok",
        &[ObjFault::None, ObjFault::Before],
        &[AcqFault::Refuse],
    );
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.body["error"]["retryable"], true);
    assert!(w.acq.charges.is_empty());
    let r = w.pay("k1", CART, APPROVE, "tok", &[], &[]);
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (201, Some("approved")),
        "{}",
        r.body
    );
    assert_eq!(w.acq.charges.len(), 1);
    // An undone one-call store (the offline budget refused it) can be retried too.
    let mut w = World::new(100);
    let mut ev = (*w.ev).clone();
    ev.offline.aggregate_max = ev.offline.per_transaction_max;
    w.ev = Arc::new(ev.clone());
    w.obj = FakeObject::new(ev);
    w.acq.down = vec!["fast".into(), "cheap".into()];
    let mut refused = None;
    for i in 0..30 {
        let a = w.pay(&format!("k{i}"), CART, APPROVE, "tok", &[], &[]);
        if a.status == 402 {
            refused = Some(format!("k{i}"));
            break;
        }
    }
    let key = refused.expect("the budget refuses a store");
    let mut acq = std::mem::take(&mut w.acq);
    w.now += 10 * 60_000;
    w.obj.alarm(&mut acq, w.now); // lanes still down: nothing forwarded
    w.acq = acq;
    w.acq.down.clear();
    w.router = router();
    let r = w.pay(&key, CART, APPROVE, "tok", &[], &[]);
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn a_decline_is_answered_only_once_it_is_kept() {
    // Found by the simulation (seed 15485): a decline whose finish could not reach the
    // object was answered "declined" all the same; a retry took the key over, could not
    // send in time and completed the attempt offline: "queued". One key, two answers.
    let mut w = World::new(10);
    let lost = [
        ObjFault::None,
        ObjFault::Before,
        ObjFault::Before,
        ObjFault::Before,
    ];
    let a = w.pay("k1", CART, DECLINE, "tok", &lost, &[]);
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["status"], "pending");
    // The retry that takes over learns the decline again and keeps it.
    w.now += crate::ledger::IDEMPOTENCY_IN_FLIGHT_MS + 1;
    let r = w.pay("k1", CART, DECLINE, "tok2", &[], &[]);
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (402, Some("declined"))
    );
    let again = w.pay("k1", CART, DECLINE, "tok3", &[], &[]);
    assert!(again.replayed);
    assert_eq!(again.status, 402);
    assert!(w.acq.charges.is_empty());
}

#[test]
fn a_one_call_store_for_a_resumed_order_completes_the_earlier_attempt() {
    // The Worker dies after the acquirer charged; then every lane goes down, so the retry
    // that takes the key over plans to store the payment at once (one object call). The
    // object must not store a new payment for an order whose lane may hold a charge.
    let mut w = World::new(100);
    let mut ev = (*w.ev).clone();
    ev.offline.aggregate_max = MinorUnits(1_000_000);
    w.ev = Arc::new(ev.clone());
    w.obj = FakeObject::new(ev);
    let mut co = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok", w.now));
    let a = to_authorize(&mut w, &mut co);
    let _ = w.acq.authorize(&a.lane, &a.call, AcqFault::None);
    drop(co); // the Worker dies
    w.now += crate::ledger::IDEMPOTENCY_IN_FLIGHT_MS + 1;
    w.acq.down = vec!["fast".into(), "cheap".into()];
    for i in 0..30 {
        let _ = w.pay(
            &format!("warm{i}"),
            r#"[{"sku":"shirt","quantity":1}]"#,
            APPROVE,
            "tok",
            &[],
            &[],
        );
    }
    let r = w.pay("k1", CART, APPROVE, "tok2", &[], &[]);
    assert_eq!((r.status, r.body["status"].as_str()), (201, Some("queued")));
    assert!(
        r.routing
            .as_deref()
            .unwrap_or("")
            .starts_with("no_healthy_lane"),
        "{:?}",
        r.routing
    );
    w.acq.down.clear();
    for _ in 0..20 {
        w.now += 10 * 60_000;
        let mut acq = std::mem::take(&mut w.acq);
        w.obj.alarm(&mut acq, w.now);
        w.acq = acq;
    }
    let order = r.order_id.unwrap();
    let mine = w.acq.charges.iter().filter(|c| c.order_id == order).count();
    assert_eq!(mine, 1, "charged twice");
}

#[test]
fn a_stale_undo_does_not_forget_a_key_a_retry_took_over() {
    // Found by the simulation (seed 46970 of 100000): a checkout decided to undo (nothing
    // charged) but its finish, forgetting the key, reached the object only after a retry
    // had taken the key over and charged. The retry could not keep its answer; the next
    // retry found no record, took the order for an undone one, failed over to the other
    // lane and charged again.
    let mut w = World::new(10);
    let mut first = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok", w.now));
    let a = to_authorize(&mut w, &mut first);
    assert_eq!(a.lane, "cheap");
    first.handle_attempt(&mut w.router, Err(Transport::Refused), w.now);
    // Recording the fast lane fails: the first checkout will undo.
    match first.poll(&mut w.router, w.now) {
        Step::Object(call) => {
            let r = w.obj.call(call, w.now, ObjFault::Before);
            first.handle_object(r, w.now);
        }
        other => panic!("{other:?}"),
    }
    // It stalls before sending the undo; a retry takes over and charges on cheap.
    w.now += crate::ledger::IDEMPOTENCY_IN_FLIGHT_MS + 1;
    let mut retry = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok2", w.now));
    let b = to_authorize(&mut w, &mut retry);
    assert_eq!(b.lane, "cheap");
    let charged = w.acq.authorize(&b.lane, &b.call, AcqFault::None);
    let late = drive(
        &mut first,
        &mut w.router,
        &mut w.obj,
        &mut w.acq,
        &mut w.now,
        &mut vec![],
        &mut vec![],
    );
    assert_eq!(late.status, 503, "{}", late.body);
    let _ = answer_after(&mut w, &mut retry, charged);
    // The buyer's next retry, with the cheap lane now down, must find that charge.
    w.acq.down = vec!["cheap".into()];
    let r = w.pay("k1", CART, APPROVE, "tok3", &[], &[]);
    assert_eq!(w.acq.charges.len(), 1, "charged twice: {}", r.body);
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (201, Some("approved"))
    );
}

#[test]
fn a_refused_store_after_an_unknown_outcome_keeps_the_order_and_the_key() {
    // The object refuses to store the payment that completes an attempt of unknown
    // outcome (whatever its reason): the checkout must not forget the order and the key, as
    // it does when nothing was sent, because the acquirer may hold a charge.
    let mut w = World::new(10);
    let mut co = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok", w.now));
    let a = to_authorize(&mut w, &mut co);
    let sent = w
        .acq
        .authorize(&a.lane, &a.call, AcqFault::ProcessThenTimeout);
    co.handle_attempt(&mut w.router, sent, w.now);
    let answer = loop {
        match co.poll(&mut w.router, w.now) {
            Step::SealKey => co.handle_seal_key(Ok(Secret::new(w.obj.sf_key))),
            Step::Object(ObjectCall::Finish(f))
                if matches!(f.command, Some(Command::QueueAuthorization(_))) =>
            {
                let refused = FinishReply::Refused {
                    error: WireError::from(ApiError::new(402, "offline_budget_exhausted", "x")),
                };
                co.handle_object(Ok(ObjectResult::Finish(refused)), w.now);
            }
            Step::Object(call) => {
                assert!(
                    !matches!(&call, ObjectCall::Finish(f) if matches!(f.command, Some(Command::Forget { .. }))),
                    "forgets an order that may be charged"
                );
                let r = w.obj.call(call, w.now, ObjFault::None);
                co.handle_object(r, w.now);
            }
            Step::Done(a) => break a,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["status"], "pending");
    assert!(w.obj.ledger.order(co.order_id()).is_some());
    assert_eq!(w.acq.charges.len(), 1);
}

/// Fills every lane's concurrency limit with permits of other checkouts (slow ones, say,
/// or a caller's own).
fn fill_every_lane(router: &mut Router, now: i64) -> Vec<crate::routing::Permit> {
    let mut held = Vec::new();
    for name in router.lane_names() {
        let lane = router.lane_id(&name).unwrap();
        while let Some(p) = router.try_acquire(lane, now) {
            held.push(p);
            assert!(held.len() < 1000);
        }
    }
    held
}

/// Drives a checkout; after it has waited `free_after_ms` for a permit, the held permits
/// come back. Returns the answer and how long it waited.
fn pay_while_full(
    w: &mut World,
    idem: &str,
    card: &str,
    held: &mut Vec<crate::routing::Permit>,
    free_after_ms: Option<u32>,
) -> (Answer, u32) {
    let mut co = Checkout::new(input(&w.ev, idem, CART, card, "tok", w.now));
    let mut waited = 0;
    for _ in 0..2000 {
        w.now += 1;
        match co.poll(&mut w.router, w.now) {
            Step::Object(call) => {
                let r = w.obj.call(call, w.now, ObjFault::None);
                co.handle_object(r, w.now);
            }
            Step::SealKey => co.handle_seal_key(Ok(Secret::new(w.obj.sf_key))),
            Step::Authorize(a) => {
                let sent = w.acq.authorize(&a.lane, &a.call, AcqFault::None);
                w.now += 20;
                co.handle_attempt(&mut w.router, sent, w.now);
            }
            Step::Wait { ms } => {
                waited += ms;
                w.now += i64::from(ms);
                if free_after_ms.is_some_and(|f| waited >= f) {
                    for p in held.drain(..) {
                        w.router
                            .on_complete(p, 30, crate::routing::Outcome::Ok, w.now);
                    }
                }
            }
            Step::Answer(_) | Step::Late => panic!("no attempt outlives its answer time here"),
            Step::Done(a) => return (a, waited),
        }
    }
    panic!("the checkout did not finish");
}

#[test]
fn a_saturated_lane_limit_keeps_checkouts_online_approved_or_declined_by_the_acquirer() {
    // Found on a running edge: a checkout that found every lane at its concurrency limit
    // was stored offline (`no_healthy_lane`): a declining card came back `201 queued`, the
    // goods released, the decline found only when forwarding. Now it waits for a permit.
    for (card, status, state) in [(APPROVE, 201, "approved"), (DECLINE, 402, "declined")] {
        let mut w = World::new(10);
        let mut held = fill_every_lane(&mut w.router, w.now);
        let (a, waited) = pay_while_full(&mut w, "k1", card, &mut held, Some(50));
        assert!(waited >= 50, "it did not wait for a permit: {waited} ms");
        assert_eq!(a.status, status, "{}", a.body);
        assert_eq!(a.body["status"], state, "{}", a.body);
        assert!(
            a.routing
                .as_deref()
                .unwrap_or("")
                .contains("waited for a permit"),
            "{:?}",
            a.routing
        );
        assert_eq!(w.acq.charges.len(), usize::from(status == 201));
        assert_eq!(w.obj.ledger.auths().count(), 0);
        assert_eq!(w.router.waiting(w.now), 0, "the checkout kept its place");
    }
}

#[test]
fn a_checkout_that_waits_past_its_deadline_is_shed_with_429_and_nothing_is_kept() {
    let mut w = World::new(2);
    let mut held = fill_every_lane(&mut w.router, w.now);
    let (a, waited) = pay_while_full(&mut w, "k1", APPROVE, &mut held, None);
    let wait_ms = w.router.tuning().permit_wait_ms;
    // (each poll also moves the clock by 1 ms, so the sleeps add up to a bit less)
    assert!(waited > wait_ms / 2 && waited <= wait_ms, "{waited}");
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "overloaded");
    assert_eq!(a.retry_after_s, Some(PENDING_RETRY_S));
    // Nothing charged, nothing stored, the stock back, the key free for the retry.
    assert!(w.acq.charges.is_empty());
    assert_eq!(w.obj.ledger.auths().count(), 0);
    assert_eq!(w.obj.ledger.available("ticket"), 2);
    assert_eq!(w.router.waiting(w.now), 0);
    for p in held.drain(..) {
        w.router
            .on_complete(p, 30, crate::routing::Outcome::Ok, w.now);
    }
    let again = w.pay("k1", CART, APPROVE, "tok", &[], &[]);
    assert_eq!(again.status, 201, "{}", again.body);
    assert!(!again.replayed);
    assert_eq!(w.acq.charges.len(), 1);
}

#[test]
fn a_full_permit_queue_sheds_at_once() {
    let mut w = World::new(10);
    w.router = tight_router();
    let _held = fill_every_lane(&mut w.router, w.now);
    let max = w.router.tuning().max_waiters;
    for _ in 0..max {
        assert!(w.router.join_wait(w.now, w.now + 60_000).is_some());
    }
    let (a, waited) = pay_while_full(&mut w, "k1", APPROVE, &mut Vec::new(), None);
    assert_eq!(waited, 0);
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.routing.unwrap().contains("permit queue full"));
    assert_eq!(w.obj.ledger.available("ticket"), 10);
}

#[test]
fn a_card_testing_loop_is_refused_before_the_acquirer_after_three_declines() {
    // Each try is a new key and a new token for the same card, as a card-testing script
    // sends them; the card's holder hash (not the token) is what the ledger counts.
    let mut w = World::new(10);
    for i in 0..3 {
        let a = w.pay(
            &format!("t{i}"),
            CART,
            DECLINE,
            &format!("tok_{i}"),
            &[],
            &[],
        );
        assert_eq!(a.status, 402, "{}", a.body);
    }
    let sent = w.acq.requests;
    let a = w.pay("t3", CART, DECLINE, "tok_3", &[], &[]);
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "card_velocity");
    assert!(a.retry_after_s.is_some());
    assert_eq!(
        w.acq.requests, sent,
        "the acquirer never saw the fourth try"
    );
    // An honest buyer with another card is not affected.
    let ok = w.pay("h1", CART, APPROVE, "tok_h", &[], &[]);
    assert_eq!(ok.status, 201, "{}", ok.body);
}

#[test]
fn one_card_cannot_hold_the_stock_of_many_carts() {
    let mut w = World::new(10);
    // Two pending carts of the same card (the first two of a hoarding script whose
    // checkouts never finish: the object's half is left at begin).
    for i in 0..2 {
        let mut co = Checkout::new(input(
            &w.ev,
            &format!("h{i}"),
            CART,
            APPROVE,
            &format!("tok{i}"),
            w.now,
        ));
        let Step::Object(call) = co.poll(&mut w.router, w.now) else {
            panic!("the checkout begins with the object")
        };
        let r = w.obj.call(call, w.now, ObjFault::None);
        assert!(r.is_ok());
    }
    let a = w.pay("h2", CART, APPROVE, "tok2", &[], &[]);
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "too_many_pending");
    assert_eq!(
        w.obj.ledger.available("ticket"),
        6,
        "two carts of 2 held, no more"
    );
    let other = w.pay("o1", CART, "5555555555554444", "tok_o", &[], &[]);
    assert_eq!(other.status, 201, "{}", other.body);
}

#[test]
fn a_finish_whose_answer_cannot_be_kept_applies_nothing_and_the_retry_replays_the_charge() {
    // The acquirer charged; then keeping the answer fails (the key's record is gone when
    // the finish arrives). The object must not confirm the order without an answer kept:
    // the whole finish is discarded, 503 retryable, and the order is never released.
    let mut w = World::new(10);
    let mut co = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok", w.now));
    let a = to_authorize(&mut w, &mut co);
    let sent = w.acq.authorize(&a.lane, &a.call, AcqFault::None);
    co.handle_attempt(&mut w.router, sent, w.now + 20);
    let Step::Object(finish) = co.poll(&mut w.router, w.now + 21) else {
        panic!("the finish goes to the object")
    };
    let key = CheckoutKey::derive(Some("k1"), [0; 12]).unwrap();
    let order_id = key.order_id.clone();
    let gone = w.obj.ledger.handle(
        crate::ledger::Command::AbandonIdempotent {
            key: key.key.clone(),
        },
        w.now,
        [0; 8],
    );
    assert!(gone.reply.is_ok());
    let r = w.obj.call(finish, w.now + 22, ObjFault::None);
    match &r {
        Ok(ObjectResult::Finish(FinishReply::Refused { error })) => {
            assert_eq!(error.status, 503);
            assert!(error.retryable);
        }
        other => panic!("the finish must fail whole: {other:?}"),
    }
    assert_eq!(
        w.obj.ledger.order(&order_id).unwrap().state,
        OrderState::Pending,
        "nothing applied without its answer kept"
    );
    co.handle_object(r, w.now + 23);
    let answer = drive(
        &mut co,
        &mut w.router,
        &mut w.obj,
        &mut w.acq,
        &mut w.now,
        &mut vec![],
        &mut vec![],
    );
    assert!(matches!(answer.status, 201 | 202), "{}", answer.body);
    assert_ne!(
        w.obj.ledger.order(&order_id).unwrap().state,
        OrderState::Declined
    );
    assert_eq!(
        w.charges_of(&order_id),
        1,
        "one charge whatever the retries"
    );
}

#[test]
fn a_stored_payments_receipt_follows_its_order_through_every_later_state() {
    let mut w = World::new(10);
    let a = w.pay("k1", CART, APPROVE, "tok", &[], &[AcqFault::TimeoutUnseen]);
    assert_eq!(a.body["status"], "queued", "{}", a.body);
    let order = w
        .obj
        .ledger
        .order(a.body["order_id"].as_str().unwrap())
        .unwrap()
        .clone();
    let rid = a.body["receipt_id"].as_str().unwrap();
    let kept = crate::receipt::SignedReceipt::from_json(&w.obj.store.receipts[rid]).unwrap();
    assert_eq!(kept.receipt.status, ReceiptStatus::Queued);
    let after = |state: OrderState, refunded: i64| {
        let mut o = order.clone();
        o.state = state;
        o.refunded = MinorUnits(refunded);
        object_side::receipt_after(&o, &kept, w.now, &w.obj.keys).map(|r| {
            crate::receipt::verify(&r, &w.obj.keys).unwrap();
            (r.receipt.status, r.receipt.refunded_amount)
        })
    };
    assert_eq!(after(OrderState::Queued, 0), None);
    assert_eq!(
        after(OrderState::Forwarded, 0),
        Some((ReceiptStatus::Forwarded, None))
    );
    assert_eq!(
        after(OrderState::Expired, 0),
        Some((ReceiptStatus::Expired, None))
    );
    assert_eq!(
        after(OrderState::Declined, 0),
        Some((ReceiptStatus::Declined, None))
    );
    // Charged and refunded before the receipt was brought up to date: both, in order.
    let total = order.total.0;
    assert_eq!(
        after(OrderState::Refunded, total),
        Some((ReceiptStatus::Refunded, Some(order.total)))
    );
    assert_eq!(
        after(OrderState::PartiallyRefunded, 100),
        Some((ReceiptStatus::PartiallyRefunded, Some(MinorUnits(100))))
    );
}

// ---- an acquirer slower than the answer time -----------------------------------------

/// What a checkout against an acquirer answering after `acq_ms` came to.
struct Slow {
    /// The buyer's answer, when it came before the acquirer's (`Step::Answer`).
    early: Option<Answer>,
    /// The machine's last word (the buyer's answer when there was no early one).
    done: Option<Answer>,
    /// The answer time of the attempt.
    answer_by: Option<u32>,
}

/// Drives one checkout whose acquirer takes `acq_ms` to answer. With `dies_after_answer`
/// the Worker dies once the buyer was answered (the late result is never fed back).
fn drive_slow(
    w: &mut World,
    co: &mut Checkout,
    acq_ms: i64,
    faults: &[AcqFault],
    dies_after_answer: bool,
) -> Slow {
    let mut faults = faults.to_vec();
    let mut out = Slow {
        early: None,
        done: None,
        answer_by: None,
    };
    let mut late: Option<(Sent, i64)> = None;
    for _ in 0..200 {
        w.now += 1;
        match co.poll(&mut w.router, w.now) {
            Step::Object(call) => {
                let r = w.obj.call(call, w.now, ObjFault::None);
                co.handle_object(r, w.now);
            }
            Step::SealKey => co.handle_seal_key(Ok(Secret::new(w.obj.sf_key))),
            Step::Authorize(a) => {
                let fault = if faults.len() > 1 {
                    faults.remove(0)
                } else {
                    faults.first().copied().unwrap_or(AcqFault::None)
                };
                let sent = w.acq.authorize(&a.lane, &a.call, fault);
                out.answer_by = out.answer_by.or(a.answer_by_ms);
                match a.answer_by_ms {
                    Some(by) if acq_ms > i64::from(by) => {
                        w.now += i64::from(by);
                        late = Some((sent, w.now - i64::from(by) + acq_ms));
                        co.handle_answer_due(&mut w.router, w.now);
                    }
                    _ => {
                        w.now += acq_ms;
                        co.handle_attempt(&mut w.router, sent, w.now);
                    }
                }
            }
            Step::Wait { ms } => w.now += i64::from(ms),
            Step::Answer(a) => {
                out.early = Some(a);
                if dies_after_answer {
                    return out;
                }
            }
            Step::Late => {
                let (sent, at) = late.take().expect("a late result to wait for");
                w.now = w.now.max(at);
                co.handle_attempt(&mut w.router, sent, w.now);
            }
            Step::Done(a) => {
                out.done = Some(a);
                return out;
            }
        }
    }
    panic!("the checkout did not finish in 200 steps");
}

/// Every lane answered its last requests in `rtt_ms`.
fn lanes_answered_in(w: &mut World, rtt_ms: u32) {
    for name in ["fast", "cheap"] {
        let lane = w.router.lane_id(name).unwrap();
        for _ in 0..3 {
            let p = w.router.try_acquire(lane, w.now).unwrap();
            w.now += i64::from(rtt_ms);
            w.router
                .on_complete(p, rtt_ms, crate::routing::Outcome::Ok, w.now);
        }
    }
}

/// The same request again (same key), as the buyer's page sends it.
fn ask_again(w: &mut World, idem: &str, card: &str) -> Answer {
    w.pay(idem, CART, card, "tok_again", &[], &[])
}

#[test]
fn a_slow_acquirer_gets_the_buyer_a_confirming_answer_in_50_ms_and_the_payment_authorized_online() {
    let mut w = World::new(10);
    lanes_answered_in(&mut w, 2_000);
    let mut co = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok_a", w.now));
    let started = w.now;
    let s = drive_slow(&mut w, &mut co, 2_400, &[AcqFault::None], false);
    assert_eq!(s.answer_by, Some(50), "every lane slow: answer after 50 ms");
    let early = s.early.expect("the buyer is answered before the acquirer");
    assert_eq!(early.status, 201, "{}", early.body);
    assert_eq!(early.body["status"], "confirming", "{}", early.body);
    assert_eq!(early.retry_after_s, Some(CONFIRMING_RETRY_S));
    assert!(
        early.body["receipt"]["signature"].is_object(),
        "a signed provisional receipt: {}",
        early.body
    );
    assert_eq!(early.body["receipt"]["receipt"]["status"], "queued");
    let routing = early.routing.clone().unwrap();
    assert!(
        routing.contains("not answered in 50 ms, answering now"),
        "{routing}"
    );
    let order = early.order_id.clone().unwrap();
    // Meanwhile the object sends nothing: the attempt is still out.
    w.obj.alarm(&mut w.acq, w.now);
    assert_eq!(w.charges_of(&order), 1);
    assert_eq!(
        w.acq.forwards, 0,
        "the object must not send the payment while it is out"
    );
    // The acquirer's own answer settles it online, 2.4 s after the checkout started.
    let done = s.done.unwrap();
    let r = done.routing.unwrap();
    assert!(r.contains("; then ") && r.ends_with(" approved"), "{r}");
    let o = w.obj.ledger.order(&order).unwrap();
    assert_eq!(
        o.state,
        OrderState::Forwarded,
        "authorized by the online attempt"
    );
    assert!(w.now - started >= 2_400);
    let auth = w.obj.ledger.auth(o.auth_id.as_deref().unwrap()).unwrap();
    assert_eq!(auth.attempts, 0, "never forwarded by the alarm");
    // The buyer's page asks again with the same key: approved, one charge.
    let again = ask_again(&mut w, "k1", APPROVE);
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body["status"], "approved", "{}", again.body);
    w.obj.alarm(&mut w.acq, w.now + 60_000);
    assert_eq!(w.charges_of(&order), 1);
    // The slot was given back when the buyer was answered; the answer time fed the lane.
    let snap = w.router.snapshot(w.now);
    assert!(snap.lanes.iter().all(|l| l.in_flight == 0), "{snap:?}");
}

#[test]
fn a_decline_found_after_the_confirming_answer_reaches_the_buyer_who_then_pays_with_another_card() {
    let mut w = World::new(10);
    lanes_answered_in(&mut w, 2_000);
    let mut co = Checkout::new(input(&w.ev, "k1", CART, DECLINE, "tok_d", w.now));
    let s = drive_slow(&mut w, &mut co, 1_500, &[AcqFault::None], false);
    let early = s.early.unwrap();
    assert_eq!(early.body["status"], "confirming", "{}", early.body);
    let order = early.order_id.clone().unwrap();
    assert_eq!(
        w.obj.ledger.order(&order).unwrap().state,
        OrderState::Declined
    );
    // Asking again with the same key tells the buyer, while the page is still open.
    let again = ask_again(&mut w, "k1", DECLINE);
    assert_eq!(again.status, 402, "{}", again.body);
    assert_eq!(again.body["status"], "declined", "{}", again.body);
    // Another card is a new intent: approved, charged once; the declined one never.
    let other = w.pay("k2", CART, APPROVE, "tok_b", &[], &[]);
    assert_eq!(other.body["status"], "approved", "{}", other.body);
    assert_eq!(w.charges_of(&order), 0);
    assert_eq!(w.charges_of(other.order_id.as_deref().unwrap()), 1);
}

#[test]
fn a_late_answer_of_unknown_outcome_or_a_dead_worker_leaves_the_payment_to_the_alarm_same_key() {
    for dies in [false, true] {
        let mut w = World::new(10);
        // Healthy lanes, one answer slower than its timeout (2.5 s without samples).
        let mut co = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok_a", w.now));
        let fault = if dies {
            AcqFault::None
        } else {
            AcqFault::ProcessThenReset
        };
        let s = drive_slow(&mut w, &mut co, 6_000, &[fault], dies);
        let by = s.answer_by.expect("an answer time");
        assert!(by >= 1_000, "{by}");
        let early = s.early.expect("answered at the timeout");
        assert_eq!(early.body["status"], "confirming", "{}", early.body);
        let order = early.order_id.clone().unwrap();
        assert_eq!(w.charges_of(&order), 1, "the attempt charged");
        let auth_id = w.obj.ledger.order(&order).unwrap().auth_id.clone().unwrap();
        if dies {
            assert!(s.done.is_none());
            // The object waits for the attempt (30 s), then sends it itself.
            w.obj.alarm(&mut w.acq, w.now + 1_000);
            assert_eq!(w.acq.forwards, 0, "sent while the attempt may be out");
            w.obj.alarm(&mut w.acq, w.now + 31_000);
        } else {
            let r = s.done.unwrap().routing.unwrap();
            assert!(r.contains("; then "), "{r}");
            assert!(w
                .obj
                .ledger
                .auth(&auth_id)
                .unwrap()
                .in_flight_until
                .is_none());
            w.obj.alarm(&mut w.acq, w.now + 60_000);
        }
        assert!(w.acq.forwards >= 1, "the alarm completed it");
        let o = w.obj.ledger.order(&order).unwrap();
        assert_eq!(o.state, OrderState::Forwarded, "dies={dies}");
        assert_eq!(
            w.charges_of(&order),
            1,
            "the same acquirer key: charged once"
        );
    }
}

#[test]
fn a_buyer_who_must_pay_online_hears_pending_while_the_attempt_runs_on() {
    let mut w = World::new(10);
    let mut inp = input(&w.ev, "k1", CART, APPROVE, "tok_a", w.now);
    if let Ok(p) = &mut inp.prepared {
        p.require_online = true;
    }
    let mut co = Checkout::new(inp);
    let s = drive_slow(&mut w, &mut co, 5_000, &[AcqFault::None], false);
    let early = s.early.unwrap();
    assert_eq!(early.status, 202, "{}", early.body);
    assert_eq!(early.body["status"], "pending");
    let order = early.order_id.clone().unwrap();
    assert_eq!(
        w.obj.ledger.order(&order).unwrap().state,
        OrderState::Forwarded
    );
    let again = ask_again(&mut w, "k1", APPROVE);
    assert_eq!(again.body["status"], "approved", "{}", again.body);
    assert_eq!(w.charges_of(&order), 1);
}

#[test]
fn a_late_server_error_is_sent_once_more_with_the_same_key_and_settles_online() {
    for first in [AcqFault::ServerError, AcqFault::ProcessThenReset] {
        let mut w = World::new(10);
        lanes_answered_in(&mut w, 2_000);
        let mut co = Checkout::new(input(&w.ev, "k1", CART, APPROVE, "tok_a", w.now));
        let s = drive_slow(&mut w, &mut co, 2_400, &[first, AcqFault::None], false);
        assert_eq!(s.early.unwrap().body["status"], "confirming");
        let r = s.done.unwrap().routing.unwrap();
        assert!(r.contains(", sending again"), "{r}");
        let order = w.obj.ledger.orders().next().unwrap().order_id.clone();
        let o = w.obj.ledger.order(&order).unwrap();
        assert_eq!(o.state, OrderState::Forwarded, "{first:?}: {r}");
        assert_eq!(w.acq.forwards, 0, "settled by the resend, not by the alarm");
        assert_eq!(w.charges_of(&order), 1, "{first:?}");
    }
}
