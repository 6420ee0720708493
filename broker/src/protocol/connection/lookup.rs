//! Request/response commands about topics rather than producers or consumers: LOOKUP,
//! PARTITIONED_METADATA, GET_TOPICS_OF_NAMESPACE, GET_LAST_MESSAGE_ID and the schema requests.

use super::*;
use crate::protocol::topic_list;

impl Conn {
    pub(super) async fn lookup(self, c: BaseCommand) {
        let Some(l) = c.lookup_topic else { return };
        let answer = match topic_of(&l.topic) {
            Err(e) => commands::lookup_failed(l.request_id, e.server_error(), e.to_string()),
            Ok(topic) => match self
                .service
                .lookup(&topic, l.authoritative.unwrap_or(false))
                .await
            {
                Ok(None) => commands::lookup_response(
                    l.request_id,
                    LookupType::Connect,
                    self.service.config().service_url.clone(),
                    true,
                ),
                Ok(Some(owner)) => {
                    commands::lookup_response(l.request_id, LookupType::Redirect, owner, true)
                }
                Err(e) => {
                    warn!(topic = %l.topic, error = %e, "lookup failed");
                    commands::lookup_failed(l.request_id, e.server_error(), e.to_string())
                }
            },
        };
        self.send(answer).await;
    }

    pub(super) async fn partitioned_metadata(self, c: BaseCommand) {
        let Some(p) = c.partition_metadata else {
            return;
        };
        let result = match topic_of(&p.topic) {
            Ok(topic) => self.service.partitions(&topic).await,
            Err(e) => Err(e),
        };
        let answer = match result {
            Ok(n) => commands::partitioned_metadata_response(p.request_id, n),
            Err(e) => {
                commands::partitioned_metadata_failed(p.request_id, e.server_error(), e.to_string())
            }
        };
        self.send(answer).await;
    }

    pub(super) async fn topics_of_namespace(self, c: BaseCommand) {
        let Some(g) = c.get_topics_of_namespace else {
            return;
        };
        use magnetar_proto::pulsar::api::command_get_topics_of_namespace::Mode;
        let result = match g.namespace.parse::<NamespaceName>() {
            // Magnetar has no non-persistent topics.
            Ok(_) if g.mode == Some(Mode::NonPersistent as i32) => Ok(Vec::new()),
            Ok(ns) => self.service.topics_of_namespace(&ns).await,
            Err(e) => Err(e.into()),
        };
        let config = self.service.config();
        let answer = match result.map(|topics| {
            topic_list::answer(
                topics,
                g.topics_pattern.as_deref(),
                config
                    .broker_side_pattern_evaluation
                    .then_some(config.subscription_pattern_length_max),
                g.topics_hash.as_deref(),
            )
        }) {
            // One frame carries the answer: a list beyond the frame limit is refused with a
            // reason, rather than sent as a frame the client would drop the connection for.
            Ok(a) if topic_list::encoded_len(&a.topics) > config.max_message_size => {
                commands::error(
                    g.request_id,
                    ServerError::NotAllowedError,
                    format!(
                        "namespace {} has {} matching topics, too many for one answer of at most \
                         {} bytes; subscribe with a pattern that matches fewer",
                        g.namespace,
                        a.topics.len(),
                        config.max_message_size
                    ),
                )
            }
            Ok(a) => commands::get_topics_of_namespace_response(
                g.request_id,
                a.topics,
                a.filtered,
                a.hash,
                a.changed,
            ),
            Err(e) => commands::error(g.request_id, e.server_error(), e.to_string()),
        };
        self.send(answer).await;
    }

    pub(super) async fn get_schema(self, c: BaseCommand) {
        let Some(g) = c.get_schema else { return };
        let answer = crate::schema::answer_get_schema(&self.service.schemas(), &g).await;
        self.send(answer).await;
    }

    pub(super) async fn get_or_create_schema(self, c: BaseCommand) {
        let Some(g) = c.get_or_create_schema else {
            return;
        };
        let answer = crate::schema::answer_get_or_create_schema(&self.service.schemas(), &g).await;
        self.send(answer).await;
    }

    pub(super) async fn last_message_id(self, c: BaseCommand) {
        let Some(g) = c.get_last_message_id else {
            return;
        };
        let slot = self.state().consumers.get(&g.consumer_id).cloned();
        let Some(slot) = slot else {
            let (code, message) = BrokerError::ConsumerNotFound(g.consumer_id).wire();
            self.send(commands::error(g.request_id, code, message))
                .await;
            return;
        };
        let ml = slot.topic.managed_ledger();
        let last = match ml.last_confirmed() {
            Some(p) => {
                let mut id = commands::message_id(p.ledger.0, p.entry.0);
                if let Ok(mut entries) = ml.read_entries(p, 1, 1).await
                    && let Some((q, entry)) = entries.pop()
                    && q == p
                {
                    let info = entry_info(&entry);
                    if info.messages > 1 {
                        id.batch_index = Some(i32::try_from(info.messages - 1).unwrap_or(0));
                    }
                }
                id
            }
            // Nothing stored: entry -1 of the current ledger, as Pulsar answers.
            None => {
                let ledger = ml.ledgers().last().map_or(u64::MAX, |l| l.ledger_id.0);
                commands::message_id(ledger, u64::MAX)
            }
        };
        let mark_delete = slot
            .sub
            .mark_delete_position()
            .await
            .map(|p| commands::message_id(p.ledger.0, p.entry.0));
        self.send(commands::get_last_message_id_response(
            g.request_id,
            last,
            mark_delete,
        ))
        .await;
    }
}
