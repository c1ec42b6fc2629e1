"""The glue between a behavior and the WIT exports of ``cairn:entity/behavior``
(``wit/entity.wit``) in a component built by componentize-py.

Only imported inside a component build (``guest-sdk/python/build.py``), where
componentize-py generates the ``wit_world`` bindings; natively, tests call
:class:`cairn_guest.bridge.Bridge` directly. :func:`behavior_class` returns the
class componentize-py instantiates for the export: each method forwards to a
:class:`~cairn_guest.bridge.Bridge` and turns its errors into the WIT
``result`` errors (``componentize_py_types.Err``). An exception raised by the
behavior's own code ends the call (below): the host fails the command and
restarts the entity from its journal (a Rust panic does the same).

Output: by default (``build.py --wasi=host``) the component's stdout and
stderr are WASI streams the node captures during each call and writes to its
log (bounded, rate-limited), so each export flushes ``sys.stdout`` and
``sys.stderr`` before it returns: a ``print`` reaches the log of the call
that made it. An exception the behavior's code lets escape is written to
stderr as a traceback (so it lands in the node's log), then the call ends
with ``os._exit(1)``: the host fails it and quotes the traceback's last
line to the caller (see :func:`_export`). Built with ``--wasi=stub``, every
WASI call traps, so the generated module calls :func:`drop_output` first:
output goes to a sink, and an exception ends as a bare trap.
"""

from __future__ import annotations

import functools
import io
import os
import sys
import traceback
from types import ModuleType
from typing import Any, Callable, TypeVar

from componentize_py_types import Err
from wit_world.imports import types as wit

from .bridge import BadState, Bridge, CommandError, FoldError, JsonError, Malformed, Rejected
from .entity import Context, Entity, Schedule, Send

__all__ = ["behavior_class", "drop_output", "find_entity"]

F = TypeVar("F", bound=Callable[..., Any])


class _Sink(io.TextIOBase):
    """A text stream that drops what is written (WASI's stdout is stubbed)."""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        return len(s)


def drop_output() -> None:
    """Points ``sys.stdout`` and ``sys.stderr`` at a sink: for a component
    built with WASI stubbed, where a write to them would trap."""
    sys.stdout = sys.stderr = _Sink()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - output must never fail a call
            pass


def _export(name: str) -> Callable[[F], F]:
    """Wraps an export: flushes the output after the call; on an exception
    that is not a WIT error, writes its traceback to stderr and ends the
    call with ``os._exit(1)`` (the host fails the call, quoting the
    traceback's last line, e.g. ``ZeroDivisionError: division by zero``).

    Letting the exception escape would trap too, but componentize-py then
    prints the traceback again and ends with a Rust panic message, which is
    all a caller would see."""

    def wrap(f: F) -> F:
        @functools.wraps(f)
        def call(*args: Any) -> Any:
            try:
                return f(*args)
            except Err:
                raise
            except BaseException as e:
                try:
                    sys.stderr.write(f"uncaught exception in {name}:\n")
                    tb = e.__traceback__.tb_next if e.__traceback__ else None
                    traceback.print_exception(type(e), e, tb, file=sys.stderr)
                finally:
                    _flush()
                    os._exit(1)
            finally:
                _flush()

        return call  # type: ignore[return-value]

    return wrap


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

        @_export("describe")
        def describe(self) -> wit.Descriptor:
            d = bridge.describe()
            return wit.Descriptor(d.name, d.version, d.state_schema)

        @_export("initial-state")
        def initial_state(self) -> bytes:
            return bridge.initial_state()

        @_export("decide")
        def decide(self, ctx: wit.Context, state: bytes, command: bytes) -> wit.Decision:
            c = Context(ctx.entity_id, ctx.next_seq, ctx.timestamp_ms)
            try:
                d = bridge.decide(c, state, command)
            except CommandError as e:
                raise _command_error(e) from None
            return wit.Decision(d.events, d.reply, [_effect(e) for e in d.effects], d.state)

        @_export("fold")
        def fold(self, state: bytes, events: bytes) -> bytes:
            try:
                return bridge.fold(state, events)
            except FoldError as e:
                raise Err(wit.FoldError(e.index, e.message)) from None

        @_export("command-from-json")
        def command_from_json(self, json: str) -> bytes:
            try:
                return bridge.command_from_json(json)
            except JsonError as e:
                raise Err(str(e)) from None

        @_export("event-to-json")
        def event_to_json(self, event: bytes) -> str:
            try:
                return bridge.event_to_json(event)
            except JsonError as e:
                raise Err(str(e)) from None

        @_export("state-to-json")
        def state_to_json(self, state: bytes) -> str:
            try:
                return bridge.state_to_json(state)
            except JsonError as e:
                raise Err(str(e)) from None

        @_export("reply-to-json")
        def reply_to_json(self, reply: bytes) -> str:
            try:
                return bridge.reply_to_json(reply)
            except JsonError as e:
                raise Err(str(e)) from None

    Behavior.__qualname__ = f"Behavior[{entity.__qualname__}]"
    return Behavior
