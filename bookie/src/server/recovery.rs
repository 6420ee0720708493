//! Opening the storage: load the ledger states and per-log live bytes from the persistent index
//! (never its entries: start-up time does not grow with stored data), replay the journal after
//! the checkpoint into a fresh entry log, start a new journal file, and checkpoint so the
//! replayed journal can be retired. Replay is idempotent: a record the index already has is
//! indexed again at its new copy and the old copy counted dead.

use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::watch;

use super::disk::DiskStatus;
use super::entrylog::{self, Appender};
use super::index::{self, Index};
use super::journal::{self, JournalFile, JournalPos, Record};
use super::ledgers::{LedgerState, LogMeta, Store};
use super::{BookieOptions, JournalCounters, Shared, writer};
use crate::api::BookieState;

/// Replay applies journal records to the entry log this many at a time.
const REPLAY_CHUNK_RECORDS: usize = 4096;

/// Refusing to start on a journal damaged in the middle: acknowledged records after the damage
/// are replayed, but the ones in it are gone, and a bookie that silently lacks acknowledged
/// entries can make ledger recovery cut a ledger short.
fn damage_error(path: &std::path::Path, damage: journal::Damage, good: usize) -> String {
    format!(
        "journal {} is damaged in the middle: the record at byte {} is invalid but valid, \
         synced records follow from byte {} (not a torn tail; {good} records before it are \
         intact). Entries journaled there are lost on this bookie. Refusing to start: check \
         the disk; then either wipe this bookie's data so it is re-replicated from the other \
         replicas, or set bookie.journal_skip_damaged_records = true to replay around the \
         damage",
        path.display(),
        damage.offset,
        damage.next_valid
    )
}

/// Builds the state from the files: loads the index, replays the journal after the checkpoint
/// into the entry log, checkpoints, and starts a new journal file. Blocking.
pub(crate) fn recover(opts: BookieOptions) -> Result<(Arc<Shared>, JournalFile), String> {
    let journal_dir = opts.data_dir.join("journal");
    let ledgers_dir = opts.data_dir.join("ledgers");
    for dir in [&journal_dir, &ledgers_dir] {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    journal::sync_dir(&opts.data_dir).map_err(|e| format!("fsync of data dir: {e}"))?;
    let index_path = ledgers_dir.join("index.redb");
    // The index store panics on some corrupt pages instead of returning an error: the bookie
    // refuses to start with a message naming the file, rather than a bare "task panicked".
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let index = Index::open(&index_path, opts.index_cache_size_bytes)?;
        let loaded = index.load()?;
        Ok::<_, String>((index, loaded))
    }));
    let (index, loaded) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return Err(format!("entry index {}: {e}", index_path.display())),
        Err(panic) => {
            let why = index::panic_message(panic.as_ref());
            return Err(format!(
                "entry index {} is corrupt ({why}): the bookie does not start on it; restore \
                 the file, or retire this bookie (with Qw > 1 its entries have copies on others)",
                index_path.display()
            ));
        }
    };

    let mut store = Store::default();
    let mut max_log: Option<u32> = None;
    let listing = std::fs::read_dir(&ledgers_dir).map_err(|e| format!("listing ledgers: {e}"))?;
    for item in listing {
        let item = item.map_err(|e| format!("listing ledgers: {e}"))?;
        let Some(id) = item.file_name().to_str().and_then(entrylog::parse_log_name) else {
            continue;
        };
        let path = item.path();
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("opening entry log {}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("entry log size: {e}"))?
            .len();
        max_log = Some(max_log.map_or(id, |m| m.max(id)));
        let meta = LogMeta {
            file: Arc::new(file),
            path,
            total_bytes: len,
            live_bytes: 0,
            unsynced: false,
        };
        store.logs.insert(id, meta);
    }
    for (log, live) in &loaded.live {
        match store.logs.get_mut(log) {
            Some(meta) => meta.live_bytes = *live,
            None if *live > 0 => {
                tracing::error!(
                    log,
                    live_bytes = live,
                    "index points at a missing entry log"
                )
            }
            None => {}
        }
    }
    for (ledger, p) in loaded.ledgers {
        store
            .ledgers
            .insert(ledger, LedgerState::new(p.fenced, p.lac, p.last_entry));
    }
    store.applied = loaded.checkpoint;
    // Always a fresh current log: the previous one may end in a torn, unindexed tail.
    let app = Appender::create(&ledgers_dir, max_log.map_or(0, |m| m.wrapping_add(1)))
        .map_err(|e| format!("creating entry log: {e}"))?;
    store.logs.insert(
        app.id,
        LogMeta {
            file: app.file.clone(),
            path: app.path.clone(),
            total_bytes: 0,
            live_bytes: 0,
            unsynced: true,
        },
    );
    let (state, _) = watch::channel(BookieState::ReadWrite);
    let shared = Arc::new(Shared {
        journal_dir: journal_dir.clone(),
        ledgers_dir,
        store: RwLock::new(store),
        appender: Mutex::new(app),
        index: Mutex::new(Some(Arc::new(index))),
        checkpoint_pos: Mutex::new(loaded.checkpoint),
        disk: Mutex::new(DiskStatus::default()),
        state,
        opts,
        stats: JournalCounters::default(),
        clock: magnetar_metadata::clock::system(),
        metrics: crate::metrics::BookieMetrics::new(magnetar_metadata::clock::system().now()),
        entries_indexed: std::sync::atomic::AtomicU64::new(0),
        #[cfg(test)]
        inject_write_failure: std::sync::atomic::AtomicBool::new(false),
        #[cfg(test)]
        inject_journal_sync_failure: std::sync::atomic::AtomicBool::new(false),
        #[cfg(test)]
        inject_log_sync_failure: std::sync::atomic::AtomicBool::new(false),
    });

    let cp = loaded.checkpoint;
    let mut max_generation = cp.generation;
    let mut replayed = 0usize;
    let mut skipped_damage = 0usize;
    // How far past a torn record the last batch (written, never synced) could reach.
    let reach = shared.opts.journal_batch_bytes_max
        + journal::add_record_bytes(shared.opts.entry_size_bytes_max);
    let mut ebuf = Vec::new();
    for (generation, path) in journal::list(&journal_dir).map_err(|e| format!("journal: {e}"))? {
        max_generation = max_generation.max(generation);
        if generation < cp.generation {
            // Left over from a trim cut short; already checkpointed.
            continue;
        }
        let data = Bytes::from(
            std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?,
        );
        let start = if generation == cp.generation {
            cp.offset as usize
        } else {
            0
        };
        let mut from = start.min(data.len());
        loop {
            let parsed = journal::parse(&data, generation, from, reach);
            if let Some(damage) = parsed.damage
                && !shared.opts.journal_skip_damaged_records
            {
                return Err(damage_error(&path, damage, parsed.records.len()));
            }
            for chunk in parsed.records.chunks(REPLAY_CHUNK_RECORDS) {
                let batch: Vec<Record> = chunk.iter().map(|(r, _)| r.clone()).collect();
                let offset = chunk.last().map_or(0, |(_, end)| *end);
                let pos = JournalPos { generation, offset };
                writer::apply(&shared, &batch, pos, &mut ebuf)
                    .map_err(|e| format!("replay into entry log: {e}"))?;
            }
            replayed += parsed.records.len();
            let Some(damage) = parsed.damage else { break };
            tracing::error!(
                journal = %path.display(),
                damaged_at = damage.offset,
                skipped_bytes = damage.next_valid - damage.offset,
                "journal damaged in the middle: records there are lost on this replica; \
                 replaying on past them (bookie.journal_skip_damaged_records)"
            );
            skipped_damage += 1;
            from = damage.next_valid as usize;
        }
    }
    let jf = JournalFile::create(
        &journal_dir,
        max_generation.wrapping_add(1),
        shared.opts.journal_file_size_bytes,
    )
    .map_err(|e| format!("creating journal file: {e}"))?;
    shared.write_store().applied = jf.pos();
    // Makes the replayed records durable outside the journal, then trims it.
    index::checkpoint(&shared)?;
    tracing::info!(
        replayed,
        skipped_damage,
        generation = jf.generation,
        "bookie storage recovered"
    );
    Ok((shared, jf))
}
