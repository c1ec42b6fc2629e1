//! A cluster of real `cairn node` processes for the cluster tests: one CA
//! for all, nodes on 127.0.0.x, their status, deploys, asks, the fault
//! layer's files and reading their journals afterwards.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cairn_client::{Client, ClientError};
use cairn_host::api::{ApiError, Payload, Request, Response};
use serde_json::Value;

use crate::{NodeProc, cairn_bin, example_wasm, free_addr};

/// A cluster of node processes.
pub struct Cluster {
    /// The directory of everything (removed when dropped).
    pub root: tempfile::TempDir,
    /// The cluster's CA (`ca.pem`, `ca.key`), where node certificates are
    /// issued from.
    pub ca: PathBuf,
    /// A client's certificates (`ca.pem`, `client.pem`, `client.key`).
    pub certs: PathBuf,
    /// The nodes, in start order.
    pub nodes: Vec<NodeProc>,
    /// The first node's address, every node's seed.
    pub seed: SocketAddr,
    /// A `cairn.toml` every node starts with, if any.
    toml: Option<String>,
}

impl Cluster {
    /// `n` nodes on 127.0.0.1..n, the first one the seed; shards are first
    /// allocated when `min` members are up.
    pub fn start(n: usize, min: usize) -> Result<Cluster> {
        Cluster::start_with(n, min, None)
    }

    /// [`Cluster::start`] with a `cairn.toml` for every node.
    pub fn start_with(n: usize, min: usize, toml: Option<&str>) -> Result<Cluster> {
        let mut root = tempfile::tempdir()?;
        if std::env::var_os("CAIRN_TEST_KEEP").is_some() {
            // Kept for a look at the nodes' logs after a failure.
            root.disable_cleanup(true);
            eprintln!("cluster directory kept: {}", root.path().display());
        }
        let ca = root.path().join("certs");
        let out = std::process::Command::new(cairn_bin()?)
            .args(["certs", "init", "--dir"])
            .arg(&ca)
            .output()?;
        ensure!(out.status.success(), "certs init failed: {out:?}");
        let seed = free_addr([127, 0, 0, 1])?;
        let mut c = Cluster {
            root,
            certs: ca.join("client"),
            ca,
            nodes: Vec::new(),
            seed,
            toml: toml.map(str::to_owned),
        };
        for i in 0..n {
            c.add(i, min)?;
        }
        Ok(c)
    }

    /// Starts node `i` (index from 0) on 127.0.0.(i+1).
    pub fn add(&mut self, i: usize, min: usize) -> Result<()> {
        let addr = if i == 0 {
            self.seed
        } else {
            free_addr([127, 0, 0, (i + 1) as u8])?
        };
        let dir = self.root.path().join(format!("n{}", i + 1));
        // Each node its own certificate (naming its node id), issued by the
        // cluster's CA, in its directory; a client's beside it, where
        // `NodeProc` looks for them. A restart keeps both.
        let tls = dir.join("tls");
        if !tls.join("node.pem").exists() {
            self.issue_node(&tls, None)?;
            for f in ["client.pem", "client.key"] {
                std::fs::copy(self.certs.join(f), tls.join(f))?;
            }
        }
        let seed = self.seed.to_string();
        let tls_s = tls.to_string_lossy().into_owned();
        let min_s = min.to_string();
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

    /// Issues a node certificate of the cluster's CA into `out` (`ca.pem`,
    /// `node.pem`, `node.key`), naming node `id` (a random one if `None`).
    pub fn issue_node(&self, out: &std::path::Path, id: Option<u64>) -> Result<()> {
        let mut cmd = std::process::Command::new(cairn_bin()?);
        cmd.args(["certs", "node", "--ca"])
            .arg(&self.ca)
            .arg("--out")
            .arg(out);
        if let Some(id) = id {
            cmd.args(["--id", &id.to_string()]);
        }
        let done = cmd.output()?;
        ensure!(done.status.success(), "certs node failed: {done:?}");
        Ok(())
    }

    /// Node `i` (from 0).
    pub fn node(&self, i: usize) -> &NodeProc {
        &self.nodes[i]
    }
}

/// `cairn cluster status --json` on a node.
pub fn status(node: &NodeProc) -> Result<Value> {
    let (ok, out, err) = node.cli(&["cluster", "status", "--json"])?;
    ensure!(ok, "cluster status failed: {err}");
    Ok(serde_json::from_str(out.trim())?)
}

/// The members of a status.
pub fn members(s: &Value) -> Vec<Value> {
    s["members"].as_array().cloned().unwrap_or_default()
}

/// Polls a node's status until `pred` holds, up to `timeout`.
pub async fn wait_status(
    node: &NodeProc,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(s) = status(node) {
            if pred(&s) {
                return Ok(s);
            }
            last = s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default();
    let tail: String = log
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    bail!("{what}: not within {timeout:?}; last status {last}\nlog tail:\n{tail}")
}

/// The committed (or gossip-down) state of each member, by address.
pub fn states(s: &Value) -> BTreeMap<String, String> {
    members(s)
        .iter()
        .map(|m| {
            (
                m["addr"].as_str().unwrap_or("").to_owned(),
                m["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// `cairn cluster leave` on a node (a departure for good), then waits for
/// the node's process to exit by itself (up to `timeout`).
pub async fn leave(node: &mut NodeProc, timeout: Duration) -> Result<std::process::ExitStatus> {
    let (ok, out, err) = node.cli(&["cluster", "leave"])?;
    ensure!(ok, "cluster leave failed: {out} {err}");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = node.exited() {
            return Ok(status);
        }
        ensure!(
            Instant::now() < deadline,
            "{} did not exit within {timeout:?} after cluster leave",
            node.addr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM to `nodes` at once (one `kill` for all), then waits for
/// each to exit; returns their exit statuses.
pub fn sigterm_all(nodes: &mut [&mut NodeProc]) -> Result<Vec<std::process::ExitStatus>> {
    let pids: Vec<String> = nodes.iter().map(|n| n.child.id().to_string()).collect();
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .args(&pids)
        .status()
        .context("running kill -TERM")?;
    ensure!(status.success(), "kill -TERM {pids:?} failed");
    nodes.iter_mut().map(|n| n.wait()).collect()
}

/// Waits until every one of `ids` answers its balance through `client`
/// (up to `timeout`), and returns the balances.
pub async fn balances_when_served(
    client: &Client,
    ids: &[String],
    timeout: Duration,
) -> Result<HashMap<String, i64>> {
    let deadline = Instant::now() + timeout;
    let mut out = HashMap::new();
    for id in ids {
        loop {
            match balance(client, id).await {
                Ok(b) => {
                    out.insert(id.clone(), b);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("{id} is not served {timeout:?} after the start: {e:#}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(out)
}

/// Starts a cluster of `n` nodes (every one a seed-joined member, `toml`
/// their configuration) and waits until each sees all `n` up.
pub async fn start_all_up(n: usize, toml: Option<&str>) -> Result<Cluster> {
    let c = Cluster::start_with(n, n, toml)?;
    for node in &c.nodes {
        wait_status(
            node,
            Duration::from_secs(30),
            &format!("{n} up members"),
            |s| up_count(s) == n,
        )
        .await?;
    }
    Ok(c)
}

/// The member id of the node at `addr`, from a status.
pub fn id_of(s: &Value, addr: SocketAddr) -> Result<u64> {
    members(s)
        .iter()
        .find(|m| m["addr"].as_str() == Some(addr.to_string().as_str()))
        .and_then(|m| m["id"].as_u64())
        .with_context(|| format!("{addr} is not in the status {s}"))
}

/// Members that are up and reachable.
pub fn up_count(s: &Value) -> usize {
    members(s)
        .iter()
        .filter(|m| m["state"] == "up" && m["reachable"] == true)
        .count()
}

/// Shards owned per member address.
pub fn shards(s: &Value) -> BTreeMap<String, u64> {
    members(s)
        .iter()
        .map(|m| {
            (
                m["addr"].as_str().unwrap_or("").to_owned(),
                m["shards"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Deploys bank-account through node 0 and waits until every node runs it
/// (each compiles the component: slow in a debug build on a busy machine).
pub async fn deploy(c: &Cluster) -> Result<()> {
    deploy_example(c, "bank-account").await
}

/// Deploys the example `name` as the entity type of that name through node
/// 0, and waits until every node runs it.
pub async fn deploy_example(c: &Cluster, name: &str) -> Result<()> {
    let wasm = example_wasm(name)?;
    let (ok, _, err) = c.node(0).cli(&["deploy", name, &wasm.to_string_lossy()])?;
    ensure!(ok, "deploy failed: {err}");
    for n in &c.nodes {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (ok, out, _) = n.cli(&["types"])?;
            if ok && out.contains(name) {
                break;
            }
            ensure!(Instant::now() < deadline, "{} never ran the deploy", n.addr);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// A bank-account ask: the JSON reply and the sequence number.
pub async fn ask(client: &Client, id: &str, json: &str) -> Result<(String, u64), ClientError> {
    ask_type(client, "bank-account", id, json).await
}

/// Applies `json` to bank account `id` exactly once, as the error contract
/// tells a client to: with the expected sequence number `before` (where the
/// entity is), sent again after an outcome the contract calls unknown or a
/// refusal it says to retry, until it is applied or a `Conflict` at
/// `before + 1` says an earlier attempt was; gives up after `within`.
/// Returns the sequence number after it and how many attempts it took.
pub async fn ask_exactly_once(
    client: &Client,
    id: &str,
    json: &str,
    before: u64,
    within: Duration,
) -> Result<(u64, u32)> {
    let deadline = Instant::now() + within;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let r = client
            .call(&Request::Ask {
                entity_type: "bank-account".into(),
                entity_id: id.into(),
                command: Payload::Json(json.into()),
                expected_seq: Some(before),
                timeout_ms: Some(20_000),
            })
            .await;
        let e = match r {
            Ok(Response::Reply { seq, .. }) => return Ok((seq, attempts)),
            Ok(other) => bail!("{id}: unexpected {other:?}"),
            Err(ClientError::Api(ApiError::Conflict { actual, .. })) if actual == before + 1 => {
                return Ok((actual, attempts));
            }
            Err(e) => e,
        };
        ensure!(
            e.retry() != cairn_host::api::Retry::Never && Instant::now() < deadline,
            "{id}: {e} (attempt {attempts})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A bank account's balance.
pub async fn balance(client: &Client, id: &str) -> Result<i64> {
    let (j, _) = ask(client, id, r#""GetBalance""#)
        .await
        .with_context(|| format!("balance of {id}"))?;
    Ok(j.trim().parse()?)
}

/// The owner's address of each entity, from a status's shard owners.
pub fn owners(s: &Value, ty: &str, ids: &[String]) -> HashMap<String, String> {
    let addr_of: HashMap<u64, String> = members(s)
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap_or(0),
                m["addr"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let owners: Vec<u64> = s["owners"]
        .as_array()
        .map(|a| a.iter().map(|o| o.as_u64().unwrap_or(0)).collect())
        .unwrap_or_default();
    ids.iter()
        .map(|id| {
            let shard = cairn_cluster::shard_of(ty, id, owners.len() as u32);
            let owner = owners.get(shard.0 as usize).copied().unwrap_or(0);
            (id.clone(), addr_of.get(&owner).cloned().unwrap_or_default())
        })
        .collect()
}

/// Writes the fault layer's file of `node`: the peers it is cut from.
pub fn cut(node: &NodeProc, peers: &[SocketAddr]) -> Result<()> {
    let text: String = peers.iter().map(|p| format!("{p}\n")).collect();
    let path = node.dir.join("cluster").join("faults");
    let tmp = node.dir.join("cluster").join("faults.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// An entity's events as (seq, payload).
pub type History = Vec<(u64, Vec<u8>)>;

/// Every event of the `ids` in a node's log journal: (seq, payload).
pub async fn read_journal(dir: &Path, ids: &[String]) -> Result<HashMap<String, History>> {
    use cairn_store::{EntityKey, Journal};
    let journal = cairn_store::LogStore::open(dir, 64)?;
    let mut out = HashMap::new();
    for id in ids {
        let key = EntityKey::new("bank-account", id.clone());
        let events = journal.read(&key, 1, i64::MAX as u64, usize::MAX).await?;
        if !events.is_empty() {
            out.insert(
                id.clone(),
                events.into_iter().map(|e| (e.seq, e.payload)).collect(),
            );
        }
    }
    Ok(out)
}

/// Checks every node's journal (the nodes stopped): each entity's
/// sequence numbers run contiguously from 1, and every copy agrees with the
/// first one read on the events both hold (one history per entity).
pub async fn one_history_per_entity(nodes: &[NodeProc], ids: &[String]) -> Result<()> {
    let mut first: HashMap<String, History> = HashMap::new();
    for n in nodes {
        for (id, h) in read_journal(&n.dir, ids).await? {
            for (i, (seq, _)) in h.iter().enumerate() {
                ensure!(
                    *seq == i as u64 + 1,
                    "{id}: sequence numbers not contiguous"
                );
            }
            match first.get(&id) {
                None => {
                    first.insert(id, h);
                }
                Some(f) => {
                    for (a, b) in f.iter().zip(h.iter()) {
                        ensure!(a == b, "{id}: two histories at #{}", a.0);
                    }
                }
            }
        }
    }
    Ok(())
}

/// An ask to an entity of type `ty`: the JSON reply and the sequence number.
pub async fn ask_type(
    client: &Client,
    ty: &str,
    id: &str,
    json: &str,
) -> Result<(String, u64), ClientError> {
    let r = client
        .call(&Request::Ask {
            entity_type: ty.into(),
            entity_id: id.into(),
            command: Payload::Json(json.into()),
            expected_seq: None,
            timeout_ms: Some(20_000),
        })
        .await?;
    match r {
        Response::Reply {
            reply: Some(Payload::Json(j)),
            seq,
        } => Ok((j, seq)),
        other => Err(ClientError::Api(ApiError::BadRequest(format!(
            "unexpected {other:?}"
        )))),
    }
}

/// Sends a signal (`-STOP`, `-CONT`) to a process.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let s = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    ensure!(s.success(), "kill {sig} {pid}");
    Ok(())
}

/// A log line without its terminal colour codes (CSI sequences: ESC `[`
/// up to a final byte in `@..~`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}
