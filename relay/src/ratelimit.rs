//! Token-bucket rate limits, one bucket per key (device, account or source address).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit as Rate;

/// Buckets not touched for this long are forgotten (they would be full again anyway).
const IDLE_FORGET: Duration = Duration::from_secs(600);
/// Buckets kept before idle ones are swept.
const SWEEP_AT: usize = 100_000;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A family of token buckets with one rate.
pub struct Limiter<K> {
    rate: Rate,
    buckets: Mutex<Buckets<K>>,
}

struct Buckets<K> {
    map: HashMap<K, Bucket>,
    last_sweep: Option<Instant>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// Buckets of `rate.burst` tokens refilled at `rate.per_second`.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    /// Gives back `cost` tokens taken by a request that was refused for another reason.
    pub fn refund(&self, key: &K, cost: u32) {
        let burst = f64::from(self.rate.burst);
        if let Ok(mut b) = self.buckets.lock()
            && let Some(bucket) = b.map.get_mut(key)
        {
            bucket.tokens = (bucket.tokens + f64::from(cost)).min(burst);
        }
    }

    /// Takes `cost` tokens from `key`'s bucket at time `now`: `Ok` if there were enough, otherwise
    /// `Err(wait)` with how long until there will be (and nothing is taken).
    pub fn check(&self, key: &K, cost: u32, now: Instant) -> Result<(), Duration> {
        let cost = f64::from(cost);
        let burst = f64::from(self.rate.burst);
        let Ok(mut buckets) = self.buckets.lock() else {
            // A poisoned lock only means another thread panicked mid-update; refuse nothing.
            return Ok(());
        };
        // Forget idle buckets when there are many, at most once per tenth of the idle time (so a
        // relay with many active keys does not scan them on every request).
        let due = buckets
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= IDLE_FORGET / 10);
        if buckets.map.len() >= SWEEP_AT && due {
            buckets
                .map
                .retain(|_, b| now.saturating_duration_since(b.at) < IDLE_FORGET);
            buckets.last_sweep = Some(now);
        }
        let b = buckets.map.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate.per_second).min(burst);
        b.at = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            Ok(())
        } else {
            let missing = cost - b.tokens;
            let secs = if self.rate.per_second > 0.0 {
                missing / self.rate.per_second
            } else {
                f64::from(u32::MAX)
            };
            Err(Duration::from_secs_f64(secs.clamp(0.001, 86_400.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn burst_then_refill() {
        let l = Limiter::new(Rate {
            per_second: 10.0,
            burst: 3,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check(&1u8, 1, t0).unwrap();
        }
        let wait = l.check(&1u8, 1, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(101) && wait >= Duration::from_millis(99));
        // Another key has its own bucket.
        l.check(&2u8, 1, t0).unwrap();
        // After 100 ms one token is back, not more.
        let t1 = t0 + Duration::from_millis(100);
        l.check(&1u8, 1, t1).unwrap();
        assert!(l.check(&1u8, 1, t1).is_err());
        // A cost larger than the burst never passes.
        assert!(l.check(&3u8, 4, t1).is_err());
        // A refund gives a token back (never beyond the burst).
        l.refund(&1u8, 1);
        l.check(&1u8, 1, t1).unwrap();
        assert!(l.check(&1u8, 1, t1).is_err());
    }
}
