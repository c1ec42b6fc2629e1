//! The file layer under the event log: exactly the operations [`LogStore`]
//! performs on `events.log`, on the operating system's file or (with the
//! `testkit` feature) on a simulated disk that keeps only synced bytes.
//!
//! Dispatch is static (an enum matched per call, with one arm unless
//! `testkit` is on): the real path keeps its system calls and allocations.
//! This module never interprets the bytes it moves.
//!
//! [`LogStore`]: crate::LogStore

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[cfg(feature = "testkit")]
use crate::testkit::SimDisk;

/// The log's file: readers share it, the writer appends through it.
pub(crate) enum LogFile {
    /// A file of the operating system.
    Os(File),
    /// A simulated disk (crash tests).
    #[cfg(feature = "testkit")]
    Sim(SimDisk),
}

/// The writer's handle for durable writes (`O_DIRECT | O_DSYNC`): a write is
/// on disk when it returns.
pub(crate) enum DirectFile {
    /// A second handle of the same file, opened with `O_DIRECT | O_DSYNC`.
    Os(File),
    /// The simulated disk.
    #[cfg(feature = "testkit")]
    Sim(SimDisk),
}

impl LogFile {
    /// Current length of the file.
    #[inline]
    pub(crate) fn len(&self) -> io::Result<u64> {
        match self {
            LogFile::Os(f) => Ok(f.metadata()?.len()),
            #[cfg(feature = "testkit")]
            LogFile::Sim(d) => Ok(d.len()),
        }
    }

    /// Reads exactly `buf.len()` bytes at `off`.
    #[inline]
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        match self {
            LogFile::Os(f) => f.read_exact_at(buf, off),
            #[cfg(feature = "testkit")]
            LogFile::Sim(d) => d.read_exact_at(buf, off),
        }
    }

    /// Writes all of `buf` at `off` through the page cache (not durable
    /// until [`LogFile::sync_data`]).
    #[inline]
    pub(crate) fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        match self {
            LogFile::Os(f) => f.write_all_at(buf, off),
            #[cfg(feature = "testkit")]
            LogFile::Sim(d) => d.write_at(buf, off),
        }
    }

    /// Truncates or extends (with zeros) the file to `len`.
    #[inline]
    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        match self {
            LogFile::Os(f) => f.set_len(len),
            #[cfg(feature = "testkit")]
            LogFile::Sim(d) => d.set_len(len),
        }
    }

    /// `fdatasync`: every write so far, and the length, become durable.
    #[inline]
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        match self {
            LogFile::Os(f) => f.sync_data(),
            #[cfg(feature = "testkit")]
            LogFile::Sim(d) => d.sync(),
        }
    }

    /// `fsync` of the file, then of its directory (so that a new file's
    /// name is durable too; a directory that cannot be synced is skipped).
    pub(crate) fn sync_all(&self, path: &Path) -> io::Result<()> {
        match self {
            LogFile::Os(f) => {
                f.sync_all()?;
                if let Some(parent) = path.parent()
                    && let Ok(d) = File::open(parent)
                {
                    let _ = d.sync_all();
                }
                Ok(())
            }
            #[cfg(feature = "testkit")]
            LogFile::Sim(d) => d.sync(),
        }
    }

    /// The handle for durable writes, or `None` where the system has none
    /// (then the writer uses `fdatasync`).
    pub(crate) fn open_direct(&self, path: &Path) -> Option<DirectFile> {
        match self {
            LogFile::Os(_) => {
                #[cfg(target_os = "linux")]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                        .open(path)
                        .ok()
                        .map(DirectFile::Os)
                }
                #[cfg(not(target_os = "linux"))]
                {
                    let _ = path;
                    None
                }
            }
            #[cfg(feature = "testkit")]
            LogFile::Sim(d) => {
                let _ = path;
                Some(DirectFile::Sim(d.clone()))
            }
        }
    }
}

impl DirectFile {
    /// Writes all of `buf` (whole 4 KiB blocks, from an aligned buffer) at
    /// `off`, durably.
    #[inline]
    pub(crate) fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        match self {
            DirectFile::Os(f) => f.write_all_at(buf, off),
            #[cfg(feature = "testkit")]
            DirectFile::Sim(d) => d.write_durable_at(buf, off),
        }
    }
}

/// Sequential reads of a [`LogFile`] from a position (for a `BufReader`).
pub(crate) struct Cursor<'a> {
    pub(crate) file: &'a LogFile,
    pub(crate) pos: u64,
    pub(crate) len: u64,
}

impl io::Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.file.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
