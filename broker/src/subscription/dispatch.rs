//! The subscription actor's dispatcher: which consumers may receive (permits, active consumer,
//! Key_Shared hash owners, chunk owners), delayed entries coming due, and reading the next
//! entries — redeliveries first, then new entries from the cursor.

use std::collections::HashSet;
use std::ops::Bound;

use magnetar_proto::pulsar::api::MessageIdData;

use super::*;

impl Actor {
    pub(super) fn eligible(&self) -> Vec<usize> {
        match self.sub_type {
            Some(SubType::Exclusive) | Some(SubType::Failover) => self
                .consumers
                .iter()
                .position(|c| Some(c.spec.key) == self.active && c.permits > 0)
                .into_iter()
                .collect(),
            _ => (0..self.consumers.len())
                .filter(|&i| self.consumers.get(i).is_some_and(|c| c.permits > 0))
                .collect(),
        }
    }

    /// Parks consumer `i` (its connection's queue is full): its permits are set aside until
    /// the connection reports room (`unpark_consumers`).
    fn park(&mut self, i: usize) {
        let wake = Arc::clone(&self.wake);
        let Some(c) = self.consumers.get_mut(i) else {
            return;
        };
        c.parked_permits += std::mem::take(&mut c.permits);
        if c.spec.conn.notify_when_writable(&wake) {
            // Room already (drained before the registration): try again at once.
            wake.notify_one();
        }
    }

    pub(super) fn pick(&mut self) -> Option<usize> {
        let eligible = self.eligible();
        if eligible.is_empty() {
            return None;
        }
        let i = eligible.get(self.next_rr % eligible.len()).copied();
        self.next_rr = self.next_rr.wrapping_add(1);
        i
    }

    pub(super) fn key_shared(&self) -> bool {
        self.sub_type == Some(SubType::KeyShared)
    }

    /// Key_Shared: the consumer (index) to send an entry of sticky hash `hash` to now — its
    /// owner, if it has permits and the hash is not draining at another consumer.
    pub(super) fn key_target(&mut self, hash: u32) -> Option<usize> {
        let owner = self.key_shared.owner(hash)?;
        let i = self.consumers.iter().position(|c| c.spec.key == owner)?;
        let has_permits = self.consumers.get(i).is_some_and(|c| c.permits > 0);
        if !has_permits || self.key_shared.blocked(hash, owner, &self.pending) {
            return None;
        }
        Some(i)
    }

    pub(super) fn shared(&self) -> bool {
        self.sub_type == Some(SubType::Shared)
    }

    /// Shared: the consumer (index) for a chunk of a chunked message (`chunks.rs`) — the one
    /// that got the message's chunk 0; a chunk whose consumer has no permits waits in
    /// `redeliver` (counted in `parked`) without holding back other messages.
    pub(super) fn chunk_target(
        &mut self,
        position: Position,
        chunk: &ChunkMeta,
        parked: &mut usize,
    ) -> Option<usize> {
        let Route::Owner(owner) = self.chunks.route(chunk, position) else {
            return self.pick();
        };
        let Some(i) = self.consumers.iter().position(|c| c.spec.key == owner) else {
            // Not reached (removal drops the owner's mappings); route as an unmapped chunk.
            self.chunks.remove_consumer(owner);
            return self.pick();
        };
        if self.consumers.get(i).is_some_and(|c| c.permits > 0) {
            return Some(i);
        }
        self.chunks.park(position, chunk, &self.redeliver);
        *parked += 1;
        None
    }

    /// Shared: true while the parked chunk at `p` waits for its consumer's permits.
    pub(super) fn chunk_waits(&self, p: Position) -> bool {
        self.chunks.parked_owner(p).is_some_and(|owner| {
            self.consumers
                .iter()
                .any(|c| c.spec.key == owner && c.permits <= 0)
        })
    }

    /// Shared and Key_Shared hold delayed messages back; Exclusive and Failover do not.
    pub(super) fn delays_delivery(&self) -> bool {
        matches!(self.sub_type, Some(SubType::Shared | SubType::KeyShared))
    }

    /// Delayed entries whose time came go to `redeliver` (dispatched oldest first).
    pub(super) fn release_due_delayed(&mut self) {
        if self.delayed.is_empty() {
            return;
        }
        for p in self.delayed.take_due(self.clock.now_ms()) {
            self.redeliver.insert(p);
        }
    }

    pub(super) async fn dispatch(&mut self) {
        if self.stop.is_cancelled() {
            return;
        }
        self.release_due_delayed();
        let mut scan = RedeliverScan::default();
        loop {
            let permits: i64 = self
                .eligible()
                .iter()
                .filter_map(|&i| self.consumers.get(i))
                .map(|c| c.permits)
                .sum();
            if permits <= 0 {
                return;
            }
            let want = (permits as usize).min(self.batch_entries);
            let entries = match self.next_entries(want, &mut scan).await {
                Ok(e) => {
                    self.read_failures = 0;
                    self.read_retry_at = None;
                    e
                }
                Err(e) => {
                    // Retried from the actor's loop after a growing backoff, so the consumer
                    // resumes as soon as the data is readable again (a replica back up).
                    self.read_failures = self.read_failures.saturating_add(1);
                    let ms = READ_RETRY_MIN_MS
                        .saturating_mul(1 << (self.read_failures - 1).min(10))
                        .min(READ_RETRY_MAX_MS);
                    self.read_retry_at =
                        Some(self.clock.now() + std::time::Duration::from_millis(ms));
                    warn!(error = %e, failures = self.read_failures, retry_in_ms = ms,
                        "dispatch read failed; will retry");
                    return;
                }
            };
            if entries.is_empty() {
                return;
            }
            let mut sent = 0usize;
            let mut delayed = 0usize;
            let mut parked = 0usize;
            let now = self.clock.now_ms();
            for (position, entry) in entries {
                let info = entry_info(&entry);
                if self.delays_delivery()
                    && let Some(at) = info.deliver_at_ms
                    && self.delayed.add(position, at, now)
                {
                    delayed += 1;
                    continue;
                }
                let hash = sticky_hash(info.key_hash);
                let target = if self.key_shared() {
                    match self.key_target(hash) {
                        Some(i) => Some(i),
                        None => {
                            // Waits in `redeliver`, skipped by the next read like a parked
                            // chunk, so reading on reaches the keys of consumers with permits.
                            self.key_hashes.insert(position, hash);
                            parked += 1;
                            None
                        }
                    }
                } else if let Some(chunk) = info.chunk.filter(|_| self.shared()) {
                    self.chunk_target(position, &chunk, &mut parked)
                } else {
                    self.pick()
                };
                let Some(i) = target else {
                    self.redeliver.insert(position);
                    continue;
                };
                let redelivery_count = self.redelivery_counts.get(&position).copied().unwrap_or(0);
                let Some(c) = self.consumers.get(i) else {
                    self.redeliver.insert(position);
                    continue;
                };
                // A partially acknowledged batch carries its unacked indexes; permits count
                // only those (the client skips the rest), as Pulsar's dispatcher does.
                let unacked = self.cursor.batch_ack_set(position);
                let messages = batch_acks::messages_to_deliver(unacked.as_deref(), info.messages);
                let entry_bytes = entry.len() as u64;
                let frame = MessageFrame {
                    command: commands::message(
                        c.spec.consumer_id,
                        MessageIdData {
                            // Clients take a message's partition from here (Pulsar's broker
                            // sets its topic's partition index; -1 when not partitioned).
                            partition: self.partition.and_then(|p| i32::try_from(p).ok()),
                            ..commands::message_id(position.ledger.0, position.entry.0)
                        },
                        redelivery_count,
                        unacked
                            .as_deref()
                            .map(batch_acks::to_wire)
                            .unwrap_or_default(),
                    ),
                    entry,
                };
                let key = c.spec.key;
                match c.spec.conn.try_deliver(frame) {
                    Ok(()) => {}
                    Err(NotQueued::Full) => {
                        // This client is not reading: park it until its queue drains and
                        // give the entry to whoever can take it (redeliveries go first, so
                        // order holds).
                        self.redeliver.insert(position);
                        self.park(i);
                        scan = RedeliverScan::default();
                        continue;
                    }
                    Err(NotQueued::Closed) => {
                        // The connection is gone; it removes the consumer shortly.
                        self.redeliver.insert(position);
                        if let Some(c) = self.consumers.get_mut(i) {
                            c.permits = 0;
                        }
                        // Another consumer may take it this very call: scan from the start.
                        scan = RedeliverScan::default();
                        continue;
                    }
                }
                sent += 1;
                if let Some(c) = self.consumers.get_mut(i) {
                    c.permits -= i64::from(messages);
                    c.msg_out += u64::from(messages);
                    c.bytes_out += entry_bytes;
                }
                self.msg_out += u64::from(messages);
                self.bytes_out += entry_bytes;
                self.pending.insert(position, key);
                if self.key_shared() {
                    self.key_shared.delivered(position, hash, &self.pending);
                }
                if let Some(chunk) = info.chunk.filter(|_| self.shared()) {
                    let cursor = &self.cursor;
                    self.chunks
                        .delivered(&chunk, position, key, |p| cursor.is_acked(p));
                }
            }
            // Parked chunks and Key_Shared entries waiting for their consumer are skipped by
            // the next read, so reading on makes progress (bounded by `REPLAY_MAX`).
            if sent == 0 && delayed == 0 && parked == 0 {
                return;
            }
        }
    }

    /// Up to `want` entries: redeliveries first, then new entries.
    ///
    /// The redelivery set is walked from where the previous round of this dispatch call
    /// stopped (`scan`), so a large set costs each round only the entries it looks at, not a
    /// copy of the whole set.
    pub(super) async fn next_entries(
        &mut self,
        want: usize,
        scan: &mut RedeliverScan,
    ) -> magnetar_managed_ledger::MlResult<Vec<(Position, Bytes)>> {
        let mut out = Vec::new();
        // Redeliveries are read one by one; like a read from the cursor, a round holds at
        // most `READ_BYTES_MAX` of them (large entries would otherwise make it hundreds of MB).
        let mut out_bytes = 0u64;
        while out.len() < want && out_bytes < READ_BYTES_MAX {
            let next = match scan.after {
                None => self.redeliver.first(),
                Some(after) => self
                    .redeliver
                    .range((Bound::Excluded(after), Bound::Unbounded))
                    .next(),
            };
            let Some(&p) = next else { break };
            scan.after = Some(p);
            if let Some(&hash) = self.key_hashes.get(&p)
                && scan.waiting_hashes.contains(&hash)
            {
                // Key_Shared: a hash already found waiting this call (left for later).
                continue;
            }
            if !self.cursor.is_acked(p) && !self.pending.contains_key(&p) {
                // Key_Shared: leave entries whose consumer has no permits where they are.
                if let Some(&hash) = self.key_hashes.get(&p)
                    && self.key_target(hash).is_none()
                {
                    scan.waiting_hashes.insert(hash);
                    continue;
                }
                // Shared: a chunk waiting for its message's consumer to get permits.
                if self.chunk_waits(p) {
                    continue;
                }
            }
            self.redeliver.remove(&p);
            self.key_hashes.remove(&p);
            self.chunks.unpark(p);
            if self.cursor.is_acked(p) || self.pending.contains_key(&p) {
                self.redelivery_counts.remove(&p);
                continue;
            }
            let mut got = match self.ml.read_entries(p, 1, READ_BYTES_MAX).await {
                Ok(got) => got,
                Err(e) => {
                    // Still to be delivered: back into the set for the retry.
                    self.redeliver.insert(p);
                    for (q, _) in &out {
                        self.redeliver.insert(*q);
                    }
                    return Err(e);
                }
            };
            match got.pop() {
                Some((q, entry)) if q == p => {
                    out_bytes += entry.len() as u64;
                    out.push((q, entry));
                }
                _ => {
                    self.redelivery_counts.remove(&p);
                    debug!(position = %p, "redelivery of an entry no longer stored skipped");
                }
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        if !self.cursor.has_entries_available()
            || self.redeliver.len() >= REPLAY_MAX
            || self.delayed.is_full()
        {
            return Ok(out);
        }
        let batch = self.cursor.read_entries(want, READ_BYTES_MAX).await?;
        Ok(batch
            .into_iter()
            .filter(|(p, _)| !self.pending.contains_key(p))
            .collect())
    }
}

/// Where one dispatch call's walk of the redelivery set stands. Within a call an entry found
/// waiting stays waiting — permits only go down, pending entries only get added, so no draining
/// hash drains and no parked chunk's owner gets permits — and entries put back by the call wait
/// too (no consumer had permits, or their hash or chunk waits); so each round resumes after the
/// last position looked at. A send failure, which frees an entry for another consumer, resets
/// the walk.
#[derive(Default)]
pub(super) struct RedeliverScan {
    after: Option<Position>,
    /// Key_Shared: sticky hashes found waiting this call.
    waiting_hashes: HashSet<u32>,
}
