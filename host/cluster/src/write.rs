//! The primary's side of one replicated write, without I/O: whether the
//! write may be sent at all, to whom, when the replicas' answers make it
//! acknowledged, whether the primary may still append it to its own
//! journal, and what a failure leaves behind (the entity must be read back
//! from its replicas before its next write).
//!
//! The driver (`cairn-driver`'s replicated journal) and the ownership
//! simulation (`sim.rs`) both run a write through [`plan`] and a
//! [`PrimaryWrite`]; the driver only sends the messages, counts time and
//! does the appends.
//!
//! The order it keeps: the replicas first, then the primary's own journal
//! (an event on the primary is always on `min_acks` replicas too, so a
//! failed primary never holds an event a promoted replica lacks); and the
//! lease the write was admitted under must still hold when the primary
//! appends (else another node may have been promoted meanwhile: the
//! replicas hold the write, a later owner imports it, and this one reports
//! the outcome as unknown).
//!
//! A failed write is one of two things: refused by every replica it was
//! sent to before any of them stored it ([`Progress::Refused`]: nothing is
//! anywhere, a client may retry), or short of acknowledgements with some
//! answer that does not say what the replica holds ([`Progress::Short`]:
//! the outcome is unknown, and the entity must be read back).

use std::time::Duration;

use crate::fence::{Mutant, is_mutant};
use crate::lease::LeaseConfig;
use crate::member::NodeId;
use crate::replication::acknowledged;

/// Why a write is refused before anything is sent: nothing was stored, a
/// client may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefused {
    /// Fewer members of a replica set are live than acknowledgements the
    /// write needs from it.
    #[error("min_acks is {need} but the shard has {live} live replicas of {set:?}")]
    TooFewLive {
        /// Acknowledgements needed from the set.
        need: usize,
        /// Its members thought live.
        live: usize,
        /// The set (node ids).
        set: Vec<u64>,
    },
    /// The write's first event does not follow the primary's history.
    #[error("its first event is #{first} but the history ends at #{have}")]
    Conflict {
        /// The write's first sequence number.
        first: u64,
        /// The primary's last one.
        have: u64,
    },
}

/// What to do with a write once it is admitted ([`plan`]).
#[derive(Debug)]
pub enum Plan {
    /// Nothing to replicate (no replica, or nothing a replica keeps):
    /// append locally.
    Local,
    /// The entity's last write failed and a replica may hold it: read the
    /// entity back from its replicas first; this write fails (its client
    /// retries on the history as it now is).
    Resync,
    /// Send the write to these replicas and feed their answers to the
    /// [`PrimaryWrite`].
    Send(Vec<NodeId>, PrimaryWrite),
}

/// What a primary knows when a write of one of its entities arrives.
pub struct WriteView<'a> {
    /// The replica sets the write must reach with the acknowledgements
    /// each needs: the committed set, and while it changes, the target.
    pub sets: &'a [(Vec<NodeId>, usize)],
    /// Members thought live (not down, not unreachable).
    pub live: &'a dyn Fn(NodeId) -> bool,
    /// The entity's last write failed (see [`Plan::Resync`]).
    pub dirty: bool,
    /// The primary's last sequence number of the entity.
    pub have: u64,
    /// The write's first event's sequence number (`None`: timers only).
    pub first: Option<u64>,
    /// The write carries events or timer changes a replica must keep.
    pub replicated: bool,
    /// When (the primary's clock) it sent the renewal of the lease the
    /// write was admitted under.
    pub lease_sent: Duration,
}

/// Decides what happens to an admitted write (its fence and lease already
/// checked by [`crate::fence::may_write`]), in the order the driver has
/// always used: nothing to replicate, too few live replicas, a failed
/// last write, a conflict, then send.
pub fn plan(view: &WriteView<'_>) -> Result<Plan, WriteRefused> {
    let mut to: Vec<NodeId> = Vec::new();
    for (set, _) in view.sets {
        for r in set {
            if !to.contains(r) {
                to.push(*r);
            }
        }
    }
    if to.is_empty() || !view.replicated {
        return Ok(Plan::Local);
    }
    for (set, need) in view.sets {
        let up = set.iter().filter(|r| (view.live)(**r)).count();
        if up < *need {
            return Err(WriteRefused::TooFewLive {
                need: *need,
                live: up,
                set: set.iter().map(|r| r.0).collect(),
            });
        }
    }
    if view.dirty {
        return Ok(Plan::Resync);
    }
    if let Some(first) = view.first
        && first != view.have + 1
    {
        return Err(WriteRefused::Conflict {
            first,
            have: view.have,
        });
    }
    to.retain(|r| (view.live)(*r));
    let write = PrimaryWrite {
        sets: view.sets.to_vec(),
        sent: to.len(),
        answered: 0,
        refused: 0,
        acked: Vec::new(),
        lease_sent: view.lease_sent,
    };
    Ok(Plan::Send(to, write))
}

/// Where a sent write stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Some replicas have not answered, and their answers could still make
    /// it acknowledged.
    Waiting,
    /// Enough replicas hold it: the primary may append
    /// ([`PrimaryWrite::may_append`]).
    Acknowledged,
    /// Every replica answered and too few hold it: the write failed, its
    /// outcome is unknown (a replica may hold it).
    Short,
    /// Every replica refused it before storing any of it: the write failed
    /// and is nowhere; the primary does not append it, and the entity needs
    /// no read-back.
    Refused,
}

/// A replica's answer to a sent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// It holds the write durably.
    Held,
    /// It refused the write before storing any of it (its fence has seen a
    /// newer allocation of the shard, it holds other events there, or its
    /// journal failed before any of the write reached it).
    Refused,
    /// No answer (lost, timed out, unreachable), or one that does not say
    /// whether it stored the write (a storage failure part way).
    Unknown,
}

/// Why a write the replicas hold is not appended by the primary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendRefused {
    /// The lease it was admitted under lapsed while the replicas answered.
    #[error("the lease it was written under lapsed while its replicas acknowledged it")]
    LeaseLapsed,
}

/// One write sent to its replicas, until it is acknowledged or fails.
#[derive(Debug, Clone)]
pub struct PrimaryWrite {
    sets: Vec<(Vec<NodeId>, usize)>,
    sent: usize,
    answered: usize,
    /// Answers that were [`Answer::Refused`].
    refused: usize,
    acked: Vec<NodeId>,
    lease_sent: Duration,
}

impl PrimaryWrite {
    /// A replica's answer (one per replica the write was sent to).
    pub fn answer(&mut self, replica: NodeId, answer: Answer) {
        self.answered += 1;
        match answer {
            Answer::Held => {
                if !self.acked.contains(&replica) {
                    self.acked.push(replica);
                }
            }
            Answer::Refused => self.refused += 1,
            // Broken: takes a silence for a refusal.
            Answer::Unknown if is_mutant(Mutant::SilenceAsRefusal) => self.refused += 1,
            Answer::Unknown => {}
        }
    }

    /// The replicas that hold it so far.
    pub fn acked(&self) -> &[NodeId] {
        &self.acked
    }

    /// The replica sets it must reach, with the acknowledgements each needs.
    pub fn sets(&self) -> &[(Vec<NodeId>, usize)] {
        &self.sets
    }

    /// Where the write stands.
    pub fn progress(&self) -> Progress {
        let refs: Vec<(&[NodeId], usize)> =
            self.sets.iter().map(|(s, n)| (s.as_slice(), *n)).collect();
        let one_short = is_mutant(Mutant::AckBeforeReplicas);
        let enough = if one_short {
            // Broken: counts one acknowledgement more than it has.
            refs.iter().all(|(set, need)| {
                self.acked.iter().filter(|r| set.contains(r)).count() + 1 >= *need
            })
        } else {
            acknowledged(&refs, &self.acked)
        };
        if enough {
            Progress::Acknowledged
        } else if self.answered >= self.sent && self.sent > 0 && self.refused >= self.sent {
            Progress::Refused
        } else if self.answered >= self.sent {
            Progress::Short
        } else {
            Progress::Waiting
        }
    }

    /// May the primary append the acknowledged write at `now` (its clock)?
    /// Only within the lease it was admitted under: a renewal since does not
    /// count (it may have been granted after a failover the primary has not
    /// applied yet).
    pub fn may_append(&self, lease: &LeaseConfig, now: Duration) -> Result<(), AppendRefused> {
        if lease.owner_may_serve(self.lease_sent, now) || is_mutant(Mutant::AppendAfterLapse) {
            Ok(())
        } else {
            Err(AppendRefused::LeaseLapsed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(v: &[(&[u64], usize)]) -> Vec<(Vec<NodeId>, usize)> {
        v.iter()
            .map(|(s, n)| (s.iter().map(|i| NodeId(*i)).collect(), *n))
            .collect()
    }

    fn view<'a>(
        sets: &'a [(Vec<NodeId>, usize)],
        live: &'a dyn Fn(NodeId) -> bool,
    ) -> WriteView<'a> {
        WriteView {
            sets,
            live,
            dirty: false,
            have: 4,
            first: Some(5),
            replicated: true,
            lease_sent: Duration::from_millis(1_000),
        }
    }

    #[test]
    fn the_order_of_the_checks() {
        let s = sets(&[(&[2, 3], 1)]);
        let all = |_: NodeId| true;
        let none_of_them = |n: NodeId| n.0 == 1;
        assert!(matches!(plan(&view(&[], &all)), Ok(Plan::Local)));
        let timers_kept_locally = WriteView {
            replicated: false,
            ..view(&s, &all)
        };
        assert!(matches!(plan(&timers_kept_locally), Ok(Plan::Local)));
        assert_eq!(
            plan(&view(&s, &none_of_them)).err(),
            Some(WriteRefused::TooFewLive {
                need: 1,
                live: 0,
                set: vec![2, 3]
            })
        );
        let dirty = WriteView {
            dirty: true,
            ..view(&s, &all)
        };
        assert!(matches!(plan(&dirty), Ok(Plan::Resync)));
        let gap = WriteView {
            first: Some(7),
            ..view(&s, &all)
        };
        assert_eq!(
            plan(&gap).err(),
            Some(WriteRefused::Conflict { first: 7, have: 4 })
        );
        let only_3 = |n: NodeId| n.0 != 2;
        match plan(&view(&s, &only_3)) {
            Ok(Plan::Send(to, _)) => assert_eq!(to, vec![NodeId(3)]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn acknowledged_by_every_set_then_within_the_lease() {
        // A set change in progress: one of {2,3} and one of {3,4}.
        let s = sets(&[(&[2, 3], 1), (&[3, 4], 1)]);
        let all = |_: NodeId| true;
        let Ok(Plan::Send(to, mut w)) = plan(&view(&s, &all)) else {
            panic!("sent")
        };
        assert_eq!(to, vec![NodeId(2), NodeId(3), NodeId(4)]);
        assert_eq!(w.progress(), Progress::Waiting);
        w.answer(NodeId(2), Answer::Held);
        assert_eq!(w.progress(), Progress::Waiting, "the target set has none");
        w.answer(NodeId(4), Answer::Refused);
        assert_eq!(w.progress(), Progress::Waiting);
        w.answer(NodeId(3), Answer::Refused);
        assert_eq!(w.progress(), Progress::Short, "replica 2 holds it");
        let Ok(Plan::Send(_, mut w)) = plan(&view(&s, &all)) else {
            panic!("sent")
        };
        w.answer(NodeId(3), Answer::Held);
        assert_eq!(w.progress(), Progress::Acknowledged);
        let lease = LeaseConfig::default();
        assert_eq!(w.may_append(&lease, Duration::from_millis(2_999)), Ok(()));
        assert_eq!(
            w.may_append(&lease, Duration::from_millis(3_000)),
            Err(AppendRefused::LeaseLapsed)
        );
    }

    #[test]
    fn refused_only_when_every_replica_refused() {
        let s = sets(&[(&[2, 3], 1)]);
        let all = |_: NodeId| true;
        let sent = || {
            let Ok(Plan::Send(_, w)) = plan(&view(&s, &all)) else {
                panic!("sent")
            };
            w
        };
        let mut w = sent();
        w.answer(NodeId(2), Answer::Refused);
        assert_eq!(w.progress(), Progress::Waiting);
        w.answer(NodeId(3), Answer::Refused);
        assert_eq!(w.progress(), Progress::Refused);
        // One silence: replica 3 may hold it.
        let mut w = sent();
        w.answer(NodeId(2), Answer::Refused);
        w.answer(NodeId(3), Answer::Unknown);
        assert_eq!(w.progress(), Progress::Short);
    }
}
