//! Limits on every input: request heads, slow clients, names, JSON depth
//! and bodies, each refused with problem+json (or, for a client too slow to
//! send a request, a closed connection).

use std::time::{Duration, Instant};

use glia_e2e::{HOSTILE, TestServer, hello, reqwest};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{json, problem};

#[tokio::test]
async fn oversized_request_heads_are_problems() {
    let server = TestServer::start().await;
    let config = server.state.config.server.clone();
    let kib = |n: u64| usize::try_from(n * 1024).unwrap();

    // Headers: too many (but fewer than hyper's own limit), then too big.
    let mut many = server.client.get(server.url("/healthz"));
    for i in 0..=config.max_headers {
        many = many.header(format!("x-h{i}"), "1");
    }
    let p = problem(many.send().await.unwrap(), 431, "headers-too-large").await;
    assert!(p["detail"].as_str().unwrap().contains("max_headers"), "{p}");
    let big = server
        .client
        .get(server.url("/healthz"))
        .header("x-big", "a".repeat(kib(config.max_header_kb)))
        .send()
        .await
        .unwrap();
    let p = problem(big, 431, "headers-too-large").await;
    assert!(
        p["detail"].as_str().unwrap().contains("max_header_kb"),
        "{p}"
    );
    // Just under both limits is fine.
    let r = server
        .client
        .get(server.url("/healthz"))
        .header("x-big", "a".repeat(kib(config.max_header_kb) - 200))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The target, and the query alone, on the control and data planes.
    let long_path = format!("/fn/f/{}", "a".repeat(kib(config.max_uri_kb)));
    problem(server.get(&long_path).await, 414, "uri-too-long").await;
    let long_query = format!("/v1/usage?{}", "a".repeat(kib(config.max_query_kb) + 1));
    let p = problem(server.get(&long_query).await, 414, "uri-too-long").await;
    assert!(p["detail"].as_str().unwrap().contains("query"), "{p}");
    server.stop().await;
}

/// Reads from `stream` until the server closes it (or sends something
/// and then closes it); returns how long that took.
async fn until_closed(stream: &mut TcpStream, patience: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0_u8; 1024];
    loop {
        match tokio::time::timeout(patience, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was still open after {patience:?}"),
        }
    }
}

#[tokio::test]
async fn slow_clients_are_disconnected() {
    let server = TestServer::start_with(|c| c.server.header_read_timeout_ms = 300).await;
    let patience = Duration::from_secs(5);

    // Half a request line, then nothing.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /heal").await.unwrap();
    let took = until_closed(&mut stream, patience).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");

    // Headers trickling in, never finished.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(b"x-slow: 1\r\n").await.unwrap();
    }
    let took = until_closed(&mut stream, patience).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");

    // Part of the HTTP/2 preface (read before hyper's own timer starts),
    // and a connection that sends nothing at all.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let took = until_closed(&mut stream, patience).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let took = until_closed(&mut stream, patience).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");

    // A client that sends its request in time is served, however long the
    // answer takes.
    server.deploy_ok("hostile", HOSTILE, "").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /fn/hostile/sleep?ms=700 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
        glia_e2e::ADMIN_KEY
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("slept 700"), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn names_are_checked_on_every_route() {
    let server = TestServer::start().await;
    let long = "a".repeat(glia_host::registry::MAX_NAME_LEN + 1);
    let c = &server.client;
    for (method, path) in [
        ("GET", format!("/v1/functions/{long}")),
        ("PUT", format!("/v1/functions/{long}")),
        ("PATCH", format!("/v1/functions/{long}")),
        ("DELETE", format!("/v1/functions/{long}")),
        ("GET", format!("/v1/models/{long}")),
        ("PUT", format!("/v1/models/{long}")),
        ("DELETE", format!("/v1/models/{long}")),
        ("GET", format!("/fn/{long}/")),
        ("POST", format!("/fn/{long}@1/x")),
        ("GET", format!("/v1/usage?function={long}")),
        ("GET", "/v1/functions/Upper".to_string()),
        ("GET", "/fn/a_b/".to_string()),
    ] {
        let r = c
            .request(method.parse().unwrap(), server.url(&path))
            .body("{}")
            .send()
            .await
            .unwrap();
        problem(r, 400, "invalid-name").await;
    }
    // The longest valid name is only not found.
    let longest = "a".repeat(glia_host::registry::MAX_NAME_LEN);
    let r = server.get(&format!("/v1/functions/{longest}")).await;
    problem(r, 404, "function-not-found").await;
    server.stop().await;
}

#[tokio::test]
async fn json_bodies_are_depth_checked() {
    let server = TestServer::start().await;
    server.deploy_ok("f", hello(), "").await;
    let patch = |body: String| {
        server
            .client
            .patch(server.url("/v1/functions/f"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let depth = glia_host::api::limits::MAX_JSON_DEPTH;

    let p = problem(
        patch(nested(depth + 1)).await.unwrap(),
        400,
        "invalid-request",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("nested"), "{p}");
    // Far beyond serde_json's own limit, and unbalanced: the same answer.
    problem(
        patch("[".repeat(60_000)).await.unwrap(),
        400,
        "invalid-request",
    )
    .await;
    let deep_value = format!(r#"{{"timeout_ms": {}}}"#, nested(depth + 5));
    problem(patch(deep_value).await.unwrap(), 400, "invalid-request").await;
    // Within the limit, the document is read (and this one is no settings).
    problem(patch(nested(depth)).await.unwrap(), 400, "invalid-settings").await;
    // Brackets inside strings do not count.
    let text = format!(r#"{{"env": ["A={}"]}}"#, "[".repeat(depth * 2));
    let f = json(patch(text).await.unwrap(), 200).await;
    assert_eq!(
        f["settings"]["env"][0].as_str().map(str::len),
        Some(2 + depth * 2)
    );
    server.stop().await;
}

#[tokio::test]
async fn every_body_is_limited() {
    let server = TestServer::start_with(|c| {
        c.server.max_upload_mb = 1;
        c.server.max_model_mb = 1;
        c.server.max_invoke_body_mb = 1;
    })
    .await;
    let mib = 1024 * 1024;
    let over = vec![0_u8; mib + 1];
    let p = problem(
        server.deploy("f", &over, "").await,
        413,
        "payload-too-large",
    )
    .await;
    assert_eq!(p["limit_bytes"], mib);
    problem(
        server.upload_model("m", &over, "").await,
        413,
        "payload-too-large",
    )
    .await;

    server.deploy_ok("hostile", HOSTILE, "").await;
    let patch = server
        .client
        .patch(server.url("/v1/functions/hostile"))
        .body(format!(r#"{{"env": ["A={}"]}}"#, "x".repeat(64 * 1024)))
        .send()
        .await
        .unwrap();
    let p = problem(patch, 413, "payload-too-large").await;
    assert!(p["detail"].as_str().unwrap().ends_with("(64 KiB)"), "{p}");

    // A call declaring a body over the limit is refused before it runs.
    let r = server
        .client
        .post(server.url("/fn/hostile/echo"))
        .body(over.clone())
        .send()
        .await
        .unwrap();
    let p = problem(r, 413, "payload-too-large").await;
    assert_eq!(p["limit_bytes"], mib);
    // Streamed without a length, the function never gets more than the
    // limit: its read fails.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..17).map(|_| Ok(vec![7_u8; 64 * 1024])).collect();
    let r = server
        .client
        .post(server.url("/fn/hostile/echo"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200, "the body passed the limit");
    // At the limit, it is served.
    let r = server
        .client
        .post(server.url("/fn/hostile/echo"))
        .body(vec![7_u8; mib])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), mib);

    // Routes that read no body ignore it.
    let r = server
        .client
        .get(server.url("/v1/functions"))
        .body(json!({"x": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}
