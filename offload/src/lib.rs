//! Tiered storage: closed ledgers written to object storage and read back.
//!
//! This crate owns the object side only — which store ([`store`]: S3, GCS, Azure, a local
//! directory, through object_store, with retrying, metering and fault-injecting wrappers), what
//! a ledger becomes there ([`format`]: a data object and a dense index object), writing and
//! verifying one ([`upload`]) and reading entries back ([`read`]: ranged GETs, parallel
//! prefetch, a byte-weighted block cache). Which ledgers go, when, and how their state is
//! recorded (attempt ids and completion by compare-and-set) is the managed ledger's;
//! [`targets`] keeps the stores policies name besides the cluster's.

pub mod error;
pub mod format;
pub mod read;
pub mod store;
pub mod targets;
pub mod upload;

pub use error::{OffloadError, OffloadResult};
pub use read::{OffloadReader, ReadOptions};
pub use store::retry::RetryPolicy;
pub use store::{Driver, DriverConfig, Location, OffloadStore};
pub use targets::OffloadTargets;
pub use upload::{ObjectNames, UploadOptions, Uploaded, upload_ledger, verify};
