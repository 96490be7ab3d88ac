//! Models: uploads validated by loading, versions, persistence, sharing.

use glia_e2e::{DIGITS_HELDOUT, DIGITS_ONNX, TestServer};
use glia_host::nn::Tensor;
use serde_json::Value;

use crate::{json, problem};

#[tokio::test]
async fn upload_validates_by_loading_and_versions() {
    let server = TestServer::start().await;
    let up = json(
        server
            .upload_model("digits", DIGITS_ONNX, "encoding=onnx")
            .await,
        201,
    )
    .await;
    assert_eq!(up["name"], "digits");
    assert_eq!(up["version"], 1);
    assert_eq!(up["encoding"], "onnx");
    assert_eq!(up["size_bytes"], DIGITS_ONNX.len() as u64);
    assert_eq!(up["digest"].as_str().map(str::len), Some(64));
    assert!(up["load_ms"].as_u64().is_some());
    assert_eq!(up["backend"], "tract");
    let input = &up["signature"]["inputs"][0];
    assert_eq!(input["name"], "pixels");
    assert_eq!(input["dtype"], "f32");
    assert_eq!(input["dims"], serde_json::json!([null, 64]));
    assert_eq!(up["signature"]["outputs"][0]["name"], "probabilities");

    // Identical bytes: the same version.
    let again = json(server.upload_model("digits", DIGITS_ONNX, "").await, 200).await;
    assert_eq!(again["version"], 1);
    assert_eq!(again["created"], false);

    let m = json(server.get("/v1/models/digits").await, 200).await;
    assert_eq!(m["state"], "loaded");
    assert_eq!(m["versions"].as_array().unwrap().len(), 1);
    let list = json(server.get("/v1/models").await, 200).await;
    assert_eq!(list["models"][0]["name"], "digits");
    assert_eq!(list["models"][0]["loaded"], true);
    server.stop().await;
}

#[tokio::test]
async fn bad_models_are_refused_with_reasons() {
    let server = TestServer::start_with(|c| c.server.max_model_mb = 1).await;
    let p = problem(
        server
            .upload_model("junk", b"definitely not onnx", "")
            .await,
        400,
        "invalid-model",
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("does not load"),
        "{p}"
    );
    let half = &DIGITS_ONNX[..DIGITS_ONNX.len() / 2];
    problem(
        server.upload_model("half", half, "").await,
        400,
        "invalid-model",
    )
    .await;
    problem(
        server
            .upload_model("digits", DIGITS_ONNX, "encoding=tflite")
            .await,
        400,
        "unsupported-encoding",
    )
    .await;
    problem(
        server
            .upload_model("digits", DIGITS_ONNX, "colour=blue")
            .await,
        400,
        "invalid-request",
    )
    .await;
    problem(
        server.upload_model("Bad_Name", DIGITS_ONNX, "").await,
        400,
        "invalid-name",
    )
    .await;
    problem(
        server.upload_model("big", &vec![0u8; 2 << 20], "").await,
        413,
        "payload-too-large",
    )
    .await;
    let list = json(server.get("/v1/models").await, 200).await;
    assert!(
        list["models"].as_array().unwrap().is_empty(),
        "nothing recorded"
    );
    problem(server.get("/v1/models/junk").await, 404, "model-not-found").await;
    server.stop().await;
}

#[tokio::test]
async fn models_persist_load_lazily_and_are_shared() {
    let server = TestServer::start().await;
    json(server.upload_model("digits", DIGITS_ONNX, "").await, 201).await;
    let server = server.restart().await;
    let m = json(server.get("/v1/models/digits").await, 200).await;
    assert_eq!(
        m["state"], "unloaded",
        "loaded on first use after a restart"
    );

    // Two users get the same loaded graph.
    let a = server.state.models.load("digits").await.unwrap();
    let b = server.state.models.load("digits").await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b), "one loaded graph per model");
    let m = json(server.get("/v1/models/digits").await, 200).await;
    assert_eq!(m["state"], "loaded");

    // And it computes what ONNX Runtime computed for the held-out samples.
    let heldout: Value = serde_json::from_str(DIGITS_HELDOUT).unwrap();
    for s in heldout["samples"].as_array().unwrap().iter().take(20) {
        let pixels: Vec<f32> = s["pixels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap() as f32)
            .collect();
        let out = a.run(&[Tensor::from_f32(vec![1, 64], &pixels)]).unwrap();
        let probs = out[0].to_f32().unwrap();
        let label = probs
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .unwrap()
            .0;
        assert_eq!(label as u64, s["expected"].as_u64().unwrap());
    }

    let r = server
        .client
        .delete(server.url("/v1/models/digits"))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r, 200).await["deleted"], true);
    problem(
        server.get("/v1/models/digits").await,
        404,
        "model-not-found",
    )
    .await;
    server.stop().await;
}
