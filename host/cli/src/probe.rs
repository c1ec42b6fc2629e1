//! The disk probes of `cairn bench --probe-disk` (benchmark only, off by
//! default): an append + `fdatasync`, and the log journal's durable write
//! (a preallocated 4 KiB block with `O_DIRECT | O_DSYNC` where the file
//! system takes it), timed next to a sequential client so its latency can
//! be read against the disk's. Writes probe files in a directory and
//! removes them when dropped; nothing else in `cairn` uses this.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The disk probes a sequential command is compared with. They run in short
/// blocks between blocks of sequential commands, so that both meet the disk
/// at the same moments (a disk's sync latency drifts over time).
pub struct DiskProbes {
    /// Appended to and `fdatasync`ed: 64 bytes per round.
    append: std::fs::File,
    append_path: PathBuf,
    /// The log journal's own durable write.
    /// The log journal's write.
    pub log: LogProbe,
    /// Latency of each append + `fdatasync`.
    pub append_lat: Vec<Duration>,
    /// Latency of each log-journal write.
    pub log_lat: Vec<Duration>,
}

/// The log journal's durable write: a 4 KiB block overwritten in space
/// already in the file (the log zero-fills ahead), with `O_DIRECT | O_DSYNC`
/// where the file system takes it, else `pwrite` + `fdatasync`. Cheaper than
/// an append that grows the file.
pub struct LogProbe {
    file: std::fs::File,
    path: PathBuf,
    direct: bool,
    /// Holds one block aligned for `O_DIRECT` at `start`.
    buf: Vec<u8>,
    start: usize,
    next: u64,
    blocks: u64,
}

const PROBE_BLOCK: usize = 4096;

impl DiskProbes {
    /// Creates the probe files in `dir`, with room for `rounds` rounds.
    pub fn open(dir: &Path, rounds: usize) -> Result<DiskProbes> {
        let tag = std::process::id();
        let append_path = dir.join(format!(".cairn-fsync-probe-{tag}"));
        let append = std::fs::File::create(&append_path)
            .with_context(|| format!("cannot create {}", append_path.display()))?;
        let log = LogProbe::open(&dir.join(format!(".cairn-logsync-probe-{tag}")), rounds)?;
        Ok(DiskProbes {
            append,
            append_path,
            log,
            append_lat: Vec::with_capacity(rounds),
            log_lat: Vec::with_capacity(rounds),
        })
    }

    /// One append + `fdatasync`, then one log-journal write.
    pub fn round(&mut self) -> Result<()> {
        use std::io::Write;
        let t = Instant::now();
        self.append.write_all(&[0u8; 64])?;
        self.append.sync_data()?;
        self.append_lat.push(t.elapsed());
        let t = Instant::now();
        self.log.write()?;
        self.log_lat.push(t.elapsed());
        Ok(())
    }
}

impl Drop for DiskProbes {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.append_path);
        let _ = std::fs::remove_file(&self.log.path);
    }
}

impl LogProbe {
    fn open(path: &Path, rounds: usize) -> Result<LogProbe> {
        use std::os::unix::fs::FileExt;
        let blocks = rounds as u64 + 1;
        let f = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all_at(&vec![0u8; PROBE_BLOCK * blocks as usize], 0)?;
        f.sync_all()?;
        drop(f);
        let buf = vec![0xA5u8; 2 * PROBE_BLOCK];
        let start = buf.as_ptr().align_offset(PROBE_BLOCK);
        let mut probe = LogProbe {
            file: std::fs::OpenOptions::new().write(true).open(path)?,
            path: path.to_owned(),
            direct: false,
            buf,
            start,
            next: 0,
            blocks,
        };
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            if let Ok(f) = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                .open(path)
                && f.write_all_at(&probe.buf[start..start + PROBE_BLOCK], 0)
                    .is_ok()
            {
                probe.file = f;
                probe.direct = true;
                probe.next = 1;
            }
        }
        Ok(probe)
    }

    /// How the write is done, for the report.
    pub fn how(&self) -> &'static str {
        if self.direct {
            "4 KiB O_DIRECT|O_DSYNC overwrite"
        } else {
            "4 KiB overwrite + fdatasync"
        }
    }

    fn write(&mut self) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let at = (self.next % self.blocks) * PROBE_BLOCK as u64;
        self.next += 1;
        let block = &mut self.buf[self.start..self.start + PROBE_BLOCK];
        block[0] = self.next as u8;
        self.file.write_all_at(block, at)?;
        if !self.direct {
            self.file.sync_data()?;
        }
        Ok(())
    }
}
