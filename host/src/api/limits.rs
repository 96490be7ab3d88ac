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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Bytes of uploads (components and models) held in memory at once, for
/// the platform as a whole (`server.max_buffered_upload_mb`): every upload
/// is read whole before it is validated, and many large ones at once would
/// otherwise take the process's memory with them. An upload that finds no
/// room gets `503` with `Retry-After`.
#[derive(Debug)]
pub struct UploadBudget {
    limit: u64,
    used: Arc<AtomicU64>,
}

/// What one upload holds of the [`UploadBudget`]; given back when dropped.
#[derive(Debug)]
pub struct UploadLease {
    used: Arc<AtomicU64>,
    held: u64,
}

impl Drop for UploadLease {
    fn drop(&mut self) {
        self.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

impl UploadBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: Arc::default(),
        }
    }

    /// Bytes held by uploads now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty lease, to grow as bytes arrive.
    fn lease(&self) -> UploadLease {
        UploadLease {
            used: self.used.clone(),
            held: 0,
        }
    }

    /// Adds `bytes` to `lease`, if the budget has room.
    fn grow(&self, lease: &mut UploadLease, bytes: u64) -> Result<(), ApiError> {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            });
        if taken.is_err() {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upload-capacity",
                "Too many uploads in progress",
            )
            .detail(format!(
                "the platform holds as many uploaded bytes as it may at once ({} MiB, \
                 server.max_buffered_upload_mb); retry shortly",
                self.limit / (1024 * 1024)
            ));
            e.retry_after_secs = Some(1);
            return Err(e);
        }
        lease.held += bytes;
        Ok(())
    }

    /// Reads an upload's whole body, refusing more than `limit` bytes with
    /// 413 (early, from `content-length`, when the client sends one) and
    /// what the budget has no room for with 503. The bytes count against
    /// the budget until the lease is dropped.
    pub async fn read<B>(
        &self,
        req: Request<B>,
        limit: u64,
    ) -> Result<(Bytes, UploadLease), ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt as _;
        let declared = declared_length(&req);
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::payload_too_large(limit));
        }
        let mut lease = self.lease();
        if let Some(declared) = declared {
            self.grow(&mut lease, declared)?;
        }
        let mut body = std::pin::pin!(req.into_body());
        let mut bytes =
            bytes::BytesMut::with_capacity(usize::try_from(declared.unwrap_or(0)).unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request(format!("reading the request body: {}", e.into()))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = data.len() as u64;
            let total = bytes.len() as u64 + len;
            if total > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            let more = total.saturating_sub(lease.held);
            if more > 0 {
                self.grow(&mut lease, more)?;
            }
            bytes.extend_from_slice(&data);
        }
        Ok((bytes.freeze(), lease))
    }
}

/// A request's `content-length`, when it declares one.
pub(super) fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
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
