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

/// The leases a leader grants: when it last granted each member, and the
/// members barred from new grants while a failover of their shards is
/// being decided. All times are the leader's clock, passed in.
///
/// A failover decides that a down owner's lease has certainly expired
/// ([`LeaseConfig::coordinator_may_reassign`]), then commits the
/// promotions, which takes a while. A grant to that owner in between (it
/// was paused, not dead, and wakes up) would carry the committed epoch of
/// before the promotions and let it serve again beside the promoted owner.
/// So the leader bars the members it fails over until the decisions are
/// committed or given up ([`LeaseGrants::unbar`]); a barred member's
/// renewal is refused, and once the promotions are committed the next
/// grant carries their epoch.
#[derive(Clone, Debug, Default)]
pub struct LeaseGrants {
    last: std::collections::BTreeMap<u64, Duration>,
    barred: std::collections::BTreeSet<u64>,
}

impl LeaseGrants {
    /// Grants `node` a lease at `now`, unless it is barred.
    pub fn grant(&mut self, node: u64, now: Duration) -> bool {
        if self.barred.contains(&node)
            && !crate::fence::is_mutant(crate::fence::Mutant::GrantWhileBarred)
        {
            return false;
        }
        self.last.insert(node, now);
        true
    }

    /// When `node` was last granted a lease, if ever by this leader.
    pub fn last(&self, node: u64) -> Option<Duration> {
        self.last.get(&node).copied()
    }

    /// Bars, among `down`, the members whose leases have certainly expired
    /// at `now`: granted last (or, if later or never, when this node became
    /// the leader, `since`, as a former leader's grants are unknown here)
    /// at least `duration + max_drift` ago. Returns those barred: the
    /// failover may give their shards away.
    pub fn bar_expired(
        &mut self,
        config: &LeaseConfig,
        down: impl Iterator<Item = u64>,
        since: Duration,
        now: Duration,
    ) -> std::collections::BTreeSet<u64> {
        let expired: std::collections::BTreeSet<u64> = down
            .filter(|m| {
                let from = self.last(*m).map_or(since, |g| g.max(since));
                config.coordinator_may_reassign(from, now)
            })
            .collect();
        self.barred.extend(expired.iter().copied());
        expired
    }

    /// The failover's decisions are committed (or given up): the members
    /// may be granted leases again.
    pub fn unbar(&mut self, members: &std::collections::BTreeSet<u64>) {
        for m in members {
            self.barred.remove(m);
        }
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

    #[test]
    fn a_member_failed_over_is_refused_grants_until_the_decision() {
        let lease = LeaseConfig::default();
        let ms = Duration::from_millis;
        let mut g = LeaseGrants::default();
        assert!(g.grant(1, ms(1_000)));
        assert!(g.grant(2, ms(1_000)));
        // Node 1 granted at 1.0 s: not expired at 3.1 s, expired at 3.2 s.
        assert!(
            g.bar_expired(&lease, [1].into_iter(), ms(0), ms(3_100))
                .is_empty()
        );
        assert!(g.grant(1, ms(3_100)), "not barred yet");
        let barred = g.bar_expired(&lease, [1, 2].into_iter(), ms(0), ms(5_300));
        assert_eq!(barred, [1, 2].into());
        // A new leader counts from its start for grants it never saw.
        let mut fresh = LeaseGrants::default();
        assert!(
            fresh
                .bar_expired(&lease, [3].into_iter(), ms(10_000), ms(12_000))
                .is_empty()
        );
        assert_eq!(
            fresh.bar_expired(&lease, [3].into_iter(), ms(10_000), ms(12_200)),
            [3].into()
        );
        // Barred: refused until unbarred.
        assert!(!g.grant(1, ms(5_400)));
        assert_eq!(g.last(1), Some(ms(3_100)));
        g.unbar(&[1].into());
        assert!(g.grant(1, ms(5_500)));
        assert!(!g.grant(2, ms(5_500)));
    }
}
