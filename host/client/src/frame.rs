//! Frame I/O on quinn streams: reads and writes the frames of
//! [`cairn_proto::frame`]. Used by the client and by the node's server.
//! Owns only the stream handling; the byte format is `cairn-proto`'s.

use std::sync::Arc;

use cairn_proto::{FrameError, HEADER_LEN};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A reader's memory budget for the frames it is reading and holding: a
/// frame's announced size is taken from it before its body is read, and
/// given back when the returned permit is dropped.
#[derive(Clone, Debug)]
pub struct FrameBudget {
    /// One permit per KiB.
    kib: Arc<Semaphore>,
}

impl FrameBudget {
    /// A budget of `bytes` (rounded up to KiB; at least one frame of the
    /// largest size should fit).
    pub fn new(bytes: usize) -> FrameBudget {
        FrameBudget {
            kib: Arc::new(Semaphore::new(bytes.div_ceil(1024).max(1))),
        }
    }

    /// Bytes not taken now.
    pub fn available(&self) -> usize {
        self.kib.available_permits() * 1024
    }
}

/// Reads one frame from a stream and decodes it; a body above `max` bytes
/// is refused before it is read.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<T, FrameError> {
    let n = read_header(recv, max).await?;
    read_body(recv, n).await
}

/// [`read_frame`] admitted against `budget`: the body's announced size is
/// taken from the budget before a byte of it is read (refused with
/// [`FrameError::OverBudget`] if the budget cannot take it now), and stays
/// taken until the returned permit is dropped (hold it while the message
/// is being served).
pub async fn read_frame_admitted<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
    budget: &FrameBudget,
) -> Result<(T, OwnedSemaphorePermit), FrameError> {
    read_admitted(recv, max, budget, false).await
}

/// [`read_frame_admitted`] for an answer the reader asked for: it waits
/// until `budget` can take the body's announced size (rather than
/// refusing it), then reads it. The budget must hold a frame of `max`
/// bytes, or a frame that large waits for ever.
pub async fn read_frame_waiting<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
    budget: &FrameBudget,
) -> Result<(T, OwnedSemaphorePermit), FrameError> {
    read_admitted(recv, max, budget, true).await
}

/// Reads a header, takes the body's size from `budget` (waiting for room
/// if `wait`, else refusing at once), then reads the body.
async fn read_admitted<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
    budget: &FrameBudget,
    wait: bool,
) -> Result<(T, OwnedSemaphorePermit), FrameError> {
    let n = read_header(recv, max).await?;
    let over = || FrameError::OverBudget { len: n };
    let kib = u32::try_from(n.div_ceil(1024)).map_err(|_| over())?;
    let kibs = budget.kib.clone();
    let permit = if wait {
        kibs.acquire_many_owned(kib).await.map_err(|_| over())?
    } else {
        kibs.try_acquire_many_owned(kib).map_err(|_| over())?
    };
    Ok((read_body(recv, n).await?, permit))
}

async fn read_header(recv: &mut quinn::RecvStream, max: usize) -> Result<usize, FrameError> {
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
    cairn_proto::body_len(header, max)
}

async fn read_body<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    n: usize,
) -> Result<T, FrameError> {
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
