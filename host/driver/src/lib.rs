//! Cairn's cluster driver: a node's part in a cluster: the peer protocol on
//! the node's QUIC endpoint, membership and failure detection, the decision
//! log, the routing of client requests to the owner of their shard, handoff
//! and replication.
//!
//! The node itself is `cairn-host` (a single-node engine without network
//! I/O); the QUIC server that owns the endpoint and hands this crate its
//! peer connections is `cairn-server`. The rules are the sans-IO state
//! machines of `cairn-cluster` (routing, placement, the coordinator, gossip,
//! phi) and the Raft log of `cairn-raft`; this crate only drives them with
//! tasks, sockets and the clock:
//! - [`peer`]: the messages, the connection pool, the fault layer.
//! - `gossip`: SWIM membership and phi-accrual heartbeats over datagrams.
//! - `handoff`: the coordinator loop on the log's leader, the table
//!   watcher on every node, releasing and fetching shards.
//!
//! A client request for an entity goes through [`Cluster::handle`]: run
//! here if this node owns the shard and holds a fresh lease, forwarded one
//! hop otherwise, buffered while the shard moves, `Unavailable` at once if
//! the owner is down or unreachable.

mod batch;
mod deliver;
mod gossip;
mod handoff;
pub mod peer;
mod replicas;
mod replicate;
mod served;
mod tail;

pub use replicate::Replication;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cairn_cluster::phi::PhiDetector;
use cairn_cluster::route::{Route, Router};
use cairn_cluster::{MemberState, NodeId, shard_of};
use cairn_proto::{ApiError, ClusterStatus, MemberStatus, Request, Response};
use cairn_raft::{DecisionLog, LogConfig, RaftTransport, TransportError};
use tokio::sync::{Notify, mpsc, oneshot};

use cairn_host::config::ClusterConfig;
use cairn_host::node::Node;
use cairn_host::placement::Admission;
use gossip::GossipInput;
use peer::{PEER_PROTOCOL_VERSION, PeerFailure, PeerRequest, PeerResponse, Peers};

/// How long a lease renewal lets this node serve its shards.
pub const LEASE: Duration = Duration::from_secs(2);
/// Bytes of peer request frames (replicated writes, forwarded commands)
/// being read and served at once; a frame that does not fit now is refused
/// unread, and its sender retries as after any failed call.
const PEER_FRAME_BUDGET: usize = 8 * cairn_proto::MAX_FRAME;
/// Most time a forwarded request may take (the ask timeouts are shorter).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the cluster part of a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The decision log could not be opened.
    #[error("decision log: {0}")]
    Log(#[from] cairn_raft::RaftError),
    /// The node's id file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// This node left the cluster for good (`cairn cluster leave`): its
    /// decision log says `removed`, or it finished a leave. It does not
    /// start again on this data directory (its shards were handed off, its
    /// place in the log is gone); it may join again as a new member from an
    /// empty data directory.
    #[error(
        "node {node} left the cluster for good (cairn cluster leave) and does not start again on {data_dir}: \
         to join the cluster again as a new member, start it on an empty data directory \
         with --seed set to a live member"
    )]
    Removed {
        /// The node's id.
        node: u64,
        /// Its data directory.
        data_dir: String,
    },
    /// The data directory belongs to another node than the one the
    /// node's certificate names.
    #[error(
        "the data directory {data_dir} belongs to node {kept}, but the node certificate names node {cert}: \
         start with that node's certificate, or from an empty data directory"
    )]
    Identity {
        /// The id kept in the data directory.
        kept: u64,
        /// The id the certificate names.
        cert: u64,
        /// The data directory.
        data_dir: String,
    },
}

/// The file, in `<data_dir>/cluster`, written once a node has left the
/// cluster for good: a node finding it refuses to start.
const REMOVED_FILE: &str = "removed";

/// A command waiting in the router: the request and where its answer goes.
type Waiter = (Request, oneshot::Sender<Response>);

/// The liveness view, from gossip and heartbeats.
#[derive(Default)]
pub(crate) struct View {
    /// Members gossip holds live (this node not included).
    pub(crate) live: BTreeSet<u64>,
    /// Members gossip declared down (until they come back).
    pub(crate) down: BTreeSet<u64>,
    /// Peer addresses by node id.
    pub(crate) addrs: HashMap<u64, SocketAddr>,
    /// Phi-accrual detectors by node id.
    pub(crate) phi: HashMap<u64, PhiDetector>,
    /// Members whose phi is above the threshold.
    pub(crate) unreachable: BTreeSet<u64>,
}

/// Shared state of the cluster part.
pub(crate) struct Inner {
    pub(crate) id: u64,
    /// The run of this node in the gossip: its start time, renewed (one
    /// more) each time the others declared it down and it rejoined.
    pub(crate) boot: std::sync::atomic::AtomicU64,
    pub(crate) addr: SocketAddr,
    pub(crate) config: ClusterConfig,
    pub(crate) node: Node,
    /// The node's answers to the requests it runs itself.
    pub(crate) local: cairn_host::service::Service,
    pub(crate) peers: Arc<Peers>,
    /// Writes to replicas, one message per replica per batch.
    pub(crate) batcher: batch::Batcher,
    pub(crate) log: DecisionLog,
    gossip: mpsc::UnboundedSender<GossipInput>,
    view: Mutex<View>,
    pub(crate) router: Mutex<Router<Waiter>>,
    /// Commands running here, per shard (a release waits for them).
    pub(crate) in_flight: Mutex<HashMap<u32, usize>>,
    /// When this node sent its last granted lease renewal, and the
    /// committed table epoch the grant carried.
    lease: Mutex<Option<(Instant, u64)>>,
    pub(crate) started: Instant,
    leaving: AtomicBool,
    /// Set when the node stops for a restart ([`Cluster::stop`]): it renews
    /// no lease and announces itself no more; its membership is kept.
    stopping: AtomicBool,
    /// Signalled once the node has left the cluster.
    pub(crate) left: Notify,
    /// The journal under the replication (handoff and replicas write here).
    pub(crate) local_journal: Arc<dyn cairn_store::Journal>,
    /// The newest event of each entity of `local_journal`, when it is the
    /// replication's tail cache.
    pub(crate) tails: Option<Arc<tail::TailCache>>,
    /// Newest epoch accepted per shard as a replica.
    pub(crate) fences: replicate::Fences,
    /// Leases this node granted as the log's leader.
    /// The leases this node grants as the leader (on `started`'s clock).
    grants: Mutex<cairn_cluster::lease::LeaseGrants>,
    /// Memory for peer request frames being read and served.
    pub(crate) frames: cairn_client::frame::FrameBudget,
    /// Entities whose last replicated write failed: a replica may hold it,
    /// so their history is read back from the replicas before the next one.
    pub(crate) dirty: Mutex<std::collections::HashSet<cairn_store::EntityKey>>,
    /// Changes of replica set this node makes as an owner.
    pub(crate) changes: replicas::Changes,
    /// The epochs this node began serving each shard under (durable).
    pub(crate) served: served::Served,
}

impl Inner {
    pub(crate) fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn router(&self) -> MutexGuard<'_, Router<Waiter>> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Is this node stopping (for a restart or a departure)?
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst) || self.leaving.load(Ordering::SeqCst)
    }

    /// The committed lifecycle state of a member.
    pub(crate) fn member_state(&self, node: u64) -> Option<MemberState> {
        self.log
            .state()
            .borrow()
            .members
            .get(&node)
            .map(|r| r.state)
    }

    /// Tells the router which owners cannot be reached now.
    pub(crate) fn refresh_down(&self) {
        let down: BTreeSet<NodeId> = {
            let v = self.view();
            v.down
                .iter()
                .chain(v.unreachable.iter())
                .map(|n| NodeId(*n))
                .collect()
        };
        self.router().set_down(down);
    }

    /// The address of a member.
    pub(crate) fn addr_of(&self, node: u64) -> Option<SocketAddr> {
        if let Some(a) = self.view().addrs.get(&node) {
            return Some(*a);
        }
        let state = self.log.state();
        let s = state.borrow();
        s.members.get(&node).and_then(|r| r.addr.parse().ok())
    }

    /// May this node serve its shards now? Its lease is fresh, and its
    /// table has applied the committed epoch the grant carried (by
    /// [`cairn_cluster::lease::LeaseConfig::owner_may_serve_at`]), so an
    /// owner deposed while it was paused does not serve on its old table.
    pub(crate) fn lease_ok(&self) -> bool {
        let Some((sent, epoch)) = self.lease.lock().ok().and_then(|l| *l) else {
            return false;
        };
        let table_epoch = self.router().table().epoch();
        self.lease_config().owner_may_serve_at(
            sent.saturating_duration_since(self.started),
            Instant::now().saturating_duration_since(self.started),
            epoch,
            table_epoch,
        )
    }

    /// The cluster's lease settings.
    pub(crate) fn lease_config(&self) -> cairn_cluster::lease::LeaseConfig {
        cairn_cluster::lease::LeaseConfig {
            duration: LEASE,
            ..Default::default()
        }
    }

    /// The committed table's epoch in this node's decision log (what a
    /// lease grant carries).
    pub(crate) fn committed_epoch(&self) -> u64 {
        self.log
            .state()
            .borrow()
            .table
            .as_ref()
            .map_or(0, |t| t.epoch())
    }

    /// Grants `node` a lease now (on the leader), unless a failover of its
    /// shards is being decided: the grant carries the committed epoch,
    /// read after the grant is noted, so a failover committed later is
    /// covered by the lease's expiry and one committed earlier by the
    /// epoch.
    pub(crate) fn grant(&self, node: u64) -> Option<u64> {
        let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.grant(node, self.started.elapsed())
            .then(|| self.committed_epoch())
    }

    /// Bars, among the `down` members, those whose leases have certainly
    /// expired (`LeaseGrants::bar_expired`, counting from `leader_since`
    /// for grants of an earlier leader), for a failover of their shards
    /// (until [`Inner::unbar`]); returns those barred.
    pub(crate) fn bar_expired(
        &self,
        down: impl Iterator<Item = u64>,
        leader_since: Instant,
    ) -> BTreeSet<u64> {
        let config = self.lease_config();
        let since = leader_since.saturating_duration_since(self.started);
        let now = self.started.elapsed();
        let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.bar_expired(&config, down, since, now)
    }

    /// Lets barred members be granted leases again.
    pub(crate) fn unbar(&self, members: &BTreeSet<u64>) {
        let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.unbar(members);
    }

    /// When this node sent the renewal of its current lease.
    pub(crate) fn lease_sent(&self) -> Option<Instant> {
        self.lease.lock().ok().and_then(|l| *l).map(|(s, _)| s)
    }

    /// Is this node's table older than the epoch its last grant carried?
    fn table_behind_grant(&self) -> bool {
        let granted = self
            .lease
            .lock()
            .ok()
            .and_then(|l| *l)
            .map_or(0, |(_, e)| e);
        self.router().table().epoch() < granted
    }

    fn never_leased(&self) -> bool {
        self.lease.lock().map(|l| l.is_none()).unwrap_or(false)
    }

    /// A renewal sent at `sent` was granted with the committed `epoch`.
    fn renewed(&self, sent: Instant, epoch: u64) {
        // A renewal that comes back after the node began stopping must not
        // bring its lease back.
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut l) = self.lease.lock() {
            match *l {
                Some((s, e)) if s >= sent => *l = Some((s, e.max(epoch))),
                _ => *l = Some((sent, epoch)),
            }
        }
    }

    /// The shard count of the committed table (the configured one before
    /// the cluster is initialized).
    pub(crate) fn shard_count(&self) -> u32 {
        self.log
            .state()
            .borrow()
            .table
            .as_ref()
            .map_or(self.config.shards, |t| t.len())
    }

    /// The node's admission of an entity (see [`cairn_host::placement`]), by
    /// the rule of [`cairn_cluster::fence::admit`].
    pub(crate) fn admit(&self, key: &cairn_store::EntityKey, live: bool) -> Admission {
        use cairn_cluster::fence::Admission as Rule;
        let shard = shard_of(&key.entity_type, &key.entity_id, self.shard_count());
        let lease = self.lease_ok();
        let rule = cairn_cluster::fence::admit(&self.router(), shard, lease, live);
        match rule {
            // A node stopping for a restart starts no command: the ones
            // running finish (its lease still holds), the others fail
            // unrun and can be retried.
            Rule::Here(_) if self.stopping.load(Ordering::SeqCst) => {
                Admission::NotYet("this node is stopping (a restart)".into())
            }
            Rule::Here(f) => Admission::Here(Some(cairn_store::Fence {
                shard: f.shard.0,
                epoch: f.epoch,
            })),
            Rule::Elsewhere { owner, epoch } => Admission::Elsewhere(format!(
                "shard {} is owned by node {} (epoch {epoch})",
                shard.0, owner.0
            )),
            Rule::Unowned => Admission::Elsewhere(format!("shard {} has no owner yet", shard.0)),
            Rule::Arriving => {
                Admission::NotYet(format!("shard {} is still arriving on this node", shard.0))
            }
            Rule::Releasing => Admission::NotYet(format!(
                "shard {} is being handed off from this node",
                shard.0
            )),
            Rule::LeaseLapsed => Admission::NotYet(
                "this node's lease lapsed (it cannot reach the cluster's majority)".into(),
            ),
            _ => Admission::NotYet(format!("shard {} cannot be served here now", shard.0)),
        }
    }

    /// Runs a request here, counted as in flight for its shard.
    pub(crate) async fn run_local(&self, shard: u32, req: Request) -> Response {
        // A node that just joined may be given shards before its first
        // renewal comes back, and a grant may carry an epoch its table has
        // not applied yet (decisions commit while it renews): wait for
        // either, up to one lease. A lease that expired refuses at once.
        let deadline = Instant::now() + LEASE;
        while (self.never_leased() || self.table_behind_grant()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !self.lease_ok() {
            return unavailable(if self.table_behind_grant() {
                "this node's table has not applied the decisions its lease grant carries yet; retry"
            } else {
                "this node cannot reach the cluster's majority: it serves none of its shards"
            });
        }
        *self.in_flight().entry(shard).or_default() += 1;
        let resp = self.local.handle(req).await;
        let mut f = self.in_flight();
        if let Some(n) = f.get_mut(&shard) {
            *n -= 1;
            if *n == 0 {
                f.remove(&shard);
            }
        }
        resp
    }

    pub(crate) fn in_flight(&self) -> MutexGuard<'_, HashMap<u32, usize>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows a route to its answer.
    pub(crate) async fn follow(
        self: &Arc<Self>,
        shard: u32,
        route: Route<Waiter>,
        rx: oneshot::Receiver<Response>,
    ) -> Response {
        match route {
            Route::Forward(owner, (req, _)) => self.forward(owner.0, shard, req).await,
            route => self.settle(shard, route, rx).await,
        }
    }

    /// Answers a request routed anywhere but to another node (`forward`
    /// calls it, so it must never forward: a redirect back here would
    /// nest calls without bound).
    async fn settle(
        self: &Arc<Self>,
        shard: u32,
        route: Route<Waiter>,
        rx: oneshot::Receiver<Response>,
    ) -> Response {
        match route {
            Route::Local((req, _)) => self.run_local(shard, req).await,
            Route::Forward(..) => unavailable("the entity's shard is routed elsewhere; retry"),
            Route::Buffered => match tokio::time::timeout(FORWARD_TIMEOUT, rx).await {
                Ok(Ok(r)) => r,
                // Still buffered: it may run once the shard arrives.
                Err(_) => Response::Error(ApiError::Indeterminate(
                    "the entity's shard is moving and did not arrive in time; the request stays queued and may still run".into(),
                )),
                Ok(Err(_)) => unavailable("the entity's shard is moving and did not arrive in time"),
            },
            Route::Busy(_) => Response::Error(ApiError::Busy(
                "the entity's shard is moving and its buffer is full; retry later".into(),
            )),
            Route::Unavailable(_) => unavailable(
                "the node owning the entity's shard is down or unreachable, and its history is on that node only",
            ),
            Route::Redirect(owner, _) => Response::Error(ApiError::NotOwner {
                owner: self
                    .addr_of(owner.0)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            }),
            _ => unavailable("unknown route"),
        }
    }

    /// Sends a request to the owner, following redirects while the tables
    /// of the nodes converge (bounded in time, one deadline for the whole
    /// chase). A redirect back to this node routes the request here again;
    /// when this node's table still names another owner the chase goes on
    /// in this loop, never by a nested call.
    pub(crate) async fn forward(
        self: &Arc<Self>,
        owner: u64,
        shard: u32,
        req: Request,
    ) -> Response {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut owner = owner;
        let mut req = req;
        loop {
            if owner == self.id {
                let (tx, rx) = oneshot::channel();
                let route = self
                    .router()
                    .route(cairn_cluster::ShardId(shard), (req, tx));
                match route {
                    Route::Forward(o, (r, _)) => {
                        if Instant::now() > deadline {
                            return unavailable("the entity's owner kept changing; retry");
                        }
                        owner = o.0;
                        req = r;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    route => return self.settle(shard, route, rx).await,
                }
            }
            let Some(addr) = self.addr_of(owner) else {
                return unavailable("the owner of the entity's shard has no known address");
            };
            let call = PeerRequest::Forward {
                shard,
                epoch: self.router().table().epoch(),
                request: req.clone(),
            };
            match self.peers.call(addr, &call, FORWARD_TIMEOUT).await {
                Ok(PeerResponse::Response(r)) => return r,
                Ok(PeerResponse::Redirect(o)) => {
                    if Instant::now() > deadline {
                        return unavailable("the entity's owner kept changing; retry");
                    }
                    // Our table may have moved on meanwhile; else follow the hint.
                    let mine = self
                        .router()
                        .table()
                        .get(cairn_cluster::ShardId(shard))
                        .map(|a| a.owner.0);
                    owner = match mine {
                        Some(m) if m != owner => m,
                        _ => o,
                    };
                    // The shard came here: the loop routes it locally.
                    if owner != self.id {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Ok(other) => {
                    return unavailable(&format!("unexpected answer from the owner: {other:?}"));
                }
                // Sent, then lost: the owner may have run a command.
                Err(e) if e.after_sending() => return unknown_outcome(&req, &e.to_string()),
                Err(e) => return unavailable(&e.to_string()),
            }
        }
    }
}

pub(crate) fn unavailable(why: &str) -> Response {
    Response::Error(ApiError::Unavailable(why.to_owned()))
}

/// The answer when a request may have run but its answer was lost: for a
/// command (`Ask`, `Tell`) the outcome is unknown (`Indeterminate`); a
/// read changed nothing and is only `Unavailable`.
pub(crate) fn unknown_outcome(req: &Request, why: &str) -> Response {
    match req {
        Request::Ask { .. } | Request::Tell { .. } | Request::Deliver { .. } => {
            Response::Error(ApiError::Indeterminate(why.to_owned()))
        }
        _ => unavailable(why),
    }
}

/// The entity a request is about, if it must run on the shard's owner.
fn entity_of(req: &Request) -> Option<(&str, &str)> {
    match req {
        Request::Ask {
            entity_type,
            entity_id,
            ..
        }
        | Request::Tell {
            entity_type,
            entity_id,
            ..
        }
        | Request::Deliver {
            entity_type,
            entity_id,
            ..
        }
        | Request::Events {
            entity_type,
            entity_id,
            ..
        }
        | Request::State {
            entity_type,
            entity_id,
            ..
        } => Some((entity_type, entity_id)),
        _ => None,
    }
}

/// The decision log's transport: one peer call per Raft message.
struct LogTransport(Arc<Peers>);

impl RaftTransport for LogTransport {
    fn call(
        &self,
        target: u64,
        addr: &str,
        rpc: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send + 'static>>
    {
        let peers = self.0.clone();
        let addr = addr.parse::<SocketAddr>();
        Box::pin(async move {
            let addr = addr.map_err(|e| TransportError::Other(e.to_string()))?;
            match peers
                .call(addr, &PeerRequest::Raft(rpc), Duration::from_secs(2))
                .await
            {
                // Only the member itself answers for it.
                Ok(PeerResponse::Raft(_)) if peers.node_at(addr) != Some(target) => {
                    Err(TransportError::Unreachable(format!(
                        "{addr} is node {:?}, not node {target}",
                        peers.node_at(addr)
                    )))
                }
                Ok(PeerResponse::Raft(b)) => Ok(b),
                Ok(other) => Err(TransportError::Other(format!(
                    "unexpected answer {other:?}"
                ))),
                Err(e) => Err(TransportError::Unreachable(e.to_string())),
            }
        })
    }
}

/// A node's membership in a cluster.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

/// The node's side of the peer transport, as the server set it up.
pub struct PeerEndpoint {
    /// The node's one QUIC endpoint (whose peer connections the server
    /// hands to [`Cluster::serve_peer`]).
    pub endpoint: quinn::Endpoint,
    /// How this node dials its peers (its node certificate).
    pub dial: quinn::ClientConfig,
    /// The address the endpoint listens on.
    pub listen: SocketAddr,
    /// The node id the node's certificate names: its id as a member.
    pub id: u64,
}

impl Cluster {
    /// Joins (or starts) the cluster of `config` with the node of `local`
    /// (which answers the requests the node runs itself), as the member its
    /// certificate names, on `peer`'s endpoint.
    pub async fn start(
        local: cairn_host::service::Service,
        peer: PeerEndpoint,
        config: ClusterConfig,
        replication: Option<Arc<Replication>>,
    ) -> Result<Cluster, ClusterError> {
        let node = local.node().clone();
        let PeerEndpoint {
            endpoint,
            dial: peer_config,
            listen,
            id,
        } = peer;
        let data_dir = node.config().node.data_dir.join("cluster");
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| ClusterError::Io(format!("{}: {e}", data_dir.display())))?;
        let id = node_id(&data_dir, id)?;
        let addr = config.advertise.unwrap_or(listen);
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let peers = Arc::new(Peers::new(endpoint, peer_config));
        let log = DecisionLog::open(
            &data_dir.join("raft"),
            id,
            addr.to_string(),
            Arc::new(LogTransport(peers.clone())),
            LogConfig::default(),
        )
        .await?;
        // A node that left for good does not come back on the same data:
        // its committed state is `removed` (or its leave finished before
        // that commit reached it, which the marker file records).
        let removed = data_dir.join(REMOVED_FILE).exists()
            || log
                .state()
                .borrow()
                .members
                .get(&id)
                .is_some_and(|r| r.state == MemberState::Removed);
        if removed {
            log.shutdown().await;
            return Err(ClusterError::Removed {
                node: id,
                data_dir: node.config().node.data_dir.display().to_string(),
            });
        }
        let served = served::Served::open(&data_dir)
            .map_err(|e| ClusterError::Io(format!("{}: {e}", data_dir.display())))?;
        let (gossip_tx, gossip_rx) = mpsc::unbounded_channel();
        let local_journal = replication
            .as_ref()
            .and_then(|r| r.local())
            .unwrap_or_else(|| node.journal().clone());
        let inner = Arc::new(Inner {
            id,
            boot: std::sync::atomic::AtomicU64::new(boot),
            addr,
            router: Mutex::new(Router::new(
                NodeId(id),
                config.shards,
                config.handoff_buffer,
            )),
            config,
            node,
            local,
            batcher: batch::Batcher::new(peers.clone(), Duration::from_secs(10)),
            peers,
            log,
            gossip: gossip_tx,
            view: Mutex::new(View::default()),
            in_flight: Mutex::new(HashMap::new()),
            lease: Mutex::new(None),
            started: Instant::now(),
            leaving: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            left: Notify::new(),
            local_journal,
            tails: replication.as_ref().and_then(|r| r.tails()),
            fences: replicate::Fences::default(),
            grants: Mutex::new(cairn_cluster::lease::LeaseGrants::default()),
            dirty: Mutex::new(std::collections::HashSet::new()),
            changes: replicas::Changes::default(),
            served,
            frames: cairn_client::frame::FrameBudget::new(PEER_FRAME_BUDGET),
        });
        if let Some(r) = &replication {
            r.attach(Arc::downgrade(&inner));
        }
        inner.view().addrs.insert(id, addr);
        tokio::spawn(gossip::run(inner.clone(), gossip_rx));
        tokio::spawn(handoff::watch_table(inner.clone()));
        tokio::spawn(handoff::sync_deploys(inner.clone()));
        tokio::spawn(handoff::coordinate(inner.clone()));
        tokio::spawn(handoff::settle_overdue(inner.clone()));
        tokio::spawn(replicas::maintain(inner.clone()));
        tokio::spawn(renew_lease(inner.clone()));
        tokio::spawn(join(inner.clone()));
        tokio::spawn(watch_faults(inner.clone(), data_dir.join("faults")));
        tracing::info!(node = id, %addr, "cluster member starting");
        Ok(Cluster { inner })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The fault layer of the peer transport (tests cut peers with it).
    pub fn faults(&self) -> Arc<peer::Faults> {
        self.inner.peers.faults.clone()
    }

    /// Does `req` go through the cluster (an entity request)?
    pub fn routes(req: &Request) -> bool {
        entity_of(req).is_some()
    }

    /// Serves a client request: here, forwarded to its owner, buffered, or
    /// refused with `Unavailable`.
    pub async fn handle(&self, req: Request) -> Response {
        let Some((ty, id)) = entity_of(&req) else {
            return self.inner.local.handle(req).await;
        };
        let shard = shard_of(ty, id, self.inner.shard_count());
        let (tx, rx) = oneshot::channel();
        let route = self.inner.router().route(shard, (req, tx));
        self.inner.follow(shard.0, route, rx).await
    }

    /// Commits a deploy validated on this node to the decision log: every
    /// member then fetches the component by its hash and activates it.
    pub async fn publish_deploy(
        &self,
        entity_type: &str,
        deploy: u32,
        sha256: &str,
        behavior_version: &str,
        rollback: bool,
    ) -> Result<(), String> {
        handoff::propose(
            &self.inner,
            cairn_raft::Command::Deploy(cairn_raft::DeployEntry {
                entity_type: entity_type.to_owned(),
                deploy,
                sha256: sha256.to_owned(),
                behavior_version: behavior_version.to_owned(),
                rollback,
            }),
        )
        .await
    }

    /// Serves one accepted peer connection (ALPN `cairn-peer/1`) of the
    /// member `peer`, the node id its certificate names (checked by the
    /// caller): every id the peer claims in a request must be that one.
    pub async fn serve_peer(&self, conn: quinn::Connection, peer: u64) {
        handoff::serve_peer(self.inner.clone(), conn, peer).await
    }

    /// The cluster as this node sees it.
    pub async fn status(&self) -> ClusterStatus {
        status(&self.inner).await
    }

    /// Leaves for good (`cairn cluster leave`): marks this node leaving
    /// (its shards move to the others), waits (up to `grace`) until it owns
    /// none, then commits it `removed`, leaves the gossip and the decision
    /// log, and records that it left (it will not start again on this data
    /// directory, [`ClusterError::Removed`]).
    pub async fn leave(&self, grace: Duration) {
        leave(&self.inner, grace).await
    }

    /// Stops for a restart (SIGTERM, Ctrl-C): nothing is committed, so
    /// that started again on the same data directory the node is the same
    /// member, with its shards. In order: it starts no more commands
    /// (those for its shards, from clients or forwarded, not yet started,
    /// fail unrun with `Unavailable`: they can be retried), renews its
    /// lease no more and stops its decision log; waits up to [`STOP_DRAIN`] for the commands running
    /// here to finish (their writes are still within the lease), while its
    /// decision log is already stopped (a leader's place goes to another
    /// voter by election, and the others renew their leases with it);
    /// gives up its lease; and tells the gossip it is going (the others
    /// hold it down at once, not after the failure detector's delay). Its
    /// shards are unavailable until it is back, or until the failover rules
    /// give them to a replica.
    pub async fn stop(&self) {
        stop(&self.inner).await
    }

    /// Resolves once this node has left the cluster (after a `ClusterLeave`).
    pub async fn left(&self) {
        self.inner.left.notified().await
    }

    /// Resolves if this node's decision log stops for good (its storage
    /// failed, e.g. a full disk), with the reason. The node then no longer
    /// learns where shards are, so it must stop (fail-stop): its lease
    /// lapses and the others take its shards over from its replicas.
    pub async fn failed(&self) -> String {
        self.inner.log.failed().await
    }

    /// Starts a graceful leave in the background (a `ClusterLeave` request).
    pub fn leave_in_background(&self) {
        let c = self.clone();
        tokio::spawn(async move {
            c.leave(Duration::from_secs(60)).await;
            // A permit is kept if nobody waits yet.
            c.inner.left.notify_one();
        });
    }
}

/// This node's id: the one its certificate names, kept in the data
/// directory on first start; a data directory of another node is refused.
fn node_id(dir: &Path, cert: u64) -> Result<u64, ClusterError> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let kept: u64 = s
                .trim()
                .parse()
                .map_err(|_| ClusterError::Io(format!("{}: not a node id", path.display())))?;
            if kept != cert {
                return Err(ClusterError::Identity {
                    kept,
                    cert,
                    data_dir: dir.parent().unwrap_or(dir).display().to_string(),
                });
            }
            Ok(kept)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join("node-id.tmp");
            std::fs::write(&tmp, cert.to_string())
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| ClusterError::Io(format!("{}: {e}", path.display())))?;
            Ok(cert)
        }
        Err(e) => Err(ClusterError::Io(format!("{}: {e}", path.display()))),
    }
}

/// Starts or joins: bootstraps a new log when this node is the first seed
/// (or has none), else asks the seeds to be added; then keeps announcing
/// itself to members gossip does not hold live (after a restart, a heal).
///
/// A node its own decision log already holds as a member (`up` or
/// `leaving`: a restart) neither bootstraps nor asks the seeds: it is a
/// member of the committed view, its log rejoins the others' by itself,
/// and it only announces itself to the members of that view that are not
/// removed. A member that was `leaving` when it stopped resumes its leave.
async fn join(inner: Arc<Inner>) {
    let seeds = inner.config.seeds.clone();
    let first = seeds.first().is_none_or(|s| *s == inner.addr);
    let committed = inner.member_state(inner.id);
    let member = matches!(committed, Some(MemberState::Up | MemberState::Leaving));
    if member {
        tracing::info!(
            state = state_name(committed.unwrap_or(MemberState::Up)),
            "restarting as a member of the committed view: not joining again"
        );
        if committed == Some(MemberState::Leaving) {
            tracing::info!("this member was leaving when it stopped: the leave goes on");
            let c = Cluster {
                inner: inner.clone(),
            };
            c.leave_in_background();
        }
    } else if first {
        if let Err(e) = inner.log.bootstrap(inner.config.shards).await {
            tracing::error!(error = %e, "cannot start the decision log");
        }
    } else {
        let mut attempt = 0u32;
        'joined: loop {
            for seed in seeds.iter().filter(|s| **s != inner.addr) {
                let req = PeerRequest::Join {
                    node: inner.id,
                    addr: inner.addr.to_string(),
                };
                let mut answer = inner.peers.call(*seed, &req, Duration::from_secs(10)).await;
                // A member that is not the leader names it: a node asks
                // the leader itself (joins are not passed on).
                if let Ok(PeerResponse::NotLeader(Some(leader))) = &answer
                    && let Ok(leader) = leader.parse::<SocketAddr>()
                    && leader != inner.addr
                {
                    answer = inner
                        .peers
                        .call(leader, &req, Duration::from_secs(10))
                        .await;
                }
                match answer {
                    Ok(PeerResponse::Done) => break 'joined,
                    Ok(PeerResponse::Failed(e @ PeerFailure::Identity { .. })) => {
                        tracing::error!(%seed, error = %e, "the cluster refused this node's identity");
                    }
                    Ok(other) => tracing::debug!(%seed, ?other, "join not accepted yet"),
                    Err(e) => tracing::debug!(%seed, error = %e, "seed not reachable"),
                }
            }
            attempt += 1;
            if attempt.is_multiple_of(20) {
                tracing::warn!(?seeds, "still trying to join the cluster");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tracing::info!("joined the cluster");
    }
    loop {
        if inner.leaving.load(Ordering::Relaxed) || inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        let known: Vec<SocketAddr> = {
            let state = inner.log.state();
            let s = state.borrow();
            let v = inner.view();
            // Members gone for good are not waited on, nor their addresses
            // among the seeds (unless a member holds that address now).
            let gone = |addr: &SocketAddr| {
                let a = addr.to_string();
                let removed = s
                    .members
                    .values()
                    .any(|r| r.state == MemberState::Removed && r.addr == a);
                let held = s
                    .members
                    .values()
                    .any(|r| r.state != MemberState::Removed && r.addr == a);
                removed && !held
            };
            s.members
                .iter()
                .filter(|(id, r)| {
                    **id != inner.id && r.state != MemberState::Removed && !v.live.contains(id)
                })
                .filter_map(|(_, r)| r.addr.parse().ok())
                .chain(
                    seeds
                        .iter()
                        .copied()
                        .filter(|a| *a != inner.addr && v.live.is_empty() && !gone(a)),
                )
                .collect()
        };
        for addr in known {
            let hello = PeerRequest::Hello {
                version: PEER_PROTOCOL_VERSION,
            };
            let answer = inner
                .peers
                .call(addr, &hello, Duration::from_millis(500))
                .await;
            let (node, boot) = match answer {
                Ok(PeerResponse::Hello {
                    node,
                    boot,
                    version,
                }) if version == PEER_PROTOCOL_VERSION => {
                    let certified = inner.peers.node_at(addr);
                    if certified != Some(node) {
                        tracing::error!(%addr, node, ?certified, "a peer claims another node id than its certificate's: not joined");
                        continue;
                    }
                    (node, boot)
                }
                Ok(PeerResponse::Hello { version, .. }) => {
                    tracing::error!(%addr, version, ours = PEER_PROTOCOL_VERSION, "a peer speaks another peer protocol version: not joined");
                    continue;
                }
                Ok(PeerResponse::Failed(e @ PeerFailure::Version { .. })) => {
                    tracing::error!(%addr, error = %e, "a peer refused this node's peer protocol version: not joined");
                    continue;
                }
                _ => continue,
            };
            {
                inner.view().addrs.insert(node, addr);
                let _ = inner
                    .gossip
                    .send(GossipInput::Join(cairn_cluster::membership::PeerId {
                        node,
                        boot,
                        addr,
                    }));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The fault layer's control for tests of real processes: the file
/// `<data_dir>/cluster/faults` lists peer addresses (one per line) this
/// node neither sends to nor hears from; it is read every 100 ms. No file,
/// no faults.
async fn watch_faults(inner: Arc<Inner>, path: std::path::PathBuf) {
    let mut last: Option<String> = None;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if last.as_deref() != Some(text.as_str()) {
            let blocked: std::collections::HashSet<SocketAddr> =
                text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if !blocked.is_empty() || last.is_some() {
                tracing::warn!(?blocked, "fault layer: peers cut");
            }
            inner.peers.faults.set(blocked);
            last = Some(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Renews this node's lease with the log's leader (or, on the leader, by
/// confirming it still leads a majority) four times per lease.
async fn renew_lease(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(LEASE / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = Instant::now();
        if inner.log.has_failed() {
            // A stale table: no lease, so this node stops acknowledging.
            continue;
        }
        // A renewal counts from when it was sent, so a slow answer (a busy
        // machine) still extends the lease: each attempt may take up to
        // half the lease, and two in a row fit in it.
        if inner.log.is_leader() {
            let epoch = inner.committed_epoch();
            if inner.log.confirm_leader(LEASE / 2).await.is_ok() {
                inner.renewed(sent, epoch);
            }
            continue;
        }
        let Some((_, addr)) = inner.log.leader() else {
            continue;
        };
        let Ok(addr) = addr.parse() else { continue };
        if let Ok(PeerResponse::Lease {
            granted: true,
            epoch,
        }) = inner
            .peers
            .call(addr, &PeerRequest::Lease { node: inner.id }, LEASE / 2)
            .await
        {
            inner.renewed(sent, epoch);
        }
    }
}

async fn status(inner: &Arc<Inner>) -> ClusterStatus {
    let state = inner.log.state().borrow().clone();
    let voters = inner.log.voters();
    let now = inner.started.elapsed();
    let mut members = Vec::new();
    for (id, rec) in &state.members {
        let (reachable, phi, gossip_down) = {
            let v = inner.view();
            let phi = if *id == inner.id {
                0.0
            } else {
                v.phi.get(id).map_or(0.0, |d| d.phi(now))
            };
            (
                *id == inner.id || (!v.unreachable.contains(id) && !v.down.contains(id)),
                phi,
                v.down.contains(id),
            )
        };
        let live_entities = if *id == inner.id {
            Some(live_entities(&inner.node))
        } else if let Ok(addr) = rec.addr.parse() {
            match inner
                .peers
                .call(addr, &PeerRequest::Info, Duration::from_millis(300))
                .await
            {
                Ok(PeerResponse::Info { live_entities }) => Some(live_entities),
                _ => None,
            }
        } else {
            None
        };
        let state_name = if gossip_down && !matches!(rec.state, MemberState::Removed) {
            "down".to_owned()
        } else {
            state_name(rec.state).to_owned()
        };
        members.push(MemberStatus {
            id: *id,
            addr: rec.addr.clone(),
            state: state_name,
            reachable,
            phi,
            shards: state
                .table
                .as_ref()
                .map_or(0, |t| t.owned_by(NodeId(*id)) as u32),
            unready: state.unready(*id) as u32,
            voter: voters.contains(id),
            live_entities,
            active: state
                .active
                .iter()
                .filter(|((_, node), _)| node == id)
                .map(|((ty, _), (deploy, hash))| (ty.clone(), *deploy, hash.clone()))
                .collect(),
        });
    }
    ClusterStatus {
        node: inner.id,
        leader: inner.log.leader().map(|(id, _)| id),
        shards: state.table.as_ref().map_or(0, |t| t.len()),
        epoch: state.table.as_ref().map_or(0, |t| t.epoch()),
        members,
        owners: state.table.as_ref().map_or_else(Vec::new, |t| {
            t.iter().map(|(_, a)| a.map_or(0, |a| a.owner.0)).collect()
        }),
    }
}

pub(crate) fn live_entities(node: &Node) -> u64 {
    node.deployments()
        .iter()
        .map(|d| node.live_entities(&d.entity_type) as u64)
        .sum()
}

fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Joining => "joining",
        MemberState::Up => "up",
        MemberState::Leaving => "leaving",
        MemberState::Exiting => "exiting",
        MemberState::Down => "down",
        MemberState::Removed => "removed",
        _ => "unknown",
    }
}

async fn leave(inner: &Arc<Inner>, grace: Duration) {
    if inner.leaving.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::info!("leaving the cluster: handing off shards");
    let deadline = Instant::now() + grace;
    let mut marked = false;
    while Instant::now() < deadline {
        if !marked {
            marked = handoff::propose(
                inner,
                cairn_raft::Command::Member {
                    node: inner.id,
                    addr: inner.addr.to_string(),
                    state: MemberState::Leaving,
                },
            )
            .await
            .is_ok();
        }
        // It owns no shard and is in no committed replica set (the owners
        // move their sets off a leaving member, each after catching the
        // new member up), and no new owner may still read from it: its
        // disk holds nothing the cluster needs.
        let owned = inner.log.state().borrow().holds_data(inner.id);
        let others = inner
            .log
            .state()
            .borrow()
            .members
            .iter()
            .any(|(id, r)| *id != inner.id && r.state == MemberState::Up);
        if marked && (owned == 0 || !others) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = handoff::propose(
        inner,
        cairn_raft::Command::Member {
            node: inner.id,
            addr: inner.addr.to_string(),
            state: MemberState::Removed,
        },
    )
    .await;
    if inner.log.is_leader() {
        // Hand the log to another voter before going.
        let _ = inner.log.remove_member(inner.id).await;
    } else if let Some((_, addr)) = inner.log.leader()
        && let Ok(addr) = addr.parse()
    {
        let _ = inner
            .peers
            .call(
                addr,
                &PeerRequest::Leave { node: inner.id },
                Duration::from_secs(5),
            )
            .await;
    }
    let _ = inner.gossip.send(GossipInput::Leave);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Gone for good: this data directory does not start as the same member
    // again (its place in the log is gone even if the `removed` commit did
    // not reach this node before it left).
    let dir = inner.node.config().node.data_dir.join("cluster");
    let marker = dir.join(REMOVED_FILE);
    let written = std::fs::write(&marker, inner.id.to_string())
        .and_then(|()| std::fs::File::open(&marker)?.sync_all())
        .and_then(|()| std::fs::File::open(&dir)?.sync_all());
    if let Err(e) = written {
        tracing::warn!(path = %marker.display(), error = %e, "cannot record that this node left");
    }
    tracing::info!("left the cluster");
}

/// How long a node stopping for a restart waits for the commands running
/// on it: within the lease its last renewal granted, so that no command of
/// a stopping node writes after its shards could have failed over.
pub const STOP_DRAIN: Duration = Duration::from_millis(1_500);

async fn stop(inner: &Arc<Inner>) {
    if inner.stopping.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::info!("stopping for a restart: membership kept, shards unavailable until it is back");
    // From here `admit` starts no command (see there), and the lease is not
    // renewed: the commands running finish within the lease they hold.
    // Out of the decision log first: if this node led, the others elect a
    // leader meanwhile and renew their leases with it (a stopping leader
    // renews none, so its own would lapse and it would grant none).
    inner.log.shutdown().await;
    let deadline = Instant::now() + STOP_DRAIN;
    while !inner.in_flight().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let running: usize = inner.in_flight().values().sum();
    if running > 0 {
        tracing::warn!(running, "commands still running as the node stops");
    }
    // No lease: nothing more is written for this node's shards.
    if let Ok(mut l) = inner.lease.lock() {
        *l = None;
    }
    let _ = inner.gossip.send(GossipInput::Leave);
    // Let the gossip's goodbye go out before the endpoint closes.
    tokio::time::sleep(Duration::from_millis(100)).await;
}
