//! Compiles the guest test fixtures (`tests/fixtures/`) to components.
//!
//! Every fixture crate listed here must be exercised by a test; the
//! `fixtures_are_all_tested` test checks that the list and the fixture
//! workspace agree.

#[path = "../host/build_guests.rs"]
mod guests;

use std::path::PathBuf;

/// The fixture crates (members of tests/fixtures/Cargo.toml).
const FIXTURES: &[&str] = &["hostile", "nn-probe"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("fixtures");
    guests::build(&manifest.join("fixtures"), FIXTURES, &out);
    println!("cargo:rustc-env=GLIA_FIXTURES={}", FIXTURES.join(","));
}
