//! Which of a primary's queued writes to one replica leave together in one
//! replication message, without I/O.
//!
//! The driver keeps one queue per replica and one message in flight per
//! replica; while it is in flight, the next batch gathers. [`Gather`] says,
//! write by write in queue order, whether the next write joins the batch
//! or waits for the next one. Its rules:
//! - at most [`Limits::max_writes`] writes and about [`Limits::max_bytes`]
//!   bytes of events (a write larger than that travels alone);
//! - at most one write of an entity: the replica appends a batch's writes
//!   concurrently, so two writes of one entity in a batch could reach its
//!   journal out of order;
//! - a write that cannot join ends the batch (it starts the next one): the
//!   queue's order is kept, so an entity's writes reach the replica in the
//!   order its primary sent them.

use crate::fence::{Mutant, is_mutant};

/// The bounds of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most writes one batch carries.
    pub max_writes: usize,
    /// About the most bytes of events one batch carries.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_writes: 256,
            max_bytes: 1024 * 1024,
        }
    }
}

/// What becomes of the next queued write ([`Gather::offer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It joins the batch.
    Join,
    /// It waits: the batch leaves without it, and it starts the next one.
    Next,
}

/// One batch being gathered: the entities it holds and its size.
#[derive(Debug, Clone)]
pub struct Gather<K> {
    limits: Limits,
    entities: Vec<K>,
    bytes: usize,
}

impl<K: PartialEq> Gather<K> {
    /// A batch started by its first write (which always goes, whatever its
    /// size).
    pub fn start(limits: Limits, entity: K, bytes: usize) -> Gather<K> {
        Gather {
            limits,
            entities: vec![entity],
            bytes,
        }
    }

    /// Whether the next write in the queue, of `entity` with `bytes` of
    /// events, joins the batch. Once a write is told [`Offer::Next`], the
    /// batch takes nothing more.
    pub fn offer(&mut self, entity: K, bytes: usize) -> Offer {
        let full = self.entities.len() >= self.limits.max_writes
            || self.bytes + bytes > self.limits.max_bytes;
        let same_entity =
            self.entities.contains(&entity) && !is_mutant(Mutant::TwoWritesOfAnEntityPerBatch);
        if full || same_entity {
            return Offer::Next;
        }
        self.entities.push(entity);
        self.bytes += bytes;
        Offer::Join
    }

    /// How many writes the batch holds.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Always false: a batch starts with a write.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a queue of (entity, bytes) into batches as the driver does.
    fn batches(limits: Limits, queue: &[(u32, usize)]) -> Vec<Vec<(u32, usize)>> {
        let mut out: Vec<Vec<(u32, usize)>> = Vec::new();
        let mut i = 0;
        while i < queue.len() {
            let (e, b) = queue[i];
            let mut g = Gather::start(limits, e, b);
            let mut batch = vec![queue[i]];
            i += 1;
            while i < queue.len() && g.offer(queue[i].0, queue[i].1) == Offer::Join {
                batch.push(queue[i]);
                i += 1;
            }
            out.push(batch);
        }
        out
    }

    #[test]
    fn bounds_and_one_write_per_entity() {
        let limits = Limits {
            max_writes: 3,
            max_bytes: 100,
        };
        // The fourth write waits for the next batch (count).
        let b = batches(limits, &[(1, 10), (2, 10), (3, 10), (4, 10)]);
        assert_eq!(b.len(), 2);
        // A second write of entity 1 ends the batch, and entity 3's write
        // behind it waits too (the queue's order is kept).
        let b = batches(limits, &[(1, 10), (2, 10), (1, 10), (3, 10)]);
        assert_eq!(b, vec![vec![(1, 10), (2, 10)], vec![(1, 10), (3, 10)]]);
        // A big write travels alone.
        let b = batches(limits, &[(1, 10), (2, 500), (3, 10)]);
        assert_eq!(
            b,
            vec![vec![(1, 10)], vec![(2, 500)], vec![(3, 10)]],
            "{b:?}"
        );
    }

    /// Seeded queues of writes of a few entities: every batch holds at most
    /// one write per entity and stays within its bounds, and concatenated
    /// the batches are the queue (nothing lost, reordered or repeated).
    #[test]
    fn seeded_queues_keep_order_and_bounds() {
        use rand::rngs::StdRng;
        use rand::{RngExt, SeedableRng};
        let check = |seeds: u64| -> Result<(), String> {
            for seed in 0..seeds {
                let mut rng = StdRng::seed_from_u64(seed);
                let limits = Limits {
                    max_writes: rng.random_range(1..6),
                    max_bytes: rng.random_range(10..200),
                };
                let queue: Vec<(u32, usize)> = (0..rng.random_range(0..40))
                    .map(|_| (rng.random_range(0..5), rng.random_range(1..60)))
                    .collect();
                let b = batches(limits, &queue);
                if b.concat() != queue {
                    return Err(format!("seed {seed}: batches {b:?} are not {queue:?}"));
                }
                for batch in &b {
                    let mut seen = Vec::new();
                    for (e, _) in batch {
                        if seen.contains(e) {
                            return Err(format!("seed {seed}: entity {e} twice in {batch:?}"));
                        }
                        seen.push(*e);
                    }
                    let bytes: usize = batch.iter().map(|w| w.1).sum();
                    if batch.len() > 1
                        && (batch.len() > limits.max_writes || bytes > limits.max_bytes)
                    {
                        return Err(format!("seed {seed}: {batch:?} exceeds {limits:?}"));
                    }
                }
            }
            Ok(())
        };
        check(2_000).unwrap();
        crate::fence::set_mutant(Some(Mutant::TwoWritesOfAnEntityPerBatch));
        let broken = check(2_000);
        crate::fence::set_mutant(None);
        assert!(
            broken.is_err(),
            "a batch with two writes of an entity went unnoticed"
        );
    }
}
