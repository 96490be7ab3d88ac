//! `classify-digits`: reads an 8x8 handwritten digit and answers which digit
//! it is, using the `digits` model through `wasi:nn`.
//!
//! `POST` a JSON body `{"pixels": [64 numbers, 0-16]}` (row-major, as in
//! scikit-learn's digits dataset) and get
//! `{"label": 0-9, "probabilities": [10 numbers]}`. A malformed body gets
//! `400` with the reason; a model that is unavailable or fails gets `503` or
//! `500` with the `wasi:nn` error code. Successful answers carry
//! `server-timing: infer;dur=<ms>`, the time spent in `compute`.

use std::io::Write as _;

use serde::{Deserialize, Serialize};
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

wit_bindgen::generate!({
    path: "../../wit/deps/nn.wit",
    world: "ml",
});

use wasi::nn::errors::{Error as NnError, ErrorCode};
use wasi::nn::graph;
use wasi::nn::tensor::{Tensor, TensorType};

wasip2::http::proxy::export!(ClassifyDigits);

/// The model this function asks for by name.
const MODEL: &str = "digits";
/// Pixels in one image.
const PIXELS: usize = 64;
/// Largest accepted request body.
const MAX_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    pixels: Vec<f32>,
}

#[derive(Serialize)]
struct Output {
    label: usize,
    probabilities: Vec<f32>,
    /// Nanoseconds spent in `compute` (reported in a header, not the body).
    #[serde(skip)]
    infer_ns: u64,
}

struct ClassifyDigits;

impl wasip2::exports::http::incoming_handler::Guest for ClassifyDigits {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let (status, body, timing) = match classify(&request) {
            Ok(output) => (
                200,
                serde_json::to_vec(&output).unwrap_or_default(),
                Some(format!("infer;dur={:.3}", output.infer_ns as f64 / 1e6)),
            ),
            Err((status, detail)) => (status, problem(status, &detail), None),
        };
        respond(response_out, status, &body, timing);
    }
}

fn classify(request: &IncomingRequest) -> Result<Output, (u16, String)> {
    let body = read_body(request).map_err(|e| (400, e))?;
    let input: Input = serde_json::from_slice(&body).map_err(|e| {
        (
            400,
            format!("the body must be JSON {{\"pixels\": [64 numbers 0-16]}}: {e}"),
        )
    })?;
    if input.pixels.len() != PIXELS {
        return Err((400, format!("expected {PIXELS} pixels, got {}", input.pixels.len())));
    }
    if let Some(p) = input.pixels.iter().find(|p| !(0.0..=16.0).contains(*p)) {
        return Err((400, format!("pixel values must be 0-16, got {p}")));
    }

    let graph = graph::load_by_name(MODEL).map_err(|e| nn_failure("loading the model", &e))?;
    let context = graph
        .init_execution_context()
        .map_err(|e| nn_failure("preparing inference", &e))?;
    let data: Vec<u8> = input.pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
    let tensor = Tensor::new(&[1, PIXELS as u32], TensorType::Fp32, &data);
    let started = wasip2::clocks::monotonic_clock::now();
    let outputs = context
        .compute(vec![("pixels".to_string(), tensor)])
        .map_err(|e| nn_failure("running the model", &e))?;
    let infer_ns = wasip2::clocks::monotonic_clock::now().saturating_sub(started);
    let (_, probabilities) = outputs
        .into_iter()
        .next()
        .ok_or_else(|| (500, "the model produced no output".to_string()))?;
    let probabilities: Vec<f32> = probabilities
        .data()
        .chunks_exact(4)
        .filter_map(|c| c.try_into().ok().map(f32::from_le_bytes))
        .collect();
    let label = probabilities
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(ix, _)| ix)
        .ok_or_else(|| (500, "the model produced an empty output".to_string()))?;
    Ok(Output {
        label,
        probabilities,
        infer_ns,
    })
}

/// Turns a wasi:nn error into a status and a message naming its code.
fn nn_failure(what: &str, e: &NnError) -> (u16, String) {
    let code = e.code();
    let status = match code {
        ErrorCode::NotFound | ErrorCode::Timeout => 503,
        ErrorCode::InvalidArgument | ErrorCode::TooLarge => 400,
        _ => 500,
    };
    (status, format!("{what}: wasi-nn error {code:?}: {}", e.data()))
}

fn problem(status: u16, detail: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "about:blank",
        "status": status,
        "detail": detail,
    }))
    .unwrap_or_default()
}

/// Reads the whole request body, refusing more than `MAX_BODY` bytes.
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body = request
        .consume()
        .map_err(|()| "request body already consumed".to_string())?;
    let stream = body
        .stream()
        .map_err(|()| "request body stream already taken".to_string())?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(MAX_BODY as u64) {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_BODY {
                    return Err(format!("the body is larger than {MAX_BODY} bytes"));
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(format!("reading the body: {}", e.to_debug_string()));
            }
        }
    }
    drop(stream);
    let _ = IncomingBody::finish(body);
    Ok(bytes)
}

fn respond(response_out: ResponseOutparam, status: u16, body: &[u8], timing: Option<String>) {
    let content_type = if status == 200 {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut fields = vec![("content-type".to_string(), content_type.as_bytes().to_vec())];
    if let Some(timing) = timing {
        fields.push(("server-timing".to_string(), timing.into_bytes()));
    }
    let Ok(headers) = Fields::from_list(&fields) else {
        return;
    };
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    let Ok(mut stream) = outgoing.write() else {
        return;
    };
    let written = stream.write_all(body).is_ok() && stream.blocking_flush().is_ok();
    drop(stream);
    if written {
        let _ = OutgoingBody::finish(outgoing, None);
    }
}
