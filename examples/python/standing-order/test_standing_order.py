"""The standing order's decisions, timers and sends, through the SDK's test
kit (no wasm):

    cd examples/python/standing-order && python3 -m unittest -v
"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "guest-sdk" / "python"))
sys.path.insert(0, str(HERE))

from standing_order import (  # noqa: E402
    Arrange,
    BankCommand,
    Cancel,
    Cancelled,
    Deposit,
    Paid,
    Pay,
    Scheduled,
    StandingOrder,
    State,
    Status,
)

from cairn_guest import codec  # noqa: E402
from cairn_guest.testkit import TestKit  # noqa: E402


class Payments(unittest.TestCase):
    def test_arrange_arms_a_timer_and_each_payment_sends_a_deposit(self) -> None:
        t = TestKit(StandingOrder(), "so-1")
        out = t.when(Arrange("acct-1", 10, 2, 3))
        out.expect_events(Scheduled("acct-1", 10, 2, 3)).expect_reply("ok")
        self.assertEqual(out.scheduled, [(2000, Pay())])
        self.assertEqual(out.sent(BankCommand), [])
        for left in (2, 1):
            out = t.when(Pay()).expect_events(Paid("acct-1", 10)).expect_reply("paid")
            self.assertEqual(out.sent(BankCommand), [("bank-account", "acct-1", Deposit(10))])
            self.assertEqual(out.scheduled, [(2000, Pay())])
            self.assertEqual(t.state.remaining, left)
        # The last payment arms no timer.
        out = t.when(Pay()).expect_events(Paid("acct-1", 10))
        self.assertEqual(out.scheduled, [])
        self.assertEqual(len(out.sent(BankCommand)), 1)
        self.assertEqual(t.state, State("acct-1", 10, 2, 0, 30))
        t.when(Status()).expect_reply("no active order; paid 30 in total")
        # A late timer does nothing.
        t.when(Pay()).expect_events().expect_no_reply()
        self.assertEqual(t.recover().state, t.state)

    def test_the_deposit_sent_is_the_bank_accounts_command(self) -> None:
        out = TestKit(StandingOrder()).given([Scheduled("a", 7, 1, 1)]).when(Pay())
        (send,) = out.effects
        self.assertEqual(send.command, codec.encode({"Deposit": {"amount": 7}}))
        self.assertEqual(codec.to_json(Deposit(7)), '{"Deposit":{"amount":7}}')

    def test_cancel_stops_the_order(self) -> None:
        t = TestKit(StandingOrder(), "so-2")
        t.when(Arrange("acct-2", 5, 1, 4))
        t.when(Pay())
        t.when(Status()).expect_reply("3 payments of 5 to acct-2 left; paid 5 in total")
        t.when(Cancel()).expect_events(Cancelled()).expect_reply("ok")
        out = t.when(Pay()).expect_events()
        self.assertEqual(out.effects, [])
        t.when(Cancel()).expect_rejected("no active order")

    def test_rejections(self) -> None:
        t = TestKit(StandingOrder())
        t.when(Arrange("a", 0, 1, 1)).expect_rejected("amount must be positive, got 0")
        t.when(Arrange("a", 1, 1, 0)).expect_rejected("times must be at least 1")
        t.when(Arrange("a", 1, 1, 2))
        t.when(Arrange("b", 1, 1, 2)).expect_rejected("an order is active")
        self.assertEqual(t.seq, 1)

    def test_json(self) -> None:
        b = TestKit(StandingOrder()).bridge
        cmd = b.command_from_json('{"Arrange":{"to":"acct-1","amount":10,"every_s":1,"times":2}}')
        self.assertEqual(codec.decode(cmd, StandingOrder.Command), Arrange("acct-1", 10, 1, 2))
        self.assertEqual(b.command_from_json('"Pay"'), codec.encode(Pay()))
        self.assertEqual(
            b.event_to_json(codec.encode(Scheduled("acct-1", 10, 1, 2))),
            '{"Scheduled":{"to":"acct-1","amount":10,"every_s":1,"times":2}}',
        )


if __name__ == "__main__":
    unittest.main()
