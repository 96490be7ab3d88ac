//! Guest capabilities are denied by default and granted only as the
//! function's settings say: environment variables (`env`) and outbound HTTP
//! (`allowed_hosts`); never files or sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use glia_e2e::{HOSTILE, TestServer, reqwest};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{json, problem};

/// A plain HTTP/1.1 server on `127.0.0.1`: answers every request with
/// `200 upstream <path>`, or never answers when `silent`. Counts the
/// connections it accepted.
struct Upstream {
    port: u16,
    connections: Arc<AtomicUsize>,
    /// The head of every request received.
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start(silent: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0_u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if silent {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    seen.lock().unwrap().push(head.clone());
                    let path = head.split(' ').nth(1).unwrap_or("?");
                    let body = format!("upstream {path}");
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Self {
            port,
            connections,
            heads,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server whose operator lets functions reach this machine's loopback
/// addresses, where the tests' upstream servers listen.
async fn loopback_allowed() -> TestServer {
    TestServer::start_with(|c| {
        c.outbound.allowed_ranges =
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    })
    .await
}

async fn text(server: &TestServer, path: &str) -> String {
    let r = server.get(path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.text().await.unwrap()
}

async fn patch(server: &TestServer, name: &str, body: serde_json::Value) -> reqwest::Response {
    server
        .client
        .patch(server.url(&format!("/v1/functions/{name}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn environment_is_empty_unless_set() {
    let server = TestServer::start().await;
    server.deploy_ok("hostile", HOSTILE, "").await;
    assert_eq!(text(&server, "/fn/hostile/env").await, "");

    // In a query string (values percent-decoded), in order.
    server
        .deploy_ok(
            "hostile",
            HOSTILE,
            "env=MODE=fast,GREETING=hello%20world,EMPTY=",
        )
        .await;
    assert_eq!(
        text(&server, "/fn/hostile/env").await,
        "MODE=fast\nGREETING=hello world\nEMPTY=\n"
    );
    let f = json(server.get("/v1/functions/hostile").await, 200).await;
    assert_eq!(
        f["settings"]["env"],
        json!(["MODE=fast", "GREETING=hello world", "EMPTY="])
    );

    // Through PATCH, where values may hold commas and '='.
    let r = patch(&server, "hostile", json!({"env": ["LIST=a,b=c"]})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(text(&server, "/fn/hostile/env").await, "LIST=a,b=c\n");

    // Back to the default: nothing.
    let r = patch(&server, "hostile", json!({"env": null})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(text(&server, "/fn/hostile/env").await, "");

    // A platform default reaches every function that does not set its own.
    let server = server
        .restart_with(|c| c.functions.env = vec!["REGION=eu".parse().unwrap()])
        .await;
    assert_eq!(text(&server, "/fn/hostile/env").await, "REGION=eu\n");
    server.stop().await;
}

#[tokio::test]
async fn no_files_and_no_sockets_even_with_grants() {
    let server = loopback_allowed().await;
    let listener = Upstream::start(false).await;
    let port = listener.port;
    // Granting env and outbound HTTP grants nothing else.
    server
        .deploy_ok(
            "hostile",
            HOSTILE,
            &format!("env=A=1&allowed_hosts=127.0.0.1:{port}"),
        )
        .await;
    let report = text(&server, "/fn/hostile/ambient").await;
    assert!(report.contains("preopens=0\n"), "{report}");
    assert!(report.contains("fs=denied"), "{report}");
    assert!(report.contains("env=1\n"), "{report}");

    // A TCP connect through wasi:sockets to a port that listens, and is an
    // allowed HTTP host, is still refused.
    let report = text(
        &server,
        &format!("/fn/hostile/socket?addr=127.0.0.1:{port}"),
    )
    .await;
    assert!(report.starts_with("denied"), "{report}");
    assert_eq!(listener.connections(), 0, "the socket never connected");
    server.stop().await;
}

/// A caller's W3C trace context rides on the requests its call makes.
#[tokio::test]
async fn outgoing_requests_carry_the_callers_trace_context() {
    let server = loopback_allowed().await;
    let upstream = Upstream::start(false).await;
    server
        .deploy_ok(
            "hostile",
            HOSTILE,
            &format!("allowed_hosts=127.0.0.1:{}", upstream.port),
        )
        .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = server
        .client
        .get(server.url(&format!(
            "/fn/hostile/outbound?url=http://127.0.0.1:{}/traced",
            upstream.port
        )))
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok 200 upstream /traced");
    let heads = upstream.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    let sent = heads[0]
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("no traceparent in {:?}", heads[0]));
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "the caller's trace: {sent}"
    );
    server.stop().await;
}

#[tokio::test]
async fn outbound_http_goes_only_to_allowed_hosts() {
    let server = loopback_allowed().await;
    let upstream = Upstream::start(false).await;
    let other = Upstream::start(false).await;
    let url = |port: u16| format!("/fn/hostile/outbound?url=http://127.0.0.1:{port}/hi");
    let denied = "error ErrorCode::HttpRequestDenied";

    // Denied by default, before any connection is made.
    server.deploy_ok("hostile", HOSTILE, "").await;
    assert_eq!(text(&server, &url(upstream.port)).await, denied);
    assert_eq!(upstream.connections(), 0);

    // Allowed once granted, exactly that host and port.
    server
        .deploy_ok(
            "hostile",
            HOSTILE,
            &format!("allowed_hosts=127.0.0.1:{}", upstream.port),
        )
        .await;
    assert_eq!(
        text(&server, &url(upstream.port)).await,
        "ok 200 upstream /hi"
    );
    assert_eq!(upstream.connections(), 1);
    assert_eq!(
        text(&server, &url(other.port)).await,
        denied,
        "another port"
    );
    let by_name = format!(
        "/fn/hostile/outbound?url=http://localhost:{}/",
        upstream.port
    );
    assert_eq!(text(&server, &by_name).await, denied, "another host name");
    let https = format!(
        "/fn/hostile/outbound?url=https://127.0.0.2:{}/",
        upstream.port
    );
    assert_eq!(text(&server, &https).await, denied, "another address");
    assert_eq!(other.connections(), 0);
    assert_eq!(upstream.connections(), 1);

    // A wildcard covers names below its domain only, on the default port.
    let r = patch(
        &server,
        "hostile",
        json!({"allowed_hosts": ["*.localhost", format!("127.0.0.1:{}", other.port)]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        text(&server, &url(upstream.port)).await,
        denied,
        "no longer"
    );
    assert_eq!(text(&server, &url(other.port)).await, "ok 200 upstream /hi");
    server.stop().await;
}

#[tokio::test]
async fn outbound_waits_no_longer_than_the_deadline() {
    let server = loopback_allowed().await;
    let silent = Upstream::start(true).await;
    server
        .deploy_ok(
            "hostile",
            HOSTILE,
            &format!("timeout_ms=1000&allowed_hosts=127.0.0.1:{}", silent.port),
        )
        .await;
    let started = Instant::now();
    let r = server
        .get(&format!(
            "/fn/hostile/outbound?url=http://127.0.0.1:{}/",
            silent.port
        ))
        .await;
    let elapsed = started.elapsed();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    // Either the host's first-byte timeout (cut at the deadline) reached
    // the guest, or the deadline stopped it: never the guest's 10 minutes.
    assert!(
        (status == 200 && body.starts_with("error ")) || status == 504,
        "{status} {body}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert_eq!(silent.connections(), 1);
    server.stop().await;
}

#[tokio::test]
async fn malformed_grants_are_invalid_settings() {
    let server = TestServer::start().await;
    for query in [
        "env=1BAD=x",
        "env=NO_EQUALS",
        "env=A=1,A=2",
        "allowed_hosts=http://example.com",
        "allowed_hosts=*",
        "allowed_hosts=example.com:0",
        "allowed_hosts=example.com/path",
    ] {
        let p = problem(
            server.deploy("hostile", HOSTILE, query).await,
            400,
            "invalid-settings",
        )
        .await;
        let key = query.split('=').next().unwrap();
        assert!(p["detail"].as_str().unwrap().contains(key), "{query}: {p}");
    }
    server.deploy_ok("hostile", HOSTILE, "").await;
    for body in [
        json!({"env": ["A-B=1"]}),
        json!({"env": ["A=\u{0}"]}),
        json!({"env": "A=1"}),
        json!({"env": [format!("BIG={}", "x".repeat(20 * 1024))]}),
        json!({"allowed_hosts": ["user@example.com"]}),
        json!({"allowed_hosts": ["example.com", "EXAMPLE.com"]}),
        json!({"allowed_hosts": [7]}),
    ] {
        problem(
            patch(&server, "hostile", body.clone()).await,
            400,
            "invalid-settings",
        )
        .await;
    }
    // Nothing was granted along the way.
    let f = json(server.get("/v1/functions/hostile").await, 200).await;
    assert_eq!(f["settings"]["env"], json!([]));
    assert_eq!(f["settings"]["allowed_hosts"], json!([]));
    server.stop().await;
}

/// Functions cannot be granted the host's own addresses or the networks
/// around it: not the platform's API on its loopback port, not a cloud's
/// metadata service, not private ranges; unless the operator allows a
/// range. A name that resolves to such an address is refused when the
/// function connects, before any connection is made.
#[tokio::test]
async fn internal_addresses_are_refused_unless_the_operator_allows_them() {
    let server = TestServer::start().await;
    let api_port = server.addr.port();
    server.deploy_ok("hostile", HOSTILE, "").await;
    for host in [
        format!("127.0.0.1:{api_port}"),
        "localhost".to_string(),
        format!("localhost:{api_port}"),
        "*.localhost".to_string(),
        "[::1]".to_string(),
        "[::ffff:127.0.0.1]:80".to_string(),
        "169.254.169.254".to_string(),
        "10.0.0.1".to_string(),
        "172.16.5.4:8080".to_string(),
        "192.168.1.1".to_string(),
        "100.64.0.1".to_string(),
        "0.0.0.0".to_string(),
        "[fe80::1]".to_string(),
        "[fd00::1]".to_string(),
        "224.0.0.1".to_string(),
    ] {
        let r = patch(&server, "hostile", json!({ "allowed_hosts": [host] })).await;
        let p = problem(r, 400, "invalid-settings").await;
        let detail = p["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("address, which functions may not reach"),
            "{host}: {detail}"
        );
        let r = server
            .deploy("hostile", HOSTILE, &format!("allowed_hosts={host}"))
            .await;
        problem(r, 400, "invalid-settings").await;
    }
    let f = json(server.get("/v1/functions/hostile").await, 200).await;
    assert_eq!(
        f["settings"]["allowed_hosts"],
        json!([]),
        "nothing was granted"
    );
    // Public addresses and names are grants like any other.
    let r = patch(
        &server,
        "hostile",
        json!({ "allowed_hosts": ["93.184.215.14", "api.example.com", "[2606:4700::1]:8443"] }),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());

    // A name that resolves to a loopback address (this machine's own name,
    // from its hosts file) is accepted as a name, and refused at connect
    // time: the guest gets destination-IP-prohibited and no connection is
    // made.
    let upstream = Upstream::start(false).await;
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let hostname = hostname.trim().to_ascii_lowercase();
    let internal = std::net::ToSocketAddrs::to_socket_addrs(&(hostname.as_str(), upstream.port))
        .map(|mut addrs| addrs.any(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    if internal && !hostname.is_empty() {
        let r = patch(
            &server,
            "hostile",
            json!({ "allowed_hosts": [format!("{hostname}:{}", upstream.port)] }),
        )
        .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        let url = format!(
            "/fn/hostile/outbound?url=http://{hostname}:{}/",
            upstream.port
        );
        assert_eq!(
            text(&server, &url).await,
            "error ErrorCode::DestinationIpProhibited"
        );
        assert_eq!(upstream.connections(), 0, "refused before connecting");
    } else {
        eprintln!(
            "skipped the connect-time part: this machine's name `{hostname}` does not resolve \
             to a loopback address (runtime::outbound's unit tests cover it with `localhost`)"
        );
    }
    server.stop().await;

    // The operator may open a range; then exactly that range is reachable.
    let server = TestServer::start_with(|c| {
        c.outbound.allowed_ranges = vec!["10.1.0.0/16".parse().unwrap()];
    })
    .await;
    server
        .deploy_ok("hostile", HOSTILE, "allowed_hosts=10.1.2.3:8080")
        .await;
    let r = patch(&server, "hostile", json!({ "allowed_hosts": ["10.2.0.1"] })).await;
    problem(r, 400, "invalid-settings").await;
    server.stop().await;

    // And a default that grants what the policy refuses stops the start.
    let dir = tempfile::tempdir().unwrap();
    let mut config = glia_e2e::test_config(dir.path());
    config.functions.allowed_hosts = vec!["127.0.0.1:8080".parse().unwrap()];
    let err = glia_host::Platform::open(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("functions.allowed_hosts"), "{err}");
}
