//! `POST /v1/events/{id}/checkout`: decodes the request, gathers what the checkout machine
//! needs (the event, its policy, the card and CVC opened in this PoP), drives
//! [`crate::checkout::Checkout`] through its steps (object calls, acquirer calls, the
//! sealing key) and encodes its answer. Every decision is the machine's; this file only
//! performs I/O. The steps run under `wait_until`, so a buyer whose connection drops does
//! not cut a payment off between the acquirer and the ledger.

use super::acquirer_io::{send, NoAnswer};
use super::events::{self, cors_origin, router_with, with_cors};
use super::http::{internal, json, random, Ctx};
use super::object_client as object;
use crate::checkout::outcome::{Sent, Transport};
use crate::checkout::protocol::WireError;
use crate::checkout::request::{self, CheckoutBody, CheckoutKey};
use crate::checkout::{
    Answer, Checkout, CheckoutInput, Note, ObjectCall, ObjectResult, Prepared, Step,
};
use crate::error::ApiError;
use crate::ledger::EventConfig;
use crate::routing::Signals;
use crate::secret::Secret;
use crate::vault;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use worker::{Context, Env, Response};

thread_local! {
    /// Acquirer requests in flight in this isolate (a routing signal).
    static IN_FLIGHT: Cell<u32> = const { Cell::new(0) };
    /// Each event's store-and-forward key, wrapped by the KEK, as its object keeps it.
    static SF_KEYS: RefCell<HashMap<String, (String, i64)>> = RefCell::new(HashMap::new());
}

/// How long an isolate keeps an event's wrapped store-and-forward key.
const SF_KEY_TTL_MS: i64 = 60_000;
/// Most events whose wrapped key an isolate keeps.
const SF_KEYS_MAX: usize = 256;

fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

/// Counts an acquirer request in flight; a cancelled checkout gives its count back too.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        IN_FLIGHT.with(|f| f.set(f.get().saturating_add(1)));
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.with(|f| f.set(f.get().saturating_sub(1)));
    }
}

/// Where one checkout's time went, for its `Server-Timing` header.
#[derive(Default)]
struct Trace {
    event_calls: Cell<u32>,
    event_ms: Cell<i64>,
    acquirer_calls: Cell<u32>,
    acquirer_ms: Cell<i64>,
}

impl Trace {
    fn header(&self, total_ms: i64) -> String {
        let plural = |n: u32| if n == 1 { "call" } else { "calls" };
        format!(
            "event;dur={};desc=\"{} {}\", acquirer;dur={};desc=\"{} {}\", total;dur={}",
            self.event_ms.get(),
            self.event_calls.get(),
            plural(self.event_calls.get()),
            self.acquirer_ms.get(),
            self.acquirer_calls.get(),
            plural(self.acquirer_calls.get()),
            total_ms
        )
    }

    fn event(&self, since: i64) {
        self.event_calls.set(self.event_calls.get() + 1);
        self.event_ms.set(self.event_ms.get() + (now_ms() - since));
    }
}

/// The checkout route.
pub async fn route(
    env: &Env,
    ctx: &Ctx,
    worker_ctx: &Context,
    event_id: &str,
    idem_key: Option<String>,
    origin: Option<String>,
    raw_body: String,
) -> Result<Response, ApiError> {
    let c = object::config(env, event_id, ctx.now_ms).await?;
    let cors = cors_origin(
        crate::origin::OriginRule::CardPages,
        &c,
        origin.as_deref(),
        &ctx.self_origin,
    )?;
    let mut body: CheckoutBody = super::http::parse_json_body(&raw_body)?;
    let key = CheckoutKey::derive(idem_key.as_deref(), random::<12>()?)?;
    // A handover sale: the session and the claim's key, to settle it when the answer is in.
    let handover = body
        .handover_session
        .clone()
        .map(|sid| (sid, key.key.clone()));
    if let Some((sid, _)) = &handover {
        body.items = events::claim_handover(env, event_id, sid, &key).await?;
    }
    let prepared = prepare(env, ctx, &c, &body).await;
    let input = CheckoutInput {
        event: c.clone(),
        key,
        cart: request::cart_fingerprint(&body),
        prepared,
        secrets: lane_secrets(env),
        colo: ctx.colo.clone(),
        now_ms: ctx.now_ms,
        signals: Signals {
            requests_in_flight: IN_FLIGHT.with(|f| f.get()),
            ..Signals::default()
        },
        nonce: random::<12>()?,
    };
    let co = Checkout::new(input);
    // Run the machine under wait_until: the answer comes back through a channel, and the
    // steps go on if the buyer's connection drops (or after the buyer was answered while
    // the acquirer is still answering); so does a handover's settle, so that a dropped
    // buyer does not leave the session `paying`.
    let (tx, rx) = futures_channel::oneshot::channel::<Done>();
    let (env2, ctx2, event2) = (env.clone(), ctx.clone(), event_id.to_string());
    worker_ctx.wait_until(async move {
        let trace = Rc::new(Trace::default());
        let mut buyer = Buyer {
            tx: Some(tx),
            handover,
        };
        let answer = drive(&env2, &ctx2, &event2, co, &trace, &mut buyer).await;
        buyer.answer(&env2, &ctx2, &event2, &trace, answer).await;
    });
    let (answer, timing, settled) = rx.await.map_err(|_| {
        ApiError::new(
            503,
            "temporarily_unavailable",
            "The checkout was interrupted; send the same request again.",
        )
        .retryable()
    })?;
    settled?;
    let mut answer = answer;
    let keys = super::http::receipt_keys(env).ok();
    crate::checkout::status::link(&mut answer, keys.as_ref(), event_id);
    respond(answer, &timing, cors)
}

type Done = (Answer, String, Result<(), ApiError>);

/// Where the buyer's answer goes: once, with the handover's settle before it.
struct Buyer {
    tx: Option<futures_channel::oneshot::Sender<Done>>,
    handover: Option<(String, String)>,
}

impl Buyer {
    async fn answer(&mut self, env: &Env, ctx: &Ctx, event_id: &str, trace: &Trace, a: Answer) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        let settled = match &self.handover {
            Some((sid, order_key)) => {
                events::settle_handover(env, event_id, sid, order_key, &a).await
            }
            None => Ok(()),
        };
        let timing = trace.header(now_ms() - ctx.now_ms);
        let _ = tx.send((a, timing, settled));
    }
}

/// The acquirer request of the last `Step::Authorize`, still running.
type Out = std::pin::Pin<Box<dyn std::future::Future<Output = Sent>>>;

/// Drives the machine to its answer; records its telemetry. A `Step::Answer` goes to the
/// buyer at once, and the machine goes on.
async fn drive(
    env: &Env,
    ctx: &Ctx,
    event_id: &str,
    mut co: Checkout,
    trace: &Trace,
    buyer: &mut Buyer,
) -> Answer {
    // Waits for a permit are bounded by the machine's own deadline, not by this count.
    let mut steps = 0;
    let mut out: Option<Out> = None;
    while steps < 64 {
        let step = match router_with(env, |r| co.poll(r, now_ms())) {
            Ok(s) => s,
            Err(e) => return Answer::error(&e),
        };
        match step {
            Step::Object(call) => {
                let t0 = now_ms();
                let r = object_call(env, event_id, call).await;
                trace.event(t0);
                co.handle_object(r, now_ms());
            }
            Step::SealKey => {
                let k = sf_key(env, event_id, now_ms(), trace).await;
                co.handle_seal_key(k);
            }
            Step::Authorize(a) => {
                let t0 = now_ms();
                let answer_by = a.answer_by_ms;
                let request: Out = Box::pin(async move {
                    let _in_flight = InFlight::enter();
                    transport(send(&a.call, u64::from(a.timeout_ms)).await)
                });
                let sent = match answer_by {
                    None => Some(request.await),
                    Some(ms) => {
                        let by =
                            worker::Delay::from(std::time::Duration::from_millis(u64::from(ms)));
                        match futures_util::future::select(request, by).await {
                            futures_util::future::Either::Left((sent, _)) => Some(sent),
                            futures_util::future::Either::Right(((), still)) => {
                                out = Some(still);
                                None
                            }
                        }
                    }
                };
                let done = now_ms();
                trace.acquirer_calls.set(trace.acquirer_calls.get() + 1);
                trace.acquirer_ms.set(trace.acquirer_ms.get() + (done - t0));
                let fed = match sent {
                    Some(sent) => router_with(env, |r| co.handle_attempt(r, sent, done)),
                    None => router_with(env, |r| co.handle_answer_due(r, done)),
                };
                if let Err(e) = fed {
                    return Answer::error(&e);
                }
            }
            Step::Answer(answer) => {
                record(ctx, event_id, &co, &answer);
                buyer.answer(env, ctx, event_id, trace, answer).await;
            }
            Step::Late => {
                let Some(request) = out.take() else {
                    return crate::checkout::pending(co.order_id(), "");
                };
                let sent = request.await;
                if let Err(e) = router_with(env, |r| co.handle_attempt(r, sent, now_ms())) {
                    return Answer::error(&e);
                }
            }
            Step::Wait { ms } => {
                worker::Delay::from(std::time::Duration::from_millis(u64::from(ms))).await;
                continue;
            }
            Step::Done(answer) => {
                if buyer.tx.is_some() {
                    record(ctx, event_id, &co, &answer);
                }
                return answer;
            }
        }
        steps += 1;
    }
    crate::checkout::pending(co.order_id(), "")
}

/// The transport result in the machine's terms.
fn transport(r: Result<(u16, String), NoAnswer>) -> Sent {
    r.map_err(|e| match e {
        NoAnswer::Timeout => Transport::Timeout,
        NoAnswer::Refused => Transport::Refused,
        NoAnswer::Network => Transport::Lost,
    })
}

fn record(ctx: &Ctx, event_id: &str, co: &Checkout, answer: &Answer) {
    let Some(p) = co.prepared() else {
        return;
    };
    for n in &answer.notes {
        match n {
            Note::Approved { lane } => {
                super::telemetry::approved(ctx, event_id, lane, &p.bundle, &p.quote)
            }
            Note::Declined { lane, reason } => {
                super::telemetry::declined(ctx, event_id, lane, &p.bundle, reason)
            }
            Note::Queued { lane } => {
                super::telemetry::queued(ctx, event_id, lane, &p.bundle, &p.quote)
            }
        }
    }
}

/// One call to the event's object in the machine's terms.
async fn object_call(env: &Env, event_id: &str, req: ObjectCall) -> Result<ObjectResult, ApiError> {
    match req {
        ObjectCall::Begin(b) => object::begin(env, event_id, *b)
            .await
            .map(ObjectResult::Begin),
        ObjectCall::Finish(f) => object::finish(env, event_id, *f)
            .await
            .map(ObjectResult::Finish),
        ObjectCall::Command(cmd) => match object::one(env, event_id, now_ms(), *cmd).await {
            Ok(_) => Ok(ObjectResult::Command(Ok(()))),
            // The ledger refused it (a 4xx that is not "try again"): a typed refusal.
            Err(e) if e.status < 500 && !e.retryable => {
                Ok(ObjectResult::Command(Err(WireError::from(e))))
            }
            Err(e) => Err(e),
        },
    }
}

/// Quote, prompts, card and CVC, fingerprint: no storage writes.
async fn prepare(
    env: &Env,
    ctx: &Ctx,
    c: &EventConfig,
    body: &CheckoutBody,
) -> Result<Prepared, ApiError> {
    let event_id = c.event_id.as_str();
    let bundle = events::bundle_of(env, c, ctx.now_ms).await;
    let quote = request::quote_cart(c, &bundle, &body.items, ctx.now_ms)?;
    request::check_prompts(&quote, &body.buyer)?;
    let binding = super::vault::binding(&c.merchant_id, event_id);
    let card = super::vault::detokenize(env, &body.token, &binding, ctx.now_ms).await?;
    let cvc = match &body.cvc_token {
        Some(cvt) => {
            let key = super::vault::key_for_token(env, cvt, ctx.now_ms).await?;
            Some(
                vault::detokenize_cvc(cvt, &body.token, &binding, |_| key.as_ref(), ctx.now_ms)
                    .map_err(|e| e.to_api())?,
            )
        }
        None => None,
    };
    let keks = super::vault::keks(env)?;
    let fkey = request::fingerprint_key(&keks);
    let fingerprint = request::fingerprint(body, card.number(), fkey.expose());
    let holder = request::card_holder(card.number(), fkey.expose());
    Ok(Prepared {
        bundle,
        quote,
        lines: body.lines(),
        buyer_email: body.buyer.email.clone(),
        admission_ticket: body.admission_ticket.clone(),
        require_online: body.require_online(),
        card,
        cvc,
        fingerprint,
        holder,
    })
}

/// Each lane's API key, by its secret's name.
fn lane_secrets(env: &Env) -> Vec<(String, Secret<String>)> {
    super::acquirer_io::lanes(env)
        .unwrap_or_default()
        .into_iter()
        .map(|l| {
            let s = super::acquirer_io::lane_secret(env, &l);
            (l.secret_name, s)
        })
        .collect()
}

/// The event's store-and-forward key, unwrapped with the KEK (the wrapped form is cached
/// per isolate, so a stored checkout does not cost an extra call to the object).
async fn sf_key(
    env: &Env,
    event_id: &str,
    now: i64,
    trace: &Trace,
) -> Result<Secret<[u8; 32]>, ApiError> {
    let keks = super::vault::keks(env)?;
    let cached = SF_KEYS.with(|m| {
        m.borrow()
            .get(event_id)
            .filter(|(_, at)| now - at < SF_KEY_TTL_MS)
            .map(|(w, _)| w.clone())
    });
    if let Some(wrapped) = cached {
        if let Ok(k) = vault::unwrap_sf_key(&keks, event_id, &wrapped) {
            return Ok(k);
        }
    }
    let t0 = now_ms();
    let wrapped = object::seal_key(env, event_id).await;
    trace.event(t0);
    let wrapped = wrapped?;
    let key = vault::unwrap_sf_key(&keks, event_id, &wrapped).map_err(|e| e.to_api())?;
    SF_KEYS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= SF_KEYS_MAX {
            m.retain(|_, (_, at)| now - *at < SF_KEY_TTL_MS);
        }
        if m.len() < SF_KEYS_MAX {
            m.insert(event_id.to_string(), (wrapped, now));
        }
    });
    Ok(key)
}

fn respond(answer: Answer, timing: &str, cors: Option<String>) -> Result<Response, ApiError> {
    let mut r = json(answer.status, &answer.body)?;
    let h = r.headers_mut();
    if let Some(reason) = &answer.routing {
        h.set("X-Poptill-Routing", reason).map_err(internal)?;
    }
    if answer.replayed {
        h.set("Idempotent-Replayed", "true").map_err(internal)?;
    }
    if let Some(s) = answer.retry_after_s {
        h.set("Retry-After", &s.to_string()).map_err(internal)?;
    }
    h.set("Server-Timing", timing).map_err(internal)?;
    with_cors(r, cors)
}
