//! The embedded SQLite backend: one database file in WAL mode with
//! `synchronous=FULL`, so a committed transaction is on disk.
//!
//! Owns the single writer thread and its group commit: every queued append
//! and snapshot is written in one transaction, committed (fsync), and only
//! then acknowledged. When a batch fails (say one write conflicts), it is
//! rolled back and each write is retried in its own transaction, so only the
//! offending write fails. Reads run on a small pool of reader connections in
//! `spawn_blocking` (WAL lets them run beside the writer); a read that starts
//! after an append resolved sees it. Reads need a tokio runtime.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use crate::{
    BoxFuture, EntityKey, EventRecord, FeedPage, Journal, JournalError, PackedEvents, Snapshot,
    SnapshotStore, TimerRecord, Write,
};

/// Storage format written by this build (`PRAGMA user_version`).
const FORMAT: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    version TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (entity_type, entity_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    schema INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (entity_type, entity_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feed (
    pos INTEGER PRIMARY KEY,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feed_by_type ON feed (entity_type, pos);
CREATE TABLE IF NOT EXISTS timers (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    timer_id INTEGER NOT NULL,
    fire_at_ms INTEGER NOT NULL,
    command BLOB NOT NULL,
    PRIMARY KEY (entity_type, entity_id, timer_id)
);
";

/// Tuning of the SQLite backend.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Writes queued for the writer before senders wait.
    pub queue_capacity: usize,
    /// Reader connections: kept open, and the most reads at once.
    pub readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            max_batch: 4096,
            queue_capacity: 65536,
            readers: 4,
        }
    }
}

type Ack = oneshot::Sender<Result<(), JournalError>>;

enum Op {
    Append(Write),
    Snapshot(EntityKey, Snapshot, usize),
    Truncate(EntityKey, u64),
}

/// Counters of the writer, for benchmarks and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: u64,
    /// Writes (appends and snapshots) acknowledged.
    pub writes: u64,
    /// Microseconds spent inside transactions (insert + commit/fsync).
    pub busy_us: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
    busy_us: AtomicU64,
}

/// The SQLite journal and snapshot store (`DIR/journal.db`).
pub struct SqliteStore {
    path: PathBuf,
    counters: Arc<Counters>,
    tx: Option<mpsc::Sender<(Op, Ack)>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// One permit per reader connection: a read waits for a connection
    /// rather than opening one, since an open parses the schema
    /// (docs/BENCHMARKS.md).
    reader_permits: Arc<tokio::sync::Semaphore>,
    writer: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

fn to_i64(v: u64, what: &str) -> Result<i64, JournalError> {
    i64::try_from(v).map_err(|_| JournalError::Invalid(format!("{what} {v} is above i64::MAX")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, JournalError> {
    u64::try_from(v).map_err(|_| JournalError::Corrupt(format!("negative {what} {v} on disk")))
}

fn open_conn(path: &Path) -> Result<Connection, JournalError> {
    let conn =
        Connection::open(path).map_err(|e| JournalError::Io(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/journal.db` and starts the writer thread.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<Arc<SqliteStore>, JournalError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| JournalError::Io(format!("{}: {e}", dir.display())))?;
        let path = dir.join("journal.db");
        let conn = open_conn(&path)?;
        // Small pages, since each event of a batch tends to dirty its own page
        // (entities interleave) and every dirty page is written to the WAL and
        // fsync'd; 2 KiB rather than 1 KiB for fewer B-tree splits
        // (docs/BENCHMARKS.md). Only applies when the file is created.
        conn.execute_batch("PRAGMA page_size=2048")?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| JournalError::Database(format!("{}: {e}", path.display())))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::Database(format!(
                "cannot switch {} to WAL mode",
                path.display()
            )));
        }
        conn.execute_batch(
            // Checkpoints run on their own thread (see `checkpointer`), not in the
            // writer's commits: an automatic checkpoint stalls every acknowledgement.
            // A small page cache (4 MiB), since every commit scans the cache's
            // hash table (docs/BENCHMARKS.md).
            "PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=-4096;",
        )?;
        let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > FORMAT {
            return Err(JournalError::UnsupportedFormat {
                found,
                supported: FORMAT,
            });
        }
        conn.execute_batch(SCHEMA)?;
        if found < FORMAT {
            conn.execute_batch(&format!("PRAGMA user_version={FORMAT}"))?;
        }
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let max_batch = options.max_batch.max(1);
        let counters = Arc::new(Counters::default());
        let writer_counters = counters.clone();
        let writer = std::thread::Builder::new()
            .name("cairn-journal".into())
            .spawn(move || writer_loop(conn, rx, max_batch, &writer_counters))
            .map_err(|e| JournalError::Io(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ckpt_conn = open_conn(&path)?;
        let ckpt_stop = stop.clone();
        let checkpointer = std::thread::Builder::new()
            .name("cairn-checkpoint".into())
            .spawn(move || checkpointer(ckpt_conn, &ckpt_stop))
            .map_err(|e| JournalError::Io(e.to_string()))?;
        Ok(Arc::new(SqliteStore {
            path,
            counters,
            stop,
            checkpointer: Some(checkpointer),
            tx: Some(tx),
            readers: Arc::new(Mutex::new(Vec::new())),
            reader_permits: Arc::new(tokio::sync::Semaphore::new(options.readers.max(1))),
            writer: Some(writer),
        }))
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            busy_us: self.counters.busy_us.load(Ordering::Relaxed),
        }
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn submit(&self, op: Op) -> BoxFuture<'static, Result<(), JournalError>> {
        let (ack, done) = oneshot::channel();
        let Some(tx) = &self.tx else {
            return Box::pin(async { Err(JournalError::Closed("store closed".into())) });
        };
        // Queue now when there is room, so writes keep the caller's order.
        let pending = match tx.try_send((op, ack)) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(item)) => Some((tx.clone(), item)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Box::pin(async {
                    Err(JournalError::Closed("journal writer stopped".into()))
                });
            }
        };
        Box::pin(async move {
            if let Some((tx, item)) = pending {
                tx.send(item)
                    .await
                    .map_err(|_| JournalError::Closed("journal writer stopped".into()))?;
            }
            done.await
                .map_err(|_| JournalError::Closed("journal writer stopped".into()))?
        })
    }

    /// Runs `f` on a reader connection in a blocking thread.
    fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, JournalError>> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let permits = self.reader_permits.clone();
        Box::pin(async move {
            let permit = permits
                .acquire_owned()
                .await
                .map_err(|_| JournalError::Closed("store closed".into()))?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let pooled = readers.lock().ok().and_then(|mut p| p.pop());
                let conn = match pooled {
                    Some(c) => c,
                    None => {
                        let c = open_conn(&path)?;
                        // Long replays read pages through the map, not one pread each.
                        c.execute_batch("PRAGMA mmap_size=1073741824")?;
                        c
                    }
                };
                let out = f(&conn);
                // Each read holds a permit, so no more connections exist
                // than permits: the pool never outgrows them.
                if let Ok(mut p) = readers.lock() {
                    p.push(conn);
                }
                out
            })
            .await
            .map_err(|e| JournalError::Closed(format!("reader task failed: {e}")))?
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and stop.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.checkpointer.take() {
            let _ = c.join();
        }
    }
}

/// WAL frames above which the checkpointer restarts the log (briefly waiting
/// for the writer) so that the WAL file is reused instead of growing.
const WAL_RESTART_FRAMES: i64 = 65_536;

/// Copies WAL pages into the database beside the writer. PASSIVE checkpoints
/// never block the writer; once the WAL is large, a RESTART (quick, since most
/// frames are already copied) lets the next commit start the WAL over.
fn checkpointer(conn: Connection, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match passive {
            Ok((log, _)) if log >= WAL_RESTART_FRAMES => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "journal checkpoint (restart) failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "journal checkpoint failed"),
        }
    }
    // Leave a small WAL behind on a clean close.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<(Op, Ack)>,
    max_batch: usize,
    counters: &Counters,
) {
    let mut batch: Vec<(Op, Ack)> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let result = commit(&mut conn, batch.iter().map(|(op, _)| op));
        counters
            .busy_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                for (_, ack) in batch.drain(..) {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(_) if batch.len() > 1 => {
                // Find the offender: every write in its own transaction.
                for (op, ack) in batch.drain(..) {
                    let _ = ack.send(commit(&mut conn, std::iter::once(&op)));
                }
            }
            Err(e) => {
                for (_, ack) in batch.drain(..) {
                    let _ = ack.send(Err(e.clone()));
                }
            }
        }
    }
}

fn commit<'a>(
    conn: &mut Connection,
    ops: impl Iterator<Item = &'a Op>,
) -> Result<(), JournalError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for op in ops {
        match op {
            Op::Append(w) => append(&tx, w)?,
            Op::Snapshot(key, snap, keep) => save_snapshot(&tx, key, snap, *keep)?,
            Op::Truncate(key, after) => truncate(&tx, key, *after)?,
        }
    }
    tx.commit()?;
    Ok(())
}

fn append(tx: &rusqlite::Transaction<'_>, w: &Write) -> Result<(), JournalError> {
    let k = &w.key;
    if !w.events.is_empty() {
        let mut ins = tx.prepare_cached(
            "INSERT INTO events (entity_type, entity_id, seq, timestamp_ms, version, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for e in &w.events {
            let r = ins.execute(params![
                k.entity_type,
                k.entity_id,
                to_i64(e.seq, "seq")?,
                to_i64(e.timestamp_ms, "timestamp")?,
                e.version,
                e.payload
            ]);
            match r {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.code == ErrorCode::ConstraintViolation =>
                {
                    return Err(JournalError::Conflict {
                        key: k.clone(),
                        seq: e.seq,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut feed = tx
            .prepare_cached("INSERT INTO feed (entity_type, entity_id, seq) VALUES (?1, ?2, ?3)")?;
        for e in &w.events {
            feed.execute(params![k.entity_type, k.entity_id, to_i64(e.seq, "seq")?])?;
        }
    }
    if !w.add_timers.is_empty() {
        let mut ins = tx.prepare_cached(
            "INSERT OR REPLACE INTO timers (entity_type, entity_id, timer_id, fire_at_ms, command) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for t in &w.add_timers {
            ins.execute(params![
                k.entity_type,
                k.entity_id,
                t.timer_id as i64,
                to_i64(t.fire_at_ms, "fire time")?,
                t.command
            ])?;
        }
    }
    if !w.remove_timers.is_empty() {
        let mut del = tx.prepare_cached(
            "DELETE FROM timers WHERE entity_type = ?1 AND entity_id = ?2 AND timer_id = ?3",
        )?;
        for id in &w.remove_timers {
            del.execute(params![k.entity_type, k.entity_id, *id as i64])?;
        }
    }
    Ok(())
}

fn truncate(tx: &rusqlite::Transaction<'_>, k: &EntityKey, after: u64) -> Result<(), JournalError> {
    let after = bound(after);
    for table in ["events", "snapshots", "feed"] {
        tx.prepare_cached(&format!(
            "DELETE FROM {table} WHERE entity_type = ?1 AND entity_id = ?2 AND seq > ?3"
        ))?
        .execute(params![k.entity_type, k.entity_id, after])?;
    }
    Ok(())
}

fn save_snapshot(
    tx: &rusqlite::Transaction<'_>,
    k: &EntityKey,
    s: &Snapshot,
    keep: usize,
) -> Result<(), JournalError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO snapshots (entity_type, entity_id, seq, schema, timestamp_ms, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        k.entity_type,
        k.entity_id,
        to_i64(s.seq, "seq")?,
        s.schema,
        to_i64(s.timestamp_ms, "timestamp")?,
        s.state
    ])?;
    tx.prepare_cached(
        "DELETE FROM snapshots WHERE entity_type = ?1 AND entity_id = ?2 AND seq NOT IN \
         (SELECT seq FROM snapshots WHERE entity_type = ?1 AND entity_id = ?2 ORDER BY seq DESC LIMIT ?3)",
    )?
    .execute(params![k.entity_type, k.entity_id, keep.max(1) as i64])?;
    Ok(())
}

/// Clamps a u64 bound into SQLite's i64 range.
fn bound(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn limit(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Journal for SqliteStore {
    fn append(&self, write: Write) -> BoxFuture<'static, Result<(), JournalError>> {
        self.submit(Op::Append(write))
    }

    fn read(
        &self,
        key: &EntityKey,
        from: u64,
        to: u64,
        max: usize,
    ) -> BoxFuture<'static, Result<Vec<EventRecord>, JournalError>> {
        let key = key.clone();
        if from > to || max == 0 {
            return Box::pin(async { Ok(Vec::new()) });
        }
        self.with_reader(move |c| {
            let mut st = c.prepare_cached(
                "SELECT seq, timestamp_ms, version, payload FROM events \
                 WHERE entity_type = ?1 AND entity_id = ?2 AND seq >= ?3 AND seq <= ?4 ORDER BY seq LIMIT ?5",
            )?;
            let mut rows = st.query(params![key.entity_type, key.entity_id, bound(from), bound(to), limit(max)])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(EventRecord {
                    seq: to_u64(r.get(0)?, "seq")?,
                    timestamp_ms: to_u64(r.get(1)?, "timestamp")?,
                    version: r.get(2)?,
                    payload: r.get(3)?,
                });
            }
            Ok(out)
        })
    }

    fn read_packed(
        &self,
        key: &EntityKey,
        from: u64,
        max: usize,
    ) -> BoxFuture<'static, Result<PackedEvents, JournalError>> {
        let key = key.clone();
        if max == 0 {
            return Box::pin(async { Ok(PackedEvents::default()) });
        }
        self.with_reader(move |c| {
            // Fast path: only the payload column of a sequence range, since
            // reading `seq` from every row slows the scan (docs/BENCHMARKS.md).
            // A full range is contiguous by construction: (key, seq) is the
            // primary key.
            let end = from.saturating_add(max as u64);
            let mut out = PackedEvents::default();
            {
                let mut st = c.prepare_cached(
                    "SELECT payload FROM events WHERE entity_type = ?1 AND entity_id = ?2 AND seq >= ?3 AND seq < ?4 ORDER BY seq",
                )?;
                let mut rows = st.query(params![key.entity_type, key.entity_id, bound(from), bound(end)])?;
                while let Some(r) = rows.next()? {
                    let payload = r.get_ref(0)?.as_blob().map_err(|e| JournalError::Corrupt(e.to_string()))?;
                    out.push(from + out.count as u64, payload)?;
                }
            }
            if out.count == max {
                return Ok(out);
            }
            // A short range is the whole rest of the history only if nothing
            // after it was skipped; otherwise read exactly the next `max` events.
            let highest: Option<i64> = c
                .prepare_cached(
                    "SELECT MAX(seq) FROM events WHERE entity_type = ?1 AND entity_id = ?2 AND seq >= ?3",
                )?
                .query_row(params![key.entity_type, key.entity_id, bound(from)], |r| r.get(0))?;
            let highest = highest.map(|h| to_u64(h, "seq")).transpose()?;
            if highest.is_none_or(|h| h + 1 == from + out.count as u64) {
                return Ok(out);
            }
            let mut st = c.prepare_cached(
                "SELECT seq, payload FROM events WHERE entity_type = ?1 AND entity_id = ?2 AND seq >= ?3 ORDER BY seq LIMIT ?4",
            )?;
            let mut rows = st.query(params![key.entity_type, key.entity_id, bound(from), limit(max)])?;
            let mut out = PackedEvents::default();
            while let Some(r) = rows.next()? {
                let seq = to_u64(r.get(0)?, "seq")?;
                let payload = r.get_ref(1)?.as_blob().map_err(|e| JournalError::Corrupt(e.to_string()))?;
                out.push(seq, payload)?;
            }
            Ok(out)
        })
    }

    fn highest_seq(&self, key: &EntityKey) -> BoxFuture<'static, Result<u64, JournalError>> {
        let key = key.clone();
        self.with_reader(move |c| {
            let v: Option<i64> = c
                .prepare_cached(
                    "SELECT MAX(seq) FROM events WHERE entity_type = ?1 AND entity_id = ?2",
                )?
                .query_row(params![key.entity_type, key.entity_id], |r| r.get(0))?;
            to_u64(v.unwrap_or(0), "seq")
        })
    }

    fn entity_timers(
        &self,
        key: &EntityKey,
    ) -> BoxFuture<'static, Result<Vec<TimerRecord>, JournalError>> {
        let key = key.clone();
        self.with_reader(move |c| {
            let mut st = c.prepare_cached(
                "SELECT timer_id, fire_at_ms, command FROM timers WHERE entity_type = ?1 AND entity_id = ?2",
            )?;
            let mut rows = st.query(params![key.entity_type, key.entity_id])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(TimerRecord {
                    timer_id: r.get::<_, i64>(0)? as u64,
                    fire_at_ms: to_u64(r.get(1)?, "fire time")?,
                    command: r.get(2)?,
                });
            }
            Ok(out)
        })
    }

    fn timer(
        &self,
        key: &EntityKey,
        timer_id: u64,
    ) -> BoxFuture<'static, Result<Option<TimerRecord>, JournalError>> {
        let key = key.clone();
        self.with_reader(move |c| {
            let mut st = c.prepare_cached(
                "SELECT fire_at_ms, command FROM timers WHERE entity_type = ?1 AND entity_id = ?2 AND timer_id = ?3",
            )?;
            let mut rows = st.query(params![key.entity_type, key.entity_id, timer_id as i64])?;
            match rows.next()? {
                Some(r) => Ok(Some(TimerRecord {
                    timer_id,
                    fire_at_ms: to_u64(r.get(0)?, "fire time")?,
                    command: r.get(1)?,
                })),
                None => Ok(None),
            }
        })
    }

    fn pending_timers(
        &self,
    ) -> BoxFuture<'static, Result<Vec<(EntityKey, TimerRecord)>, JournalError>> {
        self.with_reader(|c| {
            let mut st = c.prepare_cached(
                "SELECT entity_type, entity_id, timer_id, fire_at_ms, command FROM timers ORDER BY fire_at_ms",
            )?;
            let mut rows = st.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push((
                    EntityKey::new(r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                    TimerRecord {
                        timer_id: r.get::<_, i64>(2)? as u64,
                        fire_at_ms: to_u64(r.get(3)?, "fire time")?,
                        command: r.get(4)?,
                    },
                ));
            }
            Ok(out)
        })
    }

    fn read_feed(
        &self,
        entity_type: &str,
        from: u64,
        max: usize,
    ) -> BoxFuture<'static, Result<FeedPage, JournalError>> {
        let ty = entity_type.to_owned();
        self.with_reader(move |c| {
            let mut st = c.prepare_cached(
                "SELECT f.pos, f.entity_id, e.seq, e.timestamp_ms, e.version, e.payload FROM feed f \
                 JOIN events e ON e.entity_type = f.entity_type AND e.entity_id = f.entity_id AND e.seq = f.seq \
                 WHERE f.entity_type = ?1 AND f.pos >= ?2 ORDER BY f.pos LIMIT ?3",
            )?;
            let mut rows = st.query(params![ty, bound(from), limit(max)])?;
            let mut page = FeedPage {
                events: Vec::new(),
                next: from,
            };
            while let Some(r) = rows.next()? {
                let pos = to_u64(r.get(0)?, "pos")?;
                page.events.push((
                    EntityKey::new(ty.clone(), r.get::<_, String>(1)?),
                    EventRecord {
                        seq: to_u64(r.get(2)?, "seq")?,
                        timestamp_ms: to_u64(r.get(3)?, "timestamp")?,
                        version: r.get(4)?,
                        payload: r.get(5)?,
                    },
                ));
                page.next = pos + 1;
            }
            Ok(page)
        })
    }

    fn truncate(
        &self,
        key: &EntityKey,
        after: u64,
    ) -> BoxFuture<'static, Result<(), JournalError>> {
        self.submit(Op::Truncate(key.clone(), after))
    }

    fn entity_ids(
        &self,
        entity_type: &str,
        max: usize,
    ) -> BoxFuture<'static, Result<Vec<String>, JournalError>> {
        let t = entity_type.to_owned();
        self.with_reader(move |c| {
            // One seek per entity along the primary key (not a scan of
            // every event): the next id after the last one seen.
            let mut st = c.prepare_cached(
                "SELECT entity_id FROM events WHERE entity_type = ?1 AND entity_id > ?2 ORDER BY entity_id LIMIT 1",
            )?;
            let mut failed = None;
            let mut last = String::new();
            let ids = std::iter::from_fn(|| {
                match st
                    .query_row(params![t, last], |r| r.get::<_, String>(0))
                    .optional()
                {
                    Ok(Some(id)) => {
                        last.clone_from(&id);
                        Some(id)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                }
            });
            let ids = crate::sample_ids(ids, max);
            match failed {
                Some(e) => Err(e.into()),
                None => Ok(ids),
            }
        })
    }
}

impl SnapshotStore for SqliteStore {
    fn save(
        &self,
        key: &EntityKey,
        snapshot: Snapshot,
        keep: usize,
    ) -> BoxFuture<'static, Result<(), JournalError>> {
        self.submit(Op::Snapshot(key.clone(), snapshot, keep))
    }

    fn load(
        &self,
        key: &EntityKey,
        max_seq: u64,
        schema: u32,
    ) -> BoxFuture<'static, Result<Option<Snapshot>, JournalError>> {
        let key = key.clone();
        self.with_reader(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT seq, timestamp_ms, state FROM snapshots \
                     WHERE entity_type = ?1 AND entity_id = ?2 AND seq <= ?3 AND schema = ?4 ORDER BY seq DESC LIMIT 1",
                )?
                .query_row(params![key.entity_type, key.entity_id, bound(max_seq), schema], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?))
                })
                .optional()?;
            row.map(|(seq, ts, state)| {
                Ok(Snapshot {
                    seq: to_u64(seq, "seq")?,
                    schema,
                    timestamp_ms: to_u64(ts, "timestamp")?,
                    state,
                })
            })
            .transpose()
        })
    }
}
