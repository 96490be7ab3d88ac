//! `hello`: the smallest glia function.
//!
//! Answers every method and path with `200 OK` and a JSON description of the
//! request it received:
//!
//! ```json
//! {"greeting":"Hello from glia!","method":"GET","path":"/some/path","query":"a=1","body":"","body_bytes":0}
//! ```
//!
//! `query` is the raw query string (empty when there is none) and `body` is the
//! request body decoded as UTF-8, with invalid sequences replaced. A `name`
//! query parameter personalises the greeting: `?name=Ada` gives
//! `"Hello, Ada!"`.

use glia_sdk::{Error, Request, Response, handler};
use serde::Serialize;

/// The answer, fields in this order.
#[derive(Serialize)]
struct Hello<'a> {
    greeting: String,
    method: &'a str,
    path: &'a str,
    query: &'a str,
    body: &'a str,
    body_bytes: usize,
}

#[handler]
fn hello(request: Request) -> Result<Response, Error> {
    let greeting = match request.query_param("name") {
        Some(name) => format!("Hello, {name}!"),
        None => "Hello from glia!".to_owned(),
    };
    let body = String::from_utf8_lossy(request.body());
    Response::json(&Hello {
        greeting,
        method: request.method().as_str(),
        path: request.path(),
        query: request.query(),
        body: &body,
        body_bytes: request.body().len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_request() {
        let response = hello(Request::post("/a?name=Ada&x=1").with_body("hi")).expect("answers");
        let body: serde_json::Value = response.json_body().expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "greeting": "Hello, Ada!", "method": "POST", "path": "/a",
                "query": "name=Ada&x=1", "body": "hi", "body_bytes": 2,
            })
        );
    }
}
