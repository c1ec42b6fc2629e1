//! The per-entity actor: mailbox, recovery, the command loop, snapshots,
//! supervision.
//!
//! An entity is an [`EntityCell`] in its type's striped map ([`EntityType`]). An idle entity has
//! no task: only its cell (mailbox, state bytes, sequence number). The first
//! command queued into an idle mailbox starts a drain that recovers the
//! entity if needed, then processes commands one at a time in arrival order
//! (persist, then reply) and ends when the mailbox is empty. So commands for
//! one entity are serial while different entities run concurrently, and
//! commands that arrive during recovery simply wait in the mailbox.
//!
//! Drains run on [`Runners`]: tasks that park after a drain and are handed the
//! next idle entity that gets a command, so a command does not allocate,
//! register and free a task of its own (spawning per command showed in
//! profiles: docs/BENCHMARKS.md).
//!
//! An in-process `ask` to an idle entity skips the runner: the caller's task
//! claims the entity and runs its own command ([`run_here`]), then hands
//! anything queued meanwhile to a runner. That saves each such command two
//! task wake-ups. A command's write and what must follow it once durable
//! (reply, followers, timers, sends) sit in the cell while the write is on
//! its way, so a caller that gives up half-way leaves them to a task that
//! finishes them; the entity then rebuilds its state from the journal.
//!
//! Supervision: a guest fault fails only that command, drops the entity's
//! in-memory state (the next command recovers it from the journal) and counts
//! a restart; too many restarts within the window stop the entity. A failed
//! persist does the same. This module never panics on guest output.
//!
//! The entity sees only its [`Env`] (storage, lifecycle sink, clock, outbox),
//! never the node; recovery is the shared [`crate::replay`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cairn_store::{
    BoxFuture, EntityKey, EventRecord, Fence, JournalError, Snapshot, TimerRecord, Write,
};
use tokio::sync::{Notify, oneshot};

use crate::behavior::{Behavior, CommandContext, CommandError, Effect, GuestFault};
use crate::config::Overflow;
use crate::outbox::{self, Entry, Marks};
use crate::placement::{Admission, SendId};
use crate::replay::{self, FoldOn, Replay, Until};
use crate::types::{AskError, LifecycleEvent, Reply};

mod entity_type;
mod env;

pub(crate) use entity_type::EntityType;
pub(crate) use env::{Env, Outbox};

/// Longest timer delay a behavior may ask for (ten years); longer ones are clamped.
const MAX_TIMER_DELAY_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// A message in an entity's mailbox.
pub(crate) enum Envelope {
    /// A command from `ask`, `tell`, another entity or a timer.
    Command {
        command: Vec<u8>,
        expected_seq: Option<u64>,
        reply: Option<oneshot::Sender<Result<Reply, AskError>>>,
        timer_id: Option<u64>,
        /// A message of another entity: applied at most once.
        from: Option<SendId>,
    },
    /// Read the current state and sequence number, in mailbox order.
    Peek {
        reply: oneshot::Sender<Result<(Vec<u8>, u64), AskError>>,
    },
    /// Delete a delivered message from this entity's outbox.
    Forget {
        timer_id: u64,
        done: oneshot::Sender<Result<(), AskError>>,
    },
}

impl Envelope {
    fn fail(self, err: AskError) {
        match self {
            Envelope::Command { reply, .. } => {
                if let Some(r) = reply {
                    let _ = r.send(Err(err));
                }
            }
            Envelope::Peek { reply } => {
                let _ = reply.send(Err(err));
            }
            Envelope::Forget { done, .. } => {
                let _ = done.send(Err(err));
            }
        }
    }
}

/// Recovered state of a live entity.
pub(crate) struct Loaded {
    state: Vec<u8>,
    seq: u64,
    /// The behavior generation this state was built with.
    generation: u64,
    /// The allocation the entity was started under (in a cluster): every
    /// write carries it.
    fence: Option<Fence>,
    /// Its sends and the messages it applied, read on first need.
    marks: Option<Marks>,
    /// Tombstones of its fired timers it knows of (written since its last
    /// write with events, found when the node armed its timers, or read
    /// with its marks), oldest first: its next write with events removes
    /// them (`cairn_cluster::timers`).
    tombstones: Vec<u64>,
}

/// One entity of a type.
pub(crate) struct EntityCell {
    pub(crate) id: Arc<str>,
    inner: Mutex<CellInner>,
    /// Wakes senders waiting for room (backpressure).
    space: Notify,
}

#[derive(Default)]
pub(crate) struct CellInner {
    queue: VecDeque<Envelope>,
    /// A drain task is running; it owns `loaded` meanwhile.
    running: bool,
    /// Removed from the map by passivation; senders must look up again.
    removed: bool,
    /// Stopped by supervision, with the reason.
    stopped: Option<String>,
    loaded: Option<Loaded>,
    last_active: Option<Instant>,
    restarts: Vec<Instant>,
    /// The write of the command being processed, while it is persisted,
    /// with what to do once it is durable. Kept here rather than in the
    /// drain so that a drain dropped half-way (see [`run_here`]) leaves it
    /// to be finished.
    in_flight: Option<InFlight>,
}

/// A command's write on its way to disk, and what follows once it is durable.
struct InFlight {
    append: BoxFuture<'static, Result<(), JournalError>>,
    after: AfterPersist,
}

/// What a command does once its write is durable: notify followers, reply,
/// arm its timers and its outbox's new messages.
struct AfterPersist {
    events: bool,
    reply: Option<oneshot::Sender<Result<Reply, AskError>>>,
    answer: Reply,
    timers: Vec<TimerRecord>,
}

impl AfterPersist {
    fn run(self, env: &Env, ty: &EntityType, id: &str) {
        if self.events {
            env.appended.notify_waiters();
        }
        if let Some(tx) = self.reply {
            let _ = tx.send(Ok(self.answer));
        }
        if self.timers.is_empty() {
            return;
        }
        // Without the node nothing can fire them; they stay journaled.
        let Some(outbox) = env.outbox() else { return };
        for timer in self.timers {
            outbox.schedule_timer(&ty.name, id, timer);
        }
    }
}

impl EntityCell {
    pub(crate) fn new(id: Arc<str>) -> Arc<EntityCell> {
        Arc::new(EntityCell {
            id,
            inner: Mutex::new(CellInner::default()),
            space: Notify::new(),
        })
    }

    /// Locks the cell. The lock is never held across an await or a guest call,
    /// so poisoning can only come from a bug in this module; recover the data.
    pub(crate) fn lock(&self) -> MutexGuard<'_, CellInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What happened when a sender tried to queue an envelope.
pub(crate) enum Enqueue {
    /// Queued.
    Done,
    /// The cell was passivated meanwhile; look it up again.
    Retry(Envelope),
    /// The mailbox is full and the strategy is backpressure: wait, then retry.
    Wait(Envelope),
}

/// Queues `env` in `cell` according to the mailbox strategy, spawning the
/// drain when the entity was idle.
pub(crate) fn enqueue(
    node: &Arc<Env>,
    ty: &Arc<EntityType>,
    cell: &Arc<EntityCell>,
    env: Envelope,
) -> Result<Enqueue, AskError> {
    let mut inner = cell.lock();
    if inner.removed {
        return Ok(Enqueue::Retry(env));
    }
    if let Some(reason) = &inner.stopped {
        let err = AskError::EntityStopped(reason.clone());
        drop(inner);
        node.dead_letter(&ty.name, &cell.id, &err.to_string());
        return Err(err);
    }
    let mb = &ty.settings.mailbox;
    if inner.queue.len() >= mb.capacity {
        match mb.overflow {
            Overflow::DropNew => {
                drop(inner);
                node.dead_letter(&ty.name, &cell.id, "mailbox full, new command dropped");
                return Err(AskError::MailboxFull);
            }
            Overflow::DropOldest => {
                if let Some(old) = inner.queue.pop_front() {
                    old.fail(AskError::MailboxFull);
                }
                node.dead_letter(&ty.name, &cell.id, "mailbox full, oldest command dropped");
            }
            Overflow::Backpressure => return Ok(Enqueue::Wait(env)),
        }
    }
    inner.queue.push_back(env);
    if !inner.running {
        inner.running = true;
        drop(inner);
        node.runners.start((node.clone(), ty.clone(), cell.clone()));
    }
    Ok(Enqueue::Done)
}

/// A drain to run: the entity and what it needs.
type Job = (Arc<Env>, Arc<EntityType>, Arc<EntityCell>);

/// Idle runners kept at most; a runner finding the pool full ends.
const MAX_IDLE_RUNNERS: usize = 1024;

/// A pool of parked drain tasks (see the module header).
#[derive(Default)]
pub(crate) struct Runners {
    idle: Mutex<Vec<Arc<Slot>>>,
}

/// Where a parked runner receives its next job.
#[derive(Default)]
struct Slot {
    job: Mutex<Option<Job>>,
    ready: Notify,
}

impl Runners {
    /// Runs `job` on a parked runner, or on a new one if none is parked.
    fn start(&self, job: Job) {
        loop {
            let parked = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match parked {
                // Its runner is gone (the tokio runtime it ran on was shut
                // down while the node lives on): only the pool holds the slot.
                Some(slot) if Arc::strong_count(&slot) == 1 => continue,
                Some(slot) => {
                    *slot.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job);
                    slot.ready.notify_one();
                    return;
                }
                None => {
                    tokio::spawn(runner(Arc::new(Slot::default()), job));
                    return;
                }
            }
        }
    }

    /// Parks `slot` for a later job; false if the runner should end instead.
    /// (The caller holds the node, so the pool cannot be dropping meanwhile.)
    fn park(&self, slot: &Arc<Slot>) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= MAX_IDLE_RUNNERS {
            return false;
        }
        idle.push(slot.clone());
        true
    }
}

impl Drop for Runners {
    /// Ends the parked runners: each wakes to an empty slot.
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        for slot in idle {
            slot.ready.notify_one();
        }
    }
}

/// A runner: drains entities one after another, parking in between.
async fn runner(slot: Arc<Slot>, mut job: Job) {
    loop {
        let (node, ty, cell) = job;
        drain(&node, ty, cell, None).await;
        if !node.runners.park(&slot) {
            return;
        }
        // The node may end while this runner is parked: it must not keep
        // the environment alive.
        drop(node);
        slot.ready.notified().await;
        match slot.job.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(next) => job = next,
            None => return,
        }
    }
}

/// Claims an idle entity for the calling task: true when nothing runs it and
/// its mailbox is empty, so the caller may run its own command in place with
/// [`run_here`] instead of queueing it for a runner.
pub(crate) fn claim(cell: &EntityCell) -> bool {
    let mut inner = cell.lock();
    if inner.removed || inner.stopped.is_some() || inner.running || !inner.queue.is_empty() {
        return false;
    }
    inner.running = true;
    true
}

/// Runs `env` on the calling task for an entity claimed with [`claim`]
/// (recovering it first if needed), then hands whatever was queued meanwhile
/// to a runner. This saves the command two task wake-ups: the runner's and,
/// on the way back, the caller's.
///
/// Dropping the returned future before it completes (the caller timed out
/// or went away) does not abandon the entity: the rest of the work moves to
/// a task of its own.
pub(crate) async fn run_here(
    node: Arc<Env>,
    ty: Arc<EntityType>,
    cell: Arc<EntityCell>,
    env: Envelope,
) {
    let mut guard = Abandon {
        node: &node,
        ty: &ty,
        cell: &cell,
        armed: true,
    };
    drain(guard.node, ty.clone(), cell.clone(), Some(env)).await;
    guard.armed = false;
}

/// Releases an entity whose [`run_here`] was dropped before it finished.
struct Abandon<'a> {
    node: &'a Arc<Env>,
    ty: &'a Arc<EntityType>,
    cell: &'a Arc<EntityCell>,
    armed: bool,
}

impl Drop for Abandon<'_> {
    /// The drain stopped at an await: during recovery or while a long
    /// `decide` ran on the guest pool (nothing to finish: the command is
    /// dropped undecided, the pool call's result discarded), while its
    /// write was persisted (finish it on a task of its own: the
    /// reply goes nowhere, but followers, timers and sends must still see a
    /// durable write) or while a snapshot was saved (it is skipped). The
    /// entity is then released without its in-memory state, which its next
    /// command rebuilds from the journal.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (node, ty, cell) = (self.node.clone(), self.ty.clone(), self.cell.clone());
        let in_flight = cell.lock().in_flight.take();
        match (in_flight, tokio::runtime::Handle::try_current()) {
            (Some(f), Ok(rt)) => {
                rt.spawn(async move {
                    if f.append.await.is_ok() {
                        f.after.run(&node, &ty, &cell.id);
                    }
                    release(&node, ty, cell, None);
                });
            }
            // Without a runtime nothing can finish; the journal has the
            // write or not, and recovery reads what it has.
            _ => release(&node, ty, cell, None),
        }
    }
}

/// Appends `write` and waits until it is durable, with `after` parked in the
/// cell meanwhile (see [`CellInner::in_flight`]); gives `after` back to run.
/// A failed append answers the caller and returns the reason to restart.
async fn persist(
    node: &Env,
    cell: &EntityCell,
    write: Write,
    fence: Option<Fence>,
    after: AfterPersist,
) -> Result<AfterPersist, String> {
    let append = node.journal.append_fenced(write, fence);
    cell.lock().in_flight = Some(InFlight { append, after });
    let persisted = std::future::poll_fn(|cx| match cell.lock().in_flight.as_mut() {
        Some(f) => f.append.as_mut().poll(cx),
        // Only a dropped drain takes it, and then nothing polls here.
        None => std::task::Poll::Ready(Err(JournalError::Closed(
            "the write in flight was lost".into(),
        ))),
    })
    .await;
    let Some(InFlight { after, .. }) = cell.lock().in_flight.take() else {
        return Err("the write in flight was lost".into());
    };
    match persisted {
        Ok(()) => Ok(after),
        Err(e) => {
            let reason = format!("{PERSIST_FAILED}{e}");
            if let Some(tx) = after.reply {
                let _ = tx.send(Err(AskError::Journal(e)));
            }
            Err(reason)
        }
    }
}

/// How the reason for a restart after a failed journal write begins.
const PERSIST_FAILED: &str = "persist failed: ";

/// Ends a [`run_here`]: the entity keeps `loaded` and goes idle, or a runner
/// takes over the commands queued meanwhile.
fn release(node: &Arc<Env>, ty: Arc<EntityType>, cell: Arc<EntityCell>, loaded: Option<Loaded>) {
    let mut inner = cell.lock();
    inner.loaded = loaded;
    if inner.queue.is_empty() {
        inner.running = false;
        inner.last_active = Some(node.clock.now());
    } else {
        drop(inner);
        node.runners.start((node.clone(), ty, cell));
    }
}

/// Waits until the cell's mailbox may have room.
pub(crate) async fn wait_for_space(cell: &EntityCell) {
    cell.space.notified().await;
}

/// Removes `cell` from its map if it is idle for longer than `idle`. Called by
/// the passivation sweeper with the cell's stripe locked.
pub(crate) fn try_passivate(cell: &EntityCell, idle: Duration, now: Instant) -> bool {
    let mut inner = cell.lock();
    let idle_long = inner
        .last_active
        .is_some_and(|t| now.saturating_duration_since(t) >= idle);
    if !inner.running && inner.queue.is_empty() && inner.stopped.is_none() && idle_long {
        inner.removed = true;
        inner.loaded = None;
        true
    } else {
        false
    }
}

/// Removes `cell` from memory now unless it is busy; returns whether it
/// was removed. Called with the cell's stripe locked (shard handoff).
pub(crate) fn passivate_now(cell: &EntityCell) -> bool {
    let mut inner = cell.lock();
    if inner.running || !inner.queue.is_empty() {
        return false;
    }
    inner.removed = true;
    inner.loaded = None;
    true
}

/// Is the cell busy (a drain task running or commands queued)?
pub(crate) fn is_busy(cell: &EntityCell) -> bool {
    let inner = cell.lock();
    inner.running || !inner.queue.is_empty()
}

/// Clears a stop so the entity can run again; returns whether it was stopped.
pub(crate) fn resume(cell: &EntityCell) -> bool {
    let mut inner = cell.lock();
    inner.restarts.clear();
    inner.stopped.take().is_some()
}

/// A drain: recover if needed, then process the mailbox until empty. With
/// `first` (see [`run_here`]) it processes that envelope only and leaves the
/// rest of the mailbox to a runner.
async fn drain(
    node: &Arc<Env>,
    ty: Arc<EntityType>,
    cell: Arc<EntityCell>,
    mut first: Option<Envelope>,
) {
    let here = first.is_some();
    let mut loaded = cell.lock().loaded.take();
    loop {
        if here && first.is_none() {
            // The caller's own command is done.
            release(node, ty, cell, loaded);
            return;
        }
        // In a cluster the entity runs only while this node serves its
        // shard, under the allocation it was started with: a command for
        // an entity whose shard is not (or no longer) here fails unrun,
        // and one that came back under a newer allocation recovers again
        // (its history may have grown elsewhere meanwhile).
        let fence = match node.admit_entity(&ty.name, &cell.id, loaded.is_some()) {
            Admission::Here(fence) => fence,
            Admission::Elsewhere(why) | Admission::NotYet(why) => {
                loaded = None;
                let env = match first.take() {
                    Some(env) => env,
                    None => match next_envelope(node, &cell, &mut loaded) {
                        Some(env) => env,
                        None => return,
                    },
                };
                env.fail(AskError::NotHere(why));
                continue;
            }
        };
        if loaded.as_ref().is_some_and(|l| l.fence != fence) {
            loaded = None;
        }
        // The behavior and its generation are read together, so a command
        // runs on the version its state was checked against; a deploy that
        // lands meanwhile applies from the next command on.
        let (behavior, generation) = ty.current();
        if loaded.as_ref().is_none_or(|l| l.generation != generation) {
            let carried = loaded
                .take()
                .filter(|l| ty.schema_unchanged_since(l.generation));
            match carried {
                Some(mut l) => {
                    l.generation = generation;
                    loaded = Some(l);
                }
                None => match recover(node, &ty, &behavior, &cell.id, generation, fence).await {
                    Ok(l) => loaded = Some(l),
                    Err(reason) => {
                        let reason = format!("recovery failed: {reason}");
                        if let Some(env) = first.take() {
                            env.fail(AskError::EntityStopped(reason.clone()));
                        }
                        stop(node, &ty, &cell, reason);
                        return;
                    }
                },
            }
        }
        let env = match first.take() {
            Some(env) => env,
            None => match next_envelope(node, &cell, &mut loaded) {
                Some(env) => env,
                None => return,
            },
        };
        let Some(live) = loaded.as_mut() else {
            continue;
        };
        if let Err(reason) = process(node, &ty, &behavior, &cell, live, env).await {
            // Supervision: drop the in-memory state; the next command recovers.
            // A journal that failed (replicas out of reach, a full disk) is
            // not the behavior's fault and does not count toward stopping it.
            loaded = None;
            if !reason.starts_with(PERSIST_FAILED) && restart_limit_reached(node, &ty, &cell) {
                stop(
                    node,
                    &ty,
                    &cell,
                    format!(
                        "more than {} restarts within {:?}; last failure: {reason}",
                        ty.settings.supervision.max_restarts, ty.settings.supervision.window
                    ),
                );
                return;
            }
            node.emit(LifecycleEvent::Restarted {
                entity_type: ty.name.clone(),
                entity_id: cell.id.to_string(),
                reason,
            });
        }
    }
}

/// The next envelope of the mailbox; when it is empty, the entity goes
/// idle keeping `loaded` (the drain ends).
fn next_envelope(node: &Env, cell: &EntityCell, loaded: &mut Option<Loaded>) -> Option<Envelope> {
    let mut inner = cell.lock();
    let Some(env) = inner.queue.pop_front() else {
        inner.running = false;
        inner.loaded = loaded.take();
        inner.last_active = Some(node.clock.now());
        return None;
    };
    drop(inner);
    // The mailbox has room again.
    cell.space.notify_one();
    Some(env)
}

fn restart_limit_reached(node: &Env, ty: &EntityType, cell: &EntityCell) -> bool {
    let now = node.clock.now();
    let sup = &ty.settings.supervision;
    let mut inner = cell.lock();
    inner
        .restarts
        .retain(|t| now.saturating_duration_since(*t) < sup.window);
    inner.restarts.push(now);
    inner.restarts.len() > sup.max_restarts as usize
}

/// Stops the entity: fails every queued envelope and refuses new ones.
fn stop(node: &Env, ty: &EntityType, cell: &EntityCell, reason: String) {
    let queued: Vec<Envelope> = {
        let mut inner = cell.lock();
        inner.stopped = Some(reason.clone());
        inner.running = false;
        inner.loaded = None;
        inner.last_active = Some(node.clock.now());
        inner.queue.drain(..).collect()
    };
    cell.space.notify_waiters();
    for env in queued {
        env.fail(AskError::EntityStopped(reason.clone()));
    }
    tracing::warn!(entity_type = %ty.name, entity_id = %cell.id, %reason, "entity stopped");
    node.emit(LifecycleEvent::Stopped {
        entity_type: ty.name.clone(),
        entity_id: cell.id.to_string(),
        reason,
    });
}

/// Rebuilds an entity from its newest usable snapshot plus the later events.
async fn recover(
    node: &Env,
    ty: &EntityType,
    behavior: &Arc<dyn Behavior>,
    id: &str,
    generation: u64,
    fence: Option<Fence>,
) -> Result<Loaded, String> {
    let key = EntityKey::new(ty.name.clone(), id);
    let how = Replay {
        key: &key,
        until: Until::Seq(u64::MAX),
        from_snapshot: true,
        fold_on: FoldOn::Caller,
    };
    let r = replay::replay(&node.journal, &node.snapshots, behavior, how)
        .await
        .map_err(|e| e.to_string())?;
    node.emit(LifecycleEvent::Started {
        entity_type: ty.name.clone(),
        entity_id: id.to_owned(),
        snapshot_seq: r.snapshot_seq,
        replayed: r.replayed,
        seq: r.seq,
    });
    Ok(Loaded {
        state: r.state,
        seq: r.seq,
        generation,
        fence,
        marks: None,
        tombstones: node.take_tombstones(&ty.name, id),
    })
}

/// Processes one envelope. `Err(reason)` means the entity must restart.
async fn process(
    node: &Arc<Env>,
    ty: &Arc<EntityType>,
    behavior: &Arc<dyn Behavior>,
    cell: &EntityCell,
    live: &mut Loaded,
    env: Envelope,
) -> Result<(), String> {
    let key = || EntityKey::new(ty.name.clone(), cell.id.as_ref());
    let (command, expected_seq, reply, timer_id, from) = match env {
        Envelope::Peek { reply } => {
            let _ = reply.send(Ok((live.state.clone(), live.seq)));
            return Ok(());
        }
        Envelope::Forget { timer_id, done } => {
            let write = Write {
                key: key(),
                remove_timers: vec![timer_id],
                ..Write::default()
            };
            let forgotten = node.journal.append_fenced(write, live.fence).await;
            let _ = done.send(forgotten.map_err(AskError::Journal));
            return Ok(());
        }
        Envelope::Command {
            command,
            expected_seq,
            reply,
            timer_id,
            from,
        } => (command, expected_seq, reply, timer_id, from),
    };
    let mut reply = reply;
    let mut answer = |r: Result<Reply, AskError>| {
        if let Some(tx) = reply.take() {
            let _ = tx.send(r);
        }
    };
    // A message applied here before (delivered again after a lost answer,
    // a crash, a failover or a handoff) is answered, not run again.
    if let Some(id) = &from {
        match marks(node, live, &key())
            .await
            .map(|m| m.applied(&id.from, id.seq))
        {
            Ok(true) => {
                answer(Ok(Reply {
                    reply: None,
                    seq: live.seq,
                }));
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => {
                answer(Err(AskError::Journal(e)));
                return Ok(());
            }
        }
    }
    if let Some(expected) = expected_seq
        && expected != live.seq
    {
        answer(Err(AskError::Conflict {
            expected,
            actual: live.seq,
        }));
        return Ok(());
    }
    let timestamp_ms = node.clock.wall_ms();
    let ctx = CommandContext {
        entity_id: &cell.id,
        next_seq: live.seq + 1,
        timestamp_ms,
    };
    // Inline under a short budget; a long call moves to the guest pool, so
    // it cannot hold this runtime worker (runtime::call).
    let decided = crate::runtime::call(
        behavior,
        |b| b.decide(&ctx, &live.state, &command),
        || {
            let (id, state, command) = (cell.id.to_string(), live.state.clone(), command.clone());
            let next_seq = ctx.next_seq;
            Box::new(move |b: &dyn Behavior| {
                let ctx = CommandContext {
                    entity_id: &id,
                    next_seq,
                    timestamp_ms,
                };
                b.decide(&ctx, &state, &command)
            })
        },
    )
    .await;
    let decision = match decided {
        Ok(Ok(d)) => d,
        Ok(Err(err)) => {
            let restart = matches!(err, CommandError::BadState(_));
            if let CommandError::Malformed(reason) = &err {
                node.emit(LifecycleEvent::Unhandled {
                    entity_type: ty.name.clone(),
                    entity_id: cell.id.to_string(),
                    reason: reason.clone(),
                });
            }
            // A refused timer command is done with: forget the timer.
            if let Some(id) = timer_id {
                let (add_timers, remove_timers) = bury(live, id, timestamp_ms);
                let write = Write {
                    key: key(),
                    add_timers,
                    remove_timers,
                    ..Write::default()
                };
                match node.journal.append_fenced(write, live.fence).await {
                    Ok(()) => buried(live, id),
                    Err(e) => tracing::warn!(error = %e, "cannot remove a fired timer"),
                }
            }
            let reason = err.to_string();
            answer(Err(match err {
                CommandError::Rejected(r) => AskError::Rejected(r),
                CommandError::Malformed(r) => AskError::MalformedCommand(r),
                CommandError::BadState(r) => AskError::Guest(GuestFault::BadState(r)),
            }));
            return if restart { Err(reason) } else { Ok(()) };
        }
        Err(fault) => {
            let reason = fault.to_string();
            answer(Err(AskError::Guest(fault)));
            return Err(reason);
        }
    };

    let version = &behavior.descriptor().version;
    let first = live.seq + 1;
    let events: Vec<EventRecord> = decision
        .events
        .into_iter()
        .enumerate()
        .map(|(i, payload)| EventRecord {
            seq: first + i as u64,
            timestamp_ms,
            version: version.clone(),
            payload,
        })
        .collect();
    let mut timers = Vec::new();
    let mut sends = Vec::new();
    for effect in decision.effects {
        match effect {
            Effect::Schedule { delay_ms, command } => timers.push(TimerRecord {
                timer_id: node.next_timer_id(),
                fire_at_ms: timestamp_ms.saturating_add(delay_ms.min(MAX_TIMER_DELAY_MS)),
                command,
            }),
            Effect::Send {
                entity_type,
                entity_id,
                command,
            } => sends.push(Entry {
                target: EntityKey::new(entity_type, entity_id),
                command,
            }),
        }
    }
    let n = events.len() as u64;
    if n > 0 && decision.state.is_none() {
        let fault = GuestFault::Contract("behavior returned events without a new state".into());
        let reason = fault.to_string();
        answer(Err(AskError::Guest(fault)));
        return Err(reason);
    }
    // Sends join the outbox in this write; a message that changed
    // something is recorded as applied in it too.
    let receipt = from
        .as_ref()
        .filter(|_| n > 0 || !timers.is_empty() || !sends.is_empty());
    let mut add_timers = Vec::new();
    if !sends.is_empty() || receipt.is_some() {
        let m = match marks(node, live, &key()).await {
            Ok(m) => m,
            Err(e) => {
                answer(Err(AskError::Journal(e)));
                return Ok(());
            }
        };
        for (seq, entry) in m.next_sends(sends.len() as u64).zip(&sends) {
            timers.push(entry.record(seq, timestamp_ms));
        }
        if !sends.is_empty() {
            add_timers.push(m.sent_record(sends.len() as u64));
        }
        if let Some(id) = receipt {
            add_timers.push(m.received_record(&id.from, id.seq));
        }
    }
    add_timers.extend(timers.iter().cloned());
    let after = AfterPersist {
        events: n > 0,
        reply,
        answer: Reply {
            reply: decision.reply,
            seq: live.seq + n,
        },
        timers,
    };
    let after = if n > 0 || !add_timers.is_empty() || timer_id.is_some() {
        // A fired timer goes with the events its command wrote, and takes
        // the entity's tombstones with it; with no events it becomes one.
        let (mut remove_timers, mut buries) = (Vec::new(), None);
        if n > 0 {
            remove_timers.extend(timer_id);
            remove_timers.extend(live.tombstones.iter().copied());
        } else if let Some(id) = timer_id {
            let (add, remove) = bury(live, id, timestamp_ms);
            add_timers.extend(add);
            remove_timers = remove;
            buries = Some(id);
        }
        let write = Write {
            key: key(),
            events,
            add_timers,
            remove_timers,
        };
        let after = persist(node, cell, write, live.fence, after).await?;
        if let Some(m) = live.marks.as_mut() {
            m.written(sends.len() as u64, receipt.map(|id| (&id.from, id.seq)));
        }
        if n > 0 {
            live.tombstones.clear();
        }
        if let Some(id) = buries {
            buried(live, id);
        }
        after
    } else {
        after
    };
    let old_seq = live.seq;
    if let Some(state) = decision.state
        && n > 0
    {
        live.state = state;
    }
    live.seq += n;
    after.run(node, ty, &cell.id);
    let every = ty.settings.snapshot.every;
    if every > 0 && n > 0 && old_seq / every != live.seq / every {
        let snap = Snapshot {
            seq: live.seq,
            schema: behavior.descriptor().state_schema,
            timestamp_ms,
            state: live.state.clone(),
        };
        if let Err(e) = node
            .snapshots
            .save(&key(), snap, ty.settings.snapshot.keep)
            .await
        {
            tracing::warn!(entity_type = %ty.name, entity_id = %cell.id, error = %e, "snapshot failed");
        }
    }
    Ok(())
}

/// The entity's [`Marks`], read from its timers on first need.
async fn marks<'a>(
    node: &Env,
    live: &'a mut Loaded,
    key: &EntityKey,
) -> Result<&'a mut Marks, JournalError> {
    if live.marks.is_none() {
        let timers = node.journal.entity_timers(key).await?;
        for t in timers.iter().filter(|t| outbox::is_tombstone(t)) {
            if !live.tombstones.contains(&t.timer_id) {
                live.tombstones.push(t.timer_id);
            }
        }
        live.marks = Some(Marks::from_timers(&timers));
    }
    Ok(live.marks.get_or_insert_with(Marks::default))
}

/// The timers part of a write without events that deletes fired timer
/// `id`: its tombstone, and the removal of the entity's oldest tombstone
/// when it keeps `cairn_cluster::timers::MAX_TOMBSTONES` already.
fn bury(live: &Loaded, id: u64, now_ms: u64) -> (Vec<TimerRecord>, Vec<u64>) {
    let max = cairn_cluster::timers::MAX_TOMBSTONES;
    let excess = (live.tombstones.len() + 1).saturating_sub(max);
    (
        vec![outbox::tombstone(id, now_ms)],
        live.tombstones[..excess].to_vec(),
    )
}

/// [`bury`]'s write is durable: the entity knows the tombstone.
fn buried(live: &mut Loaded, id: u64) {
    let max = cairn_cluster::timers::MAX_TOMBSTONES;
    live.tombstones.push(id);
    let excess = live.tombstones.len().saturating_sub(max);
    live.tombstones.drain(..excess);
}

/// How many envelopes wait in the cell's mailbox, and whether a drain runs.
pub(crate) fn mailbox(cell: &EntityCell) -> (usize, bool) {
    let inner = cell.lock();
    (inner.queue.len(), inner.running)
}
