//! Real parts in this process: [`LocalCluster`] (a metadata store, one in-process bookie that
//! tests take away and give back, and cluster brokers on free ports over both) and
//! [`standalone`] (the whole system, as `magnetar standalone` runs it, on a free port).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use magnetar_bookie::api::{BookieClient, BookieId, BookieRegistration, BookieState};
use magnetar_bookie::local::LocalConnector;
use magnetar_bookie::server::{Bookie, BookieOptions};
use magnetar_broker::runtime::broker::{Broker, BrokerOptions};
use magnetar_broker::runtime::standalone::{Standalone, StandaloneOptions};
use magnetar_metadata::{Expected, MetadataStore};

/// A standalone over `data_dir` with its broker on a free port of 127.0.0.1, after `configure`
/// has adjusted its options; ready (listening) when this returns.
pub async fn standalone(
    data_dir: &Path,
    configure: impl FnOnce(&mut StandaloneOptions),
) -> Standalone {
    let mut options = StandaloneOptions::new(data_dir);
    options.broker.bind.set_port(0);
    // The host's disk fill must not decide tests (a CI disk above 95% turned every bookie
    // read-only); tests of a full bookie use its storage cap.
    options.bookie.disk_usage_threshold = 1.0;
    options.bookie.disk_usage_lwm = 1.0;
    configure(&mut options);
    Standalone::start(options).await.expect("standalone starts")
}

/// One in-process bookie behind a [`LocalConnector`] (which tests take away and give back),
/// registered in `store`; [`LocalCluster::node`] starts cluster brokers over both.
pub struct LocalCluster {
    _dir: tempfile::TempDir,
    pub store: Arc<dyn MetadataStore>,
    id: BookieId,
    bookie: Arc<Bookie>,
    connector: LocalConnector,
}

impl LocalCluster {
    pub async fn new(store: Arc<dyn MetadataStore>) -> LocalCluster {
        let dir = tempfile::tempdir().unwrap();
        let id: BookieId = "local:1".parse().unwrap();
        let mut options = BookieOptions::new(id.clone(), dir.path().join("b"));
        // The host's disk fill must not decide tests (see `standalone`).
        options.disk_usage_threshold = 1.0;
        options.disk_usage_lwm = 1.0;
        let bookie = Bookie::open(options).await.unwrap();
        let connector = LocalConnector::new();
        connector.insert(bookie.clone());
        let reg = BookieRegistration {
            id: id.clone(),
            state: BookieState::ReadWrite,
            free_bytes: 1 << 40,
            used_bytes: 0,
            zone: None,
            version: "test".into(),
        };
        let _ = store
            .put(
                &magnetar_bookie::api::registration_key(&id),
                Bytes::from(serde_json::to_vec(&reg).unwrap()),
                Expected::Any,
            )
            .await
            .unwrap();
        LocalCluster {
            _dir: dir,
            store,
            id,
            bookie,
            connector,
        }
    }

    /// A cluster broker on a free port over the cluster's store and bookie.
    pub async fn node(&self) -> Broker {
        self.node_with(|_| {}).await
    }

    /// A cluster broker on a free port, after `configure` has adjusted its options.
    pub async fn node_with(&self, configure: impl FnOnce(&mut BrokerOptions)) -> Broker {
        let mut options = BrokerOptions::default();
        options.bind.set_port(0);
        configure(&mut options);
        Broker::start(
            Arc::clone(&self.store),
            Arc::new(self.connector.clone()),
            None,
            options,
        )
        .await
        .unwrap()
    }

    pub fn take_bookie_away(&self) {
        self.connector.remove(&self.id);
    }

    pub fn give_bookie_back(&self) {
        self.connector
            .insert(self.bookie.clone() as Arc<dyn BookieClient>);
    }
}
