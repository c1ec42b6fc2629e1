//! What `on_command` returns: a decision built fluently.

use std::time::Duration;

use serde::Serialize;

use crate::{Entity, codec};

/// A side effect, run by the host after the command's events are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send a command to another entity (at most once).
    Send {
        /// Target entity type.
        entity_type: String,
        /// Target entity id.
        entity_id: String,
        /// The encoded command.
        command: Vec<u8>,
    },
    /// Deliver a command to this entity after a delay (journaled; survives restarts).
    Schedule {
        /// Delay in milliseconds.
        delay_ms: u64,
        /// The encoded command.
        command: Vec<u8>,
    },
}

/// The outcome of `on_command`.
pub struct Decision<E: Entity + ?Sized> {
    pub(crate) events: Vec<E::Event>,
    pub(crate) reply: Option<E::Reply>,
    pub(crate) effects: Vec<Effect>,
    pub(crate) rejection: Option<String>,
    pub(crate) error: Option<String>,
}

impl<E: Entity + ?Sized> Decision<E> {
    fn empty() -> Self {
        Decision {
            events: Vec::new(),
            reply: None,
            effects: Vec::new(),
            rejection: None,
            error: None,
        }
    }

    /// Persist these events (then reply with [`Decision::then_reply`] if wanted).
    pub fn persist(events: impl IntoIterator<Item = E::Event>) -> Self {
        Decision {
            events: events.into_iter().collect(),
            ..Self::empty()
        }
    }

    /// Reply without persisting anything.
    pub fn reply(reply: E::Reply) -> Self {
        Decision {
            reply: Some(reply),
            ..Self::empty()
        }
    }

    /// Do nothing: no events, no reply.
    pub fn none() -> Self {
        Self::empty()
    }

    /// Refuse the command; the caller gets the reason as an error.
    pub fn reject(reason: impl Into<String>) -> Self {
        Decision {
            rejection: Some(reason.into()),
            ..Self::empty()
        }
    }

    /// Reply once the events are persisted.
    pub fn then_reply(mut self, reply: E::Reply) -> Self {
        self.reply = Some(reply);
        self
    }

    /// Send `command` to another entity after the events are persisted.
    pub fn send<C: Serialize>(mut self, entity_type: &str, entity_id: &str, command: &C) -> Self {
        match codec::encode(command) {
            Ok(command) => self.effects.push(Effect::Send {
                entity_type: entity_type.to_owned(),
                entity_id: entity_id.to_owned(),
                command,
            }),
            Err(e) => self.error = Some(format!("cannot encode a sent command: {e}")),
        }
        self
    }

    /// Deliver `command` to this entity after `delay`.
    pub fn schedule(mut self, delay: Duration, command: E::Command) -> Self {
        match codec::encode(&command) {
            Ok(command) => self.effects.push(Effect::Schedule {
                delay_ms: delay.as_millis().min(u64::MAX as u128) as u64,
                command,
            }),
            Err(e) => self.error = Some(format!("cannot encode a scheduled command: {e}")),
        }
        self
    }
}
