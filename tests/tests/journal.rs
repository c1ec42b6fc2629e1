//! The journal and snapshot contracts (issue 2, checks 2 and 3; the checks
//! live in `cairn_store::testkit`), run against every backend of
//! `cairn-store`, plus backend-specific ones (tampered files, torn tails,
//! direct and buffered writes, feed cursors).

use cairn_store::testkit::{self, drain_feed, ev, seqs, snapshot, write};
use cairn_store::*;
use std::sync::Arc;

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

/// Opens the SQLite backend with default options.
fn sqlite(dir: &std::path::Path) -> std::sync::Arc<SqliteStore> {
    SqliteStore::open(dir, SqliteOptions::default()).unwrap()
}

#[tokio::test]
async fn memory_journal() {
    testkit::journal_semantics(&*MemoryStore::new()).await;
}

/// The whole suite through its runner (one fresh store per check), which a
/// new backend would call.
#[tokio::test]
async fn memory_whole_contract() {
    testkit::run_all(|_| MemoryStore::new(), false).await;
}

#[tokio::test]
async fn memory_snapshots() {
    testkit::snapshot_semantics(&*MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_journal() {
    let dir = tempfile::tempdir().unwrap();
    testkit::journal_semantics(&*SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    testkit::snapshot_semantics(&*SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_truncates() {
    let dir = tempfile::tempdir().unwrap();
    testkit::truncate_semantics(&*sqlite(dir.path())).await;
    let dir = tempfile::tempdir().unwrap();
    testkit::truncate_survives_reopen(dir.path(), sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    testkit::survives_reopen(dir.path(), sqlite).await;
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
    testkit::conflict_in_a_batch(
        &*SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_conflict_fails_only_its_write_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    testkit::conflict_in_a_batch(&*LogStore::open(dir.path(), 4096).unwrap()).await;
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
    testkit::journal_semantics(&*LogStore::open(dir.path(), 4096).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_journal_buffered() {
    // The whole suite, each check on a fresh buffered log.
    testkit::run_all(|dir| LogStore::open_buffered(dir, 4096).unwrap(), true).await;
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
    testkit::snapshot_semantics(&*LogStore::open(dir.path(), 4096).unwrap()).await;
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
    // A torn last record (a crash mid-write, so without the 17-byte closing
    // marker a clean close writes): cut off, the rest survives.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full - 17 - 3)
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
    bytes[30] ^= 0xff; // inside the first record (after the batch marker)
    std::fs::write(&path, &bytes).unwrap();
    let e = LogStore::open(dir.path(), 16)
        .err()
        .expect("corruption refused");
    assert!(
        matches!(&e, JournalError::Damaged(d) if d.offset == 12 + 17),
        "{e}"
    );

    std::fs::write(&path, b"definitely not a log file").unwrap();
    let e = LogStore::open(dir.path(), 16)
        .err()
        .expect("foreign file refused");
    assert!(matches!(e, JournalError::Corrupt(_)), "{e}");
}

#[tokio::test]
async fn memory_feed() {
    testkit::feed_semantics(&*MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_feed_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    testkit::feed_survives_reopen(dir.path(), sqlite).await;
}

/// A log reopens with what it acknowledged (the torn-tail cases follow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    testkit::survives_reopen(dir.path(), |d| LogStore::open(d, 16).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_feed_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = LogStore::open(dir.path(), 64).unwrap();
        testkit::feed_semantics(&*s).await;
        // A cursor inside a record is refused, not misread.
        assert!(s.read_feed("t", 12 + 3, 10).await.is_err());
        assert!(s.read_feed("t", u64::MAX, 10).await.is_err());
    }
    let s = LogStore::open(dir.path(), 64).unwrap();
    let (all, _) = drain_feed(&*s, "t", 0, 100).await;
    assert_eq!(all.len(), 6);
}

/// Three in-process cluster members on 127.0.0.1 with one CA; their
/// journals are the replicated ones (writes go to the shards' replicas).
/// There is one shard: its owner writes every entity, its two replicas
/// hold what it writes.
struct ThreeMembers {
    _dir: tempfile::TempDir,
    nodes: Vec<cairn_host::Node>,
    _servers: Vec<cairn_server::Server>,
    owner: AsOwner,
}

/// The first member's replicated journal written as its entities write
/// it: each write carries the allocation the node admits its entity under.
/// A write without one is refused (checked below).
struct AsOwner {
    index: usize,
    journal: Arc<dyn Journal>,
    placement: Arc<cairn_driver::Replication>,
}

impl Journal for AsOwner {
    fn append(&self, w: Write) -> BoxFuture<'static, Result<(), JournalError>> {
        use cairn_host::placement::{Admission, Placement};
        match self.placement.admit(&w.key, false) {
            Admission::Here(fence) => self.journal.append_fenced(w, fence),
            other => panic!("{}: not admitted on the owner: {other:?}", w.key),
        }
    }
    fn read(
        &self,
        key: &EntityKey,
        from: u64,
        to: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<EventRecord>, JournalError>> {
        self.journal.read(key, from, to, limit)
    }
    fn read_packed(
        &self,
        key: &EntityKey,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<PackedEvents, JournalError>> {
        self.journal.read_packed(key, from, limit)
    }
    fn highest_seq(&self, key: &EntityKey) -> BoxFuture<'static, Result<u64, JournalError>> {
        self.journal.highest_seq(key)
    }
    fn pending_timers(
        &self,
    ) -> BoxFuture<'static, Result<Vec<(EntityKey, TimerRecord)>, JournalError>> {
        self.journal.pending_timers()
    }
    fn read_feed(
        &self,
        entity_type: &str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<FeedPage, JournalError>> {
        self.journal.read_feed(entity_type, from, limit)
    }
    fn entity_ids(
        &self,
        entity_type: &str,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<String>, JournalError>> {
        self.journal.entity_ids(entity_type, limit)
    }
    fn truncate(
        &self,
        key: &EntityKey,
        after: u64,
    ) -> BoxFuture<'static, Result<(), JournalError>> {
        self.journal.truncate(key, after)
    }
}

async fn three_members() -> ThreeMembers {
    use cairn_driver::Replication;
    use cairn_host::config::{ClusterConfig, TlsFiles};
    use cairn_host::placement::Placement;
    use cairn_server::{Server, ServerLimits};
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    cairn_client::tls::init(&certs, &[]).unwrap();
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    let mut clusters = Vec::new();
    let mut placements = Vec::new();
    let mut seed = None;
    for i in 0..3u64 {
        let mut config = cairn_host::Config::default();
        config.node.data_dir = dir.path().join(format!("n{i}"));
        config.node.name = format!("n{i}");
        let cluster = ClusterConfig {
            seeds: seed.into_iter().collect(),
            shards: 1,
            min_members: 3,
            ..ClusterConfig::default()
        };
        // Each member its own certificate, naming its node id.
        let own = dir.path().join(format!("certs-n{i}"));
        cairn_client::tls::issue_node(&certs, &own, 100 + i, &[]).unwrap();
        let files: TlsFiles = cairn_server::tls_files(cairn_client::tls::node_files(&own));
        let repl = Replication::new();
        placements.push(repl.clone());
        let node = cairn_host::Node::open_in_cluster(config, |j| repl.wrap(j), repl.clone())
            .await
            .unwrap();
        let (server, c) = Server::start_cluster(
            node.clone(),
            &files,
            "127.0.0.1:0".parse().unwrap(),
            ServerLimits::default(),
            format!("n{i}"),
            cluster,
            Some(repl),
        )
        .await
        .unwrap();
        seed.get_or_insert(server.local_addr());
        nodes.push(node);
        servers.push(server);
        clusters.push(c);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let owner = loop {
        let s = clusters[0].status().await;
        let up = s.members.iter().filter(|m| m.state == "up").count();
        let owner = placements.iter().position(|p| {
            matches!(
                p.admit(&EntityKey::new("t", "a"), false),
                cairn_host::placement::Admission::Here(_)
            )
        });
        if up == 3
            && let Some(i) = owner
        {
            break i;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "three members never came up: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let owner = AsOwner {
        index: owner,
        journal: nodes[owner].journal().clone(),
        placement: placements[owner].clone(),
    };
    ThreeMembers {
        _dir: dir,
        nodes,
        _servers: servers,
        owner,
    }
}

/// Every event the owner holds of types `t` and `u` is on both other
/// members too (their local journals), the same, within 10 s.
async fn replicas_hold_the_same(m: &ThreeMembers) {
    for ty in ["t", "u"] {
        let ids = m.owner.journal.entity_ids(ty, usize::MAX).await.unwrap();
        for id in ids {
            let key = EntityKey::new(ty, id);
            let primary = m
                .owner
                .journal
                .read(&key, 1, u64::MAX, usize::MAX)
                .await
                .unwrap();
            // `min_acks` is 1: the second replica may still be writing.
            let others = m
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != m.owner.index);
            for (_, n) in others {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    let replica = n
                        .journal()
                        .read(&key, 1, u64::MAX, usize::MAX)
                        .await
                        .unwrap();
                    if replica == primary || std::time::Instant::now() > deadline {
                        assert_eq!(replica, primary, "{key} on a replica");
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// The replicated journal (issue 19) keeps the journal contract as a
/// cluster member's journal, and what it stores is on its replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_journal_keeps_the_contract() {
    let m = three_members().await;
    testkit::journal_semantics(&m.owner).await;
    replicas_hold_the_same(&m).await;
    // A write that carries no allocation, or one of another epoch, is
    // refused before it reaches any replica.
    let k = EntityKey::new("t", "unfenced");
    let refused = m.owner.journal.append(write(&k, 1..=1)).await;
    assert!(
        matches!(refused, Err(JournalError::Fenced(_))),
        "{refused:?}"
    );
    let stale = Fence { shard: 0, epoch: 0 };
    let refused = m
        .owner
        .journal
        .append_fenced(write(&k, 1..=1), Some(stale))
        .await;
    assert!(
        matches!(refused, Err(JournalError::Fenced(_))),
        "{refused:?}"
    );
    // The other members do not own the shard: refused there too.
    use cairn_host::placement::{Admission, Placement};
    let Admission::Here(fence) = m.owner.placement.admit(&k, false) else {
        panic!("the owner does not admit the entity");
    };
    for (i, n) in m.nodes.iter().enumerate() {
        if i != m.owner.index {
            let refused = n.journal().append_fenced(write(&k, 1..=1), fence).await;
            assert!(
                matches!(refused, Err(JournalError::Fenced(_))),
                "{refused:?}"
            );
        }
    }
    for n in &m.nodes {
        assert_eq!(n.journal().highest_seq(&k).await.unwrap(), 0);
    }
    let m = three_members().await;
    testkit::feed_semantics(&m.owner).await;
    replicas_hold_the_same(&m).await;
    let m = three_members().await;
    testkit::conflict_in_a_batch(&m.owner).await;
    replicas_hold_the_same(&m).await;
    // Truncation is local (a member's own unacknowledged tail).
    let m = three_members().await;
    testkit::truncate_semantics(&m.owner).await;
}
