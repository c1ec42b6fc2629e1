//! Unit-test a behavior natively, without wasm: given these events, when this
//! command, then these events and this reply. Everything goes through the
//! byte bridge, so the codecs are exercised exactly as in the component.
//!
//! ```text
//! let mut t = TestKit::<BankAccount>::new("acct-1");
//! t.given([Event::Deposited { amount: 100 }]);
//! let out = t.when(Command::Withdraw { amount: 30 });
//! assert_eq!(out.events(), &[Event::Withdrawn { amount: 30 }]);
//! assert_eq!(t.journal().len(), 2);
//! ```

use crate::{Context, Effect, Entity, bridge, codec};

/// A behavior under test, with its state and sequence number.
pub struct TestKit<E: Entity> {
    entity_id: String,
    state: E::State,
    seq: u64,
    /// Every event given or persisted so far, encoded (the journal).
    journal: Vec<Vec<u8>>,
    /// Timestamp given to the next command.
    pub now_ms: u64,
}

/// What one command did.
pub struct Outcome<E: Entity> {
    events: Vec<E::Event>,
    reply: Option<E::Reply>,
    effects: Vec<Effect>,
    rejection: Option<String>,
}

impl<E: Entity> Outcome<E> {
    /// Events the command persisted.
    pub fn events(&self) -> &[E::Event] {
        &self.events
    }
    /// The reply, if any.
    pub fn reply(&self) -> Option<&E::Reply> {
        self.reply.as_ref()
    }
    /// Effects the command asked for.
    pub fn effects(&self) -> &[Effect] {
        &self.effects
    }
    /// The rejection reason, if the command was rejected.
    pub fn rejection(&self) -> Option<&str> {
        self.rejection.as_deref()
    }
}

impl<E: Entity> TestKit<E> {
    /// A fresh entity with the initial state.
    pub fn new(entity_id: &str) -> Self {
        TestKit {
            entity_id: entity_id.to_owned(),
            state: E::initial_state(),
            seq: 0,
            journal: Vec::new(),
            now_ms: 1_700_000_000_000,
        }
    }

    /// Applies past events (through the packed `fold`, as recovery does).
    ///
    /// # Panics
    /// If an event cannot be encoded or applied: that is a test failure.
    pub fn given(&mut self, events: impl IntoIterator<Item = E::Event>) -> &mut Self {
        let encoded: Vec<Vec<u8>> = events
            .into_iter()
            .map(|e| codec::encode(&e).expect("event encodes"))
            .collect();
        let state = codec::encode(&self.state).expect("state encodes");
        let folded =
            bridge::fold::<E>(&state, &bridge::pack_events(&encoded)).expect("events apply");
        self.state = codec::decode(&folded).expect("state decodes");
        self.seq += encoded.len() as u64;
        self.journal.extend(encoded);
        self
    }

    /// Runs a command; accepted events are applied to the state.
    ///
    /// # Panics
    /// If the command or state cannot be encoded or decoded.
    pub fn when(&mut self, command: E::Command) -> Outcome<E> {
        let ctx = Context {
            entity_id: self.entity_id.clone(),
            next_seq: self.seq + 1,
            timestamp_ms: self.now_ms,
        };
        let state = codec::encode(&self.state).expect("state encodes");
        let cmd = codec::encode(&command).expect("command encodes");
        match bridge::decide::<E>(&ctx, &state, &cmd) {
            Ok(d) => {
                let events: Vec<E::Event> = d
                    .events
                    .iter()
                    .map(|e| codec::decode(e).expect("event decodes"))
                    .collect();
                if let Some(s) = &d.state {
                    self.state = codec::decode(s).expect("state decodes");
                }
                self.seq += events.len() as u64;
                self.journal.extend(d.events);
                Outcome {
                    events,
                    reply: d.reply.map(|r| codec::decode(&r).expect("reply decodes")),
                    effects: d.effects,
                    rejection: None,
                }
            }
            Err(bridge::CommandError::Rejected(r)) => Outcome {
                events: Vec::new(),
                reply: None,
                effects: Vec::new(),
                rejection: Some(r),
            },
            Err(e) => panic!("command failed: {e:?}"),
        }
    }

    /// The current state.
    pub fn state(&self) -> &E::State {
        &self.state
    }

    /// The sequence number of the last applied event.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Every event given or persisted so far, in order: what the host's
    /// journal would hold (event `i` has sequence number `i + 1`).
    ///
    /// # Panics
    /// If a stored event no longer decodes (it was encoded by this kit, so
    /// that would be a codec bug).
    pub fn journal(&self) -> Vec<E::Event> {
        self.journal
            .iter()
            .map(|e| codec::decode(e).expect("journaled event decodes"))
            .collect()
    }

    /// The journal as the host stores it: one encoded event per entry.
    pub fn journal_bytes(&self) -> &[Vec<u8>] {
        &self.journal
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use crate::{Context, Decision, Entity, bridge, codec};

    use super::TestKit;

    mod v1 {
        use serde::{Deserialize, Serialize};
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        pub enum Event {
            Added { n: u64 },
        }
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Event {
        Added {
            n: u64,
            #[serde(default)]
            note: Option<String>,
        },
        Reset,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Command {
        Add(u64),
        Reset,
        Later(u64),
    }

    struct Sum;
    impl Entity for Sum {
        type State = u64;
        type Command = Command;
        type Event = Event;
        type Reply = u64;
        const NAME: &'static str = "sum";
        const VERSION: &'static str = "2.0.0";
        fn on_command(_: &Context, s: &u64, c: Command) -> Decision<Self> {
            match c {
                Command::Add(0) => Decision::reject("nothing to add"),
                Command::Add(n) => {
                    Decision::persist([Event::Added { n, note: None }]).then_reply(s + n)
                }
                Command::Reset => Decision::persist([Event::Reset]),
                Command::Later(n) => {
                    Decision::none().schedule(std::time::Duration::from_secs(1), Command::Add(n))
                }
            }
        }
        fn on_event(s: &mut u64, e: &Event) {
            match e {
                Event::Added { n, .. } => *s += n,
                Event::Reset => *s = 0,
            }
        }
    }

    #[test]
    fn old_events_decode_with_a_new_field_and_variant() {
        let old = codec::encode(&v1::Event::Added { n: 5 }).unwrap();
        let new: Event = codec::decode(&old).unwrap();
        assert_eq!(new, Event::Added { n: 5, note: None });
        let state = codec::encode(&0u64).unwrap();
        let folded =
            bridge::fold::<Sum>(&state, &bridge::pack_events(&[old.clone(), old])).unwrap();
        assert_eq!(codec::decode::<u64>(&folded).unwrap(), 10);
    }

    #[test]
    fn fold_reports_truncated_and_bad_events() {
        let state = codec::encode(&0u64).unwrap();
        let ev = codec::encode(&Event::Reset).unwrap();
        let mut packed = bridge::pack_events(&[ev.clone(), ev]);
        packed.pop();
        let e = bridge::fold::<Sum>(&state, &packed).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(e.message.contains("truncated"));
        let e = bridge::fold::<Sum>(&state, &[1, 0]).unwrap_err();
        assert_eq!(e.index, 0);
        let e = bridge::fold::<Sum>(&state, &bridge::pack_events(&[vec![0xc1]])).unwrap_err();
        assert!(e.message.contains("decode"), "{}", e.message);
        assert!(bridge::fold::<Sum>(&[0xc1], &[]).is_err(), "bad state");
    }

    #[test]
    fn decide_handles_bad_bytes() {
        let state = codec::encode(&0u64).unwrap();
        let ctx = Context {
            entity_id: "x".into(),
            next_seq: 1,
            timestamp_ms: 0,
        };
        assert!(matches!(
            bridge::decide::<Sum>(&ctx, &state, &[0xc1]),
            Err(bridge::CommandError::Malformed(_))
        ));
        let cmd = codec::encode(&Command::Add(1)).unwrap();
        assert!(matches!(
            bridge::decide::<Sum>(&ctx, &[0xc1], &cmd),
            Err(bridge::CommandError::BadState(_))
        ));
        assert!(bridge::command_from_json::<Sum>("{nope").is_err());
        assert_eq!(
            bridge::event_to_json::<Sum>(&codec::encode(&Event::Reset).unwrap()).unwrap(),
            "\"Reset\""
        );
    }

    #[test]
    fn testkit_given_when_then() {
        let mut t = TestKit::<Sum>::new("s");
        t.given([
            Event::Added { n: 2, note: None },
            Event::Added { n: 3, note: None },
        ]);
        assert_eq!(*t.state(), 5);
        let out = t.when(Command::Add(4));
        assert_eq!(out.events(), &[Event::Added { n: 4, note: None }]);
        assert_eq!(out.reply(), Some(&9));
        assert_eq!(t.seq(), 3);
        let out = t.when(Command::Add(0));
        assert_eq!(out.rejection(), Some("nothing to add"));
        assert_eq!(*t.state(), 9);
        let out = t.when(Command::Later(7));
        assert!(out.events().is_empty());
        assert_eq!(out.effects().len(), 1);
        t.when(Command::Reset);
        assert_eq!(*t.state(), 0);
    }
}
