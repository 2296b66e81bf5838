//! The per-card and per-admission-ticket limits of `EventLedger::hold`: units per SKU
//! across the event, pending orders, and recent declines (card testing).

use super::tests::{config, hold_cmd, ok, run, T0};
use super::*;

const MIN: i64 = 60_000;

fn as_card(mut cmd: Command, card: &str) -> Command {
    if let Command::Hold { holder, .. } = &mut cmd {
        *holder = Some(card.into());
    }
    cmd
}

fn with_ticket(mut cmd: Command, ticket: &str) -> Command {
    if let Command::Hold {
        admission_ticket, ..
    } = &mut cmd
    {
        *admission_ticket = Some(ticket.into());
    }
    cmd
}

fn hold(l: &mut EventLedger, id: &str, card: &str, qty: u32, now: i64) -> Outcome {
    run(
        l,
        as_card(hold_cmd(id, &[("ticket", qty)], now + MIN), card),
        now,
    )
}

fn confirm(l: &mut EventLedger, id: &str, now: i64) {
    ok(
        l,
        Command::Confirm {
            order_id: id.into(),
            charge_id: format!("ch_{id}"),
            lane: None,
        },
        now,
    );
}

fn decline(l: &mut EventLedger, id: &str, now: i64) {
    ok(
        l,
        Command::Release {
            order_id: id.into(),
            reason: "card_declined".into(),
        },
        now,
    );
}

fn limited(max: u32) -> EventLedger {
    let mut c = config();
    c.skus[0].max_per_order = Some(max);
    EventLedger::new(c, T0 - 60 * MIN).unwrap()
}

#[test]
fn a_card_buys_at_most_the_items_limit_across_its_orders() {
    let mut l = limited(4);
    hold(&mut l, "o1", "cd_a", 3, T0).reply.unwrap();
    confirm(&mut l, "o1", T0 + 1);
    let before = l.available("ticket");
    let e = hold(&mut l, "o2", "cd_a", 2, T0 + 2).reply.unwrap_err();
    assert_eq!(
        e,
        LedgerError::BuyerLimit {
            sku: "ticket".into(),
            max: 4,
            bought: 3,
            scope: orders::BuyerScope::Card,
        }
    );
    let api = e.to_api();
    assert_eq!((api.status, api.code.as_ref()), (422, "buyer_limit"));
    assert!(api.message.contains("per card"), "{}", api.message);
    assert_eq!(
        l.available("ticket"),
        before,
        "a refused hold holds nothing"
    );
    // What is left under the limit, and another card, still buy.
    hold(&mut l, "o3", "cd_a", 1, T0 + 3).reply.unwrap();
    hold(&mut l, "o4", "cd_b", 4, T0 + 3).reply.unwrap();
}

#[test]
fn units_of_a_declined_or_lapsed_order_do_not_count_against_the_card() {
    let mut l = limited(4);
    hold(&mut l, "o1", "cd_a", 4, T0).reply.unwrap();
    decline(&mut l, "o1", T0 + 1);
    hold(&mut l, "o2", "cd_a", 4, T0 + 2).reply.unwrap();
    // o2's hold lapses (one minute): its units are free for the card again.
    hold(&mut l, "o3", "cd_a", 4, T0 + 2 * MIN).reply.unwrap();
    // A pending hold counts: a second cart of 4 while o3 waits is over the limit.
    let e = hold(&mut l, "o4", "cd_a", 1, T0 + 2 * MIN + 1)
        .reply
        .unwrap_err();
    assert_eq!(e.to_api().code, "buyer_limit");
}

#[test]
fn a_card_has_at_most_two_pending_orders() {
    let mut l = ledger_without_limits();
    hold(&mut l, "o1", "cd_a", 1, T0).reply.unwrap();
    hold(&mut l, "o2", "cd_a", 1, T0).reply.unwrap();
    let before = l.available("ticket");
    let e = hold(&mut l, "o3", "cd_a", 1, T0).reply.unwrap_err();
    assert_eq!(
        e,
        LedgerError::TooManyPending {
            scope: orders::BuyerScope::Card
        }
    );
    let api = e.to_api();
    assert_eq!(
        (api.status, api.code.as_ref(), api.retryable),
        (429, "too_many_pending", true)
    );
    assert_eq!(l.available("ticket"), before);
    // The same order asked again (a retry) is answered, not refused.
    hold(&mut l, "o2", "cd_a", 1, T0 + 1).reply.unwrap();
    // Another card is not affected; once one order is paid the card may hold another.
    hold(&mut l, "o4", "cd_b", 1, T0).reply.unwrap();
    confirm(&mut l, "o1", T0 + 2);
    hold(&mut l, "o3", "cd_a", 1, T0 + 3).reply.unwrap();
}

fn ledger_without_limits() -> EventLedger {
    EventLedger::new(config(), T0 - 60 * MIN).unwrap()
}

#[test]
fn a_card_declined_three_times_is_refused_before_the_acquirer_for_a_while() {
    let mut l = ledger_without_limits();
    for i in 0..3 {
        let id = format!("o{i}");
        hold(&mut l, &id, "cd_test", 1, T0 + i).reply.unwrap();
        decline(&mut l, &id, T0 + i);
    }
    let e = hold(&mut l, "o9", "cd_test", 1, T0 + 10).reply.unwrap_err();
    assert_eq!(e, LedgerError::CardVelocity);
    let api = e.to_api();
    assert_eq!((api.status, api.code.as_ref()), (429, "card_velocity"));
    assert!(
        !api.message.contains("declin"),
        "a neutral sentence: {}",
        api.message
    );
    // Another card buys; the tested card again after the window.
    hold(&mut l, "o10", "cd_other", 1, T0 + 10).reply.unwrap();
    let later = T0 + orders::DECLINE_WINDOW_MS + 10;
    hold(&mut l, "o11", "cd_test", 1, later).reply.unwrap();
}

#[test]
fn an_admission_ticket_is_bounded_like_a_card() {
    let mut l = limited(4);
    let t = |id: &str, card: &str, qty: u32, now: i64| {
        with_ticket(
            as_card(hold_cmd(id, &[("ticket", qty)], now + MIN), card),
            "tkt_1",
        )
    };
    ok(&mut l, t("o1", "cd_a", 3, T0), T0);
    confirm(&mut l, "o1", T0 + 1);
    // Another card on the same ticket is still over the ticket's limit.
    let e = run(&mut l, t("o2", "cd_b", 2, T0 + 2), T0 + 2)
        .reply
        .unwrap_err();
    assert!(
        matches!(
            e,
            LedgerError::BuyerLimit {
                scope: orders::BuyerScope::Ticket,
                bought: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_api().message.contains("admission ticket"));
    // And it holds at most two pending orders whatever the cards.
    ok(&mut l, t("o3", "cd_c", 1, T0 + 3), T0 + 3);
    let mut l2 = ledger_without_limits();
    ok(&mut l2, t("p1", "cd_a", 1, T0), T0);
    ok(&mut l2, t("p2", "cd_b", 1, T0), T0);
    let e = run(&mut l2, t("p3", "cd_c", 1, T0), T0).reply.unwrap_err();
    assert_eq!(
        e,
        LedgerError::TooManyPending {
            scope: orders::BuyerScope::Ticket
        }
    );
}

#[test]
fn the_limits_survive_a_reload_from_rows() {
    let mut store = super::tests::RowStore::default();
    let mut l = limited(4);
    hold(&mut l, "o1", "cd_a", 4, T0).reply.unwrap();
    store.apply(l.take_delta().unwrap());
    let mut l = store.load();
    let e = hold(&mut l, "o2", "cd_a", 1, T0 + 1).reply.unwrap_err();
    assert_eq!(e.to_api().code, "buyer_limit");
}

#[test]
fn unsold_orders_are_capped_the_oldest_forgotten_and_paid_ones_kept() {
    let mut c = config();
    c.skus[2].stock = 100_000;
    let mut l = EventLedger::new(c, T0 - 60 * MIN).unwrap();
    ok(&mut l, hold_cmd("paid", &[("beer", 1)], T0 + MIN), T0);
    confirm(&mut l, "paid", T0);
    for i in 0..orders::MAX_UNSOLD_ORDERS {
        let id = format!("d{i}");
        ok(&mut l, hold_cmd(&id, &[("beer", 1)], T0 + MIN), T0);
        decline(&mut l, &id, T0);
    }
    // At the cap and nothing old enough to forget: the next hold waits, nothing grows.
    let before = l.available("beer");
    let e = run(
        &mut l,
        hold_cmd("new", &[("beer", 1)], T0 + 2 * MIN),
        T0 + MIN,
    )
    .reply
    .unwrap_err();
    assert_eq!(e, LedgerError::TooManyOrders);
    let api = e.to_api();
    assert_eq!(
        (api.status, api.code.as_ref(), api.retryable),
        (429, "too_many_orders", true)
    );
    assert_eq!(l.available("beer"), before);
    assert!(l.order("new").is_none());
    // Later the oldest declined orders are forgotten to make room; the paid one stays.
    let later = T0 + orders::UNSOLD_KEEP_MS + 1;
    ok(&mut l, hold_cmd("new", &[("beer", 1)], later + MIN), later);
    assert!(l.order("paid").is_some());
    assert!(l.order("new").is_some());
    assert!(
        l.order("d0").is_none(),
        "the oldest unsold order is forgotten"
    );
    let unsold = (0..orders::MAX_UNSOLD_ORDERS)
        .filter(|i| l.order(&format!("d{i}")).is_some())
        .count();
    assert!(unsold < orders::MAX_UNSOLD_ORDERS, "{unsold}");
    assert!(unsold >= orders::MAX_UNSOLD_ORDERS - orders::MAX_UNSOLD_ORDERS / 100 - 1);
}
