//! The host's `wasi:nn` as a guest sees it, driven call by call through the
//! `nn-probe` fixture: every error code a guest can provoke, the model name
//! scheme and device fallback, raw loads and their limits, graph and context
//! lifetimes, and the timing the response reports. Each test runs on every
//! ONNX backend and ends with a good inference, so no mistake leaves the
//! host unable to serve.

use glia_e2e::{BACKENDS, Backend, DIGITS_HELDOUT, DIGITS_ONNX, TestServer};
use glia_host::config::{Config, FallbackPolicy};
use serde_json::{Value, json};

/// The `nn-probe` fixture (see `tests/fixtures/nn-probe`).
pub(crate) const NN_PROBE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fixtures/nn-probe.wasm"));

/// Largest tensor (in elements) the host accepts
/// (`glia_host::nn::wasi::MAX_TENSOR_ELEMENTS`).
const MAX_TENSOR_ELEMENTS: u64 = 64 * 1024 * 1024;

const MIB: usize = 1024 * 1024;

/// A server on `backend` (with `tweak`ed configuration) holding the `digits`
/// model, with the probe deployed as `probe` and granted `digits`.
async fn probe_server(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let server = TestServer::start_on(backend, tweak).await;
    let r = server.upload_model("digits", DIGITS_ONNX, "").await;
    assert_eq!(r.status(), 201, "[{}] uploading digits", backend.name());
    server.deploy_ok("probe", NN_PROBE, "models=digits").await;
    server
}

/// One probe call's outcome.
struct Probed {
    body: Value,
    device: Option<String>,
    timing: Option<String>,
}

/// Sends one probe; asserts it was understood (`200`), and that a
/// successful one reports its inference in `server-timing`.
async fn probe(server: &TestServer, backend: Backend, request: &Value) -> Probed {
    let r = server
        .client
        .post(server.url("/fn/probe/"))
        .json(request)
        .send()
        .await
        .expect("probe request");
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let device = header("glia-nn-device");
    let timing = header("server-timing");
    let text = r.text().await.expect("probe body");
    let backend = backend.name();
    assert_eq!(status, 200, "[{backend}] probe {request}: {text}");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("[{backend}] probe answered non-JSON ({e}): {text}"));
    if body["ok"] == true {
        assert!(
            timing.as_deref().is_some_and(|t| t.contains("nn-compute")),
            "[{backend}] a successful probe reports nn-compute in server-timing, got {timing:?}"
        );
    }
    Probed {
        body,
        device,
        timing,
    }
}

/// Asserts that `case` failed at `stage` with `code`; returns the message.
fn failed(p: &Probed, backend: Backend, case: &str, stage: &str, code: &str) -> String {
    let backend = backend.name();
    let body = &p.body;
    assert_eq!(body["ok"], false, "[{backend}] {case} fails: {body}");
    assert_eq!(
        body["stage"], stage,
        "[{backend}] {case} fails at {stage}: {body}"
    );
    assert_eq!(body["code"], code, "[{backend}] {case} is {code}: {body}");
    let message = body["message"].as_str().unwrap_or_default().to_string();
    assert!(
        !message.is_empty(),
        "[{backend}] {case} explains itself: {body}"
    );
    message
}

/// Asserts that `case` succeeded with the digits model's output shape;
/// returns the first probabilities.
fn succeeded(p: &Probed, backend: Backend, case: &str) -> Vec<f64> {
    let backend = backend.name();
    let body = &p.body;
    assert_eq!(body["ok"], true, "[{backend}] {case} succeeds: {body}");
    let output = &body["outputs"][0];
    assert_eq!(
        output["name"], "probabilities",
        "[{backend}] {case} output: {body}"
    );
    assert_eq!(output["type"], "fp32", "[{backend}] {case} output: {body}");
    assert_eq!(
        output["dims"],
        json!([1, 10]),
        "[{backend}] {case} output: {body}"
    );
    output["first"]
        .as_array()
        .unwrap_or_else(|| panic!("[{backend}] {case} output values: {body}"))
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

/// The first held-out digit: its pixels and the probabilities ONNX Runtime
/// gave for it.
fn sample() -> (Value, Vec<f64>) {
    let heldout: Value = serde_json::from_str(DIGITS_HELDOUT).expect("heldout JSON");
    let s = &heldout["samples"][0];
    let probabilities = s["probabilities"]
        .as_array()
        .expect("probabilities")
        .iter()
        .map(|p| p.as_f64().expect("a number"))
        .collect();
    (s["pixels"].clone(), probabilities)
}

/// The sample as the model's input.
fn pixels() -> Value {
    json!([{ "name": "pixels", "type": "fp32", "dims": [1, 64], "values": sample().0 }])
}

/// A probe loading `name` and classifying the sample.
fn by_name(name: &str) -> Value {
    json!({ "load": { "name": name }, "inputs": pixels() })
}

/// A probe raw-loading `bytes` (and `extra` load keys) and classifying the
/// sample.
fn raw(bytes: &[u8], extra: Value) -> Value {
    let mut load = json!({ "bytes_b64": base64(bytes) });
    if let (Some(load), Some(extra)) = (load.as_object_mut(), extra.as_object()) {
        load.extend(extra.clone());
    }
    json!({ "load": load, "inputs": pixels() })
}

/// Asserts that `got` are ONNX Runtime's probabilities for the sample.
fn assert_reference(got: &[f64], backend: Backend, case: &str) {
    let (_, want) = sample();
    assert_eq!(got.len(), 8, "[{}] {case}: first 8 outputs", backend.name());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() < 1e-4,
            "[{}] {case}: got {got:?}, ONNX Runtime gave {want:?}",
            backend.name()
        );
    }
}

/// Asserts the host still runs a good inference.
async fn still_serving(server: &TestServer, backend: Backend) {
    let p = probe(server, backend, &by_name("digits")).await;
    let got = succeeded(&p, backend, "a good compute afterwards");
    assert_reference(&got, backend, "a good compute afterwards");
}

/// Standard base64 with padding.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_the_standard_alphabet() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensors_the_model_cannot_take_get_their_error_code() {
    for backend in BACKENDS {
        let server = probe_server(backend, |_| {}).await;
        let with = |inputs: Value| json!({ "load": { "name": "digits" }, "inputs": inputs });

        let case = "an i64 tensor where the model wants fp32";
        let p = probe(
            &server,
            backend,
            &with(json!([{ "name": "pixels", "type": "i64", "dims": [1, 64], "fill": 0 }])),
        )
        .await;
        let message = failed(&p, backend, case, "compute", "invalid-argument");
        assert!(
            message.contains("i64") && message.contains("f32"),
            "[{}] {case}: the message names both types: {message}",
            backend.name()
        );

        let case = "an fp16 tensor where the model wants fp32";
        let p = probe(
            &server,
            backend,
            &with(json!([{ "name": "pixels", "type": "fp16", "dims": [1, 64], "fill": 1.0 }])),
        )
        .await;
        failed(&p, backend, case, "compute", "invalid-argument");

        let case = "dimensions [1, 63] where the model wants [N, 64]";
        let p = probe(
            &server,
            backend,
            &with(json!([{ "name": "pixels", "type": "fp32", "dims": [1, 63], "fill": 0.0 }])),
        )
        .await;
        let message = failed(&p, backend, case, "compute", "invalid-argument");
        assert!(
            message.contains("64]") && message.contains("[1, 63]"),
            "[{}] {case}: the message names the expected and given dimensions: {message}",
            backend.name()
        );

        let case = "12 bytes of data for dimensions [1, 64] of fp32";
        let p = probe(
            &server,
            backend,
            &with(json!([{ "name": "pixels", "type": "fp32", "dims": [1, 64], "bytes": 12 }])),
        )
        .await;
        let message = failed(&p, backend, case, "compute", "invalid-argument");
        assert!(
            message.contains("12") && message.contains("256"),
            "[{}] {case}: the message gives the length and the expected one: {message}",
            backend.name()
        );

        let case = "more elements than the host's tensor limit, with 4 bytes of data";
        let rows = MAX_TENSOR_ELEMENTS / 1024 + 1;
        assert!(rows * 1024 > MAX_TENSOR_ELEMENTS);
        let p = probe(
            &server,
            backend,
            &with(json!([{ "name": "pixels", "type": "fp32", "dims": [rows, 1024], "bytes": 4 }])),
        )
        .await;
        failed(&p, backend, case, "compute", "too-large");

        let case = "dimensions whose product overflows";
        let p = probe(
            &server,
            backend,
            &with(json!([{
                "name": "pixels", "type": "u8",
                "dims": [u32::MAX, u32::MAX, u32::MAX], "bytes": 1,
            }])),
        )
        .await;
        failed(&p, backend, case, "compute", "too-large");

        let case = "a compute with no inputs";
        let p = probe(&server, backend, &with(json!([]))).await;
        failed(&p, backend, case, "compute", "invalid-argument");

        let case = "a compute with two inputs for a one-input model";
        let one = json!({ "name": "pixels", "type": "fp32", "dims": [1, 64], "fill": 0.0 });
        let mut other = one.clone();
        other["name"] = json!("extra");
        let p = probe(&server, backend, &with(json!([one, other]))).await;
        failed(&p, backend, case, "compute", "invalid-argument");

        still_serving(&server, backend).await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_not_granted_are_indistinguishable_from_missing_ones() {
    for backend in BACKENDS {
        let server = probe_server(backend, |_| {}).await;
        // `secret` exists, but the probe is not granted it.
        let r = server.upload_model("secret", DIGITS_ONNX, "").await;
        assert_eq!(r.status(), 201, "[{}] uploading secret", backend.name());

        for suffix in ["", "@cpu", "@gpu"] {
            let secret = format!("secret{suffix}");
            let missing = format!("nosuch{suffix}");
            let p = probe(&server, backend, &by_name(&secret)).await;
            let case = format!("loading `{secret}`, which exists but is not granted");
            let secret_message = failed(&p, backend, &case, "load", "not-found");
            let p = probe(&server, backend, &by_name(&missing)).await;
            let case = format!("loading `{missing}`, which does not exist");
            let missing_message = failed(&p, backend, &case, "load", "not-found");
            assert_eq!(
                secret_message.replace("secret", "NAME"),
                missing_message.replace("nosuch", "NAME"),
                "[{}] an existing, ungranted model and a missing one get the same answer",
                backend.name()
            );
        }

        for name in ["digits@fpga", "digits@", "digits@CPU", "digits@gpu@cpu", ""] {
            let p = probe(&server, backend, &by_name(name)).await;
            failed(
                &p,
                backend,
                &format!("loading {name:?}, not a valid name of a granted model"),
                "load",
                "not-found",
            );
        }

        still_serving(&server, backend).await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_outlives_its_graph_and_computes_repeatedly() {
    for backend in BACKENDS {
        let server = probe_server(backend, |_| {}).await;

        let case = "a compute after the graph was dropped";
        let mut request = by_name("digits");
        request["drop_graph_before_compute"] = json!(true);
        let p = probe(&server, backend, &request).await;
        assert_reference(&succeeded(&p, backend, case), backend, case);

        for (computes, drop_graph) in [(5, false), (3, true)] {
            let case = format!("{computes} computes on one context (graph dropped: {drop_graph})");
            let mut request = by_name("digits");
            request["computes"] = json!(computes);
            request["drop_graph_before_compute"] = json!(drop_graph);
            let p = probe(&server, backend, &request).await;
            assert_reference(&succeeded(&p, backend, &case), backend, &case);
            assert_eq!(p.body["computes"], computes, "[{}] {case}", backend.name());
            let timing = p.timing.unwrap_or_default();
            assert!(
                timing.contains(&format!("x{computes}\"")),
                "[{}] {case}: server-timing counts every run: {timing}",
                backend.name()
            );
        }

        still_serving(&server, backend).await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_and_tpu_fall_back_to_the_cpu_by_default() {
    for backend in BACKENDS {
        let server = probe_server(backend, |_| {}).await;

        let p = probe(&server, backend, &by_name("digits@cpu")).await;
        let on_cpu = succeeded(&p, backend, "digits@cpu");
        assert_reference(&on_cpu, backend, "digits@cpu");
        assert_eq!(
            p.device.as_deref(),
            Some("cpu"),
            "[{}] digits@cpu reports its device",
            backend.name()
        );

        for request in [
            by_name("digits@gpu"),
            by_name("digits@tpu"),
            raw(DIGITS_ONNX, json!({ "target": "gpu" })),
        ] {
            let case = format!("{} on a CPU-only host", request["load"]);
            let case = case.chars().take(80).collect::<String>();
            let p = probe(&server, backend, &request).await;
            let got = succeeded(&p, backend, &case);
            assert_eq!(
                got,
                on_cpu,
                "[{}] {case}: the same output as on the CPU",
                backend.name()
            );
            assert_eq!(
                p.device.as_deref(),
                Some("cpu"),
                "[{}] {case}: glia-nn-device says where it ran",
                backend.name()
            );
        }

        still_serving(&server, backend).await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_and_tpu_fail_when_fallback_is_an_error() {
    for backend in BACKENDS {
        let server = probe_server(backend, |c| c.models.fallback = FallbackPolicy::Error).await;

        for request in [
            by_name("digits@gpu"),
            by_name("digits@tpu"),
            raw(DIGITS_ONNX, json!({ "target": "gpu" })),
        ] {
            let case = format!("{} with models.fallback = error", request["load"]);
            let case = case.chars().take(80).collect::<String>();
            let p = probe(&server, backend, &request).await;
            failed(&p, backend, &case, "load", "unsupported-operation");
        }

        for name in ["digits@cpu", "digits"] {
            let p = probe(&server, backend, &by_name(name)).await;
            assert_reference(&succeeded(&p, backend, name), backend, name);
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_loads_run_onnx_bytes_and_refuse_anything_else() {
    for backend in BACKENDS {
        let server = probe_server(backend, |_| {}).await;

        let p = probe(&server, backend, &by_name("digits")).await;
        let named = succeeded(&p, backend, "load-by-name");
        let case = "a raw load of the digits bytes";
        let p = probe(&server, backend, &raw(DIGITS_ONNX, json!({}))).await;
        let got = succeeded(&p, backend, case);
        assert_eq!(
            got,
            named,
            "[{}] {case}: the same output as load-by-name",
            backend.name()
        );

        let corrupt: [(&str, Vec<u8>); 3] = [
            ("junk bytes", b"this is not an ONNX model".to_vec()),
            (
                "truncated digits bytes",
                DIGITS_ONNX[..DIGITS_ONNX.len() / 2].to_vec(),
            ),
            ("no bytes", Vec::new()),
        ];
        for (case, bytes) in corrupt {
            let p = probe(&server, backend, &raw(&bytes, json!({}))).await;
            failed(&p, backend, case, "load", "invalid-encoding");
        }

        for builders in [2, 0] {
            let case = format!("{builders} builders of digits bytes");
            let p = probe(
                &server,
                backend,
                &raw(DIGITS_ONNX, json!({ "builders": builders })),
            )
            .await;
            failed(&p, backend, &case, "load", "invalid-argument");
        }

        for encoding in ["tensorflow", "openvino", "pytorch"] {
            let case = format!("digits bytes declared as {encoding}");
            let p = probe(
                &server,
                backend,
                &raw(DIGITS_ONNX, json!({ "encoding": encoding })),
            )
            .await;
            failed(&p, backend, &case, "load", "invalid-encoding");
        }

        still_serving(&server, backend).await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_loads_are_refused_when_disabled() {
    for backend in BACKENDS {
        let server = probe_server(backend, |c| c.models.max_raw_load_mb = 0).await;

        let case = "a raw load with models.max_raw_load_mb = 0";
        let p = probe(&server, backend, &raw(DIGITS_ONNX, json!({}))).await;
        failed(&p, backend, case, "load", "unsupported-operation");

        still_serving(&server, backend).await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_loads_over_the_limit_are_too_large() {
    for backend in BACKENDS {
        let server = probe_server(backend, |c| c.models.max_raw_load_mb = 1).await;

        let case = "a raw load of 1 MiB + 1 byte with models.max_raw_load_mb = 1";
        let p = probe(&server, backend, &raw(&vec![0xff; MIB + 1], json!({}))).await;
        let message = failed(&p, backend, case, "load", "too-large");
        assert!(
            message.contains(&(MIB + 1).to_string()),
            "[{}] {case}: the message gives the size: {message}",
            backend.name()
        );

        // At the limit the bytes are read (and found not to be a model).
        let case = "a raw load of exactly 1 MiB of junk with models.max_raw_load_mb = 1";
        let p = probe(&server, backend, &raw(&vec![0xff; MIB], json!({}))).await;
        failed(&p, backend, case, "load", "invalid-encoding");

        let case = "a raw load of the digits bytes under the limit";
        let p = probe(&server, backend, &raw(DIGITS_ONNX, json!({}))).await;
        assert_reference(&succeeded(&p, backend, case), backend, case);

        still_serving(&server, backend).await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timing_reports_the_load_only_when_the_call_caused_it() {
    for backend in BACKENDS {
        let server = probe_server(backend, |_| {}).await;
        // The upload loaded the model; after a restart nothing is loaded.
        let server = server.restart().await;

        let p = probe(&server, backend, &by_name("digits")).await;
        assert_reference(&succeeded(&p, backend, "first call"), backend, "first call");
        let timing = p.timing.unwrap_or_default();
        assert!(
            timing.contains("nn-load") && timing.contains("nn-compute"),
            "[{}] the first call after a restart loads the model: {timing}",
            backend.name()
        );
        assert!(
            timing.contains(&format!("{} cpu x1", backend.name())),
            "[{}] the compute is described by backend, device and runs: {timing}",
            backend.name()
        );

        let p = probe(&server, backend, &by_name("digits")).await;
        assert_reference(
            &succeeded(&p, backend, "second call"),
            backend,
            "second call",
        );
        let timing = p.timing.unwrap_or_default();
        assert!(
            !timing.contains("nn-load") && timing.contains("nn-compute"),
            "[{}] the second call finds the model loaded: {timing}",
            backend.name()
        );
        server.stop().await;
    }
}

/// A model whose weights point at a file outside it (ONNX external data)
/// would read that file into a tensor, and the function would get the
/// file's bytes back: the admin key, every tenant's databases. Such a model
/// is refused on every path a model enters, on every backend, with the
/// same message whether or not the file exists, naming no path; a model
/// with the same weights inside it loads and runs on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_pointing_at_files_are_refused_on_every_path() {
    use glia_host::nn::onnx::build::add_model;
    // A file relative to the working directory, as the default data
    // directory is: 16 known floats (ONNX Runtime reads external data of
    // tensors this large without complaint when the check is not there).
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    let relative = dir
        .path()
        .strip_prefix(std::env::current_dir().expect("cwd"))
        .expect("under the working directory")
        .to_path_buf();
    let secret: Vec<u8> = (1..=16u8)
        .flat_map(|v| f32::from(v).to_le_bytes())
        .collect();
    std::fs::write(dir.path().join("admin.key"), &secret).expect("write");
    let existing = relative.join("admin.key");
    let missing = relative.join("missing.db");
    let input = json!([{ "name": "x", "type": "fp32", "dims": [16], "fill": 0.0 }]);

    for backend in BACKENDS {
        let server = probe_server(backend, |_| {}).await;
        let b = backend.name();
        let mut messages = Vec::new();
        for (location, offset) in [
            (existing.as_path(), 0),
            (existing.as_path(), 8),
            (missing.as_path(), 0),
        ] {
            let location = location.to_str().expect("utf-8");
            let model = add_model(16, Some((location, offset)));

            let r = server.upload_model("leak", &model, "").await;
            let body = crate::problem(r, 400, "invalid-model").await;
            let detail = body["detail"].as_str().expect("detail").to_string();
            assert!(detail.contains("external tensor data"), "[{b}] {detail}");

            let request = json!({ "load": { "bytes_b64": base64(&model) }, "inputs": input });
            let p = probe(&server, backend, &request).await;
            let message = failed(&p, backend, "a raw load of it", "load", "invalid-encoding");
            for said in [&detail, &message] {
                assert!(!said.contains(location), "[{b}] names no path: {said}");
                assert!(!said.contains("admin.key"), "[{b}] names no file: {said}");
            }
            messages.push((detail, message));
        }
        assert!(
            messages.windows(2).all(|w| w[0] == w[1]),
            "[{b}] whether the file exists does not show: {messages:?}"
        );
        let r = server.get("/v1/models/leak").await;
        crate::problem(r, 404, "model-not-found").await;

        // The same graph with its weights inside: uploaded, granted and
        // raw-loaded, it runs (so the refusals above are about the data).
        let inline = add_model(16, None);
        let r = server.upload_model("inline", &inline, "").await;
        assert_eq!(
            r.status(),
            201,
            "[{b}] {}",
            r.text().await.unwrap_or_default()
        );
        let request = json!({ "load": { "bytes_b64": base64(&inline) }, "inputs": input });
        let p = probe(&server, backend, &request).await;
        assert_eq!(p.body["ok"], true, "[{b}] {}", p.body);
        assert_eq!(
            p.body["outputs"][0]["dims"],
            json!([16]),
            "[{b}] {}",
            p.body
        );
        still_serving(&server, backend).await;
        server.stop().await;
    }
}
