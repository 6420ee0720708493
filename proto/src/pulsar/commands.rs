//! Thin constructors of the [`BaseCommand`]s the broker sends. Each sets `type` and the matching
//! command field; fields left out keep their protobuf defaults and can be set afterwards.

use bytes::Bytes;

use super::api::base_command::Type;
use super::api::command_lookup_topic_response::LookupType;
use super::api::command_partitioned_topic_metadata_response::LookupType as PartitionedLookupType;
use super::api::{
    BaseCommand, CommandAckResponse, CommandActiveConsumerChange, CommandCloseConsumer,
    CommandCloseProducer, CommandConnected, CommandConsumerStatsResponse, CommandError,
    CommandGetLastMessageIdResponse, CommandGetTopicsOfNamespaceResponse,
    CommandLookupTopicResponse, CommandMessage, CommandPartitionedTopicMetadataResponse,
    CommandPing, CommandPong, CommandProducerSuccess, CommandSendError, CommandSendReceipt,
    CommandSuccess, MessageIdData, ServerError,
};
use super::frame::PROTOCOL_VERSION;

fn base(ty: Type) -> BaseCommand {
    BaseCommand {
        r#type: ty as i32,
        ..Default::default()
    }
}

/// A message id without partition or batch index.
pub fn message_id(ledger_id: u64, entry_id: u64) -> MessageIdData {
    MessageIdData {
        ledger_id,
        entry_id,
        ..Default::default()
    }
}

/// CONNECTED with `server_version` (the C++/Python client requires it), protocol version 21
/// and the largest message the broker accepts.
pub fn connected(server_version: impl Into<String>, max_message_size: i32) -> BaseCommand {
    BaseCommand {
        connected: Some(Box::new(CommandConnected {
            server_version: server_version.into(),
            protocol_version: Some(PROTOCOL_VERSION),
            max_message_size: Some(max_message_size),
            feature_flags: None,
        })),
        ..base(Type::Connected)
    }
}

/// PING.
pub fn ping() -> BaseCommand {
    BaseCommand {
        ping: Some(Box::new(CommandPing {})),
        ..base(Type::Ping)
    }
}

/// PONG.
pub fn pong() -> BaseCommand {
    BaseCommand {
        pong: Some(Box::new(CommandPong {})),
        ..base(Type::Pong)
    }
}

/// SUCCESS for a request.
pub fn success(request_id: u64) -> BaseCommand {
    BaseCommand {
        success: Some(Box::new(CommandSuccess {
            request_id,
            schema: None,
        })),
        ..base(Type::Success)
    }
}

/// ERROR for a request.
pub fn error(request_id: u64, error: ServerError, message: impl Into<String>) -> BaseCommand {
    BaseCommand {
        error: Some(Box::new(CommandError {
            request_id,
            error: error as i32,
            message: message.into(),
        })),
        ..base(Type::Error)
    }
}

/// PRODUCER_SUCCESS. `last_sequence_id` is -1 when unknown (no deduplication);
/// `producer_ready` defaults to true (set it to false while WaitForExclusive waits).
pub fn producer_success(
    request_id: u64,
    producer_name: impl Into<String>,
    last_sequence_id: i64,
    schema_version: Option<Bytes>,
) -> BaseCommand {
    BaseCommand {
        producer_success: Some(Box::new(CommandProducerSuccess {
            request_id,
            producer_name: producer_name.into(),
            last_sequence_id: Some(last_sequence_id),
            schema_version,
            ..Default::default()
        })),
        ..base(Type::ProducerSuccess)
    }
}

/// SEND_RECEIPT for the message(s) stored at `message_id`.
pub fn send_receipt(
    producer_id: u64,
    sequence_id: u64,
    message_id: MessageIdData,
    highest_sequence_id: Option<u64>,
) -> BaseCommand {
    BaseCommand {
        send_receipt: Some(Box::new(CommandSendReceipt {
            producer_id,
            sequence_id,
            message_id: Some(message_id),
            highest_sequence_id,
        })),
        ..base(Type::SendReceipt)
    }
}

/// SEND_ERROR (e.g. `ChecksumError`, `PersistenceError`).
pub fn send_error(
    producer_id: u64,
    sequence_id: u64,
    error: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    BaseCommand {
        send_error: Some(Box::new(CommandSendError {
            producer_id,
            sequence_id,
            error: error as i32,
            message: message.into(),
        })),
        ..base(Type::SendError)
    }
}

/// LOOKUP_RESPONSE answering Connect (this broker owns the topic) or Redirect (to
/// `broker_service_url`).
pub fn lookup_response(
    request_id: u64,
    response: LookupType,
    broker_service_url: impl Into<String>,
    authoritative: bool,
) -> BaseCommand {
    BaseCommand {
        lookup_topic_response: Some(Box::new(CommandLookupTopicResponse {
            broker_service_url: Some(broker_service_url.into()),
            response: Some(response as i32),
            request_id,
            authoritative: Some(authoritative),
            ..Default::default()
        })),
        ..base(Type::LookupResponse)
    }
}

/// LOOKUP_RESPONSE answering Failed.
pub fn lookup_failed(
    request_id: u64,
    error: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    BaseCommand {
        lookup_topic_response: Some(Box::new(CommandLookupTopicResponse {
            response: Some(LookupType::Failed as i32),
            request_id,
            error: Some(error as i32),
            message: Some(message.into()),
            ..Default::default()
        })),
        ..base(Type::LookupResponse)
    }
}

/// PARTITIONED_METADATA_RESPONSE: `partitions` is 0 for a non-partitioned topic.
pub fn partitioned_metadata_response(request_id: u64, partitions: u32) -> BaseCommand {
    BaseCommand {
        partition_metadata_response: Some(Box::new(CommandPartitionedTopicMetadataResponse {
            partitions: Some(partitions),
            request_id,
            response: Some(PartitionedLookupType::Success as i32),
            ..Default::default()
        })),
        ..base(Type::PartitionedMetadataResponse)
    }
}

/// PARTITIONED_METADATA_RESPONSE answering Failed.
pub fn partitioned_metadata_failed(
    request_id: u64,
    error: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    BaseCommand {
        partition_metadata_response: Some(Box::new(CommandPartitionedTopicMetadataResponse {
            request_id,
            response: Some(PartitionedLookupType::Failed as i32),
            error: Some(error as i32),
            message: Some(message.into()),
            ..Default::default()
        })),
        ..base(Type::PartitionedMetadataResponse)
    }
}

/// CLOSE_PRODUCER sent by the broker (the client reconnects).
pub fn close_producer(producer_id: u64, request_id: u64) -> BaseCommand {
    close_producer_assigned(producer_id, request_id, None)
}

/// CLOSE_PRODUCER naming the broker the topic moved to (PIP-307 `assignedBrokerServiceUrl`):
/// the client reconnects there without a lookup.
pub fn close_producer_assigned(
    producer_id: u64,
    request_id: u64,
    assigned_broker_service_url: Option<String>,
) -> BaseCommand {
    BaseCommand {
        close_producer: Some(Box::new(CommandCloseProducer {
            producer_id,
            request_id,
            assigned_broker_service_url,
            ..Default::default()
        })),
        ..base(Type::CloseProducer)
    }
}

/// CLOSE_CONSUMER sent by the broker (the client resubscribes).
pub fn close_consumer(consumer_id: u64, request_id: u64) -> BaseCommand {
    close_consumer_assigned(consumer_id, request_id, None)
}

/// CLOSE_CONSUMER naming the broker the topic moved to (PIP-307).
pub fn close_consumer_assigned(
    consumer_id: u64,
    request_id: u64,
    assigned_broker_service_url: Option<String>,
) -> BaseCommand {
    BaseCommand {
        close_consumer: Some(Box::new(CommandCloseConsumer {
            consumer_id,
            request_id,
            assigned_broker_service_url,
            ..Default::default()
        })),
        ..base(Type::CloseConsumer)
    }
}

/// ACTIVE_CONSUMER_CHANGE (Failover subscriptions).
pub fn active_consumer_change(consumer_id: u64, is_active: bool) -> BaseCommand {
    BaseCommand {
        active_consumer_change: Some(Box::new(CommandActiveConsumerChange {
            consumer_id,
            is_active: Some(is_active),
        })),
        ..base(Type::ActiveConsumerChange)
    }
}

/// GET_LAST_MESSAGE_ID_RESPONSE.
pub fn get_last_message_id_response(
    request_id: u64,
    last_message_id: MessageIdData,
    consumer_mark_delete_position: Option<MessageIdData>,
) -> BaseCommand {
    BaseCommand {
        get_last_message_id_response: Some(Box::new(CommandGetLastMessageIdResponse {
            last_message_id,
            request_id,
            consumer_mark_delete_position,
        })),
        ..base(Type::GetLastMessageIdResponse)
    }
}

/// GET_TOPICS_OF_NAMESPACE_RESPONSE. `filtered`: the list is already filtered by the client's
/// pattern; `changed` false: the list hashes to the client's `topics_hash` and is left out.
pub fn get_topics_of_namespace_response(
    request_id: u64,
    topics: Vec<String>,
    filtered: bool,
    topics_hash: String,
    changed: bool,
) -> BaseCommand {
    BaseCommand {
        get_topics_of_namespace_response: Some(Box::new(CommandGetTopicsOfNamespaceResponse {
            request_id,
            topics,
            filtered: Some(filtered),
            topics_hash: Some(topics_hash),
            changed: Some(changed),
        })),
        ..base(Type::GetTopicsOfNamespaceResponse)
    }
}

/// ACK_RESPONSE (when the ACK carried a `request_id`).
pub fn ack_response(consumer_id: u64, request_id: u64) -> BaseCommand {
    BaseCommand {
        ack_response: Some(Box::new(CommandAckResponse {
            consumer_id,
            request_id: Some(request_id),
            ..Default::default()
        })),
        ..base(Type::AckResponse)
    }
}

/// ACK_RESPONSE refusing an acknowledgement (the client fails that ack's future).
pub fn ack_response_error(
    consumer_id: u64,
    request_id: u64,
    error: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    BaseCommand {
        ack_response: Some(Box::new(CommandAckResponse {
            consumer_id,
            request_id: Some(request_id),
            error: Some(error as i32),
            message: Some(message.into()),
            ..Default::default()
        })),
        ..base(Type::AckResponse)
    }
}

/// MESSAGE header for dispatch; frame it with the stored entry as a
/// [`MessageFrame`](super::frame::MessageFrame).
pub fn message(
    consumer_id: u64,
    message_id: MessageIdData,
    redelivery_count: u32,
    ack_set: Vec<i64>,
) -> BaseCommand {
    BaseCommand {
        message: Some(Box::new(CommandMessage {
            consumer_id,
            message_id,
            redelivery_count: Some(redelivery_count),
            ack_set,
            consumer_epoch: None,
        })),
        ..base(Type::Message)
    }
}

/// CONSUMER_STATS_RESPONSE with the consumer's figures; `request_id` and `error_code` are
/// whatever `stats` holds (leave `error_code` unset for a success).
pub fn consumer_stats_response(stats: CommandConsumerStatsResponse) -> BaseCommand {
    BaseCommand {
        consumer_stats_response: Some(Box::new(stats)),
        ..base(Type::ConsumerStatsResponse)
    }
}

/// CONSUMER_STATS_RESPONSE answering an error (e.g. `ConsumerNotFound`).
pub fn consumer_stats_error(
    request_id: u64,
    error: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    consumer_stats_response(CommandConsumerStatsResponse {
        request_id,
        error_code: Some(error as i32),
        error_message: Some(message.into()),
        ..Default::default()
    })
}
