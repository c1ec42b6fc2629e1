//! Replication of the journal in a cluster: a [`Journal`] over the node's
//! local one, so the entity code does not change. The primary of a shard
//! sends a write to the shard's replicas; once `min_acks` of them have
//! acknowledged it (each after its fsync) it appends it locally, and the
//! write is acknowledged after that fsync. A replica appends what it
//! receives durably with the same sequence numbers, timestamps and
//! behavior versions, and applies nothing (it is passive).
//!
//! Fencing: every replicated write carries the epoch of the shard's
//! allocation; a replica refuses a write of an epoch older than the newest
//! it has seen for the shard or than its committed table's, so a deposed
//! primary gets no acknowledgement.
//!
//! A replica that lacks earlier events of the entity (it was down, or just
//! became a replica) answers with the sequence number it has; the primary
//! sends the missing events from its own journal with the write.
//!
//! Replicas of a shard: the committed replica set of its allocation (and,
//! while its owner moves it to another set, that set too: see
//! `replicas.rs`); a type with fewer `replicas` uses a prefix of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use cairn_cluster::replication::{ReplicaWrite, replica_write};
use cairn_cluster::timers::{POSITION_ID, Position, TimersTake, replica_takes};
use cairn_cluster::write::{Answer, Plan, Progress, WriteRefused, WriteView, plan};
use cairn_cluster::{MemberState, NodeId, ShardId, shard_of};
use cairn_store::{
    BoxFuture, EntityKey, EventRecord, FeedPage, Fence, Journal, JournalError, PackedEvents,
    TimerRecord, Write,
};
use tokio::sync::mpsc;

use crate::Inner;
use crate::peer::{PeerError, PeerFailure, PeerRequest, PeerResponse, failed, read_chunk};
use cairn_host::placement::{Admission, Delivery, DeliveryFuture, DeliveryOutcome, Placement};

use crate::tail::TailCache;

/// The replication of a node's journal, attached to its cluster once that
/// has started (before, and on a single node, writes are local only).
///
/// It is also the node's [`Placement`]: which entities the node may run
/// (the shards it serves under a fresh lease) and where the commands of
/// its timers and sends go (through the cluster's routing).
#[derive(Default)]
pub struct Replication {
    cluster: Arc<OnceLock<Weak<Inner>>>,
    local: OnceLock<Arc<dyn Journal>>,
    tails: OnceLock<Arc<TailCache>>,
}

impl Replication {
    /// A replication not attached to a cluster yet.
    pub fn new() -> Arc<Replication> {
        Arc::new(Replication::default())
    }

    /// Wraps the node's local journal (for [`cairn_host::Node::open_with`]).
    pub fn wrap(self: &Arc<Self>, local: Arc<dyn Journal>) -> Arc<dyn Journal> {
        // Every local write goes through the tail cache.
        let tails = TailCache::new(local);
        let _ = self.tails.set(tails.clone());
        let local: Arc<dyn Journal> = tails;
        let _ = self.local.set(local.clone());
        Arc::new(ReplicatedJournal {
            repl: self.clone(),
            local,
        })
    }

    /// The local journal under the replication, if wrapped.
    pub(crate) fn local(&self) -> Option<Arc<dyn Journal>> {
        self.local.get().cloned()
    }

    /// The newest event of each entity of the local journal, if wrapped.
    pub(crate) fn tails(&self) -> Option<Arc<TailCache>> {
        self.tails.get().cloned()
    }

    pub(crate) fn attach(&self, inner: Weak<Inner>) {
        let _ = self.cluster.set(inner);
    }
}

impl Placement for Replication {
    fn admit(&self, key: &EntityKey, live: bool) -> Admission {
        match self.cluster.get().and_then(Weak::upgrade) {
            Some(inner) => inner.admit(key, live),
            None => Admission::NotYet("this node has not started its cluster part yet".into()),
        }
    }

    fn deliver(&self, delivery: Delivery) -> DeliveryFuture {
        let cluster = self.cluster.clone();
        Box::pin(async move {
            // Outbox messages due at start-up fire before the cluster part
            // attaches.
            match cluster.get().and_then(Weak::upgrade) {
                Some(inner) => super::deliver::deliver_once(&inner, delivery).await,
                None => {
                    DeliveryOutcome::Retry("this node's cluster part has not started yet".into())
                }
            }
        })
    }
}

/// The replicated journal: writes go to the shard's replicas too; reads are local.
struct ReplicatedJournal {
    repl: Arc<Replication>,
    local: Arc<dyn Journal>,
}

impl Journal for ReplicatedJournal {
    fn append(&self, write: Write) -> BoxFuture<'static, Result<(), JournalError>> {
        self.append_fenced(write, None)
    }

    /// A write of an entity of this node: refused unless it carries the
    /// shard's current allocation on this node and the lease holds (see
    /// [`check_fence`]); its events and timer changes go to the replicas.
    /// Only a deletion of timers that carries no allocation (the node's own
    /// bookkeeping) stays local.
    fn append_fenced(
        &self,
        write: Write,
        fence: Option<Fence>,
    ) -> BoxFuture<'static, Result<(), JournalError>> {
        let local = self.local.clone();
        let inner = self.repl.cluster.get().and_then(Weak::upgrade);
        Box::pin(async move {
            if fence.is_none() && write.events.is_empty() && write.add_timers.is_empty() {
                return local.append(write).await;
            }
            let Some(inner) = inner else {
                return Err(JournalError::Fenced(format!(
                    "{}: this node has not started its cluster part yet",
                    write.key
                )));
            };
            let (epoch, lease) = check_fence(&inner, &write.key, fence)?;
            replicated_append(&inner, &local, write, epoch, lease).await
        })
    }

    fn read(
        &self,
        key: &EntityKey,
        from: u64,
        to: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<EventRecord>, JournalError>> {
        self.local.read(key, from, to, limit)
    }

    fn read_packed(
        &self,
        key: &EntityKey,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<PackedEvents, JournalError>> {
        self.local.read_packed(key, from, limit)
    }

    fn highest_seq(&self, key: &EntityKey) -> BoxFuture<'static, Result<u64, JournalError>> {
        self.local.highest_seq(key)
    }

    // The timers position records are this journal's own: the node sees
    // the timers it wrote.
    fn pending_timers(
        &self,
    ) -> BoxFuture<'static, Result<Vec<(EntityKey, TimerRecord)>, JournalError>> {
        let all = self.local.pending_timers();
        Box::pin(async move {
            let mut all = all.await?;
            all.retain(|(_, t)| t.timer_id != POSITION_ID);
            Ok(all)
        })
    }

    fn entity_timers(
        &self,
        key: &EntityKey,
    ) -> BoxFuture<'static, Result<Vec<TimerRecord>, JournalError>> {
        let all = self.local.entity_timers(key);
        Box::pin(async move {
            let mut all = all.await?;
            all.retain(|t| t.timer_id != POSITION_ID);
            Ok(all)
        })
    }

    fn timer(
        &self,
        key: &EntityKey,
        timer_id: u64,
    ) -> BoxFuture<'static, Result<Option<TimerRecord>, JournalError>> {
        if timer_id == POSITION_ID {
            return Box::pin(std::future::ready(Ok(None)));
        }
        self.local.timer(key, timer_id)
    }

    fn read_feed(
        &self,
        entity_type: &str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<FeedPage, JournalError>> {
        self.local.read_feed(entity_type, from, limit)
    }

    fn entity_ids(
        &self,
        entity_type: &str,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<String>, JournalError>> {
        self.local.entity_ids(entity_type, limit)
    }

    fn truncate(
        &self,
        key: &EntityKey,
        after: u64,
    ) -> BoxFuture<'static, Result<(), JournalError>> {
        let local = self.local.clone();
        let inner = self.repl.cluster.get().and_then(Weak::upgrade);
        let key = key.clone();
        Box::pin(async move {
            if let Some(inner) = inner {
                replicated_truncate(&inner, &key, after).await?;
            }
            local.truncate(&key, after).await
        })
    }
}

/// The most replicas any deployed type asks for: the replica set of a
/// shard for failover (smaller sets of other types are its prefixes).
pub(crate) fn max_replicas(inner: &Inner) -> usize {
    let config = inner.node.config();
    inner
        .node
        .deployments()
        .iter()
        .map(|d| config.settings_for(&d.entity_type).replication.replicas)
        .max()
        .unwrap_or(config.defaults.replication.replicas)
}

/// How each deployed type replicates (the failover's rule needs all).
pub(crate) fn policies(inner: &Inner) -> Vec<cairn_cluster::replication::Policy> {
    let config = inner.node.config();
    let mut out: Vec<cairn_cluster::replication::Policy> = inner
        .node
        .deployments()
        .iter()
        .map(|d| {
            let r = config.settings_for(&d.entity_type).replication;
            cairn_cluster::replication::Policy {
                replicas: r.replicas,
                min_acks: r.min_acks,
            }
        })
        .collect();
    if out.is_empty() {
        let r = config.defaults.replication;
        out.push(cairn_cluster::replication::Policy {
            replicas: r.replicas,
            min_acks: r.min_acks,
        });
    }
    out.sort_by_key(|p| (p.replicas, p.min_acks));
    out.dedup();
    out
}

/// Members that may hold a shard's data: committed `up` or `leaving`, by id.
pub(crate) fn data_members(inner: &Inner) -> Vec<NodeId> {
    let state = inner.log.state();
    let s = state.borrow();
    s.members
        .iter()
        .filter(|(_, r)| matches!(r.state, MemberState::Up | MemberState::Leaving))
        .map(|(id, _)| NodeId(*id))
        .collect()
}

/// Fencing on the writer's side: the write's allocation must be the
/// shard's current one in this node's committed table, owned by this node,
/// and this node's lease must hold now. Returns the epoch the replicas
/// check in turn, and when the renewal of the lease that allowed the write
/// was sent (the write's local append must still fall within that lease).
fn check_fence(
    inner: &Inner,
    key: &EntityKey,
    fence: Option<Fence>,
) -> Result<(u64, std::time::Instant), JournalError> {
    let Some(fence) = fence else {
        return Err(JournalError::Fenced(format!(
            "{key}: a write that carries no allocation (not from an entity started by this node)"
        )));
    };
    let rule = cairn_cluster::fence::Fence {
        shard: ShardId(fence.shard),
        epoch: fence.epoch,
    };
    let sent = inner.lease_sent();
    let lease = inner.lease_ok();
    cairn_cluster::fence::may_write(inner.router().table(), NodeId(inner.id), rule, lease)
        .map_err(|refusal| JournalError::Fenced(format!("{key}: {refusal}")))?;
    let sent = sent.ok_or_else(|| JournalError::Fenced(format!("{key}: no lease")))?;
    Ok((fence.epoch, sent))
}

async fn replicated_append(
    inner: &Arc<Inner>,
    local: &Arc<dyn Journal>,
    write: Write,
    epoch: u64,
    lease: std::time::Instant,
) -> Result<(), JournalError> {
    let settings = inner
        .node
        .config()
        .settings_for(&write.key.entity_type)
        .replication;
    let shard = shard_of(
        &write.key.entity_type,
        &write.key.entity_id,
        inner.shard_count(),
    );
    // Held until the write is settled: a change of replica set waits for
    // the writes that count the old set alone (see `replicas.rs`).
    let gate = inner.changes.gate(shard.0);
    let _gate = gate.read().await;
    let sets = super::replicas::write_sets(inner, shard, &settings);
    let sets: Vec<(Vec<NodeId>, usize)> = sets
        .into_iter()
        .map(|(set, need)| (set.into_iter().map(NodeId).collect(), need))
        .collect();
    // An empty write (nothing a replica keeps) stays local.
    let replicated =
        !(write.events.is_empty() && write.add_timers.is_empty() && write.remove_timers.is_empty());
    let live: Vec<NodeId> = {
        let v = inner.view();
        sets.iter()
            .flat_map(|(set, _)| set.iter().copied())
            .filter(|r| !v.down.contains(&r.0) && !v.unreachable.contains(&r.0))
            .collect()
    };
    // The local history's end, read only for a write that may be sent.
    let have = if sets.is_empty() || !replicated {
        0
    } else {
        local.highest_seq(&write.key).await?
    };
    let dirty = inner
        .dirty
        .lock()
        .map(|d| d.contains(&write.key))
        .unwrap_or(false);
    // Decided apart from the awaits below (the view is not `Send`).
    let planned = plan(&WriteView {
        sets: &sets,
        live: &|r: NodeId| live.contains(&r),
        dirty,
        have,
        first: write.events.first().map(|e| e.seq),
        replicated,
        lease_sent: lease.saturating_duration_since(inner.started),
    });
    let (to, mut progress) = match planned {
        Ok(Plan::Local) => return local.append(write).await,
        Ok(Plan::Resync) => return resync(inner, local, &write.key, shard).await,
        Ok(Plan::Send(to, progress)) => (to, progress),
        Err(WriteRefused::Conflict { first, .. }) => {
            return Err(JournalError::Conflict {
                key: write.key.clone(),
                seq: first,
            });
        }
        Err(refused) => {
            return Err(JournalError::Replication(format!(
                "{}: shard {}: {refused}; the write is refused",
                write.key, shard.0
            )));
        }
    };
    // The write carries where the entity's timers stand
    // (`cairn_cluster::timers`): a write with events starts again from its
    // newest event, a timers-only write counts one more.
    let before = position_of(local, &write.key).await?;
    let mut write = write;
    if write.events.is_empty() {
        let after = before.after(false, changes_digest(&write));
        write.add_timers.push(position_record(after));
    } else {
        // Said even when there is no record to remove, so that the tail
        // cache (on this node and the replicas) knows the position after
        // the write without reading the journal.
        write.remove_timers.push(POSITION_ID);
    }
    let (tx, mut rx) = mpsc::channel(to.len().max(1));
    // Set when the write is given up: what still waits in a replica's
    // batch queue is then not sent.
    let withdrawn = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for r in to {
        let inner = inner.clone();
        let local = local.clone();
        let write = write.clone();
        let tx = tx.clone();
        let withdrawn = withdrawn.clone();
        tokio::spawn(async move {
            let res = send_to_replica(
                &inner,
                &local,
                r.0,
                shard,
                epoch,
                &write,
                TimersSent::Changes(before),
                Some(withdrawn),
            )
            .await;
            let _ = tx.send((r, res)).await;
        });
    }
    drop(tx);
    let acks = async {
        let mut errors = Vec::new();
        loop {
            match progress.progress() {
                Progress::Acknowledged => return Ok(progress),
                // Sent: a replica that failed to answer may hold it.
                Progress::Short => {
                    return Err(JournalError::Indeterminate(format!(
                        "{}: {} replica acknowledgements of {:?}: {}",
                        write.key,
                        progress.acked().len(),
                        progress.sets(),
                        errors.join("; ")
                    )));
                }
                // Stored nowhere: a refusal, safe to retry.
                Progress::Refused => {
                    return Err(JournalError::Fenced(format!(
                        "{}: every replica refused the write: {}",
                        write.key,
                        errors.join("; ")
                    )));
                }
                Progress::Waiting => {}
            }
            match rx.recv().await {
                Some((r, Ok(()))) => progress.answer(r, Answer::Held),
                Some((r, Err(e))) => {
                    let answer = match e {
                        SendFailure::Refused(_) => Answer::Refused,
                        SendFailure::Unknown(_) => Answer::Unknown,
                    };
                    progress.answer(r, answer);
                    errors.push(e.to_string());
                }
                None => {
                    return Err(JournalError::Indeterminate(format!(
                        "{}: the replicas' answers were lost",
                        write.key
                    )));
                }
            }
        }
    };
    let acks = async {
        match tokio::time::timeout(settings.ack_timeout, acks).await {
            Ok(r) => r,
            Err(_) => Err(JournalError::Indeterminate(format!(
                "{}: too few replicas acknowledged within {:?}",
                write.key, settings.ack_timeout
            ))),
        }
    };
    // The replicas first, then the local journal (`cairn_cluster::write`).
    let key = write.key.clone();
    let written = match acks.await {
        // The replicas hold it: a later owner imports it.
        Ok(acked) => match acked.may_append(&inner.lease_config(), inner.started.elapsed()) {
            Err(refused) => Err(JournalError::Indeterminate(format!("{key}: {refused}"))),
            Ok(()) => local.append(write).await.map_err(|e| match e {
                e @ JournalError::Indeterminate(_) => e,
                e => JournalError::Indeterminate(format!(
                    "{key}: on the replicas, but the local append failed: {e}"
                )),
            }),
        },
        Err(e) => Err(e),
    };
    // Refused by every replica (`Progress::Refused`, the only source of a
    // `Fenced` here): stored nowhere, nothing to read back.
    if written.is_err() && !matches!(written, Err(JournalError::Fenced(_))) {
        // Sends still waiting in a replica's batch queue are withdrawn (an
        // abandoned write must not reach a replica after the read-back and
        // the next write); one already sent goes on, with its gap fill (a
        // replica far behind catches up that way).
        withdrawn.store(true, std::sync::atomic::Ordering::Relaxed);
        // Some replica may hold it anyway (all of them, if only the local
        // write failed): read the entity back from the replicas before its
        // next write, so no seq is used twice.
        if let Ok(mut d) = inner.dirty.lock() {
            d.insert(key);
        }
    }
    written
}

/// Why one replica does not hold a write sent to it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendFailure {
    /// The replica refused it before storing any of it (its fence has seen
    /// a newer epoch, or it holds other events where the write goes).
    #[error("{0}")]
    Refused(String),
    /// No answer, or one that does not say whether it stored the write.
    #[error("{0}")]
    Unknown(String),
}

impl From<String> for SendFailure {
    fn from(why: String) -> Self {
        SendFailure::Unknown(why)
    }
}

/// What a replica is told of an entity's timers with a write.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TimersSent {
    /// The write's timer changes, made where the primary's timers stood
    /// (the replica checks that its copy stands there too).
    Changes(Position),
    /// The write's `add_timers` are the entity's whole timer set.
    Whole,
}

/// Sends one write to one replica, filling the replica's gap from the
/// local journal when it reports one, and sending the entity's timers whole
/// when the replica's do not stand where the primary's did. Once
/// `withdrawn` is set, the write is not sent if it still waits in the
/// replica's batch queue.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_to_replica(
    inner: &Arc<Inner>,
    local: &Arc<dyn Journal>,
    replica: u64,
    shard: ShardId,
    epoch: u64,
    write: &Write,
    timers: TimersSent,
    withdrawn: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> Result<(), SendFailure> {
    let addr = inner
        .addr_of(replica)
        .ok_or_else(|| format!("no address for replica {replica}"))?;
    let events = &write.events;
    // The local event before the write's first (the replica checks it).
    let prev_of = |first: u64| {
        let (inner, local) = (inner.clone(), local.clone());
        let key = write.key.clone();
        async move {
            if first <= 1 {
                return Ok::<_, String>(None);
            }
            let digest = digest_at(&inner, &local, &key, first - 1)
                .await
                .map_err(|e| e.to_string())?;
            Ok(digest.map(|d| (first - 1, d)))
        }
    };
    // A write of timers only stands after the local newest event.
    let first = match events.first() {
        Some(e) => e.seq,
        None => {
            local
                .highest_seq(&write.key)
                .await
                .map_err(|e| e.to_string())?
                + 1
        }
    };
    let prev = prev_of(first).await?;
    // The entity's whole timer set after the write, once a replica needs it.
    let mut whole: Option<Vec<TimerRecord>> = match timers {
        TimersSent::Whole => Some(write.add_timers.clone()),
        TimersSent::Changes(_) => None,
    };
    let at = match timers {
        TimersSent::Changes(p) => Some((p.writes, p.chain, p.stale)),
        TimersSent::Whole => None,
    };
    let replicate = |prev: Option<(u64, u32)>,
                     events: &[EventRecord],
                     timers: Option<&[TimerRecord]>,
                     whole: Option<&[TimerRecord]>| {
        let tuples = |ts: &[TimerRecord]| -> Vec<(u64, u64, Vec<u8>)> {
            ts.iter()
                .map(|t| (t.timer_id, t.fire_at_ms, t.command.clone()))
                .collect()
        };
        PeerRequest::Replicate {
            shard: shard.0,
            epoch,
            entity_type: write.key.entity_type.clone(),
            entity_id: write.key.entity_id.clone(),
            prev,
            events: events
                .iter()
                .map(|e| (e.seq, e.timestamp_ms, e.version.clone(), e.payload.clone()))
                .collect(),
            add_timers: match (whole, timers) {
                (Some(w), _) => tuples(w),
                (None, Some(t)) => tuples(t),
                (None, None) => Vec::new(),
            },
            remove_timers: match (whole, timers) {
                (None, Some(_)) => write.remove_timers.clone(),
                _ => Vec::new(),
            },
            // A gap's chunk says nothing of timers (a whole set needs no
            // position: the replica takes it as it is).
            timers_at: if timers.is_some() { at } else { None },
            whole_timers: whole.is_some(),
        }
    };
    let answer = |r: Result<PeerResponse, PeerError>| match r {
        Ok(PeerResponse::Fenced(e)) => Err(SendFailure::Refused(format!(
            "replica {replica} refused epoch {epoch}: it has seen epoch {e}"
        ))),
        Ok(PeerResponse::Failed(PeerFailure::Diverged(why))) => Err(SendFailure::Refused(format!(
            "replica {replica} refused the write: {why}"
        ))),
        Ok(PeerResponse::Failed(PeerFailure::NotStored(why))) => Err(SendFailure::Refused(
            format!("replica {replica} stored nothing of the write: {why}"),
        )),
        Ok(PeerResponse::Failed(e)) => Err(SendFailure::Unknown(e.to_string())),
        Ok(other) => Ok(other),
        Err(e) => Err(SendFailure::Unknown(e.to_string())),
    };
    for _ in 0..4 {
        let req = replicate(prev, events, Some(&write.add_timers), whole.as_deref());
        match answer(inner.batcher.call(addr, req, withdrawn.clone()).await)? {
            PeerResponse::Done => return Ok(()),
            PeerResponse::TimersDiffer if whole.is_none() => {
                whole = Some(
                    whole_timers(local, write)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            PeerResponse::Gap(have) => {
                // Filled from the local journal in chunks of bounded size,
                // then the write is sent again.
                if have + 1 >= first {
                    return Err(format!("replica {replica} reports a gap it does not have").into());
                }
                let mut next = have + 1;
                while next < first {
                    let chunk = read_chunk(local, &write.key, next, first - 1)
                        .await
                        .map_err(|e| e.to_string())?;
                    match chunk.first().map(|e| e.seq) {
                        Some(s) if s == next => {}
                        _ => {
                            return Err(format!(
                                "{}: cannot fill replica {replica}'s gap at #{next}",
                                write.key
                            )
                            .into());
                        }
                    }
                    let chunk_prev = prev_of(next).await?;
                    next = chunk.last().map_or(next, |e| e.seq + 1);
                    let req = replicate(chunk_prev, &chunk, None, None);
                    match answer(inner.peers.call(addr, &req, HISTORY_CALL).await)? {
                        PeerResponse::Done => {}
                        other => {
                            return Err(
                                format!("filling a gap: unexpected answer {other:?}").into()
                            );
                        }
                    }
                }
            }
            other => return Err(format!("unexpected answer {other:?}").into()),
        }
    }
    Err(format!("replica {replica} kept reporting gaps or other timers").into())
}

/// The entity's whole timer set once `write` is applied to the local one
/// (a primary sends a write before it appends it).
async fn whole_timers(
    local: &Arc<dyn Journal>,
    write: &Write,
) -> Result<Vec<TimerRecord>, JournalError> {
    let mut set = local.entity_timers(&write.key).await?;
    set.retain(|t| {
        !write.remove_timers.contains(&t.timer_id)
            && !write.add_timers.iter().any(|a| a.timer_id == t.timer_id)
    });
    set.extend(write.add_timers.iter().cloned());
    Ok(set)
}

/// Where the local copy of `key`'s timers stands
/// (`cairn_cluster::timers::Position`).
pub(crate) async fn position_of(
    local: &Arc<dyn Journal>,
    key: &EntityKey,
) -> Result<Position, JournalError> {
    Ok(local
        .timer(key, POSITION_ID)
        .await?
        .map_or_else(Position::default, |t| Position::decode(&t.command)))
}

/// The timer record holding `p`; never armed.
pub(crate) fn position_record(p: Position) -> TimerRecord {
    TimerRecord {
        timer_id: POSITION_ID,
        fire_at_ms: i64::MAX as u64,
        command: p.encode(),
    }
}

/// A digest of a write's timer changes, chained into the position of a
/// timers-only write.
fn changes_digest(write: &Write) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for t in &write.add_timers {
        h.update(&t.timer_id.to_le_bytes());
        h.update(&t.fire_at_ms.to_le_bytes());
        h.update(&(t.command.len() as u64).to_le_bytes());
        h.update(&t.command);
    }
    h.update(&[0xff]);
    for id in &write.remove_timers {
        h.update(&id.to_le_bytes());
    }
    h.finalize()
}

/// How long a call carrying a chunk of an entity's history (up to
/// [`crate::peer::HISTORY_CHUNK`] bytes each way: a gap fill, a read-back
/// from a replica, a replica reading its owner's history) may take.
const HISTORY_CALL: Duration = Duration::from_secs(10);

/// The newest epoch each shard's replica has accepted (fencing).
#[derive(Default)]
pub(crate) struct Fences(Mutex<cairn_cluster::fence::ReplicaFences>);

/// Truncates the entity on the shard's live replicas first (as a write
/// goes to them first), so that none keeps events the primary dropped.
async fn replicated_truncate(
    inner: &Arc<Inner>,
    key: &EntityKey,
    after: u64,
) -> Result<(), JournalError> {
    let shard = shard_of(&key.entity_type, &key.entity_id, inner.shard_count());
    let epoch = inner.router().table().get(shard).map_or(0, |a| a.epoch);
    for r in super::replicas::all_replicas(inner, shard) {
        let addr = inner
            .addr_of(r)
            .ok_or_else(|| JournalError::Replication(format!("no address for replica {r}")))?;
        let req = PeerRequest::Truncate {
            shard: shard.0,
            epoch,
            entity_type: key.entity_type.clone(),
            entity_id: key.entity_id.clone(),
            after,
        };
        match inner.peers.call(addr, &req, Duration::from_secs(10)).await {
            Ok(PeerResponse::Done) => {}
            Ok(other) => {
                return Err(JournalError::Replication(format!(
                    "{key}: replica {r} did not truncate: {other:?}"
                )));
            }
            Err(e) => {
                return Err(JournalError::Replication(format!(
                    "{key}: replica {r} unreachable: {e}"
                )));
            }
        }
    }
    Ok(())
}

/// Fencing: accepts `epoch` for `shard` unless this replica has seen a
/// newer one (or its committed table has); returns the committed
/// allocation's epoch on acceptance, the newest seen on refusal.
fn fence(inner: &Inner, shard: u32, epoch: u64) -> Result<u64, u64> {
    let committed = inner.router().table().get(ShardId(shard)).map(|a| a.epoch);
    inner
        .fences
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .accept(ShardId(shard), epoch, committed)?;
    Ok(committed.unwrap_or(0))
}

/// The replica's side of a primary's truncation.
pub(crate) async fn replica_truncate(
    inner: &Arc<Inner>,
    shard: u32,
    epoch: u64,
    key: EntityKey,
    after: u64,
) -> PeerResponse {
    if let Err(newest) = fence(inner, shard, epoch) {
        return PeerResponse::Fenced(newest);
    }
    match inner.local_journal.truncate(&key, after).await {
        Ok(()) => PeerResponse::Done,
        Err(e) => failed(PeerFailure::Storage(e.to_string())),
    }
}

/// A replica holds events of `key` that the shard's owner under the
/// committed epoch does not: its unacknowledged tail (a write that failed,
/// or one acknowledged with `min_acks = 0` before a failover). Reads the
/// owner's history, truncates the local copy to what both share, and
/// appends the owner's events and then the write's. Returns how many local
/// events were dropped; an error says whether the write may have been
/// stored (only when the last append's outcome is unknown) and why.
async fn reconcile(
    inner: &Arc<Inner>,
    owner: u64,
    key: &EntityKey,
    write: &[EventRecord],
) -> Result<usize, (bool, String)> {
    let nothing = |why: String| (false, why);
    let addr = inner
        .addr_of(owner)
        .ok_or_else(|| nothing(format!("no address for the owner {owner}")))?;
    let mut truth: Vec<EventRecord> = Vec::new();
    loop {
        let req = PeerRequest::FetchEntity {
            entity_type: key.entity_type.clone(),
            entity_id: key.entity_id.clone(),
            from: truth.last().map_or(1, |e| e.seq + 1),
        };
        match inner.peers.call(addr, &req, HISTORY_CALL).await {
            Ok(PeerResponse::Entity(h)) if h.events.is_empty() => break,
            Ok(PeerResponse::Entity(h)) => truth.extend(h.events.into_iter().map(
                |(seq, timestamp_ms, version, payload)| EventRecord {
                    seq,
                    timestamp_ms,
                    version,
                    payload,
                },
            )),
            Ok(other) => return Err(nothing(format!("the owner answered {other:?}"))),
            Err(e) => return Err(nothing(format!("the owner is unreachable: {e}"))),
        }
    }
    // The owner sends a write before it appends it locally.
    for e in write {
        match truth.last().map_or(0, |l| l.seq) {
            last if e.seq == last + 1 => truth.push(e.clone()),
            last if e.seq <= last => {}
            last => {
                return Err(nothing(format!(
                    "the owner holds #{last}, its write starts at #{}",
                    e.seq
                )));
            }
        }
    }
    if truth.iter().enumerate().any(|(i, e)| e.seq != i as u64 + 1) {
        return Err(nothing("the owner's history is not contiguous".into()));
    }
    let local = &inner.local_journal;
    let mine = local
        .read(key, 1, u64::MAX, usize::MAX)
        .await
        .map_err(|e| nothing(e.to_string()))?;
    let common = mine.iter().zip(&truth).take_while(|(a, b)| a == b).count();
    local
        .truncate(key, common as u64)
        .await
        .map_err(|e| nothing(e.to_string()))?;
    if truth.len() > common {
        local
            .append(Write {
                key: key.clone(),
                events: truth[common..].to_vec(),
                add_timers: Vec::new(),
                remove_timers: Vec::new(),
            })
            .await
            .map_err(|e| (matches!(e, JournalError::Indeterminate(_)), e.to_string()))?;
    }
    Ok(mine.len() - common)
}

/// The replica's side: fence, fill, check where the entity's timers stand,
/// append durably, acknowledge. `timers_at` is where the primary's timers
/// stood before the write (`None`: a gap's chunk, events without their
/// timer changes); `whole` says the write's timers are the entity's whole
/// set.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn replica_append(
    inner: &Arc<Inner>,
    shard: u32,
    epoch: u64,
    key: EntityKey,
    prev: Option<(u64, u32)>,
    events: Vec<(u64, u64, String, Vec<u8>)>,
    timers: TimerChanges,
    timers_at: Option<Position>,
    whole: bool,
) -> PeerResponse {
    let committed = match fence(inner, shard, epoch) {
        Ok(c) => c,
        Err(newest) => return PeerResponse::Fenced(newest),
    };
    let local = inner.local_journal.clone();
    // A write of timers only stands just after the primary's newest event.
    let first = match (events.first(), prev) {
        (Some(e), _) => e.0,
        (None, Some((p, _))) => p + 1,
        (None, None) => 1,
    };
    let last = events.last().map_or(first - 1, |e| e.0);
    for _ in 0..3 {
        let have = match local.highest_seq(&key).await {
            Ok(h) => h,
            Err(e) => return not_stored(e),
        };
        // The event the write follows, and what this replica already holds
        // of the write, must be the primary's (`replica_write`).
        let follows = match prev {
            Some((p, digest)) if p + 1 == first && p >= 1 && p <= have => {
                match digest_at(inner, &local, &key, p).await {
                    Ok(held) => held == Some(digest),
                    Err(e) => return not_stored(e),
                }
            }
            _ => true,
        };
        let overlap_same = if first <= have {
            // Events held past a write of timers only are not the primary's.
            !events.is_empty()
                && match local.read(&key, first, last.min(have), usize::MAX).await {
                    Ok(held) => held.iter().all(|h| {
                        events.iter().any(|(seq, ts, version, payload)| {
                            *seq == h.seq
                                && *ts == h.timestamp_ms
                                && *version == h.version
                                && *payload == h.payload
                        })
                    }),
                    Err(e) => return not_stored(e),
                }
        } else {
            true
        };
        match replica_write(have, first, follows, overlap_same) {
            ReplicaWrite::Gap(have) => return PeerResponse::Gap(have),
            ReplicaWrite::Append => {}
            ReplicaWrite::Diverged => {
                // The owner under the committed epoch is the truth: what
                // this replica holds beyond it was never acknowledged (with
                // `min_acks >= 1` a write reaches the owner's journal only
                // after its replicas, and a failover merges every replica).
                let owner = inner
                    .router()
                    .table()
                    .get(ShardId(shard))
                    .map(|a| a.owner.0)
                    .filter(|o| *o != inner.id);
                if epoch == committed
                    && let Some(owner) = owner
                {
                    let records: Vec<EventRecord> = events.iter().map(record).collect();
                    match reconcile(inner, owner, &key, &records).await {
                        Ok(dropped) => {
                            tracing::warn!(%key, dropped, epoch, "an unacknowledged tail truncated to the owner's history");
                            // The write's events are in now; its timers
                            // are taken below.
                            continue;
                        }
                        Err((stored, e)) => {
                            let why = format!("{key}: not reconciled with the owner: {e}");
                            return failed(if stored {
                                PeerFailure::Replica(why)
                            } else {
                                PeerFailure::NotStored(why)
                            });
                        }
                    }
                }
                tracing::error!(%key, first, have, "replica holds a different history; refused");
                return failed(PeerFailure::Diverged(format!(
                    "{key}: this replica holds other events at or before #{first} (an unacknowledged write); not acknowledged"
                )));
            }
        }
        let mut write = Write {
            key: key.clone(),
            events: events.iter().filter(|e| e.0 > have).map(record).collect(),
            add_timers: timers.add.clone(),
            remove_timers: timers.remove.clone(),
        };
        let after_newest = have + 1 == first;
        let here = if timers_at.is_some() && !whole && after_newest {
            match position_of(&local, &key).await {
                Ok(p) => p,
                Err(e) => return not_stored(e),
            }
        } else {
            Position::default()
        };
        match replica_takes(whole, timers_at, after_newest, here) {
            TimersTake::Whole => match local.entity_timers(&key).await {
                // The entity's timers become the primary's set exactly.
                Ok(held) => {
                    write.remove_timers = held
                        .into_iter()
                        .map(|t| t.timer_id)
                        .filter(|id| !write.add_timers.iter().any(|a| a.timer_id == *id))
                        .collect()
                }
                Err(e) => return not_stored(e),
            },
            TimersTake::Apply => {}
            TimersTake::Differ => return PeerResponse::TimersDiffer,
            TimersTake::Behind if write.events.is_empty() => return PeerResponse::Done,
            TimersTake::Behind => write.add_timers.push(position_record(Position::behind())),
        }
        if write.events.is_empty() && write.add_timers.is_empty() && write.remove_timers.is_empty()
        {
            return PeerResponse::Done;
        }
        match local.append(write).await {
            Ok(()) => return PeerResponse::Done,
            // A concurrent fill wrote some of them: look again.
            Err(JournalError::Conflict { .. }) => continue,
            Err(e) => return not_stored(e),
        }
    }
    failed(PeerFailure::Replica(format!(
        "{key}: replica append kept conflicting"
    )))
}

/// A replica's answer for a storage error of a write: stored nothing
/// (`NotStored`, the primary may count it as refused), unless the journal
/// says the write's bytes may have reached it (`Indeterminate`).
fn not_stored(e: JournalError) -> PeerResponse {
    match e {
        e @ JournalError::Indeterminate(_) => failed(PeerFailure::Storage(e.to_string())),
        e => failed(PeerFailure::NotStored(e.to_string())),
    }
}

/// The digest of `key`'s event at `seq` in the local journal (`None`: no
/// such event): from the tail cache when it is the entity's newest, else
/// read.
async fn digest_at(
    inner: &Inner,
    local: &Arc<dyn Journal>,
    key: &EntityKey,
    seq: u64,
) -> Result<Option<u32>, JournalError> {
    if let Some(d) = inner.tails.as_ref().and_then(|t| t.digest_at(key, seq)) {
        return Ok(Some(d));
    }
    let held = local.read(key, seq, seq, 1).await?;
    Ok(held.first().map(event_digest))
}

/// An event as the peer protocol carries it, as a journal record.
fn record((seq, ts, version, payload): &(u64, u64, String, Vec<u8>)) -> EventRecord {
    EventRecord {
        seq: *seq,
        timestamp_ms: *ts,
        version: version.clone(),
        payload: payload.clone(),
    }
}

/// A digest of one event (its timestamp, behavior version and payload) by
/// which a replica checks that a write follows the event it holds at that
/// sequence number (`PeerRequest::Replicate::prev`).
pub fn event_digest(e: &EventRecord) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&e.timestamp_ms.to_le_bytes());
    h.update(&(e.version.len() as u64).to_le_bytes());
    h.update(e.version.as_bytes());
    h.update(&e.payload);
    h.finalize()
}

/// The timer records a replicated write adds and deletes.
#[derive(Default)]
pub(crate) struct TimerChanges {
    /// Timers added.
    pub(crate) add: Vec<TimerRecord>,
    /// Ids of timers deleted.
    pub(crate) remove: Vec<u64>,
}

/// Gives the members of `replicas` (a replica set of `shard`, which this
/// node owns under the allocation of `epoch`) the whole history of its
/// entities and their pending timers: the newest event of each, which a
/// member lacking earlier ones answers with a gap the primary fills. Fails
/// unless `min_acks` of each type's prefix of the set hold each entity's
/// history.
pub(crate) async fn catch_up_to(
    inner: &Arc<Inner>,
    shard: ShardId,
    count: u32,
    replicas: &[u64],
    epoch: u64,
) -> Result<(), String> {
    if replicas.is_empty() {
        return Ok(());
    }
    let local = inner.local_journal.clone();
    let config = inner.node.config().clone();
    // The shard's pending timers go with each entity's newest event (or
    // alone, for an entity that has timers and no events).
    let mut timers: HashMap<EntityKey, Vec<TimerRecord>> = HashMap::new();
    for (key, t) in local.pending_timers().await.map_err(|e| e.to_string())? {
        if shard_of(&key.entity_type, &key.entity_id, count) == shard {
            timers.entry(key).or_default().push(t);
        }
    }
    for d in inner.node.deployments() {
        let ty = d.entity_type;
        let settings = config.settings_for(&ty).replication;
        let set: Vec<u64> = replicas.iter().copied().take(settings.replicas).collect();
        let need = cairn_cluster::replication::acks_needed(settings.min_acks, set.len());
        let mut ids = local
            .entity_ids(&ty, usize::MAX)
            .await
            .map_err(|e| e.to_string())?;
        ids.extend(
            timers
                .keys()
                .filter(|k| k.entity_type == ty)
                .map(|k| k.entity_id.clone()),
        );
        ids.sort();
        ids.dedup();
        for id in ids
            .into_iter()
            .filter(|id| shard_of(&ty, id, count) == shard)
        {
            let key = EntityKey::new(ty.clone(), id);
            let have = local.highest_seq(&key).await.map_err(|e| e.to_string())?;
            let add_timers = timers.remove(&key).unwrap_or_default();
            if have == 0 && add_timers.is_empty() {
                continue;
            }
            let events = if have == 0 {
                Vec::new()
            } else {
                local
                    .read(&key, have, have, 1)
                    .await
                    .map_err(|e| e.to_string())?
            };
            let write = Write {
                key: key.clone(),
                events,
                add_timers,
                remove_timers: Vec::new(),
            };
            let mut ok = 0;
            // A member gossip holds down is not waited for (it counts as
            // not caught up).
            let down = inner.view().down.clone();
            for r in set.iter().filter(|r| !down.contains(r)) {
                if send_to_replica(
                    inner,
                    &local,
                    *r,
                    shard,
                    epoch,
                    &write,
                    TimersSent::Whole,
                    None,
                )
                .await
                .is_ok()
                {
                    ok += 1;
                }
            }
            if ok < need {
                return Err(format!("{key}: {ok} of {need} replicas caught up"));
            }
        }
    }
    Ok(())
}

/// After a failed write: reads the entity's history back from every
/// replica (all must answer), imports what they hold beyond the local
/// copy, gives it to the replicas that lack it, and fails this write (the
/// entity then recovers with the history as it now is; its client retries).
/// A replica is read from the local copy's newest event on (the events
/// before it were acknowledged, so they are the replicas' too; the newest
/// is read again so that `import` checks the two copies meet there): the
/// cost follows what the failed write left, not the entity's size.
async fn resync(
    inner: &Arc<Inner>,
    local: &Arc<dyn Journal>,
    key: &EntityKey,
    shard: ShardId,
) -> Result<(), JournalError> {
    let err = |m: String| JournalError::Replication(format!("{key}: {m}"));
    let start = local.highest_seq(key).await?.max(1);
    for r in super::replicas::all_replicas(inner, shard) {
        let addr = inner
            .addr_of(r)
            .ok_or_else(|| err(format!("no address for replica {r}")))?;
        let before = local.highest_seq(key).await?;
        // Chunk by chunk: each is imported before the next is asked for.
        let mut from = start;
        // The replica's timers (from its first answer) and its newest
        // event at or after `start` (0: none).
        let mut source: Option<Vec<(u64, u64, Vec<u8>)>> = None;
        let mut newest = 0;
        loop {
            let req = PeerRequest::FetchEntity {
                entity_type: key.entity_type.clone(),
                entity_id: key.entity_id.clone(),
                from,
            };
            match inner.peers.call(addr, &req, HISTORY_CALL).await {
                Ok(PeerResponse::Entity(mut h)) => {
                    if source.is_none() {
                        source = Some(std::mem::take(&mut h.timers));
                    }
                    let Some(last) = h.events.last().map(|e| e.0) else {
                        break;
                    };
                    from = last + 1;
                    newest = last;
                    super::handoff::import(inner, h, false).await.map_err(err)?;
                }
                Ok(other) => return Err(err(format!("replica {r}: {other:?}"))),
                Err(e) => return Err(err(format!("replica {r} unreachable: {e}"))),
            }
        }
        // The timers written with the events imported (a receiver's record
        // of the sends it applied) come with them, as a shard fetch merges
        // them (`cairn_cluster::replication::timer_merge`).
        if let Some(source) = source {
            let here = local.entity_timers(key).await?;
            let local_at = Position::of(here.iter().map(|t| (t.timer_id, &t.command[..])));
            let source_at = Position::of(source.iter().map(|t| (t.0, &t.2[..])));
            let merge = cairn_cluster::replication::timer_merge(
                (before, local_at),
                (newest, source_at),
                false,
            );
            super::handoff::import_timers(inner, key.clone(), source, &here, merge)
                .await
                .map_err(err)?;
        }
    }
    let have = local.highest_seq(key).await?;
    if have > 0 {
        let epoch = inner.router().table().get(shard).map_or(0, |a| a.epoch);
        let events = local.read(key, have, have, 1).await?;
        let write = Write {
            key: key.clone(),
            events,
            add_timers: Vec::new(),
            remove_timers: Vec::new(),
        };
        let at = TimersSent::Changes(position_of(local, key).await?);
        for r in super::replicas::all_replicas(inner, shard) {
            let _ = send_to_replica(inner, local, r, shard, epoch, &write, at, None).await;
        }
    }
    if let Ok(mut d) = inner.dirty.lock() {
        d.remove(key);
    }
    Err(err(
        "its last write failed; its history was read back from the replicas: retry".into(),
    ))
}
