//! The `glia` binary as a user runs it: `glia serve` on a fresh data
//! directory, the client commands against it, and SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::{ADMIN_KEY, GLIA, Served, get_json as reqwest_get, glia, stdout};

/// `glia serve` on `data_dir`, with the admin key.
fn serve(data_dir: &Path) -> Served {
    serve_with(data_dir, Some(ADMIN_KEY)).0
}

/// `glia serve` on `data_dir`; returns it and what it printed before it was
/// ready.
fn serve_with(data_dir: &Path, admin_key: Option<&str>) -> (Served, Vec<String>) {
    let served = support::serve(
        [OsStr::new("--data-dir"), data_dir.as_os_str()],
        "warn",
        admin_key,
    );
    let printed = served.printed.clone();
    (served, printed)
}

#[test]
fn serve_deploy_invoke_list_delete_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve(&dir.path().join("data"));
    let url = served.url.clone();

    // The built-in hello answers on a fresh data directory.
    let out = glia(&["invoke", "hello", "/first?name=Ada"], &url);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("\"greeting\":\"Hello, Ada!\""),
        "{out:?}"
    );

    // So does the built-in model function, with its built-in model.
    let digit = r#"{"pixels":[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]}"#;
    let out = glia(&["invoke", "classify-digits", "-d", digit], &url);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["label"], 0, "{v}");

    // And the pretrained text model, on ONNX Runtime (fetched by the build).
    let out = glia(
        &[
            "invoke",
            "embed-text",
            "/similarity",
            "-d",
            r#"{"a":"A man is playing a guitar.","b":"Someone plays an instrument."}"#,
        ],
        &url,
    );
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let similarity = v["similarity"].as_f64().unwrap();
    assert!((similarity - 0.4856).abs() < 1e-3, "{v}");
    let out = glia(&["list", "--json"], &url);
    assert!(stdout(&out).contains("embed-text"), "{out:?}");
    let models = reqwest_get(&format!("{url}/v1/models/minilm"));
    assert_eq!(models["backend"], "ort", "{models}");

    // Every call so far is in the ledger: `glia usage` totals them.
    let out = glia(&["usage"], &url);
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in\n{table}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(row("hello"), "1", "{table}");
    assert_eq!(row("classify-digits"), "1", "{table}");
    assert_eq!(row("embed-text"), "1", "{table}");
    assert_eq!(row("TOTAL"), "3", "{table}");
    let out = glia(&["usage", "--csv", "--group-by", "outcome"], &url);
    assert!(stdout(&out).starts_with("key,invocations,"), "{out:?}");

    // Deploy a component file under a new name with a setting.
    let wasm = dir.path().join("greeter.wasm");
    std::fs::write(&wasm, glia_host::builtins::BUILTINS[0].wasm).unwrap();
    let out = glia(
        &[
            "deploy",
            wasm.to_str().unwrap(),
            "--timeout-ms",
            "5000",
            "--models",
            "digits",
        ],
        &url,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("deployed greeter version 1"),
        "{out:?}"
    );

    let out = glia(&["list", "--json"], &url);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let greeter = v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "greeter")
        .unwrap();
    assert_eq!(greeter["settings"]["models"], serde_json::json!(["digits"]));

    let out = glia(&["list"], &url);
    assert!(out.status.success(), "{out:?}");
    let listing = stdout(&out);
    assert!(listing.contains("greeter"), "{listing}");
    assert!(listing.contains("5000ms"), "{listing}");
    assert!(listing.contains("hello"), "{listing}");

    let out = glia(
        &["invoke", "greeter@1", "/cli", "-d", "payload", "--json"],
        &url,
    );
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], 200);
    let body: serde_json::Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["body"], "payload");
    assert_eq!(v["invocation_id"].as_str().map(str::len), Some(32));

    let out = glia(&["invoke", "ghost"], &url);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{out:?}"
    );

    let out = glia(&["delete", "greeter"], &url);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("deleted greeter"));

    // A bad upload is reported readably.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").unwrap();
    let out = glia(&["deploy", junk.to_str().unwrap()], &url);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("core module"),
        "{out:?}"
    );

    // SIGTERM: a clean, prompt exit.
    let pid = served.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_configuration_fails_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("platform.toml");
    for (text, named) in [
        ("[server]\nlisten_on = \"127.0.0.1:1\"\n", "listen_on"),
        ("[functions]\nmemory_mb = 100000\n", "memory_mb"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(GLIA)
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{err}");
    }
}

/// The ledger under `strict` durability loses nothing on `kill -9`: every
/// call whose response a client received has exactly one record after a
/// restart.
#[test]
fn strict_ledger_keeps_every_answered_call_across_sigkill() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut served = serve(&data);
    let url = served.url.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    rt.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let workers: Vec<_> = (0..16)
            .map(|w| {
                let (client, url) = (client.clone(), url.clone());
                let (received, stop) = (received.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let call = client
                            .post(format!("{url}/fn/hello/w{w}"))
                            .body(format!("call {i}"))
                            .send()
                            .await;
                        // Calls cut off by the kill have no response.
                        let Ok(response) = call else { continue };
                        let id = response
                            .headers()
                            .get("glia-invocation-id")
                            .map(|v| v.to_str().unwrap().to_string());
                        if response.status() == 200 && response.bytes().await.is_ok() {
                            received.lock().unwrap().push(id.expect("an invocation id"));
                        }
                    }
                })
            })
            .collect();
        // Kill it in the middle of the load.
        let started = Instant::now();
        while received.lock().unwrap().len() < 300 {
            assert!(started.elapsed() < Duration::from_secs(60), "too slow");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        served.child.kill().unwrap(); // SIGKILL
        served.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
    });
    drop(served);
    let received = received.lock().unwrap().clone();
    assert!(received.len() >= 300);

    // Every answered call has its record after a restart.
    let served = serve(&data);
    rt.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        for id in &received {
            let r = client
                .get(format!("{}/v1/invocations/{id}", served.url))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "no record for answered call {id}");
            let record: serde_json::Value = r.json().await.unwrap();
            assert_eq!(record["id"], id.as_str());
            assert_eq!(record["outcome"], "ok");
        }
    });
    drop(served);
    // And none twice, under either of the ledger's keys.
    let ledger = rusqlite::Connection::open(data.join("ledger.db")).unwrap();
    let (rows, distinct): (i64, i64) = ledger
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT id) FROM (
                 SELECT printf('%016x%016x', seq, id_low) AS id FROM invocations
                 UNION ALL
                 SELECT printf('%016x%016x', seq, id_low) FROM invocations_wide
                 UNION ALL
                 SELECT id FROM invocations_by_id)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(rows, distinct, "a record is duplicated");
    assert!(rows as usize >= received.len());
}

/// Without `GLIA_ADMIN_KEY`, the first start generates the admin key,
/// prints it once and writes it to a private file, where the command line
/// finds it; a wrong key is refused.
#[test]
fn the_first_start_prints_an_admin_key_the_cli_finds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (served, printed) = serve_with(&data, None);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap();
    let key = key.trim();
    assert!(key.starts_with("glia_"), "{key}");
    assert!(
        printed.iter().any(|l| l.contains(key)),
        "the key is printed: {printed:?}"
    );
    let local = |extra: &[&str]| {
        Command::new(GLIA)
            .args(["list", "--json", "--url", &served.url, "--data-dir"])
            .arg(&data)
            .args(extra)
            .env_remove("GLIA_API_KEY")
            .output()
            .unwrap()
    };
    let out = local(&[]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("hello"), "{out:?}");
    let out = local(&["--key", "glia_wrong"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid"),
        "{out:?}"
    );
    drop(served);
    let (served, printed) = serve_with(&data, None);
    assert!(
        !printed.iter().any(|l| l.contains(key)),
        "printed only once: {printed:?}"
    );
    drop(served);
}

/// `glia tenants` and `glia keys`: create a tenant and a key, use the key,
/// list, set a quota, revoke.
#[test]
fn tenants_and_keys_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&dir.path().join("data"));
    let url = served.url.clone();
    let out = glia(&["tenants", "create", "acme", "--json"], &url);
    assert!(out.status.success(), "{out:?}");
    let tenant: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tenant["name"], "acme");
    let out = glia(
        &["keys", "create", "acme", "--scopes", "deploy,invoke"],
        &url,
    );
    assert!(out.status.success(), "{out:?}");
    let key = stdout(&out).trim().to_string();
    assert!(key.starts_with("glia_"), "{key}");

    // The new key deploys into its tenant; the admin's listing is separate.
    let hello = dir.path().join("hello.wasm");
    std::fs::write(&hello, glia_host::builtins::BUILTINS[0].wasm).unwrap();
    let as_acme = |args: &[&str]| {
        Command::new(GLIA)
            .args(args)
            .args(["--url", &url, "--key", &key])
            .output()
            .unwrap()
    };
    let out = as_acme(&["deploy", hello.to_str().unwrap(), "--name", "acme-fn"]);
    assert!(out.status.success(), "{out:?}");
    let out = as_acme(&["invoke", "acme-fn", "/x"]);
    assert!(out.status.success(), "{out:?}");
    let out = glia(&["list", "--json"], &url);
    assert!(!stdout(&out).contains("acme-fn"), "{out:?}");

    let out = glia(&["tenants", "list"], &url);
    assert!(stdout(&out).contains("acme"), "{out:?}");
    let out = glia(&["tenants", "quotas", "acme", "max_functions=1"], &url);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("\"max_functions\": 1"), "{out:?}");
    let out = glia(&["keys", "list", "acme"], &url);
    let listing = stdout(&out);
    assert!(
        listing.contains("deploy,invoke") && !listing.contains(&key),
        "{listing}"
    );
    let id = listing
        .lines()
        .find(|l| l.starts_with("key_"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let out = glia(&["keys", "revoke", "acme", &id], &url);
    assert!(out.status.success(), "{out:?}");
    let out = as_acme(&["list"]);
    assert!(!out.status.success(), "a revoked key is refused: {out:?}");
    drop(served);
}
