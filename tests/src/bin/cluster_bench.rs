//! The cluster benchmark: real `cairn node` processes on 127.0.0.1..3
//! sharing one CA, driven by bank-account deposits
//! (`{"Deposit":{"amount":1}}`, encoded once by the behavior and sent as
//! bytes, like `cairn bench`). It prints figures for:
//!
//! 1. a baseline: one plain node (no cluster), 64 concurrent streams from
//!    one client over 10,000 entities: commands/s, p50 and p99;
//! 2. a 3-node cluster (`--min-members 3`): the same load through node 1 on
//!    the entities node 1 owns (local) and on the others (forwarded to
//!    their owner), then the whole cluster with one client per node;
//! 3. failure detection: the time from SIGKILL of node 3 until node 1's
//!    status shows it unreachable and down, over several kills (node 3 is
//!    restarted on its data directory in between); with replicas, also the
//!    failover time: SIGKILL until an entity node 3 owned answers through
//!    node 1;
//! 4. a full rebalance: a second node joins a 1-node cluster holding 10,000
//!    entities; the time until the shards are split evenly, a probe
//!    client's latencies and errors meanwhile, and the handoff timings the
//!    nodes log ("shard arrived ... took_us=", "committed shard decisions
//!    ... release_and_commit_us=");
//! 5. catch-up: the same join when the entities hold long histories; the
//!    events/s at which the new owner reads its shards' events from node 1.
//!
//! Then a summary table. Every loop is bounded in count and time; the
//! nodes are killed and their directories removed at the end.
//!
//! Run (the `cairn` binary is required, a release build for real figures):
//!
//! ```sh
//! cargo build --release -p cairn-cli -p cairn-tests --bin cairn --bin cairn-cluster-bench
//! CAIRN_BIN=target/release/cairn target/release/cairn-cluster-bench [--commands N]
//! ```
//!
//! Options: `--commands N` (or `CAIRN_CLUSTER_BENCH_COMMANDS`; default
//! 100,000 per measured load), `--entities N` (10,000), `--streams N` (64),
//! `--streams-per-node N` (for the whole-cluster load; default 22, so that
//! the three clients keep about 64 streams in all), `--kill-rounds N` (5),
//! `--catchup-entities N` (64) and `--catchup-events N` (4,000 each) for
//! phase 5, `--replicas N` (`[defaults.replication] replicas`),
//! `--min-acks N` (`[defaults.replication] min_acks` of every cluster node;
//! default: the node's, 1), `--keep-logs DIR` (copy every node's log there before the
//! directories are removed), `--phases baseline,cluster,kill,rebalance,catchup`
//! (all by default).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cairn_client::Client;
use cairn_host::api::{ClusterStatus, Payload, Request, Response};
use cairn_tests::cluster::strip_ansi;
use cairn_tests::{NodeProc, example_wasm, free_addr};

/// The entity type driven.
const TYPE: &str = "bank-account";
/// The command of every load.
const DEPOSIT: &str = r#"{"Deposit":{"amount":1}}"#;
/// The longest one measured load may run.
const LOAD_LIMIT: Duration = Duration::from_secs(120);
/// How long the benchmark waits for one ask before counting it failed.
const ASK_LIMIT: Duration = Duration::from_secs(30);
/// Entities the rebalance probe asks.
const PROBE_ENTITIES: usize = 200;

/// Command-line options.
struct Opts {
    commands: usize,
    entities: usize,
    streams: usize,
    streams_per_node: usize,
    kill_rounds: usize,
    catchup_entities: usize,
    catchup_events: usize,
    min_acks: Option<usize>,
    replicas: Option<usize>,
    keep_logs: Option<PathBuf>,
    phases: Vec<String>,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut o = Opts {
            commands: 100_000,
            entities: 10_000,
            streams: 64,
            streams_per_node: 22,
            kill_rounds: 5,
            catchup_entities: 64,
            catchup_events: 4_000,
            min_acks: None,
            replicas: None,
            keep_logs: None,
            phases: ["baseline", "cluster", "kill", "rebalance", "catchup"]
                .map(String::from)
                .to_vec(),
        };
        if let Ok(v) = std::env::var("CAIRN_CLUSTER_BENCH_COMMANDS") {
            o.commands = v.parse().context("CAIRN_CLUSTER_BENCH_COMMANDS")?;
        }
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let mut it = argv.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .with_context(|| format!("{flag} needs a value (see the source header)"))?;
            let num = || -> Result<usize> {
                value
                    .parse::<usize>()
                    .with_context(|| format!("{flag} {value}: not a number"))
            };
            match flag.as_str() {
                "--commands" => o.commands = num()?,
                "--entities" => o.entities = num()?,
                "--streams" => o.streams = num()?,
                "--streams-per-node" => o.streams_per_node = num()?,
                "--kill-rounds" => o.kill_rounds = num()?,
                "--catchup-entities" => o.catchup_entities = num()?,
                "--catchup-events" => o.catchup_events = num()?,
                "--min-acks" => o.min_acks = Some(num()?),
                "--replicas" => o.replicas = Some(num()?),
                "--keep-logs" => o.keep_logs = Some(PathBuf::from(value)),
                "--phases" => o.phases = value.split(',').map(String::from).collect(),
                other => bail!("unknown option `{other}` (see the source header)"),
            }
        }
        ensure!(
            o.entities > 0 && o.streams > 0 && o.streams_per_node > 0,
            "entities and streams must be positive"
        );
        Ok(o)
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

/// The `cairn` binary: `CAIRN_BIN` is required.
fn cairn_bin() -> Result<PathBuf> {
    let bin = std::env::var_os("CAIRN_BIN")
        .map(PathBuf::from)
        .context("set CAIRN_BIN to the cairn binary (a release build)")?;
    ensure!(bin.exists(), "CAIRN_BIN {} does not exist", bin.display());
    Ok(bin)
}

/// The value at quantile `p` of sorted durations (zero if none).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> u128 {
    d.as_micros()
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Prints a line at once (the phases take a while).
fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
    let _ = std::io::stdout().flush();
}

/// The rows of the final summary: (measurement, figures).
#[derive(Default)]
struct Summary(Vec<(String, String)>);

impl Summary {
    fn add(&mut self, what: impl Into<String>, figures: impl Into<String>) {
        self.0.push((what.into(), figures.into()));
    }

    fn print(&self) {
        let w = self.0.iter().map(|(a, _)| a.len()).max().unwrap_or(0);
        say("");
        say("══ Summary ══");
        for (what, figures) in &self.0 {
            say(format!("  {what:<w$}  {figures}"));
        }
    }
}

/// What one load measured.
struct LoadResult {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
    errors: Vec<String>,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn line(&self) -> String {
        format!(
            "{:>7.0} commands/s   p50 {:>6} µs   p99 {:>6} µs   ({} ok, {} failed, {:.1} s)",
            self.rate(),
            us(percentile(&self.lat, 0.5)),
            us(percentile(&self.lat, 0.99)),
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64()
        )
    }

    fn short(&self) -> String {
        format!(
            "{:.0} cmd/s, p50 {} µs, p99 {} µs, {} failed",
            self.rate(),
            us(percentile(&self.lat, 0.5)),
            us(percentile(&self.lat, 0.99)),
            self.failed
        )
    }

    fn print(&self, what: &str) {
        say(format!("  {what:<34} {}", self.line()));
        for e in self.errors.iter().take(5) {
            say(format!("      error: {e}"));
        }
    }
}

/// `commands` asks of `command` over `streams` concurrent streams, stream
/// `s` on `clients[s % len]`, taking the entities `s, s + streams, ...` of
/// `ids` in turn (as `cairn bench` does). Stops after [`LOAD_LIMIT`].
async fn run_load(
    clients: &[Arc<Client>],
    streams: usize,
    ids: &Arc<Vec<String>>,
    commands: usize,
    command: &[u8],
) -> Result<LoadResult> {
    ensure!(!clients.is_empty() && !ids.is_empty(), "nothing to load");
    let start = Instant::now();
    let deadline = start + LOAD_LIMIT;
    let mut tasks = Vec::new();
    for s in 0..streams {
        let n = commands / streams + usize::from(s < commands % streams);
        let client = clients[s % clients.len()].clone();
        let ids = ids.clone();
        let command = command.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            let mut failed = 0usize;
            let mut errors = Vec::new();
            let mut e = s;
            for _ in 0..n {
                if Instant::now() > deadline {
                    break;
                }
                let id = &ids[e % ids.len()];
                e += streams;
                let t = Instant::now();
                let r = tokio::time::timeout(
                    ASK_LIMIT,
                    client.ask(
                        TYPE,
                        id,
                        Payload::Bytes(command.clone()),
                        None,
                        Some(Duration::from_secs(20)),
                    ),
                )
                .await;
                match r {
                    Ok(Ok(_)) => lat.push(t.elapsed()),
                    Ok(Err(err)) => {
                        failed += 1;
                        if errors.len() < 3 {
                            errors.push(format!("{id}: {err}"));
                        }
                    }
                    Err(_) => {
                        failed += 1;
                        if errors.len() < 3 {
                            errors.push(format!("{id}: no answer within {ASK_LIMIT:?}"));
                        }
                    }
                }
            }
            (lat, failed, errors)
        }));
    }
    let mut r = LoadResult {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        lat: Vec::with_capacity(commands),
        errors: Vec::new(),
    };
    for t in tasks {
        let (lat, failed, errors) = t.await?;
        r.lat.extend(lat);
        r.failed += failed;
        r.errors.extend(errors);
    }
    r.errors.truncate(5);
    r.elapsed = start.elapsed();
    r.ok = r.lat.len();
    r.lat.sort();
    Ok(r)
}

/// One deposit to every entity (their first command creates them), over 64
/// streams through `client`.
async fn warm_up(
    client: &Arc<Client>,
    ids: &Arc<Vec<String>>,
    command: &[u8],
) -> Result<LoadResult> {
    run_load(
        std::slice::from_ref(client),
        64.min(ids.len()),
        ids,
        ids.len(),
        command,
    )
    .await
}

/// Connects a client to a node, retrying while it starts (up to 60 s).
async fn connect(node: &NodeProc) -> Result<Arc<Client>> {
    Ok(Arc::new(node.client().await?))
}

/// The cluster as the node behind `client` sees it (`cairn cluster
/// status` over a kept connection).
async fn status(client: &Client) -> Result<ClusterStatus> {
    let r = tokio::time::timeout(Duration::from_secs(5), client.call(&Request::ClusterStatus))
        .await
        .context("no status within 5 s")??;
    match r {
        Response::ClusterStatus(s) => Ok(s),
        other => bail!("unexpected answer to a status request: {other:?}"),
    }
}

/// Polls the status through `client` every 20 ms until `pred` holds, up to
/// `timeout`; returns it with the time it took.
async fn wait_status(
    client: &Client,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&ClusterStatus) -> bool,
) -> Result<(ClusterStatus, Duration)> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < timeout {
        if let Ok(s) = status(client).await {
            if pred(&s) {
                return Ok((s, start.elapsed()));
            }
            last = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{what}: not within {timeout:?}; last status {last:?}")
}

fn up_members(s: &ClusterStatus) -> usize {
    s.members
        .iter()
        .filter(|m| m.state == "up" && m.reachable)
        .count()
}

fn allocated(s: &ClusterStatus) -> bool {
    s.shards > 0 && s.owners.len() == s.shards as usize && s.owners.iter().all(|o| *o != 0)
}

/// A cluster of `cairn node` processes on 127.0.0.x sharing one CA.
struct Cluster {
    // Declared first so the processes are killed before the directory goes.
    nodes: Vec<NodeProc>,
    root: tempfile::TempDir,
    certs: PathBuf,
    seed: SocketAddr,
    min: usize,
    /// A `cairn.toml` every node starts with, if any.
    toml: Option<String>,
}

impl Cluster {
    /// `n` nodes, the first one the seed; shards are first allocated when
    /// `min` members are up.
    fn start(n: usize, min: usize, toml: Option<String>) -> Result<Cluster> {
        let root = tempfile::Builder::new()
            .prefix("cairn-cluster-bench")
            .tempdir()?;
        let certs = root.path().join("certs");
        let out = std::process::Command::new(cairn_bin()?)
            .args(["certs", "init", "--dir"])
            .arg(&certs)
            .output()
            .context("running cairn certs init")?;
        ensure!(out.status.success(), "certs init failed: {out:?}");
        let mut c = Cluster {
            nodes: Vec::new(),
            seed: free_addr([127, 0, 0, 1])?,
            root,
            certs,
            min,
            toml,
        };
        for _ in 0..n {
            c.add()?;
        }
        Ok(c)
    }

    /// Starts the next node, index `i`, on 127.0.0.(i+1).
    fn add(&mut self) -> Result<()> {
        let i = self.nodes.len();
        let addr = match i {
            0 => self.seed,
            _ => free_addr([127, 0, 0, (i + 1) as u8])?,
        };
        let dir = self.root.path().join(format!("n{}", i + 1));
        // Each node its own certificate (naming its node id), and a
        // client's beside it, where `NodeProc` looks for them.
        let tls = dir.join("tls");
        let out = std::process::Command::new(cairn_bin()?)
            .args(["certs", "node", "--ca"])
            .arg(&self.certs)
            .arg("--out")
            .arg(&tls)
            .output()
            .context("running cairn certs node")?;
        ensure!(out.status.success(), "certs node failed: {out:?}");
        for f in ["client.pem", "client.key"] {
            std::fs::copy(self.certs.join("client").join(f), tls.join(f))?;
        }
        let (seed, tls_s, min_s) = (
            self.seed.to_string(),
            tls.to_string_lossy().into_owned(),
            self.min.to_string(),
        );
        let mut args = vec!["--certs", &tls_s, "--seed", &seed, "--min-members", &min_s];
        let config = dir.join("cairn.toml");
        let config_s = config.to_string_lossy().into_owned();
        if let Some(t) = &self.toml {
            std::fs::write(&config, t)?;
            args.extend(["--config", &config_s]);
        }
        let node = NodeProc::start_on(&dir, addr, &args)?;
        self.nodes.push(node);
        Ok(())
    }

    /// Deploys bank-account through node 1 (`cairn deploy`) and waits until
    /// `cairn types` on every node lists it.
    async fn deploy(&self) -> Result<()> {
        let wasm = example_wasm(TYPE)?;
        let (ok, _, err) = self.nodes[0].cli(&["deploy", TYPE, &wasm.to_string_lossy()])?;
        ensure!(ok, "deploy failed: {err}");
        for n in &self.nodes {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (ok, out, _) = n.cli(&["types"])?;
                if ok && out.contains(TYPE) {
                    break;
                }
                ensure!(Instant::now() < deadline, "{} never ran the deploy", n.addr);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// A `cairn.toml` setting the replication acknowledgements.
fn replication_toml(min_acks: Option<usize>, replicas: Option<usize>) -> Option<String> {
    if min_acks.is_none() && replicas.is_none() {
        return None;
    }
    let mut t = "[defaults.replication]\n".to_owned();
    if let Some(n) = min_acks {
        t += &format!("min_acks = {n}\n");
    }
    if let Some(n) = replicas {
        t += &format!("replicas = {n}\n");
    }
    Some(t)
}

/// Copies every node's log to `--keep-logs DIR` as `LABEL-nI.log`.
fn keep_logs(o: &Opts, c: &Cluster, label: &str) -> Result<()> {
    let Some(dir) = &o.keep_logs else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    for (i, n) in c.nodes.iter().enumerate() {
        let to = dir.join(format!("{label}-n{}.log", i + 1));
        std::fs::copy(n.dir.join("node.log"), &to)
            .with_context(|| format!("copying a log to {}", to.display()))?;
    }
    say(format!(
        "  (node logs copied to {}/{label}-n*.log)",
        dir.display()
    ));
    Ok(())
}

/// Prints how many WARN and ERROR lines each node logged, by module, and
/// the first few outside openraft (whose warnings about superseded
/// messages are routine).
fn log_warnings(c: &Cluster) -> Result<()> {
    for (i, n) in c.nodes.iter().enumerate() {
        let bad: Vec<String> = log_lines(&n.dir)?
            .into_iter()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        let mut by_module: BTreeMap<String, usize> = BTreeMap::new();
        for l in &bad {
            let level = if l.contains(" ERROR ") {
                "ERROR"
            } else {
                "WARN"
            };
            let module = l
                .split_whitespace()
                .find(|w| w.ends_with(':') && w.contains("::"))
                .unwrap_or("?")
                .trim_end_matches(':');
            *by_module.entry(format!("{level} {module}")).or_default() += 1;
        }
        let counts: Vec<String> = by_module.iter().map(|(k, v)| format!("{v} {k}")).collect();
        say(format!(
            "  node {} log: {} WARN/ERROR lines ({})",
            i + 1,
            bad.len(),
            counts.join(", ")
        ));
        for l in bad.iter().filter(|l| !l.contains("openraft")).take(6) {
            say(format!("      {l}"));
        }
    }
    Ok(())
}

/// The bench entities, `bench-0 ...`.
fn entity_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("bench-{i}")).collect()
}

/// Phase 1: one plain node.
async fn baseline(o: &Opts, sum: &mut Summary) -> Result<()> {
    say(format!(
        "── 1. Baseline: one plain node, {} streams from one client, {} entities ──",
        o.streams, o.entities
    ));
    let root = tempfile::Builder::new()
        .prefix("cairn-cluster-bench")
        .tempdir()?;
    let mut node = NodeProc::start(&root.path().join("plain"), &[])?;
    let client = connect(&node).await?;
    client
        .deploy(TYPE, std::fs::read(example_wasm(TYPE)?)?)
        .await?;
    let command = client.encode_command(TYPE, DEPOSIT).await?;
    let ids = Arc::new(entity_ids(o.entities));
    let w = warm_up(&client, &ids, &command).await?;
    w.print("warm-up (first command per entity)");
    let r = run_load(
        std::slice::from_ref(&client),
        o.streams,
        &ids,
        o.commands,
        &command,
    )
    .await?;
    r.print("plain node");
    sum.add(format!("1 plain node, {} streams", o.streams), r.short());
    client.close().await;
    node.terminate()?;
    Ok(())
}

/// Starts a 3-node cluster, waits for it to form and allocate, deploys.
async fn three_nodes(o: &Opts) -> Result<(Cluster, Vec<Arc<Client>>, Duration)> {
    let started = Instant::now();
    let c = Cluster::start(3, 3, replication_toml(o.min_acks, o.replicas))?;
    let mut clients = Vec::new();
    for n in &c.nodes {
        clients.push(connect(n).await?);
    }
    for cl in &clients {
        wait_status(cl, Duration::from_secs(30), "three up members", |s| {
            up_members(s) == 3
        })
        .await?;
    }
    wait_status(
        &clients[0],
        Duration::from_secs(30),
        "shards allocated",
        allocated,
    )
    .await?;
    let formed = started.elapsed();
    c.deploy().await?;
    Ok((c, clients, formed))
}

/// Phase 2: local and forwarded commands, and the whole cluster.
async fn cluster_load(o: &Opts, clients: &[Arc<Client>], sum: &mut Summary) -> Result<()> {
    say(format!(
        "── 2. 3-node cluster: {} streams through node 1, local vs forwarded; then one client per node ──",
        o.streams
    ));
    let s = status(&clients[0]).await?;
    ensure!(allocated(&s), "shards not allocated: {s:?}");
    let per_member: BTreeMap<u64, usize> = s.owners.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(*o).or_default() += 1;
        m
    });
    for m in &s.members {
        say(format!(
            "  member {:<20} {:<16} {} shards{}",
            m.id,
            m.addr,
            per_member.get(&m.id).copied().unwrap_or(0),
            if m.id == s.node { " (node 1)" } else { "" }
        ));
    }
    let all = entity_ids(o.entities);
    let (local, forwarded): (Vec<String>, Vec<String>) = all.iter().cloned().partition(|id| {
        let shard = cairn_cluster::shard_of(TYPE, id, s.shards).0 as usize;
        s.owners[shard] == s.node
    });
    say(format!(
        "  entities: {} owned by node 1 (local), {} by the others (forwarded)",
        local.len(),
        forwarded.len()
    ));
    ensure!(
        !local.is_empty() && !forwarded.is_empty(),
        "need both local and forwarded entities"
    );
    let command = clients[0].encode_command(TYPE, DEPOSIT).await?;
    let all = Arc::new(all);
    let w = warm_up(&clients[0], &all, &command).await?;
    w.print("warm-up via node 1 (all entities)");

    let one = std::slice::from_ref(&clients[0]);
    let local = Arc::new(local);
    let r = run_load(one, o.streams, &local, o.commands, &command).await?;
    r.print("node 1, local entities");
    sum.add(
        format!("3 nodes, via node 1, local ({} streams)", o.streams),
        r.short(),
    );
    let forwarded = Arc::new(forwarded);
    let r = run_load(one, o.streams, &forwarded, o.commands, &command).await?;
    r.print("node 1, forwarded entities");
    sum.add(
        format!("3 nodes, via node 1, forwarded ({} streams)", o.streams),
        r.short(),
    );
    let streams = o.streams_per_node * clients.len();
    let r = run_load(clients, streams, &all, o.commands, &command).await?;
    let what = format!(
        "{} clients × {} streams = {streams}",
        clients.len(),
        o.streams_per_node
    );
    r.print(&format!("whole cluster, {what}"));
    sum.add(format!("3 nodes, one client per node ({what})"), r.short());

    let after = status(&clients[0]).await?;
    if after.owners != s.owners {
        say(format!(
            "  note: the shard table changed during the loads (epoch {} → {})",
            s.epoch, after.epoch
        ));
    }
    Ok(())
}

/// Phase 3: SIGKILL node 3, time until node 1 marks it unreachable and down.
async fn kill_rounds(
    o: &Opts,
    c: &mut Cluster,
    clients: &mut Vec<Arc<Client>>,
    sum: &mut Summary,
) -> Result<()> {
    say(format!(
        "── 3. Failure detection: SIGKILL node 3, node 1's status polled every 20 ms, {} rounds ──",
        o.kill_rounds
    ));
    let c1 = clients[0].clone();
    let addr3 = c.nodes[2].addr.to_string();
    let s = status(&c1).await?;
    let id3 = s
        .members
        .iter()
        .find(|m| m.addr == addr3)
        .map(|m| m.id)
        .context("node 3 is not a member")?;
    // The restarted node 3 gets a new connection; the old client is dead.
    if let Some(old) = clients.pop() {
        old.close().await;
    }
    let (mut unreach, mut down, mut back, mut serving, mut failover) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // With replicas, node 3's shards fail over: timed as the first answer
    // of one of its entities through node 1 after the kill.
    let replicated = o.replicas != Some(0);
    for round in 1..=o.kill_rounds {
        // An entity node 3 owns now (after a restart it gets shards back by
        // rebalancing), to time its failover and see it serve again.
        // Rebalancing settles first: a shard that moved to node 3 fails over
        // only once node 3 has reported it ready (its replicas caught up),
        // so the kill waits until node 3's shard count has held for 2 s.
        let waited = Instant::now();
        let (mut last, mut steady) = (u64::MAX, 0);
        while steady < 5 {
            let s = status(&c1).await?;
            let n = s.owners.iter().filter(|o| **o == id3).count() as u64;
            if n > 0 && n == last {
                steady += 1;
            } else {
                steady = 0;
            }
            last = n;
            ensure!(
                waited.elapsed() < Duration::from_secs(60),
                "node 3's shards never settled after its restart"
            );
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let probe = loop {
            let s = status(&c1).await?;
            let found = entity_ids(o.entities).into_iter().find(|id| {
                s.owners
                    .get(cairn_cluster::shard_of(TYPE, id, s.shards).0 as usize)
                    == Some(&id3)
            });
            if let Some(id) = found {
                break id;
            }
            ensure!(
                waited.elapsed() < Duration::from_secs(60),
                "node 3 owns none of the entities 60 s after its restart"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let killed = Instant::now();
        c.nodes[2].kill();
        let failover_probe = async {
            if !replicated {
                return None;
            }
            while killed.elapsed() < Duration::from_secs(30) {
                let r = tokio::time::timeout(
                    Duration::from_secs(1),
                    c1.ask_json(TYPE, &probe, r#""GetBalance""#),
                )
                .await;
                if matches!(r, Ok(Ok(_))) {
                    return Some(killed.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        };
        let (mut t_unreach, mut t_down, mut seen_state) = (None, None, String::new());
        let detect = async {
            while killed.elapsed() < Duration::from_secs(30) && t_down.is_none() {
                if let Ok(s) = status(&c1).await {
                    let at = killed.elapsed();
                    match s.members.iter().find(|m| m.id == id3) {
                        Some(m) => {
                            if !m.reachable && t_unreach.is_none() {
                                t_unreach = Some(at);
                            }
                            if m.state == "down" || m.state == "removed" {
                                t_down = Some(at);
                                seen_state = m.state.clone();
                            }
                        }
                        None => {
                            t_unreach.get_or_insert(at);
                            t_down = Some(at);
                            seen_state = "gone from the member list".into();
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let (t_failover, ()) = tokio::join!(failover_probe, detect);
        if replicated {
            let t = t_failover
                .context("node 3's entity never answered through node 1 within 30 s of the kill")?;
            failover.push(t);
        }
        let t_unreach = t_unreach.context("node 3 never became unreachable within 30 s")?;
        let t_down = t_down.context("node 3 never went down within 30 s")?;
        // Restart on the same data directory and address; wait until node 1
        // sees it up and reachable, then until it serves its entity.
        let restarted = Instant::now();
        c.nodes[2].restart()?;
        let (_, t_back) = wait_status(&c1, Duration::from_secs(60), "node 3 up again", |s| {
            s.members
                .iter()
                .any(|m| m.id == id3 && m.state == "up" && m.reachable)
        })
        .await?;
        let t_serving = loop {
            let r =
                tokio::time::timeout(ASK_LIMIT, c1.ask_json(TYPE, &probe, r#""GetBalance""#)).await;
            if matches!(r, Ok(Ok(_))) {
                break restarted.elapsed();
            }
            ensure!(
                restarted.elapsed() < Duration::from_secs(60),
                "node 3's entity {probe} not served 60 s after the restart: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        say(format!(
            "  round {round}: unreachable after {:>5}, {seen_state} after {:>5}{}; restarted: up+reachable after {:>5}, serving {probe} after {:>5}",
            ms(t_unreach),
            ms(t_down),
            t_failover.map_or(String::new(), |t| format!(
                ", failed over (answers through node 1) after {}",
                ms(t)
            )),
            ms(t_back),
            ms(t_serving)
        ));
        unreach.push(t_unreach);
        down.push(t_down);
        back.push(t_back);
        serving.push(t_serving);
        // Let the failure detector collect heartbeats of the new incarnation.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    for v in [
        &mut unreach,
        &mut down,
        &mut back,
        &mut serving,
        &mut failover,
    ] {
        v.sort();
    }
    let fig = |v: &[Duration]| {
        format!(
            "p50 {}, max {}",
            ms(percentile(v, 0.5)),
            ms(v.last().copied().unwrap_or_default())
        )
    };
    say(format!("  SIGKILL → unreachable:      {}", fig(&unreach)));
    say(format!("  SIGKILL → down:             {}", fig(&down)));
    if replicated {
        say(format!("  SIGKILL → failed over:      {}", fig(&failover)));
    }
    say(format!("  restart → up and reachable: {}", fig(&back)));
    say(format!("  restart → serving again:    {}", fig(&serving)));
    let n = o.kill_rounds;
    sum.add(format!("SIGKILL → unreachable ({n} rounds)"), fig(&unreach));
    sum.add(format!("SIGKILL → down ({n} rounds)"), fig(&down));
    if replicated {
        sum.add(
            format!("SIGKILL of a primary → its entity answers through node 1 ({n} rounds)"),
            fig(&failover),
        );
    }
    sum.add(
        format!("restart → serving again ({n} rounds)"),
        fig(&serving),
    );
    clients.push(connect(&c.nodes[2]).await?);
    Ok(())
}

/// One probe ask: when it started (since the probe began), its latency,
/// and the error if it failed.
struct ProbeSample {
    at: Duration,
    lat: Duration,
    error: Option<String>,
}

/// Probes `ids` in a loop, one ask at a time, until `stop` (or 10 min, or
/// 2,000,000 asks). Returns the samples and the deposits acknowledged per
/// entity.
async fn probe(
    client: Arc<Client>,
    ids: Vec<String>,
    command: Vec<u8>,
    stop: Arc<AtomicBool>,
    origin: Instant,
) -> (Vec<ProbeSample>, HashMap<String, u64>) {
    let mut samples = Vec::new();
    let mut acked: HashMap<String, u64> = HashMap::new();
    'outer: while !stop.load(Ordering::Relaxed) && origin.elapsed() < Duration::from_secs(600) {
        for id in &ids {
            if stop.load(Ordering::Relaxed) || samples.len() >= 2_000_000 {
                break 'outer;
            }
            let t = Instant::now();
            let r = tokio::time::timeout(
                ASK_LIMIT,
                client.ask(
                    TYPE,
                    id,
                    Payload::Bytes(command.clone()),
                    None,
                    Some(Duration::from_secs(20)),
                ),
            )
            .await;
            let error = match r {
                Ok(Ok(_)) => {
                    *acked.entry(id.clone()).or_default() += 1;
                    None
                }
                Ok(Err(e)) => Some(format!("{id}: {e}")),
                Err(_) => Some(format!("{id}: no answer within {ASK_LIMIT:?}")),
            };
            samples.push(ProbeSample {
                at: t - origin,
                lat: t.elapsed(),
                error,
            });
        }
    }
    (samples, acked)
}

/// A node log's lines without ANSI colour codes.
fn log_lines(dir: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("node.log"))
        .with_context(|| format!("reading {}/node.log", dir.display()))?;
    Ok(text.lines().map(strip_ansi).collect())
}

/// The number after `key=` in a log line (`key=123` or `key="123"`).
fn field(line: &str, key: &str) -> Option<u64> {
    let pat = format!("{key}=");
    // The key itself, not the end of a longer one.
    let starts_word = |i: usize| {
        i == 0 || {
            let b = line.as_bytes()[i - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        }
    };
    let at = line.match_indices(&pat).find(|(i, _)| starts_word(*i))?.0;
    let rest = line[at + pat.len()..].trim_start_matches('"');
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn fig_us(v: &[Duration]) -> String {
    format!(
        "p50 {} µs, p99 {} µs, max {} µs",
        us(percentile(v, 0.5)),
        us(percentile(v, 0.99)),
        us(v.last().copied().unwrap_or_default())
    )
}

/// A 1-node cluster, allocated and running bank-account: the cluster, a
/// client of its node and the encoded deposit.
async fn one_node_cluster(toml: Option<String>) -> Result<(Cluster, Arc<Client>, Vec<u8>)> {
    let c = Cluster::start(1, 1, toml)?;
    let c1 = connect(&c.nodes[0]).await?;
    wait_status(
        &c1,
        Duration::from_secs(30),
        "the 1-node cluster allocates",
        |s| up_members(s) == 1 && allocated(s),
    )
    .await?;
    c.deploy().await?;
    let command = c1.encode_command(TYPE, DEPOSIT).await?;
    Ok((c, c1, command))
}

/// Phase 4: a second node joins a 1-node cluster holding the entities.
async fn rebalance(o: &Opts, sum: &mut Summary) -> Result<()> {
    say(format!(
        "── 4. Full rebalance: a second node joins a 1-node cluster with {} entities; a probe asks {PROBE_ENTITIES} entities through node 1 meanwhile ──",
        o.entities
    ));
    let toml = replication_toml(o.min_acks, o.replicas);
    say(format!(
        "  (replication: {})",
        toml.as_deref()
            .map_or("the node's defaults".to_owned(), |t| t.replace('\n', " "))
    ));
    let (mut c, c1, command) = one_node_cluster(toml).await?;
    let ids = Arc::new(entity_ids(o.entities));
    let w = warm_up(&c1, &ids, &command).await?;
    w.print("writing the entities (one each)");
    ensure!(w.failed == 0, "writing the entities failed: {:?}", w.errors);

    let probe_ids: Vec<String> = ids.iter().take(PROBE_ENTITIES).cloned().collect();
    let probe_client = connect(&c.nodes[0]).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    let probe_task = tokio::spawn(probe(
        probe_client.clone(),
        probe_ids.clone(),
        command.clone(),
        stop.clone(),
        origin,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let joined = Instant::now();
    c.add()?;
    let addr2 = c.nodes[1].addr.to_string();
    let mut t_up = None;
    let mut t_first_move = None;
    let mut t_even = None;
    while joined.elapsed() < Duration::from_secs(300) {
        if let Ok(s) = status(&c1).await {
            let at = joined.elapsed();
            if let Some(m) = s.members.iter().find(|m| m.addr == addr2) {
                if m.state == "up" && m.reachable && t_up.is_none() {
                    t_up = Some(at);
                }
                if m.shards > 0 && t_first_move.is_none() {
                    t_first_move = Some(at);
                }
                let half = s.shards / 2;
                let even = s.members.len() == 2
                    && s.members.iter().all(|x| x.shards == half)
                    && s.owners.iter().filter(|o| **o == m.id).count() == half as usize;
                if even {
                    t_even = Some((at, half, s.shards));
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (samples, acked) = probe_task.await?;
    let joined_at = joined - origin;

    let (t_done, half, total) = t_even.context("the shards were not split evenly within 300 s")?;
    say(format!(
        "  join → second node up: {}, → first shard moved: {}, → {half}/{half} of {total} shards: {}",
        t_up.map_or("never".into(), ms),
        t_first_move.map_or("never".into(), ms),
        ms(t_done)
    ));

    // The probe: over the whole run and within the rebalance only.
    let window = |s: &&ProbeSample| s.at >= joined_at && s.at <= joined_at + t_done;
    let report = |what: &str, set: Vec<&ProbeSample>| {
        let mut lat: Vec<Duration> = set
            .iter()
            .filter(|s| s.error.is_none())
            .map(|s| s.lat)
            .collect();
        lat.sort();
        let errors: Vec<&&ProbeSample> = set.iter().filter(|s| s.error.is_some()).collect();
        say(format!(
            "  probe, {what:<22} {:>6} asks   p50 {:>6} µs   p99 {:>7} µs   max {:>8} µs   {} errors",
            set.len(),
            us(percentile(&lat, 0.5)),
            us(percentile(&lat, 0.99)),
            us(lat.last().copied().unwrap_or_default()),
            errors.len()
        ));
        for e in errors.iter().take(5) {
            say(format!(
                "      at +{} after the join: {}",
                ms(e.at.saturating_sub(joined_at)),
                e.error.as_deref().unwrap_or("")
            ));
        }
        (lat, errors.len())
    };
    report("whole run", samples.iter().collect());
    let (lat, errors) = report(
        "during the rebalance",
        samples.iter().filter(window).collect(),
    );
    // The slowest probe asks, when they happened.
    let mut slow: Vec<&ProbeSample> = samples.iter().collect();
    slow.sort_by_key(|s| std::cmp::Reverse(s.lat));
    let slow: Vec<String> = slow
        .iter()
        .take(5)
        .map(|s| format!("{} at +{}", ms(s.lat), ms(s.at.saturating_sub(joined_at))))
        .collect();
    say(format!(
        "  slowest probe asks (since the join): {}",
        slow.join(", ")
    ));
    sum.add(
        format!(
            "rebalance 1→2 nodes, {} entities, to {half}/{half}",
            o.entities
        ),
        ms(t_done),
    );
    sum.add(
        "probe during the rebalance",
        format!(
            "p50 {} µs, p99 {} µs, max {} µs, {errors} errors",
            us(percentile(&lat, 0.5)),
            us(percentile(&lat, 0.99)),
            us(lat.last().copied().unwrap_or_default())
        ),
    );

    // Every acknowledged probe deposit is in the balance (read through node 2).
    let c2 = connect(&c.nodes[1]).await?;
    let mut wrong = Vec::new();
    for id in &probe_ids {
        let want = 1 + acked.get(id).copied().unwrap_or(0) as i64;
        let got = match c2.ask_json(TYPE, id, r#""GetBalance""#).await {
            Ok((Some(j), _)) => j.trim().parse::<i64>().ok(),
            _ => None,
        };
        if got != Some(want) {
            wrong.push(format!("{id}: {got:?}, expected {want}"));
        }
    }
    say(format!(
        "  balances of the {} probe entities read through node 2: {} wrong{}",
        probe_ids.len(),
        wrong.len(),
        wrong
            .first()
            .map_or(String::new(), |w| format!(" (first: {w})"))
    ));

    // The handoff timings from the logs.
    let lines2 = log_lines(&c.nodes[1].dir)?;
    let mut arrived: Vec<Duration> = Vec::new();
    let mut waited = 0u64;
    let mut imported = 0u64;
    for l in lines2.iter().filter(|l| l.contains("shard arrived")) {
        if let Some(t) = field(l, "took_us") {
            arrived.push(Duration::from_micros(t));
        }
        waited += field(l, "waited").unwrap_or(0);
        imported += field(l, "entities").unwrap_or(0);
    }
    arrived.sort();
    say(format!(
        "  per shard (new node, \"shard arrived\" took_us): {} shards, {}; {imported} entities imported, {waited} commands waited",
        arrived.len(),
        fig_us(&arrived)
    ));
    let mut rounds: Vec<Duration> = Vec::new();
    let mut moved = 0u64;
    let mut where_ = BTreeMap::new();
    for (i, n) in c.nodes.iter().enumerate() {
        for l in log_lines(&n.dir)?
            .iter()
            .filter(|l| l.contains("committed shard decisions"))
        {
            let m = field(l, "moved").unwrap_or(0);
            if m == 0 {
                continue; // the first allocation, not a move
            }
            if let Some(t) = field(l, "release_and_commit_us") {
                rounds.push(Duration::from_micros(t));
                moved += m;
                *where_.entry(i + 1).or_insert(0) += 1;
            }
        }
    }
    rounds.sort();
    say(format!(
        "  per round (coordinator, \"committed shard decisions\" release_and_commit_us): {} rounds moving {moved} shards ({}), {}",
        rounds.len(),
        where_
            .iter()
            .map(|(n, k)| format!("{k} on node {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        fig_us(&rounds)
    ));
    sum.add("handoff per shard (took_us)", fig_us(&arrived));
    sum.add("handoff per round (release_and_commit_us)", fig_us(&rounds));

    log_warnings(&c)?;
    keep_logs(o, &c, "rebalance")?;
    for cl in [c1, probe_client, c2] {
        cl.close().await;
    }
    for n in c.nodes.iter_mut().rev() {
        n.kill();
    }
    Ok(())
}

/// Microseconds since midnight (UTC) of a log line's leading timestamp
/// (`2026-12-04T01:59:04.207925Z ...`).
fn line_time_us(line: &str) -> Option<u64> {
    let t = line.get(11..26)?; // HH:MM:SS.ffffff
    let h: u64 = t.get(0..2)?.parse().ok()?;
    let m: u64 = t.get(3..5)?.parse().ok()?;
    let sec: u64 = t.get(6..8)?.parse().ok()?;
    let frac: u64 = t.get(9..15)?.parse().ok()?;
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + frac)
}

/// Phase 5: bulk history transfer. A 1-node cluster's entities get long
/// histories, a second node joins, and half the shards move to it: the new
/// owner reads every event of them from node 1 (the shard fetch that a
/// handoff, a failover merge and a restarted owner all use) and pushes
/// them to its replicas before serving. Events/s from node 2's "shard
/// arrived" lines: all events over the span from the first fetch's start
/// to the last arrival.
async fn catchup(o: &Opts, sum: &mut Summary) -> Result<()> {
    let entities = o.catchup_entities;
    let per = o.catchup_events;
    say(format!(
        "── 5. Catch-up: {entities} entities with {per} events each on a 1-node cluster; a second node joins and takes half the shards ──"
    ));
    let (mut c, c1, command) = one_node_cluster(replication_toml(o.min_acks, o.replicas)).await?;
    let ids = Arc::new(entity_ids(entities));
    let w = run_load(
        std::slice::from_ref(&c1),
        entities.min(o.streams),
        &ids,
        entities * per,
        &command,
    )
    .await?;
    w.print("writing the histories");
    ensure!(
        w.failed == 0,
        "writing the histories failed: {:?}",
        w.errors
    );

    c.add()?;
    let addr2 = c.nodes[1].addr.to_string();
    let joined = Instant::now();
    loop {
        let s = status(&c1).await?;
        let half = s.shards / 2;
        if s.members.len() == 2
            && s.members
                .iter()
                .any(|m| m.addr == addr2 && m.shards == half)
            && s.members.iter().all(|m| m.shards == half)
        {
            break;
        }
        ensure!(
            joined.elapsed() < Duration::from_secs(300),
            "the shards were not split evenly within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last shards' arrival lines may trail the status by a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lines = log_lines(&c.nodes[1].dir)?;
    let (mut events, mut moved, mut first, mut last) = (0u64, 0u64, u64::MAX, 0u64);
    // Per shard: its events over the time its fetch took (reading from
    // node 1 and appending durably), without the passivation, the push to
    // its replicas and the commit of `Ready` that follow.
    let mut per_shard: Vec<f64> = Vec::new();
    let (mut fetch_total, mut fetched_events) = (0u64, 0u64);
    // When each of those fetches ran (they overlap: several shards move at once).
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for l in lines.iter().filter(|l| l.contains("shard arrived")) {
        let (Some(at), Some(took), Some(n)) =
            (line_time_us(l), field(l, "took_us"), field(l, "events"))
        else {
            continue;
        };
        events += n;
        moved += 1;
        first = first.min(at.saturating_sub(took));
        last = last.max(at);
        if let (Some(f), true) = (field(l, "fetch_us"), n > 0) {
            per_shard.push(n as f64 / (f.max(1) as f64 / 1e6));
            let from = at.saturating_sub(took);
            spans.push((from, from + f));
            fetch_total += f;
            fetched_events += n;
        }
    }
    ensure!(
        events > 0,
        "node 2 imported no events (no \"shard arrived\" lines with events)"
    );
    let span = Duration::from_micros(last.saturating_sub(first));
    let rate = events as f64 / span.as_secs_f64().max(1e-9);
    per_shard.sort_by(f64::total_cmp);
    let p50 = per_shard.get(per_shard.len() / 2).copied().unwrap_or(0.0);
    let fetch_rate = fetched_events as f64 / (fetch_total.max(1) as f64 / 1e6);
    // The wall time during which at least one fetch ran.
    spans.sort_unstable();
    let (mut busy, mut reach) = (0u64, 0u64);
    for (from, to) in spans {
        let from = from.max(reach);
        if to > from {
            busy += to - from;
        }
        reach = reach.max(to);
    }
    let busy_rate = fetched_events as f64 / (busy.max(1) as f64 / 1e6);
    say(format!(
        "  {events} events of {moved} shards moved to node 2 in {} (first fetch → last arrival): {rate:.0} events/s",
        ms(span)
    ));
    say(format!(
        "  the fetches alone (read from node 1, appended durably on node 2), shards with events: {fetched_events} events in {} of fetch time summed: {fetch_rate:.0} events/s; per shard p50 {p50:.0} events/s",
        ms(Duration::from_micros(fetch_total))
    ));
    say(format!(
        "  the same fetches over the wall time during which at least one ran: {fetched_events} events in {}: {busy_rate:.0} events/s",
        ms(Duration::from_micros(busy))
    ));
    sum.add(
        format!("catch-up: {events} events of {moved} shards to a joining node"),
        format!(
            "{rate:.0} events/s over {} of rebalance; fetches {busy_rate:.0} events/s over their wall time, {fetch_rate:.0} over their durations summed (per shard p50 {p50:.0})",
            ms(span)
        ),
    );
    log_warnings(&c)?;
    keep_logs(o, &c, "catchup")?;
    c1.close().await;
    for n in c.nodes.iter_mut().rev() {
        n.kill();
    }
    Ok(())
}

/// Runs one phase; a failure is printed and recorded, and the next phase runs.
fn outcome(what: &str, r: Result<()>, sum: &mut Summary, failed: &mut Vec<String>) {
    if let Err(e) = r {
        say(format!("  {what} FAILED: {e:#}"));
        sum.add(what, format!("FAILED: {e:#}"));
        failed.push(what.to_owned());
    }
}

/// Phases 2 and 3 on one 3-node cluster.
async fn cluster_phases(o: &Opts, sum: &mut Summary, failed: &mut Vec<String>) -> Result<()> {
    let (mut c, mut clients, formed) = three_nodes(o).await?;
    say(format!(
        "  (3-node cluster formed and allocated {} after its processes started; replication: {})",
        ms(formed),
        replication_toml(o.min_acks, o.replicas)
            .map_or("the node's defaults".to_owned(), |t| t.replace('\n', " "))
    ));
    if o.runs("cluster") {
        let r = cluster_load(o, &clients, sum).await;
        outcome("phase 2 (cluster load)", r, sum, failed);
    }
    if o.runs("kill") {
        let r = kill_rounds(o, &mut c, &mut clients, sum).await;
        outcome("phase 3 (SIGKILL)", r, sum, failed);
    }
    log_warnings(&c)?;
    keep_logs(o, &c, "cluster")?;
    for cl in &clients {
        cl.close().await;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let o = Opts::parse()?;
    let bin = cairn_bin()?;
    // Build (or find) the example components before any clock starts.
    let wasm = example_wasm(TYPE)?;
    say(format!(
        "cairn-cluster-bench: {} commands per load, {} entities, cairn {}, component {}",
        o.commands,
        o.entities,
        bin.display(),
        wasm.display()
    ));
    say(format!(
        "(the nodes and this client share {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    let started = Instant::now();
    let mut sum = Summary::default();
    let mut failed = Vec::new();
    if o.runs("baseline") {
        let r = baseline(&o, &mut sum).await;
        outcome("phase 1 (baseline)", r, &mut sum, &mut failed);
    }
    if o.runs("cluster") || o.runs("kill") {
        let r = cluster_phases(&o, &mut sum, &mut failed).await;
        outcome("the 3-node cluster", r, &mut sum, &mut failed);
    }
    if o.runs("rebalance") {
        let r = rebalance(&o, &mut sum).await;
        outcome("phase 4 (rebalance)", r, &mut sum, &mut failed);
    }
    if o.runs("catchup") {
        let r = catchup(&o, &mut sum).await;
        outcome("phase 5 (catch-up)", r, &mut sum, &mut failed);
    }
    sum.add("whole run", ms(started.elapsed()));
    sum.print();
    ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}
