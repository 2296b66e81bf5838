#!/usr/bin/env node
// acquirer-sim: a Stripe-compatible acquirer simulator for poptill's dev loop and end-to-end tests.
//
//   node scripts/acquirer-sim.mjs --port P [--lanes fast,cheap] [--seed N] [--key sk_test_x] [--log]
//
// Prints exactly one line, `acquirer-sim listening on http://127.0.0.1:P`, once ready (with
// `--port 0` the line carries the port the system chose). Exits 0 on SIGINT / SIGTERM.
// Plain Node.js 20, no npm dependencies. Listens on 127.0.0.1 only.
//
// Stripe subset, per lane (`/lanes/{lane}/v1/...`; `/v1/...` is lane "default"):
//   POST /v1/payment_intents              amount, currency, confirm, capture_method,
//                                         payment_method_data[type]=card,
//                                         payment_method_data[card][number|exp_month|exp_year|cvc],
//                                         metadata[...], description
//   GET  /v1/payment_intents/{id}         (expand[]=latest_charge)
//   POST /v1/payment_intents/{id}/capture (amount_to_capture optional)
//   POST /v1/payment_intents/{id}/cancel
//   GET  /v1/payment_intents              limit, starting_after, ending_before,
//                                         created | created[gt|gte|lt|lte] (Unix seconds),
//                                         expand[]=data.latest_charge (charge has amount_refunded)
//   POST /v1/refunds                      payment_intent | charge, amount optional, reason, metadata
//   GET  /v1/refunds                      limit, starting_after, ending_before, payment_intent
//   GET  /v1/charges, GET /v1/charges/{id}
// Bodies are application/x-www-form-urlencoded with Stripe's bracketed nested keys; every
// request needs `Authorization: Bearer sk_test_...` (or exactly --key when given).
// POSTs honour `Idempotency-Key` per lane: same key and parameters replay the stored answer
// with `Idempotent-Replayed: true`; same key with other parameters is 400 idempotency_error.
// Validation errors (400) are not stored, as at Stripe; declines (402) are.
//
// Control API (not Stripe; JSON; not subject to faults or auth):
//   POST /control/lanes/{lane}  {latency_ms: {p50, p95} | {fixed} | null, error_rate: 0..1,
//                                error_mode: "before" | "after", partition: "none"|"refuse"|"hang"}
//        error_mode "before" (default): the fault happens before the API runs (nothing stored);
//        "after": the API runs and its result is stored under the idempotency key, but the
//        client gets the 500/503 (a lost response: a retry with the same key replays it).
//        partition "refuse" destroys the connection at once; "hang" holds requests until the
//        partition is lifted (then they are served) or the client gives up.
//                               {reset_rate: 0..1, reset_point: "before_response" | "mid_body"}
//        processed, then reset: the API runs (a charge is made and its answer stored under
//        the idempotency key) and the connection is then reset, before any byte of the
//        answer ("before_response", default) or after the status line, the headers (with the
//        full Content-Length) and half of the body ("mid_body").
//                               {processing_rate: 0..1, processing_ms: 0..120000 (2000)}
//        a confirmed PaymentIntent answers 200 with status "processing" (its charge
//        "pending"); processing_ms after it was handled it takes the card's real outcome
//        (succeeded, requires_capture, or requires_payment_method with last_payment_error),
//        which GET /v1/payment_intents/{id} and the lists show. A replay with the same
//        Idempotency-Key still answers the stored "processing" answer, as Stripe does.
//                               {malformed_rate: 0..1, malformed_body: "garbage" | "truncated"}
//        a 2xx answer of the API (its charge made, its real answer stored under the key) is
//        sent as a 200 whose body is not JSON ("garbage", default: a proxy's HTML page) or
//        the real JSON cut in half with a matching Content-Length ("truncated").
//        Reset and malformed apply to requests that reached the API (replays included); all
//        rates default to 0, and a rate of 0 draws nothing from the seeded PRNG.
//   GET  /control/lanes/{lane}, GET /control/lanes
//   GET  /control/stats   per lane: requests, charges_created, charges_succeeded, declines,
//                         captures, refunds, amounts, faults (5xx of error_rate), resets,
//                         malformed, processing (answers of each of those modes),
//                         by_idempotency_key {key: distinct charges}, by_order_id {order_id:
//                         successful charges} (a processing charge counts once it succeeds)
//   POST /control/reset   forgets all charges, refunds, keys, stats and lane settings.
//   POST /control/lanes/{lane}/misroute  {status: 300..599 | null}: every API request on the
//        lane gets that status with a web server's HTML page and is not processed (a lane
//        base_url that points at the wrong place); null lifts it.
// A request is handled when it arrives and its answer is sent after the sampled latency, so a
// client that times out may still have charged the card (as in the real world).
// Latency: log-normal with median p50 and 95th percentile p95, from a seedable PRNG (--seed).
// Card numbers are never logged or stored: a charge keeps brand, last4 and expiry only.

import http from "node:http";
import crypto from "node:crypto";
import fs from "node:fs";
import { fileURLToPath } from "node:url";

// ---------------------------------------------------------------------------------------------
// Command line

function parseArgs(argv) {
  const opts = { port: 0, lanes: null, seed: null, key: null, log: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--port") opts.port = Number(next());
    else if (a === "--lanes") opts.lanes = next().split(",").map((s) => s.trim()).filter(Boolean);
    else if (a === "--seed") opts.seed = Number(next());
    else if (a === "--key") opts.key = next();
    else if (a === "--log") opts.log = true;
    else if (a === "--help" || a === "-h") {
      process.stdout.write(
        "usage: node scripts/acquirer-sim.mjs --port P [--lanes a,b] [--seed N] [--key sk_test_x] [--log]\n",
      );
      process.exit(0);
    } else fail(`unknown argument ${a}`);
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) fail("--port must be 0..65535");
  if (opts.seed !== null && !Number.isFinite(opts.seed)) fail("--seed must be a number");
  if (opts.lanes) for (const l of opts.lanes) if (!LANE_NAME.test(l)) fail(`bad lane name ${l}`);
  return opts;
}

function fail(msg) {
  process.stderr.write(`acquirer-sim: ${msg}\n`);
  process.exit(2);
}

const LANE_NAME = /^[A-Za-z0-9_-]{1,40}$/;

// ---------------------------------------------------------------------------------------------
// Seedable PRNG (sfc32) and log-normal sampling

export function makeRng(seed) {
  let a = 0x9e3779b9,
    b = 0x243f6a88,
    c = 0xb7e15162,
    d = seed >>> 0;
  const next = () => {
    a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0;
    let t = (a + b) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    d = (d + 1) | 0;
    t = (t + d) | 0;
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
  for (let i = 0; i < 16; i++) next();
  return next;
}

const Z95 = 1.6448536269514722; // standard normal quantile at 0.95

export function sampleLatency(rng, latency) {
  if (!latency) return 0;
  if (latency.fixed !== undefined) return latency.fixed;
  const mu = Math.log(Math.max(latency.p50, 0.001));
  const sigma = Math.max(0, (Math.log(Math.max(latency.p95, 0.001)) - mu) / Z95);
  // Box-Muller
  const u1 = Math.max(rng(), 1e-12);
  const u2 = rng();
  const z = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  return Math.min(Math.exp(mu + sigma * z), 120_000);
}

// ---------------------------------------------------------------------------------------------
// Form decoding with Stripe's bracketed keys: a[b][c]=v, a[]=v, a[0]=v

export function parseForm(text) {
  const out = {};
  for (const [key, value] of new URLSearchParams(text)) {
    const m = /^([^[\]]+)((?:\[[^[\]]*\])*)$/.exec(key);
    if (!m) continue;
    const path = [m[1], ...[...m[2].matchAll(/\[([^[\]]*)\]/g)].map((x) => x[1])];
    let node = out;
    for (let i = 0; i < path.length; i++) {
      const seg = path[i];
      const last = i === path.length - 1;
      if (seg === "" || /^\d+$/.test(seg)) {
        // array segment: treat the parent as an array
        if (!Array.isArray(node.__arr)) node.__arr = [];
        if (last) node.__arr.push(value);
        else {
          const child = {};
          node.__arr.push(child);
          node = child;
        }
        continue;
      }
      if (last) node[seg] = value;
      else {
        if (typeof node[seg] !== "object" || node[seg] === null) node[seg] = {};
        node = node[seg];
      }
    }
  }
  return unArray(out);
}

function unArray(node) {
  if (typeof node !== "object" || node === null) return node;
  if (Array.isArray(node.__arr)) return node.__arr.map(unArray);
  const o = {};
  for (const [k, v] of Object.entries(node)) o[k] = unArray(v);
  return o;
}

function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object")
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`)
      .join(",")}}`;
  return JSON.stringify(value);
}

// The idempotency fingerprint is a keyed hash, so no card number is kept even as a plain hash.
const FINGERPRINT_KEY = crypto.randomBytes(32);
function fingerprint(method, path, params) {
  return crypto.createHmac("sha256", FINGERPRINT_KEY).update(`${method} ${path} ${canonical(params)}`).digest("hex");
}

// ---------------------------------------------------------------------------------------------
// Cards

const TEST_CARDS = {
  "4000000000000002": { code: "card_declined", decline_code: "generic_decline", message: "Your card was declined." },
  "4000000000009995": { code: "card_declined", decline_code: "insufficient_funds", message: "Your card has insufficient funds." },
  "4000000000009987": { code: "card_declined", decline_code: "lost_card", message: "Your card was declined." },
  "4000000000009979": { code: "card_declined", decline_code: "stolen_card", message: "Your card was declined." },
  "4100000000000019": { code: "card_declined", decline_code: "fraudulent", message: "Your card was declined." },
  "4000000000000069": { code: "expired_card", decline_code: "expired_card", message: "Your card has expired." },
  "4000000000000127": { code: "incorrect_cvc", decline_code: "incorrect_cvc", message: "Your card's security code is incorrect." },
  "4000000000000119": { code: "processing_error", decline_code: "processing_error", message: "An error occurred while processing your card. Try again in a little bit." },
};

function luhnValid(number) {
  let sum = 0;
  let dbl = false;
  for (let i = number.length - 1; i >= 0; i--) {
    let d = number.charCodeAt(i) - 48;
    if (dbl) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    dbl = !dbl;
  }
  return sum % 10 === 0;
}

function brandOf(n) {
  if (/^4/.test(n)) return "visa";
  if (/^(5[1-5]|2(2[2-9]|[3-6]\d|7[01]|720))/.test(n)) return "mastercard";
  if (/^3[47]/.test(n)) return "amex";
  if (/^(6011|65|64[4-9])/.test(n)) return "discover";
  if (/^35(2[89]|[3-8])/.test(n)) return "jcb";
  if (/^3(0[0-5]|[68])/.test(n)) return "diners";
  if (/^62/.test(n)) return "unionpay";
  return "unknown";
}

// ---------------------------------------------------------------------------------------------
// Errors in Stripe's shape

class StripeError extends Error {
  constructor(status, type, message, extra = {}) {
    super(message);
    this.status = status;
    this.body = { error: { type, message, ...extra } };
  }
}

const invalid = (message, extra) => new StripeError(400, "invalid_request_error", message, extra);
const missing = (kind, id) =>
  new StripeError(404, "invalid_request_error", `No such ${kind}: '${id}'`, { code: "resource_missing", param: "id" });

// ---------------------------------------------------------------------------------------------
// State

const now = () => Math.floor(Date.now() / 1000);
const ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
function newId(prefix) {
  const bytes = crypto.randomBytes(24);
  let s = "";
  for (const b of bytes) s += ALNUM[b % ALNUM.length];
  return `${prefix}_${s}`;
}

function defaultConfig() {
  return {
    latency_ms: null,
    error_rate: 0,
    error_mode: "before",
    partition: "none",
    reset_rate: 0,
    reset_point: "before_response",
    processing_rate: 0,
    processing_ms: 2000,
    malformed_rate: 0,
    malformed_body: "garbage",
  };
}

function newLane(name) {
  return {
    name,
    config: defaultConfig(),
    intents: new Map(), // id -> PaymentIntent (with private fields prefixed by _)
    intentOrder: [],
    charges: new Map(),
    chargeOrder: [],
    refunds: new Map(),
    refundOrder: [],
    idempotency: new Map(), // key -> { fp, status, body }
    held: new Set(), // requests waiting for a "hang" partition to end
    stats: {
      requests: 0,
      charges_created: 0,
      charges_succeeded: 0,
      declines: 0,
      captures: 0,
      refunds: 0,
      amount_captured: 0,
      amount_refunded: 0,
      faults: 0,
      resets: 0,
      malformed: 0,
      processing: 0,
      idempotent_replays: 0,
      by_idempotency_key: {},
      by_order_id: {},
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Stripe API handlers (synchronous: each runs to completion when a request is handled)

function parseAmount(value, param) {
  if (value === undefined) throw invalid(`Missing required param: ${param}.`, { code: "parameter_missing", param });
  if (typeof value !== "string" || !/^\d{1,12}$/.test(value))
    throw invalid(`Invalid integer: ${typeof value === "string" ? value : "(object)"}`, {
      code: "parameter_invalid_integer",
      param,
    });
  const n = Number(value);
  if (n < 1) throw invalid("Amount must be at least 1.", { code: "amount_too_small", param });
  if (n > 99_999_999) throw invalid("Amount must be no more than 99999999.", { code: "amount_too_large", param });
  return n;
}

function metadataOf(params) {
  const md = params.metadata;
  if (md === undefined || md === "") return {};
  if (typeof md !== "object" || Array.isArray(md)) throw invalid("Invalid object", { code: "parameter_invalid_object", param: "metadata" });
  const out = {};
  for (const [k, v] of Object.entries(md)) {
    if (typeof v !== "string") throw invalid("Invalid metadata value", { param: `metadata[${k}]` });
    if (k.length > 40 || v.length > 500) throw invalid("Metadata keys are at most 40 characters and values at most 500.", { param: `metadata[${k}]` });
    out[k] = v;
  }
  return out;
}

function publicIntent(lane, pi, expand) {
  const { _order_id, ...rest } = pi;
  const out = { ...rest };
  if (expand && pi.latest_charge) out.latest_charge = lane.charges.get(pi.latest_charge) ?? pi.latest_charge;
  return out;
}

function createPaymentIntent(lane, params, idemKey, processing) {
  const amount = parseAmount(params.amount, "amount");
  const currency = params.currency;
  if (typeof currency !== "string" || currency === "")
    throw invalid("Missing required param: currency.", { code: "parameter_missing", param: "currency" });
  if (!/^[A-Za-z]{3}$/.test(currency)) throw invalid(`Invalid currency: ${currency}.`, { code: "parameter_invalid_string", param: "currency" });
  const captureMethod = params.capture_method ?? "automatic";
  if (!["automatic", "automatic_async", "manual"].includes(captureMethod))
    throw invalid(`Invalid capture_method: must be one of automatic, automatic_async, or manual`, {
      code: "parameter_invalid_string",
      param: "capture_method",
    });
  const confirm = params.confirm === "true";
  const metadata = metadataOf(params);
  const pmd = params.payment_method_data;
  let card = null;
  if (pmd !== undefined) {
    if (typeof pmd !== "object" || pmd.type !== "card")
      throw invalid("payment_method_data[type] must be card.", { code: "parameter_invalid_string", param: "payment_method_data[type]" });
    const c = pmd.card ?? {};
    const number = typeof c.number === "string" ? c.number.replace(/[ -]/g, "") : "";
    if (number === "") throw invalid("Missing required param: payment_method_data[card][number].", { code: "parameter_missing", param: "payment_method_data[card][number]" });
    const expMonth = Number(c.exp_month);
    const expYearRaw = Number(c.exp_year);
    if (!Number.isInteger(expMonth) || expMonth < 1 || expMonth > 12)
      throw new StripeError(402, "card_error", "Your card's expiration month is invalid.", { code: "invalid_expiry_month", param: "exp_month" });
    if (!Number.isInteger(expYearRaw) || expYearRaw < 0)
      throw new StripeError(402, "card_error", "Your card's expiration year is invalid.", { code: "invalid_expiry_year", param: "exp_year" });
    const expYear = expYearRaw < 100 ? 2000 + expYearRaw : expYearRaw;
    const cvc = typeof c.cvc === "string" ? c.cvc : null;
    if (!/^\d{12,19}$/.test(number) || !luhnValid(number))
      throw new StripeError(402, "card_error", "Your card number is incorrect.", { code: "incorrect_number", param: "number" });
    if (cvc !== null && !/^\d{3,4}$/.test(cvc))
      throw new StripeError(402, "card_error", "Your card's security code is invalid.", { code: "invalid_cvc", param: "cvc" });
    const today = new Date();
    if (expYear < today.getUTCFullYear() || (expYear === today.getUTCFullYear() && expMonth < today.getUTCMonth() + 1))
      throw new StripeError(402, "card_error", "Your card's expiration year is invalid.", { code: "invalid_expiry_year", param: "exp_year" });
    // From here on only the outcome, brand, last4 and expiry are kept.
    card = { brand: brandOf(number), last4: number.slice(-4), exp_month: expMonth, exp_year: expYear, decline: TEST_CARDS[number] ?? null };
  }

  const id = newId("pi");
  const pi = {
    id,
    object: "payment_intent",
    amount,
    amount_capturable: 0,
    amount_received: 0,
    capture_method: captureMethod,
    client_secret: `${id}_secret_${newId("s").slice(2, 26)}`,
    confirmation_method: "automatic",
    created: now(),
    currency: currency.toLowerCase(),
    description: typeof params.description === "string" ? params.description : null,
    last_payment_error: null,
    latest_charge: null,
    livemode: false,
    metadata,
    payment_method: null,
    payment_method_types: ["card"],
    status: card ? "requires_confirmation" : "requires_payment_method",
    _order_id: metadata.order_id ?? null,
  };
  lane.intents.set(id, pi);
  lane.intentOrder.push(id);

  if (!confirm || !card) return { status: 200, body: publicIntent(lane, pi) };

  // Confirm: one charge attempt.
  lane.stats.charges_created += 1;
  if (idemKey) lane.stats.by_idempotency_key[idemKey] = (lane.stats.by_idempotency_key[idemKey] ?? 0) + 1;
  const pmId = newId("pm");
  pi.payment_method = pmId;
  const chId = newId("ch");
  const charge = {
    id: chId,
    object: "charge",
    amount,
    amount_captured: 0,
    amount_refunded: 0,
    captured: false,
    created: now(),
    currency: pi.currency,
    failure_code: null,
    failure_message: null,
    livemode: false,
    metadata,
    outcome: null,
    paid: false,
    payment_intent: id,
    payment_method: pmId,
    payment_method_details: { type: "card", card: { brand: card.brand, last4: card.last4, exp_month: card.exp_month, exp_year: card.exp_year } },
    refunded: false,
    status: "pending",
  };
  lane.charges.set(chId, charge);
  lane.chargeOrder.push(chId);
  pi.latest_charge = chId;

  if (processing) {
    // The answer says "processing"; the card's real outcome comes later.
    lane.stats.processing += 1;
    pi.status = "processing";
    processing.after(() => settleCharge(lane, pi, charge, card, captureMethod));
    return { status: 200, body: publicIntent(lane, pi) };
  }
  const err = settleCharge(lane, pi, charge, card, captureMethod);
  if (err) throw err;
  return { status: 200, body: publicIntent(lane, pi) };
}

// Gives a charge attempt the card's outcome (at once, or when a "processing" intent ends).
// Returns the 402 card_error a synchronous answer throws for a decline, or null.
function settleCharge(lane, pi, charge, card, captureMethod) {
  const declined = card.decline;
  const { amount } = pi;
  charge.failure_code = declined ? declined.code : null;
  charge.failure_message = declined ? declined.message : null;
  charge.outcome = declined
    ? { network_status: "declined_by_network", reason: declined.decline_code, type: declined.decline_code === "fraudulent" ? "blocked" : "issuer_declined", seller_message: "The bank did not return any further details with this decline." }
    : { network_status: "approved_by_network", reason: null, type: "authorized", seller_message: "Payment complete." };
  charge.paid = !declined;
  charge.status = declined ? "failed" : "succeeded";

  if (declined) {
    lane.stats.declines += 1;
    const pmId = pi.payment_method;
    pi.status = "requires_payment_method";
    pi.payment_method = null;
    pi.last_payment_error = {
      type: "card_error",
      code: declined.code,
      decline_code: declined.decline_code,
      message: declined.message,
      charge: charge.id,
      doc_url: `https://stripe.com/docs/error-codes/${declined.code.replace(/_/g, "-")}`,
      payment_method: { id: pmId, object: "payment_method", type: "card", card: { brand: card.brand, last4: card.last4, exp_month: card.exp_month, exp_year: card.exp_year } },
    };
    const err = new StripeError(402, "card_error", declined.message, {
      code: declined.code,
      decline_code: declined.decline_code,
      charge: charge.id,
      doc_url: pi.last_payment_error.doc_url,
      payment_intent: publicIntent(lane, pi),
    });
    err.stored = true; // declines are stored for idempotent replay
    return err;
  }

  lane.stats.charges_succeeded += 1;
  if (pi._order_id !== null) lane.stats.by_order_id[pi._order_id] = (lane.stats.by_order_id[pi._order_id] ?? 0) + 1;
  if (captureMethod === "manual") {
    pi.status = "requires_capture";
    pi.amount_capturable = amount;
  } else {
    pi.status = "succeeded";
    pi.amount_received = amount;
    charge.captured = true;
    charge.amount_captured = amount;
    lane.stats.amount_captured += amount;
  }
  return null;
}

function getIntent(lane, id) {
  const pi = lane.intents.get(id);
  if (!pi) throw missing("payment_intent", id);
  return pi;
}

function capturePaymentIntent(lane, id, params) {
  const pi = getIntent(lane, id);
  if (pi.status !== "requires_capture")
    throw invalid(`This PaymentIntent could not be captured because it has a status of ${pi.status}. Only a PaymentIntent with one of the following statuses may be captured: requires_capture.`, {
      code: "payment_intent_unexpected_state",
      payment_intent: publicIntent(lane, pi),
    });
  const amount = params.amount_to_capture !== undefined ? parseAmount(params.amount_to_capture, "amount_to_capture") : pi.amount_capturable;
  if (amount > pi.amount_capturable)
    throw invalid("The amount to capture is larger than the capturable amount.", { code: "amount_too_large", param: "amount_to_capture" });
  pi.status = "succeeded";
  pi.amount_received = amount;
  pi.amount_capturable = 0;
  const ch = lane.charges.get(pi.latest_charge);
  if (ch) {
    ch.captured = true;
    ch.amount_captured = amount;
    // An uncaptured remainder is released, which Stripe shows as a refund of the difference.
    ch.amount_refunded = pi.amount - amount;
  }
  lane.stats.captures += 1;
  lane.stats.amount_captured += amount;
  return { status: 200, body: publicIntent(lane, pi) };
}

function cancelPaymentIntent(lane, id) {
  const pi = getIntent(lane, id);
  if (!["requires_payment_method", "requires_capture", "requires_confirmation", "requires_action"].includes(pi.status))
    throw invalid(`You cannot cancel this PaymentIntent because it has a status of ${pi.status}.`, {
      code: "payment_intent_unexpected_state",
    });
  pi.status = "canceled";
  pi.canceled_at = now();
  pi.cancellation_reason = "requested_by_customer";
  pi.amount_capturable = 0;
  const ch = lane.charges.get(pi.latest_charge);
  if (ch && ch.status === "succeeded" && !ch.captured) {
    ch.amount_refunded = ch.amount;
    ch.refunded = true;
  }
  return { status: 200, body: publicIntent(lane, pi) };
}

function createRefund(lane, params) {
  let pi = null;
  if (typeof params.payment_intent === "string") pi = getIntent(lane, params.payment_intent);
  else if (typeof params.charge === "string") {
    const ch = lane.charges.get(params.charge);
    if (!ch) throw missing("charge", params.charge);
    pi = lane.intents.get(ch.payment_intent);
  } else throw invalid("One of the following params should be provided for this request: payment_intent or charge.", { code: "parameter_missing" });
  const ch = pi && lane.charges.get(pi.latest_charge);
  if (!pi || !ch || pi.status !== "succeeded")
    throw invalid(`This PaymentIntent does not have a successful charge to refund.`, { code: "charge_not_refundable" });
  const left = ch.amount_captured - ch.amount_refunded;
  if (left <= 0) throw invalid(`Charge ${ch.id} has already been refunded.`, { code: "charge_already_refunded" });
  const amount = params.amount !== undefined ? parseAmount(params.amount, "amount") : left;
  if (amount > left)
    throw invalid(`Refund amount (${amount}) is greater than unrefunded amount on charge (${left})`, { code: "amount_too_large", param: "amount" });
  const reason = params.reason;
  if (reason !== undefined && !["duplicate", "fraudulent", "requested_by_customer"].includes(reason))
    throw invalid("Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer", { code: "parameter_invalid_string", param: "reason" });
  ch.amount_refunded += amount;
  ch.refunded = ch.amount_refunded >= ch.amount_captured;
  const re = {
    id: newId("re"),
    object: "refund",
    amount,
    charge: ch.id,
    created: now(),
    currency: pi.currency,
    metadata: metadataOf(params),
    payment_intent: pi.id,
    reason: reason ?? null,
    status: "succeeded",
  };
  lane.refunds.set(re.id, re);
  lane.refundOrder.push(re.id);
  lane.stats.refunds += 1;
  lane.stats.amount_refunded += amount;
  return { status: 200, body: re };
}

// Stripe lists are newest first; starting_after / ending_before take an object id.
function list(url, ids, lookup, query, kind, map = (x) => x) {
  let limit = 10;
  if (query.limit !== undefined) {
    limit = Number(query.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 100)
      throw invalid("Invalid limit: must be an integer between 1 and 100", { code: "parameter_invalid_integer", param: "limit" });
  }
  const newestFirst = [...ids].reverse();
  let start = 0;
  let end = newestFirst.length;
  if (typeof query.starting_after === "string") {
    const i = newestFirst.indexOf(query.starting_after);
    if (i < 0) throw invalid(`No such ${kind}: '${query.starting_after}'`, { code: "resource_missing", param: "starting_after" });
    start = i + 1;
  }
  if (typeof query.ending_before === "string") {
    const i = newestFirst.indexOf(query.ending_before);
    if (i < 0) throw invalid(`No such ${kind}: '${query.ending_before}'`, { code: "resource_missing", param: "ending_before" });
    end = i;
    start = Math.max(start, end - limit);
  }
  const slice = newestFirst.slice(start, end);
  const page = slice.slice(0, limit);
  return {
    status: 200,
    body: { object: "list", data: page.map((id) => map(lookup(id))), has_more: slice.length > page.length || (query.ending_before !== undefined && start > 0), url },
  };
}

// Stripe's `created` list filter: created=T, or created[gt|gte|lt|lte]=T (Unix seconds).
function createdFilter(created, createdOf) {
  if (created === undefined) return () => true;
  const bounds = typeof created === "object" && created !== null ? created : { eq: created };
  const checks = [];
  for (const [op, v] of Object.entries(bounds)) {
    const t = Number(v);
    if (!["eq", "gt", "gte", "lt", "lte"].includes(op) || typeof v !== "string" || !/^\d+$/.test(v))
      throw invalid(`Invalid created filter: created${op === "eq" ? "" : `[${op}]`} must be a Unix timestamp`, { code: "parameter_invalid_integer", param: "created" });
    checks.push({ eq: (c) => c === t, gt: (c) => c > t, gte: (c) => c >= t, lt: (c) => c < t, lte: (c) => c <= t }[op]);
  }
  return (id) => checks.every((f) => f(createdOf(id)));
}

function expandList(query) {
  const e = query.expand;
  return Array.isArray(e) ? e : typeof e === "string" ? [e] : [];
}

function routeStripe(lane, method, path, params, query, idemKey, processing = null) {
  const seg = path.split("/").filter(Boolean); // ["v1", ...]
  if (seg[0] !== "v1") throw new StripeError(404, "invalid_request_error", `Unrecognized request URL (${method}: ${path}).`);
  const [, res, id, action] = seg;
  if (res === "payment_intents") {
    if (method === "POST" && seg.length === 2) return createPaymentIntent(lane, params, idemKey, processing);
    if (method === "GET" && seg.length === 2) {
      const expand = expandList(query).includes("data.latest_charge");
      const ids = lane.intentOrder.filter(createdFilter(query.created, (i) => lane.intents.get(i).created));
      return list("/v1/payment_intents", ids, (i) => lane.intents.get(i), query, "payment_intent", (pi) => publicIntent(lane, pi, expand));
    }
    if (method === "GET" && seg.length === 3)
      return { status: 200, body: publicIntent(lane, getIntent(lane, id), expandList(query).includes("latest_charge")) };
    if (method === "POST" && seg.length === 4 && action === "capture") return capturePaymentIntent(lane, id, params);
    if (method === "POST" && seg.length === 4 && action === "cancel") return cancelPaymentIntent(lane, id);
  } else if (res === "refunds") {
    if (method === "POST" && seg.length === 2) return createRefund(lane, params);
    if (method === "GET" && seg.length === 2) {
      let ids = lane.refundOrder;
      if (typeof query.payment_intent === "string") ids = ids.filter((r) => lane.refunds.get(r).payment_intent === query.payment_intent);
      return list("/v1/refunds", ids, (i) => lane.refunds.get(i), query, "refund");
    }
    if (method === "GET" && seg.length === 3) {
      const re = lane.refunds.get(id);
      if (!re) throw missing("refund", id);
      return { status: 200, body: re };
    }
  } else if (res === "charges") {
    if (method === "GET" && seg.length === 2) {
      let ids = lane.chargeOrder;
      if (typeof query.payment_intent === "string") ids = ids.filter((c) => lane.charges.get(c).payment_intent === query.payment_intent);
      return list("/v1/charges", ids, (i) => lane.charges.get(i), query, "charge");
    }
    if (method === "GET" && seg.length === 3) {
      const ch = lane.charges.get(id);
      if (!ch) throw missing("charge", id);
      return { status: 200, body: ch };
    }
  }
  throw new StripeError(404, "invalid_request_error", `Unrecognized request URL (${method}: ${path}).`);
}

// ---------------------------------------------------------------------------------------------
// Server

export function createSimulator(opts) {
  const lanes = new Map();
  const timers = new Set();
  let rng = makeRng(opts.seed ?? crypto.randomBytes(4).readUInt32LE(0));
  const allowed = opts.lanes ? new Set(opts.lanes) : null;
  if (allowed) for (const l of allowed) lanes.set(l, newLane(l));

  function laneFor(name) {
    if (!LANE_NAME.test(name)) return null;
    if (allowed && !allowed.has(name)) return null;
    if (!lanes.has(name)) lanes.set(name, newLane(name));
    return lanes.get(name);
  }

  function log(line) {
    if (opts.log) process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  }

  function send(res, status, body, headers = {}) {
    if (res.writableEnded || res.destroyed) return;
    const text = JSON.stringify(body, null, 2);
    res.writeHead(status, {
      "Content-Type": "application/json",
      "Content-Length": Buffer.byteLength(text),
      "Request-Id": newId("req"),
      ...headers,
    });
    res.end(text);
  }

  // A transport fault on an answer the API produced: the charge (if any) is made and the real
  // answer is stored under the idempotency key; the client gets a reset or a broken body.
  function sendBroken(lane, req, res, status, body, headers, fault) {
    if (res.writableEnded || res.destroyed) return;
    const text = JSON.stringify(body, null, 2);
    const common = { "Content-Type": "application/json", "Request-Id": newId("req"), ...headers };
    const reset = () => (typeof req.socket.resetAndDestroy === "function" ? req.socket.resetAndDestroy() : req.socket.destroy());
    if (fault === "before_response") return reset();
    if (fault === "mid_body") {
      const bytes = Buffer.from(text);
      res.writeHead(status, { ...common, "Content-Length": bytes.length });
      // The client has the status line and headers; the body stops part way (a plain close,
      // so what was sent is not discarded by a reset).
      res.write(bytes.subarray(0, Math.floor(bytes.length / 2)), () => req.socket.destroy());
      return;
    }
    const broken =
      fault === "truncated"
        ? Buffer.from(text).subarray(0, Math.floor(Buffer.byteLength(text) / 2))
        : Buffer.from("<html><head><title>200 OK</title></head><body><p>The upstream answer could not be relayed.</p></body></html>\n");
    res.writeHead(200, { ...common, "Content-Length": broken.length });
    res.end(broken);
  }

  function later(ms, fn) {
    if (ms <= 0) return fn();
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    timers.add(t);
  }

  // ---- control API
  function control(req, res, path, bodyText) {
    const seg = path.split("/").filter(Boolean); // ["control", ...]
    const json = (status, body) => send(res, status, body);
    if (req.method === "POST" && seg[1] === "reset" && seg.length === 2) {
      for (const lane of lanes.values()) for (const h of lane.held) h.drop();
      lanes.clear();
      if (allowed) for (const l of allowed) lanes.set(l, newLane(l));
      if (opts.seed !== null && opts.seed !== undefined) rng = makeRng(opts.seed);
      return json(200, { ok: true });
    }
    if (req.method === "GET" && seg[1] === "stats" && seg.length === 2) {
      const out = {};
      for (const [name, lane] of lanes) out[name] = lane.stats;
      return json(200, { lanes: out });
    }
    if (seg[1] === "lanes" && seg.length === 2 && req.method === "GET") {
      const out = {};
      for (const [name, lane] of lanes) out[name] = lane.config;
      return json(200, { lanes: out });
    }
    if (req.method === "POST" && seg[1] === "lanes" && seg.length === 4 && seg[3] === "misroute") {
      const lane = laneFor(seg[2]);
      if (!lane) return json(404, { error: { type: "invalid_request_error", message: `No lane named ${seg[2]}.` } });
      let status;
      try {
        status = JSON.parse(bodyText || "{}").status ?? null;
      } catch {
        return json(400, { error: { type: "invalid_request_error", message: "The body is not valid JSON." } });
      }
      if (status !== null && !(Number.isInteger(status) && status >= 300 && status <= 599))
        return json(400, { error: { type: "invalid_request_error", message: "status must be null or an integer from 300 to 599." } });
      lane.misroute = status;
      return json(200, { misroute: status });
    }
    if (seg[1] === "lanes" && seg.length === 3) {
      const lane = laneFor(seg[2]);
      if (!lane) return json(404, { error: { type: "invalid_request_error", message: `No lane named ${seg[2]}.` } });
      if (req.method === "GET") return json(200, lane.config);
      if (req.method === "POST") {
        let patch;
        try {
          patch = bodyText.trim() === "" ? {} : JSON.parse(bodyText);
        } catch {
          return json(400, { error: { type: "invalid_request_error", message: "The body is not valid JSON." } });
        }
        const problem = applyConfig(lane, patch);
        if (problem) return json(400, { error: { type: "invalid_request_error", message: problem } });
        return json(200, lane.config);
      }
    }
    return json(404, { error: { type: "invalid_request_error", message: `Unrecognized control URL (${req.method}: ${path}).` } });
  }

  function applyConfig(lane, patch) {
    if (typeof patch !== "object" || patch === null || Array.isArray(patch)) return "The body must be a JSON object.";
    const next = { ...lane.config };
    for (const [k, v] of Object.entries(patch)) {
      if (k === "latency_ms") {
        if (v === null) next.latency_ms = null;
        else if (typeof v === "object" && typeof v.fixed === "number" && v.fixed >= 0 && v.fixed <= 120_000) next.latency_ms = { fixed: v.fixed };
        else if (typeof v === "object" && typeof v.p50 === "number" && typeof v.p95 === "number" && v.p50 > 0 && v.p95 >= v.p50 && v.p95 <= 120_000)
          next.latency_ms = { p50: v.p50, p95: v.p95 };
        else return "latency_ms must be null, {fixed: ms} or {p50: ms, p95: ms} with 0 < p50 <= p95 <= 120000.";
      } else if (k === "error_rate") {
        if (typeof v !== "number" || !(v >= 0 && v <= 1)) return "error_rate must be a number from 0 to 1.";
        next.error_rate = v;
      } else if (k === "error_mode") {
        if (v !== "before" && v !== "after") return 'error_mode must be "before" or "after".';
        next.error_mode = v;
      } else if (k === "partition") {
        if (!["none", "refuse", "hang"].includes(v)) return 'partition must be "none", "refuse" or "hang".';
        next.partition = v;
      } else if (k === "reset_rate" || k === "processing_rate" || k === "malformed_rate") {
        if (typeof v !== "number" || !(v >= 0 && v <= 1)) return `${k} must be a number from 0 to 1.`;
        next[k] = v;
      } else if (k === "reset_point") {
        if (v !== "before_response" && v !== "mid_body") return 'reset_point must be "before_response" or "mid_body".';
        next.reset_point = v;
      } else if (k === "processing_ms") {
        if (!Number.isInteger(v) || v < 0 || v > 120_000) return "processing_ms must be an integer from 0 to 120000.";
        next.processing_ms = v;
      } else if (k === "malformed_body") {
        if (v !== "garbage" && v !== "truncated") return 'malformed_body must be "garbage" or "truncated".';
        next.malformed_body = v;
      } else return `Unknown setting ${k}.`;
    }
    lane.config = next;
    // Lifting or changing a hang partition releases the held requests.
    if (next.partition !== "hang") for (const h of [...lane.held]) h.release();
    return null;
  }

  // ---- Stripe API, after the network conditions of the lane have been applied
  function stripe(lane, req, res, path, query, bodyText) {
    lane.stats.requests += 1;
    const delay = sampleLatency(rng, lane.config.latency_ms);
    const idemKey = req.method === "POST" ? req.headers["idempotency-key"] : undefined;
    const baseHeaders = idemKey ? { "Idempotency-Key": idemKey } : {};
    const reply = (status, body, headers = {}) =>
      later(delay, () => {
        log(`${lane.name} ${req.method} ${path} -> ${status}`);
        send(res, status, body, { ...baseHeaders, ...headers });
      });
    // An answer of the API itself (fresh or replayed), which the lane's transport faults
    // (reset, malformed 2xx) may break on its way to the client.
    const answer = (status, body, headers = {}) => {
      const c = lane.config;
      let broken = null;
      if (c.reset_rate > 0 && rng() < c.reset_rate) {
        lane.stats.resets += 1;
        broken = c.reset_point;
      } else if (status >= 200 && status < 300 && c.malformed_rate > 0 && rng() < c.malformed_rate) {
        lane.stats.malformed += 1;
        broken = c.malformed_body;
      }
      if (!broken) return reply(status, body, headers);
      return later(delay, () => {
        const what = broken === "garbage" || broken === "truncated" ? `sent as a malformed 200 (${broken})` : `reset (${broken})`;
        log(`${lane.name} ${req.method} ${path} -> ${status}, then ${what}`);
        sendBroken(lane, req, res, status, body, { ...baseHeaders, ...headers }, broken);
      });
    };

    let fault = null;
    if (lane.config.error_rate > 0 && rng() < lane.config.error_rate) {
      lane.stats.faults += 1;
      fault =
        rng() < 0.5
          ? { status: 500, body: { error: { type: "api_error", message: "An unknown error occurred." } } }
          : { status: 503, body: { error: { type: "api_error", message: "The service is temporarily unavailable. Please try again later." } } };
      if (lane.config.error_mode === "before") return reply(fault.status, fault.body);
    }

    const auth = req.headers.authorization ?? "";
    const m = /^Bearer (\S+)$/.exec(auth);
    if (!m) {
      return reply(401, {
        error: {
          type: "invalid_request_error",
          message:
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
        },
      });
    }
    if (opts.key ? m[1] !== opts.key : !m[1].startsWith("sk_test_")) {
      return reply(401, { error: { type: "invalid_request_error", code: "api_key_invalid", message: `Invalid API Key provided: ${m[1].slice(0, 8)}****${m[1].slice(-4)}` } });
    }

    const ctype = (req.headers["content-type"] ?? "").split(";")[0].trim();
    if (req.method === "POST" && bodyText !== "" && ctype !== "application/x-www-form-urlencoded")
      return reply(400, { error: { type: "invalid_request_error", message: "Request bodies must be application/x-www-form-urlencoded." } });
    const params = req.method === "POST" ? parseForm(bodyText) : {};

    let fp = null;
    if (idemKey !== undefined) {
      if (idemKey.length === 0 || idemKey.length > 255)
        return reply(400, { error: { type: "invalid_request_error", message: "Idempotency keys must be 1 to 255 characters long." } });
      fp = fingerprint(req.method, path, params);
      const stored = lane.idempotency.get(idemKey);
      if (stored) {
        if (stored.fp !== fp)
          return reply(400, {
            error: {
              type: "idempotency_error",
              message: `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${idemKey}' if you meant to execute a different request.`,
            },
          });
        lane.stats.idempotent_replays += 1;
        if (fault) return reply(fault.status, fault.body);
        return answer(stored.status, stored.body, { "Idempotent-Replayed": "true" });
      }
    }

    // A new confirmed PaymentIntent may answer "processing" and settle later.
    let processing = null;
    if (req.method === "POST" && /^\/v1\/payment_intents\/?$/.test(path) && lane.config.processing_rate > 0 && rng() < lane.config.processing_rate) {
      const ms = lane.config.processing_ms;
      processing = {
        after: (fn) => {
          const t = setTimeout(() => {
            timers.delete(t);
            fn();
            log(`${lane.name} processing payment intent settled after ${ms} ms`);
          }, ms);
          timers.add(t);
        },
      };
    }

    let result;
    try {
      result = routeStripe(lane, req.method, path, params, query, idemKey, processing);
      // Stripe keeps the first answer per key as it was sent, whatever the object becomes.
      if (fp) lane.idempotency.set(idemKey, { fp, status: result.status, body: structuredClone(result.body) });
    } catch (e) {
      if (!(e instanceof StripeError)) {
        process.stderr.write(`acquirer-sim: internal error: ${e && e.stack}\n`);
        return reply(500, { error: { type: "api_error", message: "An unknown error occurred." } });
      }
      // Stripe stores the outcome of requests that reached the API (declines included), not
      // parameter validation failures.
      if (fp && (e.stored || e.status === 402)) lane.idempotency.set(idemKey, { fp, status: e.status, body: structuredClone(e.body) });
      result = { status: e.status, body: e.body };
    }
    if (fault) return reply(fault.status, fault.body);
    return answer(result.status, result.body);
  }

  function handleLane(lane, req, res, path, query, bodyText) {
    if (lane.misroute) {
      log(`${lane.name} ${req.method} ${path} -> ${lane.misroute} (misroute)`);
      const page = `<html><head><title>${lane.misroute}</title></head><body><h1>${lane.misroute}</h1></body></html>\n`;
      res.writeHead(lane.misroute, { "Content-Type": "text/html", "Content-Length": Buffer.byteLength(page) });
      return res.end(page);
    }
    const p = lane.config.partition;
    if (p === "refuse") {
      log(`${lane.name} ${req.method} ${path} -> refused`);
      req.socket.destroy();
      return;
    }
    if (p === "hang") {
      const held = {
        release: () => {
          lane.held.delete(held);
          if (!res.destroyed && !res.writableEnded) handleLane(lane, req, res, path, query, bodyText);
        },
        drop: () => {
          lane.held.delete(held);
          req.socket.destroy();
        },
      };
      lane.held.add(held);
      res.on("close", () => lane.held.delete(held));
      log(`${lane.name} ${req.method} ${path} -> held (partition hang)`);
      return;
    }
    stripe(lane, req, res, path, query, bodyText);
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const chunks = [];
    let size = 0;
    let tooBig = false;
    req.on("data", (c) => {
      size += c.length;
      if (size > 64 * 1024) tooBig = true;
      else chunks.push(c);
    });
    req.on("end", () => {
      if (tooBig) return send(res, 413, { error: { type: "invalid_request_error", message: "The request body is too large." } });
      const bodyText = Buffer.concat(chunks).toString("utf8");
      const path = url.pathname;
      if (path === "/healthz") return send(res, 200, { ok: true });
      if (path.startsWith("/control/")) return control(req, res, path, bodyText);
      let laneName = "default";
      let rest = path;
      const lm = /^\/lanes\/([^/]+)(\/.*)$/.exec(path);
      if (lm) {
        laneName = decodeURIComponent(lm[1]);
        rest = lm[2];
      }
      const lane = laneFor(laneName);
      if (!lane) return send(res, 404, { error: { type: "invalid_request_error", message: `No lane named ${laneName}.` } });
      handleLane(lane, req, res, rest, parseForm(url.search.slice(1)), bodyText);
    });
  });

  function close() {
    for (const t of timers) clearTimeout(t);
    timers.clear();
    server.closeAllConnections?.();
    return new Promise((resolve) => server.close(() => resolve()));
  }

  return { server, close, lanes };
}

// ---------------------------------------------------------------------------------------------
// Main

function isMainModule() {
  try {
    return process.argv[1] !== undefined && fs.realpathSync(process.argv[1]) === fs.realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}
const isMain = isMainModule();
if (isMain) {
  const opts = parseArgs(process.argv.slice(2));
  const sim = createSimulator(opts);
  sim.server.on("error", (e) => fail(`cannot listen: ${e.message}`));
  sim.server.listen(opts.port, "127.0.0.1", () => {
    const { port } = sim.server.address();
    process.stdout.write(`acquirer-sim listening on http://127.0.0.1:${port}\n`);
  });
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    sim.close().then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
