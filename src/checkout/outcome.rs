//! The one outcome rule: what an acquirer answer, or the lack of one, means for a payment.
//!
//! Every caller that sends a payment to an acquirer (the online checkout, the router's
//! bookkeeping, forwarding of stored payments) asks [`classify`]. The rule that keeps a
//! card from being charged twice lives here and nowhere else: an attempt may be repeated
//! on *another* lane only when the acquirer provably did not act on it
//! ([`AttemptResult::NotProcessed`], [`AttemptResult::Misconfigured`]); anything that may
//! have happened after the request bytes left is [`AttemptResult::Unknown`] and is
//! completed later on the same lane with the same idempotency key.

use crate::acquirer::{self, AuthorizeOutcome, DeclineReason};
use crate::routing::{Outcome as RouteOutcome, RetryReason};

/// How sending a request failed, as the shell's transport saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The connection was refused (or the request could not be built or started): not
    /// one byte of the request reached the acquirer.
    Refused,
    /// No complete answer within the deadline, after the request was sent.
    Timeout,
    /// The connection failed after the request left: reset, closed mid-answer, or the
    /// answer's body could not be read.
    Lost,
}

/// What the shell got back for one acquirer request: the status and body, or why not.
pub type Sent = Result<(u16, String), Transport>;

/// The meaning of one authorization attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// Charged (or authorized for a later capture).
    Approved {
        payment_intent_id: String,
        captured: bool,
    },
    /// The card said no. `code`/`decline_code` are the acquirer's, for the merchant;
    /// `message` is the sentence a buyer may see.
    Declined {
        reason: DeclineReason,
        code: String,
        message: &'static str,
    },
    /// The acquirer provably did not process it (connection refused before sending, 429,
    /// a temporary failure the acquirer reports as "nothing done"): another lane may try.
    NotProcessed { why: String },
    /// The acquirer refused *our* request (our key, our account, our parameters, a wrong
    /// URL): nothing was charged, and it is not the card's fault.
    Misconfigured { status: u16, code: String },
    /// The acquirer may have acted on it: a timeout, a lost connection, a 5xx, a 409 for
    /// a key in use, a `processing` intent, an unreadable 2xx. Never tried elsewhere.
    Unknown { why: String },
}

impl AttemptResult {
    /// Whether the next lane may be tried after this result.
    pub fn allows_failover(&self) -> bool {
        matches!(
            self,
            AttemptResult::NotProcessed { .. } | AttemptResult::Misconfigured { .. }
        )
    }

    /// A short ASCII word for the routing header and logs.
    pub fn label(&self) -> String {
        match self {
            AttemptResult::Approved { .. } => "approved".into(),
            AttemptResult::Declined { reason, .. } => format!("declined ({})", reason.as_str()),
            AttemptResult::NotProcessed { why } => why.clone(),
            AttemptResult::Misconfigured { code, .. } => format!("refused the request ({code})"),
            AttemptResult::Unknown { why } => why.clone(),
        }
    }
}

/// The one table from a transport result (status and body, or the failure) to its meaning.
pub fn classify(sent: &Sent) -> AttemptResult {
    let (status, body) = match sent {
        Err(Transport::Refused) => {
            return AttemptResult::NotProcessed {
                why: "connection refused".into(),
            }
        }
        Err(Transport::Timeout) => {
            return AttemptResult::Unknown {
                why: "timeout".into(),
            }
        }
        Err(Transport::Lost) => {
            return AttemptResult::Unknown {
                why: "connection lost".into(),
            }
        }
        Ok((status, body)) => (*status, body.as_str()),
    };
    let two_xx = (200..300).contains(&status);
    match acquirer::parse_authorize(status, body) {
        AuthorizeOutcome::Approved {
            payment_intent_id,
            captured,
        } => AttemptResult::Approved {
            payment_intent_id,
            captured,
        },
        AuthorizeOutcome::Declined {
            reason,
            code,
            message,
            ..
        } => AttemptResult::Declined {
            reason,
            code,
            message,
        },
        // A temporary decline (processing_error and the like): the acquirer ran the
        // attempt and it failed; nothing was charged.
        AuthorizeOutcome::Retryable {
            reason,
            new_attempt: true,
        } => AttemptResult::NotProcessed { why: reason },
        // Rate limited: Stripe refuses a 429 before doing anything.
        AuthorizeOutcome::Retryable { .. } if status == 429 => AttemptResult::NotProcessed {
            why: "rate limited".into(),
        },
        AuthorizeOutcome::Retryable { reason, .. } => AttemptResult::Unknown { why: reason },
        // A 2xx we cannot place (an unexpected intent status) may still have charged.
        AuthorizeOutcome::Invalid { code, .. } if two_xx => AttemptResult::Unknown { why: code },
        AuthorizeOutcome::Invalid { status, code, .. } => {
            AttemptResult::Misconfigured { status, code }
        }
    }
}

/// What the router learns from one attempt (for its limits, latency and breakers).
pub fn route_outcome(sent: &Sent, result: &AttemptResult) -> RouteOutcome {
    match result {
        AttemptResult::Approved { .. } => RouteOutcome::Ok,
        AttemptResult::Declined { .. } => RouteOutcome::Declined,
        AttemptResult::NotProcessed { .. } => RouteOutcome::Retryable(match sent {
            Ok((429, _)) => RetryReason::RateLimited,
            Ok(_) => RetryReason::ServerError,
            Err(_) => RetryReason::ConnectionRefused,
        }),
        AttemptResult::Misconfigured { .. } => RouteOutcome::Retryable(RetryReason::ServerError),
        AttemptResult::Unknown { .. } => RouteOutcome::Retryable(match sent {
            Err(Transport::Timeout) => RetryReason::Timeout,
            _ => RetryReason::ServerError,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pi(status: &str) -> String {
        format!(
            r#"{{"id":"pi_1","object":"payment_intent","status":"{status}","amount":100,"currency":"eur"}}"#
        )
    }

    #[test]
    fn transport_failures_after_sending_are_unknown_and_only_refusal_fails_over() {
        assert!(classify(&Err(Transport::Refused)).allows_failover());
        for t in [Transport::Timeout, Transport::Lost] {
            let r = classify(&Err(t));
            assert!(matches!(r, AttemptResult::Unknown { .. }), "{t:?}: {r:?}");
            assert!(!r.allows_failover());
        }
    }

    #[test]
    fn every_answer_that_may_hide_a_charge_is_unknown() {
        let cases: Vec<(u16, String)> = vec![
            (200, pi("processing")),
            (200, "{not json".into()),
            (
                200,
                r#"{"id":"pi_1","object":"payment_intent","status":"weird"}"#.into(),
            ),
            (201, String::new()),
            (
                500,
                r#"{"error":{"type":"api_error","message":"x"}}"#.into(),
            ),
            (502, "bad gateway".into()),
            (503, String::new()),
            (
                409,
                r#"{"error":{"type":"idempotency_error","code":"idempotency_key_in_use"}}"#.into(),
            ),
        ];
        for (status, body) in cases {
            let r = classify(&Ok((status, body.clone())));
            assert!(
                matches!(r, AttemptResult::Unknown { .. }),
                "{status} {body}: {r:?}"
            );
            assert!(!r.allows_failover());
        }
    }

    #[test]
    fn approvals_declines_and_refusals() {
        assert!(matches!(
            classify(&Ok((200, pi("succeeded")))),
            AttemptResult::Approved { captured: true, .. }
        ));
        assert!(matches!(
            classify(&Ok((200, pi("requires_capture")))),
            AttemptResult::Approved {
                captured: false,
                ..
            }
        ));
        let declined = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"generic_decline","message":"x"}}"#;
        assert!(matches!(
            classify(&Ok((402, declined.into()))),
            AttemptResult::Declined { .. }
        ));
        let rate = r#"{"error":{"type":"invalid_request_error","code":"rate_limit"}}"#;
        let r = classify(&Ok((429, rate.into())));
        assert!(matches!(r, AttemptResult::NotProcessed { .. }), "{r:?}");
        for status in [400u16, 401, 403, 404] {
            let body = r#"{"error":{"type":"invalid_request_error","code":"parameter_invalid","message":"x"}}"#;
            let r = classify(&Ok((status, body.into())));
            assert!(
                matches!(r, AttemptResult::Misconfigured { .. }),
                "{status}: {r:?}"
            );
            assert!(r.allows_failover());
        }
        let r = classify(&Ok((404, "<html>not found</html>".into())));
        assert!(matches!(r, AttemptResult::Misconfigured { .. }), "{r:?}");
    }
}
