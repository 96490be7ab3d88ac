//! Outgoing `wasi:http` requests: refused unless the function's
//! `allowed_hosts` covers their authority, and then sent to an address the
//! platform's [`AddressPolicy`] permits, with timeouts cut at the
//! invocation's deadline.
//!
//! The check runs in the host call (`outgoing-handler.handle`), on the
//! request the guest built; the guest never sees a socket. Name resolution
//! and the connection happen on the host, and the addresses a name resolves
//! to are checked before connecting, so an allowed name that resolves to
//! the host itself or its network (DNS rebinding) is refused with
//! `destination-IP-prohibited`. The sender is wasmtime-wasi-http's default
//! one with that check added: HTTP/1.1 over TCP, TLS with the webpki roots.

use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::capabilities::{self, AddressPolicy, HostPattern};
use crate::telemetry::trace::TraceHeaders;

/// The body-completion future wasmtime-wasi-http hands around.
type IoFuture = Box<dyn Future<Output = wasmtime_wasi_http::Result<(), HttpError>> + Send>;

/// What [`WasiHttpHooks::send_request`] returns.
type SendFuture = Box<
    dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>> + Send,
>;

/// The wasi-http hooks of one invocation.
pub(crate) struct Outbound {
    allowed: Vec<HostPattern>,
    addresses: Arc<AddressPolicy>,
    deadline: Instant,
    /// The call's trace context (`traceparent`), which every request leaving
    /// on the call's behalf carries.
    trace: TraceHeaders,
}

impl Outbound {
    /// Requests may go where `allowed` says (nowhere when empty), to
    /// addresses `addresses` permits, until `deadline`, carrying `trace`.
    pub(crate) fn new(
        allowed: Vec<HostPattern>,
        addresses: Arc<AddressPolicy>,
        deadline: Instant,
        trace: TraceHeaders,
    ) -> Self {
        Self {
            allowed,
            addresses,
            deadline,
            trace,
        }
    }

    pub(crate) fn set_trace(&mut self, trace: TraceHeaders) {
        self.trace = trace;
    }

    /// The guest's timeouts, each cut to the time left before the deadline.
    fn options(&self, asked: Option<RequestOptions>) -> Option<Timeouts> {
        let left = self.deadline.checked_duration_since(Instant::now())?;
        let asked = asked.unwrap_or_default();
        let cut = |timeout: Option<Duration>| timeout.map_or(left, |t| t.min(left));
        Some(Timeouts {
            connect: cut(asked.connect_timeout),
            first_byte: cut(asked.first_byte_timeout),
            // tokio's interval refuses a zero period.
            between_bytes: cut(asked.between_bytes_timeout).max(Duration::from_nanos(1)),
        })
    }
}

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        self.trace.apply(request.headers_mut());
        if !capabilities::allows(&self.allowed, request.uri()) {
            tracing::debug!(uri = %request.uri(), "outgoing request denied");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let Some(timeouts) = self.options(options) else {
            return Box::new(async { Err(HttpError::ConnectionTimeout) });
        };
        let addresses = self.addresses.clone();
        Box::new(async move {
            let (response, io) = send(request, &addresses, timeouts).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as IoFuture,
            ))
        })
    }

    // The guest's network failures are its own business: reported to it,
    // logged at debug level only.

    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> ErrorCode {
        tracing::debug!(error = %err, "outgoing request failed");
        ErrorCode::HttpProtocolError
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> ErrorCode {
        tracing::debug!(error = %err, "outgoing connection failed");
        ErrorCode::ConnectionRefused
    }

    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> ErrorCode {
        tracing::debug!(error = %err, "outgoing TLS failed");
        ErrorCode::TlsProtocolError
    }
}

/// One request's timeouts.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

/// A stream the HTTP client can run on: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Sends `request` (an allowed one) over HTTP/1.1 to a permitted address of
/// its host; returns the response and the future that drives the
/// connection to its end.
async fn send(
    mut request: http::Request<WasiBody>,
    addresses: &AddressPolicy,
    timeouts: Timeouts,
) -> Result<
    (
        http::Response<ResponseBody>,
        impl Future<Output = Result<(), HttpError>> + Send + 'static,
    ),
    HttpError,
> {
    let uri = request.uri();
    let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
    let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host = authority.host().to_string();
    let stream = connect(&host, port, addresses, timeouts.connect).await?;
    let stream: Box<dyn Stream> = if tls {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = server_name(&host)?;
        let stream = tokio::time::timeout(timeouts.connect, connector.connect(name, stream))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(HttpError::Tls)?;
        Box::new(stream)
    } else {
        Box::new(stream)
    };
    let (mut sender, connection) = tokio::time::timeout(
        timeouts.connect,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;

    // The request carries scheme and authority; on the wire only a proxy
    // takes them, so the target becomes the path and query.
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() =
        http::Uri::try_from(target).map_err(|_| HttpError::HttpRequestUriInvalid)?;

    let sending = async move {
        let response = tokio::time::timeout(timeouts.first_byte, sender.send_request(request))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)??;
        let mut timer = tokio::time::interval(timeouts.between_bytes);
        timer.reset();
        Ok::<_, HttpError>(response.map(|incoming| ResponseBody { incoming, timer }))
    };
    let mut sending = pin!(sending);
    let mut connection = Some(connection);
    // Wait for the response while driving the connection.
    let response = std::future::poll_fn(|cx| match sending.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(result),
        Poll::Pending => {
            let Some(conn) = connection.as_mut() else {
                return Poll::Pending;
            };
            let done = ready!(Pin::new(conn).poll(cx));
            connection = None;
            match done {
                Ok(()) => sending.as_mut().poll(cx),
                Err(e) => Poll::Ready(Err(HttpError::from(e))),
            }
        }
    })
    .await?;
    let finish = async move {
        let Some(conn) = connection else {
            return Ok(());
        };
        conn.await.map_err(|e| {
            if e.is_timeout() {
                HttpError::HttpResponseTimeout
            } else {
                HttpError::from(e)
            }
        })
    };
    Ok((response, finish))
}

/// Connects to `host`:`port` (an IP literal, or a name resolved here) at an
/// address `addresses` permits, trying each permitted address in the order
/// the resolver gave them. A host whose every address is refused is
/// `destination-IP-prohibited`, and no connection is attempted.
async fn connect(
    host: &str,
    port: u16,
    addresses: &AddressPolicy,
    timeout: Duration,
) -> Result<TcpStream, HttpError> {
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let resolved: Vec<SocketAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| HttpError::DnsTimeout)?
            .map_err(|_| HttpError::DestinationNotFound)?
            .collect(),
    };
    let permitted: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|a| addresses.permits(a.ip()))
        .collect();
    if permitted.is_empty() {
        tracing::debug!(
            host,
            ?resolved,
            "outgoing connection refused: internal address"
        );
        return Err(if resolved.is_empty() {
            HttpError::DestinationNotFound
        } else {
            HttpError::DestinationIpProhibited
        });
    }
    let mut last = None;
    for address in permitted {
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(HttpError::Connect(e)),
            Err(_) => return Err(HttpError::ConnectionTimeout),
        }
    }
    Err(last.unwrap_or(HttpError::DestinationUnavailable))
}

/// The name a TLS server must prove: the host name, or the address.
fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, HttpError> {
    use rustls::pki_types::ServerName;
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    ServerName::try_from(host.to_string()).map_err(|_| HttpError::HttpRequestUriInvalid)
}

/// A response body that fails when no bytes arrive for too long.
struct ResponseBody {
    incoming: hyper::body::Incoming,
    timer: tokio::time::Interval,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                HttpError::HttpResponseTimeout
            } else {
                HttpError::from(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timer.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timer.poll_tick(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused_before_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let closed = AddressPolicy::default();
        // `localhost` comes from the hosts file: resolved here, refused.
        for host in ["localhost", "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"] {
            let err = connect(host, port, &closed, SECOND)
                .await
                .expect_err("internal");
            assert!(
                matches!(err, HttpError::DestinationIpProhibited),
                "{host}: {err}"
            );
        }
        let loopback = AddressPolicy::new(vec![
            "127.0.0.0/8".parse().expect("range"),
            "::1/128".parse().expect("range"),
        ]);
        connect("localhost", port, &loopback, SECOND)
            .await
            .expect("allowed by the operator");
        connect("127.0.0.1", port, &loopback, SECOND)
            .await
            .expect("allowed by the operator");
    }

    #[test]
    fn tls_names_are_the_host_or_its_address() {
        use rustls::pki_types::ServerName;
        assert_eq!(
            server_name("example.com").expect("name"),
            ServerName::try_from("example.com").expect("name")
        );
        assert_eq!(
            server_name("[::1]").expect("v6"),
            ServerName::from(std::net::Ipv6Addr::LOCALHOST)
        );
        assert!(server_name("bad name").is_err());
    }
}
