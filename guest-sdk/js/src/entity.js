// The SDK model: an entity behavior, the context of a command and the
// decisions it returns. Same shape as the Rust SDK (guest-sdk/src/lib.rs)
// and the Python one (guest-sdk/python/cairn_guest/entity.py):
//
//   export default defineEntity({
//     name: 'bank-account', version: '1.0.0', stateSchema: 1,
//     State, Command, Event, Reply,            // codec schemas (codec.js)
//     onCommand(ctx, state, command) { ... return Decision.persist(ev).thenReply('ok') },
//     onEvent(state, event) { ... return state },
//     upcast(event) { return event },          // optional: old events → current shape
//     initialState() { ... },                   // optional: State's defaults otherwise
//   });
//
// Behaviors are pure: no I/O, no clock (use ctx.timestampMs), no randomness
// of their own. The component has no WASI: console.log goes nowhere.

import { CodecError, isSchema, t } from './codec.js';

/** What the host tells a behavior about one command. */
export class Context {
  constructor(entityId, nextSeq, timestampMs) {
    /** The entity's id. */
    this.entityId = entityId;
    /** Sequence number the first event of this command will get. */
    this.nextSeq = nextSeq;
    /** When the host accepted the command, ms since the Unix epoch (recorded, so replayable). */
    this.timestampMs = timestampMs;
    Object.freeze(this);
  }
}

const NO_REPLY = Symbol('no reply');

/**
 * What `onCommand` returns, built fluently:
 *
 *   Decision.persist(Event.Deposited({ amount: 100 })).thenReply('ok')
 *   Decision.reply(120)
 *   Decision.reject('amount must be positive, got -5')
 *   Decision.none().schedule(30_000, Command.Expire())
 */
export class Decision {
  constructor() {
    /** Events to persist, in order. */
    this.events = [];
    this._reply = NO_REPLY;
    /** Effects to run once the events are durable: { kind: 'send' | 'schedule', ... }. */
    this.effects = [];
    /** The rejection reason, if the command is refused. */
    this.rejection = null;
  }

  /** Persist these events (`persist(a, b)` or `persist([a, b])`); reply with `thenReply`. */
  static persist(...events) {
    const d = new Decision();
    d.events = events.length === 1 && Array.isArray(events[0]) ? [...events[0]] : events;
    return d;
  }

  /** Reply without persisting anything. */
  static reply(reply) {
    return new Decision().thenReply(reply);
  }

  /** Do nothing: no events, no reply. */
  static none() {
    return new Decision();
  }

  /** Refuse the command; the caller gets `reason` as an error. */
  static reject(reason) {
    const d = new Decision();
    d.rejection = String(reason);
    return d;
  }

  /** Reply once the events are persisted. */
  thenReply(reply) {
    this._reply = reply;
    return this;
  }

  get hasReply() {
    return this._reply !== NO_REPLY;
  }

  /** The reply (undefined when there is none; see `hasReply`). */
  get replyValue() {
    return this._reply === NO_REPLY ? undefined : this._reply;
  }

  /**
   * Send `command` to another entity once the events are durable. `schema`
   * is the target's command schema (optional when the command was built by
   * a union constructor, which carries its schema).
   */
  send(entityType, entityId, command, schema = t.any) {
    this.effects.push({ kind: 'send', entityType: String(entityType), entityId: String(entityId), command, schema });
    return this;
  }

  /** Deliver `command` (of this behavior's command type) to this entity after `delayMs` milliseconds (journaled). */
  schedule(delayMs, command) {
    const ms = Math.max(0, Math.floor(Number(delayMs)));
    if (!Number.isFinite(ms)) throw new TypeError(`schedule: bad delay ${delayMs}`);
    this.effects.push({ kind: 'schedule', delayMs: ms, command });
    return this;
  }
}

const REQUIRED = ['name', 'version', 'State', 'Command', 'Event', 'onCommand', 'onEvent'];

/**
 * Declares a behavior. Checks the definition and fills in the defaults
 * (`stateSchema` 1, `Reply` t.any, identity `upcast`, `initialState` from
 * State's field defaults).
 */
export function defineEntity(def) {
  for (const k of REQUIRED) {
    if (def[k] === undefined) throw new TypeError(`defineEntity: \`${k}\` is required`);
  }
  for (const k of ['State', 'Command', 'Event', 'Reply']) {
    if (def[k] !== undefined && !isSchema(def[k])) throw new TypeError(`defineEntity: \`${k}\` must be a codec schema (t.struct, t.union, ...)`);
  }
  const e = {
    stateSchema: 1,
    Reply: t.any,
    upcast: (event) => event,
    initialState() {
      if (typeof this.State.defaults !== 'function') {
        throw new CodecError(`${this.name}: State is not a t.struct, define initialState()`);
      }
      return this.State.defaults();
    },
    ...def,
  };
  if (!Number.isInteger(e.stateSchema) || e.stateSchema < 0 || e.stateSchema > 0xffffffff) {
    throw new TypeError('defineEntity: `stateSchema` must be a u32');
  }
  Object.defineProperty(e, '__cairnEntity', { value: true });
  return Object.freeze(e);
}

/** `onEvent`, keeping a state mutated in place (when it returns undefined). */
export function apply(entity, state, event) {
  const next = entity.onEvent(state, event);
  return next === undefined ? state : next;
}

/** Upcasts an event read from the journal, then applies it. */
export function applyStored(entity, state, event) {
  event = entity.upcast(event);
  if (entity.Event.isLegacy?.(event)) {
    throw new CodecError(`legacy event ${event.type} was not upcast to a current shape`);
  }
  return apply(entity, state, event);
}
