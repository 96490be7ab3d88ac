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
use crate::auth::{AuthError, Principal, Scope, SpendReservation, TenantMeter};
use crate::billing::usage::month_start_ms;
use crate::billing::{InvocationId, LedgerWriter, Outcome, UsageGroup, UsageQuery, UsageRow};
use crate::capabilities::Grants;
use crate::logs::CallInfo;
use crate::nn::wasi::NnState;
use crate::registry::{DEFAULT_TENANT, RegistryError, Resolved};
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
/// (with billing on) meters it. `tenant` is the `/t/{tenant}` of the URL,
/// if any; `path` starts at `/fn/`. The call is one trace (`glia.invoke`).
pub(super) async fn handle<B>(
    state: &Arc<AppState>,
    billing: Option<&Arc<LedgerWriter>>,
    principal: Option<Principal>,
    tenant: Option<&str>,
    path: &str,
    req: Request<B>,
) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let id = InvocationId::now();
    let span = trace::invocation_span(id.encode(&mut [0; 32]), req.method(), req.headers());
    let mut meter = Meter::new(id, span.clone());
    if billing.is_some() {
        meter.settle = Some(state.clone());
    }
    let caller = Caller {
        principal: principal.as_ref(),
        tenant,
    };
    let response = call(state, billing, caller, path, req, meter)
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
    caller: Caller<'_>,
    path: &str,
    req: Request<B>,
    mut meter: Meter,
) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let id = meter.id;
    let result = run(state, caller, path, req, &mut meter, billing.is_none()).await;
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
            e.into_response(Some(id.encode(&mut [0; 32])))
        }
        (Ok(response), Some(billing)) => metering::finish_ok(state, billing, meter, response).await,
        (Err(e), Some(billing)) => metering::finish_error(state, billing, meter, e).await,
    };
    tracing::debug!(invocation_id = %id, path, status = response.status().as_u16(), "invocation");
    if let Ok(value) = HeaderValue::from_str(id.encode(&mut [0; 32])) {
        response.headers_mut().insert(&INVOCATION_ID_HEADER, value);
    }
    response
}

/// Who is calling, and through which URL.
#[derive(Clone, Copy)]
struct Caller<'a> {
    principal: Option<&'a Principal>,
    /// The `/t/{tenant}` of the URL (id or name), if any.
    tenant: Option<&'a str>,
}

/// Finds the function a caller names and checks that the caller may call
/// it. A function the caller cannot see is not found (another tenant's
/// key) or needs a key (no key), whether or not it exists, so probing
/// reveals nothing; a function of the caller's own tenant without the
/// `invoke` scope is 403, and metered as rejected.
fn authorize(
    state: &AppState,
    caller: Caller<'_>,
    target: &Target<'_>,
    meter: &mut Meter,
) -> Result<Resolved, ApiError> {
    let hidden = || match caller.principal {
        None => ApiError::from(AuthError::Missing),
        Some(_) => RegistryError::NotFound(target.name.to_string()).into(),
    };
    let tenant = match caller.tenant {
        Some(reference) => match state.auth.tenant(reference) {
            Some(t) => t.id.clone(),
            None => return Err(hidden()),
        },
        None => caller
            .principal
            .map_or_else(|| DEFAULT_TENANT.to_string(), |p| p.tenant.clone()),
    };
    let resolved = match state.registry.resolve(&tenant, target.name, target.version) {
        Ok(resolved) => resolved,
        Err(RegistryError::NotFound(_)) => return Err(hidden()),
        Err(e) => {
            let own = caller.principal.is_some_and(|p| p.tenant == tenant);
            return Err(if own || resolved_public(state, &tenant, target.name) {
                e.into()
            } else {
                hidden()
            });
        }
    };
    if resolved.settings.public {
        return Ok(resolved);
    }
    let own = caller.principal.filter(|p| *p.tenant == *resolved.tenant);
    match own {
        Some(p) if p.has(Scope::Invoke) => Ok(resolved),
        Some(_) => {
            meter.target = Some(meter_target(&resolved));
            meter.outcome = Some(Outcome::Rejected);
            Err(ApiError::new(
                http::StatusCode::FORBIDDEN,
                "insufficient-scope",
                "Insufficient scope",
            )
            .detail("calling a function needs a key with the invoke scope")
            .with("required_scopes", vec!["invoke"]))
        }
        None if caller.principal.is_none() => {
            // The function exists and is not public: the call is refused,
            // and its owner sees the refusal in the ledger at no cost.
            meter.target = Some(meter_target(&resolved));
            meter.outcome = Some(Outcome::Rejected);
            Err(ApiError::from(AuthError::Missing))
        }
        None => Err(hidden()),
    }
}

/// Whether a tenant's function is public (for a pinned version that does
/// not exist, which error the caller may see).
fn resolved_public(state: &AppState, tenant: &str, name: &str) -> bool {
    state
        .registry
        .get(tenant, name)
        .is_some_and(|r| state.registry.settings_of(&r).public)
}

fn meter_target(resolved: &Resolved) -> metering::Target {
    metering::Target {
        tenant: resolved.tenant.clone(),
        function: resolved.name.clone(),
        version: resolved.version.version,
        memory_mb: resolved.settings.memory_mb,
    }
}

/// Applies the owning tenant's rate and spend quotas to a call of
/// `resolved`: its live counters, and, under a spend cap, the call's
/// worst-case cost reserved against it until the call is priced.
async fn check_quotas(
    state: &AppState,
    resolved: &Resolved,
) -> Result<(Arc<TenantMeter>, Option<SpendReservation>), ApiError> {
    let tenant = &resolved.tenant;
    let quotas = state.auth.quotas(tenant);
    let meter = state.auth.meter(tenant);
    let mut reservation = None;
    if quotas.monthly_spend_cap > 0 {
        // Without a ledger (billing off) there is no spend to cap.
        let spent = month_spend(state, tenant, &meter).await.unwrap_or(0);
        let worst = worst_cost(
            &state.config.billing.plan,
            &resolved.settings,
            state.models.gpu_available(),
        );
        reservation = Some(meter.reserve(spent, quotas.monthly_spend_cap, worst)?);
    }
    meter.take(&quotas).map_err(ApiError::from)?;
    Ok((meter, reservation))
}

/// Slack on a call's timeout in its worst case: a guest is stopped at the
/// epoch tick after its deadline, an inference run at the next node.
const WORST_CASE_SLACK_MS: u64 = 1000;

/// The most a call with `settings` can cost under `plan`: its whole
/// timeout (and some slack) at its memory, running guest code and
/// inference all along (on
/// the dearer device, when the platform has a GPU), a cold start, and a
/// load of each granted model and of one more given as bytes, loading all
/// along.
fn worst_cost(
    plan: &crate::config::PricePlan,
    settings: &crate::registry::Settings,
    gpu: bool,
) -> u64 {
    let us = settings
        .timeout_ms
        .saturating_add(WORST_CASE_SLACK_MS)
        .saturating_mul(1000);
    let gpu_dearer = gpu && plan.per_gpu_second > plan.per_cpu_inference_second;
    let usage = crate::billing::Usage {
        run_us: us,
        guest_us: us,
        memory_mb: settings.memory_mb,
        cpu_inference_us: if gpu_dearer { 0 } else { us },
        gpu_inference_us: if gpu_dearer { us } else { 0 },
        cold_start_us: 1,
        model_loads: u32::try_from(settings.models.len().saturating_add(1)).unwrap_or(u32::MAX),
        model_load_us: us,
        ..crate::billing::Usage::default()
    };
    crate::billing::price(plan, Outcome::Ok, &usage)
        .1
        .total_micros
}

/// Refuses an upload (whose compile would be billed) when the tenant's
/// spend has reached its cap.
pub(super) async fn check_spend_cap(state: &AppState, tenant: &str) -> Result<(), ApiError> {
    let quotas = state.auth.quotas(tenant);
    if quotas.monthly_spend_cap == 0 {
        return Ok(());
    }
    let meter = state.auth.meter(tenant);
    let spent = month_spend(state, tenant, &meter).await.unwrap_or(0);
    if spent >= quotas.monthly_spend_cap {
        return Err(crate::auth::QuotaRefusal::SpendCap {
            spent,
            cap: quotas.monthly_spend_cap,
        }
        .into());
    }
    Ok(())
}

/// The tenant's spend this month, read from the ledger on first need and
/// counted in memory after.
async fn month_spend(state: &AppState, tenant: &str, meter: &TenantMeter) -> Option<u64> {
    let now = crate::registry::now_ms();
    let month = month_start_ms(now);
    if let Some(spent) = meter.spent(month) {
        return Some(spent);
    }
    let ledger = state.billing.as_ref()?.ledger().clone();
    let query = UsageQuery {
        tenant: tenant.to_string(),
        from_ms: month,
        to_ms: i64::MAX,
        function: None,
        group_by: UsageGroup::Function,
    };
    let rows = tokio::task::spawn_blocking(move || ledger.usage(&query))
        .await
        .ok()?
        .map_err(|e| tracing::error!(error = %e, "reading this month's spend failed"))
        .ok()?;
    let spent = UsageRow::total(&rows).cost_micros;
    if meter.spent(month).is_none() {
        meter.load_spent(month, spent);
    }
    meter.spent(month)
}

/// Resolves, admits, warms and invokes; fills `meter` as it goes.
/// `nn_headers_now`: set the `wasi:nn` headers from what happened before
/// the guest answered (when metering does not wait for the guest to end).
async fn run<B>(
    state: &AppState,
    caller: Caller<'_>,
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
    crate::registry::check_name(target.name)?;
    let resolved = authorize(state, caller, &target, meter)?;
    let settings = &resolved.settings;
    meter.target = Some(meter_target(&resolved));
    meter.span.record("glia.tenant", &*resolved.tenant);
    meter.span.record("glia.function", &*resolved.name);
    meter
        .span
        .record("glia.function.version", resolved.version.version);
    let timeout = Duration::from_millis(settings.timeout_ms);
    let (spend, reservation) = check_quotas(state, &resolved)
        .await
        .inspect_err(|_| meter.outcome = Some(Outcome::Rejected))?;
    meter.spend = Some(spend);
    meter.reservation = reservation;

    let queued = Instant::now();
    let tenant_limit = state.auth.quotas(&resolved.tenant).max_concurrency;
    let mut admission = state
        .scheduler
        .admit(&resolved, tenant_limit)
        .instrument(tracing::debug_span!("glia.admission"))
        .await
        .map_err(|e| refused(meter, Outcome::Rejected, e))?;
    meter.queue = queued.elapsed();
    let ready = state
        .scheduler
        .ready(&VersionKey::of(&resolved), Some(&mut admission))
        .await
        .map_err(|e| refused(meter, Outcome::Error, e))?;
    // Shared with the call's inference runs, which hold it until they end
    // (past the call, when a run outlives its deadline).
    let admission = Arc::new(admission);
    meter.cold_start = ready.cold_start;
    meter
        .span
        .record("glia.cold_start", ready.cold_start.is_some());
    // Room in the platform's guest memory for what the function used last
    // time, waiting within what is left of the call's queue time.
    let queue_deadline =
        tokio::time::Instant::from_std(queued + Duration::from_millis(settings.queue_timeout_ms));
    let memory = state
        .runtime
        .memory()
        .reserve(&resolved.tenant, &ready.memory, queue_deadline)
        .await
        .map_err(|e| refused(meter, Outcome::Rejected, e))?;
    meter.queue = queued.elapsed();

    let io = GuestIo {
        grants: Grants::of(settings),
        logs: state.telemetry.logs.as_ref().map(|logs| {
            logs.capture(CallInfo {
                invocation_id: meter.id.to_string(),
                tenant: resolved.tenant.to_string(),
                function: resolved.name.to_string(),
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
        tenant: Arc::from(&*resolved.tenant),
        memory,
    };
    let nn = NnState::new(
        state.models.clone(),
        resolved.tenant.to_string(),
        settings.models.clone(),
        limits.deadline,
        usize::try_from(state.config.models.max_raw_load_mb.saturating_mul(MIB))
            .unwrap_or(usize::MAX),
    )
    .with_metrics(state.telemetry.metrics.clone())
    .with_keepalive(admission.clone());
    let nn_usage = nn.usage();
    meter.nn = Some(nn_usage.clone());
    let (started, guest) = state
        .runtime
        .start(&ready.pre, limits, req, nn, io, admission)
        .map_err(|e| refused(meter, Outcome::Error, e))?;
    meter.bytes_in = Some(started.bytes_in.clone());
    // The guest is the meter's before the response is awaited: should the
    // client leave meanwhile, the dropped meter still settles the call.
    let guest = meter.finished.insert(guest);
    let mut response = started.response(guest).await.map_err(|e| {
        meter.outcome = Some(metering::outcome_of(&e));
        ApiError::from(e)
    })?;
    if nn_headers_now {
        metering::nn_headers(&mut response, &nn_usage.report());
    }
    let headers = response.headers_mut();
    headers.insert(
        &COLD_START_HEADER,
        HeaderValue::from_static(if ready.cold_start.is_some() {
            "true"
        } else {
            "false"
        }),
    );
    if let Some(cold) = ready.cold_start {
        headers.insert(
            &COLD_START_US_HEADER,
            HeaderValue::from(u64::try_from(cold.as_micros()).unwrap_or(u64::MAX)),
        );
    }
    Ok(response)
}

/// Records that the call ended with `outcome` before its guest ran, and
/// turns `e` into its answer.
fn refused(meter: &mut Meter, outcome: Outcome, e: impl Into<ApiError>) -> ApiError {
    meter.outcome = Some(outcome);
    e.into()
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
