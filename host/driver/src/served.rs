//! This node's durable record of the newest epoch it began serving each
//! shard under (`cluster/served`, one `shard epoch` line each). An owner
//! serves a shard as soon as it holds its history and reports it ready only
//! once its replica set holds it too; a node restarted in between must know
//! that its own journal is the truth for that shard (it acknowledged writes
//! the previous owner never saw), which is what
//! `cairn_cluster::arrival::source` reads this record for.
//!
//! A record is written before the shard is served: a temporary file,
//! fsynced, renamed over the old one, and the directory fsynced. Concurrent
//! records share one write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The record, in memory and on disk.
pub(crate) struct Served {
    path: PathBuf,
    /// Shard → epoch, and how many changes were made to it.
    map: Mutex<(BTreeMap<u32, u64>, u64)>,
    /// The change count on disk (writers queue here).
    written: tokio::sync::Mutex<u64>,
}

const FILE: &str = "served";

impl Served {
    /// Reads the record in `dir` (none yet: empty).
    pub(crate) fn open(dir: &Path) -> std::io::Result<Served> {
        let path = dir.join(FILE);
        let mut map = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let mut parts = line.split_whitespace().map(str::parse::<u64>);
                    match (parts.next(), parts.next()) {
                        (Some(Ok(shard)), Some(Ok(epoch))) if shard <= u64::from(u32::MAX) => {
                            map.insert(shard as u32, epoch);
                        }
                        _ => {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                format!("{}: not a `shard epoch` line: {line:?}", path.display()),
                            ));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Served {
            path,
            map: Mutex::new((map, 0)),
            written: tokio::sync::Mutex::new(0),
        })
    }

    /// The newest epoch this node began serving `shard` under.
    pub(crate) fn get(&self, shard: u32) -> Option<u64> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(&shard)
            .copied()
    }

    /// Records that this node serves `shard` under `epoch`; returns once
    /// that is on disk.
    pub(crate) async fn record(&self, shard: u32, epoch: u64) -> std::io::Result<()> {
        let mine = {
            let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if m.0.get(&shard).is_some_and(|e| *e >= epoch) {
                return Ok(());
            }
            m.0.insert(shard, epoch);
            m.1 += 1;
            m.1
        };
        let mut written = self.written.lock().await;
        if *written >= mine {
            // A write that started after this change carried it.
            return Ok(());
        }
        let (text, count) = {
            let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let text: String = m.0.iter().map(|(s, e)| format!("{s} {e}\n")).collect();
            (text, m.1)
        };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_synced(&path, &text))
            .await
            .map_err(std::io::Error::other)??;
        *written = count;
        Ok(())
    }
}

fn write_synced(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_record_survives_a_reopen_and_only_grows() {
        let dir = tempfile::tempdir().unwrap();
        let s = Served::open(dir.path()).unwrap();
        assert_eq!(s.get(7), None);
        s.record(7, 12).await.unwrap();
        s.record(3, 4).await.unwrap();
        s.record(7, 9).await.unwrap();
        let s = Served::open(dir.path()).unwrap();
        assert_eq!((s.get(7), s.get(3)), (Some(12), Some(4)));
        std::fs::write(dir.path().join(FILE), "7 x\n").unwrap();
        assert!(Served::open(dir.path()).is_err());
    }
}
