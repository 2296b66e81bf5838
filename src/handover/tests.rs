//! The handover rules with a fake clock: who may claim a session, how a checkout settles
//! it, when the link lapses, and what callers see of it.

use super::*;
use crate::checkout::request::CheckoutKey;
use crate::ledger::OrderState::*;

pub(crate) const T0: i64 = 1_750_000_000_000;
const TTL: i64 = 600_000;

/// A fresh session opened at `T0` (also the protocol tests' fixture).
pub(crate) fn session() -> HandoverSession {
    HandoverSession::open(
        HandoverOpen {
            session_id: "hs_0123456789abcdef_evt_1".into(),
            event_id: "evt_1".into(),
            items: vec![CartItem {
                sku: "tee".into(),
                quantity: 2,
            }],
            total: MinorUnits(5000),
            currency: Currency::parse("EUR").unwrap(),
            ttl_ms: TTL,
        },
        T0,
    )
}

fn key(idem: &str) -> CheckoutKey {
    CheckoutKey::derive(Some(idem), [0; 12]).unwrap()
}

fn claim(
    s: &mut HandoverSession,
    k: &CheckoutKey,
    first: ClaimedOrder,
    now: i64,
) -> Result<(), u16> {
    s.claim(&k.key, &k.order_id, first, now)
        .map_err(|e| e.to_api().status)
}

fn known(state: OrderState, charge_or_auth: bool) -> ClaimedOrder {
    ClaimedOrder::Known {
        state,
        charge_or_auth,
    }
}

fn paid(k: &CheckoutKey) -> HandoverSettle {
    HandoverSettle {
        order_key: k.key.clone(),
        paid: true,
        receipt_url: Some("/r/evt_1-000001".into()),
        payment_status: Some("approved".into()),
        order_id: Some(k.order_id.clone()),
    }
}

/// A session claimed by `first` at T0 + 1 s and left `paying` (a `202 pending`, or a
/// settle that never came).
fn paying(first: &CheckoutKey) -> HandoverSession {
    let mut s = session();
    claim(&mut s, first, ClaimedOrder::Unknown, T0 + 1_000).unwrap();
    assert_eq!(s.status(), HandoverStatus::Paying);
    s
}

/// Well past the takeover delay, still inside the link's lifetime.
const LATER: i64 = T0 + 1_000 + TAKEOVER_AFTER_MS + 1;

#[test]
fn takeover_is_refused_while_the_first_order_may_still_be_charged() {
    let (a, b) = (key("page-a"), key("page-b"));
    for first in [
        known(Pending, false),
        known(Queued, true),
        known(Queued, false),
        known(Approved, true),
        known(Forwarded, true),
        known(Lost, true),
        // A lapsed hold whose charge (or stored payment) exists.
        known(Abandoned, true),
        known(Declined, true),
        // A row that does not say which order its checkout pays.
        ClaimedOrder::Unknown,
    ] {
        let mut s = paying(&a);
        let before = s.clone();
        let e = s.claim(&b.key, &b.order_id, first, LATER).unwrap_err();
        let api = e.to_api();
        assert_eq!(
            (api.status, api.code.as_ref()),
            (409, "handover_in_progress"),
            "{first:?}"
        );
        assert!(api.message.len() > 20, "a sentence");
        assert_eq!(s, before, "the first checkout keeps its claim ({first:?})");
    }
}

#[test]
fn takeover_is_allowed_once_the_first_order_provably_cannot_charge() {
    let (a, b) = (key("page-a"), key("page-b"));
    for first in [
        ClaimedOrder::Absent,
        known(Declined, false),
        known(Abandoned, false),
    ] {
        let mut s = paying(&a);
        claim(&mut s, &b, first, LATER).unwrap();
        assert_eq!(s.status(), HandoverStatus::Paying);
        assert_eq!(s.order_key.as_deref(), Some(b.key.as_str()));
        assert_eq!(s.claim_order_id.as_deref(), Some(b.order_id.as_str()));
        assert_eq!(s.view.claimed_ms, Some(LATER));
        // The first checkout is now the other one: it may not claim back.
        assert_eq!(claim(&mut s, &a, first, LATER + 1), Err(409));
    }
}

#[test]
fn a_recent_claim_is_never_taken_over_even_without_an_order() {
    // Between its claim and its hold a checkout has no order yet: "absent" must not let
    // a second page in while the first may still hold and charge.
    let (a, b) = (key("page-a"), key("page-b"));
    let mut s = paying(&a);
    let just_before = T0 + 1_000 + TAKEOVER_AFTER_MS;
    assert_eq!(
        claim(&mut s, &b, ClaimedOrder::Absent, just_before),
        Err(409)
    );
    assert_eq!(
        claim(&mut s, &b, known(Declined, false), T0 + 2_000),
        Err(409)
    );
}

#[test]
fn the_claim_names_the_order_the_ledger_is_asked_about() {
    let a = key("page-a");
    let s = paying(&a);
    let mut asked = None;
    let seen = s.claimed_order(|id| {
        asked = Some(id.to_string());
        None
    });
    assert_eq!(seen, ClaimedOrder::Absent);
    assert_eq!(asked.as_deref(), Some(a.order_id.as_str()));
    // An open session has no claim: nothing to ask.
    assert_eq!(session().claimed_order(|_| None), ClaimedOrder::Unknown);
}

#[test]
fn the_same_key_continues_and_replays_a_paid_sale() {
    let (a, b) = (key("page-a"), key("page-b"));
    let mut s = paying(&a);
    // A retry of the same checkout while it is paying continues (even much later).
    claim(&mut s, &a, known(Pending, false), LATER).unwrap();
    assert_eq!(
        s.view.claimed_ms,
        Some(T0 + 1_000),
        "a continue is not a new claim"
    );
    s.settle(&paid(&a), T0 + 5_000);
    assert_eq!(s.status(), HandoverStatus::Paid);
    assert_eq!(s.view.receipt_url.as_deref(), Some("/r/evt_1-000001"));
    assert_eq!(s.view.order_id.as_deref(), Some(a.order_id.as_str()));
    // The same key replays its answer, also after the link's lifetime.
    let before = s.clone();
    claim(&mut s, &a, known(Approved, true), T0 + TTL + 60_000).unwrap();
    assert_eq!(s, before);
    // Another key: already paid, whatever the ledger says.
    let e = s
        .claim(&b.key, &b.order_id, ClaimedOrder::Absent, LATER)
        .unwrap_err()
        .to_api();
    assert_eq!((e.status, e.code.as_ref()), (409, "handover_paid"));
    assert_eq!(s, before);
}

#[test]
fn an_expired_link_is_410_and_stays_expired() {
    let a = key("page-a");
    let mut s = session();
    let e = s
        .claim(&a.key, &a.order_id, ClaimedOrder::Unknown, T0 + TTL + 1)
        .unwrap_err()
        .to_api();
    assert_eq!((e.status, e.code.as_ref()), (410, "handover_expired"));
    assert_eq!(s.status(), HandoverStatus::Expired);
    assert_eq!(s.view().status, HandoverStatus::Expired);
    // Just before the end it was still open.
    let mut s = session();
    claim(&mut s, &a, ClaimedOrder::Unknown, T0 + TTL).unwrap();
    // A reading of an open session past its end marks it expired.
    let mut s = session();
    s.expire(T0 + TTL + 1);
    assert_eq!(s.status(), HandoverStatus::Expired);
}

#[test]
fn a_takeover_after_the_link_lapsed_expires_it_instead() {
    let (a, b) = (key("page-a"), key("page-b"));
    let mut s = paying(&a);
    assert_eq!(
        claim(&mut s, &b, ClaimedOrder::Absent, T0 + TTL + 1),
        Err(410)
    );
    assert_eq!(s.status(), HandoverStatus::Expired);
    assert_eq!(s.order_key, None);
    // While the first order may still be charged it stays paying, link lapsed or not.
    let mut s = paying(&a);
    assert_eq!(
        claim(&mut s, &b, known(Pending, false), T0 + TTL + 1),
        Err(409)
    );
    assert_eq!(s.status(), HandoverStatus::Paying);
}

#[test]
fn only_the_claiming_checkout_settles() {
    let (a, b) = (key("page-a"), key("page-b"));
    let mut s = paying(&a);
    claim(&mut s, &b, ClaimedOrder::Absent, LATER).unwrap();
    // The first checkout's late "nothing charged" must not reopen b's payment.
    let before = s.clone();
    s.settle(
        &HandoverSettle {
            order_key: a.key.clone(),
            ..HandoverSettle::default()
        },
        LATER + 1,
    );
    assert_eq!(s, before);
    s.settle(&paid(&a), LATER + 1);
    assert_eq!(s, before);
    s.settle(&paid(&b), LATER + 2);
    assert_eq!(s.status(), HandoverStatus::Paid);
    // A paid session is never reopened.
    s.settle(
        &HandoverSettle {
            order_key: b.key.clone(),
            ..HandoverSettle::default()
        },
        LATER + 3,
    );
    assert_eq!(s.status(), HandoverStatus::Paid);
}

#[test]
fn nothing_charged_opens_the_session_again_or_expires_it() {
    let (a, b) = (key("page-a"), key("page-b"));
    let declined = |k: &CheckoutKey| HandoverSettle {
        order_key: k.key.clone(),
        ..HandoverSettle::default()
    };
    let mut s = paying(&a);
    s.settle(&declined(&a), T0 + 2_000);
    assert_eq!(s.status(), HandoverStatus::Open);
    assert_eq!((s.order_key.as_ref(), s.view.claimed_ms), (None, None));
    // Open again: another page may pay at once.
    claim(&mut s, &b, ClaimedOrder::Unknown, T0 + 3_000).unwrap();
    // A decline after the link lapsed leaves it expired.
    s.settle(&declined(&b), T0 + TTL + 1);
    assert_eq!(s.status(), HandoverStatus::Expired);
}

#[test]
fn a_view_has_no_order_key() {
    let a = key("page-a");
    let s = paying(&a);
    let stored = serde_json::to_value(&s).unwrap();
    assert_eq!(stored["order_key"], a.key.as_str());
    assert_eq!(stored["claim_order_id"], a.order_id.as_str());
    let view = serde_json::to_value(s.view()).unwrap();
    for hidden in ["order_key", "claim_order_id"] {
        assert!(view.get(hidden).is_none(), "{hidden} in {view}");
    }
    assert!(!view.to_string().contains(&a.key), "{view}");
    assert!(!view.to_string().contains(&a.order_id), "{view}");
    // What the till and the pay page read.
    assert_eq!(view["status"], "paying");
    assert_eq!(view["event_id"], "evt_1");
    assert_eq!(
        view["items"],
        serde_json::json!([{"sku": "tee", "quantity": 2}])
    );
    assert_eq!(view["total"], 5000);
    assert_eq!(view["currency"], "EUR");
    assert_eq!(
        view["expires_ms"].as_i64().unwrap() - view["created_ms"].as_i64().unwrap(),
        TTL
    );
    assert!(view["expires_at"].as_str().unwrap().ends_with('Z'));
    // The stored row reads back whole.
    let back: HandoverSession = serde_json::from_value(stored).unwrap();
    assert_eq!(back, s);
}

#[test]
fn a_row_from_before_the_order_id_was_kept_reads_and_is_never_taken_over() {
    // The JSON the object stored before sessions were typed.
    let row = serde_json::json!({
        "session_id": "hs_0123456789abcdef_evt_1", "event_id": "evt_1",
        "items": [{"sku": "tee", "quantity": 2}], "total": 5000, "currency": "EUR",
        "status": "paying", "created_ms": T0, "expires_ms": T0 + TTL,
        "expires_at": crate::time::iso8601(T0 + TTL), "claimed_ms": T0 + 1_000,
        "order_key": key("page-a").key,
    });
    let mut s: HandoverSession = serde_json::from_value(row).unwrap();
    assert_eq!(s.claimed_order(|_| None), ClaimedOrder::Unknown);
    let b = key("page-b");
    assert_eq!(claim(&mut s, &b, ClaimedOrder::Unknown, LATER), Err(409));
    // Its own checkout still continues.
    claim(&mut s, &key("page-a"), ClaimedOrder::Unknown, LATER).unwrap();
}

#[test]
fn the_ledger_order_maps_to_the_rule() {
    let order = |state, charge: Option<&str>, auth: Option<&str>| Order {
        order_id: "ord_1".into(),
        state,
        lines: vec![],
        total: MinorUnits(5000),
        currency: Currency::parse("EUR").unwrap(),
        created_ms: T0,
        hold_expires_ms: T0 + 120_000,
        sold_ms: None,
        receipt_id: None,
        buyer_email: None,
        lane: "a".into(),
        charge_id: charge.map(str::to_string),
        auth_id: auth.map(str::to_string),
        refunded: MinorUnits::ZERO,
        decline_reason: None,
        stock_taken: false,
        holder: None,
        ticket: None,
    };
    assert!(ClaimedOrder::of(None).cannot_charge());
    assert!(ClaimedOrder::of(Some(&order(Declined, None, None))).cannot_charge());
    assert!(ClaimedOrder::of(Some(&order(Abandoned, None, None))).cannot_charge());
    assert!(!ClaimedOrder::of(Some(&order(Abandoned, Some("ch_1"), None))).cannot_charge());
    assert!(!ClaimedOrder::of(Some(&order(Declined, None, Some("auth_1")))).cannot_charge());
    assert!(!ClaimedOrder::of(Some(&order(Pending, None, None))).cannot_charge());
    assert!(!ClaimedOrder::of(Some(&order(Queued, None, Some("auth_1")))).cannot_charge());
    assert!(!ClaimedOrder::of(Some(&order(Approved, Some("ch_1"), None))).cannot_charge());
    assert!(!ClaimedOrder::of(Some(&order(Expired, None, Some("auth_1")))).cannot_charge());
}

fn order_for(k: &CheckoutKey, state: OrderState, auth: Option<&str>) -> Order {
    Order {
        order_id: k.order_id.clone(),
        state,
        lines: vec![],
        total: MinorUnits(5000),
        currency: Currency::parse("EUR").unwrap(),
        created_ms: T0,
        hold_expires_ms: T0 + 120_000,
        sold_ms: None,
        receipt_id: Some("evt_1-000001".into()),
        buyer_email: None,
        lane: "a".into(),
        charge_id: None,
        auth_id: auth.map(str::to_string),
        refunded: MinorUnits::ZERO,
        decline_reason: None,
        stock_taken: false,
        holder: None,
        ticket: None,
    }
}

#[test]
fn a_pending_sale_becomes_paid_when_its_order_is_approved_later() {
    let a = key("page-a");
    let mut s = paying(&a);
    // The checkout answered 202 pending: nothing to settle, the claim stays.
    let pending = serde_json::json!({"status": "pending", "order_id": a.order_id});
    assert_eq!(
        HandoverSettle::from_answer(&a.key, 202, &pending, true),
        None
    );
    // Still being confirmed: nothing changes.
    s.follow(&order_for(&a, Queued, Some("au_1")), None, T0 + 5_000);
    assert_eq!(s.status(), HandoverStatus::Paying);
    // Another order's news changes nothing either.
    s.follow(
        &order_for(&key("page-b"), Forwarded, Some("au_2")),
        None,
        T0 + 6_000,
    );
    assert_eq!(s.status(), HandoverStatus::Paying);
    // Forwarded and charged: paid, with its receipt, for the till.
    let url = Some("/v1/receipts/rcpt_evt_1-000001.x".to_string());
    s.follow(
        &order_for(&a, Forwarded, Some("au_1")),
        url.clone(),
        T0 + 7_000,
    );
    assert_eq!(s.status(), HandoverStatus::Paid);
    let v = s.view();
    assert_eq!(
        (v.receipt_url, v.payment_status.as_deref()),
        (url, Some("approved"))
    );
    assert_eq!(v.order_id.as_deref(), Some(a.order_id.as_str()));
    // Paid stays paid.
    s.follow(&order_for(&a, Declined, None), None, T0 + 8_000);
    assert_eq!(s.status(), HandoverStatus::Paid);
}

#[test]
fn a_pending_sale_opens_again_only_when_its_order_provably_cannot_charge() {
    let a = key("page-a");
    let mut s = paying(&a);
    // Declined when forwarded, but a stored authorization is attached: could still move.
    s.follow(&order_for(&a, Declined, Some("au_1")), None, T0 + 5_000);
    assert_eq!(s.status(), HandoverStatus::Paying);
    s.follow(&order_for(&a, Declined, None), None, T0 + 6_000);
    assert_eq!(s.status(), HandoverStatus::Open);
    assert!(s.order_key.is_none() && s.claim_order_id.is_none());
}

#[test]
fn a_checkout_answer_settles_its_session_only_when_definitive() {
    let a = key("page-a");
    let approved =
        serde_json::json!({"status": "approved", "order_id": a.order_id, "receipt_url": "/r"});
    let s = HandoverSettle::from_answer(&a.key, 201, &approved, false).unwrap();
    assert!(s.paid);
    assert_eq!(s.receipt_url.as_deref(), Some("/r"));
    let declined = serde_json::json!({"status": "declined"});
    assert!(
        !HandoverSettle::from_answer(&a.key, 402, &declined, false)
            .unwrap()
            .paid
    );
    // A retryable refusal (the same checkout may try again) or an unknown outcome: none.
    assert_eq!(
        HandoverSettle::from_answer(&a.key, 503, &declined, true),
        None
    );
    assert_eq!(
        HandoverSettle::from_answer(&a.key, 202, &declined, false),
        None
    );
}

#[test]
fn lapsed_rows_are_dropped_after_an_hour_except_while_a_checkout_is_paying_and_the_table_is_capped()
{
    let lapsed = T0 + TTL;
    let s = session();
    assert!(
        !s.prunable(lapsed),
        "just lapsed: the till may still show it"
    );
    assert!(!s.prunable(lapsed + KEEP_AFTER_MS - 1));
    assert!(s.prunable(lapsed + KEEP_AFTER_MS));
    let mut expired = session();
    expired.expire(lapsed + 1);
    assert_eq!(expired.status(), HandoverStatus::Expired);
    assert!(expired.prunable(lapsed + KEEP_AFTER_MS));
    // A session a checkout is paying waits for its order, however old.
    let p = paying(&key("k1"));
    assert!(!p.prunable(lapsed + 10 * KEEP_AFTER_MS));
    // Rows are scanned for pruning only at the cap.
    assert!(!prune_now(MAX_SESSIONS - 1));
    assert!(prune_now(MAX_SESSIONS));
    // The cap: a clear, retryable 429 at MAX_SESSIONS kept rows.
    assert!(admit(MAX_SESSIONS - 1).is_ok());
    let e = admit(MAX_SESSIONS).unwrap_err();
    assert_eq!(
        (e.status, e.code.as_ref(), e.retryable),
        (429, "too_many_handovers", true)
    );
}
