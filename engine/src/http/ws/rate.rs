//! A token bucket for per-connection frame rates.
//!
//! One per WebSocket session, touched only by that session, so no locking: a plain struct
//! refilled lazily from the elapsed time on each check.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let capacity = f64::from(burst.max(1));
        Self { capacity, per_second: f64::from(per_second), tokens: capacity, last: Instant::now() }
    }

    /// Takes one token if there is one; otherwise says how long until there will be.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.per_second > 0.0 {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_second))
        } else {
            Err(Duration::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2, 3);
        for _ in 0..3 {
            bucket.try_take(start).unwrap();
        }
        let wait = bucket.try_take(start).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::ZERO, "{wait:?}");
        bucket.try_take(start + Duration::from_millis(500)).unwrap();
        assert!(bucket.try_take(start + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn never_banks_more_than_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 2);
        let later = start + Duration::from_secs(60);
        bucket.try_take(later).unwrap();
        bucket.try_take(later).unwrap();
        assert!(bucket.try_take(later).is_err());
    }
}
