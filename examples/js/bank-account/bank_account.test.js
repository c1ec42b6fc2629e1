// The guide's figures for the JavaScript bank account (the same as
// examples/bank-account/src/lib.rs's tests and the Python ones), and byte
// identity of its events, state, commands and replies with the Rust bank
// account's (guest-sdk/tests/fixtures, written by the Rust SDK).
//
//     node --test examples/js/bank-account/

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { decode, encode } from '../../../guest-sdk/js/src/index.js';
import { TestKit } from '../../../guest-sdk/js/src/testkit.js';
import BankAccount, { Command, Event, Reply, State } from './bank_account.js';

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'guest-sdk', 'tests', 'fixtures');
const rust = (name) => new Uint8Array(readFileSync(join(FIXTURES, `${name}.bin`)));

const { Deposit, Withdraw, GetBalance } = Command;
const { Deposited, Withdrawn } = Event;

test('the guide, phase 1: deposits, a withdrawal, a refused one, the balance', () => {
  const t = new TestKit(BankAccount, 'acct-1');
  t.when(Deposit({ amount: 100 })).expectReply('ok');
  t.when(Deposit({ amount: 50 })).expectReply('ok');
  t.when(Withdraw({ amount: 30 })).expectEvents(Withdrawn({ amount: 30 })).expectReply('ok');
  t.when(Withdraw({ amount: 999 })).expectEvents().expectReply('insufficient funds (balance: 120)');
  t.when(GetBalance()).expectReply(120);
  // "Journal has 3 events".
  assert.deepEqual(t.journal(), [
    { type: 'Deposited', amount: 100 },
    { type: 'Deposited', amount: 50 },
    { type: 'Withdrawn', amount: 30 },
  ]);
  assert.equal(t.seq, 3);
  assert.deepEqual(t.state, { balance: 120, transactions: 3 });
});

test('the guide, phase 3: seven deposits of 10', () => {
  const t = new TestKit(BankAccount, 'acct-2');
  for (let i = 0; i < 5; i++) t.when(Deposit({ amount: 10 }));
  assert.deepEqual(t.state, { balance: 50, transactions: 5 });
  for (let i = 0; i < 2; i++) t.when(Deposit({ amount: 10 }));
  t.when(GetBalance()).expectReply(70);
  assert.equal(t.journal().length, 7);
  // A restart replays the journal to the same state.
  assert.deepEqual(t.recover().state, { balance: 70, transactions: 7 });
});

test('recovery from events', () => {
  const t = new TestKit(BankAccount, 'acct-1');
  t.given([Deposited({ amount: 100 }), Deposited({ amount: 50 }), Withdrawn({ amount: 30 })]);
  t.when(GetBalance()).expectReply(120);
});

test('non-positive amounts are rejected', () => {
  const t = new TestKit(BankAccount, 'a');
  t.when(Deposit({ amount: -5 })).expectRejected('amount must be positive, got -5').expectEvents();
  t.when(Withdraw({ amount: 0 })).expectRejected('positive');
  assert.deepEqual(t.journal(), []);
});

test('a failing expectation fails the test', () => {
  const t = new TestKit(BankAccount, 'a');
  assert.throws(() => t.when(Deposit({ amount: 5 })).expectReply('nope'), assert.AssertionError);
  assert.throws(() => t.when(Deposit({ amount: 5 })).expectEvents(Deposited({ amount: 6 })), assert.AssertionError);
  assert.throws(() => t.when(GetBalance()).expectRejected(), assert.AssertionError);
});

test('replies, commands, events and state render as the guide prints them', () => {
  const b = new TestKit(BankAccount).bridge;
  for (const [reply, json] of [
    ['ok', '"ok"'],
    ['insufficient funds (balance: 120)', '"insufficient funds (balance: 120)"'],
    [120, '120'],
    [-7, '-7'],
  ]) {
    assert.equal(b.replyToJson(encode(reply, Reply)), json);
  }
  assert.deepEqual({ ...decode(b.commandFromJson('{"Deposit":{"amount":100}}'), Command) }, { type: 'Deposit', amount: 100 });
  assert.deepEqual({ ...decode(b.commandFromJson('"GetBalance"'), Command) }, { type: 'GetBalance' });
  assert.throws(() => b.commandFromJson('{"Steal":{"amount":5}}'), /not a valid bank-account command: unknown variant `Steal`/);
  assert.equal(b.eventToJson(encode(Withdrawn({ amount: 30 }))), '{"Withdrawn":{"amount":30}}');
  assert.equal(b.stateToJson(encode({ balance: 120, transactions: 3 }, State)), '{"balance":120,"transactions":3}');
});

test('a JavaScript journal is a Rust journal', () => {
  const t = new TestKit(BankAccount, 'acct-1');
  t.when(Deposit({ amount: 100 }));
  t.when(Withdraw({ amount: 30 }));
  assert.deepEqual(t.journalBytes, [rust('v1_event_deposited'), rust('v1_event_withdrawn')]);
});

test('values encode to the Rust bytes', () => {
  for (const [value, schema, name] of [
    [Deposited({ amount: 100 }), Event, 'v1_event_deposited'],
    [Withdrawn({ amount: 30 }), Event, 'v1_event_withdrawn'],
    [Deposited({ amount: 1_000_000 }), Event, 'v1_event_deposited_large'],
    [BankAccount.initialState(), State, 'v1_state_initial'],
    [{ balance: 120, transactions: 3 }, State, 'v1_state'],
    [{ balance: -7, transactions: 70_000 }, State, 'v1_state_negative'],
    [Deposit({ amount: 100 }), Command, 'v1_command_deposit'],
    [Withdraw({ amount: 30 }), Command, 'v1_command_withdraw'],
    [GetBalance(), Command, 'v1_command_get_balance'],
    ['ok', Reply, 'v1_reply_ok'],
    ['insufficient funds (balance: 120)', Reply, 'v1_reply_insufficient'],
    [120, Reply, 'v1_reply_balance'],
    [-7, Reply, 'v1_reply_balance_negative'],
  ]) {
    assert.deepEqual(encode(value, schema), rust(name), name);
  }
});

test('a Rust history replays in JavaScript', () => {
  const t = new TestKit(BankAccount, 'acct-1');
  t.given([rust('v1_event_deposited'), rust('v1_event_deposited'), rust('v1_event_withdrawn')]);
  assert.deepEqual(t.stateBytes, encode({ balance: 170, transactions: 3 }, State));
  t.when(Withdraw({ amount: 999 })).expectReply('insufficient funds (balance: 170)');
});

test('the initial state is the Rust one', () => {
  assert.deepEqual(new TestKit(BankAccount).bridge.initialState(), rust('v1_state_initial'));
});
