//! Version 2 of the bank account, deployed over version 1 by hot swap.
//!
//! What changed, and why every v1 event still replays:
//! - a new event variant, `FeeCharged`: a withdrawal that leaves the balance
//!   below [`MINIMUM_BALANCE`] costs a fee of [`FEE`] (v1 never wrote it);
//! - a new optional field on an existing event, `Withdrawn::fee_waived`
//!   (`#[serde(default)]`: v1 events decode with `false`);
//! - a reshape through the SDK's upcasting hook: v2 calls a deposit
//!   `Credited { amount, source }`; `EventCompat` still accepts the v1 shape
//!   `Deposited { amount }` and `From` converts it.
//!
//! The state keeps its shape, so the state schema stays 1 and live state
//! and snapshots carry over the swap.

use cairn_guest::{Context, Decision, Entity};
use serde::{Deserialize, Serialize};

/// Below this balance after a withdrawal, a fee is charged.
pub const MINIMUM_BALANCE: i64 = 100;
/// The fee.
pub const FEE: i64 = 1;

/// The behavior.
pub struct BankAccount;

/// State derived from the events (same shape as v1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Current balance.
    pub balance: i64,
    /// Number of transactions applied.
    pub transactions: u64,
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
    const VERSION: &'static str = "2.0.0";

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
            Command::Withdraw { amount } if amount <= state.balance => {
                let after = state.balance - amount;
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
                state.balance
            ))),
            Command::GetBalance => Decision::reply(Reply::Balance(state.balance)),
        }
    }

    fn on_event(state: &mut State, event: &Event) {
        match event {
            Event::Credited { amount, .. } => state.balance += amount,
            Event::Withdrawn { amount, .. } => state.balance -= amount,
            Event::FeeCharged { amount } => state.balance -= amount,
        }
        state.transactions += 1;
    }
}

cairn_guest::export_entity!(BankAccount);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_guest::codec;
    use cairn_guest::testkit::TestKit;

    /// The v1 event shapes, as v1 encoded them.
    #[derive(Serialize)]
    enum V1Event {
        Deposited { amount: i64 },
        Withdrawn { amount: i64 },
    }

    #[test]
    fn v1_events_decode_as_v2() {
        let d = codec::encode(&V1Event::Deposited { amount: 7 }).unwrap();
        assert_eq!(
            codec::decode::<Event>(&d).unwrap(),
            Event::Credited {
                amount: 7,
                source: "deposit".into()
            }
        );
        let w = codec::encode(&V1Event::Withdrawn { amount: 3 }).unwrap();
        assert_eq!(
            codec::decode::<Event>(&w).unwrap(),
            Event::Withdrawn {
                amount: 3,
                fee_waived: false
            }
        );
    }

    #[test]
    fn a_withdrawal_below_the_minimum_costs_a_fee() {
        let mut t = TestKit::<BankAccount>::new("acct-1");
        t.given([Event::Credited {
            amount: 150,
            source: "deposit".into(),
        }]);
        let out = t.when(Command::Withdraw { amount: 100 });
        assert_eq!(
            out.events(),
            &[
                Event::Withdrawn {
                    amount: 100,
                    fee_waived: false
                },
                Event::FeeCharged { amount: FEE }
            ]
        );
        assert_eq!(out.reply(), Some(&Reply::Text("ok (fee 1)".into())));
        assert_eq!(t.state().balance, 49);
    }

    #[test]
    fn above_the_minimum_there_is_no_fee() {
        let mut t = TestKit::<BankAccount>::new("acct-1");
        t.given([Event::Credited {
            amount: 500,
            source: "deposit".into(),
        }]);
        let out = t.when(Command::Withdraw { amount: 100 });
        assert_eq!(out.events().len(), 1);
        assert_eq!(t.state().balance, 400);
    }
}
