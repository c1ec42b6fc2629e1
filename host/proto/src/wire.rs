//! The messages of the protocol: [`Request`]s a client sends, the
//! [`Response`]s a node answers with, and the values they carry.
//!
//! Names: a *deploy number* (`deploy`, `u32`, 1 for a type's first deploy)
//! counts the components deployed to a type; a *behavior version*
//! (`behavior_version`) is the version string the behavior declares.

use serde::{Deserialize, Serialize};

use crate::{ApiError, DeployRecord, ValidationReport};

/// A command or reply payload: JSON through the behavior's codecs, or the
/// behavior's own bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Payload {
    /// JSON text, converted by the behavior's JSON codecs.
    Json(String),
    /// The behavior's encoded bytes, passed through unchanged.
    Bytes(Vec<u8>),
}

/// Which state of an entity to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StateAt {
    /// The current state, read in mailbox order.
    Now,
    /// The state right after the event with this sequence number.
    Seq(u64),
    /// The state after every event stored at or before this time (ms since
    /// the Unix epoch).
    Time(u64),
}

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// First frame of a connection's first stream: the protocol version.
    /// Variant 0 in every protocol version, so any client gets a clear
    /// answer about the version.
    Hello {
        /// The client's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        version: u32,
    },
    /// Deploy a component to an entity type: validated by replaying the
    /// history of sampled entities, then activated for every later command.
    Deploy {
        /// Entity type.
        entity_type: String,
        /// The component's bytes.
        wasm: Vec<u8>,
        /// Only validate (a dry run): change nothing.
        check: bool,
    },
    /// List every deploy of a type and its deploy history.
    Versions {
        /// Entity type.
        entity_type: String,
    },
    /// Activate an earlier deploy again (validated like a deploy).
    Rollback {
        /// Entity type.
        entity_type: String,
        /// The deploy number; the one before the active deploy if absent.
        to: Option<u32>,
    },
    /// Send a command and wait for its reply.
    Ask {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The command.
        command: Payload,
        /// Only run the command if the entity is at this sequence number.
        expected_seq: Option<u64>,
        /// How long the node waits for the reply (ms); the node's default if absent.
        timeout_ms: Option<u64>,
    },
    /// Queue a command without waiting for it to run.
    Tell {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The command.
        command: Payload,
    },
    /// Read an entity's events with `from <= seq <= to`, at most `limit`.
    Events {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Lowest sequence number.
        from: u64,
        /// Highest sequence number.
        to: u64,
        /// Most events returned (the node caps it).
        limit: u32,
    },
    /// Read an entity's state.
    State {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Which state.
        at: StateAt,
    },
    /// List entity types and their deployed versions.
    Types,
    /// Encode a JSON command with the type's behavior (to send bytes later).
    EncodeCommand {
        /// Entity type.
        entity_type: String,
        /// The command as JSON.
        json: String,
    },
    /// Turn this stream into the node's lifecycle feed.
    FollowLifecycle,
    /// Turn this stream into the feed of every event of a type, starting at
    /// `cursor` (0: the beginning; else a `next` from an earlier batch).
    FollowEvents {
        /// Entity type.
        entity_type: String,
        /// Where to start.
        cursor: u64,
    },
    /// The cluster as this node sees it: members, their state, phi,
    /// shards and load.
    ClusterStatus,
    /// Ask this node to leave its cluster gracefully: its shards hand off,
    /// then it stops.
    ClusterLeave,
    /// Run a message of one entity to another (a `send` effect), as the
    /// node serving the sender delivers it from the sender's outbox. The
    /// receiver applies each `(from, send)` at most once, so the sender's
    /// node resends it until it is answered. Answered with `Reply`.
    Deliver {
        /// Entity type of the receiver.
        entity_type: String,
        /// Entity id of the receiver.
        entity_id: String,
        /// The encoded command.
        command: Vec<u8>,
        /// Entity type of the sender.
        from_type: String,
        /// Entity id of the sender.
        from_id: String,
        /// The number of the send among the sender's sends (from 1).
        send: u64,
    },
    /// What the deploy (or check, or rollback) of a type in flight on this
    /// node is doing now, for a client to show while its `Deploy` is
    /// pending. Answered with [`Response::DeployProgress`]; a node older
    /// than this request answers `BadRequest`.
    DeployProgress {
        /// Entity type.
        entity_type: String,
    },
}

/// One member of a cluster, as [`Response::ClusterStatus`] reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The node's id.
    pub id: u64,
    /// Its peer address.
    pub addr: String,
    /// Its lifecycle state: joining, up, leaving, exiting, down, removed.
    pub state: String,
    /// Whether the reporting node's failure detector hears it.
    pub reachable: bool,
    /// The phi-accrual suspicion level (0 for the reporting node itself).
    pub phi: f64,
    /// Shards it owns in the committed table.
    pub shards: u32,
    /// Of those, shards it has not yet reported ready through the decision
    /// log (it is still reading their history or catching up their
    /// replicas): until it does, a failover of them waits for it.
    pub unready: u32,
    /// Whether it votes in the decision log.
    pub voter: bool,
    /// Entities live in its memory, if it answered.
    pub live_entities: Option<u64>,
    /// What it runs, as reported through the decision log: (entity type,
    /// deploy number, sha256 of the component).
    pub active: Vec<(String, u32, String)>,
}

/// The cluster as one node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The reporting node's id.
    pub node: u64,
    /// The decision log's leader, if known.
    pub leader: Option<u64>,
    /// Shards of the table (0 before the cluster is initialized).
    pub shards: u32,
    /// The table's epoch.
    pub epoch: u64,
    /// Every member, the reporting node included.
    pub members: Vec<MemberStatus>,
    /// The owner's node id of each shard (0: not allocated), so that a
    /// client may send a command straight to its owner.
    pub owners: Vec<u64>,
}

/// One journaled event as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Entity type.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: String,
    /// Sequence number.
    pub seq: u64,
    /// When it was stored (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// The behavior version that produced it.
    pub behavior_version: String,
    /// The event as JSON, if the behavior could render it.
    pub json: Option<String>,
    /// The event's bytes.
    pub bytes: Vec<u8>,
}

/// A deployed entity type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeInfo {
    /// Entity type.
    pub entity_type: String,
    /// Deploy number of the active component (1 for the first deploy).
    pub deploy: u32,
    /// The behavior's declared name.
    pub behavior: String,
    /// The behavior's declared version.
    pub behavior_version: String,
    /// The behavior's state-schema version.
    pub state_schema: u32,
    /// sha256 of the component, hex.
    pub hash: String,
    /// When it was deployed (ms since the Unix epoch).
    pub deployed_ms: u64,
    /// Entities of the type in memory now.
    pub live_entities: u64,
}

/// A response from a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Welcome {
        /// The node's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        version: u32,
        /// The node's name.
        node: String,
    },
    /// Answer to a deploy, a check or a rollback.
    Deployed {
        /// The active deploy afterwards (none for a check on a new type).
        info: Option<TypeInfo>,
        /// True if the active deploy changed.
        changed: bool,
        /// What replaying history showed.
        report: ValidationReport,
    },
    /// Answer to [`Request::Versions`].
    Versions {
        /// Every deploy, oldest first.
        versions: Vec<TypeInfo>,
        /// The deploy number of the active deploy.
        active: Option<u32>,
        /// Every deploy, refusal and rollback, oldest first.
        history: Vec<DeployRecord>,
    },
    /// The reply to an ask.
    Reply {
        /// The reply as JSON (for a JSON command) or bytes; `None` if the
        /// behavior gave no reply.
        reply: Option<Payload>,
        /// The entity's sequence number after the command.
        seq: u64,
    },
    /// A tell was queued.
    Queued,
    /// Events of an entity.
    Events(Vec<EventView>),
    /// An entity's state.
    State {
        /// The state as JSON.
        json: String,
        /// The sequence number the state is at.
        seq: u64,
        /// Events replayed to compute it (0 for the current state).
        replayed: u64,
    },
    /// Entity types.
    Types(Vec<TypeInfo>),
    /// An encoded command.
    Encoded(Vec<u8>),
    /// First response on a follow stream: the subscription is in place, so
    /// everything that happens from now on will be sent.
    Following,
    /// One lifecycle event (on a `FollowLifecycle` stream).
    Lifecycle {
        /// What happened, as a short kind: started, passivated, ...
        kind: String,
        /// Entity type.
        entity_type: String,
        /// Entity id, if about one entity.
        entity_id: Option<String>,
        /// Details as `key=value` text.
        detail: String,
    },
    /// The follower missed lifecycle events because it read too slowly.
    Lagged(u64),
    /// A batch of events (on a `FollowEvents` stream) and the cursor after it.
    Feed {
        /// Events in commit order.
        events: Vec<EventView>,
        /// Cursor to resume from after this batch.
        next: u64,
    },
    /// The request failed.
    Error(ApiError),
    /// The cluster as the node sees it.
    ClusterStatus(ClusterStatus),
    /// The node is leaving its cluster.
    Leaving,
    /// Answer to [`Request::DeployProgress`].
    DeployProgress {
        /// What the deploy is doing ("compiling 18432 KiB component",
        /// "validating against history: replaying entities", ...); `None`
        /// when no deploy of the type is in flight on the node.
        phase: Option<String>,
        /// Units of work of the phase done (0 when the phase does not count).
        done: u64,
        /// Units of work of the phase (0 when the phase does not count).
        total: u64,
        /// How long the deploy has been in this phase (ms).
        elapsed_ms: u64,
    },
}
