#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of a test binary: a panic is the failure report

//! The `magnetar` binary as an operator meets it: help, exit codes, and configuration layering
//! (defaults < file < environment < flags) observed through `--print-config`.

use std::path::Path;
use std::process::Command;

use magnetar_testkit::process::{self, Server, run};

const SUBCOMMANDS: [&str; 7] = [
    "standalone",
    "broker",
    "bookie",
    "admin",
    "produce",
    "consume",
    "perf",
];

/// The built binary with an empty environment (no stray `MAGNETAR_*` or `RUST_LOG` from the
/// caller), run in `dir`.
fn magnetar(dir: &Path) -> Command {
    process::command(env!("CARGO_BIN_EXE_magnetar"), dir)
}

/// Runs and parses `--print-config` output, which must succeed.
fn printed_config(cmd: &mut Command) -> toml::Table {
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "--print-config failed: {err}");
    out.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("not TOML ({e}):\n{out}"))
}

fn get<'a>(table: &'a toml::Table, path: &str) -> &'a toml::Value {
    let (section, key) = path.split_once('.').unwrap();
    &table[section][key]
}

fn get_str<'a>(table: &'a toml::Table, path: &str) -> &'a str {
    get(table, path).as_str().unwrap()
}

fn get_int(table: &toml::Table, path: &str) -> i64 {
    get(table, path).as_integer().unwrap()
}

#[test]
fn help_lists_every_subcommand_and_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(magnetar(dir.path()).arg("--help"));
    assert_eq!(code, 0);
    for sub in SUBCOMMANDS {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "--help does not list {sub}:\n{out}"
        );
    }
    assert!(out.contains("3 subcommand not built yet"), "{out}");
}

#[test]
fn version_prints_the_package_version() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(magnetar(dir.path()).arg("--version"));
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("magnetar {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn client_commands_check_their_flags_and_report_an_unreachable_broker() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["produce"],
        vec!["consume", "my-topic"],
        vec!["perf"],
        vec!["perf", "consume"],
        vec!["consume", "t", "-s", "s", "--type", "round-robin"],
    ] {
        let (code, _, err) = run(magnetar(dir.path()).args(&args));
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (code, _, err) =
        run(magnetar(dir.path()).args(["perf", "produce", "t", "--size", "99999999"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--size"), "{err}");
    // Nothing listens on port 1: a clear error naming the URL, from the flag or the environment.
    let (code, out, err) = run(magnetar(dir.path())
        .args(["produce", "t", "-m", "hi"])
        .env("MAGNETAR_SERVICE_URL", "pulsar://127.0.0.1:1"));
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("cannot connect to pulsar://127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn broker_refuses_a_metadata_store_it_cannot_share() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(magnetar(dir.path()).arg("broker"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("metadata.backend = \"etcd\""), "{err}");
    assert!(out.is_empty(), "{out}");
}

#[test]
fn standalone_serves_and_stops_cleanly_on_sigterm() {
    const SERVING: &str = "magnetar standalone: serving ";
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        magnetar(dir.path())
            .args(["standalone", "--data-dir", "d", "--broker-port", "0"])
            .args(["--admin-port", "0"]),
        SERVING,
    );
    let url = server.address(SERVING);
    let addr = url.strip_prefix("pulsar://").unwrap();
    assert!(std::net::TcpStream::connect(addr).is_ok(), "{addr}");
    assert!(dir.path().join("d/metadata.redb").exists());
    assert!(dir.path().join("d/bookie").is_dir());
    server.signal("TERM");
    assert_eq!(server.wait_exit(std::time::Duration::from_secs(20)), 0);
}

#[test]
fn no_subcommand_and_unknown_flags_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&mut magnetar(dir.path()));
    assert_eq!(code, 2);
    assert!(err.contains("Usage:"), "{err}");
    let (code, _, _) = run(magnetar(dir.path()).args(["standalone", "--no-such-flag"]));
    assert_eq!(code, 2);
    let (code, _, _) = run(magnetar(dir.path()).arg("zookeeper"));
    assert_eq!(code, 2);
}

/// Starts `magnetar standalone` with `args` in `dir`; once it serves, stops it with SIGTERM
/// and checks it exited 0. Returns its stderr as the error when it exits without serving.
fn serve_once(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let mut cmd = magnetar(dir);
    cmd.arg("standalone").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(["--broker-port", "0", "--admin-port", "0"]);
    let mut server = match Server::try_start_capturing(&mut cmd, "magnetar standalone: serving ") {
        Ok(server) => server,
        Err(e) => {
            assert!(
                e.first_line.is_empty(),
                "unexpected first line {:?}",
                e.first_line
            );
            assert_ne!(e.code, Some(0), "exited 0 without serving: {}", e.stderr);
            return Err(e.stderr);
        }
    };
    server.signal("TERM");
    assert_eq!(server.wait_exit(std::time::Duration::from_secs(20)), 0);
    Ok(())
}

#[test]
fn restarting_with_the_printed_config_opens_the_same_metadata_and_a_new_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    serve_once(dir.path(), &["--data-dir", "./data"], &[]).unwrap();
    // The printed configuration, saved and used as --config, is the same configuration: the
    // same metadata file, which the bookie's data belongs to (its cookie says so).
    let (code, printed, err) =
        run(magnetar(dir.path()).args(["standalone", "--data-dir", "./data", "--print-config"]));
    assert_eq!(code, 0, "{err}");
    std::fs::write(dir.path().join("saved.toml"), &printed).unwrap();
    serve_once(dir.path(), &["--config", "saved.toml"], &[]).unwrap();
    assert!(
        !dir.path().join("data/data").exists(),
        "the metadata path was resolved twice"
    );
    // Another (new, empty) metadata file over the same bookie data: refused, saying why.
    let err = serve_once(
        dir.path(),
        &["--config", "saved.toml"],
        &[("MAGNETAR_METADATA__EMBEDDED_PATH", "other.redb")],
    )
    .expect_err("started over another metadata store");
    assert!(err.contains("refusing to start bookie"), "{err}");
    assert!(err.contains("no cookie for this bookie"), "{err}");
    // And the right one still works.
    serve_once(dir.path(), &["--config", "saved.toml"], &[]).unwrap();
}

#[test]
fn defaults_are_printed_with_the_embedded_path_left_to_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let config = printed_config(magnetar(dir.path()).arg("--print-config"));
    assert_eq!(get_str(&config, "metadata.backend"), "embedded");
    assert_eq!(
        get(&config, "metadata.etcd_endpoints")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(get_str(&config, "metadata.etcd_root"), "/magnetar");
    assert_eq!(get_int(&config, "metadata.session_ttl_ms"), 10_000);
    // Unset: the file is `metadata.redb` under standalone.data_dir, wherever that is.
    assert!(
        config["metadata"].get("embedded_path").is_none(),
        "{config:?}"
    );
    assert_eq!(get_str(&config, "standalone.data_dir"), "./data");
    assert_eq!(get_str(&config, "standalone.bind_address"), "127.0.0.1");
    assert_eq!(get_int(&config, "standalone.broker_port"), 6650);
    assert_eq!(get_int(&config, "standalone.admin_port"), 8080);
    assert_eq!(get_str(&config, "log.level"), "info");
}

#[test]
fn file_then_env_then_flag_each_override_the_layer_below() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("magnetar.toml");
    std::fs::write(
        &file,
        r#"
[metadata]
backend = "etcd"
etcd_endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
session_ttl_ms = 5000

[standalone]
data_dir = "/from/file"
broker_port = 7000

[log]
level = "debug"
"#,
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();

    // File only.
    let config = printed_config(magnetar(dir.path()).args([
        "standalone",
        "--config",
        file_arg,
        "--print-config",
    ]));
    assert_eq!(get_str(&config, "metadata.backend"), "etcd");
    assert_eq!(get_int(&config, "metadata.session_ttl_ms"), 5000);
    assert_eq!(get_str(&config, "standalone.data_dir"), "/from/file");
    assert_eq!(get_int(&config, "standalone.broker_port"), 7000);
    assert_eq!(
        get_int(&config, "standalone.admin_port"),
        8080,
        "untouched keys keep defaults"
    );
    assert_eq!(get_str(&config, "log.level"), "debug");

    // File < environment.
    let config = printed_config(
        magnetar(dir.path())
            .args(["standalone", "--config", file_arg, "--print-config"])
            .env("MAGNETAR_STANDALONE__DATA_DIR", "/from/env")
            .env("MAGNETAR_METADATA__SESSION_TTL_MS", "7000")
            .env(
                "MAGNETAR_METADATA__ETCD_ENDPOINTS",
                "http://e1:2379,http://e2:2379,http://e3:2379",
            )
            .env("MAGNETAR_LOG__LEVEL", "warn,magnetar_metadata=trace"),
    );
    assert_eq!(get_str(&config, "metadata.backend"), "etcd");
    assert_eq!(get_int(&config, "metadata.session_ttl_ms"), 7000);
    assert_eq!(
        get(&config, "metadata.etcd_endpoints")
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(get_str(&config, "standalone.data_dir"), "/from/env");
    assert_eq!(get_int(&config, "standalone.broker_port"), 7000);
    assert_eq!(
        get_str(&config, "log.level"),
        "warn,magnetar_metadata=trace"
    );

    // File < environment < flag.
    let config = printed_config(
        magnetar(dir.path())
            .args([
                "standalone",
                "--config",
                file_arg,
                "--data-dir",
                "/from/flag",
                "--print-config",
            ])
            .env("MAGNETAR_STANDALONE__DATA_DIR", "/from/env")
            .env("MAGNETAR_METADATA__SESSION_TTL_MS", "7000"),
    );
    assert_eq!(get_str(&config, "standalone.data_dir"), "/from/flag");
    assert_eq!(get_int(&config, "metadata.session_ttl_ms"), 7000);
    assert_eq!(get_str(&config, "metadata.backend"), "etcd");
}

#[test]
fn config_file_can_come_from_magnetar_config_and_the_flag_wins() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.toml");
    let b = dir.path().join("b.toml");
    std::fs::write(&a, "[standalone]\nbroker_port = 1111\n").unwrap();
    std::fs::write(&b, "[standalone]\nbroker_port = 2222\n").unwrap();

    let config = printed_config(
        magnetar(dir.path())
            .arg("--print-config")
            .env("MAGNETAR_CONFIG", &a),
    );
    assert_eq!(get_int(&config, "standalone.broker_port"), 1111);

    let config = printed_config(
        magnetar(dir.path())
            .args(["broker", "--print-config", "--config"])
            .arg(&b)
            .env("MAGNETAR_CONFIG", &a),
    );
    assert_eq!(get_int(&config, "standalone.broker_port"), 2222);
}

#[test]
fn rust_log_overrides_the_file_and_magnetar_log_level_overrides_rust_log() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.toml");
    std::fs::write(&file, "[log]\nlevel = \"error\"\n").unwrap();
    let config = printed_config(
        magnetar(dir.path())
            .arg("--print-config")
            .env("MAGNETAR_CONFIG", &file)
            .env("RUST_LOG", "debug"),
    );
    assert_eq!(get_str(&config, "log.level"), "debug");
    let config = printed_config(
        magnetar(dir.path())
            .arg("--print-config")
            .env("RUST_LOG", "debug")
            .env("MAGNETAR_LOG__LEVEL", "trace"),
    );
    assert_eq!(get_str(&config, "log.level"), "trace");
}

#[test]
fn printed_config_is_a_valid_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let (code, first, err) = run(magnetar(dir.path())
        .args(["standalone", "--data-dir", "/srv/m", "--print-config"])
        .env("MAGNETAR_METADATA__BACKEND", "memory"));
    assert_eq!(code, 0, "{err}");
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &first).unwrap();
    let (code, second, err) = run(magnetar(dir.path())
        .arg("--print-config")
        .env("MAGNETAR_CONFIG", &file));
    assert_eq!(code, 0, "{err}");
    assert_eq!(first, second);
}

#[test]
fn unknown_key_in_the_file_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[metadata]\nbackend = \"etcd\"\nsesion_ttl_ms = 5000\n",
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    // Through MAGNETAR_CONFIG without a subcommand, and through a subcommand's --config (the
    // configuration is checked before a subcommand says it is not built yet).
    for (args, env) in [
        (vec!["--print-config"], file_arg),
        (vec!["standalone", "--config", file_arg], ""),
    ] {
        let (code, out, err) = run(magnetar(dir.path()).args(&args).env("MAGNETAR_CONFIG", env));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains("sesion_ttl_ms"),
            "error does not name the key: {err}"
        );
        assert!(
            err.contains("bad.toml"),
            "error does not name the file: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }

    std::fs::write(&file, "[zookeeper]\nservers = 3\n").unwrap();
    let (code, _, err) = run(magnetar(dir.path())
        .arg("--print-config")
        .env("MAGNETAR_CONFIG", &file));
    assert_eq!(code, 1);
    assert!(err.contains("zookeeper"), "{err}");
}

#[test]
fn unknown_key_in_the_environment_is_an_error_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(magnetar(dir.path())
        .arg("--print-config")
        .env("MAGNETAR_METADATA__BAKEND", "etcd"));
    assert_eq!(code, 1);
    assert!(err.contains("MAGNETAR_METADATA__BAKEND"), "{err}");
    // Variables without the section separator are not configuration.
    let (code, _, err) = run(magnetar(dir.path())
        .arg("--print-config")
        .env("MAGNETAR_SOMETHING_ELSE", "x"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn bad_values_are_clear_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let cases: [(&str, &str); 6] = [
        ("[metadata]\nbackend = \"zookeeper\"\n", "zookeeper"),
        ("[standalone]\nbroker_port = 70000\n", "broker_port"),
        (
            "[metadata]\nsession_ttl_ms = \"ten seconds\"\n",
            "session_ttl_ms",
        ),
        (
            "[standalone]\nbind_address = \"localhost:80\"\n",
            "bind_address",
        ),
        (
            "[metadata]\nbackend = \"etcd\"\netcd_endpoints = []\n",
            "etcd_endpoints",
        ),
        ("[metadata\n", "TOML parse error"),
    ];
    for (text, expected) in cases {
        std::fs::write(&file, text).unwrap();
        let (code, _, err) = run(magnetar(dir.path())
            .args(["standalone", "--print-config", "--config"])
            .arg(&file));
        assert_eq!(code, 1, "{text}: {err}");
        assert!(
            err.contains(expected),
            "{text}: expected {expected:?} in: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }

    let (code, _, err) = run(magnetar(dir.path())
        .arg("--print-config")
        .env("MAGNETAR_STANDALONE__ADMIN_PORT", "-1"));
    assert_eq!(code, 1);
    assert!(err.contains("MAGNETAR_STANDALONE__ADMIN_PORT"), "{err}");
}

#[test]
fn a_missing_config_file_is_an_error_not_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) =
        run(magnetar(dir.path()).args(["bookie", "--config", "nowhere.toml", "--print-config"]));
    assert_eq!(code, 1);
    assert!(err.contains("nowhere.toml"), "{err}");
}

#[test]
fn bookie_serves_on_a_free_port_and_stops_cleanly_on_sigterm_and_sigint() {
    use magnetar_bookie::api::{BookieClient, BookieId, BookieState, Entry};
    use magnetar_bookie::rpc::{ClientOptions, GrpcBookieClient};
    use magnetar_metadata::{EntryId, LedgerId};

    let dir = tempfile::tempdir().unwrap();
    // A free port first; the restart takes the same one, as the data directory's cookie
    // names the bookie by its address.
    let mut port = "0".to_owned();
    for signal in ["TERM", "INT"] {
        let mut bookie = Server::start(
            magnetar(dir.path()).args([
                "bookie",
                "--port",
                &port,
                "--data-dir",
                "bk",
                "--zone",
                "z1",
            ]),
            "magnetar bookie: serving ",
        );
        let addr = bookie.address("magnetar bookie: serving ");
        assert!(
            addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
            "{addr}"
        );
        if port == "0" {
            port = addr.rsplit(':').next().unwrap().to_owned();
        } else {
            assert_eq!(addr, format!("127.0.0.1:{port}"));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = GrpcBookieClient::new(BookieId(addr.clone()), ClientOptions::default());
            let info = client.info().await.unwrap();
            assert_eq!(info.state, BookieState::ReadWrite);
            assert_eq!(info.id.0, addr);
            let e = Entry::new(
                LedgerId(1),
                EntryId(0),
                -1,
                bytes::Bytes::from_static(b"hi"),
            );
            // The second run finds the entry of the first in the same data dir.
            if signal == "TERM" {
                client.add(e.clone(), false).await.unwrap();
            }
            let read = client.read(LedgerId(1), EntryId(0), false).await.unwrap();
            assert_eq!(read.entry, e);
        });
        // Our connection goes with the runtime (an idle client that is never polled could not
        // answer the graceful shutdown's GOAWAY handshake, holding it up to the grace period).
        drop(runtime);
        bookie.signal(signal);
        assert_eq!(
            bookie.wait_exit(std::time::Duration::from_secs(8)),
            0,
            "SIG{signal}"
        );
    }
    assert!(dir.path().join("bk").join("journal").is_dir());
}

#[test]
fn bookie_refuses_the_memory_metadata_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(magnetar(dir.path())
        .args(["bookie", "--port", "0"])
        .env("MAGNETAR_METADATA__BACKEND", "memory"));
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("memory") && err.contains("etcd"), "{err}");
}

#[test]
fn bookie_flags_override_the_bookie_section() {
    let dir = tempfile::tempdir().unwrap();
    let config = printed_config(magnetar(dir.path()).arg("--print-config"));
    assert_eq!(get_str(&config, "bookie.data_dir"), "./data/bookie");
    assert_eq!(get_int(&config, "bookie.port"), 3181);
    assert_eq!(
        get(&config, "bookie.disk_usage_threshold").as_float(),
        Some(0.95)
    );
    let config = printed_config(
        magnetar(dir.path())
            .args([
                "bookie",
                "--data-dir",
                "/srv/bk",
                "--port",
                "4000",
                "--bind-address",
                "0.0.0.0",
                "--advertised-address",
                "bk-1.example",
                "--zone",
                "z2",
                "--print-config",
            ])
            .env("MAGNETAR_BOOKIE__PORT", "3999")
            .env("MAGNETAR_BOOKIE__GC_INTERVAL_MS", "5000"),
    );
    assert_eq!(get_str(&config, "bookie.data_dir"), "/srv/bk");
    assert_eq!(get_int(&config, "bookie.port"), 4000);
    assert_eq!(get_str(&config, "bookie.bind_address"), "0.0.0.0");
    assert_eq!(
        get_str(&config, "bookie.advertised_address"),
        "bk-1.example"
    );
    assert_eq!(get_str(&config, "bookie.zone"), "z2");
    assert_eq!(get_int(&config, "bookie.gc_interval_ms"), 5000);
    // Listening everywhere without saying where clients reach it is refused.
    let (code, _, err) =
        run(magnetar(dir.path()).args(["bookie", "--bind-address", "0.0.0.0", "--print-config"]));
    assert_eq!(code, 1);
    assert!(err.contains("advertised_address"), "{err}");
}
