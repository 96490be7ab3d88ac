//! Building the platform from its configuration, and serving it.
//!
//! [`Platform::open`] validates the configuration and opens the data
//! directory before anything listens; [`serve`] takes a bound listener and a
//! shutdown future, so a test binds `127.0.0.1:0` and owns shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::api::limits::FirstRequest;
use crate::api::{App, AppState};
use crate::config::{Config, ConfigError, ModelsConfig, OnnxBackendChoice};
use crate::nn::Backend;
use crate::nn::models::{ModelPolicy, ModelRegistry};
use crate::nn::ort::OrtBackend;
use crate::nn::tract::TractBackend;
use crate::registry::{
    DEFAULT_TENANT, FsBlobStore, Registry, RegistryError, SettingsPatch, SqliteStore, StoreError,
};
use crate::runtime::{Runtime, RuntimeError};
use crate::scheduler::Scheduler;

/// Metadata key prefix recording that a built-in was installed once (so
/// deleting it later is respected).
const BUILTIN_INSTALLED_PREFIX: &str = "builtin_installed:";

/// Why the platform could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("models: {0}")]
    Backend(String),
    #[error("billing ledger: {0}")]
    Billing(String),
    #[error("auth: {0}")]
    Auth(String),
    #[error("invocation logs: {0}")]
    Logs(String),
    #[error("telemetry: {0}")]
    Telemetry(String),
}

/// The platform, opened and ready to serve.
pub struct Platform {
    app: App,
}

impl Platform {
    /// Validates `config`, opens the data directory, builds the engine, and
    /// installs the built-in functions on a fresh data directory.
    pub async fn open(config: Config) -> Result<Self, StartError> {
        config.validate()?;
        let data_dir = config.server.data_dir.clone();
        let private = |path: std::path::PathBuf| {
            crate::datadir::private_file(&path)
                .map(|()| path.clone())
                .map_err(|source| StartError::DataDir { path, source })
        };
        crate::datadir::prepare(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let runtime = Arc::new(Runtime::new(&config.runtime, config.outbound.policy())?);
        let meta = Arc::new(SqliteStore::open(&private(data_dir.join("glia.db"))?)?);
        let meta_for_auth: Arc<dyn crate::auth::AuthStore> = meta.clone();
        let blobs = Arc::new(FsBlobStore::open(&data_dir, runtime.compatibility_hash())?);
        let models = Arc::new(ModelRegistry::open(
            meta.clone(),
            blobs.clone(),
            backends(&config.models)?,
            ModelPolicy {
                idle_timeout: Duration::from_millis(config.models.idle_timeout_ms),
                budget_bytes: config.models.memory_budget_mb.saturating_mul(1024 * 1024),
                gpu_budget_bytes: config
                    .models
                    .gpu_memory_budget_mb
                    .saturating_mul(1024 * 1024),
                fallback: config.models.fallback,
            },
        )?);
        let registry = Arc::new(Registry::open(
            meta,
            blobs,
            runtime.clone(),
            config.functions.clone(),
            config.runtime.clone(),
            config.outbound.policy(),
        )?);
        let billing = if config.billing.enabled {
            let strict = config.billing.durability == crate::config::Durability::Strict;
            let ledger =
                crate::billing::SqliteLedger::open(&private(data_dir.join("ledger.db"))?, strict)
                    .map_err(|e| StartError::Billing(e.to_string()))?;
            Some(Arc::new(
                crate::billing::LedgerWriter::start(
                    Arc::new(ledger),
                    config.billing.durability,
                    Duration::from_millis(config.billing.flush_interval_ms),
                )
                .map_err(|e| StartError::Billing(e.to_string()))?,
            ))
        } else {
            None
        };
        let (auth, bootstrap) = crate::auth::Auth::open(
            meta_for_auth,
            &config.auth,
            config.quotas.clone(),
            &data_dir,
        )
        .map_err(|e| StartError::Auth(e.to_string()))?;
        if let Some((key, path)) = &bootstrap.generated_admin_key {
            // Shown once; the file keeps it for the CLI on this machine.
            eprintln!(
                "admin API key (shown once; also in {}):\n  {key}",
                path.display()
            );
        }
        let logs = if config.telemetry.logs.enabled {
            Some(
                crate::logs::LogStore::open(
                    &private(data_dir.join("logs.db"))?,
                    usize::try_from(config.telemetry.logs.max_bytes_per_call).unwrap_or(usize::MAX),
                    config.telemetry.logs.retention_hours,
                )
                .map_err(|e| StartError::Logs(e.to_string()))?,
            )
        } else {
            None
        };
        let telemetry = Arc::new(crate::telemetry::Telemetry::new(logs));
        let install_builtins = config.server.install_builtins;
        let config_uploads = config.server.max_buffered_upload_mb;
        let scheduler = Arc::new(Scheduler::new(registry.clone(), config.scheduler.clone()));
        let state = Arc::new(AppState {
            config,
            runtime,
            registry,
            scheduler,
            models,
            billing,
            auth: Arc::new(auth),
            telemetry,
            uploads: crate::api::limits::UploadBudget::new(
                config_uploads.saturating_mul(1024 * 1024),
            ),
        });
        if install_builtins {
            install_builtins_once(&state).await?;
        }
        if state.config.models.preload {
            let models = state.models.clone();
            tokio::spawn(async move { models.preload().await });
        }
        // Load what min_warm keeps warm, then let the reaper take over.
        state.scheduler.reap().await;
        state.scheduler.spawn_reaper();
        state.models.spawn_reaper(Duration::from_millis(
            state.config.scheduler.reap_interval_ms,
        ));
        if let Some(endpoint) = state.config.telemetry.otlp_endpoints().metrics {
            crate::config::check_otlp_url(&endpoint)
                .map_err(|reason| StartError::Telemetry(format!("metrics endpoint: {reason}")))?;
            let client = crate::telemetry::otlp_metrics::client()
                .map_err(|e| StartError::Telemetry(e.to_string()))?;
            crate::telemetry::otlp_metrics::spawn(
                Arc::downgrade(&state),
                client,
                endpoint,
                Duration::from_millis(state.config.telemetry.export_interval_ms),
            );
        }
        Ok(Self {
            app: App::new(state),
        })
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    pub fn state(&self) -> &Arc<AppState> {
        self.app.state()
    }

    /// Serves on `listener` until `shutdown` resolves, then lets in-flight
    /// requests finish for up to the configured grace period.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let grace = Duration::from_millis(self.state().config.server.shutdown_grace_ms);
        let state = self.state().clone();
        let billing = state.billing.clone();
        let served = serve(listener, self.app, grace, shutdown).await;
        // Every drained call's record reaches the ledger before returning.
        if let Some(billing) = billing
            && let Err(e) = billing.flush().await
        {
            tracing::error!(error = %e, "flushing the ledger at shutdown failed");
        }
        // And the metrics' last reading reaches the collector.
        if let Some(endpoint) = state.config.telemetry.otlp_endpoints().metrics
            && let Ok(client) = crate::telemetry::otlp_metrics::client()
            && let Err(e) = crate::telemetry::otlp_metrics::export(&client, &endpoint, &state).await
        {
            tracing::warn!(error = %e, "the last metrics export failed");
        }
        if let Some(logs) = state.telemetry.logs.clone() {
            let _ = tokio::task::spawn_blocking(move || logs.flush()).await;
        }
        served
    }
}

/// The model backends, one per encoding: ONNX first, then PyTorch when
/// glia is built with the `torch` feature.
fn backends(config: &ModelsConfig) -> Result<Vec<Arc<dyn Backend>>, StartError> {
    #[allow(unused_mut, reason = "the torch backend is a cargo feature")]
    let mut backends = vec![onnx_backend(config)?];
    #[cfg(feature = "torch")]
    backends.push(torch_backend(config));
    Ok(backends)
}

/// The libtorch backend; says where `gpu` models will run.
#[cfg(feature = "torch")]
fn torch_backend(config: &ModelsConfig) -> Arc<dyn Backend> {
    let threads = usize::try_from(config.torch_threads).unwrap_or(1);
    let torch = crate::nn::torch::TorchBackend::new(
        usize::try_from(config.cuda_device).unwrap_or(0),
        threads,
    );
    match torch.cuda_device() {
        Some(device) => tracing::info!(
            libtorch = crate::nn::torch::LIBTORCH_VERSION,
            cuda_device = device,
            cuda_devices = torch.cuda_devices(),
            threads,
            "PyTorch models run on libtorch; target gpu runs on CUDA device cuda:{device}"
        ),
        None => tracing::info!(
            libtorch = crate::nn::torch::LIBTORCH_VERSION,
            cuda_devices = torch.cuda_devices(),
            threads,
            "PyTorch models run on libtorch; no CUDA device {}, so target gpu follows models.fallback",
            config.cuda_device
        ),
    }
    Arc::new(torch)
}

/// The backend that runs ONNX models, as `[models] backend` says.
fn onnx_backend(config: &ModelsConfig) -> Result<Arc<dyn Backend>, StartError> {
    let tract = || {
        tracing::info!("ONNX models run on tract");
        Ok(Arc::new(TractBackend) as Arc<dyn Backend>)
    };
    if config.backend == OnnxBackendChoice::Tract {
        return tract();
    }
    if let Some(path) = config.ort_library()
        && !path.is_file()
    {
        return Err(StartError::Backend(format!(
            "models.ort_library {} is not a file",
            path.display()
        )));
    }
    let Some(library) = crate::nn::ort::find_library(config.ort_library()) else {
        if config.backend == OnnxBackendChoice::Ort {
            return Err(StartError::Backend(
                "models.backend is \"ort\" but no ONNX Runtime library was found: \
                 `pip install onnxruntime==1.32.0`, or set models.ort_library or ORT_DYLIB_PATH"
                    .into(),
            ));
        }
        tracing::info!("no ONNX Runtime library found; `pip install onnxruntime` to use it");
        return tract();
    };
    let threads = usize::try_from(config.ort_threads).unwrap_or(1);
    match OrtBackend::new(&library, threads) {
        Ok(ort) => {
            tracing::info!(library = %library.display(), threads, "ONNX models run on ONNX Runtime");
            Ok(Arc::new(ort))
        }
        Err(e) if config.backend == OnnxBackendChoice::Ort => Err(StartError::Backend(format!(
            "ONNX Runtime at {}: {e}",
            library.display()
        ))),
        Err(e) => {
            tracing::warn!(library = %library.display(), error = %e, "ONNX Runtime unusable; using tract");
            tract()
        }
    }
}

/// Installs the models and functions that come with the binary, each once
/// per data directory (deleting one later is respected). A function whose
/// models are not available (pretrained models fetched with the build) is
/// left for a later start.
async fn install_builtins_once(state: &AppState) -> Result<(), StartError> {
    let registry = &state.registry;
    let installed = |key: String| {
        let meta = registry.metadata().clone();
        async move {
            tokio::task::spawn_blocking(move || meta.get_meta(&key))
                .await
                .map_err(|e| RegistryError::Internal(e.to_string()))?
                .map(|v| v.is_some())
                .map_err(RegistryError::from)
        }
    };
    let mark = |key: String| {
        let meta = registry.metadata().clone();
        async move {
            tokio::task::spawn_blocking(move || meta.set_meta(&key, "1"))
                .await
                .map_err(|e| RegistryError::Internal(e.to_string()))?
                .map_err(RegistryError::from)
        }
    };
    for model in crate::builtins::BUILTIN_MODELS {
        let key = format!("{BUILTIN_INSTALLED_PREFIX}model:{}", model.name);
        if installed(key.clone()).await? {
            continue;
        }
        let Some(bytes) = model.bytes() else {
            tracing::info!(
                model = model.name,
                "built-in model not available (fetched with the build from PyPI)"
            );
            continue;
        };
        if state.models.get(DEFAULT_TENANT, model.name).is_none() {
            // The platform installs its built-ins: nobody is billed.
            let mut unbilled = crate::registry::UploadUsage::default();
            state
                .models
                .upload(
                    DEFAULT_TENANT,
                    model.name,
                    model.encoding,
                    bytes,
                    &mut unbilled,
                )
                .await
                .map_err(|e| {
                    RegistryError::Internal(format!("built-in model {}: {e}", model.name))
                })?;
        }
        mark(key).await?;
    }
    for builtin in crate::builtins::BUILTINS {
        let key = format!("{BUILTIN_INSTALLED_PREFIX}function:{}", builtin.name);
        if installed(key.clone()).await? {
            continue;
        }
        let settings =
            SettingsPatch::from_query(builtin.settings).map_err(RegistryError::Settings)?;
        if let Some(missing) = settings
            .models
            .iter()
            .flatten()
            .flatten()
            .find(|m| state.models.get(DEFAULT_TENANT, m).is_none())
        {
            tracing::info!(function = builtin.name, model = %missing, "built-in function left out: its model is not available");
            continue;
        }
        if registry.get(DEFAULT_TENANT, builtin.name).is_none() {
            // The platform installs its built-ins: nobody is billed.
            let mut unbilled = crate::registry::UploadUsage::default();
            registry
                .deploy(
                    DEFAULT_TENANT,
                    builtin.name,
                    bytes::Bytes::from_static(builtin.wasm),
                    settings,
                    &mut unbilled,
                )
                .await?;
        }
        mark(key).await?;
    }
    Ok(())
}

/// Accepts HTTP/1.1 and h2c connections on `listener` and serves `app` on
/// them until `shutdown` resolves; then stops accepting and waits up to
/// `grace` for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: App,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let server_config = &app.state().config.server;
    crate::api::limits::configure(&mut builder, server_config);
    let first_request = Duration::from_millis(server_config.header_read_timeout_ms);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = FirstRequest::new(app.clone());
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service.clone())
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Some(Err(e)) = service.within(first_request, conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "grace period over; closing remaining connections"
        ),
    }
    Ok(())
}
