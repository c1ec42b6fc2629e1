//! The contract every journal and snapshot store of Cairn must keep, as
//! public async checks (feature `testkit`), run against each backend by the
//! workspace's tests and reusable by any new [`Journal`] (e.g. one that
//! replicates a local journal); plus [`SimDisk`], the simulated disk behind
//! the event log's crash tests.
//!
//! Owns test code only: the checks panic (with `assert!` messages) on the
//! first broken rule; they create their own entities under the types `t`,
//! `u` and `sample`, so each wants a fresh, empty store.
//!
//! Use one check per test for readable failures, or the runners
//! ([`journal_contract`], [`snapshot_contract`], [`run_all`]) that open a
//! fresh store in a fresh temporary directory for each check.

use std::path::Path;
use std::sync::Arc;

use crate::{
    BoxFuture, EntityKey, EventRecord, FeedPage, Journal, JournalError, Snapshot, SnapshotStore,
    TimerRecord, Write,
};

mod sim;

pub use sim::{Crash, PAGE, SimDisk};

/// An event of version `1.0.0` at time `1000 + seq`.
pub fn ev(seq: u64, payload: &[u8]) -> EventRecord {
    EventRecord {
        seq,
        timestamp_ms: 1000 + seq,
        version: "1.0.0".into(),
        payload: payload.to_vec(),
    }
}

/// A write of events `seqs` (each payload its sequence number, little-endian).
pub fn write(key: &EntityKey, seqs: std::ops::RangeInclusive<u64>) -> Write {
    Write {
        key: key.clone(),
        events: seqs.map(|s| ev(s, &s.to_le_bytes())).collect(),
        ..Write::default()
    }
}

/// A snapshot of state schema 1.
pub fn snapshot(seq: u64, state: Vec<u8>) -> Snapshot {
    Snapshot {
        seq,
        schema: 1,
        timestamp_ms: 0,
        state,
    }
}

/// The sequence numbers of events.
pub fn seqs(v: &[EventRecord]) -> Vec<u64> {
    v.iter().map(|e| e.seq).collect()
}

/// Appends, bounded reads, conflicts (all or nothing), payloads that
/// round-trip (empty, zeros, 1 MiB), packed reads, timers written with
/// events, and the entity-id listing and its uniform sampling.
pub async fn journal_semantics<J: Journal + ?Sized>(j: &J) {
    let k = EntityKey::new("t", "a");
    assert_eq!(j.highest_seq(&k).await.unwrap(), 0, "never written");
    j.append(write(&k, 1..=10)).await.unwrap();
    assert_eq!(j.highest_seq(&k).await.unwrap(), 10);
    assert_eq!(
        seqs(&j.read(&k, 1, u64::MAX, 100).await.unwrap()),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&j.read(&k, 4, u64::MAX, 100).await.unwrap()),
        (4..=10).collect::<Vec<_>>(),
        "lower bound"
    );
    assert_eq!(
        seqs(&j.read(&k, 0, 3, 100).await.unwrap()),
        vec![1, 2, 3],
        "upper bound"
    );
    assert_eq!(
        seqs(&j.read(&k, 3, 5, 100).await.unwrap()),
        vec![3, 4, 5],
        "both"
    );
    assert_eq!(
        seqs(&j.read(&k, 2, 9, 3).await.unwrap()),
        vec![2, 3, 4],
        "limit"
    );
    assert!(j.read(&k, 1, 10, 0).await.unwrap().is_empty(), "limit 0");
    assert!(
        j.read(&k, 6, 5, 10).await.unwrap().is_empty(),
        "lower above upper"
    );
    assert!(
        j.read(&EntityKey::new("t", "other"), 1, 10, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let e = j.read(&k, 7, 7, 1).await.unwrap().remove(0);
    assert_eq!(e, ev(7, &7u64.to_le_bytes()), "record round-trips");

    // All or nothing: #11..#13 where #12... no: #10 conflicts, so #11 must not appear.
    let bad = write(&k, 10..=11);
    let err = j.append(bad).await.unwrap_err();
    assert!(
        matches!(err, JournalError::Conflict { seq: 10, .. }),
        "{err}"
    );
    assert_eq!(
        j.highest_seq(&k).await.unwrap(),
        10,
        "nothing of a failed write is visible"
    );

    // Payloads round-trip unchanged, including empty, zero bytes and 1 MiB.
    let k2 = EntityKey::new("t", "payloads");
    let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let payloads = [vec![], vec![0u8; 3], vec![0xff, 0, 0x80], big];
    let w = Write {
        key: k2.clone(),
        events: payloads
            .iter()
            .enumerate()
            .map(|(i, p)| ev(i as u64 + 1, p))
            .collect(),
        ..Write::default()
    };
    j.append(w).await.unwrap();
    let back = j.read(&k2, 1, 100, 100).await.unwrap();
    assert_eq!(
        back.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
        payloads.to_vec()
    );

    // Packed reads.
    let p = j.read_packed(&k, 8, 100).await.unwrap();
    assert_eq!((p.count, p.last_seq), (3, 10));
    let mut expect = Vec::new();
    for s in 8u64..=10 {
        expect.extend_from_slice(&8u32.to_le_bytes());
        expect.extend_from_slice(&s.to_le_bytes());
    }
    assert_eq!(p.packed, expect);
    let p = j.read_packed(&k, 1, 4).await.unwrap();
    assert_eq!((p.count, p.last_seq), (4, 4));
    let p = j.read_packed(&k, 11, 4).await.unwrap();
    assert_eq!((p.count, p.packed.len()), (0, 0));

    // Timers travel with writes.
    let t = TimerRecord {
        timer_id: 42,
        fire_at_ms: 5,
        command: vec![1, 2],
    };
    j.append(Write {
        key: k.clone(),
        add_timers: vec![t.clone()],
        ..Write::default()
    })
    .await
    .unwrap();
    assert_eq!(
        j.pending_timers().await.unwrap(),
        vec![(k.clone(), t.clone())]
    );
    assert_eq!(j.entity_timers(&k).await.unwrap(), vec![t.clone()]);
    assert!(
        j.entity_timers(&EntityKey::new("t", "other"))
            .await
            .unwrap()
            .is_empty()
    );
    // One timer by its id; a timer of another id or entity is none.
    assert_eq!(j.timer(&k, 42).await.unwrap(), Some(t));
    assert_eq!(j.timer(&k, 43).await.unwrap(), None);
    assert_eq!(
        j.timer(&EntityKey::new("t", "other"), 42).await.unwrap(),
        None
    );
    j.append(Write {
        key: k.clone(),
        events: vec![ev(11, b"x")],
        remove_timers: vec![42],
        ..Write::default()
    })
    .await
    .unwrap();
    assert!(j.pending_timers().await.unwrap().is_empty());
    assert_eq!(j.timer(&k, 42).await.unwrap(), None);
    assert_eq!(j.highest_seq(&k).await.unwrap(), 11);

    assert_eq!(
        j.entity_ids("t", 10).await.unwrap(),
        vec!["a".to_string(), "payloads".to_string()]
    );
    let one = j.entity_ids("t", 1).await.unwrap();
    assert!(one == ["a"] || one == ["payloads"], "{one:?}");
    assert!(j.entity_ids("none", 10).await.unwrap().is_empty());

    // Over the limit, a uniform random sample: distinct, ascending, and over
    // many calls every entity is chosen (each call picks a given one with
    // probability 3/10; missing it 200 times has probability 0.7^200).
    let all: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    for id in &all {
        j.append(write(&EntityKey::new("sample", id.as_str()), 1..=3))
            .await
            .unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let ids = j.entity_ids("sample", 3).await.unwrap();
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        seen.extend(ids);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), all);
    assert_eq!(j.entity_ids("sample", 100).await.unwrap(), all);
}

/// Saving and loading snapshots: the newest under a bound, same-sequence
/// overwrite, schemas kept apart, retention of the newest `keep`.
pub async fn snapshot_semantics<S: SnapshotStore + ?Sized>(s: &S) {
    let k = EntityKey::new("t", "s");
    let snap = |seq: u64, schema: u32, b: u8| Snapshot {
        seq,
        schema,
        timestamp_ms: seq,
        state: vec![b],
    };
    assert_eq!(s.load(&k, u64::MAX, 1).await.unwrap(), None);
    for seq in [5, 10, 15] {
        s.save(&k, snap(seq, 1, seq as u8), 10).await.unwrap();
    }
    assert_eq!(
        s.load(&k, u64::MAX, 1).await.unwrap(),
        Some(snap(15, 1, 15)),
        "newest by default"
    );
    assert_eq!(
        s.load(&k, 12, 1).await.unwrap(),
        Some(snap(10, 1, 10)),
        "newest under a bound"
    );
    assert_eq!(s.load(&k, 4, 1).await.unwrap(), None);
    s.save(&k, snap(15, 1, 99), 10).await.unwrap();
    assert_eq!(
        s.load(&k, u64::MAX, 1).await.unwrap(),
        Some(snap(15, 1, 99)),
        "same-sequence overwrite"
    );
    // Another schema is ignored.
    s.save(&k, snap(20, 2, 20), 10).await.unwrap();
    assert_eq!(
        s.load(&k, u64::MAX, 1).await.unwrap(),
        Some(snap(15, 1, 99))
    );
    assert_eq!(
        s.load(&k, u64::MAX, 2).await.unwrap(),
        Some(snap(20, 2, 20))
    );
    assert_eq!(s.load(&k, u64::MAX, 3).await.unwrap(), None);
    // Retention keeps the newest K.
    s.save(&k, snap(25, 1, 25), 2).await.unwrap();
    assert_eq!(
        s.load(&k, 19, 1).await.unwrap(),
        None,
        "older ones were dropped"
    );
    assert_eq!(s.load(&k, 24, 2).await.unwrap(), Some(snap(20, 2, 20)));
    assert_eq!(
        s.load(&k, u64::MAX, 1).await.unwrap(),
        Some(snap(25, 1, 25))
    );
}

/// Many writes queued at once (group-commit batches); one of them
/// conflicts: only that one fails, all the others are stored.
pub async fn conflict_in_a_batch<J: Journal + ?Sized>(s: &J) {
    let dup = EntityKey::new("t", "dup");
    s.append(write(&dup, 1..=1)).await.unwrap();
    let mut futs = Vec::new();
    for i in 0..500 {
        futs.push(s.append(write(&EntityKey::new("t", format!("e{i}")), 1..=2)));
        if i == 250 {
            futs.push(s.append(write(&dup, 1..=3)));
        }
    }
    let results: Vec<_> = futures_join(futs).await;
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(matches!(
        failed[0],
        Err(JournalError::Conflict { seq: 1, .. })
    ));
    assert_eq!(
        s.highest_seq(&dup).await.unwrap(),
        1,
        "the conflicting write stored nothing"
    );
    for i in 0..500 {
        assert_eq!(
            s.highest_seq(&EntityKey::new("t", format!("e{i}")))
                .await
                .unwrap(),
            2
        );
    }
}

async fn futures_join<T>(futs: Vec<BoxFuture<'static, T>>) -> Vec<T> {
    let handles: Vec<_> = futs.into_iter().map(|f| (f,)).collect();
    let mut out = Vec::new();
    for (f,) in handles {
        out.push(f.await);
    }
    out
}

fn feed_ids(p: &FeedPage) -> Vec<(String, u64)> {
    p.events
        .iter()
        .map(|(k, e)| (k.entity_id.clone(), e.seq))
        .collect()
}

/// Reads the whole feed of a type from `from` in pages of `limit`: the
/// events as (entity id, seq), and the cursor at the end.
pub async fn drain_feed<J: Journal + ?Sized>(
    j: &J,
    ty: &str,
    mut from: u64,
    limit: usize,
) -> (Vec<(String, u64)>, u64) {
    let mut all = Vec::new();
    loop {
        let p = j.read_feed(ty, from, limit).await.unwrap();
        let done = p.events.is_empty() && p.next == from;
        all.extend(feed_ids(&p));
        from = p.next;
        if done {
            return (all, from);
        }
    }
}

/// The feed of a type: commit order, paging, cursors (of an empty page,
/// of the end), types kept apart, payloads unchanged.
pub async fn feed_semantics<J: Journal + ?Sized>(j: &J) {
    let (a, b, other) = (
        EntityKey::new("t", "a"),
        EntityKey::new("t", "b"),
        EntityKey::new("u", "z"),
    );
    let empty = j.read_feed("t", 0, 10).await.unwrap();
    assert!(empty.events.is_empty());
    j.append(write(&a, 1..=2)).await.unwrap();
    j.append(write(&other, 1..=3)).await.unwrap();
    j.append(write(&b, 1..=1)).await.unwrap();
    j.append(write(&a, 3..=3)).await.unwrap();
    // A conflicting write adds nothing.
    assert!(j.append(write(&b, 1..=2)).await.is_err());
    let expected: Vec<(String, u64)> = vec![
        ("a".into(), 1),
        ("a".into(), 2),
        ("b".into(), 1),
        ("a".into(), 3),
    ];
    // The cursor of an empty page taken before any write still works.
    let (from_empty, _) = drain_feed(j, "t", empty.next, 100).await;
    assert_eq!(from_empty, expected);
    // Paging with a small limit yields every event once, in commit order.
    let (paged, end) = drain_feed(j, "t", 0, 1).await;
    assert_eq!(paged, expected);
    let (others, _) = drain_feed(j, "u", 0, 2).await;
    assert_eq!(others.len(), 3);
    assert!(others.iter().all(|(id, _)| id == "z"));
    // Resuming from the end returns only what came later.
    j.append(write(&b, 2..=3)).await.unwrap();
    let (later, _) = drain_feed(j, "t", end, 100).await;
    assert_eq!(later, vec![("b".into(), 2), ("b".into(), 3)]);
    // Payloads come back unchanged.
    let p = j.read_feed("t", 0, 1).await.unwrap();
    assert_eq!(p.events[0].1.payload, 1u64.to_le_bytes());
}

/// Truncation removes an entity's events above a sequence number, from
/// reads and the feed; appends then continue after it; other entities
/// keep theirs.
pub async fn truncate_semantics<J: Journal + ?Sized>(j: &J) {
    let a = EntityKey::new("t", "cut");
    let b = EntityKey::new("t", "kept");
    j.append(write(&a, 1..=5)).await.unwrap();
    j.append(write(&b, 1..=2)).await.unwrap();
    j.truncate(&a, 3).await.unwrap();
    assert_eq!(j.highest_seq(&a).await.unwrap(), 3);
    assert_eq!(
        seqs(&j.read(&a, 1, u64::MAX, 100).await.unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(
        j.highest_seq(&b).await.unwrap(),
        2,
        "another entity keeps its events"
    );
    // The same sequence number again, another event: no conflict.
    let again = Write {
        key: a.clone(),
        events: vec![ev(4, b"second")],
        ..Write::default()
    };
    j.append(again.clone()).await.unwrap();
    assert_eq!(j.read(&a, 4, 4, 1).await.unwrap(), vec![ev(4, b"second")]);
    assert!(
        matches!(
            j.append(again).await,
            Err(JournalError::Conflict { seq: 4, .. })
        ),
        "#4 exists again"
    );
    let (shown, _) = drain_feed(j, "t", 0, 2).await;
    let want: Vec<(String, u64)> = [
        ("cut", 1),
        ("cut", 2),
        ("cut", 3),
        ("kept", 1),
        ("kept", 2),
        ("cut", 4),
    ]
    .iter()
    .map(|(id, seq)| (id.to_string(), *seq))
    .collect();
    assert_eq!(shown, want, "the feed shows no truncated event");
    let all = j.read_feed("t", 0, 100).await.unwrap().events;
    assert_eq!(
        all.last().map(|(_, e)| e.payload.clone()),
        Some(b"second".to_vec())
    );
    // Above the last event, or an entity without events: nothing to do.
    j.truncate(&a, 10).await.unwrap();
    j.truncate(&EntityKey::new("t", "none"), 0).await.unwrap();
    assert_eq!(j.highest_seq(&a).await.unwrap(), 4);
    j.truncate(&a, 0).await.unwrap();
    assert_eq!(j.highest_seq(&a).await.unwrap(), 0);
    assert_eq!(
        j.entity_ids("t", 10).await.unwrap(),
        vec!["kept".to_string()]
    );
}

/// A truncation survives closing and reopening `dir`, and so do the
/// events written after it (for durable backends); snapshots past the cut
/// are gone.
pub async fn truncate_survives_reopen<S, F>(dir: &Path, open: F)
where
    S: Journal + SnapshotStore,
    F: Fn(&Path) -> Arc<S>,
{
    let k = EntityKey::new("t", "cut");
    {
        let s = open(dir);
        s.append(write(&k, 1..=6)).await.unwrap();
        s.save(&k, snapshot(5, vec![5]), 2).await.unwrap();
        s.truncate(&k, 2).await.unwrap();
        s.append(Write {
            key: k.clone(),
            events: vec![ev(3, b"after")],
            ..Write::default()
        })
        .await
        .unwrap();
    }
    let s = open(dir);
    assert_eq!(
        seqs(&s.read(&k, 1, u64::MAX, 100).await.unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(s.read(&k, 3, 3, 1).await.unwrap(), vec![ev(3, b"after")]);
    assert_eq!(
        s.load(&k, u64::MAX, 1).await.unwrap(),
        None,
        "the snapshot at #5 is gone"
    );
    let (feed, _) = drain_feed(&*s, "t", 0, 100).await;
    assert_eq!(feed.len(), 3);
}

/// What was acknowledged survives closing and reopening `dir` (for
/// durable backends): events, a snapshot.
pub async fn survives_reopen<S, F>(dir: &Path, open: F)
where
    S: Journal + SnapshotStore,
    F: Fn(&Path) -> Arc<S>,
{
    let k = EntityKey::new("t", "r");
    {
        let s = open(dir);
        s.append(write(&k, 1..=3)).await.unwrap();
        s.save(&k, snapshot(2, vec![7]), 1).await.unwrap();
    }
    let s = open(dir);
    assert_eq!(s.highest_seq(&k).await.unwrap(), 3);
    assert_eq!(
        s.load(&k, u64::MAX, 1).await.unwrap().map(|s| s.state),
        Some(vec![7])
    );
}

/// The feed check, then the whole feed again after reopening `dir` (for
/// durable backends).
pub async fn feed_survives_reopen<J, F>(dir: &Path, open: F)
where
    J: Journal,
    F: Fn(&Path) -> Arc<J>,
{
    feed_semantics(&*open(dir)).await;
    let s = open(dir);
    let (all, _) = drain_feed(&*s, "t", 0, 100).await;
    assert_eq!(all.len(), 6);
}

/// A fresh temporary directory for one check.
fn fresh_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory for a contract check")
}

/// Every [`Journal`] check, each on a fresh store that `open` makes in a
/// fresh directory.
pub async fn journal_contract<J: Journal>(open: impl Fn(&Path) -> Arc<J>) {
    let dir = fresh_dir();
    journal_semantics(&*open(dir.path())).await;
    let dir = fresh_dir();
    feed_semantics(&*open(dir.path())).await;
    let dir = fresh_dir();
    conflict_in_a_batch(&*open(dir.path())).await;
    let dir = fresh_dir();
    truncate_semantics(&*open(dir.path())).await;
}

/// Every [`SnapshotStore`] check, on a fresh store.
pub async fn snapshot_contract<S: SnapshotStore>(open: impl Fn(&Path) -> Arc<S>) {
    let dir = fresh_dir();
    snapshot_semantics(&*open(dir.path())).await;
}

/// [`journal_contract`] and [`snapshot_contract`], then, when `durable`,
/// the reopen checks ([`survives_reopen`], [`feed_survives_reopen`]: `open`
/// is called again on the same directory and must find the same data).
pub async fn run_all<S: Journal + SnapshotStore>(open: impl Fn(&Path) -> Arc<S>, durable: bool) {
    journal_contract(&open).await;
    snapshot_contract(&open).await;
    if durable {
        let dir = fresh_dir();
        survives_reopen(dir.path(), &open).await;
        let dir = fresh_dir();
        feed_survives_reopen(dir.path(), &open).await;
        let dir = fresh_dir();
        truncate_survives_reopen(dir.path(), &open).await;
    }
}
