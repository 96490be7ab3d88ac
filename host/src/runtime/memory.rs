//! The platform's guest memory budget.
//!
//! Each function has its own memory limit (`memory_mb`), but calls run
//! side by side: sixty-four calls of a function allowed 512 MiB could
//! commit 32 GiB between them, and the kernel's OOM killer would end the
//! process for every tenant. Here every byte of linear memory a guest
//! commits (its initial memories and every growth) is counted against one
//! platform-wide budget (`[runtime] guest_memory_budget_mb`, by default half
//! of the machine's memory), and given back when the call's store is gone.
//!
//! - A call is admitted only when the budget has room for what its
//!   function used last time; otherwise it waits in its queue (within its
//!   `queue_timeout_ms`), then gets `503` with `Retry-After`.
//! - A growth that would take the platform past its budget is refused: the
//!   guest sees `memory.grow` fail (which usually ends it), and the call is
//!   answered `503 platform-memory`, not the function's `memory-limit`.
//! - Under contention, no tenant grows past an equal share of the budget
//!   (the budget divided by the tenants holding or waiting for memory), so
//!   one tenant's memory-hungry flood cannot keep the others out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

const MIB: u64 = 1024 * 1024;

/// See the module docs.
pub struct MemoryBudget {
    limit: u64,
    state: Mutex<State>,
    /// Woken whenever memory is given back.
    freed: Notify,
    stats: MemoryStats,
}

/// What the budget has done since the process started.
#[derive(Debug, Default)]
pub struct MemoryStats {
    /// Calls that had to wait for memory before they started.
    pub waits: AtomicU64,
    /// Calls refused at admission for want of memory.
    pub refused_calls: AtomicU64,
    /// Growths refused because of the budget or a tenant's share.
    pub refused_growths: AtomicU64,
    /// The most bytes ever committed at once.
    pub peak_bytes: AtomicU64,
}

#[derive(Default)]
struct State {
    committed: u64,
    /// Bytes held and calls waiting, per tenant, for tenants with either.
    tenants: HashMap<Arc<str>, TenantMemory>,
}

#[derive(Default)]
struct TenantMemory {
    committed: u64,
    /// Leases (calls holding memory or about to).
    leases: usize,
    waiting: usize,
}

impl State {
    /// Tenants holding or waiting for memory.
    fn contenders(&self) -> u64 {
        self.tenants.len() as u64
    }

    /// Whether `tenant` may take `bytes` more: the budget has room, and
    /// under contention the tenant stays within its equal share.
    fn fits(&self, limit: u64, tenant: &str, bytes: u64) -> bool {
        if self.committed.saturating_add(bytes) > limit {
            return false;
        }
        // The asking tenant competes too, whether or not it holds any yet.
        let contenders = self.contenders() + u64::from(!self.tenants.contains_key(tenant));
        if contenders == 1 {
            return true;
        }
        let held = self.tenants.get(tenant).map_or(0, |t| t.committed);
        held.saturating_add(bytes) <= limit / contenders
    }

    fn forget_idle(&mut self) {
        self.tenants
            .retain(|_, t| t.committed > 0 || t.leases > 0 || t.waiting > 0);
    }
}

/// Why a call could not have memory.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the platform's guest memory is in use ({committed_mb} of {limit_mb} MiB committed); \
     the call needs about {needed_mb} MiB"
)]
pub struct MemoryFull {
    pub committed_mb: u64,
    pub limit_mb: u64,
    pub needed_mb: u64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            state: Mutex::new(State::default()),
            freed: Notify::new(),
            stats: MemoryStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes committed now.
    pub fn committed(&self) -> u64 {
        self.lock().committed
    }

    pub fn stats(&self) -> &MemoryStats {
        &self.stats
    }

    /// Reserves memory for a call of `tenant`: what `estimate` says its
    /// function committed last time (0 when unknown), waiting for memory to
    /// be given back until `deadline`. The lease grows as the guest does,
    /// gives everything back when its last clone is dropped, and then
    /// leaves what the guest committed in `estimate` for the next call.
    pub async fn reserve(
        self: &Arc<Self>,
        tenant: &str,
        estimate: &Arc<AtomicU64>,
        deadline: tokio::time::Instant,
    ) -> Result<MemoryLease, MemoryFull> {
        let tenant: Arc<str> = Arc::from(tenant);
        let bytes = estimate.load(Ordering::Relaxed).min(self.limit);
        let mut counted_wait = false;
        loop {
            // Registered before the check, so a release in between wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.lock();
                if counted_wait && let Some(t) = state.tenants.get_mut(&tenant) {
                    t.waiting = t.waiting.saturating_sub(1);
                }
                if state.fits(self.limit, &tenant, bytes) {
                    let t = state.tenants.entry(tenant.clone()).or_default();
                    t.committed += bytes;
                    t.leases += 1;
                    state.committed += bytes;
                    self.stats
                        .peak_bytes
                        .fetch_max(state.committed, Ordering::Relaxed);
                    drop(state);
                    return Ok(MemoryLease(Arc::new(Lease {
                        budget: self.clone(),
                        tenant,
                        held: AtomicU64::new(bytes),
                        peak: AtomicU64::new(0),
                        estimate: estimate.clone(),
                    })));
                }
                state.tenants.entry(tenant.clone()).or_default().waiting += 1;
                if !counted_wait {
                    self.stats.waits.fetch_add(1, Ordering::Relaxed);
                }
                counted_wait = true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                let mut state = self.lock();
                if let Some(t) = state.tenants.get_mut(&tenant) {
                    t.waiting = t.waiting.saturating_sub(1);
                }
                state.forget_idle();
                self.stats.refused_calls.fetch_add(1, Ordering::Relaxed);
                return Err(MemoryFull {
                    committed_mb: state.committed.div_ceil(MIB),
                    limit_mb: self.limit / MIB,
                    needed_mb: bytes.div_ceil(MIB),
                });
            }
        }
    }

    /// Takes `bytes` more for `tenant`, if it fits.
    fn grow(&self, tenant: &str, bytes: u64) -> bool {
        let mut state = self.lock();
        if !state.fits(self.limit, tenant, bytes) {
            self.stats.refused_growths.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if let Some(t) = state.tenants.get_mut(tenant) {
            t.committed += bytes;
        }
        state.committed += bytes;
        self.stats
            .peak_bytes
            .fetch_max(state.committed, Ordering::Relaxed);
        true
    }

    /// Gives back everything a lease held.
    fn release(&self, tenant: &str, bytes: u64) {
        {
            let mut state = self.lock();
            state.committed = state.committed.saturating_sub(bytes);
            if let Some(t) = state.tenants.get_mut(tenant) {
                t.committed = t.committed.saturating_sub(bytes);
                t.leases = t.leases.saturating_sub(1);
            }
            state.forget_idle();
        }
        self.freed.notify_waiters();
    }
}

/// One call's memory: what it holds of the budget. Cloned into the call's
/// store (where the guest grows it) and its admission; given back when the
/// last clone is dropped.
#[derive(Clone)]
pub struct MemoryLease(Arc<Lease>);

struct Lease {
    budget: Arc<MemoryBudget>,
    tenant: Arc<str>,
    /// Bytes reserved for the call: the larger of what admission reserved
    /// and what the guest committed.
    held: AtomicU64,
    /// The most the guest committed.
    peak: AtomicU64,
    /// Where the next call of the function finds what this one committed.
    estimate: Arc<AtomicU64>,
}

impl MemoryLease {
    /// Accounts for the guest's memories growing from `used` to `desired`
    /// bytes in all: free within what is held, else taken from the budget
    /// if it fits. `false` refuses the growth.
    pub fn grow_to(&self, desired: u64) -> bool {
        let lease = &self.0;
        let held = lease.held.load(Ordering::Relaxed);
        if desired > held {
            if !lease.budget.grow(&lease.tenant, desired - held) {
                return false;
            }
            lease.held.store(desired, Ordering::Relaxed);
        }
        lease.peak.fetch_max(desired, Ordering::Relaxed);
        true
    }

    /// The most linear memory the guest committed.
    pub fn peak(&self) -> u64 {
        self.0.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let peak = self.peak.load(Ordering::Relaxed);
        if peak > 0 {
            self.estimate.store(peak, Ordering::Relaxed);
        }
        self.budget
            .release(&self.tenant, self.held.load(Ordering::Relaxed));
    }
}

/// The default budget: half of the machine's memory (`MemTotal`), or 4 GiB
/// where that cannot be read.
pub fn default_limit() -> u64 {
    const FALLBACK: u64 = 4096 * MIB;
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    total.map_or(FALLBACK, |bytes| bytes / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
    }

    fn last(bytes: u64) -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(bytes))
    }

    #[tokio::test]
    async fn growth_is_refused_past_the_budget_and_given_back_at_the_end() {
        let budget = Arc::new(MemoryBudget::new(100 * MIB));
        let a = budget
            .reserve("a", &last(10 * MIB), soon(10))
            .await
            .expect("fits");
        assert_eq!(budget.committed(), 10 * MIB);
        assert!(a.grow_to(5 * MIB), "within what admission reserved");
        assert!(a.grow_to(60 * MIB));
        assert_eq!(budget.committed(), 60 * MIB);
        let b = budget.reserve("a", &last(0), soon(10)).await.expect("fits");
        assert!(!b.grow_to(41 * MIB), "past the budget");
        assert!(b.grow_to(40 * MIB));
        assert_eq!(budget.stats().peak_bytes.load(Ordering::Relaxed), 100 * MIB);
        let clone = a.clone();
        drop(a);
        assert_eq!(budget.committed(), 100 * MIB, "a clone still holds it");
        drop(clone);
        assert_eq!(budget.committed(), 40 * MIB);
        assert_eq!(b.peak(), 40 * MIB);
        let estimate = b.0.estimate.clone();
        drop(b);
        assert_eq!(budget.committed(), 0);
        assert_eq!(
            estimate.load(Ordering::Relaxed),
            40 * MIB,
            "for the next call"
        );
        assert!(budget.lock().tenants.is_empty());
    }

    #[tokio::test]
    async fn a_call_waits_for_memory_then_is_refused() {
        let budget = Arc::new(MemoryBudget::new(100 * MIB));
        let big = budget
            .reserve("a", &last(90 * MIB), soon(10))
            .await
            .expect("fits");
        let err = budget
            .reserve("a", &last(20 * MIB), soon(50))
            .await
            .err()
            .expect("refused");
        assert_eq!(err.needed_mb, 20);
        // Given back while a call waits: the waiter gets it.
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                budget
                    .reserve("a", &last(20 * MIB), soon(5_000))
                    .await
                    .is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(big);
        assert!(waiting.await.expect("task"));
        assert_eq!(budget.stats().refused_calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn under_contention_each_tenant_keeps_to_its_share() {
        let budget = Arc::new(MemoryBudget::new(100 * MIB));
        let flood = budget
            .reserve("flood", &last(0), soon(10))
            .await
            .expect("fits");
        assert!(flood.grow_to(70 * MIB), "alone, the whole budget");
        let light = budget
            .reserve("light", &last(10 * MIB), soon(10))
            .await
            .expect("fits");
        // Two tenants now: the flood is over its half and may not grow.
        assert!(!flood.grow_to(71 * MIB));
        assert!(light.grow_to(30 * MIB));
        assert!(!light.grow_to(31 * MIB), "the budget is full");
        drop(flood);
        assert!(light.grow_to(50 * MIB), "alone again");
    }
}
