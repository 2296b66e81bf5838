//! Which web pages may call a card or till route from a browser: the `Origin` check and the
//! CORS answer, decided here and only applied by the shell.
//!
//! The card frame (`/v1/frame`) is served by the edge itself, so its calls (`/v1/tokens`,
//! the checkout, the pending checkout's status) are same-origin. A merchant's page talks to
//! the frame by `postMessage`; in terminal mode it opens pay links (handover) itself.
//!
//! - **Card routes** (tokens, checkout, its status) answer the edge's own pages and the
//!   event's allowed origins, never `*`: a page of any other origin is refused (403
//!   `origin_not_allowed`) before anything is done, so it can neither mint tokens for the
//!   event nor pay with a token it found, nor read the answers. An event that lists no
//!   origins is paid for only through the edge's own frame and pages.
//! - **Till routes** (opening a pay link) answer the edge's pages and the event's allowed
//!   origins, or any page when the event lists none (the merchant's own till page).
//! - A request without `Origin` is not a web page's (browsers send it on every POST); it
//!   gets no CORS answer. `Origin` is a browser's promise, not a server's: scripts outside a
//!   browser are what the per-card limits and the operator's rate-limiting rules are for.

use crate::error::ApiError;

/// Which pages a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRule {
    /// The edge's own pages and the event's allowed origins; never any page.
    CardPages,
    /// As [`OriginRule::CardPages`], or any page when the event lists no origins.
    TillPages,
}

/// Decides a request: `origin` is its `Origin` header, `self_origin` the edge's own origin,
/// `allowed` the event's allowed origins. `Ok(Some(v))` is the `Access-Control-Allow-Origin`
/// value to send, `Ok(None)` none; a refusal is a 403 with a stable code.
pub fn check(
    rule: OriginRule,
    origin: Option<&str>,
    self_origin: &str,
    allowed: &[String],
) -> Result<Option<String>, ApiError> {
    match origin {
        None => Ok(None),
        Some(o) if !self_origin.is_empty() && o == self_origin => Ok(None),
        Some(o) if allowed.iter().any(|a| a == o) => Ok(Some(o.to_string())),
        Some(_) if rule == OriginRule::TillPages && allowed.is_empty() => Ok(Some("*".into())),
        Some(_) => Err(ApiError::new(
            403,
            "origin_not_allowed",
            "This page's origin is not allowed to use this event's checkout.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGE: &str = "https://pay.poptill.example";
    const SHOP: &str = "https://shop.example";
    const EVIL: &str = "https://evil.example";

    fn listed() -> Vec<String> {
        vec![SHOP.to_string()]
    }

    #[test]
    fn card_routes_answer_the_edge_and_the_events_origins_never_any_page() {
        let r = OriginRule::CardPages;
        assert_eq!(check(r, Some(EDGE), EDGE, &[]), Ok(None));
        assert_eq!(check(r, None, EDGE, &[]), Ok(None));
        assert_eq!(check(r, Some(SHOP), EDGE, &listed()), Ok(Some(SHOP.into())));
        // An event that lists no origins is not open to every page (it was `*`).
        for allowed in [vec![], listed()] {
            let e = check(r, Some(EVIL), EDGE, &allowed).unwrap_err();
            assert_eq!((e.status, e.code.as_ref()), (403, "origin_not_allowed"));
        }
        // An edge that does not know its own origin treats every page as foreign.
        assert!(check(r, Some(""), "", &[]).is_err());
        // Never `*`, whatever the page and the event's list.
        for o in [None, Some(EDGE), Some(SHOP), Some(EVIL), Some("null")] {
            for allowed in [vec![], listed()] {
                if let Ok(v) = check(r, o, EDGE, &allowed) {
                    assert_ne!(v.as_deref(), Some("*"), "{o:?}");
                }
            }
        }
    }

    #[test]
    fn till_routes_answer_any_page_only_when_the_event_lists_none() {
        let r = OriginRule::TillPages;
        assert_eq!(check(r, Some(EVIL), EDGE, &[]), Ok(Some("*".into())));
        assert!(check(r, Some(EVIL), EDGE, &listed()).is_err());
        assert_eq!(check(r, Some(SHOP), EDGE, &listed()), Ok(Some(SHOP.into())));
        assert_eq!(check(r, Some(EDGE), EDGE, &listed()), Ok(None));
    }
}
