//! The replication rules without I/O: which nodes replicate a shard, how
//! many acknowledgements a write needs, when and to whom a down owner's
//! shards fail over, and how the new owner merges the replicas' copies.
//! The node's replicated journal and coordinator call these;
//! `tests/replication.rs` runs them in a seeded simulation with crashes.
//!
//! The invariant they keep, with `min_acks >= 1`: a write reaches the
//! primary's journal only after `min_acks` replicas hold it durably, and a
//! shard fails over only when every replica is live, to one of them, which
//! first merges every other replica's copy. Then every acknowledged event
//! is in the new owner's history, and no node holds an event the new
//! owner's history contradicts (each copy is a prefix of the primary's).

use std::collections::BTreeSet;

use crate::member::NodeId;
use crate::table::{Decision, ShardTable};

/// The replicas of a shard whose primary is `owner`: the next `replicas`
/// of `members` (ascending ids, those that may hold data) after the owner
/// in the ring of ids; never the owner.
pub fn replica_set(members: &[NodeId], owner: NodeId, replicas: usize) -> Vec<NodeId> {
    let start = members.iter().position(|id| *id > owner).unwrap_or(0);
    members
        .iter()
        .cycle()
        .skip(start)
        .take(members.len())
        .filter(|id| **id != owner)
        .take(replicas)
        .copied()
        .collect()
}

/// Acknowledgements a write waits for: `min_acks`, but at most the replicas
/// the shard has (a small cluster has fewer).
pub fn acks_needed(min_acks: usize, replica_set_len: usize) -> usize {
    min_acks.min(replica_set_len)
}

/// What the coordinator knows when it looks for shards to fail over.
pub struct FailoverView<'a> {
    /// The committed table.
    pub table: &'a ShardTable,
    /// Members that may hold data (ascending ids), as for [`replica_set`].
    pub members: &'a [NodeId],
    /// Replicas per shard.
    pub replicas: usize,
    /// Members declared down.
    pub down: &'a BTreeSet<NodeId>,
    /// Members that cannot be heard now.
    pub unreachable: &'a BTreeSet<NodeId>,
    /// Has this (down) owner's lease certainly expired?
    pub lease_expired: &'a dyn Fn(NodeId) -> bool,
    /// Did the owner of `shard` under allocation `epoch` take it over
    /// completely (its history merged or fetched)? One that died before
    /// has not got the history its replicas would need.
    pub ready: &'a dyn Fn(crate::shard::ShardId, u64) -> bool,
}

/// The failover decisions: each shard of a down owner whose lease has
/// expired, and which that owner had taken over completely, goes, with the
/// table's next epoch, to the first replica in the ring, provided every
/// replica of the shard is live (so that merging their copies finds every
/// acknowledged event). Empty when nothing may move.
pub fn promotions(view: &FailoverView<'_>) -> Vec<Decision> {
    let mut epoch = view.table.epoch();
    let mut out = Vec::new();
    for (shard, a) in view.table.iter() {
        let Some(a) = a else { continue };
        if !view.down.contains(&a.owner)
            || !(view.lease_expired)(a.owner)
            || !(view.ready)(shard, a.epoch)
        {
            continue;
        }
        let set = replica_set(view.members, a.owner, view.replicas);
        let live = |n: &NodeId| !view.down.contains(n) && !view.unreachable.contains(n);
        if set.is_empty() || !set.iter().all(live) {
            continue;
        }
        epoch += 1;
        out.push(Decision::Assign {
            shard,
            owner: set[0],
            epoch,
        });
    }
    out
}

/// Two copies of an entity's history disagree at this position (0-based):
/// the rules above were broken somewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("two histories: the copies differ at event {0}")]
pub struct Divergent(pub usize);

/// Merges the copies of an entity's history held by the replicas: each is
/// a prefix of the primary's, so the merge is the longest; copies that
/// disagree are refused.
pub fn merge<E: PartialEq + Clone>(copies: &[Vec<E>]) -> Result<Vec<E>, Divergent> {
    let mut best: &[E] = &[];
    for c in copies {
        let n = best.len().min(c.len());
        if let Some(i) = (0..n).find(|i| best[*i] != c[*i]) {
            return Err(Divergent(i));
        }
        if c.len() > best.len() {
            best = c;
        }
    }
    Ok(best.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|n| NodeId(*n)).collect()
    }

    #[test]
    fn replicas_follow_the_owner_in_the_ring() {
        let m = ids(&[10, 20, 30, 40]);
        assert_eq!(replica_set(&m, NodeId(20), 2), ids(&[30, 40]));
        assert_eq!(replica_set(&m, NodeId(40), 2), ids(&[10, 20]));
        assert_eq!(replica_set(&m, NodeId(25), 3), ids(&[30, 40, 10]));
        assert_eq!(replica_set(&m[..1], NodeId(10), 2), ids(&[]));
        assert_eq!(acks_needed(2, 1), 1);
    }

    #[test]
    fn merge_takes_the_longest_prefix_and_refuses_two_histories() {
        assert_eq!(
            merge(&[vec![1, 2], vec![1, 2, 3], vec![]]),
            Ok(vec![1, 2, 3])
        );
        assert_eq!(merge(&[vec![1, 2], vec![1, 3, 4]]), Err(Divergent(1)));
    }
}
