//! `embed-text`: turns sentences into 384-dimensional unit vectors with the
//! pretrained paraphrase-MiniLM-L3-v2 model, granted to it as `minilm`, through
//! `wasi:nn`, so that similar meanings get nearby vectors.
//!
//! - `POST /` with `{"text": "..."}` answers
//!   `{"embedding": [384 numbers], "dimensions": 384, "tokens": N, "truncated": false}`.
//! - `POST /` with `{"texts": ["...", ...]}` (1 to 32) answers
//!   `{"embeddings": [[...], ...], "dimensions": 384, "tokens": [N, ...], "truncated": [false, ...]}`;
//!   the texts run as one batch, padded to the longest (rounded up to 8, 16,
//!   32, 64 or 128 tokens, see `SEQ_BUCKETS`); padding does not change a vector.
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
//! The tokenizer is the SDK's BERT uncased WordPiece (`glia_sdk::text`),
//! which reproduces Hugging Face `tokenizers` exactly; `model/reference.json`
//! holds the ids and vectors it is checked against.

mod request;

use glia_sdk::nn::Model;
use glia_sdk::text::{Encoding, WordPiece};
use glia_sdk::{Error, Method, Request, Response, handler, ops, timing};
use serde::Serialize;

use request::Route;

/// The model this function asks for by name.
const MODEL: &str = "minilm";
/// The model's pooled (attention-masked mean) sentence embedding output...
const POOLED_OUTPUT: &str = "461";
/// ...and its position, for a backend that names outputs differently.
const POOLED_OUTPUT_INDEX: usize = 3;
/// Length of a sentence vector.
const DIMENSIONS: usize = 384;
/// Longest input the model takes, `[CLS]` and `[SEP]` included.
const MAX_TOKENS: usize = 128;
/// The sequence lengths a batch is padded to (the longest text's length
/// when it exceeds them all).
///
/// Not the longest text exactly: a backend that optimises one plan per
/// input shape (tract takes about 40 ms per new shape for this model,
/// against 3 to 20 ms for a run) then sees five shapes per batch size
/// instead of up to 128, so its plans stay cached. Padding a short text to 8
/// or 16 tokens costs well under a millisecond.
const SEQ_BUCKETS: [usize; 5] = [8, 16, 32, 64, 128];

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

#[handler(max_body = 256 * 1024)]
fn embed_text(request: Request) -> Result<Response, Error> {
    let route = Route::of(request.path()).ok_or_else(|| {
        Error::not_found(format!(
            "no endpoint at {}: POST / embeds texts, POST /similarity compares two",
            request.path()
        ))
    })?;
    if request.method() != &Method::Post {
        return Err(Error::method_not_allowed("POST"));
    }
    let parsed = request::parse(route, request.body()).map_err(Error::bad_request)?;

    let tokenizer = WordPiece::bert_uncased();
    let encodings: Vec<Encoding> = timing::measure("tokenize", || {
        parsed
            .texts()
            .into_iter()
            .map(|text| tokenizer.encode(text, MAX_TOKENS))
            .collect()
    });
    let vectors = embed(&tokenizer, &encodings)?;

    let tokens: Vec<usize> = encodings.iter().map(|e| e.ids.len()).collect();
    let truncated: Vec<bool> = encodings.iter().map(|e| e.truncated).collect();
    match parsed {
        request::Request::One(_) => Response::json(&One {
            embedding: vectors.first().map_or(&[][..], Vec::as_slice),
            dimensions: DIMENSIONS,
            tokens: tokens.first().copied().unwrap_or_default(),
            truncated: truncated.first().copied().unwrap_or_default(),
        }),
        request::Request::Many(_) => Response::json(&Many {
            embeddings: &vectors,
            dimensions: DIMENSIONS,
            tokens: &tokens,
            truncated: &truncated,
        }),
        request::Request::Similarity(..) => {
            let (Some(a), Some(b)) = (vectors.first(), vectors.get(1)) else {
                return Err(Error::internal("the model returned fewer than two vectors"));
            };
            Response::json(&Similarity {
                similarity: ops::dot(a, b),
                tokens: &tokens,
                truncated: &truncated,
            })
        }
    }
}

/// Runs the encodings through the model as one batch: one unit vector per
/// encoding.
fn embed(tokenizer: &WordPiece, encodings: &[Encoding]) -> Result<Vec<Vec<f32>>, Error> {
    let model = Model::load(MODEL)?;
    let batch = tokenizer.batch(encodings, &SEQ_BUCKETS)?;
    let outputs = model.infer([
        ("input_ids", &batch.input_ids),
        ("attention_mask", &batch.attention_mask),
    ])?;
    let pooled = outputs.get_or_at(POOLED_OUTPUT, POOLED_OUTPUT_INDEX)?;
    sentence_vectors(pooled.rows::<f32>(), pooled.dims(), encodings.len())
}

/// Checks the pooled output's rows (`f32 [batch, DIMENSIONS]`) and scales each
/// to unit length; anything else is the model's fault, `500`.
fn sentence_vectors(
    rows: Result<Vec<Vec<f32>>, glia_sdk::nn::Error>,
    dims: &[u32],
    batch: usize,
) -> Result<Vec<Vec<f32>>, Error> {
    let want = [batch, DIMENSIONS];
    if dims.len() != 2
        || dims
            .iter()
            .zip(want)
            .any(|(&got, want)| got as usize != want)
    {
        return Err(Error::internal(format!(
            "the model's pooled output has dimensions {dims:?}, expected {want:?}"
        )));
    }
    let mut rows = rows.map_err(|e| Error::internal(format!("the model's pooled output: {e}")))?;
    rows.iter_mut().for_each(|v| ops::l2_normalize(v));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use glia_sdk::nn::Tensor;

    #[test]
    fn vectors_are_unit_length_and_shapes_are_checked() {
        let data: Vec<f32> = (0..2 * DIMENSIONS).map(|i| i as f32).collect();
        let pooled = Tensor::from_f32(&[2, 384], &data).expect("tensor");
        let vs = sentence_vectors(pooled.rows(), pooled.dims(), 2).expect("valid");
        assert_eq!(vs.len(), 2);
        for v in &vs {
            assert!((ops::dot(v, v) - 1.0).abs() < 1e-5);
        }
        assert!(sentence_vectors(pooled.rows(), &[1, 384], 2).is_err());
        assert!(sentence_vectors(pooled.rows(), &[2, 384, 1], 2).is_err());
        let ids = Tensor::from_i64(&[2, 384], &vec![0; 768]).expect("tensor");
        let error = sentence_vectors(ids.rows(), ids.dims(), 2).expect_err("type");
        assert_eq!(error.status(), 500);
    }

    #[test]
    fn routes_and_methods_come_before_the_model() {
        let error = embed_text(Request::post("/other")).expect_err("404");
        assert_eq!(error.status(), 404);
        let error = embed_text(Request::get("/")).expect_err("405");
        assert_eq!(error.status(), 405);
        assert_eq!(error.to_response().headers().get("allow"), Some("POST"));
        let error = embed_text(Request::post("/").with_body("{}")).expect_err("400");
        assert!(error.detail().contains("missing field `text`"), "{error}");
    }
}
