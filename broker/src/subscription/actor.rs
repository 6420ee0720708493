//! The subscription actor's command handling: consumers joining and leaving, the active
//! consumer of Exclusive / Failover subscriptions, acks, redeliveries, seek and unsubscribe.

use super::*;

impl Actor {
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut lac: watch::Receiver<Option<Position>>,
    ) {
        let mut lac_open = true;
        let stop = self.stop.clone();
        let writable = Arc::clone(&self.wake);
        loop {
            // The earliest delayed entry wakes the actor (the tracker holds future times only).
            let clock = Arc::clone(&self.clock);
            let wake = self.delayed.next_deadline_ms().map(|at| {
                clock.now() + std::time::Duration::from_millis(at.saturating_sub(clock.now_ms()))
            });
            let read_retry_at = self.read_retry_at;
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    self.close_consumers().await;
                    break;
                }
                () = writable.notified() => self.unpark_consumers(),
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Flow::Stop = self.handle(cmd).await {
                        break;
                    }
                }
                changed = lac.changed(), if lac_open => {
                    if changed.is_err() {
                        lac_open = false;
                    }
                }
                // Timers are made only when polled (async blocks), not on every loop.
                () = async { clock.sleep_until(wake.unwrap_or_else(|| clock.now())).await },
                    if wake.is_some() => {}
                () = async { clock.sleep_until(read_retry_at.unwrap_or_else(|| clock.now())).await },
                    if read_retry_at.is_some() => {
                    self.read_retry_at = None;
                }
            }
            self.dispatch().await;
        }
        debug!("subscription actor stopped");
    }

    /// Tells every consumer to reconnect (CLOSE_CONSUMER) and forgets it.
    async fn close_consumers(&mut self) {
        for c in std::mem::take(&mut self.consumers) {
            c.spec
                .conn
                .send_control(commands::close_consumer(c.spec.consumer_id, 0));
        }
    }

    /// Gives parked consumers whose connection has room their permits back (some connection
    /// reported room, not necessarily theirs); the others stay parked, registered again for
    /// their own connection's wake-up, so no entry is read for a client that cannot take it.
    fn unpark_consumers(&mut self) {
        for c in &mut self.consumers {
            if c.parked_permits != 0 && c.spec.conn.notify_when_writable(&self.wake) {
                c.permits += std::mem::take(&mut c.parked_permits);
            }
        }
    }

    pub(super) fn consumer(&mut self, key: u64) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|c| c.spec.key == key)
    }

    pub(super) async fn handle(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Add { consumer, done } => {
                let result = self.add(consumer).await;
                let _ = done.send(result);
            }
            Command::Remove { key, done } => {
                self.remove(key).await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Command::Flow { key, permits } => {
                if let Some(c) = self.consumer(key) {
                    c.permits = c.permits.saturating_add(i64::from(permits));
                }
            }
            Command::Ack {
                cumulative,
                ids,
                done,
            } => {
                let result = self.ack(cumulative, ids);
                if let Err(e) = &result {
                    warn!(error = %e, "acknowledgement refused");
                }
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            Command::Redeliver { key, positions } => self.redeliver_for(key, positions),
            Command::Seek { target, done } => {
                let result = self.seek(target).await;
                let _ = done.send(result);
            }
            Command::Unsubscribe { key, done } => {
                if self.consumers.iter().any(|c| c.spec.key != key) {
                    let _ = done.send(Err(BrokerError::NotAllowed(format!(
                        "subscription {} has other connected consumers",
                        self.name
                    ))));
                    return Flow::Continue;
                }
                let result = if self.cursor.is_durable() {
                    self.ml
                        .delete_cursor(self.cursor.name())
                        .await
                        .map_err(BrokerError::from)
                } else {
                    Ok(())
                };
                let ok = result.is_ok();
                let _ = done.send(result);
                if ok {
                    info!("unsubscribed");
                    return Flow::Stop;
                }
            }
            Command::MarkDelete { done } => {
                let _ = done.send(self.cursor.mark_delete_position());
            }
            Command::Snapshot { done } => {
                let _ = done.send(self.snapshot());
            }
            Command::Close { done } => {
                let closed = std::mem::take(&mut self.consumers)
                    .into_iter()
                    .map(|c| ClosedConsumer {
                        conn: c.spec.conn,
                        consumer_id: c.spec.consumer_id,
                    })
                    .collect();
                let _ = done.send(closed);
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    pub(super) async fn add(&mut self, consumer: ConsumerSpec) -> BrokerResult<()> {
        let ty = consumer.sub_type;
        if !self.consumers.is_empty() {
            if self.sub_type != Some(ty) {
                return Err(BrokerError::ConsumerBusy(format!(
                    "subscription {} is of a different type",
                    self.name
                )));
            }
            if ty == SubType::Exclusive {
                return Err(BrokerError::ConsumerBusy(format!(
                    "exclusive consumer for subscription {} is already connected",
                    self.name
                )));
            }
        }
        if ty == SubType::KeyShared {
            // Refuses STICKY range conflicts and mode mismatches before anything changes.
            self.key_shared.add(
                consumer.key,
                &consumer.name,
                &consumer.key_shared,
                &self.pending,
            )?;
        }
        if self.consumers.is_empty() {
            self.sub_type = Some(ty);
            // A new first consumer starts from the oldest unacknowledged message.
            self.requeue_all_pending();
            if !self.delays_delivery() {
                // Exclusive / Failover receive delayed messages at once.
                for p in self.delayed.take_all() {
                    self.redeliver.insert(p);
                }
            }
        }
        info!(consumer = consumer.consumer_id, key = consumer.key, name = %consumer.name,
            sub_type = ?ty, "consumer added");
        self.consumers.push(Consumer {
            spec: consumer,
            permits: 0,
            parked_permits: 0,
            msg_out: 0,
            bytes_out: 0,
        });
        self.pick_active(true).await;
        Ok(())
    }

    pub(super) async fn remove(&mut self, key: u64) {
        let before = self.consumers.len();
        self.consumers.retain(|c| c.spec.key != key);
        if self.consumers.len() == before {
            return;
        }
        info!(key, "consumer removed");
        let theirs: Vec<Position> = self
            .pending
            .iter()
            .filter(|(_, k)| **k == key)
            .map(|(p, _)| *p)
            .collect();
        for p in theirs {
            self.pending.remove(&p);
            self.requeue(p);
        }
        self.key_shared.remove(key, &self.pending);
        self.chunks.remove_consumer(key);
        self.pick_active(false).await;
    }

    pub(super) fn snapshot(&self) -> SubscriptionSnapshot {
        let consumers = self
            .consumers
            .iter()
            .map(|c| ConsumerSnapshot {
                key: c.spec.key,
                name: c.spec.name.clone(),
                consumer_id: c.spec.consumer_id,
                permits: c.permits + c.parked_permits,
                unacked: self.pending.values().filter(|k| **k == c.spec.key).count() as u64,
                msg_out: c.msg_out,
                bytes_out: c.bytes_out,
            })
            .collect();
        let active_consumer = self.active.and_then(|a| {
            self.consumers
                .iter()
                .find(|c| c.spec.key == a)
                .map(|c| c.spec.name.clone())
        });
        SubscriptionSnapshot {
            sub_type: (!self.consumers.is_empty())
                .then_some(self.sub_type)
                .flatten(),
            consumers,
            active_consumer,
            msg_out: self.msg_out,
            bytes_out: self.bytes_out,
            unacked: self.pending.len() as u64,
            redelivered: self.redelivered,
        }
    }

    pub(super) fn requeue(&mut self, p: Position) {
        if !self.cursor.is_acked(p) {
            *self.redelivery_counts.entry(p).or_default() += 1;
            self.redeliver.insert(p);
            self.redelivered += 1;
        }
    }

    pub(super) fn requeue_all_pending(&mut self) {
        let all: Vec<Position> = self.pending.keys().copied().collect();
        self.pending.clear();
        for p in all {
            self.requeue(p);
        }
    }

    /// Exclusive / Failover: chooses the active consumer; announces changes (Failover).
    pub(super) async fn pick_active(&mut self, added: bool) {
        let new_active = match self.sub_type {
            Some(SubType::Exclusive) => self.consumers.first().map(|c| c.spec.key),
            Some(SubType::Failover) => match self.partition {
                None => self.consumers.first().map(|c| c.spec.key),
                Some(partition) => {
                    let mut sorted: Vec<&Consumer> = self.consumers.iter().collect();
                    sorted.sort_by(|a, b| {
                        (a.spec.priority, &a.spec.name).cmp(&(b.spec.priority, &b.spec.name))
                    });
                    let n = sorted.len().max(1);
                    sorted.get(partition as usize % n).map(|c| c.spec.key)
                }
            },
            _ => None,
        };
        let changed = new_active != self.active;
        if changed {
            // The old active consumer's unacked messages go to the new one, in order.
            if let Some(old) = self.active {
                let theirs: Vec<Position> = self
                    .pending
                    .iter()
                    .filter(|(_, k)| **k == old)
                    .map(|(p, _)| *p)
                    .collect();
                for p in theirs {
                    self.pending.remove(&p);
                    self.redeliver.insert(p);
                }
            }
            self.active = new_active;
        }
        if self.sub_type == Some(SubType::Failover) && (changed || added) {
            for c in &self.consumers {
                let is_active = Some(c.spec.key) == self.active;
                // Never waits on one client: a stalled one must not hold up the change.
                c.spec.conn.send_control(commands::active_consumer_change(
                    c.spec.consumer_id,
                    is_active,
                ));
            }
        }
    }

    /// Applies an ACK. Refused as a whole, changing nothing, when a position lies beyond the
    /// last confirmed entry (as Pulsar refuses such a mark-delete): accepting it would skip
    /// messages not yet written and let retention trim unread ledgers.
    pub(super) fn ack(&mut self, cumulative: bool, ids: Vec<AckedId>) -> BrokerResult<()> {
        for id in &ids {
            self.cursor.check_ack(id.position)?;
        }
        if cumulative {
            if let Some(last) = ids.into_iter().max_by_key(|i| i.position) {
                let pos = last.position;
                // Inside a batch: the entry itself stays pending until its last index is acked.
                let whole = if last.unacked.is_empty() {
                    self.cursor.ack_cumulative(pos)?;
                    true
                } else {
                    self.cursor.ack_cumulative_batch(pos, &last.unacked)?
                };
                let done: Vec<Position> = self
                    .pending
                    .range(..=pos)
                    .map(|(p, _)| *p)
                    .filter(|p| whole || *p < pos)
                    .collect();
                for p in done {
                    self.pending.remove(&p);
                    self.redelivery_counts.remove(&p);
                }
                let stale: Vec<Position> = self
                    .redeliver
                    .range(..=pos)
                    .copied()
                    .filter(|p| whole || *p < pos)
                    .collect();
                for p in stale {
                    self.redeliver.remove(&p);
                }
            }
            return Ok(());
        }
        let mut positions: Vec<Position> = Vec::with_capacity(ids.len());
        let mut completed: Vec<Position> = Vec::new();
        for id in ids {
            if id.unacked.is_empty() {
                positions.push(id.position);
            } else if self.cursor.ack_batch_indexes(id.position, &id.unacked)? {
                completed.push(id.position);
            }
        }
        if !positions.is_empty() {
            self.cursor.ack_individual(&positions)?;
        }
        positions.extend(completed);
        for p in positions {
            self.pending.remove(&p);
            self.redeliver.remove(&p);
            self.redelivery_counts.remove(&p);
        }
        Ok(())
    }

    pub(super) fn redeliver_for(&mut self, key: u64, positions: Option<Vec<Position>>) {
        let chosen: Vec<Position> = match positions {
            Some(ps) => ps
                .into_iter()
                .filter(|p| self.pending.get(p) == Some(&key))
                .collect(),
            None => self
                .pending
                .iter()
                .filter(|(_, k)| **k == key)
                .map(|(p, _)| *p)
                .collect(),
        };
        for p in chosen {
            self.pending.remove(&p);
            self.requeue(p);
        }
    }

    pub(super) async fn seek(&mut self, target: SeekTarget) -> BrokerResult<()> {
        let end = self.ml.start_position(InitialPosition::Latest);
        let position = match target {
            // MessageId.earliest (-1:-1 on the wire) and anything before the first entry.
            SeekTarget::Position(p) if p.ledger.0 == u64::MAX => {
                self.ml.start_position(InitialPosition::Earliest)
            }
            // MessageId.latest (Long.MAX_VALUE) and anything past the end: the end.
            SeekTarget::Position(p) if p > end => end,
            SeekTarget::Position(p) => p,
            SeekTarget::PublishTime(t) => super::entry::find_by_publish_time(&self.ml, t).await?,
        };
        info!(%position, "seek: consumers are disconnected and resubscribe");
        self.pending.clear();
        self.redeliver.clear();
        self.redelivery_counts.clear();
        self.key_hashes.clear();
        // Consumers are all disconnected below; entries are read again from `position`.
        self.key_shared = KeyShared::new();
        self.chunks.clear();
        self.delayed.clear();
        self.cursor.reset(position);
        for c in std::mem::take(&mut self.consumers) {
            c.spec
                .conn
                .send_control(commands::close_consumer(c.spec.consumer_id, 0));
        }
        self.active = None;
        Ok(())
    }
}
