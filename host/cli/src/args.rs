//! The command line's arguments (clap): every command and its flags, and
//! the connection a client command makes from them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use cairn_client::tls::{self, ClientFiles};
use cairn_client::{Client, ClientError};
use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
A first session (two terminals):
  cairn node                                   # log journal in ./cairn-data, 127.0.0.1:7400
  cairn deploy bank-account bank_account.wasm
  cairn ask bank-account acct-1 '{\"Deposit\":{\"amount\":100}}'
  cairn events bank-account acct-1
  cairn state bank-account acct-1 --at-seq 1
  cairn tail bank-account

Client commands find the node at 127.0.0.1:7400 and its development
certificates in ./cairn-data/tls; --node and --certs (or CAIRN_NODE and
CAIRN_CERTS) point elsewhere.";

/// cairn: event-sourced entities as WebAssembly components.
#[derive(Parser)]
#[command(name = "cairn", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Run a node: the journal, the entities and the QUIC API.
    Node(NodeArgs),
    /// Deploy a behavior component to an entity type. The node first
    /// replays the history of sampled entities through it; a version that
    /// cannot replay them is refused with a report and the active one stays.
    Deploy {
        /// Entity type, e.g. bank-account.
        entity_type: String,
        /// The component (.wasm) built with the guest SDK.
        file: PathBuf,
        /// Only validate and show the report (a dry run): change nothing.
        #[arg(long)]
        check: bool,
        /// In a cluster: how long to wait until the version is active on
        /// every member (then it says where it is still pending, and why).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List the versions of an entity type (hash, time, state schema, which
    /// is active) and its deploy history.
    Versions {
        /// Entity type.
        entity_type: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Activate an earlier version, validated like a deploy.
    Rollback {
        /// Entity type.
        entity_type: String,
        /// The version (default: the one before the active version).
        #[arg(long)]
        to: Option<u32>,
        /// In a cluster: how long to wait until the version is active on
        /// every member (then it says where it is still pending, and why).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Send a command and print the reply (after its events are durable).
    Ask {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The command as JSON, e.g. '{"Deposit":{"amount":100}}'.
        command: String,
        /// Only run the command if the entity is at this sequence number.
        #[arg(long)]
        expect_seq: Option<u64>,
        /// How long to wait for the reply, e.g. 5s.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Queue a command without waiting for it to run.
    Tell {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The command as JSON.
        command: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Print an entity's events: sequence, time, behavior version, event.
    Events {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Lowest sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Highest sequence number.
        #[arg(long)]
        to: Option<u64>,
        /// Most events to print.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Print an entity's state: now, after an event, or at a time.
    State {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The state right after event N (replayed through the behavior).
        #[arg(long, conflicts_with = "at")]
        at_seq: Option<u64>,
        /// The state at a time: RFC 3339 (2026-11-22T10:00:00Z) or ms since the epoch.
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// The cluster: members, their state and phi, shards and load; leave.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// List entity types with their deployed versions.
    Types {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Follow lifecycle events, or with TYPE every new event of that type.
    Tail {
        /// Entity type whose events to follow; lifecycle events if absent.
        entity_type: Option<String>,
        /// Start from this cursor (0: from the first event of the type);
        /// default: only new events.
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Manage certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Drive a running node with bank-account deposits and print throughput and latency.
    Bench(BenchArgs),
    /// Check or repair a stopped node's event log (`events.log`).
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Validate a cairn.toml and print the resolved settings.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// Compile and check a behavior component; print what it declares.
    Describe {
        /// The component.
        file: PathBuf,
    },
}

/// The `certs` commands.
#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a CA in DIR, a first node's certificate in DIR/node and a
    /// client's in DIR/client (neither holds the CA's key).
    Init {
        /// Where to write them.
        #[arg(long, default_value = "cairn-certs")]
        dir: PathBuf,
        /// Extra DNS names or IP addresses for the node certificate
        /// (localhost and 127.0.0.1 are always included).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Issue one more node's certificate (naming its node id) with the CA
    /// of `--ca`, into OUT: one per cluster member.
    Node {
        /// The CA's directory (`ca.pem`, `ca.key`: a `certs init` DIR).
        #[arg(long)]
        ca: PathBuf,
        /// Where to write the node's `ca.pem`, `node.pem`, `node.key`.
        #[arg(long)]
        out: PathBuf,
        /// The node id the certificate names (a new random one if absent).
        /// A node takes its id from its certificate.
        #[arg(long)]
        id: Option<u64>,
        /// Extra DNS names or IP addresses for the certificate.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Issue one more client's certificate with the CA of `--ca`, into OUT.
    Client {
        /// The CA's directory (`ca.pem`, `ca.key`: a `certs init` DIR).
        #[arg(long)]
        ca: PathBuf,
        /// Where to write the client's `ca.pem`, `client.pem`, `client.key`.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `cairn journal ...`: offline, with the node stopped (both take the
/// log's lock, which a running node holds).
#[derive(Subcommand)]
pub enum JournalCommand {
    /// Report the log: its records, whether it was closed cleanly, a torn
    /// tail (cut when the node starts) and damage to acknowledged data
    /// (the node refuses to start); exits with 1 when damaged.
    Check {
        /// The node's data directory.
        #[arg(long, default_value = "cairn-data")]
        data_dir: PathBuf,
    },
    /// Cut the log at damaged acknowledged data, so that the node starts:
    /// copies events.log to a backup file first (named in the output), then
    /// drops the damaged record and everything after it, listing the
    /// entities and sequence numbers lost.
    Cut {
        /// The node's data directory.
        #[arg(long, default_value = "cairn-data")]
        data_dir: PathBuf,
        /// The byte offset of the damage, as `cairn journal check` reports it.
        #[arg(long)]
        at: u64,
    },
}

/// `cairn cluster ...`.
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Show the members as the node sees them.
    Status {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Ask a node to leave the cluster for good (its shards move first; it
    /// will not start again on its data directory). SIGTERM is a restart.
    Leave {
        /// The node to ask (default: --node).
        addr: Option<SocketAddr>,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// How a client command reaches its node.
#[derive(Args, Clone)]
pub struct ConnArgs {
    /// The node's address.
    #[arg(
        long,
        env = "CAIRN_NODE",
        default_value = "127.0.0.1:7400",
        global = true
    )]
    pub node: SocketAddr,
    /// Directory with ca.pem, client.pem and client.key.
    #[arg(
        long,
        env = "CAIRN_CERTS",
        default_value = "cairn-data/tls",
        global = true
    )]
    pub certs: PathBuf,
    /// Name to check in the node's certificate.
    #[arg(long, default_value = tls::DEFAULT_SERVER_NAME, global = true)]
    pub server_name: String,
    /// How long to wait for the node to answer before saying that none
    /// answers (e.g. `3s`, `500ms`).
    #[arg(
        long,
        env = "CAIRN_CONNECT_TIMEOUT",
        default_value = "3s",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub connect_timeout: std::time::Duration,
    /// Print JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// How the node logs.
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Text for people.
    Human,
    /// One JSON object per line.
    Json,
}

/// The journal backend.
#[derive(Clone, Copy, ValueEnum)]
pub enum JournalArg {
    /// SQLite (WAL).
    Sqlite,
    /// The append-only log.
    Log,
}

/// `cairn node`.
#[derive(Args)]
pub struct NodeArgs {
    /// Configuration file (cairn.toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (journal, components, development certificates).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// UDP address to listen on.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Journal backend.
    #[arg(long, value_enum)]
    pub journal: Option<JournalArg>,
    /// Threads of the async runtime [default: one per core but one, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub workers: Option<u64>,
    /// Microseconds a thread of idle priority keeps a CPU awake after a
    /// request, so that the next wake-up is quick: a latency knob for
    /// dedicated machines (it spins a CPU); 0 disables it [default: 0].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=cairn_host::config::MAX_KEEP_AWAKE_US))]
    pub keep_awake_us: Option<u64>,
    /// Join a cluster through this peer address (repeatable; adds to
    /// `[cluster] seeds`). A node whose first seed is its own address, or
    /// that has `--cluster` and no seeds, starts a new cluster.
    #[arg(long = "seed")]
    pub seeds: Vec<SocketAddr>,
    /// Run as a cluster member even without seeds (the first node).
    #[arg(long)]
    pub cluster: bool,
    /// Members that must be up before shards are first allocated.
    #[arg(long)]
    pub min_members: Option<usize>,
    /// Directory with the cluster's ca.pem, node.pem and node.key (from
    /// `cairn certs init`); every member of a cluster needs certificates
    /// of the same CA [default: the development setup in <data_dir>/tls].
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "human")]
    pub log_format: LogFormat,
}

/// `cairn bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Entity type to drive (deploy bank-account first).
    #[arg(long, default_value = "bank-account")]
    pub entity_type: String,
    /// Number of entities.
    #[arg(long, default_value_t = 10_000)]
    pub entities: usize,
    /// Concurrent streams.
    #[arg(long, default_value_t = 64)]
    pub streams: usize,
    /// Total commands.
    #[arg(long, default_value_t = 200_000)]
    pub commands: usize,
    /// The command, as JSON.
    #[arg(long, default_value = r#"{"Deposit":{"amount":1}}"#)]
    pub command: String,
    /// Benchmark only: also measure the disk's sync latency (an append +
    /// fdatasync, and the log journal's O_DIRECT block write) between the
    /// sequential client's blocks of commands, to compare with them. Writes
    /// and removes probe files in --fsync-dir.
    #[arg(long)]
    pub probe_disk: bool,
    /// Where --probe-disk measures (a directory on the node's disk).
    #[arg(long, default_value = ".", requires = "probe_disk")]
    pub fsync_dir: PathBuf,
    #[command(flatten)]
    pub conn: ConnArgs,
}

impl ConnArgs {
    /// Connects to the node, with a hint when there are no certificates or
    /// no node.
    pub async fn connect(&self) -> Result<Client> {
        let files = ClientFiles::in_dir(&self.certs);
        if !files.ca.exists() {
            bail!(
                "no certificates in {}: start a node (it creates its development certificates in <data_dir>/tls) or pass --certs DIR",
                self.certs.display()
            );
        }
        Client::connect_within(self.node, &files, &self.server_name, self.connect_timeout)
            .await
            .map_err(|e| match e {
                ClientError::Connect { .. } | ClientError::NoAnswer { .. } => {
                    anyhow!("{e}\n(is `cairn node` running at {}?)", self.node)
                }
                e => e.into(),
            })
    }
}
