//! The newest event of each entity in the node's local journal, by its
//! digest, and where its timers stand (`cairn_cluster::timers::Position`),
//! kept beside the journal so that a replicated write does not read the
//! journal to name (on the primary) or check (on a replica) the event it
//! follows (`PeerRequest::Replicate::prev`) and the timers position it
//! was made at.
//!
//! [`TailCache`] wraps the local journal: every append and truncation of it
//! goes through the wrapper, which records the last event an append wrote
//! and forgets an entity on a truncation or a failed append. A recorded
//! tail is only ever used as "the event at `seq` has this digest"; anything
//! not known for sure is absent, and the caller reads the journal. Two
//! mutations of one entity that overlap in time (a replica's fill beside a
//! write) record nothing: each mutation takes the entity's generation when
//! it starts and records its tail only if no other mutation started since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cairn_store::{
    BoxFuture, EntityKey, EventRecord, FeedPage, Journal, JournalError, PackedEvents, TimerRecord,
    Write,
};

use cairn_cluster::timers::{POSITION_ID, Position};

use crate::replicate::{event_digest, position_record};

/// Entities remembered at most; past it the map starts afresh (a miss only
/// costs a read).
const MAX_ENTITIES: usize = 200_000;

#[derive(Default)]
struct Tail {
    /// Bumped by every mutation that starts.
    generation: u64,
    /// The newest event as (seq, digest), when known for sure.
    last: Option<(u64, u32)>,
    /// Where the entity's timers stand, when known for sure.
    position: Option<Position>,
}

/// The local journal with the newest event of each entity remembered.
pub(crate) struct TailCache {
    inner: Arc<dyn Journal>,
    tails: Arc<Mutex<HashMap<EntityKey, Tail>>>,
}

impl TailCache {
    /// Wraps `inner`.
    pub(crate) fn new(inner: Arc<dyn Journal>) -> Arc<TailCache> {
        Arc::new(TailCache {
            inner,
            tails: Arc::default(),
        })
    }

    /// The digest of `key`'s event at `seq`, if it is the entity's newest
    /// and known here.
    pub(crate) fn digest_at(&self, key: &EntityKey, seq: u64) -> Option<u32> {
        let tails = self.tails.lock().ok()?;
        match tails.get(key)?.last {
            Some((s, d)) if s == seq => Some(d),
            _ => None,
        }
    }

    /// A mutation of `key` starts: forgets its tail, returns the
    /// generation to record against.
    fn begin(&self, key: &EntityKey) -> u64 {
        let Ok(mut tails) = self.tails.lock() else {
            return 0;
        };
        if tails.len() >= MAX_ENTITIES && !tails.contains_key(key) {
            tails.clear();
        }
        let t = tails.entry(key.clone()).or_default();
        t.generation += 1;
        t.last = None;
        t.position = None;
        t.generation
    }

    /// Where `key`'s timers stand, if known here.
    fn position(&self, key: &EntityKey) -> Option<Position> {
        self.tails.lock().ok()?.get(key)?.position
    }
}

/// Where a write leaves the timers position of an entity that stood at
/// `before` (`None`: not known).
fn position_after(write: &Write, before: Option<Position>) -> Option<Position> {
    if let Some(t) = write.add_timers.iter().find(|t| t.timer_id == POSITION_ID) {
        return Some(Position::decode(&t.command));
    }
    if write.remove_timers.contains(&POSITION_ID) {
        return Some(Position::default());
    }
    before
}

/// Records `last` as `key`'s tail, and `position` as its timers', if no
/// other mutation began since `generation`.
fn finish(
    tails: &Mutex<HashMap<EntityKey, Tail>>,
    key: &EntityKey,
    generation: u64,
    last: Option<(u64, u32)>,
    position: Option<Position>,
) {
    if let Ok(mut tails) = tails.lock()
        && let Some(t) = tails.get_mut(key)
        && t.generation == generation
    {
        t.last = last;
        t.position = position;
    }
}

fn tail_of(events: &[EventRecord]) -> Option<(u64, u32)> {
    events.last().map(|e| (e.seq, event_digest(e)))
}

impl Journal for TailCache {
    fn append(&self, write: Write) -> BoxFuture<'static, Result<(), JournalError>> {
        let key = write.key.clone();
        let known = self
            .tails
            .lock()
            .ok()
            .and_then(|t| t.get(&key).map(|t| (t.last, t.position)));
        // A write without events leaves the tail as it was, when known.
        let last = if write.events.is_empty() {
            known.and_then(|k| k.0)
        } else {
            tail_of(&write.events)
        };
        let position = position_after(&write, known.and_then(|k| k.1));
        let generation = self.begin(&key);
        let tails = self.tails.clone();
        let append = self.inner.append(write);
        Box::pin(async move {
            let r = append.await;
            let ok = r.is_ok();
            finish(
                &tails,
                &key,
                generation,
                ok.then_some(last).flatten(),
                ok.then_some(position).flatten(),
            );
            r
        })
    }

    fn read(
        &self,
        key: &EntityKey,
        from: u64,
        to: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<EventRecord>, JournalError>> {
        self.inner.read(key, from, to, limit)
    }

    fn read_packed(
        &self,
        key: &EntityKey,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<PackedEvents, JournalError>> {
        self.inner.read_packed(key, from, limit)
    }

    fn highest_seq(&self, key: &EntityKey) -> BoxFuture<'static, Result<u64, JournalError>> {
        self.inner.highest_seq(key)
    }

    fn pending_timers(
        &self,
    ) -> BoxFuture<'static, Result<Vec<(EntityKey, TimerRecord)>, JournalError>> {
        self.inner.pending_timers()
    }

    fn entity_timers(
        &self,
        key: &EntityKey,
    ) -> BoxFuture<'static, Result<Vec<TimerRecord>, JournalError>> {
        self.inner.entity_timers(key)
    }

    fn timer(
        &self,
        key: &EntityKey,
        timer_id: u64,
    ) -> BoxFuture<'static, Result<Option<TimerRecord>, JournalError>> {
        if timer_id == POSITION_ID
            && let Some(p) = self.position(key)
        {
            // The record a write of timers only would hold (none while the
            // position is the default one).
            let t = (p != Position::default()).then(|| position_record(p));
            return Box::pin(std::future::ready(Ok(t)));
        }
        self.inner.timer(key, timer_id)
    }

    fn read_feed(
        &self,
        entity_type: &str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<FeedPage, JournalError>> {
        self.inner.read_feed(entity_type, from, limit)
    }

    fn entity_ids(
        &self,
        entity_type: &str,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<String>, JournalError>> {
        self.inner.entity_ids(entity_type, limit)
    }

    fn truncate(
        &self,
        key: &EntityKey,
        after: u64,
    ) -> BoxFuture<'static, Result<(), JournalError>> {
        let key = key.clone();
        let generation = self.begin(&key);
        let tails = self.tails.clone();
        let truncate = self.inner.truncate(&key, after);
        Box::pin(async move {
            let r = truncate.await;
            finish(&tails, &key, generation, None, None);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::MemoryStore;

    fn event(seq: u64, payload: &[u8]) -> EventRecord {
        EventRecord {
            seq,
            timestamp_ms: 7,
            version: "1".into(),
            payload: payload.to_vec(),
        }
    }

    fn write(key: &EntityKey, events: Vec<EventRecord>) -> Write {
        Write {
            key: key.clone(),
            events,
            add_timers: Vec::new(),
            remove_timers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_tail_follows_appends_and_is_forgotten_on_truncation_and_failure() {
        let tails = TailCache::new(MemoryStore::new());
        let key = EntityKey::new("t", "a");
        assert_eq!(tails.digest_at(&key, 1), None);
        tails
            .append(write(&key, vec![event(1, b"x"), event(2, b"y")]))
            .await
            .unwrap();
        let d2 = event_digest(&event(2, b"y"));
        assert_eq!(tails.digest_at(&key, 2), Some(d2));
        assert_eq!(tails.digest_at(&key, 1), None, "only the newest");
        // Timers alone keep the tail.
        tails.append(write(&key, Vec::new())).await.unwrap();
        assert_eq!(tails.digest_at(&key, 2), Some(d2));
        // A failed append (a conflict) forgets it: the journal is read.
        assert!(
            tails
                .append(write(&key, vec![event(2, b"z")]))
                .await
                .is_err()
        );
        assert_eq!(tails.digest_at(&key, 2), None);
        tails
            .append(write(&key, vec![event(3, b"w")]))
            .await
            .unwrap();
        assert_eq!(
            tails.digest_at(&key, 3),
            Some(event_digest(&event(3, b"w")))
        );
        // Where the timers stand follows the writes that say so.
        assert!(tails.timer(&key, POSITION_ID).await.unwrap().is_none());
        let at = Position::default().after(false, 9);
        let mut timers_only = write(&key, Vec::new());
        timers_only.add_timers.push(position_record(at));
        tails.append(timers_only).await.unwrap();
        assert_eq!(tails.position(&key), Some(at));
        let mut with_events = write(&key, vec![event(4, b"v")]);
        with_events.remove_timers.push(POSITION_ID);
        tails.append(with_events).await.unwrap();
        assert_eq!(tails.position(&key), Some(Position::default()));
        assert!(tails.timer(&key, POSITION_ID).await.unwrap().is_none());
        // A truncation forgets it; so do two overlapping mutations.
        tails.truncate(&key, 1).await.unwrap();
        assert_eq!(tails.digest_at(&key, 3), None);
        assert_eq!(tails.digest_at(&key, 1), None);
        let a = tails.append(write(&key, vec![event(2, b"p")]));
        let b = tails.append(write(&key, Vec::new()));
        a.await.unwrap();
        b.await.unwrap();
        assert_eq!(tails.digest_at(&key, 2), None);
        let held = tails.read(&key, 2, 2, 1).await.unwrap();
        assert_eq!(held, vec![event(2, b"p")]);
    }
}
