//! `ort` backend: ONNX models on ONNX Runtime, loaded at run time from a
//! `libonnxruntime.so` (the one shipped in the PyPI `onnxruntime` wheel), so
//! the binary neither links nor downloads it and still starts without it.
//!
//! Three things shape this file:
//!
//! - **One library per process.** `ort` keeps the library path and the
//!   ONNX Runtime environment in process globals, and panics at the first
//!   session when the library cannot be loaded. [`OrtBackend::new`] therefore
//!   checks the file first, initialises `ort` exactly once behind a
//!   [`OnceLock`], turns any panic into an error, and refuses a second,
//!   different library instead of silently using the first.
//! - **Parallel runs without a lock around inference.** ONNX Runtime's own
//!   `Run` is thread safe, but `ort` 2.0.0-rc.10's `Session::run` takes
//!   `&mut self` (its authors cite execution-provider allocators that are not
//!   thread safe), and this workspace denies `unsafe`. A model therefore owns
//!   a small pool of sessions, created lazily up to a cap; each run checks one
//!   out and gives it back, so concurrent runs execute in parallel. See
//!   [`SessionPool`] for the memory this costs.
//! - **Nothing a guest sends can panic the host.** Arguments are checked
//!   before they reach ONNX Runtime, and every call into `ort` is wrapped in
//!   [`catch_unwind`] as a last resort.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::tensor::{PrimitiveTensorElementType, TensorElementType};
use ort::value::{DynValue, ValueType};

use super::{Backend, DType, LoadedModel, NnError, Tensor, TensorSpec, check_inputs};

/// The ONNX Runtime release this backend is tested against (the PyPI wheel
/// the build fetches). `ort` 2.0.0-rc.10 targets the 1.22 C API, which newer
/// libraries still serve.
pub const ONNXRUNTIME_VERSION: &str = "1.32.0";

/// Where the build puts the library, relative to `GLIA_PYPI_DIR`.
const PYPI_LIBRARY: &str = "onnxruntime-1.32.0/libonnxruntime.so.1.32.0";

/// Default cap on sessions per model: one per CPU, since more concurrent
/// runs than CPUs gain nothing.
fn default_max_sessions() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Finds an ONNX Runtime library, first match wins: `configured`; the
/// `ORT_DYLIB_PATH` environment variable; the copy the build fetched into
/// `GLIA_PYPI_DIR` (a compile-time variable, absent when the build did not
/// fetch it); the `onnxruntime` package of the `python3` on the `PATH`.
/// Returns only paths that are existing files. Never panics; the Python
/// probe runs only when nothing earlier matched.
pub fn find_library(configured: Option<&Path>) -> Option<PathBuf> {
    let configured = configured.map(Path::to_path_buf);
    let from_env = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let fetched = option_env!("GLIA_PYPI_DIR").map(|dir| Path::new(dir).join(PYPI_LIBRARY));
    configured
        .into_iter()
        .chain(from_env)
        .chain(fetched)
        .find(|p| p.is_file())
        .or_else(python_library)
}

/// The library inside the Python `onnxruntime` package, if one is
/// installed. `find_spec` locates the package without importing it (and
/// numpy with it), which keeps the probe to a bare interpreter start.
fn python_library() -> Option<PathBuf> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('onnxruntime'); \
             print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let package = String::from_utf8(output.stdout).ok()?;
    let package = package.trim();
    if package.is_empty() {
        return None;
    }
    let mut libraries: Vec<PathBuf> = std::fs::read_dir(Path::new(package).join("capi"))
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                && p.is_file()
        })
        .collect();
    // Sorted so the choice is stable when a wheel ships several names.
    libraries.sort();
    libraries.into_iter().next()
}

/// Why the ONNX Runtime backend could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrtInitError {
    #[error(
        "no ONNX Runtime library at {0} (install it with \
         `pip install onnxruntime=={ONNXRUNTIME_VERSION}` or point ORT_DYLIB_PATH at \
         libonnxruntime.so)"
    )]
    LibraryNotFound(PathBuf),
    #[error("the ONNX Runtime library path {0} is not valid UTF-8")]
    NotUtf8(PathBuf),
    #[error(
        "ONNX Runtime is already initialised from {loaded} in this process and only one library \
         can be loaded per process; {requested} was asked for"
    )]
    OtherLibraryLoaded { loaded: PathBuf, requested: PathBuf },
    #[error("cannot initialise ONNX Runtime from {library}: {message}")]
    Init { library: PathBuf, message: String },
}

impl From<OrtInitError> for NnError {
    fn from(e: OrtInitError) -> Self {
        match e {
            OrtInitError::LibraryNotFound(_) => NnError::NotFound(e.to_string()),
            _ => NnError::UnsupportedOperation(e.to_string()),
        }
    }
}

/// The library `ort` was initialised from, and how that went. Set once per
/// process, because `ort` itself keeps the path and environment in globals
/// that cannot be changed afterwards.
struct Runtime {
    library: PathBuf,
    outcome: Result<(), String>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Initialises `ort` from `library` (an existing, absolute path). `ort`
/// panics when the library cannot be loaded or is older than its C API; the
/// panic is caught here and returned as the message.
fn initialise(library: &Path) -> Result<(), String> {
    let Some(path) = library.to_str() else {
        return Err("the path is not valid UTF-8".into());
    };
    let committed = catch_unwind(|| {
        ort::init_from(path)
            .with_name("glia")
            .with_telemetry(false)
            .commit()
    });
    match committed {
        // `false` means an environment existed already; only this module
        // uses `ort`, so that one came from the same library.
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic_message(&*panic)),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "ONNX Runtime panicked".to_string())
}

/// The ONNX Runtime backend.
#[derive(Debug, Clone)]
pub struct OrtBackend {
    library: PathBuf,
    intra_threads: usize,
    max_sessions: usize,
}

impl OrtBackend {
    /// Initialises ONNX Runtime from `library` (once per process; the same
    /// library again is fine, a different one is an error). `intra_threads`
    /// is the number of intra-op threads of each session: 1 runs each
    /// inference on the calling thread alone, 0 lets ONNX Runtime choose (one
    /// per physical core).
    pub fn new(library: &Path, intra_threads: usize) -> Result<Self, OrtInitError> {
        // Checked before `ort` sees the path: `ort` fixes the path on first
        // use, so a typo must not poison the process.
        if !library.is_file() {
            return Err(OrtInitError::LibraryNotFound(library.to_path_buf()));
        }
        // Absolute, so `ort` does not resolve it against the executable's
        // directory, and so two spellings of one file compare equal.
        let library = std::fs::canonicalize(library).unwrap_or_else(|_| library.to_path_buf());
        if library.to_str().is_none() {
            return Err(OrtInitError::NotUtf8(library));
        }
        let runtime = RUNTIME.get_or_init(|| Runtime {
            library: library.clone(),
            outcome: initialise(&library),
        });
        if runtime.library != library {
            return Err(OrtInitError::OtherLibraryLoaded {
                loaded: runtime.library.clone(),
                requested: library,
            });
        }
        runtime
            .outcome
            .clone()
            .map_err(|message| OrtInitError::Init {
                library: library.clone(),
                message,
            })?;
        Ok(Self {
            library,
            intra_threads,
            max_sessions: default_max_sessions(),
        })
    }

    /// Caps the sessions each model keeps for concurrent runs (at least one;
    /// the default is one per CPU). Runs beyond the cap wait for a session.
    #[must_use]
    pub fn with_max_sessions(mut self, max_sessions: usize) -> Self {
        self.max_sessions = max_sessions.max(1);
        self
    }

    /// The library ONNX Runtime was loaded from.
    pub fn library(&self) -> &Path {
        &self.library
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn load(&self, bytes: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError> {
        Ok(Arc::new(self.load_model(bytes)?))
    }
}

impl OrtBackend {
    fn load_model(&self, bytes: &[u8]) -> Result<OrtModel, NnError> {
        // ONNX Runtime reports an empty buffer as a bare argument error;
        // say what it is instead.
        if bytes.is_empty() {
            return Err(NnError::InvalidEncoding(
                "not a loadable ONNX model: the model is empty".into(),
            ));
        }
        super::onnx::check_self_contained(bytes)?;
        self.session_model(bytes)
    }

    /// Loads a model on ONNX Runtime as it is: only for bytes that passed
    /// [`check_self_contained`](super::onnx::check_self_contained).
    fn session_model(&self, bytes: &[u8]) -> Result<OrtModel, NnError> {
        let session = build_session(bytes, self.intra_threads)?;
        let inputs = session
            .inputs
            .iter()
            .map(|i| spec(&i.name, &i.input_type))
            .collect();
        let outputs = session
            .outputs
            .iter()
            .map(|o| spec(&o.name, &o.output_type))
            .collect();
        Ok(OrtModel {
            inputs,
            outputs,
            pool: SessionPool::new(session, bytes, self.intra_threads, self.max_sessions),
        })
    }
}

/// Builds one session. Errors from the model are `InvalidEncoding`, errors
/// from the options (which do not depend on the model) are `Runtime`.
fn build_session(bytes: &[u8], intra_threads: usize) -> Result<Session, NnError> {
    let built = catch_unwind(|| {
        let mut builder = Session::builder()
            // Level 3 is ONNX Runtime's "all": fusions plus layout
            // changes, all semantics preserving on the CPU provider.
            .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3))
            // A host serves many requests at once: threads that spin
            // between parallel sections would steal CPUs from other runs.
            .and_then(|b| b.with_intra_op_spinning(false))
            .map_err(|e| {
                NnError::Runtime(format!("cannot configure an ONNX Runtime session: {e}"))
            })?;
        if intra_threads > 0 {
            builder = builder.with_intra_threads(intra_threads).map_err(|e| {
                NnError::Runtime(format!("cannot configure an ONNX Runtime session: {e}"))
            })?;
        }
        builder
            .commit_from_memory(bytes)
            .map_err(|e| NnError::InvalidEncoding(format!("not a loadable ONNX model: {e}")))
    });
    built.unwrap_or_else(|panic| {
        Err(NnError::Runtime(format!(
            "ONNX Runtime failed while loading the model: {}",
            panic_message(&*panic)
        )))
    })
}

fn spec(name: &str, ty: &ValueType) -> TensorSpec {
    match ty {
        ValueType::Tensor { ty, shape, .. } => TensorSpec {
            name: name.to_string(),
            dtype: from_element(*ty),
            // ONNX Runtime reports a symbolic dimension as -1.
            dims: shape.iter().map(|d| usize::try_from(*d).ok()).collect(),
        },
        // Sequences and maps: wasi-nn cannot carry them; `run` refuses them.
        _ => TensorSpec {
            name: name.to_string(),
            dtype: None,
            dims: Vec::new(),
        },
    }
}

fn from_element(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Float16 => DType::F16,
        TensorElementType::Bfloat16 => DType::Bf16,
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Int64 => DType::I64,
        _ => return None,
    })
}

struct OrtModel {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    pool: SessionPool,
}

/// Sessions of one model, handed out one per run.
///
/// `ort` 2.0.0-rc.10 needs `&mut Session` to run, so a session serves one run
/// at a time; parallel runs need one session each. The pool starts with the
/// session built at load and builds more only when every session is busy, up
/// to `max`; a run beyond the cap waits for the next session given back. The
/// lock is held only to take or return a session, never during inference.
///
/// Memory: every session is a full ONNX Runtime session, with its own copy
/// of the weights (pre-packed for its kernels), its own optimised graph and
/// its own activation arena; so a model under `n` concurrent runs costs
/// about `n` times its single-session footprint, up to `max` times, and
/// sessions once built are kept until the model is dropped. To build them,
/// a pool that may grow keeps a copy of the model bytes. A single-session
/// pool (`max` 1) keeps no bytes and serialises runs.
struct SessionPool {
    /// The model, to build more sessions; `None` when the pool cannot grow.
    bytes: Option<Box<[u8]>>,
    intra_threads: usize,
    max: usize,
    state: Mutex<PoolState>,
    /// Signalled whenever a session is given back or a build fails.
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Session>,
    /// Sessions that exist or are being built (idle + in use).
    created: usize,
    in_use: usize,
    /// The most sessions ever in use at once (tests look at this).
    peak_in_use: usize,
}

impl SessionPool {
    fn new(first: Session, bytes: &[u8], intra_threads: usize, max: usize) -> Self {
        Self {
            bytes: (max > 1).then(|| bytes.into()),
            intra_threads,
            max: max.max(1),
            state: Mutex::new(PoolState {
                idle: vec![first],
                created: 1,
                in_use: 0,
                peak_in_use: 0,
            }),
            returned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state stays consistent across a panic (counters are updated
        // with the session move), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session for one run: an idle one, else a new one when under the
    /// cap, else the next one given back.
    fn checkout(&self) -> Result<Lease<'_>, NnError> {
        let mut state = self.lock();
        loop {
            if let Some(session) = state.idle.pop() {
                state.in_use += 1;
                state.peak_in_use = state.peak_in_use.max(state.in_use);
                return Ok(Lease {
                    pool: self,
                    session: Some(session),
                });
            }
            if state.created < self.max
                && let Some(bytes) = &self.bytes
            {
                state.created += 1;
                state.in_use += 1;
                state.peak_in_use = state.peak_in_use.max(state.in_use);
                drop(state);
                // Reserved above and built outside the lock: building can take
                // as long as loading. If it fails, dropping the empty lease
                // gives the reservation back.
                let mut lease = Lease {
                    pool: self,
                    session: None,
                };
                lease.session = Some(build_session(bytes, self.intra_threads).map_err(|e| {
                    NnError::Runtime(format!("cannot start another session for the model: {e}"))
                })?);
                return Ok(lease);
            }
            if state.created == 0 {
                // Only reachable if the pool cannot grow and lost its only
                // session; waiting would never end.
                return Err(NnError::Runtime("the model has no session left".into()));
            }
            state = self.returned.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A session checked out of a pool; given back on drop, also when the run
/// panicked (the panic happened on the Rust side, after ONNX Runtime
/// returned, so the session itself is intact).
struct Lease<'p> {
    pool: &'p SessionPool,
    /// `None` only while a new session is being built.
    session: Option<Session>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        state.in_use = state.in_use.saturating_sub(1);
        match self.session.take() {
            Some(session) => state.idle.push(session),
            None => state.created = state.created.saturating_sub(1),
        }
        drop(state);
        self.pool.returned.notify_one();
    }
}

impl OrtModel {
    /// The most runs that ever held a session at the same time.
    #[cfg(test)]
    fn peak_concurrency(&self) -> usize {
        self.pool.lock().peak_in_use
    }
}

impl LoadedModel for OrtModel {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, NnError> {
        self.run_until(inputs, &super::Stop::default())
    }

    /// Runs under run options whose terminate flag `stop` raises: ONNX
    /// Runtime then halts the graph between kernels.
    fn run_until(&self, inputs: &[Tensor], stop: &super::Stop) -> Result<Vec<Tensor>, NnError> {
        check_inputs(&self.inputs, inputs)?;
        // Converted before taking a session, so a session is held only for
        // the inference itself.
        let values = inputs
            .iter()
            .enumerate()
            .map(|(ix, t)| {
                to_ort(t).map_err(|e| NnError::InvalidArgument(format!("input {ix}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut lease = self.pool.checkout()?;
        let Some(session) = lease.session.as_mut() else {
            return Err(NnError::Runtime("no session was checked out".into()));
        };
        let options =
            Arc::new(RunOptions::new().map_err(|e| NnError::Runtime(format!("run options: {e}")))?);
        let terminate = options.clone();
        stop.on_stop(move || {
            let _ = terminate.terminate();
        });
        if stop.stopped() {
            return Err(super::Stop::error());
        }
        let ran = catch_unwind(AssertUnwindSafe(|| {
            let outputs = session
                .run_with_options(values.as_slice(), &*options)
                .map_err(|e| {
                    if stop.stopped() {
                        super::Stop::error()
                    } else {
                        NnError::Runtime(e.to_string())
                    }
                })?;
            (&outputs)
                .into_iter()
                .map(|(name, value)| from_ort(name, &value))
                .collect::<Result<Vec<_>, _>>()
        }));
        ran.unwrap_or_else(|panic| {
            Err(NnError::Runtime(format!(
                "ONNX Runtime failed during inference: {}",
                panic_message(&*panic)
            )))
        })
    }
}

/// Builds an ONNX Runtime tensor from checked little-endian bytes.
fn to_ort(t: &Tensor) -> Result<SessionInputValue<'static>, ort::Error> {
    fn typed<T, const N: usize>(
        t: &Tensor,
        from: fn([u8; N]) -> T,
    ) -> Result<SessionInputValue<'static>, ort::Error>
    where
        T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
    {
        let values: Vec<T> = t
            .data
            .chunks_exact(N)
            .filter_map(|c| <[u8; N]>::try_from(c).ok().map(from))
            .collect();
        Ok(ort::value::Tensor::from_array((t.dims.clone(), values))?.into())
    }
    match t.dtype {
        DType::F16 => typed(t, |b| half::f16::from_bits(u16::from_le_bytes(b))),
        DType::Bf16 => typed(t, |b| half::bf16::from_bits(u16::from_le_bytes(b))),
        DType::F32 => typed(t, f32::from_le_bytes),
        DType::F64 => typed(t, f64::from_le_bytes),
        DType::U8 => typed(t, u8::from_le_bytes),
        DType::I32 => typed(t, i32::from_le_bytes),
        DType::I64 => typed(t, i64::from_le_bytes),
    }
}

/// Copies an output into a wasi-nn tensor; element types wasi-nn has no
/// name for (strings, bools, other integer widths) are unsupported.
fn from_ort(name: &str, value: &DynValue) -> Result<Tensor, NnError> {
    fn typed<T: PrimitiveTensorElementType, const N: usize>(
        value: &DynValue,
        dtype: DType,
        to: fn(&T) -> [u8; N],
    ) -> Result<Tensor, NnError> {
        let (shape, data) = value
            .try_extract_tensor::<T>()
            .map_err(|e| NnError::Runtime(e.to_string()))?;
        let dims = shape
            .iter()
            .map(|d| usize::try_from(*d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| NnError::Runtime(format!("output has dimensions {shape:?}")))?;
        Ok(Tensor {
            dims,
            dtype,
            data: data.iter().flat_map(to).collect(),
        })
    }
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(NnError::UnsupportedOperation(format!(
                "output `{name}` is a {other}, which wasi-nn cannot carry"
            )));
        }
    };
    match ty {
        TensorElementType::Float16 => {
            typed(value, DType::F16, |v: &half::f16| v.to_bits().to_le_bytes())
        }
        TensorElementType::Bfloat16 => typed(value, DType::Bf16, |v: &half::bf16| {
            v.to_bits().to_le_bytes()
        }),
        TensorElementType::Float32 => typed(value, DType::F32, |v: &f32| v.to_le_bytes()),
        TensorElementType::Float64 => typed(value, DType::F64, |v: &f64| v.to_le_bytes()),
        TensorElementType::Uint8 => typed(value, DType::U8, |v: &u8| v.to_le_bytes()),
        TensorElementType::Int32 => typed(value, DType::I32, |v: &i32| v.to_le_bytes()),
        TensorElementType::Int64 => typed(value, DType::I64, |v: &i64| v.to_le_bytes()),
        other => Err(NnError::UnsupportedOperation(format!(
            "output `{name}` is a {other} tensor, which wasi-nn cannot carry"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGITS: &[u8] = include_bytes!("../../../functions/classify-digits/model/digits.onnx");
    const HELDOUT: &str = include_str!("../../../functions/classify-digits/model/heldout.json");

    /// The library the build fetches (or a configured / installed one).
    fn library() -> PathBuf {
        let fetched = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/pypi")
            .join(PYPI_LIBRARY);
        find_library(Some(&fetched)).unwrap_or_else(|| {
            panic!(
                "no ONNX Runtime library: expected {} (fetched by the host build script), \
                 or set ORT_DYLIB_PATH, or `pip install onnxruntime=={ONNXRUNTIME_VERSION}`",
                fetched.display()
            )
        })
    }

    fn backend() -> OrtBackend {
        OrtBackend::new(&library(), 1).expect("ONNX Runtime initialises")
    }

    fn minilm() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/pypi/models/paraphrase-MiniLM-L3-v2.onnx");
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}; the host build script fetches it into target/pypi/models \
                 (run `cargo build -p glia-host`)",
                path.display()
            )
        })
    }

    fn digits() -> Arc<dyn LoadedModel> {
        backend().load(DIGITS).expect("digits loads")
    }

    fn i64_tensor(dims: Vec<usize>, values: &[i64]) -> Tensor {
        Tensor {
            dims,
            dtype: DType::I64,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    #[test]
    fn find_library_prefers_the_configured_path_and_skips_missing_ones() {
        let lib = library();
        assert_eq!(find_library(Some(&lib)), Some(lib.clone()));
        let missing = Path::new("/nonexistent/libonnxruntime.so");
        if let Some(found) = find_library(Some(missing)) {
            assert_ne!(found, missing);
            assert!(found.is_file());
        }
    }

    #[test]
    fn one_library_per_process() {
        let b = backend();
        assert_eq!(b.name(), "ort");
        // The same library again, by another spelling, is fine.
        let again = b
            .library()
            .parent()
            .expect("dir")
            .join(".")
            .join(b.library().file_name().expect("file name"));
        OrtBackend::new(&again, 2).expect("same library twice");
        // A missing file is refused before `ort` sees it.
        let missing = OrtBackend::new(Path::new("/nonexistent/libonnxruntime.so"), 1)
            .expect_err("missing library");
        assert!(
            matches!(missing, OrtInitError::LibraryNotFound(_)),
            "{missing}"
        );
        assert!(
            missing.to_string().contains("pip install onnxruntime"),
            "{missing}"
        );
        // Another existing file cannot replace the loaded library.
        let other = tempfile::NamedTempFile::new().expect("temp file");
        let err = OrtBackend::new(other.path(), 1).expect_err("other library");
        assert!(
            matches!(err, OrtInitError::OtherLibraryLoaded { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("only one library"), "{err}");
    }

    /// Set in the child process of `a_bad_library_is_an_error_not_a_panic`.
    const BAD_LIBRARY_CHILD: &str = "GLIA_ORT_BAD_LIBRARY_CHILD";

    #[test]
    fn a_bad_library_is_an_error_not_a_panic() {
        // A bad library fixes `ort`'s globals for the rest of the process, so
        // it is tried in a child process running the test below.
        let output = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "nn::ort::tests::bad_library_child",
                "--ignored",
                "--nocapture",
            ])
            .env(BAD_LIBRARY_CHILD, "1")
            .output()
            .expect("child runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}\n{stderr}"
        );
    }

    #[test]
    #[ignore = "run by a_bad_library_is_an_error_not_a_panic in a child process"]
    fn bad_library_child() {
        // Outside the child (say `--include-ignored`), a bad library would
        // break every other test of this process.
        if std::env::var_os(BAD_LIBRARY_CHILD).is_none() {
            eprintln!("skipped: runs only as the child of a_bad_library_is_an_error_not_a_panic");
            return;
        }
        let bogus = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(bogus.path(), b"not a shared library").expect("write");
        let err = OrtBackend::new(bogus.path(), 1).expect_err("bogus library");
        assert!(matches!(err, OrtInitError::Init { .. }), "{err}");
        assert!(
            err.to_string().contains("cannot initialise ONNX Runtime"),
            "{err}"
        );
        // The same answer again, without a second attempt.
        assert_eq!(OrtBackend::new(bogus.path(), 1).expect_err("again"), err);
        // And the real library can no longer be loaded in this process.
        let err = OrtBackend::new(&library(), 1).expect_err("after a bad one");
        assert!(
            matches!(err, OrtInitError::OtherLibraryLoaded { .. }),
            "{err}"
        );
        eprintln!(
            "bad library refused: {}",
            OrtBackend::new(bogus.path(), 1).expect_err("again")
        );
    }

    #[test]
    fn a_run_stops_midway_when_asked() {
        crate::nn::assert_a_run_stops_midway(&backend(), 4000);
    }

    #[test]
    fn digits_io_is_described() {
        let m = digits();
        assert_eq!(m.inputs().len(), 1);
        assert_eq!(m.inputs()[0].name, "pixels");
        assert_eq!(m.inputs()[0].dtype, Some(DType::F32));
        assert_eq!(m.inputs()[0].dims, vec![None, Some(64)]);
        assert_eq!(m.outputs()[0].name, "probabilities");
        assert_eq!(m.outputs()[0].dtype, Some(DType::F32));
        assert_eq!(m.outputs()[0].dims, vec![None, Some(10)]);
    }

    #[test]
    fn digits_match_onnx_runtime_on_every_heldout_sample() {
        let m = digits();
        let heldout: serde_json::Value = serde_json::from_str(HELDOUT).expect("json");
        let samples = heldout["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), 360);
        let started = std::time::Instant::now();
        for (i, s) in samples.iter().enumerate() {
            let pixels: Vec<f32> = s["pixels"]
                .as_array()
                .expect("pixels")
                .iter()
                .map(|p| p.as_f64().expect("number") as f32)
                .collect();
            let out = m
                .run(&[Tensor::from_f32(vec![1, 64], &pixels)])
                .expect("runs");
            let probs = out[0].to_f32().expect("f32 output");
            assert_eq!(out[0].dims, vec![1, 10]);
            let label = probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(ix, _)| ix)
                .expect("ten classes");
            assert_eq!(
                label as u64,
                s["expected"].as_u64().expect("expected"),
                "sample {i}"
            );
            for (p, want) in probs
                .iter()
                .zip(s["probabilities"].as_array().expect("probs"))
            {
                let want = want.as_f64().expect("number") as f32;
                assert!((p - want).abs() < 1e-4, "sample {i}: {p} vs {want}");
            }
        }
        eprintln!(
            "ort: {} digits samples, {:?} per run",
            samples.len(),
            started.elapsed() / samples.len() as u32
        );
    }

    #[test]
    fn batches_run() {
        let m = digits();
        let batch = Tensor::from_f32(vec![3, 64], &[0.0; 3 * 64]);
        let out = m.run(&[batch]).expect("batch of three");
        assert_eq!(out[0].dims, vec![3, 10]);
        let batch = Tensor::from_f32(vec![17, 64], &[1.0; 17 * 64]);
        let out = m.run(&[batch]).expect("batch of seventeen");
        assert_eq!(out[0].dims, vec![17, 10]);
        assert_eq!(out[0].data.len(), 17 * 10 * 4);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let m = digits();
        let wrong_type = Tensor {
            dims: vec![1, 64],
            dtype: DType::I64,
            data: vec![0; 64 * 8],
        };
        assert!(matches!(
            m.run(&[wrong_type]),
            Err(NnError::InvalidArgument(_))
        ));
        let wrong_dims = Tensor::from_f32(vec![1, 63], &[0.0; 63]);
        let err = m.run(&[wrong_dims]).expect_err("wrong dims");
        assert!(err.to_string().contains("[?, 64]"), "{err}");
        let wrong_rank = Tensor::from_f32(vec![64], &[0.0; 64]);
        assert!(matches!(
            m.run(&[wrong_rank]),
            Err(NnError::InvalidArgument(_))
        ));
        assert!(matches!(m.run(&[]), Err(NnError::InvalidArgument(_))));
        let two = Tensor::from_f32(vec![1, 64], &[0.0; 64]);
        assert!(matches!(
            m.run(&[two.clone(), two]),
            Err(NnError::InvalidArgument(_))
        ));
        // Data that does not match the dimensions never reaches ONNX Runtime.
        let short = Tensor {
            dims: vec![1, 64],
            dtype: DType::F32,
            data: vec![0; 10],
        };
        assert!(matches!(m.run(&[short]), Err(NnError::InvalidArgument(_))));
        // An empty batch: ONNX Runtime tensors need every dimension >= 1.
        let empty = Tensor::from_f32(vec![0, 64], &[]);
        assert!(matches!(m.run(&[empty]), Err(NnError::InvalidArgument(_))));
        // The model still works afterwards.
        let ok = m.run(&[Tensor::from_f32(vec![1, 64], &[0.0; 64])]);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn corrupt_models_are_refused() {
        let b = backend();
        for bytes in [&b"not a model"[..], &DIGITS[..DIGITS.len() / 2], &[]] {
            let err = b.load(bytes).err();
            assert!(matches!(err, Some(NnError::InvalidEncoding(_))), "{err:?}");
        }
    }

    #[test]
    fn models_reading_files_through_external_data_are_refused() {
        // A file the model points at, with sixteen known floats in it,
        // relative to the working directory as the attack had it (ONNX
        // Runtime refuses absolute locations itself).
        let dir = tempfile::tempdir_in(".").expect("tempdir");
        let secret = dir
            .path()
            .strip_prefix(std::env::current_dir().expect("cwd"))
            .unwrap_or(dir.path())
            .join("secret");
        let values: Vec<f32> = (0..16u8).map(f32::from).collect();
        let floats: Vec<u8> = values.iter().flat_map(|f| f.to_le_bytes()).collect();
        std::fs::write(&secret, &floats).expect("write");
        let location = secret.to_str().expect("utf-8");
        let model = crate::nn::onnx::build::add_model(16, Some((location, 0)));

        // What ONNX Runtime itself does with it: reads the file (a tensor
        // this large is not touched by the optimizer that would refuse it).
        let leaked = backend()
            .session_model(&model)
            .expect("ONNX Runtime loads it");
        let out = leaked
            .run(&[Tensor::from_f32(vec![16], &[0.0; 16])])
            .expect("runs");
        assert_eq!(out[0].to_f32().expect("f32"), values, "the file's bytes");

        // What the backend does: refuses it, naming no path.
        let err = backend().load(&model).map(|_| ()).expect_err("refused");
        assert!(matches!(err, NnError::InvalidEncoding(_)), "{err:?}");
        assert!(err.to_string().contains("external tensor data"), "{err}");
        assert!(!err.to_string().contains(location), "{err}");
        // The same model with its weights inside loads and runs.
        let inline = backend()
            .load(&crate::nn::onnx::build::add_model(2, None))
            .expect("self-contained");
        let out = inline
            .run(&[Tensor::from_f32(vec![2], &[3.0, 4.0])])
            .expect("runs");
        assert_eq!(out[0].to_f32().expect("f32"), vec![3.0, 4.0]);
    }

    #[test]
    fn one_model_runs_concurrently() {
        let m = digits();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let m = m.clone();
                s.spawn(move || {
                    for _ in 0..50 {
                        let out = m
                            .run(&[Tensor::from_f32(vec![1, 64], &[8.0; 64])])
                            .expect("runs");
                        assert_eq!(out[0].dims, vec![1, 10]);
                    }
                });
            }
        });
    }

    #[test]
    fn concurrent_runs_overlap() {
        const THREADS: usize = 2;
        const RUNS: usize = 3;
        let m = backend()
            .with_max_sessions(THREADS)
            .load_model(&minilm())
            .expect("MiniLM loads");
        // Big enough that one run takes tens of milliseconds.
        let (batch, seq) = (4, 256);
        let inputs = [
            i64_tensor(vec![batch, seq], &vec![2000; batch * seq]),
            i64_tensor(vec![batch, seq], &vec![1; batch * seq]),
        ];
        let one = std::time::Instant::now();
        m.run(&inputs).expect("runs");
        let single = one.elapsed();
        let barrier = std::sync::Barrier::new(THREADS);
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..RUNS {
                        m.run(&inputs).expect("runs");
                    }
                });
            }
        });
        let wall = started.elapsed();
        eprintln!(
            "ort: MiniLM {batch}x{seq} single run {single:?}; \
             {THREADS} threads x {RUNS} runs in {wall:?} ({:?} if serial)",
            single * (THREADS * RUNS) as u32
        );
        // Two sessions were in use at the same time: the runs were inside
        // ONNX Runtime together, not queued behind one another.
        assert_eq!(m.peak_concurrency(), THREADS);
    }

    #[test]
    fn a_capped_pool_queues_runs() {
        let m = backend()
            .with_max_sessions(1)
            .load_model(DIGITS)
            .expect("digits loads");
        assert!(
            m.pool.bytes.is_none(),
            "a single-session pool keeps no bytes"
        );
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20 {
                        m.run(&[Tensor::from_f32(vec![1, 64], &[8.0; 64])])
                            .expect("runs");
                    }
                });
            }
        });
        assert_eq!(m.peak_concurrency(), 1);
        assert_eq!(m.pool.lock().created, 1);
    }

    #[test]
    fn minilm_takes_int64_and_embeds_a_sentence() {
        let m = backend().load(&minilm()).expect("MiniLM loads");
        let names: Vec<&str> = m.inputs().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["input_ids", "attention_mask"]);
        for input in m.inputs() {
            assert_eq!(input.dtype, Some(DType::I64));
            assert_eq!(input.dims, vec![None, None]);
        }
        assert_eq!(m.outputs()[3].name, "461");
        assert_eq!(m.outputs()[3].dims, vec![None, Some(384)]);
        let ids = [101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102];
        let out = m
            .run(&[
                i64_tensor(vec![1, ids.len()], &ids),
                i64_tensor(vec![1, ids.len()], &[1; 9]),
            ])
            .expect("runs");
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].dtype, DType::I64);
        let embedding = &out[3];
        assert_eq!(embedding.dims, vec![1, 384]);
        let values = embedding.to_f32().expect("f32 embedding");
        assert!(values.iter().all(|v| v.is_finite()));
        let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        // Python onnxruntime 1.32.0 gives 3.701722.
        assert!((norm - 3.701722).abs() < 1e-3, "norm {norm}");
        // An f32 where int64 is expected is refused before ONNX Runtime.
        let err = m
            .run(&[
                Tensor::from_f32(vec![1, 2], &[1.0, 2.0]),
                i64_tensor(vec![1, 2], &[1, 1]),
            ])
            .expect_err("wrong type");
        assert!(
            err.to_string().contains("`input_ids`) is i64, got f32"),
            "{err}"
        );
    }

    #[test]
    fn every_dtype_converts_both_ways() {
        // No fixture model takes these types, so check the conversions on
        // their own: bytes -> ort tensor -> bytes must be the identity.
        let cases = [
            (
                DType::F16,
                half::f16::from_f32(1.5).to_bits().to_le_bytes().repeat(6),
            ),
            (
                DType::Bf16,
                half::bf16::from_f32(-2.0).to_bits().to_le_bytes().repeat(6),
            ),
            (DType::F32, 0.25f32.to_le_bytes().repeat(6)),
            (DType::F64, (-8.5f64).to_le_bytes().repeat(6)),
            (DType::U8, vec![7u8; 6]),
            (DType::I32, (-3i32).to_le_bytes().repeat(6)),
            (DType::I64, (1i64 << 40).to_le_bytes().repeat(6)),
        ];
        let _ = backend();
        for (dtype, data) in cases {
            let t = Tensor {
                dims: vec![2, 3],
                dtype,
                data,
            };
            let value = to_ort(&t).expect("to ort");
            let back = from_ort("x", &value).expect("from ort");
            assert_eq!(back, t, "{}", dtype.name());
        }
    }
}
