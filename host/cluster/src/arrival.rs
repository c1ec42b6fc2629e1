//! Where a node reads a shard's history from when a committed allocation
//! makes it the shard's owner: nowhere (it serves at once), from the
//! previous owner (a move; on failover, that owner's committed replica
//! set), or back from its own journal and its replica set's members (a
//! restart, or a view that jumped over owners it never saw).
//!
//! The rule that matters most here is for a restart: a node that had
//! begun serving a shard under an allocation wrote (and acknowledged)
//! events the previous owner never held. Its own journal is then the
//! truth, and reading the previous owner's copy as authoritative would cut
//! those events as if they were an unacknowledged tail. The log's `ready`
//! alone does not say this (an owner serves as soon as it has the
//! history, and reports ready only once its replica set has it too), so
//! the node keeps a durable record of the epochs it served each shard
//! under ([`Arrival::served`]).

use crate::fence::{Mutant, is_mutant};
use crate::member::NodeId;
use crate::table::Allocation;

/// What a node knows when it applies a committed allocation naming it the
/// owner.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// This node.
    pub me: NodeId,
    /// The allocation applied (its owner is `me`).
    pub allocation: Allocation,
    /// The allocation this node's table held for the shard before (none
    /// after a restart: its table starts empty).
    pub before: Option<Allocation>,
    /// The allocation the committed one replaced, as the log says (this
    /// node may never have applied it).
    pub previous: Option<Allocation>,
    /// The log says the shard's owner holds its whole history under this
    /// allocation's epoch or a later one (`ready`).
    pub ready: bool,
    /// The newest epoch this node began serving the shard under, from its
    /// durable record (it survives a crash).
    pub served: Option<u64>,
    /// This is the first table the process applies, of a cluster that had
    /// allocated already.
    pub restart: bool,
}

/// Where the history comes from ([`source`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Nothing to read: a first allocation of the shard. Serve now.
    Serve,
    /// The allocation of the shard's previous owner: read its history from
    /// that owner while it is live (all of it; the local copy becomes
    /// exactly that), else merge the copies of its committed replica set.
    Previous(Allocation),
    /// This node's journal holds every event it acknowledged; read back
    /// what the members of the current replica set hold beyond it (never
    /// acknowledged, but its sequence numbers must not be used twice).
    ReadBack,
    /// The same ownership as the table already had: nothing to do.
    Unchanged,
}

/// Where the new owner reads the shard's history from.
pub fn source(a: &Arrival) -> Source {
    let epoch = a.allocation.epoch;
    let served_here = !is_mutant(Mutant::ServedForgotten) && a.served.is_some_and(|e| e >= epoch);
    // This node took the shard over under this allocation (it may have
    // written to it since): its own history is the truth.
    let taken_over = a.ready || served_here;
    let before = match (a.before, a.previous) {
        // The table here missed the allocation the committed one replaced.
        (Some(b), Some(p)) if b.epoch < p.epoch && p.owner != a.me => Some(p),
        // A restart before this node took the shard over: the history is
        // still where it was to be read from.
        (None, Some(p)) if !taken_over && p.owner != a.me => Some(p),
        (b, _) => b,
    };
    // Back here under a newer epoch without this node having seen the
    // owners in between (as after a restart).
    let jumped = before.map_or(a.restart, |b| b.epoch < epoch);
    match before {
        Some(b) if b.owner != a.me => Source::Previous(b),
        _ if jumped => Source::ReadBack,
        None => Source::Serve,
        Some(_) => Source::Unchanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Replicas;

    fn alloc(owner: u64, epoch: u64) -> Allocation {
        Allocation {
            owner: NodeId(owner),
            epoch,
            replicas: Replicas::default(),
            changes: 0,
        }
    }

    fn arrival(before: Option<Allocation>, previous: Option<Allocation>) -> Arrival {
        Arrival {
            me: NodeId(2),
            allocation: alloc(2, 10),
            before,
            previous,
            ready: false,
            served: None,
            restart: false,
        }
    }

    #[test]
    fn a_move_reads_the_previous_owner_and_a_first_allocation_serves() {
        let a = arrival(Some(alloc(3, 9)), Some(alloc(3, 9)));
        assert_eq!(source(&a), Source::Previous(alloc(3, 9)));
        // The table here missed an owner in between: the log's previous.
        let a = arrival(Some(alloc(1, 4)), Some(alloc(3, 9)));
        assert_eq!(source(&a), Source::Previous(alloc(3, 9)));
        assert_eq!(source(&arrival(None, None)), Source::Serve);
    }

    #[test]
    fn a_restart_before_serving_reads_the_previous_owner_and_after_reads_back() {
        let mut a = arrival(None, Some(alloc(3, 9)));
        a.restart = true;
        assert_eq!(source(&a), Source::Previous(alloc(3, 9)));
        // Served under this epoch (not yet ready): its journal is the truth.
        a.served = Some(10);
        assert_eq!(source(&a), Source::ReadBack);
        // Served under an older epoch only: that says nothing of this one.
        a.served = Some(7);
        assert_eq!(source(&a), Source::Previous(alloc(3, 9)));
        a.ready = true;
        assert_eq!(source(&a), Source::ReadBack);
    }
}
