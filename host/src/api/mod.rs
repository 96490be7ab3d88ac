//! The HTTP API: control plane (`/v1/...`), data plane (`/fn/...` and
//! `/t/{tenant}/fn/...`), `/healthz` and `/metrics`, as one hyper service
//! built by [`App::new`] so tests can drive it with or without a socket.
//!
//! Every request is parsed into a [`routes::Route`], authenticated, and
//! checked against the scopes its route needs before any handler runs; a
//! handler then sees only the caller's tenant.

mod error;
mod functions;
mod invoke;
mod json;
mod ledger;
pub mod limits;
mod logs;
mod metering;
mod metrics;
mod models;
pub mod routes;
mod tenants;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use serde::Serialize;

pub use error::{ApiError, PROBLEM_TYPE_PREFIX, full};
use routes::{Access, Route};

use crate::auth::{Auth, AuthError, Principal, Scope};
use crate::config::Config;
use crate::nn::models::ModelRegistry;
use crate::registry::Registry;
use crate::runtime::{BoxError, ResponseBody, Runtime};
use crate::scheduler::Scheduler;

// The data plane's headers are built once: inserting a header by `&str`
// parses and copies its name on every call.

/// Header carrying the id of every data-plane invocation.
pub static INVOCATION_ID_HEADER: HeaderName = HeaderName::from_static("glia-invocation-id");
/// Header saying whether the call had to load the function first.
pub static COLD_START_HEADER: HeaderName = HeaderName::from_static("glia-cold-start");
/// Header with the time spent loading, in microseconds, on a cold start.
pub static COLD_START_US_HEADER: HeaderName = HeaderName::from_static("glia-cold-start-us");
/// Devices `wasi:nn` inference ran on during the call (`cpu`, `gpu`).
pub static NN_DEVICE_HEADER: HeaderName = HeaderName::from_static("glia-nn-device");

/// Everything a request handler can reach.
pub struct AppState {
    pub config: Config,
    pub runtime: Arc<Runtime>,
    pub registry: Arc<Registry>,
    pub scheduler: Arc<Scheduler>,
    pub models: Arc<ModelRegistry>,
    /// The ledger writer; `None` when billing is off.
    pub billing: Option<Arc<crate::billing::LedgerWriter>>,
    /// Tenants, keys and quotas.
    pub auth: Arc<Auth>,
    /// Metrics and invocation logs.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Upload bytes held in memory at once.
    pub uploads: limits::UploadBudget,
}

/// The glia HTTP service.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
}

impl App {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Handles one request. Never fails: errors become problem responses.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let req = match limits::admit(&self.state.config.server, req) {
            Ok(req) => req,
            Err(refused) => return refused.into_response(None),
        };
        let path = req.uri().path().to_string();
        let route = match routes::parse(req.method(), &path) {
            Ok(route) => route,
            Err(e) => return e.into_response(None),
        };
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let principal = match self.state.auth.authenticate(authorization) {
            Ok(principal) => principal,
            Err(e) => return ApiError::from(e).into_response(None),
        };
        let state = &self.state;
        let principal = match (route.access(), principal) {
            (Access::Anyone, _) => None,
            (Access::Invoke, principal) => {
                let Route::Invoke { tenant, path } = route else {
                    return ApiError::internal().into_response(None);
                };
                let (path, tenant) = (path.to_string(), tenant.map(str::to_string));
                let billing = state.billing.as_ref();
                return invoke::handle(state, billing, principal, tenant.as_deref(), &path, req)
                    .await;
            }
            (Access::AnyOf(_), None) => {
                return ApiError::from(AuthError::Missing).into_response(None);
            }
            (Access::AnyOf(scopes), Some(p)) => {
                if !scopes.iter().any(|s| p.has(*s)) {
                    return insufficient_scope(scopes).into_response(None);
                }
                Some(p)
            }
        };
        let result = match (route, principal) {
            (Route::Health, _) => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "ok"}),
            )),
            (route, Some(p)) => self.dispatch(route, &p, req).await,
            (_, None) => Err(ApiError::from(AuthError::Missing)),
        };
        result.unwrap_or_else(|e| e.into_response(None))
    }

    async fn dispatch<B>(
        &self,
        route: Route<'_>,
        principal: &Principal,
        req: Request<B>,
    ) -> Result<Response<ResponseBody>, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let state = &self.state;
        let tenant = principal.tenant.as_str();
        match route {
            Route::Health | Route::Invoke { .. } => Err(ApiError::internal()),
            Route::ListFunctions => Ok(functions::list(state, tenant)),
            Route::GetFunction(name) => functions::get(state, tenant, name),
            Route::DeployFunction(name) => functions::deploy(state, tenant, name, req).await,
            Route::PatchFunction(name) => functions::patch(state, tenant, name, req).await,
            Route::DeleteFunction(name) => functions::delete(state, tenant, name).await,
            Route::ListModels => Ok(models::list(state, tenant)),
            Route::GetModel(name) => models::get(state, tenant, name),
            Route::UploadModel(name) => models::upload(state, tenant, name, req).await,
            Route::DeleteModel(name) => {
                let query = req.uri().query().map(str::to_string);
                models::delete(state, tenant, name, query.as_deref()).await
            }
            Route::GetInvocation(id) => ledger::invocation(state, tenant, id).await,
            Route::InvocationLogs(id) => {
                let accept = req
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                logs::invocation(state, tenant, id, accept).await
            }
            Route::FunctionLogs(name) => {
                logs::function(state, tenant, name, req.uri().query()).await
            }
            Route::Metrics => {
                if tenant != crate::registry::DEFAULT_TENANT {
                    return Err(tenants::platform_admin_only(
                        "reading the platform's metrics",
                    ));
                }
                Ok(metrics::render(state))
            }
            Route::Usage => {
                let uri = req.uri().clone();
                let accept = req
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                ledger::usage(state, tenant, &uri, accept.as_deref()).await
            }
            Route::ListTenants => tenants::list(state, principal),
            Route::CreateTenant => tenants::create(state, principal, req).await,
            Route::GetTenant(t) => tenants::get(state, principal, t),
            Route::PatchTenant(t) => tenants::patch(state, principal, t, req).await,
            Route::DeleteTenant(t) => tenants::delete(state, principal, t),
            Route::ListKeys(t) => tenants::list_keys(state, principal, t),
            Route::CreateKey(t) => tenants::create_key(state, principal, t, req).await,
            Route::GetKey(t, k) => tenants::get_key(state, principal, t, k),
            Route::DeleteKey(t, k) => tenants::delete_key(state, principal, t, k),
        }
    }
}

/// 403 naming the scopes that would open the route.
fn insufficient_scope(scopes: &[Scope]) -> ApiError {
    let names: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
    ApiError::new(
        StatusCode::FORBIDDEN,
        "insufficient-scope",
        "Insufficient scope",
    )
    .detail(format!(
        "this route needs a key with the {} scope",
        names.join(" or ")
    ))
    .with("required_scopes", names)
}

impl<B> hyper::service::Service<Request<B>> for App
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let app = self.clone();
        Box::pin(async move { Ok(app.handle(req).await) })
    }
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, value: &impl Serialize) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
