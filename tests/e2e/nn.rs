//! Model functions: `classify-digits` calls the shared `digits` model
//! through `wasi:nn`, end to end over HTTP, on every backend.

use std::time::Instant;

use glia_e2e::{BACKENDS, Backend, DIGITS_HELDOUT, DIGITS_ONNX, TestServer, builtin};
use serde_json::{Value, json};

async fn with_digits(backend: Backend, settings: &str) -> TestServer {
    with_digits_on(backend, |_| {}, settings).await
}

/// A server on `backend` (with `tweak`ed configuration) holding the
/// `digits` model and `classify-digits` deployed with `settings`.
async fn with_digits_on(
    backend: Backend,
    tweak: impl FnOnce(&mut glia_host::config::Config),
    settings: &str,
) -> TestServer {
    let server = TestServer::start_on(backend, tweak).await;
    let r = server.upload_model("digits", DIGITS_ONNX, "").await;
    assert_eq!(r.status(), 201);
    server
        .deploy_ok("classify-digits", builtin("classify-digits"), settings)
        .await;
    server
}

async fn classify(server: &TestServer, pixels: &Value) -> (u16, Value) {
    let r = server
        .client
        .post(server.url("/fn/classify-digits"))
        .json(&json!({ "pixels": pixels }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heldout_split_matches_onnx_runtime_sample_by_sample() {
    for backend in BACKENDS {
        heldout_split_on(backend).await;
    }
}

async fn heldout_split_on(backend: Backend) {
    let server = with_digits(backend, "models=digits").await;
    let m: Value = server.get("/v1/models/digits").await.json().await.unwrap();
    assert_eq!(m["backend"], backend.name());
    let heldout: Value = serde_json::from_str(DIGITS_HELDOUT).unwrap();
    let samples = heldout["samples"].as_array().unwrap();
    let mut correct = 0;
    for chunk in samples.chunks(16) {
        let calls = chunk.iter().map(|s| classify(&server, &s["pixels"]));
        for ((status, out), s) in futures::future::join_all(calls)
            .await
            .into_iter()
            .zip(chunk)
        {
            assert_eq!(status, 200, "{backend:?}: {out}");
            assert_eq!(
                out["label"], s["expected"],
                "{backend:?}: label as Python's ONNX Runtime gave it"
            );
            let probs = out["probabilities"].as_array().unwrap();
            assert_eq!(probs.len(), 10);
            for (p, want) in probs.iter().zip(s["probabilities"].as_array().unwrap()) {
                assert!(
                    (p.as_f64().unwrap() - want.as_f64().unwrap()).abs() < 1e-4,
                    "{backend:?}"
                );
            }
            if out["label"] == s["label"] {
                correct += 1;
            }
        }
    }
    let accuracy = correct as f64 / samples.len() as f64;
    assert!(
        (accuracy - heldout["accuracy"].as_f64().unwrap()).abs() < 1e-9,
        "{backend:?}: accuracy {accuracy} equals ONNX Runtime's"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_calls_share_one_model() {
    for backend in BACKENDS {
        let server = with_digits(backend, "models=digits").await;
        let heldout: Value = serde_json::from_str(DIGITS_HELDOUT).unwrap();
        let sample = heldout["samples"][0].clone();
        let calls = (0..32).map(|_| classify(&server, &sample["pixels"]));
        for (status, out) in futures::future::join_all(calls).await {
            assert_eq!(status, 200, "{backend:?}: {out}");
            assert_eq!(out["label"], sample["expected"], "{backend:?}");
        }
        let m: Value = server.get("/v1/models/digits").await.json().await.unwrap();
        assert_eq!(m["state"], "loaded", "{backend:?}");
        let resident = m["resident"].as_array().unwrap();
        assert_eq!(resident.len(), 1, "{backend:?}: one shared graph: {m}");
        assert_eq!(resident[0]["stats"]["runs"], 32, "{backend:?}: {m}");
        server.stop().await;
    }
}

#[tokio::test]
async fn models_are_denied_unless_granted() {
    for backend in BACKENDS {
        models_are_denied_unless_granted_on(backend).await;
    }
}

async fn models_are_denied_unless_granted_on(backend: Backend) {
    // Deployed without `models=digits`: load-by-name finds nothing.
    let server = with_digits(backend, "").await;
    let pixels = json!(vec![0; 64]);
    let (status, out) = classify(&server, &pixels).await;
    assert_eq!(status, 503, "{out}");
    assert_eq!(out["wasi_nn_error"], "not-found", "{out}");
    assert!(
        out["detail"].as_str().unwrap().contains("not-found"),
        "{out}"
    );

    // Granted: it works, without a new version.
    let r = server
        .client
        .patch(server.url("/v1/functions/classify-digits"))
        .json(&json!({"models": ["digits"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = classify(&server, &pixels).await;
    assert_eq!(status, 200);

    // A granted model is not deleted by accident...
    let r = server
        .client
        .delete(server.url("/v1/models/digits"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "urn:glia:problem:model-in-use");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("classify-digits"),
        "{problem}"
    );
    let (status, _) = classify(&server, &pixels).await;
    assert_eq!(status, 200, "the refused delete changed nothing");

    // ...but can be forced; then it is not found again.
    let r = server
        .client
        .delete(server.url("/v1/models/digits?force=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, out) = classify(&server, &pixels).await;
    assert_eq!(status, 503, "{out}");
    server.stop().await;
}

#[tokio::test]
async fn malformed_inputs_are_400_with_the_reason() {
    let server = with_digits(Backend::Tract, "models=digits").await;
    let (status, out) = classify(&server, &json!([1, 2, 3])).await;
    assert_eq!(status, 400);
    assert!(
        out["detail"].as_str().unwrap().contains("64 pixels"),
        "{out}"
    );
    let (status, out) = classify(&server, &json!(vec![99; 64])).await;
    assert_eq!(status, 400);
    assert!(out["detail"].as_str().unwrap().contains("0-16"), "{out}");
    let r = server
        .client
        .post(server.url("/fn/classify-digits"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    server.stop().await;
}

/// The `state` field of the JSON at `path`.
async fn state(server: &TestServer, path: &str) -> Value {
    let v: Value = server.get(path).await.json().await.unwrap();
    v["state"].clone()
}

/// Polls `path` until its JSON `state` is `want`, or panics after 3 s.
async fn wait_state(server: &TestServer, path: &str, want: &str) {
    let started = Instant::now();
    loop {
        let got = state(server, path).await;
        if got == want {
            return;
        }
        assert!(
            started.elapsed().as_secs() < 3,
            "{path} never became {want}: {got}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn functions_and_models_keep_warm_on_their_own_policies() {
    let pixels = json!(vec![0; 64]);

    // The model goes idle and unloads while the function stays warm.
    let server = with_digits_on(
        Backend::Tract,
        |c| {
            c.scheduler.reap_interval_ms = 50;
            c.models.idle_timeout_ms = 300;
        },
        "models=digits&min_warm=1",
    )
    .await;
    assert_eq!(classify(&server, &pixels).await.0, 200);
    wait_state(&server, "/v1/models/digits", "unloaded").await;
    assert_eq!(
        state(&server, "/v1/functions/classify-digits").await,
        "warm"
    );
    assert_eq!(
        classify(&server, &pixels).await.0,
        200,
        "the model loads again"
    );
    assert_eq!(state(&server, "/v1/models/digits").await, "loaded");
    server.stop().await;

    // The function goes to zero while its model stays loaded.
    let server = with_digits_on(
        Backend::Tract,
        |c| c.scheduler.reap_interval_ms = 50,
        "models=digits&idle_timeout_ms=200",
    )
    .await;
    assert_eq!(classify(&server, &pixels).await.0, 200);
    wait_state(&server, "/v1/functions/classify-digits", "zero").await;
    assert_eq!(state(&server, "/v1/models/digits").await, "loaded");
    server.stop().await;
}
