//! A shard's replica set as its owner keeps it. The set is part of the
//! shard's committed allocation; it changes only by a committed decision:
//! with a new owner (the coordinator's `Assign`), or, for the same owner,
//! by the owner itself, when the set it should have (the next members in
//! the ring of committed `up` members, leaving out those down for longer
//! than [`DOWN_GRACE`]; a member merely down keeps its place when no other
//! can take it, `cairn_cluster::replication::next_set`) differs from the
//! committed one.
//!
//! The owner's change, in order:
//! 1. From now on every write of the shard must be acknowledged by the
//!    committed set *and* by the set it moves to (each `min_acks` of its
//!    own, `cairn_cluster::replication::acknowledged`); writes that started
//!    before are waited for (the shard's gate).
//! 2. It gives every member of the new set the shard's whole history and
//!    pending timers (a member joining the set is caught up before it
//!    counts alone).
//! 3. It commits `Command::Replicas` under its allocation's epoch and the
//!    count of changes it started from (refused if the shard moved or its
//!    set changed meanwhile, or if a member named is no longer `up`); once
//!    the change is in its table, the writes count the new set only.
//!
//! So every acknowledged event is on `min_acks` members of the committed
//! set at every moment, which is what failover relies on
//! (`cairn_cluster::replication::promotions`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_cluster::{MemberState, NodeId, Replicas, ShardId};

use crate::Inner;
use cairn_host::config::ReplicationSettings;

/// How long a member must have been down (gossip) before owners move
/// their replica sets off it: shorter outages (a restart, a pause, phi
/// flapping under load) do not cost a copy of every shard.
pub(crate) const DOWN_GRACE: Duration = Duration::from_secs(10);

/// How often an owner compares its shards' replica sets with the members.
const ROUND: Duration = Duration::from_secs(1);

/// At most this many shards change replica set per round (each change
/// copies the shard's history to the new members).
const CHANGES_PER_ROUND: usize = 16;

/// The owner's changes of replica set in progress.
#[derive(Default)]
pub(crate) struct Changes {
    /// Shard → (the allocation epoch it was started under, the set it
    /// moves to).
    moving: Mutex<HashMap<u32, (u64, Replicas)>>,
    /// Shard → its writes' gate: a write holds it shared; a change takes
    /// it exclusively once it has published its target, so that every
    /// write counting the old set alone has finished before the catch-up
    /// reads the journal.
    gates: Mutex<HashMap<u32, Arc<tokio::sync::RwLock<()>>>>,
}

impl Changes {
    /// The gate of `shard`'s writes.
    pub(crate) fn gate(&self, shard: u32) -> Arc<tokio::sync::RwLock<()>> {
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(shard)
            .or_default()
            .clone()
    }

    /// The set `shard` moves to under the allocation of `epoch`, if a
    /// change is in progress.
    pub(crate) fn target(&self, shard: u32, epoch: u64) -> Option<Replicas> {
        self.moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
            .filter(|(e, _)| *e == epoch)
            .map(|(_, r)| *r)
    }

    fn start(&self, shard: u32, epoch: u64, to: Replicas) {
        self.moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard, (epoch, to));
    }

    fn end(&self, shard: u32) {
        self.moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&shard);
    }

    fn in_progress(&self) -> Vec<(u32, u64, Replicas)> {
        self.moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(s, (e, r))| (*s, *e, *r))
            .collect()
    }
}

/// The sets a write of `shard` must reach, each with the acknowledgements
/// it needs, for a type replicating with `settings`: the committed set
/// and, during a change, the set it moves to (each cut to the type's
/// replica count). Empty when the shard has no replicas.
pub(crate) fn write_sets(
    inner: &Inner,
    shard: ShardId,
    settings: &ReplicationSettings,
) -> Vec<(Vec<u64>, usize)> {
    let Some(a) = inner.router().table().get(shard) else {
        return Vec::new();
    };
    let cut = |r: Replicas| -> (Vec<u64>, usize) {
        let set: Vec<u64> = r
            .as_slice()
            .iter()
            .take(settings.replicas)
            .map(|n| n.0)
            .collect();
        let need = cairn_cluster::replication::acks_needed(settings.min_acks, set.len());
        (set, need)
    };
    let mut sets = vec![cut(a.replicas)];
    if let Some(to) = inner.changes.target(shard.0, a.epoch)
        && to != a.replicas
    {
        sets.push(cut(to));
    }
    sets.retain(|(s, _)| !s.is_empty());
    sets
}

/// Every member of `sets`, once, in order.
pub(crate) fn members_of(sets: &[(Vec<u64>, usize)]) -> Vec<u64> {
    let mut all: Vec<u64> = Vec::new();
    for (set, _) in sets {
        for n in set {
            if !all.contains(n) {
                all.push(*n);
            }
        }
    }
    all
}

/// Every member of the committed set of `shard` and of the set it moves
/// to, in order (for what goes to all of them: a truncation, a read-back).
pub(crate) fn all_replicas(inner: &Inner, shard: ShardId) -> Vec<u64> {
    let settings = ReplicationSettings {
        replicas: cairn_cluster::MAX_REPLICAS,
        ..ReplicationSettings::default()
    };
    members_of(&write_sets(inner, shard, &settings))
}

/// The owner's loop: moves the replica sets of the shards it serves to
/// the sets they should have, one change at a time per shard.
pub(crate) async fn maintain(inner: Arc<Inner>) {
    let mut down_since: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if inner.is_stopping() {
            return;
        }
        let (down, live) = {
            let v = inner.view();
            (v.down.clone(), v.live.clone())
        };
        down_since.retain(|n, _| down.contains(n));
        for n in &down {
            down_since.entry(*n).or_insert_with(Instant::now);
        }
        let gone = |n: u64| {
            down_since
                .get(&n)
                .is_some_and(|t| t.elapsed() >= DOWN_GRACE)
        };
        let (holders, departed): (Vec<NodeId>, std::collections::BTreeSet<u64>) = {
            let state = inner.log.state();
            let s = state.borrow();
            (
                s.members
                    .iter()
                    .filter(|(id, r)| r.state == MemberState::Up && !gone(**id))
                    .map(|(id, _)| NodeId(*id))
                    .collect(),
                s.members
                    .iter()
                    .filter(|(_, r)| r.state != MemberState::Up)
                    .map(|(id, _)| *id)
                    .collect(),
            )
        };
        let departed = |n: NodeId| departed.contains(&n.0);
        let want = super::replicate::max_replicas(&inner);
        let me = NodeId(inner.id);
        let (table, ready) = {
            let state = inner.log.state();
            let s = state.borrow();
            (s.table.clone(), s.ready.clone())
        };
        let Some(table) = table else { continue };
        // Changes that are committed (or whose shard moved) are over.
        for (shard, epoch, to) in inner.changes.in_progress() {
            match table.get(ShardId(shard)) {
                Some(a) if a.owner == me && a.epoch == epoch && a.replicas != to => {}
                _ => inner.changes.end(shard),
            }
        }
        let mut started = 0;
        for (shard, a) in table.iter() {
            let Some(a) = a else { continue };
            if started >= CHANGES_PER_ROUND {
                break;
            }
            // Only a shard served here whose take-over is complete (its
            // history here and on its committed set).
            let served = inner.router().serves(shard)
                && inner.router().table().get(shard) == Some(a)
                && ready.get(&shard.0).is_some_and(|e| *e >= a.epoch);
            if a.owner != me || !served {
                continue;
            }
            let Some(should) = cairn_cluster::replication::next_set(
                a.replicas.as_slice(),
                &holders,
                &departed,
                me,
                want,
            ) else {
                continue;
            };
            // Every new member must be reachable to be caught up (one that
            // keeps its place may be down: it holds what it held).
            if !should
                .as_slice()
                .iter()
                .filter(|n| !a.replicas.contains(**n))
                .all(|n| live.contains(&n.0) && !down.contains(&n.0))
            {
                continue;
            }
            started += 1;
            change(&inner, shard, a, should).await;
        }
    }
}

/// One change of `shard`'s replica set from that of allocation `a` to
/// `to` (see the module's header for the order).
async fn change(inner: &Arc<Inner>, shard: ShardId, a: cairn_cluster::Allocation, to: Replicas) {
    let (epoch, from) = (a.epoch, a.replicas);
    inner.changes.start(shard.0, epoch, to);
    // Writes that count `from` alone finish before the history is read.
    drop(inner.changes.gate(shard.0).write().await);
    let set: Vec<u64> = to.as_slice().iter().map(|n| n.0).collect();
    if let Err(e) =
        super::replicate::catch_up_to(inner, shard, inner.shard_count(), &set, epoch).await
    {
        tracing::info!(shard = shard.0, ?from, ?to, error = %e, "replica set not changed yet: the new members are not caught up");
        inner.changes.end(shard.0);
        return;
    }
    let cmd = cairn_raft::Command::Replicas {
        shard: shard.0,
        epoch,
        changes: a.changes,
        replicas: to,
    };
    match super::handoff::propose(inner, cmd).await {
        Ok(()) => {
            tracing::info!(shard = shard.0, epoch, ?from, ?to, "replica set changed");
        }
        // It may have been committed all the same: the change stays in
        // progress (writes reach both sets) until the table says.
        Err(e) => {
            tracing::info!(shard = shard.0, ?to, error = %e, "replica set change not committed yet")
        }
    }
}
