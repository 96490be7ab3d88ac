//! Client commands: talk to a running server's HTTP API.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use super::DEFAULT_URL;

#[derive(Debug, Args)]
pub struct Server {
    /// URL of the glia server.
    #[arg(long, env = "GLIA_URL", default_value = DEFAULT_URL, global = true)]
    url: String,
    /// API key. Without one, the admin key a local server wrote to
    /// `<data dir>/admin.key` is used when readable.
    #[arg(long, env = "GLIA_API_KEY", global = true, hide_env_values = true)]
    key: Option<String>,
    /// Data directory of a local server, to find its admin key.
    #[arg(long, env = "GLIA_DATA_DIR", default_value = crate::config::DEFAULT_DATA_DIR, global = true)]
    data_dir: PathBuf,
    /// Print the server's JSON instead of a readable summary.
    #[arg(long, global = true)]
    pub(super) json: bool,
}

impl Server {
    pub(super) fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }

    /// Whether to print raw JSON.
    pub(super) fn json(&self) -> bool {
        self.json
    }

    /// The key to send: `--key`/`GLIA_API_KEY`, else a local admin key.
    fn api_key(&self) -> Option<String> {
        self.key.clone().or_else(|| {
            std::fs::read_to_string(self.data_dir.join(crate::auth::ADMIN_KEY_FILE))
                .ok()
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
        })
    }

    /// An HTTP client that sends the key with every request.
    pub(super) fn http(&self) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = self.api_key() {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .context("the API key must be printable ASCII")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
            .build()
            .context("creating the HTTP client")
    }
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The component (.wasm) to upload.
    file: PathBuf,
    /// Function name; defaults to the file name without `.wasm`.
    #[arg(long, short)]
    name: Option<String>,
    /// Wall-clock limit per invocation.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Linear-memory limit per invocation.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Concurrent invocations allowed.
    #[arg(long)]
    max_concurrency: Option<u32>,
    /// Models the function may load with wasi:nn (comma-separated).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Let anyone call the function without a key.
    #[arg(long)]
    public: bool,
    /// An environment variable the function sees (repeat the flag; a value
    /// with a comma only through `PATCH /v1/functions/{name}`).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Hosts outgoing HTTP requests may go to: `host`, `host:port`,
    /// `*.domain[:port]` (comma-separated).
    #[arg(long = "allow-host", value_name = "HOST", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    #[command(flatten)]
    server: Server,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    server: Server,
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// `NAME` or `NAME@VERSION`.
    function: String,
    /// Path inside the function, e.g. `/predict?top=3`.
    #[arg(default_value = "/")]
    path: String,
    /// HTTP method (default GET, or POST when a body is given).
    #[arg(short = 'X', long)]
    method: Option<String>,
    /// Request body.
    #[arg(short, long, conflicts_with = "data_file")]
    data: Option<String>,
    /// Request body from a file (`-` for stdin).
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// Extra request header, `Name: value`; repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    #[command(flatten)]
    server: Server,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Function to delete.
    name: String,
    #[command(flatten)]
    server: Server,
}

/// Turns a non-success response into an error carrying the problem detail.
pub(super) async fn check(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let bytes = response.bytes().await.context("reading the response")?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(value);
    }
    match (value.get("title"), value.get("detail")) {
        (Some(title), Some(detail)) => bail!(
            "{} ({status}): {}",
            title.as_str().unwrap_or("error"),
            detail.as_str().unwrap_or("")
        ),
        _ => bail!("{status}: {}", String::from_utf8_lossy(&bytes)),
    }
}

pub(super) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Shows elapsed time on stderr while a long request runs (terminals only).
fn progress(label: String) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(tokio::spawn(async move {
        let started = Instant::now();
        let frames = ['|', '/', '-', '\\'];
        for i in 0usize.. {
            let frame = frames.get(i % frames.len()).copied().unwrap_or('|');
            eprint!("\r{frame} {label} {:.1}s", started.elapsed().as_secs_f64());
            let _ = std::io::stderr().flush();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}

fn stop_progress(handle: Option<tokio::task::JoinHandle<()>>) {
    if let Some(h) = handle {
        h.abort();
        eprint!("\r\x1b[2K");
    }
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let name = match args.name {
        Some(n) => n,
        None => args
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.replace('_', "-").to_lowercase())
            .context("give the function a name with --name")?,
    };
    let mut query = Vec::new();
    if let Some(v) = args.timeout_ms {
        query.push(("timeout_ms", v.to_string()));
    }
    if let Some(v) = args.memory_mb {
        query.push(("memory_mb", v.to_string()));
    }
    if let Some(v) = args.max_concurrency {
        query.push(("max_concurrency", v.to_string()));
    }
    if !args.models.is_empty() {
        query.push(("models", args.models.join(",")));
    }
    if args.public {
        query.push(("public", "true".to_string()));
    }
    if let Some(var) = args.env.iter().find(|v| v.contains(',')) {
        anyhow::bail!(
            "--env {var}: a value with a comma cannot go in an upload's query string; \
             set it with PATCH /v1/functions/{name} {{\"env\": [...]}}"
        );
    }
    if !args.env.is_empty() {
        query.push(("env", args.env.join(",")));
    }
    if !args.allowed_hosts.is_empty() {
        query.push(("allowed_hosts", args.allowed_hosts.join(",")));
    }
    let size = bytes.len();
    let spinner = progress(format!(
        "uploading {:.1} MiB and compiling `{name}`…",
        size as f64 / (1024.0 * 1024.0)
    ));
    let result = args
        .server
        .http()?
        .put(args.server.endpoint(&format!("/v1/functions/{name}")))
        .query(&query)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await;
    stop_progress(spinner);
    let value = check(result.context("uploading the component")?).await?;
    if args.server.json {
        print_json(&value);
        return Ok(());
    }
    let version = value.get("version").and_then(Value::as_u64).unwrap_or(0);
    let digest = value.get("digest").and_then(Value::as_str).unwrap_or("");
    let compile_ms = value.get("compile_ms").and_then(Value::as_u64).unwrap_or(0);
    let created = value
        .get("created")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let compiled = value
        .get("compiled")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if created {
        println!("deployed {name} version {version}");
    } else {
        println!("{name} version {version} already has these bytes; settings updated");
    }
    println!("  digest   sha256:{digest}");
    println!("  size     {size} bytes");
    if compiled {
        println!("  compiled in {compile_ms} ms");
    } else {
        println!("  compiled artifact reused");
    }
    println!(
        "  call it  curl {}",
        args.server.endpoint(&format!("/fn/{name}/"))
    );
    Ok(())
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let response = args
        .server
        .http()?
        .get(args.server.endpoint("/v1/functions"))
        .send()
        .await
        .context("contacting the server")?;
    let value = check(response).await?;
    if args.server.json {
        print_json(&value);
        return Ok(());
    }
    let functions = value
        .get("functions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if functions.is_empty() {
        println!("no functions deployed");
        return Ok(());
    }
    println!(
        "{:<24} {:>7} {:>8} {:>10} {:>9} {:>11}  DIGEST",
        "NAME", "VERSION", "VERSIONS", "TIMEOUT", "MEMORY", "CONCURRENCY"
    );
    for f in functions {
        let s = |k: &str| f.get(k).and_then(Value::as_u64).unwrap_or(0);
        let setting = |k: &str| {
            f.get("settings")
                .and_then(|s| s.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let digest = f.get("digest").and_then(Value::as_str).unwrap_or("");
        println!(
            "{:<24} {:>7} {:>8} {:>8}ms {:>6}MiB {:>11}  {}",
            f.get("name").and_then(Value::as_str).unwrap_or(""),
            s("latest_version"),
            s("versions"),
            setting("timeout_ms"),
            setting("memory_mb"),
            setting("max_concurrency"),
            digest.get(..12).unwrap_or(digest),
        );
    }
    Ok(())
}

pub async fn invoke(args: InvokeArgs) -> anyhow::Result<()> {
    let body = match (&args.data, &args.data_file) {
        (Some(d), _) => Some(d.clone().into_bytes()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
            Some(buf)
        }
        (None, Some(path)) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        (None, None) => None,
    };
    let method = match &args.method {
        Some(m) => reqwest::Method::from_bytes(m.to_uppercase().as_bytes())
            .with_context(|| format!("invalid method {m}"))?,
        None if body.is_some() => reqwest::Method::POST,
        None => reqwest::Method::GET,
    };
    let path = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let url = args
        .server
        .endpoint(&format!("/fn/{}{path}", args.function));
    let mut request = args.server.http()?.request(method, url);
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("header `{h}` must look like `Name: value`"))?;
        request = request.header(k.trim(), v.trim());
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.context("calling the function")?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.context("reading the response")?;
    let invocation = headers
        .get("glia-invocation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if args.server.json {
        let header_map: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value::String(v.to_str().unwrap_or("").to_string()),
                )
            })
            .collect();
        print_json(&serde_json::json!({
            "status": status.as_u16(),
            "invocation_id": invocation,
            "headers": header_map,
            "body": String::from_utf8_lossy(&bytes),
        }));
    } else {
        let mut out = std::io::stdout();
        out.write_all(&bytes).context("writing the body")?;
        if !bytes.ends_with(b"\n") && out.is_terminal() {
            println!();
        }
    }
    if !status.is_success() {
        bail!("{status} (invocation {invocation})");
    }
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let response = args
        .server
        .http()?
        .delete(
            args.server
                .endpoint(&format!("/v1/functions/{}", args.name)),
        )
        .send()
        .await
        .context("contacting the server")?;
    let value = check(response).await?;
    if args.server.json {
        print_json(&value);
    } else {
        println!("deleted {}", args.name);
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Start (inclusive): `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]Z` or ms since
    /// the epoch; default the start of this month (UTC).
    #[arg(long)]
    from: Option<String>,
    /// End (exclusive); default now.
    #[arg(long)]
    to: Option<String>,
    /// Only this function.
    #[arg(long)]
    function: Option<String>,
    /// Rows per `function`, `day`, `hour` or `outcome`.
    #[arg(long, default_value = "function")]
    group_by: String,
    /// Print CSV.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    #[command(flatten)]
    server: Server,
}

/// Micro-units as a decimal amount of the currency.
fn money(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

pub async fn usage(args: UsageArgs) -> anyhow::Result<()> {
    let mut query = vec![("group_by", args.group_by.clone())];
    for (key, value) in [
        ("from", &args.from),
        ("to", &args.to),
        ("function", &args.function),
    ] {
        if let Some(v) = value {
            query.push((key, v.clone()));
        }
    }
    let mut request = args
        .server
        .http()?
        .get(args.server.endpoint("/v1/usage"))
        .query(&query);
    if args.csv {
        request = request.header("accept", "text/csv");
    }
    let response = request.send().await.context("contacting the server")?;
    if args.csv {
        let status = response.status();
        let text = response.text().await.context("reading the response")?;
        if !status.is_success() {
            bail!("{status}: {text}");
        }
        print!("{text}");
        return Ok(());
    }
    let value = check(response).await?;
    if args.server.json {
        print_json(&value);
        return Ok(());
    }
    let currency = value.get("currency").and_then(Value::as_str).unwrap_or("");
    let ms = |key: &str| value.get(key).and_then(Value::as_i64).unwrap_or(0);
    println!(
        "usage from {} to {} (ms since the epoch), plan {}, costs in {currency}",
        ms("from_ms"),
        ms("to_ms"),
        value
            .get("plan_version")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    );
    println!(
        "{:<24} {:>8} {:>8} {:>7} {:>9} {:>6} {:>11} {:>11} {:>12} {:>14}",
        args.group_by.to_uppercase(),
        "CALLS",
        "OK",
        "FAILED",
        "REJECTED",
        "COLD",
        "BILLED",
        "GB-SECONDS",
        "INFERENCE",
        "COST"
    );
    let groups = value
        .get("groups")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = value.get("total").cloned().unwrap_or(Value::Null);
    for row in groups.iter().chain(std::iter::once(&total)) {
        let n = |k: &str| row.get(k).and_then(Value::as_u64).unwrap_or(0);
        let key = row.get("key").and_then(Value::as_str).unwrap_or("");
        let key = if key == "total" { "TOTAL" } else { key };
        println!(
            "{:<24} {:>8} {:>8} {:>7} {:>9} {:>6} {:>9}ms {:>11.6} {:>10}ms {:>14}",
            key,
            n("invocations"),
            n("ok"),
            n("failed"),
            n("rejected"),
            n("cold_starts"),
            n("billed_ms"),
            n("memory_mb_ms") as f64 / 1024.0 / 1000.0,
            (n("cpu_inference_us") + n("gpu_inference_us")) / 1000,
            money(n("cost_micros")),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::money;

    #[test]
    fn money_is_exact_decimal() {
        assert_eq!(money(0), "0.000000");
        assert_eq!(money(4), "0.000004");
        assert_eq!(money(12_345_678), "12.345678");
    }
}
