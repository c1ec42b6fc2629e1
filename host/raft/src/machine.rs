//! The state machine: the [`ClusterState`] every node applies in log order,
//! published on a `watch` channel after every applied batch, and its
//! snapshot (`snapshot` in the log's directory: one framed record holding
//! the snapshot's metadata and the postcard of the state, replaced
//! atomically). The state itself lives in memory; on open it is the last
//! snapshot, and openraft re-applies the committed entries after it.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::TypeConfig;
use crate::fsio;
use crate::state::{ClusterState, Outcome};

const SNAPSHOT_FILE: &str = "snapshot";

type SErr = StorageError<u64>;

/// The snapshot as stored.
#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    /// postcard of the [`ClusterState`].
    data: Vec<u8>,
}

struct Inner {
    dir: PathBuf,
    state: ClusterState,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    snapshot: Option<StoredSnapshot>,
    /// Distinguishes snapshots built at the same log id.
    built: u64,
    tx: watch::Sender<Arc<ClusterState>>,
}

/// The state machine handle (clones share the state); also its snapshot
/// builder.
#[derive(Clone)]
pub(crate) struct StateMachine {
    inner: Arc<Mutex<Inner>>,
}

impl StateMachine {
    /// Opens the state machine of `dir` from its snapshot, if any.
    pub(crate) fn open(dir: &Path) -> io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let snapshot = fsio::read_value::<StoredSnapshot>(dir, SNAPSHOT_FILE)?;
        let (state, last_applied, membership) = match &snapshot {
            None => (ClusterState::default(), None, StoredMembership::default()),
            Some(s) => {
                let state: ClusterState = postcard::from_bytes(&s.data).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot: {e}"))
                })?;
                (state, s.meta.last_log_id, s.meta.last_membership.clone())
            }
        };
        let (tx, _) = watch::channel(Arc::new(state.clone()));
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                state,
                last_applied,
                membership,
                snapshot,
                built: 0,
                tx,
            })),
        })
    }

    /// A receiver of the applied state.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.lock().tx.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let mut inner = self.lock();
        let data = postcard::to_allocvec(&inner.state)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        inner.built += 1;
        let snapshot_id = match inner.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, inner.built),
            None => format!("none-{}", inner.built),
        };
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot { meta, data };
        fsio::write_value(&inner.dir, SNAPSHOT_FILE, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(stored.meta.signature()), &e))?;
        let snapshot = Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        };
        inner.snapshot = Some(stored);
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), SErr> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            inner.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {
                    inner.state.last_applied = index;
                    out.push(Outcome {
                        index,
                        ..Outcome::default()
                    });
                }
                EntryPayload::Normal(cmd) => {
                    let o = inner.state.apply(index, &cmd);
                    out.push(o);
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    inner.state.last_applied = index;
                    out.push(Outcome {
                        index,
                        ..Outcome::default()
                    });
                }
            }
        }
        let published = Arc::new(inner.state.clone());
        inner.tx.send_replace(published);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let mut state: ClusterState = postcard::from_bytes(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        state.last_applied = meta.last_log_id.map_or(0, |l| l.index);
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let mut inner = self.lock();
        fsio::write_value(&inner.dir, SNAPSHOT_FILE, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.snapshot = Some(stored);
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.state = state;
        let published = Arc::new(inner.state.clone());
        inner.tx.send_replace(published);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
