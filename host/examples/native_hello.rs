//! Native baseline for `scripts/bench-rps.sh`: a minimal hyper HTTP/1.1 server
//! that answers every request with `200 ok` (`text/plain`).
//!
//! It uses the same tokio runtime flavor as `glia serve` (multi-threaded; set
//! `TOKIO_WORKER_THREADS` to size it), so the two are measured on equal terms.
//!
//! ```text
//! cargo run --release -p glia-host --example native_hello -- 127.0.0.1:8090
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn ok(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!(
        "native_hello listening on http://{}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let served = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(ok))
                .await;
            if let Err(error) = served {
                eprintln!("connection error: {error}");
            }
        });
    }
}
