//! Control plane: deploy, versions, settings, list, get, delete.

use glia_e2e::{TestServer, hello};
use std::sync::atomic::Ordering;

use crate::{json, problem};

#[tokio::test]
async fn deploy_creates_versions_and_dedupes_identical_bytes() {
    let server = TestServer::start().await;
    let v1 = json(server.deploy("hello", hello(), "").await, 201).await;
    assert_eq!(v1["name"], "hello");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["size_bytes"], hello().len() as u64);
    assert_eq!(v1["digest"].as_str().map(str::len), Some(64));
    assert!(v1["compile_ms"].as_u64().is_some());
    assert_eq!(v1["compiled"], true);
    let compiles = server
        .state
        .registry
        .stats()
        .compiles
        .load(Ordering::Relaxed);
    assert_eq!(compiles, 1);

    // The same bytes again: same version, same digest, no recompile.
    let again = json(server.deploy("hello", hello(), "").await, 200).await;
    assert_eq!(again["version"], 1);
    assert_eq!(again["digest"], v1["digest"]);
    assert_eq!(again["compiled"], false);
    assert_eq!(again["created"], false);

    // The same bytes under another name: a new function, still no recompile.
    let other = json(server.deploy("hello-two", hello(), "").await, 201).await;
    assert_eq!(other["digest"], v1["digest"]);
    assert_eq!(other["compiled"], false);
    assert_eq!(other["compile_ms"], 0);
    let compiles = server
        .state
        .registry
        .stats()
        .compiles
        .load(Ordering::Relaxed);
    assert_eq!(compiles, 1, "identical bytes are compiled once");

    // Different bytes: version 2.
    let v2 = json(server.deploy("hello", glia_e2e::HOSTILE, "").await, 201).await;
    assert_eq!(v2["version"], 2);
    assert_ne!(v2["digest"], v1["digest"]);

    let f = json(server.get("/v1/functions/hello").await, 200).await;
    assert_eq!(f["latest_version"], 2);
    assert_eq!(f["versions"].as_array().map(Vec::len), Some(2));
    assert_eq!(f["versions"][0]["digest"], v1["digest"]);

    let list = json(server.get("/v1/functions").await, 200).await;
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, ["hello", "hello-two"]);
    server.stop().await;
}

#[tokio::test]
async fn settings_from_query_and_patch() {
    let server = TestServer::start().await;
    let d = json(
        server
            .deploy(
                "f",
                hello(),
                "timeout_ms=1500&memory_mb=32&max_concurrency=3",
            )
            .await,
        201,
    )
    .await;
    assert_eq!(d["settings"]["timeout_ms"], 1500);
    assert_eq!(d["settings"]["memory_mb"], 32);
    assert_eq!(d["settings"]["max_concurrency"], 3);

    let patched = json(
        server
            .client
            .patch(server.url("/v1/functions/f"))
            .json(&serde_json::json!({"timeout_ms": 2500, "memory_mb": null}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(patched["settings"]["timeout_ms"], 2500);
    assert_eq!(
        patched["settings"]["memory_mb"], 128,
        "null resets to the default"
    );
    assert_eq!(patched["settings"]["max_concurrency"], 3, "untouched");
    assert_eq!(patched["latest_version"], 1, "no new version");

    // A new upload keeps the settings it does not mention.
    let d2 = json(server.deploy("f", glia_e2e::HOSTILE, "").await, 201).await;
    assert_eq!(d2["settings"]["timeout_ms"], 2500);

    // Invalid settings are refused and change nothing.
    for body in [
        serde_json::json!({"memory_mb": 100000}),
        serde_json::json!({"timeout_ms": 0}),
        serde_json::json!({"colour": "blue"}),
    ] {
        let r = server
            .client
            .patch(server.url("/v1/functions/f"))
            .json(&body)
            .send()
            .await
            .unwrap();
        problem(r, 400, "invalid-settings").await;
    }
    problem(
        server.deploy("g", hello(), "timeout_ms=soon").await,
        400,
        "invalid-settings",
    )
    .await;
    problem(
        server.deploy("g", hello(), "memory_mb=99999").await,
        400,
        "invalid-settings",
    )
    .await;
    let f = json(server.get("/v1/functions/f").await, 200).await;
    assert_eq!(f["settings"]["timeout_ms"], 2500);
    assert_eq!(server.get("/v1/functions/g").await.status(), 404);

    let r = server
        .client
        .patch(server.url("/v1/functions/missing"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    problem(r, 404, "function-not-found").await;
    server.stop().await;
}

#[tokio::test]
async fn delete_removes_function_and_its_route() {
    let server = TestServer::start().await;
    server.deploy_ok("doomed", hello(), "").await;
    assert_eq!(server.get("/fn/doomed/").await.status(), 200);
    let r = server
        .client
        .delete(server.url("/v1/functions/doomed"))
        .send()
        .await
        .unwrap();
    let body = json(r, 200).await;
    assert_eq!(body["deleted"], true);
    problem(server.get("/fn/doomed/").await, 404, "function-not-found").await;
    problem(
        server.get("/v1/functions/doomed").await,
        404,
        "function-not-found",
    )
    .await;
    let r = server
        .client
        .delete(server.url("/v1/functions/doomed"))
        .send()
        .await
        .unwrap();
    problem(r, 404, "function-not-found").await;

    // Recreated under the same name, it starts again at version 1 and runs
    // the new component.
    let d = json(server.deploy("doomed", glia_e2e::HOSTILE, "").await, 201).await;
    assert_eq!(d["version"], 1);
    let r = server.get("/fn/doomed/ok").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let server = TestServer::start().await;
    problem(server.get("/nope").await, 404, "not-found").await;
    let r = server
        .client
        .post(server.url("/v1/functions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["allow"], "GET");
    problem(r, 405, "method-not-allowed").await;
    let health = server.get("/healthz").await;
    assert_eq!(health.status(), 200);
    server.stop().await;
}
