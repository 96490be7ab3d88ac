//! Start-up, restart and shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use glia_e2e::{HOSTILE, TestServer, hello, test_config};
use glia_host::Platform;
use serde_json::Value;

#[tokio::test]
async fn restart_serves_everything_without_recompiling() {
    let server = TestServer::start().await;
    server.deploy_ok("hello", hello(), "timeout_ms=4321").await;
    server.deploy_ok("hostile", HOSTILE, "").await;
    server.deploy_ok("hostile", hello(), "").await;
    assert_eq!(
        server
            .state
            .registry
            .stats()
            .compiles
            .load(Ordering::Relaxed),
        2
    );

    let server = server.restart().await;
    let stats = server.state.registry.stats();
    assert_eq!(stats.compiles.load(Ordering::Relaxed), 0);

    let r = server.get("/fn/hello/after").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["glia-cold-start"], "true");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["path"], "/after");
    let r = server.get("/fn/hostile@1/ok").await;
    assert_eq!(r.text().await.unwrap(), "ok");
    let body: Value = server.get("/fn/hostile/").await.json().await.unwrap();
    assert_eq!(body["path"], "/");

    assert_eq!(
        stats.compiles.load(Ordering::Relaxed),
        0,
        "nothing recompiled"
    );
    // hello@1, hostile@1 and hostile@2 (which shares hello's bytes but is a
    // version of its own, warm or zero on its own).
    assert_eq!(
        stats.loads.load(Ordering::Relaxed),
        3,
        "three versions loaded"
    );
    let f: Value = server
        .get("/v1/functions/hello")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(f["settings"]["timeout_ms"], 4321, "settings persisted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_calls_finish() {
    let mut server = TestServer::start().await;
    server.deploy_ok("hostile", HOSTILE, "").await;
    assert_eq!(server.get("/fn/hostile/ok").await.status(), 200);

    let client = server.client.clone();
    let url = server.url("/fn/hostile/sleep?ms=1500");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let serve = server.begin_shutdown();

    let r = in_flight.await.unwrap().expect("in-flight call completes");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "slept 1500");
    tokio::time::timeout(Duration::from_secs(10), serve)
        .await
        .expect("server drains")
        .unwrap()
        .unwrap();
    // The listener is closed: new connections are refused.
    let fresh = glia_e2e::reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    assert!(fresh.get(server.url("/healthz")).send().await.is_err());
}

#[tokio::test]
async fn fresh_data_dir_gets_the_builtin_hello_once() {
    let server = TestServer::start_with(|c| c.server.install_builtins = true).await;
    let body: Value = server.get("/fn/hello/").await.json().await.unwrap();
    assert_eq!(body["greeting"], "Hello from glia!");
    let r = server
        .client
        .delete(server.url("/v1/functions/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Deleted built-ins stay deleted across restarts.
    let server = server.restart().await;
    assert_eq!(server.get("/fn/hello/").await.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn invalid_configuration_is_refused_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.functions.memory_mb = config.runtime.max_memory_mb * 2;
    let err = Platform::open(config).await.err().expect("refused");
    assert!(err.to_string().contains("memory_mb"), "{err}");
    assert!(!dir.path().join("glia.db").exists(), "nothing created");
}
