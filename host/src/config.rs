//! Node configuration: the `cairn.toml` file and the settings it resolves to.
//!
//! Owns parsing and validation of the TOML file and the resolution of
//! per-entity-type settings (defaults, then the override whose key equals the
//! type name, else the first regex key, in lexicographic order, that matches the
//! whole name). Every key is optional; the defaults are the programmatic
//! defaults of [`EntitySettings::default`] and [`NodeConfig::default`]. Unknown
//! keys and bad values are errors that name the key. This module never touches
//! the disk beyond reading the file it is given.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("invalid config value for `{key}`: {reason}")]
    Value {
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// What a full mailbox does with a new command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Overflow {
    /// Refuse the new command (the sender gets `MailboxFull`).
    DropNew,
    /// Drop the oldest queued command (its sender gets `MailboxFull`) and queue the new one.
    DropOldest,
    /// The sender waits until there is room.
    Backpressure,
}

/// Mailbox settings of an entity type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxSettings {
    /// Queued commands per entity, at least 1.
    pub capacity: usize,
    /// What happens when the mailbox is full.
    pub overflow: Overflow,
}

/// Supervision and guest limits of an entity type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupervisionSettings {
    /// Restarts allowed within `window` before the entity is stopped.
    pub max_restarts: u32,
    /// The window over which restarts are counted.
    pub window: Duration,
    /// Deadline of one guest call.
    pub call_timeout: Duration,
    /// Linear memory cap of one guest instance, in bytes.
    pub memory_limit: usize,
}

/// Snapshot policy of an entity type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSettings {
    /// Take a snapshot whenever the sequence number crosses a multiple of this; 0 disables.
    pub every: u64,
    /// Snapshots kept per entity (at least 1).
    pub keep: usize,
}

/// Passivation policy of an entity type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassivationSettings {
    /// Unload an entity after this long without a command; `None` never unloads.
    pub idle_after: Option<Duration>,
}

/// Fully resolved settings of one entity type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntitySettings {
    /// Mailbox.
    pub mailbox: MailboxSettings,
    /// Supervision and guest limits.
    pub supervision: SupervisionSettings,
    /// Snapshots.
    pub snapshot: SnapshotSettings,
    /// Passivation.
    pub passivation: PassivationSettings,
    /// Replication in a cluster (ignored on a single node).
    pub replication: ReplicationSettings,
}

/// How a type's events are replicated in a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// Backups per shard (fewer when the cluster has fewer other members).
    pub replicas: usize,
    /// Replica acknowledgements (each after the replica's fsync) a write
    /// waits for before it is acknowledged. 0 = fire and forget: recent
    /// events can be lost if the primary fails.
    pub min_acks: usize,
    /// How long a write waits for them before it fails (nothing acknowledged).
    pub ack_timeout: Duration,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        ReplicationSettings {
            replicas: 2,
            min_acks: 1,
            ack_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for EntitySettings {
    fn default() -> Self {
        EntitySettings {
            mailbox: MailboxSettings {
                capacity: 1024,
                overflow: Overflow::Backpressure,
            },
            supervision: SupervisionSettings {
                max_restarts: 5,
                window: Duration::from_secs(60),
                call_timeout: Duration::from_secs(1),
                memory_limit: 64 << 20,
            },
            snapshot: SnapshotSettings {
                every: 100,
                keep: 2,
            },
            passivation: PassivationSettings {
                idle_after: Some(Duration::from_secs(120)),
            },
            replication: ReplicationSettings::default(),
        }
    }
}

/// Which storage backend holds the journal and snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JournalBackend {
    /// SQLite in WAL mode (`journal.db`), inspectable with `sqlite3`.
    Sqlite,
    /// An append-only checksummed log (`events.log`) with an index in
    /// memory: the default, the faster one with many entities writing at
    /// once; crash-tested with a disk that keeps only synced bytes.
    #[default]
    Log,
}

impl JournalBackend {
    /// The file the backend keeps in the data directory.
    pub fn file_name(self) -> &'static str {
        match self {
            JournalBackend::Sqlite => "journal.db",
            JournalBackend::Log => "events.log",
        }
    }
}

/// Node-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Directory of the journal, snapshots and other node state.
    pub data_dir: PathBuf,
    /// Storage backend.
    pub journal: JournalBackend,
    /// Most appends committed in one journal transaction.
    pub journal_max_batch: usize,
    /// The node's name (in logs and the client handshake).
    pub name: String,
    /// UDP address the QUIC endpoint listens on.
    pub listen: SocketAddr,
    /// Most client connections at once; more are refused.
    pub max_connections: usize,
    /// Most requests being served at once; more are answered "busy".
    pub max_in_flight: usize,
    /// Entities whose history a new deploy replays before it goes live.
    pub deploy_sample: usize,
    /// Threads of the node's async runtime (connections, entities, wasm);
    /// `None` means one per core but one, which is left to the journal's
    /// writer thread (see [`NodeConfig::worker_threads`]).
    pub workers: Option<usize>,
    /// How long after a request one thread of idle priority keeps a CPU
    /// awake (spinning), so that the next wake-up finds it running; zero
    /// (the default) disables it. A latency knob for dedicated machines: it
    /// spins a CPU (docs/BENCHMARKS.md).
    pub keep_awake: Duration,
    /// Certificates; `None` means the development setup generated in
    /// `<data_dir>/tls` on first start.
    pub tls: Option<TlsFiles>,
}

/// Certificate files of a node (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signs node and client certificates; clients must present
    /// a certificate it signed.
    pub ca: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
}

/// Largest `node.keep_awake_us`: 100 ms.
pub const MAX_KEEP_AWAKE_US: u64 = 100_000;

/// Default UDP address of a node.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("cairn-data"),
            journal: JournalBackend::Log,
            journal_max_batch: 4096,
            name: "node-1".into(),
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            max_connections: 1024,
            max_in_flight: 4096,
            deploy_sample: 100,
            workers: None,
            keep_awake: Duration::ZERO,
            tls: None,
        }
    }
}

impl NodeConfig {
    /// Threads of the node's async runtime: `workers` if set, else one per
    /// core but one (at least one). The journal's writer is a thread of its
    /// own that every durable command waits for, and a runtime thread per
    /// core would compete with it (docs/BENCHMARKS.md, "one runtime thread").
    pub fn worker_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .saturating_sub(1)
                .max(1)
        })
    }
}

/// A per-entity-type override: every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntityOverride {
    mailbox_capacity: Option<usize>,
    overflow: Option<Overflow>,
    max_restarts: Option<u32>,
    window: Option<Duration>,
    call_timeout: Option<Duration>,
    memory_limit: Option<usize>,
    snapshot_every: Option<u64>,
    snapshot_keep: Option<usize>,
    idle_after: Option<Option<Duration>>,
    replicas: Option<usize>,
    min_acks: Option<usize>,
    ack_timeout: Option<Duration>,
}

impl EntityOverride {
    fn apply(&self, s: &mut EntitySettings) {
        if let Some(v) = self.mailbox_capacity {
            s.mailbox.capacity = v;
        }
        if let Some(v) = self.overflow {
            s.mailbox.overflow = v;
        }
        if let Some(v) = self.max_restarts {
            s.supervision.max_restarts = v;
        }
        if let Some(v) = self.window {
            s.supervision.window = v;
        }
        if let Some(v) = self.call_timeout {
            s.supervision.call_timeout = v;
        }
        if let Some(v) = self.memory_limit {
            s.supervision.memory_limit = v;
        }
        if let Some(v) = self.snapshot_every {
            s.snapshot.every = v;
        }
        if let Some(v) = self.snapshot_keep {
            s.snapshot.keep = v;
        }
        if let Some(v) = self.idle_after {
            s.passivation.idle_after = v;
        }
        if let Some(v) = self.replicas {
            s.replication.replicas = v;
        }
        if let Some(v) = self.min_acks {
            s.replication.min_acks = v;
        }
        if let Some(v) = self.ack_timeout {
            s.replication.ack_timeout = v;
        }
    }
}

#[derive(Clone, Debug)]
enum Matcher {
    Exact(String),
    Pattern(Regex),
}

/// Settings of a node that is part of a cluster (`[cluster]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Peer addresses to join through. A node with no seeds, or whose first
    /// seed is its own address, starts a new cluster when it has none.
    pub seeds: Vec<SocketAddr>,
    /// The address peers reach this node at; `None`: the listen address.
    pub advertise: Option<SocketAddr>,
    /// Shards of the table, fixed when the cluster is created.
    pub shards: u32,
    /// Members that must be up before shards are first allocated (Akka's
    /// `min-nr-of-members`), so that a cluster started together does not
    /// allocate everything to its first node and then move it all.
    pub min_members: usize,
    /// Most shards that change owner in one rebalancing round.
    pub max_moves: usize,
    /// Most commands buffered per shard while it is handed off.
    pub handoff_buffer: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            seeds: Vec::new(),
            advertise: None,
            shards: 256,
            min_members: 1,
            max_moves: 16,
            handoff_buffer: 1_000,
        }
    }
}

/// The whole configuration of a node.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Node-wide settings.
    pub node: NodeConfig,
    /// Cluster settings; `None`: a single node.
    pub cluster: Option<ClusterConfig>,
    /// Settings of every entity type without an override.
    pub defaults: EntitySettings,
    overrides: Vec<(Matcher, EntityOverride)>,
}

impl Config {
    /// Reads and validates a `cairn.toml` file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates the text of a `cairn.toml` file.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut config = Config::default();
        if let Some(node) = file.node {
            if let Some(dir) = node.data_dir {
                config.node.data_dir = dir;
            }
            if let Some(j) = node.journal {
                config.node.journal = j;
            }
            if let Some(b) = node.journal_max_batch {
                if b == 0 {
                    return Err(value_err("node.journal_max_batch", "must be at least 1"));
                }
                config.node.journal_max_batch = b;
            }
            if let Some(n) = node.name {
                if n.is_empty() {
                    return Err(value_err("node.name", "must not be empty"));
                }
                config.node.name = n;
            }
            if let Some(l) = node.listen {
                config.node.listen = l.parse().map_err(|_| {
                    value_err(
                        "node.listen",
                        &format!("`{l}` is not an address like 127.0.0.1:7400"),
                    )
                })?;
            }
            if let Some(m) = node.max_connections {
                if m == 0 {
                    return Err(value_err("node.max_connections", "must be at least 1"));
                }
                config.node.max_connections = m;
            }
            if let Some(m) = node.max_in_flight {
                if m == 0 {
                    return Err(value_err("node.max_in_flight", "must be at least 1"));
                }
                config.node.max_in_flight = m;
            }
            if let Some(n) = node.deploy_sample {
                config.node.deploy_sample = n;
            }
            if let Some(w) = node.workers {
                if w == 0 {
                    return Err(value_err("node.workers", "must be at least 1"));
                }
                config.node.workers = Some(w);
            }
            if let Some(us) = node.keep_awake_us {
                if us > MAX_KEEP_AWAKE_US {
                    return Err(value_err(
                        "node.keep_awake_us",
                        &format!("must be at most {MAX_KEEP_AWAKE_US} (0 disables it)"),
                    ));
                }
                config.node.keep_awake = Duration::from_micros(us);
            }
            if let Some(t) = node.tls {
                config.node.tls = Some(TlsFiles {
                    ca: t.ca,
                    cert: t.cert,
                    key: t.key,
                });
            }
        }
        if let Some(c) = file.cluster {
            let mut cluster = ClusterConfig::default();
            let addr = |key: &str, a: &str| -> Result<SocketAddr, ConfigError> {
                a.parse().map_err(|_| {
                    value_err(key, &format!("`{a}` is not an address like 127.0.0.1:7400"))
                })
            };
            for seed in c.seeds.unwrap_or_default() {
                cluster.seeds.push(addr("cluster.seeds", &seed)?);
            }
            if let Some(a) = c.advertise {
                cluster.advertise = Some(addr("cluster.advertise", &a)?);
            }
            if let Some(n) = c.shards {
                if !(1..=65_536).contains(&n) {
                    return Err(value_err("cluster.shards", "must be between 1 and 65536"));
                }
                cluster.shards = n;
            }
            if let Some(n) = c.min_members {
                cluster.min_members = n.max(1);
            }
            if let Some(n) = c.max_moves {
                if n == 0 {
                    return Err(value_err("cluster.max_moves", "must be at least 1"));
                }
                cluster.max_moves = n;
            }
            if let Some(n) = c.handoff_buffer {
                cluster.handoff_buffer = n;
            }
            config.cluster = Some(cluster);
        }
        if let Some(defaults) = file.defaults {
            defaults
                .to_override("defaults")?
                .apply(&mut config.defaults);
        }
        for (key, section) in file.entities.unwrap_or_default() {
            let prefix = format!("entities.\"{key}\"");
            let ov = section.to_override(&prefix)?;
            let matcher = if is_plain_name(&key) {
                Matcher::Exact(key)
            } else {
                let re = Regex::new(&format!("^(?:{key})$"))
                    .map_err(|e| value_err(&prefix, &format!("not a valid regex: {e}")))?;
                Matcher::Pattern(re)
            };
            config.overrides.push((matcher, ov));
        }
        Ok(config)
    }

    /// Settings for an entity type: defaults, then the matching override.
    pub fn settings_for(&self, entity_type: &str) -> EntitySettings {
        let mut s = self.defaults.clone();
        let exact = self
            .overrides
            .iter()
            .find(|(m, _)| matches!(m, Matcher::Exact(n) if n == entity_type));
        let chosen = exact.or_else(|| {
            self.overrides
                .iter()
                .find(|(m, _)| matches!(m, Matcher::Pattern(re) if re.is_match(entity_type)))
        });
        if let Some((_, ov)) = chosen {
            ov.apply(&mut s);
        }
        s
    }

    /// Adds an override for one entity type (programmatic equivalent of an
    /// `[entities."name"]` section), replacing settings wholesale.
    pub fn set_entity(&mut self, entity_type: &str, settings: EntitySettings) {
        let ov = EntityOverride {
            mailbox_capacity: Some(settings.mailbox.capacity),
            overflow: Some(settings.mailbox.overflow),
            max_restarts: Some(settings.supervision.max_restarts),
            window: Some(settings.supervision.window),
            call_timeout: Some(settings.supervision.call_timeout),
            memory_limit: Some(settings.supervision.memory_limit),
            snapshot_every: Some(settings.snapshot.every),
            snapshot_keep: Some(settings.snapshot.keep),
            idle_after: Some(settings.passivation.idle_after),
            replicas: Some(settings.replication.replicas),
            min_acks: Some(settings.replication.min_acks),
            ack_timeout: Some(settings.replication.ack_timeout),
        };
        self.overrides
            .retain(|(m, _)| !matches!(m, Matcher::Exact(n) if n == entity_type));
        self.overrides
            .insert(0, (Matcher::Exact(entity_type.to_owned()), ov));
    }
}

/// Entity type names are letters, digits, `-`, `_` and `.`; anything else in an
/// `[entities]` key makes it a regex.
fn is_plain_name(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn value_err(key: &str, reason: &str) -> ConfigError {
    ConfigError::Value {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

// ---- the file's shape -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node: Option<FileNode>,
    cluster: Option<FileCluster>,
    defaults: Option<FileEntity>,
    entities: Option<BTreeMap<String, FileEntity>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    journal: Option<JournalBackend>,
    journal_max_batch: Option<usize>,
    listen: Option<String>,
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    deploy_sample: Option<usize>,
    workers: Option<usize>,
    keep_awake_us: Option<u64>,
    tls: Option<FileTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    seeds: Option<Vec<String>>,
    advertise: Option<String>,
    shards: Option<u32>,
    min_members: Option<usize>,
    max_moves: Option<usize>,
    handoff_buffer: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntity {
    mailbox: Option<FileMailbox>,
    supervision: Option<FileSupervision>,
    snapshot: Option<FileSnapshot>,
    passivation: Option<FilePassivation>,
    replication: Option<FileReplication>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReplication {
    replicas: Option<usize>,
    min_acks: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    ack_timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMailbox {
    capacity: Option<usize>,
    overflow: Option<Overflow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSupervision {
    max_restarts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    call_timeout: Option<Duration>,
    memory_limit_mib: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSnapshot {
    every: Option<u64>,
    keep: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePassivation {
    /// A duration such as "2m", or "never".
    idle_after: Option<String>,
}

impl FileEntity {
    fn to_override(&self, prefix: &str) -> Result<EntityOverride, ConfigError> {
        let mut ov = EntityOverride::default();
        if let Some(m) = &self.mailbox {
            if m.capacity == Some(0) {
                return Err(value_err(
                    &format!("{prefix}.mailbox.capacity"),
                    "must be at least 1",
                ));
            }
            ov.mailbox_capacity = m.capacity;
            ov.overflow = m.overflow;
        }
        if let Some(s) = &self.supervision {
            ov.max_restarts = s.max_restarts;
            ov.window = s.window;
            if s.call_timeout == Some(Duration::ZERO) {
                return Err(value_err(
                    &format!("{prefix}.supervision.call_timeout"),
                    "must be more than zero",
                ));
            }
            ov.call_timeout = s.call_timeout;
            if let Some(mib) = s.memory_limit_mib {
                if mib == 0 || mib > 4096 {
                    return Err(value_err(
                        &format!("{prefix}.supervision.memory_limit_mib"),
                        "must be between 1 and 4096",
                    ));
                }
                ov.memory_limit = Some(mib << 20);
            }
        }
        if let Some(r) = &self.replication {
            if let (Some(n), Some(r)) = (r.min_acks, r.replicas)
                && n > r
            {
                return Err(value_err(
                    &format!("{prefix}.replication.min_acks"),
                    &format!("{n} is more than the {r} replicas: no write could be acknowledged"),
                ));
            }
            if r.ack_timeout == Some(Duration::ZERO) {
                return Err(value_err(
                    &format!("{prefix}.replication.ack_timeout"),
                    "must be more than zero",
                ));
            }
            ov.replicas = r.replicas;
            ov.min_acks = r.min_acks;
            ov.ack_timeout = r.ack_timeout;
        }
        if let Some(s) = &self.snapshot {
            if s.keep == Some(0) {
                return Err(value_err(
                    &format!("{prefix}.snapshot.keep"),
                    "must be at least 1",
                ));
            }
            ov.snapshot_every = s.every;
            ov.snapshot_keep = s.keep;
        }
        if let Some(p) = &self.passivation
            && let Some(text) = &p.idle_after
        {
            ov.idle_after = Some(if text == "never" {
                None
            } else {
                let d = humantime::parse_duration(text).map_err(|e| {
                    value_err(
                        &format!("{prefix}.passivation.idle_after"),
                        &format!("{e} (expected a duration such as \"2m\", or \"never\")"),
                    )
                })?;
                Some(d)
            });
        }
        Ok(ov)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.settings_for("anything"), EntitySettings::default());
        assert_eq!(c.node, NodeConfig::default());
    }

    #[test]
    fn full_file_and_overrides() {
        let c = Config::parse(
            r#"
            [node]
            data_dir = "/tmp/x"
            journal = "log"
            [defaults.mailbox]
            capacity = 10
            overflow = "drop_oldest"
            [defaults.supervision]
            max_restarts = 2
            window = "30s"
            call_timeout = "250ms"
            memory_limit_mib = 16
            [defaults.snapshot]
            every = 5
            keep = 3
            [defaults.passivation]
            idle_after = "never"
            [entities."bank-account".snapshot]
            every = 7
            [entities."cart-.*".mailbox]
            overflow = "drop_new"
            [entities."b.*".mailbox]
            capacity = 99
            "#,
        )
        .unwrap();
        assert_eq!(c.node.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.node.journal, JournalBackend::Log);
        let d = c.settings_for("other");
        assert_eq!(d.mailbox.capacity, 10);
        assert_eq!(d.mailbox.overflow, Overflow::DropOldest);
        assert_eq!(d.supervision.window, Duration::from_secs(30));
        assert_eq!(d.supervision.call_timeout, Duration::from_millis(250));
        assert_eq!(d.supervision.memory_limit, 16 << 20);
        assert_eq!(d.passivation.idle_after, None);
        // exact beats the regex "b.*"
        let b = c.settings_for("bank-account");
        assert_eq!(b.snapshot.every, 7);
        assert_eq!(b.snapshot.keep, 3);
        assert_eq!(b.mailbox.capacity, 10);
        let cart = c.settings_for("cart-eu");
        assert_eq!(cart.mailbox.overflow, Overflow::DropNew);
        assert_eq!(c.settings_for("bob").mailbox.capacity, 99);
        // the regex must match the whole name
        assert_eq!(
            c.settings_for("xcart-eu").mailbox.overflow,
            Overflow::DropOldest
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::parse("[node]\ndata_dri = \"x\"").unwrap_err();
        assert!(e.to_string().contains("data_dri"), "{e}");
        let e = Config::parse("[defaults.mailbox]\noverflow = \"explode\"").unwrap_err();
        assert!(e.to_string().contains("explode"), "{e}");
        let e = Config::parse("[defaults.mailbox]\ncapacity = 0").unwrap_err();
        assert!(e.to_string().contains("defaults.mailbox.capacity"), "{e}");
        let e = Config::parse("[defaults.passivation]\nidle_after = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("idle_after"), "{e}");
        let e = Config::parse("[entities.\"(\".snapshot]\nevery = 1").unwrap_err();
        assert!(e.to_string().contains("regex"), "{e}");
        let e = Config::parse("this is not toml").unwrap_err();
        assert!(matches!(e, ConfigError::Parse(_)));
        let e = Config::parse("[defaults.snapshot]\nevery = -1").unwrap_err();
        assert!(matches!(e, ConfigError::Parse(_)), "{e}");
        let e = Config::parse("[node]\nworkers = 0").unwrap_err();
        assert!(e.to_string().contains("node.workers"), "{e}");
        let e = Config::parse("[node]\nkeep_awake_us = 100001").unwrap_err();
        assert!(e.to_string().contains("node.keep_awake_us"), "{e}");
    }

    #[test]
    fn keep_awake_defaults_to_off() {
        assert_eq!(Config::parse("").unwrap().node.keep_awake, Duration::ZERO);
        let off = Config::parse("[node]\nkeep_awake_us = 0").unwrap().node;
        assert_eq!(off.keep_awake, Duration::ZERO);
        let set = Config::parse("[node]\nkeep_awake_us = 250").unwrap().node;
        assert_eq!(set.keep_awake, Duration::from_micros(250));
    }

    #[test]
    fn runtime_threads_leave_a_core_to_the_journal_unless_set() {
        let auto = Config::parse("").unwrap().node;
        assert_eq!(auto.workers, None);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(auto.worker_threads(), (cores - 1).max(1));
        let set = Config::parse("[node]\nworkers = 3").unwrap().node;
        assert_eq!(set.workers, Some(3));
        assert_eq!(set.worker_threads(), 3);
    }
}
