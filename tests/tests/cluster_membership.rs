//! Membership changes during and after faults, on real `cairn node`
//! processes (127.0.0.x), on a cluster of 4 and of 5 nodes: no
//! acknowledged event is lost.
//!
//! Why: a shard's replica set is computed from the membership (the next
//! `replicas` members after the owner in the ring of node ids), so a
//! member that leaves changes the replica sets of shards it does not own.
//! The failover rules (promote a replica once every replica is live, merge
//! every replica's copy) protect every acknowledged event only if the
//! replicas the new owner merges hold them. This test makes one replica
//! the only holder of some acknowledged events, removes it from the
//! cluster, then kills the owner.
//!
//! The scenario (`replicas = 2`, `min_acks = 1`), with a background load
//! of deposits of 1 to 40 accounts the whole time (half of them on the
//! owner O below), through the nodes that stay up, and to 8 more "quiet"
//! accounts on O only until the cut heals: a busy account's later writes
//! give a replica that missed events the chance to fill its gap, a quiet
//! one's last events stay where they were acknowledged:
//!
//! 1. `n` nodes start, bank-account is deployed, every account answers and
//!    gets some history.
//! 2. An owner O and the two members R and L that replicate O's shards (the
//!    next two in the ring of ids) are picked, none of them node 0: node 0
//!    is the seed, the deploy and status node and the reader, and the
//!    first seed leaving for good would also change how the cluster is
//!    joined. The decision log's leader is kept out of the three when the
//!    ring allows it (a cut from the leader would cost O its lease, and O
//!    would acknowledge nothing during the cut). O and R are cut from each
//!    other (both directions) for 10 s: O's writes are acknowledged by L
//!    alone meanwhile. Then the cut heals.
//! 3. L leaves for good (`cairn cluster leave`) and exits; O's replica set
//!    becomes R and the next member.
//! 4. O is SIGKILLed; its shards fail over to a replica.
//! 5. Every account must be served again (within 120 s), and for each:
//!    acknowledged <= balance <= acknowledged + unknown outcomes (no
//!    acknowledged deposit lost; nothing applied twice; nothing the client
//!    was told was not applied — `storage`, `unavailable`, ... — applied).
//!    Then, from the journals of the nodes still up: one history per
//!    entity.
//!
//! Unavailability during the faults is expected and only reported (per
//! phase: acknowledged, unknown, refused); a lost acknowledged deposit is
//! a failure. On a failure the per-node journal lengths of the accounts at
//! fault are printed; `CAIRN_TEST_KEEP=1` keeps the nodes' directories and
//! logs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cairn_client::tls::ClientFiles;
use cairn_client::{Client, ClientError};
use cairn_cluster::NodeId;
use cairn_tests::NodeProc;
use cairn_tests::cluster::*;
use serde_json::Value;

/// The cluster tests start several node processes each: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOML: &str = "[defaults.replication]\nreplicas = 2\nmin_acks = 1\n";
/// Accounts written all along, half of them on O.
const ACCOUNTS: usize = 40;
/// More accounts on O, written only until the cut heals (then read only).
const QUIET: usize = 8;
/// How long O and R are cut from each other.
const CUT: Duration = Duration::from_secs(10);
/// A client's patience for one deposit (its outcome is unknown after it).
const PATIENCE: Duration = Duration::from_secs(10);

/// The phases of the scenario, for the per-phase counts.
const PHASES: [&str; 6] = ["history", "load", "cut", "healed", "leave", "kill"];
/// The phase from which the quiet accounts are no longer written.
const HEALED: usize = 3;

/// The outcomes of deposits (of 1) to one account, or in one phase.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    acked: i64,
    unknown: i64,
    refused: i64,
}

/// What the writers did: per account, per phase, and the errors by kind.
#[derive(Default)]
struct Ledger {
    accounts: Mutex<HashMap<String, Tally>>,
    phases: Mutex<BTreeMap<usize, Tally>>,
    /// (unknown outcome?, the error's kind) -> count.
    errors: Mutex<BTreeMap<(bool, String), usize>>,
    phase: AtomicUsize,
    stop: AtomicBool,
}

impl Ledger {
    fn enter(&self, phase: &str) {
        let i = PHASES.iter().position(|p| *p == phase).unwrap_or(0);
        self.phase.store(i, Ordering::Relaxed);
        eprintln!("phase: {phase}");
    }

    fn record(&self, id: &str, outcome: Result<(), (bool, String)>) {
        let phase = self.phase.load(Ordering::Relaxed);
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        let a = accounts.entry(id.to_owned()).or_default();
        let p = phases.entry(phase).or_default();
        match outcome {
            Ok(()) => {
                a.acked += 1;
                p.acked += 1;
            }
            Err((unknown, e)) => {
                if unknown {
                    a.unknown += 1;
                    p.unknown += 1;
                } else {
                    a.refused += 1;
                    p.refused += 1;
                }
                // The kind: the error's text up to its first colon.
                let kind = e.split(':').next().unwrap_or(&e).trim().to_owned();
                *self
                    .errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((unknown, kind))
                    .or_default() += 1;
            }
        }
    }

    fn account(&self, id: &str) -> Tally {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
            .unwrap_or_default()
    }
}

/// What became of one deposit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    /// Refused, or unknown on a connection that still works.
    Failed,
    /// Unknown, and the connection should be dropped (lost, or no answer).
    Lost,
}

/// One deposit of 1 to `id`, its outcome recorded: acknowledged; refused
/// (an error saying it was not applied and never will be); or unknown (an
/// `outcome unknown`, a timeout, a lost connection).
async fn deposit(client: &Client, id: &str, ledger: &Ledger) -> Result<Outcome> {
    let op = ask(client, id, r#"{"Deposit":{"amount":1}}"#);
    match tokio::time::timeout(PATIENCE, op).await {
        Ok(Ok((reply, _))) => {
            ensure!(reply == "\"ok\"", "{id}: a deposit answered {reply}");
            ledger.record(id, Ok(()));
            Ok(Outcome::Acked)
        }
        Ok(Err(e)) => {
            ledger.record(id, Err((e.may_have_applied(), e.to_string())));
            Ok(if matches!(e, ClientError::Api(_)) {
                Outcome::Failed
            } else {
                Outcome::Lost
            })
        }
        Err(_) => {
            ledger.record(id, Err((true, format!("no answer within {PATIENCE:?}"))));
            Ok(Outcome::Lost)
        }
    }
}

/// A writer: deposits to every account in turn (starting at `offset`)
/// through the node at `addr`, reconnecting as needed, until the ledger
/// says stop (at most 10 minutes). The `quiet` accounts only until the cut
/// heals.
async fn writer(
    addr: SocketAddr,
    certs: PathBuf,
    ids: Vec<String>,
    quiet: HashSet<String>,
    offset: usize,
    ledger: Arc<Ledger>,
) -> Result<()> {
    let files = ClientFiles::in_dir(&certs);
    let mut client: Option<Client> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut i = offset;
    while !ledger.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let Some(cl) = &client else {
            match tokio::time::timeout(
                Duration::from_secs(2),
                Client::connect(addr, &files, "localhost"),
            )
            .await
            {
                Ok(Ok(c)) => client = Some(c),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
            continue;
        };
        let id = &ids[i % ids.len()];
        i += 1;
        if quiet.contains(id) && ledger.phase.load(Ordering::Relaxed) >= HEALED {
            continue;
        }
        let outcome = deposit(cl, id, &ledger).await?;
        if outcome == Outcome::Lost {
            client = None;
        }
        if outcome != Outcome::Acked {
            // Do not spin on an unavailable shard.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Polls node `node`'s status until its table's epoch has not changed for
/// `still` (and `pred` holds), up to `timeout`; returns the last status.
async fn settled(
    node: &NodeProc,
    still: Duration,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut last_epoch = None;
    let mut since = Instant::now();
    loop {
        if let Ok(s) = status(node) {
            let epoch = s["epoch"].as_u64();
            if !pred(&s) || epoch != last_epoch {
                last_epoch = epoch;
                since = Instant::now();
            } else if since.elapsed() >= still {
                return Ok(s);
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; last status {s}"
            );
        } else {
            ensure!(Instant::now() < deadline, "{what}: no status");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The roles: O (the owner), R (cut from O, O's first replica) and L (the
/// leaver, O's second replica), as node indexes.
struct Roles {
    o: usize,
    r: usize,
    l: usize,
}

/// Picks O, R and L (see the module's header) from a settled status.
fn pick_roles(c: &Cluster, s: &Value) -> Result<Roles> {
    let ids: Vec<u64> = c
        .nodes
        .iter()
        .map(|n| id_of(s, n.addr))
        .collect::<Result<_>>()?;
    let index_of = |id: NodeId| ids.iter().position(|x| *x == id.0);
    let mut ring: Vec<NodeId> = ids.iter().map(|i| NodeId(*i)).collect();
    ring.sort();
    let leader = s["leader"].as_u64();
    let owned = shards(s);
    let mut best: Option<((bool, u64), Roles)> = None;
    for o in 1..c.nodes.len() {
        let set = cairn_cluster::replication::replica_set(&ring, NodeId(ids[o]), 2);
        let set: Vec<usize> = set.into_iter().filter_map(index_of).collect();
        let [r, l] = set[..] else { continue };
        if r == 0 || l == 0 {
            continue;
        }
        let no_leader = ![o, r, l].iter().any(|i| Some(ids[*i]) == leader);
        let score = (
            no_leader,
            owned.get(&c.node(o).addr.to_string()).copied().unwrap_or(0),
        );
        if best.as_ref().is_none_or(|(b, _)| score > *b) {
            best = Some((score, Roles { o, r, l }));
        }
    }
    let ((no_leader, o_shards), roles) =
        best.context("no owner whose two replicas are both other than node 0")?;
    let name = |i: usize| format!("node {i} ({})", c.node(i).addr);
    eprintln!(
        "roles (nodes from 0, node 0 the seed): O = {} with {o_shards} shards, R = {}, L = {}; ring of ids: nodes {:?}; leader: node {:?}{}",
        name(roles.o),
        name(roles.r),
        name(roles.l),
        ring.iter().filter_map(|i| index_of(*i)).collect::<Vec<_>>(),
        leader.and_then(|l| index_of(NodeId(l))),
        if no_leader {
            ""
        } else {
            " (the leader is one of them: the ring allows no other choice)"
        }
    );
    Ok(roles)
}

/// Prints what each node's journal holds of `ids` (event counts), for a
/// failure's diagnosis. The nodes must be stopped.
async fn journal_counts(nodes: &[(String, PathBuf)], ids: &[String]) {
    let mut held: Vec<HashMap<String, History>> = Vec::new();
    for (_, dir) in nodes {
        held.push(read_journal(dir, ids).await.unwrap_or_default());
    }
    for id in ids {
        let counts: Vec<String> = nodes
            .iter()
            .zip(&held)
            .map(|((name, _), h)| format!("{name} {}", h.get(id).map_or(0, Vec::len)))
            .collect();
        eprintln!("  {id}: events in the journals: {}", counts.join(", "));
    }
}

async fn membership_changes_after_faults_lose_nothing(n: usize) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut c = Cluster::start_with(n, n, Some(TOML))?;
    for node in &c.nodes {
        wait_status(node, Duration::from_secs(60), "every member up", |s| {
            up_count(s) == n
        })
        .await?;
    }
    let s = settled(
        c.node(0),
        Duration::from_secs(2),
        Duration::from_secs(60),
        "shards allocated and still",
        |s| {
            let sh = shards(s);
            sh.values().sum::<u64>() == 256 && sh.len() == n && sh.values().all(|x| *x > 0)
        },
    )
    .await?;
    deploy(&c).await?;

    // 1. The roles, the accounts (half on O) and some history.
    let roles = pick_roles(&c, &s)?;
    let (o_addr, r_addr, l_addr) = (
        c.node(roles.o).addr,
        c.node(roles.r).addr,
        c.node(roles.l).addr,
    );
    let candidates: Vec<String> = (0..4_000).map(|i| format!("mb-{i}")).collect();
    let owner = owners(&s, "bank-account", &candidates);
    let mut on_o = candidates
        .iter()
        .filter(|id| owner[*id] == o_addr.to_string())
        .cloned();
    let busy_o: Vec<String> = on_o.by_ref().take(ACCOUNTS / 2).collect();
    let quiet: Vec<String> = on_o.take(QUIET).collect();
    ensure!(
        busy_o.len() + quiet.len() == ACCOUNTS / 2 + QUIET,
        "O owns too few accounts"
    );
    let elsewhere: Vec<String> = candidates
        .iter()
        .filter(|id| owner[*id] != o_addr.to_string())
        .take(ACCOUNTS / 2)
        .cloned()
        .collect();
    let ids: Vec<String> = busy_o
        .iter()
        .chain(&elsewhere)
        .chain(&quiet)
        .cloned()
        .collect();
    let quiet: HashSet<String> = quiet.into_iter().collect();
    let reader = c.node(0).client().await?;
    balances_when_served(&reader, &ids, Duration::from_secs(60)).await?;
    let ledger = Arc::new(Ledger::default());
    ledger.enter("history");
    for _ in 0..3 {
        for id in &ids {
            deposit(&reader, id, &ledger).await?;
        }
    }

    // The load, through the nodes that stay up (node 0, R, and in a
    // 5-node cluster the fifth).
    ledger.enter("load");
    let mut writers = Vec::new();
    for (k, i) in (0..n)
        .filter(|i| *i != roles.o && *i != roles.l)
        .enumerate()
    {
        let (addr, certs) = (c.node(i).addr, c.node(i).certs());
        let (ids, quiet, ledger) = (ids.clone(), quiet.clone(), ledger.clone());
        let offset = k * ids.len() / 3;
        writers.push(tokio::spawn(writer(
            addr, certs, ids, quiet, offset, ledger,
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. O and R cut from each other for 10 s: O's writes are acknowledged
    // by L alone meanwhile.
    ledger.enter("cut");
    cut(c.node(roles.o), &[r_addr])?;
    cut(c.node(roles.r), &[o_addr])?;
    tokio::time::sleep(CUT).await;
    cut(c.node(roles.o), &[])?;
    cut(c.node(roles.r), &[])?;
    ledger.enter("healed");
    for i in [roles.o, roles.r] {
        wait_status(
            c.node(i),
            Duration::from_secs(30),
            "every member reachable after the cut",
            |s| up_count(s) == n,
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. L leaves for good.
    ledger.enter("leave");
    let left = Instant::now();
    let exit = leave(&mut c.nodes[roles.l], Duration::from_secs(120)).await?;
    ensure!(exit.success(), "the leaving node exited with {exit}");
    let l_gone = |s: &Value| {
        let st = states(s);
        matches!(
            st.get(&l_addr.to_string()).map(String::as_str),
            None | Some("removed")
        ) && shards(s).get(&l_addr.to_string()).copied().unwrap_or(0) == 0
    };
    wait_status(
        c.node(roles.o),
        Duration::from_secs(30),
        "O sees L removed",
        l_gone,
    )
    .await?;
    let s = settled(
        c.node(0),
        Duration::from_secs(3),
        Duration::from_secs(60),
        "the table still after the leave",
        l_gone,
    )
    .await?;
    eprintln!(
        "L left and the table settled {:.1?} after `cluster leave`; shards now {:?}",
        left.elapsed(),
        shards(&s)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 4. O is SIGKILLed; its shards fail over.
    let s = status(c.node(0))?;
    let owner = owners(&s, "bank-account", &ids);
    let o_owned = ids
        .iter()
        .filter(|id| owner[*id] == o_addr.to_string())
        .count();
    ledger.enter("kill");
    let killed = Instant::now();
    c.nodes[roles.o].kill();
    let served = balances_when_served(&reader, &ids, Duration::from_secs(120)).await;
    let served_after = killed.elapsed();
    if let Err(e) = served {
        let s = status(c.node(0)).map(|s| s.to_string()).unwrap_or_default();
        bail!("not every account is served again after O's kill: {e:#}\nstatus: {s}");
    }
    eprintln!(
        "every account served again {served_after:.1?} after the kill ({o_owned} of them were O's)"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 5. The load stops; the check.
    ledger.stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let balances = balances_when_served(&reader, &ids, Duration::from_secs(30)).await?;
    reader.close().await;
    let mut total = Tally::default();
    let mut bad = Vec::new();
    for id in &ids {
        let t = ledger.account(id);
        total.acked += t.acked;
        total.unknown += t.unknown;
        total.refused += t.refused;
        let b = balances[id];
        if b < t.acked || b > t.acked + t.unknown {
            bad.push(format!(
                "{id}{}: balance {b}, {} acknowledged, {} unknown, {} refused{}",
                if quiet.contains(id) { " (quiet)" } else { "" },
                t.acked,
                t.unknown,
                t.refused,
                if b < t.acked {
                    format!(" ({} acknowledged deposits lost)", t.acked - b)
                } else {
                    " (more than acknowledged + unknown: applied twice or despite a refusal)"
                        .to_owned()
                }
            ));
        }
    }
    for (i, p) in PHASES.iter().enumerate() {
        let t = ledger
            .phases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&i)
            .copied()
            .unwrap_or_default();
        eprintln!(
            "  {p:>7}: {} acknowledged, {} unknown, {} refused",
            t.acked, t.unknown, t.refused
        );
    }
    for ((unknown, kind), k) in ledger
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let side = if *unknown { "unknown" } else { "refused" };
        eprintln!("  {side}: {k} × {kind}");
    }
    eprintln!(
        "{n} nodes: {} deposits acknowledged, {} unknown, {} refused; served again {served_after:.1?} after the kill; {} accounts wrong; {:.1?} in all",
        total.acked,
        total.unknown,
        total.refused,
        bad.len(),
        started.elapsed()
    );
    ensure!(total.acked > 500, "the load barely ran");

    // The journals, the nodes stopped: one history per entity on the nodes
    // still up (O and L are out: O was killed mid-write, L left with an
    // old copy).
    for node in &mut c.nodes {
        node.kill();
    }
    let names: Vec<(String, PathBuf)> = c
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let role = if i == roles.o {
                " (O, killed)"
            } else if i == roles.r {
                " (R)"
            } else if i == roles.l {
                " (L, left)"
            } else {
                ""
            };
            (format!("node {i} ({}){role}", node.addr), node.dir.clone())
        })
        .collect();
    if !bad.is_empty() {
        let wrong: Vec<String> = bad
            .iter()
            .filter_map(|b| b.split([':', ' ']).next().map(str::to_owned))
            .collect();
        journal_counts(&names, &wrong).await;
        bail!(
            "{} of {} accounts break acknowledged <= balance <= acknowledged + unknown:\n{}",
            bad.len(),
            ids.len(),
            bad.join("\n")
        );
    }
    let mut gone: Vec<usize> = vec![roles.o, roles.l];
    gone.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = Vec::new();
    for i in gone {
        out.push(c.nodes.remove(i));
    }
    one_history_per_entity(&c.nodes, &ids).await?;
    drop(out);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_after_faults_lose_nothing_acknowledged_on_4_nodes() -> Result<()> {
    membership_changes_after_faults_lose_nothing(4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_after_faults_lose_nothing_acknowledged_on_5_nodes() -> Result<()> {
    membership_changes_after_faults_lose_nothing(5).await
}
