//! Functions and models compiled into the binary and deployed on a fresh
//! data directory, so `glia serve` has something to call right away.

/// A built-in function.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    pub name: &'static str,
    pub wasm: &'static [u8],
    /// Its settings, as an upload's query string.
    pub settings: &'static str,
}

/// A built-in model.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinModel {
    pub name: &'static str,
    pub encoding: &'static str,
    pub bytes: &'static [u8],
}

/// Every built-in function (built from `functions/` by `build.rs`).
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "hello",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/functions/hello.wasm")),
        settings: "",
    },
    Builtin {
        name: "classify-digits",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/functions/classify-digits.wasm")),
        settings: "models=digits",
    },
];

/// Every built-in model, installed before the functions that use them.
pub const BUILTIN_MODELS: &[BuiltinModel] = &[BuiltinModel {
    name: "digits",
    encoding: "onnx",
    bytes: include_bytes!("../../functions/classify-digits/model/digits.onnx"),
}];
