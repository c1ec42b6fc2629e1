// The JavaScript counter (the tests of examples/counter in Rust): increments,
// a batch, a scheduled command and a sent one, as effects.
//
//     node --test examples/js/counter/

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { decode, encode } from '../../../guest-sdk/js/src/index.js';
import { TestKit } from '../../../guest-sdk/js/src/testkit.js';
import Counter, { Command, Event } from './counter.js';

const plain = (v) => JSON.parse(JSON.stringify(v));

test('increments and effects', () => {
  const t = new TestKit(Counter, 'c');
  t.when(Command.Increment({ by: 2 })).expectEvents(Event.Incremented({ by: 2 })).expectReply(2);
  assert.equal(t.when(Command.Batch({ count: 3 })).events.length, 3);
  assert.equal(t.state, 5);
  const later = t.when(Command.IncrementLater({ by: 5, delay_ms: 100 }));
  later.expectEvents().expectReply(5);
  assert.deepEqual(plain(later.scheduled), [[100, { type: 'Increment', by: 5 }]]);
  const fwd = t.when(Command.Forward({ entity_id: 'other', by: 3 }));
  fwd.expectEvents().expectReply(5);
  assert.deepEqual(plain(fwd.sent(Command)), [['counter', 'other', { type: 'Increment', by: 3 }]]);
  t.when(Command.Batch({ count: 0 })).expectRejected('between 1 and 1000');
  assert.equal(t.recover().state, 5);
});

test('commands and events are the Rust bytes', () => {
  // {"Incremented":{"by":2}} and {"Increment":{"by":5}} as rmp-serde writes them.
  assert.equal(Buffer.from(encode(Event.Incremented({ by: 2 }), Event)).toString('hex'), '81ab496e6372656d656e74656481a2627902');
  assert.equal(Buffer.from(encode(Command.Increment({ by: 5 }), Command)).toString('hex'), '81a9496e6372656d656e7481a2627905');
  assert.deepEqual(plain(decode(encode({ IncrementLater: { by: 1, delay_ms: 10 } }), Command)), { type: 'IncrementLater', by: 1, delay_ms: 10 });
});
