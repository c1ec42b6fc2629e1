//! The seeded simulation of replication, failover and replica-set changes,
//! by the rules of `cairn_cluster::replication` and the committed replica
//! sets of the shard table. Six node slots (four members at the start, two
//! may join), four shards of one entity each; even seeds replicate with
//! `min_acks` 1 over 2 replicas, odd seeds 2 over 3. Only durable state is
//! modelled: a crash loses nothing that was appended.
//!
//! What happens, interleaved over the steps:
//! - Writes: the owner sends the new event, naming the one before it, to
//!   its replicas (messages are lost); a replica lacking earlier events
//!   gets them as a gap's fill, and refuses a write whose preceding or
//!   overlapping events differ from its copy (the product's
//!   `replica_write`). A catch-up sends the newest event the same way and
//!   reconciles a copy that diverged. The owner appends and acknowledges once
//!   `acknowledged` holds for the sets it counts; it may crash in the
//!   middle. After a failed write or a restart it reads back every copy it
//!   may have written to (all must answer) before it writes again.
//! - Membership: crashes, restarts (also quick ones, before the failure
//!   detector declares the node down), joins (an empty disk), retirements
//!   (a graceful leave: no new set names the member; it leaves, its disk
//!   gone for good, once no committed allocation names it).
//! - Replica changes, driven by the owner O of a shard with committed set
//!   R: R' = `replica_set` of the live members not retiring. If R' != R, O
//!   enters joint mode (a write counts R and R'), catches R' up (its whole
//!   history, which truncates a differing unacknowledged tail; done when
//!   `acks_needed` of R' hold it), then proposes `set_replicas(shard,
//!   epoch, R')` to the decision log, which decides it some steps later
//!   (commits it, or refuses it as superseded), whatever became of O; O
//!   counts R' only once it is decided. O abandons a change it has not
//!   proposed when the set it wants changes; a crash abandons it (the
//!   proposal, if made, stays in the log).
//! - Failover: `promotions` over the committed sets with the policy; the
//!   promoted owner merges the copies of the live members of the set before
//!   the failover (once enough of them are live for `may_promote`), catches
//!   up its own committed set, and only then serves and may fail over again.
//!
//! Checked after every step, per shard:
//! - the serving owner's history holds every acknowledged write, where it
//!   was acknowledged; every other live copy agrees with it but perhaps for
//!   an unacknowledged tail;
//! - no failover could lose an acknowledged write: of the committed set
//!   (or, until a promoted owner has merged, of the set it merges from),
//!   every group of members `may_promote` would accept as the live ones
//!   includes one holding the write (a member that left holds nothing). For
//!   2 acks of 3 that is "every ack quorum includes a holder"; for 1 ack of
//!   2 an ack quorum is one member, but a failover needs both live, so one
//!   holder is enough.
//!
//! A failover merge may find two copies that differ: a member of the set
//! kept an unacknowledged tail (a write of an earlier owner or of a joint
//! mode that no merge or read-back saw) and missed the catch-up that would
//! have truncated it. The merge refuses (as the product's does) and the
//! takeover waits: a liveness gap, counted in `refused_merges`, not a loss.
//! Two copies with acknowledged writes past where they differ fail the
//! check.
//!
//! The protocol needs three conditions it did not state; the correct rules
//! here have them, and dropping each is a broken rule that is caught:
//! a retiring member does not leave while a promoted owner has not merged
//! the copies of a set naming it (`LeaveDuringTakeover`); a restarted owner
//! neither writes nor changes a shard's set while a change it proposed
//! before its crash is undecided in the log (`ForgottenProposal`: the
//! table checks only the allocation epoch); a change naming a member that
//! has left is refused when it is applied (`CommitNamesLeftMember`).
//!
//! Broken rules that must be caught, besides those three: acknowledging
//! before the replicas hold the write, promoting with too few of the set
//! live, an owner writing on after a failed write or a restart without
//! reading back its replicas' copies, a promoted owner serving before its
//! own replicas hold the history, a second failover from an owner that died
//! before it had taken the shard over, merging from `replica_set` of the
//! current members instead of the committed set, committing a new set
//! before catching it up, counting only the committed set in joint mode,
//! a retiring member leaving while a committed set names it, a failover's
//! set shrunk to the live members, and a replica that checks only the
//! events a write overlaps (not the one before it).
//!
//! A failing schedule prints its seed; `CAIRN_SIM_SEED=N` replays it with a
//! trace (`CAIRN_SIM_RULES=<broken rule>` under a broken rule), and
//! `CAIRN_SIM_SCHEDULES` sets how many run.

use std::collections::{BTreeMap, BTreeSet};

use cairn_cluster::replication::{
    FailoverView, Policy, ReplicaWrite, acknowledged, acks_needed, may_promote, merge, next_set,
    promotions, replica_set, replica_write,
};
use cairn_cluster::write::{Answer, Plan, Progress, WriteView, plan};
use cairn_cluster::{Decision, NodeId, Replicas, ShardId, ShardTable};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Node slots (ids `1..=SLOTS`); the first `JOINED` are members from the
/// start, the others may join later.
const SLOTS: u64 = 6;
const JOINED: u64 = 4;
const SHARDS: u32 = 4;
const STEPS: usize = 100;
/// (replicas, min_acks), by seed: even seeds 1 ack of 2, odd 2 acks of 3.
const CONFIGS: [(usize, usize); 2] = [(2, 1), (3, 2)];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rules {
    Correct,
    /// The primary appends and acknowledges, and only then replicates.
    AckBeforeReplicas,
    /// A shard fails over to the first live member of its set even when
    /// too few of the set are live ([`may_promote`] refuses), and the new
    /// owner merges whatever copies are live.
    PromoteWithReplicaDown,
    /// After a failed write or a restart the owner writes on from its own
    /// journal, without reading back what its replicas may hold.
    NoResync,
    /// A promoted owner serves without first giving its own replicas the
    /// shard's history.
    NoCatchUp,
    /// A shard fails over again from an owner that died before it had
    /// taken the shard over (merged, caught up).
    PromotePending,
    /// A promoted owner merges the copies of `replica_set` over the
    /// current members instead of the committed set it was promoted from.
    PromoteOutsideCommitted,
    /// An owner proposes its new replica set without catching it up.
    CommitBeforeCatchUp,
    /// While its set changes an owner counts acknowledgements of the
    /// committed set only.
    NoJointAcks,
    /// A retiring member leaves while a committed set still names it as a
    /// replica.
    LeaveWhileReplica,
    // The protocol as it was stated, without the conditions the simulation
    // found it needs:
    /// A retiring member leaves once no committed allocation names it,
    /// though a promoted owner has not yet merged the copies of the set
    /// (naming it) it was promoted from.
    LeaveDuringTakeover,
    /// A restarted owner writes on while a replica change it proposed
    /// before it crashed is undecided in the log (which commits it later:
    /// `set_replicas` checks the allocation epoch only).
    ForgottenProposal,
    /// A replica change commits naming a member that left after the owner
    /// proposed it.
    CommitNamesLeftMember,
    /// A promoted owner's set is chosen from the live members only, so a
    /// crash in a small cluster shrinks it (and `min_acks` with it).
    ShrinkOnFailover,
    /// A replica checks only the events a write overlaps, not the one
    /// before it.
    NoPrevCheck,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
enum Status {
    /// Not joined yet.
    #[default]
    Outside,
    Member,
    /// Leaving gracefully: no new replica set names it.
    Retiring,
    /// Left: its disk is gone, it never comes back.
    Gone,
}

#[derive(Clone, Default)]
struct Node {
    status: Status,
    alive: bool,
    /// Steps since it died: the failure detector and the lease need one.
    dead_for: u32,
    /// Shard (= its one entity) → its events (values), seq = index + 1.
    journal: Vec<Vec<u64>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    /// Joint mode: writes count the committed set and the target.
    Joint,
    /// The target holds the history (still joint).
    CaughtUp,
    /// Proposed to the decision log (still joint until it is decided).
    Proposed,
}

/// An owner's replica change in progress: its memory, lost when it crashes.
#[derive(Clone, Copy, Debug)]
struct Change {
    owner: NodeId,
    epoch: u64,
    target: Replicas,
    stage: Stage,
}

/// A replica change in the decision log, not decided yet: it commits or is
/// superseded later, whatever becomes of the owner that proposed it.
#[derive(Clone, Copy, Debug)]
struct Proposal {
    shard: u32,
    epoch: u64,
    set: Replicas,
    by: NodeId,
    /// Chance per step that the log decides it.
    pace: f64,
}

/// A failover decision whose new owner has not taken the shard over yet.
#[derive(Clone, Copy, Debug)]
struct Takeover {
    owner: NodeId,
    old_owner: NodeId,
    /// The committed set before the failover: the copies to merge.
    old: Replicas,
    merged: bool,
    /// A merge was refused (two histories).
    refused: bool,
}

struct World {
    rng: StdRng,
    rules: Rules,
    replicas: usize,
    min_acks: usize,
    nodes: Vec<Node>,
    table: ShardTable,
    /// Shard → its acknowledged writes: (value, index in the history).
    acked: Vec<Vec<(u64, usize)>>,
    next: u64,
    /// Shards whose owner must read its replicas' copies back before it
    /// writes again (a write failed, or it restarted).
    dirty: BTreeSet<u32>,
    changes: BTreeMap<u32, Change>,
    proposals: Vec<Proposal>,
    takeovers: BTreeMap<u32, Takeover>,
    trace: Option<Vec<String>>,
    stats: Stats,
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    acked: u64,
    joint_acked: u64,
    failed: u64,
    failovers: u64,
    refused_overlaps: u64,
    truncated: u64,
    resyncs: u64,
    joint_entered: u64,
    abandoned: u64,
    caught_up: u64,
    committed: u64,
    committed_owner_down: u64,
    superseded: u64,
    refused_gone: u64,
    joins: u64,
    retires: u64,
    leaves: u64,
    stuck: u64,
    refused_merges: u64,
    barrier_waits: u64,
}

impl Stats {
    fn add(&mut self, s: &Stats) {
        self.acked += s.acked;
        self.joint_acked += s.joint_acked;
        self.failed += s.failed;
        self.failovers += s.failovers;
        self.refused_overlaps += s.refused_overlaps;
        self.truncated += s.truncated;
        self.resyncs += s.resyncs;
        self.joint_entered += s.joint_entered;
        self.abandoned += s.abandoned;
        self.caught_up += s.caught_up;
        self.committed += s.committed;
        self.committed_owner_down += s.committed_owner_down;
        self.superseded += s.superseded;
        self.refused_gone += s.refused_gone;
        self.joins += s.joins;
        self.retires += s.retires;
        self.leaves += s.leaves;
        self.stuck += s.stuck;
        self.refused_merges += s.refused_merges;
        self.barrier_waits += s.barrier_waits;
    }
}

fn ids(set: &Replicas) -> &[NodeId] {
    set.as_slice()
}

impl World {
    fn new(seed: u64, rules: Rules, trace: bool) -> World {
        let (replicas, min_acks) = CONFIGS[(seed % CONFIGS.len() as u64) as usize];
        let mut nodes = vec![
            Node {
                journal: vec![Vec::new(); SHARDS as usize],
                ..Node::default()
            };
            SLOTS as usize + 1
        ];
        for n in nodes.iter_mut().take(JOINED as usize + 1).skip(1) {
            n.status = Status::Member;
            n.alive = true;
        }
        let members: Vec<NodeId> = (1..=JOINED).map(NodeId).collect();
        let mut table = ShardTable::new(SHARDS);
        for s in 0..SHARDS {
            let owner = NodeId(1 + u64::from(s) % JOINED);
            table
                .apply(Decision::Assign {
                    shard: ShardId(s),
                    owner,
                    epoch: u64::from(s) + 1,
                    replicas: Replicas::new(replica_set(&members, owner, replicas)),
                })
                .expect("fresh table");
        }
        World {
            rng: StdRng::seed_from_u64(seed),
            rules,
            replicas,
            min_acks,
            nodes,
            table,
            acked: vec![Vec::new(); SHARDS as usize],
            next: 1,
            dirty: BTreeSet::new(),
            changes: BTreeMap::new(),
            proposals: Vec::new(),
            takeovers: BTreeMap::new(),
            trace: trace.then(Vec::new),
            stats: Stats::default(),
        }
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(line());
        }
    }

    fn alive(&self, n: NodeId) -> bool {
        self.nodes[n.0 as usize].alive
    }

    fn copy(&self, n: NodeId, shard: u32) -> &[u64] {
        &self.nodes[n.0 as usize].journal[shard as usize]
    }

    fn policies(&self) -> [Policy; 1] {
        [Policy {
            replicas: self.replicas,
            min_acks: self.min_acks,
        }]
    }

    fn need(&self, set: &Replicas) -> usize {
        acks_needed(self.min_acks, set.len())
    }

    /// Members that may be given data: joined, not retiring, not gone.
    fn data_members(&self) -> Vec<NodeId> {
        (1..=SLOTS)
            .map(NodeId)
            .filter(|n| self.nodes[n.0 as usize].status == Status::Member)
            .collect()
    }

    /// Is `n` named by a committed allocation (as owner or replica)?
    fn named(&self, n: NodeId) -> bool {
        self.table
            .iter()
            .any(|(_, a)| a.is_some_and(|a| a.owner == n || a.replicas.contains(n)))
    }

    /// A replica change of `shard` in the decision log that its owner
    /// does not know of (it proposed it before it crashed).
    fn forgotten_proposal(&self, shard: u32) -> bool {
        let known = self
            .changes
            .get(&shard)
            .filter(|c| c.stage == Stage::Proposed);
        self.proposals.iter().any(|p| {
            p.shard == shard
                && !known
                    .is_some_and(|c| c.epoch == p.epoch && c.target == p.set && c.owner == p.by)
        })
    }

    /// A replica receives `events` (the primary's whole history up to and
    /// with the write, as a gap fill would send it): appends what it lacks,
    /// refuses a write that overlaps a different tail. Returns whether it
    /// acknowledges.
    /// The primary sends `history[from..]` (with its event before, `prev`)
    /// to `replica`, which applies the product's rule
    /// ([`replica_write`]); a gap is filled from the primary's history the
    /// same way. False when the replica refuses: its copy diverged.
    fn replicate(&mut self, replica: NodeId, shard: u32, history: &[u64], from: usize) -> bool {
        let mut from = from;
        for _ in 0..3 {
            let copy = &self.nodes[replica.0 as usize].journal[shard as usize];
            let have = copy.len();
            let follows = self.rules == Rules::NoPrevCheck
                || from == 0
                || have < from
                || copy[from - 1] == history[from - 1];
            let end = have.min(history.len());
            let overlap_same = from >= end || copy[from..end] == history[from..end];
            match replica_write(have as u64, from as u64 + 1, follows, overlap_same) {
                ReplicaWrite::Gap(h) => from = h as usize,
                ReplicaWrite::Diverged => {
                    self.stats.refused_overlaps += 1;
                    return false;
                }
                ReplicaWrite::Append => {
                    let copy = &mut self.nodes[replica.0 as usize].journal[shard as usize];
                    if history.len() > copy.len() {
                        copy.extend_from_slice(&history[copy.len()..]);
                    }
                    return true;
                }
            }
        }
        false
    }

    /// The owner gives the live members of `set` its whole history of
    /// `shard` (some messages are lost), as the product's catch-up does:
    /// its newest event, then a gap's fill; a member whose copy diverged
    /// (an unacknowledged write) is reconciled with the owner's history,
    /// the truth under its allocation: truncated to what both share, then
    /// given the rest. Returns who holds it.
    fn catch_up(&mut self, owner: NodeId, shard: u32, set: &[NodeId]) -> Vec<NodeId> {
        let history = self.copy(owner, shard).to_vec();
        let mut holders = Vec::new();
        for &r in set {
            if !self.alive(r) || !self.rng.random_bool(0.8) {
                continue;
            }
            if self.replicate(r, shard, &history, history.len().saturating_sub(1)) {
                holders.push(r);
                continue;
            }
            let copy = &mut self.nodes[r.0 as usize].journal[shard as usize];
            let common = copy
                .iter()
                .zip(&history)
                .take_while(|(a, b)| a == b)
                .count();
            copy.truncate(common);
            copy.extend_from_slice(&history[common..]);
            self.stats.truncated += 1;
            holders.push(r);
        }
        holders
    }

    /// The sets a write of `shard` must reach now, with the acks each needs:
    /// the committed set, and in joint mode the target too.
    fn counted(&self, shard: u32, committed: Replicas) -> Vec<(Replicas, usize)> {
        let mut sets = vec![(committed, self.need(&committed))];
        if let Some(c) = self.changes.get(&shard)
            && self.rules != Rules::NoJointAcks
        {
            sets.push((c.target, self.need(&c.target)));
        }
        sets
    }

    fn write(&mut self, shard: u32) {
        let Some(a) = self.table.get(ShardId(shard)) else {
            return;
        };
        let owner = a.owner;
        if !self.alive(owner) || self.takeovers.contains_key(&shard) {
            return;
        }
        let target = self.changes.get(&shard).map(|c| c.target);
        let mut targets: Vec<NodeId> = ids(&a.replicas).to_vec();
        for n in target.iter().flat_map(|t| ids(t).iter()) {
            if !targets.contains(n) {
                targets.push(*n);
            }
        }
        if self.dirty.contains(&shard) && self.rules != Rules::NoResync {
            self.stats.failed += 1;
            if self.rules != Rules::ForgottenProposal && self.forgotten_proposal(shard) {
                self.stats.barrier_waits += 1;
                return;
            }
            // Read back every copy the owner may have written to (all must
            // answer); the command itself fails and is retried by its
            // client.
            if targets.iter().all(|r| self.alive(*r)) {
                let copies: Vec<Vec<u64>> = std::iter::once(owner)
                    .chain(targets.iter().copied())
                    .map(|n| self.copy(n, shard).to_vec())
                    .collect();
                if let Ok(merged) = merge(&copies) {
                    self.nodes[owner.0 as usize].journal[shard as usize] = merged;
                    let holders = self.catch_up(owner, shard, &targets);
                    let sets = self.counted(shard, a.replicas);
                    let sets: Vec<(&[NodeId], usize)> =
                        sets.iter().map(|(s, n)| (ids(s), *n)).collect();
                    if acknowledged(&sets, &holders) {
                        self.dirty.remove(&shard);
                    }
                    self.stats.resyncs += 1;
                    self.log(|| format!("shard {shard}: {owner:?} read back {targets:?}"));
                }
            }
            return;
        }
        let value = self.next;
        self.next += 1;
        let mut history = self.copy(owner, shard).to_vec();
        history.push(value);
        let pos = history.len() - 1;
        let crash_mid = self.rng.random_bool(0.1);
        if self.rules == Rules::AckBeforeReplicas {
            self.nodes[owner.0 as usize].journal[shard as usize] = history.clone();
            self.acked[shard as usize].push((value, pos));
            self.stats.acked += 1;
            if crash_mid {
                self.crash(owner);
                return;
            }
        }
        // The product's primary write: what to send, then each answer.
        let counted = self.counted(shard, a.replicas);
        let sets: Vec<(Vec<NodeId>, usize)> =
            counted.iter().map(|(s, n)| (ids(s).to_vec(), *n)).collect();
        let alive: Vec<NodeId> = targets.iter().copied().filter(|r| self.alive(*r)).collect();
        let view = WriteView {
            sets: &sets,
            live: &|r| alive.contains(&r),
            dirty: false,
            have: pos as u64,
            first: Some(pos as u64 + 1),
            replicated: true,
            lease_sent: std::time::Duration::ZERO,
        };
        let (to, mut progress) = match plan(&view) {
            Ok(Plan::Send(to, p)) => (to, Some(p)),
            // No replica (a one-member cluster): written locally.
            Ok(Plan::Local) => (Vec::new(), None),
            // Too few live replicas: refused before anything is written.
            Err(_) => return,
            Ok(Plan::Resync) => unreachable!("not dirty"),
        };
        let mut acks = Vec::new();
        for r in to {
            let held = self.rng.random_bool(0.8) && self.replicate(r, shard, &history, pos);
            if let Some(p) = progress.as_mut() {
                p.answer(r, if held { Answer::Held } else { Answer::Unknown });
            }
            if held {
                acks.push(r);
            }
        }
        if self.rules == Rules::AckBeforeReplicas {
            return;
        }
        if crash_mid {
            self.log(|| {
                format!("shard {shard}: write {value} reached {acks:?}, owner {owner:?} crashed")
            });
            self.crash(owner);
            self.stats.failed += 1;
            return;
        }
        if progress.is_none_or(|p| p.progress() == Progress::Acknowledged) {
            self.nodes[owner.0 as usize].journal[shard as usize] = history;
            self.acked[shard as usize].push((value, pos));
            self.stats.acked += 1;
            if target.is_some() {
                self.stats.joint_acked += 1;
            }
            self.log(|| {
                format!("shard {shard}: write {value} @{pos} acked by {acks:?} (sets {sets:?})")
            });
        } else {
            // Some replica may hold it: read back before the next write.
            self.dirty.insert(shard);
            self.stats.failed += 1;
            self.log(|| format!("shard {shard}: write {value} failed, held by {acks:?}"));
        }
    }

    /// One step of the owner's replica change of `shard`.
    fn change(&mut self, shard: u32) {
        let Some(a) = self.table.get(ShardId(shard)) else {
            return;
        };
        let owner = a.owner;
        if !self.alive(owner) || self.takeovers.contains_key(&shard) {
            return;
        }
        if self.rules != Rules::ForgottenProposal && self.forgotten_proposal(shard) {
            return;
        }
        let members = self.data_members();
        let live: Vec<NodeId> = members.iter().copied().filter(|n| self.alive(*n)).collect();
        // The product's rule: the ring of live members, but a member that
        // is merely down (still a member) keeps its place when no other
        // can take it.
        let departed = |n: NodeId| !members.contains(&n);
        let desired = next_set(
            a.replicas.as_slice(),
            &live,
            &departed,
            owner,
            self.replicas,
        )
        .unwrap_or(a.replicas);
        let Some(mut c) = self.changes.get(&shard).copied() else {
            if desired != a.replicas {
                self.changes.insert(
                    shard,
                    Change {
                        owner,
                        epoch: a.epoch,
                        target: desired,
                        stage: Stage::Joint,
                    },
                );
                self.stats.joint_entered += 1;
                self.log(|| {
                    format!(
                        "shard {shard}: {owner:?} joint {:?} -> {desired:?}",
                        a.replicas
                    )
                });
            }
            return;
        };
        if c.stage != Stage::Proposed && desired != c.target {
            self.changes.remove(&shard);
            self.stats.abandoned += 1;
            self.log(|| format!("shard {shard}: {owner:?} abandons -> {:?}", c.target));
            return;
        }
        match c.stage {
            Stage::Joint if self.rules == Rules::CommitBeforeCatchUp => c.stage = Stage::CaughtUp,
            Stage::Joint => {
                let holders = self.catch_up(owner, shard, ids(&c.target));
                if holders.len() >= self.need(&c.target) {
                    c.stage = Stage::CaughtUp;
                    self.stats.caught_up += 1;
                }
                self.log(|| {
                    format!(
                        "shard {shard}: {owner:?} caught up {holders:?} of {:?}",
                        c.target
                    )
                });
            }
            Stage::CaughtUp => {
                c.stage = Stage::Proposed;
                self.proposals.push(Proposal {
                    shard,
                    epoch: c.epoch,
                    set: c.target,
                    by: owner,
                    pace: if self.rng.random_bool(0.3) { 0.03 } else { 0.5 },
                });
                self.log(|| {
                    format!(
                        "shard {shard}: {owner:?} proposes {:?} @e{}",
                        c.target, c.epoch
                    )
                });
            }
            Stage::Proposed => {}
        }
        self.changes.insert(shard, c);
    }

    /// The decision log decides some of the proposals in flight.
    fn decide(&mut self, all: bool) {
        let mut i = 0;
        while i < self.proposals.len() {
            if !all && !self.rng.random_bool(self.proposals[i].pace) {
                i += 1;
                continue;
            }
            let p = self.proposals.remove(i);
            let gone = ids(&p.set)
                .iter()
                .any(|n| self.nodes[n.0 as usize].status == Status::Gone);
            let result = if self.rules != Rules::CommitNamesLeftMember && gone {
                self.stats.refused_gone += 1;
                Err("names a member that left".to_string())
            } else {
                self.table
                    .set_replicas(ShardId(p.shard), p.epoch, p.set)
                    .map_err(|e| e.to_string())
            };
            match &result {
                Ok(()) => {
                    self.stats.committed += 1;
                    if !self.alive(p.by) {
                        self.stats.committed_owner_down += 1;
                    }
                }
                Err(_) => self.stats.superseded += 1,
            }
            self.log(|| {
                format!(
                    "shard {}: proposal {:?} @e{}: {result:?}",
                    p.shard, p.set, p.epoch
                )
            });
            if let Some(c) = self.changes.get(&p.shard)
                && c.stage == Stage::Proposed
                && c.epoch == p.epoch
                && c.target == p.set
                && c.owner == p.by
            {
                // Decided: the owner leaves joint mode.
                self.changes.remove(&p.shard);
            }
        }
    }

    /// A node comes back: the shards it still owns are read back from
    /// their replicas before it writes to them.
    fn restart(&mut self, n: NodeId) {
        self.nodes[n.0 as usize].alive = true;
        for (shard, a) in self.table.iter() {
            if a.is_some_and(|a| a.owner == n) {
                self.dirty.insert(shard.0);
            }
        }
        self.log(|| format!("{n:?} restarts"));
    }

    fn crash(&mut self, n: NodeId) {
        let node = &mut self.nodes[n.0 as usize];
        node.alive = false;
        node.dead_for = 0;
        self.changes.retain(|_, c| c.owner != n);
        self.log(|| format!("{n:?} crashes"));
    }

    /// A random node that `ok` accepts.
    fn pick(&mut self, ok: impl Fn(&Node) -> bool) -> Option<NodeId> {
        let ids: Vec<NodeId> = (1..=SLOTS)
            .map(NodeId)
            .filter(|n| ok(&self.nodes[n.0 as usize]))
            .collect();
        (!ids.is_empty()).then(|| ids[self.rng.random_range(0..ids.len())])
    }

    /// A member joins, one retires, or a retiring one leaves.
    fn membership(&mut self) {
        match self.rng.random_range(0..3) {
            0 => {
                let Some(n) = self.pick(|n| n.status == Status::Outside) else {
                    return;
                };
                let node = &mut self.nodes[n.0 as usize];
                node.status = Status::Member;
                node.alive = true;
                self.stats.joins += 1;
                self.log(|| format!("{n:?} joins"));
            }
            1 => {
                // Enough stay for a replica set.
                if self.data_members().len() <= 3 {
                    return;
                }
                let Some(n) = self.pick(|n| n.status == Status::Member) else {
                    return;
                };
                self.nodes[n.0 as usize].status = Status::Retiring;
                self.stats.retires += 1;
                self.log(|| format!("{n:?} retires"));
            }
            _ => {
                let Some(n) = self.pick(|n| n.status == Status::Retiring) else {
                    return;
                };
                let merging = self
                    .takeovers
                    .values()
                    .any(|t| !t.merged && t.old.contains(n));
                let may = match self.rules {
                    Rules::LeaveWhileReplica => self.table.owned_by(n) == 0 && !merging,
                    Rules::LeaveDuringTakeover => !self.named(n),
                    _ => !self.named(n) && !merging,
                };
                if !may {
                    return;
                }
                let node = &mut self.nodes[n.0 as usize];
                node.status = Status::Gone;
                node.alive = false;
                for j in &mut node.journal {
                    j.clear();
                }
                self.changes.retain(|_, c| c.owner != n);
                self.stats.leaves += 1;
                self.log(|| format!("{n:?} leaves"));
            }
        }
    }

    fn failover(&mut self) -> Result<(), String> {
        // A member that left is no member any more: the view does not
        // report it down (so a set that still names it counts it live).
        let down: BTreeSet<NodeId> = (1..=SLOTS)
            .map(NodeId)
            .filter(|n| {
                let node = &self.nodes[n.0 as usize];
                matches!(node.status, Status::Member | Status::Retiring)
                    && !node.alive
                    && node.dead_for >= 1
            })
            .collect();
        let unreachable = BTreeSet::new();
        let lease_expired = |n: NodeId| down.contains(&n);
        let rules = self.rules;
        let takeovers = &self.takeovers;
        let ready = |s: ShardId, _epoch: u64| {
            rules == Rules::PromotePending || !takeovers.contains_key(&s.0)
        };
        let members = self.data_members();
        let policies = self.policies();
        let mut decisions = promotions(&FailoverView {
            table: &self.table,
            members: &members,
            replicas: self.replicas,
            policies: &policies,
            down: &down,
            unreachable: &unreachable,
            lease_expired: &lease_expired,
            ready: &ready,
        });
        if self.rules == Rules::PromoteWithReplicaDown {
            // The first live member of the set, however few are live.
            let mut epoch = self.table.epoch();
            decisions.clear();
            for (shard, a) in self.table.iter() {
                let Some(a) = a else { continue };
                if !down.contains(&a.owner) || self.takeovers.contains_key(&shard.0) {
                    continue;
                }
                let live = |n: &NodeId| !down.contains(n) && self.alive(*n);
                let Some(to) = ids(&a.replicas).iter().copied().find(live) else {
                    continue;
                };
                let candidates: Vec<NodeId> = members
                    .iter()
                    .copied()
                    .filter(|n| live(n) && *n != a.owner)
                    .collect();
                epoch += 1;
                decisions.push(Decision::Assign {
                    shard,
                    owner: to,
                    epoch,
                    replicas: Replicas::new(replica_set(&candidates, to, self.replicas)),
                });
            }
        }
        if self.rules == Rules::ShrinkOnFailover {
            // The promoted owner's set from the live members alone.
            for d in &mut decisions {
                if let Decision::Assign {
                    owner, replicas, ..
                } = d
                {
                    let live: Vec<NodeId> = members
                        .iter()
                        .copied()
                        .filter(|n| !down.contains(n))
                        .collect();
                    *replicas = Replicas::new(replica_set(&live, *owner, self.replicas));
                }
            }
        }
        for d in decisions {
            let Decision::Assign {
                shard,
                owner,
                replicas,
                ..
            } = d
            else {
                continue;
            };
            let old = self.table.get(shard).ok_or("unowned")?;
            // `replicas` is a promise: a crash does not shrink the set
            // below what the members that may hold the shard allow (live
            // members, and the old set and owner while they have not left).
            let may_hold: BTreeSet<NodeId> = ids(&old.replicas)
                .iter()
                .copied()
                .chain([old.owner])
                .chain(members.iter().copied().filter(|n| !down.contains(n)))
                .filter(|n| *n != owner && members.contains(n))
                .collect();
            if replicas.len() < self.replicas.min(may_hold.len()) {
                return Err(format!(
                    "failover of shard {} to {owner:?} gave it the set {replicas:?}; {may_hold:?} may hold it",
                    shard.0
                ));
            }
            self.table.apply(d).map_err(|e| e.to_string())?;
            self.takeovers.insert(
                shard.0,
                Takeover {
                    owner,
                    old_owner: old.owner,
                    old: old.replicas,
                    merged: false,
                    refused: false,
                },
            );
            self.dirty.remove(&shard.0);
            self.stats.failovers += 1;
            self.log(|| format!("failover {d:?} from {old:?}"));
        }
        Ok(())
    }

    /// Promoted owners take their shards over: merge the copies of the
    /// live members of the set they were promoted from (while enough of it
    /// is live), then give their own committed set the history; only then
    /// is the shard served (and may fail over again).
    fn take_over(&mut self, all: bool) -> Result<(), String> {
        let pending: Vec<(u32, Takeover)> = self.takeovers.iter().map(|(s, t)| (*s, *t)).collect();
        for (shard, mut t) in pending {
            if !self.alive(t.owner) || (!all && !self.rng.random_bool(0.3)) {
                continue;
            }
            if !t.merged {
                let from = match self.rules {
                    Rules::PromoteOutsideCommitted => Replicas::new(replica_set(
                        &self.data_members(),
                        t.old_owner,
                        self.replicas,
                    )),
                    _ => t.old,
                };
                let live: Vec<NodeId> = ids(&from)
                    .iter()
                    .copied()
                    .filter(|n| self.alive(*n))
                    .collect();
                let policies = self.policies();
                if self.rules != Rules::PromoteWithReplicaDown
                    && !may_promote(ids(&from), &policies, &|n| live.contains(&n))
                {
                    continue;
                }
                let copies: Vec<Vec<u64>> =
                    live.iter().map(|n| self.copy(*n, shard).to_vec()).collect();
                let merged = match merge(&copies) {
                    Ok(m) => m,
                    Err(e) => {
                        // Refused: the takeover cannot finish. Two copies
                        // each with acknowledged writes past the point they
                        // differ would be two histories of acknowledged data.
                        let acked = &self.acked[shard as usize];
                        let has_acked =
                            |c: &[u64]| c.iter().any(|v| acked.iter().any(|(w, _)| w == v));
                        let two = copies.iter().enumerate().any(|(i, a)| {
                            copies[i + 1..].iter().any(|b| {
                                let d = a.iter().zip(b).take_while(|(x, y)| x == y).count();
                                d < a.len().min(b.len()) && has_acked(&a[d..]) && has_acked(&b[d..])
                            })
                        });
                        if two {
                            return Err(format!(
                                "shard {shard}: {e}, both with acknowledged writes"
                            ));
                        }
                        if !t.refused {
                            t.refused = true;
                            self.takeovers.insert(shard, t);
                            self.stats.refused_merges += 1;
                            self.log(|| {
                                format!("shard {shard}: {:?} cannot merge {live:?}: {e}", t.owner)
                            });
                        }
                        continue;
                    }
                };
                self.nodes[t.owner.0 as usize].journal[shard as usize] = merged;
                t.merged = true;
                self.takeovers.insert(shard, t);
                self.log(|| format!("shard {shard}: {:?} merged {live:?}", t.owner));
            }
            let set = self
                .table
                .get(ShardId(shard))
                .map(|a| a.replicas)
                .unwrap_or_default();
            let done = self.rules == Rules::NoCatchUp || {
                let holders = self.catch_up(t.owner, shard, ids(&set));
                self.log(|| {
                    format!(
                        "shard {shard}: {:?} caught up {holders:?} of {set:?}",
                        t.owner
                    )
                });
                holders.len() >= self.need(&set)
            };
            if done {
                self.takeovers.remove(&shard);
                self.dirty.remove(&shard);
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        let policies = self.policies();
        for s in 0..SHARDS {
            let Some(a) = self.table.get(ShardId(s)) else {
                continue;
            };
            let owner = a.owner;
            let acked = &self.acked[s as usize];
            let takeover = self.takeovers.get(&s);
            if takeover.is_none_or(|t| t.merged) {
                let main = self.copy(owner, s);
                // Every acknowledged write is in the owner's history, where
                // it was acknowledged.
                for (v, p) in acked {
                    if main.get(*p) != Some(v) {
                        return Err(format!(
                            "shard {s}: acknowledged write {v} lost (owner {owner:?})"
                        ));
                    }
                }
                // One history: every copy on a live node agrees with the
                // owner's except perhaps for an unacknowledged tail.
                for (i, n) in self.nodes.iter().enumerate().skip(1) {
                    if !n.alive {
                        continue;
                    }
                    let copy = &n.journal[s as usize];
                    let k = copy.len().min(main.len());
                    if let Some(d) = (0..k).find(|j| copy[*j] != main[*j])
                        && copy[d..].iter().any(|v| acked.iter().any(|(w, _)| w == v))
                    {
                        return Err(format!(
                            "shard {s}: node {i} holds another history with acknowledged writes"
                        ));
                    }
                }
            }
            // A failover at this step could not lose an acknowledged write:
            // whichever members of the set a failover finds live (any group
            // `may_promote` accepts), one of them holds it. The set is the
            // committed one, or while a takeover has not merged yet, the one
            // it merges from (with the promoted owner among the live: it
            // merges only while it is up).
            let (set, with) = match takeover {
                None => (a.replicas, None),
                Some(t) if !t.merged => (t.old, Some(t.owner)),
                Some(_) => continue,
            };
            let members = ids(&set);
            let quorums: Vec<u32> = (0u32..1 << members.len())
                .filter(|m| {
                    with.is_none_or(|o| {
                        members
                            .iter()
                            .position(|x| *x == o)
                            .is_none_or(|i| m & (1 << i) != 0)
                    })
                })
                .filter(|m| {
                    may_promote(members, &policies, &|n| {
                        members
                            .iter()
                            .position(|x| *x == n)
                            .is_some_and(|i| m & (1 << i) != 0)
                    })
                })
                .collect();
            if quorums.is_empty() {
                continue;
            }
            for (v, p) in acked {
                let holders = members
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| self.copy(**n, s).get(*p) == Some(v))
                    .fold(0u32, |m, (i, _)| m | 1 << i);
                if let Some(q) = quorums.iter().find(|q| *q & holders == 0) {
                    let live: Vec<NodeId> = members
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| q & (1 << i) != 0)
                        .map(|(_, n)| *n)
                        .collect();
                    return Err(format!(
                        "shard {s}: acknowledged write {v} is on no member of {live:?}, a failover from set {set:?} may find just those live"
                    ));
                }
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        for n in self.nodes.iter_mut().skip(1) {
            if !n.alive {
                n.dead_for += 1;
            }
        }
        match self.rng.random_range(0..10) {
            0 => {
                // At least two nodes stay up.
                if self.nodes.iter().filter(|n| n.alive).count() > 2
                    && let Some(n) = self.pick(|n| n.alive)
                {
                    self.crash(n);
                }
            }
            1 => {
                // A restart may come before the failure detector declares
                // the node down (then no failover happens).
                let back = |n: &Node| {
                    matches!(n.status, Status::Member | Status::Retiring)
                        && !n.alive
                        && n.dead_for >= 1
                };
                if let Some(n) = self.pick(back) {
                    self.restart(n);
                }
            }
            2 | 3 => self.membership(),
            _ => {
                let s = self.rng.random_range(0..SHARDS);
                self.write(s);
            }
        }
        // Owners work on their replica changes in the background.
        for s in 0..SHARDS {
            if self.rng.random_bool(0.3) {
                self.change(s);
            }
        }
        self.decide(false);
        self.failover()?;
        self.take_over(false)?;
        self.check()
    }
}

fn run(seed: u64, rules: Rules) -> Result<Stats, String> {
    run_traced(seed, rules, false).0
}

/// One schedule; with `trace`, also what happened.
fn run_traced(seed: u64, rules: Rules, trace: bool) -> (Result<Stats, String>, Vec<String>) {
    let mut w = World::new(seed, rules, trace);
    let result = (|| {
        for step in 0..STEPS {
            w.step()
                .map_err(|e| format!("seed {seed}, step {step}: {e}"))?;
        }
        // Heal: everyone back, the log decides, takeovers finish.
        for n in 1..=SLOTS {
            let node = &w.nodes[n as usize];
            if matches!(node.status, Status::Member | Status::Retiring) && !node.alive {
                w.restart(NodeId(n));
            }
        }
        for _ in 0..3 {
            w.decide(true);
            w.failover()
                .and_then(|()| w.take_over(true))
                .and_then(|()| w.check())
                .map_err(|e| format!("seed {seed}, healed: {e}"))?;
        }
        w.stats.stuck = w.takeovers.len() as u64;
        Ok(w.stats)
    })();
    (result, w.trace.take().unwrap_or_default())
}

fn schedules() -> u64 {
    std::env::var("CAIRN_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

const BROKEN: [Rules; 14] = [
    Rules::AckBeforeReplicas,
    Rules::PromoteWithReplicaDown,
    Rules::NoResync,
    Rules::NoCatchUp,
    Rules::PromotePending,
    Rules::PromoteOutsideCommitted,
    Rules::CommitBeforeCatchUp,
    Rules::NoJointAcks,
    Rules::LeaveWhileReplica,
    Rules::LeaveDuringTakeover,
    Rules::ForgottenProposal,
    Rules::CommitNamesLeftMember,
    Rules::ShrinkOnFailover,
    Rules::NoPrevCheck,
];

/// `CAIRN_SIM_RULES=<name>` replays a seed under one of the broken rules.
fn rules_from_env() -> Rules {
    let name = std::env::var("CAIRN_SIM_RULES").unwrap_or_default();
    BROKEN
        .into_iter()
        .find(|r| format!("{r:?}") == name)
        .unwrap_or(Rules::Correct)
}

#[test]
fn replication_and_failover_keep_every_acknowledged_write_and_one_history() {
    if let Some(seed) = std::env::var("CAIRN_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let rules = rules_from_env();
        let (result, trace) = run_traced(seed, rules, true);
        for line in trace {
            eprintln!("{line}");
        }
        match result {
            Ok(s) => eprintln!("seed {seed} under {rules:?}: {s:?}"),
            Err(e) => panic!("{rules:?}: {e}"),
        }
        return;
    }
    let mut total = Stats::default();
    for seed in 0..schedules() {
        let s = run(seed, Rules::Correct).unwrap_or_else(|e| panic!("{e}"));
        total.add(&s);
    }
    eprintln!("{total:?}");
    // The schedules did exercise what they check.
    assert!(total.acked > 100_000 && total.failovers > 1_000 && total.resyncs > 1_000);
    assert!(total.joint_acked > 1_000 && total.committed > 1_000);
    assert!(total.superseded > 0 && total.committed_owner_down > 0 && total.refused_gone > 0);
    assert!(total.barrier_waits > 0 && total.truncated > 0);
    assert!(total.joins > 1_000 && total.leaves > 1_000);
}

#[test]
fn broken_rules_are_caught() {
    for rules in BROKEN {
        // The rarest ones need more schedules to show.
        let seeds = match rules {
            Rules::ForgottenProposal | Rules::CommitNamesLeftMember => 20_000,
            _ => 2_000,
        };
        let caught: Vec<u64> = (0..seeds)
            .filter(|seed| run(*seed, rules).is_err())
            .collect();
        eprintln!(
            "{rules:?}: caught in {} of {seeds} schedules, first {:?}",
            caught.len(),
            caught.first()
        );
        assert!(!caught.is_empty(), "{rules:?} was never caught");
    }
}
