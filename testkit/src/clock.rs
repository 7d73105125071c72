//! The simulated clock: the relay's timers (idle timeouts, rate-limit refills, deadlines) run on
//! tokio's clock, which a test on a current-thread runtime may pause and move forward by hand.
//! Wall-clock times the relay stores (expiries in ms since the epoch) are not simulated.

pub use tokio::time::{advance, pause, resume};
