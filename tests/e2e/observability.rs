//! Observability end to end: `/metrics` parsed as Prometheus text and its
//! counts checked against the calls made; a guest's stdout and stderr kept
//! per invocation, served back and truncated; and one call's trace, as an
//! OTLP collector receives it (a small hyper server in the test decoding
//! the protobuf with `opentelemetry-proto`).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glia_e2e::{DIGITS_ONNX, HOSTILE, TestServer, builtin, hello};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::{Value, json};

use crate::{json, problem};

// ---------------------------------------------------------------------------
// Prometheus text

/// One sample of a Prometheus exposition.
#[derive(Debug)]
struct PromSample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus' text format strictly: every sample belongs to a family
/// declared by `# TYPE` before it, every line parses.
fn parse_prometheus(text: &str) -> Vec<PromSample> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{name} declared twice"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                (name.to_string(), parse_labels(body))
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name {name}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(&name);
        assert!(types.contains_key(family), "{name} has no # TYPE before it");
        samples.push(PromSample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {key} is quoted");
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => match chars.next().expect("escape") {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        match chars.next() {
            Some(',') | None => {}
            Some(c) => panic!("unexpected {c} after a label"),
        }
    }
    labels
}

/// The value of the one sample named `name` with exactly `labels`.
fn sample(samples: &[PromSample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    let found: Vec<&PromSample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} appears twice");
    found.first().map(|s| s.value)
}

async fn metrics(server: &TestServer) -> Vec<PromSample> {
    let r = server.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse_prometheus(&r.text().await.unwrap())
}

/// Makes the calls the metrics tests count: hello 3 times, the hostile
/// fixture's `/ok` once and its `/trap` once, and a function that does not
/// exist (not counted).
async fn make_calls(server: &TestServer) {
    server.deploy_ok("hello", hello(), "").await;
    server
        .deploy_ok("hostile", HOSTILE, "timeout_ms=2000")
        .await;
    for _ in 0..3 {
        assert_eq!(server.get("/fn/hello/x").await.status(), 200);
    }
    assert_eq!(server.get("/fn/hostile/ok").await.status(), 200);
    assert_eq!(server.get("/fn/hostile/trap").await.status(), 500);
    assert_eq!(server.get("/fn/ghost/").await.status(), 404);
}

fn assert_counts(samples: &[PromSample]) {
    let calls = |function: &str, outcome: &str| {
        sample(
            samples,
            "glia_invocations_total",
            &[
                ("tenant", "default"),
                ("function", function),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(calls("hello", "ok"), Some(3.0));
    assert_eq!(calls("hello", "trap"), Some(0.0));
    assert_eq!(calls("hostile", "ok"), Some(1.0));
    assert_eq!(calls("hostile", "trap"), Some(1.0));
    assert!(
        !samples
            .iter()
            .any(|s| s.labels.get("function") == Some(&"ghost".to_string())),
        "calls to no function are not counted"
    );
    let hello = [("tenant", "default"), ("function", "hello")];
    assert_eq!(
        sample(samples, "glia_invocation_duration_seconds_count", &hello),
        Some(3.0)
    );
    assert_eq!(
        sample(samples, "glia_admission_wait_seconds_count", &hello),
        Some(3.0)
    );
    assert_eq!(sample(samples, "glia_cold_starts_total", &hello), Some(1.0));
    assert_eq!(
        sample(samples, "glia_cold_start_duration_seconds_count", &hello),
        Some(1.0)
    );
    assert_eq!(sample(samples, "glia_warm_instances", &hello), Some(1.0));
    assert_eq!(sample(samples, "glia_queue_depth", &hello), Some(0.0));
    // Histograms: cumulative buckets ending at +Inf = count, a sum.
    let buckets: Vec<&PromSample> = samples
        .iter()
        .filter(|s| {
            s.name == "glia_invocation_duration_seconds_bucket"
                && s.labels.get("function").map(String::as_str) == Some("hello")
        })
        .collect();
    assert!(buckets.len() > 10);
    assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value));
    let last = buckets.last().unwrap();
    assert_eq!(last.labels["le"], "+Inf");
    assert_eq!(last.value, 3.0);
    let sum = sample(samples, "glia_invocation_duration_seconds_sum", &hello).unwrap();
    assert!(sum > 0.0 && sum < 30.0, "{sum}");
    let build = samples
        .iter()
        .find(|s| s.name == "glia_build_info")
        .expect("build info");
    assert_eq!(build.value, 1.0);
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_calls_made() {
    let server = TestServer::start().await;
    make_calls(&server).await;
    let samples = metrics(&server).await;
    assert_counts(&samples);
    // The ledger has caught up: nothing pending, one record per counted call
    // and one per upload's compile.
    assert_eq!(
        sample(&samples, "glia_ledger_pending_records", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&samples, "glia_ledger_records_total", &[]),
        Some(7.0)
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "glia_start_time_seconds" && s.value > 1.6e9),
        "start time"
    );
    let r = server
        .client
        .post(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    problem(r, 405, "method-not-allowed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_with_billing_off() {
    let server = TestServer::start_with(|c| c.billing.enabled = false).await;
    make_calls(&server).await;
    let samples = metrics(&server).await;
    assert_counts(&samples);
    assert!(!samples.iter().any(|s| s.name.starts_with("glia_ledger_")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_time_and_loaded_models_per_device() {
    let server = TestServer::start().await;
    assert_eq!(
        server
            .upload_model("digits", DIGITS_ONNX, "")
            .await
            .status(),
        201
    );
    server
        .deploy_ok(
            "classify-digits",
            builtin("classify-digits"),
            "models=digits",
        )
        .await;
    for _ in 0..2 {
        let r = server
            .client
            .post(server.url("/fn/classify-digits"))
            .json(&json!({ "pixels": vec![0; 64] }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let samples = metrics(&server).await;
    let cpu = [("backend", "tract"), ("device", "cpu")];
    assert_eq!(
        sample(&samples, "glia_inference_duration_seconds_count", &cpu),
        Some(2.0)
    );
    assert_eq!(sample(&samples, "glia_models_loaded", &cpu), Some(1.0));
    assert_eq!(
        sample(&samples, "glia_model_resident_bytes", &cpu),
        Some(DIGITS_ONNX.len() as f64)
    );
}

// ---------------------------------------------------------------------------
// Invocation logs

async fn server_with_printer(tweak: impl FnOnce(&mut glia_host::config::Config)) -> TestServer {
    let server = TestServer::start_with(tweak).await;
    server
        .deploy_ok("hostile", HOSTILE, "timeout_ms=5000")
        .await;
    server
}

/// Calls `/print?n=N`; returns the invocation id.
async fn print(server: &TestServer, n: usize) -> String {
    let r = server.get(&format!("/fn/hostile/print?n={n}")).await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["glia-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(r.text().await.unwrap(), format!("printed {}", 18 + n));
    id
}

/// The log of `id`, waiting for it when logs are written after the
/// response (billing off).
async fn log_of(server: &TestServer, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let r = server.get(&format!("/v1/invocations/{id}/logs")).await;
        if r.status() == 200 {
            return r.json().await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no log for {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_round_trip() {
    let server = server_with_printer(|_| {}).await;
    let id = print(&server, 0).await;
    // Billing holds the response until the guest has finished, so its log
    // is there at once.
    let log = json(server.get(&format!("/v1/invocations/{id}/logs")).await, 200).await;
    assert_eq!(log["invocation_id"], id);
    assert_eq!(log["function"], "hostile");
    assert_eq!(log["version"], 1);
    assert_eq!(log["truncated"], false);
    assert_eq!(log["bytes_written"], 18);
    assert_eq!(
        log["entries"],
        json!([
            {"stream": "stdout", "text": "out 1\n"},
            {"stream": "stderr", "text": "err 1\n"},
            {"stream": "stdout", "text": "out 2\n"},
        ])
    );
    let text = server
        .client
        .get(server.url(&format!("/v1/invocations/{id}/logs")))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(text.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(text.text().await.unwrap(), "out 1\nerr 1\nout 2\n");

    // A function's latest logs, oldest first, and only newer ones after
    // `next` (what `glia logs --follow` polls).
    let second = print(&server, 0).await;
    // A call that wrote nothing has an empty log (the ledger knows it ran).
    let r = server.get("/fn/hostile/ok").await;
    let silent = r.headers()["glia-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let empty = json(
        server.get(&format!("/v1/invocations/{silent}/logs")).await,
        200,
    )
    .await;
    assert_eq!(empty["entries"], json!([]));
    assert_eq!(empty["function"], "hostile");

    let wait_for = |n: usize| {
        let server = &server;
        async move {
            let started = Instant::now();
            loop {
                let page = json(server.get("/v1/functions/hostile/logs").await, 200).await;
                if page["logs"].as_array().unwrap().len() == n {
                    return page;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "{page}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let page = wait_for(2).await;
    let ids: Vec<&str> = page["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["invocation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str(), second.as_str()]);
    let next = page["next"].as_i64().unwrap();
    let newer = json(
        server
            .get(&format!("/v1/functions/hostile/logs?after={next}"))
            .await,
        200,
    )
    .await;
    assert_eq!(newer["logs"], json!([]));
    assert_eq!(newer["next"], next);
    let third = print(&server, 0).await;
    let started = Instant::now();
    let newer = loop {
        let page = json(
            server
                .get(&format!("/v1/functions/hostile/logs?after={next}"))
                .await,
            200,
        )
        .await;
        if !page["logs"].as_array().unwrap().is_empty() {
            break page;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(newer["logs"][0]["invocation_id"], third);
    let latest = json(server.get("/v1/functions/hostile/logs?limit=1").await, 200).await;
    assert_eq!(latest["logs"][0]["invocation_id"], third);

    problem(
        server.get("/v1/invocations/nope/logs").await,
        404,
        "logs-not-found",
    )
    .await;
    problem(
        server.get("/v1/functions/hostile/logs?limit=0").await,
        400,
        "invalid-request",
    )
    .await;
    problem(
        server.get("/v1/functions/Bad!/logs").await,
        400,
        "invalid-name",
    )
    .await;

    // And `glia logs` reads them (its output is this test's stdout).
    for args in [
        vec!["glia", "logs", "hostile", "-n", "2", "--url", &server.url],
        vec!["glia", "logs", "--invocation", &id, "--url", &server.url],
        vec!["glia", "logs", "hostile", "--json", "--url", &server.url],
    ]
    .map(|mut args| {
        args.extend(["--key", glia_e2e::ADMIN_KEY]);
        args
    }) {
        let cli = <glia_host::cli::Cli as clap::Parser>::try_parse_from(args).expect("parses");
        glia_host::cli::run(cli).await.expect("glia logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_truncate_with_a_marker() {
    let server = server_with_printer(|c| c.telemetry.logs.max_bytes_per_call = 100).await;
    let id = print(&server, 10_000).await;
    let log = log_of(&server, &id).await;
    assert_eq!(log["truncated"], true);
    assert_eq!(log["bytes_written"], 10_018);
    assert_eq!(log["bytes_kept"], 100);
    let entries = log["entries"].as_array().unwrap();
    let marker = entries.last().unwrap();
    assert_eq!(marker["stream"], "glia");
    assert_eq!(marker["text"], "\n[glia: log truncated after 100 bytes]\n");
    let kept: usize = entries
        .iter()
        .filter(|e| e["stream"] != "glia")
        .map(|e| e["text"].as_str().unwrap().len())
        .sum();
    assert_eq!(kept, 100);
    assert_eq!(entries[0]["text"], "out 1\n");
    // The guest was neither trapped nor slowed: it answered normally. The
    // log is counted once written (it is readable before, from the queue).
    let started = Instant::now();
    let samples = loop {
        let samples = metrics(&server).await;
        if sample(&samples, "glia_invocation_logs_total", &[]) == Some(1.0) {
            break samples;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        sample(&samples, "glia_invocation_logs_truncated_total", &[]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_kept_with_billing_off_and_discarded_when_disabled() {
    let server = server_with_printer(|c| c.billing.enabled = false).await;
    let id = print(&server, 0).await;
    let log = log_of(&server, &id).await;
    assert_eq!(log["bytes_written"], 18);
    server.stop().await;

    let server = server_with_printer(|c| c.telemetry.logs.enabled = false).await;
    let id = print(&server, 0).await;
    problem(
        server.get(&format!("/v1/invocations/{id}/logs")).await,
        404,
        "not-found",
    )
    .await;
    assert!(!server.data_dir.join("logs.db").exists());
}

// ---------------------------------------------------------------------------
// Traces over OTLP

/// What the test's OTLP collector received.
#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

/// An OTLP/HTTP (protobuf) collector on a free port.
async fn collector() -> (String, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Received::default()));
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let store = store.clone();
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let status = match (path.as_str(), body) {
                            ("/v1/traces", Ok(body)) => {
                                let request =
                                    ExportTraceServiceRequest::decode(body).expect("traces");
                                store.lock().unwrap().traces.push(request);
                                200
                            }
                            ("/v1/metrics", Ok(body)) => {
                                let request =
                                    ExportMetricsServiceRequest::decode(body).expect("metrics");
                                store.lock().unwrap().metrics.push(request);
                                200
                            }
                            _ => 404,
                        };
                        let reply = ExportTraceServiceResponse::default().encode_to_vec();
                        let response = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/x-protobuf")
                            .body(Full::new(Bytes::from(reply)))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (url, received)
}

/// Host log lines, as the global subscriber writes them.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn text(value: &Option<AnyValue>) -> Option<String> {
    match value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key == key)
        .and_then(|kv| text(&kv.value))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of trace `trace_id` received so far.
fn spans_of(received: &Mutex<Received>, trace_id: &str) -> Vec<Span> {
    received
        .lock()
        .unwrap()
        .traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .filter(|s| hex(&s.trace_id) == trace_id)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_trace_of_one_call_continues_the_callers() {
    // The subscriber is process-wide; this is the one test that installs it.
    static LINES: OnceLock<Lines> = OnceLock::new();
    let (url, received) = collector().await;
    let lines = LINES.get_or_init(Lines::default).clone();
    let telemetry = glia_host::config::TelemetryConfig {
        otlp_endpoint: url.clone(),
        export_interval_ms: 100,
        ..Default::default()
    };
    let guard = glia_host::telemetry::init_with_writer(&telemetry, move || lines.clone())
        .expect("the first subscriber of this process");
    std::mem::forget(guard);
    assert!(glia_host::telemetry::trace::exporting());

    let server = TestServer::start_with(|c| c.telemetry = telemetry.clone()).await;
    assert_eq!(
        server
            .upload_model("digits", DIGITS_ONNX, "")
            .await
            .status(),
        201
    );
    server
        .deploy_ok(
            "classify-digits",
            builtin("classify-digits"),
            "models=digits",
        )
        .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = server
        .client
        .post(server.url("/fn/classify-digits"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({ "pixels": vec![7; 64] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["glia-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();

    let expected = [
        "glia.invoke",
        "glia.admission",
        "glia.cold_start",
        "glia.instantiate",
        "glia.guest",
        "glia.nn.load",
        "glia.nn.compute",
        "glia.ledger.write",
    ];
    let started = Instant::now();
    let spans = loop {
        let spans = spans_of(&received, trace_id);
        if expected.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
            break spans;
        }
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "spans received: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let one = |name: &str| {
        let all: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(all.len(), 1, "one {name}");
        all[0]
    };

    // The root: a server span whose parent is the caller's span.
    let root = one("glia.invoke");
    assert_eq!(hex(&root.parent_span_id), caller_span);
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(
        attr(root, "glia.invocation_id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        attr(root, "glia.function").as_deref(),
        Some("classify-digits")
    );
    assert_eq!(attr(root, "glia.function.version").as_deref(), Some("1"));
    assert_eq!(attr(root, "glia.outcome").as_deref(), Some("ok"));
    assert_eq!(attr(root, "glia.cold_start").as_deref(), Some("true"));
    assert_eq!(attr(root, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(
        attr(root, "http.response.status_code").as_deref(),
        Some("200")
    );

    // The tree.
    for child in [
        "glia.admission",
        "glia.cold_start",
        "glia.instantiate",
        "glia.guest",
        "glia.ledger.write",
    ] {
        assert_eq!(
            one(child).parent_span_id,
            root.span_id,
            "{child} under the root"
        );
    }
    let guest = one("glia.guest");
    for nn in ["glia.nn.load", "glia.nn.compute"] {
        let span = one(nn);
        assert_eq!(span.parent_span_id, guest.span_id, "{nn} under the guest");
        assert_eq!(attr(span, "glia.nn.model").as_deref(), Some("digits"));
        assert_eq!(attr(span, "glia.nn.backend").as_deref(), Some("tract"));
        assert_eq!(attr(span, "glia.nn.device").as_deref(), Some("cpu"));
    }
    assert_eq!(
        attr(one("glia.ledger.write"), "glia.ledger.durability").as_deref(),
        Some("strict")
    );
    // Each child lies within the root.
    for span in &spans {
        assert!(
            span.start_time_unix_nano >= root.start_time_unix_nano,
            "{}",
            span.name
        );
        assert!(
            span.end_time_unix_nano <= root.end_time_unix_nano,
            "{}",
            span.name
        );
    }
    // Payloads are never recorded: no attribute holds the request's pixels
    // or anything long.
    for span in &spans {
        for kv in &span.attributes {
            let value = text(&kv.value).unwrap_or_default();
            assert!(
                value.len() < 100 && !value.contains("pixels"),
                "{}: {} = {value}",
                span.name,
                kv.key
            );
        }
    }
    let resource = received.lock().unwrap().traces[0].resource_spans[0]
        .resource
        .clone()
        .unwrap();
    assert!(
        resource
            .attributes
            .iter()
            .any(|kv| kv.key == "service.name" && text(&kv.value).as_deref() == Some("glia"))
    );

    // A warm call without a traceparent is a trace of its own, without a
    // cold start.
    let r = server
        .client
        .post(server.url("/fn/classify-digits"))
        .json(&json!({ "pixels": vec![7; 64] }))
        .send()
        .await
        .unwrap();
    let warm_id = r.headers()["glia-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let warm_root = loop {
        let root = received
            .lock()
            .unwrap()
            .traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .find(|s| attr(s, "glia.invocation_id").as_deref() == Some(warm_id.as_str()))
            .cloned();
        if let Some(root) = root {
            break root;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no warm trace");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(hex(&warm_root.trace_id), trace_id);
    assert!(warm_root.parent_span_id.is_empty());
    assert_eq!(
        attr(&warm_root, "glia.cold_start").as_deref(),
        Some("false")
    );

    // Metrics reach the collector too, as OTLP.
    let started = Instant::now();
    loop {
        let counted = received
            .lock()
            .unwrap()
            .metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == "glia.invocations")
            .filter_map(|m| match &m.data {
                Some(metric::Data::Sum(sum)) => Some(sum.clone()),
                _ => None,
            })
            .flat_map(|sum| sum.data_points)
            .filter(|p| {
                p.attributes.iter().any(|kv| {
                    kv.key == "function" && text(&kv.value).as_deref() == Some("classify-digits")
                }) && p
                    .attributes
                    .iter()
                    .any(|kv| kv.key == "outcome" && text(&kv.value).as_deref() == Some("ok"))
            })
            .filter_map(|p| match p.value {
                Some(number_data_point::Value::AsInt(v)) => Some(v),
                _ => None,
            })
            .max();
        if counted == Some(2) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "glia.invocations for classify-digits: {counted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Host log lines about a call carry its invocation id: a trap is logged
    // inside the call's span.
    server.deploy_ok("hostile", HOSTILE, "").await;
    let r = server.get("/fn/hostile/trap").await;
    assert_eq!(r.status(), 500);
    let trap_id = r.headers()["glia-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let logged = String::from_utf8_lossy(&LINES.get().unwrap().0.lock().unwrap()).into_owned();
    let line = logged
        .lines()
        .find(|l| l.contains("invocation failed") && l.contains(&trap_id))
        .unwrap_or_else(|| panic!("no log line for {trap_id} in\n{logged}"));
    assert!(
        line.contains(&format!("glia.invoke{{glia.invocation_id={trap_id}")),
        "{line}"
    );
}
