"""Cairn guest SDK for Python: write an event-sourced entity behavior as
plain Python and (later) build it into a WebAssembly component with
componentize-py.

- :mod:`cairn_guest.codec`: the default codec (``docs/CODEC.md``),
  byte-identical to the Rust SDK's, and the serde_json-shaped JSON;
- :mod:`cairn_guest.entity`: :class:`Entity`, :class:`Context`, :class:`Decision`;
- :mod:`cairn_guest.bridge`: the WIT exports over bytes;
- :mod:`cairn_guest.testkit`: given / when / expect, natively.

Stdlib only (Python 3.11).
"""

from .codec import (
    F32,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    CodecError,
    TaggedUnion,
    UnitStruct,
    field,
)
from .entity import Context, Decision, Entity, Schedule, Send

__all__ = [
    "CodecError",
    "Context",
    "Decision",
    "Entity",
    "F32",
    "I8",
    "I16",
    "I32",
    "I64",
    "Schedule",
    "Send",
    "TaggedUnion",
    "U8",
    "U16",
    "U32",
    "U64",
    "UnitStruct",
    "field",
]

__version__ = "0.1.0"
