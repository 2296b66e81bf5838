//! What a refund of an order may do under the event's policy: the rule the ledger applies
//! (`ledger::RefundRule`) from the signed bundle's per-category refund rules, and the
//! refund's id. Decided here once; the admin route only reads the order and sends the
//! ledger's `RequestRefund`.

use crate::checkout::request::policy_category;
use crate::ledger::{Order, RefundRule, Sku};
use crate::policy::{self, PerCategory};
use sha2::{Digest, Sha256};

/// The longest window a policy can give (ten years), also for goodwill refunds' bound.
const MAX_WINDOW_DAYS: u32 = 3650;

/// The rule for refunding `order`: the most restrictive of its lines' categories (no
/// refunds if any line's category allows none; the shortest window; partial refunds and
/// waiting for the acquirer only if every category allows them). A line whose item is not
/// in the event (cannot happen for an order the event sold) counts as allowing nothing.
/// `goodwill`: the operator refunds outside the buyer's statutory window (a cancelled
/// night): allowed, in full or in part, at any time; waiting for the acquirer still
/// follows the policy.
pub fn rule(
    order: &Order,
    skus: &[Sku],
    rules: &PerCategory<policy::RefundRule>,
    goodwill: bool,
) -> RefundRule {
    let mut allowed = !order.lines.is_empty();
    let mut window_days = MAX_WINDOW_DAYS;
    let mut partial = true;
    let mut may_queue_offline = true;
    for line in &order.lines {
        let Some(sku) = skus.iter().find(|s| s.id == line.sku) else {
            allowed = false;
            partial = false;
            may_queue_offline = false;
            continue;
        };
        let r = rules.get(policy_category(sku.category));
        allowed &= r.window_days > 0;
        window_days = window_days.min(r.window_days);
        partial &= r.partial;
        may_queue_offline &= r.offline_queue;
    }
    RefundRule {
        allowed: allowed || goodwill,
        window_ms: i64::from(if goodwill {
            MAX_WINDOW_DAYS
        } else {
            window_days
        }) * 86_400_000,
        partial_allowed: partial || goodwill,
        may_queue_offline,
    }
}

/// A refund's id: from the caller's Idempotency-Key (the same key is the same refund, so a
/// retried request never refunds twice), else from fresh random bytes.
pub fn refund_id(event_id: &str, idempotency_key: Option<&str>, random: [u8; 8]) -> String {
    match idempotency_key {
        Some(k) => format!(
            "rf_{}",
            &hex::encode(Sha256::digest(format!("{event_id}|{k}")))[..20]
        ),
        None => format!("rf_{}", hex::encode(random)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Category, OrderLine, OrderState};
    use crate::money::{Currency, MinorUnits};

    fn sku(id: &str, category: Category) -> Sku {
        Sku {
            id: id.into(),
            name: id.into(),
            category,
            price: MinorUnits(1000),
            stock: 10,
            max_per_order: None,
        }
    }

    fn order(skus: &[&str]) -> Order {
        Order {
            order_id: "ord_1".into(),
            state: OrderState::Approved,
            lines: skus
                .iter()
                .map(|s| OrderLine {
                    sku: (*s).into(),
                    qty: 1,
                    unit_price: MinorUnits(1000),
                })
                .collect(),
            total: MinorUnits(1000 * skus.len() as i64),
            currency: Currency::parse("EUR").unwrap(),
            created_ms: 0,
            hold_expires_ms: 0,
            sold_ms: Some(0),
            receipt_id: None,
            buyer_email: None,
            lane: "fast".into(),
            charge_id: Some("ch_1".into()),
            auth_id: None,
            refunded: MinorUnits(0),
            decline_reason: None,
            stock_taken: true,
            holder: None,
            ticket: None,
        }
    }

    fn rules() -> PerCategory<policy::RefundRule> {
        let r = |window_days, partial, offline_queue| policy::RefundRule {
            window_days,
            dated_leisure_exempt: false,
            partial,
            offline_queue,
        };
        PerCategory {
            admission: r(0, false, false),
            merchandise: r(14, true, true),
            food_and_drink: r(1, false, true),
        }
    }

    #[test]
    fn the_most_restrictive_category_of_the_orders_lines_decides() {
        let skus = [
            sku("ticket", Category::Ticket),
            sku("shirt", Category::Merchandise),
            sku("beer", Category::FoodDrink),
        ];
        let shirt = rule(&order(&["shirt"]), &skus, &rules(), false);
        assert_eq!(
            shirt,
            RefundRule {
                allowed: true,
                window_ms: 14 * 86_400_000,
                partial_allowed: true,
                may_queue_offline: true
            }
        );
        let mixed = rule(&order(&["shirt", "beer"]), &skus, &rules(), false);
        assert_eq!(
            (mixed.window_ms, mixed.partial_allowed),
            (86_400_000, false)
        );
        let with_ticket = rule(&order(&["shirt", "ticket"]), &skus, &rules(), false);
        assert!(!with_ticket.allowed, "admission allows no refunds here");
        assert!(!with_ticket.may_queue_offline);
        // A cancelled night: goodwill allows it, in part too, but waiting still follows policy.
        let goodwill = rule(&order(&["shirt", "ticket"]), &skus, &rules(), true);
        assert!(goodwill.allowed && goodwill.partial_allowed);
        assert_eq!(goodwill.window_ms, 3650 * 86_400_000);
        assert!(!goodwill.may_queue_offline);
    }

    #[test]
    fn an_order_with_no_known_lines_allows_nothing() {
        let skus = [sku("shirt", Category::Merchandise)];
        assert!(!rule(&order(&[]), &skus, &rules(), false).allowed);
        let unknown = rule(&order(&["gone"]), &skus, &rules(), false);
        assert!(!unknown.allowed && !unknown.partial_allowed);
    }

    #[test]
    fn a_refund_id_follows_the_idempotency_key_within_its_event() {
        let a = refund_id("evt_a", Some("k1"), [1; 8]);
        assert_eq!(a, refund_id("evt_a", Some("k1"), [2; 8]));
        assert_ne!(a, refund_id("evt_b", Some("k1"), [1; 8]));
        assert_ne!(
            refund_id("evt_a", None, [1; 8]),
            refund_id("evt_a", None, [2; 8])
        );
        assert!(a.starts_with("rf_") && a.len() == 23);
    }
}
