//! Links libtorch so that the binaries run without LD_LIBRARY_PATH and keep CUDA, and builds the
//! two C++ files of the crate: the c10d shim (`src/comm/shim.cpp`, docs/ARCHITECTURE.md
//! "Distributed") and the device calls tch lacks (`src/device/native.cpp`: bfloat16 autocast,
//! TensorFloat-32, pinned memory).
//!
//! - rpath to `$LIBTORCH/lib`, so `cargo run`, the tests and `target/release/dsno` find libtorch;
//!   on another machine, `LD_LIBRARY_PATH` pointing at that machine's `torch/lib` takes precedence.
//! - `--no-as-needed -ltorch_cuda`: rustc links with `--as-needed`, which drops `libtorch_cuda.so`
//!   because no symbol of ours references it; without it, libtorch never sees a GPU.
//! - The shim is compiled with Gloo when Gloo's headers are found (`$DSNO_GLOO_INCLUDE`, or
//!   `.venv/gloo/include`, which scripts/setup.sh fetches) and with NCCL when libtorch is a CUDA
//!   build and the CUDA and NCCL headers of the wheel's `nvidia` packages are present. A backend
//!   left out is a cargo warning here and a clear error at run time, never a silent fallback.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=DSNO_GLOO_INCLUDE");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/comm/shim.cpp");
    println!("cargo:rerun-if-changed=src/device/native.cpp");
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
    let root = lib
        .parent()
        .expect("libtorch/lib has a parent")
        .to_path_buf();
    let cuda = lib.join("libtorch_cuda.so").exists();
    precision(&root);
    shim(&root, cuda);
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        println!("cargo:rustc-link-search=native={}", lib.display());
        if cuda {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-ltorch");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
}

/// A C++ build against libtorch's headers at `torch` (the wheel's folder).
fn build(torch: &Path) -> cc::Build {
    let include = torch.join("include");
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++17")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .flag_if_supported("-w")
        .opt_level(2);
    b
}

/// Compiles `src/device/native.cpp` (autocast, TF32, pinned memory; CPU and CUDA builds alike).
fn precision(torch: &Path) {
    build(torch)
        .file("src/device/native.cpp")
        .compile("dsno_device");
}

/// Compiles `src/comm/shim.cpp` against libtorch's headers at `torch` (the wheel's folder).
fn shim(torch: &Path, cuda: bool) {
    let mut b = build(torch);
    b.file("src/comm/shim.cpp");
    let gloo = std::env::var_os("DSNO_GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
                .join(".venv/gloo/include")
        });
    watch(&gloo);
    if gloo.join("gloo/rendezvous/store.h").exists() {
        b.include(&gloo).define("USE_C10D_GLOO", None);
    } else {
        println!(
            "cargo:warning=Gloo's headers not found ({}): CPU process groups disabled; run scripts/setup.sh",
            gloo.display()
        );
    }
    let nv = torch.parent().map(|p| p.join("nvidia"));
    let nv_ok = |p: &str| nv.as_ref().is_some_and(|nv| nv.join(p).exists());
    if let Some(nv) = &nv {
        watch(&nv.join("nccl/include"));
        watch(&nv.join("cu13/include/crt"));
    }
    let cu = ["cu13", "cu12"]
        .into_iter()
        .find(|c| nv_ok(&format!("{c}/include/crt/host_config.h")));
    match (cuda, cu, nv_ok("nccl/include/nccl.h")) {
        (true, Some(c), true) => {
            let nv = nv.expect("checked above");
            b.include(nv.join(c).join("include"))
                .include(nv.join("nccl/include"))
                .define("USE_C10D_NCCL", None)
                .define("USE_CUDA", None);
        }
        (true, _, _) => println!(
            "cargo:warning=CUDA or NCCL headers not found beside {}: NCCL process groups disabled; run scripts/setup.sh",
            torch.display()
        ),
        _ => {}
    }
    b.compile("dsno_comm");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if cuda {
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}

/// Re-runs the build script when `path` (or, while it is missing, its nearest existing ancestor)
/// changes: headers installed after a first build then enable their backend.
fn watch(path: &Path) {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q,
            _ => return,
        }
    }
    println!("cargo:rerun-if-changed={}", p.display());
}
