#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! `magnetar admin …` as an operator runs it, against the admin REST API served in this test
//! process on 127.0.0.1 (metadata in memory, no topic service).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use magnetar_broker::admin::{self, AdminState};
use magnetar_broker::policies::Policies;
use magnetar_metadata::MemoryStore;
use magnetar_testkit::process::{self, run};

struct Server {
    url: String,
    _rt: tokio::runtime::Runtime,
}

fn start() -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = AdminState::without_topics(Policies::new(Arc::new(MemoryStore::new())));
    rt.spawn(admin::serve(listener, state, std::future::pending()));
    Server { url, _rt: rt }
}

/// The built binary with an empty environment, run in `dir`.
fn magnetar(dir: &Path) -> Command {
    process::command(env!("CARGO_BIN_EXE_magnetar"), dir)
}

impl Server {
    /// `magnetar admin --url URL args…`, which must succeed; its stdout.
    fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let (code, out, err) = run(magnetar(dir).args(["admin", "--url", &self.url]).args(args));
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    }

    /// `magnetar admin --url URL args…`, which must fail with exit 1; its stderr.
    fn fails(&self, dir: &Path, args: &[&str]) -> String {
        let (code, out, err) = run(magnetar(dir).args(["admin", "--url", &self.url]).args(args));
        assert_eq!(code, 1, "{args:?} exited {code}: {out} {err}");
        err
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn tenants_and_namespaces() {
    let s = start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    assert_eq!(s.ok(d, &["tenants", "list"]), "");
    assert_eq!(
        s.ok(
            d,
            &[
                "tenants",
                "create",
                "acme",
                "-r",
                "ops,dev",
                "-c",
                "standalone"
            ]
        ),
        ""
    );
    s.ok(d, &["tenants", "create", "beta"]);
    assert_eq!(s.ok(d, &["tenants", "list"]), "acme\nbeta\n");
    assert_eq!(
        json(&s.ok(d, &["tenants", "get", "acme"])),
        serde_json::json!({"adminRoles": ["ops", "dev"], "allowedClusters": ["standalone"]})
    );
    s.ok(d, &["tenants", "update", "acme", "--admin-roles", "root"]);
    assert_eq!(
        json(&s.ok(d, &["tenants", "get", "acme"]))["adminRoles"],
        serde_json::json!(["root"])
    );
    let err = s.fails(d, &["tenants", "create", "acme"]);
    assert!(err.contains("HTTP 409"), "{err}");

    s.ok(
        d,
        &["namespaces", "create", "acme/orders", "--bundles", "2"],
    );
    s.ok(d, &["namespaces", "create", "acme/logs"]);
    assert_eq!(
        s.ok(d, &["namespaces", "list", "acme"]),
        "acme/logs\nacme/orders\n"
    );
    let ns = "acme/orders";
    s.ok(
        d,
        &[
            "namespaces",
            "set-retention",
            ns,
            "--time",
            "3h",
            "--size",
            "-1",
        ],
    );
    assert_eq!(
        json(&s.ok(d, &["namespaces", "get-retention", ns])),
        serde_json::json!({"retentionTimeInMinutes": 180, "retentionSizeInMB": -1})
    );
    s.ok(d, &["namespaces", "set-deduplication", ns, "--enable"]);
    assert_eq!(
        s.ok(d, &["namespaces", "get-deduplication", ns]).trim(),
        "true"
    );
    assert_eq!(
        json(&s.ok(d, &["namespaces", "get-schema-compatibility-strategy", ns])),
        "UNDEFINED"
    );
    s.ok(
        d,
        &[
            "namespaces",
            "set-schema-compatibility-strategy",
            ns,
            "--compatibility",
            "backward_transitive",
        ],
    );
    assert_eq!(
        json(&s.ok(d, &["namespaces", "get-schema-compatibility-strategy", ns])),
        "BACKWARD_TRANSITIVE"
    );
    let err = s.fails(
        d,
        &[
            "namespaces",
            "set-schema-compatibility-strategy",
            ns,
            "-c",
            "SIDEWAYS",
        ],
    );
    assert!(err.contains("HTTP 412"), "{err}");
    s.ok(
        d,
        &[
            "namespaces",
            "set-is-allow-auto-update-schema",
            ns,
            "--disable",
        ],
    );
    assert_eq!(
        s.ok(d, &["namespaces", "get-is-allow-auto-update-schema", ns])
            .trim(),
        "false"
    );
    s.ok(
        d,
        &[
            "namespaces",
            "set-persistence",
            ns,
            "--ensemble",
            "3",
            "--write-quorum",
            "2",
            "--bookkeeper-ack-quorum",
            "2",
        ],
    );
    assert_eq!(
        json(&s.ok(d, &["namespaces", "get-persistence", ns]))["bookkeeperWriteQuorum"],
        2
    );
    let err = s.fails(
        d,
        &[
            "namespaces",
            "set-persistence",
            ns,
            "-e",
            "1",
            "-w",
            "2",
            "-a",
            "1",
        ],
    );
    assert!(err.contains("HTTP 400"), "{err}");
    s.ok(
        d,
        &[
            "namespaces",
            "set-auto-topic-creation",
            ns,
            "--enable",
            "--type",
            "partitioned",
            "--num-partitions",
            "4",
        ],
    );
    let policies = json(&s.ok(d, &["namespaces", "policies", ns]));
    assert_eq!(policies["bundles"]["numBundles"], 2);
    assert_eq!(
        policies["retention_policies"]["retentionTimeInMinutes"],
        180
    );
    assert_eq!(policies["deduplicationEnabled"], true);
    assert_eq!(policies["persistence"]["bookkeeperEnsemble"], 3);
    assert_eq!(
        policies["autoTopicCreationOverride"],
        serde_json::json!({"allowAutoTopicCreation": true, "topicType": "partitioned", "defaultNumPartitions": 4})
    );
    s.ok(d, &["namespaces", "remove-retention", ns]);
    // An unset policy prints nothing.
    assert_eq!(s.ok(d, &["namespaces", "get-retention", ns]), "");

    let err = s.fails(d, &["tenants", "delete", "acme"]);
    assert!(err.contains("HTTP 409"), "{err}");
    assert!(err.contains("still has active namespaces"), "{err}");
    s.ok(d, &["namespaces", "delete", "acme/logs"]);
    s.ok(d, &["namespaces", "delete", ns]);
    s.ok(d, &["tenants", "delete", "acme"]);
    assert_eq!(s.ok(d, &["tenants", "list"]), "beta\n");
}

#[test]
fn partitioned_topics() {
    let s = start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    s.ok(d, &["tenants", "create", "acme"]);
    s.ok(d, &["namespaces", "create", "acme/ns"]);

    let topic = "persistent://acme/ns/orders";
    s.ok(d, &["topics", "create-partitioned-topic", topic, "-p", "3"]);
    s.ok(
        d,
        &[
            "topics",
            "create-partitioned-topic",
            "acme/ns/with:colon",
            "--partitions",
            "1",
        ],
    );
    assert_eq!(
        json(&s.ok(d, &["topics", "get-partitioned-topic-metadata", topic])),
        serde_json::json!({"partitions": 3})
    );
    assert_eq!(
        s.ok(d, &["topics", "list-partitioned-topics", "acme/ns"]),
        "persistent://acme/ns/orders\npersistent://acme/ns/with:colon\n"
    );
    s.ok(d, &["topics", "update-partitioned-topic", topic, "-p", "5"]);
    assert_eq!(
        json(&s.ok(d, &["topics", "get-partitioned-topic-metadata", topic]))["partitions"],
        5
    );
    let err = s.fails(d, &["topics", "update-partitioned-topic", topic, "-p", "2"]);
    assert!(err.contains("HTTP 409"), "{err}");
    let err = s.fails(d, &["topics", "create-partitioned-topic", topic, "-p", "0"]);
    assert!(err.contains("HTTP 406"), "{err}");
    s.ok(d, &["topics", "delete-partitioned-topic", topic]);
    let err = s.fails(d, &["topics", "delete-partitioned-topic", topic]);
    assert!(err.contains("HTTP 404"), "{err}");

    let err = s.fails(d, &["topics", "partitioned-stats", "acme/ns/nope"]);
    assert!(err.contains("HTTP 404"), "{err}");

    // Topic commands without a topic service: 503 with the reason.
    let err = s.fails(d, &["topics", "stats", "acme/ns/x"]);
    assert!(err.contains("HTTP 503"), "{err}");
    assert!(err.contains("topic service not running"), "{err}");
}

#[test]
fn errors_exit_1_with_the_reason_on_stderr() {
    let s = start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let err = s.fails(d, &["tenants", "get", "nobody"]);
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    let err = s.fails(d, &["namespaces", "create", "nobody/ns"]);
    assert!(err.contains("HTTP 404"), "{err}");
    let err = s.fails(
        d,
        &["namespaces", "set-retention", "a/b", "-t", "5x", "-s", "1G"],
    );
    assert!(err.contains("invalid time unit"), "{err}");

    // Nothing listening: exit 1 and a message naming the URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, _, err) = run(magnetar(d).args(["admin", "--url", &url, "tenants", "list"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the admin API"), "{err}");

    // A missing argument is a usage error (2).
    let (code, _, _) = run(magnetar(d).args(["admin", "--url", &s.url, "tenants", "get"]));
    assert_eq!(code, 2);
}

#[test]
fn the_url_comes_from_flag_env_or_config() {
    let s = start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    s.ok(d, &["tenants", "create", "acme"]);

    let (code, out, err) = run(magnetar(d)
        .env("MAGNETAR_ADMIN_URL", &s.url)
        .args(["admin", "tenants", "list"]));
    assert_eq!((code, out.as_str()), (0, "acme\n"), "{err}");

    std::fs::write(
        d.join("magnetar.toml"),
        format!("[admin]\nurl = \"{}\"\n", s.url),
    )
    .unwrap();
    let (code, out, err) =
        run(magnetar(d).args(["admin", "--config", "magnetar.toml", "tenants", "list"]));
    assert_eq!((code, out.as_str()), (0, "acme\n"), "{err}");
    let (code, out, err) = run(magnetar(d)
        .env("MAGNETAR_ADMIN__URL", &s.url)
        .args(["admin", "tenants", "list"]));
    assert_eq!((code, out.as_str()), (0, "acme\n"), "{err}");

    // The flag wins over the environment.
    let (code, _, err) = run(magnetar(d)
        .env("MAGNETAR_ADMIN_URL", "http://127.0.0.1:1")
        .args(["admin", "--url", &s.url, "tenants", "list"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(magnetar(d).args(["admin", "--url", "https://x", "tenants", "list"]));
    assert_eq!(code, 1);
    assert!(err.contains("https is not supported"), "{err}");
}
