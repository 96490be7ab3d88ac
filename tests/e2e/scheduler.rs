//! Scale to zero, minimum warm, single-flight cold starts and admission.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use glia_e2e::{HOSTILE, TestServer, hello};
use serde_json::Value;

use crate::{json, problem};

async fn status(server: &TestServer, name: &str) -> Value {
    json(server.get(&format!("/v1/functions/{name}")).await, 200).await
}

async fn cold(server: &TestServer, path: &str) -> bool {
    let r = server.get(path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.headers()["glia-cold-start"] == "true"
}

/// Polls until the function reports `state`, or panics after `within`.
async fn wait_for_state(server: &TestServer, name: &str, state: &str, within: Duration) {
    let started = Instant::now();
    loop {
        if status(server, name).await["state"] == state {
            return;
        }
        assert!(started.elapsed() < within, "{name} never became {state}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn idle_functions_scale_to_zero_and_come_back() {
    let server = TestServer::start_with(|c| c.scheduler.reap_interval_ms = 50).await;
    server
        .deploy_ok("hello", hello(), "idle_timeout_ms=300")
        .await;
    let s = status(&server, "hello").await;
    assert_eq!(s["state"], "zero", "deployed functions start at zero");
    assert_eq!(s["cold_starts"], 0);
    assert!(s["last_call_ms"].is_null());

    assert!(cold(&server, "/fn/hello/").await);
    assert!(!cold(&server, "/fn/hello/").await);
    let s = status(&server, "hello").await;
    assert_eq!(s["state"], "warm");
    assert_eq!(s["versions"][0]["state"], "warm");
    assert_eq!(s["cold_starts"], 1);
    assert!(s["last_call_ms"].as_i64().unwrap() > 0);
    assert_eq!(s["in_flight"], 0);

    wait_for_state(&server, "hello", "zero", Duration::from_secs(3)).await;
    assert_eq!(server.state.scheduler.warm_count(), 0, "memory released");
    assert!(
        cold(&server, "/fn/hello/").await,
        "a call after zero is cold"
    );
    assert_eq!(status(&server, "hello").await["cold_starts"], 2);
    server.stop().await;
}

#[tokio::test]
async fn min_warm_never_goes_to_zero() {
    let server = TestServer::start_with(|c| c.scheduler.reap_interval_ms = 50).await;
    server
        .deploy_ok("kept", hello(), "idle_timeout_ms=100&min_warm=1")
        .await;
    assert_eq!(
        status(&server, "kept").await["state"],
        "warm",
        "warmed at deploy"
    );
    assert!(
        !cold(&server, "/fn/kept/").await,
        "first call is already warm"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(status(&server, "kept").await["state"], "warm");
    assert!(!cold(&server, "/fn/kept/").await);

    // min_warm also survives a restart: loaded at start-up.
    let server = server.restart().await;
    assert_eq!(status(&server, "kept").await["state"], "warm");
    assert!(!cold(&server, "/fn/kept/").await);

    // Back to the default (0): it goes to zero like any other.
    let r = server
        .client
        .patch(server.url("/v1/functions/kept"))
        .json(&serde_json::json!({"min_warm": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for_state(&server, "kept", "zero", Duration::from_secs(3)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_simultaneous_cold_calls_load_once() {
    let server = TestServer::start().await;
    server.deploy_ok("burst", HOSTILE, "").await;
    let loads_before = server.state.registry.stats().loads.load(Ordering::Relaxed);
    let calls = (0..100).map(|_| {
        let client = server.client.clone();
        let url = server.url("/fn/burst/ok");
        async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["glia-cold-start"] == "true"
        }
    });
    let colds = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(|c| *c)
        .count();
    assert_eq!(colds, 1, "exactly one call reports the cold start");
    let loads = server.state.registry.stats().loads.load(Ordering::Relaxed) - loads_before;
    assert_eq!(loads, 1, "the artifact was loaded once");
    assert_eq!(status(&server, "burst").await["cold_starts"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_is_429_with_retry_after_while_admitted_calls_succeed() {
    let server = TestServer::start_with(|c| c.scheduler.max_queue = 1).await;
    server
        .deploy_ok("narrow", HOSTILE, "max_concurrency=1&queue_timeout_ms=500")
        .await;
    assert_eq!(server.get("/fn/narrow/ok").await.status(), 200);

    // A: admitted, sleeps 1.5 s.
    let client = server.client.clone();
    let url = server.url("/fn/narrow/sleep?ms=1500");
    let admitted = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // B: waits in the queue, then gives up after its 500 ms.
    let client = server.client.clone();
    let url = server.url("/fn/narrow/ok");
    let queued = tokio::spawn(async move {
        let started = Instant::now();
        (client.get(url).send().await.unwrap(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = status(&server, "narrow").await;
    assert_eq!(s["in_flight"], 1);
    assert_eq!(s["queued"], 1);

    // C: the queue (max 1) is full: refused at once.
    let started = Instant::now();
    let r = server.get("/fn/narrow/ok").await;
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(r.headers()["retry-after"], "1");
    let p = problem(r, 429, "concurrency-limit").await;
    assert!(
        p["detail"].as_str().unwrap().contains("queue is full"),
        "{p}"
    );

    let (r, waited) = queued.await.unwrap();
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(r.headers().contains_key("glia-invocation-id"));
    problem(r, 429, "concurrency-limit").await;

    let r = admitted.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "slept 1500");
    // Free again.
    assert_eq!(server.get("/fn/narrow/ok").await.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_limit_is_503() {
    let server = TestServer::start_with(|c| c.scheduler.max_in_flight = 1).await;
    server.deploy_ok("slow", HOSTILE, "").await;
    server
        .deploy_ok("other", hello(), "queue_timeout_ms=300")
        .await;
    let client = server.client.clone();
    let url = server.url("/fn/slow/sleep?ms=1200");
    let busy = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = server.get("/fn/other/").await;
    assert_eq!(r.headers()["retry-after"], "1");
    let p = problem(r, 503, "platform-saturated").await;
    assert_eq!(p["max_in_flight"], 1);
    assert_eq!(busy.await.unwrap().status(), 200);
    assert_eq!(server.get("/fn/other/").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn an_unreservable_pool_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = glia_e2e::test_config(dir.path());
    config.runtime.max_instances = 100_000;
    config.runtime.max_memory_mb = 4096;
    config.scheduler.max_in_flight = 1000;
    let err = glia_host::Platform::open(config)
        .await
        .err()
        .expect("the reservation cannot fit the address space");
    let text = err.to_string();
    assert!(text.contains("pooling allocator"), "{text}");
    assert!(text.contains("100000 instances"), "{text}");
    assert!(text.contains("runtime.max_instances"), "{text}");
}
