// Version 2 of the bank account, in JavaScript: the same commands, events,
// replies and bytes as examples/bank-account-v2 (Rust), so it replays a v1
// history written by any language, and Rust v2 replays its history.
//
// What changed since v1:
// - `Deposited` was reshaped into `Credited { amount, source }`: old events
//   are declared as a legacy variant and converted by `upcast`;
// - `Withdrawn` gained `fee_waived` (a default: v1 events decode with false);
// - a new event, `FeeCharged`: a withdrawal that leaves the balance under
//   the minimum of 100 costs a fee of 1.

import { Decision, defineEntity, t } from '../../../guest-sdk/js/src/index.js';

export const MINIMUM_BALANCE = 100;
export const FEE = 1;

export const State = t.struct('State', { balance: t.i64, transactions: t.u64 });

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
  version: '2.0.0',
  stateSchema: 1,
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
        if (amount > state.balance) return Decision.reply(`insufficient funds (balance: ${state.balance})`);
        const after = state.balance - amount;
        if (after >= FEE && after < MINIMUM_BALANCE) {
          return Decision.persist(
            Event.Withdrawn({ amount, fee_waived: false }),
            Event.FeeCharged({ amount: FEE }),
          ).thenReply(`ok (fee ${FEE})`);
        }
        return Decision.persist(Event.Withdrawn({ amount, fee_waived: after < MINIMUM_BALANCE })).thenReply('ok');
      }
      case 'GetBalance':
        return Decision.reply(state.balance);
    }
    throw new Error(`unknown command ${command.type}`);
  },

  upcast(event) {
    return event.type === 'Deposited' ? Event.Credited({ amount: event.amount, source: 'deposit' }) : event;
  },

  onEvent(state, event) {
    switch (event.type) {
      case 'Credited':
        state.balance += event.amount;
        break;
      case 'Withdrawn':
      case 'FeeCharged':
        state.balance -= event.amount;
        break;
    }
    state.transactions += 1;
    return state;
  },
});
