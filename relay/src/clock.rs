//! Where the relay reads the time. A running relay reads the system clocks ([`SystemClock`]);
//! a test may start one on a clock of its own that it moves forward by hand (the test kit's
//! `OffsetClock`), to see mail and blobs expire and rate limits refill without waiting.

use std::time::Instant;

/// The relay's two clocks.
pub trait Clock: Send + Sync {
    /// Wall-clock milliseconds since the Unix epoch (acceptance times, expiries).
    fn wall_ms(&self) -> u64;
    /// Monotonic time (timers, rate limits).
    fn instant(&self) -> Instant;
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        crate::shared::now_ms()
    }

    fn instant(&self) -> Instant {
        crate::shared::instant()
    }
}
