//! Signed receipts (placeholder while routing is built).
