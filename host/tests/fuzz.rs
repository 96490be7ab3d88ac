//! Property-based fuzzing of what a client can send: uploads (arbitrary
//! bytes and mutations of a real component, mutations of a real model) and
//! API requests (methods, paths, query strings, headers and bodies for
//! every route).
//!
//! Each property runs a bounded number of cases so that it fits in the
//! normal `cargo test`; `PROPTEST_CASES=N` runs N cases of each instead.
//! The requests go straight to the app (`App::handle`), no socket: what is
//! checked is glia's handling, not hyper's parsing (the request-head limits
//! that hyper enforces are tested end to end in `tests/e2e/limits.rs`).
//!
//! Properties: nothing panics; every answer is below 500 (none of these
//! inputs gives the platform a reason to fail), except a function's own
//! failure under settings a client chose (a 1 ms timeout, say); every
//! error the platform gives is well-formed problem+json.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

use std::sync::Arc;

use bytes::Bytes;
use glia_host::Platform;
use glia_host::api::App;
use glia_host::config::{Config, Durability, OnnxBackendChoice};
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::Value;

/// The built-in `hello` function: a real component to mutate and to call.
fn hello() -> &'static [u8] {
    glia_host::builtins::BUILTINS
        .iter()
        .find(|b| b.name == "hello")
        .map(|b| b.wasm)
        .expect("the built-in hello")
}

/// A runner for `default_cases` cases, or `PROPTEST_CASES`.
fn runner(default_cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default_cases);
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// The fixture's admin key; requests carry it unless they fuzz their own.
const ADMIN_KEY: &str = "glia_fuzz_admin_key_00000000000000000000000000";
const ADMIN_AUTHORIZATION: &str = "Bearer glia_fuzz_admin_key_00000000000000000000000000";

/// A platform in a temporary directory, on its own runtime.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    app: App,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self::on(OnnxBackendChoice::Tract)
    }

    fn on(backend: OnnxBackendChoice) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        config.server.install_builtins = false;
        config.runtime.max_instances = 16;
        config.scheduler.max_in_flight = 16;
        config.models.backend = backend;
        config.billing.durability = Durability::Batched;
        config.auth.admin_key = Some(ADMIN_KEY.to_string());
        // Hundreds of cases upload within a minute; the limit is tested
        // end to end.
        config.quotas.uploads_per_minute = 0;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let platform = runtime.block_on(Platform::open(config)).unwrap();
        let app = platform.app().clone();
        Self {
            runtime,
            app,
            _dir: dir,
        }
    }

    /// Sends a request, with the admin key unless it carries an
    /// `authorization` header of its own (fuzzed); returns status, content
    /// type and body.
    fn send(&self, mut request: Request<Full<Bytes>>) -> (u16, String, Bytes) {
        if !request.headers().contains_key(http::header::AUTHORIZATION) {
            request.headers_mut().insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_static(ADMIN_AUTHORIZATION),
            );
        }
        self.runtime.block_on(async {
            let response = self.app.handle(request).await;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = match response.into_body().collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => panic!("the response body failed: {e}"),
            };
            (status, content_type, body)
        })
    }

    fn deploy(&self, name: &str, wasm: &[u8]) -> (u16, String, Bytes) {
        self.send(
            Request::put(format!("/v1/functions/{name}"))
                .header("content-type", "application/wasm")
                .body(Full::new(Bytes::copy_from_slice(wasm)))
                .unwrap(),
        )
    }
}

/// Who may have answered a request, and so what the answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The platform alone: below 500, errors as glia problems.
    Platform,
    /// A function, or the platform for it: below 500, unless the function
    /// failed in a way its settings allow (`may_fail`: the request's
    /// function has settings a client chose, such as a 1 ms timeout).
    Function { may_fail: bool },
}

/// Failures a function may cause with settings a client chose: the guest's
/// failure, reported as such, not the platform's.
const GUEST_FAILURES: [&str; 4] = ["timeout", "memory-limit", "trap", "no-response"];

/// Checks one answer against what its `origin` may give.
fn check_answer(
    what: &str,
    (status, content_type, body): &(u16, String, Bytes),
    origin: Origin,
) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(body);
    let is_problem = content_type == "application/problem+json";
    if !is_problem {
        prop_assert!(*status < 500, "{what}: {status} {text}");
        if origin == Origin::Platform {
            prop_assert!(
                *status < 400,
                "{what}: {status} as {content_type:?}: {text}"
            );
            if content_type == "application/json" {
                prop_assert!(
                    serde_json::from_slice::<Value>(body).is_ok(),
                    "{what}: not JSON: {text}"
                );
            }
        }
        return Ok(());
    }
    let problem: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("{what}: problem is not JSON ({e}): {text}")))?;
    let kind = problem["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("urn:glia:problem:"));
    let Some(kind) = kind else {
        // A function's own problem (`about:blank` and the like).
        prop_assert!(origin != Origin::Platform, "{what}: {text}");
        prop_assert!(*status < 500, "{what}: {status} {text}");
        return Ok(());
    };
    let may_fail = origin == Origin::Function { may_fail: true } && GUEST_FAILURES.contains(&kind);
    prop_assert!(*status < 500 || may_fail, "{what}: {status} {text}");
    prop_assert_eq!(
        problem["status"].as_u64(),
        Some(u64::from(*status)),
        "{}",
        what
    );
    prop_assert!(problem["title"].is_string(), "{what}: {text}");
    prop_assert!(problem["detail"].is_string(), "{what}: {text}");
    Ok(())
}

// ---------------------------------------------------------------- uploads

/// One change to a component's bytes. Positions are drawn as indices into
/// whatever length the bytes have when the change is applied, so that every
/// part of the component (header, section headers, code, names) gets hit.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: Index,
        bit: u8,
    },
    SetByte {
        at: Index,
        value: u8,
    },
    Truncate {
        at: Index,
    },
    /// Copies `len` bytes from `from` over the bytes at `to`.
    Splice {
        from: Index,
        to: Index,
        len: usize,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Delete {
        at: Index,
        len: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<Index>;
    prop_oneof![
        4 => (at(), 0..8_u8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        2 => (at(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        1 => at().prop_map(|at| Mutation::Truncate { at }),
        1 => (at(), at(), 1..64_usize).prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        1 => (at(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (at(), 1..64_usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
    ]
}

/// Applies `mutations` to `original`.
fn mutate(original: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for m in mutations {
        let len = bytes.len();
        if len == 0 {
            break;
        }
        match m {
            Mutation::FlipBit { at, bit } => bytes[at.index(len)] ^= 1 << bit,
            Mutation::SetByte { at, value } => bytes[at.index(len)] = *value,
            Mutation::Truncate { at } => bytes.truncate(at.index(len)),
            Mutation::Splice { from, to, len: n } => {
                let (from, to) = (from.index(len), to.index(len));
                let n = (*n).min(len - from).min(len - to);
                let piece = bytes[from..from + n].to_vec();
                bytes[to..to + n].copy_from_slice(&piece);
            }
            Mutation::Insert { at, bytes: extra } => {
                let at = at.index(len + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            Mutation::Delete { at, len: n } => {
                let at = at.index(len);
                bytes.drain(at..(at + n).min(len));
            }
        }
    }
    bytes
}

/// Bytes an upload could be: anything, anything behind a component's
/// header, or a real component with a few mutations.
fn upload_bytes(component: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    const COMPONENT_HEADER: &[u8] = b"\0asm\x0d\0\x01\0";
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        2 => prop::collection::vec(any::<u8>(), 0..256).prop_map(|tail| {
            let mut bytes = COMPONENT_HEADER.to_vec();
            bytes.extend(tail);
            bytes
        }),
        6 => prop::collection::vec(mutation(), 1..4).prop_map(move |m| mutate(component, &m)),
    ]
}

#[test]
fn upload_validation_never_panics() {
    let component = hello();
    runner(5000)
        .run(&upload_bytes(component), |bytes| {
            // Ok, or one of the typed refusals; a panic fails the test.
            let _ = glia_host::registry::check_component(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_components_deploy_or_are_refused() {
    let fixture = Fixture::new();
    let component = hello();
    let original = fixture.deploy("original", component);
    assert_eq!(original.0, 201, "{:?}", original.2);
    let mutated = prop::collection::vec(mutation(), 1..4).prop_map(move |m| mutate(component, &m));
    // Each mutant that still validates is compiled: a second or so each in
    // a debug build, so few cases here.
    runner(12)
        .run(&mutated, |bytes| {
            let answer = fixture.deploy("fuzz", &bytes);
            check_answer("deploy", &answer, Origin::Platform)?;
            if answer.0 < 300 {
                // A mutation that still deploys still runs, or fails as a
                // guest may (a trap is the guest's 500, not the platform's).
                let call = fixture.send(Request::get("/fn/fuzz/x").body(Full::default()).unwrap());
                check_answer("call", &call, Origin::Function { may_fail: true })?;
            }
            Ok(())
        })
        .unwrap();
}

/// The built-in `digits` model (ONNX): a real model to mutate.
fn digits() -> bytes::Bytes {
    glia_host::builtins::BUILTIN_MODELS
        .iter()
        .find(|m| m.name == "digits")
        .and_then(|m| m.bytes())
        .expect("the built-in digits model")
}

/// Mutated models through `PUT /v1/models/{name}` on `backend`.
fn mutated_models_on(backend: OnnxBackendChoice) {
    let fixture = Fixture::on(backend);
    let model = digits();
    let upload = |bytes: &[u8]| {
        fixture.send(
            Request::put("/v1/models/fuzz")
                .body(Full::new(Bytes::copy_from_slice(bytes)))
                .unwrap(),
        )
    };
    assert_eq!(upload(&model).0, 201);
    let original = model.clone();
    let mutated = prop::collection::vec(mutation(), 1..4).prop_map(move |m| mutate(&original, &m));
    runner(300)
        .run(&mutated, |bytes| {
            check_answer("model upload", &upload(&bytes), Origin::Platform)
        })
        .unwrap();
}

#[test]
fn mutated_models_load_or_are_refused_by_tract() {
    mutated_models_on(OnnxBackendChoice::Tract);
}

/// ONNX Runtime is C++: a model that crashed it would take the process
/// down, so this matters as much as the panics tract turned into errors.
#[test]
fn mutated_models_load_or_are_refused_by_onnx_runtime() {
    mutated_models_on(OnnxBackendChoice::Ort);
}

/// Where a model may say its tensor data lives: the data directory's files,
/// traversals, absolute paths, and anything else.
fn location() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "glia-data/admin.key", "glia-data/glia.db", "glia-data/logs.db", "admin.key",
            "../admin.key", "../../../../etc/passwd", "/etc/passwd", "/proc/self/environ",
            "./glia-data/../glia-data/ledger.db", "glia-data\\admin.key", "", ".", "/",
            "weights.bin", "%2e%2e/admin.key", "file:///etc/passwd",
        ]).prop_map(str::to_string),
        1 => "\\PC{0,40}",
        1 => "[./a-z_-]{1,40}",
    ]
}

/// A model referring to external data at `location`, in one of the places a
/// tensor can be: a new graph's initializer, a constant node's attribute, a
/// subgraph, a sparse initializer, a model-local function; or added to the
/// real `digits` model (a second `graph` field merges into the first).
fn external_model(digits: Bytes) -> impl Strategy<Value = (String, Vec<u8>)> {
    use glia_host::nn::onnx::build::{add_model, bytes, float_tensor};
    (location(), 0..1_000_000u64, 1..64u64, 0..6u8).prop_map(
        move |(location, offset, len, place)| {
            let tensor = float_tensor("w", len, Some((&location, offset)));
            let graph_with = |field: u64, value: &[u8]| bytes(7, &bytes(field, value));
            let model = match place {
                0 => add_model(len, Some((&location, offset))),
                1 => graph_with(1, &bytes(5, &bytes(5, &tensor))),
                2 => graph_with(1, &bytes(5, &bytes(6, &bytes(5, &tensor)))),
                3 => graph_with(15, &bytes(1, &tensor)),
                4 => bytes(25, &bytes(7, &bytes(5, &bytes(5, &tensor)))),
                _ => [&digits[..], &graph_with(5, &tensor)].concat(),
            };
            (location, model)
        },
    )
}

/// Models whose tensors point at files through `PUT /v1/models/{name}` on
/// `backend`: every one refused as invalid, naming no path.
fn external_models_on(backend: OnnxBackendChoice) {
    let fixture = Fixture::on(backend);
    runner(300)
        .run(&external_model(digits()), |(location, model)| {
            let answer = fixture.send(
                Request::put("/v1/models/fuzz")
                    .body(Full::new(Bytes::from(model)))
                    .unwrap(),
            );
            check_answer("external model upload", &answer, Origin::Platform)?;
            let text = String::from_utf8_lossy(&answer.2);
            prop_assert_eq!(answer.0, 400, "{}", text);
            prop_assert!(text.contains("urn:glia:problem:invalid-model"), "{}", text);
            if location.len() > 3 {
                prop_assert!(!text.contains(&location), "names the path: {}", text);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn models_pointing_at_files_are_refused_by_tract() {
    external_models_on(OnnxBackendChoice::Tract);
}

#[test]
fn models_pointing_at_files_are_refused_by_onnx_runtime() {
    external_models_on(OnnxBackendChoice::Ort);
}

/// Names are never paths: whatever a client puts where a name goes, what
/// the platform stores lands in its own directories under a digest.
#[test]
fn names_never_become_paths() {
    let fixture = Fixture::new();
    let model = digits();
    let names = prop_oneof![
        2 => segment(),
        1 => "[./%a-z0-9\\\\-]{1,20}",
        1 => prop::sample::select(vec!["..%2f..%2fadmin.key", "a%2fb", "%2e%2e", "a%00b", "con", "x.onnx"])
            .prop_map(str::to_string),
    ];
    runner(200)
        .run(&names, |name| {
            for path in [
                format!("/v1/models/{name}"),
                format!("/v1/functions/{name}"),
            ] {
                let Ok(request) = Request::put(path.as_str()).body(Full::new(model.clone())) else {
                    continue;
                };
                let answer = fixture.send(request);
                check_answer(&path, &answer, Origin::Platform)?;
                if answer.0 < 300 {
                    prop_assert!(
                        name.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                        "{path} was accepted"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    // Everything the platform wrote is where it writes: its databases, the
    // blob directories, named by digest.
    let mut unexpected = Vec::new();
    let mut stack = vec![fixture._dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(fixture._dir.path())
                .unwrap()
                .to_string_lossy()
                .to_string();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            let digest = |f: &str| f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit());
            let expected = file.starts_with("glia.db")
                || file.starts_with("ledger.db")
                || file.starts_with("logs.db")
                || (relative.starts_with("models/sha256/") && digest(&file))
                || (relative.starts_with("sources/sha256/")
                    && digest(file.trim_end_matches(".wasm")))
                || (relative.starts_with("artifacts/") && digest(file.trim_end_matches(".cwasm")));
            if !expected {
                unexpected.push(relative);
            }
        }
    }
    assert!(unexpected.is_empty(), "{unexpected:?}");
}

// ----------------------------------------------------------- API requests

/// Path segments: route words, names (valid and not), traversal, escapes,
/// version pins, long and non-ASCII segments.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "v1", "functions", "models", "fn", "invocations", "usage", "healthz",
            "hello", "hello@1", "hello@2", "hello@0", "hello@x", "hello@", "@1", "@",
            "fuzz", "fuzz-2", "m", "Upper", "a_b", "-x", "..", ".", "", "%2e%2e", "%2F",
            "%", "%zz", "%00", "%ff", "a%20b", "0123456789abcdef0123456789abcdef",
            "%C3%BC", "%F0%9F%98%80", "tenants", "keys", "t", "default", "ten_0", "key_0",
        ]).prop_map(str::to_string),
        1 => "[a-z0-9-]{60,70}",
        1 => (1..2000_usize).prop_map(|n| "a".repeat(n)),
        1 => "\\PC{1,8}",
        2 => "[!$&'()*+,;=:@a-zA-Z0-9._~-]{0,12}",
    ]
}

/// A name in a route: valid or not, existing (`hello`) or not.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => prop::sample::select(vec!["hello", "fuzz", "fuzz", "fuzz-2", "m", "digits"]).prop_map(str::to_string),
        3 => segment(),
    ]
}

/// A path, most often in the shape of a route.
fn path() -> impl Strategy<Value = String> {
    let rest = || prop::collection::vec(segment(), 0..3).prop_map(|s| s.join("/"));
    let version = prop_oneof![
        Just(String::new()),
        (0..4_u64).prop_map(|v| format!("@{v}")),
        segment().prop_map(|s| format!("@{s}")),
    ];
    prop_oneof![
        3 => name().prop_map(|n| format!("/v1/functions/{n}")),
        2 => name().prop_map(|n| format!("/v1/models/{n}")),
        4 => (name(), version, rest()).prop_map(|(n, v, r)| format!("/fn/{n}{v}/{r}")),
        4 => rest().prop_map(|r| format!("/fn/hello/{r}")),
        1 => segment().prop_map(|id| format!("/v1/invocations/{id}")),
        2 => (segment(), rest()).prop_map(|(t, r)| format!("/v1/tenants/{t}/{r}")),
        2 => (segment(), name(), rest()).prop_map(|(t, n, r)| format!("/t/{t}/fn/{n}/{r}")),
        2 => prop::sample::select(vec![
            "/v1/functions", "/v1/functions/", "/v1/models", "/v1/models/", "/v1/usage",
            "/v1/tenants", "/v1/tenants/", "/v1/tenants/default", "/v1/tenants/default/keys",
            "/t/default/fn/hello/",
            "/healthz", "/", "//", "/fn", "/fn/", "/v1", "/v1/functions//",
        ]).prop_map(str::to_string),
        2 => (prop::sample::select(vec!["/", "", "/v1/", "/fn/", "//"]), rest())
            .prop_map(|(p, r)| format!("{p}{r}")),
    ]
}

fn query() -> impl Strategy<Value = Option<String>> {
    let key = prop_oneof![
        4 => prop::sample::select(vec![
            "timeout_ms", "memory_mb", "max_concurrency", "queue_timeout_ms",
            "idle_timeout_ms", "min_warm", "models", "env", "allowed_hosts",
            "encoding", "force", "from", "to", "function", "group_by", "name",
        ]).prop_map(str::to_string),
        1 => "[a-z_%]{0,10}",
    ];
    let value = prop_oneof![
        4 => prop::sample::select(vec![
            "", "0", "1", "64", "1000", "-1", "4096", "4097", "18446744073709551615",
            "18446744073709551616", "1e3", "true", "false", "onnx", "wasm", "%", "%2C",
            "a,b", ",,,", "A=1", "A=1,A=2", "1A=x", "A=%00", "example.com", "*.example.com:8443",
            "127.0.0.1:1", "[::1]:80", "*", "http://x", "2024-01-01", "2024-13-45",
            "9999-12-31T23:59:59Z", "1970-01-01T00:00Z", "-9223372036854775808",
            "9223372036854775807", "day", "hour", "outcome", "function", "hello", "Bad",
        ]).prop_map(str::to_string),
        1 => "\\PC{0,12}",
        1 => "[a-zA-Z0-9%=,&.:*-]{0,40}",
    ];
    prop::option::weighted(
        0.7,
        prop::collection::vec((key, prop::option::of(value)), 0..5).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => k,
                })
                .collect::<Vec<_>>()
                .join("&")
        }),
    )
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "GET", "PUT", "PATCH", "DELETE", "POST", "HEAD", "OPTIONS", "TRACE", "CONNECT",
        ]).prop_map(str::to_string),
        1 => "[A-Za-z!#$%&'*+.^_`|~-]{1,12}",
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        3 => prop::sample::select(vec![
            "content-type", "content-length", "accept", "host", "x-anything",
            "content-encoding", "glia-invocation-id", "authorization", "expect",
        ]).prop_map(str::to_string),
        1 => "[a-z0-9-]{1,20}",
    ];
    let value = prop_oneof![
        3 => prop::sample::select(vec![
            "application/json", "application/wasm", "text/csv", "*/*", "0", "1", "-1",
            "99999999999999999999", "abc", "", "gzip", "100-continue", "localhost:1",
            "text/csv, application/json;q=0.5",
        ]).prop_map(str::to_string),
        1 => "[ -~]{0,40}",
    ];
    prop::collection::vec((name, value), 0..6)
}

/// A JSON value of bounded size, with the settings' own keys likely.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::String),
        prop::sample::select(vec![
            "A=1",
            "digits",
            "example.com",
            "*.x.example:1",
            "",
            "Bad"
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let key = prop_oneof![
            3 => prop::sample::select(glia_host::registry::SETTING_NAMES.to_vec()).prop_map(str::to_string),
            1 => "\\PC{0,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        2 => prop::collection::vec(any::<u8>(), 0..128),
        4 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => (1..200_usize, prop::sample::select(vec!["[", "{", "{\"a\":", "[{\"env\":"]))
            .prop_map(|(n, open)| open.repeat(n).into_bytes()),
        1 => prop::collection::vec(mutation(), 0..2).prop_map(|m| mutate(hello(), &m)),
    ]
}

/// One request as a client could send it.
#[derive(Debug, Clone)]
struct Fuzzed {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn fuzzed() -> impl Strategy<Value = Fuzzed> {
    (method(), path(), query(), headers(), body()).prop_map(
        |(method, path, query, headers, body)| Fuzzed {
            method,
            path,
            query,
            headers,
            body,
        },
    )
}

impl Fuzzed {
    /// The request, or `None` where hyper would refuse it before glia saw
    /// it (a target or header that is not valid HTTP).
    fn request(&self) -> Option<Request<Full<Bytes>>> {
        let method = Method::from_bytes(self.method.as_bytes()).ok()?;
        let target = match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        };
        let uri: http::Uri = target.parse().ok()?;
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            let value = HeaderValue::from_str(value).ok()?;
            request = request.header(name, value);
        }
        request.body(Full::new(Bytes::from(self.body.clone()))).ok()
    }

    /// Who may answer: a call to a deployed function may be answered by
    /// it; `fuzz` runs with whatever settings earlier requests gave it.
    fn origin(&self) -> Origin {
        if self.path.starts_with("/fn/fuzz") {
            Origin::Function { may_fail: true }
        } else if self.path.starts_with("/fn/hello") {
            Origin::Function { may_fail: false }
        } else {
            Origin::Platform
        }
    }

    /// The deployed function this request may have changed (it is then put
    /// back as it was, so that the next request finds it).
    fn touches(&self) -> Option<&'static str> {
        if matches!(self.method.as_str(), "GET" | "HEAD") {
            return None;
        }
        DEPLOYED.iter().copied().find(|name| {
            self.path
                .strip_prefix("/v1/functions/")
                .is_some_and(|rest| rest.starts_with(name))
        })
    }
}

/// Functions the API fuzzing finds deployed: `hello` with its defaults, and
/// `fuzz`, whose settings the fuzzed requests change.
const DEPLOYED: [&str; 2] = ["hello", "fuzz"];

#[test]
fn every_api_request_gets_a_well_formed_answer() {
    let fixture = Arc::new(Fixture::new());
    for name in DEPLOYED {
        assert_eq!(fixture.deploy(name, hello()).0, 201);
    }
    runner(1000)
        .run(&fuzzed(), |fuzzed| {
            let Some(request) = fuzzed.request() else {
                return Ok(());
            };
            let answer = fixture.send(request);
            check_answer(&format!("{fuzzed:?}"), &answer, fuzzed.origin())?;
            if let Some(name) = fuzzed.touches() {
                let path = format!("/v1/functions/{name}");
                fixture.send(Request::delete(path).body(Full::default()).unwrap());
                prop_assert_eq!(fixture.deploy(name, hello()).0, 201);
            }
            Ok(())
        })
        .unwrap();
}
