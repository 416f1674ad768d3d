//! Links libtorch so that the binaries run without LD_LIBRARY_PATH and keep CUDA.
//!
//! - rpath to `$LIBTORCH/lib`, so `cargo run`, the tests and `target/release/dsno` find libtorch;
//!   on another machine, `LD_LIBRARY_PATH` pointing at that machine's `torch/lib` takes precedence.
//! - `--no-as-needed -ltorch_cuda`: rustc links with `--as-needed`, which drops `libtorch_cuda.so`
//!   because no symbol of ours references it; without it, libtorch never sees a GPU.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let lib = PathBuf::from(&libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    if !lib.exists() {
        panic!(
            "libtorch not found at {}: run scripts/setup.sh first (it installs the pinned torch wheel)",
            lib.display()
        );
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-search=native={}", lib.display());
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-ltorch");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
}
