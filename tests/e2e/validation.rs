//! Malformed uploads get a 4xx problem naming the reason; nothing is stored
//! and the server keeps serving.

use glia_e2e::{TestServer, hello};

use crate::problem;

/// Deterministic pseudo-random bytes (xorshift).
fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn assert_still_serving(server: &TestServer) {
    assert_eq!(server.get("/healthz").await.status(), 200);
    assert_eq!(server.get("/fn/hello/").await.status(), 200);
}

#[tokio::test]
async fn malformed_uploads_are_refused_with_reasons() {
    let server = TestServer::start().await;
    server.deploy_ok("hello", hello(), "").await;

    // 50 MiB of random bytes.
    let p = problem(
        server.deploy("junk", &random_bytes(50 << 20), "").await,
        400,
        "not-wasm",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("not WebAssembly"));
    assert_still_serving(&server).await;

    // An empty core module.
    let p = problem(
        server.deploy("core", b"\0asm\x01\0\0\0", "").await,
        400,
        "core-module",
    )
    .await;
    assert_eq!(
        p["detail"],
        "core module: build a component, e.g. for wasm32-wasip2"
    );
    assert_still_serving(&server).await;

    // A component importing an interface the platform does not have.
    let unsatisfiable = wat::parse_str(
        r#"(component
             (import "acme:db/query@1.0.0" (instance (export "run" (func))))
             (import "wasi:nn/graph@0.1.0" (instance))
           )"#,
    )
    .unwrap();
    let p = problem(
        server.deploy("needy", &unsatisfiable, "").await,
        422,
        "unsatisfied-imports",
    )
    .await;
    let imports: Vec<&str> = p["imports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(imports, ["acme:db/query@1.0.0", "wasi:nn/graph@0.1.0"]);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("acme:db/query@1.0.0")
    );

    // A provided package but an interface shape the linker cannot match.
    let mismatched = wat::parse_str(
        r#"(component (import "wasi:random/random@0.2.0" (instance (export "no-such-func" (func)))))"#,
    )
    .unwrap();
    problem(
        server.deploy("odd", &mismatched, "").await,
        422,
        "unsatisfied-imports",
    )
    .await;

    // A valid component that exports no HTTP handler.
    let handlerless = wat::parse_str("(component)").unwrap();
    problem(
        server.deploy("mute", &handlerless, "").await,
        422,
        "missing-handler",
    )
    .await;

    // A truncated component.
    let truncated = &hello()[..hello().len() / 2];
    problem(
        server.deploy("cut", truncated, "").await,
        400,
        "invalid-component",
    )
    .await;

    // Bad names.
    for bad in ["Hello", "-lead", "under_score", &"x".repeat(64)] {
        problem(server.deploy(bad, hello(), "").await, 400, "invalid-name").await;
    }
    problem(
        server.deploy("ok", hello(), "bogus=1").await,
        400,
        "invalid-settings",
    )
    .await;

    // Nothing of the above was recorded.
    let list: serde_json::Value = server.get("/v1/functions").await.json().await.unwrap();
    assert_eq!(list["functions"].as_array().unwrap().len(), 1);
    assert_still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn uploads_over_the_limit_are_413() {
    let server = TestServer::start_with(|c| c.server.max_upload_mb = 1).await;
    server.deploy_ok("hello", hello(), "").await;
    let big = random_bytes(2 << 20);
    // With a content-length: refused before reading.
    let p = problem(
        server.deploy("big", &big, "").await,
        413,
        "payload-too-large",
    )
    .await;
    assert_eq!(p["limit_bytes"], 1 << 20);
    // Chunked, no content-length: refused while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = server
        .client
        .put(server.url("/v1/functions/big"))
        .body(glia_e2e::reqwest::Body::wrap_stream(futures::stream::iter(
            chunks,
        )))
        .send()
        .await;
    // The server may answer before the client finishes sending.
    if let Ok(r) = r {
        problem(r, 413, "payload-too-large").await;
    }
    assert_still_serving(&server).await;
    server.stop().await;
}
