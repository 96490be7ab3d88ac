//! `text-similarity`: ranks documents by how close their meaning is to a
//! query, with the `minilm` sentence-embedding model (paraphrase-MiniLM-L3-v2).
//!
//! `POST /` with
//!
//! ```json
//! {"query": "A man is playing a guitar.", "documents": ["Someone plays an instrument.", "The stock market fell."], "top": 1}
//! ```
//!
//! answers the documents by decreasing cosine similarity (`top` of them, all
//! when absent):
//!
//! ```json
//! {"results": [{"index": 0, "score": 0.49, "document": "Someone plays an instrument."}]}
//! ```
//!
//! The query and the documents (32 at most) run through the model as one
//! batch.

use glia_sdk::nn::Model;
use glia_sdk::text::{Encoding, WordPiece};
use glia_sdk::{Error, Request, Response, handler, ops, timing};
use serde::{Deserialize, Serialize};

/// The model, by the name glia installs it under.
const MODEL: &str = "minilm";
/// Its pooled sentence embedding: output `461`, the fourth.
const POOLED: (&str, usize) = ("461", 3);
/// The most tokens the model reads per text.
const MAX_TOKENS: usize = 128;
/// The most documents in one request.
const MAX_DOCUMENTS: usize = 32;
/// Batch lengths: a few shapes keep tract's per-shape plans cached.
const LENGTHS: [usize; 5] = [8, 16, 32, 64, 128];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    query: String,
    documents: Vec<String>,
    top: Option<usize>,
}

#[derive(Serialize)]
struct Ranked<'a> {
    index: usize,
    score: f32,
    document: &'a str,
}

#[derive(Serialize)]
struct Answer<'a> {
    results: Vec<Ranked<'a>>,
}

#[handler(max_body = 256 * 1024)]
fn rank(request: Request) -> Result<Response, Error> {
    let query: Query = request.json()?;
    if query.documents.is_empty() || query.documents.len() > MAX_DOCUMENTS {
        return Err(Error::bad_request(format!(
            "`documents` must hold 1 to {MAX_DOCUMENTS} texts, got {}",
            query.documents.len()
        )));
    }
    let texts: Vec<&str> = std::iter::once(query.query.as_str())
        .chain(query.documents.iter().map(String::as_str))
        .collect();
    let vectors = embed(&texts)?;
    let (first, rest) = vectors
        .split_first()
        .ok_or_else(|| Error::internal("the model returned no vectors"))?;
    let scores: Vec<f32> = rest.iter().map(|v| ops::dot(first, v)).collect();
    let top = query.top.unwrap_or(scores.len());
    let results = ops::top_k(&scores, top)
        .into_iter()
        .map(|(index, score)| Ranked {
            index,
            score,
            document: query.documents.get(index).map_or("", String::as_str),
        })
        .collect();
    Response::json(&Answer { results })
}

/// Unit-length sentence vectors, one per text, from one batch.
fn embed(texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
    let tokenizer = WordPiece::bert_uncased();
    let encodings: Vec<Encoding> = timing::measure("tokenize", || {
        texts
            .iter()
            .map(|text| tokenizer.encode(text, MAX_TOKENS))
            .collect()
    });
    let batch = tokenizer.batch(&encodings, &LENGTHS)?;
    let outputs = Model::load(MODEL)?.infer([
        ("input_ids", &batch.input_ids),
        ("attention_mask", &batch.attention_mask),
    ])?;
    let (name, index) = POOLED;
    let mut vectors = outputs.get_or_at(name, index)?.rows::<f32>()?;
    vectors.iter_mut().for_each(|v| ops::l2_normalize(v));
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_the_model() {
        for body in [
            r#"{"query": "q", "documents": []}"#,
            r#"{"query": "q"}"#,
            r#"{"query": "q", "documents": ["d"], "extra": 1}"#,
        ] {
            let error = rank(Request::post("/").with_body(body)).expect_err("400");
            assert_eq!(error.status(), 400, "{body}: {error}");
        }
    }
}
