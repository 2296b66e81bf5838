//! wasm-bindgen-test suite: the core, compiled to wasm32, behaves as it does natively.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use poptill::api::{resolve, RouteId};
use poptill::money::{Currency, MinorUnits};
use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen_test]
fn money_formats_in_wasm() {
    let kwd = Currency::parse("KWD").unwrap();
    assert_eq!(MinorUnits(1250).display(kwd), "1.250 KWD");
}

#[wasm_bindgen_test]
fn routes_resolve_in_wasm() {
    assert_eq!(
        resolve("GET", "/healthz").unwrap().route.id,
        RouteId::Healthz
    );
    assert_eq!(resolve("GET", "/nope").unwrap_err().code, "route_not_found");
}

#[wasm_bindgen_test]
fn randomness_is_available_in_wasm() {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut a).unwrap();
    getrandom::getrandom(&mut b).unwrap();
    assert_ne!(a, b);
}
