// The JavaScript bank account v3 (the tests of examples/bank-account-v3 in
// Rust): the state in cents with state schema 2, rebuilt from v1 and v2
// histories (the Rust SDK's fixtures), and the same event bytes as v2.
//
//     node --test examples/js/bank-account-v3/

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { encode } from '../../../guest-sdk/js/src/index.js';
import { TestKit } from '../../../guest-sdk/js/src/testkit.js';
import BankAccount, { Command, Event, FEE } from './bank_account_v3.js';

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'guest-sdk', 'tests', 'fixtures');
const rust = (name) => new Uint8Array(readFileSync(join(FIXTURES, `${name}.bin`)));

test('the state is kept in cents, under state schema 2', () => {
  const t = new TestKit(BankAccount, 'acct-1');
  t.given([Event.Credited({ amount: 150, source: 'deposit' })]);
  t.when(Command.Withdraw({ amount: 100 }))
    .expectEvents(Event.Withdrawn({ amount: 100, fee_waived: false }), Event.FeeCharged({ amount: FEE }))
    .expectReply('ok (fee 1)');
  assert.deepEqual(t.state, { cents: 4_900, transactions: 3, fees_paid: 1 });
  t.when(Command.GetBalance()).expectReply(49);
  assert.equal(t.bridge.describe().stateSchema, 2);
  assert.equal(t.bridge.stateToJson(t.stateBytes), '{"cents":4900,"transactions":3,"fees_paid":1}');
});

test('a Rust v1 history and a v2 fee rebuild the state in cents', () => {
  const t = new TestKit(BankAccount, 'acct-1');
  t.given([
    rust('v1_event_deposited'),
    rust('v1_event_deposited'),
    rust('v1_event_withdrawn'),
    rust('v2_event_fee_charged'),
  ]);
  assert.deepEqual(t.state, { cents: 16_900, transactions: 4, fees_paid: 1 });
  t.when(Command.GetBalance()).expectReply(169);
  t.when(Command.Withdraw({ amount: 999 })).expectEvents().expectReply('insufficient funds (balance: 169)');
});

test('the rules of v2 still hold', () => {
  const t = new TestKit(BankAccount, 'a');
  t.when(Command.Deposit({ amount: -5 })).expectRejected('amount must be positive, got -5');
  t.when(Command.Deposit({ amount: 500 })).expectReply('ok');
  t.when(Command.Withdraw({ amount: 100 })).expectEvents(Event.Withdrawn({ amount: 100 })).expectReply('ok');
  t.when(Command.Withdraw({ amount: 400 }))
    .expectEvents(Event.Withdrawn({ amount: 400, fee_waived: true }))
    .expectReply('ok');
  assert.deepEqual(t.state, { cents: 0, transactions: 3, fees_paid: 0 });
});

test('its events are the Rust v2 bytes', () => {
  const t = new TestKit(BankAccount, 'acct-1');
  t.when(Command.Deposit({ amount: 100 })).expectReply('ok');
  assert.deepEqual(t.journalBytes, [rust('v2_event_credited')]);
  assert.deepEqual(encode(Event.Withdrawn({ amount: 30 }), Event), rust('v2_event_withdrawn'));
  assert.deepEqual(encode(Event.FeeCharged({ amount: 1 }), Event), rust('v2_event_fee_charged'));
});
