//! The HTTP API: control plane (`/v1/...`), data plane (`/fn/...`),
//! `/healthz` and `/metrics`, as one hyper service built by [`App::new`] so tests can drive
//! it with or without a socket.

mod error;
mod functions;
mod invoke;
mod ledger;
mod logs;
mod metering;
mod metrics;
mod models;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde::Serialize;

pub use error::{ApiError, PROBLEM_TYPE_PREFIX, full};

use crate::config::Config;
use crate::nn::models::ModelRegistry;
use crate::registry::Registry;
use crate::runtime::{BoxError, ResponseBody, Runtime};
use crate::scheduler::Scheduler;

/// Header carrying the id of every data-plane invocation.
pub const INVOCATION_ID_HEADER: &str = "glia-invocation-id";
/// Header saying whether the call had to load the function first.
pub const COLD_START_HEADER: &str = "glia-cold-start";
/// Header with the time spent loading, in microseconds, on a cold start.
pub const COLD_START_US_HEADER: &str = "glia-cold-start-us";
/// Devices `wasi:nn` inference ran on during the call (`cpu`, `gpu`).
pub const NN_DEVICE_HEADER: &str = "glia-nn-device";

/// Everything a request handler can reach.
pub struct AppState {
    pub config: Config,
    pub runtime: Arc<Runtime>,
    pub registry: Arc<Registry>,
    pub scheduler: Arc<Scheduler>,
    pub models: Arc<ModelRegistry>,
    /// The ledger writer; `None` when billing is off.
    pub billing: Option<Arc<crate::billing::LedgerWriter>>,
    /// Metrics and invocation logs.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
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
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let result = match segments.as_slice() {
            ["healthz"] => match *req.method() {
                Method::GET | Method::HEAD => Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"status": "ok"}),
                )),
                _ => Err(ApiError::method_not_allowed("GET, HEAD")),
            },
            ["metrics"] => match *req.method() {
                Method::GET => Ok(metrics::render(&self.state)),
                _ => Err(ApiError::method_not_allowed("GET")),
            },
            ["fn", ..] => {
                return invoke::handle(&self.state, self.state.billing.as_ref(), &path, req).await;
            }
            ["v1", "functions"] | ["v1", "functions", ""] => match *req.method() {
                Method::GET => Ok(functions::list(&self.state)),
                _ => Err(ApiError::method_not_allowed("GET")),
            },
            ["v1", "functions", name] => {
                let name = (*name).to_string();
                match *req.method() {
                    Method::PUT => functions::deploy(&self.state, &name, req).await,
                    Method::GET => functions::get(&self.state, &name),
                    Method::PATCH => functions::patch(&self.state, &name, req).await,
                    Method::DELETE => functions::delete(&self.state, &name).await,
                    _ => Err(ApiError::method_not_allowed("GET, PUT, PATCH, DELETE")),
                }
            }
            ["v1", "functions", name, "logs"] => match *req.method() {
                Method::GET => logs::function(&self.state, name, req.uri().query()).await,
                _ => Err(ApiError::method_not_allowed("GET")),
            },
            ["v1", "models"] | ["v1", "models", ""] => match *req.method() {
                Method::GET => Ok(models::list(&self.state)),
                _ => Err(ApiError::method_not_allowed("GET")),
            },
            ["v1", "models", name] => {
                let name = (*name).to_string();
                match *req.method() {
                    Method::PUT => models::upload(&self.state, &name, req).await,
                    Method::GET => models::get(&self.state, &name),
                    Method::DELETE => models::delete(&self.state, &name, req.uri().query()).await,
                    _ => Err(ApiError::method_not_allowed("GET, PUT, DELETE")),
                }
            }
            ["v1", "invocations", id] => match *req.method() {
                Method::GET => ledger::invocation(&self.state, id).await,
                _ => Err(ApiError::method_not_allowed("GET")),
            },
            ["v1", "invocations", id, "logs"] => match *req.method() {
                Method::GET => {
                    let accept = req
                        .headers()
                        .get(http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok());
                    logs::invocation(&self.state, id, accept).await
                }
                _ => Err(ApiError::method_not_allowed("GET")),
            },
            ["v1", "usage"] => match *req.method() {
                Method::GET => {
                    let uri = req.uri().clone();
                    let accept = req
                        .headers()
                        .get(http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    ledger::usage(&self.state, &uri, accept.as_deref()).await
                }
                _ => Err(ApiError::method_not_allowed("GET")),
            },
            _ => Err(ApiError::not_found(format!("no route for {path}"))),
        };
        result.unwrap_or_else(|e| e.into_response(None))
    }
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
