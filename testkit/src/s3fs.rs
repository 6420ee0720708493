//! An S3-compatible server inside the test process: s3s-fs (S3 over a directory, on s3s and
//! hyper) listening on a free port of 127.0.0.1, with TCP_NODELAY on accepted sockets and
//! SigV4 signatures checked against one key pair. It runs on a runtime of its own (its own
//! threads, as a separate server would), stopped on drop.
//!
//! moto ([`crate::s3`]) is the reference server of the tests; this one is for measurements,
//! where moto's per-request cost (a Python server) would be what is measured. s3s-fs itself
//! serves a GET as a stream of 4 KiB file reads, each a trip through tokio's blocking pool
//! (~200 MB/s here, whatever the client does); [`RangedReads`] serves GETs with one
//! positioned read instead and passes every other request to s3s-fs unchanged.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio_util::sync::CancellationToken;

/// Worker threads of the server's runtime.
const SERVER_THREADS: usize = 2;

#[derive(Debug)]
pub struct InProcessS3 {
    addr: SocketAddr,
    root: PathBuf,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The temporary root of a test's server (removed on drop).
    _dir: Option<tempfile::TempDir>,
}

impl InProcessS3 {
    /// Starts the server (GETs by [`RangedReads`]); requests must be signed with
    /// `access_key`/`secret_key`.
    pub fn start(access_key: &str, secret_key: &str) -> Result<InProcessS3> {
        Self::start_with(access_key, secret_key, true)
    }

    /// … with `ranged_reads: false`, s3s-fs as it is.
    pub fn start_with(
        access_key: &str,
        secret_key: &str,
        ranged_reads: bool,
    ) -> Result<InProcessS3> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().to_path_buf();
        let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut server = Self::serve(listen, root, access_key, secret_key, ranged_reads)?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Serves the directory `root` on `listen` (the `magnetar-s3-dev` binary: a local
    /// cluster's object store), until dropped.
    pub fn serve(
        listen: SocketAddr,
        root: PathBuf,
        access_key: &str,
        secret_key: &str,
        ranged_reads: bool,
    ) -> Result<InProcessS3> {
        let fs = s3s_fs::FileSystem::new(&root)
            .map_err(|e| anyhow::anyhow!("s3s-fs over {}: {e:?}", root.display()))?;
        let mut builder = if ranged_reads {
            S3ServiceBuilder::new(RangedReads {
                inner: fs,
                root: root.clone(),
            })
        } else {
            S3ServiceBuilder::new(fs)
        };
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let service = builder.build();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(SERVER_THREADS)
            .thread_name("s3s-fs")
            .enable_all()
            .build()?;
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("s3s-fs-accept".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                        return;
                    };
                    let http = ConnBuilder::new(TokioExecutor::new());
                    loop {
                        let socket = tokio::select! {
                            () = stopped.cancelled() => return,
                            accepted = listener.accept() => match accepted {
                                Ok((socket, _)) => socket,
                                Err(_) => continue,
                            },
                        };
                        let _ = socket.set_nodelay(true);
                        let conn = http
                            .serve_connection(TokioIo::new(socket), service.clone())
                            .into_owned();
                        let stopped = stopped.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                () = stopped.cancelled() => {}
                                _ = conn => {}
                            }
                        });
                    }
                });
            })?;
        Ok(InProcessS3 {
            addr,
            root,
            stop,
            thread: Some(thread),
            _dir: None,
        })
    }

    /// `http://ADDRESS:PORT` it listens on.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A bucket is a directory of the server's root.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        std::fs::create_dir_all(self.root.join(name))
            .with_context(|| format!("creating bucket {name}"))
    }
}

impl Drop for InProcessS3 {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// s3s-fs with GETs served by one positioned read of the wanted range.
struct RangedReads {
    inner: s3s_fs::FileSystem,
    root: PathBuf,
}

fn read_range(
    path: &std::path::Path,
    range: Option<s3s::dto::Range>,
) -> s3s::S3Result<(
    bytes::Bytes,
    u64,
    std::ops::Range<u64>,
    std::time::SystemTime,
)> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path).map_err(|_| s3s::s3_error!(NoSuchKey))?;
    let meta = file
        .metadata()
        .map_err(|e| s3s::S3Error::with_message(s3s::S3ErrorCode::InternalError, e.to_string()))?;
    let len = meta.len();
    let wanted = match range {
        Some(r) => r.check(len)?,
        None => 0..len,
    };
    let internal = |e: std::io::Error| {
        s3s::S3Error::with_message(s3s::S3ErrorCode::InternalError, e.to_string())
    };
    // Read into spare capacity: no zeroing of a buffer about to be overwritten.
    let n = wanted.end - wanted.start;
    let mut buf = Vec::with_capacity(n as usize);
    file.seek(std::io::SeekFrom::Start(wanted.start))
        .map_err(internal)?;
    file.take(n).read_to_end(&mut buf).map_err(internal)?;
    if buf.len() as u64 != n {
        return Err(internal(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
    Ok((bytes::Bytes::from(buf), len, wanted, modified))
}

#[async_trait::async_trait]
impl s3s::S3 for RangedReads {
    async fn get_object(
        &self,
        req: s3s::S3Request<s3s::dto::GetObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::GetObjectOutput>> {
        let input = req.input;
        if input.key.split('/').any(|p| p == ".." || p == ".") {
            return Err(s3s::s3_error!(InvalidArgument, "key"));
        }
        let path = self.root.join(&input.bucket).join(&input.key);
        let range = input.range;
        let (body, len, wanted, modified) =
            tokio::task::spawn_blocking(move || read_range(&path, range))
                .await
                .map_err(|e| {
                    s3s::S3Error::with_message(s3s::S3ErrorCode::InternalError, e.to_string())
                })??;
        let mtime_ns = modified
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let content_length = (wanted.end - wanted.start) as i64;
        let output = s3s::dto::GetObjectOutput {
            body: Some(s3s::dto::StreamingBlob::wrap(futures::stream::iter([
                Ok::<_, std::io::Error>(body),
            ]))),
            content_length: Some(content_length),
            content_range: range.map(|_| {
                format!(
                    "bytes {}-{}/{len}",
                    wanted.start,
                    wanted.end.saturating_sub(1)
                )
            }),
            last_modified: Some(s3s::dto::Timestamp::from(modified)),
            e_tag: Some(s3s::dto::ETag::Strong(format!("{len:x}-{mtime_ns:x}"))),
            ..Default::default()
        };
        Ok(s3s::S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadObjectOutput>> {
        self.inner.head_object(req).await
    }

    async fn head_bucket(
        &self,
        req: s3s::S3Request<s3s::dto::HeadBucketInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadBucketOutput>> {
        self.inner.head_bucket(req).await
    }

    async fn put_object(
        &self,
        req: s3s::S3Request<s3s::dto::PutObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
        self.inner.put_object(req).await
    }

    async fn delete_object(
        &self,
        req: s3s::S3Request<s3s::dto::DeleteObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::DeleteObjectOutput>> {
        self.inner.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: s3s::S3Request<s3s::dto::DeleteObjectsInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::DeleteObjectsOutput>> {
        self.inner.delete_objects(req).await
    }

    async fn list_objects(
        &self,
        req: s3s::S3Request<s3s::dto::ListObjectsInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsOutput>> {
        self.inner.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
        self.inner.list_objects_v2(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: s3s::S3Request<s3s::dto::CreateMultipartUploadInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CreateMultipartUploadOutput>> {
        self.inner.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: s3s::S3Request<s3s::dto::UploadPartInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::UploadPartOutput>> {
        self.inner.upload_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: s3s::S3Request<s3s::dto::CompleteMultipartUploadInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CompleteMultipartUploadOutput>> {
        self.inner.complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: s3s::S3Request<s3s::dto::AbortMultipartUploadInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::AbortMultipartUploadOutput>> {
        self.inner.abort_multipart_upload(req).await
    }
}
