//! Consumers on a connection: SUBSCRIBE, CLOSE_CONSUMER, UNSUBSCRIBE, SEEK, ACK (individual,
//! cumulative, batch-index), CONSUMER_STATS, and detaching them when the connection closes.

use super::*;

impl Conn {
    pub(super) async fn subscribe(self, c: BaseCommand) {
        let Some(s) = c.subscribe else { return };
        let request_id = s.request_id;
        let consumer_id = s.consumer_id;
        let span = info_span!("consumer", topic = %s.topic, subscription = %s.subscription,
            consumer = consumer_id);
        let answer = match self.create_consumer(*s).instrument(span).await {
            Ok(()) => commands::success(request_id),
            Err(e) => {
                info!(consumer = consumer_id, error = %e, "subscribe refused");
                commands::error(request_id, e.server_error(), e.to_string())
            }
        };
        self.send(answer).await;
    }

    pub(super) async fn create_consumer(&self, s: CommandSubscribe) -> BrokerResult<()> {
        let topic_name = topic_of(&s.topic)?;
        crate::topic_name::validate_subscription_name(&s.subscription)?;
        // Resubscribing with a consumer id still in use (after the broker closed it): replace.
        // A reader's (non-durable) subscription is kept when the same reader comes back to it —
        // after a SEEK the broker closed the consumer and the reset cursor must survive the
        // resubscribe, as in Pulsar (a time seek resubscribes with no start position at all).
        let old = self.state().consumers.remove(&s.consumer_id);
        if let Some(old) = old {
            let same_reader = !old.sub.is_durable()
                && old.sub.name() == s.subscription
                && old.topic.name().to_string() == topic_name.to_string();
            if same_reader {
                old.sub.remove_consumer(old.key).await;
            } else {
                self.detach_consumer(old).await;
            }
        }
        let topic = self.service.get_topic(&topic_name).await?;
        let idle = topic.managed_ledger().last_confirmed().is_none();
        self.service
            .schemas()
            .check_consumer_schema(&topic_name, s.schema.as_ref(), idle)
            .await?;
        let sub_type = SubType::try_from(s.sub_type).unwrap_or(SubType::Exclusive);
        let key_shared = KeySharedPolicy::from_wire(s.key_shared_meta.as_ref());
        let durable = s.durable.unwrap_or(true);
        let initial = match s.initial_position.map(WireInitial::try_from) {
            Some(Ok(WireInitial::Earliest)) => InitialPosition::Earliest,
            _ => InitialPosition::Latest,
        };
        let start = match (&s.start_message_id, durable) {
            (Some(id), false) => start_of(id, initial),
            _ => StartAt::Initial(initial),
        };
        let sub = topic.subscription(&s.subscription, durable, start).await?;
        let key = self.service.next_id();
        let spec = ConsumerSpec {
            key,
            consumer_id: s.consumer_id,
            name: s.consumer_name.clone().unwrap_or_default(),
            priority: s.priority_level.unwrap_or(0),
            sub_type,
            key_shared,
            conn: Arc::new(self.tx.clone()),
        };
        if let Err(e) = sub.add_consumer(spec).await {
            if !durable {
                topic.drop_subscription(&s.subscription).await;
            }
            return Err(e);
        }
        let slot = ConsumerSlot {
            key,
            topic: Arc::clone(&topic),
            sub,
            sub_type,
            connected_since_ms: self.service.config().clock.now_ms(),
        };
        if self.tx.is_closed() {
            self.detach_consumer(slot).await;
            return Err(BrokerError::NotReady("connection closed".into()));
        }
        self.state().consumers.insert(s.consumer_id, slot);
        Ok(())
    }

    pub(super) async fn detach_consumer(&self, slot: ConsumerSlot) {
        slot.sub.remove_consumer(slot.key).await;
        if !slot.sub.is_durable() {
            slot.topic.drop_subscription(slot.sub.name()).await;
        }
    }

    pub(super) async fn close_consumer(self, c: BaseCommand) {
        let Some(cc) = c.close_consumer else { return };
        let slot = self.state().consumers.remove(&cc.consumer_id);
        if let Some(slot) = slot {
            self.detach_consumer(slot).await;
            info!(consumer = cc.consumer_id, "consumer closed by the client");
        }
        self.send(commands::success(cc.request_id)).await;
    }

    pub(super) async fn unsubscribe(self, c: BaseCommand) {
        let Some(u) = c.unsubscribe else { return };
        let slot = self.state().consumers.get(&u.consumer_id).cloned();
        let answer = match slot {
            None => {
                let (code, message) = BrokerError::ConsumerNotFound(u.consumer_id).wire();
                commands::error(u.request_id, code, message)
            }
            Some(slot) => match slot.sub.unsubscribe(slot.key).await {
                Ok(()) => {
                    self.state().consumers.remove(&u.consumer_id);
                    slot.topic.drop_subscription(slot.sub.name()).await;
                    commands::success(u.request_id)
                }
                Err(e) => commands::error(u.request_id, e.server_error(), e.to_string()),
            },
        };
        self.send(answer).await;
    }

    pub(super) async fn seek(self, c: BaseCommand) {
        let Some(s) = c.seek else { return };
        let CommandSeek {
            consumer_id,
            request_id,
            message_id,
            message_publish_time,
        } = *s;
        let slot = self.state().consumers.get(&consumer_id).cloned();
        let target = match (message_id, message_publish_time) {
            (Some(id), _) => Some(SeekTarget::Position(position(&id))),
            (None, Some(t)) => Some(SeekTarget::PublishTime(t)),
            (None, None) => None,
        };
        let answer = match (slot, target) {
            (None, _) => {
                let (code, message) = BrokerError::ConsumerNotFound(consumer_id).wire();
                commands::error(request_id, code, message)
            }
            (Some(_), None) => {
                let (code, message) =
                    BrokerError::NotAllowed("SEEK needs a message id or a publish time".into())
                        .wire();
                commands::error(request_id, code, message)
            }
            (Some(slot), Some(target)) => match slot.sub.seek(target).await {
                Ok(()) => commands::success(request_id),
                Err(e) => commands::error(request_id, e.server_error(), e.to_string()),
            },
        };
        self.send(answer).await;
    }

    pub(super) async fn consumer_stats(self, c: BaseCommand) {
        let Some(s) = c.consumer_stats else { return };
        let slot = self.state().consumers.get(&s.consumer_id).cloned();
        let snapshot = match &slot {
            Some(slot) => slot
                .sub
                .snapshot()
                .await
                .and_then(|snap| snap.consumers.into_iter().find(|c| c.key == slot.key)),
            None => None,
        };
        let answer = match (slot, snapshot) {
            (Some(slot), Some(consumer)) => {
                let backlog_entries = slot
                    .topic
                    .managed_ledger()
                    .cursor(slot.sub.name())
                    .map_or(0, |c| c.backlog());
                let ctx = consumer_stats::ConsumerContext {
                    sub_type: slot.sub_type,
                    backlog_entries,
                    address: self.peer,
                    connected_since_ms: slot.connected_since_ms,
                };
                commands::consumer_stats_response(consumer_stats::response(
                    s.request_id,
                    &consumer,
                    ctx,
                ))
            }
            _ => {
                let (code, message) = BrokerError::ConsumerNotFound(s.consumer_id).wire();
                commands::consumer_stats_error(s.request_id, code, message)
            }
        };
        self.send(answer).await;
    }

    pub(super) async fn ack(&self, ack: CommandAck) {
        let slot = self.state().consumers.get(&ack.consumer_id).cloned();
        let Some(slot) = slot else {
            debug!(consumer = ack.consumer_id, "ACK for an unknown consumer");
            return;
        };
        let cumulative = ack.ack_type == AckType::Cumulative as i32;
        // A non-empty ack_set with a bit set is a batch-index ack (set bits: indexes still
        // unacknowledged); an absent or all-clear one acknowledges the whole entry.
        let ids: Vec<AckedId> = ack
            .message_id
            .iter()
            .map(|id| AckedId {
                position: position(id),
                unacked: if id.ack_set.iter().all(|w| *w == 0) {
                    Vec::new()
                } else {
                    batch_acks::from_wire(&id.ack_set)
                },
            })
            .collect();
        let Some(request_id) = ack.request_id else {
            slot.sub.ack(cumulative, ids).await;
            return;
        };
        // With an ack receipt the client waits for the outcome; answered off the reader loop
        // so later frames are not held up behind the subscription's queue.
        let conn = self.clone();
        let consumer_id = ack.consumer_id;
        self.service.spawn(
            async move {
                let answer = match slot.sub.ack_with_receipt(cumulative, ids).await {
                    Ok(()) => commands::ack_response(consumer_id, request_id),
                    Err(e) => commands::ack_response_error(
                        consumer_id,
                        request_id,
                        e.server_error(),
                        e.to_string(),
                    ),
                };
                conn.send(answer).await;
            }
            .in_current_span(),
        );
    }

    /// Detaches every producer and consumer of a closed connection.
    pub(super) async fn detach_all(&self) {
        let (producers, consumers) = {
            let mut st = self.state();
            // Producers still being created are not attached after this (see create_producer).
            for creating in st.creating.values() {
                creating.cancel();
            }
            (
                std::mem::take(&mut st.producers),
                std::mem::take(&mut st.consumers),
            )
        };
        for p in producers.into_values() {
            p.topic.remove_producer(p.key);
        }
        for c in consumers.into_values() {
            self.detach_consumer(c).await;
        }
    }
}

/// Where a reader (non-durable subscription) starts, as Pulsar's broker decides it: at the
/// entry of the wire's start message id **itself** — the client drops what its exclusive or
/// inclusive start excludes (comparing message ids, batch indexes included) — so an inclusive
/// start gets the message it names. `-1:-1` is the earliest entry; `latest` (`i64::MAX`) and
/// any other position past the last entry fall back to the subscription's initial position.
pub(super) fn start_of(id: &MessageIdData, initial: InitialPosition) -> StartAt {
    const EARLIEST: u64 = u64::MAX; // -1 on the wire
    if id.ledger_id == EARLIEST {
        return StartAt::Initial(InitialPosition::Earliest);
    }
    if id.ledger_id >= i64::MAX as u64 {
        return StartAt::Initial(initial);
    }
    if id.entry_id == u64::MAX {
        // `ledger:-1`: before the ledger's first entry.
        return StartAt::Position(Position::new(id.ledger_id, 0), initial);
    }
    StartAt::Position(position(id), initial)
}
