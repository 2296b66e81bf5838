//! What each route says in the document: one exhaustive match over [`RouteId`].
//! Bodies and answers are named by their Rust types; the error codes are the ones the
//! handlers and the core functions they call can return (the e2e suite fails on an error
//! answer whose code is not listed here for its operation and status).

use super::{Op, Schemas};
use crate::api::answers::*;
use crate::api::bodies::*;
use crate::api::RouteId;
use serde_json::{json, Value};

/// The id patterns of the path parameters, as the handlers recognise them.
fn event_id() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9_.:-]+$"})
}
fn any_id() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 200})
}

const EVENT: &str = "The event's id (`ev_…`), as in the script tag.";
const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

fn page(content_type: &'static str) -> Option<(&'static str, Value)> {
    Some((content_type, json!({"type": "string"})))
}

/// Errors every route that reads an event (through its Durable Object) can return.
fn event_errors(op: Op) -> Op {
    op.errors(404, &["not_found"])
        .errors(503, &["temporarily_unavailable"])
}

pub fn describe(id: RouteId, s: &mut Schemas) -> Op {
    match id {
        RouteId::Healthz => Op::new("Liveness, version and the PoP that answered")
            .answer::<Health>(s, 200, "The Worker is up"),
        RouteId::OpenApi => Op::new("This document")
            .answer_with(200, "The OpenAPI 3.1 document", Some(("application/json", json!({"type": "object"})))),
        RouteId::CreateToken => Op::new("Tokenize a card in this PoP (called by the hosted card frame)")
            .describe("The card is validated and sealed here (ChaCha20-Poly1305 under this PoP's data key); it never leaves the PoP in clear. Only the event's allowed origins (or the edge's own frame) may call it.")
            .body::<TokenRequest>(s)
            .answer::<TokenCreated>(s, 201, "The card's token")
            .link_with_body("checkout", RouteId::Checkout, &[("id", "$request.body#/event_id")],
                Some(json!({"token": "$response.body#/token", "cvc_token": "$response.body#/cvc_token"})))
            .errors(422, &["invalid_card_number", "unsupported_brand", "invalid_expiry", "card_expired", "invalid_cvc"])
            .errors(403, &["origin_not_allowed"])
            .errors(404, &["not_found"])
            .errors(503, &["temporarily_unavailable", "vault_unavailable", "not_configured"]),
        RouteId::ListKeys => Op::new("Vault data keys: ids, times and states (never key material)")
            .answer::<KeyList>(s, 200, "The keys this edge knows")
            .errors(503, &["temporarily_unavailable"]),
        RouteId::RotateKey => Op::new("Start a new data key for this PoP now")
            .answer::<KeyRotated>(s, 201, "The new key")
            .link("revoke", RouteId::RevokeKey, &[("kid", "$response.body#/kid")])
            .errors(503, &["temporarily_unavailable", "vault_unavailable", "not_configured"]),
        RouteId::RevokeKey => Op::new("Revoke a data key: its tokens can no longer be opened")
            .path("kid", "The key's id, as listed by GET /v1/admin/keys.", any_id())
            .answer::<KeyRevoked>(s, 200, "Revoked")
            .errors(404, &["not_found"])
            .errors(503, &["temporarily_unavailable"]),
        RouteId::PushPolicy => Op::new("Push a signed policy bundle (verified, activated atomically)")
            .describe("The body is what `scripts/policy sign` writes: the bundle and its Ed25519 signature. A revision at or below the highest ever activated is refused, so an old bundle cannot be replayed.")
            .body::<crate::policy::SignedBundle>(s)
            .answer::<PolicyActivated>(s, 201, "Activated")
            .link("status", RouteId::PolicyStatus, &[("jurisdiction", "$response.body#/jurisdiction")])
            .answer::<PolicyActivated>(s, 200, "The same revision is already active")
            .errors(400, &["policy_malformed"])
            .errors(403, &["policy_unknown_key", "policy_key_retired"])
            .errors(409, &["policy_stale_revision"])
            .errors(422, &["policy_invalid", "policy_bad_signature"])
            .errors(503, &["temporarily_unavailable"]),
        RouteId::PolicyStatus => Op::new("Active revision and history for a jurisdiction")
            .path("jurisdiction", "An upper-case ISO 3166 code such as `DE` or `US-CA`.", json!({"type": "string"}))
            .answer::<crate::policy::PolicyStatus>(s, 200, "The active revision and the history")
            .errors(404, &["policy_not_found"])
            .errors(503, &["temporarily_unavailable"]),
        RouteId::PolicyRevision => Op::new("A stored signed bundle revision")
            .path("jurisdiction", "An upper-case ISO 3166 code.", json!({"type": "string"}))
            .path("revision", "The revision number.", json!({"type": "string", "pattern": "^[0-9]+$"}))
            .answer::<crate::policy::SignedBundle>(s, 200, "The signed envelope as it was pushed")
            .errors(400, &["invalid_revision"])
            .errors(404, &["not_found"])
            .errors(503, &["temporarily_unavailable"]),
        RouteId::RollbackPolicy => Op::new("Roll back to an older stored revision (signed rollback statement)")
            .path("jurisdiction", "An upper-case ISO 3166 code.", json!({"type": "string"}))
            .body::<crate::policy::SignedRollback>(s)
            .answer::<PolicyActivated>(s, 200, "Rolled back")
            .errors(400, &["policy_malformed", "policy_rollback_mismatch"])
            .errors(422, &["policy_bad_signature"])
            .errors(403, &["policy_unknown_key", "policy_key_retired"])
            .errors(404, &["policy_revision_not_found"])
            .errors(409, &["policy_rollback_conflict", "policy_rollback_not_older"])
            .errors(503, &["temporarily_unavailable"]),
        RouteId::CreateMerchant => Op::new("Create a merchant and its API key (shown once)")
            .describe("With `webhook_url`, receipts are POSTed there in batches signed with the returned `webhook_secret` (see `webhooks` below).")
            .body::<NewMerchant>(s)
            .answer::<MerchantCreated>(s, 201, "The merchant and its API key")
            .link("createEvent", RouteId::CreateEvent, &[])
            .errors(422, &["invalid_name", "invalid_webhook_url"])
            .errors(503, &["temporarily_unavailable"]),
        RouteId::CreateEvent => Op::new("Create an event (its Durable Object)")
            .body::<NewEvent>(s)
            .answer::<EventCreated>(s, 201, "The event, its config and the policy it follows")
            .link("showEvent", RouteId::ShowEvent, &[("id", "$response.body#/event_id")])
            .link_with_body("createToken", RouteId::CreateToken, &[], Some(json!({"event_id": "$response.body#/event_id"})))
            .link("eventPublic", RouteId::EventPublic, &[("id", "$response.body#/event_id")])
            .link("quote", RouteId::Quote, &[("id", "$response.body#/event_id")])
            .link("checkout", RouteId::Checkout, &[("id", "$response.body#/event_id")])
            .link("joinQueue", RouteId::JoinQueue, &[("id", "$response.body#/event_id")])
            .link("createHandover", RouteId::CreateHandover, &[("id", "$response.body#/event_id")])
            .link("refund", RouteId::RefundOrder, &[("id", "$response.body#/event_id")])
            .link("reconcile", RouteId::ReconcileEvent, &[("id", "$response.body#/event_id")])
            .link("export", RouteId::ExportEvent, &[("id", "$response.body#/event_id")])
            .link("metrics", RouteId::EventMetrics, &[("id", "$response.body#/event_id")])
            .errors(403, &["forbidden"])
            .errors(409, &["event_exists"])
            .errors(422, &["merchant_id_required", "unknown_merchant", "invalid_currency", "invalid_event_config", "invalid_id", "offline_budget_over_policy", "purchase_limit_over_policy"])
            .errors(503, &["temporarily_unavailable", "not_configured"]),
        RouteId::ShowEvent => event_errors(Op::new("Live state of an event")
            .path("id", EVENT, event_id())
            .answer::<EventShown>(s, 200, "The event's config and live summary")),
        RouteId::SyncEvent => event_errors(Op::new("Forward every queued authorization now")
            .path("id", EVENT, event_id())
            .answer::<Synced>(s, 200, "What was forwarded, and the summary after it")),
        RouteId::RefundOrder => event_errors(Op::new("Refund an order, fully or partly")
            .describe("Send an Idempotency-Key: the same key refunds once.")
            .path("id", EVENT, event_id())
            .idempotent()
            .body::<RefundBody>(s)
            .answer::<crate::ledger::Reply>(s, 201, "The refund")
            .link("reconcile", RouteId::ReconcileEvent, &[("id", "$request.path.id")])
            .errors(400, &["invalid_idempotency_key"])
            .errors(409, &["invalid_order_state", "not_captured", "id_conflict"])
            .errors(422, &["refund_exceeds_captured", "refund_not_allowed", "refund_window_closed", "partial_refund_not_allowed", "amount_out_of_range", "amount_mismatch", "currency_mismatch", "invalid_id"])),
        RouteId::ReconcileEvent => event_errors(Op::new("Reconcile the event's ledger with the acquirers' charges now")
            .describe("It also runs by itself after lost checkouts and at the event's end; it refunds lost checkouts' charges once and keeps the signed report.")
            .path("id", EVENT, event_id())
            .answer::<ReconcileAnswer>(s, 200, "What reconciliation found and did")
            .link("report", RouteId::EventReport, &[("id", "$request.path.id")])
            .link("export", RouteId::ExportEvent, &[("id", "$request.path.id")])
            .errors(503, &["acquirer_unavailable", "lanes_misconfigured"])),
        RouteId::EventReport => event_errors(Op::new("The signed report of the event's last reconciliation")
            .describe("Totals, per-lane charges, refunds, discrepancies, whether the listing was truncated, the time range covered; verify it with POST /v1/receipts/verify.")
            .path("id", EVENT, event_id())
            .answer::<crate::receipt::SignedReport>(s, 200, "The signed report")
            .errors(404, &["report_not_ready"])),
        RouteId::ExportEvent => event_errors(Op::new("Export orders for a CRM")
            .describe("Buyer e-mail only where the policy's receipt rules collect it.")
            .path("id", EVENT, event_id())
            .query("format", "`csv` (default) or `ndjson`.", json!({"type": "string", "enum": ["csv", "ndjson"]}))
            .answer_with(200, "One line per order", Some((crate::event_protocol::ExportFormat::Csv.content_type(), json!({"type": "string"}))))
            .or_as(crate::event_protocol::ExportFormat::Ndjson.content_type(), json!({"type": "string"}))
            .errors(400, &["invalid_format"])),
        RouteId::Routing => Op::new("Adaptive routing state per lane (limit, latency, breaker) in this isolate")
            .answer::<RoutingState>(s, 200, "The lanes as this isolate sees them")
            .errors(503, &["lanes_misconfigured"]),
        RouteId::ResetRouting => Op::new("Forget this isolate's learned lane state (after an incident) and measure afresh")
            .answer::<RoutingState>(s, 200, "The fresh state")
            .errors(503, &["lanes_misconfigured"]),
        RouteId::EventPublic => event_errors(Op::new("The event as a checkout page shows it")
            .path("id", EVENT, event_id())
            .answer::<EventPublic>(s, 200, "Title, items, prices and what is left")),
        RouteId::Quote => event_errors(Op::new("Quote items under the event's policy bundle")
            .path("id", EVENT, event_id())
            .body::<QuoteBody>(s)
            .answer::<crate::quote::Quote>(s, 200, "Prices, tax and the prompts the buyer must answer")
            .errors(400, &["quote_no_items", "quote_too_many_items", "quote_bad_quantity"])
            .errors(422, &["unknown_sku", "invalid_quantity", "purchase_limit", "quote_negative_price", "quote_overflow", "quote_currency_mismatch", "quote_no_currency"])),
        RouteId::Checkout => event_errors(Op::new("Pay: authorize online, or queue offline within the budget")
            .describe("Send one Idempotency-Key per buyer intent and the same key on every retry: a retry is answered as the first request was and never charges twice.")
            .path("id", EVENT, event_id())
            .idempotent()
            .body::<crate::checkout::request::CheckoutBody>(s)
            .answer::<CheckoutAnswer>(s, 201, "`approved`, `queued` (stored while the acquirer cannot be reached) or `confirming` (accepted while the acquirer is still answering: send the same request again after Retry-After), with a signed receipt")
            .with_headers(&["X-Poptill-Routing", "Server-Timing", "Retry-After", "Idempotent-Replayed"])
            .link_with_body("verifyReceipt", RouteId::VerifyReceipt, &[], Some(json!("$response.body#/receipt")))
            .link_with_body("refund", RouteId::RefundOrder, &[("id", "$request.path.id")],
                Some(json!({"order_id": "$response.body#/order_id"})))
            .answer::<CheckoutAnswer>(s, 202, "`pending`: the outcome is not known yet; do not pay again. `status_url` (GET) and the same request again say where it stands; Retry-After says when to ask")
            .with_headers(&["X-Poptill-Routing", "Server-Timing", "Retry-After", "Idempotent-Replayed"])
            .answer::<CheckoutAnswer>(s, 402, "`declined`: the card was declined (`decline.code`, `decline.message`); nothing was charged")
            .with_headers(&["X-Poptill-Routing", "Server-Timing", "Idempotent-Replayed"])
            .answer::<CheckoutAnswer>(s, 409, "`declined` with `error.code` `hold_lapsed`: the reservation ran out before the acquirer confirmed and the items are gone; the charge is refunded by itself")
            .with_headers(&["X-Poptill-Routing", "Server-Timing", "Idempotent-Replayed"])
            .errors(400, &["invalid_idempotency_key", "invalid_token", "quote_no_items", "quote_too_many_items", "quote_bad_quantity"])
            .errors(402, &["acquirer_unavailable", "offline_budget_exhausted", "offline_amount_too_high", "offline_card_velocity"])
            .errors(403, &["origin_not_allowed", "not_admitted"])
            .errors(409, &["out_of_stock", "sales_closed", "sales_not_started", "idempotency_in_flight", "hold_lapsed", "checkout_lost", "cvc_already_used", "handover_paid", "handover_in_progress"])
            .errors(410, &["token_expired", "key_revoked", "handover_expired"])
            .errors(422, &["unknown_sku", "invalid_quantity", "invalid_hold", "purchase_limit", "buyer_limit", "idempotency_mismatch", "age_confirmation_required", "consent_required", "email_required", "quote_negative_price", "quote_overflow", "quote_currency_mismatch", "quote_no_currency"])
            .errors(429, &["overloaded", "too_many_pending", "card_velocity", "too_many_orders"])
            .errors(503, &["vault_unavailable", "not_configured"])),
        RouteId::CheckoutStatus => Op::new("Where a checkout that answered 202 pending stands")
            .describe("The `status_url` of that answer; a capability like a receipt's URL.")
            .path("id", EVENT, event_id())
            .path("status", "`<order_id>.<token>`, as in the pending answer's status_url.", any_id())
            .answer::<CheckoutAnswer>(s, 200, "`pending` (with retry_after_s and Retry-After), `approved`, `declined` or `canceled`; the receipt's id and URL once there is one")
            .with_headers(&["Retry-After"])
            .errors(403, &["origin_not_allowed"])
            .errors(404, &["not_found"])
            .errors(503, &["temporarily_unavailable", "not_configured"]),
        RouteId::GetReceipt => Op::new("A signed receipt (JSON, or HTML for Accept: text/html)")
            .path("id", "The receipt's id with its capability (`rcpt_…`), as in the receipt URL.", any_id())
            .answer::<crate::receipt::SignedReceipt>(s, 200, "The signed receipt")
            .errors(404, &["not_found"])
            .errors(503, &["temporarily_unavailable", "not_configured"]),
        RouteId::VerifyReceipt => Op::new("Verify a signed receipt, or an event's signed report")
            .body::<VerifyBody>(s)
            .answer::<Verified>(s, 200, "Valid")
            .errors(400, &["receipt_malformed", "report_malformed"])
            .errors(422, &["receipt_tampered", "receipt_unknown_key", "report_tampered", "report_unknown_key"])
            .errors(503, &["not_configured"]),
        RouteId::CheckoutJs => Op::new("The checkout script tag (short cache); /v1/checkout.<version>.js is the immutable copy")
            .answer_with(200, "JavaScript", page(JS)),
        RouteId::Frame => Op::new("The hosted card frame (CSP frame-ancestors = the event's allowed origins)")
            .query("event", "The event whose allowed origins may frame it (none when the event is unknown).", json!({"type": "string"}))
            .answer_with(200, "HTML", page(HTML)),
        RouteId::FrameJs => Op::new("The card frame's script").answer_with(200, "JavaScript", page(JS)),
        RouteId::PayPage => Op::new("The buyer's pay page for a handover session (short pay URL)")
            .path("session_id", "The handover session (`hs_…`).", any_id())
            .answer_with(200, "HTML", page(HTML)),
        RouteId::CreateHandover => event_errors(Op::new("A staff terminal opens a pay link for a cart")
            .path("id", EVENT, event_id())
            .body::<HandoverBody>(s)
            .answer::<HandoverCreated>(s, 201, "The session, its pay link, QR code and WebSocket")
            .link("getHandover", RouteId::GetHandover, &[("id", "$response.body#/session_id")])
            .link("handoverQr", RouteId::HandoverQr, &[("id", "$response.body#/session_id")])
            .link("payPage", RouteId::PayPage, &[("session_id", "$response.body#/session_id")])
            .errors(403, &["origin_not_allowed"])
            .errors(400, &["quote_no_items", "quote_too_many_items", "quote_bad_quantity"])
            .errors(422, &["invalid_ttl", "unknown_sku", "invalid_quantity", "purchase_limit", "quote_negative_price", "quote_overflow", "quote_currency_mismatch", "quote_no_currency"])
            .errors(429, &["too_many_handovers"])),
        RouteId::GetHandover => Op::new("A handover session's status (open, paying, paid, expired)")
            .path("id", "The handover session (`hs_…`).", any_id())
            .answer::<crate::handover::HandoverView>(s, 200, "The session")
            .errors(404, &["not_found"])
            .errors(503, &["temporarily_unavailable"]),
        RouteId::HandoverQr => Op::new("The pay link as an SVG QR code")
            .path("id", "The handover session (`hs_…`).", any_id())
            .answer_with(200, "SVG", page("image/svg+xml"))
            .errors(404, &["not_found"])
            .errors(422, &["qr_text_too_long"])
            .errors(503, &["temporarily_unavailable"]),
        RouteId::HandoverWs => Op::new("WebSocket pushing the session on every change")
            .path("id", "The handover session (`hs_…`).", any_id())
            .answer_with(101, "Switching protocols", None)
            .errors(404, &["not_found"])
            .errors(426, &["upgrade_required"])
            .errors(503, &["temporarily_unavailable"]),
        RouteId::JoinQueue => event_errors(Op::new("Join the event's waiting room: a ticket and a position")
            .path("id", EVENT, event_id())
            .answer::<QueueTicket>(s, 200, "The waiting place")
            .link("poll", RouteId::PollQueue, &[("id", "$request.path.id"), ("ticket", "$response.body#/ticket")])
            .errors(429, &["queue_full"])),
        RouteId::PollQueue => event_errors(Op::new("Poll a waiting place (keeps it alive); admitted tickets may check out")
            .path("id", EVENT, event_id())
            .path("ticket", "The ticket from joining.", any_id())
            .answer::<QueueTicket>(s, 200, "The waiting place")
            .errors(404, &["ticket_not_found"])),
        RouteId::EventMetrics => event_errors(Op::new("Business metrics of the event")
            .describe("Funnel and conversion, checkout latency p50/p95/p99 per PoP and per lane, latency per minute per PoP, conversion by latency bucket, queue sizes and queued exposure, decline reasons, and the cost report (cost per lane, conversion per unit of cost, estimated revenue effect of 50 ms less p95, with its model stated).")
            .path("id", EVENT, event_id())
            .answer::<crate::telemetry::Metrics>(s, 200, "The metrics")),
        RouteId::OpsDashboard => Op::new("The operations dashboard page for an event (HTML)")
            .describe("It asks for the operator or merchant key once, keeps it in sessionStorage and polls the metrics route with it.")
            .path("id", EVENT, event_id())
            .answer_with(200, "HTML", page(HTML)),
        RouteId::OpsDashboardJs => Op::new("The dashboard's script (draws the charts as inline SVG)")
            .answer_with(200, "JavaScript", page(JS)),
        RouteId::BenchCounter => Op::new("Benchmark floor: increment a bare Durable Object counter and return the count")
            .path("name", "The counter.", json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}))
            .answer::<Count>(s, 200, "The count after the increment")
            .errors(404, &["not_found"])
            .errors(503, &["temporarily_unavailable"]),
    }
}

/// `webhooks`: what poptill POSTs to a merchant's `webhook_url`.
pub fn webhooks(s: &mut Schemas) -> Value {
    let schema = s.answer::<crate::webhook::Batch>();
    json!({
        "receipts.batch": {
            "post": {
                "summary": "A batch of signed receipts",
                "description": "Sent to the merchant's webhook_url. `Poptill-Signature: t=<ms>,v1=<hex>` where v1 is HMAC-SHA256 with the merchant's webhook_secret over `poptill-webhook-v1\\n` + t + `\\n` + the raw body. Reject a delivery whose signature does not match or whose t is more than five minutes old; deliveries may repeat (dedupe on the receipt ids).",
                "parameters": [{"name": "Poptill-Signature", "in": "header", "required": true, "schema": {"type": "string", "pattern": "^t=[0-9]+,v1=[0-9a-f]{64}$"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": schema}}},
                "responses": {"2XX": {"description": "Received; anything else is retried with backoff"}},
            }
        }
    })
}
