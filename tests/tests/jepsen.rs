//! A Jepsen-style run against a 3-node cluster of real processes: clients
//! record every operation as invoked, then ok, fail or info (timed out:
//! indeterminate), while a nemesis injects faults round after round
//! (SIGKILL of a node, SIGSTOP/SIGCONT, a 2|1 partition in the peer
//! transport's fault layer), then a checker judges the history.
//!
//! Workload "set-full": element k is a deposit of 1 to entity `s-k`, each
//! element added once. After healing: every acknowledged element is
//! present exactly once (balance 1); a failed or indeterminate one is
//! present at most once; and from every node's journal, every copy of an
//! entity's history agrees (no two histories, contiguous sequence numbers).
//!
//! `CAIRN_JEPSEN_ROUNDS` sets the number of fault rounds (20 by default;
//! more for a longer run). Every loop is bounded in count and time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cairn_host::api::ApiError;
use cairn_host::client::ClientError;
use cairn_tests::cluster::*;

/// What became of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Fail,
    Info,
}

/// Sends `SIGSTOP` or `SIGCONT` to a process.
fn signal(pid: u32, sig: &str) -> Result<()> {
    let s = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    ensure!(s.success(), "kill {sig} {pid}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_full_under_kills_pauses_and_partitions_loses_no_acknowledged_element() -> Result<()> {
    let rounds: usize = std::env::var("CAIRN_JEPSEN_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut c = Cluster::start(3, 3)?;
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

    // Clients: one per node, each adding its own elements in turn.
    let history: Arc<std::sync::Mutex<HashMap<u64, Outcome>>> = Default::default();
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..3 {
        let (addr, certs) = (c.node(i).addr, c.node(i).certs());
        for _ in 0..2 {
            let (history, next, stop, certs) =
                (history.clone(), next.clone(), stop.clone(), certs.clone());
            workers.push(tokio::spawn(async move {
                let files = cairn_host::tls::ClientFiles::in_dir(&certs);
                let mut client: Option<cairn_host::client::Client> = None;
                let deadline = Instant::now() + Duration::from_secs(900);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Some(cl) = &client else {
                        // (Re)connect to this worker's node; it may be down.
                        let c = tokio::time::timeout(
                            Duration::from_secs(2),
                            cairn_host::client::Client::connect(addr, &files, "localhost"),
                        )
                        .await;
                        match c {
                            Ok(Ok(c)) => client = Some(c),
                            _ => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                        continue;
                    };
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= 200_000 {
                        break;
                    }
                    let id = format!("s-{k}");
                    let op = ask(cl, &id, r#"{"Deposit":{"amount":1}}"#);
                    let outcome = match tokio::time::timeout(Duration::from_secs(10), op).await {
                        Ok(Ok(_)) => Outcome::Ok,
                        // Refused before it ran: not applied.
                        Ok(Err(ClientError::Api(
                            ApiError::Busy(_) | ApiError::NotOwner { .. },
                        ))) => Outcome::Fail,
                        // A typed refusal that may follow a lost forward,
                        // a timeout, a lost connection: maybe applied.
                        Ok(Err(ClientError::Api(_))) => Outcome::Info,
                        _ => {
                            client = None;
                            Outcome::Info
                        }
                    };
                    history
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(k, outcome);
                    if outcome != Outcome::Ok {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
    }

    // The nemesis.
    let addrs: Vec<_> = c.nodes.iter().map(|n| n.addr).collect();
    for round in 0..rounds {
        let victim = round % 3;
        let fault = round % 3;
        tokio::time::sleep(Duration::from_millis(800)).await;
        match fault {
            0 => {
                c.nodes[victim].kill();
                tokio::time::sleep(Duration::from_secs(4)).await;
                c.nodes[victim].restart()?;
            }
            1 => {
                let pid = c.nodes[victim].child.id();
                signal(pid, "-STOP")?;
                tokio::time::sleep(Duration::from_secs(4)).await;
                signal(pid, "-CONT")?;
            }
            _ => {
                let others: Vec<_> = (0..3).filter(|j| *j != victim).collect();
                cut(
                    &c.nodes[victim],
                    &others.iter().map(|j| addrs[*j]).collect::<Vec<_>>(),
                )?;
                for j in &others {
                    cut(&c.nodes[*j], &[addrs[victim]])?;
                }
                tokio::time::sleep(Duration::from_secs(4)).await;
                for n in &c.nodes {
                    cut(n, &[])?;
                }
            }
        }
        // Heal: every member up again before the next fault.
        wait_status(
            c.node((victim + 1) % 3),
            Duration::from_secs(60),
            "healed",
            |s| up_count(s) == 3,
        )
        .await
        .with_context(|| format!("round {round}"))?;
        eprintln!("round {round}: fault {fault} on node {} healed", victim + 1);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    let history = history.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let count = |o| history.values().filter(|v| **v == o).count();
    eprintln!(
        "{} operations: {} ok, {} failed, {} indeterminate",
        history.len(),
        count(Outcome::Ok),
        count(Outcome::Fail),
        count(Outcome::Info)
    );
    ensure!(count(Outcome::Ok) > 100, "too few operations succeeded");

    // The checker: read every element through a healthy node.
    let client = c.node(0).client().await?;
    let mut lost = Vec::new();
    let mut doubled = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (k, outcome) in &history {
        let id = format!("s-{k}");
        let b = loop {
            match balance(&client, &id).await {
                Ok(b) => break b,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        if b > 1 {
            doubled.push(*k);
        }
        if *outcome == Outcome::Ok && b != 1 {
            lost.push(*k);
        }
        if *outcome == Outcome::Fail && b != 0 {
            doubled.push(*k);
        }
    }
    ensure!(lost.is_empty(), "acknowledged elements lost: {lost:?}");
    ensure!(
        doubled.is_empty(),
        "elements applied twice or despite a refusal: {doubled:?}"
    );
    client.close().await;

    // The journals: one history per entity.
    for n in &mut c.nodes {
        n.kill();
    }
    let ids: Vec<String> = history.keys().map(|k| format!("s-{k}")).collect();
    let mut first: HashMap<String, History> = HashMap::new();
    for n in &c.nodes {
        for (id, h) in read_journal(&n.dir, &ids).await? {
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
