//! The checkout request as the buyer's page sends it, the cart priced under the event's
//! policy, the prompts the policy requires, and the two things derived from the
//! Idempotency-Key: the record's key and the order id.

use crate::error::ApiError;
use crate::ledger::{Category as SkuCategory, EventConfig, LineRequest};
use crate::policy::{BuyerField, Category as PolicyCategory, LoadedBundle};
use crate::quote::{self, Quote, QuoteItem};
use crate::secret::Secret;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One cart line as sent by the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CartItem {
    pub sku: String,
    #[schemars(range(min = 1, max = crate::quote::MAX_QUANTITY))]
    pub quantity: u32,
}

/// Whether a checkout may be stored offline when the acquirer cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayMode {
    /// The default: store it offline within the event's budget.
    PreferOnline,
    /// Never store it: refuse while the acquirer cannot be reached.
    RequireOnline,
}

/// The buyer's answers to the policy's prompts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Buyer {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub age_confirmed: bool,
    #[serde(default)]
    pub consent_accepted: bool,
}

/// `POST /v1/events/{id}/checkout`'s body.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    #[schemars(length(min = 1, max = crate::quote::MAX_ITEMS))]
    pub items: Vec<CartItem>,
    pub token: String,
    #[serde(default)]
    pub cvc_token: Option<String>,
    #[serde(default)]
    pub buyer: Buyer,
    #[serde(default)]
    pub admission_ticket: Option<String>,
    /// `prefer_online` (default: queue offline when the acquirer is unavailable) or
    /// `require_online` (never queue).
    #[serde(default)]
    pub mode: Option<PayMode>,
    /// Pays a staff terminal's handover session (its items win over `items`).
    #[serde(default)]
    pub handover_session: Option<String>,
}

impl CheckoutBody {
    pub fn require_online(&self) -> bool {
        self.mode == Some(PayMode::RequireOnline)
    }

    pub fn lines(&self) -> Vec<LineRequest> {
        self.items
            .iter()
            .map(|i| LineRequest {
                sku: i.sku.clone(),
                qty: i.quantity,
            })
            .collect()
    }
}

/// The policy's category for an event's SKU category.
pub fn policy_category(c: SkuCategory) -> PolicyCategory {
    match c {
        SkuCategory::Ticket => PolicyCategory::Admission,
        SkuCategory::Merchandise => PolicyCategory::Merchandise,
        SkuCategory::FoodDrink => PolicyCategory::FoodAndDrink,
    }
}

/// Prices a cart under the event's configuration and policy bundle.
pub fn quote_cart(
    c: &EventConfig,
    bundle: &LoadedBundle,
    items: &[CartItem],
    now_ms: i64,
) -> Result<Quote, ApiError> {
    let mut q = Vec::with_capacity(items.len());
    for i in items {
        let sku = c.skus.iter().find(|s| s.id == i.sku).ok_or_else(|| {
            ApiError::new(
                422,
                "unknown_sku",
                format!(
                    "This event sells no item {:?}.",
                    i.sku.chars().take(40).collect::<String>()
                ),
            )
        })?;
        q.push(QuoteItem {
            sku: sku.id.clone(),
            name: sku.name.clone(),
            category: policy_category(sku.category),
            unit_price: sku.price,
            quantity: i.quantity,
            age_restricted: false,
        });
    }
    quote::quote_in(&q, bundle, Some(c.currency), now_ms).map_err(|e| e.to_api())
}

/// The buyer's answers against the prompts the quote requires.
pub fn check_prompts(quote: &Quote, buyer: &Buyer) -> Result<(), ApiError> {
    let prompts = &quote.prompts;
    if let Some(gate) = &prompts.age_gate {
        if !buyer.age_confirmed {
            return Err(ApiError::new(
                422,
                "age_confirmation_required",
                format!(
                    "The buyer must confirm being at least {} years old.",
                    gate.min_age
                ),
            ));
        }
    }
    if !prompts.consent.is_empty() && !buyer.consent_accepted {
        return Err(ApiError::new(
            422,
            "consent_required",
            "The buyer must accept the consent text shown at checkout.",
        ));
    }
    if prompts.buyer_fields.contains(&BuyerField::Email)
        && buyer.email.as_deref().unwrap_or("").is_empty()
    {
        return Err(ApiError::new(
            422,
            "email_required",
            "An e-mail address is needed here for the receipt.",
        ));
    }
    Ok(())
}

/// What an Idempotency-Key stands for inside one event: the record's key and the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutKey {
    /// The idempotency record's key, `co_<32 hex>`.
    pub key: String,
    /// The order every attempt with this key holds and pays (`ord_<16 hex>`), so a retry
    /// after a lost answer or a dead Worker re-holds the same order and sends the
    /// acquirer the same idempotency key: the acquirer replays instead of charging again.
    pub order_id: String,
}

impl CheckoutKey {
    /// From the caller's Idempotency-Key (1 to 200 printable ASCII characters), or from
    /// `random` when the caller sent none.
    pub fn derive(header: Option<&str>, random: [u8; 12]) -> Result<CheckoutKey, ApiError> {
        let idem = match crate::api::idempotency_key(header)? {
            Some(k) => k.to_string(),
            None => format!("auto_{}", hex::encode(random)),
        };
        let h = Sha256::digest(idem.as_bytes());
        let o = Sha256::digest(format!("poptill-order-v1\n{idem}").as_bytes());
        Ok(CheckoutKey {
            key: format!("co_{}", &hex::encode(h)[..32]),
            order_id: format!("ord_{}", &hex::encode(o)[..16]),
        })
    }
}

/// The key of [`fingerprint`], derived from the vault's current KEK (a secret the event
/// object never holds).
pub fn fingerprint_key(keks: &crate::vault::KekSet) -> Secret<[u8; 32]> {
    let mut out = [0u8; 32];
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(keks.current.bytes()) {
        mac.update(b"poptill-checkout-fingerprint-key-v1");
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    Secret::new(out)
}

fn intent(body: &CheckoutBody) -> String {
    serde_json::json!({
        "items": body.items,
        "buyer": body.buyer,
        "mode": body.mode,
        "handover": body.handover_session,
        "ticket": body.admission_ticket,
    })
    .to_string()
}

/// The card-free part of [`fingerprint`]: what the buyer asked for (cart, buyer, mode,
/// handover, admission ticket). A retry whose card token can no longer be opened is still
/// matched against it, so it gets the completed answer only for the same purchase.
pub fn cart_fingerprint(body: &CheckoutBody) -> String {
    let h = Sha256::digest(format!("poptill-cart-v1\n{}", intent(body)).as_bytes());
    hex::encode(&h[..16])
}

/// The idempotency fingerprint of a purchase, `fp_<cart>.<cart and card>`: what the buyer
/// asked for and the card, the card part keyed so that a card number cannot be recovered
/// from it. A retry that tokenized the same card again has the same fingerprint; another
/// cart or another card has another.
pub fn fingerprint(body: &CheckoutBody, card_number: &Secret<String>, key: &[u8; 32]) -> String {
    let cart = cart_fingerprint(body);
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(b"poptill-checkout-fingerprint-v1\n");
    mac.update(intent(body).as_bytes());
    mac.update(b"\n");
    mac.update(card_number.expose().as_bytes());
    format!(
        "fp_{cart}.{}",
        hex::encode(&mac.finalize().into_bytes()[..16])
    )
}

/// Who a card is to the event's purchase limits, `cd_<hex>`: the card number under the
/// fingerprint key (so the object, which never holds that key, cannot recover the card, and
/// the same card gives the same holder in every PoP and for every token).
pub fn card_holder(card_number: &Secret<String>, key: &[u8; 32]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(b"poptill-card-holder-v1\n");
    mac.update(card_number.expose().as_bytes());
    format!("cd_{}", hex::encode(&mac.finalize().into_bytes()[..16]))
}

/// Whether a recorded fingerprint is for this cart (see [`cart_fingerprint`]).
pub fn same_cart(recorded: &str, cart: &str) -> bool {
    recorded
        .strip_prefix("fp_")
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(c, _)| c == cart)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(items: &str, token: &str) -> CheckoutBody {
        serde_json::from_str(&format!(
            r#"{{"items":{items},"token":"{token}","buyer":{{"email":"a@b.co"}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn the_key_and_the_order_derive_from_the_idempotency_key() {
        let a = CheckoutKey::derive(Some("buyer-1"), [0; 12]).unwrap();
        let b = CheckoutKey::derive(Some("buyer-1"), [9; 12]).unwrap();
        assert_eq!(a, b);
        assert!(a.key.starts_with("co_") && a.order_id.starts_with("ord_"));
        let c = CheckoutKey::derive(Some("buyer-2"), [0; 12]).unwrap();
        assert_ne!(a.order_id, c.order_id);
        let auto1 = CheckoutKey::derive(None, [1; 12]).unwrap();
        let auto2 = CheckoutKey::derive(None, [2; 12]).unwrap();
        assert_ne!(auto1.order_id, auto2.order_id);
        assert_eq!(
            CheckoutKey::derive(Some("bad key"), [0; 12])
                .unwrap_err()
                .code,
            "invalid_idempotency_key"
        );
    }

    #[test]
    fn a_retokenized_retry_has_the_same_fingerprint_another_cart_or_card_does_not() {
        let key = [7u8; 32];
        let card = Secret::new("4242424242424242".to_string());
        let other = Secret::new("5555555555554444".to_string());
        let items = r#"[{"sku":"ga","quantity":2}]"#;
        let first = fingerprint(&body(items, "tok_first"), &card, &key);
        let retry = fingerprint(&body(items, "tok_second"), &card, &key);
        assert_eq!(first, retry);
        assert_ne!(
            first,
            fingerprint(
                &body(r#"[{"sku":"ga","quantity":3}]"#, "tok_x"),
                &card,
                &key
            )
        );
        assert_ne!(first, fingerprint(&body(items, "tok_first"), &other, &key));
        assert_ne!(
            first,
            fingerprint(&body(items, "tok_first"), &card, &[8u8; 32])
        );
        assert!(!first.contains("4242"));
        let cart = cart_fingerprint(&body(items, "tok_z"));
        assert!(same_cart(&first, &cart));
        assert!(!same_cart(
            &first,
            &cart_fingerprint(&body(r#"[{"sku":"ga","quantity":3}]"#, "t"))
        ));
    }
}
