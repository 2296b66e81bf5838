//! What one forward of a stored payment, or of a queued refund, ended in: the one rule that
//! turns what the shell saw (lane found? sealed card opened? the acquirer's transport result,
//! status and body) into the ledger's [`AcquirerResult`] or [`RefundOutcome`].
//!
//! The rule protects two things. A stored payment is declined, and its sealed card
//! destroyed, only when the card itself was refused (a Stripe card error with a decline
//! code, or a payment intent that needs another payment method). Everything that is our
//! fault (a missing or unknown KEK, a store-and-forward key or sealed card that does not
//! open, a lane that is gone from `LANES`, a 404 or 400 from a mistyped lane URL, a rotated
//! API key's 401) keeps the payment queued with its card until it expires, and raises an
//! [`Alert`] for the operator. And an attempt whose request may have reached the acquirer
//! without a complete answer (a timeout, a reset, a body that could not be read, a 5xx, a
//! `processing` intent, an unreadable 2xx) is [`AcquirerResult::Unavailable`]: its outcome
//! is unknown, it is retried only with the same idempotency key, and it starts the key's
//! window (`super::forward::KEY_WINDOW_MS`). Attempts that provably charged nothing
//! ([`AcquirerResult::NotCharged`]) do not.
//!
//! What an answer means is not decided here: [`crate::checkout::outcome::classify`] is the
//! one outcome rule, shared with the online checkout. This module maps its meaning to the
//! ledger's results and adds the configuration rows that only a stored payment has (lane
//! gone, sealed card unreadable) and which lanes to leave alone for the rest of a wake.

use super::forward::{AcquirerResult, RefundOutcome};
use crate::acquirer::{self, RefundOutcome as AcqRefund};
use crate::checkout::outcome::{self as rule, AttemptResult};

/// How the HTTP exchange with the acquirer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// The request provably never left: it could not be handed to the network, or the
    /// connection was refused before a byte was sent.
    NotSent,
    /// The request may have reached the acquirer, and no complete answer came back: a
    /// timeout, a connection reset, a body that could not be read. The outcome is unknown.
    NoAnswer,
    /// A complete answer.
    Answered { status: u16, body: &'a str },
}

/// What the shell knows about one forward of a stored payment, in the order it finds out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardAttempt<'a> {
    /// The order's lane is not among the configured lanes (renamed or removed). Another
    /// lane is another account: the payment waits for its own.
    LaneUnknown,
    /// The sealed card could not be opened: KEK missing or unknown, the store-and-forward
    /// key did not unwrap, the sealed card did not open, or reading the key failed.
    CardUnreadable,
    /// The acquirer call could not be built from the lane and the payment (a lane
    /// `base_url` that is not a URL, say).
    CallInvalid,
    /// The call was made (or tried); how it ended.
    Sent(Transport<'a>),
}

/// Something the operator must fix; the shell logs it as an alert line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// A stable code (`lane_unknown`, `sealed_card_unreadable`, `lane_refused_key`, ...).
    pub code: &'static str,
    /// What was seen, for the log (status and Stripe's code; never card data).
    pub detail: String,
}

/// The decision for one forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardVerdict {
    pub result: AcquirerResult,
    pub alert: Option<Alert>,
    /// The lane is down or refuses every call (no answer, 5xx, 429, 401/403, 404): the
    /// other forwards to the same lane in this wake wait for their backoff instead of
    /// opening connection after connection. Other lanes are not affected.
    pub lane_down: bool,
}

/// The decision for one refund forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundVerdict {
    pub result: RefundOutcome,
    pub alert: Option<Alert>,
    pub lane_down: bool,
}

fn alert(code: &'static str, detail: impl Into<String>) -> Option<Alert> {
    Some(Alert {
        code,
        detail: detail.into(),
    })
}

/// Keeps codes short and printable for logs.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c == ' ' { '_' } else { c })
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

/// The intent a forward must read before its answer means anything, if any: a `processing`
/// PaymentIntent. A forward that completes an earlier attempt sends that attempt's
/// Idempotency-Key, and the acquirer answers a replay with the answer it stored, so a
/// payment that was `processing` then stays `processing` in every replay however long ago
/// it settled. The forward then reads the intent itself (`GET /v1/payment_intents/{id}`) and
/// is classified by what that read says ([`answer_to_classify`]).
pub fn intent_to_read(answer: Transport<'_>) -> Option<String> {
    match answer {
        Transport::Answered { status, body } => acquirer::processing_intent(status, body),
        _ => None,
    }
}

/// Which answer a forward is classified by: the read of its intent when that read got a
/// complete answer; otherwise (no read, or the read failed) the first answer, which then
/// still says `processing`: unknown, tried again later on the same lane.
pub fn answer_to_classify<'a>(first: Transport<'a>, read: Option<Transport<'a>>) -> Transport<'a> {
    match read {
        Some(r @ Transport::Answered { .. }) => r,
        _ => first,
    }
}

/// Maps one forward of a stored payment to the ledger's result. See the module header;
/// every row is a test in `tests::forward_table`.
pub fn forward_outcome(attempt: ForwardAttempt<'_>) -> ForwardVerdict {
    let verdict = |result, alert, lane_down| ForwardVerdict {
        result,
        alert,
        lane_down,
    };
    let sent = match attempt {
        ForwardAttempt::LaneUnknown => {
            return verdict(
                AcquirerResult::NotCharged,
                alert(
                    "lane_unknown",
                    "the order's lane is not in LANES; the payment waits for it",
                ),
                false,
            )
        }
        ForwardAttempt::CardUnreadable => {
            return verdict(
                AcquirerResult::NotCharged,
                alert(
                    "sealed_card_unreadable",
                    "the store-and-forward key or the sealed card did not open (check VAULT_KEK and VAULT_KEK_PREVIOUS)",
                ),
                false,
            )
        }
        ForwardAttempt::CallInvalid => {
            return verdict(
                AcquirerResult::NotCharged,
                alert(
                    "forward_request_invalid",
                    "the acquirer call could not be built (check the lane's base_url)",
                ),
                false,
            )
        }
        ForwardAttempt::Sent(t) => t,
    };
    let sent: rule::Sent = match sent {
        Transport::NotSent => Err(rule::Transport::Refused),
        Transport::NoAnswer => Err(rule::Transport::Lost),
        Transport::Answered { status, body } => Ok((status, body.to_string())),
    };
    let status = sent.as_ref().ok().map(|(s, _)| *s);
    let detail = |code: &str| match status {
        Some(s) => format!("status {s} {}", clean(code)),
        None => clean(code),
    };
    let classified = rule::classify(&sent);
    let result = classified.stored_result();
    match classified {
        AttemptResult::Approved { .. } | AttemptResult::Declined { .. } => {
            verdict(result, None, false)
        }
        // Refused before sending or rate limited: the lane is busy or down. A temporary
        // failure at the issuer (processing_error): this card, this time.
        AttemptResult::NotProcessed { .. } => {
            verdict(result, None, status.is_none() || status == Some(429))
        }
        AttemptResult::Misconfigured {
            status,
            code,
            alert: a,
        } => verdict(
            result,
            alert(a, detail(&code)),
            matches!(status, 401 | 403 | 404),
        ),
        AttemptResult::Unknown { why, alert: a } => verdict(
            result,
            a.and_then(|a| alert(a, detail(&why))),
            status.is_none_or(|s| s >= 500),
        ),
    }
}

/// What the shell knows about one refund forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundAttempt<'a> {
    /// The order's lane is not among the configured lanes: the refund waits for it.
    LaneUnknown,
    /// The refund call could not be built.
    CallInvalid,
    Sent(Transport<'a>),
}

/// Maps one refund forward to the ledger's result. A refund fails for good only when the
/// acquirer refused it as Stripe does (already refunded, amount too large, a failed refund);
/// our own configuration problems (lane gone, key refused, URL wrong) keep it queued.
pub fn refund_outcome(attempt: RefundAttempt<'_>) -> RefundVerdict {
    let verdict = |result, alert, lane_down| RefundVerdict {
        result,
        alert,
        lane_down,
    };
    let (status, body) = match attempt {
        RefundAttempt::LaneUnknown => {
            return verdict(
                RefundOutcome::Unavailable,
                alert(
                    "lane_unknown",
                    "the order's lane is not in LANES; the refund waits for it",
                ),
                false,
            )
        }
        RefundAttempt::CallInvalid => {
            return verdict(
                RefundOutcome::Unavailable,
                alert(
                    "refund_request_invalid",
                    "the refund call could not be built (check the lane's base_url)",
                ),
                false,
            )
        }
        RefundAttempt::Sent(Transport::NotSent) | RefundAttempt::Sent(Transport::NoAnswer) => {
            return verdict(RefundOutcome::Unavailable, None, true)
        }
        RefundAttempt::Sent(Transport::Answered { status, body }) => (status, body),
    };
    match acquirer::parse_refund(status, body) {
        AcqRefund::Refunded { refund_id, .. } => verdict(
            RefundOutcome::Succeeded {
                acquirer_refund_id: refund_id,
            },
            None,
            false,
        ),
        AcqRefund::Retryable { .. } => verdict(
            RefundOutcome::Unavailable,
            None,
            status >= 500 || status == 429,
        ),
        AcqRefund::Refused { code, .. } => {
            let detail = format!("status {status} {}", clean(&code));
            let stripe_shaped = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .is_some_and(|v| v.get("error").is_some() || v.get("object").is_some());
            match status {
                401 | 403 => verdict(
                    RefundOutcome::Unavailable,
                    alert("lane_refused_key", detail),
                    true,
                ),
                404 => verdict(
                    RefundOutcome::Unavailable,
                    alert("lane_url_wrong", detail),
                    true,
                ),
                _ if !stripe_shaped => verdict(
                    RefundOutcome::Unavailable,
                    alert("acquirer_answer_unreadable", detail),
                    false,
                ),
                _ => verdict(RefundOutcome::Failed { reason: code }, None, false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPROVED: &str = r#"{"id":"pi_1","object":"payment_intent","status":"succeeded","amount":1500,"currency":"eur"}"#;
    const AUTHORIZED: &str = r#"{"id":"pi_2","object":"payment_intent","status":"requires_capture","amount":1500,"currency":"eur"}"#;
    const PROCESSING: &str =
        r#"{"id":"pi_3","object":"payment_intent","status":"processing","amount":1500}"#;
    const CANCELED: &str =
        r#"{"id":"pi_4","object":"payment_intent","status":"canceled","amount":1500}"#;
    const PI_DECLINED: &str = r#"{"id":"pi_5","object":"payment_intent","status":"requires_payment_method","last_payment_error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds"}}"#;
    const CARD_DECLINED: &str = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}"#;
    const CARD_EXPIRED: &str = r#"{"error":{"type":"card_error","code":"expired_card","message":"Your card has expired."}}"#;
    const CARD_NO_CODE: &str = r#"{"error":{"type":"card_error","message":"Declined."}}"#;
    const PROCESSING_ERROR: &str = r#"{"error":{"type":"card_error","code":"processing_error","message":"An error occurred while processing your card."}}"#;
    const BAD_KEY: &str = r#"{"error":{"type":"invalid_request_error","code":"api_key_invalid","message":"Invalid API Key provided: sk_test_****abcd"}}"#;
    const NO_SUCH_URL: &str = r#"{"error":{"type":"invalid_request_error","message":"Unrecognized request URL (POST: /v2/payment_intents)."}}"#;
    const PARAM_INVALID: &str = r#"{"error":{"type":"invalid_request_error","code":"parameter_invalid_integer","param":"amount","message":"Invalid integer: abc"}}"#;
    const KEY_REUSED: &str = r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters they were first used with."}}"#;
    const KEY_IN_USE: &str = r#"{"error":{"type":"invalid_request_error","code":"idempotency_key_in_use","message":"There is currently another in-progress request using this Idempotency Key."}}"#;
    const RATE_LIMITED: &str = r#"{"error":{"type":"invalid_request_error","code":"rate_limit","message":"Too many requests."}}"#;
    const API_ERROR: &str =
        r#"{"error":{"type":"api_error","message":"An unknown error occurred."}}"#;
    const HTML: &str = "<html><body>Not Found</body></html>";

    fn answered(status: u16, body: &str) -> ForwardAttempt<'_> {
        ForwardAttempt::Sent(Transport::Answered { status, body })
    }

    fn approved(id: &str) -> AcquirerResult {
        AcquirerResult::Approved {
            charge_id: id.into(),
        }
    }

    fn declined(reason: &str) -> AcquirerResult {
        AcquirerResult::Declined {
            reason: reason.into(),
        }
    }

    #[test]
    fn a_replayed_processing_intent_is_read_and_classified_by_the_read() {
        let first = Transport::Answered {
            status: 200,
            body: PROCESSING,
        };
        assert_eq!(intent_to_read(first).as_deref(), Some("pi_3"));
        for other in [
            Transport::Answered {
                status: 200,
                body: APPROVED,
            },
            Transport::Answered {
                status: 500,
                body: PROCESSING,
            },
            Transport::NoAnswer,
            Transport::NotSent,
        ] {
            assert_eq!(intent_to_read(other), None, "{other:?}");
        }
        let read = Transport::Answered {
            status: 200,
            body: APPROVED,
        };
        let v = forward_outcome(ForwardAttempt::Sent(answer_to_classify(first, Some(read))));
        assert_eq!(v.result, approved("pi_1"));
        // The read failed: still processing, so unknown (tried again on the same lane).
        let failed = answer_to_classify(first, Some(Transport::NoAnswer));
        assert_eq!(failed, first);
        assert_eq!(
            forward_outcome(ForwardAttempt::Sent(failed)).result,
            AcquirerResult::Unavailable
        );
        assert_eq!(answer_to_classify(first, None), first);
    }

    /// Every row of the rule: input, result, alert code, lane down.
    #[rustfmt::skip]
    #[test]
    fn forward_table() {
        use AcquirerResult::{NotCharged, Unavailable};
        let rows: Vec<(&str, ForwardAttempt<'_>, AcquirerResult, Option<&str>, bool)> = vec![
            // Before any call: our configuration, never the card.
            ("lane unknown", ForwardAttempt::LaneUnknown, NotCharged, Some("lane_unknown"), false),
            ("card unreadable", ForwardAttempt::CardUnreadable, NotCharged, Some("sealed_card_unreadable"), false),
            ("call invalid", ForwardAttempt::CallInvalid, NotCharged, Some("forward_request_invalid"), false),
            // Transport.
            ("refused before sending", ForwardAttempt::Sent(Transport::NotSent), NotCharged, None, true),
            ("timeout, reset or body lost", ForwardAttempt::Sent(Transport::NoAnswer), Unavailable, None, true),
            // Answers.
            ("succeeded", answered(200, APPROVED), approved("pi_1"), None, false),
            ("requires_capture", answered(200, AUTHORIZED), approved("pi_2"), None, false),
            ("processing", answered(200, PROCESSING), Unavailable, None, false),
            ("unreadable 2xx", answered(200, HTML), Unavailable, Some("acquirer_answer_unreadable"), false),
            ("truncated 2xx", answered(200, &APPROVED[..40]), Unavailable, Some("acquirer_answer_unreadable"), false),
            ("unexpected intent status", answered(200, CANCELED), Unavailable, Some("acquirer_answer_unexpected"), false),
            ("intent needs another card", answered(200, PI_DECLINED), declined("insufficient_funds"), None, false),
            ("402 card_error with decline code", answered(402, CARD_DECLINED), declined("insufficient_funds"), None, false),
            ("402 card_error with code", answered(402, CARD_EXPIRED), declined("expired_card"), None, false),
            ("402 card_error without a code", answered(402, CARD_NO_CODE), NotCharged, Some("acquirer_answer_unreadable"), false),
            ("402 without a body", answered(402, ""), NotCharged, Some("acquirer_refused_request"), false),
            ("402 not a card error", answered(402, BAD_KEY), NotCharged, Some("acquirer_answer_unreadable"), false),
            ("temporary issuer failure", answered(402, PROCESSING_ERROR), NotCharged, None, false),
            ("401 key refused", answered(401, BAD_KEY), NotCharged, Some("lane_refused_key"), true),
            ("403 forbidden page", answered(403, HTML), NotCharged, Some("lane_refused_key"), true),
            ("404 Stripe-shaped", answered(404, NO_SUCH_URL), NotCharged, Some("lane_url_wrong"), true),
            ("404 HTML page", answered(404, HTML), NotCharged, Some("lane_url_wrong"), true),
            ("400 parameter invalid", answered(400, PARAM_INVALID), NotCharged, Some("acquirer_refused_request"), false),
            ("400 from a load balancer", answered(400, HTML), NotCharged, Some("acquirer_refused_request"), false),
            ("400 key reused with other parameters", answered(400, KEY_REUSED), Unavailable, Some("acquirer_key_conflict"), false),
            ("409 key in use", answered(409, KEY_IN_USE), Unavailable, None, false),
            ("429 rate limited", answered(429, RATE_LIMITED), NotCharged, None, true),
            ("500", answered(500, API_ERROR), Unavailable, None, true),
            ("502 HTML", answered(502, HTML), Unavailable, None, true),
            ("503", answered(503, API_ERROR), Unavailable, None, true),
            ("302 redirect", answered(302, ""), Unavailable, Some("acquirer_answer_unreadable"), false),
        ];
        for (name, attempt, result, alert_code, lane_down) in rows {
            let v = forward_outcome(attempt);
            assert_eq!(v.result, result, "{name}");
            assert_eq!(v.alert.as_ref().map(|a| a.code), alert_code, "{name}");
            assert_eq!(v.lane_down, lane_down, "{name}");
        }
    }

    /// The promise in one sentence: only the card's own refusal declines.
    #[test]
    fn only_card_errors_decline() {
        let bodies = [
            "",
            HTML,
            APPROVED,
            PROCESSING,
            CANCELED,
            PI_DECLINED,
            CARD_DECLINED,
            CARD_EXPIRED,
            CARD_NO_CODE,
            PROCESSING_ERROR,
            BAD_KEY,
            NO_SUCH_URL,
            PARAM_INVALID,
            KEY_REUSED,
            KEY_IN_USE,
            RATE_LIMITED,
            API_ERROR,
        ];
        for status in [
            200, 201, 302, 400, 401, 402, 403, 404, 409, 410, 422, 429, 500, 502, 503,
        ] {
            for body in bodies {
                let v = forward_outcome(answered(status, body));
                if let AcquirerResult::Declined { .. } = v.result {
                    let card_error = body == PI_DECLINED && (200..300).contains(&status)
                        || (body == CARD_DECLINED || body == CARD_EXPIRED)
                            && !matches!(status, 409 | 429 | 500..=599);
                    assert!(card_error, "{status} {body} declined");
                }
            }
        }
    }

    /// Alerts and logs never carry more than a status and a short code.
    #[test]
    fn alert_details_are_short_codes() {
        let v = forward_outcome(answered(401, BAD_KEY));
        let detail = v.alert.map(|a| a.detail).unwrap_or_default();
        assert_eq!(detail, "status 401 api_key_invalid");
    }

    #[rustfmt::skip]
    #[test]
    fn refund_table() {
        use RefundOutcome::Unavailable;
        const REFUNDED: &str =
            r#"{"id":"re_1","object":"refund","status":"succeeded","amount":1500}"#;
        const REFUND_FAILED: &str = r#"{"id":"re_2","object":"refund","status":"failed","amount":1500,"failure_reason":"expired_or_canceled_card"}"#;
        const ALREADY: &str = r#"{"error":{"type":"invalid_request_error","code":"charge_already_refunded","message":"Charge has already been refunded."}}"#;
        const NO_SUCH_INTENT: &str = r#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such payment_intent: 'pi_x'"}}"#;
        let failed = |r: &str| RefundOutcome::Failed { reason: r.into() };
        let sent = |status, body| RefundAttempt::Sent(Transport::Answered { status, body });
        let rows: Vec<(&str, RefundAttempt<'_>, RefundOutcome, Option<&str>, bool)> = vec![
            ("lane unknown", RefundAttempt::LaneUnknown, Unavailable, Some("lane_unknown"), false),
            ("call invalid", RefundAttempt::CallInvalid, Unavailable, Some("refund_request_invalid"), false),
            ("not sent", RefundAttempt::Sent(Transport::NotSent), Unavailable, None, true),
            ("no answer", RefundAttempt::Sent(Transport::NoAnswer), Unavailable, None, true),
            ("refunded", sent(200, REFUNDED), RefundOutcome::Succeeded { acquirer_refund_id: "re_1".into(), }, None, false),
            ("refund failed at the bank", sent(200, REFUND_FAILED), failed("refund_failed"), None, false),
            ("already refunded", sent(400, ALREADY), failed("charge_already_refunded"), None, false),
            ("401", sent(401, BAD_KEY), Unavailable, Some("lane_refused_key"), true),
            ("404 no such intent", sent(404, NO_SUCH_INTENT), Unavailable, Some("lane_url_wrong"), true),
            ("404 HTML", sent(404, HTML), Unavailable, Some("lane_url_wrong"), true),
            ("400 HTML", sent(400, HTML), Unavailable, Some("acquirer_answer_unreadable"), false),
            ("unreadable 2xx", sent(200, HTML), Unavailable, None, false),
            ("500", sent(500, API_ERROR), Unavailable, None, true),
            ("429", sent(429, RATE_LIMITED), Unavailable, None, true),
        ];
        for (name, attempt, result, alert_code, lane_down) in rows {
            let v = refund_outcome(attempt);
            assert_eq!(v.result, result, "{name}");
            assert_eq!(v.alert.as_ref().map(|a| a.code), alert_code, "{name}");
            assert_eq!(v.lane_down, lane_down, "{name}");
        }
    }
}
