//! Admission, warm instances and scale to zero.
//!
//! Each function version is either *warm* — its compiled component is
//! deserialised and linked into an `InstancePre`, ready to instantiate in
//! microseconds — or at *zero*, where only its metadata is in memory. The
//! first call on a zero version loads it (a cold start; concurrent first calls
//! wait on the same load), and an idle reaper returns versions to zero after
//! their function's `idle_timeout_ms` without calls, unless `min_warm` keeps
//! the latest version loaded. Every call still gets a fresh `Store`.
//!
//! Admission is a tenant quota and two gates in a fixed order. A tenant
//! with a `max_concurrency` quota has at most that many calls running or
//! waiting (beyond it: 429 at once). Then the function's `max_concurrency`,
//! a FIFO semaphore; then the platform's `max_in_flight`, a [`FairGate`]
//! that hands free slots to waiting tenants in turn, so one tenant's long
//! queue cannot starve another's calls. A call waits at most its
//! function's `queue_timeout_ms`, and at most `max_queue` calls wait per
//! function. A refusal at the function gate is the function's limit (429);
//! at the platform gate, the platform's (503).

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

mod fair;

pub use fair::{FairGate, PlatformPermit};

use crate::config::SchedulerConfig;
use crate::registry::{FunctionRecord, Registry, RegistryError, Resolved, now_ms};
use crate::runtime::FunctionPre;

/// Identifies a warm function version. The digest makes a deleted and
/// recreated function with different bytes a different entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionKey {
    /// The function's key, `tenant/name`.
    pub name: String,
    pub version: u32,
    pub digest: String,
}

impl VersionKey {
    pub fn of(resolved: &Resolved) -> Self {
        Self {
            name: resolved.key.clone(),
            version: resolved.version.version,
            digest: resolved.version.digest.clone(),
        }
    }
}

/// A warm (or warming) function version.
struct WarmEntry {
    pre: OnceCell<FunctionPre>,
    /// Milliseconds since the scheduler started, at the last call's start
    /// or end.
    last_used: AtomicU64,
    in_flight: AtomicU32,
    /// Linear memory the version's last call committed (0: none yet):
    /// what the next call reserves of the platform's budget.
    memory: Arc<AtomicU64>,
}

/// Per-function admission state and counters; created on first call.
struct FunctionSlot {
    gate: Mutex<Gate>,
    in_flight: AtomicU32,
    queued: AtomicU32,
    cold_starts: AtomicU64,
    last_call_ms: AtomicI64,
}

/// A function's concurrency gate, rebuilt when its limit changes.
struct Gate {
    limit: u32,
    semaphore: Arc<Semaphore>,
}

/// Why a call was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error(
        "function `{function}` is at its concurrency limit of {limit} and its queue is full ({queued} waiting)"
    )]
    QueueFull {
        function: String,
        limit: u32,
        queued: u32,
    },
    #[error("function `{function}` stayed at its concurrency limit of {limit} for {waited_ms} ms")]
    FunctionLimit {
        function: String,
        limit: u32,
        waited_ms: u64,
    },
    #[error(
        "the platform stayed at its limit of {limit} concurrent invocations for {waited_ms} ms"
    )]
    Saturated { limit: u32, waited_ms: u64 },
    #[error("the tenant has {limit} invocations running or waiting, its quota (max_concurrency)")]
    TenantLimit { limit: u32 },
}

/// An admitted call: holds its slots until dropped, which happens when the
/// guest has finished (response body included).
pub struct Admission {
    _function: OwnedSemaphorePermit,
    _platform: PlatformPermit,
    _tenant: TenantSlot,
    slot: Arc<FunctionSlot>,
    warm: Option<Arc<WarmEntry>>,
    epoch: Instant,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(warm) = &self.warm {
            warm.last_used
                .store(elapsed_ms(self.epoch), Ordering::Relaxed);
            warm.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A warm instance-pre and what it took to get it.
pub struct Ready {
    pub pre: FunctionPre,
    /// Time spent loading, when this call found the version at zero.
    pub cold_start: Option<Duration>,
    /// What the version's last call committed of linear memory (see
    /// [`crate::runtime::MemoryBudget::reserve`]).
    pub memory: Arc<AtomicU64>,
}

/// What `GET /v1/functions/{name}` shows about scheduling.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionStatus {
    /// `warm` when the latest version is loaded, else `zero`.
    pub state: &'static str,
    pub warm_versions: Vec<u32>,
    pub in_flight: u32,
    pub queued: u32,
    pub cold_starts: u64,
    /// Unix milliseconds of the last admitted call.
    pub last_call_ms: Option<i64>,
}

/// The scheduler.
pub struct Scheduler {
    registry: Arc<Registry>,
    config: SchedulerConfig,
    platform: Arc<FairGate>,
    /// Calls running or waiting, per tenant.
    tenants: DashMap<String, Arc<AtomicU32>>,
    functions: DashMap<String, Arc<FunctionSlot>>,
    warm: DashMap<VersionKey, Arc<WarmEntry>>,
    epoch: Instant,
}

fn elapsed_ms(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Scheduler {
    pub fn new(registry: Arc<Registry>, config: SchedulerConfig) -> Self {
        Self {
            registry,
            platform: Arc::new(FairGate::new(config.max_in_flight)),
            tenants: DashMap::new(),
            config,
            functions: DashMap::new(),
            warm: DashMap::new(),
            epoch: Instant::now(),
        }
    }

    fn slot(&self, name: &str) -> Arc<FunctionSlot> {
        if let Some(slot) = self.functions.get(name) {
            return slot.clone();
        }
        self.functions
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(FunctionSlot {
                    gate: Mutex::new(Gate {
                        limit: 0,
                        semaphore: Arc::new(Semaphore::new(0)),
                    }),
                    in_flight: AtomicU32::new(0),
                    queued: AtomicU32::new(0),
                    cold_starts: AtomicU64::new(0),
                    last_call_ms: AtomicI64::new(0),
                })
            })
            .clone()
    }

    /// Counts a call against its tenant's quota (`limit`, 0 for none).
    fn tenant_slot(&self, tenant: &str, limit: u32) -> Result<TenantSlot, Rejected> {
        let count = match self.tenants.get(tenant) {
            Some(c) => c.clone(),
            None => self.tenants.entry(tenant.to_string()).or_default().clone(),
        };
        let before = count.fetch_add(1, Ordering::AcqRel);
        let slot = TenantSlot(count);
        if limit > 0 && before >= limit {
            return Err(Rejected::TenantLimit { limit });
        }
        Ok(slot)
    }

    /// Admits a call to `resolved`: its tenant's concurrency quota
    /// (`tenant_limit`, 0 for none), then the function's gate in FIFO order,
    /// then the platform's in turn among tenants, waiting at most its
    /// `queue_timeout_ms` in all.
    pub async fn admit(
        &self,
        resolved: &Resolved,
        tenant_limit: u32,
    ) -> Result<Admission, Rejected> {
        let settings = &resolved.settings;
        let limit = settings.max_concurrency;
        let tenant = self.tenant_slot(&resolved.tenant, tenant_limit)?;
        let slot = self.slot(&resolved.key);
        let gate = {
            let mut gate = slot.gate.lock().unwrap_or_else(|p| p.into_inner());
            if gate.limit != limit {
                // Calls holding permits of the old gate finish on it.
                *gate = Gate {
                    limit,
                    semaphore: Arc::new(Semaphore::new(limit as usize)),
                };
            }
            gate.semaphore.clone()
        };

        let started = Instant::now();
        // Fast path: both gates free. The platform permit is only taken once
        // the function's is held, so a call queued on its own function never
        // holds a platform slot.
        let function = gate.clone().try_acquire_owned().ok();
        let platform = match &function {
            Some(_) => self.platform.try_acquire(),
            None => None,
        };
        let (function, platform) = match (function, platform) {
            (Some(f), Some(p)) => (f, p),
            (function, _) => {
                let queued = slot.queued.fetch_add(1, Ordering::Relaxed);
                let _queued = Decrement(&slot.queued);
                if queued >= self.config.max_queue {
                    return Err(Rejected::QueueFull {
                        function: resolved.name.to_string(),
                        limit,
                        queued,
                    });
                }
                let deadline = tokio::time::Instant::from_std(
                    started + Duration::from_millis(settings.queue_timeout_ms),
                );
                let waited = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let function = match function {
                    Some(f) => f,
                    None => match tokio::time::timeout_at(deadline, gate.acquire_owned()).await {
                        Ok(Ok(f)) => f,
                        _ => {
                            return Err(Rejected::FunctionLimit {
                                function: resolved.name.to_string(),
                                limit,
                                waited_ms: waited(),
                            });
                        }
                    },
                };
                let platform = match self.platform.acquire(&resolved.tenant, deadline).await {
                    Some(p) => p,
                    None => {
                        return Err(Rejected::Saturated {
                            limit: self.config.max_in_flight,
                            waited_ms: waited(),
                        });
                    }
                };
                (function, platform)
            }
        };
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        slot.last_call_ms.store(now_ms(), Ordering::Relaxed);
        Ok(Admission {
            _function: function,
            _platform: platform,
            _tenant: tenant,
            slot,
            warm: None,
            epoch: self.epoch,
        })
    }

    /// The warm instance-pre for `key`, loading it if the version is at
    /// zero. Concurrent callers share one load. The admission, when given,
    /// keeps the version warm until the call ends.
    pub async fn ready(
        &self,
        key: &VersionKey,
        admission: Option<&mut Admission>,
    ) -> Result<Ready, RegistryError> {
        let entry = self
            .warm
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(WarmEntry {
                    pre: OnceCell::new(),
                    last_used: AtomicU64::new(elapsed_ms(self.epoch)),
                    in_flight: AtomicU32::new(0),
                    memory: Arc::default(),
                })
            })
            .clone();
        entry
            .last_used
            .store(elapsed_ms(self.epoch), Ordering::Relaxed);
        if let Some(admission) = admission {
            entry.in_flight.fetch_add(1, Ordering::Relaxed);
            admission.warm = Some(entry.clone());
        }
        if let Some(pre) = entry.pre.get() {
            return Ok(Ready {
                pre: pre.clone(),
                cold_start: None,
                memory: entry.memory.clone(),
            });
        }
        let started = Instant::now();
        let mut loaded_here = false;
        let pre = entry
            .pre
            .get_or_try_init(|| {
                loaded_here = true;
                self.registry
                    .load(&key.digest)
                    .instrument(tracing::debug_span!(
                        "glia.cold_start",
                        glia.function = %key.name,
                        glia.function.version = key.version,
                    ))
            })
            .await?
            .clone();
        let cold_start = loaded_here.then(|| started.elapsed());
        if loaded_here {
            self.slot(&key.name)
                .cold_starts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                function = %key.name,
                version = key.version,
                load_us = cold_start.map(|d| d.as_micros() as u64),
                "cold start"
            );
        }
        Ok(Ready {
            pre,
            cold_start,
            memory: entry.memory.clone(),
        })
    }

    /// Loads the latest version of `record` if its settings keep it warm.
    pub async fn ensure_min_warm(&self, record: &FunctionRecord) {
        let settings = self.registry.settings_of(record);
        let Some(latest) = record.latest() else {
            return;
        };
        if settings.min_warm == 0 {
            return;
        }
        let key = VersionKey {
            name: record.key(),
            version: latest.version,
            digest: latest.digest.clone(),
        };
        if let Err(e) = self.ready(&key, None).await {
            tracing::warn!(tenant = %record.tenant, function = %record.name, error = %e, "could not keep warm");
        }
    }

    /// Returns idle versions to zero; keeps `min_warm` latest versions
    /// loaded. Called by the reaper; public so tests and benchmarks can force
    /// a pass.
    pub async fn reap(&self) {
        let now = elapsed_ms(self.epoch);
        let mut expired = Vec::new();
        for entry in self.warm.iter() {
            let key = entry.key();
            let Some(record) = self.registry.get_key(&key.name) else {
                expired.push(key.clone());
                continue;
            };
            if record
                .version(key.version)
                .is_none_or(|v| v.digest != key.digest)
            {
                expired.push(key.clone());
                continue;
            }
            let settings = self.registry.settings_of(&record);
            let is_latest = record.latest().map(|v| v.version) == Some(key.version);
            if settings.min_warm > 0 && is_latest {
                continue;
            }
            let idle = now.saturating_sub(entry.last_used.load(Ordering::Relaxed));
            if idle >= settings.idle_timeout_ms {
                expired.push(key.clone());
            }
        }
        for key in expired {
            let removed = self
                .warm
                .remove_if(&key, |_, e| e.in_flight.load(Ordering::Relaxed) == 0);
            if removed.is_some() {
                tracing::debug!(function = %key.name, version = key.version, "scaled to zero");
            }
        }
        for record in self.registry.all() {
            if self.registry.settings_of(&record).min_warm > 0 {
                self.ensure_min_warm(&record).await;
            }
        }
    }

    /// Starts the idle reaper; it stops when the scheduler is dropped.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = Duration::from_millis(self.config.reap_interval_ms);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(scheduler) = weak.upgrade() else {
                    break;
                };
                scheduler.reap().await;
            }
        })
    }

    /// Returns every idle warm version of `function` (its key,
    /// `tenant/name`) to zero now.
    pub fn scale_to_zero(&self, function: &str) {
        self.warm
            .retain(|k, e| k.name != function || e.in_flight.load(Ordering::Relaxed) > 0);
    }

    /// Forgets a deleted function (by key): its admission state and warm
    /// versions.
    pub fn forget(&self, function: &str) {
        self.functions.remove(function);
        self.warm.retain(|k, _| k.name != function);
    }

    /// Scheduling status of a function.
    pub fn status(&self, record: &FunctionRecord) -> FunctionStatus {
        let key = record.key();
        let mut warm_versions: Vec<u32> = self
            .warm
            .iter()
            .filter(|e| e.key().name == key && e.value().pre.initialized())
            .filter(|e| {
                record
                    .version(e.key().version)
                    .is_some_and(|v| v.digest == e.key().digest)
            })
            .map(|e| e.key().version)
            .collect();
        warm_versions.sort_unstable();
        let latest = record.latest().map(|v| v.version);
        let state = if latest.is_some_and(|l| warm_versions.contains(&l)) {
            "warm"
        } else {
            "zero"
        };
        let slot = self.functions.get(&key).map(|s| s.clone());
        let load32 = |f: fn(&FunctionSlot) -> &AtomicU32| {
            slot.as_ref().map_or(0, |s| f(s).load(Ordering::Relaxed))
        };
        FunctionStatus {
            state,
            warm_versions,
            in_flight: load32(|s| &s.in_flight),
            queued: load32(|s| &s.queued),
            cold_starts: slot
                .as_ref()
                .map_or(0, |s| s.cold_starts.load(Ordering::Relaxed)),
            last_call_ms: slot
                .as_ref()
                .map(|s| s.last_call_ms.load(Ordering::Relaxed))
                .filter(|ms| *ms > 0),
        }
    }

    /// Number of warm function versions.
    pub fn warm_count(&self) -> usize {
        self.warm
            .iter()
            .filter(|e| e.value().pre.initialized())
            .count()
    }
}

/// A call counted against its tenant; uncounted when dropped.
struct TenantSlot(Arc<AtomicU32>);

impl Drop for TenantSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Decrements a counter when dropped.
struct Decrement<'a>(&'a AtomicU32);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
