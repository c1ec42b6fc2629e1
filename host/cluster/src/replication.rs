//! The replication rules without I/O: which nodes should replicate a
//! shard, how many acknowledgements a write needs (also while its replica
//! set changes), when and to whom a down owner's shards fail over, and how
//! the new owner merges the replicas' copies. The node's replicated journal
//! and coordinator call these; `tests/replication.rs` runs them in a seeded
//! simulation with crashes.
//!
//! The invariant they keep, with `min_acks >= 1`: a write reaches the
//! primary's journal only after `min_acks` members of the shard's committed
//! replica set hold it durably (and, while the set changes, `min_acks` of
//! the set it moves to as well); a new member is given the shard's whole
//! history before the change is committed. A shard fails over only to a
//! live member of its committed set, and only when so many members of the
//! set are live that any `min_acks` of them include one (so the live ones
//! hold every acknowledged event between them); the new owner first merges
//! their copies. Then every acknowledged event is in the new owner's
//! history, and no node holds an event the new owner's history contradicts
//! (each copy is a prefix of the primary's).

use std::collections::BTreeSet;

use crate::fence::{Mutant, is_mutant};
use crate::member::NodeId;
use crate::table::{Decision, Replicas, ShardTable};

/// The replicas a shard whose primary is `owner` should have: the next
/// `replicas` of `members` (ascending ids, those that may hold data) after
/// the owner in the ring of ids; never the owner.
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

/// The replica set an owner should move its shard to, if it differs from
/// the `committed` one: the next `want` of `holders` (the members that may
/// hold data now) after `owner` in the ring. A committed member that is
/// merely down (not `departed`: it has not left the cluster) keeps its
/// place when no other member can take it, so a set never shrinks because
/// a member crashed (`min_acks` keeps counting it, and refuses writes
/// rather than acknowledging them with fewer copies). `None` when the set
/// has the same members.
pub fn next_set(
    committed: &[NodeId],
    holders: &[NodeId],
    departed: &dyn Fn(NodeId) -> bool,
    owner: NodeId,
    want: usize,
) -> Option<Replicas> {
    let next = placed_set(holders, committed, departed, owner, want);
    let same = next.len() == committed.len() && next.iter().all(|n| committed.contains(n));
    (!same).then(|| Replicas::new(next))
}

/// The replica set of a shard placed on `owner`: the next `want` of
/// `holders` (members that may hold data now) after `owner` in the ring,
/// then, while that is short, the members of `keep` (the shard's current
/// set, then its current owner) that have not `departed`, in that order.
/// A handoff or a failover made while a member is down thus keeps the set
/// as long as `replicas` says, and `min_acks` refuses writes rather than
/// counting fewer copies; only a member that left is dropped for good.
pub fn placed_set(
    holders: &[NodeId],
    keep: &[NodeId],
    departed: &dyn Fn(NodeId) -> bool,
    owner: NodeId,
    want: usize,
) -> Vec<NodeId> {
    let mut set = replica_set(holders, owner, want);
    for n in keep {
        if set.len() >= want {
            break;
        }
        if !set.contains(n) && !departed(*n) && *n != owner {
            set.push(*n);
        }
    }
    set
}

/// Acknowledgements a write waits for: `min_acks`, but at most the replicas
/// the shard has (a small cluster has fewer).
pub fn acks_needed(min_acks: usize, replica_set_len: usize) -> usize {
    min_acks.min(replica_set_len)
}

/// Is a write acknowledged? `sets` are the replica sets it must reach with
/// the acknowledgements each needs: the committed set, and while the set
/// changes, the one it moves to too. `acked` are the nodes that hold it.
pub fn acknowledged(sets: &[(&[NodeId], usize)], acked: &[NodeId]) -> bool {
    sets.iter()
        .all(|(set, need)| set.iter().filter(|n| acked.contains(n)).count() >= *need)
}

/// How a type replicates: the first `replicas` members of a shard's set
/// get its writes, and `min_acks` of them must hold one to acknowledge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Replicas of the type's writes (a prefix of the shard's set).
    pub replicas: usize,
    /// Acknowledgements a write needs.
    pub min_acks: usize,
}

/// May a shard whose owner is gone be promoted, with these members of its
/// committed `set` live? Every acknowledged write of a type is on
/// `min_acks` members of its prefix of the set, so the prefix needs
/// `len - min_acks + 1` live members: then any `min_acks` of the prefix
/// include a live one. (With `min_acks = 0` acknowledged writes may be on
/// the owner only; all of the prefix must then be live, which keeps what
/// the replicas hold.) No policy: every member must be live.
pub fn may_promote(set: &[NodeId], policies: &[Policy], live: &dyn Fn(NodeId) -> bool) -> bool {
    if set.is_empty() {
        return false;
    }
    if is_mutant(Mutant::PromoteShort) {
        return true;
    }
    let enough = |prefix: &[NodeId], min_acks: usize| {
        let need = acks_needed(min_acks, prefix.len()).max(1);
        let up = prefix.iter().filter(|n| live(**n)).count();
        up + need > prefix.len()
    };
    if policies.is_empty() {
        return enough(set, set.len());
    }
    policies
        .iter()
        .all(|p| enough(&set[..p.replicas.min(set.len())], p.min_acks))
}

/// What the coordinator knows when it looks for shards to fail over.
pub struct FailoverView<'a> {
    /// The committed table (with each shard's committed replica set).
    pub table: &'a ShardTable,
    /// Members that may hold data (ascending ids), to choose the promoted
    /// owner's replica set from.
    pub members: &'a [NodeId],
    /// Replicas per shard, for the promoted owner's set.
    pub replicas: usize,
    /// How each deployed type replicates.
    pub policies: &'a [Policy],
    /// Members declared down.
    pub down: &'a BTreeSet<NodeId>,
    /// Members that cannot be heard now.
    pub unreachable: &'a BTreeSet<NodeId>,
    /// Has this (down) owner's lease certainly expired?
    pub lease_expired: &'a dyn Fn(NodeId) -> bool,
    /// Did the owner of `shard` under allocation `epoch` take it over
    /// completely (its history merged or fetched, its replicas caught
    /// up)? One that died before has not got the history its replicas
    /// would need.
    pub ready: &'a dyn Fn(crate::shard::ShardId, u64) -> bool,
}

/// The failover decisions: each shard of a down owner whose lease has
/// expired, and which that owner had taken over completely, goes, with the
/// table's next epoch, to the first live member of its committed replica
/// set, provided enough of the set is live ([`may_promote`]). The new
/// owner's replica set is chosen from the live members, filled up to
/// `replicas` with the old set and the old owner while they have not left
/// ([`placed_set`]). Empty when nothing may move.
pub fn promotions(view: &FailoverView<'_>) -> Vec<Decision> {
    let mut epoch = view.table.epoch();
    let mut out = Vec::new();
    let live = |n: NodeId| !view.down.contains(&n) && !view.unreachable.contains(&n);
    for (shard, a) in view.table.iter() {
        let Some(a) = a else { continue };
        if !view.down.contains(&a.owner)
            || !(view.lease_expired)(a.owner)
            || !(view.ready)(shard, a.epoch)
        {
            continue;
        }
        let set = a.replicas.as_slice();
        if !may_promote(set, view.policies, &live) {
            continue;
        }
        let Some(to) = set.iter().copied().find(|n| live(*n)) else {
            continue;
        };
        let candidates: Vec<NodeId> = view
            .members
            .iter()
            .copied()
            .filter(|n| live(*n) && *n != a.owner)
            .collect();
        let mut keep = set.to_vec();
        keep.push(a.owner);
        let departed = |n: NodeId| !view.members.contains(&n);
        epoch += 1;
        out.push(Decision::Assign {
            shard,
            owner: to,
            epoch,
            replicas: Replicas::new(placed_set(&candidates, &keep, &departed, to, view.replicas)),
        });
    }
    out
}

/// What a replica does with a primary's write of an entity's events
/// `first..` ([`replica_write`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaWrite {
    /// Append the events it lacks (none when it holds them all).
    Append,
    /// It lacks events before `first`: the primary fills from `have + 1`.
    Gap(u64),
    /// Its copy differs from the primary's where the write overlaps it, or
    /// at the event just before it: it holds a write that was never
    /// acknowledged. Nothing is appended until the copy is reconciled with
    /// the owner's history (or the write is refused).
    Diverged,
}

/// The replica's rule for a write of the events from `first` onto its copy
/// of `have` events: `follows` says its event at `first - 1` is the one the
/// primary names (true when `first` is 1), `overlap_same` that the events
/// it holds from `first` on are the write's. Checking the event before the
/// write, and not only the overlap, is what keeps a copy that kept an
/// unacknowledged event from growing on it when the primary's next write
/// (or a catch-up, which sends the newest event) starts just after it.
pub fn replica_write(have: u64, first: u64, follows: bool, overlap_same: bool) -> ReplicaWrite {
    if first > have + 1 {
        return ReplicaWrite::Gap(have);
    }
    if !follows || (first <= have && !overlap_same) {
        return ReplicaWrite::Diverged;
    }
    ReplicaWrite::Append
}

/// What a node taking a shard over does with one source's pending timers
/// of an entity ([`timer_merge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMerge {
    /// The source's set replaces the local one.
    Replace,
    /// The source's timers the local set lacks are added.
    Add,
    /// The source's timers are older than the local ones: left alone.
    Keep,
}

/// The timers rule of a take-over, for one source's copy of an entity
/// standing at `source` (its newest event and its timers'
/// [`crate::timers::Position`]) and the local copy at `local`. A timer's
/// arming and removal are written with the events of the command that made
/// them, or in a timers-only write that a replica takes only where its copy
/// stands where the primary's did, so of two copies the one further in
/// ([`crate::timers::compare`]) holds every timer change the other holds:
/// from the live old owner (`from_owner`) the set is exactly its set; a
/// source further in brings its set whole (a timer it no longer holds
/// fired, and the write that says so came with the copy); a copy standing
/// at the same place adds what it holds (the copies can differ only by a
/// write that was never acknowledged: firing twice is preferred to never);
/// a copy behind is not looked at (else a timer that fired would be armed
/// again and fire twice).
pub fn timer_merge(
    local: (u64, crate::timers::Position),
    source: (u64, crate::timers::Position),
    from_owner: bool,
) -> TimerMerge {
    if from_owner {
        return TimerMerge::Replace;
    }
    match crate::timers::compare(source, local) {
        std::cmp::Ordering::Greater => TimerMerge::Replace,
        std::cmp::Ordering::Equal => TimerMerge::Add,
        std::cmp::Ordering::Less => TimerMerge::Keep,
    }
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
    fn a_set_follows_the_members_but_never_shrinks_for_a_crash() {
        let none = |_: NodeId| false;
        // The set the ring gives: no change.
        assert_eq!(
            next_set(&ids(&[2, 3]), &ids(&[1, 2, 3, 4]), &none, NodeId(1), 2),
            None
        );
        assert_eq!(
            next_set(&ids(&[4, 3]), &ids(&[1, 2, 3, 4]), &none, NodeId(2), 2)
                .map(|r| r.as_slice().to_vec()),
            None,
            "same members in another order: no change"
        );
        // A member joined (3): the ring puts it in the set.
        assert_eq!(
            next_set(&ids(&[4, 1]), &ids(&[1, 2, 3, 4]), &none, NodeId(2), 2)
                .map(|r| r.as_slice().to_vec()),
            Some(ids(&[3, 4]))
        );
        // Node 3 crashed (not in the holders, not departed): with nobody
        // to take its place it stays; with node 4 there, 4 replaces it.
        assert_eq!(
            next_set(&ids(&[2, 3]), &ids(&[1, 2]), &none, NodeId(1), 2),
            None
        );
        assert_eq!(
            next_set(&ids(&[2, 3]), &ids(&[1, 2, 4]), &none, NodeId(1), 2)
                .map(|r| r.as_slice().to_vec()),
            Some(ids(&[2, 4]))
        );
        // Node 3 left for good: the set shrinks.
        let left = |n: NodeId| n == NodeId(3);
        assert_eq!(
            next_set(&ids(&[2, 3]), &ids(&[1, 2]), &left, NodeId(1), 2)
                .map(|r| r.as_slice().to_vec()),
            Some(ids(&[2]))
        );
    }

    #[test]
    fn a_move_or_failover_while_a_member_is_down_keeps_the_set_full() {
        let none = |_: NodeId| false;
        // 3 nodes, node 3 down: shard of owner 2 (set [3, 1]) moves to 1.
        // The live ring gives [2]; node 3 keeps its place.
        assert_eq!(
            placed_set(&ids(&[1, 2]), &ids(&[3, 1, 2]), &none, NodeId(1), 2),
            ids(&[2, 3])
        );
        // Failover of down owner 3 (set [1, 2]) to 1: the old owner fills.
        assert_eq!(
            placed_set(&ids(&[1, 2]), &ids(&[1, 2, 3]), &none, NodeId(1), 2),
            ids(&[2, 3])
        );
        // Enough live members: the ring alone.
        assert_eq!(
            placed_set(&ids(&[1, 2, 4]), &ids(&[3, 2]), &none, NodeId(1), 2),
            ids(&[2, 4])
        );
        // A member that left does not come back.
        let left = |n: NodeId| n == NodeId(3);
        assert_eq!(
            placed_set(&ids(&[1, 2]), &ids(&[3, 1]), &left, NodeId(1), 2),
            ids(&[2])
        );
    }

    #[test]
    fn a_failover_in_a_small_cluster_keeps_the_old_owner_in_the_set() {
        let mut table = ShardTable::new(1);
        table
            .apply(Decision::Assign {
                shard: crate::shard::ShardId(0),
                owner: NodeId(3),
                epoch: 1,
                replicas: Replicas::new(ids(&[1, 2])),
            })
            .unwrap();
        let down: BTreeSet<NodeId> = [NodeId(3)].into();
        let policies = [Policy {
            replicas: 2,
            min_acks: 1,
        }];
        let decisions = promotions(&FailoverView {
            table: &table,
            members: &ids(&[1, 2, 3]),
            replicas: 2,
            policies: &policies,
            down: &down,
            unreachable: &BTreeSet::new(),
            lease_expired: &|_| true,
            ready: &|_, _| true,
        });
        let [
            Decision::Assign {
                owner, replicas, ..
            },
        ] = decisions[..]
        else {
            panic!("one promotion: {decisions:?}");
        };
        assert_eq!(owner, NodeId(1));
        assert_eq!(replicas.as_slice(), &ids(&[2, 3])[..]);
    }

    #[test]
    fn a_replica_appends_only_onto_the_primarys_history() {
        assert_eq!(replica_write(3, 6, true, true), ReplicaWrite::Gap(3));
        assert_eq!(replica_write(3, 4, true, true), ReplicaWrite::Append);
        assert_eq!(replica_write(3, 4, false, true), ReplicaWrite::Diverged);
        assert_eq!(replica_write(5, 4, true, true), ReplicaWrite::Append);
        assert_eq!(replica_write(5, 4, true, false), ReplicaWrite::Diverged);
        assert_eq!(replica_write(0, 1, true, true), ReplicaWrite::Append);
    }

    #[test]
    fn timers_follow_the_longer_history() {
        use crate::timers::Position;
        let at = |last: u64| (last, Position::default());
        let one = Position::default().after(false, 7);
        assert_eq!(timer_merge(at(9), at(3), true), TimerMerge::Replace);
        assert_eq!(timer_merge(at(3), at(4), false), TimerMerge::Replace);
        assert_eq!(timer_merge(at(4), at(4), false), TimerMerge::Add);
        assert_eq!(timer_merge(at(5), at(4), false), TimerMerge::Keep);
        assert_eq!(timer_merge(at(0), at(0), false), TimerMerge::Add);
        // A timers-only write further in; a longer history beats it.
        assert_eq!(timer_merge(at(4), (4, one), false), TimerMerge::Replace);
        assert_eq!(timer_merge((4, one), at(4), false), TimerMerge::Keep);
        assert_eq!(timer_merge((4, one), at(5), false), TimerMerge::Replace);
        // A copy whose gap was filled without timers loses at the same event.
        assert_eq!(
            timer_merge((4, Position::behind()), at(4), false),
            TimerMerge::Replace
        );
    }

    #[test]
    fn a_write_needs_every_set_it_must_reach() {
        let (old, new) = (ids(&[1, 2]), ids(&[2, 3]));
        let sets = [(&old[..], 1), (&new[..], 1)];
        assert!(!acknowledged(&sets, &ids(&[1])));
        assert!(acknowledged(&sets, &ids(&[1, 3])));
        assert!(acknowledged(&sets, &ids(&[2])));
        assert!(!acknowledged(&[(&old[..], 2)], &ids(&[2, 3])));
    }

    #[test]
    fn promotion_needs_a_live_member_in_every_possible_ack_quorum() {
        let set = ids(&[1, 2, 3]);
        let live = |up: &'static [u64]| move |n: NodeId| up.contains(&n.0);
        let p = |replicas, min_acks| Policy { replicas, min_acks };
        // min_acks 2 of 3: any two live members meet every ack quorum.
        assert!(may_promote(&set, &[p(3, 2)], &live(&[1, 3])));
        assert!(!may_promote(&set, &[p(3, 2)], &live(&[3])));
        // min_acks 1: all three must be live.
        assert!(!may_promote(&set, &[p(3, 1)], &live(&[1, 2])));
        // A type with one replica writes to the first member only.
        assert!(may_promote(&set, &[p(1, 1)], &live(&[1])));
        assert!(!may_promote(&set, &[p(1, 1), p(3, 3)], &live(&[2, 3])));
        // min_acks 0 keeps every replica's copy; no set, no promotion.
        assert!(!may_promote(&set, &[p(3, 0)], &live(&[1, 2])));
        assert!(!may_promote(&[], &[p(3, 1)], &live(&[1])));
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
