//! Models: uploads validated by loading, versions, persistence, sharing.

use glia_e2e::{BACKENDS, Backend, DIGITS_HELDOUT, DIGITS_ONNX, TestServer, pretrained};
use glia_host::builtins::{MINILM_FILE, ORIENTATION_FILE};
use glia_host::nn::Device;
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
    for backend in BACKENDS {
        bad_models_are_refused_on(backend).await;
    }
}

async fn bad_models_are_refused_on(backend: Backend) {
    let server = TestServer::start_on(backend, |c| c.server.max_model_mb = 1).await;
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
    let a = server.state.models.load("default", "digits").await.unwrap();
    let b = server.state.models.load("default", "digits").await.unwrap();
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

/// The memory budget: idle models make room for new ones, least recently
/// used first; a model that cannot fit is refused with a clear error, and
/// nothing else is disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_models_stay_under_the_memory_budget() {
    let minilm = pretrained(MINILM_FILE);
    let orientation = pretrained(ORIENTATION_FILE);
    let mib = |b: usize| b.div_ceil(1 << 20) as u64;
    // Room for the bigger model, or for both small ones, never for all.
    let budget = mib(minilm.len()) + 1;
    assert!(mib(minilm.len()) + mib(orientation.len()) > budget);
    let server = TestServer::start_with(|c| c.models.memory_budget_mb = budget).await;
    json(server.upload_model("minilm", &minilm, "").await, 201).await;
    json(server.upload_model("digits", DIGITS_ONNX, "").await, 201).await;
    let state = |name: &'static str| {
        let server = &server;
        async move {
            let m = json(server.get(&format!("/v1/models/{name}")).await, 200).await;
            m["state"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(state("minilm").await, "loaded");
    assert_eq!(state("digits").await, "loaded");

    // Loading orientation needs room: the least recently used idle model
    // (minilm, used before digits) is unloaded, digits stays.
    let models = &server.state.models;
    let held = models
        .acquire("default", "digits", Device::Cpu)
        .await
        .unwrap();
    json(
        server.upload_model("orientation", &orientation, "").await,
        201,
    )
    .await;
    assert_eq!(state("orientation").await, "loaded");
    assert_eq!(state("minilm").await, "unloaded");
    assert_eq!(state("digits").await, "loaded");
    assert!(models.resident_bytes() <= models.budget_bytes());

    // minilm cannot come back while orientation and digits are in use.
    let held_orientation = models
        .acquire("default", "orientation", Device::Cpu)
        .await
        .unwrap();
    let err = models
        .acquire("default", "minilm", Device::Cpu)
        .await
        .err()
        .expect("over the budget");
    assert!(
        err.to_string().contains("memory budget") && err.to_string().contains("in use"),
        "{err}"
    );
    assert_eq!(
        state("orientation").await,
        "loaded",
        "nothing in use is unloaded"
    );
    assert_eq!(state("digits").await, "loaded");

    // Once they are idle, it can.
    drop((held, held_orientation));
    let ready = models
        .acquire("default", "minilm", Device::Cpu)
        .await
        .unwrap();
    assert!(ready.loaded_in.is_some(), "this call loaded it");
    assert_eq!(state("minilm").await, "loaded");
    assert!(models.resident_bytes() <= models.budget_bytes());
    let m = json(server.get("/v1/models/minilm").await, 200).await;
    assert_eq!(m["resident"][0]["device"], "cpu", "{m}");
    assert_eq!(m["resident"][0]["backend"], "tract", "{m}");
    server.stop().await;
}

/// A model bigger than the whole budget uploads (it is validated) but is
/// never kept loaded, and using it is refused instead of exhausting memory.
#[tokio::test]
async fn a_model_bigger_than_the_budget_is_refused_at_load() {
    let orientation = pretrained(ORIENTATION_FILE);
    let server = TestServer::start_with(|c| c.models.memory_budget_mb = 1).await;
    json(
        server.upload_model("orientation", &orientation, "").await,
        201,
    )
    .await;
    let m = json(server.get("/v1/models/orientation").await, 200).await;
    assert_eq!(m["state"], "unloaded");
    let err = server
        .state
        .models
        .acquire("default", "orientation", Device::Cpu)
        .await
        .err()
        .expect("bigger than the budget");
    assert!(err.to_string().contains("models.memory_budget_mb"), "{err}");
    server.stop().await;
}

/// `backend = "auto"` takes ONNX Runtime when its library is found (the
/// build fetched it); a configured library that is missing stops start-up
/// with a message naming the setting.
#[tokio::test]
async fn the_backend_is_chosen_at_start() {
    use glia_host::config::OnnxBackendChoice;
    let server = TestServer::start_with(|c| c.models.backend = OnnxBackendChoice::Auto).await;
    let up = json(server.upload_model("digits", DIGITS_ONNX, "").await, 201).await;
    assert_eq!(up["backend"], "ort", "{up}");
    server.stop().await;

    let temp = tempfile::tempdir().unwrap();
    let mut config = glia_e2e::test_config(temp.path());
    config.models.backend = OnnxBackendChoice::Ort;
    config.models.ort_library = temp.path().join("libonnxruntime.so");
    let err = glia_host::Platform::open(config)
        .await
        .err()
        .expect("no such library");
    assert!(err.to_string().contains("models.ort_library"), "{err}");
}

/// `models.preload` loads every model at start instead of on first use.
#[tokio::test]
async fn preload_loads_models_at_start() {
    let server = TestServer::start().await;
    json(server.upload_model("digits", DIGITS_ONNX, "").await, 201).await;
    let server = server.restart_with(|c| c.models.preload = true).await;
    let started = std::time::Instant::now();
    loop {
        let m = json(server.get("/v1/models/digits").await, 200).await;
        if m["state"] == "loaded" {
            break;
        }
        assert!(started.elapsed().as_secs() < 5, "never preloaded: {m}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}
