//! openraft's storage conformance suite against the durable log store and
//! state machine, each run on a fresh directory under the temp dir.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

use crate::TypeConfig;
use crate::machine::StateMachine;
use crate::store::LogStore;

/// Removes its directory when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Builder {
    root: PathBuf,
    n: AtomicU64,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = self
            .root
            .join(self.n.fetch_add(1, Ordering::Relaxed).to_string());
        let io = |e: std::io::Error| StorageError::from(openraft::StorageIOError::write(&e));
        let (log, _) = LogStore::open(&dir).map_err(io)?;
        let sm = StateMachine::open(&dir).map_err(io)?;
        Ok((TempDir(dir), log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    let root = std::env::temp_dir().join(format!("cairn-raft-suite-{}", std::process::id()));
    let _cleanup = TempDir(root.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let builder = Builder {
        root,
        n: AtomicU64::new(0),
    };
    std::thread::spawn(move || {
        let res = Suite::test_all(builder).map_err(|e| e.to_string());
        let _ = tx.send(res);
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("storage suite failed: {e}"),
        Err(e) => panic!("storage suite did not finish (panicked or hung): {e}"),
    }
}

/// Reopening the store finds what was written, and a torn tail is cut.
#[test]
fn reopen_keeps_the_log_and_cuts_a_torn_tail() {
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftLogStorage;
    use openraft::{CommittedLeaderId, LogId, RaftLogReader, Vote};

    let dir = std::env::temp_dir().join(format!("cairn-raft-reopen-{}", std::process::id()));
    let _cleanup = TempDir(dir.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lid = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
    rt.block_on(async {
        let (mut log, _) = LogStore::open(&dir).unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        // Append through the inner API (the callback type is openraft's).
        log.append_for_test(
            (1..=5)
                .map(|i| openraft::Entry::<TypeConfig>::new_blank(lid(i)))
                .collect(),
        )
        .unwrap();
        log.purge(lid(2)).await.unwrap();
        log.truncate(lid(5)).await.unwrap();
        log.save_committed(Some(lid(4))).await.unwrap();
    });
    drop(rt);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut log, report) = LogStore::open(&dir).unwrap();
        assert_eq!(report.cut, 0);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(lid(2)));
        assert_eq!(st.last_log_id, Some(lid(4)));
        let got = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(log.read_committed().await.unwrap(), Some(lid(4)));
    });
    // Tear the last record: it is cut, the committed index clamped.
    let path = dir.join(crate::store::LOG_FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    rt.block_on(async {
        let (mut log, report) = LogStore::open(&dir).unwrap();
        assert!(report.cut > 0);
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(lid(3)));
        assert_eq!(log.read_committed().await.unwrap(), Some(lid(3)));
    });
    // Garbage after valid records is cut too.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[7u8; 37]).unwrap();
    }
    rt.block_on(async {
        let (mut log, report) = LogStore::open(&dir).unwrap();
        assert_eq!(report.cut, 37);
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(lid(3)));
    });
}
