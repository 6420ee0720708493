//! The ledger client: writes ledgers across ensembles of bookies with BookKeeper's contract
//! (design decision 4) and reads, recovers and deletes them.
//!
//! - [`LedgerClient::create_ledger`] places E bookies ([`placement`]), records the ledger's
//!   metadata ([`metadata`], `/ledgers/{id}`, CAS) and returns a [`LedgerWriter`] — one task per
//!   ledger with pipelined appends, completions in entry order, the LAC piggybacked on each add,
//!   and ensemble changes when a bookie fails ([`writer`]).
//! - [`LedgerClient::open_ledger`] returns a [`LedgerReader`] ([`reader`]): quorum-striped reads
//!   with a speculative second read, CRC checks, LAC long polls for tailing an open ledger.
//! - [`LedgerClient::open_ledger_with_recovery`] fences the ledger on its bookies, recovers its
//!   tail by the quorum rules, re-replicates it and closes the ledger ([`recovery`]).
//! - Bookies are found through the registrations under `/bookies/` ([`registry`]) and reached
//!   through a [`BookieConnector`] — gRPC, in-process, or a test fake.

mod error;
pub mod metadata;
mod placement;
mod reader;
mod recovery;
mod registry;
mod replicas;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use magnetar_metadata::{LedgerId, MetadataStore};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, info, info_span, warn};

pub use error::{LedgerError, LedgerResult};
pub use metadata::{EnsembleSegment, LedgerMetadata, LedgerState, ledger_key};
pub use reader::LedgerReader;
pub use registry::BookieConnector;
pub use writer::{AddHandle, LedgerWriter};

use crate::api::{BookieError, BookieResult, NO_ENTRY};
use magnetar_metadata::clock::{Random, SharedClock, Sleep};
use metadata::{LedgerStore, now_ms, validate_quorums};
use placement::choose_bookies;
use registry::Registry;

/// Tuning of the ledger client. Every field has a default ([`Default`]); units are in the names.
#[derive(Clone, Debug)]
pub struct LedgerClientOptions {
    /// A bookie that has not acknowledged an add within this time is treated as failed and
    /// replaced (ensemble change). Default 10 000.
    pub add_timeout_ms: u64,
    /// A read, range read, LAC read or fence a bookie has not answered within this time fails
    /// (the next replica is tried). Default 10 000.
    pub read_timeout_ms: u64,
    /// After this long without an answer from one replica, a read also asks the next replica
    /// (speculative read). Default 50.
    pub speculative_read_timeout_ms: u64,
    /// Appends accepted but not yet completed, per writer; `append` waits beyond that
    /// (backpressure). Default 10 000.
    pub max_pending_adds: usize,
    /// Upper bound of one LAC long poll sent to the bookies (longer requested timeouts are cut
    /// to this). Default 10 000.
    pub read_lac_long_poll_ms: u64,
    /// Entries and bytes asked for in one range read. Defaults 1 000 and 4 MiB.
    pub read_batch_max_entries: u32,
    pub read_batch_max_bytes: u64,
    /// Single-entry reads in flight for a range when entries are striped (Qw < E). Default 16.
    pub read_parallelism: usize,
    /// A bookie that failed a request is tried last by readers for this long. Default 30 000.
    pub bookie_quarantine_ms: u64,
    /// Ensemble changes (or re-replication rounds in recovery) tried before giving up on one
    /// failure episode. Default 8.
    pub ensemble_change_attempts_max: u32,
    /// Time for timeouts, speculative reads and quarantine (injected: tests use a manual clock).
    pub clock: SharedClock,
    /// Randomness of bookie placement (seeded in tests and simulations).
    pub random: Arc<Random>,
}

impl Default for LedgerClientOptions {
    fn default() -> Self {
        LedgerClientOptions {
            add_timeout_ms: 10_000,
            read_timeout_ms: 10_000,
            speculative_read_timeout_ms: 50,
            max_pending_adds: 10_000,
            read_lac_long_poll_ms: 10_000,
            read_batch_max_entries: 1_000,
            read_batch_max_bytes: 4 * 1024 * 1024,
            read_parallelism: 16,
            bookie_quarantine_ms: 30_000,
            ensemble_change_attempts_max: 8,
            clock: magnetar_metadata::clock::system(),
            random: magnetar_metadata::clock::entropy(),
        }
    }
}

impl LedgerClientOptions {
    pub(crate) fn add_timeout(&self) -> Duration {
        Duration::from_millis(self.add_timeout_ms)
    }
    pub(crate) fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }
    pub(crate) fn speculative(&self) -> Duration {
        Duration::from_millis(self.speculative_read_timeout_ms)
    }
}

/// How a new ledger is striped: E bookies, each entry on Qw of them, complete at Qa acks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    pub ensemble_size: u32,
    pub write_quorum: u32,
    pub ack_quorum: u32,
    /// Stored with the ledger's metadata (e.g. the topic it belongs to).
    pub custom: BTreeMap<String, String>,
}

impl LedgerConfig {
    pub fn new(ensemble_size: u32, write_quorum: u32, ack_quorum: u32) -> Self {
        LedgerConfig {
            ensemble_size,
            write_quorum,
            ack_quorum,
            custom: BTreeMap::new(),
        }
    }
}

/// What writers, readers and recovery share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub options: LedgerClientOptions,
    pub ledgers: LedgerStore,
    pub registry: Arc<Registry>,
    _stop: DropGuard,
}

impl Shared {
    /// A bookie call bounded by `limit`; an elapsed limit is the bookie's [`BookieError::Timeout`].
    /// `timer` is the client clock's sleep of `limit`, made when the call is.
    pub async fn call<T>(
        limit: Duration,
        timer: Sleep,
        fut: impl Future<Output = BookieResult<T>>,
    ) -> BookieResult<T> {
        tokio::select! {
            biased;
            r = fut => r,
            () = timer => Err(BookieError::Timeout(limit)),
        }
    }
}

/// The entry point: create, open, recover and delete ledgers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LedgerClient {
    shared: Arc<Shared>,
}

impl LedgerClient {
    /// A client over `metadata`, reaching bookies through `connector`. Starts a background task
    /// (on the current Tokio runtime) that follows the bookie registrations until the last clone
    /// of the client is dropped.
    pub fn new(
        metadata: Arc<dyn MetadataStore>,
        connector: Arc<dyn BookieConnector>,
        options: LedgerClientOptions,
    ) -> Self {
        let stop = CancellationToken::new();
        let registry = Registry::start(
            Arc::clone(&metadata),
            connector,
            Duration::from_millis(options.bookie_quarantine_ms),
            Arc::clone(&options.clock),
            stop.clone(),
        );
        LedgerClient {
            shared: Arc::new(Shared {
                options,
                ledgers: LedgerStore::new(metadata),
                registry,
                _stop: stop.drop_guard(),
            }),
        }
    }

    /// Creates a ledger on E writable bookies and returns its writer.
    pub async fn create_ledger(&self, config: LedgerConfig) -> LedgerResult<LedgerWriter> {
        validate_quorums(config.ensemble_size, config.write_quorum, config.ack_quorum)?;
        let registered = self.shared.registry.registered().await?;
        let bookies = choose_bookies(
            &registered,
            config.ensemble_size as usize,
            &[],
            &Default::default(),
            &self.shared.options.random,
        )?;
        let id = self.shared.ledgers.allocate_id().await?;
        let meta = LedgerMetadata {
            ensemble_size: config.ensemble_size,
            write_quorum: config.write_quorum,
            ack_quorum: config.ack_quorum,
            state: LedgerState::Open,
            last_entry_id: NO_ENTRY,
            length_bytes: 0,
            ensembles: vec![EnsembleSegment {
                first_entry: 0,
                bookies,
            }],
            created_ms: now_ms(),
            custom: config.custom,
        };
        let version = self.shared.ledgers.create(id, &meta).await?;
        info!(ledger = %id, ensemble = ?meta.ensembles[0].bookies,
            e = meta.ensemble_size, qw = meta.write_quorum, qa = meta.ack_quorum, "ledger created");
        Ok(LedgerWriter::start(
            Arc::clone(&self.shared),
            id,
            meta,
            version,
        ))
    }

    /// Opens a ledger for reading without recovery: a closed ledger, or an open one to tail
    /// (reads stop at its LAC).
    pub async fn open_ledger(&self, id: LedgerId) -> LedgerResult<LedgerReader> {
        let (meta, _) = self.shared.ledgers.read(id).await?;
        LedgerReader::open(Arc::clone(&self.shared), id, meta).await
    }

    /// Opens a ledger after making sure it is closed: if it is not, fences it on its bookies
    /// (its writer's next add fails with [`LedgerError::Fenced`]), recovers its last entries,
    /// re-replicates them and closes it.
    pub async fn open_ledger_with_recovery(&self, id: LedgerId) -> LedgerResult<LedgerReader> {
        let meta = recovery::recover(&self.shared, id)
            .instrument(info_span!("ledger_recovery", ledger = %id))
            .await?;
        LedgerReader::open(Arc::clone(&self.shared), id, meta).await
    }

    /// The ledger's metadata as stored now.
    pub async fn ledger_metadata(&self, id: LedgerId) -> LedgerResult<LedgerMetadata> {
        Ok(self.shared.ledgers.read(id).await?.0)
    }

    /// Deletes the ledger from every bookie that ever held it (bookies that are down are
    /// skipped: their copy is garbage they collect later), then its metadata.
    pub async fn delete_ledger(&self, id: LedgerId) -> LedgerResult<()> {
        let span = info_span!("ledger_delete", ledger = %id);
        async {
            for _ in 0..self.shared.options.ensemble_change_attempts_max.max(1) {
                let (meta, version) = self.shared.ledgers.read(id).await?;
                let limit = self.shared.options.read_timeout();
                let calls = meta.all_bookies().into_iter().map(|bookie| {
                    let client = self.shared.registry.client(&bookie);
                    let timer = self.shared.options.clock.sleep(limit);
                    async move {
                        match Shared::call(limit, timer, client.delete_ledger(id)).await {
                            Ok(()) | Err(BookieError::NoSuchLedger(_)) => {}
                            Err(e) => warn!(%bookie, error = %e,
                                "bookie did not delete the ledger; it keeps garbage"),
                        }
                    }
                });
                join_all(calls).await;
                if self.shared.ledgers.delete(id, version).await? {
                    info!("ledger deleted");
                    return Ok(());
                }
            }
            Err(LedgerError::Metadata(Arc::new(
                magnetar_metadata::MetadataError::Contention {
                    key: ledger_key(id),
                    attempts: self.shared.options.ensemble_change_attempts_max,
                },
            )))
        }
        .instrument(span)
        .await
    }
}

/// The client's futures must be `Send`, so brokers can await them inside spawned tasks.
#[cfg(test)]
#[allow(dead_code)]
fn futures_are_send(client: &LedgerClient) {
    fn send<T: Send>(_: &T) {}
    send(&client.create_ledger(LedgerConfig::new(1, 1, 1)));
    send(&client.open_ledger(LedgerId(1)));
    send(&client.open_ledger_with_recovery(LedgerId(1)));
    send(&client.delete_ledger(LedgerId(1)));
}
