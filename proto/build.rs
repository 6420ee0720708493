//! Compiles the project's `.proto` files with the `protoc` vendored by `protoc-bin-vendored`, so a
//! fresh machine needs no system protoc. (etcd-client's build script finds the same binary
//! through `tools/protoc`, wired in by `.cargo/config.toml`.)
//!
//! - `proto/bookie.proto`: messages and the tonic service of the bookie RPC.
//! - `proto/pulsar_api.proto`: messages of the Pulsar binary protocol (prost only, no service).
//!   Every command field of `BaseCommand` is boxed: there are ~70 of them, and inline they would
//!   make each `BaseCommand` several KiB that every decode initialises and every move copies.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        // Payloads are the client's bytes: keep them as `Bytes` so they are never copied.
        .bytes(".")
        .compile_with_config(config, &["proto/bookie.proto"], &["proto"])?;

    let pulsar = "proto/pulsar_api.proto";
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    config.bytes(["."]);
    for field in base_command_fields(&std::fs::read_to_string(pulsar)?) {
        config.boxed(format!(".pulsar.proto.BaseCommand.{field}"));
    }
    config.compile_protos(&[pulsar], &["proto"])?;
    Ok(())
}

/// Names of the message-typed fields of `BaseCommand` (lines `optional CommandX name = N;`).
fn base_command_fields(proto: &str) -> Vec<String> {
    proto
        .lines()
        .skip_while(|line| !line.starts_with("message BaseCommand"))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("optional"), Some(ty), Some(name)) if ty.starts_with("Command") => {
                    Some(name.to_string())
                }
                _ => None,
            }
        })
        .collect()
}
