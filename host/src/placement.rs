//! Where an entity may run: the node's one admission point.
//!
//! Every command reaches an entity through the node, whether it came from
//! a client, a forward, a timer or another entity's `send`. On a single
//! node every entity runs here. A cluster member is given a [`Placement`]
//! when it opens ([`crate::Node::open_in_cluster`]): before an entity is
//! started, and before each of its commands runs, the node asks it whether
//! this node serves the entity's shard now and under which allocation
//! ([`Fence`]). The entity keeps that allocation while it lives and every
//! one of its writes carries it ([`cairn_store::Journal::append_fenced`]),
//! so an actor left behind on a deposed owner cannot write. A `send` does
//! not pick its node: it is handed to [`Placement::deliver`], which routes
//! it like a client's command. Durable timers belong to their entity's
//! shard: they move with it (the handoff carries them) and fire only on a
//! node that admits their entity.

use cairn_store::{EntityKey, Fence};

/// May this node run an entity now?
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Yes, under this allocation (`None` on a single node).
    Here(Option<Fence>),
    /// No: another node owns the entity's shard. Why, for the error.
    Elsewhere(String),
    /// Not now: this node owns the shard but cannot serve it yet (its
    /// history is still arriving, or its lease lapsed). Why, for the error.
    NotYet(String),
}

/// A command the node produced itself, to be run wherever its entity lives.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The target entity.
    pub target: EntityKey,
    /// The encoded command.
    pub command: Vec<u8>,
    /// Where it comes from.
    pub origin: Origin,
}

/// Where a [`Delivery`] comes from.
///
/// Exhaustive: the cluster driver (`cairn-driver`) routes every origin, so
/// a new one must be handled there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A `send` effect of an entity, from its outbox.
    Send(SendId),
}

/// Which send a message is: the sending entity and the number of the send
/// among its sends (from 1). The receiver applies each at most once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SendId {
    /// The sending entity.
    pub from: EntityKey,
    /// The send's number.
    pub seq: u64,
}

/// What came of one attempt to deliver a [`Delivery`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// The target's owner applied it (or had applied it before).
    Delivered,
    /// It will never be applied (the target's type is unknown, the
    /// behavior rejected it or could not decode it, the target is
    /// stopped): a dead letter, with the reason.
    Refused(String),
    /// It did not get through this time (no owner now, a refused write,
    /// a lost answer): try again later. Safe, as the receiver recognises
    /// a message it applied already.
    Retry(String),
}

/// A boxed, sendable future.
pub type DeliveryFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = DeliveryOutcome> + Send>>;

/// The cluster's side of admission and routing, as the node sees it.
pub trait Placement: Send + Sync + 'static {
    /// May this node run `key` now, and under which allocation? `live`:
    /// the entity runs here already (it may finish its commands while its
    /// shard is handed off; nothing new starts then).
    fn admit(&self, key: &EntityKey, live: bool) -> Admission;
    /// Makes one attempt to run a command the node produced on the owner
    /// of its entity (here or on another node), through the cluster's
    /// routing; the caller retries.
    fn deliver(&self, delivery: Delivery) -> DeliveryFuture;
}
