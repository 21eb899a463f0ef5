//! Backoff, token buckets and circuit breakers: pure state machines with the clock passed in
//! (`tokio::time::Instant`, so tests can pause time).

use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff with full jitter: attempt `n` (1-based) waits a random time in
/// `[base·2^(n-1)/2, base·2^(n-1)]`, capped at `max`. A server's Retry-After wins when given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// `jitter` in `[0, 1]` (a random draw in production, fixed in tests).
    pub fn delay(&self, attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(Duration::from_secs(3600));
        }
        let exp = attempt.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp).min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        full.mul_f64(0.5 + 0.5 * jitter)
    }
}

/// A token bucket: `capacity` burst, `rate` tokens per second.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(capacity: u32, rate_per_sec: f64, now: Instant) -> Self {
        Self {
            capacity: f64::from(capacity.max(1)),
            rate: rate_per_sec.max(0.001),
            tokens: f64::from(capacity.max(1)),
            last: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// A circuit breaker: `threshold` consecutive failures open it for `cooldown`; then one probe
/// is let through (half-open); its success closes the breaker, its failure reopens it.
#[derive(Clone, Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            open_until: None,
            probing: false,
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go now; in half-open, only one probe at a time.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if self.probing => false,
            BreakerState::HalfOpen => {
                self.probing = true;
                true
            }
        }
    }

    pub fn on_success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.probing = false;
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.probing = false;
        self.failures += 1;
        if self.open_until.is_some() || self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
        }
    }

    /// Time left until the breaker lets a probe through.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        self.open_until
            .map(|until| until.saturating_duration_since(now))
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let table = [
            (1, 1.0, Duration::from_millis(100)),
            (1, 0.0, Duration::from_millis(50)),
            (2, 1.0, Duration::from_millis(200)),
            (4, 1.0, Duration::from_millis(800)),
            (10, 1.0, Duration::from_secs(2)),
            (40, 0.0, Duration::from_secs(1)),
        ];
        for (attempt, jitter, expected) in table {
            assert_eq!(
                b.delay(attempt, jitter, None),
                expected,
                "{attempt} {jitter}"
            );
        }
        assert_eq!(
            b.delay(1, 0.3, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn token_bucket_refills_at_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2, 10.0, t0);
        assert!(bucket.try_take(t0).is_ok());
        assert!(bucket.try_take(t0).is_ok());
        let wait = bucket.try_take(t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::from_millis(90),
            "{wait:?}"
        );
        assert!(bucket.try_take(t0 + Duration::from_millis(100)).is_ok());
        assert!(bucket.try_take(t0 + Duration::from_millis(100)).is_err());
        // Never more than the capacity after a long idle time.
        let later = t0 + Duration::from_secs(60);
        assert!(bucket.try_take(later).is_ok());
        assert!(bucket.try_take(later).is_ok());
        assert!(bucket.try_take(later).is_err());
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.on_failure(t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.allow(t1), "one probe");
        assert!(!b.allow(t1), "only one probe");
        b.on_failure(t1);
        assert_eq!(b.state(t1), BreakerState::Open, "a failed probe reopens");
        let t2 = t1 + Duration::from_secs(10);
        assert!(b.allow(t2));
        b.on_success();
        assert_eq!(b.state(t2), BreakerState::Closed);
        assert!(b.allow(t2) && b.allow(t2));
    }
}
