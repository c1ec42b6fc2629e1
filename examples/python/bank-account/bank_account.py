"""The bank account of the reference event-sourcing guide, in Python: Deposit,
Withdraw ("ok" or "insufficient funds (balance: N)") and GetBalance. The same
commands, events, replies and bytes as ``examples/bank-account`` (Rust), so
either one replays the other's history.

Commands are intents; events are facts.
"""

from __future__ import annotations

from dataclasses import dataclass

from cairn_guest import I64, U64, Context, Decision, Entity, TaggedUnion


@dataclass
class State:
    """State derived from the events."""

    #: Current balance.
    balance: I64 = 0
    #: Number of transactions applied.
    transactions: U64 = 0


class Command(TaggedUnion):
    """Requests."""


@dataclass(frozen=True)
class Deposit(Command):
    """Add money; replies "ok"."""

    amount: I64


@dataclass(frozen=True)
class Withdraw(Command):
    """Take money out if the balance allows it."""

    amount: I64


@dataclass(frozen=True)
class GetBalance(Command):
    """Reply with the balance."""


class Event(TaggedUnion):
    """Facts."""


@dataclass(frozen=True)
class Deposited(Event):
    """Money was deposited."""

    amount: I64


@dataclass(frozen=True)
class Withdrawn(Event):
    """Money was withdrawn."""

    amount: I64


#: Answers: a text ("ok", "insufficient funds (balance: 120)") or a balance.
#: An untagged union, like the Rust `#[serde(untagged)] enum Reply`.
Reply = str | I64


class BankAccount(Entity[State, Command, Event, "str | int"]):
    """The behavior."""

    name = "bank-account"
    version = "1.0.0"
    State = State
    Command = Command
    Event = Event
    Reply = Reply

    def on_command(self, ctx: Context, state: State, command: Command) -> Decision:
        match command:
            case Deposit(amount=amount) | Withdraw(amount=amount) if amount <= 0:
                return Decision.reject(f"amount must be positive, got {amount}")
            case Deposit(amount=amount):
                return Decision.persist(Deposited(amount)).then_reply("ok")
            case Withdraw(amount=amount) if amount <= state.balance:
                return Decision.persist(Withdrawn(amount)).then_reply("ok")
            case Withdraw():
                return Decision.reply(f"insufficient funds (balance: {state.balance})")
            case GetBalance():
                return Decision.reply(state.balance)
        raise AssertionError(f"unknown command {command!r}")

    def on_event(self, state: State, event: Event) -> State:
        match event:
            case Deposited(amount=amount):
                state.balance += amount
            case Withdrawn(amount=amount):
                state.balance -= amount
        state.transactions += 1
        return state
