//! etcd-client's build script compiles etcd's `.proto` files with `protoc`. A fresh machine has no
//! protoc, so this crate depends on `protoc-bin-vendored` at build time: that makes cargo download
//! the vendored binary before any build script runs, and `tools/protoc` (wired in through
//! `.cargo/config.toml` as `PROTOC`) executes it. Here we only check that it is really there, so a
//! broken set-up fails with a message instead of an obscure protoc error.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo:warning=vendored protoc unavailable ({e}); etcd-client will not build");
    }
}
