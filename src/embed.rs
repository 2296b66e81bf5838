//! The merchant embed's static assets (checkout.js, the card frame, the phone pay page) and
//! the headers they are served with: content type, cache policy and Content-Security-Policy.
//!
//! Everything is compiled in with `include_str!`, so serving an asset is a table lookup with
//! no I/O. The versioned checkout URL carries a hash of the script computed at compile time,
//! so it changes whenever the script does and can be cached forever.
//!
//! Architecture Invariant: the card number is typed only into the frame, which is served
//! from the edge's own origin under [`frame_csp`]; merchant pages talk to it by
//! `postMessage` and never receive the number or the token.

/// The checkout script merchants embed with `<script src="…/v1/checkout.js" data-event>`.
/// Served minified (`src/embed/checkout.min.js`, made by `scripts/minify` from the readable
/// `src/embed/checkout.js`; a test fails when the two differ).
pub const CHECKOUT_JS: &str = include_str!("embed/checkout.min.js");
/// The card frame (`/v1/frame?event=…&origin=…`): markup only, its script is [`FRAME_JS`].
pub const FRAME_HTML: &str = include_str!("embed/frame.html");
/// The card frame's script, a separate file so the frame's CSP needs no `'unsafe-inline'`.
pub const FRAME_JS: &str = include_str!("embed/frame.js");
/// The page a buyer's phone opens from the terminal's QR code (`/p/{session_id}`).
pub const PAY_HTML: &str = include_str!("embed/pay.html");
/// The operations dashboard (`/ops/events/{id}`): markup only, no data; its script is
/// [`DASHBOARD_JS`], which asks for a key and polls the metrics route with it.
pub const DASHBOARD_HTML: &str = include_str!("embed/dashboard.html");
/// The dashboard's script: fetches the metrics JSON and draws inline SVG charts.
pub const DASHBOARD_JS: &str = include_str!("embed/dashboard.js");

const VERSION_BYTES: [u8; 12] = hex12(fnv1a64(CHECKOUT_JS.as_bytes()));

/// The version of checkout.js: 12 hex digits of a hash of its text.
pub const CHECKOUT_VERSION: &str = match core::str::from_utf8(&VERSION_BYTES) {
    Ok(s) => s,
    Err(_) => "000000000000",
};

/// `Cache-Control` of the unversioned script: short, so fixes reach merchants within minutes.
pub const CACHE_SHORT: &str = "public, max-age=300";
/// `Cache-Control` of content-addressed URLs.
pub const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of pages whose headers depend on the event (the frame's CSP) or that
/// show live state (the pay page).
pub const CACHE_NONE: &str = "no-store";

const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// Which asset a path names, with `(content_type, body, cache_control)`.
///
/// Paths: `/v1/checkout.js`, `/v1/checkout.<CHECKOUT_VERSION>.js`, `/v1/frame`,
/// `/v1/frame.js`, and `/p/<session_id>` (the pay page; the session id is read by the page
/// itself from its URL). Anything else is `None`. The frame and the pay page must also get
/// a `Content-Security-Policy` header: [`frame_csp`] and [`pay_page_csp`].
pub fn asset(path: &str) -> Option<(&'static str, &'static str, &'static str)> {
    match path {
        "/v1/checkout.js" => return Some((JS, CHECKOUT_JS, CACHE_SHORT)),
        "/v1/frame" => return Some((HTML, FRAME_HTML, CACHE_NONE)),
        "/v1/frame.js" => return Some((JS, FRAME_JS, CACHE_SHORT)),
        "/ops/dashboard.js" => return Some((JS, DASHBOARD_JS, CACHE_SHORT)),
        _ => {}
    }
    if let Some(v) = path
        .strip_prefix("/v1/checkout.")
        .and_then(|rest| rest.strip_suffix(".js"))
    {
        return (v == CHECKOUT_VERSION).then_some((JS, CHECKOUT_JS, CACHE_IMMUTABLE));
    }
    if let Some(event) = path.strip_prefix("/ops/events/") {
        return is_session_id(event).then_some((HTML, DASHBOARD_HTML, CACHE_NONE));
    }
    let session = path.strip_prefix("/p/")?;
    is_session_id(session).then_some((HTML, PAY_HTML, CACHE_NONE))
}

/// Handover session ids in pay URLs: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn is_session_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `s` is a bare web origin (`https://shop.example` or `http://127.0.0.1:8080`, no
/// path, no trailing slash): the only thing allowed into `frame-ancestors` and compared
/// with `postMessage` origins.
pub fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// The card frame's Content-Security-Policy. Only the edge's own scripts run, it connects
/// only to the edge, and only the event's allowed origins (and the edge itself, for the
/// pay page) may embed it. Origins that are not bare origins are left out, so a bad entry
/// in an event's configuration can never inject a directive.
pub fn frame_csp(allowed_origins: &[String]) -> String {
    let mut ancestors = String::from("'self'");
    for o in allowed_origins.iter().filter(|o| is_origin(o)) {
        ancestors.push(' ');
        ancestors.push_str(o);
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors {ancestors}"
    )
}

/// The dashboard's Content-Security-Policy: the edge's own script and API only (styles come
/// from a constructed stylesheet, so no `'unsafe-inline'`), never framed, no forms posted.
pub fn dashboard_csp() -> String {
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        .to_string()
}

/// The phone pay page's Content-Security-Policy: the edge's own script, frame, QR image and
/// API only, and it cannot be framed by anyone (no clickjacking of a payment page).
pub fn pay_page_csp() -> String {
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; frame-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'"
        .to_string()
}

const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

const fn hex12(hash: u64) -> [u8; 12] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 12];
    let mut i = 0;
    while i < 12 {
        out[i] = DIGITS[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unversioned_script_is_short_cached_and_versioned_is_immutable() {
        let (ct, body, cache) = asset("/v1/checkout.js").unwrap();
        assert!(ct.starts_with("text/javascript"));
        assert_eq!((body, cache), (CHECKOUT_JS, CACHE_SHORT));
        let versioned = format!("/v1/checkout.{CHECKOUT_VERSION}.js");
        let (_, body, cache) = asset(&versioned).unwrap();
        assert_eq!((body, cache), (CHECKOUT_JS, CACHE_IMMUTABLE));
        assert!(
            asset("/v1/checkout.000000000001.js").is_none(),
            "only the current version"
        );
        assert!(asset("/v1/checkout..js").is_none());
    }

    #[test]
    fn version_is_twelve_hex_digits_of_the_script_hash() {
        assert_eq!(CHECKOUT_VERSION.len(), 12);
        assert!(CHECKOUT_VERSION.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            CHECKOUT_VERSION,
            &format!("{:016x}", fnv1a64(CHECKOUT_JS.as_bytes()))[..12]
        );
        assert_ne!(fnv1a64(b"a"), fnv1a64(b"b"));
    }

    #[test]
    fn frame_pay_page_and_their_scripts() {
        assert_eq!(asset("/v1/frame").unwrap().1, FRAME_HTML);
        assert_eq!(asset("/v1/frame.js").unwrap().1, FRAME_JS);
        let (ct, body, cache) = asset("/p/hs_Abc-123").unwrap();
        assert!(ct.starts_with("text/html"));
        assert_eq!((body, cache), (PAY_HTML, CACHE_NONE));
        for bad in [
            "/p/",
            "/p/a/b",
            "/p/a%20b",
            "/p/<x>",
            "/v1/frame/",
            "/v1/other.js",
        ] {
            assert!(asset(bad).is_none(), "{bad}");
        }
        assert!(asset(&format!("/p/{}", "a".repeat(65))).is_none());
    }

    #[test]
    fn frame_and_pay_page_load_no_inline_script_and_only_edge_scripts() {
        for html in [FRAME_HTML, PAY_HTML] {
            assert!(!html.contains("style=\""), "no style attributes under CSP");
            assert!(!html.contains(" on"), "no inline event handlers");
            for chunk in html.split("<script").skip(1) {
                let tag_end = chunk.find('>').unwrap();
                assert!(
                    chunk[..tag_end].contains("src=\"/v1/"),
                    "external edge script only"
                );
                assert!(chunk[tag_end + 1..].trim_start().starts_with("</script>"));
            }
        }
        assert!(FRAME_HTML.contains("src=\"/v1/frame.js\""));
        assert!(PAY_HTML.contains("src=\"/v1/checkout.js\""));
    }

    #[test]
    fn origins_are_bare_scheme_host_port() {
        for ok in [
            "https://shop.example",
            "http://127.0.0.1:8080",
            "https://a-b.c.d:443",
        ] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "",
            "shop.example",
            "https://",
            "https://shop.example/",
            "https://shop.example/path",
            "https://shop.example:",
            "https://shop.example:80x",
            "https://shop.example; script-src *",
            "https://*.example",
            "javascript:alert(1)",
            "https://a b",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }

    #[test]
    fn frame_csp_allows_only_listed_origins_and_drops_bad_ones() {
        let csp = frame_csp(&[
            "https://shop.example".into(),
            "https://evil.example; script-src *".into(),
            "http://127.0.0.1:9000".into(),
        ]);
        assert!(csp.ends_with("frame-ancestors 'self' https://shop.example http://127.0.0.1:9000"));
        assert!(!csp.contains("evil"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
        assert_eq!(frame_csp(&[]).matches("frame-ancestors 'self'").count(), 1);
        let pay = pay_page_csp();
        assert!(pay.contains("frame-ancestors 'none'") && pay.contains("frame-src 'self'"));
        assert!(!pay.contains("unsafe-inline"));
    }

    #[test]
    fn dashboard_page_and_script() {
        let (ct, body, cache) = asset("/ops/events/evt_0123abcd").unwrap();
        assert!(ct.starts_with("text/html"));
        assert_eq!((body, cache), (DASHBOARD_HTML, CACHE_NONE));
        assert_eq!(asset("/ops/dashboard.js").unwrap().1, DASHBOARD_JS);
        for bad in [
            "/ops/events/",
            "/ops/events/a/b",
            "/ops/events/<x>",
            "/ops/",
        ] {
            assert!(asset(bad).is_none(), "{bad}");
        }
        assert!(!DASHBOARD_HTML.contains("style=\""));
        let handler = DASHBOARD_HTML.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "no inline event handlers");
        for chunk in DASHBOARD_HTML.split("<script").skip(1) {
            let tag_end = chunk.find('>').unwrap();
            assert!(chunk[..tag_end].contains("src=\"/ops/dashboard.js\""));
        }
        let csp = dashboard_csp();
        assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"));
        // The key goes in a header, never in a URL the server could log.
        assert!(DASHBOARD_JS.contains("Authorization"));
        assert!(!DASHBOARD_JS.contains("?key=") && !DASHBOARD_JS.contains("&key="));
        assert!(DASHBOARD_JS.contains("sessionStorage"));
    }

    #[test]
    fn session_ids() {
        assert!(is_session_id("hs_01J9Z"));
        assert!(!is_session_id(""));
        assert!(!is_session_id("a.b"));
    }
}
