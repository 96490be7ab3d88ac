//! Models through the standard `wasi:nn` interfaces, typed.
//!
//! [`Model::load`] asks the host for a model by name (`load-by-name`): on
//! glia, a model uploaded with `PUT /v1/models/{name}` and granted to the
//! function (`glia deploy --models NAME`); under `wasmtime serve -S nn`, one
//! preloaded with `-S nn-graph=onnx::DIR`. [`Model::infer`] runs it on
//! [`Tensor`]s given by input name or position, and returns [`Outputs`]
//! readable by name or position.
//!
//! ```no_run
//! use glia_sdk::nn::{Model, Tensor};
//!
//! # fn main() -> Result<(), glia_sdk::nn::Error> {
//! let model = Model::load("minilm")?;
//! let ids = Tensor::from_i64(&[1, 4], &[101, 7592, 2088, 102])?;
//! let mask = Tensor::from_i64(&[1, 4], &[1, 1, 1, 1])?;
//! // By name...
//! let outputs = model.infer([("input_ids", &ids), ("attention_mask", &mask)])?;
//! // ...or in the model's input order.
//! let outputs = model.infer([&ids, &mask])?;
//! let pooled = outputs.get_or_at("461", 3)?.rows::<f32>()?;
//! # Ok(()) }
//! ```
//!
//! Errors carry the `wasi:nn` [`ErrorCode`] and the host's message, and
//! become `problem+json` responses through `?` in a handler (see
//! [`crate::Error`]'s `From<nn::Error>`).

mod tensor;
mod wasi;

use std::fmt;

pub use tensor::{Element, Tensor, TensorType};

/// Where a model runs. `load-by-name` has no target argument, so glia reads
/// it from the name: `NAME@gpu`. The CPU is the default and adds nothing to
/// the name, so a function that does not choose stays portable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Target {
    #[default]
    Cpu,
    Gpu,
    Tpu,
}

impl Target {
    /// `cpu`, `gpu` or `tpu`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
            Self::Tpu => "tpu",
        }
    }
}

/// A model file's format, for [`Model::from_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Onnx,
    Openvino,
    Tensorflow,
    Pytorch,
    Tensorflowlite,
    Ggml,
    Autodetect,
}

/// A `wasi:nn` error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    InvalidEncoding,
    Timeout,
    RuntimeError,
    UnsupportedOperation,
    TooLarge,
    NotFound,
    Security,
    Unknown,
}

impl ErrorCode {
    /// The code's WIT name (`not-found`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid-argument",
            Self::InvalidEncoding => "invalid-encoding",
            Self::Timeout => "timeout",
            Self::RuntimeError => "runtime-error",
            Self::UnsupportedOperation => "unsupported-operation",
            Self::TooLarge => "too-large",
            Self::NotFound => "not-found",
            Self::Security => "security",
            Self::Unknown => "unknown",
        }
    }
}

/// A failed `wasi:nn` operation, or a tensor that does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: ErrorCode,
    context: String,
    message: String,
}

impl Error {
    /// An error with `code`, saying what was being done (`context`) and why.
    pub fn new(code: ErrorCode, context: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            context: context.into(),
            message: message.into(),
        }
    }

    /// The `wasi:nn` error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The host's (or the SDK's) explanation.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Off WebAssembly there is no host to call.
    fn off_wasi(context: String) -> Self {
        Self::new(
            ErrorCode::UnsupportedOperation,
            context,
            "wasi:nn is only available inside a WebAssembly component (wasm32-wasip2)",
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: wasi-nn error {}: {}",
            self.context,
            self.code.name(),
            self.message
        )
    }
}

impl std::error::Error for Error {}

/// A loaded model, ready to run.
#[derive(Debug)]
pub struct Model {
    name: String,
    graph: wasi::Graph,
}

impl Model {
    /// The model the host knows as `name`, on the CPU.
    pub fn load(name: &str) -> Result<Self, Error> {
        Self::load_on(name, Target::Cpu)
    }

    /// The model the host knows as `name`, on `target`. glia runs it on the
    /// CPU instead when it lacks the device and its `models.fallback` is
    /// `cpu` (the response's `glia-nn-device` header says where it ran).
    pub fn load_on(name: &str, target: Target) -> Result<Self, Error> {
        let context = format!("loading model `{name}`");
        if !crate::ON_WASI {
            return Err(Error::off_wasi(context));
        }
        let full = match target {
            Target::Cpu => name.to_string(),
            other => format!("{name}@{}", other.name()),
        };
        let graph = wasi::Graph::load_by_name(&full, &context)?;
        Ok(Self {
            name: name.to_string(),
            graph,
        })
    }

    /// A model from its bytes (`wasi:nn` `load`). glia accepts ONNX up to
    /// its `models.max_raw_load_mb`; a model shared by name is cheaper, as
    /// it loads once for every function and call.
    pub fn from_bytes(bytes: &[u8], encoding: Encoding, target: Target) -> Result<Self, Error> {
        let context = "loading a model from bytes".to_string();
        if !crate::ON_WASI {
            return Err(Error::off_wasi(context));
        }
        let graph = wasi::Graph::load(bytes, encoding, target, &context)?;
        Ok(Self {
            name: "(bytes)".to_string(),
            graph,
        })
    }

    /// The name it was loaded by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the model on `inputs`: `[("name", &tensor), ...]` by input
    /// name, or `[&tensor, ...]` in the model's input order (also a single
    /// `&tensor`, or a `Vec` of either). The time the host's `compute` took
    /// is added to the call's `infer` timing.
    pub fn infer<'a>(&self, inputs: impl Inputs<'a>) -> Result<Outputs, Error> {
        let context = format!("running model `{}`", self.name);
        let inputs = inputs.into_named();
        let (outputs, took) = self.graph.compute(&inputs, &context)?;
        crate::timing::record("infer", took);
        Ok(Outputs {
            model: self.name.clone(),
            tensors: outputs,
        })
    }
}

/// A model's inputs: named (`[("pixels", &t)]`) or positional (`[&t]`).
///
/// Positional inputs are sent named `"0"`, `"1"`, ...: glia takes inputs
/// in order when their names are not the model's, and wasmtime's ONNX
/// backend reads such names as indices.
pub trait Inputs<'a>: sealed::Sealed {
    #[doc(hidden)]
    fn into_named(self) -> Vec<(String, &'a Tensor)>;
}

mod sealed {
    pub trait Sealed {}
}

fn positional<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Vec<(String, &'a Tensor)> {
    tensors
        .into_iter()
        .enumerate()
        .map(|(ix, tensor)| (ix.to_string(), tensor))
        .collect()
}

impl sealed::Sealed for &Tensor {}
impl<'a> Inputs<'a> for &'a Tensor {
    fn into_named(self) -> Vec<(String, &'a Tensor)> {
        positional([self])
    }
}

impl<const N: usize> sealed::Sealed for [&Tensor; N] {}
impl<'a, const N: usize> Inputs<'a> for [&'a Tensor; N] {
    fn into_named(self) -> Vec<(String, &'a Tensor)> {
        positional(self)
    }
}

impl sealed::Sealed for Vec<&Tensor> {}
impl<'a> Inputs<'a> for Vec<&'a Tensor> {
    fn into_named(self) -> Vec<(String, &'a Tensor)> {
        positional(self)
    }
}

impl sealed::Sealed for &[&Tensor] {}
impl<'a> Inputs<'a> for &[&'a Tensor] {
    fn into_named(self) -> Vec<(String, &'a Tensor)> {
        positional(self.iter().copied())
    }
}

impl<S: AsRef<str>, const N: usize> sealed::Sealed for [(S, &Tensor); N] {}
impl<'a, S: AsRef<str>, const N: usize> Inputs<'a> for [(S, &'a Tensor); N] {
    fn into_named(self) -> Vec<(String, &'a Tensor)> {
        self.into_iter()
            .map(|(name, tensor)| (name.as_ref().to_string(), tensor))
            .collect()
    }
}

impl<S: AsRef<str>> sealed::Sealed for Vec<(S, &Tensor)> {}
impl<'a, S: AsRef<str>> Inputs<'a> for Vec<(S, &'a Tensor)> {
    fn into_named(self) -> Vec<(String, &'a Tensor)> {
        self.into_iter()
            .map(|(name, tensor)| (name.as_ref().to_string(), tensor))
            .collect()
    }
}

/// What a model returned: tensors with the names the backend gave them, in
/// the model's output order.
#[derive(Debug, Clone)]
pub struct Outputs {
    model: String,
    tensors: Vec<(String, Tensor)>,
}

impl Outputs {
    /// Outputs of a model, for tests of code that reads them.
    pub fn new(model: &str, tensors: Vec<(String, Tensor)>) -> Self {
        Self {
            model: model.to_string(),
            tensors,
        }
    }

    /// The output named `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor, Error> {
        self.tensors
            .iter()
            .find(|(output, _)| output == name)
            .map(|(_, tensor)| tensor)
            .ok_or_else(|| {
                self.missing(format!(
                    "no output named `{name}`; the outputs are {:?}",
                    self.names().collect::<Vec<_>>()
                ))
            })
    }

    /// The output at `index` (0 is the first).
    pub fn at(&self, index: usize) -> Result<&Tensor, Error> {
        self.tensors
            .get(index)
            .map(|(_, tensor)| tensor)
            .ok_or_else(|| {
                self.missing(format!(
                    "no output at index {index}; the model returned {}",
                    self.tensors.len()
                ))
            })
    }

    /// The output named `name`, else the one at `index`: backends do not
    /// all name outputs alike (tract names them after graph nodes).
    pub fn get_or_at(&self, name: &str, index: usize) -> Result<&Tensor, Error> {
        self.get(name).or_else(|_| self.at(index))
    }

    /// The output names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(name, _)| name.as_str())
    }

    /// Every `(name, tensor)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors
            .iter()
            .map(|(name, tensor)| (name.as_str(), tensor))
    }

    /// The number of outputs.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensors, taken out.
    pub fn into_vec(self) -> Vec<(String, Tensor)> {
        self.tensors
    }

    fn missing(&self, message: String) -> Error {
        Error::new(
            ErrorCode::InvalidArgument,
            format!("reading the outputs of model `{}`", self.model),
            message,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loading_off_wasi_says_why() {
        let error = Model::load("digits").expect_err("no host");
        assert_eq!(error.code(), ErrorCode::UnsupportedOperation);
        assert_eq!(
            error.to_string(),
            "loading model `digits`: wasi-nn error unsupported-operation: \
             wasi:nn is only available inside a WebAssembly component (wasm32-wasip2)"
        );
        assert!(Model::from_bytes(b"", Encoding::Onnx, Target::Cpu).is_err());
    }

    #[test]
    fn inputs_by_name_or_position() {
        let a = Tensor::from_f32(&[1], &[1.0]).expect("a");
        let b = Tensor::from_f32(&[1], &[2.0]).expect("b");
        let names = |inputs: Vec<(String, &Tensor)>| -> Vec<String> {
            inputs.into_iter().map(|(name, _)| name).collect()
        };
        assert_eq!(names([("x", &a), ("y", &b)].into_named()), ["x", "y"]);
        assert_eq!(names(vec![("x".to_string(), &a)].into_named()), ["x"]);
        assert_eq!(names([&a, &b].into_named()), ["0", "1"]);
        assert_eq!(names((&a).into_named()), ["0"]);
        assert_eq!(names(vec![&a].into_named()), ["0"]);
        assert_eq!(names((&[&a, &b][..]).into_named()), ["0", "1"]);
    }

    #[test]
    fn outputs_by_name_or_position() {
        let t = Tensor::from_f32(&[1], &[1.0]).expect("t");
        let outputs = Outputs::new(
            "m",
            vec![("a".to_string(), t.clone()), ("b".to_string(), t.clone())],
        );
        assert_eq!(outputs.get("b").expect("b"), &t);
        assert_eq!(outputs.at(1).expect("1"), &t);
        assert!(outputs.get_or_at("c", 0).is_ok());
        let error = outputs.get("c").expect_err("missing");
        assert_eq!(
            error.to_string(),
            "reading the outputs of model `m`: wasi-nn error invalid-argument: \
             no output named `c`; the outputs are [\"a\", \"b\"]"
        );
        assert!(
            outputs
                .at(2)
                .expect_err("missing")
                .to_string()
                .contains("returned 2")
        );
        assert_eq!(outputs.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(outputs.len(), 2);
    }
}
