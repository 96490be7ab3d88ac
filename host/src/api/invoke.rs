//! Data plane: `/fn/{name}[@{version}]/{rest...}` runs a function.
//!
//! The guest sees `/{rest...}` with the original query, headers and body; its
//! response streams back. Every response, error or not, carries the
//! invocation id.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};

use super::{
    ApiError, AppState, COLD_START_HEADER, COLD_START_US_HEADER, INVOCATION_ID_HEADER,
    NN_DEVICE_HEADER,
};
use crate::nn::wasi::NnState;
use crate::runtime::{BoxError, InvokeLimits, ResponseBody};
use crate::scheduler::VersionKey;

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

/// Runs one invocation; always answers, always with the invocation id.
pub(super) async fn handle<B>(
    state: &AppState,
    path: &str,
    req: Request<B>,
) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let id = uuid::Uuid::now_v7().simple().to_string();
    let started = Instant::now();
    let mut response = match run(state, path, req).await {
        Ok(response) => response,
        Err(e) => {
            // Refusals (4xx) are routine under load; failures are not.
            if e.status.is_server_error() {
                tracing::warn!(invocation_id = %id, path, status = e.status.as_u16(), kind = e.kind, detail = %e.detail, "invocation failed");
            } else {
                tracing::debug!(invocation_id = %id, path, status = e.status.as_u16(), kind = e.kind, "invocation refused");
            }
            e.into_response(Some(&id))
        }
    };
    tracing::debug!(invocation_id = %id, path, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "invocation");
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(INVOCATION_ID_HEADER, value);
    }
    response
}

async fn run<B>(
    state: &AppState,
    path: &str,
    req: Request<B>,
) -> Result<Response<ResponseBody>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let target = parse_target(path)?;
    let resolved = state.registry.resolve(target.name, target.version)?;
    let settings = &resolved.settings;
    let timeout = Duration::from_millis(settings.timeout_ms);

    let mut admission = state.scheduler.admit(&resolved).await?;
    let ready = state
        .scheduler
        .ready(&VersionKey::of(&resolved), Some(&mut admission))
        .await?;

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
    );
    let nn_usage = nn.usage();
    let mut response = state
        .runtime
        .invoke(&ready.pre, limits, req, nn, admission)
        .await?;
    let headers = response.headers_mut();
    // What wasi:nn did before the guest answered.
    let nn = nn_usage.report();
    if let Some(timing) = nn.server_timing()
        && let Ok(value) = HeaderValue::from_str(&timing)
    {
        headers.append(
            http::header::HeaderName::from_static("server-timing"),
            value,
        );
    }
    let devices = nn.devices();
    if !devices.is_empty() {
        let list: Vec<&str> = devices.iter().map(|d| d.name()).collect();
        if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
            headers.insert(NN_DEVICE_HEADER, value);
        }
    }
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
