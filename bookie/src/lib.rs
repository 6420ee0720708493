//! The bookie tier: the bookie server (journal with group commit, entry storage, fencing) and the
//! ledger client brokers use to stripe ledgers across ensembles with quorum writes.
//!
//! Not built yet: `magnetar bookie` says so and exits non-zero. See `docs/ARCHITECTURE.md`.
