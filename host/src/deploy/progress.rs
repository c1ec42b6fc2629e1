//! What a deploy (or check, or rollback) of each entity type is doing now,
//! for `Request::DeployProgress`: the deploy path sets a phase ("compiling
//! 18432 KiB component", "validating against history", ...) with an
//! optional count of work done out of a total; the entry is removed when
//! the deploy returns, whatever its outcome ([`ProgressGuard`] clears it on
//! drop). Readers get a copy ([`DeployPhase`]); nothing here waits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The phase of the deploy of one type in flight, as [`DeployProgress::current`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployPhase {
    /// What the deploy is doing, as a short text.
    pub phase: String,
    /// Units of work of the phase done (0 if the phase does not count).
    pub done: u64,
    /// Units of work of the phase (0 if the phase does not count).
    pub total: u64,
    /// How long the deploy has been in this phase.
    pub elapsed: Duration,
}

struct Entry {
    phase: String,
    done: u64,
    total: u64,
    since: Instant,
    /// Which deploy of the type wrote it (a second deploy of the type waits
    /// for the first; only its own guard may clear its entry).
    owner: u64,
}

/// The phase of every deploy in flight on a node, by entity type.
#[derive(Default)]
pub struct DeployProgress {
    phases: Mutex<HashMap<String, Entry>>,
    next_owner: Mutex<u64>,
}

impl DeployProgress {
    /// Starts reporting a deploy of `entity_type` in `phase`; the returned
    /// guard updates it and removes it when dropped. While another deploy
    /// of the type is reported (this one waits for the node's deploy lock),
    /// that one stays shown until this one calls [`ProgressGuard::set`].
    pub fn begin(&self, entity_type: &str, phase: impl Into<String>) -> ProgressGuard<'_> {
        let owner = {
            let mut n = self.next_owner.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        let guard = ProgressGuard {
            progress: self,
            entity_type: entity_type.to_owned(),
            owner,
        };
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        phases
            .entry(entity_type.to_owned())
            .or_insert_with(|| Entry {
                phase: phase.into(),
                done: 0,
                total: 0,
                since: Instant::now(),
                owner,
            });
        drop(phases);
        guard
    }

    /// The phase of the deploy of `entity_type` in flight, if any.
    pub fn current(&self, entity_type: &str) -> Option<DeployPhase> {
        let phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        phases.get(entity_type).map(|e| DeployPhase {
            phase: e.phase.clone(),
            done: e.done,
            total: e.total,
            elapsed: e.since.elapsed(),
        })
    }
}

/// Reports the phases of one deploy; removes its entry when dropped.
pub struct ProgressGuard<'a> {
    progress: &'a DeployProgress,
    entity_type: String,
    owner: u64,
}

impl ProgressGuard<'_> {
    /// Enters `phase` (its clock restarts), or with the same phase text
    /// updates its counts (its clock keeps running). The type's entry is
    /// this deploy's from now on.
    pub fn set(&self, phase: impl Into<String>, done: u64, total: u64) {
        let phase = phase.into();
        let mut phases = self
            .progress
            .phases
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let since = match phases.get(&self.entity_type) {
            Some(e) if e.owner == self.owner && e.phase == phase => e.since,
            _ => Instant::now(),
        };
        phases.insert(
            self.entity_type.clone(),
            Entry {
                phase,
                done,
                total,
                since,
                owner: self.owner,
            },
        );
    }
}

impl Drop for ProgressGuard<'_> {
    fn drop(&mut self) {
        let mut phases = self
            .progress
            .phases
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if phases
            .get(&self.entity_type)
            .is_some_and(|e| e.owner == self.owner)
        {
            phases.remove(&self.entity_type);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_is_shown_while_its_deploy_runs_and_cleared_when_it_returns() {
        let p = DeployProgress::default();
        assert_eq!(p.current("acct"), None);
        {
            let g = p.begin("acct", "compiling 10 KiB component");
            let c = p.current("acct").unwrap();
            assert_eq!(
                (c.phase.as_str(), c.done, c.total),
                ("compiling 10 KiB component", 0, 0)
            );
            assert_eq!(p.current("other"), None);
            g.set("validating against history", 3, 10);
            let c = p.current("acct").unwrap();
            assert_eq!(
                (c.phase.as_str(), c.done, c.total),
                ("validating against history", 3, 10)
            );
        }
        assert_eq!(p.current("acct"), None);
    }

    #[test]
    fn the_clock_restarts_with_each_phase_not_with_each_count() {
        let p = DeployProgress::default();
        let g = p.begin("acct", "validating against history");
        std::thread::sleep(Duration::from_millis(30));
        g.set("validating against history", 1, 2);
        assert!(p.current("acct").unwrap().elapsed >= Duration::from_millis(30));
        g.set("activating", 0, 0);
        assert!(p.current("acct").unwrap().elapsed < Duration::from_millis(30));
    }

    #[test]
    fn a_waiting_deploy_shows_the_running_one_until_it_runs_itself() {
        let p = DeployProgress::default();
        let first = p.begin("acct", "compiling 10 KiB component");
        let second = p.begin(
            "acct",
            "waiting for an earlier deploy on the node to finish",
        );
        assert_eq!(
            p.current("acct").unwrap().phase,
            "compiling 10 KiB component"
        );
        drop(first);
        assert_eq!(p.current("acct"), None);
        second.set("activating", 0, 0);
        assert_eq!(p.current("acct").unwrap().phase, "activating");
        // A guard that no longer owns the entry leaves it alone.
        let third = p.begin(
            "acct",
            "waiting for an earlier deploy on the node to finish",
        );
        drop(third);
        assert_eq!(p.current("acct").unwrap().phase, "activating");
        drop(second);
        assert_eq!(p.current("acct"), None);
    }
}
