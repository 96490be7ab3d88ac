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
//! A guest of a tenant that used less than a running one does not wait for
//! the next tick: the gate makes the running guests yield at once (it bumps
//! the engine's epoch), so the slot changes hands within microseconds.
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
    /// Makes the running guests yield now rather than at the next tick.
    preempt: Option<Box<dyn Fn() + Send + Sync>>,
    /// A preemption was asked for and no slot was given back since.
    preempting: AtomicBool,
}

#[derive(Default)]
struct State {
    running: usize,
    /// Guests waiting, all tenants together.
    waiting: usize,
    /// Slots kept free for arriving calls ([`CpuGate::arriving`]).
    reserved: usize,
    tenants: HashMap<Arc<str>, Tenant>,
}

/// A slot kept for an arriving call; given up when dropped unused.
pub struct Arrival {
    gate: Option<Arc<CpuGate>>,
}

impl Drop for Arrival {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            let woken = {
                let mut state = gate.lock();
                state.reserved = state.reserved.saturating_sub(1);
                CpuGate::grant(&mut state, gate.slots)
            };
            for waker in woken {
                waker.wake();
            }
        }
    }
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
            preempt: None,
            preempting: AtomicBool::new(false),
        }
    }

    /// Has `preempt` make the running guests yield at once when a guest of
    /// a tenant with nothing running, and no more CPU used than one of
    /// theirs, starts to wait, so it gets a slot within a moment rather
    /// than at the next epoch tick.
    #[must_use]
    pub fn with_preemption(mut self, preempt: impl Fn() + Send + Sync + 'static) -> Self {
        self.preempt = Some(Box::new(preempt));
        self
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
    /// nobody waits (or one was kept for this call's `arrival`), else in
    /// the tenant's turn.
    fn acquire(&self, tenant: &Arc<str>, arrival: Option<Arrival>) -> Option<Arc<Waiter>> {
        let mut state = self.lock();
        let kept = arrival.is_some_and(|mut a| a.gate.take().is_some());
        if kept {
            state.reserved = state.reserved.saturating_sub(1);
        }
        let free = state.running + state.reserved < self.slots && (kept || state.waiting == 0);
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
            ..
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
        // A tenant with nothing running, no further than one that holds a
        // slot: the running guests yield now.
        let (used, idle) = (entry.used_ns, entry.running == 0);
        let ahead = idle
            && tenants
                .iter()
                .any(|(name, t)| t.running > 0 && t.used_ns >= used && name != tenant);
        drop(state);
        if ahead {
            self.preempt_now();
        }
        Some(waiter)
    }

    /// A call of `tenant` is about to start on the guest threads. When its
    /// tenant has nothing running and has used no more than one that does,
    /// the running guests yield now and the next free slot is kept for the
    /// call (until its first poll takes it, or it is dropped): otherwise the
    /// slot would go to a waiter already queued on the guest thread, and the
    /// new call would wait behind it, however little its tenant has used.
    pub fn arriving(self: &Arc<Self>, tenant: &str) -> Option<Arrival> {
        let ahead = {
            let mut state = self.lock();
            if state.running + state.reserved < self.slots {
                return None;
            }
            let mine = state.tenants.get(tenant);
            let ahead = match mine {
                Some(t) if t.active() => {
                    t.running == 0
                        && state.tenants.iter().any(|(name, other)| {
                            other.running > 0 && other.used_ns >= t.used_ns && &**name != tenant
                        })
                }
                // It will be placed level with the least-served competitor.
                _ => state
                    .tenants
                    .iter()
                    .any(|(name, other)| other.running > 0 && &**name != tenant),
            };
            if ahead {
                state.reserved += 1;
            }
            ahead
        };
        if !ahead {
            return None;
        }
        self.preempt_now();
        Some(Arrival {
            gate: Some(self.clone()),
        })
    }

    /// Whether a running guest of `tenant` should give its slot up now: a
    /// slot is kept for an arriving call, or a guest of another tenant that
    /// used less than this one waits. (Epoch ticks make every guest
    /// yield regardless; this decides for the epochs a preemption adds.)
    pub fn should_yield(&self, tenant: &str) -> bool {
        let state = self.lock();
        if state.reserved > 0 {
            return true;
        }
        if state.waiting == 0 {
            return false;
        }
        let mine = state.tenants.get(tenant).map_or(0, |t| t.used_ns);
        state
            .tenants
            .iter()
            .any(|(name, t)| !t.waiting.is_empty() && t.used_ns < mine && &**name != tenant)
    }

    fn preempt_now(&self) {
        if let Some(preempt) = &self.preempt
            && !self.preempting.swap(true, Ordering::AcqRel)
        {
            preempt();
        }
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
        self.preempting.store(false, Ordering::Release);
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
        while state.running + state.reserved < slots {
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
    gate: Arc<CpuGate>,
    tenant: Arc<str>,
    /// A slot kept for the call's next poll, if any: on its arrival, and
    /// whenever it is woken from outside while a less-served tenant runs.
    kept: Arc<Mutex<Option<Arrival>>>,
    waiting: Option<Arc<Waiter>>,
    /// The waker the inner future gets, which notes how it is woken.
    noting: Option<Arc<Noting>>,
    busy: &'a mut Duration,
}

/// The waker a guest gets: notes when it wakes itself (a yield), and when
/// something else wakes it (I/O it waited for) while other tenants' guests
/// hold every slot, asks the gate to keep it a slot and make them yield,
/// as a scheduler preempts for a task that wakes up.
struct Noting {
    woken: AtomicBool,
    /// The guest is being polled: its wakes are its own.
    polling: AtomicBool,
    waker: Waker,
    gate: Arc<CpuGate>,
    tenant: Arc<str>,
    kept: Arc<Mutex<Option<Arrival>>>,
}

impl std::task::Wake for Noting {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if !self.polling.load(Ordering::Acquire)
            && let Some(arrival) = self.gate.arriving(&self.tenant)
        {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            // One kept slot at a time; a second is given up at once.
            if kept.is_none() {
                *kept = Some(arrival);
            }
        }
        self.waker.wake_by_ref();
    }
}

impl<'a, F> Fair<'a, F> {
    pub(crate) fn new(
        inner: F,
        gate: Arc<CpuGate>,
        tenant: Arc<str>,
        arrival: Option<Arrival>,
        busy: &'a mut Duration,
    ) -> Self {
        Self {
            inner: Box::pin(inner),
            gate,
            tenant,
            kept: Arc::new(Mutex::new(arrival)),
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
                    polling: AtomicBool::new(false),
                    waker: waker.clone(),
                    gate: self.gate.clone(),
                    tenant: self.tenant.clone(),
                    kept: self.kept.clone(),
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
        let kept = this.kept.lock().unwrap_or_else(|p| p.into_inner()).take();
        if this.waiting.is_none() {
            this.waiting = this.gate.acquire(&this.tenant, kept);
        } else {
            // Already in line: a slot kept meanwhile goes to someone else.
            drop(kept);
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
        noting.polling.store(true, Ordering::Release);
        let started = Instant::now();
        let out = this.inner.as_mut().poll(&mut Context::from_waker(&waker));
        let held = started.elapsed();
        noting.polling.store(false, Ordering::Release);
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
            gate.clone(),
            tenant,
            None,
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

    #[test]
    fn a_less_served_tenant_that_waits_preempts_the_running_guests() {
        let preempted = Arc::new(AtomicU64::new(0));
        let counter = preempted.clone();
        let gate = CpuGate::new(1).with_preemption(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert!(gate.acquire(&a, None).is_none());
        gate.release("a", Duration::from_millis(5));
        assert!(gate.acquire(&a, None).is_none(), "a runs again, 5 ms used");
        // a's own next call waits behind it: no preemption.
        let a2 = gate.acquire(&a, None).expect("waits");
        assert_eq!(preempted.load(Ordering::Relaxed), 0);
        // b used nothing: the running guest is made to yield, once.
        let b1 = gate.acquire(&b, None).expect("waits");
        assert_eq!(preempted.load(Ordering::Relaxed), 1);
        let c1 = gate.acquire(&c, None).expect("waits");
        assert_eq!(
            preempted.load(Ordering::Relaxed),
            1,
            "one preemption at a time"
        );
        // The slot goes to a less-served tenant, not to a's next call.
        gate.release("a", Duration::from_millis(1));
        assert!(b1.granted.load(Ordering::Acquire) || c1.granted.load(Ordering::Acquire));
        assert!(!a2.granted.load(Ordering::Acquire));
    }

    #[test]
    fn an_arriving_call_of_a_less_served_tenant_gets_the_next_slot() {
        let gate = Arc::new(CpuGate::new(1));
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert!(gate.arriving("a").is_none(), "a free slot needs no keeping");
        assert!(gate.acquire(&a, None).is_none());
        gate.release("a", Duration::from_millis(10));
        assert!(gate.acquire(&a, None).is_none());
        let a2 = gate.acquire(&a, None).expect("a's second call waits");
        assert!(!gate.should_yield("a"), "only a's own call waits");
        let arrival = gate.arriving("b").expect("b is ahead of a");
        assert!(gate.should_yield("a"), "a slot is kept for b");
        // a gives its slot back: kept for b, not handed to a's next call.
        gate.release("a", Duration::from_millis(1));
        assert!(!a2.granted.load(Ordering::Acquire));
        assert!(gate.acquire(&b, Some(arrival)).is_none(), "b takes it");
        assert!(!gate.should_yield("b"), "a used more than b");
        gate.release("b", Duration::from_micros(50));
        assert!(a2.granted.load(Ordering::Acquire), "then a goes on");
        // An arrival dropped unused gives its slot on.
        let waiting_a = gate.acquire(&a, None).expect("waits");
        let unused = gate.arriving("c").expect("c is ahead");
        gate.release("a", Duration::from_millis(1));
        assert!(!waiting_a.granted.load(Ordering::Acquire));
        drop(unused);
        assert!(waiting_a.granted.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_gives_its_slot_on() {
        let gate = Arc::new(CpuGate::new(1));
        let a: Arc<str> = Arc::from("a");
        assert!(gate.acquire(&a, None).is_none(), "free");
        let waiting = gate.acquire(&Arc::from("b"), None).expect("waits");
        let next = gate.acquire(&Arc::from("c"), None).expect("waits");
        // b goes away before its turn, c after being granted the slot.
        gate.abandon("b", &waiting);
        gate.release("a", Duration::from_millis(1));
        assert!(next.granted.load(Ordering::Acquire));
        gate.abandon("c", &next);
        assert_eq!(gate.lock().running, 0);
        assert!(gate.lock().tenants.values().all(|t| !t.active()));
        assert!(gate.acquire(&a, None).is_none(), "free again");
    }
}
