"""Byte identity with the Rust SDK: every fixture written by
guest-sdk/tests/codec_fixtures.rs encodes, decodes and converts to JSON
exactly as in Rust."""

from __future__ import annotations

import math
import unittest

from _support import fixture, fixture_names, json_index, json_texts
from fixture_types import FIXTURES

from cairn_guest import codec


class RustFixtures(unittest.TestCase):
    def test_every_rust_fixture_has_a_python_value(self) -> None:
        self.assertEqual(sorted(FIXTURES), fixture_names())
        self.assertEqual(sorted(json_index()), fixture_names())

    def test_python_encodes_the_rust_bytes(self) -> None:
        for name, (value, tp) in FIXTURES.items():
            with self.subTest(name):
                self.assertEqual(codec.encode(value, tp).hex(), fixture(name).hex())

    def test_python_decodes_the_rust_bytes(self) -> None:
        for name, (value, tp) in FIXTURES.items():
            with self.subTest(name):
                decoded = codec.decode(fixture(name), tp)
                self.assertEqual(decoded, value)
                self.assertEqual(codec.encode(decoded, tp), fixture(name))

    def test_json_text_is_serde_json_text(self) -> None:
        texts = json_texts()
        for name, (value, tp) in FIXTURES.items():
            with self.subTest(name):
                self.assertEqual(codec.to_json(value, tp), texts[name])

    def test_json_reads_back(self) -> None:
        index = json_index()
        for name, (value, tp) in FIXTURES.items():
            with self.subTest(name):
                back = codec.from_json_value(index[name], tp)
                self.assertEqual(back, value)
                self.assertEqual(codec.encode(back, tp), fixture(name))

    def test_compiled_paths_agree_with_the_general_ones(self) -> None:
        # encode and decode take a path compiled per type and fall back to
        # the general one (codec._enc, codec._Reader + codec._convert): both
        # must give the Rust bytes and values.
        fast_decodes = 0
        for name, (value, tp) in FIXTURES.items():
            with self.subTest(name):
                out = bytearray()
                codec._enc(out, value, tp, 0)
                self.assertEqual(bytes(out), fixture(name))
                general = codec._convert(codec._Reader(fixture(name)).value(), tp, False)
                self.assertEqual(general, value)
                try:
                    fast, _ = codec._decoder(tp)(fixture(name), 0, 0)
                except Exception:  # noqa: BLE001 - left to the general path
                    continue
                self.assertEqual(fast, value)
                fast_decodes += 1
        self.assertGreater(fast_decodes, len(FIXTURES) // 2)

    def test_negative_zero_keeps_its_sign(self) -> None:
        floats = codec.decode(fixture("floats_f64"), list[float])
        self.assertEqual(math.copysign(1.0, floats[1]), -1.0)


if __name__ == "__main__":
    unittest.main()
