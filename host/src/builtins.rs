//! Functions compiled into the binary and deployed on a fresh data
//! directory, so `glia serve` has something to call right away.

/// A built-in function.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    pub name: &'static str,
    pub wasm: &'static [u8],
}

/// Every built-in function (built from `functions/` by `build.rs`).
pub const BUILTINS: &[Builtin] = &[Builtin {
    name: "hello",
    wasm: include_bytes!(concat!(env!("OUT_DIR"), "/functions/hello.wasm")),
}];
