//! Tenants, API keys and scopes: every route refuses the wrong key, one
//! tenant reaches nothing of another's, quotas hold, and one tenant's flood
//! does not starve another.

use std::time::{Duration, Instant};

use glia_e2e::reqwest::{Client, Method, StatusCode};
use glia_e2e::{DIGITS_ONNX, HOSTILE, TestServer, builtin, client_with_key, hello};
use serde_json::{Value, json};

/// A GET through `client`, answered with JSON.
async fn fetch(client: &Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn problem(response: glia_e2e::reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn kind(body: &Value) -> &str {
    body["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("urn:glia:problem:"))
        .unwrap_or("")
}

/// Sends `method path` with `body` through `client`.
async fn send(
    server: &TestServer,
    client: &Client,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> glia_e2e::reqwest::Response {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, server.url(path));
    if let Some(body) = body {
        request = request.body(body);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn keys_are_shown_once_stored_hashed_and_revoked_at_once() {
    let server = TestServer::start().await;
    let acme = server.create_tenant("acme").await;
    let response = server
        .client
        .post(server.url(&format!("/v1/tenants/{acme}/keys")))
        .json(&json!({"scopes": ["invoke", "read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    // 192 random bits, hex.
    assert!(key.starts_with("glia_") && key.len() >= 5 + 32, "{key}");
    assert_eq!(created["scopes"], json!(["invoke", "read"]));

    // Listing and reading never show the key again.
    let listed = server
        .get("/v1/tenants/acme/keys")
        .await
        .text()
        .await
        .unwrap();
    assert!(listed.contains(&id) && !listed.contains(&key), "{listed}");
    let one: Value = server
        .get(&format!("/v1/tenants/{acme}/keys/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], id.as_str());
    assert!(one.get("key").is_none());

    // At rest, only a hash.
    let db = std::fs::read(server.data_dir.join("glia.db")).unwrap();
    let wal = std::fs::read(server.data_dir.join("glia.db-wal")).unwrap_or_default();
    let contains = |hay: &[u8]| hay.windows(key.len()).any(|w| w == key.as_bytes());
    assert!(
        !contains(&db) && !contains(&wal),
        "the key is stored in clear"
    );

    // The key works for its scopes, then not at all once revoked.
    let client = client_with_key(Some(&key));
    let r = client.get(server.url("/v1/usage")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = problem(
        client
            .delete(server.url("/v1/functions/anything"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, kind(&body)),
        (StatusCode::FORBIDDEN, "insufficient-scope")
    );
    let r = server
        .client
        .delete(server.url(&format!("/v1/tenants/{acme}/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = problem(client.get(server.url("/v1/usage")).send().await.unwrap()).await;
    assert_eq!(
        (status, kind(&body)),
        (StatusCode::UNAUTHORIZED, "invalid-key")
    );

    // Bad requests get clear errors.
    let r = server
        .client
        .post(server.url(&format!("/v1/tenants/{acme}/keys")))
        .json(&json!({"scopes": ["root"]}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("root"), "{body}");
    let r = server
        .client
        .post(server.url("/v1/tenants"))
        .json(&json!({"name": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = server
        .client
        .post(server.url("/v1/tenants"))
        .json(&json!({"name": "Not A Name"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    server.stop().await;
}

/// Every route of the API (the router's own table), called with no key,
/// with a key holding each wrong scope, and with the right one.
#[tokio::test]
async fn every_route_refuses_a_missing_key_and_every_wrong_scope() {
    let server = TestServer::start().await;
    let tenant = server.create_tenant("routes").await;
    let deployer = client_with_key(Some(&server.create_key(&tenant, &["deploy"]).await));
    // The tenant's own things, for the paths.
    let r = send(
        &server,
        &deployer,
        "PUT",
        "/v1/functions/f",
        Some(hello().to_vec()),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = send(
        &server,
        &deployer,
        "PUT",
        "/v1/models/m",
        Some(DIGITS_ONNX.to_vec()),
    )
    .await;
    assert_eq!(r.status(), 201);
    let invoker = client_with_key(Some(&server.create_key(&tenant, &["invoke"]).await));
    let r = send(&server, &invoker, "GET", "/fn/f/", None).await;
    assert_eq!(r.status(), 200);
    let invocation = r.headers()["glia-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let spare = server.create_key(&tenant, &["read"]).await;
    let spare_id = {
        let keys: Value = server
            .get(&format!("/v1/tenants/{tenant}/keys"))
            .await
            .json()
            .await
            .unwrap();
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| spare.starts_with(k["prefix"].as_str().unwrap()))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut keyed = Vec::new();
    for scope in ["admin", "deploy", "invoke", "read"] {
        let key = server.create_key(&tenant, &[scope]).await;
        keyed.push((scope, client_with_key(Some(&key))));
    }
    let anonymous = client_with_key(None);

    let routes = glia_host::api::routes::ROUTES;
    assert!(routes.len() >= 20, "the table lists every route");
    for (method, template, scopes) in routes {
        let path = template
            .replace("{tenant}", &tenant)
            .replace("{name}", "f")
            .replace("{model}", "m")
            .replace("{id}", &invocation)
            .replace("{key}", &spare_id);
        let body = || match (*method, template.split('/').nth(2)) {
            ("PUT", Some("functions")) => Some(hello().to_vec()),
            ("PUT", Some("models")) => Some(DIGITS_ONNX.to_vec()),
            ("PATCH", Some("functions")) => Some(b"{}".to_vec()),
            ("PATCH", Some("tenants")) => Some(br#"{"quotas": {}}"#.to_vec()),
            ("POST", Some("tenants")) if template.ends_with("keys") => {
                Some(br#"{"scopes": ["read"]}"#.to_vec())
            }
            ("POST", Some("tenants")) => Some(br#"{"name": "another"}"#.to_vec()),
            _ => None,
        };
        let label = format!("{method} {template}");

        let r = send(&server, &anonymous, method, &path, body()).await;
        if scopes.is_empty() {
            assert_eq!(r.status(), 200, "{label} is open");
            continue;
        }
        let (status, body_json) = problem(r).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{label} without a key: {body_json}"
        );

        let bad = client_with_key(Some("glia_0000000000000000000000000000000000000000"));
        let (status, _) = problem(send(&server, &bad, method, &path, body()).await).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{label} with an unknown key"
        );

        for (scope, client) in &keyed {
            if scopes.contains(scope) {
                continue;
            }
            let (status, b) = problem(send(&server, client, method, &path, body()).await).await;
            assert_eq!(
                (status, kind(&b)),
                (StatusCode::FORBIDDEN, "insufficient-scope"),
                "{label} with only `{scope}`: {b}"
            );
        }
        // Nothing was refused for the right scope (what only the platform's
        // admin may do is its own, distinct refusal).
        let (scope, client) = keyed
            .iter()
            .find(|(s, _)| scopes.contains(s))
            .expect("a scope opens it");
        let (status, b) = problem(send(&server, client, method, &path, body()).await).await;
        assert!(
            status != StatusCode::UNAUTHORIZED
                && (status != StatusCode::FORBIDDEN || kind(&b) == "platform-admin-only"),
            "{label} with `{scope}`: {status} {b}"
        );
    }
    server.stop().await;
}

/// Tenant B, holding every scope, tries every operation on tenant A's
/// functions, models, invocations, usage, tenant and keys: each is not
/// found, and nothing of A's changes.
#[tokio::test]
async fn one_tenant_reaches_nothing_of_another() {
    let server = TestServer::start().await;
    let a = server.create_tenant("tenant-a").await;
    let b = server.create_tenant("tenant-b").await;
    let a_client = client_with_key(Some(
        &server
            .create_key(&a, &["admin", "deploy", "invoke", "read"])
            .await,
    ));
    let b_client = client_with_key(Some(
        &server
            .create_key(&b, &["admin", "deploy", "invoke", "read"])
            .await,
    ));

    // A's things: a function using A's model, a public function, an
    // invocation, a key.
    let r = send(
        &server,
        &a_client,
        "PUT",
        "/v1/models/digits",
        Some(DIGITS_ONNX.to_vec()),
    )
    .await;
    assert_eq!(r.status(), 201);
    let classify = builtin("classify-digits").to_vec();
    let r = send(
        &server,
        &a_client,
        "PUT",
        "/v1/functions/fa?models=digits",
        Some(classify.clone()),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = send(
        &server,
        &a_client,
        "PUT",
        "/v1/functions/open?public=true",
        Some(hello().to_vec()),
    )
    .await;
    assert_eq!(r.status(), 201);
    let digit = br#"{"pixels":[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]}"#;
    let r = send(&server, &a_client, "POST", "/fn/fa/", Some(digit.to_vec())).await;
    assert_eq!(r.status(), 200);
    let a_call = r.headers()["glia-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let a_key_id = {
        let keys: Value = fetch(&a_client, server.url(&format!("/v1/tenants/{a}/keys"))).await;
        keys["keys"][0]["id"].as_str().unwrap().to_string()
    };
    let snapshot = |client: Client| {
        let server_url = server.url.clone();
        async move {
            let get = |p: String| {
                let client = client.clone();
                let url = format!("{server_url}{p}");
                async move { client.get(url).send().await.unwrap().text().await.unwrap() }
            };
            let mut functions: Value =
                serde_json::from_str(&get("/v1/functions".into()).await).unwrap();
            for f in functions["functions"].as_array_mut().unwrap() {
                f.as_object_mut().unwrap().remove("state");
            }
            let model: Value =
                serde_json::from_str(&get("/v1/models/digits".into()).await).unwrap();
            let usage: Value = serde_json::from_str(&get("/v1/usage".into()).await).unwrap();
            (functions, model["versions"].clone(), usage["total"].clone())
        }
    };
    let before = snapshot(a_client.clone()).await;

    // The matrix: (method, path, body) as B, each must be 404.
    let cells: Vec<(&str, String, Option<Vec<u8>>)> = vec![
        ("GET", "/v1/functions/fa".into(), None),
        (
            "PATCH",
            "/v1/functions/fa".into(),
            Some(br#"{"timeout_ms": 1}"#.to_vec()),
        ),
        ("DELETE", "/v1/functions/fa".into(), None),
        ("GET", "/fn/fa/".into(), None),
        ("POST", "/fn/fa/".into(), Some(digit.to_vec())),
        ("GET", format!("/t/{a}/fn/fa/"), None),
        ("GET", "/t/tenant-a/fn/fa/".into(), None),
        ("GET", "/v1/models/digits".into(), None),
        ("DELETE", "/v1/models/digits".into(), None),
        ("DELETE", "/v1/models/digits?force=true".into(), None),
        ("GET", format!("/v1/invocations/{a_call}"), None),
        ("GET", format!("/v1/invocations/{a_call}/logs"), None),
        ("GET", format!("/v1/tenants/{a}"), None),
        ("GET", "/v1/tenants/tenant-a".into(), None),
        (
            "PATCH",
            format!("/v1/tenants/{a}"),
            Some(br#"{"quotas": {"max_functions": 1}}"#.to_vec()),
        ),
        ("DELETE", format!("/v1/tenants/{a}"), None),
        ("GET", format!("/v1/tenants/{a}/keys"), None),
        (
            "POST",
            format!("/v1/tenants/{a}/keys"),
            Some(br#"{"scopes": ["admin"]}"#.to_vec()),
        ),
        ("GET", format!("/v1/tenants/{a}/keys/{a_key_id}"), None),
        ("DELETE", format!("/v1/tenants/{a}/keys/{a_key_id}"), None),
    ];
    for (method, path, body) in cells {
        let (status, b_body) = problem(send(&server, &b_client, method, &path, body).await).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "B: {method} {path}: {b_body}"
        );
    }
    // Listings and usage show B only its own (nothing).
    let listed: Value = fetch(&b_client, server.url("/v1/functions")).await;
    assert_eq!(listed["functions"], json!([]));
    let listed: Value = fetch(&b_client, server.url("/v1/models")).await;
    assert_eq!(listed["models"], json!([]));
    let logs: Value = fetch(&b_client, server.url("/v1/functions/fa/logs")).await;
    assert_eq!(logs["logs"], json!([]), "{logs}");
    let (status, _) = problem(b_client.get(server.url("/metrics")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "metrics are the platform's");
    let usage: Value = fetch(&b_client, server.url("/v1/usage")).await;
    assert_eq!(usage["total"]["invocations"], 0, "{usage}");
    let tenants: Value = fetch(&b_client, server.url("/v1/tenants")).await;
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 1);
    assert_eq!(tenants["tenants"][0]["id"], b.as_str());
    // B cannot create tenants (only the platform's admin can).
    let (status, body) = problem(
        b_client
            .post(server.url("/v1/tenants"))
            .json(&json!({"name": "mine"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, kind(&body)),
        (StatusCode::FORBIDDEN, "platform-admin-only")
    );

    // Names are per tenant: B's `fa` is B's own and cannot reach A's model.
    let r = send(
        &server,
        &b_client,
        "PUT",
        "/v1/functions/fa?models=digits",
        Some(classify),
    )
    .await;
    assert_eq!(r.status(), 201, "B has its own namespace");
    let r = send(&server, &b_client, "POST", "/fn/fa/", Some(digit.to_vec())).await;
    assert!(r.status().is_client_error() || r.status().is_server_error());
    let text = r.text().await.unwrap();
    assert!(text.contains("digits"), "{text}");
    let r = send(&server, &b_client, "DELETE", "/v1/functions/fa", None).await;
    assert_eq!(r.status(), 200);

    // Nothing of A's changed, and A's key and calls still work.
    let after = snapshot(a_client.clone()).await;
    assert_eq!(before.0, after.0, "A's functions changed");
    assert_eq!(before.1, after.1, "A's model changed");
    assert_eq!(before.2, after.2, "A's usage changed");
    let r = send(
        &server,
        &a_client,
        "GET",
        &format!("/v1/invocations/{a_call}"),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);

    // A public function is callable by anyone, at its tenant's URL, billed
    // to its owner.
    let r = send(
        &server,
        &client_with_key(None),
        "GET",
        "/t/tenant-a/fn/open/",
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = send(
        &server,
        &b_client,
        "GET",
        &format!("/t/{a}/fn/open/x"),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let public_call = r.headers()["glia-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let (status, _) = problem(
        send(
            &server,
            &b_client,
            "GET",
            &format!("/v1/invocations/{public_call}"),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the record is A's");
    let r = send(
        &server,
        &a_client,
        "GET",
        &format!("/v1/invocations/{public_call}"),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    // Without a key, a private function and a missing one look the same.
    for path in [
        "/t/tenant-a/fn/fa/",
        "/t/tenant-a/fn/nothing/",
        "/t/no-such-tenant/fn/x/",
    ] {
        let (status, body) =
            problem(send(&server, &client_with_key(None), "GET", path, None).await).await;
        assert_eq!(
            (status, kind(&body)),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{path}"
        );
    }

    // A tenant that still owns things is not deleted; an empty one is.
    let r = server
        .client
        .delete(server.url(&format!("/v1/tenants/{a}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = server
        .client
        .delete(server.url(&format!("/v1/tenants/{b}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = problem(b_client.get(server.url("/v1/usage")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "its keys went with it");
    server.stop().await;
}

async fn set_quotas(server: &TestServer, tenant: &str, quotas: Value) {
    let r = server
        .client
        .patch(server.url(&format!("/v1/tenants/{tenant}")))
        .json(&json!({ "quotas": quotas }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn quotas_cap_rate_concurrency_storage_and_spend() {
    let server = TestServer::start().await;
    let t = server.create_tenant("quota").await;
    let client = client_with_key(Some(
        &server.create_key(&t, &["deploy", "invoke", "read"]).await,
    ));
    let r = send(
        &server,
        &client,
        "PUT",
        "/v1/functions/slow?queue_timeout_ms=10000",
        Some(HOSTILE.to_vec()),
    )
    .await;
    assert_eq!(r.status(), 201);

    // Requests per second: a bucket of 2, then 429 with Retry-After.
    set_quotas(&server, &t, json!({"requests_per_second": 2, "burst": 0})).await;
    for _ in 0..2 {
        assert_eq!(
            send(&server, &client, "GET", "/fn/slow/ok", None)
                .await
                .status(),
            200
        );
    }
    let r = send(&server, &client, "GET", "/fn/slow/ok", None).await;
    assert!(r.headers().contains_key("retry-after"));
    let (status, body) = problem(r).await;
    assert_eq!(
        (status, kind(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "rate-limited")
    );
    set_quotas(
        &server,
        &t,
        json!({"requests_per_second": null, "burst": null}),
    )
    .await;

    // Concurrency: one call at a time for this tenant.
    set_quotas(&server, &t, json!({"max_concurrency": 1})).await;
    let first = {
        let client = client.clone();
        let url = server.url("/fn/slow/sleep?ms=1000");
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = problem(send(&server, &client, "GET", "/fn/slow/ok", None).await).await;
    assert_eq!(
        (status, kind(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "tenant-concurrency-limit")
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(
        send(&server, &client, "GET", "/fn/slow/ok", None)
            .await
            .status(),
        200
    );
    // Another tenant is not affected by this one's quota.
    assert_eq!(server.get("/fn/nothing/").await.status(), 404);
    set_quotas(&server, &t, json!({"max_concurrency": null})).await;

    // Functions and stored bytes.
    set_quotas(&server, &t, json!({"max_functions": 2})).await;
    let r = send(
        &server,
        &client,
        "PUT",
        "/v1/functions/second",
        Some(hello().to_vec()),
    )
    .await;
    assert_eq!(r.status(), 201);
    let (status, body) = problem(
        send(
            &server,
            &client,
            "PUT",
            "/v1/functions/third",
            Some(hello().to_vec()),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, kind(&body)),
        (StatusCode::FORBIDDEN, "quota-exceeded"),
        "{body}"
    );
    // A new version of an existing function is not a new function.
    let r = send(
        &server,
        &client,
        "PUT",
        "/v1/functions/second",
        Some(builtin("classify-digits").to_vec()),
    )
    .await;
    assert_eq!(r.status(), 201);
    set_quotas(
        &server,
        &t,
        json!({"max_functions": null, "max_stored_mb": 1}),
    )
    .await;
    let (status, body) = problem(
        send(
            &server,
            &client,
            "PUT",
            "/v1/functions/big",
            Some(builtin("embed-text").to_vec()),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, kind(&body)),
        (StatusCode::FORBIDDEN, "quota-exceeded"),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("max_stored_mb"),
        "{body}"
    );
    set_quotas(&server, &t, json!({"max_models": 1, "max_stored_mb": null})).await;
    assert_eq!(
        send(
            &server,
            &client,
            "PUT",
            "/v1/models/one",
            Some(DIGITS_ONNX.to_vec())
        )
        .await
        .status(),
        201
    );
    let (status, body) = problem(
        send(
            &server,
            &client,
            "PUT",
            "/v1/models/two",
            Some(DIGITS_ONNX.to_vec()),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, kind(&body)),
        (StatusCode::FORBIDDEN, "quota-exceeded"),
        "{body}"
    );

    // Spend: a call goes through while the month's spend and the calls in
    // flight leave room for its worst case (here 103: 1.1 s at 128 MiB,
    // computing, inferring and loading a model all along), then calls get
    // 429 with their own problem type.
    let r = send(
        &server,
        &client,
        "PATCH",
        "/v1/functions/slow",
        Some(br#"{"timeout_ms": 100}"#.to_vec()),
    )
    .await;
    assert_eq!(r.status(), 200);
    let usage: Value = fetch(&client, server.url("/v1/usage")).await;
    let before = usage["total"]["cost_micros"].as_u64().unwrap();
    let cap = before + 110;
    set_quotas(&server, &t, json!({"monthly_spend_cap": cap})).await;
    let mut spent = 0u64;
    let mut refused = None;
    for _ in 0..20 {
        let r = send(&server, &client, "GET", "/fn/slow/ok", None).await;
        if r.status() == 200 {
            spent += r.headers()["glia-cost"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap();
            continue;
        }
        refused = Some(problem(r).await);
        break;
    }
    let (status, body) = refused.expect("the cap was reached");
    assert_eq!(
        (status, kind(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "spend-cap-reached"),
        "{body}"
    );
    let usage: Value = fetch(&client, server.url("/v1/usage")).await;
    let total = usage["total"]["cost_micros"].as_u64().unwrap();
    assert!(
        spent > 0 && spent <= total && total <= cap,
        "spent {spent}, ledger {total}, cap {cap}"
    );
    let tenant: Value = server
        .get(&format!("/v1/tenants/{t}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tenant["quotas"]["monthly_spend_cap"], cap);
    assert_eq!(tenant["usage"]["spent_this_month"].as_u64(), Some(total));
    // Raising the cap lets calls through again.
    set_quotas(&server, &t, json!({"monthly_spend_cap": null})).await;
    assert_eq!(
        send(&server, &client, "GET", "/fn/slow/ok", None)
            .await
            .status(),
        200
    );
    server.stop().await;
}

/// With the platform at its limit, a tenant that queued many calls does
/// not make another tenant wait behind all of them: freed slots go to the
/// waiting tenants in turn.
#[tokio::test]
async fn a_flooding_tenant_does_not_starve_another() {
    let server = TestServer::start_with(|c| c.scheduler.max_in_flight = 2).await;
    let mut clients = Vec::new();
    for name in ["flood", "calm"] {
        let t = server.create_tenant(name).await;
        let client = client_with_key(Some(&server.create_key(&t, &["deploy", "invoke"]).await));
        let r = send(
            &server,
            &client,
            "PUT",
            "/v1/functions/work?queue_timeout_ms=60000",
            Some(HOSTILE.to_vec()),
        )
        .await;
        assert_eq!(r.status(), 201);
        clients.push(client);
    }
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let call = |client: Client, who: &'static str| {
        let url = server.url("/fn/work/sleep?ms=300");
        let finished = finished.clone();
        tokio::spawn(async move {
            let status = client.get(url).send().await.unwrap().status();
            finished.lock().unwrap().push(who);
            status
        })
    };
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..16 {
        calls.push(call(clients[0].clone(), "flood"));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..2 {
        calls.push(call(clients[1].clone(), "calm"));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    let order = finished.lock().unwrap().clone();
    let last_calm = order.iter().rposition(|w| *w == "calm").unwrap();
    let flood_before = order[..last_calm].iter().filter(|w| **w == "flood").count();
    // In arrival order all 16 would finish first; in turn, at most the two
    // running and two more (plus scheduling jitter).
    assert!(
        flood_before <= 8,
        "calm waited behind {flood_before} flood calls: {order:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300 * 9),
        "the platform limit held"
    );
    server.stop().await;
}

#[tokio::test]
async fn single_user_mode_needs_no_key() {
    let server = TestServer::start_with(|c| c.auth.enabled = false).await;
    let anonymous = client_with_key(None);
    let r = send(
        &server,
        &anonymous,
        "PUT",
        "/v1/functions/hello",
        Some(hello().to_vec()),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = send(&server, &anonymous, "GET", "/fn/hello/", None).await;
    assert_eq!(r.status(), 200);
    let r = send(&server, &anonymous, "GET", "/v1/usage", None).await;
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn uploads_are_rate_limited_per_tenant_before_their_bodies_are_read() {
    let server = TestServer::start().await;
    let t = server.create_tenant("uploader").await;
    let client = client_with_key(Some(&server.create_key(&t, &["deploy"]).await));
    set_quotas(&server, &t, json!({"uploads_per_minute": 3})).await;
    for i in 0..3 {
        let path = format!("/v1/functions/f{i}");
        let r = send(&server, &client, "PUT", &path, Some(hello().to_vec())).await;
        assert_eq!(r.status(), 201, "upload {i}");
    }
    // The fourth upload of the minute, a function's or a model's, is
    // refused with when to come back.
    for path in ["/v1/functions/f3", "/v1/models/digits"] {
        let r = send(&server, &client, "PUT", path, Some(DIGITS_ONNX.to_vec())).await;
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=20).contains(&retry), "Retry-After {retry}");
        let (status, body) = problem(r).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{path}: {body}");
        assert_eq!(kind(&body), "upload-rate-limited", "{body}");
        assert_eq!(body["uploads_per_minute"], 3);
    }
    // Another tenant uploads as it likes.
    server.deploy_ok("mine", hello(), "").await;
    server.stop().await;
}

/// The files under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn deleted_components_are_collected_and_shared_ones_kept() {
    let server = TestServer::start().await;
    let (sources, artifacts) = (
        server.data_dir.join("sources"),
        server.data_dir.join("artifacts"),
    );
    let b = server.create_tenant("other").await;
    let b_client = client_with_key(Some(&server.create_key(&b, &["deploy"]).await));
    server.deploy_ok("a", hello(), "").await;
    server.deploy_ok("c", HOSTILE, "").await;
    let r = send(
        &server,
        &b_client,
        "PUT",
        "/v1/functions/b",
        Some(hello().to_vec()),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!((files_under(&sources), files_under(&artifacts)), (2, 2));

    let delete = |client: Client, name: &'static str| {
        let server = &server;
        async move {
            let r = send(
                server,
                &client,
                "DELETE",
                &format!("/v1/functions/{name}"),
                None,
            )
            .await;
            assert_eq!(r.status(), 200, "deleting {name}");
        }
    };
    delete(server.client.clone(), "c").await;
    assert_eq!((files_under(&sources), files_under(&artifacts)), (1, 1));
    // Another tenant's function holds hello's bytes: they stay...
    delete(server.client.clone(), "a").await;
    assert_eq!((files_under(&sources), files_under(&artifacts)), (1, 1));
    // ...until it goes too, and nothing is counted against anyone.
    delete(b_client.clone(), "b").await;
    assert_eq!((files_under(&sources), files_under(&artifacts)), (0, 0));
    let tenant = fetch(&server.client, server.url(&format!("/v1/tenants/{b}"))).await;
    assert_eq!(tenant["usage"]["stored_bytes"], 0, "{tenant}");

    // The same bytes deploy again (compiled anew) and answer.
    let r = server.deploy("a", hello(), "").await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["compiled"], true);
    assert_eq!(server.get("/fn/a/").await.status(), 200);

    // What a crash left behind, no version holding it, goes at the next
    // start; what a version holds stays.
    let orphan = "0f".repeat(32);
    std::fs::write(sources.join("sha256").join(format!("{orphan}.wasm")), b"x").unwrap();
    let engine_dir = std::fs::read_dir(&artifacts)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(engine_dir.join(format!("{orphan}.cwasm")), b"x").unwrap();
    assert_eq!((files_under(&sources), files_under(&artifacts)), (2, 2));
    let server = server.restart().await;
    assert_eq!((files_under(&sources), files_under(&artifacts)), (1, 1));
    assert_eq!(server.get("/fn/a/").await.status(), 200);
    server.stop().await;
}
