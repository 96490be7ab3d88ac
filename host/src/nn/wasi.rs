//! `wasi:nn` for guests, generated from `wit/deps/nn.wit` and served from
//! the shared loaded models.
//!
//! A function reaches only the models its `models` setting grants:
//! `load-by-name` of anything else is `not-found`, exactly as for a model
//! that does not exist, so a function cannot probe for other models. The
//! name may end in `@cpu`, `@gpu` or `@tpu` to choose the execution target
//! (`load-by-name` has no target argument; the name scheme is the host's to
//! choose); without one the model runs on the CPU. A granted model is
//! loaded on first use and shared with every other caller.
//!
//! Raw `load` takes one builder (ONNX, or TorchScript with the `torch`
//! feature) of at most `[models] max_raw_load_mb`;
//! identical bytes share one loaded graph, under the same memory budget.
//!
//! Expensive `compute` calls run on the inference threads (`pool.rs`),
//! never on the async workers, and stop waiting at the invocation's deadline (epoch
//! interruption cannot stop host code). Every load this call triggers and
//! every run's time per device go to the invocation's [`NnUsage`]. Each
//! load and compute is a span (`glia.nn.load`, `glia.nn.compute`) with the
//! model, backend and device, never tensor data.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument as _;
use tracing::field::Empty;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

pub use super::Tensor;
use super::models::{ModelError, ModelRegistry, Ready};
use super::{DType, Device, LoadedModel, NnError, NnUsage, Stop};

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit/deps/nn.wit",
        world: "ml",
        imports: { default: async | trappable },
        with: {
            "wasi:nn/graph.graph": super::GuestGraph,
            "wasi:nn/tensor.tensor": crate::nn::Tensor,
            "wasi:nn/inference.graph-execution-context": super::GuestContext,
            "wasi:nn/errors.error": super::GuestError,
        },
    });
}

use generated::wasi::nn::errors::ErrorCode;
use generated::wasi::nn::graph::{ExecutionTarget, GraphEncoding};
use generated::wasi::nn::tensor::TensorType;
use generated::wasi::nn::{errors, graph, inference, tensor};

/// Runs that typically take less than this happen in place, on the calling
/// worker (handing them to another thread would cost more than the run);
/// longer or unknown ones go to the inference threads.
const INLINE_RUN_LIMIT: std::time::Duration = std::time::Duration::from_micros(100);

/// Largest tensor (in elements) a guest may pass to `compute`.
pub const MAX_TENSOR_ELEMENTS: usize = 64 * 1024 * 1024;

/// A graph handed to a guest: a granted, loaded model.
pub struct GuestGraph {
    loaded: Arc<Loaded>,
}

/// An execution context on a graph.
pub struct GuestContext {
    loaded: Arc<Loaded>,
}

/// A loaded model and where it runs.
struct Loaded {
    /// The name the guest loaded it by (`(bytes)` for a raw load).
    name: String,
    model: Arc<dyn LoadedModel>,
    backend: &'static str,
    device: Device,
}

/// An error handed to a guest.
pub struct GuestError {
    code: ErrorCode,
    message: String,
}

/// Per-invocation `wasi:nn` state: the models this function may use.
#[derive(Default)]
pub struct NnState {
    models: Option<Arc<ModelRegistry>>,
    /// The tenant whose models the function reaches.
    tenant: String,
    granted: Vec<String>,
    deadline: Option<Instant>,
    max_raw_bytes: usize,
    usage: Arc<NnUsage>,
    /// Held by every inference run until it ends, even past the call: the
    /// call's admission, so a run that outlives its call still holds the
    /// call's concurrency slot.
    keepalive: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl NnState {
    /// State granting `granted` of `tenant`'s models, with loads and
    /// inference cut off at `deadline`, and raw loads up to `max_raw_bytes`.
    pub fn new(
        models: Arc<ModelRegistry>,
        tenant: String,
        granted: Vec<String>,
        deadline: Instant,
        max_raw_bytes: usize,
    ) -> Self {
        Self {
            models: Some(models),
            tenant,
            granted,
            deadline: Some(deadline),
            max_raw_bytes,
            usage: Arc::default(),
            keepalive: None,
        }
    }

    /// Has every inference run hold `keepalive` until it ends.
    pub fn with_keepalive(mut self, keepalive: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        self.keepalive = Some(keepalive);
        self
    }

    /// Counts this invocation's loads and runs into `metrics` too.
    pub fn with_metrics(mut self, metrics: Arc<crate::telemetry::Metrics>) -> Self {
        self.usage = Arc::new(NnUsage::with_metrics(metrics));
        self
    }

    /// What this invocation's `wasi:nn` calls used, shared with the store.
    pub fn usage(&self) -> Arc<NnUsage> {
        self.usage.clone()
    }
}

/// The view the generated bindings call into.
pub struct NnView<'a> {
    pub state: &'a mut NnState,
    pub table: &'a mut ResourceTable,
}

struct Nn;

impl HasData for Nn {
    type Data<'a> = NnView<'a>;
}

/// Adds the `wasi:nn` interfaces to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    graph::add_to_linker::<T, Nn>(linker, view)?;
    tensor::add_to_linker::<T, Nn>(linker, view)?;
    inference::add_to_linker::<T, Nn>(linker, view)?;
    errors::add_to_linker::<T, Nn>(linker, view)?;
    Ok(())
}

type GuestResult<T> = wasmtime::Result<Result<T, Resource<GuestError>>>;

impl NnView<'_> {
    fn fail<T>(&mut self, code: ErrorCode, message: impl Into<String>) -> GuestResult<T> {
        let error = self.table.push(GuestError {
            code,
            message: message.into(),
        })?;
        Ok(Err(error))
    }
}

fn code_of(e: &NnError) -> ErrorCode {
    match e {
        NnError::InvalidArgument(_) => ErrorCode::InvalidArgument,
        NnError::InvalidEncoding(_) => ErrorCode::InvalidEncoding,
        NnError::UnsupportedOperation(_) => ErrorCode::UnsupportedOperation,
        NnError::TooLarge(_) => ErrorCode::TooLarge,
        NnError::NotFound(_) => ErrorCode::NotFound,
        NnError::Runtime(_) => ErrorCode::RuntimeError,
        NnError::Timeout(_) => ErrorCode::Timeout,
    }
}

fn code_of_model(e: &ModelError) -> ErrorCode {
    match e {
        ModelError::NotFound(_) => ErrorCode::NotFound,
        ModelError::Invalid(e) => code_of(e),
        ModelError::UnsupportedEncoding(_) => ErrorCode::InvalidEncoding,
        ModelError::OverBudget(_) => ErrorCode::TooLarge,
        ModelError::DeviceUnavailable(_) => ErrorCode::UnsupportedOperation,
        ModelError::Name(_) => ErrorCode::InvalidArgument,
        ModelError::Store(_) | ModelError::Internal(_) => ErrorCode::RuntimeError,
    }
}

fn encoding_name(encoding: GraphEncoding) -> &'static str {
    match encoding {
        GraphEncoding::Openvino => "openvino",
        GraphEncoding::Onnx => "onnx",
        GraphEncoding::Tensorflow => "tensorflow",
        GraphEncoding::Pytorch => "pytorch",
        GraphEncoding::Tensorflowlite => "tensorflowlite",
        GraphEncoding::Ggml => "ggml",
        GraphEncoding::Autodetect => "autodetect",
    }
}

fn device_of(target: ExecutionTarget) -> Device {
    match target {
        ExecutionTarget::Cpu => Device::Cpu,
        ExecutionTarget::Gpu => Device::Gpu,
        ExecutionTarget::Tpu => Device::Tpu,
    }
}

/// Splits `name[@cpu|@gpu|@tpu]`.
fn parse_model_name(full: &str) -> Option<(&str, Device)> {
    match full.rsplit_once('@') {
        Some((name, target)) => Device::parse(target).map(|d| (name, d)),
        None => Some((full, Device::Cpu)),
    }
}

fn dtype_of(t: TensorType) -> DType {
    match t {
        TensorType::Fp16 => DType::F16,
        TensorType::Fp32 => DType::F32,
        TensorType::Fp64 => DType::F64,
        TensorType::Bf16 => DType::Bf16,
        TensorType::U8 => DType::U8,
        TensorType::I32 => DType::I32,
        TensorType::I64 => DType::I64,
    }
}

fn tensor_type_of(d: DType) -> TensorType {
    match d {
        DType::F16 => TensorType::Fp16,
        DType::F32 => TensorType::Fp32,
        DType::F64 => TensorType::Fp64,
        DType::Bf16 => TensorType::Bf16,
        DType::U8 => TensorType::U8,
        DType::I32 => TensorType::I32,
        DType::I64 => TensorType::I64,
    }
}

impl NnView<'_> {
    /// Waits for a model load, up to the invocation's deadline, and hands
    /// the graph to the guest.
    async fn finish_load(
        &mut self,
        label: &str,
        requested: Device,
        load: impl std::future::Future<Output = Result<Ready, ModelError>>,
    ) -> GuestResult<Resource<GuestGraph>> {
        let span = tracing::debug_span!(
            "glia.nn.load",
            glia.nn.model = label,
            glia.nn.requested_device = %requested,
            glia.nn.backend = Empty,
            glia.nn.device = Empty,
            glia.nn.loaded = Empty,
            otel.status_code = Empty,
        );
        let result = self.wait_load(label, load).instrument(span.clone()).await;
        if let Ok(Ok(graph)) = &result
            && let Ok(g) = self.table.get(graph)
        {
            span.record("glia.nn.backend", g.loaded.backend);
            span.record("glia.nn.device", g.loaded.device.name());
        } else {
            span.record("otel.status_code", "error");
        }
        result
    }

    async fn wait_load(
        &mut self,
        label: &str,
        load: impl std::future::Future<Output = Result<Ready, ModelError>>,
    ) -> GuestResult<Resource<GuestGraph>> {
        let outcome = match self.state.deadline {
            Some(deadline) => {
                match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), load).await
                {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        return self.fail(
                            ErrorCode::Timeout,
                            format!(
                                "loading `{label}` did not finish before the function's deadline"
                            ),
                        );
                    }
                }
            }
            None => load.await,
        };
        let ready = match outcome {
            Ok(ready) => ready,
            Err(e) => return self.fail(code_of_model(&e), format!("`{label}`: {e}")),
        };
        let usage = &self.state.usage;
        tracing::Span::current().record("glia.nn.loaded", ready.loaded_in.is_some());
        if let Some(took) = ready.loaded_in {
            usage.record_load(label, ready.device, ready.backend, took);
        }
        if let Some(requested) = ready.fell_back_from {
            usage.record_fallback(label, requested, ready.device);
            tracing::debug!(model = label, %requested, ran_on = %ready.device, "device fallback");
        }
        let loaded = Arc::new(Loaded {
            name: label.to_string(),
            model: ready.model,
            backend: ready.backend,
            device: ready.device,
        });
        Ok(Ok(self.table.push(GuestGraph { loaded })?))
    }
}

impl graph::Host for NnView<'_> {
    async fn load(
        &mut self,
        builder: Vec<Vec<u8>>,
        encoding: GraphEncoding,
        target: ExecutionTarget,
    ) -> GuestResult<Resource<GuestGraph>> {
        let Some(models) = self.state.models.clone() else {
            return self.fail(ErrorCode::UnsupportedOperation, "no models in this context");
        };
        let encoding = encoding_name(encoding);
        if !models.encodings().contains(&encoding) {
            return self.fail(
                ErrorCode::InvalidEncoding,
                format!(
                    "{encoding} models are not supported; this glia loads {}",
                    models.encodings().join(", ")
                ),
            );
        }
        let limit = self.state.max_raw_bytes;
        if limit == 0 {
            return self.fail(
                ErrorCode::UnsupportedOperation,
                "loading models from bytes is disabled (models.max_raw_load_mb = 0): upload the \
                 model (PUT /v1/models/{name}), grant it to the function and use load-by-name",
            );
        }
        let [bytes]: [Vec<u8>; 1] = match builder.try_into() {
            Ok(one) => one,
            Err(parts) => {
                return self.fail(
                    ErrorCode::InvalidArgument,
                    format!("a {encoding} model is one builder, got {}", parts.len()),
                );
            }
        };
        if bytes.len() > limit {
            return self.fail(
                ErrorCode::TooLarge,
                format!(
                    "the model is {} bytes; raw loads are limited to {limit} (models.max_raw_load_mb)",
                    bytes.len()
                ),
            );
        }
        let device = device_of(target);
        let tenant = self.state.tenant.clone();
        self.finish_load(
            "(bytes)",
            device,
            models.acquire_bytes(&tenant, encoding, bytes, device),
        )
        .await
    }

    async fn load_by_name(&mut self, name: String) -> GuestResult<Resource<GuestGraph>> {
        let not_found = format!("no model `{name}` is available to this function");
        let Some((model, device)) = parse_model_name(&name) else {
            return self.fail(
                ErrorCode::NotFound,
                format!("{not_found} (a target suffix is @cpu, @gpu or @tpu)"),
            );
        };
        let Some(models) = self
            .state
            .models
            .clone()
            .filter(|_| self.state.granted.iter().any(|g| g == model))
        else {
            return self.fail(ErrorCode::NotFound, not_found);
        };
        let model = model.to_string();
        let tenant = self.state.tenant.clone();
        self.finish_load(&model, device, models.acquire(&tenant, &model, device))
            .await
    }
}

impl graph::HostGraph for NnView<'_> {
    async fn init_execution_context(
        &mut self,
        graph: Resource<GuestGraph>,
    ) -> GuestResult<Resource<GuestContext>> {
        let loaded = self.table.get(&graph)?.loaded.clone();
        Ok(Ok(self.table.push(GuestContext { loaded })?))
    }

    async fn drop(&mut self, graph: Resource<GuestGraph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        ctx: Resource<GuestContext>,
        inputs: Vec<(String, Resource<Tensor>)>,
    ) -> GuestResult<Vec<(String, Resource<Tensor>)>> {
        let loaded = self.table.get(&ctx)?.loaded.clone();
        let span = tracing::debug_span!(
            "glia.nn.compute",
            glia.nn.model = %loaded.name,
            glia.nn.backend = loaded.backend,
            glia.nn.device = %loaded.device,
            glia.nn.inline = Empty,
            otel.status_code = Empty,
        );
        let result = self.run(loaded, inputs).instrument(span.clone()).await;
        if !matches!(result, Ok(Ok(_))) {
            span.record("otel.status_code", "error");
        }
        result
    }

    async fn drop(&mut self, ctx: Resource<GuestContext>) -> wasmtime::Result<()> {
        self.table.delete(ctx)?;
        Ok(())
    }
}

impl NnView<'_> {
    /// Runs inference for [`compute`](inference::HostGraphExecutionContext::compute).
    async fn run(
        &mut self,
        loaded: Arc<Loaded>,
        inputs: Vec<(String, Resource<Tensor>)>,
    ) -> GuestResult<Vec<(String, Resource<Tensor>)>> {
        let model = loaded.model.clone();
        let mut named = Vec::with_capacity(inputs.len());
        for (name, tensor) in inputs {
            let tensor = self.table.delete(tensor)?;
            if let Err(e) = tensor.validate(MAX_TENSOR_ELEMENTS) {
                return self.fail(code_of(&e), format!("input `{name}`: {e}"));
            }
            named.push((name, tensor));
        }
        // Inputs by name when every name is one of the model's, else in order.
        let specs = model.inputs();
        let by_name = named.len() == specs.len()
            && named
                .iter()
                .all(|(n, _)| specs.iter().any(|s| &s.name == n));
        let ordered: Vec<Tensor> = if by_name {
            let mut slots: Vec<Option<Tensor>> = vec![None; specs.len()];
            for (name, tensor) in named {
                if let Some(ix) = specs.iter().position(|s| s.name == name)
                    && let Some(slot) = slots.get_mut(ix)
                {
                    *slot = Some(tensor);
                }
            }
            match slots.into_iter().collect::<Option<Vec<_>>>() {
                Some(all) => all,
                None => {
                    return self.fail(ErrorCode::InvalidArgument, "an input was given twice");
                }
            }
        } else {
            named.into_iter().map(|(_, t)| t).collect()
        };

        let started = Instant::now();
        let inline = model.typical_run().is_some_and(|t| t < INLINE_RUN_LIMIT);
        tracing::Span::current().record("glia.nn.inline", inline);
        if inline {
            let result = model.run(&ordered);
            self.state
                .usage
                .record_compute(loaded.device, loaded.backend, started.elapsed(), true);
            let outputs = match result {
                Ok(outputs) => outputs,
                Err(e) => return self.fail(code_of(&e), e.to_string()),
            };
            if self.state.deadline.is_some_and(|d| Instant::now() > d) {
                return self.fail(
                    ErrorCode::Timeout,
                    "inference did not finish before the function's deadline",
                );
            }
            return self.push_outputs(&*model, outputs);
        }
        let run_model = model.clone();
        // Longer runs go to the inference threads (most recently idle
        // first, so a model's runs stay on a warm thread), off the request
        // workers. A run is asked to stop at the call's deadline (ONNX
        // Runtime and tract stop midway; a run not yet started does not
        // start), holds the call's admission until it ends, and is billed
        // for its own run time, not its wait for a thread.
        let stop = Arc::new(Stop::default());
        let job_stop = stop.clone();
        let keepalive = self.state.keepalive.clone();
        let spawned = super::pool::InferencePool::global().spawn(&self.state.tenant, move || {
            let _held = keepalive;
            run_model.run_until(&ordered, &job_stop)
        });
        let mut job = match spawned {
            Ok(job) => job,
            Err(e) => return self.fail(ErrorCode::RuntimeError, e.to_string()),
        };
        let joined = match self.state.deadline {
            Some(deadline) => {
                let deadline = tokio::time::Instant::from_std(deadline);
                match tokio::time::timeout_at(deadline, &mut job).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        stop.stop();
                        self.state
                            .usage
                            .outlived(loaded.device, loaded.backend, async move {
                                job.await.ok().and_then(Result::ok).map(|(_, took)| took)
                            });
                        return self.fail(
                            ErrorCode::Timeout,
                            "inference did not finish before the function's deadline",
                        );
                    }
                }
            }
            None => job.await,
        };
        let outputs = match joined {
            Ok(Ok((result, took))) => {
                self.state
                    .usage
                    .record_compute(loaded.device, loaded.backend, took, false);
                match result {
                    Ok(outputs) => outputs,
                    Err(e) => return self.fail(code_of(&e), e.to_string()),
                }
            }
            Ok(Err(e)) => return self.fail(ErrorCode::RuntimeError, e.to_string()),
            Err(_) => {
                return self.fail(
                    ErrorCode::RuntimeError,
                    "the inference run was lost (no inference thread)",
                );
            }
        };
        self.push_outputs(&*model, outputs)
    }

    /// Hands a run's outputs to the guest, named after the model's outputs.
    fn push_outputs(
        &mut self,
        model: &dyn LoadedModel,
        outputs: Vec<Tensor>,
    ) -> GuestResult<Vec<(String, Resource<Tensor>)>> {
        let mut result = Vec::with_capacity(outputs.len());
        for (ix, tensor) in outputs.into_iter().enumerate() {
            let name = model
                .outputs()
                .get(ix)
                .map(|s| s.name.clone())
                .unwrap_or_else(|| ix.to_string());
            result.push((name, self.table.push(tensor)?));
        }
        Ok(Ok(result))
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    async fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<Tensor>> {
        Ok(self.table.push(Tensor {
            dims: dimensions.into_iter().map(|d| d as usize).collect(),
            dtype: dtype_of(ty),
            data,
        })?)
    }

    async fn dimensions(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u32>> {
        let t = self.table.get(&tensor)?;
        Ok(t.dims
            .iter()
            .map(|d| u32::try_from(*d).unwrap_or(u32::MAX))
            .collect())
    }

    async fn ty(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<TensorType> {
        Ok(tensor_type_of(self.table.get(&tensor)?.dtype))
    }

    async fn data(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&tensor)?.data.clone())
    }

    async fn drop(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<()> {
        self.table.delete(tensor)?;
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    async fn code(&mut self, error: Resource<GuestError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&error)?.code)
    }

    async fn data(&mut self, error: Resource<GuestError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.message.clone())
    }

    async fn drop(&mut self, error: Resource<GuestError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}
