// The byte-level face of a behavior: the functions the WIT world
// cairn:entity/behavior exports (wit/entity.wit), as plain JavaScript over
// Uint8Arrays, mirroring guest-sdk/src/bridge.rs and the Python bridge.
// component.js maps them onto the WIT exports; the test kit calls them
// natively. Bad bytes only ever raise the errors below; an exception from the
// behavior's own code propagates (a trap in the component, like a Rust
// panic: the host fails the command and restarts the entity).

import { CodecError, decode, encode, fromJson, toJson } from './codec.js';
import { apply, applyStored } from './entity.js';

/** Why a command produced no decision (WIT command-error): case 'rejected' | 'malformed' | 'bad-state'. */
export class CommandError extends Error {
  constructor(kase, message) {
    super(message);
    this.name = 'CommandError';
    this.case = kase;
  }
}

/** An event of a batch could not be applied (WIT fold-error). */
export class FoldError extends Error {
  constructor(index, message) {
    super(`event ${index}: ${message}`);
    this.name = 'FoldError';
    this.index = index;
    this.detail = message;
  }
}

/** A tooling codec failed. */
export class JsonError extends Error {
  constructor(message) {
    super(message);
    this.name = 'JsonError';
  }
}

function codecOnly(e) {
  if (!(e instanceof CodecError)) throw e;
  return e.message;
}

/** Packs events for `fold`: each a little-endian u32 length and its bytes. */
export function packEvents(events) {
  const total = events.reduce((n, e) => n + 4 + e.length, 0);
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let pos = 0;
  for (const e of events) {
    view.setUint32(pos, e.length, true);
    out.set(e, pos + 4);
    pos += 4 + e.length;
  }
  return out;
}

/** One behavior's exports over bytes. */
export class Bridge {
  constructor(entity) {
    if (!entity?.__cairnEntity) throw new TypeError('Bridge needs a behavior made by defineEntity');
    this.entity = entity;
  }

  describe() {
    const e = this.entity;
    return { name: e.name, version: e.version, stateSchema: e.stateSchema };
  }

  initialState() {
    return encode(this.entity.initialState(), this.entity.State);
  }

  /**
   * Decodes the command and state, runs onCommand, folds the new events into
   * the state, encodes everything: { events, reply (or undefined), effects
   * ({ kind: 'send', entityType, entityId, command } | { kind: 'schedule',
   * delayMs, command }, commands encoded), state (undefined without events) }.
   */
  decide(ctx, state, command) {
    const e = this.entity;
    let cmd;
    let st;
    try {
      cmd = decode(command, e.Command);
    } catch (x) {
      throw new CommandError('malformed', codecOnly(x));
    }
    try {
      st = decode(state, e.State);
    } catch (x) {
      throw new CommandError('bad-state', codecOnly(x));
    }
    const d = e.onCommand(ctx, st, cmd);
    if (!d || typeof d !== 'object' || !Array.isArray(d.events)) {
      throw new CommandError('bad-state', 'onCommand returned no Decision');
    }
    if (d.rejection !== null && d.rejection !== undefined) throw new CommandError('rejected', d.rejection);
    const effects = [];
    for (let i = 0; i < d.effects.length; i++) {
      const f = d.effects[i];
      try {
        if (f.kind === 'send') {
          effects.push({ kind: 'send', entityType: f.entityType, entityId: f.entityId, command: encode(f.command, f.schema) });
        } else {
          effects.push({ kind: 'schedule', delayMs: f.delayMs, command: encode(f.command, e.Command) });
        }
      } catch (x) {
        throw new CommandError('bad-state', `cannot encode a ${f.kind === 'send' ? 'sent' : 'scheduled'} command: ${codecOnly(x)}`);
      }
    }
    const events = [];
    for (let i = 0; i < d.events.length; i++) {
      const ev = d.events[i];
      try {
        events.push(encode(ev, e.Event));
      } catch (x) {
        throw new CommandError('bad-state', `cannot encode event: ${codecOnly(x)}`);
      }
      st = apply(e, st, ev);
    }
    let newState;
    if (events.length) {
      try {
        newState = encode(st, e.State);
      } catch (x) {
        throw new CommandError('bad-state', `cannot encode state: ${codecOnly(x)}`);
      }
    }
    let reply;
    if (d.hasReply) {
      try {
        reply = encode(d.replyValue, e.Reply);
      } catch (x) {
        throw new CommandError('bad-state', `cannot encode reply: ${codecOnly(x)}`);
      }
    }
    return { events, reply, effects, state: newState };
  }

  /** Applies a packed batch of events to `state` (recovery): state decoded once, encoded once. */
  fold(state, events) {
    const e = this.entity;
    let st;
    try {
      st = decode(state, e.State);
    } catch (x) {
      throw new FoldError(0, `cannot decode the state: ${codecOnly(x)}`);
    }
    const view = new DataView(events.buffer, events.byteOffset, events.byteLength);
    let index = 0;
    let pos = 0;
    const n = events.length;
    while (pos < n) {
      if (pos + 4 > n) throw new FoldError(index, 'the packed batch is truncated');
      const size = view.getUint32(pos, true);
      pos += 4;
      if (pos + size > n) throw new FoldError(index, 'the packed batch is truncated');
      try {
        st = applyStored(e, st, decode(events.subarray(pos, pos + size), e.Event));
      } catch (x) {
        throw new FoldError(index, `cannot decode the event: ${codecOnly(x)}`);
      }
      pos += size;
      index++;
    }
    try {
      return encode(st, e.State);
    } catch (x) {
      throw new FoldError(index, `cannot encode the state: ${codecOnly(x)}`);
    }
  }

  /** JSON command → encoded command. */
  commandFromJson(json) {
    try {
      return encode(fromJson(json, this.entity.Command), this.entity.Command);
    } catch (x) {
      throw new JsonError(`not a valid ${this.entity.name} command: ${codecOnly(x)}`);
    }
  }

  _toJson(bytes, schema, what, upcast = false) {
    let v;
    try {
      v = decode(bytes, schema);
      if (upcast) v = this.entity.upcast(v);
    } catch (x) {
      throw new JsonError(`cannot decode the ${what}: ${codecOnly(x)}`);
    }
    try {
      return toJson(v, schema);
    } catch (x) {
      throw new JsonError(codecOnly(x));
    }
  }

  /** Encoded event → JSON, after the upcast (as the Rust SDK's #[serde(from)]). */
  eventToJson(event) {
    return this._toJson(event, this.entity.Event, 'event', true);
  }

  stateToJson(state) {
    return this._toJson(state, this.entity.State, 'state');
  }

  replyToJson(reply) {
    return this._toJson(reply, this.entity.Reply, 'reply');
  }
}
