//! `GET /metrics`: every metric of the platform in Prometheus' text format.

use http::{HeaderValue, Response, header};

use super::AppState;
use super::error::full;
use crate::runtime::ResponseBody;
use crate::telemetry::{collect, prometheus};

/// `GET /metrics`.
pub(super) fn render(state: &AppState) -> Response<ResponseBody> {
    let text = prometheus::render(&collect(state));
    let mut response = Response::new(full(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus::CONTENT_TYPE),
    );
    response
}
