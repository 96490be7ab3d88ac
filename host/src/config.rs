//! Platform configuration: `platform.toml`, environment and flags.
//!
//! Configuration is strict: an unknown key is an error, every section is
//! validated before the server binds its socket, and the server prints a
//! one-screen summary of what it runs with. Every default is a named constant
//! here, and the repository's `platform.toml` spells out the same values (a
//! test keeps the two in step).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::registry::Settings;

/// Default address the server listens on.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Default data directory (metadata, sources and compiled artifacts).
pub const DEFAULT_DATA_DIR: &str = "glia-data";
/// Default largest accepted component upload.
pub const DEFAULT_MAX_UPLOAD_MB: u64 = 64;
/// Default largest accepted model upload.
pub const DEFAULT_MAX_MODEL_MB: u64 = 1024;
/// Default time in-flight requests get to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;
/// Default limit on a request's header names and values, together.
pub const DEFAULT_MAX_HEADER_KB: u64 = 16;
/// Default limit on the number of a request's headers.
pub const DEFAULT_MAX_HEADERS: u32 = 100;
/// Default limit on a request's target (path and query).
pub const DEFAULT_MAX_URI_KB: u64 = 8;
/// Default limit on a request's query string.
pub const DEFAULT_MAX_QUERY_KB: u64 = 4;
/// Default largest request body a function call may send.
pub const DEFAULT_MAX_INVOKE_BODY_MB: u64 = 64;
/// Default time a client gets to send a request's head (and, on a new
/// connection, its first request).
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 30_000;
/// Default bound on upload bytes held in memory at once.
pub const DEFAULT_MAX_BUFFERED_UPLOAD_MB: u64 = 2048;
/// Default number of guest instances that may exist at once.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;
/// Default size of one linear-memory slot in the pooling allocator.
pub const DEFAULT_MAX_MEMORY_MB: u64 = 512;
/// Default largest wasm stack a guest may use.
pub const DEFAULT_MAX_WASM_STACK_KB: u64 = 1024;
/// Default epoch tick: the granularity of timeouts and of guest yields.
pub const DEFAULT_EPOCH_TICK_MS: u64 = 10;
/// Default limit on invocations running at once across all functions.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 1000;
/// Default bound on calls waiting for one function.
pub const DEFAULT_MAX_QUEUE: u32 = 1024;
/// Default time a loaded model stays in memory unused.
pub const DEFAULT_MODEL_IDLE_TIMEOUT_MS: u64 = 600_000;
/// Default memory budget for loaded models.
pub const DEFAULT_MODEL_MEMORY_BUDGET_MB: u64 = 4096;
/// Default memory budget for models loaded on the GPU.
pub const DEFAULT_GPU_MEMORY_BUDGET_MB: u64 = 16384;
/// Default libtorch intra-op threads (the `torch` backend).
pub const DEFAULT_TORCH_THREADS: u32 = 1;
/// Default largest model a guest may pass to `wasi:nn` `load` as bytes.
pub const DEFAULT_MAX_RAW_LOAD_MB: u64 = 16;
/// Default ONNX Runtime intra-op threads per session.
pub const DEFAULT_ORT_THREADS: u32 = 1;
/// Default longest interval between ledger writes in `batched` mode.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 100;
/// Default largest response held back until metered.
pub const DEFAULT_BUFFER_RESPONSE_KB: u64 = 1024;
/// Default price per request: 1 micro-unit (one currency unit per million).
pub const DEFAULT_PRICE_PER_REQUEST: u64 = 1;
/// Default price per GB-second of configured memory.
pub const DEFAULT_PRICE_PER_GB_SECOND: u64 = 17;
/// Default price per second of guest CPU time: 20 micro-units (Cloudflare
/// Workers' price per CPU-millisecond, $0.02 per million).
pub const DEFAULT_PRICE_PER_CPU_SECOND: u64 = 20;
/// Default price per second of CPU inference.
pub const DEFAULT_PRICE_PER_CPU_INFERENCE_SECOND: u64 = 50;
/// Default price per GPU-second.
pub const DEFAULT_PRICE_PER_GPU_SECOND: u64 = 1000;
/// Default interval of the idle reaper.
pub const DEFAULT_REAP_INTERVAL_MS: u64 = 1000;
/// Default `service.name` of exported traces and metrics.
pub const DEFAULT_SERVICE_NAME: &str = "glia";
/// Default longest time a finished span or a metric reading waits before it
/// is sent to the collector.
pub const DEFAULT_EXPORT_INTERVAL_MS: u64 = 5000;
/// Default bound on what one call's stdout and stderr keep together.
pub const DEFAULT_LOG_BYTES_PER_CALL: u64 = 64 * 1024;
/// Default time invocation logs are kept.
pub const DEFAULT_LOG_RETENTION_HOURS: u64 = 72;

/// Everything `platform.toml` can say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub runtime: RuntimeConfig,
    pub scheduler: SchedulerConfig,
    pub models: ModelsConfig,
    pub billing: BillingConfig,
    pub auth: AuthConfig,
    /// The quotas every tenant gets unless it has its own.
    pub quotas: crate::auth::Quotas,
    /// The settings every function gets unless it sets its own.
    pub functions: Settings,
    pub telemetry: TelemetryConfig,
    pub outbound: OutboundConfig,
}

/// `[outbound]`: where functions' outgoing requests may connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Internal address ranges (loopback, private, link-local, ...) that
    /// outgoing requests may reach nonetheless, in CIDR notation
    /// (`10.1.0.0/16`); empty: none.
    pub allowed_ranges: Vec<ipnet::IpNet>,
}

impl OutboundConfig {
    /// The policy every outgoing connection is checked against.
    pub fn policy(&self) -> crate::capabilities::AddressPolicy {
        crate::capabilities::AddressPolicy::new(self.allowed_ranges.clone())
    }
}

/// `[auth]`: API keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require an API key on every route but `/healthz` and public
    /// functions. `false` is single-user development mode: every request
    /// acts as the default tenant's admin (`glia serve --dev`).
    pub enabled: bool,
    /// The admin key, from `GLIA_ADMIN_KEY`; never read from or written to
    /// a file.
    #[serde(skip)]
    pub admin_key: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            admin_key: None,
        }
    }
}

/// `[server]`: the listener and the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_upload_mb: u64,
    /// Largest accepted model upload.
    pub max_model_mb: u64,
    pub shutdown_grace_ms: u64,
    /// Deploy the built-in functions (e.g. `hello`) when a data directory is
    /// initialised for the first time.
    pub install_builtins: bool,
    /// Largest total size of a request's header names and values (431).
    pub max_header_kb: u64,
    /// Most headers a request may have (431).
    pub max_headers: u32,
    /// Longest request target, path and query (414).
    pub max_uri_kb: u64,
    /// Longest query string (414).
    pub max_query_kb: u64,
    /// Largest request body a function call (`/fn/...`) may send (413 when
    /// declared larger; the function sees a body error past it).
    pub max_invoke_body_mb: u64,
    /// Time a client gets to send a request's head, and a new connection
    /// its first request; then the connection is closed.
    pub header_read_timeout_ms: u64,
    /// Bytes of uploads held in memory at once, all uploads together (503
    /// beyond it).
    pub max_buffered_upload_mb: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            max_upload_mb: DEFAULT_MAX_UPLOAD_MB,
            max_model_mb: DEFAULT_MAX_MODEL_MB,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            install_builtins: true,
            max_header_kb: DEFAULT_MAX_HEADER_KB,
            max_headers: DEFAULT_MAX_HEADERS,
            max_uri_kb: DEFAULT_MAX_URI_KB,
            max_query_kb: DEFAULT_MAX_QUERY_KB,
            max_invoke_body_mb: DEFAULT_MAX_INVOKE_BODY_MB,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            max_buffered_upload_mb: DEFAULT_MAX_BUFFERED_UPLOAD_MB,
        }
    }
}

/// `[runtime]`: the wasmtime engine and its pooling allocator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Component instances that can exist at once (pool size).
    pub max_instances: u32,
    /// Size of one linear-memory slot; no function may ask for more.
    pub max_memory_mb: u64,
    pub max_wasm_stack_kb: u64,
    pub epoch_tick_ms: u64,
    /// Threads guests run on, apart from the server's (0: one per core).
    pub guest_threads: u32,
    /// Linear memory all guests together may commit (0: half of the
    /// machine's memory).
    pub guest_memory_budget_mb: u64,
    /// Components compiled at once (0: one per two cores, at least one).
    pub max_compilations: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: DEFAULT_MAX_INSTANCES,
            max_memory_mb: DEFAULT_MAX_MEMORY_MB,
            max_wasm_stack_kb: DEFAULT_MAX_WASM_STACK_KB,
            epoch_tick_ms: DEFAULT_EPOCH_TICK_MS,
            guest_threads: 0,
            guest_memory_budget_mb: 0,
            max_compilations: 0,
        }
    }
}

impl RuntimeConfig {
    /// Components compiled at once.
    pub fn compilations(&self) -> usize {
        match self.max_compilations {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => usize::try_from(n).unwrap_or(1),
        }
    }
}

/// `[scheduler]`: admission and scale to zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Invocations running at once across all functions; beyond it calls
    /// queue, then get 503.
    pub max_in_flight: u32,
    /// Calls that may wait for one function; beyond it calls get 429 at once.
    pub max_queue: u32,
    /// How often idle functions are returned to zero.
    pub reap_interval_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_queue: DEFAULT_MAX_QUEUE,
            reap_interval_ms: DEFAULT_REAP_INTERVAL_MS,
        }
    }
}

impl SchedulerConfig {
    fn validate(&self, runtime: &RuntimeConfig) -> Result<(), ConfigError> {
        if self.max_in_flight == 0 || self.max_in_flight > runtime.max_instances {
            return Err(invalid(
                "scheduler.max_in_flight",
                format!(
                    "must be 1..={} (runtime.max_instances: each call needs an instance)",
                    runtime.max_instances
                ),
            ));
        }
        if self.max_queue > 1_000_000 {
            return Err(invalid("scheduler.max_queue", "must be at most 1000000"));
        }
        if !(10..=60_000).contains(&self.reap_interval_ms) {
            return Err(invalid("scheduler.reap_interval_ms", "must be 10..=60000"));
        }
        Ok(())
    }
}

/// `[models]`: the inference backend and how loaded models are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Which backend runs ONNX models.
    pub backend: OnnxBackendChoice,
    /// The ONNX Runtime library; empty: `ORT_DYLIB_PATH`, the copy fetched
    /// with the build, then the Python environment's `onnxruntime`.
    pub ort_library: PathBuf,
    /// ONNX Runtime intra-op threads per model (0: one per core).
    pub ort_threads: u32,
    /// What a guest asking for a device the platform lacks (`gpu`, `tpu`)
    /// gets: the CPU, or an error.
    pub fallback: FallbackPolicy,
    /// Loaded models, counted at their file size, stay under this; idle ones
    /// are unloaded (least recently used first) to make room.
    pub memory_budget_mb: u64,
    /// The same for models loaded on the GPU (the `torch` backend).
    pub gpu_memory_budget_mb: u64,
    /// The CUDA device `gpu` models run on (the `torch` backend).
    pub cuda_device: u32,
    /// libtorch intra-op threads, for the whole process (0: one per core).
    pub torch_threads: u32,
    /// Largest model a guest may hand to `wasi:nn` `load` as bytes (0: raw
    /// loads are refused).
    pub max_raw_load_mb: u64,
    /// Load every model at start-up instead of on first use.
    pub preload: bool,
    /// A loaded model unused this long is unloaded (its functions may stay
    /// warm; it loads again on next use).
    pub idle_timeout_ms: u64,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            backend: OnnxBackendChoice::Auto,
            ort_library: PathBuf::new(),
            ort_threads: DEFAULT_ORT_THREADS,
            fallback: FallbackPolicy::Cpu,
            memory_budget_mb: DEFAULT_MODEL_MEMORY_BUDGET_MB,
            gpu_memory_budget_mb: DEFAULT_GPU_MEMORY_BUDGET_MB,
            cuda_device: 0,
            torch_threads: DEFAULT_TORCH_THREADS,
            max_raw_load_mb: DEFAULT_MAX_RAW_LOAD_MB,
            preload: false,
            idle_timeout_ms: DEFAULT_MODEL_IDLE_TIMEOUT_MS,
        }
    }
}

impl ModelsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.idle_timeout_ms == 0 {
            return Err(invalid("models.idle_timeout_ms", "must be at least 1"));
        }
        if self.memory_budget_mb == 0 || self.memory_budget_mb > 1024 * 1024 {
            return Err(invalid("models.memory_budget_mb", "must be 1..=1048576"));
        }
        if self.gpu_memory_budget_mb == 0 || self.gpu_memory_budget_mb > 1024 * 1024 {
            return Err(invalid(
                "models.gpu_memory_budget_mb",
                "must be 1..=1048576",
            ));
        }
        if self.cuda_device > 1024 {
            return Err(invalid("models.cuda_device", "must be 0..=1024"));
        }
        if self.torch_threads > 1024 {
            return Err(invalid("models.torch_threads", "must be 0..=1024"));
        }
        if self.max_raw_load_mb > 16 * 1024 {
            return Err(invalid("models.max_raw_load_mb", "must be 0..=16384"));
        }
        if self.ort_threads > 1024 {
            return Err(invalid("models.ort_threads", "must be 0..=1024"));
        }
        Ok(())
    }

    /// The ONNX Runtime library named in the configuration, if any.
    pub fn ort_library(&self) -> Option<&Path> {
        (!self.ort_library.as_os_str().is_empty()).then_some(self.ort_library.as_path())
    }
}

/// `[models] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnnxBackendChoice {
    /// ONNX Runtime when its library is found, else tract.
    Auto,
    /// ONNX Runtime; start-up fails without its library.
    Ort,
    /// tract, pure Rust, built in.
    Tract,
}

/// `[models] fallback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackPolicy {
    /// Run on the CPU and report the device that ran.
    Cpu,
    /// Fail the load with `unsupported-operation`.
    Error,
}

/// `[billing]`: metering, the price plan and the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// Meter every invocation and keep the ledger.
    pub enabled: bool,
    /// When a call's ledger row is written.
    pub durability: Durability,
    /// `batched`: rows are written at least this often.
    pub flush_interval_ms: u64,
    /// Responses up to this size are held until the call is metered, so
    /// they carry their cost in headers; larger ones stream, and their cost
    /// is in the ledger only.
    pub buffer_response_kb: u64,
    /// The currency prices are in (micro-units of it).
    pub currency: std::sync::Arc<str>,
    pub plan: PricePlan,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            durability: Durability::Strict,
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
            buffer_response_kb: DEFAULT_BUFFER_RESPONSE_KB,
            currency: "USD".into(),
            plan: PricePlan::default(),
        }
    }
}

impl BillingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=60_000).contains(&self.flush_interval_ms) {
            return Err(invalid("billing.flush_interval_ms", "must be 1..=60000"));
        }
        if self.buffer_response_kb > 1024 * 1024 {
            return Err(invalid(
                "billing.buffer_response_kb",
                "must be at most 1048576",
            ));
        }
        if self.currency.is_empty()
            || self.currency.len() > 8
            || !self.currency.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(invalid(
                "billing.currency",
                "must be 1 to 8 letters or digits (e.g. USD)",
            ));
        }
        Ok(())
    }
}

/// `[billing] durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A response is released only once its row is on disk.
    Strict,
    /// Rows are written together at least every `flush_interval_ms`; a crash
    /// loses at most that window.
    Batched,
}

/// `[billing.plan]`: prices in micro-units of the currency (integers; no
/// floating point touches money). Every price is optional (0). Durations
/// are billed in whole milliseconds, rounded up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricePlan {
    /// Stamped on every record priced under this plan; change it with the
    /// prices.
    pub version: u32,
    /// Per invocation.
    pub per_request: u64,
    /// Per GB-second of configured memory (`memory_mb` × billed duration).
    pub per_gb_second: u64,
    /// Per second of guest CPU time: the time spent executing the guest's
    /// code (measured in microseconds, not rounded per call).
    pub per_cpu_second: u64,
    /// Per second of inference on the CPU.
    pub per_cpu_inference_second: u64,
    /// Per second of inference on a GPU.
    pub per_gpu_second: u64,
    /// Per call that had to load its function first.
    pub per_cold_start: u64,
    /// Per model load a call triggered.
    pub per_model_load: u64,
}

impl Default for PricePlan {
    fn default() -> Self {
        Self {
            version: 1,
            per_request: DEFAULT_PRICE_PER_REQUEST,
            per_gb_second: DEFAULT_PRICE_PER_GB_SECOND,
            per_cpu_second: DEFAULT_PRICE_PER_CPU_SECOND,
            per_cpu_inference_second: DEFAULT_PRICE_PER_CPU_INFERENCE_SECOND,
            per_gpu_second: DEFAULT_PRICE_PER_GPU_SECOND,
            per_cold_start: 0,
            per_model_load: 0,
        }
    }
}

/// A configuration that cannot be used, with the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Config {
    /// Parses a TOML document strictly (unknown keys are errors).
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks every section; called before the socket is bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.runtime.validate()?;
        self.scheduler.validate(&self.runtime)?;
        self.models.validate()?;
        self.billing.validate()?;
        self.telemetry.validate()?;
        self.functions
            .validate(&self.runtime)
            .map_err(|reason| invalid("functions", reason))?;
        let policy = self.outbound.policy();
        for pattern in &self.functions.allowed_hosts {
            policy
                .check_pattern(pattern)
                .map_err(|e| invalid("functions.allowed_hosts", e.to_string()))?;
        }
        Ok(())
    }

    /// A one-screen, human summary printed at start-up.
    pub fn summary(&self) -> String {
        let s = &self.server;
        let r = &self.runtime;
        let f = &self.functions;
        let q = &self.scheduler;
        format!(
            "glia {version}\n\
             \x20 listen            http://{listen} (HTTP/1.1 and h2c)\n\
             \x20 data dir          {data}\n\
             \x20 max upload        {upload} MiB (models {model_mb} MiB)\n\
             \x20 shutdown grace    {grace} ms\n\
             \x20 request limits    target {uri} KiB (query {query} KiB), headers {hkb} KiB / {hn}, call body {body} MiB, head within {hto} ms\n\
             \x20 instance pool     {inst} instances, {mem} MiB memory slots, {stack} KiB wasm stack\n\
             \x20 epoch tick        {tick} ms\n\
             \x20 admission         {in_flight} in flight, {queue} queued per function\n\
             \x20 function defaults timeout {timeout} ms, memory {fmem} MiB, concurrency {conc}, queue wait {qwait} ms\n\
             \x20 scale to zero     after {idle} ms idle (min_warm {min_warm}), reaper every {reap} ms\n\
             \x20 models            onnx on {backend}{torch}, {budget} MiB budget (gpu {gpu_budget} MiB), gpu/tpu fall back to {fallback}, unloaded after {model_idle} ms unused\n\
             \x20 auth              {auth}\n\
             \x20 tenant quotas     {rps} requests/s, {tconc} concurrent, {funcs} functions, {models} models, {stored} MiB stored, spend cap {cap}\n\
             \x20 telemetry         {telemetry}\n\
             \x20 guest capabilities no preopened dirs, no sockets; by default {envs} env vars, outgoing HTTP to {hosts} hosts, internal addresses {internal}",
            auth = if self.auth.enabled {
                "API keys required (Authorization: Bearer KEY)"
            } else {
                "OFF: single-user development mode, every request is the admin"
            },
            rps = unlimited(u64::from(self.quotas.requests_per_second)),
            tconc = unlimited(u64::from(self.quotas.max_concurrency)),
            funcs = unlimited(u64::from(self.quotas.max_functions)),
            models = unlimited(u64::from(self.quotas.max_models)),
            stored = unlimited(self.quotas.max_stored_mb),
            cap = unlimited(self.quotas.monthly_spend_cap),
            version = env!("CARGO_PKG_VERSION"),
            listen = s.listen,
            data = s.data_dir.display(),
            upload = s.max_upload_mb,
            model_mb = s.max_model_mb,
            grace = s.shutdown_grace_ms,
            uri = s.max_uri_kb,
            query = s.max_query_kb,
            hkb = s.max_header_kb,
            hn = s.max_headers,
            body = s.max_invoke_body_mb,
            hto = s.header_read_timeout_ms,
            envs = f.env.len(),
            hosts = f.allowed_hosts.len(),
            internal = if self.outbound.allowed_ranges.is_empty() {
                "refused".to_string()
            } else {
                let ranges: Vec<String> = self
                    .outbound
                    .allowed_ranges
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                format!("refused but {}", ranges.join(", "))
            },
            inst = r.max_instances,
            mem = r.max_memory_mb,
            stack = r.max_wasm_stack_kb,
            tick = r.epoch_tick_ms,
            timeout = f.timeout_ms,
            fmem = f.memory_mb,
            conc = f.max_concurrency,
            qwait = f.queue_timeout_ms,
            in_flight = q.max_in_flight,
            queue = q.max_queue,
            idle = f.idle_timeout_ms,
            min_warm = f.min_warm,
            reap = q.reap_interval_ms,
            model_idle = self.models.idle_timeout_ms,
            backend = match self.models.backend {
                OnnxBackendChoice::Auto => "auto (ONNX Runtime when found, else tract)",
                OnnxBackendChoice::Ort => "ort",
                OnnxBackendChoice::Tract => "tract",
            },
            budget = self.models.memory_budget_mb,
            gpu_budget = self.models.gpu_memory_budget_mb,
            torch = if cfg!(feature = "torch") {
                ", pytorch on libtorch"
            } else {
                ""
            },
            fallback = match self.models.fallback {
                FallbackPolicy::Cpu => "cpu",
                FallbackPolicy::Error => "an error",
            },
            telemetry = self.telemetry.summary(),
        )
    }
}

/// `n`, or `unlimited` for 0.
fn unlimited(n: u64) -> String {
    if n == 0 {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_upload_mb == 0 || self.max_upload_mb > 1024 {
            return Err(invalid("server.max_upload_mb", "must be 1..=1024"));
        }
        if self.max_model_mb == 0 || self.max_model_mb > 16 * 1024 {
            return Err(invalid("server.max_model_mb", "must be 1..=16384"));
        }
        if self.max_buffered_upload_mb < self.max_upload_mb.max(self.max_model_mb)
            || self.max_buffered_upload_mb > 1024 * 1024
        {
            return Err(invalid(
                "server.max_buffered_upload_mb",
                "must be at least max_upload_mb and max_model_mb (one upload of each size must fit), at most 1048576",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("server.data_dir", "must not be empty"));
        }
        if !(1..=1024).contains(&self.max_header_kb) {
            return Err(invalid("server.max_header_kb", "must be 1..=1024"));
        }
        if !(1..=10_000).contains(&self.max_headers) {
            return Err(invalid("server.max_headers", "must be 1..=10000"));
        }
        // hyper refuses targets over 64 KiB itself, without problem+json.
        if !(1..=32).contains(&self.max_uri_kb) {
            return Err(invalid("server.max_uri_kb", "must be 1..=32"));
        }
        if !(1..=self.max_uri_kb).contains(&self.max_query_kb) {
            return Err(invalid(
                "server.max_query_kb",
                "must be 1..=server.max_uri_kb",
            ));
        }
        if !(1..=16 * 1024).contains(&self.max_invoke_body_mb) {
            return Err(invalid("server.max_invoke_body_mb", "must be 1..=16384"));
        }
        if !(10..=600_000).contains(&self.header_read_timeout_ms) {
            return Err(invalid(
                "server.header_read_timeout_ms",
                "must be 10..=600000",
            ));
        }
        Ok(())
    }

    /// Largest accepted upload in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_mb.saturating_mul(1024 * 1024)
    }

    /// Largest accepted model upload in bytes.
    pub fn max_model_bytes(&self) -> u64 {
        self.max_model_mb.saturating_mul(1024 * 1024)
    }

    /// Largest total size of a request's header names and values, in bytes.
    pub fn max_header_bytes(&self) -> usize {
        kib(self.max_header_kb)
    }

    /// Longest request target, in bytes.
    pub fn max_uri_bytes(&self) -> usize {
        kib(self.max_uri_kb)
    }

    /// Longest query string, in bytes.
    pub fn max_query_bytes(&self) -> usize {
        kib(self.max_query_kb)
    }

    /// Largest body a function call may send, in bytes.
    pub fn max_invoke_body_bytes(&self) -> u64 {
        self.max_invoke_body_mb.saturating_mul(1024 * 1024)
    }
}

fn kib(n: u64) -> usize {
    usize::try_from(n.saturating_mul(1024)).unwrap_or(usize::MAX)
}

impl RuntimeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_instances == 0 || self.max_instances > 100_000 {
            return Err(invalid("runtime.max_instances", "must be 1..=100000"));
        }
        if self.max_memory_mb == 0 || self.max_memory_mb > 4096 {
            return Err(invalid("runtime.max_memory_mb", "must be 1..=4096"));
        }
        if !(64..=64 * 1024).contains(&self.max_wasm_stack_kb) {
            return Err(invalid("runtime.max_wasm_stack_kb", "must be 64..=65536"));
        }
        if !(1..=1000).contains(&self.epoch_tick_ms) {
            return Err(invalid("runtime.epoch_tick_ms", "must be 1..=1000"));
        }
        if self.guest_threads > 1024 {
            return Err(invalid("runtime.guest_threads", "must be 0..=1024"));
        }
        if self.guest_memory_budget_mb > 16 * 1024 * 1024 {
            return Err(invalid(
                "runtime.guest_memory_budget_mb",
                "must be 0..=16777216",
            ));
        }
        if self.guest_memory_budget_mb != 0
            && self.guest_memory_budget_mb < self.max_memory_mb.min(64)
        {
            return Err(invalid(
                "runtime.guest_memory_budget_mb",
                "must be 0 (half of the machine's memory) or at least 64",
            ));
        }
        if self.max_compilations > 1024 {
            return Err(invalid("runtime.max_compilations", "must be 0..=1024"));
        }
        Ok(())
    }
}

/// `[telemetry]`: traces and metrics over OTLP, host log lines, and the
/// logs kept for each invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP (protobuf) collector, e.g.
    /// `http://127.0.0.1:4318`: spans go to `/v1/traces`, metrics to
    /// `/v1/metrics`. Empty: the standard `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` variables; nothing is exported
    /// when they are unset too.
    pub otlp_endpoint: String,
    /// `service.name` of everything exported.
    pub service_name: String,
    /// Finished spans and metric readings are sent at least this often.
    pub export_interval_ms: u64,
    /// Host log lines on stderr: `human` or `json`.
    pub log_format: LogFormat,
    /// What each invocation's stdout and stderr keep.
    pub logs: InvocationLogsConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: DEFAULT_SERVICE_NAME.to_string(),
            export_interval_ms: DEFAULT_EXPORT_INTERVAL_MS,
            log_format: LogFormat::Human,
            logs: InvocationLogsConfig::default(),
        }
    }
}

/// `[telemetry] log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event, with the span context (the invocation
    /// id of the call it is about).
    Human,
    /// One JSON object per line, with the same fields.
    Json,
}

/// `[telemetry.logs]`: invocation logs (a guest's stdout and stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvocationLogsConfig {
    /// Capture and keep what guests write to stdout and stderr; off, their
    /// output is discarded.
    pub enabled: bool,
    /// What one call keeps of its stdout and stderr together; the rest is
    /// dropped and the log ends with a truncation marker.
    pub max_bytes_per_call: u64,
    /// Logs older than this are deleted.
    pub retention_hours: u64,
}

impl Default for InvocationLogsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes_per_call: DEFAULT_LOG_BYTES_PER_CALL,
            retention_hours: DEFAULT_LOG_RETENTION_HOURS,
        }
    }
}

/// The standard variables naming OTLP endpoints.
const OTEL_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const OTEL_TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const OTEL_METRICS_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
const OTEL_SDK_DISABLED_VAR: &str = "OTEL_SDK_DISABLED";

/// Where spans and metrics are sent; `None`: not exported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OtlpEndpoints {
    pub traces: Option<String>,
    pub metrics: Option<String>,
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.otlp_endpoint.is_empty() {
            check_otlp_url(&self.otlp_endpoint)
                .map_err(|reason| invalid("telemetry.otlp_endpoint", reason))?;
        }
        if self.service_name.is_empty() || self.service_name.len() > 255 {
            return Err(invalid(
                "telemetry.service_name",
                "must be 1 to 255 characters",
            ));
        }
        if !(100..=600_000).contains(&self.export_interval_ms) {
            return Err(invalid(
                "telemetry.export_interval_ms",
                "must be 100..=600000",
            ));
        }
        if !(1..=16 * 1024 * 1024).contains(&self.logs.max_bytes_per_call) {
            return Err(invalid(
                "telemetry.logs.max_bytes_per_call",
                "must be 1..=16777216",
            ));
        }
        if !(1..=24 * 366).contains(&self.logs.retention_hours) {
            return Err(invalid(
                "telemetry.logs.retention_hours",
                "must be 1..=8784",
            ));
        }
        Ok(())
    }

    /// The OTLP endpoints: `otlp_endpoint` when set, else the standard
    /// environment variables (`OTEL_SDK_DISABLED=true` turns both off).
    pub fn otlp_endpoints(&self) -> OtlpEndpoints {
        self.otlp_endpoints_from(|name| std::env::var(name).ok())
    }

    /// [`Self::otlp_endpoints`] with the environment given.
    pub fn otlp_endpoints_from(&self, env: impl Fn(&str) -> Option<String>) -> OtlpEndpoints {
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if var(OTEL_SDK_DISABLED_VAR).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return OtlpEndpoints::default();
        }
        let signal = |path: &str| format!("{}/{path}", self.otlp_endpoint.trim_end_matches('/'));
        if !self.otlp_endpoint.is_empty() {
            return OtlpEndpoints {
                traces: Some(signal("v1/traces")),
                metrics: Some(signal("v1/metrics")),
            };
        }
        let base = var(OTEL_ENDPOINT_VAR);
        let from_base = |path: &str| {
            base.as_ref()
                .map(|b| format!("{}/{path}", b.trim_end_matches('/')))
        };
        OtlpEndpoints {
            traces: var(OTEL_TRACES_ENDPOINT_VAR).or_else(|| from_base("v1/traces")),
            metrics: var(OTEL_METRICS_ENDPOINT_VAR).or_else(|| from_base("v1/metrics")),
        }
    }

    fn summary(&self) -> String {
        let endpoints = self.otlp_endpoints();
        let otlp = match (&endpoints.traces, &endpoints.metrics) {
            (None, None) => "no OTLP export".to_string(),
            (traces, metrics) => format!(
                "OTLP traces to {}, metrics to {}",
                traces.as_deref().unwrap_or("(off)"),
                metrics.as_deref().unwrap_or("(off)")
            ),
        };
        let logs = if self.logs.enabled {
            format!(
                "guest output kept {} h, {} KiB per call",
                self.logs.retention_hours,
                self.logs.max_bytes_per_call / 1024
            )
        } else {
            "guest output discarded".to_string()
        };
        let format = match self.log_format {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        };
        format!("{otlp}; /metrics; {format} logs; {logs}")
    }
}

/// Checks an OTLP/HTTP URL: `http://host[:port][/path]`. (This build has no
/// TLS client; a collector on the same host or network is reached over
/// plain HTTP.)
pub fn check_otlp_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{url}`: this build exports over plain HTTP only (no TLS client); \
                 point it at a local collector, e.g. http://127.0.0.1:4318"
            ));
        }
        _ => return Err(format!("`{url}` must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_platform_toml_matches_the_named_defaults() {
        let text = include_str!("../../platform.toml");
        let parsed = Config::from_toml(text, Path::new("platform.toml")).expect("parses");
        assert_eq!(parsed, Config::default());
        parsed.validate().expect("defaults are valid");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::from_toml("[server]\nlisten_on = \"x\"\n", Path::new("t.toml"))
            .expect_err("unknown key");
        assert!(err.to_string().contains("listen_on"), "{err}");
        let err = Config::from_toml("[nope]\n", Path::new("t.toml")).expect_err("unknown table");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let mut c = Config::default();
        c.functions.memory_mb = c.runtime.max_memory_mb + 1;
        let err = c.validate().expect_err("memory above the pool slot");
        assert!(err.to_string().contains("memory_mb"), "{err}");
        let mut c = Config::default();
        c.runtime.epoch_tick_ms = 0;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.models.memory_budget_mb = 0;
        let err = c.validate().expect_err("no model memory");
        assert!(err.to_string().contains("models.memory_budget_mb"), "{err}");
    }

    #[test]
    fn models_section_parses_its_choices() {
        let c = Config::from_toml(
            "[models]\nbackend = \"ort\"\nfallback = \"error\"\nort_library = \"/x/libonnxruntime.so\"\n",
            Path::new("t.toml"),
        )
        .expect("parses");
        assert_eq!(c.models.backend, OnnxBackendChoice::Ort);
        assert_eq!(c.models.fallback, FallbackPolicy::Error);
        assert_eq!(
            c.models.ort_library(),
            Some(Path::new("/x/libonnxruntime.so"))
        );
        assert_eq!(Config::default().models.ort_library(), None);
        let err = Config::from_toml("[models]\nbackend = \"cuda\"\n", Path::new("t.toml"))
            .expect_err("unknown backend");
        assert!(err.to_string().contains("cuda"), "{err}");
    }

    #[test]
    fn telemetry_section_parses_and_validates() {
        let c = Config::from_toml(
            "[telemetry]\notlp_endpoint = \"http://collector:4318/\"\nlog_format = \"json\"\n\
             [telemetry.logs]\nmax_bytes_per_call = 100\nretention_hours = 1\n",
            Path::new("t.toml"),
        )
        .expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.telemetry.log_format, LogFormat::Json);
        assert_eq!(c.telemetry.logs.max_bytes_per_call, 100);
        let none = |_: &str| None;
        assert_eq!(
            c.telemetry.otlp_endpoints_from(none),
            OtlpEndpoints {
                traces: Some("http://collector:4318/v1/traces".into()),
                metrics: Some("http://collector:4318/v1/metrics".into()),
            }
        );
        let err = Config::from_toml("[telemetry.logs]\nkeep = 1\n", Path::new("t.toml"))
            .expect_err("unknown key");
        assert!(err.to_string().contains("keep"), "{err}");
        let mut c = Config::default();
        c.telemetry.otlp_endpoint = "https://collector:4318".into();
        let err = c.validate().expect_err("no TLS");
        assert!(err.to_string().contains("telemetry.otlp_endpoint"), "{err}");
        let mut c = Config::default();
        c.telemetry.logs.max_bytes_per_call = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn otlp_endpoints_follow_the_standard_variables() {
        let c = TelemetryConfig::default();
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_string())
            }
        };
        assert_eq!(c.otlp_endpoints_from(env(&[])), OtlpEndpoints::default());
        assert_eq!(
            c.otlp_endpoints_from(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318")])),
            OtlpEndpoints {
                traces: Some("http://otel:4318/v1/traces".into()),
                metrics: Some("http://otel:4318/v1/metrics".into()),
            }
        );
        assert_eq!(
            c.otlp_endpoints_from(env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://otel:4318/custom"
            )])),
            OtlpEndpoints {
                traces: Some("http://otel:4318/custom".into()),
                metrics: None,
            }
        );
        assert_eq!(
            c.otlp_endpoints_from(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ])),
            OtlpEndpoints::default()
        );
    }
}
