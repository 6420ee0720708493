//! Watches on etcd that outlive the member serving them: when the watch stream breaks (member
//! killed, connection reset, member lost its leader) the watch is opened again on another member
//! from the revision after the last one delivered, so the consumer sees every change exactly once
//! and in order. History compacted away ends the stream with [`MetadataError::Compacted`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{EventType, WatchOptions};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::client::Call;
use super::{Core, to_version};
use crate::store::{EventKind, WATCH_QUEUE_CAPACITY};
use crate::{MetadataError, Result, Version, WatchEvent, WatchStream};

/// Pause between attempts to reopen a broken watch while no member can serve it.
const RESUME_BACKOFF: Duration = Duration::from_millis(200);
/// A watch that could not be reopened for this long ends with [`MetadataError::Unavailable`]:
/// its consumer then knows it is blind and can re-list once the cluster is back.
const RESUME_GIVE_UP: Duration = Duration::from_secs(60);

/// Opens the watch (failing at once if no member can serve it) and starts the task that feeds
/// the returned stream.
pub(super) async fn start(core: Arc<Core>, prefix: &str, after: Version) -> Result<WatchStream> {
    let (key, end) = core.prefix_range(prefix);
    let next = i64::try_from(after.0)
        .ok()
        .and_then(|a| a.checked_add(1))
        .ok_or(MetadataError::Compacted {
            requested: after,
            oldest: Version::ZERO,
        })?;
    let first = open(&core, prefix, &key, &end, next).await?;
    let cancel = core.cluster.shutdown.child_token();
    let (tx, rx) = mpsc::channel(WATCH_QUEUE_CAPACITY);
    let stream = WatchStream::new(rx, Some(cancel.clone().drop_guard()));
    let span = tracing::info_span!("etcd_watch", prefix);
    let task = Task {
        core,
        prefix: prefix.to_owned(),
        key,
        end,
        next,
        tx,
        cancel,
    };
    tokio::spawn(task.run(first).instrument(span));
    Ok(stream)
}

/// Opens a watch from revision `next` on the first member that confirms it.
async fn open(
    core: &Core,
    prefix: &str,
    key: &[u8],
    end: &[u8],
    next: i64,
) -> Result<etcd_client::WatchStream> {
    core.cluster
        .run(Call::read("watch", prefix), |mut c| {
            let key = key.to_vec();
            let options = WatchOptions::new()
                .with_range(end.to_vec())
                .with_start_revision(next)
                .with_progress_notify();
            async move {
                let mut stream = c.watch.watch(key, Some(options)).await?;
                match stream.message().await? {
                    Some(resp) if resp.created() && !resp.canceled() => Ok(stream),
                    Some(resp) => Err(etcd_client::Error::WatchError(format!(
                        "etcd did not create the watch: {}",
                        resp.cancel_reason()
                    ))),
                    None => Err(etcd_client::Error::WatchError(
                        "watch stream ended before the watch was created".into(),
                    )),
                }
            }
        })
        .await
}

struct Task {
    core: Arc<Core>,
    prefix: String,
    key: Vec<u8>,
    end: Vec<u8>,
    /// The revision the watch continues from: every change below it has been delivered.
    next: i64,
    tx: mpsc::Sender<Result<WatchEvent>>,
    /// Cancelled when the stream is dropped or the store shuts down.
    cancel: CancellationToken,
}

/// How feeding from one etcd watch stream ended.
enum Ended {
    /// The stream broke; open another from `next`.
    Broken(String),
    /// The watch is over (consumer gone, store closed, or a final error was delivered).
    Done,
}

impl Task {
    async fn run(mut self, first: etcd_client::WatchStream) {
        let mut stream = Some(first);
        let mut failing_since: Option<Instant> = None;
        loop {
            let mut current = match stream.take() {
                Some(s) => s,
                None => {
                    let opened = tokio::select! {
                        opened = open(&self.core, &self.prefix, &self.key, &self.end, self.next) => opened,
                        () = self.cancel.cancelled() => return self.closed(),
                    };
                    match opened {
                        Ok(s) => {
                            info!(
                                endpoint = self.core.cluster.current_endpoint(),
                                from = self.next,
                                "watch resumed"
                            );
                            failing_since = None;
                            s
                        }
                        Err(e) if e.is_retryable() => {
                            let clock = &self.core.cluster.clock;
                            let since = *failing_since.get_or_insert_with(|| clock.now());
                            if clock.now().saturating_duration_since(since) >= RESUME_GIVE_UP {
                                let e = MetadataError::Unavailable(format!(
                                    "watch {} could not be resumed for {RESUME_GIVE_UP:?}: {e}",
                                    self.prefix
                                ));
                                return self.fail(e).await;
                            }
                            warn!(error = %e, from = self.next, "watch cannot be resumed yet");
                            tokio::select! {
                                () = self.core.cluster.clock.sleep(RESUME_BACKOFF) => {}
                                () = self.cancel.cancelled() => return self.closed(),
                            }
                            continue;
                        }
                        Err(e) => return self.fail(e).await,
                    }
                }
            };
            match self.feed(&mut current).await {
                Ended::Done => return,
                Ended::Broken(reason) => {
                    warn!(
                        endpoint = self.core.cluster.current_endpoint(),
                        from = self.next,
                        reason,
                        "watch stream broke; reopening it from the next revision"
                    );
                }
            }
        }
    }

    /// Delivers the events of one etcd watch stream until it breaks or the watch ends.
    async fn feed(&mut self, stream: &mut etcd_client::WatchStream) -> Ended {
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                () = self.cancel.cancelled() => {
                    self.closed();
                    return Ended::Done;
                }
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => return Ended::Broken("stream ended".into()),
                Err(e) => return Ended::Broken(e.to_string()),
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    self.fail(MetadataError::Compacted {
                        requested: to_version(self.next - 1),
                        oldest: to_version(resp.compact_revision()),
                    })
                    .await;
                    return Ended::Done;
                }
                return Ended::Broken(format!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason()
                ));
            }
            if resp.events().is_empty() {
                // A progress notification: every change up to its revision has been delivered.
                if !resp.created()
                    && let Some(header) = resp.header()
                {
                    self.next = self.next.max(header.revision().saturating_add(1));
                }
                continue;
            }
            // etcd never splits one revision across responses, so `next` moves per response.
            let mut last = None;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                if revision < self.next {
                    continue; // delivered before the stream was reopened
                }
                let key = match self.core.store_key(kv.key()) {
                    Ok(key) => key,
                    Err(e) => {
                        self.fail(e).await;
                        return Ended::Done;
                    }
                };
                let kind = match event.event_type() {
                    EventType::Put => EventKind::Put(Bytes::copy_from_slice(kv.value())),
                    EventType::Delete => EventKind::Delete,
                };
                let event = WatchEvent {
                    key,
                    kind,
                    revision: to_version(revision),
                };
                if !self.send(Ok(event)).await {
                    return Ended::Done;
                }
                last = Some(revision);
            }
            if let Some(last) = last {
                self.next = self.next.max(last + 1);
            }
        }
    }

    /// False when the consumer is gone.
    async fn send(&self, item: Result<WatchEvent>) -> bool {
        tokio::select! {
            sent = self.tx.send(item) => sent.is_ok(),
            () = self.cancel.cancelled() => false,
        }
    }

    async fn fail(&self, error: MetadataError) {
        warn!(error = %error, "watch ends");
        let _ = self.send(Err(error)).await;
    }

    /// The watch was cancelled: tell a consumer that is still there that the store closed.
    fn closed(&self) {
        if self.core.cluster.shutdown.is_cancelled() {
            let _ = self.tx.try_send(Err(MetadataError::Closed));
        }
    }
}
