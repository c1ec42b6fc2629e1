//! The log's rpc over a [`RaftTransport`]: one request/response call per
//! rpc, each a frame `MAGIC | crc32 | postcard` of an [`Envelope`] (the
//! target node and openraft's request) or of a [`Reply`]. The checksum and
//! the magic make random or truncated bytes fail decoding instead of
//! reaching raft; a request addressed to another node id is refused.

use std::io;
use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError as OrError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};

use crate::{RaftTransport, TransportError, TypeConfig};

/// First bytes of every frame: "CRL" and the wire version.
const MAGIC: [u8; 4] = *b"CRL\x01";

/// An rpc from one node's raft to another's.
#[derive(Serialize, Deserialize)]
pub(crate) enum Rpc {
    /// Replication and heartbeats.
    Append(AppendEntriesRequest<TypeConfig>),
    /// An election.
    Vote(VoteRequest<u64>),
    /// One chunk of a snapshot.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// A request: the rpc and the node it is for.
#[derive(Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The sender.
    pub(crate) from: u64,
    /// The node meant to run it.
    pub(crate) to: u64,
    /// The rpc.
    pub(crate) rpc: Rpc,
}

/// The answer to an [`Envelope`].
#[derive(Serialize, Deserialize)]
pub(crate) enum Reply {
    /// Answer to [`Rpc::Append`].
    Append(AppendEntriesResponse<u64>),
    /// Answer to [`Rpc::Vote`].
    Vote(VoteResponse<u64>),
    /// Answer to [`Rpc::Snapshot`].
    Snapshot(InstallSnapshotResponse<u64>),
    /// The snapshot chunk was refused (e.g. out of order).
    SnapshotRefused(InstallSnapshotError),
    /// The receiving raft failed (stopped, storage error).
    Failed(String),
    /// The request could not be decoded.
    BadMessage(String),
    /// The request was for another node.
    WrongNode {
        /// Who answered.
        me: u64,
    },
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let body = match postcard::to_allocvec(value) {
        Ok(b) => b,
        // Our own types always serialize; an error here is a bug, answered
        // as an empty body that the peer refuses.
        Err(e) => {
            tracing::error!(error = %e, "raft rpc encoding failed");
            Vec::new()
        }
    };
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() < 8 {
        return Err(format!("frame too short ({} bytes)", bytes.len()));
    }
    if bytes[..4] != MAGIC {
        return Err("bad magic".into());
    }
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let body = &bytes[8..];
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    postcard::from_bytes(body).map_err(|e| format!("undecodable: {e}"))
}

/// Encodes a request.
pub(crate) fn encode_request(env: &Envelope) -> Vec<u8> {
    encode(env)
}

/// Decodes a request.
pub(crate) fn decode_request(bytes: &[u8]) -> Result<Envelope, String> {
    decode(bytes)
}

/// Encodes a reply.
pub(crate) fn encode_reply(reply: &Reply) -> Vec<u8> {
    encode(reply)
}

/// Decodes a reply.
pub(crate) fn decode_reply(bytes: &[u8]) -> Result<Reply, String> {
    decode(bytes)
}

/// Makes a [`Network`] per target for openraft.
pub(crate) struct NetworkFactory {
    pub(crate) me: u64,
    pub(crate) transport: Arc<dyn RaftTransport>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Network {
        Network {
            me: self.me,
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// The connection to one peer, as openraft sees it.
pub(crate) struct Network {
    me: u64,
    target: u64,
    addr: String,
    transport: Arc<dyn RaftTransport>,
}

/// The error of a call, before it is typed for the rpc's kind.
enum CallError {
    Unreachable(String),
    Network(String),
    Refused(InstallSnapshotError),
}

fn net_err(msg: String) -> NetworkError {
    NetworkError::new(&io::Error::other(msg))
}

impl CallError {
    fn into_rpc<E: std::error::Error>(self) -> RPCError<u64, BasicNode, E> {
        match self {
            CallError::Unreachable(m) => {
                RPCError::Unreachable(Unreachable::new(&io::Error::other(m)))
            }
            CallError::Network(m) => RPCError::Network(net_err(m)),
            CallError::Refused(e) => RPCError::Network(net_err(e.to_string())),
        }
    }
}

impl Network {
    async fn call(&self, rpc: Rpc) -> Result<Reply, CallError> {
        let req = encode_request(&Envelope {
            from: self.me,
            to: self.target,
            rpc,
        });
        let bytes = self
            .transport
            .call(self.target, &self.addr, req)
            .await
            .map_err(|e| match e {
                TransportError::Unreachable(m) => CallError::Unreachable(m),
                TransportError::Other(m) => CallError::Network(m),
            })?;
        match decode_reply(&bytes) {
            Err(e) => Err(CallError::Network(format!("bad reply: {e}"))),
            Ok(Reply::Failed(m)) => Err(CallError::Network(format!("peer failed: {m}"))),
            Ok(Reply::BadMessage(m)) => Err(CallError::Network(format!("peer refused: {m}"))),
            Ok(Reply::WrongNode { me }) => Err(CallError::Unreachable(format!(
                "{} answered as node {me}, not {}",
                self.addr, self.target
            ))),
            Ok(Reply::SnapshotRefused(e)) => Err(CallError::Refused(e)),
            Ok(r) => Ok(r),
        }
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, OrError<u64>>> {
        match self.call(Rpc::Append(rpc)).await {
            Ok(Reply::Append(r)) => Ok(r),
            Ok(_) => Err(RPCError::Network(net_err("mismatched reply".into()))),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, OrError<u64, InstallSnapshotError>>,
    > {
        match self.call(Rpc::Snapshot(rpc)).await {
            Ok(Reply::Snapshot(r)) => Ok(r),
            Ok(_) => Err(RPCError::Network(net_err("mismatched reply".into()))),
            Err(CallError::Refused(e)) => Err(RPCError::RemoteError(RemoteError::new(
                self.target,
                OrError::APIError(e),
            ))),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, OrError<u64>>> {
        match self.call(Rpc::Vote(rpc)).await {
            Ok(Reply::Vote(r)) => Ok(r),
            Ok(_) => Err(RPCError::Network(net_err("mismatched reply".into()))),
            Err(e) => Err(e.into_rpc()),
        }
    }
}
