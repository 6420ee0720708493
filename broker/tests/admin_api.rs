#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! The admin REST API over a real socket on 127.0.0.1: every tenant, namespace, policy and
//! partitioned-topic endpoint with Pulsar's JSON shapes and HTTP codes, and the topic routes
//! wired to a fake `TopicAdmin` (path parameters decoded, bodies parsed, answers serialized the
//! way Pulsar writes them).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use magnetar_broker::admin::topics::{
    ConsumerStats, CursorStats, LedgerInfo, PeekedMessage, PersistentTopicInternalStats,
    PublisherStats, ResetTarget, StartPosition, SubscriptionStats, TopicStats,
};
use magnetar_broker::admin::{self, AdminState, NoTopics, TopicAdmin, TopicAdminError};
use magnetar_broker::policies::Policies;
use magnetar_broker::topic_name::{NamespaceName, TopicName};
use magnetar_metadata::MemoryStore;
use serde_json::{Value, json};

struct Server {
    base: String,
    agent: ureq::Agent,
    _rt: tokio::runtime::Runtime,
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap().to_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn start(topics: Arc<dyn TopicAdmin>) -> Server {
    start_on(Arc::new(MemoryStore::new()), topics)
}

fn start_on(store: Arc<MemoryStore>, topics: Arc<dyn TopicAdmin>) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AdminState::new(Policies::new(store), topics);
    rt.spawn(admin::serve(listener, state, std::future::pending()));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    Server {
        base: format!("http://{addr}/admin/v2"),
        agent,
        _rt: rt,
    }
}

impl Server {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let url = format!("{}{path}", self.base);
        let a = &self.agent;
        let result = match (method, body) {
            ("GET", _) => a.get(&url).call(),
            ("DELETE", _) => a.delete(&url).call(),
            ("PUT", Some(b)) => a.put(&url).content_type("application/json").send(b),
            ("PUT", None) => a.put(&url).send_empty(),
            ("POST", Some(b)) => a.post(&url).content_type("application/json").send(b),
            ("POST", None) => a.post(&url).send_empty(),
            _ => panic!("method {method}"),
        };
        let mut res = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let headers = res
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        Answer {
            status: res.status().as_u16(),
            headers,
            body: res.body_mut().read_to_vec().unwrap(),
        }
    }
    fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None)
    }
    fn put(&self, path: &str, body: Option<&str>) -> Answer {
        self.call("PUT", path, body)
    }
    fn post(&self, path: &str, body: Option<&str>) -> Answer {
        self.call("POST", path, body)
    }
    fn delete(&self, path: &str) -> Answer {
        self.call("DELETE", path, None)
    }
}

#[track_caller]
fn expect(a: &Answer, status: u16) {
    assert_eq!(
        a.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&a.body)
    );
}

#[test]
fn tenants() {
    let s = start(Arc::new(NoTopics));
    let a = s.get("/tenants");
    expect(&a, 200);
    assert_eq!(a.json(), json!([]));
    assert_eq!(s.get("/clusters").json(), json!(["standalone"]));

    expect(&s.get("/tenants/acme"), 404);
    expect(&s.put("/tenants/acme", None), 204);
    let a = s.put("/tenants/acme", None);
    expect(&a, 409);
    assert!(a.reason().contains("already exists"), "{}", a.reason());
    expect(
        &s.put(
            "/tenants/beta",
            Some(r#"{"adminRoles":["ops"],"allowedClusters":["standalone"]}"#),
        ),
        204,
    );
    let a = s.get("/tenants/beta");
    expect(&a, 200);
    assert_eq!(
        a.json(),
        json!({"adminRoles": ["ops"], "allowedClusters": ["standalone"]})
    );
    assert_eq!(s.get("/tenants").json(), json!(["acme", "beta"]));

    // Update: POST, 404 for an unknown tenant, 400 without a body.
    expect(
        &s.post("/tenants/acme", Some(r#"{"adminRoles":["a"]}"#)),
        204,
    );
    assert_eq!(
        s.get("/tenants/acme").json(),
        json!({"adminRoles": ["a"], "allowedClusters": []})
    );
    expect(&s.post("/tenants/nope", Some("{}")), 404);
    expect(&s.post("/tenants/acme", None), 400);
    expect(&s.put("/tenants/bad", Some("{not json")), 400);

    // Invalid names are 412.
    expect(&s.put("/tenants/a%20b", None), 412);
    expect(&s.get("/tenants/a%24b"), 412);

    // A tenant with namespaces cannot go: 409, as in Pulsar.
    expect(&s.put("/namespaces/acme/ns", None), 204);
    let a = s.delete("/tenants/acme");
    expect(&a, 409);
    assert_eq!(a.reason(), "The tenant still has active namespaces");
    expect(&s.delete("/namespaces/acme/ns"), 204);
    expect(&s.delete("/tenants/acme"), 204);
    expect(&s.delete("/tenants/acme"), 404);
    assert_eq!(s.get("/tenants").json(), json!(["beta"]));
}

#[test]
fn namespaces_and_policies() {
    let s = start(Arc::new(NoTopics));
    expect(&s.get("/namespaces/acme"), 404);
    expect(&s.put("/namespaces/acme/orders", None), 404);
    expect(&s.put("/tenants/acme", None), 204);
    expect(&s.put("/namespaces/acme/orders", None), 204);
    expect(&s.put("/namespaces/acme/orders", None), 409);
    expect(&s.put("/namespaces/acme/b%20d", None), 412);
    // Creation with Pulsar's Policies body: bundles and a policy.
    expect(
        &s.put(
            "/namespaces/acme/two",
            Some(r#"{"bundles":{"numBundles":2},"deduplicationEnabled":true,"unknownField":1}"#),
        ),
        204,
    );
    expect(
        &s.put(
            "/namespaces/acme/bad",
            Some(r#"{"bundles":{"numBundles":5000}}"#),
        ),
        412,
    );
    // pulsar-admin's empty BundlesData and null policies mean the defaults.
    expect(
        &s.put(
            "/namespaces/acme/dflt",
            Some(r#"{"bundles":{"boundaries":null,"numBundles":0},"retention_policies":null,"persistence":null}"#),
        ),
        204,
    );
    assert_eq!(
        s.get("/namespaces/acme/dflt/bundles").json()["numBundles"],
        4
    );
    expect(&s.delete("/namespaces/acme/dflt"), 204);
    assert_eq!(
        s.get("/namespaces/acme").json(),
        json!(["acme/orders", "acme/two"])
    );

    let a = s.get("/namespaces/acme/two");
    expect(&a, 200);
    assert_eq!(
        a.json(),
        json!({
            "bundles": {"boundaries": ["0x00000000", "0x80000000", "0xffffffff"], "numBundles": 2},
            "deduplicationEnabled": true
        })
    );
    let a = s.get("/namespaces/acme/orders/bundles");
    expect(&a, 200);
    assert_eq!(a.json()["numBundles"], 4);
    assert_eq!(a.json()["boundaries"].as_array().unwrap().len(), 5);
    expect(&s.get("/namespaces/acme/nope"), 404);
    expect(&s.get("/namespaces/acme/nope/bundles"), 404);

    // Retention.
    let path = "/namespaces/acme/orders/retention";
    expect(&s.get(path), 204);
    expect(
        &s.post(
            path,
            Some(r#"{"retentionTimeInMinutes":60,"retentionSizeInMB":-1}"#),
        ),
        204,
    );
    assert_eq!(
        s.get(path).json(),
        json!({"retentionTimeInMinutes": 60, "retentionSizeInMB": -1})
    );
    expect(
        &s.post(
            path,
            Some(r#"{"retentionTimeInMinutes":-5,"retentionSizeInMB":1}"#),
        ),
        412,
    );
    expect(&s.post(path, Some(r#"{"retentionTimeInMinutes":1}"#)), 400);
    expect(&s.post(path, None), 400);
    expect(
        &s.post(
            "/namespaces/acme/nope/retention",
            Some(r#"{"retentionTimeInMinutes":1,"retentionSizeInMB":1}"#),
        ),
        404,
    );

    // Deduplication.
    let path = "/namespaces/acme/orders/deduplication";
    expect(&s.get(path), 204);
    expect(&s.post(path, Some("true")), 204);
    assert_eq!(s.get(path).json(), json!(true));
    expect(&s.post(path, Some("yes")), 400);
    expect(&s.delete(path), 204);
    expect(&s.get(path), 204);

    // Persistence.
    let path = "/namespaces/acme/orders/persistence";
    expect(
        &s.post(
            path,
            Some(r#"{"bookkeeperEnsemble":3,"bookkeeperWriteQuorum":2,"bookkeeperAckQuorum":2,"managedLedgerMaxMarkDeleteRate":0.0}"#),
        ),
        204,
    );
    assert_eq!(
        s.get(path).json(),
        json!({"bookkeeperEnsemble": 3, "bookkeeperWriteQuorum": 2, "bookkeeperAckQuorum": 2,
               "managedLedgerMaxMarkDeleteRate": 0.0})
    );
    expect(
        &s.post(
            path,
            Some(r#"{"bookkeeperEnsemble":1,"bookkeeperWriteQuorum":2,"bookkeeperAckQuorum":2}"#),
        ),
        400,
    );

    // Auto topic creation.
    let path = "/namespaces/acme/orders/autoTopicCreation";
    expect(&s.get(path), 204);
    expect(
        &s.post(
            path,
            Some(r#"{"allowAutoTopicCreation":true,"topicType":"partitioned","defaultNumPartitions":3}"#),
        ),
        204,
    );
    assert_eq!(
        s.get(path).json(),
        json!({"allowAutoTopicCreation": true, "topicType": "partitioned", "defaultNumPartitions": 3})
    );
    expect(
        &s.post(
            path,
            Some(r#"{"allowAutoTopicCreation":true,"topicType":"partitioned"}"#),
        ),
        412,
    );
    expect(
        &s.post(
            path,
            Some(r#"{"allowAutoTopicCreation":true,"topicType":"weird"}"#),
        ),
        412,
    );
    expect(
        &s.post(
            path,
            Some(r#"{"allowAutoTopicCreation":true,"topicType":"partitioned","defaultNumPartitions":20000}"#),
        ),
        406,
    );

    // The whole policies document, in Pulsar's field names.
    let p = s.get("/namespaces/acme/orders").json();
    assert_eq!(
        p["retention_policies"],
        json!({"retentionTimeInMinutes": 60, "retentionSizeInMB": -1})
    );
    assert_eq!(p["persistence"]["bookkeeperEnsemble"], 3);
    assert_eq!(p["autoTopicCreationOverride"]["defaultNumPartitions"], 3);
    assert!(p.get("deduplicationEnabled").is_none(), "{p}");
    assert_eq!(p["bundles"]["numBundles"], 4);

    expect(&s.delete("/namespaces/acme/orders/retention"), 204);
    expect(&s.delete("/namespaces/acme/orders/persistence"), 204);
    expect(&s.delete("/namespaces/acme/orders/autoTopicCreation"), 204);
    assert_eq!(
        s.get("/namespaces/acme/orders").json(),
        json!({"bundles": {"boundaries": ["0x00000000", "0x40000000", "0x80000000", "0xc0000000", "0xffffffff"], "numBundles": 4}})
    );

    // A namespace with a partitioned topic cannot be deleted.
    expect(
        &s.put("/persistent/acme/orders/t/partitions", Some("2")),
        204,
    );
    expect(&s.delete("/namespaces/acme/orders"), 409);
    expect(&s.delete("/persistent/acme/orders/t/partitions"), 204);
    expect(&s.delete("/namespaces/acme/orders"), 204);
    expect(&s.delete("/namespaces/acme/orders"), 404);

    // Unknown endpoints and methods.
    let a = s.get("/nothing/here");
    expect(&a, 404);
    assert!(a.reason().contains("no admin endpoint"));
    let a = s.post("/tenants", None);
    expect(&a, 405);
    assert_eq!(a.reason(), "Method Not Allowed");
    assert!(a.header("allow").is_some_and(|v| v.contains("GET")));
    // A path that does not decode is a 400 with a reason, like every error.
    let a = s.get("/tenants/%FF");
    expect(&a, 400);
    assert!(!a.reason().is_empty());
}

#[test]
fn partitioned_topics() {
    let s = start(Arc::new(NoTopics));
    expect(&s.put("/persistent/acme/ns/t/partitions", Some("3")), 404);
    expect(&s.get("/persistent/acme/ns/partitioned"), 404);
    expect(&s.put("/tenants/acme", None), 204);
    expect(&s.put("/namespaces/acme/ns", None), 204);

    let base = "/persistent/acme/ns";
    assert_eq!(s.get(&format!("{base}/partitioned")).json(), json!([]));
    // Unknown or non-partitioned: 0 partitions, as Pulsar answers.
    let a = s.get(&format!("{base}/t/partitions"));
    expect(&a, 200);
    assert_eq!(a.json(), json!({"partitions": 0}));

    expect(&s.put(&format!("{base}/t/partitions"), Some("0")), 406);
    expect(&s.put(&format!("{base}/t/partitions"), Some("-2")), 406);
    expect(
        &s.put(&format!("{base}/t/partitions"), Some("99999999999")),
        406,
    );
    expect(&s.put(&format!("{base}/t/partitions"), Some("\"x\"")), 400);
    expect(&s.put(&format!("{base}/t/partitions"), None), 400);
    expect(
        &s.put(&format!("{base}/t-partition-1/partitions"), Some("2")),
        412,
    );
    expect(&s.put(&format!("{base}/t/partitions"), Some("3")), 204);
    let a = s.put(&format!("{base}/t/partitions"), Some("3"));
    expect(&a, 409);
    assert_eq!(a.reason(), "Partitioned topic already exists");
    assert_eq!(
        s.get(&format!("{base}/t/partitions")).json(),
        json!({"partitions": 3})
    );
    // A URL-encoded name is decoded.
    expect(
        &s.put(&format!("{base}/with%3Acolon/partitions"), Some("1")),
        204,
    );
    assert_eq!(
        s.get(&format!("{base}/partitioned")).json(),
        json!(["persistent://acme/ns/t", "persistent://acme/ns/with:colon"])
    );

    // Update: only grow; 409 otherwise and for an unknown topic.
    expect(&s.post(&format!("{base}/t/partitions"), Some("5")), 204);
    assert_eq!(
        s.get(&format!("{base}/t/partitions")).json(),
        json!({"partitions": 5})
    );
    expect(&s.post(&format!("{base}/t/partitions"), Some("5")), 409);
    expect(&s.post(&format!("{base}/t/partitions"), Some("2")), 409);
    expect(&s.post(&format!("{base}/t/partitions"), Some("0")), 406);
    expect(&s.post(&format!("{base}/other/partitions"), Some("2")), 409);

    // Creating a non-partitioned topic over a partitioned one conflicts (before any service).
    expect(&s.put(&format!("{base}/t"), None), 409);

    expect(&s.delete(&format!("{base}/t/partitions")), 204);
    expect(&s.delete(&format!("{base}/t/partitions")), 404);
    assert_eq!(
        s.get(&format!("{base}/t/partitions")).json(),
        json!({"partitions": 0})
    );

    // Without a topic service, topic routes answer 503 with the reason.
    let a = s.get(base);
    expect(&a, 503);
    assert_eq!(a.reason(), "topic service not running");
    expect(&s.get(&format!("{base}/x/stats")), 503);
    expect(&s.put(&format!("{base}/x"), None), 503);
    // Names are checked before the service is asked.
    expect(&s.get("/persistent/acme/b%20d/x/stats"), 412);
    expect(&s.get("/persistent/acme/nope/x/stats"), 404);
}

/// Records the calls it gets and answers with canned, recognizable data.
#[derive(Debug, Default)]
struct FakeTopics {
    calls: Mutex<Vec<String>>,
}

impl FakeTopics {
    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

#[async_trait]
impl TopicAdmin for FakeTopics {
    async fn list_topics(&self, ns: &NamespaceName) -> Result<Vec<String>, TopicAdminError> {
        Ok(vec![
            format!("persistent://{ns}/plain"),
            format!("persistent://{ns}/p-partition-0"),
        ])
    }
    async fn create_topic(
        &self,
        topic: &TopicName,
        properties: BTreeMap<String, String>,
    ) -> Result<(), TopicAdminError> {
        if topic.local_name() == "plain" {
            return Err(TopicAdminError::AlreadyExists(
                "This topic already exists".into(),
            ));
        }
        self.log(format!("create {topic} {properties:?}"));
        Ok(())
    }
    async fn delete_topic(&self, topic: &TopicName, force: bool) -> Result<(), TopicAdminError> {
        match topic.local_name() {
            "busy" if !force => Err(TopicAdminError::Precondition(
                "Topic has active producers/subscriptions".into(),
            )),
            "missing" => Err(TopicAdminError::NotFound("Topic not found".into())),
            _ => {
                self.log(format!("delete {topic} force={force}"));
                Ok(())
            }
        }
    }
    async fn stats(&self, topic: &TopicName) -> Result<TopicStats, TopicAdminError> {
        if topic.local_name() == "elsewhere" {
            // The owner's admin base URL; the router appends the request's path and query.
            return Err(TopicAdminError::Redirect("http://other:8080".into()));
        }
        if topic.local_name() == "unowned" {
            return Err(TopicAdminError::Unavailable(
                "bundle not served here".into(),
            ));
        }
        let mut subscriptions = BTreeMap::new();
        subscriptions.insert(
            "sub-1".to_owned(),
            SubscriptionStats {
                msg_backlog: 7,
                subscription_type: "Shared".into(),
                consumers: vec![ConsumerStats {
                    consumer_name: "c1".into(),
                    available_permits: 1000,
                    ..ConsumerStats::default()
                }],
                is_durable: true,
                ..SubscriptionStats::default()
            },
        );
        Ok(TopicStats {
            msg_rate_in: 1.5,
            msg_in_counter: 42,
            bytes_in_counter: 4200,
            storage_size: 9000,
            backlog_size: 700,
            publishers: vec![PublisherStats {
                access_mode: "Shared".into(),
                producer_name: "p1".into(),
                producer_id: 3,
                ..PublisherStats::default()
            }],
            subscriptions,
            deduplication_status: "Disabled".into(),
            ..TopicStats::default()
        })
    }
    async fn internal_stats(
        &self,
        _: &TopicName,
    ) -> Result<PersistentTopicInternalStats, TopicAdminError> {
        let mut cursors = BTreeMap::new();
        cursors.insert(
            "sub-1".to_owned(),
            CursorStats {
                mark_delete_position: "5:3".into(),
                read_position: "5:4".into(),
                messages_consumed_counter: 4,
                individually_deleted_messages: "[(5:5..5:7]]".into(),
                ..CursorStats::default()
            },
        );
        Ok(PersistentTopicInternalStats {
            entries_added_counter: 10,
            number_of_entries: 10,
            total_size: 1000,
            current_ledger_entries: 10,
            current_ledger_size: 1000,
            last_confirmed_entry: "5:9".into(),
            state: "LedgerOpened".into(),
            ledgers: vec![LedgerInfo {
                ledger_id: 5,
                entries: 10,
                size: 1000,
                offloaded: false,
                under_replicated: false,
                ..LedgerInfo::default()
            }],
            cursors,
            ..PersistentTopicInternalStats::default()
        })
    }
    async fn subscriptions(&self, topic: &TopicName) -> Result<Vec<String>, TopicAdminError> {
        Ok(vec![format!("sub-of-{}", topic.local_name())])
    }
    async fn create_subscription(
        &self,
        topic: &TopicName,
        sub: &str,
        start: StartPosition,
    ) -> Result<(), TopicAdminError> {
        if sub == "exists" {
            return Err(TopicAdminError::AlreadyExists(
                "Subscription already exists for topic".into(),
            ));
        }
        self.log(format!("subscribe {topic} {sub} {start:?}"));
        Ok(())
    }
    async fn delete_subscription(
        &self,
        topic: &TopicName,
        sub: &str,
        force: bool,
    ) -> Result<(), TopicAdminError> {
        if sub == "missing" {
            return Err(TopicAdminError::NotFound("Subscription not found".into()));
        }
        self.log(format!("unsubscribe {topic} {sub} force={force}"));
        Ok(())
    }
    async fn reset_cursor(
        &self,
        topic: &TopicName,
        sub: &str,
        target: ResetTarget,
    ) -> Result<(), TopicAdminError> {
        self.log(format!("reset {topic} {sub} {target:?}"));
        Ok(())
    }
    async fn skip(&self, topic: &TopicName, sub: &str, n: u64) -> Result<(), TopicAdminError> {
        self.log(format!("skip {topic} {sub} {n}"));
        Ok(())
    }
    async fn skip_all(&self, topic: &TopicName, sub: &str) -> Result<(), TopicAdminError> {
        self.log(format!("skip_all {topic} {sub}"));
        Ok(())
    }
    async fn peek(
        &self,
        _: &TopicName,
        _: &str,
        position: u64,
    ) -> Result<PeekedMessage, TopicAdminError> {
        if position > 2 {
            return Err(TopicAdminError::NotFound("No message found".into()));
        }
        Ok(PeekedMessage {
            ledger_id: 5,
            entry_id: position - 1,
            payload: Bytes::from(format!("hello-{position}")),
            publish_time_ms: Some(1_700_000_000_000),
            producer_name: Some("p1".into()),
            sequence_id: Some(position),
            properties: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            ..PeekedMessage::default()
        })
    }
}

#[test]
fn topic_routes_reach_the_topic_service() {
    let fake = Arc::new(FakeTopics::default());
    let s = start(fake.clone());
    expect(&s.put("/tenants/acme", None), 204);
    expect(&s.put("/namespaces/acme/ns", None), 204);
    let base = "/persistent/acme/ns";

    assert_eq!(
        s.get(base).json(),
        json!([
            "persistent://acme/ns/plain",
            "persistent://acme/ns/p-partition-0"
        ])
    );
    expect(&s.get("/persistent/acme/nope"), 404);

    // Create: properties body, encoded names decoded; conflicts both ways.
    expect(
        &s.put(&format!("{base}/new%20one"), Some(r#"{"owner":"me"}"#)),
        412,
    );
    expect(
        &s.put(&format!("{base}/new.one"), Some(r#"{"owner":"me"}"#)),
        204,
    );
    expect(&s.put(&format!("{base}/plain"), None), 409);
    expect(&s.put(&format!("{base}/plain/partitions"), Some("2")), 409);
    expect(&s.put(&format!("{base}/q"), Some("[1]")), 400);
    assert_eq!(
        fake.take(),
        vec![r#"create persistent://acme/ns/new.one {"owner": "me"}"#]
    );

    // Delete with and without force.
    let a = s.delete(&format!("{base}/busy"));
    expect(&a, 412);
    assert_eq!(a.reason(), "Topic has active producers/subscriptions");
    expect(&s.delete(&format!("{base}/busy?force=true")), 204);
    expect(&s.delete(&format!("{base}/missing")), 404);
    assert_eq!(
        fake.take(),
        vec!["delete persistent://acme/ns/busy force=true"]
    );

    // Stats, in Pulsar's field names.
    let a = s.get(&format!("{base}/plain/stats"));
    expect(&a, 200);
    let st = a.json();
    assert_eq!(st["msgRateIn"], 1.5);
    assert_eq!(st["msgInCounter"], 42);
    assert_eq!(st["bytesInCounter"], 4200);
    assert_eq!(st["storageSize"], 9000);
    assert_eq!(st["backlogSize"], 700);
    assert_eq!(st["msgThroughputOut"], 0.0);
    assert_eq!(st["publishers"][0]["producerName"], "p1");
    assert_eq!(st["publishers"][0]["accessMode"], "Shared");
    let sub = &st["subscriptions"]["sub-1"];
    assert_eq!(sub["msgBacklog"], 7);
    assert_eq!(sub["type"], "Shared");
    assert_eq!(sub["consumers"][0]["consumerName"], "c1");
    assert_eq!(sub["consumers"][0]["availablePermits"], 1000);
    assert!(sub.get("activeConsumerName").is_none());

    // Redirect to the owner and "not served here".
    let a = s.get(&format!("{base}/elsewhere/stats?getPreciseBacklog=true"));
    expect(&a, 307);
    assert_eq!(
        a.header("location"),
        Some(
            "http://other:8080/admin/v2/persistent/acme/ns/elsewhere/stats?getPreciseBacklog=true"
        )
    );
    expect(&s.get(&format!("{base}/unowned/stats")), 503);

    let a = s.get(&format!("{base}/plain/internalStats"));
    expect(&a, 200);
    let st = a.json();
    assert_eq!(st["entriesAddedCounter"], 10);
    assert_eq!(st["numberOfEntries"], 10);
    assert_eq!(st["totalSize"], 1000);
    assert_eq!(st["currentLedgerEntries"], 10);
    assert_eq!(st["currentLedgerSize"], 1000);
    assert_eq!(st["lastConfirmedEntry"], "5:9");
    assert_eq!(
        st["ledgers"],
        json!([{"ledgerId": 5, "entries": 10, "size": 1000, "offloaded": false, "underReplicated": false}])
    );
    let c = &st["cursors"]["sub-1"];
    assert_eq!(c["markDeletePosition"], "5:3");
    assert_eq!(c["readPosition"], "5:4");
    assert_eq!(c["messagesConsumedCounter"], 4);
    assert_eq!(c["individuallyDeletedMessages"], "[(5:5..5:7]]");

    assert_eq!(
        s.get(&format!("{base}/my%2Dtopic/subscriptions")).json(),
        json!(["sub-of-my-topic"])
    );

    // Subscriptions: create at latest (no body), earliest, a message id; delete.
    let sub = format!("{base}/plain/subscription");
    expect(&s.put(&format!("{sub}/s1"), None), 204);
    expect(
        &s.put(
            &format!("{sub}/s2"),
            Some(r#"{"ledgerId":-1,"entryId":-1,"partitionIndex":-1}"#),
        ),
        204,
    );
    expect(
        &s.put(
            &format!("{sub}/s3"),
            Some(r#"{"ledgerId":9223372036854775807,"entryId":9223372036854775807}"#),
        ),
        204,
    );
    expect(
        &s.put(
            &format!("{sub}/s%204"),
            Some(r#"{"ledgerId":5,"entryId":2}"#),
        ),
        204,
    );
    expect(
        &s.put(&format!("{sub}/s5"), Some(r#"{"ledgerId":-7,"entryId":2}"#)),
        400,
    );
    expect(&s.put(&format!("{sub}/exists"), None), 409);
    expect(&s.delete(&format!("{sub}/s1")), 204);
    expect(&s.delete(&format!("{sub}/s1?force=true")), 204);
    expect(&s.delete(&format!("{sub}/missing")), 404);
    assert_eq!(
        fake.take(),
        vec![
            "subscribe persistent://acme/ns/plain s1 Latest",
            "subscribe persistent://acme/ns/plain s2 Earliest",
            "subscribe persistent://acme/ns/plain s3 Latest",
            "subscribe persistent://acme/ns/plain s 4 At { ledger_id: 5, entry_id: 2 }",
            "unsubscribe persistent://acme/ns/plain s1 force=false",
            "unsubscribe persistent://acme/ns/plain s1 force=true",
        ]
    );

    // Cursor moves.
    expect(
        &s.post(&format!("{sub}/s1/resetcursor/1700000000000"), None),
        204,
    );
    expect(
        &s.post(&format!("{sub}/s1/resetcursor/yesterday"), None),
        400,
    );
    expect(
        &s.post(
            &format!("{sub}/s1/resetcursor"),
            Some(r#"{"ledgerId":5,"entryId":3,"partitionIndex":-1,"isExcluded":true,"batchIndex":-1}"#),
        ),
        204,
    );
    expect(
        &s.post(
            &format!("{sub}/s1/resetcursor"),
            Some(r#"{"ledgerId":5,"entryId":4,"batchIndex":2}"#),
        ),
        204,
    );
    expect(&s.post(&format!("{sub}/s1/resetcursor"), None), 400);
    expect(&s.post(&format!("{sub}/s1/skip/10"), None), 204);
    expect(&s.post(&format!("{sub}/s1/skip/-1"), None), 400);
    expect(&s.post(&format!("{sub}/s1/skip_all"), None), 204);
    assert_eq!(
        fake.take(),
        vec![
            "reset persistent://acme/ns/plain s1 Timestamp(1700000000000)",
            "reset persistent://acme/ns/plain s1 MessageId { ledger_id: 5, entry_id: 3, batch_index: None, excluded: true }",
            "reset persistent://acme/ns/plain s1 MessageId { ledger_id: 5, entry_id: 4, batch_index: Some(2), excluded: false }",
            "skip persistent://acme/ns/plain s1 10",
            "skip_all persistent://acme/ns/plain s1",
        ]
    );

    // Peek: the payload as the body, metadata as X-Pulsar-* headers.
    let a = s.get(&format!("{sub}/s1/position/2"));
    expect(&a, 200);
    assert_eq!(a.body, b"hello-2");
    assert_eq!(a.header("x-pulsar-message-id"), Some("5:1"));
    assert_eq!(
        a.header("x-pulsar-publish-time"),
        Some("2023-11-14T22:13:20.000Z")
    );
    assert_eq!(a.header("x-pulsar-property-k"), Some("v"));
    assert_eq!(a.header("x-pulsar-sequence-id"), Some("2"));
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));
    expect(&s.get(&format!("{sub}/s1/position/0")), 412);
    expect(&s.get(&format!("{sub}/s1/position/3")), 404);

    // Deleting a partitioned topic deletes its partitions through the service.
    expect(&s.put(&format!("{base}/p2/partitions"), Some("2")), 204);
    expect(&s.delete(&format!("{base}/p2/partitions?force=true")), 204);
    assert_eq!(
        fake.take(),
        vec![
            "delete persistent://acme/ns/p2-partition-0 force=true",
            "delete persistent://acme/ns/p2-partition-1 force=true",
        ]
    );
    // Partitioned stats: the partitions' stats added up, Pulsar-style.
    expect(&s.put(&format!("{base}/ps/partitions"), Some("2")), 204);
    let a = s.get(&format!("{base}/ps/partitioned-stats"));
    expect(&a, 200);
    let st = a.json();
    assert_eq!(st["metadata"], json!({"partitions": 2}));
    assert_eq!(st["msgInCounter"], 84);
    assert_eq!(st["msgRateIn"], 3.0);
    assert_eq!(st["storageSize"], 18000);
    assert_eq!(st["publishers"].as_array().unwrap().len(), 2);
    assert_eq!(st["subscriptions"]["sub-1"]["msgBacklog"], 14);
    assert_eq!(st["subscriptions"]["sub-1"]["type"], "Shared");
    assert_eq!(
        st["subscriptions"]["sub-1"]["consumers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        st["partitions"]["persistent://acme/ns/ps-partition-1"]["msgInCounter"],
        42
    );
    let st = s
        .get(&format!("{base}/ps/partitioned-stats?perPartition=false"))
        .json();
    assert_eq!(st["partitions"], json!({}));
    expect(&s.get(&format!("{base}/plain/partitioned-stats")), 404);
    expect(&s.delete(&format!("{base}/ps/partitions")), 204);
    fake.take();
    // `namespaces topics` lists the same as the persistent listing.
    assert_eq!(
        s.get("/namespaces/acme/ns/topics").json(),
        json!([
            "persistent://acme/ns/plain",
            "persistent://acme/ns/p-partition-0"
        ])
    );

    // The namespace has topics (the service lists them): 409.
    expect(&s.delete("/namespaces/acme/ns"), 409);
}

#[test]
fn oversized_bodies_are_refused() {
    use std::io::{Read, Write};
    let s = start(Arc::new(NoTopics));
    expect(&s.put("/tenants/acme", None), 204);
    // Announce a body over the limit: the answer is 413 before any of it is sent (sending it
    // would race the server closing the connection).
    let addr = s
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/admin/v2");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "POST /admin/v2/tenants/acme HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    )
    .unwrap();
    let mut answer = [0u8; 64];
    let n = conn.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

/// pulsar-admin's `topics list` and `topics list-partitioned-topics` ask both domains and fail
/// when either answer is an error: the non-persistent lists must answer (empty: Magnetar has
/// no non-persistent topics).
#[test]
fn topic_lists_answer_for_the_non_persistent_domain_too() {
    let s = start(Arc::new(FakeTopics::default()));
    expect(&s.get("/non-persistent/acme/ns"), 404);
    expect(&s.put("/tenants/acme", None), 204);
    expect(&s.put("/namespaces/acme/ns", None), 204);
    let a = s.get("/non-persistent/acme/ns");
    expect(&a, 200);
    assert_eq!(a.json(), json!([]));
    let a = s.get("/non-persistent/acme/ns/partitioned?includeSystemTopic=false");
    expect(&a, 200);
    assert_eq!(a.json(), json!([]));
    expect(&s.get("/non-persistent/acme/nope/partitioned"), 404);
    expect(&s.get("/non-persistent/acme/b%20d"), 412);
}

/// pulsar-admin's `create-partitioned-topic --metadata k=v` sends Pulsar's
/// `PartitionedTopicMetadata` object instead of a bare number.
#[test]
fn partitioned_topic_creation_takes_the_metadata_object() {
    let s = start(Arc::new(NoTopics));
    expect(&s.put("/tenants/acme", None), 204);
    expect(&s.put("/namespaces/acme/ns", None), 204);
    let path = "/persistent/acme/ns/t/partitions?createLocalTopicOnly=false";
    expect(
        &s.put(path, Some(r#"{"partitions":3,"properties":{"k":"v"}}"#)),
        204,
    );
    assert_eq!(
        s.get("/persistent/acme/ns/t/partitions").json()["partitions"],
        3
    );
    expect(
        &s.put(
            "/persistent/acme/ns/u/partitions",
            Some(r#"{"partitions":0}"#),
        ),
        406,
    );
    expect(
        &s.put("/persistent/acme/ns/u/partitions", Some(r#"{"k":1}"#)),
        400,
    );
}

const AVRO_V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
const AVRO_V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"string","default":""}]}"#;

fn schema_payload(ty: &str, definition: &str) -> String {
    json!({"type": ty, "schema": definition, "properties": {"owner": "me"}}).to_string()
}

/// `pulsar-admin schemas get / upload / delete` and the versions endpoint, with Pulsar's JSON
/// (`GetSchemaResponse`, `PostSchemaResponse`, `DeleteSchemaResponse`) and codes.
#[test]
fn schema_admin_api() {
    let s = start(Arc::new(NoTopics));
    expect(&s.get("/schemas/acme/ns/t/schema"), 404);
    expect(&s.put("/tenants/acme", None), 204);
    expect(&s.put("/namespaces/acme/ns", None), 204);
    let path = "/schemas/acme/ns/t/schema";
    let a = s.get(path);
    expect(&a, 404);
    assert_eq!(a.reason(), "Schema not found");

    let a = s.post(path, Some(&schema_payload("AVRO", AVRO_V1)));
    expect(&a, 200);
    assert_eq!(a.json(), json!({"version": {"version": 0}}));
    // The same definition again is the same version.
    let a = s.post(path, Some(&schema_payload("AVRO", AVRO_V1)));
    assert_eq!(a.json(), json!({"version": {"version": 0}}));
    let a = s.post(path, Some(&schema_payload("AVRO", AVRO_V2)));
    expect(&a, 200);
    assert_eq!(a.json(), json!({"version": {"version": 1}}));

    let a = s.get(path);
    expect(&a, 200);
    let got = a.json();
    assert_eq!(got["version"], 1);
    assert_eq!(got["type"], "AVRO");
    assert_eq!(got["data"], AVRO_V2);
    assert_eq!(got["properties"], json!({"owner": "me"}));
    assert!(got["timestamp"].as_u64().unwrap() > 0, "{got}");
    let a = s.get(&format!("{path}/0"));
    expect(&a, 200);
    assert_eq!(a.json()["data"], AVRO_V1);
    expect(&s.get(&format!("{path}/9")), 404);
    expect(&s.get(&format!("{path}/x")), 400);
    // Partitions share their parent's schema.
    assert_eq!(
        s.get("/schemas/acme/ns/t-partition-2/schema").json()["version"],
        1
    );
    let a = s.get("/schemas/acme/ns/t/schemas");
    expect(&a, 200);
    let all = a.json()["getSchemaResponses"].as_array().unwrap().clone();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["version"], 0);

    // Incompatible under the default FULL strategy: 409; invalid data or type: 422.
    let a = s.post(path, Some(&schema_payload("JSON", AVRO_V1)));
    expect(&a, 409);
    expect(
        &s.post(path, Some(&schema_payload("AVRO", "not json"))),
        422,
    );
    expect(&s.post(path, Some(&schema_payload("NOPE", ""))), 422);
    expect(&s.post(path, Some("{")), 400);

    let a = s.delete(path);
    expect(&a, 200);
    assert_eq!(a.json(), json!({"version": 1}));
    expect(&s.get(path), 404);

    // Names are checked; the namespace must exist.
    expect(&s.get("/schemas/acme/b%20d/t/schema"), 412);
    expect(
        &s.post(
            "/schemas/acme/nope/t/schema",
            Some(&schema_payload("STRING", "")),
        ),
        404,
    );
}

/// Deleting a topic deletes its schema, as Pulsar does (a deleted topic re-created later starts
/// without the old schema versions); deleting one partition leaves the shared schema.
#[test]
fn deleting_a_topic_deletes_its_schema() {
    let fake = Arc::new(FakeTopics::default());
    let s = start(fake.clone());
    expect(&s.put("/tenants/acme", None), 204);
    expect(&s.put("/namespaces/acme/ns", None), 204);
    for topic in ["gone", "parted"] {
        let path = format!("/schemas/acme/ns/{topic}/schema");
        expect(&s.post(&path, Some(&schema_payload("AVRO", AVRO_V1))), 200);
    }
    expect(&s.delete("/persistent/acme/ns/gone"), 204);
    expect(&s.get("/schemas/acme/ns/gone/schema"), 404);

    expect(
        &s.put("/persistent/acme/ns/parted/partitions", Some("2")),
        204,
    );
    expect(&s.delete("/persistent/acme/ns/parted-partition-1"), 204);
    expect(&s.get("/schemas/acme/ns/parted/schema"), 200);
    expect(&s.delete("/persistent/acme/ns/parted/partitions"), 204);
    expect(&s.get("/schemas/acme/ns/parted/schema"), 404);
}

#[test]
fn bookies_and_the_ledgers_auto_recovery_is_copying_are_listed() {
    use magnetar_metadata::{Expected, MetadataStore};
    let store = Arc::new(MemoryStore::new());
    let seed = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    seed.block_on(async {
        let registration = serde_json::json!({
            "id": "b1:3181", "state": "read_write", "free_bytes": 10, "used_bytes": 2,
            "zone": "zone-a", "version": "0.1.0"
        });
        let _ = store
            .put(
                "/bookies/b1:3181",
                registration.to_string().into(),
                Expected::Any,
            )
            .await
            .unwrap();
        let mark = serde_json::json!({"missing": ["gone:3181"], "marked_ms": 5});
        let _ = store
            .put(
                "/underreplicated/ledgers/7",
                mark.to_string().into(),
                Expected::Any,
            )
            .await
            .unwrap();
    });
    let s = start_on(store, Arc::new(NoTopics));
    let all = s.get("/bookies/all");
    expect(&all, 200);
    assert_eq!(
        all.json(),
        serde_json::json!({"bookies": [{
            "bookieId": "b1:3181", "state": "read_write", "zone": "zone-a",
            "freeBytes": 10, "usedBytes": 2
        }]})
    );
    let marked = s.get("/bookies/underreplicated");
    expect(&marked, 200);
    assert_eq!(
        marked.json(),
        serde_json::json!([{"ledgerId": 7, "missing": ["gone:3181"], "markedMs": 5}])
    );

    // Decommission: only a registered bookie; the status follows the request.
    expect(&s.put("/bookies/nobody:1/decommission", None), 404);
    let before = s.get("/bookies/b1:3181/decommission");
    expect(&before, 200);
    assert_eq!(before.json()["decommissioning"], false);
    expect(&s.put("/bookies/b1:3181/decommission", None), 204);
    let during = s.get("/bookies/b1:3181/decommission");
    assert_eq!(
        during.json(),
        serde_json::json!({"bookieId": "b1:3181", "decommissioning": true,
            "ledgersRemaining": 0, "readyToRemove": true})
    );
    expect(&s.delete("/bookies/b1:3181/decommission"), 204);
    assert_eq!(
        s.get("/bookies/b1:3181/decommission").json()["decommissioning"],
        false
    );
}
