//! The bank account of the reference event-sourcing guide: Deposit, Withdraw
//! ("ok" or "insufficient funds (balance: N)") and GetBalance, as a Cairn
//! behavior. Commands are intents; events are facts.

use cairn_guest::{Context, Decision, Entity};
use serde::{Deserialize, Serialize};

/// The behavior.
pub struct BankAccount;

/// State derived from the events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Current balance.
    pub balance: i64,
    /// Number of transactions applied.
    pub transactions: u64,
}

/// Requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add money; replies "ok".
    Deposit {
        /// Amount, positive.
        amount: i64,
    },
    /// Take money out if the balance allows it.
    Withdraw {
        /// Amount, positive.
        amount: i64,
    },
    /// Reply with the balance.
    GetBalance,
}

/// Facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Money was deposited.
    Deposited {
        /// Amount.
        amount: i64,
    },
    /// Money was withdrawn.
    Withdrawn {
        /// Amount.
        amount: i64,
    },
}

/// Answers: a text (`"ok"`, `"insufficient funds (balance: 120)"`) or a balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// A message.
    Text(String),
    /// A balance.
    Balance(i64),
}

impl Entity for BankAccount {
    type State = State;
    type Command = Command;
    type Event = Event;
    type Reply = Reply;
    const NAME: &'static str = "bank-account";
    const VERSION: &'static str = "1.0.0";

    fn on_command(_ctx: &Context, state: &State, command: Command) -> Decision<Self> {
        match command {
            Command::Deposit { amount } | Command::Withdraw { amount } if amount <= 0 => {
                Decision::reject(format!("amount must be positive, got {amount}"))
            }
            Command::Deposit { amount } => Decision::persist([Event::Deposited { amount }])
                .then_reply(Reply::Text("ok".into())),
            Command::Withdraw { amount } if amount <= state.balance => {
                Decision::persist([Event::Withdrawn { amount }])
                    .then_reply(Reply::Text("ok".into()))
            }
            Command::Withdraw { .. } => Decision::reply(Reply::Text(format!(
                "insufficient funds (balance: {})",
                state.balance
            ))),
            Command::GetBalance => Decision::reply(Reply::Balance(state.balance)),
        }
    }

    fn on_event(state: &mut State, event: &Event) {
        match event {
            Event::Deposited { amount } => state.balance += amount,
            Event::Withdrawn { amount } => state.balance -= amount,
        }
        state.transactions += 1;
    }
}

cairn_guest::export_entity!(BankAccount);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_guest::testkit::TestKit;

    fn text(s: &str) -> Reply {
        Reply::Text(s.into())
    }

    /// Phase 1 of the guide, with its printed numbers.
    #[test]
    fn the_guide_phase_one() {
        let mut t = TestKit::<BankAccount>::new("acct-1");
        assert_eq!(
            t.when(Command::Deposit { amount: 100 }).reply(),
            Some(&text("ok"))
        );
        assert_eq!(
            t.when(Command::Deposit { amount: 50 }).reply(),
            Some(&text("ok"))
        );
        let w = t.when(Command::Withdraw { amount: 30 });
        assert_eq!(w.events(), &[Event::Withdrawn { amount: 30 }]);
        assert_eq!(w.reply(), Some(&text("ok")));
        let w = t.when(Command::Withdraw { amount: 999 });
        assert!(w.events().is_empty());
        assert_eq!(w.reply(), Some(&text("insufficient funds (balance: 120)")));
        assert_eq!(
            t.when(Command::GetBalance).reply(),
            Some(&Reply::Balance(120))
        );
        // "Journal has 3 events".
        assert_eq!(
            t.journal(),
            [
                Event::Deposited { amount: 100 },
                Event::Deposited { amount: 50 },
                Event::Withdrawn { amount: 30 },
            ]
        );
        assert_eq!(t.seq(), 3);
        assert_eq!(
            t.state(),
            &State {
                balance: 120,
                transactions: 3
            }
        );
    }

    /// Phase 3 of the guide: seven deposits of 10; the state after five
    /// (where the guide's snapshot is taken) is balance 50, 5 transactions.
    #[test]
    fn the_guide_phase_three() {
        let mut t = TestKit::<BankAccount>::new("acct-2");
        for _ in 0..5 {
            t.when(Command::Deposit { amount: 10 });
        }
        assert_eq!(
            t.state(),
            &State {
                balance: 50,
                transactions: 5
            }
        );
        for _ in 0..2 {
            t.when(Command::Deposit { amount: 10 });
        }
        assert_eq!(
            t.when(Command::GetBalance).reply(),
            Some(&Reply::Balance(70))
        );
        assert_eq!(t.journal().len(), 7);
    }

    /// Phase 2 of the guide: a fresh entity replays the journal.
    #[test]
    fn recovery_from_events() {
        let mut t = TestKit::<BankAccount>::new("acct-1");
        t.given([
            Event::Deposited { amount: 100 },
            Event::Deposited { amount: 50 },
            Event::Withdrawn { amount: 30 },
        ]);
        assert_eq!(
            t.when(Command::GetBalance).reply(),
            Some(&Reply::Balance(120))
        );
    }

    #[test]
    fn non_positive_amounts_are_rejected() {
        let mut t = TestKit::<BankAccount>::new("a");
        let out = t.when(Command::Deposit { amount: -5 });
        assert!(out.rejection().is_some_and(|r| r.contains("positive")));
        assert!(out.events().is_empty());
        assert!(
            t.when(Command::Withdraw { amount: 0 })
                .rejection()
                .is_some()
        );
        assert!(t.journal().is_empty());
    }

    #[test]
    fn replies_render_as_the_guide_prints_them() {
        use cairn_guest::{bridge, codec};
        for (reply, json) in [
            (text("ok"), r#""ok""#),
            (
                text("insufficient funds (balance: 120)"),
                r#""insufficient funds (balance: 120)""#,
            ),
            (Reply::Balance(120), "120"),
            (Reply::Balance(-7), "-7"),
        ] {
            let bytes = codec::encode(&reply).unwrap();
            assert_eq!(codec::decode::<Reply>(&bytes).unwrap(), reply, "msgpack");
            assert_eq!(bridge::reply_to_json::<BankAccount>(&bytes).unwrap(), json);
        }
        let cmd =
            bridge::command_from_json::<BankAccount>(r#"{"Deposit":{"amount":100}}"#).unwrap();
        assert_eq!(
            codec::decode::<Command>(&cmd).unwrap(),
            Command::Deposit { amount: 100 }
        );
        let cmd = bridge::command_from_json::<BankAccount>(r#""GetBalance""#).unwrap();
        assert_eq!(codec::decode::<Command>(&cmd).unwrap(), Command::GetBalance);
        let ev = codec::encode(&Event::Withdrawn { amount: 30 }).unwrap();
        assert_eq!(
            bridge::event_to_json::<BankAccount>(&ev).unwrap(),
            r#"{"Withdrawn":{"amount":30}}"#
        );
        let st = codec::encode(&State {
            balance: 120,
            transactions: 3,
        })
        .unwrap();
        assert_eq!(
            bridge::state_to_json::<BankAccount>(&st).unwrap(),
            r#"{"balance":120,"transactions":3}"#
        );
    }
}
