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
