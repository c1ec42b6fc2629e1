//! The node façade: the in-process API to open a node, `ask` and `tell`
//! entities, read their journal and state (now or in the past), follow
//! lifecycle events, and shut down. Deploys are in [`crate::deploy`].
//!
//! Owns the table of entity types, the durable timers, the passivation
//! sweeper and the `Env` every entity runs in; it implements the entity's
//! `Outbox` (timers and messages between entities). The per-entity logic
//! lives in `entity` (private), which never sees the node; storage is
//! behind the [`Journal`] and [`SnapshotStore`] traits. A [`Node`] must be
//! created inside a tokio runtime.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use cairn_store::{
    EntityKey, EventRecord, Journal, JournalError, LogStore, SnapshotStore, SqliteOptions,
    SqliteStore, TimerRecord,
};
use tokio::sync::{Notify, broadcast, oneshot};

use crate::behavior::{Behavior, Descriptor, GuestFault};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, JournalBackend};
use crate::deadline::Deadlines;
use crate::deploy::DeployError;
use crate::entity::{self, Enqueue, EntityType, Env, Envelope, Outbox};
use cairn_cluster::messages::Outbox as SendQueue;

use crate::outbox::{self, Entry, Kind};
use crate::placement::{Admission, Delivery, DeliveryOutcome, Origin, Placement, SendId};
use crate::registry::{Registry, RegistryError};
use crate::replay::{self, FoldOn, Replay, ReplayError, Until};
use crate::runtime::{LoadError, WasmEngine, call_blocking};

use crate::types::MemberChange;
pub use crate::types::{AskError, LifecycleEvent, Reply};

/// Longest entity id accepted, in bytes.
pub const MAX_ENTITY_ID_LEN: usize = 256;

/// Options of one `ask`.
#[derive(Clone, Copy, Debug)]
pub struct AskOptions {
    /// How long to wait for the reply (checked every 5 ms: a timeout
    /// fires up to 5 ms late).
    pub timeout: Duration,
    /// Only run the command if the entity is at this sequence number.
    pub expected_seq: Option<u64>,
}

impl Default for AskOptions {
    fn default() -> Self {
        AskOptions {
            timeout: Duration::from_secs(5),
            expected_seq: None,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The storage could not be opened.
    #[error("cannot open storage: {0}")]
    Storage(#[from] JournalError),
    /// The wasm engine could not be created.
    #[error(transparent)]
    Engine(#[from] LoadError),
    /// The component registry could not be opened.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A thread of the node could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(String),
    /// A deployed behavior could not be restored.
    #[error("cannot restore the deployed behaviors: {0}")]
    Restore(Box<DeployError>),
}

/// A state computed by replaying an entity's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoricState {
    /// The encoded state.
    pub state: Vec<u8>,
    /// The sequence number it is at.
    pub seq: u64,
    /// Events replayed to compute it.
    pub replayed: u64,
}

/// Which past state of an entity to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PastState {
    /// Right after the event with this sequence number (or the last one, if
    /// the entity has fewer events).
    Seq(u64),
    /// After every event stored at or before this time (ms since the Unix epoch).
    Time(u64),
}

/// Why a behavior could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component was refused.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The entity type name is not valid.
    #[error("invalid entity type name `{0}`: use letters, digits, '-' and '_' (at most 128)")]
    InvalidName(String),
    /// The journal could not list pending timers.
    #[error("cannot load pending timers: {0}")]
    Timers(JournalError),
}

/// Why reading an entity failed.
///
/// Exhaustive: `cairn-server` translates every variant into the client
/// protocol, so a new one must be given its translation there.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No behavior is registered for the type.
    #[error("unknown entity type `{0}`")]
    UnknownEntityType(String),
    /// The journal failed.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// The behavior could not render the bytes.
    #[error("cannot render as JSON: {0}")]
    Codec(String),
    /// The guest failed while rendering.
    #[error("guest failure: {0}")]
    Guest(#[from] GuestFault),
    /// The entity could not be asked.
    #[error(transparent)]
    Ask(#[from] AskError),
}

/// Shared state of a node.
pub(crate) struct NodeInner {
    pub(crate) config: Config,
    pub(crate) engine: Arc<WasmEngine>,
    /// What every entity runs in.
    pub(crate) env: Arc<Env>,
    types: RwLock<HashMap<String, Arc<EntityType>>>,
    lifecycle: broadcast::Sender<LifecycleEvent>,
    /// The timers armed in this process (outbox messages included, from
    /// when they are due until they are delivered), by entity and id.
    timers: Mutex<HashSet<(EntityKey, u64)>>,
    /// Outbox messages due for delivery, per sender, by send number (the
    /// command of the outbox entry); a sender listed here has a delivery
    /// task running.
    sending: Mutex<HashMap<EntityKey, Sending>>,
    shutting_down: AtomicBool,
    pub(crate) registry: Registry,
    /// What each type's journal holds, for deploy validation.
    pub(crate) exemplars: crate::deploy::Exemplars,
    /// Deploys and rollbacks of a node run one at a time.
    pub(crate) deploying: tokio::sync::Mutex<()>,
    /// The phase of each type's deploy in flight (`Request::DeployProgress`).
    pub(crate) deploy_progress: crate::deploy::DeployProgress,
    /// Timeouts of `ask`.
    deadlines: Arc<Deadlines>,
    /// This node, for the tasks its outbox spawns.
    me: Weak<NodeInner>,
}

impl NodeInner {
    pub(crate) fn entity_type(&self, name: &str) -> Option<Arc<EntityType>> {
        self.types
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.env.clock
    }

    /// True once [`Node::shutdown`] began.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Queues an envelope for an entity, creating its cell if needed.
    async fn enqueue(&self, ty: &Arc<EntityType>, id: &str, env: Envelope) -> Result<(), AskError> {
        self.deliver(ty, id, env, false).await
    }

    /// Queues an envelope like [`NodeInner::enqueue`]; with `here`, when the
    /// entity is idle the calling task runs the command itself (see
    /// `entity::run_here`) and returns once it is answered.
    async fn deliver(
        &self,
        ty: &Arc<EntityType>,
        id: &str,
        mut env: Envelope,
        here: bool,
    ) -> Result<(), AskError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(AskError::Stopping);
        }
        if id.is_empty() || id.len() > MAX_ENTITY_ID_LEN {
            return Err(AskError::InvalidEntityId(format!(
                "must be 1 to {MAX_ENTITY_ID_LEN} bytes, got {}",
                id.len()
            )));
        }
        loop {
            let cell = ty.cell(id);
            if here && entity::claim(&cell) {
                entity::run_here(self.env.clone(), ty.clone(), cell, env).await;
                return Ok(());
            }
            match entity::enqueue(&self.env, ty, &cell, env)? {
                Enqueue::Done => return Ok(()),
                Enqueue::Retry(e) => env = e,
                Enqueue::Wait(e) => {
                    env = e;
                    entity::wait_for_space(&cell).await;
                }
            }
        }
    }

    /// Makes `behavior` the type's behavior (a new type starts with no live
    /// entities and arms its pending timers).
    pub(crate) async fn install(
        &self,
        entity_type: &str,
        behavior: Arc<dyn Behavior>,
    ) -> Result<Descriptor, RegisterError> {
        check_type_name(entity_type)?;
        let descriptor = behavior.descriptor().clone();
        let is_new = {
            let mut types = self.types.write().unwrap_or_else(|p| p.into_inner());
            match types.get(entity_type) {
                Some(ty) => {
                    ty.swap(behavior);
                    false
                }
                None => {
                    let settings = self.config.settings_for(entity_type);
                    let ty = EntityType::new(entity_type, settings, behavior);
                    types.insert(entity_type.to_owned(), Arc::new(ty));
                    true
                }
            }
        };
        if is_new {
            let timers = self
                .env
                .journal
                .pending_timers()
                .await
                .map_err(RegisterError::Timers)?;
            for (key, timer) in timers {
                if key.entity_type == entity_type {
                    self.schedule_timer(entity_type, &key.entity_id, timer);
                }
            }
        }
        tracing::info!(entity_type, behavior_version = %descriptor.version, "behavior active");
        self.env.emit(LifecycleEvent::Deployed {
            entity_type: entity_type.to_owned(),
            behavior_version: descriptor.version.clone(),
        });
        Ok(descriptor)
    }

    /// Unloads entities idle for longer than their type's `idle_after`. A
    /// type's cells are scanned once per [`sweep_period`] of its `idle_after`
    /// (`due` keeps when each type is next due), not at every tick, so a
    /// live entity is visited about 16 times per idle period.
    fn sweep(&self, now: Instant, due: &mut HashMap<String, Instant>) {
        let types: Vec<Arc<EntityType>> = self
            .types
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for ty in types {
            let Some(idle) = ty.settings.passivation.idle_after else {
                continue;
            };
            if due.get(&ty.name).is_some_and(|at| *at > now) {
                continue;
            }
            due.insert(ty.name.clone(), now + sweep_period(idle));
            for mut stripe in ty.stripes() {
                let mut passivated = Vec::new();
                stripe.retain(|id, cell| {
                    if entity::try_passivate(cell, idle, now) {
                        passivated.push(id.to_string());
                        false
                    } else {
                        true
                    }
                });
                drop(stripe);
                for id in passivated {
                    self.env.emit(LifecycleEvent::Passivated {
                        entity_type: ty.name.clone(),
                        entity_id: id,
                    });
                }
            }
        }
    }
}

impl Outbox for NodeInner {
    /// Arms a durable timer: at `fire_at_ms` its command goes to the entity,
    /// which deletes the timer with the command's own write (in a cluster,
    /// only on a node that serves the entity's shard then). An outbox
    /// message is due at once and goes to its sender's delivery task; a
    /// mark or a fired timer's tombstone is never armed.
    fn schedule_timer(&self, entity_type: &str, id: &str, timer: TimerRecord) {
        if outbox::kind(timer.timer_id) == Kind::Mark {
            return;
        }
        let key = EntityKey::new(entity_type, id);
        if outbox::is_tombstone(&timer) {
            self.env.note_tombstone(&key, timer.timer_id);
            return;
        }
        if !self.armed().insert((key.clone(), timer.timer_id)) {
            return;
        }
        let Some(node) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let now = node.clock().wall_ms();
            if timer.fire_at_ms > now {
                tokio::time::sleep(Duration::from_millis(timer.fire_at_ms - now)).await;
            }
            node.fire_timer(key, timer).await;
        });
    }
}

/// Longest pause between two attempts to deliver an outbox message.
const MAX_DELIVERY_PAUSE: Duration = Duration::from_secs(5);

/// How long one attempt to deliver an outbox message on this node waits.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The most messages of one sender out at once (each to another receiver).
const MAX_SENDS_OUT: usize = 64;

/// A sender's messages being delivered by this node.
#[derive(Default)]
struct Sending {
    /// Pending sends by number, with their targets (an outbox record whose
    /// target cannot be read has the sender as its target: it is refused
    /// alone).
    queue: SendQueue<EntityKey, Vec<u8>>,
    /// Woken when a send is queued, so a free target does not wait for
    /// the sends out to others.
    wake: Arc<Notify>,
}

impl Sending {
    /// Queues send `n` of `sender`, whose outbox record holds `command`.
    fn add(&mut self, sender: &EntityKey, n: u64, command: Vec<u8>) {
        let target = Entry::decode(&command).map_or_else(|| sender.clone(), |e| e.target);
        self.queue.add(n, target, command);
        self.wake.notify_one();
    }
}

impl NodeInner {
    fn armed(&self) -> std::sync::MutexGuard<'_, HashSet<(EntityKey, u64)>> {
        self.timers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sending(&self) -> std::sync::MutexGuard<'_, HashMap<EntityKey, Sending>> {
        self.sending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A due timer: its command runs on the entity here, and its write
    /// deletes the timer. In a cluster it fires only while this node
    /// serves the entity's shard: while the shard is not ready here yet it
    /// waits; once another node owns the shard it is disarmed here (the
    /// handoff gave that node the timer, and a node that gets the shard
    /// back re-arms what it holds then, see [`Node::arm_timers_where`]).
    async fn fire_timer(self: &Arc<Self>, key: EntityKey, timer: TimerRecord) {
        let patience = Instant::now() + Duration::from_secs(60);
        loop {
            match self.env.admit(&key) {
                Admission::Here(_) => break,
                Admission::NotYet(_) if Instant::now() < patience => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Admission::NotYet(why) | Admission::Elsewhere(why) => {
                    tracing::debug!(%key, timer = timer.timer_id, %why, "timer disarmed here");
                    self.disarm(&key, timer.timer_id);
                    return;
                }
            }
        }
        if let Kind::Outbox(n) = outbox::kind(timer.timer_id) {
            self.queue_send(key, n, timer.command);
            return;
        }
        if let Some(ty) = self.entity_type(&key.entity_type) {
            let env = Envelope::Command {
                command: timer.command,
                expected_seq: None,
                reply: None,
                timer_id: Some(timer.timer_id),
                from: None,
            };
            if let Err(e) = self.enqueue(&ty, &key.entity_id, env).await {
                self.env.dead_letter(
                    &ty.name,
                    &key.entity_id,
                    &format!("timer not delivered: {e}"),
                );
            }
        }
        self.disarm(&key, timer.timer_id);
    }

    fn disarm(&self, key: &EntityKey, timer_id: u64) {
        self.armed().remove(&(key.clone(), timer_id));
    }

    /// Queues send `n` of `sender` (its outbox record's command) for
    /// delivery, starting the sender's delivery task if none runs.
    fn queue_send(self: &Arc<Self>, sender: EntityKey, n: u64, command: Vec<u8>) {
        let start = {
            let mut sending = self.sending();
            let fresh = !sending.contains_key(&sender);
            sending
                .entry(sender.clone())
                .or_default()
                .add(&sender, n, command);
            fresh
        };
        if start {
            tokio::spawn(self.clone().deliver_outbox(sender));
        }
    }

    /// Delivers `sender`'s outbox while this node serves the sender: to
    /// each target one message at a time, in send order, and to different
    /// targets side by side (`cairn_cluster::messages::Outbox`); each
    /// until its target's owner applied it (or had before) or refused it
    /// for good (a dead letter), then deletes it from the outbox. Ends when
    /// the outbox is empty, or when the sender is served elsewhere (that
    /// node delivers the rest).
    async fn deliver_outbox(self: Arc<Self>, sender: EntityKey) {
        // The whole outbox as the journal holds it: after a restart or a
        // handoff its messages are armed one by one, and the oldest to each
        // target must go first (the receiver keeps only the highest
        // applied).
        if let Ok(timers) = self.env.journal.entity_timers(&sender).await {
            let mut armed = self.armed();
            let mut sending = self.sending();
            let queue = sending.entry(sender.clone()).or_default();
            for t in timers {
                if let Kind::Outbox(n) = outbox::kind(t.timer_id) {
                    armed.insert((sender.clone(), t.timer_id));
                    queue.add(&sender, n, t.command);
                }
            }
        }
        let mut out = tokio::task::JoinSet::new();
        loop {
            let (ready, wake) = {
                let mut sending = self.sending();
                let Some(q) = sending.get_mut(&sender) else {
                    return;
                };
                if q.queue.is_empty() || self.shutting_down.load(Ordering::Relaxed) {
                    sending.remove(&sender);
                    return;
                }
                let ready: Vec<(u64, Vec<u8>)> = q
                    .queue
                    .take_ready(MAX_SENDS_OUT)
                    .into_iter()
                    .filter_map(|n| q.queue.get(n).map(|(_, c)| (n, c.clone())))
                    .collect();
                (ready, q.wake.clone())
            };
            for (n, command) in ready {
                out.spawn(self.clone().deliver_send(sender.clone(), n, command));
            }
            // One answered, or a new send queued (for a target that may be
            // free while the others wait).
            let done = tokio::select! {
                done = out.join_next() => done,
                () = wake.notified() => continue,
            };
            match done {
                Some(Ok(Some(n))) => {
                    self.forget(&sender, n).await;
                    if let Some(q) = self.sending().get_mut(&sender) {
                        q.queue.done(n);
                    }
                    self.disarm(&sender, outbox::outbox_id(n));
                }
                // Nothing out: the loop looks at the queue again.
                None => {}
                // The sender is served elsewhere (or the node stops): the
                // rest is that node's, or the next start's.
                Some(Ok(None)) | Some(Err(_)) => {
                    out.abort_all();
                    let left = self
                        .sending()
                        .remove(&sender)
                        .map(|q| q.queue)
                        .unwrap_or_default();
                    for n in left.numbers() {
                        self.disarm(&sender, outbox::outbox_id(n));
                    }
                    return;
                }
            }
        }
    }

    /// Delivers send `n` of `sender` until it is answered (applied, applied
    /// before, or refused for good: then `Some(n)`), while this node serves
    /// the sender (else `None`).
    async fn deliver_send(
        self: Arc<Self>,
        sender: EntityKey,
        n: u64,
        command: Vec<u8>,
    ) -> Option<u64> {
        let mut pause = Duration::from_millis(50);
        loop {
            if self.shutting_down.load(Ordering::Relaxed) {
                return None;
            }
            match self.env.admit(&sender) {
                Admission::Here(_) => {}
                Admission::NotYet(why) => {
                    tracing::debug!(%sender, %why, "outbox waits for its sender's shard");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Admission::Elsewhere(why) => {
                    tracing::debug!(%sender, %why, "outbox left with its sender's shard");
                    return None;
                }
            }
            let (target, outcome) = match Entry::decode(&command) {
                None => (
                    sender.clone(),
                    DeliveryOutcome::Refused("its outbox entry is unreadable".into()),
                ),
                Some(entry) => {
                    let target = entry.target.clone();
                    (target, self.deliver_once(&sender, n, entry).await)
                }
            };
            match outcome {
                DeliveryOutcome::Retry(why) => {
                    tracing::debug!(%sender, send = n, %target, %why, "delivery retried");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_DELIVERY_PAUSE);
                }
                DeliveryOutcome::Refused(why) => {
                    self.env.dead_letter(
                        &target.entity_type,
                        &target.entity_id,
                        &format!("send #{n} from {sender}: {why}"),
                    );
                    return Some(n);
                }
                _ => return Some(n),
            }
        }
    }

    /// One attempt to deliver send `n` of `sender`: through the cluster's
    /// routing, or to the entity here on a single node.
    async fn deliver_once(&self, sender: &EntityKey, n: u64, entry: Entry) -> DeliveryOutcome {
        let id = SendId {
            from: sender.clone(),
            seq: n,
        };
        if let Some(placement) = &self.env.placement {
            return placement
                .deliver(Delivery {
                    target: entry.target,
                    command: entry.command,
                    origin: Origin::Send(id),
                })
                .await;
        }
        let (t, i) = (&entry.target.entity_type, &entry.target.entity_id);
        match self
            .ask_from(t, i, entry.command, id, DELIVERY_TIMEOUT)
            .await
        {
            Ok(_) => DeliveryOutcome::Delivered,
            Err(e) => outcome_of(e),
        }
    }

    /// Deletes a delivered message from its sender's outbox, through the
    /// sender's mailbox (so under the allocation its writes carry). If
    /// that fails the message stays in the journal, and is delivered again
    /// (and recognised) when it is next armed.
    async fn forget(&self, sender: &EntityKey, n: u64) {
        let Some(ty) = self.entity_type(&sender.entity_type) else {
            return;
        };
        let (done, rx) = oneshot::channel();
        let env = Envelope::Forget {
            timer_id: outbox::outbox_id(n),
            done,
        };
        let forgotten = match self.enqueue(&ty, &sender.entity_id, env).await {
            Ok(()) => rx.await.unwrap_or(Err(AskError::ShuttingDown)),
            Err(e) => Err(e),
        };
        if let Err(e) = forgotten {
            tracing::debug!(%sender, send = n, error = %e, "a delivered message stays in the outbox");
        }
    }

    /// Runs send `from` of another entity on entity `entity_id` here:
    /// applied at most once (the entity answers a message it applied
    /// before without running it again).
    async fn ask_from(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: Vec<u8>,
        from: SendId,
        timeout: Duration,
    ) -> Result<Reply, AskError> {
        let ty = self
            .entity_type(entity_type)
            .ok_or_else(|| AskError::UnknownEntityType(entity_type.to_owned()))?;
        self.ask_entity(&ty, entity_id, command, None, Some(from), timeout)
            .await
    }

    /// Runs a command on an entity and waits for its reply, up to
    /// `timeout`: on the calling task when the entity is idle.
    async fn ask_entity(
        &self,
        ty: &Arc<EntityType>,
        entity_id: &str,
        command: Vec<u8>,
        expected_seq: Option<u64>,
        from: Option<SendId>,
        timeout: Duration,
    ) -> Result<Reply, AskError> {
        let (tx, rx) = oneshot::channel();
        let env = Envelope::Command {
            command,
            expected_seq,
            reply: Some(tx),
            timer_id: None,
            from,
        };
        let work = std::pin::pin!(async {
            self.deliver(ty, entity_id, env, true).await?;
            rx.await.map_err(|_| AskError::ShuttingDown)?
        });
        self.deadlines
            .timeout(timeout, work)
            .await
            .map_err(|_| AskError::Timeout(timeout))?
    }
}

/// What a failed delivery on this node means for the message.
fn outcome_of(e: AskError) -> DeliveryOutcome {
    match e {
        AskError::UnknownEntityType(t) => {
            DeliveryOutcome::Refused(format!("unknown entity type `{t}`"))
        }
        AskError::InvalidEntityId(r) => DeliveryOutcome::Refused(format!("invalid entity id: {r}")),
        AskError::EntityStopped(r) => DeliveryOutcome::Refused(format!("target stopped: {r}")),
        AskError::Rejected(r) => DeliveryOutcome::Refused(format!("rejected by the target: {r}")),
        AskError::MalformedCommand(r) => {
            DeliveryOutcome::Refused(format!("the target could not decode it: {r}"))
        }
        AskError::Guest(f) => DeliveryOutcome::Refused(format!("the target failed: {f}")),
        other => DeliveryOutcome::Retry(other.to_string()),
    }
}

/// How often the passivation sweeper wakes up (and the shortest period at
/// which it scans a type).
const SWEEP_TICK: Duration = Duration::from_millis(100);

/// How often a type with this `idle_after` is scanned for idle entities: a
/// sixteenth of it, between one tick and 5 s, so an entity is passivated at
/// most ~6% (and 5 s) after it became due.
fn sweep_period(idle_after: Duration) -> Duration {
    (idle_after / 16).clamp(SWEEP_TICK, Duration::from_secs(5))
}

/// Refuses to open a data directory that holds the other backend's journal
/// and not this one's: a new, empty journal there would hide every event.
fn check_backend(config: &Config) -> Result<(), NodeError> {
    let dir = &config.node.data_dir;
    let chosen = config.node.journal;
    let other = match chosen {
        JournalBackend::Log => JournalBackend::Sqlite,
        _ => JournalBackend::Log,
    };
    if !dir.join(chosen.file_name()).exists() && dir.join(other.file_name()).exists() {
        let name = |b: JournalBackend| match b {
            JournalBackend::Sqlite => "sqlite",
            _ => "log",
        };
        return Err(NodeError::Storage(JournalError::Invalid(format!(
            "{} holds a {} journal ({}) but the node is set to journal = \"{}\"; set [node] journal = \"{}\" (or --journal {}) to open it",
            dir.display(),
            name(other),
            other.file_name(),
            name(chosen),
            name(other),
            name(other),
        ))));
    }
    Ok(())
}

/// What a mailbox holds now (see [`Node::mailbox`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxView {
    /// Commands waiting.
    pub queued: usize,
    /// A command is being processed (or the entity is recovering).
    pub busy: bool,
}

/// A Cairn node running in this process. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

impl Node {
    /// Opens the storage chosen by `config.node.journal` (the log by
    /// default) in `config.node.data_dir`, starts a node and restores the
    /// behaviors deployed there before.
    pub async fn open(config: Config) -> Result<Node, NodeError> {
        Node::open_with(config, |j| j).await
    }

    /// [`Node::open`] with the journal wrapped by `wrap` (a cluster member
    /// replicates its writes: `cairn_driver::Replication::wrap`).
    pub async fn open_with(
        config: Config,
        wrap: impl FnOnce(Arc<dyn Journal>) -> Arc<dyn Journal>,
    ) -> Result<Node, NodeError> {
        Node::open_placed(config, wrap, None).await
    }

    /// Opens a cluster member: its journal wrapped by `wrap` (the
    /// replication), and `placement` deciding which entities it may run
    /// and routing the commands its timers and sends produce (see
    /// [`crate::placement`]).
    pub async fn open_in_cluster(
        config: Config,
        wrap: impl FnOnce(Arc<dyn Journal>) -> Arc<dyn Journal>,
        placement: Arc<dyn Placement>,
    ) -> Result<Node, NodeError> {
        Node::open_placed(config, wrap, Some(placement)).await
    }

    async fn open_placed(
        config: Config,
        wrap: impl FnOnce(Arc<dyn Journal>) -> Arc<dyn Journal>,
        placement: Option<Arc<dyn Placement>>,
    ) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&config.node.data_dir)
            .map_err(|e| NodeError::Storage(JournalError::Io(e.to_string())))?;
        check_backend(&config)?;
        match config.node.journal {
            JournalBackend::Sqlite => {
                let options = SqliteOptions {
                    max_batch: config.node.journal_max_batch,
                    ..SqliteOptions::default()
                };
                let store = SqliteStore::open(&config.node.data_dir, options)?;
                Node::build(
                    config,
                    wrap(store.clone()),
                    store,
                    Arc::new(SystemClock),
                    placement,
                )
                .await
            }
            JournalBackend::Log => {
                let store = LogStore::open(&config.node.data_dir, config.node.journal_max_batch)?;
                Node::build(
                    config,
                    wrap(store.clone()),
                    store,
                    Arc::new(SystemClock),
                    placement,
                )
                .await
            }
        }
    }

    /// Starts a node on the given storage and restores its deployed behaviors.
    pub async fn with_stores(
        config: Config,
        journal: Arc<dyn Journal>,
        snapshots: Arc<dyn SnapshotStore>,
    ) -> Result<Node, NodeError> {
        Node::with_clock(config, journal, snapshots, Arc::new(SystemClock)).await
    }

    /// [`Node::with_stores`] on a given clock (e.g. a
    /// [`crate::clock::ManualClock`] in tests of passivation or restarts).
    pub async fn with_clock(
        config: Config,
        journal: Arc<dyn Journal>,
        snapshots: Arc<dyn SnapshotStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Node, NodeError> {
        Node::build(config, journal, snapshots, clock, None).await
    }

    async fn build(
        config: Config,
        journal: Arc<dyn Journal>,
        snapshots: Arc<dyn SnapshotStore>,
        clock: Arc<dyn Clock>,
        placement: Option<Arc<dyn Placement>>,
    ) -> Result<Node, NodeError> {
        // Compiled code is kept beside the components it was compiled from.
        let engine = WasmEngine::with_code_cache(&config.node.data_dir.join("compiled"))?;
        let registry = Registry::open(&config.node.data_dir)?;
        let exemplars = crate::deploy::Exemplars::open(&config.node.data_dir);
        let deadlines = Deadlines::start().map_err(|e| NodeError::Thread(e.to_string()))?;
        let (lifecycle, _) = broadcast::channel(4096);
        let inner = Arc::new_cyclic(|me: &Weak<NodeInner>| {
            let outbox: Weak<dyn Outbox> = me.clone();
            NodeInner {
                config,
                engine,
                env: Arc::new(Env::new(
                    journal,
                    snapshots,
                    lifecycle.clone(),
                    clock,
                    outbox,
                    placement,
                )),
                types: RwLock::new(HashMap::new()),
                lifecycle,
                timers: Mutex::new(HashSet::new()),
                sending: Mutex::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
                registry,
                exemplars,
                deploying: tokio::sync::Mutex::new(()),
                deploy_progress: crate::deploy::DeployProgress::default(),
                deadlines,
                me: me.clone(),
            }
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut due = HashMap::new();
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { break };
                if node.shutting_down.load(Ordering::Relaxed) {
                    break;
                }
                node.sweep(node.clock().now(), &mut due);
            }
        });
        let node = Node { inner };
        node.restore_deployments()
            .await
            .map_err(|e| NodeError::Restore(Box::new(e)))?;
        // Compiled code of components no deploy refers to any more.
        let deployed = node.inner.registry.component_hashes();
        node.inner
            .engine
            .prune_code_cache(&|h| deployed.contains(h));
        crate::deploy::scan_exemplars_in_background(Arc::downgrade(&node.inner));
        Ok(node)
    }

    /// Arms the pending timers of the entities `owned` selects (a shard
    /// that became served here: its timers came with its history). Timers
    /// armed already are left alone. Returns how many were armed. For the
    /// cluster driver: a single node arms all its timers when it opens.
    pub async fn arm_timers_where(
        &self,
        owned: impl Fn(&str, &str) -> bool,
    ) -> Result<usize, JournalError> {
        let timers = self.inner.env.journal.pending_timers().await?;
        let mut n = 0;
        for (key, timer) in timers {
            if owned(&key.entity_type, &key.entity_id)
                && self.inner.entity_type(&key.entity_type).is_some()
            {
                self.inner
                    .schedule_timer(&key.entity_type, &key.entity_id, timer);
                n += 1;
            }
        }
        Ok(n)
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The node's journal.
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.env.journal
    }

    /// The node's snapshot store.
    pub fn snapshots(&self) -> &Arc<dyn SnapshotStore> {
        &self.inner.env.snapshots
    }

    /// Registers a behavior that is not a deployed component (a native Rust
    /// one, for benchmarks and tests): it is not validated, recorded nor
    /// restored after a restart. Components go through [`Node::deploy`].
    #[cfg(feature = "native-behaviors")]
    pub async fn register_native(
        &self,
        entity_type: &str,
        behavior: Arc<dyn Behavior>,
    ) -> Result<Descriptor, RegisterError> {
        self.inner.install(entity_type, behavior).await
    }

    /// Computes a past state of an entity by replaying its journal through the
    /// type's behavior (from the newest usable snapshot for [`PastState::Seq`]).
    pub async fn state_at(
        &self,
        entity_type: &str,
        entity_id: &str,
        at: PastState,
    ) -> Result<HistoricState, ReadError> {
        let ty = self.ty(entity_type)?;
        let behavior = ty.behavior();
        let key = EntityKey::new(entity_type, entity_id);
        let until = match at {
            PastState::Seq(n) => Until::Seq(n),
            PastState::Time(t) => Until::Time(t),
        };
        let how = Replay {
            key: &key,
            until,
            from_snapshot: true,
            fold_on: FoldOn::Caller,
        };
        let r = replay::replay(self.journal(), self.snapshots(), &behavior, how)
            .await
            .map_err(|e| match e {
                ReplayError::Journal(e) => ReadError::Journal(e),
                ReplayError::Initial(f) => ReadError::Guest(f),
                e => ReadError::Codec(e.to_string()),
            })?;
        Ok(HistoricState {
            state: r.state,
            seq: r.seq,
            replayed: r.replayed,
        })
    }

    /// Waits until some entity stores events, or `max` passes.
    pub async fn appended(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.inner.env.appended.notified()).await;
    }

    /// The descriptor of the behavior registered for a type.
    pub fn descriptor(&self, entity_type: &str) -> Option<Descriptor> {
        self.inner
            .entity_type(entity_type)
            .map(|t| t.behavior().descriptor().clone())
    }

    pub(crate) fn ty(&self, entity_type: &str) -> Result<Arc<EntityType>, AskError> {
        self.inner
            .entity_type(entity_type)
            .ok_or_else(|| AskError::UnknownEntityType(entity_type.to_owned()))
    }

    /// Sends a command and waits for its reply: the reply leaves only after
    /// the command's events are durable. When the entity is idle, the
    /// command runs on the calling task (no hand-over to a runner and back);
    /// dropping the future half-way still finishes the command's write.
    pub async fn ask(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: Vec<u8>,
        options: AskOptions,
    ) -> Result<Reply, AskError> {
        let ty = self.ty(entity_type)?;
        self.inner
            .ask_entity(
                &ty,
                entity_id,
                command,
                options.expected_seq,
                None,
                options.timeout,
            )
            .await
    }

    /// Runs a message of another entity (send `from`, delivered by the
    /// sender's node) and waits for its reply: applied at most once, so a
    /// delivery repeated after a lost answer, a crash, a failover or a
    /// handoff is answered without running again (its reply is then empty).
    pub async fn deliver_send(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: Vec<u8>,
        from: SendId,
        timeout: Duration,
    ) -> Result<Reply, AskError> {
        self.inner
            .ask_from(entity_type, entity_id, command, from, timeout)
            .await
    }

    /// Queues a command without waiting for it to run. Fails only if it
    /// cannot be queued (unknown type, full mailbox with `drop_new`, stopped entity).
    pub async fn tell(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: Vec<u8>,
    ) -> Result<(), AskError> {
        let ty = self.ty(entity_type)?;
        let env = Envelope::Command {
            command,
            expected_seq: None,
            reply: None,
            timer_id: None,
            from: None,
        };
        self.inner.enqueue(&ty, entity_id, env).await
    }

    /// `ask` with a JSON command and a JSON reply, through the behavior's codecs.
    pub async fn ask_json(
        &self,
        entity_type: &str,
        entity_id: &str,
        json: &str,
        options: AskOptions,
    ) -> Result<JsonReply, ReadError> {
        let ty = self.ty(entity_type)?;
        let behavior = ty.behavior();
        let command = call_blocking(&*behavior, |b| b.command_from_json(json))?
            .map_err(AskError::MalformedCommand)?;
        let reply = self.ask(entity_type, entity_id, command, options).await?;
        let json = match &reply.reply {
            Some(bytes) => Some(
                call_blocking(&*behavior, |b| b.reply_to_json(bytes))?.map_err(ReadError::Codec)?,
            ),
            None => None,
        };
        Ok(JsonReply {
            reply: json,
            seq: reply.seq,
        })
    }

    /// Encodes a JSON command with the type's behavior.
    pub fn command_from_json(&self, entity_type: &str, json: &str) -> Result<Vec<u8>, ReadError> {
        let ty = self.ty(entity_type)?;
        Ok(
            call_blocking(&*ty.behavior(), |b| b.command_from_json(json))?
                .map_err(AskError::MalformedCommand)?,
        )
    }

    /// Renders an event of a type as JSON.
    pub fn event_to_json(&self, entity_type: &str, event: &[u8]) -> Result<String, ReadError> {
        let ty = self.ty(entity_type)?;
        call_blocking(&*ty.behavior(), |b| b.event_to_json(event))?.map_err(ReadError::Codec)
    }

    /// Renders reply bytes of a type as JSON.
    pub fn reply_to_json(&self, entity_type: &str, reply: &[u8]) -> Result<String, ReadError> {
        let ty = self.ty(entity_type)?;
        call_blocking(&*ty.behavior(), |b| b.reply_to_json(reply))?.map_err(ReadError::Codec)
    }

    /// Renders state bytes of a type (e.g. a snapshot's) as JSON.
    pub fn state_to_json(&self, entity_type: &str, state: &[u8]) -> Result<String, ReadError> {
        let ty = self.ty(entity_type)?;
        call_blocking(&*ty.behavior(), |b| b.state_to_json(state))?.map_err(ReadError::Codec)
    }

    /// Events of an entity with `from <= seq <= to`, at most `limit`.
    pub async fn events(
        &self,
        entity_type: &str,
        entity_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, ReadError> {
        let key = EntityKey::new(entity_type, entity_id);
        Ok(self.journal().read(&key, from, to, limit).await?)
    }

    /// The current state bytes and sequence number of an entity, read in
    /// mailbox order (after every command queued before it).
    pub async fn state(
        &self,
        entity_type: &str,
        entity_id: &str,
    ) -> Result<(Vec<u8>, u64), AskError> {
        let ty = self.ty(entity_type)?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .enqueue(&ty, entity_id, Envelope::Peek { reply: tx })
            .await?;
        rx.await.map_err(|_| AskError::ShuttingDown)?
    }

    /// The current state of an entity as JSON, with its sequence number.
    pub async fn state_json(
        &self,
        entity_type: &str,
        entity_id: &str,
    ) -> Result<(String, u64), ReadError> {
        let (state, seq) = self.state(entity_type, entity_id).await?;
        let ty = self.ty(entity_type)?;
        let json = call_blocking(&*ty.behavior(), |b| b.state_to_json(&state))?
            .map_err(ReadError::Codec)?;
        Ok((json, seq))
    }

    /// Follows lifecycle events from now on.
    pub fn lifecycle(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.inner.lifecycle.subscribe()
    }

    /// Number of entities in memory (live or recovering) of a type.
    pub fn live_entities(&self, entity_type: &str) -> usize {
        self.inner.entity_type(entity_type).map_or(0, |t| t.live())
    }

    /// Unloads from memory the entities for which `matches(type, id)` holds
    /// and which are idle; returns how many matching ones are still busy
    /// (call again until 0). Their state stays in the journal: the next
    /// command recovers them. Used by a shard handoff.
    pub fn passivate_where(&self, matches: impl Fn(&str, &str) -> bool) -> usize {
        let types: Vec<Arc<EntityType>> = {
            let types = self.inner.types.read().unwrap_or_else(|p| p.into_inner());
            types.values().cloned().collect()
        };
        let mut busy = 0;
        for ty in types {
            for mut stripe in ty.stripes() {
                let mut passivated = Vec::new();
                stripe.retain(|id, cell| {
                    if !matches(&ty.name, id) {
                        return true;
                    }
                    if entity::passivate_now(cell) {
                        passivated.push(id.to_string());
                        false
                    } else {
                        busy += 1;
                        true
                    }
                });
                drop(stripe);
                for id in passivated {
                    self.inner.env.emit(LifecycleEvent::Passivated {
                        entity_type: ty.name.clone(),
                        entity_id: id,
                    });
                }
            }
        }
        busy
    }

    /// A deployed component's bytes by its sha256 (lowercase hex), if this
    /// node holds it (peers fetch components of cluster-wide deploys).
    pub fn component_by_hash(&self, sha256: &str) -> Option<Vec<u8>> {
        let hex = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return None;
        }
        self.inner.registry.component(sha256).ok()
    }

    /// Publishes a cluster member's change on the node's lifecycle stream
    /// (a [`LifecycleEvent::Member`]; the cluster driver reports what its
    /// gossip and failure detector see). `addr` is the member's peer
    /// address, empty if unknown.
    pub fn emit_member(&self, change: MemberChange, node: u64, addr: String) {
        self.inner
            .env
            .emit(LifecycleEvent::Member { change, node, addr });
    }

    /// What an entity's mailbox holds now; `None` if it is not in memory.
    pub fn mailbox(&self, entity_type: &str, entity_id: &str) -> Option<MailboxView> {
        let cell = self
            .inner
            .entity_type(entity_type)?
            .existing_cell(entity_id)?;
        let (queued, busy) = entity::mailbox(&cell);
        Some(MailboxView { queued, busy })
    }

    /// Lets an entity stopped by supervision run again.
    pub fn resume(&self, entity_type: &str, entity_id: &str) -> bool {
        self.inner
            .entity_type(entity_type)
            .and_then(|t| t.existing_cell(entity_id))
            .is_some_and(|c| entity::resume(&c))
    }

    /// Stops accepting commands and waits (up to `grace`) until every queued
    /// command has been processed. Every acknowledged event is already durable.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let busy = {
                let types = self.inner.types.read().unwrap_or_else(|p| p.into_inner());
                types
                    .values()
                    .any(|t| t.stripes().any(|s| s.values().any(|c| entity::is_busy(c))))
            };
            if !busy || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A reply rendered as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonReply {
    /// The reply as JSON, if the behavior gave one.
    pub reply: Option<String>,
    /// The entity's sequence number after the command.
    pub seq: u64,
}

pub(crate) fn check_type_name(name: &str) -> Result<(), RegisterError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(RegisterError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A type is scanned for idle entities at a sixteenth of its
    /// `idle_after`, never more often than the sweeper's tick nor less often
    /// than every 5 s.
    #[test]
    fn idle_entities_are_looked_for_in_proportion_to_idle_after() {
        assert_eq!(
            sweep_period(Duration::from_secs(120)),
            Duration::from_secs(5)
        );
        assert_eq!(
            sweep_period(Duration::from_secs(32)),
            Duration::from_secs(2)
        );
        assert_eq!(sweep_period(Duration::from_millis(200)), SWEEP_TICK);
        assert_eq!(sweep_period(Duration::ZERO), SWEEP_TICK);
    }
}
