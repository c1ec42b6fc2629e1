//! The default codec of commands, events, state and replies: MessagePack with
//! field names. Self-describing, so an event written by an older version of a
//! type still decodes after a `#[serde(default)]` field or a new variant is added.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value could not be encoded or decoded.
#[derive(Debug)]
pub struct CodecError(String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

/// Encodes a value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    // Encoded into a buffer kept between calls, then copied out at its exact
    // size: a buffer that grows, or one allocated with room to spare, is
    // reallocated when the component ABI shrinks it to its length (three
    // times per `decide`, counted with callgrind).
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.take();
        buf.clear();
        let result = rmp_serde::encode::write_named(&mut buf, value)
            .map(|()| buf.to_vec())
            .map_err(|e| CodecError(e.to_string()));
        // A rare huge value does not keep its buffer.
        if buf.capacity() <= SCRATCH_KEPT {
            scratch.set(buf);
        }
        result
    })
}

/// The largest encoding buffer kept for the next [`encode`].
const SCRATCH_KEPT: usize = 64 * 1024;

/// Decodes a value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
}

#[cfg(test)]
mod tests {
    //! Schema evolution through the default codec: what the crate docs promise.

    use serde::{Deserialize, Serialize};

    use super::{decode, encode};

    mod v1 {
        use serde::{Deserialize, Serialize};

        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        pub enum Event {
            Deposited { amount: i64 },
            Closed,
        }
    }

    /// v2 renamed `Closed` and reshaped `Deposited` (amount → cents).
    mod v2 {
        use serde::{Deserialize, Serialize};

        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        #[serde(from = "EventCompat")]
        pub enum Event {
            Deposited { cents: i64, memo: Option<String> },
            Shut,
        }

        /// Every shape an event ever had; `From` upcasts it.
        #[derive(Deserialize)]
        enum EventCompat {
            Deposited {
                #[serde(default)]
                amount: Option<i64>,
                #[serde(default)]
                cents: Option<i64>,
                #[serde(default)]
                memo: Option<String>,
            },
            #[serde(alias = "Closed")]
            Shut,
        }

        impl From<EventCompat> for Event {
            fn from(e: EventCompat) -> Self {
                match e {
                    EventCompat::Deposited {
                        amount,
                        cents,
                        memo,
                    } => Event::Deposited {
                        cents: cents.or(amount.map(|a| a * 100)).unwrap_or(0),
                        memo,
                    },
                    EventCompat::Shut => Event::Shut,
                }
            }
        }
    }

    #[test]
    fn renames_and_reshapes_upcast() {
        let old = encode(&v1::Event::Deposited { amount: 3 }).unwrap();
        assert_eq!(
            decode::<v2::Event>(&old).unwrap(),
            v2::Event::Deposited {
                cents: 300,
                memo: None
            }
        );
        let old = encode(&v1::Event::Closed).unwrap();
        assert_eq!(decode::<v2::Event>(&old).unwrap(), v2::Event::Shut);
        let new = v2::Event::Deposited {
            cents: 5,
            memo: Some("x".into()),
        };
        assert_eq!(decode::<v2::Event>(&encode(&new).unwrap()).unwrap(), new);
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Narrow {
        a: u32,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Wide {
        a: u32,
        b: String,
    }

    #[test]
    fn unknown_fields_are_ignored_so_rollback_reads_newer_events() {
        let bytes = encode(&Wide {
            a: 1,
            b: "new".into(),
        })
        .unwrap();
        assert_eq!(decode::<Narrow>(&bytes).unwrap(), Narrow { a: 1 });
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(decode::<Wide>(&[]).is_err());
        assert!(decode::<Wide>(&[0xc1]).is_err());
        assert!(decode::<Wide>(&[0x82, 0xa1]).is_err(), "truncated map");
        let full = encode(&Wide {
            a: 1,
            b: "abc".into(),
        })
        .unwrap();
        for n in 0..full.len() {
            assert!(decode::<Wide>(&full[..n]).is_err(), "prefix of {n} bytes");
        }
    }
}
