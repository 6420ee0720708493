//! Compiles the project's `.proto` files with the `protoc` vendored by `protoc-bin-vendored`, so a
//! fresh machine needs no system protoc. (etcd-client's build script finds the same binary
//! through `tools/protoc`, wired in by `.cargo/config.toml`.)
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // Payloads are the client's bytes: keep them as `Bytes` so they are never copied.
        .bytes(".")
        .compile_with_config(config, &["proto/bookie.proto"], &["proto"])?;
    Ok(())
}
