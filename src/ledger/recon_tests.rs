//! Tests of reconciliation that runs by itself: when it is due, lost checkouts, known
//! states folded in, the report's totals and its signature.

use super::tests::{config, eur, hold_cmd, ledger, ok, queue_cmd, run, T0};
use super::*;
use crate::receipt::{self, ReceiptKeys, SignedReport};

const MIN: i64 = 60_000;

fn charge(id: &str, order: &str, amount: i64, lane: &str) -> AcquirerCharge {
    AcquirerCharge {
        id: id.into(),
        amount: MinorUnits(amount),
        currency: eur(),
        status: ChargeStatus::Succeeded,
        idempotency_key: None,
        order_id: Some(order.into()),
        refunded_amount: MinorUnits::ZERO,
        lane: lane.into(),
    }
}

fn reconcile_requests(out: &Outcome) -> Vec<ReconcileRequest> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reconcile(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn refunds_sent(out: &Outcome) -> Vec<RefundRequest> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::ForwardRefund(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// Feeds a listing back as the shell does; returns the run's result and the outcome.
fn feed(l: &mut EventLedger, charges: Vec<AcquirerCharge>, now: i64) -> (Reconciled, Outcome) {
    let out = run(
        l,
        Command::Reconcile {
            charges,
            listing: Listing {
                since_ms: l.reconcile_since_ms(),
                started_ms: now,
                truncated: false,
            },
            reason: ReconcileReason::Requested,
        },
        now,
    );
    match &out.reply {
        Ok(Reply::Reconciled { result }) => ((**result).clone(), out),
        other => panic!("expected a reconciliation, got {other:?}"),
    }
}

fn confirm(order: &str, charge_id: &str) -> Command {
    Command::Confirm {
        order_id: order.into(),
        charge_id: charge_id.into(),
        lane: None,
    }
}

fn approved(l: &mut EventLedger, order: &str, sku: &str, now: i64) {
    ok(l, hold_cmd(order, &[(sku, 1)], now + MIN), now);
    ok(l, confirm(order, &format!("ch_{order}")), now);
}

#[test]
fn reconciliation_is_due_after_a_lost_checkout_and_at_the_end_and_nothing_else() {
    let mut l = ledger();
    let end = config().end_ms;
    approved(&mut l, "paid", "beer", T0);
    assert_eq!(
        l.reconcile_trigger(),
        Some((end, ReconcileReason::EventEnd)),
        "a checkout that finished needs no reconciliation"
    );
    // A hold with no outcome: due LOST_CHECKOUT_AFTER_MS after it lapses.
    ok(&mut l, hold_cmd("o1", &[("beer", 1)], T0 + 2 * MIN), T0 + 1);
    let due = T0 + 2 * MIN + LOST_CHECKOUT_AFTER_MS;
    assert_eq!(
        l.reconcile_trigger(),
        Some((due, ReconcileReason::LostCheckouts))
    );
    assert_eq!(l.next_deadline(), Some(due));
    // Before then the alarm asks for nothing; the hold lapses on the way.
    let out = run(&mut l, Command::Alarm, due - 1);
    assert!(reconcile_requests(&out).is_empty());
    assert_eq!(l.order("o1").unwrap().state, OrderState::Abandoned);
    let out = run(&mut l, Command::Alarm, due);
    let asked = reconcile_requests(&out);
    assert_eq!(
        asked,
        vec![ReconcileRequest {
            since_ms: T0 - RECONCILE_MARGIN_MS,
            reason: ReconcileReason::LostCheckouts,
        }]
    );
    // One run at a time: a second wake while it is out asks for nothing more.
    assert!(reconcile_requests(&run(&mut l, Command::Alarm, due + 1)).is_empty());
    assert_eq!(l.next_deadline(), Some(due + RECONCILE_TIMEOUT_MS));
    // Its answer covers the lost checkout; the end of the event is next.
    feed(
        &mut l,
        vec![charge("ch_paid", "paid", 450, "primary")],
        due + 2,
    );
    assert_eq!(
        l.reconcile_trigger(),
        Some((end, ReconcileReason::EventEnd))
    );
    assert_eq!(l.next_deadline(), Some(end));
    let out = run(&mut l, Command::Alarm, end);
    assert_eq!(
        reconcile_requests(&out)[0].reason,
        ReconcileReason::EventEnd
    );
    feed(
        &mut l,
        vec![charge("ch_paid", "paid", 450, "primary")],
        end + 1,
    );
    assert_eq!(l.reconcile_trigger(), None);
    assert_eq!(l.next_deadline(), None);
    l.check_invariants().unwrap();
}

#[test]
fn a_burst_of_lost_checkouts_costs_a_run_a_minute() {
    let mut l = ledger();
    ok(&mut l, hold_cmd("o1", &[("beer", 1)], T0 + MIN), T0);
    ok(
        &mut l,
        hold_cmd("o2", &[("beer", 1)], T0 + MIN + 10_000),
        T0,
    );
    let first = T0 + MIN + LOST_CHECKOUT_AFTER_MS;
    assert_eq!(
        reconcile_requests(&run(&mut l, Command::Alarm, first)).len(),
        1
    );
    feed(&mut l, vec![], first);
    // o2 lapsed 10 s after o1: its run waits until a minute after the last one.
    assert_eq!(
        l.reconcile_trigger(),
        Some((
            first + RECONCILE_MIN_INTERVAL_MS,
            ReconcileReason::LostCheckouts
        ))
    );
    let out = run(&mut l, Command::Alarm, first + 10_000);
    assert!(reconcile_requests(&out).is_empty());
}

#[test]
fn a_run_that_never_answers_or_fails_is_asked_for_again() {
    let mut l = ledger();
    let end = config().end_ms;
    ok(&mut l, hold_cmd("o1", &[("beer", 1)], T0 + MIN), T0);
    assert_eq!(
        reconcile_requests(&run(&mut l, Command::Alarm, end)).len(),
        1
    );
    // The Worker died mid-listing: after the timeout the alarm asks again.
    let later = end + RECONCILE_TIMEOUT_MS;
    assert!(reconcile_requests(&run(&mut l, Command::Alarm, later - 1)).is_empty());
    assert_eq!(
        reconcile_requests(&run(&mut l, Command::Alarm, later)).len(),
        1
    );
    // A failed listing waits for a backoff, then is asked for again.
    ok(
        &mut l,
        Command::ReconcileFailed {
            reason: "acquirer_unavailable".into(),
        },
        later + 1,
    );
    let retry = l.next_deadline().unwrap();
    assert!(retry >= later + 1 + BACKOFF_BASE_MS, "{retry}");
    assert!(reconcile_requests(&run(&mut l, Command::Alarm, retry - 1)).is_empty());
    assert_eq!(
        reconcile_requests(&run(&mut l, Command::Alarm, retry)).len(),
        1
    );
}

#[test]
fn after_the_end_the_report_is_redone_once_the_books_change_and_settle() {
    let mut l = ledger();
    let end = config().end_ms;
    approved(&mut l, "o1", "shirt", T0);
    ok(&mut l, Command::Alarm, end);
    feed(&mut l, vec![charge("ch_o1", "o1", 2000, "primary")], end);
    assert_eq!(l.reconcile_trigger(), None);
    // A refund after the end: while it is out, nothing; once it settled, a run.
    let rule = RefundRule {
        allowed: true,
        window_ms: 30 * 24 * 60 * MIN,
        partial_allowed: true,
        may_queue_offline: true,
    };
    let refund = Command::RequestRefund {
        refund_id: "r1".into(),
        order_id: "o1".into(),
        amount: None,
        rule,
        acquirer_online: true,
    };
    ok(&mut l, refund, end + MIN);
    assert_eq!(l.reconcile_trigger(), None);
    ok(
        &mut l,
        Command::RefundResult {
            refund_id: "r1".into(),
            result: RefundOutcome::Succeeded {
                acquirer_refund_id: "re_1".into(),
            },
        },
        end + MIN + 1,
    );
    assert_eq!(
        l.reconcile_trigger(),
        Some((end + MIN + 1, ReconcileReason::BooksChanged))
    );
    let out = run(&mut l, Command::Alarm, end + MIN + 2);
    assert_eq!(
        reconcile_requests(&out)[0].reason,
        ReconcileReason::BooksChanged
    );
    let mut refunded = charge("ch_o1", "o1", 2000, "primary");
    refunded.refunded_amount = MinorUnits(2000);
    let (run_result, _) = feed(&mut l, vec![refunded], end + MIN + 3);
    let report = run_result.report;
    assert!(report.clean && report.end_of_event, "{report:?}");
    assert_eq!(report.totals.refunded, MinorUnits(2000));
    assert_eq!(l.reconcile_trigger(), None);
}

#[test]
fn a_lost_checkout_is_refunded_once_and_a_late_confirm_is_refused() {
    let mut l = ledger();
    ok(&mut l, hold_cmd("o1", &[("shirt", 1)], T0 + MIN), T0);
    let lost_at = T0 + MIN + LOST_CHECKOUT_AFTER_MS;
    // The acquirer charged on the "cheap" lane; the Worker died before Confirm.
    let charges = vec![charge("ch_1", "o1", 2000, "cheap")];
    // Too early (the hold lapsed only just): the charge is a difference, not yet lost.
    let (early, out) = feed(&mut l, charges.clone(), T0 + MIN + 1);
    assert!(early.lost.is_empty() && refunds_sent(&out).is_empty());
    assert_eq!(early.report.discrepancies.missing_at_edge, vec!["ch_1"]);
    let (result, out) = feed(&mut l, charges.clone(), lost_at);
    assert_eq!(result.lost.len(), 1);
    let o = l.order("o1").unwrap();
    assert_eq!(o.state, OrderState::Lost);
    assert_eq!(
        o.lane, "cheap",
        "refunded on the account that holds the money"
    );
    assert!(!o.stock_taken);
    assert_eq!(l.available("shirt"), 5, "a lost order never takes stock");
    let sent = refunds_sent(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].idempotency_key, "lost_ch_1");
    assert_eq!(sent[0].charge_id, "ch_1");
    assert_eq!(sent[0].amount, MinorUnits(2000));
    // The refund is on its way: not a difference.
    let report = &result.report;
    assert_eq!(report.discrepancies.lost_refunding, vec!["ch_1"]);
    assert!(report.clean, "{report:?}");
    // The slow checkout's Confirm arrives now: refused, so the buyer is never both sold
    // the goods and refunded (finding 15).
    let refused = run(&mut l, confirm("o1", "ch_1"), lost_at + 1).reply;
    assert!(
        matches!(refused, Err(LedgerError::InvalidTransition { .. })),
        "{refused:?}"
    );
    assert_eq!(l.order("o1").unwrap().state, OrderState::Lost);
    assert_eq!(l.counts("shirt").unwrap().sold, 0);
    // Another run with the same listing refunds nothing more.
    let (again, out) = feed(&mut l, charges, lost_at + 2);
    assert!(again.lost.is_empty() && refunds_sent(&out).is_empty());
    // Once the refund succeeded the charge is settled; the order stays lost.
    ok(
        &mut l,
        Command::RefundResult {
            refund_id: "lost_ch_1".into(),
            result: RefundOutcome::Succeeded {
                acquirer_refund_id: "re_1".into(),
            },
        },
        lost_at + 3,
    );
    assert_eq!(l.order("o1").unwrap().state, OrderState::Lost);
    let (settled, _) = feed(
        &mut l,
        vec![charge("ch_1", "o1", 2000, "cheap")],
        lost_at + 4,
    );
    let d = &settled.report.discrepancies;
    assert_eq!(d.refunded_unpaid, vec!["ch_1"]);
    assert!(d.lost_refunding.is_empty() && d.missing_at_edge.is_empty());
    assert_eq!(settled.report.totals.lost_refunded, MinorUnits(2000));
    l.check_invariants().unwrap();
}

#[test]
fn declined_orders_charges_are_lost_but_not_those_of_goods_handed_over() {
    let mut l = ledger();
    ok(&mut l, hold_cmd("o1", &[("beer", 1)], T0 + MIN), T0);
    ok(
        &mut l,
        Command::Release {
            order_id: "o1".into(),
            reason: "card_declined".into(),
        },
        T0,
    );
    // A stored payment declined at forwarding: the buyer already has the goods.
    ok(&mut l, hold_cmd("o2", &[("beer", 1)], T0 + MIN), T0);
    ok(&mut l, queue_cmd("a2", "o2", 450, "c"), T0);
    ok(
        &mut l,
        Command::ForwardResult {
            auth_id: "a2".into(),
            result: AcquirerResult::Declined {
                reason: "do_not_honor".into(),
            },
        },
        T0 + 1,
    );
    let (result, _) = feed(
        &mut l,
        vec![
            charge("ch_1", "o1", 450, "primary"),
            charge("ch_2", "o2", 450, "primary"),
        ],
        T0 + 2,
    );
    let lost: Vec<&str> = result.lost.iter().map(|x| x.order_id.as_str()).collect();
    assert_eq!(lost, vec!["o1"]);
    assert_eq!(l.order("o2").unwrap().state, OrderState::Declined);
    assert_eq!(result.report.discrepancies.missing_at_edge, vec!["ch_2"]);
    assert!(!result.report.clean);
    l.check_invariants().unwrap();
}

#[test]
fn known_states_are_folded_in_late_approvals_and_queued_charges() {
    let mut l = ledger();
    // a1 expires unforwarded, though its online attempt did charge (finding 9).
    ok(&mut l, hold_cmd("o1", &[("ticket", 1)], T0 + MIN), T0);
    let mut q = queue_cmd("a1", "o1", 1500, "c1");
    if let Command::QueueAuthorization(a) = &mut q {
        a.max_wait_ms = 10 * MIN;
        a.resolves_attempt = true;
    }
    ok(&mut l, q, T0);
    // a2 is still queued, and its online attempt charged too.
    ok(&mut l, hold_cmd("o2", &[("beer", 1)], T0 + MIN), T0);
    ok(&mut l, queue_cmd("a2", "o2", 450, "c2"), T0);
    ok(&mut l, Command::SyncNow, T0 + 11 * MIN);
    assert_eq!(l.order("o1").unwrap().state, OrderState::Expired);
    let mut by_key = charge("ch_1", "o1", 1500, "primary");
    by_key.order_id = None;
    by_key.idempotency_key = Some("idem-a1".into());
    let charges = vec![by_key, charge("ch_2", "o2", 450, "primary")];
    // Without folding, both would be charges the edge does not account for.
    let before = l.reconcile(&charges);
    assert_eq!(before.missing_at_edge, vec!["ch_1"]);
    assert_eq!(before.awaiting_forward, vec!["o2"]);
    let (result, out) = feed(&mut l, charges, T0 + 12 * MIN);
    assert_eq!(result.late_approvals, vec!["a1"]);
    let a1 = l.auth("a1").unwrap();
    assert!(a1.late_approval);
    assert_eq!(
        a1.state,
        AuthState::Forwarded {
            charge_id: "ch_1".into()
        }
    );
    assert_eq!(l.order("o1").unwrap().state, OrderState::Forwarded);
    assert!(out.effects.contains(&Effect::Notify {
        order_id: "o1".into(),
        state: OrderState::Forwarded,
    }));
    let d = &result.report.discrepancies;
    assert!(d.missing_at_edge.is_empty(), "{d:?}");
    assert_eq!(d.awaiting_forward, vec!["o2"]);
    assert_eq!(result.report.matched, 1);
    assert!(result.report.clean);
    l.check_invariants().unwrap();
}

/// An event with paid orders on two lanes, a refund, a lost checkout and a stored payment.
fn busy_event() -> (EventLedger, Vec<AcquirerCharge>, i64) {
    let mut l = ledger();
    ok(&mut l, hold_cmd("o1", &[("ticket", 2)], T0 + MIN), T0); // 3000
    ok(&mut l, confirm("o1", "ch_o1"), T0);
    ok(&mut l, hold_cmd("o2", &[("shirt", 1)], T0 + MIN), T0); // 2000
    ok(
        &mut l,
        Command::Confirm {
            order_id: "o2".into(),
            charge_id: "ch_o2".into(),
            lane: Some("cheap".into()),
        },
        T0,
    );
    let rule = RefundRule {
        allowed: true,
        window_ms: 30 * 24 * 60 * MIN,
        partial_allowed: true,
        may_queue_offline: true,
    };
    ok(
        &mut l,
        Command::RequestRefund {
            refund_id: "r1".into(),
            order_id: "o2".into(),
            amount: Some(MinorUnits(500)),
            rule,
            acquirer_online: true,
        },
        T0 + 1,
    );
    ok(
        &mut l,
        Command::RefundResult {
            refund_id: "r1".into(),
            result: RefundOutcome::Succeeded {
                acquirer_refund_id: "re_1".into(),
            },
        },
        T0 + 2,
    );
    ok(&mut l, hold_cmd("o3", &[("beer", 1)], T0 + MIN), T0); // lost, 450
    ok(&mut l, hold_cmd("o4", &[("beer", 2)], T0 + MIN), T0); // stored, 900
    ok(&mut l, queue_cmd("a4", "o4", 900, "c"), T0);
    let mut o2 = charge("ch_o2", "o2", 2000, "cheap");
    o2.refunded_amount = MinorUnits(500);
    let charges = vec![
        charge("ch_o1", "o1", 3000, "primary"),
        o2,
        charge("ch_o3", "o3", 450, "primary"),
    ];
    (l, charges, T0 + MIN + LOST_CHECKOUT_AFTER_MS)
}

#[test]
fn the_report_adds_up_per_lane_and_in_total() {
    let (mut l, charges, now) = busy_event();
    let (result, _) = feed(&mut l, charges, now);
    let r = result.report;
    assert_eq!(r.event_id, "evt_1");
    assert_eq!(r.merchant_id, "m_1");
    assert_eq!(
        r.covered,
        TimeRange {
            from_ms: T0 - RECONCILE_MARGIN_MS,
            to_ms: now,
        }
    );
    assert!(!r.truncated && r.clean && !r.end_of_event, "{r:?}");
    let t = &r.totals;
    assert_eq!(t.orders, 4);
    assert_eq!(t.paid_orders, 2);
    assert_eq!(t.sales, MinorUnits(5000));
    assert_eq!(t.refunded, MinorUnits(500));
    assert_eq!(t.net, MinorUnits(4500));
    assert_eq!(t.awaiting_forward, MinorUnits(900));
    assert_eq!(t.acquirer_charges, 3);
    assert_eq!(t.acquirer_charged, MinorUnits(5450));
    assert_eq!(t.acquirer_refunded, MinorUnits(500));
    assert_eq!(
        (t.lost_charges, t.lost_charged, t.lost_refunded),
        (1, MinorUnits(450), MinorUnits::ZERO)
    );
    assert_eq!(
        r.lanes,
        vec![
            LaneTotals {
                lane: "cheap".into(),
                charges: 1,
                charged: MinorUnits(2000),
                refunded: MinorUnits(500),
            },
            LaneTotals {
                lane: "primary".into(),
                charges: 2,
                charged: MinorUnits(3450),
                refunded: MinorUnits::ZERO,
            },
        ]
    );
    assert_eq!(
        r.refunds,
        RefundTotals {
            succeeded: 1,
            succeeded_amount: MinorUnits(500),
            pending: 0,
            pending_amount: MinorUnits::ZERO,
            failed: 0,
        }
    );
    assert_eq!(r.matched, 2);
    assert_eq!(r.orders_by_state.get(&OrderState::Lost), Some(&1));
    assert_eq!(r.discrepancies.lost_refunding, vec!["ch_o3"]);
    assert_eq!(r.discrepancies.awaiting_forward, vec!["o4"]);
}

#[test]
fn a_truncated_listing_is_never_a_clean_report() {
    let (mut l, charges, now) = busy_event();
    let out = run(
        &mut l,
        Command::Reconcile {
            charges,
            listing: Listing {
                since_ms: 0,
                started_ms: now,
                truncated: true,
            },
            reason: ReconcileReason::EventEnd,
        },
        now,
    );
    let Ok(Reply::Reconciled { result }) = out.reply else {
        panic!("{:?}", out.reply)
    };
    assert!(result.report.truncated);
    assert!(!result.report.clean);
}

fn keys(kid: &str, byte: u8) -> ReceiptKeys {
    ReceiptKeys::from_raw(vec![(kid.into(), vec![byte; 32])]).unwrap()
}

#[test]
fn the_report_is_signed_and_a_changed_byte_is_refused() {
    let (mut l, charges, now) = busy_event();
    let (result, _) = feed(&mut l, charges, now);
    let k = keys("r2", 7);
    let signed = receipt::sign_report(result.report.clone(), &k).unwrap();
    let json = signed.to_json().unwrap();
    let back = SignedReport::from_json(&json).unwrap();
    assert_eq!(back.report, result.report);
    receipt::verify_report(&back, &k).unwrap();
    // One byte changed anywhere in the report's totals: refused.
    let tampered = json.replacen("\"sales\":5000", "\"sales\":5001", 1);
    assert_ne!(tampered, json);
    let t = SignedReport::from_json(&tampered).unwrap();
    assert_eq!(
        receipt::verify_report(&t, &k),
        Err(receipt::ReceiptError::Tampered)
    );
    assert_eq!(
        receipt::ReceiptError::Tampered.to_report_api().code,
        "report_tampered"
    );
    // A flag flipped, a field added, another key: refused too.
    let flipped = json.replacen("\"clean\":true", "\"clean\":false", 1);
    assert_ne!(flipped, json);
    assert_eq!(
        receipt::verify_report(&SignedReport::from_json(&flipped).unwrap(), &k),
        Err(receipt::ReceiptError::Tampered)
    );
    let added = json.replacen("\"clean\":true", "\"clean\":true,\"note\":1", 1);
    assert!(SignedReport::from_json(&added).is_err());
    assert_eq!(
        receipt::verify_report(&back, &keys("r2", 8)),
        Err(receipt::ReceiptError::Tampered)
    );
    assert_eq!(
        receipt::verify_report(&back, &keys("r3", 7)),
        Err(receipt::ReceiptError::UnknownKey)
    );
}

#[test]
fn a_lane_listing_keeps_this_events_intents_only() {
    use crate::acquirer::{ChargeRecord, ChargeStatus as S};
    let rec =
        |id: &str, event: Option<&str>, currency: &str, status: S, received: i64| ChargeRecord {
            payment_intent_id: id.into(),
            amount: MinorUnits(1500),
            currency: currency.into(),
            status,
            amount_received: MinorUnits(received),
            amount_refunded: Some(MinorUnits(200)),
            order_id: Some("o1".into()),
            event_id: event.map(String::from),
            idempotency_key: Some("k1".into()),
            created: 1,
        };
    let records = vec![
        rec("pi_1", Some("evt_1"), "EUR", S::Succeeded, 1400),
        rec("pi_2", Some("evt_2"), "EUR", S::Succeeded, 1500),
        rec("pi_3", None, "EUR", S::Succeeded, 1500),
        rec("pi_4", Some("evt_1"), "E?R", S::Succeeded, 1500),
        rec("pi_5", Some("evt_1"), "EUR", S::Processing, 0),
        rec("pi_6", Some("evt_1"), "EUR", S::RequiresPaymentMethod, 0),
    ];
    let charges = AcquirerCharge::of_event(records, "evt_1", "fast");
    let got: Vec<(&str, ChargeStatus, i64)> = charges
        .iter()
        .map(|c| (c.id.as_str(), c.status, c.amount.0))
        .collect();
    assert_eq!(
        got,
        vec![
            ("pi_1", ChargeStatus::Succeeded, 1400),
            ("pi_5", ChargeStatus::Pending, 1500),
            ("pi_6", ChargeStatus::Failed, 1500),
        ]
    );
    assert!(charges.iter().all(|c| c.lane == "fast"
        && c.refunded_amount == MinorUnits(200)
        && c.order_id.as_deref() == Some("o1")
        && c.idempotency_key.as_deref() == Some("k1")));
}
