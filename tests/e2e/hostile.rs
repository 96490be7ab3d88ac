//! Hostile guests get their documented error while everyone else keeps being
//! served.

use std::time::{Duration, Instant};

use glia_e2e::{HOSTILE, TestServer, hello};
use serde_json::Value;

use crate::problem;

/// Calls `hello` in a loop until `stop` is set; returns how many succeeded.
async fn keep_calling_hello(
    server: &TestServer,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> usize {
    let mut ok = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let r = server.get("/fn/hello/alive").await;
        assert_eq!(r.status(), 200, "hello failed while a hostile guest ran");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["path"], "/alive");
        ok += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ok
}

/// Runs `hostile_call` while hello keeps being called; asserts hello
/// succeeded throughout.
async fn alongside_hello<F: Future<Output = ()>>(server: &TestServer, hostile_call: F) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = keep_calling_hello(server, stop.clone());
    let foreground = async {
        hostile_call.await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (ok, ()) = tokio::join!(background, foreground);
    assert!(ok >= 1, "hello was called while the hostile guest ran");
}

async fn server_with_hostile() -> TestServer {
    let server = TestServer::start().await;
    server.deploy_ok("hello", hello(), "").await;
    server
        .deploy_ok("hostile", HOSTILE, "timeout_ms=1000&memory_mb=64")
        .await;
    // Warm both so timings below measure the calls, not the first load.
    assert_eq!(server.get("/fn/hello/").await.status(), 200);
    assert_eq!(server.get("/fn/hostile/ok").await.status(), 200);
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_times_out_within_two_seconds() {
    let server = server_with_hostile().await;
    alongside_hello(&server, async {
        let started = Instant::now();
        let r = server.get("/fn/hostile/loop").await;
        let elapsed = started.elapsed();
        assert!(r.headers().contains_key("glia-invocation-id"));
        let p = problem(r, 504, "timeout").await;
        assert_eq!(p["timeout_ms"], 1000);
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
        assert!(elapsed >= Duration::from_millis(900), "took {elapsed:?}");
    })
    .await;
    // Two loops at once on a two-worker runtime: guests yield every epoch
    // tick, so hello still answers.
    alongside_hello(&server, async {
        let (a, b) = tokio::join!(
            server.get("/fn/hostile/loop"),
            server.get("/fn/hostile/loop")
        );
        problem(a, 504, "timeout").await;
        problem(b, 504, "timeout").await;
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_its_limit() {
    let server = server_with_hostile().await;
    alongside_hello(&server, async {
        let p = problem(server.get("/fn/hostile/oom").await, 500, "memory-limit").await;
        assert_eq!(p["memory_mb"], 64);
        assert!(p["detail"].as_str().unwrap().contains("64 MiB"), "{p}");
        assert!(p["invocation_id"].is_string());
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_is_a_stack_overflow_trap() {
    let server = server_with_hostile().await;
    alongside_hello(&server, async {
        let p = problem(server.get("/fn/hostile/recurse").await, 500, "trap").await;
        assert!(
            p["trap"].as_str().unwrap().contains("stack overflow"),
            "{p}"
        );
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_is_a_trap_with_its_reason() {
    let server = server_with_hostile().await;
    alongside_hello(&server, async {
        let p = problem(server.get("/fn/hostile/trap").await, 500, "trap").await;
        assert!(p["trap"].as_str().unwrap().contains("unreachable"), "{p}");
    })
    .await;
    // The next call on the same function is unaffected: fresh store.
    let r = server.get("/fn/hostile/ok").await;
    assert_eq!(r.text().await.unwrap(), "ok");
    server.stop().await;
}

/// Every call starts from the component's initial memory, whichever way
/// the pool resets a slot: in place for the pages a call dirtied (up to
/// 1 MiB with `PAGEMAP_SCAN`, the first 128 KiB without) or by
/// decommitting the rest. The guest counts itself in a static and checks
/// that memory it grows is all zeros, then dirties it for the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_sees_fresh_memory() {
    let server = server_with_hostile().await;
    // Small enough to be reset in place, and larger than what is kept.
    for kb in [64, 4096, 64, 4096] {
        for _ in 0..5 {
            let r = server.get(&format!("/fn/hostile/state?kb={kb}")).await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), "calls=1 dirty=0", "kb={kb}");
        }
    }
    // Concurrent calls share the pool; none sees another's state.
    let calls = (0..16).map(|_| async {
        let r = server.get("/fn/hostile/state?kb=1024").await;
        r.text().await.unwrap()
    });
    for body in futures::future::join_all(calls).await {
        assert_eq!(body, "calls=1 dirty=0");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_response_streams_intact() {
    let server = TestServer::start().await;
    server.deploy_ok("hello", hello(), "").await;
    server
        .deploy_ok("hostile", HOSTILE, "timeout_ms=20000")
        .await;
    alongside_hello(&server, async {
        let r = server.get("/fn/hostile/big?mb=64").await;
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        assert_eq!(body.len(), 64 * 1024 * 1024);
        let wrong = body
            .iter()
            .enumerate()
            .position(|(i, b)| *b != (i % 251) as u8);
        assert_eq!(wrong, None, "pattern mismatch");
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn no_ambient_authority() {
    let server = TestServer::start().await;
    server.deploy_ok("hostile", HOSTILE, "").await;
    let report = server
        .get("/fn/hostile/ambient")
        .await
        .text()
        .await
        .unwrap();
    assert!(report.contains("env=0\n"), "{report}");
    assert!(report.contains("preopens=0\n"), "{report}");
    assert!(report.contains("fs=denied"), "{report}");
    assert!(report.contains("tcp=denied"), "{report}");

    let outbound = server
        .get("/fn/hostile/outbound")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(outbound, "error ErrorCode::HttpRequestDenied");
    server.stop().await;
}
