//! The node-to-node protocol on the node's one QUIC endpoint (ALPN
//! `cairn-peer/1`, mutual TLS, node certificates only): its messages, a
//! pool of outgoing connections, and the fault layer tests partition with.
//!
//! A call is a request frame and its answer on a bidirectional stream,
//! which is kept for later calls; a shard fetch has a stream of its own
//! (one request, many answer frames); gossip and heartbeats are QUIC datagrams. A
//! node only ever *sends* datagrams on connections it dialed and reads
//! them on connections it accepted.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cairn_client::frame::{FrameBudget, read_frame_waiting, write_frame};
use cairn_client::tls::{NODE_NAME, node_id_of};
use cairn_proto::{FrameError, MAX_FRAME, Request, Response};
use cairn_raft::Command;
use cairn_store::{EntityKey, EventRecord, Journal, JournalError};
use quinn::rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// How long a dial may take before the peer counts as unreachable.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// The peer protocol's version, checked when a node introduces itself
/// ([`PeerRequest::Hello`]); members of a cluster must speak the same one.
/// Bumped on any change of the layout of [`PeerRequest`] or
/// [`PeerResponse`] (their frames are committed in
/// `host/driver/tests/fixtures/peer`).
pub(crate) const PEER_PROTOCOL_VERSION: u32 = 7;

/// About the most bytes of events one frame of history carries (a handoff,
/// a failover's fetch, a replica's gap, a read-back), so an entity's
/// history of any size moves in bounded frames; one event larger than this
/// travels alone.
pub(crate) const HISTORY_CHUNK: usize = 4 * 1024 * 1024;

/// Events of `key` with `from <= seq <= to`, ascending, until about
/// [`HISTORY_CHUNK`] bytes (at least one event if there is any).
pub(crate) async fn read_chunk(
    journal: &Arc<dyn Journal>,
    key: &EntityKey,
    from: u64,
    to: u64,
) -> Result<Vec<EventRecord>, JournalError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut next = from;
    while next <= to && bytes < HISTORY_CHUNK {
        let page = journal.read(key, next, to, 16).await?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        next = last + 1;
        for e in page {
            bytes += e.payload.len() + e.version.len() + 16;
            next = e.seq + 1;
            out.push(e);
            if bytes >= HISTORY_CHUNK {
                break;
            }
        }
    }
    Ok(out)
}

/// Events as (seq, timestamp ms, behavior version, payload), their payloads
/// encoded by `serde_bytes` as one run of bytes rather than element by
/// element (postcard writes both alike, a length and the bytes, so the
/// wire format is that of the plain tuples; element by element costs a
/// call chain per byte, most of a replicated 1 MiB write's CPU in a debug
/// build). Decision-log messages and components are encoded the same way.
mod events {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Event = (u64, u64, String, Vec<u8>);

    #[derive(Serialize)]
    struct Ref<'a>(u64, u64, &'a str, #[serde(with = "serde_bytes")] &'a [u8]);

    #[derive(Deserialize)]
    struct Owned(u64, u64, String, #[serde(with = "serde_bytes")] Vec<u8>);

    pub(super) fn serialize<S: Serializer>(v: &[Event], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            v.iter()
                .map(|(seq, ts, version, payload)| Ref(*seq, *ts, version, payload)),
        )
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
        let events = Vec::<Owned>::deserialize(d)?;
        Ok(events
            .into_iter()
            .map(|Owned(seq, ts, version, payload)| (seq, ts, version, payload))
            .collect())
    }
}

/// A request from one node to another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Who are you? (The gossip identity, to announce to a seed.) With
    /// the asker's [`PEER_PROTOCOL_VERSION`]: a peer of another version
    /// answers [`PeerFailure::Version`].
    Hello {
        /// The asker's peer protocol version.
        version: u32,
    },
    /// A node asks to join; the receiver passes it on to the log's leader.
    Join {
        /// The new node.
        node: u64,
        /// Its peer address.
        addr: String,
    },
    /// A decision-log message (opaque to this layer).
    Raft(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Commit a command through the leader (from a node that is not it).
    Propose(Command),
    /// A client request for an entity of `shard`, which the sender's table
    /// says this node owns.
    Forward {
        /// The shard.
        shard: u32,
        /// The epoch of the sender's table: a receiver with an older table
        /// first waits for its own to catch up.
        epoch: u64,
        /// The client's request.
        request: Request,
    },
    /// The coordinator asks the owner to stop serving these shards before
    /// their move is committed (it answers once the commands in flight are
    /// done and the entities passivated). They stay released until the
    /// owner's table reaches `epoch`: the move applied, or a committed
    /// settle shows it never will.
    Release {
        /// The shards.
        shards: Vec<u32>,
        /// The newest epoch of the move's batch of decisions.
        epoch: u64,
    },
    /// The new owner asks for a shard's history: answered by a stream of
    /// [`PeerResponse::Entity`] frames, then [`PeerResponse::Done`].
    FetchShard {
        /// The shard.
        shard: u32,
        /// The table's shard count (so both sides hash alike).
        shard_count: u32,
    },
    /// Renew the sender's lease (sent to the log's leader).
    Lease {
        /// The sender.
        node: u64,
    },
    /// A node that is leaving asks the log's leader to remove it.
    Leave {
        /// The node.
        node: u64,
    },
    /// Load figures for `cluster status`.
    Info,
    /// A primary's write for this node as a replica of `shard`.
    Replicate {
        /// The shard.
        shard: u32,
        /// The epoch of the shard's allocation the primary writes under.
        epoch: u64,
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The primary's event just before the first of `events`, as
        /// (seq, the digest of `replicate::event_digest`): the replica appends
        /// only onto the same event (else its copy holds a write that was
        /// never acknowledged, and is reconciled first). `None` when the
        /// events start at #1 or there are none.
        prev: Option<(u64, u32)>,
        /// The events, ascending, as (seq, timestamp ms, behavior version, payload).
        #[serde(with = "events")]
        events: Vec<(u64, u64, String, Vec<u8>)>,
        /// Durable timers the write adds, as (timer id, fire at ms, command).
        add_timers: Vec<(u64, u64, Vec<u8>)>,
        /// Ids of the entity's timers the write deletes (fired).
        remove_timers: Vec<u64>,
        /// Where the primary's timers of the entity stood before the write
        /// (`cairn_cluster::timers::Position` as writes, chain, stale): the
        /// replica takes the write only if its copy stands there too, else
        /// answers [`PeerResponse::TimersDiffer`]. `None` for a chunk of a
        /// gap fill (events without their timer changes).
        timers_at: Option<(u64, u32, bool)>,
        /// `add_timers` is the entity's whole timer set after the write:
        /// the replica drops the timers it holds beyond it (no position
        /// check).
        whole_timers: bool,
    },
    /// A primary's truncation of an entity for this node as a replica of
    /// `shard` (fenced like [`PeerRequest::Replicate`]).
    Truncate {
        /// The shard.
        shard: u32,
        /// The epoch of the shard's allocation the primary writes under.
        epoch: u64,
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Events above this sequence number go.
        after: u64,
    },
    /// A part of one entity's history (a primary reading back what its
    /// replicas hold after a write of it failed): its events from `from`
    /// on, about [`HISTORY_CHUNK`] bytes of them at most, answered by
    /// [`PeerResponse::Entity`] (no events: nothing from `from` on).
    FetchEntity {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The first sequence number wanted.
        from: u64,
    },
    /// A component by its sha256, for a cluster-wide deploy.
    Component {
        /// Hex sha256.
        sha256: String,
    },
    /// Several [`PeerRequest::Replicate`] writes of one primary, appended
    /// concurrently (so the replica's group commit makes them durable
    /// together) and answered one by one in a [`PeerResponse::Batch`]; an
    /// item that is not a `Replicate` is answered `BadRequest`.
    ReplicateBatch(Vec<PeerRequest>),
}

/// One entity's history in a [`PeerRequest::FetchShard`] answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EntityHistory {
    /// Entity type.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: String,
    /// Its events, ascending, as (seq, timestamp ms, behavior version, payload).
    #[serde(with = "events")]
    pub events: Vec<(u64, u64, String, Vec<u8>)>,
    /// Its pending durable timers as (timer id, fire at ms, command): sent
    /// by a shard's owner in a handoff; empty from a replica (timers are
    /// not replicated).
    pub timers: Vec<(u64, u64, Vec<u8>)>,
}

/// Why a peer refused or failed a call ([`PeerResponse::Failed`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerFailure {
    /// The request could not be decoded, or is not answered this way.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No decision-log leader is known yet, or leadership is changing.
    #[error("no decision-log leader now: {0}")]
    NoLeader(String),
    /// The decision log did not commit the change.
    #[error("decision log: {0}")]
    Log(String),
    /// The shard is still served here (a fetch before its release).
    #[error("shard {0} is still served here")]
    StillServed(u32),
    /// A shard could not be released.
    #[error("release: {0}")]
    Release(String),
    /// This node has no component with that sha256.
    #[error("no component {0} here")]
    NoComponent(String),
    /// The local journal failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A replica could not take a write: its copy could not be
    /// reconciled with the owner's, or its appends kept conflicting.
    #[error("replica: {0}")]
    Replica(String),
    /// A peer this call needed (the leader) could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The asker speaks another version of the peer protocol.
    #[error("peer protocol version {theirs} is not this node's {ours}")]
    Version {
        /// This node's version.
        ours: u32,
        /// The asker's.
        theirs: u32,
    },
    /// The asker's request names another node than the one its
    /// certificate names (a join, a lease, a leave for someone else).
    #[error("node {certified} cannot speak for node {claimed}")]
    Identity {
        /// The node id the asker's certificate names.
        certified: u64,
        /// The node id the request names.
        claimed: u64,
    },
    /// The leader refused the asker's proposal (it may not make it).
    #[error("proposal refused: {0}")]
    Refused(cairn_raft::ProposalRefused),
    /// A replica refused a write before storing any of it: it holds other
    /// events where the write goes, and could not drop them (they are not
    /// an unacknowledged tail of the current owner's history).
    #[error("replica refused: {0}")]
    Diverged(String),
    /// A replica stored nothing of a write: reading its copy or appending
    /// to it failed before anything of the write reached its journal (a
    /// full or read-only disk, a poisoned log). Safe to send again.
    #[error("replica stored nothing: {0}")]
    NotStored(String),
}

/// The answer of a call that failed.
pub(crate) fn failed(why: PeerFailure) -> PeerResponse {
    PeerResponse::Failed(why)
}

/// An answer from a peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// The gossip identity: node id and boot.
    Hello {
        /// Node id.
        node: u64,
        /// Its run.
        boot: u64,
        /// Its peer protocol version.
        version: u32,
    },
    /// Done, nothing to add.
    Done,
    /// It failed, and why.
    Failed(PeerFailure),
    /// Not the decision log's leader; the leader's address if known.
    NotLeader(Option<String>),
    /// A decision-log answer.
    Raft(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The answer to a forwarded request.
    Response(Response),
    /// Not the owner of the shard: the owner's node id, by this node's table.
    Redirect(u64),
    /// A lease renewal: granted or not, with the granting leader's
    /// committed table epoch (the owner serves only once its own table has
    /// applied it).
    Lease {
        /// Granted?
        granted: bool,
        /// The leader's committed table epoch at the grant.
        epoch: u64,
    },
    /// Load figures.
    Info {
        /// Entities in memory.
        live_entities: u64,
    },
    /// A part of a shard's history.
    Entity(EntityHistory),
    /// A component's bytes.
    Component(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A replica lacks events before the write: it has up to this seq.
    Gap(u64),
    /// A replica refused a write of an older epoch: the newest it knows.
    Fenced(u64),
    /// The answers to a [`PeerRequest::ReplicateBatch`], in its order.
    Batch(Vec<PeerResponse>),
    /// A replica's timers of the entity do not stand where the primary's
    /// did before the write (it missed a write of timers only, holds one
    /// that was never acknowledged, or had a gap filled): nothing was
    /// stored; the primary sends the write again with its timers whole.
    TimersDiffer,
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer could not be reached (dial failed, connection lost, or
    /// the fault layer cut it).
    #[error("peer {0} unreachable: {1}")]
    Unreachable(SocketAddr, String),
    /// The peer answered something undecodable.
    #[error("peer {0}: bad answer: {1}")]
    Protocol(SocketAddr, String),
    /// The call took too long, before the request was all sent.
    #[error("peer {0}: no answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    /// The request was sent, then no answer came (the connection was lost,
    /// the stream closed, or the timeout passed): the peer may have acted
    /// on it.
    #[error("peer {0}: the request was sent, then {1}")]
    NoAnswer(SocketAddr, String),
}

impl PeerError {
    /// The same failure again (each write of a lost batch gets one).
    pub(crate) fn again(&self) -> PeerError {
        match self {
            PeerError::Unreachable(a, w) => PeerError::Unreachable(*a, w.clone()),
            PeerError::Protocol(a, w) => PeerError::Protocol(*a, w.clone()),
            PeerError::Timeout(a, d) => PeerError::Timeout(*a, *d),
            PeerError::NoAnswer(a, w) => PeerError::NoAnswer(*a, w.clone()),
        }
    }

    /// Whether the peer may have received the request and acted on it:
    /// the failure came after the whole request was written.
    pub fn after_sending(&self) -> bool {
        matches!(self, PeerError::NoAnswer(..) | PeerError::Protocol(..))
    }
}

/// The fault layer: peers this node neither sends to nor hears from. Used
/// by tests to partition a cluster of real processes on one machine.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: RwLock<HashSet<SocketAddr>>,
}

impl Faults {
    /// Is traffic with `addr` cut?
    pub fn is_blocked(&self, addr: SocketAddr) -> bool {
        self.blocked
            .read()
            .map(|b| b.contains(&addr))
            .unwrap_or(false)
    }

    /// Replaces the set of cut peers.
    pub fn set(&self, blocked: HashSet<SocketAddr>) {
        if let Ok(mut b) = self.blocked.write() {
            *b = blocked;
        }
    }
}

/// Outgoing connections to peers, one per address, dialed on demand.
pub struct Peers {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    /// The node id each dialed peer's certificate names.
    ids: Mutex<HashMap<SocketAddr, u64>>,
    /// The memory the answers being read may take: an answer's announced
    /// size is taken from it before its bytes are read.
    answers: FrameBudget,
    /// Idle call streams per connection (by its stable id), reused so that
    /// a call costs no stream setup.
    idle: Mutex<HashMap<usize, Vec<(quinn::SendStream, quinn::RecvStream)>>>,
    /// The fault layer.
    pub faults: Arc<Faults>,
}

impl Peers {
    /// A pool dialing from `endpoint` with the node's peer configuration.
    pub fn new(endpoint: quinn::Endpoint, mut config: quinn::ClientConfig) -> Peers {
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_millis(500)));
        if let Ok(idle) = Duration::from_secs(3).try_into() {
            transport.max_idle_timeout(Some(idle));
        }
        transport.max_concurrent_uni_streams(0u32.into());
        config.transport_config(Arc::new(transport));
        Peers {
            endpoint,
            config,
            conns: Mutex::new(HashMap::new()),
            ids: Mutex::new(HashMap::new()),
            answers: FrameBudget::new(ANSWER_BUDGET),
            idle: Mutex::new(HashMap::new()),
            faults: Arc::new(Faults::default()),
        }
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, PeerError> {
        if self.faults.is_blocked(addr) {
            return Err(PeerError::Unreachable(
                addr,
                "cut by the fault layer".into(),
            ));
        }
        if let Some(c) = self.cached(addr) {
            return Ok(c);
        }
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, NODE_NAME)
            .map_err(|e| PeerError::Unreachable(addr, e.to_string()))?;
        let conn = tokio::time::timeout(DIAL_TIMEOUT, connecting)
            .await
            .map_err(|_| PeerError::Unreachable(addr, "dial timed out".into()))?
            .map_err(|e| PeerError::Unreachable(addr, e.to_string()))?;
        // The handshake checked the certificate against the CA; a member
        // is a node certificate naming its node id.
        let certified = conn
            .peer_identity()
            .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|c| c.first().and_then(node_id_of));
        let Some(id) = certified else {
            conn.close(0u32.into(), b"not a node certificate naming a node id");
            return Err(PeerError::Unreachable(
                addr,
                "its certificate names no node id".into(),
            ));
        };
        if let Ok(mut m) = self.ids.lock() {
            m.insert(addr, id);
        }
        if let Ok(mut m) = self.conns.lock() {
            m.insert(addr, conn.clone());
        }
        Ok(conn)
    }

    /// The node id the certificate of the peer last dialed at `addr` names.
    pub fn node_at(&self, addr: SocketAddr) -> Option<u64> {
        self.ids.lock().ok()?.get(&addr).copied()
    }

    fn cached(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        let mut m = self.conns.lock().ok()?;
        match m.get(&addr) {
            Some(c) if c.close_reason().is_none() => Some(c.clone()),
            Some(c) => {
                let id = c.stable_id();
                m.remove(&addr);
                if let Ok(mut idle) = self.idle.lock() {
                    idle.remove(&id);
                }
                None
            }
            None => None,
        }
    }

    fn forget(&self, addr: SocketAddr) {
        let gone = self.conns.lock().ok().and_then(|mut m| m.remove(&addr));
        if let (Some(c), Ok(mut idle)) = (gone, self.idle.lock()) {
            idle.remove(&c.stable_id());
        }
    }

    /// Opens a call: sends `req` and returns the stream to read answers from.
    pub async fn open(
        &self,
        addr: SocketAddr,
        req: &PeerRequest,
    ) -> Result<quinn::RecvStream, PeerError> {
        let conn = self.connection(addr).await?;
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.forget(addr);
                return Err(PeerError::Unreachable(addr, e.to_string()));
            }
        };
        write_frame(&mut send, req)
            .await
            .map_err(|e| PeerError::Unreachable(addr, e.to_string()))?;
        let _ = send.finish();
        Ok(recv)
    }

    /// One request, one answer, within `timeout`, on a pooled stream of
    /// the connection (a stream that failed is dropped, never reused; a
    /// call is never sent twice).
    pub async fn call(
        &self,
        addr: SocketAddr,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        // Set once the whole request is written: a failure after that may
        // follow the peer's acting on it.
        let mut sent = false;
        let call = async {
            let conn = self.connection(addr).await?;
            let pooled = self
                .idle
                .lock()
                .ok()
                .and_then(|mut m| m.get_mut(&conn.stable_id()).and_then(Vec::pop));
            let (mut send, mut recv) = match pooled {
                Some(s) => s,
                None => match conn.open_bi().await {
                    Ok(s) => s,
                    Err(e) => {
                        self.forget(addr);
                        return Err(PeerError::Unreachable(addr, e.to_string()));
                    }
                },
            };
            write_frame(&mut send, req)
                .await
                .map_err(|e| PeerError::Unreachable(addr, e.to_string()))?;
            sent = true;
            let answer = self
                .read_answer(addr, &mut recv)
                .await
                .map_err(|e| match e {
                    PeerError::Unreachable(a, why) => PeerError::NoAnswer(a, why),
                    e => e,
                })?;
            if let Ok(mut m) = self.idle.lock() {
                let pool = m.entry(conn.stable_id()).or_default();
                if pool.len() < 64 {
                    pool.push((send, recv));
                }
            }
            Ok(answer)
        };
        let answer = tokio::time::timeout(timeout, call).await;
        match answer {
            Ok(r) => r,
            Err(_) if sent => Err(PeerError::NoAnswer(
                addr,
                format!("no answer within {timeout:?}"),
            )),
            Err(_) => Err(PeerError::Timeout(addr, timeout)),
        }
    }

    /// Sends a datagram (gossip, heartbeat), dialing first if needed; lost
    /// silently if the peer cannot be reached (gossip copes with loss).
    pub async fn datagram(&self, addr: SocketAddr, data: Vec<u8>) {
        match self.connection(addr).await {
            Ok(c) => {
                if c.send_datagram(data.into()).is_err() {
                    self.forget(addr);
                }
            }
            Err(e) => tracing::trace!(%addr, error = %e, "datagram not sent"),
        }
    }

    /// Closes every connection.
    pub fn close(&self) {
        if let Ok(mut m) = self.conns.lock() {
            for (_, c) in m.drain() {
                c.close(0u32.into(), b"leaving");
            }
        }
    }
}

impl Peers {
    /// Reads one answer frame of a call, admitted against the budget of
    /// answers being read.
    pub async fn read_answer(
        &self,
        addr: SocketAddr,
        recv: &mut quinn::RecvStream,
    ) -> Result<PeerResponse, PeerError> {
        answer_of(
            addr,
            read_frame_waiting(recv, MAX_FRAME, &self.answers)
                .await
                .map(|(r, _)| r),
        )
    }
}

/// The memory answers being read from peers may take at once.
const ANSWER_BUDGET: usize = 8 * MAX_FRAME;

fn answer_of(
    addr: SocketAddr,
    read: Result<PeerResponse, FrameError>,
) -> Result<PeerResponse, PeerError> {
    match read {
        Ok(r) => Ok(r),
        Err(FrameError::Stream(e)) => Err(PeerError::Unreachable(addr, e)),
        Err(FrameError::Finished) => Err(PeerError::Unreachable(
            addr,
            "stream closed before an answer".into(),
        )),
        Err(e) => Err(PeerError::Protocol(addr, e.to_string())),
    }
}

/// Writes one answer frame.
pub async fn write_answer(send: &mut quinn::SendStream, answer: &PeerResponse) -> bool {
    write_frame(send, answer).await.is_ok()
}

#[cfg(test)]
mod fixtures {
    //! Frozen frames of the peer protocol: `host/driver/tests/fixtures/peer/*.bin`
    //! holds one committed frame (header included) per request and answer
    //! below. Members of a cluster run the same build (a rolling upgrade to
    //! an incompatible layout is not supported yet), but a change of layout
    //! must be deliberate: this test fails on any. Regenerate with
    //! `CAIRN_BLESS_FIXTURES=1 cargo test -p cairn-driver --lib fixtures`.

    use std::path::PathBuf;

    use cairn_proto::{HEADER_LEN, Payload, decode, encode};
    use serde::de::DeserializeOwned;

    use super::*;

    fn requests() -> Vec<(&'static str, PeerRequest)> {
        vec![
            ("request-hello", PeerRequest::Hello { version: 2 }),
            (
                "request-join",
                PeerRequest::Join {
                    node: 7,
                    addr: "127.0.0.3:7100".into(),
                },
            ),
            ("request-raft", PeerRequest::Raft(vec![1, 2, 3])),
            (
                "request-propose",
                PeerRequest::Propose(Command::Init { shards: 256 }),
            ),
            (
                "request-propose-decide",
                PeerRequest::Propose(Command::Decide(vec![cairn_cluster::Decision::Assign {
                    shard: cairn_cluster::ShardId(5),
                    owner: cairn_cluster::NodeId(2),
                    epoch: 12,
                    replicas: cairn_cluster::Replicas::new([
                        cairn_cluster::NodeId(3),
                        cairn_cluster::NodeId(1),
                    ]),
                }])),
            ),
            (
                "request-propose-settle",
                PeerRequest::Propose(Command::Settle { epoch: 12 }),
            ),
            (
                "request-propose-replicas",
                PeerRequest::Propose(Command::Replicas {
                    shard: 5,
                    epoch: 12,
                    changes: 1,
                    replicas: cairn_cluster::Replicas::new([cairn_cluster::NodeId(4)]),
                }),
            ),
            (
                "request-forward",
                PeerRequest::Forward {
                    shard: 3,
                    epoch: 41,
                    request: Request::Ask {
                        entity_type: "counter".into(),
                        entity_id: "c-1".into(),
                        command: Payload::Json(r#""Get""#.into()),
                        expected_seq: Some(2),
                        timeout_ms: None,
                    },
                },
            ),
            (
                "request-release",
                PeerRequest::Release {
                    shards: vec![1, 9],
                    epoch: 12,
                },
            ),
            (
                "request-fetch-shard",
                PeerRequest::FetchShard {
                    shard: 9,
                    shard_count: 256,
                },
            ),
            ("request-lease", PeerRequest::Lease { node: 7 }),
            ("request-leave", PeerRequest::Leave { node: 7 }),
            ("request-info", PeerRequest::Info),
            (
                "request-replicate",
                PeerRequest::Replicate {
                    shard: 9,
                    epoch: 41,
                    entity_type: "counter".into(),
                    entity_id: "c-1".into(),
                    prev: Some((2, 0x1234_5678)),
                    events: vec![(3, 1_764_000_000_000, "1.0.0".into(), vec![0, 1])],
                    add_timers: vec![(5, 1_764_000_001_000, vec![2])],
                    remove_timers: vec![4],
                    timers_at: Some((2, 0x0bad_cafe, false)),
                    whole_timers: false,
                },
            ),
            (
                "request-replicate-batch",
                PeerRequest::ReplicateBatch(vec![
                    PeerRequest::Replicate {
                        shard: 9,
                        epoch: 41,
                        entity_type: "counter".into(),
                        entity_id: "c-1".into(),
                        prev: None,
                        events: vec![(1, 1_764_000_000_000, "1.0.0".into(), vec![0])],
                        add_timers: Vec::new(),
                        remove_timers: Vec::new(),
                        timers_at: Some((0, 0, false)),
                        whole_timers: false,
                    },
                    PeerRequest::Replicate {
                        shard: 9,
                        epoch: 41,
                        entity_type: "counter".into(),
                        entity_id: "c-2".into(),
                        prev: Some((1, 0x1234_5678)),
                        events: vec![(2, 1_764_000_000_001, "1.0.0".into(), vec![1])],
                        add_timers: Vec::new(),
                        remove_timers: Vec::new(),
                        timers_at: Some((0, 0, false)),
                        whole_timers: false,
                    },
                ]),
            ),
            (
                "request-truncate",
                PeerRequest::Truncate {
                    shard: 9,
                    epoch: 41,
                    entity_type: "counter".into(),
                    entity_id: "c-1".into(),
                    after: 2,
                },
            ),
            (
                "request-fetch-entity",
                PeerRequest::FetchEntity {
                    entity_type: "counter".into(),
                    entity_id: "c-1".into(),
                    from: 65,
                },
            ),
            (
                "request-component",
                PeerRequest::Component {
                    sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                        .into(),
                },
            ),
        ]
    }

    fn responses() -> Vec<(&'static str, PeerResponse)> {
        let mut out = vec![
            (
                "response-hello",
                PeerResponse::Hello {
                    node: 7,
                    boot: 99,
                    version: 1,
                },
            ),
            ("response-done", PeerResponse::Done),
            (
                "response-not-leader",
                PeerResponse::NotLeader(Some("127.0.0.2:7100".into())),
            ),
            ("response-raft", PeerResponse::Raft(vec![4, 5])),
            (
                "response-response",
                PeerResponse::Response(Response::Reply {
                    reply: Some(Payload::Json("3".into())),
                    seq: 3,
                }),
            ),
            ("response-redirect", PeerResponse::Redirect(2)),
            (
                "response-lease",
                PeerResponse::Lease {
                    granted: true,
                    epoch: 41,
                },
            ),
            ("response-info", PeerResponse::Info { live_entities: 12 }),
            (
                "response-entity",
                PeerResponse::Entity(EntityHistory {
                    entity_type: "counter".into(),
                    entity_id: "c-1".into(),
                    events: vec![(1, 1_764_000_000_000, "1.0.0".into(), vec![0, 1])],
                    timers: vec![(5, 1_764_000_001_000, vec![2])],
                }),
            ),
            ("response-component", PeerResponse::Component(vec![0, 97])),
            ("response-gap", PeerResponse::Gap(2)),
            ("response-fenced", PeerResponse::Fenced(42)),
            (
                "response-batch",
                PeerResponse::Batch(vec![
                    PeerResponse::Done,
                    PeerResponse::Gap(2),
                    PeerResponse::Fenced(42),
                ]),
            ),
            ("response-timers-differ", PeerResponse::TimersDiffer),
        ];
        let failures = [
            ("bad-request", PeerFailure::BadRequest("undecodable".into())),
            (
                "not-stored",
                PeerFailure::NotStored("No space left on device".into()),
            ),
            (
                "no-leader",
                PeerFailure::NoLeader("leadership is changing".into()),
            ),
            ("log", PeerFailure::Log("not committed".into())),
            ("still-served", PeerFailure::StillServed(9)),
            ("release", PeerFailure::Release("timed out".into())),
            ("no-component", PeerFailure::NoComponent("9f86".into())),
            ("storage", PeerFailure::Storage("disk full".into())),
            ("replica", PeerFailure::Replica("kept conflicting".into())),
            (
                "unreachable",
                PeerFailure::Unreachable("connection lost".into()),
            ),
            ("version", PeerFailure::Version { ours: 1, theirs: 2 }),
            (
                "identity",
                PeerFailure::Identity {
                    certified: 3,
                    claimed: 4,
                },
            ),
            (
                "refused",
                PeerFailure::Refused(cairn_raft::ProposalRefused::NotItself {
                    sender: 3,
                    named: 4,
                }),
            ),
            (
                "diverged",
                PeerFailure::Diverged("other events at #4".into()),
            ),
        ];
        for (name, f) in failures {
            let name: &'static str = Box::leak(format!("failed-{name}").into_boxed_str());
            out.push((name, PeerResponse::Failed(f)));
        }
        out
    }

    fn check<T: Serialize + DeserializeOwned>(name: &str, value: &T) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("fixtures")
            .join("peer");
        let path = dir.join(format!("{name}.bin"));
        let bytes = encode(value).expect("encodes");
        if std::env::var_os("CAIRN_BLESS_FIXTURES").is_some() {
            std::fs::create_dir_all(&dir).expect("fixture directory");
            std::fs::write(&path, &bytes).expect("fixture written");
        }
        let stored = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (a new message? bless it)", path.display()));
        assert_eq!(bytes, stored, "{name}: the encoding changed");
        let back: T = decode(&stored[HEADER_LEN..]).expect("the stored frame decodes");
        assert_eq!(
            encode(&back).expect("encodes"),
            stored,
            "{name}: round trip"
        );
    }

    #[test]
    fn every_peer_message_keeps_its_frozen_frame() {
        for (name, r) in requests() {
            check(name, &r);
        }
        for (name, r) in responses() {
            check(name, &r);
        }
    }
}
