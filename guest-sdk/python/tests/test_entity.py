"""The entity model, the byte bridge and the test kit (mirrors the tests of
guest-sdk/src/testkit.rs), and a Python v2 replaying Rust v1 history."""

from __future__ import annotations

import unittest
from dataclasses import dataclass
from datetime import timedelta

from _support import fixture

from cairn_guest import U64, Context, Decision, Entity, TaggedUnion, codec
from cairn_guest.bridge import BadState, Bridge, FoldError, JsonError, Malformed, Rejected, pack_events
from cairn_guest.testkit import TestKit


class Event(TaggedUnion): ...


@dataclass(frozen=True)
class Added(Event):
    n: U64
    note: str | None = None


@dataclass(frozen=True)
class Reset(Event):
    pass


class Command(TaggedUnion): ...


@dataclass(frozen=True)
class Add(Command, shape="newtype"):
    n: U64


@dataclass(frozen=True)
class DoReset(Command, name="Reset"):
    pass


@dataclass(frozen=True)
class Later(Command, shape="newtype"):
    n: U64


@dataclass(frozen=True)
class Tell(Command, shape="newtype"):
    target: str


class Sum(Entity[int, Command, Event, int]):
    """Rust's testkit `Sum`, with a send."""

    name = "sum"
    version = "2.0.0"
    State = U64
    Command = Command
    Event = Event
    Reply = U64

    def initial_state(self) -> int:
        return 0

    def on_command(self, ctx: Context, state: int, command: Command) -> Decision:
        match command:
            case Add(0):
                return Decision.reject("nothing to add")
            case Add(n):
                return Decision.persist([Added(n)]).then_reply(state + n)
            case DoReset():
                return Decision.persist(Reset())
            case Later(n):
                return Decision.none().schedule(timedelta(seconds=1), Add(n))
            case Tell(target):
                return Decision.reply(state).send("sum", target, Add(state))
        raise AssertionError(command)

    def on_event(self, state: int, event: Event) -> int:
        match event:
            case Added(n=n):
                return state + n
            case Reset():
                return 0
        raise AssertionError(event)


CTX = Context("x", 1, 0)


class BridgeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.b = Bridge(Sum())
        self.zero = codec.encode(0)

    def test_describe_and_initial_state(self) -> None:
        d = self.b.describe()
        self.assertEqual((d.name, d.version, d.state_schema), ("sum", "2.0.0", 1))
        self.assertEqual(self.b.initial_state(), b"\x00")

    def test_decide(self) -> None:
        d = self.b.decide(CTX, self.zero, codec.encode(Add(4)))
        self.assertEqual(d.events, [codec.encode(Added(4))])
        self.assertEqual(d.state, codec.encode(4))
        self.assertEqual(d.reply, codec.encode(4))
        d = self.b.decide(CTX, self.zero, codec.encode(Later(7)))
        self.assertEqual((d.events, d.state, d.reply), ([], None, None))
        self.assertEqual(d.effects[0].delay_ms, 1000)
        self.assertEqual(codec.decode(d.effects[0].command, Command), Add(7))

    def test_old_events_decode_with_a_new_field(self) -> None:
        old = codec.encode({"Added": {"n": 5}})
        self.assertEqual(codec.decode(old, Event), Added(5, None))
        self.assertEqual(self.b.fold(self.zero, pack_events([old, old])), codec.encode(10))

    def test_bad_bytes(self) -> None:
        with self.assertRaises(Malformed):
            self.b.decide(CTX, self.zero, b"\xc1")
        with self.assertRaises(BadState):
            self.b.decide(CTX, b"\xc1", codec.encode(Add(1)))
        with self.assertRaises(Rejected) as r:
            self.b.decide(CTX, self.zero, codec.encode(Add(0)))
        self.assertEqual(r.exception.message, "nothing to add")
        ev = codec.encode(Reset())
        packed = pack_events([ev, ev])[:-1]
        with self.assertRaises(FoldError) as e:
            self.b.fold(self.zero, packed)
        self.assertEqual(e.exception.index, 1)
        self.assertIn("truncated", e.exception.message)
        with self.assertRaises(FoldError) as e:
            self.b.fold(self.zero, b"\x01\x00")
        self.assertEqual(e.exception.index, 0)
        with self.assertRaises(FoldError) as e:
            self.b.fold(self.zero, pack_events([b"\xc1"]))
        self.assertIn("decode", e.exception.message)
        with self.assertRaises(FoldError):
            self.b.fold(b"\xc1", b"")

    def test_json_codecs(self) -> None:
        with self.assertRaisesRegex(JsonError, "not a valid sum command"):
            self.b.command_from_json("{nope")
        self.assertEqual(self.b.event_to_json(codec.encode(Reset())), '"Reset"')
        self.assertEqual(self.b.command_from_json('{"Add":3}'), codec.encode(Add(3)))
        self.assertEqual(self.b.state_to_json(codec.encode(9)), "9")
        with self.assertRaisesRegex(JsonError, "cannot decode the reply"):
            self.b.reply_to_json(b"\xa1x")


class TestKitTests(unittest.TestCase):
    def test_given_when_then(self) -> None:
        t = TestKit(Sum(), "s")
        t.given([Added(2), Added(3)])
        self.assertEqual(t.state, 5)
        t.when(Add(4)).expect_events(Added(4)).expect_reply(9)
        self.assertEqual(t.seq, 3)
        t.when(Add(0)).expect_rejected("nothing").expect_events()
        self.assertEqual(t.state, 9)
        out = t.when(Later(7))
        out.expect_events().expect_no_reply()
        self.assertEqual(out.scheduled, [(1000, Add(7))])
        out = t.when(Tell("other"))
        self.assertEqual(out.sent(Command), [("sum", "other", Add(9))])
        t.when(DoReset())
        self.assertEqual(t.state, 0)
        self.assertEqual(t.journal(), [Added(2), Added(3), Added(4), Reset()])
        self.assertEqual(t.recover().state, 0)

    def test_failed_expectations_are_assertion_errors(self) -> None:
        t = TestKit(Sum())
        out = t.when(Add(1))
        with self.assertRaises(AssertionError):
            out.expect_events(Added(2))
        with self.assertRaises(AssertionError):
            out.expect_reply(2)
        with self.assertRaises(AssertionError):
            out.expect_rejected()


# A Python v2 of the bank account reading the Rust v1 history: a reshape
# through a legacy variant and the upcast hook, a new field with a default,
# a new variant.
class EventV2(TaggedUnion): ...


@dataclass(frozen=True)
class Deposited(EventV2, legacy=True):
    amount: int


@dataclass(frozen=True)
class Credited(EventV2):
    amount: int
    source: str


@dataclass(frozen=True)
class Withdrawn(EventV2):
    amount: int
    fee_waived: bool = False


@dataclass(frozen=True)
class FeeCharged(EventV2):
    amount: int


@dataclass
class State:
    balance: int = 0
    transactions: int = 0


class Noop(TaggedUnion): ...


class BankV2(Entity[State, Noop, EventV2, None]):
    name = "bank-account"
    version = "2.0.0"
    State = State
    Command = Noop
    Event = EventV2
    Reply = None

    def on_command(self, ctx: Context, state: State, command: Noop) -> Decision:
        return Decision.none()

    def upcast(self, event: EventV2) -> EventV2:
        if isinstance(event, Deposited):
            return Credited(event.amount, "deposit")
        return event

    def on_event(self, state: State, event: EventV2) -> None:
        match event:
            case Credited(amount=a):
                state.balance += a
            case Withdrawn(amount=a) | FeeCharged(amount=a):
                state.balance -= a
        state.transactions += 1


class CrossLanguage(unittest.TestCase):
    def test_python_v2_replays_rust_v1_history(self) -> None:
        rust_v1 = [fixture("v1_event_deposited"), fixture("v1_event_deposited"), fixture("v1_event_withdrawn")]
        t = TestKit(BankV2(), "acct-1")
        t.given(rust_v1 + [fixture("v2_event_fee_charged")])
        self.assertEqual(t.state, State(169, 4))
        self.assertEqual(t.state_bytes, codec.encode(State(169, 4)))
        self.assertEqual(
            t.journal(),
            [Credited(100, "deposit"), Credited(100, "deposit"), Withdrawn(30), FeeCharged(1)],
        )
        b = t.bridge
        self.assertEqual(b.event_to_json(fixture("v1_event_deposited")), '{"Credited":{"amount":100,"source":"deposit"}}')
        # A Rust v1 state snapshot carries over (same schema).
        self.assertEqual(codec.decode(fixture("v1_state"), State), State(120, 3))

    def test_a_legacy_event_left_unconverted_fails_the_fold(self) -> None:
        class Forgetful(BankV2):
            def upcast(self, event: EventV2) -> EventV2:
                return event

        with self.assertRaisesRegex(FoldError, "legacy event Deposited"):
            Bridge(Forgetful()).fold(codec.encode(State()), pack_events([fixture("v1_event_deposited")]))


if __name__ == "__main__":
    unittest.main()
