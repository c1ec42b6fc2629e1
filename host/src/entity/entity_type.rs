//! A registered entity type: its settings, its active behavior (swapped
//! atomically by a deploy) and its map of live entities, split into lock
//! stripes so that commands for different entities rarely contend.
//!
//! "Stripe" is a lock shard of this map only; cluster shards (which node
//! owns which entities) are another thing.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::behavior::Behavior;
use crate::config::EntitySettings;

use super::EntityCell;

/// Number of lock stripes of each entity type's map.
const STRIPES: usize = 64;

struct BehaviorSlot {
    behavior: Arc<dyn Behavior>,
    generation: u64,
    /// Generation at which the state schema last changed.
    schema_since: u64,
}

/// One lock stripe of a type's live entities. Ids are hashed with foldhash
/// (seeded per type), cheaper than SipHash on the ask path.
pub(crate) type Stripe = Mutex<StripeMap>;

/// A registered entity type: its behavior, settings and live entities.
pub(crate) struct EntityType {
    pub(crate) name: String,
    pub(crate) settings: EntitySettings,
    slot: RwLock<BehaviorSlot>,
    stripes: Box<[Stripe]>,
    hasher: foldhash::fast::RandomState,
}

impl EntityType {
    /// A type with no live entities, running `behavior`.
    pub(crate) fn new(
        name: &str,
        settings: EntitySettings,
        behavior: Arc<dyn Behavior>,
    ) -> EntityType {
        EntityType {
            name: name.to_owned(),
            settings,
            slot: RwLock::new(BehaviorSlot {
                behavior,
                generation: 0,
                schema_since: 0,
            }),
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The active behavior.
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

    /// Makes `behavior` active for every later command. State built under
    /// the old one carries over when the state schema is the same.
    pub(crate) fn swap(&self, behavior: Arc<dyn Behavior>) {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        let schema_changed =
            slot.behavior.descriptor().state_schema != behavior.descriptor().state_schema;
        slot.generation += 1;
        if schema_changed {
            slot.schema_since = slot.generation;
        }
        slot.behavior = behavior;
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

    fn stripe(&self, id: &str) -> &Stripe {
        let i = self.hasher.hash_one(id) as usize % self.stripes.len();
        &self.stripes[i]
    }

    /// The entity's cell, created if it is not in memory.
    pub(crate) fn cell(&self, id: &str) -> Arc<EntityCell> {
        let mut stripe = self.stripe(id).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = stripe.get(id) {
            return c.clone();
        }
        let id: Arc<str> = Arc::from(id);
        let cell = EntityCell::new(id.clone());
        stripe.insert(id, cell.clone());
        cell
    }

    /// The entity's cell if it is in memory.
    pub(crate) fn existing_cell(&self, id: &str) -> Option<Arc<EntityCell>> {
        self.stripe(id)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every stripe, each locked in turn by the caller.
    pub(crate) fn stripes(&self) -> impl Iterator<Item = MutexGuard<'_, StripeMap>> {
        self.stripes
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Entities in memory (live or recovering).
    pub(crate) fn live(&self) -> usize {
        self.stripes().map(|s| s.len()).sum()
    }
}

/// The map inside a [`Stripe`].
pub(crate) type StripeMap = HashMap<Arc<str>, Arc<EntityCell>, foldhash::fast::RandomState>;
