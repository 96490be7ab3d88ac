//! Models: uploads validated by loading them, content-addressed and
//! versioned like functions, and loaded once per process.
//!
//! The registry keeps an index of every model in memory and one loaded
//! model per digest, shared by every caller; a model loads lazily on first
//! use after a restart, and an upload leaves the model it validated loaded.
//! Models keep warm on their own policy, independent of the functions that
//! use them: a loaded model unused for `[models] idle_timeout_ms` is
//! unloaded by the reaper (calls already holding it finish on it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{Backend, LoadedModel, NnError, Timed};
use crate::registry::{
    BlobStore, MetadataStore, ModelRecord, ModelVersionRecord, StoreError, UploadError, check_name,
    now_ms,
};

/// Model encodings the platform accepts.
pub const ENCODINGS: &[&str] = &["onnx"];

/// Why a model operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Name(#[from] UploadError),
    #[error("unsupported encoding `{0}` (supported: onnx)")]
    UnsupportedEncoding(String),
    #[error("the model does not load: {0}")]
    Invalid(NnError),
    #[error("model `{0}` not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What an upload produced.
#[derive(Debug)]
pub struct Uploaded {
    pub model: Arc<ModelRecord>,
    pub version: ModelVersionRecord,
    /// `false` when the bytes equal the latest version's.
    pub created: bool,
    pub backend: &'static str,
    pub loaded: Arc<dyn LoadedModel>,
}

impl std::fmt::Debug for dyn LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("inputs", &self.inputs())
            .field("outputs", &self.outputs())
            .finish()
    }
}

/// Models and their loaded graphs.
pub struct ModelRegistry {
    meta: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    backend: Arc<dyn Backend>,
    index: DashMap<String, Arc<ModelRecord>>,
    loaded: DashMap<String, Arc<Slot>>,
    idle_timeout: Duration,
    epoch: Instant,
}

/// One loaded (or loading) model and when it was last used.
struct Slot {
    model: OnceCell<Arc<dyn LoadedModel>>,
    /// Milliseconds since the registry opened.
    last_used: AtomicU64,
}

impl ModelRegistry {
    pub fn open(
        meta: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        backend: Arc<dyn Backend>,
        idle_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let index = DashMap::new();
        for record in meta.load_models()? {
            index.insert(record.name.clone(), Arc::new(record));
        }
        Ok(Self {
            meta,
            blobs,
            backend,
            index,
            loaded: DashMap::new(),
            idle_timeout,
            epoch: Instant::now(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The slot for a digest, created empty if needed, marked as used now.
    fn slot(&self, digest: &str) -> Arc<Slot> {
        let slot = self
            .loaded
            .entry(digest.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    model: OnceCell::new(),
                    last_used: AtomicU64::new(0),
                })
            })
            .clone();
        slot.last_used.store(self.now(), Ordering::Relaxed);
        slot
    }

    /// Unloads models unused for the idle timeout. Returns how many.
    pub fn reap(&self) -> usize {
        let now = self.now();
        let idle = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let before = self.loaded.len();
        self.loaded.retain(|_, slot| {
            !slot.model.initialized()
                || now.saturating_sub(slot.last_used.load(Ordering::Relaxed)) < idle
        });
        let unloaded = before.saturating_sub(self.loaded.len());
        if unloaded > 0 {
            tracing::debug!(unloaded, "idle models unloaded");
        }
        unloaded
    }

    /// Starts the model reaper; it stops when the registry is dropped.
    pub fn spawn_reaper(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(models) = weak.upgrade() else { break };
                models.reap();
            }
        })
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub fn list(&self) -> Vec<Arc<ModelRecord>> {
        let mut all: Vec<_> = self.index.iter().map(|e| e.value().clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn get(&self, name: &str) -> Option<Arc<ModelRecord>> {
        self.index.get(name).map(|e| e.value().clone())
    }

    /// The loaded model for a digest, if it is loaded (without marking it
    /// used).
    pub fn loaded_now(&self, digest: &str) -> Option<Arc<dyn LoadedModel>> {
        self.loaded.get(digest).and_then(|s| s.model.get().cloned())
    }

    /// Validates `bytes` by loading them and records a new version of
    /// `name` (or returns the latest when the bytes are identical).
    pub async fn upload(
        &self,
        name: &str,
        encoding: &str,
        bytes: Bytes,
    ) -> Result<Uploaded, ModelError> {
        check_name(name)?;
        if !ENCODINGS.contains(&encoding) {
            return Err(ModelError::UnsupportedEncoding(
                encoding.chars().take(40).collect(),
            ));
        }
        let backend = self.backend.clone();
        let blobs = self.blobs.clone();
        let size_bytes = bytes.len() as u64;
        let (digest, loaded, load_ms) = tokio::task::spawn_blocking(move || {
            let digest = hex::encode(Sha256::digest(&bytes));
            let started = Instant::now();
            let loaded: Arc<dyn LoadedModel> = Arc::new(Timed::new(
                backend.load(&bytes).map_err(ModelError::Invalid)?,
            ));
            let load_ms = started.elapsed().as_millis() as u64;
            blobs.put_model(&digest, &bytes)?;
            Ok::<_, ModelError>((digest, loaded, load_ms))
        })
        .await
        .map_err(|e| ModelError::Internal(format!("load task: {e}")))??;
        let _ = self.slot(&digest).model.set(loaded.clone());

        if let Some(record) = self.get(name)
            && let Some(latest) = record.latest().filter(|v| v.digest == digest)
        {
            return Ok(Uploaded {
                version: latest.clone(),
                model: record,
                created: false,
                backend: self.backend.name(),
                loaded,
            });
        }
        let version = ModelVersionRecord {
            version: 0,
            digest,
            encoding: encoding.to_string(),
            size_bytes,
            load_ms,
            created_at_ms: now_ms(),
        };
        let meta = self.meta.clone();
        let owned = name.to_string();
        let record = tokio::task::spawn_blocking(move || meta.add_model_version(&owned, &version))
            .await
            .map_err(|e| ModelError::Internal(format!("store task: {e}")))??;
        let record = Arc::new(record);
        self.index.insert(name.to_string(), record.clone());
        let version = record
            .latest()
            .cloned()
            .ok_or_else(|| ModelError::Internal("version not recorded".into()))?;
        tracing::info!(model = name, version = version.version, digest = %version.digest, load_ms, "model uploaded");
        Ok(Uploaded {
            model: record,
            version,
            created: true,
            backend: self.backend.name(),
            loaded,
        })
    }

    /// Deletes a model and its versions. Loaded graphs stay until nothing
    /// references their digest.
    pub async fn delete(&self, name: &str) -> Result<Arc<ModelRecord>, ModelError> {
        let record = self
            .get(name)
            .ok_or_else(|| ModelError::NotFound(name.to_string()))?;
        let meta = self.meta.clone();
        let owned = name.to_string();
        tokio::task::spawn_blocking(move || meta.delete_model(&owned))
            .await
            .map_err(|e| ModelError::Internal(format!("store task: {e}")))??;
        self.index.remove(name);
        let still_used: std::collections::HashSet<String> = self
            .index
            .iter()
            .flat_map(|e| {
                e.value()
                    .versions
                    .iter()
                    .map(|v| v.digest.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        self.loaded.retain(|digest, _| still_used.contains(digest));
        Ok(record)
    }

    /// The loaded latest version of `name`, loading it on first use
    /// (concurrent callers share one load).
    pub async fn load(&self, name: &str) -> Result<Arc<dyn LoadedModel>, ModelError> {
        let record = self
            .get(name)
            .ok_or_else(|| ModelError::NotFound(name.to_string()))?;
        let digest = record
            .latest()
            .map(|v| v.digest.clone())
            .ok_or_else(|| ModelError::NotFound(name.to_string()))?;
        let slot = self.slot(&digest);
        slot.model
            .get_or_try_init(|| async {
                let blobs = self.blobs.clone();
                let backend = self.backend.clone();
                tokio::task::spawn_blocking(move || {
                    let bytes = blobs.read_model(&digest)?;
                    backend.load(&bytes).map_err(ModelError::Invalid)
                })
                .await
                .map_err(|e| ModelError::Internal(format!("load task: {e}")))?
            })
            .await
            .cloned()
    }
}
