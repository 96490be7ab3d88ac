//! `glia-sdk`: writing glia model functions in Rust.
//!
//! The SDK's typed API (a handler macro, request/response helpers and a
//! typed `wasi:nn` API) is not written yet. Until it is, functions use the
//! standard crates directly, as the built-in functions in `functions/` do:
//! `wasip2` for `wasi:http` and `wit-bindgen` over `wit/deps/nn.wit` for
//! `wasi:nn`.
