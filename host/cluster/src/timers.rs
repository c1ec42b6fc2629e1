//! An entity's pending timers across copies: how a fired timer is
//! remembered, where a copy's timers stand in the primary's writes, and how
//! a node taking a shard over merges the timers of two copies of an entity.
//!
//! A timer's arming and removal are written with the events of the command
//! that scheduled or fired it, so an entity's timers follow its history. A
//! command that writes no event but changes timers (a timer that fired
//! without events, a send, a receiver's record of a send applied) makes a
//! write of timers only, which has no place in the history of events. Two
//! rules give it one:
//! - The copy's [`Position`]: how many timers-only writes it took since its
//!   newest event, and a digest chaining them. The primary sends its own
//!   with every write, and a replica takes the write only if its copy stands
//!   at the same event and the same position ([`replica_timers`]); else the
//!   primary sends the entity's timers whole. So a replica that missed a
//!   timers-only write cannot take a later write without it, and of two
//!   copies the one further in (events, then timers-only writes) holds every
//!   timer change the other does ([`crate::replication::timer_merge`]).
//! - A fired timer whose command wrote no event is kept as a tombstone
//!   ([`TimerState::Fired`]) that wins a merge of copies standing at the
//!   same place against the armed timer; the entity's next write with events
//!   removes its tombstones. Marks (what an entity keeps of its own sends
//!   and of the sends it applied) only grow, so the larger one wins.

use crate::replication::TimerMerge;

/// What one pending timer record of an entity is, for a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerState {
    /// A timer (or an outbox entry) waiting to fire.
    Armed,
    /// A timer that fired with a command that wrote no event (a tombstone).
    Fired,
    /// A mark that only grows, with its value.
    Mark(u64),
}

/// How many tombstones an entity keeps between two of its writes with
/// events: a timers-only write that adds one beyond this removes the
/// oldest. A tombstone matters only while a copy that missed its write can
/// still be merged at equal length; the write removing it goes to the same
/// replicas (and removes the armed timer there too), so a copy keeps the
/// armed timer past it only if it missed both writes, 32 tombstone writes
/// apart, with no write with events between them.
pub const MAX_TOMBSTONES: usize = 32;

/// The timer id of an entity's [`Position`] record: the outbox's send
/// number 0, which no send uses. It is never armed.
pub const POSITION_ID: u64 = 1 << 62;

/// Format byte of an encoded [`Position`].
const POSITION_FORMAT: u8 = 1;

/// Where a copy of an entity's timers stands after its newest event: the
/// timers-only writes it took since. Kept in the entity's timers (record
/// [`POSITION_ID`]), so it is written atomically with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Position {
    /// Writes of timers only since the newest event.
    pub writes: u64,
    /// A digest chaining those writes' changes: equal counts with different
    /// chains are different writes.
    pub chain: u32,
    /// Events reached this copy without their timer changes (a replica's
    /// gap filled from the primary's journal): its timers are behind until
    /// the primary sends them whole.
    pub stale: bool,
}

impl Position {
    /// The position after a write: a write with events starts again from
    /// its newest event; a write of timers only (whose changes digest to
    /// `changes`) counts one more.
    pub fn after(self, with_events: bool, changes: u32) -> Position {
        if with_events {
            return Position::default();
        }
        let chain = (self.chain ^ changes)
            .wrapping_mul(0x9E37_79B1)
            .rotate_left(13)
            ^ (self.writes as u32);
        Position {
            writes: self.writes + 1,
            chain,
            stale: self.stale,
        }
    }

    /// The position a replica's copy takes when events reach it without
    /// their timer changes.
    pub fn behind() -> Position {
        Position {
            stale: true,
            ..Position::default()
        }
    }

    /// The record's command bytes.
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14);
        out.push(POSITION_FORMAT);
        out.extend_from_slice(&self.writes.to_le_bytes());
        out.extend_from_slice(&self.chain.to_le_bytes());
        out.push(u8::from(self.stale));
        out
    }

    /// Reads a record's command bytes; a record that is not one reads as
    /// stale (its copy's timers are not trusted over another's).
    pub fn decode(b: &[u8]) -> Position {
        let read = || -> Option<Position> {
            let (&format, rest) = b.split_first()?;
            if format != POSITION_FORMAT || rest.len() != 13 {
                return None;
            }
            let (writes, rest) = rest.split_first_chunk::<8>()?;
            let (chain, rest) = rest.split_first_chunk::<4>()?;
            Some(Position {
                writes: u64::from_le_bytes(*writes),
                chain: u32::from_le_bytes(*chain),
                stale: rest.first().copied()? != 0,
            })
        };
        read().unwrap_or_else(Position::behind)
    }

    /// The position held in an entity's timer records (none: no
    /// timers-only write since its newest event).
    pub fn of<'a>(records: impl IntoIterator<Item = (u64, &'a [u8])>) -> Position {
        records
            .into_iter()
            .find(|(id, _)| *id == POSITION_ID)
            .map_or_else(Position::default, |(_, b)| Position::decode(b))
    }

    /// The order of two copies standing at the same newest event: a stale
    /// copy first, then by the number of timers-only writes.
    fn rank(self) -> (bool, u64) {
        (!self.stale, self.writes)
    }
}

/// The replica's rule for a primary's write onto a copy that holds the same
/// newest event: it takes the write only if its timers stand where the
/// primary's stood before it (`primary`); otherwise it missed a
/// timers-only write, holds one that was never acknowledged, or is behind
/// after a gap fill, and the primary sends the entity's timers whole.
pub fn replica_timers(here: Position, primary: Position) -> bool {
    if crate::fence::is_mutant(crate::fence::Mutant::TimersUnchecked) {
        return true;
    }
    here == primary
}

/// What a replica does with the timers of a primary's write whose events
/// follow its copy ([`replica_takes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimersTake {
    /// The write carries the entity's whole timer set: the copy's timers
    /// become exactly that.
    Whole,
    /// The write's timer changes apply onto this copy.
    Apply,
    /// This copy's timers do not stand where the primary's did, or it
    /// holds the write's events already (so it cannot tell): nothing is
    /// stored, and the primary sends the timers whole.
    Differ,
    /// Events without their timer changes (a gap's chunk): they are stored
    /// and the copy's timers are marked behind.
    Behind,
}

/// The replica's rule for the timers of a write: `whole` says the write
/// carries the entity's whole set; `primary` is where the primary's timers
/// stood before the write (`None`: a gap's chunk); `after_newest` says the
/// write starts just after this copy's newest event (it holds none of the
/// write's events); `here` is where this copy's timers stand.
pub fn replica_takes(
    whole: bool,
    primary: Option<Position>,
    after_newest: bool,
    here: Position,
) -> TimersTake {
    match (whole, primary) {
        (true, _) => TimersTake::Whole,
        (false, None) => TimersTake::Behind,
        (false, Some(p)) if after_newest && replica_timers(here, p) => TimersTake::Apply,
        (false, Some(_)) => TimersTake::Differ,
    }
}

/// Which of two copies of an entity, each at (newest event, [`Position`]),
/// is further in the primary's writes.
pub fn compare(a: (u64, Position), b: (u64, Position)) -> std::cmp::Ordering {
    (a.0, a.1.rank()).cmp(&(b.0, b.1.rank()))
}

/// The changes a merge makes to the local timers of one entity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimerChanges {
    /// Source records to write here (new, or replacing the local one).
    pub take: Vec<u64>,
    /// Local records to remove.
    pub drop: Vec<u64>,
}

/// The merge of a source copy's timers of an entity into the local ones,
/// as [`crate::replication::timer_merge`] decided (`merge`): `Replace`
/// makes the local set the source's exactly; `Add` takes a source timer the
/// local set lacks, a tombstone over an armed timer, and a larger mark,
/// and never arms a timer the local copy holds as fired; `Keep` changes
/// nothing.
pub fn merge_timers(
    merge: TimerMerge,
    here: &[(u64, TimerState)],
    source: &[(u64, TimerState)],
) -> TimerChanges {
    let local = |id: u64| here.iter().find(|(h, _)| *h == id).map(|(_, s)| *s);
    let mut out = TimerChanges::default();
    match merge {
        TimerMerge::Keep => {}
        TimerMerge::Replace => {
            for &(id, s) in source {
                if local(id) != Some(s) {
                    out.take.push(id);
                }
            }
            for &(id, _) in here {
                if !source.iter().any(|(s, _)| *s == id) {
                    out.drop.push(id);
                }
            }
        }
        TimerMerge::Add => {
            for &(id, s) in source {
                let take = match (local(id), s) {
                    (None, _) => true,
                    (Some(_), _)
                        if crate::fence::is_mutant(crate::fence::Mutant::TimersByUnion) =>
                    {
                        false
                    }
                    (Some(TimerState::Armed), TimerState::Fired) => true,
                    (Some(TimerState::Mark(a)), TimerState::Mark(b)) => b > a,
                    _ => false,
                };
                if take {
                    out.take.push(id);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The rules above over seeded histories of one entity on a primary and
    //! two replicas (`min_acks` 1): commands arm timers, fire them (with or
    //! without events), and every write reaches the replicas the schedule
    //! picks (at least one, or it fails and nothing changed on the
    //! primary), or now and then a write of timers only reaches replicas
    //! and not the primary's journal (unacknowledged). A replica takes a
    //! write as the product's does: one that
    //! missed events has its gap filled without their timer changes
    //! ([`Position::behind`]), and one whose [`Position`] is not the
    //! primary's ([`replica_timers`]) is sent the timers whole; now and then
    //! a replica is caught up whole (a new replica set). Then the primary
    //! dies and one replica takes over, merging the other's copy by
    //! [`crate::replication::timer_merge`] and [`merge_timers`]. Checked:
    //! no timer that fired is armed again, and every timer armed and not
    //! fired is there. `CAIRN_SIM_SEED=N` replays one seed.

    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::fence::{Mutant, set_mutant};
    use crate::replication::timer_merge;

    /// One copy of the entity: its number of events, its timers and where
    /// they stand.
    #[derive(Clone, Debug, Default)]
    struct Copy {
        last: u64,
        timers: BTreeMap<u64, TimerState>,
        pos: Position,
    }

    impl Copy {
        fn listed(&self) -> Vec<(u64, TimerState)> {
            self.timers.iter().map(|(i, s)| (*i, *s)).collect()
        }
    }

    /// A write: new events, timers written (armed or tombstones), removed,
    /// and the digest of those changes.
    struct W {
        events: u64,
        put: Vec<(u64, TimerState)>,
        remove: Vec<u64>,
        digest: u32,
    }

    fn apply(c: &mut Copy, w: &W, pos: Position) {
        c.last += w.events;
        for (id, s) in &w.put {
            c.timers.insert(*id, *s);
        }
        for id in &w.remove {
            c.timers.remove(id);
        }
        c.pos = pos;
    }

    /// Runs one schedule; `Err` says what broke.
    fn run(seed: u64) -> Result<(), String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut primary = Copy::default();
        let mut replicas = [Copy::default(), Copy::default()];
        let mut next_id = 1u64;
        let mut fired = Vec::new();
        // Tombstones the primary's entity knows (written since its last
        // write with events), oldest first.
        let mut tombstones: Vec<u64> = Vec::new();
        for _ in 0..rng.random_range(1..40) {
            // A catch-up (a new replica set) sends a copy whole.
            for r in replicas.iter_mut() {
                if rng.random_bool(0.05) {
                    *r = primary.clone();
                }
            }
            let armed: Vec<u64> = primary
                .timers
                .iter()
                .filter(|(_, s)| **s == TimerState::Armed)
                .map(|(i, _)| *i)
                .collect();
            let with_events = rng.random_bool(0.4);
            let digest = rng.random::<u32>();
            let w = if armed.is_empty() || rng.random_bool(0.4) {
                let id = next_id;
                next_id += 1;
                W {
                    events: u64::from(with_events),
                    put: vec![(id, TimerState::Armed)],
                    remove: if with_events {
                        std::mem::take(&mut tombstones)
                    } else {
                        Vec::new()
                    },
                    digest,
                }
            } else {
                let id = armed[rng.random_range(0..armed.len())];
                if with_events {
                    let mut remove = std::mem::take(&mut tombstones);
                    remove.push(id);
                    W {
                        events: 1,
                        put: Vec::new(),
                        remove,
                        digest,
                    }
                } else {
                    tombstones.push(id);
                    let remove = if tombstones.len() > MAX_TOMBSTONES {
                        vec![tombstones.remove(0)]
                    } else {
                        Vec::new()
                    };
                    W {
                        events: 0,
                        put: vec![(id, TimerState::Fired)],
                        remove,
                        digest,
                    }
                }
            };
            let before = primary.pos;
            let after = before.after(w.events > 0, w.digest);
            let mut whole = primary.clone();
            apply(&mut whole, &w, after);
            let reach = [rng.random_bool(0.7), rng.random_bool(0.7)];
            if !reach.contains(&true) {
                // Not acknowledged, and held nowhere.
                continue;
            }
            // A write that arms a timer and is lost on its way back: the
            // replicas it reached hold it, the primary does not (a later
            // owner may adopt it: its command's outcome was unknown).
            let stray = w.events == 0
                && matches!(w.put.first(), Some((_, TimerState::Armed)))
                && rng.random_bool(0.15);
            for (i, r) in replicas.iter_mut().enumerate() {
                if !reach[i] {
                    continue;
                }
                if r.last < primary.last {
                    // The gap is filled with events and no timer changes.
                    assert_eq!(replica_takes(false, None, true, r.pos), TimersTake::Behind);
                    r.last = primary.last;
                    r.pos = Position::behind();
                }
                match replica_takes(false, Some(before), true, r.pos) {
                    TimersTake::Apply => apply(r, &w, after),
                    // Sent again with the timers whole.
                    TimersTake::Differ => *r = whole.clone(),
                    other => return Err(format!("a replica took a write as {other:?}")),
                }
            }
            if stray {
                continue;
            }
            primary = whole;
            if let Some((id, TimerState::Fired)) = w.put.first() {
                fired.push(*id);
            } else if w.put.is_empty() {
                fired.push(*w.remove.last().expect("the fired timer"));
            }
        }
        // The primary dies; a replica takes over and merges the other.
        let (a, b) = if rng.random_bool(0.5) { (0, 1) } else { (1, 0) };
        let mut new = replicas[a].clone();
        let other = &replicas[b];
        let merge = timer_merge((new.last, new.pos), (other.last, other.pos), false);
        let changes = merge_timers(merge, &new.listed(), &other.listed());
        for id in &changes.take {
            new.timers.insert(*id, other.timers[id]);
        }
        for id in &changes.drop {
            new.timers.remove(id);
        }
        if merge == crate::replication::TimerMerge::Replace {
            new.last = other.last;
            new.pos = other.pos;
        }
        for id in &fired {
            if new.timers.get(id) == Some(&TimerState::Armed) {
                return Err(format!("timer {id} fired and is armed again"));
            }
        }
        for (id, s) in &primary.timers {
            if *s == TimerState::Armed && new.timers.get(id) != Some(&TimerState::Armed) {
                return Err(format!("armed timer {id} lost"));
            }
        }
        Ok(())
    }

    fn seeds() -> Vec<u64> {
        match std::env::var("CAIRN_SIM_SEED") {
            Ok(s) => vec![s.parse().expect("CAIRN_SIM_SEED is a number")],
            Err(_) => (0..10_000).collect(),
        }
    }

    #[test]
    fn a_fired_timer_never_fires_again_and_an_armed_one_is_kept() {
        set_mutant(None);
        for seed in seeds() {
            if let Err(e) = run(seed) {
                panic!("seed {seed}: {e} (replay: CAIRN_SIM_SEED={seed})");
            }
        }
    }

    /// The first seed at which `mutant` breaks a check.
    fn caught(mutant: Mutant) -> Option<u64> {
        set_mutant(Some(mutant));
        let caught = seeds().into_iter().find(|&s| run(s).is_err());
        set_mutant(None);
        eprintln!("{mutant:?}: caught at seed {caught:?}");
        caught
    }

    #[test]
    fn merging_equal_copies_by_union_is_caught() {
        assert!(
            caught(Mutant::TimersByUnion).is_some(),
            "the union merge went unnoticed"
        );
    }

    #[test]
    fn a_replica_that_does_not_check_its_position_is_caught() {
        assert!(
            caught(Mutant::TimersUnchecked).is_some(),
            "a replica taking writes of timers it missed went unnoticed"
        );
    }

    #[test]
    fn what_a_replica_takes() {
        let p = Position::default();
        let one = p.after(false, 1);
        assert_eq!(replica_takes(true, Some(one), false, p), TimersTake::Whole);
        assert_eq!(replica_takes(false, None, true, one), TimersTake::Behind);
        assert_eq!(
            replica_takes(false, Some(one), true, one),
            TimersTake::Apply
        );
        assert_eq!(replica_takes(false, Some(one), true, p), TimersTake::Differ);
        assert_eq!(
            replica_takes(false, Some(one), true, Position::behind()),
            TimersTake::Differ
        );
        // It held the write's events already: it cannot tell.
        assert_eq!(
            replica_takes(false, Some(one), false, one),
            TimersTake::Differ
        );
    }

    #[test]
    fn a_position_reads_back() {
        let p = Position::default().after(false, 3).after(false, 9);
        assert_eq!(p.writes, 2);
        assert_eq!(Position::decode(&p.encode()), p);
        assert_eq!(Position::decode(&[9, 9]), Position::behind());
        assert_eq!(p.after(true, 1), Position::default());
        assert_ne!(
            Position::default().after(false, 3),
            Position::default().after(false, 4)
        );
        let rec = p.encode();
        assert_eq!(Position::of([(5, &[][..]), (POSITION_ID, &rec[..])]), p);
        assert_eq!(Position::of([(5, &[][..])]), Position::default());
    }

    #[test]
    fn the_rules_by_case() {
        use TimerState::*;
        let add = |here: &[(u64, TimerState)], src: &[(u64, TimerState)]| {
            merge_timers(TimerMerge::Add, here, src).take
        };
        assert_eq!(add(&[(1, Armed)], &[(1, Fired)]), vec![1]);
        assert!(add(&[(1, Fired)], &[(1, Armed)]).is_empty());
        assert_eq!(add(&[], &[(2, Armed)]), vec![2]);
        assert_eq!(add(&[(9, Mark(3))], &[(9, Mark(4))]), vec![9]);
        assert!(add(&[(9, Mark(4))], &[(9, Mark(3))]).is_empty());
        let r = merge_timers(
            TimerMerge::Replace,
            &[(1, Armed), (2, Fired)],
            &[(1, Fired)],
        );
        assert_eq!(
            r,
            TimerChanges {
                take: vec![1],
                drop: vec![2]
            }
        );
        assert_eq!(
            merge_timers(TimerMerge::Keep, &[], &[(1, Armed)]),
            TimerChanges::default()
        );
    }
}
