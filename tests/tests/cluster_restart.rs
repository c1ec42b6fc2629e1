//! Restarts against departures, with real `cairn node` processes on
//! 127.0.0.x: SIGTERM is a restart (the member keeps its place and its
//! shards), `cairn cluster leave` is a departure for good.
//!
//! - The whole cluster stopped with SIGTERM and started again on the same
//!   data directories and addresses: the same three members come back up,
//!   every entity serves again, every acknowledged deposit is there.
//! - A rolling restart under a load of deposits: each node in turn gets
//!   SIGTERM, starts again and is waited for; nothing acknowledged is lost,
//!   every entity serves at the end; the refusals and the longest gap an
//!   entity went without an acknowledged deposit are printed.
//! - The first seed leaves for good: started again on its data directory it
//!   refuses to start, and the two others restart without waiting on it.
//!
//! Every test holds `SERIAL` (see `tests/tests/cluster.rs`). Time bounds
//! here are liveness bounds (how long a test waits before it fails), not
//! speed targets; the figures measured are printed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cairn_client::{Client, ClientError};
use cairn_host::api::ApiError;
use cairn_tests::cluster::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the tests wait for the nodes to start and every entity to
/// answer (a node compiles its components as it starts: beside CPU
/// burners and other work, at load 30, that alone took 61 s).
const SERVED_WITHIN: Duration = Duration::from_secs(180);

/// A client of `node`, waiting up to [`SERVED_WITHIN`] for it to start.
async fn client_of(node: &cairn_tests::NodeProc) -> Result<Client> {
    let deadline = Instant::now() + SERVED_WITHIN;
    loop {
        match node.client().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => {}
        }
    }
}

/// Three nodes up, 256 shards allocated, bank-account deployed.
async fn three_nodes() -> Result<Cluster> {
    let c = Cluster::start(3, 3)?;
    for n in &c.nodes {
        wait_status(n, Duration::from_secs(30), "three up members", |s| {
            up_count(s) == 3
        })
        .await?;
    }
    wait_status(
        c.node(0),
        Duration::from_secs(10),
        "shards allocated",
        |s| shards(s).values().sum::<u64>() == 256,
    )
    .await?;
    deploy(&c).await?;
    Ok(c)
}

/// Every member of a status is committed `up` and reachable, `n` of them,
/// the 256 shards owned by them.
fn same_members_up(s: &serde_json::Value, n: usize) -> bool {
    let st = states(s);
    st.len() == n
        && st.values().all(|v| v == "up")
        && up_count(s) == n
        && shards(s).values().sum::<u64>() == 256
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_stopped_with_sigterm_comes_back_with_every_deposit() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = three_nodes().await?;
    let clients: Vec<Arc<Client>> = vec![
        Arc::new(c.node(0).client().await?),
        Arc::new(c.node(1).client().await?),
        Arc::new(c.node(2).client().await?),
    ];
    // 300 entities, three deposits each, through the three nodes at once.
    let ids: Vec<String> = (0..300).map(|i| format!("w-{i:03}")).collect();
    let mut tasks = Vec::new();
    for (w, chunk) in ids.chunks(25).enumerate() {
        let chunk = chunk.to_vec();
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked: HashMap<String, i64> = HashMap::new();
            let mut failed: HashMap<String, i64> = HashMap::new();
            for round in 0..3 {
                for id in &chunk {
                    let client = &clients[(w + round) % clients.len()];
                    match ask(client, id, r#"{"Deposit":{"amount":5}}"#).await {
                        Ok(_) => *acked.entry(id.clone()).or_default() += 5,
                        Err(e) => {
                            eprintln!("deposit to {id} failed: {e}");
                            *failed.entry(id.clone()).or_default() += 5;
                        }
                    }
                }
            }
            (acked, failed)
        }));
    }
    let mut acked: HashMap<String, i64> = HashMap::new();
    let mut failed: HashMap<String, i64> = HashMap::new();
    for t in tasks {
        let (a, f) = t.await?;
        acked.extend(a);
        failed.extend(f);
    }
    let n_acked: i64 = acked.values().sum::<i64>() / 5;
    eprintln!(
        "{n_acked} deposits acknowledged, {} failed, before the stop",
        failed.values().sum::<i64>() / 5
    );
    ensure!(
        n_acked >= 300,
        "the cluster barely took deposits: {n_acked}"
    );
    for cl in &clients {
        cl.close().await;
    }

    // SIGTERM to the three at once; each exits cleanly.
    let stopping = Instant::now();
    let exits = {
        let mut all: Vec<&mut _> = c.nodes.iter_mut().collect();
        tokio::task::block_in_place(|| sigterm_all(&mut all))?
    };
    for (n, status) in c.nodes.iter().zip(exits) {
        ensure!(
            status.success(),
            "{} exited with {status} on SIGTERM",
            n.addr
        );
    }
    eprintln!("three nodes stopped in {:?}", stopping.elapsed());
    for n in &c.nodes {
        let log = std::fs::read_to_string(n.dir.join("node.log"))?;
        ensure!(
            !log.contains("leaving the cluster"),
            "{}: SIGTERM started a leave",
            n.addr
        );
    }

    // Started again on the same directories and addresses.
    let starting = Instant::now();
    for n in &mut c.nodes {
        n.restart()?;
    }
    // A node takes a while to start by itself (it compiles its components
    // again): measured apart from what the cluster adds.
    for n in &c.nodes {
        client_of(n).await?.close().await;
    }
    let ready = starting.elapsed();
    let client = client_of(c.node(1)).await?;
    let balances = balances_when_served(&client, &ids, SERVED_WITHIN).await?;
    let served = starting.elapsed();
    eprintln!(
        "the three accept clients {ready:?} after they were started again; every entity served after {served:?}"
    );
    for id in &ids {
        let a = acked.get(id).copied().unwrap_or(0);
        let f = failed.get(id).copied().unwrap_or(0);
        let b = balances[id];
        ensure!(
            (a..=a + f).contains(&b),
            "{id}: balance {b}, acknowledged {a} (failed {f})"
        );
    }
    // The same three members, committed up (none leaving or removed), the
    // shards theirs, a leader: on every node.
    for n in &c.nodes {
        let s = wait_status(
            n,
            Duration::from_secs(60),
            "the same three members up",
            |s| same_members_up(s, 3) && !s["leader"].is_null(),
        )
        .await?;
        eprintln!("{}: {:?} {:?}", n.addr, states(&s), shards(&s));
    }
    // Every entity takes writes again, through each node.
    let clients = [c.node(0).client().await?, client, c.node(2).client().await?];
    // Exactly once, by the error contract: an outcome reported unknown (a
    // peer connection lost under load) is sent again with its sequence.
    let mut again = 0;
    for (i, id) in ids.iter().enumerate() {
        let deposits = (balances[id] / 5) as u64;
        let (seq, attempts) = ask_exactly_once(
            &clients[i % 3],
            id,
            r#"{"Deposit":{"amount":1}}"#,
            deposits,
            Duration::from_secs(60),
        )
        .await
        .with_context(|| format!("deposit to {id} after the restart"))?;
        again += attempts - 1;
        ensure!(
            seq == deposits + 1,
            "{id}: seq {seq} after {deposits} deposits"
        );
    }
    eprintln!("a deposit to each entity after the restart: {again} sent again");
    for cl in clients {
        cl.close().await;
    }
    for n in &mut c.nodes {
        n.kill();
    }
    one_history_per_entity(&c.nodes, &ids).await
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    acked: HashMap<String, i64>,
    failed: HashMap<String, i64>,
    ok: u64,
    unavailable: u64,
    other: BTreeMap<String, u64>,
    longest_gap: (Duration, String),
}

/// A load of deposits of 1 over `ids`, through the nodes' clients, never
/// through the node `avoid` names (the one restarting: a client would see
/// its connection close, which says nothing of the cluster).
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    fn start(
        clients: Arc<RwLock<Vec<Arc<Client>>>>,
        avoid: Arc<AtomicUsize>,
        ids: &[String],
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (w, chunk) in ids.chunks(ids.len().div_ceil(12)).enumerate() {
            let (chunk, clients, avoid, stop) =
                (chunk.to_vec(), clients.clone(), avoid.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut t = Tally::default();
                let mut last_ok: HashMap<String, Instant> = HashMap::new();
                let deadline = Instant::now() + Duration::from_secs(400);
                let mut k = w;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for id in &chunk {
                        let client = {
                            let cs = clients.read().unwrap_or_else(|p| p.into_inner());
                            k += 1;
                            let mut i = k % cs.len();
                            if i == avoid.load(Ordering::Relaxed) {
                                i = (i + 1) % cs.len();
                            }
                            cs[i].clone()
                        };
                        let started = Instant::now();
                        match ask(&client, id, r#"{"Deposit":{"amount":1}}"#).await {
                            Ok(_) => {
                                t.ok += 1;
                                *t.acked.entry(id.clone()).or_default() += 1;
                                let now = Instant::now();
                                if let Some(prev) = last_ok.insert(id.clone(), now) {
                                    let gap = now - prev;
                                    if gap > t.longest_gap.0 {
                                        t.longest_gap = (gap, id.clone());
                                    }
                                }
                            }
                            Err(e) => {
                                *t.failed.entry(id.clone()).or_default() += 1;
                                match e {
                                    ClientError::Api(ApiError::Unavailable(_)) => {
                                        t.unavailable += 1
                                    }
                                    e => {
                                        // The kind of error: its text without
                                        // entity ids and node ids.
                                        let kind: String = e
                                            .to_string()
                                            .replace(id.as_str(), "ID")
                                            .chars()
                                            .filter(|c| !c.is_ascii_digit())
                                            .take(140)
                                            .collect();
                                        *t.other.entry(kind).or_default() += 1;
                                    }
                                }
                                // Do not spin on a refusal that comes at once.
                                let spent = started.elapsed();
                                if spent < Duration::from_millis(50) {
                                    tokio::time::sleep(Duration::from_millis(50) - spent).await;
                                }
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                t
            }));
        }
        Load { stop, tasks }
    }

    async fn finish(self) -> Result<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for task in self.tasks {
            let t = task.await?;
            for (k, v) in t.acked {
                *all.acked.entry(k).or_default() += v;
            }
            for (k, v) in t.failed {
                *all.failed.entry(k).or_default() += v;
            }
            all.ok += t.ok;
            all.unavailable += t.unavailable;
            for (k, v) in t.other {
                *all.other.entry(k).or_default() += v;
            }
            if t.longest_gap.0 > all.longest_gap.0 {
                all.longest_gap = t.longest_gap;
            }
        }
        Ok(all)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_acknowledged_deposit() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = three_nodes().await?;
    let mut cs = Vec::new();
    for n in &c.nodes {
        cs.push(Arc::new(n.client().await?));
    }
    let ids: Vec<String> = (0..120).map(|i| format!("r-{i:03}")).collect();
    for id in &ids {
        ask(&cs[0], id, r#"{"Deposit":{"amount":10}}"#).await?;
    }
    let clients = Arc::new(RwLock::new(cs));
    let avoid = Arc::new(AtomicUsize::new(usize::MAX));
    let load = Load::start(clients.clone(), avoid.clone(), &ids);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    for i in 0..3 {
        let addr = c.node(i).addr.to_string();
        let other = (i + 1) % 3;
        avoid.store(i, Ordering::Relaxed);
        // Requests already sent through node i finish first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        let n = &mut c.nodes[i];
        let status = tokio::task::block_in_place(|| n.terminate())?;
        ensure!(status.success(), "{addr} exited with {status} on SIGTERM");
        let stopped = t0.elapsed();
        c.nodes[i].restart()?;
        // The cluster reports it up (its own view and another node's), and
        // it owns shards again.
        wait_status(
            c.node(i),
            SERVED_WITHIN,
            "restarted node sees three up",
            |s| same_members_up(s, 3),
        )
        .await?;
        wait_status(
            c.node(other),
            Duration::from_secs(60),
            "the restarted node up and owning shards",
            |s| same_members_up(s, 3) && shards(s).get(&addr).copied().unwrap_or(0) >= 40,
        )
        .await?;
        let back = t0.elapsed();
        let fresh = Arc::new(client_of(c.node(i)).await?);
        clients.write().unwrap_or_else(|p| p.into_inner())[i] = fresh;
        avoid.store(usize::MAX, Ordering::Relaxed);
        eprintln!("{addr}: stopped in {stopped:?}, up with shards {back:?} after SIGTERM");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = started.elapsed();
    let t = load.finish().await?;
    let failed: i64 = t.failed.values().sum();
    eprintln!(
        "rolling restart of 3 nodes in {took:?}: {} deposits acknowledged, {failed} failed \
         ({} unavailable, other: {:?}); longest gap without an acknowledged deposit: {:?} ({})",
        t.ok, t.unavailable, t.other, t.longest_gap.0, t.longest_gap.1
    );
    ensure!(t.ok > 200, "the load barely ran: {} acknowledged", t.ok);
    // Every entity serves, with every acknowledged deposit (a failed one
    // may or may not be in: a forwarded command's outcome can be unknown).
    let client = clients.read().unwrap_or_else(|p| p.into_inner())[0].clone();
    let balances = balances_when_served(&client, &ids, SERVED_WITHIN).await?;
    for id in &ids {
        let a = t.acked.get(id).copied().unwrap_or(0);
        let f = t.failed.get(id).copied().unwrap_or(0);
        let b = balances[id] - 10;
        ensure!(
            (a..=a + f).contains(&b),
            "{id}: {b} deposits in the balance, {a} acknowledged, {f} failed"
        );
    }
    let s = status(c.node(1))?;
    ensure!(same_members_up(&s, 3), "after the rolling restart: {s}");
    let open: Vec<Arc<Client>> = clients.read().unwrap_or_else(|p| p.into_inner()).clone();
    for cl in open {
        cl.close().await;
    }
    for n in &mut c.nodes {
        n.kill();
    }
    one_history_per_entity(&c.nodes, &ids).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_for_good_refuses_to_start_and_the_others_restart_without_it() -> Result<()>
{
    let _serial = SERIAL.lock().await;
    let mut c = three_nodes().await?;
    let c2 = c.node(1).client().await?;
    let ids: Vec<String> = (0..60).map(|i| format!("g-{i:03}")).collect();
    for id in &ids {
        ask(&c2, id, r#"{"Deposit":{"amount":4}}"#).await?;
    }
    c2.close().await;
    // The first seed (every node's seed) leaves for good.
    let gone = c.node(0).addr.to_string();
    let exit = leave(&mut c.nodes[0], Duration::from_secs(90)).await?;
    ensure!(exit.success(), "the leaving node exited with {exit}");
    let s = wait_status(c.node(1), Duration::from_secs(30), "node 1 removed", |s| {
        states(s).get(&gone).is_some_and(|st| st == "removed")
            && shards(s).get(&gone).copied().unwrap_or(0) == 0
    })
    .await?;
    eprintln!("after the leave: {:?} {:?}", states(&s), shards(&s));

    // Started again on its data directory, it refuses, and says why.
    c.nodes[0].restart()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = c.nodes[0].exited() {
            break st;
        }
        ensure!(
            Instant::now() < deadline,
            "a node that left for good started again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(!status.success(), "the removed node exited with {status}");
    let log = std::fs::read_to_string(c.node(0).dir.join("node.log"))?;
    ensure!(
        log.contains("left the cluster for good"),
        "no clear error in the removed node's log"
    );

    // The two others, stopped with SIGTERM and started again: they come
    // back without the removed first seed and serve every entity.
    let exits = {
        let mut two: Vec<&mut _> = c.nodes.iter_mut().skip(1).collect();
        tokio::task::block_in_place(|| sigterm_all(&mut two))?
    };
    for st in exits {
        ensure!(st.success(), "a member exited with {st} on SIGTERM");
    }
    let starting = Instant::now();
    for i in 1..3 {
        c.nodes[i].restart()?;
    }
    let client = client_of(c.node(2)).await?;
    let balances = balances_when_served(&client, &ids, SERVED_WITHIN).await?;
    eprintln!(
        "two members served every entity {:?} after they started again",
        starting.elapsed()
    );
    for id in &ids {
        ensure!(balances[id] == 4, "{id}: balance {}", balances[id]);
    }
    let s = wait_status(c.node(1), Duration::from_secs(30), "two members up", |s| {
        let st = states(s);
        up_count(s) == 2
            && st.get(&gone).is_some_and(|v| v == "removed")
            && shards(s).values().sum::<u64>() == 256
            && shards(s).get(&gone).copied().unwrap_or(0) == 0
    })
    .await?;
    eprintln!("after the restart: {:?} {:?}", states(&s), shards(&s));
    for id in &ids {
        ask(&client, id, r#"{"Deposit":{"amount":1}}"#)
            .await
            .with_context(|| format!("deposit to {id} after the restart"))?;
    }
    client.close().await;
    for n in &mut c.nodes {
        n.kill();
    }
    one_history_per_entity(&c.nodes, &ids).await
}
