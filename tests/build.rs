//! Compiles the guest components the end-to-end tests deploy:
//!
//! - the fixtures (`tests/fixtures/`), among them `portable`, written with
//!   `wstd` and no glia code;
//! - every `glia new` template, generated into `OUT_DIR` by the same code as
//!   the command (`host/src/cli/new/templates.rs`) and built as a user would
//!   build it, `--locked` against the lock file the template ships;
//! - every example (`examples/`).
//!
//! Every guest listed here must be exercised by a test: `fixtures_are_all_tested`
//! (`tests/e2e/main.rs`) checks `FIXTURES`, and `guests_are_all_tested`
//! (`tests/e2e/authoring.rs`) the others.

#![allow(
    clippy::panic,
    clippy::expect_used,
    reason = "a build script reports failure by panicking"
)]

#[path = "../host/build_guests.rs"]
mod guests;
#[path = "../host/src/cli/new/templates.rs"]
#[allow(dead_code, reason = "the command's other helpers are not needed here")]
mod templates;
#[path = "../host/build_torch.rs"]
mod torch;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The fixture crates tested by `tests/e2e` (members of tests/fixtures/Cargo.toml).
const FIXTURES: &[&str] = &["hostile", "nn-probe"];
/// The fixture showing that components built without the SDK run on glia.
const PORTABLE: &str = "portable";
/// The examples (members of examples/Cargo.toml).
const EXAMPLES: &[&str] = &["image-orientation", "text-similarity", "intent-pipeline"];

fn main() {
    torch::link_libtorch();
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));

    let mut fixtures = FIXTURES.to_vec();
    fixtures.push(PORTABLE);
    guests::build(&manifest.join("fixtures"), &fixtures, &out.join("fixtures"));
    println!("cargo:rustc-env=GLIA_FIXTURES={}", FIXTURES.join(","));

    guests::build(
        &manifest.join("../examples"),
        EXAMPLES,
        &out.join("examples"),
    );

    let sdk = manifest
        .join("../sdk")
        .canonicalize()
        .expect("the sdk/ directory");
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../host/templates").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../host/src/cli/new/templates.rs").display()
    );
    let mut built = Vec::new();
    for template in templates::TEMPLATES {
        let name = template_function(template.name);
        let dir = out.join("templates").join(template.name);
        for (path, contents) in templates::render(template, &name, &sdk.display().to_string()) {
            write_if_changed(&dir.join(path), &contents);
        }
        let wasm = out
            .join("templates")
            .join(format!("{}.wasm", template.name));
        guests::build_standalone(&dir, &name, &wasm);
        // Its own unit tests, compiled natively as `cargo test` would.
        let tests = guests::build_native_tests(&dir, &guests::target_root().join("templates"));
        built.push((template.name, dir, wasm, tests));
    }

    // `glia_e2e::{TEMPLATES, EXAMPLES, PORTABLE}`.
    let mut code = String::from(
        "/// Every `glia new` template as the suite generated and built it: \
         `(template, generated crate, component, native test executables)`.\n\
         pub const TEMPLATES: &[(&str, &str, &[u8], &[&str])] = &[\n",
    );
    for (template, dir, wasm, tests) in &built {
        let tests: Vec<String> = tests.iter().map(|t| t.display().to_string()).collect();
        writeln!(
            code,
            "    ({template:?}, {:?}, include_bytes!({:?}), &{tests:?}),",
            dir.display().to_string(),
            wasm.display().to_string()
        )
        .expect("write");
    }
    code.push_str(
        "];\n/// Every example: `(name, component)`.\npub const EXAMPLES: &[(&str, &[u8])] = &[\n",
    );
    for example in EXAMPLES {
        let wasm = out.join("examples").join(format!("{example}.wasm"));
        writeln!(
            code,
            "    ({example:?}, include_bytes!({:?})),",
            wasm.display().to_string()
        )
        .expect("write");
    }
    let portable = out.join("fixtures").join(format!("{PORTABLE}.wasm"));
    writeln!(
        code,
        "];\n/// The `portable` fixture: a `wstd` component without the SDK.\n\
         pub const PORTABLE: &[u8] = include_bytes!({:?});",
        portable.display().to_string()
    )
    .expect("write");
    write_if_changed(&out.join("authoring.rs"), &code);
}

/// The function (and crate) name the suite gives a template's crate; the
/// test that runs `glia new` uses the same.
fn template_function(template: &str) -> String {
    format!("template-{template}")
}

/// Writes `contents` unless the file already holds them, so that cargo does
/// not rebuild a generated crate whose files did not change.
fn write_if_changed(path: &Path, contents: &str) {
    if std::fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    }
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
