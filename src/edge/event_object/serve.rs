//! The object's side of `crate::event_protocol`: reads an [`ObjectRequest`], serves it, and
//! encodes its [`ObjectAnswer`] (or error) for the Worker.

use super::*;
use crate::event_protocol::{encode_answer, ExportFormat, ObjectAnswer, ObjectRequest};

/// The answer on the wire: `200` with the answer, or the error's status with the error.
pub(super) fn answer(a: std::result::Result<ObjectAnswer, ApiError>) -> Result<Response> {
    let (status, body) = encode_answer(&a);
    let headers = worker::Headers::new();
    headers.set("Content-Type", "application/json")?;
    Ok(Response::ok(body)?
        .with_status(status)
        .with_headers(headers))
}

fn receipt_missing() -> ApiError {
    ApiError::not_found("receipt")
}

impl EventObject {
    /// The call: from the request header on a WebSocket upgrade, else from the body.
    pub(super) async fn read_request(
        &self,
        mut req: Request,
    ) -> std::result::Result<ObjectRequest, ApiError> {
        let header = req
            .headers()
            .get(crate::event_protocol::REQUEST_HEADER)
            .ok()
            .flatten();
        let text = match header {
            Some(h) => h,
            None => req.text().await.map_err(crate::edge::http::internal)?,
        };
        ObjectRequest::decode(&text)
    }

    fn summary(&self) -> std::result::Result<ObjectAnswer, ApiError> {
        let guard = self.ledger.borrow();
        let l = guard.as_ref().ok_or_else(|| ApiError::not_found("event"))?;
        Ok(ObjectAnswer::Summary {
            summary: Box::new(l.summary(now())),
        })
    }

    pub(super) async fn serve(
        &self,
        req: ObjectRequest,
    ) -> std::result::Result<ObjectAnswer, ApiError> {
        self.load().map_err(crate::edge::http::internal)?;
        let exists = self.ledger.borrow().is_some();
        match req {
            ObjectRequest::Init { config } if exists => {
                let _ = config;
                Err(ApiError::new(
                    409,
                    "event_exists",
                    "An event with this id already exists.",
                ))
            }
            ObjectRequest::Init { config } => {
                let ledger = EventLedger::new(*config, now()).map_err(ApiError::from)?;
                let summary = Box::new(ledger.summary(now()));
                *self.ledger.borrow_mut() = Some(ledger);
                self.persist().map_err(crate::edge::http::internal)?;
                Ok(ObjectAnswer::Created { summary })
            }
            _ if !exists => Err(ApiError::not_found("event")),
            ObjectRequest::Commands { now_ms, commands } => {
                let replies = self.run(commands, now_ms).await;
                Ok(ObjectAnswer::Results {
                    results: replies.into_iter().map(Into::into).collect(),
                })
            }
            ObjectRequest::Config => {
                let guard = self.ledger.borrow();
                let l = guard.as_ref().ok_or_else(|| ApiError::not_found("event"))?;
                Ok(ObjectAnswer::Config {
                    config: Box::new(l.config().clone()),
                })
            }
            ObjectRequest::Summary => self.summary(),
            ObjectRequest::Begin(b) => {
                let reply = self.checkout_step(|cx| object_side::begin(cx, *b)).await?;
                Ok(ObjectAnswer::Begin { reply })
            }
            ObjectRequest::Finish(f) => {
                let reply = self.checkout_step(|cx| object_side::finish(cx, *f)).await?;
                Ok(ObjectAnswer::Finish { reply })
            }
            ObjectRequest::Order { order_id } => {
                let guard = self.ledger.borrow();
                let order = guard
                    .as_ref()
                    .and_then(|l| l.order(&order_id))
                    .ok_or_else(|| ApiError::not_found("order"))?;
                Ok(ObjectAnswer::Order {
                    order: Box::new(order.clone()),
                })
            }
            ObjectRequest::SetWebhook { url, secret } => {
                for (k, v) in [("webhook_url", url), ("webhook_secret", secret)] {
                    self.sql()
                        .exec(
                            "INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)",
                            Some(vec![k.into(), v.as_str().into()]),
                        )
                        .map_err(crate::edge::http::internal)?;
                }
                Ok(ObjectAnswer::Done)
            }
            ObjectRequest::Telemetry { events } => {
                crate::edge::telemetry::accept_batch(&self.sql(), &events)?;
                Ok(ObjectAnswer::Done)
            }
            ObjectRequest::Metrics => {
                let rows = crate::edge::telemetry::stored_rows(&self.sql())?;
                let ObjectAnswer::Summary { summary } = self.summary()? else {
                    return Err(ApiError::not_found("event"));
                };
                Ok(ObjectAnswer::Metrics { rows, summary })
            }
            ObjectRequest::SealKey => Ok(ObjectAnswer::SealKey {
                wrapped: self.sf_key_wrapped()?,
            }),
            ObjectRequest::Reconcile => Ok(ObjectAnswer::Reconciled {
                result: self.reconcile().await?,
            }),
            ObjectRequest::Report => match self.meta("report") {
                Some(json) => Ok(ObjectAnswer::Report { json }),
                None => Err(ApiError::new(
                    404,
                    "report_not_ready",
                    "This event has no reconciliation report yet: one is made after a lost checkout, at the event's end, or by POST /v1/admin/events/{id}/reconcile.",
                )),
            },
            ObjectRequest::Export { format, email } => {
                let guard = self.ledger.borrow();
                let l = guard.as_ref().ok_or_else(|| ApiError::not_found("event"))?;
                let body = match format {
                    ExportFormat::Ndjson => l.export_ndjson(email),
                    ExportFormat::Csv => l.export_csv(email),
                };
                Ok(ObjectAnswer::Export { body })
            }
            ObjectRequest::GetReceipt { receipt_id } => {
                #[derive(Deserialize)]
                struct Row {
                    json: String,
                }
                let rows: Vec<Row> = self
                    .sql()
                    .exec(
                        "SELECT json FROM receipts WHERE id = ?",
                        Some(vec![receipt_id.as_str().into()]),
                    )
                    .and_then(|c| c.to_array())
                    .map_err(crate::edge::http::internal)?;
                let row = rows.into_iter().next().ok_or_else(receipt_missing)?;
                Ok(ObjectAnswer::Receipt { json: row.json })
            }
            ObjectRequest::OpenHandover {
                session_id,
                session,
            } => self.open_handover(&session_id, *session),
            ObjectRequest::GetHandover { session_id } => self.get_handover(&session_id),
            ObjectRequest::ClaimHandover {
                session_id,
                order_key,
                order_id,
            } => self.claim_handover(&session_id, &order_key, &order_id),
            ObjectRequest::SettleHandover {
                session_id,
                settle,
            } => self.settle_handover(&session_id, settle),
            // Served in `fetch` (it answers with a WebSocket, not a JSON answer).
            ObjectRequest::WatchHandover { session_id } => {
                let _ = session_id;
                Err(ApiError::bad_request(
                    "invalid_object_request",
                    "A handover watch is a WebSocket upgrade.",
                ))
            }
        }
    }
}
