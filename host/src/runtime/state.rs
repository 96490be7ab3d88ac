//! The per-invocation store data: a WASI context with no ambient authority
//! beyond what the function was granted (stdout and stderr go to the call's
//! log capture, or nowhere), the wasi-http context and its outbound hook,
//! and the resource limiter.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;

use super::memory::MemoryLease;
use super::outbound::Outbound;
use crate::capabilities::{AddressPolicy, Grants};
use crate::logs::Capture;
use crate::nn::wasi::{NnState, NnView};
use crate::telemetry::trace::TraceHeaders;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Data of one invocation's `Store`. A fresh one per call: nothing leaks
/// between invocations.
pub struct HostState {
    wasi: WasiCtx,
    nn: NnState,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outbound,
    pub(crate) limits: GuestLimits,
}

/// What a call gives its guest besides the request and its models: what
/// its function's settings grant, where its stdout and stderr go, and the
/// trace context its outgoing requests carry.
#[derive(Default)]
pub struct GuestIo {
    /// Environment variables and outgoing HTTP hosts.
    pub grants: Grants,
    /// The call's log capture; `None` discards the guest's output.
    pub logs: Option<Arc<Capture>>,
    /// Trace-context headers for outgoing requests.
    pub trace: TraceHeaders,
}

impl HostState {
    /// A store state with no preopened directories, no sockets (TCP, UDP and
    /// name lookups refused, and every address denied should they be
    /// allowed), stdout and stderr captured (or discarded), a linear-memory
    /// limit, and exactly what `io.grants` gives: its environment variables,
    /// outgoing HTTP to its allowed hosts (at addresses `addresses`
    /// permits) until `deadline`, and the models in `nn`.
    pub fn new(
        memory_limit_bytes: usize,
        memory: MemoryLease,
        nn: NnState,
        deadline: Instant,
        io: GuestIo,
        addresses: Arc<AddressPolicy>,
    ) -> Self {
        let grants = io.grants;
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        for var in &grants.env {
            wasi.env(var.name(), var.value());
        }
        if let Some(capture) = &io.logs {
            let (stdout, stderr) = capture.streams();
            wasi.stdout(stdout).stderr(stderr);
        }
        Self {
            wasi: wasi.build(),
            nn,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Outbound::new(grants.allowed_hosts, addresses, deadline, io.trace),
            limits: GuestLimits::new(memory_limit_bytes, memory),
        }
    }

    /// Sets the trace context outgoing requests carry (once the guest's
    /// span exists).
    pub(crate) fn set_trace(&mut self, trace: TraceHeaders) {
        self.hooks.set_trace(trace);
    }
}

impl HostState {
    /// The `wasi:nn` view of this store.
    pub(crate) fn nn(&mut self) -> NnView<'_> {
        NnView {
            state: &mut self.nn,
            table: &mut self.table,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// Caps linear memory (at the function's limit, and within the platform's
/// budget) and records what the guest used.
pub(crate) struct GuestLimits {
    memory_limit: usize,
    /// The call's share of the platform's guest memory.
    lease: MemoryLease,
    /// Bytes of every linear memory of the store together.
    committed: usize,
    /// Largest linear memory the guest reached, in bytes.
    pub(crate) peak_memory: usize,
    /// Set when a growth was refused because of the limit.
    pub(crate) hit_memory_limit: bool,
    /// Set when a growth was refused because of the platform's budget.
    pub(crate) hit_platform_memory: bool,
}

impl GuestLimits {
    fn new(memory_limit: usize, lease: MemoryLease) -> Self {
        Self {
            memory_limit,
            lease,
            committed: 0,
            peak_memory: 0,
            hit_memory_limit: false,
            hit_platform_memory: false,
        }
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool> {
        if desired > self.memory_limit || maximum.is_some_and(|m| desired > m) {
            self.hit_memory_limit = true;
            return Ok(false);
        }
        let committed = self
            .committed
            .saturating_sub(current)
            .saturating_add(desired);
        if !self.lease.grow_to(committed as u64) {
            self.hit_platform_memory = true;
            return Ok(false);
        }
        self.committed = committed;
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool> {
        Ok(maximum.is_none_or(|m| desired <= m))
    }
}
