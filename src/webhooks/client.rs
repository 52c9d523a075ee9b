//! Outbound HTTP for webhooks (the only outbound HTTP in Gatehouse): a 15 s timeout, no
//! redirects, proxy variables ignored, and optionally no private targets — checked at connect
//! time for every request, through the DNS resolver and for literal-IP URLs alike. A reply's
//! body is read up to [`REPLY_READ_LIMIT`] and the rest never: a receiver that answers with a
//! huge (or endless) body costs a few KB, not the server's memory.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Per-request timeout (docs/API.md: 15 s).
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes of a reply's body read at most; past them the connection is dropped unread.
pub const REPLY_READ_LIMIT: usize = 4 * 1024;
/// Characters of a reply's body kept in the attempt log.
const SNIPPET_CHARS: usize = 512;

/// Loopback, private, link-local, shared (100.64/10), unique-local, unspecified, multicast,
/// broadcast, and IPv4-mapped forms of those.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Resolves names and drops private addresses when asked to.
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.filter(|a| !is_private(a.ip())).collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves only to private addresses, which are refused").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why an outbound request was not made or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("the HTTP client could not be built: {0}")]
    Client(reqwest::Error),
    #[error("not a URL: {0}")]
    NotUrl(url::ParseError),
    #[error("the URL must be http or https")]
    Scheme,
    #[error("private, loopback and link-local addresses are refused (--webhook-deny-private)")]
    Private,
    /// The request failed: timed out, could not connect, or broke off (the whole chain of causes).
    #[error("{0}")]
    Failed(String),
}

#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    deny_private: bool,
}

impl Outbound {
    pub fn new(deny_private: bool, timeout: Duration) -> Result<Outbound, OutboundError> {
        // One TLS crypto provider for the process (ring: a pure-Rust build, no cmake). Installing
        // it twice is a no-op error we can ignore.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("Gatehouse-Webhooks/", env!("CARGO_PKG_VERSION")));
        if deny_private {
            b = b.dns_resolver(Arc::new(GuardedResolver));
        }
        Ok(Outbound { client: b.build().map_err(OutboundError::Client)?, deny_private })
    }

    /// A plain client (no redirects, no proxy) for the CLI talking to its own server.
    pub fn raw_client() -> Result<reqwest::Client, OutboundError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(OutboundError::Client)
    }

    /// Refuses URLs that cannot be delivered to: bad scheme, or a literal private IP when
    /// private targets are refused (names are checked by the resolver at connect time).
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, OutboundError> {
        let u = reqwest::Url::parse(url).map_err(OutboundError::NotUrl)?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(OutboundError::Scheme);
        }
        if self.deny_private {
            let literal = match u.host() {
                Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
                Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
                _ => None,
            };
            if literal.is_some_and(is_private) {
                return Err(OutboundError::Private);
            }
        }
        Ok(u)
    }

    /// POSTs `body` with `headers`; returns the status, `Retry-After`, and the start of the body.
    pub async fn post(
        &self,
        url: &str,
        basic_auth: Option<&str>,
        headers: &[(&'static str, String)],
        body: String,
    ) -> Result<Response, OutboundError> {
        let u = self.check_url(url)?;
        let mut req = self.client.post(u).header("content-type", "application/json").body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = basic_auth {
            use base64::Engine as _;
            req = req.header("authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(b)));
        }
        let res = req.send().await.map_err(describe)?;
        let status = res.status().as_u16();
        let retry_after = res.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(retry_after_secs);
        let start = read_start(res, REPLY_READ_LIMIT).await;
        let snippet = String::from_utf8_lossy(&start).chars().take(SNIPPET_CHARS).collect();
        Ok(Response { status, retry_after, snippet })
    }
}

/// `Retry-After` in seconds (delta-seconds only; an HTTP date is ignored), uncapped: the
/// retry policy caps it.
fn retry_after_secs(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The first `limit` bytes of a reply's body (less if it ends sooner or breaks off). The
/// response is dropped here, unread past them: hyper then closes the connection rather than
/// reading the rest, however much the receiver still has to send.
async fn read_start(mut res: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut start = Vec::new();
    while start.len() < limit {
        match res.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - start.len());
                start.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    start
}

pub struct Response {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub snippet: String,
}

/// What went wrong, for the attempt log and the webhook API's error messages. Without the URL,
/// which may carry credentials (the webhook's own configuration says where it was).
fn describe(e: reqwest::Error) -> OutboundError {
    let e = e.without_url();
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    OutboundError::Failed(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn literal_private_urls_refused_when_asked() {
        let strict = Outbound::new(true, TIMEOUT).unwrap();
        assert!(strict.check_url("http://127.0.0.1:9/x").is_err());
        assert!(strict.check_url("http://[::ffff:7f00:1]/x").is_err());
        assert!(strict.check_url("ftp://example.com/").is_err());
        assert!(strict.check_url("https://example.com/hook").is_ok());
        let open = Outbound::new(false, TIMEOUT).unwrap();
        assert!(open.check_url("http://127.0.0.1:9/x").is_ok());
    }
}
