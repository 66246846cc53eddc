//! Per-key counters and per-source token buckets: the limits that keep one source address or
//! one partner from holding every connection or every TPM signature (SPEC §10).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// The address a per-source limit is counted against: an IPv4 address, or the /64 of an IPv6
/// one (a single host commonly holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
pub(super) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// How many of something each key holds now (connections, requests in flight).
pub(super) struct Counter<K> {
    map: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Eq + Hash + Clone> Counter<K> {
    pub(super) fn new() -> Self {
        Counter {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// One more for `key`, unless it already holds `limit`; given back when the slot drops.
    pub(super) fn enter(&self, key: K, limit: usize) -> Option<Slot<K>> {
        // A poisoned lock only means a panic elsewhere mid-update; the counts are still usable.
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(key.clone()).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            map: self.map.clone(),
            key,
        })
    }
}

/// Holds one unit of a key's allowance; gives it back on drop.
pub(super) struct Slot<K: Eq + Hash> {
    map: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Token buckets per source: `rate` tokens a second up to `burst`.
pub(super) struct Buckets {
    rate: f64,
    burst: f64,
    map: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Above this many tracked sources, full buckets (sources idle long enough) are forgotten.
const MAX_TRACKED: usize = 4096;

impl Buckets {
    pub(super) fn new(rate: u32, burst: u32) -> Self {
        Buckets {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `source`; false when its bucket is empty.
    pub(super) fn take(&self, source: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_TRACKED && !map.contains_key(&source) {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = map.entry(source).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_count_by_slash_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn counter_refuses_over_the_limit_and_slots_come_back() {
        let counter = Counter::new();
        let one = counter.enter("a", 2).unwrap();
        let _two = counter.enter("a", 2).unwrap();
        assert!(counter.enter("a", 2).is_none());
        assert!(counter.enter("b", 2).is_some());
        drop(one);
        assert!(counter.enter("a", 2).is_some());
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let buckets = Buckets::new(1, 3);
        let source: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..3).all(|_| buckets.take(source)));
        assert!(!buckets.take(source));
        assert!(buckets.take(other), "another source has its own bucket");
    }
}
