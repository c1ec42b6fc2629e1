//! The shopping cart of the Casty README as an event-sourced state machine:
//! empty → active → checked out. Adding an item to an empty cart makes it
//! active; checkout turns an active cart into a receipt; a checked-out cart
//! refuses changes. Prices are integer cents (no floating point in money).

use std::collections::BTreeMap;

use cairn_guest::{Context, Decision, Entity};
use serde::{Deserialize, Serialize};

/// The behavior.
pub struct ShoppingCart;

/// An item: a name and a price in cents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Name; adding an item with the same name replaces it.
    pub name: String,
    /// Price in cents.
    pub price_cents: u64,
}

/// The three states of a cart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Nothing added yet.
    #[default]
    Empty,
    /// Items by name.
    Active {
        /// The items.
        items: BTreeMap<String, u64>,
    },
    /// Terminal: the receipt was issued.
    CheckedOut {
        /// Total paid, in cents.
        total_cents: u64,
    },
}

/// Requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add (or replace) an item.
    AddItem {
        /// The item.
        item: Item,
    },
    /// Remove an item by name.
    RemoveItem {
        /// The name.
        name: String,
    },
    /// Check out: replies a receipt.
    Checkout,
    /// Reply with the total in cents.
    GetTotal,
}

/// Facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// An item was added.
    ItemAdded {
        /// The item.
        item: Item,
    },
    /// An item was removed.
    ItemRemoved {
        /// Its name.
        name: String,
    },
    /// The cart was checked out.
    CheckedOut {
        /// Total in cents.
        total_cents: u64,
    },
}

/// Answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The cart changed.
    Ok,
    /// Total in cents.
    Total(u64),
    /// Checkout receipt.
    Receipt {
        /// The items bought, by name.
        items: Vec<Item>,
        /// Total in cents.
        total_cents: u64,
    },
}

fn total(items: &BTreeMap<String, u64>) -> u64 {
    items.values().sum()
}

impl Entity for ShoppingCart {
    type State = State;
    type Command = Command;
    type Event = Event;
    type Reply = Reply;
    const NAME: &'static str = "shopping-cart";
    const VERSION: &'static str = "1.0.0";

    fn on_command(_ctx: &Context, state: &State, command: Command) -> Decision<Self> {
        match (state, command) {
            (State::CheckedOut { .. }, Command::GetTotal) => Decision::reply(Reply::Total(0)),
            (State::CheckedOut { .. }, _) => Decision::reject("the cart is checked out"),
            (_, Command::AddItem { item }) => {
                Decision::persist([Event::ItemAdded { item }]).then_reply(Reply::Ok)
            }
            (State::Empty, Command::RemoveItem { .. }) => Decision::reject("the cart is empty"),
            (State::Active { items }, Command::RemoveItem { name }) => {
                if items.contains_key(&name) {
                    Decision::persist([Event::ItemRemoved { name }]).then_reply(Reply::Ok)
                } else {
                    Decision::reject(format!("no item named {name}"))
                }
            }
            (State::Empty, Command::Checkout) => Decision::reject("cannot check out an empty cart"),
            (State::Active { items }, Command::Checkout) => {
                let total_cents = total(items);
                let items = items
                    .iter()
                    .map(|(name, &price_cents)| Item {
                        name: name.clone(),
                        price_cents,
                    })
                    .collect();
                Decision::persist([Event::CheckedOut { total_cents }])
                    .then_reply(Reply::Receipt { items, total_cents })
            }
            (State::Empty, Command::GetTotal) => Decision::reply(Reply::Total(0)),
            (State::Active { items }, Command::GetTotal) => {
                Decision::reply(Reply::Total(total(items)))
            }
        }
    }

    fn on_event(state: &mut State, event: &Event) {
        match event {
            Event::ItemAdded { item } => match state {
                State::Active { items } => match items.get_mut(&item.name) {
                    Some(price) => *price = item.price_cents,
                    None => {
                        items.insert(item.name.clone(), item.price_cents);
                    }
                },
                _ => {
                    *state = State::Active {
                        items: BTreeMap::from([(item.name.clone(), item.price_cents)]),
                    }
                }
            },
            Event::ItemRemoved { name } => {
                if let State::Active { items } = state {
                    items.remove(name);
                    if items.is_empty() {
                        *state = State::Empty;
                    }
                }
            }
            Event::CheckedOut { total_cents } => {
                *state = State::CheckedOut {
                    total_cents: *total_cents,
                }
            }
        }
    }
}

cairn_guest::export_entity!(ShoppingCart);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_guest::testkit::TestKit;

    fn item(name: &str, price_cents: u64) -> Item {
        Item {
            name: name.into(),
            price_cents,
        }
    }

    #[test]
    fn empty_active_checked_out() {
        let mut t = TestKit::<ShoppingCart>::new("cart");
        assert!(
            t.when(Command::Checkout).rejection().is_some(),
            "empty cart cannot check out"
        );
        t.when(Command::AddItem {
            item: item("keyboard", 7500),
        });
        t.when(Command::AddItem {
            item: item("mouse", 2500),
        });
        assert_eq!(
            t.when(Command::GetTotal).reply(),
            Some(&Reply::Total(10000))
        );
        let r = t.when(Command::Checkout);
        assert_eq!(
            r.reply(),
            Some(&Reply::Receipt {
                items: vec![item("keyboard", 7500), item("mouse", 2500)],
                total_cents: 10000
            })
        );
        assert_eq!(r.events(), &[Event::CheckedOut { total_cents: 10000 }]);
        let late = t.when(Command::AddItem {
            item: item("monitor", 30000),
        });
        assert_eq!(late.rejection(), Some("the cart is checked out"));
        assert!(t.when(Command::Checkout).rejection().is_some());
        assert_eq!(t.when(Command::GetTotal).reply(), Some(&Reply::Total(0)));
        assert_eq!(t.state(), &State::CheckedOut { total_cents: 10000 });
        assert_eq!(t.journal().len(), 3);
    }

    #[test]
    fn json_tooling() {
        use cairn_guest::{bridge, codec};
        let cmd = bridge::command_from_json::<ShoppingCart>(
            r#"{"AddItem":{"item":{"name":"pen","price_cents":100}}}"#,
        )
        .unwrap();
        assert_eq!(
            codec::decode::<Command>(&cmd).unwrap(),
            Command::AddItem {
                item: item("pen", 100)
            }
        );
        let st = codec::encode(&State::CheckedOut { total_cents: 5 }).unwrap();
        assert_eq!(
            bridge::state_to_json::<ShoppingCart>(&st).unwrap(),
            r#"{"CheckedOut":{"total_cents":5}}"#
        );
    }

    #[test]
    fn removing_the_last_item_empties_the_cart() {
        let mut t = TestKit::<ShoppingCart>::new("cart");
        t.given([Event::ItemAdded {
            item: item("pen", 100),
        }]);
        assert!(
            t.when(Command::RemoveItem { name: "ink".into() })
                .rejection()
                .is_some()
        );
        t.when(Command::RemoveItem { name: "pen".into() });
        assert_eq!(t.state(), &State::Empty);
    }
}
