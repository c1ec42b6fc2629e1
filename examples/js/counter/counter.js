// A counter in JavaScript: the smallest behavior, plus the effects a
// behavior can ask for: a command scheduled to itself later
// (`IncrementLater`, a durable timer) and a command sent to another counter
// (`Forward`). The same commands, events, replies and bytes as
// examples/counter (Rust), so either replays the other's history.

import { Decision, defineEntity, t } from '../../../guest-sdk/js/src/index.js';

export const Command = t.union('Command', {
  Increment: { by: t.i64 }, // add `by`; replies the new value
  Get: null, // reply with the value
  IncrementLater: { by: t.i64, delay_ms: t.u64 }, // increment after delay_ms, through a durable timer
  Forward: { entity_id: t.string, by: t.i64 }, // send Increment { by } to another counter
  Batch: { count: t.u32 }, // persist `count` increments of 1 in one atomic batch
});

export const Event = t.union('Event', {
  Incremented: { by: t.i64 },
});

export default defineEntity({
  name: 'counter',
  version: '1.0.0',
  State: t.i64,
  Command,
  Event,
  Reply: t.i64,
  initialState: () => 0,

  onCommand(ctx, state, command) {
    switch (command.type) {
      case 'Increment':
        return Decision.persist(Event.Incremented({ by: command.by })).thenReply(state + command.by);
      case 'Get':
        return Decision.reply(state);
      case 'IncrementLater':
        return Decision.reply(state).schedule(command.delay_ms, Command.Increment({ by: command.by }));
      case 'Forward':
        return Decision.reply(state).send('counter', command.entity_id, Command.Increment({ by: command.by }));
      case 'Batch': {
        const { count } = command;
        if (count === 0 || count > 1000) return Decision.reject('count must be between 1 and 1000');
        return Decision.persist(Array.from({ length: count }, () => Event.Incremented({ by: 1 }))).thenReply(state + count);
      }
    }
    throw new Error(`unknown command ${command.type}`);
  },

  onEvent(state, event) {
    return state + event.by;
  },
});
