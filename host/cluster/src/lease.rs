//! Leases: an owner serves its shards only while its lease is fresh, and
//! the coordinator reassigns a silent owner's shards only once that owner
//! must have stopped.
//!
//! The owner measures from when it *sent* its last renewal that was
//! granted (before the coordinator granted it), the coordinator from when
//! it granted; both on their own monotonic clocks. Assumption: over one
//! lease period, two nodes' clocks disagree by at most `max_drift` (rate
//! drift of NTP-free monotonic clocks is far below 1%; the default allows
//! 10% of the lease). Then when the coordinator may reassign, the owner's
//! lease has expired: `granted ≥ sent`, and the owner stops `duration`
//! after `sent` by its clock, at most `duration + max_drift` by the
//! coordinator's.

use std::time::Duration;

/// The lease settings of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a renewal lets an owner serve.
    pub duration: Duration,
    /// The most two clocks may disagree over one `duration`.
    pub max_drift: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            duration: Duration::from_secs(2),
            max_drift: Duration::from_millis(200),
        }
    }
}

impl LeaseConfig {
    /// May an owner that sent its last granted renewal at `sent` (its
    /// clock) still serve at `now` (its clock)?
    pub fn owner_may_serve(&self, sent: Duration, now: Duration) -> bool {
        now < sent + self.duration
    }

    /// [`LeaseConfig::owner_may_serve`], and the owner's table has applied
    /// the committed epoch its last grant carried (`granted_epoch`). A
    /// grant is given to any member that asks, also to an owner deposed
    /// while it was paused or cut off: until its table shows the decisions
    /// committed meanwhile, it must not serve on its old view.
    pub fn owner_may_serve_at(
        &self,
        sent: Duration,
        now: Duration,
        granted_epoch: u64,
        table_epoch: u64,
    ) -> bool {
        self.owner_may_serve(sent, now)
            && (table_epoch >= granted_epoch || crate::fence::mutant_stale_grant())
    }

    /// May the coordinator, which last granted the owner's lease at
    /// `granted` (its clock), give the owner's shards away at `now`?
    pub fn coordinator_may_reassign(&self, granted: Duration, now: Duration) -> bool {
        now >= granted + self.duration + self.max_drift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For clocks within the drift bound, a reassignment is never allowed
    /// while the owner may still serve. Real time in µs; the owner's clock
    /// runs at `rate` of real time.
    #[test]
    fn the_owner_stops_before_its_shards_may_move() {
        let lease = LeaseConfig::default();
        let d = lease.duration.as_micros() as f64;
        let drift = lease.max_drift.as_micros() as f64;
        // The slowest and fastest owner clocks the bound admits: over the
        // owner's `duration`, real time differs by at most `max_drift`.
        let slowest = d / (d + drift) * 1.000_1;
        for rate in [slowest, 1.0, 1.0 + drift / d] {
            for delay_us in [0u64, 10, 1_000, 300_000] {
                // The owner sends at real 0; the coordinator grants after `delay`.
                let granted = Duration::from_micros(delay_us);
                for real_us in (0..3_000_000u64).step_by(997) {
                    let real = Duration::from_micros(real_us);
                    let owner_now = Duration::from_secs_f64(real.as_secs_f64() * rate);
                    if lease.coordinator_may_reassign(granted, real) {
                        assert!(
                            !lease.owner_may_serve(Duration::ZERO, owner_now),
                            "rate {rate}, delay {delay_us} µs, real {real_us} µs"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn without_the_drift_margin_a_slow_owner_clock_would_overlap() {
        let broken = LeaseConfig {
            max_drift: Duration::ZERO,
            ..LeaseConfig::default()
        };
        // An owner clock 5% slow still serves when a margin-less coordinator reassigns.
        let real = broken.duration;
        let owner_now = Duration::from_secs_f64(real.as_secs_f64() * 0.95);
        assert!(broken.coordinator_may_reassign(Duration::ZERO, real));
        assert!(broken.owner_may_serve(Duration::ZERO, owner_now));
    }
}
