//! A counter: the smallest behavior, plus the effects a behavior can ask
//! for: a command scheduled to itself later (`IncrementLater`, a durable
//! timer) and a command sent to another counter (`Forward`). `Batch` persists
//! several events at once (the host's crash test uses it to detect partial batches).

use std::time::Duration;

use cairn_guest::{Context, Decision, Entity};
use serde::{Deserialize, Serialize};

/// The behavior.
pub struct Counter;

/// Requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add `by`; replies the new value.
    Increment {
        /// Amount.
        by: i64,
    },
    /// Reply with the value.
    Get,
    /// Increment by `by` after `delay_ms`, through a durable timer.
    IncrementLater {
        /// Amount.
        by: i64,
        /// Delay in milliseconds.
        delay_ms: u64,
    },
    /// Send `Increment { by }` to another counter.
    Forward {
        /// The other counter.
        entity_id: String,
        /// Amount.
        by: i64,
    },
    /// `Forward` after `delay_ms`, through a durable timer (whose command
    /// writes no event: it only sends).
    ForwardLater {
        /// The other counter.
        entity_id: String,
        /// Amount.
        by: i64,
        /// Delay in milliseconds.
        delay_ms: u64,
    },
    /// Persist `count` increments of 1 in one atomic batch.
    Batch {
        /// Number of events.
        count: u32,
    },
}

/// Facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The value changed.
    Incremented {
        /// Amount.
        by: i64,
    },
}

impl Entity for Counter {
    type State = i64;
    type Command = Command;
    type Event = Event;
    type Reply = i64;
    const NAME: &'static str = "counter";
    const VERSION: &'static str = "1.0.0";

    fn on_command(_ctx: &Context, state: &i64, command: Command) -> Decision<Self> {
        match command {
            Command::Increment { by } => {
                Decision::persist([Event::Incremented { by }]).then_reply(state + by)
            }
            Command::Get => Decision::reply(*state),
            Command::IncrementLater { by, delay_ms } => Decision::reply(*state)
                .schedule(Duration::from_millis(delay_ms), Command::Increment { by }),
            Command::Forward { entity_id, by } => {
                Decision::reply(*state).send("counter", &entity_id, &Command::Increment { by })
            }
            Command::ForwardLater {
                entity_id,
                by,
                delay_ms,
            } => Decision::reply(*state).schedule(
                Duration::from_millis(delay_ms),
                Command::Forward { entity_id, by },
            ),
            Command::Batch { count } if count == 0 || count > 1000 => {
                Decision::reject("count must be between 1 and 1000")
            }
            Command::Batch { count } => {
                Decision::persist((0..count).map(|_| Event::Incremented { by: 1 }))
                    .then_reply(state + i64::from(count))
            }
        }
    }

    fn on_event(state: &mut i64, event: &Event) {
        match event {
            Event::Incremented { by } => *state += by,
        }
    }
}

cairn_guest::export_entity!(Counter);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_guest::{Effect, codec, testkit::TestKit};

    #[test]
    fn increments_and_effects() {
        let mut t = TestKit::<Counter>::new("c");
        assert_eq!(t.when(Command::Increment { by: 2 }).reply(), Some(&2));
        assert_eq!(t.when(Command::Batch { count: 3 }).events().len(), 3);
        assert_eq!(*t.state(), 5);
        let later = t.when(Command::IncrementLater {
            by: 5,
            delay_ms: 100,
        });
        assert!(later.events().is_empty());
        assert_eq!(
            later.effects(),
            &[Effect::Schedule {
                delay_ms: 100,
                command: codec::encode(&Command::Increment { by: 5 }).unwrap()
            }]
        );
        let fwd = t.when(Command::Forward {
            entity_id: "d".into(),
            by: 7,
        });
        assert!(
            matches!(&fwd.effects()[0], Effect::Send { entity_type, entity_id, .. } if entity_type == "counter" && entity_id == "d")
        );
        assert!(t.when(Command::Batch { count: 0 }).rejection().is_some());
    }
}
