//! Routing of commands by shard, on one node, from its copy of the shard
//! table: run here, forward to the owner (one hop), wait for a shard in
//! handoff, or answer `Unavailable` at once when the owner is down (its
//! history is on its disk only, so no other node may serve it).
//!
//! Handoff: before a move is committed, the old owner releases the shard
//! ([`Router::release`]): it takes no new command for it (they wait, as
//! the command in flight finishes) and, once the move is applied, hands
//! what waited to the new owner. A release names the epoch of the move's
//! decision; a move that is not committed (its leader died, its commit
//! timed out) is settled through the log, never by a timer: a committed
//! settle raises the table's epoch to the move's, after which the move can
//! never apply, and only then does the old owner serve the shard again
//! ([`Router::settle`]). A move committed late is thus either applied
//! before the settle (the shard left) or never. The new owner waits until the shard's
//! history is here ([`Router::ready`]). Commands waiting on either side
//! are buffered, up to a bound, and kept in arrival order. A full buffer hands the command
//! back (the caller answers `Busy`); nothing is dropped silently. A command
//! forwarded from a node with an older table, for a shard this node does not
//! own, is redirected to the owner this node knows.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::member::NodeId;
use crate::shard::ShardId;
use crate::table::{Decision, ShardTable, TableError};

/// Where a command goes.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route<C> {
    /// Run it here now.
    Local(C),
    /// Send it to the owner.
    Forward(NodeId, C),
    /// Held until the shard's handoff completes (see [`Router::ready`]).
    Buffered,
    /// The buffer of the shard is full: the command comes back.
    Busy(C),
    /// The owner is down (or the shard has none): fail it now.
    Unavailable(C),
    /// A forwarded command reached a node that is not the owner: the sender's
    /// table is stale; it should retry on this owner.
    Redirect(NodeId, C),
}

/// One node's router.
#[derive(Debug)]
pub struct Router<C> {
    local: NodeId,
    table: ShardTable,
    down: BTreeSet<NodeId>,
    /// Shards owned here whose history is not here yet, with what waits.
    waiting: BTreeMap<ShardId, VecDeque<C>>,
    /// Shards this node is giving away, with what waits for the move.
    releasing: BTreeMap<ShardId, VecDeque<C>>,
    /// For each shard in `releasing`: the epoch of the move's decision and
    /// when the release began (the driver's clock, in ms).
    released: BTreeMap<ShardId, (u64, u64)>,
    /// A deliberately broken rule (the simulation's).
    mutant: Option<crate::fence::Mutant>,
    capacity: usize,
}

impl<C> Router<C> {
    /// The router of `local`, on an empty table, buffering at most
    /// `capacity` commands per shard in handoff.
    pub fn new(local: NodeId, shard_count: u32, capacity: usize) -> Router<C> {
        Router {
            local,
            table: ShardTable::new(shard_count),
            down: BTreeSet::new(),
            waiting: BTreeMap::new(),
            releasing: BTreeMap::new(),
            released: BTreeMap::new(),
            mutant: None,
            capacity,
        }
    }

    /// The node this router routes for.
    pub fn local(&self) -> NodeId {
        self.local
    }

    /// Is this node handing the shard off (between release and the move)?
    pub fn is_releasing(&self, shard: ShardId) -> bool {
        self.releasing.contains_key(&shard)
    }

    /// This node's copy of the table.
    pub fn table(&self) -> &ShardTable {
        &self.table
    }

    /// Applies a committed decision; returns the commands that waited here
    /// for a shard that moved away, to forward to its new owner. A shard
    /// given to this node from another one waits for its handoff; one first
    /// allocated here has no history elsewhere and is ready at once.
    pub fn apply(&mut self, decision: Decision) -> Result<Vec<(NodeId, C)>, TableError> {
        let Decision::Assign { shard, owner, .. } = decision;
        let before = self.table.get(shard).map(|a| a.owner);
        self.table.apply(decision)?;
        if owner == self.local {
            if before.is_some_and(|b| b != self.local) {
                self.waiting.entry(shard).or_default();
            }
            // Given back before the move away was committed: serve again.
            self.released.remove(&shard);
            let kept = self.releasing.remove(&shard).unwrap_or_default();
            if !kept.is_empty() {
                self.waiting.entry(shard).or_default().extend(kept);
            }
            return Ok(Vec::new());
        }
        let mut away: Vec<(NodeId, C)> = Vec::new();
        self.released.remove(&shard);
        for q in [self.releasing.remove(&shard), self.waiting.remove(&shard)]
            .into_iter()
            .flatten()
        {
            away.extend(q.into_iter().map(|c| (owner, c)));
        }
        Ok(away)
    }

    /// Applies a committed change of a shard's replica set (same owner,
    /// same epoch): nothing is routed differently.
    pub fn adopt(
        &mut self,
        shard: ShardId,
        allocation: crate::table::Allocation,
    ) -> Result<(), TableError> {
        self.table.adopt(shard, allocation)
    }

    /// Starts handing a shard off for a move decided at `epoch`, at `now`
    /// (ms, the caller's clock): from now on its commands wait here until
    /// the move is applied, or until a committed settle shows it never
    /// will ([`Router::settle`]). False if this node does not own it, or
    /// if the table has reached `epoch` already (that move is decided).
    pub fn release(&mut self, shard: ShardId, epoch: u64, now: u64) -> bool {
        if self.table.get(shard).is_none_or(|a| a.owner != self.local)
            || self.table.epoch() >= epoch
        {
            return false;
        }
        let waited = self.waiting.remove(&shard).unwrap_or_default();
        self.releasing.entry(shard).or_default().extend(waited);
        let e = self.released.entry(shard).or_insert((epoch, now));
        // Released again for a later attempt: the newest decision counts.
        if epoch > e.0 {
            *e = (epoch, now);
        }
        true
    }

    /// Applies a committed settle of `epoch` (the table's epoch rises to
    /// it, see [`ShardTable::raise_epoch`]), then serves again every shard
    /// released for a move whose decision can no longer apply: the table
    /// has reached the move's epoch and still names this node. Returns what
    /// waited, by shard, in arrival order, to route again.
    pub fn settle(&mut self, epoch: u64) -> Vec<(ShardId, Vec<C>)> {
        self.table.raise_epoch(epoch);
        self.settled()
    }

    /// Released shards whose move can no longer apply (the table reached
    /// its epoch without moving them) serve again; what waited, by shard.
    /// Called after every table change.
    pub fn settled(&mut self) -> Vec<(ShardId, Vec<C>)> {
        self.settled_at(0)
    }

    /// [`Router::settled`], at `now` (ms): the correct rule does not look
    /// at the time; [`crate::fence::Mutant::ResumeByTimer`] does.
    pub fn settled_at(&mut self, now: u64) -> Vec<(ShardId, Vec<C>)> {
        let epoch = self.table.epoch();
        let by_timer = self.mutant == Some(crate::fence::Mutant::ResumeByTimer);
        let done: Vec<ShardId> = self
            .released
            .iter()
            .filter(|(_, (e, since))| *e <= epoch || (by_timer && now >= since + 10))
            .map(|(s, _)| *s)
            .collect();
        let mut out = Vec::new();
        for shard in done {
            self.released.remove(&shard);
            if let Some(q) = self.releasing.remove(&shard) {
                out.push((shard, Vec::from(q)));
            }
        }
        out
    }

    /// The epochs of moves this node released a shard for at or before
    /// `before` (ms) that are still undecided here: the driver has them
    /// settled through the log.
    pub fn overdue(&self, before: u64) -> BTreeSet<u64> {
        self.released
            .values()
            .filter(|(_, since)| *since <= before)
            .map(|(e, _)| *e)
            .collect()
    }

    /// Holds a shard owned here until [`Router::ready`]: its commands wait
    /// (a restarted owner reads its shards back from their replicas).
    /// False if this node does not own it.
    pub fn hold(&mut self, shard: ShardId) -> bool {
        if self.table.get(shard).is_none_or(|a| a.owner != self.local) {
            return false;
        }
        self.waiting.entry(shard).or_default();
        true
    }

    /// Switches a deliberately broken rule on (the simulations only).
    pub fn break_rule(&mut self, mutant: crate::fence::Mutant) {
        self.mutant = Some(mutant);
    }

    /// The failure detector's view: which nodes are down.
    pub fn set_down(&mut self, down: BTreeSet<NodeId>) {
        self.down = down;
    }

    /// Routes a command from a client of this node.
    pub fn route(&mut self, shard: ShardId, command: C) -> Route<C> {
        let Some(a) = self.table.get(shard) else {
            return Route::Unavailable(command);
        };
        if a.owner != self.local {
            if self.down.contains(&a.owner) {
                return Route::Unavailable(command);
            }
            return Route::Forward(a.owner, command);
        }
        self.here(shard, command)
    }

    /// Routes a command another node forwarded here.
    pub fn route_forwarded(&mut self, shard: ShardId, command: C) -> Route<C> {
        match self.table.get(shard) {
            Some(a) if a.owner == self.local => self.here(shard, command),
            Some(a) => Route::Redirect(a.owner, command),
            None => Route::Unavailable(command),
        }
    }

    fn here(&mut self, shard: ShardId, command: C) -> Route<C> {
        let queue = match self.releasing.get_mut(&shard) {
            Some(q) => Some(q),
            None => self.waiting.get_mut(&shard),
        };
        match queue {
            None => Route::Local(command),
            Some(q) if q.len() >= self.capacity => Route::Busy(command),
            Some(q) => {
                q.push_back(command);
                Route::Buffered
            }
        }
    }

    /// The shard's history is here: returns what waited, in arrival order,
    /// to run now; later commands run at once.
    pub fn ready(&mut self, shard: ShardId) -> Vec<C> {
        self.waiting
            .remove(&shard)
            .map(Vec::from)
            .unwrap_or_default()
    }

    /// Is a shard owned here still waiting for its history?
    pub fn is_waiting(&self, shard: ShardId) -> bool {
        self.waiting.contains_key(&shard)
    }

    /// Is the shard still waiting for its history under the allocation of
    /// `epoch` (not a newer one, whose own fetch then takes over)?
    pub fn awaits(&self, shard: ShardId, epoch: u64) -> bool {
        self.is_waiting(shard) && self.table.get(shard).map(|a| a.epoch) == Some(epoch)
    }

    /// May this node run a command of `shard` now (it owns it, and the
    /// shard is neither waiting for its history nor being released)?
    pub fn serves(&self, shard: ShardId) -> bool {
        self.table.get(shard).is_some_and(|a| a.owner == self.local)
            && !self.waiting.contains_key(&shard)
            && !self.releasing.contains_key(&shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(shard: u32, owner: u64, epoch: u64) -> Decision {
        Decision::Assign {
            shard: ShardId(shard),
            owner: NodeId(owner),
            epoch,
            replicas: crate::table::Replicas::default(),
        }
    }

    #[test]
    fn commands_run_here_go_to_the_owner_or_wait_for_a_handoff() {
        let (a, b) = (NodeId(1), NodeId(2));
        let mut ra: Router<u32> = Router::new(a, 4, 2);
        let mut rb: Router<u32> = Router::new(b, 4, 2);
        for r in [&mut ra, &mut rb] {
            r.apply(assign(0, 1, 1)).unwrap();
        }
        assert_eq!(ra.route(ShardId(0), 1), Route::Local(1));
        assert_eq!(rb.route(ShardId(0), 2), Route::Forward(a, 2));
        assert_eq!(rb.route(ShardId(3), 3), Route::Unavailable(3));
        // Shard 0 moves to b: a releases it first (commands wait), then
        // hands what waited to b, which waits for the history, bounded.
        assert!(ra.release(ShardId(0), 2, 0));
        assert_eq!(ra.route(ShardId(0), 10), Route::Buffered);
        assert_eq!(ra.apply(assign(0, 2, 2)).unwrap(), vec![(b, 10)]);
        rb.apply(assign(0, 2, 2)).unwrap();
        assert_eq!(ra.route(ShardId(0), 4), Route::Forward(b, 4));
        assert_eq!(rb.route_forwarded(ShardId(0), 4), Route::Buffered);
        assert_eq!(rb.route(ShardId(0), 5), Route::Buffered);
        assert_eq!(rb.route(ShardId(0), 6), Route::Busy(6));
        assert_eq!(rb.ready(ShardId(0)), vec![4, 5]);
        assert_eq!(rb.route(ShardId(0), 7), Route::Local(7));
        // A node with a stale table is redirected, not failed.
        let mut stale: Router<u32> = Router::new(NodeId(3), 4, 2);
        stale.apply(assign(0, 1, 1)).unwrap();
        assert_eq!(stale.route(ShardId(0), 8), Route::Forward(a, 8));
        assert_eq!(ra.route_forwarded(ShardId(0), 8), Route::Redirect(b, 8));
        // A down owner: commands fail at once.
        ra.set_down([b].into());
        assert_eq!(ra.route(ShardId(0), 9), Route::Unavailable(9));
    }

    #[test]
    fn a_move_not_committed_is_settled_through_the_log() {
        let (a, b) = (NodeId(1), NodeId(2));
        let mut ra: Router<u32> = Router::new(a, 4, 4);
        ra.apply(assign(0, 1, 1)).unwrap();
        // Released for a move of epoch 2 at t=100: commands wait.
        assert!(ra.release(ShardId(0), 2, 100));
        assert!(!ra.release(ShardId(1), 2, 100), "not owned here");
        assert_eq!(ra.route(ShardId(0), 1), Route::Buffered);
        assert!(ra.overdue(99).is_empty());
        assert_eq!(ra.overdue(100), [2].into());
        // Nothing but time passes: still released (a timer decides nothing).
        assert_eq!(ra.settled(), vec![]);
        assert!(!ra.serves(ShardId(0)));
        // A settle below the move's epoch decides nothing either.
        assert_eq!(ra.settle(1), vec![]);
        // The settle of epoch 2 is committed: the move can never apply;
        // the shard serves again and what waited comes back.
        assert_eq!(ra.settle(2), vec![(ShardId(0), vec![1])]);
        assert!(ra.serves(ShardId(0)));
        assert!(ra.overdue(u64::MAX).is_empty());
        // The late move is stale now: the table refuses it.
        assert!(ra.apply(assign(0, 2, 2)).is_err());
        assert_eq!(ra.route(ShardId(0), 2), Route::Local(2));
        // A release for an epoch the table has reached is refused.
        assert!(!ra.release(ShardId(0), 2, 200));
        // Another decision reaching the move's epoch settles it too.
        assert!(ra.release(ShardId(0), 3, 300));
        ra.apply(assign(2, 1, 3)).unwrap();
        assert_eq!(ra.settled(), vec![(ShardId(0), vec![])]);
        // A move applied while released: the shard leaves, nothing to settle.
        assert!(ra.release(ShardId(0), 4, 400));
        assert_eq!(ra.route(ShardId(0), 3), Route::Buffered);
        assert_eq!(ra.apply(assign(0, 2, 4)).unwrap(), vec![(b, 3)]);
        assert_eq!(ra.settled(), vec![]);
        assert!(ra.overdue(u64::MAX).is_empty());
    }

    #[test]
    fn a_first_allocation_serves_at_once() {
        let mut r: Router<u32> = Router::new(NodeId(1), 2, 4);
        r.apply(assign(1, 1, 1)).unwrap();
        assert!(!r.is_waiting(ShardId(1)));
        assert_eq!(r.route(ShardId(1), 1), Route::Local(1));
    }
}
