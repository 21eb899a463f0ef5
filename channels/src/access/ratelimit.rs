//! Token buckets (pure) and a bounded per-key limiter for the gateway.
//!
//! Limits are per node: in a cluster of N nodes behind a balancer a key may get up to N
//! times the rate. That is the trade-off for keeping every request free of a shared round
//! trip; lockouts, which must hold cluster-wide, live in the store instead.

use std::time::Instant;

use dashmap::DashMap;

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    /// Seconds on the limiter's clock at the last refill.
    at: f64,
}

impl Bucket {
    pub fn full(burst: f64, now: f64) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token at `now` (seconds), or says how long until one is there.
    pub fn take(&mut self, now: f64, rate: f64, burst: f64) -> Result<(), f64> {
        let elapsed = (now - self.at).max(0.0);
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / rate)
        }
    }

    /// Whether the bucket is full again at `now` (it can be forgotten).
    pub fn is_full(&self, now: f64, rate: f64, burst: f64) -> bool {
        self.tokens + (now - self.at).max(0.0) * rate >= burst
    }
}

/// Buckets by key with a bound on the keys kept: when full, buckets that have refilled are
/// dropped (they carry no information); if that is not enough, the map is cleared, which
/// errs on the side of letting traffic through rather than growing without bound.
pub struct RateLimiter {
    buckets: DashMap<String, Bucket>,
    /// Tokens per second; 0 turns the limiter off.
    rate: f64,
    burst: f64,
    max_keys: usize,
    epoch: Instant,
}

impl RateLimiter {
    pub fn new(rate_per_s: f64, burst: f64, max_keys: usize) -> Self {
        Self {
            buckets: DashMap::new(),
            rate: rate_per_s,
            burst: burst.max(1.0),
            max_keys: max_keys.max(1),
            epoch: Instant::now(),
        }
    }

    /// `Err(seconds)` to wait when `key` is over its rate.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = self.epoch.elapsed().as_secs_f64();
        self.check_at(key, now)
    }

    fn check_at(&self, key: &str, now: f64) -> Result<(), u64> {
        if self.buckets.len() >= self.max_keys && !self.buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, b| !b.is_full(now, rate, burst));
            if self.buckets.len() >= self.max_keys {
                self.buckets.clear();
            }
        }
        let mut bucket = self
            .buckets
            .entry(key.to_owned())
            .or_insert_with(|| Bucket::full(self.burst, now));
        bucket
            .take(now, self.rate, self.burst)
            .map_err(|wait| wait.ceil().max(1.0) as u64)
    }

    pub fn keys(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut bucket = Bucket::full(3.0, 0.0);
        for _ in 0..3 {
            assert_eq!(bucket.take(0.0, 1.0, 3.0), Ok(()));
        }
        let wait = bucket.take(0.0, 1.0, 3.0).unwrap_err();
        assert!((wait - 1.0).abs() < 1e-9);
        assert_eq!(bucket.take(1.0, 1.0, 3.0), Ok(()));
        assert!(bucket.take(1.5, 1.0, 3.0).is_err());
        // Refill caps at the burst.
        assert!(bucket.is_full(100.0, 1.0, 3.0));
        for _ in 0..3 {
            assert_eq!(bucket.take(100.0, 1.0, 3.0), Ok(()));
        }
        assert!(bucket.take(100.0, 1.0, 3.0).is_err());
    }

    #[test]
    fn limiter_is_per_key_and_bounded() {
        let limiter = RateLimiter::new(1.0, 2.0, 4);
        assert!(limiter.check_at("a", 0.0).is_ok());
        assert!(limiter.check_at("a", 0.0).is_ok());
        assert_eq!(limiter.check_at("a", 0.0), Err(1));
        assert!(limiter.check_at("b", 0.0).is_ok());
        for n in 0..100 {
            let _ = limiter.check_at(&format!("k{n}"), 0.0);
            assert!(limiter.keys() <= 4);
        }
        // Off when the rate is zero.
        let off = RateLimiter::new(0.0, 1.0, 4);
        for _ in 0..100 {
            assert!(off.check("x").is_ok());
        }
    }
}
