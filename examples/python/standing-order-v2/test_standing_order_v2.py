"""Version 2 of the standing order: millisecond timers, and the history
version 1 wrote (``examples/python/standing-order``) replayed through the
upcast, through the SDK's test kit (no wasm):

    cd examples/python/standing-order-v2 && python3 -m unittest -v
"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "guest-sdk" / "python"))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "standing-order"))

import standing_order as v1  # noqa: E402
from standing_order_v2 import (  # noqa: E402
    Arrange,
    Arranged,
    BankCommand,
    Deposit,
    Paid,
    Pay,
    Scheduled,
    StandingOrder,
    State,
    Status,
)

from cairn_guest import codec  # noqa: E402
from cairn_guest.bridge import FoldError, pack_events  # noqa: E402
from cairn_guest.testkit import TestKit  # noqa: E402


def v1_history() -> list[bytes]:
    """A journal written by version 1: an order of 3 payments of 10 every
    2 s, one payment made."""
    t = TestKit(v1.StandingOrder(), "so-1")
    t.when(v1.Arrange("acct-1", 10, 2, 3))
    t.when(v1.Pay())
    return t.journal_bytes


class Payments(unittest.TestCase):
    def test_millisecond_timers(self) -> None:
        t = TestKit(StandingOrder(), "so-1")
        out = t.when(Arrange("acct-1", 10, 250, 2))
        out.expect_events(Arranged("acct-1", 10, 250, 2)).expect_reply("ok")
        self.assertEqual(out.scheduled, [(250, Pay())])
        out = t.when(Pay()).expect_events(Paid("acct-1", 10))
        self.assertEqual(out.sent(BankCommand), [("bank-account", "acct-1", Deposit(10))])
        self.assertEqual(out.scheduled, [(250, Pay())])
        out = t.when(Pay())
        self.assertEqual(out.scheduled, [])
        self.assertEqual(t.state, State("acct-1", 10, 250, 0, 20))


class Upcast(unittest.TestCase):
    def test_version_1_history_replays_through_the_upcast(self) -> None:
        history = v1_history()
        self.assertEqual(codec.decode(history[0], StandingOrder.Event), Scheduled("acct-1", 10, 2, 3))
        t = TestKit(StandingOrder(), "so-1").given(history)
        self.assertEqual(t.state, State("acct-1", 10, 2000, 2, 10))
        self.assertEqual(t.journal(), [Arranged("acct-1", 10, 2000, 3), Paid("acct-1", 10)])
        # The timer version 1 armed runs here, and the next one is in ms.
        out = t.when(Pay()).expect_events(Paid("acct-1", 10)).expect_reply("paid")
        self.assertEqual(out.scheduled, [(2000, Pay())])
        t.when(Status()).expect_reply("1 payments of 10 to acct-1 left; paid 20 in total")
        # Version 2 never writes the legacy shape.
        self.assertNotIn(b"Scheduled", b"".join(t.journal_bytes[2:]))

    def test_the_json_tooling_shows_the_upcast_event(self) -> None:
        b = TestKit(StandingOrder()).bridge
        self.assertEqual(
            b.event_to_json(v1_history()[0]),
            '{"Arranged":{"to":"acct-1","amount":10,"every_ms":2000,"times":3}}',
        )

    def test_without_the_upcast_old_events_fail_the_replay(self) -> None:
        class Forgetful(StandingOrder):
            def upcast(self, event):  # type: ignore[no-untyped-def]
                return event

        with self.assertRaisesRegex(FoldError, "legacy event Scheduled"):
            TestKit(Forgetful()).given(v1_history())

    def test_version_1_state_is_another_schema(self) -> None:
        self.assertEqual((v1.StandingOrder.state_schema, StandingOrder.state_schema), (1, 2))
        b = TestKit(StandingOrder()).bridge
        # Version 1's pending timer command decodes here.
        self.assertEqual(codec.decode(codec.encode(v1.Pay()), StandingOrder.Command), Pay())
        self.assertEqual(b.fold(b.initial_state(), pack_events([])), b.initial_state())


if __name__ == "__main__":
    unittest.main()
