// Version 3 of the bank account, in JavaScript: the same commands, events
// and replies as examples/bank-account-v3 (Rust), so it replays a v1 or v2
// history written by any language.
//
// What changed since v2: the state changes shape (the balance is kept in
// cents, with the number of fees paid), so `stateSchema` is 2. When v3 goes
// live over v1 or v2 the host ignores the old snapshots and rebuilds each
// entity's state by replaying its events through v3. The events are v2's:
// v1's `Deposited` is still upcast to `Credited`.

import { Decision, defineEntity, t } from '../../../guest-sdk/js/src/index.js';

export const MINIMUM_BALANCE = 100;
export const FEE = 1;

/** State derived from the events: a new shape (schema 2). */
export const State = t.struct('State', { cents: t.i64, transactions: t.u64, fees_paid: t.u64 });

/** The balance in whole units, as Rust's `cents / 100` (truncating). */
export const balance = (state) => Math.trunc(state.cents / 100);

export const Command = t.union('Command', {
  Deposit: { amount: t.i64 },
  Withdraw: { amount: t.i64 },
  GetBalance: null,
});

export const Event = t.union('Event', {
  /** v1's deposit: still in the journal, converted to Credited by upcast. */
  Deposited: t.variant({ amount: t.i64 }, { legacy: true }),
  Credited: { amount: t.i64, source: t.string },
  Withdrawn: { amount: t.i64, fee_waived: t.field(t.bool, { default: false }) },
  FeeCharged: { amount: t.i64 },
});

export const Reply = t.untagged(t.string, t.i64);

export default defineEntity({
  name: 'bank-account',
  version: '3.0.0',
  stateSchema: 2,
  State,
  Command,
  Event,
  Reply,

  onCommand(ctx, state, command) {
    switch (command.type) {
      case 'Deposit':
      case 'Withdraw': {
        const amount = command.amount;
        if (amount <= 0) return Decision.reject(`amount must be positive, got ${amount}`);
        if (command.type === 'Deposit') {
          return Decision.persist(Event.Credited({ amount, source: 'deposit' })).thenReply('ok');
        }
        const now = balance(state);
        if (amount > now) return Decision.reply(`insufficient funds (balance: ${now})`);
        const after = now - amount;
        if (after >= FEE && after < MINIMUM_BALANCE) {
          return Decision.persist(
            Event.Withdrawn({ amount, fee_waived: false }),
            Event.FeeCharged({ amount: FEE }),
          ).thenReply(`ok (fee ${FEE})`);
        }
        return Decision.persist(Event.Withdrawn({ amount, fee_waived: after < MINIMUM_BALANCE })).thenReply('ok');
      }
      case 'GetBalance':
        return Decision.reply(balance(state));
    }
    throw new Error(`unknown command ${command.type}`);
  },

  upcast(event) {
    return event.type === 'Deposited' ? Event.Credited({ amount: event.amount, source: 'deposit' }) : event;
  },

  onEvent(state, event) {
    switch (event.type) {
      case 'Credited':
        state.cents += event.amount * 100;
        break;
      case 'Withdrawn':
        state.cents -= event.amount * 100;
        break;
      case 'FeeCharged':
        state.cents -= event.amount * 100;
        state.fees_paid += 1;
        break;
    }
    state.transactions += 1;
    return state;
  },
});
