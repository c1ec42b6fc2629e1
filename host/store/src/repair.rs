//! Damage to the event log, for an operator: the error [`LogStore::open`]
//! refuses to start with ([`LogDamage`]: where, why the bytes are known to
//! have been acknowledged, which entities they hold), the report of
//! `cairn journal check` ([`check_log`]) and the cut of `cairn journal cut`
//! ([`cut_log`]), which copies the file aside before it truncates anything.
//!
//! Owns no format: records are read through `log`. Both functions take the
//! log's lock exclusively, so they never run beside a node (which holds it
//! shared); they never cut data silently: a cut names its backup and
//! everything it drops.
//!
//! [`LogStore::open`]: crate::LogStore::open

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::file::LogFile;
use crate::log::{self, HEADER, Index, Tail};
use crate::{EntityKey, JournalError};

/// Why the bytes at a damaged offset are not a good record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DamageReason {
    /// The record's checksum does not match its bytes.
    Checksum,
    /// Zeros where a record should start (a body length of 0).
    Zeroed,
    /// The body length (this many bytes) is larger than any record.
    Length(u32),
    /// The body length (this many bytes) runs past the end of the file.
    PastEnd(u32),
    /// The file ends inside the record's frame.
    Truncated,
}

impl fmt::Display for DamageReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DamageReason::Checksum => f.write_str("checksum mismatch"),
            DamageReason::Zeroed => f.write_str("zeros where a record should start"),
            DamageReason::Length(n) => write!(f, "impossible record length {n}"),
            DamageReason::PastEnd(n) => {
                write!(f, "record length {n} runs past the end of the file")
            }
            DamageReason::Truncated => f.write_str("the file ends inside the record"),
        }
    }
}

/// Why the damaged bytes are known to have been acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// A batch marker past the damage says the log had been synced beyond
    /// it when the marker was written.
    Marker {
        /// Offset of the marker.
        at: u64,
        /// The durable end the marker records.
        synced_to: u64,
        /// No record follows the marker: the closing marker a clean close writes.
        closing: bool,
    },
    /// A format 1 log (no markers, each write synced as it grew the file):
    /// more data follows the damaged record.
    FollowedByData,
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::Marker {
                at,
                synced_to,
                closing,
            } => write!(
                f,
                "the {} at byte {at} records the log as durable up to byte {synced_to}",
                if *closing {
                    "closing marker (written at a clean close)"
                } else {
                    "batch marker"
                }
            ),
            Evidence::FollowedByData => {
                f.write_str("a format 1 log with more writes after the damaged one")
            }
        }
    }
}

/// One entity's part of some records of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affected {
    /// The entity.
    pub key: EntityKey,
    /// Lowest and highest sequence number of its events there, if any.
    pub seqs: Option<(u64, u64)>,
    /// Sequence numbers of its snapshots there.
    pub snapshots: Vec<u64>,
    /// Its records there (writes, snapshots, truncations).
    pub records: usize,
}

impl fmt::Display for Affected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key)?;
        let mut parts = Vec::new();
        if let Some((lo, hi)) = self.seqs {
            parts.push(if lo == hi {
                format!("event #{lo}")
            } else {
                format!("events #{lo}..#{hi}")
            });
        }
        if !self.snapshots.is_empty() {
            let s: Vec<String> = self.snapshots.iter().map(|s| format!("#{s}")).collect();
            parts.push(format!("snapshot {}", s.join(", ")));
        }
        if parts.is_empty() {
            parts.push(format!("{} record(s) without events", self.records));
        }
        write!(f, " ({})", parts.join("; "))
    }
}

/// Damage to acknowledged data of the event log. Nothing was cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogDamage {
    /// The log file.
    pub path: PathBuf,
    /// Offset of the first damaged record.
    pub offset: u64,
    /// What is wrong there.
    pub reason: DamageReason,
    /// Why it had been acknowledged.
    pub evidence: Evidence,
    /// The entities the damaged record names, read despite its failed
    /// checksum (so not certain); `None` when it does not decode.
    pub in_record: Option<Vec<Affected>>,
    /// Where good records were found again after the damage: the damaged
    /// record's end when its length holds, else the next batch marker;
    /// `None` when none was found (the bytes up to `data_end` are unread).
    pub resumed_at: Option<u64>,
    /// The entities of the good records from `resumed_at` to `data_end`:
    /// cutting at `offset` drops them too.
    pub after: Vec<Affected>,
    /// End of the good records after the damage (`offset` when none).
    pub data_end: u64,
}

impl fmt::Display for LogDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: acknowledged data is damaged at byte {} ({}); it had been synced: {}. ",
            self.path.display(),
            self.offset,
            self.reason,
            self.evidence
        )?;
        match &self.in_record {
            Some(a) if !a.is_empty() => {
                write!(
                    f,
                    "The damaged record holds {} (read despite the damage). ",
                    list(a)
                )?;
            }
            Some(_) => f.write_str("The damaged record is a batch marker. ")?,
            None => f.write_str("The damaged record cannot be read. ")?,
        }
        match self.resumed_at {
            Some(at) if !self.after.is_empty() => write!(
                f,
                "Bytes {at}..{} after it hold good records of {}, which a cut at byte {} would also drop. ",
                self.data_end,
                list(&self.after),
                self.offset
            )?,
            Some(_) => f.write_str("No entity's record follows it. ")?,
            None => write!(
                f,
                "What follows it up to byte {} cannot be read. ",
                self.data_end
            )?,
        }
        write!(
            f,
            "Nothing was cut; `cairn journal check` reports, `cairn journal cut --at {}` cuts after a backup",
            self.offset
        )
    }
}

fn list(a: &[Affected]) -> String {
    a.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Collects what records hold, per entity, in order of first appearance.
#[derive(Default)]
struct Tally {
    order: Vec<EntityKey>,
    by_key: BTreeMap<EntityKey, Affected>,
}

impl Tally {
    fn add(&mut self, r: log::RecordSummary) {
        let a = self.by_key.entry(r.key.clone()).or_insert_with(|| {
            self.order.push(r.key.clone());
            Affected {
                key: r.key,
                seqs: None,
                snapshots: Vec::new(),
                records: 0,
            }
        });
        a.records += 1;
        for s in r.events {
            a.seqs = Some(a.seqs.map_or((s, s), |(lo, hi)| (lo.min(s), hi.max(s))));
        }
        a.snapshots.extend(r.snapshot);
    }

    fn into_vec(mut self) -> Vec<Affected> {
        self.order
            .iter()
            .filter_map(|k| self.by_key.remove(k))
            .collect()
    }
}

fn io(path: &Path, e: std::io::Error) -> JournalError {
    JournalError::Io(format!("{}: {e}", path.display()))
}

/// Describes damage at `pos` (the first bad record; the file is `len`
/// long): what it is, what it and the good records after it hold.
/// `marker` is the first good batch marker past `pos`, where records can
/// be read again when the damaged record's length cannot be trusted.
pub(crate) fn describe(
    path: &Path,
    file: &LogFile,
    pos: u64,
    len: u64,
    evidence: Evidence,
    marker: Option<u64>,
) -> Result<LogDamage, JournalError> {
    let mut body = Vec::new();
    let frame = log::read_frame(file, pos, len, &mut body).map_err(|e| io(path, e))?;
    let (reason, in_record, next) = match frame {
        None => (DamageReason::Truncated, None, None),
        Some((0, _)) => (DamageReason::Zeroed, None, None),
        Some((blen, _)) if body.is_empty() => {
            let r = if blen > log::MAX_RECORD {
                DamageReason::Length(blen)
            } else {
                DamageReason::PastEnd(blen)
            };
            (r, None, None)
        }
        Some((blen, _)) => {
            // A good record may be damaged in its length, so its end is only
            // trusted when a good record starts there.
            let in_record = log::summarize(&body).ok().map(|r| {
                let mut t = Tally::default();
                t.extend(r);
                t.into_vec()
            });
            (
                DamageReason::Checksum,
                in_record,
                Some(pos + 8 + u64::from(blen)),
            )
        }
    };
    let mut resumed_at = None;
    for start in next.into_iter().chain(marker) {
        if let Some((_, true)) =
            log::read_frame(file, start, len, &mut body).map_err(|e| io(path, e))?
        {
            resumed_at = Some(start);
            break;
        }
    }
    let mut tally = Tally::default();
    let mut at = resumed_at.unwrap_or(pos);
    if resumed_at.is_some() {
        while let Some((blen, true)) =
            log::read_frame(file, at, len, &mut body).map_err(|e| io(path, e))?
        {
            if let Ok(Some(r)) = log::summarize(&body) {
                tally.add(r);
            }
            at += 8 + u64::from(blen);
        }
    }
    Ok(LogDamage {
        path: path.to_path_buf(),
        offset: pos,
        reason,
        evidence,
        in_record,
        resumed_at,
        after: tally.into_vec(),
        data_end: at,
    })
}

impl Tally {
    fn extend(&mut self, r: Option<log::RecordSummary>) {
        if let Some(r) = r {
            self.add(r);
        }
    }
}

/// What `cairn journal check` found in a data directory's `events.log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogReport {
    /// The log file.
    pub path: PathBuf,
    /// Its format (1 or 2).
    pub format: u32,
    /// Length of the file.
    pub file_len: u64,
    /// End of the good records: where appends continue.
    pub data_end: u64,
    /// Good records, batch markers included.
    pub records: u64,
    /// Entities with events.
    pub entities: usize,
    /// Start of the last group when no marker follows it (the log was not
    /// closed cleanly): damage there would read as a torn tail and be cut
    /// on open. `None` when the data ends with a marker (every record is
    /// covered) or is empty.
    pub uncovered_from: Option<u64>,
    /// Bytes past the data that are neither zeros nor acknowledged: a torn
    /// tail, cut when the log opens.
    pub torn_tail: Option<u64>,
    /// Damage to acknowledged data: the log does not open until it is cut.
    pub damage: Option<LogDamage>,
}

/// Opens `dir/events.log` for a repair: exclusively locked, so that no node
/// has it open.
fn open_locked(dir: &Path) -> Result<(PathBuf, File), JournalError> {
    let path = dir.join("events.log");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok((path, file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Locked(path)),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path, e)),
    }
}

/// Scans `dir/events.log` and reports it (`cairn journal check`). Changes
/// nothing; refuses ([`JournalError::Locked`]) while a node has it open.
pub fn check_log(dir: &Path) -> Result<LogReport, JournalError> {
    let (path, file) = open_locked(dir)?;
    let file = LogFile::Os(file);
    report(&path, &file)
}

fn report(path: &Path, file: &LogFile) -> Result<LogReport, JournalError> {
    let mut index = Index::default();
    let found = log::scan(path, file, &mut index)?;
    let uncovered_from = (!found.covered()).then(|| found.last_marker.unwrap_or(HEADER));
    let (torn_tail, damage) = match found.tail {
        Tail::Zeros => (None, None),
        Tail::Torn => (Some(found.len - found.end), None),
        Tail::Damaged(d) => (None, Some(*d)),
    };
    Ok(LogReport {
        path: path.to_path_buf(),
        format: found.format,
        file_len: found.len,
        data_end: found.end,
        records: found.records,
        entities: index.entities_with_events(),
        uncovered_from,
        torn_tail,
        damage,
    })
}

/// What [`cut_log`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutReport {
    /// The copy of the whole file, made (and synced) before the cut.
    pub backup: PathBuf,
    /// The file now ends here (the damaged offset).
    pub cut_at: u64,
    /// Length of the file before the cut.
    pub old_len: u64,
    /// The damage that was cut, with everything the cut dropped.
    pub damage: LogDamage,
}

/// Cuts `dir/events.log` at the damaged acknowledged record at byte `at`
/// (`cairn journal cut`), dropping it and everything after it, so that the
/// log opens again. First copies the whole file to a new backup file next
/// to it, synced. Refuses when a node has the log open, and when `at` is not
/// the offset of the damage [`check_log`] reports (a torn tail needs no cut:
/// opening the log cuts it).
pub fn cut_log(dir: &Path, at: u64) -> Result<CutReport, JournalError> {
    let (path, locked) = open_locked(dir)?;
    let file = LogFile::Os(locked.try_clone().map_err(|e| io(&path, e))?);
    let found = report(&path, &file)?;
    let Some(damage) = found.damage else {
        return Err(JournalError::Invalid(format!(
            "{}: no damaged acknowledged data to cut{}",
            path.display(),
            if found.torn_tail.is_some() {
                " (the torn tail is cut when the log opens)"
            } else {
                ""
            }
        )));
    };
    if damage.offset != at {
        return Err(JournalError::Invalid(format!(
            "{}: the damage is at byte {}, not {at}; nothing was cut",
            path.display(),
            damage.offset
        )));
    }
    let backup = backup_path(&path)?;
    copy_synced(&path, &locked, &backup)?;
    file.set_len(at).map_err(|e| io(&path, e))?;
    file.sync_all(&path).map_err(|e| io(&path, e))?;
    Ok(CutReport {
        backup,
        cut_at: at,
        old_len: found.file_len,
        damage,
    })
}

/// A name for the backup that no file has: `events.log.damaged-<unix time>`
/// (with a counter if taken).
fn backup_path(path: &Path) -> Result<PathBuf, JournalError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{}.damaged-{secs}", path.display());
    (0..1000)
        .map(|i| {
            PathBuf::from(if i == 0 {
                base.clone()
            } else {
                format!("{base}.{i}")
            })
        })
        .find(|p| !p.exists())
        .ok_or_else(|| JournalError::Invalid(format!("{base}: too many backups")))
}

/// Copies `from` (open as `src`) to the new file `to` and syncs it and its
/// directory.
fn copy_synced(from: &Path, src: &File, to: &Path) -> Result<(), JournalError> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| io(to, e))?;
    let mut src = src;
    std::io::Seek::rewind(&mut src).map_err(|e| io(from, e))?;
    std::io::copy(&mut src, &mut out).map_err(|e| io(to, e))?;
    out.sync_all().map_err(|e| io(to, e))?;
    if let Some(d) = to.parent().and_then(|p| File::open(p).ok()) {
        let _ = d.sync_all();
    }
    Ok(())
}
