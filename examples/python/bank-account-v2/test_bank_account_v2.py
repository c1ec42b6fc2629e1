"""The Python bank account v2 (the tests of examples/bank-account-v2 in Rust
and of examples/js/bank-account-v2), and its bytes against the Rust SDK's
v1 and v2 fixtures (guest-sdk/tests/fixtures): it replays a Rust v1 history
through its upcast and writes the events Rust v2 writes.

    cd examples/python/bank-account-v2 && python3 -m unittest -v
"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "guest-sdk" / "python"))
sys.path.insert(0, str(HERE))

from bank_account_v2 import (  # noqa: E402
    FEE,
    BankAccount,
    Credited,
    Deposit,
    Deposited,
    FeeCharged,
    GetBalance,
    State,
    Withdraw,
    Withdrawn,
)

from cairn_guest import codec  # noqa: E402
from cairn_guest.testkit import TestKit  # noqa: E402

FIXTURES = REPO / "guest-sdk" / "tests" / "fixtures"


def rust(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


class Fees(unittest.TestCase):
    def test_a_withdrawal_below_the_minimum_costs_a_fee(self) -> None:
        t = TestKit(BankAccount(), "acct-1")
        t.given([Credited(150, "deposit")])
        t.when(Withdraw(100)).expect_events(Withdrawn(100, False), FeeCharged(FEE)).expect_reply("ok (fee 1)")
        self.assertEqual(t.state, State(49, 3))
        t.when(GetBalance()).expect_reply(49)

    def test_above_the_minimum_there_is_no_fee(self) -> None:
        t = TestKit(BankAccount(), "acct-1")
        t.given([Credited(500, "deposit")])
        t.when(Withdraw(100)).expect_events(Withdrawn(100, False)).expect_reply("ok")
        self.assertEqual(t.state.balance, 400)

    def test_emptying_the_account_waives_the_fee(self) -> None:
        t = TestKit(BankAccount(), "acct-1")
        t.given([Credited(50, "deposit")])
        t.when(Withdraw(50)).expect_events(Withdrawn(50, True)).expect_reply("ok")
        self.assertEqual(t.state.balance, 0)

    def test_the_guide_rules_of_version_1_still_hold(self) -> None:
        t = TestKit(BankAccount(), "a")
        t.when(Deposit(-5)).expect_rejected("amount must be positive, got -5").expect_events()
        t.when(Withdraw(0)).expect_rejected("positive")
        t.when(Deposit(120)).expect_events(Credited(120, "deposit")).expect_reply("ok")
        t.when(Withdraw(999)).expect_events().expect_reply("insufficient funds (balance: 120)")


class Upcast(unittest.TestCase):
    def test_v1_events_decode_as_v2(self) -> None:
        b = TestKit(BankAccount()).bridge
        self.assertEqual(
            b.event_to_json(codec.encode(Deposited(7))),
            '{"Credited":{"amount":7,"source":"deposit"}}',
        )
        self.assertEqual(b.event_to_json(rust("v1_event_withdrawn")), '{"Withdrawn":{"amount":30,"fee_waived":false}}')

    def test_a_rust_v1_history_replays_through_the_upcast(self) -> None:
        t = TestKit(BankAccount(), "acct-1")
        t.given([rust("v1_event_deposited"), rust("v1_event_deposited"), rust("v1_event_withdrawn")])
        self.assertEqual(t.state, State(170, 3))
        self.assertEqual(t.journal(), [Credited(100, "deposit"), Credited(100, "deposit"), Withdrawn(30)])
        # A v1 snapshot carries over (same state schema).
        self.assertEqual(codec.decode(rust("v1_state"), State), State(120, 3))

    def test_a_legacy_event_is_never_written(self) -> None:
        t = TestKit(BankAccount())
        out = t.when(Deposit(5))
        out.expect_events(Credited(5, "deposit"))
        self.assertNotIn(Deposited(5), t.journal())


class SameBytesAsRust(unittest.TestCase):
    def test_new_events_are_the_rust_v2_bytes(self) -> None:
        t = TestKit(BankAccount(), "acct-1")
        t.when(Deposit(100)).expect_reply("ok")
        self.assertEqual(t.journal_bytes, [rust("v2_event_credited")])
        self.assertEqual(codec.encode(Withdrawn(30)), rust("v2_event_withdrawn"))
        self.assertEqual(codec.encode(FeeCharged(1)), rust("v2_event_fee_charged"))

    def test_commands_and_replies_are_the_v1_bytes(self) -> None:
        for value, name in [
            (Deposit(100), "v1_command_deposit"),
            (Withdraw(30), "v1_command_withdraw"),
            (GetBalance(), "v1_command_get_balance"),
            ("ok", "v1_reply_ok"),
            (120, "v1_reply_balance"),
            (State(120, 3), "v1_state"),
        ]:
            with self.subTest(name):
                self.assertEqual(codec.encode(value), rust(name))


if __name__ == "__main__":
    unittest.main()
