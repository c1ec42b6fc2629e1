//! Messages between entities, exactly once: the sender's outbox and the
//! receiver's record of what it applied, both kept in the entity's timers.
//!
//! A `send` effect is not run when its command's write is durable; it is
//! part of that write, as an outbox entry of the sender. The receiver
//! writes, atomically with the events the message caused, the highest
//! send it applied from that sender, so a message delivered twice (after a
//! lost answer, a crash, a failover or a handoff of either side) is
//! recognised and answered without running again. Keeping both in the
//! timers table means they are journaled with the events, replicated with
//! them and handed off with their shard by the code that already does that
//! for timers, in every journal backend.
//!
//! Timer ids are split in three ranges:
//! - below 2^62: timers a behavior scheduled (ids the node hands out);
//! - 2^62 + n: the sender's n-th send (n from 1), due at once; its command
//!   is the encoded target and command ([`Entry`]); 2^62 itself holds where
//!   the entity's timers stand in a cluster's replicated writes
//!   (`cairn_cluster::timers::Position`, kept by the replicated journal),
//!   a mark;
//! - 2^63 and above: marks, never armed: the count of sends the entity
//!   made (id 2^63), and for each sender it applied messages from, the
//!   highest send applied (2^63 + 1 + a 64-bit hash of the sender).
//!
//! A behavior's timer that fired with a command that wrote no event is
//! kept as a tombstone (its id, due never) until the entity's next write
//! with events, so that a merge of two copies of equal length cannot arm
//! it again (`cairn_cluster::timers`); [`timer_state`] tells the three
//! apart for that merge.
//!
//! A sender's outbox is delivered to each target in send order, one
//! message at a time, and to different targets side by side (the node's
//! delivery worker), by whichever node serves the sender. Sends are
//! numbered per sender, so "the highest applied" is enough for the
//! receiver: when message n arrives, every earlier one to it was answered. Both
//! rules are `cairn_cluster::messages` ([`Inbox`], `Outbox`), run by its
//! seeded simulation.

use cairn_cluster::messages::Inbox;
use cairn_cluster::timers::{POSITION_ID, Position, TimerState};
use cairn_store::{EntityKey, TimerRecord};

/// First id of the outbox range.
const OUTBOX_BASE: u64 = 1 << 62;
/// First id of the marks range; also the id of the send counter.
const MARK_BASE: u64 = 1 << 63;
/// A mark never fires: its fire time is the largest every backend stores
/// (SQLite keeps times as signed 64-bit integers).
const NEVER: u64 = i64::MAX as u64;

/// What a timer id stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A timer a behavior scheduled.
    Timer,
    /// The sender's n-th send.
    Outbox(u64),
    /// A mark (never armed).
    Mark,
}

/// The kind of timer `id` is. The outbox's send number 0, which no send
/// uses, is the entity's timers position
/// (`cairn_cluster::timers::POSITION_ID`), a mark.
pub(crate) fn kind(id: u64) -> Kind {
    if id >= MARK_BASE || id == POSITION_ID {
        Kind::Mark
    } else if id >= OUTBOX_BASE {
        Kind::Outbox(id - OUTBOX_BASE)
    } else {
        Kind::Timer
    }
}

/// What `t` is for a merge of two copies of its entity's timers: a
/// tombstone, a mark with its value, or a timer or outbox entry waiting.
pub fn timer_state(t: &TimerRecord) -> TimerState {
    match kind(t.timer_id) {
        Kind::Timer if t.fire_at_ms == NEVER => TimerState::Fired,
        Kind::Timer | Kind::Outbox(_) => TimerState::Armed,
        Kind::Mark if t.timer_id == MARK_BASE => {
            TimerState::Mark(take_u64(&t.command).map_or(0, |(n, _)| n))
        }
        Kind::Mark if t.timer_id == POSITION_ID => {
            TimerState::Mark(Position::decode(&t.command).writes)
        }
        Kind::Mark => TimerState::Mark(decode_received(&t.command).map_or(0, |(_, n)| n)),
    }
}

/// Is `t` a fired timer's tombstone (never armed)?
pub(crate) fn is_tombstone(t: &TimerRecord) -> bool {
    timer_state(t) == TimerState::Fired
}

/// The tombstone of behavior timer `timer_id`, fired at `now_ms`.
pub(crate) fn tombstone(timer_id: u64, now_ms: u64) -> TimerRecord {
    TimerRecord {
        timer_id,
        fire_at_ms: NEVER,
        command: now_ms.to_le_bytes().to_vec(),
    }
}

/// The timer id of the outbox entry of a sender's `n`-th send.
pub(crate) fn outbox_id(n: u64) -> u64 {
    OUTBOX_BASE + n
}

/// One message in a sender's outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The receiving entity.
    pub(crate) target: EntityKey,
    /// The encoded command.
    pub(crate) command: Vec<u8>,
}

/// Format byte of the encodings below.
const FORMAT: u8 = 1;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads a length-prefixed string at the front of `b`; returns it and the rest.
fn take_str(b: &[u8]) -> Option<(String, &[u8])> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return None;
    }
    let (s, rest) = rest.split_at(len);
    Some((String::from_utf8(s.to_vec()).ok()?, rest))
}

fn take_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let (n, rest) = b.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*n), rest))
}

impl Entry {
    /// The outbox record of the sender's `n`-th send, due at `now_ms`.
    pub(crate) fn record(&self, n: u64, now_ms: u64) -> TimerRecord {
        let mut command = vec![FORMAT];
        put_str(&mut command, &self.target.entity_type);
        put_str(&mut command, &self.target.entity_id);
        command.extend_from_slice(&self.command);
        TimerRecord {
            timer_id: outbox_id(n),
            fire_at_ms: now_ms,
            command,
        }
    }

    /// Reads an outbox record's command back; `None` if it is not one.
    pub(crate) fn decode(command: &[u8]) -> Option<Entry> {
        let (&format, rest) = command.split_first()?;
        if format != FORMAT {
            return None;
        }
        let (entity_type, rest) = take_str(rest)?;
        let (entity_id, rest) = take_str(rest)?;
        Some(Entry {
            target: EntityKey::new(entity_type, entity_id),
            command: rest.to_vec(),
        })
    }
}

/// The id of the mark that holds the highest send applied from `sender`.
fn received_id(sender: &EntityKey) -> u64 {
    let h = cairn_cluster::shard::key_hash(&sender.entity_type, &sender.entity_id);
    MARK_BASE + 1 + h % (u64::MAX - MARK_BASE)
}

/// What an entity knows of its own sends and of the messages it applied,
/// read from its timers when it first sends or receives.
#[derive(Clone, Debug, Default)]
pub(crate) struct Marks {
    /// Sends the entity made so far (the last one's number).
    sent: u64,
    /// For each sender, the highest send applied here.
    received: Inbox<EntityKey>,
}

impl Marks {
    /// Reads the marks (and the outbox entries, whose numbers the count of
    /// sends must stay above) out of an entity's timers.
    pub(crate) fn from_timers(timers: &[TimerRecord]) -> Marks {
        let mut marks = Marks::default();
        for t in timers {
            match kind(t.timer_id) {
                Kind::Timer => {}
                Kind::Outbox(n) => marks.sent = marks.sent.max(n),
                Kind::Mark if t.timer_id == MARK_BASE => {
                    if let Some((n, _)) = take_u64(&t.command) {
                        marks.sent = marks.sent.max(n);
                    }
                }
                Kind::Mark if t.timer_id == POSITION_ID => {}
                Kind::Mark => {
                    if let Some((sender, n)) = decode_received(&t.command) {
                        marks.received.record(sender, n);
                    }
                }
            }
        }
        marks
    }

    /// Was send `n` of `sender` applied here already?
    pub(crate) fn applied(&self, sender: &EntityKey, n: u64) -> bool {
        self.received.applied(sender, n)
    }

    /// The numbers the next `k` sends get.
    pub(crate) fn next_sends(&self, k: u64) -> std::ops::RangeInclusive<u64> {
        self.sent + 1..=self.sent + k
    }

    /// The record of the count of sends once `k` more were made.
    pub(crate) fn sent_record(&self, k: u64) -> TimerRecord {
        TimerRecord {
            timer_id: MARK_BASE,
            fire_at_ms: NEVER,
            command: (self.sent + k).to_le_bytes().to_vec(),
        }
    }

    /// The record saying send `n` of `sender` was applied here. If another
    /// sender's mark has the same id (a 64-bit hash collision), that
    /// sender's record is replaced: its later duplicates would run again.
    /// The chance is about one in 10^10 for 10^4 senders of one entity.
    pub(crate) fn received_record(&self, sender: &EntityKey, n: u64) -> TimerRecord {
        let mut command = vec![FORMAT];
        command.extend_from_slice(&n.to_le_bytes());
        put_str(&mut command, &sender.entity_type);
        put_str(&mut command, &sender.entity_id);
        TimerRecord {
            timer_id: received_id(sender),
            fire_at_ms: NEVER,
            command,
        }
    }

    /// Takes a durable write's sends and receipt into account.
    pub(crate) fn written(&mut self, sends: u64, received: Option<(&EntityKey, u64)>) {
        self.sent += sends;
        if let Some((sender, n)) = received {
            self.received.record(sender.clone(), n);
        }
    }
}

fn decode_received(command: &[u8]) -> Option<(EntityKey, u64)> {
    let (&format, rest) = command.split_first()?;
    if format != FORMAT {
        return None;
    }
    let (n, rest) = take_u64(rest)?;
    let (entity_type, rest) = take_str(rest)?;
    let (entity_id, _) = take_str(rest)?;
    Some((EntityKey::new(entity_type, entity_id), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_a_mark_and_a_timer_are_told_apart() {
        let sender = EntityKey::new("relay", "a");
        let marks = Marks::default();
        assert_eq!(timer_state(&tombstone(7, 1_000)), TimerState::Fired);
        let armed = TimerRecord {
            timer_id: 7,
            fire_at_ms: 1_000,
            command: vec![1],
        };
        assert_eq!(timer_state(&armed), TimerState::Armed);
        assert_eq!(timer_state(&marks.sent_record(3)), TimerState::Mark(3));
        assert_eq!(
            timer_state(&marks.received_record(&sender, 5)),
            TimerState::Mark(5)
        );
        let entry = Entry {
            target: sender,
            command: vec![],
        };
        assert_eq!(timer_state(&entry.record(1, 0)), TimerState::Armed);
    }

    #[test]
    fn ids_fall_in_their_ranges() {
        // The node's timer ids start from the wall clock in ns (about
        // 1.8e18 in 2026): ordinary timers for centuries.
        assert_eq!(kind(1_800_000_000_000_000_000), Kind::Timer);
        let e = Entry {
            target: EntityKey::new("counter", "c-1"),
            command: vec![1, 2, 3],
        };
        let r = e.record(7, 1000);
        assert_eq!(kind(r.timer_id), Kind::Outbox(7));
        assert_eq!(r.fire_at_ms, 1000);
        assert_eq!(Entry::decode(&r.command), Some(e));
        let marks = Marks::default();
        assert_eq!(kind(marks.sent_record(1).timer_id), Kind::Mark);
        let sender = EntityKey::new("a", "b");
        assert_eq!(kind(marks.received_record(&sender, 3).timer_id), Kind::Mark);
    }

    #[test]
    fn marks_read_back_from_timers() {
        let mut m = Marks::default();
        let (a, b) = (EntityKey::new("t", "a"), EntityKey::new("t", "b"));
        let timers = vec![
            m.sent_record(4),
            m.received_record(&a, 9),
            m.received_record(&b, 2),
            Entry {
                target: a.clone(),
                command: vec![],
            }
            .record(6, 0),
        ];
        let back = Marks::from_timers(&timers);
        assert_eq!(
            back.sent, 6,
            "an outbox entry beyond the count still counts"
        );
        assert!(back.applied(&a, 9) && !back.applied(&a, 10));
        assert!(back.applied(&b, 1) && !back.applied(&b, 3));
        assert!(!back.applied(&EntityKey::new("t", "c"), 1));
        m.written(2, Some((&a, 11)));
        assert_eq!(m.next_sends(1), 3..=3);
        assert!(m.applied(&a, 11));
    }

    #[test]
    fn distinct_senders_get_distinct_marks() {
        let m = Marks::default();
        let x = m.received_record(&EntityKey::new("ab", "c"), 1).timer_id;
        let y = m.received_record(&EntityKey::new("a", "bc"), 1).timer_id;
        assert_ne!(x, y);
        assert!(Entry::decode(&[9, 9]).is_none());
        assert!(decode_received(&[FORMAT, 1, 2]).is_none());
    }
}
