//! A Jepsen-style run against a 3-node cluster of real processes: clients
//! record every operation as invoked, then ok, fail or info (timed out:
//! indeterminate), while a nemesis injects faults round after round
//! (SIGKILL of a node, SIGSTOP/SIGCONT, a 2|1 and a 1|1|1 partition in the
//! peer transport's fault layer), then a checker judges the history.
//!
//! Workload "set-full": element k is a deposit of 1 to entity `s-k`, each
//! element added once. An answer is ok, fail (an error saying the command
//! was not applied: `Storage`, `Unavailable`, `NotOwner`, `Busy`, any error
//! but the unknown outcomes, see `ApiError::may_have_applied`) or info
//! (`Indeterminate`, `Timeout`, `ShuttingDown`, a lost connection, no
//! answer in time: the outcome is unknown). After healing: every
//! acknowledged element is present exactly once (balance 1); an
//! indeterminate one at most once; a failed one never (a refusal whose
//! effect later appears is a violation of the error contract, reported
//! with the error the client was given); and from every node's journal,
//! every copy of an entity's history agrees (no two histories, contiguous
//! sequence numbers).
//!
//! Workload "bank", beside it on the same cluster and faults: each of
//! three clients owns four accounts (opened with 100 each) and moves money
//! between them in two steps, a withdrawal then a deposit. Every step
//! carries the entity's expected sequence number and is retried until it
//! lands, so each runs exactly once (a retry of a step that had landed
//! gets a conflict at the next number; one client per account makes that
//! unambiguous) and a transfer needs no compensation. After every fault,
//! the clients pause between transfers and the checker reads every
//! account: the total is 1,200 and each balance is what its client was
//! acknowledged.
//!
//! Workload "sends", beside them: one client per node asks sender
//! counters (`counter` example) to `Forward` an increment of 1 to one of
//! ten receiver counters; each ask is ok, fail or info as above. After
//! healing, once the senders' outboxes have drained, each receiver's value
//! lies between its acknowledged forwards and those plus the
//! indeterminate ones: below is an acknowledged send lost, above a send
//! applied twice or a refused one applied.
//!
//! At the end, every node's log must hold no panic nor runtime abort.
//!
//! `CAIRN_JEPSEN_ROUNDS` sets the number of fault rounds (20 by default;
//! more for a longer run). Every loop is bounded in count and time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cairn_client::{Client, ClientError};
use cairn_host::api::{ApiError, Payload, Request, Response};
use cairn_tests::NodeProc;
use cairn_tests::cluster::*;

/// What became of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Fail,
    Info,
}

/// Bank clients, accounts per client, and each account's opening balance.
const BANK_CLIENTS: usize = 3;
const ACCOUNTS: usize = 4;
const OPENING: i64 = 100;

fn account(client: usize, j: usize) -> String {
    format!("b-{client}-{j}")
}

/// One bank step on `id` at `expected` (its sequence number now), retried
/// until it is known to have landed exactly once: an ok at `expected + 1`,
/// or a conflict saying the entity is there (an earlier try landed).
/// Bounded by `deadline`; reconnects to `addr` as needed.
async fn step(
    client: &mut Option<Client>,
    addr: std::net::SocketAddr,
    files: &cairn_client::tls::ClientFiles,
    id: &str,
    json: &str,
    expected: u64,
    deadline: Instant,
) -> Result<()> {
    loop {
        ensure!(
            Instant::now() < deadline,
            "{id}: step {json} at #{expected} never landed"
        );
        let Some(cl) = client.as_ref() else {
            if let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_secs(2),
                Client::connect(addr, files, "localhost"),
            )
            .await
            {
                *client = Some(c);
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        let req = Request::Ask {
            entity_type: "bank-account".into(),
            entity_id: id.into(),
            command: Payload::Json(json.into()),
            expected_seq: Some(expected),
            timeout_ms: Some(8_000),
        };
        match tokio::time::timeout(Duration::from_secs(10), cl.call(&req)).await {
            Ok(Ok(Response::Reply { seq, .. })) => {
                ensure!(
                    seq == expected + 1,
                    "{id}: {json} at #{expected} landed at #{seq}"
                );
                return Ok(());
            }
            Ok(Err(ClientError::Api(ApiError::Conflict { actual, .. }))) => {
                // This client is the account's only writer: the entity can
                // only be one step on, and that step is this one.
                ensure!(
                    actual == expected + 1,
                    "{id}: at #{actual}, expected #{expected} or one more"
                );
                return Ok(());
            }
            Ok(Ok(other)) => anyhow::bail!("{id}: unexpected {other:?}"),
            Ok(Err(ClientError::Api(_))) => {}
            _ => *client = None,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The shared view of the bank workload: what each account's client was
/// acknowledged, and the pause the checker asks for between transfers.
#[derive(Default)]
struct Bank {
    balances: std::sync::Mutex<Vec<i64>>,
    pause: AtomicBool,
    parked: AtomicU64,
    transfers: AtomicU64,
    /// A client's failure (it parks for good).
    error: std::sync::Mutex<Option<String>>,
}

impl Bank {
    fn new() -> Bank {
        Bank {
            balances: std::sync::Mutex::new(vec![0; BANK_CLIENTS * ACCOUNTS]),
            ..Bank::default()
        }
    }

    fn failure(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A bank client: opens its accounts, then moves money between them until
/// `stop`, parking between transfers while the checker asks.
async fn bank_client(
    i: usize,
    addr: std::net::SocketAddr,
    certs: std::path::PathBuf,
    bank: Arc<Bank>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let files = cairn_client::tls::ClientFiles::in_dir(&certs);
    let mut client = None;
    let mut seqs = [0u64; ACCOUNTS];
    let mut bal = [0i64; ACCOUNTS];
    let deadline = Instant::now() + Duration::from_secs(1200);
    let publish = |bal: &[i64; ACCOUNTS]| {
        let mut b = bank.balances.lock().unwrap_or_else(|p| p.into_inner());
        b[i * ACCOUNTS..(i + 1) * ACCOUNTS].copy_from_slice(bal);
    };
    for j in 0..ACCOUNTS {
        let json = format!(r#"{{"Deposit":{{"amount":{OPENING}}}}}"#);
        step(
            &mut client,
            addr,
            &files,
            &account(i, j),
            &json,
            0,
            deadline,
        )
        .await?;
        seqs[j] = 1;
        bal[j] = OPENING;
        publish(&bal);
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut parked = false;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if bank.pause.load(Ordering::Acquire) {
            if !parked {
                parked = true;
                bank.parked.fetch_add(1, Ordering::AcqRel);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if parked {
            parked = false;
            bank.parked.fetch_sub(1, Ordering::AcqRel);
        }
        let a = (next() % ACCOUNTS as u64) as usize;
        let b = (a + 1 + (next() % (ACCOUNTS as u64 - 1)) as usize) % ACCOUNTS;
        if bal[a] == 0 {
            continue;
        }
        let amount = 1 + (next() % bal[a] as u64) as i64;
        // The withdrawal, then the deposit.
        for (j, command, delta) in [(a, "Withdraw", -amount), (b, "Deposit", amount)] {
            let json = format!(r#"{{"{command}":{{"amount":{amount}}}}}"#);
            step(
                &mut client,
                addr,
                &files,
                &account(i, j),
                &json,
                seqs[j],
                deadline,
            )
            .await?;
            seqs[j] += 1;
            bal[j] += delta;
        }
        publish(&bal);
        bank.transfers.fetch_add(1, Ordering::Relaxed);
    }
    if !parked {
        bank.parked.fetch_add(1, Ordering::AcqRel);
    }
    Ok(())
}

/// The set-full checker: `balances` holds what each element's entity holds
/// after healing. Every acknowledged element is there once, none twice,
/// and none the client was told was not applied (the error contract:
/// such an answer must never be followed by the effect); the violations
/// name the error each refused element got (from `refusals`).
fn check_set(
    history: &HashMap<u64, Outcome>,
    balances: &HashMap<u64, i64>,
    refusals: &HashMap<u64, String>,
) -> Result<()> {
    let mut lost = Vec::new();
    let mut doubled = Vec::new();
    let mut refused_but_applied = Vec::new();
    for (k, outcome) in history {
        let b = balances.get(k).copied().unwrap_or(0);
        if b > 1 {
            doubled.push(*k);
        }
        if *outcome == Outcome::Ok && b != 1 {
            lost.push(*k);
        }
        if *outcome == Outcome::Fail && b != 0 {
            refused_but_applied.push(*k);
        }
    }
    lost.sort_unstable();
    doubled.sort_unstable();
    refused_but_applied.sort_unstable();
    eprintln!(
        "checker: {} acknowledged lost, {} applied twice, {} refusals later applied",
        lost.len(),
        doubled.len(),
        refused_but_applied.len()
    );
    ensure!(lost.is_empty(), "acknowledged elements lost: {lost:?}");
    ensure!(doubled.is_empty(), "elements applied twice: {doubled:?}");
    ensure!(
        refused_but_applied.is_empty(),
        "elements applied although the client was told they were not (the error contract broken): {}",
        refused_but_applied
            .iter()
            .map(|k| format!("s-{k} ({})", refusals.get(k).map_or("?", String::as_str)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// After a set-full failure, with the nodes stopped: for each lost element,
/// when and through which node it was acknowledged, the faults around that
/// time, and which node's journal holds its event (a read that missed an
/// event every journal has is a stale read; one no journal has is a loss).
async fn explain_losses(
    nodes: &[NodeProc],
    history: &HashMap<u64, Outcome>,
    balances: &HashMap<u64, i64>,
    acked: &std::sync::Mutex<HashMap<u64, (usize, f64)>>,
    faults: &[(usize, usize, f64, f64)],
) {
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let lost: Vec<u64> = history
        .iter()
        .filter(|(k, o)| **o == Outcome::Ok && balances.get(k).copied().unwrap_or(0) != 1)
        .map(|(k, _)| *k)
        .collect();
    for (round, (fault, victim, from, to)) in faults.iter().enumerate() {
        eprintln!(
            "round {round}: fault {fault} on node {} from {from:.1}s to {to:.1}s",
            victim + 1
        );
    }
    for k in lost {
        let id = format!("s-{k}");
        let (via, at) = acked.get(&k).copied().unwrap_or((usize::MAX, -1.0));
        eprintln!(
            "lost {id}: acknowledged through node {} at {at:.1}s",
            via + 1
        );
        for (i, n) in nodes.iter().enumerate() {
            match read_journal(&n.dir, std::slice::from_ref(&id)).await {
                Ok(h) => eprintln!(
                    "  node {} journal: {:?}",
                    i + 1,
                    h.get(&id)
                        .map(|h| h.iter().map(|(s, _)| *s).collect::<Vec<_>>())
                ),
                Err(e) => eprintln!("  node {} journal unreadable: {e:#}", i + 1),
            }
            // What the node said of the entity (truncations, conflicts).
            let log = std::fs::read_to_string(n.dir.join("node.log")).unwrap_or_default();
            let needle = format!("/{id} ");
            for line in log.lines().filter(|l| l.contains(&needle)).take(8) {
                eprintln!("    {}", strip_ansi(line));
            }
        }
    }
}

#[test]
fn the_set_checker_reports_a_refusal_that_was_applied_and_accepts_an_unknown_outcome() {
    let history = HashMap::from([
        (1, Outcome::Ok),
        (2, Outcome::Info),
        (3, Outcome::Info),
        (4, Outcome::Fail),
    ]);
    let refusals = HashMap::from([
        (2, "outcome unknown (...): replica 3 timed out".to_owned()),
        (4, "storage: replication: min_acks is 1".to_owned()),
    ]);
    // Unknown outcomes may be there or not; a refusal must not be.
    let fine = HashMap::from([(1, 1), (2, 1), (3, 0), (4, 0)]);
    check_set(&history, &fine, &refusals).unwrap();
    let broken = HashMap::from([(1, 1), (2, 0), (3, 1), (4, 1)]);
    let e = check_set(&history, &broken, &refusals)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("told they were not") && e.contains("s-4 (storage: replication"),
        "{e}"
    );
    // And the older checks still hold.
    let lost = HashMap::from([(1, 0), (2, 2), (3, 0), (4, 0)]);
    let e = check_set(&history, &lost, &refusals)
        .unwrap_err()
        .to_string();
    assert!(e.contains("acknowledged elements lost: [1]"), "{e}");
}

/// Pauses the bank clients between transfers, reads every account through
/// `reader` and checks the total and each acknowledged balance.
async fn check_bank(bank: &Bank, reader: &NodeProc, when: &str) -> Result<()> {
    bank.pause.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(120);
    while bank.parked.load(Ordering::Acquire) < BANK_CLIENTS as u64 {
        if let Some(e) = bank.failure() {
            anyhow::bail!("{when}: a bank client failed: {e}");
        }
        ensure!(
            Instant::now() < deadline,
            "{when}: bank clients never paused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(e) = bank.failure() {
        anyhow::bail!("{when}: a bank client failed: {e}");
    }
    let expect = bank
        .balances
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let client = reader.client().await?;
    let mut total = 0;
    for i in 0..BANK_CLIENTS {
        for j in 0..ACCOUNTS {
            let id = account(i, j);
            let b = loop {
                match balance(&client, &id).await {
                    Ok(b) => break b,
                    Err(e) => {
                        ensure!(Instant::now() < deadline, "{when}: {e:#}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            ensure!(
                b == expect[i * ACCOUNTS + j],
                "{when}: {id} holds {b}, its client was acknowledged {}",
                expect[i * ACCOUNTS + j]
            );
            total += b;
        }
    }
    client.close().await;
    ensure!(
        total == OPENING * (BANK_CLIENTS * ACCOUNTS) as i64,
        "{when}: the bank holds {total}"
    );
    bank.pause.store(false, Ordering::Release);
    Ok(())
}

/// Receivers of the sends workload.
const RECEIVERS: usize = 10;

/// The sends workload's record: per receiver, forwards to it acknowledged
/// and indeterminate (a refused one counts in neither).
#[derive(Default)]
struct Sends {
    /// receiver -> (ok, info).
    to: std::sync::Mutex<HashMap<usize, (i64, i64)>>,
    fail: AtomicU64,
}

/// One client of the sends workload, on node `i`: sender counters `f-i-m`
/// forward increments of 1 to receivers `r-j`, until `stop`.
async fn send_client(
    i: usize,
    addr: std::net::SocketAddr,
    certs: std::path::PathBuf,
    sends: Arc<Sends>,
    stop: Arc<AtomicBool>,
) {
    let files = cairn_client::tls::ClientFiles::in_dir(&certs);
    let mut client: Option<Client> = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut k = 0usize;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let Some(cl) = &client else {
            let c = tokio::time::timeout(
                Duration::from_secs(2),
                Client::connect(addr, &files, "localhost"),
            )
            .await;
            match c {
                Ok(Ok(c)) => client = Some(c),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
            continue;
        };
        k += 1;
        let sender = format!("f-{i}-{}", k % 7);
        let r = (k * 3 + i) % RECEIVERS;
        let json = format!(r#"{{"Forward":{{"entity_id":"r-{r}","by":1}}}}"#);
        let op = ask_type(cl, "counter", &sender, &json);
        let outcome = match tokio::time::timeout(Duration::from_secs(10), op).await {
            Ok(Ok(_)) => Outcome::Ok,
            Ok(Err(ClientError::Api(e))) if !e.may_have_applied() => Outcome::Fail,
            Ok(Err(_)) => Outcome::Info,
            Err(_) => {
                client = None;
                Outcome::Info
            }
        };
        {
            let mut to = sends.to.lock().unwrap_or_else(|p| p.into_inner());
            let t = to.entry(r).or_default();
            match outcome {
                Outcome::Ok => t.0 += 1,
                Outcome::Info => t.1 += 1,
                Outcome::Fail => {
                    sends.fail.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let pause = if outcome == Outcome::Ok { 20 } else { 100 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// The sends checker: waits (up to 120 s) until every receiver holds at
/// least its acknowledged forwards and its value has stopped changing,
/// then checks each lies between acknowledged and acknowledged plus
/// indeterminate.
async fn check_sends(sends: &Sends, client: &Client) -> Result<()> {
    let to = sends.to.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last: Option<Vec<i64>> = None;
    let values = loop {
        let mut now = Vec::with_capacity(RECEIVERS);
        for r in 0..RECEIVERS {
            let id = format!("r-{r}");
            let v = loop {
                match ask_type(client, "counter", &id, r#""Get""#).await {
                    Ok((j, _)) => break j.trim().parse::<i64>()?,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(anyhow::anyhow!("reading {id}: {e}")),
                }
            };
            now.push(v);
        }
        let reached = (0..RECEIVERS).all(|r| now[r] >= to.get(&r).map_or(0, |t| t.0));
        if (reached && last.as_ref() == Some(&now)) || Instant::now() > deadline {
            break now;
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let (ok, info): (i64, i64) = to.values().fold((0, 0), |a, t| (a.0 + t.0, a.1 + t.1));
    eprintln!(
        "sends: {ok} acknowledged, {info} indeterminate, {} refused; received {}",
        sends.fail.load(Ordering::Relaxed),
        values.iter().sum::<i64>()
    );
    ensure!(ok > 50, "too few forwards succeeded");
    for (r, v) in values.iter().enumerate() {
        let (ok, info) = to.get(&r).copied().unwrap_or_default();
        ensure!(
            *v >= ok,
            "r-{r}: {v} applied, {ok} acknowledged sends: an acknowledged send lost"
        );
        ensure!(
            *v <= ok + info,
            "r-{r}: {v} applied, {ok} acknowledged and {info} indeterminate: a send applied twice or a refused one applied"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_full_and_bank_under_kills_pauses_and_partitions_lose_nothing_acknowledged()
-> Result<()> {
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
    deploy_example(&c, "counter").await?;

    // Clients: one per node, each adding its own elements in turn.
    let history: Arc<std::sync::Mutex<HashMap<u64, Outcome>>> = Default::default();
    // The error each failed or indeterminate element was answered with.
    let refusals: Arc<std::sync::Mutex<HashMap<u64, String>>> = Default::default();
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // For a failure's report: when (seconds from `began`) and through which
    // node each acknowledged element was acknowledged, and the faults.
    let began = Instant::now();
    let acked: Arc<std::sync::Mutex<HashMap<u64, (usize, f64)>>> = Default::default();
    let mut faults: Vec<(usize, usize, f64, f64)> = Vec::new();
    let mut workers = Vec::new();
    for i in 0..3 {
        let (addr, certs) = (c.node(i).addr, c.node(i).certs());
        for _ in 0..2 {
            let (history, refusals, next, stop, certs, acked) = (
                history.clone(),
                refusals.clone(),
                next.clone(),
                stop.clone(),
                certs.clone(),
                acked.clone(),
            );
            workers.push(tokio::spawn(async move {
                let files = cairn_client::tls::ClientFiles::in_dir(&certs);
                let mut client: Option<cairn_client::Client> = None;
                let deadline = Instant::now() + Duration::from_secs(900);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Some(cl) = &client else {
                        // (Re)connect to this worker's node; it may be down.
                        let c = tokio::time::timeout(
                            Duration::from_secs(2),
                            cairn_client::Client::connect(addr, &files, "localhost"),
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
                        // The node says it was not applied (and never
                        // will be): the checker holds it to that.
                        Ok(Err(ClientError::Api(e))) if !e.may_have_applied() => {
                            refusals
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(k, e.to_string());
                            Outcome::Fail
                        }
                        // Indeterminate, a timeout, shutting down: maybe
                        // applied.
                        Ok(Err(ClientError::Api(e))) => {
                            refusals
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(k, e.to_string());
                            Outcome::Info
                        }
                        // A lost connection, no answer: maybe applied.
                        _ => {
                            client = None;
                            Outcome::Info
                        }
                    };
                    history
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(k, outcome);
                    if outcome == Outcome::Ok {
                        acked
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(k, (i, began.elapsed().as_secs_f64()));
                    }
                    if outcome != Outcome::Ok {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
    }

    let bank = Arc::new(Bank::new());
    let mut bankers = Vec::new();
    for i in 0..BANK_CLIENTS {
        let (addr, certs) = (c.node(i).addr, c.node(i).certs());
        let (bank, stop) = (bank.clone(), stop.clone());
        bankers.push(tokio::spawn(async move {
            if let Err(e) = bank_client(i, addr, certs, bank.clone(), stop).await {
                *bank.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
                bank.parked.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }

    let sends = Arc::new(Sends::default());
    let mut senders = Vec::new();
    for i in 0..3 {
        let (addr, certs) = (c.node(i).addr, c.node(i).certs());
        let (sends, stop) = (sends.clone(), stop.clone());
        senders.push(tokio::spawn(send_client(i, addr, certs, sends, stop)));
    }

    // The nemesis.
    let addrs: Vec<_> = c.nodes.iter().map(|n| n.addr).collect();
    for round in 0..rounds {
        let victim = round % 3;
        let fault = round % 4;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let fault_began = began.elapsed().as_secs_f64();
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
            3 => {
                // 1|1|1: every node cut from both others; no side has a
                // majority, so none may acknowledge anything.
                for (i, n) in c.nodes.iter().enumerate() {
                    let others: Vec<_> = addrs
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, a)| *a)
                        .collect();
                    cut(n, &others)?;
                }
                tokio::time::sleep(Duration::from_secs(4)).await;
                for n in &c.nodes {
                    cut(n, &[])?;
                }
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
        faults.push((fault, victim, fault_began, began.elapsed().as_secs_f64()));
        // Heal: every member up again before the next fault.
        wait_status(
            c.node((victim + 1) % 3),
            Duration::from_secs(60),
            "healed",
            |s| up_count(s) == 3,
        )
        .await
        .with_context(|| format!("round {round}"))?;
        check_bank(
            &bank,
            c.node((victim + 1) % 3),
            &format!("after round {round}"),
        )
        .await?;
        eprintln!(
            "round {round}: fault {fault} on node {} healed; bank total holds after {} transfers",
            victim + 1,
            bank.transfers.load(Ordering::Relaxed)
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers.into_iter().chain(bankers).chain(senders) {
        w.await?;
    }
    check_bank(&bank, c.node(0), "at the end").await?;
    let transfers = bank.transfers.load(Ordering::Relaxed);
    eprintln!("bank: {transfers} transfers");
    ensure!(transfers > 10, "too few transfers completed");
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
    let refusals = refusals.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // What the errors were, by kind (the text before the first colon).
    let mut kinds: std::collections::BTreeMap<(bool, &str), usize> = Default::default();
    for (k, e) in &refusals {
        let fail = history.get(k) == Some(&Outcome::Fail);
        *kinds
            .entry((fail, e.split(':').next().unwrap_or(e)))
            .or_default() += 1;
    }
    for ((fail, kind), n) in &kinds {
        let side = if *fail { "not applied" } else { "unknown" };
        eprintln!("  {side}: {n} × {kind}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut balances = HashMap::new();
    for k in history.keys() {
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
        balances.insert(*k, b);
    }
    if let Err(e) = check_set(&history, &balances, &refusals) {
        client.close().await;
        for n in &mut c.nodes {
            n.kill();
        }
        explain_losses(&c.nodes, &history, &balances, &acked, &faults).await;
        return Err(e);
    }
    check_sends(&sends, &client).await?;
    client.close().await;

    // The journals: one history per entity.
    for n in &mut c.nodes {
        n.kill();
    }
    let mut ids: Vec<String> = history.keys().map(|k| format!("s-{k}")).collect();
    ids.extend((0..BANK_CLIENTS).flat_map(|i| (0..ACCOUNTS).map(move |j| account(i, j))));
    one_history_per_entity(&c.nodes, &ids).await?;
    // No node crashed: a panic, or the runtime's abort (a stack overflow is
    // not a panic).
    let mut crashes = Vec::new();
    for n in &c.nodes {
        let log = std::fs::read_to_string(n.dir.join("node.log")).unwrap_or_default();
        crashes.extend(
            log.lines()
                .filter(|l| {
                    ["panicked", "overflowed its stack", "fatal runtime error"]
                        .iter()
                        .any(|m| l.contains(m))
                })
                .map(|l| format!("{}: {}", n.dir.display(), strip_ansi(l))),
        );
    }
    ensure!(
        crashes.is_empty(),
        "crashes in the node logs:\n{}",
        crashes.join("\n")
    );
    Ok(())
}
