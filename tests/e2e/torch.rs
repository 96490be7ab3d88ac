//! PyTorch models: TorchScript uploads (`encoding=pytorch`), served through
//! `wasi:nn` by the `torch` backend on the CPU, with `gpu` requests on a
//! machine without CUDA following the fallback policy. Without the `torch`
//! feature, the encoding is refused with the reason.

#[cfg(not(feature = "torch"))]
#[tokio::test]
async fn pytorch_models_need_the_torch_feature() {
    let server = glia_e2e::TestServer::start().await;
    let p = crate::problem(
        server
            .upload_model("digits", glia_e2e::DIGITS_PT, "encoding=pytorch")
            .await,
        400,
        "unsupported-encoding",
    )
    .await;
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("cargo feature `torch`"), "{p}");
    server.stop().await;
}

#[cfg(feature = "torch")]
mod with_torch {
    use glia_e2e::{
        CNN_PT, DIGITS_HELDOUT, DIGITS_ONNX, DIGITS_PT, DTYPES_PT, TORCH_REFERENCE, TestServer,
        builtin,
    };
    use glia_host::config::FallbackPolicy;
    use serde_json::{Value, json};

    use crate::nn_probe::{NN_PROBE, base64};
    use crate::{json, problem};

    fn reference() -> Value {
        serde_json::from_str(TORCH_REFERENCE).expect("reference JSON")
    }

    fn floats(v: &Value) -> Vec<f64> {
        v.as_array()
            .unwrap_or_else(|| panic!("an array: {v}"))
            .iter()
            .map(|x| x.as_f64().expect("a number"))
            .collect()
    }

    fn close(got: &[f64], want: &[f64], tolerance: f64, case: &str) {
        assert_eq!(got.len(), want.len(), "{case}: {got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tolerance, "{case}: {got:?} vs {want:?}");
        }
    }

    /// The CNN's test input (`make.py`'s `test_image`).
    fn image() -> Value {
        let values: Vec<f64> = (0..3 * 64 * 64)
            .map(|i| f64::from(((i * 37) % 101) as u32) / 100.0)
            .collect();
        json!([{ "name": "image", "type": "fp32", "dims": [1, 3, 64, 64], "values": values }])
    }

    async fn probe(server: &TestServer, request: &Value) -> (Value, reqwest::header::HeaderMap) {
        let r = server
            .client
            .post(server.url("/fn/probe/"))
            .json(request)
            .send()
            .await
            .expect("probe request");
        let headers = r.headers().clone();
        (json(r, 200).await, headers)
    }

    fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn pytorch_digits_answer_like_the_onnx_digits() {
        let server = TestServer::start().await;
        let up = json(
            server
                .upload_model("digits", DIGITS_PT, "encoding=pytorch")
                .await,
            201,
        )
        .await;
        assert_eq!(up["encoding"], "pytorch");
        assert_eq!(up["backend"], "torch");
        let input = &up["signature"]["inputs"][0];
        assert_eq!(input["name"], "pixels");
        assert_eq!(input["dtype"], "f32");
        assert_eq!(input["dims"], json!([null, 64]));
        assert_eq!(up["signature"]["outputs"][0]["name"], "probabilities");

        // The built-in function, unchanged, on the PyTorch model.
        server
            .deploy_ok("classify", builtin("classify-digits"), "models=digits")
            .await;
        let heldout: Value = serde_json::from_str(DIGITS_HELDOUT).expect("heldout");
        let samples = &heldout["samples"].as_array().expect("samples")[..40];
        let classify = |pixels: Value| {
            let request = server
                .client
                .post(server.url("/fn/classify"))
                .json(&json!({ "pixels": pixels }));
            async move {
                let r = request.send().await.expect("classify");
                assert!(
                    r.headers()
                        .get("server-timing")
                        .and_then(|v| v.to_str().ok())
                        .is_some(),
                    "inference is timed"
                );
                json(r, 200).await
            }
        };
        let mut on_torch = Vec::new();
        for s in samples {
            let out = classify(s["pixels"].clone()).await;
            assert_eq!(out["label"], s["expected"], "sample {s}");
            on_torch.push(floats(&out["probabilities"]));
        }

        // A new version in ONNX: the same name, the same function, the
        // same answers.
        let up = json(server.upload_model("digits", DIGITS_ONNX, "").await, 201).await;
        assert_eq!(up["version"], 2);
        assert_ne!(up["backend"], "torch");
        for (s, torch) in samples.iter().zip(&on_torch) {
            let out = classify(s["pixels"].clone()).await;
            close(&floats(&out["probabilities"]), torch, 1e-5, "onnx vs torch");
        }
        let model = json(server.get("/v1/models/digits").await, 200).await;
        let encodings: Vec<&str> = model["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .filter_map(|v| v["encoding"].as_str())
            .collect();
        assert_eq!(encodings, ["pytorch", "onnx"]);
        server.stop().await;
    }

    #[tokio::test]
    async fn gpu_requests_run_where_the_policy_says_and_bill_that_device() {
        let cuda = glia_host::nn::torch::TorchBackend::new(0, 1)
            .cuda_device()
            .is_some();
        let server = TestServer::start().await;
        json(
            server.upload_model("cnn", CNN_PT, "encoding=pytorch").await,
            201,
        )
        .await;
        server.deploy_ok("probe", NN_PROBE, "models=cnn").await;
        let want = floats(&reference()["cnn"]["outputs"]["logits"]);

        for target in ["cpu", "gpu"] {
            let (body, headers) = probe(
                &server,
                &json!({ "load": { "name": format!("cnn@{target}") }, "inputs": image() }),
            )
            .await;
            assert_eq!(body["ok"], true, "{target}: {body}");
            let output = &body["outputs"][0];
            assert_eq!(output["name"], "logits", "{body}");
            assert_eq!(output["dims"], json!([1, 8]), "{body}");
            close(&floats(&output["first"]), &want, 1e-4, target);

            // Where it ran: the GPU when CUDA is here, else the CPU (the
            // default fallback), and the ledger bills that device.
            let ran = if target == "gpu" && cuda {
                "gpu"
            } else {
                "cpu"
            };
            assert_eq!(header(&headers, "glia-nn-device"), ran, "{target}");
            assert!(
                header(&headers, "server-timing").contains("torch"),
                "{target}: {}",
                header(&headers, "server-timing")
            );
            let id = header(&headers, "glia-invocation-id");
            let record = json(server.get(&format!("/v1/invocations/{id}")).await, 200).await;
            let (billed, other) = if ran == "gpu" {
                ("gpu_inference_us", "cpu_inference_us")
            } else {
                ("cpu_inference_us", "gpu_inference_us")
            };
            assert!(
                record["usage"][billed].as_u64().is_some_and(|us| us > 0),
                "{record}"
            );
            assert_eq!(record["usage"][other], 0, "{record}");
        }

        // Residency: the model is loaded on the CPU by the torch backend,
        // and the metrics say so.
        let model = json(server.get("/v1/models/cnn").await, 200).await;
        assert_eq!(model["backend"], "torch");
        let resident = model["resident"].as_array().expect("resident");
        assert!(
            resident
                .iter()
                .any(|r| r["backend"] == "torch" && r["device"] == "cpu"),
            "{model}"
        );
        let metrics = server.get("/metrics").await.text().await.expect("metrics");
        assert!(
            metrics.contains("glia_models_loaded{device=\"cpu\",backend=\"torch\"}"),
            "{metrics}"
        );
        assert!(
            metrics.contains("glia_model_memory_budget_bytes{device=\"gpu\"}"),
            "{metrics}"
        );
        server.stop().await;

        if !cuda {
            // Told to fail rather than fall back, a gpu request fails.
            let server =
                TestServer::start_with(|c| c.models.fallback = FallbackPolicy::Error).await;
            json(
                server.upload_model("cnn", CNN_PT, "encoding=pytorch").await,
                201,
            )
            .await;
            server.deploy_ok("probe", NN_PROBE, "models=cnn").await;
            let (body, _) = probe(
                &server,
                &json!({ "load": { "name": "cnn@gpu" }, "inputs": image() }),
            )
            .await;
            assert_eq!(body["ok"], false, "{body}");
            assert_eq!(body["stage"], "load", "{body}");
            let message = body["message"].as_str().unwrap_or_default();
            assert!(message.contains("no gpu"), "{body}");
            server.stop().await;
        }
    }

    #[tokio::test]
    async fn pytorch_models_that_reach_for_files_are_refused_on_every_path() {
        use glia_e2e::{READS_FILE_PT, WRITES_FILE_PT};
        let server = TestServer::start().await;
        server.deploy_ok("probe", NN_PROBE, "").await;
        for (model, op) in [(READS_FILE_PT, "from_file"), (WRITES_FILE_PT, "save")] {
            let p = problem(
                server
                    .upload_model("hostile", model, "encoding=pytorch")
                    .await,
                400,
                "invalid-model",
            )
            .await;
            let detail = p["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains(op) && detail.contains("outside the model"),
                "{p}"
            );
            let (body, _) = probe(
                &server,
                &json!({
                    "load": { "bytes_b64": base64(model), "encoding": "pytorch" },
                    "inputs": [{ "name": "x", "type": "fp32", "dims": [16], "fill": 0.0 }],
                }),
            )
            .await;
            assert_eq!(body["ok"], false, "{body}");
            assert_eq!(body["stage"], "load", "{body}");
            assert_eq!(body["code"], "invalid-encoding", "{body}");
        }
        assert!(!server.data_dir.join("written").exists());
        server.stop().await;
    }

    #[tokio::test]
    async fn raw_pytorch_loads_carry_every_tensor_type() {
        let server = TestServer::start().await;
        server.deploy_ok("probe", NN_PROBE, "").await;
        let types = ["fp16", "fp32", "fp64", "bf16", "u8", "i32", "i64"];
        let inputs: Vec<Value> = types
            .iter()
            .enumerate()
            .map(|(ix, ty)| {
                let values = if matches!(*ty, "u8") {
                    json!([1, 254])
                } else if ty.starts_with('i') {
                    json!([7, -8])
                } else {
                    json!([1.5, -2.0])
                };
                json!({ "name": format!("in{ix}"), "type": ty, "dims": [2], "values": values })
            })
            .collect();
        let (body, _) = probe(
            &server,
            &json!({
                "load": { "bytes_b64": base64(DTYPES_PT), "encoding": "pytorch" },
                "inputs": inputs,
            }),
        )
        .await;
        assert_eq!(body["ok"], true, "{body}");
        let outputs = body["outputs"].as_array().expect("outputs");
        let got: Vec<(String, Vec<f64>)> = outputs
            .iter()
            .map(|o| {
                (
                    o["type"].as_str().unwrap_or_default().to_string(),
                    floats(&o["first"]),
                )
            })
            .collect();
        let want: Vec<(String, Vec<f64>)> = [
            ("fp16", vec![2.5, -1.0]),
            ("fp32", vec![2.5, -1.0]),
            ("fp64", vec![2.5, -1.0]),
            ("bf16", vec![2.5, -1.0]),
            ("u8", vec![2.0, 255.0]),
            ("i32", vec![8.0, -7.0]),
            ("i64", vec![8.0, -7.0]),
            // `fp32 > 0`, a bool tensor, arrives as u8.
            ("u8", vec![1.0, 0.0]),
        ]
        .into_iter()
        .map(|(t, v)| (t.to_string(), v))
        .collect();
        assert_eq!(got, want, "{body}");
        // Outputs without a declared signature are named by position.
        assert_eq!(outputs[7]["name"], "7", "{body}");
        server.stop().await;
    }

    #[tokio::test]
    async fn bad_pytorch_models_and_inputs_get_clear_errors() {
        let server = TestServer::start().await;
        for junk in [
            &b"not a model"[..],
            DIGITS_ONNX,
            &CNN_PT[..CNN_PT.len() / 2],
        ] {
            let p = problem(
                server.upload_model("junk", junk, "encoding=pytorch").await,
                400,
                "invalid-model",
            )
            .await;
            assert!(
                p["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("TorchScript"),
                "{p}"
            );
        }
        json(
            server.upload_model("cnn", CNN_PT, "encoding=pytorch").await,
            201,
        )
        .await;
        server.deploy_ok("probe", NN_PROBE, "models=cnn").await;
        for (inputs, says) in [
            (
                json!([{ "name": "image", "type": "fp32", "dims": [1, 3, 32, 32], "fill": 0.5 }]),
                "[?, 3, 64, 64]",
            ),
            (
                json!([{ "name": "image", "type": "i64", "dims": [1, 3, 64, 64], "fill": 1 }]),
                "is f32, got i64",
            ),
            (json!([]), "takes 1 input(s), got 0"),
        ] {
            let (body, _) = probe(
                &server,
                &json!({ "load": { "name": "cnn" }, "inputs": inputs }),
            )
            .await;
            assert_eq!(body["ok"], false, "{body}");
            assert_eq!(body["stage"], "compute", "{body}");
            assert_eq!(body["code"], "invalid-argument", "{body}");
            let message = body["message"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{says}: {body}");
        }
        // And the model still serves.
        let (body, _) = probe(
            &server,
            &json!({ "load": { "name": "cnn" }, "inputs": image() }),
        )
        .await;
        assert_eq!(body["ok"], true, "{body}");
        server.stop().await;
    }
}
