"""build.py's custom section: the bytes a node reads to link deny-all
socket stubs (host/src/runtime/imports.rs)."""

from __future__ import annotations

import re
import unittest

import _support

import build


def read_leb128(data: bytes, at: int) -> tuple[int, int]:
    """The unsigned LEB128 at ``at`` and the offset after it."""
    value, shift = 0, 0
    while True:
        b = data[at]
        at += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, at


class CustomSectionTest(unittest.TestCase):
    def test_a_section_is_id_0_size_name_and_data(self) -> None:
        data = b"x" * 300  # a size that needs two LEB128 bytes
        s = build.custom_section("name", data)
        self.assertEqual(s[0], 0)
        size, at = read_leb128(s, 1)
        self.assertEqual(size, len(s) - at)
        name_len, at = read_leb128(s, at)
        self.assertEqual(s[at : at + name_len], b"name")
        self.assertEqual(s[at + name_len :], data)
        self.assertEqual(build._leb128(624485), bytes([0xE5, 0x8E, 0x26]))

    def test_the_deny_by_default_section_names_the_socket_interfaces(self) -> None:
        s = build.deny_by_default_section()
        _, at = read_leb128(s, 1)
        name_len, at = read_leb128(s, at)
        self.assertEqual(s[at : at + name_len].decode(), "cairn:deny-by-default")
        names = s[at + name_len :].decode().split()
        self.assertEqual(len(names), 7)
        self.assertTrue(all(n.startswith("wasi:sockets/") and "@" not in n for n in names))

    def test_the_names_are_the_hosts(self) -> None:
        # host/src/runtime.rs's DENY_BY_DEFAULT lists the same interfaces.
        runtime = (_support.SDK.parent.parent / "host" / "src" / "runtime.rs").read_text()
        block = runtime[runtime.index("pub const DENY_BY_DEFAULT") :]
        block = block[: block.index("];")]
        self.assertEqual(tuple(re.findall(r'"([^"]+)"', block)), build.DENY_BY_DEFAULT)


if __name__ == "__main__":
    unittest.main()
