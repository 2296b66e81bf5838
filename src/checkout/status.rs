//! Where a checkout stands, for a buyer who heard `202 pending`:
//! `GET /v1/events/{event}/checkouts/{order}.{token}`.
//!
//! A pending answer carries this URL (`status_url`, [`link`]). The URL is a capability
//! like a receipt's: the order id with 128 bits of HMAC-SHA256 over the event and the order
//! under the receipt keys ([`crate::receipt::capability`], its own domain), so nobody reads
//! another buyer's checkout by guessing ids. [`view`] says what the order's state means to
//! the buyer; the shell only fetches the order and sends the view.

use super::protocol::StoredAnswer;
use super::{Answer, PENDING_RETRY_S};
use crate::ledger::{Order, OrderState};
use crate::receipt::{self, ReceiptKeys};

/// Domain of the status URL capability (never valid as a receipt URL or a signature).
const DOMAIN: &[u8] = b"poptill-checkout-status-v1\n";

fn data(event_id: &str, order_id: &str) -> Vec<u8> {
    format!("{event_id}\n{order_id}").into_bytes()
}

/// The status URL of `order_id` in `event_id`.
pub fn url(keys: &ReceiptKeys, event_id: &str, order_id: &str) -> Option<String> {
    let token = receipt::capability(keys, DOMAIN, &data(event_id, order_id)).ok()?;
    Some(format!(
        "/v1/events/{event_id}/checkouts/{order_id}.{token}"
    ))
}

/// The order id of a status URL's last part (`<order>.<token>`) when its token is right for
/// this event under any receipt key; `None` otherwise (a bare or guessed id).
pub fn open<'a>(keys: &ReceiptKeys, event_id: &str, part: &'a str) -> Option<&'a str> {
    let (order_id, token) = part.split_once('.')?;
    receipt::is_capability(keys, DOMAIN, &data(event_id, order_id), token).then_some(order_id)
}

/// Whether an answer is `201 confirming`: accepted while the acquirer still answers, its
/// outcome learnt by asking again (like `202 pending`).
pub fn is_confirming(status: u16, body: &serde_json::Value) -> bool {
    status == 201 && body["status"] == "confirming"
}

/// Adds `status_url` to a `202 pending` or `201 confirming` answer about an order (and
/// to nothing else).
pub fn link(answer: &mut Answer, keys: Option<&ReceiptKeys>, event_id: &str) {
    let pending = answer.status == 202 && answer.body["status"] == "pending";
    if !pending && !is_confirming(answer.status, &answer.body) {
        return;
    }
    let order = answer
        .order_id
        .clone()
        .or_else(|| answer.body["order_id"].as_str().map(str::to_string));
    if let (Some(keys), Some(order)) = (keys, order) {
        if let Some(u) = url(keys, event_id, &order) {
            answer.body["status_url"] = u.into();
        }
    }
}

/// What a buyer hears about a settled order: `(checkout status code, state, sentence)`;
/// `None` while its outcome is not known yet. The checkout's own replays (a `pending`
/// answer sent again) and the status URL both say this.
pub fn settled(order: &Order) -> Option<(u16, &'static str, &'static str)> {
    Some(match order.state {
        OrderState::Approved | OrderState::Forwarded => (201, "approved", "Payment approved."),
        OrderState::Refunded | OrderState::PartiallyRefunded => {
            (201, "approved", "Payment approved (since refunded).")
        }
        OrderState::Declined => (
            402,
            "declined",
            "The payment was declined. Nothing was charged; try another card.",
        ),
        OrderState::Abandoned | OrderState::Expired | OrderState::Lost => (
            402,
            "canceled",
            "This payment did not go through; anything charged is refunded. You may pay again.",
        ),
        OrderState::Pending | OrderState::Queued => return None,
    })
}

/// The receipt id of a settled order (not while pending: a buyer told "being confirmed"
/// holds no receipt yet; not for a canceled one).
pub fn settled_receipt(order: &Order) -> Option<String> {
    let r = order.receipt_id.as_ref()?;
    match settled(order) {
        None | Some((_, "canceled", _)) => None,
        Some(_) => Some(format!("rcpt_{r}")),
    }
}

/// Sets `receipt_id` and `receipt_url` of an answer about `order` once it is settled and
/// has a receipt ([`settled_receipt`]); returns the receipt id.
pub fn link_receipt(
    body: &mut serde_json::Value,
    order: &Order,
    keys: Option<&ReceiptKeys>,
) -> Option<String> {
    let id = settled_receipt(order)?;
    body["receipt_id"] = id.as_str().into();
    if let Some(u) = keys.and_then(|k| receipt::url(k, &id).ok()) {
        body["receipt_url"] = u.into();
    }
    Some(id)
}

/// The status URL's answer for an order: always `200`; its `status` is `pending` (with
/// `retry_after_s`), `approved`, `declined` or `canceled`, with the receipt's URL once
/// there is one. No card, no buyer, nothing a stranger could use.
pub fn view(order: &Order, keys: Option<&ReceiptKeys>) -> StoredAnswer {
    let (state, message) = match settled(order) {
        Some((_, state, message)) => (state, message),
        None => (
            "pending",
            "Your payment is being confirmed. Do not pay again: this page shows the result in a few seconds.",
        ),
    };
    let mut body = serde_json::json!({
        "status": state, "order_id": order.order_id, "message": message,
        "total": order.total, "currency": order.currency,
    });
    if state == "pending" {
        body["retry_after_s"] = PENDING_RETRY_S.into();
    }
    let receipt_id = link_receipt(&mut body, order, keys);
    StoredAnswer {
        status: 200,
        body,
        receipt_id,
        receipt: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{Currency, MinorUnits};

    fn keys(k: &str) -> ReceiptKeys {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.encode(k.repeat(32).as_bytes());
        ReceiptKeys::parse(&format!("s1:{raw}")).unwrap()
    }

    fn order(state: OrderState, receipt: Option<&str>) -> Order {
        Order {
            order_id: "ord_1".into(),
            state,
            lines: Vec::new(),
            total: MinorUnits(1500),
            currency: Currency::parse("EUR").unwrap(),
            created_ms: 0,
            hold_expires_ms: 0,
            sold_ms: None,
            receipt_id: receipt.map(str::to_string),
            buyer_email: Some("ana@example.org".into()),
            lane: "fast".into(),
            charge_id: None,
            auth_id: None,
            refunded: MinorUnits(0),
            decline_reason: None,
            stock_taken: false,
            holder: Some("cd_x".into()),
            ticket: None,
        }
    }

    #[test]
    fn a_status_url_opens_only_for_its_event_and_order_under_the_keys() {
        let k = keys("a");
        let u = url(&k, "evt_1", "ord_1").unwrap();
        let part = u.strip_prefix("/v1/events/evt_1/checkouts/").unwrap();
        assert_eq!(open(&k, "evt_1", part), Some("ord_1"));
        assert_eq!(open(&k, "evt_2", part), None, "another event");
        assert_eq!(open(&keys("b"), "evt_1", part), None, "other keys");
        assert_eq!(open(&k, "evt_1", "ord_1"), None, "bare id");
        let other = part.replacen("ord_1", "ord_2", 1);
        assert_eq!(open(&k, "evt_1", &other), None, "another order");
        // Not a receipt URL token either (its own domain).
        let token = part.split_once('.').unwrap().1;
        assert_ne!(receipt::url_token(&k, "ord_1").unwrap(), token);
    }

    #[test]
    fn only_a_pending_answer_about_an_order_gets_a_status_url() {
        let k = keys("a");
        let mut p = super::super::pending("ord_1", "r");
        link(&mut p, Some(&k), "evt_1");
        assert!(p.body["status_url"]
            .as_str()
            .unwrap()
            .contains("/checkouts/ord_1."));
        let mut approved = p.clone();
        approved.status = 201;
        approved.body = serde_json::json!({"status": "approved", "order_id": "ord_1"});
        link(&mut approved, Some(&k), "evt_1");
        assert!(approved.body.get("status_url").is_none());
    }

    #[test]
    fn the_view_says_what_each_state_means_and_shows_no_buyer_or_card() {
        let k = keys("a");
        for (state, want, receipt) in [
            (OrderState::Pending, "pending", false),
            (OrderState::Queued, "pending", false),
            (OrderState::Approved, "approved", true),
            (OrderState::Forwarded, "approved", true),
            (OrderState::Refunded, "approved", true),
            (OrderState::Declined, "declined", true),
            (OrderState::Abandoned, "canceled", false),
            (OrderState::Lost, "canceled", false),
        ] {
            let v = view(&order(state, Some("evt_1-000001")), Some(&k));
            assert_eq!(v.status, 200);
            assert_eq!(v.body["status"], want, "{state:?}");
            assert_eq!(
                v.body["retry_after_s"].is_u64(),
                want == "pending",
                "{state:?}"
            );
            let has = v.body.get("receipt_url").is_some();
            assert_eq!(has, receipt, "{state:?}: {}", v.body);
            let text = v.body.to_string();
            assert!(!text.contains("ana@") && !text.contains("cd_x"), "{text}");
        }
    }
}
