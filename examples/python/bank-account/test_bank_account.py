"""The guide's figures for the Python bank account (the same as
examples/bank-account/src/lib.rs's tests), and byte identity of its events,
state, commands and replies with the Rust bank account's (the fixtures in
guest-sdk/tests/fixtures, written by the Rust SDK).

    cd examples/python/bank-account && python3 -m unittest -v
"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "guest-sdk" / "python"))
sys.path.insert(0, str(HERE))

from bank_account import (  # noqa: E402
    BankAccount,
    Deposit,
    Deposited,
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


class TheGuide(unittest.TestCase):
    def test_phase_one(self) -> None:
        t = TestKit(BankAccount(), "acct-1")
        t.when(Deposit(100)).expect_reply("ok")
        t.when(Deposit(50)).expect_reply("ok")
        t.when(Withdraw(30)).expect_events(Withdrawn(30)).expect_reply("ok")
        t.when(Withdraw(999)).expect_events().expect_reply("insufficient funds (balance: 120)")
        t.when(GetBalance()).expect_reply(120)
        # "Journal has 3 events".
        self.assertEqual(t.journal(), [Deposited(100), Deposited(50), Withdrawn(30)])
        self.assertEqual(t.seq, 3)
        self.assertEqual(t.state, State(balance=120, transactions=3))

    def test_phase_three(self) -> None:
        t = TestKit(BankAccount(), "acct-2")
        for _ in range(5):
            t.when(Deposit(10))
        self.assertEqual(t.state, State(50, 5))
        for _ in range(2):
            t.when(Deposit(10))
        t.when(GetBalance()).expect_reply(70)
        self.assertEqual(len(t.journal()), 7)

    def test_recovery_from_events(self) -> None:
        t = TestKit(BankAccount(), "acct-1")
        t.given([Deposited(100), Deposited(50), Withdrawn(30)])
        t.when(GetBalance()).expect_reply(120)

    def test_non_positive_amounts_are_rejected(self) -> None:
        t = TestKit(BankAccount(), "a")
        t.when(Deposit(-5)).expect_rejected("amount must be positive, got -5").expect_events()
        t.when(Withdraw(0)).expect_rejected("positive")
        self.assertEqual(t.journal(), [])

    def test_replies_render_as_the_guide_prints_them(self) -> None:
        b = TestKit(BankAccount()).bridge
        for reply, json in [
            ("ok", '"ok"'),
            ("insufficient funds (balance: 120)", '"insufficient funds (balance: 120)"'),
            (120, "120"),
            (-7, "-7"),
        ]:
            self.assertEqual(b.reply_to_json(codec.encode(reply)), json)
        self.assertEqual(codec.decode(b.command_from_json('{"Deposit":{"amount":100}}'), BankAccount.Command), Deposit(100))
        self.assertEqual(codec.decode(b.command_from_json('"GetBalance"'), BankAccount.Command), GetBalance())
        self.assertEqual(b.event_to_json(codec.encode(Withdrawn(30))), '{"Withdrawn":{"amount":30}}')
        self.assertEqual(b.state_to_json(codec.encode(State(120, 3))), '{"balance":120,"transactions":3}')


class SameBytesAsRust(unittest.TestCase):
    def test_a_python_journal_is_a_rust_journal(self) -> None:
        t = TestKit(BankAccount(), "acct-1")
        t.when(Deposit(100))
        t.when(Withdraw(30))
        self.assertEqual(t.journal_bytes, [rust("v1_event_deposited"), rust("v1_event_withdrawn")])

    def test_values_encode_to_the_rust_bytes(self) -> None:
        for value, name in [
            (Deposited(100), "v1_event_deposited"),
            (Withdrawn(30), "v1_event_withdrawn"),
            (Deposited(1_000_000), "v1_event_deposited_large"),
            (State(), "v1_state_initial"),
            (State(120, 3), "v1_state"),
            (State(-7, 70_000), "v1_state_negative"),
            (Deposit(100), "v1_command_deposit"),
            (Withdraw(30), "v1_command_withdraw"),
            (GetBalance(), "v1_command_get_balance"),
            ("ok", "v1_reply_ok"),
            ("insufficient funds (balance: 120)", "v1_reply_insufficient"),
            (120, "v1_reply_balance"),
            (-7, "v1_reply_balance_negative"),
        ]:
            with self.subTest(name):
                self.assertEqual(codec.encode(value), rust(name))

    def test_rust_history_replays_in_python(self) -> None:
        t = TestKit(BankAccount(), "acct-1")
        t.given([rust("v1_event_deposited"), rust("v1_event_deposited"), rust("v1_event_withdrawn")])
        self.assertEqual(t.state_bytes, codec.encode(State(170, 3)))
        t.when(Withdraw(999)).expect_reply("insufficient funds (balance: 170)")

    def test_the_initial_state_is_the_rust_one(self) -> None:
        self.assertEqual(TestKit(BankAccount()).bridge.initial_state(), rust("v1_state_initial"))


if __name__ == "__main__":
    unittest.main()
