//! poptill: edge-first checkout for micro-events, compiled to one Cloudflare Worker.
//!
//! The crate has two halves. The **core** (every module declared here except `edge`) is
//! deterministic plain Rust: it does no I/O, reads no clock and draws no randomness of its
//! own. Time enters as a `now` argument (Unix milliseconds) and random bytes as arguments,
//! so native `cargo test` drives it with a fake clock. The **edge** shell (`edge`, only on
//! `wasm32`) decodes requests, calls the core, performs the I/O it asks for (KV, Durable
//! Objects, the acquirer) and encodes responses. `worker` is a dependency only on wasm32, so
//! the compiler enforces that the core never touches it.

pub mod acquirer;
pub mod api;
pub mod canonical;
pub mod card;
pub mod checkout;
pub mod embed;
pub mod error;
pub mod event_id;
pub mod event_protocol;
pub mod handover;
pub mod ledger;
pub mod money;
#[cfg(any(test, not(target_arch = "wasm32")))]
pub mod openapi;
pub mod origin;
pub mod policy;
pub mod qr;
pub mod quote;
pub mod receipt;
pub mod refunds;
pub mod routing;
pub mod secret;
pub mod telemetry;
pub mod time;
pub mod vault;
pub mod webhook;

#[cfg(target_arch = "wasm32")]
pub mod edge;

/// The crate version, reported by `/healthz`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
