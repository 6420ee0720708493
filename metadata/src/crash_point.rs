//! Crash points: named places in multi-step state changes (a bookie's checkpoint, a managed
//! ledger's rollover, a cursor ledger's rollover, a ledger-list change) where a test can make
//! the process die exactly as `kill -9` would — no destructor, no flush, no fsync — to prove
//! that a restart recovers to a consistent state from every intermediate step.
//!
//! A process arms at most one point, from the environment at its first check:
//! `MAGNETAR_CRASH_AT=<name>` dies the first time `<name>` is reached,
//! `MAGNETAR_CRASH_AT=<name>:<n>` the n-th time. Unset (production), a point costs one
//! relaxed load of an initialised `OnceLock`. The names are the constants below, so a test
//! and the code agree on them.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash point.
pub const ENV: &str = "MAGNETAR_CRASH_AT";

/// Bookie checkpoint: entry logs synced, the index not yet committed.
pub const CHECKPOINT_LOGS_SYNCED: &str = "checkpoint.logs_synced";
/// Bookie checkpoint: index committed, journal files not yet retired.
pub const CHECKPOINT_INDEX_COMMITTED: &str = "checkpoint.index_committed";
/// Managed-ledger rollover: the next ledger created, the list not yet recording it.
pub const ROLLOVER_LEDGER_CREATED: &str = "rollover.ledger_created";
/// Ledger-list change: chunks written, the head (the commit point) not yet.
pub const LEDGER_LIST_CHUNKS_WRITTEN: &str = "ledger_list.chunks_written";
/// Ledger-list change: the head written, chunks it no longer refers to not yet deleted.
pub const LEDGER_LIST_HEAD_WRITTEN: &str = "ledger_list.head_written";
/// Cursor-ledger rollover: the new cursor ledger holds the snapshot, the record not yet
/// pointing at it.
pub const CURSOR_LEDGER_CREATED: &str = "cursor_ledger.created";
/// Cursor-ledger rollover: the record points at the new ledger, the old one not yet deleted.
pub const CURSOR_LEDGER_RECORDED: &str = "cursor_ledger.recorded";

/// Offload, mid-upload: the data object written, its index not yet.
pub const OFFLOAD_DATA_WRITTEN: &str = "offload.data_written";
/// Offload: both objects uploaded and verified, the ledger not yet marked offloaded.
pub const OFFLOAD_UPLOADED: &str = "offload.uploaded";

/// Every point, for tests that go through them all.
pub const ALL: [&str; 9] = [
    CHECKPOINT_LOGS_SYNCED,
    CHECKPOINT_INDEX_COMMITTED,
    ROLLOVER_LEDGER_CREATED,
    LEDGER_LIST_CHUNKS_WRITTEN,
    LEDGER_LIST_HEAD_WRITTEN,
    CURSOR_LEDGER_CREATED,
    CURSOR_LEDGER_RECORDED,
    OFFLOAD_DATA_WRITTEN,
    OFFLOAD_UPLOADED,
];

struct Armed {
    name: String,
    /// Dies when this many hits have been counted.
    at_hit: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let (name, at_hit) = match spec.rsplit_once(':') {
                Some((name, n)) => (name, n.parse().ok().filter(|n| *n >= 1)?),
                None => (spec.as_str(), 1),
            };
            if !ALL.contains(&name) {
                eprintln!(
                    "{ENV}={spec}: no such crash point (known: {})",
                    ALL.join(", ")
                );
                return None;
            }
            Some(Armed {
                name: name.to_owned(),
                at_hit,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Reached `name`: dies here if the environment armed it (and this is its n-th hit).
pub fn reached(name: &'static str) {
    let Some(armed) = armed() else { return };
    if armed.name != name || armed.hits.fetch_add(1, Ordering::AcqRel) + 1 != armed.at_hit {
        return;
    }
    eprintln!(
        "{ENV}: crash point {name} reached (hit {}): killing this process",
        armed.at_hit
    );
    // SIGKILL to ourselves: what `kill -9` does, at exactly this point.
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort();
}
