//! The single-node benchmark: bank-account deposits through `ask` on the
//! durable SQLite journal (throughput and latency percentiles), the same logic
//! as native Rust over the same journal, recovery speed of one entity with a
//! long history (with and without a snapshot), and host memory per live idle
//! entity.
//!
//! Run: `cargo run --release -p cairn-tests --bin cairn-bench [-- --quick]`
//!
//! Phases outside the default run, each with `--phase NAME`:
//! `deploy-history` (deploy validation on a big type) and `python` (the
//! Python bank account, `examples/python/bank-account`: deploy to active
//! with and without the compiled-code cache, `decide` and `fold` per call,
//! durable commands in-process, recovery of a 10,000-event entity with and
//! without a snapshot, RSS per 1,000 live entities with 10,000 live) and
//! `languages` (the bank account in Rust, Python and JavaScript side by
//! side, in-process and over QUIC against a `cairn node` process: see
//! `bench/languages.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_host::config::Config;
use cairn_host::node::{AskOptions, LifecycleEvent, Node};
use cairn_store::{EntityKey, EventRecord, Snapshot, Write};
use cairn_tests::native::Native;

#[path = "bench/languages.rs"]
mod languages;

/// The allocator of the `cairn` binary (see `host/src/main.rs`), so that the
/// figures are those of a node.
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Args {
    phase: Option<String>,
    passthrough: Vec<String>,
    entities: usize,
    callers: usize,
    commands: usize,
    history: u64,
    idle_entities: usize,
    deploy_entities: usize,
    deploy_events: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        phase: None,
        passthrough: Vec::new(),
        entities: 10_000,
        callers: 256,
        commands: 1_000_000,
        history: 1_000_000,
        idle_entities: 100_000,
        deploy_entities: 100_000,
        deploy_events: 100,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        if argv[i] == "--phase" {
            a.phase = argv.get(i + 1).cloned();
            i += 2;
            continue;
        }
        a.passthrough.push(argv[i].clone());
        if let Some(v) = argv.get(i + 1)
            && !v.starts_with("--")
        {
            a.passthrough.push(v.clone());
        }
        let val = argv.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        match (argv[i].as_str(), val) {
            ("--quick", _) => {
                a.commands = 100_000;
                a.history = 100_000;
                a.idle_entities = 20_000;
                i += 1;
                continue;
            }
            ("--entities", Some(v)) => a.entities = v,
            ("--callers", Some(v)) => a.callers = v,
            ("--commands", Some(v)) => a.commands = v,
            ("--history", Some(v)) => a.history = v as u64,
            ("--idle-entities", Some(v)) => a.idle_entities = v,
            ("--deploy-entities", Some(v)) => a.deploy_entities = v,
            ("--deploy-events", Some(v)) => a.deploy_events = v as u64,
            (other, _) => {
                eprintln!("unknown or incomplete argument `{other}`; see the source header");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn config(dir: &std::path::Path, toml: &str) -> Result<Config> {
    let mut c = Config::parse(toml)?;
    c.node.data_dir = dir.to_path_buf();
    Ok(c)
}

async fn bank_node(dir: &std::path::Path, toml: &str, wasm: &[u8], native: bool) -> Result<Node> {
    let node = Node::open(config(dir, toml)?).await?;
    if native {
        node.register_native(
            "bank-account",
            Arc::new(Native::<bank_account::BankAccount>::default()),
        )
        .await?;
    } else {
        node.deploy("bank-account", wasm.to_vec()).await?;
    }
    Ok(node)
}

/// Runs `commands` deposits from `callers` concurrent tasks over `entities`.
async fn throughput(label: &str, node: &Node, a: &Args) -> Result<f64> {
    throughput_of(label, node, "bank-account", a).await
}

/// [`throughput`] on entity type `ty`.
async fn throughput_of(label: &str, node: &Node, ty: &'static str, a: &Args) -> Result<f64> {
    let deposit = node.command_from_json(ty, r#"{"Deposit":{"amount":1}}"#)?;
    // Callers take the next command from one counter, so all of them stay
    // busy until the last command (a caller that fell behind does not leave
    // a tail of low concurrency that would understate the rate).
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total = a.commands;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.callers {
        let node = node.clone();
        let deposit = deposit.clone();
        let entities = a.entities;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failures = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let id = format!("acct-{}", i % entities);
                let t = Instant::now();
                match node
                    .ask(ty, &id, deposit.clone(), AskOptions::default())
                    .await
                {
                    Ok(_) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(_) => failures += 1,
                }
            }
            (lat, failures)
        }));
    }
    let mut lat = Vec::with_capacity(a.commands);
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await?;
        lat.extend(l);
        failures += f;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let rate = lat.len() as f64 / secs;
    println!(
        "{label:<28} {:>10.0} commands/s   p50 {:>6} µs   p99 {:>6} µs   p99.9 {:>6} µs   ({} commands, {} failed, {:.1} s)",
        rate,
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        lat.len(),
        failures,
        secs
    );
    Ok(rate)
}

/// Writes `n` Deposited(1) events for one entity straight into the journal.
async fn write_history(node: &Node, id: &str, n: u64) -> Result<()> {
    write_history_of(node, "bank-account", id, n).await
}

/// [`write_history`] for an entity of type `ty` (the Python bank account
/// reads the Rust one's events: the codec is the same).
async fn write_history_of(node: &Node, ty: &str, id: &str, n: u64) -> Result<()> {
    let payload = cairn_guest::codec::encode(&bank_account::Event::Deposited { amount: 1 })?;
    let key = EntityKey::new(ty, id);
    let mut seq = 1;
    let mut pending = Vec::new();
    while seq <= n {
        let end = (seq + 999).min(n);
        let events = (seq..=end)
            .map(|s| EventRecord {
                seq: s,
                timestamp_ms: 0,
                version: "1.0.0".into(),
                payload: payload.clone(),
            })
            .collect();
        pending.push(node.journal().append(Write {
            key: key.clone(),
            events,
            ..Write::default()
        }));
        if pending.len() == 64 {
            for p in pending.drain(..) {
                p.await?;
            }
        }
        seq = end + 1;
    }
    for p in pending {
        p.await?;
    }
    Ok(())
}

async fn recovery(label: &str, node: &Node, id: &str) -> Result<()> {
    recovery_of(label, node, "bank-account", id).await?;
    Ok(())
}

/// Recovers entity `id` of type `ty` (its first command) and prints the
/// rate; returns the time from the command to its reply.
async fn recovery_of(label: &str, node: &Node, ty: &str, id: &str) -> Result<Duration> {
    let mut lc = node.lifecycle();
    let get = node.command_from_json(ty, r#""GetBalance""#)?;
    let t = Instant::now();
    let opts = AskOptions {
        timeout: Duration::from_secs(600),
        expected_seq: None,
    };
    node.ask(ty, id, get, opts).await?;
    let secs = t.elapsed().as_secs_f64();
    let (snap, replayed) = loop {
        if let LifecycleEvent::Started {
            entity_id,
            snapshot_seq,
            replayed,
            ..
        } = lc.recv().await?
            && entity_id == id
        {
            break (snapshot_seq, replayed);
        }
    };
    println!(
        "{label:<28} {:>10.0} events/s   replayed {replayed} events after snapshot {:?} in {:.1} ms",
        replayed as f64 / secs,
        snap,
        secs * 1e3
    );
    Ok(Duration::from_secs_f64(secs))
}

/// Phases, each run in a child process of its own so that one phase's memory
/// (the allocator keeps freed pages) does not distort another's figures.
const PHASES: &[&str] = &[
    "durable",
    "durable-log",
    "memory-journal",
    "recovery",
    "idle-memory",
    "hotswap",
];

fn main() -> Result<()> {
    let a = parse_args();
    let Some(phase) = a.phase.clone() else {
        // Build the component once, then run every phase in a fresh process.
        cairn_tests::example_bytes("bank-account").context("building bank-account")?;
        println!(
            "Cairn single-node benchmark: {} cores, {} entities, {} callers, {} commands",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            a.entities,
            a.callers,
            a.commands
        );
        let exe = std::env::current_exe()?;
        for p in PHASES {
            let status = std::process::Command::new(&exe)
                .args(&a.passthrough)
                .args(["--phase", p])
                .status()?;
            anyhow::ensure!(status.success(), "phase {p} failed");
        }
        return Ok(());
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_phase(&phase, &a))
}

async fn run_phase(phase: &str, a: &Args) -> Result<()> {
    let wasm = cairn_tests::example_bytes("bank-account").context("building bank-account")?;
    let root = tempfile_dir()?;
    let result = match phase {
        "durable" => durable(a, &root, &wasm).await,
        "durable-log" => durable_log(a, &root, &wasm).await,
        "memory-journal" => memory_journal(a, &root, &wasm).await,
        "recovery" => recovery_phase(a, &root, &wasm).await,
        "idle-memory" => idle_memory(a, &root, &wasm).await,
        "hotswap" => hotswap(&root, &wasm).await,
        "deploy-history" => deploy_history(a, &root, &wasm).await,
        "python" => python(&root).await,
        "languages" => languages::run(&root).await,
        other => Err(anyhow::anyhow!(
            "unknown phase `{other}`; phases: {PHASES:?}, deploy-history, python and languages"
        )),
    };
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn durable(a: &Args, root: &std::path::Path, wasm: &[u8]) -> Result<()> {
    durable_on(a, root, wasm, "sqlite", "SQLite WAL").await
}

async fn durable_log(a: &Args, root: &std::path::Path, wasm: &[u8]) -> Result<()> {
    durable_on(a, root, wasm, "log", "append-only log").await
}

async fn durable_on(
    a: &Args,
    root: &std::path::Path,
    wasm: &[u8],
    backend: &str,
    title: &str,
) -> Result<()> {
    println!("\n== Durable deposits through ask ({title} journal, fsync per group commit)");
    let toml = format!(
        "[node]\njournal = \"{backend}\"\n[defaults.passivation]\nidle_after = \"never\"\n"
    );
    let mut rates = Vec::new();
    for native in [false, true] {
        let dir = root.join(if native { "native" } else { "wasm" });
        let node = bank_node(&dir, &toml, wasm, native).await?;
        let label = if native {
            "native Rust behavior"
        } else {
            "wasm component"
        };
        rates.push(throughput(label, &node, a).await?);
        node.shutdown(Duration::from_secs(10)).await;
    }
    println!("wasm / native throughput ratio: {:.2}", rates[0] / rates[1]);

    Ok(())
}

async fn memory_journal(a: &Args, root: &std::path::Path, wasm: &[u8]) -> Result<()> {
    println!(
        "\n== The same through an in-memory journal (no disk; a BTreeMap under one lock, built for tests, not for speed)"
    );
    for native in [false, true] {
        let mem = cairn_store::MemoryStore::new();
        let node = Node::with_stores(
            config(
                &root.join("mem"),
                "[defaults.passivation]\nidle_after = \"never\"\n",
            )?,
            mem.clone(),
            mem,
        )
        .await?;
        if native {
            node.register_native(
                "bank-account",
                Arc::new(Native::<bank_account::BankAccount>::default()),
            )
            .await?;
        } else {
            node.deploy("bank-account", wasm.to_vec()).await?;
        }
        let label = if native {
            "native, memory journal"
        } else {
            "wasm, memory journal"
        };
        throughput(label, &node, a).await?;
        node.shutdown(Duration::from_secs(10)).await;
    }

    Ok(())
}

async fn recovery_phase(a: &Args, root: &std::path::Path, wasm: &[u8]) -> Result<()> {
    println!("\n== Recovery of one entity with {} events", a.history);
    for (journal, native) in [
        ("sqlite", false),
        ("sqlite", true),
        ("log", false),
        ("log", true),
    ] {
        let kind = if native { "native" } else { "wasm" };
        let dir = root.join(format!("rec-{journal}-{kind}"));
        let toml = format!("[node]\njournal = \"{journal}\"\n[defaults.snapshot]\nevery = 0\n");
        let toml = toml.as_str();
        {
            let node = bank_node(&dir, toml, wasm, native).await?;
            write_history(&node, "long", a.history).await?;
            write_history(&node, "long-snap", a.history).await?;
            // A snapshot 1,000 events before the end, as the snapshot policy would leave.
            let state = cairn_guest::codec::encode(&bank_account::State {
                balance: (a.history - 1000) as i64,
                transactions: a.history - 1000,
            })?;
            let schema = node
                .descriptor("bank-account")
                .map_or(1, |d| d.state_schema);
            node.snapshots()
                .save(
                    &EntityKey::new("bank-account", "long-snap"),
                    Snapshot {
                        seq: a.history - 1000,
                        schema,
                        timestamp_ms: 0,
                        state,
                    },
                    1,
                )
                .await?;
            node.shutdown(Duration::from_secs(10)).await;
        }
        let node = bank_node(&dir, toml, wasm, native).await?;
        recovery(
            &format!("{journal}: recovery, no snapshot ({kind})"),
            &node,
            "long",
        )
        .await?;
        recovery(
            &format!("{journal}: recovery, snapshot ({kind})"),
            &node,
            "long-snap",
        )
        .await?;
        node.shutdown(Duration::from_secs(10)).await;
    }

    Ok(())
}

async fn idle_memory(a: &Args, root: &std::path::Path, wasm: &[u8]) -> Result<()> {
    println!(
        "\n== Memory per live idle entity ({} entities)",
        a.idle_entities
    );
    {
        let dir = root.join("idle");
        let node = bank_node(
            &dir,
            "[defaults.passivation]\nidle_after = \"never\"\n",
            wasm,
            false,
        )
        .await?;
        let get = node.command_from_json("bank-account", r#""GetBalance""#)?;
        // Warm up pools and allocator with a first batch, then measure.
        for i in 0..1000 {
            node.ask(
                "bank-account",
                &format!("warm-{i}"),
                get.clone(),
                AskOptions::default(),
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = rss_bytes();
        let mut tasks = Vec::new();
        for c in 0..64 {
            let node = node.clone();
            let get = get.clone();
            let n = a.idle_entities;
            tasks.push(tokio::spawn(async move {
                let mut i = c;
                while i < n {
                    let _ = node
                        .ask(
                            "bank-account",
                            &format!("idle-{i:08}"),
                            get.clone(),
                            AskOptions::default(),
                        )
                        .await;
                    i += 64;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = rss_bytes();
        let live = node.live_entities("bank-account");
        let state_len = cairn_guest::codec::encode(&bank_account::State::default())?.len();
        let per = (after.saturating_sub(before)) as f64 / a.idle_entities as f64;
        println!(
            "{live} live entities: {:.0} bytes of RSS per entity, of which the state is {state_len} bytes (id `idle-00000000`: 13 bytes)",
            per
        );
        node.shutdown(Duration::from_secs(10)).await;
    }
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = cairn_tests::workspace_root()
        .join("target")
        .join(format!("cairn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Hot swap: 100 entities with 1,000 events each, 32 callers depositing
/// without pause; v2 is deployed in the middle. Prints the time from deploy
/// to active (compile, validation replay, cutover) and command latency
/// during the swap against steady state.
async fn hotswap(root: &std::path::Path, wasm: &[u8]) -> Result<()> {
    const ENTITIES: usize = 100;
    const HISTORY: u64 = 1000;
    const CALLERS: usize = 32;
    println!(
        "\n== Hot swap: deploy bank-account v2 over v1 ({ENTITIES} entities x {HISTORY} events, {CALLERS} callers, SQLite journal)"
    );
    let v2 = cairn_tests::example_bytes("bank-account-v2")?;
    let node = Node::open(config(
        &root.join("hotswap"),
        "[defaults.passivation]\nidle_after = \"never\"\n[defaults.snapshot]\nevery = 0\n",
    )?)
    .await?;
    node.deploy("bank-account", wasm.to_vec()).await?;
    for e in 0..ENTITIES {
        write_history(&node, &format!("swap-{e}"), HISTORY).await?;
    }
    let deposit = node.command_from_json("bank-account", r#"{"Deposit":{"amount":1}}"#)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let origin = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let (node, deposit, stop) = (node.clone(), deposit.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // (start, latency µs, ok) of every command.
            let mut out: Vec<(Duration, u32, bool)> = Vec::new();
            let mut e = c;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("swap-{}", e % ENTITIES);
                e += CALLERS;
                let start = origin.elapsed();
                let t = Instant::now();
                let ok = node
                    .ask("bank-account", &id, deposit.clone(), AskOptions::default())
                    .await
                    .is_ok();
                out.push((start, t.elapsed().as_micros() as u32, ok));
            }
            out
        }));
    }
    // Warm up (every entity recovers its 1,000 events), then steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let swap_start = origin.elapsed();
    let t = Instant::now();
    let r = node
        .deploy_checked("bank-account", v2, false)
        .await
        .context("deploying v2")?;
    let took = t.elapsed();
    let swap_end = origin.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let failed = all.iter().filter(|x| !x.2).count();
    let window = |from: Duration, to: Duration| {
        let mut v: Vec<u32> = all
            .iter()
            .filter(|x| x.2 && x.0 >= from && x.0 < to)
            .map(|x| x.1)
            .collect();
        v.sort_unstable();
        v
    };
    let steady = window(Duration::from_secs(2), swap_start);
    let during = window(swap_start, swap_end + Duration::from_millis(500));
    println!(
        "deploy to active             {:>8.1} ms   ({})",
        took.as_secs_f64() * 1e3,
        r.report.summary()
    );
    for (label, v) in [
        ("steady state", &steady),
        ("during the swap (+500 ms)", &during),
    ] {
        println!(
            "{label:<28} p50 {:>6} µs   p99 {:>6} µs   ({} commands)",
            pct(v, 0.5),
            pct(v, 0.99),
            v.len()
        );
    }
    println!(
        "p99 during / steady: {:.2}   failed commands: {failed} of {}",
        pct(&during, 0.99) as f64 / pct(&steady, 0.99).max(1) as f64,
        all.len()
    );
    node.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// Deploy validation on a big type (not in the default run: it writes
/// `--deploy-entities` x `--deploy-events` events, 10 million by default,
/// about 1 GB, to the log journal): every entity has deposits, every tenth
/// a withdrawal too, and nine in ten a snapshot at its last event. Prints
/// the time of a deploy check of v2 (the first one also scans the whole
/// journal for exemplars), of a second check (the scan finds nothing new),
/// of a refused deploy of the broken version, and the node's RSS.
async fn deploy_history(a: &Args, root: &std::path::Path, wasm: &[u8]) -> Result<()> {
    let (entities, per) = (a.deploy_entities, a.deploy_events.max(2));
    println!(
        "\n== Deploy validation: {entities} entities x {per} events ({} events), log journal, deploy_sample 100",
        entities as u64 * per
    );
    let node = Node::open(config(
        &root.join("deploy-history"),
        "[defaults.passivation]\nidle_after = \"never\"\n",
    )?)
    .await?;
    node.deploy("bank-account", wasm.to_vec()).await?;
    let schema = node
        .descriptor("bank-account")
        .map_or(1, |d| d.state_schema);
    let deposited = cairn_guest::codec::encode(&bank_account::Event::Deposited { amount: 2 })?;
    let withdrawn = cairn_guest::codec::encode(&bank_account::Event::Withdrawn { amount: 1 })?;
    let t = Instant::now();
    let mut pending = Vec::new();
    for e in 0..entities {
        let key = EntityKey::new("bank-account", format!("acct-{e:06}"));
        let withdraws = e % 10 == 0;
        let events = (1..=per)
            .map(|seq| EventRecord {
                seq,
                timestamp_ms: 0,
                version: "1.0.0".into(),
                payload: if withdraws && seq == per {
                    withdrawn.clone()
                } else {
                    deposited.clone()
                },
            })
            .collect();
        let journal = node.journal().clone();
        let snapshots = node.snapshots().clone();
        pending.push(tokio::spawn(async move {
            journal
                .append(Write {
                    key: key.clone(),
                    events,
                    ..Write::default()
                })
                .await?;
            if e % 10 != 9 {
                let balance = 2 * per as i64 - if withdraws { 3 } else { 0 };
                let state = cairn_guest::codec::encode(&bank_account::State {
                    balance,
                    transactions: per,
                })?;
                let snapshot = Snapshot {
                    seq: per,
                    schema,
                    timestamp_ms: 0,
                    state,
                };
                snapshots.save(&key, snapshot, 1).await?;
            }
            anyhow::Ok(())
        }));
        if pending.len() == 256 {
            for p in pending.drain(..) {
                p.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }
    println!(
        "history written                {:>8.1} s",
        t.elapsed().as_secs_f64()
    );
    let v2 = cairn_tests::example_bytes("bank-account-v2")?;
    for label in ["check v2 (first scan)", "check v2 (nothing new)"] {
        let t = Instant::now();
        let r = node
            .deploy_checked("bank-account", v2.clone(), true)
            .await?;
        println!(
            "{label:<30} {:>8.1} ms   ({})",
            t.elapsed().as_secs_f64() * 1e3,
            r.report.summary()
        );
    }
    let broken = cairn_tests::example_bytes("bank-account-broken")?;
    let t = Instant::now();
    let refused = node.deploy_checked("bank-account", broken, true).await;
    let summary = match refused {
        Err(cairn_host::deploy::DeployError::Refused(r)) => r.summary(),
        other => anyhow::bail!("the broken version was not refused: {other:?}"),
    };
    println!(
        "{:<30} {:>8.1} ms   ({summary})",
        "check broken (refused)",
        t.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "node RSS                       {:>8.1} MiB",
        rss_bytes() as f64 / (1 << 20) as f64
    );
    node.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// Percentiles of per-call times in ns.
fn ns_summary(mut ns: Vec<u64>) -> String {
    ns.sort_unstable();
    let p = |q: f64| ns[((ns.len() as f64 - 1.0) * q).round() as usize] as f64 / 1e3;
    format!(
        "p50 {:>8.1} µs   p99 {:>8.1} µs   ({} calls)",
        p(0.5),
        p(0.99),
        ns.len()
    )
}

/// The Python bank account (`examples/python/bank-account`, built with
/// `guest-sdk/python/build.py`), log journal, one process.
async fn python(root: &std::path::Path) -> Result<()> {
    use cairn_host::runtime::{GuestLimits, WasmEngine};

    const TY: &str = "py-bank";
    const HISTORY: u64 = 10_000;
    const LIVE: usize = 10_000;
    let path = cairn_tests::python_example_wasm("bank-account")?;
    let wasm = std::fs::read(&path)?;
    println!(
        "\n== Python bank account ({:.1} MB component), log journal",
        wasm.len() as f64 / 1e6
    );
    let dir = root.join("python");
    let toml = "[node]\njournal = \"log\"\n[defaults.passivation]\nidle_after = \"never\"\n[defaults.snapshot]\nevery = 0\n";

    // Deploy -> active: the first compile, then the same bytes (cached code)
    // to a second type, then a restart that restores both from the cache.
    let node = Node::open(config(&dir, toml)?).await?;
    let t = Instant::now();
    node.deploy(TY, wasm.clone()).await?;
    let first = t.elapsed();
    let t = Instant::now();
    node.deploy("py-bank-b", wasm.clone()).await?;
    let cached = t.elapsed();
    println!(
        "deploy -> active: first compile {:.2} s; same component, code cached {:.0} ms",
        first.as_secs_f64(),
        cached.as_secs_f64() * 1e3
    );

    // decide and fold per call, on a behavior loaded from the cache.
    {
        let engine = WasmEngine::with_code_cache(&dir.join("compiled"))?;
        let t = Instant::now();
        let b = engine.load(&wasm, GuestLimits::default())?;
        println!(
            "load from the cache ({}): {:.0} ms (with describe)",
            b.code_source().as_str(),
            t.elapsed().as_secs_f64() * 1e3
        );
        let times = languages::time_calls(&b)?;
        println!(
            "decide Deposit (event + fold inside): {}",
            ns_summary(times.decide_deposit)
        );
        println!(
            "decide GetBalance (reply only):        {}",
            ns_summary(times.decide_get)
        );
        println!(
            "fold of 1 event:                       {}",
            ns_summary(times.fold_one)
        );
        println!(
            "fold of 4,096 events (one call), per event: {}",
            ns_summary(times.fold_per_event)
        );
        println!(
            "largest linear memory of an instance: {:.1} MiB (default cap {} MiB)",
            b.peak_memory() as f64 / (1 << 20) as f64,
            GuestLimits::default().memory_limit >> 20
        );
    }

    // Durable deposits through ask, in-process.
    let args = |callers: usize, commands: usize, entities: usize| Args {
        phase: None,
        passthrough: Vec::new(),
        entities,
        callers,
        commands,
        history: 0,
        idle_entities: 0,
        deploy_entities: 0,
        deploy_events: 0,
    };
    throughput_of("python, 16 callers", &node, TY, &args(16, 20_000, 1_000)).await?;
    throughput_of("python, 1 caller", &node, TY, &args(1, 5_000, 1_000)).await?;

    // Recovery of a 10,000-event entity, with and without a snapshot.
    write_history_of(&node, TY, "long", HISTORY).await?;
    write_history_of(&node, TY, "long-snap", HISTORY).await?;
    let state = cairn_guest::codec::encode(&bank_account::State {
        balance: (HISTORY - 100) as i64,
        transactions: HISTORY - 100,
    })?;
    let schema = node.descriptor(TY).map_or(1, |d| d.state_schema);
    node.snapshots()
        .save(
            &EntityKey::new(TY, "long-snap"),
            Snapshot {
                seq: HISTORY - 100,
                schema,
                timestamp_ms: 0,
                state,
            },
            1,
        )
        .await?;
    node.shutdown(Duration::from_secs(10)).await;
    let t = Instant::now();
    let node = Node::open(config(&dir, toml)?).await?;
    println!(
        "node open with 2 Python types deployed (code from the cache): {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    recovery_of("python: recovery, no snapshot", &node, TY, "long").await?;
    recovery_of(
        "python: recovery, snapshot at 9,900",
        &node,
        TY,
        "long-snap",
    )
    .await?;

    // RSS of live entities.
    let get = node.command_from_json(TY, r#""GetBalance""#)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();
    let mut marks = Vec::new();
    for chunk in 0..LIVE / 1000 {
        let mut tasks = Vec::new();
        for c in 0..16 {
            let node = node.clone();
            let get = get.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = c;
                while i < 1000 {
                    let _ = node
                        .ask(
                            TY,
                            &format!("live-{:08}", chunk * 1000 + i),
                            get.clone(),
                            AskOptions::default(),
                        )
                        .await;
                    i += 16;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        marks.push(rss_bytes());
    }
    let live = node.live_entities(TY);
    let after = *marks.last().unwrap_or(&before);
    println!(
        "{live} live Python entities: RSS {:.0} MiB (before them {:.0} MiB): {:.0} KiB per 1,000 entities; first 1,000: {:.0} KiB",
        after as f64 / (1 << 20) as f64,
        before as f64 / (1 << 20) as f64,
        (after.saturating_sub(before)) as f64 / 1024.0 / (LIVE / 1000) as f64,
        marks
            .first()
            .map_or(0.0, |m| m.saturating_sub(before) as f64 / 1024.0)
    );
    node.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
