//! Failures a handler answers with: an HTTP status and an RFC 9457
//! `application/problem+json` body, the same shape the platform uses for its
//! own errors, so clients parse one kind of error.

use std::fmt;

use crate::http::{Headers, Response};

/// A failure that becomes an `application/problem+json` response.
///
/// ```
/// use glia_sdk::Error;
///
/// let error = Error::bad_request("expected 64 pixels, got 3").with_field("got", 3);
/// let response = error.to_response();
/// assert_eq!(response.status(), 400);
/// assert_eq!(response.headers().get("content-type"), Some("application/problem+json"));
/// assert_eq!(
///     std::str::from_utf8(response.body()).unwrap(),
///     r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"expected 64 pixels, got 3","got":3}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Error(Box<Problem>);

/// An [`Error`]'s parts, boxed so that `Result<T, Error>` stays small.
#[derive(Debug, Clone, PartialEq)]
struct Problem {
    status: u16,
    kind: Option<String>,
    title: Option<String>,
    detail: String,
    fields: Vec<(String, Field)>,
    headers: Headers,
}

/// The value of a problem's extension field.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Text(String),
    Integer(i64),
    Number(f64),
    Bool(bool),
}

impl From<&str> for Field {
    fn from(value: &str) -> Self {
        Self::Text(value.to_string())
    }
}

impl From<String> for Field {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

impl From<bool> for Field {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

impl From<f64> for Field {
    fn from(value: f64) -> Self {
        Self::Number(value)
    }
}

macro_rules! integer_fields {
    ($($t:ty),*) => {$(
        impl From<$t> for Field {
            fn from(value: $t) -> Self {
                Self::Integer(i64::try_from(value).unwrap_or(i64::MAX))
            }
        }
    )*};
}
integer_fields!(i32, i64, u16, u32, u64, usize);

impl Error {
    /// A problem with `status` (400 to 599) and a human-readable `detail`.
    /// A status outside that range is taken as 500.
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        Self(Box::new(Problem {
            status: if (400..=599).contains(&status) {
                status
            } else {
                500
            },
            kind: None,
            title: None,
            detail: detail.into(),
            fields: Vec::new(),
            headers: Headers::new(),
        }))
    }

    /// `400 Bad Request`: the client sent something this function cannot use.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, detail)
    }

    /// `404 Not Found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, detail)
    }

    /// `405 Method Not Allowed`, with `Allow: {allow}` (e.g. `"GET, POST"`).
    pub fn method_not_allowed(allow: &str) -> Self {
        Self::new(405, format!("use {allow}")).with_header("allow", allow)
    }

    /// `413 Content Too Large`: the body is over `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(413, format!("the body is larger than {limit} bytes"))
            .with_field("limit_bytes", limit)
    }

    /// `500 Internal Server Error`: the function failed.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(500, detail)
    }

    /// `503 Service Unavailable`: something the function needs is not there
    /// now (a model, say).
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(503, detail)
    }

    /// Sets the problem's `type`, a URI naming this kind of problem
    /// (default `about:blank`).
    #[must_use]
    pub fn with_type(mut self, uri: impl Into<String>) -> Self {
        self.0.kind = Some(uri.into());
        self
    }

    /// Sets the problem's `title` (default: the status's reason phrase).
    #[must_use]
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.0.title = Some(title.into());
        self
    }

    /// Adds an extension field to the problem body (replacing one of the same
    /// name). The standard members (`type`, `title`, `status`, `detail`)
    /// cannot be replaced this way.
    #[must_use]
    pub fn with_field(mut self, name: impl Into<String>, value: impl Into<Field>) -> Self {
        let name = name.into();
        if matches!(name.as_str(), "type" | "title" | "status" | "detail") {
            return self;
        }
        self.0.fields.retain(|(existing, _)| *existing != name);
        self.0.fields.push((name, value.into()));
        self
    }

    /// Adds a response header (e.g. `retry-after`).
    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.0.headers.append(name, value);
        self
    }

    /// Puts `context: ` in front of the detail.
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.0.detail = format!("{context}: {}", self.0.detail);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.0.status
    }

    /// The human-readable explanation.
    pub fn detail(&self) -> &str {
        &self.0.detail
    }

    /// The title: set with [`Error::with_title`], else the status's reason
    /// phrase.
    pub fn title(&self) -> &str {
        self.0
            .title
            .as_deref()
            .unwrap_or_else(|| reason_phrase(self.0.status))
    }

    /// An extension field, if set.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.0
            .fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value)
    }

    /// The problem as a JSON document.
    pub fn to_json(&self) -> String {
        let mut json = String::with_capacity(96 + self.0.detail.len());
        json.push_str("{\"type\":");
        push_json_string(&mut json, self.0.kind.as_deref().unwrap_or("about:blank"));
        json.push_str(",\"title\":");
        push_json_string(&mut json, self.title());
        json.push_str(",\"status\":");
        json.push_str(&self.0.status.to_string());
        json.push_str(",\"detail\":");
        push_json_string(&mut json, &self.0.detail);
        for (name, value) in &self.0.fields {
            json.push(',');
            push_json_string(&mut json, name);
            json.push(':');
            match value {
                Field::Text(text) => push_json_string(&mut json, text),
                Field::Integer(n) => json.push_str(&n.to_string()),
                Field::Number(n) if n.is_finite() => json.push_str(&n.to_string()),
                Field::Number(_) => json.push_str("null"),
                Field::Bool(b) => json.push_str(if *b { "true" } else { "false" }),
            }
        }
        json.push('}');
        json
    }

    /// The response this error is answered with.
    pub fn to_response(&self) -> Response {
        let mut response = Response::bytes("application/problem+json", self.to_json());
        for (name, value) in self.0.headers.iter() {
            response.headers_mut().append(name, value);
        }
        response.with_status(self.0.status)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.0.status, self.title(), self.0.detail)
    }
}

impl std::error::Error for Error {}

impl From<crate::nn::Error> for Error {
    /// A model that is missing (or not granted) or timed out is `503`; inputs
    /// the model refuses are `400`; anything else is `500`. The `wasi:nn`
    /// error code is in the `wasi_nn_error` field.
    fn from(error: crate::nn::Error) -> Self {
        use crate::nn::ErrorCode;
        let status = match error.code() {
            ErrorCode::NotFound | ErrorCode::Timeout => 503,
            ErrorCode::InvalidArgument | ErrorCode::TooLarge => 400,
            _ => 500,
        };
        Self::new(status, error.to_string()).with_field("wasi_nn_error", error.code().name())
    }
}

/// Turns any error into an [`Error`] with a status, keeping its message.
///
/// ```
/// use glia_sdk::{Error, ResultExt};
///
/// fn parse(text: &str) -> Result<u32, Error> {
///     text.parse::<u32>().or_bad_request("`count` must be a number")
/// }
/// let error = parse("many").unwrap_err();
/// assert_eq!(error.status(), 400);
/// assert_eq!(error.detail(), "`count` must be a number: invalid digit found in string");
/// ```
pub trait ResultExt<T> {
    /// `Err(e)` becomes an [`Error`] with `status` and the detail
    /// `"{context}: {e}"`.
    fn or_status(self, status: u16, context: &str) -> Result<T, Error>;

    /// `Err(e)` becomes `400 Bad Request`.
    fn or_bad_request(self, context: &str) -> Result<T, Error>
    where
        Self: Sized,
    {
        self.or_status(400, context)
    }

    /// `Err(e)` becomes `500 Internal Server Error`.
    fn or_internal(self, context: &str) -> Result<T, Error>
    where
        Self: Sized,
    {
        self.or_status(500, context)
    }
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    fn or_status(self, status: u16, context: &str) -> Result<T, Error> {
        self.map_err(|e| Error::new(status, format!("{context}: {e}")))
    }
}

/// What a [`handler`](crate::handler) may return.
#[diagnostic::on_unimplemented(
    message = "a glia handler must return a `Response`, an `Error` or a `Result` of them, not `{Self}`",
    label = "the handler's return type"
)]
pub trait IntoResponse {
    /// The response to send.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.to_response()
    }
}

impl<T: IntoResponse, E: Into<Error>> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(error) => error.into().to_response(),
        }
    }
}

/// The reason phrase of a status (RFC 9110), or a generic one.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ if status < 500 => "Client Error",
        _ => "Server Error",
    }
}

/// Appends `value` to `json` as a JSON string.
pub(crate) fn push_json_string(json: &mut String, value: &str) {
    json.push('"');
    for c in value.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            '\n' => json.push_str("\\n"),
            '\r' => json.push_str("\\r"),
            '\t' => json.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                json.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => json.push(c),
        }
    }
    json.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_json_is_valid_and_escaped() {
        let error = Error::new(422, "a \"quoted\"\nline\u{1}")
            .with_type("urn:example:bad")
            .with_field("n", 3u32)
            .with_field("ok", false)
            .with_field("ratio", 0.5)
            .with_field("nan", f64::NAN)
            .with_field("status", 1)
            .with_field("n", 4u32);
        let value: serde_json::Value = serde_json::from_str(&error.to_json()).expect("valid JSON");
        assert_eq!(
            value,
            serde_json::json!({
                "type": "urn:example:bad",
                "title": "Unprocessable Content",
                "status": 422,
                "detail": "a \"quoted\"\nline\u{1}",
                "ok": false,
                "ratio": 0.5,
                "nan": null,
                "n": 4,
            })
        );
    }

    #[test]
    fn statuses_outside_errors_become_500() {
        assert_eq!(Error::new(200, "x").status(), 500);
        assert_eq!(Error::new(399, "x").status(), 500);
        assert_eq!(Error::new(599, "x").status(), 599);
    }

    #[test]
    fn responses_carry_status_headers_and_body() {
        let response = Error::method_not_allowed("POST").to_response();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers().get("allow"), Some("POST"));
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
        assert_eq!(body["detail"], "use POST");
        assert_eq!(body["title"], "Method Not Allowed");

        let response: Result<Response, Error> = Err(Error::payload_too_large(10));
        let response = response.into_response();
        assert_eq!(response.status(), 413);
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
        assert_eq!(body["limit_bytes"], 10);
    }

    #[test]
    fn nn_errors_map_to_statuses() {
        use crate::nn::{self, ErrorCode};
        for (code, status) in [
            (ErrorCode::NotFound, 503),
            (ErrorCode::Timeout, 503),
            (ErrorCode::InvalidArgument, 400),
            (ErrorCode::TooLarge, 400),
            (ErrorCode::RuntimeError, 500),
            (ErrorCode::UnsupportedOperation, 500),
        ] {
            let error = Error::from(nn::Error::new(code, "loading model `m`", "why"));
            assert_eq!(error.status(), status, "{code:?}");
            assert_eq!(
                error.field("wasi_nn_error"),
                Some(&Field::Text(code.name().to_string()))
            );
            assert!(error.detail().starts_with("loading model `m`: "), "{error}");
        }
    }
}
