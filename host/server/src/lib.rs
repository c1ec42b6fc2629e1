//! Cairn's QUIC front door: serves a [`Node`] over QUIC: one quinn
//! endpoint, mutual TLS, the client protocol of `cairn-proto`, with the
//! frame I/O and TLS configuration of the `cairn-client` crate.
//!
//! It is also where a node, its part in a cluster and its server are put
//! together: [`Server::start_cluster`] starts the cluster driver
//! (`cairn-driver`) on the server's endpoint, hands it the peer connections
//! and gives it this server's handler for the requests it runs locally.
//!
//! Owns connection handling, the per-stream request loop, the limits (at most
//! `max_connections` connections: more are closed with "busy"; at most
//! `max_in_flight` requests being served: more are answered
//! [`ApiError::Busy`]), the translation of node errors into [`ApiError`]s,
//! and the conversion of the node's validation reports and deploy records
//! into the protocol's own types. Nothing a client sends can panic the node: bad frames get an
//! error response and the stream is closed, the connection and the node go on.
//! `awake` (private): the optional thread that keeps a CPU awake after
//! requests (off by default, `ServerLimits::keep_awake`).

mod awake;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Semaphore, broadcast};

use cairn_client::frame::{FrameBudget, read_frame_admitted, write_frame};
use cairn_client::tls::{self, NodeFiles, TlsError};
use cairn_proto::{
    self as api, ApiError, EventView, FrameError, GuestFaultKind, MAX_FRAME, PEER_ALPN,
    PROTOCOL_VERSION, Payload, Request, Response, StateAt, TypeInfo,
};

use cairn_driver::{Cluster, LocalHandler, Replication};
use cairn_host::behavior::GuestFault;
use cairn_host::config::{ClusterConfig, TlsFiles};
use cairn_host::deploy::{self, DeployError, DeployResult};
use cairn_host::node::{
    AskError, AskOptions, LifecycleEvent, Node, PastState, ReadError, RegisterError,
};
use cairn_host::registry::{self, Deployment};
use cairn_store::JournalError;

use crate::awake::KeepAwake;

/// Application error code a node closes a connection with when it is full.
pub const CLOSE_BUSY: u32 = 1;
/// Application error code a node closes a peer connection with when it
/// refuses it (no node certificate, or not in a cluster).
pub const CLOSE_REFUSED: u32 = 2;
/// Application error code of a normal close.
pub const CLOSE_NORMAL: u32 = 0;
/// Most events returned by one `Events` request.
pub const MAX_EVENTS_PER_REQUEST: u32 = 10_000;
/// Events per batch on a `FollowEvents` stream.
const FEED_BATCH: usize = 1_000;

/// Limits of a server.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Most connections at once.
    pub max_connections: usize,
    /// Most requests being served at once.
    pub max_in_flight: usize,
    /// Most streams a client may have open on one connection.
    pub max_streams_per_connection: u32,
    /// How long after a request a thread of idle priority keeps a CPU awake
    /// by spinning, so that the next wake-up is quick; zero (the default)
    /// disables it. A latency knob for dedicated machines: it spins a CPU
    /// (docs/BENCHMARKS.md).
    pub keep_awake: Duration,
    /// Bytes of client request frames being read and served at once: a
    /// frame's announced size is admitted against it before its body is
    /// read; one that does not fit now is answered `busy` unread.
    pub frame_budget: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            max_in_flight: 4096,
            max_streams_per_connection: 256,
            keep_awake: Duration::ZERO,
            frame_budget: 4 * MAX_FRAME,
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The node could not take its part in the cluster.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A running server.
pub struct Server {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Starts serving `node` on `listen` with the node's certificates.
    pub fn start(
        node: Node,
        files: &TlsFiles,
        listen: SocketAddr,
        limits: ServerLimits,
        name: String,
    ) -> Result<Server, ServerError> {
        let (endpoint, local_addr) = bind(files, listen, limits)?;
        let shared = Shared::new(node, limits, name);
        Ok(Server::serve(endpoint, local_addr, shared))
    }

    /// Starts serving `node` as a member of the cluster of `cluster`: the
    /// same endpoint also carries the peer protocol (`cairn-peer/1`), and
    /// entity requests are routed to their shard's owner. With
    /// `replication` (the wrapper of the node's journal, see
    /// [`Node::open_with`]) writes are replicated to each shard's replicas.
    pub async fn start_cluster(
        node: Node,
        files: &TlsFiles,
        listen: SocketAddr,
        limits: ServerLimits,
        name: String,
        cluster: ClusterConfig,
        replication: Option<Arc<Replication>>,
    ) -> Result<(Server, Cluster), ServerError> {
        let (endpoint, local_addr) = bind(files, listen, limits)?;
        let peer_config = tls::peer_client_config(&node_files(files))?;
        // A member's id is the one its certificate names.
        let id = tls::node_id_in(&files.cert)?;
        let shared = Shared::new(node.clone(), limits, name);
        let weak = Arc::downgrade(&shared);
        let local: LocalHandler = Arc::new(move |req| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(s) => handle(&s, req).await,
                    None => Response::Error(ApiError::ShuttingDown),
                }
            })
        });
        let peer = cairn_driver::PeerEndpoint {
            endpoint: endpoint.clone(),
            dial: peer_config,
            listen: local_addr,
            id,
        };
        let c = Cluster::start(node, peer, cluster, local, replication)
            .await
            .map_err(|e| ServerError::Cluster(e.to_string()))?;
        let _ = shared.cluster.set(c.clone());
        Ok((Server::serve(endpoint, local_addr, shared), c))
    }

    fn serve(endpoint: quinn::Endpoint, local_addr: SocketAddr, shared: Arc<Shared>) -> Server {
        let ep = endpoint.clone();
        let task = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let permit = shared.connections.clone().try_acquire_owned().ok();
                    let conn = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(error = %e, "handshake failed");
                            return;
                        }
                    };
                    if alpn(&conn).as_deref() == Some(PEER_ALPN) {
                        serve_peer(&shared, conn).await;
                        return;
                    }
                    let Some(_permit) = permit else {
                        conn.close(
                            CLOSE_BUSY.into(),
                            b"busy: the node is at its connection limit",
                        );
                        return;
                    };
                    serve_connection(shared, conn).await;
                });
            }
        });
        Server {
            endpoint,
            local_addr,
            task,
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes every connection and stops accepting new ones.
    pub async fn close(self) {
        self.endpoint
            .close(CLOSE_NORMAL.into(), b"node shutting down");
        self.task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Binds the endpoint: the client protocol and the peer protocol share it.
fn bind(
    files: &TlsFiles,
    listen: SocketAddr,
    limits: ServerLimits,
) -> Result<(quinn::Endpoint, SocketAddr), ServerError> {
    let mut config = tls::server_config(&node_files(files))?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(limits.max_streams_per_connection.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_idle_timeout(Some(
        Duration::from_secs(20)
            .try_into()
            .expect("20 s is a valid idle timeout"),
    ));
    config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::server(config, listen).map_err(|source| ServerError::Bind {
        addr: listen,
        source,
    })?;
    let local_addr = endpoint.local_addr().map_err(|source| ServerError::Bind {
        addr: listen,
        source,
    })?;
    Ok((endpoint, local_addr))
}

/// The ALPN protocol a connection agreed on.
fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// A peer connection: only for a cluster member, only with a node
/// certificate naming its node id (a client certificate of the same CA,
/// or a node certificate without an id, is refused). The driver checks
/// every id the peer claims against the certificate's.
async fn serve_peer(shared: &Shared, conn: quinn::Connection) {
    let certs = conn.peer_identity().and_then(|i| {
        i.downcast::<Vec<quinn::rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    let node_cert = certs
        .as_ref()
        .and_then(|c| c.first())
        .is_some_and(|c| tls::is_node_certificate(c));
    let peer_id = certs
        .as_ref()
        .and_then(|c| c.first())
        .and_then(tls::node_id_of);
    let Some(cluster) = shared.cluster.get() else {
        conn.close(CLOSE_REFUSED.into(), b"this node is not in a cluster");
        return;
    };
    let Some(peer_id) = peer_id.filter(|_| node_cert) else {
        tracing::warn!(remote = %conn.remote_address(), "peer refused: not a node certificate naming a node id");
        conn.close(
            CLOSE_REFUSED.into(),
            b"refused: not a cluster node certificate naming a node id",
        );
        return;
    };
    cluster.serve_peer(conn, peer_id).await;
}

struct Shared {
    node: Node,
    /// Set when the node is a cluster member.
    cluster: OnceLock<Cluster>,
    connections: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    /// Memory for client request frames being read and served.
    frames: FrameBudget,
    name: String,
    /// Touched when a request is read and when it is answered.
    awake: Option<KeepAwake>,
}

impl Shared {
    fn new(node: Node, limits: ServerLimits, name: String) -> Arc<Shared> {
        Arc::new(Shared {
            node,
            cluster: OnceLock::new(),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            frames: FrameBudget::new(limits.frame_budget.max(MAX_FRAME)),
            name,
            awake: KeepAwake::start(limits.keep_awake),
        })
    }

    /// Notes a request for the keep-awake thread.
    fn keep_awake(&self) {
        if let Some(a) = &self.awake {
            a.touch();
        }
    }
}

/// Serves every stream of a connection inside this one task. Together with
/// the yield before a response while other requests of the connection are
/// in flight (see [`serve_stream`]), the responses that
/// become ready together (one group commit acknowledges many commands) are
/// written in one poll, and quinn packs them into shared packets rather than
/// one packet per response (docs/BENCHMARKS.md). An `ask` to an idle
/// entity runs its guest call on this task too ([`Node::ask`]), so a slow
/// guest call holds up this connection's other streams (never another
/// connection's) for at most the call deadline.
async fn serve_connection(shared: Arc<Shared>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    tracing::debug!(%remote, "client connected");
    let mut streams = FuturesUnordered::new();
    let busy = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => streams.push(serve_stream(shared.clone(), busy.clone(), send, recv)),
                Err(e) => {
                    tracing::debug!(%remote, reason = %e, "client gone");
                    break;
                }
            },
            Some(()) = streams.next(), if !streams.is_empty() => {}
        }
    }
}

async fn serve_stream(
    shared: Arc<Shared>,
    busy: Arc<AtomicUsize>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    loop {
        let (req, _frame): (Request, _) =
            match read_frame_admitted(&mut recv, MAX_FRAME, &shared.frames).await {
                Ok(r) => r,
                Err(FrameError::Finished) => break,
                Err(FrameError::Stream(_)) => break,
                Err(e @ FrameError::OverBudget { .. }) => {
                    let _ = write_frame(&mut send, &Response::Error(ApiError::Busy(e.to_string())))
                        .await;
                    let _ = recv.stop(0u32.into());
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bad frame from a client");
                    let _ = write_frame(
                        &mut send,
                        &Response::Error(ApiError::BadRequest(e.to_string())),
                    )
                    .await;
                    let _ = recv.stop(0u32.into());
                    break;
                }
            };
        match req {
            Request::FollowLifecycle => {
                follow_lifecycle(&shared, &mut send).await;
                break;
            }
            Request::FollowEvents {
                entity_type,
                cursor,
            } => {
                follow_events(&shared, &mut send, &entity_type, cursor).await;
                break;
            }
            req => {
                shared.keep_awake();
                busy.fetch_add(1, Ordering::Relaxed);
                let resp = match shared.in_flight.clone().try_acquire_owned() {
                    Ok(_permit) => dispatch(&shared, req).await,
                    Err(_) => Response::Error(ApiError::Busy(
                        "too many requests in flight; retry later".into(),
                    )),
                };
                // While other requests of this connection are in flight, let
                // the responses that are ready now (the rest of a group
                // commit) catch up, so that they are written together. A lone
                // request is answered at once.
                if busy.fetch_sub(1, Ordering::Relaxed) > 1 {
                    tokio::task::yield_now().await;
                }
                shared.keep_awake();
                if write_frame(&mut send, &resp).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = send.finish();
}

fn type_info(node: &Node, d: &Deployment) -> TypeInfo {
    TypeInfo {
        entity_type: d.entity_type.clone(),
        deploy: d.deploy,
        behavior: d.behavior.clone(),
        behavior_version: d.behavior_version.clone(),
        state_schema: d.state_schema,
        hash: d.hash.clone(),
        deployed_ms: d.deployed_ms,
        live_entities: node.live_entities(&d.entity_type) as u64,
    }
}

/// A request of a cluster member goes through the cluster (entity
/// requests to their owner, the cluster's own requests); anything else,
/// and everything on a single node, is served here.
async fn dispatch(shared: &Shared, req: Request) -> Response {
    match (shared.cluster.get(), req) {
        (Some(c), req) if Cluster::routes(&req) => c.handle(req).await,
        (Some(c), req @ (Request::Deploy { check: false, .. } | Request::Rollback { .. })) => {
            let (entity_type, rollback) = match &req {
                Request::Deploy { entity_type, .. } => (entity_type.clone(), false),
                Request::Rollback { entity_type, .. } => (entity_type.clone(), true),
                _ => (String::new(), false),
            };
            let resp = handle(shared, req).await;
            if let Response::Deployed {
                info: Some(info),
                changed: true,
                ..
            } = &resp
            {
                // Validated here; now the whole cluster switches to it.
                if let Err(e) = c
                    .publish_deploy(
                        &entity_type,
                        info.deploy,
                        &info.hash,
                        &info.behavior_version,
                        rollback,
                    )
                    .await
                {
                    return Response::Error(ApiError::Unavailable(format!(
                        "deployed on this node, but not committed cluster-wide: {e}"
                    )));
                }
            }
            resp
        }
        (Some(c), Request::ClusterStatus) => Response::ClusterStatus(c.status().await),
        (Some(c), Request::ClusterLeave) => {
            c.leave_in_background();
            Response::Leaving
        }
        (None, Request::ClusterStatus | Request::ClusterLeave) => Response::Error(
            ApiError::BadRequest("this node is not part of a cluster".into()),
        ),
        (_, req) => handle(shared, req).await,
    }
}

async fn handle(shared: &Shared, req: Request) -> Response {
    let node = &shared.node;
    let result = match req {
        Request::Hello { version } => hello(version, &shared.name),
        Request::Deploy {
            entity_type,
            wasm,
            check,
        } => node
            .deploy_checked(&entity_type, wasm, check)
            .await
            .map(|r| deployed(node, r))
            .map_err(deploy_error),
        Request::Rollback { entity_type, to } => node
            .rollback(&entity_type, to)
            .await
            .map(|r| deployed(node, r))
            .map_err(deploy_error),
        Request::Versions { entity_type } => {
            let v = node.versions(&entity_type);
            if v.deploys.is_empty() {
                Err(ApiError::UnknownEntityType(entity_type))
            } else {
                Ok(Response::Versions {
                    versions: v.deploys.iter().map(|d| type_info(node, d)).collect(),
                    active: v.active,
                    history: v.records.iter().map(deploy_record).collect(),
                })
            }
        }
        Request::Ask {
            entity_type,
            entity_id,
            command,
            expected_seq,
            timeout_ms,
        } => {
            ask(
                node,
                &entity_type,
                &entity_id,
                command,
                expected_seq,
                timeout_ms,
            )
            .await
        }
        Request::Deliver {
            entity_type,
            entity_id,
            command,
            from_type,
            from_id,
            send,
        } => {
            let from = cairn_host::placement::SendId {
                from: cairn_store::EntityKey::new(from_type, from_id),
                seq: send,
            };
            node.deliver_send(&entity_type, &entity_id, command, from, DELIVER_TIMEOUT)
                .await
                .map(|r| Response::Reply {
                    reply: r.reply.map(Payload::Bytes),
                    seq: r.seq,
                })
                .map_err(ask_error)
        }
        Request::Tell {
            entity_type,
            entity_id,
            command,
        } => match encode(node, &entity_type, command) {
            Ok(bytes) => node
                .tell(&entity_type, &entity_id, bytes)
                .await
                .map(|()| Response::Queued)
                .map_err(ask_error),
            Err(e) => Err(e),
        },
        Request::Events {
            entity_type,
            entity_id,
            from,
            to,
            limit,
        } => {
            let limit = limit.min(MAX_EVENTS_PER_REQUEST) as usize;
            if node.descriptor(&entity_type).is_none() {
                return Response::Error(ApiError::UnknownEntityType(entity_type));
            }
            match node.events(&entity_type, &entity_id, from, to, limit).await {
                Ok(events) => Ok(Response::Events(
                    events
                        .into_iter()
                        .map(|e| event_view(node, &entity_type, &entity_id, e))
                        .collect(),
                )),
                Err(e) => Err(read_error(e)),
            }
        }
        Request::State {
            entity_type,
            entity_id,
            at,
        } => state(node, &entity_type, &entity_id, at).await,
        Request::Types => Ok(Response::Types(
            node.deployments()
                .iter()
                .map(|d| type_info(node, d))
                .collect(),
        )),
        Request::EncodeCommand { entity_type, json } => node
            .command_from_json(&entity_type, &json)
            .map(Response::Encoded)
            .map_err(read_error),
        Request::FollowLifecycle | Request::FollowEvents { .. } => Err(ApiError::BadRequest(
            "follow requests are handled by the stream loop".into(),
        )),
        // A request of a later protocol version this node does not know.
        _ => Err(ApiError::BadRequest("unknown request".into())),
    };
    result.unwrap_or_else(Response::Error)
}

fn encode(node: &Node, entity_type: &str, command: Payload) -> Result<Vec<u8>, ApiError> {
    match command {
        Payload::Bytes(b) => {
            if node.descriptor(entity_type).is_none() {
                return Err(ApiError::UnknownEntityType(entity_type.to_owned()));
            }
            Ok(b)
        }
        Payload::Json(j) => node.command_from_json(entity_type, &j).map_err(read_error),
        _ => Err(ApiError::BadRequest("unknown payload kind".into())),
    }
}

/// How long a delivered message may wait for its receiver.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(10);

async fn ask(
    node: &Node,
    entity_type: &str,
    entity_id: &str,
    command: Payload,
    expected_seq: Option<u64>,
    timeout_ms: Option<u64>,
) -> Result<Response, ApiError> {
    let json = matches!(command, Payload::Json(_));
    let bytes = encode(node, entity_type, command)?;
    let mut options = AskOptions {
        expected_seq,
        ..AskOptions::default()
    };
    if let Some(ms) = timeout_ms {
        options.timeout = Duration::from_millis(ms.clamp(1, 10 * 60 * 1000));
    }
    let reply = node
        .ask(entity_type, entity_id, bytes, options)
        .await
        .map_err(ask_error)?;
    let payload = match reply.reply {
        None => None,
        Some(b) if json => Some(Payload::Json(
            node.reply_to_json(entity_type, &b).map_err(read_error)?,
        )),
        Some(b) => Some(Payload::Bytes(b)),
    };
    Ok(Response::Reply {
        reply: payload,
        seq: reply.seq,
    })
}

async fn state(
    node: &Node,
    entity_type: &str,
    entity_id: &str,
    at: StateAt,
) -> Result<Response, ApiError> {
    let past = match at {
        StateAt::Now => {
            let (json, seq) = node
                .state_json(entity_type, entity_id)
                .await
                .map_err(read_error)?;
            return Ok(Response::State {
                json,
                seq,
                replayed: 0,
            });
        }
        StateAt::Seq(n) => PastState::Seq(n),
        StateAt::Time(t) => PastState::Time(t),
        _ => return Err(ApiError::BadRequest("unknown kind of state read".into())),
    };
    let h = node
        .state_at(entity_type, entity_id, past)
        .await
        .map_err(read_error)?;
    let json = node
        .state_to_json(entity_type, &h.state)
        .map_err(read_error)?;
    Ok(Response::State {
        json,
        seq: h.seq,
        replayed: h.replayed,
    })
}

fn event_view(
    node: &Node,
    entity_type: &str,
    entity_id: &str,
    e: cairn_store::EventRecord,
) -> EventView {
    EventView {
        entity_type: entity_type.to_owned(),
        entity_id: entity_id.to_owned(),
        seq: e.seq,
        timestamp_ms: e.timestamp_ms,
        behavior_version: e.version,
        json: node.event_to_json(entity_type, &e.payload).ok(),
        bytes: e.payload,
    }
}

fn lifecycle_response(e: LifecycleEvent) -> Response {
    let (kind, entity_type, entity_id, detail) = match e {
        LifecycleEvent::Started {
            entity_type,
            entity_id,
            snapshot_seq,
            replayed,
            seq,
        } => (
            "started",
            entity_type,
            Some(entity_id),
            format!(
                "seq={seq} replayed={replayed} snapshot={}",
                snapshot_seq.map_or("none".to_owned(), |s| s.to_string())
            ),
        ),
        LifecycleEvent::Passivated {
            entity_type,
            entity_id,
        } => ("passivated", entity_type, Some(entity_id), String::new()),
        LifecycleEvent::Stopped {
            entity_type,
            entity_id,
            reason,
        } => ("stopped", entity_type, Some(entity_id), reason),
        LifecycleEvent::Restarted {
            entity_type,
            entity_id,
            reason,
        } => ("restarted", entity_type, Some(entity_id), reason),
        LifecycleEvent::DeadLetter {
            entity_type,
            entity_id,
            reason,
        } => ("dead-letter", entity_type, Some(entity_id), reason),
        LifecycleEvent::Unhandled {
            entity_type,
            entity_id,
            reason,
        } => ("unhandled", entity_type, Some(entity_id), reason),
        LifecycleEvent::Deployed {
            entity_type,
            behavior_version,
        } => (
            "deployed",
            entity_type,
            None,
            format!("version={behavior_version}"),
        ),
        LifecycleEvent::Member { change, node, addr } => (
            change.kind(),
            String::new(),
            None,
            format!("node={node} addr={addr}"),
        ),
    };
    Response::Lifecycle {
        kind: kind.to_owned(),
        entity_type,
        entity_id,
        detail,
    }
}

async fn follow_lifecycle(shared: &Shared, send: &mut quinn::SendStream) {
    let mut rx = shared.node.lifecycle();
    if write_frame(send, &Response::Following).await.is_err() {
        return;
    }
    loop {
        let resp = tokio::select! {
            r = rx.recv() => match r {
                Ok(e) => lifecycle_response(e),
                Err(broadcast::error::RecvError::Lagged(n)) => Response::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = send.stopped() => break,
        };
        if write_frame(send, &resp).await.is_err() {
            break;
        }
    }
}

async fn follow_events(
    shared: &Shared,
    send: &mut quinn::SendStream,
    entity_type: &str,
    mut cursor: u64,
) {
    let node = &shared.node;
    if node.descriptor(entity_type).is_none() {
        let _ = write_frame(
            send,
            &Response::Error(ApiError::UnknownEntityType(entity_type.to_owned())),
        )
        .await;
        return;
    }
    if write_frame(send, &Response::Following).await.is_err() {
        return;
    }
    loop {
        let page = match node
            .journal()
            .read_feed(entity_type, cursor, FEED_BATCH)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let _ = write_frame(send, &Response::Error(ApiError::Storage(e.to_string()))).await;
                return;
            }
        };
        let caught_up = page.events.is_empty();
        if !caught_up {
            let events = page
                .events
                .into_iter()
                .map(|(key, e)| event_view(node, &key.entity_type, &key.entity_id, e))
                .collect();
            let resp = Response::Feed {
                events,
                next: page.next,
            };
            if write_frame(send, &resp).await.is_err() {
                return;
            }
        }
        cursor = page.next;
        if caught_up {
            tokio::select! {
                _ = node.appended(Duration::from_millis(200)) => {}
                _ = send.stopped() => return,
            }
        }
    }
}

fn deployed(node: &Node, r: DeployResult) -> Response {
    Response::Deployed {
        info: r.deployment.as_ref().map(|d| type_info(node, d)),
        changed: r.changed,
        report: validation_report(&r.report),
    }
}

/// The protocol's form of a validation report.
fn validation_report(r: &deploy::ValidationReport) -> api::ValidationReport {
    api::ValidationReport {
        sampled: r.sampled,
        events: r.events,
        from_snapshot: r.from_snapshot,
        millis: r.millis,
        failures: r
            .failures
            .iter()
            .map(|f| api::ReplayFailure {
                entity_id: f.entity_id.clone(),
                seq: f.seq,
                error: f.error.clone(),
            })
            .collect(),
        failed: r.failed,
        differences: r
            .differences
            .iter()
            .map(|d| api::StateDifference {
                entity_id: d.entity_id.clone(),
                seq: d.seq,
                active: d.active.clone(),
                candidate: d.candidate.clone(),
            })
            .collect(),
        differing: r.differing,
        exemplars: r.exemplars,
        exemplars_not_kept: r.exemplars_not_kept,
    }
}

/// The protocol's form of a deploy-history entry.
fn deploy_record(r: &registry::DeployRecord) -> api::DeployRecord {
    api::DeployRecord {
        entity_type: r.entity_type.clone(),
        action: match r.action {
            registry::DeployAction::Deploy => api::DeployAction::Deploy,
            registry::DeployAction::Rollback => api::DeployAction::Rollback,
        },
        deploy: r.deploy,
        hash: r.hash.clone(),
        behavior_version: r.behavior_version.clone(),
        at_ms: r.at_ms,
        outcome: match r.outcome {
            registry::DeployOutcome::Activated => api::DeployOutcome::Activated,
            registry::DeployOutcome::Refused => api::DeployOutcome::Refused,
        },
        report: validation_report(&r.report),
    }
}

/// A certificate directory's node files (`cairn_client::tls::node_files`)
/// as the node's configuration names them ([`TlsFiles`]).
pub fn tls_files(f: NodeFiles) -> TlsFiles {
    TlsFiles {
        ca: f.ca,
        cert: f.cert,
        key: f.key,
    }
}

/// The node's certificate files as `cairn-client` names them.
fn node_files(f: &TlsFiles) -> NodeFiles {
    NodeFiles {
        ca: f.ca.clone(),
        cert: f.cert.clone(),
        key: f.key.clone(),
    }
}

fn deploy_error(e: DeployError) -> ApiError {
    match e {
        DeployError::Refused(report) => {
            ApiError::ValidationFailed(Box::new(validation_report(&report)))
        }
        DeployError::NoSuchVersion(m) => ApiError::BadRequest(format!("no such version: {m}")),
        DeployError::Register(RegisterError::InvalidName(n)) => ApiError::BadRequest(format!(
            "invalid entity type name `{n}`: use letters, digits, '-' and '_' (at most 128)"
        )),
        e => ApiError::DeployRefused(e.to_string()),
    }
}

/// The protocol's error for a failed ask or tell.
fn ask_error(e: AskError) -> ApiError {
    match e {
        AskError::UnknownEntityType(t) => ApiError::UnknownEntityType(t),
        AskError::InvalidEntityId(m) => ApiError::BadRequest(format!("invalid entity id: {m}")),
        AskError::Timeout(d) => ApiError::Timeout {
            ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        },
        AskError::Conflict { expected, actual } => ApiError::Conflict { expected, actual },
        AskError::Rejected(r) => ApiError::Rejected(r),
        AskError::MalformedCommand(m) => ApiError::MalformedCommand(m),
        AskError::MailboxFull => ApiError::MailboxFull,
        AskError::EntityStopped(reason) => ApiError::Stopped { reason },
        AskError::Guest(fault) => guest_fault(fault),
        // The write may be on a replica (or in the file, unsynced): it may
        // still become part of the history.
        AskError::Journal(JournalError::Indeterminate(m)) => ApiError::Indeterminate(m),
        // Every other journal error stored nothing (a refusal before any
        // replica was sent the write, or a local write that failed).
        AskError::Journal(e) => ApiError::Storage(e.to_string()),
        AskError::ShuttingDown => ApiError::ShuttingDown,
        AskError::NotHere(why) => ApiError::Unavailable(why),
    }
}

/// The answer to a `Hello`: welcome in this node's protocol version, or a
/// `BadRequest` (whose position every version keeps) naming both versions.
fn hello(version: u32, node: &str) -> Result<Response, ApiError> {
    if version == PROTOCOL_VERSION {
        Ok(Response::Welcome {
            version: PROTOCOL_VERSION,
            node: node.to_owned(),
        })
    } else {
        Err(ApiError::BadRequest(format!(
            "protocol version {version} is not supported; this node speaks {PROTOCOL_VERSION} \
             (use a client of the node's release)"
        )))
    }
}

/// The protocol's error for a failed read or conversion.
fn read_error(e: ReadError) -> ApiError {
    match e {
        ReadError::UnknownEntityType(t) => ApiError::UnknownEntityType(t),
        ReadError::Journal(e) => ApiError::Storage(e.to_string()),
        // The behavior could not render its own bytes: a contract breach.
        ReadError::Codec(message) => ApiError::GuestFault {
            kind: GuestFaultKind::Contract,
            message,
        },
        ReadError::Guest(fault) => guest_fault(fault),
        ReadError::Ask(e) => ask_error(e),
    }
}

/// The protocol's error for a guest fault.
fn guest_fault(fault: GuestFault) -> ApiError {
    let kind = match &fault {
        GuestFault::Deadline(_) => GuestFaultKind::Deadline,
        GuestFault::MemoryLimit(_) => GuestFaultKind::MemoryLimit,
        GuestFault::Trap(_) => GuestFaultKind::Trap,
        GuestFault::Instantiate(_) => GuestFaultKind::Instantiate,
        GuestFault::BadState(_) => GuestFaultKind::BadState,
        GuestFault::Contract(_) => GuestFaultKind::Contract,
    };
    ApiError::GuestFault {
        kind,
        message: fault.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::Retry;

    #[test]
    fn node_errors_become_typed_api_errors() {
        assert_eq!(ask_error(AskError::MailboxFull), ApiError::MailboxFull);
        assert_eq!(ask_error(AskError::ShuttingDown), ApiError::ShuttingDown);
        assert_eq!(
            ask_error(AskError::Timeout(Duration::from_millis(1500))),
            ApiError::Timeout { ms: 1500 }
        );
        assert_eq!(
            ask_error(AskError::EntityStopped("too many restarts".into())),
            ApiError::Stopped {
                reason: "too many restarts".into()
            }
        );
        assert_eq!(
            ask_error(AskError::Guest(GuestFault::Trap("unreachable".into()))),
            ApiError::GuestFault {
                kind: GuestFaultKind::Trap,
                message: "guest trapped: unreachable".into()
            }
        );
        assert!(matches!(
            ask_error(AskError::Guest(GuestFault::BadState("bad bytes".into()))),
            ApiError::GuestFault {
                kind: GuestFaultKind::BadState,
                ..
            }
        ));
        assert_eq!(
            ask_error(AskError::Journal(JournalError::Io("disk full".into()))),
            ApiError::Storage("I/O error: disk full".into())
        );
        assert_eq!(
            ask_error(AskError::NotHere("shard 3 moved".into())),
            ApiError::Unavailable("shard 3 moved".into())
        );
        assert!(matches!(
            read_error(ReadError::Guest(GuestFault::Deadline(Duration::from_secs(
                1
            )))),
            ApiError::GuestFault {
                kind: GuestFaultKind::Deadline,
                ..
            }
        ));
        assert!(matches!(
            read_error(ReadError::Codec("bad bytes".into())),
            ApiError::GuestFault {
                kind: GuestFaultKind::Contract,
                ..
            }
        ));
    }

    #[test]
    fn a_write_that_may_be_on_a_replica_is_an_unknown_outcome_and_a_refusal_is_not() {
        // Sent to the replicas (or written, unsynced): outcome unknown.
        let unknown = ask_error(AskError::Journal(JournalError::Indeterminate(
            "e-1: 0 of 1 replica acknowledgements: replica 3 unreachable".into(),
        )));
        assert_eq!(
            unknown,
            ApiError::Indeterminate(
                "e-1: 0 of 1 replica acknowledgements: replica 3 unreachable".into()
            )
        );
        assert!(unknown.may_have_applied());
        assert_eq!(unknown.retry(), Retry::WithExpectedSeq);
        // Refused before anything was sent, or a local failure: nothing
        // stored, safe to send again.
        let key = cairn_store::EntityKey::new("t", "e-1");
        for e in [
            JournalError::Replication("min_acks is 2 but shard 3 has 1 live replicas".into()),
            JournalError::Fenced("e-1: this node's lease lapsed".into()),
            JournalError::Conflict { key, seq: 4 },
            JournalError::Io("No space left on device".into()),
        ] {
            let api = ask_error(AskError::Journal(e.clone()));
            assert_eq!(api, ApiError::Storage(e.to_string()));
            assert!(!api.may_have_applied(), "{e}");
            assert_eq!(api.retry(), Retry::Later, "{e}");
        }
        // A timeout may still run: the same advice as an unknown outcome.
        assert_eq!(
            ask_error(AskError::Timeout(Duration::from_secs(1))).retry(),
            Retry::WithExpectedSeq
        );
    }

    #[test]
    fn an_older_client_is_told_which_version_the_node_speaks() {
        assert_eq!(
            hello(PROTOCOL_VERSION, "n1"),
            Ok(Response::Welcome {
                version: PROTOCOL_VERSION,
                node: "n1".into()
            })
        );
        let Err(ApiError::BadRequest(m)) = hello(3, "n1") else {
            panic!("a version-3 hello was not refused");
        };
        assert!(
            m.contains("protocol version 3 is not supported")
                && m.contains(&format!("speaks {PROTOCOL_VERSION}")),
            "{m}"
        );
    }

    #[test]
    fn keep_awake_is_off_by_default() {
        assert_eq!(ServerLimits::default().keep_awake, Duration::ZERO);
    }
}
