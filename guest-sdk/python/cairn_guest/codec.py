"""The default codec of commands, events, state and replies (``docs/CODEC.md``).

MessagePack with field names, byte-identical to the Rust SDK
(``rmp_serde::encode::write_named`` / ``rmp_serde::from_slice``), so that a
history written by a Rust behavior replays through a Python one and back.

How Python values map to the wire:

=====================================  ==========================================
Python                                 MessagePack (Rust type)
=====================================  ==========================================
``None``                               nil (``None``, ``()``)
``bool``                               true / false
``int``                                the smallest int form (any Rust integer)
``float`` / ``F32``                    float 64 / float 32 (``f64`` / ``f32``)
``str``                                str (``String``, ``char``)
``bytes``                              bin (``serde_bytes::ByteBuf``; a Rust
                                       ``Vec<u8>`` is ``list[int]``)
``list`` / ``tuple``                   array (``Vec<T>``, tuples, tuple structs)
``dict``                               map, in insertion order (``BTreeMap``
                                       writes sorted keys: sort to match it)
a dataclass                            map of field name → value, in
                                       declaration order (a struct)
a variant of a :class:`TaggedUnion`    ``"Name"`` (unit), ``{"Name": {..}}``
                                       (struct), ``{"Name": v}`` (newtype),
                                       ``{"Name": [..]}`` (tuple): an enum
an :class:`enum.Enum` member           ``"NAME"`` (a fieldless enum)
:class:`UnitStruct` instance           empty array (a unit struct)
=====================================  ==========================================

Decoding is directed by a type (the same annotations): unknown struct fields
are skipped, a missing field takes the dataclass default (or ``None`` for an
``Optional`` field), unknown variants are errors. The JSON functions
(:func:`to_json`, :func:`from_json`) speak the externally tagged shape of
``serde_json``: ``{"Deposit":{"amount":100}}``, ``"GetBalance"``.

Stdlib only: componentize-py bundles only what is importable.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import struct
import types
import typing
from typing import Any, Annotated, ClassVar, Union

__all__ = [
    "CodecError",
    "TaggedUnion",
    "UnitStruct",
    "IntRange",
    "I8",
    "I16",
    "I32",
    "I64",
    "U8",
    "U16",
    "U32",
    "U64",
    "F32",
    "field",
    "encode",
    "decode",
    "to_json",
    "to_json_value",
    "from_json",
    "from_json_value",
    "TypeCodec",
]


class CodecError(ValueError):
    """A value could not be encoded or decoded."""


# --------------------------------------------------------------------------
# Type annotations
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IntRange:
    """An integer annotation: values must lie in ``lo..=hi`` (a Rust width)."""

    name: str
    lo: int
    hi: int


class _Float32:
    """Annotation: encode this float as MessagePack float 32 (a Rust ``f32``)."""

    def __repr__(self) -> str:
        return "F32"


I8 = Annotated[int, IntRange("i8", -(2**7), 2**7 - 1)]
I16 = Annotated[int, IntRange("i16", -(2**15), 2**15 - 1)]
I32 = Annotated[int, IntRange("i32", -(2**31), 2**31 - 1)]
I64 = Annotated[int, IntRange("i64", -(2**63), 2**63 - 1)]
U8 = Annotated[int, IntRange("u8", 0, 2**8 - 1)]
U16 = Annotated[int, IntRange("u16", 0, 2**16 - 1)]
U32 = Annotated[int, IntRange("u32", 0, 2**32 - 1)]
U64 = Annotated[int, IntRange("u64", 0, 2**64 - 1)]
F32 = Annotated[float, _Float32()]

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_MAX_DEPTH = 512


def field(*, aliases: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """A dataclass field that also decodes from older names (``#[serde(alias)]``).

    ``amount: int = field(aliases=("value",), default=0)``
    """
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata["cairn_aliases"] = tuple(aliases)
    return dataclasses.field(metadata=metadata, **kwargs)


class UnitStruct:
    """Base of a unit struct (``struct Marker;``): an empty array, JSON ``null``."""

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TaggedUnion:
    """Base of an externally tagged union: a Rust ``enum``.

    Subclass it once for the union, then once per variant, each variant a
    dataclass::

        class Event(TaggedUnion): ...

        @dataclass(frozen=True)
        class Deposited(Event):
            amount: int

        @dataclass(frozen=True)
        class Closed(Event):   # no fields: a unit variant, written "Closed"
            pass

    Class keywords of a variant: ``name=`` (the wire name, default the class
    name), ``aliases=`` (older names that still decode, for renames),
    ``shape=`` (``"newtype"`` for ``Name(inner)`` with exactly one field,
    ``"tuple"`` for ``Name(a, b)``, ``"struct"`` to force a struct shape on a
    variant without fields; by default a variant with fields is a struct
    variant and one without is a unit variant), ``legacy=True`` for a shape
    kept only so old events decode (an upcast must convert it).
    """

    __cairn_union__: ClassVar[type]
    __cairn_variants__: ClassVar[dict[str, type]]
    __cairn_name__: ClassVar[str]
    __cairn_shape__: ClassVar[str]
    __cairn_legacy__: ClassVar[bool]

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        aliases: tuple[str, ...] = (),
        shape: str = "auto",
        legacy: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if TaggedUnion in cls.__bases__:
            # The union itself.
            cls.__cairn_union__ = cls
            cls.__cairn_variants__ = {}
            return
        if shape not in ("auto", "unit", "struct", "newtype", "tuple"):
            raise TypeError(f"{cls.__name__}: unknown variant shape {shape!r}")
        union = cls.__cairn_union__
        if any(
            issubclass(b, TaggedUnion) and b is not union and b is not TaggedUnion
            for b in cls.__mro__[1:]
            if b is not cls
        ):
            raise TypeError(f"{cls.__name__}: a variant cannot subclass another variant")
        cls.__cairn_name__ = name or cls.__name__
        cls.__cairn_shape__ = shape
        cls.__cairn_legacy__ = legacy
        for n in (cls.__cairn_name__, *aliases):
            if n in union.__cairn_variants__:
                raise TypeError(f"{union.__name__}: two variants are named {n!r}")
            union.__cairn_variants__[n] = cls

    @classmethod
    def variants(cls) -> list[type]:
        """The union's variant classes, in declaration order (aliases excluded)."""
        seen: list[type] = []
        for v in cls.__cairn_union__.__cairn_variants__.values():
            if v not in seen:
                seen.append(v)
        return seen


# --------------------------------------------------------------------------
# Plans: what the codec knows about a dataclass or a variant
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Field:
    name: str
    tp: Any
    key: bytes  # the encoded field name
    aliases: tuple[str, ...]
    has_default: bool
    optional: bool


@dataclasses.dataclass
class _Plan:
    cls: type
    fields: list[_Field]
    by_name: dict[str, _Field]
    shape: str  # "struct" | "unit" | "newtype" | "tuple" (variants); "struct" otherwise
    tag: bytes  # encoded variant name (variants only)


_plans: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    plan = _plans.get(cls)
    if plan is not None:
        return plan
    if not dataclasses.is_dataclass(cls):
        raise CodecError(f"{cls.__name__} is not a dataclass")
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except NameError as e:
        # String annotations naming something not at module level.
        hints = {}
        for f in dataclasses.fields(cls):
            if isinstance(f.type, str):
                raise CodecError(
                    f"cannot resolve the annotation {f.type!r} of {cls.__name__}.{f.name} "
                    f"({e}): declare the types it names at module level"
                ) from None
            hints[f.name] = f.type
    fields = []
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, Any)
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        fields.append(
            _Field(
                name=f.name,
                tp=tp,
                key=_encode_str(f.name),
                aliases=tuple(f.metadata.get("cairn_aliases", ())),
                has_default=has_default,
                optional=_is_optional(tp),
            )
        )
    by_name: dict[str, _Field] = {}
    for f in fields:
        for n in (f.name, *f.aliases):
            by_name[n] = f
    shape = "struct"
    tag = b""
    if isinstance(cls, type) and issubclass(cls, TaggedUnion) and hasattr(cls, "__cairn_name__"):
        shape = cls.__cairn_shape__
        if shape == "auto":
            shape = "struct" if fields else "unit"
        if shape == "unit" and fields:
            raise CodecError(f"unit variant {cls.__name__} has fields")
        if shape == "newtype" and len(fields) != 1:
            raise CodecError(f"newtype variant {cls.__name__} must have exactly one field")
        tag = _encode_str(cls.__cairn_name__)
    plan = _Plan(cls, fields, by_name, shape, tag)
    _plans[cls] = plan
    return plan


def _is_optional(tp: Any) -> bool:
    tp = _strip(tp)[0]
    origin = typing.get_origin(tp)
    return (origin is Union or origin is types.UnionType) and type(None) in typing.get_args(tp)


def _strip(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """(base type, annotations) of an ``Annotated``/``NewType`` type."""
    extras: tuple[Any, ...] = ()
    while True:
        if typing.get_origin(tp) is Annotated:
            extras += tp.__metadata__
            tp = tp.__origin__
        elif isinstance(tp, typing.NewType):
            tp = tp.__supertype__
        else:
            return tp, extras


def _is_variant_class(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, TaggedUnion) and hasattr(tp, "__cairn_name__")


def _is_union_base(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, TaggedUnion) and "__cairn_variants__" in tp.__dict__


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def _encode_str(s: str) -> bytes:
    b = s.encode("utf-8")
    n = len(b)
    if n < 32:
        return bytes((0xA0 | n,)) + b
    if n < 0x100:
        return bytes((0xD9, n)) + b
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big") + b
    if n < 0x100000000:
        return b"\xdb" + n.to_bytes(4, "big") + b
    raise CodecError("string too long")


def _int(out: bytearray, v: int) -> None:
    if v >= 0:
        if v < 0x80:
            out.append(v)
        elif v < 0x100:
            out += bytes((0xCC, v))
        elif v < 0x10000:
            out += b"\xcd" + v.to_bytes(2, "big")
        elif v < 0x100000000:
            out += b"\xce" + v.to_bytes(4, "big")
        elif v <= _INT_MAX:
            out += b"\xcf" + v.to_bytes(8, "big")
        else:
            raise CodecError(f"integer {v} does not fit in 64 bits")
    elif v >= -32:
        out.append(v & 0xFF)
    elif v >= -0x80:
        out += b"\xd0" + v.to_bytes(1, "big", signed=True)
    elif v >= -0x8000:
        out += b"\xd1" + v.to_bytes(2, "big", signed=True)
    elif v >= -0x80000000:
        out += b"\xd2" + v.to_bytes(4, "big", signed=True)
    elif v >= _INT_MIN:
        out += b"\xd3" + v.to_bytes(8, "big", signed=True)
    else:
        raise CodecError(f"integer {v} does not fit in 64 bits")


def _len(out: bytearray, n: int, fix: int, fix_max: int, m16: int, m32: int) -> None:
    if n <= fix_max:
        out.append(fix | n)
    elif n < 0x10000:
        out.append(m16)
        out += n.to_bytes(2, "big")
    elif n < 0x100000000:
        out.append(m32)
        out += n.to_bytes(4, "big")
    else:
        raise CodecError("collection too long")


def _array_len(out: bytearray, n: int) -> None:
    _len(out, n, 0x90, 15, 0xDC, 0xDD)


def _map_len(out: bytearray, n: int) -> None:
    _len(out, n, 0x80, 15, 0xDE, 0xDF)


def _type_args(tp: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
    base, extras = _strip(tp)
    return base, extras, typing.get_args(base)


def _union_alternative(v: Any, tp: Any) -> Any:
    """The alternative of a ``Union`` type hint that ``v`` is an instance of."""
    for alt in typing.get_args(tp):
        a = _strip(alt)[0]
        o = typing.get_origin(a) or a
        if a is Any:
            return alt
        if a is type(None):
            if v is None:
                return alt
            continue
        if isinstance(o, type):
            if o is float and isinstance(v, int) and not isinstance(v, bool):
                continue
            if o is int and isinstance(v, bool):
                continue
            if isinstance(v, o):
                return alt
    return None


def _enc(out: bytearray, v: Any, tp: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise CodecError("value nested too deeply")
    base, extras = _strip(tp) if tp is not None else (None, ())
    origin = typing.get_origin(base)
    if origin is Union or origin is types.UnionType:
        alt = _union_alternative(v, base)
        _enc(out, v, alt, depth)
        return
    if v is None:
        out.append(0xC0)
    elif v is True:
        out.append(0xC3)
    elif v is False:
        out.append(0xC2)
    elif isinstance(v, enum.Enum):
        out += _encode_str(v.name)
    elif isinstance(v, int):
        if base is float:
            _float(out, float(v), extras)
            return
        for e in extras:
            if isinstance(e, IntRange) and not e.lo <= v <= e.hi:
                raise CodecError(f"integer {v} out of range for {e.name}")
        _int(out, v)
    elif isinstance(v, float):
        _float(out, v, extras)
    elif isinstance(v, str):
        out += _encode_str(v)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        n = len(b)
        if n < 0x100:
            out += bytes((0xC4, n))
        elif n < 0x10000:
            out += b"\xc5" + n.to_bytes(2, "big")
        else:
            out += b"\xc6" + n.to_bytes(4, "big")
        out += b
    elif isinstance(v, UnitStruct):
        out.append(0x90)
    elif dataclasses.is_dataclass(v) and not isinstance(v, type):
        plan = _plan(type(v))
        if plan.tag:
            if plan.shape == "unit":
                out += plan.tag
                return
            out.append(0x81)
            out += plan.tag
            if plan.shape == "newtype":
                f = plan.fields[0]
                _enc(out, getattr(v, f.name), f.tp, depth + 1)
                return
            if plan.shape == "tuple":
                _array_len(out, len(plan.fields))
                for f in plan.fields:
                    _enc(out, getattr(v, f.name), f.tp, depth + 1)
                return
        _map_len(out, len(plan.fields))
        for f in plan.fields:
            out += f.key
            _enc(out, getattr(v, f.name), f.tp, depth + 1)
    elif isinstance(v, (list, tuple)):
        args = typing.get_args(base) if base is not None else ()
        _array_len(out, len(v))
        if isinstance(v, tuple) and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(v) and args != ((),):
                raise CodecError(f"tuple of {len(v)} for {len(args)} types")
            for x, t in zip(v, args):
                _enc(out, x, t, depth + 1)
        else:
            t = args[0] if args else None
            for x in v:
                _enc(out, x, t, depth + 1)
    elif isinstance(v, dict):
        args = typing.get_args(base) if base is not None else ()
        kt, vt = args if len(args) == 2 else (None, None)
        _map_len(out, len(v))
        for k, x in v.items():
            _enc(out, k, kt, depth + 1)
            _enc(out, x, vt, depth + 1)
    else:
        raise CodecError(f"cannot encode a {type(v).__name__}")


def _float(out: bytearray, v: float, extras: tuple[Any, ...]) -> None:
    if any(isinstance(e, _Float32) for e in extras):
        out += b"\xca" + struct.pack(">f", v)
    else:
        out += b"\xcb" + struct.pack(">d", v)


def encode(value: Any, tp: Any = None) -> bytes:
    """Encodes ``value``; ``tp`` (optional) is its type, for range checks and
    ``F32``/``float`` fields given an ``int`` (dataclass fields use their own
    annotations)."""
    out = bytearray()
    try:
        _encoder(tp)(out, value, 0)
    except RecursionError:
        raise CodecError("value nested too deeply") from None
    return bytes(out)


# --------------------------------------------------------------------------
# Parsing MessagePack into plain values
# --------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data).tobytes() if not isinstance(data, bytes) else data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise CodecError("unexpected end of input")
        b = self.data[self.pos : end]
        self.pos = end
        return b

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def value(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise CodecError("depth limit exceeded")
        if self.pos >= len(self.data):
            raise CodecError("unexpected end of input")
        m = self.data[self.pos]
        self.pos += 1
        if m < 0x80:
            return m
        if m >= 0xE0:
            return m - 0x100
        if 0xA0 <= m <= 0xBF:
            return self.str(m & 0x1F)
        if 0x90 <= m <= 0x9F:
            return self.array(m & 0x0F, depth)
        if 0x80 <= m <= 0x8F:
            return self.map(m & 0x0F, depth)
        if m == 0xC0:
            return None
        if m == 0xC2:
            return False
        if m == 0xC3:
            return True
        if m == 0xCC:
            return self.uint(1)
        if m == 0xCD:
            return self.uint(2)
        if m == 0xCE:
            return self.uint(4)
        if m == 0xCF:
            return self.uint(8)
        if 0xD0 <= m <= 0xD3:
            return int.from_bytes(self.take(1 << (m - 0xD0)), "big", signed=True)
        if m == 0xCA:
            return struct.unpack(">f", self.take(4))[0]
        if m == 0xCB:
            return struct.unpack(">d", self.take(8))[0]
        if m == 0xD9:
            return self.str(self.uint(1))
        if m == 0xDA:
            return self.str(self.uint(2))
        if m == 0xDB:
            return self.str(self.uint(4))
        if 0xC4 <= m <= 0xC6:
            return self.take(self.uint(1 << (m - 0xC4)))
        if m == 0xDC:
            return self.array(self.uint(2), depth)
        if m == 0xDD:
            return self.array(self.uint(4), depth)
        if m == 0xDE:
            return self.map(self.uint(2), depth)
        if m == 0xDF:
            return self.map(self.uint(4), depth)
        if 0xD4 <= m <= 0xD8 or 0xC7 <= m <= 0xC9:
            raise CodecError(f"MessagePack extension types are not part of the codec (marker 0x{m:02x})")
        raise CodecError(f"invalid MessagePack marker 0x{m:02x}")

    def str(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CodecError(f"invalid UTF-8 in a string: {e}") from None

    def array(self, n: int, depth: int) -> list[Any]:
        if n > len(self.data) - self.pos:
            raise CodecError("unexpected end of input")
        return [self.value(depth + 1) for _ in range(n)]

    def map(self, n: int, depth: int) -> _Map:
        if 2 * n > len(self.data) - self.pos:
            raise CodecError("unexpected end of input")
        m = _Map()
        for _ in range(n):
            k = self.value(depth + 1)
            v = self.value(depth + 1)
            try:
                m[k] = v
                m.pairs.append((k, v))
            except TypeError:
                m.pairs.append((k, v))
        return m


class _Map(dict):  # type: ignore[type-arg]
    """A parsed map: a dict that also keeps every pair (unhashable keys, duplicates)."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[Any, Any]] = []


# --------------------------------------------------------------------------
# Plain values → typed values (shared by MessagePack and JSON decoding)
# --------------------------------------------------------------------------


def _what(raw: Any) -> str:
    if raw is None:
        return "nil"
    if isinstance(raw, bool):
        return f"boolean `{str(raw).lower()}`"
    if isinstance(raw, int):
        return f"integer `{raw}`"
    if isinstance(raw, float):
        return f"floating point `{raw}`"
    if isinstance(raw, str):
        return f"string {raw!r}"
    if isinstance(raw, bytes):
        return "bytes"
    if isinstance(raw, list):
        return "sequence"
    if isinstance(raw, dict):
        return "map"
    return type(raw).__name__


def _pairs(raw: dict[Any, Any]) -> list[tuple[Any, Any]]:
    return raw.pairs if isinstance(raw, _Map) else list(raw.items())


def _convert(raw: Any, tp: Any, json_src: bool, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise CodecError("depth limit exceeded")
    base, extras = _strip(tp)
    if base is Any or base is object:
        return _plain(raw)
    origin = typing.get_origin(base)
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(base)
        if raw is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _convert(raw, rest[0], json_src, depth)
        # An untagged union: the first alternative that decodes.
        for a in rest:
            try:
                return _convert(raw, a, json_src, depth)
            except CodecError:
                continue
        raise CodecError(f"{_what(raw)} did not match any variant of {_type_name(base)}")
    if base is type(None) or base is None:
        if raw is None:
            return None
        raise CodecError(f"invalid type: {_what(raw)}, expected unit")
    if base is bool:
        if isinstance(raw, bool):
            return raw
        raise CodecError(f"invalid type: {_what(raw)}, expected a boolean")
    if base is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            for e in extras:
                if isinstance(e, IntRange) and not e.lo <= raw <= e.hi:
                    raise CodecError(f"invalid value: integer `{raw}`, expected {e.name}")
            return raw
        raise CodecError(f"invalid type: {_what(raw)}, expected an integer")
    if base is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            if any(isinstance(e, _Float32) for e in extras):
                try:
                    return struct.unpack(">f", struct.pack(">f", float(raw)))[0]
                except OverflowError:
                    raise CodecError(f"invalid value: {raw}, expected f32") from None
            return float(raw)
        raise CodecError(f"invalid type: {_what(raw)}, expected a float")
    if base is str:
        if isinstance(raw, str):
            return raw
        raise CodecError(f"invalid type: {_what(raw)}, expected a string")
    if base is bytes:
        if isinstance(raw, bytes):
            return raw
        if isinstance(raw, list) and all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 256 for x in raw
        ):
            return bytes(raw)
        raise CodecError(f"invalid type: {_what(raw)}, expected bytes")
    if origin in (list, tuple) or base in (list, tuple):
        args = typing.get_args(base)
        if not isinstance(raw, list):
            raise CodecError(f"invalid type: {_what(raw)}, expected a sequence")
        if (origin or base) is list:
            t = args[0] if args else Any
            return [_convert(x, t, json_src, depth + 1) for x in raw]
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            t = args[0] if args else Any
            return tuple(_convert(x, t, json_src, depth + 1) for x in raw)
        if args == ((),):
            args = ()
        if len(raw) != len(args):
            raise CodecError(f"invalid length {len(raw)}, expected a tuple of {len(args)}")
        return tuple(_convert(x, t, json_src, depth + 1) for x, t in zip(raw, args))
    if origin is dict or base is dict:
        args = typing.get_args(base)
        kt, vt = args if len(args) == 2 else (Any, Any)
        if not isinstance(raw, dict):
            raise CodecError(f"invalid type: {_what(raw)}, expected a map")
        out = {}
        for k, v in _pairs(raw):
            if json_src and isinstance(k, str) and _strip(kt)[0] is int:
                try:
                    k = int(k)
                except ValueError:
                    raise CodecError(f"invalid map key {k!r}, expected an integer") from None
            out[_convert(k, kt, json_src, depth + 1)] = _convert(v, vt, json_src, depth + 1)
        return out
    if isinstance(base, type):
        if issubclass(base, enum.Enum):
            name = _variant_name(raw, base.__name__)
            if name[1] is not None:
                raise CodecError(f"invalid type: {_what(name[1])}, expected unit variant {name[0]}")
            try:
                return base[name[0]]
            except KeyError:
                raise CodecError(
                    f"unknown variant `{name[0]}`, expected one of "
                    + ", ".join(f"`{m.name}`" for m in base)
                ) from None
        if issubclass(base, UnitStruct):
            if raw is None or raw == []:
                return base()
            raise CodecError(f"invalid type: {_what(raw)}, expected unit struct {base.__name__}")
        if _is_union_base(base):
            return _variant(raw, base, json_src, depth)
        if _is_variant_class(base):
            v = _variant(raw, base.__cairn_union__, json_src, depth)
            if not isinstance(v, base):
                raise CodecError(f"expected variant {base.__cairn_name__}, got {type(v).__name__}")
            return v
        if dataclasses.is_dataclass(base):
            return _struct(raw, _plan(base), json_src, depth)
    raise CodecError(f"the codec does not support the type {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def _variant_name(raw: Any, union: str) -> tuple[str, Any]:
    """(name, payload) of an externally tagged value; payload ``None`` for a unit."""
    if isinstance(raw, str):
        return raw, None
    if isinstance(raw, dict):
        pairs = _pairs(raw)
        if len(pairs) != 1:
            raise CodecError(f"invalid length {len(pairs)}, expected a one-entry map for enum {union}")
        k, v = pairs[0]
        if not isinstance(k, str):
            raise CodecError(f"invalid type: {_what(k)}, expected a variant name of {union}")
        return k, v
    raise CodecError(f"invalid type: {_what(raw)}, expected enum {union}")


def _variant(raw: Any, union: type, json_src: bool, depth: int) -> Any:
    name, payload = _variant_name(raw, union.__name__)
    cls = union.__cairn_variants__.get(name)
    if cls is None:
        names = ", ".join(f"`{v.__cairn_name__}`" for v in union.variants())
        raise CodecError(f"unknown variant `{name}`, expected one of {names}")
    plan = _plan(cls)
    unit = isinstance(raw, str)
    if plan.shape == "unit":
        if payload is not None:
            raise CodecError(f"invalid type: {_what(payload)}, expected unit variant {name}")
        return cls()
    if unit:
        raise CodecError(f"invalid type: unit variant, expected {plan.shape} variant {name}")
    if plan.shape == "newtype":
        f = plan.fields[0]
        return cls(**{f.name: _convert(payload, f.tp, json_src, depth + 1)})
    if plan.shape == "tuple":
        if not isinstance(payload, list):
            raise CodecError(f"invalid type: {_what(payload)}, expected tuple variant {name}")
        if len(payload) != len(plan.fields):
            raise CodecError(
                f"invalid length {len(payload)}, expected tuple variant {name} with {len(plan.fields)} elements"
            )
        return cls(
            **{f.name: _convert(x, f.tp, json_src, depth + 1) for f, x in zip(plan.fields, payload)}
        )
    return _struct(payload, plan, json_src, depth + 1)


def _struct(raw: Any, plan: _Plan, json_src: bool, depth: int) -> Any:
    values: dict[str, Any] = {}
    if isinstance(raw, dict):
        for k, v in _pairs(raw):
            f = plan.by_name.get(k) if isinstance(k, str) else None
            if f is None:
                continue  # unknown field: skipped
            if f.name in values:
                raise CodecError(f"duplicate field `{f.name}`")
            values[f.name] = _convert(v, f.tp, json_src, depth + 1)
    elif isinstance(raw, list) and not json_src:
        # A struct written as an array of its fields (rmp-serde accepts it).
        if len(raw) > len(plan.fields):
            raise CodecError(
                f"invalid length {len(raw)}, expected struct {plan.cls.__name__} with {len(plan.fields)} elements"
            )
        for f, v in zip(plan.fields, raw):
            values[f.name] = _convert(v, f.tp, json_src, depth + 1)
    else:
        raise CodecError(f"invalid type: {_what(raw)}, expected struct {plan.cls.__name__}")
    for f in plan.fields:
        if f.name not in values and not f.has_default:
            if f.optional:
                values[f.name] = None
            else:
                raise CodecError(f"missing field `{f.name}`")
    try:
        return plan.cls(**values)
    except (TypeError, ValueError) as e:
        raise CodecError(f"cannot build {plan.cls.__name__}: {e}") from None


def _plain(raw: Any) -> Any:
    if isinstance(raw, _Map):
        try:
            return {k: _plain(v) for k, v in raw.pairs}
        except TypeError:
            raise CodecError("a map key is not hashable") from None
    if isinstance(raw, list):
        return [_plain(x) for x in raw]
    return raw


def decode(data: bytes, tp: Any = Any) -> Any:
    """Decodes ``data`` as a ``tp`` (``Any``: plain dicts, lists and scalars).

    Bytes after the value are ignored, as the Rust decoder does.
    """
    if type(data) is not bytes:
        data = memoryview(data).tobytes()
    try:
        return _decoder(tp)(data, 0, 0)[0]
    except Exception:  # noqa: BLE001 - the general path below decides
        pass
    try:
        raw = _Reader(data).value()
        return _convert(raw, tp, False)
    except RecursionError:
        raise CodecError("depth limit exceeded") from None


# --------------------------------------------------------------------------
# Compiled paths: an encoder and a decoder built once per type
# --------------------------------------------------------------------------
#
# The functions above interpret a type annotation on every value
# (``typing.get_origin``, ``_strip``, ``isinstance`` chains). A behavior
# encodes and decodes the same few types over and over, so :func:`encode`
# and :func:`decode` first build, once per type, a function specialised to
# it, and keep it. These cover the common shapes exactly; for anything else
# they hand the value (or the rest of the bytes) to the general functions:
#
# - an encoder ``enc(out, v, depth)`` checks the value's exact type and
#   passes any value it does not expect to :func:`_enc`, which then decides
#   (and raises the same errors);
# - a decoder ``dec(data, pos, depth) -> (value, pos)`` reads the bytes
#   directly into the typed value; it raises on anything unusual (a struct
#   written as an array, a duplicate or missing field, a float where an
#   integer was expected, truncated bytes, ...), and :func:`decode` then
#   decodes the whole value again with the general path, which gives the
#   value or the exact error. Types with no specialised decoder (floats,
#   tuples, maps, bytes, enums, untagged unions, ...) read their bytes into
#   plain values and convert them with :func:`_convert`, as before.

_Encoder = typing.Callable[[bytearray, Any, int], None]
_Decoder = typing.Callable[[bytes, int, int], "tuple[Any, int]"]

#: Past this depth the decoders give up and the general path decides (it
#: enforces ``_MAX_DEPTH`` with its own error).
_FAST_DEPTH = 128


class _Unusual(Exception):
    """Raised by a compiled decoder for bytes it leaves to the general path."""


_encoders: dict[Any, _Encoder] = {}
_class_encoders: dict[type, _Encoder | None] = {}
_decoders: dict[Any, _Decoder] = {}


class TypeCodec:
    """:func:`encode` and :func:`decode` for one type, with its compiled
    paths looked up once (the bridge keeps one per type of a behavior)."""

    __slots__ = ("tp", "_encode", "_decode")

    def __init__(self, tp: Any = Any) -> None:
        self.tp = tp
        self._encode = _encoder(tp)
        self._decode = _decoder(tp)

    def encode(self, value: Any) -> bytes:
        """:func:`encode` ``value`` as a ``tp``."""
        out = bytearray()
        try:
            self._encode(out, value, 0)
        except RecursionError:
            raise CodecError("value nested too deeply") from None
        return bytes(out)

    def decode(self, data: bytes) -> Any:
        """:func:`decode` ``data`` as a ``tp``."""
        if type(data) is bytes:
            try:
                return self._decode(data, 0, 0)[0]
            except Exception:  # noqa: BLE001 - the general path decides
                pass
        return decode(data, self.tp)


def _generic_encoder(tp: Any) -> _Encoder:
    def enc(out: bytearray, v: Any, depth: int) -> None:
        _enc(out, v, tp, depth)

    return enc


def _encoder(tp: Any) -> _Encoder:
    """The encoder of values declared as ``tp`` (built on first use)."""
    try:
        found = _encoders.get(tp)
    except TypeError:  # an unhashable annotation
        return _generic_encoder(tp)
    if found is None:
        found = _encoders[tp] = _build_encoder(tp)
    return found


def _build_encoder(tp: Any) -> _Encoder:
    if tp is None:
        return _generic_encoder(tp)
    base, extras = _strip(tp)
    origin = typing.get_origin(base)
    if origin is Union or origin is types.UnionType:
        # The alternative depends only on the value's type (see
        # _union_alternative): remember it per type.
        alternatives: dict[type, _Encoder] = {}

        def enc_union(out: bytearray, v: Any, depth: int) -> None:
            e = alternatives.get(type(v))
            if e is None:
                e = alternatives[type(v)] = _encoder(_union_alternative(v, base))
            e(out, v, depth)

        return enc_union
    if any(isinstance(e, _Float32) for e in extras) or base is float:
        return _generic_encoder(tp)
    if base is int:
        lo, hi = _INT_MIN, _INT_MAX
        for e in extras:
            if isinstance(e, IntRange):
                lo, hi = max(lo, e.lo), min(hi, e.hi)

        def enc_int(out: bytearray, v: Any, depth: int) -> None:
            if type(v) is int and lo <= v <= hi:
                if 0 <= v < 0x80:
                    out.append(v)
                else:
                    _int(out, v)
            else:
                _enc(out, v, tp, depth)

        return enc_int
    if base is str:

        def enc_str(out: bytearray, v: Any, depth: int) -> None:
            if type(v) is str:
                b = v.encode("utf-8")
                n = len(b)
                if n < 32:
                    out.append(0xA0 | n)
                    out += b
                else:
                    out += _encode_str(v)
            else:
                _enc(out, v, tp, depth)

        return enc_str
    if base is list or origin is list:
        args = typing.get_args(base)
        item = _encoder(args[0] if args else None)

        def enc_list(out: bytearray, v: Any, depth: int) -> None:
            if type(v) is not list or depth >= _MAX_DEPTH:
                _enc(out, v, tp, depth)
                return
            _array_len(out, len(v))
            for x in v:
                item(out, x, depth + 1)

        return enc_list
    if isinstance(base, type) and not extras:
        # A dataclass, a variant or a union of variants: the value's own
        # class decides its encoding (as in _enc).
        def enc_class(out: bytearray, v: Any, depth: int) -> None:
            cls = type(v)
            try:
                e = _class_encoders[cls]
            except KeyError:
                e = _class_encoders[cls] = _build_class_encoder(cls)
            if e is None:
                _enc(out, v, tp, depth)
            else:
                e(out, v, depth)

        return enc_class
    return _generic_encoder(tp)


def _build_class_encoder(cls: type) -> _Encoder | None:
    """The encoder of instances of exactly ``cls`` when it is a plain
    dataclass or a variant; ``None`` for anything :func:`_enc` treats
    otherwise."""
    if not dataclasses.is_dataclass(cls) or issubclass(
        cls, (enum.Enum, int, float, str, bytes, bytearray, memoryview, UnitStruct, list, tuple, dict)
    ):
        return None
    plan = _plan(cls)
    if plan.shape == "unit" and plan.tag:
        tag = plan.tag

        def enc_unit(out: bytearray, v: Any, depth: int) -> None:
            if depth > _MAX_DEPTH:
                raise CodecError("value nested too deeply")
            out += tag

        return enc_unit
    head = bytearray()
    if plan.tag:
        head.append(0x81)
        head += plan.tag
    if plan.shape == "tuple":
        _array_len(head, len(plan.fields))
    elif plan.shape != "newtype":
        _map_len(head, len(plan.fields))
    prefix = bytes(head)
    # (encoded key or b"" for newtype and tuple shapes, attribute, encoder)
    keyed = plan.shape not in ("newtype", "tuple")
    fields = [(f.key if keyed else b"", f.name, _encoder(f.tp)) for f in plan.fields]

    def enc_fields(out: bytearray, v: Any, depth: int) -> None:
        if depth >= _MAX_DEPTH:
            _enc(out, v, cls, depth)  # the general path raises at its limit
            return
        out += prefix
        d = depth + 1
        for key, name, e in fields:
            out += key
            e(out, getattr(v, name), d)

    return enc_fields


def _decoder(tp: Any) -> _Decoder:
    """The decoder of values declared as ``tp`` (built on first use)."""
    try:
        found = _decoders.get(tp)
    except TypeError:  # an unhashable annotation
        return _raw_decoder(tp)
    if found is None:
        # Registered before it is built, so a recursive type finds itself.
        slot: list[_Decoder] = []

        def lazy(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
            return slot[0](data, pos, depth)

        _decoders[tp] = lazy
        built = _build_decoder(tp)
        slot.append(built)
        found = _decoders[tp] = built
    return found


def _raw_decoder(tp: Any) -> _Decoder:
    """Reads one value into plain values, then converts it (the general path)."""

    def dec(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
        r = _Reader(data)
        r.pos = pos
        raw = r.value(depth)
        return _convert(raw, tp, False, depth), r.pos

    return dec


def _read_int(data: bytes, pos: int) -> tuple[int, int]:
    m = data[pos]
    pos += 1
    if m < 0x80:
        return m, pos
    if m >= 0xE0:
        return m - 0x100, pos
    if 0xCC <= m <= 0xD3:
        signed = m >= 0xD0
        n = 1 << ((m - 0xD0) if signed else (m - 0xCC))
        end = pos + n
        if end > len(data):
            raise _Unusual
        return int.from_bytes(data[pos:end], "big", signed=signed), end
    raise _Unusual


def _read_str(data: bytes, pos: int) -> tuple[str, int]:
    m = data[pos]
    pos += 1
    if 0xA0 <= m <= 0xBF:
        n = m & 0x1F
    elif m == 0xD9:
        n = data[pos]
        pos += 1
    elif m == 0xDA or m == 0xDB:
        w = 2 if m == 0xDA else 4
        n = int.from_bytes(data[pos : pos + w], "big")
        pos += w
    else:
        raise _Unusual
    end = pos + n
    if end > len(data):
        raise _Unusual
    return data[pos:end].decode("utf-8"), end


def _read_len(data: bytes, pos: int, fix: int, m16: int) -> tuple[int, int]:
    """(length, position after the header) of an array (``fix`` 0x90,
    ``m16`` 0xDC) or a map (0x80, 0xDE)."""
    m = data[pos]
    if fix <= m <= fix + 0x0F:
        return m & 0x0F, pos + 1
    if m == m16 or m == m16 + 1:
        end = pos + (3 if m == m16 else 5)
        if end > len(data):
            raise _Unusual  # a truncated length
        return int.from_bytes(data[pos + 1 : end], "big"), end
    raise _Unusual


def _skip(data: bytes, pos: int, depth: int) -> int:
    """The position after one value (checked as the general reader checks it)."""
    r = _Reader(data)
    r.pos = pos
    r.value(depth)
    return r.pos


def _build_decoder(tp: Any) -> _Decoder:
    base, extras = _strip(tp)
    origin = typing.get_origin(base)
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(base)
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            # An untagged union: the first alternative that decodes wins,
            # which only the general path decides exactly.
            return _raw_decoder(tp)
        inner = _decoder(rest[0])
        nullable = len(rest) != len(args)

        def dec_option(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
            if nullable and data[pos] == 0xC0:
                return None, pos + 1
            return inner(data, pos, depth)

        return dec_option
    if base is int and all(isinstance(e, IntRange) for e in extras):
        lo, hi = _INT_MIN, _INT_MAX
        for e in extras:
            lo, hi = max(lo, e.lo), min(hi, e.hi)

        def dec_int(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
            m = data[pos]
            if m < 0x80:
                v, pos = m, pos + 1
            else:
                v, pos = _read_int(data, pos)
            if not lo <= v <= hi:
                raise _Unusual
            return v, pos

        return dec_int
    if base is str and not extras:

        def dec_str(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
            return _read_str(data, pos)

        return dec_str
    if base is bool and not extras:

        def dec_bool(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
            m = data[pos]
            if m == 0xC3:
                return True, pos + 1
            if m == 0xC2:
                return False, pos + 1
            raise _Unusual

        return dec_bool
    if (base is list or origin is list) and not extras:
        args = typing.get_args(base)
        item = _decoder(args[0] if args else Any)

        def dec_list(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
            if depth > _FAST_DEPTH:
                raise _Unusual
            n, pos = _read_len(data, pos, 0x90, 0xDC)
            out = []
            d = depth + 1
            for _ in range(n):
                x, pos = item(data, pos, d)
                out.append(x)
            return out, pos

        return dec_list
    if isinstance(base, type) and not extras:
        if _is_union_base(base):
            return _union_decoder(base, None)
        if _is_variant_class(base):
            return _union_decoder(base.__cairn_union__, base)
        if (
            dataclasses.is_dataclass(base)
            and not issubclass(base, (enum.Enum, UnitStruct))
        ):
            return _struct_decoder(_plan(base))
    return _raw_decoder(tp)


def _struct_decoder(plan: _Plan) -> _Decoder:
    """A struct written as a map of field names (the only form the fast
    path reads; an array of fields goes to the general path)."""
    cls = plan.cls
    by_name = {n: (f.name, _decoder(f.tp)) for n, f in plan.by_name.items()}
    # Fields to fill in when absent: the dataclass defaults apply by
    # themselves; an optional field without a default gets None.
    absent = [(f.name, f.has_default, f.optional) for f in plan.fields]
    count = len(plan.fields)

    # The usual bytes: every field, in declaration order (as encoded here
    # and by the Rust SDK), each key compared as encoded bytes; the values
    # then go to the constructor by position (when every field is an
    # __init__ parameter, in order).
    in_order = [(f.key, len(f.key), _decoder(f.tp)) for f in plan.fields]
    positional = all(f.init for f in dataclasses.fields(cls))
    names = [f.name for f in plan.fields]

    def dec_struct(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
        if depth > _FAST_DEPTH:
            raise _Unusual
        start = pos
        n, pos = _read_len(data, pos, 0x80, 0xDE)
        d = depth + 1
        if n == count:
            args = []
            for key, size, dec in in_order:
                if data[pos : pos + size] != key:
                    break
                v, pos = dec(data, pos + size, d)
                args.append(v)
            else:
                if positional:
                    return cls(*args), pos
                return cls(**dict(zip(names, args))), pos
            n, pos = _read_len(data, start, 0x80, 0xDE)
        values: dict[str, Any] = {}
        for _ in range(n):
            k, pos = _read_str(data, pos)
            f = by_name.get(k)
            if f is None:
                pos = _skip(data, pos, d)  # an unknown field
                continue
            name, dec = f
            if name in values:
                raise _Unusual  # a duplicate: the general path's error
            values[name], pos = dec(data, pos, d)
        if len(values) != count:
            for name, has_default, optional in absent:
                if name not in values and not has_default:
                    if not optional:
                        raise _Unusual  # missing: the general path's error
                    values[name] = None
        return cls(**values), pos

    return dec_struct


def _union_decoder(union: type, only: type | None) -> _Decoder:
    """A tagged union's values (``only``: a variant class, which the value
    must be an instance of)."""
    variants = union.__cairn_variants__
    # Per wire name: (class, shape, decoder of the payload).
    cache: dict[str, tuple[type, str, _Decoder | None]] = {}

    def variant(name: str) -> tuple[type, str, _Decoder | None]:
        found = cache.get(name)
        if found is None:
            cls = variants.get(name)
            if cls is None:
                raise _Unusual  # an unknown variant: the general path's error
            plan = _plan(cls)
            payload: _Decoder | None = None
            if plan.shape == "struct":
                payload = _struct_decoder(plan)
            elif plan.shape == "newtype":
                f = plan.fields[0]
                inner = _decoder(f.tp)
                fname = f.name

                def payload(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
                    v, pos = inner(data, pos, depth)
                    return cls(**{fname: v}), pos

            elif plan.shape == "tuple":
                names = [f.name for f in plan.fields]
                decs = [_decoder(f.tp) for f in plan.fields]

                def payload(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
                    n, pos = _read_len(data, pos, 0x90, 0xDC)
                    if n != len(names):
                        raise _Unusual
                    values = {}
                    for name, dec in zip(names, decs):
                        values[name], pos = dec(data, pos, depth)
                    return cls(**values), pos

            found = cache[name] = (cls, plan.shape, payload)
        return found

    def dec_union(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
        if depth > _FAST_DEPTH:
            raise _Unusual
        m = data[pos]
        if m == 0x81:
            name, pos = _read_str(data, pos + 1)
            cls, shape, payload = variant(name)
            if payload is None:
                if shape != "unit" or data[pos] != 0xC0:
                    raise _Unusual
                v, pos = cls(), pos + 1
            else:
                v, pos = payload(data, pos, depth + 1)
        else:
            name, pos = _read_str(data, pos)
            cls, shape, payload = variant(name)
            if shape != "unit":
                raise _Unusual
            v = cls()
        if only is not None and not isinstance(v, only):
            raise _Unusual
        return v, pos

    return dec_union


# --------------------------------------------------------------------------
# JSON, in serde_json's externally tagged shape
# --------------------------------------------------------------------------


def to_json_value(value: Any, tp: Any = None) -> Any:
    """``value`` as plain JSON data in the shape serde_json gives the Rust type."""
    return _jv(value, tp, 0)


def _jv(v: Any, tp: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise CodecError("value nested too deeply")
    base, extras = _strip(tp) if tp is not None else (None, ())
    origin = typing.get_origin(base)
    if origin is Union or origin is types.UnionType:
        return _jv(v, _union_alternative(v, base), depth)
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, enum.Enum):
        return v.name
    if isinstance(v, int):
        if base is float:
            return _JsonFloat(float(v), extras)
        return v
    if isinstance(v, float):
        return _JsonFloat(v, extras)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return list(bytes(v))
    if isinstance(v, UnitStruct):
        return None
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        plan = _plan(type(v))
        if plan.tag:
            name = type(v).__cairn_name__
            if plan.shape == "unit":
                return name
            if plan.shape == "newtype":
                f = plan.fields[0]
                return {name: _jv(getattr(v, f.name), f.tp, depth + 1)}
            if plan.shape == "tuple":
                return {name: [_jv(getattr(v, f.name), f.tp, depth + 1) for f in plan.fields]}
            return {name: {f.name: _jv(getattr(v, f.name), f.tp, depth + 1) for f in plan.fields}}
        return {f.name: _jv(getattr(v, f.name), f.tp, depth + 1) for f in plan.fields}
    if isinstance(v, (list, tuple)):
        args = typing.get_args(base) if base is not None else ()
        if isinstance(v, tuple) and args and not (len(args) == 2 and args[1] is Ellipsis):
            return [_jv(x, t, depth + 1) for x, t in zip(v, args)]
        t = args[0] if args else None
        return [_jv(x, t, depth + 1) for x in v]
    if isinstance(v, dict):
        args = typing.get_args(base) if base is not None else ()
        vt = args[1] if len(args) == 2 else None
        out = {}
        for k, x in v.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise CodecError("JSON map keys must be strings or integers")
            out[str(k)] = _jv(x, vt, depth + 1)
        return out
    raise CodecError(f"cannot convert a {type(v).__name__} to JSON")


class _JsonFloat(float):
    """A float with its width, written the way serde_json (ryu) writes it."""

    def __new__(cls, v: float, extras: tuple[Any, ...] = ()) -> _JsonFloat:
        self = super().__new__(cls, v)
        self.f32 = any(isinstance(e, _Float32) for e in extras)
        return self


def _ryu(v: float, f32: bool) -> str:
    """A finite float as serde_json writes it: ryu's shortest round-trip
    digits, in serde_json's layout (``1e+16``, ``1.5e-7``, ``0.0001``, ``3.0``)."""
    if v == 0:
        return "-0.0" if math.copysign(1.0, v) < 0 else "0.0"
    sign = "-" if v < 0 else ""
    v = abs(v)
    if f32:
        # The fewest significant digits that read back as the same f32.
        for p in range(1, 10):
            s = f"{v:.{p - 1}e}"
            try:
                if struct.unpack(">f", struct.pack(">f", float(s)))[0] == v:
                    break
            except OverflowError:
                continue
    else:
        s = repr(v)
    mant, _, exp = s.partition("e")
    ip, _, fp = mant.partition(".")
    all_digits = ip + fp
    stripped = all_digits.lstrip("0")
    # value = 0.digits * 10^kk
    kk = len(ip) + int(exp or 0) - (len(all_digits) - len(stripped))
    digits = stripped.rstrip("0") or "0"
    n = len(digits)
    k = kk - n
    hi, lo = (13, -6) if f32 else (16, -5)
    if 0 <= k and kk <= hi:
        return sign + digits + "0" * k + ".0"
    if 0 < kk <= hi:
        return sign + digits[:kk] + "." + digits[kk:]
    if lo < kk <= 0:
        return sign + "0." + "0" * (-kk) + digits
    e = f"e+{kk - 1}" if kk > 0 else f"e{kk - 1}"
    if n == 1:
        return f"{sign}{digits}{e}"
    return f"{sign}{digits[0]}.{digits[1:]}{e}"


def _dump(v: Any, out: list[str]) -> None:
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, str):
        out.append(json.dumps(v, ensure_ascii=False))
    elif isinstance(v, float):
        if not math.isfinite(v):
            out.append("null")
        else:
            out.append(_ryu(float(v), getattr(v, "f32", False)))
    elif isinstance(v, int):
        out.append(str(v))
    elif isinstance(v, list):
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(",")
            _dump(x, out)
        out.append("]")
    elif isinstance(v, dict):
        out.append("{")
        for i, (k, x) in enumerate(v.items()):
            if i:
                out.append(",")
            out.append(json.dumps(str(k), ensure_ascii=False))
            out.append(":")
            _dump(x, out)
        out.append("}")
    else:
        raise CodecError(f"cannot write a {type(v).__name__} as JSON")


def to_json(value: Any, tp: Any = None) -> str:
    """``value`` as compact JSON text, character for character what serde_json
    writes for the same Rust value (``{"Withdrawn":{"amount":30}}``)."""
    out: list[str] = []
    _dump(to_json_value(value, tp), out)
    return "".join(out)


def from_json_value(obj: Any, tp: Any) -> Any:
    """Plain JSON data (as ``json.loads`` gives it) → a ``tp``."""
    try:
        return _convert(obj, tp, True)
    except RecursionError:
        raise CodecError("depth limit exceeded") from None


def from_json(text: str, tp: Any) -> Any:
    """JSON text → a ``tp`` (``'{"Deposit":{"amount":100}}'`` → ``Deposit(amount=100)``)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise CodecError(str(e)) from None
    return from_json_value(obj, tp)
