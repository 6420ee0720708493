//! Ledger client (being written).
