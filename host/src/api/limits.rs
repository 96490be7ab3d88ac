//! Limits on everything a client sends, checked before any handler runs.
//!
//! Three layers, each answering as early and as cheaply as it can:
//!
//! - the connection: hyper closes a connection whose request head does not
//!   arrive within `server.header_read_timeout_ms`, and [`serve_connection`]
//!   closes one whose first request does not (which also covers the HTTP/2
//!   preface, read before hyper's own timer starts). hyper's own limits on
//!   the head are set well above the platform's, because hyper refuses
//!   without a problem+json body;
//! - the request head, in [`admit`]: the target, the query and the headers
//!   against `[server]`'s limits (414, 431), and a function call's declared
//!   body size (413), before routing;
//! - the body: a function call's body is capped as it streams
//!   (`max_invoke_body_mb`); routes that read a whole body cap it themselves
//!   (`read_body`), and a JSON body is checked for depth
//!   ([`check_json_depth`]) before it is parsed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Limited;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use super::{ApiError, App};
use crate::config::ServerConfig;
use crate::runtime::BoxError;

/// Deepest nesting of arrays and objects accepted in a JSON body
/// (serde_json's own recursion limit is 128).
pub const MAX_JSON_DEPTH: usize = 32;
/// hyper's own limits on a request head are this many times the
/// platform's, so that the platform's (which answer with problem+json)
/// trip first.
const HYPER_HEADROOM: usize = 2;
/// hyper's default read buffer for HTTP/1 (its largest request head); kept
/// unless the platform's limits need more.
const HYPER_DEFAULT_BUF: usize = 8192 + 4096 * 100;
/// What HTTP/2 adds to each header when it sizes a header list (RFC 9113,
/// section 6.5.2).
const H2_HEADER_OVERHEAD: usize = 32;

/// Sets hyper's limits and timers for the platform's `[server]` limits.
pub fn configure(builder: &mut auto::Builder<TokioExecutor>, config: &ServerConfig) {
    let head = config
        .max_header_bytes()
        .saturating_add(config.max_uri_bytes());
    let headers = usize::try_from(config.max_headers).unwrap_or(usize::MAX);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .max_headers(headers.saturating_mul(HYPER_HEADROOM))
        .max_buf_size(head.saturating_mul(HYPER_HEADROOM).max(HYPER_DEFAULT_BUF));
    let h2_list = headers
        .saturating_mul(H2_HEADER_OVERHEAD)
        .saturating_add(head)
        .saturating_mul(HYPER_HEADROOM);
    builder
        .http2()
        .max_header_list_size(u32::try_from(h2_list).unwrap_or(u32::MAX));
}

/// The app, as served on one connection: notes that a request arrived, for
/// [`FirstRequest::within`].
#[derive(Clone)]
pub struct FirstRequest {
    app: App,
    seen: Arc<AtomicBool>,
}

impl FirstRequest {
    pub fn new(app: App) -> Self {
        Self {
            app,
            seen: Arc::default(),
        }
    }

    /// Runs `connection` (served with this service) to its end, unless no
    /// request has arrived within `timeout`: then drops it, which closes
    /// it, and returns `None`.
    pub async fn within<T>(
        &self,
        timeout: Duration,
        connection: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::pin!(connection);
        tokio::select! {
            done = &mut connection => return Some(done),
            () = tokio::time::sleep(timeout) => {}
        }
        if self.seen.load(Ordering::Relaxed) {
            Some(connection.await)
        } else {
            tracing::debug!(
                timeout_ms = timeout.as_millis() as u64,
                "no request on a new connection in time: closing it"
            );
            None
        }
    }
}

impl<B> hyper::service::Service<Request<B>> for FirstRequest
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = <App as hyper::service::Service<Request<B>>>::Response;
    type Error = <App as hyper::service::Service<Request<B>>>::Error;
    type Future = <App as hyper::service::Service<Request<B>>>::Future;

    fn call(&self, req: Request<B>) -> Self::Future {
        self.seen.store(true, Ordering::Relaxed);
        self.app.call(req)
    }
}

/// Checks a request's head against `config` and caps its body: a function
/// call's at `max_invoke_body_mb`, others' not here (their handlers read
/// what they accept).
pub fn admit<B>(config: &ServerConfig, req: Request<B>) -> Result<Request<Limited<B>>, ApiError> {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > config.max_uri_bytes() {
        return Err(uri_too_long(format!(
            "the request target is {target} bytes, more than the limit of {} (server.max_uri_kb)",
            config.max_uri_bytes()
        )));
    }
    let query = uri.query().map_or(0, str::len);
    if query > config.max_query_bytes() {
        return Err(uri_too_long(format!(
            "the query string is {query} bytes, more than the limit of {} (server.max_query_kb)",
            config.max_query_bytes()
        )));
    }
    let headers = req.headers();
    let count = headers.len();
    if count > usize::try_from(config.max_headers).unwrap_or(usize::MAX) {
        return Err(headers_too_large(format!(
            "the request has {count} headers, more than the limit of {} (server.max_headers)",
            config.max_headers
        )));
    }
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if size > config.max_header_bytes() {
        return Err(headers_too_large(format!(
            "the request's header names and values take {size} bytes, more than the limit of {} (server.max_header_kb)",
            config.max_header_bytes()
        )));
    }
    let limit = if uri.path().starts_with("/fn/") {
        let limit = config.max_invoke_body_bytes();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::payload_too_large(limit));
        }
        usize::try_from(limit).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    };
    Ok(req.map(|body| Limited::new(body, limit)))
}

fn uri_too_long(detail: String) -> ApiError {
    ApiError::new(StatusCode::URI_TOO_LONG, "uri-too-long", "URI too long").detail(detail)
}

fn headers_too_large(detail: String) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers-too-large",
        "Request headers too large",
    )
    .detail(detail)
}

/// Refuses a JSON document nested deeper than [`MAX_JSON_DEPTH`], before a
/// parser recurses into it. Counts brackets outside strings; anything else
/// malformed is left to the parser.
pub fn check_json_depth(body: &[u8]) -> Result<(), ApiError> {
    let mut depth = 0_usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ApiError::bad_request(format!(
                        "the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_json_depth(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        let err = check_json_depth(nested(MAX_JSON_DEPTH + 1).as_bytes()).expect_err("deep");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        // Brackets in strings, escaped quotes included, do not count.
        let text = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert!(check_json_depth(text.as_bytes()).is_ok());
        // Siblings do not add up.
        let wide = format!("[{}]", vec![nested(MAX_JSON_DEPTH - 1); 50].join(","));
        assert!(check_json_depth(wide.as_bytes()).is_ok());
        assert!(check_json_depth(b"").is_ok());
    }

    #[test]
    fn heads_over_the_limits_are_refused() {
        let config = ServerConfig::default();
        let request = |uri: &str| Request::builder().uri(uri).body(()).expect("request");
        assert!(admit(&config, request("/v1/functions")).is_ok());
        let long = format!("/fn/x/{}", "a".repeat(config.max_uri_bytes()));
        let err = admit(&config, request(&long)).expect_err("long target");
        assert_eq!(err.status, StatusCode::URI_TOO_LONG);
        let query = format!("/fn/x/?q={}", "a".repeat(config.max_query_bytes()));
        let err = admit(&config, request(&query)).expect_err("long query");
        assert!(err.detail.contains("query"), "{}", err.detail);

        let mut many = Request::builder().uri("/healthz");
        for i in 0..=config.max_headers {
            many = many.header(format!("x-h{i}"), "1");
        }
        let err = admit(&config, many.body(()).expect("request")).expect_err("count");
        assert_eq!(err.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let big = Request::builder()
            .uri("/healthz")
            .header("x-big", "a".repeat(config.max_header_bytes()))
            .body(())
            .expect("request");
        let err = admit(&config, big).expect_err("size");
        assert_eq!(err.kind, "headers-too-large");

        let declared = Request::builder()
            .uri("/fn/x/")
            .header(
                "content-length",
                (config.max_invoke_body_bytes() + 1).to_string(),
            )
            .body(())
            .expect("request");
        let err = admit(&config, declared).expect_err("body");
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
