//! Per-peer rate limits: a token bucket for each peer, refilled with time.
//!
//! Gossiped transactions cost the node a signature recovery and a mempool
//! check each, so a peer that floods them must not get more than its share.
//! Time is passed in (an `Instant`), so the limiter is tested in virtual
//! time without sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Tokens per second and the burst a peer may spend at once.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// How many peers' buckets are kept before idle ones are forgotten.
const MAX_TRACKED: usize = 4096;

#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    buckets: HashMap<K, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate: Rate) -> RateLimiter<K> {
        RateLimiter {
            rate,
            buckets: HashMap::new(),
        }
    }

    /// Spends one token of `peer`'s bucket at `now`; false when it is empty.
    pub fn allow(&mut self, peer: &K, now: Instant) -> bool {
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(peer) {
            self.forget_full(now);
        }
        let rate = self.rate;
        let bucket = self.buckets.entry(peer.clone()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn remove(&mut self, peer: &K) {
        self.buckets.remove(peer);
    }

    /// Drops buckets that have refilled completely: those peers are at rest.
    fn forget_full(&mut self, now: Instant) {
        let rate = self.rate;
        let refill = Duration::from_secs_f64(rate.burst / rate.per_second.max(f64::MIN_POSITIVE));
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.at) < refill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_peer_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let start = Instant::now();
        let mut l = RateLimiter::new(Rate {
            per_second: 10.0,
            burst: 50.0,
        });
        let flooded = (0..1000).filter(|_| l.allow(&"flood", start)).count();
        assert_eq!(flooded, 50, "the burst, no more");
        assert!(l.allow(&"honest", start), "another peer has its own bucket");
        // One second later: ten more.
        let later = start + Duration::from_secs(1);
        let more = (0..1000).filter(|_| l.allow(&"flood", later)).count();
        assert_eq!(more, 10);
        // A long rest refills to the burst, not beyond.
        let rested = start + Duration::from_secs(3600);
        assert_eq!((0..1000).filter(|_| l.allow(&"flood", rested)).count(), 50);
    }

    #[test]
    fn many_peers_do_not_grow_memory_without_bound() {
        let start = Instant::now();
        let mut l = RateLimiter::new(Rate {
            per_second: 1.0,
            burst: 1.0,
        });
        for i in 0..10 * MAX_TRACKED {
            l.allow(&i, start + Duration::from_secs(i as u64 * 2));
        }
        assert!(l.buckets.len() <= MAX_TRACKED);
    }
}
