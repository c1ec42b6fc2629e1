//! What a deploy reports and the deploy history, as the protocol carries
//! them. These are the protocol's own types: the node converts its internal
//! validation report and registry records into them (in the server), so the
//! node's structures can change without changing the wire.

use serde::{Deserialize, Serialize};

/// What replaying real history through a candidate component showed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// Entities whose history was replayed.
    pub sampled: u64,
    /// Events replayed through the candidate.
    pub events: u64,
    /// Sampled entities whose newest snapshot of the candidate's state
    /// schema was checked against the state the candidate folds from #1.
    pub from_snapshot: u64,
    /// How long the validation took (ms).
    pub millis: u64,
    /// Entities the candidate cannot replay (the node lists a bounded number).
    pub failures: Vec<ReplayFailure>,
    /// How many entities failed (exact).
    pub failed: u64,
    /// Entities whose state differs between the active component and the
    /// candidate (the node lists a bounded number).
    pub differences: Vec<StateDifference>,
    /// How many sampled entities have a different state (exact).
    pub differing: u64,
    /// Exemplars of the type's journal (the first event of each kind each
    /// version wrote) the candidate decoded. Since protocol version 3.
    pub exemplars: u64,
    /// Kinds of event seen beyond the node's exemplar cap, not checked.
    /// Since protocol version 3.
    pub exemplars_not_kept: u64,
}

impl ValidationReport {
    /// True if the candidate replayed every sampled entity.
    pub fn passed(&self) -> bool {
        self.failed == 0
    }

    /// One line: what was replayed and what went wrong.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "replayed {} events of {} entities from #1 ({} snapshots checked) and decoded {} exemplars in {} ms: {} failed, {} with a different state",
            self.events,
            self.sampled,
            self.from_snapshot,
            self.exemplars,
            self.millis,
            self.failed,
            self.differing
        );
        if self.exemplars_not_kept > 0 {
            s.push_str(&format!(
                " ({} kinds of event over the exemplar cap not checked)",
                self.exemplars_not_kept
            ));
        }
        if let Some(f) = self.failures.first() {
            s.push_str(&format!(
                "; first failure: entity `{}` event #{}: {}",
                f.entity_id, f.seq, f.error
            ));
        }
        s
    }
}

/// An entity whose history the candidate cannot replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayFailure {
    /// The entity.
    pub entity_id: String,
    /// Sequence number of the event that failed (0: the initial state).
    pub seq: u64,
    /// What went wrong.
    pub error: String,
}

/// An entity whose state the candidate computes differently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDifference {
    /// The entity.
    pub entity_id: String,
    /// Sequence number both states are at.
    pub seq: u64,
    /// The state under the active component, as JSON.
    pub active: String,
    /// The state under the candidate, as JSON.
    pub candidate: String,
}

/// What a history entry was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DeployAction {
    /// A new component was deployed.
    Deploy,
    /// An earlier deploy was activated again.
    Rollback,
}

/// How a deploy or rollback ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DeployOutcome {
    /// The component is active.
    Activated,
    /// Validation failed; the active deploy stayed.
    Refused,
}

/// One entry of a type's deploy history: what was tried, when, and how it
/// ended, with the validation report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// Entity type.
    pub entity_type: String,
    /// Deploy or rollback.
    pub action: DeployAction,
    /// The deploy number activated, or the one a refused rollback aimed at
    /// (none for a refused new component: it never got a number).
    pub deploy: Option<u32>,
    /// sha256 of the component, hex.
    pub hash: String,
    /// The behavior's declared version.
    pub behavior_version: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// How it ended.
    pub outcome: DeployOutcome,
    /// What replaying history showed.
    pub report: ValidationReport,
}
