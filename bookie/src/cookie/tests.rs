use std::sync::Arc;

use magnetar_metadata::MemoryStore;

use super::*;

fn id() -> BookieId {
    BookieId("127.0.0.1:3181".into())
}

/// Puts an entry-log file where the storage keeps them, as a bookie that stored data has.
fn some_data(dir: &Path) {
    std::fs::create_dir_all(dir.join("ledgers")).unwrap();
    std::fs::write(dir.join("ledgers/0.log"), b"x").unwrap();
}

fn reason(e: CookieError) -> String {
    match e {
        CookieError::Mismatch { reason, .. } => reason,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn first_start_writes_both_cookies_and_later_starts_pass() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    verify(&store, dir.path(), &id()).await.unwrap();
    let local: Cookie =
        serde_json::from_slice(&std::fs::read(dir.path().join(COOKIE_FILE)).unwrap()).unwrap();
    let remote = read_remote(&store, &id()).await.unwrap().unwrap();
    assert_eq!(local, remote);
    let instance = store.get(INSTANCE_ID_KEY).await.unwrap().unwrap();
    assert_eq!(local.instance_id.as_bytes(), &instance.value[..]);
    some_data(dir.path());
    verify(&store, dir.path(), &id()).await.unwrap();
    // A second bookie of the same store joins the same instance.
    let other = tempfile::tempdir().unwrap();
    let id2 = BookieId("127.0.0.1:3182".into());
    verify(&store, other.path(), &id2).await.unwrap();
    let second = read_remote(&store, &id2).await.unwrap().unwrap();
    assert_eq!(second.instance_id, local.instance_id);
}

#[tokio::test]
async fn data_with_a_new_metadata_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    verify(&MemoryStore::new(), dir.path(), &id())
        .await
        .unwrap();
    some_data(dir.path());
    let fresh = MemoryStore::new();
    let why = reason(verify(&fresh, dir.path(), &id()).await.unwrap_err());
    assert!(why.contains("no cookie for this bookie"), "{why}");
    assert!(
        fresh.get(&cookie_key(&id())).await.unwrap().is_none(),
        "nothing is written on refusal"
    );
}

#[tokio::test]
async fn data_of_another_instance_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    verify(&store, dir.path(), &id()).await.unwrap();
    some_data(dir.path());
    // The same bookie id registered in another cluster's store, with its own instance.
    let other = MemoryStore::new();
    let elsewhere = tempfile::tempdir().unwrap();
    verify(&other, elsewhere.path(), &id()).await.unwrap();
    let why = reason(verify(&other, dir.path(), &id()).await.unwrap_err());
    assert!(why.contains("differs"), "{why}");
}

#[tokio::test]
async fn a_wiped_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    verify(&store, dir.path(), &id()).await.unwrap();
    std::fs::remove_file(dir.path().join(COOKIE_FILE)).unwrap();
    let why = reason(verify(&store, dir.path(), &id()).await.unwrap_err());
    assert!(why.contains("wiped"), "{why}");
    assert!(
        why.contains(&cookie_key(&id())),
        "says which key to delete: {why}"
    );
}

#[tokio::test]
async fn data_without_cookies_is_refused_unless_the_store_has_made_ledgers() {
    let dir = tempfile::tempdir().unwrap();
    some_data(dir.path());
    let store = MemoryStore::new();
    let why = reason(verify(&store, dir.path(), &id()).await.unwrap_err());
    assert!(why.contains("never created a ledger"), "{why}");
    // A store that has allocated ledgers: data from before cookies, adopted.
    let _ = store
        .put(LEDGER_ID_KEY, Bytes::from_static(b"7"), Expected::Absent)
        .await
        .unwrap();
    verify(&store, dir.path(), &id()).await.unwrap();
    verify(&store, dir.path(), &id()).await.unwrap();
}

#[tokio::test]
async fn another_bookie_id_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    verify(&*store, dir.path(), &id()).await.unwrap();
    some_data(dir.path());
    let why = reason(
        verify(&*store, dir.path(), &BookieId("10.0.0.9:3181".into()))
            .await
            .unwrap_err(),
    );
    assert!(why.contains("belongs to"), "{why}");
}

#[tokio::test]
async fn an_interrupted_first_start_completes() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    verify(&store, dir.path(), &id()).await.unwrap();
    // As if the process died after writing the file, before the store's cookie.
    let _ = store
        .delete(&cookie_key(&id()), Expected::Any)
        .await
        .unwrap();
    verify(&store, dir.path(), &id()).await.unwrap();
    assert!(read_remote(&store, &id()).await.unwrap().is_some());
}

#[tokio::test]
async fn an_unreadable_cookie_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(COOKIE_FILE), b"{not json").unwrap();
    let why = reason(
        verify(&MemoryStore::new(), dir.path(), &id())
            .await
            .unwrap_err(),
    );
    assert!(why.contains("unreadable"), "{why}");
}

#[tokio::test]
async fn a_fresh_volume_with_lost_and_found_is_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    // A Kubernetes volume mounted at `journal/`: ext4 leaves `lost+found` at its root.
    std::fs::create_dir_all(dir.path().join("journal/lost+found")).unwrap();
    verify(&store, dir.path(), &id()).await.unwrap();
    // Anything else there is data: without its cookie, a bookie refuses it.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("journal/lost+found")).unwrap();
    std::fs::write(other.path().join("journal/1.txn"), b"x").unwrap();
    let why = reason(
        verify(&store, other.path(), &BookieId("127.0.0.1:3182".into()))
            .await
            .unwrap_err(),
    );
    assert!(why.contains("holds bookie data but no cookie"), "{why}");
}
