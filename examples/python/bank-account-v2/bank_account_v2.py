"""Version 2 of the bank account, in Python: the same commands, events,
replies and bytes as ``examples/bank-account-v2`` (Rust) and
``examples/js/bank-account-v2``, so it replays a version 1 history written
in any language, and the Rust and JavaScript v2 replay its history.

What changed since version 1:

- ``Deposited`` was reshaped into ``Credited(amount, source)``: the old
  events stay in the journals, so ``Deposited`` is kept as a ``legacy``
  variant and :meth:`BankAccount.upcast` converts it (on replay, in the
  deploy's replay check, and in the JSON tooling);
- ``Withdrawn`` gained ``fee_waived`` (a default: version 1 events decode
  with ``False``);
- a new event, ``FeeCharged``: a withdrawal that leaves the balance under
  the minimum of 100 costs a fee of 1.

The state keeps its shape, so ``state_schema`` stays 1 and live state and
snapshots carry over the swap.
"""

from __future__ import annotations

from dataclasses import dataclass

from cairn_guest import I64, U64, Context, Decision, Entity, TaggedUnion

#: Below this balance after a withdrawal, a fee is charged.
MINIMUM_BALANCE = 100
#: The fee.
FEE = 1


@dataclass
class State:
    """State derived from the events (same shape as version 1)."""

    #: Current balance.
    balance: I64 = 0
    #: Number of transactions applied.
    transactions: U64 = 0


class Command(TaggedUnion):
    """Requests (same as version 1)."""


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
class Deposited(Event, legacy=True):
    """Version 1's deposit: read from old journals and upcast to
    :class:`Credited`, never written."""

    amount: I64


@dataclass(frozen=True)
class Credited(Event):
    """Money came in."""

    amount: I64
    #: Where it came from (version 1 deposits: "deposit").
    source: str


@dataclass(frozen=True)
class Withdrawn(Event):
    """Money was withdrawn."""

    amount: I64
    #: New in version 2, optional: no fee was charged although one was due.
    fee_waived: bool = False


@dataclass(frozen=True)
class FeeCharged(Event):
    """New in version 2: a fee for going below the minimum balance."""

    amount: I64


#: Answers: a text ("ok", "ok (fee 1)", "insufficient funds (balance: N)")
#: or a balance (same as version 1).
Reply = str | I64


class BankAccount(Entity[State, Command, Event, "str | int"]):
    """The behavior."""

    name = "bank-account"
    version = "2.0.0"
    State = State
    Command = Command
    Event = Event
    Reply = Reply

    def on_command(self, ctx: Context, state: State, command: Command) -> Decision:
        match command:
            case Deposit(amount=amount) | Withdraw(amount=amount) if amount <= 0:
                return Decision.reject(f"amount must be positive, got {amount}")
            case Deposit(amount=amount):
                return Decision.persist(Credited(amount, "deposit")).then_reply("ok")
            case Withdraw(amount=amount) if amount <= state.balance:
                after = state.balance - amount
                if FEE <= after < MINIMUM_BALANCE:
                    return Decision.persist(Withdrawn(amount, False), FeeCharged(FEE)).then_reply(f"ok (fee {FEE})")
                return Decision.persist(Withdrawn(amount, after < MINIMUM_BALANCE)).then_reply("ok")
            case Withdraw():
                return Decision.reply(f"insufficient funds (balance: {state.balance})")
            case GetBalance():
                return Decision.reply(state.balance)
        raise AssertionError(f"unknown command {command!r}")

    def upcast(self, event: Event) -> Event:
        match event:
            case Deposited(amount=amount):
                return Credited(amount, "deposit")
        return event

    def on_event(self, state: State, event: Event) -> State:
        match event:
            case Credited(amount=amount):
                state.balance += amount
            case Withdrawn(amount=amount) | FeeCharged(amount=amount):
                state.balance -= amount
        state.transactions += 1
        return state
