//! `intent-pipeline`: two models in one function. `minilm`, the shared
//! sentence-embedding model glia serves to every function, turns a sentence
//! into a vector; `intent-head`, a small classifier trained on those vectors
//! for this function (`model/train.py`), says what the sentence asks for.
//!
//! `POST /` with `{"text": "Will it rain tomorrow?"}` answers
//!
//! ```json
//! {"intent": "weather", "confidence": 0.88, "scores": [{"intent": "weather", "probability": 0.88}, ...]}
//! ```
//!
//! with the four intents (`weather`, `music`, `alarm`, `shopping`) by
//! decreasing probability. Both models' run times add up in the answer's
//! `server-timing: infer` entry.

use glia_sdk::nn::{Model, Tensor};
use glia_sdk::text::WordPiece;
use glia_sdk::{Error, Request, Response, handler, ops};
use serde::{Deserialize, Serialize};

/// The sentence-embedding model, and its pooled output (`461`, the fourth).
const ENCODER: &str = "minilm";
const POOLED: (&str, usize) = ("461", 3);
/// The classifier over its embeddings, and its classes in output order.
const HEAD: &str = "intent-head";
const INTENTS: [&str; 4] = ["weather", "music", "alarm", "shopping"];
/// The most tokens the encoder reads.
const MAX_TOKENS: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    text: String,
}

#[derive(Serialize)]
struct Score {
    intent: &'static str,
    probability: f32,
}

#[derive(Serialize)]
struct Answer {
    intent: &'static str,
    confidence: f32,
    scores: Vec<Score>,
}

#[handler(max_body = 64 * 1024)]
fn classify(request: Request) -> Result<Response, Error> {
    let input: Input = request.json()?;
    let embedding = embed(&input.text)?;
    let probabilities = Model::load(HEAD)?.infer(&embedding)?.at(0)?.to_f32()?;
    Response::json(&answer(&probabilities)?)
}

/// The sentence's unit-length embedding, `f32 [1, 384]`: the first model.
fn embed(text: &str) -> Result<Tensor, Error> {
    let tokenizer = WordPiece::bert_uncased();
    let encoding = tokenizer.encode(text, MAX_TOKENS);
    let batch = tokenizer.batch(std::slice::from_ref(&encoding), &[])?;
    let outputs = Model::load(ENCODER)?.infer([
        ("input_ids", &batch.input_ids),
        ("attention_mask", &batch.attention_mask),
    ])?;
    let (name, index) = POOLED;
    let pooled = outputs.get_or_at(name, index)?;
    let mut vector = pooled.to_f32()?;
    ops::l2_normalize(&mut vector);
    Ok(Tensor::from_f32(pooled.dims(), &vector)?)
}

fn answer(probabilities: &[f32]) -> Result<Answer, Error> {
    if probabilities.len() != INTENTS.len() {
        return Err(Error::internal(format!(
            "`{HEAD}` answered {} probabilities for {} intents",
            probabilities.len(),
            INTENTS.len()
        )));
    }
    let scores: Vec<Score> = ops::top_k(probabilities, INTENTS.len())
        .into_iter()
        .map(|(ix, probability)| Score {
            intent: INTENTS.get(ix).copied().unwrap_or("?"),
            probability,
        })
        .collect();
    let best = scores
        .first()
        .map_or(("?", 0.0), |s| (s.intent, s.probability));
    Ok(Answer {
        intent: best.0,
        confidence: best.1,
        scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_rank_the_intents() {
        let answer = answer(&[0.1, 0.2, 0.6, 0.1]).expect("answer");
        assert_eq!((answer.intent, answer.confidence), ("alarm", 0.6));
        let order: Vec<&str> = answer.scores.iter().map(|s| s.intent).collect();
        assert_eq!(order, ["alarm", "music", "weather", "shopping"]);
        assert!(super::answer(&[1.0]).is_err());
    }
}
