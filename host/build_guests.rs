//! Shared by the build scripts that compile guest components: builds a guest
//! workspace for `wasm32-wasip2` with the same toolchain and copies each
//! crate's component into `OUT_DIR`.

#![allow(
    clippy::panic,
    clippy::expect_used,
    reason = "a build script reports failure by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest target.
pub const TARGET: &str = "wasm32-wasip2";

/// Builds the guest workspace at `workspace` (release profile) and copies
/// `<crate>.wasm` for each of `crates` into `out`. Panics with a readable
/// message on failure: this runs in a build script.
pub fn build(workspace: &Path, crates: &[&str], out: &Path) {
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );
    for krate in crates {
        println!("cargo:rerun-if-changed={}", workspace.join(krate).display());
    }
    watch_shared_sources();
    ensure_target();
    cargo_build(&workspace.join("Cargo.toml"), crates);
    std::fs::create_dir_all(out).expect("creating the guest output directory");
    for krate in crates {
        copy_component(krate, &out.join(format!("{krate}.wasm")));
    }
}

/// Builds the standalone crate `krate` in `dir` (a workspace of its own,
/// as `glia new` writes one) the same way, and copies its component to
/// `dest`. Its own sources are the caller's to watch.
#[allow(dead_code, reason = "used by the tests' build script only")]
pub fn build_standalone(dir: &Path, krate: &str, dest: &Path) {
    watch_shared_sources();
    ensure_target();
    cargo_build(&dir.join("Cargo.toml"), &[]);
    copy_component(krate, dest);
}

/// Compiles the native unit tests of the standalone crate in `dir` into
/// `target_dir` (`cargo test --no-run --locked`) and returns the test
/// executables, for a test to run.
#[allow(dead_code, reason = "used by the tests' build script only")]
pub fn build_native_tests(dir: &Path, target_dir: &Path) -> Vec<PathBuf> {
    let mut cmd = plain_cargo();
    cmd.args(["test", "--no-run", "--locked", "--message-format=json"])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running cargo test in {}: {e}", dir.display()));
    assert!(
        output.status.success(),
        "compiling the tests of {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    // One JSON message per line; test targets carry their `executable`.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("\"test\":true"))
        .filter_map(|line| {
            let start = line.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = start + line.get(start..)?.find('"')?;
            line.get(start..end).map(PathBuf::from)
        })
        .collect()
}

/// The cargo running this build, without the outer build's flags and
/// wrappers (clippy, coverage): those are for the host; guests build plainly.
fn plain_cargo() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// `cargo build --release --locked --target wasm32-wasip2` of `packages` of
/// the workspace at `manifest` (all of them when empty), into the shared
/// guest target directory.
fn cargo_build(manifest: &Path, packages: &[&str]) {
    let mut cmd = plain_cargo();
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .args(["--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(guest_target_dir());
    for package in packages {
        cmd.args(["-p", package]);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build {}: {e}", manifest.display()));
    assert!(
        status.success(),
        "building the guest components of {} failed; is the {TARGET} target installed? \
         (`rustup target add {TARGET}`)",
        manifest.display()
    );
}

/// Copies the built component of crate `krate` to `dest`.
fn copy_component(krate: &str, dest: &Path) {
    let built = guest_target_dir()
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", krate.replace('-', "_")));
    std::fs::copy(&built, dest)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), dest.display()));
}

/// Asks cargo to rebuild when what every guest may build from changes: the
/// SDK (a path dependency) and the WIT its bindings read.
fn watch_shared_sources() {
    // Both build scripts that include this file sit one level below the root.
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(&manifest);
    for shared in ["sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(shared).display());
    }
}

/// Makes sure the toolchain can build for the guest target, adding it with
/// rustup (the toolchain's own installer) when it is missing.
fn ensure_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let installed = || {
        Command::new(&rustc)
            .args(["--print", "sysroot"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .is_some_and(|sysroot| {
                Path::new(&sysroot)
                    .join("lib/rustlib")
                    .join(TARGET)
                    .join("lib")
                    .is_dir()
            })
    };
    if installed() {
        return;
    }
    println!("cargo:warning=adding the {TARGET} target with rustup");
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        added && installed(),
        "the {TARGET} target is not installed and `rustup target add {TARGET}` failed; \
         install it, then build again"
    );
}

/// `target/wasm` next to the host's target directory, shared by every guest
/// workspace so their common dependencies build once.
fn guest_target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("GLIA_GUEST_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    target_root().join("wasm")
}

/// The cargo target directory this build writes into.
pub fn target_root() -> PathBuf {
    // OUT_DIR is <target>[/<triple>]/<profile>/build/<pkg>/out.
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    out.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent()?.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out.join("glia-target"))
}
