//! Cairn's client protocol, without I/O: the messages a client and a node
//! exchange, the typed errors a node answers with, and the framing of a
//! message as bytes.
//!
//! Layout:
//! - [`wire`]: [`Request`], [`Response`] and the values they carry
//!   ([`Payload`], [`StateAt`], [`EventView`], [`TypeInfo`]).
//! - [`deploy`]: what a deploy reports ([`ValidationReport`]) and the deploy
//!   history ([`DeployRecord`]), as the protocol's own types.
//! - [`error`]: [`ApiError`], why a request failed, and [`Retry`], what a
//!   client should do about it.
//! - [`frame`]: a frame is a `u32` little-endian length followed by that many
//!   bytes of a postcard-encoded message ([`encode`], [`decode`],
//!   [`body_len`]).
//!
//! The transport is QUIC (ALPN [`ALPN`]): every request opens (or reuses) a
//! bidirectional stream. On one stream, requests run one after another, each
//! answered by one response, except the two `Follow*` requests, which turn
//! the stream into a one-way feed of responses until the client closes it.
//! The first request of a connection is [`Request::Hello`] with
//! [`PROTOCOL_VERSION`]. The quinn side lives in the `cairn-client` crate;
//! this crate must never depend on an async runtime or on the node.
//!
//! Compatibility: postcard encodes enum variants by index and struct fields
//! by position, so variants are only ever added at the end and fields never
//! reordered. The committed frames in `tests/fixtures` freeze the encoding.

pub mod deploy;
pub mod error;
pub mod frame;
pub mod wire;

pub use deploy::{
    DeployAction, DeployOutcome, DeployRecord, ReplayFailure, StateDifference, ValidationReport,
};
pub use error::{ApiError, GuestFaultKind, Retry};
pub use frame::{FrameError, HEADER_LEN, body_len, decode, encode};
pub use wire::{
    ClusterStatus, EventView, MemberStatus, Payload, Request, Response, StateAt, TypeInfo,
};

/// Version of this protocol; a node refuses a client speaking another.
///
/// Version 2 changed the layout of [`ApiError`] (typed variants instead of a
/// catch-all message). [`Request::Hello`] and [`ApiError::BadRequest`] keep
/// their positions, so a version-1 client still decodes the node's "version
/// not supported" answer. Version 3 appended the exemplar counts to
/// [`ValidationReport`]. Version 4 appended [`ApiError::Indeterminate`]
/// (a command's outcome is unknown) and made the error contract three-way:
/// success, not applied, outcome unknown (see [`error`]); a version-3
/// client could not decode that answer, nor knows not to resend blindly.
/// Version 5 added [`MemberStatus::unready`] to the cluster status.
pub const PROTOCOL_VERSION: u32 = 5;

/// ALPN identifier of the client protocol (the transport, unchanged between
/// protocol versions; the version is checked by [`Request::Hello`]).
pub const ALPN: &[u8] = b"cairn/1";

/// ALPN identifier of the node-to-node protocol (on the same endpoint).
pub const PEER_ALPN: &[u8] = b"cairn-peer/1";

/// Largest frame body accepted, in bytes (a component being deployed is the
/// biggest message).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
