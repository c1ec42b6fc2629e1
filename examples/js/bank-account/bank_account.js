// The bank account of the reference event-sourcing guide, in JavaScript:
// Deposit, Withdraw ("ok" or "insufficient funds (balance: N)") and
// GetBalance. The same commands, events, replies and bytes as
// examples/bank-account (Rust) and examples/python/bank-account, so any of
// them replays the others' history.
//
// Commands are intents; events are facts.

import { Decision, defineEntity, t } from '../../../guest-sdk/js/src/index.js';

/** State derived from the events. */
export const State = t.struct('State', {
  balance: t.i64, // current balance
  transactions: t.u64, // number of transactions applied
});

/** Requests. */
export const Command = t.union('Command', {
  Deposit: { amount: t.i64 }, // add money; replies "ok"
  Withdraw: { amount: t.i64 }, // take money out if the balance allows it
  GetBalance: null, // reply with the balance
});

/** Facts. */
export const Event = t.union('Event', {
  Deposited: { amount: t.i64 },
  Withdrawn: { amount: t.i64 },
});

/** Answers: a text ("ok", "insufficient funds (balance: 120)") or a balance, like the Rust #[serde(untagged)] enum Reply. */
export const Reply = t.untagged(t.string, t.i64);

export default defineEntity({
  name: 'bank-account',
  version: '1.0.0',
  stateSchema: 1,
  State,
  Command,
  Event,
  Reply,

  onCommand(ctx, state, command) {
    switch (command.type) {
      case 'Deposit':
      case 'Withdraw':
        if (command.amount <= 0) return Decision.reject(`amount must be positive, got ${command.amount}`);
        if (command.type === 'Deposit') return Decision.persist(Event.Deposited({ amount: command.amount })).thenReply('ok');
        if (command.amount <= state.balance) return Decision.persist(Event.Withdrawn({ amount: command.amount })).thenReply('ok');
        return Decision.reply(`insufficient funds (balance: ${state.balance})`);
      case 'GetBalance':
        return Decision.reply(state.balance);
    }
    throw new Error(`unknown command ${command.type}`);
  },

  onEvent(state, event) {
    switch (event.type) {
      case 'Deposited':
        state.balance += event.amount;
        break;
      case 'Withdrawn':
        state.balance -= event.amount;
        break;
    }
    state.transactions += 1;
    return state;
  },
});
