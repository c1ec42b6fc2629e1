//! Validation of a new behavior version before it goes live: the history of
//! a sample of existing entities is replayed through it (from their newest
//! snapshot of its state schema, or from the start), and the resulting state
//! is compared with the state the active version computes.
//!
//! Owns [`ValidationReport`] (kept in the deploy history) and [`validate`];
//! the replay itself is the shared [`crate::replay`]. A decode error, a rejected stored event or a trap during
//! replay is a [`ReplayFailure`] naming the entity and the sequence number;
//! any failure refuses the deploy.

use std::sync::Arc;
use std::time::Instant;

use cairn_store::{EntityKey, Journal, JournalError, SnapshotStore};
use serde::{Deserialize, Serialize};

use crate::behavior::Behavior;
use crate::replay::{self, FoldOn, Replay, ReplayError, Until};

/// Most failures and differences listed in a report (the counts are exact).
pub const REPORT_LIST_MAX: usize = 20;

/// What replaying real history through a candidate version showed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// Entities whose history was replayed.
    pub sampled: u64,
    /// Events replayed through the candidate.
    pub events: u64,
    /// Sampled entities that started from a snapshot of the candidate's schema.
    pub from_snapshot: u64,
    /// How long the validation took (ms).
    pub millis: u64,
    /// Entities the candidate cannot replay (at most [`REPORT_LIST_MAX`]).
    pub failures: Vec<ReplayFailure>,
    /// How many entities failed.
    pub failed: u64,
    /// Entities whose state differs between the active version and the
    /// candidate (at most [`REPORT_LIST_MAX`]).
    pub differences: Vec<StateDifference>,
    /// How many sampled entities have a different state.
    pub differing: u64,
}

impl ValidationReport {
    /// True if the candidate replayed every sampled entity.
    pub fn passed(&self) -> bool {
        self.failed == 0
    }

    /// One line: what was replayed and what went wrong.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "replayed {} events of {} entities in {} ms ({} from a snapshot): {} failed, {} with a different state",
            self.events, self.sampled, self.millis, self.from_snapshot, self.failed, self.differing
        );
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
    /// The state under the active version, as JSON.
    pub active: String,
    /// The state under the candidate, as JSON.
    pub candidate: String,
}

/// Why validation could not run (as opposed to the candidate failing it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValidateError {
    /// Reading the journal or the snapshots failed.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
}

/// Replays up to `sample` entities of `entity_type` through `candidate` and,
/// if there is one, through `active`, and reports what happened.
pub async fn validate(
    journal: &Arc<dyn Journal>,
    snapshots: &Arc<dyn SnapshotStore>,
    entity_type: &str,
    candidate: &Arc<dyn Behavior>,
    active: Option<&Arc<dyn Behavior>>,
    sample: usize,
) -> Result<ValidationReport, ValidateError> {
    let started = Instant::now();
    let mut report = ValidationReport::default();
    if sample == 0 {
        return Ok(report);
    }
    let ids = journal.entity_ids(entity_type, sample).await?;
    for id in ids {
        let key = EntityKey::new(entity_type, &id);
        report.sampled += 1;
        let how = |until| Replay {
            key: &key,
            until,
            from_snapshot: true,
            fold_on: FoldOn::Background,
        };
        let new =
            match replay::replay(journal, snapshots, candidate, how(Until::Seq(u64::MAX))).await {
                Ok(r) => r,
                Err(ReplayError::Journal(e)) => return Err(ValidateError::Journal(e)),
                Err(f) => {
                    report.failed += 1;
                    report.events += f.replayed();
                    if report.failures.len() < REPORT_LIST_MAX {
                        let error = match &f {
                            ReplayError::Event { message, .. } => message.clone(),
                            other => other.to_string(),
                        };
                        report.failures.push(ReplayFailure {
                            entity_id: id,
                            seq: f.seq(),
                            error,
                        });
                    }
                    continue;
                }
            };
        report.events += new.replayed;
        if new.snapshot_seq.is_some() {
            report.from_snapshot += 1;
        }
        let Some(active) = active else { continue };
        // The active version's view at the same sequence number, for the
        // differences (a failure here is not the candidate's fault: the
        // entity is then left out).
        let old = match replay::replay(journal, snapshots, active, how(Until::Seq(new.seq))).await {
            Ok(old) => old,
            Err(ReplayError::Journal(e)) => return Err(ValidateError::Journal(e)),
            Err(_) => continue,
        };
        let render = |b: &Arc<dyn Behavior>, state: &[u8]| match b.state_to_json(state) {
            Ok(Ok(j)) => j,
            _ => format!("<{} bytes>", state.len()),
        };
        let (a, c) = (render(active, &old.state), render(candidate, &new.state));
        if a != c {
            report.differing += 1;
            if report.differences.len() < REPORT_LIST_MAX {
                report.differences.push(StateDifference {
                    entity_id: id,
                    seq: new.seq,
                    active: a,
                    candidate: c,
                });
            }
        }
        tokio::task::yield_now().await;
    }
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}
