//! Unit tests of the event ledger.
