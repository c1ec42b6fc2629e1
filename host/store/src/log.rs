//! The append-only log backend: one file of checksummed records and an index
//! in memory. One writer thread takes every queued write, checks and encodes
//! them, makes them durable with one synchronous direct `pwrite` of whole
//! 4 KiB blocks (`O_DIRECT | O_DSYNC`; on a file system without direct I/O,
//! one `pwrite` and one `fdatasync`), then indexes and acknowledges them;
//! writes that arrive meanwhile wait in its queue and form the next group.
//!
//! Why: with many entities writing at once, a B-tree clustered by entity
//! (SQLite) dirties about one page per event, and every dirty page is written
//! and synced; this log writes each event once, sequentially, so the cost of
//! a commit does not grow with the number of entities (docs/BENCHMARKS.md).
//!
//! Format 2 (`DIR/events.log`): an 8-byte magic and a u32 format version,
//! then records `[u32 body length][u32 CRC-32 of body][body]`, all
//! little-endian. A record is one whole [`Write`], one snapshot, or a batch
//! marker (first in each batch: the end of the log that was durable when the
//! batch was written). A write is atomic. The file is kept zero-filled a
//! little past the data, so that a sync overwrites existing blocks and
//! commits no metadata; the data ends at the first zero record.
//!
//! On open the file is scanned to rebuild the index. Past the last good
//! record lies either zeros or a torn tail (pages written after the last sync
//! reach the disk in any order, so a good record may follow a bad one); the
//! tail is cut off, as none of it was acknowledged. A bad record that a later
//! batch marker shows had been synced is damage to acknowledged data and
//! refuses the open ([`JournalError::Damaged`]). Closing the store writes a
//! closing marker (an empty batch's marker) so that this holds for the last
//! batch too; after a crash, damage in the last group cannot be told from a
//! torn write of it and is cut (docs/ARCHITECTURE.md, section 5).
//! Format 1 files (no markers, grown by each write) are read, and continue in
//! format 2. Snapshot retention trims the index only; the bytes stay in the
//! file (compaction is future work).
//!
//! Every file operation goes through `crate::file`, so that the crash tests
//! (`tests/log_crash.rs`, feature `testkit`) can run this code unchanged on a
//! simulated disk that keeps only synced bytes.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use foldhash::fast::RandomState;
use tokio::sync::{mpsc, oneshot};

use crate::file::{Cursor, DirectFile, LogFile};
use crate::{
    BoxFuture, EntityKey, EventRecord, Evidence, FeedPage, Journal, JournalError, LogDamage,
    PackedEvents, Snapshot, SnapshotStore, TimerRecord, Write,
};

const MAGIC: &[u8; 8] = b"CAIRNLOG";
/// Format 2 adds batch markers; format 1 files (no markers) are still read.
const FORMAT: u32 = 2;
pub(crate) const HEADER: u64 = 12;
const KIND_WRITE: u8 = 1;
const KIND_SNAPSHOT: u8 = 2;
const KIND_BATCH: u8 = 3;
/// Removes an entity's events above a sequence number (an unacknowledged
/// tail of a cluster member, see `Journal::truncate`).
const KIND_TRUNCATE: u8 = 4;
/// Body of a batch marker: kind and the durable end when the batch was written.
const MARKER_BODY: u32 = 9;
/// A batch marker with its frame.
const MARKER_FRAME: usize = 8 + MARKER_BODY as usize;
/// The file is kept zero-filled this far past the data, extended in steps of
/// this size: an `fdatasync` that only overwrites blocks already in the file
/// commits no metadata, so it is much cheaper than one that grows the file
/// (docs/BENCHMARKS.md).
const ZERO_STEP: u64 = 256 << 10;
/// Largest record accepted (a corrupt length must not make us allocate GiBs).
pub(crate) const MAX_RECORD: u32 = 256 << 20;

/// The log's maps of entity keys: foldhash, seeded per map, is several times
/// cheaper than SipHash on these short keys (docs/BENCHMARKS.md).
type Map<K, V> = HashMap<K, V, RandomState>;

/// Where an event lives in the file.
#[derive(Clone, Copy)]
struct EvLoc {
    seq: u64,
    /// Offset of the event's encoding (seq, ts, version, payload).
    off: u64,
    len: u32,
}

#[derive(Clone, Copy)]
struct SnapLoc {
    seq: u64,
    schema: u32,
    off: u64,
    len: u32,
}

#[derive(Default)]
struct EntityIdx {
    events: Vec<EvLoc>,
    snapshots: Vec<SnapLoc>,
}

#[derive(Default)]
pub(crate) struct Index {
    entities: Map<EntityKey, EntityIdx>,
    /// Pending timers by entity, then id (an entity's are read at its
    /// start, and by a cluster's replication).
    timers: Map<EntityKey, std::collections::BTreeMap<u64, TimerRecord>>,
}

impl Index {
    /// Entities with at least one event.
    pub(crate) fn entities_with_events(&self) -> usize {
        self.entities
            .values()
            .filter(|e| !e.events.is_empty())
            .count()
    }
}

impl EntityIdx {
    fn has_seq(&self, seq: u64) -> bool {
        // Appends come in order: a sequence number above the last is new.
        self.events.last().is_some_and(|l| l.seq >= seq)
            && self.events.binary_search_by_key(&seq, |l| l.seq).is_ok()
    }
}

/// Where the writer answers an operation. The operation travels back with
/// the answer so that its buffers are freed by the thread that allocated
/// them (freeing another thread's memory is a slow path of the allocator).
type Ack = oneshot::Sender<(Result<(), JournalError>, Op)>;

enum Op {
    Append(Write),
    Snapshot(EntityKey, Snapshot, usize),
    Truncate(EntityKey, u64),
}

/// The append-only log journal and snapshot store (`DIR/events.log`).
pub struct LogStore {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<(Op, Ack)>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

// ---- encoding ---------------------------------------------------------------

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) -> Result<(), JournalError> {
        let len = u32::try_from(b.len())
            .map_err(|_| JournalError::Invalid("a value is larger than 4 GiB".into()))?;
        self.u32(len);
        self.0.extend_from_slice(b);
        Ok(())
    }
}

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], JournalError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| JournalError::Corrupt("record ends early".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, JournalError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, JournalError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, JournalError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], JournalError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, JournalError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| JournalError::Corrupt("a name is not UTF-8".into()))
    }
}

fn encode_event(enc: &mut Enc<'_>, e: &EventRecord) -> Result<(), JournalError> {
    enc.u64(e.seq);
    enc.u64(e.timestamp_ms);
    enc.bytes(e.version.as_bytes())?;
    enc.bytes(&e.payload)
}

/// Records closer than this in the file are read in one call, gap included
/// (copying more of the gaps between an entity's events cost more than the
/// system calls it saved: `docs/BENCHMARKS.md`, catch-up).
const READ_GAP: u64 = 256;
/// At most this much is read in one call.
const READ_SPAN: u64 = 4 << 20;

fn decode_event(buf: &[u8]) -> Result<EventRecord, JournalError> {
    let mut d = Dec { buf, pos: 0 };
    Ok(EventRecord {
        seq: d.u64()?,
        timestamp_ms: d.u64()?,
        version: d.string()?,
        payload: d.bytes()?.to_vec(),
    })
}

/// Appends one framed record for `op` to `buf`; returns where its parts land
/// (relative to the start of `buf`).
fn encode_op(buf: &mut Vec<u8>, op: &Op) -> Result<Vec<(u64, u32)>, JournalError> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]); // length + crc, filled below
    let mut parts = Vec::new();
    let mut enc = Enc(buf);
    match op {
        Op::Append(w) => {
            enc.u8(KIND_WRITE);
            enc.bytes(w.key.entity_type.as_bytes())?;
            enc.bytes(w.key.entity_id.as_bytes())?;
            enc.u32(w.events.len() as u32);
            for e in &w.events {
                let at = enc.0.len();
                encode_event(&mut enc, e)?;
                parts.push((at as u64, (enc.0.len() - at) as u32));
            }
            enc.u32(w.add_timers.len() as u32);
            for t in &w.add_timers {
                enc.u64(t.timer_id);
                enc.u64(t.fire_at_ms);
                enc.bytes(&t.command)?;
            }
            enc.u32(w.remove_timers.len() as u32);
            for id in &w.remove_timers {
                enc.u64(*id);
            }
        }
        Op::Snapshot(key, s, keep) => {
            enc.u8(KIND_SNAPSHOT);
            enc.bytes(key.entity_type.as_bytes())?;
            enc.bytes(key.entity_id.as_bytes())?;
            enc.u32(*keep as u32);
            let at = enc.0.len();
            enc.u64(s.seq);
            enc.u32(s.schema);
            enc.u64(s.timestamp_ms);
            enc.bytes(&s.state)?;
            parts.push((at as u64, (enc.0.len() - at) as u32));
        }
        Op::Truncate(key, after) => {
            enc.u8(KIND_TRUNCATE);
            enc.bytes(key.entity_type.as_bytes())?;
            enc.bytes(key.entity_id.as_bytes())?;
            enc.u64(*after);
        }
    }
    let body_len = buf.len() - start - 8;
    let body_len = u32::try_from(body_len)
        .ok()
        .filter(|l| *l <= MAX_RECORD)
        .ok_or_else(|| JournalError::Invalid("a write is larger than 256 MiB".into()))?;
    let crc = crc32(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(parts)
}

/// CRC-32 (IEEE) of a record body.
fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Applies one decoded record (at file offset `base` of its body) to the index.
fn apply_record(index: &mut Index, body: &[u8], base: u64) -> Result<(), JournalError> {
    let mut d = Dec { buf: body, pos: 0 };
    let kind = d.u8()?;
    if kind == KIND_BATCH {
        return Ok(());
    }
    let key = EntityKey::new(d.string()?, d.string()?);
    match kind {
        KIND_WRITE => {
            let n = d.u32()?;
            let mut locs = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let at = d.pos;
                let seq = d.u64()?;
                d.u64()?;
                d.bytes()?;
                d.bytes()?;
                locs.push(EvLoc {
                    seq,
                    off: base + at as u64,
                    len: (d.pos - at) as u32,
                });
            }
            let mut adds = Vec::new();
            for _ in 0..d.u32()? {
                adds.push(TimerRecord {
                    timer_id: d.u64()?,
                    fire_at_ms: d.u64()?,
                    command: d.bytes()?.to_vec(),
                });
            }
            let mut removes = Vec::new();
            for _ in 0..d.u32()? {
                removes.push(d.u64()?);
            }
            apply_write(index, &key, locs.into_iter(), adds, &removes);
        }
        KIND_SNAPSHOT => {
            let keep = d.u32()? as usize;
            let at = d.pos;
            let seq = d.u64()?;
            let schema = d.u32()?;
            d.u64()?;
            d.bytes()?;
            let loc = SnapLoc {
                seq,
                schema,
                off: base + at as u64,
                len: (d.pos - at) as u32,
            };
            apply_snapshot(index, key, loc, keep);
        }
        KIND_TRUNCATE => apply_truncate(index, &key, d.u64()?),
        k => return Err(JournalError::Corrupt(format!("unknown record kind {k}"))),
    }
    Ok(())
}

fn apply_write(
    index: &mut Index,
    key: &EntityKey,
    locs: impl ExactSizeIterator<Item = EvLoc>,
    adds: Vec<TimerRecord>,
    removes: &[u64],
) {
    if locs.len() > 0 {
        // Look up before inserting: `entry` would need an owned key, and
        // cloning one allocates twice for every write.
        match index.entities.get_mut(key) {
            Some(e) => push_locs(&mut e.events, locs),
            None => {
                let mut e = EntityIdx::default();
                push_locs(&mut e.events, locs);
                index.entities.insert(key.clone(), e);
            }
        }
    }
    if !adds.is_empty() {
        let held = match index.timers.get_mut(key) {
            Some(held) => held,
            None => index.timers.entry(key.clone()).or_default(),
        };
        for t in adds {
            held.insert(t.timer_id, t);
        }
    }
    if !removes.is_empty()
        && let Some(held) = index.timers.get_mut(key)
    {
        for id in removes {
            held.remove(id);
        }
        if held.is_empty() {
            index.timers.remove(key);
        }
    }
}

/// Adds event locations to an entity's sorted list.
fn push_locs(events: &mut Vec<EvLoc>, locs: impl Iterator<Item = EvLoc>) {
    for l in locs {
        // Appends are almost always in order; keep the vector sorted regardless.
        match events.last() {
            Some(last) if last.seq > l.seq => {
                let at = events.partition_point(|x| x.seq < l.seq);
                events.insert(at, l);
            }
            _ => events.push(l),
        }
    }
}

fn apply_truncate(index: &mut Index, key: &EntityKey, after: u64) {
    if let Some(e) = index.entities.get_mut(key) {
        let keep = e.events.partition_point(|l| l.seq <= after);
        e.events.truncate(keep);
        e.snapshots.retain(|s| s.seq <= after);
    }
}

fn apply_snapshot(index: &mut Index, key: EntityKey, loc: SnapLoc, keep: usize) {
    let e = index.entities.entry(key).or_default();
    e.snapshots.retain(|s| s.seq != loc.seq);
    let at = e.snapshots.partition_point(|s| s.seq < loc.seq);
    e.snapshots.insert(at, loc);
    let excess = e.snapshots.len().saturating_sub(keep.max(1));
    e.snapshots.drain(..excess);
}

// ---- open, write, read --------------------------------------------------------

fn io(path: &Path, e: std::io::Error) -> JournalError {
    JournalError::Io(format!("{}: {e}", path.display()))
}

/// What a scan of the file found (see [`scan`]).
pub(crate) struct Scan {
    /// Format in the file's header ([`FORMAT`] for an empty file).
    pub(crate) format: u32,
    /// End of the last good record: where appends continue (0 for a file
    /// without a header).
    pub(crate) end: u64,
    /// Length of the file.
    pub(crate) len: u64,
    /// Good records, markers included.
    pub(crate) records: u64,
    /// Offset of the last batch marker among the good records.
    pub(crate) last_marker: Option<u64>,
    /// What lies past `end`.
    pub(crate) tail: Tail,
}

impl Scan {
    /// The data ends with a batch marker (a closing marker, written at a
    /// clean close): every record is covered by a marker written after it
    /// was synced, so damage to any of them is told from a torn tail.
    pub(crate) fn covered(&self) -> bool {
        self.end <= HEADER
            || self
                .last_marker
                .is_some_and(|m| m + MARKER_FRAME as u64 == self.end)
    }
}

/// What lies past the last good record.
pub(crate) enum Tail {
    /// Nothing, or only zeros (the zero-filled space).
    Zeros,
    /// Data that was never acknowledged (a crash cut its writes short).
    Torn,
    /// Damage to acknowledged data.
    Damaged(Box<LogDamage>),
}

/// Scans the file, rebuilding `index`.
///
/// The data ends at the first record that is zero (the zero-filled space past
/// the data), cut short, or failing its checksum. What follows such a spot is
/// a torn tail if it was never synced: after a crash, the pages written since
/// the last `fdatasync` may have reached the disk in any order, so a good
/// record can follow a bad one. A batch marker records the durable end when
/// its batch was written (a closing marker, the marker of an empty batch
/// written when the log is closed, the end of all of it); a marker found past
/// the bad spot that says the spot had already been synced proves the damage
/// is in acknowledged data: [`Tail::Damaged`].
pub(crate) fn scan(path: &Path, file: &LogFile, index: &mut Index) -> Result<Scan, JournalError> {
    let len = file.len().map_err(|e| io(path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, Cursor { file, pos: 0, len });
    let mut header = [0u8; HEADER as usize];
    let mut found = Scan {
        format: FORMAT,
        end: 0,
        len,
        records: 0,
        last_marker: None,
        tail: Tail::Zeros,
    };
    if len < HEADER {
        return Ok(found);
    }
    r.read_exact(&mut header).map_err(|e| io(path, e))?;
    if &header[..8] != MAGIC {
        return Err(JournalError::Corrupt(format!(
            "{} is not a Cairn event log",
            path.display()
        )));
    }
    let format = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if format != FORMAT && format != 1 {
        return Err(JournalError::UnsupportedFormat {
            found: i64::from(format),
            supported: i64::from(FORMAT),
        });
    }
    found.format = format;
    let mut pos = HEADER;
    let mut body = Vec::new();
    loop {
        let mut frame = [0u8; 8];
        if pos + 8 > len {
            break;
        }
        r.read_exact(&mut frame).map_err(|e| io(path, e))?;
        let blen = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let end = pos + 8 + u64::from(blen);
        if blen == 0 || blen > MAX_RECORD || end > len {
            break;
        }
        body.resize(blen as usize, 0);
        r.read_exact(&mut body).map_err(|e| io(path, e))?;
        if crc32(&body) != crc {
            break;
        }
        apply_record(index, &body, pos + 8)?;
        if blen == MARKER_BODY && body[0] == KIND_BATCH {
            found.last_marker = Some(pos);
        }
        found.records += 1;
        pos = end;
    }
    found.end = pos;
    if pos < len {
        found.tail = classify_tail(path, file, pos, len, format)?;
    }
    Ok(found)
}

/// [`scan`] for [`LogStore::open`]: refuses damaged acknowledged data, cuts
/// (logs) a torn tail; returns the end of the good data and whether it ends
/// with a marker.
fn recover(path: &Path, file: &LogFile, index: &mut Index) -> Result<(u64, bool), JournalError> {
    let found = scan(path, file, index)?;
    let covered = found.covered();
    match found.tail {
        Tail::Damaged(d) => return Err(JournalError::Damaged(d)),
        Tail::Torn => {
            tracing::warn!(path = %path.display(), at = found.end, dropped = found.len - found.end, "event log: cut off a torn tail (never acknowledged)");
        }
        Tail::Zeros => {}
    }
    Ok((found.end, covered))
}

/// A batch marker frame at `f[..MARKER_FRAME]`: the durable end it records.
fn marker_at(f: &[u8]) -> Option<u64> {
    if f.len() < MARKER_FRAME || f[..4] != MARKER_BODY.to_le_bytes() || f[8] != KIND_BATCH {
        return None;
    }
    let crc = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
    if crc32(&f[8..MARKER_FRAME]) != crc {
        return None;
    }
    let mut synced = [0u8; 8];
    synced.copy_from_slice(&f[9..17]);
    Some(u64::from_le_bytes(synced))
}

/// Decides whether the bytes of `[pos, len)`, past the last good record, are
/// zeros, a tail that was never acknowledged (writes a crash cut short) or
/// damage to acknowledged data (see [`scan`]).
fn classify_tail(
    path: &Path,
    file: &LogFile,
    pos: u64,
    len: u64,
    format: u32,
) -> Result<Tail, JournalError> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK + MARKER_FRAME];
    let mut at = pos;
    let mut any_data = false;
    // The first good marker past the damage: a record boundary to read on from.
    let mut first_marker = None;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| io(path, e))?;
        let chunk = &buf[..n];
        any_data |= chunk.iter().any(|b| *b != 0);
        for i in 0..n.saturating_sub(MARKER_FRAME - 1) {
            let Some(synced) = marker_at(&chunk[i..]) else {
                continue;
            };
            let m = at + i as u64;
            if m > pos && first_marker.is_none() {
                first_marker = Some(m);
            }
            if synced > pos {
                let evidence = Evidence::Marker {
                    at: m,
                    synced_to: synced,
                    closing: is_closing(file, m, len),
                };
                let d = crate::repair::describe(path, file, pos, len, evidence, first_marker)?;
                return Ok(Tail::Damaged(Box::new(d)));
            }
        }
        // The next chunk overlaps this one by a marker's length, less a byte.
        at += n.clamp(1, CHUNK) as u64;
        if n < buf.len() {
            break;
        }
    }
    if !any_data {
        return Ok(Tail::Zeros);
    }
    if format == 1 {
        // Format 1 grew the file with every write: only its very last
        // record can be torn.
        let mut frame = [0u8; 8];
        let last = file.read_exact_at(&mut frame, pos).is_err() || {
            let blen = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
            pos + 8 + u64::from(blen) >= len
        };
        if !last {
            let d = crate::repair::describe(path, file, pos, len, Evidence::FollowedByData, None)?;
            return Ok(Tail::Damaged(Box::new(d)));
        }
    }
    Ok(Tail::Torn)
}

/// The marker at `m` is followed by no record (zeros or the end of the
/// file): a closing marker.
fn is_closing(file: &LogFile, m: u64, len: u64) -> bool {
    let next = m + MARKER_FRAME as u64;
    let mut frame = [0u8; 4];
    next + 8 > len || (file.read_exact_at(&mut frame, next).is_ok() && frame == [0; 4])
}

/// Reads the frame at `pos`: the body length and checksum, and whether a
/// good record is there (a plausible length, inside `len`, and a matching
/// checksum). `None` when the frame itself is past `len`.
pub(crate) fn read_frame(
    file: &LogFile,
    pos: u64,
    len: u64,
    body: &mut Vec<u8>,
) -> std::io::Result<Option<(u32, bool)>> {
    let mut frame = [0u8; 8];
    if pos + 8 > len {
        return Ok(None);
    }
    file.read_exact_at(&mut frame, pos)?;
    let blen = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    body.clear();
    if blen == 0 || blen > MAX_RECORD || pos + 8 + u64::from(blen) > len {
        return Ok(Some((blen, false)));
    }
    body.resize(blen as usize, 0);
    file.read_exact_at(body, pos + 8)?;
    Ok(Some((blen, crc32(body) == crc)))
}

/// What one record body holds, for a damage report: its entity, the
/// sequence numbers of its events and of its snapshot. `None` for a batch
/// marker; `Err` when the body does not decode.
pub(crate) fn summarize(body: &[u8]) -> Result<Option<RecordSummary>, JournalError> {
    let mut d = Dec { buf: body, pos: 0 };
    let kind = d.u8()?;
    if kind == KIND_BATCH {
        return Ok(None);
    }
    let key = EntityKey::new(d.string()?, d.string()?);
    let mut events = Vec::new();
    let mut snapshot = None;
    match kind {
        KIND_WRITE => {
            for _ in 0..d.u32()? {
                events.push(d.u64()?);
                d.u64()?;
                d.bytes()?;
                d.bytes()?;
            }
        }
        KIND_SNAPSHOT => {
            d.u32()?;
            snapshot = Some(d.u64()?);
        }
        KIND_TRUNCATE => {
            d.u64()?;
        }
        k => return Err(JournalError::Corrupt(format!("unknown record kind {k}"))),
    }
    Ok(Some(RecordSummary {
        key,
        events,
        snapshot,
    }))
}

/// One record's entity and what of it the record holds.
pub(crate) struct RecordSummary {
    pub(crate) key: EntityKey,
    /// Sequence numbers of its events.
    pub(crate) events: Vec<u64>,
    /// Sequence number of its snapshot (a snapshot record).
    pub(crate) snapshot: Option<u64>,
}

impl LogStore {
    /// Opens (creating if needed) `dir/events.log`, rebuilds the index and
    /// starts the writer thread. Groups are written with synchronous direct
    /// I/O where the file system takes it, else with `pwrite` + `fdatasync`.
    pub fn open(dir: &Path, max_batch: usize) -> Result<Arc<LogStore>, JournalError> {
        Self::open_with(dir, max_batch, true)
    }

    /// Like [`LogStore::open`], always syncing with `fdatasync` (no direct I/O).
    pub fn open_buffered(dir: &Path, max_batch: usize) -> Result<Arc<LogStore>, JournalError> {
        Self::open_with(dir, max_batch, false)
    }

    fn open_with(
        dir: &Path,
        max_batch: usize,
        direct: bool,
    ) -> Result<Arc<LogStore>, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join("events.log");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        // Shared: stores of one process may overlap (a test reopening), but
        // `cairn journal cut` (exclusive) must not run beside a node.
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(JournalError::Locked(path)),
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::debug!(path = %path.display(), error = %e, "event log: no file lock on this file system");
            }
        }
        Self::open_file(path, LogFile::Os(file), max_batch, direct)
    }

    /// Opens a log on a simulated disk (crash tests): like [`LogStore::open`]
    /// with `direct` (synchronous durable writes) or like
    /// [`LogStore::open_buffered`] without.
    #[cfg(feature = "testkit")]
    pub fn open_sim(
        disk: &crate::testkit::SimDisk,
        max_batch: usize,
        direct: bool,
    ) -> Result<Arc<LogStore>, JournalError> {
        let path = PathBuf::from("sim/events.log");
        Self::open_file(path, LogFile::Sim(disk.clone()), max_batch, direct)
    }

    /// Rebuilds the index from `file` (at `path`) and starts the writer.
    fn open_file(
        path: PathBuf,
        file: LogFile,
        max_batch: usize,
        direct: bool,
    ) -> Result<Arc<LogStore>, JournalError> {
        let mut index = Index::default();
        let (end, covered) = recover(&path, &file, &mut index)?;
        let end = end.max(HEADER);
        // Whatever follows the good records (zeros, a torn tail) goes, so that
        // no stale byte can be read as data later. The header is (re)written
        // with this format: a format 1 file gains batch markers from now on.
        file.set_len(end).map_err(|e| io(&path, e))?;
        let mut h = Vec::with_capacity(HEADER as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&FORMAT.to_le_bytes());
        file.write_all_at(&h, 0).map_err(|e| io(&path, e))?;
        file.sync_all(&path).map_err(|e| io(&path, e))?;
        let (tx, rx) = mpsc::channel(65536);
        let shared = Arc::new(Shared {
            path,
            file: Arc::new(file),
            index: RwLock::new(index),
            committed: AtomicU64::new(end),
            failed: OnceLock::new(),
        });
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("cairn-log".into())
            .spawn(move || {
                writer_loop(&writer_shared, rx, end, max_batch.max(1), direct, covered);
            })
            .map_err(|e| JournalError::Io(e.to_string()))?;
        Ok(Arc::new(LogStore {
            shared,
            tx: Some(tx),
            writer: Some(writer),
        }))
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn submit(&self, op: Op) -> BoxFuture<'static, Result<(), JournalError>> {
        let (ack, done) = oneshot::channel();
        let Some(tx) = &self.tx else {
            return Box::pin(async { Err(JournalError::Closed("store closed".into())) });
        };
        let pending = match tx.try_send((op, ack)) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(item)) => Some((tx.clone(), item)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Box::pin(async { Err(JournalError::Closed("log writer stopped".into())) });
            }
        };
        Box::pin(async move {
            if let Some((tx, item)) = pending {
                tx.send(item)
                    .await
                    .map_err(|_| JournalError::Closed("log writer stopped".into()))?;
            }
            let (result, _op) = done
                .await
                .map_err(|_| JournalError::Closed("log writer stopped".into()))?;
            result
        })
    }

    /// Reads the records at `locs` in order and folds each into `acc` with
    /// `step`, in a blocking task (the decoding too: a long history does
    /// not hold up an async worker, and no record is copied twice).
    fn read_locs<A: Send + 'static>(
        &self,
        locs: Vec<(u64, u32)>,
        mut acc: A,
        step: fn(&mut A, &[u8]) -> Result<(), JournalError>,
    ) -> BoxFuture<'static, Result<A, JournalError>> {
        if locs.is_empty() {
            // Nothing to read (an entity's first recovery): no blocking task.
            return Box::pin(std::future::ready(Ok(acc)));
        }
        let file = self.shared.file.clone();
        let path = self.shared.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // Events of an entity are often adjacent in the file: a run
                // with small gaps is one read.
                let mut buf = Vec::new();
                let mut i = 0;
                while i < locs.len() {
                    let start = locs[i].0;
                    let mut j = i;
                    let mut end = start + u64::from(locs[i].1);
                    while j + 1 < locs.len()
                        && locs[j + 1].0 >= end
                        && locs[j + 1].0 - end < READ_GAP
                        && end - start < READ_SPAN
                    {
                        j += 1;
                        end = locs[j].0 + u64::from(locs[j].1);
                    }
                    buf.resize((end - start) as usize, 0);
                    file.read_exact_at(&mut buf, start)
                        .map_err(|e| io(&path, e))?;
                    for loc in &locs[i..=j] {
                        let a = (loc.0 - start) as usize;
                        step(&mut acc, &buf[a..a + loc.1 as usize])?;
                    }
                    i = j + 1;
                }
                Ok(acc)
            })
            .await
            .map_err(|e| JournalError::Closed(format!("reader task failed: {e}")))?
        })
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// What the store and its writer thread share.
struct Shared {
    path: PathBuf,
    /// Shared with the readers' blocking tasks.
    file: Arc<LogFile>,
    index: RwLock<Index>,
    /// End of the fsync'd, indexed part of the file: readers stop there.
    committed: AtomicU64,
    /// Set when an fsync failed: what the kernel kept of the file is then
    /// unknown, so nothing more is accepted until the log is reopened.
    failed: OnceLock<String>,
}

impl Shared {
    fn failure(&self) -> Option<JournalError> {
        self.failed.get().map(|reason| {
            JournalError::Io(format!(
                "{}: an earlier fsync failed ({reason}); reopen the log",
                self.path.display()
            ))
        })
    }
}

/// The writer thread: takes every queued operation (up to `max_batch`),
/// checks and encodes them, writes them (one synchronous direct write, see
/// [`DirectWriter`], or one `pwrite`) and commits them (the `fdatasync` that a
/// buffered write needs, the index, the acknowledgements). Operations submitted
/// meanwhile queue up for the next group without waking this thread, which
/// parks only when the queue is empty. One thread both writes and syncs: with
/// a second thread syncing, every submit had to wake the writer and groups
/// stayed small (docs/BENCHMARKS.md).
///
/// When the store is dropped (the queue closes), it writes a closing marker:
/// a batch marker with no records, holding the end of the data, synced. It
/// proves that the last group had been synced, so that damage to it is not
/// mistaken for a torn tail on the next open. `covered` says the data
/// already ends with a marker (then a store that wrote nothing adds none).
fn writer_loop(
    shared: &Shared,
    mut rx: mpsc::Receiver<(Op, Ack)>,
    mut end: u64,
    max_batch: usize,
    direct: bool,
    mut covered: bool,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    // The file is zero-filled up to here (open cut it at the data's end).
    let mut zeroed_to = end;
    let mut direct = if direct {
        DirectWriter::open(&shared.path, &shared.file, end)
    } else {
        None
    };
    while let Some(first) = rx.blocking_recv() {
        let mut batch: Vec<(Op, Ack)> = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if let Some(err) = shared.failure() {
            fail_all(batch, &err);
            continue;
        }
        // The batch marker goes first; it is filled in once the batch has a
        // record to write.
        buf.clear();
        buf.resize(MARKER_FRAME, 0);
        let results = encode_batch(shared, &batch, &mut buf, end);
        let mut durable = false;
        if buf.len() == MARKER_FRAME {
            buf.clear();
        } else {
            let synced = shared.committed.load(Ordering::Acquire);
            fill_marker(&mut buf, synced);
            match write_group(shared, &mut direct, end, &buf, &mut zeroed_to) {
                Ok(d) => durable = d,
                Err(e) => {
                    // Nothing of this batch is acknowledged; cut the file back.
                    let _ = shared.file.set_len(end);
                    zeroed_to = end;
                    let err = io(&shared.path, e);
                    fail_all(batch, &err);
                    continue;
                }
            }
            covered = false;
        }
        end += buf.len() as u64;
        commit(shared, end, durable, batch, results);
    }
    if !covered && end > HEADER && shared.failure().is_none() {
        // Every group was committed: the data up to `end` is durable.
        buf.clear();
        buf.resize(MARKER_FRAME, 0);
        fill_marker(&mut buf, shared.committed.load(Ordering::Acquire));
        let closed =
            write_group(shared, &mut direct, end, &buf, &mut zeroed_to).and_then(|durable| {
                if durable {
                    Ok(())
                } else {
                    shared.file.sync_data()
                }
            });
        if let Err(e) = closed {
            // The data is durable; only the proof of it for the last group
            // is missing (damage there would read as a torn tail).
            tracing::warn!(path = %shared.path.display(), error = %e, "event log: closing marker not written");
        }
    }
}

/// Fills in the batch marker at the start of `buf` (its first
/// [`MARKER_FRAME`] bytes): the log was durable up to `synced`.
fn fill_marker(buf: &mut [u8], synced: u64) {
    buf[..4].copy_from_slice(&MARKER_BODY.to_le_bytes());
    buf[8] = KIND_BATCH;
    buf[9..MARKER_FRAME].copy_from_slice(&synced.to_le_bytes());
    let crc = crc32(&buf[8..MARKER_FRAME]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Writes a group at `end`: directly (durable when it returns: `Ok(true)`)
/// or through the page cache (`Ok(false)`: `fdatasync` still needed).
fn write_group(
    shared: &Shared,
    direct: &mut Option<DirectWriter>,
    end: u64,
    buf: &[u8],
    zeroed_to: &mut u64,
) -> std::io::Result<bool> {
    let Some(d) = direct.as_mut() else {
        return write_buffered(&shared.file, end, buf, zeroed_to).map(|()| false);
    };
    match d.write(end, buf, zeroed_to) {
        Ok(()) => Ok(true),
        // A file system that takes O_DIRECT at open but not our
        // writes: the first write says so, and nothing was written.
        Err(e) if !d.proven && e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::info!(path = %shared.path.display(), "event log: direct writes refused; using fdatasync");
            *direct = None;
            *zeroed_to = end;
            write_buffered(&shared.file, end, buf, zeroed_to).map(|()| false)
        }
        Err(e) => {
            // Unlike a failed pwrite into the page cache, a failed
            // synchronous write leaves the disk in an unknown state.
            let _ = shared.failed.set(e.to_string());
            Err(e)
        }
    }
}

/// Writes a group through the page cache (made durable by `commit`'s
/// `fdatasync`), zero-filling ahead of it.
fn write_buffered(
    file: &LogFile,
    end: u64,
    buf: &[u8],
    zeroed_to: &mut u64,
) -> std::io::Result<()> {
    file.write_all_at(buf, end)?;
    let data_end = end + buf.len() as u64;
    if data_end > *zeroed_to {
        *zeroed_to = zero_fill(file, data_end)?;
    }
    Ok(())
}

/// Size of the blocks that direct writes cover.
const BLOCK: u64 = 4096;

/// A zeroed, `BLOCK`-aligned slice of `len` bytes carved out of `scratch`.
fn aligned(scratch: &mut Vec<u8>, len: usize) -> &mut [u8] {
    scratch.clear();
    scratch.resize(len + BLOCK as usize, 0);
    let off = scratch.as_ptr().align_offset(BLOCK as usize);
    &mut scratch[off..off + len]
}

/// Writes groups with `O_DIRECT | O_DSYNC`: each group is one `pwrite` of
/// whole 4 KiB blocks (the partial last block of the data, kept in memory,
/// then the group, then zeros), durable when it returns. Against a `pwrite`
/// into the page cache and an `fdatasync`, this skips the page cache's
/// writeback and one system call, and syncs sooner (docs/BENCHMARKS.md).
/// Readers keep the buffered
/// handle; the kernel drops cached pages that a direct write covers.
struct DirectWriter {
    file: DirectFile,
    /// Scratch space; the aligned part starts at `align_offset(BLOCK)`.
    scratch: Vec<u8>,
    /// The data of the partial block at the end: `[align_down(end), end)`.
    tail: Vec<u8>,
    /// A direct write has succeeded: from now on an error is not a refusal.
    proven: bool,
}

impl DirectWriter {
    /// Opens the direct handle, or `None` where the system has none (then
    /// the writer uses `fdatasync`).
    fn open(path: &Path, file: &LogFile, end: u64) -> Option<DirectWriter> {
        let direct = file.open_direct(path)?;
        let start = end / BLOCK * BLOCK;
        let mut tail = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut tail, start).ok()?;
        Some(DirectWriter {
            file: direct,
            scratch: Vec::new(),
            tail,
            proven: false,
        })
    }

    /// Writes `group` at `end`: zeros ahead first if the data would pass
    /// `zeroed_to` (so the data write only overwrites allocated blocks), then
    /// the blocks from the one holding `end` to the one holding the group's end.
    fn write(&mut self, end: u64, group: &[u8], zeroed_to: &mut u64) -> std::io::Result<()> {
        let data_end = end + group.len() as u64;
        if data_end > *zeroed_to {
            let from = (*zeroed_to).max(end.next_multiple_of(BLOCK));
            let to = (data_end / ZERO_STEP + 2) * ZERO_STEP;
            if to > from {
                // One synchronous write (each one commits the file's growth).
                let zeros = aligned(&mut self.scratch, (to - from) as usize);
                self.file.write_all_at(zeros, from)?;
            }
            *zeroed_to = to;
        }
        let start = end / BLOCK * BLOCK;
        let total = (end - start) as usize + group.len();
        let w = aligned(&mut self.scratch, total.next_multiple_of(BLOCK as usize));
        w[..self.tail.len()].copy_from_slice(&self.tail);
        w[self.tail.len()..total].copy_from_slice(group);
        self.file.write_all_at(w, start)?;
        self.proven = true;
        let from = (data_end / BLOCK * BLOCK - start) as usize;
        self.tail.clear();
        self.tail.extend_from_slice(&w[from..total]);
        Ok(())
    }
}

/// Writes zeros from `from` to the next multiple of [`ZERO_STEP`] past it, so
/// that the writes which follow overwrite blocks the file already has; returns
/// the new end of the zero-filled space.
fn zero_fill(file: &LogFile, from: u64) -> std::io::Result<u64> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let to = (from / ZERO_STEP + 2) * ZERO_STEP;
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(ZEROS.len());
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(to)
}

/// Checks each operation of a batch (an event whose sequence number the
/// entity already has is a conflict) and encodes the accepted ones into
/// `buf`, which will be written at file offset `end`.
fn encode_batch(
    shared: &Shared,
    batch: &[(Op, Ack)],
    buf: &mut Vec<u8>,
    end: u64,
) -> Vec<Result<Vec<(u64, u32)>, JournalError>> {
    // Every earlier batch is indexed: a batch is committed before the next
    // one is encoded.
    let idx = shared.index.read().unwrap_or_else(|p| p.into_inner());
    // Highest sequence number accepted earlier in this batch, per entity;
    // sized for the batch, since growing it rehashes every key
    // (docs/BENCHMARKS.md).
    let mut pending: Map<&EntityKey, u64> =
        Map::with_capacity_and_hasher(batch.len(), RandomState::default());
    // Entities truncated earlier in this batch: stored events above the
    // cut no longer count.
    let mut cuts: Map<&EntityKey, u64> = Map::default();
    let mut results = Vec::with_capacity(batch.len());
    for (op, _) in batch {
        if let Op::Truncate(key, after) = op {
            let cut = cuts.entry(key).or_insert(*after);
            *cut = (*cut).min(*after);
            let earlier = pending.entry(key).or_insert(0);
            *earlier = (*earlier).min(*after);
        }
        // For an append: the highest sequence number accepted for its
        // entity earlier in this batch (0 if none), updated once it is encoded.
        let mut accepted = None;
        if let Op::Append(w) = op
            && !w.events.is_empty()
        {
            // One lookup of each map per write: hashing keys is a visible cost.
            let stored = idx.entities.get(&w.key);
            let earlier = pending.entry(&w.key).or_insert(0);
            let cut = cuts.get(&w.key).copied().unwrap_or(u64::MAX);
            let written = |seq: u64| {
                seq <= *earlier || (seq <= cut && stored.is_some_and(|e| e.has_seq(seq)))
            };
            if let Some(e) = w.events.iter().find(|e| written(e.seq)) {
                results.push(Err(JournalError::Conflict {
                    key: w.key.clone(),
                    seq: e.seq,
                }));
                continue;
            }
            accepted = w.events.last().map(|last| (earlier, last.seq));
        }
        let at = buf.len();
        let r = encode_op(buf, op);
        match &r {
            Err(_) => buf.truncate(at),
            Ok(_) => {
                if let Some((earlier, last)) = accepted {
                    *earlier = (*earlier).max(last);
                }
            }
        }
        results.push(r.map(|parts| parts.into_iter().map(|(o, l)| (end + o, l)).collect()));
    }
    results
}

/// Answers every operation of a batch with `err`.
fn fail_all(batch: Vec<(Op, Ack)>, err: &JournalError) {
    for (op, ack) in batch {
        let _ = ack.send((Err(err.clone()), op));
    }
}

/// Makes a written batch durable (one `fdatasync`, skipped when the batch
/// wrote nothing), then indexes it, moves the committed end to `end` (the end
/// of the file with this batch) and acknowledges its operations, in order;
/// `results` says per operation where its parts landed or why it was refused.
fn commit(
    shared: &Shared,
    end: u64,
    durable: bool,
    batch: Vec<(Op, Ack)>,
    results: Vec<Result<Vec<(u64, u32)>, JournalError>>,
) {
    let synced = match shared.failure() {
        Some(err) => Err(err),
        None if durable || end <= shared.committed.load(Ordering::Acquire) => Ok(()),
        None => shared.file.sync_data().map_err(|e| {
            let reason = e.to_string();
            tracing::error!(path = %shared.path.display(), error = %reason, "event log: fsync failed; refusing further writes");
            let _ = shared.failed.set(reason);
            io(&shared.path, e)
        }),
    };
    if let Err(err) = synced {
        // The batch's bytes are in the file but not known to be durable: a
        // restart may find them, so its writes have an unknown outcome
        // (not "nothing stored"). Operations refused on their own were not
        // written and keep their error.
        let unknown = JournalError::Indeterminate(format!(
            "written but not synced, a restart may find it: {err}"
        ));
        for ((op, ack), r) in batch.into_iter().zip(results) {
            let e = match r {
                Ok(_) => unknown.clone(),
                Err(e) => e,
            };
            let _ = ack.send((Err(e), op));
        }
        return;
    }
    {
        let mut idx = shared.index.write().unwrap_or_else(|p| p.into_inner());
        for ((op, _), r) in batch.iter().zip(&results) {
            if let Ok(parts) = r {
                index_op(&mut idx, op, parts);
            }
        }
    }
    shared.committed.store(end, Ordering::Release);
    for ((op, ack), r) in batch.into_iter().zip(results) {
        let _ = ack.send((r.map(|_| ()), op));
    }
}

/// Adds one written operation to the index.
fn index_op(idx: &mut Index, op: &Op, parts: &[(u64, u32)]) {
    match op {
        Op::Append(w) => {
            let locs = w.events.iter().zip(parts).map(|(e, (off, len))| EvLoc {
                seq: e.seq,
                off: *off,
                len: *len,
            });
            apply_write(idx, &w.key, locs, w.add_timers.clone(), &w.remove_timers);
        }
        Op::Snapshot(key, s, keep) => {
            if let Some((off, len)) = parts.first() {
                let loc = SnapLoc {
                    seq: s.seq,
                    schema: s.schema,
                    off: *off,
                    len: *len,
                };
                apply_snapshot(idx, key.clone(), loc, *keep);
            }
        }
        Op::Truncate(key, after) => apply_truncate(idx, key, *after),
    }
}

/// An event of the feed and the file offset of its encoding.
type FeedEvent = (EntityKey, EventRecord, u64);

/// Appends the events of `entity_type` in one record body to `out`.
fn feed_events(
    body: &[u8],
    base: u64,
    entity_type: &str,
    out: &mut Vec<FeedEvent>,
) -> Result<(), JournalError> {
    let mut d = Dec { buf: body, pos: 0 };
    if d.u8()? != KIND_WRITE {
        return Ok(());
    }
    let ty = d.bytes()?;
    if ty != entity_type.as_bytes() {
        return Ok(());
    }
    let id = d.string()?;
    let n = d.u32()?;
    for _ in 0..n {
        let at = d.pos;
        d.u64()?;
        d.u64()?;
        d.bytes()?;
        d.bytes()?;
        let e = decode_event(&body[at..d.pos])?;
        out.push((EntityKey::new(entity_type, id.clone()), e, base + at as u64));
    }
    Ok(())
}

/// Reads the feed of a type from file offset `from` (0: the first record) up
/// to the committed end `end`.
fn feed_page(
    file: &LogFile,
    path: &Path,
    entity_type: &str,
    from: u64,
    end: u64,
    limit: usize,
) -> Result<(Vec<FeedEvent>, u64), JournalError> {
    let start = if from == 0 { HEADER } else { from };
    if start < HEADER || start > end {
        return Err(JournalError::Invalid(format!(
            "feed cursor {from} is outside the log (0, or {HEADER} to {end})"
        )));
    }
    let not_a_boundary = |at: u64| {
        JournalError::Invalid(format!(
            "feed cursor {at} is not the start of a record of {}",
            path.display()
        ))
    };
    let mut events = Vec::new();
    let mut next = start;
    let mut pos = start;
    let mut buf = Vec::new();
    while pos < end && events.len() < limit {
        let want = (end - pos).min(4 << 20) as usize;
        buf.resize(want, 0);
        file.read_exact_at(&mut buf, pos).map_err(|e| io(path, e))?;
        let mut at = 0usize;
        while at + 8 <= buf.len() && events.len() < limit {
            let blen = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            let crc = u32::from_le_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
            if blen > MAX_RECORD {
                return Err(not_a_boundary(pos + at as u64));
            }
            let rec_end = at + 8 + blen as usize;
            if rec_end > buf.len() {
                if at == 0 {
                    // One record larger than the chunk: read it whole.
                    if pos + rec_end as u64 > end {
                        return Err(not_a_boundary(pos));
                    }
                    buf.resize(rec_end, 0);
                    file.read_exact_at(&mut buf, pos).map_err(|e| io(path, e))?;
                    continue;
                }
                break;
            }
            let body = &buf[at + 8..rec_end];
            if crc32(body) != crc {
                return Err(not_a_boundary(pos + at as u64));
            }
            feed_events(body, pos + at as u64 + 8, entity_type, &mut events)?;
            at = rec_end;
            next = pos + at as u64;
        }
        if at == 0 {
            break;
        }
        pos += at as u64;
    }
    Ok((events, next))
}

impl Journal for LogStore {
    fn read_feed(
        &self,
        entity_type: &str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<FeedPage, JournalError>> {
        let file = self.shared.file.clone();
        let path = self.shared.path.clone();
        let end = self.shared.committed.load(Ordering::Acquire);
        let ty = entity_type.to_owned();
        let shared = self.shared.clone();
        Box::pin(async move {
            let (events, next) =
                tokio::task::spawn_blocking(move || feed_page(&file, &path, &ty, from, end, limit))
                    .await
                    .map_err(|e| JournalError::Closed(format!("reader task failed: {e}")))??;
            // A truncated event stays in the file: it is in the feed only
            // while the index still has it at that place.
            let idx = shared.index.read().unwrap_or_else(|p| p.into_inner());
            let events = events
                .into_iter()
                .filter(|(key, e, off)| {
                    idx.entities.get(key).is_some_and(|x| {
                        x.events
                            .binary_search_by_key(&e.seq, |l| l.seq)
                            .is_ok_and(|i| x.events[i].off == *off)
                    })
                })
                .map(|(key, e, _)| (key, e))
                .collect();
            Ok(FeedPage { events, next })
        })
    }

    fn append(&self, write: Write) -> BoxFuture<'static, Result<(), JournalError>> {
        self.submit(Op::Append(write))
    }

    fn read(
        &self,
        key: &EntityKey,
        from: u64,
        to: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<EventRecord>, JournalError>> {
        if from > to || limit == 0 {
            return Box::pin(async { Ok(Vec::new()) });
        }
        let locs: Vec<(u64, u32)> = {
            let idx = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
            idx.entities.get(key).map_or_else(Vec::new, |e| {
                let start = e.events.partition_point(|l| l.seq < from);
                e.events[start..]
                    .iter()
                    .take_while(|l| l.seq <= to)
                    .take(limit)
                    .map(|l| (l.off, l.len))
                    .collect()
            })
        };
        let acc = Vec::with_capacity(locs.len());
        self.read_locs(locs, acc, |out, b| {
            out.push(decode_event(b)?);
            Ok(())
        })
    }

    fn read_packed(
        &self,
        key: &EntityKey,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<PackedEvents, JournalError>> {
        let locs: Vec<(u64, u32)> = {
            let idx = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
            idx.entities.get(key).map_or_else(Vec::new, |e| {
                let start = e.events.partition_point(|l| l.seq < from);
                e.events[start..]
                    .iter()
                    .take(limit)
                    .map(|l| (l.off, l.len))
                    .collect()
            })
        };
        self.read_locs(locs, PackedEvents::default(), |out, b| {
            let mut d = Dec { buf: b, pos: 0 };
            let seq = d.u64()?;
            d.u64()?;
            d.bytes()?;
            out.push(seq, d.bytes()?)
        })
    }

    fn highest_seq(&self, key: &EntityKey) -> BoxFuture<'static, Result<u64, JournalError>> {
        let idx = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
        let h = idx
            .entities
            .get(key)
            .and_then(|e| e.events.last())
            .map_or(0, |l| l.seq);
        Box::pin(std::future::ready(Ok(h)))
    }

    fn timer(
        &self,
        key: &EntityKey,
        timer_id: u64,
    ) -> BoxFuture<'static, Result<Option<TimerRecord>, JournalError>> {
        let idx = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
        let t = idx.timers.get(key).and_then(|h| h.get(&timer_id)).cloned();
        Box::pin(std::future::ready(Ok(t)))
    }

    fn entity_timers(
        &self,
        key: &EntityKey,
    ) -> BoxFuture<'static, Result<Vec<TimerRecord>, JournalError>> {
        let idx = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
        let v = idx
            .timers
            .get(key)
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(v)))
    }

    fn pending_timers(
        &self,
    ) -> BoxFuture<'static, Result<Vec<(EntityKey, TimerRecord)>, JournalError>> {
        let idx = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = idx
            .timers
            .iter()
            .flat_map(|(k, h)| h.values().map(move |t| (k.clone(), t.clone())))
            .collect();
        v.sort_by_key(|(_, t)| t.fire_at_ms);
        Box::pin(std::future::ready(Ok(v)))
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
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<String>, JournalError>> {
        let idx = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
        let ids = idx
            .entities
            .iter()
            .filter(|(k, e)| k.entity_type == entity_type && !e.events.is_empty())
            .map(|(k, _)| k.entity_id.as_str());
        Box::pin(std::future::ready(Ok(crate::sample_ids(ids, limit))))
    }
}

impl SnapshotStore for LogStore {
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
        let loc = {
            let idx = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
            idx.entities.get(key).and_then(|e| {
                e.snapshots
                    .iter()
                    .rev()
                    .find(|s| s.seq <= max_seq && s.schema == schema)
                    .copied()
            })
        };
        let Some(loc) = loc else {
            return Box::pin(async { Ok(None) });
        };
        let fut = self.read_locs(vec![(loc.off, loc.len)], None, |out, b| {
            let mut d = Dec { buf: b, pos: 0 };
            *out = Some(Snapshot {
                seq: d.u64()?,
                schema: d.u32()?,
                timestamp_ms: d.u64()?,
                state: d.bytes()?.to_vec(),
            });
            Ok(())
        });
        Box::pin(async move {
            fut.await?
                .map(Some)
                .ok_or_else(|| JournalError::Corrupt("snapshot missing".into()))
        })
    }
}

#[cfg(test)]
mod tests {
    //! Crash shapes of the zero-filled log that only its format can build.

    use super::*;

    fn ev(seq: u64) -> EventRecord {
        EventRecord {
            seq,
            timestamp_ms: seq,
            version: "v1".into(),
            payload: seq.to_le_bytes().to_vec(),
        }
    }

    async fn append(s: &LogStore, key: &EntityKey, seqs: std::ops::RangeInclusive<u64>) -> u64 {
        s.append(Write {
            key: key.clone(),
            events: seqs.map(ev).collect(),
            ..Write::default()
        })
        .await
        .unwrap();
        s.shared.committed.load(Ordering::Acquire)
    }

    /// Writes #1..#3, #4..#5 and #6 as three batches, then closes the log;
    /// returns the ends of the batches.
    async fn three_batches(dir: &Path, k: &EntityKey) -> (u64, u64, u64) {
        let s = LogStore::open(dir, 16).unwrap();
        let e1 = append(&s, k, 1..=3).await;
        let e2 = append(&s, k, 4..=5).await;
        let e3 = append(&s, k, 6..=6).await;
        (e1, e2, e3)
    }

    /// Removes the closing marker at `end` (the end of the last batch), as
    /// if the process had crashed instead of closing the log.
    fn crash_instead_of_close(bytes: &mut [u8], end: u64) {
        let m = end as usize;
        assert_eq!(bytes[m + 8], KIND_BATCH, "a closing marker at {end}");
        assert!(bytes[m + MARKER_FRAME..].iter().all(|b| *b == 0));
        bytes[m..m + MARKER_FRAME].fill(0);
    }

    /// Three batches were written, the third one's marker saying the second
    /// was not yet durable, and the crash lost the second's page: the damage
    /// is a torn tail, both batches go, and appends continue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_page_before_a_later_unsynced_batch_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let k = EntityKey::new("t", "a");
        let (e1, e2, e3) = three_batches(dir.path(), &k).await;
        let path = dir.path().join("events.log");
        let mut bytes = std::fs::read(&path).unwrap();
        // The third batch's marker, as if written before the second was synced.
        let m = e2 as usize;
        assert_eq!(bytes[m + 8], KIND_BATCH);
        bytes[m + 9..m + 17].copy_from_slice(&e1.to_le_bytes());
        let crc = crc32(&bytes[m + 8..m + 17]);
        bytes[m + 4..m + 8].copy_from_slice(&crc.to_le_bytes());
        // The second batch's page never reached the disk, nor did the log
        // close.
        bytes[e1 as usize..e2 as usize].fill(0);
        crash_instead_of_close(&mut bytes, e3);
        std::fs::write(&path, &bytes).unwrap();
        {
            let s = LogStore::open(dir.path(), 16).unwrap();
            assert_eq!(
                s.highest_seq(&k).await.unwrap(),
                3,
                "#4..#6 were never acknowledged"
            );
            assert_eq!(s.read(&k, 1, 10, 10).await.unwrap().len(), 3);
            append(&s, &k, 4..=4).await;
        }
        let s = LogStore::open(dir.path(), 16).unwrap();
        assert_eq!(s.highest_seq(&k).await.unwrap(), 4);
        assert_eq!(s.read(&k, 4, 4, 1).await.unwrap(), vec![ev(4)]);
    }

    /// The same loss, but the later marker proves the damaged batch had been
    /// synced: refused as corruption, nothing cut.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damage_to_a_synced_batch_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let k = EntityKey::new("t", "b");
        let (e1, e2, _) = three_batches(dir.path(), &k).await;
        let path = dir.path().join("events.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[e1 as usize..e2 as usize].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let e = LogStore::open(dir.path(), 16).err().expect("refused");
        let JournalError::Damaged(d) = &e else {
            panic!("not reported as damage: {e}");
        };
        assert_eq!(d.offset, e1, "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut");
    }

    /// The file stays zero-filled ahead of the data, and reopening cuts it
    /// back to the data's end before filling again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_file_is_zero_filled_ahead_of_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let k = EntityKey::new("t", "z");
        let path = dir.path().join("events.log");
        let end = {
            let s = LogStore::open(dir.path(), 16).unwrap();
            append(&s, &k, 1..=1).await
        };
        // Closing wrote a closing marker at the end.
        let closed = end + MARKER_FRAME as u64;
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() as u64 >= end + ZERO_STEP, "zero-filled ahead");
        assert_eq!(marker_at(&bytes[end as usize..]), Some(end));
        assert!(bytes[closed as usize..].iter().all(|b| *b == 0));
        let s = LogStore::open(dir.path(), 16).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            closed,
            "cut back on open"
        );
        assert_eq!(append(&s, &k, 2..=2).await, closed + (end - HEADER));
    }
}
