//! The client protocol: the requests a client sends to a node over QUIC, the
//! responses it gets, and the framing both sides use.
//!
//! Every request opens (or reuses) a bidirectional QUIC stream. A frame is a
//! `u32` little-endian length followed by that many bytes of a postcard-encoded
//! [`Request`] or [`Response`]; a frame longer than [`MAX_FRAME`] is refused.
//! On one stream, requests run one after another, each answered by one
//! response, except the two `Follow*` requests, which turn the stream into a
//! one-way feed of responses until the client closes it.

use serde::{Deserialize, Serialize};

use crate::deploy::ValidationReport;
use crate::registry::DeployRecord;

/// Version of this protocol; a node refuses a client speaking another.
pub const PROTOCOL_VERSION: u32 = 1;

/// ALPN identifier of the client protocol.
pub const ALPN: &[u8] = b"cairn/1";

/// Largest frame accepted, in bytes (a component being deployed is the
/// biggest message).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A command or reply payload: JSON through the behavior's codecs, or the
/// behavior's own bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// JSON text, converted by the behavior's JSON codecs.
    Json(String),
    /// The behavior's encoded bytes, passed through unchanged.
    Bytes(Vec<u8>),
}

/// Which state of an entity to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateAt {
    /// The current state, read in mailbox order.
    Now,
    /// The state right after the event with this sequence number.
    Seq(u64),
    /// The state after every event stored at or before this time (ms since
    /// the Unix epoch).
    Time(u64),
}

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First frame of a connection's first stream: the protocol version.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// Deploy a component to an entity type: validated by replaying the
    /// history of sampled entities, then activated for every later command.
    Deploy {
        /// Entity type.
        entity_type: String,
        /// The component's bytes.
        wasm: Vec<u8>,
        /// Only validate (a dry run): change nothing.
        check: bool,
    },
    /// List the versions of a type and its deploy history.
    Versions {
        /// Entity type.
        entity_type: String,
    },
    /// Activate an earlier version (validated like a deploy).
    Rollback {
        /// Entity type.
        entity_type: String,
        /// The version; the one before the active version if absent.
        to: Option<u32>,
    },
    /// Send a command and wait for its reply.
    Ask {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The command.
        command: Payload,
        /// Only run the command if the entity is at this sequence number.
        expected_seq: Option<u64>,
        /// How long the node waits for the reply (ms); the node's default if absent.
        timeout_ms: Option<u64>,
    },
    /// Queue a command without waiting for it to run.
    Tell {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The command.
        command: Payload,
    },
    /// Read an entity's events with `from <= seq <= to`, at most `limit`.
    Events {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Lowest sequence number.
        from: u64,
        /// Highest sequence number.
        to: u64,
        /// Most events returned (the node caps it).
        limit: u32,
    },
    /// Read an entity's state.
    State {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Which state.
        at: StateAt,
    },
    /// List entity types and their deployed versions.
    Types,
    /// Encode a JSON command with the type's behavior (to send bytes later).
    EncodeCommand {
        /// Entity type.
        entity_type: String,
        /// The command as JSON.
        json: String,
    },
    /// Turn this stream into the node's lifecycle feed.
    FollowLifecycle,
    /// Turn this stream into the feed of every event of a type, starting at
    /// `cursor` (0: the beginning; else a `next` from an earlier batch).
    FollowEvents {
        /// Entity type.
        entity_type: String,
        /// Where to start.
        cursor: u64,
    },
}

/// One journaled event as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Entity type.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: String,
    /// Sequence number.
    pub seq: u64,
    /// When it was stored (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// The version of the behavior that produced it.
    pub version: String,
    /// The event as JSON, if the behavior could render it.
    pub json: Option<String>,
    /// The event's bytes.
    pub bytes: Vec<u8>,
}

/// A deployed entity type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeInfo {
    /// Entity type.
    pub entity_type: String,
    /// Deploy number of the active component (1 for the first deploy).
    pub deploy: u32,
    /// The behavior's declared name.
    pub behavior: String,
    /// The behavior's declared version.
    pub version: String,
    /// The behavior's state-schema version.
    pub state_schema: u32,
    /// sha256 of the component, hex.
    pub hash: String,
    /// When it was deployed (ms since the Unix epoch).
    pub deployed_ms: u64,
    /// Entities of the type in memory now.
    pub live_entities: u64,
}

/// A response from a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Welcome {
        /// The node's [`PROTOCOL_VERSION`].
        version: u32,
        /// The node's name.
        node: String,
    },
    /// Answer to a deploy, a check or a rollback.
    Deployed {
        /// The active version afterwards (none for a check on a new type).
        info: Option<TypeInfo>,
        /// True if the active version changed.
        changed: bool,
        /// What replaying history showed.
        report: ValidationReport,
    },
    /// Answer to [`Request::Versions`].
    Versions {
        /// Every version, oldest first.
        versions: Vec<TypeInfo>,
        /// The active version.
        active: Option<u32>,
        /// Every deploy, refusal and rollback, oldest first.
        history: Vec<DeployRecord>,
    },
    /// The reply to an ask.
    Reply {
        /// The reply as JSON (for a JSON command) or bytes; `None` if the
        /// behavior gave no reply.
        reply: Option<Payload>,
        /// The entity's sequence number after the command.
        seq: u64,
    },
    /// A tell was queued.
    Queued,
    /// Events of an entity.
    Events(Vec<EventView>),
    /// An entity's state.
    State {
        /// The state as JSON.
        json: String,
        /// The sequence number the state is at.
        seq: u64,
        /// Events replayed to compute it (0 for the current state).
        replayed: u64,
    },
    /// Entity types.
    Types(Vec<TypeInfo>),
    /// An encoded command.
    Encoded(Vec<u8>),
    /// First response on a follow stream: the subscription is in place, so
    /// everything that happens from now on will be sent.
    Following,
    /// One lifecycle event (on a `FollowLifecycle` stream).
    Lifecycle {
        /// What happened, as a short kind: started, passivated, ...
        kind: String,
        /// Entity type.
        entity_type: String,
        /// Entity id, if about one entity.
        entity_id: Option<String>,
        /// Details as `key=value` text.
        detail: String,
    },
    /// The follower missed lifecycle events because it read too slowly.
    Lagged(u64),
    /// A batch of events (on a `FollowEvents` stream) and the cursor after it.
    Feed {
        /// Events in commit order.
        events: Vec<EventView>,
        /// Cursor to resume from after this batch.
        next: u64,
    },
    /// The request failed.
    Error(ApiError),
}

/// Why a request failed, as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// The node is at its limit of connections or requests in flight; retry later.
    #[error("node busy: {0}")]
    Busy(String),
    /// No component is deployed for the type.
    #[error("unknown entity type `{0}`")]
    UnknownEntityType(String),
    /// The request could not be decoded or is not valid.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The behavior could not decode the command.
    #[error("malformed command: {0}")]
    MalformedCommand(String),
    /// The behavior rejected the command.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The expected sequence number did not match.
    #[error("conflict: expected sequence number {expected}, entity is at {actual}")]
    Conflict {
        /// What the caller expected.
        expected: u64,
        /// Where the entity is.
        actual: u64,
    },
    /// No reply in time (the command may still run).
    #[error("timeout: {0}")]
    Timeout(String),
    /// The component was refused.
    #[error("deploy refused: {0}")]
    DeployRefused(String),
    /// Replaying history through the new version failed; nothing changed.
    #[error("deploy refused: {}", .0.summary())]
    ValidationFailed(Box<ValidationReport>),
    /// The command could not be run (mailbox full, entity stopped, guest
    /// failure, storage failure, shutting down).
    #[error("{0}")]
    Failed(String),
}

/// Why reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream cleanly before a new frame.
    #[error("stream finished")]
    Finished,
    /// The stream ended in the middle of a frame.
    #[error("truncated frame")]
    Truncated,
    /// The announced length is above the limit.
    #[error("frame of {0} bytes is above the limit of {MAX_FRAME}")]
    TooLarge(usize),
    /// The bytes are not a valid message.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// The connection or stream failed.
    #[error("stream error: {0}")]
    Stream(String),
}

/// Reads one frame from a stream and decodes it.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match recv.read(&mut len[got..]).await {
            Ok(Some(n)) => got += n,
            Ok(None) if got == 0 => return Err(FrameError::Finished),
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(FrameError::Stream(e.to_string())),
        }
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > max {
        return Err(FrameError::TooLarge(n));
    }
    // The buffer grows with the bytes that actually arrive, so a peer that
    // announces a large frame and sends little costs little memory.
    let mut buf = Vec::with_capacity(n.min(64 * 1024));
    while buf.len() < n {
        match recv.read_chunk(n - buf.len(), true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(FrameError::Stream(e.to_string())),
        }
    }
    postcard::from_bytes(&buf).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Encodes a message as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf =
        postcard::to_extend(msg, vec![0u8; 4]).map_err(|e| FrameError::Decode(e.to_string()))?;
    let n = buf.len() - 4;
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n));
    }
    buf[..4].copy_from_slice(&(n as u32).to_le_bytes());
    Ok(buf)
}

/// Encodes and writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), FrameError> {
    let buf = encode_frame(msg)?;
    send.write_all(&buf)
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_length_and_round_trip() {
        let req = Request::Ask {
            entity_type: "bank-account".into(),
            entity_id: "a".into(),
            command: Payload::Json("{}".into()),
            expected_seq: Some(3),
            timeout_ms: None,
        };
        let buf = encode_frame(&req).unwrap();
        let n = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(n, buf.len() - 4);
        let back: Request = postcard::from_bytes(&buf[4..]).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn garbage_does_not_decode_as_a_request() {
        let r = postcard::from_bytes::<Request>(&[0xff, 0xff, 0xff, 0x01]);
        assert!(r.is_err());
    }
}
