//! A bank-account version that must never go live: it exists to prove that
//! hot swap refuses it.
//!
//! It renames the v1 event `Withdrawn` to `Debited` without an upcaster or
//! an alias, so a stored v1 withdrawal fails to decode on replay; and its
//! `on_event` panics (a trap in the guest) on a deposit of exactly 13.
//! Validation must name the entity and the sequence number of the first
//! event it cannot replay, and keep the active version.

use cairn_guest::{Context, Decision, Entity};
use serde::{Deserialize, Serialize};

/// The behavior.
pub struct BrokenBankAccount;

/// Same state as v1.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Current balance.
    pub balance: i64,
    /// Number of transactions applied.
    pub transactions: u64,
}

/// Same commands as v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add money.
    Deposit {
        /// Amount.
        amount: i64,
    },
    /// Take money out.
    Withdraw {
        /// Amount.
        amount: i64,
    },
    /// Reply with the balance.
    GetBalance,
}

/// The broken event type: `Withdrawn` renamed with no way to read old events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Money was deposited.
    Deposited {
        /// Amount.
        amount: i64,
    },
    /// Was `Withdrawn` in v1.
    Debited {
        /// Amount.
        amount: i64,
    },
}

/// Same replies as v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// A message.
    Text(String),
    /// A balance.
    Balance(i64),
}

impl Entity for BrokenBankAccount {
    type State = State;
    type Command = Command;
    type Event = Event;
    type Reply = Reply;
    const NAME: &'static str = "bank-account";
    const VERSION: &'static str = "9.9.9-broken";

    fn on_command(_ctx: &Context, state: &State, command: Command) -> Decision<Self> {
        match command {
            Command::Deposit { amount } => Decision::persist([Event::Deposited { amount }])
                .then_reply(Reply::Text("ok".into())),
            Command::Withdraw { amount } => {
                Decision::persist([Event::Debited { amount }]).then_reply(Reply::Text("ok".into()))
            }
            Command::GetBalance => Decision::reply(Reply::Balance(state.balance)),
        }
    }

    fn on_event(state: &mut State, event: &Event) {
        match event {
            Event::Deposited { amount: 13 } => panic!("cannot apply a deposit of 13"),
            Event::Deposited { amount } => state.balance += amount,
            Event::Debited { amount } => state.balance -= amount,
        }
        state.transactions += 1;
    }
}

cairn_guest::export_entity!(BrokenBankAccount);
