//! Invocation logs over HTTP: one call's (`GET /v1/invocations/{id}/logs`)
//! and a function's latest (`GET /v1/functions/{name}/logs`).

use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode, header};

use super::error::full;
use super::{ApiError, AppState, json_response};
use crate::billing::InvocationRecord;
use crate::logs::{InvocationLog, LogError, LogStore};
use crate::runtime::ResponseBody;

type ApiResult = Result<Response<ResponseBody>, ApiError>;

/// Logs a listing returns unless told otherwise.
const DEFAULT_LIMIT: u32 = 20;
/// Most logs one listing returns.
const MAX_LIMIT: u32 = 1000;

fn store(state: &AppState) -> Result<Arc<LogStore>, ApiError> {
    state.telemetry.logs.clone().ok_or_else(|| {
        ApiError::not_found("invocation logs are off (telemetry.logs.enabled = false)")
    })
}

fn failure(e: LogError) -> ApiError {
    tracing::error!(error = %e, "reading invocation logs failed");
    ApiError::internal()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal().detail(e.to_string()))?
        .map_err(failure)
}

/// The invocation's ledger record, when billing is on and it has one.
async fn ledger_record(state: &AppState, id: &str) -> Option<InvocationRecord> {
    let ledger = state.billing.as_ref()?.ledger().clone();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || ledger.get(&id))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
}

/// `GET /v1/invocations/{id}/logs`: JSON, or the text alone with
/// `Accept: text/plain`.
pub(super) async fn invocation(
    state: &AppState,
    tenant: &str,
    id: &str,
    accept: Option<&str>,
) -> ApiResult {
    let store = store(state)?;
    let (owned_tenant, owned) = (tenant.to_string(), id.to_string());
    let log = match blocking(move || store.get(&owned_tenant, &owned)).await? {
        Some(log) => Some(log),
        // A call that wrote nothing has no log; the ledger says it ran.
        None => ledger_record(state, id)
            .await
            .filter(|record| *record.tenant == *tenant)
            .map(|record| InvocationLog {
                seq: None,
                invocation_id: record.id.to_string(),
                function: record.function.to_string(),
                version: record.version,
                started_at_ms: record.started_at_ms,
                ended_at_ms: record
                    .started_at_ms
                    .saturating_add(i64::try_from(record.usage.wall_us / 1000).unwrap_or(i64::MAX)),
                bytes_written: 0,
                bytes_kept: 0,
                truncated: false,
                entries: Vec::new(),
                tenant: record.tenant.to_string(),
            }),
    };
    let log = match log {
        Some(log) => log,
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "logs-not-found",
                "No logs for this invocation",
            )
            .detail(format!(
                "no logs for invocation `{}`: it wrote nothing to stdout or stderr, its logs \
                 expired (telemetry.logs.retention_hours), or it does not exist",
                id.chars().take(64).collect::<String>()
            )));
        }
    };
    if accept.is_some_and(|a| a.contains("text/plain")) {
        let mut response = Response::new(full(log.text()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(response);
    }
    Ok(json_response(StatusCode::OK, &log))
}

/// `GET /v1/functions/{name}/logs?after=SEQ&limit=N`: the function's `limit`
/// latest logs, oldest first; with `after`, the first `limit` written after
/// that `seq` (what `glia logs --follow` polls). `next` is the `seq` to pass
/// as `after` to get only newer logs.
pub(super) async fn function(
    state: &AppState,
    tenant: &str,
    name: &str,
    query: Option<&str>,
) -> ApiResult {
    crate::registry::check_name(name)?;
    let mut after = None;
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in crate::query::pairs(query.unwrap_or("")) {
        match &*key {
            "after" => {
                after = Some(value.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("`after={value}`: a log's `seq` (a number)"))
                })?);
            }
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("`limit={value}`: 1 to {MAX_LIMIT}"))
                    })?;
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{key}` (known: after, limit)"
                )));
            }
        }
    }
    let store = store(state)?;
    let (owned_tenant, function) = (tenant.to_string(), name.to_string());
    let logs = blocking(move || store.recent(&owned_tenant, &function, after, limit)).await?;
    let next = logs.last().and_then(|l| l.seq).or(after).unwrap_or(0);
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "function": name,
            "logs": logs,
            "next": next,
        }),
    ))
}
