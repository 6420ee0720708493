//! Instance identity (BookKeeper's cookie): ties a bookie's data directory to one metadata
//! store, checked at every start before the storage is opened.
//!
//! The metadata store holds the cluster's instance id (`/cluster/instance-id`, created by the
//! first bookie or standalone to start, by CAS) and one cookie per bookie (`/cookies/{id}`:
//! instance id and bookie id); the bookie's data directory holds the same cookie in `COOKIE`.
//! Without this, bookie data opened against another metadata store — or a new, empty one, as a
//! mistyped path makes — serves its old entries under ledger ids the store hands out again:
//! new topics read the previous topics' messages. So every mismatch refuses to start, saying
//! which side is missing or different and what to do:
//!
//! | data dir cookie | store cookie | entries on disk | outcome |
//! |---|---|---|---|
//! | equal to the store's, same instance | — | any | start |
//! | different (instance or bookie id) | — | any | refuse |
//! | present | missing | yes | refuse: other or new metadata store |
//! | present | missing | no | start, cookie written again (an interrupted first start) |
//! | missing | present | any | refuse: data wiped or another disk |
//! | missing | missing | no | first start: instance id and both cookies written |
//! | missing | missing | yes | refuse, unless the store has allocated ledgers (data from before cookies) |

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use magnetar_metadata::{Expected, MetadataError, MetadataStore, PutOutcome};
use serde::{Deserialize, Serialize};

use crate::api::BookieId;
use crate::client::metadata::LEDGER_ID_KEY;

/// The cluster's instance id in the metadata store.
pub const INSTANCE_ID_KEY: &str = "/cluster/instance-id";
/// Bookie cookies in the metadata store: `/cookies/{bookie id}`.
pub const COOKIES_PREFIX: &str = "/cookies/";
/// The cookie's file in the bookie's data directory.
pub const COOKIE_FILE: &str = "COOKIE";

/// What ties one bookie's data to one metadata store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cookie {
    pub instance_id: String,
    pub bookie_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    /// The data directory and the metadata store do not belong together.
    #[error("refusing to start bookie {bookie}: {reason}")]
    Mismatch { bookie: String, reason: String },
    #[error("cookie check: metadata store: {0}")]
    Metadata(#[from] MetadataError),
    #[error("cookie check: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CookieError {
    let what = what.into();
    move |source| CookieError::Io { what, source }
}

/// The key of bookie `id`'s cookie in the metadata store.
pub fn cookie_key(id: &BookieId) -> String {
    format!("{COOKIES_PREFIX}{id}")
}

/// Checks that `data_dir` and `store` belong together (see the module doc), writing the
/// cookies at the first start. Call before opening the bookie's storage.
pub async fn verify(
    store: &dyn MetadataStore,
    data_dir: &Path,
    id: &BookieId,
) -> Result<(), CookieError> {
    let file = data_dir.join(COOKIE_FILE);
    let refuse = |reason: String| CookieError::Mismatch {
        bookie: id.to_string(),
        reason,
    };
    // The directory's side, off the async runtime.
    let (local, has_data) = blocking({
        let (data_dir, file) = (data_dir.to_path_buf(), file.clone());
        move || {
            std::fs::create_dir_all(&data_dir)
                .map_err(io(format!("create {}", data_dir.display())))?;
            Ok((read_local(&file), has_entries(&data_dir)?))
        }
    })
    .await?;
    let local = local.map_err(|e| match e {
        ReadLocal::Io(source) => CookieError::Io {
            what: format!("read {}", file.display()),
            source,
        },
        ReadLocal::Bad(why) => refuse(format!(
            "its cookie file {} is unreadable ({why}); restore it from a backup, or wipe the \
             data directory if this bookie's data is to be re-replicated",
            file.display()
        )),
    })?;
    if let Some(l) = local.as_ref().filter(|l| l.bookie_id != id.to_string()) {
        return Err(refuse(format!(
            "{} belongs to bookie {}: start it with that id (advertised address and port), or \
             give this bookie a data directory of its own",
            data_dir.display(),
            l.bookie_id
        )));
    }
    let remote = read_remote(store, id).await?;
    let instance = store
        .get(INSTANCE_ID_KEY)
        .await?
        .map(|v| String::from_utf8_lossy(&v.value).into_owned());
    let dir = data_dir.display();
    let key = cookie_key(id);

    match (local, remote) {
        (Some(l), Some(r)) => {
            if l != r {
                return Err(refuse(format!(
                    "the cookie in {dir} ({l:?}) differs from the metadata store's {key} \
                     ({r:?}): this data directory belongs to another bookie or cluster"
                )));
            }
            if instance.as_deref() != Some(l.instance_id.as_str()) {
                return Err(refuse(format!(
                    "{dir} belongs to instance {}, the metadata store is instance {}",
                    l.instance_id,
                    instance.as_deref().unwrap_or("(none)")
                )));
            }
            Ok(())
        }
        (Some(l), None) if has_data => Err(refuse(format!(
            "{dir} holds the data of instance {} but the metadata store has no cookie for this \
             bookie ({}): it is another or a new, empty metadata store. Start with the \
             metadata store this data was written with (check metadata.embedded_path / \
             metadata.etcd_endpoints and etcd_root)",
            l.instance_id,
            match &instance {
                Some(i) => format!("its instance is {i}"),
                None => "it has no instance id at all".to_owned(),
            }
        ))),
        (Some(_), None) => {
            // No entries: an interrupted first start, or an empty bookie pointed at a new
            // store. Nothing can be mixed up; join the store's instance.
            let instance = get_or_create_instance(store).await?;
            write_cookies(store, &file, id, instance, &refuse).await
        }
        (None, Some(r)) => Err(refuse(format!(
            "the metadata store has a cookie for this bookie ({r:?}) but {dir} has none: its \
             data was wiped or this is another disk. If this bookie's data is lost for good \
             (its ledgers re-replicated), delete the metadata key {key} to let it join again \
             as a new bookie; otherwise mount its data directory"
        ))),
        (None, None) if has_data => {
            if store.get(LEDGER_ID_KEY).await?.is_some() {
                // Data written before bookies had cookies, with a store that has created
                // ledgers: adopt it.
                tracing::warn!(bookie = %id, data_dir = %dir,
                    "bookie data without a cookie: writing the cookies now (data from before \
                     instance identity)");
                let instance = get_or_create_instance(store).await?;
                write_cookies(store, &file, id, instance, &refuse).await
            } else {
                Err(refuse(format!(
                    "{dir} holds bookie data but no cookie, and the metadata store has never \
                     created a ledger: this data was written with another metadata store. \
                     Start with that store, or wipe {dir}"
                )))
            }
        }
        (None, None) => {
            let instance = get_or_create_instance(store).await?;
            write_cookies(store, &file, id, instance, &refuse).await
        }
    }
}

enum ReadLocal {
    Io(std::io::Error),
    Bad(String),
}

fn read_local(file: &Path) -> Result<Option<Cookie>, ReadLocal> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ReadLocal::Bad(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReadLocal::Io(e)),
    }
}

async fn read_remote(
    store: &dyn MetadataStore,
    id: &BookieId,
) -> Result<Option<Cookie>, CookieError> {
    let Some(v) = store.get(&cookie_key(id)).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&v.value)
        .map(Some)
        .map_err(|e| CookieError::Mismatch {
            bookie: id.to_string(),
            reason: format!("the metadata store's {} is unreadable: {e}", cookie_key(id)),
        })
}

/// Whether the storage holds anything (journal or entry logs / index). A `lost+found` is not
/// data: ext4 makes one at the root of every new volume, and a Kubernetes volume is often
/// mounted straight at `journal/` or `ledgers/`.
fn has_entries(data_dir: &Path) -> Result<bool, CookieError> {
    for sub in ["journal", "ledgers"] {
        let path: PathBuf = data_dir.join(sub);
        match std::fs::read_dir(&path) {
            Ok(entries) => {
                let mut names = entries.map(|e| e.map(|e| e.file_name()));
                if names
                    .try_fold(false, |found, name| {
                        name.map(|n| found || n != "lost+found")
                    })
                    .map_err(io(format!("list {}", path.display())))?
                {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("list {}", path.display()))(e)),
        }
    }
    Ok(false)
}

/// The store's instance id, created if it has none (one wins a race; the others read it).
async fn get_or_create_instance(store: &dyn MetadataStore) -> Result<String, CookieError> {
    for _ in 0..3 {
        if let Some(v) = store.get(INSTANCE_ID_KEY).await? {
            return Ok(String::from_utf8_lossy(&v.value).into_owned());
        }
        let fresh = format!("{:032x}", magnetar_metadata::clock::entropy().u128());
        if let PutOutcome::Written(_) = store
            .put(
                INSTANCE_ID_KEY,
                Bytes::from(fresh.clone()),
                Expected::Absent,
            )
            .await?
        {
            tracing::info!(instance_id = %fresh, "new cluster instance id");
            return Ok(fresh);
        }
    }
    Err(CookieError::Metadata(MetadataError::Contention {
        key: INSTANCE_ID_KEY.into(),
        attempts: 3,
    }))
}

/// Writes the data directory's cookie (durably, on the blocking pool), then the store's.
async fn write_cookies(
    store: &dyn MetadataStore,
    file: &Path,
    id: &BookieId,
    instance_id: String,
    refuse: &dyn Fn(String) -> CookieError,
) -> Result<(), CookieError> {
    let cookie = Cookie {
        instance_id,
        bookie_id: id.to_string(),
    };
    let json = Bytes::from(serde_json::to_vec(&cookie).map_err(|e| CookieError::Io {
        what: "encode the cookie".into(),
        source: std::io::Error::other(e),
    })?);
    blocking({
        let (file, json) = (file.to_path_buf(), json.clone());
        move || write_file_durably(&file, &json)
    })
    .await?;
    let key = cookie_key(id);
    match store.put(&key, json, Expected::Absent).await? {
        PutOutcome::Written(_) => {}
        PutOutcome::Conflict { .. } => {
            // Written meanwhile (an interrupted earlier start, or a racing process): it
            // must be this very cookie.
            if read_remote(store, id).await?.as_ref() != Some(&cookie) {
                return Err(refuse(format!(
                    "another process wrote a different cookie at {key} meanwhile"
                )));
            }
        }
    }
    tracing::info!(bookie = %id, instance_id = %cookie.instance_id, "cookies written");
    Ok(())
}

/// `f` on the blocking pool (file reads, writes and fsyncs stay off the async runtime).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CookieError> + Send + 'static,
) -> Result<T, CookieError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CookieError::Io {
            what: "cookie file task".into(),
            source: std::io::Error::other(e),
        })?
}

/// Writes `file` durably: a temporary file, fsync, rename over it, fsync of the directory.
fn write_file_durably(file: &Path, bytes: &[u8]) -> Result<(), CookieError> {
    let tmp = file.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io(format!("write {}", tmp.display())))?;
    }
    std::fs::rename(&tmp, file).map_err(io(format!("rename to {}", file.display())))?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("sync {}", dir.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
