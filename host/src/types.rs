//! Leaf types that the node façade and the entity actor share: the reply to
//! a command, why a command got none, and the lifecycle events observers
//! follow.
//!
//! This module imports neither `node` nor `entity`: both depend on it, so
//! the node → deploy → entity → replay → store line has no circle.

use std::time::Duration;

use cairn_store::JournalError;

use crate::behavior::GuestFault;

/// The answer to an accepted command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The encoded reply, if the behavior gave one.
    pub reply: Option<Vec<u8>>,
    /// The entity's sequence number after the command.
    pub seq: u64,
}

/// Why a command got no reply from its behavior.
///
/// Exhaustive: `cairn-server` translates every variant into the client
/// protocol, so a new one must be given its translation there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// No behavior is registered for the entity type.
    #[error("unknown entity type `{0}`")]
    UnknownEntityType(String),
    /// The entity id is empty or too long.
    #[error("invalid entity id: {0}")]
    InvalidEntityId(String),
    /// No reply within the timeout (the command may still run).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The mailbox was full and the overflow strategy dropped the command.
    #[error("mailbox full: command dropped")]
    MailboxFull,
    /// The entity was stopped by supervision (or could not recover).
    #[error("entity stopped: {0}")]
    EntityStopped(String),
    /// The expected sequence number did not match (optimistic concurrency).
    #[error("conflict: expected sequence number {expected}, entity is at {actual}")]
    Conflict {
        /// What the caller expected.
        expected: u64,
        /// Where the entity is.
        actual: u64,
    },
    /// The behavior rejected the command.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The behavior could not decode the command.
    #[error("malformed command: {0}")]
    MalformedCommand(String),
    /// The guest failed (trap, deadline, memory, a broken contract); the
    /// entity restarts from its journal.
    #[error("guest failure: {0}; the entity was restarted from its journal")]
    Guest(GuestFault),
    /// The journal could not persist the events; nothing was acknowledged.
    #[error("journal: {0}")]
    Journal(JournalError),
    /// The node is shutting down: the command was taken, and its outcome
    /// is unknown (its write may have been stored when the node stopped).
    #[error("node is shutting down")]
    ShuttingDown,
    /// The node is shutting down and did not take the command: nothing of
    /// it ran or was stored.
    #[error("node is shutting down; the command did not run")]
    Stopping,
    /// In a cluster: this node does not serve the entity's shard now (it
    /// moved, is moving, or this node's lease lapsed); the command did not
    /// run and nothing was stored.
    #[error("not served here: {0}")]
    NotHere(String),
}

/// Something that happened to an entity or a type, for observers.
///
/// Exhaustive: `cairn-server` translates every variant into the client
/// protocol, so a new one must be given its translation there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// An entity was recovered and is live.
    Started {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Sequence number of the snapshot recovery started from.
        snapshot_seq: Option<u64>,
        /// Events replayed after the snapshot.
        replayed: u64,
        /// Sequence number after recovery.
        seq: u64,
    },
    /// An idle entity was unloaded.
    Passivated {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
    },
    /// An entity was stopped by supervision.
    Stopped {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Why.
        reason: String,
    },
    /// An entity failed and will recover from its journal.
    Restarted {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The failure.
        reason: String,
    },
    /// A message could not be delivered.
    DeadLetter {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Why.
        reason: String,
    },
    /// The behavior could not decode a command.
    Unhandled {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The decode error.
        reason: String,
    },
    /// A behavior became active for a type.
    Deployed {
        /// Entity type.
        entity_type: String,
        /// The behavior's own version string (not the deploy number).
        behavior_version: String,
    },
    /// A cluster member changed (seen from this node).
    Member {
        /// What changed.
        change: MemberChange,
        /// The member's node id.
        node: u64,
        /// Its peer address.
        addr: String,
    },
}

/// A change of a cluster member, as lifecycle events report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberChange {
    /// It is a live member.
    Up,
    /// It left gracefully.
    Left,
    /// The failure detector stopped hearing it (phi above the threshold).
    Unreachable,
    /// The failure detector hears it again.
    Reachable,
    /// It was declared down (SWIM: no answer, directly or through others).
    Down,
}

impl MemberChange {
    /// The kind name on the wire: member-up, member-left, unreachable, reachable, member-down.
    pub fn kind(self) -> &'static str {
        match self {
            MemberChange::Up => "member-up",
            MemberChange::Left => "member-left",
            MemberChange::Unreachable => "unreachable",
            MemberChange::Reachable => "reachable",
            MemberChange::Down => "member-down",
        }
    }
}
