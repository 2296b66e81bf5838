//! The OpenAPI 3.1 document, generated from the route table ([`crate::api::ROUTES`]) and
//! from the Rust types serde parses requests into and writes answers from (their `schemars`
//! derives). Native only: `poptill-openapi` writes the result to `src/openapi.json`, which
//! the Worker embeds and serves; a test fails when the committed file is not what this
//! module generates, so the served document cannot drift from the code.
//!
//! What each operation says (its summary, the answers it gives, the error codes it can
//! return, its links) is in [`operations`], one exhaustive match over [`RouteId`]: a new
//! route without a description does not compile.

mod operations;

use crate::api::{Access, RouteId, ROUTES};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::transform::RecursiveTransform;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The two schema generators: requests are described as serde deserializes them (defaults
/// make fields optional), answers as serde serializes them.
pub struct Schemas {
    requests: SchemaGenerator,
    answers: SchemaGenerator,
}

impl Schemas {
    fn new() -> Schemas {
        let settings = SchemaSettings::draft2020_12()
            .with(|s| {
                s.definitions_path = "/components/schemas".into();
                s.meta_schema = None;
            })
            .with_transform(RecursiveTransform(integer_bounds));
        Schemas {
            requests: settings.clone().for_deserialize().into_generator(),
            answers: settings.for_serialize().into_generator(),
        }
    }

    /// The schema of a request body of type `T` (a `$ref` for named types).
    pub fn request<T: JsonSchema>(&mut self) -> Value {
        self.requests.subschema_for::<T>().to_value()
    }

    /// The schema of an answer body of type `T`.
    pub fn answer<T: JsonSchema>(&mut self) -> Value {
        self.answers.subschema_for::<T>().to_value()
    }

    /// Every named schema both generators made. A type described differently as a
    /// request and as an answer (a default, a skipped field) gets the answer's form under
    /// `<Name>Answer`.
    fn components(mut self) -> Map<String, Value> {
        let mut out = self.requests.take_definitions(true);
        for (name, schema) in self.answers.take_definitions(true) {
            match out.get(&name) {
                Some(existing) if *existing != schema => {
                    out.insert(format!("{name}Answer"), schema);
                }
                _ => {
                    out.insert(name, schema);
                }
            }
        }
        out
    }
}

/// States the range of a fixed-width integer (`format: uint32` and the like) as `minimum`
/// and `maximum` where the type's own bounds are not narrowed already: a validator ignores
/// `format`, and serde refuses a number the type cannot hold. `usize` counts as 32 bits,
/// as on wasm32, where the Worker parses.
fn integer_bounds(schema: &mut schemars::Schema) {
    let (min, max): (Value, Value) = match schema.get("format").and_then(Value::as_str) {
        Some("uint8") => (0.into(), u8::MAX.into()),
        Some("int8") => (i8::MIN.into(), i8::MAX.into()),
        Some("uint16") => (0.into(), u16::MAX.into()),
        Some("int16") => (i16::MIN.into(), i16::MAX.into()),
        Some("uint32") | Some("uint") => (0.into(), u32::MAX.into()),
        Some("int32") | Some("int") => (i32::MIN.into(), i32::MAX.into()),
        Some("uint64") => (0.into(), u64::MAX.into()),
        Some("int64") => (i64::MIN.into(), i64::MAX.into()),
        _ => return,
    };
    if schema.get("minimum").is_none() {
        schema.insert("minimum".into(), min);
    }
    if schema.get("maximum").is_none() {
        schema.insert("maximum".into(), max);
    }
}

/// An error answer: the status, and the stable codes an operation can return with it.
pub type Errors = BTreeMap<u16, Vec<&'static str>>;

/// The document, as the Worker serves it at `/v1/openapi.json`.
pub fn document() -> Value {
    let mut schemas = Schemas::new();
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for route in ROUTES {
        let mut op = operations::describe(route.id, &mut schemas);
        if route.path.contains('{') {
            // A parameter that is empty or holds a `/` leaves no route to match.
            op = op.errors(404, &["route_not_found"]);
        }
        let value = op.into_value(route.id, route.access);
        paths
            .entry(route.path)
            .or_default()
            .insert(route.method.to_ascii_lowercase(), value);
    }
    let webhooks = operations::webhooks(&mut schemas);
    // `Error`, which every error answer refers to.
    schemas.answer::<crate::api::answers::ErrorBody>();
    let components = schemas.components();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "poptill",
            "version": crate::VERSION,
            "description": INFO,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/", "description": "The edge that serves this document"}],
        "paths": paths,
        "webhooks": webhooks,
        "components": {
            "securitySchemes": {
                "operatorKey": {"type": "http", "scheme": "bearer", "description": "The operator's ADMIN_KEY secret."},
                "merchantKey": {"type": "http", "scheme": "bearer", "description": "A merchant's API key (`mk_...`): its own events only."},
            },
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key", "in": "header", "required": false,
                    "description": "One key per buyer intent (1 to 200 printable ASCII characters): every retry of the same payment sends the same key, and the edge answers it as the first time instead of charging again. Without one the edge makes its own, and a retry is a new payment.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$"},
                },
            },
            "headers": headers(),
            "schemas": components,
        },
    })
}

const INFO: &str = "Edge-first checkout for micro-events: one Cloudflare Worker in every PoP. \
Errors are JSON `{\"error\": {\"code\", \"message\", \"retryable\"}}`: `code` is stable and \
listed per operation and status below, `message` is a sentence for a person. Every answer \
carries `X-Request-Id` and `X-Poptill-Colo`. Generated from the Rust types by \
`cargo run --bin poptill-openapi`; do not edit src/openapi.json by hand.";

/// The response headers the document names (`components.headers`).
fn headers() -> Value {
    json!({
        "X-Request-Id": {"description": "This request's id (`req_<16 hex>`), also in the edge's log line for it.", "schema": {"type": "string", "pattern": "^req_"}},
        "X-Poptill-Colo": {"description": "The PoP that answered (IATA code, `LOCAL` in local runs).", "schema": {"type": "string"}},
        "Retry-After": {"description": "Seconds to wait before asking again (RFC 9110).", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
        "X-Poptill-Routing": {"description": "How the edge routed the payment: the lane and why (fast, cheap, fallback, offline).", "schema": {"type": "string"}},
        "Server-Timing": {"description": "Where the answer's time went (edge, object, acquirer), in W3C Server-Timing form.", "schema": {"type": "string"}},
        "Idempotent-Replayed": {"description": "`true` when this answer replays an earlier request with the same Idempotency-Key.", "schema": {"type": "string", "enum": ["true"]}},
        "Allow": {"description": "The methods this resource accepts (RFC 9110).", "schema": {"type": "string"}},
        "WWW-Authenticate": {"description": "`Bearer` (RFC 6750).", "schema": {"type": "string"}},
    })
}

/// An error answer whose `code` is one of `codes`.
fn error_with(codes: &[&str]) -> Value {
    json!({
        "allOf": [{"$ref": "#/components/schemas/Error"}],
        "properties": {"error": {"properties": {"code": {"enum": codes}}}},
    })
}

/// One answer of an operation.
pub struct Answer {
    status: u16,
    description: String,
    content: Vec<(&'static str, Value)>,
    headers: Vec<&'static str>,
    links: Map<String, Value>,
}

/// One operation, as [`operations::describe`] builds it.
pub struct Op {
    summary: &'static str,
    description: String,
    parameters: Vec<Value>,
    body: Option<(&'static str, Value)>,
    answers: Vec<Answer>,
    errors: Errors,
}

/// `CreateToken` becomes `createToken`.
pub fn operation_id(id: RouteId) -> String {
    let name = format!("{id:?}");
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
        None => name,
    }
}

impl Op {
    pub fn new(summary: &'static str) -> Op {
        Op {
            summary,
            description: String::new(),
            parameters: Vec::new(),
            body: None,
            answers: Vec::new(),
            errors: Errors::new(),
        }
    }

    pub fn describe(mut self, text: &str) -> Op {
        self.description = text.to_string();
        self
    }

    /// A path parameter.
    pub fn path(mut self, name: &str, description: &str, schema: Value) -> Op {
        self.parameters.push(json!({
            "name": name, "in": "path", "required": true, "description": description, "schema": schema,
        }));
        self
    }

    /// An optional query parameter.
    pub fn query(mut self, name: &str, description: &str, schema: Value) -> Op {
        self.parameters.push(json!({
            "name": name, "in": "query", "required": false, "description": description, "schema": schema,
        }));
        self
    }

    /// The `Idempotency-Key` request header.
    pub fn idempotent(mut self) -> Op {
        self.parameters
            .push(json!({"$ref": "#/components/parameters/IdempotencyKey"}));
        self
    }

    /// A JSON request body of type `T`.
    pub fn body<T: JsonSchema>(mut self, s: &mut Schemas) -> Op {
        self.body = Some(("application/json", s.request::<T>()));
        self
    }

    /// A JSON answer of type `T`.
    pub fn answer<T: JsonSchema>(self, s: &mut Schemas, status: u16, description: &str) -> Op {
        let schema = s.answer::<T>();
        self.answer_with(status, description, Some(("application/json", schema)))
    }

    /// An answer with a body of another type (a page, a script, an image, CSV).
    pub fn answer_with(
        mut self,
        status: u16,
        description: &str,
        content: Option<(&'static str, Value)>,
    ) -> Op {
        self.answers.push(Answer {
            status,
            description: description.to_string(),
            content: content.into_iter().collect(),
            headers: Vec::new(),
            links: Map::new(),
        });
        self
    }

    /// Another media type the last answer may come in.
    pub fn or_as(mut self, content_type: &'static str, schema: Value) -> Op {
        if let Some(a) = self.answers.last_mut() {
            a.content.push((content_type, schema));
        }
        self
    }

    /// Headers the last answer carries (names in `components.headers`).
    pub fn with_headers(mut self, names: &[&'static str]) -> Op {
        if let Some(a) = self.answers.last_mut() {
            a.headers.extend_from_slice(names);
        }
        self
    }

    /// A link from the last answer to the operation `to`, its parameters taken from the
    /// answer (`"$response.body#/event_id"`) or the request (`"$request.path.id"`).
    pub fn link(self, name: &str, to: RouteId, parameters: &[(&str, &str)]) -> Op {
        self.link_with_body(name, to, parameters, None)
    }

    /// A link that also fills the target's request body (members as runtime expressions).
    pub fn link_with_body(
        mut self,
        name: &str,
        to: RouteId,
        parameters: &[(&str, &str)],
        body: Option<Value>,
    ) -> Op {
        if let Some(a) = self.answers.last_mut() {
            let params: Map<String, Value> = parameters
                .iter()
                .map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string())))
                .collect();
            let mut link = json!({"operationId": operation_id(to), "parameters": params});
            if let Some(b) = body {
                link["requestBody"] = b;
            }
            a.links.insert(name.to_string(), link);
        }
        self
    }

    /// Error codes the operation can return with `status`.
    pub fn errors(mut self, status: u16, codes: &[&'static str]) -> Op {
        let list = self.errors.entry(status).or_default();
        for c in codes {
            if !list.contains(c) {
                list.push(c);
            }
        }
        self
    }

    fn into_value(mut self, id: RouteId, access: Access) -> Value {
        // What every route of its kind can answer.
        if self.body.is_some() {
            self = self
                .errors(400, &["invalid_json", "invalid_body"])
                .errors(413, &["body_too_large"]);
        }
        match access {
            Access::Public => {}
            Access::Operator | Access::Merchant => self = self.errors(401, &["unauthorized"]),
        }
        let mut op = Map::new();
        op.insert("operationId".into(), json!(operation_id(id)));
        op.insert("summary".into(), json!(self.summary));
        let mut description = self.description.clone();
        if !self.errors.is_empty() {
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str("Errors:");
            for (status, codes) in &self.errors {
                let listed: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
                description.push_str(&format!("\n- {status}: {}", listed.join(", ")));
            }
        }
        if !description.is_empty() {
            op.insert("description".into(), json!(description));
        }
        match access {
            Access::Public => {}
            Access::Operator => {
                op.insert("security".into(), json!([{"operatorKey": []}]));
            }
            Access::Merchant => {
                op.insert(
                    "security".into(),
                    json!([{"operatorKey": []}, {"merchantKey": []}]),
                );
            }
        }
        if !self.parameters.is_empty() {
            op.insert("parameters".into(), Value::Array(self.parameters));
        }
        if let Some((content_type, schema)) = self.body {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {content_type: {"schema": schema}}}),
            );
        }
        let mut responses = Map::new();
        for a in self.answers {
            responses.insert(a.status.to_string(), answer_value(a));
        }
        for (status, codes) in &self.errors {
            let mut headers = vec!["X-Request-Id", "X-Poptill-Colo"];
            match status {
                401 => headers.push("WWW-Authenticate"),
                429 | 503 => headers.push("Retry-After"),
                _ => {}
            }
            let listed: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
            let errors = format!("{}: {}", reason(*status), listed.join(", "));
            match responses.get_mut(&status.to_string()) {
                // The status is also a described answer (a checkout's 402 `declined`): the
                // body is that answer or one of these errors.
                Some(answer) => {
                    let described = answer["description"].as_str().unwrap_or("").to_string();
                    answer["description"] = json!(format!("{described}; or an error. {errors}"));
                    let schema = answer["content"]["application/json"]["schema"].take();
                    answer["content"]["application/json"]["schema"] =
                        json!({"anyOf": [schema, error_with(codes)]});
                }
                None => {
                    responses.insert(
                        status.to_string(),
                        json!({
                            "description": errors,
                            "headers": header_refs(&headers),
                            "content": {"application/json": {"schema": error_with(codes)}},
                        }),
                    );
                }
            }
        }
        op.insert("responses".into(), Value::Object(responses));
        Value::Object(op)
    }
}

fn header_refs(names: &[&str]) -> Value {
    let mut m = Map::new();
    for n in names {
        m.insert(
            (*n).to_string(),
            json!({"$ref": format!("#/components/headers/{n}")}),
        );
    }
    Value::Object(m)
}

fn answer_value(a: Answer) -> Value {
    let mut headers = vec!["X-Request-Id", "X-Poptill-Colo"];
    headers.extend(a.headers.iter().copied());
    let mut v = Map::new();
    v.insert("description".into(), json!(a.description));
    v.insert("headers".into(), header_refs(&headers));
    if !a.content.is_empty() {
        let content: Map<String, Value> = a
            .content
            .into_iter()
            .map(|(t, schema)| (t.to_string(), json!({ "schema": schema })))
            .collect();
        v.insert("content".into(), Value::Object(content));
    }
    if !a.links.is_empty() {
        v.insert("links".into(), Value::Object(a.links));
    }
    Value::Object(v)
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad request",
        401 => "No valid key",
        402 => "Declined",
        403 => "Forbidden",
        404 => "Not found",
        409 => "Conflict",
        410 => "Gone",
        413 => "Body too large",
        422 => "Refused by the event's rules",
        426 => "Upgrade required",
        429 => "Too many requests",
        503 => "Unavailable for now",
        _ => "Error",
    }
}

/// The document as `src/openapi.json` holds it: compact JSON (the Worker embeds it, so
/// every byte is in the module) with a final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string(&document()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests;
