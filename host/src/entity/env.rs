//! The narrow environment an entity runs in: the storage it reads and
//! writes, where its lifecycle events go, the clock it reads, and the
//! [`Outbox`] that arms what a command's write scheduled once it is durable
//! (timers, and messages to other entities: see `crate::outbox`).
//!
//! The node builds one [`Env`] and hands it to every entity; the entity
//! never sees the node. In a cluster it also holds the node's
//! [`Placement`]: the entity asks it before it starts and before each
//! command whether this node still serves it, and under which allocation
//! (the fence its writes carry).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use cairn_store::{EntityKey, Journal, SnapshotStore, TimerRecord};
use tokio::sync::{Notify, broadcast};

use crate::clock::Clock;
use crate::placement::{Admission, Placement};
use crate::types::LifecycleEvent;

use super::Runners;

/// What runs a command's effects once its write is durable. The node
/// implements it; the entity only calls it.
pub(crate) trait Outbox: Send + Sync + 'static {
    /// Arms a durable timer of an entity (already in the journal): a
    /// scheduled command, or a message of its outbox.
    fn schedule_timer(&self, entity_type: &str, entity_id: &str, timer: TimerRecord);
}

/// Everything an entity needs from the node that runs it.
pub(crate) struct Env {
    /// Where events and timers are appended.
    pub(crate) journal: Arc<dyn Journal>,
    /// Where snapshots are saved and loaded.
    pub(crate) snapshots: Arc<dyn SnapshotStore>,
    /// The lifecycle stream.
    events: broadcast::Sender<LifecycleEvent>,
    /// Woken after every append that stored events.
    pub(crate) appended: Notify,
    /// Parked tasks that run entities' mailboxes.
    pub(crate) runners: Runners,
    /// The clock of the decision logic.
    pub(crate) clock: Arc<dyn Clock>,
    next_timer: AtomicU64,
    /// Weak: the node owns the environment, not the other way round.
    outbox: Weak<dyn Outbox>,
    /// Which entities this node may run, in a cluster (`None`: all).
    pub(crate) placement: Option<Arc<dyn Placement>>,
    /// Tombstones of fired timers found when arming an entity's timers
    /// (a restart, a shard taken over), until the entity starts and takes
    /// them (its next write with events removes them).
    buried: Mutex<HashMap<EntityKey, Vec<u64>>>,
}

impl Env {
    /// An environment whose effects go to `outbox` (while it lives).
    pub(crate) fn new(
        journal: Arc<dyn Journal>,
        snapshots: Arc<dyn SnapshotStore>,
        events: broadcast::Sender<LifecycleEvent>,
        clock: Arc<dyn Clock>,
        outbox: Weak<dyn Outbox>,
        placement: Option<Arc<dyn Placement>>,
    ) -> Env {
        // Timer ids only need to be unique per node: start from the time in
        // ns, above any id an earlier run of the node handed out.
        let seed = clock.wall_ms().saturating_mul(1_000_000);
        Env {
            journal,
            snapshots,
            events,
            appended: Notify::new(),
            runners: Runners::default(),
            clock,
            next_timer: AtomicU64::new(seed),
            outbox,
            placement,
            buried: Mutex::new(HashMap::new()),
        }
    }

    /// Notes a tombstone of `key` found when arming its timers.
    pub(crate) fn note_tombstone(&self, key: &EntityKey, timer_id: u64) {
        let mut b = self.buried.lock().unwrap_or_else(|p| p.into_inner());
        let ids = b.entry(key.clone()).or_default();
        if !ids.contains(&timer_id) {
            ids.push(timer_id);
        }
    }

    /// The tombstones noted for entity `id` of `entity_type` (taken: the
    /// entity now knows them). Called at every entity start: no key is
    /// built while none are noted.
    pub(crate) fn take_tombstones(&self, entity_type: &str, id: &str) -> Vec<u64> {
        let mut b = self.buried.lock().unwrap_or_else(|p| p.into_inner());
        if b.is_empty() {
            return Vec::new();
        }
        b.remove(&EntityKey::new(entity_type, id))
            .unwrap_or_default()
    }

    /// Publishes a lifecycle event (nobody listening is fine).
    pub(crate) fn emit(&self, event: LifecycleEvent) {
        let _ = self.events.send(event);
    }

    /// Publishes a dead letter of an entity.
    pub(crate) fn dead_letter(&self, entity_type: &str, entity_id: &str, reason: &str) {
        self.emit(LifecycleEvent::DeadLetter {
            entity_type: entity_type.to_owned(),
            entity_id: entity_id.to_owned(),
            reason: reason.to_owned(),
        });
    }

    /// A fresh timer id.
    pub(crate) fn next_timer_id(&self) -> u64 {
        self.next_timer.fetch_add(1, Ordering::Relaxed)
    }

    /// May this node start `key` now, and under which allocation?
    pub(crate) fn admit(&self, key: &EntityKey) -> Admission {
        match &self.placement {
            None => Admission::Here(None),
            Some(p) => p.admit(key, false),
        }
    }

    /// [`Env::admit`] by type and id, without building a key on a single node.
    pub(crate) fn admit_entity(&self, entity_type: &str, entity_id: &str, live: bool) -> Admission {
        match &self.placement {
            None => Admission::Here(None),
            Some(p) => p.admit(&EntityKey::new(entity_type, entity_id), live),
        }
    }

    /// The outbox, unless the node is gone.
    pub(crate) fn outbox(&self) -> Option<Arc<dyn Outbox>> {
        self.outbox.upgrade()
    }
}
