//! Functions: upload validation, ahead-of-time compilation, content-addressed
//! storage, immutable versions and per-function settings.
//!
//! The registry keeps an in-memory index of every function so that resolving
//! a call (`name[@version]` → digest and settings) never touches the database;
//! writes go to the metadata store first and then to the index.

mod claims;
mod settings;
mod store;
mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use sha2::{Digest, Sha256};

use crate::config::RuntimeConfig;

/// Metadata key prefix under which a digest's compile time is kept, so a
/// tenant whose upload reuses another's artifact is told (and waits) what a
/// compile took.
const COMPILE_MS_PREFIX: &str = "compile_ms:";
use crate::runtime::{LoadError, Runtime};

pub use claims::{Claim, Claims};
pub use settings::{SETTING_NAMES, Settings, SettingsOverrides, SettingsPatch};
pub use store::{
    BlobStore, DEFAULT_TENANT, FsBlobStore, FunctionRecord, MetadataStore, ModelRecord,
    ModelVersionRecord, NewVersion, SqliteStore, StoreError, VersionRecord, now_ms, qualify,
};
pub use validate::{MAX_NAME_LEN, UploadError, check_component, check_name};

/// Registry failures, each mapped to one API error.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("function `{0}` not found")]
    NotFound(String),
    #[error("function `{name}` has no version {version}")]
    VersionNotFound { name: String, version: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What an upload produced.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub function: Arc<FunctionRecord>,
    pub version: VersionRecord,
    /// `false` when the upload was identical to the latest version, which is
    /// then returned unchanged.
    pub created: bool,
    /// Whether this upload compiled (false when an identical component had
    /// already been compiled by this engine).
    pub compiled: bool,
}

/// What validating and compiling an upload (of a function's component; a
/// model is validated by loading it) used, billed to its tenant whether the
/// upload succeeds or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadUsage {
    /// CPU time on every thread that validated or compiled it. An upload of
    /// bytes another tenant's upload compiled is billed what that compile
    /// used: it reads as a compile in every way (see [`Registry::deploy`]).
    pub cpu: Duration,
    /// Whether the upload got as far as validation.
    pub validated: bool,
}

/// A call target: one version and the settings to run it with.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The tenant that owns the function (and pays for its calls).
    pub tenant: Arc<str>,
    pub name: Arc<str>,
    /// `tenant/name`: the function's key across tenants.
    pub key: String,
    pub version: VersionRecord,
    pub settings: Settings,
}

/// Counters for tests and operators.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Components compiled by this process.
    pub compiles: AtomicU64,
    /// Artifacts loaded from disk by this process.
    pub loads: AtomicU64,
    /// Components being compiled now.
    pub compiling: AtomicU64,
    /// The most components ever compiled at once.
    pub peak_compiling: AtomicU64,
}

/// Functions and their versions.
pub struct Registry {
    meta: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    runtime: Arc<Runtime>,
    defaults: Settings,
    limits: RuntimeConfig,
    /// Where outgoing requests may connect; `allowed_hosts` are checked
    /// against it.
    outbound: crate::capabilities::AddressPolicy,
    /// Turns to compile, `runtime.max_compilations` at once: compiling is
    /// the heaviest thing an upload does, in CPU and memory.
    compilations: Arc<tokio::sync::Semaphore>,
    index: DashMap<String, Arc<FunctionRecord>>,
    /// Digests of uploads under way: their blobs are not collected,
    /// though no version has them yet.
    claims: Claims,
    stats: Arc<RegistryStats>,
}

impl Registry {
    /// Opens the registry over its stores and loads the index.
    pub fn open(
        meta: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        runtime: Arc<Runtime>,
        defaults: Settings,
        limits: RuntimeConfig,
        outbound: crate::capabilities::AddressPolicy,
    ) -> Result<Self, RegistryError> {
        let index = DashMap::new();
        for record in meta.load_all()? {
            index.insert(record.key(), Arc::new(record));
        }
        let registry = Self {
            meta,
            blobs,
            runtime,
            defaults,
            compilations: Arc::new(tokio::sync::Semaphore::new(limits.compilations())),
            limits,
            outbound,
            index,
            claims: Claims::default(),
            stats: Arc::default(),
        };
        // What no version holds (deleted before blobs were collected, or an
        // upload cut short by a crash) is collected before serving.
        let stored = registry.blobs.component_digests()?;
        let collected = registry.collect(stored)?;
        if collected > 0 {
            tracing::info!(collected, "collected components no function holds");
        }
        Ok(registry)
    }

    /// Deletes the source and artifact of each of `digests` that no
    /// function version holds and no upload under way claims. Returns how
    /// many it deleted.
    fn collect(&self, digests: impl IntoIterator<Item = String>) -> Result<usize, StoreError> {
        let in_use = || {
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
        };
        self.claims
            .collect(digests, in_use, |d| self.blobs.delete_component(d))
    }

    pub fn stats(&self) -> &RegistryStats {
        &self.stats
    }

    pub fn metadata(&self) -> &Arc<dyn MetadataStore> {
        &self.meta
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    /// The platform's default settings.
    pub fn defaults(&self) -> &Settings {
        &self.defaults
    }

    /// Effective settings of a function.
    pub fn settings_of(&self, record: &FunctionRecord) -> Settings {
        record.overrides.resolve(&self.defaults)
    }

    /// Every function of every tenant, sorted by tenant and name.
    pub fn all(&self) -> Vec<Arc<FunctionRecord>> {
        let mut all: Vec<_> = self.index.iter().map(|e| e.value().clone()).collect();
        all.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        all
    }

    /// A tenant's functions, sorted by name.
    pub fn list(&self, tenant: &str) -> Vec<Arc<FunctionRecord>> {
        let mut all: Vec<_> = self
            .index
            .iter()
            .filter(|e| *e.value().tenant == *tenant)
            .map(|e| e.value().clone())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// A tenant's function.
    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<FunctionRecord>> {
        self.get_key(&qualify(tenant, name))
    }

    /// A function by its key (`tenant/name`).
    pub fn get_key(&self, key: &str) -> Option<Arc<FunctionRecord>> {
        self.index.get(key).map(|e| e.value().clone())
    }

    /// Number of functions and bytes of stored sources a tenant holds.
    pub fn footprint(&self, tenant: &str) -> (u64, u64) {
        self.index
            .iter()
            .filter(|e| *e.value().tenant == *tenant)
            .fold((0, 0), |(count, bytes), e| {
                let stored: u64 = e.value().versions.iter().map(|v| v.size_bytes).sum();
                (count + 1, bytes.saturating_add(stored))
            })
    }

    /// Whether any of `tenant`'s function versions has `digest`.
    fn holds_digest(&self, tenant: &str, digest: &str) -> bool {
        self.index.iter().any(|e| {
            *e.value().tenant == *tenant && e.value().versions.iter().any(|v| v.digest == digest)
        })
    }

    /// Resolves a tenant's `name` and an optional pinned version to a call
    /// target.
    pub fn resolve(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Resolved, RegistryError> {
        let record = self
            .get(tenant, name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let found = match version {
            Some(v) => record.version(v),
            None => record.latest(),
        };
        let version = found.cloned().ok_or(RegistryError::VersionNotFound {
            name: name.to_string(),
            version: version.unwrap_or(0),
        })?;
        Ok(Resolved {
            tenant: record.tenant.clone(),
            name: record.name.clone(),
            key: record.key(),
            version,
            settings: self.settings_of(&record),
        })
    }

    fn checked_overrides(
        &self,
        base: SettingsOverrides,
        patch: &SettingsPatch,
    ) -> Result<SettingsOverrides, RegistryError> {
        let mut overrides = base;
        overrides.apply(patch);
        let settings = overrides.resolve(&self.defaults);
        settings
            .validate(&self.limits)
            .map_err(RegistryError::Settings)?;
        for pattern in &settings.allowed_hosts {
            self.outbound
                .check_pattern(pattern)
                .map_err(|e| RegistryError::Settings(format!("allowed_hosts: {e}")))?;
        }
        Ok(overrides)
    }

    /// Validates, compiles (unless this engine already compiled the same
    /// bytes) and records a new version of `name`. What validating and
    /// compiling used is added to `usage`, whatever the outcome.
    pub async fn deploy(
        &self,
        tenant: &str,
        name: &str,
        bytes: Bytes,
        patch: SettingsPatch,
        usage: &mut UploadUsage,
    ) -> Result<Deployed, RegistryError> {
        check_name(name)?;
        let existing = self.get(tenant, name);
        let base = existing
            .as_ref()
            .map(|r| r.overrides.clone())
            .unwrap_or_default();
        let overrides = self.checked_overrides(base, &patch)?;

        let started = Instant::now();
        let (digest, mut compiled, mut compile_ms, _claim) = self.prepare(&bytes, usage).await?;
        let key = format!("{COMPILE_MS_PREFIX}{digest}");
        if compiled {
            self.stats.compiles.fetch_add(1, Ordering::Relaxed);
            let meta = self.meta.clone();
            // The compile's time, and the CPU time validating and
            // compiling used.
            let value = format!("{compile_ms} {}", usage.cpu.as_micros());
            blocking(move || meta.set_meta(&key, &value)).await??;
        } else if !self.holds_digest(tenant, &digest) {
            // Another tenant's upload compiled these bytes. Say nothing of
            // it: this tenant's first upload of them reads as a compile,
            // takes as long as the compile did, and is billed what it used.
            let meta = self.meta.clone();
            let recorded = blocking(move || meta.get_meta(&key))
                .await??
                .unwrap_or_default();
            let mut fields = recorded.split(' ').map(|v| v.parse::<u64>().ok());
            compile_ms = fields.next().flatten().unwrap_or(0);
            if let Some(cpu_us) = fields.next().flatten() {
                usage.cpu = Duration::from_micros(cpu_us);
            }
            compiled = true;
            tokio::time::sleep_until((started + Duration::from_millis(compile_ms)).into()).await;
        }

        // Re-uploading the latest version's bytes changes nothing but settings.
        if let Some(record) = existing.as_ref()
            && let Some(latest) = record.latest().filter(|v| v.digest == digest)
        {
            let latest = latest.clone();
            let function = if overrides != record.overrides {
                self.store_overrides(tenant, name, overrides).await?
            } else {
                record.clone()
            };
            return Ok(Deployed {
                function,
                version: latest,
                created: false,
                compiled,
            });
        }

        let meta = self.meta.clone();
        let size_bytes = bytes.len() as u64;
        let owned_name = name.to_string();
        let owned_tenant = tenant.to_string();
        let digest_for_store = digest.clone();
        let record = blocking(move || {
            meta.add_version(
                &owned_tenant,
                &owned_name,
                &overrides,
                NewVersion {
                    digest: &digest_for_store,
                    size_bytes,
                    compile_ms,
                },
            )
        })
        .await??;
        let record = Arc::new(record);
        self.index.insert(record.key(), record.clone());
        let version = record
            .latest()
            .cloned()
            .ok_or_else(|| RegistryError::Internal("version not recorded".into()))?;
        tracing::info!(
            tenant,
            function = name,
            version = version.version,
            digest = %digest,
            size_bytes,
            compile_ms,
            compiled,
            "deployed"
        );
        Ok(Deployed {
            function: record,
            version,
            created: true,
            compiled,
        })
    }

    /// Changes a function's settings without a new upload.
    pub async fn update_settings(
        &self,
        tenant: &str,
        name: &str,
        patch: &SettingsPatch,
    ) -> Result<Arc<FunctionRecord>, RegistryError> {
        let record = self
            .get(tenant, name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let overrides = self.checked_overrides(record.overrides.clone(), patch)?;
        self.store_overrides(tenant, name, overrides).await
    }

    async fn store_overrides(
        &self,
        tenant: &str,
        name: &str,
        overrides: SettingsOverrides,
    ) -> Result<Arc<FunctionRecord>, RegistryError> {
        let meta = self.meta.clone();
        let (owned_tenant, owned) = (tenant.to_string(), name.to_string());
        let record = blocking(move || meta.set_overrides(&owned_tenant, &owned, &overrides))
            .await??
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let record = Arc::new(record);
        self.index.insert(record.key(), record.clone());
        Ok(record)
    }

    /// Deletes a tenant's function and all its versions, and the sources
    /// and artifacts no other function holds.
    pub async fn delete(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Arc<FunctionRecord>, RegistryError> {
        let record = self
            .get(tenant, name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let meta = self.meta.clone();
        let (owned_tenant, owned) = (tenant.to_string(), name.to_string());
        blocking(move || meta.delete_function(&owned_tenant, &owned)).await??;
        self.index.remove(&record.key());
        // Removing files is quick; a failure leaves them for the next start.
        let digests = record.versions.iter().map(|v| v.digest.clone());
        let collected = self.collect(digests).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "collecting a deleted function's components");
            0
        });
        tracing::info!(tenant, function = name, collected, "deleted");
        Ok(record)
    }

    /// Loads the compiled artifact for `digest`, recompiling from the stored
    /// source only if this engine has no artifact for it (e.g. after an
    /// engine upgrade). Loading an artifact takes a few hundred microseconds
    /// (an mmap and linking) and runs on the caller's thread; a recompile
    /// takes far longer and runs on the blocking pool.
    pub async fn load(
        self: &Arc<Self>,
        digest: &str,
    ) -> Result<crate::runtime::FunctionPre, RegistryError> {
        let path = match self.blobs.artifact_path(digest) {
            Some(path) => path,
            None => {
                let registry = self.clone();
                let digest = digest.to_string();
                blocking(move || registry.recompile(&digest)).await??
            }
        };
        let started = Instant::now();
        let pre = self.runtime.load(&path).map_err(link_error)?;
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            digest,
            load_us = started.elapsed().as_micros() as u64,
            "artifact loaded"
        );
        Ok(pre)
    }

    fn recompile(&self, digest: &str) -> Result<PathBuf, RegistryError> {
        let source = self.blobs.read_source(digest)?;
        let started = Instant::now();
        let artifact = self
            .runtime
            .precompile(&source)
            .map_err(|e| RegistryError::Internal(format!("recompiling {digest}: {e}")))?;
        self.stats.compiles.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            digest,
            compile_ms = started.elapsed().as_millis() as u64,
            "recompiled: no artifact for this engine"
        );
        Ok(self.blobs.put_artifact(digest, &artifact)?)
    }
}

/// Validation, hashing and compilation of an upload; blocking.
impl Registry {
    /// Validates `bytes` and makes sure this engine has them compiled and
    /// linking: their digest, whether this call compiled them, how long
    /// that took, and the upload's claim on the digest (which keeps the
    /// blobs from being collected until its version is recorded). The CPU time of validating and compiling is
    /// added to `usage`, failed or not. At most `runtime.max_compilations`
    /// compile at once; the others wait their turn here.
    async fn prepare(
        &self,
        bytes: &Bytes,
        usage: &mut UploadUsage,
    ) -> Result<(String, bool, u64, Claim), RegistryError> {
        let checked = bytes.clone();
        usage.validated = true;
        let (digest, cpu) = blocking(move || {
            let before = crate::cputime::thread_cpu_time();
            let digest = check_component(&checked)
                .map(|_imports| hex::encode(Sha256::digest(&checked)))
                .map_err(RegistryError::from);
            (
                digest,
                crate::cputime::thread_cpu_time().saturating_sub(before),
            )
        })
        .await?;
        usage.cpu += cpu;
        let digest = digest?;
        let claim = self.claims.claim(&digest);
        let (runtime, blobs, looked_up) =
            (self.runtime.clone(), self.blobs.clone(), digest.clone());
        let linked = blocking(move || {
            // Already compiled by this engine: make sure it still links.
            match blobs.artifact_path(&looked_up) {
                Some(path) => runtime.load(&path).map(|_| true).map_err(link_error),
                None => Ok(false),
            }
        })
        .await??;
        if linked {
            return Ok((digest, false, 0, claim));
        }
        // Held by the compile itself, which goes on should the upload be
        // abandoned: the bound holds for what really runs.
        let turn = self
            .compilations
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| RegistryError::Internal(format!("compilation slots: {e}")))?;
        let stats = self.stats.clone();
        let (runtime, blobs, bytes) = (self.runtime.clone(), self.blobs.clone(), bytes.clone());
        let stored = digest.clone();
        let (compiled, cpu) = blocking(move || {
            let _turn = turn;
            let now = stats.compiling.fetch_add(1, Ordering::AcqRel) + 1;
            stats.peak_compiling.fetch_max(now, Ordering::AcqRel);
            let _done = Decrement(&stats.compiling);
            let started = Instant::now();
            let (artifact, cpu) = runtime.precompile_measured(&bytes);
            let compile_ms = started.elapsed().as_millis() as u64;
            let kept = artifact
                .map_err(|e| RegistryError::from(UploadError::Invalid(e)))
                .and_then(|artifact| {
                    blobs.put_source(&stored, &bytes)?;
                    let path = blobs.put_artifact(&stored, &artifact)?;
                    runtime.load(&path).map_err(link_error)?;
                    Ok(compile_ms)
                });
            (kept, cpu)
        })
        .await?;
        usage.cpu += cpu;
        Ok((digest, true, compiled?, claim))
    }
}

/// Decrements a counter when dropped.
struct Decrement<'a>(&'a AtomicU64);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn link_error(e: LoadError) -> RegistryError {
    match e {
        LoadError::Link(m) => RegistryError::Upload(UploadError::UnsatisfiedImports(vec![m])),
        LoadError::Export(m) => RegistryError::Upload(UploadError::MissingHandler(m)),
        LoadError::Deserialize(m) => RegistryError::Internal(m),
    }
}

/// Runs blocking work (SQLite, file I/O, compilation) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Internal(format!("blocking task: {e}")))
}
