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
//! Beyond the bound, runs wait in order. There is no lock around a model's
//! run; the pool's lock covers only picking a thread.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use tokio::sync::oneshot;

/// A run; what it returns hands the result over.
type Job = Box<dyn FnOnce() -> Deliver + Send>;
type Deliver = Box<dyn FnOnce() + Send>;

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
    /// Runs waiting for a thread (every thread busy, at the bound).
    waiting: VecDeque<Job>,
    threads: usize,
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

    /// Runs `work` on a pool thread; the result arrives on the receiver.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<Result<T, PoolError>> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
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
            state.waiting.push_back(job);
        }
        rx
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
        if let Some(next) = state.waiting.pop_front() {
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
        let first = pool.spawn(thread_id).await.unwrap().unwrap();
        for _ in 0..20 {
            assert_eq!(pool.spawn(thread_id).await.unwrap().unwrap(), first);
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
                pool.spawn(move || {
                    gate.wait();
                    thread_id()
                })
            })
            .collect();
        // Two more wait for a thread.
        let order = Arc::new(Mutex::new(Vec::new()));
        let queued: Vec<_> = (0..2)
            .map(|i| {
                let order = order.clone();
                pool.spawn(move || order.lock().unwrap().push(i))
            })
            .collect();
        assert_eq!(pool.threads(), 3);
        gate.wait();
        let mut ids = Vec::new();
        for rx in blocked {
            ids.push(rx.await.unwrap().unwrap());
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
            pool.spawn(move || {
                gate.wait();
            })
        };
        let order = Arc::new(Mutex::new(Vec::new()));
        let queued: Vec<_> = (0..4)
            .map(|i| {
                let order = order.clone();
                pool.spawn(move || order.lock().unwrap().push(i))
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
    async fn a_panicking_run_is_an_error_and_the_thread_serves_on() {
        let pool = InferencePool::new(1);
        #[allow(clippy::panic, reason = "the panic is the test")]
        let result = pool.spawn(|| panic!("boom")).await.unwrap();
        assert!(matches!(result, Err(PoolError::Panicked)));
        assert_eq!(pool.spawn(|| 7).await.unwrap().unwrap(), 7);
        assert_eq!(pool.threads(), 1);
    }
}
