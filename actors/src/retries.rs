//! Backoff with jitter: the one place that decides how long to wait before trying again.
//!
//! Used by the router (between attempts on the *same* model) and by provider actors (the
//! cool-down before a restarted actor takes traffic again). Jitter spreads retries of many
//! turns that failed together, so a recovering provider is not hit by a synchronised wave.

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

/// Exponential backoff: `base * 2^attempt`, capped at `max`, with a random part.
///
/// With `jitter = 0.0` the delay is exact; with `jitter = 1.0` it is anywhere in
/// `[0, delay]` ("full jitter"); in between, `delay * (1 - jitter * r)` for a random `r`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the first retry, in milliseconds.
    pub base_ms: u64,
    /// Upper bound of any single delay, in milliseconds.
    pub max_ms: u64,
    /// Fraction (0..=1) of the delay that is randomised.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base_ms: 50, max_ms: 2_000, jitter: 0.5 }
    }
}

impl Backoff {
    /// A backoff without randomness, for tests and drills.
    pub fn fixed(delay: Duration) -> Self {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        Self { base_ms: ms, max_ms: ms, jitter: 0.0 }
    }

    /// The delay before retry number `attempt` (0 for the first retry), using the thread's
    /// random generator.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// The delay before retry number `attempt`, drawing jitter from `rng` (seed it for
    /// reproducible tests).
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let exp = 1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX);
        let ceiling = self.base_ms.saturating_mul(exp).min(self.max_ms);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 || ceiling == 0 {
            return Duration::from_millis(ceiling);
        }
        let r: f64 = rng.random();
        let ms = ceiling as f64 * (1.0 - jitter * r);
        Duration::from_micros((ms * 1_000.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn grows_exponentially_and_is_capped() {
        let b = Backoff { base_ms: 10, max_ms: 100, jitter: 0.0 };
        let mut rng = SmallRng::seed_from_u64(1);
        let d: Vec<u64> = (0..6).map(|a| b.delay_with(a, &mut rng).as_millis() as u64).collect();
        assert_eq!(d, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(b.delay_with(200, &mut rng), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let b = Backoff { base_ms: 100, max_ms: 1_000, jitter: 0.5 };
        let mut rng = SmallRng::seed_from_u64(7);
        let samples: Vec<Duration> = (0..100).map(|_| b.delay_with(1, &mut rng)).collect();
        assert!(samples.iter().all(|d| *d >= Duration::from_millis(100)));
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(200)));
        assert!(samples.iter().any(|d| *d != samples[0]), "jitter must vary the delay");
    }
}
