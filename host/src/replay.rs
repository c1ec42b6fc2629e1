//! The one replay of an entity's history: the newest usable snapshot (if
//! asked for), then the later events folded through a behavior in chunks,
//! up to a stop condition.
//!
//! Recovery, time travel and deploy validation all call [`replay`]; they
//! differ only in the stop condition ([`Until`]), whether a snapshot may be
//! the start, and where the guest's fold runs ([`FoldOn`]). Replication
//! catch-up will be one more caller. Nothing here knows about the node or
//! the entity actor.

use std::collections::VecDeque;
use std::sync::Arc;

use cairn_store::{BoxFuture, EntityKey, Journal, JournalError, PackedEvents, SnapshotStore};

use crate::behavior::{Behavior, FoldError, GuestFault};

/// Events read and folded per step (one guest `fold` call per chunk).
const CHUNK: usize = 4096;

/// Chunks read ahead, in parallel, while one is folded (sequence stops only).
const READ_AHEAD: usize = 2;

/// Most bytes of events handed to one `fold` call (one event larger than
/// this goes alone): the guest holds the batch besides the state in its
/// memory (64 MiB by default) and must fold it within one call's deadline
/// (1 s by default, on a busy machine too), so a chunk of large events is
/// folded in parts.
const FOLD_BYTES: usize = 1024 * 1024;

/// Splits a chunk of packed events (numbered from `first`) into parts of
/// at most about `max` bytes each.
fn split(chunk: PackedEvents, first: u64, max: usize) -> Vec<PackedEvents> {
    if chunk.packed.len() <= max {
        return vec![chunk];
    }
    let mut parts = Vec::new();
    let mut part = PackedEvents::default();
    let mut rest = chunk.packed.as_slice();
    let mut seq = first;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            break;
        }
        if part.count > 0 && part.packed.len() + 4 + len > max {
            parts.push(std::mem::take(&mut part));
        }
        part.packed.extend_from_slice(&rest[..4 + len]);
        part.count += 1;
        part.last_seq = seq;
        seq += 1;
        rest = &tail[len..];
    }
    if part.count > 0 {
        parts.push(part);
    }
    parts
}

/// Where a replay stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Until {
    /// After the event with this sequence number (or the last one, if the
    /// entity has fewer); `u64::MAX` replays everything.
    Seq(u64),
    /// After every event stored at or before this time (ms since the Unix
    /// epoch); replays from the start, as snapshots do not record the
    /// timestamps of the events they fold.
    Time(u64),
}

/// Where the guest's fold runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FoldOn {
    /// On the calling task (recovery: the entity waits for it anyway), under
    /// the inline budget; a longer fold moves to the guest pool
    /// (`runtime::call`).
    Caller,
    /// On the low-priority background pool, so that a long replay neither
    /// holds a runtime worker nor takes CPU from commands (validation).
    Background,
}

/// What to replay and how.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Replay<'a> {
    /// The entity.
    pub key: &'a EntityKey,
    /// The stop condition.
    pub until: Until,
    /// Start from the newest snapshot of the behavior's state schema (at or
    /// below the stop, for [`Until::Seq`]).
    pub from_snapshot: bool,
    /// Where the fold runs.
    pub fold_on: FoldOn,
}

/// A state rebuilt by a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// The encoded state.
    pub state: Vec<u8>,
    /// The sequence number it is at.
    pub seq: u64,
    /// Events folded (after the snapshot, if one was used).
    pub replayed: u64,
    /// The snapshot the replay started from.
    pub snapshot_seq: Option<u64>,
}

/// Why a replay stopped short.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReplayError {
    /// The journal or the snapshot store failed.
    #[error("cannot read the journal: {0}")]
    Journal(#[from] JournalError),
    /// The journal returned a non-contiguous range.
    #[error("journal gap: expected events #{from}..=#{to}, the last read is #{last}")]
    Gap {
        /// First expected sequence number.
        from: u64,
        /// Last expected sequence number.
        to: u64,
        /// What the journal's chunk ended with.
        last: u64,
    },
    /// The behavior has no initial state.
    #[error("initial state: {0}")]
    Initial(GuestFault),
    /// An event could not be applied (a decode error, or the guest failed on it).
    #[error("event #{seq} cannot be applied: {message}")]
    Event {
        /// The event.
        seq: u64,
        /// What went wrong.
        message: String,
        /// Events applied before it.
        replayed: u64,
    },
}

impl ReplayError {
    /// The sequence number the failure is about (0: before any event).
    pub(crate) fn seq(&self) -> u64 {
        match self {
            ReplayError::Event { seq, .. } => *seq,
            ReplayError::Gap { from, .. } => *from,
            _ => 0,
        }
    }

    /// Events applied before the failure.
    pub(crate) fn replayed(&self) -> u64 {
        match self {
            ReplayError::Event { replayed, .. } => *replayed,
            _ => 0,
        }
    }
}

type Fold = Result<Result<Vec<u8>, FoldError>, GuestFault>;

async fn fold(behavior: &Arc<dyn Behavior>, on: FoldOn, state: &[u8], packed: &[u8]) -> Fold {
    match on {
        FoldOn::Caller => {
            crate::runtime::call(
                behavior,
                |b| b.fold(state, packed),
                || {
                    let (state, packed) = (state.to_vec(), packed.to_vec());
                    Box::new(move |b: &dyn Behavior| b.fold(&state, &packed))
                },
            )
            .await
        }
        FoldOn::Background => {
            let (behavior, state, packed) = (behavior.clone(), state.to_vec(), packed.to_vec());
            crate::runtime::background(move || behavior.fold(&state, &packed))
                .await
                .unwrap_or_else(|| Err(GuestFault::Trap("the replay task failed".into())))
        }
    }
}

/// Reads a replay's chunks: packed reads with read-ahead up to a sequence
/// number, or timestamped reads cut at a time.
struct Chunks<'a> {
    journal: &'a Arc<dyn Journal>,
    key: &'a EntityKey,
    until: Until,
    /// Reads in flight, oldest first.
    reads: VecDeque<BoxFuture<'static, Result<PackedEvents, JournalError>>>,
    /// Highest sequence number requested so far.
    requested: u64,
}

impl<'a> Chunks<'a> {
    fn new(journal: &'a Arc<dyn Journal>, key: &'a EntityKey, until: Until, seq: u64) -> Self {
        Chunks {
            journal,
            key,
            until,
            reads: VecDeque::new(),
            requested: seq,
        }
    }

    /// The next chunk after `seq`, and whether more may follow.
    async fn next(&mut self, seq: u64) -> Result<(PackedEvents, bool), JournalError> {
        match self.until {
            Until::Seq(upto) => {
                if self.reads.is_empty() {
                    self.request(upto);
                }
                let chunk = match self.reads.pop_front() {
                    Some(read) => read.await?,
                    None => PackedEvents::default(),
                };
                let more = chunk.count == CHUNK && chunk.last_seq < upto;
                // The first read goes alone (most entities have less than
                // a chunk); once one comes back full, later chunks are read
                // in parallel, on the blocking pool, while this one folds.
                while more && self.reads.len() < READ_AHEAD && self.requested < upto {
                    self.request(upto);
                }
                Ok((chunk, more))
            }
            Until::Time(t) => {
                let events = self
                    .journal
                    .read(self.key, seq + 1, u64::MAX, CHUNK)
                    .await?;
                let mut chunk = PackedEvents::default();
                let mut more = events.len() == CHUNK;
                for e in &events {
                    if e.timestamp_ms > t {
                        more = false;
                        break;
                    }
                    chunk.push(e.seq, &e.payload)?;
                }
                Ok((chunk, more))
            }
        }
    }

    /// Queues the read of the next chunk, at most up to `upto`.
    fn request(&mut self, upto: u64) {
        let from = self.requested + 1;
        let limit = (upto - self.requested).min(CHUNK as u64) as usize;
        self.requested += limit as u64;
        let read = if self.reads.is_empty() {
            self.journal.read_packed(self.key, from, limit)
        } else {
            let (journal, key) = (self.journal.clone(), self.key.clone());
            let handle = tokio::spawn(async move { journal.read_packed(&key, from, limit).await });
            Box::pin(async move {
                handle
                    .await
                    .unwrap_or_else(|e| Err(JournalError::Closed(e.to_string())))
            })
        };
        self.reads.push_back(read);
    }
}

/// Rebuilds one entity's state through `behavior` as `how` says.
pub(crate) async fn replay(
    journal: &Arc<dyn Journal>,
    snapshots: &Arc<dyn SnapshotStore>,
    behavior: &Arc<dyn Behavior>,
    how: Replay<'_>,
) -> Result<Replayed, ReplayError> {
    let snapshot = match how.until {
        Until::Seq(upto) if how.from_snapshot => {
            let schema = behavior.descriptor().state_schema;
            snapshots.load(how.key, upto, schema).await?
        }
        _ => None,
    };
    let (mut state, mut seq, snapshot_seq) = match snapshot {
        Some(s) => (s.state, s.seq, Some(s.seq)),
        None => (
            behavior.initial_state().map_err(ReplayError::Initial)?,
            0,
            None,
        ),
    };
    let mut replayed = 0u64;
    let mut chunks = Chunks::new(journal, how.key, how.until, seq);
    loop {
        if let Until::Seq(upto) = how.until
            && seq >= upto
        {
            break;
        }
        let (chunk, more) = chunks.next(seq).await?;
        if chunk.count == 0 {
            break;
        }
        let to = seq + chunk.count as u64;
        if chunk.last_seq != to {
            return Err(ReplayError::Gap {
                from: seq + 1,
                to,
                last: chunk.last_seq,
            });
        }
        for part in split(chunk, seq + 1, FOLD_BYTES) {
            match fold(behavior, how.fold_on, &state, &part.packed).await {
                Ok(Ok(next)) => state = next,
                Ok(Err(e)) => {
                    return Err(ReplayError::Event {
                        seq: seq + 1 + u64::from(e.index),
                        message: e.message,
                        replayed: replayed + u64::from(e.index),
                    });
                }
                Err(fault) => {
                    return Err(locate_fault(
                        behavior,
                        how.fold_on,
                        state,
                        seq,
                        replayed,
                        &part,
                        fault,
                    )
                    .await);
                }
            }
            seq += part.count as u64;
            replayed += part.count as u64;
        }
        debug_assert_eq!(seq, to);
        if !more {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(Replayed {
        state,
        seq,
        replayed,
        snapshot_seq,
    })
}

/// The guest failed on a chunk: folds its events one at a time to name the
/// event that trips it.
async fn locate_fault(
    behavior: &Arc<dyn Behavior>,
    on: FoldOn,
    mut state: Vec<u8>,
    seq: u64,
    mut replayed: u64,
    chunk: &PackedEvents,
    fault: GuestFault,
) -> ReplayError {
    let mut rest = chunk.packed.as_slice();
    let mut at = seq + 1;
    while let Some((len, _)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize + 4;
        let Some(one) = rest.get(..len) else { break };
        match fold(behavior, on, &state, one).await {
            Ok(Ok(next)) => state = next,
            Ok(Err(e)) => {
                return ReplayError::Event {
                    seq: at,
                    message: e.message,
                    replayed,
                };
            }
            Err(f) => {
                return ReplayError::Event {
                    seq: at,
                    message: f.to_string(),
                    replayed,
                };
            }
        }
        rest = &rest[len..];
        at += 1;
        replayed += 1;
    }
    ReplayError::Event {
        seq: seq + 1,
        message: fault.to_string(),
        replayed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_chunks_fold_in_parts_of_bounded_size() {
        let mut chunk = PackedEvents::default();
        for (i, len) in [3usize, 5, 20, 2, 2, 9].iter().enumerate() {
            chunk.push(11 + i as u64, &vec![i as u8; *len]).unwrap();
        }
        let whole = chunk.clone();
        assert_eq!(split(chunk.clone(), 11, 1 << 20), vec![whole]);
        let parts = split(chunk.clone(), 11, 16);
        let sizes: Vec<(usize, u64)> = parts.iter().map(|p| (p.count, p.last_seq)).collect();
        // 7+9 | 24 (alone: larger than the bound) | 6+6 | 13
        assert_eq!(sizes, [(2, 12), (1, 13), (2, 15), (1, 16)]);
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.packed.clone()).collect();
        assert_eq!(joined, chunk.packed);
    }
}
