//! The shard coordinator as a state machine: it takes the membership view,
//! proposes a batch of decisions (one batch in flight at a time), and
//! applies them to its table only when the decision log reports them
//! committed by a majority. A coordinator that loses its majority abandons
//! its batch; the next coordinator starts from the committed table, so no
//! decision exists that a majority did not agree to.

use std::collections::BTreeSet;

use crate::member::NodeId;
use crate::member::{Member, MemberState};
use crate::placement::{self, Move};
use crate::replication::placed_set;
use crate::shard::ShardId;
use crate::table::{Decision, Replicas, ShardTable, TableError};

/// The coordinator of one entity type's shards.
#[derive(Clone, Debug)]
pub struct Coordinator {
    table: ShardTable,
    members: Vec<Member>,
    max_moves: usize,
    /// Replicas per shard, for the sets of shards it allocates.
    replicas: usize,
    /// Shards moved whose new owner has not reported the handoff done.
    handoffs: BTreeSet<ShardId>,
    /// Proposed, not yet committed.
    pending: Vec<Decision>,
    /// The moves behind `pending` (for the handoff bookkeeping).
    pending_moves: Vec<Move>,
}

impl Coordinator {
    /// A coordinator starting from the committed `table`.
    pub fn new(table: ShardTable, max_moves: usize) -> Coordinator {
        Coordinator {
            table,
            members: Vec::new(),
            max_moves: max_moves.max(1),
            replicas: 0,
            handoffs: BTreeSet::new(),
            pending: Vec::new(),
            pending_moves: Vec::new(),
        }
    }

    /// The committed table.
    pub fn table(&self) -> &ShardTable {
        &self.table
    }

    /// Replicas per shard: each allocation it proposes names that many
    /// members (of those that may own shards) as the shard's replica set.
    pub fn set_replicas(&mut self, replicas: usize) {
        self.replicas = replicas;
    }

    /// The view the next proposal is made from.
    pub fn set_members(&mut self, members: Vec<Member>) {
        self.members = members;
    }

    /// The new owner of `shard` has it: it may move again.
    pub fn handoff_done(&mut self, shard: ShardId) {
        self.handoffs.remove(&shard);
    }

    /// Shards in handoff.
    pub fn in_handoff(&self) -> &BTreeSet<ShardId> {
        &self.handoffs
    }

    /// The next batch to commit, with the planned moves behind it; empty
    /// when nothing needs to change or a batch is still in flight.
    pub fn propose(&mut self) -> (Vec<Decision>, Vec<Move>) {
        if !self.pending.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let moves = placement::plan(&self.table, &self.members, &self.handoffs, self.max_moves);
        let mut epoch = self.table.epoch();
        let holders: Vec<NodeId> = self
            .members
            .iter()
            .filter(|m| m.can_own())
            .map(|m| m.id)
            .collect();
        // A member that is down but has not left keeps its place in a set
        // that would otherwise be short (see `placed_set`).
        let departed = |n: NodeId| {
            !self.members.iter().any(|m| {
                m.id == n
                    && !matches!(
                        m.state,
                        MemberState::Leaving | MemberState::Exiting | MemberState::Removed
                    )
            })
        };
        self.pending = moves
            .iter()
            .map(|m| {
                epoch += 1;
                let mut keep: Vec<NodeId> = self
                    .table
                    .get(m.shard)
                    .map(|a| a.replicas.as_slice().to_vec())
                    .unwrap_or_default();
                keep.extend(m.from);
                Decision::Assign {
                    shard: m.shard,
                    owner: m.to,
                    epoch,
                    replicas: Replicas::new(placed_set(
                        &holders,
                        &keep,
                        &departed,
                        m.to,
                        self.replicas,
                    )),
                }
            })
            .collect();
        self.pending_moves = moves.clone();
        (self.pending.clone(), moves)
    }

    /// The decision log committed the pending batch: apply it.
    pub fn committed(&mut self) -> Result<Vec<Decision>, TableError> {
        let batch = std::mem::take(&mut self.pending);
        for d in &batch {
            self.table.apply(*d)?;
        }
        for m in std::mem::take(&mut self.pending_moves) {
            if m.from.is_some() {
                self.handoffs.insert(m.shard);
            }
        }
        Ok(batch)
    }

    /// The decision log could not commit the batch (no majority): drop it.
    pub fn abandon(&mut self) {
        self.pending.clear();
        self.pending_moves.clear();
    }
}
