//! The HTTP API's route table: the one list the Worker dispatches on and the OpenAPI document is checked against.

pub mod answers;
pub mod bodies;

use crate::error::ApiError;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Every route the Worker serves. The edge matches on this enum exhaustively, so a route in
/// the table without a handler does not compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteId {
    Healthz,
    OpenApi,
    CreateToken,
    ListKeys,
    RotateKey,
    RevokeKey,
    PushPolicy,
    PolicyStatus,
    PolicyRevision,
    RollbackPolicy,
    CreateMerchant,
    CreateEvent,
    ShowEvent,
    SyncEvent,
    RefundOrder,
    ReconcileEvent,
    EventReport,
    ExportEvent,
    Routing,
    EventPublic,
    Quote,
    Checkout,
    CheckoutStatus,
    GetReceipt,
    VerifyReceipt,
    CheckoutJs,
    Frame,
    FrameJs,
    PayPage,
    CreateHandover,
    GetHandover,
    HandoverQr,
    HandoverWs,
    JoinQueue,
    PollQueue,
    ResetRouting,
    EventMetrics,
    OpsDashboard,
    OpsDashboardJs,
    BenchCounter,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (buyers' browsers, merchants' pages, health checks).
    Public,
    /// The operator's admin key (`Authorization: Bearer <ADMIN_KEY>`).
    Operator,
    /// The operator's key or a merchant's API key (a merchant sees only its own events).
    Merchant,
}

#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub id: RouteId,
    pub method: &'static str,
    /// OpenAPI-style path, parameters in braces: `/v1/receipts/{id}`.
    pub path: &'static str,
    pub access: Access,
}

/// The route table. `src/openapi.json` describes exactly these (a test checks it).
pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::Healthz,
        method: "GET",
        path: "/healthz",
        access: Access::Public,
    },
    Route {
        id: RouteId::OpenApi,
        method: "GET",
        path: "/v1/openapi.json",
        access: Access::Public,
    },
    Route {
        id: RouteId::CreateToken,
        method: "POST",
        path: "/v1/tokens",
        access: Access::Public,
    },
    Route {
        id: RouteId::ListKeys,
        method: "GET",
        path: "/v1/admin/keys",
        access: Access::Operator,
    },
    Route {
        id: RouteId::RotateKey,
        method: "POST",
        path: "/v1/admin/keys/rotate",
        access: Access::Operator,
    },
    Route {
        id: RouteId::RevokeKey,
        method: "POST",
        path: "/v1/admin/keys/{kid}/revoke",
        access: Access::Operator,
    },
    Route {
        id: RouteId::PushPolicy,
        method: "PUT",
        path: "/v1/admin/policies",
        access: Access::Operator,
    },
    Route {
        id: RouteId::PolicyStatus,
        method: "GET",
        path: "/v1/admin/policies/{jurisdiction}",
        access: Access::Operator,
    },
    Route {
        id: RouteId::PolicyRevision,
        method: "GET",
        path: "/v1/admin/policies/{jurisdiction}/revisions/{revision}",
        access: Access::Operator,
    },
    Route {
        id: RouteId::RollbackPolicy,
        method: "POST",
        path: "/v1/admin/policies/{jurisdiction}/rollback",
        access: Access::Operator,
    },
    Route {
        id: RouteId::CreateMerchant,
        method: "POST",
        path: "/v1/admin/merchants",
        access: Access::Operator,
    },
    Route {
        id: RouteId::CreateEvent,
        method: "POST",
        path: "/v1/admin/events",
        access: Access::Merchant,
    },
    Route {
        id: RouteId::ShowEvent,
        method: "GET",
        path: "/v1/admin/events/{id}",
        access: Access::Merchant,
    },
    Route {
        id: RouteId::SyncEvent,
        method: "POST",
        path: "/v1/admin/events/{id}/sync",
        access: Access::Merchant,
    },
    Route {
        id: RouteId::RefundOrder,
        method: "POST",
        path: "/v1/admin/events/{id}/refunds",
        access: Access::Merchant,
    },
    Route {
        id: RouteId::ReconcileEvent,
        method: "POST",
        path: "/v1/admin/events/{id}/reconcile",
        access: Access::Merchant,
    },
    Route {
        id: RouteId::EventReport,
        method: "GET",
        path: "/v1/admin/events/{id}/report",
        access: Access::Merchant,
    },
    Route {
        id: RouteId::ExportEvent,
        method: "GET",
        path: "/v1/admin/events/{id}/export",
        access: Access::Merchant,
    },
    Route {
        id: RouteId::Routing,
        method: "GET",
        path: "/v1/admin/routing",
        access: Access::Operator,
    },
    Route {
        id: RouteId::EventPublic,
        method: "GET",
        path: "/v1/events/{id}/public",
        access: Access::Public,
    },
    Route {
        id: RouteId::Quote,
        method: "POST",
        path: "/v1/events/{id}/quote",
        access: Access::Public,
    },
    Route {
        id: RouteId::Checkout,
        method: "POST",
        path: "/v1/events/{id}/checkout",
        access: Access::Public,
    },
    Route {
        id: RouteId::CheckoutStatus,
        method: "GET",
        path: "/v1/events/{id}/checkouts/{status}",
        access: Access::Public,
    },
    Route {
        id: RouteId::GetReceipt,
        method: "GET",
        path: "/v1/receipts/{id}",
        access: Access::Public,
    },
    Route {
        id: RouteId::VerifyReceipt,
        method: "POST",
        path: "/v1/receipts/verify",
        access: Access::Public,
    },
    Route {
        id: RouteId::CheckoutJs,
        method: "GET",
        path: "/v1/checkout.js",
        access: Access::Public,
    },
    Route {
        id: RouteId::Frame,
        method: "GET",
        path: "/v1/frame",
        access: Access::Public,
    },
    Route {
        id: RouteId::FrameJs,
        method: "GET",
        path: "/v1/frame.js",
        access: Access::Public,
    },
    Route {
        id: RouteId::PayPage,
        method: "GET",
        path: "/p/{session_id}",
        access: Access::Public,
    },
    Route {
        id: RouteId::CreateHandover,
        method: "POST",
        path: "/v1/events/{id}/handover",
        access: Access::Public,
    },
    Route {
        id: RouteId::GetHandover,
        method: "GET",
        path: "/v1/handover/{id}",
        access: Access::Public,
    },
    Route {
        id: RouteId::HandoverQr,
        method: "GET",
        path: "/v1/handover/{id}/qr.svg",
        access: Access::Public,
    },
    Route {
        id: RouteId::HandoverWs,
        method: "GET",
        path: "/v1/handover/{id}/ws",
        access: Access::Public,
    },
    Route {
        id: RouteId::JoinQueue,
        method: "POST",
        path: "/v1/events/{id}/queue",
        access: Access::Public,
    },
    Route {
        id: RouteId::PollQueue,
        method: "GET",
        path: "/v1/events/{id}/queue/{ticket}",
        access: Access::Public,
    },
    Route {
        id: RouteId::ResetRouting,
        method: "POST",
        path: "/v1/admin/routing/reset",
        access: Access::Operator,
    },
    Route {
        id: RouteId::EventMetrics,
        method: "GET",
        path: "/v1/admin/events/{id}/metrics",
        access: Access::Merchant,
    },
    // The dashboard page and its script hold no data: the page asks for a key and fetches
    // the metrics route with it.
    Route {
        id: RouteId::OpsDashboard,
        method: "GET",
        path: "/ops/events/{id}",
        access: Access::Public,
    },
    Route {
        id: RouteId::OpsDashboardJs,
        method: "GET",
        path: "/ops/dashboard.js",
        access: Access::Public,
    },
    Route {
        id: RouteId::BenchCounter,
        method: "POST",
        path: "/v1/admin/bench/counter/{name}",
        access: Access::Operator,
    },
];

/// The OpenAPI 3.1 description served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// The `Idempotency-Key` header's rule (1 to 200 printable ASCII characters), the same for
/// every route that takes one: 400 `invalid_idempotency_key` otherwise.
pub fn idempotency_key(header: Option<&str>) -> Result<Option<&str>, ApiError> {
    match header {
        Some(k) if !k.is_empty() && k.len() <= 200 && k.chars().all(|c| c.is_ascii_graphic()) => {
            Ok(Some(k))
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key is 1 to 200 printable ASCII characters.",
        )),
        None => Ok(None),
    }
}

/// `serde_json::from_str`, except that a number with a zero fraction (`2776.0`) is taken for
/// the integer it is, as JSON Schema (and so the OpenAPI document) counts it an integer.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    let e = match serde_json::from_str(text) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if e.classify() == serde_json::error::Category::Data {
        if let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) {
            if integral_numbers_as_integers(&mut value) {
                // Through text again, not `from_value`: one deserializer per type in the
                // Worker's module instead of two.
                if let Ok(v) = serde_json::from_str(&value.to_string()) {
                    return Ok(v);
                }
            }
        }
    }
    Err(e)
}

/// Parses a JSON request body into `T`. Errors never echo the body (it may hold a card
/// number): they name a missing field or the position of the problem only. A number with a
/// zero fraction (`2776.0`) is taken for the integer it is, as JSON Schema (and so the
/// OpenAPI document) counts it an integer; serde alone would refuse it for an integer field.
pub fn parse_json_body<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    let e = match from_json(text) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let msg = e.to_string();
    Err(match e.classify() {
        serde_json::error::Category::Data if msg.starts_with("missing field") => {
            let field = msg.split('`').nth(1).unwrap_or("?");
            ApiError::bad_request(
                "invalid_body",
                format!("The body is missing the field `{}`.", clip(field)),
            )
        }
        serde_json::error::Category::Data => ApiError::bad_request(
            "invalid_body",
            format!(
                "A field in the body has the wrong type or value (line {}, column {}).",
                e.line(),
                e.column()
            ),
        ),
        _ => ApiError::bad_request(
            "invalid_json",
            format!(
                "The body is not valid JSON (line {}, column {}).",
                e.line(),
                e.column()
            ),
        ),
    })
}

/// Rewrites every float with a zero fraction that an `i64` holds exactly as that integer;
/// whether any was rewritten.
fn integral_numbers_as_integers(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    // 2^63 and 2^64: a float with a zero fraction in range is exactly that integer.
    const I64_END: f64 = 9_223_372_036_854_775_808.0;
    const U64_END: f64 = 18_446_744_073_709_551_616.0;
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && (-I64_END..I64_END).contains(&f) => {
                *v = Value::from(f as i64);
                true
            }
            Some(f) if f.fract() == 0.0 && (0.0..U64_END).contains(&f) => {
                *v = Value::from(f as u64);
                true
            }
            _ => false,
        },
        Value::Array(items) => rewrite_all(items.iter_mut()),
        Value::Object(map) => rewrite_all(map.values_mut()),
        _ => false,
    }
}

/// [`integral_numbers_as_integers`] on every member (none skipped once one changed).
fn rewrite_all<'a>(members: impl Iterator<Item = &'a mut serde_json::Value>) -> bool {
    let mut changed = false;
    for m in members {
        changed |= integral_numbers_as_integers(m);
    }
    changed
}

/// A matched route with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub route: Route,
    pub params: BTreeMap<String, String>,
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Route {}

type Table = matchit::Router<Vec<Route>>;

fn table() -> &'static Option<Table> {
    static TABLE: OnceLock<Option<Table>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut by_path: BTreeMap<String, Vec<Route>> = BTreeMap::new();
        for r in ROUTES {
            by_path.entry(matchit_pattern(r.path)).or_default().push(*r);
        }
        let mut router = matchit::Router::new();
        for (pattern, routes) in by_path {
            router.insert(pattern, routes).ok()?;
        }
        Some(router)
    })
}

/// `/v1/events/{id}/quote` becomes matchit's `/v1/events/:id/quote`.
fn matchit_pattern(path: &str) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => format!(":{name}"),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// Finds the route for a request: 404 `route_not_found` for an unknown path, 405
/// `method_not_allowed` (naming the allowed methods) for a known path with another method.
pub fn resolve(method: &str, path: &str) -> Result<Matched, ApiError> {
    let router = table()
        .as_ref()
        .ok_or_else(|| ApiError::new(404, "route_not_found", "The route table is unavailable."))?;
    let found = router.at(path).map_err(|_| {
        ApiError::new(
            404,
            "route_not_found",
            format!("There is no route at {}.", clip(path)),
        )
    })?;
    let method = if method == "HEAD" { "GET" } else { method };
    match found.value.iter().find(|r| r.method == method) {
        Some(route) => Ok(Matched {
            route: *route,
            params: found
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
        None => {
            let allow = allow_header(&found.value.iter().map(|r| r.method).collect::<Vec<_>>());
            Err(ApiError::new(
                405,
                "method_not_allowed",
                format!("{} accepts {} only.", clip(path), allow),
            )
            .allowing(allow))
        }
    }
}

/// The methods a path accepts (for CORS preflights and `Allow`), as in the route table.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    table()
        .as_ref()
        .and_then(|t| t.at(path).ok())
        .map(|m| m.value.iter().map(|r| r.method).collect())
        .unwrap_or_default()
}

/// The `Allow` value for a path's methods (RFC 9110 section 10.2.1): the table's methods,
/// `HEAD` wherever `GET` is served (it is answered as a GET without the body) and `OPTIONS`.
pub fn allow_header(methods: &[&str]) -> String {
    let mut all: Vec<&str> = methods.to_vec();
    if methods.contains(&"GET") {
        all.push("HEAD");
    }
    all.push("OPTIONS");
    all.join(", ")
}

fn clip(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn openapi_document_describes_exactly_the_route_table() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap().get(..3), Some("3.1"));
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_route_resolves_to_itself() {
        for r in ROUTES {
            let concrete = r.path.replace("{id}", "x1").replace("{jurisdiction}", "DE");
            let concrete = concrete
                .split('/')
                .map(|s| if s.starts_with('{') { "p" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let m = resolve(r.method, &concrete).unwrap();
            assert_eq!(m.route.id, r.id, "{} {}", r.method, r.path);
        }
    }

    #[test]
    fn a_body_with_integral_floats_parses_as_integers_and_errors_never_echo_it() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct B {
            n: u32,
            m: i64,
        }
        let b: B = parse_json_body(r#"{"n": 3.0, "m": -2776.0}"#).unwrap();
        assert_eq!((b.n, b.m), (3, -2776));
        let half = parse_json_body::<B>(r#"{"n": 3.5, "m": 1}"#).unwrap_err();
        assert_eq!((half.status, half.code.as_ref()), (400, "invalid_body"));
        let big: B = parse_json_body(r#"{"n": 1, "m": 6.7480788860026216e16}"#).unwrap();
        assert_eq!(big.m, 67_480_788_860_026_216);
        let huge = parse_json_body::<B>(r#"{"n": 1e300, "m": 1}"#).unwrap_err();
        assert_eq!(huge.code, "invalid_body");
        let unknown =
            parse_json_body::<B>(r#"{"n": 1, "m": 1, "x": "4242424242424242"}"#).unwrap_err();
        assert!(!unknown.message.contains("4242"), "{}", unknown.message);
        let missing = parse_json_body::<B>(r#"{"n": 1}"#).unwrap_err();
        assert_eq!(missing.message, "The body is missing the field `m`.");
        assert_eq!(parse_json_body::<B>("{").unwrap_err().code, "invalid_json");
    }

    #[test]
    fn unknown_paths_and_methods_are_told_apart() {
        assert_eq!(resolve("GET", "/nope").unwrap_err().code, "route_not_found");
        let e = resolve("DELETE", "/healthz").unwrap_err();
        assert_eq!((e.status, e.code.as_ref()), (405, "method_not_allowed"));
        assert_eq!(e.allow.as_deref(), Some("GET, HEAD, OPTIONS"));
        assert!(resolve("HEAD", "/healthz").is_ok());
        // HEAD of a POST-only route is a 405 that names what the route does take.
        let e = resolve("HEAD", "/v1/tokens").unwrap_err();
        assert_eq!((e.status, e.allow.as_deref()), (405, Some("POST, OPTIONS")));
    }
}
