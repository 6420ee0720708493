//! [`ConsumerSink`]: how a subscription reaches one consumer's client — the seam between
//! dispatch and the wire. The protocol connection implements it (`connection::ConnTx`); unit
//! tests use a recording sink. Nothing here may wait on the client: a dispatcher that waited
//! on one slow client would hold up every other consumer of its subscription.

use std::fmt;
use std::sync::Arc;

use magnetar_proto::pulsar::MessageFrame;
use magnetar_proto::pulsar::api::BaseCommand;
use tokio::sync::Notify;

/// Why a MESSAGE was not queued (see [`ConsumerSink::try_deliver`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// The client's queue is full: it is not reading fast enough. (The frame is dropped: the
    /// entry is delivered again from the subscription's redelivery set.)
    Full,
    /// The client is gone.
    Closed,
}

/// One consumer's client, as a subscription sees it.
pub trait ConsumerSink: Send + Sync + fmt::Debug + 'static {
    /// Queues a MESSAGE only if there is room now.
    fn try_deliver(&self, frame: MessageFrame) -> Result<(), NotQueued>;

    /// Asks for `wake` to be notified once there is room again. Returns true when there is
    /// room already (the caller retries now: the queue may have drained before the call).
    fn notify_when_writable(&self, wake: &Arc<Notify>) -> bool;

    /// Queues a control command (ACTIVE_CONSUMER_CHANGE, CLOSE_CONSUMER) without waiting.
    fn send_control(&self, command: BaseCommand);
}
