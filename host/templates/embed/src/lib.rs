//! `{{name}}`: a glia model function that turns text into vectors.
//!
//! `POST /` with `{"text": "..."}` answers
//! `{"embedding": [384 numbers], "tokens": 9}`: a unit vector whose dot
//! product with another text's is their similarity.
//!
//! It runs the `minilm` model that comes with glia
//! (paraphrase-MiniLM-L3-v2); deploy it with `--models minilm`. The SDK's
//! tokenizer turns the text into the ids the model was trained on.

use glia_sdk::nn::Model;
use glia_sdk::text::WordPiece;
use glia_sdk::{Error, Request, Response, handler, ops};
use serde::{Deserialize, Serialize};

/// The model, by the name it was uploaded under.
const MODEL: &str = "minilm";
/// Its pooled sentence embedding: output `461`, the fourth.
const POOLED: (&str, usize) = ("461", 3);
/// The most tokens it reads, `[CLS]` and `[SEP]` included.
const MAX_TOKENS: usize = 128;

#[derive(Deserialize)]
struct Input {
    text: String,
}

#[derive(Serialize)]
struct Output {
    embedding: Vec<f32>,
    tokens: usize,
}

#[handler]
fn handle(request: Request) -> Result<Response, Error> {
    let input: Input = request.json()?;
    let tokenizer = WordPiece::bert_uncased();
    let encoding = tokenizer.encode(&input.text, MAX_TOKENS);
    let batch = tokenizer.batch(std::slice::from_ref(&encoding), &[])?;

    let model = Model::load(MODEL)?;
    let outputs = model.infer([
        ("input_ids", &batch.input_ids),
        ("attention_mask", &batch.attention_mask),
    ])?;
    let (name, index) = POOLED;
    let mut embedding = outputs.get_or_at(name, index)?.to_f32()?;
    ops::l2_normalize(&mut embedding);
    Response::json(&Output {
        embedding,
        tokens: encoding.ids.len(),
    })
}

// `cargo test` runs these natively (without a model: `Model::load` only
// works inside glia).
#[cfg(test)]
mod tests {
    use glia_sdk::text::WordPiece;

    #[test]
    fn text_becomes_the_ids_the_model_knows() {
        let encoding = WordPiece::bert_uncased().encode("Hello, world!", 128);
        assert_eq!(encoding.ids, [101, 7592, 1010, 2088, 999, 102]);
    }
}
