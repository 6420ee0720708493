//! The object side of tiered storage against real stores: a local directory (the
//! `filesystem` driver) and two S3-compatible servers through the `s3` driver over HTTP on
//! 127.0.0.1 — moto (a separate process) and s3s-fs (in this process, checking SigV4
//! signatures). Every case runs on all three.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use magnetar_metadata::LedgerId;
use magnetar_metadata::clock;
use magnetar_offload::store::Driver;
use magnetar_offload::{
    DriverConfig, ObjectNames, OffloadReader, OffloadStore, ReadOptions, RetryPolicy,
    UploadOptions, upload_ledger, verify,
};
use magnetar_testkit::s3::S3Server;
use magnetar_testkit::s3fs::InProcessS3;
use object_store::ObjectStoreExt;

/// A store under test and what keeps it alive.
struct Backend {
    store: OffloadStore,
    _dir: Option<tempfile::TempDir>,
    _s3: Option<S3Server>,
    _s3s: Option<InProcessS3>,
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts_max: 3,
        delay_min: Duration::from_millis(5),
        delay_max: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

fn filesystem() -> Result<Backend> {
    let dir = tempfile::tempdir()?;
    let cfg = DriverConfig {
        driver: Driver::Filesystem,
        directory: dir.path().join("offload"),
        ..DriverConfig::default()
    };
    Ok(Backend {
        store: OffloadStore::build(&cfg, quick_retries(), clock::system())?,
        _dir: Some(dir),
        _s3: None,
        _s3s: None,
    })
}

fn s3_config(server: &S3Server, bucket: &str) -> DriverConfig {
    DriverConfig {
        driver: Driver::S3,
        bucket: bucket.to_owned(),
        region: Some("us-east-1".to_owned()),
        service_endpoint: Some(server.endpoint()),
        access_key_id: Some("test".to_owned()),
        secret_access_key: Some("test".to_owned()),
        ..DriverConfig::default()
    }
}

fn s3() -> Result<Backend> {
    let server = S3Server::start()?;
    server.create_bucket("offload")?;
    let store = OffloadStore::build(
        &s3_config(&server, "offload"),
        quick_retries(),
        clock::system(),
    )?;
    Ok(Backend {
        store,
        _dir: None,
        _s3: Some(server),
        _s3s: None,
    })
}

fn s3s() -> Result<Backend> {
    let server = InProcessS3::start("s3s-key", "s3s-secret")?;
    server.create_bucket("offload")?;
    let cfg = DriverConfig {
        driver: Driver::S3,
        bucket: "offload".to_owned(),
        region: Some("us-east-1".to_owned()),
        service_endpoint: Some(server.endpoint()),
        access_key_id: Some("s3s-key".to_owned()),
        secret_access_key: Some("s3s-secret".to_owned()),
        ..DriverConfig::default()
    };
    Ok(Backend {
        store: OffloadStore::build(&cfg, quick_retries(), clock::system())?,
        _dir: None,
        _s3: None,
        _s3s: Some(server),
    })
}

fn payload(i: u64) -> Bytes {
    // Sizes from 0 to ~20 KiB, the content naming the entry.
    let len = (i * 7919) % 20_000;
    let mut v = format!("entry-{i}:").into_bytes();
    v.resize(v.len() + len as usize, (i % 251) as u8);
    Bytes::from(v)
}

fn source(
    entries: u64,
) -> impl futures::Stream<Item = magnetar_offload::OffloadResult<(u64, Bytes)>> + Send {
    futures::stream::iter((0..entries).map(|i| Ok((i, payload(i)))))
}

fn size_of(entries: u64) -> u64 {
    (0..entries).map(|i| payload(i).len() as u64).sum()
}

async fn upload(
    b: &Backend,
    ledger: u64,
    entries: u64,
    attempt: &str,
) -> Result<(ObjectNames, magnetar_offload::format::Index)> {
    let names = ObjectNames::new(
        b.store.prefix(),
        "t/ns/persistent/topic",
        LedgerId(ledger),
        attempt,
    );
    let opts = UploadOptions {
        part_size_bytes: 5 * 1024 * 1024,
        parallel_parts: 3,
    };
    let up = upload_ledger(
        &b.store,
        &names,
        LedgerId(ledger),
        entries,
        size_of(entries),
        source(entries),
        opts,
    )
    .await?;
    Ok((names, up.index))
}

async fn a_ledger_round_trips_through_multipart_upload_and_ranged_reads(b: Backend) -> Result<()> {
    // ~12 MB: three parts of 5 MiB.
    let entries = 1_200;
    let (names, index) = upload(&b, 1, entries, "a1").await?;
    ensure!(
        b.store.counters().snapshot().part_requests >= 3,
        "no multipart upload: {:?}",
        b.store.counters().snapshot()
    );
    verify(&b.store, &names, &index).await?;
    ensure!(index.payload_bytes == size_of(entries));
    let reader = OffloadReader::new(
        b.store.clone(),
        ReadOptions {
            block_size_bytes: 256 * 1024,
            ..ReadOptions::default()
        },
    );
    // Forward in batches, then backward, then single entries: every entry, exact.
    let mut first = 0;
    while first < entries {
        let last = (first + 99).min(entries - 1);
        let got = reader.read(LedgerId(1), &names, first, last).await?;
        ensure!(got.len() as u64 == last - first + 1);
        for (id, bytes) in got {
            ensure!(bytes == payload(id), "entry {id} differs");
        }
        first = last + 1;
    }
    for first in (0..entries).rev().step_by(97) {
        let got = reader.read(LedgerId(1), &names, first, first).await?;
        ensure!(
            got == vec![(first, payload(first))],
            "entry {first} read backward differs"
        );
    }
    match reader.read(LedgerId(1), &names, entries - 1, entries).await {
        Err(e) if e.to_string().contains("ledger 1") => {}
        other => bail!("a read past the end must fail naming the ledger: {other:?}"),
    }
    Ok(())
}

async fn a_small_ledger_is_one_put_and_an_empty_ledger_works(b: Backend) -> Result<()> {
    let (names, index) = upload(&b, 2, 10, "s1").await?;
    ensure!(
        b.store.counters().snapshot().part_requests == 0,
        "a multipart upload for 10 entries"
    );
    verify(&b.store, &names, &index).await?;
    let (empty, index) = upload(&b, 3, 0, "e1").await?;
    verify(&b.store, &empty, &index).await?;
    ensure!(index.entries() == 0);
    Ok(())
}

async fn a_failed_part_fails_the_upload_retryably_and_leaves_no_data_object(
    b: Backend,
) -> Result<()> {
    b.store.faults().fail_parts.store(1, Ordering::SeqCst);
    let err = match upload(&b, 4, 1_200, "f1").await {
        Ok(_) => bail!("an upload with a failed part succeeded"),
        Err(e) => e,
    };
    ensure!(
        err.downcast_ref::<magnetar_offload::OffloadError>()
            .is_some_and(|e| e.is_retryable()),
        "a failed part is worth another attempt: {err}"
    );
    let text = format!("{err:#}");
    ensure!(
        text.contains(b.store.driver()),
        "the error names no driver: {text}"
    );
    let names = ObjectNames::new(b.store.prefix(), "t/ns/persistent/topic", LedgerId(4), "f1");
    match b.store.object_store().head(&names.data).await {
        Err(object_store::Error::NotFound { .. }) => {}
        other => bail!("the failed attempt left a data object: {other:?}"),
    }
    // The next attempt, under a new id, succeeds.
    let (names, index) = upload(&b, 4, 1_200, "f2").await?;
    verify(&b.store, &names, &index).await?;
    Ok(())
}

async fn a_damaged_data_object_fails_verification_naming_the_ledger(b: Backend) -> Result<()> {
    let (names, index) = upload(&b, 5, 50, "d1").await?;
    let mut data = b
        .store
        .object_store()
        .get(&names.data)
        .await?
        .bytes()
        .await?
        .to_vec();
    let at = data.len() / 2;
    data[at] ^= 0x55;
    b.store
        .object_store()
        .put(&names.data, Bytes::from(data).into())
        .await?;
    match verify(&b.store, &names, &index).await {
        Err(e) if e.to_string().contains("ledger 5") => {}
        other => bail!("verification must fail naming the ledger: {other:?}"),
    }
    let reader = OffloadReader::new(b.store.clone(), ReadOptions::default());
    match reader.read(LedgerId(5), &names, 0, 49).await {
        Err(e) if e.to_string().contains("CRC32C") => Ok(()),
        other => bail!("a read of a damaged entry must fail its CRC32C: {other:?}"),
    }
}

async fn a_store_that_is_down_fails_reads_retryably_and_they_recover(b: Backend) -> Result<()> {
    let (names, _) = upload(&b, 6, 100, "r1").await?;
    let reader = OffloadReader::new(b.store.clone(), ReadOptions::default());
    b.store.faults().set_down(true);
    let err = match reader.read(LedgerId(6), &names, 0, 9).await {
        Ok(_) => bail!("a read from a store that is down succeeded"),
        Err(e) => e,
    };
    ensure!(err.is_retryable(), "not retryable: {err}");
    b.store.faults().set_down(false);
    let got = reader.read(LedgerId(6), &names, 0, 9).await?;
    ensure!(got.len() == 10 && got[3] == (3, payload(3)));
    Ok(())
}

macro_rules! on_all {
    ($($case:ident),* $(,)?) => {
        mod filesystem_driver {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                super::$case(super::filesystem()?).await
            })*
        }
        mod s3_driver {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                super::$case(super::s3()?).await
            })*
        }
        mod s3_driver_on_s3s {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                super::$case(super::s3s()?).await
            })*
        }
    };
}

on_all!(
    a_ledger_round_trips_through_multipart_upload_and_ranged_reads,
    a_small_ledger_is_one_put_and_an_empty_ledger_works,
    a_failed_part_fails_the_upload_retryably_and_leaves_no_data_object,
    a_damaged_data_object_fails_verification_naming_the_ledger,
    a_store_that_is_down_fails_reads_retryably_and_they_recover,
);

#[tokio::test]
async fn a_missing_bucket_is_an_error_naming_the_driver_and_bucket() -> Result<()> {
    let server = S3Server::start()?;
    let store = OffloadStore::build(
        &s3_config(&server, "no-such-bucket"),
        quick_retries(),
        clock::system(),
    )?;
    let err = match store.check().await {
        Ok(()) => bail!("a missing bucket passed the start-up check"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains("s3") && err.contains("no-such-bucket"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_an_error_naming_the_driver_and_bucket() -> Result<()> {
    // s3s-fs checks signatures (moto does not).
    let server = InProcessS3::start("right-key", "right-secret")?;
    server.create_bucket("guarded")?;
    let cfg = DriverConfig {
        driver: Driver::S3,
        bucket: "guarded".to_owned(),
        region: Some("us-east-1".to_owned()),
        service_endpoint: Some(server.endpoint()),
        access_key_id: Some("wrong-key".to_owned()),
        secret_access_key: Some("wrong-secret".to_owned()),
        ..DriverConfig::default()
    };
    let store = OffloadStore::build(&cfg, quick_retries(), clock::system())?;
    let err = match store.check().await {
        Ok(()) => bail!("wrong credentials passed the start-up check"),
        Err(e) => e.to_string(),
    };
    ensure!(err.contains("s3") && err.contains("guarded"), "{err}");
    Ok(())
}
