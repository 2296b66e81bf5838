//! Staff-terminal handover sessions: create, read, claim for a checkout, settle, and the
//! hibernating WebSocket that pushes every change to the till.

use super::*;
use crate::event_protocol::{HandoverSettle, ObjectAnswer};

impl EventObject {
    pub(super) fn load_session(
        &self,
        sid: &str,
    ) -> std::result::Result<Option<serde_json::Value>, ApiError> {
        #[derive(Deserialize)]
        struct Row {
            json: String,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec(
                "SELECT json FROM handover WHERE id = ?",
                Some(vec![sid.into()]),
            )
            .and_then(|c| c.to_array())
            .map_err(crate::edge::http::internal)?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| serde_json::from_str(&r.json).ok()))
    }

    pub(super) fn save_session(
        &self,
        sid: &str,
        v: &serde_json::Value,
    ) -> std::result::Result<(), ApiError> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO handover (id, json) VALUES (?, ?)",
                Some(vec![sid.into(), v.to_string().as_str().into()]),
            )
            .map_err(crate::edge::http::internal)?;
        for ws in self.state.get_websockets_with_tag(sid) {
            let _ = ws.send_with_str(v.to_string());
        }
        Ok(())
    }

    /// The session, marked expired once its pay link has lapsed.
    fn current_session(&self, sid: &str) -> std::result::Result<serde_json::Value, ApiError> {
        let mut session = self
            .load_session(sid)?
            .ok_or_else(|| ApiError::not_found("handover session"))?;
        let expired = session["expires_ms"].as_i64().unwrap_or(0) < now();
        if expired && session["status"] == "open" {
            session["status"] = "expired".into();
            self.save_session(sid, &session)?;
        }
        Ok(session)
    }

    pub(super) fn open_handover(
        &self,
        sid: &str,
        session: serde_json::Value,
    ) -> std::result::Result<ObjectAnswer, ApiError> {
        self.save_session(sid, &session)?;
        Ok(ObjectAnswer::Session { session })
    }

    pub(super) fn get_handover(&self, sid: &str) -> std::result::Result<ObjectAnswer, ApiError> {
        let session = self.current_session(sid)?;
        Ok(ObjectAnswer::Session { session })
    }

    /// Claims the session for the checkout with record key `order_key`. From loading the
    /// session to saving it there is no await, so two claims cannot both see it open.
    pub(super) fn claim_handover(
        &self,
        sid: &str,
        order_key: &str,
    ) -> std::result::Result<ObjectAnswer, ApiError> {
        let mut session = self.current_session(sid)?;
        let now_ms = now();
        let status = session["status"].as_str().unwrap_or("");
        let stale_claim =
            status == "paying" && session["claimed_ms"].as_i64().unwrap_or(0) + 180_000 < now_ms;
        // The same checkout (same key) again: it continues, or replays its answer.
        let same = session["order_key"].as_str() == Some(order_key);
        match status {
            "open" => {}
            "paying" | "paid" if same => return Ok(ObjectAnswer::Session { session }),
            "paying" if stale_claim => {}
            "paid" => {
                return Err(ApiError::new(
                    409,
                    "handover_paid",
                    "This sale is already paid.",
                ))
            }
            "expired" => {
                return Err(ApiError::new(
                    410,
                    "handover_expired",
                    "This pay link has expired; ask for a new one.",
                ))
            }
            _ => {
                return Err(ApiError::new(
                    409,
                    "handover_in_progress",
                    "A payment for this sale is in progress.",
                ))
            }
        }
        session["status"] = "paying".into();
        session["claimed_ms"] = now_ms.into();
        session["order_key"] = order_key.into();
        self.save_session(sid, &session)?;
        Ok(ObjectAnswer::Session { session })
    }

    pub(super) fn settle_handover(
        &self,
        sid: &str,
        settle: HandoverSettle,
    ) -> std::result::Result<ObjectAnswer, ApiError> {
        let mut session = self.current_session(sid)?;
        session["status"] = if settle.paid { "paid" } else { "open" }.into();
        if settle.paid {
            session["receipt_url"] = settle.receipt_url.into();
            session["payment_status"] = settle.payment_status.into();
            session["order_id"] = settle.order_id.into();
        }
        self.save_session(sid, &session)?;
        Ok(ObjectAnswer::Session { session })
    }

    /// The till's live channel: a hibernating WebSocket tagged with the session, sent the
    /// session at once and on every change.
    pub(super) fn watch_handover(&self, sid: &str) -> std::result::Result<Response, ApiError> {
        self.load().map_err(crate::edge::http::internal)?;
        if self.ledger.borrow().is_none() {
            return Err(ApiError::not_found("event"));
        }
        let session = self.current_session(sid)?;
        let pair = worker::WebSocketPair::new().map_err(crate::edge::http::internal)?;
        self.state.accept_websocket_with_tags(&pair.server, &[sid]);
        let _ = pair.server.send_with_str(session.to_string());
        Response::from_websocket(pair.client).map_err(crate::edge::http::internal)
    }
}
