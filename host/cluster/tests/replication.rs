//! The seeded simulation of replication and failover: 4 nodes, one entity
//! per shard, writes with `min_acks` 1 over 2 replicas, lost messages,
//! primaries crashing in the middle of a write, restarts, and failover by
//! the rules of `cairn_cluster::replication` (promote only when every
//! replica is live, merge every copy first). Only durable state is
//! modelled: a crash loses nothing that was appended.
//!
//! Checked after every step: the owner's history holds every acknowledged
//! write, in order, and every other live node's copy agrees with it except
//! perhaps for an unacknowledged tail (which the node truncates when the
//! owner next writes to it; the model leaves it in place, and nothing is
//! served from such a tail: here a replica refuses writes that overlap
//! it, a merge refuses it). A failing schedule prints its seed;
//! `CAIRN_SIM_SEED=N` replays it, `CAIRN_SIM_SCHEDULES` sets how many run.
//! Five broken rules must be caught: acknowledging before the replicas
//! hold the write, promoting while a replica is down, an owner
//! writing on after a failed write or a restart without reading back its
//! replicas' copies (a replica may hold the unacknowledged write), and a
//! promoted owner serving before its own replicas hold the history, and a
//! second failover from an owner that died before it had merged.

use std::collections::{BTreeSet, HashMap};

use cairn_cluster::replication::{
    FailoverView, Policy, acks_needed, merge, promotions, replica_set,
};
use cairn_cluster::{Decision, NodeId, Replicas, ShardId, ShardTable};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const NODES: u64 = 4;
const SHARDS: u32 = 4;
const REPLICAS: usize = 2;
const MIN_ACKS: usize = 1;
const STEPS: usize = 80;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rules {
    Correct,
    /// The primary appends and acknowledges, and only then replicates.
    AckBeforeReplicas,
    /// A shard fails over to a live replica even if another one is down.
    PromoteWithReplicaDown,
    /// After a failed write or a restart the owner writes on from its own
    /// journal, without reading back what its replicas may hold.
    NoResync,
    /// A promoted owner serves without first giving its own replicas the
    /// shard's history.
    NoCatchUp,
    /// A shard fails over again from an owner that died before it had
    /// merged the history.
    PromotePending,
}

#[derive(Default, Clone)]
struct Node {
    alive: bool,
    /// Steps since it died: the failure detector and the lease need one.
    dead_for: u32,
    /// Entity (= shard) → its events (values), seq = index + 1.
    journal: HashMap<u32, Vec<u64>>,
}

struct World {
    rng: StdRng,
    rules: Rules,
    nodes: Vec<Node>,
    table: ShardTable,
    acked: HashMap<u32, Vec<u64>>,
    next: u64,
    /// Shards whose owner must read its replicas' copies back before it
    /// writes again (a write failed, or it restarted).
    dirty: BTreeSet<u32>,
    /// Shards promoted whose new owner has not merged the old owner's
    /// replicas' copies yet (it needs every one of them): shard → old owner.
    pending: HashMap<u32, NodeId>,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    acked: u64,
    failed: u64,
    failovers: u64,
    refused_overlaps: u64,
    resyncs: u64,
}

fn members() -> Vec<NodeId> {
    (1..=NODES).map(NodeId).collect()
}

impl World {
    fn new(seed: u64, rules: Rules) -> World {
        let mut table = ShardTable::new(SHARDS);
        for s in 0..SHARDS {
            let owner = NodeId(1 + u64::from(s) % NODES);
            table
                .apply(Decision::Assign {
                    shard: ShardId(s),
                    owner,
                    epoch: u64::from(s) + 1,
                    replicas: Replicas::new(replica_set(&members(), owner, REPLICAS)),
                })
                .expect("fresh table");
        }
        World {
            rng: StdRng::seed_from_u64(seed),
            rules,
            nodes: vec![
                Node {
                    alive: true,
                    ..Node::default()
                };
                NODES as usize + 1
            ],
            table,
            acked: HashMap::new(),
            next: 1,
            dirty: BTreeSet::new(),
            pending: HashMap::new(),
            stats: Stats::default(),
        }
    }

    fn node(&mut self, n: NodeId) -> &mut Node {
        &mut self.nodes[n.0 as usize]
    }

    /// A replica receives `events` (the primary's whole history up to and
    /// with the write, as a gap fill would send it): appends what it lacks.
    /// Returns whether it acknowledges.
    fn replicate(&mut self, replica: NodeId, shard: u32, events: &[u64]) -> bool {
        let copy = self.node(replica).journal.entry(shard).or_default();
        let common = copy.len().min(events.len());
        if copy[..common] != events[..common] {
            self.stats.refused_overlaps += 1;
            return false;
        }
        if events.len() > copy.len() {
            copy.extend_from_slice(&events[copy.len()..]);
        }
        true
    }

    fn write(&mut self, shard: u32) {
        let Some(owner) = self.table.get(ShardId(shard)).map(|a| a.owner) else {
            return;
        };
        if !self.nodes[owner.0 as usize].alive || self.pending.contains_key(&shard) {
            return;
        }
        if self.dirty.contains(&shard) && self.rules != Rules::NoResync {
            // Read back every replica's copy first (all must answer); the
            // command itself fails and is retried by its client.
            let set = replica_set(&members(), owner, REPLICAS);
            if set.iter().all(|r| self.nodes[r.0 as usize].alive) {
                let copies: Vec<Vec<u64>> = std::iter::once(owner)
                    .chain(set)
                    .map(|n| {
                        self.nodes[n.0 as usize]
                            .journal
                            .get(&shard)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect();
                if let Ok(merged) = merge(&copies) {
                    self.node(owner).journal.insert(shard, merged.clone());
                    if self.catch_up(owner, shard, &merged) >= acks_needed(MIN_ACKS, REPLICAS) {
                        self.dirty.remove(&shard);
                    }
                    self.stats.resyncs += 1;
                }
            }
            self.stats.failed += 1;
            return;
        }
        let value = self.next;
        self.next += 1;
        let mut history = self.node(owner).journal.entry(shard).or_default().clone();
        history.push(value);
        let set = replica_set(&members(), owner, REPLICAS);
        let need = acks_needed(MIN_ACKS, set.len());
        let crash_mid = self.rng.random_bool(0.1);
        if self.rules == Rules::AckBeforeReplicas {
            self.node(owner).journal.insert(shard, history.clone());
            self.acked.entry(shard).or_default().push(value);
            self.stats.acked += 1;
            if crash_mid {
                self.crash(owner);
                return;
            }
        }
        let mut acks = 0;
        for r in set {
            if self.nodes[r.0 as usize].alive
                && self.rng.random_bool(0.8)
                && self.replicate(r, shard, &history)
            {
                acks += 1;
            }
        }
        if self.rules == Rules::AckBeforeReplicas {
            return;
        }
        if crash_mid {
            self.crash(owner);
            self.stats.failed += 1;
            return;
        }
        if acks >= need {
            self.node(owner).journal.insert(shard, history);
            self.acked.entry(shard).or_default().push(value);
            self.stats.acked += 1;
        } else {
            // Some replica may hold it: read back before the next write.
            self.dirty.insert(shard);
            self.stats.failed += 1;
        }
    }

    /// Sends an owner's whole history of `shard` to its live replicas;
    /// returns how many hold it.
    fn catch_up(&mut self, owner: NodeId, shard: u32, history: &[u64]) -> usize {
        let mut n = 0;
        for r in replica_set(&members(), owner, REPLICAS) {
            if self.nodes[r.0 as usize].alive && self.replicate(r, shard, history) {
                n += 1;
            }
        }
        n
    }

    /// A node comes back: the shards it still owns are read back from
    /// their replicas before it writes to them.
    fn restart(&mut self, n: NodeId) {
        self.node(n).alive = true;
        for (shard, a) in self.table.iter() {
            if a.is_some_and(|a| a.owner == n) {
                self.dirty.insert(shard.0);
            }
        }
    }

    fn crash(&mut self, n: NodeId) {
        let node = self.node(n);
        node.alive = false;
        node.dead_for = 0;
    }

    fn failover(&mut self) -> Result<(), String> {
        let down: BTreeSet<NodeId> = (1..=NODES)
            .map(NodeId)
            .filter(|n| !self.nodes[n.0 as usize].alive && self.nodes[n.0 as usize].dead_for >= 1)
            .collect();
        let unreachable = BTreeSet::new();
        let lease_expired = |n: NodeId| down.contains(&n);
        let pending = self.pending.clone();
        let rules = self.rules;
        let ready =
            |s: ShardId, _epoch: u64| rules == Rules::PromotePending || !pending.contains_key(&s.0);
        let members = members();
        let mut decisions = promotions(&FailoverView {
            table: &self.table,
            members: &members,
            replicas: REPLICAS,
            policies: &[Policy {
                replicas: REPLICAS,
                min_acks: MIN_ACKS,
            }],
            down: &down,
            unreachable: &unreachable,
            lease_expired: &lease_expired,
            ready: &ready,
        });
        if self.rules == Rules::PromoteWithReplicaDown {
            // Promote to any live replica, merging only the live copies.
            let mut epoch = self.table.epoch();
            decisions.clear();
            for (shard, a) in self.table.iter() {
                let Some(a) = a else { continue };
                if !down.contains(&a.owner) {
                    continue;
                }
                let live: Vec<NodeId> = replica_set(&members, a.owner, REPLICAS)
                    .into_iter()
                    .filter(|r| !down.contains(r) && self.nodes[r.0 as usize].alive)
                    .collect();
                if let Some(to) = live.first() {
                    epoch += 1;
                    decisions.push(Decision::Assign {
                        shard,
                        owner: *to,
                        epoch,
                        replicas: Replicas::new(replica_set(&members, *to, REPLICAS)),
                    });
                }
            }
        }
        for d in decisions {
            let Decision::Assign { shard, .. } = d else {
                continue;
            };
            let old = self.table.get(shard).map(|a| a.owner).ok_or("unowned")?;
            self.table.apply(d).map_err(|e| e.to_string())?;
            self.pending.insert(shard.0, old);
            self.stats.failovers += 1;
        }
        self.complete_promotions()
    }

    /// A promoted owner merges every copy of the old owner's replicas (all
    /// must answer, a dead one is waited for, unless the rules are broken),
    /// then gives its own replicas the history.
    fn complete_promotions(&mut self) -> Result<(), String> {
        let members = members();
        let pending: Vec<(u32, NodeId)> = self.pending.iter().map(|(s, o)| (*s, *o)).collect();
        for (shard, old) in pending {
            let Some(owner) = self.table.get(ShardId(shard)).map(|a| a.owner) else {
                continue;
            };
            let set = replica_set(&members, old, REPLICAS);
            let all = set.iter().all(|r| self.nodes[r.0 as usize].alive);
            if !all && self.rules != Rules::PromoteWithReplicaDown {
                continue;
            }
            let copies: Vec<Vec<u64>> = set
                .into_iter()
                .filter(|r| self.nodes[r.0 as usize].alive)
                .map(|r| {
                    self.nodes[r.0 as usize]
                        .journal
                        .get(&shard)
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            let merged = merge(&copies).map_err(|e| format!("shard {shard}: {e}"))?;
            self.node(owner).journal.insert(shard, merged.clone());
            self.pending.remove(&shard);
            // Its own replicas are others than the old owner's: they get the
            // whole history before the shard counts as served.
            if self.rules != Rules::NoCatchUp
                && self.catch_up(owner, shard, &merged) < acks_needed(MIN_ACKS, REPLICAS)
            {
                self.dirty.insert(shard);
            } else {
                self.dirty.remove(&shard);
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        for s in 0..SHARDS {
            let Some(owner) = self.table.get(ShardId(s)).map(|a| a.owner) else {
                continue;
            };
            if self.pending.contains_key(&s) {
                continue;
            }
            let empty = Vec::new();
            let main = self.nodes[owner.0 as usize]
                .journal
                .get(&s)
                .unwrap_or(&empty);
            // Every acknowledged write is in the owner's history, in order.
            let acked = self.acked.get(&s).unwrap_or(&empty);
            let mut it = main.iter();
            for v in acked {
                if !it.any(|x| x == v) {
                    return Err(format!(
                        "shard {s}: acknowledged write {v} lost (owner {owner})"
                    ));
                }
            }
            // One history: every copy agrees with the owner's where both
            // have events, on live nodes (a dead one may hold an old prefix
            // of a superseded tail only if the rules were broken, and it
            // is checked when it comes back).
            for (i, n) in self.nodes.iter().enumerate().skip(1) {
                if !n.alive {
                    continue;
                }
                let copy = n.journal.get(&s).unwrap_or(&empty);
                let k = copy.len().min(main.len());
                // A copy may end in an unacknowledged tail the owner's
                // history does not have (a write that failed, then the
                // shard moved on): that tail is what a returning node
                // truncates. An acknowledged write in it is a second history.
                if let Some(d) = (0..k).find(|j| copy[*j] != main[*j])
                    && copy[d..].iter().any(|v| acked.contains(v))
                {
                    return Err(format!(
                        "shard {s}: node {i} holds another history with acknowledged writes"
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
                let n = NodeId(self.rng.random_range(1..=NODES));
                if self.nodes.iter().skip(1).filter(|n| n.alive).count() > 2 {
                    self.crash(n);
                }
            }
            1 => {
                let n = NodeId(self.rng.random_range(1..=NODES));
                if !self.nodes[n.0 as usize].alive && self.nodes[n.0 as usize].dead_for >= 2 {
                    self.restart(n);
                }
            }
            _ => {
                let s = self.rng.random_range(0..SHARDS);
                self.write(s);
            }
        }
        self.failover()?;
        self.check()
    }
}

fn run(seed: u64, rules: Rules) -> Result<Stats, String> {
    let mut w = World::new(seed, rules);
    for step in 0..STEPS {
        w.step()
            .map_err(|e| format!("seed {seed}, step {step}: {e}"))?;
    }
    // Heal: everyone back, a last round of failovers and checks.
    for n in 1..=NODES {
        if !w.nodes[n as usize].alive {
            w.restart(NodeId(n));
        }
    }
    w.failover()
        .map_err(|e| format!("seed {seed}, healed: {e}"))?;
    w.check().map_err(|e| format!("seed {seed}, healed: {e}"))?;
    Ok(w.stats)
}

fn schedules() -> u64 {
    std::env::var("CAIRN_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

#[test]
fn replication_and_failover_keep_every_acknowledged_write_and_one_history() {
    if let Some(seed) = std::env::var("CAIRN_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed, Rules::Correct).unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let mut total = Stats::default();
    for seed in 0..schedules() {
        let s = run(seed, Rules::Correct).unwrap_or_else(|e| panic!("{e}"));
        total.acked += s.acked;
        total.failed += s.failed;
        total.failovers += s.failovers;
        total.refused_overlaps += s.refused_overlaps;
        total.resyncs += s.resyncs;
    }
    eprintln!("{total:?}");
    // The schedules did exercise what they check.
    assert!(total.acked > 100_000 && total.failovers > 1_000 && total.resyncs > 1_000);
}

#[test]
fn broken_rules_are_caught() {
    for rules in [
        Rules::AckBeforeReplicas,
        Rules::PromoteWithReplicaDown,
        Rules::NoResync,
        Rules::NoCatchUp,
        Rules::PromotePending,
    ] {
        let caught = (0..2_000).filter(|seed| run(*seed, rules).is_err()).count();
        eprintln!("{rules:?}: caught in {caught} of 2000 schedules");
        assert!(caught > 0, "{rules:?} was never caught");
    }
}
