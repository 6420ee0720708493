//! `FaultyStore`: injects object-store failures for tests — a store that is down, failing
//! puts, parts or gets, slow gets — behind the same trait, so the code under test is the code
//! that runs in production. Faults are set and cleared at run time through [`Faults`].

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use magnetar_metadata::clock::Clock;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// The faults a [`FaultyStore`] injects now.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every request fails, as with a store that cannot be reached.
    pub down: AtomicBool,
    /// The next this-many single puts (and multipart completions) fail.
    pub fail_puts: AtomicU32,
    /// The next this-many multipart parts fail.
    pub fail_parts: AtomicU32,
    /// The next this-many gets fail.
    pub fail_gets: AtomicU32,
    /// Every get waits this long first.
    pub get_delay_ms: AtomicU64,
    /// Gets that began (tests wait on it to act while one is in flight).
    pub gets_started: AtomicU64,
}

impl Faults {
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn check(&self, what: &'static str, counter: Option<&AtomicU32>) -> Result<()> {
        if self.down.load(Ordering::SeqCst) || counter.is_some_and(Faults::take) {
            return Err(injected(what));
        }
        Ok(())
    }
}

fn injected(what: &'static str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected failure of {what} (503 Service Unavailable)").into(),
    }
}

pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Arc<Faults>,
    clock: Arc<dyn Clock>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, clock: Arc<dyn Clock>) -> Self {
        FaultyStore {
            inner,
            faults: Arc::default(),
            clock,
        }
    }

    pub fn faults(&self) -> Arc<Faults> {
        Arc::clone(&self.faults)
    }

    async fn before_get(&self) -> Result<()> {
        self.faults.gets_started.fetch_add(1, Ordering::SeqCst);
        let delay = self.faults.get_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            self.clock.sleep(Duration::from_millis(delay)).await;
        }
        self.faults.check("get", Some(&self.faults.fail_gets))
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({:?})", self.inner)
    }
}

#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    faults: Arc<Faults>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        if let Err(e) = self.faults.check("part", Some(&self.faults.fail_parts)) {
            return async move { Err(e) }.boxed();
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.faults
            .check("complete multipart upload", Some(&self.faults.fail_puts))?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.faults.check("abort multipart upload", None)?;
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.faults.check("put", Some(&self.faults.fail_puts))?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.faults.check("create multipart upload", None)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            faults: Arc::clone(&self.faults),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.before_get().await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.before_get().await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        if self.faults.down.load(Ordering::SeqCst) {
            return locations.map(|_| Err(injected("delete"))).boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if let Err(e) = self.faults.check("list", None) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.faults.check("list", None)?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.faults.check("copy", None)?;
        self.inner.copy_opts(from, to, options).await
    }
}
