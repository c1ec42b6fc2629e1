//! The clock the node's decision logic reads: the entity state machine
//! (command timestamps, restart windows, idle times) and the passivation
//! sweeper never call `Instant::now()` or `SystemTime::now()` themselves.
//!
//! [`SystemClock`] is the default; [`ManualClock`] is a virtual clock that
//! only moves when told, so tests of time-driven behavior (passivation,
//! restart windows) run exactly, whatever the machine's speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of monotonic and wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time, for durations (idle times, restart windows).
    fn now(&self) -> Instant;
    /// Wall-clock time in ms since the Unix epoch, recorded in events.
    fn wall_ms(&self) -> u64;
}

/// The operating system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A virtual clock: starts at the system's time when created and moves only
/// by [`ManualClock::advance`].
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    base_wall_ms: u64,
    offset_ns: AtomicU64,
}

impl ManualClock {
    /// A clock standing at the current system time.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            base: Instant::now(),
            base_wall_ms: SystemClock.wall_ms(),
            offset_ns: AtomicU64::new(0),
        })
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_ns.fetch_add(ns, Ordering::SeqCst);
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_ns.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.offset()
    }

    fn wall_ms(&self) -> u64 {
        self.base_wall_ms + self.offset().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let c = ManualClock::new();
        let (t0, w0) = (c.now(), c.wall_ms());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.now(), t0);
        assert_eq!(c.wall_ms(), w0);
        c.advance(Duration::from_secs(90));
        assert_eq!(c.now() - t0, Duration::from_secs(90));
        assert_eq!(c.wall_ms() - w0, 90_000);
    }
}
