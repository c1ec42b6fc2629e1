//! The durable raft log, the vote and the committed index, in the log's
//! directory:
//!
//! - `log`: an append-only file of framed records (`len | crc32 |
//!   postcard`), each a log entry or, first in the file, the id of the last
//!   purged entry. Every append is fsynced before openraft is told it is
//!   flushed. On open the file is read up to the first torn, corrupt or
//!   out-of-sequence record and truncated there. `truncate(since)` cuts the
//!   file at the record of `since`; `purge(upto)` rewrites it (temp file +
//!   rename) without the purged entries.
//! - `vote`, `committed`: one framed record each, replaced atomically.
//!
//! Entries are also kept in memory (the log is bounded by the snapshot
//! policy), so reads never touch the disk.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::{Deserialize, Serialize};

use crate::TypeConfig;
use crate::fsio;

/// Name of the log file in the directory.
pub(crate) const LOG_FILE: &str = "log";
const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";

type SErr = StorageError<u64>;

/// One record of the log file.
#[derive(Deserialize)]
enum Record {
    /// An entry.
    Entry(Entry<TypeConfig>),
    /// Entries up to this id are purged (only first in the file).
    Purged(LogId<u64>),
}

/// [`Record`] as written (borrowing the entry; same encoding).
#[derive(Serialize)]
enum RecordRef<'a> {
    Entry(&'a Entry<TypeConfig>),
    Purged(LogId<u64>),
}

fn encode(rec: &RecordRef<'_>) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(rec).map_err(io_err)
}

struct Inner {
    dir: PathBuf,
    file: File,
    /// Bytes of valid records in `file`.
    len: u64,
    /// index → (entry, offset of its record in the file).
    entries: BTreeMap<u64, (Entry<TypeConfig>, u64)>,
    last_purged: Option<LogId<u64>>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
}

/// The log store: a cheap handle (clones share the same log), also the log
/// reader handed to replication.
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

/// What [`LogStore::open`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenReport {
    /// Bytes cut from the end of the log file (a torn or corrupt tail).
    pub(crate) cut: u64,
    /// Entries read.
    pub(crate) entries: usize,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, cutting a torn tail.
    pub(crate) fn open(dir: &Path) -> io::Result<(LogStore, OpenReport)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut entries = BTreeMap::new();
        let mut last_purged: Option<LogId<u64>> = None;
        let mut pos = 0usize;
        while pos < bytes.len() {
            let Some((payload, used)) = fsio::unframe(&bytes[pos..]) else {
                break;
            };
            let Ok(record) = postcard::from_bytes::<Record>(payload) else {
                break;
            };
            let in_sequence = match &record {
                Record::Purged(_) => pos == 0,
                Record::Entry(e) => match entries.last_key_value() {
                    Some((last, _)) => e.log_id.index == last + 1,
                    None => last_purged.is_none_or(|p| e.log_id.index > p.index),
                },
            };
            if !in_sequence {
                break;
            }
            match record {
                Record::Purged(p) => last_purged = Some(p),
                Record::Entry(e) => {
                    entries.insert(e.log_id.index, (e, pos as u64));
                }
            }
            pos += used;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        let cut = (bytes.len() - pos) as u64;
        if cut > 0 {
            tracing::warn!(
                path = %path.display(),
                cut,
                "cutting a torn or corrupt tail off the raft log"
            );
            file.set_len(pos as u64)?;
            file.sync_all()?;
        } else if bytes.is_empty() {
            fsio::sync_dir(dir)?;
        }
        let vote = fsio::read_value::<Vote<u64>>(dir, VOTE_FILE)?;
        let mut committed = fsio::read_value::<LogId<u64>>(dir, COMMITTED_FILE)?;
        // The committed index can never be above the last entry we hold
        // (it can be only if the log was cut): clamp it.
        let last = entries
            .last_key_value()
            .map(|(_, (e, _))| e.log_id)
            .or(last_purged);
        if committed.is_some_and(|c| last.is_none_or(|l| c.index > l.index)) {
            committed = last;
        }
        let report = OpenReport {
            cut,
            entries: entries.len(),
        };
        let inner = Inner {
            dir: dir.to_path_buf(),
            file,
            len: pos as u64,
            entries,
            last_purged,
            vote,
            committed,
        };
        Ok((
            LogStore {
                inner: Arc::new(Mutex::new(inner)),
            },
            report,
        ))
    }

    /// Appends directly (openraft's flush callback cannot be built outside
    /// openraft).
    #[cfg(test)]
    pub(crate) fn append_for_test(&self, entries: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        self.lock().append(entries)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the in-memory view as it was
        // before the failed write; carry on with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn last_log_id(&self) -> Option<LogId<u64>> {
        self.entries
            .last_key_value()
            .map(|(_, (e, _))| e.log_id)
            .or(self.last_purged)
    }

    /// Cuts every entry from `since` on (inclusive).
    fn truncate(&mut self, since: u64) -> io::Result<()> {
        let Some((_, (_, offset))) = self.entries.range(since..).next() else {
            return Ok(());
        };
        let offset = *offset;
        self.file.set_len(offset)?;
        self.file.sync_data()?;
        self.len = offset;
        self.entries.split_off(&since);
        Ok(())
    }

    /// Drops every entry up to `upto` (inclusive) by rewriting the file.
    fn purge(&mut self, upto: LogId<u64>) -> io::Result<()> {
        if self.last_purged.is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        let keep = self.entries.split_off(&(upto.index + 1));
        let mut buf = Vec::new();
        fsio::frame_into(&mut buf, &encode(&RecordRef::Purged(upto))?);
        let mut rewritten = BTreeMap::new();
        for (index, (entry, _)) in keep {
            let offset = buf.len() as u64;
            fsio::frame_into(&mut buf, &encode(&RecordRef::Entry(&entry))?);
            rewritten.insert(index, (entry, offset));
        }
        fsio::write_atomic(&self.dir, LOG_FILE, &buf)?;
        self.file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(self.dir.join(LOG_FILE))?;
        self.len = buf.len() as u64;
        self.entries = rewritten;
        self.last_purged = Some(upto);
        Ok(())
    }

    fn append(&mut self, entries: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        // openraft truncates before it overwrites; be safe if it did not.
        if self
            .entries
            .last_key_value()
            .is_some_and(|(last, _)| first.log_id.index <= *last)
        {
            self.truncate(first.log_id.index)?;
        }
        let mut buf = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for e in &entries {
            offsets.push(self.len + buf.len() as u64);
            fsio::frame_into(&mut buf, &encode(&RecordRef::Entry(e))?);
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Do not leave a half record behind the valid ones.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += buf.len() as u64;
        for (e, offset) in entries.into_iter().zip(offsets) {
            self.entries.insert(e.log_id.index, (e, offset));
        }
        Ok(())
    }
}

fn range_of<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let inner = self.lock();
        Ok(inner
            .entries
            .range(range_of(&range))
            .map(|(_, (e, _))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        let mut inner = self.lock();
        fsio::write_value(&inner.dir, VOTE_FILE, vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        let mut inner = self.lock();
        if inner.committed == committed {
            return Ok(());
        }
        if let Some(c) = committed {
            fsio::write_value(&inner.dir, COMMITTED_FILE, &c)
                .map_err(|e| StorageIOError::write(&e))?;
        }
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let res = self.lock().append(entries);
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(e));
                Err(err.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        self.lock()
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        self.lock()
            .purge(log_id)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
