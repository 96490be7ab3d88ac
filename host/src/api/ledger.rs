//! The ledger over HTTP: one invocation's record, and usage totals.

use http::{HeaderValue, Response, StatusCode, header};

use super::error::full;
use super::{ApiError, AppState, json_response};
use crate::billing::usage::{month_start_ms, parse_time, to_csv};
use crate::billing::{UsageGroup, UsageQuery, UsageRow};
use crate::runtime::ResponseBody;

type ApiResult = Result<Response<ResponseBody>, ApiError>;

fn ledger(state: &AppState) -> Result<&std::sync::Arc<dyn crate::billing::Ledger>, ApiError> {
    state
        .billing
        .as_ref()
        .map(|b| b.ledger())
        .ok_or_else(|| ApiError::not_found("billing is off (billing.enabled = false)"))
}

fn ledger_failure(e: crate::billing::LedgerError) -> ApiError {
    tracing::error!(error = %e, "ledger read failed");
    ApiError::internal()
}

/// `GET /v1/invocations/{id}`.
pub(super) async fn invocation(state: &AppState, tenant: &str, id: &str) -> ApiResult {
    let ledger = ledger(state)?.clone();
    let owned = id.to_string();
    let record = tokio::task::spawn_blocking(move || ledger.get(&owned))
        .await
        .map_err(|e| ApiError::internal().detail(e.to_string()))?
        .map_err(ledger_failure)?;
    // Another tenant's invocation is not found, as if it did not exist.
    match record.filter(|r| *r.tenant == *tenant) {
        Some(record) => Ok(json_response(StatusCode::OK, &record)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invocation-not-found",
            "Invocation not found",
        )
        .detail(format!(
            "no invocation `{}` in the ledger",
            id.chars().take(64).collect::<String>()
        ))),
    }
}

/// `GET /v1/usage?from=&to=&function=&group_by=function|day|hour|outcome`,
/// JSON or (`Accept: text/csv`) CSV.
pub(super) async fn usage(
    state: &AppState,
    tenant: &str,
    uri: &http::Uri,
    accept: Option<&str>,
) -> ApiResult {
    let now = crate::registry::now_ms();
    let mut query = UsageQuery {
        tenant: tenant.to_string(),
        from_ms: month_start_ms(now),
        to_ms: now.saturating_add(1),
        function: None,
        group_by: UsageGroup::Function,
    };
    for (key, value) in crate::query::pairs(uri.query().unwrap_or("")) {
        let bad = |what: &str| ApiError::bad_request(format!("`{key}={value}`: {what}"));
        match &*key {
            "from" => {
                query.from_ms = parse_time(&value).ok_or_else(|| {
                    bad("a time is ms since the epoch, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z")
                })?;
            }
            "to" => {
                query.to_ms = parse_time(&value).ok_or_else(|| {
                    bad("a time is ms since the epoch, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z")
                })?;
            }
            "function" => {
                crate::registry::check_name(&value)?;
                query.function = Some(value.into_owned());
            }
            "group_by" => {
                query.group_by = UsageGroup::parse(&value)
                    .ok_or_else(|| bad("group_by is function, day, hour or outcome"))?;
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{key}` (known: from, to, function, group_by)"
                )));
            }
        }
    }
    if query.to_ms <= query.from_ms {
        return Err(ApiError::bad_request("`to` must be after `from`"));
    }
    let ledger = ledger(state)?.clone();
    let q = query.clone();
    let rows = tokio::task::spawn_blocking(move || ledger.usage(&q))
        .await
        .map_err(|e| ApiError::internal().detail(e.to_string()))?
        .map_err(ledger_failure)?;
    let wants_csv = accept.is_some_and(|v| v.contains("text/csv"));
    if wants_csv {
        let mut response = Response::new(full(to_csv(&rows)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        return Ok(response);
    }
    let total = UsageRow::total(&rows);
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "from_ms": query.from_ms,
            "to_ms": query.to_ms,
            "function": query.function,
            "group_by": query.group_by,
            "currency": state.config.billing.currency,
            "plan_version": state.config.billing.plan.version,
            "groups": rows,
            "total": total,
        }),
    ))
}
