// Byte identity with the Rust SDK: every fixture written by
// guest-sdk/tests/codec_fixtures.rs (and checked by the Python SDK's
// test_fixtures.py) encodes, decodes and converts to JSON exactly as in
// Rust: JavaScript writes the same bytes, reads them back to the same value,
// and prints the same JSON text as serde_json.

import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { decodePaths } from '../src/codec.js';
import { decode, encode, fromJson, t, toJson } from '../src/index.js';

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'tests', 'fixtures');
const fixture = (name) => new Uint8Array(readFileSync(join(FIXTURES, `${name}.bin`)));
const fixtureNames = () => readdirSync(FIXTURES).filter((f) => f.endsWith('.bin')).map((f) => f.slice(0, -4)).sort();

/** codec.json: name → the exact JSON text serde_json wrote (one line each). */
function jsonTexts() {
  const out = {};
  for (let line of readFileSync(join(FIXTURES, 'codec.json'), 'utf8').split('\n')) {
    line = line.trim();
    if (!line.startsWith('"')) continue;
    const at = line.indexOf('": ');
    let text = line.slice(at + 3);
    if (text.endsWith(',')) text = text.slice(0, -1);
    out[line.slice(1, at)] = text;
  }
  return out;
}

// The Rust types of codec_fixtures.rs, as schemas.
const State = t.struct('State', { balance: t.i64, transactions: t.u64 });
const Command = t.union('Command', { Deposit: { amount: t.i64 }, Withdraw: { amount: t.i64 }, GetBalance: null });
const EventV1 = t.union('Event', { Deposited: { amount: t.i64 }, Withdrawn: { amount: t.i64 } });
const Reply = t.untagged(t.string, t.i64);
const EventV2 = t.union('Event', {
  Credited: { amount: t.i64, source: t.string },
  Withdrawn: { amount: t.i64, fee_waived: t.field(t.bool, { default: false }) },
  FeeCharged: { amount: t.i64 },
});
const Shape = t.union('Shape', {
  Unit: null,
  Newtype: t.newtype(t.u64),
  Tuple: t.tuple(t.i64, t.string),
  Struct: { x: t.i64, y: t.option(t.string) },
});
const Optionals = t.struct('Optionals', { a: t.option(t.i64), b: t.option(t.string), c: t.option(t.list(t.u8)), d: t.option(Shape) });
const Lists = t.struct('Lists', {
  empty: t.list(t.i64),
  words: t.list(t.string),
  bytes: t.list(t.u8),
  nested: t.list(t.list(t.i64)),
  sixteen: t.list(t.u32),
});
const Scalars = t.struct('Scalars', {
  yes: t.bool,
  no: t.bool,
  half: t.f64,
  single: t.f32,
  letter: t.string,
  unit: t.unit,
  pair: t.tuple(t.i64, t.bool),
  meters: t.u32, // a newtype struct Meters(u32) is its content
  marker: t.unitStruct('Marker'),
});
const Order = t.struct('Order', { zebra: t.u8, apple: t.u8, mango: t.u8 });

const f32 = Math.fround;
const I64_EDGES = [
  0, 1, 127, 128, 255, 256, 65_535, 65_536, 4_294_967_295, 4_294_967_296, 2n ** 63n - 1n,
  -1, -32, -33, -128, -129, -32_768, -32_769, -2_147_483_648, -2_147_483_649,
  -(2n ** 63n) + 1n, -(2n ** 63n), -100,
];
const U64_EDGES = [0, 127, 128, 255, 256, 65_535, 65_536, 4_294_967_296, 2n ** 64n - 1n];
const map = {};
for (let i = 0; i < 16; i++) map[`k${String(i).padStart(2, '0')}`] = i - 8;

/** name → [value, schema]: every fixture of codec_fixtures.rs. */
const FIXTURE_VALUES = {
  v1_event_deposited: [EventV1.Deposited({ amount: 100 }), EventV1],
  v1_event_withdrawn: [EventV1.Withdrawn({ amount: 30 }), EventV1],
  v1_event_deposited_large: [EventV1.Deposited({ amount: 1_000_000 }), EventV1],
  v1_state_initial: [{ balance: 0, transactions: 0 }, State],
  v1_state: [{ balance: 120, transactions: 3 }, State],
  v1_state_negative: [{ balance: -7, transactions: 70_000 }, State],
  v1_command_deposit: [Command.Deposit({ amount: 100 }), Command],
  v1_command_withdraw: [Command.Withdraw({ amount: 30 }), Command],
  v1_command_withdraw_negative: [Command.Withdraw({ amount: -5 }), Command],
  v1_command_get_balance: [Command.GetBalance(), Command],
  v1_reply_ok: ['ok', Reply],
  v1_reply_insufficient: ['insufficient funds (balance: 120)', Reply],
  v1_reply_balance: [120, Reply],
  v1_reply_balance_negative: [-7, Reply],
  v2_event_credited: [EventV2.Credited({ amount: 100, source: 'deposit' }), EventV2],
  v2_event_withdrawn: [EventV2.Withdrawn({ amount: 30, fee_waived: false }), EventV2],
  v2_event_fee_charged: [EventV2.FeeCharged({ amount: 1 }), EventV2],
  shape_unit: [Shape.Unit(), Shape],
  shape_newtype: [Shape.Newtype(7), Shape],
  shape_tuple: [Shape.Tuple([-1, 'x']), Shape],
  shape_struct: [Shape.Struct({ x: 300, y: 'y' }), Shape],
  optionals_some: [{ a: -200, b: 'inner', c: [1, 2, 255], d: Shape.Struct({ x: 1, y: null }) }, Optionals],
  optionals_none: [{ a: null, b: null, c: null, d: null }, Optionals],
  lists: [{ empty: [], words: ['', 'a'], bytes: [0, 127, 128, 255], nested: [[], [1, -1]], sixteen: [...Array(16).keys()] }, Lists],
  scalars: [{ yes: true, no: false, half: 0.5, single: -1.25, letter: 'é', unit: null, pair: [-3, true], meters: 70_000, marker: null }, Scalars],
  order: [{ zebra: 1, apple: 2, mango: 3 }, Order],
  ints_i64: [I64_EDGES.map(BigInt), t.list(t.big.i64)],
  ints_u64: [U64_EDGES.map(BigInt), t.list(t.big.u64)],
  strings: [
    ['', 'héllo wörld ✓ 🦀', 'quote " backslash \\ newline \n tab \t nul \0', 'x'.repeat(31), 'x'.repeat(32), 'x'.repeat(255), 'x'.repeat(256)],
    t.list(t.string),
  ],
  floats_f64: [
    [0.0, -0.0, 3.0, 0.1, -2.5e-10, 1e-5, 1e-6, 1e15, 1e16, 1e17, 123_456.789, 1_234_567_890_123_456.8, 1.5e300, 5e-324, 1.7976931348623157e308],
    t.list(t.f64),
  ],
  floats_f32: [[0.1, -1.25, 1e10, 1e13, 1e14, 1e-5, 1e-6, 1e-7, 16_777_216.0, 3.4028234663852886e38].map(f32), t.list(t.f32)],
  map: [map, t.map(t.string, t.i64)],
};

const hex = (b) => Buffer.from(b).toString('hex');
/** Drops the union marker so values compare as plain data. */
const plain = (v) => (v && typeof v === 'object' && !ArrayBuffer.isView(v) ? (Array.isArray(v) ? v.map(plain) : Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]))) : v);

test('every Rust fixture has a JavaScript value', () => {
  assert.deepEqual(Object.keys(FIXTURE_VALUES).sort(), fixtureNames());
  assert.deepEqual(Object.keys(jsonTexts()).sort(), fixtureNames());
});

for (const [name, [value, schema]] of Object.entries(FIXTURE_VALUES)) {
  test(`fixture ${name}: encodes to the Rust bytes, decodes back, prints serde_json's text, reads its JSON back`, () => {
    const bytes = fixture(name);
    assert.equal(hex(encode(value, schema)), hex(bytes), 'encode');
    const decoded = decode(bytes, schema);
    assert.deepStrictEqual(plain(decoded), plain(value), 'decode');
    assert.equal(hex(encode(decoded, schema)), hex(bytes), 're-encode');
    const text = jsonTexts()[name];
    assert.equal(toJson(value, schema), text, 'to JSON');
    const back = fromJson(text, schema);
    assert.deepStrictEqual(plain(back), plain(value), 'from JSON');
    assert.equal(hex(encode(back, schema)), hex(bytes), 'from JSON, encoded');
  });
}

test('the fast decoding path agrees with the general one', () => {
  // decode reads the usual bytes straight into values and leaves anything
  // else to the general path (raw values, then conversion): both must give
  // the Rust values, and the fast path must answer for most fixtures.
  let fast = 0;
  for (const [name, [value, schema]] of Object.entries(FIXTURE_VALUES)) {
    assert.deepEqual(decodePaths.general(fixture(name), schema), value, name);
    let v;
    try {
      v = decodePaths.fast(fixture(name), schema);
    } catch {
      continue;
    }
    assert.deepEqual(v, value, name);
    fast += 1;
  }
  assert.ok(fast > Object.keys(FIXTURE_VALUES).length / 2, `the fast path answered for ${fast} fixtures`);
});

test('negative zero keeps its sign', () => {
  const floats = decode(fixture('floats_f64'), t.list(t.f64));
  assert.ok(Object.is(floats[1], -0));
});

test('beyond 2^53 an integer needs t.big: a number would lose it', () => {
  const bytes = encode(2n ** 53n + 1n, t.i64);
  assert.throws(() => decode(bytes, t.i64), /beyond JavaScript's safe integers .* t\.big\.i64/);
  assert.equal(decode(bytes, t.big.i64), 2n ** 53n + 1n);
  assert.equal(decode(encode(5, t.big.u64), t.big.u64), 5n);
  assert.equal(decode(encode(2 ** 53 - 1, t.i64), t.i64), 2 ** 53 - 1);
  assert.throws(() => fromJson('9007199254740993', t.i64), /t\.big\.i64/);
  assert.equal(fromJson('9007199254740993', t.big.i64), 9007199254740993n);
  assert.throws(() => decode(encode(-1), t.big.u64), /expected u64/);
});
