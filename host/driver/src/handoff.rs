//! Shards changing hands: the coordinator loop (on the decision log's
//! leader only), the table watcher (every node applies committed
//! decisions to its router), the old owner's release and the new owner's
//! fetch of the shard's history, and the serving of peer calls.
//!
//! A move, in order: the coordinator asks the old owner to release the
//! shard (it buffers new commands, finishes those in flight, passivates
//! the shard's entities); only then it commits the move. The new owner
//! buffers the shard's commands, reads its history from the old owner
//! (every event it lacks, per entity), and then serves. Commands that
//! waited on the old owner are forwarded to the new one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_cluster::arrival::Source;
use cairn_cluster::replication::{TimerMerge, timer_merge};
use cairn_cluster::route::Route;
use cairn_cluster::timers::{Position, TimerState, merge_timers};
use cairn_cluster::{Coordinator, Decision, Member, MemberState, NodeId, ShardId, shard_of};
use cairn_host::outbox::timer_state;
use cairn_raft::{ClusterState, Command};
use cairn_store::{EntityKey, EventRecord, TimerRecord, Write};
use tokio::sync::oneshot;

use crate::gossip::{self, GossipInput, TAG_GOSSIP, TAG_HEARTBEAT};
use crate::peer::{
    EntityHistory, PEER_PROTOCOL_VERSION, PeerFailure, PeerRequest, PeerResponse, failed,
    read_chunk, write_answer,
};
use crate::{Inner, live_entities};
use cairn_client::frame::read_frame_admitted;
use cairn_proto::{MAX_FRAME, Response};

/// How often the leader looks for shards to allocate or move.
const ROUND: Duration = Duration::from_millis(300);
/// How long a proposal may wait for a majority.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Commits a command through the log's leader, wherever it is.
pub(crate) async fn propose(inner: &Arc<Inner>, cmd: Command) -> Result<(), String> {
    if inner.log.is_leader() {
        return inner
            .log
            .propose(cmd, COMMIT_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    let Some((_, addr)) = inner.log.leader() else {
        return Err("no leader".into());
    };
    let addr = addr.parse().map_err(|_| "bad leader address".to_owned())?;
    match inner
        .peers
        .call(addr, &PeerRequest::Propose(cmd), COMMIT_TIMEOUT)
        .await
    {
        Ok(PeerResponse::Done) => Ok(()),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The coordinator: on the leader, allocates and moves shards.
pub(crate) async fn coordinate(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        if !inner.log.is_leader() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        if failover(&inner, since).await {
            continue;
        }
        let state: ClusterState = (*inner.log.state().borrow().clone()).clone();
        // Members that joined and that gossip hears become up.
        for (id, rec) in &state.members {
            let live = *id == inner.id || inner.view().live.contains(id);
            if rec.state == MemberState::Joining && live {
                let cmd = Command::Member {
                    node: *id,
                    addr: rec.addr.clone(),
                    state: MemberState::Up,
                };
                if let Err(e) = inner.log.propose(cmd, COMMIT_TIMEOUT).await {
                    tracing::debug!(error = %e, "cannot mark a member up");
                }
            }
        }
        let Some(table) = state.table.clone() else {
            continue;
        };
        // A member gets shards only once it runs every deployed type.
        let types: std::collections::BTreeSet<&str> = state
            .deploys
            .iter()
            .map(|d| d.entity_type.as_str())
            .collect();
        let synced = |id: u64| {
            types.iter().all(|t| {
                let want = state.latest_deploy(t).map(|d| d.sha256.as_str());
                state
                    .active
                    .get(&((*t).to_owned(), id))
                    .is_some_and(|(_, h)| Some(h.as_str()) == want)
            })
        };
        let members: Vec<Member> = {
            let v = inner.view();
            state
                .members
                .iter()
                .filter(|(_, r)| r.state != MemberState::Removed)
                .map(|(id, r)| {
                    let me = *id == inner.id;
                    let down = !me && v.down.contains(id);
                    Member {
                        id: NodeId(*id),
                        state: match r.state {
                            _ if down => MemberState::Down,
                            MemberState::Up if !synced(*id) => MemberState::Joining,
                            s => s,
                        },
                        reachable: me
                            || (!down && !v.unreachable.contains(id) && v.live.contains(id)),
                    }
                })
                .collect()
        };
        let allocated = table.iter().any(|(_, a)| a.is_some());
        let owners = members.iter().filter(|m| m.can_own()).count();
        if !allocated && owners < inner.config.min_members {
            continue;
        }
        let mut c = Coordinator::new(table, inner.config.max_moves);
        c.set_replicas(super::replicate::max_replicas(&inner));
        c.set_members(members);
        let (decisions, moves) = c.propose();
        if decisions.is_empty() {
            continue;
        }
        // The batch's newest epoch: the old owners hold the shards released
        // until the table reaches it (the move applied, or settled).
        let epoch = decisions.iter().map(Decision::epoch).max().unwrap_or(0);
        let mut by_owner: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for m in &moves {
            if let Some(from) = m.from {
                by_owner.entry(from.0).or_default().push(m.shard.0);
            }
        }
        let round = Instant::now();
        let mut released = false;
        let mut ok = true;
        for (owner, shards) in by_owner {
            let r = if owner == inner.id {
                release(&inner, &shards, epoch).await
            } else {
                call_owner(
                    &inner,
                    owner,
                    PeerRequest::Release {
                        shards: shards.clone(),
                        epoch,
                    },
                )
                .await
            };
            match r {
                Ok(()) => released = true,
                Err(e) => {
                    tracing::info!(owner, error = %e, "release refused; no move this round");
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            let n = decisions.len();
            match inner
                .log
                .propose(Command::Decide(decisions), COMMIT_TIMEOUT)
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        shards = n,
                        moved = moves.iter().filter(|m| m.from.is_some()).count(),
                        release_and_commit_us = round.elapsed().as_micros() as u64,
                        "committed shard decisions"
                    );
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "shard decisions not committed"),
            }
        }
        // The batch may still commit (its proposal can be in the log): the
        // old owners serve again only once a committed settle has decided
        // it (or their own overdue releases have one committed later).
        if released
            && let Err(e) = inner
                .log
                .propose(Command::Settle { epoch }, COMMIT_TIMEOUT)
                .await
        {
            tracing::warn!(epoch, error = %e, "the move not committed is not settled yet: its old owners will have it settled");
        }
    }
}

async fn call_owner(inner: &Arc<Inner>, owner: u64, req: PeerRequest) -> Result<(), String> {
    let addr = inner
        .addr_of(owner)
        .ok_or_else(|| format!("no address for node {owner}"))?;
    match inner.peers.call(addr, &req, Duration::from_secs(15)).await {
        Ok(PeerResponse::Done) => Ok(()),
        Ok(PeerResponse::Failed(e)) => Err(e.to_string()),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The old owner's side of a move: stop taking commands for the shards,
/// let those in flight finish, unload their entities.
/// `epoch` is the move's decision's: the shards stay released until this
/// node's table reaches it (the move applied, or a committed settle shows
/// it never will, see `cairn_cluster::route::Router::settle`).
pub(crate) async fn release(inner: &Arc<Inner>, shards: &[u32], epoch: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let count = inner.shard_count();
    for &shard in shards {
        // A shard still fetching its history is released once it has it.
        while inner.router().is_waiting(ShardId(shard)) {
            if Instant::now() > deadline {
                return Err(format!("shard {shard} is still arriving here"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let now = inner.started.elapsed().as_millis() as u64;
        if !inner.router().release(ShardId(shard), epoch, now) {
            return Err(format!(
                "shard {shard} is not this node's, or the table has passed epoch {epoch}"
            ));
        }
    }
    let set: std::collections::BTreeSet<u32> = shards.iter().copied().collect();
    loop {
        let running = {
            let f = inner.in_flight();
            set.iter().any(|s| f.contains_key(s))
        };
        let busy = if running {
            1
        } else {
            inner
                .node
                .passivate_where(|ty, id| set.contains(&shard_of(ty, id, count).0))
        };
        if busy == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            // Released they stay, until the move is settled.
            return Err("commands of the shards did not finish in time".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Shards released for moves the table has decided (settled, or passed
/// without moving them) serve here again: what waited is routed again.
pub(crate) fn resume_settled(inner: &Arc<Inner>, epoch: u64) {
    let settled = inner.router().settle(epoch);
    for (shard, waiters) in settled {
        run_waiters(inner, shard.0, waiters);
    }
}

/// How long a release may wait for its move before this node has it
/// settled through the log (its coordinator may have died with it): longer
/// than a release's drain (10 s) and a commit (`COMMIT_TIMEOUT`) together,
/// so that a move on its way is not settled for nothing.
const RELEASE_OVERDUE: Duration = Duration::from_secs(20);

/// Every node: has the moves it released shards for, and that neither
/// committed nor were settled in time, settled through the log (the
/// leader that asked for them may be gone). Safe at any time: a settle only
/// decides that a pending move can no longer commit.
pub(crate) async fn settle_overdue(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if inner.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let before = inner
            .started
            .elapsed()
            .saturating_sub(RELEASE_OVERDUE)
            .as_millis() as u64;
        let due = inner.router().overdue(before);
        for epoch in due {
            match propose(&inner, Command::Settle { epoch }).await {
                Ok(()) => tracing::info!(epoch, "an overdue move settled"),
                Err(e) => tracing::debug!(epoch, error = %e, "an overdue move not settled yet"),
            }
        }
    }
}

fn run_waiters(
    inner: &Arc<Inner>,
    shard: u32,
    waiters: Vec<(cairn_proto::Request, oneshot::Sender<Response>)>,
) {
    if waiters.is_empty() {
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        for (req, tx) in waiters {
            // Routed again rather than run here: the shard may have been
            // released to another owner since these commands were held
            // (the coordinator can move a shard as soon as it has arrived,
            // before its waiters run), and a command run here then would
            // write beside the new owner's fetch of the shard: an
            // acknowledged event the new owner truncates as an
            // unacknowledged tail.
            let (again, rx) = oneshot::channel();
            let route = inner.router().route(ShardId(shard), (req, again));
            let r = inner.follow(shard, route, rx).await;
            let _ = tx.send(r);
        }
    });
}

/// Every node: applies the committed table to its router.
pub(crate) async fn watch_table(inner: Arc<Inner>) {
    let mut rx = inner.log.state();
    loop {
        let state = rx.borrow_and_update().clone();
        apply_state(&inner, &state);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn apply_state(inner: &Arc<Inner>, state: &ClusterState) {
    {
        let mut v = inner.view();
        for (id, rec) in &state.members {
            if let Ok(a) = rec.addr.parse() {
                v.addrs.entry(*id).or_insert(a);
            }
        }
    }
    let Some(table) = &state.table else {
        return;
    };
    let mut changes: Vec<(ShardId, cairn_cluster::Allocation)> = Vec::new();
    let mut fetches = Vec::new();
    let mut away = Vec::new();
    let mut ready = Vec::new();
    {
        let mut router = inner.router();
        // The first table this process applies, of a cluster that has
        // allocated already: a restart. Its shards are read back from
        // their replicas before it serves them (a write that failed before
        // the crash may be on a replica).
        let restart = router.table().epoch() == 0 && table.epoch() > 0;
        if router.table().len() != table.len() {
            *router = cairn_cluster::route::Router::new(
                NodeId(inner.id),
                table.len(),
                inner.config.handoff_buffer,
            );
        }
        for (shard, a) in table.iter() {
            if let Some(a) = a
                && router.table().get(shard) != Some(a)
            {
                changes.push((shard, a));
            }
        }
        changes.sort_by_key(|c| c.1.epoch);
        for (shard, a) in changes {
            let before = router.table().get(shard);
            // The same allocation with another replica set: the owner's
            // committed change (nothing is routed differently).
            if let Some(b) = before
                && (b.owner, b.epoch) == (a.owner, a.epoch)
            {
                if let Err(e) = router.adopt(shard, a) {
                    tracing::warn!(error = %e, "replica change not applied");
                }
                continue;
            }
            match router.apply(Decision::Assign {
                shard,
                owner: a.owner,
                epoch: a.epoch,
                replicas: a.replicas,
            }) {
                Ok(fwd) => away.extend(fwd.into_iter().map(|(o, w)| (shard, o, w))),
                Err(e) => {
                    tracing::warn!(error = %e, "decision not applied");
                    continue;
                }
            }
            if a.owner.0 != inner.id {
                continue;
            }
            let epoch = a.epoch;
            let source = cairn_cluster::arrival::source(&cairn_cluster::arrival::Arrival {
                me: NodeId(inner.id),
                allocation: a,
                before,
                previous: state.previous.get(&shard.0).copied(),
                ready: state.ready.get(&shard.0).is_some_and(|e| *e >= epoch),
                served: inner.served.get(shard.0),
                restart,
            });
            match source {
                Source::Previous(b) => {
                    // (Already waiting after a move; after a restart, held.)
                    router.hold(shard);
                    fetches.push((shard, b, epoch));
                }
                Source::ReadBack => {
                    router.hold(shard);
                    let me = cairn_cluster::Allocation {
                        owner: NodeId(inner.id),
                        epoch,
                        replicas: cairn_cluster::Replicas::default(),
                        changes: 0,
                    };
                    fetches.push((shard, me, epoch));
                }
                Source::Serve => ready.push((shard.0, epoch)),
                Source::Unchanged => {}
            }
        }
    }
    if !ready.is_empty() {
        let inner = inner.clone();
        tokio::spawn(async move {
            let shards = ready.iter().map(|(s, _)| *s).collect();
            report_ready(&inner, ready).await;
            arm_timers(&inner, shards).await;
        });
    }
    // Moves released here that the committed table has decided without
    // moving their shards (a settle, or later decisions) serve here again.
    resume_settled(inner, table.epoch());
    inner.refresh_down();
    for (shard, owner, (req, tx)) in away {
        let inner = inner.clone();
        tokio::spawn(async move {
            let r = inner.forward(owner.0, shard.0, req).await;
            let _ = tx.send(r);
        });
    }
    for (shard, before, epoch) in fetches {
        tokio::spawn(fetch(inner.clone(), shard, before, epoch));
    }
}

/// The new owner's side (of the allocation under `epoch`): read the
/// shard's history from the old owner (`before`, the allocation it had),
/// or on failover from the live members of its committed replica set;
/// then serve what waited, and once its own committed replica set holds
/// the history, report the shard ready (only then may it fail over from
/// this node). A newer allocation of the shard has its own fetch, and
/// this one gives way.
async fn fetch(inner: Arc<Inner>, shard: ShardId, before: cairn_cluster::Allocation, epoch: u64) {
    let from = before.owner.0;
    let started = Instant::now();
    let count = inner.shard_count();
    let imported;
    loop {
        if !inner.router().awaits(shard, epoch) {
            return;
        }
        // A live old owner hands its shard over (all of it is read from
        // there); a dead one's history is merged from the members of its
        // committed replica set that answer, once they are enough that
        // every acknowledged event is among them (`may_promote` over the
        // copies read, this node's own included).
        let failover = from == inner.id || inner.view().down.contains(&from);
        let restart = from == inner.id;
        let sources: Vec<u64> = if restart {
            // A restart, or a view that jumped: this node's own journal
            // holds every event it acknowledged (it appends after its
            // replicas). What the members of the committed set hold beyond
            // it was never acknowledged; it is read back so that no
            // sequence number is used twice, from the members that answer
            // (a tail on one that does not is reconciled by the next write
            // that reaches it).
            let set = inner
                .router()
                .table()
                .get(shard)
                .map(|a| a.replicas)
                .unwrap_or_default();
            set.as_slice()
                .iter()
                .map(|n| n.0)
                .filter(|n| *n != inner.id)
                .collect()
        } else if failover {
            before
                .replicas
                .as_slice()
                .iter()
                .map(|n| n.0)
                .filter(|r| *r != inner.id)
                .collect()
        } else {
            vec![from]
        };
        let mut n = (0, 0);
        let mut read = vec![inner.id];
        let mut failures = Vec::new();
        for src in &sources {
            match fetch_once(&inner, shard, *src, count, !failover).await {
                Ok((entities, events)) => {
                    n.0 += entities;
                    n.1 += events;
                    read.push(*src);
                }
                Err(e) => {
                    failures.push((*src, e));
                    if !failover {
                        break;
                    }
                }
            }
        }
        let enough = if restart {
            true
        } else if failover {
            let policies = super::replicate::policies(&inner);
            cairn_cluster::replication::may_promote(
                before.replicas.as_slice(),
                &policies,
                &|m: NodeId| read.contains(&m.0),
            )
        } else {
            failures.is_empty()
        };
        for (src, e) in &failures {
            tracing::warn!(shard = shard.0, from, src, failover, enough, error = %e, "shard history not read from a member");
        }
        if enough {
            imported = n;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let fetched = started.elapsed();
    while inner
        .node
        .passivate_where(|ty, id| shard_of(ty, id, count) == shard)
        > 0
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Recorded durably before the first command is served: after a crash
    // from here on, this node's journal is the shard's truth
    // (`cairn_cluster::arrival`).
    let mut tries = 0u32;
    loop {
        if !inner.router().awaits(shard, epoch) {
            return;
        }
        match inner.served.record(shard.0, epoch).await {
            Ok(()) => break,
            Err(e) => {
                tries += 1;
                if tries % 20 == 1 {
                    tracing::warn!(shard = shard.0, error = %e, "cannot record that this node serves the shard; it waits");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let waiters = {
        let mut r = inner.router();
        if !r.awaits(shard, epoch) {
            return;
        }
        r.ready(shard)
    };
    arm_timers(&inner, vec![shard.0]).await;
    tracing::info!(
        shard = shard.0,
        from,
        epoch,
        entities = imported.0,
        events = imported.1,
        fetch_us = fetched.as_micros() as u64,
        waited = waiters.len(),
        took_us = started.elapsed().as_micros() as u64,
        "shard arrived"
    );
    run_waiters(&inner, shard.0, waiters);
    // The committed replica set of this allocation is not the old owner's:
    // it gets the whole history (writes meanwhile reach it through their
    // gap fills) before the shard is reported ready.
    let mut tries = 0u32;
    loop {
        let Some(a) = inner
            .router()
            .table()
            .get(shard)
            .filter(|a| a.epoch == epoch && a.owner.0 == inner.id)
        else {
            return;
        };
        let set: Vec<u64> = a.replicas.as_slice().iter().map(|n| n.0).collect();
        match super::replicate::catch_up_to(&inner, shard, count, &set, epoch).await {
            Ok(()) => break,
            Err(e) => {
                tries += 1;
                if tries % 20 == 1 {
                    tracing::warn!(shard = shard.0, error = %e, "replicas not caught up yet; the shard is not ready for failover");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    report_ready(&inner, vec![(shard.0, epoch)]).await;
}

async fn fetch_once(
    inner: &Arc<Inner>,
    shard: ShardId,
    from: u64,
    count: u32,
    authoritative: bool,
) -> Result<(usize, usize), String> {
    let addr = inner
        .addr_of(from)
        .ok_or_else(|| format!("no address for node {from}"))?;
    let mut recv = inner
        .peers
        .open(
            addr,
            &PeerRequest::FetchShard {
                shard: shard.0,
                shard_count: count,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    // (entities, events imported)
    let mut n = (0, 0);
    let mut sent = std::collections::HashSet::new();
    let mut timers_here = shard_timers(inner, shard, count).await?;
    // The entity whose chunks are arriving.
    let mut current: Option<Arriving> = None;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(10),
            inner.peers.read_answer(addr, &mut recv),
        )
        .await
        {
            Err(_) => return Err("no answer".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(PeerResponse::Entity(mut h))) => {
                if authoritative {
                    sent.insert((h.entity_type.clone(), h.entity_id.clone()));
                }
                let key = EntityKey::new(h.entity_type.clone(), h.entity_id.clone());
                if current.as_ref().map(|c| &c.key) != Some(&key) {
                    if let Some(done) = current.take() {
                        let here = timers_here.remove(&done.key).unwrap_or_default();
                        done.settle(inner, &here, authoritative).await?;
                    }
                    n.0 += 1;
                    let before = inner
                        .local_journal
                        .highest_seq(&key)
                        .await
                        .map_err(|e| e.to_string())?;
                    current = Some(Arriving {
                        key: key.clone(),
                        before,
                        last: 0,
                        // Only an entity's first chunk carries its timers.
                        timers: std::mem::take(&mut h.timers),
                    });
                }
                if let (Some(c), Some(last)) = (current.as_mut(), h.events.last()) {
                    c.last = last.0;
                }
                n.1 += import(inner, h, authoritative).await?;
            }
            Ok(Ok(PeerResponse::Done)) => {
                if let Some(done) = current.take() {
                    let here = timers_here.remove(&done.key).unwrap_or_default();
                    done.settle(inner, &here, authoritative).await?;
                }
                if authoritative {
                    drop_unsent(inner, shard, count, &sent).await?;
                    // Timers held here of entities the owner has none of
                    // fired there (or were never acknowledged).
                    for (key, here) in timers_here {
                        import_timers(inner, key, Vec::new(), &here, TimerMerge::Replace).await?;
                    }
                }
                return Ok(n);
            }
            Ok(Ok(PeerResponse::Failed(e))) => return Err(e.to_string()),
            Ok(Ok(other)) => return Err(format!("unexpected {other:?}")),
        }
    }
}

/// One entity of a shard being read from a source.
struct Arriving {
    key: EntityKey,
    /// The local history's last sequence number before the source's.
    before: u64,
    /// The source's last sequence number (0: it has timers only).
    last: u64,
    /// The source's pending timers of the entity.
    timers: Vec<(u64, u64, Vec<u8>)>,
}

impl Arriving {
    /// Once all of the entity's chunks are in: from the live owner
    /// (`authoritative`) the local copy becomes exactly the owner's (its
    /// unacknowledged tail cut); the timers follow
    /// `cairn_cluster::replication::timer_merge`.
    async fn settle(
        self,
        inner: &Arc<Inner>,
        here: &[TimerRecord],
        authoritative: bool,
    ) -> Result<(), String> {
        if authoritative {
            cut_to(inner, &self.key, self.last).await?;
        }
        let local = Position::of(here.iter().map(|t| (t.timer_id, &t.command[..])));
        let source = Position::of(self.timers.iter().map(|t| (t.0, &t.2[..])));
        let merge = timer_merge((self.before, local), (self.last, source), authoritative);
        import_timers(inner, self.key, self.timers, here, merge).await
    }
}

/// After a shard's whole history came from its live owner: an entity of
/// the shard held here that the owner has no event of is an unacknowledged
/// tail too, and goes.
async fn drop_unsent(
    inner: &Arc<Inner>,
    shard: ShardId,
    count: u32,
    sent: &std::collections::HashSet<(String, String)>,
) -> Result<(), String> {
    let journal = inner.local_journal.clone();
    for d in inner.node.deployments() {
        let ids = journal
            .entity_ids(&d.entity_type, usize::MAX)
            .await
            .map_err(|e| e.to_string())?;
        for id in ids {
            if shard_of(&d.entity_type, &id, count) != shard
                || sent.contains(&(d.entity_type.clone(), id.clone()))
            {
                continue;
            }
            let key = EntityKey::new(d.entity_type.clone(), id);
            let dropped = journal.highest_seq(&key).await.map_err(|e| e.to_string())?;
            journal.truncate(&key, 0).await.map_err(|e| e.to_string())?;
            tracing::warn!(%key, dropped, "an unacknowledged tail truncated to the owner's history");
        }
    }
    Ok(())
}

/// Appends what `h` holds beyond the local copy of the entity; returns how
/// many events that was. From the shard's `authoritative` source (its live
/// owner handing it over), the local copy is first truncated to the
/// history both share: what this node holds beyond was never acknowledged
/// (or was lost with `min_acks = 0`). From any other source, a copy that
/// disagrees is refused.
pub(crate) async fn import(
    inner: &Arc<Inner>,
    h: EntityHistory,
    authoritative: bool,
) -> Result<usize, String> {
    let key = EntityKey::new(h.entity_type, h.entity_id);
    let journal = inner.local_journal.clone();
    let mut have = journal.highest_seq(&key).await.map_err(|e| e.to_string())?;
    // `h` may be one chunk of the history: compare the events both hold,
    // by sequence number.
    if let (Some(first), Some(last)) = (h.events.first().map(|e| e.0), h.events.last().map(|e| e.0))
        && first <= have
    {
        let upto = have.min(last);
        let held = journal
            .read(&key, first, upto, usize::MAX)
            .await
            .map_err(|e| e.to_string())?;
        let agreed = held
            .iter()
            .zip(h.events.iter())
            .take_while(|(mine, theirs)| {
                (mine.seq, mine.timestamp_ms, &mine.version, &mine.payload)
                    == (theirs.0, theirs.1, &theirs.2, &theirs.3)
            })
            .count() as u64;
        let common = first - 1 + agreed;
        if common < upto {
            if !authoritative {
                tracing::error!(%key, seq = common + 1, "two histories: the shard's copies differ");
                return Err(format!("{key}: two histories at #{}", common + 1));
            }
            journal
                .truncate(&key, common)
                .await
                .map_err(|e| e.to_string())?;
            tracing::warn!(%key, dropped = have - common, "an unacknowledged tail truncated to the owner's history");
            have = common;
        }
    }
    let events: Vec<EventRecord> = h
        .events
        .into_iter()
        .filter(|e| e.0 > have)
        .map(|(seq, timestamp_ms, version, payload)| EventRecord {
            seq,
            timestamp_ms,
            version,
            payload,
        })
        .collect();
    if events.is_empty() {
        return Ok(0);
    }
    let n = events.len();
    if events[0].seq != have + 1 {
        return Err(format!("{key}: history has a gap after #{have}"));
    }
    journal
        .append(Write {
            key,
            events,
            add_timers: Vec::new(),
            remove_timers: Vec::new(),
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(n)
}

/// After the last chunk of an entity's history from the shard's
/// authoritative source: what this node holds beyond `last` was never
/// acknowledged, and goes.
async fn cut_to(inner: &Arc<Inner>, key: &EntityKey, last: u64) -> Result<(), String> {
    let journal = &inner.local_journal;
    let have = journal.highest_seq(key).await.map_err(|e| e.to_string())?;
    if have > last {
        journal
            .truncate(key, last)
            .await
            .map_err(|e| e.to_string())?;
        tracing::warn!(%key, dropped = have - last, "an unacknowledged tail truncated to the owner's history");
    }
    Ok(())
}

/// Serves one accepted peer connection of member `peer` (the node id its
/// certificate names): datagrams to gossip, each stream one call.
pub(crate) async fn serve_peer(inner: Arc<Inner>, conn: quinn::Connection, peer: u64) {
    let remote = conn.remote_address();
    loop {
        tokio::select! {
            d = conn.read_datagram() => match d {
                Ok(d) => {
                    if inner.peers.faults.is_blocked(remote) {
                        continue;
                    }
                    match d.first() {
                        Some(&TAG_GOSSIP) => {
                            let _ = inner.gossip.send(GossipInput::Data(peer, d[1..].to_vec()));
                        }
                        Some(&TAG_HEARTBEAT) => gossip::heartbeat(&inner, &d[1..], peer),
                        _ => {}
                    }
                }
                Err(_) => break,
            },
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    if inner.peers.faults.is_blocked(remote) {
                        continue;
                    }
                    tokio::spawn(serve_call(inner.clone(), send, recv, peer));
                }
                Err(_) => break,
            },
        }
    }
}

/// Serves the calls of one stream, one after the other, until the peer
/// finishes it; a shard fetch takes its stream for itself.
async fn serve_call(
    inner: Arc<Inner>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: u64,
) {
    loop {
        let (req, _frame): (PeerRequest, _) =
            match read_frame_admitted(&mut recv, MAX_FRAME, &inner.frames).await {
                Ok(r) => r,
                Err(cairn_proto::FrameError::Finished | cairn_proto::FrameError::Stream(_)) => {
                    break;
                }
                Err(e) => {
                    let _ =
                        write_answer(&mut send, &failed(PeerFailure::BadRequest(e.to_string())))
                            .await;
                    break;
                }
            };
        if let PeerRequest::FetchShard { shard, shard_count } = req {
            serve_fetch(&inner, &mut send, shard, shard_count).await;
            break;
        }
        let answer = answer(&inner, req, peer).await;
        if !write_answer(&mut send, &answer).await {
            break;
        }
    }
    let _ = send.finish();
}

/// The answer to `req` from member `peer`. A peer speaks for itself only:
/// a join, a lease, a leave or a decision-log message naming another node
/// than its certificate's is refused, and so is a proposal the committed
/// state says it may not make ([`cairn_raft::ClusterState::may_propose`]).
/// Joins and leaves are not passed on to the leader (the leader could not
/// tell who sent them): a member that is not the leader names it.
async fn answer(inner: &Arc<Inner>, req: PeerRequest, peer: u64) -> PeerResponse {
    let not_itself = |claimed: u64| {
        tracing::warn!(peer, claimed, "a peer spoke for another node: refused");
        failed(PeerFailure::Identity {
            certified: peer,
            claimed,
        })
    };
    match req {
        PeerRequest::Hello { version } if version != PEER_PROTOCOL_VERSION => {
            failed(PeerFailure::Version {
                ours: PEER_PROTOCOL_VERSION,
                theirs: version,
            })
        }
        PeerRequest::Hello { .. } => PeerResponse::Hello {
            node: inner.id,
            boot: inner.boot.load(std::sync::atomic::Ordering::Relaxed),
            version: PEER_PROTOCOL_VERSION,
        },
        PeerRequest::Join { node, .. } if node != peer => not_itself(node),
        PeerRequest::Join { node, addr } => {
            if inner.log.is_leader() {
                match inner.log.add_member(node, addr).await {
                    Ok(()) => PeerResponse::Done,
                    Err(e) => failed(PeerFailure::Log(e.to_string())),
                }
            } else {
                not_leader(inner)
            }
        }
        PeerRequest::Raft(b) => PeerResponse::Raft(inner.log.handle_from(&b, peer).await),
        PeerRequest::Propose(cmd) => {
            let allowed = inner.log.state().borrow().may_propose(peer, &cmd);
            if let Err(e) = allowed {
                tracing::warn!(peer, error = %e, "a proposal refused");
                return failed(PeerFailure::Refused(e));
            }
            if inner.log.is_leader() {
                match inner.log.propose(cmd, COMMIT_TIMEOUT).await {
                    Ok(_) => PeerResponse::Done,
                    Err(e) => failed(PeerFailure::Log(e.to_string())),
                }
            } else {
                PeerResponse::NotLeader(inner.log.leader().map(|l| l.1))
            }
        }
        PeerRequest::Forward {
            shard,
            epoch,
            request,
        } => {
            // A sender with a newer table: let ours catch up first.
            let deadline = Instant::now() + Duration::from_secs(2);
            while inner.router().table().epoch() < epoch && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let (tx, rx) = oneshot::channel();
            let route = inner
                .router()
                .route_forwarded(ShardId(shard), (request, tx));
            match route {
                Route::Redirect(owner, _) => PeerResponse::Redirect(owner.0),
                route => PeerResponse::Response(inner.follow(shard, route, rx).await),
            }
        }
        PeerRequest::Release { shards, epoch } => match release(inner, &shards, epoch).await {
            Ok(()) => PeerResponse::Done,
            Err(e) => failed(PeerFailure::Release(e)),
        },
        PeerRequest::Lease { node } if node != peer => not_itself(node),
        PeerRequest::Lease { node } => {
            let epoch = if inner.log.is_leader() && inner.lease_ok() {
                inner.grant(node)
            } else {
                None
            };
            PeerResponse::Lease {
                granted: epoch.is_some(),
                epoch: epoch.unwrap_or(0),
            }
        }
        PeerRequest::Leave { node } if node != peer => not_itself(node),
        PeerRequest::Leave { node } => {
            if inner.log.is_leader() {
                match inner.log.remove_member(node).await {
                    Ok(()) => PeerResponse::Done,
                    Err(e) => failed(PeerFailure::Log(e.to_string())),
                }
            } else {
                not_leader(inner)
            }
        }
        PeerRequest::Info => PeerResponse::Info {
            live_entities: live_entities(&inner.node),
        },
        PeerRequest::Component { sha256 } => match inner.node.component_by_hash(&sha256) {
            Some(b) => PeerResponse::Component(b),
            None => failed(PeerFailure::NoComponent(sha256)),
        },
        PeerRequest::FetchShard { .. } => failed(PeerFailure::BadRequest(
            "a shard fetch is a stream of its own".into(),
        )),
        PeerRequest::FetchEntity {
            entity_type,
            entity_id,
            from,
        } => {
            let key = EntityKey::new(entity_type.clone(), entity_id.clone());
            // The entity's timers come with every chunk (a read-back merges
            // them: a receiver's record of the sends it applied is written
            // with the events it applied them with).
            let read = async {
                let events = read_chunk(&inner.local_journal, &key, from, i64::MAX as u64).await?;
                let timers = inner.local_journal.entity_timers(&key).await?;
                Ok::<_, cairn_store::JournalError>((events, timers))
            };
            match read.await {
                Ok((events, timers)) => PeerResponse::Entity(EntityHistory {
                    entity_type,
                    entity_id,
                    events: events
                        .into_iter()
                        .map(|e| (e.seq, e.timestamp_ms, e.version, e.payload))
                        .collect(),
                    timers: timer_tuples(Some(timers)),
                }),
                Err(e) => failed(PeerFailure::Storage(e.to_string())),
            }
        }
        PeerRequest::Truncate {
            shard,
            epoch,
            entity_type,
            entity_id,
            after,
        } => {
            super::replicate::replica_truncate(
                inner,
                shard,
                epoch,
                EntityKey::new(entity_type, entity_id),
                after,
            )
            .await
        }
        r @ PeerRequest::Replicate { .. } => serve_replicate(inner, r).await,
        PeerRequest::ReplicateBatch(writes) => PeerResponse::Batch(
            futures_util::future::join_all(writes.into_iter().map(|w| serve_replicate(inner, w)))
                .await,
        ),
    }
}

/// Not the leader: the leader's address if known.
fn not_leader(inner: &Arc<Inner>) -> PeerResponse {
    PeerResponse::NotLeader(inner.log.leader().map(|l| l.1))
}

/// The old owner sends the history of every entity of a released shard.
/// A primary's write for this node as a replica (one of a batch, or alone).
async fn serve_replicate(inner: &Arc<Inner>, req: PeerRequest) -> PeerResponse {
    let PeerRequest::Replicate {
        shard,
        epoch,
        entity_type,
        entity_id,
        prev,
        events,
        add_timers,
        remove_timers,
        timers_at,
        whole_timers,
    } = req
    else {
        return failed(PeerFailure::BadRequest(
            "a batch of writes holds something else".into(),
        ));
    };
    let timers = super::replicate::TimerChanges {
        add: add_timers
            .into_iter()
            .map(|(timer_id, fire_at_ms, command)| TimerRecord {
                timer_id,
                fire_at_ms,
                command,
            })
            .collect(),
        remove: remove_timers,
    };
    super::replicate::replica_append(
        inner,
        shard,
        epoch,
        EntityKey::new(entity_type, entity_id),
        prev,
        events,
        timers,
        timers_at.map(|(writes, chain, stale)| cairn_cluster::timers::Position {
            writes,
            chain,
            stale,
        }),
        whole_timers,
    )
    .await
}

async fn serve_fetch(inner: &Arc<Inner>, send: &mut quinn::SendStream, shard: u32, count: u32) {
    if inner.router().serves(ShardId(shard)) {
        let _ = write_answer(send, &failed(PeerFailure::StillServed(shard))).await;
        return;
    }
    let journal = inner.local_journal.clone();
    // The shard's timers go with its entities' histories (timers of
    // entities without events in histories of their own).
    let mut timers = match shard_timers(inner, ShardId(shard), count).await {
        Ok(t) => t,
        Err(e) => {
            let _ = write_answer(send, &failed(PeerFailure::Storage(e))).await;
            return;
        }
    };
    for d in inner.node.deployments() {
        let ty = d.entity_type.clone();
        let ids = match journal.entity_ids(&ty, usize::MAX).await {
            Ok(ids) => ids,
            Err(e) => {
                let _ = write_answer(send, &failed(PeerFailure::Storage(e.to_string()))).await;
                return;
            }
        };
        for id in ids
            .into_iter()
            .filter(|id| shard_of(&ty, id, count).0 == shard)
        {
            // In chunks of bounded size, the first with the timers.
            let key = EntityKey::new(ty.clone(), id.clone());
            let mut from = 1;
            let mut first = true;
            loop {
                let events = match read_chunk(&journal, &key, from, i64::MAX as u64).await {
                    Ok(e) => e,
                    Err(e) => {
                        let _ =
                            write_answer(send, &failed(PeerFailure::Storage(e.to_string()))).await;
                        return;
                    }
                };
                // Without events its timers go alone, with the rest below.
                let Some(last) = events.last().map(|e| e.seq) else {
                    break;
                };
                from = last + 1;
                let h = EntityHistory {
                    entity_type: ty.clone(),
                    entity_id: id.clone(),
                    events: events
                        .into_iter()
                        .map(|e| (e.seq, e.timestamp_ms, e.version, e.payload))
                        .collect(),
                    timers: if first {
                        timer_tuples(timers.remove(&key))
                    } else {
                        Vec::new()
                    },
                };
                first = false;
                if !write_answer(send, &PeerResponse::Entity(h)).await {
                    return;
                }
            }
        }
    }
    for (key, t) in timers {
        let h = EntityHistory {
            entity_type: key.entity_type,
            entity_id: key.entity_id,
            events: Vec::new(),
            timers: timer_tuples(Some(t)),
        };
        if !write_answer(send, &PeerResponse::Entity(h)).await {
            return;
        }
    }
    let _ = write_answer(send, &PeerResponse::Done).await;
}

/// Arms the timers of shards that became served here (their timers came
/// with their histories, or were held here from before a restart).
async fn arm_timers(inner: &Arc<Inner>, shards: Vec<u32>) {
    let count = inner.shard_count();
    let set: std::collections::BTreeSet<u32> = shards.into_iter().collect();
    if let Err(e) = inner
        .node
        .arm_timers_where(|ty, id| set.contains(&shard_of(ty, id, count).0))
        .await
    {
        tracing::warn!(error = %e, "cannot read the pending timers");
    }
}

/// The pending timers of a shard's entities in the local journal.
async fn shard_timers(
    inner: &Arc<Inner>,
    shard: ShardId,
    count: u32,
) -> Result<std::collections::HashMap<EntityKey, Vec<TimerRecord>>, String> {
    let mut out: std::collections::HashMap<EntityKey, Vec<TimerRecord>> =
        std::collections::HashMap::new();
    for (key, t) in inner
        .local_journal
        .pending_timers()
        .await
        .map_err(|e| e.to_string())?
    {
        if shard_of(&key.entity_type, &key.entity_id, count) == shard {
            out.entry(key).or_default().push(t);
        }
    }
    Ok(out)
}

fn timer_tuples(t: Option<Vec<TimerRecord>>) -> Vec<(u64, u64, Vec<u8>)> {
    t.unwrap_or_default()
        .into_iter()
        .map(|t| (t.timer_id, t.fire_at_ms, t.command))
        .collect()
}

/// Makes the local timers of `key` follow what a source of the shard
/// holds, by the rule `merge` (`cairn_cluster::timers::merge_timers`):
/// from its live owner or a longer copy exactly its set (a timer held here
/// but not there fired there, or was never acknowledged); from a copy as
/// long, what it adds (a timer, a tombstone over an armed timer, a larger
/// mark).
pub(crate) async fn import_timers(
    inner: &Arc<Inner>,
    key: EntityKey,
    fetched: Vec<(u64, u64, Vec<u8>)>,
    here: &[TimerRecord],
    merge: TimerMerge,
) -> Result<(), String> {
    let source: Vec<TimerRecord> = fetched
        .into_iter()
        .map(|(timer_id, fire_at_ms, command)| TimerRecord {
            timer_id,
            fire_at_ms,
            command,
        })
        .collect();
    let states = |ts: &[TimerRecord]| -> Vec<(u64, TimerState)> {
        ts.iter().map(|t| (t.timer_id, timer_state(t))).collect()
    };
    let changes = merge_timers(merge, &states(here), &states(&source));
    if changes.take.is_empty() && changes.drop.is_empty() {
        return Ok(());
    }
    let add_timers: Vec<TimerRecord> = source
        .into_iter()
        .filter(|t| changes.take.contains(&t.timer_id))
        .collect();
    inner
        .local_journal
        .append(Write {
            key,
            events: Vec::new(),
            add_timers,
            remove_timers: changes.drop,
        })
        .await
        .map_err(|e| e.to_string())
}

/// Every node: keeps the active component of each entity type equal to the
/// newest committed deploy, fetching components it lacks from its peers,
/// and reports what runs here (`Command::Activated`).
pub(crate) async fn sync_deploys(inner: Arc<Inner>) {
    let mut rx = inner.log.state();
    loop {
        let state = rx.borrow_and_update().clone();
        let mut types: Vec<&str> = state
            .deploys
            .iter()
            .map(|d| d.entity_type.as_str())
            .collect();
        types.sort_unstable();
        types.dedup();
        for ty in types {
            let Some(want) = state.latest_deploy(ty) else {
                continue;
            };
            let active = inner
                .node
                .deployments()
                .into_iter()
                .find(|d| d.entity_type == ty);
            if active.as_ref().is_some_and(|a| a.hash == want.sha256) {
                let deploy = active.map_or(0, |a| a.deploy);
                let reported = state
                    .active
                    .get(&(ty.to_owned(), inner.id))
                    .is_some_and(|(d, h)| *d == deploy && *h == want.sha256);
                if !reported {
                    let cmd = Command::Activated {
                        node: inner.id,
                        entity_type: ty.to_owned(),
                        deploy,
                        sha256: want.sha256.clone(),
                    };
                    if let Err(e) = propose(&inner, cmd).await {
                        tracing::debug!(error = %e, "activation not reported yet");
                    }
                }
                continue;
            }
            if let Err(e) = activate(&inner, ty, &want.sha256).await {
                tracing::warn!(entity_type = ty, sha256 = %want.sha256, error = %e, "cannot activate the cluster's deploy yet");
            }
        }
        // Retry what failed a little later, or wait for the next commit
        // (a log that stopped changes no more: wait, do not spin).
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn activate(inner: &Arc<Inner>, ty: &str, sha256: &str) -> Result<(), String> {
    let versions = inner.node.versions(ty);
    if let Some(d) = versions.deploys.iter().find(|d| d.hash == sha256) {
        inner
            .node
            .rollback(ty, Some(d.deploy))
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            entity_type = ty,
            deploy = d.deploy,
            "switched to the cluster's deploy"
        );
        return Ok(());
    }
    let wasm = match inner.node.component_by_hash(sha256) {
        Some(w) => w,
        None => fetch_component(inner, sha256).await?,
    };
    let d = inner
        .node
        .deploy(ty, wasm)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        entity_type = ty,
        deploy = d.deploy,
        "deployed the cluster's component"
    );
    Ok(())
}

async fn fetch_component(inner: &Arc<Inner>, sha256: &str) -> Result<Vec<u8>, String> {
    let peers: Vec<std::net::SocketAddr> = {
        let v = inner.view();
        v.addrs
            .iter()
            .filter(|(id, _)| **id != inner.id && !v.down.contains(id))
            .map(|(_, a)| *a)
            .collect()
    };
    for addr in peers {
        let req = PeerRequest::Component {
            sha256: sha256.to_owned(),
        };
        if let Ok(PeerResponse::Component(b)) =
            inner.peers.call(addr, &req, Duration::from_secs(30)).await
            && cairn_host::registry::sha256_hex(&b) == sha256
        {
            return Ok(b);
        }
    }
    Err("no peer holds the component".into())
}

/// Promotes a replica for every shard whose owner is down and whose lease
/// has certainly expired: the leader has granted it nothing for `LEASE +
/// max_drift`, counted from the later of its last grant and this node's
/// leadership (a grant by a previous leader is older than that). The first
/// live replica in the ring becomes the owner with a new epoch; it then
/// merges the shard's history from every other replica before serving, so
/// every replica must be live (with `min_acks >= 1` every acknowledged
/// event is on one of them). Returns whether decisions were committed.
async fn failover(inner: &Arc<Inner>, leader_since: Instant) -> bool {
    let Some(table) = inner.log.state().borrow().table.clone() else {
        return false;
    };
    let r = super::replicate::max_replicas(inner);
    let (down, unreachable) = {
        let v = inner.view();
        (v.down.clone(), v.unreachable.clone())
    };
    if down.is_empty() {
        return false;
    }
    let to_ids = |s: &std::collections::BTreeSet<u64>| -> std::collections::BTreeSet<NodeId> {
        s.iter().map(|n| NodeId(*n)).collect()
    };
    let (down, unreachable) = (to_ids(&down), to_ids(&unreachable));
    let members = super::replicate::data_members(inner);
    // The down members whose leases have certainly expired get no new
    // grant until this round's decisions are committed (or given up).
    let barred = inner.bar_expired(down.iter().map(|n| n.0), leader_since);
    let expired = |owner: NodeId| barred.contains(&owner.0);
    let ready_epoch = |shard: ShardId| inner.log.state().borrow().ready.get(&shard.0).copied();
    let is_ready = |shard: ShardId, epoch: u64| ready_epoch(shard).is_some_and(|e| e >= epoch);
    let decisions =
        cairn_cluster::replication::promotions(&cairn_cluster::replication::FailoverView {
            table: &table,
            members: &members,
            replicas: r,
            policies: &super::replicate::policies(inner),
            down: &down,
            unreachable: &unreachable,
            lease_expired: &expired,
            ready: &is_ready,
        });
    // Shards of a down owner that cannot fail over because their owner died
    // before reporting them ready: said every few seconds, for operators.
    let stuck: Vec<(u32, u64, Option<u64>)> = table
        .iter()
        .filter_map(|(shard, a)| a.map(|a| (shard, a)))
        .filter(|(shard, a)| down.contains(&a.owner) && !is_ready(*shard, a.epoch))
        .map(|(shard, a)| (shard.0, a.epoch, ready_epoch(shard)))
        .collect();
    if !stuck.is_empty() {
        static SAID: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
        let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
        if said.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            *said = Some(Instant::now());
            tracing::warn!(
                shards = stuck.len(),
                first = ?&stuck[..stuck.len().min(8)],
                "failover: shards of a down member were never reported ready by it; they wait for it to return"
            );
        }
    }
    if decisions.is_empty() {
        inner.unbar(&barred);
        return false;
    }
    let n = decisions.len();
    let committed = inner
        .log
        .propose(Command::Decide(decisions), COMMIT_TIMEOUT)
        .await;
    inner.unbar(&barred);
    match committed {
        Ok(_) => {
            tracing::warn!(
                shards = n,
                "failover: replicas promoted for the shards of a down member"
            );
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "failover decisions not committed");
            false
        }
    }
}

/// Commits that this node holds the whole history of these shards (only
/// such a shard may later fail over from it); retried a few times.
async fn report_ready(inner: &Arc<Inner>, shards: Vec<(u32, u64)>) {
    for _ in 0..20 {
        match propose(inner, Command::Ready(shards.clone())).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "ready not committed yet"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tracing::warn!(shards = shards.len(), "could not report shards ready");
}
