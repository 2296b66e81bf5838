//! The Worker ↔ event object protocol: one request enum ([`ObjectRequest`]), one answer
//! enum ([`ObjectAnswer`]), and the pure encode/decode both sides use.
//!
//! Every call is `POST https://event/` on the event's stub with an `ObjectRequest` as its
//! JSON body, except [`ObjectRequest::WatchHandover`], a WebSocket upgrade (a `GET` that
//! carries the request in the [`REQUEST_HEADER`] header, since an upgrade has no body).
//! The object answers `200` with an `ObjectAnswer`, or the error's own status with a
//! [`WireError`]: the ledger's status, code, sentence and retryability reach the buyer
//! unchanged, never relabelled on the way (only an answer that cannot be read becomes 503
//! `temporarily_unavailable`, retryable). The shell's `edge::object_client` is the only
//! caller of event objects; `edge::event_object` is the only server.
//!
//! The checkout's own messages (begin, finish and their replies) are in
//! [`crate::checkout::protocol`]; this module carries them as two variants.

use crate::checkout::protocol::{BeginReply, BeginRequest, FinishReply, FinishRequest, WireError};
use crate::error::ApiError;
pub use crate::handover::HandoverSettle;
use crate::handover::{HandoverSession, HandoverView};
use crate::ledger::{Command, EventConfig, EventSummary, Order, Reply};
use crate::telemetry::Event;
use serde::{Deserialize, Serialize};

/// The header that carries a [`ObjectRequest::WatchHandover`] on its WebSocket upgrade.
pub const REQUEST_HEADER: &str = "X-Poptill-Object-Request";

/// One call to an event's Durable Object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ObjectRequest {
    /// Create the event (`409 event_exists` if it exists). Answer: `Created`.
    Init { config: Box<EventConfig> },
    /// Ledger commands, applied in order, each answered. Answer: `Results`.
    Commands { now_ms: i64, commands: Vec<Command> },
    /// Answer: `Config`.
    Config,
    /// Answer: `Summary`.
    Summary,
    /// A checkout's first call. Answer: `Begin`.
    Begin(Box<BeginRequest>),
    /// A checkout's last call. Answer: `Finish`.
    Finish(Box<FinishRequest>),
    /// Answer: `Order` or `404`.
    Order { order_id: String },
    /// Answer: `Done`.
    SetWebhook { url: String, secret: String },
    /// A PoP's batch of business events (at most 1,000). Answer: `Done`.
    Telemetry { events: Vec<Event> },
    /// The stored telemetry rows and the summary. Answer: `Metrics`.
    Metrics,
    /// The event's store-and-forward key, wrapped by the KEK. Answer: `SealKey`.
    SealKey,
    /// Reconcile now. Answer: `Reconciled`.
    Reconcile,
    /// The signed report of the last reconciliation. Answer: `Report` or `404`.
    Report,
    /// Answer: `Export`.
    Export { format: ExportFormat, email: bool },
    /// Answer: `Receipt` or `404`.
    GetReceipt { receipt_id: String },
    /// Open a till's pay link. Answer: `Session`.
    OpenHandover {
        session_id: String,
        session: Box<HandoverSession>,
    },
    /// Answer: `Session` or `404`.
    GetHandover { session_id: String },
    /// Claim a pay link for the checkout with record key `order_key`, which holds and
    /// pays `order_id` (both from its Idempotency-Key). Answer: `Session`, or 409/410.
    ClaimHandover {
        session_id: String,
        order_key: String,
        order_id: String,
    },
    /// How the claimed checkout ended. Answer: `Session`.
    SettleHandover {
        session_id: String,
        settle: HandoverSettle,
    },
    /// The till's live channel (a WebSocket upgrade, see the module header).
    WatchHandover { session_id: String },
}

/// An export's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Csv,
    Ndjson,
}

impl ExportFormat {
    pub fn parse(s: &str) -> Option<ExportFormat> {
        match s {
            "csv" => Some(ExportFormat::Csv),
            "ndjson" => Some(ExportFormat::Ndjson),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Ndjson => "application/x-ndjson",
        }
    }
}

/// One command's result in [`ObjectAnswer::Results`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandResult {
    Ok(Box<Reply>),
    Error(WireError),
}

impl CommandResult {
    pub fn into_result(self) -> Result<Reply, ApiError> {
        match self {
            CommandResult::Ok(r) => Ok(*r),
            CommandResult::Error(e) => Err(e.to_api()),
        }
    }
}

impl From<Result<Reply, ApiError>> for CommandResult {
    fn from(r: Result<Reply, ApiError>) -> CommandResult {
        match r {
            Ok(reply) => CommandResult::Ok(Box::new(reply)),
            Err(e) => CommandResult::Error(WireError::from(e)),
        }
    }
}

/// What the event's object answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObjectAnswer {
    Created {
        summary: Box<EventSummary>,
    },
    Results {
        results: Vec<CommandResult>,
    },
    Config {
        config: Box<EventConfig>,
    },
    Summary {
        summary: Box<EventSummary>,
    },
    Begin {
        reply: BeginReply,
    },
    Finish {
        reply: FinishReply,
    },
    Order {
        order: Box<Order>,
    },
    Done,
    Metrics {
        rows: Vec<(String, String)>,
        summary: Box<EventSummary>,
    },
    SealKey {
        wrapped: String,
    },
    /// The admin reconcile route's body.
    Reconciled {
        result: serde_json::Value,
    },
    /// The signed report, as it was signed (JSON text).
    Report {
        json: String,
    },
    Export {
        body: String,
    },
    /// The signed receipt, as it was signed (JSON text).
    Receipt {
        json: String,
    },
    /// A handover session as callers may see it (never its claim).
    Session {
        session: Box<HandoverView>,
    },
}

fn unreadable(what: &str) -> ApiError {
    ApiError::new(
        503,
        "temporarily_unavailable",
        format!("The event {what}; try again."),
    )
    .retryable()
}

/// The answer the Worker got when the object's answer was of another kind than asked for.
pub fn unexpected() -> ApiError {
    unreadable("answered something else")
}

impl ObjectRequest {
    /// The JSON body (or header) of the call.
    pub fn encode(&self) -> String {
        // A request of these types always serializes (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The object reads a call; a body that is not a request is `400 invalid_object_request`.
    pub fn decode(body: &str) -> Result<ObjectRequest, ApiError> {
        serde_json::from_str(body).map_err(|e| {
            ApiError::bad_request(
                "invalid_object_request",
                format!("Not an event object request: {e}"),
            )
        })
    }
}

/// The object's answer as `(status, JSON body)`.
pub fn encode_answer(answer: &Result<ObjectAnswer, ApiError>) -> (u16, String) {
    let encoded = match answer {
        Ok(a) => serde_json::to_string(a).map(|s| (200, s)),
        Err(e) => serde_json::to_string(&WireError::from(e)).map(|s| (e.status, s)),
    };
    encoded.unwrap_or_else(|_| {
        let e = WireError::from(unreadable("could not encode its answer"));
        (503, serde_json::to_string(&e).unwrap_or_default())
    })
}

/// The Worker reads the object's answer: an error keeps its status, code, sentence and
/// retryability; anything unreadable is 503 `temporarily_unavailable`, retryable.
pub fn decode_answer(status: u16, body: &str) -> Result<ObjectAnswer, ApiError> {
    if status >= 400 {
        return Err(serde_json::from_str::<WireError>(body)
            .ok()
            .filter(|w| w.status == status)
            .map(|w| w.to_api())
            .unwrap_or_else(|| unreadable("could not answer")));
    }
    serde_json::from_str(body).map_err(|_| unreadable("answered unreadably"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerError;

    fn roundtrip(req: ObjectRequest) {
        let back = ObjectRequest::decode(&req.encode()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn every_request_survives_the_trip() {
        for req in [
            ObjectRequest::Commands {
                now_ms: 5,
                commands: vec![Command::SyncNow, Command::Alarm],
            },
            ObjectRequest::Config,
            ObjectRequest::Summary,
            ObjectRequest::Order {
                order_id: "ord_1".into(),
            },
            ObjectRequest::SetWebhook {
                url: "https://m.example/hook".into(),
                secret: "whsec".into(),
            },
            ObjectRequest::Telemetry { events: vec![] },
            ObjectRequest::Metrics,
            ObjectRequest::SealKey,
            ObjectRequest::Reconcile,
            ObjectRequest::Report,
            ObjectRequest::Export {
                format: ExportFormat::Ndjson,
                email: true,
            },
            ObjectRequest::GetReceipt {
                receipt_id: "rcpt_evt_1-000001".into(),
            },
            ObjectRequest::OpenHandover {
                session_id: "hs_1".into(),
                session: Box::new(crate::handover::tests::session()),
            },
            ObjectRequest::ClaimHandover {
                session_id: "hs_1".into(),
                order_key: "co_1".into(),
                order_id: "ord_1".into(),
            },
            ObjectRequest::SettleHandover {
                session_id: "hs_1".into(),
                settle: HandoverSettle {
                    order_key: "co_1".into(),
                    paid: true,
                    order_id: Some("ord_1".into()),
                    ..HandoverSettle::default()
                },
            },
            ObjectRequest::WatchHandover {
                session_id: "hs_1".into(),
            },
        ] {
            roundtrip(req);
        }
    }

    #[test]
    fn a_session_answer_carries_no_claim() {
        let mut s = crate::handover::tests::session();
        let first = crate::handover::ClaimedOrder::Unknown;
        s.claim(
            "co_secretkey",
            "ord_secretorder",
            first,
            crate::handover::tests::T0 + 1,
        )
        .unwrap();
        let answer = ObjectAnswer::Session {
            session: Box::new(s.view()),
        };
        let (status, body) = encode_answer(&Ok(answer.clone()));
        assert_eq!(status, 200);
        assert!(
            !body.contains("order_key") && !body.contains("co_secretkey"),
            "{body}"
        );
        assert!(!body.contains("ord_secretorder"), "{body}");
        assert_eq!(decode_answer(status, &body).unwrap(), answer);
    }

    #[test]
    fn a_body_that_is_no_request_is_a_400_with_a_stable_code() {
        for body in ["", "{}", r#"{"op":"drop_tables"}"#, r#"{"op":"order"}"#] {
            let e = ObjectRequest::decode(body).unwrap_err();
            assert_eq!((e.status, e.code.as_ref()), (400, "invalid_object_request"));
        }
    }

    #[test]
    fn errors_reach_the_worker_unrelabelled() {
        // A ledger refusal keeps its own status, code, sentence and retryability: the
        // finish call once turned every 4xx into `offline_budget_exhausted`.
        for e in [
            LedgerError::IdempotencyMismatch.to_api(),
            ApiError::new(422, "purchase_limit", "At most 10 per order.").retryable(),
            ApiError::not_found("order"),
            ApiError::new(409, "event_exists", "exists"),
        ] {
            let (status, body) = encode_answer(&Err(e.clone()));
            assert_eq!(status, e.status);
            assert_eq!(decode_answer(status, &body).unwrap_err(), e);
        }
    }

    #[test]
    fn answers_survive_the_trip_and_garbage_is_a_retryable_503() {
        let a = ObjectAnswer::Results {
            results: vec![
                CommandResult::Ok(Box::new(Reply::Done)),
                CommandResult::from(Err(ApiError::new(422, "sold_out", "Gone."))),
            ],
        };
        let (status, body) = encode_answer(&Ok(a.clone()));
        assert_eq!(status, 200);
        let back = decode_answer(status, &body).unwrap();
        assert_eq!(back, a);
        let ObjectAnswer::Results { results } = back else {
            unreachable!()
        };
        let e = results[1].clone().into_result().unwrap_err();
        assert_eq!((e.status, e.code.as_ref()), (422, "sold_out"));
        for (status, body) in [
            (200, "not json"),
            (200, r#"{"kind":"mystery"}"#),
            (500, "Worker threw"),
            (
                503,
                r#"{"status":409,"code":"x","message":"status disagrees"}"#,
            ),
        ] {
            let e = decode_answer(status, body).unwrap_err();
            assert_eq!(
                (e.status, e.code.as_ref()),
                (503, "temporarily_unavailable")
            );
            assert!(e.retryable, "{body}");
        }
    }
}
