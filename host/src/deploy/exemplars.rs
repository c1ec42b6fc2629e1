//! Exemplars of what each type's journal holds, so that a deploy checks the
//! candidate against every kind of event any earlier version wrote, not only
//! against the events of the entities it happens to sample.
//!
//! Owns [`Exemplars`] (`<data_dir>/exemplars.json`): per entity type, one
//! reference (entity, sequence number) to the first event seen of each
//! (writing behavior version, event kind), and the type's feed cursor up to
//! which the journal has been scanned. A scan is incremental: each event of
//! the journal is looked at once over the node's life (at the next deploy or
//! rollback of its type after it was written), so the cost of a deploy is
//! the events written since the previous one plus one decode per exemplar.
//!
//! The kind of an event is read from its bytes without the behavior: the
//! SDKs' default codec (MessagePack with names) writes an enum variant as a
//! one-entry map keyed by the variant's name, or as the name alone for a
//! variant without fields. An event of another shape has the kind `""`, so
//! each version still keeps at least its first event. This module never
//! decodes an event beyond that tag and never fails a deploy by itself: it
//! only says which events the validation must decode.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_store::{Journal, JournalError};
use serde::{Deserialize, Serialize};

use crate::registry::{RegistryError, write_atomic};

/// Most exemplars kept per entity type; kinds seen beyond it are counted
/// (the report says so) but not kept, so a type whose events carry
/// unbounded tags cannot grow the file without bound.
pub const MAX_EXEMPLARS_PER_TYPE: usize = 4096;

/// Longest kind kept (bytes); a longer tag is cut at a character boundary.
const MAX_KIND_LEN: usize = 128;

/// Events read per page of a scan.
const SCAN_PAGE: usize = 4096;

/// One kept event: the first one seen of its (version, kind).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exemplar {
    /// The behavior version that wrote it.
    pub version: String,
    /// The event's kind (its enum variant), `""` when it has no tag.
    pub kind: String,
    /// The entity holding it.
    pub entity_id: String,
    /// Its sequence number.
    pub seq: u64,
}

/// What is kept of one type.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TypeExemplars {
    /// Feed cursor the journal was scanned up to.
    cursor: u64,
    /// Kept exemplars, in the order they were first seen.
    exemplars: Vec<Exemplar>,
    /// Distinct (version, kind) pairs seen after the cap was reached.
    #[serde(default)]
    not_kept: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ExemplarFile {
    types: BTreeMap<String, TypeExemplars>,
}

/// Why the exemplars could not be brought up to date.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExemplarError {
    /// Reading the journal's feed failed.
    #[error("scanning the journal: {0}")]
    Journal(#[from] JournalError),
    /// `exemplars.json` could not be read or written.
    #[error(transparent)]
    File(#[from] RegistryError),
}

/// A type's exemplars after a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeSnapshot {
    /// Every kept exemplar.
    pub exemplars: Vec<Exemplar>,
    /// Distinct (version, kind) pairs seen but not kept (over the cap).
    pub not_kept: u64,
    /// Events the scan read to bring the type up to date.
    pub scanned: u64,
}

/// The exemplars of every type of a node.
pub struct Exemplars {
    path: PathBuf,
    file: tokio::sync::Mutex<ExemplarFile>,
}

impl Exemplars {
    /// Opens `<data_dir>/exemplars.json` (absent: nothing scanned yet). An
    /// unreadable file is started afresh: exemplars are derived data, a
    /// rescan rebuilds them.
    pub fn open(data_dir: &Path) -> Exemplars {
        let path = data_dir.join("exemplars.json");
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable exemplars: the journal will be rescanned");
                ExemplarFile::default()
            }),
            Err(_) => ExemplarFile::default(),
        };
        Exemplars {
            path,
            file: tokio::sync::Mutex::new(file),
        }
    }

    /// Scans the type's journal feed from where the last scan stopped,
    /// keeps the first event of each new (version, kind), saves the file
    /// when anything changed, and returns the type's exemplars.
    pub async fn refresh(
        &self,
        journal: &Arc<dyn Journal>,
        entity_type: &str,
    ) -> Result<TypeSnapshot, ExemplarError> {
        let mut file = self.file.lock().await;
        let mut ty = file.types.get(entity_type).cloned().unwrap_or_default();
        let mut seen: HashSet<(String, String)> = ty
            .exemplars
            .iter()
            .map(|e| (e.version.clone(), e.kind.clone()))
            .collect();
        let start = ty.cursor;
        let mut scanned = 0u64;
        loop {
            let page = journal.read_feed(entity_type, ty.cursor, SCAN_PAGE).await?;
            let n = page.events.len();
            for (key, event) in page.events {
                let kind = event_kind(&event.payload);
                if seen.contains(&(event.version.clone(), kind.clone())) {
                    continue;
                }
                if ty.exemplars.len() >= MAX_EXEMPLARS_PER_TYPE {
                    ty.not_kept += 1;
                } else {
                    ty.exemplars.push(Exemplar {
                        version: event.version.clone(),
                        kind: kind.clone(),
                        entity_id: key.entity_id,
                        seq: event.seq,
                    });
                }
                seen.insert((event.version, kind));
            }
            scanned += n as u64;
            ty.cursor = page.next;
            if n < SCAN_PAGE {
                break;
            }
            tokio::task::yield_now().await;
        }
        let snapshot = TypeSnapshot {
            exemplars: ty.exemplars.clone(),
            not_kept: ty.not_kept,
            scanned,
        };
        if ty.cursor != start || !file.types.contains_key(entity_type) {
            let mut next = file.clone();
            next.types.insert(entity_type.to_owned(), ty);
            let json = serde_json::to_vec(&next).map_err(|e| RegistryError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || write_atomic(&path, &json))
                .await
                .map_err(|e| RegistryError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })??;
            *file = next;
        }
        Ok(snapshot)
    }
}

/// The kind of an event in the SDKs' default codec: the name of its enum
/// variant (`{"Deposited": {...}}` is a one-entry map keyed `Deposited`,
/// a variant without fields is its name alone), or `""` for any other shape.
pub fn event_kind(bytes: &[u8]) -> String {
    let Some((&first, rest)) = bytes.split_first() else {
        return String::new();
    };
    // A one-entry map (fixmap 0x81, map16, map32 of length 1): the tag is
    // its first key.
    let tag = match first {
        0x81 => rest,
        0xde if rest.starts_with(&[0, 1]) => &rest[2..],
        0xdf if rest.starts_with(&[0, 0, 0, 1]) => &rest[4..],
        _ => bytes,
    };
    msgpack_str(tag)
        .map(|s| {
            let mut end = s.len().min(MAX_KIND_LEN);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        })
        .unwrap_or_default()
}

/// A MessagePack string at the start of `bytes`.
fn msgpack_str(bytes: &[u8]) -> Option<&str> {
    let (&marker, rest) = bytes.split_first()?;
    let (len, rest) = match marker {
        0xa0..=0xbf => (usize::from(marker & 0x1f), rest),
        0xd9 => (usize::from(*rest.first()?), rest.get(1..)?),
        0xda => (
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            rest.get(2..)?,
        ),
        0xdb => (
            u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize,
            rest.get(4..)?,
        ),
        _ => return None,
    };
    std::str::from_utf8(rest.get(..len)?).ok()
}

#[cfg(test)]
mod tests {
    use super::event_kind;

    #[test]
    fn kinds_of_the_default_codec() {
        // {"Deposited": {"amount": 100}}
        let mut deposited = vec![0x81, 0xa9];
        deposited.extend_from_slice(b"Deposited");
        deposited.extend_from_slice(&[0x81, 0xa6]);
        deposited.extend_from_slice(b"amount");
        deposited.push(100);
        assert_eq!(event_kind(&deposited), "Deposited");
        // "Closed"
        let mut closed = vec![0xa6];
        closed.extend_from_slice(b"Closed");
        assert_eq!(event_kind(&closed), "Closed");
        // A str8 key in a map16 of one entry.
        let mut long = vec![0xde, 0, 1, 0xd9, 3];
        long.extend_from_slice(b"Big");
        assert_eq!(event_kind(&long), "Big");
        // Anything else has no kind; truncated input never panics.
        assert_eq!(event_kind(&[0x92, 1, 2]), "");
        assert_eq!(event_kind(&[]), "");
        assert_eq!(event_kind(&[0x81, 0xa9, b'D']), "");
        assert_eq!(event_kind(&[0xdb, 0xff, 0xff]), "");
    }
}
