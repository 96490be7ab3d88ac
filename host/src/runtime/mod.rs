//! The wasmtime side of glia: one `Engine` (Cranelift, pooling allocator,
//! epoch interruption with a single ticker thread), one `Linker` with the
//! platform's interfaces, and the per-invocation `Store`.
//!
//! Every invocation gets a fresh `Store` (nothing leaks between calls), a
//! linear-memory limit, and a wall-clock deadline enforced two ways: the epoch
//! callback interrupts guest code once the deadline passes (and otherwise
//! yields to the async runtime every tick, so a spinning guest cannot hog a
//! worker thread), and a timer stops host-side waits, which epochs cannot
//! reach.

pub mod cpu;
pub mod memory;
mod outbound;
mod state;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig,
    Store, Trap, UpdateDeadline,
};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

use crate::capabilities::AddressPolicy;
use crate::config::RuntimeConfig;
use crate::nn::wasi::NnState;
use crate::telemetry::trace::TraceHeaders;
use cpu::{CpuGate, Fair};
pub use memory::{MemoryBudget, MemoryFull, MemoryLease};
pub use state::{GuestIo, HostState};
use tracing::Instrument as _;

/// Boxed error carried by response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of a response produced by a guest (or by the API).
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;
/// A deployed function version, linked and ready to instantiate.
pub type FunctionPre = ProxyPre<HostState>;

const MIB: u64 = 1024 * 1024;
/// Extra native stack for host frames on top of the largest wasm stack.
const ASYNC_STACK_HEADROOM: usize = 512 * 1024;
/// Core instances, memories and tables one component may use, on average, when
/// sizing the pool from the number of component instances.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;
/// Bytes of each linear memory reset in place (not decommitted) on release,
/// where the kernel cannot say which pages a call dirtied: the first 128 KiB
/// are reset with memset whether they were touched or not.
const LINEAR_MEMORY_KEEP_RESIDENT: usize = 128 * 1024;
/// The same where it can (Linux 6.7 and later, `PAGEMAP_SCAN`): up to this
/// many dirtied bytes, wherever they are, are reset in place and stay
/// resident for the next call, instead of being decommitted and faulted in
/// again. Untouched pages cost nothing, so the bound can be large; it is
/// what one idle pool slot may keep resident.
const LINEAR_MEMORY_KEEP_DIRTY: usize = 1024 * 1024;
/// Bytes of each table reset with memset on release.
const TABLE_KEEP_RESIDENT: usize = 16 * 1024;
/// Slots decommitted together. One: a slot's memory goes back to the
/// kernel when its call ends, so resident memory follows the guest memory
/// budget (with `PAGEMAP_SCAN`, a call that dirtied less than
/// `LINEAR_MEMORY_KEEP_DIRTY` decommits nothing, so batching saved nothing
/// on the common path, while sixteen released 128 MiB slots stayed
/// resident until the batch was full).
const DECOMMIT_BATCH_SIZE: usize = 1;

/// Failures to build the engine.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "creating the wasmtime engine (pooling allocator for {instances} instances of {memory_mb} MiB): {source:#}; \
         the pool reserves address space for every instance's memories up front: \
         lower runtime.max_instances, or check `ulimit -v`"
    )]
    Engine {
        instances: u32,
        memory_mb: u64,
        source: wasmtime::Error,
    },
    #[error("linking the platform interfaces: {0}")]
    Link(wasmtime::Error),
    #[error("starting the epoch ticker: {0}")]
    Ticker(std::io::Error),
    #[error("starting the guest threads: {0}")]
    Guests(std::io::Error),
}

/// Why loading a compiled artifact failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading compiled artifact: {0}")]
    Deserialize(String),
    #[error("{0}")]
    Link(String),
    #[error("the component does not export wasi:http/incoming-handler: {0}")]
    Export(String),
}

/// How an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the function did not finish within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("the function exceeded its memory limit of {limit_mb} MiB ({trap})")]
    MemoryLimit { limit_mb: u64, trap: String },
    #[error("the function trapped: {reason}")]
    Trap {
        reason: String,
        backtrace: Option<String>,
    },
    #[error("the function returned without sending a response")]
    NoResponse,
    #[error("the function answered with an error: {0:?}")]
    GuestError(ErrorCode),
    #[error("the platform is at its instance capacity")]
    Capacity,
    #[error(
        "the platform's guest memory budget is exhausted; the function could not grow its \
         memory (runtime.guest_memory_budget_mb)"
    )]
    PlatformMemory,
    #[error("internal error: {0}")]
    Internal(String),
}

impl InvokeError {
    /// A copy for records, with the guest's error code reduced to its text.
    pub fn clone_kind(&self) -> InvokeError {
        match self {
            InvokeError::Timeout { timeout_ms } => InvokeError::Timeout {
                timeout_ms: *timeout_ms,
            },
            InvokeError::MemoryLimit { limit_mb, trap } => InvokeError::MemoryLimit {
                limit_mb: *limit_mb,
                trap: trap.clone(),
            },
            InvokeError::Trap { reason, backtrace } => InvokeError::Trap {
                reason: reason.clone(),
                backtrace: backtrace.clone(),
            },
            InvokeError::NoResponse => InvokeError::NoResponse,
            InvokeError::GuestError(code) => InvokeError::Internal(format!("{code:?}")),
            InvokeError::Capacity => InvokeError::Capacity,
            InvokeError::PlatformMemory => InvokeError::PlatformMemory,
            InvokeError::Internal(m) => InvokeError::Internal(m.clone()),
        }
    }
}

/// Limits for one invocation.
#[derive(Clone)]
pub struct InvokeLimits {
    /// When the invocation must be over (response body included).
    pub deadline: Instant,
    pub timeout: Duration,
    pub memory_bytes: u64,
    /// Whose share of the guest CPU the call runs on.
    pub tenant: Arc<str>,
    /// What the call holds of the platform's guest memory; its guest's
    /// memory grows within it.
    pub memory: MemoryLease,
}

/// The engine, the linker, the epoch ticker, and the threads guests run
/// on with the CPU and memory they share.
pub struct Runtime {
    engine: Engine,
    /// The threads guests run on, apart from the server's own, so that the
    /// control plane and `/healthz` never wait behind guest work.
    guests: Option<tokio::runtime::Runtime>,
    /// Guest CPU, shared between tenants.
    cpu: Arc<CpuGate>,
    /// The epoch tick: how often a running guest yields at the latest.
    tick: Duration,
    /// Guest memory, one budget for the platform.
    memory: Arc<MemoryBudget>,
    /// Where guests' outgoing requests may connect.
    addresses: Arc<AddressPolicy>,
    linker: Linker<HostState>,
    compatibility_hash: String,
    ticker_stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Runtime {
    /// Builds the engine with a pooling allocator sized from `cfg`, links the
    /// platform interfaces, and starts the epoch ticker. Guests' outgoing
    /// requests connect only where `addresses` permits.
    pub fn new(cfg: &RuntimeConfig, addresses: AddressPolicy) -> Result<Self, RuntimeError> {
        let pagemap = PoolingAllocationConfig::is_pagemap_scan_available();
        let engine =
            Engine::new(&engine_config(cfg, pagemap)).map_err(|source| RuntimeError::Engine {
                instances: cfg.max_instances,
                memory_mb: cfg.max_memory_mb,
                source,
            })?;
        if pagemap {
            tracing::info!(
                keep_resident_kib = LINEAR_MEMORY_KEEP_DIRTY / 1024,
                "instance memory: only the pages a call dirtied are reset (PAGEMAP_SCAN)"
            );
        } else {
            tracing::info!(
                memset_kib = LINEAR_MEMORY_KEEP_RESIDENT / 1024,
                "instance memory: no PAGEMAP_SCAN on this kernel (Linux 6.7+); the first memset_kib of each slot are reset with memset, the rest decommitted"
            );
        }
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(RuntimeError::Link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(RuntimeError::Link)?;
        crate::nn::wasi::add_to_linker(&mut linker, HostState::nn).map_err(RuntimeError::Link)?;

        let compatibility_hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };

        let threads = match cfg.guest_threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => usize::try_from(n).unwrap_or(1),
        };
        let guests = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("glia-guest")
            // New calls arrive on the shared queue; a guest thread looks
            // there after every slice rather than every 61st, so a call
            // never waits behind many slices of calls already running.
            .global_queue_interval(1)
            .enable_all()
            .build()
            .map_err(RuntimeError::Guests)?;
        let memory_budget = match cfg.guest_memory_budget_mb {
            0 => memory::default_limit(),
            mb => mb.saturating_mul(MIB),
        };
        tracing::info!(
            guest_threads = threads,
            guest_memory_budget_mib = memory_budget / MIB,
            "guests run on their own threads, sharing CPU and memory between tenants"
        );

        let cpu = Arc::new(CpuGate::new(threads).with_preemption({
            // A new epoch makes every running guest reach its deadline
            // check (and yield) at its next loop back-edge or call.
            let engine = engine.weak();
            move || {
                if let Some(engine) = engine.upgrade() {
                    engine.increment_epoch();
                }
            }
        }));

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.weak();
            let stop = ticker_stop.clone();
            let tick = Duration::from_millis(cfg.epoch_tick_ms);
            std::thread::Builder::new()
                .name("glia-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        match engine.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                })
                .map_err(RuntimeError::Ticker)?
        };

        Ok(Self {
            engine,
            guests: Some(guests),
            cpu,
            tick: Duration::from_millis(cfg.epoch_tick_ms),
            memory: Arc::new(MemoryBudget::new(memory_budget)),
            addresses: Arc::new(addresses),
            linker,
            compatibility_hash,
            ticker_stop,
            ticker: Some(ticker),
        })
    }

    /// Guest CPU, shared between tenants.
    pub fn cpu(&self) -> &CpuGate {
        &self.cpu
    }

    /// The platform's guest memory budget.
    pub fn memory(&self) -> &Arc<MemoryBudget> {
        &self.memory
    }

    /// Identifies the compiler configuration; artifacts are stored under it.
    pub fn compatibility_hash(&self) -> &str {
        &self.compatibility_hash
    }

    /// Compiles a component ahead of time (blocking; run it off the async
    /// workers). Fails on invalid wasm or unsupported features.
    pub fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        self.engine
            .precompile_component(bytes)
            .map_err(|e| format!("{e:#}"))
    }

    /// [`precompile`](Self::precompile), measured: also returns the CPU
    /// time the compile used on every thread it ran on, which is what an
    /// upload is billed. The compile runs on a thread pool of its own (as
    /// many threads as the machine has cores, as wasmtime's parallel
    /// compilation would use), whose threads' CPU clocks are read when it
    /// is done, so concurrent compiles are not counted in each other's.
    pub fn precompile_measured(&self, bytes: &[u8]) -> (Result<Vec<u8>, String>, Duration) {
        use crate::cputime::thread_cpu_time;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("glia-compile-{i}"))
            .build();
        match pool {
            Ok(pool) => {
                let compiled = pool.install(|| self.precompile(bytes));
                let cpu = pool.broadcast(|_| thread_cpu_time()).into_iter().sum();
                (compiled, cpu)
            }
            // No threads to be had: compile on this one.
            Err(_) => {
                let before = thread_cpu_time();
                let compiled = self.precompile(bytes);
                (compiled, thread_cpu_time().saturating_sub(before))
            }
        }
    }

    /// Loads a compiled artifact that glia itself wrote, and links it.
    /// Blocking: run it off the async workers.
    pub fn load(&self, artifact: &Path) -> Result<FunctionPre, LoadError> {
        #[expect(
            unsafe_code,
            reason = "the artifact was produced by this engine's precompile and is stored under its compatibility hash in glia's own data directory"
        )]
        let component = unsafe { Component::deserialize_file(&self.engine, artifact) }
            .map_err(|e| LoadError::Deserialize(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        ProxyPre::new(pre).map_err(|e| LoadError::Export(format!("{e:#}")))
    }

    /// Starts one invocation of `pre` with a fresh store, on the guest
    /// threads: hands the guest the request, and returns at once with the
    /// guest ([`GuestFinished`], which knows what it used once it has
    /// finished) and its response to come ([`Started::response`]). The body
    /// keeps streaming from the guest until it finishes or the deadline
    /// passes; `guard` is held until then. The guest belongs to the caller
    /// from the start, so a caller that stops waiting for the response
    /// still has the guest to wait for. The guest gets exactly `io.grants`
    /// and the models in `nn`, and no other authority. Instantiation and
    /// the handler are the `glia.instantiate` and `glia.guest` spans,
    /// children of the current span.
    pub fn start<B, G>(
        &self,
        pre: &FunctionPre,
        limits: InvokeLimits,
        request: http::Request<B>,
        nn: NnState,
        io: GuestIo,
        guard: G,
    ) -> Result<(Started, GuestFinished), InvokeError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
        G: Send + 'static,
    {
        let bytes_in = Arc::new(AtomicU64::new(0));
        let memory_limit = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
        let state = HostState::new(
            memory_limit,
            limits.memory.clone(),
            nn,
            limits.deadline,
            io,
            self.addresses.clone(),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let deadline = limits.deadline;
        // At every epoch: stop at the deadline; yield once a tick has
        // passed since the last yield (so other tasks on the guest threads
        // run), or sooner when the CPU gate has someone to run instead (a
        // preemption adds an epoch for that); otherwise go on.
        let (cpu, tenant, tick) = (self.cpu.clone(), limits.tenant.clone(), self.tick);
        let mut last_yield = Instant::now();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            let now = Instant::now();
            Ok(if now >= deadline {
                UpdateDeadline::Interrupt
            } else if now.duration_since(last_yield) >= tick / 2 || cpu.should_yield(&tenant) {
                last_yield = now;
                UpdateDeadline::Yield(1)
            } else {
                UpdateDeadline::Continue(1)
            })
        });

        let counted = bytes_in.clone();
        let request = request.map(|body| {
            body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    counted.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                frame
            })
            .map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
        });
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let prepared = {
            let mut http = store.data_mut().http();
            http.new_incoming_request(Scheme::Http, request)
                .and_then(|req| Ok((req, http.new_response_outparam(sender)?)))
        };
        let (req, out) = prepared.map_err(|e| InvokeError::Internal(format!("{e:#}")))?;

        let pre = pre.clone();
        let tokio_deadline = tokio::time::Instant::from_std(deadline);
        let timeout_ms = u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX);
        let limit_mb = limits.memory_bytes / MIB;
        let call_span = tracing::Span::current();
        let cpu = self.cpu.clone();
        let tenant = limits.tenant.clone();
        let Some(guests) = self.guests.as_ref() else {
            return Err(InvokeError::Internal("the guest threads are gone".into()));
        };
        let arrival = self.cpu.arriving(&tenant);
        let task = guests.spawn(async move {
            let _guard = guard;
            let started = Instant::now();
            let mut busy = Duration::ZERO;
            let result = {
                let run = async {
                    let proxy = pre
                        .instantiate_async(&mut store)
                        .instrument(tracing::debug_span!(parent: &call_span, "glia.instantiate"))
                        .await?;
                    let guest = tracing::debug_span!(parent: &call_span, "glia.guest");
                    if let Some(trace) = TraceHeaders::of(&guest) {
                        store.data_mut().set_trace(trace);
                    }
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, req, out)
                        .instrument(guest)
                        .await
                };
                let fair = Fair::new(run, cpu, tenant, arrival, &mut busy);
                tokio::time::timeout_at(tokio_deadline, fair).await
            };
            let run = started.elapsed();
            let limits = &store.data().limits;
            let outcome = GuestOutcome {
                result: result.ok(),
                hit_memory_limit: limits.hit_memory_limit,
                hit_platform_memory: limits.hit_platform_memory,
            };
            GuestReport {
                run,
                busy,
                peak_memory: limits.peak_memory as u64,
                error: outcome.into_error(timeout_ms, limit_mb),
            }
        });

        let started = Started {
            receiver,
            deadline: tokio_deadline,
            timeout_ms,
            bytes_in,
        };
        Ok((started, GuestFinished::Running(task)))
    }
}

/// An invocation on its way: its response to come.
pub struct Started {
    receiver: tokio::sync::oneshot::Receiver<
        Result<hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>, ErrorCode>,
    >,
    deadline: tokio::time::Instant,
    timeout_ms: u64,
    /// Request body bytes the guest has read so far.
    pub bytes_in: Arc<AtomicU64>,
}

impl Started {
    /// The guest's response as soon as it sets it (its body may still be
    /// streaming), or why there is none. `guest` is the invocation's guest,
    /// waited on when it ends without answering.
    pub async fn response(
        self,
        guest: &mut GuestFinished,
    ) -> Result<http::Response<ResponseBody>, InvokeError> {
        match tokio::time::timeout_at(self.deadline, self.receiver).await {
            Ok(Ok(Ok(response))) => {
                Ok(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
            }
            Ok(Ok(Err(code))) => Err(InvokeError::GuestError(code)),
            // The guest dropped its response-outparam: it finished or failed
            // without answering; its report says which.
            Ok(Err(_)) => {
                guest.finish().await;
                let error = match guest {
                    GuestFinished::Done(report) => report.error.take(),
                    GuestFinished::Running(_) => None,
                }
                .unwrap_or(InvokeError::NoResponse);
                if let GuestFinished::Done(report) = guest {
                    report.error = Some(error.clone_kind());
                }
                Err(error)
            }
            // The guest's task stops itself at the same deadline.
            Err(_elapsed) => Err(InvokeError::Timeout {
                timeout_ms: self.timeout_ms,
            }),
        }
    }
}

/// A guest that has finished, or is still running.
pub enum GuestFinished {
    Done(GuestReport),
    Running(tokio::task::JoinHandle<GuestReport>),
}

impl GuestFinished {
    /// Waits for the guest to finish (at the latest, its deadline).
    pub async fn wait(mut self) -> GuestReport {
        self.finish().await;
        self.into_report()
    }

    /// Waits for the guest to finish, keeping its report here. A wait that
    /// is given up (its future dropped) leaves the guest to the next one.
    pub async fn finish(&mut self) {
        if let GuestFinished::Running(task) = self {
            let report = task.await.unwrap_or_else(|e| GuestReport {
                error: Some(InvokeError::Internal(format!("guest task: {e}"))),
                ..GuestReport::default()
            });
            *self = GuestFinished::Done(report);
        }
    }

    /// The report of a guest that has finished; an empty one if it has not.
    pub fn into_report(self) -> GuestReport {
        match self {
            GuestFinished::Done(report) => report,
            GuestFinished::Running(_) => GuestReport::default(),
        }
    }
}

/// What a guest used, and how it ended.
#[derive(Debug, Default)]
pub struct GuestReport {
    /// From the start of instantiation to the end of the handler.
    pub run: Duration,
    /// Time spent running the guest (polling it: wasm and the host calls it
    /// makes in place), as opposed to waiting.
    pub busy: Duration,
    /// The largest linear memory it reached, in bytes.
    pub peak_memory: u64,
    /// Why it failed; `None` when its handler returned.
    pub error: Option<InvokeError>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Dropping a tokio runtime blocks, which an async context forbids:
        // its threads are let go instead, and end with the calls on them.
        if let Some(guests) = self.guests.take() {
            guests.shutdown_background();
        }
        self.ticker_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// What the guest task reports when it ends.
struct GuestOutcome {
    /// `None` when the deadline stopped it.
    result: Option<wasmtime::Result<()>>,
    hit_memory_limit: bool,
    /// A growth was refused because of the platform's memory budget.
    hit_platform_memory: bool,
}

impl GuestOutcome {
    /// Why the guest failed, or `None` when its handler returned.
    fn into_error(self, timeout_ms: u64, limit_mb: u64) -> Option<InvokeError> {
        let Some(result) = self.result else {
            return Some(InvokeError::Timeout { timeout_ms });
        };
        let Err(error) = result else {
            return None;
        };
        if self.hit_platform_memory && !self.hit_memory_limit {
            return Some(InvokeError::PlatformMemory);
        }
        Some(Self::classify(
            error,
            self.hit_memory_limit,
            timeout_ms,
            limit_mb,
        ))
    }

    fn classify(
        error: wasmtime::Error,
        hit_memory_limit: bool,
        timeout_ms: u64,
        limit_mb: u64,
    ) -> InvokeError {
        if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
            return InvokeError::Capacity;
        }
        let Some(trap) = error.downcast_ref::<Trap>() else {
            return InvokeError::Trap {
                reason: format!("{error:#}"),
                backtrace: None,
            };
        };
        if *trap == Trap::Interrupt {
            return InvokeError::Timeout { timeout_ms };
        }
        if hit_memory_limit {
            return InvokeError::MemoryLimit {
                limit_mb,
                trap: trap.to_string(),
            };
        }
        let reason = match trap {
            Trap::StackOverflow => "stack overflow (call stack exhausted)".to_string(),
            other => other.to_string(),
        };
        let backtrace = error
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|bt| bt.to_string());
        InvokeError::Trap { reason, backtrace }
    }
}

/// The engine's configuration. `pagemap`: the kernel reports which pages
/// of a mapping were written (`PAGEMAP_SCAN`, Linux 6.7), so a slot's reset
/// touches only those.
fn engine_config(cfg: &RuntimeConfig, pagemap: bool) -> Config {
    let n = cfg.max_instances;
    let max_stack = usize::try_from(cfg.max_wasm_stack_kb * 1024).unwrap_or(usize::MAX);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(n.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(n.saturating_mul(TABLES_PER_COMPONENT))
        .total_stacks(n)
        .max_memories_per_module(2)
        .max_tables_per_module(2)
        .max_memory_size(usize::try_from(cfg.max_memory_mb * MIB).unwrap_or(usize::MAX))
        // Reset what a call dirtied in place rather than with madvise:
        // fewer syscalls, TLB flushes and page faults per call. With
        // `PAGEMAP_SCAN` only the dirtied pages are reset (a no-op guest's
        // requests/s went up by about 40 %); the rest is decommitted at once.
        .linear_memory_keep_resident(if pagemap {
            LINEAR_MEMORY_KEEP_DIRTY
        } else {
            LINEAR_MEMORY_KEEP_RESIDENT
        })
        .pagemap_scan(if pagemap {
            wasmtime::Enabled::Yes
        } else {
            wasmtime::Enabled::No
        })
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .decommit_batch_size(DECOMMIT_BATCH_SIZE);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        // Wasm backtraces do not need it, and registering native unwind
        // tables is a large part of loading an artifact; glia loads and
        // unloads artifacts on every cold start and scale-to-zero.
        .native_unwind_info(false)
        .max_wasm_stack(max_stack)
        .async_stack_size(max_stack + ASYNC_STACK_HEADROOM)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

#[cfg(test)]
mod tests {
    /// The world in `wit/` is the standard proxy world plus wasi:nn, and
    /// nothing glia-specific.
    #[test]
    fn wit_world_is_proxy_plus_wasi_nn() {
        let mut resolve = wit_parser::Resolve::default();
        let (pkg, _) = resolve
            .push_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit"))
            .expect("wit/ parses");
        let world = resolve
            .select_world(&[pkg], Some("glia:platform/model-function"))
            .expect("world exists");
        let name = |key: &wit_parser::WorldKey| resolve.name_world_key(key);
        let w = &resolve.worlds[world];
        let imports: Vec<String> = w.imports.keys().map(name).collect();
        let exports: Vec<String> = w.exports.keys().map(name).collect();
        assert_eq!(exports, ["wasi:http/incoming-handler@0.2.12"]);
        for nn in ["tensor", "graph", "inference", "errors"] {
            let want = format!("wasi:nn/{nn}@0.2.0-rc-2024-10-28");
            assert!(imports.contains(&want), "missing {want}: {imports:?}");
        }
        for i in &imports {
            assert!(i.starts_with("wasi:"), "non-standard import {i}");
        }
        assert!(imports.contains(&"wasi:http/outgoing-handler@0.2.12".to_string()));
    }
}
