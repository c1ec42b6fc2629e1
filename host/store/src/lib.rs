//! Durable storage for Cairn: the event journal, snapshots and pending timers.
//!
//! Owns the [`Journal`] and [`SnapshotStore`] traits, the records they store,
//! and three backends: [`LogStore`] (an append-only checksummed log with an
//! index in memory, synced before any acknowledgement: the node's default,
//! faster with many entities writing at once), [`SqliteStore`] (embedded
//! SQLite in WAL mode, group commit, fsync before any acknowledgement;
//! inspectable with standard tools) and [`MemoryStore`] (no durability; for
//! tests).
//! Bytes are opaque here: this crate never decodes an event or a state, and
//! never panics on what it reads from disk.
//!
//! Layout: `sqlite`, `log` and `memory` are the backends; `file` is the file
//! layer under the log (the OS file, or a simulated disk in tests); `repair`
//! reports damage to the log and cuts it, for an operator. The
//! `testkit` feature adds the module `testkit`: the contract checks
//! every backend must pass and the simulated disk of the crash tests.

use std::future::Future;
use std::pin::Pin;

mod file;
mod log;
mod memory;
mod repair;
mod sqlite;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use log::LogStore;
pub use memory::MemoryStore;
pub use repair::{
    Affected, CutReport, DamageReason, Evidence, LogDamage, LogReport, check_log, cut_log,
};
pub use sqlite::{SqliteOptions, SqliteStore, WriterStats};

/// A boxed, sendable future (the traits are object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Identifies one entity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey {
    /// The entity type, e.g. `bank-account`.
    pub entity_type: String,
    /// The entity id within its type.
    pub entity_id: String,
}

impl EntityKey {
    /// Builds a key.
    pub fn new(entity_type: impl Into<String>, entity_id: impl Into<String>) -> Self {
        EntityKey {
            entity_type: entity_type.into(),
            entity_id: entity_id.into(),
        }
    }
}

impl std::fmt::Display for EntityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.entity_type, self.entity_id)
    }
}

/// One stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Sequence number within the entity: from 1, contiguous.
    pub seq: u64,
    /// When the host accepted the command, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Version of the behavior that produced the event.
    pub version: String,
    /// The encoded event, stored unchanged.
    pub payload: Vec<u8>,
}

/// A pending timer: deliver `command` to the entity at `fire_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerRecord {
    /// Unique id of the timer.
    pub timer_id: u64,
    /// When to fire, ms since the Unix epoch.
    pub fire_at_ms: u64,
    /// The encoded command.
    pub command: Vec<u8>,
}

/// One entity's atomic write: all of it becomes durable, or none of it.
#[derive(Clone, Debug, Default)]
pub struct Write {
    /// The entity.
    pub key: EntityKey,
    /// Events to append, with contiguous sequence numbers.
    pub events: Vec<EventRecord>,
    /// Timers to add.
    pub add_timers: Vec<TimerRecord>,
    /// Ids of this entity's timers to delete.
    pub remove_timers: Vec<u64>,
}

/// A stored state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Sequence number of the last event folded into `state`.
    pub seq: u64,
    /// State-schema version of the behavior that wrote it.
    pub schema: u32,
    /// When it was taken, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The encoded state.
    pub state: Vec<u8>,
}

/// Event payloads packed for a behavior's `fold`: for each event a
/// little-endian u32 length, then its bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedEvents {
    /// Number of events.
    pub count: usize,
    /// Sequence number of the last event (0 when `count` is 0).
    pub last_seq: u64,
    /// The packed payloads.
    pub packed: Vec<u8>,
}

impl PackedEvents {
    /// Appends one payload.
    pub fn push(&mut self, seq: u64, payload: &[u8]) -> Result<(), JournalError> {
        let len = u32::try_from(payload.len())
            .map_err(|_| JournalError::Corrupt(format!("event #{seq} is larger than 4 GiB")))?;
        self.packed.extend_from_slice(&len.to_le_bytes());
        self.packed.extend_from_slice(payload);
        self.count += 1;
        self.last_seq = seq;
        Ok(())
    }
}

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// An event with this sequence number already exists; nothing of the write was stored.
    #[error("sequence conflict: {key} already has event #{seq}")]
    Conflict {
        /// The entity.
        key: EntityKey,
        /// The first conflicting sequence number.
        seq: u64,
    },
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(String),
    /// A file could not be created or read.
    #[error("I/O error: {0}")]
    Io(String),
    /// The store is closed (its writer has stopped).
    #[error("storage is closed: {0}")]
    Closed(String),
    /// Data on disk cannot be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A record of the event log that had been acknowledged is damaged:
    /// where, why it is known to have been acknowledged, and which entities
    /// it and the records after it hold. Nothing was cut;
    /// [`cut_log`] (`cairn journal cut`) cuts it after a backup.
    #[error("{0}")]
    Damaged(Box<LogDamage>),
    /// Another process holds the event log (a running node, or a repair).
    #[error("{} is in use by another process (a running node?)", .0.display())]
    Locked(std::path::PathBuf),
    /// The database was written by a newer, unknown format.
    #[error("unsupported storage format {found} (this build reads up to {supported})")]
    UnsupportedFormat {
        /// Format found on disk.
        found: i64,
        /// Newest format this build reads.
        supported: i64,
    },
    /// An argument is out of range (e.g. a sequence number above i64::MAX).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A replicated journal could not make the write as durable as
    /// configured (too few replicas acknowledged it); it is not acknowledged.
    #[error("replication: {0}")]
    Replication(String),
    /// The writer does not run under the shard's current allocation (its
    /// node no longer owns the shard, the epoch moved on, or its lease
    /// expired): nothing was stored, and the entity must be run by its
    /// current owner.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The write failed after it may have been stored: it was sent to a
    /// replica that may keep it (a later resync or failover then imports
    /// it), or its bytes reached the file but the `fsync` failed (a restart
    /// may find them). It is not acknowledged, and it may or may not
    /// become part of the history. Every other error of a write means
    /// nothing of it was stored.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
}

/// The allocation an entity's writer runs under in a cluster: the shard of
/// the entity and the epoch of the shard's allocation when the entity was
/// started. A replicated journal refuses a write whose allocation is not
/// the shard's current one on this node ([`JournalError::Fenced`]); local
/// journals store nothing of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The entity's shard.
    pub shard: u32,
    /// The epoch of the shard's allocation the writer was started under.
    pub epoch: u64,
}

impl From<rusqlite::Error> for JournalError {
    fn from(e: rusqlite::Error) -> Self {
        JournalError::Database(e.to_string())
    }
}

/// The event journal (and the timers written with events).
pub trait Journal: Send + Sync + 'static {
    /// Durably appends one entity's write; resolves after it is fsync'd.
    /// Fails with [`JournalError::Conflict`] (storing nothing) if an event's
    /// sequence number already exists.
    fn append(&self, write: Write) -> BoxFuture<'static, Result<(), JournalError>>;
    /// [`Journal::append`] by a writer that runs under `fence` (an entity
    /// of a cluster member). Local journals ignore the fence; the
    /// replicated journal refuses the write unless `fence` is the shard's
    /// current allocation on this node and its lease holds.
    fn append_fenced(
        &self,
        write: Write,
        fence: Option<Fence>,
    ) -> BoxFuture<'static, Result<(), JournalError>> {
        let _ = fence;
        self.append(write)
    }
    /// Events with `from <= seq <= to`, ascending, at most `limit`.
    fn read(
        &self,
        key: &EntityKey,
        from: u64,
        to: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<EventRecord>, JournalError>>;
    /// Payloads of events with `seq >= from`, ascending, at most `limit`, packed.
    fn read_packed(
        &self,
        key: &EntityKey,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<PackedEvents, JournalError>>;
    /// Highest sequence number of the entity; 0 if it has no events.
    fn highest_seq(&self, key: &EntityKey) -> BoxFuture<'static, Result<u64, JournalError>>;
    /// Every pending timer.
    fn pending_timers(
        &self,
    ) -> BoxFuture<'static, Result<Vec<(EntityKey, TimerRecord)>, JournalError>>;
    /// The pending timers of one entity (by default picked out of
    /// [`Journal::pending_timers`]).
    fn entity_timers(
        &self,
        key: &EntityKey,
    ) -> BoxFuture<'static, Result<Vec<TimerRecord>, JournalError>> {
        let all = self.pending_timers();
        let key = key.clone();
        Box::pin(async move {
            Ok(all
                .await?
                .into_iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, t)| t)
                .collect())
        })
    }
    /// One pending timer of an entity by its id (by default picked out of
    /// [`Journal::entity_timers`]).
    fn timer(
        &self,
        key: &EntityKey,
        timer_id: u64,
    ) -> BoxFuture<'static, Result<Option<TimerRecord>, JournalError>> {
        let all = self.entity_timers(key);
        Box::pin(async move { Ok(all.await?.into_iter().find(|t| t.timer_id == timer_id)) })
    }
    /// Events of `entity_type` committed at or after cursor `from`, in commit
    /// order, at most about `limit` (a backend may return a few more to
    /// finish one write), and the cursor to resume from. The cursor is
    /// opaque; 0 is the beginning; resuming from `next` never skips nor
    /// repeats an event.
    fn read_feed(
        &self,
        entity_type: &str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<FeedPage, JournalError>>;
    /// Ids of entities of a type that have events: all of them when there
    /// are at most `limit`, otherwise `limit` of them chosen uniformly at
    /// random (a different choice on each call). Ascending.
    fn entity_ids(
        &self,
        entity_type: &str,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<String>, JournalError>>;
    /// Durably removes the entity's events with `seq > after`, and its
    /// snapshots past them; later appends continue from `after + 1`, and
    /// the feed no longer shows the removed events. Only for a cluster
    /// member's unacknowledged tail (a write the new primary does not
    /// hold): event sourcing never rewrites acknowledged history.
    fn truncate(&self, key: &EntityKey, after: u64)
    -> BoxFuture<'static, Result<(), JournalError>>;
}

/// A page of a type's event feed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedPage {
    /// Events in commit order, each with its entity.
    pub events: Vec<(EntityKey, EventRecord)>,
    /// The cursor to resume from.
    pub next: u64,
}

/// Up to `limit` of the distinct `ids`, chosen uniformly at random in one
/// pass (reservoir sampling: memory for `limit` ids whatever the number of
/// entities), sorted.
fn sample_ids<S: Into<String>>(ids: impl Iterator<Item = S>, limit: usize) -> Vec<String> {
    use rand::SeedableRng;
    use rand::seq::IteratorRandom;
    use std::hash::BuildHasher;
    // Sampling needs no secrecy: the per-process random keys of std's
    // `RandomState` are a good enough seed.
    let seed = std::hash::RandomState::new().hash_one(0u8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut chosen: Vec<String> = ids
        .sample(&mut rng, limit)
        .into_iter()
        .map(Into::into)
        .collect();
    chosen.sort_unstable();
    chosen
}

/// Snapshots of entity state.
pub trait SnapshotStore: Send + Sync + 'static {
    /// Stores a snapshot (the same `(key, seq)` overwrites), then keeps only
    /// the newest `keep` snapshots of the entity (`keep` 0 counts as 1).
    fn save(
        &self,
        key: &EntityKey,
        snapshot: Snapshot,
        keep: usize,
    ) -> BoxFuture<'static, Result<(), JournalError>>;
    /// The newest snapshot with `seq <= max_seq` and state schema `schema`.
    fn load(
        &self,
        key: &EntityKey,
        max_seq: u64,
        schema: u32,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, JournalError>>;
}
