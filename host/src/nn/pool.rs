//! The threads inference runs on when a run is too long to do in place on a
//! request worker.
//!
//! tokio's blocking pool hands each job to whichever idle thread wakes
//! first, so consecutive runs of a model land on different threads. Inference
//! libraries keep state per thread (libtorch's and oneDNN's scratch buffers
//! and caches, ONNX Runtime's per-thread allocations, CUDA handles), and a
//! run on a thread that has not run the model lately pays to warm it again:
//! with libtorch on the CPU, a small CNN's run took 6–9 % longer rotating over
//! four threads than on one (docs/benchmarks.md).
//!
//! This pool hands a run to the most recently idle thread (a stack, not a
//! queue), so at low concurrency one warm thread runs everything, and under
//! load as many threads run side by side as there are runs, up to a bound.
//! Beyond the bound, runs wait, each tenant in its own line, and a thread
//! that frees up takes the next tenant's oldest run in turn: a tenant with
//! a thousand runs queued delays another's by at most one run of each. A
//! tenant may have at most [`MAX_WAITING_PER_TENANT`] runs waiting; beyond,
//! a run is refused at once. A run's time is measured on its thread, from
//! when it starts, so time spent waiting for a thread is nobody's run time.
//! There is no lock around a model's run; the pool's lock covers only
//! picking a thread.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A run; what it returns hands the result over.
type Job = Box<dyn FnOnce() -> Deliver + Send>;
type Deliver = Box<dyn FnOnce() + Send>;

/// Where a run's result arrives, with how long it ran.
pub type Ran<T> = oneshot::Receiver<Result<(T, Duration), PoolError>>;

/// Runs one tenant may have waiting for a thread.
pub const MAX_WAITING_PER_TENANT: usize = 64;

/// Inference threads, most recently idle first.
pub struct InferencePool {
    shared: Arc<Shared>,
    max_threads: usize,
}

struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Idle threads, the most recently idle last.
    idle: Vec<Arc<Worker>>,
    /// Runs waiting for a thread (every thread busy, at the bound), per
    /// tenant, tenants in turn.
    waiting: VecDeque<(Arc<str>, VecDeque<Job>)>,
    threads: usize,
}

impl State {
    /// The next waiting run: the oldest of the tenant whose turn it is.
    fn next_waiting(&mut self) -> Option<Job> {
        while let Some((tenant, mut runs)) = self.waiting.pop_front() {
            let Some(job) = runs.pop_front() else {
                continue;
            };
            if !runs.is_empty() {
                self.waiting.push_back((tenant, runs));
            }
            return Some(job);
        }
        None
    }
}

/// One thread's mailbox.
#[derive(Default)]
struct Worker {
    job: Mutex<Option<Job>>,
    ready: Condvar,
}

/// Why a run did not return.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the inference run panicked")]
    Panicked,
    #[error("no inference thread could be started: {0}")]
    Spawn(String),
    #[error("the tenant has {MAX_WAITING_PER_TENANT} inference runs waiting for a thread already")]
    Busy,
}

impl InferencePool {
    /// A pool of at most `max_threads` threads, started as runs need them.
    pub fn new(max_threads: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
            }),
            max_threads: max_threads.max(1),
        }
    }

    /// The process's pool: four threads per core (runs that wait on a GPU
    /// or on memory still leave the cores busy), at least 8.
    pub fn global() -> &'static InferencePool {
        static POOL: OnceLock<InferencePool> = OnceLock::new();
        POOL.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            InferencePool::new((cores * 4).max(8))
        })
    }

    /// Runs `work` for `tenant` on a pool thread; its result and how long
    /// it ran (not counting its wait for a thread) arrive on the receiver.
    /// A run whose receiver is dropped before a thread takes it up does not
    /// run. Refused with [`PoolError::Busy`] when the tenant has too many
    /// runs waiting.
    pub fn spawn<T: Send + 'static>(
        &self,
        tenant: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Ran<T>, PoolError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                return Box::new(|| {});
            }
            let started = Instant::now();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .map(|out| (out, started.elapsed()))
                .map_err(|_| PoolError::Panicked);
            Box::new(move || {
                let _ = tx.send(result);
            })
        });
        let mut state = self.shared.lock();
        if let Some(worker) = state.idle.pop() {
            drop(state);
            *worker.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job);
            worker.ready.notify_one();
        } else if state.threads < self.max_threads {
            state.threads += 1;
            drop(state);
            let shared = self.shared.clone();
            let worker = Arc::new(Worker::default());
            let spawned = std::thread::Builder::new()
                .name("glia-inference".into())
                .spawn(move || work_loop(&shared, &worker, job));
            if let Err(e) = spawned {
                self.shared.lock().threads -= 1;
                // The job (and its sender) went with the failed closure, so
                // the receiver reports a closed channel; say why in the log.
                tracing::error!(error = %e, "starting an inference thread failed");
            }
        } else {
            match state.waiting.iter_mut().find(|(t, _)| &**t == tenant) {
                Some((_, runs)) if runs.len() >= MAX_WAITING_PER_TENANT => {
                    return Err(PoolError::Busy);
                }
                Some((_, runs)) => runs.push_back(job),
                None => state
                    .waiting
                    .push_back((Arc::from(tenant), VecDeque::from([job]))),
            }
        }
        Ok(rx)
    }

    /// Threads started so far.
    pub fn threads(&self) -> usize {
        self.shared.lock().threads
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn work_loop(shared: &Shared, worker: &Arc<Worker>, first: Job) {
    let mut job = first;
    loop {
        let deliver = job();
        // A waiting run next; else this thread goes on top of the idle
        // stack, before the result is handed over, so the caller's next run
        // finds it there, and sleeps until handed one.
        let mut state = shared.lock();
        if let Some(next) = state.next_waiting() {
            drop(state);
            deliver();
            job = next;
            continue;
        }
        state.idle.push(worker.clone());
        drop(state);
        deliver();
        let mut slot = worker.job.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(next) = slot.take() {
                job = next;
                break;
            }
            slot = worker.ready.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn thread_id() -> std::thread::ThreadId {
        std::thread::current().id()
    }

    #[tokio::test]
    async fn sequential_runs_stay_on_one_warm_thread() {
        let pool = InferencePool::new(8);
        let first = pool
            .spawn("t", thread_id)
            .unwrap()
            .await
            .unwrap()
            .unwrap()
            .0;
        for _ in 0..20 {
            assert_eq!(
                pool.spawn("t", thread_id)
                    .unwrap()
                    .await
                    .unwrap()
                    .unwrap()
                    .0,
                first
            );
        }
        assert_eq!(pool.threads(), 1);
    }

    #[tokio::test]
    async fn concurrent_runs_get_threads_up_to_the_bound_then_wait_in_order() {
        let pool = InferencePool::new(3);
        let gate = Arc::new(std::sync::Barrier::new(4));
        // Three runs block together on three threads.
        let blocked: Vec<_> = (0..3)
            .map(|_| {
                let gate = gate.clone();
                pool.spawn("t", move || {
                    gate.wait();
                    thread_id()
                })
                .unwrap()
            })
            .collect();
        // Two more wait for a thread.
        let order = Arc::new(Mutex::new(Vec::new()));
        let queued: Vec<_> = (0..2)
            .map(|i| {
                let order = order.clone();
                pool.spawn("t", move || order.lock().unwrap().push(i))
                    .unwrap()
            })
            .collect();
        assert_eq!(pool.threads(), 3);
        gate.wait();
        let mut ids = Vec::new();
        for rx in blocked {
            ids.push(rx.await.unwrap().unwrap().0);
        }
        ids.sort_by_key(|id| format!("{id:?}"));
        ids.dedup();
        assert_eq!(ids.len(), 3, "three runs ran side by side");
        for rx in queued {
            rx.await.unwrap().unwrap();
        }
        let mut ran = order.lock().unwrap().clone();
        ran.sort_unstable();
        assert_eq!(ran, vec![0, 1]);
        assert_eq!(pool.threads(), 3);
    }

    #[tokio::test]
    async fn waiting_runs_go_first_come_first_served() {
        let pool = InferencePool::new(1);
        let gate = Arc::new(std::sync::Barrier::new(2));
        let blocker = {
            let gate = gate.clone();
            pool.spawn("t", move || {
                gate.wait();
            })
            .unwrap()
        };
        let order = Arc::new(Mutex::new(Vec::new()));
        let queued: Vec<_> = (0..4)
            .map(|i| {
                let order = order.clone();
                pool.spawn("t", move || order.lock().unwrap().push(i))
                    .unwrap()
            })
            .collect();
        gate.wait();
        blocker.await.unwrap().unwrap();
        for rx in queued {
            rx.await.unwrap().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn waiting_tenants_take_turns_and_each_may_queue_only_so_much() {
        let pool = InferencePool::new(1);
        let gate = Arc::new(std::sync::Barrier::new(2));
        let blocker = {
            let gate = gate.clone();
            pool.spawn("a", move || {
                gate.wait();
            })
            .unwrap()
        };
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut queued = Vec::new();
        // a queues its limit; one more is refused at once.
        for i in 0..MAX_WAITING_PER_TENANT {
            let order = order.clone();
            queued.push(
                pool.spawn("a", move || order.lock().unwrap().push(format!("a{i}")))
                    .unwrap(),
            );
        }
        assert!(matches!(pool.spawn("a", || ()), Err(PoolError::Busy)));
        // b's one run goes after a's first, not after all of a's.
        let b = {
            let order = order.clone();
            pool.spawn("b", move || order.lock().unwrap().push("b".to_string()))
                .unwrap()
        };
        gate.wait();
        blocker.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        for rx in queued {
            rx.await.unwrap().unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order[..2], ["a0".to_string(), "b".to_string()]);
        assert_eq!(order.len(), MAX_WAITING_PER_TENANT + 1);
    }

    #[tokio::test]
    async fn a_run_given_up_before_it_starts_does_not_run_and_waiting_is_not_run_time() {
        let pool = InferencePool::new(1);
        let gate = Arc::new(std::sync::Barrier::new(2));
        let blocker = {
            let gate = gate.clone();
            pool.spawn("a", move || {
                gate.wait();
                std::thread::sleep(Duration::from_millis(100));
            })
            .unwrap()
        };
        let ran = Arc::new(Mutex::new(false));
        let flag = ran.clone();
        let abandoned = pool
            .spawn("b", move || *flag.lock().unwrap() = true)
            .unwrap();
        drop(abandoned);
        let waited = pool.spawn("c", || ()).unwrap();
        gate.wait();
        let (_, blocked_for) = blocker.await.unwrap().unwrap();
        assert!(blocked_for >= Duration::from_millis(100));
        let ((), took) = waited.await.unwrap().unwrap();
        assert!(
            took < Duration::from_millis(50),
            "its wait is not its run: {took:?}"
        );
        assert!(
            !*ran.lock().unwrap(),
            "nobody waited for it, so it never ran"
        );
    }

    #[tokio::test]
    async fn a_panicking_run_is_an_error_and_the_thread_serves_on() {
        let pool = InferencePool::new(1);
        #[allow(clippy::panic, reason = "the panic is the test")]
        let result = pool.spawn("t", || panic!("boom")).unwrap().await.unwrap();
        assert!(matches!(result, Err(PoolError::Panicked)));
        assert_eq!(pool.spawn("t", || 7).unwrap().await.unwrap().unwrap().0, 7);
        assert_eq!(pool.threads(), 1);
    }
}
