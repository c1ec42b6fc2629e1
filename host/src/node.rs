//! The in-process API of a node: register behaviors, `ask` and `tell`
//! entities, read their journal and state, follow lifecycle events.
//!
//! Owns the registry of entity types (each with its behavior, resolved
//! settings and sharded map of live entities), the lifecycle event stream,
//! durable timers and the passivation sweeper. The per-entity logic lives in
//! `entity` (private); storage behind the [`Journal`] and [`SnapshotStore`]
//! traits. A [`Node`] must be created inside a tokio runtime.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cairn_store::{
    EntityKey, EventRecord, Journal, JournalError, LogStore, SnapshotStore, SqliteOptions,
    SqliteStore, TimerRecord,
};
use tokio::sync::{Notify, broadcast, oneshot};

use crate::behavior::{Behavior, Descriptor, GuestFault};
use crate::config::{Config, EntitySettings, JournalBackend};
use crate::deadline::Deadlines;
use crate::entity::{self, Enqueue, EntityCell, Envelope};
use crate::hotswap::{self, ValidateError, ValidationReport};
use crate::registry::{
    DeployAction, DeployOutcome, DeployRecord, Deployment, Registry, RegistryError,
};
use crate::runtime::{GuestLimits, LoadError, WasmEngine};

/// Number of lock shards of each entity type's map.
const SHARDS: usize = 64;
/// Longest entity id accepted, in bytes.
pub const MAX_ENTITY_ID_LEN: usize = 256;

/// The answer to an accepted command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The encoded reply, if the behavior gave one.
    pub reply: Option<Vec<u8>>,
    /// The entity's sequence number after the command.
    pub seq: u64,
}

/// Why a command got no reply from its behavior.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// No behavior is registered for the entity type.
    #[error("unknown entity type `{0}`")]
    UnknownEntityType(String),
    /// The entity id is empty or too long.
    #[error("invalid entity id: {0}")]
    InvalidEntityId(String),
    /// No reply within the timeout (the command may still run).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The mailbox was full and the overflow strategy dropped the command.
    #[error("mailbox full: command dropped")]
    MailboxFull,
    /// The entity was stopped by supervision.
    #[error("entity stopped: {0}")]
    EntityStopped(String),
    /// The expected sequence number did not match (optimistic concurrency).
    #[error("conflict: expected sequence number {expected}, entity is at {actual}")]
    Conflict {
        /// What the caller expected.
        expected: u64,
        /// Where the entity is.
        actual: u64,
    },
    /// The behavior rejected the command.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The behavior could not decode the command.
    #[error("malformed command: {0}")]
    MalformedCommand(String),
    /// The guest failed (trap, deadline, memory); the entity was restarted.
    #[error("guest failure: {0}")]
    Guest(String),
    /// The journal could not persist the events; nothing was stored.
    #[error("journal: {0}")]
    Journal(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
}

/// Something that happened to an entity or a type, for observers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// An entity was recovered and is live.
    Started {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Sequence number of the snapshot recovery started from.
        snapshot_seq: Option<u64>,
        /// Events replayed after the snapshot.
        replayed: u64,
        /// Sequence number after recovery.
        seq: u64,
    },
    /// An idle entity was unloaded.
    Passivated {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
    },
    /// An entity was stopped by supervision.
    Stopped {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Why.
        reason: String,
    },
    /// An entity failed and will recover from its journal.
    Restarted {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The failure.
        reason: String,
    },
    /// A message could not be delivered.
    DeadLetter {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Why.
        reason: String,
    },
    /// The behavior could not decode a command.
    Unhandled {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The decode error.
        reason: String,
    },
    /// A behavior was registered for a type.
    Deployed {
        /// Entity type.
        entity_type: String,
        /// The behavior's version string.
        version: String,
    },
}

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
}

/// Why a deploy failed; the type's active behavior stays.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The component or type name was refused.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The registry could not store it.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Replaying history through the new version failed; the active version
    /// stays. The report names the entities and sequence numbers.
    #[error("deploy refused: {}", .0.summary())]
    Refused(Box<ValidationReport>),
    /// Validation could not read the journal.
    #[error("validation could not run: {0}")]
    Validate(#[from] ValidateError),
    /// A rollback names a version that does not exist, or there is none to go back to.
    #[error("no such version: {0}")]
    NoSuchVersion(String),
}

/// What a deploy (or a check, or a rollback) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployResult {
    /// The active version afterwards (for a check: the active one, if any).
    pub deployment: Option<Deployment>,
    /// True if the active version changed.
    pub changed: bool,
    /// What replaying history showed (empty when nothing was replayed).
    pub report: ValidationReport,
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
pub enum PastState {
    /// Right after the event with this sequence number (or the last one, if
    /// the entity has fewer events).
    Seq(u64),
    /// After every event stored at or before this time (ms since the Unix epoch).
    Time(u64),
}

/// Why a behavior could not be registered.
#[derive(Debug, thiserror::Error)]
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

struct BehaviorSlot {
    behavior: Arc<dyn Behavior>,
    generation: u64,
    /// Generation at which the state schema last changed.
    schema_since: u64,
}

/// One lock shard of a type's live entities. Ids are hashed with foldhash
/// (seeded per type): SipHash showed in the profiles of the ask path.
type Shard = Mutex<HashMap<Arc<str>, Arc<EntityCell>, foldhash::fast::RandomState>>;

/// A registered entity type: its behavior, settings and live entities.
pub(crate) struct EntityType {
    pub(crate) name: String,
    pub(crate) settings: EntitySettings,
    slot: RwLock<BehaviorSlot>,
    shards: Box<[Shard]>,
    hasher: foldhash::fast::RandomState,
}

impl EntityType {
    pub(crate) fn behavior(&self) -> Arc<dyn Behavior> {
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .behavior
            .clone()
    }

    /// The behavior and its generation, read together.
    pub(crate) fn current(&self) -> (Arc<dyn Behavior>, u64) {
        let slot = self.slot.read().unwrap_or_else(|p| p.into_inner());
        (slot.behavior.clone(), slot.generation)
    }

    /// Can state built at `generation` be kept under the current behavior?
    pub(crate) fn schema_unchanged_since(&self, generation: u64) -> bool {
        generation
            >= self
                .slot
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .schema_since
    }

    fn shard(&self, id: &str) -> &Shard {
        let i = self.hasher.hash_one(id) as usize % self.shards.len();
        &self.shards[i]
    }

    fn cell(&self, id: &str) -> Arc<EntityCell> {
        let mut shard = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = shard.get(id) {
            return c.clone();
        }
        let id: Arc<str> = Arc::from(id);
        let cell = EntityCell::new(id.clone());
        shard.insert(id, cell.clone());
        cell
    }

    fn existing_cell(&self, id: &str) -> Option<Arc<EntityCell>> {
        self.shard(id)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

/// Shared state of a node.
pub(crate) struct NodeInner {
    config: Config,
    engine: Arc<WasmEngine>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) snapshots: Arc<dyn SnapshotStore>,
    types: RwLock<HashMap<String, Arc<EntityType>>>,
    lifecycle: broadcast::Sender<LifecycleEvent>,
    timers: Mutex<HashSet<u64>>,
    next_timer: AtomicU64,
    shutting_down: AtomicBool,
    /// Woken after every append that stored events.
    pub(crate) appended: Notify,
    registry: Registry,
    /// Deploys and rollbacks of a node run one at a time.
    deploying: tokio::sync::Mutex<()>,
    /// Parked tasks that run entities' mailboxes.
    pub(crate) runners: entity::Runners,
    /// Timeouts of `ask`.
    deadlines: Arc<Deadlines>,
}

impl NodeInner {
    pub(crate) fn emit(&self, event: LifecycleEvent) {
        let _ = self.lifecycle.send(event);
    }

    pub(crate) fn dead_letter(&self, ty: &EntityType, id: &str, reason: &str) {
        self.emit(LifecycleEvent::DeadLetter {
            entity_type: ty.name.clone(),
            entity_id: id.to_owned(),
            reason: reason.to_owned(),
        });
    }

    pub(crate) fn next_timer_id(&self) -> u64 {
        self.next_timer.fetch_add(1, Ordering::Relaxed)
    }

    fn entity_type(&self, name: &str) -> Option<Arc<EntityType>> {
        self.types
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Queues an envelope for an entity, creating its cell if needed.
    async fn send(
        self: &Arc<Self>,
        ty: &Arc<EntityType>,
        id: &str,
        env: Envelope,
    ) -> Result<(), AskError> {
        self.deliver(ty, id, env, false).await
    }

    /// Queues an envelope like [`NodeInner::send`]; with `here`, when the
    /// entity is idle the calling task runs the command itself (see
    /// [`entity::run_here`]) and returns once it is answered.
    async fn deliver(
        self: &Arc<Self>,
        ty: &Arc<EntityType>,
        id: &str,
        mut env: Envelope,
        here: bool,
    ) -> Result<(), AskError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(AskError::ShuttingDown);
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
                entity::run_here(self.clone(), ty.clone(), cell, env).await;
                return Ok(());
            }
            match entity::enqueue(self, ty, &cell, env)? {
                Enqueue::Done => return Ok(()),
                Enqueue::Retry(e) => env = e,
                Enqueue::Wait(e) => {
                    env = e;
                    entity::wait_for_space(&cell).await;
                }
            }
        }
    }

    /// Runs a `send` effect (at most once, after the sender's events are durable).
    pub(crate) fn send_effect(self: &Arc<Self>, entity_type: String, id: String, command: Vec<u8>) {
        let node = self.clone();
        tokio::spawn(async move {
            let Some(ty) = node.entity_type(&entity_type) else {
                node.emit(LifecycleEvent::DeadLetter {
                    entity_type: entity_type.clone(),
                    entity_id: id,
                    reason: format!("unknown entity type `{entity_type}`"),
                });
                return;
            };
            let env = Envelope::Command {
                command,
                expected_seq: None,
                reply: None,
                timer_id: None,
            };
            if let Err(e) = node.send(&ty, &id, env).await {
                node.dead_letter(&ty, &id, &e.to_string());
            }
        });
    }

    /// Arms a durable timer: at `fire_at_ms` its command goes to the entity,
    /// which deletes the timer with the command's own write.
    pub(crate) fn schedule_timer(
        self: &Arc<Self>,
        entity_type: &str,
        id: &str,
        timer: TimerRecord,
    ) {
        {
            let mut armed = self.timers.lock().unwrap_or_else(|p| p.into_inner());
            if !armed.insert(timer.timer_id) {
                return;
            }
        }
        let node = self.clone();
        let entity_type = entity_type.to_owned();
        let id = id.to_owned();
        tokio::spawn(async move {
            let now = now_ms();
            if timer.fire_at_ms > now {
                tokio::time::sleep(Duration::from_millis(timer.fire_at_ms - now)).await;
            }
            if let Some(ty) = node.entity_type(&entity_type) {
                let env = Envelope::Command {
                    command: timer.command,
                    expected_seq: None,
                    reply: None,
                    timer_id: Some(timer.timer_id),
                };
                if let Err(e) = node.send(&ty, &id, env).await {
                    node.dead_letter(&ty, &id, &format!("timer not delivered: {e}"));
                }
            }
            node.timers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&timer.timer_id);
        });
    }

    /// Unloads entities idle for longer than their type's `idle_after`. A
    /// type's cells are scanned once per [`sweep_period`] of its `idle_after`
    /// (`due` keeps when each type is next due), not at every tick: with the
    /// default of 120 s a scan every 100 ms visited every live entity 1,200
    /// times per idle period (docs/BENCHMARKS.md).
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
            for shard in ty.shards.iter() {
                let mut passivated = Vec::new();
                {
                    let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
                    map.retain(|id, cell| {
                        if entity::try_passivate(cell, idle, now) {
                            passivated.push(id.to_string());
                            false
                        } else {
                            true
                        }
                    });
                }
                for id in passivated {
                    self.emit(LifecycleEvent::Passivated {
                        entity_type: ty.name.clone(),
                        entity_id: id,
                    });
                }
            }
        }
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A Cairn node running in this process. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl Node {
    /// Opens the storage chosen by `config.node.journal` (SQLite by default) in
    /// `config.node.data_dir` and starts a node.
    pub fn open(config: Config) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&config.node.data_dir)
            .map_err(|e| NodeError::Storage(JournalError::Io(e.to_string())))?;
        match config.node.journal {
            JournalBackend::Sqlite => {
                let options = SqliteOptions {
                    max_batch: config.node.journal_max_batch,
                    ..SqliteOptions::default()
                };
                let store = SqliteStore::open(&config.node.data_dir, options)?;
                Node::with_stores(config, store.clone(), store)
            }
            JournalBackend::Log => {
                let store = LogStore::open(&config.node.data_dir, config.node.journal_max_batch)?;
                Node::with_stores(config, store.clone(), store)
            }
        }
    }

    /// Starts a node on the given storage.
    pub fn with_stores(
        config: Config,
        journal: Arc<dyn Journal>,
        snapshots: Arc<dyn SnapshotStore>,
    ) -> Result<Node, NodeError> {
        let engine = WasmEngine::new()?;
        let registry = Registry::open(&config.node.data_dir)?;
        let (lifecycle, _) = broadcast::channel(4096);
        let seed = now_ms().saturating_mul(1_000_000);
        let inner = Arc::new(NodeInner {
            config,
            engine,
            journal,
            snapshots,
            types: RwLock::new(HashMap::new()),
            lifecycle,
            timers: Mutex::new(HashSet::new()),
            next_timer: AtomicU64::new(seed),
            shutting_down: AtomicBool::new(false),
            appended: Notify::new(),
            registry,
            deploying: tokio::sync::Mutex::new(()),
            runners: entity::Runners::default(),
            deadlines: Deadlines::start().map_err(|e| NodeError::Thread(e.to_string()))?,
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
                node.sweep(Instant::now(), &mut due);
            }
        });
        Ok(Node { inner })
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The node's journal.
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.journal
    }

    /// The node's snapshot store.
    pub fn snapshots(&self) -> &Arc<dyn SnapshotStore> {
        &self.inner.snapshots
    }

    /// Compiles, checks and registers a component for an entity type. A type
    /// registered again switches to the new behavior for every later command.
    pub async fn register_component(
        &self,
        entity_type: &str,
        wasm: Vec<u8>,
    ) -> Result<Descriptor, RegisterError> {
        check_type_name(entity_type)?;
        let settings = self.inner.config.settings_for(entity_type);
        let limits = GuestLimits {
            call_timeout: settings.supervision.call_timeout,
            memory_limit: settings.supervision.memory_limit,
            ..GuestLimits::default()
        };
        let engine = self.inner.engine.clone();
        let behavior = tokio::task::spawn_blocking(move || engine.load(&wasm, limits))
            .await
            .map_err(|e| LoadError::Engine(e.to_string()))??;
        self.register(entity_type, Arc::new(behavior)).await
    }

    /// Reads a component file and registers it.
    pub async fn register_file(
        &self,
        entity_type: &str,
        path: &Path,
    ) -> Result<Descriptor, RegisterError> {
        let wasm = std::fs::read(path).map_err(|source| RegisterError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.register_component(entity_type, wasm).await
    }

    /// Registers any [`Behavior`] (for example a native one) for an entity type.
    pub async fn register(
        &self,
        entity_type: &str,
        behavior: Arc<dyn Behavior>,
    ) -> Result<Descriptor, RegisterError> {
        check_type_name(entity_type)?;
        let descriptor = behavior.descriptor().clone();
        let is_new = {
            let mut types = self.inner.types.write().unwrap_or_else(|p| p.into_inner());
            match types.get(entity_type) {
                Some(ty) => {
                    let mut slot = ty.slot.write().unwrap_or_else(|p| p.into_inner());
                    let schema_changed =
                        slot.behavior.descriptor().state_schema != descriptor.state_schema;
                    slot.generation += 1;
                    if schema_changed {
                        slot.schema_since = slot.generation;
                    }
                    slot.behavior = behavior;
                    false
                }
                None => {
                    let settings = self.inner.config.settings_for(entity_type);
                    types.insert(
                        entity_type.to_owned(),
                        Arc::new(EntityType {
                            name: entity_type.to_owned(),
                            settings,
                            slot: RwLock::new(BehaviorSlot {
                                behavior,
                                generation: 0,
                                schema_since: 0,
                            }),
                            shards: (0..SHARDS)
                                .map(|_| Mutex::new(HashMap::default()))
                                .collect(),
                            hasher: foldhash::fast::RandomState::default(),
                        }),
                    );
                    true
                }
            }
        };
        if is_new {
            let timers = self
                .inner
                .journal
                .pending_timers()
                .await
                .map_err(RegisterError::Timers)?;
            for (key, timer) in timers {
                if key.entity_type == entity_type {
                    self.inner
                        .schedule_timer(entity_type, &key.entity_id, timer);
                }
            }
        }
        tracing::info!(entity_type, version = %descriptor.version, "behavior registered");
        self.inner.emit(LifecycleEvent::Deployed {
            entity_type: entity_type.to_owned(),
            version: descriptor.version.clone(),
        });
        Ok(descriptor)
    }

    /// Deploys a component to an entity type. The node compiles and checks
    /// it, then replays the history of up to `[node] deploy_sample` existing
    /// entities of the type through it (from their newest snapshot of its
    /// state schema, or from the start). Any failure refuses the deploy
    /// ([`DeployError::Refused`], recorded in the history) and the active
    /// version stays. Otherwise the component is stored (by content; it
    /// survives restarts) as the type's next version and activated: the
    /// command in flight finishes on the old version, every later one runs on
    /// the new. With `check`, everything but the activation runs and nothing
    /// changes. Bytes identical to the active version change nothing.
    pub async fn deploy_checked(
        &self,
        entity_type: &str,
        wasm: Vec<u8>,
        check: bool,
    ) -> Result<DeployResult, DeployError> {
        check_type_name(entity_type)?;
        let _one_at_a_time = self.inner.deploying.lock().await;
        let active = self.inner.registry.active(entity_type);
        let registered = self.inner.entity_type(entity_type);
        if let Some(a) = &active
            && registered.is_some()
            && a.hash == crate::registry::sha256_hex(&wasm)
        {
            return Ok(DeployResult {
                deployment: active.clone(),
                changed: false,
                report: ValidationReport::default(),
            });
        }
        // The bytes are written (and their writeback started) while the
        // component compiles; the registry makes them durable at the cutover.
        let store = (!check).then(|| {
            let (inner, bytes) = (self.inner.clone(), wasm.clone());
            tokio::task::spawn_blocking(move || inner.registry.stage_component(&bytes))
        });
        let candidate = self.load(entity_type, wasm.clone()).await?;
        if let Some(store) = store {
            store.await.map_err(|e| RegistryError::Io {
                path: "components".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        }
        let descriptor = candidate.descriptor().clone();
        let report = self.validate(entity_type, &candidate).await?;
        if !report.passed() {
            if !check {
                let record = DeployRecord {
                    entity_type: entity_type.to_owned(),
                    action: DeployAction::Deploy,
                    version: None,
                    hash: crate::registry::sha256_hex(&wasm),
                    behavior_version: descriptor.version.clone(),
                    at_ms: now_ms(),
                    outcome: DeployOutcome::Refused,
                    report: report.clone(),
                };
                self.registry_io(move |r| r.refused(record)).await?;
                tracing::warn!(entity_type, report = %report.summary(), "deploy refused");
            }
            return Err(DeployError::Refused(Box::new(report)));
        }
        if check {
            return Ok(DeployResult {
                deployment: active,
                changed: false,
                report,
            });
        }
        let deployment = {
            let (ty, d, rep) = (entity_type.to_owned(), descriptor.clone(), report.clone());
            self.registry_io(move |r| r.record_with(&ty, &wasm, &d, now_ms(), Some(rep)))
                .await?
        };
        self.register(entity_type, candidate).await?;
        tracing::info!(entity_type, version = deployment.deploy, report = %report.summary(), "deployed");
        Ok(DeployResult {
            deployment: Some(deployment),
            changed: true,
            report,
        })
    }

    /// Replays sampled history of a type through `candidate`, comparing with
    /// the active version ([`hotswap::validate`]).
    async fn validate(
        &self,
        entity_type: &str,
        candidate: &Arc<dyn Behavior>,
    ) -> Result<ValidationReport, DeployError> {
        let active = self.inner.entity_type(entity_type).map(|t| t.behavior());
        Ok(hotswap::validate(
            &self.inner.journal,
            &self.inner.snapshots,
            entity_type,
            candidate,
            active.as_ref(),
            self.inner.config.node.deploy_sample,
        )
        .await?)
    }

    /// Runs a registry update (file writes and fsyncs) on a blocking thread,
    /// not on a worker that serves commands.
    async fn registry_io<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner.registry))
            .await
            .unwrap_or_else(|e| {
                Err(RegistryError::Io {
                    path: "deployments.json".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// [`Node::deploy_checked`] without `check`; returns the active version.
    pub async fn deploy(
        &self,
        entity_type: &str,
        wasm: Vec<u8>,
    ) -> Result<Deployment, DeployError> {
        let r = self.deploy_checked(entity_type, wasm, false).await?;
        r.deployment
            .ok_or_else(|| DeployError::NoSuchVersion(entity_type.to_owned()))
    }

    /// Activates an earlier version of a type (`to`, or else the newest
    /// version below the active one), after the same validation as a deploy.
    pub async fn rollback(
        &self,
        entity_type: &str,
        to: Option<u32>,
    ) -> Result<DeployResult, DeployError> {
        let _one_at_a_time = self.inner.deploying.lock().await;
        let active = self.inner.registry.active(entity_type).ok_or_else(|| {
            DeployError::NoSuchVersion(format!("`{entity_type}` was never deployed"))
        })?;
        let target = match to {
            Some(v) => v,
            None if active.deploy > 1 => active.deploy - 1,
            None => {
                return Err(DeployError::NoSuchVersion(format!(
                    "`{entity_type}` has no version before {}",
                    active.deploy
                )));
            }
        };
        let deployment = self
            .inner
            .registry
            .version(entity_type, target)
            .ok_or_else(|| {
                DeployError::NoSuchVersion(format!("`{entity_type}` has no version {target}"))
            })?;
        if deployment.deploy == active.deploy {
            return Ok(DeployResult {
                deployment: Some(active),
                changed: false,
                report: ValidationReport::default(),
            });
        }
        let wasm = self.inner.registry.component(&deployment.hash)?;
        let candidate = self.load(entity_type, wasm).await?;
        let report = self.validate(entity_type, &candidate).await?;
        if !report.passed() {
            let record = DeployRecord {
                entity_type: entity_type.to_owned(),
                action: DeployAction::Rollback,
                version: Some(target),
                hash: deployment.hash.clone(),
                behavior_version: deployment.version.clone(),
                at_ms: now_ms(),
                outcome: DeployOutcome::Refused,
                report: report.clone(),
            };
            self.registry_io(move |r| r.refused(record)).await?;
            tracing::warn!(entity_type, version = target, report = %report.summary(), "rollback refused");
            return Err(DeployError::Refused(Box::new(report)));
        }
        let deployment = {
            let (ty, rep) = (entity_type.to_owned(), report.clone());
            self.registry_io(move |r| r.activate(&ty, target, now_ms(), rep))
                .await?
        };
        self.register(entity_type, candidate).await?;
        tracing::info!(entity_type, version = target, "rolled back");
        Ok(DeployResult {
            deployment: Some(deployment),
            changed: true,
            report,
        })
    }

    /// Every version of a type, oldest first, and which one is active.
    pub fn versions(&self, entity_type: &str) -> (Vec<Deployment>, Option<u32>) {
        (
            self.inner.registry.history(entity_type),
            self.inner.registry.active(entity_type).map(|d| d.deploy),
        )
    }

    /// Every deploy, refusal and rollback of a type, oldest first.
    pub fn deploy_records(&self, entity_type: &str) -> Vec<DeployRecord> {
        self.inner.registry.records(entity_type)
    }

    /// Registers the active deploy of every type in the node's registry (what
    /// a restarted node served before). Returns them.
    pub async fn restore_deployments(&self) -> Result<Vec<Deployment>, DeployError> {
        let all = self.inner.registry.all_active();
        for d in &all {
            let wasm = self.inner.registry.component(&d.hash)?;
            let behavior = self.load(&d.entity_type, wasm).await?;
            self.register(&d.entity_type, behavior).await?;
        }
        Ok(all)
    }

    /// The active deploy of every type deployed through [`Node::deploy`].
    pub fn deployments(&self) -> Vec<Deployment> {
        self.inner.registry.all_active()
    }

    /// Every deploy of a type, oldest first.
    pub fn deploy_history(&self, entity_type: &str) -> Vec<Deployment> {
        self.inner.registry.history(entity_type)
    }

    async fn load(
        &self,
        entity_type: &str,
        wasm: Vec<u8>,
    ) -> Result<Arc<dyn Behavior>, RegisterError> {
        let settings = self.inner.config.settings_for(entity_type);
        let limits = GuestLimits {
            call_timeout: settings.supervision.call_timeout,
            memory_limit: settings.supervision.memory_limit,
            ..GuestLimits::default()
        };
        let engine = self.inner.engine.clone();
        // On the low-priority pool: a deploy's compile yields to commands.
        let behavior = crate::runtime::background(move || engine.load(&wasm, limits))
            .await
            .ok_or_else(|| LoadError::Engine("the compile task failed".into()))??;
        Ok(Arc::new(behavior))
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
        let (mut state, mut seq) = match at {
            PastState::Seq(n) => {
                let schema = behavior.descriptor().state_schema;
                match self.inner.snapshots.load(&key, n, schema).await? {
                    Some(s) => (s.state, s.seq),
                    None => (behavior.initial_state()?, 0),
                }
            }
            PastState::Time(_) => (behavior.initial_state()?, 0),
        };
        let upto = match at {
            PastState::Seq(n) => n,
            PastState::Time(_) => u64::MAX,
        };
        let mut replayed = 0u64;
        const CHUNK: usize = 4096;
        while seq < upto {
            let events = self.inner.journal.read(&key, seq + 1, upto, CHUNK).await?;
            let mut packed = cairn_store::PackedEvents::default();
            let mut done = events.len() < CHUNK;
            for e in &events {
                if let PastState::Time(t) = at
                    && e.timestamp_ms > t
                {
                    done = true;
                    break;
                }
                packed.push(e.seq, &e.payload)?;
            }
            if packed.count > 0 {
                state = behavior.fold(&state, &packed.packed)?.map_err(|e| {
                    ReadError::Codec(format!(
                        "event #{}: {}",
                        seq + 1 + u64::from(e.index),
                        e.message
                    ))
                })?;
                seq = packed.last_seq;
                replayed += packed.count as u64;
            }
            if done {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(HistoricState {
            state,
            seq,
            replayed,
        })
    }

    /// Waits until some entity stores events, or `max` passes.
    pub async fn appended(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.inner.appended.notified()).await;
    }

    /// The descriptor of the behavior registered for a type.
    pub fn descriptor(&self, entity_type: &str) -> Option<Descriptor> {
        self.inner
            .entity_type(entity_type)
            .map(|t| t.behavior().descriptor().clone())
    }

    fn ty(&self, entity_type: &str) -> Result<Arc<EntityType>, AskError> {
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
        let (tx, rx) = oneshot::channel();
        let env = Envelope::Command {
            command,
            expected_seq: options.expected_seq,
            reply: Some(tx),
            timer_id: None,
        };
        let work = std::pin::pin!(async {
            self.inner.deliver(&ty, entity_id, env, true).await?;
            rx.await.map_err(|_| AskError::ShuttingDown)?
        });
        self.inner
            .deadlines
            .timeout(options.timeout, work)
            .await
            .map_err(|_| AskError::Timeout(options.timeout))?
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
        };
        self.inner.send(&ty, entity_id, env).await
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
        let command = behavior
            .command_from_json(json)?
            .map_err(AskError::MalformedCommand)?;
        let reply = self.ask(entity_type, entity_id, command, options).await?;
        let json = match &reply.reply {
            Some(bytes) => Some(behavior.reply_to_json(bytes)?.map_err(ReadError::Codec)?),
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
        Ok(ty
            .behavior()
            .command_from_json(json)?
            .map_err(AskError::MalformedCommand)?)
    }

    /// Renders an event of a type as JSON.
    pub fn event_to_json(&self, entity_type: &str, event: &[u8]) -> Result<String, ReadError> {
        let ty = self.ty(entity_type)?;
        ty.behavior()
            .event_to_json(event)?
            .map_err(ReadError::Codec)
    }

    /// Renders reply bytes of a type as JSON.
    pub fn reply_to_json(&self, entity_type: &str, reply: &[u8]) -> Result<String, ReadError> {
        let ty = self.ty(entity_type)?;
        ty.behavior()
            .reply_to_json(reply)?
            .map_err(ReadError::Codec)
    }

    /// Renders state bytes of a type (e.g. a snapshot's) as JSON.
    pub fn state_to_json(&self, entity_type: &str, state: &[u8]) -> Result<String, ReadError> {
        let ty = self.ty(entity_type)?;
        ty.behavior()
            .state_to_json(state)?
            .map_err(ReadError::Codec)
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
        Ok(self.inner.journal.read(&key, from, to, limit).await?)
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
            .send(&ty, entity_id, Envelope::Peek { reply: tx })
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
        let json = ty
            .behavior()
            .state_to_json(&state)?
            .map_err(ReadError::Codec)?;
        Ok((json, seq))
    }

    /// Follows lifecycle events from now on.
    pub fn lifecycle(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.inner.lifecycle.subscribe()
    }

    /// Number of entities in memory (live or recovering) of a type.
    pub fn live_entities(&self, entity_type: &str) -> usize {
        self.inner.entity_type(entity_type).map_or(0, |t| {
            t.shards
                .iter()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
                .sum()
        })
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
        let deadline = Instant::now() + grace;
        loop {
            let busy = {
                let types = self.inner.types.read().unwrap_or_else(|p| p.into_inner());
                types.values().any(|t| {
                    t.shards.iter().any(|s| {
                        s.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .values()
                            .any(|c| entity::is_busy(c))
                    })
                })
            };
            if !busy || Instant::now() >= deadline {
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

fn check_type_name(name: &str) -> Result<(), RegisterError> {
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
