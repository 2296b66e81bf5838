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
        decline_code: Option<String>,
        message: &'static str,
    },
    /// The acquirer provably did not process it (connection refused before sending, 429,
    /// a temporary failure the acquirer reports as "nothing done"): another lane may try.
    NotProcessed { why: String },
    /// The acquirer refused *our* request (our key, our account, our parameters, a wrong
    /// URL): nothing was charged, and it is not the card's fault. `alert` is the stable
    /// code the operator sees (`lane_refused_key`, `lane_url_wrong`, ...).
    Misconfigured {
        status: u16,
        code: String,
        alert: &'static str,
    },
    /// The acquirer may have acted on it: a timeout, a lost connection, a 5xx, a 409 for
    /// a key in use, a 400 for a key reused with other parameters, a `processing` intent,
    /// an unreadable 2xx. Never tried elsewhere. `alert` is set when the operator should
    /// look (an answer poptill cannot read), not for an acquirer that is merely slow.
    Unknown {
        why: String,
        alert: Option<&'static str>,
    },
}

impl AttemptResult {
    /// Whether the next lane may be tried after this result.
    pub fn allows_failover(&self) -> bool {
        matches!(
            self,
            AttemptResult::NotProcessed { .. } | AttemptResult::Misconfigured { .. }
        )
    }

    /// What this result means for a stored payment (`crate::ledger::AcquirerResult`):
    /// charged, declined with the merchant's code, provably not charged, or unknown. The
    /// forwarding of stored payments and a checkout's attempt that outlived its buyer's
    /// answer both record it so.
    pub fn stored_result(&self) -> crate::ledger::AcquirerResult {
        use crate::ledger::AcquirerResult;
        match self {
            AttemptResult::Approved {
                payment_intent_id, ..
            } => AcquirerResult::Approved {
                charge_id: payment_intent_id.clone(),
            },
            AttemptResult::Declined {
                reason,
                code,
                decline_code,
                ..
            } => AcquirerResult::Declined {
                reason: merchant_decline_code(*reason, code, decline_code.as_deref()),
            },
            AttemptResult::NotProcessed { .. } | AttemptResult::Misconfigured { .. } => {
                AcquirerResult::NotCharged
            }
            AttemptResult::Unknown { .. } => AcquirerResult::Unavailable,
        }
    }

    /// A short ASCII word for the routing header and logs.
    pub fn label(&self) -> String {
        match self {
            AttemptResult::Approved { .. } => "approved".into(),
            AttemptResult::Declined { reason, .. } => format!("declined ({})", reason.as_str()),
            AttemptResult::NotProcessed { why } => why.clone(),
            AttemptResult::Misconfigured { code, .. } => format!("refused the request ({code})"),
            AttemptResult::Unknown { why, .. } => why.clone(),
        }
    }
}

/// The code a merchant's records keep for a decline: the acquirer's precise decline code
/// (`lost_card`, `insufficient_funds`), else its error code, else the buyer-facing reason.
/// The buyer only ever sees `reason` (neutral for fraud-related codes, so a card tester
/// learns nothing); the export and the metrics keep this. Lowercase ASCII, at most 48.
pub fn merchant_decline_code(
    reason: DeclineReason,
    code: &str,
    decline_code: Option<&str>,
) -> String {
    let ok = |c: &&str| {
        !c.is_empty()
            && c.len() <= 48
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    decline_code
        .filter(ok)
        .or(Some(code).filter(ok))
        .unwrap_or(reason.as_str())
        .to_string()
}

/// Whether an error answer is a Stripe card error that names its reason (`type:
/// card_error` with a `code` or a `decline_code`): the only error answer that declines.
fn is_card_error(body: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let field = |name: &str| {
        v.get("error")
            .and_then(|e| e.get(name))
            .and_then(|c| c.as_str())
            .filter(|c| !c.is_empty())
    };
    field("type") == Some("card_error")
        && (field("code").is_some() || field("decline_code").is_some())
}

/// The one table from a transport result (status and body, or the failure) to its meaning.
/// The online checkout and the forwarding of stored payments
/// (`crate::ledger::forward_outcome`) both read answers through it.
pub fn classify(sent: &Sent) -> AttemptResult {
    let unknown = |why: &str| AttemptResult::Unknown {
        why: why.into(),
        alert: None,
    };
    let (status, body) = match sent {
        Err(Transport::Refused) => {
            return AttemptResult::NotProcessed {
                why: "connection refused".into(),
            }
        }
        Err(Transport::Timeout) => return unknown("timeout"),
        Err(Transport::Lost) => return unknown("connection lost"),
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
        // A payment intent that needs another payment method is the card's answer; an
        // error answer declines only as a card error with Stripe's code for it.
        AuthorizeOutcome::Declined {
            reason,
            code,
            decline_code,
            message,
            ..
        } if two_xx || is_card_error(body) => AttemptResult::Declined {
            reason,
            code,
            decline_code,
            message,
        },
        AuthorizeOutcome::Declined { .. } => AttemptResult::Misconfigured {
            status,
            code: "no_card_error_code".into(),
            alert: "acquirer_answer_unreadable",
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
        // 5xx and 409 (a key in use) are the acquirer's own answers; a `processing`
        // intent is normal. Anything else (an unreadable 2xx, a redirect) needs a look.
        AuthorizeOutcome::Retryable { reason, .. } => {
            let expected =
                status >= 500 || status == 409 || (two_xx && reason.contains("processing"));
            AttemptResult::Unknown {
                why: reason,
                alert: (!expected).then_some("acquirer_answer_unreadable"),
            }
        }
        // A 2xx we cannot place (an unexpected intent status) may still have charged.
        AuthorizeOutcome::Invalid { code, .. } if two_xx => AttemptResult::Unknown {
            why: code,
            alert: Some("acquirer_answer_unexpected"),
        },
        // The key was used before with other parameters: some request under it exists,
        // so its outcome is unknown and it must never be sent elsewhere.
        AuthorizeOutcome::Invalid { code, .. } if code == "idempotency_error" => {
            AttemptResult::Unknown {
                why: code,
                alert: Some("acquirer_key_conflict"),
            }
        }
        AuthorizeOutcome::Invalid { status, code, .. } => AttemptResult::Misconfigured {
            status,
            code,
            alert: match status {
                401 | 403 => "lane_refused_key",
                404 => "lane_url_wrong",
                _ => "acquirer_refused_request",
            },
        },
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

    #[test]
    fn a_buyer_hears_a_neutral_decline_while_the_merchant_keeps_the_acquirers_code() {
        // Card testers learn from decline codes; the buyer's sentence stays neutral for
        // fraud-related ones, the merchant's records keep what the issuer said.
        for (dc, buyer, kept) in [
            ("stolen_card", "card_declined", "stolen_card"),
            ("lost_card", "card_declined", "lost_card"),
            ("fraudulent", "card_declined", "fraudulent"),
            (
                "insufficient_funds",
                "insufficient_funds",
                "insufficient_funds",
            ),
        ] {
            let body = format!(
                r#"{{"error":{{"type":"card_error","code":"card_declined","decline_code":"{dc}","message":"Your card was declined."}}}}"#
            );
            let AttemptResult::Declined {
                reason,
                code,
                decline_code,
                message,
            } = classify(&Ok((402, body)))
            else {
                panic!("{dc}: not a decline");
            };
            assert_eq!(reason.as_str(), buyer, "{dc}");
            assert!(
                !message.contains("stolen")
                    && !message.contains("lost")
                    && !message.contains("fraud")
            );
            assert_eq!(
                merchant_decline_code(reason, &code, decline_code.as_deref()),
                kept
            );
        }
        // Codes that are not plain identifiers are never kept as they came.
        assert_eq!(
            merchant_decline_code(DeclineReason::CardDeclined, "Bad Code!", Some("x\ny")),
            "card_declined"
        );
    }

    #[test]
    fn a_key_reused_with_other_parameters_is_unknown_and_never_fails_over() {
        // Some request under the key exists at the acquirer: another lane could charge twice.
        let body = r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters they were first used with."}}"#;
        let r = classify(&Ok((400, body.into())));
        assert!(
            matches!(
                r,
                AttemptResult::Unknown {
                    alert: Some("acquirer_key_conflict"),
                    ..
                }
            ),
            "{r:?}"
        );
        assert!(!r.allows_failover());
    }

    #[test]
    fn only_a_card_error_with_a_code_declines_the_buyer() {
        let with_code = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds"}}"#;
        let without = r#"{"error":{"type":"card_error","message":"Declined."}}"#;
        let bad_key = r#"{"error":{"type":"invalid_request_error","code":"api_key_invalid"}}"#;
        assert!(matches!(
            classify(&Ok((402, with_code.into()))),
            AttemptResult::Declined { .. }
        ));
        for body in [without, bad_key] {
            let r = classify(&Ok((402, body.into())));
            assert!(
                matches!(
                    r,
                    AttemptResult::Misconfigured {
                        alert: "acquirer_answer_unreadable",
                        ..
                    }
                ),
                "{body}: {r:?}"
            );
        }
    }
}
