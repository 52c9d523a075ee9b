//! Join rate limiting per client address (a token bucket per address). The client address is
//! the peer, or — only when the peer is a configured proxy — the nearest untrusted address in
//! `X-Forwarded-For`; IPv6 addresses count by their /64 (one host can rotate through a whole
//! /64). Limited attempts are counted, never logged one by one, so a flood cannot fill the disk
//! or the webhooks.
//!
//! Memory is bounded: at most [`MAX_BUCKETS`] buckets, the least recently used one evicted in
//! O(1) when a new address arrives. Evicting a bucket only forgets that address's history, which
//! a client with fresh addresses has anyway.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use hyper::HeaderMap;

/// Most buckets kept (~64 bytes each with the LRU links: ~6 MiB).
pub const MAX_BUCKETS: usize = 100_000;

pub struct JoinLimiter {
    rate: f64,
    burst: f64,
    trusted: Vec<IpAddr>,
    /// Cluster mode: a forwarding node's tag makes its `X-Forwarded-For` entry believed.
    node_secret: Option<[u8; 32]>,
    /// A std Mutex: nothing is awaited while it is held, and every operation on it is O(1).
    buckets: Mutex<lru::LruCache<IpAddr, (f64, Instant)>>,
    pub limited: AtomicU64,
}

impl JoinLimiter {
    pub fn new(rate: f64, burst: u32, trusted: Vec<IpAddr>) -> JoinLimiter {
        Self::with_capacity(rate, burst, trusted, MAX_BUCKETS)
    }

    fn with_capacity(rate: f64, burst: u32, trusted: Vec<IpAddr>, capacity: usize) -> JoinLimiter {
        JoinLimiter {
            rate,
            burst: f64::from(burst),
            trusted,
            node_secret: None,
            buckets: Mutex::new(lru::LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN))),
            limited: AtomicU64::new(0),
        }
    }

    /// Buckets held now (at most [`MAX_BUCKETS`]).
    pub fn len(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }

    /// In cluster mode: believe forwarding nodes that prove they are nodes (see
    /// `cluster::NODE_HEADER`).
    pub fn with_node_secret(mut self, secret: Option<[u8; 32]>) -> JoinLimiter {
        self.node_secret = secret;
        self
    }

    /// Whether `headers` carry a node's valid tag for the last `X-Forwarded-For` entry.
    pub fn forwarded_by_a_node(&self, headers: &HeaderMap) -> bool {
        let (Some(secret), Some(tag)) = (&self.node_secret, headers.get(crate::cluster::NODE_HEADER)) else {
            return false;
        };
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .last()
            .map(str::trim);
        let Some(last) = last else { return false };
        let want = crate::cluster::forwarded_tag(secret, last);
        subtle::ConstantTimeEq::ct_eq(want.as_bytes(), tag.as_bytes()).into()
    }

    /// The address a request is attributed to.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = canonical(peer.ip());
        if !self.trusted.contains(&peer_ip) && !self.forwarded_by_a_node(headers) {
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
        // Inserting into a full cache evicts the least recently used bucket.
        let (tokens, at) = buckets.get_or_insert_mut(bucket_key(addr), || (self.burst, now));
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

/// IPv4 addresses as they are; IPv6 addresses by their /64.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
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

    /// A million distinct addresses (a client rotating through IPv4 and IPv6 addresses) leave
    /// the map at its bound, each check O(1); the /64 of a rotating IPv6 client shares a bucket.
    #[test]
    fn memory_is_bounded_whatever_the_addresses() {
        let l = JoinLimiter::new(1.0, 3, vec![]);
        for i in 0..1_000_000u32 {
            let _ = l.check(IpAddr::V4(std::net::Ipv4Addr::from(i)));
            let _ = l.check(IpAddr::V6(Ipv6Addr::from(u128::from(i) << 64)));
            assert!(l.len() <= MAX_BUCKETS);
        }
        assert_eq!(l.len(), MAX_BUCKETS);
        let same_64 = |n: u128| IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | n));
        for n in 0..3 {
            assert!(l.check(same_64(n)).is_ok());
        }
        assert!(l.check(same_64(12345)).is_err(), "another address in the same /64 shares the bucket");
    }

    #[test]
    fn a_nodes_tag_makes_its_forwarded_address_believed() {
        let secret = crate::cluster::node_secret("shared key");
        let l = JoinLimiter::new(1.0, 1, vec![]).with_node_secret(Some(secret));
        let peer: SocketAddr = "10.0.0.2:5".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 5.6.7.8".parse().unwrap());
        // No tag, or a tag under another key, or for another address: the peer.
        assert_eq!(l.client(peer, &h), "10.0.0.2".parse::<IpAddr>().unwrap());
        let other = crate::cluster::node_secret("another key");
        h.insert(crate::cluster::NODE_HEADER, crate::cluster::forwarded_tag(&other, "5.6.7.8").parse().unwrap());
        assert_eq!(l.client(peer, &h), "10.0.0.2".parse::<IpAddr>().unwrap());
        h.insert(crate::cluster::NODE_HEADER, crate::cluster::forwarded_tag(&secret, "6.6.6.6").parse().unwrap());
        assert_eq!(l.client(peer, &h), "10.0.0.2".parse::<IpAddr>().unwrap());
        // The node's own entry, tagged: the client is the node's peer, not what it was told.
        h.insert(crate::cluster::NODE_HEADER, crate::cluster::forwarded_tag(&secret, "5.6.7.8").parse().unwrap());
        assert_eq!(l.client(peer, &h), "5.6.7.8".parse::<IpAddr>().unwrap());
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
