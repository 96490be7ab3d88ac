//! `embed-text`: turns sentences into 384-dimensional unit vectors with the
//! pretrained paraphrase-MiniLM-L3-v2 model, granted to it as `minilm`, through
//! `wasi:nn`, so that similar meanings get nearby vectors.
//!
//! - `POST /` with `{"text": "..."}` answers
//!   `{"embedding": [384 numbers], "dimensions": 384, "tokens": N, "truncated": false}`.
//! - `POST /` with `{"texts": ["...", ...]}` (1 to 32) answers
//!   `{"embeddings": [[...], ...], "dimensions": 384, "tokens": [N, ...], "truncated": [false, ...]}`;
//!   the texts run as one batch, padded to the longest (rounded up to 8, 16,
//!   32, 64 or 128 tokens, see `tensors`); padding does not change a vector.
//! - `POST /similarity` with `{"a": "...", "b": "..."}` answers
//!   `{"similarity": cosine, "tokens": [Na, Nb], "truncated": [false, false]}`.
//!
//! `N` counts the tokens the model saw, `[CLS]` and `[SEP]` included; a text
//! longer than 128 tokens is cut to 128 and reported `truncated`. A malformed
//! request gets `400` (`404` for another path, `405` for another method, `413`
//! for a body over 256 KiB) with the reason; a model that is unavailable or
//! fails gets `503` or `500` with the `wasi:nn` error code. Successful answers carry
//! `server-timing: tokenize;dur=<ms>, infer;dur=<ms>`.
//!
//! The tokenizer (`wordpiece`) reproduces Hugging Face `tokenizers` exactly;
//! `model/reference.json` holds the ids and vectors it is checked against.

mod request;
mod tensors;
mod wordpiece;

use std::io::Write as _;

use serde::Serialize;
use serde_json::json;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

use request::{Request, Route};
use tensors::DIMENSIONS;
use wordpiece::Encoding;

wit_bindgen::generate!({
    path: "../../wit/deps/nn.wit",
    world: "ml",
});

use wasi::nn::errors::{Error as NnError, ErrorCode};
use wasi::nn::graph;
use wasi::nn::tensor::{Tensor, TensorType};

wasip2::http::proxy::export!(EmbedText);

/// The model this function asks for by name.
const MODEL: &str = "minilm";
/// The model's pooled (attention-masked mean) sentence embedding output...
const POOLED_OUTPUT: &str = "461";
/// ...and its position, for a backend that names outputs differently.
const POOLED_OUTPUT_INDEX: usize = 3;
/// Longest input the model takes, `[CLS]` and `[SEP]` included.
const MAX_TOKENS: usize = 128;
/// Largest accepted request body.
const MAX_BODY: usize = 256 * 1024;

/// A successful answer.
struct Answer {
    body: Vec<u8>,
    tokenize_ns: u64,
    infer_ns: u64,
}

/// A refusal or failure, answered as `application/problem+json`.
struct Problem {
    status: u16,
    detail: String,
    /// The `wasi:nn` error code, when the model failed.
    nn_error: Option<&'static str>,
}

impl Problem {
    fn new(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            nn_error: None,
        }
    }

    fn body(&self) -> Vec<u8> {
        let mut problem = json!({
            "type": "about:blank",
            "title": title(self.status),
            "status": self.status,
            "detail": self.detail,
        });
        if let (Some(code), Some(fields)) = (self.nn_error, problem.as_object_mut()) {
            fields.insert("wasi_nn_error".to_string(), code.into());
        }
        serde_json::to_vec(&problem).unwrap_or_default()
    }
}

/// The answer to `{"text": ...}`.
#[derive(Serialize)]
struct One<'a> {
    embedding: &'a [f32],
    dimensions: usize,
    tokens: usize,
    truncated: bool,
}

/// The answer to `{"texts": [...]}`.
#[derive(Serialize)]
struct Many<'a> {
    embeddings: &'a [Vec<f32>],
    dimensions: usize,
    tokens: &'a [usize],
    truncated: &'a [bool],
}

/// The answer to `/similarity`.
#[derive(Serialize)]
struct Similarity<'a> {
    similarity: f32,
    tokens: &'a [usize],
    truncated: &'a [bool],
}

struct EmbedText;

impl wasip2::exports::http::incoming_handler::Guest for EmbedText {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        match serve(&request) {
            Ok(answer) => {
                let timing = format!(
                    "tokenize;dur={:.3}, infer;dur={:.3}",
                    answer.tokenize_ns as f64 / 1e6,
                    answer.infer_ns as f64 / 1e6
                );
                respond(
                    response_out,
                    200,
                    &answer.body,
                    &[("server-timing", &timing)],
                );
            }
            Err(problem) => {
                let allow: &[(&str, &str)] = if problem.status == 405 {
                    &[("allow", "POST")]
                } else {
                    &[]
                };
                respond(response_out, problem.status, &problem.body(), allow);
            }
        }
    }
}

fn serve(request: &IncomingRequest) -> Result<Answer, Problem> {
    let path = request.path_with_query().unwrap_or_default();
    let route = Route::of(&path).ok_or_else(|| {
        Problem::new(
            404,
            format!("no endpoint at {path}: POST / embeds texts, POST /similarity compares two"),
        )
    })?;
    if !matches!(request.method(), Method::Post) {
        return Err(Problem::new(405, "use POST"));
    }
    let body = read_body(request)?;
    let parsed = request::parse(route, &body).map_err(|e| Problem::new(400, e))?;

    let started = wasip2::clocks::monotonic_clock::now();
    let encodings: Vec<Encoding> = parsed
        .texts()
        .into_iter()
        .map(|text| wordpiece::encode(text, MAX_TOKENS))
        .collect();
    let tokenize_ns = wasip2::clocks::monotonic_clock::now().saturating_sub(started);
    let (vectors, infer_ns) = embed(&encodings)?;

    let tokens: Vec<usize> = encodings.iter().map(|e| e.ids.len()).collect();
    let truncated: Vec<bool> = encodings.iter().map(|e| e.truncated).collect();
    let body = match parsed {
        Request::One(_) => serde_json::to_vec(&One {
            embedding: vectors.first().map_or(&[][..], Vec::as_slice),
            dimensions: DIMENSIONS,
            tokens: tokens.first().copied().unwrap_or_default(),
            truncated: truncated.first().copied().unwrap_or_default(),
        }),
        Request::Many(_) => serde_json::to_vec(&Many {
            embeddings: &vectors,
            dimensions: DIMENSIONS,
            tokens: &tokens,
            truncated: &truncated,
        }),
        Request::Similarity(..) => {
            let (Some(a), Some(b)) = (vectors.first(), vectors.get(1)) else {
                return Err(Problem::new(
                    500,
                    "the model returned fewer than two vectors",
                ));
            };
            serde_json::to_vec(&Similarity {
                similarity: tensors::dot(a, b),
                tokens: &tokens,
                truncated: &truncated,
            })
        }
    }
    .map_err(|e| Problem::new(500, format!("writing the answer: {e}")))?;
    Ok(Answer {
        body,
        tokenize_ns,
        infer_ns,
    })
}

/// Runs the encodings through the model as one batch: one unit vector per
/// encoding, and the nanoseconds spent in `compute`.
fn embed(encodings: &[Encoding]) -> Result<(Vec<Vec<f32>>, u64), Problem> {
    let graph = graph::load_by_name(MODEL).map_err(|e| nn_failure("loading the model", &e))?;
    let context = graph
        .init_execution_context()
        .map_err(|e| nn_failure("preparing inference", &e))?;
    let batch = tensors::pad(encodings);
    let inputs = vec![
        (
            "input_ids".to_string(),
            Tensor::new(&batch.dims, TensorType::I64, &batch.input_ids),
        ),
        (
            "attention_mask".to_string(),
            Tensor::new(&batch.dims, TensorType::I64, &batch.attention_mask),
        ),
    ];
    let started = wasip2::clocks::monotonic_clock::now();
    let outputs = context
        .compute(inputs)
        .map_err(|e| nn_failure("running the model", &e))?;
    let infer_ns = wasip2::clocks::monotonic_clock::now().saturating_sub(started);

    let ix = outputs
        .iter()
        .position(|(name, _)| name == POOLED_OUTPUT)
        .unwrap_or(POOLED_OUTPUT_INDEX);
    let (_, pooled) = outputs.into_iter().nth(ix).ok_or_else(|| {
        Problem::new(
            500,
            format!("the model has no output `{POOLED_OUTPUT}` (pooled sentence embedding)"),
        )
    })?;
    if pooled.ty() != TensorType::Fp32 {
        return Err(Problem::new(
            500,
            format!(
                "the model's pooled output is {:?}, expected FP32",
                pooled.ty()
            ),
        ));
    }
    let vectors = tensors::sentence_vectors(&pooled.dimensions(), &pooled.data(), encodings.len())
        .map_err(|e| Problem::new(500, e))?;
    Ok((vectors, infer_ns))
}

/// Turns a wasi:nn error into a problem naming its code: the model missing
/// (or not granted) or busy is `503`, anything else `500`.
fn nn_failure(what: &str, e: &NnError) -> Problem {
    let code = e.code();
    let status = match code {
        ErrorCode::NotFound | ErrorCode::Timeout => 503,
        _ => 500,
    };
    let name = code_name(code);
    Problem {
        status,
        detail: format!("{what}: wasi-nn error {name}: {}", e.data()),
        nn_error: Some(name),
    }
}

/// The WIT name of an error code.
fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidArgument => "invalid-argument",
        ErrorCode::InvalidEncoding => "invalid-encoding",
        ErrorCode::Timeout => "timeout",
        ErrorCode::RuntimeError => "runtime-error",
        ErrorCode::UnsupportedOperation => "unsupported-operation",
        ErrorCode::TooLarge => "too-large",
        ErrorCode::NotFound => "not-found",
        ErrorCode::Security => "security",
        ErrorCode::Unknown => "unknown",
    }
}

fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Reads the whole request body, refusing more than `MAX_BODY` bytes.
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, Problem> {
    let body = request
        .consume()
        .map_err(|()| Problem::new(500, "request body already consumed"))?;
    let stream = body
        .stream()
        .map_err(|()| Problem::new(500, "request body stream already taken"))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(MAX_BODY as u64) {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_BODY {
                    return Err(Problem::new(
                        413,
                        format!("the body is larger than {MAX_BODY} bytes"),
                    ));
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(Problem::new(
                    400,
                    format!("reading the body: {}", e.to_debug_string()),
                ));
            }
        }
    }
    drop(stream);
    let _ = IncomingBody::finish(body);
    Ok(bytes)
}

fn respond(response_out: ResponseOutparam, status: u16, body: &[u8], headers: &[(&str, &str)]) {
    let content_type = if status == 200 {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut fields = vec![("content-type".to_string(), content_type.as_bytes().to_vec())];
    fields.extend(
        headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())),
    );
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
