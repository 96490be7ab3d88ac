//! Data plane: `/fn/{name}[@{version}]/{rest...}` runs a function.
//!
//! The guest sees `/{rest...}` with the original query, headers and body; its
//! response streams back. Every response, error or not, carries the
//! invocation id; every call is a trace, is counted in the metrics, and
//! keeps what the guest wrote to stdout and stderr.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};

use super::metering::{self, Meter};
use super::{ApiError, AppState, COLD_START_HEADER, COLD_START_US_HEADER, INVOCATION_ID_HEADER};
use crate::billing::{LedgerWriter, Outcome};
use crate::logs::CallInfo;
use crate::nn::wasi::NnState;
use crate::runtime::{BoxError, GuestIo, InvokeLimits, ResponseBody};
use crate::scheduler::VersionKey;
use crate::telemetry::trace::{self, TraceHeaders};
use tracing::Instrument as _;

const MIB: u64 = 1024 * 1024;

/// A parsed data-plane target.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    name: &'a str,
    version: Option<u32>,
    /// Path the guest sees, always starting with `/`.
    guest_path: String,
}

/// Parses `/fn/{name}[@{version}][/{rest}]`.
fn parse_target(path: &str) -> Result<Target<'_>, ApiError> {
    let rest = path
        .strip_prefix("/fn/")
        .ok_or_else(|| ApiError::not_found("call functions at /fn/{name}/{path}"))?;
    let (target, tail) = match rest.split_once('/') {
        Some((t, tail)) => (t, tail),
        None => (rest, ""),
    };
    let (name, version) = match target.split_once('@') {
        Some((name, v)) => {
            let version = v.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`{v}` is not a version number: use /fn/{name}@N/..."
                ))
            })?;
            (name, Some(version))
        }
        None => (target, None),
    };
    Ok(Target {
        name,
        version,
        guest_path: format!("/{tail}"),
    })
}

/// Runs one invocation; always answers, always with the invocation id, and
/// (with billing on) meters it. The call is one trace (`glia.invoke`).
pub(super) async fn handle<B>(
    state: &AppState,
    billing: Option<&Arc<LedgerWriter>>,
    path: &str,
    req: Request<B>,
) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let id = uuid::Uuid::now_v7().simple().to_string();
    let span = trace::invocation_span(&id, req.method(), req.headers());
    let meter = Meter::new(id, span.clone());
    let response = call(state, billing, path, req, meter)
        .instrument(span.clone())
        .await;
    let status = response.status();
    trace::record(&span, "http.response.status_code", status.as_u16());
    if status.is_server_error() {
        trace::record(&span, "otel.status_code", "error");
    }
    response
}

async fn call<B>(
    state: &AppState,
    billing: Option<&Arc<LedgerWriter>>,
    path: &str,
    req: Request<B>,
    mut meter: Meter,
) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let id = meter.id.clone();
    let result = run(state, path, req, &mut meter, billing.is_none()).await;
    if let Err(e) = &result {
        // Refusals (4xx) are routine under load; failures are not.
        if e.status.is_server_error() {
            tracing::warn!(invocation_id = %id, path, status = e.status.as_u16(), kind = e.kind, detail = %e.detail, "invocation failed");
        } else {
            tracing::debug!(invocation_id = %id, path, status = e.status.as_u16(), kind = e.kind, "invocation refused");
        }
    }
    let mut response = match (result, billing) {
        (Ok(response), None) => {
            metering::observe(state, &meter, Outcome::Ok);
            response
        }
        (Err(e), None) => {
            metering::observe(state, &meter, meter.outcome.unwrap_or(Outcome::Error));
            e.into_response(Some(&id))
        }
        (Ok(response), Some(billing)) => metering::finish_ok(state, billing, meter, response).await,
        (Err(e), Some(billing)) => metering::finish_error(state, billing, meter, e).await,
    };
    tracing::debug!(invocation_id = %id, path, status = response.status().as_u16(), "invocation");
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(INVOCATION_ID_HEADER, value);
    }
    response
}

/// Resolves, admits, warms and invokes; fills `meter` as it goes.
/// `nn_headers_now`: set the `wasi:nn` headers from what happened before
/// the guest answered (when metering does not wait for the guest to end).
async fn run<B>(
    state: &AppState,
    path: &str,
    req: Request<B>,
    meter: &mut Meter,
    nn_headers_now: bool,
) -> Result<Response<ResponseBody>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let target = parse_target(path)?;
    let resolved = state.registry.resolve(target.name, target.version)?;
    let settings = &resolved.settings;
    meter.target = Some(metering::Target {
        function: resolved.name.clone(),
        version: resolved.version.version,
        memory_mb: settings.memory_mb,
    });
    meter.span.record("glia.function", resolved.name.as_str());
    meter
        .span
        .record("glia.function.version", resolved.version.version);
    let timeout = Duration::from_millis(settings.timeout_ms);

    let queued = Instant::now();
    let mut admission = state
        .scheduler
        .admit(&resolved)
        .instrument(tracing::debug_span!("glia.admission"))
        .await
        .map_err(|e| {
            meter.outcome = Some(Outcome::Rejected);
            ApiError::from(e)
        })?;
    meter.queue = queued.elapsed();
    let ready = state
        .scheduler
        .ready(&VersionKey::of(&resolved), Some(&mut admission))
        .await
        .map_err(|e| {
            meter.outcome = Some(Outcome::Error);
            ApiError::from(e)
        })?;
    meter.cold_start = ready.cold_start;
    meter
        .span
        .record("glia.cold_start", ready.cold_start.is_some());

    let io = GuestIo {
        logs: state.telemetry.logs.as_ref().map(|logs| {
            logs.capture(CallInfo {
                invocation_id: meter.id.clone(),
                function: resolved.name.clone(),
                version: resolved.version.version,
                started_at_ms: meter.started_at_ms,
            })
        }),
        trace: TraceHeaders::forwarded(req.headers()),
    };
    let req = rewrite_uri(req, &target.guest_path)?;
    let req = req.map(|body| http_body_util::BodyExt::map_err(body, |e| e.into()));
    let limits = InvokeLimits {
        deadline: std::time::Instant::now() + timeout,
        timeout,
        memory_bytes: settings.memory_mb * MIB,
    };
    let nn = NnState::new(
        state.models.clone(),
        settings.models.clone(),
        limits.deadline,
        usize::try_from(state.config.models.max_raw_load_mb.saturating_mul(MIB))
            .unwrap_or(usize::MAX),
    )
    .with_metrics(state.telemetry.metrics.clone());
    let nn_usage = nn.usage();
    meter.nn = Some(nn_usage.clone());
    let invoked = state
        .runtime
        .invoke(&ready.pre, limits, req, nn, io, admission)
        .await;
    meter.bytes_in = Some(invoked.bytes_in);
    meter.finished = Some(invoked.finished);
    let mut response = invoked.response.map_err(|e| {
        meter.outcome = Some(metering::outcome_of(&e));
        ApiError::from(e)
    })?;
    if nn_headers_now {
        metering::nn_headers(&mut response, &nn_usage);
    }
    let headers = response.headers_mut();
    headers.insert(
        COLD_START_HEADER,
        HeaderValue::from_static(if ready.cold_start.is_some() {
            "true"
        } else {
            "false"
        }),
    );
    if let Some(cold) = ready.cold_start {
        headers.insert(
            COLD_START_US_HEADER,
            HeaderValue::from(u64::try_from(cold.as_micros()).unwrap_or(u64::MAX)),
        );
    }
    Ok(response)
}

/// Gives the guest the path after the function name, with the original query
/// and an authority (from the URI or the `host` header).
fn rewrite_uri<B>(req: Request<B>, guest_path: &str) -> Result<Request<B>, ApiError> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{guest_path}?{q}"),
        None => guest_path.to_string(),
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "localhost".to_string());
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ApiError::bad_request(format!("invalid request target: {e}")))?;
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("/fn/hello/a/b").expect("ok");
        assert_eq!(
            (t.name, t.version, t.guest_path.as_str()),
            ("hello", None, "/a/b")
        );
        let t = parse_target("/fn/hello@3").expect("ok");
        assert_eq!(
            (t.name, t.version, t.guest_path.as_str()),
            ("hello", Some(3), "/")
        );
        let t = parse_target("/fn/hello/").expect("ok");
        assert_eq!(t.guest_path, "/");
        assert!(parse_target("/fn/hello@x/").is_err());
        assert!(parse_target("/fn/hello@0/").is_err());
    }
}
