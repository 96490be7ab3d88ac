//! The `wasi:http/incoming-handler` export behind `#[handler]`: turns the
//! host's request resource into a [`Request`], calls the handler, and writes
//! its [`Response`] back, with the call's `server-timing` entries.

use std::io::Write as _;

use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method as WasiMethod, OutgoingBody,
    OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

use crate::{Error, Headers, IntoResponse, Method, Request, Response, timing};

/// Largest number of bytes asked for in one read of the request body.
const READ_CHUNK: u64 = 64 * 1024;

/// Serves one request with `handler`: reads the request (its body up to
/// `max_body` bytes), calls the handler and sends what it returns.
pub fn serve<F, R>(
    request: IncomingRequest,
    response_out: ResponseOutparam,
    max_body: usize,
    handler: F,
) where
    F: FnOnce(Request) -> R,
    R: IntoResponse,
{
    timing::reset();
    let response = match read_request(&request, max_body) {
        Ok(request) => handler(request).into_response(),
        Err(error) => error.into_response(),
    };
    drop(request);
    send(response_out, timing::annotate(response));
}

/// The request as a plain value, its body read whole.
fn read_request(request: &IncomingRequest, max_body: usize) -> Result<Request, Error> {
    let path_with_query = request.path_with_query().unwrap_or_default();
    let mut plain = Request::new(method(request.method()), &path_with_query);
    for (name, value) in request.headers().entries() {
        plain = plain.with_header(&name, value);
    }
    let body = read_body(request, max_body)?;
    Ok(plain.with_body(body))
}

fn method(method: WasiMethod) -> Method {
    match method {
        WasiMethod::Get => Method::Get,
        WasiMethod::Head => Method::Head,
        WasiMethod::Post => Method::Post,
        WasiMethod::Put => Method::Put,
        WasiMethod::Delete => Method::Delete,
        WasiMethod::Connect => Method::Connect,
        WasiMethod::Options => Method::Options,
        WasiMethod::Trace => Method::Trace,
        WasiMethod::Patch => Method::Patch,
        WasiMethod::Other(other) => Method::Other(other),
    }
}

/// Reads the whole body, refusing more than `max_body` bytes with `413`.
fn read_body(request: &IncomingRequest, max_body: usize) -> Result<Vec<u8>, Error> {
    let body = request
        .consume()
        .map_err(|()| Error::internal("the request body was already consumed"))?;
    let stream = body
        .stream()
        .map_err(|()| Error::internal("the request body stream was already taken"))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > max_body {
                    return Err(Error::payload_too_large(max_body));
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(Error::bad_request(format!(
                    "reading the body: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    // The stream is a child of the body and goes first.
    drop(stream);
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

/// Sends `response`. Headers the host refuses turn it into a `500` naming
/// them.
fn send(response_out: ResponseOutparam, response: Response) {
    let (status, headers, body) = response.into_parts();
    let (status, fields, body) = match fields(&headers) {
        Ok(fields) => (status, fields, body),
        Err(error) => {
            let (status, headers, body) = error.to_response().into_parts();
            match fields(&headers) {
                Ok(fields) => (status, fields, body),
                Err(_) => {
                    let message = "building the response headers failed".to_string();
                    ResponseOutparam::set(
                        response_out,
                        Err(ErrorCode::InternalError(Some(message))),
                    );
                    return;
                }
            }
        }
    };
    let outgoing = OutgoingResponse::new(fields);
    if outgoing.set_status_code(status).is_err() {
        let message = format!("invalid response status {status}");
        ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(message))));
        return;
    }
    let Ok(outgoing_body) = outgoing.body() else {
        let message = "the response body was already taken".to_string();
        ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(message))));
        return;
    };
    ResponseOutparam::set(response_out, Ok(outgoing));

    // Once the headers are out, the only way to report a failure is to drop
    // the body without finishing it, which the host treats as an aborted
    // response.
    let Ok(mut stream) = outgoing_body.write() else {
        return;
    };
    let written = stream.write_all(&body).is_ok() && stream.blocking_flush().is_ok();
    drop(stream);
    if written {
        // An error here means the client went away; no one is left to tell.
        let _ = OutgoingBody::finish(outgoing_body, None);
    }
}

fn fields(headers: &Headers) -> Result<Fields, Error> {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_vec()))
        .collect();
    Fields::from_list(&entries).map_err(|e| {
        let names: Vec<&str> = headers.iter().map(|(name, _)| name).collect();
        Error::internal(format!(
            "the host refused the response headers {names:?}: {e:?}"
        ))
    })
}
