//! `hello`: the smallest glia function.
//!
//! Answers every method and path with `200 OK` and a JSON description of the
//! request it received:
//!
//! ```json
//! {"greeting":"Hello from glia!","method":"GET","path":"/some/path","query":"a=1","body":"","body_bytes":0}
//! ```
//!
//! `query` is the raw query string (empty when there is none) and `body` is the
//! request body decoded as UTF-8, with invalid sequences replaced. A `name`
//! query parameter personalises the greeting: `?name=Ada` gives
//! `"Hello, Ada!"`.

use std::io::Write as _;

use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};
use wasip2::io::streams::StreamError;

wasip2::http::proxy::export!(Hello);

/// Largest number of bytes asked for in one read of the request body.
const READ_CHUNK: u64 = 64 * 1024;

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let body = match read_body(&request) {
            Ok(body) => body,
            Err(message) => {
                ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(message))));
                return;
            }
        };

        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let greeting = match query_param(query, "name") {
            Some(name) => format!("Hello, {name}!"),
            None => "Hello from glia!".to_owned(),
        };

        let mut json = String::with_capacity(128 + body.len());
        json.push('{');
        push_field(&mut json, "greeting", &greeting);
        json.push(',');
        push_field(&mut json, "method", method_name(&request.method()));
        json.push(',');
        push_field(&mut json, "path", path);
        json.push(',');
        push_field(&mut json, "query", query);
        json.push(',');
        push_field(&mut json, "body", &String::from_utf8_lossy(&body));
        json.push_str(",\"body_bytes\":");
        json.push_str(&body.len().to_string());
        json.push('}');

        respond(response_out, "application/json", json.as_bytes());
    }
}

/// Reads the whole request body, blocking until the client has sent all of it.
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body = request
        .consume()
        .map_err(|()| "request body already consumed".to_owned())?;
    let stream = body
        .stream()
        .map_err(|()| "request body stream already taken".to_owned())?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(format!("reading request body: {}", error.to_debug_string()));
            }
        }
    }
    // The stream is a child of the body and must be dropped before finishing it.
    drop(stream);
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

/// Sends a `200 OK` response with the given content type and body.
fn respond(response_out: ResponseOutparam, content_type: &str, body: &[u8]) {
    let headers = match Fields::from_list(&[("content-type".to_owned(), content_type.into())]) {
        Ok(headers) => headers,
        Err(error) => {
            let message = format!("building response headers: {error:?}");
            ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(message))));
            return;
        }
    };
    let response = OutgoingResponse::new(headers);
    let Ok(outgoing) = response.body() else {
        let message = "response body already taken".to_owned();
        ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(message))));
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));

    // Once the headers are out, the only way to report a failure is to drop the
    // body without finishing it, which the host treats as an aborted response.
    let Ok(mut stream) = outgoing.write() else {
        return;
    };
    let written = stream.write_all(body).is_ok() && stream.blocking_flush().is_ok();
    drop(stream);
    if !written {
        return;
    }
    // An error here means the client went away; there is no one left to tell.
    let _ = OutgoingBody::finish(outgoing, None);
}

/// The request method as it appears on the wire.
fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
}

/// The percent-decoded value of the first `key=value` pair named `key` in a
/// query string, if any.
fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == key)
        .map(|(_, value)| percent_decode(value))
}

/// Decodes `%XX` escapes and `+` (as a space) in a query string value. Malformed
/// escapes are kept as they are; invalid UTF-8 is replaced.
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

/// Appends `"name":"value"` to `json`, escaping `value` as a JSON string.
fn push_field(json: &mut String, name: &str, value: &str) {
    json.push('"');
    json.push_str(name);
    json.push_str("\":\"");
    for c in value.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            '\n' => json.push_str("\\n"),
            '\r' => json.push_str("\\r"),
            '\t' => json.push_str("\\t"),
            c if c < ' ' => {
                let code = u32::from(c);
                json.push_str("\\u00");
                json.extend(
                    [code >> 4, code & 0xf].map(|digit| char::from_digit(digit, 16).unwrap_or('0')),
                );
            }
            c => json.push(c),
        }
    }
    json.push('"');
}
