//! Data plane: calling functions.

use glia_e2e::{HOSTILE, TestServer, hello};
use serde_json::Value;

use crate::{json, problem};

#[tokio::test]
async fn hello_sees_method_path_query_and_body() {
    let server = TestServer::start().await;
    server.deploy_ok("hello", hello(), "").await;
    let r = server
        .client
        .post(server.url("/fn/hello/some/path?name=Ada&x=1"))
        .body("hi there")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["glia-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["greeting"], "Hello, Ada!");
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/some/path");
    assert_eq!(body["query"], "name=Ada&x=1");
    assert_eq!(body["body"], "hi there");
    assert_eq!(body["body_bytes"], 8);

    // No trailing path: the guest sees `/`.
    let body: Value = server.get("/fn/hello").await.json().await.unwrap();
    assert_eq!(body["path"], "/");
    assert_eq!(body["greeting"], "Hello from glia!");
    server.stop().await;
}

#[tokio::test]
async fn cold_then_warm_and_unique_invocation_ids() {
    let server = TestServer::start().await;
    server.deploy_ok("hello", hello(), "").await;
    let first = server.get("/fn/hello/").await;
    assert_eq!(first.headers()["glia-cold-start"], "true");
    assert!(first.headers().contains_key("glia-cold-start-us"));
    let a = first.headers()["glia-invocation-id"].clone();
    let second = server.get("/fn/hello/").await;
    assert_eq!(second.headers()["glia-cold-start"], "false");
    assert!(!second.headers().contains_key("glia-cold-start-us"));
    assert_ne!(a, second.headers()["glia-invocation-id"]);
    server.stop().await;
}

#[tokio::test]
async fn pinned_versions() {
    let server = TestServer::start().await;
    server.deploy_ok("f", hello(), "").await;
    server.deploy_ok("f", HOSTILE, "").await;
    // Latest is the hostile fixture.
    let r = server.get("/fn/f/ok").await;
    assert_eq!(r.text().await.unwrap(), "ok");
    // @1 is hello.
    let body: Value = server.get("/fn/f@1/ok").await.json().await.unwrap();
    assert_eq!(body["path"], "/ok");
    let r = server.get("/fn/f@2/ok").await;
    assert_eq!(r.text().await.unwrap(), "ok");
    let p = problem(server.get("/fn/f@3/").await, 404, "function-not-found").await;
    assert!(p["detail"].as_str().unwrap().contains("version 3"));
    problem(server.get("/fn/f@latest/").await, 400, "invalid-request").await;
    server.stop().await;
}

#[tokio::test]
async fn unknown_function_is_404_with_invocation_id() {
    let server = TestServer::start().await;
    let r = server.get("/fn/ghost/").await;
    let id = r.headers()["glia-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let p = problem(r, 404, "function-not-found").await;
    assert_eq!(p["invocation_id"], id);
    server.stop().await;
}

#[tokio::test]
async fn request_bodies_stream_in_and_out() {
    let server = TestServer::start().await;
    server.deploy_ok("h", HOSTILE, "").await;
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    let r = server
        .client
        .post(server.url("/fn/h/echo"))
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.unwrap();
    assert!(got == payload, "echoed body differs ({} bytes)", got.len());
    server.stop().await;
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let server = TestServer::start().await;
    server.deploy_ok("hello", hello(), "").await;
    let client = glia_e2e::reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .get(server.url("/fn/hello/h2"))
        .bearer_auth(glia_e2e::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), glia_e2e::reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["path"], "/h2");
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(json(health, 200).await["status"], "ok");
    server.stop().await;
}

#[tokio::test]
async fn many_concurrent_calls() {
    let server = TestServer::start().await;
    server.deploy_ok("hello", hello(), "").await;
    let calls = (0..64).map(|i| {
        let client = server.client.clone();
        let url = server.url(&format!("/fn/hello/n?name=c{i}"));
        async move {
            let body: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            assert_eq!(body["greeting"], format!("Hello, c{i}!"));
        }
    });
    futures::future::join_all(calls).await;
    server.stop().await;
}
