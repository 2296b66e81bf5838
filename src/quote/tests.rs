//! Hand-computed quotes per jurisdiction, rounding modes and scopes, refund terms, prompts.

use super::*;
use crate::policy::tests::{bundle_value, loaded, signed, trusted, MemEdge, KID_A};
use crate::policy::{default_bundle, Category::*};

const NOW: i64 = 1_800_000_000_000;
const DAY: i64 = 86_400_000;

fn item(sku: &str, category: Category, unit_price: i64, quantity: u32) -> QuoteItem {
    QuoteItem {
        sku: sku.into(),
        name: format!("{sku} name"),
        category,
        unit_price: MinorUnits(unit_price),
        quantity,
        age_restricted: false,
    }
}

fn taxes(q: &Quote) -> Vec<i64> {
    q.lines.iter().map(|l| l.tax.0).collect()
}

#[test]
fn round_div_modes() {
    use RoundingMode::*;
    // (num, den, half_up, half_even, down)
    for (n, d, up, even, down) in [
        (5, 2, 3, 2, 2),
        (7, 2, 4, 4, 3),
        (9, 4, 2, 2, 2),
        (11, 4, 3, 3, 2),
        (0, 3, 0, 0, 0),
        (165, 10, 17, 16, 16),
    ] {
        assert_eq!(round_div(n, d, HalfUp), up, "{n}/{d}");
        assert_eq!(round_div(n, d, HalfEven), even, "{n}/{d}");
        assert_eq!(round_div(n, d, Down), down, "{n}/{d}");
    }
}

#[test]
fn germany_inclusive_per_line() {
    // 7% on tickets, 19% on the rest, prices include tax, rounded half-up per line.
    // 2 x 25.00 = 50.00 at 7%: 5000 * 7/107 = 327.10 -> 3.27
    // 19.99 at 19%: 1999 * 19/119 = 319.17 -> 3.19
    // 3 x 4.50 = 13.50 at 19%: 1350 * 19/119 = 215.55 -> 2.16
    let de = loaded("DE");
    let q = quote(
        &[
            item("ticket", Admission, 2500, 2),
            item("shirt", Merchandise, 1999, 1),
            item("beer", FoodAndDrink, 450, 3),
        ],
        &de,
        NOW,
    )
    .unwrap();
    assert_eq!(q.currency.code(), "EUR");
    assert_eq!(q.prices, PriceMode::Inclusive);
    assert_eq!(taxes(&q), vec![327, 319, 216]);
    assert_eq!(
        q.lines.iter().map(|l| l.net.0).collect::<Vec<_>>(),
        vec![4673, 1680, 1134]
    );
    assert_eq!((q.subtotal.0, q.tax_total.0, q.total.0), (7487, 862, 8349));
    assert_eq!(
        q.tax_breakdown,
        vec![
            TaxBreakdown {
                rate_ppm: 70_000,
                net: MinorUnits(4673),
                tax: MinorUnits(327),
                gross: MinorUnits(5000)
            },
            TaxBreakdown {
                rate_ppm: 190_000,
                net: MinorUnits(2814),
                tax: MinorUnits(535),
                gross: MinorUnits(3349)
            },
        ]
    );
    assert_eq!(
        (q.policy_revision, q.policy_hash.clone()),
        (1, de.hash.clone())
    );
    assert_eq!(q.tax_label, "MwSt.");
}

#[test]
fn california_per_total_and_per_line_differ() {
    // Three 1.00 USD items at 7.25%: per line 7.25 -> 7 each = 21; per total 21.75 -> 22.
    let mut ca = loaded("US-CA");
    let items = [
        item("a", Merchandise, 100, 1),
        item("b", Merchandise, 100, 1),
        item("c", Merchandise, 100, 1),
        item("ticket", Admission, 2000, 1),
    ];
    let total = quote(&items, &ca, NOW).unwrap();
    assert_eq!(total.rounding_scope, RoundingScope::PerTotal);
    assert_eq!(taxes(&total), vec![8, 7, 7, 0]);
    assert_eq!(
        (total.subtotal.0, total.tax_total.0, total.total.0),
        (2300, 22, 2322)
    );

    ca.bundle.tax.rounding_scope = RoundingScope::PerLine;
    let line = quote(&items, &ca, NOW).unwrap();
    assert_eq!(taxes(&line), vec![7, 7, 7, 0]);
    assert_eq!(
        (line.subtotal.0, line.tax_total.0, line.total.0),
        (2300, 21, 2321)
    );
    // US: no e-receipt tax breakdown required, tickets not refundable, merchandise 30 days.
    assert!(!total.receipt.tax_breakdown);
    assert_eq!(
        total.lines[0].refund.refundable_until_ms,
        Some(NOW + 30 * DAY)
    );
    assert!(!total.lines[3].refund.refundable);
}

#[test]
fn japan_yen_inclusive_truncated_per_rate_total() {
    // JPY has no minor digits. 10% on ticket and goods, 8% on takeaway food, tax included,
    // truncated once per rate: 10%: (3000 + 1500) * 10/110 = 409.09 -> 409, shared out
    // 272.73 -> 273 (largest remainder) and 136.36 -> 136; 8%: 540 * 8/108 = 40 exactly.
    let jp = loaded("JP");
    let items = [
        item("ticket", Admission, 3000, 1),
        item("towel", Merchandise, 1500, 1),
        item("bento", FoodAndDrink, 540, 1),
    ];
    let q = quote(&items, &jp, NOW).unwrap();
    assert_eq!(q.currency.exponent(), 0);
    assert_eq!(q.rounding, RoundingMode::Down);
    assert_eq!(taxes(&q), vec![273, 136, 40]);
    assert_eq!((q.subtotal.0, q.tax_total.0, q.total.0), (4591, 449, 5040));
    let mut per_line = jp.clone();
    per_line.bundle.tax.rounding_scope = RoundingScope::PerLine;
    let l = quote(&items, &per_line, NOW).unwrap();
    assert_eq!(taxes(&l), vec![272, 136, 40]);
    assert_eq!(l.tax_total.0, 448);
    assert_eq!(l.total.0, 5040, "inclusive prices: the buyer pays the same");
}

#[test]
fn texas_half_up_versus_half_even() {
    // 2.00 USD at 8.25% exclusive = 16.5 cents: half-up 17, half-even 16.
    let mut tx = loaded("US-TX");
    let items = [item("pin", Merchandise, 200, 1)];
    let up = quote(&items, &tx, NOW).unwrap();
    assert_eq!((up.tax_total.0, up.total.0), (17, 217));
    tx.bundle.tax.rounding = RoundingMode::HalfEven;
    let even = quote(&items, &tx, NOW).unwrap();
    assert_eq!((even.tax_total.0, even.total.0), (16, 216));
}

#[test]
fn ontario_exclusive_hst_and_new_york_ticket_exemption() {
    let on = quote(&[item("t", Admission, 1000, 3)], &loaded("CA-ON"), NOW).unwrap();
    // 30.00 CAD + 13% = 3.90.
    assert_eq!(
        (on.subtotal.0, on.tax_total.0, on.total.0),
        (3000, 390, 3390)
    );
    let ny = quote(
        &[
            item("t", Admission, 5000, 1),
            item("cap", Merchandise, 2999, 1),
        ],
        &loaded("US-NY"),
        NOW,
    )
    .unwrap();
    // Tickets to live musical performances exempt; 29.99 * 8.875% = 2.6616 -> 2.66.
    assert_eq!(taxes(&ny), vec![0, 266]);
    assert_eq!(ny.total.0, 5000 + 2999 + 266);
}

#[test]
fn france_and_gb_inclusive_rates() {
    // FR: ticket 5.5% inclusive: 3500 * 55/1055 = 182.46; per total with one line -> 182.
    let fr = quote(&[item("t", Admission, 3500, 1)], &loaded("FR"), NOW).unwrap();
    assert_eq!((fr.tax_total.0, fr.subtotal.0), (182, 3318));
    // GB: 20% inclusive on 12.00 -> 2.00 exactly.
    let gb = quote(&[item("m", Merchandise, 1200, 1)], &loaded("GB"), NOW).unwrap();
    assert_eq!(
        (gb.tax_total.0, gb.subtotal.0, gb.total.0),
        (200, 1000, 1200)
    );
}

#[test]
fn eu_tickets_have_no_withdrawal_right_but_merchandise_has_14_days() {
    let q = quote(
        &[
            item("t", Admission, 2000, 1),
            item("m", Merchandise, 1000, 2),
        ],
        &loaded("NL"),
        NOW,
    )
    .unwrap();
    let t = &q.lines[0].refund;
    assert!(!t.refundable && t.refundable_until_ms.is_none());
    assert!(t.basis.contains("Art. 16(l)"), "{}", t.basis);
    let m = &q.lines[1].refund;
    assert!(m.refundable && m.partial && m.offline_queue);
    assert_eq!(m.refundable_until_ms, Some(NOW + 14 * DAY));
    // Consent in every language of the place, e-mail required.
    assert_eq!(
        q.prompts.consent.keys().cloned().collect::<Vec<_>>(),
        vec!["en", "nl"]
    );
    assert_eq!(q.prompts.buyer_fields, vec![BuyerField::Email]);
}

#[test]
fn age_gates_follow_category_and_restricted_items() {
    let mut de = loaded("DE");
    let mut beer = item("beer", FoodAndDrink, 450, 1);
    beer.age_restricted = true;
    let q = quote(&[item("t", Admission, 100, 1), beer.clone()], &de, NOW).unwrap();
    assert_eq!(
        q.prompts.age_gate,
        Some(AgeGatePrompt {
            min_age: 18,
            skus: vec!["beer".into()]
        })
    );
    assert_eq!(q.lines[0].min_age, None);
    de.bundle.compliance.age_gate.admission = Some(16);
    let q = quote(&[item("t", Admission, 100, 1), beer], &de, NOW).unwrap();
    assert_eq!(
        q.prompts.age_gate,
        Some(AgeGatePrompt {
            min_age: 18,
            skus: vec!["t".into(), "beer".into()]
        })
    );
    assert_eq!(q.lines[0].min_age, Some(16));
    let jp = quote(&[item("t", Admission, 100, 1)], &loaded("JP"), NOW).unwrap();
    assert_eq!(jp.prompts.age_gate, None);
}

#[test]
fn default_bundle_needs_the_event_currency() {
    let d = default_bundle();
    let items = [item("t", Admission, 1000, 1)];
    assert_eq!(quote(&items, &d, NOW).unwrap_err(), QuoteError::NoCurrency);
    let usd = Currency::parse("USD").unwrap();
    let q = quote_in(&items, &d, Some(usd), NOW).unwrap();
    assert_eq!((q.tax_total.0, q.total.0), (0, 1000));
    assert_eq!(
        q.prompts.buyer_fields,
        vec![BuyerField::Email, BuyerField::Name]
    );
    assert!(!q.lines[0].refund.refundable);
    assert_eq!(q.policy_hash, d.hash);
    let eur = Currency::parse("EUR").unwrap();
    assert!(matches!(
        quote_in(&items, &loaded("AU"), Some(eur), NOW),
        Err(QuoteError::CurrencyMismatch { .. })
    ));
}

#[test]
fn bad_items_are_refused() {
    let au = loaded("AU");
    assert_eq!(quote(&[], &au, NOW).unwrap_err().code(), "quote_no_items");
    assert_eq!(
        quote(&[item("a", Merchandise, 100, 0)], &au, NOW)
            .unwrap_err()
            .code(),
        "quote_bad_quantity"
    );
    assert_eq!(
        quote(&[item("a", Merchandise, -1, 1)], &au, NOW)
            .unwrap_err()
            .code(),
        "quote_negative_price"
    );
    assert_eq!(
        quote(&[item("a", Merchandise, i64::MAX / 2, 3)], &au, NOW)
            .unwrap_err()
            .code(),
        "quote_overflow"
    );
    let many: Vec<QuoteItem> = (0..=MAX_ITEMS)
        .map(|i| item(&i.to_string(), Merchandise, 1, 1))
        .collect();
    assert_eq!(quote(&many, &au, NOW).unwrap_err().to_api().status, 400);
    // Two huge lines that each fit but overflow together.
    let big = [
        item("a", Merchandise, i64::MAX / 2 + 1, 1),
        item("b", Merchandise, i64::MAX / 2 + 1, 1),
    ];
    assert_eq!(quote(&big, &au, NOW).unwrap_err(), QuoteError::Overflow);
}

#[test]
fn quotes_name_the_pinned_or_active_revision() {
    let keys = trusted(false);
    let mut edge = MemEdge::default();
    edge.push(&signed(&bundle_value("AU", 1, KID_A), KID_A, 1), &keys, 1)
        .unwrap();
    let mut v2 = bundle_value("AU", 2, KID_A);
    v2["tax"]["prices"] = "exclusive".into();
    edge.push(&signed(&v2, KID_A, 1), &keys, 2).unwrap();
    let items = [item("t", Admission, 1100, 1)];
    let pinned = quote(&items, &edge.load("AU", Some(1), &keys), NOW).unwrap();
    let active = quote(&items, &edge.load("AU", None, &keys), NOW).unwrap();
    assert_eq!(
        (pinned.policy_revision, pinned.tax_total.0, pinned.total.0),
        (1, 100, 1100)
    );
    assert_eq!(
        (active.policy_revision, active.tax_total.0, active.total.0),
        (2, 110, 1210)
    );
    assert_eq!(active.policy_hash, edge.active("AU").unwrap().hash);
    assert_ne!(pinned.policy_hash, active.policy_hash);
}

#[test]
fn per_total_line_taxes_always_add_up() {
    // Many odd amounts at one rate: the shared-out line taxes sum to the rounded total.
    let mut ie = loaded("IE");
    ie.bundle.tax.rounding_scope = RoundingScope::PerTotal;
    for mode in [
        RoundingMode::HalfUp,
        RoundingMode::HalfEven,
        RoundingMode::Down,
    ] {
        ie.bundle.tax.rounding = mode;
        let items: Vec<QuoteItem> = (1..=37)
            .map(|i| item(&i.to_string(), Merchandise, 97 * i + 13, 1))
            .collect();
        let q = quote(&items, &ie, NOW).unwrap();
        let gross: i64 = items.iter().map(|i| i.unit_price.0).sum();
        let want = round_div(i128::from(gross) * 230_000, 1_230_000, mode) as i64;
        assert_eq!(q.tax_total.0, want, "{mode:?}");
        assert_eq!(q.lines.iter().map(|l| l.tax.0).sum::<i64>(), want);
        assert_eq!(q.total.0, gross);
    }
}

#[test]
fn quote_request_parses_and_refuses_unknown_fields() {
    let r: QuoteRequest = serde_json::from_str(
        r#"{"items":[{"sku":"t1","name":"Ticket","category":"ticket","unit_price":2500,"quantity":2}]}"#,
    )
    .unwrap();
    assert_eq!(r.items[0].category, Admission);
    assert!(!r.items[0].age_restricted);
    let q = quote(&r.items, &loaded("DE"), NOW).unwrap();
    let j = serde_json::to_value(&q).unwrap();
    assert_eq!(j["policy_revision"], 1);
    assert_eq!(j["lines"][0]["category"], "admission");
    assert_eq!(j["total"], 5000);
    assert!(serde_json::from_str::<QuoteRequest>(r#"{"items":[],"discount":5}"#).is_err());
    assert!(serde_json::from_str::<QuoteRequest>(
        r#"{"items":[{"sku":"a","name":"a","category":"drinks","unit_price":1,"quantity":1}]}"#
    )
    .is_err());
}
