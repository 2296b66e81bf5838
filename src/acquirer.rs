//! The Stripe-compatible acquirer connector: builds HTTP calls and reads answers, without I/O.
//!
//! The edge shell performs the fetch; this module decides what to send and what an answer
//! means. Call order for one payment attempt:
//!
//! 1. [`build_authorize`] gives an [`HttpCall`] (method, URL, headers, form body). The body
//!    holds the card number, so it is a [`Secret`]; expose it only to hand it to `fetch`.
//! 2. The shell sends it. A network failure or a timeout is "outcome unknown": send the same
//!    call again (same `Idempotency-Key`; Stripe replays the first result, so the card is
//!    charged at most once), or reconcile later with [`build_list_charges`].
//! 3. [`parse_authorize`] turns `(status, body)` into an [`AuthorizeOutcome`].
//!
//! Captures ([`build_capture`] / [`parse_capture`]), refunds ([`build_refund`] /
//! [`parse_refund`]) and reconciliation listings ([`build_list_charges`] / [`parse_list`])
//! follow the same pattern. Lane base URLs look like `https://api.stripe.com` or
//! `http://127.0.0.1:8787/lanes/fast` (the simulator, `scripts/acquirer-sim.mjs`).
//!
//! Every payment intent carries `metadata[order_id]`, `metadata[event_id]` and
//! `metadata[idempotency_key]`, so a listing can be matched to orders and attempts.

use crate::error::ApiError;
use crate::money::{Currency, MinorUnits};
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// The Stripe API version poptill's parsing is written against (pinned on every call).
pub const STRIPE_VERSION: &str = "2024-06-20";

/// Largest amount Stripe accepts in one charge (in minor units).
pub const MAX_AMOUNT: i64 = 99_999_999;

/// Most items a Stripe list call returns per page.
pub const MAX_LIST_LIMIT: u32 = 100;

// ---------------------------------------------------------------------------------------------
// Requests

/// HTTP method of an [`HttpCall`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
        }
    }
}

/// One HTTP request for the shell to send as it is. `headers` include the API key, and
/// `body` may include a card number: `Debug` masks both.
#[derive(Clone)]
pub struct HttpCall {
    pub method: HttpMethod,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The form-encoded body; empty for GET.
    pub body: Secret<String>,
}

impl HttpCall {
    /// The value of a header (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for HttpCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Headers<'a>(&'a [(String, String)]);
        impl fmt::Debug for Headers<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut list = f.debug_list();
                for (k, v) in self.0 {
                    if k.eq_ignore_ascii_case("authorization") {
                        list.entry(&(k.as_str(), "Bearer ***"));
                    } else {
                        list.entry(&(k.as_str(), v.as_str()));
                    }
                }
                list.finish()
            }
        }
        f.debug_struct("HttpCall")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &Headers(&self.headers))
            .field("body", &self.body)
            .finish()
    }
}

/// What the shell knows about one authorization attempt.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    pub amount: MinorUnits,
    pub currency: Currency,
    /// 12 to 19 ASCII digits, no spaces.
    pub card_number: Secret<String>,
    /// 1 to 12.
    pub exp_month: u8,
    /// Four digits, e.g. 2030.
    pub exp_year: u16,
    /// 3 or 4 ASCII digits when the buyer gave one.
    pub cvc: Option<Secret<String>>,
    /// Unique per attempt (e.g. `{order_id}_1`, `{order_id}_2`): Stripe replays the stored
    /// result for a key it has seen, and refuses the key with other parameters.
    pub idempotency_key: String,
    pub order_id: String,
    pub event_id: String,
    /// `true`: capture at once (`capture_method=automatic`); `false`: authorize only
    /// (`manual`), capture later with [`build_capture`].
    pub capture: bool,
}

/// Builds `POST {lane}/v1/payment_intents` with `confirm=true` and the raw card data.
pub fn build_authorize(
    lane_base_url: &str,
    secret: &Secret<String>,
    req: &AuthorizeRequest,
) -> Result<HttpCall, AcquirerError> {
    let base = check_base_url(lane_base_url)?;
    check_amount(req.amount, "amount")?;
    let number = req.card_number.expose();
    if !(12..=19).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AcquirerError::InvalidInput {
            field: "card_number",
        });
    }
    if !(1..=12).contains(&req.exp_month) {
        return Err(AcquirerError::InvalidInput { field: "exp_month" });
    }
    if !(2000..=2099).contains(&req.exp_year) {
        return Err(AcquirerError::InvalidInput { field: "exp_year" });
    }
    if let Some(cvc) = &req.cvc {
        let c = cvc.expose();
        if !(3..=4).contains(&c.len()) || !c.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AcquirerError::InvalidInput { field: "cvc" });
        }
    }
    check_metadata_value(&req.order_id, "order_id")?;
    check_metadata_value(&req.event_id, "event_id")?;
    check_metadata_value(&req.idempotency_key, "idempotency_key")?;

    let currency = req.currency.code().to_ascii_lowercase();
    let amount = req.amount.0.to_string();
    let exp_month = req.exp_month.to_string();
    let exp_year = req.exp_year.to_string();
    // Room for the whole body up front, so the string holding the card number is not
    // reallocated (which would leave copies behind); the Secret zeroes it when dropped.
    let mut form = form_urlencoded::Serializer::new(String::with_capacity(2048));
    form.append_pair("amount", &amount)
        .append_pair("currency", &currency)
        .append_pair("confirm", "true")
        .append_pair(
            "capture_method",
            if req.capture { "automatic" } else { "manual" },
        )
        .append_pair("payment_method_types[]", "card")
        .append_pair("payment_method_data[type]", "card")
        .append_pair("payment_method_data[card][number]", number)
        .append_pair("payment_method_data[card][exp_month]", &exp_month)
        .append_pair("payment_method_data[card][exp_year]", &exp_year);
    if let Some(cvc) = &req.cvc {
        form.append_pair("payment_method_data[card][cvc]", cvc.expose());
    }
    form.append_pair("metadata[order_id]", &req.order_id)
        .append_pair("metadata[event_id]", &req.event_id)
        .append_pair("metadata[idempotency_key]", &req.idempotency_key);
    let body = Secret::new(form.finish());

    Ok(HttpCall {
        method: HttpMethod::Post,
        url: format!("{base}/v1/payment_intents"),
        headers: post_headers(secret, &req.idempotency_key)?,
        body,
    })
}

/// Builds `POST {lane}/v1/payment_intents/{id}/capture`; `amount` None captures it all.
pub fn build_capture(
    lane_base_url: &str,
    secret: &Secret<String>,
    payment_intent_id: &str,
    amount: Option<MinorUnits>,
    idempotency_key: &str,
) -> Result<HttpCall, AcquirerError> {
    let base = check_base_url(lane_base_url)?;
    check_object_id(payment_intent_id, "pi_", "payment_intent_id")?;
    let mut form = form_urlencoded::Serializer::new(String::new());
    if let Some(a) = amount {
        check_amount(a, "amount")?;
        form.append_pair("amount_to_capture", &a.0.to_string());
    }
    Ok(HttpCall {
        method: HttpMethod::Post,
        url: format!("{base}/v1/payment_intents/{payment_intent_id}/capture"),
        headers: post_headers(secret, idempotency_key)?,
        body: Secret::new(form.finish()),
    })
}

/// Builds `POST {lane}/v1/refunds`; `amount` None refunds what is left, Some is partial.
pub fn build_refund(
    lane_base_url: &str,
    secret: &Secret<String>,
    payment_intent_id: &str,
    amount: Option<MinorUnits>,
    idempotency_key: &str,
) -> Result<HttpCall, AcquirerError> {
    let base = check_base_url(lane_base_url)?;
    check_object_id(payment_intent_id, "pi_", "payment_intent_id")?;
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("payment_intent", payment_intent_id);
    if let Some(a) = amount {
        check_amount(a, "amount")?;
        form.append_pair("amount", &a.0.to_string());
    }
    Ok(HttpCall {
        method: HttpMethod::Post,
        url: format!("{base}/v1/refunds"),
        headers: post_headers(secret, idempotency_key)?,
        body: Secret::new(form.finish()),
    })
}

/// Builds `GET {lane}/v1/payment_intents?limit=..&created[gte]=..&starting_after=..&expand[]=data.latest_charge`
/// (newest first; the expansion brings `amount_refunded`). `limit` is 1 to 100;
/// `created_gte` (Unix seconds) keeps older intents of the account out of the listing;
/// pass the previous page's [`ChargePage::next_starting_after`] to go on. [`ChargeListing`]
/// drives the pages to the end.
pub fn build_list_charges(
    lane_base_url: &str,
    secret: &Secret<String>,
    limit: u32,
    created_gte: Option<i64>,
    starting_after: Option<&str>,
) -> Result<HttpCall, AcquirerError> {
    let base = check_base_url(lane_base_url)?;
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(AcquirerError::InvalidInput { field: "limit" });
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", &limit.to_string());
    if let Some(gte) = created_gte {
        if gte < 0 {
            return Err(AcquirerError::InvalidInput { field: "created" });
        }
        query.append_pair("created[gte]", &gte.to_string());
    }
    if let Some(after) = starting_after {
        check_object_id(after, "pi_", "starting_after")?;
        query.append_pair("starting_after", after);
    }
    query.append_pair("expand[]", "data.latest_charge");
    Ok(HttpCall {
        method: HttpMethod::Get,
        url: format!("{base}/v1/payment_intents?{}", query.finish()),
        headers: common_headers(secret)?,
        body: Secret::new(String::new()),
    })
}

/// Builds `GET {lane}/v1/payment_intents/{id}`: the PaymentIntent as it is now. A
/// `processing` intent settles later, while an idempotent replay of the request that made
/// it keeps answering the stored `processing` answer, so its outcome is read this way.
pub fn build_retrieve_intent(
    lane_base_url: &str,
    secret: &Secret<String>,
    payment_intent_id: &str,
) -> Result<HttpCall, AcquirerError> {
    let base = check_base_url(lane_base_url)?;
    check_object_id(payment_intent_id, "pi_", "payment_intent_id")?;
    Ok(HttpCall {
        method: HttpMethod::Get,
        url: format!("{base}/v1/payment_intents/{payment_intent_id}"),
        headers: common_headers(secret)?,
        body: Secret::new(String::new()),
    })
}

/// The id of the PaymentIntent in a 2xx answer whose status is `processing`.
pub fn processing_intent(status: u16, body: &str) -> Option<String> {
    if !(200..300).contains(&status) {
        return None;
    }
    let pi: PaymentIntentShape = serde_json::from_str(body).ok()?;
    (pi.object == "payment_intent" && pi.status == "processing").then_some(pi.id)
}

/// Most pages one [`ChargeListing`] reads from one lane (100 intents each) before it stops
/// and says `truncated`.
pub const MAX_LIST_PAGES: u32 = 100;

/// Reads one lane's payment intents created since an instant, page by page to the end.
///
/// Call [`ChargeListing::next_call`], send it, feed the answer to [`ChargeListing::feed`],
/// and repeat until `next_call` gives `None`; then [`ChargeListing::finish`]. The listing
/// never ends silently short: it is `truncated` when it stopped at `max_pages`, when the
/// acquirer said `has_more` without a cursor to go on, or when a cursor repeated.
/// Intents older than the bound are dropped (and end the listing, since pages are newest
/// first), in case an acquirer ignores `created[gte]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeListing {
    created_gte: i64,
    max_pages: u32,
    pages: u32,
    cursor: Option<String>,
    done: bool,
    truncated: bool,
    charges: Vec<ChargeRecord>,
}

impl ChargeListing {
    /// A listing of intents created at or after `created_gte` (Unix seconds).
    pub fn new(created_gte: i64, max_pages: u32) -> ChargeListing {
        ChargeListing {
            created_gte: created_gte.max(0),
            max_pages: max_pages.max(1),
            pages: 0,
            cursor: None,
            done: false,
            truncated: false,
            charges: Vec::new(),
        }
    }

    /// The next page to ask for, or `None` when the listing is over.
    pub fn next_call(
        &mut self,
        lane_base_url: &str,
        secret: &Secret<String>,
    ) -> Option<Result<HttpCall, AcquirerError>> {
        if self.done {
            return None;
        }
        if self.pages >= self.max_pages {
            self.done = true;
            self.truncated = true;
            return None;
        }
        Some(build_list_charges(
            lane_base_url,
            secret,
            MAX_LIST_LIMIT,
            Some(self.created_gte),
            self.cursor.as_deref(),
        ))
    }

    /// Takes the answer to the last [`ChargeListing::next_call`]. An error leaves the
    /// listing unfinished: the caller reports the lane as unavailable.
    pub fn feed(&mut self, status: u16, body: &str) -> Result<(), AcquirerError> {
        let page = parse_list(status, body)?;
        self.pages += 1;
        let mut older = false;
        for c in page.charges {
            if c.created < self.created_gte {
                older = true;
            } else {
                self.charges.push(c);
            }
        }
        match page.next_starting_after {
            _ if older || !page.has_more => self.done = true,
            Some(next) if self.cursor.as_deref() != Some(next.as_str()) => self.cursor = Some(next),
            // `has_more` without a new cursor: going on would read the same page again.
            _ => {
                self.done = true;
                self.truncated = true;
            }
        }
        Ok(())
    }

    /// The intents read, and whether the listing stopped before the end.
    pub fn finish(self) -> (Vec<ChargeRecord>, bool) {
        (self.charges, self.truncated || !self.done)
    }
}

fn common_headers(secret: &Secret<String>) -> Result<Vec<(String, String)>, AcquirerError> {
    let key = secret.expose();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AcquirerError::InvalidInput { field: "api_key" });
    }
    Ok(vec![
        ("Authorization".to_string(), format!("Bearer {key}")),
        ("Stripe-Version".to_string(), STRIPE_VERSION.to_string()),
        ("Accept".to_string(), "application/json".to_string()),
    ])
}

fn post_headers(
    secret: &Secret<String>,
    idempotency_key: &str,
) -> Result<Vec<(String, String)>, AcquirerError> {
    if idempotency_key.is_empty()
        || idempotency_key.len() > 255
        || !idempotency_key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(AcquirerError::InvalidInput {
            field: "idempotency_key",
        });
    }
    let mut headers = common_headers(secret)?;
    headers.push((
        "Content-Type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    ));
    headers.push(("Idempotency-Key".to_string(), idempotency_key.to_string()));
    Ok(headers)
}

fn check_base_url(url: &str) -> Result<&str, AcquirerError> {
    let base = url.trim_end_matches('/');
    let scheme_ok = base.starts_with("https://") || base.starts_with("http://");
    let chars_ok = base
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if scheme_ok && chars_ok && base.len() > "http://".len() {
        Ok(base)
    } else {
        Err(AcquirerError::InvalidInput {
            field: "lane_base_url",
        })
    }
}

fn check_amount(amount: MinorUnits, field: &'static str) -> Result<(), AcquirerError> {
    if (1..=MAX_AMOUNT).contains(&amount.0) {
        Ok(())
    } else {
        Err(AcquirerError::InvalidInput { field })
    }
}

/// Stripe object ids (`pi_...`) go into URL paths, so only `[A-Za-z0-9_]` is allowed.
fn check_object_id(id: &str, prefix: &str, field: &'static str) -> Result<(), AcquirerError> {
    let ok = id.starts_with(prefix)
        && id.len() > prefix.len()
        && id.len() <= 255
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AcquirerError::InvalidInput { field })
    }
}

/// Stripe metadata values are at most 500 characters.
fn check_metadata_value(value: &str, field: &'static str) -> Result<(), AcquirerError> {
    if value.is_empty() || value.chars().count() > 500 || value.chars().any(char::is_control) {
        Err(AcquirerError::InvalidInput { field })
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Answers

/// Why a card was declined, in poptill's terms. The buyer sees [`DeclineReason::buyer_message`];
/// the acquirer's raw codes stay in the merchant's records. Lost, stolen and fraud-suspected
/// cards are reported to the buyer as a plain `card_declined`, as Stripe advises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclineReason {
    CardDeclined,
    InsufficientFunds,
    ExpiredCard,
    IncorrectCvc,
    IncorrectNumber,
    InvalidExpiry,
    AuthenticationRequired,
    CardNotSupported,
    LimitExceeded,
    DuplicateTransaction,
}

impl DeclineReason {
    /// Stable snake_case code for the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeclineReason::CardDeclined => "card_declined",
            DeclineReason::InsufficientFunds => "insufficient_funds",
            DeclineReason::ExpiredCard => "expired_card",
            DeclineReason::IncorrectCvc => "incorrect_cvc",
            DeclineReason::IncorrectNumber => "incorrect_number",
            DeclineReason::InvalidExpiry => "invalid_expiry",
            DeclineReason::AuthenticationRequired => "authentication_required",
            DeclineReason::CardNotSupported => "card_not_supported",
            DeclineReason::LimitExceeded => "limit_exceeded",
            DeclineReason::DuplicateTransaction => "duplicate_transaction",
        }
    }

    /// A sentence for the buyer: what happened and what to do.
    pub fn buyer_message(self) -> &'static str {
        match self {
            DeclineReason::CardDeclined => {
                "Your card was declined. Please try another card or contact your bank."
            }
            DeclineReason::InsufficientFunds => {
                "Your card has insufficient funds. Please try another card."
            }
            DeclineReason::ExpiredCard => "Your card has expired. Please use another card.",
            DeclineReason::IncorrectCvc => {
                "The security code (CVC) is incorrect. Please check it and try again."
            }
            DeclineReason::IncorrectNumber => {
                "The card number is incorrect. Please check it and try again."
            }
            DeclineReason::InvalidExpiry => {
                "The expiry date is not valid. Please check it and try again."
            }
            DeclineReason::AuthenticationRequired => {
                "Your bank asks to confirm this payment, which this checkout cannot do. Please try another card."
            }
            DeclineReason::CardNotSupported => {
                "This card cannot be used for this purchase. Please try another card."
            }
            DeclineReason::LimitExceeded => {
                "Your card has reached a spending limit. Please try another card or contact your bank."
            }
            DeclineReason::DuplicateTransaction => {
                "An identical payment was just made with this card. Please check before paying again."
            }
        }
    }
}

/// How poptill treats a Stripe error or decline code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclineTreatment {
    /// Tell the buyer the reason.
    Decline(DeclineReason),
    /// A temporary failure at the issuer or network: a new attempt (new idempotency key,
    /// maybe another lane) can succeed.
    RetryNewAttempt,
}

/// Stripe's documented error codes and decline codes and poptill's treatment of each.
/// Codes not listed are a plain [`DeclineReason::CardDeclined`].
pub const DECLINE_TABLE: &[(&str, DeclineTreatment)] = {
    use DeclineReason as R;
    use DeclineTreatment::{Decline as D, RetryNewAttempt as Retry};
    &[
        ("generic_decline", D(R::CardDeclined)),
        ("card_declined", D(R::CardDeclined)),
        ("do_not_honor", D(R::CardDeclined)),
        ("do_not_try_again", D(R::CardDeclined)),
        ("call_issuer", D(R::CardDeclined)),
        ("no_action_taken", D(R::CardDeclined)),
        ("not_permitted", D(R::CardDeclined)),
        ("invalid_account", D(R::CardDeclined)),
        ("invalid_amount", D(R::CardDeclined)),
        ("new_account_information_available", D(R::CardDeclined)),
        ("revocation_of_all_authorizations", D(R::CardDeclined)),
        ("revocation_of_authorization", D(R::CardDeclined)),
        ("stop_payment_order", D(R::CardDeclined)),
        ("testmode_decline", D(R::CardDeclined)),
        ("incorrect_zip", D(R::CardDeclined)),
        ("incorrect_pin", D(R::CardDeclined)),
        ("invalid_pin", D(R::CardDeclined)),
        ("pin_try_exceeded", D(R::CardDeclined)),
        ("offline_pin_required", D(R::CardDeclined)),
        ("online_or_offline_pin_required", D(R::CardDeclined)),
        // Neutral on purpose: never tell the buyer that fraud or a lost card is suspected.
        ("fraudulent", D(R::CardDeclined)),
        ("lost_card", D(R::CardDeclined)),
        ("stolen_card", D(R::CardDeclined)),
        ("pickup_card", D(R::CardDeclined)),
        ("merchant_blacklist", D(R::CardDeclined)),
        ("restricted_card", D(R::CardDeclined)),
        ("security_violation", D(R::CardDeclined)),
        ("insufficient_funds", D(R::InsufficientFunds)),
        ("expired_card", D(R::ExpiredCard)),
        ("incorrect_cvc", D(R::IncorrectCvc)),
        ("invalid_cvc", D(R::IncorrectCvc)),
        ("incorrect_number", D(R::IncorrectNumber)),
        ("invalid_number", D(R::IncorrectNumber)),
        ("invalid_expiry_month", D(R::InvalidExpiry)),
        ("invalid_expiry_year", D(R::InvalidExpiry)),
        ("authentication_required", D(R::AuthenticationRequired)),
        ("card_not_supported", D(R::CardNotSupported)),
        ("currency_not_supported", D(R::CardNotSupported)),
        ("service_not_allowed", D(R::CardNotSupported)),
        ("transaction_not_allowed", D(R::CardNotSupported)),
        ("card_velocity_exceeded", D(R::LimitExceeded)),
        ("withdrawal_count_limit_exceeded", D(R::LimitExceeded)),
        ("duplicate_transaction", D(R::DuplicateTransaction)),
        ("processing_error", Retry),
        ("issuer_not_available", Retry),
        ("try_again_later", Retry),
        ("reenter_transaction", Retry),
        ("approve_with_id", Retry),
    ]
};

fn lookup_decline(code: Option<&str>, decline_code: Option<&str>) -> DeclineTreatment {
    let find = |c: &str| DECLINE_TABLE.iter().find(|(k, _)| *k == c).map(|(_, t)| *t);
    // The decline code is the more precise one; `card_declined` alone says little.
    decline_code
        .and_then(find)
        .or_else(|| code.and_then(find))
        .unwrap_or(DeclineTreatment::Decline(DeclineReason::CardDeclined))
}

/// What an authorization (or capture) answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    /// The card was charged (`captured`) or authorized for a later capture.
    Approved {
        payment_intent_id: String,
        captured: bool,
    },
    /// The issuer or Stripe declined the card. `code` and `decline_code` are Stripe's, for
    /// the merchant's records; show the buyer `message` only.
    Declined {
        reason: DeclineReason,
        code: String,
        decline_code: Option<String>,
        message: &'static str,
        payment_intent_id: Option<String>,
    },
    /// Try again later. `new_attempt: false` (5xx, 429, lock_timeout, an unreadable answer):
    /// the outcome is unknown, so resend the same call with the same idempotency key (or
    /// reconcile). `new_attempt: true` (a temporary decline such as processing_error): the
    /// attempt failed; a retry needs a new idempotency key.
    Retryable { reason: String, new_attempt: bool },
    /// The request itself was refused (other 4xx: bad key, idempotency_error, bad
    /// parameter). A retry will not help; `message` is Stripe's, for logs only.
    Invalid {
        status: u16,
        code: String,
        message: String,
    },
}

impl AuthorizeOutcome {
    /// The error the checkout API answers with, or None when approved.
    pub fn to_api(&self) -> Option<ApiError> {
        match self {
            AuthorizeOutcome::Approved { .. } => None,
            AuthorizeOutcome::Declined {
                reason, message, ..
            } => Some(ApiError::new(402, reason.as_str(), *message)),
            AuthorizeOutcome::Retryable { .. } => Some(
                ApiError::new(
                    503,
                    "acquirer_unavailable",
                    "The payment provider did not answer in time. Please try again in a moment.",
                )
                .retryable(),
            ),
            AuthorizeOutcome::Invalid { .. } => Some(ApiError::new(
                502,
                "acquirer_rejected",
                "The payment provider refused the request. The organiser has been told; please try again later.",
            )),
        }
    }
}

/// Reads the answer to [`build_authorize`].
pub fn parse_authorize(status: u16, body: &str) -> AuthorizeOutcome {
    if (200..300).contains(&status) {
        return match serde_json::from_str::<PaymentIntentShape>(body) {
            Ok(pi) if pi.object == "payment_intent" => intent_outcome(pi),
            _ => unreadable(status),
        };
    }
    error_outcome(status, body)
}

/// Reads the answer to [`build_capture`]. A capture refused because the payment intent is
/// already `succeeded` (a capture whose answer was lost) counts as captured.
pub fn parse_capture(status: u16, body: &str) -> AuthorizeOutcome {
    if !(200..300).contains(&status) {
        if let Ok(env) = serde_json::from_str::<ErrorEnvelope>(body) {
            if let Some(pi) = env.error.payment_intent {
                if pi.status == "succeeded" {
                    return AuthorizeOutcome::Approved {
                        payment_intent_id: pi.id,
                        captured: true,
                    };
                }
            }
        }
    }
    parse_authorize(status, body)
}

fn unreadable(status: u16) -> AuthorizeOutcome {
    AuthorizeOutcome::Retryable {
        reason: format!("unreadable answer with status {status}"),
        new_attempt: false,
    }
}

fn intent_outcome(pi: PaymentIntentShape) -> AuthorizeOutcome {
    match pi.status.as_str() {
        "succeeded" => AuthorizeOutcome::Approved {
            payment_intent_id: pi.id,
            captured: true,
        },
        "requires_capture" => AuthorizeOutcome::Approved {
            payment_intent_id: pi.id,
            captured: false,
        },
        "processing" => AuthorizeOutcome::Retryable {
            reason: "payment_intent processing".to_string(),
            new_attempt: false,
        },
        "requires_payment_method" => {
            let err = pi.last_payment_error.unwrap_or_default();
            decline_outcome(err.code, err.decline_code, Some(pi.id))
        }
        // poptill does not run 3-D Secure challenges.
        "requires_action" => decline_outcome(
            Some("authentication_required".to_string()),
            None,
            Some(pi.id),
        ),
        other => AuthorizeOutcome::Invalid {
            status: 200,
            code: format!("payment_intent_{}", sanitize(other)),
            message: format!("unexpected payment intent status {}", sanitize(other)),
        },
    }
}

fn decline_outcome(
    code: Option<String>,
    decline_code: Option<String>,
    payment_intent_id: Option<String>,
) -> AuthorizeOutcome {
    match lookup_decline(code.as_deref(), decline_code.as_deref()) {
        DeclineTreatment::Decline(reason) => AuthorizeOutcome::Declined {
            reason,
            code: code.unwrap_or_else(|| "card_declined".to_string()),
            decline_code,
            message: reason.buyer_message(),
            payment_intent_id,
        },
        DeclineTreatment::RetryNewAttempt => AuthorizeOutcome::Retryable {
            reason: decline_code
                .or(code)
                .unwrap_or_else(|| "processing_error".to_string()),
            new_attempt: true,
        },
    }
}

/// Error codes that mean "busy, try the same request again".
const RETRY_SAME_CODES: &[&str] = &[
    "lock_timeout",
    "rate_limit",
    "idempotency_key_in_use",
    "api_connection_error",
];

fn error_outcome(status: u16, body: &str) -> AuthorizeOutcome {
    let err = serde_json::from_str::<ErrorEnvelope>(body)
        .map(|e| e.error)
        .ok();
    let retry_same = |reason: String| AuthorizeOutcome::Retryable {
        reason,
        new_attempt: false,
    };
    if status >= 500 || status == 429 || status == 409 {
        let what = err
            .as_ref()
            .and_then(|e| e.code.clone())
            .unwrap_or_else(|| format!("status {status}"));
        return retry_same(sanitize(&what));
    }
    let Some(err) = err else {
        return if (400..500).contains(&status) {
            AuthorizeOutcome::Invalid {
                status,
                code: format!("http_{status}"),
                message: format!("unreadable error answer with status {status}"),
            }
        } else {
            unreadable(status)
        };
    };
    let code = err.code.as_deref().unwrap_or("");
    if err.kind == "api_error" || err.kind == "rate_limit_error" || RETRY_SAME_CODES.contains(&code)
    {
        return retry_same(sanitize(if code.is_empty() { &err.kind } else { code }));
    }
    if status == 402 || err.kind == "card_error" {
        let pi_id = err.payment_intent.map(|pi| pi.id);
        return decline_outcome(err.code, err.decline_code, pi_id);
    }
    let code = err.code.unwrap_or_else(|| {
        if err.kind.is_empty() {
            format!("http_{status}")
        } else {
            err.kind.clone()
        }
    });
    AuthorizeOutcome::Invalid {
        status,
        code: sanitize(&code),
        message: err.message.unwrap_or_default(),
    }
}

/// Keeps codes short and printable before they reach logs.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ' ')
        .take(64)
        .collect()
}

/// What a refund answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// `pending`: Stripe accepted it and will finish it later (status `pending`).
    Refunded {
        refund_id: String,
        amount: MinorUnits,
        pending: bool,
    },
    /// Refused for good (already refunded, amount too large, failed, canceled...).
    Refused { code: String, message: String },
    /// Outcome unknown: resend with the same idempotency key.
    Retryable { reason: String },
}

/// Reads the answer to [`build_refund`].
pub fn parse_refund(status: u16, body: &str) -> RefundOutcome {
    if (200..300).contains(&status) {
        return match serde_json::from_str::<RefundShape>(body) {
            Ok(r) if r.object == "refund" => match r.status.as_str() {
                "succeeded" | "pending" | "requires_action" => RefundOutcome::Refunded {
                    refund_id: r.id,
                    amount: MinorUnits(r.amount),
                    pending: r.status != "succeeded",
                },
                other => RefundOutcome::Refused {
                    code: format!("refund_{}", sanitize(other)),
                    message: r.failure_reason.unwrap_or_default(),
                },
            },
            _ => RefundOutcome::Retryable {
                reason: format!("unreadable answer with status {status}"),
            },
        };
    }
    match error_outcome(status, body) {
        AuthorizeOutcome::Retryable { reason, .. } => RefundOutcome::Retryable { reason },
        AuthorizeOutcome::Invalid { code, message, .. } => RefundOutcome::Refused { code, message },
        AuthorizeOutcome::Declined { code, .. } => RefundOutcome::Refused {
            code,
            message: String::new(),
        },
        AuthorizeOutcome::Approved { .. } => RefundOutcome::Retryable {
            reason: format!("unexpected status {status}"),
        },
    }
}

/// State of a payment intent in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeStatus {
    Succeeded,
    RequiresCapture,
    /// Declined (or never confirmed).
    RequiresPaymentMethod,
    RequiresAction,
    Processing,
    Canceled,
    Other(String),
}

impl ChargeStatus {
    fn from_stripe(s: &str) -> ChargeStatus {
        match s {
            "succeeded" => ChargeStatus::Succeeded,
            "requires_capture" => ChargeStatus::RequiresCapture,
            "requires_payment_method" => ChargeStatus::RequiresPaymentMethod,
            "requires_action" => ChargeStatus::RequiresAction,
            "processing" => ChargeStatus::Processing,
            "canceled" => ChargeStatus::Canceled,
            other => ChargeStatus::Other(sanitize(other)),
        }
    }
}

/// One payment intent as reconciliation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRecord {
    pub payment_intent_id: String,
    pub amount: MinorUnits,
    /// Upper-case ISO 4217 code as Stripe reported it (Stripe sends lower case).
    pub currency: String,
    pub status: ChargeStatus,
    pub amount_received: MinorUnits,
    /// From the expanded latest charge; None when the listing did not expand it.
    pub amount_refunded: Option<MinorUnits>,
    pub order_id: Option<String>,
    pub event_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// Unix seconds.
    pub created: i64,
}

/// One page of [`build_list_charges`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargePage {
    pub charges: Vec<ChargeRecord>,
    /// As the acquirer said it; with an empty page there is no cursor to go on
    /// ([`ChargeListing`] then reports the listing as truncated).
    pub has_more: bool,
    /// The `starting_after` for the next page, when `has_more`.
    pub next_starting_after: Option<String>,
}

/// Reads the answer to [`build_list_charges`].
pub fn parse_list(status: u16, body: &str) -> Result<ChargePage, AcquirerError> {
    if !(200..300).contains(&status) {
        return Err(match error_outcome(status, body) {
            AuthorizeOutcome::Retryable { reason, .. } => AcquirerError::Unavailable { reason },
            AuthorizeOutcome::Invalid { status, code, .. } => {
                AcquirerError::Rejected { status, code }
            }
            _ => AcquirerError::Rejected {
                status,
                code: format!("http_{status}"),
            },
        });
    }
    let list: ListShape =
        serde_json::from_str(body).map_err(|_| AcquirerError::MalformedResponse)?;
    if list.object != "list" {
        return Err(AcquirerError::MalformedResponse);
    }
    let charges: Vec<ChargeRecord> = list
        .data
        .into_iter()
        .map(|pi| {
            let meta = |k: &str| pi.metadata.as_ref().and_then(|m| m.get(k).cloned());
            ChargeRecord {
                amount_refunded: match &pi.latest_charge {
                    Some(LatestCharge::Expanded(ch)) => Some(MinorUnits(ch.amount_refunded)),
                    _ => None,
                },
                order_id: meta("order_id"),
                event_id: meta("event_id"),
                idempotency_key: meta("idempotency_key"),
                currency: pi.currency.to_ascii_uppercase(),
                status: ChargeStatus::from_stripe(&pi.status),
                amount: MinorUnits(pi.amount),
                amount_received: MinorUnits(pi.amount_received),
                created: pi.created,
                payment_intent_id: pi.id,
            }
        })
        .collect();
    let next_starting_after = if list.has_more {
        charges.last().map(|c| c.payment_intent_id.clone())
    } else {
        None
    };
    Ok(ChargePage {
        has_more: list.has_more,
        charges,
        next_starting_after,
    })
}

// ---------------------------------------------------------------------------------------------
// Stripe's JSON shapes (only the fields poptill reads; unknown fields are ignored)

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: StripeErrorShape,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StripeErrorShape {
    #[serde(rename = "type")]
    kind: String,
    code: Option<String>,
    decline_code: Option<String>,
    message: Option<String>,
    payment_intent: Option<Box<PaymentIntentShape>>,
}

#[derive(Deserialize)]
struct PaymentIntentShape {
    id: String,
    #[serde(default)]
    object: String,
    #[serde(default)]
    amount: i64,
    #[serde(default)]
    amount_received: i64,
    #[serde(default)]
    currency: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    created: i64,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    latest_charge: Option<LatestCharge>,
    #[serde(default)]
    last_payment_error: Option<StripeErrorShape>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LatestCharge {
    Id(#[allow(dead_code)] String),
    Expanded(ChargeShape),
}

#[derive(Deserialize)]
struct ChargeShape {
    #[serde(default)]
    amount_refunded: i64,
}

#[derive(Deserialize)]
struct RefundShape {
    id: String,
    #[serde(default)]
    object: String,
    #[serde(default)]
    amount: i64,
    #[serde(default)]
    status: String,
    #[serde(default)]
    failure_reason: Option<String>,
}

#[derive(Deserialize)]
struct ListShape {
    #[serde(default)]
    object: String,
    #[serde(default)]
    data: Vec<PaymentIntentShape>,
    #[serde(default)]
    has_more: bool,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A call that could not be built, or a listing that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquirerError {
    /// An argument is out of range or has characters that cannot be sent; names the field.
    InvalidInput { field: &'static str },
    /// The acquirer is busy or failing (5xx, 429, lock_timeout): try again later.
    Unavailable { reason: String },
    /// The acquirer refused the request (another 4xx).
    Rejected { status: u16, code: String },
    /// The answer was not the JSON Stripe documents.
    MalformedResponse,
}

impl AcquirerError {
    pub fn to_api(&self) -> ApiError {
        match self {
            AcquirerError::InvalidInput { field } => ApiError::bad_request(
                "invalid_payment_request",
                format!("The payment request has an invalid {field}."),
            ),
            AcquirerError::Unavailable { .. } => ApiError::new(
                503,
                "acquirer_unavailable",
                "The payment provider did not answer in time. Please try again in a moment.",
            )
            .retryable(),
            AcquirerError::Rejected { .. } => ApiError::new(
                502,
                "acquirer_rejected",
                "The payment provider refused the request. The organiser has been told; please try again later.",
            ),
            AcquirerError::MalformedResponse => ApiError::new(
                502,
                "acquirer_bad_response",
                "The payment provider sent an answer poptill cannot read. Please try again later.",
            )
            .retryable(),
        }
    }
}

impl From<AcquirerError> for ApiError {
    fn from(e: AcquirerError) -> ApiError {
        e.to_api()
    }
}

impl fmt::Display for AcquirerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquirerError::InvalidInput { field } => write!(f, "invalid {field}"),
            AcquirerError::Unavailable { reason } => write!(f, "acquirer unavailable: {reason}"),
            AcquirerError::Rejected { status, code } => {
                write!(f, "acquirer rejected the request ({status} {code})")
            }
            AcquirerError::MalformedResponse => f.write_str("malformed acquirer response"),
        }
    }
}

impl std::error::Error for AcquirerError {}

#[cfg(test)]
mod tests;
