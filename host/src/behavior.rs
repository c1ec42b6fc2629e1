//! The host's view of a behavior: pure functions over bytes.
//!
//! Owns the [`Behavior`] trait that the entity actor calls, and the plain data
//! types that cross it. Two implementations exist: wasm components
//! ([`crate::runtime::WasmBehavior`]) and native Rust functions (used by the
//! benchmark to measure the cost of wasm). Nothing here does I/O.

/// What a behavior says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Entity type name the behavior was written for.
    pub name: String,
    /// The behavior's own version string.
    pub version: String,
    /// Version of the state encoding; snapshots are tagged with it.
    pub state_schema: u32,
}

/// Facts the host records for one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandContext<'a> {
    /// The entity's id.
    pub entity_id: &'a str,
    /// Sequence number the first persisted event will get.
    pub next_seq: u64,
    /// When the host accepted the command, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A side effect to run after the command's events are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Effect {
    /// Tell another entity a command.
    Send {
        /// Target entity type.
        entity_type: String,
        /// Target entity id.
        entity_id: String,
        /// Encoded command.
        command: Vec<u8>,
    },
    /// Deliver a command to this entity after a delay (journaled).
    Schedule {
        /// Delay in milliseconds.
        delay_ms: u64,
        /// Encoded command.
        command: Vec<u8>,
    },
}

/// An accepted command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Events to persist, encoded.
    pub events: Vec<Vec<u8>>,
    /// Encoded reply, if any.
    pub reply: Option<Vec<u8>>,
    /// Effects to run after persisting.
    pub effects: Vec<Effect>,
    /// New state when there are events.
    pub state: Option<Vec<u8>>,
}

/// Why a behavior produced no decision. These are answers, not failures of the guest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The behavior refused the command.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The command bytes could not be decoded by the behavior.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// The behavior could not decode the state the host gave it.
    #[error("behavior cannot decode its state: {0}")]
    BadState(String),
}

/// Why a batch of events could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event #{index} of the batch cannot be applied: {message}")]
pub struct FoldError {
    /// Index of the offending event in the batch.
    pub index: u32,
    /// The behavior's message.
    pub message: String,
}

/// The guest itself failed: it trapped, ran out of time or memory. The
/// instance is discarded; the entity is restarted by its supervisor.
///
/// Exhaustive: `cairn-server` translates every variant into the client
/// protocol, so a new one must be given its translation there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestFault {
    /// The call ran past its deadline.
    #[error("guest call exceeded its deadline of {0:?}")]
    Deadline(std::time::Duration),
    /// The guest tried to grow its memory past the cap.
    #[error("guest exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    /// Any other trap (a panic in Rust guests shows as `unreachable`), with
    /// the last line the guest wrote, if any (the Rust SDK's panic hook
    /// writes the panic's message and location).
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The guest could not be instantiated.
    #[error("cannot instantiate guest: {0}")]
    Instantiate(String),
    /// The behavior could not decode the state the host gave it.
    #[error("behavior cannot decode its state: {0}")]
    BadState(String),
    /// The behavior broke the host/guest contract (e.g. events without a new state).
    #[error("behavior broke its contract: {0}")]
    Contract(String),
}

/// A behavior: the functions the entity actor calls. Implementations must be
/// cheap to call concurrently from many entities.
pub trait Behavior: Send + Sync + 'static {
    /// Name, version and state schema.
    fn descriptor(&self) -> &Descriptor;
    /// Encoded initial state.
    fn initial_state(&self) -> Result<Vec<u8>, GuestFault>;
    /// Decide one command.
    fn decide(
        &self,
        ctx: &CommandContext<'_>,
        state: &[u8],
        command: &[u8],
    ) -> Result<Result<Decision, CommandError>, GuestFault>;
    /// Apply a packed batch of events (u32 LE length + bytes each).
    fn fold(&self, state: &[u8], packed: &[u8]) -> Result<Result<Vec<u8>, FoldError>, GuestFault>;
    /// JSON → command bytes.
    fn command_from_json(&self, json: &str) -> Result<Result<Vec<u8>, String>, GuestFault>;
    /// Event bytes → JSON.
    fn event_to_json(&self, event: &[u8]) -> Result<Result<String, String>, GuestFault>;
    /// State bytes → JSON.
    fn state_to_json(&self, state: &[u8]) -> Result<Result<String, String>, GuestFault>;
    /// Reply bytes → JSON.
    fn reply_to_json(&self, reply: &[u8]) -> Result<Result<String, String>, GuestFault>;
    /// Where calls that overrun their inline budget go (wasm behaviors). The
    /// default, `None`, runs every call inline (native behaviors, whose calls
    /// are short by construction).
    fn lane(&self) -> Option<&crate::runtime::Lane> {
        None
    }
}
