//! A behavior that misbehaves on purpose, for the host's isolation tests:
//! `Panic` panics, `Loop` never returns, `Alloc` allocates without bound.
//! `Ok` persists one `Done` event and replies "ok"; `Count` replies how many.
//! `Print` writes lines to stdout and stderr, then acts like `Ok`; `Sleep`
//! sleeps and `ReadStdin` reads a line (blocking I/O, which the host refuses).
//! Never deploy this anywhere real.

use cairn_guest::{Context, Decision, Entity};
use serde::{Deserialize, Serialize};

/// The behavior.
pub struct Faulty;

/// Requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Persist `Done`, reply "ok".
    Ok,
    /// Panic.
    Panic,
    /// Loop forever.
    Loop,
    /// Allocate until memory runs out.
    Alloc,
    /// Reply with the number of `Done` events.
    Count,
    /// Print `lines` lines to stdout (and one to stderr), then act like `Ok`.
    Print {
        /// How many lines.
        lines: u32,
    },
    /// Sleep, then reply "slept".
    Sleep {
        /// For how long.
        ms: u64,
    },
    /// Read a line from stdin and reply with it.
    ReadStdin,
}

/// Facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// An `Ok` command ran.
    Done,
}

/// Answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// "ok".
    Text(String),
    /// A count.
    Count(u64),
}

impl Entity for Faulty {
    type State = u64;
    type Command = Command;
    type Event = Event;
    type Reply = Reply;
    const NAME: &'static str = "faulty";
    const VERSION: &'static str = "1.0.0";

    fn on_command(_ctx: &Context, state: &u64, command: Command) -> Decision<Self> {
        match command {
            Command::Ok => Decision::persist([Event::Done]).then_reply(Reply::Text("ok".into())),
            Command::Panic => panic!("faulty behavior panics on purpose"),
            Command::Loop => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            Command::Alloc => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                    std::hint::black_box(&hoard);
                }
            }
            Command::Count => Decision::reply(Reply::Count(*state)),
            Command::Print { lines } => {
                eprintln!("faulty writes to stderr");
                for i in 0..lines {
                    println!("faulty prints line {i}");
                }
                Decision::persist([Event::Done]).then_reply(Reply::Text("printed".into()))
            }
            Command::Sleep { ms } => {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Decision::reply(Reply::Text("slept".into()))
            }
            Command::ReadStdin => {
                let mut line = String::new();
                match std::io::stdin().read_line(&mut line) {
                    Ok(_) => Decision::reply(Reply::Text(line)),
                    Err(e) => Decision::reply(Reply::Text(format!("stdin failed: {e}"))),
                }
            }
        }
    }

    fn on_event(state: &mut u64, event: &Event) {
        match event {
            Event::Done => *state += 1,
        }
    }
}

cairn_guest::export_entity!(Faulty);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_guest::testkit::TestKit;

    #[test]
    fn ok_and_count() {
        let mut t = TestKit::<Faulty>::new("f");
        t.when(Command::Ok);
        t.when(Command::Ok);
        assert_eq!(t.when(Command::Count).reply(), Some(&Reply::Count(2)));
    }

    #[test]
    #[should_panic(expected = "on purpose")]
    fn panic_panics() {
        TestKit::<Faulty>::new("f").when(Command::Panic);
    }
}
