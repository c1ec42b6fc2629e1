"""Shared by the SDK's tests: import paths and the Rust fixtures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SDK = Path(__file__).resolve().parents[1]
if str(SDK) not in sys.path:
    sys.path.insert(0, str(SDK))

#: guest-sdk/tests/fixtures: bytes written by the Rust SDK (codec_fixtures.rs).
FIXTURES = SDK.parent / "tests" / "fixtures"


def fixture(name: str) -> bytes:
    """The Rust SDK's encoding of fixture ``name``."""
    return (FIXTURES / f"{name}.bin").read_bytes()


def fixture_names() -> list[str]:
    """Every committed fixture."""
    return sorted(p.stem for p in FIXTURES.glob("*.bin"))


def json_index() -> dict[str, object]:
    """codec.json: name → the JSON value serde_json gives the fixture."""
    return json.loads((FIXTURES / "codec.json").read_text(encoding="utf-8"))


def json_texts() -> dict[str, str]:
    """codec.json: name → the exact JSON text serde_json wrote (one line each)."""
    out = {}
    for line in (FIXTURES / "codec.json").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.startswith('"'):
            continue
        name, _, text = line.partition('": ')
        out[name[1:]] = text[:-1] if text.endswith(",") else text
    return out
