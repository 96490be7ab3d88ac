//! Outgoing `wasi:http` requests: refused unless the function's
//! `allowed_hosts` covers their authority, and then sent by
//! wasmtime-wasi-http's default sender with timeouts cut at the
//! invocation's deadline.
//!
//! The check runs in the host call (`outgoing-handler.handle`), on the
//! request the guest built; the guest never sees a socket. Name resolution
//! and the connection happen on the host, so an allowed name is trusted to
//! resolve where its owner says it does.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::capabilities::{self, HostPattern};
use crate::telemetry::trace::TraceHeaders;

/// The body-completion future wasmtime-wasi-http hands around.
type IoFuture = Box<dyn Future<Output = wasmtime_wasi_http::Result<(), HttpError>> + Send>;

/// What [`WasiHttpHooks::send_request`] returns.
type SendFuture = Box<
    dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>> + Send,
>;

/// The wasi-http hooks of one invocation.
pub(crate) struct Outbound {
    allowed: Vec<HostPattern>,
    deadline: Instant,
    /// The call's trace context (`traceparent`), which every request leaving
    /// on the call's behalf carries.
    trace: TraceHeaders,
}

impl Outbound {
    /// Requests may go where `allowed` says (nowhere when empty), until
    /// `deadline`, carrying `trace`.
    pub(crate) fn new(allowed: Vec<HostPattern>, deadline: Instant, trace: TraceHeaders) -> Self {
        Self {
            allowed,
            deadline,
            trace,
        }
    }

    pub(crate) fn set_trace(&mut self, trace: TraceHeaders) {
        self.trace = trace;
    }

    /// The guest's timeouts, each cut to the time left before the deadline.
    fn options(&self, asked: Option<RequestOptions>) -> Option<RequestOptions> {
        let left = self.deadline.checked_duration_since(Instant::now())?;
        let asked = asked.unwrap_or_default();
        let cut = |timeout: Option<Duration>| Some(timeout.map_or(left, |t| t.min(left)));
        Some(RequestOptions {
            connect_timeout: cut(asked.connect_timeout),
            first_byte_timeout: cut(asked.first_byte_timeout),
            between_bytes_timeout: cut(asked.between_bytes_timeout),
        })
    }
}

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        self.trace.apply(request.headers_mut());
        if !capabilities::allows(&self.allowed, request.uri()) {
            tracing::debug!(uri = %request.uri(), "outgoing request denied");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let Some(options) = self.options(options) else {
            return Box::new(async { Err(HttpError::ConnectionTimeout) });
        };
        Box::new(async move {
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as IoFuture,
            ))
        })
    }

    // The guest's network failures are its own business: reported to it,
    // logged at debug level only.

    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> ErrorCode {
        tracing::debug!(error = %err, "outgoing request failed");
        ErrorCode::HttpProtocolError
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> ErrorCode {
        tracing::debug!(error = %err, "outgoing connection failed");
        ErrorCode::ConnectionRefused
    }

    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> ErrorCode {
        tracing::debug!(error = %err, "outgoing TLS failed");
        ErrorCode::TlsProtocolError
    }
}
