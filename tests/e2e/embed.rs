//! The built-in `embed-text` function with the pretrained `minilm` model,
//! end to end over HTTP, on every backend: its tokenizer and embeddings
//! match the Python reference (Hugging Face `tokenizers` + ONNX Runtime).

use glia_e2e::{BACKENDS, Backend, TestServer, builtin, pretrained};
use glia_host::builtins::MINILM_FILE;
use serde_json::{Value, json};

const REFERENCE: &str = include_str!("../../functions/embed-text/model/reference.json");

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

async fn with_embed_text(backend: Backend) -> TestServer {
    let server = TestServer::start_on(backend, |_| {}).await;
    let r = server
        .upload_model("minilm", &pretrained(MINILM_FILE), "")
        .await;
    assert_eq!(r.status(), 201, "{backend:?}");
    server
        .deploy_ok("embed-text", builtin("embed-text"), "models=minilm")
        .await;
    server
}

async fn post(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let r = server
        .client
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_the_python_reference() {
    let reference: Value = serde_json::from_str(REFERENCE).unwrap();
    for backend in BACKENDS {
        let server = with_embed_text(backend).await;
        for s in reference["sentences"].as_array().unwrap() {
            let (status, out) = post(&server, "/fn/embed-text", &json!({"text": s["text"]})).await;
            assert_eq!(status, 200, "{backend:?}: {out}");
            assert_eq!(out["dimensions"], 384);
            assert_eq!(
                out["tokens"].as_u64().unwrap() as usize,
                s["ids"].as_array().unwrap().len(),
                "{backend:?}: token count of {}",
                s["text"]
            );
            assert_eq!(out["truncated"], s["truncated"], "{backend:?}");
            let similarity = cosine(&floats(&out["embedding"]), &floats(&s["embedding"]));
            assert!(
                similarity > 0.9999,
                "{backend:?}: {} has cosine {similarity} to the reference",
                s["text"]
            );
        }

        // A batch gives what single calls give (padding is masked).
        let texts: Vec<&Value> = reference["sentences"]
            .as_array()
            .unwrap()
            .iter()
            .take(5)
            .map(|s| &s["text"])
            .collect();
        let (status, out) = post(&server, "/fn/embed-text", &json!({"texts": texts})).await;
        assert_eq!(status, 200, "{backend:?}: {out}");
        for (e, s) in out["embeddings"]
            .as_array()
            .unwrap()
            .iter()
            .zip(reference["sentences"].as_array().unwrap())
        {
            assert!(
                cosine(&floats(e), &floats(&s["embedding"])) > 0.9999,
                "{backend:?}"
            );
        }

        for pair in reference["pairs"].as_array().unwrap() {
            let (status, out) = post(
                &server,
                "/fn/embed-text/similarity",
                &json!({"a": pair["a"], "b": pair["b"]}),
            )
            .await;
            assert_eq!(status, 200, "{backend:?}: {out}");
            let got = out["similarity"].as_f64().unwrap();
            let want = pair["similarity"].as_f64().unwrap();
            assert!((got - want).abs() < 1e-4, "{backend:?}: {got} vs {want}");
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn bad_requests_are_400_with_the_reason() {
    let server = with_embed_text(Backend::Tract).await;
    for body in [
        json!({}),
        json!({"texts": []}),
        json!({"texts": vec!["x"; 33]}),
        json!({"text": 5}),
        json!({"text": "a", "texts": ["b"]}),
    ] {
        let (status, out) = post(&server, "/fn/embed-text", &body).await;
        assert_eq!(status, 400, "{body}: {out}");
        assert!(
            out["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{out}"
        );
    }
    let (status, _) = post(&server, "/fn/embed-text/similarity", &json!({"a": "x"})).await;
    assert_eq!(status, 400);
    // And it still answers.
    let (status, _) = post(&server, "/fn/embed-text", &json!({"text": "still here"})).await;
    assert_eq!(status, 200);
    server.stop().await;
}

/// 32 simultaneous calls run on one shared loaded model, and their runs
/// overlap in time (the model's own count of runs in progress shows it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_model_and_overlap() {
    for backend in BACKENDS {
        let server = with_embed_text(backend).await;
        let body = json!({"text": "Thirty-two calls at once share one model."});
        let (status, first) = post(&server, "/fn/embed-text", &body).await;
        assert_eq!(status, 200, "{backend:?}: {first}");
        let calls = (0..32).map(|_| post(&server, "/fn/embed-text", &body));
        for (status, out) in futures::future::join_all(calls).await {
            assert_eq!(status, 200, "{backend:?}: {out}");
            assert!(
                cosine(&floats(&out["embedding"]), &floats(&first["embedding"])) > 0.99999,
                "{backend:?}"
            );
        }
        let m: Value = server.get("/v1/models/minilm").await.json().await.unwrap();
        let resident = m["resident"].as_array().unwrap();
        assert_eq!(resident.len(), 1, "{backend:?}: one loaded graph: {m}");
        let stats = &resident[0]["stats"];
        assert_eq!(stats["runs"], 33, "{backend:?}: {m}");
        assert!(
            stats["peak_running"].as_u64().unwrap() >= 2,
            "{backend:?}: runs overlapped: {m}"
        );
        server.stop().await;
    }
}
