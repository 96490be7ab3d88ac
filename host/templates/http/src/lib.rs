//! `{{name}}`: a glia function.
//!
//! - `GET /?name=Ada` answers `{"message": "Hello, Ada!"}`;
//! - `POST /` with `{"name": "Ada"}` answers the same.
//!
//! Anything else gets an `application/problem+json` error with its status.

use glia_sdk::{Error, Method, Request, Response, handler};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Greet {
    name: String,
}

#[derive(Serialize)]
struct Greeting {
    message: String,
}

/// Called once per request, in a fresh instance.
#[handler]
fn handle(request: Request) -> Result<Response, Error> {
    if request.path() != "/" {
        return Err(Error::not_found(format!(
            "no endpoint at {}",
            request.path()
        )));
    }
    let name = match request.method() {
        Method::Get => request
            .query_param("name")
            .unwrap_or_else(|| "world".to_string()),
        Method::Post => request.json::<Greet>()?.name,
        _ => return Err(Error::method_not_allowed("GET, POST")),
    };
    Response::json(&Greeting {
        message: format!("Hello, {name}!"),
    })
}

// `cargo test` runs these natively: a handler is a plain function.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_query_or_body() {
        let response = handle(Request::get("/?name=Ada")).unwrap();
        assert_eq!(response.body(), br#"{"message":"Hello, Ada!"}"#);

        let request = Request::post("/")
            .with_json(&serde_json::json!({"name": "Bob"}))
            .unwrap();
        assert_eq!(
            handle(request).unwrap().body(),
            br#"{"message":"Hello, Bob!"}"#
        );
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        assert_eq!(handle(Request::get("/other")).unwrap_err().status(), 404);
        let bad_json = Request::post("/").with_body("{");
        assert_eq!(handle(bad_json).unwrap_err().status(), 400);
    }
}
