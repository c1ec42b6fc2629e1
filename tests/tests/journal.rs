//! The journal and snapshot contracts (issue 2, checks 2 and 3), run against
//! every backend of `cairn-store`, plus backend-specific ones
//! (reopening, group-commit batches, garbage files).

use std::sync::Arc;

use cairn_store::*;

fn ev(seq: u64, payload: &[u8]) -> EventRecord {
    EventRecord {
        seq,
        timestamp_ms: 1000 + seq,
        version: "1.0.0".into(),
        payload: payload.to_vec(),
    }
}

fn write(key: &EntityKey, seqs: std::ops::RangeInclusive<u64>) -> Write {
    Write {
        key: key.clone(),
        events: seqs.map(|s| ev(s, &s.to_le_bytes())).collect(),
        ..Write::default()
    }
}

/// End of the records of an event log file (it is zero-filled past them):
/// walks the frames (`[u32 length][u32 crc][body]`) after the 12-byte header.
fn log_data_end(bytes: &[u8]) -> u64 {
    let mut pos = 12usize;
    while pos + 8 <= bytes.len() {
        let blen = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if blen == 0 {
            break;
        }
        pos += 8 + blen;
    }
    pos as u64
}

/// A snapshot of state schema 1.
fn snapshot(seq: u64, state: Vec<u8>) -> Snapshot {
    Snapshot {
        seq,
        schema: 1,
        timestamp_ms: 0,
        state,
    }
}

fn seqs(v: &[EventRecord]) -> Vec<u64> {
    v.iter().map(|e| e.seq).collect()
}

async fn journal_semantics(j: Arc<dyn Journal>) {
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
    assert_eq!(j.pending_timers().await.unwrap(), vec![(k.clone(), t)]);
    j.append(Write {
        key: k.clone(),
        events: vec![ev(11, b"x")],
        remove_timers: vec![42],
        ..Write::default()
    })
    .await
    .unwrap();
    assert!(j.pending_timers().await.unwrap().is_empty());
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

async fn snapshot_semantics(s: Arc<dyn SnapshotStore>) {
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

#[tokio::test]
async fn memory_journal() {
    journal_semantics(MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_snapshots() {
    snapshot_semantics(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_journal() {
    let dir = tempfile::tempdir().unwrap();
    journal_semantics(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    snapshot_semantics(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let k = EntityKey::new("t", "r");
    {
        let s = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        s.append(write(&k, 1..=3)).await.unwrap();
        s.save(&k, snapshot(2, vec![7]), 1).await.unwrap();
    }
    let s = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
    assert_eq!(s.highest_seq(&k).await.unwrap(), 3);
    assert_eq!(
        s.load(&k, u64::MAX, 1).await.unwrap().map(|s| s.state),
        Some(vec![7])
    );
}

/// Packed reads keep their meaning (the next `max` events from `from` on, in
/// order) when rows are missing from the file: recovery then sees the gap in
/// `last_seq` instead of stopping early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_packed_reads_show_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let k = EntityKey::new("t", "gap");
    {
        let s = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        s.append(write(&k, 1..=20)).await.unwrap();
    }
    let c = rusqlite::Connection::open(dir.path().join("journal.db")).unwrap();
    c.execute("DELETE FROM events WHERE seq >= 5 AND seq <= 8", [])
        .unwrap();
    drop(c);
    let s = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
    // Full range before the gap.
    let p = s.read_packed(&k, 1, 4).await.unwrap();
    assert_eq!((p.count, p.last_seq), (4, 4));
    // The gap falls inside the range, or right after its last row.
    for (from, max, count, last) in [(1, 8, 8, 12), (1, 6, 6, 10), (3, 2, 2, 4), (4, 1, 1, 4)] {
        let p = s.read_packed(&k, from, max).await.unwrap();
        assert_eq!(
            (p.count, p.last_seq),
            (count, last),
            "from {from}, max {max}"
        );
    }
    let p = s.read_packed(&k, 3, 3).await.unwrap();
    assert_eq!((p.count, p.last_seq), (3, 9));
    // Short tail: the rest of the history.
    let p = s.read_packed(&k, 15, 100).await.unwrap();
    assert_eq!((p.count, p.last_seq), (6, 20));
    let mut expect = Vec::new();
    for seq in [3u64, 4, 9] {
        expect.extend_from_slice(&8u32.to_le_bytes());
        expect.extend_from_slice(&seq.to_le_bytes());
    }
    assert_eq!(s.read_packed(&k, 3, 3).await.unwrap().packed, expect);
}

/// Many writes queued at once land in shared group-commit batches; one of
/// them conflicts: only that one fails, all the others are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conflict_fails_only_its_write_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    conflict_in_a_batch(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_conflict_fails_only_its_write_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    conflict_in_a_batch(LogStore::open(dir.path(), 4096).unwrap()).await;
}

async fn conflict_in_a_batch(s: Arc<impl Journal>) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_garbage_and_newer_formats() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("journal.db"), vec![0x42u8; 8192]).unwrap();
    let e = SqliteStore::open(dir.path(), SqliteOptions::default())
        .err()
        .expect("garbage refused");
    assert!(matches!(e, JournalError::Database(_)), "{e}");

    let dir = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(dir.path().join("journal.db")).unwrap();
        c.execute_batch("PRAGMA user_version = 99").unwrap();
    }
    let e = SqliteStore::open(dir.path(), SqliteOptions::default())
        .err()
        .expect("newer format refused");
    assert!(
        matches!(e, JournalError::UnsupportedFormat { found: 99, .. }),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_journal() {
    let dir = tempfile::tempdir().unwrap();
    journal_semantics(LogStore::open(dir.path(), 4096).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_journal_buffered() {
    let dir = tempfile::tempdir().unwrap();
    journal_semantics(LogStore::open_buffered(dir.path(), 4096).unwrap()).await;
}

/// Groups of every size, crossing 4 KiB blocks and the zero-filled steps, on
/// direct writes (the partial last block is rewritten each time) and on
/// buffered ones, with reopens in between: every payload reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_direct_and_buffered_writes_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let payload = |seq: u64| -> Vec<u8> {
        let n = (seq * 2654435761 % 9000) as usize;
        (0..n).map(|i| (seq as usize + i) as u8).collect()
    };
    let keys: Vec<EntityKey> = (0..7)
        .map(|i| EntityKey::new("t", format!("d{i}")))
        .collect();
    let mut next = vec![1u64; keys.len()];
    // The last round only reopens and reads back.
    let rounds = [(true, 60), (false, 60), (true, 60), (true, 60), (true, 0)];
    for (round, (direct, steps)) in rounds.into_iter().enumerate() {
        let s = if direct {
            LogStore::open(dir.path(), 16).unwrap()
        } else {
            LogStore::open_buffered(dir.path(), 16).unwrap()
        };
        // What earlier rounds wrote is all there.
        for (k, n) in keys.iter().zip(&next) {
            let back = s.read(k, 1, u64::MAX, usize::MAX).await.unwrap();
            assert_eq!(back.len() as u64, n - 1, "round {round}, {k}");
            for e in back {
                assert_eq!(e.payload, payload(e.seq), "round {round}, {k} #{}", e.seq);
            }
        }
        for step in 0..steps {
            let mut pending = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                if (step + i) % 3 == 0 {
                    continue;
                }
                let n = 1 + (step + i) as u64 % 4;
                let events = (next[i]..next[i] + n).map(|q| ev(q, &payload(q))).collect();
                next[i] += n;
                pending.push(s.append(Write {
                    key: k.clone(),
                    events,
                    ..Write::default()
                }));
            }
            for r in futures_join(pending).await {
                r.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    snapshot_semantics(LogStore::open(dir.path(), 4096).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_survives_reopen_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let k = EntityKey::new("t", "r");
    let t = TimerRecord {
        timer_id: 9,
        fire_at_ms: 1,
        command: vec![3],
    };
    {
        let s = LogStore::open(dir.path(), 16).unwrap();
        s.append(write(&k, 1..=3)).await.unwrap();
        s.append(Write {
            key: k.clone(),
            add_timers: vec![t.clone()],
            ..Write::default()
        })
        .await
        .unwrap();
        s.save(&k, snapshot(2, vec![7]), 1).await.unwrap();
        s.append(write(&k, 4..=5)).await.unwrap();
    }
    let path = dir.path().join("events.log");
    let full = log_data_end(&std::fs::read(&path).unwrap());
    // A torn last record (a crash mid-write): cut off, the rest survives.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full - 3)
        .unwrap();
    {
        let s = LogStore::open(dir.path(), 16).unwrap();
        assert_eq!(
            s.highest_seq(&k).await.unwrap(),
            3,
            "the torn write #4..#5 is gone, #1..#3 stay"
        );
        assert_eq!(seqs(&s.read(&k, 1, 10, 10).await.unwrap()), vec![1, 2, 3]);
        assert_eq!(
            s.read(&k, 2, 2, 1).await.unwrap()[0],
            ev(2, &2u64.to_le_bytes())
        );
        assert_eq!(
            s.load(&k, u64::MAX, 1).await.unwrap().map(|s| s.state),
            Some(vec![7])
        );
        assert_eq!(s.pending_timers().await.unwrap(), vec![(k.clone(), t)]);
        // Appends continue after the cut.
        s.append(write(&k, 4..=4)).await.unwrap();
    }
    let s = LogStore::open(dir.path(), 16).unwrap();
    assert_eq!(s.highest_seq(&k).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_refuses_corruption_in_the_middle_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let k = EntityKey::new("t", "c");
    {
        let s = LogStore::open(dir.path(), 16).unwrap();
        s.append(write(&k, 1..=1)).await.unwrap();
        s.append(write(&k, 2..=2)).await.unwrap();
    }
    let path = dir.path().join("events.log");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30] ^= 0xff; // inside the first record
    std::fs::write(&path, &bytes).unwrap();
    let e = LogStore::open(dir.path(), 16)
        .err()
        .expect("corruption refused");
    assert!(matches!(e, JournalError::Corrupt(_)), "{e}");

    std::fs::write(&path, b"definitely not a log file").unwrap();
    let e = LogStore::open(dir.path(), 16)
        .err()
        .expect("foreign file refused");
    assert!(matches!(e, JournalError::Corrupt(_)), "{e}");
}

fn feed_ids(p: &FeedPage) -> Vec<(String, u64)> {
    p.events
        .iter()
        .map(|(k, e)| (k.entity_id.clone(), e.seq))
        .collect()
}

/// Reads the whole feed of a type from `from` in pages of `limit`.
async fn drain_feed(
    j: &dyn Journal,
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

async fn feed_semantics(j: Arc<dyn Journal>) {
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
    let (from_empty, _) = drain_feed(&*j, "t", empty.next, 100).await;
    assert_eq!(from_empty, expected);
    // Paging with a small limit yields every event once, in commit order.
    let (paged, end) = drain_feed(&*j, "t", 0, 1).await;
    assert_eq!(paged, expected);
    let (others, _) = drain_feed(&*j, "u", 0, 2).await;
    assert_eq!(others.len(), 3);
    assert!(others.iter().all(|(id, _)| id == "z"));
    // Resuming from the end returns only what came later.
    j.append(write(&b, 2..=3)).await.unwrap();
    let (later, _) = drain_feed(&*j, "t", end, 100).await;
    assert_eq!(later, vec![("b".into(), 2), ("b".into(), 3)]);
    // Payloads come back unchanged.
    let p = j.read_feed("t", 0, 1).await.unwrap();
    assert_eq!(p.events[0].1.payload, 1u64.to_le_bytes());
}

#[tokio::test]
async fn memory_feed() {
    feed_semantics(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_feed_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    feed_semantics(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap()).await;
    let s = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
    let (all, _) = drain_feed(&*s, "t", 0, 100).await;
    assert_eq!(all.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_feed_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = LogStore::open(dir.path(), 64).unwrap();
        feed_semantics(s.clone()).await;
        // A cursor inside a record is refused, not misread.
        assert!(s.read_feed("t", 12 + 3, 10).await.is_err());
        assert!(s.read_feed("t", u64::MAX, 10).await.is_err());
    }
    let s = LogStore::open(dir.path(), 64).unwrap();
    let (all, _) = drain_feed(&*s, "t", 0, 100).await;
    assert_eq!(all.len(), 6);
}
