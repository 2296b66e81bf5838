//! The merchant's webhook outbox: receipts queued as they change and delivered in signed
//! batches from the alarm, with backoff.

use super::*;

impl EventObject {
    /// Queues a receipt (new or re-signed) for the merchant's webhook, if one is set. The
    /// delivery happens from the alarm, in batches, off the request's path.
    pub(super) async fn enqueue_webhook(&self, receipt_id: &str, status: &str, json: &str) {
        if self.meta("webhook_url").is_none() {
            return;
        }
        let id = format!("{receipt_id}:{status}");
        let due = now() + crate::webhook::BATCH_WINDOW_MS;
        let _ = self.sql().exec(
            "INSERT OR REPLACE INTO outbox (id, json, attempts, next_ms) VALUES (?, ?, 0, ?)",
            Some(vec![id.as_str().into(), json.into(), (due as f64).into()]),
        );
        self.schedule(due).await;
    }

    /// Delivers due receipts to the merchant's webhook in batches; failures back off.
    pub(super) async fn flush_webhooks(&self) {
        let (Some(url), Some(secret)) = (self.meta("webhook_url"), self.meta("webhook_secret"))
        else {
            return;
        };
        #[derive(Deserialize)]
        struct Row {
            id: String,
            json: String,
            attempts: i64,
        }
        let now_ms = now();
        let rows: Vec<Row> = match self
            .sql()
            .exec(
                "SELECT id, json, attempts FROM outbox WHERE next_ms <= ? ORDER BY next_ms LIMIT ?",
                // Everything due within the next batching window rides along in this batch.
                Some(vec![
                    ((now_ms + crate::webhook::BATCH_WINDOW_MS) as f64).into(),
                    (crate::webhook::MAX_BATCH as f64).into(),
                ]),
            )
            .and_then(|c| c.to_array())
        {
            Ok(r) => r,
            Err(_) => return,
        };
        if !rows.is_empty() {
            let receipts: Vec<String> = rows.iter().map(|r| r.json.clone()).collect();
            let body = crate::webhook::batch_body(&receipts);
            let call = crate::acquirer::HttpCall {
                method: crate::acquirer::HttpMethod::Post,
                url: url.clone(),
                headers: vec![
                    ("Content-Type".into(), "application/json".into()),
                    (
                        "Poptill-Signature".into(),
                        crate::webhook::signature_header(secret.as_bytes(), now_ms, &body),
                    ),
                ],
                body: crate::secret::Secret::new(body),
            };
            let delivered =
                matches!(send(&call, 5_000).await, Ok((status, _)) if (200..300).contains(&status));
            for r in &rows {
                if delivered {
                    let _ = self.sql().exec(
                        "DELETE FROM outbox WHERE id = ?",
                        Some(vec![r.id.as_str().into()]),
                    );
                } else {
                    let attempts = u32::try_from(r.attempts).unwrap_or(0);
                    let next = now_ms + crate::webhook::retry_delay_ms(attempts);
                    let _ = self.sql().exec(
                        "UPDATE outbox SET attempts = attempts + 1, next_ms = ? WHERE id = ?",
                        Some(vec![(next as f64).into(), r.id.as_str().into()]),
                    );
                }
            }
            let event_id = self.event_id();
            let fields = serde_json::json!({"receipts": rows.len(), "delivered": delivered});
            crate::edge::http::log("info", "webhook delivery", None, Some(&event_id), fields);
            for _ in rows.iter().filter(|_| delivered) {
                let sent =
                    crate::telemetry::Event::new(crate::telemetry::Kind::ReceiptSent, now_ms);
                crate::edge::telemetry::store_one(&self.sql(), &event_id, sent);
            }
        }
        #[derive(Deserialize)]
        struct Next {
            next_ms: Option<f64>,
        }
        let next: Option<i64> = self
            .sql()
            .exec("SELECT MIN(next_ms) AS next_ms FROM outbox", None)
            .and_then(|c| c.to_array::<Next>())
            .ok()
            .and_then(|r| r.into_iter().next())
            .and_then(|n| n.next_ms)
            .map(|f| f as i64);
        if let Some(at) = next {
            self.schedule(at).await;
        }
    }
}
