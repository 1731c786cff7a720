//! Token buckets per user and per client IP, checked before the gate so
//! that a client hammering the issue endpoint spends no stock. The buckets
//! live in this process: with N instances behind a balancer a client gets up
//! to N times the rate.
//!
//! The client IP is the peer's address, unless the peer is a trusted proxy:
//! then it is the rightmost `X-Forwarded-For` address that is not a trusted
//! proxy itself (an untrusted client can prepend anything; only what the
//! trusted proxies appended counts).

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use common::settings::TokenBucket;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A keyed token bucket that may be switched off.
#[derive(Debug)]
pub struct Limiter<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(bucket: &TokenBucket) -> Self {
        let limiter = bucket.enabled.then(|| {
            let per_second = NonZeroU32::new(bucket.per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(bucket.burst).unwrap_or(per_second);
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
        });
        Self { limiter }
    }

    pub fn enabled(&self) -> bool {
        self.limiter.is_some()
    }

    /// `Err(wait)` when the key must wait before its next request.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets keys whose buckets are full again, so memory stays bounded by
    /// the clients of the last few seconds. Called periodically.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The per-address bucket of the request's client: its peer, or, from a
/// trusted proxy, the address `X-Forwarded-For` names (every header line,
/// read from the right: a client's own lines come first, the proxy's last).
/// 429 when the bucket is empty.
pub fn check_client_address(req: &actix_web::HttpRequest) -> Result<(), crate::error::ApiError> {
    let Some(state) = req.app_data::<actix_web::web::Data<crate::state::AppState>>() else {
        return Ok(());
    };
    if !state.ip_limiter.enabled() {
        return Ok(());
    }
    let Some(peer) = req.peer_addr().map(|a| a.ip()) else {
        return Ok(());
    };
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded = forwarded.join(",");
    let client = state.trusted_proxies.client_ip(peer, Some(&forwarded));
    state
        .ip_limiter
        .check(&client)
        .map_err(crate::error::ApiError::rate_limited)
}

/// Addresses and CIDR ranges of trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    ranges: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// From `"10.0.0.1, 192.168.0.0/16, ::1"`.
    pub fn parse(list: &str) -> anyhow::Result<Self> {
        let mut ranges = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b.parse::<u8>()?)),
                None => (item, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| {
                anyhow::anyhow!("trusted proxy {item:?} is not an address or CIDR range")
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = bits.unwrap_or(max);
            anyhow::ensure!(
                bits <= max,
                "trusted proxy {item:?}: prefix longer than the address"
            );
            ranges.push((addr, bits));
        }
        Ok(Self { ranges })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges
            .iter()
            .any(|&(net, bits)| in_range(ip, net, bits))
    }

    /// The client of a request that came from `peer` with this
    /// `X-Forwarded-For` value.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in forwarded_for.unwrap_or_default().rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

fn in_range(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::ids::UserId;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn a_key_gets_the_burst_then_waits_and_others_are_unaffected() {
        let limiter = Limiter::new(&TokenBucket {
            enabled: true,
            per_second: 1,
            burst: 3,
        });
        for _ in 0..3 {
            assert!(limiter.check(&user("a")).is_ok());
        }
        let wait = limiter.check(&user("a")).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limiter.check(&user("b")).is_ok());
    }

    #[test]
    fn a_disabled_limiter_lets_everything_through() {
        let limiter = Limiter::new(&TokenBucket {
            enabled: false,
            per_second: 1,
            burst: 1,
        });
        for _ in 0..100 {
            assert!(limiter.check(&user("a")).is_ok());
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trusted_ranges_parse_and_match() {
        let t = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1, ::1").unwrap();
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")));
        assert!(t.contains(ip("::1")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(TrustedProxies::parse("nonsense").is_err());
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_forwarded_address() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(
            t.client_ip(ip("203.0.113.9"), Some("1.2.3.4")),
            ip("203.0.113.9")
        );
        // Through one trusted proxy.
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), Some("198.51.100.7")),
            ip("198.51.100.7")
        );
        // A client forging a leading entry does not escape its own address.
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), Some("1.1.1.1, 198.51.100.7, 10.0.0.2")),
            ip("198.51.100.7")
        );
        // A trusted proxy without the header: the proxy is the client.
        assert_eq!(t.client_ip(ip("10.0.0.1"), None), ip("10.0.0.1"));
    }
}
