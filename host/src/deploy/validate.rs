//! Validation of a new behavior version before it goes live: the whole
//! history of a sample of existing entities is replayed through it from
//! event #1 (a snapshot never hides an old event), the state it folds is
//! checked against each entity's newest snapshot of its state schema, every
//! exemplar the node keeps of the type's journal (the first event of each
//! kind each earlier version wrote, [`super::exemplars`]) is decoded by it,
//! and the state it reaches is compared with the state the active version
//! computes.
//!
//! Owns [`ValidationReport`] (kept in the deploy history) and [`validate`];
//! the replay itself is the shared [`crate::replay`]. A decode error, a
//! rejected stored event, a trap, a state that differs from a snapshot of
//! the same schema, or an exemplar the candidate cannot decode is a
//! [`ReplayFailure`] naming the entity and the sequence number; any failure
//! refuses the deploy.
//!
//! Cost: the sampled entities' histories (at most `deploy_sample` entities,
//! each read once from #1 and its prefix up to the snapshot folded twice
//! when it has one), the events written to the type since the previous
//! deploy (the exemplar scan), and one decode per exemplar (at most
//! [`super::exemplars::MAX_EXEMPLARS_PER_TYPE`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use cairn_store::{EntityKey, Journal, JournalError, SnapshotStore};
use serde::{Deserialize, Serialize};

use super::exemplars::{ExemplarError, Exemplars};
use crate::behavior::Behavior;
use crate::replay::{self, FoldOn, Replay, ReplayError, Replayed, Until};

/// Most failures and differences listed in a report (the counts are exact).
pub const REPORT_LIST_MAX: usize = 20;

/// What replaying real history through a candidate version showed.
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
    /// Entities the candidate cannot replay (at most [`REPORT_LIST_MAX`]).
    pub failures: Vec<ReplayFailure>,
    /// How many entities failed.
    pub failed: u64,
    /// Entities whose state differs between the active version and the
    /// candidate (at most [`REPORT_LIST_MAX`]).
    pub differences: Vec<StateDifference>,
    /// How many sampled entities have a different state.
    pub differing: u64,
    /// Exemplars of the type's journal the candidate decoded.
    #[serde(default)]
    pub exemplars: u64,
    /// (version, kind) pairs seen in the journal beyond the exemplar cap,
    /// which were not checked.
    #[serde(default)]
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
    /// The exemplars could not be brought up to date.
    #[error("exemplars: {0}")]
    Exemplars(#[from] ExemplarError),
}

/// The phase of a validation that lists the entities to replay.
const LISTING: &str = "validating against history: choosing the entities to replay";
/// The phase of a validation that replays entities (done of total).
const REPLAYING: &str = "validating against history: replaying entities";
/// The phase of a validation that scans the journal for exemplars and has
/// the candidate decode them.
const EXEMPLARS: &str = "validating against history: decoding an exemplar of every kind of event";

/// What a validation reads and compares.
pub(crate) struct Inputs<'a> {
    /// The journal.
    pub journal: &'a Arc<dyn Journal>,
    /// The snapshot store.
    pub snapshots: &'a Arc<dyn SnapshotStore>,
    /// The node's exemplars.
    pub exemplars: &'a Exemplars,
    /// The entity type.
    pub entity_type: &'a str,
    /// Entities whose history is replayed (at most).
    pub sample: usize,
    /// Where the validation reports its phase, if anywhere.
    pub progress: Option<&'a super::ProgressGuard<'a>>,
}

impl ValidationReport {
    fn fail(&mut self, entity_id: &str, seq: u64, error: String) {
        self.failed += 1;
        if self.failures.len() < REPORT_LIST_MAX {
            self.failures.push(ReplayFailure {
                entity_id: entity_id.to_owned(),
                seq,
                error,
            });
        }
    }
}

/// Validates `candidate` against the type's history (see the module docs)
/// and compares it with `active`, if there is one.
pub(crate) async fn validate(
    inputs: Inputs<'_>,
    candidate: &Arc<dyn Behavior>,
    active: Option<&Arc<dyn Behavior>>,
) -> Result<ValidationReport, ValidateError> {
    let started = Instant::now();
    let mut report = ValidationReport::default();
    let Inputs {
        journal,
        snapshots,
        exemplars,
        entity_type,
        sample,
        progress,
    } = inputs;
    let phase = |phase: &str, done: usize, total: usize| {
        if let Some(p) = progress {
            p.set(phase, done as u64, total as u64);
        }
    };
    let mut failed_entities = HashSet::new();
    if sample > 0 {
        phase(LISTING, 0, 0);
        let ids = journal.entity_ids(entity_type, sample).await?;
        let total = ids.len();
        for (i, id) in ids.into_iter().enumerate() {
            phase(REPLAYING, i, total);
            let key = EntityKey::new(entity_type, &id);
            report.sampled += 1;
            let Some(new) = replay_whole(journal, snapshots, candidate, &key, &mut report).await?
            else {
                failed_entities.insert(id);
                continue;
            };
            if let Some(active) = active {
                compare(
                    journal,
                    snapshots,
                    &key,
                    active,
                    candidate,
                    &new,
                    &mut report,
                )
                .await?;
            }
            tokio::task::yield_now().await;
        }
        phase(REPLAYING, total, total);
    }
    phase(EXEMPLARS, 0, 0);
    check_exemplars(
        journal,
        exemplars,
        entity_type,
        candidate,
        &failed_entities,
        &mut report,
    )
    .await?;
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn how(key: &EntityKey, until: Until, from_snapshot: bool) -> Replay<'_> {
    Replay {
        key,
        until,
        from_snapshot,
        fold_on: FoldOn::Background,
    }
}

/// Replays one entity's whole history through the candidate from #1 and
/// checks the state it folds at the newest snapshot of the candidate's
/// schema against that snapshot. `None` when the entity failed (recorded
/// in the report).
async fn replay_whole(
    journal: &Arc<dyn Journal>,
    snapshots: &Arc<dyn SnapshotStore>,
    candidate: &Arc<dyn Behavior>,
    key: &EntityKey,
    report: &mut ValidationReport,
) -> Result<Option<Replayed>, ValidateError> {
    let id = key.entity_id.as_str();
    let schema = candidate.descriptor().state_schema;
    let snapshot = snapshots.load(key, u64::MAX, schema).await?;
    // Up to the snapshot (everything, without one), from the initial state.
    let upto = snapshot.as_ref().map_or(u64::MAX, |s| s.seq);
    let prefix = match replay::replay(
        journal,
        snapshots,
        candidate,
        how(key, Until::Seq(upto), false),
    )
    .await
    {
        Ok(r) => r,
        Err(ReplayError::Journal(e)) => return Err(ValidateError::Journal(e)),
        Err(f) => {
            report.events += f.replayed();
            report.fail(id, f.seq(), failure_message(&f));
            return Ok(None);
        }
    };
    report.events += prefix.replayed;
    let Some(snapshot) = snapshot else {
        return Ok(Some(prefix));
    };
    report.from_snapshot += 1;
    if prefix.seq != snapshot.seq {
        report.fail(
            id,
            snapshot.seq,
            format!(
                "the journal ends at #{} but a snapshot was taken at #{}",
                prefix.seq, snapshot.seq
            ),
        );
        return Ok(None);
    }
    if prefix.state != snapshot.state {
        let (folded, stored) = (
            render(candidate, &prefix.state),
            render(candidate, &snapshot.state),
        );
        if folded != stored {
            report.fail(
                id,
                snapshot.seq,
                format!(
                    "the state folded from events #1..=#{seq} is {folded}, but the snapshot at #{seq} (state schema {schema}) holds {stored}: \
                     this version would carry that snapshot over unchanged; declare a new state schema to rebuild state from events",
                    seq = snapshot.seq
                ),
            );
            return Ok(None);
        }
    }
    // The rest of the history, from the snapshot just checked.
    match replay::replay(
        journal,
        snapshots,
        candidate,
        how(key, Until::Seq(u64::MAX), true),
    )
    .await
    {
        Ok(rest) => {
            report.events += rest.replayed;
            Ok(Some(Replayed {
                replayed: prefix.replayed + rest.replayed,
                ..rest
            }))
        }
        Err(ReplayError::Journal(e)) => Err(ValidateError::Journal(e)),
        Err(f) => {
            report.events += f.replayed();
            report.fail(id, f.seq(), failure_message(&f));
            Ok(None)
        }
    }
}

/// The active version's view at the same sequence number, for the
/// differences (a failure here is not the candidate's fault: the entity is
/// then left out).
async fn compare(
    journal: &Arc<dyn Journal>,
    snapshots: &Arc<dyn SnapshotStore>,
    key: &EntityKey,
    active: &Arc<dyn Behavior>,
    candidate: &Arc<dyn Behavior>,
    new: &Replayed,
    report: &mut ValidationReport,
) -> Result<(), ValidateError> {
    let old = match replay::replay(
        journal,
        snapshots,
        active,
        how(key, Until::Seq(new.seq), true),
    )
    .await
    {
        Ok(old) => old,
        Err(ReplayError::Journal(e)) => return Err(ValidateError::Journal(e)),
        Err(_) => return Ok(()),
    };
    let (a, c) = (render(active, &old.state), render(candidate, &new.state));
    if a != c {
        report.differing += 1;
        if report.differences.len() < REPORT_LIST_MAX {
            report.differences.push(StateDifference {
                entity_id: key.entity_id.clone(),
                seq: new.seq,
                active: a,
                candidate: c,
            });
        }
    }
    Ok(())
}

/// Brings the type's exemplars up to date and has the candidate decode
/// each one (on the background pool, all in one task).
async fn check_exemplars(
    journal: &Arc<dyn Journal>,
    exemplars: &Exemplars,
    entity_type: &str,
    candidate: &Arc<dyn Behavior>,
    failed_entities: &HashSet<String>,
    report: &mut ValidationReport,
) -> Result<(), ValidateError> {
    let kept = exemplars.refresh(journal, entity_type).await?;
    report.exemplars_not_kept = kept.not_kept;
    let mut events = Vec::with_capacity(kept.exemplars.len());
    for e in kept.exemplars {
        let key = EntityKey::new(entity_type, &e.entity_id);
        match journal
            .read(&key, e.seq, e.seq, 1)
            .await?
            .into_iter()
            .next()
        {
            Some(stored) if stored.seq == e.seq => events.push((e, stored.payload)),
            // Gone (a cluster member's unacknowledged tail, cut since): the
            // next exemplar of its kind will be kept by a later scan.
            _ => {
                tracing::debug!(entity_type, entity = %e.entity_id, seq = e.seq, "an exemplar is no longer in the journal")
            }
        }
    }
    let behavior = candidate.clone();
    let decoded = crate::runtime::background(move || {
        events
            .into_iter()
            .map(|(e, payload)| {
                let result = match behavior.event_to_json(&payload) {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(message)) => Err(message),
                    Err(fault) => Err(fault.to_string()),
                };
                (e, result)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let Some(decoded) = decoded else {
        report.fail(
            "",
            0,
            "the exemplar check could not run (its task failed)".into(),
        );
        return Ok(());
    };
    for (e, result) in decoded {
        report.exemplars += 1;
        // An entity the sample already failed is counted once.
        if let Err(message) = result
            && !failed_entities.contains(&e.entity_id)
        {
            let kind = if e.kind.is_empty() {
                String::from("an event")
            } else {
                format!("`{}`", e.kind)
            };
            report.fail(
                &e.entity_id,
                e.seq,
                format!(
                    "exemplar ({kind} written by version {}): {message}",
                    e.version
                ),
            );
        }
    }
    Ok(())
}

fn failure_message(f: &ReplayError) -> String {
    match f {
        ReplayError::Event { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn render(b: &Arc<dyn Behavior>, state: &[u8]) -> String {
    match b.state_to_json(state) {
        Ok(Ok(j)) => j,
        _ => format!("<{} bytes>", state.len()),
    }
}
