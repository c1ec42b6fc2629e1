// The glue between a behavior and the WIT exports of cairn:entity/behavior
// (wit/entity.wit) in a component built by componentize-js (build.mjs
// imports it in the generated entry; natively, tests use the Bridge).
//
// componentize-js's conventions: functions and record fields in camelCase,
// list<u8> as Uint8Array, u64 as BigInt, option as a value or undefined,
// variants as { tag, val }, and a `result` error as a thrown value (its
// `payload` when it has one). An exception raised by the behavior's own code
// is not caught: it becomes a trap, the host fails the command and restarts
// the entity from its journal, as with a Rust panic.

import { Bridge, CommandError, FoldError, JsonError } from './bridge.js';
import { Context } from './entity.js';

/** The clock a behavior sees: the timestamp of the command being decided. */
let clockMs = 0;

/**
 * Makes the JavaScript globals safe in a component that links no WASI
 * (build.mjs disables every feature of the engine; guest-globals.js, which
 * the generated entry imports first, calls this once at build time, before
 * the snapshot and before any behavior code):
 * - console output is dropped, so a console.log fails nothing;
 * - `Date.now()` and `new Date()` read the timestamp of the command being
 *   decided (`ctx.timestampMs`, recorded by the host) while `onCommand`
 *   runs, and 0 otherwise (`onEvent` must not depend on a clock), like the
 *   host's WASI clocks for Rust guests. Without this they trap: the engine
 *   has no clock.
 * `Math.random()` needs nothing: the engine seeds it at build time, so it
 * gives the same sequence in every instance, which suits behaviors.
 * Not called natively: tests keep node's own globals.
 */
export function installGuestGlobals({ keepConsole = false } = {}) {
  if (!keepConsole && typeof globalThis.console === 'object' && globalThis.console) {
    for (const k of ['log', 'info', 'warn', 'error', 'debug', 'trace', 'dir', 'table']) {
      try {
        globalThis.console[k] = () => {};
      } catch {
        // a frozen console: leave it
      }
    }
  }
  const RealDate = globalThis.Date;
  class CairnDate extends RealDate {
    constructor(...args) {
      super(...(args.length ? args : [clockMs]));
    }
    static now() {
      return clockMs;
    }
  }
  globalThis.Date = CairnDate;
  if (typeof globalThis.performance === 'object' && globalThis.performance) {
    try {
      globalThis.performance.now = () => 0;
    } catch {
      // leave it
    }
  }
}

/** A thrown result error: componentize-js lowers `payload`. */
class WitError extends Error {
  constructor(payload) {
    super(typeof payload === 'string' ? payload : JSON.stringify(payload));
    this.payload = payload;
  }
}

/** A list<u8> argument as a Uint8Array (componentize-js may hand over an Array or an ArrayBuffer). */
function bytes(x) {
  if (x instanceof Uint8Array) return x;
  if (x instanceof ArrayBuffer) return new Uint8Array(x);
  if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  if (Array.isArray(x)) return Uint8Array.from(x);
  throw new TypeError(`expected bytes from the host, got ${Object.prototype.toString.call(x)}`);
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const num = (b) => (typeof b === 'bigint' && b <= MAX_SAFE ? Number(b) : b);

function jsonCall(f) {
  try {
    return f();
  } catch (e) {
    if (e instanceof JsonError) throw new WitError(e.message);
    throw e;
  }
}

/** The object exported as `behavior` for `entity` (made by defineEntity). */
export function behaviorExports(entity) {
  // The clock shows the command's timestamp while onCommand runs, and 0
  // otherwise (onEvent, live or in recovery, must not depend on it).
  const clocked = Object.create(entity, {
    onCommand: {
      value(ctx, state, command) {
        clockMs = ctx.timestampMs;
        try {
          return entity.onCommand(ctx, state, command);
        } finally {
          clockMs = 0;
        }
      },
    },
  });
  const bridge = new Bridge(clocked);
  return {
    describe() {
      return bridge.describe();
    },
    initialState() {
      return bridge.initialState();
    },
    decide(ctx, state, command) {
      const c = new Context(ctx.entityId, num(ctx.nextSeq), num(ctx.timestampMs));
      let d;
      try {
        d = bridge.decide(c, bytes(state), bytes(command));
      } catch (e) {
        if (e instanceof CommandError) throw new WitError({ tag: e.case, val: e.message });
        throw e;
      }
      return {
        events: d.events,
        reply: d.reply,
        effects: d.effects.map((f) =>
          f.kind === 'send'
            ? { tag: 'send', val: { entityType: f.entityType, entityId: f.entityId, command: f.command } }
            : { tag: 'schedule', val: { delayMs: BigInt(f.delayMs), command: f.command } },
        ),
        state: d.state,
      };
    },
    fold(state, events) {
      try {
        return bridge.fold(bytes(state), bytes(events));
      } catch (e) {
        if (e instanceof FoldError) throw new WitError({ index: e.index, message: e.detail });
        throw e;
      }
    },
    commandFromJson: (json) => jsonCall(() => bridge.commandFromJson(json)),
    eventToJson: (event) => jsonCall(() => bridge.eventToJson(bytes(event))),
    stateToJson: (state) => jsonCall(() => bridge.stateToJson(bytes(state))),
    replyToJson: (reply) => jsonCall(() => bridge.replyToJson(bytes(reply))),
  };
}
