//! `torch` backend (cargo feature `torch`): TorchScript models, `wasi:nn`
//! encoding `pytorch`, run by libtorch on the CPU or a CUDA GPU.
//!
//! A model is a TorchScript archive (`torch.jit.save`). Loaded for `gpu`, its
//! weights are moved to the configured CUDA device once; each run copies the
//! inputs there, runs `forward` under `no_grad`, and copies the outputs back
//! (the copy back waits for the GPU, so a run's measured time is the time the
//! GPU worked for it).
//!
//! A TorchScript module declares no input shapes, so a model may describe
//! itself: a method `glia_signature() -> str` returning JSON
//! `{"inputs": [{"name", "dtype", "dims"}], "outputs": [...]}` (a `null`
//! dimension is free). With one, inputs are checked (count, type, fixed
//! dimensions) before they reach libtorch, outputs get their names, and the
//! load runs the model once on zeros of that shape, so a model that cannot
//! run is refused at upload and the first call does not pay the warm-up.
//! Without one, libtorch's own errors say what is wrong.
//!
//! Concurrency: the module is shared; calls run `forward` on their own
//! threads (in place, or on glia's inference threads) at the same time,
//! with no lock of glia's. libtorch modules are safe to run from many
//! threads for inference. On a GPU, every thread queues its kernels on the
//! device's current (default) stream, so the device runs them in order
//! while the CPU-side work of the calls (conversion, copies, dispatch)
//! overlaps; libtorch's caching allocator reuses device memory between runs.

use std::sync::Arc;

use tch::{CModule, IValue, Kind};

use super::{
    Backend, DType, Device, LoadedModel, NnError, Tensor, TensorSpec, check_inputs, contained,
    first_line,
};

/// The libtorch version this backend is built for (tch 0.24).
pub const LIBTORCH_VERSION: &str = "2.11.0";

/// The torch backend.
#[derive(Debug)]
pub struct TorchBackend {
    /// The CUDA device `gpu` models run on, when CUDA is usable.
    cuda: Option<usize>,
    /// Devices CUDA reports (0 without CUDA).
    cuda_devices: i64,
}

impl TorchBackend {
    /// Probes CUDA and sets libtorch's intra-op threads (0 leaves libtorch's
    /// default, one per core). `gpu` models go to CUDA device `cuda_device`
    /// when it exists.
    pub fn new(cuda_device: usize, threads: usize) -> Self {
        if threads > 0 {
            tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
        }
        let probe = std::panic::catch_unwind(|| {
            if tch::Cuda::is_available() {
                tch::Cuda::device_count()
            } else {
                0
            }
        });
        let cuda_devices = probe.unwrap_or(0);
        let cuda = i64::try_from(cuda_device)
            .is_ok_and(|d| d < cuda_devices)
            .then_some(cuda_device);
        Self { cuda, cuda_devices }
    }

    /// The CUDA device `gpu` models run on, when there is one.
    pub fn cuda_device(&self) -> Option<usize> {
        self.cuda
    }

    /// How many CUDA devices libtorch sees.
    pub fn cuda_devices(&self) -> i64 {
        self.cuda_devices
    }

    fn torch_device(&self, device: Device) -> Result<tch::Device, NnError> {
        match (device, self.cuda) {
            (Device::Cpu, _) => Ok(tch::Device::Cpu),
            (Device::Gpu, Some(ix)) => Ok(tch::Device::Cuda(ix)),
            (Device::Gpu, None) => Err(NnError::UnsupportedOperation(
                "no CUDA device is available to the torch backend".into(),
            )),
            (Device::Tpu, _) => Err(NnError::UnsupportedOperation(
                "the torch backend has no TPU support".into(),
            )),
        }
    }
}

impl Backend for TorchBackend {
    fn name(&self) -> &'static str {
        "torch"
    }

    fn encoding(&self) -> &'static str {
        "pytorch"
    }

    fn load(&self, bytes: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError> {
        self.load_on(bytes, Device::Cpu)
    }

    fn supports(&self, device: Device) -> bool {
        match device {
            Device::Cpu => true,
            Device::Gpu => self.cuda.is_some(),
            Device::Tpu => false,
        }
    }

    fn load_on(&self, bytes: &[u8], device: Device) -> Result<Arc<dyn LoadedModel>, NnError> {
        super::torchscript::check_archive(bytes)?;
        let on = self.torch_device(device)?;
        contained(
            "libtorch",
            || {
                let mut module = CModule::load_data_on_device(&mut &*bytes, on).map_err(|e| {
                    NnError::InvalidEncoding(format!(
                        "not a loadable TorchScript model: {}",
                        first_line(&e.to_string())
                    ))
                })?;
                module
                    .f_set_eval()
                    .map_err(|e| NnError::InvalidEncoding(e.to_string()))?;
                let (inputs, outputs) = signature(&module)?;
                let model = TorchModel {
                    module,
                    device: on,
                    inputs,
                    outputs,
                };
                model.warm_up()?;
                tracing::info!(device = ?on, inputs = model.inputs.len(), "TorchScript model loaded");
                Ok(Arc::new(model) as Arc<dyn LoadedModel>)
            },
            NnError::InvalidEncoding,
        )
    }
}

/// A loaded TorchScript module on one device.
struct TorchModel {
    module: CModule,
    device: tch::Device,
    /// Empty when the model declares no signature.
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl TorchModel {
    /// Runs the model once on zeros of its declared input shapes (free
    /// dimensions as 1), when it declares them.
    fn warm_up(&self) -> Result<(), NnError> {
        if self.inputs.is_empty() {
            return Ok(());
        }
        let zeros: Vec<Tensor> = self
            .inputs
            .iter()
            .map(|spec| {
                let dims: Vec<usize> = spec.dims.iter().map(|d| d.unwrap_or(1)).collect();
                let dtype = spec.dtype.unwrap_or(DType::F32);
                let bytes = dims.iter().product::<usize>() * dtype.size();
                Tensor {
                    dims,
                    dtype,
                    data: vec![0; bytes],
                }
            })
            .collect();
        self.forward(&zeros).map(|_| ()).map_err(|e| {
            NnError::InvalidEncoding(format!(
                "the model does not run on inputs of its declared signature: {e}"
            ))
        })
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, NnError> {
        let _no_grad = tch::no_grad_guard();
        let args = inputs
            .iter()
            .enumerate()
            .map(|(ix, t)| to_torch(t, self.device).map_err(|e| prefixed(ix, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .module
            .forward_is(&args)
            .map_err(|e| NnError::Runtime(first_line(&e.to_string())))?;
        let mut tensors = Vec::new();
        flatten(output, &mut tensors)?;
        tensors.iter().map(from_torch).collect()
    }
}

impl LoadedModel for TorchModel {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, NnError> {
        if self.inputs.is_empty() {
            for (ix, t) in inputs.iter().enumerate() {
                t.validate(usize::MAX).map_err(|e| prefixed(ix, e))?;
            }
        } else {
            check_inputs(&self.inputs, inputs)?;
        }
        contained("libtorch", || self.forward(inputs), NnError::Runtime)
    }
}

fn prefixed(ix: usize, e: NnError) -> NnError {
    match e {
        NnError::InvalidArgument(m) => NnError::InvalidArgument(format!("input {ix}: {m}")),
        other => other,
    }
}

/// The model's `glia_signature()`, when it has one.
fn signature(module: &CModule) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), NnError> {
    let Ok(value) = module.method_is::<IValue>("glia_signature", &[]) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let IValue::String(json) = value else {
        return Err(NnError::InvalidEncoding(
            "glia_signature() must return a JSON string".into(),
        ));
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Declared {
        inputs: Vec<Spec>,
        #[serde(default)]
        outputs: Vec<Spec>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Spec {
        name: String,
        #[serde(default)]
        dtype: Option<String>,
        #[serde(default)]
        dims: Vec<Option<usize>>,
    }
    let declared: Declared = serde_json::from_str(&json)
        .map_err(|e| NnError::InvalidEncoding(format!("glia_signature(): {e}")))?;
    let convert = |specs: Vec<Spec>| {
        specs
            .into_iter()
            .map(|s| {
                let dtype = match s.dtype.as_deref() {
                    None => None,
                    Some(name) => Some(dtype_named(name).ok_or_else(|| {
                        NnError::InvalidEncoding(format!(
                            "glia_signature(): unknown dtype `{name}` of `{}`",
                            s.name
                        ))
                    })?),
                };
                Ok(TensorSpec {
                    name: s.name,
                    dtype,
                    dims: s.dims,
                })
            })
            .collect::<Result<Vec<_>, NnError>>()
    };
    Ok((convert(declared.inputs)?, convert(declared.outputs)?))
}

fn dtype_named(name: &str) -> Option<DType> {
    [
        DType::F16,
        DType::F32,
        DType::F64,
        DType::Bf16,
        DType::U8,
        DType::I32,
        DType::I64,
    ]
    .into_iter()
    .find(|d| d.name() == name)
}

fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::F16 => Kind::Half,
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::Bf16 => Kind::BFloat16,
        DType::U8 => Kind::Uint8,
        DType::I32 => Kind::Int,
        DType::I64 => Kind::Int64,
    }
}

/// A libtorch tensor on `device` from validated little-endian bytes.
fn to_torch(t: &Tensor, device: tch::Device) -> Result<IValue, NnError> {
    let dims = t
        .dims
        .iter()
        .map(|d| i64::try_from(*d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| NnError::TooLarge("a dimension does not fit in i64".into()))?;
    let cpu = tch::Tensor::f_from_data_size(&t.data, &dims, kind_of(t.dtype))
        .map_err(|e| NnError::InvalidArgument(first_line(&e.to_string())))?;
    let placed = if device == tch::Device::Cpu {
        cpu
    } else {
        cpu.f_to_device(device)
            .map_err(|e| NnError::Runtime(first_line(&e.to_string())))?
    };
    Ok(IValue::Tensor(placed))
}

/// The tensors of a `forward` result: a tensor, or tuples, lists and dict
/// values of them, in order.
fn flatten(value: IValue, out: &mut Vec<tch::Tensor>) -> Result<(), NnError> {
    match value {
        IValue::Tensor(t) => out.push(t),
        IValue::TensorList(ts) => out.extend(ts),
        IValue::Tuple(items) | IValue::GenericList(items) => {
            for item in items {
                flatten(item, out)?;
            }
        }
        IValue::GenericDict(pairs) => {
            for (_, item) in pairs {
                flatten(item, out)?;
            }
        }
        other => {
            return Err(NnError::UnsupportedOperation(format!(
                "the model returned a value wasi-nn cannot carry ({})",
                ivalue_kind(&other)
            )));
        }
    }
    Ok(())
}

fn ivalue_kind(value: &IValue) -> &'static str {
    match value {
        IValue::None => "None",
        IValue::Double(_) => "float",
        IValue::Int(_) => "int",
        IValue::Bool(_) => "bool",
        IValue::String(_) => "str",
        IValue::IntList(_) | IValue::DoubleList(_) | IValue::BoolList(_) => "a list of numbers",
        IValue::StringList(_) => "a list of strings",
        IValue::Object(_) => "an object",
        IValue::Device(_) => "a device",
        _ => "a tensor container",
    }
}

/// A `wasi:nn` tensor from a libtorch output, copied to the CPU. Booleans
/// become `u8`, 8- and 16-bit integers `i32`.
fn from_torch(t: &tch::Tensor) -> Result<Tensor, NnError> {
    let failed = |e: tch::TchError| NnError::Runtime(first_line(&e.to_string()));
    let kind = t.f_kind().map_err(failed)?;
    let (dtype, convert_to) = match kind {
        Kind::Half => (DType::F16, None),
        Kind::Float => (DType::F32, None),
        Kind::Double => (DType::F64, None),
        Kind::BFloat16 => (DType::Bf16, None),
        Kind::Uint8 => (DType::U8, None),
        Kind::Bool => (DType::U8, Some(Kind::Uint8)),
        Kind::Int8 | Kind::Int16 => (DType::I32, Some(Kind::Int)),
        Kind::Int => (DType::I32, None),
        Kind::Int64 => (DType::I64, None),
        other => {
            return Err(NnError::UnsupportedOperation(format!(
                "the model produced a {other:?} tensor, which wasi-nn cannot carry"
            )));
        }
    };
    let mut cpu = t.f_to_device(tch::Device::Cpu).map_err(failed)?;
    if let Some(kind) = convert_to {
        cpu = cpu.f_to_kind(kind).map_err(failed)?;
    }
    let cpu = cpu.f_contiguous().map_err(failed)?;
    let dims = cpu
        .size()
        .into_iter()
        .map(|d| usize::try_from(d).unwrap_or(0))
        .collect::<Vec<_>>();
    let numel = dims.iter().product::<usize>();
    let mut data = vec![0u8; numel * dtype.size()];
    if numel > 0 {
        cpu.f_copy_data_u8(&mut data, numel).map_err(failed)?;
    }
    Ok(Tensor { dims, dtype, data })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/torch")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| unreachable!("{}: {e}", path.display()))
    }

    fn reference() -> serde_json::Value {
        serde_json::from_slice(&fixture("reference.json")).unwrap()
    }

    fn floats(value: &serde_json::Value) -> Vec<f32> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    }

    fn backend() -> TorchBackend {
        TorchBackend::new(0, 1)
    }

    #[test]
    fn digits_match_python_torch_and_declare_their_signature() {
        let model = backend().load(&fixture("digits.pt")).unwrap();
        assert_eq!(model.inputs()[0].name, "pixels");
        assert_eq!(model.inputs()[0].dtype, Some(DType::F32));
        assert_eq!(model.inputs()[0].dims, vec![None, Some(64)]);
        assert_eq!(model.outputs()[0].name, "probabilities");

        let reference = reference();
        let pixels = floats(&reference["digits"]["inputs"]["pixels"]);
        let want = floats(&reference["digits"]["outputs"]["probabilities"]);
        let outputs = model
            .run(&[Tensor::from_f32(vec![4, 64], &pixels)])
            .unwrap();
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].dims, vec![4, 10]);
        let got = outputs[0].to_f32().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        let labels: Vec<usize> = got
            .chunks(10)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(ix, _)| ix)
                    .unwrap()
            })
            .collect();
        let expected: Vec<usize> = reference["digits"]["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(labels, expected);
    }

    #[test]
    fn every_wasi_nn_type_goes_in_and_out() {
        let model = backend().load(&fixture("dtypes.pt")).unwrap();
        assert!(model.inputs().is_empty(), "dtypes.pt declares no signature");
        let tensor = |dtype: DType, bytes: Vec<u8>| Tensor {
            dims: vec![2],
            dtype,
            data: bytes,
        };
        let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes();
        let bf16 = |v: f32| half::bf16::from_f32(v).to_le_bytes();
        let inputs = vec![
            tensor(DType::F16, [f16(1.5), f16(-2.0)].concat()),
            tensor(
                DType::F32,
                [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat(),
            ),
            tensor(
                DType::F64,
                [1.5f64.to_le_bytes(), (-2.0f64).to_le_bytes()].concat(),
            ),
            tensor(DType::Bf16, [bf16(1.5), bf16(-2.0)].concat()),
            tensor(DType::U8, vec![1, 254]),
            tensor(
                DType::I32,
                [7i32.to_le_bytes(), (-8i32).to_le_bytes()].concat(),
            ),
            tensor(
                DType::I64,
                [7i64.to_le_bytes(), (-8i64).to_le_bytes()].concat(),
            ),
        ];
        let outputs = model.run(&inputs).unwrap();
        let want = vec![
            tensor(DType::F16, [f16(2.5), f16(-1.0)].concat()),
            tensor(
                DType::F32,
                [2.5f32.to_le_bytes(), (-1.0f32).to_le_bytes()].concat(),
            ),
            tensor(
                DType::F64,
                [2.5f64.to_le_bytes(), (-1.0f64).to_le_bytes()].concat(),
            ),
            tensor(DType::Bf16, [bf16(2.5), bf16(-1.0)].concat()),
            tensor(DType::U8, vec![2, 255]),
            tensor(
                DType::I32,
                [8i32.to_le_bytes(), (-7i32).to_le_bytes()].concat(),
            ),
            tensor(
                DType::I64,
                [8i64.to_le_bytes(), (-7i64).to_le_bytes()].concat(),
            ),
            // A bool output arrives as u8.
            tensor(DType::U8, vec![1, 0]),
        ];
        assert_eq!(outputs, want);
    }

    #[test]
    fn models_that_reach_for_files_are_refused() {
        // What libtorch itself does with them: reads and writes files.
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, (1..=16u8).collect::<Vec<_>>()).unwrap();
        let path = |p: &std::path::Path| IValue::String(p.to_str().unwrap().to_string());
        let x = || IValue::Tensor(tch::Tensor::zeros([16], (Kind::Float, tch::Device::Cpu)));
        let reads = CModule::load_data(&mut &*fixture("reads-file.pt")).unwrap();
        let IValue::Tensor(out) = reads.forward_is(&[x(), path(&secret)]).unwrap() else {
            unreachable!("a tensor");
        };
        assert_eq!(
            Vec::<f32>::try_from(out).unwrap(),
            (1..=16).map(|v| v as f32).collect::<Vec<_>>()
        );
        let written = dir.path().join("written");
        let writes = CModule::load_data(&mut &*fixture("writes-file.pt")).unwrap();
        writes.forward_is(&[x(), path(&written)]).unwrap();
        assert!(written.exists(), "libtorch wrote the file");

        // What the backend does: refuses both, on every device.
        for (name, op) in [("reads-file.pt", "from_file"), ("writes-file.pt", "save")] {
            for device in [Device::Cpu, Device::Gpu] {
                let err = backend()
                    .load_on(&fixture(name), device)
                    .map(|_| ())
                    .unwrap_err();
                assert!(
                    matches!(&err, NnError::InvalidEncoding(m) if m.contains(op)),
                    "{name}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn bad_models_and_inputs_are_errors_not_panics() {
        let torch = backend();
        for junk in [&b"not a model"[..], b"", b"PK\x03\x04garbage"] {
            let err = torch.load(junk).map(|_| ()).unwrap_err();
            assert!(
                matches!(&err, NnError::InvalidEncoding(m) if m.contains("TorchScript")),
                "{err:?}"
            );
        }
        let model = torch.load(&fixture("digits.pt")).unwrap();
        // Shape and type against the signature, before libtorch sees them.
        let err = model
            .run(&[Tensor::from_f32(vec![1, 63], &[0.0; 63])])
            .unwrap_err();
        assert!(
            matches!(&err, NnError::InvalidArgument(m) if m.contains("[?, 64]")),
            "{err:?}"
        );
        let err = model.run(&[]).unwrap_err();
        assert!(matches!(err, NnError::InvalidArgument(_)), "{err:?}");
        // Without a signature, libtorch's own error comes back.
        let model = torch.load(&fixture("dtypes.pt")).unwrap();
        let err = model.run(&[Tensor::from_f32(vec![1], &[0.0])]).unwrap_err();
        assert!(matches!(err, NnError::Runtime(_)), "{err:?}");
        let err = model
            .run(&[Tensor {
                dims: vec![3],
                dtype: DType::F32,
                data: vec![0; 4],
            }])
            .unwrap_err();
        assert!(matches!(err, NnError::InvalidArgument(_)), "{err:?}");
    }

    #[test]
    fn gpu_is_offered_only_with_cuda() {
        let torch = backend();
        assert!(torch.supports(Device::Cpu));
        assert!(!torch.supports(Device::Tpu));
        assert_eq!(torch.supports(Device::Gpu), tch::Cuda::is_available());
        if !tch::Cuda::is_available() {
            let err = torch
                .load_on(&fixture("digits.pt"), Device::Gpu)
                .map(|_| ())
                .unwrap_err();
            assert!(matches!(err, NnError::UnsupportedOperation(_)), "{err:?}");
        }
        // A device index past the last one is no device.
        assert!(!TorchBackend::new(4096, 1).supports(Device::Gpu));
    }

    #[test]
    fn one_model_runs_from_many_threads_at_once() {
        let model = backend().load(&fixture("cnn.pt")).unwrap();
        let image: Vec<f32> = (0..3 * 64 * 64)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect();
        let want = floats(&reference()["cnn"]["outputs"]["logits"]);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..3 {
                        let out = model
                            .run(&[Tensor::from_f32(vec![1, 3, 64, 64], &image)])
                            .unwrap();
                        let got = out[0].to_f32().unwrap();
                        assert_eq!(got.len(), want.len());
                        for (g, w) in got.iter().zip(&want) {
                            assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
                        }
                    }
                });
            }
        });
    }
}
