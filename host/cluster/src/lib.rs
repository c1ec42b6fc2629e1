//! Cairn's cluster logic as plain state machines, without I/O: no tokio, no
//! quinn, no clock of its own (time is an input), so that every rule can be
//! run in a seeded, deterministic simulation (`tests/sim.rs`) before a
//! driver puts it on the network.
//!
//! Layout:
//! - [`arrival`]: where a node made a shard's owner reads its history
//!   from (the previous owner, its replicas, or back from its own copy).
//! - [`shard`]: entity id → shard, a stable hash with a fixed shard count.
//! - [`member`]: the membership view the coordinator decides on (what
//!   gossip and the failure detector report).
//! - [`membership`]: gossip membership and failure detection (SWIM with
//!   Lifeguard, the `foca` crate), as `handle_*`/`poll_*` calls.
//! - [`phi`]: the phi-accrual failure detector (reachability).
//! - [`table`]: the shard table: shard → owner with an epoch that only grows.
//! - [`placement`]: which moves to make (least-shards-first, bounded, never
//!   while a member is unreachable).
//! - [`replication`]: replica sets, acknowledgements needed, failover
//!   decisions, merging the replicas' copies.
//! - [`route`]: where a command goes on one node: here, to the owner,
//!   into a bounded handoff buffer, or `Unavailable` when the owner is down.
//! - [`fence`]: who may start and write an entity: a node's admission,
//!   the writer's check of its allocation and lease, what a replica accepts.
//! - [`messages`]: messages between entities exactly once: a sender's
//!   outbox delivered oldest first, a receiver's record of the highest
//!   send applied from each sender.
//! - [`timers`]: an entity's pending timers across copies: tombstones of
//!   fired timers, and the merge of two copies' timers.
//! - [`write`]: the primary's side of one replicated write: whether it is
//!   sent, when the replicas' answers acknowledge it, whether the primary
//!   may still append it.
//! - [`lease`]: how long an owner may serve without renewing, and when the
//!   coordinator may reassign its shards (the clock-drift bound).
//! - [`coordinator`]: proposes decisions from the view and the table and
//!   applies them once the decision log has committed them.
//!
//! This crate decides nothing by itself about who the coordinator is: the
//! decisions it proposes must be committed by a majority (the replicated
//! decision log) before any node applies them.

pub mod arrival;
pub mod batch;
pub mod coordinator;
pub mod fence;
pub mod lease;
pub mod member;
pub mod membership;
pub mod messages;
pub mod phi;
pub mod placement;
pub mod replication;
pub mod route;
pub mod shard;
#[cfg(test)]
mod sim;
pub mod table;
pub mod timers;
pub mod write;

pub use coordinator::Coordinator;
pub use member::{Member, MemberState, NodeId};
pub use shard::{ShardId, shard_of};
pub use table::{Allocation, Decision, MAX_REPLICAS, Replicas, ShardTable, TableError};
