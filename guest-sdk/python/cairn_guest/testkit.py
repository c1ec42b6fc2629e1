"""Unit-test a behavior natively, without wasm: given these events, when this
command, then these events and this reply. Everything goes through the byte
:class:`~cairn_guest.bridge.Bridge`, so the codecs are exercised exactly as
in the component (``guest-sdk/src/testkit.rs`` in Python).

Works under ``python -m unittest`` and ``python -m pytest`` alike: failed
expectations raise ``AssertionError``::

    t = TestKit(BankAccount(), "acct-1")
    t.given([Deposited(100)])
    out = t.when(Withdraw(30))
    out.expect_events(Withdrawn(30)).expect_reply("ok")
    assert t.state == State(balance=70, transactions=2)
"""

from __future__ import annotations

from typing import Any

from . import codec
from .bridge import Bridge, CommandError, Rejected, pack_events
from .entity import Context, Effect, Entity, Schedule, Send

__all__ = ["TestKit", "Outcome"]


class Outcome:
    """What one command did."""

    def __init__(
        self,
        events: list[Any],
        reply: Any,
        has_reply: bool,
        effects: list[Effect],
        rejection: str | None,
        command_type: Any,
    ) -> None:
        #: Events the command persisted (decoded back from their bytes).
        self.events = events
        #: The reply (decoded back), or ``None``.
        self.reply = reply
        #: Whether there was a reply at all.
        self.has_reply = has_reply
        #: Effects the command asked for (commands encoded).
        self.effects = effects
        #: The rejection reason, if the command was rejected.
        self.rejection = rejection
        self._command_type = command_type

    @property
    def rejected(self) -> bool:
        """Whether the command was rejected."""
        return self.rejection is not None

    @property
    def scheduled(self) -> list[tuple[int, Any]]:
        """``(delay_ms, command)`` of each schedule effect, the command decoded."""
        return [
            (e.delay_ms, codec.decode(e.command, self._command_type))
            for e in self.effects
            if isinstance(e, Schedule)
        ]

    def sent(self, command_type: Any = Any) -> list[tuple[str, str, Any]]:
        """``(entity_type, entity_id, command)`` of each send effect, the
        command decoded as ``command_type``."""
        return [
            (e.entity_type, e.entity_id, codec.decode(e.command, command_type))
            for e in self.effects
            if isinstance(e, Send)
        ]

    def expect_events(self, *events: Any) -> Outcome:
        """Asserts the persisted events are exactly ``events``."""
        if list(events) != self.events:
            raise AssertionError(
                f"expected events {list(events)!r}, got {self.events!r}"
                + (f" (rejected: {self.rejection!r})" if self.rejected else "")
            )
        return self

    def expect_reply(self, reply: Any) -> Outcome:
        """Asserts the reply equals ``reply``."""
        if not self.has_reply:
            raise AssertionError(
                f"expected reply {reply!r}, got no reply"
                + (f" (rejected: {self.rejection!r})" if self.rejected else "")
            )
        if self.reply != reply or type(self.reply) is not type(reply):
            raise AssertionError(f"expected reply {reply!r}, got {self.reply!r}")
        return self

    def expect_no_reply(self) -> Outcome:
        """Asserts there was no reply."""
        if self.has_reply:
            raise AssertionError(f"expected no reply, got {self.reply!r}")
        return self

    def expect_rejected(self, containing: str = "") -> Outcome:
        """Asserts the command was rejected, with a reason containing ``containing``."""
        if self.rejection is None:
            raise AssertionError(
                f"expected a rejection, got events {self.events!r} and reply {self.reply!r}"
            )
        if containing not in self.rejection:
            raise AssertionError(f"expected a rejection containing {containing!r}, got {self.rejection!r}")
        return self

    def __repr__(self) -> str:
        if self.rejected:
            return f"Outcome(rejected={self.rejection!r})"
        return f"Outcome(events={self.events!r}, reply={self.reply!r}, effects={self.effects!r})"


class TestKit:
    """A behavior under test, with its state, sequence number and journal."""

    __test__ = False  # not a test class for pytest

    def __init__(self, entity: Entity[Any, Any, Any, Any], entity_id: str = "test-1") -> None:
        self.entity = entity
        self.bridge = Bridge(entity)
        self.entity_id = entity_id
        self._state_bytes = self.bridge.initial_state()
        #: Sequence number of the last applied event.
        self.seq = 0
        #: Every event given or persisted so far, encoded: the host's journal.
        self.journal_bytes: list[bytes] = []
        #: Timestamp given to the next command.
        self.now_ms = 1_700_000_000_000

    @property
    def state(self) -> Any:
        """The current state (decoded from the bytes the bridge returned)."""
        return codec.decode(self._state_bytes, self.bridge.state_type)

    @property
    def state_bytes(self) -> bytes:
        """The current state as the host would hold it."""
        return self._state_bytes

    def given(self, events: list[Any]) -> TestKit:
        """Applies past events through the packed ``fold``, as recovery does.
        Events may be values or already encoded ``bytes`` (e.g. written by
        another version or language)."""
        encoded = [
            e if isinstance(e, (bytes, bytearray)) else codec.encode(e, self.bridge.event_type)
            for e in events
        ]
        self._state_bytes = self.bridge.fold(self._state_bytes, pack_events(encoded))
        self.seq += len(encoded)
        self.journal_bytes.extend(bytes(e) for e in encoded)
        return self

    def when(self, command: Any) -> Outcome:
        """Runs a command; accepted events are applied to the state.

        A rejection is an :class:`Outcome`; a malformed command or a bad
        state raises the bridge's :class:`CommandError`.
        """
        ctx = Context(self.entity_id, self.seq + 1, self.now_ms)
        cmd = codec.encode(command, self.bridge.command_type)
        try:
            d = self.bridge.decide(ctx, self._state_bytes, cmd)
        except Rejected as r:
            return Outcome([], None, False, [], r.message, self.bridge.command_type)
        except CommandError:
            raise
        events = [codec.decode(e, self.bridge.event_type) for e in d.events]
        if d.state is not None:
            self._state_bytes = d.state
        self.seq += len(d.events)
        self.journal_bytes.extend(d.events)
        reply = codec.decode(d.reply, self.bridge.reply_type) if d.reply is not None else None
        return Outcome(events, reply, d.reply is not None, d.effects, None, self.bridge.command_type)

    def journal(self) -> list[Any]:
        """Every event given or persisted so far, decoded and upcast, in
        order (event ``i`` has sequence number ``i + 1``)."""
        return [
            self.entity.upcast(codec.decode(e, self.bridge.event_type)) for e in self.journal_bytes
        ]

    def recover(self) -> TestKit:
        """A fresh kit that replays this one's journal (a restart)."""
        t = TestKit(self.entity, self.entity_id)
        t.now_ms = self.now_ms
        t.given(list(self.journal_bytes))
        return t
