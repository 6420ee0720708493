//! Where a ledger's entries are read from: the per-ledger read seam of the managed ledger.
//!
//! The read path ([`crate::read`]) never talks to bookies directly. For each ledger it asks a
//! [`LedgerSources`] for a [`LedgerSource`], chosen by where the ledger lives
//! ([`LedgerLocation`] in the managed ledger's record): the bookies today, object storage once
//! tiered storage records offloaded ledgers. A new location is a new `LedgerSources`
//! implementation that matches on the location; cursors, dispatchers and topic code stay as
//! they are.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use magnetar_bookie::client::{LedgerClient, LedgerError, LedgerReader};
use magnetar_metadata::LedgerId;
use tracing::{debug, warn};

use crate::Position;
use crate::error::{ManagedLedgerError, MlResult};
use crate::record::{LedgerInfo, LedgerLocation};
use magnetar_offload::{ObjectNames, OffloadReader, OffloadTargets};

/// Reads the entries of one ledger.
#[async_trait]
pub trait LedgerSource: Send + Sync + Debug {
    /// Entries `first..=last`, in order. Entries past what the source can serve are an error
    /// (`EntryOutOfRange` from the bookies), never silently missing.
    async fn read_range(&self, first: u64, last: u64) -> MlResult<Vec<(Position, Bytes)>>;

    /// The last entry the source can serve now (`-1` for none): the LAC of an open ledger,
    /// the last entry of a closed one.
    async fn last_readable(&self) -> MlResult<i64>;
}

/// Opens the [`LedgerSource`] of a ledger from its record.
#[async_trait]
pub trait LedgerSources: Send + Sync + Debug {
    /// The source of `ledger` of managed ledger `managed_ledger`.
    async fn open(
        &self,
        managed_ledger: &str,
        ledger: &LedgerInfo,
    ) -> MlResult<Arc<dyn LedgerSource>>;
}

/// Ledgers on the bookies, read through the ledger client; with tiered storage, offloaded
/// ledgers from the object store (a complete offload is read from there even while the
/// bookies still hold a copy, so that copy can be deleted at any moment under a reader).
#[derive(Debug, Clone)]
pub struct BookieSources {
    client: LedgerClient,
    offload: Option<Arc<OffloadTargets>>,
}

impl BookieSources {
    pub fn new(client: LedgerClient) -> Arc<Self> {
        Arc::new(BookieSources {
            client,
            offload: None,
        })
    }

    pub fn with_offload(client: LedgerClient, offload: Arc<OffloadTargets>) -> Arc<Self> {
        Arc::new(BookieSources {
            client,
            offload: Some(offload),
        })
    }
}

#[async_trait]
impl LedgerSources for BookieSources {
    async fn open(
        &self,
        managed_ledger: &str,
        ledger: &LedgerInfo,
    ) -> MlResult<Arc<dyn LedgerSource>> {
        if let Some(state) = ledger.offloaded() {
            let store = self.offload.as_ref().and_then(|targets| {
                let at = state.location(targets.default_reader().store().location());
                match at.and_then(|at| targets.for_location(&at)) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        warn!(ledger = %ledger.ledger_id, error = %e,
                            "cannot open the store an offloaded ledger is in");
                        None
                    }
                }
            });
            match (store, &ledger.location) {
                (Some(reader), _) => {
                    let names = ObjectNames::new(
                        reader.store().prefix(),
                        managed_ledger,
                        ledger.ledger_id,
                        &state.uid,
                    );
                    return Ok(Arc::new(OffloadedSource {
                        reader: reader.clone(),
                        names,
                        ledger: ledger.ledger_id,
                        entries: ledger.entries,
                    }));
                }
                (None, LedgerLocation::Offloaded) => {
                    return Err(ManagedLedgerError::InvalidState(format!(
                        "ledger {} of {managed_ledger} is offloaded to {}, which this \
                         broker cannot open",
                        ledger.ledger_id,
                        state.describe()
                    )));
                }
                // Not this broker's store, but the bookies still have it.
                (None, LedgerLocation::Bookies) => {}
            }
        }
        let reader = open_reader(&self.client, ledger.ledger_id).await?;
        Ok(Arc::new(BookieSource {
            client: self.client.clone(),
            ledger: ledger.ledger_id,
            reader: Mutex::new(Arc::new(reader)),
        }))
    }
}

/// One offloaded ledger, read from its objects.
#[derive(Debug)]
struct OffloadedSource {
    reader: OffloadReader,
    names: ObjectNames,
    ledger: LedgerId,
    entries: u64,
}

#[async_trait]
impl LedgerSource for OffloadedSource {
    async fn read_range(&self, first: u64, last: u64) -> MlResult<Vec<(Position, Bytes)>> {
        let got = self
            .reader
            .read(self.ledger, &self.names, first, last)
            .await?;
        Ok(got
            .into_iter()
            .map(|(entry, payload)| {
                (
                    Position {
                        ledger: self.ledger,
                        entry: magnetar_metadata::EntryId(entry),
                    },
                    payload,
                )
            })
            .collect())
    }

    async fn last_readable(&self) -> MlResult<i64> {
        Ok(self.entries as i64 - 1)
    }
}

/// One ledger on the bookies.
#[derive(Debug)]
struct BookieSource {
    client: LedgerClient,
    ledger: LedgerId,
    reader: Mutex<Arc<LedgerReader>>,
}

impl BookieSource {
    fn reader(&self) -> Arc<LedgerReader> {
        Arc::clone(&self.reader.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait]
impl LedgerSource for BookieSource {
    async fn read_range(&self, first: u64, last: u64) -> MlResult<Vec<(Position, Bytes)>> {
        let entries = match self.reader().read_range(first, last).await {
            Err(LedgerError::EntryOutOfRange { .. }) => {
                // A reader opened while the ledger was open does not learn that it was
                // closed later: open it again and retry once.
                debug!(ledger = %self.ledger, "reader out of date: reopening");
                let fresh = Arc::new(open_reader(&self.client, self.ledger).await?);
                *self.reader.lock().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&fresh);
                fresh.read_range(first, last).await?
            }
            other => other?,
        };
        Ok(entries
            .into_iter()
            .map(|e| {
                (
                    Position {
                        ledger: e.ledger,
                        entry: e.entry,
                    },
                    e.payload,
                )
            })
            .collect())
    }

    async fn last_readable(&self) -> MlResult<i64> {
        self.reader()
            .read_last_add_confirmed()
            .await
            .map_err(ManagedLedgerError::from)
    }
}

// Boxed so the future's `Send` is checked at a concrete lifetime (as in `factory.rs`).
async fn open_reader(client: &LedgerClient, ledger: LedgerId) -> MlResult<LedgerReader> {
    let client = client.clone();
    let opening: futures::future::BoxFuture<'static, Result<LedgerReader, LedgerError>> =
        Box::pin(async move { client.open_ledger(ledger).await });
    Ok(opening.await?)
}
