//! End-to-end tests: each starts a real glia server on `127.0.0.1:0`, deploys
//! real components over HTTP and calls them with a real HTTP client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

mod authoring;
mod billing;
mod capabilities;
mod control;
mod embed;
mod hostile;
mod invoke;
mod lifecycle;
mod limits;
mod models;
mod nn;
mod nn_probe;
mod observability;
mod scheduler;
mod security;
mod tenants;
mod torch;
mod validation;

use glia_e2e::reqwest::Response;
use serde_json::Value;

/// Asserts a problem+json response and returns its body.
pub async fn problem(response: Response, status: u16, kind: &str) -> Value {
    let got = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "status; body: {text}");
    assert_eq!(content_type, "application/problem+json", "body: {text}");
    let body: Value = serde_json::from_str(&text).expect("problem is JSON");
    assert_eq!(
        body["type"],
        format!("urn:glia:problem:{kind}"),
        "problem type; body: {text}"
    );
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

/// Reads a JSON body, asserting the status.
pub async fn json(response: Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "status; body: {text}");
    serde_json::from_str(&text).expect("JSON body")
}

#[test]
fn fixtures_are_all_tested() {
    // Every fixture crate the build compiled has a test module that uses it.
    for fixture in glia_e2e::FIXTURES.split(',') {
        assert!(
            matches!(fixture, "hostile" | "nn-probe"),
            "untested fixture `{fixture}`: add tests for it"
        );
    }
}
