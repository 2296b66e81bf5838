//! Errors of the event ledger, each mapped to a 4xx/5xx `ApiError` with a stable code.

use super::orders::BuyerScope;
use crate::error::ApiError;
use std::fmt;

/// Which offline risk limit refused a stored authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineLimit {
    /// The amount is above `per_transaction_max`.
    PerTransaction,
    /// Accepting it would take the outstanding stored amount above `aggregate_max`.
    Aggregate,
    /// The same card already has `per_card_max_count` stored payments in the window.
    PerCard,
}

/// Everything the ledger can refuse. No variant ever carries card data or a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerError {
    /// The event configuration is not valid; `field` names the offending field.
    InvalidConfig {
        field: String,
        reason: String,
    },
    /// An id or key is empty, too long or has characters outside `[A-Za-z0-9_.:-]`.
    InvalidId {
        field: &'static str,
    },
    UnknownSku(String),
    InvalidQuantity {
        sku: String,
    },
    InvalidHold(String),
    OutOfStock {
        sku: String,
        available: u32,
    },
    SalesClosed,
    SalesNotStarted,
    PurchaseLimit {
        sku: String,
        max: u32,
    },
    /// A card or admission ticket already holds or bought `bought` of at most `max`.
    BuyerLimit {
        sku: String,
        max: u32,
        bought: u32,
        scope: BuyerScope,
    },
    /// A card or admission ticket already has the most pending orders it may have.
    TooManyPending {
        scope: BuyerScope,
    },
    /// The card was declined too often lately; refused before the acquirer sees it.
    CardVelocity,
    /// The event keeps as many unsold orders as it may and none can be forgotten yet.
    TooManyOrders,
    NotAdmitted,
    QueueFull,
    TicketNotFound,
    OrderNotFound(String),
    /// The same order id was used with different contents.
    OrderConflict(String),
    InvalidTransition {
        order_id: String,
        state: &'static str,
        action: &'static str,
    },
    /// The payment came back after the hold lapsed and the stock is gone.
    HoldLapsed(String),
    AmountMismatch,
    CurrencyMismatch,
    AmountOutOfRange,
    OfflineLimit(OfflineLimit),
    AuthNotFound(String),
    /// The same auth id or refund id was used with different contents.
    Conflict(String),
    /// A second, different acquirer answer for something that already has a final one.
    ConflictingResult(String),
    RefundNotFound(String),
    RefundNotAllowed,
    RefundWindowClosed,
    PartialRefundNotAllowed,
    RefundExceedsCaptured {
        remaining: i64,
    },
    NotCaptured(String),
    AcquirerUnavailable,
    IdempotencyNotFound,
    IdempotencyInFlight,
    IdempotencyMismatch,
    /// The stored state could not be written or read back (a server fault, not the caller's).
    StateCorrupt,
}

fn scope_name(scope: BuyerScope) -> &'static str {
    match scope {
        BuyerScope::Card => "card",
        BuyerScope::Ticket => "admission ticket",
    }
}

impl LedgerError {
    /// The HTTP-facing form: status, stable code, a sentence; never a secret.
    pub fn to_api(&self) -> ApiError {
        use LedgerError as E;
        match self {
            E::InvalidConfig { field, reason } => ApiError::new(
                422,
                "invalid_event_config",
                format!("The event configuration is not valid: {field}: {reason}."),
            ),
            E::InvalidId { field } => ApiError::new(
                422,
                "invalid_id",
                format!(
                    "The {field} must be 1 to 128 characters of letters, digits, '_', '-', '.' or ':'."
                ),
            ),
            E::UnknownSku(s) => ApiError::new(
                422,
                "unknown_sku",
                format!("This event sells no item with id {s:?}."),
            ),
            E::InvalidQuantity { sku } => ApiError::new(
                422,
                "invalid_quantity",
                format!("The quantity for {sku:?} must be between 1 and 1000."),
            ),
            E::InvalidHold(why) => ApiError::new(
                422,"invalid_hold", why.clone()),
            E::OutOfStock { sku, available } => ApiError::new(
                409,
                "out_of_stock",
                format!("Not enough of {sku:?} left: {available} available."),
            ),
            E::SalesClosed => {
                ApiError::new(409, "sales_closed", "Sales for this event have ended.")
            }
            E::PurchaseLimit { sku, max } => ApiError::new(
                422,
                "purchase_limit",
                format!("At most {max} of {sku} can be bought in one order."),
            ),
            E::BuyerLimit {
                sku,
                max,
                bought,
                scope,
            } => ApiError::new(
                422,
                "buyer_limit",
                format!(
                    "At most {max} of {sku} can be bought per {}; {bought} already bought or in checkout.",
                    scope_name(*scope)
                ),
            ),
            E::TooManyPending { scope } => ApiError::new(
                429,
                "too_many_pending",
                format!(
                    "This {} already has checkouts in progress; finish or wait for them, then try again.",
                    scope_name(*scope)
                ),
            )
            .retryable(),
            E::CardVelocity => ApiError::new(
                429,
                "card_velocity",
                "This card cannot be used for this event right now. Try another card.",
            )
            .retryable(),
            E::TooManyOrders => ApiError::new(
                429,
                "too_many_orders",
                "This event has too many unfinished checkouts right now; try again in a few minutes.",
            )
            .retryable(),
            E::SalesNotStarted => ApiError::new(
                409,
                "sales_not_started",
                "Sales for this event have not started yet; try again when they open.",
            ),
            E::NotAdmitted => ApiError::new(
                403,
                "not_admitted",
                "This checkout needs a waiting-room ticket that has been admitted; keep polling the queue.",
            ),
            E::QueueFull => ApiError::new(
                429,
                "queue_full",
                "The waiting room is full; try again in a moment.",
            )
            .retryable(),
            E::TicketNotFound => ApiError::new(
                404,
                "ticket_not_found",
                "This waiting-room ticket is unknown or was dropped after too long without a poll; join again.",
            ),
            E::OrderNotFound(_) => ApiError::not_found("order"),
            E::OrderConflict(id) => ApiError::new(
                409,
                "order_conflict",
                format!("Order {id:?} already exists with different contents."),
            ),
            E::InvalidTransition { order_id, state, action } => ApiError::new(
                409,
                "invalid_order_state",
                format!("Order {order_id:?} is {state}; it cannot be {action}."),
            ),
            E::HoldLapsed(id) => ApiError::new(
                409,
                "hold_lapsed",
                format!(
                    "The hold on order {id:?} lapsed and its items are sold out; the payment must be voided."
                ),
            ),
            E::AmountMismatch => ApiError::new(
                422,
                "amount_mismatch",
                "The amount does not equal the order total.",
            ),
            E::CurrencyMismatch => ApiError::new(
                422,
                "currency_mismatch",
                "The currency is not the currency of this event.",
            ),
            E::AmountOutOfRange => {
                ApiError::new(
                422,"amount_out_of_range", "An amount is out of range.")
            }
            E::OfflineLimit(OfflineLimit::PerTransaction) => ApiError::new(
                422,
                "offline_amount_too_high",
                "This amount is above the limit for payments stored while the acquirer is unreachable.",
            ),
            E::OfflineLimit(OfflineLimit::Aggregate) => ApiError::new(
                422,
                "offline_budget_exhausted",
                "The event's budget for stored offline payments is used up until stored payments are forwarded.",
            )
            .retryable(),
            E::OfflineLimit(OfflineLimit::PerCard) => ApiError::new(
                422,
                "offline_card_velocity",
                "This card already has the maximum number of stored offline payments for now.",
            ),
            E::AuthNotFound(_) => ApiError::not_found("stored authorization"),
            E::Conflict(id) => ApiError::new(
                409,
                "id_conflict",
                format!("{id:?} was already used with different contents."),
            ),
            E::ConflictingResult(id) => ApiError::new(
                409,
                "conflicting_result",
                format!("{id:?} already has a different final acquirer result."),
            ),
            E::RefundNotFound(_) => ApiError::not_found("refund"),
            E::RefundNotAllowed => ApiError::new(
                422,
                "refund_not_allowed",
                "The refund policy for this event does not allow this refund.",
            ),
            E::RefundWindowClosed => ApiError::new(
                422,
                "refund_window_closed",
                "The refund window for this order has closed.",
            ),
            E::PartialRefundNotAllowed => ApiError::new(
                422,
                "partial_refund_not_allowed",
                "The refund policy allows only a full refund of what remains.",
            ),
            E::RefundExceedsCaptured { remaining } => ApiError::new(
                422,
                "refund_exceeds_captured",
                format!("At most {remaining} minor units remain refundable on this order."),
            ),
            E::NotCaptured(id) => ApiError::new(
                409,
                "not_captured",
                format!("Order {id:?} has no captured payment to refund yet."),
            ),
            E::AcquirerUnavailable => ApiError::new(
                503,
                "acquirer_unavailable",
                "The acquirer is unreachable and this refund may not be queued; try again later.",
            )
            .retryable(),
            E::IdempotencyNotFound => ApiError::new(
                409,
                "idempotency_not_started",
                "No request with this idempotency key is in progress.",
            ),
            E::IdempotencyInFlight => ApiError::new(
                409,
                "idempotency_in_flight",
                "A request with this idempotency key is still being processed; retry shortly.",
            )
            .retryable(),
            E::StateCorrupt => ApiError::new(
                500,
                "ledger_state_unreadable",
                "The event's stored state could not be read; the operator has to restore it.",
            ),
            E::IdempotencyMismatch => ApiError::new(
                422,
                "idempotency_mismatch",
                "This idempotency key was already used with a different request body.",
            ),
        }
    }
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_api(), f)
    }
}

impl std::error::Error for LedgerError {}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> ApiError {
        e.to_api()
    }
}
