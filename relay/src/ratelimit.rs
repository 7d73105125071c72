//! Token-bucket rate limits, one bucket per key (device, account, pair of accounts or source
//! address).
//!
//! A bucket that has refilled to its burst is the same as no bucket, so it is forgotten: at most
//! once every [`SWEEP_EVERY`] of the limiter's clock, every bucket that would be full by now is
//! dropped. The map therefore only holds keys that took tokens within their refill time
//! (`burst / per_second`), however many keys ever came, and forgetting never lets anyone take
//! more than the rate allows (a slow bucket, such as one refilling over an hour, is kept for the
//! hour).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit as Rate;

/// How often full buckets are swept out.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

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
        // Forget the buckets that are full again, at most once per `SWEEP_EVERY` (so a relay with
        // many active keys does not scan them on every request).
        let due = match buckets.last_sweep {
            None => {
                buckets.last_sweep = Some(now);
                false
            }
            Some(t) => now.saturating_duration_since(t) >= SWEEP_EVERY,
        };
        if due {
            let rate = self.rate.per_second;
            buckets.map.retain(|_, b| {
                let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens + elapsed * rate < burst
            });
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

impl<K> Limiter<K> {
    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.map.len())
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn buckets_are_forgotten_once_full_again_and_not_before() {
        let fast = Limiter::new(Rate {
            per_second: 1.0,
            burst: 2,
        });
        let t0 = Instant::now();
        for k in 0..1000u32 {
            fast.check(&k, 1, t0).unwrap();
        }
        assert_eq!(fast.len(), 1000);
        // A minute later every one of them is full again: the next check sweeps them out.
        let t1 = t0 + SWEEP_EVERY;
        fast.check(&5000, 1, t1).unwrap();
        assert_eq!(fast.len(), 1);

        // A slow bucket (three tokens per 3000 s) is still owed tokens after many sweeps, so
        // it is kept, and forgetting never hands out more than the rate.
        let slow = Limiter::new(Rate {
            per_second: 0.001,
            burst: 3,
        });
        for _ in 0..3 {
            slow.check(&1u8, 1, t0).unwrap();
        }
        let mut t = t0;
        for _ in 0..10 {
            t += SWEEP_EVERY;
            assert!(slow.check(&1u8, 1, t).is_err(), "no token back yet");
        }
        assert_eq!(slow.len(), 1);
        // Once it has refilled it is dropped.
        let later = t0 + Duration::from_secs(3000) + SWEEP_EVERY;
        slow.check(&3u8, 1, later).unwrap();
        assert_eq!(slow.len(), 1);
    }
}
