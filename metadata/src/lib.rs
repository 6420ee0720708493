//! The metadata store of Magnetar: where bookies register, ledgers keep their metadata, brokers
//! hold topic-ownership leases and managed ledgers and cursors keep their state.
//!
//! The seam is the [`MetadataStore`] trait: versioned compare-and-set whose conflicts are returned
//! as data ([`PutOutcome::Conflict`]), prefix listing, ordered watches that start from a version so
//! nothing is lost between a read and a watch, and [`Session`]s (leases with a ttl) that own
//! ephemeral keys. Backends:
//!
//! - [`MemoryStore`] — in-process, for unit tests of other crates;
//! - [`EmbeddedStore`] — durable redb file with group commit, for `magnetar standalone`;
//! - [`EtcdStore`] — a real etcd cluster, with retries across endpoints.
//!
//! Wrappers implement the same trait: [`CoalescingStore`] serves concurrent reads of one key
//! with one request (a broker's etcd store).
//!
//! Every backend passes the same conformance suite (`metadata/tests/conformance.rs`).
//! On top of the trait sit the helpers later crates use: [`RecordStore`] (typed records with a
//! read–modify–CAS–retry loop), [`IdAllocator`] (monotonic 64-bit ids) and [`OwnershipLease`]
//! (a key held with a fresh epoch). Shared by every crate above: [`clock`] (injected time and
//! seeded randomness) and [`crash_point`] (named places where tests kill the process).

pub mod clock;
mod coalesce;
pub mod crash_point;
mod embedded;
mod error;
mod etcd;
mod idalloc;
mod ids;
mod keyspace;
mod lease;
mod memory;
pub mod priority;
#[cfg(test)]
mod probe;
mod record;
mod rounds;
mod session;
mod store;

pub use coalesce::CoalescingStore;
pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use error::{MetadataError, Result};
pub use etcd::{EtcdOptions, EtcdStore};
pub use idalloc::IdAllocator;
pub use ids::{EntryId, LedgerId, SessionId};
pub use lease::{Acquired, LeaseRecord, OwnershipLease};
pub use memory::MemoryStore;
pub use record::{RecordStore, Update};
pub use session::{Session, SessionBackend};
pub use store::{
    DeleteOutcome, EventKind, Expected, KEY_SIZE_MAX_BYTES, Listing, MetadataStore, PutOutcome,
    VALUE_SIZE_MAX_BYTES, Version, Versioned, WatchEvent, WatchStream, validate_key,
    validate_value,
};
