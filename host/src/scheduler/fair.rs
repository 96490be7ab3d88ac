//! The platform gate: a counting semaphore whose waiters are served one
//! tenant at a time.
//!
//! A FIFO semaphore serves waiting calls in arrival order, so a tenant
//! that queues a thousand calls makes everyone else wait behind all of
//! them. Here each tenant waits in its own FIFO, and a freed slot goes to
//! the next tenant in turn (round robin over the tenants that are
//! waiting): a tenant with one waiting call gets the next slot or the one
//! after, however long the others' queues are. Within a tenant, calls keep
//! their arrival order.
//!
//! The uncontended path is one short mutex section; waiting calls park on
//! a oneshot channel, and a released slot is handed directly to the next
//! waiter (the count does not drop in between, so nobody can barge in).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// See the module docs.
pub struct FairGate {
    limit: u32,
    inner: Mutex<Inner>,
}

struct Inner {
    in_use: u32,
    /// Tenants with waiting calls, in service order.
    queues: VecDeque<(String, VecDeque<Waiter>)>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    wake: oneshot::Sender<()>,
}

/// One slot of the gate, released when dropped.
pub struct PlatformPermit {
    gate: Arc<FairGate>,
}

impl Drop for PlatformPermit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl FairGate {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            inner: Mutex::new(Inner {
                in_use: 0,
                queues: VecDeque::new(),
                next_id: 0,
            }),
        }
    }

    /// The state, with waiters whose calls are gone (a client hung up
    /// while queued) dropped when a slot is free, so they never hold up a
    /// free slot.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.in_use < self.limit && !inner.queues.is_empty() {
            for (_, queue) in inner.queues.iter_mut() {
                queue.retain(|w| !w.wake.is_closed());
            }
            inner.queues.retain(|(_, q)| !q.is_empty());
        }
        inner
    }

    /// Slots in use.
    pub fn in_use(&self) -> u32 {
        self.lock().in_use
    }

    /// Calls waiting.
    pub fn waiting(&self) -> usize {
        self.lock().queues.iter().map(|(_, q)| q.len()).sum()
    }

    /// A slot now, if one is free and nobody is waiting.
    pub fn try_acquire(self: &Arc<Self>) -> Option<PlatformPermit> {
        let mut inner = self.lock();
        if inner.in_use < self.limit && inner.queues.is_empty() {
            inner.in_use += 1;
            Some(PlatformPermit { gate: self.clone() })
        } else {
            None
        }
    }

    /// A slot for one of `tenant`'s calls, waiting in turn until
    /// `deadline`; `None` when the deadline passed first.
    pub async fn acquire(
        self: &Arc<Self>,
        tenant: &str,
        deadline: tokio::time::Instant,
    ) -> Option<PlatformPermit> {
        let (id, mut woken) = {
            let mut inner = self.lock();
            if inner.in_use < self.limit && inner.queues.is_empty() {
                inner.in_use += 1;
                return Some(PlatformPermit { gate: self.clone() });
            }
            let (tx, rx) = oneshot::channel();
            let id = inner.next_id;
            inner.next_id = inner.next_id.wrapping_add(1);
            let waiter = Waiter { id, wake: tx };
            match inner.queues.iter_mut().find(|(t, _)| t == tenant) {
                Some((_, queue)) => queue.push_back(waiter),
                None => inner
                    .queues
                    .push_back((tenant.to_string(), VecDeque::from([waiter]))),
            }
            (id, rx)
        };
        if let Ok(Ok(())) = tokio::time::timeout_at(deadline, &mut woken).await {
            return Some(PlatformPermit { gate: self.clone() });
        }
        // Timed out (or the future was dropped mid-wait, which runs no code
        // here: see `release`, which skips waiters that are gone).
        let mut inner = self.lock();
        let mut found = false;
        for (_, queue) in inner.queues.iter_mut() {
            if let Some(at) = queue.iter().position(|w| w.id == id) {
                queue.remove(at);
                found = true;
                break;
            }
        }
        inner.queues.retain(|(_, q)| !q.is_empty());
        drop(inner);
        if found {
            return None;
        }
        // A slot was handed over just as the deadline passed: take it.
        woken
            .try_recv()
            .ok()
            .map(|()| PlatformPermit { gate: self.clone() })
    }

    /// Hands the slot to the next waiting tenant's oldest call, or frees it.
    fn release(&self) {
        let mut inner = self.lock();
        while let Some((tenant, mut queue)) = inner.queues.pop_front() {
            let Some(waiter) = queue.pop_front() else {
                continue;
            };
            if !queue.is_empty() {
                // Its next call waits for the other tenants' turns.
                inner.queues.push_back((tenant, queue));
            }
            if waiter.wake.send(()).is_ok() {
                return;
            }
            // That call gave up; try the next.
        }
        inner.in_use = inner.in_use.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn later(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_tenant_in_turn() {
        let gate = Arc::new(FairGate::new(1));
        let held = gate.try_acquire().expect("free");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Tenant a queues five calls before tenant b queues one.
        for (i, tenant) in ["a", "a", "a", "a", "a", "b"].into_iter().enumerate() {
            let gate = gate.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire(tenant, later(5_000)).await.expect("admitted");
                order.lock().expect("lock").push(format!("{tenant}{i}"));
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(permit);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(gate.waiting(), 6);
        drop(held);
        for t in tasks {
            t.await.expect("task");
        }
        let order = order.lock().expect("lock").clone();
        assert_eq!(order, ["a0", "b5", "a1", "a2", "a3", "a4"]);
        assert_eq!(gate.in_use(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_times_out_leaves_no_trace() {
        let gate = Arc::new(FairGate::new(1));
        let held = gate.try_acquire().expect("free");
        assert!(gate.acquire("a", later(20)).await.is_none());
        assert_eq!(gate.waiting(), 0);
        // A waiter whose future is dropped is skipped on release.
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.acquire("b", later(60_000)).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        assert_eq!(gate.in_use(), 0);
        assert!(gate.try_acquire().is_some());
    }
}
