"""The byte-level face of a behavior: the functions the WIT world
``cairn:entity/behavior`` exports (``wit/entity.wit``), as plain Python over
bytes, mirroring ``guest-sdk/src/bridge.rs``.

A componentize-py build only needs to forward each export to a
:class:`Bridge` and map :class:`CommandError` / :class:`FoldError` /
:class:`JsonError` to the WIT ``result`` errors. Natively, the test kit and
tests call the same functions. Never raises on bad bytes except with these
errors; an exception raised by the behavior's own code propagates (the
equivalent of a Rust panic: the host fails the command and restarts the
entity from its journal).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import codec
from .entity import Context, Effect, Entity

__all__ = [
    "Descriptor",
    "RawDecision",
    "CommandError",
    "Rejected",
    "Malformed",
    "BadState",
    "FoldError",
    "JsonError",
    "Bridge",
    "pack_events",
    "unpack_events",
]


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """What a behavior says about itself (WIT ``descriptor``)."""

    name: str
    version: str
    state_schema: int


@dataclasses.dataclass(frozen=True)
class RawDecision:
    """An accepted command, encoded (WIT ``decision``)."""

    events: list[bytes]
    reply: bytes | None
    effects: list[Effect]
    #: The encoded new state; ``None`` when there are no events.
    state: bytes | None


class CommandError(Exception):
    """Why a command produced no decision (WIT ``command-error``)."""

    #: The WIT case name.
    case = ""

    @property
    def message(self) -> str:
        """The reason or error message."""
        return str(self.args[0]) if self.args else ""


class Rejected(CommandError):
    """The behavior refused the command."""

    case = "rejected"


class Malformed(CommandError):
    """The command bytes could not be decoded."""

    case = "malformed"


class BadState(CommandError):
    """The state bytes could not be decoded (or a result encoded)."""

    case = "bad-state"


class FoldError(Exception):
    """An event of a batch could not be applied (WIT ``fold-error``)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"event {index}: {message}")
        self.index = index
        self.message = message


class JsonError(Exception):
    """A tooling codec failed (the WIT ``string`` error)."""


def pack_events(events: list[bytes]) -> bytes:
    """Packs events for :meth:`Bridge.fold`: each is a little-endian u32
    length followed by its bytes."""
    out = bytearray()
    for e in events:
        out += len(e).to_bytes(4, "little")
        out += e
    return bytes(out)


def unpack_events(packed: bytes) -> list[bytes]:
    """The events of a packed batch (raises :class:`FoldError` if truncated)."""
    out = []
    pos = 0
    n = len(packed)
    while pos < n:
        if pos + 4 > n:
            raise FoldError(len(out), "the packed batch is truncated")
        size = int.from_bytes(packed[pos : pos + 4], "little")
        pos += 4
        if pos + size > n:
            raise FoldError(len(out), "the packed batch is truncated")
        out.append(bytes(packed[pos : pos + size]))
        pos += size
    return out


class Bridge:
    """One behavior's exports over bytes."""

    def __init__(self, entity: Entity[Any, Any, Any, Any]) -> None:
        self.entity = entity
        cls = type(entity)
        self.state_type = cls.State
        self.command_type = cls.Command
        self.event_type = cls.Event
        self.reply_type = cls.Reply
        # The codecs of decide and fold, compiled once.
        self._state = codec.TypeCodec(cls.State)
        self._command = codec.TypeCodec(cls.Command)
        self._event = codec.TypeCodec(cls.Event)
        self._reply = codec.TypeCodec(cls.Reply)

    def describe(self) -> Descriptor:
        """Name, version and state-schema version."""
        e = self.entity
        return Descriptor(e.name, e.version, int(e.state_schema))

    def initial_state(self) -> bytes:
        """The encoded initial state."""
        return codec.encode(self.entity.initial_state(), self.state_type)

    def decide(self, ctx: Context, state: bytes, command: bytes) -> RawDecision:
        """Decodes ``command`` and ``state``, runs ``on_command``, folds the
        new events into the state and encodes everything."""
        try:
            cmd = self._command.decode(command)
        except codec.CodecError as e:
            raise Malformed(str(e)) from None
        try:
            st = self._state.decode(state)
        except codec.CodecError as e:
            raise BadState(str(e)) from None
        d = self.entity.on_command(ctx, st, cmd)
        if d is None:
            raise BadState("on_command returned no decision")
        if d.rejection is not None:
            raise Rejected(d.rejection)
        if d.error is not None:
            raise BadState(d.error)
        events = []
        for ev in d.events:
            try:
                events.append(self._event.encode(ev))
            except codec.CodecError as e:
                raise BadState(f"cannot encode event: {e}") from None
            st = self.entity.apply(st, ev)
        new_state = None
        if events:
            try:
                new_state = self._state.encode(st)
            except codec.CodecError as e:
                raise BadState(f"cannot encode state: {e}") from None
        reply = None
        if d.has_reply:
            try:
                reply = self._reply.encode(d.reply_value)
            except codec.CodecError as e:
                raise BadState(f"cannot encode reply: {e}") from None
        return RawDecision(events, reply, list(d.effects), new_state)

    def fold(self, state: bytes, events: bytes) -> bytes:
        """Applies a packed batch of events to ``state`` (recovery); the
        state is decoded once and encoded once."""
        try:
            st = self._state.decode(state)
        except codec.CodecError as e:
            raise FoldError(0, f"cannot decode the state: {e}") from None
        index = 0
        pos = 0
        n = len(events)
        view = memoryview(events)
        while pos < n:
            if pos + 4 > n:
                raise FoldError(index, "the packed batch is truncated")
            size = int.from_bytes(view[pos : pos + 4], "little")
            pos += 4
            if pos + size > n:
                raise FoldError(index, "the packed batch is truncated")
            try:
                ev = self._event.decode(bytes(view[pos : pos + size]))
                st = self.entity.apply_stored(st, ev)
            except codec.CodecError as e:
                raise FoldError(index, f"cannot decode the event: {e}") from None
            pos += size
            index += 1
        try:
            return self._state.encode(st)
        except codec.CodecError as e:
            raise FoldError(index, f"cannot encode the state: {e}") from None

    def command_from_json(self, json: str) -> bytes:
        """JSON command → encoded command."""
        try:
            cmd = codec.from_json(json, self.command_type)
            return codec.encode(cmd, self.command_type)
        except codec.CodecError as e:
            raise JsonError(f"not a valid {self.entity.name} command: {e}") from None

    def _to_json(self, data: bytes, tp: Any, what: str, upcast: bool = False) -> str:
        try:
            v = codec.decode(data, tp)
            if upcast:
                v = self.entity.upcast(v)
        except codec.CodecError as e:
            raise JsonError(f"cannot decode the {what}: {e}") from None
        try:
            return codec.to_json(v, tp)
        except codec.CodecError as e:
            raise JsonError(str(e)) from None

    def event_to_json(self, event: bytes) -> str:
        """Encoded event → JSON (after the upcast, as the Rust SDK's
        ``#[serde(from)]`` does)."""
        return self._to_json(event, self.event_type, "event", upcast=True)

    def state_to_json(self, state: bytes) -> str:
        """Encoded state → JSON."""
        return self._to_json(state, self.state_type, "state")

    def reply_to_json(self, reply: bytes) -> str:
        """Encoded reply → JSON."""
        return self._to_json(reply, self.reply_type, "reply")
