"""The codec against docs/CODEC.md: wire forms, decoding rules, errors."""

from __future__ import annotations

import enum
import unittest
from dataclasses import dataclass
from typing import Any

import _support  # noqa: F401  (import path)

from cairn_guest import codec
from cairn_guest.codec import I64, U8, U64, CodecError, TaggedUnion, field


@dataclass
class Narrow:
    a: int


@dataclass
class Wide:
    a: int
    b: str


@dataclass
class WithDefaults:
    a: int
    note: str | None
    flag: bool = False
    tags: list[str] = field(default_factory=list, aliases=("labels",))


class Ev(TaggedUnion): ...


@dataclass(frozen=True)
class Shut(Ev, aliases=("Closed",)):
    pass


@dataclass(frozen=True)
class Added(Ev):
    n: U64


class Color(enum.Enum):
    Red = 1
    Green = 2


def enc(v: Any, tp: Any = None) -> str:
    return codec.encode(v, tp).hex()


class WireForms(unittest.TestCase):
    def test_integers_take_the_smallest_form(self) -> None:
        cases = {
            0: "00", 127: "7f", 128: "cc80", 255: "ccff", 256: "cd0100", 65_535: "cdffff",
            65_536: "ce00010000", 2**32: "cf0000000100000000", 2**64 - 1: "cfffffffffffffffff",
            -1: "ff", -32: "e0", -33: "d0df", -128: "d080", -129: "d1ff7f",
            -32_768: "d18000", -32_769: "d2ffff7fff", -(2**31): "d280000000",
            -(2**31) - 1: "d3ffffffff7fffffff", -(2**63): "d38000000000000000",
        }  # fmt: skip
        for v, hx in cases.items():
            with self.subTest(v):
                self.assertEqual(enc(v), hx)
                self.assertEqual(codec.decode(bytes.fromhex(hx), int), v)
        for bad in (2**64, -(2**63) - 1):
            with self.assertRaises(CodecError):
                codec.encode(bad)

    def test_lengths(self) -> None:
        self.assertEqual(codec.encode("x" * 31)[:1].hex(), "bf")
        self.assertEqual(codec.encode("x" * 32)[:2].hex(), "d920")
        self.assertEqual(codec.encode("x" * 256)[:3].hex(), "da0100")
        self.assertEqual(codec.encode("x" * 65_536)[:5].hex(), "db00010000")
        self.assertEqual(codec.encode([0] * 15)[:1].hex(), "9f")
        self.assertEqual(codec.encode([0] * 16)[:3].hex(), "dc0010")
        self.assertEqual(codec.encode([0] * 65_536)[:5].hex(), "dd00010000")
        self.assertEqual(codec.encode({i: 0 for i in range(16)})[:3].hex(), "de0010")
        self.assertEqual(codec.encode({i: 0 for i in range(65_536)})[:5].hex(), "df00010000")
        self.assertEqual(codec.encode(b"\x01\x02").hex(), "c4020102")
        self.assertEqual(codec.decode(codec.encode("é" * 40), str), "é" * 40)

    def test_scalars(self) -> None:
        self.assertEqual(enc(None), "c0")
        self.assertEqual(enc(True), "c3")
        self.assertEqual(enc(False), "c2")
        self.assertEqual(enc(0.5), "cb3fe0000000000000")
        self.assertEqual(enc(1.5, codec.F32), "ca3fc00000")
        self.assertEqual(enc(3, float), "cb4008000000000000")
        self.assertEqual(codec.decode(bytes.fromhex("03"), float), 3.0)

    def test_enums(self) -> None:
        self.assertEqual(enc(Shut()), "a453687574")
        self.assertEqual(enc(Added(2)), "81a5416464656481a16e02")
        self.assertEqual(enc(Color.Green), "a5477265656e")
        self.assertEqual(codec.decode(codec.encode(Color.Red), Color), Color.Red)
        self.assertEqual(codec.to_json(Added(2)), '{"Added":{"n":2}}')
        self.assertEqual(codec.to_json(Shut()), '"Shut"')
        self.assertEqual(codec.from_json('"Closed"', Ev), Shut())

    def test_ranges(self) -> None:
        with self.assertRaises(CodecError):
            codec.encode(256, U8)
        with self.assertRaises(CodecError):
            codec.encode(Added(-1))
        with self.assertRaisesRegex(CodecError, "expected u8"):
            codec.decode(codec.encode(256), U8)
        with self.assertRaisesRegex(CodecError, "expected u64"):
            codec.decode(codec.encode(-1), U64)
        self.assertEqual(codec.decode(bytes.fromhex("d30000000000000005"), U8), 5)


class Decoding(unittest.TestCase):
    def test_unknown_fields_are_skipped(self) -> None:
        self.assertEqual(codec.decode(codec.encode(Wide(1, "new")), Narrow), Narrow(1))

    def test_missing_fields(self) -> None:
        self.assertEqual(
            codec.decode(codec.encode({"a": 1}), WithDefaults), WithDefaults(1, None, False, [])
        )
        self.assertEqual(
            codec.decode(codec.encode({"a": 1, "labels": ["x"]}), WithDefaults).tags, ["x"]
        )
        with self.assertRaisesRegex(CodecError, "missing field `b`"):
            codec.decode(codec.encode({"a": 1}), Wide)
        with self.assertRaisesRegex(CodecError, "duplicate field `a`"):
            codec.decode(bytes.fromhex("82a16101a16102"), Narrow)

    def test_lenient_forms_rust_accepts(self) -> None:
        # A struct as an array of its fields, a unit variant as {name: nil},
        # bytes after the value.
        self.assertEqual(codec.decode(bytes.fromhex("9201a161"), Wide), Wide(1, "a"))
        self.assertEqual(codec.decode(bytes.fromhex("81a453687574c0"), Ev), Shut())
        self.assertEqual(codec.decode(bytes.fromhex("01ff"), int), 1)

    def test_errors(self) -> None:
        with self.assertRaisesRegex(CodecError, "unknown variant `Gone`"):
            codec.decode(codec.encode("Gone"), Ev)
        with self.assertRaisesRegex(CodecError, "expected struct variant"):
            codec.decode(codec.encode("Added"), Ev)
        with self.assertRaises(CodecError):
            codec.decode(codec.encode(1), str)
        with self.assertRaises(CodecError):
            codec.decode(codec.encode(True), int)
        for bad in ("", "c1", "d4010a", "8201", "a2ff"):
            with self.subTest(bad), self.assertRaises(CodecError):
                codec.decode(bytes.fromhex(bad), Any)
        full = codec.encode(Wide(1, "abc"))
        for n in range(len(full)):
            with self.subTest(prefix=n), self.assertRaises(CodecError):
                codec.decode(full[:n], Wide)
        deep = bytes([0x91] * 10_000) + b"\x00"
        with self.assertRaises(CodecError):
            codec.decode(deep, Any)

    def test_untagged_union_and_optional(self) -> None:
        tp = str | I64
        self.assertEqual(codec.decode(codec.encode("ok"), tp), "ok")
        self.assertEqual(codec.decode(codec.encode(-7), tp), -7)
        with self.assertRaisesRegex(CodecError, "did not match any variant"):
            codec.decode(codec.encode(True), tp)
        self.assertIsNone(codec.decode(b"\xc0", int | None))
        self.assertEqual(codec.decode(codec.encode([1, None]), list[int | None]), [1, None])

    def test_any(self) -> None:
        v = {"a": [1, "x", None, {"b": True}], "c": b"\x00"}
        self.assertEqual(codec.decode(codec.encode(v)), v)
        self.assertEqual(
            codec.decode(codec.encode(Added(2))), {"Added": {"n": 2}}
        )


class Json(unittest.TestCase):
    def test_shapes(self) -> None:
        self.assertEqual(codec.to_json(WithDefaults(1, None)), '{"a":1,"note":null,"flag":false,"tags":[]}')
        self.assertEqual(codec.to_json({"k": [1.0, 2]}), '{"k":[1.0,2]}')
        self.assertEqual(codec.to_json("é\n\x01"), '"é\\n\\u0001"')
        self.assertEqual(codec.to_json(float("nan")), "null")
        self.assertEqual(codec.from_json('{"1":true}', dict[int, bool]), {1: True})
        with self.assertRaises(CodecError):
            codec.from_json("{nope", Narrow)
        with self.assertRaises(CodecError):
            codec.from_json("[1]", Narrow)  # JSON structs are objects


if __name__ == "__main__":
    unittest.main()
