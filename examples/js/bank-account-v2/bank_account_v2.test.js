// The JavaScript bank account v2 (the tests of examples/bank-account-v2 in
// Rust), and its bytes against the Rust SDK's v1 and v2 fixtures: it
// replays a Rust v1 history through its upcast and writes the events Rust
// v2 writes.
//
//     node --test examples/js/bank-account-v2/

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { decode, encode } from '../../../guest-sdk/js/src/index.js';
import { TestKit } from '../../../guest-sdk/js/src/testkit.js';
import BankAccount, { Command, Event, FEE, State } from './bank_account_v2.js';

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'guest-sdk', 'tests', 'fixtures');
const rust = (name) => new Uint8Array(readFileSync(join(FIXTURES, `${name}.bin`)));

test('v1 events decode as v2 (upcast, a new field with its default)', () => {
  const b = new TestKit(BankAccount).bridge;
  assert.equal(b.eventToJson(encode({ Deposited: { amount: 7 } })), '{"Credited":{"amount":7,"source":"deposit"}}');
  assert.equal(b.eventToJson(encode({ Withdrawn: { amount: 3 } })), '{"Withdrawn":{"amount":3,"fee_waived":false}}');
});

test('a withdrawal below the minimum costs a fee', () => {
  const t = new TestKit(BankAccount, 'acct-1');
  t.given([Event.Credited({ amount: 150, source: 'deposit' })]);
  t.when(Command.Withdraw({ amount: 100 }))
    .expectEvents(Event.Withdrawn({ amount: 100, fee_waived: false }), Event.FeeCharged({ amount: FEE }))
    .expectReply('ok (fee 1)');
  assert.equal(t.state.balance, 49);
});

test('above the minimum there is no fee', () => {
  const t = new TestKit(BankAccount, 'acct-1');
  t.given([Event.Credited({ amount: 500, source: 'deposit' })]);
  assert.equal(t.when(Command.Withdraw({ amount: 100 })).events.length, 1);
  assert.equal(t.state.balance, 400);
});

test('a Rust v1 history replays through the upcast', () => {
  const t = new TestKit(BankAccount, 'acct-1');
  t.given([rust('v1_event_deposited'), rust('v1_event_deposited'), rust('v1_event_withdrawn')]);
  assert.deepEqual(t.state, { balance: 170, transactions: 3 });
  assert.deepEqual(t.journal(), [
    { type: 'Credited', amount: 100, source: 'deposit' },
    { type: 'Credited', amount: 100, source: 'deposit' },
    { type: 'Withdrawn', amount: 30, fee_waived: false },
  ]);
  // A v1 snapshot carries over (same state schema).
  assert.deepEqual(decode(rust('v1_state'), State), { balance: 120, transactions: 3 });
});

test('new events are the Rust v2 bytes', () => {
  const t = new TestKit(BankAccount, 'acct-1');
  t.when(Command.Deposit({ amount: 100 })).expectReply('ok');
  assert.deepEqual(t.journalBytes, [rust('v2_event_credited')]);
  assert.deepEqual(encode(Event.Withdrawn({ amount: 30 }), Event), rust('v2_event_withdrawn'));
  assert.deepEqual(encode(Event.FeeCharged({ amount: 1 }), Event), rust('v2_event_fee_charged'));
});

test('a legacy event is never written', () => {
  // Deposits are Credited now; the legacy shape only decodes.
  const t = new TestKit(BankAccount);
  assert.equal(t.when(Command.Deposit({ amount: 5 })).events[0].type, 'Credited');
});
