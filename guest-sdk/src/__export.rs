//! Conversions between the bridge's plain types and the generated WIT types,
//! used by the code [`crate::export_entity!`] expands to.

use crate::bindings::cairn::entity::types as t;
use crate::bindings::exports::cairn::entity::behavior as b;
use crate::{Context, Effect, Entity, bridge};

/// Replaces the default panic hook with one that writes the panic's message
/// and location to stderr as one line, `panic at FILE:LINE:COL: MESSAGE`
/// (the lines of a multi-line message joined with "; "), then lets the
/// panic end as a trap (`unreachable`).
///
/// A std guest for `wasm32-wasip2` imports `wasi:cli/stderr`; the host
/// captures what a call writes there (bounded) and logs it, and when the
/// call traps it quotes the last line written in the error the client gets,
/// as it does with a Python traceback or a JavaScript exception. The
/// default hook would write two lines (the location, then the message) and
/// a backtrace hint; one line keeps the location in the quote. The line
/// avoids the word "panicked", which the node's own panics print. On a
/// target without stderr the write is dropped and the trap stays bare.
///
/// Called at the start of every export, so it is in place whichever export
/// runs first on a fresh instance.
fn report_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            use std::io::Write as _;
            let message = info.payload_as_str().unwrap_or("Box<dyn Any>");
            let line = panic_line(info.location(), message);
            // A failed write must not panic again inside the hook.
            let _ = std::io::stderr().write_all(line.as_bytes());
        }))
    });
}

/// The line [`report_panics`] writes: `panic at FILE:LINE:COL: MESSAGE\n`.
fn panic_line(location: Option<&std::panic::Location<'_>>, message: &str) -> String {
    let message = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match location {
        Some(at) => format!("panic at {at}: {message}\n"),
        None => format!("panic: {message}\n"),
    }
}

/// `describe` in WIT types.
pub fn describe<E: Entity>() -> b::Descriptor {
    report_panics();
    let d = bridge::describe::<E>();
    b::Descriptor {
        name: d.name,
        version: d.version,
        state_schema: d.state_schema,
    }
}

/// `initial-state` (runs the user's `initial_state`).
pub fn initial_state<E: Entity>() -> Vec<u8> {
    report_panics();
    bridge::initial_state::<E>()
}

/// `command-from-json`.
pub fn command_from_json<E: Entity>(json: &str) -> Result<Vec<u8>, String> {
    report_panics();
    bridge::command_from_json::<E>(json)
}

/// `event-to-json`.
pub fn event_to_json<E: Entity>(event: &[u8]) -> Result<String, String> {
    report_panics();
    bridge::event_to_json::<E>(event)
}

/// `state-to-json`.
pub fn state_to_json<E: Entity>(state: &[u8]) -> Result<String, String> {
    report_panics();
    bridge::state_to_json::<E>(state)
}

/// `reply-to-json`.
pub fn reply_to_json<E: Entity>(reply: &[u8]) -> Result<String, String> {
    report_panics();
    bridge::reply_to_json::<E>(reply)
}

/// `decide` in WIT types.
pub fn decide<E: Entity>(
    ctx: b::Context,
    state: &[u8],
    command: &[u8],
) -> Result<b::Decision, b::CommandError> {
    report_panics();
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
    report_panics();
    bridge::fold::<E>(state, events).map_err(|e| b::FoldError {
        index: e.index,
        message: e.message,
    })
}
