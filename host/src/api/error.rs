//! Typed API errors rendered as RFC 9457 problem details.
//!
//! Every error the API returns is `application/problem+json` with a stable
//! `type` (`urn:glia:problem:<slug>`), a human `detail` safe to show the
//! client, and the invocation id when there is one. Internal details are
//! logged on the server, never sent.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Map, Value, json};

use crate::registry::{RegistryError, UploadError};
use crate::runtime::{InvokeError, MemoryFull, ResponseBody};
use crate::scheduler::Rejected;

/// Prefix of every problem type.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:glia:problem:";

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable slug, e.g. `timeout`.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extensions: Map<String, Value>,
    pub retry_after_secs: Option<u64>,
    pub allow: Option<&'static str>,
    /// Ask for a bearer token (`WWW-Authenticate`), on 401.
    pub www_authenticate: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str) -> Self {
        Self {
            status,
            kind,
            title,
            detail: title.to_string(),
            extensions: Map::new(),
            retry_after_secs: None,
            allow: None,
            www_authenticate: false,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_string(), value.into());
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
        )
        .detail(format!("this route accepts {allow}"));
        e.allow = Some(allow);
        e
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
        )
        .detail(detail)
    }

    pub fn payload_too_large(limit_bytes: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
        )
        .detail(format!(
            "the body is larger than the limit of {limit_bytes} bytes ({})",
            in_units(limit_bytes)
        ))
        .with("limit_bytes", limit_bytes)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
        .detail("the server failed to handle the request; the error has been logged")
    }

    /// Renders the problem, adding the invocation id when given.
    pub fn into_response(self, invocation_id: Option<&str>) -> http::Response<ResponseBody> {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            json!(format!("{PROBLEM_TYPE_PREFIX}{}", self.kind)),
        );
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        if let Some(id) = invocation_id {
            body.insert("invocation_id".into(), json!(id));
        }
        body.extend(self.extensions);
        let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        let mut response = http::Response::new(full(bytes));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.www_authenticate {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"glia\""),
            );
        }
        response
    }
}

/// A size in the largest binary unit that divides it (`64 KiB`, `1 MiB`).
fn in_units(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = KIB * KIB;
    match bytes {
        0 => "0 bytes".to_string(),
        b if b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} bytes"),
    }
}

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        let detail = e.to_string();
        match e {
            UploadError::InvalidName(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid-name", "Invalid name").detail(detail)
            }
            UploadError::NotWasm => Self::new(
                StatusCode::BAD_REQUEST,
                "not-wasm",
                "Not a WebAssembly binary",
            )
            .detail(detail),
            UploadError::CoreModule => Self::new(
                StatusCode::BAD_REQUEST,
                "core-module",
                "Core module, not a component",
            )
            .detail(detail),
            UploadError::Invalid(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid-component",
                "Invalid component",
            )
            .detail(detail),
            UploadError::UnsatisfiedImports(imports) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsatisfied-imports",
                "Unsatisfied imports",
            )
            .detail(detail)
            .with("imports", imports),
            UploadError::MissingHandler(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing-handler",
                "No HTTP handler exported",
            )
            .detail(detail),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Upload(u) => u.into(),
            RegistryError::Settings(m) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid-settings",
                "Invalid settings",
            )
            .detail(m),
            RegistryError::NotFound(_) | RegistryError::VersionNotFound { .. } => Self::new(
                StatusCode::NOT_FOUND,
                "function-not-found",
                "Function not found",
            )
            .detail(e.to_string()),
            RegistryError::Store(_) | RegistryError::Internal(_) => {
                tracing::error!(error = %e, "registry failure");
                Self::internal()
            }
        }
    }
}

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        let detail = e.to_string();
        match e {
            InvokeError::Timeout { timeout_ms } => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "Function timed out")
                    .detail(detail)
                    .with("timeout_ms", timeout_ms)
            }
            InvokeError::MemoryLimit { limit_mb, .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "memory-limit",
                "Function exceeded its memory limit",
            )
            .detail(detail)
            .with("memory_mb", limit_mb),
            InvokeError::Trap { reason, backtrace } => {
                let mut e = Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "trap",
                    "Function trapped",
                )
                .detail(detail)
                .with("trap", reason);
                if let Some(bt) = backtrace {
                    e = e.with("backtrace", bt);
                }
                e
            }
            InvokeError::NoResponse | InvokeError::GuestError(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "no-response",
                "Function sent no response",
            )
            .detail(detail),
            InvokeError::Capacity => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "platform-saturated",
                    "Platform saturated",
                )
                .detail(detail);
                e.retry_after_secs = Some(1);
                e
            }
            InvokeError::PlatformMemory => platform_memory(detail),
            InvokeError::Internal(m) => {
                tracing::error!(error = %m, "invocation failure");
                Self::internal()
            }
        }
    }
}

impl From<MemoryFull> for ApiError {
    fn from(e: MemoryFull) -> Self {
        platform_memory(e.to_string())
    }
}

/// 503: the platform's guest memory budget left no room for the call.
fn platform_memory(detail: String) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "platform-memory",
        "Platform memory exhausted",
    )
    .detail(detail);
    e.retry_after_secs = Some(1);
    e
}

impl From<Rejected> for ApiError {
    fn from(e: Rejected) -> Self {
        let detail = e.to_string();
        let mut err = match e {
            Rejected::QueueFull { limit, .. } | Rejected::FunctionLimit { limit, .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "concurrency-limit",
                "Function at its concurrency limit",
            )
            .with("max_concurrency", limit),
            Rejected::Saturated { limit, .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "platform-saturated",
                "Platform saturated",
            )
            .with("max_in_flight", limit),
            Rejected::TenantLimit { limit, .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "tenant-concurrency-limit",
                "Tenant at its concurrency quota",
            )
            .with("max_concurrency", limit),
        }
        .detail(detail);
        err.retry_after_secs = Some(1);
        err
    }
}

impl From<crate::auth::QuotaRefusal> for ApiError {
    fn from(e: crate::auth::QuotaRefusal) -> Self {
        use crate::auth::QuotaRefusal;
        let detail = e.to_string();
        match e {
            QuotaRefusal::Rate {
                rate,
                retry_after_secs,
            } => {
                let mut err = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Tenant over its request rate",
                )
                .detail(detail)
                .with("requests_per_second", rate);
                err.retry_after_secs = Some(retry_after_secs);
                err
            }
            QuotaRefusal::UploadRate {
                per_minute,
                retry_after_secs,
            } => {
                let mut err = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "upload-rate-limited",
                    "Tenant over its upload rate",
                )
                .detail(detail)
                .with("uploads_per_minute", per_minute);
                err.retry_after_secs = Some(retry_after_secs);
                err
            }
            QuotaRefusal::SpendCap { spent, cap }
            | QuotaRefusal::SpendCapReserve { spent, cap, .. } => {
                let mut err = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "spend-cap-reached",
                    "Monthly spend cap reached",
                )
                .detail(detail)
                .with("spent", spent)
                .with("monthly_spend_cap", cap);
                err.retry_after_secs = Some(if matches!(e, QuotaRefusal::SpendCap { .. }) {
                    3600
                } else {
                    1
                });
                err
            }
        }
    }
}
