//! `RetryingStore`: retries an object store's single-shot requests that failed transiently,
//! with exponential backoff and jitter, sleeping on the injected clock.
//!
//! The cloud drivers of object_store already retry each HTTP request (their `RetryConfig`);
//! this wrapper adds the same for every driver and across what those retries give up on
//! (a store down for longer than one request's budget). Streams (list, delete) and multipart
//! parts are not retried here: a part's `UploadPart` future cannot re-issue itself, so a failed
//! upload is retried whole by the offloader, under a new attempt id.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use futures::stream::BoxStream;
use magnetar_metadata::clock::Clock;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use crate::error::store_error_is_retryable;

/// How a [`RetryingStore`] backs off.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub attempts_max: usize,
    pub delay_min: Duration,
    pub delay_max: Duration,
    /// Seed of the jitter, so a simulation replays exactly.
    pub jitter_seed: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_max: 5,
            delay_min: Duration::from_millis(100),
            delay_max: Duration::from_secs(5),
            jitter_seed: 0x6d61_676e,
        }
    }
}

pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    clock: Arc<dyn Clock>,
}

impl RetryingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy, clock: Arc<dyn Clock>) -> Self {
        RetryingStore {
            inner,
            policy,
            clock,
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.policy.delay_min)
            .with_max_delay(self.policy.delay_max)
            .with_max_times(self.policy.attempts_max.saturating_sub(1))
            .with_jitter_seed(self.policy.jitter_seed)
            .with_jitter()
    }
}

/// One request, retried while it fails transiently and the backoff has delays left.
macro_rules! retrying {
    ($self:ident, $op:expr, $location:expr, $call:expr) => {{
        let mut delays = $self.backoff().build();
        loop {
            match $call.await {
                Ok(v) => break Ok(v),
                Err(e) if store_error_is_retryable(&e) => match delays.next() {
                    Some(after) => {
                        tracing::warn!(op = $op, path = %$location, error = %e,
                            retry_in_ms = after.as_millis() as u64,
                            "object store request failed; retrying");
                        $self.clock.sleep(after).await;
                    }
                    None => break Err(e),
                },
                Err(e) => break Err(e),
            }
        }
    }};
}

impl fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retrying({})", self.inner)
    }
}

impl fmt::Debug for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetryingStore({:?})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        retrying!(
            self,
            "put",
            location,
            self.inner.put_opts(location, payload.clone(), opts.clone())
        )
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        retrying!(
            self,
            "create multipart upload",
            location,
            self.inner.put_multipart_opts(location, opts.clone())
        )
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        retrying!(
            self,
            "get",
            location,
            self.inner.get_opts(location, options.clone())
        )
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        retrying!(
            self,
            "get ranges",
            location,
            self.inner.get_ranges(location, ranges)
        )
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        retrying!(self, "list", &at, self.inner.list_with_delimiter(prefix))
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        retrying!(
            self,
            "copy",
            from,
            self.inner.copy_opts(from, to, options.clone())
        )
    }
}
