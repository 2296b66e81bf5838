//! Tests of quotes.
