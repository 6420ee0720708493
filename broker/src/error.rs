//! [`BrokerError`]: everything a client request can fail with, mapped **once** to the Pulsar
//! [`ServerError`] code the official clients understand ([`BrokerError::server_error`]).
//!
//! The mapping respects the client traps of DESIGN decision 1: a topic this broker does not own
//! is `ServiceNotReady` (the client retries the lookup), never a fatal code; a second exclusive
//! producer or consumer is `ProducerBusy` / `ConsumerBusy` at once.

use magnetar_metadata::MetadataError;
use magnetar_proto::pulsar::api::ServerError;

use crate::managed_ledger::ManagedLedgerError;
use crate::policies::PolicyError;
use crate::topic_name::NameError;

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
            BrokerError::TopicNotFound(_) | BrokerError::NamespaceNotFound(_) => {
                ServerError::TopicNotFound
            }
            BrokerError::ProducerBusy(_) => ServerError::ProducerBusy,
            BrokerError::ProducerFenced(_) => ServerError::ProducerFenced,
            BrokerError::ConsumerBusy(_) => ServerError::ConsumerBusy,
            BrokerError::ConsumerAssign(_) => ServerError::ConsumerAssignError,
            BrokerError::SubscriptionNotFound(_) => ServerError::SubscriptionNotFound,
            BrokerError::IncompatibleSchema(_) => ServerError::IncompatibleSchema,
            BrokerError::ConsumerNotFound(_) => ServerError::ConsumerNotFound,
            BrokerError::NotAllowed(_) | BrokerError::Unsupported(_) => {
                ServerError::NotAllowedError
            }
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
}
