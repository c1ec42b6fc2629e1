//! A simulated disk for crash tests (redb's idea): it keeps the durable
//! image of one file apart from the writes not yet synced, and a crash
//! keeps only the former (or, torn, a random subset of the unsynced 4 KiB
//! pages besides, since they reach a disk in any order).
//!
//! Owns no real file. It counts the operations that change the file; a
//! crash armed after the k-th one freezes the image just before the next
//! one, which fails, as does every later change (reads still answer).

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, SeedableRng};

/// Size of the pages that reach the disk independently.
pub const PAGE: u64 = 4096;

/// A simulated disk holding one file; clones share it.
#[derive(Clone, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<State>>,
}

/// How a crash treats the writes that were not yet durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// Every unsynced byte is lost.
    Clean,
    /// Each unsynced page (and each page of the write under way) reaches
    /// the disk or not, chosen by a RNG seeded with this value.
    Torn(u64),
}

#[derive(Default)]
struct State {
    /// What the process sees (the page cache).
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Pages of `current` that differ from `durable` (or may).
    dirty: BTreeSet<u64>,
    /// Operations that changed the file so far.
    mutations: u64,
    /// Crash just before the mutation with this count (0: before the first).
    armed: Option<(u64, Crash)>,
    /// The image that survived the crash, once crashed.
    crashed: Option<Vec<u8>>,
    /// Test knob: syncs and durable writes return before they are durable
    /// (they take effect only when the next mutation starts).
    ack_before_sync: bool,
    /// A sync that returned but has not taken effect (`ack_before_sync`).
    sync_pending: bool,
    /// Durable writes that were not whole aligned pages (`O_DIRECT` would
    /// refuse them).
    misaligned: u64,
}

fn crashed_error() -> io::Error {
    io::Error::other("simulated crash: the disk is gone")
}

impl State {
    /// Marks the pages of `[off, off + len)` dirty.
    fn touch(&mut self, off: u64, len: usize) {
        if len == 0 {
            return;
        }
        let last = (off + len as u64 - 1) / PAGE;
        self.dirty.extend(off / PAGE..=last);
    }

    fn write_current(&mut self, buf: &[u8], off: u64) {
        let (off, end) = (off as usize, off as usize + buf.len());
        if self.current.len() < off {
            self.current.resize(off, 0);
        }
        // Overwrite what exists, append the rest (a copy, not a fill).
        let within = end.min(self.current.len()) - off;
        self.current[off..off + within].copy_from_slice(&buf[..within]);
        self.current.extend_from_slice(&buf[within..]);
        self.touch(off as u64, buf.len());
    }

    /// Copies one page of `current` into `durable`.
    fn persist_page(&mut self, page: u64) {
        let start = (page * PAGE) as usize;
        if start >= self.current.len() {
            return;
        }
        let end = (start + PAGE as usize).min(self.current.len());
        if self.durable.len() < start {
            // Pages between are not durable: they read as zeros.
            self.durable.resize(start, 0);
        }
        let within = end.min(self.durable.len());
        if within > start {
            self.durable[start..within].copy_from_slice(&self.current[start..within]);
        }
        let from = within.max(start);
        self.durable.extend_from_slice(&self.current[from..end]);
    }

    /// Everything written becomes durable, and so does the length.
    fn sync_now(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        self.durable.truncate(self.current.len());
        for page in dirty {
            self.persist_page(page);
        }
        // Bytes past the durable end are always in dirty pages; this only
        // guards the length.
        self.durable.resize(self.current.len(), 0);
        self.sync_pending = false;
    }

    /// Starts a mutation: `Err` once crashed (or crashing now, with `in_flight`
    /// the write that was under way, if any).
    fn begin(&mut self, in_flight: Option<(&[u8], u64)>) -> io::Result<()> {
        if self.crashed.is_some() {
            return Err(crashed_error());
        }
        if let Some((at, how)) = self.armed
            && self.mutations >= at
        {
            if let (Some((buf, off)), Crash::Torn(_)) = (in_flight, how) {
                // A write under way when power went: any of its pages may land.
                self.write_current(buf, off);
            }
            self.crash(how);
            return Err(crashed_error());
        }
        if self.sync_pending {
            self.sync_now();
        }
        self.mutations += 1;
        Ok(())
    }

    fn crash(&mut self, how: Crash) {
        if self.crashed.is_some() {
            return;
        }
        let mut image = std::mem::take(&mut self.durable);
        if let Crash::Torn(seed) = how {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            self.durable = image;
            let dirty: Vec<u64> = self.dirty.iter().copied().collect();
            for page in dirty {
                if rng.next_u64() & 1 == 1 {
                    self.persist_page(page);
                }
            }
            image = std::mem::take(&mut self.durable);
        }
        self.crashed = Some(image);
    }
}

impl SimDisk {
    /// An empty disk (the file does not exist yet: length 0).
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A disk whose file holds `image`, all of it durable (a reboot).
    pub fn with_image(image: Vec<u8>) -> SimDisk {
        let disk = SimDisk::new();
        {
            let mut s = disk.lock();
            s.current = image.clone();
            s.durable = image;
        }
        disk
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms a crash after `mutations` operations that change the file
    /// (counted from the disk's creation): the next one fails and the image
    /// is frozen as `how` says.
    pub fn crash_after(&self, mutations: u64, how: Crash) {
        self.lock().armed = Some((mutations, how));
    }

    /// Crashes now (if not crashed already) and returns the surviving image.
    pub fn crash(&self, how: Crash) -> Vec<u8> {
        let mut s = self.lock();
        s.crash(how);
        s.crashed.clone().unwrap_or_default()
    }

    /// The image that survived the crash, once crashed.
    pub fn crash_image(&self) -> Option<Vec<u8>> {
        self.lock().crashed.clone()
    }

    /// Operations that changed the file so far (writes, durable writes,
    /// syncs, length changes).
    pub fn mutations(&self) -> u64 {
        self.lock().mutations
    }

    /// Durable writes that were not whole aligned pages (a real `O_DIRECT`
    /// write would have been refused): a correct log makes none.
    pub fn misaligned_writes(&self) -> u64 {
        self.lock().misaligned
    }

    /// The file as the process sees it.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().current.clone()
    }

    /// Test knob that breaks durability on purpose: syncs and durable writes
    /// return before their data is durable (it becomes durable when the next
    /// change starts), so a crash right after one loses acknowledged data.
    /// For proving that a crash checker can fail.
    pub fn set_ack_before_sync(&self, on: bool) {
        self.lock().ack_before_sync = on;
    }

    pub(crate) fn len(&self) -> u64 {
        self.lock().current.len() as u64
    }

    pub(crate) fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let s = self.lock();
        let end = off
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= s.current.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(&s.current[off as usize..end as usize]);
        Ok(())
    }

    pub(crate) fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(Some((buf, off)))?;
        s.write_current(buf, off);
        Ok(())
    }

    pub(crate) fn write_durable_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(Some((buf, off)))?;
        if !off.is_multiple_of(PAGE) || !(buf.len() as u64).is_multiple_of(PAGE) {
            s.misaligned += 1;
        }
        s.write_current(buf, off);
        if s.ack_before_sync {
            s.sync_pending = true;
            return Ok(());
        }
        // O_DSYNC: these pages and the length they need are durable; other
        // unsynced pages stay unsynced.
        let end = (off + buf.len() as u64).div_ceil(PAGE);
        for page in off / PAGE..end {
            s.persist_page(page);
            if (page + 1) * PAGE <= off + buf.len() as u64 && page * PAGE >= off {
                s.dirty.remove(&page);
            }
        }
        Ok(())
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(None)?;
        let old = s.current.len() as u64;
        s.current.resize(len as usize, 0);
        if len < old {
            let _ = s.dirty.split_off(&len.div_ceil(PAGE));
            if !len.is_multiple_of(PAGE) {
                s.dirty.insert(len / PAGE);
            }
        } else {
            s.touch(old, (len - old) as usize);
        }
        Ok(())
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(None)?;
        if s.ack_before_sync {
            s.sync_pending = true;
        } else {
            s.sync_now();
        }
        Ok(())
    }
}
