//! Staff-terminal handover sessions: the rows of table `handover` (one
//! `crate::handover::HandoverSession` as JSON per id) and the hibernating WebSocket that
//! pushes every change to the till. The rules (claim, settle, expiry) are the core's; this
//! file loads a row, looks the claimed order up in the ledger, calls the rule and saves the
//! row if it changed, with no await in between.

use super::*;
use crate::event_protocol::{HandoverSettle, ObjectAnswer};
use crate::handover::HandoverSession;

fn unencodable(e: serde_json::Error) -> ApiError {
    crate::edge::http::internal(e.into())
}

fn answer_of(session: &HandoverSession) -> ObjectAnswer {
    ObjectAnswer::Session {
        session: Box::new(session.view()),
    }
}

impl EventObject {
    fn load_session(&self, sid: &str) -> std::result::Result<HandoverSession, ApiError> {
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
        rows.into_iter()
            .next()
            .and_then(|r| serde_json::from_str(&r.json).ok())
            .ok_or_else(|| ApiError::not_found("handover session"))
    }

    /// Stores the row and sends the till its view (never the claim).
    fn save_session(
        &self,
        sid: &str,
        session: &HandoverSession,
    ) -> std::result::Result<(), ApiError> {
        let row = serde_json::to_string(session).map_err(unencodable)?;
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO handover (id, json) VALUES (?, ?)",
                Some(vec![sid.into(), row.as_str().into()]),
            )
            .map_err(crate::edge::http::internal)?;
        let view = serde_json::to_string(&session.view()).map_err(unencodable)?;
        for ws in self.state.get_websockets_with_tag(sid) {
            let _ = ws.send_with_str(&view);
        }
        Ok(())
    }

    /// Loads the session, applies `rule` and saves it if the rule changed it (also when
    /// the rule refuses: an expiry it noticed is kept).
    fn update_session<T>(
        &self,
        sid: &str,
        rule: impl FnOnce(&mut HandoverSession) -> T,
    ) -> std::result::Result<(HandoverSession, T), ApiError> {
        let mut session = self.load_session(sid)?;
        let before = session.clone();
        let out = rule(&mut session);
        if session != before {
            self.save_session(sid, &session)?;
        }
        Ok((session, out))
    }

    pub(super) fn open_handover(
        &self,
        sid: &str,
        session: HandoverSession,
    ) -> std::result::Result<ObjectAnswer, ApiError> {
        let stored = self.session_count()?;
        let kept = if crate::handover::prune_now(stored) {
            self.prune_sessions(now())?
        } else {
            stored
        };
        crate::handover::admit(kept)?;
        self.save_session(sid, &session)?;
        Ok(answer_of(&session))
    }

    fn session_count(&self) -> std::result::Result<usize, ApiError> {
        #[derive(Deserialize)]
        struct Row {
            n: i64,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec("SELECT COUNT(*) AS n FROM handover", None)
            .and_then(|c| c.to_array())
            .map_err(crate::edge::http::internal)?;
        Ok(rows
            .first()
            .map_or(0, |r| usize::try_from(r.n).unwrap_or(0)))
    }

    /// Drops the rows the core calls prunable; returns how many are kept.
    fn prune_sessions(&self, now_ms: i64) -> std::result::Result<usize, ApiError> {
        #[derive(Deserialize)]
        struct Row {
            id: String,
            json: String,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec("SELECT id, json FROM handover", None)
            .and_then(|c| c.to_array())
            .map_err(crate::edge::http::internal)?;
        let mut kept = 0;
        for r in rows {
            let drop = serde_json::from_str::<HandoverSession>(&r.json)
                .map(|s| s.prunable(now_ms))
                .unwrap_or(false);
            if drop {
                self.sql()
                    .exec(
                        "DELETE FROM handover WHERE id = ?",
                        Some(vec![r.id.as_str().into()]),
                    )
                    .map_err(crate::edge::http::internal)?;
            } else {
                kept += 1;
            }
        }
        Ok(kept)
    }

    /// The session, marked expired once its pay link has lapsed, and brought up to date
    /// with its claimed order.
    pub(super) fn get_handover(&self, sid: &str) -> std::result::Result<ObjectAnswer, ApiError> {
        let (session, ()) = self.update_session(sid, |s| {
            s.expire(now());
            if let Some(order) = s.claim_order_id.as_deref().and_then(|id| self.order_of(id)) {
                s.follow(&order, self.receipt_url_of(&order), now());
            }
        })?;
        Ok(answer_of(&session))
    }

    fn order_of(&self, order_id: &str) -> Option<crate::ledger::Order> {
        self.ledger
            .borrow()
            .as_ref()
            .and_then(|l| l.order(order_id).cloned())
    }

    fn receipt_url_of(&self, order: &crate::ledger::Order) -> Option<String> {
        let id = crate::checkout::status::settled_receipt(order)?;
        let keys = crate::edge::http::receipt_keys(&self.env).ok()?;
        receipt::url(&keys, &id).ok()
    }

    /// The sessions whose claim pays `order_id` follow it now that its state changed (a
    /// pending payment approved or declined later), and their tills hear it.
    pub(super) fn follow_handover(&self, order_id: &str) {
        let Some(order) = self.order_of(order_id) else {
            return;
        };
        #[derive(Deserialize)]
        struct Row {
            id: String,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec(
                "SELECT id FROM handover WHERE json_extract(json, '$.claim_order_id') = ?",
                Some(vec![order_id.into()]),
            )
            .and_then(|c| c.to_array())
            .unwrap_or_default();
        let url = self.receipt_url_of(&order);
        for row in rows {
            let _ = self.update_session(&row.id, |s| s.follow(&order, url.clone(), now()));
        }
    }

    /// Claims the session for the checkout with record key `order_key` paying `order_id`.
    /// The current claim's order is read from the ledger in the same synchronous stretch,
    /// so nothing can change between the check and the save.
    pub(super) fn claim_handover(
        &self,
        sid: &str,
        order_key: &str,
        order_id: &str,
    ) -> std::result::Result<ObjectAnswer, ApiError> {
        let guard = self.ledger.borrow();
        let ledger = guard.as_ref().ok_or_else(|| ApiError::not_found("event"))?;
        let (session, claimed) = self.update_session(sid, |s| {
            let first = s.claimed_order(|id| ledger.order(id));
            s.claim(order_key, order_id, first, now())
        })?;
        claimed?;
        Ok(answer_of(&session))
    }

    pub(super) fn settle_handover(
        &self,
        sid: &str,
        settle: HandoverSettle,
    ) -> std::result::Result<ObjectAnswer, ApiError> {
        let (session, ()) = self.update_session(sid, |s| s.settle(&settle, now()))?;
        Ok(answer_of(&session))
    }

    /// The till's live channel: a hibernating WebSocket tagged with the session, sent the
    /// session's view at once and on every change.
    pub(super) fn watch_handover(&self, sid: &str) -> std::result::Result<Response, ApiError> {
        self.load().map_err(crate::edge::http::internal)?;
        if self.ledger.borrow().is_none() {
            return Err(ApiError::not_found("event"));
        }
        let (session, ()) = self.update_session(sid, |s| s.expire(now()))?;
        let view = serde_json::to_string(&session.view()).map_err(unencodable)?;
        let pair = worker::WebSocketPair::new().map_err(crate::edge::http::internal)?;
        self.state.accept_websocket_with_tags(&pair.server, &[sid]);
        let _ = pair.server.send_with_str(view);
        Response::from_websocket(pair.client).map_err(crate::edge::http::internal)
    }
}
