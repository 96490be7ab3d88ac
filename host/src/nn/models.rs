//! Models: uploads validated by loading them, content-addressed and
//! versioned like functions, and loaded once per process.
//!
//! The registry keeps an index of every model in memory and one loaded
//! model per digest, shared by every caller; a model loads lazily on first
//! use after a restart, and an upload leaves the model it validated loaded.
//! Models keep warm on their own policy, independent of the functions that
//! use them: a loaded model unused for `[models] idle_timeout_ms` is
//! unloaded by the reaper (calls already holding it finish on it).
//!
//! Loaded models count against a memory budget per device (`[models]
//! memory_budget_mb` for the CPU, `gpu_memory_budget_mb` for the GPU; each
//! model counted at its file size, which is what its weights take once
//! loaded). A load that would exceed its device's budget first unloads idle
//! models of that device, least recently used first; if the models in use
//! still leave no room, the load is refused with a clear error instead of
//! running the process (or the GPU) out of memory.
//!
//! Each encoding has its backend (`onnx`: tract or ONNX Runtime; `pytorch`:
//! libtorch, with the `torch` feature). One graph is loaded per (model
//! digest, backend, device). A request for a device its backend lacks
//! (`gpu` without CUDA, `tpu`) follows `[models] fallback`: run on the CPU
//! and say so, or fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{Backend, Device, LoadedModel, NnError, Timed};
use crate::config::FallbackPolicy;
use crate::cputime::thread_cpu_time;
use crate::registry::{
    BlobStore, Claims, MetadataStore, ModelRecord, ModelVersionRecord, StoreError, UploadError,
    UploadUsage, check_name, now_ms, qualify,
};

/// Why a model operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Name(#[from] UploadError),
    /// The message names the encodings this build accepts.
    #[error("{0}")]
    UnsupportedEncoding(String),
    #[error("the model does not load: {0}")]
    Invalid(NnError),
    #[error("model `{0}` not found")]
    NotFound(String),
    /// Loading would exceed the memory budget even after unloading every
    /// idle model.
    #[error("{0}")]
    OverBudget(String),
    /// The requested device is not available and the policy says fail.
    #[error("{0}")]
    DeviceUnavailable(String),
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

/// How loaded models are kept.
#[derive(Debug, Clone)]
pub struct ModelPolicy {
    /// Unused this long, a loaded model is unloaded.
    pub idle_timeout: Duration,
    /// Total size of models loaded on the CPU.
    pub budget_bytes: u64,
    /// Total size of models loaded on the GPU.
    pub gpu_budget_bytes: u64,
    /// What a request for a missing device gets.
    pub fallback: FallbackPolicy,
}

/// Models and their loaded graphs.
pub struct ModelRegistry {
    meta: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    /// One backend per encoding; the first runs ONNX.
    backends: Vec<Arc<dyn Backend>>,
    policy: ModelPolicy,
    index: DashMap<String, Arc<ModelRecord>>,
    loaded: DashMap<SlotKey, Arc<Slot>>,
    /// Serialises the decision to admit a new model under the budget.
    admit: std::sync::Mutex<()>,
    epoch: Instant,
    /// Digests of uploads under way: their bytes are not collected, though
    /// no version has them yet.
    claims: Claims,
}

/// One loaded graph: a model version, on a backend, for a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SlotKey {
    digest: String,
    backend: &'static str,
    device: Device,
}

/// One loaded (or loading) model and when it was last used.
struct Slot {
    model: OnceCell<Arc<dyn LoadedModel>>,
    /// Milliseconds since the registry opened.
    last_used: AtomicU64,
    /// What it counts against the budget.
    size: u64,
    /// Each tenant's handle on the shared graph, by tenant id: tenants that
    /// uploaded the same bytes share the graph, but not what it tells about
    /// its use (runs, last use, whether a call holds it).
    views: DashMap<String, Arc<TenantView>>,
}

/// One tenant's use of a shared graph.
struct TenantView {
    /// The shared graph, timed for this tenant's runs alone.
    model: Arc<dyn LoadedModel>,
    /// Milliseconds since the registry opened.
    last_used: AtomicU64,
}

impl Slot {
    fn new(now: u64, size: u64) -> Self {
        Self {
            model: OnceCell::new(),
            last_used: AtomicU64::new(now),
            size,
            views: DashMap::new(),
        }
    }

    /// Loaded, and nobody but the registry holds it: no caller holds a
    /// tenant's view, nor the graph itself (each view holds it once).
    fn idle(&self) -> bool {
        self.model.get().is_some_and(|m| {
            self.views
                .iter()
                .all(|v| Arc::strong_count(&v.value().model) == 1)
                && Arc::strong_count(m) == 1 + self.views.len()
        })
    }

    /// `tenant`'s view of the loaded graph, marked as used at `now`.
    fn view(&self, tenant: &str, now: u64) -> Option<Arc<dyn LoadedModel>> {
        let shared = self.model.get()?;
        let view = match self.views.get(tenant) {
            Some(view) => view.clone(),
            None => self
                .views
                .entry(tenant.to_string())
                .or_insert_with(|| {
                    Arc::new(TenantView {
                        model: Arc::new(Timed::new(shared.clone())),
                        last_used: AtomicU64::new(now),
                    })
                })
                .clone(),
        };
        view.last_used.store(now, Ordering::Relaxed);
        Some(view.model.clone())
    }
}

/// Where a load runs: the backend, the device, and the device asked for
/// when the fallback policy moved it.
struct Placement {
    backend: Arc<dyn Backend>,
    device: Device,
    fell_back_from: Option<Device>,
}

/// A loaded model handed to a caller.
pub struct Ready {
    pub model: Arc<dyn LoadedModel>,
    pub backend: &'static str,
    /// The device it runs on.
    pub device: Device,
    /// The device asked for, when the fallback policy moved it.
    pub fell_back_from: Option<Device>,
    /// How long the load took, when this call triggered it.
    pub loaded_in: Option<Duration>,
}

/// Where a loaded model lives, for the API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Residency {
    pub backend: &'static str,
    pub device: Device,
    pub size_bytes: u64,
    /// Some call holds it now.
    pub in_use: bool,
    pub idle_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<super::RunStats>,
}

impl ModelRegistry {
    pub fn open(
        meta: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        backends: Vec<Arc<dyn Backend>>,
        policy: ModelPolicy,
    ) -> Result<Self, StoreError> {
        let index = DashMap::new();
        for record in meta.load_models()? {
            index.insert(record.key(), Arc::new(record));
        }
        let models = Self {
            meta,
            blobs,
            backends,
            policy,
            index,
            loaded: DashMap::new(),
            admit: std::sync::Mutex::new(()),
            epoch: Instant::now(),
            claims: Claims::default(),
        };
        // Bytes no version holds (deleted before they were collected, or an
        // upload cut short by a crash) are collected before serving.
        let collected = models.collect(models.blobs.model_digests()?)?;
        if collected > 0 {
            tracing::info!(collected, "collected model files no model holds");
        }
        Ok(models)
    }

    /// The digests every model version holds.
    fn digests_in_use(&self) -> std::collections::HashSet<String> {
        self.index
            .iter()
            .flat_map(|e| {
                e.value()
                    .versions
                    .iter()
                    .map(|v| v.digest.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Deletes the bytes of each of `digests` that no model version holds
    /// and no upload under way claims; returns how many it deleted.
    fn collect(&self, digests: impl IntoIterator<Item = String>) -> Result<usize, StoreError> {
        self.claims.collect(
            digests,
            || self.digests_in_use(),
            |d| self.blobs.delete_model(d),
        )
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn key(digest: &str, backend: &dyn Backend, device: Device) -> SlotKey {
        SlotKey {
            digest: digest.to_string(),
            backend: backend.name(),
            device,
        }
    }

    /// The backend that loads `encoding`.
    fn backend(&self, encoding: &str) -> Result<&Arc<dyn Backend>, ModelError> {
        if let Some(backend) = self.backends.iter().find(|b| b.encoding() == encoding) {
            return Ok(backend);
        }
        let shown: String = encoding.chars().take(40).collect();
        let accepted = self.encodings().join(", ");
        Err(ModelError::UnsupportedEncoding(if encoding == "pytorch" {
            format!(
                "unsupported encoding `pytorch`: this glia is built without the torch \
                     backend (cargo feature `torch`); it accepts {accepted}"
            )
        } else {
            format!("unsupported encoding `{shown}` (supported: {accepted})")
        }))
    }

    /// The encodings models may be uploaded in.
    pub fn encodings(&self) -> Vec<&'static str> {
        self.backends.iter().map(|b| b.encoding()).collect()
    }

    /// The backend that runs `encoding`, by name.
    pub fn backend_for(&self, encoding: &str) -> Option<&'static str> {
        self.backend(encoding).ok().map(|b| b.name())
    }

    /// The budget of models loaded on `device`.
    pub fn budget_bytes_on(&self, device: Device) -> u64 {
        match device {
            Device::Cpu => self.policy.budget_bytes,
            Device::Gpu | Device::Tpu => self.policy.gpu_budget_bytes,
        }
    }

    /// The slot for `key`, marked as used now; a new one is admitted under
    /// the memory budget, unloading idle models (least recently used
    /// first) to make room.
    fn slot(&self, key: SlotKey, size: u64) -> Result<Arc<Slot>, ModelError> {
        let now = self.now();
        if let Some(slot) = self.loaded.get(&key).map(|s| s.clone()) {
            slot.last_used.store(now, Ordering::Relaxed);
            return Ok(slot);
        }
        let _admitting = self.admit.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = self.loaded.get(&key).map(|s| s.clone()) {
            slot.last_used.store(now, Ordering::Relaxed);
            return Ok(slot);
        }
        self.make_room(key.device, size)?;
        let slot = Arc::new(Slot::new(now, size));
        self.loaded.insert(key, slot.clone());
        Ok(slot)
    }

    /// Unloads idle models of `device`, least recently used first, until
    /// `size` more bytes fit in its budget. Called with `admit` held.
    fn make_room(&self, device: Device, size: u64) -> Result<(), ModelError> {
        let budget = self.budget_bytes_on(device);
        let setting = match device {
            Device::Cpu => "models.memory_budget_mb",
            Device::Gpu | Device::Tpu => "models.gpu_memory_budget_mb",
        };
        let mib = |b: u64| b.div_ceil(1024 * 1024);
        if size > budget {
            return Err(ModelError::OverBudget(format!(
                "the model needs {} MiB, more than the whole {device} model memory budget of \
                 {} MiB ({setting})",
                mib(size),
                mib(budget)
            )));
        }
        let mut resident = self.resident_bytes_on(device);
        if resident.saturating_add(size) <= budget {
            return Ok(());
        }
        let mut idle: Vec<(u64, SlotKey, u64)> = self
            .loaded
            .iter()
            .filter(|e| e.key().device == device && e.value().idle())
            .map(|e| {
                (
                    e.value().last_used.load(Ordering::Relaxed),
                    e.key().clone(),
                    e.value().size,
                )
            })
            .collect();
        idle.sort_by_key(|(used, _, _)| *used);
        for (_, key, freed) in idle {
            if resident.saturating_add(size) <= budget {
                break;
            }
            if self.loaded.remove_if(&key, |_, s| s.idle()).is_some() {
                tracing::info!(digest = %key.digest, device = %key.device, freed_bytes = freed, "model unloaded to make room");
                resident = resident.saturating_sub(freed);
            }
        }
        if resident.saturating_add(size) <= budget {
            Ok(())
        } else {
            Err(ModelError::OverBudget(format!(
                "loading the model ({} MiB) would exceed the {device} model memory budget of \
                 {} MiB: {} MiB are held by models in use ({setting})",
                mib(size),
                mib(budget),
                mib(resident)
            )))
        }
    }

    /// Bytes of loaded (and loading) models on the CPU, as counted against
    /// its budget.
    pub fn resident_bytes(&self) -> u64 {
        self.resident_bytes_on(Device::Cpu)
    }

    /// Bytes of loaded (and loading) models on `device`.
    pub fn resident_bytes_on(&self, device: Device) -> u64 {
        self.loaded
            .iter()
            .filter(|e| e.key().device == device)
            .map(|e| e.value().size)
            .sum()
    }

    /// The CPU's model memory budget.
    pub fn budget_bytes(&self) -> u64 {
        self.policy.budget_bytes
    }

    /// Every loaded graph's backend, device and size (for metrics).
    pub fn loaded_graphs(&self) -> Vec<(&'static str, Device, u64)> {
        self.loaded
            .iter()
            .filter(|e| e.value().model.initialized())
            .map(|e| (e.key().backend, e.key().device, e.value().size))
            .collect()
    }

    /// Unloads models unused for the idle timeout. Returns how many.
    pub fn reap(&self) -> usize {
        let now = self.now();
        let idle = u64::try_from(self.policy.idle_timeout.as_millis()).unwrap_or(u64::MAX);
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

    /// Whether some backend runs models on a GPU here.
    pub fn gpu_available(&self) -> bool {
        self.backends.iter().any(|b| b.supports(Device::Gpu))
    }

    /// The backend that runs ONNX models.
    pub fn backend_name(&self) -> &'static str {
        self.backends.first().map_or("none", |b| b.name())
    }

    /// Every model of every tenant.
    pub fn all(&self) -> Vec<Arc<ModelRecord>> {
        self.index.iter().map(|e| e.value().clone()).collect()
    }

    /// A tenant's models, sorted by name.
    pub fn list(&self, tenant: &str) -> Vec<Arc<ModelRecord>> {
        let mut all: Vec<_> = self
            .index
            .iter()
            .filter(|e| e.value().tenant == tenant)
            .map(|e| e.value().clone())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// A tenant's model.
    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<ModelRecord>> {
        self.index
            .get(&qualify(tenant, name))
            .map(|e| e.value().clone())
    }

    /// Number of models and bytes of stored model files a tenant holds.
    pub fn footprint(&self, tenant: &str) -> (u64, u64) {
        self.index
            .iter()
            .filter(|e| e.value().tenant == tenant)
            .fold((0, 0), |(count, bytes), e| {
                let stored: u64 = e.value().versions.iter().map(|v| v.size_bytes).sum();
                (count + 1, bytes.saturating_add(stored))
            })
    }

    /// A loaded graph of a digest, if one is loaded (without marking it
    /// used).
    pub fn loaded_now(&self, digest: &str) -> Option<Arc<dyn LoadedModel>> {
        self.loaded
            .iter()
            .filter(|e| e.key().digest == digest)
            .find_map(|e| e.value().model.get().cloned())
    }

    /// Where a digest is loaded, as `tenant` used it: its own runs, its
    /// own last use (or, before its first, since `since_ms`, Unix
    /// milliseconds), and whether one of its own calls holds it. Another
    /// tenant's use of the same bytes shows in none of them.
    pub fn residency(&self, digest: &str, tenant: &str, since_ms: i64) -> Vec<Residency> {
        let now = self.now();
        let mut all: Vec<Residency> = self
            .loaded
            .iter()
            .filter(|e| e.key().digest == digest && e.value().model.initialized())
            .map(|e| {
                let view = e.value().views.get(tenant).map(|v| v.clone());
                let idle_ms = match &view {
                    Some(v) => now.saturating_sub(v.last_used.load(Ordering::Relaxed)),
                    None => u64::try_from(now_ms().saturating_sub(since_ms)).unwrap_or(0),
                };
                Residency {
                    backend: e.key().backend,
                    device: e.key().device,
                    size_bytes: e.value().size,
                    in_use: view
                        .as_ref()
                        .is_some_and(|v| Arc::strong_count(&v.model) > 1),
                    idle_ms,
                    stats: Some(view.and_then(|v| v.model.stats()).unwrap_or_default()),
                }
            })
            .collect();
        all.sort_by_key(|r| r.device);
        all
    }

    /// Validates `bytes` by loading them and records a new version of
    /// `name` (or returns the latest when the bytes are identical). The
    /// validated graph stays loaded when the budget has room for it. The
    /// CPU time hashing and loading used (on the threads that did them) is
    /// added to `usage`, whatever the outcome.
    pub async fn upload(
        &self,
        tenant: &str,
        name: &str,
        encoding: &str,
        bytes: Bytes,
        usage: &mut UploadUsage,
    ) -> Result<Uploaded, ModelError> {
        check_name(name)?;
        let backend = self.backend(encoding)?.clone();
        usage.validated = true;
        let backend_name = backend.name();
        let blobs = self.blobs.clone();
        let size_bytes = bytes.len() as u64;
        let loader = backend.clone();
        let hashed = bytes.clone();
        let (digest, cpu) = tokio::task::spawn_blocking(move || {
            let before = thread_cpu_time();
            let digest = hex::encode(Sha256::digest(&hashed));
            (digest, thread_cpu_time().saturating_sub(before))
        })
        .await
        .map_err(|e| ModelError::Internal(format!("hash task: {e}")))?;
        usage.cpu += cpu;
        // Held until the version is recorded: the bytes are not collected
        // meanwhile.
        let _claim = self.claims.claim(&digest);
        let stored = digest.clone();
        let (loaded, cpu) = tokio::task::spawn_blocking(move || {
            let digest = stored;
            let started = Instant::now();
            let before = thread_cpu_time();
            let loaded = loader.load(&bytes).map_err(ModelError::Invalid);
            let cpu = thread_cpu_time().saturating_sub(before);
            let load_ms = started.elapsed().as_millis() as u64;
            let kept = loaded.and_then(|loaded| {
                blobs.put_model(&digest, &bytes)?;
                let loaded: Arc<dyn LoadedModel> = Arc::new(Timed::new(loaded));
                Ok((digest, loaded, load_ms))
            });
            (kept, cpu)
        })
        .await
        .map_err(|e| ModelError::Internal(format!("load task: {e}")))?;
        usage.cpu += cpu;
        let (digest, loaded, load_ms) = loaded?;
        match self.slot(Self::key(&digest, &*backend, Device::Cpu), size_bytes) {
            Ok(slot) => {
                let _ = slot.model.set(loaded.clone());
                slot.view(tenant, self.now());
            }
            Err(e) => tracing::info!(model = name, reason = %e, "uploaded model not kept loaded"),
        }

        if let Some(record) = self.get(tenant, name)
            && let Some(latest) = record.latest().filter(|v| v.digest == digest)
        {
            return Ok(Uploaded {
                version: latest.clone(),
                model: record,
                created: false,
                backend: backend_name,
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
        let (owned_tenant, owned) = (tenant.to_string(), name.to_string());
        let record = tokio::task::spawn_blocking(move || {
            meta.add_model_version(&owned_tenant, &owned, &version)
        })
        .await
        .map_err(|e| ModelError::Internal(format!("store task: {e}")))??;
        let record = Arc::new(record);
        self.index.insert(record.key(), record.clone());
        let version = record
            .latest()
            .cloned()
            .ok_or_else(|| ModelError::Internal("version not recorded".into()))?;
        tracing::info!(tenant, model = name, version = version.version, digest = %version.digest, load_ms, "model uploaded");
        Ok(Uploaded {
            model: record,
            version,
            created: true,
            backend: backend_name,
            loaded,
        })
    }

    /// Deletes a model and its versions. Loaded graphs of digests no other
    /// model uses are unloaded (calls holding them finish on them), and
    /// their stored bytes deleted.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<Arc<ModelRecord>, ModelError> {
        let record = self
            .get(tenant, name)
            .ok_or_else(|| ModelError::NotFound(name.to_string()))?;
        let meta = self.meta.clone();
        let (owned_tenant, owned) = (tenant.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || meta.delete_model(&owned_tenant, &owned))
            .await
            .map_err(|e| ModelError::Internal(format!("store task: {e}")))??;
        self.index.remove(&record.key());
        let still_used = self.digests_in_use();
        self.loaded
            .retain(|key, _| still_used.contains(&key.digest));
        // Removing files is quick; a failure leaves them for the next start.
        let digests = record.versions.iter().map(|v| v.digest.clone());
        let collected = self.collect(digests).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "collecting a deleted model's files");
            0
        });
        tracing::info!(tenant, model = name, collected, "model deleted");
        Ok(record)
    }

    /// The loaded latest version of a tenant's `name` on the CPU, loading it
    /// on first use (concurrent callers share one load).
    pub async fn load(&self, tenant: &str, name: &str) -> Result<Arc<dyn LoadedModel>, ModelError> {
        self.acquire(tenant, name, Device::Cpu)
            .await
            .map(|r| r.model)
    }

    /// The latest version of a tenant's `name`, loaded for `device` (or where
    /// the fallback policy puts it), loading it on first use. Tenants that
    /// uploaded the same bytes share one loaded graph.
    pub async fn acquire(
        &self,
        tenant: &str,
        name: &str,
        device: Device,
    ) -> Result<Ready, ModelError> {
        let record = self
            .get(tenant, name)
            .ok_or_else(|| ModelError::NotFound(name.to_string()))?;
        let version = record
            .latest()
            .ok_or_else(|| ModelError::NotFound(name.to_string()))?;
        let digest = version.digest.clone();
        let placement = self.place(self.backend(&version.encoding)?.clone(), device)?;
        let blobs = self.blobs.clone();
        let source = digest.clone();
        self.ready(tenant, placement, &digest, version.size_bytes, move || {
            blobs.read_model(&source).map_err(ModelError::from)
        })
        .await
    }

    /// A model given as bytes (a guest's raw `load`) by one of `tenant`'s
    /// functions, loaded for `device`; identical bytes share one loaded
    /// graph, under the same budget.
    pub async fn acquire_bytes(
        &self,
        tenant: &str,
        encoding: &str,
        bytes: Vec<u8>,
        device: Device,
    ) -> Result<Ready, ModelError> {
        let placement = self.place(self.backend(encoding)?.clone(), device)?;
        let size = bytes.len() as u64;
        let (digest, bytes) =
            tokio::task::spawn_blocking(move || (hex::encode(Sha256::digest(&bytes)), bytes))
                .await
                .map_err(|e| ModelError::Internal(format!("hash task: {e}")))?;
        self.ready(tenant, placement, &digest, size, move || Ok(bytes))
            .await
    }

    /// Where a request for `device` runs on `backend`, under the fallback
    /// policy.
    fn place(&self, backend: Arc<dyn Backend>, device: Device) -> Result<Placement, ModelError> {
        if backend.supports(device) {
            return Ok(Placement {
                backend,
                device,
                fell_back_from: None,
            });
        }
        match self.policy.fallback {
            FallbackPolicy::Cpu => Ok(Placement {
                backend,
                device: Device::Cpu,
                fell_back_from: Some(device),
            }),
            FallbackPolicy::Error => Err(ModelError::DeviceUnavailable(format!(
                "no {device} is available to the {} backend, and models.fallback is \"error\"",
                backend.name()
            ))),
        }
    }

    /// `tenant`'s view of the graph of `digest` (`size` bytes, read by
    /// `bytes` if it must be loaded) where `placement` says.
    async fn ready(
        &self,
        tenant: &str,
        placement: Placement,
        digest: &str,
        size: u64,
        bytes: impl FnOnce() -> Result<Vec<u8>, ModelError> + Send + 'static,
    ) -> Result<Ready, ModelError> {
        let Placement {
            backend,
            device,
            fell_back_from,
        } = placement;
        let key = Self::key(digest, &*backend, device);
        let slot = self.slot(key.clone(), size)?;
        // A load that fails, or whose caller gives up (deadline), gives its
        // reservation back.
        let _unreserve = Unreserve {
            loaded: &self.loaded,
            key: &key,
        };
        let mut loaded_in = None;
        let result = slot
            .model
            .get_or_try_init(|| async {
                let started = Instant::now();
                let loaded = tokio::task::spawn_blocking(move || {
                    let bytes = bytes()?;
                    backend
                        .load_on(&bytes, device)
                        .map(|m| Arc::new(Timed::new(m)) as Arc<dyn LoadedModel>)
                        .map_err(ModelError::Invalid)
                })
                .await
                .map_err(|e| ModelError::Internal(format!("load task: {e}")))?;
                loaded_in = Some(started.elapsed());
                loaded
            })
            .await
            .map(|_| ());
        match result.and_then(|()| {
            slot.view(tenant, self.now())
                .ok_or_else(|| ModelError::Internal("a loaded slot without its model".into()))
        }) {
            Ok(model) => Ok(Ready {
                model,
                backend: key.backend,
                device,
                fell_back_from,
                loaded_in,
            }),
            Err(e) => Err(e),
        }
    }

    /// Loads the latest version of every model (`[models] preload`).
    pub async fn preload(&self) {
        for record in self.all() {
            if let Err(e) = self
                .acquire(&record.tenant, &record.name, Device::Cpu)
                .await
            {
                tracing::warn!(model = %record.name, error = %e, "preloading failed");
            }
        }
    }
}

/// Removes a slot that never finished loading when dropped.
struct Unreserve<'a> {
    loaded: &'a DashMap<SlotKey, Arc<Slot>>,
    key: &'a SlotKey,
}

impl Drop for Unreserve<'_> {
    fn drop(&mut self) {
        self.loaded
            .remove_if(self.key, |_, s| !s.model.initialized());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::nn::tract::TractBackend;
    use crate::registry::{FsBlobStore, SqliteStore};

    const DIGITS: &[u8] = include_bytes!("../../../functions/classify-digits/model/digits.onnx");
    const INTENT: &[u8] =
        include_bytes!("../../../examples/intent-pipeline/model/intent-head.onnx");

    /// Stands in for a GPU backend, which this machine cannot run: tract,
    /// claiming to run on the GPU, so the registry's per-device accounting
    /// can be tested anywhere. (The real GPU path is the torch backend's,
    /// checked by host/gpu-check.sh on a machine with CUDA.)
    struct PretendGpu;

    impl Backend for PretendGpu {
        fn name(&self) -> &'static str {
            "pretend-gpu"
        }
        fn load(&self, bytes: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError> {
            TractBackend.load(bytes)
        }
        fn supports(&self, device: Device) -> bool {
            device != Device::Tpu
        }
        fn load_on(&self, bytes: &[u8], _: Device) -> Result<Arc<dyn LoadedModel>, NnError> {
            TractBackend.load(bytes)
        }
    }

    fn registry(dir: &std::path::Path, cpu: u64, gpu: u64) -> ModelRegistry {
        ModelRegistry::open(
            Arc::new(SqliteStore::open(&dir.join("glia.db")).unwrap()),
            Arc::new(FsBlobStore::open(dir, "test").unwrap()),
            vec![Arc::new(PretendGpu)],
            ModelPolicy {
                idle_timeout: Duration::from_secs(60),
                budget_bytes: cpu,
                gpu_budget_bytes: gpu,
                fallback: FallbackPolicy::Error,
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn each_device_has_its_own_budget_and_evicts_only_its_own_models() {
        let dir = tempfile::tempdir().unwrap();
        // Room for one of the two models per device.
        let models = registry(dir.path(), 12_000, 12_000);
        let load = |bytes: &[u8], device| models.acquire_bytes("t", "onnx", bytes.to_vec(), device);

        let digits_gpu = load(DIGITS, Device::Gpu).await.unwrap();
        assert_eq!(digits_gpu.device, Device::Gpu);
        assert_eq!(models.resident_bytes_on(Device::Gpu), DIGITS.len() as u64);
        assert_eq!(models.resident_bytes_on(Device::Cpu), 0);

        // The CPU's budget is separate: digits loads there too.
        let digits_cpu = load(DIGITS, Device::Cpu).await.unwrap();
        assert_eq!(models.resident_bytes_on(Device::Cpu), DIGITS.len() as u64);

        // While digits runs on the GPU, a second GPU model does not fit and
        // is refused before anything is loaded; the message names the
        // device and its setting.
        let err = load(INTENT, Device::Gpu).await.map(|_| ()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, ModelError::OverBudget(_)), "{message}");
        assert!(
            message.contains("gpu model memory budget")
                && message.contains("models.gpu_memory_budget_mb"),
            "{message}"
        );

        // Once idle, the GPU's digits gives way (least recently used), and
        // the CPU's copy, still held, stays.
        drop(digits_gpu);
        let intent_gpu = load(INTENT, Device::Gpu).await.unwrap();
        assert_eq!(models.resident_bytes_on(Device::Gpu), INTENT.len() as u64);
        assert_eq!(models.resident_bytes_on(Device::Cpu), DIGITS.len() as u64);
        let graphs = models.loaded_graphs();
        assert_eq!(graphs.len(), 2, "{graphs:?}");
        drop((digits_cpu, intent_gpu));
    }

    #[tokio::test]
    async fn encodings_without_a_backend_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let models = registry(dir.path(), 1 << 20, 1 << 20);
        assert_eq!(models.encodings(), vec!["onnx"]);
        let err = models
            .acquire_bytes("t", "pytorch", DIGITS.to_vec(), Device::Cpu)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string().contains("without the torch backend"),
            "{err}"
        );
        let err = models
            .acquire_bytes("t", "ggml", DIGITS.to_vec(), Device::Cpu)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported encoding `ggml` (supported: onnx)"
        );
    }
}
