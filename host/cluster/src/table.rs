//! The shard table: which node owns each shard, and the epoch of that
//! allocation. Every decision takes the table's next epoch, so epochs only
//! grow, per shard and for the table as a whole; a node applying a decision
//! whose epoch is not newer than what it holds refuses it (a stale or
//! replayed decision can never move a shard back).

use crate::member::NodeId;
use crate::shard::ShardId;

/// Who owns a shard, since which epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allocation {
    /// The owner.
    pub owner: NodeId,
    /// The epoch of the decision that made it the owner.
    pub epoch: u64,
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
    },
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

    /// Applies a committed decision.
    pub fn apply(&mut self, decision: Decision) -> Result<(), TableError> {
        match decision {
            Decision::Assign {
                shard,
                owner,
                epoch,
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
                *slot = Some(Allocation { owner, epoch });
                self.epoch = epoch;
                Ok(())
            }
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
    }
}
