//! `cairn node`: the node's configuration from the file and the flags, the
//! node and its QUIC server, logging, and a clean shutdown on a signal.

use std::time::Duration;

use anyhow::{Context, Result};
use cairn_client::tls;
use cairn_driver::Replication;
use cairn_host::config::{ClusterConfig, Config, JournalBackend, TlsFiles};
use cairn_host::node::Node;
use cairn_server::{Server, ServerLimits};

use crate::args::{JournalArg, LogFormat, NodeArgs};

/// The node's configuration: the file if one is given, then the flags.
pub fn config(args: &NodeArgs) -> Result<Config> {
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
    if args.cluster || !args.seeds.is_empty() || args.min_members.is_some() {
        let c = config.cluster.get_or_insert_with(ClusterConfig::default);
        c.seeds.extend(args.seeds.iter().copied());
        if let Some(n) = args.min_members {
            c.min_members = n.max(1);
        }
    }
    if let Some(dir) = &args.certs {
        let f = tls::node_files(dir);
        config.node.tls = Some(TlsFiles {
            ca: f.ca,
            cert: f.cert,
            key: f.key,
        });
    }
    Ok(config)
}

/// Runs a node until SIGINT or SIGTERM, then shuts it down cleanly (a
/// cluster member keeps its membership: see `Cluster::stop`).
pub async fn run(config: Config, log_format: LogFormat) -> Result<()> {
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
            cairn_server::tls_files(tls::node_files(&dir))
        }
    };
    // A cluster member replicates its journal's writes to each shard's replicas.
    let replication = config.cluster.as_ref().map(|_| Replication::new());
    let node = match &replication {
        Some(r) => Node::open_in_cluster(config.clone(), |j| r.wrap(j), r.clone()).await?,
        None => Node::open(config.clone()).await?,
    };
    for d in node.deployments() {
        tracing::info!(entity_type = %d.entity_type, deploy = d.deploy, behavior_version = %d.behavior_version, "restored deployment");
    }
    let limits = ServerLimits {
        max_connections: config.node.max_connections,
        max_in_flight: config.node.max_in_flight,
        keep_awake: config.node.keep_awake,
        ..ServerLimits::default()
    };
    let (server, cluster) = match config.cluster.clone() {
        None => (
            Server::start(
                node.clone(),
                &files,
                config.node.listen,
                limits,
                config.node.name.clone(),
            )?,
            None,
        ),
        Some(c) => {
            let (server, cluster) = Server::start_cluster(
                node.clone(),
                &files,
                config.node.listen,
                limits,
                config.node.name.clone(),
                c,
                replication.clone(),
            )
            .await?;
            tracing::info!(node_id = cluster.id(), "cluster member");
            (server, Some(cluster))
        }
    };
    tracing::info!(
        node = %config.node.name,
        listen = %server.local_addr(),
        data_dir = %data_dir.display(),
        journal = ?config.node.journal,
        workers = config.node.worker_threads(),
        "node ready"
    );
    match &cluster {
        None => wait_for_signal().await,
        Some(c) => {
            tokio::select! {
                () = wait_for_signal() => {
                    // SIGTERM or Ctrl-C: a restart, not a departure. The
                    // node keeps its membership (nothing is committed),
                    // gives up its lease, lets running commands finish,
                    // then drains and closes as a single node does. A
                    // departure for good is `cairn cluster leave`.
                    c.stop().await;
                }
                // After `cairn cluster leave`: the shards were handed off.
                () = c.left() => {}
                why = c.failed() => {
                    // Fail-stop: a member that can no longer follow the
                    // decision log must not keep serving on a stale table.
                    // No drain: every acknowledged write is durable already,
                    // and the storage that failed would only slow it down.
                    tracing::error!(error = %why, "the cluster's decision log stopped; stopping the node");
                    anyhow::bail!("the cluster's decision log stopped: {why}");
                }
            }
        }
    }
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
