//! The clock of relays started in tests: the system's time, moved ahead when a test says so, so
//! that a test sees mail and blobs expire or rate limits refill at once instead of waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The system's clocks plus an offset that only grows ([`OffsetClock::advance`]).
#[derive(Debug, Default)]
pub struct OffsetClock {
    ahead_ms: AtomicU64,
}

impl OffsetClock {
    /// A clock on the system's time (nothing added yet).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Moves the clock `by` ahead: both the wall clock and the monotonic one.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// How far ahead of the system's time it is.
    pub fn ahead(&self) -> Duration {
        Duration::from_millis(self.ahead_ms.load(Ordering::SeqCst))
    }
}

impl hush_relay::clock::Clock for OffsetClock {
    fn wall_ms(&self) -> u64 {
        hush_relay::server::now_ms().saturating_add(self.ahead_ms.load(Ordering::SeqCst))
    }

    fn instant(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.ahead()).unwrap_or(now)
    }
}
