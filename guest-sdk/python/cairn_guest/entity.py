"""The SDK model: an entity behavior, its context and the decisions it returns.

Same shape as the Rust SDK (``guest-sdk/src/lib.rs``)::

    class Command(TaggedUnion): ...

    @dataclass(frozen=True)
    class Deposit(Command):
        amount: int

    class BankAccount(Entity):
        name = "bank-account"
        version = "1.0.0"
        State = State
        Command = Command
        Event = Event
        Reply = str | int

        def on_command(self, ctx, state, command):
            match command:
                case Deposit(amount=amount):
                    return Decision.persist(Deposited(amount)).then_reply("ok")
                ...

        def on_event(self, state, event):
            ...
            return new_state

Behaviors are pure: no I/O, no printing, no clock (use
:attr:`Context.timestamp_ms`), no randomness of their own.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, ClassVar, Generic, TypeVar

from . import codec

__all__ = ["Context", "Send", "Schedule", "Effect", "Decision", "Entity"]

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Context:
    """What the host tells a behavior about one command."""

    #: The entity's id.
    entity_id: str
    #: Sequence number the first event of this command will get.
    next_seq: int
    #: When the host accepted the command, ms since the Unix epoch. Use this
    #: rather than a clock: it is recorded, so decisions are reproducible.
    timestamp_ms: int


@dataclasses.dataclass(frozen=True)
class Send:
    """Send an encoded command to another entity once the events are durable."""

    entity_type: str
    entity_id: str
    command: bytes


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Deliver an encoded command to this entity after ``delay_ms`` (journaled)."""

    delay_ms: int
    command: bytes


Effect = Send | Schedule

_NO_REPLY: Any = object()


class Decision:
    """What :meth:`Entity.on_command` returns, built fluently::

        Decision.persist(Deposited(100)).then_reply("ok")
        Decision.reply(120)
        Decision.reject("amount must be positive, got -5")
        Decision.none().schedule(timedelta(seconds=30), Expire())
    """

    __slots__ = ("events", "_reply", "effects", "rejection", "error")

    def __init__(self) -> None:
        #: Events to persist, in order.
        self.events: list[Any] = []
        self._reply: Any = _NO_REPLY
        #: Effects to run once the events are durable.
        self.effects: list[Effect] = []
        #: The rejection reason, if the command is refused.
        self.rejection: str | None = None
        #: Set when an effect's command could not be encoded.
        self.error: str | None = None

    @classmethod
    def persist(cls, *events: Any) -> Decision:
        """Persist these events (``persist(a, b)`` or ``persist([a, b])``);
        reply with :meth:`then_reply` if wanted."""
        d = cls()
        if len(events) == 1 and isinstance(events[0], (list, tuple)):
            events = tuple(events[0])
        d.events = list(events)
        return d

    @classmethod
    def reply(cls, reply: Any) -> Decision:
        """Reply without persisting anything."""
        d = cls()
        d._reply = reply
        return d

    @classmethod
    def none(cls) -> Decision:
        """Do nothing: no events, no reply."""
        return cls()

    @classmethod
    def reject(cls, reason: str) -> Decision:
        """Refuse the command; the caller gets ``reason`` as an error."""
        d = cls()
        d.rejection = str(reason)
        return d

    def then_reply(self, reply: Any) -> Decision:
        """Reply once the events are persisted."""
        self._reply = reply
        return self

    @property
    def has_reply(self) -> bool:
        """Whether the decision carries a reply."""
        return self._reply is not _NO_REPLY

    @property
    def reply_value(self) -> Any:
        """The reply (``None`` when there is none; see :attr:`has_reply`)."""
        return None if self._reply is _NO_REPLY else self._reply

    def send(self, entity_type: str, entity_id: str, command: Any) -> Decision:
        """Send ``command`` (a value of the target's command type, encoded
        with the default codec) to another entity after the events persist."""
        try:
            self.effects.append(Send(entity_type, entity_id, codec.encode(command)))
        except codec.CodecError as e:
            self.error = f"cannot encode a sent command: {e}"
        return self

    def schedule(self, delay: datetime.timedelta | int, command: Any) -> Decision:
        """Deliver ``command`` (of this behavior's command type) to this entity
        after ``delay`` (a ``timedelta``, or an ``int`` in milliseconds)."""
        if isinstance(delay, datetime.timedelta):
            delay_ms = delay // datetime.timedelta(milliseconds=1)
        else:
            delay_ms = int(delay)
        delay_ms = min(max(delay_ms, 0), 2**64 - 1)
        try:
            self.effects.append(Schedule(delay_ms, codec.encode(command)))
        except codec.CodecError as e:
            self.error = f"cannot encode a scheduled command: {e}"
        return self

    def __repr__(self) -> str:
        parts = []
        if self.rejection is not None:
            parts.append(f"reject={self.rejection!r}")
        if self.events:
            parts.append(f"events={self.events!r}")
        if self.has_reply:
            parts.append(f"reply={self._reply!r}")
        if self.effects:
            parts.append(f"effects={self.effects!r}")
        return f"Decision({', '.join(parts)})"


class Entity(Generic[S, C, E, R]):
    """An event-sourced entity behavior. Subclass it and set the class
    attributes; the SDK derives the codecs from the types.

    ``State`` is a dataclass (built with no arguments for the initial state,
    unless :meth:`initial_state` is overridden); ``Command`` and ``Event``
    are :class:`~cairn_guest.codec.TaggedUnion` bases (or any type the codec
    supports); ``Reply`` any codec type (``str | int`` is an untagged union,
    like ``#[serde(untagged)]``).

    Events are stored forever: keep their encoding compatible. A new field
    with a default, or a new variant, keeps old events readable; a renamed
    variant keeps its old name in ``aliases=``; a reshape declares the old
    shape as a ``legacy=True`` variant and converts it in :meth:`upcast`.
    """

    #: Entity type name, e.g. ``bank-account``.
    name: ClassVar[str]
    #: Version of this behavior, recorded with every event it produces.
    version: ClassVar[str]
    #: Version of the state encoding; bump it when ``State`` changes shape,
    #: so old snapshots are ignored and state is rebuilt from events.
    state_schema: ClassVar[int] = 1

    State: ClassVar[Any]
    Command: ClassVar[Any]
    Event: ClassVar[Any]
    Reply: ClassVar[Any] = Any

    def initial_state(self) -> S:
        """State of an entity with no events (``State()`` by default)."""
        return self.State()

    def on_command(self, ctx: Context, state: S, command: C) -> Decision:
        """Decides what a command does: persist events, reply, send or
        schedule commands, or reject it. No side effects of its own."""
        raise NotImplementedError

    def on_event(self, state: S, event: E) -> S | None:
        """Applies one event; returns the new state (or mutates ``state`` and
        returns ``None``). Pure: used both live and during recovery."""
        raise NotImplementedError

    def upcast(self, event: Any) -> E:
        """Converts an event decoded from the journal (perhaps an old,
        ``legacy`` shape) to the current shape. Identity by default."""
        return event

    # The steps the bridge and the test kit share.

    def apply(self, state: S, event: E) -> S:
        """:meth:`on_event`, keeping a state mutated in place."""
        new = self.on_event(state, event)
        return state if new is None else new

    def apply_stored(self, state: S, event: Any) -> S:
        """Upcasts an event read from the journal, then applies it."""
        event = self.upcast(event)
        if getattr(type(event), "__cairn_legacy__", False):
            raise codec.CodecError(
                f"legacy event {type(event).__name__} was not upcast to a current shape"
            )
        return self.apply(state, event)
