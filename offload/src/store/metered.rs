//! `MeteredStore`: counts an object store's requests and bytes by kind, for the offload
//! benchmark's "requests and bytes per message read" and for metrics. Counting only; it changes
//! no request.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// Requests and bytes so far.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub get_requests: AtomicU64,
    pub get_bytes: AtomicU64,
    pub put_requests: AtomicU64,
    pub put_bytes: AtomicU64,
    pub part_requests: AtomicU64,
    pub part_bytes: AtomicU64,
    pub list_requests: AtomicU64,
    pub delete_requests: AtomicU64,
    pub failed_requests: AtomicU64,
}

/// A copy of [`StoreCounters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub get_requests: u64,
    pub get_bytes: u64,
    pub put_requests: u64,
    pub put_bytes: u64,
    pub part_requests: u64,
    pub part_bytes: u64,
    pub list_requests: u64,
    pub delete_requests: u64,
    pub failed_requests: u64,
}

impl StoreCounters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            get_requests: l(&self.get_requests),
            get_bytes: l(&self.get_bytes),
            put_requests: l(&self.put_requests),
            put_bytes: l(&self.put_bytes),
            part_requests: l(&self.part_requests),
            part_bytes: l(&self.part_bytes),
            list_requests: l(&self.list_requests),
            delete_requests: l(&self.delete_requests),
            failed_requests: l(&self.failed_requests),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<StoreCounters>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        MeteredStore {
            inner,
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> Arc<StoreCounters> {
        Arc::clone(&self.counters)
    }

    fn outcome<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            add(&self.counters.failed_requests, 1);
        }
        r
    }
}

impl fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metered({})", self.inner)
    }
}

impl fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeteredStore({:?})", self.inner)
    }
}

#[derive(Debug)]
struct MeteredUpload {
    inner: Box<dyn MultipartUpload>,
    counters: Arc<StoreCounters>,
}

#[async_trait]
impl MultipartUpload for MeteredUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        add(&self.counters.part_requests, 1);
        add(&self.counters.part_bytes, data.content_length() as u64);
        let counters = Arc::clone(&self.counters);
        self.inner
            .put_part(data)
            .map(move |r| {
                if r.is_err() {
                    add(&counters.failed_requests, 1);
                }
                r
            })
            .boxed()
    }

    async fn complete(&mut self) -> Result<PutResult> {
        add(&self.counters.put_requests, 1);
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        add(&self.counters.delete_requests, 1);
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        add(&self.counters.put_requests, 1);
        add(&self.counters.put_bytes, payload.content_length() as u64);
        let r = self.inner.put_opts(location, payload, opts).await;
        self.outcome(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        add(&self.counters.put_requests, 1);
        let inner = self.outcome(self.inner.put_multipart_opts(location, opts).await)?;
        Ok(Box::new(MeteredUpload {
            inner,
            counters: Arc::clone(&self.counters),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        add(&self.counters.get_requests, 1);
        let r = self.outcome(self.inner.get_opts(location, options).await)?;
        add(&self.counters.get_bytes, r.range.end - r.range.start);
        Ok(r)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        // The inner store's default coalesces ranges into `get_opts` calls of its own; counted
        // here as one request per range asked for.
        add(&self.counters.get_requests, ranges.len() as u64);
        let r = self.outcome(self.inner.get_ranges(location, ranges).await)?;
        add(
            &self.counters.get_bytes,
            r.iter().map(|b| b.len() as u64).sum(),
        );
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let counters = Arc::clone(&self.counters);
        let counted = locations
            .inspect(move |_| add(&counters.delete_requests, 1))
            .boxed();
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        add(&self.counters.list_requests, 1);
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        add(&self.counters.list_requests, 1);
        let r = self.inner.list_with_delimiter(prefix).await;
        self.outcome(r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        add(&self.counters.put_requests, 1);
        let r = self.inner.copy_opts(from, to, options).await;
        self.outcome(r)
    }
}
