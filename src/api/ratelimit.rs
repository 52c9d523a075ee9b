//! Join rate limiting per client address (a token bucket per address). The client address is
//! the peer, or — only when the peer is a configured proxy — the nearest untrusted address in
//! `X-Forwarded-For`. Limited attempts are counted, never logged one by one, so a flood cannot
//! fill the disk or the webhooks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use hyper::HeaderMap;

/// Buckets kept before idle full ones are pruned.
const MAX_BUCKETS: usize = 100_000;

pub struct JoinLimiter {
    rate: f64,
    burst: f64,
    trusted: Vec<IpAddr>,
    /// A std Mutex: nothing is awaited while it is held.
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    pub limited: AtomicU64,
}

impl JoinLimiter {
    pub fn new(rate: f64, burst: u32, trusted: Vec<IpAddr>) -> JoinLimiter {
        JoinLimiter {
            rate,
            burst: f64::from(burst),
            trusted,
            buckets: Mutex::new(HashMap::new()),
            limited: AtomicU64::new(0),
        }
    }

    /// The address a request is attributed to.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = canonical(peer.ip());
        if !self.trusted.contains(&peer_ip) {
            return peer_ip;
        }
        let chain: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .map(canonical)
            .collect();
        chain.into_iter().rev().find(|a| !self.trusted.contains(a)).unwrap_or(peer_ip)
    }

    /// `Err(seconds until a token is back)` when over the limit.
    pub fn check(&self, addr: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(addr).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        self.limited.fetch_add(1, Ordering::Relaxed);
        Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused() {
        let l = JoinLimiter::new(1.0, 3, vec![]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
        }
        assert!(l.check(a).is_err());
        assert!(l.check("10.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let l = JoinLimiter::new(1.0, 1, vec![proxy]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
        assert_eq!(l.client("127.0.0.1:5".parse().unwrap(), &h), "5.6.7.8".parse::<IpAddr>().unwrap());
        assert_eq!(l.client("9.9.9.9:5".parse().unwrap(), &h), "9.9.9.9".parse::<IpAddr>().unwrap());
    }
}
