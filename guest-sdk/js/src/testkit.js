// Unit-test a behavior natively, without wasm: given these events, when this
// command, then these events and this reply. Everything goes through the
// byte Bridge, so the codecs run exactly as in the component
// (guest-sdk/src/testkit.rs and the Python test kit, in JavaScript).
// Failed expectations throw AssertionError (node:assert), so it works under
// `node --test` or any runner:
//
//   const kit = new TestKit(BankAccount, 'acct-1');
//   kit.given([Event.Deposited({ amount: 100 })]);
//   kit.when(Command.Withdraw({ amount: 30 }))
//     .expectEvents(Event.Withdrawn({ amount: 30 }))
//     .expectReply('ok');
//   assert.deepEqual(kit.state, { balance: 70, transactions: 2 });

import assert from 'node:assert/strict';

import { decode, encode, toJson } from './codec.js';
import { Bridge, CommandError, packEvents } from './bridge.js';
import { Context } from './entity.js';

const show = (v, schema) => {
  try {
    return toJson(v, schema);
  } catch {
    return String(v);
  }
};

/** What one command did. */
export class Outcome {
  constructor(kit, { events = [], reply, hasReply = false, effects = [], rejection = null }) {
    this._entity = kit.entity;
    /** Events the command persisted (decoded back from their bytes). */
    this.events = events;
    /** The reply (decoded back), or undefined. */
    this.reply = reply;
    this.hasReply = hasReply;
    /** Effects (commands encoded): { kind: 'send', entityType, entityId, command } | { kind: 'schedule', delayMs, command }. */
    this.effects = effects;
    /** The rejection reason, or null. */
    this.rejection = rejection;
  }

  get rejected() {
    return this.rejection !== null;
  }

  /** [delayMs, command] of each schedule effect, the command decoded. */
  get scheduled() {
    return this.effects.filter((e) => e.kind === 'schedule').map((e) => [e.delayMs, decode(e.command, this._entity.Command)]);
  }

  /** [entityType, entityId, command] of each send effect, the command decoded as `schema`. */
  sent(schema) {
    return this.effects.filter((e) => e.kind === 'send').map((e) => [e.entityType, e.entityId, decode(e.command, schema)]);
  }

  /**
   * Asserts the persisted events are exactly `events` (compared as their
   * schema reads them back, so a field left out of an expected event is
   * its default, a missing option `null`).
   */
  expectEvents(...events) {
    const ev = this._entity.Event;
    assert.deepStrictEqual(
      plain(this.events),
      events.map((e) => normalize(e, ev)),
      `expected events ${events.map((e) => show(e, ev)).join(', ') || 'none'}, got ${this.events.map((e) => show(e, ev)).join(', ') || 'none'}${this.rejected ? ` (rejected: ${this.rejection})` : ''}`,
    );
    return this;
  }

  /** Asserts the reply equals `reply`. */
  expectReply(reply) {
    assert.ok(this.hasReply, `expected reply ${JSON.stringify(reply)}, got no reply${this.rejected ? ` (rejected: ${this.rejection})` : ''}`);
    assert.deepStrictEqual(plain(this.reply), normalize(reply, this._entity.Reply));
    return this;
  }

  expectNoReply() {
    assert.ok(!this.hasReply, `expected no reply, got ${String(this.reply)}`);
    return this;
  }

  /** Asserts the command was rejected, with a reason containing `containing`. */
  expectRejected(containing = '') {
    assert.ok(this.rejected, `expected a rejection, got ${this.events.length} events and reply ${String(this.reply)}`);
    assert.ok(this.rejection.includes(containing), `expected a rejection containing ${JSON.stringify(containing)}, got ${JSON.stringify(this.rejection)}`);
    return this;
  }
}

/** `v` as `schema` reads it back (defaults filled in), or as given if it does not encode. */
function normalize(v, schema) {
  try {
    return plain(decode(encode(v, schema), schema));
  } catch {
    return plain(v);
  }
}

/** A value with its union-schema marker dropped, for comparisons. */
function plain(v) {
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object' && !(v instanceof Uint8Array) && !(v instanceof Map)) {
    const o = {};
    for (const [k, x] of Object.entries(v)) o[k] = plain(x);
    return o;
  }
  return v;
}

/** A behavior under test, with its state, sequence number and journal. */
export class TestKit {
  constructor(entity, entityId = 'test-1') {
    this.entity = entity;
    this.bridge = new Bridge(entity);
    this.entityId = entityId;
    this.stateBytes = this.bridge.initialState();
    /** Sequence number of the last applied event. */
    this.seq = 0;
    /** Every event given or persisted so far, encoded: the host's journal. */
    this.journalBytes = [];
    /** Timestamp given to the next command. */
    this.nowMs = 1_700_000_000_000;
  }

  /** The current state, decoded from the bytes the bridge returned. */
  get state() {
    return plain(decode(this.stateBytes, this.entity.State));
  }

  /**
   * Applies past events through the packed `fold`, as recovery does. Events
   * are values or already encoded Uint8Arrays (e.g. written by another
   * version or language).
   */
  given(events) {
    const encoded = events.map((e) => (e instanceof Uint8Array ? e : encode(e, this.entity.Event)));
    this.stateBytes = this.bridge.fold(this.stateBytes, packEvents(encoded));
    this.seq += encoded.length;
    this.journalBytes.push(...encoded);
    return this;
  }

  /**
   * Runs a command; accepted events are applied to the state. A rejection
   * is an Outcome; a malformed command or a bad state throws the bridge's
   * CommandError.
   */
  when(command) {
    const ctx = new Context(this.entityId, this.seq + 1, this.nowMs);
    const cmd = command instanceof Uint8Array ? command : encode(command, this.entity.Command);
    let d;
    try {
      d = this.bridge.decide(ctx, this.stateBytes, cmd);
    } catch (e) {
      if (e instanceof CommandError && e.case === 'rejected') return new Outcome(this, { rejection: e.message });
      throw e;
    }
    if (d.state !== undefined) this.stateBytes = d.state;
    this.seq += d.events.length;
    this.journalBytes.push(...d.events);
    return new Outcome(this, {
      events: d.events.map((e) => plain(decode(e, this.entity.Event))),
      reply: d.reply !== undefined ? plain(decode(d.reply, this.entity.Reply)) : undefined,
      hasReply: d.reply !== undefined,
      effects: d.effects,
    });
  }

  /** Every event so far, decoded and upcast, in order (event i has sequence number i + 1). */
  journal() {
    return this.journalBytes.map((e) => plain(this.entity.upcast(decode(e, this.entity.Event))));
  }

  /** A fresh kit that replays this one's journal (a restart). */
  recover() {
    const k = new TestKit(this.entity, this.entityId);
    k.nowMs = this.nowMs;
    return k.given([...this.journalBytes]);
  }
}
