//! Performs the acquirer HTTP calls the core builds (`crate::acquirer`), with a deadline.

use crate::acquirer::HttpCall;
use crate::routing::LaneConfig;
use crate::secret::Secret;
use futures_util::future::{select, Either};
use std::time::Duration;
use wasm_bindgen::JsValue;
use worker::{AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit};

/// How a call ended when no answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    Timeout,
    /// Nothing was sent: the request could not be built, or the connection was refused.
    Refused,
    /// The connection failed after the request may have left (reset, lost, body unreadable).
    Network,
}

/// Whether a failed fetch says the connection was refused before anything was sent.
fn refused(e: &worker::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("refused") || text.contains("econnrefused")
}

/// Sends a call and waits at most `timeout_ms`; returns the status and body text.
pub async fn send(call: &HttpCall, timeout_ms: u64) -> Result<(u16, String), NoAnswer> {
    let headers = Headers::new();
    for (k, v) in &call.headers {
        headers.set(k, v).map_err(|_| NoAnswer::Refused)?;
    }
    let mut init = RequestInit::new();
    init.with_method(if call.method.as_str() == "POST" {
        Method::Post
    } else {
        Method::Get
    });
    init.with_headers(headers);
    if !call.body.expose().is_empty() {
        init.with_body(Some(JsValue::from_str(call.body.expose())));
    }
    let req = Request::new_with_init(&call.url, &init).map_err(|_| NoAnswer::Refused)?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(req);
    let work = async {
        let mut resp = fetch
            .send_with_signal(&signal)
            .await
            .map_err(|e| {
                if refused(&e) {
                    NoAnswer::Refused
                } else {
                    super::http::log(
                        "warn",
                        "acquirer connection lost",
                        None,
                        None,
                        serde_json::json!({"error": e.to_string().chars().take(120).collect::<String>()}),
                    );
                    NoAnswer::Network
                }
            })?;
        let status = resp.status_code();
        let text = resp.text().await.map_err(|_| NoAnswer::Network)?;
        Ok::<_, NoAnswer>((status, text))
    };
    let timer = Delay::from(Duration::from_millis(timeout_ms));
    futures_util::pin_mut!(work);
    match select(work, timer).await {
        Either::Left((result, _)) => result,
        Either::Right(((), _)) => {
            controller.abort();
            Err(NoAnswer::Timeout)
        }
    }
}

/// The lanes configured in `LANES`, or an error sentence for the operator.
pub fn lanes(env: &Env) -> Result<Vec<LaneConfig>, String> {
    let json = super::http::env_string(env, "LANES").unwrap_or_else(|| "[]".to_string());
    crate::routing::parse_lanes(&json).map_err(|e| e.to_string())
}

/// The secret API key a lane names.
pub fn lane_secret(env: &Env, lane: &LaneConfig) -> Secret<String> {
    Secret::new(super::http::env_string(env, &lane.secret_name).unwrap_or_default())
}
