//! HTTP plumbing for the shell: request context, JSON and error responses, auth, logging.

use crate::error::ApiError;
use worker::{console_log, Env, Headers, Request, Response};

/// What every handler knows about the request it serves.
#[derive(Clone)]
pub struct Ctx {
    /// This edge's own origin (`https://poptill.example`), as the request reached it.
    pub self_origin: String,
    pub request_id: String,
    pub colo: String,
    pub now_ms: i64,
}

impl Ctx {
    pub fn new(req: &Request, now_ms: i64) -> Ctx {
        let colo = req
            .cf()
            .map(|cf| cf.colo())
            .unwrap_or_else(|| "LOCAL".to_string());
        let mut id = [0u8; 8];
        let request_id = match getrandom::getrandom(&mut id) {
            Ok(()) => format!("req_{}", hex::encode(id)),
            Err(_) => format!("req_t{now_ms:x}"),
        };
        let self_origin = req
            .url()
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        Ctx {
            self_origin,
            request_id,
            colo,
            now_ms,
        }
    }

    /// Adds the request id and the PoP colo to a response.
    pub fn stamp(&self, response: &mut Response) -> worker::Result<()> {
        let h = response.headers_mut();
        h.set("X-Request-Id", &self.request_id)?;
        h.set("X-Poptill-Colo", &self.colo)?;
        Ok(())
    }
}

/// Maps a platform failure (KV, Durable Object, fetch) to a retryable 503 without details.
pub fn internal(e: worker::Error) -> ApiError {
    log(
        "error",
        "platform error",
        None,
        None,
        serde_json::json!({"error": e.to_string()}),
    );
    ApiError::new(
        503,
        "temporarily_unavailable",
        "The edge could not finish this request; try again.",
    )
    .retryable()
}

pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Result<Response, ApiError> {
    Response::from_json(value)
        .map(|r| r.with_status(status))
        .map_err(internal)
}

pub fn raw(status: u16, content_type: &str, body: &str) -> Result<Response, ApiError> {
    let headers = Headers::new();
    headers
        .set("Content-Type", content_type)
        .map_err(internal)?;
    Ok(Response::ok(body)
        .map_err(internal)?
        .with_status(status)
        .with_headers(headers))
}

pub fn error_response(e: &ApiError) -> worker::Result<Response> {
    let mut r = Response::from_json(&e.body())?.with_status(e.status);
    if e.status == 401 {
        r.headers_mut().set("WWW-Authenticate", "Bearer")?;
    }
    if let Some(allow) = &e.allow {
        r.headers_mut().set("Allow", allow)?;
    }
    if e.retryable {
        // Retryable refusals (busy, acquirer unreachable): tell clients when to come back.
        r.headers_mut().set("Retry-After", "2")?;
    }
    Ok(r)
}

/// Answers a CORS preflight for a known path.
pub fn preflight(path: &str) -> Result<Response, ApiError> {
    let methods = crate::api::allowed_methods(path);
    if methods.is_empty() {
        return Err(crate::api::resolve("OPTIONS", path)
            .err()
            .unwrap_or_else(|| ApiError::new(404, "route_not_found", "There is no route here.")));
    }
    let headers = Headers::new();
    let allow = crate::api::allow_header(&methods);
    for (k, v) in [
        ("Allow", allow.as_str()),
        ("Access-Control-Allow-Methods", allow.as_str()),
        (
            "Access-Control-Allow-Headers",
            "Content-Type, Idempotency-Key, Authorization",
        ),
        ("Access-Control-Max-Age", "600"),
    ] {
        headers.set(k, v).map_err(internal)?;
    }
    Ok(Response::empty()
        .map_err(internal)?
        .with_status(204)
        .with_headers(headers))
}

/// Writes one log line: a single JSON object with `level`, `msg`, and `request_id` and
/// `colo` when a request is being served (`ctx`), `event_id` when one is concerned, plus
/// the fields of `extra` (an object). Callers pass codes, ids and counts only, never bodies,
/// card data or keys; string values are cut to 200 characters and any run of 12 or more
/// digits (which could be a card number) is masked.
pub fn log(
    level: &str,
    msg: &str,
    ctx: Option<&Ctx>,
    event_id: Option<&str>,
    extra: serde_json::Value,
) {
    let (request_id, colo) = match ctx {
        Some(c) => (Some(c.request_id.as_str()), Some(c.colo.as_str())),
        None => (None, None),
    };
    console_log!(
        "{}",
        crate::telemetry::log_line(level, msg, request_id, colo, event_id, extra)
    );
}

/// One structured JSON log line per request. Never includes bodies or secrets.
pub fn log_request(
    ctx: &Ctx,
    event_id: Option<&str>,
    method: &str,
    path: &str,
    status: u16,
    took_ms: i64,
) {
    log(
        if status >= 500 { "error" } else { "info" },
        "request",
        Some(ctx),
        event_id,
        serde_json::json!({"method": method, "path": path, "status": status, "took_ms": took_ms}),
    );
}

/// RFC 3339 UTC time from Unix milliseconds (civil-from-days, no clock read).
pub fn iso8601(ms: i64) -> String {
    crate::time::iso8601(ms)
}

/// `N` random bytes from the platform (crypto.getRandomValues).
pub fn random<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|_| {
        ApiError::new(
            503,
            "temporarily_unavailable",
            "No randomness available; try again.",
        )
        .retryable()
    })?;
    Ok(b)
}

/// Largest request body any route accepts.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

fn too_large() -> ApiError {
    ApiError::new(413, "body_too_large", "The request body is over 256 KiB.")
}

/// Reads a body, refusing one over [`MAX_BODY_BYTES`] before reading it (by its
/// `Content-Length`) or as soon as its stream passes the cap: a huge body never sits in the
/// isolate's memory (where it could reset the instance and cost other buyers their
/// checkouts).
async fn read_capped(req: &mut Request) -> Result<String, ApiError> {
    use futures_util::StreamExt;
    let unreadable =
        || ApiError::bad_request("invalid_body", "The request body could not be read.");
    if let Ok(Some(len)) = req.headers().get("content-length") {
        match len.trim().parse::<u64>() {
            Ok(n) if n > MAX_BODY_BYTES as u64 => {
                refused_body("content_length", 0, n);
                return Err(too_large());
            }
            Ok(_) => {}
            Err(_) => return Err(unreadable()),
        }
    }
    if req.inner().body().is_none() {
        return Ok(String::new());
    }
    let mut stream = req.stream().map_err(|_| unreadable())?;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| unreadable())?;
        if buf.len() + chunk.len() > MAX_BODY_BYTES {
            refused_body("stream", buf.len() + chunk.len(), 0);
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::bad_request("invalid_body", "The request body is not UTF-8 text."))
}

/// Logs a refused body: how it was caught and how much of it was read (at most the cap
/// and one chunk), so an operator (and the e2e test) can see that it never sat in memory.
fn refused_body(by: &str, read_bytes: usize, content_length: u64) {
    log(
        "warn",
        "request body over the cap refused",
        None,
        None,
        serde_json::json!({"by": by, "read_bytes": read_bytes, "content_length": content_length, "cap": MAX_BODY_BYTES}),
    );
}

/// Reads a JSON body. Errors never echo the body (it may hold a card number): they name
/// a missing field or the position of the problem only.
pub async fn body_json<T: serde::de::DeserializeOwned>(req: &mut Request) -> Result<T, ApiError> {
    let text = read_capped(req).await?;
    parse_json_body(&text)
}

/// Reads a body as text (bounded).
pub async fn body_text(req: &mut Request) -> Result<String, ApiError> {
    read_capped(req).await
}

/// The body-parsing rule of [`body_json`], for bodies already read.
pub fn parse_json_body<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    if text.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    crate::api::parse_json_body(text)
}

/// A KV binding, or a 503 if the Worker was deployed without it.
pub fn kv(env: &Env, binding: &str) -> Result<worker::kv::KvStore, ApiError> {
    env.kv(binding).map_err(internal)
}

pub fn kv_err(e: worker::kv::KvError) -> ApiError {
    internal(worker::Error::from(e))
}

/// A var or secret as a string, if set.
pub fn env_string(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
        .filter(|s| !s.is_empty())
}

/// The receipt keys (`RECEIPT_KEY`): they sign receipts and reports and make the edge's
/// capabilities (event ids, receipt and status URLs). Without them: 503 `not_configured`.
pub fn receipt_keys(env: &Env) -> Result<crate::receipt::ReceiptKeys, ApiError> {
    env_string(env, "RECEIPT_KEY")
        .and_then(|k| crate::receipt::ReceiptKeys::parse(&k).ok())
        .ok_or_else(|| {
            ApiError::new(
                503,
                "not_configured",
                "The edge has no usable RECEIPT_KEY secret; the operator must set it.",
            )
        })
}

/// Public routes answer any page's origin (they carry no credentials); routes that check
/// the event's allowed origins themselves (tokens, checkout, handover) set their own header
/// first. Admin routes never get CORS headers.
pub fn reflect_cors(
    method: &str,
    path: &str,
    origin: Option<&str>,
    response: &mut Response,
) -> worker::Result<()> {
    let Some(origin) = origin else { return Ok(()) };
    let public = crate::api::resolve(if method == "OPTIONS" { "GET" } else { method }, path)
        .map(|m| m.route.access == crate::api::Access::Public)
        .unwrap_or(method == "OPTIONS" && !path.starts_with("/v1/admin"));
    if !public || path.starts_with("/v1/admin") {
        return Ok(());
    }
    let h = response.headers_mut();
    if h.get("Access-Control-Allow-Origin")?.is_none() {
        h.set("Access-Control-Allow-Origin", origin)?;
        h.set("Vary", "Origin")?;
        h.set(
            "Access-Control-Expose-Headers",
            "X-Request-Id, X-Poptill-Colo, X-Poptill-Routing, Idempotent-Replayed",
        )?;
    }
    Ok(())
}
