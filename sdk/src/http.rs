//! The HTTP exchange as plain values: a [`Request`] with its body already
//! read, and the [`Response`] to send. Plain values can be built in tests,
//! which is what makes a handler testable off WebAssembly.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    /// Any other method, as sent.
    Other(String),
}

impl Method {
    /// The method as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other(other) => other,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// HTTP headers: names compared case-insensitively (kept lowercase), several
/// values per name allowed, in the order they came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Vec<u8>)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value of `name`, if it is there and is UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The first value of `name` as bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        let name = name.to_ascii_lowercase();
        self.entries
            .iter()
            .filter(move |(entry, _)| *entry == name)
            .map(|(_, value)| value.as_slice())
    }

    /// Whether `name` has a value.
    pub fn contains(&self, name: &str) -> bool {
        self.get_all(name).next().is_some()
    }

    /// Sets `name` to `value`, replacing its values.
    pub fn insert(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.remove(name);
        self.append(name, value);
    }

    /// Adds a value for `name`, keeping its others.
    pub fn append(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.entries.push((name.to_ascii_lowercase(), value.into()));
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.entries
            .retain(|(entry, _)| !entry.eq_ignore_ascii_case(name));
    }

    /// Every `(name, value)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The request a handler gets: method, path, query string, headers and the
/// whole body.
///
/// The path and query are as the client sent them to the function: on glia,
/// a call to `/fn/NAME/a/b?x=1` arrives as path `/a/b` and query `x=1`.
///
/// ```
/// use glia_sdk::{Method, Request};
///
/// let request = Request::post("/similarity?top=3&q=caf%C3%A9+au+lait")
///     .with_header("Content-Type", "application/json")
///     .with_body(r#"{"a": "x"}"#);
/// assert_eq!(request.method(), &Method::Post);
/// assert_eq!(request.path(), "/similarity");
/// assert_eq!(request.query(), "top=3&q=caf%C3%A9+au+lait");
/// assert_eq!(request.query_param("q").as_deref(), Some("café au lait"));
/// assert_eq!(request.header("content-type"), Some("application/json"));
/// let body: serde_json::Value = request.json().unwrap();
/// assert_eq!(body["a"], "x");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: Method,
    path: String,
    query: String,
    headers: Headers,
    body: Vec<u8>,
}

impl Request {
    /// A request for `path_with_query` (e.g. `/a/b?x=1`) without headers or
    /// body. A path that does not start with `/` gets one.
    pub fn new(method: Method, path_with_query: &str) -> Self {
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query, ""));
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Self {
            method,
            path,
            query: query.to_string(),
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// A `GET` request.
    pub fn get(path_with_query: &str) -> Self {
        Self::new(Method::Get, path_with_query)
    }

    /// A `POST` request.
    pub fn post(path_with_query: &str) -> Self {
        Self::new(Method::Post, path_with_query)
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON, with `content-type: application/json`.
    pub fn with_json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, Error> {
        let body =
            serde_json::to_vec(value).map_err(|e| Error::internal(format!("writing JSON: {e}")))?;
        Ok(self
            .with_header("content-type", "application/json")
            .with_body(body))
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path, starting with `/`, without the query string.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string, without `?` (empty when there is none).
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The decoded value of the first query parameter named `name`
    /// (`%XX` escapes and `+` decoded; invalid UTF-8 replaced).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// Every query parameter, decoded, in order. A parameter without `=`
    /// has an empty value.
    pub fn query_pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key), percent_decode(value))
            })
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name`, if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, taken out of the request.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The body as UTF-8 text; `400` when it is not.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body)
            .map_err(|e| Error::bad_request(format!("the body is not UTF-8 text: {e}")))
    }

    /// The body parsed as JSON into `T`; `400` with serde's reason when it
    /// does not parse.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::bad_request(format!("the body is not the JSON expected: {e}")))
    }
}

/// The response a handler sends: status, headers and body.
///
/// ```
/// use glia_sdk::Response;
///
/// let response = Response::json(&serde_json::json!({"label": 7}))
///     .unwrap()
///     .with_header("cache-control", "no-store");
/// assert_eq!(response.status(), 200);
/// assert_eq!(response.headers().get("content-type"), Some("application/json"));
/// assert_eq!(response.body(), br#"{"label":7}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// `200` with `value` as JSON (`content-type: application/json`); `500`
    /// when it cannot be written as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::internal(format!("writing the answer as JSON: {e}")))?;
        Ok(Self::bytes("application/json", body))
    }

    /// `200` with a UTF-8 text body (`content-type: text/plain; charset=utf-8`).
    pub fn text(body: impl Into<String>) -> Self {
        Self::bytes("text/plain; charset=utf-8", body.into())
    }

    /// `200` with `body` and its `content_type`.
    pub fn bytes(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        let mut response = Self::new(200);
        response.headers.insert("content-type", content_type);
        response.body = body.into();
        response
    }

    /// Sets the status.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers, to change them.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body parsed as JSON (for tests).
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::internal(format!("the response body is not the JSON expected: {e}"))
        })
    }

    /// Status, headers and body, taken apart.
    pub(crate) fn into_parts(self) -> (u16, Headers, Vec<u8>) {
        (self.status, self.headers, self.body)
    }
}

/// Decodes `%XX` escapes and `+` (a space). Malformed escapes stay as they
/// are; invalid UTF-8 is replaced.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let escaped = match (byte, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&high), Some(&low)) => hex_value(high).zip(hex_value(low)),
            _ => None,
        };
        match (byte, escaped) {
            (_, Some((high, low))) => {
                decoded.push(high << 4 | low);
                i += 3;
            }
            (b'+', None) => {
                decoded.push(b' ');
                i += 1;
            }
            (other, None) => {
                decoded.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        let request = Request::get("");
        assert_eq!((request.path(), request.query()), ("/", ""));
        let request = Request::get("a/b?");
        assert_eq!((request.path(), request.query()), ("/a/b", ""));
        let request = Request::get("/?a=1&b&a=2&c=%zz&d=%41%42+c&&e=%E2%82%AC");
        let pairs: Vec<(String, String)> = request.query_pairs().collect();
        assert_eq!(
            pairs,
            [
                ("a", "1"),
                ("b", ""),
                ("a", "2"),
                ("c", "%zz"),
                ("d", "AB c"),
                ("e", "€")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(request.query_param("a").as_deref(), Some("1"));
        assert_eq!(request.query_param("zz"), None);
    }

    #[test]
    fn headers_are_case_insensitive_and_ordered() {
        let mut headers = Headers::new();
        headers.append("X-A", "1");
        headers.append("x-a", "2");
        headers.append("x-b", vec![0xff]);
        assert_eq!(headers.get("x-A"), Some("1"));
        assert_eq!(headers.get_all("X-a").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(headers.get("x-b"), None, "not UTF-8");
        assert_eq!(headers.get_bytes("x-b"), Some(&[0xff][..]));
        headers.insert("X-A", "3");
        assert_eq!(
            headers.iter().collect::<Vec<_>>(),
            [("x-b", &[0xff][..]), ("x-a", b"3")]
        );
        headers.remove("x-b");
        assert_eq!(headers.len(), 1);
        assert!(!headers.contains("x-b"));
    }

    #[test]
    fn bodies_as_text_and_json() {
        #[derive(serde::Deserialize, Debug)]
        struct Input {
            #[allow(dead_code, reason = "read through Debug")]
            n: u32,
        }
        let request = Request::post("/").with_body(vec![0xff]);
        assert_eq!(request.text().map_err(|e| e.status()), Err(400));
        let error = Request::post("/")
            .with_body(r#"{"n": "x"}"#)
            .json::<Input>()
            .expect_err("wrong type");
        assert_eq!(error.status(), 400);
        assert!(error.detail().contains("invalid type"), "{error}");
        let request = Request::post("/")
            .with_json(&serde_json::json!({"n": 1}))
            .expect("json");
        assert_eq!(request.json::<Input>().expect("parses").n, 1);
        assert_eq!(request.header("content-type"), Some("application/json"));
    }

    #[test]
    fn responses() {
        let response = Response::text("hi").with_status(201);
        assert_eq!(response.status(), 201);
        assert_eq!(
            response.headers().get("content-type"),
            Some("text/plain; charset=utf-8")
        );
        let value: serde_json::Value = Response::json(&[1, 2])
            .expect("json")
            .json_body()
            .expect("parses");
        assert_eq!(value, serde_json::json!([1, 2]));
        assert_eq!(Method::Other("PURGE".into()).to_string(), "PURGE");
    }
}
