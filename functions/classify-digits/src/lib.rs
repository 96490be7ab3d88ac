//! `classify-digits`: reads an 8x8 handwritten digit and answers which digit
//! it is, using the `digits` model through `wasi:nn`.
//!
//! `POST` a JSON body `{"pixels": [64 numbers, 0-16]}` (row-major, as in
//! scikit-learn's digits dataset) and get
//! `{"label": 0-9, "probabilities": [10 numbers]}`. A malformed body gets
//! `400` with the reason (`413` over 64 KiB); a model that is unavailable or
//! fails gets `503` or `500` with the `wasi:nn` error code (in `detail` and
//! `wasi_nn_error`). Answers carry
//! `server-timing: infer;dur=<ms>`, the time spent in `compute`.

use glia_sdk::nn::{Model, Tensor};
use glia_sdk::{Error, Request, Response, handler, ops};
use serde::{Deserialize, Serialize};

/// The model this function asks for by name.
const MODEL: &str = "digits";
/// Pixels in one image.
const PIXELS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    pixels: Vec<f32>,
}

#[derive(Serialize)]
struct Output {
    label: usize,
    probabilities: Vec<f32>,
}

#[handler(max_body = 64 * 1024)]
fn classify(request: Request) -> Result<Response, Error> {
    let pixels = pixels(request.body())?;
    let model = Model::load(MODEL)?;
    let input = Tensor::from_f32(&[1, PIXELS as u32], &pixels)?;
    let outputs = model.infer([("pixels", &input)])?;
    let probabilities = outputs
        .at(0)?
        .to_f32()
        .map_err(|e| Error::internal(e.to_string()))?;
    let label = ops::argmax(&probabilities)
        .ok_or_else(|| Error::internal("the model produced an empty output"))?;
    Response::json(&Output {
        label,
        probabilities,
    })
}

/// The 64 pixel values of a request body, checked.
fn pixels(body: &[u8]) -> Result<Vec<f32>, Error> {
    let input: Input = serde_json::from_slice(body).map_err(|e| {
        Error::bad_request(format!(
            "the body must be JSON {{\"pixels\": [64 numbers 0-16]}}: {e}"
        ))
    })?;
    if input.pixels.len() != PIXELS {
        return Err(Error::bad_request(format!(
            "expected {PIXELS} pixels, got {}",
            input.pixels.len()
        )));
    }
    if let Some(p) = input.pixels.iter().find(|p| !(0.0..=16.0).contains(*p)) {
        return Err(Error::bad_request(format!(
            "pixel values must be 0-16, got {p}"
        )));
    }
    Ok(input.pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_before_the_model() {
        for (body, want) in [
            (&b"not json"[..], "must be JSON"),
            (br#"{"pixels": [1, 2]}"#, "expected 64 pixels, got 2"),
            (br#"{"pixels": [1], "x": 1}"#, "unknown field"),
        ] {
            let error = pixels(body).expect_err("refused");
            assert_eq!(error.status(), 400);
            assert!(error.detail().contains(want), "{error}");
        }
        let mut values = vec![0; PIXELS];
        values[3] = 17;
        let body = serde_json::to_vec(&serde_json::json!({ "pixels": values })).expect("json");
        assert!(pixels(&body).expect_err("17").detail().contains("0-16"));
        // Off WebAssembly the model is not there: a 500 that says so.
        let body =
            serde_json::to_vec(&serde_json::json!({ "pixels": vec![0; PIXELS] })).expect("json");
        let response = classify(Request::post("/").with_body(body)).expect_err("no host");
        assert!(
            response
                .detail()
                .starts_with("loading model `digits`: wasi-nn error unsupported-operation: "),
            "{response}"
        );
    }
}
