//! Forwarding stored payments and refunds to the order's own lane (through
//! `crate::ledger::forward_outcome`), and what follows an order's change of state: the
//! receipt re-signed and announced, telemetry recorded.

use super::*;

impl EventObject {
    /// The order's own lane, never another: another lane is another acquirer account, where
    /// the payment's idempotency key means nothing (a resolving payment would be charged
    /// twice, a refund would fail). `None` when `LANES` no longer names it.
    pub(super) fn order_lane(&self, order_id: &str) -> Option<crate::routing::LaneConfig> {
        let name = self
            .ledger
            .borrow()
            .as_ref()
            .and_then(|l| l.order(order_id).map(|o| o.lane.clone()))?;
        lanes(&self.env).ok()?.into_iter().find(|l| l.name == name)
    }

    /// Logs what the operator must fix (a lane gone, a KEK missing, a lane URL or key that
    /// the acquirer refuses): the payment or refund waits meanwhile.
    pub(super) fn alert(&self, what: &str, id: &str, lane: Option<&str>, alert: &Alert) {
        let fields = serde_json::json!({
            "id": id, "lane": lane, "alert": alert.code, "detail": alert.detail,
        });
        crate::edge::http::log("error", what, None, Some(&self.event_id()), fields);
    }

    /// Opens a stored payment's sealed card with the event's store-and-forward key.
    pub(super) fn open_sealed(
        &self,
        req: &ForwardRequest,
        event_id: &str,
    ) -> std::result::Result<(crate::card::Card, Option<crate::secret::Secret<String>>), ApiError>
    {
        let wrapped = self.sf_key_wrapped()?;
        let key =
            vault::unwrap_sf_key(&self.keks()?, event_id, &wrapped).map_err(|e| e.to_api())?;
        vault::open_for_forwarding(&key, event_id, &req.auth_id, &req.sealed_card.0)
            .map_err(|e| e.to_api())
    }

    /// Sends one stored authorization to its order's lane and turns what happened into a
    /// `ForwardResult` (`crate::ledger::forward_outcome`). Also says whether a request was
    /// sent and which lane is down, if any. A lane already down in this run is not called.
    pub(super) async fn forward(
        &self,
        req: ForwardRequest,
        down: &BTreeSet<String>,
    ) -> (Command, bool, Option<String>) {
        let auth_id = req.auth_id.clone();
        let event_id = self.event_id();
        let lane = self.order_lane(&req.order_id);
        let mut sent = false;
        let verdict = match &lane {
            None => forward_outcome(ForwardAttempt::LaneUnknown),
            Some(l) if down.contains(&l.name) => {
                forward_outcome(ForwardAttempt::Sent(Transport::NotSent))
            }
            Some(l) => match self.open_sealed(&req, &event_id) {
                Err(_) => forward_outcome(ForwardAttempt::CardUnreadable),
                Ok((card, cvc)) => {
                    let call = acquirer::build_authorize(
                        &l.base_url,
                        &lane_secret(&self.env, l),
                        &AuthorizeRequest {
                            amount: req.amount,
                            currency: req.currency,
                            card_number: card.number().clone(),
                            exp_month: card.exp_month,
                            exp_year: card.exp_year,
                            // Present only when this completes an online attempt of unknown
                            // outcome: the same parameters make the acquirer replay, not
                            // charge again.
                            cvc,
                            idempotency_key: req.idempotency_key.clone(),
                            order_id: req.order_id.clone(),
                            event_id: event_id.clone(),
                            capture: true,
                        },
                    );
                    drop(card);
                    match call {
                        Err(_) => forward_outcome(ForwardAttempt::CallInvalid),
                        Ok(call) => {
                            sent = true;
                            let first = send(&call, 8_000).await;
                            let mut read = None;
                            if let Some(id) = intent_to_read(transport(&first)) {
                                if let Ok(get) = acquirer::build_retrieve_intent(
                                    &l.base_url,
                                    &lane_secret(&self.env, l),
                                    &id,
                                ) {
                                    read = Some(send(&get, 8_000).await);
                                }
                            }
                            let answer =
                                answer_to_classify(transport(&first), read.as_ref().map(transport));
                            forward_outcome(ForwardAttempt::Sent(answer))
                        }
                    }
                }
            },
        };
        let lane_name = lane.as_ref().map(|l| l.name.as_str());
        if let Some(a) = &verdict.alert {
            self.alert("forward waits for the operator", &auth_id, lane_name, a);
        }
        let outcome = match &verdict.result {
            AcquirerResult::Approved { .. } => "approved",
            AcquirerResult::Declined { .. } => "declined",
            AcquirerResult::Unavailable => "unknown",
            AcquirerResult::NotCharged => "not_charged",
        };
        let fields = serde_json::json!({"auth_id": auth_id, "lane": lane_name, "attempt": req.attempt, "result": outcome, "sent": sent});
        crate::edge::http::log("info", "forward", None, Some(&event_id), fields);
        if let (AcquirerResult::Declined { reason }, Some(l)) = (&verdict.result, &lane) {
            let e = crate::telemetry::Event::new(crate::telemetry::Kind::Expired, now());
            let e = e
                .lane(&l.name)
                .reason(&format!("forward_declined_{reason}"));
            crate::edge::telemetry::store_one(&self.sql(), &event_id, e);
        }
        let lane_down = lane.filter(|_| verdict.lane_down).map(|l| l.name);
        let cmd = Command::ForwardResult {
            auth_id,
            result: verdict.result,
        };
        (cmd, sent, lane_down)
    }

    /// Sends one refund to its order's lane (never another) and turns what happened into a
    /// `RefundResult` (`crate::ledger::refund_outcome`).
    pub(super) async fn forward_refund(
        &self,
        req: RefundRequest,
        down: &BTreeSet<String>,
    ) -> (Command, bool, Option<String>) {
        let refund_id = req.refund_id.clone();
        let lane = self.order_lane(&req.order_id);
        let mut sent = false;
        let verdict = match &lane {
            None => refund_outcome(RefundAttempt::LaneUnknown),
            Some(l) if down.contains(&l.name) => {
                refund_outcome(RefundAttempt::Sent(Transport::NotSent))
            }
            Some(l) => match acquirer::build_refund(
                &l.base_url,
                &lane_secret(&self.env, l),
                &req.charge_id,
                Some(req.amount),
                &req.idempotency_key,
            ) {
                Err(_) => refund_outcome(RefundAttempt::CallInvalid),
                Ok(call) => {
                    sent = true;
                    let answer = send(&call, 8_000).await;
                    refund_outcome(RefundAttempt::Sent(transport(&answer)))
                }
            },
        };
        let lane_name = lane.as_ref().map(|l| l.name.as_str());
        if let Some(a) = &verdict.alert {
            self.alert("refund waits for the operator", &refund_id, lane_name, a);
        }
        if let (RefundOutcome::Succeeded { .. }, Some(l)) = (&verdict.result, &lane) {
            let e = crate::telemetry::Event::new(crate::telemetry::Kind::Refund, now());
            let e = e.lane(&l.name).amount(req.amount.0);
            crate::edge::telemetry::store_one(&self.sql(), &self.event_id(), e);
        }
        let lane_down = lane.filter(|_| verdict.lane_down).map(|l| l.name);
        let cmd = Command::RefundResult {
            refund_id,
            result: verdict.result,
        };
        (cmd, sent, lane_down)
    }

    /// Keeps the buyer's receipt true when a payment reaches a new state
    /// (`object_side::receipt_after` decides what changes).
    pub(super) async fn on_order_state(&self, order_id: &str, state: OrderState, now_ms: i64) {
        self.record_final_state(order_id, state, now_ms);
        self.follow_handover(order_id);
        let Some(order) = self
            .ledger
            .borrow()
            .as_ref()
            .and_then(|l| l.order(order_id).cloned())
        else {
            return;
        };
        #[derive(Deserialize)]
        struct Row {
            id: String,
            json: String,
        }
        let rows: Vec<Row> = match self
            .sql()
            .exec(
                "SELECT id, json FROM receipts WHERE order_id = ?",
                Some(vec![order_id.into()]),
            )
            .and_then(|c| c.to_array())
        {
            Ok(r) => r,
            Err(_) => return,
        };
        let Ok(keys) = crate::edge::http::receipt_keys(&self.env) else {
            return;
        };
        for row in rows {
            let Ok(signed) = SignedReceipt::from_json(&row.json) else {
                continue;
            };
            let Some(updated) = object_side::receipt_after(&order, &signed, now_ms, &keys) else {
                continue;
            };
            if let Ok(json) = updated.to_json() {
                let _ = self.sql().exec(
                    "UPDATE receipts SET json = ? WHERE id = ?",
                    Some(vec![json.as_str().into(), row.id.as_str().into()]),
                );
                let status = serde_json::to_value(updated.receipt.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                self.enqueue_webhook(&row.id, &status, &json).await;
            }
        }
    }

    /// Telemetry for a queued payment's end: forwarded (charged on its lane) or expired.
    pub(super) fn record_final_state(&self, order_id: &str, state: OrderState, now_ms: i64) {
        use crate::telemetry::{Event, Kind};
        let kind = match state {
            OrderState::Forwarded => Kind::Forwarded,
            OrderState::Expired => Kind::Expired,
            _ => return,
        };
        let (lane, amount, key_window) = {
            let guard = self.ledger.borrow();
            let Some(l) = guard.as_ref() else { return };
            let Some(o) = l.order(order_id) else { return };
            let key_window = o
                .auth_id
                .as_deref()
                .and_then(|a| l.auth(a))
                .is_some_and(|a| a.ends_at_key_window());
            (o.lane.clone(), o.total.0, key_window)
        };
        let mut e = Event::new(kind, now_ms).lane(&lane).amount(amount);
        if kind == Kind::Expired {
            // Past the acquirer key's window the outcome is left to reconciliation.
            e = e.reason(if key_window {
                "key_window"
            } else {
                "max_queue_age"
            });
        }
        crate::edge::telemetry::store_one(&self.sql(), &self.event_id(), e);
    }
}
