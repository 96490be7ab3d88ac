//! `glia-sdk`: write glia model functions in Rust.
//!
//! A glia function is a WebAssembly component (`wasm32-wasip2`) that exports
//! the standard `wasi:http` handler and may call the standard `wasi:nn`
//! interfaces. This crate hides both behind a small typed API; what it builds
//! is still a plain component that imports only standard interfaces, so it
//! runs on glia and under `wasmtime serve -S nn` alike.
//!
//! ```
//! use glia_sdk::nn::{Model, Tensor};
//! use glia_sdk::{Error, Request, Response, handler};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input {
//!     pixels: Vec<f32>,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     label: usize,
//!     probabilities: Vec<f32>,
//! }
//!
//! /// `POST {"pixels": [64 numbers]}` → `{"label": 0-9, "probabilities": [...]}`
//! #[handler]
//! fn classify(request: Request) -> Result<Response, Error> {
//!     let input: Input = request.json()?;
//!     let model = Model::load("digits")?;
//!     let pixels = Tensor::from_f32(&[1, 64], &input.pixels)?;
//!     let outputs = model.infer([("pixels", &pixels)])?;
//!     let probabilities = outputs.at(0)?.to_f32()?;
//!     let label = glia_sdk::ops::argmax(&probabilities).unwrap_or_default();
//!     Response::json(&Output { label, probabilities })
//! }
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` and deploy
//! the `.wasm` with `glia deploy FILE --name NAME --models digits`;
//! `docs/authoring.md` in the repository is the guide.
//!
//! # What is where
//!
//! - [`handler`]: the attribute that makes a function the component's
//!   `wasi:http` handler. The request body is read whole before the handler
//!   runs (at most [`DEFAULT_MAX_BODY`] bytes unless `max_body` says
//!   otherwise; more gets `413`).
//! - [`Request`], [`Response`], [`Headers`], [`Method`]: the HTTP exchange,
//!   bodies as bytes, text or JSON.
//! - [`Error`]: a failure that becomes an `application/problem+json`
//!   response (RFC 9457) with its status; `?` works on the SDK's own errors
//!   and [`ResultExt`] turns any other error into one.
//! - [`nn`]: models by name ([`nn::Model::load`]), tensors with shape and type
//!   checks, inference with named or positional inputs and outputs.
//! - [`ops`]: softmax, top-k, argmax, vector normalisation and similarity.
//! - [`timing`]: `server-timing` entries; every successful inference adds
//!   to `infer` by itself.
//! - `image` (feature `image`): PNG and JPEG decoding, resizing, cropping and
//!   image-to-tensor conversion.
//! - `text` (feature `tokenizer`): a WordPiece (BERT) tokenizer with its
//!   vocabulary compiled in.
//!
//! # Outside WebAssembly
//!
//! The crate also builds for the machine it is compiled on, so a function's
//! logic can be unit-tested with `cargo test`: requests and responses,
//! errors, tensors, [`ops`], images and the tokenizer all work natively.
//! Only the calls into the host do not: [`nn::Model::load`] returns an
//! `unsupported-operation` error there, and the handler export is never
//! called.

#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate self as glia_sdk;

mod error;
mod export;
mod http;
#[cfg(feature = "image")]
pub mod image;
pub mod nn;
pub mod ops;
#[cfg(feature = "tokenizer")]
pub mod text;
pub mod timing;

pub use error::{Error, IntoResponse, ResultExt};
pub use http::{Headers, Method, Request, Response};

/// Makes a function the component's `wasi:http` handler.
///
/// The function takes a [`Request`] and returns anything that is
/// [`IntoResponse`]: a [`Response`], an [`Error`], or a `Result` of them
/// (the usual `Result<Response, Error>`). An `Err` becomes a
/// `problem+json` response with the error's status.
///
/// The request body is read before the handler runs, up to
/// [`DEFAULT_MAX_BODY`] bytes; a larger body is answered `413` without
/// calling it. `#[handler(max_body = 64 * 1024)]` sets another limit.
///
/// One handler per component. It runs once per request, in a fresh
/// instance: nothing is shared between calls.
///
/// ```
/// use glia_sdk::{Method, Request, Response, handler};
///
/// #[handler(max_body = 1024)]
/// fn echo(request: Request) -> Response {
///     match request.method() {
///         Method::Post => Response::bytes("application/octet-stream", request.into_body()),
///         _ => Response::text("POST something\n"),
///     }
/// }
///
/// // A handler is a plain function: call it in tests.
/// let response = echo(Request::post("/").with_body("hi"));
/// assert_eq!(response.body(), b"hi");
/// ```
pub use glia_sdk_macros::handler;

/// Largest request body read by default: 8 MiB.
pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;

/// What the [`handler`] expansion refers to. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::serve;
    pub use wasip2;
    pub use wasip2::exports::http::incoming_handler::Guest;
    pub use wasip2::http::types::{IncomingRequest, ResponseOutparam};
}

/// Whether this build runs inside a WebAssembly component, where the host
/// interfaces exist.
pub(crate) const ON_WASI: bool = cfg!(all(target_arch = "wasm32", target_os = "wasi"));
