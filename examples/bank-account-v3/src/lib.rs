//! Version 3 of the bank account: the same events and commands as v2, but
//! the state changes shape (the balance is kept in cents, with the number of
//! fees paid), so `STATE_SCHEMA` is 2. When v3 goes live over v1 or v2 the
//! host ignores the old snapshots and rebuilds each entity's state by
//! replaying its events through v3; a command waits only for its own
//! entity's rebuild.

use cairn_guest::{Context, Decision, Entity};
use serde::{Deserialize, Serialize};

/// Below this balance after a withdrawal, a fee is charged.
pub const MINIMUM_BALANCE: i64 = 100;
/// The fee.
pub const FEE: i64 = 1;

/// The behavior.
pub struct BankAccount;

/// State derived from the events: a new shape (schema 2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Current balance in cents.
    pub cents: i64,
    /// Number of transactions applied.
    pub transactions: u64,
    /// Fees paid so far.
    pub fees_paid: u64,
}

impl State {
    fn balance(&self) -> i64 {
        self.cents / 100
    }
}

/// Requests (same as v1).
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

/// Facts. Decoded through [`EventCompat`], which accepts every shape a
/// bank-account event ever had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EventCompat")]
pub enum Event {
    /// Money came in (v1: `Deposited { amount }`).
    Credited {
        /// Amount.
        amount: i64,
        /// Where it came from (v1 deposits: "deposit").
        source: String,
    },
    /// Money was withdrawn.
    Withdrawn {
        /// Amount.
        amount: i64,
        /// New in v2, optional: no fee was charged although one was due.
        #[serde(default)]
        fee_waived: bool,
    },
    /// New in v2: a fee for going below the minimum balance.
    FeeCharged {
        /// Amount.
        amount: i64,
    },
}

/// Every shape an event ever had; `From` upcasts it to [`Event`].
#[derive(Deserialize)]
enum EventCompat {
    /// v1.
    Deposited {
        amount: i64,
    },
    Credited {
        amount: i64,
        source: String,
    },
    Withdrawn {
        amount: i64,
        #[serde(default)]
        fee_waived: bool,
    },
    FeeCharged {
        amount: i64,
    },
}

impl From<EventCompat> for Event {
    fn from(e: EventCompat) -> Self {
        match e {
            EventCompat::Deposited { amount } => Event::Credited {
                amount,
                source: "deposit".into(),
            },
            EventCompat::Credited { amount, source } => Event::Credited { amount, source },
            EventCompat::Withdrawn { amount, fee_waived } => {
                Event::Withdrawn { amount, fee_waived }
            }
            EventCompat::FeeCharged { amount } => Event::FeeCharged { amount },
        }
    }
}

/// Answers (same as v1).
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
    const VERSION: &'static str = "3.0.0";
    const STATE_SCHEMA: u32 = 2;

    fn on_command(_ctx: &Context, state: &State, command: Command) -> Decision<Self> {
        match command {
            Command::Deposit { amount } | Command::Withdraw { amount } if amount <= 0 => {
                Decision::reject(format!("amount must be positive, got {amount}"))
            }
            Command::Deposit { amount } => Decision::persist([Event::Credited {
                amount,
                source: "deposit".into(),
            }])
            .then_reply(Reply::Text("ok".into())),
            Command::Withdraw { amount } if amount <= state.balance() => {
                let after = state.balance() - amount;
                if (FEE..MINIMUM_BALANCE).contains(&after) {
                    Decision::persist([
                        Event::Withdrawn {
                            amount,
                            fee_waived: false,
                        },
                        Event::FeeCharged { amount: FEE },
                    ])
                    .then_reply(Reply::Text(format!("ok (fee {FEE})")))
                } else {
                    Decision::persist([Event::Withdrawn {
                        amount,
                        fee_waived: after < MINIMUM_BALANCE,
                    }])
                    .then_reply(Reply::Text("ok".into()))
                }
            }
            Command::Withdraw { .. } => Decision::reply(Reply::Text(format!(
                "insufficient funds (balance: {})",
                state.balance()
            ))),
            Command::GetBalance => Decision::reply(Reply::Balance(state.balance())),
        }
    }

    fn on_event(state: &mut State, event: &Event) {
        match event {
            Event::Credited { amount, .. } => state.cents += amount * 100,
            Event::Withdrawn { amount, .. } => state.cents -= amount * 100,
            Event::FeeCharged { amount } => {
                state.cents -= amount * 100;
                state.fees_paid += 1;
            }
        }
        state.transactions += 1;
    }
}

cairn_guest::export_entity!(BankAccount);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_guest::testkit::TestKit;

    #[test]
    fn the_state_is_kept_in_cents() {
        let mut t = TestKit::<BankAccount>::new("acct-1");
        t.given([Event::Credited {
            amount: 150,
            source: "deposit".into(),
        }]);
        t.when(Command::Withdraw { amount: 100 });
        assert_eq!(t.state().cents, 4_900);
        assert_eq!(t.state().fees_paid, 1);
        assert_eq!(
            t.when(Command::GetBalance).reply(),
            Some(&Reply::Balance(49))
        );
    }
}
