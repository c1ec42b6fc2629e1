//! Routing and handoff in a seeded simulation: nodes route client commands
//! by their own (lagging) copy of the committed shard table while shards
//! move (a node joins, another leaves). Old owners release a shard before
//! its move commits and hand what waited to the new owner; new owners wait
//! for the history before serving; forwarded commands travel with delays
//! and stale tables are redirected. Checked: every command runs exactly
//! once (none lost, none twice), and only on the node the committed log
//! names as the shard's owner at that moment, once that node serves it.

use std::collections::{BTreeMap, VecDeque};

use cairn_cluster::coordinator::Coordinator;
use cairn_cluster::route::{Route, Router};
use cairn_cluster::{Decision, Member, MemberState, NodeId, ShardId, ShardTable};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const SHARDS: u32 = 32;
const NODES: u64 = 4;

struct Sim {
    rng: StdRng,
    routers: BTreeMap<NodeId, Router<u64>>,
    /// How much of the log each router has applied.
    applied: BTreeMap<NodeId, usize>,
    log: Vec<Decision>,
    /// For each log index that moved a shard: its old owner.
    moved_from: BTreeMap<usize, NodeId>,
    coord: Coordinator,
    members: Vec<Member>,
    /// Forwarded commands in flight: (deliver at step, to, shard, id).
    wire: VecDeque<(u64, NodeId, ShardId, u64)>,
    /// Commands to retry from a node (Busy).
    retry: Vec<(NodeId, ShardId, u64)>,
    ran: BTreeMap<u64, u32>,
    step: u64,
    next_id: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut s = Sim {
            rng: StdRng::seed_from_u64(seed),
            routers: (1..=NODES)
                .map(|n| (NodeId(n), Router::new(NodeId(n), SHARDS, 2)))
                .collect(),
            applied: (1..=NODES).map(|n| (NodeId(n), 0)).collect(),
            log: Vec::new(),
            moved_from: BTreeMap::new(),
            coord: Coordinator::new(ShardTable::new(SHARDS), 3),
            members: (1..=3).map(|n| Member::up(NodeId(n))).collect(),
            wire: VecDeque::new(),
            retry: Vec::new(),
            ran: BTreeMap::new(),
            step: 0,
            next_id: 0,
        };
        // The first allocation reaches everyone before any command.
        s.plan();
        for n in 1..=NODES {
            s.catch_up(NodeId(n), usize::MAX).expect("first allocation");
        }
        s
    }

    fn committed_owner(&self, shard: ShardId) -> Option<NodeId> {
        self.log.iter().rev().find_map(|d| match *d {
            Decision::Assign {
                shard: s, owner, ..
            } if s == shard => Some(owner),
            _ => None,
        })
    }

    fn run(&mut self, node: NodeId, shard: ShardId, id: u64) -> Result<(), String> {
        let owner = self.committed_owner(shard);
        let serves = self.routers[&node].serves(shard);
        if owner != Some(node) || !serves {
            return Err(format!(
                "command {id} of {shard} ran on {node} (serving it: {serves}); the committed owner is {owner:?}"
            ));
        }
        *self.ran.entry(id).or_default() += 1;
        Ok(())
    }

    fn handle(
        &mut self,
        node: NodeId,
        shard: ShardId,
        id: u64,
        route: Route<u64>,
    ) -> Result<(), String> {
        match route {
            Route::Local(id) => self.run(node, shard, id)?,
            Route::Forward(to, id) | Route::Redirect(to, id) => {
                let at = self.step + self.rng.random_range(0..3);
                self.wire.push_back((at, to, shard, id));
            }
            Route::Buffered => {}
            Route::Busy(id) => self.retry.push((node, shard, id)),
            Route::Unavailable(_) => {
                return Err(format!("command {id} unavailable with no node down"));
            }
            other => return Err(format!("unexpected route {other:?}")),
        }
        Ok(())
    }

    /// A client's command arrives at `node`.
    fn submit(&mut self, node: NodeId, shard: ShardId, id: u64) -> Result<(), String> {
        let route = self
            .routers
            .get_mut(&node)
            .ok_or("no router")?
            .route(shard, id);
        self.handle(node, shard, id, route)
    }

    /// Router `n` applies up to `k` more log entries.
    fn catch_up(&mut self, n: NodeId, k: usize) -> Result<(), String> {
        let from = self.applied[&n];
        let to = self.log.len().min(from.saturating_add(k));
        for i in from..to {
            let d = self.log[i];
            let away = self
                .routers
                .get_mut(&n)
                .ok_or("no router")?
                .apply(d)
                .map_err(|e| e.to_string())?;
            for (to, id) in away {
                let Decision::Assign { shard, .. } = d else {
                    continue;
                };
                self.wire.push_back((self.step, to, shard, id));
            }
        }
        self.applied.insert(n, to);
        Ok(())
    }

    /// The coordinator plans; old owners release; the batch commits.
    fn plan(&mut self) {
        self.coord.set_members(self.members.clone());
        let (batch, moves) = self.coord.propose();
        for m in &moves {
            if let Some(old) = m.from
                && let Some(r) = self.routers.get_mut(&old)
            {
                r.release(m.shard);
            }
        }
        let _ = self.coord.committed();
        for (d, m) in batch.into_iter().zip(moves) {
            if let Some(old) = m.from {
                self.moved_from.insert(self.log.len(), old);
            }
            self.log.push(d);
        }
    }

    /// New owners whose old owner has applied the move get the history.
    fn handoffs(&mut self, all: bool) -> Result<(), String> {
        let moves: Vec<(usize, NodeId)> = self.moved_from.iter().map(|(i, o)| (*i, *o)).collect();
        for (i, old) in moves {
            let Decision::Assign { shard, owner, .. } = self.log[i] else {
                continue;
            };
            let both_applied = self.applied[&old] > i && self.applied[&owner] > i;
            if both_applied && (all || self.rng.random_bool(0.5)) {
                let waiting = self.routers[&owner].is_waiting(shard);
                let released = self
                    .routers
                    .get_mut(&owner)
                    .ok_or("no router")?
                    .ready(shard);
                for id in released {
                    self.run(owner, shard, id)?;
                }
                if waiting || !self.routers[&owner].is_waiting(shard) {
                    self.coord.handoff_done(shard);
                    self.moved_from.remove(&i);
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, all: bool) -> Result<(), String> {
        let mut later = VecDeque::new();
        while let Some((at, to, shard, id)) = self.wire.pop_front() {
            if at > self.step && !all {
                later.push_back((at, to, shard, id));
                continue;
            }
            let route = self
                .routers
                .get_mut(&to)
                .ok_or("no router")?
                .route_forwarded(shard, id);
            self.handle(to, shard, id, route)?;
        }
        self.wire = later;
        Ok(())
    }

    fn tick(&mut self) -> Result<(), String> {
        self.step += 1;
        // Membership changes: node 4 joins, later node 3 leaves.
        if self.step == 20 {
            self.members.push(Member::up(NodeId(4)));
        }
        if self.step == 120 {
            self.members[2].state = MemberState::Leaving;
        }
        if self.step.is_multiple_of(5) {
            self.plan();
        }
        for n in 1..=NODES {
            let k = self.rng.random_range(0..3);
            self.catch_up(NodeId(n), k)?;
        }
        self.handoffs(false)?;
        // Clients send.
        for _ in 0..self.rng.random_range(0..4) {
            let node = NodeId(self.rng.random_range(1..=NODES));
            let shard = ShardId(self.rng.random_range(0..SHARDS));
            let id = self.next_id;
            self.next_id += 1;
            self.submit(node, shard, id)?;
        }
        for (node, shard, id) in std::mem::take(&mut self.retry) {
            self.submit(node, shard, id)?;
        }
        self.deliver(false)
    }

    fn drain(&mut self) -> Result<(), String> {
        for _ in 0..100 {
            self.step += 1;
            for n in 1..=NODES {
                self.catch_up(NodeId(n), usize::MAX)?;
            }
            self.handoffs(true)?;
            for (node, shard, id) in std::mem::take(&mut self.retry) {
                self.submit(node, shard, id)?;
            }
            self.deliver(true)?;
            if self.wire.is_empty() && self.retry.is_empty() && self.moved_from.is_empty() {
                break;
            }
        }
        for id in 0..self.next_id {
            match self.ran.get(&id) {
                Some(1) => {}
                n => return Err(format!("command {id} ran {n:?} times")),
            }
        }
        Ok(())
    }
}

#[test]
fn every_command_runs_once_on_the_committed_owner_while_shards_move() {
    let mut moved = 0;
    for seed in 0..500u64 {
        let mut sim = Sim::new(seed);
        let run = (|| {
            for _ in 0..200 {
                sim.tick()?;
            }
            sim.drain()
        })();
        if let Err(e) = run {
            panic!("seed {seed}: {e}");
        }
        moved += sim.log.len() as u64 - u64::from(SHARDS);
    }
    assert!(
        moved > 500 * 8,
        "the schedules moved too few shards: {moved}"
    );
}
