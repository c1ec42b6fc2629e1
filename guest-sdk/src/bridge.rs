//! The byte-level face of a behavior: what the component exports, as plain
//! Rust. Used by [`crate::export_entity!`], by the test kit, and by hosts that
//! run a behavior natively (the Cairn benchmark). Never panics on bad bytes.

use crate::{Context, Effect, Entity, codec};

/// What a behavior says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Entity type name.
    pub name: String,
    /// Behavior version.
    pub version: String,
    /// State-schema version.
    pub state_schema: u32,
}

/// An effect with its command encoded (same as [`Effect`]).
pub type RawEffect = Effect;

/// An accepted command, encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDecision {
    /// Encoded events to persist.
    pub events: Vec<Vec<u8>>,
    /// Encoded reply.
    pub reply: Option<Vec<u8>>,
    /// Effects to run after persisting.
    pub effects: Vec<RawEffect>,
    /// Encoded new state; `None` when there are no events.
    pub state: Option<Vec<u8>>,
}

/// Why a command produced no decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// The behavior refused the command.
    Rejected(String),
    /// The command bytes could not be decoded.
    Malformed(String),
    /// The state bytes could not be decoded (or the result encoded).
    BadState(String),
}

/// An event of a batch could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoldError {
    /// Index of the event in the batch.
    pub index: u32,
    /// What went wrong.
    pub message: String,
}

/// Name, version and state schema of `E`.
pub fn describe<E: Entity>() -> Descriptor {
    Descriptor {
        name: E::NAME.to_owned(),
        version: E::VERSION.to_owned(),
        state_schema: E::STATE_SCHEMA,
    }
}

/// Encoded initial state. Encoding a `Default` state cannot reasonably fail;
/// if it does, the empty buffer makes the host report a state decode error.
pub fn initial_state<E: Entity>() -> Vec<u8> {
    codec::encode(&E::initial_state()).unwrap_or_default()
}

/// Decodes `command` and `state`, runs `on_command`, folds the new events
/// into the state and encodes everything.
pub fn decide<E: Entity>(
    ctx: &Context,
    state: &[u8],
    command: &[u8],
) -> Result<RawDecision, CommandError> {
    let command: E::Command =
        codec::decode(command).map_err(|e| CommandError::Malformed(e.to_string()))?;
    let mut state: E::State =
        codec::decode(state).map_err(|e| CommandError::BadState(e.to_string()))?;
    let d = E::on_command(ctx, &state, command);
    if let Some(reason) = d.rejection {
        return Err(CommandError::Rejected(reason));
    }
    if let Some(e) = d.error {
        return Err(CommandError::BadState(e));
    }
    let mut events = Vec::with_capacity(d.events.len());
    for ev in &d.events {
        events.push(
            codec::encode(ev)
                .map_err(|e| CommandError::BadState(format!("cannot encode event: {e}")))?,
        );
        E::on_event(&mut state, ev);
    }
    let state = if events.is_empty() {
        None
    } else {
        Some(
            codec::encode(&state)
                .map_err(|e| CommandError::BadState(format!("cannot encode state: {e}")))?,
        )
    };
    let reply = d
        .reply
        .map(|r| codec::encode(&r))
        .transpose()
        .map_err(|e| CommandError::BadState(format!("cannot encode reply: {e}")))?;
    Ok(RawDecision {
        events,
        reply,
        effects: d.effects,
        state,
    })
}

/// Packs events for [`fold`]: each is a little-endian u32 length and the bytes.
pub fn pack_events(events: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.iter().map(|e| e.len() + 4).sum());
    for e in events {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Applies a packed batch of events to `state` (recovery). The state is
/// decoded once and encoded once, whatever the batch size.
pub fn fold<E: Entity>(state: &[u8], packed: &[u8]) -> Result<Vec<u8>, FoldError> {
    let mut st: E::State = codec::decode(state).map_err(|e| FoldError {
        index: 0,
        message: format!("cannot decode the state: {e}"),
    })?;
    let mut rest = packed;
    let mut index = 0u32;
    while !rest.is_empty() {
        let truncated = || FoldError {
            index,
            message: "the packed batch is truncated".into(),
        };
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(truncated)?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(truncated());
        }
        let (bytes, tail) = tail.split_at(len);
        let ev: E::Event = codec::decode(bytes).map_err(|e| FoldError {
            index,
            message: format!("cannot decode the event: {e}"),
        })?;
        E::on_event(&mut st, &ev);
        rest = tail;
        index += 1;
    }
    codec::encode(&st).map_err(|e| FoldError {
        index,
        message: format!("cannot encode the state: {e}"),
    })
}

/// JSON command → encoded command.
pub fn command_from_json<E: Entity>(json: &str) -> Result<Vec<u8>, String> {
    let cmd: E::Command =
        serde_json::from_str(json).map_err(|e| format!("not a valid {} command: {e}", E::NAME))?;
    codec::encode(&cmd).map_err(|e| e.to_string())
}

fn to_json<T: serde::Serialize + serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<String, String> {
    let v: T = codec::decode(bytes).map_err(|e| format!("cannot decode the {what}: {e}"))?;
    serde_json::to_string(&v).map_err(|e| e.to_string())
}

/// Encoded event → JSON.
pub fn event_to_json<E: Entity>(bytes: &[u8]) -> Result<String, String> {
    to_json::<E::Event>(bytes, "event")
}

/// Encoded state → JSON.
pub fn state_to_json<E: Entity>(bytes: &[u8]) -> Result<String, String> {
    to_json::<E::State>(bytes, "state")
}

/// Encoded reply → JSON.
pub fn reply_to_json<E: Entity>(bytes: &[u8]) -> Result<String, String> {
    to_json::<E::Reply>(bytes, "reply")
}
