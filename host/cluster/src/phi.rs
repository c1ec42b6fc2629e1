//! The phi-accrual failure detector (Hayashibara et al., as in Akka and
//! Cassandra): instead of a yes/no timeout, a suspicion level `phi` that
//! grows with the time since the last heartbeat, scaled by how regular the
//! heartbeats have been. `phi = -log10(P(a heartbeat comes later than
//! now))` under a normal distribution of the observed intervals, so phi 8
//! means a 1e-8 chance that the member is merely slow.
//!
//! It reports *reachability* (Unreachable/Reachable, which stops rebalancing);
//! declaring a member down is SWIM's job ([`crate::membership`]).

use std::collections::VecDeque;
use std::time::Duration;

/// Settings of a detector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhiConfig {
    /// Suspicion above which a member is unreachable.
    pub threshold: f64,
    /// Intervals kept for the estimate.
    pub window: usize,
    /// Floor of the standard deviation (a very regular sender would
    /// otherwise be suspected after one late heartbeat).
    pub min_std_dev: Duration,
    /// Extra pause tolerated on top of the mean interval (GC, a busy CPU).
    pub acceptable_pause: Duration,
    /// The interval assumed before the first two heartbeats.
    pub first_interval: Duration,
}

impl Default for PhiConfig {
    /// Akka's threshold (8) and deviation floor (100 ms), with heartbeats
    /// every 500 ms and a 500 ms pause allowed: a silent member crosses the
    /// threshold about 1.5 s after its last heartbeat.
    fn default() -> Self {
        PhiConfig {
            threshold: 8.0,
            window: 100,
            min_std_dev: Duration::from_millis(100),
            acceptable_pause: Duration::from_millis(500),
            first_interval: Duration::from_millis(500),
        }
    }
}

/// The detector for one member. Times are the caller's monotonic clock.
#[derive(Clone, Debug)]
pub struct PhiDetector {
    config: PhiConfig,
    intervals: VecDeque<f64>,
    last: Option<Duration>,
}

impl PhiDetector {
    /// A detector that has heard nothing yet.
    pub fn new(config: PhiConfig) -> PhiDetector {
        PhiDetector {
            config,
            intervals: VecDeque::new(),
            last: None,
        }
    }

    /// A heartbeat arrived at `now`.
    pub fn heartbeat(&mut self, now: Duration) {
        if let Some(last) = self.last {
            let ms = now.saturating_sub(last).as_secs_f64() * 1e3;
            if self.intervals.len() >= self.config.window.max(1) {
                self.intervals.pop_front();
            }
            self.intervals.push_back(ms);
        }
        self.last = Some(now);
    }

    /// The suspicion level at `now`; 0 before the first heartbeat.
    pub fn phi(&self, now: Duration) -> f64 {
        let Some(last) = self.last else {
            return 0.0;
        };
        let elapsed = now.saturating_sub(last).as_secs_f64() * 1e3;
        let (mean, std) = if self.intervals.len() < 2 {
            let m = self.config.first_interval.as_secs_f64() * 1e3;
            (m, m / 4.0)
        } else {
            let n = self.intervals.len() as f64;
            let mean = self.intervals.iter().sum::<f64>() / n;
            let var = self
                .intervals
                .iter()
                .map(|x| (x - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean, var.sqrt())
        };
        let mean = mean + self.config.acceptable_pause.as_secs_f64() * 1e3;
        let std = std.max(self.config.min_std_dev.as_secs_f64() * 1e3);
        phi(elapsed, mean, std)
    }

    /// Is the member reachable at `now` (phi below the threshold)?
    pub fn reachable(&self, now: Duration) -> bool {
        self.phi(now) < self.config.threshold
    }
}

/// `-log10(1 - F(elapsed))` for a normal distribution, with the logistic
/// approximation of its CDF that Akka uses (no `erf` needed).
fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p = if elapsed > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    (-p.max(f64::MIN_POSITIVE).log10()).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn phi_grows_with_silence_and_crosses_the_threshold_within_the_bound() {
        let mut d = PhiDetector::new(PhiConfig::default());
        for i in 0..20 {
            d.heartbeat(ms(i * 500));
        }
        let last = 19 * 500;
        assert!(d.phi(ms(last + 100)) < 1.0);
        assert!(d.reachable(ms(last + 600)));
        let mut crossed = None;
        for t in (0..5_000).step_by(10) {
            if !d.reachable(ms(last + t)) {
                crossed = Some(t);
                break;
            }
        }
        let crossed = crossed.expect("a silent member becomes unreachable");
        assert!(
            (1_000..=2_000).contains(&crossed),
            "crossed at {crossed} ms"
        );
        let mut prev = 0.0;
        for t in (0..3_000).step_by(50) {
            let p = d.phi(ms(last + t));
            assert!(p >= prev, "phi never falls while silent");
            prev = p;
        }
        // A heartbeat makes it reachable again.
        d.heartbeat(ms(last + 3_000));
        assert!(d.reachable(ms(last + 3_100)));
    }

    #[test]
    fn irregular_heartbeats_are_tolerated_longer() {
        let mut regular = PhiDetector::new(PhiConfig::default());
        let mut jittery = PhiDetector::new(PhiConfig::default());
        let mut t = 0;
        for i in 0..40u64 {
            regular.heartbeat(ms(i * 500));
            t += if i % 2 == 0 { 100 } else { 900 };
            jittery.heartbeat(ms(t));
        }
        let silence = 1_300;
        assert!(regular.phi(ms(39 * 500 + silence)) > jittery.phi(ms(t + silence)));
    }
}
