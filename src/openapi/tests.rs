//! Tests of the generated OpenAPI document: it is the served one, and it is whole.

use super::*;
use std::collections::BTreeSet;

#[test]
fn the_served_document_is_the_generated_one() {
    let served = crate::api::OPENAPI_JSON;
    let generated = document_text();
    assert!(
        served == generated,
        "src/openapi.json is not what the code generates: run `cargo run --bin poptill-openapi`"
    );
}

#[test]
fn every_route_is_described_once_with_an_operation_id() {
    let doc = document();
    let mut ids = BTreeSet::new();
    let mut n = 0;
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            n += 1;
            assert!(ids.insert(op["operationId"].as_str().unwrap().to_string()));
            assert!(!op["responses"].as_object().unwrap().is_empty());
        }
    }
    assert_eq!(n, ROUTES.len());
}

#[test]
fn every_link_names_an_operation_of_the_document() {
    let doc = document();
    let mut ids = BTreeSet::new();
    let mut targets = Vec::new();
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            ids.insert(op["operationId"].as_str().unwrap().to_string());
            for (_, r) in op["responses"].as_object().unwrap() {
                if let Some(links) = r.get("links").and_then(|l| l.as_object()) {
                    for (_, l) in links {
                        targets.push(l["operationId"].as_str().unwrap().to_string());
                    }
                }
            }
        }
    }
    assert!(targets.len() >= 10, "{targets:?}");
    for t in targets {
        assert!(
            ids.contains(&t),
            "a link names {t}, which is not an operation"
        );
    }
}

#[test]
fn every_ref_resolves() {
    let doc = document();
    let text = doc.to_string();
    let mut missing = Vec::new();
    for part in text.split("\"$ref\":\"#/").skip(1) {
        let path = part.split('"').next().unwrap();
        let mut v = &doc;
        for seg in path.split('/') {
            v = &v[seg];
        }
        if v.is_null() {
            missing.push(path.to_string());
        }
    }
    assert!(missing.is_empty(), "unresolved $refs: {missing:?}");
}

#[test]
fn bodies_deny_unknown_fields_as_their_parsers_do() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for name in [
        "TokenRequest",
        "CardInput",
        "NewMerchant",
        "NewEvent",
        "CheckoutBody",
        "CartItem",
    ] {
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
    }
    let unknown = serde_json::from_str::<crate::api::bodies::NewMerchant>(r#"{"name":"a","x":1}"#);
    assert!(unknown.is_err());
}
