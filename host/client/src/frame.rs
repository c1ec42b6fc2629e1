//! Frame I/O on quinn streams: reads and writes the frames of
//! [`cairn_proto::frame`]. Used by the client and by the node's server.
//! Owns only the stream handling; the byte format is `cairn-proto`'s.

use cairn_proto::{FrameError, HEADER_LEN};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Reads one frame from a stream and decodes it; a body above `max` bytes
/// is refused before it is read.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match recv.read(&mut header[got..]).await {
            Ok(Some(n)) => got += n,
            Ok(None) if got == 0 => return Err(FrameError::Finished),
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(FrameError::Stream(e.to_string())),
        }
    }
    let n = cairn_proto::body_len(header, max)?;
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
    cairn_proto::decode(&buf)
}

/// Encodes and writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), FrameError> {
    let buf = cairn_proto::encode(msg)?;
    send.write_all(&buf)
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))
}
