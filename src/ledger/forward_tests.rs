//! Tests of store-and-forward under failures that are not the card's: payments kept with
//! their card while forwarding is refused, and the acquirer key's 24-hour window.

use super::tests::{hold_cmd, ledger, ok, queue_cmd, run, T0};
use super::*;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn forwards(out: &Outcome) -> Vec<ForwardRequest> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Forward(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn stored(l: &mut EventLedger, auth: &str, order: &str, resolving: bool, max_wait_ms: i64) {
    ok(l, hold_cmd(order, &[("beer", 1)], T0 + MIN), T0);
    let mut cmd = queue_cmd(auth, order, 450, "card_a");
    if let Command::QueueAuthorization(q) = &mut cmd {
        q.resolves_attempt = resolving;
        q.max_wait_ms = max_wait_ms;
    }
    ok(l, cmd, T0);
}

/// Sends every due forward at `now` and answers each with `result` one second later.
fn forward_round(l: &mut EventLedger, now: i64, result: &AcquirerResult) -> usize {
    let out = run(l, Command::SyncNow, now);
    let sent = forwards(&out);
    for f in &sent {
        ok(
            l,
            Command::ForwardResult {
                auth_id: f.auth_id.clone(),
                result: result.clone(),
            },
            now + 1_000,
        );
    }
    sent.len()
}

#[test]
fn a_forward_that_charged_nothing_keeps_the_payment_and_its_card_until_it_expires() {
    let mut l = ledger();
    stored(&mut l, "a1", "o1", false, MAX_OFFLINE_WAIT_MS);
    // Thirty hours of a lane answering 404 (or a missing KEK): every attempt is refused
    // before any charge. The payment stays queued with its sealed card.
    let mut now = T0 + MIN;
    while now < T0 + 30 * HOUR {
        assert_eq!(forward_round(&mut l, now, &AcquirerResult::NotCharged), 1);
        now += 2 * HOUR;
    }
    let a = l.auth("a1").unwrap();
    assert_eq!(a.state, AuthState::Queued);
    assert!(a.sealed_card.is_some());
    assert_eq!(a.key_sent_ms, None, "nothing reached the acquirer");
    assert_eq!(a.view().expires_at_ms, T0 + MAX_OFFLINE_WAIT_MS);
    assert_eq!(l.order("o1").unwrap().state, OrderState::Queued);
    l.check_invariants().unwrap();
    // The lane is fixed: the next forward charges.
    ok(
        &mut l,
        Command::ForwardResult {
            auth_id: "a1".into(),
            result: AcquirerResult::Approved {
                charge_id: "pi_1".into(),
            },
        },
        now,
    );
    assert_eq!(l.order("o1").unwrap().state, OrderState::Forwarded);
    assert!(l.auth("a1").unwrap().sealed_card.is_none());
}

#[test]
fn a_resolving_payment_is_forwarded_only_within_its_key_window_then_left_to_reconciliation() {
    let mut l = ledger();
    // The checkout asks for the longest wait; the key's window is shorter.
    stored(&mut l, "a1", "o1", true, MAX_OFFLINE_WAIT_MS);
    let a = l.auth("a1").unwrap();
    assert_eq!(a.key_sent_ms, Some(T0), "the online attempt used the key");
    assert_eq!(a.view().expires_at_ms, T0 + KEY_WINDOW_MS);
    const { assert!(KEY_WINDOW_MS < 24 * HOUR) };
    // The lane stays unknown-outcome (timeouts) all day.
    let mut now = T0 + MIN;
    while now < T0 + KEY_WINDOW_MS - HOUR {
        assert_eq!(forward_round(&mut l, now, &AcquirerResult::Unavailable), 1);
        now += 3 * HOUR;
    }
    // The last forward leaves inside the window...
    let last = T0 + KEY_WINDOW_MS - 1;
    assert_eq!(forwards(&run(&mut l, Command::SyncNow, last)).len(), 1);
    ok(
        &mut l,
        Command::ForwardResult {
            auth_id: "a1".into(),
            result: AcquirerResult::Unavailable,
        },
        last + 500,
    );
    // ...and after the window nothing is sent under the key again: the payment expires,
    // its card is gone, and the alarm no longer waits for it.
    let out = run(&mut l, Command::SyncNow, T0 + KEY_WINDOW_MS + 1_000);
    assert!(forwards(&out).is_empty());
    let a = l.auth("a1").unwrap();
    assert_eq!(a.state, AuthState::Expired);
    assert!(a.ends_at_key_window());
    assert!(a.sealed_card.is_none());
    // Only the end-of-event reconciliation is left on the clock.
    assert!(l.next_deadline().is_none_or(|d| d == l.config().end_ms));
    for later in [25 * HOUR, 48 * HOUR, 71 * HOUR] {
        assert!(forwards(&run(&mut l, Command::SyncNow, T0 + later)).is_empty());
    }
    // Reconciliation finds the charge the online attempt made and records it.
    ok(
        &mut l,
        Command::ForwardResult {
            auth_id: "a1".into(),
            result: AcquirerResult::Approved {
                charge_id: "pi_9".into(),
            },
        },
        T0 + 72 * HOUR,
    );
    let a = l.auth("a1").unwrap();
    assert!(a.late_approval);
    assert_eq!(l.order("o1").unwrap().state, OrderState::Forwarded);
    l.check_invariants().unwrap();
}

#[test]
fn a_forward_of_unknown_outcome_starts_the_key_window_of_a_plain_stored_payment() {
    let mut l = ledger();
    stored(&mut l, "a1", "o1", false, MAX_OFFLINE_WAIT_MS);
    // Refused for a day: no window yet.
    assert_eq!(
        forward_round(&mut l, T0 + 24 * HOUR, &AcquirerResult::NotCharged),
        1
    );
    assert_eq!(l.auth("a1").unwrap().key_sent_ms, None);
    // Then a timeout: this request may have charged, so the key's window starts at it.
    let sent = T0 + 30 * HOUR;
    assert_eq!(forward_round(&mut l, sent, &AcquirerResult::Unavailable), 1);
    let a = l.auth("a1").unwrap();
    assert_eq!(a.key_sent_ms, Some(sent));
    assert_eq!(a.deadline_ms(), sent + KEY_WINDOW_MS);
    // Later answers do not move it.
    assert_eq!(
        forward_round(&mut l, sent + 2 * HOUR, &AcquirerResult::Unavailable),
        1
    );
    assert_eq!(l.auth("a1").unwrap().key_sent_ms, Some(sent));
    assert_eq!(
        l.next_deadline().map(|d| d <= sent + KEY_WINDOW_MS),
        Some(true)
    );
    run(&mut l, Command::SyncNow, sent + KEY_WINDOW_MS);
    assert_eq!(l.auth("a1").unwrap().state, AuthState::Expired);
    assert_eq!(l.order("o1").unwrap().state, OrderState::Expired);
}

#[test]
fn a_forward_that_never_answered_starts_the_window_at_its_send() {
    let mut l = ledger();
    stored(&mut l, "a1", "o1", false, MAX_OFFLINE_WAIT_MS);
    let sent = T0 + HOUR;
    assert_eq!(forwards(&run(&mut l, Command::SyncNow, sent)).len(), 1);
    // No answer (the Worker died): after the forward's window it is due again.
    run(&mut l, Command::Alarm, sent + FORWARD_TIMEOUT_MS);
    assert_eq!(l.auth("a1").unwrap().key_sent_ms, Some(sent));
    assert_eq!(l.auth("a1").unwrap().deadline_ms(), sent + KEY_WINDOW_MS);
}

#[test]
fn a_refused_attempt_backs_off_like_an_unknown_one() {
    let mut l = ledger();
    stored(&mut l, "a1", "o1", false, HOUR);
    assert_eq!(
        forward_round(&mut l, T0 + MIN, &AcquirerResult::NotCharged),
        1
    );
    let a = l.auth("a1").unwrap();
    assert_eq!(a.in_flight_until, None);
    assert!(a.next_attempt_ms > T0 + MIN + 1_000);
    // And at its own expiry it expires as before.
    run(&mut l, Command::SyncNow, T0 + HOUR);
    assert_eq!(l.auth("a1").unwrap().state, AuthState::Expired);
    assert!(!l.auth("a1").unwrap().ends_at_key_window());
}
