//! Control plane for models: upload (validated by loading), list, inspect,
//! delete.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde::Serialize;

use super::{ApiError, AppState, json_response};
use crate::nn::models::ModelError;
use crate::nn::{LoadedModel, TensorSpec};
use crate::registry::{ModelRecord, ModelVersionRecord};
use crate::runtime::{BoxError, ResponseBody};

type ApiResult = Result<Response<ResponseBody>, ApiError>;

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let detail = e.to_string();
        match e {
            ModelError::Name(u) => u.into(),
            ModelError::UnsupportedEncoding(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "unsupported-encoding",
                "Unsupported model encoding",
            )
            .detail(detail),
            ModelError::Invalid(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid-model", "Invalid model").detail(detail)
            }
            ModelError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "model-not-found", "Model not found")
                    .detail(detail)
            }
            ModelError::OverBudget(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "model-memory-budget",
                "Model memory budget exhausted",
            )
            .detail(detail),
            ModelError::DeviceUnavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "device-unavailable",
                "Device unavailable",
            )
            .detail(detail),
            ModelError::Store(_) | ModelError::Internal(_) => {
                tracing::error!(error = %e, "model registry failure");
                Self::internal()
            }
        }
    }
}

#[derive(Serialize)]
struct Io {
    name: String,
    dtype: Option<&'static str>,
    /// `null` for a free dimension.
    dims: Vec<Option<usize>>,
}

fn io(specs: &[TensorSpec]) -> Vec<Io> {
    specs
        .iter()
        .map(|s| Io {
            name: s.name.clone(),
            dtype: s.dtype.map(|d| d.name()),
            dims: s.dims.clone(),
        })
        .collect()
}

#[derive(Serialize)]
struct Signature {
    inputs: Vec<Io>,
    outputs: Vec<Io>,
}

fn signature(m: &dyn LoadedModel) -> Signature {
    Signature {
        inputs: io(m.inputs()),
        outputs: io(m.outputs()),
    }
}

pub(super) fn list(state: &AppState, tenant: &str) -> Response<ResponseBody> {
    #[derive(Serialize)]
    struct Summary<'a> {
        name: &'a str,
        latest_version: Option<u32>,
        digest: Option<&'a str>,
        versions: usize,
        loaded: bool,
    }
    let all = state.models.list(tenant);
    let models: Vec<Summary<'_>> = all
        .iter()
        .map(|m| Summary {
            name: &m.name,
            latest_version: m.latest().map(|v| v.version),
            digest: m.latest().map(|v| v.digest.as_str()),
            versions: m.versions.len(),
            loaded: m
                .latest()
                .is_some_and(|v| state.models.loaded_now(&v.digest).is_some()),
        })
        .collect();
    json_response(StatusCode::OK, &serde_json::json!({ "models": models }))
}

pub(super) fn get(state: &AppState, tenant: &str, name: &str) -> ApiResult {
    crate::registry::check_name(name)?;
    let record = state
        .models
        .get(tenant, name)
        .ok_or_else(|| ApiError::from(ModelError::NotFound(name.to_string())))?;
    #[derive(Serialize)]
    struct View<'a> {
        name: &'a str,
        latest_version: Option<u32>,
        digest: Option<&'a str>,
        /// `loaded` when the latest version is in memory, else `unloaded`.
        state: &'static str,
        backend: &'static str,
        /// Where the latest version is loaded (backend, device, size).
        resident: Vec<crate::nn::models::Residency>,
        /// Functions granted this model.
        used_by: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signature: Option<Signature>,
        created_at_ms: i64,
        updated_at_ms: i64,
        versions: &'a [ModelVersionRecord],
    }
    let loaded = record
        .latest()
        .and_then(|v| state.models.loaded_now(&v.digest));
    Ok(json_response(
        StatusCode::OK,
        &View {
            name: &record.name,
            latest_version: record.latest().map(|v| v.version),
            digest: record.latest().map(|v| v.digest.as_str()),
            state: if loaded.is_some() {
                "loaded"
            } else {
                "unloaded"
            },
            backend: record
                .latest()
                .and_then(|v| state.models.backend_for(&v.encoding))
                .unwrap_or_else(|| state.models.backend_name()),
            resident: record
                .latest()
                .map(|v| state.models.residency(&v.digest, tenant, v.created_at_ms))
                .unwrap_or_default(),
            used_by: users(state, tenant, name),
            signature: loaded.as_deref().map(signature),
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
            versions: &record.versions,
        },
    ))
}

pub(super) async fn upload<B>(
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
    let mut encoding = "onnx".to_string();
    for (key, value) in crate::query::pairs(req.uri().query().unwrap_or("")) {
        match &*key {
            "encoding" => encoding = value.into_owned(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{key}` (known: encoding)"
                )));
            }
        }
    }
    super::functions::take_upload(state, tenant)?;
    super::invoke::check_spend_cap(state, tenant).await?;
    let (bytes, held) = state
        .uploads
        .read(req, state.config.server.max_model_bytes())
        .await?;
    let new_model = state.models.get(tenant, name).is_none();
    super::functions::check_storage_quotas(state, tenant, false, new_model, bytes.len() as u64)?;
    let bytes_in = bytes.len() as u64;
    let work = {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        move |state: std::sync::Arc<AppState>| async move {
            let mut usage = crate::registry::UploadUsage::default();
            let up = state
                .models
                .upload(&tenant, &name, &encoding, bytes, &mut usage)
                .await
                .map_err(ApiError::from);
            (up, usage)
        }
    };
    let (up, bill) = super::metering::run_billed_upload(
        state,
        crate::billing::RecordKind::ModelUpload,
        tenant,
        name,
        bytes_in,
        held,
        work,
        |u| (u.version.version, u.created),
    )
    .await?;
    #[derive(Serialize)]
    struct Uploaded<'a> {
        name: &'a str,
        version: u32,
        digest: &'a str,
        encoding: &'a str,
        size_bytes: u64,
        load_ms: u64,
        created: bool,
        backend: &'static str,
        signature: Signature,
        /// The ledger row billing the upload's validation.
        #[serde(skip_serializing_if = "Option::is_none")]
        billed: Option<super::metering::UploadBill>,
    }
    let v = &up.version;
    Ok(json_response(
        if up.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &Uploaded {
            name,
            version: v.version,
            digest: &v.digest,
            encoding: &v.encoding,
            size_bytes: v.size_bytes,
            load_ms: v.load_ms,
            created: up.created,
            backend: up.backend,
            signature: signature(up.loaded.as_ref()),
            billed: bill,
        },
    ))
}

/// The tenant's deployed functions whose `models` setting grants `model`.
fn users(state: &AppState, tenant: &str, model: &str) -> Vec<String> {
    state
        .registry
        .list(tenant)
        .iter()
        .filter(|f| {
            state
                .registry
                .settings_of(f)
                .models
                .iter()
                .any(|m| m == model)
        })
        .map(|f| f.name.to_string())
        .collect()
}

/// Deletes a model. While deployed functions are granted it, the delete is
/// refused with 409 naming them, unless `?force=true` (their calls then get
/// `not-found` from `load-by-name`).
pub(super) async fn delete(
    state: &AppState,
    tenant: &str,
    name: &str,
    query: Option<&str>,
) -> ApiResult {
    crate::registry::check_name(name)?;
    let mut force = false;
    for (key, value) in crate::query::pairs(query.unwrap_or("")) {
        match (&*key, &*value) {
            ("force", "true" | "1") => force = true,
            ("force", "false" | "0") => force = false,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{key}={value}` (known: force=true)"
                )));
            }
        }
    }
    if state.models.get(tenant, name).is_none() {
        return Err(ModelError::NotFound(name.to_string()).into());
    }
    let users = users(state, tenant, name);
    if !force && !users.is_empty() {
        return Err(
            ApiError::new(StatusCode::CONFLICT, "model-in-use", "Model in use").detail(format!(
                "model `{name}` is granted to deployed function(s) {}: remove it from their \
                 `models` setting or delete them first, or delete with ?force=true",
                users.join(", ")
            )),
        );
    }
    let record: std::sync::Arc<ModelRecord> = state.models.delete(tenant, name).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"name": record.name, "deleted": true, "versions": record.versions.len()}),
    ))
}
