//! Admission and warm instances.
//!
//! Per function, a concurrency limit; per deployed component (keyed by
//! digest, so a redeployed or recreated name can never hit a stale entry), a
//! warm `InstancePre` loaded once — concurrent first calls wait on the same
//! load (single flight) — and a fresh `Store` per invocation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

use crate::registry::{Registry, RegistryError};
use crate::runtime::FunctionPre;

/// A function's concurrency gate, rebuilt when its limit changes.
struct Gate {
    limit: u32,
    semaphore: Arc<Semaphore>,
}

/// The scheduler's view of the deployed functions.
#[derive(Default)]
pub struct Scheduler {
    warm: DashMap<String, Arc<OnceCell<FunctionPre>>>,
    gates: DashMap<String, Gate>,
}

/// A warm instance-pre and what it took to get it.
pub struct Ready {
    pub pre: FunctionPre,
    /// Time spent loading, when this call found the function cold.
    pub cold_start: Option<Duration>,
}

/// Why a call was not admitted.
#[derive(Debug, thiserror::Error)]
#[error("function `{function}` is at its concurrency limit of {limit}")]
pub struct Overloaded {
    pub function: String,
    pub limit: u32,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits up to `wait` for one of `limit` concurrent slots of `function`.
    pub async fn admit(
        &self,
        function: &str,
        limit: u32,
        wait: Duration,
    ) -> Result<OwnedSemaphorePermit, Overloaded> {
        let semaphore = {
            let mut gate = self
                .gates
                .entry(function.to_string())
                .or_insert_with(|| Gate {
                    limit,
                    semaphore: Arc::new(Semaphore::new(limit as usize)),
                });
            if gate.limit != limit {
                *gate = Gate {
                    limit,
                    semaphore: Arc::new(Semaphore::new(limit as usize)),
                };
            }
            gate.semaphore.clone()
        };
        let overloaded = || Overloaded {
            function: function.to_string(),
            limit,
        };
        match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(overloaded()),
        }
    }

    /// The warm instance-pre for `digest`, loading it on first use.
    pub async fn ready(
        &self,
        registry: &Arc<Registry>,
        digest: &str,
    ) -> Result<Ready, RegistryError> {
        let cell = self
            .warm
            .entry(digest.to_string())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        if let Some(pre) = cell.get() {
            return Ok(Ready {
                pre: pre.clone(),
                cold_start: None,
            });
        }
        let started = Instant::now();
        let mut loaded_here = false;
        let pre = cell
            .get_or_try_init(|| {
                loaded_here = true;
                let registry = registry.clone();
                let digest = digest.to_string();
                async move {
                    tokio::task::spawn_blocking(move || registry.load(&digest))
                        .await
                        .map_err(|e| RegistryError::Internal(format!("load task: {e}")))?
                }
            })
            .await?
            .clone();
        Ok(Ready {
            pre,
            cold_start: loaded_here.then(|| started.elapsed()),
        })
    }

    /// Forgets a function's admission state (after delete).
    pub fn forget(&self, function: &str) {
        self.gates.remove(function);
    }

    /// Number of warm components.
    pub fn warm_count(&self) -> usize {
        self.warm.iter().filter(|e| e.value().initialized()).count()
    }
}
