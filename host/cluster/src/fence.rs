//! Who may run and write an entity, decided without I/O: a node's
//! admission of an entity, the writer's check before each write, and what
//! a replica accepts. The node's driver calls these three rules and
//! nothing else decides it; `sim` (tests) runs them on N nodes with moves,
//! failovers, lagging tables, pauses and lapsed leases.
//!
//! The rules, with the allocation (shard, epoch) an entity was started
//! under as its [`Fence`]:
//! - **Admission**: a node starts an entity only if its committed table
//!   gives the shard to it, the shard's history is here (not still
//!   arriving), its lease is fresh, and the shard is not being released
//!   (a live entity finishes what it was given while the router holds
//!   back new commands; nothing new starts).
//! - **The writer**: every write carries the fence; it is refused unless
//!   the fence is the shard's current allocation in the writer's table,
//!   owned by the writer, and the writer's lease is fresh at the time of
//!   the write.
//! - **A replica** accepts a write of epoch `e` for a shard unless it has
//!   seen a newer epoch for the shard, from a write or from its own
//!   committed table.
//!
//! Why that is enough (with the lease's clock-drift bound of
//! [`crate::lease`]): a shard changes owner either by a handoff, committed
//! only after the old owner released it (it starts nothing and its last
//! write is done), or by a failover, committed only after the old owner's
//! lease has certainly expired (it can write nothing, even if paused: on
//! waking it checks its lease before writing). The new owner's first write
//! carries a newer epoch, so from then on every replica refuses the old
//! allocation's writes; and it serves only after holding the shard's
//! history, so nothing acknowledged under the old epoch is missing.

use std::collections::BTreeMap;

use crate::member::NodeId;
use crate::route::Router;
use crate::shard::ShardId;
use crate::table::ShardTable;

/// The allocation an entity runs under: its shard and the epoch of the
/// shard's allocation when it was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The shard.
    pub shard: ShardId,
    /// The allocation's epoch.
    pub epoch: u64,
}

/// May a node start (or keep running) an entity?
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Yes, under this allocation.
    Here(Fence),
    /// Another node owns the shard.
    Elsewhere {
        /// The owner in this node's table.
        owner: NodeId,
        /// The allocation's epoch.
        epoch: u64,
    },
    /// The shard has no owner yet.
    Unowned,
    /// This node owns the shard, but its history is still arriving.
    Arriving,
    /// This node is handing the shard off: nothing new starts.
    Releasing,
    /// This node's lease lapsed: it serves nothing until renewed.
    LeaseLapsed,
}

/// The admission of an entity of `shard` on the node of `router`. `live`:
/// the entity is already running here (it may finish its commands while
/// the shard is released).
pub fn admit<C>(router: &Router<C>, shard: ShardId, lease_fresh: bool, live: bool) -> Admission {
    let Some(a) = router.table().get(shard) else {
        return Admission::Unowned;
    };
    if a.owner != router.local() {
        return Admission::Elsewhere {
            owner: a.owner,
            epoch: a.epoch,
        };
    }
    if router.is_waiting(shard) {
        return Admission::Arriving;
    }
    if router.is_releasing(shard) && !live && !mutant(Mutant::StartWhileReleasing) {
        return Admission::Releasing;
    }
    if !lease_fresh && !mutant(Mutant::NoLeaseCheck) {
        return Admission::LeaseLapsed;
    }
    Admission::Here(Fence {
        shard,
        epoch: a.epoch,
    })
}

/// Why a write was refused before anything was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Another node owns the shard now.
    #[error("shard {shard} is owned by node {} (epoch {epoch}) now", owner.0)]
    NotOwner {
        /// The shard.
        shard: ShardId,
        /// Its owner in the writer's table.
        owner: NodeId,
        /// The allocation's epoch.
        epoch: u64,
    },
    /// The writer was started under an older allocation of the shard.
    #[error(
        "started under epoch {started} of shard {shard}, whose allocation is now epoch {current}"
    )]
    EpochMoved {
        /// The shard.
        shard: ShardId,
        /// The writer's epoch.
        started: u64,
        /// The shard's current epoch.
        current: u64,
    },
    /// The shard has no allocation.
    #[error("shard {0} has no allocation")]
    Unowned(ShardId),
    /// The writer's lease lapsed.
    #[error("this node's lease lapsed (it cannot reach the cluster's majority)")]
    LeaseLapsed,
}

/// The writer's check, at the time of a write: `fence` must be the shard's
/// current allocation in `table`, owned by `me`, and the lease fresh.
pub fn may_write(
    table: &ShardTable,
    me: NodeId,
    fence: Fence,
    lease_fresh: bool,
) -> Result<(), Refusal> {
    let Some(a) = table.get(fence.shard) else {
        return Err(Refusal::Unowned(fence.shard));
    };
    if a.owner != me && !mutant(Mutant::WriteWithoutFenceCheck) {
        return Err(Refusal::NotOwner {
            shard: fence.shard,
            owner: a.owner,
            epoch: a.epoch,
        });
    }
    if a.epoch != fence.epoch && !mutant(Mutant::WriteWithoutFenceCheck) {
        return Err(Refusal::EpochMoved {
            shard: fence.shard,
            started: fence.epoch,
            current: a.epoch,
        });
    }
    if !lease_fresh && !mutant(Mutant::NoLeaseCheck) {
        return Err(Refusal::LeaseLapsed);
    }
    Ok(())
}

/// A replica's fences: the newest epoch it has accepted per shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaFences {
    newest: BTreeMap<ShardId, u64>,
}

impl ReplicaFences {
    /// Accepts a write of `epoch` for `shard` unless this replica has seen
    /// a newer epoch for it (from a write, or `committed`: the epoch of the
    /// shard's allocation in its own table). On refusal, the newest epoch.
    pub fn accept(
        &mut self,
        shard: ShardId,
        epoch: u64,
        committed: Option<u64>,
    ) -> Result<(), u64> {
        let seen = self.newest.entry(shard).or_default();
        let newest = (*seen).max(committed.unwrap_or(0));
        if epoch < newest && !mutant(Mutant::ReplicaWithoutFence) {
            return Err(newest);
        }
        *seen = (*seen).max(epoch);
        Ok(())
    }

    /// The newest epoch accepted for `shard` (0 if none).
    pub fn newest(&self, shard: ShardId) -> u64 {
        self.newest.get(&shard).copied().unwrap_or(0)
    }
}

/// A deliberately broken rule, switched on by the simulation (in tests of
/// this crate only) to show that it catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mutant {
    /// A write is not checked against the shard's current owner and
    /// epoch (only its lease).
    WriteWithoutFenceCheck,
    /// A replica accepts writes of any epoch.
    ReplicaWithoutFence,
    /// Admission and writes ignore the lease.
    NoLeaseCheck,
    /// An entity may start on a shard being released.
    StartWhileReleasing,
    /// A lease grant makes an owner serve although its table has not
    /// applied the epoch the grant carried.
    StaleGrant,
    /// A receiver applies every copy of a message
    /// ([`crate::messages::Inbox`]).
    SendWithoutDedup,
    /// A sender's outbox hands out its newest send first
    /// ([`crate::messages::Outbox`]).
    SendsOutOfOrder,
    /// An old owner serves a released shard again once its move has not
    /// been applied for a while, without a committed settle
    /// ([`crate::route::Router::settled`]): the move may still commit.
    ResumeByTimer,
    /// The leader grants a lease to a member whose shards it is failing
    /// over ([`crate::lease::LeaseGrants::grant`]).
    GrantWhileBarred,
    /// A primary counts one replica acknowledgement more than it has
    /// ([`crate::write::PrimaryWrite::progress`]).
    AckBeforeReplicas,
    /// A primary appends a write its replicas acknowledged although the
    /// lease it was admitted under lapsed meanwhile
    /// ([`crate::write::PrimaryWrite::may_append`]).
    AppendAfterLapse,
    /// A primary takes a replica's silence (a lost answer) for a refusal,
    /// so a write a replica may hold is reported as stored nowhere
    /// ([`crate::write::PrimaryWrite::answer`]).
    SilenceAsRefusal,
    /// A replication batch takes a second write of an entity
    /// ([`crate::batch::Gather::offer`]).
    TwoWritesOfAnEntityPerBatch,
    /// A merge of two copies of equal length keeps the local record of a
    /// timer the source also holds, whatever either says: a tombstone
    /// loses to an armed timer ([`crate::timers::merge_timers`]).
    TimersByUnion,
    /// A replica applies a write of an entity's timers without checking
    /// that its copy stands where the primary's did
    /// ([`crate::timers::replica_timers`]).
    TimersUnchecked,
    /// A restarted node forgets that it had begun serving a shard under
    /// its allocation, and reads the previous owner's copy as the truth
    /// ([`crate::arrival::source`]).
    ServedForgotten,
    /// A failover reads the history from whichever copies answer, however
    /// few ([`crate::replication::may_promote`]).
    PromoteShort,
}

#[cfg(test)]
thread_local! {
    static MUTANT: std::cell::Cell<Option<Mutant>> = const { std::cell::Cell::new(None) };
}

/// Switches a mutant on for this thread (tests of this crate only).
#[cfg(test)]
pub(crate) fn set_mutant(m: Option<Mutant>) {
    MUTANT.with(|c| c.set(m));
}

#[cfg(test)]
fn mutant(m: Mutant) -> bool {
    MUTANT.with(|c| c.get() == Some(m))
}

#[cfg(not(test))]
#[inline(always)]
fn mutant(_: Mutant) -> bool {
    false
}

/// Is mutant `m` on (always false outside this crate's tests)?
pub(crate) fn is_mutant(m: Mutant) -> bool {
    mutant(m)
}

/// Is [`Mutant::StaleGrant`] on (for [`crate::lease`])?
pub(crate) fn mutant_stale_grant() -> bool {
    mutant(Mutant::StaleGrant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Decision;

    fn assign(shard: u32, owner: u64, epoch: u64) -> Decision {
        Decision::Assign {
            shard: ShardId(shard),
            owner: NodeId(owner),
            epoch,
            replicas: crate::table::Replicas::default(),
        }
    }

    #[test]
    fn a_write_needs_the_current_allocation_here_and_a_lease() {
        let mut t = ShardTable::new(2);
        t.apply(assign(0, 1, 1)).unwrap();
        let f = Fence {
            shard: ShardId(0),
            epoch: 1,
        };
        assert_eq!(may_write(&t, NodeId(1), f, true), Ok(()));
        assert_eq!(
            may_write(&t, NodeId(1), f, false),
            Err(Refusal::LeaseLapsed)
        );
        assert!(matches!(
            may_write(&t, NodeId(2), f, true),
            Err(Refusal::NotOwner { .. })
        ));
        t.apply(assign(0, 1, 2)).unwrap();
        assert!(matches!(
            may_write(&t, NodeId(1), f, true),
            Err(Refusal::EpochMoved {
                started: 1,
                current: 2,
                ..
            })
        ));
    }

    #[test]
    fn a_replica_refuses_epochs_older_than_it_has_seen() {
        let mut r = ReplicaFences::default();
        let s = ShardId(3);
        assert_eq!(r.accept(s, 2, None), Ok(()));
        assert_eq!(r.accept(s, 1, None), Err(2));
        assert_eq!(r.accept(s, 2, Some(3)), Err(3));
        assert_eq!(r.accept(s, 4, Some(3)), Ok(()));
        assert_eq!(r.newest(s), 4);
    }

    #[test]
    fn admission_follows_the_router() {
        let mut r: Router<u32> = Router::new(NodeId(1), 2, 4);
        assert_eq!(admit(&r, ShardId(0), true, false), Admission::Unowned);
        r.apply(assign(0, 1, 1)).unwrap();
        r.apply(assign(1, 2, 2)).unwrap();
        assert!(matches!(
            admit(&r, ShardId(0), true, false),
            Admission::Here(_)
        ));
        assert_eq!(admit(&r, ShardId(0), false, false), Admission::LeaseLapsed);
        assert!(matches!(
            admit(&r, ShardId(1), true, false),
            Admission::Elsewhere { .. }
        ));
        r.release(ShardId(0), r.table().epoch() + 1, 0);
        assert_eq!(admit(&r, ShardId(0), true, false), Admission::Releasing);
        assert!(matches!(
            admit(&r, ShardId(0), true, true),
            Admission::Here(_)
        ));
    }
}
