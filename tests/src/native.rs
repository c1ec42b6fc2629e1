//! A native (non-wasm) [`Behavior`] that runs a guest-SDK entity as plain Rust
//! through the SDK's byte bridge: same codecs, same logic, no WebAssembly.
//! The benchmark runs it next to the component to measure the cost of wasm.

use std::marker::PhantomData;

use cairn_guest::Entity;
use cairn_guest::bridge;
use cairn_host::behavior::{
    Behavior, CommandContext, CommandError, Decision, Descriptor, Effect, FoldError, GuestFault,
};

/// A guest-SDK entity run natively.
pub struct Native<E> {
    descriptor: Descriptor,
    _entity: PhantomData<fn() -> E>,
}

impl<E: Entity> Default for Native<E> {
    fn default() -> Self {
        let d = bridge::describe::<E>();
        Native {
            descriptor: Descriptor {
                name: d.name,
                version: d.version,
                state_schema: d.state_schema,
            },
            _entity: PhantomData,
        }
    }
}

impl<E: Entity> Behavior for Native<E> {
    fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    fn initial_state(&self) -> Result<Vec<u8>, GuestFault> {
        Ok(bridge::initial_state::<E>())
    }

    fn decide(
        &self,
        ctx: &CommandContext<'_>,
        state: &[u8],
        command: &[u8],
    ) -> Result<Result<Decision, CommandError>, GuestFault> {
        let gctx = cairn_guest::Context {
            entity_id: ctx.entity_id.to_owned(),
            next_seq: ctx.next_seq,
            timestamp_ms: ctx.timestamp_ms,
        };
        Ok(match bridge::decide::<E>(&gctx, state, command) {
            Ok(d) => Ok(Decision {
                events: d.events,
                reply: d.reply,
                effects: d
                    .effects
                    .into_iter()
                    .map(|e| match e {
                        bridge::RawEffect::Send {
                            entity_type,
                            entity_id,
                            command,
                        } => Effect::Send {
                            entity_type,
                            entity_id,
                            command,
                        },
                        bridge::RawEffect::Schedule { delay_ms, command } => {
                            Effect::Schedule { delay_ms, command }
                        }
                    })
                    .collect(),
                state: d.state,
            }),
            Err(bridge::CommandError::Rejected(r)) => Err(CommandError::Rejected(r)),
            Err(bridge::CommandError::Malformed(r)) => Err(CommandError::Malformed(r)),
            Err(bridge::CommandError::BadState(r)) => Err(CommandError::BadState(r)),
        })
    }

    fn fold(&self, state: &[u8], packed: &[u8]) -> Result<Result<Vec<u8>, FoldError>, GuestFault> {
        Ok(bridge::fold::<E>(state, packed).map_err(|e| FoldError {
            index: e.index,
            message: e.message,
        }))
    }

    fn command_from_json(&self, json: &str) -> Result<Result<Vec<u8>, String>, GuestFault> {
        Ok(bridge::command_from_json::<E>(json))
    }

    fn event_to_json(&self, event: &[u8]) -> Result<Result<String, String>, GuestFault> {
        Ok(bridge::event_to_json::<E>(event))
    }

    fn state_to_json(&self, state: &[u8]) -> Result<Result<String, String>, GuestFault> {
        Ok(bridge::state_to_json::<E>(state))
    }

    fn reply_to_json(&self, reply: &[u8]) -> Result<Result<String, String>, GuestFault> {
        Ok(bridge::reply_to_json::<E>(reply))
    }
}
