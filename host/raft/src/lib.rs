//! Cairn's decision log: a replicated log agreed by a majority of voters
//! (Raft, the `openraft` crate, 0.9), whose state machine is the cluster's
//! committed state: the shard table of `cairn-cluster`, member records,
//! deploy records and where each deploy is active.
//!
//! Layout:
//! - [`state`]: the [`Command`]s committed through the log and the
//!   [`ClusterState`] they build (pure, deterministic application).
//! - `store`: the durable log, vote and committed index (an append-only,
//!   checksummed file; fsync before a write is reported done).
//! - `machine`: the state machine and its durable snapshot.
//! - `wire`: the rpc frames carried by a [`RaftTransport`].
//! - `fsio`: framed records and atomic file replacement.
//!
//! A node opens its log with [`DecisionLog::open`] on `<data_dir>/raft`, the
//! first node of a cluster calls [`DecisionLog::bootstrap`], and the leader
//! adds the others with [`DecisionLog::add_member`]. Every node watches the
//! applied state with [`DecisionLog::state`]; only the leader proposes
//! ([`DecisionLog::propose`]); forwarding to the leader is the caller's job
//! ([`RaftError::NotLeader`] names it when known). Peers' rpcs arrive
//! through the caller's transport and are run by [`DecisionLog::handle`].

#[cfg(test)]
mod conformance;
mod fsio;
mod machine;
pub mod state;
mod store;
mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, Fatal, RaftError as OrError};
use openraft::{BasicNode, ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tokio::time::Instant;

pub use cairn_cluster::{Decision, MemberState, NodeId, ShardTable};
pub use state::{ClusterState, Command, DeployEntry, MemberRecord, Outcome, ProposalRefused};

openraft::declare_raft_types!(
    /// openraft's type configuration of the decision log.
    pub(crate) TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// How long the membership operations ([`DecisionLog::bootstrap`],
/// [`DecisionLog::add_member`], [`DecisionLog::remove_member`]) wait for
/// each of their steps (an election, a learner catching up, a membership
/// change committing) before giving up with [`RaftError::NoQuorum`].
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A learner within this many entries of the leader's last entry counts as
/// caught up (may be promoted to voter).
const CATCH_UP_LAG: u64 = 16;

/// Timing and size of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Interval of the leader's heartbeats (default 100 ms).
    pub heartbeat: Duration,
    /// Lower bound of the randomized election timeout (default 500 ms).
    pub election_min: Duration,
    /// Upper bound of the randomized election timeout (default 1000 ms).
    pub election_max: Duration,
    /// Most voters the log keeps; further members are learners (default 3).
    pub max_voters: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(500),
            election_max: Duration::from_millis(1000),
            max_voters: 3,
        }
    }
}

/// Storage tuning of the log (rarely changed; the defaults suit the
/// cluster's metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Build a snapshot after this many entries since the last one
    /// (default 1000).
    pub snapshot_every: u64,
    /// Entries already in a snapshot kept in the log, so that a slightly
    /// lagging follower gets entries rather than a snapshot (default 1000).
    pub keep_after_snapshot: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            snapshot_every: 1000,
            keep_after_snapshot: 1000,
        }
    }
}

/// How the log reaches other nodes: one request/response call carrying
/// opaque bytes. The node implements it over QUIC; tests over memory.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `rpc` to node `target` at `addr` and returns its answer (the
    /// bytes [`DecisionLog::handle`] returned there).
    fn call(
        &self,
        target: u64,
        addr: &str,
        rpc: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send + 'static>>;
}

/// Why a transport call failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The target cannot be reached (no connection); openraft backs off.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Any other failure of the call.
    #[error("{0}")]
    Other(String),
}

/// Why an operation of the log failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftError {
    /// This node is not the leader; the leader as this node knows it.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's id and address, if known.
        leader: Option<(u64, String)>,
    },
    /// No majority answered in time (an election, a commit, a learner
    /// catching up). For a proposal the outcome is unknown: it may still
    /// commit later.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The durable state in the directory could not be read or written.
    #[error("storage: {0}")]
    Storage(String),
    /// An I/O error opening the log.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The directory is in use by another open log.
    #[error("the raft directory is locked by another open log: {0}")]
    Locked(String),
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A membership change was refused (e.g. removing the last voter).
    #[error("membership: {0}")]
    Membership(String),
    /// openraft failed (a fatal error: the log stops).
    #[error("raft: {0}")]
    Raft(String),
    /// The log was shut down.
    #[error("the decision log is shut down")]
    Stopped,
    /// A peer's message could not be decoded.
    #[error("bad message: {0}")]
    BadMessage(String),
}

struct Inner {
    id: u64,
    addr: String,
    raft: Raft<TypeConfig>,
    state: watch::Receiver<Arc<ClusterState>>,
    config: LogConfig,
    /// Serializes membership operations (openraft refuses a change while
    /// another is in progress).
    admin: tokio::sync::Mutex<()>,
    /// The directory lock, held until shutdown.
    lock: Mutex<Option<File>>,
    /// Set by [`DecisionLog::shutdown`]: the log stopping then is no failure.
    stopping: std::sync::atomic::AtomicBool,
}

/// The decision log of one node. Cheap to clone (the clones share it).
#[derive(Clone)]
pub struct DecisionLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("id", &self.inner.id)
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

fn fatal(e: Fatal<u64>) -> RaftError {
    match e {
        Fatal::Stopped => RaftError::Stopped,
        e => RaftError::Raft(e.to_string()),
    }
}

fn lock_dir(dir: &Path) -> Result<File, RaftError> {
    let path = dir.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(RaftError::Locked(path.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(RaftError::Io(e)),
    }
}

impl DecisionLog {
    /// Opens (or creates) the durable log in `dir` (e.g. `<data_dir>/raft`),
    /// as node `id` reachable at `addr`.
    pub async fn open(
        dir: &Path,
        id: u64,
        addr: String,
        transport: Arc<dyn RaftTransport>,
        config: LogConfig,
    ) -> Result<DecisionLog, RaftError> {
        Self::open_tuned(dir, id, addr, transport, config, Tuning::default()).await
    }

    /// [`DecisionLog::open`] with storage tuning.
    pub async fn open_tuned(
        dir: &Path,
        id: u64,
        addr: String,
        transport: Arc<dyn RaftTransport>,
        config: LogConfig,
        tuning: Tuning,
    ) -> Result<DecisionLog, RaftError> {
        if config.max_voters == 0 {
            return Err(RaftError::Config("max_voters must be at least 1".into()));
        }
        std::fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let (log, report) = store::LogStore::open(dir)?;
        if report.cut > 0 {
            tracing::warn!(cut = report.cut, "raft log: torn tail cut at open");
        }
        let sm = machine::StateMachine::open(dir)?;
        let state = sm.subscribe();
        let ms = |d: Duration| d.as_millis().max(1) as u64;
        let raft_config = Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: ms(config.heartbeat),
            election_timeout_min: ms(config.election_min),
            election_timeout_max: ms(config.election_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: tuning.keep_after_snapshot,
            ..Config::default()
        }
        .validate()
        .map_err(|e| RaftError::Config(e.to_string()))?;
        let network = wire::NetworkFactory { me: id, transport };
        let raft = Raft::new(id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(fatal)?;
        Ok(DecisionLog {
            inner: Arc::new(Inner {
                id,
                addr,
                raft,
                state,
                config,
                admin: tokio::sync::Mutex::new(()),
                lock: Mutex::new(Some(lock)),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// This node's address, as given to [`DecisionLog::open`].
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Makes this node the sole voter of a new cluster and commits
    /// `Command::Init{shards}` and `Command::Member{id, addr, Up}`.
    /// Idempotent: on a log that is already initialized it does nothing and
    /// returns Ok (or, on a single-voter log of this node whose bootstrap
    /// was interrupted, finishes it).
    pub async fn bootstrap(&self, shards: u32) -> Result<(), RaftError> {
        let _admin = self.inner.admin.lock().await;
        let raft = &self.inner.raft;
        let me = self.inner.id;
        if raft.is_initialized().await.map_err(fatal)? {
            let st = self.state_now();
            if st.table.is_some() && st.members.contains_key(&me) {
                return Ok(());
            }
            if self.voters() != [me] {
                return Ok(());
            }
        } else {
            let mut nodes = BTreeMap::new();
            nodes.insert(me, BasicNode::new(self.inner.addr.clone()));
            match raft.initialize(nodes).await {
                Ok(()) => {}
                // Initialized in the meantime (a leader reached us): done.
                Err(OrError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
                    return Ok(());
                }
                Err(e) => return Err(RaftError::Raft(e.to_string())),
            }
        }
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        self.wait_until(deadline, "this node to lead", |m| {
            m.state == ServerState::Leader && m.current_leader == Some(me)
        })
        .await?;
        // The state is caught up with everything committed before.
        tokio::time::timeout_at(deadline, raft.ensure_linearizable())
            .await
            .map_err(|_| RaftError::NoQuorum("bootstrap: no commit in time".into()))?
            .map_err(|e| self.map_err(e))?;
        let st = self.state_now();
        if st.table.is_none() {
            self.propose(Command::Init { shards }, ADMIN_TIMEOUT)
                .await?;
        }
        if !st.members.contains_key(&me) {
            self.propose(
                Command::Member {
                    node: me,
                    addr: self.inner.addr.clone(),
                    state: MemberState::Up,
                },
                ADMIN_TIMEOUT,
            )
            .await?;
        }
        Ok(())
    }

    /// On the leader: adds `node` at `addr`: as a learner, then as a voter
    /// while the voters are fewer than `max_voters` (blocking until the
    /// learner has caught up and the membership change commits, each step
    /// within [`ADMIN_TIMEOUT`]); idempotent (already a member → Ok; a
    /// learner is promoted if there is room; a new `addr` replaces the old
    /// one). Also commits `Command::Member{node, addr, Joining}` unless a
    /// record of the node exists (its state is kept, its address updated).
    /// `Err(NotLeader{leader})` elsewhere.
    pub async fn add_member(&self, node: u64, addr: String) -> Result<(), RaftError> {
        let _admin = self.inner.admin.lock().await;
        self.ensure_leader()?;
        let raft = &self.inner.raft;
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let known = self
            .membership()
            .membership()
            .get_node(&node)
            .map(|n| n.addr.clone());
        match known {
            None => {
                let fut = raft.add_learner(node, BasicNode::new(addr.clone()), false);
                self.admin_step(deadline, "add learner", fut).await?;
            }
            Some(old) if old != addr => {
                let mut nodes = BTreeMap::new();
                nodes.insert(node, BasicNode::new(addr.clone()));
                self.change_membership(deadline, ChangeMembers::SetNodes(nodes), true)
                    .await?;
            }
            Some(_) => {}
        }
        let record = self.state_now().members.get(&node).cloned();
        let cmd = match record {
            None => Some(MemberState::Joining),
            Some(r) if r.addr != addr => Some(r.state),
            Some(_) => None,
        };
        if let Some(state) = cmd {
            self.propose(
                Command::Member {
                    node,
                    addr: addr.clone(),
                    state,
                },
                ADMIN_TIMEOUT,
            )
            .await?;
        }
        let voters = self.voters();
        if !voters.contains(&node) && voters.len() < self.inner.config.max_voters {
            self.wait_caught_up(node, deadline).await?;
            let ids = BTreeSet::from([node]);
            self.change_membership(deadline, ChangeMembers::AddVoterIds(ids), true)
                .await?;
        }
        Ok(())
    }

    /// On the leader: removes `node` from the voters and learners; if a
    /// voter is removed and learners exist, the most caught-up learner is
    /// promoted to keep up to `max_voters`. Idempotent (not a member → Ok).
    /// The last voter cannot be removed. Member records are not touched
    /// (commit `Command::Member{.., Removed}` if that is meant). Removing
    /// the leader itself hands leadership to another voter once the change
    /// commits. `Err(NotLeader{leader})` elsewhere.
    pub async fn remove_member(&self, node: u64) -> Result<(), RaftError> {
        let _admin = self.inner.admin.lock().await;
        self.ensure_leader()?;
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let voters: BTreeSet<u64> = self.voters().into_iter().collect();
        if voters.contains(&node) {
            let mut next: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != node).collect();
            if next.is_empty() {
                return Err(RaftError::Membership(format!(
                    "cannot remove node {node}: it is the last voter"
                )));
            }
            if next.len() < self.inner.config.max_voters
                && let Some(l) = self.best_learner(node)
            {
                next.insert(l);
            }
            self.change_membership(deadline, ChangeMembers::ReplaceAllVoters(next), false)
                .await?;
        }
        if self.learners().contains(&node) {
            let ids = BTreeSet::from([node]);
            self.change_membership(deadline, ChangeMembers::RemoveNodes(ids), false)
                .await?;
        }
        Ok(())
    }

    /// On the leader: commits `cmd` and returns its log index once it is
    /// applied locally. `Err(NotLeader{leader})` elsewhere; `Err(NoQuorum)`
    /// if it cannot commit within `timeout` (the outcome is then unknown:
    /// the entry may still commit later, or be dropped by a new leader).
    pub async fn propose(&self, cmd: Command, timeout: Duration) -> Result<u64, RaftError> {
        Ok(self.propose_outcome(cmd, timeout).await?.index)
    }

    /// [`DecisionLog::propose`], returning what applying the entry did
    /// (e.g. which decisions were refused as stale).
    pub async fn propose_outcome(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<Outcome, RaftError> {
        match tokio::time::timeout(timeout, self.inner.raft.client_write(cmd)).await {
            Err(_) => Err(RaftError::NoQuorum(format!(
                "not committed within {timeout:?}"
            ))),
            Ok(Ok(resp)) => {
                let mut out = resp.data;
                out.index = resp.log_id.index;
                Ok(out)
            }
            Ok(Err(e)) => Err(self.map_err(e)),
        }
    }

    /// The applied state, updated after every applied batch of entries.
    pub fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.inner.state.clone()
    }

    /// The current leader as this node knows it (id, addr), if any (the
    /// address is empty if the leader is not in this node's membership yet).
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let addr = if id == self.inner.id {
            self.inner.addr.clone()
        } else {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        Some((id, addr))
    }

    /// Whether this node is the leader (as far as it knows).
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    /// Confirms that this node still leads a majority: it sends a round of
    /// heartbeats and waits for a quorum to answer (openraft's
    /// `ensure_linearizable`), bounded by `timeout`. A leader cut off from the
    /// majority keeps *believing* it leads (openraft does not step down
    /// by itself), so leases are granted only after this check.
    pub async fn confirm_leader(&self, timeout: Duration) -> Result<(), RaftError> {
        match tokio::time::timeout(timeout, self.inner.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RaftError::NoQuorum(e.to_string())),
            Err(_) => Err(RaftError::NoQuorum(format!(
                "no quorum answered within {timeout:?}"
            ))),
        }
    }

    /// Ids of the voters of the current membership config.
    pub fn voters(&self) -> Vec<u64> {
        self.membership().membership().voter_ids().collect()
    }

    /// Ids of the learners of the current membership config.
    pub fn learners(&self) -> Vec<u64> {
        self.membership().membership().learner_ids().collect()
    }

    /// Waits until some leader is known (to this node) and returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<(u64, String), RaftError> {
        self.wait_until(Instant::now() + timeout, "a leader", |m| {
            m.current_leader.is_some()
        })
        .await?;
        self.leader()
            .ok_or_else(|| RaftError::NoQuorum("the leader vanished".into()))
    }

    /// Server side of the transport: decodes an rpc made by another node's
    /// transport, runs it on this node's raft, returns the encoded answer.
    /// Garbage in → an encoded error answer, never a panic.
    pub async fn handle(&self, rpc: &[u8]) -> Vec<u8> {
        self.handle_rpc(rpc, None).await
    }

    /// [`DecisionLog::handle`] for an rpc from the node `sender` (the node
    /// id its certificate names): refused unless the rpc's sender, and the
    /// candidate or leader its vote names, is that node.
    pub async fn handle_from(&self, rpc: &[u8], sender: u64) -> Vec<u8> {
        self.handle_rpc(rpc, Some(sender)).await
    }

    async fn handle_rpc(&self, rpc: &[u8], sender: Option<u64>) -> Vec<u8> {
        use wire::{Reply, Rpc};
        let raft = &self.inner.raft;
        let claims = |env: &wire::Envelope| {
            let voted = match &env.rpc {
                Rpc::Append(r) => r.vote.leader_id().voted_for(),
                Rpc::Vote(r) => r.vote.leader_id().voted_for(),
                Rpc::Snapshot(r) => r.vote.leader_id().voted_for(),
            };
            std::iter::once(env.from).chain(voted).collect::<Vec<u64>>()
        };
        let reply = match wire::decode_request(rpc) {
            Err(e) => {
                tracing::debug!(error = %e, "raft: undecodable rpc");
                Reply::BadMessage(e)
            }
            Ok(env) if sender.is_some_and(|s| claims(&env).iter().any(|c| *c != s)) => {
                tracing::warn!(from = env.from, sender = ?sender, "raft: an rpc speaking for another node refused");
                Reply::BadMessage(format!(
                    "an rpc from node {} speaks for node(s) {:?}",
                    sender.unwrap_or_default(),
                    claims(&env)
                ))
            }
            Ok(env) if env.to != self.inner.id => {
                tracing::warn!(from = env.from, to = env.to, "raft: rpc for another node");
                Reply::WrongNode { me: self.inner.id }
            }
            Ok(env) => match env.rpc {
                Rpc::Append(r) => match raft.append_entries(r).await {
                    Ok(x) => Reply::Append(x),
                    Err(e) => Reply::Failed(e.to_string()),
                },
                Rpc::Vote(r) => match raft.vote(r).await {
                    Ok(x) => Reply::Vote(x),
                    Err(e) => Reply::Failed(e.to_string()),
                },
                Rpc::Snapshot(r) => match raft.install_snapshot(r).await {
                    Ok(x) => Reply::Snapshot(x),
                    Err(OrError::APIError(e)) => Reply::SnapshotRefused(e),
                    Err(OrError::Fatal(e)) => Reply::Failed(e.to_string()),
                },
            },
        };
        wire::encode_reply(&reply)
    }

    /// The error an answer of [`DecisionLog::handle`] carries, if it is an
    /// error answer (undecodable request, request for another node, a
    /// failed raft, a refused snapshot chunk) or is itself undecodable;
    /// `None` for a regular answer. For logging and tests.
    pub fn reply_error(answer: &[u8]) -> Option<String> {
        use wire::Reply;
        match wire::decode_reply(answer) {
            Err(e) => Some(format!("undecodable answer: {e}")),
            Ok(Reply::Append(_) | Reply::Vote(_) | Reply::Snapshot(_)) => None,
            Ok(Reply::SnapshotRefused(e)) => Some(format!("snapshot refused: {e}")),
            Ok(Reply::Failed(m)) => Some(format!("failed: {m}")),
            Ok(Reply::BadMessage(m)) => Some(format!("bad message: {m}")),
            Ok(Reply::WrongNode { me }) => Some(format!("wrong node: this is node {me}")),
        }
    }

    /// Whether the log has stopped for good on a fatal error (see
    /// [`DecisionLog::failed`]), with the reason.
    pub fn failure(&self) -> Option<String> {
        if let Err(e) = &self.inner.raft.metrics().borrow().running_state {
            return Some(e.to_string());
        }
        if self
            .inner
            .stopping
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return None;
        }
        // The state machine is dropped when openraft's core quits.
        if self.inner.state.has_changed().is_err() {
            return Some("the decision log's state machine stopped".into());
        }
        None
    }

    /// Whether the log has stopped for good on a fatal error.
    pub fn has_failed(&self) -> bool {
        self.failure().is_some()
    }

    /// Waits until the log has stopped for good on a fatal error (e.g. its
    /// storage failed a write: openraft's core quits), and says why. A
    /// node whose log stopped no longer learns decisions, so its view of
    /// the shard table goes stale; its owner should stop it.
    pub async fn failed(&self) -> String {
        loop {
            if let Some(why) = self.failure() {
                return why;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Stops the log (its raft task) and releases the directory.
    pub async fn shutdown(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let lock = self
            .inner
            .lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(lock);
    }

    // --- helpers

    fn state_now(&self) -> Arc<ClusterState> {
        self.inner.state.borrow().clone()
    }

    fn membership(&self) -> Arc<openraft::StoredMembership<u64, BasicNode>> {
        self.inner.raft.metrics().borrow().membership_config.clone()
    }

    fn ensure_leader(&self) -> Result<(), RaftError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(RaftError::NotLeader {
                leader: self.leader().filter(|(id, _)| *id != self.inner.id),
            })
        }
    }

    fn addr_of(&self, id: u64) -> Option<String> {
        self.membership()
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    fn map_err<E>(&self, e: OrError<u64, E>) -> RaftError
    where
        E: Into<ApiError>,
    {
        match e {
            OrError::Fatal(f) => fatal(f),
            OrError::APIError(e) => match e.into() {
                ApiError::Forward(id, node) => RaftError::NotLeader {
                    leader: id.map(|id| {
                        let addr = node.or_else(|| self.addr_of(id)).unwrap_or_default();
                        (id, addr)
                    }),
                },
                ApiError::Membership(m) => RaftError::Membership(m),
            },
        }
    }

    /// Waits (until `deadline`) for the metrics to satisfy `cond`; fails
    /// with `NoQuorum` on the deadline.
    async fn wait_until(
        &self,
        deadline: Instant,
        what: &str,
        cond: impl Fn(&openraft::RaftMetrics<u64, BasicNode>) -> bool,
    ) -> Result<(), RaftError> {
        let mut rx = self.inner.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if cond(&m) {
                    return Ok(());
                }
                if let Err(e) = &m.running_state {
                    return Err(fatal(e.clone()));
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => {
                    return Err(RaftError::NoQuorum(format!("timed out waiting for {what}")));
                }
                Ok(Err(_)) => return Err(RaftError::Stopped),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Waits until the leader has replicated to `node` up to (almost) its
    /// last entry.
    async fn wait_caught_up(&self, node: u64, deadline: Instant) -> Result<(), RaftError> {
        let me = self.inner.id;
        let mut rx = self.inner.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if m.state != ServerState::Leader || m.current_leader != Some(me) {
                    return Err(RaftError::NotLeader {
                        leader: self.leader().filter(|(id, _)| *id != me),
                    });
                }
                let last = m.last_log_index.unwrap_or(0);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&node).cloned())
                    .flatten()
                    .map(|l| l.index);
                if matched.is_some_and(|i| i + CATCH_UP_LAG >= last) {
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => {
                    return Err(RaftError::NoQuorum(format!(
                        "node {node} did not catch up within {ADMIN_TIMEOUT:?}"
                    )));
                }
                Ok(Err(_)) => return Err(RaftError::Stopped),
                Ok(Ok(())) => {}
            }
        }
    }

    /// The learner (other than `except`) the leader has replicated furthest
    /// to, if it is caught up.
    fn best_learner(&self, except: u64) -> Option<u64> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let last = m.last_log_index.unwrap_or(0);
        let repl = m.replication.as_ref()?;
        m.membership_config
            .membership()
            .learner_ids()
            .filter(|l| *l != except)
            .filter_map(|l| {
                let i = repl.get(&l).cloned().flatten()?.index;
                (i + CATCH_UP_LAG >= last).then_some((i, l))
            })
            .max()
            .map(|(_, l)| l)
    }

    async fn admin_step<T>(
        &self,
        deadline: Instant,
        what: &str,
        fut: impl Future<Output = Result<T, OrError<u64, ClientWriteError<u64, BasicNode>>>>,
    ) -> Result<T, RaftError> {
        match tokio::time::timeout_at(deadline, fut).await {
            Err(_) => Err(RaftError::NoQuorum(format!(
                "{what}: not committed in time"
            ))),
            Ok(r) => r.map_err(|e| self.map_err(e)),
        }
    }

    /// `change_membership`, retried while another change is in progress.
    async fn change_membership(
        &self,
        deadline: Instant,
        change: ChangeMembers<u64, BasicNode>,
        retain: bool,
    ) -> Result<(), RaftError> {
        loop {
            let fut = self.inner.raft.change_membership(change.clone(), retain);
            match tokio::time::timeout_at(deadline, fut).await {
                Err(_) => {
                    return Err(RaftError::NoQuorum(
                        "membership change: not committed in time".into(),
                    ));
                }
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(OrError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                )))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => return Err(self.map_err(e)),
            }
        }
    }
}

/// openraft's API errors, reduced to what [`RaftError`] distinguishes.
enum ApiError {
    Forward(Option<u64>, Option<String>),
    Membership(String),
}

impl From<ClientWriteError<u64, BasicNode>> for ApiError {
    fn from(e: ClientWriteError<u64, BasicNode>) -> Self {
        match e {
            ClientWriteError::ForwardToLeader(f) => {
                ApiError::Forward(f.leader_id, f.leader_node.map(|n| n.addr))
            }
            ClientWriteError::ChangeMembershipError(e) => ApiError::Membership(e.to_string()),
        }
    }
}

impl From<openraft::error::CheckIsLeaderError<u64, BasicNode>> for ApiError {
    fn from(e: openraft::error::CheckIsLeaderError<u64, BasicNode>) -> Self {
        match e {
            openraft::error::CheckIsLeaderError::ForwardToLeader(f) => {
                ApiError::Forward(f.leader_id, f.leader_node.map(|n| n.addr))
            }
            other => ApiError::Membership(other.to_string()),
        }
    }
}
