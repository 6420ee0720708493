//! The object stores one broker offloads to and reads from: the cluster's (its `[offload]`
//! configuration) and those namespace and topic offload policies name. Each is built once, on
//! first use, and shares the broker's read caches, so one cache bound holds for them all.
//!
//! A ledger's record keeps the [`Location`] its objects went to; reads and deletions find the
//! store again from it, with the credentials of the configuration that named it (or, after a
//! restart before any policy named it again, the broker's own).

use std::sync::{Arc, Mutex};

use magnetar_metadata::clock::Clock;

use crate::error::{OffloadError, OffloadResult};
use crate::read::OffloadReader;
use crate::store::retry::RetryPolicy;
use crate::store::{DriverConfig, Location, OffloadStore};

/// Stores other than the cluster's one broker keeps; policies naming more are refused.
pub const TARGETS_MAX: usize = 64;

#[derive(Debug)]
pub struct OffloadTargets {
    /// The broker's configuration: the default place and the credentials for others.
    base: DriverConfig,
    default: OffloadReader,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
    others: Mutex<Vec<OffloadReader>>,
}

impl OffloadTargets {
    /// `default` reads the store `base` configures.
    pub fn new(
        base: DriverConfig,
        default: OffloadReader,
        retry: RetryPolicy,
        clock: Arc<dyn Clock>,
    ) -> OffloadTargets {
        OffloadTargets {
            base,
            default,
            retry,
            clock,
            others: Mutex::new(Vec::new()),
        }
    }

    /// The broker's configuration of the cluster's store.
    pub fn base(&self) -> &DriverConfig {
        &self.base
    }

    /// The cluster's store.
    pub fn default_reader(&self) -> &OffloadReader {
        &self.default
    }

    fn others(&self) -> std::sync::MutexGuard<'_, Vec<OffloadReader>> {
        self.others.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store `cfg` (a namespace's or topic's offload policy) configures; `None`: the
    /// cluster's.
    pub fn for_config(&self, cfg: Option<&DriverConfig>) -> OffloadResult<OffloadReader> {
        match cfg {
            None => Ok(self.default.clone()),
            Some(cfg) => self.get_or_build(&cfg.location(), || cfg.clone()),
        }
    }

    /// The store holding objects written to `at`.
    pub fn for_location(&self, at: &Location) -> OffloadResult<OffloadReader> {
        self.get_or_build(at, || self.base.at(at))
    }

    fn get_or_build(
        &self,
        at: &Location,
        cfg: impl FnOnce() -> DriverConfig,
    ) -> OffloadResult<OffloadReader> {
        if self.default.store().location() == at {
            return Ok(self.default.clone());
        }
        if let Some(r) = self.others().iter().find(|r| r.store().location() == at) {
            return Ok(r.clone());
        }
        // Built outside the lock: a filesystem driver creates its directory.
        let store = OffloadStore::build(&cfg(), self.retry.clone(), Arc::clone(&self.clock))?;
        let mut others = self.others();
        if let Some(r) = others.iter().find(|r| r.store().location() == at) {
            return Ok(r.clone());
        }
        if others.len() >= TARGETS_MAX {
            return Err(OffloadError::Config(format!(
                "offload policies name more than {TARGETS_MAX} object stores; {} ({}) is \
                 refused",
                at.driver.name(),
                at.bucket
            )));
        }
        let id = u32::try_from(others.len() + 1).unwrap_or(u32::MAX);
        let reader = self.default.for_store(store, id);
        others.push(reader.clone());
        Ok(reader)
    }

    /// Every store in use: the cluster's first.
    pub fn all(&self) -> Vec<OffloadReader> {
        let mut all = vec![self.default.clone()];
        all.extend(self.others().iter().cloned());
        all
    }
}
