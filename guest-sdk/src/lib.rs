//! Cairn guest SDK: write an event-sourced entity behavior in ordinary Rust
//! and export it as a WebAssembly component for the Cairn host.
//!
//! A behavior is a type implementing [`Entity`]: `State`, `Command`, `Event`
//! and `Reply` types with serde derives, a pure [`Entity::on_event`] and an
//! [`Entity::on_command`] that returns a [`Decision`] built fluently. One macro,
//! [`export_entity!`], exports it when compiled for `wasm32-wasip2`; on native
//! targets it expands to nothing, so the same crate is unit-tested natively
//! with [`testkit::TestKit`].
//!
//! ```
//! use cairn_guest::{Context, Decision, Entity};
//! use serde::{Deserialize, Serialize};
//!
//! pub struct Counter;
//! #[derive(Serialize, Deserialize)]
//! pub enum Command { Add(u64), Get }
//! #[derive(Serialize, Deserialize)]
//! pub enum Event { Added(u64) }
//!
//! impl Entity for Counter {
//!     type State = u64;
//!     type Command = Command;
//!     type Event = Event;
//!     type Reply = u64;
//!     const NAME: &'static str = "counter";
//!     const VERSION: &'static str = "1.0.0";
//!     fn on_command(_: &Context, state: &u64, cmd: Command) -> Decision<Self> {
//!         match cmd {
//!             Command::Add(n) => Decision::persist([Event::Added(n)]).then_reply(state + n),
//!             Command::Get => Decision::reply(*state),
//!         }
//!     }
//!     fn on_event(state: &mut u64, event: &Event) {
//!         match event { Event::Added(n) => *state += n }
//!     }
//! }
//! cairn_guest::export_entity!(Counter);
//! ```
//!
//! # Schema evolution
//!
//! Events are stored forever, so every version of a behavior must decode the
//! events of all earlier versions. The default [`codec`] (MessagePack with
//! field names) makes the common changes safe:
//!
//! - a new field marked `#[serde(default)]` decodes as its default in old events;
//! - a new enum variant leaves old events untouched;
//! - an unknown field is ignored (so a rolled-back version still reads newer events
//!   that only added fields);
//! - a renamed field or variant keeps the old name with `#[serde(alias = "old")]`;
//! - a real reshape goes through an upcaster: decode the old shape with
//!   `#[serde(from = "EventCompat")]` (an enum accepting old and new forms) and
//!   convert it to the current type in `From`.
//!
//! Bump [`Entity::STATE_SCHEMA`] whenever `State` changes shape: the host then
//! ignores old snapshots and rebuilds the state from events.
//!
//! # What a behavior must not do
//!
//! Behaviors are pure. They get no filesystem, network, environment or clock of
//! their own (use [`Context::timestamp_ms`]), and must not print: stdout and
//! stderr are not theirs, and the Cairn host fails a command that writes to
//! them. A panic fails the command (the SDK silences the panic message so it
//! does not reach stderr) and the host restarts the entity from its journal.

extern crate self as cairn_guest;

pub mod bridge;
pub mod codec;
mod decision;
pub mod testkit;

#[cfg(any(
    test,
    all(
        feature = "size-class-alloc",
        target_family = "wasm",
        not(target_feature = "atomics")
    )
))]
mod allocator;

/// The guest's global allocator on single-threaded wasm (feature
/// `size-class-alloc`, on by default; see the `allocator` module). A behavior
/// that sets its own `#[global_allocator]` turns this crate's default
/// features off.
#[cfg(all(
    feature = "size-class-alloc",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: allocator::SizeClasses = allocator::SizeClasses::new();

pub use decision::{Decision, Effect};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// What the host tells a behavior about one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// The entity's id.
    pub entity_id: String,
    /// Sequence number the first event of this command will get.
    pub next_seq: u64,
    /// When the host accepted the command, ms since the Unix epoch. Use this
    /// rather than a clock: it is recorded, so decisions are reproducible.
    pub timestamp_ms: u64,
}

/// An event-sourced entity behavior.
///
/// Events are stored forever: keep their encoding compatible. With the
/// default codec (MessagePack with field names) adding a field marked
/// `#[serde(default)]` or a new enum variant keeps old events readable.
pub trait Entity: 'static {
    /// The state, rebuilt from events.
    type State: Serialize + DeserializeOwned + Default;
    /// Requests from the outside world.
    type Command: Serialize + DeserializeOwned;
    /// Facts that happened.
    type Event: Serialize + DeserializeOwned;
    /// Answers to commands.
    type Reply: Serialize + DeserializeOwned;
    /// Entity type name, e.g. `bank-account`.
    const NAME: &'static str;
    /// Version of this behavior, recorded with every event it produces.
    const VERSION: &'static str;
    /// Version of the state encoding; bump it when `State` changes shape, so
    /// old snapshots are ignored and state is rebuilt from events.
    const STATE_SCHEMA: u32 = 1;

    /// State of an entity with no events.
    fn initial_state() -> Self::State {
        Self::State::default()
    }

    /// Decides what a command does: persist events, reply, send or schedule
    /// commands, or reject it. Must not have side effects of its own (no I/O,
    /// no printing); read the time from [`Context::timestamp_ms`].
    fn on_command(ctx: &Context, state: &Self::State, command: Self::Command) -> Decision<Self>;

    /// Applies one event. Pure: used both live and during recovery.
    fn on_event(state: &mut Self::State, event: &Self::Event);
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Bindings generated from `wit/` (only on wasm targets).
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "entity",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__cairn_export_world",
        default_bindings_module: "cairn_guest::bindings",
        runtime_path: "cairn_guest::__wit_bindgen::rt",
    });
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __export;

/// Exports an [`Entity`] as the component's behavior. Expands to nothing on
/// non-wasm targets.
#[macro_export]
macro_rules! export_entity {
    ($entity:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::exports::cairn::entity::behavior as __b;
            struct __CairnExport;
            impl __b::Guest for __CairnExport {
                fn describe() -> __b::Descriptor {
                    $crate::__export::describe::<$entity>()
                }
                fn initial_state() -> ::std::vec::Vec<u8> {
                    $crate::__export::initial_state::<$entity>()
                }
                fn decide(
                    ctx: __b::Context,
                    state: ::std::vec::Vec<u8>,
                    command: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<__b::Decision, __b::CommandError> {
                    $crate::__export::decide::<$entity>(ctx, &state, &command)
                }
                fn fold(
                    state: ::std::vec::Vec<u8>,
                    events: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, __b::FoldError> {
                    $crate::__export::fold::<$entity>(&state, &events)
                }
                fn command_from_json(
                    json: ::std::string::String,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    $crate::__export::command_from_json::<$entity>(&json)
                }
                fn event_to_json(
                    event: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                    $crate::__export::event_to_json::<$entity>(&event)
                }
                fn state_to_json(
                    state: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                    $crate::__export::state_to_json::<$entity>(&state)
                }
                fn reply_to_json(
                    reply: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                    $crate::__export::reply_to_json::<$entity>(&reply)
                }
            }
    $crate::bindings::__cairn_export_world!(__CairnExport with_types_in $crate::bindings);
        };
    };
}
