//! Producers on a connection: PRODUCER (access modes, schema, deduplication state),
//! CLOSE_PRODUCER, SEND, and the per-producer receipt task that answers SENDs strictly in order.

use magnetar_proto::pulsar::Payload;
use magnetar_proto::pulsar::api::CommandSend;

use super::*;

/// A producer attached to its topic: what PRODUCER_SUCCESS tells the client.
pub(super) struct Created {
    name: String,
    /// `None`: no schema.
    schema_version: Option<u64>,
    /// The last sequence id deduplication knows for the name (-1: none).
    last_sequence_id: i64,
    /// Exclusive modes: the topic epoch the producer holds.
    topic_epoch: Option<u64>,
}

impl Conn {
    pub(super) async fn producer(self, c: BaseCommand) {
        let Some(p) = c.producer else { return };
        let request_id = p.request_id;
        let producer_id = p.producer_id;
        // As Pulsar: one creation per producer id at a time (a client retrying a slow one is
        // told to try again); a CLOSE_PRODUCER or the connection closing cancels it.
        let cancel = CancellationToken::new();
        let busy = {
            let mut st = self.state();
            let busy = st.creating.contains_key(&producer_id);
            if !busy {
                st.creating.insert(producer_id, cancel.clone());
            }
            busy
        };
        if busy {
            let e = BrokerError::NotReady("the producer is already being created".into());
            self.send(commands::error(request_id, e.server_error(), e.to_string()))
                .await;
            return;
        }
        let span = info_span!("producer", topic = %p.topic, producer = producer_id);
        let created = self.create_producer(*p, &cancel).instrument(span).await;
        self.state().creating.remove(&producer_id);
        if cancel.is_cancelled() {
            // Closed by the client before it was created (it was answered SUCCESS for the
            // close) or the connection is gone: nothing more to say, as Pulsar.
            info!(
                producer = producer_id,
                "producer closed before it was created"
            );
            return;
        }
        let answer = match created {
            Ok(c) => {
                let mut answer = commands::producer_success(
                    request_id,
                    c.name,
                    c.last_sequence_id,
                    c.schema_version.map(crate::schema::version_bytes),
                );
                if let Some(s) = answer.producer_success.as_mut() {
                    s.topic_epoch = c.topic_epoch;
                }
                answer
            }
            Err(e) => {
                info!(producer = producer_id, error = %e, "producer refused");
                commands::error(request_id, e.server_error(), e.to_string())
            }
        };
        self.send(answer).await;
    }

    /// Attaches a producer; its name, schema version (`None`: no schema) and the last
    /// sequence id deduplication knows for its name (-1: none).
    pub(super) async fn create_producer(
        &self,
        p: CommandProducer,
        cancel: &CancellationToken,
    ) -> BrokerResult<Created> {
        let topic_name = topic_of(&p.topic)?;
        let topic = self.service.get_topic(&topic_name).await?;
        topic.refresh_dedup().await?;
        let schema_version = self
            .service
            .schemas()
            .put_producer_schema(&topic_name, p.schema.as_ref())
            .await?;
        let key = self.service.next_id();
        let name = p
            .producer_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| self.service.unique_name(key));
        let mode = ProducerAccessMode::try_from(p.producer_access_mode.unwrap_or(0))
            .unwrap_or(ProducerAccessMode::Shared);
        let (sends, rx) = mpsc::channel(self.service.config().pending_sends_per_producer.max(1));
        let spec = ProducerSpec {
            key,
            producer_id: p.producer_id,
            name: name.clone(),
            mode,
            conn: Arc::new(ProducerConn {
                tx: self.tx.clone(),
                receipts: sends.clone(),
            }),
            attached: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        let attached = Arc::clone(&spec.attached);
        let tx = self.tx.clone();
        let (request_id, waiting_name) = (p.request_id, name.clone());
        let mut told = false;
        let added = topic.add_producer(spec, p.topic_epoch, || {
            if !told {
                told = true;
                let mut c = commands::producer_success(request_id, waiting_name.clone(), -1, None);
                if let Some(s) = c.producer_success.as_mut() {
                    s.producer_ready = Some(false);
                }
                tx.try_send_command(c);
            }
        });
        // A WaitForExclusive producer may wait long: closed meanwhile, it stops waiting.
        let topic_epoch = tokio::select! {
            added = added => added?,
            _ = cancel.cancelled() => {
                return Err(BrokerError::NotReady("producer closed before it was created".into()));
            }
        };
        let slot = ProducerSlot {
            key,
            topic: Arc::clone(&topic),
            name: Arc::from(name.as_str()),
            sends,
            attached,
        };
        // Under the state lock, where CLOSE_PRODUCER and the connection's teardown cancel
        // `cancel`: either they see the slot and detach it, or it is not inserted.
        let old = {
            let mut st = self.state();
            if cancel.is_cancelled() || self.tx.is_closed() {
                drop(st);
                topic.remove_producer(key);
                return Err(BrokerError::NotReady(
                    "producer closed before it was created".into(),
                ));
            }
            st.producers.insert(p.producer_id, slot)
        };
        if let Some(old) = old {
            old.topic.remove_producer(old.key);
        }
        self.service.spawn(
            receipts(
                p.producer_id,
                rx,
                self.tx.clone(),
                Arc::clone(&topic),
                key,
                Arc::from(name.as_str()),
            )
            .instrument(info_span!("receipts", topic = %topic_name, producer = p.producer_id)),
        );
        let last_sequence_id = topic.dedup().last_sequence_id(&name);
        Ok(Created {
            name,
            schema_version,
            last_sequence_id,
            topic_epoch,
        })
    }

    pub(super) async fn close_producer(self, c: BaseCommand) {
        let Some(p) = c.close_producer else { return };
        let slot = {
            let mut st = self.state();
            if let Some(creating) = st.creating.get(&p.producer_id) {
                creating.cancel();
            }
            st.producers.remove(&p.producer_id)
        };
        if let Some(slot) = slot {
            slot.topic.remove_producer(slot.key);
            info!(producer = p.producer_id, "producer closed by the client");
        }
        self.send(commands::success(p.request_id)).await;
    }

    /// SEND, in frame order: checksum, deduplication, the append (the client's bytes unchanged),
    /// and the completion queued to the producer's receipt task.
    pub(super) async fn on_send(&self, send: CommandSend, payload: Payload) {
        let slot = self.state().producers.get(&send.producer_id).cloned();
        let Some(slot) = slot else {
            debug!(producer = send.producer_id, "SEND for an unknown producer");
            let (code, message) =
                BrokerError::NotAllowed("producer not found on this connection".into()).wire();
            self.send(commands::send_error(
                send.producer_id,
                send.sequence_id,
                code,
                message,
            ))
            .await;
            return;
        };
        // Before anything else: at the connection's limit of unanswered SENDs the read loop
        // waits here for receipts, so the client's socket is not read meanwhile.
        let permit = Arc::clone(&self.publishes).acquire_owned().await.ok();
        // Held until the append is queued: a publish fence waits for SENDs past this check.
        let _entering = slot.topic.enter_send();
        if !slot.attached.load(std::sync::atomic::Ordering::Acquire) {
            // The broker closed this producer (CLOSE_PRODUCER: topic unloaded or shutting
            // down, or publishing fenced after a failed write); SENDs the client had on the wire
            // before it saw that are expected. As Pulsar (ServerCnx's recently closed producers)
            // they are ignored: neither stored — the client resends them on the re-created
            // producer, so storing would duplicate them or put them before an earlier failed
            // one — nor failed, as a SEND_ERROR makes the client close the whole connection.
            debug!(
                producer = send.producer_id,
                "SEND for a producer the broker closed: ignored"
            );
            return;
        }
        let highest = send.highest_sequence_id.filter(|h| *h > 0);
        let mut ticket = None;
        let mut appended_at = None;
        let append =
            if !payload.checksum_ok() {
                Some(Err(BrokerError::Checksum(
                    "the payload does not match its checksum".into(),
                )
                .wire()))
            } else {
                let verdict =
                    slot.topic
                        .dedup()
                        .check(&slot.name, send.sequence_id, highest, || {
                            dedup::payload_counts(&payload)
                        });
                match verdict {
                    Verdict::Duplicate => None,
                    Verdict::Publish(t) => {
                        ticket = t;
                        let messages = send
                            .num_messages
                            .map_or(1, |n| u64::try_from(n).unwrap_or(1));
                        slot.topic
                            .record_publish(messages, payload.payload_range().len() as u64);
                        appended_at = Some(slot.topic.managed_ledger().clock().now());
                        Some(
                            slot.topic
                                .managed_ledger()
                                .append(payload.entry())
                                .await
                                .map_err(|e| {
                                    if matches!(
                                    e,
                                    magnetar_managed_ledger::ManagedLedgerError::AppendsSuspended(_)
                                ) {
                                        // A write failed and the fence it starts is not up yet
                                        // (its receipt is still on the way): start it now, so
                                        // this producer is detached and resends (CLOSE_PRODUCER)
                                        // rather than told SEND_ERROR. Idempotent while fenced.
                                        slot.topic.publish_failed();
                                    }
                                    let e = BrokerError::from(e);
                                    (e.server_error(), e.to_string())
                                }),
                        )
                    }
                }
            };
        let pending = PendingSend {
            sequence_id: send.sequence_id,
            highest_sequence_id: highest,
            append,
            appended_at,
            dedup: ticket,
            _permit: permit,
        };
        if slot.sends.send(Pending::Send(pending)).await.is_err() {
            debug!(
                producer = send.producer_id,
                "SEND after the producer closed"
            );
        }
    }
}

/// A producer's receipt task: completes appends in order and answers each SEND. It drains
/// its queue even after the connection closed, so deduplication learns every outcome.
pub(super) async fn receipts(
    producer_id: u64,
    mut rx: mpsc::Receiver<Pending>,
    tx: ConnTx,
    topic: Arc<Topic>,
    key: u64,
    name: Arc<str>,
) {
    let dedup = Arc::clone(topic.dedup());
    let mut connected = true;
    while let Some(item) = rx.recv().await {
        let p = match item {
            Pending::Send(p) => p,
            Pending::Close(assigned) => {
                if connected {
                    connected = tx
                        .send_command(commands::close_producer_assigned(producer_id, 0, assigned))
                        .await;
                }
                continue;
            }
        };
        let result = match p.append {
            Some(Ok(handle)) => handle
                .await
                .inspect(|_| {
                    if let Some(at) = p.appended_at {
                        let clock = topic.managed_ledger().clock();
                        topic
                            .publish_stats()
                            .record_write(clock.now().saturating_duration_since(at));
                    }
                })
                .map(Some)
                .map_err(|e| {
                    // A write failed: later SENDs must not be stored before this one is resent.
                    // (Refusals during the fence it starts are its consequence, not new failures.)
                    if !matches!(
                        e,
                        magnetar_managed_ledger::ManagedLedgerError::AppendsSuspended(_)
                    ) {
                        topic.publish_failed();
                    }
                    let e = BrokerError::from(e);
                    (e.server_error(), e.to_string())
                }),
            Some(Err(e)) => Err(e),
            // A duplicate: answered once its original is persisted (ledger/entry -1/-1, as
            // Pulsar); undecidable (original failed or still pending) → PersistenceError,
            // after which the client reconnects and resends.
            None => {
                if dedup.await_duplicate(&name, p.sequence_id).await {
                    Ok(None)
                } else {
                    Err(BrokerError::DuplicateUndecided(
                        "cannot tell yet whether the message is a duplicate".to_owned(),
                    )
                    .wire())
                }
            }
        };
        if let Some(ticket) = p.dedup {
            dedup.completed(ticket, result.as_ref().ok().copied().flatten());
        }
        if !connected {
            continue;
        }
        if result.is_err() && !topic.is_attached(key) {
            // Detached by the broker (CLOSE_PRODUCER sent): the client resends this message on
            // its re-created producer; a SEND_ERROR would make it close the whole connection.
            continue;
        }
        let answer = match result {
            Ok(pos) => {
                let (ledger, entry) = pos.map_or((u64::MAX, u64::MAX), |p| (p.ledger.0, p.entry.0));
                commands::send_receipt(
                    producer_id,
                    p.sequence_id,
                    commands::message_id(ledger, entry),
                    p.highest_sequence_id,
                )
            }
            Err((code, message)) => {
                warn!(sequence_id = p.sequence_id, error = %message, "send failed");
                commands::send_error(producer_id, p.sequence_id, code, message)
            }
        };
        connected = tx.send_command(answer).await;
    }
}
