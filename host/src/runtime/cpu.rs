//! Guest CPU, shared between tenants.
//!
//! Guests run on their own threads (one per core), and a running guest
//! yields at every epoch tick. Admission bounds how many calls a tenant
//! has in flight, but not how the cores are shared among them: with a FIFO
//! run queue, a tenant with a thousand spinning calls gets a thousand
//! slices for every slice of a tenant with one call. Here a guest may run
//! only while it holds one of the gate's slots (one per guest thread), it
//! gives its slot back whenever it stops (it yields at a tick, waits on
//! I/O, or ends), and a freed slot goes to the waiting tenant that has used
//! the least guest CPU, so every tenant with work gets an equal share of
//! the cores, whatever its number of calls, and a tenant that runs a short
//! call now and then gets the next free slot.
//!
//! Each tenant's CPU time is counted from when it starts to compete; a
//! tenant that comes (back) starts level with the least-served tenant
//! already competing, so it cannot have saved up credit while idle (the
//! way CFS places a waking task at the run queue's minimum virtual
//! runtime). Within a tenant, calls take slots in arrival order.
//!
//! The uncontended path, a free slot and nobody waiting, is one short
//! mutex section to take it and one to give it back.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// See the module docs.
pub struct CpuGate {
    slots: usize,
    state: Mutex<State>,
    /// Times a guest had to wait for a slot.
    waits: AtomicU64,
}

#[derive(Default)]
struct State {
    running: usize,
    /// Guests waiting, all tenants together.
    waiting: usize,
    tenants: HashMap<Arc<str>, Tenant>,
}

/// A tenant that holds slots, waits for one, or did so lately.
#[derive(Default)]
struct Tenant {
    /// Guest CPU used since it started competing, in nanoseconds.
    used_ns: u64,
    running: usize,
    waiting: VecDeque<Arc<Waiter>>,
}

impl Tenant {
    /// Holds a slot or waits for one.
    fn active(&self) -> bool {
        self.running > 0 || !self.waiting.is_empty()
    }
}

/// Tenants remembered between their turns; past it, every idle one is
/// forgotten (and starts level with the others when it comes back).
const MAX_REMEMBERED: usize = 256;

#[derive(Default)]
struct Waiter {
    granted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl CpuGate {
    /// A gate of `slots` slots (at least one).
    pub fn new(slots: usize) -> Self {
        Self {
            slots: slots.max(1),
            state: Mutex::new(State::default()),
            waits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Slots, one per guest thread.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Guests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Times a guest has had to wait for a slot.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Takes a slot for one of `tenant`'s guests, now if one is free and
    /// nobody waits, else in the tenant's turn.
    fn acquire(&self, tenant: &Arc<str>) -> Option<Arc<Waiter>> {
        let mut state = self.lock();
        let free = state.running < self.slots && state.waiting == 0;
        let active = state.tenants.get(tenant).is_some_and(Tenant::active);
        if !active {
            // A tenant that starts (or resumes) competing is placed level
            // with the least-served tenant competing now: no credit for
            // idle time. Idle tenants at or below that level have nothing
            // left to remember and are forgotten, which keeps the table to
            // the tenants competing and those still in debt.
            let floor = state
                .tenants
                .values()
                .filter(|t| t.active())
                .map(|t| t.used_ns)
                .min();
            let over = state.tenants.len() >= MAX_REMEMBERED;
            state.tenants.retain(|name, t| {
                t.active() || name == tenant || (!over && floor.is_some_and(|f| t.used_ns > f))
            });
            let entry = state.tenants.entry(tenant.clone()).or_default();
            entry.used_ns = entry.used_ns.max(floor.unwrap_or(0));
        }
        let State {
            running,
            waiting,
            tenants,
        } = &mut *state;
        let entry = tenants.entry(tenant.clone()).or_default();
        if free {
            entry.running += 1;
            *running += 1;
            return None;
        }
        let waiter = Arc::new(Waiter::default());
        entry.waiting.push_back(waiter.clone());
        *waiting += 1;
        self.waits.fetch_add(1, Ordering::Relaxed);
        Some(waiter)
    }

    /// Gives back a slot `tenant` held for `held`, and hands it to the next
    /// waiter, if any.
    fn release(&self, tenant: &str, held: Duration) {
        self.give_back(tenant, held, false);
    }

    /// Gives back a slot `tenant` held for `held` while its guest yields,
    /// ready to go on: the guest waits for its next turn from now, behind
    /// the tenants that used less (and gets the slot straight back when
    /// nobody else waits).
    fn yield_turn(&self, tenant: &str, held: Duration) -> Option<Arc<Waiter>> {
        self.give_back(tenant, held, true)
    }

    fn give_back(&self, tenant: &str, held: Duration, again: bool) -> Option<Arc<Waiter>> {
        let mut waiter = None;
        let woken = {
            let mut state = self.lock();
            if let Some(t) = state.tenants.get_mut(tenant) {
                t.running = t.running.saturating_sub(1);
                let ns = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX);
                t.used_ns = t.used_ns.saturating_add(ns);
                if again {
                    let w = Arc::new(Waiter::default());
                    t.waiting.push_back(w.clone());
                    waiter = Some(w);
                }
            }
            if waiter.is_some() {
                state.waiting += 1;
            }
            state.running = state.running.saturating_sub(1);
            Self::grant(&mut state, self.slots)
        };
        for waker in woken {
            waker.wake();
        }
        waiter
    }

    /// Hands free slots to the waiting tenants that used the least CPU;
    /// returns the wakers to call once the lock is released.
    fn grant(state: &mut State, slots: usize) -> Vec<Waker> {
        let mut woken = Vec::new();
        while state.running < slots {
            let next = state
                .tenants
                .iter_mut()
                .filter(|(_, t)| !t.waiting.is_empty())
                // Equal use: the tenant with fewer calls in play first.
                .min_by_key(|(_, t)| (t.used_ns, t.running + t.waiting.len()))
                .map(|(_, t)| t);
            let Some(tenant) = next else { break };
            let Some(waiter) = tenant.waiting.pop_front() else {
                break;
            };
            tenant.running += 1;
            state.running += 1;
            state.waiting = state.waiting.saturating_sub(1);
            waiter.granted.store(true, Ordering::Release);
            let waker = waiter
                .waker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            woken.extend(waker);
        }
        woken
    }

    /// Stops waiting (the call went away): a slot already handed to the
    /// waiter is given back; otherwise the waiter leaves its queue.
    fn abandon(&self, tenant: &str, waiter: &Arc<Waiter>) {
        let granted = {
            let mut state = self.lock();
            if waiter.granted.load(Ordering::Acquire) {
                true
            } else {
                if let Some(t) = state.tenants.get_mut(tenant) {
                    let before = t.waiting.len();
                    t.waiting.retain(|w| !Arc::ptr_eq(w, waiter));
                    let removed = before - t.waiting.len();
                    state.waiting = state.waiting.saturating_sub(removed);
                }
                false
            }
        };
        if granted {
            self.release(tenant, Duration::ZERO);
        }
    }
}

/// A future that runs only while it holds a slot of `gate` for `tenant`:
/// each poll of the inner future takes a slot first (waiting in the
/// tenant's turn) and gives it back after. A poll that ends in a yield (the
/// inner future woke itself: an epoch tick) queues for the next turn at
/// once, so a yielding guest keeps its place; one that ends waiting for
/// I/O holds no place until it is woken. Adds the time spent polling to
/// `busy`.
pub(crate) struct Fair<'a, F> {
    inner: Pin<Box<F>>,
    gate: &'a CpuGate,
    tenant: Arc<str>,
    waiting: Option<Arc<Waiter>>,
    /// The waker the inner future gets, which notes when it wakes itself.
    noting: Option<Arc<Noting>>,
    busy: &'a mut Duration,
}

/// A waker that notes being woken, and passes the wake on.
struct Noting {
    woken: AtomicBool,
    waker: Waker,
}

impl std::task::Wake for Noting {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake_by_ref();
    }
}

impl<'a, F> Fair<'a, F> {
    pub(crate) fn new(
        inner: F,
        gate: &'a CpuGate,
        tenant: Arc<str>,
        busy: &'a mut Duration,
    ) -> Self {
        Self {
            inner: Box::pin(inner),
            gate,
            tenant,
            waiting: None,
            noting: None,
            busy,
        }
    }

    /// The noting waker for `waker`, reset: the one from the last poll when
    /// it wakes the same task.
    fn noting(&mut self, waker: &Waker) -> Arc<Noting> {
        match &self.noting {
            Some(n) if n.waker.will_wake(waker) => {
                n.woken.store(false, Ordering::Release);
                n.clone()
            }
            _ => {
                let n = Arc::new(Noting {
                    woken: AtomicBool::new(false),
                    waker: waker.clone(),
                });
                self.noting = Some(n.clone());
                n
            }
        }
    }
}

impl<F: Future> Future for Fair<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if this.waiting.is_none() {
            this.waiting = this.gate.acquire(&this.tenant);
        }
        if let Some(waiter) = &this.waiting {
            if !waiter.granted.load(Ordering::Acquire) {
                *waiter.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
                // Granted between the check and storing the waker: go on.
                if !waiter.granted.load(Ordering::Acquire) {
                    return Poll::Pending;
                }
            }
            this.waiting = None;
        }
        let noting = this.noting(cx.waker());
        let waker = Waker::from(noting.clone());
        let started = Instant::now();
        let out = this.inner.as_mut().poll(&mut Context::from_waker(&waker));
        let held = started.elapsed();
        *this.busy += held;
        if out.is_pending() && noting.woken.load(Ordering::Acquire) {
            this.waiting = this.gate.yield_turn(&this.tenant, held);
        } else {
            this.gate.release(&this.tenant, held);
        }
        out
    }
}

impl<F> Drop for Fair<'_, F> {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiting.take() {
            self.gate.abandon(&self.tenant, &waiter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest of `tenant` that spins for `slice` per poll, `polls` times,
    /// yielding in between; records the tenant when each poll runs.
    async fn guest(
        gate: Arc<CpuGate>,
        tenant: &str,
        polls: usize,
        slice: Duration,
        log: Arc<Mutex<Vec<String>>>,
    ) {
        let tenant: Arc<str> = Arc::from(tenant);
        let mut busy = Duration::ZERO;
        let mut left = polls;
        let name = tenant.to_string();
        Fair::new(
            std::future::poll_fn(move |cx| {
                log.lock().expect("log").push(name.clone());
                let until = Instant::now() + slice;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                left -= 1;
                if left == 0 {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }),
            &gate,
            tenant,
            &mut busy,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenant_with_one_call_runs_between_anothers_many() {
        let gate = Arc::new(CpuGate::new(1));
        let log = Arc::new(Mutex::new(Vec::new()));
        let slice = Duration::from_millis(2);
        let mut flood = Vec::new();
        for _ in 0..20 {
            flood.push(tokio::spawn(guest(
                gate.clone(),
                "flood",
                10,
                slice,
                log.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let arrived = log.lock().expect("log").len();
        guest(gate.clone(), "light", 3, slice, log.clone()).await;
        let seen = log.lock().expect("log").clone();
        let light: Vec<usize> = seen
            .iter()
            .enumerate()
            .filter(|(_, t)| *t == "light")
            .map(|(ix, _)| ix)
            .collect();
        assert_eq!(light.len(), 3);
        // Each of the light tenant's polls waited for a few of the flood's
        // slices (as many as it ran ahead of the flood), never for the
        // flood's queue of twenty.
        assert!(light[0] - arrived <= 2, "{light:?}, arrived at {arrived}");
        for pair in light.windows(2) {
            assert!(pair[1] - pair[0] <= 5, "{light:?} in {} polls", seen.len());
        }
        for f in flood {
            f.await.expect("flood");
        }
        assert_eq!(gate.waiting(), 0);
        assert_eq!(gate.lock().running, 0);
        assert!(
            gate.lock().tenants.values().all(|t| !t.active()),
            "nothing held"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tenants_get_equal_shares_whatever_their_number_of_calls() {
        let gate = Arc::new(CpuGate::new(1));
        let log = Arc::new(Mutex::new(Vec::new()));
        let slice = Duration::from_millis(1);
        let mut all = Vec::new();
        for _ in 0..8 {
            all.push(tokio::spawn(guest(
                gate.clone(),
                "many",
                25,
                slice,
                log.clone(),
            )));
        }
        all.push(tokio::spawn(guest(
            gate.clone(),
            "one",
            100,
            slice,
            log.clone(),
        )));
        for task in all {
            task.await.expect("guest");
        }
        let seen = log.lock().expect("log").clone();
        // While both compete (the first 150 polls), each gets about half.
        let one = seen.iter().take(150).filter(|t| *t == "one").count();
        assert!((55..=95).contains(&one), "{one} of 150");
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_gives_its_slot_on() {
        let gate = Arc::new(CpuGate::new(1));
        let a: Arc<str> = Arc::from("a");
        assert!(gate.acquire(&a).is_none(), "free");
        let waiting = gate.acquire(&Arc::from("b")).expect("waits");
        let next = gate.acquire(&Arc::from("c")).expect("waits");
        // b goes away before its turn, c after being granted the slot.
        gate.abandon("b", &waiting);
        gate.release("a", Duration::from_millis(1));
        assert!(next.granted.load(Ordering::Acquire));
        gate.abandon("c", &next);
        assert_eq!(gate.lock().running, 0);
        assert!(gate.lock().tenants.values().all(|t| !t.active()));
        assert!(gate.acquire(&a).is_none(), "free again");
    }
}
