//! An in-memory backend with the same semantics as SQLite but no durability:
//! for tests and experiments. Owns nothing on disk.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{
    BoxFuture, EntityKey, EventRecord, FeedPage, Journal, JournalError, PackedEvents, Snapshot,
    SnapshotStore, TimerRecord, Write,
};

#[derive(Default)]
struct Data {
    events: BTreeMap<(EntityKey, u64), EventRecord>,
    snapshots: BTreeMap<(EntityKey, u64), Snapshot>,
    timers: BTreeMap<(EntityKey, u64), TimerRecord>,
    /// Every stored event in commit order; a feed cursor indexes it. A
    /// truncated event's place stays (cursors keep their meaning), empty.
    feed: Vec<Option<(EntityKey, u64)>>,
}

/// Journal and snapshots in memory.
#[derive(Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Arc<MemoryStore> {
        Arc::new(MemoryStore::default())
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl Journal for MemoryStore {
    fn append(&self, w: Write) -> BoxFuture<'static, Result<(), JournalError>> {
        let mut d = self.lock();
        if let Some(e) = w
            .events
            .iter()
            .find(|e| d.events.contains_key(&(w.key.clone(), e.seq)))
        {
            return ready(Err(JournalError::Conflict {
                key: w.key.clone(),
                seq: e.seq,
            }));
        }
        for e in w.events {
            d.feed.push(Some((w.key.clone(), e.seq)));
            d.events.insert((w.key.clone(), e.seq), e);
        }
        for t in w.add_timers {
            d.timers.insert((w.key.clone(), t.timer_id), t);
        }
        for id in w.remove_timers {
            d.timers.remove(&(w.key.clone(), id));
        }
        ready(Ok(()))
    }

    fn read(
        &self,
        key: &EntityKey,
        from: u64,
        to: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<EventRecord>, JournalError>> {
        if from > to || limit == 0 {
            return ready(Ok(Vec::new()));
        }
        let d = self.lock();
        let out = d
            .events
            .range((key.clone(), from)..=(key.clone(), to))
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect();
        ready(Ok(out))
    }

    fn read_packed(
        &self,
        key: &EntityKey,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<PackedEvents, JournalError>> {
        let d = self.lock();
        let mut out = PackedEvents::default();
        for (_, e) in d
            .events
            .range((key.clone(), from)..=(key.clone(), u64::MAX))
            .take(limit)
        {
            if let Err(err) = out.push(e.seq, &e.payload) {
                return ready(Err(err));
            }
        }
        ready(Ok(out))
    }

    fn highest_seq(&self, key: &EntityKey) -> BoxFuture<'static, Result<u64, JournalError>> {
        let d = self.lock();
        let h = d
            .events
            .range((key.clone(), 0)..=(key.clone(), u64::MAX))
            .next_back()
            .map_or(0, |(_, e)| e.seq);
        ready(Ok(h))
    }

    fn pending_timers(
        &self,
    ) -> BoxFuture<'static, Result<Vec<(EntityKey, TimerRecord)>, JournalError>> {
        let d = self.lock();
        let mut v: Vec<_> = d
            .timers
            .iter()
            .map(|((k, _), t)| (k.clone(), t.clone()))
            .collect();
        v.sort_by_key(|(_, t)| t.fire_at_ms);
        ready(Ok(v))
    }

    fn timer(
        &self,
        key: &EntityKey,
        timer_id: u64,
    ) -> BoxFuture<'static, Result<Option<TimerRecord>, JournalError>> {
        let d = self.lock();
        ready(Ok(d.timers.get(&(key.clone(), timer_id)).cloned()))
    }

    fn entity_timers(
        &self,
        key: &EntityKey,
    ) -> BoxFuture<'static, Result<Vec<TimerRecord>, JournalError>> {
        let d = self.lock();
        let v = d
            .timers
            .range((key.clone(), 0)..=(key.clone(), u64::MAX))
            .map(|(_, t)| t.clone())
            .collect();
        ready(Ok(v))
    }

    fn read_feed(
        &self,
        entity_type: &str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<FeedPage, JournalError>> {
        let d = self.lock();
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(d.feed.len());
        let mut page = FeedPage {
            events: Vec::new(),
            next: from.max(start as u64),
        };
        for (i, slot) in d.feed.iter().enumerate().skip(start) {
            if page.events.len() >= limit {
                break;
            }
            page.next = i as u64 + 1;
            if let Some((key, seq)) = slot
                && key.entity_type == entity_type
                && let Some(e) = d.events.get(&(key.clone(), *seq))
            {
                page.events.push((key.clone(), e.clone()));
            }
        }
        ready(Ok(page))
    }

    fn truncate(
        &self,
        key: &EntityKey,
        after: u64,
    ) -> BoxFuture<'static, Result<(), JournalError>> {
        let mut d = self.lock();
        let cut = |k: &EntityKey, seq: u64| k == key && seq > after;
        d.events.retain(|(k, seq), _| !cut(k, *seq));
        d.snapshots.retain(|(k, seq), _| !cut(k, *seq));
        for slot in &mut d.feed {
            if slot.as_ref().is_some_and(|(k, seq)| cut(k, *seq)) {
                *slot = None;
            }
        }
        ready(Ok(()))
    }

    fn entity_ids(
        &self,
        entity_type: &str,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<String>, JournalError>> {
        let d = self.lock();
        // Keys are ordered by entity then sequence: an entity's events are
        // adjacent, so skipping repeats of the previous id leaves each once.
        let mut last = None;
        let ids = d
            .events
            .keys()
            .filter(|(k, _)| k.entity_type == entity_type)
            .map(|(k, _)| k.entity_id.as_str())
            .filter(move |id| last.replace(*id) != Some(*id));
        ready(Ok(crate::sample_ids(ids, limit)))
    }
}

impl SnapshotStore for MemoryStore {
    fn save(
        &self,
        key: &EntityKey,
        snapshot: Snapshot,
        keep: usize,
    ) -> BoxFuture<'static, Result<(), JournalError>> {
        let mut d = self.lock();
        d.snapshots.insert((key.clone(), snapshot.seq), snapshot);
        let seqs: Vec<u64> = d
            .snapshots
            .range((key.clone(), 0)..=(key.clone(), u64::MAX))
            .map(|((_, s), _)| *s)
            .collect();
        let drop_n = seqs.len().saturating_sub(keep.max(1));
        for s in &seqs[..drop_n] {
            d.snapshots.remove(&(key.clone(), *s));
        }
        ready(Ok(()))
    }

    fn load(
        &self,
        key: &EntityKey,
        max_seq: u64,
        schema: u32,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, JournalError>> {
        let d = self.lock();
        let s = d
            .snapshots
            .range((key.clone(), 0)..=(key.clone(), max_seq))
            .rev()
            .map(|(_, s)| s)
            .find(|s| s.schema == schema)
            .cloned();
        ready(Ok(s))
    }
}
