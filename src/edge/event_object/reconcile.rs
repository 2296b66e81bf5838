//! Reconciliation with the acquirer: every lane's charges listed to the end, fed to the
//! ledger, lost checkouts refunded once, the signed event report kept.

use super::*;
use crate::api::answers::{LostRefunded, ReconcileAnswer};

impl EventObject {
    /// Lists this event's charges on every lane, created since `since_ms`, page by page to
    /// the end (`crate::acquirer::ChargeListing`); `truncated` when a lane's listing
    /// stopped at its page bound. A lane that does not answer fails the whole listing.
    pub(super) async fn list_charges(
        &self,
        since_ms: i64,
    ) -> std::result::Result<(Vec<AcquirerCharge>, bool), ApiError> {
        let all = lanes(&self.env).map_err(|e| ApiError::new(503, "lanes_misconfigured", e))?;
        let event_id = self.event_id();
        let mut charges = Vec::new();
        let mut truncated = false;
        for lane in &all {
            let secret = lane_secret(&self.env, lane);
            let mut listing =
                acquirer::ChargeListing::new(since_ms.div_euclid(1000), acquirer::MAX_LIST_PAGES);
            while let Some(call) = listing.next_call(&lane.base_url, &secret) {
                let call = call.map_err(|e| e.to_api())?;
                let (status, body) = send(&call, 8_000).await.map_err(|_| {
                    ApiError::new(503, "acquirer_unavailable", format!("Lane {} did not answer the charge list; reconcile again when it is back.", lane.name)).retryable()
                })?;
                listing.feed(status, &body).map_err(|e| e.to_api())?;
            }
            let (records, cut) = listing.finish();
            truncated |= cut;
            charges.extend(AcquirerCharge::of_event(records, &event_id, &lane.name));
        }
        Ok((charges, truncated))
    }

    /// One reconciliation: list the charges, let the ledger fold them in (lost checkouts
    /// become `Lost` and their refunds effects), then sign and keep its report. Returns the
    /// ledger's answer, the listing and the effects still to perform.
    pub(super) async fn reconcile_run(
        &self,
        since_ms: i64,
        reason: ReconcileReason,
    ) -> std::result::Result<(Reconciled, Vec<AcquirerCharge>, Vec<Effect>), ApiError> {
        let started_ms = now();
        let (charges, truncated) = self.list_charges(since_ms).await?;
        let listing = Listing {
            since_ms,
            started_ms,
            truncated,
        };
        let command = Command::Reconcile {
            charges: charges.clone(),
            listing,
            reason,
        };
        let (reply, effects) = self.apply(command, now());
        let Reply::Reconciled { result } = reply? else {
            let e = worker::Error::RustError("unexpected reconcile reply".into());
            return Err(crate::edge::http::internal(e));
        };
        let event_id = self.event_id();
        for l in &result.lost {
            let fields = serde_json::json!({"order_id": l.order_id, "charge_id": l.charge_id, "lane": l.lane, "amount": l.amount});
            crate::edge::http::log(
                "warn",
                "lost checkout refunding",
                None,
                Some(&event_id),
                fields,
            );
        }
        if let Err(e) = self.keep_report(result.report.clone()) {
            let fields = serde_json::json!({"error": e.code});
            crate::edge::http::log("error", "report not signed", None, Some(&event_id), fields);
        }
        Ok((*result, charges, effects))
    }

    /// Signs the report with the receipt keys and keeps it (the latest replaces the last).
    pub(super) fn keep_report(&self, report: EventReport) -> std::result::Result<(), ApiError> {
        let keys = crate::edge::http::receipt_keys(&self.env)?;
        let signed = receipt::sign_report(report, &keys).map_err(|e| e.to_api())?;
        let json = signed.to_json().map_err(|e| e.to_api())?;
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('report', ?)",
                Some(vec![json.as_str().into()]),
            )
            .map_err(crate::edge::http::internal)?;
        Ok(())
    }

    /// `Effect::Reconcile` (the ledger asked from its alarm): a run, or `ReconcileFailed`
    /// so the ledger tries again later. Returns the effects that follow.
    pub(super) async fn reconcile_effect(&self, req: ReconcileRequest) -> Vec<Effect> {
        match self.reconcile_run(req.since_ms, req.reason).await {
            Ok((_, _, effects)) => effects,
            Err(e) => {
                let fields = serde_json::json!({"reason": req.reason, "error": e.code});
                crate::edge::http::log(
                    "warn",
                    "reconcile failed",
                    None,
                    Some(&self.event_id()),
                    fields,
                );
                let failed = Command::ReconcileFailed {
                    reason: e.code.to_string(),
                };
                self.apply(failed, now()).1
            }
        }
    }

    /// `POST /reconcile` (the admin route): a run now, its lost-checkout refunds sent before
    /// answering, and the report signed again with their outcome.
    pub(super) async fn reconcile(&self) -> std::result::Result<serde_json::Value, ApiError> {
        let since_ms = self
            .ledger
            .borrow()
            .as_ref()
            .map(|l| l.reconcile_since_ms())
            .ok_or_else(|| ApiError::not_found("event"))?;
        let (result, charges, effects) = self
            .reconcile_run(since_ms, ReconcileReason::Requested)
            .await?;
        self.run_effects(effects).await;
        let (report, event_report, refunded_lost) = {
            let guard = self.ledger.borrow();
            let ledger = guard.as_ref().ok_or_else(|| ApiError::not_found("event"))?;
            let mut report = ledger.reconcile(&charges);
            report.truncated = result.report.truncated;
            let listing = Listing {
                since_ms,
                started_ms: result.report.covered.to_ms,
                truncated: result.report.truncated,
            };
            let event_report =
                ledger.event_report(&charges, &listing, ReconcileReason::Requested, now());
            let refunded: Vec<LostRefunded> = result
                .lost
                .iter()
                .filter(|l| {
                    ledger
                        .refund(&lost_refund_id(&l.charge_id))
                        .is_some_and(|r| matches!(r.state, RefundState::Succeeded { .. }))
                })
                .map(|l| LostRefunded {
                    charge_id: l.charge_id.clone(),
                    order_id: l.order_id.clone(),
                    amount: l.amount,
                })
                .collect();
            (report, event_report, refunded)
        };
        let clean = event_report.clean;
        self.keep_report(event_report)?;
        let answer = ReconcileAnswer {
            event_id: self.event_id(),
            acquirer_charges: charges.len(),
            truncated: report.truncated,
            report,
            clean,
            late_approvals: result.late_approvals,
            lost_checkouts_refunded: refunded_lost,
        };
        serde_json::to_value(&answer).map_err(|_| crate::event_protocol::unexpected())
    }
}
