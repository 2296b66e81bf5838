//! Orders and stock: holds, confirmation, release, lapsed holds, and the order state machine.

use super::config::check_id;
use super::{Effect, EventLedger, Fx, LedgerError, Reply, LOST_CHECKOUT_AFTER_MS};
use crate::money::{Currency, MinorUnits};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most distinct lines and units per line in one order.
pub const MAX_LINES: usize = 50;
pub const MAX_QTY: u32 = 1_000;
/// Longest a hold may last.
pub const MAX_HOLD_MS: i64 = 30 * 60_000;
/// Most pending orders one card (or one admission ticket) may hold at once: a buyer
/// pressing Pay twice needs two, a hoarder wants hundreds.
pub const MAX_PENDING_PER_BUYER: usize = 2;
/// Declined orders of one card within [`DECLINE_WINDOW_MS`] after which the card's next
/// checkout is refused before it reaches the acquirer (card testing).
pub const MAX_DECLINES_PER_CARD: usize = 3;
pub const DECLINE_WINDOW_MS: i64 = 15 * 60_000;
/// Most unsold orders (declined, or abandoned when their hold lapsed) an event keeps. Past
/// it the oldest that are no longer needed are forgotten (see
/// [`EventLedger::make_room_for_an_order`]); if none may be, new holds wait (`429`).
pub const MAX_UNSOLD_ORDERS: usize = 5_000;
/// An unsold order is kept at least this long (the decline window, so card-testing limits
/// still see it; reconciliation of a lapsed hold must also be done).
pub const UNSOLD_KEEP_MS: i64 = DECLINE_WINDOW_MS;

/// Where an order is in its life.
///
/// `pending → approved | declined | abandoned (hold lapsed) | queued`;
/// `queued → forwarded | declined | expired`;
/// `approved | forwarded → partially_refunded → refunded`;
/// `abandoned | declined → lost` (reconciliation found a charge for it: refunded, never sold).
/// Every state but `pending` and `queued` is final (refund states can still move on).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Pending,
    Approved,
    Declined,
    Abandoned,
    Queued,
    Forwarded,
    Expired,
    PartiallyRefunded,
    Refunded,
    /// The checkout was lost after the acquirer charged: reconciliation refunds the charge
    /// (refund `lost_{charge}`), and a late `Confirm` is refused.
    Lost,
}

impl OrderState {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Pending => "pending",
            OrderState::Approved => "approved",
            OrderState::Declined => "declined",
            OrderState::Abandoned => "abandoned",
            OrderState::Queued => "queued",
            OrderState::Forwarded => "forwarded",
            OrderState::Expired => "expired",
            OrderState::PartiallyRefunded => "partially_refunded",
            OrderState::Refunded => "refunded",
            OrderState::Lost => "lost",
        }
    }

    /// Whether the acquirer holds captured money for the order.
    pub fn is_captured(self) -> bool {
        matches!(
            self,
            OrderState::Approved
                | OrderState::Forwarded
                | OrderState::PartiallyRefunded
                | OrderState::Refunded
        )
    }

    /// Whether no more payment outcome can arrive (refunds aside).
    pub fn is_final(self) -> bool {
        !matches!(self, OrderState::Pending | OrderState::Queued)
    }
}

/// What a buyer limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuyerScope {
    Card,
    Ticket,
}

/// One line as the buyer asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRequest {
    pub sku: String,
    pub qty: u32,
}

/// One line of an order, priced when it was held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderLine {
    pub sku: String,
    pub qty: u32,
    pub unit_price: MinorUnits,
}

/// One order of the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Order {
    pub order_id: String,
    pub state: OrderState,
    pub lines: Vec<OrderLine>,
    pub total: MinorUnits,
    pub currency: Currency,
    pub created_ms: i64,
    pub hold_expires_ms: i64,
    /// When the buyer got the goods (online approval or offline acceptance).
    pub sold_ms: Option<i64>,
    pub receipt_id: Option<String>,
    pub buyer_email: Option<String>,
    pub lane: String,
    pub charge_id: Option<String>,
    /// The stored authorization, for offline orders.
    pub auth_id: Option<String>,
    /// Refunded and confirmed by the acquirer.
    pub refunded: MinorUnits,
    pub decline_reason: Option<String>,
    /// Whether the order's units count as sold. Stays true after a late decline or expiry of
    /// a stored payment: the goods were already handed over.
    pub stock_taken: bool,
    /// Whose card holds it: a keyed hash of the card number
    /// (`checkout::request::card_holder`), never the card; the per-card limits count it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The admission ticket it was bought with; the per-ticket limits count it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

impl Order {
    /// Whether the order holds or took stock now (pending, sold, or stored for forwarding).
    fn counts_against_limits(&self) -> bool {
        self.state == OrderState::Pending
            || (self.stock_taken && !matches!(self.state, OrderState::Lost | OrderState::Refunded))
    }

    pub fn has_sku(&self, sku: &str) -> bool {
        self.lines.iter().any(|l| l.sku == sku)
    }

    /// Captured amount still refundable, before refunds in progress are subtracted.
    pub fn captured_left(&self) -> MinorUnits {
        if self.state.is_captured() {
            MinorUnits(self.total.0 - self.refunded.0)
        } else {
            MinorUnits::ZERO
        }
    }
}

pub(crate) struct HoldRequest {
    pub order_id: String,
    pub lines: Vec<LineRequest>,
    pub expires_ms: i64,
    pub buyer_email: Option<String>,
    pub lane: String,
    pub admission_ticket: Option<String>,
    pub charge_total: Option<MinorUnits>,
    pub holder: Option<String>,
}

fn valid_email(e: &str) -> bool {
    e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"')
}

impl EventLedger {
    pub(crate) fn hold(
        &mut self,
        req: HoldRequest,
        now: i64,
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        check_id(&req.order_id, "order_id")?;
        check_id(&req.lane, "lane")?;
        if now >= self.config.end_ms {
            return Err(LedgerError::SalesClosed);
        }
        // Sales open at the waiting room's `sale_start_ms` (the event's `start_ms` unless
        // the merchant set another): nobody holds stock before the drop, whether or not
        // the waiting room is required.
        if now < self.config.queue.sale_start_ms {
            return Err(LedgerError::SalesNotStarted);
        }
        if req.expires_ms <= now || req.expires_ms > now.saturating_add(MAX_HOLD_MS) {
            return Err(LedgerError::InvalidHold(format!(
                "A hold must expire after now and within {} minutes.",
                MAX_HOLD_MS / 60_000
            )));
        }
        if let Some(e) = &req.buyer_email {
            if !valid_email(e) {
                return Err(LedgerError::InvalidHold(
                    "The buyer e-mail address is not valid.".into(),
                ));
            }
        }
        if req.lines.is_empty() || req.lines.len() > MAX_LINES {
            return Err(LedgerError::InvalidHold(format!(
                "An order needs 1 to {MAX_LINES} lines."
            )));
        }
        // Merge repeated SKUs and price every line.
        let mut merged: BTreeMap<&str, u32> = BTreeMap::new();
        for l in &req.lines {
            if self.config.sku(&l.sku).is_none() {
                return Err(LedgerError::UnknownSku(l.sku.chars().take(64).collect()));
            }
            let q = merged.entry(l.sku.as_str()).or_default();
            *q = q.saturating_add(l.qty);
            if l.qty == 0 || *q > MAX_QTY {
                return Err(LedgerError::InvalidQuantity { sku: l.sku.clone() });
            }
            if let Some(max) = self.config.sku(&l.sku).and_then(|s| s.max_per_order) {
                if *q > max {
                    return Err(LedgerError::PurchaseLimit {
                        sku: l.sku.chars().take(64).collect(),
                        max,
                    });
                }
            }
        }
        let mut lines = Vec::with_capacity(merged.len());
        let mut total = MinorUnits::ZERO;
        for (sku, qty) in &merged {
            let s = self
                .config
                .sku(sku)
                .ok_or_else(|| LedgerError::UnknownSku(sku.to_string()))?;
            total = s
                .price
                .checked_mul(*qty as i64)
                .and_then(|v| total.checked_add(v))
                .ok_or(LedgerError::AmountOutOfRange)?;
            lines.push(OrderLine {
                sku: s.id.clone(),
                qty: *qty,
                unit_price: s.price,
            });
        }
        if let Some(charge) = req.charge_total {
            if charge.0 < 1 {
                return Err(LedgerError::AmountOutOfRange);
            }
            total = charge;
        }
        if let Some(existing) = self.orders.get(&req.order_id) {
            // A repeated Hold for the same order is answered with the order as it is.
            let same = existing
                .lines
                .iter()
                .map(|l| (&l.sku, l.qty))
                .eq(lines.iter().map(|l| (&l.sku, l.qty)));
            return if same {
                Ok(Reply::Order {
                    order: existing.clone(),
                })
            } else {
                Err(LedgerError::OrderConflict(req.order_id))
            };
        }
        self.make_room_for_an_order(now, fx)?;
        self.check_buyer_limits(&req, &lines, now)?;
        if self.config.queue.required {
            let ok = req
                .admission_ticket
                .as_deref()
                .is_some_and(|t| self.queue.is_admitted(t, now));
            if !ok {
                return Err(LedgerError::NotAdmitted);
            }
        }
        for l in &lines {
            let available = self.available(&l.sku);
            if l.qty > available {
                return Err(LedgerError::OutOfStock {
                    sku: l.sku.clone(),
                    available,
                });
            }
        }
        for l in &lines {
            if let Some(c) = self.counts.get_mut(&l.sku) {
                c.held += l.qty;
            }
        }
        let order = Order {
            order_id: req.order_id.clone(),
            state: OrderState::Pending,
            lines,
            total,
            currency: self.config.currency,
            created_ms: now,
            hold_expires_ms: req.expires_ms,
            sold_ms: None,
            receipt_id: None,
            buyer_email: req.buyer_email,
            lane: req.lane,
            charge_id: None,
            auth_id: None,
            refunded: MinorUnits::ZERO,
            decline_reason: None,
            stock_taken: false,
            holder: req.holder,
            ticket: req.admission_ticket,
        };
        self.holds.insert(req.order_id.clone(), req.expires_ms);
        self.orders.insert(req.order_id, order.clone());
        fx.changed = true;
        Ok(Reply::Order { order })
    }

    /// The limits per card and per admission ticket, across the event's orders: at most
    /// each SKU's `max_per_order` units held or bought, at most [`MAX_PENDING_PER_BUYER`]
    /// pending orders, and for a card, no checkout after [`MAX_DECLINES_PER_CARD`] recent
    /// declines. A buyer without a card hash or ticket is limited per order only.
    fn check_buyer_limits(
        &self,
        req: &HoldRequest,
        lines: &[OrderLine],
        now: i64,
    ) -> Result<(), LedgerError> {
        let scopes = [
            (req.holder.as_deref(), BuyerScope::Card),
            (req.admission_ticket.as_deref(), BuyerScope::Ticket),
        ];
        for (id, scope) in scopes {
            let Some(id) = id else { continue };
            let mut pending = 0;
            let mut declines = 0;
            let mut bought = vec![0u32; lines.len()];
            for o in self.orders.values() {
                let mine = match scope {
                    BuyerScope::Card => o.holder.as_deref() == Some(id),
                    BuyerScope::Ticket => o.ticket.as_deref() == Some(id),
                };
                if !mine {
                    continue;
                }
                pending += usize::from(o.state == OrderState::Pending);
                declines += usize::from(
                    o.state == OrderState::Declined && o.created_ms > now - DECLINE_WINDOW_MS,
                );
                if o.counts_against_limits() {
                    for (l, n) in lines.iter().zip(bought.iter_mut()) {
                        for x in o.lines.iter().filter(|x| x.sku == l.sku) {
                            *n = n.saturating_add(x.qty);
                        }
                    }
                }
            }
            if pending >= MAX_PENDING_PER_BUYER {
                return Err(LedgerError::TooManyPending { scope });
            }
            if scope == BuyerScope::Card && declines >= MAX_DECLINES_PER_CARD {
                return Err(LedgerError::CardVelocity);
            }
            for (l, before) in lines.iter().zip(bought) {
                let Some(max) = self.config.sku(&l.sku).and_then(|s| s.max_per_order) else {
                    continue;
                };
                if before.saturating_add(l.qty) > max {
                    return Err(LedgerError::BuyerLimit {
                        sku: l.sku.chars().take(64).collect(),
                        max,
                        bought: before,
                        scope,
                    });
                }
            }
        }
        Ok(())
    }

    /// Keeps the unsold orders under [`MAX_UNSOLD_ORDERS`]: when at the cap, forgets the
    /// oldest declined or abandoned orders that hold no charge, are older than
    /// [`UNSOLD_KEEP_MS`] and that reconciliation no longer waits for; when none may be
    /// forgotten, refuses the new order (`429 too_many_orders`) rather than grow.
    fn make_room_for_an_order(&mut self, now: i64, fx: &mut Fx) -> Result<(), LedgerError> {
        let unsold = |o: &Order| {
            matches!(o.state, OrderState::Declined | OrderState::Abandoned) && !o.stock_taken
        };
        let count = self.orders.values().filter(|o| unsold(o)).count();
        if count < MAX_UNSOLD_ORDERS {
            return Ok(());
        }
        let mut old: Vec<(i64, String)> = self
            .orders
            .values()
            .filter(|o| unsold(o))
            .filter(|o| o.created_ms < now - UNSOLD_KEEP_MS)
            .filter(|o| o.charge_id.is_none() && o.auth_id.is_none())
            .filter(|o| !self.recon.lapsed.contains_key(&o.order_id))
            .map(|o| (o.created_ms, o.order_id.clone()))
            .collect();
        old.sort();
        // Room for this order and a little more, so the scan does not run on every hold.
        let excess = count + 1 - MAX_UNSOLD_ORDERS + MAX_UNSOLD_ORDERS / 100;
        let forgotten = old.len().min(excess);
        for (_, id) in old.into_iter().take(forgotten) {
            self.orders.remove(&id);
        }
        if forgotten > 0 {
            fx.changed = true;
        }
        if count - forgotten >= MAX_UNSOLD_ORDERS {
            return Err(LedgerError::TooManyOrders);
        }
        Ok(())
    }

    /// Moves a pending (or lapsed) order's units from held to sold. A lapsed hold is
    /// re-taken only if the stock is still there.
    pub(crate) fn take_stock(&mut self, order_id: &str) -> Result<(), LedgerError> {
        let order = self
            .orders
            .get(order_id)
            .ok_or_else(|| LedgerError::OrderNotFound(order_id.to_string()))?;
        match order.state {
            OrderState::Pending => {
                for l in &order.lines {
                    if let Some(c) = self.counts.get_mut(&l.sku) {
                        c.held = c.held.saturating_sub(l.qty);
                        c.sold = c.sold.saturating_add(l.qty);
                    }
                }
                self.holds.remove(order_id);
            }
            OrderState::Abandoned => {
                if order.lines.iter().any(|l| l.qty > self.available(&l.sku)) {
                    return Err(LedgerError::HoldLapsed(order_id.to_string()));
                }
                for l in &order.lines {
                    if let Some(c) = self.counts.get_mut(&l.sku) {
                        c.sold = c.sold.saturating_add(l.qty);
                    }
                }
            }
            s => {
                return Err(LedgerError::InvalidTransition {
                    order_id: order_id.to_string(),
                    state: s.as_str(),
                    action: "paid for",
                })
            }
        }
        if let Some(o) = self.orders.get_mut(order_id) {
            o.stock_taken = true;
        }
        Ok(())
    }

    pub(crate) fn note_attempt(
        &mut self,
        order_id: &str,
        lane: String,
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        check_id(&lane, "lane")?;
        let order = self
            .orders
            .get_mut(order_id)
            .ok_or_else(|| LedgerError::OrderNotFound(order_id.to_string()))?;
        match order.state {
            OrderState::Pending | OrderState::Abandoned => {
                if order.lane != lane {
                    order.lane = lane;
                    fx.changed = true;
                }
                Ok(Reply::Order {
                    order: order.clone(),
                })
            }
            s => Err(LedgerError::InvalidTransition {
                order_id: order_id.to_string(),
                state: s.as_str(),
                action: "sent to another lane",
            }),
        }
    }

    pub(crate) fn set_order_lane(&mut self, order_id: &str, lane: String) {
        if let Some(o) = self.orders.get_mut(order_id) {
            o.lane = lane;
        }
    }

    pub(crate) fn next_receipt_id(&mut self) -> String {
        let n = self.next_receipt;
        self.next_receipt += 1;
        format!("{}-{n:06}", self.config.event_id)
    }

    pub(crate) fn confirm(
        &mut self,
        order_id: &str,
        charge_id: &str,
        now: i64,
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        check_id(charge_id, "charge_id")?;
        let order = self
            .orders
            .get(order_id)
            .ok_or_else(|| LedgerError::OrderNotFound(order_id.to_string()))?;
        if order.state.is_captured() && order.auth_id.is_none() {
            return if order.charge_id.as_deref() == Some(charge_id) {
                Ok(Reply::Order {
                    order: order.clone(),
                })
            } else {
                Err(LedgerError::ConflictingResult(order_id.to_string()))
            };
        }
        self.take_stock(order_id)?;
        let receipt = self.next_receipt_id();
        let order = self
            .orders
            .get_mut(order_id)
            .ok_or_else(|| LedgerError::OrderNotFound(order_id.to_string()))?;
        order.state = OrderState::Approved;
        order.charge_id = Some(charge_id.to_string());
        order.sold_ms = Some(now);
        order.receipt_id = Some(receipt);
        let order = order.clone();
        self.books_changed();
        fx.changed = true;
        fx.push(Effect::Notify {
            order_id: order_id.to_string(),
            state: OrderState::Approved,
        });
        Ok(Reply::Order { order })
    }

    pub(crate) fn forget(&mut self, order_id: &str, fx: &mut Fx) -> Result<Reply, LedgerError> {
        let Some(order) = self.orders.get(order_id) else {
            return Ok(Reply::Done);
        };
        let state = order.state;
        if order.charge_id.is_some()
            || order.auth_id.is_some()
            || !matches!(state, OrderState::Pending | OrderState::Abandoned)
        {
            return Err(LedgerError::InvalidTransition {
                order_id: order_id.to_string(),
                state: state.as_str(),
                action: "forgotten",
            });
        }
        if state == OrderState::Pending {
            for l in &order.lines {
                if let Some(c) = self.counts.get_mut(&l.sku) {
                    c.held = c.held.saturating_sub(l.qty);
                }
            }
            self.holds.remove(order_id);
        }
        self.orders.remove(order_id);
        fx.changed = true;
        Ok(Reply::Done)
    }

    pub(crate) fn release(
        &mut self,
        order_id: &str,
        reason: &str,
        fx: &mut Fx,
    ) -> Result<Reply, LedgerError> {
        let order = self
            .orders
            .get_mut(order_id)
            .ok_or_else(|| LedgerError::OrderNotFound(order_id.to_string()))?;
        match order.state {
            OrderState::Pending => {
                for l in &order.lines {
                    if let Some(c) = self.counts.get_mut(&l.sku) {
                        c.held = c.held.saturating_sub(l.qty);
                    }
                }
                self.holds.remove(order_id);
                order.state = OrderState::Declined;
                order.decline_reason = Some(reason.chars().take(200).collect());
                let order = order.clone();
                fx.changed = true;
                fx.push(Effect::Notify {
                    order_id: order_id.to_string(),
                    state: OrderState::Declined,
                });
                Ok(Reply::Order { order })
            }
            // Repeats and declines that arrive after the hold lapsed change nothing.
            OrderState::Declined | OrderState::Abandoned => Ok(Reply::Order {
                order: order.clone(),
            }),
            s => Err(LedgerError::InvalidTransition {
                order_id: order_id.to_string(),
                state: s.as_str(),
                action: "released",
            }),
        }
    }

    pub(crate) fn lapse_holds(&mut self, now: i64, fx: &mut Fx) {
        let due: Vec<String> = self
            .holds
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let at = self.holds.remove(&id);
            if let Some(order) = self.orders.get_mut(&id) {
                if order.state == OrderState::Pending {
                    for l in &order.lines {
                        if let Some(c) = self.counts.get_mut(&l.sku) {
                            c.held = c.held.saturating_sub(l.qty);
                        }
                    }
                    order.state = OrderState::Abandoned;
                    // No outcome came: reconciliation looks for a charge of it later.
                    let lost_at = at.unwrap_or(now).saturating_add(LOST_CHECKOUT_AFTER_MS);
                    self.recon.lapsed.insert(id.clone(), lost_at);
                }
            }
            fx.changed = true;
        }
    }

    /// Sets the order's refund state from what the acquirer has confirmed.
    pub(crate) fn add_refunded(&mut self, order_id: &str, amount: MinorUnits) {
        self.books_changed();
        if let Some(o) = self.orders.get_mut(order_id) {
            o.refunded = MinorUnits(o.refunded.0.saturating_add(amount.0).min(o.total.0));
            o.state = if o.refunded >= o.total {
                OrderState::Refunded
            } else {
                OrderState::PartiallyRefunded
            };
        }
    }
}
