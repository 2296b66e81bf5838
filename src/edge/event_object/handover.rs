//! Staff-terminal handover sessions: create, read, claim for a checkout, settle, and the
//! hibernating WebSocket that pushes every change to the till.

use super::*;

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

    /// Staff-terminal handover sessions: create, read, claim for a checkout, settle, and
    /// a hibernating WebSocket that pushes every change to the till.
    pub(super) async fn handover(
        &self,
        method: &str,
        path: &str,
        mut req: Request,
    ) -> std::result::Result<Response, ApiError> {
        let rest = path.trim_start_matches("/handover/");
        let (sid, op) = rest.split_once('/').unwrap_or((rest, ""));
        let now_ms = now();
        // Read any body first: from loading the session to saving it there is no await, so
        // two claims cannot both see it open.
        let body: serde_json::Value = if method == "POST" || method == "PUT" {
            crate::edge::http::body_json(&mut req).await?
        } else {
            serde_json::Value::Null
        };
        if method == "PUT" && op.is_empty() {
            self.save_session(sid, &body)?;
            return crate::edge::http::json(201, &body);
        }
        let mut session = self
            .load_session(sid)?
            .ok_or_else(|| ApiError::not_found("handover session"))?;
        let expired = session["expires_ms"].as_i64().unwrap_or(0) < now_ms;
        if expired && session["status"] == "open" {
            session["status"] = "expired".into();
            self.save_session(sid, &session)?;
        }
        match (method, op) {
            ("GET", "") => crate::edge::http::json(200, &session),
            ("GET", "ws") => {
                let pair = worker::WebSocketPair::new().map_err(crate::edge::http::internal)?;
                self.state.accept_websocket_with_tags(&pair.server, &[sid]);
                let _ = pair.server.send_with_str(session.to_string());
                Response::from_websocket(pair.client).map_err(crate::edge::http::internal)
            }
            ("POST", "claim") => {
                let order = &body;
                let status = session["status"].as_str().unwrap_or("");
                let stale_claim = status == "paying"
                    && session["claimed_ms"].as_i64().unwrap_or(0) + 180_000 < now_ms;
                // The same checkout (same key) again: it continues, or replays its answer.
                let same =
                    order["order_key"].is_string() && session["order_key"] == order["order_key"];
                match status {
                    "open" => {}
                    "paying" | "paid" if same => return crate::edge::http::json(200, &session),
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
                session["order_key"] = order["order_key"].clone();
                self.save_session(sid, &session)?;
                crate::edge::http::json(200, &session)
            }
            ("POST", "settle") => {
                let paid = body["paid"].as_bool().unwrap_or(false);
                session["status"] = if paid { "paid" } else { "open" }.into();
                if paid {
                    session["receipt_url"] = body["receipt_url"].clone();
                    session["payment_status"] = body["payment_status"].clone();
                    session["order_id"] = body["order_id"].clone();
                }
                self.save_session(sid, &session)?;
                crate::edge::http::json(200, &session)
            }
            _ => Err(ApiError::new(
                404,
                "route_not_found",
                "Unknown handover operation.",
            )),
        }
    }
}
