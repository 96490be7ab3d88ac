//! What a function may reach beyond its sandbox.
//!
//! A guest starts with no ambient authority: no preopened directories, no
//! sockets, an empty environment, stdio discarded and every outgoing HTTP
//! request refused. Two function settings grant more, each explicitly and
//! narrowly:
//!
//! - `env`: environment variables, as `NAME=VALUE` entries;
//! - `allowed_hosts`: the authorities outgoing `wasi:http` requests may go
//!   to (`host`, `host:port`, `*.example.com[:port]`).
//!
//! The values are parsed and checked once, whenever a setting is read (an
//! upload's query string, a `PATCH`, `platform.toml`, the metadata store),
//! so that an invocation only copies what is already known to be valid. The
//! checks against them happen inside the host call that uses them (the
//! wasi-http hook in `runtime`), never in the guest.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest environment variable name.
pub const MAX_ENV_NAME_LEN: usize = 128;
/// Most bytes all of a function's `NAME=VALUE` entries may take together.
pub const MAX_ENV_BYTES: usize = 16 * 1024;
/// Longest `allowed_hosts` entry (a 253-byte DNS name, a wildcard and a port).
pub const MAX_HOST_PATTERN_LEN: usize = 263;
/// Longest DNS name.
const MAX_DNS_NAME_LEN: usize = 253;
/// Longest DNS label.
const MAX_DNS_LABEL_LEN: usize = 63;
/// The default port of `http`.
const HTTP_PORT: u16 = 80;
/// The default port of `https`.
const HTTPS_PORT: u16 = 443;

/// Why a grant is malformed. The text names the entry (shortened) and the
/// rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidGrant {
    #[error(
        "`{0}` is not NAME=VALUE with NAME of letters, digits and '_' (not starting with a digit, at most {MAX_ENV_NAME_LEN} bytes)"
    )]
    EnvEntry(String),
    #[error("the value of `{0}` contains a NUL character")]
    EnvValue(String),
    #[error("`{0}` is set twice")]
    EnvDuplicate(String),
    #[error("the variables take {0} bytes, more than the limit of {MAX_ENV_BYTES}")]
    EnvTooLarge(usize),
    #[error(
        "`{0}` is not a host pattern: use host, host:port, *.domain or *.domain:port (an IPv4 address, a DNS name, or an IPv6 address in brackets; no scheme, path or user)"
    )]
    Host(String),
    #[error("`{0}` is listed twice")]
    HostDuplicate(String),
    #[error(
        "`{entry}` is a {kind} address, which functions may not reach (the operator can allow \
         ranges in [outbound] allowed_ranges)"
    )]
    InternalAddress { entry: String, kind: &'static str },
}

/// Shortens an input for an error message.
fn shown(text: &str) -> String {
    const SHOWN_CHARS: usize = 80;
    let mut short: String = text.chars().take(SHOWN_CHARS).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// One environment variable a function is given: `NAME=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvVar {
    name: String,
    value: String,
}

impl EnvVar {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// Bytes of `NAME=VALUE`.
    fn len(&self) -> usize {
        self.name.len() + 1 + self.value.len()
    }
}

impl FromStr for EnvVar {
    type Err = InvalidGrant;

    fn from_str(entry: &str) -> Result<Self, InvalidGrant> {
        let bad = || InvalidGrant::EnvEntry(shown(entry));
        let (name, value) = entry.split_once('=').ok_or_else(bad)?;
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok
            || name.len() > MAX_ENV_NAME_LEN
            || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(bad());
        }
        if value.contains('\0') {
            return Err(InvalidGrant::EnvValue(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            value: value.to_string(),
        })
    }
}

impl TryFrom<String> for EnvVar {
    type Error = InvalidGrant;

    fn try_from(entry: String) -> Result<Self, InvalidGrant> {
        entry.parse()
    }
}

impl From<EnvVar> for String {
    fn from(var: EnvVar) -> String {
        format!("{}={}", var.name, var.value)
    }
}

/// Checks a whole `env` setting: no name twice, and at most
/// [`MAX_ENV_BYTES`] in all.
pub fn check_env(vars: &[EnvVar]) -> Result<(), InvalidGrant> {
    let total: usize = vars.iter().map(EnvVar::len).sum();
    if total > MAX_ENV_BYTES {
        return Err(InvalidGrant::EnvTooLarge(total));
    }
    for (i, var) in vars.iter().enumerate() {
        if vars.iter().take(i).any(|earlier| earlier.name == var.name) {
            return Err(InvalidGrant::EnvDuplicate(var.name.clone()));
        }
    }
    Ok(())
}

/// Which hosts a pattern covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hosts {
    /// Exactly this host (lowercase; an IPv6 address keeps its brackets).
    Exact(String),
    /// Any name ending in this suffix (lowercase, with its leading dot), not
    /// the suffix's own domain.
    Subdomains(String),
}

/// One `allowed_hosts` entry: `host`, `host:port`, `*.domain` or
/// `*.domain:port`. Without a port it allows the scheme's default port (80
/// for `http`, 443 for `https`) only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    text: String,
    hosts: Hosts,
    port: Option<u16>,
}

impl HostPattern {
    /// Whether a request to `host` on `port` is covered; `default_port` is
    /// the default port of the request's scheme.
    fn covers(&self, host: &str, port: u16, default_port: u16) -> bool {
        if port != self.port.unwrap_or(default_port) {
            return false;
        }
        match &self.hosts {
            Hosts::Exact(exact) => host.eq_ignore_ascii_case(exact),
            Hosts::Subdomains(suffix) => host
                .len()
                .checked_sub(suffix.len())
                .filter(|&start| start > 0)
                .and_then(|start| host.get(start..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix)),
        }
    }
}

impl FromStr for HostPattern {
    type Err = InvalidGrant;

    fn from_str(text: &str) -> Result<Self, InvalidGrant> {
        let bad = || InvalidGrant::Host(shown(text));
        if text.len() > MAX_HOST_PATTERN_LEN {
            return Err(bad());
        }
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (host, port) = split_port(rest).ok_or_else(bad)?;
        let host = host.to_ascii_lowercase();
        let literal = is_ip_literal(&host);
        if !((literal && !wildcard) || is_dns_name(&host)) {
            return Err(bad());
        }
        let hosts = if wildcard {
            Hosts::Subdomains(format!(".{host}"))
        } else {
            Hosts::Exact(host)
        };
        Ok(Self {
            text: text.to_string(),
            hosts,
            port,
        })
    }
}

/// Splits `host[:port]` (`[v6]:port` for IPv6); `None` when the port is not
/// 1 to 65535 or a bare IPv6 address is not in brackets.
fn split_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if text.starts_with('[') {
        let end = text.find(']')?;
        let (host, after) = text.split_at(end + 1);
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(port.parse::<u16>().ok().filter(|&p| p != 0)?)
        }
    };
    Some((host, port))
}

/// An IPv4 address, or an IPv6 address in brackets.
fn is_ip_literal(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    host.parse::<Ipv4Addr>().is_ok()
}

/// A DNS name of letters, digits and hyphens whose last label is not all
/// digits (so that nothing a resolver would read as an address slips in).
fn is_dns_name(host: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=MAX_DNS_LABEL_LEN).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    host.len() <= MAX_DNS_NAME_LEN
        && host.split('.').all(label_ok)
        && host
            .rsplit('.')
            .next()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

impl TryFrom<String> for HostPattern {
    type Error = InvalidGrant;

    fn try_from(text: String) -> Result<Self, InvalidGrant> {
        text.parse()
    }
}

impl From<HostPattern> for String {
    fn from(pattern: HostPattern) -> String {
        pattern.text
    }
}

/// Checks a whole `allowed_hosts` setting (each entry is checked when
/// read): no entry twice.
pub fn check_hosts(patterns: &[HostPattern]) -> Result<(), InvalidGrant> {
    for (i, pattern) in patterns.iter().enumerate() {
        if patterns
            .iter()
            .take(i)
            .any(|earlier| earlier.hosts == pattern.hosts && earlier.port == pattern.port)
        {
            return Err(InvalidGrant::HostDuplicate(shown(&pattern.text)));
        }
    }
    Ok(())
}

/// Whether an outgoing request to `uri` goes to a host `allowed` covers. A
/// request without an authority, with user information in it, or with a
/// scheme other than `http` and `https` is never allowed.
pub fn allows(allowed: &[HostPattern], uri: &http::Uri) -> bool {
    let Some(authority) = uri.authority() else {
        return false;
    };
    if authority.as_str().contains('@') {
        return false;
    }
    let default_port = match uri.scheme_str() {
        Some("http") => HTTP_PORT,
        Some("https") => HTTPS_PORT,
        _ => return false,
    };
    let port = authority.port_u16().unwrap_or(default_port);
    allowed
        .iter()
        .any(|pattern| pattern.covers(authority.host(), port, default_port))
}

/// Where outgoing connections may go, whatever a function's
/// `allowed_hosts` says: never to the host itself or to the networks around
/// it (loopback, private, shared, link-local, multicast, unspecified and
/// reserved addresses, and IPv6 addresses that embed such an IPv4 address),
/// unless the operator lists their ranges in `[outbound] allowed_ranges`.
/// Otherwise a tenant could call the platform's own API from inside, reach
/// a cloud's metadata service (`169.254.169.254`), or probe the operator's
/// internal network.
///
/// It is checked twice: when a setting names an address literally (or a
/// `localhost` name), and at connect time on every address a name resolves
/// to, so a name that resolves somewhere internal (DNS rebinding) is
/// refused too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed: Vec<ipnet::IpNet>,
}

impl AddressPolicy {
    /// Internal addresses in `allowed` are reachable; the rest stay refused.
    pub fn new(allowed: Vec<ipnet::IpNet>) -> Self {
        Self { allowed }
    }

    /// Whether an outgoing connection may go to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        internal(ip).is_none() || self.allowed.iter().any(|range| range.contains(&ip))
    }

    /// Refuses an `allowed_hosts` entry naming an address (or a `localhost`
    /// name) the policy does not permit: the grant could never be used, and
    /// asking for it is a mistake worth saying.
    pub fn check_pattern(&self, pattern: &HostPattern) -> Result<(), InvalidGrant> {
        let host = match &pattern.hosts {
            Hosts::Exact(host) | Hosts::Subdomains(host) => host.trim_start_matches('.'),
        };
        let refused = |kind: &'static str| {
            Err(InvalidGrant::InternalAddress {
                entry: shown(&pattern.text),
                kind,
            })
        };
        if host == "localhost" || host.ends_with(".localhost") {
            let loopback = [
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ];
            if !loopback.iter().all(|ip| self.permits(*ip)) {
                return refused("loopback");
            }
            return Ok(());
        }
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>()
            && let Some(kind) = internal(ip)
            && !self.permits(ip)
        {
            return refused(kind);
        }
        Ok(())
    }
}

/// What kind of internal address `ip` is, or `None` for a public one.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified",
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (100, 64..=127, _) => "shared",
        (169, 254, _) => "link-local",
        (192, 0, 0) | (198, 18..=19, _) => "reserved",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64
    // (64:ff9b::/96) and 6to4 (2002::/16) addresses reach an IPv4 address.
    let s = ip.segments();
    let embedded = match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => Some((hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some((hi, lo)),
        [0x2002, hi, lo, ..] => Some((hi, lo)),
        _ => None,
    };
    if let Some((hi, lo)) = embedded {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        return internal_v4(Ipv4Addr::new(a, b, c, d));
    }
    Some(match s {
        [0xfc00..=0xfdff, ..] => "private",
        [0xfe80..=0xfebf, ..] => "link-local",
        [0xfec0..=0xfeff, ..] => "reserved",
        [0xff00..=0xffff, ..] => "multicast",
        // The discard prefix, 100::/64.
        [0x0100, 0, 0, 0, ..] => "reserved",
        _ => return None,
    })
}

/// What one invocation is granted, taken from its function's settings.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Environment variables, in the order they were set.
    pub env: Vec<EnvVar>,
    /// Where outgoing HTTP requests may go; empty: nowhere.
    pub allowed_hosts: Vec<HostPattern>,
}

impl Grants {
    /// The grants of a function with `settings`.
    pub fn of(settings: &crate::registry::Settings) -> Self {
        Self {
            env: settings.env.clone(),
            allowed_hosts: settings.allowed_hosts.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(patterns: &[&str]) -> Vec<HostPattern> {
        patterns
            .iter()
            .map(|p| p.parse().expect("valid pattern"))
            .collect()
    }

    fn allowed(patterns: &[&str], uri: &str) -> bool {
        allows(&hosts(patterns), &uri.parse().expect("uri"))
    }

    #[test]
    fn env_entries() {
        let var: EnvVar = "MODE=fast=yes".parse().expect("valid");
        assert_eq!((var.name(), var.value()), ("MODE", "fast=yes"));
        assert_eq!(String::from(var), "MODE=fast=yes");
        for ok in ["A=", "_x1=ü", "a_B=1 2", "LONG=\n"] {
            assert!(ok.parse::<EnvVar>().is_ok(), "{ok:?}");
        }
        let long = format!("{}=1", "N".repeat(MAX_ENV_NAME_LEN + 1));
        for bad in [
            "", "A", "=1", "1A=x", "A-B=1", "A B=1", "Ä=1", "A\0=1", &long,
        ] {
            assert!(bad.parse::<EnvVar>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "A=x\0y".parse::<EnvVar>(),
            Err(InvalidGrant::EnvValue("A".into()))
        );
        let vars: Vec<EnvVar> = ["A=1", "B=2", "A=3"]
            .iter()
            .map(|v| v.parse().expect("valid"))
            .collect();
        assert_eq!(
            check_env(&vars),
            Err(InvalidGrant::EnvDuplicate("A".into()))
        );
        assert!(check_env(vars.get(..2).expect("two")).is_ok());
        let big: Vec<EnvVar> = (0..3)
            .map(|i| format!("V{i}={}", "x".repeat(MAX_ENV_BYTES / 3)).parse())
            .collect::<Result<_, _>>()
            .expect("valid");
        assert!(matches!(check_env(&big), Err(InvalidGrant::EnvTooLarge(_))));
    }

    #[test]
    fn host_patterns() {
        for ok in [
            "example.com",
            "api.example.com:8443",
            "*.example.com",
            "*.example.com:8080",
            "127.0.0.1:9000",
            "localhost",
            "[::1]:8080",
            "[2001:db8::1]",
            "Example.COM",
            "xn--bcher-kva.example",
        ] {
            assert!(ok.parse::<HostPattern>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "*",
            "*.",
            "*.*.example.com",
            "http://example.com",
            "example.com/path",
            "user@example.com",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:+80",
            "example.com:80:80",
            "::1",
            "[::1",
            "[::1]x",
            "[nope]:80",
            "*.127.0.0.1",
            "*.[::1]",
            "1.2.3",
            "-a.example.com",
            "a..example.com",
            "exa mple.com",
            "bücher.example",
            "example.com.",
            &"a".repeat(64),
            &format!("{}com", "a.".repeat(126)),
        ] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad:?}");
        }
        let p: HostPattern = "*.Example.com:8080".parse().expect("valid");
        assert_eq!(String::from(p), "*.Example.com:8080", "kept as written");
        assert_eq!(
            check_hosts(&hosts(&["a.example", "b.example", "A.example"])),
            Err(InvalidGrant::HostDuplicate("A.example".into()))
        );
        assert!(check_hosts(&hosts(&["a.example", "a.example:8080"])).is_ok());
    }

    #[test]
    fn matching() {
        assert!(!allowed(&[], "http://example.com/"), "deny by default");
        let exact = ["example.com"];
        assert!(allowed(&exact, "http://example.com/"));
        assert!(allowed(&exact, "https://EXAMPLE.com/x"));
        assert!(allowed(&exact, "http://example.com:80/"));
        assert!(!allowed(&exact, "http://example.com:8080/"), "other port");
        assert!(!allowed(&exact, "http://example.com:443/"), "not http's");
        assert!(!allowed(&exact, "http://api.example.com/"));
        assert!(!allowed(&exact, "http://example.com.evil.net/"));
        assert!(!allowed(&exact, "http://evil@example.com/"), "userinfo");
        assert!(!allowed(&exact, "ftp://example.com/"));
        assert!(!allowed(&exact, "/relative"));

        let port = ["127.0.0.1:9000"];
        assert!(allowed(&port, "http://127.0.0.1:9000/x?y"));
        assert!(allowed(&port, "https://127.0.0.1:9000/"));
        assert!(!allowed(&port, "http://127.0.0.1:9001/"));
        assert!(!allowed(&port, "http://127.0.0.1/"));
        assert!(!allowed(&port, "http://127.0.0.2:9000/"));

        let wild = ["*.example.com"];
        assert!(allowed(&wild, "https://api.example.com/"));
        assert!(allowed(&wild, "https://a.b.Example.com/"));
        assert!(!allowed(&wild, "https://example.com/"), "not the domain");
        assert!(!allowed(&wild, "https://.example.com/"));
        assert!(!allowed(&wild, "https://notexample.com/"));
        assert!(!allowed(&wild, "https://api.example.com:8443/"));

        let v6 = ["[::1]:8080"];
        assert!(allowed(&v6, "http://[::1]:8080/"));
        assert!(!allowed(&v6, "http://[::2]:8080/"));
    }
}
