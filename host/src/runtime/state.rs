//! The per-invocation store data: WASI context with no ambient authority
//! (stdout and stderr go to the call's log capture, or nowhere), the
//! wasi-http context, and the resource limiter.

use std::sync::Arc;

use wasmtime::component::ResourceTable;

use crate::logs::Capture;
use crate::nn::wasi::{NnState, NnView};
use crate::telemetry::trace::TraceHeaders;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

/// Data of one invocation's `Store`. A fresh one per call: nothing leaks
/// between invocations.
pub struct HostState {
    wasi: WasiCtx,
    nn: NnState,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: DenyOutgoing,
    pub(crate) limits: GuestLimits,
}

/// What a call gives its guest besides the request: where its stdout and
/// stderr go, and the trace context its outgoing requests carry.
#[derive(Default)]
pub struct GuestIo {
    /// The call's log capture; `None` discards the guest's output.
    pub logs: Option<Arc<Capture>>,
    /// Trace-context headers for outgoing requests.
    pub trace: TraceHeaders,
}

impl HostState {
    /// A store state with no preopened directories, an empty environment, no
    /// network, stdout and stderr captured (or discarded), a linear-memory
    /// limit, and the models the function was granted.
    pub fn new(memory_limit_bytes: usize, nn: NnState, io: GuestIo) -> Self {
        let mut wasi = WasiCtx::builder();
        wasi.allow_ip_name_lookup(false);
        if let Some(capture) = &io.logs {
            let (stdout, stderr) = capture.streams();
            wasi.stdout(stdout).stderr(stderr);
        }
        Self {
            wasi: wasi.build(),
            nn,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: DenyOutgoing { trace: io.trace },
            limits: GuestLimits::new(memory_limit_bytes),
        }
    }

    /// Sets the trace context outgoing requests carry (once the guest's
    /// span exists).
    pub(crate) fn set_trace(&mut self, trace: TraceHeaders) {
        self.hooks.trace = trace;
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

/// wasi-http hooks that refuse every outgoing request: functions get no
/// outbound network unless the platform grants it. A request is first given
/// the call's trace context (`traceparent`), as any request leaving on the
/// call's behalf must carry it.
struct DenyOutgoing {
    trace: TraceHeaders,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<(), HttpError>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for DenyOutgoing {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        self.trace.apply(request.headers_mut());
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }

    fn p2_error_from_hyper(&mut self, _err: &hyper::Error) -> ErrorCode {
        ErrorCode::HttpProtocolError
    }
}

/// Caps linear memory and records what the guest used.
#[derive(Debug)]
pub(crate) struct GuestLimits {
    memory_limit: usize,
    /// Largest linear memory the guest reached, in bytes.
    pub(crate) peak_memory: usize,
    /// Set when a growth was refused because of the limit.
    pub(crate) hit_memory_limit: bool,
}

impl GuestLimits {
    fn new(memory_limit: usize) -> Self {
        Self {
            memory_limit,
            peak_memory: 0,
            hit_memory_limit: false,
        }
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool> {
        if desired > self.memory_limit || maximum.is_some_and(|m| desired > m) {
            self.hit_memory_limit = true;
            return Ok(false);
        }
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
