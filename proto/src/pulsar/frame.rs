//! Framing of the Pulsar binary protocol, and a [`tokio_util::codec`] codec for it. No I/O.
//!
//! Every frame starts with two big-endian `u32`s: `total_size` (the bytes after this field) and
//! `command_size`, followed by a protobuf [`BaseCommand`]:
//!
//! ```text
//! simple:  [total_size][command_size][BaseCommand]
//! payload: [total_size][command_size][BaseCommand]
//!          ([0x0e02][bem_size u32][BrokerEntryMetadata])      optional, broker-added (MESSAGE)
//!          [0x0e01 u16][crc32c u32][metadata_size u32][MessageMetadata][payload]
//! ```
//!
//! The CRC32C (Castagnoli) covers everything after the checksum field: `metadata_size`,
//! metadata and payload. Only SEND and MESSAGE carry a payload.
//!
//! **Entries are the client's bytes.** [`PulsarCodec`] decodes a payload frame into a [`Frame`]
//! whose [`Payload`] keeps the bytes after the command *unchanged*, as a zero-copy slice of the
//! read buffer; [`Payload::entry`] (from the `0x0e01` magic to the end) is what the broker stores
//! as the ledger entry. A consumer gets that entry back behind a `CommandMessage`
//! ([`MessageFrame`]) without re-encoding: through `FramedWrite` the entry is copied once into
//! the write buffer (that is how `Encoder` works), or with no copy at all by writing
//! [`MessageFrame::into_buf`] (a `Chain` of header and entry) with
//! `tokio::io::AsyncWriteExt::write_all_buf` / vectored writes.
//!
//! A bad checksum is **not** a decoding error — Pulsar answers such a SEND with a `SendError`
//! (`ChecksumError`) and keeps the connection — so it is reported by [`Payload::checksum_ok`].
//! Everything else malformed is a [`FrameError`], after which the connection should be closed.
//! Decoding never panics, whatever the input.

use std::ops::Range;

use bytes::buf::Chain;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

use super::api::base_command::Type;
use super::api::{BaseCommand, BrokerEntryMetadata, MessageMetadata};

/// Magic number before the checksum of a payload (`0x0e01`).
pub const MAGIC_CRC32C: u16 = 0x0e01;
/// Magic number before broker entry metadata (`0x0e02`).
pub const MAGIC_BROKER_ENTRY_METADATA: u16 = 0x0e02;
/// Protocol version Magnetar speaks and advertises in CONNECTED.
pub const PROTOCOL_VERSION: i32 = 21;
/// Default largest message (metadata + payload) a client may send: 5 MiB, as in Pulsar. The
/// broker advertises its value in CONNECTED (`max_message_size`).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 5 * 1024 * 1024;
/// Room for the command and headers on top of the message size (Pulsar uses 10 KiB).
pub const FRAME_HEADER_PADDING: usize = 10 * 1024;
/// Default largest frame, counting its 4-byte `total_size` field.
pub const DEFAULT_FRAME_SIZE_MAX: usize = DEFAULT_MAX_MESSAGE_SIZE + FRAME_HEADER_PADDING;

/// A malformed, oversized or unrepresentable frame. After a decoding error the byte stream can
/// no longer be trusted: close the connection (with the error as the logged reason).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame (including its `total_size` field) is larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Size of the frame, in bytes, counting the 4-byte `total_size` field.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// `total_size` is too small to hold even the `command_size` field.
    #[error("frame total_size {total_size} is too small for a command")]
    TooSmall {
        /// The `total_size` read.
        total_size: u32,
    },
    /// `command_size` points beyond the end of the frame.
    #[error("command_size {command_size} exceeds the {available} bytes left in the frame")]
    CommandSize {
        /// The `command_size` read.
        command_size: u32,
        /// Bytes of the frame after the `command_size` field.
        available: usize,
    },
    /// The `BaseCommand` is not valid protobuf.
    #[error("malformed BaseCommand: {0}")]
    Command(#[source] prost::DecodeError),
    /// The `BaseCommand.type` is not a known command type. (A *missing* type reads as CONNECT,
    /// the proto2 default, and then fails as [`MissingCommand`](Self::MissingCommand).)
    #[error("unknown BaseCommand type {0}")]
    UnknownCommandType(i32),
    /// The `BaseCommand` names a type but lacks the matching command field.
    #[error("BaseCommand of type {0:?} lacks its command")]
    MissingCommand(Type),
    /// A SEND or MESSAGE frame without a payload.
    #[error("{0:?} frame without a payload")]
    MissingPayload(Type),
    /// A command that carries no payload was followed by extra bytes.
    #[error("{command:?} frame carries {len} unexpected bytes after the command")]
    UnexpectedPayload {
        /// The command type.
        command: Type,
        /// Number of extra bytes.
        len: usize,
    },
    /// The payload does not start with a known magic number.
    #[error("bad magic number {found:#06x} (expected {expected:#06x})")]
    BadMagic {
        /// The two bytes found.
        found: u16,
        /// The magic number expected there.
        expected: u16,
    },
    /// The payload is shorter than its headers or size fields say.
    #[error("truncated payload: {0}")]
    TruncatedPayload(&'static str),
    /// `MessageMetadata` or `BrokerEntryMetadata` is not valid protobuf.
    #[error("malformed {what}: {source}")]
    Metadata {
        /// Which message failed.
        what: &'static str,
        /// The protobuf error.
        #[source]
        source: prost::DecodeError,
    },
    /// I/O error of the underlying transport (required by `tokio_util` codecs).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// One decoded frame: the command and, for SEND and MESSAGE, the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The command. Its type is known and its matching command field is present (checked by
    /// the decoder, except for the scalable-topic types whose bodies are not modelled).
    pub command: BaseCommand,
    /// The bytes after the command (SEND and MESSAGE only), unchanged.
    pub payload: Option<Payload>,
}

impl Frame {
    /// A frame without payload.
    pub fn command(command: BaseCommand) -> Self {
        Self {
            command,
            payload: None,
        }
    }

    /// A frame with a payload (SEND or MESSAGE).
    pub fn with_payload(command: BaseCommand, payload: Payload) -> Self {
        Self {
            command,
            payload: Some(payload),
        }
    }

    /// The command type. Frames from [`PulsarCodec::decode`] always have a known type; for
    /// hand-built frames an unknown value reads as the default (`CONNECT`).
    pub fn command_type(&self) -> Type {
        self.command.r#type()
    }
}

/// The bytes after the command of a SEND or MESSAGE frame, kept exactly as received, with the
/// positions of their parts. Cloning is cheap (reference-counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    raw: Bytes,
    broker_entry_metadata: Option<Range<usize>>,
    /// Offset in `raw` of the `0x0e01` magic.
    entry_start: usize,
    checksum: u32,
    metadata: Range<usize>,
}

impl Payload {
    /// Parses the layout of the bytes after a command. Checks magic numbers and sizes, not the
    /// checksum (see [`checksum_ok`](Self::checksum_ok)) nor the metadata protobuf (see
    /// [`metadata`](Self::metadata)).
    pub fn parse(raw: Bytes) -> Result<Self, FrameError> {
        let mut pos = 0usize;
        let mut broker_entry_metadata = None;
        if read_u16(&raw, pos) == Some(MAGIC_BROKER_ENTRY_METADATA) {
            let size = read_u32(&raw, pos + 2)
                .ok_or(FrameError::TruncatedPayload("broker entry metadata size"))?;
            let start = pos + 6;
            let end = start
                .checked_add(size as usize)
                .filter(|end| *end <= raw.len())
                .ok_or(FrameError::TruncatedPayload("broker entry metadata"))?;
            broker_entry_metadata = Some(start..end);
            pos = end;
        }
        let magic = read_u16(&raw, pos).ok_or(FrameError::TruncatedPayload("magic number"))?;
        if magic != MAGIC_CRC32C {
            return Err(FrameError::BadMagic {
                found: magic,
                expected: MAGIC_CRC32C,
            });
        }
        let entry_start = pos;
        let checksum = read_u32(&raw, pos + 2).ok_or(FrameError::TruncatedPayload("checksum"))?;
        let size = read_u32(&raw, pos + 6).ok_or(FrameError::TruncatedPayload("metadata size"))?;
        let start = pos + 10;
        let end = start
            .checked_add(size as usize)
            .filter(|end| *end <= raw.len())
            .ok_or(FrameError::TruncatedPayload("message metadata"))?;
        Ok(Self {
            raw,
            broker_entry_metadata,
            entry_start,
            checksum,
            metadata: start..end,
        })
    }

    /// Builds the payload of a frame the broker makes itself:
    /// `[0x0e01][crc32c][metadata_size][metadata][payload]`, checksum computed.
    pub fn new(metadata: &MessageMetadata, payload: &[u8]) -> Self {
        let meta_len = metadata.encoded_len();
        let mut buf = BytesMut::with_capacity(10 + meta_len + payload.len());
        buf.put_u16(MAGIC_CRC32C);
        buf.put_u32(0);
        buf.put_u32(saturating_u32(meta_len));
        // Encoding into a buffer with enough capacity cannot fail; BytesMut grows anyway.
        let _ = metadata.encode(&mut buf);
        buf.put_slice(payload);
        let crc = crc32c::crc32c(buf.get(6..).unwrap_or_default());
        if let Some(field) = buf.get_mut(2..6) {
            field.copy_from_slice(&crc.to_be_bytes());
        }
        let raw = buf.freeze();
        let metadata = 10..10 + meta_len;
        Self {
            raw,
            broker_entry_metadata: None,
            entry_start: 0,
            checksum: crc,
            metadata,
        }
    }

    /// Everything after the command, exactly as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The stored entry: from the `0x0e01` magic to the end, i.e. [`raw`](Self::raw) without
    /// broker entry metadata. For a SEND from a client this is the same as `raw`. (A slice of
    /// the read buffer: holding it keeps that buffer alive.)
    pub fn entry(&self) -> Bytes {
        self.raw.slice(self.entry_start..)
    }

    /// The checksum the sender wrote.
    pub fn checksum(&self) -> u32 {
        self.checksum
    }

    /// CRC32C of the bytes the checksum covers (metadata size, metadata, payload).
    pub fn computed_checksum(&self) -> u32 {
        crc32c::crc32c(self.raw.get(self.entry_start + 6..).unwrap_or_default())
    }

    /// Whether the sender's checksum matches the bytes. Computed on each call.
    pub fn checksum_ok(&self) -> bool {
        self.computed_checksum() == self.checksum
    }

    /// Range of the `MessageMetadata` protobuf within [`raw`](Self::raw).
    pub fn metadata_range(&self) -> Range<usize> {
        self.metadata.clone()
    }

    /// Range of the message payload (after the metadata) within [`raw`](Self::raw).
    pub fn payload_range(&self) -> Range<usize> {
        self.metadata.end..self.raw.len()
    }

    /// Range of the `BrokerEntryMetadata` protobuf within [`raw`](Self::raw), if present.
    pub fn broker_entry_metadata_range(&self) -> Option<Range<usize>> {
        self.broker_entry_metadata.clone()
    }

    /// The `MessageMetadata` bytes (zero-copy).
    pub fn metadata_bytes(&self) -> Bytes {
        self.raw.slice(self.metadata.clone())
    }

    /// The message payload bytes after the metadata (zero-copy; a batch or a single message,
    /// possibly compressed, as the producer sent it).
    pub fn payload(&self) -> Bytes {
        self.raw.slice(self.metadata.end..)
    }

    /// Decodes the `MessageMetadata`.
    pub fn metadata(&self) -> Result<MessageMetadata, FrameError> {
        MessageMetadata::decode(self.metadata_bytes()).map_err(|source| FrameError::Metadata {
            what: "MessageMetadata",
            source,
        })
    }

    /// Decodes the `BrokerEntryMetadata`, if present.
    pub fn broker_entry_metadata(&self) -> Option<Result<BrokerEntryMetadata, FrameError>> {
        let range = self.broker_entry_metadata.clone()?;
        Some(
            BrokerEntryMetadata::decode(self.raw.slice(range)).map_err(|source| {
                FrameError::Metadata {
                    what: "BrokerEntryMetadata",
                    source,
                }
            }),
        )
    }
}

/// Puts `[0x0e02][size][BrokerEntryMetadata]` in front of an entry. Pulsar brokers do this for
/// clients that announce `supports_broker_entry_metadata`; Magnetar does not, this exists for
/// tests and tools.
pub fn prepend_broker_entry_metadata(metadata: &BrokerEntryMetadata, entry: &[u8]) -> Bytes {
    let len = metadata.encoded_len();
    let mut buf = BytesMut::with_capacity(6 + len + entry.len());
    buf.put_u16(MAGIC_BROKER_ENTRY_METADATA);
    buf.put_u32(saturating_u32(len));
    let _ = metadata.encode(&mut buf);
    buf.put_slice(entry);
    buf.freeze()
}

/// A MESSAGE frame for dispatch: a `BaseCommand` (type MESSAGE) and a stored entry, which is
/// framed as is (it already starts with `0x0e01` and its checksum).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageFrame {
    /// The MESSAGE command (see [`super::commands::message`]).
    pub command: BaseCommand,
    /// The stored entry: the bytes after the SEND command as the producer sent them.
    pub entry: Bytes,
}

impl MessageFrame {
    /// Encodes the sizes and the command into a header and returns it chained with the entry,
    /// for writing with `write_all_buf` or vectored I/O: the entry is never copied.
    pub fn into_buf(self, frame_size_max: usize) -> Result<Chain<Bytes, Bytes>, FrameError> {
        let mut header = BytesMut::new();
        encode_header(&self.command, self.entry.len(), frame_size_max, &mut header)?;
        Ok(header.freeze().chain(self.entry))
    }
}

/// The Pulsar frame codec. `frame_size_max` bounds whole frames (counting the 4-byte
/// `total_size` field) in both directions; a larger frame is [`FrameError::TooLarge`], found
/// from its first 4 bytes, before anything is buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PulsarCodec {
    /// Largest frame accepted or produced, in bytes.
    pub frame_size_max: usize,
}

impl Default for PulsarCodec {
    fn default() -> Self {
        Self {
            frame_size_max: DEFAULT_FRAME_SIZE_MAX,
        }
    }
}

impl PulsarCodec {
    /// A codec for messages of up to `max_message_size` bytes (plus
    /// [`FRAME_HEADER_PADDING`] for the command and headers).
    pub fn for_max_message_size(max_message_size: usize) -> Self {
        Self {
            frame_size_max: max_message_size.saturating_add(FRAME_HEADER_PADDING),
        }
    }
}

impl Decoder for PulsarCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(total_size) = read_u32(src, 0) else {
            return Ok(None);
        };
        let frame_len = (total_size as usize).saturating_add(4);
        if frame_len > self.frame_size_max {
            return Err(FrameError::TooLarge {
                size: frame_len,
                max: self.frame_size_max,
            });
        }
        if total_size < 4 {
            return Err(FrameError::TooSmall { total_size });
        }
        if src.len() < frame_len {
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(frame_len).freeze();
        let command_size = read_u32(&frame, 4).ok_or(FrameError::TooSmall { total_size })?;
        // frame_len >= 8 was checked above.
        frame.advance(8);
        if command_size as usize > frame.len() {
            return Err(FrameError::CommandSize {
                command_size,
                available: frame.len(),
            });
        }
        let command_bytes = frame.split_to(command_size as usize);
        let command = BaseCommand::decode(command_bytes).map_err(FrameError::Command)?;
        let ty = Type::try_from(command.r#type)
            .map_err(|_| FrameError::UnknownCommandType(command.r#type))?;
        if !has_command(&command, ty) {
            return Err(FrameError::MissingCommand(ty));
        }
        let payload = match ty {
            Type::Send | Type::Message => {
                if frame.is_empty() {
                    return Err(FrameError::MissingPayload(ty));
                }
                Some(Payload::parse(frame)?)
            }
            _ if !frame.is_empty() => {
                return Err(FrameError::UnexpectedPayload {
                    command: ty,
                    len: frame.len(),
                });
            }
            _ => None,
        };
        Ok(Some(Frame { command, payload }))
    }
}

impl Encoder<Frame> for PulsarCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let raw = frame.payload.as_ref().map(Payload::raw);
        let payload_len = raw.map_or(0, Bytes::len);
        encode_header(&frame.command, payload_len, self.frame_size_max, dst)?;
        if let Some(raw) = raw {
            dst.extend_from_slice(raw);
        }
        Ok(())
    }
}

impl Encoder<BaseCommand> for PulsarCodec {
    type Error = FrameError;

    fn encode(&mut self, command: BaseCommand, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_header(&command, 0, self.frame_size_max, dst)
    }
}

/// Through `FramedWrite` the entry is copied once into the write buffer (no re-encoding);
/// [`MessageFrame::into_buf`] avoids even that copy.
impl Encoder<MessageFrame> for PulsarCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: MessageFrame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_header(&frame.command, frame.entry.len(), self.frame_size_max, dst)?;
        dst.extend_from_slice(&frame.entry);
        Ok(())
    }
}

/// Writes `[total_size][command_size][command]` for a frame whose bytes after the command are
/// `payload_len` long; the caller appends those bytes. Nothing is written on error.
pub fn encode_header(
    command: &BaseCommand,
    payload_len: usize,
    frame_size_max: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let command_len = command.encoded_len();
    let frame_len = command_len.saturating_add(payload_len).saturating_add(8);
    if frame_len > frame_size_max || u32::try_from(frame_len - 4).is_err() {
        return Err(FrameError::TooLarge {
            size: frame_len,
            max: frame_size_max,
        });
    }
    dst.reserve(frame_len);
    dst.put_u32(saturating_u32(frame_len - 4));
    dst.put_u32(saturating_u32(command_len));
    // Cannot fail: `BytesMut` grows as needed.
    let _ = command.encode(dst);
    Ok(())
}

/// Encodes a whole frame (command and optional payload) into a new buffer.
pub fn encode_frame(frame: &Frame, frame_size_max: usize) -> Result<Bytes, FrameError> {
    let mut dst = BytesMut::new();
    let raw = frame.payload.as_ref().map(Payload::raw);
    encode_header(
        &frame.command,
        raw.map_or(0, Bytes::len),
        frame_size_max,
        &mut dst,
    )?;
    if let Some(raw) = raw {
        dst.extend_from_slice(raw);
    }
    Ok(dst.freeze())
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes(bytes.try_into().ok()?))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Whether the command field matching `ty` is set. The scalable-topic and TC-assignment
/// commands (70..81) are not modelled: their bodies are skipped as unknown fields.
pub(crate) fn has_command(c: &BaseCommand, ty: Type) -> bool {
    match ty {
        Type::Connect => c.connect.is_some(),
        Type::Connected => c.connected.is_some(),
        Type::Subscribe => c.subscribe.is_some(),
        Type::Producer => c.producer.is_some(),
        Type::Send => c.send.is_some(),
        Type::SendReceipt => c.send_receipt.is_some(),
        Type::SendError => c.send_error.is_some(),
        Type::Message => c.message.is_some(),
        Type::Ack => c.ack.is_some(),
        Type::Flow => c.flow.is_some(),
        Type::Unsubscribe => c.unsubscribe.is_some(),
        Type::Success => c.success.is_some(),
        Type::Error => c.error.is_some(),
        Type::CloseProducer => c.close_producer.is_some(),
        Type::CloseConsumer => c.close_consumer.is_some(),
        Type::ProducerSuccess => c.producer_success.is_some(),
        Type::Ping => c.ping.is_some(),
        Type::Pong => c.pong.is_some(),
        Type::RedeliverUnacknowledgedMessages => c.redeliver_unacknowledged_messages.is_some(),
        Type::PartitionedMetadata => c.partition_metadata.is_some(),
        Type::PartitionedMetadataResponse => c.partition_metadata_response.is_some(),
        Type::Lookup => c.lookup_topic.is_some(),
        Type::LookupResponse => c.lookup_topic_response.is_some(),
        Type::ConsumerStats => c.consumer_stats.is_some(),
        Type::ConsumerStatsResponse => c.consumer_stats_response.is_some(),
        Type::ReachedEndOfTopic => c.reached_end_of_topic.is_some(),
        Type::Seek => c.seek.is_some(),
        Type::GetLastMessageId => c.get_last_message_id.is_some(),
        Type::GetLastMessageIdResponse => c.get_last_message_id_response.is_some(),
        Type::ActiveConsumerChange => c.active_consumer_change.is_some(),
        Type::GetTopicsOfNamespace => c.get_topics_of_namespace.is_some(),
        Type::GetTopicsOfNamespaceResponse => c.get_topics_of_namespace_response.is_some(),
        Type::GetSchema => c.get_schema.is_some(),
        Type::GetSchemaResponse => c.get_schema_response.is_some(),
        Type::AuthChallenge => c.auth_challenge.is_some(),
        Type::AuthResponse => c.auth_response.is_some(),
        Type::AckResponse => c.ack_response.is_some(),
        Type::GetOrCreateSchema => c.get_or_create_schema.is_some(),
        Type::GetOrCreateSchemaResponse => c.get_or_create_schema_response.is_some(),
        Type::NewTxn => c.new_txn.is_some(),
        Type::NewTxnResponse => c.new_txn_response.is_some(),
        Type::AddPartitionToTxn => c.add_partition_to_txn.is_some(),
        Type::AddPartitionToTxnResponse => c.add_partition_to_txn_response.is_some(),
        Type::AddSubscriptionToTxn => c.add_subscription_to_txn.is_some(),
        Type::AddSubscriptionToTxnResponse => c.add_subscription_to_txn_response.is_some(),
        Type::EndTxn => c.end_txn.is_some(),
        Type::EndTxnResponse => c.end_txn_response.is_some(),
        Type::EndTxnOnPartition => c.end_txn_on_partition.is_some(),
        Type::EndTxnOnPartitionResponse => c.end_txn_on_partition_response.is_some(),
        Type::EndTxnOnSubscription => c.end_txn_on_subscription.is_some(),
        Type::EndTxnOnSubscriptionResponse => c.end_txn_on_subscription_response.is_some(),
        Type::TcClientConnectRequest => c.tc_client_connect_request.is_some(),
        Type::TcClientConnectResponse => c.tc_client_connect_response.is_some(),
        Type::WatchTopicList => c.watch_topic_list.is_some(),
        Type::WatchTopicListSuccess => c.watch_topic_list_success.is_some(),
        Type::WatchTopicUpdate => c.watch_topic_update.is_some(),
        Type::WatchTopicListClose => c.watch_topic_list_close.is_some(),
        Type::TopicMigrated => c.topic_migrated.is_some(),
        Type::ScalableTopicLookup
        | Type::ScalableTopicUpdate
        | Type::ScalableTopicClose
        | Type::ScalableTopicSubscribe
        | Type::ScalableTopicSubscribeResponse
        | Type::ScalableTopicAssignmentUpdate
        | Type::WatchScalableTopics
        | Type::WatchScalableTopicsUpdate
        | Type::WatchScalableTopicsClose
        | Type::WatchTcAssignments
        | Type::WatchTcAssignmentsUpdate
        | Type::WatchTcAssignmentsClose => true,
    }
}
