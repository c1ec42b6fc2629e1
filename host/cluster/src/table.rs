//! The shard table: which node owns each shard, and the epoch of that
//! allocation. Every decision takes the table's next epoch, so epochs only
//! grow, per shard and for the table as a whole; a node applying a decision
//! whose epoch is not newer than what it holds refuses it (a stale or
//! replayed decision can never move a shard back).
//!
//! An allocation also names the shard's replica set: the members that hold
//! a copy of its history and whose acknowledgements count for a write. The
//! set changes only by a committed decision: with a new owner
//! ([`Decision::Assign`]), or for the same owner ([`ShardTable::set_replicas`],
//! proposed by the owner once the new members hold the shard's history).

use crate::member::NodeId;
use crate::shard::ShardId;

/// The most replicas a shard can have.
pub const MAX_REPLICAS: usize = 7;

/// A shard's replica set, in order (the first live one is promoted on
/// failover); never holds the owner, never a node twice.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Replicas {
    len: u8,
    ids: [NodeId; MAX_REPLICAS],
}

impl Replicas {
    /// The set of `ids` in order, without repeats, at most [`MAX_REPLICAS`].
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> Replicas {
        let mut r = Replicas::default();
        for id in ids {
            if (r.len as usize) < MAX_REPLICAS && !r.contains(id) {
                r.ids[r.len as usize] = id;
                r.len += 1;
            }
        }
        r
    }

    /// The members, in order.
    pub fn as_slice(&self) -> &[NodeId] {
        &self.ids[..self.len as usize]
    }

    /// Is `id` a member?
    pub fn contains(&self, id: NodeId) -> bool {
        self.as_slice().contains(&id)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// No members.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Who owns a shard, since which epoch, and who replicates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allocation {
    /// The owner.
    pub owner: NodeId,
    /// The epoch of the decision that made it the owner.
    pub epoch: u64,
    /// The committed replica set.
    pub replicas: Replicas,
    /// How many times the replica set changed under this allocation (a
    /// change is made against a count, so a late proposal made before
    /// other changes can never apply).
    pub changes: u32,
}

/// A committed decision of the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Decision {
    /// `shard` belongs to `owner` from `epoch` on.
    Assign {
        /// The shard.
        shard: ShardId,
        /// The new owner.
        owner: NodeId,
        /// The table's next epoch.
        epoch: u64,
        /// Its replica set from then on.
        replicas: Replicas,
    },
}

impl Decision {
    /// The epoch the decision takes the table to.
    pub fn epoch(&self) -> u64 {
        match self {
            Decision::Assign { epoch, .. } => *epoch,
        }
    }
}

/// Why a decision cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The decision's epoch is not above the table's.
    #[error("stale decision: epoch {got}, the table is at {have}")]
    StaleEpoch {
        /// The decision's epoch.
        got: u64,
        /// The table's epoch.
        have: u64,
    },
    /// The shard is outside the table.
    #[error("no such shard: {0}")]
    NoSuchShard(ShardId),
    /// A change of replica set made for an allocation that is no longer
    /// the shard's (it moved since).
    #[error("{shard}: the replica change was made under epoch {got}, the shard is at {have:?}")]
    Superseded {
        /// The shard.
        shard: ShardId,
        /// The allocation epoch the change was made under.
        got: u64,
        /// The shard's allocation epoch now.
        have: Option<u64>,
    },
}

/// The shard table of one entity type.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardTable {
    shards: Vec<Option<Allocation>>,
    epoch: u64,
}

impl ShardTable {
    /// A table of `shard_count` unowned shards at epoch 0.
    pub fn new(shard_count: u32) -> ShardTable {
        ShardTable {
            shards: vec![None; shard_count.max(1) as usize],
            epoch: 0,
        }
    }

    /// Number of shards.
    pub fn len(&self) -> u32 {
        self.shards.len() as u32
    }

    /// Always false: a table has at least one shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The epoch of the newest decision applied.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Raises the table's epoch to `epoch` without moving anything (a
    /// committed settle, see [`crate::route::Router::settle`]): every
    /// decision of that epoch or below that is not applied yet never
    /// applies. Returns whether the epoch rose.
    pub fn raise_epoch(&mut self, epoch: u64) -> bool {
        if epoch > self.epoch {
            self.epoch = epoch;
            true
        } else {
            false
        }
    }

    /// The allocation of a shard.
    pub fn get(&self, shard: ShardId) -> Option<Allocation> {
        self.shards.get(shard.0 as usize).copied().flatten()
    }

    /// Every shard with its allocation.
    pub fn iter(&self) -> impl Iterator<Item = (ShardId, Option<Allocation>)> + '_ {
        self.shards
            .iter()
            .enumerate()
            .map(|(i, a)| (ShardId(i as u32), *a))
    }

    /// Shards owned by `node`.
    pub fn owned_by(&self, node: NodeId) -> usize {
        self.shards
            .iter()
            .filter(|a| a.is_some_and(|a| a.owner == node))
            .count()
    }

    /// The decision log's rule for an owner's change of replica set: the
    /// change was made under the shard's current allocation (`epoch`) and
    /// after the `changes` it has seen, so no later change came in between
    /// (a proposal delayed past a crash and a newer change of the same
    /// owner is refused, also when the set went back to what it was).
    pub fn change_replicas(
        &mut self,
        shard: ShardId,
        epoch: u64,
        changes: u32,
        replicas: Replicas,
    ) -> Result<(), TableError> {
        let have = self.get(shard);
        if have.is_none_or(|a| a.epoch != epoch || a.changes != changes) {
            return Err(TableError::Superseded {
                shard,
                got: epoch,
                have: have.map(|a| a.epoch),
            });
        }
        self.set_replicas(shard, epoch, replicas)
    }

    /// A node's copy of the table takes a committed allocation of the same
    /// owner and epoch with its newer replica set.
    pub fn adopt(&mut self, shard: ShardId, allocation: Allocation) -> Result<(), TableError> {
        let slot = self
            .shards
            .get_mut(shard.0 as usize)
            .ok_or(TableError::NoSuchShard(shard))?;
        match slot {
            Some(a)
                if (a.owner, a.epoch) == (allocation.owner, allocation.epoch)
                    && a.changes <= allocation.changes =>
            {
                *a = allocation;
                Ok(())
            }
            _ => Err(TableError::Superseded {
                shard,
                got: allocation.epoch,
                have: slot.map(|a| a.epoch),
            }),
        }
    }

    /// Shards whose committed replica set names `node`.
    pub fn replicated_by(&self, node: NodeId) -> usize {
        self.shards
            .iter()
            .filter(|a| a.is_some_and(|a| a.replicas.contains(node)))
            .count()
    }

    /// Applies a committed decision.
    pub fn apply(&mut self, decision: Decision) -> Result<(), TableError> {
        match decision {
            Decision::Assign {
                shard,
                owner,
                epoch,
                replicas,
            } => {
                if epoch <= self.epoch {
                    return Err(TableError::StaleEpoch {
                        got: epoch,
                        have: self.epoch,
                    });
                }
                let slot = self
                    .shards
                    .get_mut(shard.0 as usize)
                    .ok_or(TableError::NoSuchShard(shard))?;
                *slot = Some(Allocation {
                    owner,
                    epoch,
                    replicas,
                    changes: 0,
                });
                self.epoch = epoch;
                Ok(())
            }
        }
    }

    /// Applies a committed change of a shard's replica set, made by its
    /// owner under the allocation of `epoch`: refused if the shard has
    /// moved since. The owner and the epoch stay.
    pub fn set_replicas(
        &mut self,
        shard: ShardId,
        epoch: u64,
        replicas: Replicas,
    ) -> Result<(), TableError> {
        let slot = self
            .shards
            .get_mut(shard.0 as usize)
            .ok_or(TableError::NoSuchShard(shard))?;
        match slot {
            Some(a) if a.epoch == epoch && !replicas.contains(a.owner) => {
                a.replicas = replicas;
                a.changes += 1;
                Ok(())
            }
            _ => Err(TableError::Superseded {
                shard,
                got: epoch,
                have: slot.map(|a| a.epoch),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_only_grow() {
        let mut t = ShardTable::new(4);
        let assign = |shard, owner, epoch| Decision::Assign {
            shard: ShardId(shard),
            owner: NodeId(owner),
            epoch,
            replicas: Replicas::new([NodeId(owner + 1)]),
        };
        t.apply(assign(0, 1, 1)).unwrap();
        t.apply(assign(1, 2, 2)).unwrap();
        assert_eq!(
            t.apply(assign(0, 2, 2)),
            Err(TableError::StaleEpoch { got: 2, have: 2 })
        );
        assert_eq!(t.get(ShardId(0)).map(|a| a.owner), Some(NodeId(1)));
        assert_eq!(
            t.apply(assign(9, 1, 3)),
            Err(TableError::NoSuchShard(ShardId(9)))
        );
        assert_eq!(t.epoch(), 2);
        assert_eq!(t.owned_by(NodeId(1)), 1);
        // A replica change under the current allocation applies; one made
        // under an older allocation, or naming the owner, does not.
        let set = Replicas::new([NodeId(3), NodeId(4), NodeId(3)]);
        assert_eq!(set.as_slice(), [NodeId(3), NodeId(4)]);
        t.set_replicas(ShardId(0), 1, set).unwrap();
        assert_eq!(t.get(ShardId(0)).map(|a| a.replicas), Some(set));
        assert!(t.set_replicas(ShardId(1), 1, set).is_err());
        assert!(
            t.set_replicas(ShardId(0), 1, Replicas::new([NodeId(1)]))
                .is_err()
        );
        assert_eq!(t.epoch(), 2, "a replica change takes no epoch");
        // Through the log: against the count of changes seen. A proposal
        // made before the change above is refused, even for the old set.
        let old = Replicas::new([NodeId(2)]);
        assert!(t.change_replicas(ShardId(0), 1, 0, old).is_err());
        t.change_replicas(ShardId(0), 1, 1, old).unwrap();
        assert!(t.change_replicas(ShardId(0), 1, 1, set).is_err());
        assert_eq!(
            t.get(ShardId(0)).map(|a| (a.replicas, a.changes)),
            Some((old, 2))
        );
    }
}
