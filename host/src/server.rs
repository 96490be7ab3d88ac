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

use crate::api::{App, AppState};
use crate::config::{Config, ConfigError};
use crate::nn::models::ModelRegistry;
use crate::nn::tract::TractBackend;
use crate::registry::{
    FsBlobStore, Registry, RegistryError, SettingsPatch, SqliteStore, StoreError,
};
use crate::runtime::{Runtime, RuntimeError};
use crate::scheduler::Scheduler;

/// Metadata key recording that built-in functions were installed once.
const BUILTINS_INSTALLED_KEY: &str = "builtins_installed";

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
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let runtime = Arc::new(Runtime::new(&config.runtime)?);
        let meta = Arc::new(SqliteStore::open(&data_dir.join("glia.db"))?);
        let blobs = Arc::new(FsBlobStore::open(&data_dir, runtime.compatibility_hash())?);
        let models = Arc::new(ModelRegistry::open(
            meta.clone(),
            blobs.clone(),
            Arc::new(TractBackend),
            Duration::from_millis(config.models.idle_timeout_ms),
        )?);
        let registry = Arc::new(Registry::open(
            meta,
            blobs,
            runtime.clone(),
            config.functions.clone(),
            config.runtime.clone(),
        )?);
        let install_builtins = config.server.install_builtins;
        let scheduler = Arc::new(Scheduler::new(registry.clone(), config.scheduler.clone()));
        let state = Arc::new(AppState {
            config,
            runtime,
            registry,
            scheduler,
            models,
        });
        if install_builtins {
            install_builtins_once(&state).await?;
        }
        // Load what min_warm keeps warm, then let the reaper take over.
        state.scheduler.reap().await;
        state.scheduler.spawn_reaper();
        state.models.spawn_reaper(Duration::from_millis(
            state.config.scheduler.reap_interval_ms,
        ));
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
        serve(listener, self.app, grace, shutdown).await
    }
}

/// Installs the models and functions compiled into the binary, once per
/// data directory (deleting them later is respected).
async fn install_builtins_once(state: &AppState) -> Result<(), StartError> {
    let registry = &state.registry;
    let meta = registry.metadata().clone();
    let done = tokio::task::spawn_blocking(move || meta.get_meta(BUILTINS_INSTALLED_KEY))
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))??;
    if done.is_some() {
        return Ok(());
    }
    for model in crate::builtins::BUILTIN_MODELS {
        if state.models.get(model.name).is_none() {
            state
                .models
                .upload(
                    model.name,
                    model.encoding,
                    bytes::Bytes::from_static(model.bytes),
                )
                .await
                .map_err(|e| {
                    RegistryError::Internal(format!("built-in model {}: {e}", model.name))
                })?;
        }
    }
    for builtin in crate::builtins::BUILTINS {
        if registry.get(builtin.name).is_none() {
            let settings =
                SettingsPatch::from_query(builtin.settings).map_err(RegistryError::Settings)?;
            registry
                .deploy(
                    builtin.name,
                    bytes::Bytes::from_static(builtin.wasm),
                    settings,
                )
                .await?;
        }
    }
    let meta = registry.metadata().clone();
    tokio::task::spawn_blocking(move || meta.set_meta(BUILTINS_INSTALLED_KEY, "1"))
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))??;
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
    let builder = auto::Builder::new(TokioExecutor::new());
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
                let conn = builder
                    .serve_connection(TokioIo::new(stream), app.clone())
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
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
