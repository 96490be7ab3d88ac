//! Billing: every call is metered and priced under the plan, recorded once
//! in the ledger, visible per call and in usage totals.

use std::time::Duration;

use glia_e2e::{DIGITS_ONNX, HOSTILE, TestServer, builtin, hello};
use glia_host::billing::Outcome;
use glia_host::config::{Durability, PricePlan};
use serde_json::{Value, json};

use crate::{json, problem};

/// A plan whose components are easy to predict: memory costs exactly
/// `memory_mb × billed_ms` nano-units (1024 µ per GB-second).
fn plan() -> PricePlan {
    PricePlan {
        version: 42,
        per_request: 100,
        per_gb_second: 1024,
        per_cpu_second: 3000,
        per_cpu_inference_second: 1000,
        per_gpu_second: 5000,
        per_cold_start: 7,
        per_model_load: 3,
    }
}

async fn server_with_plan(tweak: impl FnOnce(&mut glia_host::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.billing.plan = plan();
        tweak(c);
    })
    .await
}

fn header(r: &glia_e2e::reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

/// The cost the plan gives for a record's usage, computed independently:
/// whole micro-units of its nano-units and the remainder its tenant's
/// earlier calls left.
fn expected_micros(record: &Value) -> u64 {
    let u = &record["usage"];
    let n = |v: &Value| v.as_u64().unwrap();
    let billed = n(&record["billed_ms"]);
    let ceil_ms = |us: u64| us.div_ceil(1000);
    let carried = n(&record["cost"]["carried_nanos"]);
    assert!(carried < 1000, "{record}");
    let mut nanos = carried + 100 * 1000; // per request
    nanos += n(&u["memory_mb"]) * billed; // 1024 µ/GB-s: 1 nano per MB-ms
    nanos += 3 * n(&u["guest_us"]); // 3000 µ/CPU-s: 3 nanos per µs
    nanos += 1000 * ceil_ms(n(&u["cpu_inference_us"]));
    nanos += 5000 * ceil_ms(n(&u["gpu_inference_us"]));
    if n(&u["cold_start_us"]) > 0 {
        nanos += 7 * 1000;
    }
    nanos += 3 * 1000 * n(&u["model_loads"]) + 3 * n(&u["model_load_us"]);
    nanos / 1000
}

/// The remainder a record leaves for its tenant's next call.
fn carried_on(record: &Value) -> u64 {
    let c = &record["cost"];
    let parts: u64 = [
        "carried_nanos",
        "request_nanos",
        "memory_nanos",
        "cpu_nanos",
        "cpu_inference_nanos",
        "gpu_nanos",
        "cold_start_nanos",
        "model_load_nanos",
    ]
    .iter()
    .map(|k| c[*k].as_u64().unwrap())
    .sum();
    parts - 1000 * c["total_micros"].as_u64().unwrap()
}

async fn record(server: &TestServer, id: &str) -> Value {
    json(server.get(&format!("/v1/invocations/{id}")).await, 200).await
}

#[tokio::test]
async fn known_calls_cost_exactly_what_the_plan_says() {
    let server = server_with_plan(|_| {}).await;
    let r = server.deploy("hello", hello(), "memory_mb=64").await;
    assert_eq!(r.status(), 201);
    let compile: Value = r.json().await.unwrap();
    let compile = record(&server, compile["billed"]["id"].as_str().unwrap()).await;

    // Cold, then warm; each call settled with what the one before left.
    let mut carried = carried_on(&compile);
    for cold in [true, false] {
        let r = server
            .client
            .post(server.url("/fn/hello/x"))
            .body("four")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "glia-cold-start"), cold.to_string());
        let id = header(&r, "glia-invocation-id");
        let billed: u64 = header(&r, "glia-billed-ms").parse().unwrap();
        let cost: u64 = header(&r, "glia-cost").parse().unwrap();
        let usage = header(&r, "glia-usage");
        assert!(usage.contains("mem=64MB"), "{usage}");
        let body = r.bytes().await.unwrap();

        let rec = record(&server, &id).await;
        assert_eq!(rec["id"], id);
        assert_eq!(rec["function"], "hello");
        assert_eq!(rec["version"], 1);
        assert_eq!(rec["outcome"], "ok");
        assert_eq!(rec["status"], 200);
        assert_eq!(rec["plan_version"], 42);
        assert_eq!(rec["currency"], "USD");
        assert_eq!(rec["billed_ms"], billed);
        assert!(billed >= 1);
        assert_eq!(rec["cost"]["total_micros"], cost);
        assert_eq!(cost, expected_micros(&rec), "{rec}");
        assert_eq!(rec["cost"]["request_nanos"], 100_000);
        assert_eq!(rec["cost"]["memory_nanos"], 64 * billed);
        assert_eq!(
            rec["cost"]["cpu_nanos"],
            3 * rec["usage"]["guest_us"].as_u64().unwrap()
        );
        // The remainder below a micro-unit carries from call to call.
        assert_eq!(rec["cost"]["carried_nanos"], carried, "{rec}");
        carried = carried_on(&rec);
        assert_eq!(
            rec["cost"]["cold_start_nanos"],
            if cold { 7000 } else { 0 },
            "{rec}"
        );
        let u = &rec["usage"];
        assert_eq!(u["bytes_in"], 4);
        assert_eq!(u["bytes_out"], body.len() as u64);
        assert_eq!(u["memory_mb"], 64);
        assert!(u["peak_memory_bytes"].as_u64().unwrap() > 0, "{rec}");
        assert!(u["run_us"].as_u64().unwrap() > 0);
        assert!(u["guest_us"].as_u64().unwrap() <= u["run_us"].as_u64().unwrap());
        assert!(u["wall_us"].as_u64().unwrap() >= u["run_us"].as_u64().unwrap());
        assert_eq!(u["cold_start_us"].as_u64().unwrap() > 0, cold);
    }

    problem(
        server.get("/v1/invocations/0000").await,
        404,
        "invocation-not-found",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn inference_and_model_loads_are_billed_per_device() {
    let server = server_with_plan(|_| {}).await;
    assert_eq!(
        server
            .upload_model("digits", DIGITS_ONNX, "")
            .await
            .status(),
        201
    );
    server
        .deploy_ok(
            "classify-digits",
            builtin("classify-digits"),
            "models=digits",
        )
        .await;
    // A restart unloads the model: the first call loads it.
    let server = server.restart().await;
    let pixels = json!({"pixels": vec![0; 64]});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = server
            .client
            .post(server.url("/fn/classify-digits"))
            .json(&pixels)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "glia-nn-device"), "cpu");
        assert!(header(&r, "glia-usage").contains("cpu-inference="));
        ids.push(header(&r, "glia-invocation-id"));
    }
    let first = record(&server, &ids[0]).await;
    let second = record(&server, &ids[1]).await;
    for rec in [&first, &second] {
        let cpu = rec["usage"]["cpu_inference_us"].as_u64().unwrap();
        assert!(cpu > 0, "{rec}");
        assert_eq!(rec["usage"]["gpu_inference_us"], 0);
        assert_eq!(
            rec["cost"]["cpu_inference_nanos"],
            1000 * cpu.div_ceil(1000)
        );
        assert_eq!(rec["nn"]["compute"][0]["device"], "cpu");
        assert_eq!(
            rec["cost"]["total_micros"].as_u64().unwrap(),
            expected_micros(rec),
            "{rec}"
        );
        // The guest's own time excludes inference run in place.
        let guest = rec["usage"]["guest_us"].as_u64().unwrap();
        assert!(guest < rec["usage"]["run_us"].as_u64().unwrap(), "{rec}");
    }
    assert_eq!(first["usage"]["model_loads"], 1, "{first}");
    let load_us = first["usage"]["model_load_us"].as_u64().unwrap();
    assert!(load_us > 0, "{first}");
    // 3 µ a load, and its time at 3000 µ per CPU-second.
    assert_eq!(first["cost"]["model_load_nanos"], 3000 + 3 * load_us);
    assert_eq!(first["nn"]["loads"][0]["model"], "digits");
    assert_eq!(second["usage"]["model_loads"], 0, "{second}");
    server.stop().await;
}

#[tokio::test]
async fn traps_and_timeouts_are_billed_for_the_time_used() {
    let server = server_with_plan(|_| {}).await;
    server
        .deploy_ok("hostile", HOSTILE, "timeout_ms=300&memory_mb=32")
        .await;
    for (path, status, outcome, min_ms) in [
        ("/trap", 500, "trap", 1),
        ("/oom", 500, "trap", 1),
        ("/loop", 504, "timeout", 300),
    ] {
        let r = server
            .client
            .get(server.url(&format!("/fn/hostile{path}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        let id = header(&r, "glia-invocation-id");
        let billed: u64 = header(&r, "glia-billed-ms").parse().unwrap();
        assert!(billed >= min_ms, "{path}: billed {billed} ms");
        let rec = record(&server, &id).await;
        assert_eq!(rec["outcome"], outcome, "{path}: {rec}");
        assert_eq!(rec["status"], status);
        assert_eq!(rec["billed_ms"], billed);
        assert!(rec["cost"]["total_micros"].as_u64().unwrap() > 0);
        assert_eq!(rec["cost"]["memory_nanos"], 32 * billed, "{path}");
        assert_eq!(
            rec["cost"]["total_micros"].as_u64().unwrap(),
            expected_micros(&rec)
        );
    }
    server.stop().await;
}

/// The usage totals of `query` (after the ledger has written what it was
/// handed).
async fn usage_total(server: &TestServer, query: &str) -> Value {
    let billing = server.state.billing.as_ref().unwrap();
    billing.flush().await.unwrap();
    json(server.get(&format!("/v1/usage{query}")).await, 200).await["total"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_calls_cost_nothing_and_are_counted_not_kept() {
    let server = server_with_plan(|_| {}).await;
    server
        .deploy_ok("hostile", HOSTILE, "max_concurrency=1&queue_timeout_ms=50")
        .await;
    let slow = {
        let client = server.client.clone();
        let url = server.url("/fn/hostile/sleep?ms=600");
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = server
        .client
        .get(server.url("/fn/hostile/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let id = header(&r, "glia-invocation-id");
    assert_eq!(header(&r, "glia-cost"), "0");
    assert_eq!(header(&r, "glia-billed-ms"), "0");
    assert_eq!(slow.await.unwrap(), 200);
    let total = usage_total(&server, "?function=hostile").await;
    assert_eq!(total["rejected"], 1, "{total}");
    assert_eq!(total["ok"], 1, "{total}");
    // Counted in its minute's totals, not kept as a row of its own.
    problem(
        server.get(&format!("/v1/invocations/{id}")).await,
        404,
        "invocation-not-found",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_calls_does_not_fill_the_ledger() {
    let server = server_with_plan(|_| {}).await;
    server.deploy_ok("open", hello(), "public=true").await;
    let r = server
        .client
        .patch(server.url("/v1/tenants/default"))
        .json(&json!({"quotas": {"requests_per_second": 1, "burst": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Anyone can call a public function: 600 calls, 12 at a time, with no
    // key, against a tenant allowed one a second.
    let anonymous = glia_e2e::client_with_key(None);
    let url = server.url("/t/default/fn/open/");
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let batch = (0..12).map(|_| {
            let (client, url) = (anonymous.clone(), url.clone());
            async move { client.get(url).send().await.unwrap().status().as_u16() }
        });
        statuses.extend(futures::future::join_all(batch).await);
    }
    let refused = statuses.iter().filter(|s| **s == 429).count() as u64;
    let served = statuses.iter().filter(|s| **s == 200).count() as u64;
    assert_eq!(refused + served, 600, "{statuses:?}");
    assert!(refused >= 500, "{refused} refused");
    let total = usage_total(&server, "?function=open").await;
    assert_eq!(total["rejected"], refused, "every refusal is counted");
    assert_eq!(total["ok"], served, "{total}");
    assert_eq!(total["cost_micros"].as_u64().unwrap() > 0, served > 0);
    // ...but only the calls that ran are rows.
    let rows = server
        .state
        .billing
        .as_ref()
        .unwrap()
        .ledger()
        .records(0, i64::MAX)
        .unwrap();
    let calls: Vec<_> = rows
        .iter()
        .filter(|r| r.kind == glia_host::billing::RecordKind::Invocation)
        .collect();
    assert_eq!(calls.len() as u64, served, "a row per call that ran, only");
    assert!(calls.iter().all(|r| r.outcome == Outcome::Ok));
    server.stop().await;
}

#[tokio::test]
async fn usage_totals_equal_the_sum_of_records() {
    let server = server_with_plan(|_| {}).await;
    server.deploy_ok("hello", hello(), "").await;
    server.deploy_ok("hostile", HOSTILE, "").await;
    for path in [
        "/fn/hello/",
        "/fn/hello/a",
        "/fn/hostile/ok",
        "/fn/hostile/trap",
        "/fn/nope/",
    ] {
        server.get(path).await;
    }
    let all = json(server.get("/v1/usage").await, 200).await;
    let groups = all["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{all}");
    assert_eq!(groups[0]["key"], "hello");
    assert_eq!(groups[0]["invocations"], 2);
    assert_eq!(groups[1]["key"], "hostile");
    assert_eq!(groups[1]["ok"], 1);
    assert_eq!(groups[1]["failed"], 1);
    assert_eq!(
        all["total"]["invocations"], 4,
        "unknown functions are not billed"
    );

    // The totals are the records' sums.
    let records = server
        .state
        .billing
        .as_ref()
        .unwrap()
        .ledger()
        .records(0, i64::MAX)
        .unwrap();
    // Four calls, and the two uploads' compiles.
    assert_eq!(records.len(), 6);
    assert_eq!(
        records
            .iter()
            .filter(|r| r.kind == glia_host::billing::RecordKind::Compile)
            .count(),
        2
    );
    let sum = |f: fn(&glia_host::billing::InvocationRecord) -> u64| -> u64 {
        records.iter().map(f).sum()
    };
    assert_eq!(all["total"]["cost_micros"], sum(|r| r.cost.total_micros));
    assert_eq!(all["total"]["billed_ms"], sum(|r| r.billed_ms));
    assert_eq!(all["total"]["bytes_out"], sum(|r| r.usage.bytes_out));
    assert!(sum(|r| r.cost.total_micros) > 0);

    // Filters, other groupings, CSV.
    let hello_only = json(server.get("/v1/usage?function=hello").await, 200).await;
    assert_eq!(hello_only["total"]["invocations"], 2);
    let by_outcome = json(server.get("/v1/usage?group_by=outcome").await, 200).await;
    let keys: Vec<&str> = by_outcome["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["compile", "ok", "trap"]);
    let by_day = json(server.get("/v1/usage?group_by=day").await, 200).await;
    assert_eq!(by_day["groups"].as_array().unwrap().len(), 1);
    assert_eq!(by_day["total"], all["total"]);
    let empty = json(
        server.get("/v1/usage?from=2000-01-01&to=2000-02-01").await,
        200,
    )
    .await;
    assert_eq!(empty["total"]["invocations"], 0);
    let csv = server
        .client
        .get(server.url("/v1/usage"))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(header(&csv, "content-type").starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("total,4,")
            && last.contains(&format!(",{},2,", sum(|r| r.cost.total_micros))),
        "{text}"
    );
    for bad in [
        "from=yesterday",
        "group_by=week",
        "colour=red",
        "from=2026-02-01&to=2026-01-01",
    ] {
        problem(
            server.get(&format!("/v1/usage?{bad}")).await,
            400,
            "invalid-request",
        )
        .await;
    }
    server.stop().await;
}

#[tokio::test]
async fn batched_rows_arrive_within_the_flush_interval() {
    let server = server_with_plan(|c| {
        c.billing.durability = Durability::Batched;
        c.billing.flush_interval_ms = 50;
    })
    .await;
    server.deploy_ok("hello", hello(), "").await;
    let r = server.get("/fn/hello/").await;
    let id = header(&r, "glia-invocation-id");
    assert!(header(&r, "glia-cost").parse::<u64>().is_ok());
    let started = std::time::Instant::now();
    loop {
        if server.get(&format!("/v1/invocations/{id}")).await.status() == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
}

/// Responses over `billing.buffer_response_kb` stream; their record is
/// written when the body ends, with every byte counted.
#[tokio::test]
async fn streamed_responses_are_recorded_when_they_end() {
    let server = server_with_plan(|c| c.billing.buffer_response_kb = 64).await;
    server.deploy_ok("hostile", HOSTILE, "").await;
    let r = server.get("/fn/hostile/big?mb=2").await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "glia-invocation-id");
    assert!(header(&r, "glia-cost").starts_with("streamed"));
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 2 << 20);
    // Strict: the whole body reached us only after the row was committed.
    let rec = record(&server, &id).await;
    assert_eq!(rec["usage"]["bytes_out"], 2 << 20);
    assert_eq!(rec["outcome"], "ok");
    assert_eq!(
        rec["cost"]["total_micros"].as_u64().unwrap(),
        expected_micros(&rec)
    );
    server.stop().await;
}

/// Waits for a record to reach the ledger (a row handed over without
/// waiting for its commit).
async fn eventual_record(server: &TestServer, id: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let r = server.get(&format!("/v1/invocations/{id}")).await;
        if r.status() == 200 {
            return r.json().await.unwrap();
        }
        assert_eq!(r.status(), 404);
        assert!(started.elapsed() < Duration::from_secs(5), "never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Under `batched`, a streamed call's row is handed over when its body
/// ends, without holding back the last frame, and reaches the ledger
/// within the flush interval.
#[tokio::test]
async fn batched_streamed_responses_are_recorded_when_they_end() {
    let server = server_with_plan(|c| {
        c.billing.buffer_response_kb = 64;
        c.billing.durability = Durability::Batched;
        c.billing.flush_interval_ms = 50;
    })
    .await;
    server.deploy_ok("hostile", HOSTILE, "").await;
    let r = server.get("/fn/hostile/big?mb=2").await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "glia-invocation-id");
    assert!(header(&r, "glia-cost").starts_with("streamed"));
    assert_eq!(r.bytes().await.unwrap().len(), 2 << 20);
    let rec = eventual_record(&server, &id).await;
    assert_eq!(rec["usage"]["bytes_out"], 2 << 20);
    assert_eq!(rec["outcome"], "ok");
    assert_eq!(
        rec["cost"]["total_micros"].as_u64().unwrap(),
        expected_micros(&rec)
    );
    server.stop().await;
}

/// A client that goes away mid-stream leaves a record of what was sent
/// (an `error` outcome, billed for the time used), whatever the
/// durability.
#[tokio::test]
async fn a_stream_the_client_abandons_is_recorded_with_what_was_sent() {
    for durability in [Durability::Strict, Durability::Batched] {
        let server = server_with_plan(|c| {
            c.billing.buffer_response_kb = 64;
            c.billing.durability = durability;
            c.billing.flush_interval_ms = 50;
        })
        .await;
        server
            .deploy_ok("hostile", HOSTILE, "timeout_ms=20000")
            .await;
        let total: u64 = 256 << 20;
        let mut r = server.get("/fn/hostile/big?mb=256").await;
        assert_eq!(r.status(), 200);
        let id = header(&r, "glia-invocation-id");
        let first = r.chunk().await.unwrap().expect("a first chunk");
        assert!(!first.is_empty());
        drop(r);
        let rec = eventual_record(&server, &id).await;
        let sent = rec["usage"]["bytes_out"].as_u64().unwrap();
        assert!(
            sent > 0 && sent < total,
            "{durability:?}: {sent} bytes out of {total}"
        );
        assert_eq!(rec["outcome"], "error", "{durability:?}");
        assert_eq!(rec["status"], 200);
        assert!(rec["billed_ms"].as_u64().unwrap() >= 1);
        assert_eq!(
            rec["cost"]["total_micros"].as_u64().unwrap(),
            expected_micros(&rec)
        );
        // The server goes on serving.
        assert_eq!(server.get("/fn/hostile/big?mb=1").await.status(), 200);
        server.stop().await;
    }
}

#[tokio::test]
async fn billing_can_be_turned_off() {
    let server = TestServer::start_with(|c| c.billing.enabled = false).await;
    server.deploy_ok("hello", hello(), "").await;
    let r = server.get("/fn/hello/").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("glia-cost").is_none());
    assert!(r.headers().get("glia-invocation-id").is_some());
    problem(server.get("/v1/usage").await, 404, "not-found").await;
    server.stop().await;
}

/// A client that leaves before its response (a closed connection on
/// HTTP/1.1, a reset stream on HTTP/2) makes the call no cheaper: the
/// guest runs to its end, and its row is written then, as `499`, billed for
/// all of it and counted against its tenant's spend, whatever the
/// durability. (Before, the row was written in the request's future, which
/// hyper drops with the connection: such calls were free.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_response_still_pays() {
    for durability in [Durability::Strict, Durability::Batched] {
        let server = server_with_plan(|c| {
            c.billing.durability = durability;
            c.billing.flush_interval_ms = 50;
        })
        .await;
        server.deploy_ok("after", HOSTILE, "timeout_ms=10000").await;
        let h1 = glia_e2e::reqwest::Client::builder()
            .timeout(Duration::from_millis(150))
            .default_headers(server.client_headers())
            .build()
            .unwrap();
        let h2 = glia_e2e::reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(Duration::from_millis(150))
            .default_headers(server.client_headers())
            .build()
            .unwrap();
        for client in [&h1, &h2] {
            let gone = client
                .get(server.url("/fn/after/sleep?ms=800"))
                .send()
                .await;
            assert!(gone.is_err(), "{durability:?}: the client gave up first");
        }
        let ledger = server.state.billing.as_ref().unwrap().ledger().clone();
        let mut records = Vec::new();
        for _ in 0..100 {
            records = ledger.records(0, i64::MAX).unwrap();
            // The upload's compile row aside.
            records.retain(|r| r.kind == glia_host::billing::RecordKind::Invocation);
            if records.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(records.len(), 2, "{durability:?}: a row for each call");
        for rec in &records {
            let rec = serde_json::to_value(rec).unwrap();
            assert_eq!(rec["status"], 499, "{durability:?}: {rec}");
            assert_eq!(
                rec["outcome"], "ok",
                "{durability:?}: the guest ran to its end"
            );
            assert!(rec["usage"]["run_us"].as_u64().unwrap() >= 800_000, "{rec}");
            assert!(rec["billed_ms"].as_u64().unwrap() >= 800, "{rec}");
            assert_eq!(
                rec["cost"]["total_micros"].as_u64().unwrap(),
                expected_micros(&rec)
            );
        }
        let usage = json(server.get("/v1/usage?function=after").await, 200).await;
        assert_eq!(usage["total"]["invocations"], 2, "{usage}");
        server.stop().await;
    }
}

/// A streamed response whose guest goes on working after its last byte
/// (under `strict`, the last frame waits for the row, which waits for the
/// guest): a client that leaves before the end still leaves a row, billed
/// for the work done after the response. (Before, leaving in that window
/// dropped the row's write with the connection: the record was not found.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_after_a_streamed_response_is_billed_when_the_client_leaves() {
    let server = server_with_plan(|c| {
        c.billing.buffer_response_kb = 64;
        c.billing.durability = Durability::Strict;
    })
    .await;
    server.deploy_ok("after", HOSTILE, "timeout_ms=10000").await;
    let mut r = server.get("/fn/after/after?mb=1&ms=700").await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "glia-invocation-id");
    let mut received = 0;
    // Every byte but what the last frame holds, then gone.
    while received < (1 << 20) - (64 << 10) {
        received += r.chunk().await.unwrap().expect("more body").len();
    }
    drop(r);
    let rec = eventual_record(&server, &id).await;
    assert!(rec["usage"]["run_us"].as_u64().unwrap() >= 700_000, "{rec}");
    assert!(rec["billed_ms"].as_u64().unwrap() >= 700, "{rec}");
    assert_eq!(
        rec["cost"]["total_micros"].as_u64().unwrap(),
        expected_micros(&rec)
    );
    server.stop().await;
}

/// Inference belongs to its call too: a run still going at the call's
/// deadline is stopped (ONNX Runtime and tract stop midway; a run not yet
/// started does not start), the call is billed for the run until it really
/// ended and holds its slot till then, and a run's time is its own, never
/// its wait for an inference thread. (Before, abandoned runs went on for as
/// long as they took, billed to nobody, and another tenant's call waiting
/// behind them for a thread was billed the wait as its inference.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_stops_at_its_calls_deadline_and_bills_only_its_own_run() {
    use glia_host::nn::onnx::build::chain_model;
    let probe = include_bytes!(concat!(env!("OUT_DIR"), "/fixtures/nn-probe.wasm"));
    for backend in glia_e2e::BACKENDS {
        let b = backend.name();
        let server = glia_e2e::TestServer::start_on(backend, |c| c.billing.plan = plan()).await;
        let heavy_id = server.create_tenant("heavy").await;
        let light_id = server.create_tenant("light").await;
        let heavy = glia_e2e::client_with_key(Some(
            &server
                .create_key(&heavy_id, &["deploy", "invoke", "read"])
                .await,
        ));
        let light = glia_e2e::client_with_key(Some(
            &server
                .create_key(&light_id, &["deploy", "invoke", "read"])
                .await,
        ));
        let put = |client: &glia_e2e::reqwest::Client, path: &str, bytes: Vec<u8>| {
            client.put(server.url(path)).body(bytes).send()
        };
        // Three thousand 256 × 256 products a run: seconds on any backend.
        let r = put(&heavy, "/v1/models/chain", chain_model(1000, 256))
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "[{b}] {}",
            r.text().await.unwrap_or_default()
        );
        let r = put(
            &heavy,
            "/v1/functions/burn?models=chain&timeout_ms=150",
            probe.to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201, "[{b}]");
        assert_eq!(
            put(&light, "/v1/models/digits", DIGITS_ONNX.to_vec())
                .await
                .unwrap()
                .status(),
            201
        );
        let r = put(&light, "/v1/functions/digits?models=digits", probe.to_vec())
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "[{b}]");

        // Twelve heavy calls, each cut at 150 ms: more than the inference
        // threads, had their runs gone on.
        let chain_input = json!([{ "name": "x", "type": "fp32", "dims": [256, 256], "fill": 1.0 }]);
        let mut heavy_ids = Vec::new();
        for _ in 0..12 {
            let r = heavy
                .post(server.url("/fn/burn/"))
                .json(&json!({ "load": { "name": "chain" }, "inputs": chain_input }))
                .send()
                .await
                .unwrap();
            heavy_ids.push(header(&r, "glia-invocation-id"));
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert!(
                status == 504 || body.contains("\"code\":\"timeout\""),
                "[{b}] the deadline ends it: {status} {body}"
            );
        }
        // The light tenant's first run goes to an inference thread at once.
        let started = std::time::Instant::now();
        let r = light
            .post(server.url("/fn/digits/"))
            .json(&json!({
                "load": { "name": "digits" },
                "inputs": [{ "name": "pixels", "type": "fp32", "dims": [1, 64], "fill": 1.0 }],
            }))
            .send()
            .await
            .unwrap();
        let light_id_call = header(&r, "glia-invocation-id");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["ok"], true, "[{b}] {body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "[{b}] {:?}",
            started.elapsed()
        );

        let read = |client: &glia_e2e::reqwest::Client, id: &str| {
            let request = client
                .get(server.url(&format!("/v1/invocations/{id}")))
                .send();
            async move { json(request.await.unwrap(), 200).await }
        };
        let light_record = read(&light, &light_id_call).await;
        let light_cpu = light_record["usage"]["cpu_inference_us"].as_u64().unwrap();
        assert!(
            light_cpu < 200_000,
            "[{b}] its own run only: {light_cpu} µs"
        );
        for id in &heavy_ids {
            let rec = read(&heavy, id).await;
            let cpu = rec["usage"]["cpu_inference_us"].as_u64().unwrap();
            assert!(
                cpu > 0 && cpu < 1_500_000,
                "[{b}] the run until it stopped: {cpu} µs"
            );
            assert_eq!(
                rec["cost"]["total_micros"].as_u64().unwrap(),
                expected_micros(&rec)
            );
        }
        server.stop().await;
    }
}

/// A spend cap holds against calls in flight: each call's worst case (its
/// timeout at its memory, computing and inferring all along) is reserved against the cap
/// when it is admitted and given back when it is priced, so a burst of
/// parallel long calls with little headroom cannot run the spend past the
/// cap. (Before, the cap was checked only against what calls had already
/// cost: sixty parallel 20 s calls with 20 µ of headroom all ran.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_cap_holds_against_a_burst_of_calls_in_flight() {
    let server = TestServer::start().await;
    let id = server.create_tenant("capped").await;
    let client = glia_e2e::client_with_key(Some(
        &server.create_key(&id, &["deploy", "invoke", "read"]).await,
    ));
    let r = client
        .put(server.url("/v1/functions/long?timeout_ms=2000&memory_mb=512&max_concurrency=64"))
        .body(HOSTILE.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The default plan: about 300 µ for a 2 s call at 512 MiB in the worst
    // case; a cap of 600 leaves room for two at once.
    let r = server
        .client
        .patch(server.url(&format!("/v1/tenants/{id}")))
        .json(&json!({ "quotas": { "monthly_spend_cap": 600 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/fn/long/sleep?ms=1500"));
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.text().await.unwrap())
            })
        })
        .collect();
    let mut ran = 0;
    let mut refused = 0;
    for call in calls {
        let (status, body) = call.await.unwrap();
        match status {
            200 => ran += 1,
            429 => {
                assert!(body.contains("spend-cap-reached"), "{body}");
                refused += 1;
            }
            other => panic!("{other} {body}"),
        }
    }
    assert!((1..=3).contains(&ran), "{ran} ran, {refused} refused");
    let usage = json(
        client.get(server.url("/v1/usage")).send().await.unwrap(),
        200,
    )
    .await;
    let total = usage["total"]["cost_micros"].as_u64().unwrap();
    assert!(total <= 600, "spent {total} against a cap of 600");
    assert_eq!(
        server.state.auth.meter(&id).reserved(),
        0,
        "every reservation given back"
    );
    server.stop().await;
}

/// Compiling an upload is billed to the uploading tenant: a ledger row of
/// kind `compile` with the CPU time validation and compilation used,
/// counted in usage and spend. A tenant whose upload reuses another's
/// compile is billed as if it compiled (it cannot tell, nor be told), and
/// a tenant at its spend cap cannot upload. (Before, a 63 MB component
/// compiled for 14 CPU-seconds with no record.)
#[tokio::test]
async fn compiling_an_upload_is_billed_to_its_tenant() {
    let server = server_with_plan(|c| c.billing.plan.per_cpu_second = 1_000_000).await;
    let r = server.deploy("hostile", HOSTILE, "").await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let billed = &body["billed"];
    let cpu_us = billed["cpu_us"].as_u64().unwrap();
    // Compiling a component takes tens of milliseconds at least.
    assert!(cpu_us > 5_000, "{body}");
    let rec = record(&server, billed["id"].as_str().unwrap()).await;
    assert_eq!(rec["kind"], "compile", "{rec}");
    assert_eq!(rec["function"], "hostile");
    assert_eq!(rec["version"], 1);
    assert_eq!(rec["status"], 201);
    assert_eq!(rec["usage"]["guest_us"], cpu_us);
    assert_eq!(rec["usage"]["bytes_in"], HOSTILE.len() as u64);
    // 1,000,000 µ per CPU-second is 1 µ per µs; nothing else of the plan
    // applies to a compile.
    assert_eq!(rec["cost"]["cpu_nanos"], cpu_us * 1000);
    assert_eq!(rec["cost"]["request_nanos"], 0);
    assert_eq!(rec["cost"]["total_micros"], cpu_us, "{rec}");
    assert_eq!(billed["cost_micros"], cpu_us);

    // In usage: a compile, not an invocation.
    let total = usage_total(&server, "").await;
    assert_eq!(total["compiles"], 1, "{total}");
    assert_eq!(total["compile_cpu_us"], cpu_us);
    assert_eq!(total["invocations"], 0);
    assert_eq!(total["guest_us"], 0);
    assert_eq!(total["bytes_in"], 0, "an upload's bytes are not a call's");
    assert_eq!(total["cost_micros"], cpu_us);
    // A failed upload is billed what its validation used.
    let r = server.deploy("junk", b"\0asm\x0d\0\x01\0garbage", "").await;
    assert_eq!(r.status(), 400);
    let total = usage_total(&server, "").await;
    assert_eq!(total["compiles"], 2, "{total}");

    // Another tenant uploading the same bytes is billed a compile's CPU.
    let other = server.create_tenant("other").await;
    let client = glia_e2e::client_with_key(Some(&server.create_key(&other, &["deploy"]).await));
    let r = client
        .put(server.url("/v1/functions/mine"))
        .body(HOSTILE.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["compiled"], true, "{body}");
    let reused = body["billed"]["cpu_us"].as_u64().unwrap();
    assert_eq!(reused, cpu_us, "billed as the compile it reused");
    // Its spend counts them, and at its cap it uploads no more.
    let r = server
        .client
        .patch(server.url(&format!("/v1/tenants/{other}")))
        .json(&json!({"quotas": {"monthly_spend_cap": reused}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .put(server.url("/v1/functions/again"))
        .body(HOSTILE.to_vec())
        .send()
        .await
        .unwrap();
    let (status, body) = (r.status(), r.text().await.unwrap());
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("spend-cap-reached"), "{body}");
    server.stop().await;
}

/// Guest CPU is priced (`per_cpu_second`), so a call that computes pays for
/// it however little memory it sets. (Before, a 14-second spin at
/// `memory_mb=2` cost 1 µ, the same as a 0.4 ms call.)
#[tokio::test]
async fn a_guest_that_computes_pays_for_its_cpu_whatever_its_memory() {
    // The default plan: 20 µ per CPU-second, 17 per GB-second.
    let server = TestServer::start().await;
    server
        .deploy_ok("hostile", HOSTILE, "timeout_ms=1500&memory_mb=2")
        .await;
    let r = server.get("/fn/hostile/loop").await;
    assert_eq!(r.status(), 504);
    let cost: u64 = header(&r, "glia-cost").parse().unwrap();
    let rec = record(&server, &header(&r, "glia-invocation-id")).await;
    let guest_us = rec["usage"]["guest_us"].as_u64().unwrap();
    assert!(guest_us >= 1_000_000, "{rec}");
    assert_eq!(rec["cost"]["cpu_nanos"], 20 * guest_us / 1000, "{rec}");
    // Memory: 2 MB for 1.5 s is 0.05 µ; CPU: 30 µ.
    assert!(rec["cost"]["memory_nanos"].as_u64().unwrap() < 100, "{rec}");
    assert!(cost >= 20, "a 1.5 s spin cost {cost} µ");
    server.stop().await;
}

/// Uploading a model is billed to its tenant too (it is validated by
/// loading it, which can take CPU-seconds for a large graph), and deleting
/// it deletes its stored bytes when no other model holds them.
#[tokio::test]
async fn a_model_upload_is_billed_and_its_bytes_go_with_it() {
    let server = server_with_plan(|c| c.billing.plan.per_cpu_second = 1_000_000).await;
    let models_dir = server.data_dir.join("models").join("sha256");
    let r = server.upload_model("digits", DIGITS_ONNX, "").await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let cpu_us = body["billed"]["cpu_us"].as_u64().unwrap();
    assert!(cpu_us > 0, "{body}");
    let rec = record(&server, body["billed"]["id"].as_str().unwrap()).await;
    assert_eq!(rec["kind"], "model-upload", "{rec}");
    assert_eq!(rec["function"], "digits");
    assert_eq!(rec["usage"]["guest_us"], cpu_us);
    assert_eq!(rec["cost"]["cpu_nanos"], cpu_us * 1000);
    let total = usage_total(&server, "").await;
    assert_eq!(total["model_uploads"], 1, "{total}");
    assert_eq!(total["model_upload_cpu_us"], cpu_us);
    assert_eq!(total["compiles"], 0);
    assert_eq!(total["cost_micros"], rec["cost"]["total_micros"]);

    // Two models with the same bytes share them until both are gone.
    assert_eq!(
        server.upload_model("twin", DIGITS_ONNX, "").await.status(),
        201
    );
    assert_eq!(std::fs::read_dir(&models_dir).unwrap().count(), 1);
    for (name, left) in [("digits", 1), ("twin", 0)] {
        let r = server
            .client
            .delete(server.url(&format!("/v1/models/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        assert_eq!(
            std::fs::read_dir(&models_dir).unwrap().count(),
            left,
            "{name}"
        );
    }
    server.stop().await;
}
