//! Tenants and their API keys (`/v1/tenants/...`), all under the `admin`
//! scope.
//!
//! An admin of the default tenant manages every tenant. An admin of any
//! other tenant sees only its own tenant and manages only its own keys;
//! other tenants are not found, and changing quotas or creating and
//! deleting tenants is refused.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::functions::read_body;
use super::{ApiError, AppState, json_response};
use crate::auth::{
    ApiKey, AuthError, Principal, QuotaOverrides, QuotaPatch, Quotas, Scopes, Tenant,
};
use crate::runtime::{BoxError, ResponseBody};

type ApiResult = Result<Response<ResponseBody>, ApiError>;

/// Largest JSON body these routes read.
const MAX_BODY_BYTES: u64 = 16 * 1024;

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let detail = e.to_string();
        match e {
            AuthError::Missing => {
                let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
                    .detail(detail);
                e.www_authenticate = true;
                e
            }
            AuthError::Invalid => {
                let mut e = Self::new(StatusCode::UNAUTHORIZED, "invalid-key", "Invalid API key")
                    .detail(detail);
                e.www_authenticate = true;
                e
            }
            AuthError::BadRequest(_) => Self::bad_request(detail),
            AuthError::TenantNotFound(_) => Self::new(
                StatusCode::NOT_FOUND,
                "tenant-not-found",
                "Tenant not found",
            )
            .detail(detail),
            AuthError::KeyNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "key-not-found", "Key not found").detail(detail)
            }
            AuthError::TenantExists(_) => {
                Self::new(StatusCode::CONFLICT, "tenant-exists", "Tenant exists").detail(detail)
            }
            AuthError::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", "Conflict").detail(detail)
            }
            AuthError::Limit(_) => {
                Self::new(StatusCode::FORBIDDEN, "quota-exceeded", "Quota exceeded").detail(detail)
            }
            AuthError::Store(_) | AuthError::Internal(_) => {
                tracing::error!(error = %e, "auth store failure");
                Self::internal()
            }
        }
    }
}

/// 403 for what only the platform's admin may do.
pub(super) fn platform_admin_only(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "platform-admin-only",
        "Platform admin only",
    )
    .detail(format!("{what} needs an admin key of the default tenant"))
}

/// The tenant `reference` (id or name) names, if the caller may see it;
/// otherwise 404, as for a tenant that does not exist.
fn visible(state: &AppState, who: &Principal, reference: &str) -> Result<Arc<Tenant>, ApiError> {
    state
        .auth
        .tenant(reference)
        .filter(|t| who.is_platform_admin() || t.id == who.tenant)
        .ok_or_else(|| AuthError::TenantNotFound(reference.chars().take(64).collect()).into())
}

#[derive(Serialize)]
struct TenantView<'a> {
    id: &'a str,
    name: &'a str,
    created_at_ms: i64,
    /// Effective quotas.
    quotas: Quotas,
    /// The quotas this tenant sets for itself.
    quota_overrides: &'a QuotaOverrides,
    usage: TenantUsage,
}

#[derive(Serialize)]
struct TenantUsage {
    functions: u64,
    models: u64,
    stored_bytes: u64,
    /// Spend this month in micro-units, when counted (tenants with a cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    spent_this_month: Option<u64>,
}

fn view<'a>(state: &AppState, t: &'a Tenant) -> TenantView<'a> {
    let (functions, function_bytes) = state.registry.footprint(&t.id);
    let (models, model_bytes) = state.models.footprint(&t.id);
    let month = crate::billing::usage::month_start_ms(crate::registry::now_ms());
    TenantView {
        id: &t.id,
        name: &t.name,
        created_at_ms: t.created_at_ms,
        quotas: state.auth.quotas(&t.id),
        quota_overrides: &t.quotas,
        usage: TenantUsage {
            functions,
            models,
            stored_bytes: function_bytes.saturating_add(model_bytes),
            spent_this_month: state.auth.meter(&t.id).spent(month),
        },
    }
}

async fn json_body<T, B>(req: Request<B>) -> Result<T, ApiError>
where
    T: for<'de> Deserialize<'de>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let bytes = read_body(req, MAX_BODY_BYTES).await?;
    super::limits::check_json_depth(&bytes)?;
    super::json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// `GET /v1/tenants`: every tenant for the platform admin, else one's own.
pub(super) fn list(state: &AppState, who: &Principal) -> ApiResult {
    let tenants = state.auth.tenants();
    let views: Vec<TenantView<'_>> = tenants
        .iter()
        .filter(|t| who.is_platform_admin() || t.id == who.tenant)
        .map(|t| view(state, t))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "tenants": views }),
    ))
}

/// `POST /v1/tenants` `{"name": ...}`.
pub(super) async fn create<B>(state: &AppState, who: &Principal, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if !who.is_platform_admin() {
        return Err(platform_admin_only("creating a tenant"));
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct New {
        name: String,
    }
    let new: New = json_body(req).await?;
    let tenant = state.auth.create_tenant(&new.name)?;
    Ok(json_response(StatusCode::CREATED, &view(state, &tenant)))
}

/// `GET /v1/tenants/{tenant}`.
pub(super) fn get(state: &AppState, who: &Principal, reference: &str) -> ApiResult {
    let tenant = visible(state, who, reference)?;
    Ok(json_response(StatusCode::OK, &view(state, &tenant)))
}

/// `PATCH /v1/tenants/{tenant}` `{"quotas": {...}}`.
pub(super) async fn patch<B>(
    state: &AppState,
    who: &Principal,
    reference: &str,
    req: Request<B>,
) -> ApiResult
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let tenant = visible(state, who, reference)?;
    if !who.is_platform_admin() {
        return Err(platform_admin_only("changing quotas"));
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Patch {
        #[serde(default)]
        quotas: QuotaPatch,
    }
    let patch: Patch = json_body(req).await.map_err(|e| {
        e.detail(format!(
            "the body is {{\"quotas\": {{...}}}} with keys among {}",
            crate::auth::quota::QUOTA_NAMES.join(", ")
        ))
    })?;
    let tenant = state.auth.patch_quotas(&tenant.id, &patch.quotas)?;
    Ok(json_response(StatusCode::OK, &view(state, &tenant)))
}

/// `DELETE /v1/tenants/{tenant}`: only a tenant that owns no functions and
/// no models; its keys go with it, its ledger rows stay.
pub(super) fn delete(state: &AppState, who: &Principal, reference: &str) -> ApiResult {
    let tenant = visible(state, who, reference)?;
    if !who.is_platform_admin() {
        return Err(platform_admin_only("deleting a tenant"));
    }
    let functions = state.registry.list(&tenant.id).len();
    let models = state.models.list(&tenant.id).len();
    if functions + models > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "tenant-not-empty",
            "Tenant not empty",
        )
        .detail(format!(
            "tenant `{}` still owns {functions} function(s) and {models} model(s); delete them first",
            tenant.name
        )));
    }
    let deleted = state.auth.delete_tenant(&tenant.id)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"id": deleted.id, "name": deleted.name, "deleted": true}),
    ))
}

/// `GET /v1/tenants/{tenant}/keys`.
pub(super) fn list_keys(state: &AppState, who: &Principal, reference: &str) -> ApiResult {
    let tenant = visible(state, who, reference)?;
    let keys: Vec<ApiKey> = state.auth.keys_of(&tenant.id);
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "keys": keys }),
    ))
}

/// `POST /v1/tenants/{tenant}/keys` `{"scopes": [...]}`: the key is in
/// this response and nowhere else.
pub(super) async fn create_key<B>(
    state: &AppState,
    who: &Principal,
    reference: &str,
    req: Request<B>,
) -> ApiResult
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let tenant = visible(state, who, reference)?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct New {
        scopes: Vec<String>,
    }
    let new: New = json_body(req).await?;
    let scopes =
        Scopes::parse_list(new.scopes.iter().map(String::as_str)).map_err(ApiError::bad_request)?;
    let (key, secret) = state.auth.create_key(&tenant.id, scopes)?;
    #[derive(Serialize)]
    struct Created<'a> {
        #[serde(flatten)]
        key: &'a ApiKey,
        /// Shown once.
        key_secret: &'a str,
    }
    let mut value = serde_json::to_value(Created {
        key: &key,
        key_secret: &secret,
    })
    .map_err(|_| ApiError::internal())?;
    // `{"id": ..., "key": "glia_..."}`, as the API documents.
    if let Some(object) = value.as_object_mut()
        && let Some(secret) = object.remove("key_secret")
    {
        object.insert("key".into(), secret);
    }
    Ok(json_response(StatusCode::CREATED, &value))
}

/// `GET /v1/tenants/{tenant}/keys/{key}`.
pub(super) fn get_key(state: &AppState, who: &Principal, reference: &str, id: &str) -> ApiResult {
    let tenant = visible(state, who, reference)?;
    let key = state
        .auth
        .key_of(&tenant.id, id)
        .ok_or_else(|| ApiError::from(AuthError::KeyNotFound(id.chars().take(64).collect())))?;
    Ok(json_response(StatusCode::OK, &key))
}

/// `DELETE /v1/tenants/{tenant}/keys/{key}`: revoked at once.
pub(super) fn delete_key(
    state: &AppState,
    who: &Principal,
    reference: &str,
    id: &str,
) -> ApiResult {
    let tenant = visible(state, who, reference)?;
    let key = state.auth.delete_key(&tenant.id, id).map_err(|e| match e {
        AuthError::KeyNotFound(_) => AuthError::KeyNotFound(id.chars().take(64).collect()),
        other => other,
    })?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"id": key.id, "deleted": true}),
    ))
}
