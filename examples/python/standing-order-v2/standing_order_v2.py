"""Version 2 of the standing order (``examples/python/standing-order``):
intervals in milliseconds. The ``Scheduled`` events version 1 wrote (every
``every_s`` seconds) are still in the journals and stay there forever, so
this version keeps their shape as a ``legacy`` variant and converts each
to the current ``Arranged`` event in :meth:`StandingOrder.upcast`: on
replay, in the deploy's replay check, and in the JSON tooling
(``cairn events`` shows ``Arranged``).

The state changes shape too (``every_ms``), so ``state_schema`` is 2: the
node ignores version 1's snapshots and rebuilds state from the events.
Pending ``Pay`` timers armed by version 1 run on this one unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from cairn_guest import I64, U32, U64, Context, Decision, Entity, TaggedUnion

#: The entity type payments are sent to.
BANK = "bank-account"


@dataclass
class State:
    """State derived from the events."""

    #: The bank account paid into.
    to: str = ""
    #: Amount of each payment.
    amount: I64 = 0
    #: Milliseconds between payments.
    every_ms: U64 = 0
    #: Payments still to make (0: no active order).
    remaining: U32 = 0
    #: Total paid so far, over every order.
    paid: I64 = 0


class Command(TaggedUnion):
    """Requests."""


@dataclass(frozen=True)
class Arrange(Command):
    """Pay ``amount`` into bank account ``to`` ``times`` times, every ``every_ms`` milliseconds."""

    to: str
    amount: I64
    every_ms: U64
    times: U32


@dataclass(frozen=True)
class Pay(Command):
    """One payment (the timer's command)."""


@dataclass(frozen=True)
class Cancel(Command):
    """Stop the active order; a pending timer then does nothing."""


@dataclass(frozen=True)
class Status(Command):
    """Reply with a line saying what is paid and what is left."""


class Event(TaggedUnion):
    """Facts."""


@dataclass(frozen=True)
class Scheduled(Event, legacy=True):
    """Version 1's "order arranged", in seconds: read from old journals and
    upcast to :class:`Arranged`, never written."""

    to: str
    amount: I64
    every_s: U64
    times: U32


@dataclass(frozen=True)
class Arranged(Event):
    """An order was arranged."""

    to: str
    amount: I64
    every_ms: U64
    times: U32


@dataclass(frozen=True)
class Paid(Event):
    """A payment left for ``to``."""

    to: str
    amount: I64


@dataclass(frozen=True)
class Cancelled(Event):
    """The order was stopped."""


class BankCommand(TaggedUnion):
    """The commands of the bank account this behavior sends (the part it uses)."""


@dataclass(frozen=True)
class Deposit(BankCommand):
    """`{"Deposit":{"amount":N}}`, as examples/bank-account decodes it."""

    amount: I64


def status(state: State) -> str:
    """The ``Status`` reply."""
    if state.remaining == 0:
        return f"no active order; paid {state.paid} in total"
    return f"{state.remaining} payments of {state.amount} to {state.to} left; paid {state.paid} in total"


class StandingOrder(Entity[State, Command, Event, str]):
    """The behavior."""

    name = "standing-order"
    version = "2.0.0"
    state_schema = 2
    State = State
    Command = Command
    Event = Event
    Reply = str

    def on_command(self, ctx: Context, state: State, command: Command) -> Decision:
        match command:
            case Arrange() if state.remaining > 0:
                return Decision.reject(f"an order is active: {status(state)}")
            case Arrange(amount=amount) if amount <= 0:
                return Decision.reject(f"amount must be positive, got {amount}")
            case Arrange(times=0):
                return Decision.reject("times must be at least 1")
            case Arrange(to=to, amount=amount, every_ms=every_ms, times=times):
                return (
                    Decision.persist(Arranged(to, amount, every_ms, times))
                    .then_reply("ok")
                    .schedule(timedelta(milliseconds=every_ms), Pay())
                )
            case Pay() if state.remaining == 0:
                # The timer of a cancelled order.
                return Decision.none()
            case Pay():
                d = (
                    Decision.persist(Paid(state.to, state.amount))
                    .then_reply("paid")
                    .send(BANK, state.to, Deposit(state.amount))
                )
                if state.remaining > 1:
                    d.schedule(timedelta(milliseconds=state.every_ms), Pay())
                return d
            case Cancel() if state.remaining == 0:
                return Decision.reject("no active order")
            case Cancel():
                return Decision.persist(Cancelled()).then_reply("ok")
            case Status():
                return Decision.reply(status(state))
        raise AssertionError(f"unknown command {command!r}")

    def upcast(self, event: Event) -> Event:
        match event:
            case Scheduled(to=to, amount=amount, every_s=every_s, times=times):
                return Arranged(to, amount, every_s * 1000, times)
        return event

    def on_event(self, state: State, event: Event) -> State:
        match event:
            case Arranged(to=to, amount=amount, every_ms=every_ms, times=times):
                state.to, state.amount, state.every_ms, state.remaining = to, amount, every_ms, times
            case Paid(amount=amount):
                state.paid += amount
                state.remaining -= 1
            case Cancelled():
                state.remaining = 0
        return state
