//! Conversions between the bridge's plain types and the generated WIT types,
//! used by the code [`crate::export_entity!`] expands to.

use crate::bindings::cairn::entity::types as t;
use crate::bindings::exports::cairn::entity::behavior as b;
use crate::{Context, Effect, Entity, bridge};

/// Replaces the default panic hook, which prints to stderr: behaviors have no
/// I/O, and a panic must end as a plain trap (the host reports it). Called at
/// the start of every export, so it is in place whichever export runs first
/// on a fresh instance.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

/// `describe` in WIT types.
pub fn describe<E: Entity>() -> b::Descriptor {
    quiet_panics();
    let d = bridge::describe::<E>();
    b::Descriptor {
        name: d.name,
        version: d.version,
        state_schema: d.state_schema,
    }
}

/// `initial-state` (runs the user's `initial_state`).
pub fn initial_state<E: Entity>() -> Vec<u8> {
    quiet_panics();
    bridge::initial_state::<E>()
}

/// `command-from-json`.
pub fn command_from_json<E: Entity>(json: &str) -> Result<Vec<u8>, String> {
    quiet_panics();
    bridge::command_from_json::<E>(json)
}

/// `event-to-json`.
pub fn event_to_json<E: Entity>(event: &[u8]) -> Result<String, String> {
    quiet_panics();
    bridge::event_to_json::<E>(event)
}

/// `state-to-json`.
pub fn state_to_json<E: Entity>(state: &[u8]) -> Result<String, String> {
    quiet_panics();
    bridge::state_to_json::<E>(state)
}

/// `reply-to-json`.
pub fn reply_to_json<E: Entity>(reply: &[u8]) -> Result<String, String> {
    quiet_panics();
    bridge::reply_to_json::<E>(reply)
}

/// `decide` in WIT types.
pub fn decide<E: Entity>(
    ctx: b::Context,
    state: &[u8],
    command: &[u8],
) -> Result<b::Decision, b::CommandError> {
    quiet_panics();
    let ctx = Context {
        entity_id: ctx.entity_id,
        next_seq: ctx.next_seq,
        timestamp_ms: ctx.timestamp_ms,
    };
    match bridge::decide::<E>(&ctx, state, command) {
        Ok(d) => Ok(b::Decision {
            events: d.events,
            reply: d.reply,
            effects: d
                .effects
                .into_iter()
                .map(|e| match e {
                    Effect::Send {
                        entity_type,
                        entity_id,
                        command,
                    } => t::Effect::Send(t::Send {
                        entity_type,
                        entity_id,
                        command,
                    }),
                    Effect::Schedule { delay_ms, command } => {
                        t::Effect::Schedule(t::Schedule { delay_ms, command })
                    }
                })
                .collect(),
            state: d.state,
        }),
        Err(bridge::CommandError::Rejected(r)) => Err(b::CommandError::Rejected(r)),
        Err(bridge::CommandError::Malformed(r)) => Err(b::CommandError::Malformed(r)),
        Err(bridge::CommandError::BadState(r)) => Err(b::CommandError::BadState(r)),
    }
}

/// `fold` in WIT types.
pub fn fold<E: Entity>(state: &[u8], events: &[u8]) -> Result<Vec<u8>, b::FoldError> {
    quiet_panics();
    bridge::fold::<E>(state, events).map_err(|e| b::FoldError {
        index: e.index,
        message: e.message,
    })
}
