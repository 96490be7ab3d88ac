//! Linking libtorch for the `torch` feature; shared by the host's and the
//! end-to-end tests' build scripts.

/// With the `torch` feature, links libtorch into every binary and test of
/// the crate being built and records where it is. `--no-as-needed` keeps `libtorch.so`
/// (and through it `libtorch_cuda.so`) even though glia calls no symbol of
/// it directly: without it the linker drops the library and CUDA is
/// silently missing at run time. torch-sys reports the library directory as
/// `DEP_TCH_LIBTORCH_LIB`; it becomes the binary's run path, which
/// `LD_LIBRARY_PATH` overrides on a machine whose torch lives elsewhere.
pub fn link_libtorch() {
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.to_string_lossy());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
