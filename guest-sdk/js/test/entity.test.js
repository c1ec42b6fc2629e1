// The entity model, the byte bridge and the test kit (the tests of
// guest-sdk/src/testkit.rs and of the Python SDK's test_entity.py), and a
// JavaScript v2 replaying Rust v1 history through an upcast.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { Context, Decision, decode, defineEntity, encode, t } from '../src/index.js';
import { Bridge, CommandError, FoldError, JsonError, packEvents } from '../src/bridge.js';
import { behaviorExports } from '../src/component.js';
import { TestKit } from '../src/testkit.js';

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'tests', 'fixtures');
const fixture = (name) => new Uint8Array(readFileSync(join(FIXTURES, `${name}.bin`)));
const plain = (v) => JSON.parse(JSON.stringify(v));

const Event = t.union('Event', {
  Added: { n: t.u64, note: t.option(t.string) },
  Reset: null,
});
const Command = t.union('Command', {
  Add: t.newtype(t.u64),
  DoReset: t.variant(null, { name: 'Reset' }),
  Later: t.newtype(t.u64),
  Tell: t.newtype(t.string),
});

/** Rust's testkit `Sum`, with a send and a schedule. */
const Sum = defineEntity({
  name: 'sum',
  version: '2.0.0',
  State: t.u64,
  Command,
  Event,
  Reply: t.u64,
  initialState: () => 0,
  onCommand(ctx, state, command) {
    switch (command.type) {
      case 'Add':
        if (command.value === 0) return Decision.reject('nothing to add');
        return Decision.persist([Event.Added({ n: command.value })]).thenReply(state + command.value);
      case 'DoReset':
        return Decision.persist(Event.Reset());
      case 'Later':
        return Decision.none().schedule(1000, Command.Add(command.value));
      case 'Tell':
        return Decision.reply(state).send('sum', command.value, Command.Add(state));
    }
    throw new Error(`unknown ${command.type}`);
  },
  onEvent(state, event) {
    return event.type === 'Added' ? state + event.n : 0;
  },
});

const CTX = new Context('x', 1, 0);
const zero = encode(0);

test('describe and initial state', () => {
  const b = new Bridge(Sum);
  assert.deepEqual(b.describe(), { name: 'sum', version: '2.0.0', stateSchema: 1 });
  assert.deepEqual(b.initialState(), new Uint8Array([0]));
});

test('decide: events, state, reply, effects', () => {
  const b = new Bridge(Sum);
  let d = b.decide(CTX, zero, encode(Command.Add(4)));
  assert.deepEqual(d.events, [encode(Event.Added({ n: 4 }), Event)]);
  assert.deepEqual(d.state, encode(4));
  assert.deepEqual(d.reply, encode(4));
  d = b.decide(CTX, zero, encode(Command.Later(7)));
  assert.deepEqual([d.events, d.state, d.reply], [[], undefined, undefined]);
  assert.equal(d.effects[0].kind, 'schedule');
  assert.equal(d.effects[0].delayMs, 1000);
  assert.deepEqual(plain(decode(d.effects[0].command, Command)), { type: 'Add', value: 7 });
});

test('old events decode with a new field', () => {
  const b = new Bridge(Sum);
  const old = encode({ Added: { n: 5 } });
  assert.deepEqual(plain(decode(old, Event)), { type: 'Added', n: 5, note: null });
  assert.deepEqual(b.fold(zero, packEvents([old, old])), encode(10));
});

test('bad bytes are errors of the contract, never crashes', () => {
  const b = new Bridge(Sum);
  const err = (f) => {
    try {
      f();
    } catch (e) {
      return e;
    }
    assert.fail('no error');
  };
  assert.equal(err(() => b.decide(CTX, zero, new Uint8Array([0xc1]))).case, 'malformed');
  assert.equal(err(() => b.decide(CTX, new Uint8Array([0xc1]), encode(Command.Add(1)))).case, 'bad-state');
  const r = err(() => b.decide(CTX, zero, encode(Command.Add(0))));
  assert.ok(r instanceof CommandError);
  assert.deepEqual([r.case, r.message], ['rejected', 'nothing to add']);
  const ev = encode(Event.Reset());
  let e = err(() => b.fold(zero, packEvents([ev, ev]).subarray(0, -1)));
  assert.ok(e instanceof FoldError);
  assert.equal(e.index, 1);
  assert.match(e.detail, /truncated/);
  e = err(() => b.fold(zero, new Uint8Array([1, 0])));
  assert.equal(e.index, 0);
  e = err(() => b.fold(zero, packEvents([new Uint8Array([0xc1])])));
  assert.match(e.detail, /decode/);
  assert.ok(err(() => b.fold(new Uint8Array([0xc1]), new Uint8Array())) instanceof FoldError);
  // Truncated or hostile input.
  assert.match(err(() => decode(new Uint8Array([0x92, 0x01]))).message, /unexpected end/);
  const deep = new Uint8Array(2000).fill(0x91);
  assert.match(err(() => decode(deep)).message, /depth/);
});

test('JSON codecs', () => {
  const b = new Bridge(Sum);
  assert.throws(() => b.commandFromJson('{nope'), (e) => e instanceof JsonError && /not a valid sum command/.test(e.message));
  assert.equal(b.eventToJson(encode(Event.Reset())), '"Reset"');
  assert.deepEqual(b.commandFromJson('{"Add":3}'), encode(Command.Add(3)));
  assert.deepEqual(b.commandFromJson('"Reset"'), encode(Command.DoReset()));
  assert.equal(b.stateToJson(encode(9)), '9');
  assert.throws(() => b.replyToJson(new Uint8Array([0xa1, 0x78])), /cannot decode the reply/);
});

test('the test kit: given, when, expect', () => {
  const k = new TestKit(Sum, 's');
  k.given([Event.Added({ n: 2 }), Event.Added({ n: 3 })]);
  assert.equal(k.state, 5);
  k.when(Command.Add(4)).expectEvents(Event.Added({ n: 4 })).expectReply(9);
  assert.equal(k.seq, 3);
  k.when(Command.Add(0)).expectRejected('nothing').expectEvents();
  assert.equal(k.state, 9);
  let out = k.when(Command.Later(7));
  out.expectEvents().expectNoReply();
  assert.deepEqual(plain(out.scheduled), [[1000, { type: 'Add', value: 7 }]]);
  out = k.when(Command.Tell('other'));
  assert.deepEqual(plain(out.sent(Command)), [['sum', 'other', { type: 'Add', value: 9 }]]);
  k.when(Command.DoReset());
  assert.equal(k.state, 0);
  assert.deepEqual(k.journal(), [
    { type: 'Added', n: 2, note: null },
    { type: 'Added', n: 3, note: null },
    { type: 'Added', n: 4, note: null },
    { type: 'Reset' },
  ]);
  assert.equal(k.recover().state, 0);
});

test('failed expectations are assertion errors', () => {
  const out = new TestKit(Sum).when(Command.Add(1));
  assert.throws(() => out.expectEvents(Event.Added({ n: 2 })), assert.AssertionError);
  assert.throws(() => out.expectReply(2), assert.AssertionError);
  assert.throws(() => out.expectRejected(), assert.AssertionError);
});

test('the WIT glue maps errors and effects the way componentize-js lowers them', () => {
  const x = behaviorExports(Sum);
  const ctx = { entityId: 'x', nextSeq: 1n, timestampMs: 0n };
  const d = x.decide(ctx, zero, encode(Command.Tell('y')));
  assert.deepEqual(d.effects[0], { tag: 'send', val: { entityType: 'sum', entityId: 'y', command: encode(Command.Add(0)) } });
  const s = x.decide(ctx, zero, encode(Command.Later(1)));
  assert.deepEqual(s.effects[0], { tag: 'schedule', val: { delayMs: 1000n, command: encode(Command.Add(1)) } });
  assert.throws(() => x.decide(ctx, zero, encode(Command.Add(0))), (e) => e.payload.tag === 'rejected' && e.payload.val === 'nothing to add');
  assert.throws(() => x.fold(zero, new Uint8Array([1])), (e) => e.payload.index === 0 && /truncated/.test(e.payload.message));
  assert.throws(() => x.commandFromJson('[]'), (e) => typeof e.payload === 'string' && /not a valid sum command/.test(e.payload));
});

// A JavaScript v2 of the bank account reading the Rust v1 history: a
// reshape through a legacy variant and the upcast hook, a new field with a
// default, a new variant.
const EventV2 = t.union('Event', {
  Deposited: t.variant({ amount: t.i64 }, { legacy: true }),
  Credited: { amount: t.i64, source: t.string },
  Withdrawn: { amount: t.i64, fee_waived: t.field(t.bool, { default: false }) },
  FeeCharged: { amount: t.i64 },
});
const StateV2 = t.struct('State', { balance: t.field(t.i64, { default: 0 }), transactions: t.field(t.u64, { default: 0 }) });
const bankV2 = (upcast) =>
  defineEntity({
    name: 'bank-account',
    version: '2.0.0',
    State: StateV2,
    Command: t.union('Noop', {}),
    Event: EventV2,
    Reply: t.unit,
    onCommand: () => Decision.none(),
    upcast,
    onEvent(state, event) {
      if (event.type === 'Credited') state.balance += event.amount;
      else state.balance -= event.amount;
      state.transactions += 1;
    },
  });
const BankV2 = bankV2((e) => (e.type === 'Deposited' ? EventV2.Credited({ amount: e.amount, source: 'deposit' }) : e));

test('a JavaScript v2 replays Rust v1 history', () => {
  const rustV1 = [fixture('v1_event_deposited'), fixture('v1_event_deposited'), fixture('v1_event_withdrawn')];
  const k = new TestKit(BankV2, 'acct-1');
  k.given([...rustV1, fixture('v2_event_fee_charged')]);
  assert.deepEqual(k.state, { balance: 169, transactions: 4 });
  assert.deepEqual(k.stateBytes, encode({ balance: 169, transactions: 4 }, StateV2));
  assert.deepEqual(k.journal(), [
    { type: 'Credited', amount: 100, source: 'deposit' },
    { type: 'Credited', amount: 100, source: 'deposit' },
    { type: 'Withdrawn', amount: 30, fee_waived: false },
    { type: 'FeeCharged', amount: 1 },
  ]);
  assert.equal(k.bridge.eventToJson(fixture('v1_event_deposited')), '{"Credited":{"amount":100,"source":"deposit"}}');
  // A Rust v1 state snapshot carries over (same schema).
  assert.deepEqual(decode(fixture('v1_state'), StateV2), { balance: 120, transactions: 3 });
  // And the new variant is the Rust v2's bytes.
  assert.deepEqual(encode(EventV2.Credited({ amount: 100, source: 'deposit' }), EventV2), fixture('v2_event_credited'));
});

test('a legacy event left unconverted fails the fold', () => {
  const forgetful = bankV2((e) => e);
  assert.throws(
    () => new Bridge(forgetful).fold(encode({}, StateV2), packEvents([fixture('v1_event_deposited')])),
    (e) => e instanceof FoldError && /legacy event Deposited/.test(e.message),
  );
});

test('a definition without its parts is refused', () => {
  assert.throws(() => defineEntity({ name: 'x' }), /`version` is required/);
  assert.throws(() => defineEntity({ name: 'x', version: '1', State: {}, Command, Event, onCommand() {}, onEvent() {} }), /must be a codec schema/);
});

test('the WIT glue takes the bytes componentize-js hands over: Array, ArrayBuffer or Uint8Array', () => {
  const x = behaviorExports(Sum);
  const ctx = { entityId: 'x', nextSeq: 1n, timestampMs: 0n };
  const cmd = encode(Command.Add(2));
  for (const [state, command] of [
    [[0], Array.from(cmd)],
    [new Uint8Array([0]).buffer, cmd.slice().buffer],
  ]) {
    assert.deepEqual(x.decide(ctx, state, command).state, encode(2));
  }
  assert.equal(x.stateToJson([5]), '5');
});

test('in a component, Date reads the command timestamp', async () => {
  const { installGuestGlobals } = await import('../src/component.js');
  const saved = { Date: globalThis.Date, log: console.log, now: globalThis.performance.now };
  try {
    installGuestGlobals();
    const Clock = defineEntity({
      name: 'clock',
      version: '1',
      State: t.i64,
      Command: t.union('C', { Now: null }),
      Event: t.union('E', {}),
      Reply: t.tuple(t.f64, t.string),
      initialState: () => 0,
      onCommand: () => {
        console.log('dropped by the component glue');
        return Decision.reply([Date.now(), new Date().toISOString()]);
      },
      onEvent: (s) => s,
    });
    const x = behaviorExports(Clock);
    const d = x.decide({ entityId: 'c', nextSeq: 1n, timestampMs: 1_700_000_000_123n }, encode(0), encode('Now'));
    assert.deepEqual(decode(d.reply), [1_700_000_000_123, '2023-11-14T22:13:20.123Z']);
    assert.equal(Date.now(), 0, 'outside onCommand the clock shows 0');
  } finally {
    globalThis.Date = saved.Date;
    console.log = saved.log;
    globalThis.performance.now = saved.now;
  }
});
