"""Python mirrors of the Rust types in guest-sdk/tests/codec_fixtures.rs."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NewType

import _support  # noqa: F401  (import path)

from cairn_guest.codec import F32, I64, U8, U32, U64, TaggedUnion, UnitStruct


# The bank account, v1.
@dataclass
class State:
    balance: I64 = 0
    transactions: U64 = 0


class Command(TaggedUnion): ...


@dataclass(frozen=True)
class Deposit(Command):
    amount: I64


@dataclass(frozen=True)
class Withdraw(Command):
    amount: I64


@dataclass(frozen=True)
class GetBalance(Command):
    pass


class EventV1(TaggedUnion): ...


@dataclass(frozen=True)
class Deposited(EventV1):
    amount: I64


@dataclass(frozen=True)
class Withdrawn(EventV1):
    amount: I64


Reply = str | I64


# The bank account, v2.
class EventV2(TaggedUnion): ...


@dataclass(frozen=True)
class Credited(EventV2):
    amount: I64
    source: str


@dataclass(frozen=True)
class WithdrawnV2(EventV2, name="Withdrawn"):
    amount: I64
    fee_waived: bool = False


@dataclass(frozen=True)
class FeeCharged(EventV2):
    amount: I64


# Every shape.
class Shape(TaggedUnion): ...


@dataclass(frozen=True)
class Unit(Shape):
    pass


@dataclass(frozen=True)
class Newtype(Shape, shape="newtype"):
    value: U64


@dataclass(frozen=True)
class Tuple(Shape, shape="tuple"):
    a: I64
    b: str


@dataclass(frozen=True)
class Struct(Shape):
    x: I64
    y: str | None


@dataclass
class Optionals:
    a: I64 | None
    b: str | None
    c: list[U8] | None
    d: Shape | None


@dataclass
class Lists:
    empty: list[I64]
    words: list[str]
    bytes: list[U8]
    nested: list[list[I64]]
    sixteen: list[U32]


Meters = NewType("Meters", int)


class Marker(UnitStruct):
    pass


@dataclass
class Scalars:
    yes: bool
    no: bool
    half: float
    single: F32
    letter: str
    unit: None
    pair: tuple[I64, bool]
    meters: Meters
    marker: Marker


@dataclass
class Order:
    zebra: U8
    apple: U8
    mango: U8


def f32(x: float) -> float:
    """``x`` rounded to an f32, as Rust holds it."""
    return struct.unpack(">f", struct.pack(">f", x))[0]


I64_EDGES = [
    0, 1, 127, 128, 255, 256, 65_535, 65_536, 4_294_967_295, 4_294_967_296, 2**63 - 1,
    -1, -32, -33, -128, -129, -32_768, -32_769, -2_147_483_648, -2_147_483_649,
    -(2**63) + 1, -(2**63), -100,
]  # fmt: skip
U64_EDGES = [0, 127, 128, 255, 256, 65_535, 65_536, 4_294_967_296, 2**64 - 1]

#: name → (value, type): every fixture of codec_fixtures.rs.
FIXTURES: dict[str, tuple[object, object]] = {
    "v1_event_deposited": (Deposited(100), EventV1),
    "v1_event_withdrawn": (Withdrawn(30), EventV1),
    "v1_event_deposited_large": (Deposited(1_000_000), EventV1),
    "v1_state_initial": (State(), State),
    "v1_state": (State(120, 3), State),
    "v1_state_negative": (State(-7, 70_000), State),
    "v1_command_deposit": (Deposit(100), Command),
    "v1_command_withdraw": (Withdraw(30), Command),
    "v1_command_withdraw_negative": (Withdraw(-5), Command),
    "v1_command_get_balance": (GetBalance(), Command),
    "v1_reply_ok": ("ok", Reply),
    "v1_reply_insufficient": ("insufficient funds (balance: 120)", Reply),
    "v1_reply_balance": (120, Reply),
    "v1_reply_balance_negative": (-7, Reply),
    "v2_event_credited": (Credited(100, "deposit"), EventV2),
    "v2_event_withdrawn": (WithdrawnV2(30, False), EventV2),
    "v2_event_fee_charged": (FeeCharged(1), EventV2),
    "shape_unit": (Unit(), Shape),
    "shape_newtype": (Newtype(7), Shape),
    "shape_tuple": (Tuple(-1, "x"), Shape),
    "shape_struct": (Struct(300, "y"), Shape),
    "optionals_some": (Optionals(-200, "inner", [1, 2, 255], Struct(1, None)), Optionals),
    "optionals_none": (Optionals(None, None, None, None), Optionals),
    "lists": (Lists([], ["", "a"], [0, 127, 128, 255], [[], [1, -1]], list(range(16))), Lists),
    "scalars": (
        Scalars(True, False, 0.5, -1.25, "é", None, (-3, True), Meters(70_000), Marker()),
        Scalars,
    ),
    "order": (Order(1, 2, 3), Order),
    "ints_i64": (I64_EDGES, list[I64]),
    "ints_u64": (U64_EDGES, list[U64]),
    "strings": (
        [
            "",
            "héllo wörld ✓ 🦀",
            'quote " backslash \\ newline \n tab \t nul \0',
            "x" * 31,
            "x" * 32,
            "x" * 255,
            "x" * 256,
        ],
        list[str],
    ),
    "floats_f64": (
        [0.0, -0.0, 3.0, 0.1, -2.5e-10, 1e-5, 1e-6, 1e15, 1e16, 1e17, 123_456.789,
         1_234_567_890_123_456.8, 1.5e300, 5e-324, 1.7976931348623157e308],
        list[float],
    ),  # fmt: skip
    "floats_f32": (
        [f32(x) for x in (0.1, -1.25, 1e10, 1e13, 1e14, 1e-5, 1e-6, 1e-7, 16_777_216.0, 3.4028234663852886e38)],
        list[F32],
    ),
    "map": ({f"k{i:02}": i - 8 for i in range(16)}, dict[str, I64]),
}
