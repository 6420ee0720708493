//! [`BrokerError`]: everything a client request can fail with, mapped **once** to the Pulsar
//! [`ServerError`] code the official clients understand ([`BrokerError::server_error`]) and
//! **once** to the HTTP status of the admin API ([`BrokerError::http_status`]): retryable
//! conditions are `ServiceNotReady` / 503, a client's mistake is a 4xx with the reason, and 500
//! is left for the broker's own failures.
//!
//! The mapping respects the client traps of DESIGN decision 1: a topic this broker does not own
//! is `ServiceNotReady` (the client retries the lookup), never a fatal code; a second exclusive
//! producer or consumer is `ProducerBusy` / `ConsumerBusy` at once.

use axum::http::StatusCode;
use magnetar_metadata::MetadataError;
use magnetar_proto::pulsar::api::ServerError;

use magnetar_managed_ledger::ManagedLedgerError;

/// An invalid topic, subscription or namespace name (`topic_name` checks them).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid topic name {name:?}: {reason}")]
    Topic { name: String, reason: &'static str },
    #[error("invalid subscription name {name:?}: {reason}")]
    Subscription { name: String, reason: &'static str },
    #[error("invalid namespace name {name:?}: {reason}")]
    Namespace { name: String, reason: &'static str },
}

/// A failed read or write of tenants, namespaces and their policies (`policies`).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// Result of broker operations.
pub type BrokerResult<T> = Result<T, BrokerError>;

/// A failed client request.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The topic name is invalid.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(#[from] NameError),
    /// This broker does not own the topic's bundle (the client looks the topic up again).
    #[error("topic {0} is not served by this broker")]
    NotOwner(String),
    /// The broker is shutting down or the topic is closing.
    #[error("service not ready: {0}")]
    NotReady(String),
    /// What a request names does not exist (a bundle of a namespace).
    #[error("{0}")]
    NotFound(String),
    /// A request names something that cannot be (an unknown destination broker, a malformed
    /// bundle range).
    #[error("{0}")]
    BadRequest(String),
    /// The topic does not exist and auto-creation is off.
    #[error("topic {0} does not exist")]
    TopicNotFound(String),
    /// The namespace does not exist.
    #[error("namespace {0} does not exist")]
    NamespaceNotFound(String),
    /// An exclusive producer already exists (or this one conflicts with the others).
    #[error("producer busy: {0}")]
    ProducerBusy(String),
    /// An exclusive producer holds the topic, or a newer one fenced this one out.
    #[error("producer fenced: {0}")]
    ProducerFenced(String),
    /// An exclusive consumer already exists, or the subscription type conflicts.
    #[error("consumer busy: {0}")]
    ConsumerBusy(String),
    /// Key_Shared STICKY hash ranges that are empty, invalid or overlap another consumer's.
    #[error("{0}")]
    ConsumerAssign(String),
    /// The subscription does not exist.
    #[error("subscription {0} does not exist")]
    SubscriptionNotFound(String),
    /// The consumer id is unknown on this connection.
    #[error("consumer {0} not found")]
    ConsumerNotFound(u64),
    /// The request is not allowed (e.g. unsubscribing while other consumers are connected).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The schema conflicts with the topic's schemas, or is invalid.
    #[error("{0}")]
    IncompatibleSchema(String),
    /// The request is not supported by this broker.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A SEND whose payload fails its checksum.
    #[error("checksum mismatch: {0}")]
    Checksum(String),
    /// The topic has no schema (GET_SCHEMA), worded as Pulsar's.
    #[error("Topic not found or no-schema {0}")]
    SchemaNotFound(String),
    /// Deduplication cannot tell yet whether a SEND is a duplicate (its original is still
    /// pending or failed): the client reconnects and resends.
    #[error("{0}")]
    DuplicateUndecided(String),
    /// Storage failed.
    #[error("managed ledger: {0}")]
    ManagedLedger(#[from] ManagedLedgerError),
    /// Metadata store failed.
    #[error("metadata: {0}")]
    Metadata(#[from] MetadataError),
    /// Policies could not be read or written.
    #[error("policies: {0}")]
    Policy(#[from] PolicyError),
}

impl BrokerError {
    /// The Pulsar error code for this failure (the one mapping in the broker).
    pub fn server_error(&self) -> ServerError {
        match self {
            BrokerError::InvalidTopicName(_) => ServerError::InvalidTopicName,
            BrokerError::NotOwner(_) | BrokerError::NotReady(_) => ServerError::ServiceNotReady,
            BrokerError::TopicNotFound(_)
            | BrokerError::NamespaceNotFound(_)
            | BrokerError::NotFound(_) => ServerError::TopicNotFound,
            BrokerError::ProducerBusy(_) => ServerError::ProducerBusy,
            BrokerError::ProducerFenced(_) => ServerError::ProducerFenced,
            BrokerError::ConsumerBusy(_) => ServerError::ConsumerBusy,
            BrokerError::ConsumerAssign(_) => ServerError::ConsumerAssignError,
            BrokerError::SubscriptionNotFound(_) => ServerError::SubscriptionNotFound,
            BrokerError::IncompatibleSchema(_) => ServerError::IncompatibleSchema,
            BrokerError::ConsumerNotFound(_) => ServerError::ConsumerNotFound,
            BrokerError::NotAllowed(_)
            | BrokerError::Unsupported(_)
            | BrokerError::BadRequest(_) => ServerError::NotAllowedError,
            BrokerError::Checksum(_) => ServerError::ChecksumError,
            BrokerError::SchemaNotFound(_) => ServerError::TopicNotFound,
            BrokerError::DuplicateUndecided(_) => ServerError::PersistenceError,
            // A fenced or closed ledger means another broker took the topic over or this one
            // is unloading it: the client must look the topic up again.
            BrokerError::ManagedLedger(e) if e.is_fenced() => ServerError::ServiceNotReady,
            BrokerError::ManagedLedger(ManagedLedgerError::AppendsSuspended(_)) => {
                ServerError::ServiceNotReady
            }
            BrokerError::ManagedLedger(ManagedLedgerError::Closed(_)) => {
                ServerError::ServiceNotReady
            }
            BrokerError::ManagedLedger(ManagedLedgerError::InvalidAck { .. }) => {
                ServerError::NotAllowedError
            }
            BrokerError::ManagedLedger(ManagedLedgerError::Metadata(_))
            | BrokerError::Metadata(_)
            | BrokerError::Policy(PolicyError::Metadata(_)) => ServerError::MetadataError,
            BrokerError::ManagedLedger(_) => ServerError::PersistenceError,
            BrokerError::Policy(PolicyError::NotFound(_)) => ServerError::TopicNotFound,
            BrokerError::Policy(_) => ServerError::MetadataError,
        }
    }

    /// The admin API's HTTP status for this failure (the one mapping to HTTP).
    pub fn http_status(&self) -> StatusCode {
        match self {
            // Pulsar answers invalid names with 412.
            BrokerError::InvalidTopicName(_) => StatusCode::PRECONDITION_FAILED,
            BrokerError::NotOwner(_)
            | BrokerError::NotReady(_)
            | BrokerError::DuplicateUndecided(_) => StatusCode::SERVICE_UNAVAILABLE,
            BrokerError::TopicNotFound(_)
            | BrokerError::NamespaceNotFound(_)
            | BrokerError::NotFound(_)
            | BrokerError::SubscriptionNotFound(_)
            | BrokerError::ConsumerNotFound(_)
            | BrokerError::SchemaNotFound(_)
            | BrokerError::Policy(PolicyError::NotFound(_)) => StatusCode::NOT_FOUND,
            BrokerError::ProducerBusy(_)
            | BrokerError::ProducerFenced(_)
            | BrokerError::IncompatibleSchema(_)
            | BrokerError::Policy(PolicyError::AlreadyExists(_)) => StatusCode::CONFLICT,
            // The state forbids it (connected consumers, another consumer's ranges).
            BrokerError::ConsumerBusy(_)
            | BrokerError::NotAllowed(_)
            | BrokerError::ConsumerAssign(_)
            | BrokerError::Policy(PolicyError::Invalid(_))
            | BrokerError::ManagedLedger(ManagedLedgerError::InvalidAck { .. }) => {
                StatusCode::PRECONDITION_FAILED
            }
            BrokerError::Checksum(_) | BrokerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BrokerError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            BrokerError::ManagedLedger(ManagedLedgerError::Metadata(m)) => metadata_status(m),
            BrokerError::Metadata(m) | BrokerError::Policy(PolicyError::Metadata(m)) => {
                metadata_status(m)
            }
            BrokerError::ManagedLedger(e)
                if e.is_retryable()
                    || e.is_fenced()
                    || matches!(
                        e,
                        ManagedLedgerError::Closed(_) | ManagedLedgerError::AppendsSuspended(_)
                    ) =>
            {
                StatusCode::SERVICE_UNAVAILABLE
            }
            BrokerError::ManagedLedger(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code and message of a Pulsar wire error for this failure.
    pub fn wire(&self) -> (ServerError, String) {
        (self.server_error(), self.to_string())
    }
}

/// The HTTP status of a metadata-store failure: retryable ones (unreachable, outcome
/// unknown, session lost, contention) are 503; the rest (corrupt record, invalid key) 500.
pub fn metadata_status(e: &MetadataError) -> StatusCode {
    match e {
        MetadataError::Unavailable(_)
        | MetadataError::Indeterminate(_)
        | MetadataError::SessionLost(_)
        | MetadataError::Contention { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_owner_is_retryable_service_not_ready() {
        assert_eq!(
            BrokerError::NotOwner("t".into()).server_error(),
            ServerError::ServiceNotReady
        );
        assert_eq!(
            BrokerError::ManagedLedger(ManagedLedgerError::Fenced("t".into())).server_error(),
            ServerError::ServiceNotReady
        );
        assert_eq!(
            BrokerError::ProducerBusy("t".into()).server_error(),
            ServerError::ProducerBusy
        );
        assert_eq!(
            BrokerError::ConsumerBusy("t".into()).server_error(),
            ServerError::ConsumerBusy
        );
    }

    #[test]
    fn http_statuses_keep_500_for_the_brokers_own_failures() {
        let retryable = [
            BrokerError::NotReady("t".into()),
            BrokerError::NotOwner("t".into()),
            BrokerError::Metadata(MetadataError::Unavailable("down".into())),
            BrokerError::ManagedLedger(ManagedLedgerError::Fenced("t".into())),
            BrokerError::ManagedLedger(ManagedLedgerError::Closed("t".into())),
        ];
        for e in retryable {
            assert_eq!(e.http_status(), StatusCode::SERVICE_UNAVAILABLE, "{e}");
            assert_eq!(
                e.server_error(),
                match e {
                    BrokerError::Metadata(_) => ServerError::MetadataError,
                    _ => ServerError::ServiceNotReady,
                }
            );
        }
        // A client's mistake is a 4xx, never a 500.
        for e in [
            BrokerError::TopicNotFound("t".into()),
            BrokerError::ConsumerNotFound(1),
            BrokerError::ProducerBusy("t".into()),
            BrokerError::IncompatibleSchema("x".into()),
            BrokerError::NotAllowed("x".into()),
            BrokerError::Checksum("x".into()),
            BrokerError::SchemaNotFound("t".into()),
        ] {
            assert!(
                e.http_status().is_client_error(),
                "{e}: {}",
                e.http_status()
            );
        }
        assert_eq!(
            BrokerError::Checksum("x".into()).server_error(),
            ServerError::ChecksumError
        );
        assert_eq!(
            BrokerError::SchemaNotFound("t".into()).to_string(),
            "Topic not found or no-schema t"
        );
    }
}
