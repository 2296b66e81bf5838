//! Serves the merchant embed's static assets (`crate::embed`) with their cache, CORS and CSP headers.
//!
//! The lookup itself is pure and tested natively in `crate::embed`; this file only turns a
//! hit into a `Response`. The frame's `frame-ancestors` comes from the event's allowed
//! origins, which the caller looks up (the frame URL carries `?event=`).

use super::http::internal;
use crate::embed;
use crate::error::ApiError;
use worker::{Headers, Response};

/// `(content_type, body, cache_control)` of the asset at `path`, or `None`.
/// See [`embed::asset`] for the paths.
pub fn asset(path: &str) -> Option<(&'static str, &'static str, &'static str)> {
    embed::asset(path)
}

/// The asset at `path` as a 200 response with all its headers, or `None` when `path` names
/// no asset. `allowed_origins` are the event's (for `/v1/frame`; ignored otherwise; pass
/// an empty slice for an unknown event: then only the edge itself may frame it).
pub fn respond(path: &str, allowed_origins: &[String]) -> Result<Option<Response>, ApiError> {
    let Some((content_type, body, cache_control)) = asset(path) else {
        return Ok(None);
    };
    let headers = Headers::new();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(internal);
    set("Content-Type", content_type)?;
    set("Cache-Control", cache_control)?;
    set("X-Content-Type-Options", "nosniff")?;
    set("Referrer-Policy", "no-referrer")?;
    if path == "/v1/frame" {
        set(
            "Content-Security-Policy",
            &embed::frame_csp(allowed_origins),
        )?;
    } else if path.starts_with("/p/") {
        set("Content-Security-Policy", &embed::pay_page_csp())?;
    } else if path.starts_with("/ops/") {
        set("Content-Security-Policy", &embed::dashboard_csp())?;
    } else {
        // Scripts: loadable from any page, and with Subresource Integrity (needs CORS).
        set("Access-Control-Allow-Origin", "*")?;
        set("Cross-Origin-Resource-Policy", "cross-origin")?;
    }
    Ok(Some(
        Response::ok(body)
            .map_err(internal)?
            .with_status(200)
            .with_headers(headers),
    ))
}
