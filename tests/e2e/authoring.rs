//! What function authors get: every `glia new` template and every example,
//! generated and built by the suite's build script (`tests/build.rs`), then
//! deployed to a real server and called; `glia new` itself writing exactly
//! the crates that were built; and a component written without the SDK
//! (`wstd`) running unchanged.

use std::path::{Path, PathBuf};

use clap::Parser as _;
use glia_e2e::{
    BACKENDS, Backend, DIGITS_HELDOUT, DIGITS_ONNX, EXAMPLES, INTENT_HEAD_ONNX, PORTABLE,
    TEMPLATES, TestServer, example, pretrained, reqwest, template,
};
use glia_host::builtins::{MINILM_FILE, ORIENTATION_FILE};
use serde_json::{Value, json};

use crate::json;

const EMBED_REFERENCE: &str = include_str!("../../functions/embed-text/model/reference.json");
const ORIENTATION_REFERENCE: &str =
    include_str!("../../examples/image-orientation/testdata/reference.json");
const INTENT_REFERENCE: &str = include_str!("../../examples/intent-pipeline/model/reference.json");

#[test]
fn guests_are_all_tested() {
    // Each template and example the build compiled has a test below.
    let templates: Vec<&str> = TEMPLATES.iter().map(|(name, _, _, _)| *name).collect();
    assert_eq!(
        templates,
        ["http", "classify", "embed"],
        "add tests for new templates"
    );
    let examples: Vec<&str> = EXAMPLES.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        examples,
        ["image-orientation", "text-similarity", "intent-pipeline"],
        "add tests for new examples"
    );
    assert!(!PORTABLE.is_empty());
}

/// `POST`s `body` (JSON) to `path`; the status, headers and JSON answer.
async fn post_json(
    server: &TestServer,
    path: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = server
        .client
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    (status, headers, value)
}

/// The guest's own `infer` time, from `server-timing`.
fn infer_ms(headers: &reqwest::header::HeaderMap) -> Option<f64> {
    headers
        .get_all("server-timing")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(", "))
        .find_map(|entry| entry.strip_prefix("infer;dur="))
        .map(|ms| ms.parse().unwrap())
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn glia_new_writes_the_crates_the_suite_built() {
    let temp = tempfile::tempdir().unwrap();
    for (name, built, _, _) in TEMPLATES {
        let function = format!("template-{name}");
        let dir = temp.path().join(name);
        let cli = glia_host::cli::Cli::try_parse_from([
            "glia",
            "new",
            &function,
            "--template",
            name,
            "--dir",
            dir.to_str().unwrap(),
        ])
        .unwrap();
        glia_host::cli::run(cli).await.unwrap();
        let built = Path::new(built);
        // The build compiled it `--locked`: its lock file did not change.
        assert_eq!(files(&dir), files(built), "{name}: the same files");
        for file in files(&dir) {
            assert_eq!(
                std::fs::read_to_string(dir.join(&file)).unwrap(),
                std::fs::read_to_string(built.join(&file)).unwrap(),
                "{name}: {}",
                file.display()
            );
        }
    }

    // It refuses to write over a directory, and names it cannot deploy.
    let taken = temp.path().join("http");
    for args in [
        vec!["glia", "new", "again", "--dir", taken.to_str().unwrap()],
        vec!["glia", "new", "Not_A_Name", "--dir", "unused"],
    ] {
        let cli = glia_host::cli::Cli::try_parse_from(args.clone()).unwrap();
        assert!(glia_host::cli::run(cli).await.is_err(), "{args:?}");
    }
    assert!(
        glia_host::cli::Cli::try_parse_from(["glia", "new", "x", "--template", "gan"]).is_err()
    );
}

#[test]
fn the_templates_own_tests_pass() {
    // `cargo test` in a new crate: compiled natively by the build script.
    for (name, _, _, tests) in TEMPLATES {
        assert!(!tests.is_empty(), "{name}: no test executable");
        for test in *tests {
            let out = std::process::Command::new(test).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{name}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("test result: ok"), "{name}: {stdout}");
        }
    }
}

#[tokio::test]
async fn template_http_answers_json_and_problems() {
    let server = TestServer::start().await;
    server
        .deploy_ok("hello-template", template("http"), "")
        .await;
    let r = server.get("/fn/hello-template/?name=Ada").await;
    assert_eq!(json(r, 200).await, json!({"message": "Hello, Ada!"}));
    let (status, _, out) = post_json(&server, "/fn/hello-template", &json!({"name": "Bob"})).await;
    assert_eq!((status, out), (200, json!({"message": "Hello, Bob!"})));

    let r = server.get("/fn/hello-template/nowhere").await;
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem = json(r, 404).await;
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["detail"], "no endpoint at /nowhere");
    let r = server
        .client
        .delete(server.url("/fn/hello-template/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["allow"], "GET, POST");
    assert_eq!(json(r, 405).await["title"], "Method Not Allowed");
    server.stop().await;
}

#[tokio::test]
async fn template_classify_reads_held_out_digits() {
    let server = TestServer::start().await;
    assert_eq!(
        server
            .upload_model("digits", DIGITS_ONNX, "")
            .await
            .status(),
        201
    );
    server
        .deploy_ok("digits-template", template("classify"), "models=digits")
        .await;
    let heldout: Value = serde_json::from_str(DIGITS_HELDOUT).unwrap();
    for sample in heldout["samples"].as_array().unwrap().iter().take(20) {
        let (status, headers, out) = post_json(
            &server,
            "/fn/digits-template",
            &json!({"pixels": sample["pixels"]}),
        )
        .await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["label"], sample["expected"], "{out}");
        let top = out["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["label"], out["label"]);
        for (got, want) in floats(&out["probabilities"])
            .iter()
            .zip(floats(&sample["probabilities"]))
        {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        assert!(infer_ms(&headers).is_some(), "an infer timing: {headers:?}");
    }
    let (status, _, out) =
        post_json(&server, "/fn/digits-template", &json!({"pixels": [1, 2]})).await;
    assert_eq!(status, 400);
    assert_eq!(out["detail"], "expected 64 pixels, got 2");
    server.stop().await;
}

#[tokio::test]
async fn template_embed_matches_the_reference_embeddings() {
    let server = TestServer::start().await;
    let r = server
        .upload_model("minilm", &pretrained(MINILM_FILE), "")
        .await;
    assert_eq!(r.status(), 201);
    server
        .deploy_ok("embed-template", template("embed"), "models=minilm")
        .await;
    let reference: Value = serde_json::from_str(EMBED_REFERENCE).unwrap();
    for s in reference["sentences"].as_array().unwrap().iter().take(8) {
        let (status, _, out) =
            post_json(&server, "/fn/embed-template", &json!({"text": s["text"]})).await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(
            out["tokens"],
            s["ids"].as_array().unwrap().len(),
            "{}",
            s["text"]
        );
        let similarity = cosine(&floats(&out["embedding"]), &floats(&s["embedding"]));
        assert!(similarity > 0.9999, "{}: cosine {similarity}", s["text"]);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_image_orientation_agrees_with_the_models_package() {
    let reference: Value = serde_json::from_str(ORIENTATION_REFERENCE).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/image-orientation/testdata");
    for backend in BACKENDS {
        let server = TestServer::start_on(backend, |_| {}).await;
        let r = server
            .upload_model("orientation", &pretrained(ORIENTATION_FILE), "")
            .await;
        assert_eq!(r.status(), 201, "{backend:?}");
        server
            .deploy_ok(
                "orientation",
                example("image-orientation"),
                "models=orientation",
            )
            .await;
        for image in reference["images"].as_array().unwrap() {
            let file = image["file"].as_str().unwrap();
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let r = server
                .client
                .post(server.url("/fn/orientation"))
                .body(bytes)
                .send()
                .await
                .unwrap();
            let out = json(r, 200).await;
            let label = image["label"].as_str().unwrap();
            assert_eq!(out["angle"].to_string(), label, "{backend:?} {file}: {out}");
            // PNGs decode exactly, so only the backends' arithmetic differs
            // from the reference; JPEG decoders differ by a step here and there.
            let tolerance = if file.ends_with(".png") { 1e-3 } else { 1e-2 };
            let labels = reference["labels"].as_array().unwrap();
            for (label, want) in labels.iter().zip(floats(&image["probabilities"])) {
                let got = out["probabilities"][label.as_str().unwrap()]
                    .as_f64()
                    .unwrap();
                assert!(
                    (got - want).abs() < tolerance,
                    "{backend:?} {file} {label}: {got} vs {want}"
                );
            }
        }
        let r = server
            .client
            .post(server.url("/fn/orientation"))
            .body("GIF89a...")
            .send()
            .await
            .unwrap();
        assert_eq!(
            json(r, 400).await["detail"],
            "the image is neither PNG nor JPEG"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn example_text_similarity_ranks_by_meaning() {
    let server = TestServer::start_on(Backend::Tract, |_| {}).await;
    let r = server
        .upload_model("minilm", &pretrained(MINILM_FILE), "")
        .await;
    assert_eq!(r.status(), 201);
    server
        .deploy_ok("similar", example("text-similarity"), "models=minilm")
        .await;
    let reference: Value = serde_json::from_str(EMBED_REFERENCE).unwrap();
    for pair in reference["pairs"].as_array().unwrap() {
        let body = json!({"query": pair["a"], "documents": ["The stock market fell sharply today.", pair["b"]]});
        let (status, _, out) = post_json(&server, "/fn/similar", &body).await;
        assert_eq!(status, 200, "{out}");
        let results = out["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        let b = results.iter().find(|r| r["index"] == 1).unwrap();
        assert_eq!(b["document"], pair["b"]);
        let (got, want) = (
            b["score"].as_f64().unwrap(),
            pair["similarity"].as_f64().unwrap(),
        );
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
    let body = json!({
        "query": "A man is playing a guitar.",
        "documents": ["The stock market fell sharply today.", "Someone plays an instrument.", "A chef cooks pasta."],
        "top": 1,
    });
    let (status, _, out) = post_json(&server, "/fn/similar", &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["results"].as_array().unwrap().len(), 1);
    assert_eq!(out["results"][0]["index"], 1, "{out}");
    let (status, _, _) = post_json(
        &server,
        "/fn/similar",
        &json!({"query": "q", "documents": []}),
    )
    .await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_intent_pipeline_runs_two_models_in_one_call() {
    let reference: Value = serde_json::from_str(INTENT_REFERENCE).unwrap();
    for backend in BACKENDS {
        let server = TestServer::start_on(backend, |_| {}).await;
        let r = server
            .upload_model("minilm", &pretrained(MINILM_FILE), "")
            .await;
        assert_eq!(r.status(), 201);
        let r = server
            .upload_model("intent-head", INTENT_HEAD_ONNX, "")
            .await;
        assert_eq!(r.status(), 201);
        // Without the classifier granted, the pipeline stops at the second model.
        server
            .deploy_ok("intent", example("intent-pipeline"), "models=minilm")
            .await;
        let (status, _, out) =
            post_json(&server, "/fn/intent", &json!({"text": "Play some jazz."})).await;
        assert_eq!(status, 503, "{out}");
        assert_eq!(out["wasi_nn_error"], "not-found", "{out}");
        assert!(
            out["detail"].as_str().unwrap().contains("intent-head"),
            "{out}"
        );

        server
            .deploy_ok(
                "intent",
                example("intent-pipeline"),
                "models=minilm,intent-head",
            )
            .await;
        let intents = reference["intents"].as_array().unwrap();
        for case in reference["heldout"].as_array().unwrap() {
            let (status, headers, out) =
                post_json(&server, "/fn/intent", &json!({"text": case["text"]})).await;
            assert_eq!(status, 200, "{backend:?}: {out}");
            assert_eq!(
                out["intent"], case["expected"],
                "{backend:?} {}: {out}",
                case["text"]
            );
            for (intent, want) in intents.iter().zip(floats(&case["probabilities"])) {
                let score = out["scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["intent"] == *intent)
                    .unwrap();
                let got = score["probability"].as_f64().unwrap();
                assert!(
                    (got - want).abs() < 1e-3,
                    "{backend:?} {intent}: {got} vs {want}"
                );
            }
            assert!(infer_ms(&headers).is_some(), "{headers:?}");
        }
        // Both models ran on the shared, loaded graphs.
        for model in ["minilm", "intent-head"] {
            let m: Value = server
                .get(&format!("/v1/models/{model}"))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(m["state"], "loaded", "{backend:?}: {m}");
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn a_component_without_the_sdk_runs_unchanged() {
    let server = TestServer::start().await;
    server.deploy_ok("portable", PORTABLE, "").await;
    let r = server.get("/fn/portable/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello from wstd");
    let body = "x".repeat(200_000);
    let r = server
        .client
        .post(server.url("/fn/portable/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), body);
    let r = server.get("/fn/portable/sleep").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let slept: u64 = text
        .strip_prefix("slept ")
        .and_then(|t| t.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(slept >= 19, "{text}");
    assert_eq!(server.get("/fn/portable/other").await.status(), 404);
    server.stop().await;
}
