//! The component registry of a node: deployed components stored by content
//! (`<data_dir>/components/<sha256>.wasm`) and the deploy history
//! (`<data_dir>/deployments.json`, rewritten atomically), so that a restarted
//! node serves the same behaviors it served before.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::behavior::Descriptor;
use crate::deploy::ValidationReport;

/// One deploy of a component to an entity type. Serialized in the
/// registry's file (`deployments.json`); the field names there are frozen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Entity type.
    pub entity_type: String,
    /// Deploy number within the type, from 1.
    pub deploy: u32,
    /// sha256 of the component, hex.
    pub hash: String,
    /// The behavior's declared name.
    pub behavior: String,
    /// The behavior's own version string (not the deploy number).
    #[serde(rename = "version")]
    pub behavior_version: String,
    /// The behavior's state-schema version.
    pub state_schema: u32,
    /// When (ms since the Unix epoch).
    pub deployed_ms: u64,
}

/// Why the registry failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The history file is not valid.
    #[error("{path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What a deploy, check or rollback was.
///
/// Exhaustive: `cairn-server` translates every variant into the client
/// protocol, so a new one must be given its translation there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeployAction {
    /// A new component was deployed.
    Deploy,
    /// An earlier version was activated again.
    Rollback,
}

/// How a deploy or rollback ended.
///
/// Exhaustive: `cairn-server` translates every variant into the client
/// protocol, so a new one must be given its translation there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeployOutcome {
    /// The version is active.
    Activated,
    /// Validation failed; the active version stayed.
    Refused,
}

/// One entry of a type's deploy history: what was tried, when, and how it
/// ended, with the validation report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// Entity type.
    pub entity_type: String,
    /// Deploy or rollback.
    pub action: DeployAction,
    /// The deploy number activated, or the one a refused rollback aimed at
    /// (none for a refused new component: it never got a number).
    #[serde(rename = "version")]
    pub deploy: Option<u32>,
    /// sha256 of the component, hex.
    pub hash: String,
    /// The behavior's declared version.
    pub behavior_version: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// How it ended.
    pub outcome: DeployOutcome,
    /// What replaying history showed.
    pub report: ValidationReport,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct History {
    deployments: Vec<Deployment>,
    /// Index into `deployments` of the active deploy of each type.
    active: std::collections::BTreeMap<String, usize>,
    /// Every deploy, refusal and rollback, oldest first.
    #[serde(default)]
    log: Vec<DeployRecord>,
}

/// Deployed components and their history.
pub struct Registry {
    dir: PathBuf,
    history: Mutex<History>,
}

/// sha256 of bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    /// Opens (or starts) the registry in a data directory.
    pub fn open(data_dir: &Path) -> Result<Registry, RegistryError> {
        let path = data_dir.join("deployments.json");
        let history = match std::fs::read(&path) {
            Ok(bytes) => {
                let h: History =
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if h.active.values().any(|&i| i >= h.deployments.len()) {
                    return Err(RegistryError::Corrupt {
                        path,
                        message: "an active deploy points past the history".into(),
                    });
                }
                h
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => History::default(),
            Err(source) => return Err(RegistryError::Io { path, source }),
        };
        Ok(Registry {
            dir: data_dir.to_owned(),
            history: Mutex::new(history),
        })
    }

    fn component_path(&self, hash: &str) -> PathBuf {
        self.dir.join("components").join(format!("{hash}.wasm"))
    }

    /// The active deploy of a type.
    pub fn active(&self, entity_type: &str) -> Option<Deployment> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.active.get(entity_type).map(|&i| h.deployments[i].clone())
    }

    /// The active deploy of every type.
    pub fn all_active(&self) -> Vec<Deployment> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.active
            .values()
            .map(|&i| h.deployments[i].clone())
            .collect()
    }

    /// The sha256 of every component a deploy of any type refers to (the
    /// active ones and those a rollback may return to).
    pub fn component_hashes(&self) -> std::collections::BTreeSet<String> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.deployments.iter().map(|d| d.hash.clone()).collect()
    }

    /// Every deploy of a type, oldest first.
    pub fn history(&self, entity_type: &str) -> Vec<Deployment> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.deployments
            .iter()
            .filter(|d| d.entity_type == entity_type)
            .cloned()
            .collect()
    }

    /// The bytes of a stored component.
    pub fn component(&self, hash: &str) -> Result<Vec<u8>, RegistryError> {
        let path = self.component_path(hash);
        let bytes = std::fs::read(&path).map_err(|source| RegistryError::Io {
            path: path.clone(),
            source,
        })?;
        if sha256_hex(&bytes) != hash {
            return Err(RegistryError::Corrupt {
                path,
                message: "contents do not match the hash".into(),
            });
        }
        Ok(bytes)
    }

    /// Deploy number `deploy` of a type.
    pub fn get(&self, entity_type: &str, deploy: u32) -> Option<Deployment> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.deployments
            .iter()
            .find(|d| d.entity_type == entity_type && d.deploy == deploy)
            .cloned()
    }

    /// The deploy history of a type, oldest first.
    pub fn records(&self, entity_type: &str) -> Vec<DeployRecord> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.log
            .iter()
            .filter(|r| r.entity_type == entity_type)
            .cloned()
            .collect()
    }

    /// Applies `f` to a copy of the history, writes it durably, then makes
    /// it current; on a write error nothing changes.
    fn update<R>(&self, f: impl FnOnce(&mut History) -> R) -> Result<R, RegistryError> {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = h.clone();
        let r = f(&mut next);
        let path = self.dir.join("deployments.json");
        let json = serde_json::to_vec_pretty(&next).map_err(|e| RegistryError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &json)?;
        *h = next;
        Ok(r)
    }

    /// Stores a component and records it as the active deploy of the type.
    /// Bytes identical to the active deploy change nothing and return it.
    pub fn record(
        &self,
        entity_type: &str,
        wasm: &[u8],
        descriptor: &Descriptor,
        now_ms: u64,
    ) -> Result<Deployment, RegistryError> {
        self.record_with(entity_type, wasm, descriptor, now_ms, None)
    }

    /// [`Registry::record`], adding `report` to the deploy history.
    pub fn record_with(
        &self,
        entity_type: &str,
        wasm: &[u8],
        descriptor: &Descriptor,
        now_ms: u64,
        report: Option<ValidationReport>,
    ) -> Result<Deployment, RegistryError> {
        let hash = sha256_hex(wasm);
        if let Some(active) = self.active(entity_type)
            && active.hash == hash
        {
            return Ok(active);
        }
        self.store_component(wasm)?;
        self.update(|h| {
            let deploy = h
                .deployments
                .iter()
                .filter(|d| d.entity_type == entity_type)
                .count() as u32
                + 1;
            let d = Deployment {
                entity_type: entity_type.to_owned(),
                deploy,
                hash: hash.clone(),
                behavior: descriptor.name.clone(),
                behavior_version: descriptor.version.clone(),
                state_schema: descriptor.state_schema,
                deployed_ms: now_ms,
            };
            h.deployments.push(d.clone());
            h.active
                .insert(entity_type.to_owned(), h.deployments.len() - 1);
            if let Some(report) = report {
                h.log.push(DeployRecord {
                    entity_type: entity_type.to_owned(),
                    action: DeployAction::Deploy,
                    deploy: Some(deploy),
                    hash,
                    behavior_version: descriptor.version.clone(),
                    at_ms: now_ms,
                    outcome: DeployOutcome::Activated,
                    report,
                });
            }
            d
        })
    }

    /// Stores a component's bytes under their hash (once), durably; returns
    /// the hash.
    pub fn store_component(&self, wasm: &[u8]) -> Result<String, RegistryError> {
        let hash = self.stage_component(wasm)?;
        let path = self.component_path(&hash);
        let io = |source| RegistryError::Io {
            path: path.clone(),
            source,
        };
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(hash)
    }

    /// Writes a component's bytes under their hash (once) and starts their
    /// writeback to disk without waiting for it; [`Registry::store_component`]
    /// later makes them durable cheaply. Called early in a deploy, so that the
    /// bytes do not reach the disk in one burst at the cutover (where a large
    /// flush delays the journal's commits, and so every command).
    pub fn stage_component(&self, wasm: &[u8]) -> Result<String, RegistryError> {
        let hash = sha256_hex(wasm);
        let path = self.component_path(&hash);
        if path.exists() {
            return Ok(hash);
        }
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| RegistryError::Io { path: p, source }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            std::io::Write::write_all(&mut f, wasm).map_err(io(&tmp))?;
            start_writeback(&f);
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(hash)
    }

    /// Makes an earlier deploy of a type active again (a rollback).
    pub fn activate(
        &self,
        entity_type: &str,
        deploy: u32,
        now_ms: u64,
        report: ValidationReport,
    ) -> Result<Deployment, RegistryError> {
        self.update(|h| {
            let i = h
                .deployments
                .iter()
                .position(|d| d.entity_type == entity_type && d.deploy == deploy)?;
            h.active.insert(entity_type.to_owned(), i);
            let d = h.deployments[i].clone();
            h.log.push(DeployRecord {
                entity_type: entity_type.to_owned(),
                action: DeployAction::Rollback,
                deploy: Some(deploy),
                hash: d.hash.clone(),
                behavior_version: d.behavior_version.clone(),
                at_ms: now_ms,
                outcome: DeployOutcome::Activated,
                report,
            });
            Some(d)
        })?
        .ok_or_else(|| RegistryError::Corrupt {
            path: self.dir.join("deployments.json"),
            message: format!("{entity_type} has no deploy #{deploy}"),
        })
    }

    /// Records a refused deploy or rollback in the history.
    pub fn refused(&self, record: DeployRecord) -> Result<(), RegistryError> {
        self.update(|h| h.log.push(record))
    }
}

/// Asks the kernel to start writing a file's dirty pages now, without
/// waiting (Linux `sync_file_range`); elsewhere a no-op.
fn start_writeback(f: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: plain integers on a file descriptor that `f` keeps open
        // for the duration of the call.
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
}

/// Writes a file through a temporary file, fsync and rename, then syncs the
/// directory, so that a crash leaves the old or the new contents.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| RegistryError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        std::io::Write::write_all(&mut f, bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(v: &str) -> Descriptor {
        Descriptor {
            name: "b".into(),
            version: v.into(),
            state_schema: 1,
        }
    }

    #[test]
    fn deploys_are_numbered_kept_and_identical_bytes_change_nothing() {
        let dir = std::env::temp_dir().join(format!("cairn-reg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = Registry::open(&dir).unwrap();
        let a = r.record("t", b"one", &desc("1"), 10).unwrap();
        assert_eq!(a.deploy, 1);
        assert_eq!(r.record("t", b"one", &desc("1"), 20).unwrap(), a);
        let b = r.record("t", b"two", &desc("2"), 30).unwrap();
        assert_eq!(b.deploy, 2);
        let r = Registry::open(&dir).unwrap();
        assert_eq!(r.active("t"), Some(b.clone()));
        assert_eq!(r.history("t").len(), 2);
        assert_eq!(r.component(&b.hash).unwrap(), b"two");
        std::fs::write(dir.join("deployments.json"), "{").unwrap();
        assert!(matches!(
            Registry::open(&dir),
            Err(RegistryError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
