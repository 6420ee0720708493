//! Writing one closed ledger as its two objects, and reading them back to verify.
//!
//! The data object streams from the entries' source into a multipart upload: parts of
//! `part_size_bytes` (at least S3's 5 MiB minimum, raised for huge ledgers so no upload needs
//! more than S3's 10,000 parts), up to `parallel_parts` in flight. A ledger smaller than one
//! part is one plain PUT. A failed upload is aborted (no parts left behind), and the caller
//! retries it whole under a new attempt id. The index object follows in one PUT.
//!
//! `verify` reads both back: the index must decode and match, the data object must have the
//! length and CRC32C computed while uploading. Only then may the caller mark the ledger
//! offloaded.

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use magnetar_metadata::LedgerId;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, PutPayloadMut, WriteMultipart};

use crate::error::{OffloadError, OffloadResult};
use crate::format::{self, Index};
use crate::store::OffloadStore;

/// S3's smallest part (but the last).
pub const PART_SIZE_BYTES_MIN: usize = 5 * 1024 * 1024;
/// S3's most parts per upload; parts grow so a ledger never needs more.
const PARTS_MAX: u64 = 9_000;

/// The two objects of one offload attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectNames {
    pub data: Path,
    pub index: Path,
}

impl ObjectNames {
    /// `{prefix}/{managed ledger}/{ledger}/{attempt}.data` and `.index`: everything of one
    /// managed ledger under one prefix (topic deletion lists it), every attempt's objects apart
    /// (a failed attempt never overwrites, and is never mistaken for, a complete one).
    pub fn new(prefix: &Path, managed_ledger: &str, ledger: LedgerId, attempt: &str) -> Self {
        let dir = ledger_dir(prefix, managed_ledger, ledger);
        ObjectNames {
            data: dir.clone().join(format!("{attempt}.data")),
            index: dir.join(format!("{attempt}.index")),
        }
    }
}

/// Where every object of a managed ledger lives.
pub fn managed_ledger_dir(prefix: &Path, managed_ledger: &str) -> Path {
    managed_ledger
        .split('/')
        .filter(|s| !s.is_empty())
        .fold(prefix.clone(), |p, part| p.join(part))
}

/// Where every attempt of one ledger lives.
pub fn ledger_dir(prefix: &Path, managed_ledger: &str, ledger: LedgerId) -> Path {
    managed_ledger_dir(prefix, managed_ledger).join(ledger.to_string())
}

/// How uploads are cut.
#[derive(Clone, Copy, Debug)]
pub struct UploadOptions {
    pub part_size_bytes: usize,
    pub parallel_parts: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            part_size_bytes: 64 * 1024 * 1024,
            parallel_parts: 4,
        }
    }
}

/// What an upload wrote.
#[derive(Clone, Debug)]
pub struct Uploaded {
    pub index: Index,
    pub index_bytes: u64,
}

/// Uploads ledger `ledger` (`entries` entries, `size_hint_bytes` of payload) from `source`,
/// which yields `(entry id, payload)` in order from 0.
pub async fn upload_ledger<S>(
    store: &OffloadStore,
    names: &ObjectNames,
    ledger: LedgerId,
    entries: u64,
    size_hint_bytes: u64,
    source: S,
    opts: UploadOptions,
) -> OffloadResult<Uploaded>
where
    S: Stream<Item = OffloadResult<(u64, Bytes)>> + Send,
{
    let part_size = (opts.part_size_bytes.max(PART_SIZE_BYTES_MIN) as u64)
        .max(size_hint_bytes.div_ceil(PARTS_MAX)) as usize;
    let mut writer = DataWriter::new(store, names.data.clone(), part_size, opts.parallel_parts);
    let header = format::data_header(ledger, entries);
    let mut crc = crc32c::crc32c(&header);
    let mut offset = header.len() as u64;
    let mut offsets = Vec::with_capacity(usize::try_from(entries).unwrap_or(0) + 1);
    let mut payload_bytes = 0u64;
    let result = async {
        writer.put(header).await?;
        let mut source = std::pin::pin!(source);
        while let Some(item) = source.next().await {
            let (entry, payload) = item?;
            if entry != offsets.len() as u64 {
                return Err(OffloadError::Source(format!(
                    "ledger {ledger}: entry {entry} came where {} was due",
                    offsets.len()
                )));
            }
            let head = format::record_header(entry, &payload)?;
            crc = crc32c::crc32c_append(crc, &head);
            crc = crc32c::crc32c_append(crc, &payload);
            offsets.push(offset);
            offset += head.len() as u64 + payload.len() as u64;
            payload_bytes += payload.len() as u64;
            writer.put(Bytes::copy_from_slice(&head)).await?;
            writer.put(payload).await?;
        }
        if offsets.len() as u64 != entries {
            return Err(OffloadError::Source(format!(
                "ledger {ledger}: the source ended after {} of {entries} entries",
                offsets.len()
            )));
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        writer.abort().await;
        return Err(e);
    }
    writer.finish().await?;
    magnetar_metadata::crash_point::reached(magnetar_metadata::crash_point::OFFLOAD_DATA_WRITTEN);
    offsets.push(offset);
    let index = Index::new(ledger, offsets, payload_bytes, crc);
    let encoded = index.encode();
    let index_bytes = encoded.len() as u64;
    store
        .object_store()
        .put(&names.index, PutPayload::from_bytes(encoded))
        .await
        .map_err(|e| store.error("put", &names.index, e))?;
    Ok(Uploaded { index, index_bytes })
}

/// The data object being written: buffered until one part is full, then a multipart upload.
enum Writing {
    Buffering(PutPayloadMut),
    Multipart(WriteMultipart),
}

struct DataWriter<'a> {
    store: &'a OffloadStore,
    path: Path,
    part_size: usize,
    parallel_parts: usize,
    state: Option<Writing>,
}

impl<'a> DataWriter<'a> {
    fn new(store: &'a OffloadStore, path: Path, part_size: usize, parallel_parts: usize) -> Self {
        DataWriter {
            store,
            path,
            part_size,
            parallel_parts: parallel_parts.max(1),
            state: Some(Writing::Buffering(PutPayloadMut::new())),
        }
    }

    fn err(&self, op: &'static str, e: object_store::Error) -> OffloadError {
        self.store.error(op, &self.path, e)
    }

    async fn put(&mut self, bytes: Bytes) -> OffloadResult<()> {
        match self.state.take() {
            Some(Writing::Buffering(mut buf)) => {
                buf.push(bytes);
                if buf.content_length() < self.part_size {
                    self.state = Some(Writing::Buffering(buf));
                    return Ok(());
                }
                let upload = self
                    .store
                    .object_store()
                    .put_multipart(&self.path)
                    .await
                    .map_err(|e| self.err("create multipart upload", e))?;
                let mut w = WriteMultipart::new_with_chunk_size(upload, self.part_size);
                for chunk in buf.freeze() {
                    w.put(chunk);
                }
                self.state = Some(Writing::Multipart(w));
                Ok(())
            }
            Some(Writing::Multipart(mut w)) => {
                // Bounded memory: wait while `parallel_parts` parts are in flight.
                let ready = w.wait_for_capacity(self.parallel_parts).await;
                if let Err(e) = ready {
                    let _ = w.abort().await;
                    return Err(self.err("upload part", e));
                }
                w.put(bytes);
                self.state = Some(Writing::Multipart(w));
                Ok(())
            }
            None => Err(OffloadError::Source("upload already failed".to_owned())),
        }
    }

    async fn finish(mut self) -> OffloadResult<()> {
        match self.state.take() {
            Some(Writing::Buffering(buf)) => self
                .store
                .object_store()
                .put(&self.path, buf.freeze())
                .await
                .map(|_| ())
                .map_err(|e| self.err("put", e)),
            Some(Writing::Multipart(w)) => w
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| self.err("complete multipart upload", e)),
            None => Err(OffloadError::Source("upload already failed".to_owned())),
        }
    }

    async fn abort(mut self) {
        if let Some(Writing::Multipart(w)) = self.state.take()
            && let Err(e) = w.abort().await
        {
            tracing::warn!(path = %self.path, error = %e,
                "aborting a failed multipart upload failed; the cleaner removes its parts' object");
        }
    }
}

/// Reads both objects back and checks them against what was uploaded.
pub async fn verify(
    store: &OffloadStore,
    names: &ObjectNames,
    uploaded: &Index,
) -> OffloadResult<()> {
    let ledger = uploaded.ledger;
    let corrupt = |what: String| OffloadError::Corrupt { ledger, what };
    let os = store.object_store();
    let raw_index = os
        .get(&names.index)
        .await
        .map_err(|e| store.error("get", &names.index, e))?
        .bytes()
        .await
        .map_err(|e| store.error("get", &names.index, e))?;
    let index = Index::decode(ledger, &raw_index)?;
    if index != *uploaded {
        return Err(corrupt(
            "the index read back differs from the one uploaded".to_owned(),
        ));
    }
    let got = os
        .get(&names.data)
        .await
        .map_err(|e| store.error("get", &names.data, e))?;
    let (crc, len) = got
        .into_stream()
        .try_fold((0u32, 0u64), |(crc, len), chunk| async move {
            Ok((crc32c::crc32c_append(crc, &chunk), len + chunk.len() as u64))
        })
        .await
        .map_err(|e| store.error("get", &names.data, e))?;
    if len != index.data_bytes || crc != index.data_crc32c {
        return Err(corrupt(format!(
            "the data object read back has {len} bytes, CRC32C {crc:08x}; uploaded {} bytes, \
             CRC32C {:08x}",
            index.data_bytes, index.data_crc32c
        )));
    }
    Ok(())
}
