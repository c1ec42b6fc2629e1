"""The glue between a behavior and the WIT exports of ``cairn:entity/behavior``
(``wit/entity.wit``) in a component built by componentize-py.

Only imported inside a component build (``guest-sdk/python/build.py``), where
componentize-py generates the ``wit_world`` bindings; natively, tests call
:class:`cairn_guest.bridge.Bridge` directly. :func:`behavior_class` returns the
class componentize-py instantiates for the export: each method forwards to a
:class:`~cairn_guest.bridge.Bridge` and turns its errors into the WIT
``result`` errors (``componentize_py_types.Err``). An exception raised by the
behavior's own code is not caught: componentize-py turns it into a trap, the
host fails the command and restarts the entity from its journal (a Rust
panic does the same).

The component is built with WASI stubbed (every WASI call traps), so this
module points ``sys.stdout`` and ``sys.stderr`` at a sink: a ``print`` in a
behavior is dropped instead of failing the command.
"""

from __future__ import annotations

import io
import sys
from types import ModuleType
from typing import Any

from componentize_py_types import Err
from wit_world.imports import types as wit

from .bridge import BadState, Bridge, CommandError, FoldError, JsonError, Malformed, Rejected
from .entity import Context, Entity, Schedule, Send

__all__ = ["behavior_class", "find_entity"]


class _Sink(io.TextIOBase):
    """A text stream that drops what is written (WASI's stdout is stubbed)."""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        return len(s)


sys.stdout = sys.stderr = _Sink()


def find_entity(module: ModuleType, name: str | None = None) -> type[Entity[Any, Any, Any, Any]]:
    """The :class:`Entity` subclass of ``module``: the one named ``name``, or
    the only one defined in the module."""
    if name is not None:
        cls = getattr(module, name, None)
        if not (isinstance(cls, type) and issubclass(cls, Entity)):
            raise TypeError(f"{module.__name__}.{name} is not a cairn_guest.Entity subclass")
        return cls
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, Entity)
        and v is not Entity
        and v.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(sorted(c.__name__ for c in found)) or "none"
        raise TypeError(
            f"{module.__name__} must define exactly one cairn_guest.Entity subclass "
            f"(found: {names}); name one with --entity"
        )
    return found[0]


def _command_error(e: CommandError) -> Err[Any]:
    if isinstance(e, Rejected):
        return Err(wit.CommandError_Rejected(e.message))
    if isinstance(e, Malformed):
        return Err(wit.CommandError_Malformed(e.message))
    if isinstance(e, BadState):
        return Err(wit.CommandError_BadState(e.message))
    return Err(wit.CommandError_BadState(f"{e.case}: {e.message}"))


def _effect(e: Send | Schedule) -> Any:
    if isinstance(e, Send):
        return wit.Effect_Send(wit.Send(e.entity_type, e.entity_id, e.command))
    return wit.Effect_Schedule(wit.Schedule(e.delay_ms, e.command))


def behavior_class(entity: type[Entity[Any, Any, Any, Any]]) -> type:
    """The ``Behavior`` class componentize-py exports for ``entity``."""
    bridge = Bridge(entity())

    class Behavior:
        """``cairn:entity/behavior@0.1.0``, forwarded to a Bridge."""

        def describe(self) -> wit.Descriptor:
            d = bridge.describe()
            return wit.Descriptor(d.name, d.version, d.state_schema)

        def initial_state(self) -> bytes:
            return bridge.initial_state()

        def decide(self, ctx: wit.Context, state: bytes, command: bytes) -> wit.Decision:
            c = Context(ctx.entity_id, ctx.next_seq, ctx.timestamp_ms)
            try:
                d = bridge.decide(c, state, command)
            except CommandError as e:
                raise _command_error(e) from None
            return wit.Decision(d.events, d.reply, [_effect(e) for e in d.effects], d.state)

        def fold(self, state: bytes, events: bytes) -> bytes:
            try:
                return bridge.fold(state, events)
            except FoldError as e:
                raise Err(wit.FoldError(e.index, e.message)) from None

        def command_from_json(self, json: str) -> bytes:
            try:
                return bridge.command_from_json(json)
            except JsonError as e:
                raise Err(str(e)) from None

        def event_to_json(self, event: bytes) -> str:
            try:
                return bridge.event_to_json(event)
            except JsonError as e:
                raise Err(str(e)) from None

        def state_to_json(self, state: bytes) -> str:
            try:
                return bridge.state_to_json(state)
            except JsonError as e:
                raise Err(str(e)) from None

        def reply_to_json(self, reply: bytes) -> str:
            try:
                return bridge.reply_to_json(reply)
            except JsonError as e:
                raise Err(str(e)) from None

    Behavior.__qualname__ = f"Behavior[{entity.__qualname__}]"
    return Behavior
