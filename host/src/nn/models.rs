//! Models: uploads validated by loading them, content-addressed and
//! versioned like functions, and loaded once per process.
//!
//! The registry keeps an index of every model in memory and one loaded
//! model per digest, shared by every caller; a model loads lazily on first
//! use after a restart, and an upload leaves the model it validated loaded.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{Backend, LoadedModel, NnError};
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
    loaded: DashMap<String, Arc<OnceCell<Arc<dyn LoadedModel>>>>,
}

impl ModelRegistry {
    pub fn open(
        meta: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        backend: Arc<dyn Backend>,
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

    /// The loaded model for a digest, if it is loaded.
    pub fn loaded_now(&self, digest: &str) -> Option<Arc<dyn LoadedModel>> {
        self.loaded.get(digest).and_then(|c| c.get().cloned())
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
            let loaded = backend.load(&bytes).map_err(ModelError::Invalid)?;
            let load_ms = started.elapsed().as_millis() as u64;
            blobs.put_model(&digest, &bytes)?;
            Ok::<_, ModelError>((digest, loaded, load_ms))
        })
        .await
        .map_err(|e| ModelError::Internal(format!("load task: {e}")))??;
        let cell = self
            .loaded
            .entry(digest.clone())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let _ = cell.set(loaded.clone());

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
        let cell = self
            .loaded
            .entry(digest.clone())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        cell.get_or_try_init(|| async {
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
