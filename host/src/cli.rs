//! The `cairn` command line: run a node, talk to one, manage certificates,
//! benchmark. Argument parsing (clap), human and `--json` output, progress
//! indicators, exit codes. Everything it does goes through the library: the
//! node, the server and the client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use cairn_host::api::{Payload, Request, Response, StateAt};
use cairn_host::client::{Client, ClientError};
use cairn_host::config::{Config, JournalBackend};
use cairn_host::node::Node;
use cairn_host::runtime::{GuestLimits, WasmEngine};
use cairn_host::server::{Server, ServerLimits};
use cairn_host::tls::{self, ClientFiles};

const AFTER_HELP: &str = "\
A first session (two terminals):
  cairn node                                   # SQLite journal in ./cairn-data, 127.0.0.1:7400
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
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA, a node certificate and a client certificate in DIR.
    Init {
        /// Where to write them.
        #[arg(long, default_value = "cairn-certs")]
        dir: PathBuf,
        /// Extra DNS names or IP addresses for the node certificate
        /// (localhost and 127.0.0.1 are always included).
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

#[derive(Args, Clone)]
struct ConnArgs {
    /// The node's address.
    #[arg(
        long,
        env = "CAIRN_NODE",
        default_value = "127.0.0.1:7400",
        global = true
    )]
    node: SocketAddr,
    /// Directory with ca.pem, client.pem and client.key.
    #[arg(
        long,
        env = "CAIRN_CERTS",
        default_value = "cairn-data/tls",
        global = true
    )]
    certs: PathBuf,
    /// Name to check in the node's certificate.
    #[arg(long, default_value = tls::DEFAULT_SERVER_NAME, global = true)]
    server_name: String,
    /// Print JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum JournalArg {
    Sqlite,
    Log,
}

#[derive(Args)]
struct NodeArgs {
    /// Configuration file (cairn.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (journal, components, development certificates).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// UDP address to listen on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Journal backend.
    #[arg(long, value_enum)]
    journal: Option<JournalArg>,
    /// Threads of the async runtime [default: one per core but one, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    workers: Option<u64>,
    /// Microseconds a thread of idle priority keeps a CPU awake after a
    /// request, so that the next wake-up is quick; 0 disables it [default: 1000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=cairn_host::config::MAX_KEEP_AWAKE_US))]
    keep_awake_us: Option<u64>,
    /// Log format.
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
}

#[derive(Args)]
struct BenchArgs {
    /// Entity type to drive (deploy bank-account first).
    #[arg(long, default_value = "bank-account")]
    entity_type: String,
    /// Number of entities.
    #[arg(long, default_value_t = 10_000)]
    entities: usize,
    /// Concurrent streams.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// Total commands.
    #[arg(long, default_value_t = 200_000)]
    commands: usize,
    /// The command, as JSON.
    #[arg(long, default_value = r#"{"Deposit":{"amount":1}}"#)]
    command: String,
    /// Where to measure fsync latency (a directory on the node's disk).
    #[arg(long, default_value = ".")]
    fsync_dir: PathBuf,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Runs the command line.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        command @ (Command::CheckConfig { .. }
        | Command::Describe { .. }
        | Command::Certs { .. }) => local_command(command),
        Command::Node(args) => {
            // The node's runtime has `node.workers` threads (one per core but
            // one by default, see `NodeConfig::worker_threads`).
            let config = node_config(&args)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.node.worker_threads())
                .enable_all()
                .build()?
                .block_on(run_node(config, args.log_format))
        }
        // A client command runs on one thread, which is cheaper and lets the
        // QUIC driver put many requests in one packet.
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async_main(command)),
    }
}

/// The commands that need no runtime: `check-config`, `describe`, `certs`.
fn local_command(command: Command) -> Result<()> {
    match command {
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!("{}: valid", file.display());
            println!("data_dir = {}", config.node.data_dir.display());
            println!("listen = {}", config.node.listen);
            println!("journal = {:?}", config.node.journal);
            println!("workers = {}", config.node.worker_threads());
            println!("keep_awake_us = {}", config.node.keep_awake.as_micros());
            println!("defaults = {:#?}", config.defaults);
            Ok(())
        }
        Command::Describe { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let engine = WasmEngine::new()?;
            let behavior = engine.load(&bytes, GuestLimits::default())?;
            let d = cairn_host::behavior::Behavior::descriptor(&behavior);
            println!(
                "name: {}\nversion: {}\nstate schema: {}",
                d.name, d.version, d.state_schema
            );
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Init { dir, names },
        } => {
            tls::init(&dir, &names)?;
            println!("created in {}:", dir.display());
            println!("  ca.pem ca.key        the CA (keep ca.key secret)");
            println!("  node.pem node.key    the node: [node.tls] ca/cert/key in cairn.toml");
            println!(
                "  client.pem client.key  a client: cairn --certs {}",
                dir.display()
            );
            Ok(())
        }
        _ => bail!("not a command that runs without a runtime"),
    }
}

async fn async_main(command: Command) -> Result<()> {
    match command {
        // `main` gives the node a runtime of its own; on another one it runs the same.
        Command::Node(args) => run_node(node_config(&args)?, args.log_format).await,
        Command::Deploy {
            entity_type,
            file,
            check,
            conn,
        } => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let client = connect(&conn).await?;
            let spinner = spinner(&format!(
                "{} {} ({} KiB): compiling, checking, replaying history",
                if check { "checking" } else { "deploying" },
                file.display(),
                wasm.len() / 1024
            ));
            let r = client.deploy_with(&entity_type, wasm, check).await;
            spinner.finish_and_clear();
            client.close().await;
            let d = refused_report(r, "deploy", conn.json)?;
            print_deployed(&d, &entity_type, check, conn.json);
            Ok(())
        }
        Command::Rollback {
            entity_type,
            to,
            conn,
        } => {
            let client = connect(&conn).await?;
            let spinner = spinner("rolling back: replaying history");
            let r = client.rollback(&entity_type, to).await;
            spinner.finish_and_clear();
            client.close().await;
            let d = refused_report(r, "rollback", conn.json)?;
            print_deployed(&d, &entity_type, false, conn.json);
            Ok(())
        }
        Command::Versions { entity_type, conn } => {
            let client = connect(&conn).await?;
            let v = client.versions(&entity_type).await;
            client.close().await;
            let v = v?;
            if conn.json {
                for t in &v.versions {
                    println!(
                        "{}",
                        serde_json::json!({
                            "version": t.deploy, "behavior_version": t.version, "hash": t.hash,
                            "deployed_ms": t.deployed_ms, "state_schema": t.state_schema,
                            "active": Some(t.deploy) == v.active,
                        })
                    );
                }
            } else {
                for t in &v.versions {
                    println!(
                        "{} #{:<3} {} {:<10} schema {}  sha256 {}  deployed {}",
                        if Some(t.deploy) == v.active { "*" } else { " " },
                        t.deploy,
                        t.behavior,
                        t.version,
                        t.state_schema,
                        &t.hash[..16.min(t.hash.len())],
                        fmt_time(t.deployed_ms)
                    );
                }
                if !v.history.is_empty() {
                    println!("history:");
                }
                for r in &v.history {
                    println!(
                        "  {}  {:?} {}  {:?}: {}",
                        fmt_time(r.at_ms),
                        r.action,
                        r.deploy.map_or("(new)".to_owned(), |n| format!("#{n}")),
                        r.outcome,
                        r.report.summary()
                    );
                }
            }
            Ok(())
        }
        Command::Ask {
            entity_type,
            entity_id,
            command,
            expect_seq,
            timeout,
            conn,
        } => {
            let client = connect(&conn).await?;
            let r = client
                .ask(
                    &entity_type,
                    &entity_id,
                    Payload::Json(command),
                    expect_seq,
                    timeout,
                )
                .await?;
            let reply = match r.reply {
                Some(Payload::Json(j)) => j,
                Some(Payload::Bytes(_)) => bail!("the node answered bytes to a JSON command"),
                None => "null".into(),
            };
            if conn.json {
                println!("{{\"reply\":{reply},\"seq\":{}}}", r.seq);
            } else {
                println!("{reply}");
                eprintln!("(seq {})", r.seq);
            }
            client.close().await;
            Ok(())
        }
        Command::Tell {
            entity_type,
            entity_id,
            command,
            conn,
        } => {
            let client = connect(&conn).await?;
            client
                .tell(&entity_type, &entity_id, Payload::Json(command))
                .await?;
            if conn.json {
                println!("{{\"queued\":true}}");
            } else {
                println!("queued");
            }
            client.close().await;
            Ok(())
        }
        Command::Events {
            entity_type,
            entity_id,
            from,
            to,
            limit,
            conn,
        } => {
            let client = connect(&conn).await?;
            let events = client
                .events(
                    &entity_type,
                    &entity_id,
                    from,
                    to.unwrap_or(u64::MAX),
                    limit,
                )
                .await?;
            for e in &events {
                print_event(e, conn.json, false);
            }
            if events.is_empty() && !conn.json {
                eprintln!("no events");
            }
            client.close().await;
            Ok(())
        }
        Command::State {
            entity_type,
            entity_id,
            at_seq,
            at,
            conn,
        } => {
            let at = match (at_seq, at) {
                (Some(n), _) => StateAt::Seq(n),
                (None, Some(t)) => StateAt::Time(parse_time(&t)?),
                (None, None) => StateAt::Now,
            };
            let client = connect(&conn).await?;
            let spinner = (!matches!(at, StateAt::Now)).then(|| spinner("replaying history"));
            let s = client.state(&entity_type, &entity_id, at).await;
            if let Some(sp) = spinner {
                sp.finish_and_clear();
            }
            let s = s?;
            if conn.json {
                println!(
                    "{{\"state\":{},\"seq\":{},\"replayed\":{}}}",
                    s.json, s.seq, s.replayed
                );
            } else {
                println!("{}", s.json);
                if matches!(at, StateAt::Now) {
                    eprintln!("(seq {})", s.seq);
                } else {
                    eprintln!("(seq {}, {} events replayed)", s.seq, s.replayed);
                }
            }
            client.close().await;
            Ok(())
        }
        Command::Types { conn } => {
            let client = connect(&conn).await?;
            let types = client.types().await?;
            for t in &types {
                if conn.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "entity_type": t.entity_type, "deploy": t.deploy, "behavior": t.behavior,
                            "version": t.version, "state_schema": t.state_schema, "hash": t.hash,
                            "deployed_ms": t.deployed_ms, "live_entities": t.live_entities,
                        })
                    );
                } else {
                    println!(
                        "{:<24} #{:<3} {} {}  schema {}  sha256 {}  deployed {}  live {}",
                        t.entity_type,
                        t.deploy,
                        t.behavior,
                        t.version,
                        t.state_schema,
                        &t.hash[..16],
                        fmt_time(t.deployed_ms),
                        t.live_entities
                    );
                }
            }
            if types.is_empty() && !conn.json {
                eprintln!("no entity types deployed");
            }
            client.close().await;
            Ok(())
        }
        Command::Tail {
            entity_type,
            from,
            count,
            conn,
        } => tail(entity_type, from, count, &conn).await,
        Command::Bench(args) => bench(args).await,
        command @ (Command::CheckConfig { .. }
        | Command::Describe { .. }
        | Command::Certs { .. }) => local_command(command),
    }
}

async fn connect(conn: &ConnArgs) -> Result<Client> {
    let files = ClientFiles::in_dir(&conn.certs);
    if !files.ca.exists() {
        bail!(
            "no certificates in {}: start a node (it creates its development certificates in <data_dir>/tls) or pass --certs DIR",
            conn.certs.display()
        );
    }
    Client::connect(conn.node, &files, &conn.server_name)
        .await
        .map_err(|e| match e {
            ClientError::Connect { .. } => {
                anyhow!("{e}\n(is `cairn node` running at {}?)", conn.node)
            }
            e => e.into(),
        })
}

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_message(msg.to_owned());
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

fn fmt_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn parse_time(s: &str) -> Result<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
        anyhow!(
            "`{s}` is not a time: use RFC 3339 (2026-11-22T10:00:00Z) or ms since the epoch ({e})"
        )
    })?;
    Ok(t.duration_since(UNIX_EPOCH)?.as_millis() as u64)
}

/// Turns a refused deploy into an error that shows the report.
fn refused_report(
    r: Result<cairn_host::client::Deployed, ClientError>,
    what: &str,
    json: bool,
) -> Result<cairn_host::client::Deployed> {
    match r {
        Ok(d) => Ok(d),
        Err(ClientError::Api(cairn_host::api::ApiError::ValidationFailed(report))) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "refused": true, "report": report })
                );
            }
            let mut text = format!("{what} refused: {}", report.summary());
            for f in &report.failures {
                text.push_str(&format!(
                    "\n  entity `{}` event #{}: {}",
                    f.entity_id, f.seq, f.error
                ));
            }
            text.push_str("\nthe active version is unchanged");
            Err(anyhow!(text))
        }
        Err(e) => Err(e.into()),
    }
}

fn print_deployed(d: &cairn_host::client::Deployed, entity_type: &str, check: bool, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "entity_type": entity_type,
                "changed": d.changed,
                "check": check,
                "version": d.info.as_ref().map(|t| t.deploy),
                "behavior_version": d.info.as_ref().map(|t| t.version.clone()),
                "hash": d.info.as_ref().map(|t| t.hash.clone()),
                "state_schema": d.info.as_ref().map(|t| t.state_schema),
                "report": d.report,
            })
        );
        return;
    }
    let r = &d.report;
    if check {
        println!("check passed: {}", r.summary());
    } else if let Some(t) = &d.info {
        println!(
            "{} {} #{}: {} {} (state schema {}), sha256 {}",
            if d.changed { "deployed" } else { "unchanged:" },
            t.entity_type,
            t.deploy,
            t.behavior,
            t.version,
            t.state_schema,
            &t.hash[..16.min(t.hash.len())]
        );
        if r.sampled > 0 {
            println!("validated: {}", r.summary());
        }
    }
    for diff in &r.differences {
        println!(
            "  {} at #{}: {} -> {}",
            diff.entity_id, diff.seq, diff.active, diff.candidate
        );
    }
}

fn print_event(e: &cairn_host::api::EventView, json: bool, with_id: bool) {
    let body = e
        .json
        .clone()
        .unwrap_or_else(|| format!("\"<{} bytes the behavior cannot render>\"", e.bytes.len()));
    if json {
        println!(
            "{{\"entity_type\":{},\"entity_id\":{},\"seq\":{},\"timestamp_ms\":{},\"version\":{},\"event\":{body}}}",
            serde_json::Value::from(e.entity_type.as_str()),
            serde_json::Value::from(e.entity_id.as_str()),
            e.seq,
            e.timestamp_ms,
            serde_json::Value::from(e.version.as_str()),
        );
    } else if with_id {
        println!(
            "{}  #{:<5} {}  v{}  {body}",
            e.entity_id,
            e.seq,
            fmt_time(e.timestamp_ms),
            e.version
        );
    } else {
        println!(
            "#{:<5} {}  v{}  {body}",
            e.seq,
            fmt_time(e.timestamp_ms),
            e.version
        );
    }
}

async fn tail(
    entity_type: Option<String>,
    from: Option<u64>,
    count: Option<u64>,
    conn: &ConnArgs,
) -> Result<()> {
    let client = connect(conn).await?;
    let mut seen = 0u64;
    let limit = count.unwrap_or(u64::MAX);
    match entity_type {
        None => {
            let mut follow = client.follow_lifecycle().await?;
            eprintln!("(following lifecycle events)");
            while seen < limit {
                let Some(r) = follow.next().await else { break };
                match r? {
                    Response::Lifecycle {
                        kind,
                        entity_type,
                        entity_id,
                        detail,
                    } => {
                        if conn.json {
                            println!(
                                "{}",
                                serde_json::json!({
                                    "kind": kind, "entity_type": entity_type,
                                    "entity_id": entity_id, "detail": detail,
                                })
                            );
                        } else {
                            println!(
                                "{} {kind:<12} {entity_type}{} {detail}",
                                fmt_time(now_ms()),
                                entity_id.map(|i| format!("/{i}")).unwrap_or_default()
                            );
                        }
                        seen += 1;
                    }
                    Response::Lagged(n) => eprintln!("(missed {n} lifecycle events)"),
                    other => bail!("unexpected response {other:?}"),
                }
            }
        }
        Some(ty) => {
            let cursor = match from {
                Some(c) => c,
                None => {
                    // Only new events: skip to the end of the feed first.
                    let mut f = client.follow_events(&ty, 0).await?;
                    let mut end = 0;
                    loop {
                        let next = tokio::time::timeout(Duration::from_millis(300), f.next()).await;
                        match next {
                            Ok(Some(Ok(Response::Feed { next, .. }))) => end = next,
                            Ok(Some(Err(e))) => return Err(e.into()),
                            _ => break,
                        }
                    }
                    f.stop();
                    end
                }
            };
            let mut follow = client.follow_events(&ty, cursor).await?;
            eprintln!("(following {ty} events from cursor {cursor})");
            'outer: while seen < limit {
                let Some(r) = follow.next().await else { break };
                match r? {
                    Response::Feed { events, next } => {
                        for e in &events {
                            print_event(e, conn.json, true);
                            seen += 1;
                            if seen >= limit {
                                break 'outer;
                            }
                        }
                        if !conn.json {
                            eprintln!("(cursor {next})");
                        }
                    }
                    other => bail!("unexpected response {other:?}"),
                }
            }
        }
    }
    client.close().await;
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The node's configuration: the file if one is given, then the flags.
fn node_config(args: &NodeArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = &args.data_dir {
        config.node.data_dir = d.clone();
    }
    if let Some(l) = args.listen {
        config.node.listen = l;
    }
    if let Some(j) = args.journal {
        config.node.journal = match j {
            JournalArg::Sqlite => JournalBackend::Sqlite,
            JournalArg::Log => JournalBackend::Log,
        };
    }
    if let Some(w) = args.workers {
        config.node.workers = Some(w as usize);
    }
    if let Some(us) = args.keep_awake_us {
        config.node.keep_awake = Duration::from_micros(us);
    }
    Ok(config)
}

async fn run_node(config: Config, log_format: LogFormat) -> Result<()> {
    init_logging(log_format);
    let data_dir = config.node.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let files = match &config.node.tls {
        Some(f) => f.clone(),
        None => {
            let dir = data_dir.join("tls");
            if tls::ensure_dev(&dir)? {
                tracing::info!(dir = %dir.display(), "created development certificates");
            }
            tls::node_files(&dir)
        }
    };
    let node = Node::open(config.clone()).await?;
    for d in node.deployments() {
        tracing::info!(entity_type = %d.entity_type, deploy = d.deploy, behavior_version = %d.behavior_version, "restored deployment");
    }
    let limits = ServerLimits {
        max_connections: config.node.max_connections,
        max_in_flight: config.node.max_in_flight,
        keep_awake: config.node.keep_awake,
        ..ServerLimits::default()
    };
    let server = Server::start(
        node.clone(),
        &files,
        config.node.listen,
        limits,
        config.node.name.clone(),
    )?;
    tracing::info!(
        node = %config.node.name,
        listen = %server.local_addr(),
        data_dir = %data_dir.display(),
        journal = ?config.node.journal,
        workers = config.node.worker_threads(),
        "node ready"
    );
    wait_for_signal().await;
    tracing::info!("shutting down: closing connections, draining mailboxes");
    server.close().await;
    node.shutdown(Duration::from_secs(10)).await;
    drop(node);
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The disk probes a sequential deposit is compared with. They run in short
/// blocks between blocks of sequential deposits, so that both meet the disk
/// at the same moments: this disk's latency drifts by tens of microseconds
/// from one second to the next.
struct DiskProbes {
    /// Appended to and `fdatasync`ed: 64 bytes per round.
    append: std::fs::File,
    append_path: PathBuf,
    /// The log journal's own durable write.
    log: LogProbe,
    append_lat: Vec<Duration>,
    log_lat: Vec<Duration>,
}

/// The log journal's durable write: a 4 KiB block overwritten in space
/// already in the file (the log zero-fills ahead), with `O_DIRECT | O_DSYNC`
/// where the file system takes it, else `pwrite` + `fdatasync`. Cheaper than
/// an append that grows the file.
struct LogProbe {
    file: std::fs::File,
    path: PathBuf,
    direct: bool,
    /// Holds one block aligned for `O_DIRECT` at `start`.
    buf: Vec<u8>,
    start: usize,
    next: u64,
    blocks: u64,
}

const PROBE_BLOCK: usize = 4096;

impl DiskProbes {
    /// Creates the probe files in `dir`, with room for `rounds` rounds.
    fn open(dir: &Path, rounds: usize) -> Result<DiskProbes> {
        let tag = std::process::id();
        let append_path = dir.join(format!(".cairn-fsync-probe-{tag}"));
        let append = std::fs::File::create(&append_path)
            .with_context(|| format!("cannot create {}", append_path.display()))?;
        let log = LogProbe::open(&dir.join(format!(".cairn-logsync-probe-{tag}")), rounds)?;
        Ok(DiskProbes {
            append,
            append_path,
            log,
            append_lat: Vec::with_capacity(rounds),
            log_lat: Vec::with_capacity(rounds),
        })
    }

    /// One append + `fdatasync`, then one log-journal write.
    fn round(&mut self) -> Result<()> {
        use std::io::Write;
        let t = Instant::now();
        self.append.write_all(&[0u8; 64])?;
        self.append.sync_data()?;
        self.append_lat.push(t.elapsed());
        let t = Instant::now();
        self.log.write()?;
        self.log_lat.push(t.elapsed());
        Ok(())
    }
}

impl Drop for DiskProbes {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.append_path);
        let _ = std::fs::remove_file(&self.log.path);
    }
}

impl LogProbe {
    fn open(path: &Path, rounds: usize) -> Result<LogProbe> {
        use std::os::unix::fs::FileExt;
        let blocks = rounds as u64 + 1;
        let f = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all_at(&vec![0u8; PROBE_BLOCK * blocks as usize], 0)?;
        f.sync_all()?;
        drop(f);
        let buf = vec![0xA5u8; 2 * PROBE_BLOCK];
        let start = buf.as_ptr().align_offset(PROBE_BLOCK);
        let mut probe = LogProbe {
            file: std::fs::OpenOptions::new().write(true).open(path)?,
            path: path.to_owned(),
            direct: false,
            buf,
            start,
            next: 0,
            blocks,
        };
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            if let Ok(f) = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                .open(path)
                && f.write_all_at(&probe.buf[start..start + PROBE_BLOCK], 0)
                    .is_ok()
            {
                probe.file = f;
                probe.direct = true;
                probe.next = 1;
            }
        }
        Ok(probe)
    }

    fn how(&self) -> &'static str {
        if self.direct {
            "4 KiB O_DIRECT|O_DSYNC overwrite"
        } else {
            "4 KiB overwrite + fdatasync"
        }
    }

    fn write(&mut self) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let at = (self.next % self.blocks) * PROBE_BLOCK as u64;
        self.next += 1;
        let block = &mut self.buf[self.start..self.start + PROBE_BLOCK];
        block[0] = self.next as u8;
        self.file.write_all_at(block, at)?;
        if !self.direct {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn bench(a: BenchArgs) -> Result<()> {
    let client = connect(&a.conn).await?;
    let command = client.encode_command(&a.entity_type, &a.command).await?;

    // The network alone: a request the node answers without the journal.
    let mut rtt = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        client
            .call(&Request::Hello {
                version: cairn_host::api::PROTOCOL_VERSION,
            })
            .await?;
        rtt.push(t.elapsed());
    }
    rtt.sort();

    // One sequential client, against the disk's sync latency: 20 blocks of
    // 100 deposits, each after a block of 10 rounds of the disk probes.
    let mut probes = DiskProbes::open(&a.fsync_dir, 200)?;
    let mut seq = Vec::with_capacity(2000);
    for _ in 0..20 {
        for _ in 0..10 {
            probes.round()?;
        }
        for i in 0..100 {
            let id = format!("bench-seq-{i}");
            let t = Instant::now();
            client
                .ask(
                    &a.entity_type,
                    &id,
                    Payload::Bytes(command.clone()),
                    None,
                    None,
                )
                .await?;
            seq.push(t.elapsed());
        }
    }
    seq.sort();
    let log_how = probes.log.how();
    let mut fsync_lat = std::mem::take(&mut probes.append_lat);
    let mut log_lat = std::mem::take(&mut probes.log_lat);
    drop(probes);
    fsync_lat.sort();
    log_lat.sort();
    let (fsync_p50, fsync_p99) = (percentile(&fsync_lat, 0.5), percentile(&fsync_lat, 0.99));
    let (log_p50, log_p99) = (percentile(&log_lat, 0.5), percentile(&log_lat, 0.99));

    let pb = ProgressBar::new(a.commands as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} commands  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let per_stream = a.commands / a.streams.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..a.streams {
        let client = client.clone();
        let command = command.clone();
        let ty = a.entity_type.clone();
        let pb = pb.clone();
        let entities = a.entities.max(1);
        let streams = a.streams;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_stream);
            let mut failed = 0u64;
            let mut e = s;
            for i in 1..=per_stream {
                let id = format!("bench-{}", e % entities);
                e += streams;
                let t = Instant::now();
                match client
                    .ask(&ty, &id, Payload::Bytes(command.clone()), None, None)
                    .await
                {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => failed += 1,
                }
                if i % 256 == 0 {
                    pb.inc(256);
                } else if i == per_stream {
                    pb.inc((i % 256) as u64);
                }
            }
            (lat, failed)
        }));
    }
    let mut lat = Vec::with_capacity(a.commands);
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await?;
        lat.extend(l);
        failed += f;
    }
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    lat.sort();
    let us = |d: Duration| d.as_micros();
    println!(
        "cairn bench: {} commands over {} streams on {} entities of {}, node {}",
        lat.len() + failed as usize,
        a.streams,
        a.entities,
        a.entity_type,
        a.conn.node
    );
    println!(
        "throughput   {:.0} commands/s ({} failed, {:.1} s)",
        lat.len() as f64 / elapsed.as_secs_f64(),
        failed,
        elapsed.as_secs_f64()
    );
    println!(
        "latency      p50 {} µs   p99 {} µs   p99.9 {} µs",
        us(percentile(&lat, 0.5)),
        us(percentile(&lat, 0.99)),
        us(percentile(&lat, 0.999))
    );
    println!(
        "sequential   p50 {} µs   p99 {} µs   (one client, one command at a time)",
        us(percentile(&seq, 0.5)),
        us(percentile(&seq, 0.99))
    );
    println!(
        "fsync        p50 {} µs   p99 {} µs   (64-byte append + fdatasync in {}, between the sequential blocks); sequential p50 - fsync p50 = {} µs",
        us(fsync_p50),
        us(fsync_p99),
        a.fsync_dir.display(),
        us(percentile(&seq, 0.5)) as i128 - us(fsync_p50) as i128
    );
    println!(
        "log sync     p50 {} µs   p99 {} µs   ({log_how} in preallocated space: the log journal's sync); sequential p50 - log sync p50 = {} µs",
        us(log_p50),
        us(log_p99),
        us(percentile(&seq, 0.5)) as i128 - us(log_p50) as i128
    );
    println!(
        "round trip   p50 {} µs   p99 {} µs   (a request the node answers without the journal)",
        us(percentile(&rtt, 0.5)),
        us(percentile(&rtt, 0.99))
    );
    client.close().await;
    Ok(())
}
