//! The host side of `wasi:nn`: models loaded once per process and shared by
//! every instance that may use them, behind a small [`Backend`] trait with one
//! file per implementation.
//!
//! A backend turns model bytes into a [`LoadedModel`]; a loaded model runs
//! inference on owned tensors and is safe to call from many threads at once
//! (no global lock around `compute`). Tensors are plain bytes with a type and
//! dimensions, exactly as `wasi:nn` carries them, so the guest's buffers are
//! copied once in and once out.

pub mod models;
pub mod onnx;
pub mod ort;
pub mod pool;
#[cfg(feature = "torch")]
pub mod torch;
pub mod torchscript;
pub mod tract;
pub mod usage;
pub mod wasi;

use std::sync::Arc;

pub use usage::{NnUsage, NnUsageReport};

/// Where inference runs. `wasi:nn` names these execution targets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Gpu,
    Tpu,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
            Device::Tpu => "tpu",
        }
    }

    /// Parses `cpu`, `gpu` or `tpu`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cpu" => Some(Device::Cpu),
            "gpu" => Some(Device::Gpu),
            "tpu" => Some(Device::Tpu),
            _ => None,
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Element types of `wasi:nn` tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    F32,
    F64,
    Bf16,
    U8,
    I32,
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::Bf16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::Bf16 => "bf16",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I64 => "i64",
        }
    }
}

/// A tensor as `wasi:nn` carries it: little-endian element bytes, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dims: Vec<usize>,
    pub dtype: DType,
    pub data: Vec<u8>,
}

impl Tensor {
    /// Checks that the data length matches the dimensions and type, and that
    /// the element count stays under `max_elements`.
    pub fn validate(&self, max_elements: usize) -> Result<(), NnError> {
        let elements = self
            .dims
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| NnError::TooLarge("tensor dimensions overflow".into()))?;
        if elements > max_elements {
            return Err(NnError::TooLarge(format!(
                "tensor of {elements} elements exceeds the limit of {max_elements}"
            )));
        }
        let expected = elements * self.dtype.size();
        if self.data.len() != expected {
            return Err(NnError::InvalidArgument(format!(
                "tensor data is {} bytes but dimensions {:?} of {} need {expected}",
                self.data.len(),
                self.dims,
                self.dtype.name()
            )));
        }
        Ok(())
    }

    /// An f32 tensor (tests, built-ins).
    pub fn from_f32(dims: Vec<usize>, values: &[f32]) -> Self {
        Self {
            dims,
            dtype: DType::F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The elements as f32, when the tensor is f32.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == DType::F32).then(|| {
            self.data
                .chunks_exact(4)
                .filter_map(|c| c.try_into().ok().map(f32::from_le_bytes))
                .collect()
        })
    }
}

/// Description of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// `None` when the model does not fix the type.
    pub dtype: Option<DType>,
    /// Dimensions, `None` for a symbolic (free) dimension; empty when unknown.
    pub dims: Vec<Option<usize>>,
}

/// Checks `inputs` against a model's declared inputs: their number, element
/// types, fixed dimensions, and that each tensor's bytes match its
/// dimensions (backends hand the bytes on as they are). Every backend runs
/// this before inference, so all report bad inputs alike.
pub fn check_inputs(specs: &[TensorSpec], inputs: &[Tensor]) -> Result<(), NnError> {
    if inputs.len() != specs.len() {
        return Err(NnError::InvalidArgument(format!(
            "the model takes {} input(s), got {}",
            specs.len(),
            inputs.len()
        )));
    }
    for (ix, (tensor, spec)) in inputs.iter().zip(specs).enumerate() {
        if let Some(want) = spec.dtype
            && want != tensor.dtype
        {
            return Err(NnError::InvalidArgument(format!(
                "input {ix} (`{}`) is {}, got {}",
                spec.name,
                want.name(),
                tensor.dtype.name()
            )));
        }
        if !spec.dims.is_empty()
            && (spec.dims.len() != tensor.dims.len()
                || spec
                    .dims
                    .iter()
                    .zip(&tensor.dims)
                    .any(|(want, got)| want.is_some_and(|w| w != *got)))
        {
            return Err(NnError::InvalidArgument(format!(
                "input {ix} (`{}`) has dimensions {}, got {:?}",
                spec.name,
                describe_dims(&spec.dims),
                tensor.dims
            )));
        }
        tensor.validate(usize::MAX).map_err(|e| match e {
            NnError::InvalidArgument(m) => NnError::InvalidArgument(format!("input {ix}: {m}")),
            other => other,
        })?;
    }
    Ok(())
}

/// `[?, 64]`: dimensions with free ones as `?`.
fn describe_dims(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Runs a backend library on what a client sent (a model, a guest's
/// inputs), turning a panic into `error`. Libraries index and assert
/// internally, and some malformed models reach those (a graph output naming
/// no node's output panics in tract's ONNX reader; tch panics on failures
/// it does not return). Such a model or call is refused, as any other
/// invalid one; nothing it sends is the platform's failure.
pub(crate) fn contained<T>(
    library: &str,
    work: impl FnOnce() -> Result<T, NnError>,
    error: impl FnOnce(String) -> NnError,
) -> Result<T, NnError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        let message = first_line(&message);
        tracing::debug!(library, %message, "panicked; refusing the model or call");
        Err(error(format!("{library} failed on it ({message})")))
    })
}

/// The first line of a library's message, trimmed: libtorch's errors and
/// panics carry a C++ backtrace after what went wrong.
pub(crate) fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Failures of model loading and inference, in the vocabulary of
/// `wasi:nn`'s error codes so they map one to one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NnError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("invalid model: {0}")]
    InvalidEncoding(String),
    #[error("unsupported: {0}")]
    UnsupportedOperation(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("inference failed: {0}")]
    Runtime(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Something that can load models of one encoding.
pub trait Backend: Send + Sync {
    /// Short name used in configuration and reports (`tract`, `ort`, …).
    fn name(&self) -> &'static str;
    /// The `wasi:nn` graph encoding it loads (`onnx`, `pytorch`).
    fn encoding(&self) -> &'static str {
        "onnx"
    }
    /// Parses and prepares a model for the CPU. Blocking; may take long for
    /// big models.
    fn load(&self, bytes: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError>;
    /// Whether this backend can run models on `device`.
    fn supports(&self, device: Device) -> bool {
        device == Device::Cpu
    }
    /// Loads a model for `device` (one the backend [supports](Self::supports)).
    fn load_on(&self, bytes: &[u8], device: Device) -> Result<Arc<dyn LoadedModel>, NnError> {
        if device == Device::Cpu {
            self.load(bytes)
        } else {
            Err(NnError::UnsupportedOperation(format!(
                "the {} backend runs on the CPU only, not on {device}",
                self.name()
            )))
        }
    }
}

/// Asks a run to stop: its call's deadline passed. Backends that can stop
/// a run midway do so ([`LoadedModel::run_until`]): ONNX Runtime through
/// its run options' terminate flag, tract between two nodes of its plan.
#[derive(Default)]
pub struct Stop {
    stopped: std::sync::atomic::AtomicBool,
    /// Called once, on [`Stop::stop`].
    hooks: std::sync::Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl Stop {
    /// Whether the run was asked to stop.
    pub fn stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Asks the run to stop.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        let hooks = std::mem::take(&mut *self.hooks.lock().unwrap_or_else(|p| p.into_inner()));
        for hook in hooks {
            hook();
        }
    }

    /// Runs `hook` when the run is asked to stop (at once if it was).
    pub fn on_stop(&self, hook: impl Fn() + Send + Sync + 'static) {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopped() {
            drop(hooks);
            hook();
        } else {
            hooks.push(Box::new(hook));
        }
    }

    /// The error of a run that stopped.
    pub fn error() -> NnError {
        NnError::Timeout("inference stopped at the function's deadline".into())
    }
}

/// A loaded model, shared by every caller.
pub trait LoadedModel: Send + Sync {
    fn inputs(&self) -> &[TensorSpec];
    fn outputs(&self) -> &[TensorSpec];
    /// Runs inference on one set of inputs, in model input order. Blocking;
    /// concurrent calls run in parallel.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, NnError>;
    /// Runs inference as [`run`](Self::run) does, stopping early (with
    /// [`Stop::error`]) once `stop` is asked, where the backend can.
    fn run_until(&self, inputs: &[Tensor], stop: &Stop) -> Result<Vec<Tensor>, NnError> {
        if stop.stopped() {
            return Err(Stop::error());
        }
        self.run(inputs)
    }
    /// How long a run typically takes, when known.
    fn typical_run(&self) -> Option<std::time::Duration> {
        None
    }
    /// Run statistics, when kept.
    fn stats(&self) -> Option<RunStats> {
        None
    }
}

/// What a loaded model has done since it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunStats {
    pub runs: u64,
    /// Runs in progress now.
    pub running: u64,
    /// Most runs ever in progress at once.
    pub peak_running: u64,
    /// Moving average of a run's time, in microseconds.
    pub typical_run_us: u64,
}

/// A loaded model that keeps a moving average of its run time, so callers
/// can tell cheap runs (fine to do in place) from expensive ones (moved to
/// the inference threads).
pub struct Timed {
    inner: Arc<dyn LoadedModel>,
    /// Exponential moving average of run time, in nanoseconds (0: unknown).
    average_ns: std::sync::atomic::AtomicU64,
    runs: std::sync::atomic::AtomicU64,
    running: std::sync::atomic::AtomicU64,
    peak_running: std::sync::atomic::AtomicU64,
}

impl Timed {
    pub fn new(inner: Arc<dyn LoadedModel>) -> Self {
        Self {
            inner,
            average_ns: std::sync::atomic::AtomicU64::new(0),
            runs: std::sync::atomic::AtomicU64::new(0),
            running: std::sync::atomic::AtomicU64::new(0),
            peak_running: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl LoadedModel for Timed {
    fn inputs(&self) -> &[TensorSpec] {
        self.inner.inputs()
    }

    fn outputs(&self) -> &[TensorSpec] {
        self.inner.outputs()
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, NnError> {
        self.run_until(inputs, &Stop::default())
    }

    fn run_until(&self, inputs: &[Tensor], stop: &Stop) -> Result<Vec<Tensor>, NnError> {
        use std::sync::atomic::Ordering;
        let now_running = self
            .running
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        self.peak_running.fetch_max(now_running, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let result = self.inner.run_until(inputs, stop);
        self.running.fetch_sub(1, Ordering::Relaxed);
        self.runs.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let old = self.average_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            ns
        } else {
            (old.saturating_mul(7).saturating_add(ns)) / 8
        };
        self.average_ns.store(new, Ordering::Relaxed);
        result
    }

    fn typical_run(&self) -> Option<std::time::Duration> {
        match self.average_ns.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ns => Some(std::time::Duration::from_nanos(ns)),
        }
    }

    fn stats(&self) -> Option<RunStats> {
        use std::sync::atomic::Ordering;
        Some(RunStats {
            runs: self.runs.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            peak_running: self.peak_running.load(Ordering::Relaxed),
            typical_run_us: self.average_ns.load(Ordering::Relaxed) / 1000,
        })
    }
}

/// Checks that a backend's run stops midway when asked: a long chain of
/// MatMuls (`links` of them), asked to stop after 20 ms, ends with the
/// timeout error well before a whole run would; asked before it starts, it
/// does not start. Shared by the backends' tests.
#[cfg(test)]
pub(crate) fn assert_a_run_stops_midway(backend: &dyn Backend, links: usize) {
    let model = backend
        .load(&onnx::build::chain_model(links, 128))
        .expect("loads");
    let x = Tensor::from_f32(vec![128, 128], &vec![1.0; 128 * 128]);
    let started = std::time::Instant::now();
    model.run(std::slice::from_ref(&x)).expect("runs");
    let whole = started.elapsed();
    let stop = Arc::new(Stop::default());
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            stop.stop();
        })
    };
    let started = std::time::Instant::now();
    let err = model
        .run_until(std::slice::from_ref(&x), &stop)
        .map(|_| ())
        .expect_err("stopped");
    let took = started.elapsed();
    stopper.join().expect("stopper");
    assert!(matches!(err, NnError::Timeout(_)), "{err:?}");
    assert!(
        took < whole / 2,
        "stopped after {took:?} of a {whole:?} run"
    );
    assert!(matches!(
        model.run_until(&[x], &stop),
        Err(NnError::Timeout(_))
    ));
}
