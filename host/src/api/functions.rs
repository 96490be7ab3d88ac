//! Control plane: deploy, list, inspect, reconfigure and delete functions.

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;

use super::{ApiError, AppState, json_response};
use crate::registry::{FunctionRecord, Settings, SettingsOverrides, SettingsPatch, VersionRecord};
use crate::runtime::{BoxError, ResponseBody};
use crate::scheduler::FunctionStatus;

/// Largest settings document accepted by PATCH.
const MAX_SETTINGS_BYTES: u64 = 64 * 1024;

type ApiResult = Result<Response<ResponseBody>, ApiError>;

#[derive(Serialize)]
struct FunctionView<'a> {
    name: &'a str,
    latest_version: Option<u32>,
    digest: Option<&'a str>,
    url: String,
    settings: Settings,
    overrides: &'a SettingsOverrides,
    created_at_ms: i64,
    updated_at_ms: i64,
    #[serde(flatten)]
    status: FunctionStatus,
    versions: Vec<VersionView<'a>>,
}

#[derive(Serialize)]
struct VersionView<'a> {
    #[serde(flatten)]
    record: &'a VersionRecord,
    state: &'static str,
}

fn view<'a>(state: &AppState, record: &'a FunctionRecord) -> FunctionView<'a> {
    let status = state.scheduler.status(record);
    let versions = record
        .versions
        .iter()
        .map(|v| VersionView {
            record: v,
            state: if status.warm_versions.contains(&v.version) {
                "warm"
            } else {
                "zero"
            },
        })
        .collect();
    FunctionView {
        name: &record.name,
        latest_version: record.latest().map(|v| v.version),
        digest: record.latest().map(|v| v.digest.as_str()),
        url: function_url(state, record),
        settings: state.registry.settings_of(record),
        overrides: &record.overrides,
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
        status,
        versions,
    }
}

/// Where a function is called: `/fn/{name}/` with a key of its tenant, or
/// `/t/{tenant}/fn/{name}/` from anywhere.
fn function_url(state: &AppState, record: &FunctionRecord) -> String {
    let tenant = state
        .auth
        .tenant(&record.tenant)
        .map_or_else(|| record.tenant.to_string(), |t| t.name.clone());
    format!("/t/{tenant}/fn/{}/", record.name)
}

pub(super) fn list(state: &AppState, tenant: &str) -> Response<ResponseBody> {
    #[derive(Serialize)]
    struct Summary<'a> {
        name: &'a str,
        latest_version: Option<u32>,
        digest: Option<&'a str>,
        versions: usize,
        settings: Settings,
        updated_at_ms: i64,
        state: &'static str,
    }
    let all = state.registry.list(tenant);
    let functions: Vec<Summary<'_>> = all
        .iter()
        .map(|r| Summary {
            name: &r.name,
            latest_version: r.latest().map(|v| v.version),
            digest: r.latest().map(|v| v.digest.as_str()),
            versions: r.versions.len(),
            settings: state.registry.settings_of(r),
            updated_at_ms: r.updated_at_ms,
            state: state.scheduler.status(r).state,
        })
        .collect();
    json_response(
        StatusCode::OK,
        &serde_json::json!({ "functions": functions }),
    )
}

pub(super) fn get(state: &AppState, tenant: &str, name: &str) -> ApiResult {
    crate::registry::check_name(name)?;
    let record = state
        .registry
        .get(tenant, name)
        .ok_or_else(|| function_not_found(name))?;
    Ok(json_response(StatusCode::OK, &view(state, &record)))
}

pub(super) async fn deploy<B>(
    state: &std::sync::Arc<AppState>,
    tenant: &str,
    name: &str,
    req: Request<B>,
) -> ApiResult
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    crate::registry::check_name(name)?;
    let patch = SettingsPatch::from_query(req.uri().query().unwrap_or(""))
        .map_err(|m| ApiError::from(crate::registry::RegistryError::Settings(m)))?;
    take_upload(state, tenant)?;
    super::invoke::check_spend_cap(state, tenant).await?;
    let limit = state.config.server.max_upload_bytes();
    let (bytes, held) = state.uploads.read(req, limit).await?;
    let new_function = state.registry.get(tenant, name).is_none();
    check_storage_quotas(state, tenant, new_function, false, bytes.len() as u64)?;
    let bytes_in = bytes.len() as u64;
    let work = {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        move |state: std::sync::Arc<AppState>| async move {
            let mut usage = crate::registry::UploadUsage::default();
            let deployed = state
                .registry
                .deploy(&tenant, &name, bytes, patch, &mut usage)
                .await
                .map_err(ApiError::from);
            (deployed, usage)
        }
    };
    let (deployed, bill) = super::metering::run_billed_upload(
        state,
        crate::billing::RecordKind::Compile,
        tenant,
        name,
        bytes_in,
        held,
        work,
        |d| (d.version.version, d.created),
    )
    .await?;
    state.scheduler.ensure_min_warm(&deployed.function).await;

    #[derive(Serialize)]
    struct Deployed<'a> {
        name: &'a str,
        version: u32,
        digest: &'a str,
        size_bytes: u64,
        compile_ms: u64,
        compiled: bool,
        created: bool,
        settings: Settings,
        url: String,
        /// The ledger row billing the upload's validation and compile.
        #[serde(skip_serializing_if = "Option::is_none")]
        billed: Option<super::metering::UploadBill>,
    }
    let status = if deployed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let v = &deployed.version;
    let mut response = json_response(
        status,
        &Deployed {
            name,
            version: v.version,
            digest: &v.digest,
            size_bytes: v.size_bytes,
            compile_ms: v.compile_ms,
            compiled: deployed.compiled,
            created: deployed.created,
            settings: state.registry.settings_of(&deployed.function),
            url: function_url(state, &deployed.function),
            billed: bill,
        },
    );
    if let Ok(location) = http::HeaderValue::from_str(&format!("/v1/functions/{name}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub(super) async fn patch<B>(
    state: &AppState,
    tenant: &str,
    name: &str,
    req: Request<B>,
) -> ApiResult
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    crate::registry::check_name(name)?;
    if state.registry.get(tenant, name).is_none() {
        return Err(function_not_found(name));
    }
    let bytes = read_body(req, MAX_SETTINGS_BYTES).await?;
    super::limits::check_json_depth(&bytes)?;
    let patch: SettingsPatch = super::json::from_slice(&bytes).map_err(|e| {
        ApiError::from(crate::registry::RegistryError::Settings(format!(
            "settings must be a JSON object with keys among {}: {e}",
            crate::registry::SETTING_NAMES.join(", ")
        )))
    })?;
    let record = state.registry.update_settings(tenant, name, &patch).await?;
    state.scheduler.ensure_min_warm(&record).await;
    Ok(json_response(StatusCode::OK, &view(state, &record)))
}

pub(super) async fn delete(state: &AppState, tenant: &str, name: &str) -> ApiResult {
    crate::registry::check_name(name)?;
    let record = state.registry.delete(tenant, name).await?;
    state.scheduler.forget(&record.key());
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"name": record.name, "deleted": true, "versions": record.versions.len()}),
    ))
}

/// Counts an upload against the tenant's `uploads_per_minute`, before its
/// body is read: a refused upload costs nothing.
pub(super) fn take_upload(state: &AppState, tenant: &str) -> Result<(), ApiError> {
    let quotas = state.auth.quotas(tenant);
    Ok(state.auth.meter(tenant).take_upload(&quotas)?)
}

/// Refuses an upload of `bytes` that would take `tenant` past its quotas
/// on functions, models or stored bytes (403 `quota-exceeded`).
pub(super) fn check_storage_quotas(
    state: &AppState,
    tenant: &str,
    new_function: bool,
    new_model: bool,
    bytes: u64,
) -> Result<(), ApiError> {
    let quotas = state.auth.quotas(tenant);
    let (functions, function_bytes) = state.registry.footprint(tenant);
    let (models, model_bytes) = state.models.footprint(tenant);
    let exceeded = |what: String, limit: u64| {
        ApiError::new(StatusCode::FORBIDDEN, "quota-exceeded", "Quota exceeded")
            .detail(what)
            .with("limit", limit)
    };
    if new_function && quotas.max_functions > 0 && functions >= u64::from(quotas.max_functions) {
        return Err(exceeded(
            format!("the tenant has {functions} functions, its quota (max_functions)"),
            u64::from(quotas.max_functions),
        ));
    }
    if new_model && quotas.max_models > 0 && models >= u64::from(quotas.max_models) {
        return Err(exceeded(
            format!("the tenant has {models} models, its quota (max_models)"),
            u64::from(quotas.max_models),
        ));
    }
    let stored = function_bytes.saturating_add(model_bytes);
    let limit = quotas.max_stored_mb.saturating_mul(1024 * 1024);
    if quotas.max_stored_mb > 0 && stored.saturating_add(bytes) > limit {
        return Err(exceeded(
            format!(
                "storing {bytes} more bytes would take the tenant past its {} MiB (max_stored_mb); it stores {stored} bytes",
                quotas.max_stored_mb
            ),
            limit,
        ));
    }
    Ok(())
}

fn function_not_found(name: &str) -> ApiError {
    crate::registry::RegistryError::NotFound(name.to_string()).into()
}

/// Reads a whole request body, refusing more than `limit` bytes with 413
/// (early, from `content-length`, when the client sends one).
pub(super) async fn read_body<B>(req: Request<B>, limit: u64) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if super::limits::declared_length(&req).is_some_and(|n| n > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let limited = Limited::new(
        req.into_body(),
        usize::try_from(limit).unwrap_or(usize::MAX),
    );
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}
