//! `{{name}}`: a glia model function that classifies images.
//!
//! `POST /` with `{"pixels": [64 numbers 0-16]}`, an 8x8 handwritten digit
//! row by row, answers
//! `{"label": 7, "probabilities": [10 numbers], "top": [{"label": 7, "probability": 0.98}, ...]}`.
//!
//! It runs the `digits` model that comes with glia; deploy it with
//! `--models digits`. For your own model, upload it
//! (`curl -X PUT --data-binary @model.onnx 'http://127.0.0.1:8080/v1/models/NAME?encoding=onnx'`)
//! and change `MODEL`, `INPUT` and `input_tensor`.

use glia_sdk::nn::{Model, Tensor};
use glia_sdk::{Error, Request, Response, handler, ops};
use serde::{Deserialize, Serialize};

/// The model, by the name it was uploaded under.
const MODEL: &str = "digits";
/// The model's input...
const INPUT: &str = "pixels";
/// ...and its shape: one image of 64 pixels.
const PIXELS: usize = 64;
/// How many of the best labels to list.
const TOP: usize = 3;

#[derive(Deserialize)]
struct Input {
    pixels: Vec<f32>,
}

#[derive(Serialize)]
struct Guess {
    label: usize,
    probability: f32,
}

#[derive(Serialize)]
struct Output {
    label: usize,
    probabilities: Vec<f32>,
    top: Vec<Guess>,
}

#[handler]
fn handle(request: Request) -> Result<Response, Error> {
    let input: Input = request.json()?;
    let model = Model::load(MODEL)?;
    let outputs = model.infer([(INPUT, &input_tensor(&input.pixels)?)])?;
    // `digits` answers probabilities; for a model that answers logits, use
    // `ops::softmax(&scores)`.
    let probabilities = outputs.at(0)?.to_f32()?;
    Response::json(&answer(probabilities))
}

/// The model's input, checked: a 400 says what is wrong.
fn input_tensor(pixels: &[f32]) -> Result<Tensor, Error> {
    if pixels.len() != PIXELS {
        return Err(Error::bad_request(format!(
            "expected {PIXELS} pixels, got {}",
            pixels.len()
        )));
    }
    if pixels.iter().any(|p| !(0.0..=16.0).contains(p)) {
        return Err(Error::bad_request("pixel values must be 0-16"));
    }
    Ok(Tensor::from_f32(&[1, PIXELS as u32], pixels)?)
}

fn answer(probabilities: Vec<f32>) -> Output {
    let top = ops::top_k(&probabilities, TOP)
        .into_iter()
        .map(|(label, probability)| Guess { label, probability })
        .collect();
    Output {
        label: ops::argmax(&probabilities).unwrap_or_default(),
        probabilities,
        top,
    }
}

// `cargo test` runs these natively (without a model: `Model::load` only
// works inside glia).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked() {
        assert_eq!(input_tensor(&[0.0; 3]).unwrap_err().status(), 400);
        assert_eq!(input_tensor(&[17.0; 64]).unwrap_err().status(), 400);
        assert_eq!(input_tensor(&[1.0; 64]).unwrap().dims(), [1, 64]);
    }

    #[test]
    fn the_answer_lists_the_best_labels() {
        let output = answer(vec![0.1, 0.7, 0.2]);
        assert_eq!(output.label, 1);
        let labels: Vec<usize> = output.top.iter().map(|g| g.label).collect();
        assert_eq!(labels, [1, 2, 0]);
    }
}
