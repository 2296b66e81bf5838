//! Deterministic simulation of the event ledger under duplicates, lost alarms, outages and restarts.
