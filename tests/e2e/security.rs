//! What a tenant tried as an attacker would, each as it was tried, and what
//! the platform answers now: request bodies of the wrong shape, a data
//! directory others could read, an admin key left behind after rotation.
//! (Models that read files are in `nn_probe.rs` and `torch.rs`, outbound
//! requests to internal addresses in `capabilities.rs`.)

use glia_e2e::{HOSTILE, TestServer};
use serde_json::json;

use crate::{json, problem};

/// `method` `path` with a raw JSON `body` and the admin key.
async fn send_json(
    server: &TestServer,
    method: &str,
    path: &str,
    body: &str,
) -> glia_e2e::reqwest::Response {
    server
        .client
        .request(method.parse().unwrap(), server.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// A JSON array is not an object read by position: `[1234, 64]` would have
/// set `timeout_ms` and `memory_mb`, `{"quotas": [5]}` a tenant's first
/// quota. Every body of the wrong shape is `400`, and nothing changes.
#[tokio::test]
async fn bodies_of_the_wrong_shape_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    server.deploy_ok("f", HOSTILE, "").await;
    let tenant = server.create_tenant("shapes").await;
    let before = json(server.get("/v1/functions/f").await, 200).await;
    let tenant_before = json(server.get(&format!("/v1/tenants/{tenant}")).await, 200).await;

    for body in [
        "[1234, 64]",
        "[]",
        "[null, 1234]",
        "5",
        "\"timeout_ms\"",
        "null",
    ] {
        let r = send_json(&server, "PATCH", "/v1/functions/f", body).await;
        problem(r, 400, "invalid-settings").await;
    }
    for body in [
        r#"{"quotas": [5]}"#,
        r#"[{"requests_per_second": 5}]"#,
        r#"{"quotas": [5, 6, 7]}"#,
    ] {
        let r = send_json(&server, "PATCH", &format!("/v1/tenants/{tenant}"), body).await;
        problem(r, 400, "invalid-request").await;
    }
    let r = send_json(&server, "POST", "/v1/tenants", r#"["other"]"#).await;
    problem(r, 400, "invalid-request").await;
    let r = send_json(
        &server,
        "POST",
        &format!("/v1/tenants/{tenant}/keys"),
        r#"[["invoke"]]"#,
    )
    .await;
    problem(r, 400, "invalid-request").await;

    let after = json(server.get("/v1/functions/f").await, 200).await;
    assert_eq!(after["settings"], before["settings"]);
    let tenant_after = json(server.get(&format!("/v1/tenants/{tenant}")).await, 200).await;
    assert_eq!(tenant_after["quotas"], tenant_before["quotas"]);
    let keys = json(server.get(&format!("/v1/tenants/{tenant}/keys")).await, 200).await;
    assert_eq!(keys["keys"], json!([]));
    let tenants = json(server.get("/v1/tenants").await, 200).await;
    assert!(
        !tenants.to_string().contains("\"other\""),
        "no tenant was created: {tenants}"
    );
    // The right shapes still work.
    let r = send_json(
        &server,
        "PATCH",
        "/v1/functions/f",
        r#"{"timeout_ms": 1234}"#,
    )
    .await;
    assert_eq!(json(r, 200).await["settings"]["timeout_ms"], 1234);
    let r = send_json(
        &server,
        "PATCH",
        &format!("/v1/tenants/{tenant}"),
        r#"{"quotas": {"requests_per_second": 5}}"#,
    )
    .await;
    assert_eq!(json(r, 200).await["quotas"]["requests_per_second"], 5);
    server.stop().await;
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every entry of `dir`, recursively, with its mode.
#[cfg(unix)]
fn modes(dir: &std::path::Path) -> Vec<(String, u32)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            all.push((name, mode(&path)));
        }
    }
    all.sort();
    all
}

/// The data directory holds every tenant's settings, key hashes, ledger and
/// logs: nobody but the server's user reads it. New entries are created
/// private, and what an earlier start left open is repaired.
#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_private_from_the_start_and_repaired() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    server.deploy_ok("f", HOSTILE, "").await;
    let r = server
        .upload_model("digits", glia_e2e::DIGITS_ONNX, "")
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(server.get("/fn/f/ok").await.status(), 200);
    let dir = server.data_dir.clone();
    assert_eq!(mode(&dir), 0o700);
    let all = modes(&dir);
    for name in ["glia.db", "ledger.db", "logs.db"] {
        assert!(all.iter().any(|(n, _)| n == name), "{name} in {all:?}");
    }
    for (name, m) in &all {
        let want = if dir.join(name).is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(*m, want, "{name}: {m:o} in {all:?}");
    }

    // Opened up behind the server's back, repaired on the next start.
    let open = |path: &std::path::Path, m: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap()
    };
    open(&dir, 0o755);
    for (name, _) in &all {
        let path = dir.join(name);
        open(&path, if path.is_dir() { 0o755 } else { 0o644 });
    }
    let server = server.restart().await;
    assert_eq!(mode(&dir), 0o700);
    for (name, m) in modes(&dir) {
        let want = if dir.join(&name).is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(m, want, "{name}: {m:o}");
    }
    assert_eq!(server.get("/fn/f/ok").await.status(), 200, "still serving");
    server.stop().await;
}

/// The generated admin key lives in `admin.key` for the command line; once
/// `GLIA_ADMIN_KEY` replaces it, the old key is revoked and its file goes.
#[tokio::test]
async fn a_rotated_admin_key_leaves_no_revoked_key_behind() {
    let server = TestServer::start_with(|c| c.auth.admin_key = None).await;
    let file = server.data_dir.join("admin.key");
    let generated = std::fs::read_to_string(&file).unwrap().trim().to_string();
    let with = |key: &str| glia_e2e::client_with_key(Some(key));
    let r = with(&generated)
        .get(server.url("/v1/tenants"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let rotated = "glia_rotated_admin_key_000000000000000000000000".to_string();
    let new = rotated.clone();
    let server = server
        .restart_with(move |c| c.auth.admin_key = Some(new))
        .await;
    assert!(
        !file.exists(),
        "the revoked key was left in {}",
        file.display()
    );
    let r = with(&generated)
        .get(server.url("/v1/tenants"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the old key is revoked");
    let r = with(&rotated)
        .get(server.url("/v1/tenants"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

/// A tenant uploading bytes another tenant already deployed learned that
/// someone had (`"compiled": false, "compile_ms": 0`), and a model with the
/// same bytes as another's showed the other's runs and last use. Each
/// tenant now sees its own: its first upload of the bytes reads as a
/// compile (and takes as long), the shared graph's numbers are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_learns_nothing_of_anothers_identical_uploads() {
    let server = TestServer::start().await;
    let a_id = server.create_tenant("a").await;
    let b_id = server.create_tenant("b").await;
    let a = glia_e2e::client_with_key(Some(
        &server
            .create_key(&a_id, &["deploy", "invoke", "read"])
            .await,
    ));
    let b = glia_e2e::client_with_key(Some(
        &server
            .create_key(&b_id, &["deploy", "invoke", "read"])
            .await,
    ));
    let put = |client: &glia_e2e::reqwest::Client, path: &str, bytes: &[u8]| {
        client.put(server.url(path)).body(bytes.to_vec()).send()
    };

    let first = json(put(&a, "/v1/functions/f", HOSTILE).await.unwrap(), 201).await;
    assert_eq!(first["compiled"], true);
    let compile_ms = first["compile_ms"].as_u64().unwrap();
    let started = std::time::Instant::now();
    let second = json(put(&b, "/v1/functions/g", HOSTILE).await.unwrap(), 201).await;
    let took = started.elapsed();
    assert_eq!(second["digest"], first["digest"]);
    assert_eq!(second["compiled"], true, "{second}");
    assert_eq!(second["compile_ms"], compile_ms, "{second}");
    assert!(
        took.as_millis() as u64 >= compile_ms,
        "took {took:?}, the compile {compile_ms} ms"
    );
    // Its own bytes again, under another name: no compile, as before.
    let again = json(put(&b, "/v1/functions/h", HOSTILE).await.unwrap(), 201).await;
    assert_eq!(again["compiled"], false, "{again}");

    // One model, two owners: B's view shows nothing of A's calls.
    let digits = glia_e2e::DIGITS_ONNX;
    assert_eq!(
        put(&b, "/v1/models/digits", digits).await.unwrap().status(),
        201
    );
    assert_eq!(
        put(&a, "/v1/models/digits", digits).await.unwrap().status(),
        201
    );
    let nn_probe = include_bytes!(concat!(env!("OUT_DIR"), "/fixtures/nn-probe.wasm"));
    assert_eq!(
        put(&a, "/v1/functions/probe?models=digits", nn_probe)
            .await
            .unwrap()
            .status(),
        201
    );
    let pixels = json!([{ "name": "pixels", "type": "fp32", "dims": [1, 64], "fill": 1.0 }]);
    for _ in 0..3 {
        let r = a
            .post(server.url("/fn/probe/"))
            .json(&json!({ "load": { "name": "digits" }, "inputs": pixels }))
            .send()
            .await
            .unwrap();
        assert_eq!(json(r, 200).await["ok"], true);
    }
    let seen_by = |client: &glia_e2e::reqwest::Client| {
        let request = client.get(server.url("/v1/models/digits")).send();
        async move { json(request.await.unwrap(), 200).await }
    };
    let a_view = seen_by(&a).await;
    let b_view = seen_by(&b).await;
    assert_eq!(a_view["resident"][0]["stats"]["runs"], 3, "{a_view}");
    assert_eq!(b_view["resident"][0]["stats"]["runs"], 0, "{b_view}");
    assert_eq!(b_view["resident"][0]["in_use"], false, "{b_view}");
    let a_idle = a_view["resident"][0]["idle_ms"].as_u64().unwrap();
    let b_idle = b_view["resident"][0]["idle_ms"].as_u64().unwrap();
    assert!(
        b_idle >= a_idle,
        "B's idle time is its own: {b_idle} vs A's {a_idle}"
    );
    server.stop().await;
}

/// Percentile `p` (0..=100) of `samples`, in milliseconds.
fn percentile(samples: &mut [f64], p: usize) -> f64 {
    samples.sort_by(f64::total_cmp);
    let ix = (samples.len() * p / 100).min(samples.len() - 1);
    samples[ix]
}

/// Times `n` sequential GETs of `url` with `client`, in milliseconds;
/// asserts each answered `status`.
async fn timed_gets(
    client: &glia_e2e::reqwest::Client,
    url: &str,
    n: usize,
    status: u16,
) -> Vec<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        let r = client.get(url).send().await.unwrap();
        let got = r.status().as_u16();
        let _ = r.bytes().await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(got, status, "{url}");
    }
    times
}

/// One tenant floods the platform with guests that spin until their
/// timeout; `/healthz`, another tenant's calls and its queue timeout stay
/// as they were. (Before, with guests and the server sharing threads and
/// guests served in arrival order, `/healthz` took seconds and the other
/// tenant's calls waited behind the flood.) The flood beyond the tenant's
/// concurrency quota is refused as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_spinning_guests_leaves_healthz_and_other_tenants_fast() {
    let server = TestServer::start_with(|c| {
        c.runtime.max_instances = 256;
        c.scheduler.max_in_flight = 256;
    })
    .await;
    let a_id = server.create_tenant("quiet").await;
    let b_id = server.create_tenant("flood").await;
    let a = glia_e2e::client_with_key(Some(&server.create_key(&a_id, &["deploy", "invoke"]).await));
    let b = glia_e2e::client_with_key(Some(&server.create_key(&b_id, &["deploy", "invoke"]).await));
    let deploy = |client: &glia_e2e::reqwest::Client, name: &str, query: &str| {
        client
            .put(server.url(&format!("/v1/functions/{name}?{query}")))
            .body(HOSTILE.to_vec())
            .send()
    };
    assert_eq!(deploy(&a, "quick", "").await.unwrap().status(), 201);
    assert_eq!(
        deploy(
            &a,
            "single",
            "max_concurrency=1&queue_timeout_ms=300&timeout_ms=5000"
        )
        .await
        .unwrap()
        .status(),
        201
    );
    for f in ["spin-1", "spin-2", "spin-3"] {
        let r = deploy(&b, f, "timeout_ms=6000&max_concurrency=64")
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let quick = server.url("/fn/quick/ok");
    let health = server.url("/healthz");
    timed_gets(&a, &quick, 5, 200).await;
    let mut idle = timed_gets(&a, &quick, 30, 200).await;
    let idle_p50 = percentile(&mut idle, 50);

    // The flood: 150 spinning calls, 50 past the tenant's default quota of
    // 100 calls in flight.
    let mut flood = Vec::new();
    for i in 0..150 {
        let url = server.url(&format!("/fn/spin-{}/loop", 1 + i % 3));
        let b = b.clone();
        flood.push(tokio::spawn(async move {
            b.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let r = a.get(&quick).send().await.unwrap();
        eprintln!(
            "DEBUG {:?} {:?} {:?}",
            started.elapsed(),
            r.headers().get("glia-usage"),
            r.headers().get("glia-billed-ms")
        );
    }
    let mut during = timed_gets(&a, &quick, 30, 200).await;
    let mut healthz = timed_gets(&server.client, &health, 40, 200).await;

    // A queue timeout of 300 ms is honoured to within tens of milliseconds.
    let holder = {
        let (a, url) = (a.clone(), server.url("/fn/single/sleep?ms=2000"));
        tokio::spawn(async move { a.get(url).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let r = a.get(server.url("/fn/single/ok")).send().await.unwrap();
    let waited = started.elapsed();
    problem(r, 429, "concurrency-limit").await;
    assert!(
        waited >= std::time::Duration::from_millis(290)
            && waited < std::time::Duration::from_millis(450),
        "a 300 ms queue timeout answered after {waited:?}"
    );
    assert_eq!(holder.await.unwrap(), 200);

    let during_p50 = percentile(&mut during, 50);
    let healthz_p99 = percentile(&mut healthz, 99);
    eprintln!(
        "no-op p50 idle {idle_p50:.1} ms, under the flood {during_p50:.1} ms; /healthz p99 under the flood {healthz_p99:.1} ms"
    );
    // Twice the idle latency plus an epoch (10 ms), with room for a debug
    // build sharing two cores with the rest of the suite.
    assert!(
        during_p50 <= 2.0 * idle_p50 + 10.0 + 60.0,
        "no-op p50 {during_p50:.1} ms under the flood, {idle_p50:.1} ms idle"
    );
    assert!(
        healthz_p99 < 150.0,
        "/healthz p99 {healthz_p99:.1} ms under the flood"
    );

    let mut statuses = Vec::new();
    for call in flood {
        statuses.push(call.await.unwrap());
    }
    let refused = statuses.iter().filter(|s| **s == 429).count();
    let timed_out = statuses.iter().filter(|s| **s == 504).count();
    assert_eq!(
        refused, 50,
        "the flood past the quota is the tenant's own 429s: {statuses:?}"
    );
    assert_eq!(timed_out, 100, "{statuses:?}");
    server.stop().await;
}

/// Sixteen concurrent calls, each holding 100 MiB while it waits (as a
/// model function holds its input during inference), of a function
/// allowed 128 MiB, within a 256 MiB platform budget. (Before, every call
/// took its memory at once: sixteen times 100 MiB.)
///
/// - A function whose footprint is not known yet: the calls start, and the
///   ones whose growth would pass the budget are stopped and answer `503
///   platform-memory` with `Retry-After`.
/// - Once its last call showed what it takes, calls wait in the queue for
///   room instead, and only the ones still waiting at their queue timeout
///   answer `503`.
///
/// Either way committed memory never passes the budget, everything is
/// given back, and the platform keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_memory_hungry_calls_stay_within_the_platform_budget() {
    const MIB: u64 = 1024 * 1024;
    let server = TestServer::start_with(|c| c.runtime.guest_memory_budget_mb = 256).await;
    server
        .deploy_ok(
            "hog",
            HOSTILE,
            "memory_mb=128&queue_timeout_ms=1000&timeout_ms=20000",
        )
        .await;
    let flood = || {
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let (client, url) = (
                    server.client.clone(),
                    server.url("/fn/hog/hold?mb=100&ms=400"),
                );
                tokio::spawn(async move {
                    let r = client.get(url).send().await.unwrap();
                    let retry = r.headers().get("retry-after").is_some();
                    (r.status().as_u16(), retry, r.text().await.unwrap())
                })
            })
            .collect();
        async move {
            let mut answers = Vec::new();
            for call in calls {
                answers.push(call.await.unwrap());
            }
            answers
        }
    };
    let check = |answers: &[(u16, bool, String)]| {
        let (mut held, mut refused) = (0, 0);
        for (status, retry, body) in answers {
            match status {
                200 => {
                    assert_eq!(body, "held 100");
                    held += 1;
                }
                503 => {
                    assert!(body.contains("platform-memory"), "{body}");
                    assert!(retry, "503 without Retry-After: {body}");
                    refused += 1;
                }
                other => panic!("{other} {body}"),
            }
        }
        (held, refused)
    };
    let budget = server.state.runtime.memory();
    let stats = budget.stats();
    let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);

    // Unknown footprint: stopped as they grow past the budget.
    let (held, refused) = check(&flood().await);
    assert!(held >= 2 && refused > 0, "{held} held, {refused} refused");
    assert!(read(&stats.refused_growths) > 0);
    assert!(
        read(&stats.peak_bytes) <= 256 * MIB,
        "peak {} MiB",
        read(&stats.peak_bytes) / MIB
    );
    assert!(read(&stats.peak_bytes) > 200 * MIB, "the budget was used");
    assert_eq!(budget.committed(), 0, "everything given back");

    // Known footprint (the last call's, about 100 MiB): two at a time, the
    // rest wait their turn; at 400 ms a turn, some are still waiting when
    // their second in the queue is over.
    let (held, refused) = check(&flood().await);
    assert!(held >= 4 && refused > 0, "{held} held, {refused} refused");
    assert!(read(&stats.refused_calls) > 0);
    assert!(
        read(&stats.waits) >= 10,
        "{} calls waited for memory",
        read(&stats.waits)
    );
    assert!(
        read(&stats.peak_bytes) <= 256 * MIB,
        "peak {} MiB",
        read(&stats.peak_bytes) / MIB
    );
    assert_eq!(budget.committed(), 0, "everything given back");

    let metrics = server.get("/metrics").await.text().await.unwrap();
    for family in [
        "glia_guest_memory_budget_bytes 268435456",
        "glia_guest_memory_committed_bytes 0",
        "glia_guest_memory_refusals_total{stage=\"growth\"}",
        "glia_guest_memory_refusals_total{stage=\"admission\"}",
    ] {
        assert!(metrics.contains(family), "{family} in /metrics");
    }
    // A small call fits again at once.
    assert_eq!(server.get("/fn/hog/ok").await.status(), 200);
    server.stop().await;
}

/// The same flood, measured as the kernel sees it: the process's peak
/// resident memory grows by no more than the budget (run in a child
/// process, so that no other test's memory counts).
#[test]
fn the_budget_bounds_the_process_resident_memory() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "security::resident_memory_child",
            "--ignored",
            "--nocapture",
        ])
        .env(RESIDENT_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{stderr}"
    );
}

const RESIDENT_CHILD: &str = "GLIA_RESIDENT_MEMORY_CHILD";

/// The process's peak resident memory, in MiB (`VmHWM`).
fn peak_resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

#[test]
#[ignore = "run by the_budget_bounds_the_process_resident_memory in a child process"]
fn resident_memory_child() {
    if std::env::var_os(RESIDENT_CHILD).is_none() {
        eprintln!(
            "skipped: runs only as the child of the_budget_bounds_the_process_resident_memory"
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = TestServer::start_with(|c| c.runtime.guest_memory_budget_mb = 256).await;
        server
            .deploy_ok(
                "hog",
                HOSTILE,
                "memory_mb=128&queue_timeout_ms=100&timeout_ms=20000",
            )
            .await;
        assert_eq!(server.get("/fn/hog/ok").await.status(), 200);
        let before = peak_resident_mib();
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let (client, url) = (
                    server.client.clone(),
                    server.url("/fn/hog/hold?mb=100&ms=300"),
                );
                tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
            })
            .collect();
        for call in calls {
            let status = call.await.unwrap();
            assert!(status == 200 || status == 503, "{status}");
        }
        for _ in 0..4 {
            let status = server.get("/fn/hog/oom").await.status().as_u16();
            assert_eq!(status, 500, "its own memory limit");
        }
        let after = peak_resident_mib();
        eprintln!(
            "peak resident memory {before} MiB before, {after} MiB after sixteen /hold calls and four /oom"
        );
        // The budget, and room for the platform's own buffers.
        assert!(after - before < 256 + 128, "{before} -> {after} MiB");
        server.stop().await;
    });
}

/// Compiling and reading uploads are what uploads cost the platform, and
/// both are bounded for the platform as a whole: three components uploaded
/// at once compile one after the other (`runtime.max_compilations = 1`),
/// and an upload that would take the bytes held past
/// `server.max_buffered_upload_mb` gets `503` with `Retry-After` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compilations_and_buffered_uploads_are_bounded() {
    use futures::StreamExt as _;
    const MIB: usize = 1024 * 1024;
    let server = TestServer::start_with(|c| {
        c.runtime.max_compilations = 1;
        c.server.max_upload_mb = 8;
        c.server.max_model_mb = 8;
        c.server.max_buffered_upload_mb = 10;
    })
    .await;
    let nn_probe = include_bytes!(concat!(env!("OUT_DIR"), "/fixtures/nn-probe.wasm"));
    let deploys: Vec<_> = [
        ("a", glia_e2e::hello()),
        ("b", HOSTILE),
        ("c", &nn_probe[..]),
    ]
    .into_iter()
    .map(|(name, wasm)| {
        let request = server
            .client
            .put(server.url(&format!("/v1/functions/{name}")))
            .body(wasm.to_vec());
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    })
    .collect();
    for deploy in deploys {
        assert_eq!(deploy.await.unwrap(), 201);
    }
    let stats = server.state.registry.stats();
    assert_eq!(stats.compiles.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(
        stats
            .peak_compiling
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "compiled one at a time"
    );

    // An upload of 6 MiB, sent slowly, holds its declared size.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    })
    .boxed();
    let slow = {
        let request = server
            .client
            .put(server.url("/v1/models/slow"))
            .header("content-length", (6 * MIB).to_string())
            .body(glia_e2e::reqwest::Body::wrap_stream(body));
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    };
    tx.send(vec![0; MIB]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!("glia_upload_buffered_bytes {}", 6 * MIB)),
        "the slow upload holds its declared size"
    );
    // Another 6 MiB does not fit: refused from its head, before its body
    // is read (a client that has sent its head and waits for an early
    // answer sees it).
    let head = format!(
        "PUT /v1/models/other HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-length: {}\r\n\r\n",
        glia_e2e::ADMIN_KEY,
        6 * MIB
    );
    let answer = raw_exchange(server.addr, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(
        answer.contains("urn:glia:problem:upload-capacity"),
        "{answer}"
    );
    // A small one still fits.
    let r = server.upload_model("small", &[0; 1024], "").await;
    problem(r, 400, "invalid-model").await;

    for _ in 0..5 {
        tx.send(vec![0; MIB]).await.unwrap();
    }
    drop(tx);
    assert_eq!(slow.await.unwrap(), 400, "junk, read whole and refused");
    assert_eq!(server.state.uploads.used(), 0, "given back");
    let r = server.upload_model("other", &vec![0; 6 * MIB], "").await;
    problem(r, 400, "invalid-model").await;
    server.stop().await;
}

/// Writes `request` on a fresh connection to `addr` and reads what comes
/// back until the server closes it or a second passes.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}
