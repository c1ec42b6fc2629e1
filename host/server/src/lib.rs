//! Cairn's QUIC front door: serves a [`Node`] over QUIC: one quinn
//! endpoint, mutual TLS, the client protocol of `cairn-proto`, with the
//! frame I/O and TLS configuration of the `cairn-client` crate.
//!
//! It is also where a node, its part in a cluster and its server are put
//! together: [`Server::start_cluster`] starts the cluster driver
//! (`cairn-driver`) on the server's endpoint and hands it the peer
//! connections; both answer requests through the node's
//! [`cairn_host::service::Service`] (which translates node errors into
//! [`ApiError`]s), so the driver holds no handle back into the server.
//!
//! Owns connection handling, the per-stream request loop, the streaming
//! requests, and the limits (at most `max_connections` connections: more
//! are closed with "busy"; at most `max_in_flight` requests being served:
//! more are answered [`ApiError::Busy`]). Nothing a client sends can panic the node: bad frames get an
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
use cairn_proto::{ApiError, FrameError, MAX_FRAME, PEER_ALPN, Request, Response};

use cairn_driver::{Cluster, Replication};
use cairn_host::config::{ClusterConfig, TlsFiles};
use cairn_host::node::Node;
use cairn_host::service::{Service, event_view, lifecycle_response};

use crate::awake::KeepAwake;

/// Application error code a node closes a connection with when it is full.
pub const CLOSE_BUSY: u32 = 1;
/// Application error code a node closes a peer connection with when it
/// refuses it (no node certificate, or not in a cluster).
pub const CLOSE_REFUSED: u32 = 2;
/// Application error code of a normal close.
pub const CLOSE_NORMAL: u32 = 0;
/// Most events returned by one `Events` request.
pub use cairn_host::service::MAX_EVENTS_PER_REQUEST;
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
        let peer = cairn_driver::PeerEndpoint {
            endpoint: endpoint.clone(),
            dial: peer_config,
            listen: local_addr,
            id,
        };
        let c = Cluster::start(shared.service.clone(), peer, cluster, replication)
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
    /// The node's answers to requests served here.
    service: Service,
    /// Set when the node is a cluster member.
    cluster: OnceLock<Cluster>,
    connections: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    /// Memory for client request frames being read and served.
    frames: FrameBudget,
    /// Touched when a request is read and when it is answered.
    awake: Option<KeepAwake>,
}

impl Shared {
    fn new(node: Node, limits: ServerLimits, name: String) -> Arc<Shared> {
        Arc::new(Shared {
            service: Service::new(node.clone(), name),
            node,
            cluster: OnceLock::new(),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            frames: FrameBudget::new(limits.frame_budget.max(MAX_FRAME)),
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
            let resp = shared.service.handle(req).await;
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
        (_, req) => shared.service.handle(req).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_awake_is_off_by_default() {
        assert_eq!(ServerLimits::default().keep_awake, Duration::ZERO);
    }
}
