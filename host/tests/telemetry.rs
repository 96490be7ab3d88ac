//! Telemetry as a user of the `glia` binary sees it: JSON log lines that
//! carry the invocation id, `/metrics`, `glia logs`, and a telemetry
//! configuration refused before the server listens.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::{GLIA, Served, get_text as get, glia};

/// `glia serve` on a data directory in `dir`, with `config` as its
/// configuration file.
fn serve(dir: &std::path::Path, config: &str) -> Served {
    let config_path = dir.join("platform.toml");
    std::fs::write(&config_path, config).unwrap();
    let data = dir.join("data");
    support::serve(
        [
            std::ffi::OsStr::new("--data-dir"),
            data.as_os_str(),
            std::ffi::OsStr::new("--config"),
            config_path.as_os_str(),
        ],
        "warn,glia_host=debug",
        Some(support::ADMIN_KEY),
    )
}

#[test]
fn json_logs_metrics_and_glia_logs() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(
        dir.path(),
        "[server]\ninstall_builtins = false\n[telemetry]\nlog_format = \"json\"\n",
    );
    let url = served.url.clone();
    let wasm = dir.path().join("hello.wasm");
    std::fs::write(&wasm, glia_host::builtins::BUILTINS[0].wasm).unwrap();
    let out = glia(&["deploy", wasm.to_str().unwrap()], &url);
    assert!(out.status.success(), "{out:?}");

    let out = glia(&["invoke", "hello", "/x", "--json"], &url);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["invocation_id"].as_str().unwrap().to_string();

    // The call's log line is JSON and carries its invocation id in its span.
    let started = Instant::now();
    let line = loop {
        let found = served
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["span"]["glia.invocation_id"] == id.as_str());
        if let Some(line) = found {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no JSON line for {id}: {:?}",
            served.lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(line["span"]["name"], "glia.invoke");
    assert_eq!(line["span"]["glia.function"], "hello");
    assert!(
        line["level"].is_string() && line["timestamp"].is_string(),
        "{line}"
    );

    // /metrics counts it.
    let metrics = get(&format!("{url}/metrics"));
    assert!(
        metrics.lines().any(|l| l
            == "glia_invocations_total{tenant=\"default\",function=\"hello\",outcome=\"ok\"} 1"),
        "{metrics}"
    );

    // `glia logs`: hello writes nothing, so its call has an empty log.
    let out = glia(&["logs", "--invocation", &id], &url);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("==> "), "{text}");
    assert!(text.contains(&format!("hello@1 {id}")), "{text}");
    let out = glia(&["logs", "hello"], &url);
    assert!(out.status.success(), "{out:?}");
    let out = glia(&["logs", "--invocation", "nope"], &url);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No logs"),
        "{out:?}"
    );
}

#[test]
fn bad_telemetry_configuration_fails_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("platform.toml");
    for (text, named) in [
        (
            "[telemetry]\notlp_endpoint = \"https://collector:4318\"\n",
            "telemetry.otlp_endpoint",
        ),
        ("[telemetry]\nlog_format = \"xml\"\n", "xml"),
        (
            "[telemetry.logs]\nretention_hours = 0\n",
            "telemetry.logs.retention_hours",
        ),
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
