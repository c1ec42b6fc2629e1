//! Framing on bytes: a frame is a 4-byte little-endian body length followed
//! by the postcard encoding of one message. Owns the header check against a
//! size limit; reading and writing streams is the caller's (the
//! `cairn-client` crate does it on quinn streams).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::MAX_FRAME;

/// Length of a frame's header (the body length, `u32` little-endian).
pub const HEADER_LEN: usize = 4;

/// Why encoding, decoding or exchanging a frame failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer closed the stream cleanly before a new frame.
    #[error("stream finished")]
    Finished,
    /// The stream ended in the middle of a frame.
    #[error("truncated frame")]
    Truncated,
    /// The announced (or encoded) body length is above the limit.
    #[error("frame of {len} bytes is above the limit of {max}")]
    TooLarge {
        /// The body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// The bytes are not a valid message.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// The connection or stream failed (reported by the transport).
    #[error("stream error: {0}")]
    Stream(String),
    /// The reader's memory budget for frames in flight cannot take this
    /// one now: it was not read (the stream must be dropped).
    #[error("frame of {len} bytes refused: the memory budget for frames in flight is used up")]
    OverBudget {
        /// The announced body length.
        len: usize,
    },
}

/// Encodes a message as one frame, header included. A body above
/// [`MAX_FRAME`] is refused.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = postcard::to_extend(msg, vec![0u8; HEADER_LEN])
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = buf.len() - HEADER_LEN;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    // `len <= MAX_FRAME` fits in a u32.
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf)
}

/// Decodes a frame body (the bytes after the header). Bytes left over after
/// the message make the frame invalid.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// The body length a frame header announces, refused above `max`.
pub fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Payload, Request};

    #[test]
    fn frames_carry_their_length_and_round_trip() {
        let req = Request::Ask {
            entity_type: "bank-account".into(),
            entity_id: "a".into(),
            command: Payload::Json("{}".into()),
            expected_seq: Some(3),
            timeout_ms: None,
        };
        let buf = encode(&req).unwrap();
        let header: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().unwrap();
        assert_eq!(body_len(header, MAX_FRAME).unwrap(), buf.len() - HEADER_LEN);
        assert_eq!(decode::<Request>(&buf[HEADER_LEN..]).unwrap(), req);
    }

    #[test]
    fn a_header_above_the_limit_is_refused() {
        assert!(matches!(
            body_len(101u32.to_le_bytes(), 100),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        ));
        assert_eq!(body_len(100u32.to_le_bytes(), 100).unwrap(), 100);
    }

    #[test]
    fn garbage_and_trailing_bytes_do_not_decode() {
        assert!(decode::<Request>(&[0xff, 0xff, 0xff, 0x01]).is_err());
        // Unknown variant index.
        assert!(decode::<Request>(&[99]).is_err());
        // `Types` followed by a stray byte.
        let mut body = encode(&Request::Types).unwrap().split_off(HEADER_LEN);
        body.push(0);
        assert!(matches!(
            decode::<Request>(&body),
            Err(FrameError::Decode(_))
        ));
    }
}
