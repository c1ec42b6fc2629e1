//! `cairn-bench --phase languages`: the bank account in Rust, Python and
//! JavaScript side by side, in one run on one machine (issue 29).
//!
//! For each language, in this order:
//! 1. In-process (`Node` in this process, log journal, snapshots and
//!    passivation off): deploy → active with the first compile, durable
//!    deposits from 16 callers over 1,000 entities and from 1 caller (timed
//!    runs), `decide` and `fold` per call on a behavior loaded from the
//!    node's compiled-code cache, then a node reopen (code from the cache)
//!    and the recovery of a 10,000-event entity without and with a
//!    snapshot (at 9,900).
//! 2. Over QUIC, against a `cairn node` process (the `cairn` binary next
//!    to this one, or `CAIRN_BIN`; log journal, default settings) on a
//!    fresh data directory: deploy → active with the first compile, the
//!    same deposit runs through one client connection (16 streams, then 1),
//!    the node process's RSS before and after 1,000 new live entities (two
//!    steps of 1,000), then SIGTERM and a restart timed from the spawn to
//!    the first answered command (compiled code from the cache).
//!
//! `CAIRN_BENCH_LANGUAGES` (e.g. `rust,python`) limits the run to some of
//! the languages. `CAIRN_BENCH_LANGUAGES_PART=calls` runs only the `decide`
//! and `fold` calls (no node, no deposits, no restart), to compare builds of
//! a guest SDK in alternating runs: `CAIRN_BENCH_WASM_RUST`,
//! `CAIRN_BENCH_WASM_PYTHON` and `CAIRN_BENCH_WASM_JAVASCRIPT` name a
//! component to use instead of building the example, and
//! `CAIRN_BENCH_CODE_CACHE` a directory that keeps the compiled code across
//! runs (otherwise each run compiles afresh). The machine's load average is printed at the start, before each
//! language and at the end. Nothing here asserts a time.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_client::Client;
use cairn_host::api::Payload;
use cairn_host::node::{AskOptions, Node};
use cairn_store::{EntityKey, Snapshot};
use cairn_tests::NodeProc;

use super::{config, recovery_of, write_history_of};

/// The entity type every language's bank account is deployed as.
const TY: &str = "bank-account";
/// Entities the deposit runs spread over.
const ENTITIES: usize = 1_000;
/// Concurrent callers (in-process) or streams (QUIC) of the loaded runs.
const CALLERS: usize = 16;
/// Length of a loaded run.
const MANY_FOR: Duration = Duration::from_secs(8);
/// Length of a one-caller run.
const ONE_FOR: Duration = Duration::from_secs(5);
/// Events of the recovered entity.
const HISTORY: u64 = 10_000;
/// Where the snapshot of the second recovered entity is.
const SNAPSHOT_AT: u64 = 9_900;

/// Throughput and latency of one timed run.
#[derive(Default, Clone, Copy)]
struct Load {
    rate: f64,
    p50_us: u32,
    p99_us: u32,
    done: usize,
    failed: usize,
}

impl Load {
    fn cell(&self) -> String {
        format!(
            "{:.0}/s, p50 {}, p99 {}",
            self.rate,
            us_text(self.p50_us as f64),
            us_text(self.p99_us as f64)
        )
    }
}

/// p50 and p99 of per-call times, in µs.
#[derive(Default, Clone, Copy)]
struct Calls {
    p50: f64,
    p99: f64,
}

impl Calls {
    fn of(mut ns: Vec<u64>) -> Calls {
        ns.sort_unstable();
        if ns.is_empty() {
            return Calls::default();
        }
        let p = |q: f64| ns[((ns.len() as f64 - 1.0) * q).round() as usize] as f64 / 1e3;
        Calls {
            p50: p(0.5),
            p99: p(0.99),
        }
    }

    fn cell(&self) -> String {
        format!("p50 {}, p99 {}", us_text(self.p50), us_text(self.p99))
    }
}

/// Everything measured for one language.
#[derive(Default)]
struct Figures {
    size_mb: f64,
    compile_in_process: Duration,
    compile_quic: Duration,
    reopen_in_process: Duration,
    restart_quic: Duration,
    restart_recompiled: bool,
    decide_get: Calls,
    decide_deposit: Calls,
    fold_one: Calls,
    fold_per_event_call: Calls,
    recovery_full: Duration,
    recovery_snapshot: Duration,
    in_process_many: Load,
    in_process_one: Load,
    quic_many: Load,
    quic_one: Load,
    rss_base: u64,
    rss_first: u64,
    rss_second: u64,
}

fn us_text(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

fn secs_text(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.0} ms", s * 1e3)
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The resident set of a process (`VmRSS` of `/proc/PID/status`), bytes.
fn vm_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS line")?;
    Ok(kb * 1024)
}

/// Runs `call(caller, i)` from `callers` tasks, each one call at a time,
/// until `duration` has passed; the rate counts the calls that succeeded
/// over the time until the last one finished.
async fn timed<F, Fut>(callers: usize, duration: Duration, call: F) -> Result<Load>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..callers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0usize;
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                if call(c, i).await {
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    failed += 1;
                }
                i += 1;
            }
            (lat, failed)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await?;
        lat.extend(l);
        failed += f;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok(Load {
        rate: lat.len() as f64 / secs,
        p50_us: super::pct(&lat, 0.5),
        p99_us: super::pct(&lat, 0.99),
        done: lat.len(),
        failed,
    })
}

/// Calls `call(i)` for every `i < n` from `callers` tasks (untimed).
async fn touch<F, Fut>(callers: usize, n: usize, call: F) -> Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let call = Arc::new(call);
    let mut tasks = Vec::new();
    for c in 0..callers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0usize;
            let mut i = c;
            while i < n {
                if !call(i).await {
                    failed += 1;
                }
                i += callers;
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await?;
    }
    if failed > 0 {
        bail!("{failed} of {n} commands failed");
    }
    Ok(())
}

/// The phase: every language, then the table.
pub(crate) async fn run(root: &Path) -> Result<()> {
    let start_load = loadavg();
    println!("\n== Three languages side by side: the bank account in Rust, Python and JavaScript");
    println!(
        "load average at the start: {start_load}; {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let chosen = std::env::var("CAIRN_BENCH_LANGUAGES")
        .unwrap_or_else(|_| "rust,python,javascript".into())
        .to_lowercase();
    let wanted = |name: &str| chosen.split(',').any(|c| c.trim() == name.to_lowercase());
    let calls_only = match std::env::var("CAIRN_BENCH_LANGUAGES_PART").as_deref() {
        Err(_) | Ok("all") => false,
        Ok("calls") => true,
        Ok(other) => bail!("CAIRN_BENCH_LANGUAGES_PART is `all` or `calls`, not `{other}`"),
    };
    if !calls_only {
        let cairn = cairn_tests::cairn_bin()?;
        println!("node binary: {}", cairn.display());
    }
    // A component named in CAIRN_BENCH_WASM_<LANGUAGE>, or the example built.
    let component = |name: &str, build: fn(&str) -> Result<PathBuf>| -> Result<PathBuf> {
        match std::env::var_os(format!("CAIRN_BENCH_WASM_{}", name.to_uppercase())) {
            Some(path) => Ok(PathBuf::from(path)),
            None => build("bank-account"),
        }
    };
    let mut langs: Vec<(&str, PathBuf)> = Vec::new();
    if wanted("Rust") {
        langs.push(("Rust", component("Rust", cairn_tests::example_wasm)?));
    }
    if wanted("Python") {
        langs.push((
            "Python",
            component("Python", cairn_tests::python_example_wasm)?,
        ));
    }
    if wanted("JavaScript") {
        langs.push((
            "JavaScript",
            component("JavaScript", cairn_tests::js_example_wasm)?,
        ));
    }
    let mut all = Vec::new();
    for (name, path) in &langs {
        let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        println!(
            "\n-- {name}: {} ({:.1} MB); load average {}",
            path.display(),
            wasm.len() as f64 / 1e6,
            loadavg()
        );
        let mut f = Figures {
            size_mb: wasm.len() as f64 / 1e6,
            ..Figures::default()
        };
        let dir = root.join(format!("lang-{}", name.to_lowercase()));
        if calls_only {
            calls(&code_cache(&dir.join("compiled")), &wasm, &mut f)
                .with_context(|| format!("{name}, calls"))?;
            all.push((*name, f));
            continue;
        }
        in_process(&dir.join("in-process"), &wasm, &mut f)
            .await
            .with_context(|| format!("{name}, in-process"))?;
        over_quic(&dir.join("node"), &wasm, &mut f)
            .await
            .with_context(|| format!("{name}, over QUIC"))?;
        let _ = std::fs::remove_dir_all(&dir);
        all.push((*name, f));
    }
    let end_load = loadavg();
    if calls_only {
        print_calls_table(&all);
    } else {
        print_table(&all);
    }
    let of = |name: &str| all.iter().find(|(n, _)| *n == name).map(|(_, f)| f);
    if let (Some(rust), Some(py)) = (of("Rust"), of("Python")) {
        println!(
            "\nRust reply-only decide p50 / Python reply-only decide p50: {:.1} / {:.1} µs = {:.1}% \
             (the per-call cost of the wasm engine and the host, an upper bound of its share; \
             the rest, {:.1} µs, is the Python guest: interpreter, SDK and codec)",
            rust.decide_get.p50,
            py.decide_get.p50,
            100.0 * rust.decide_get.p50 / py.decide_get.p50.max(f64::MIN_POSITIVE),
            py.decide_get.p50 - rust.decide_get.p50
        );
    }
    println!("\nload average at the start: {start_load}; at the end: {end_load}");
    Ok(())
}

async fn in_process(dir: &Path, wasm: &[u8], f: &mut Figures) -> Result<()> {
    let toml = "[node]\njournal = \"log\"\n[defaults.passivation]\nidle_after = \"never\"\n[defaults.snapshot]\nevery = 0\n";
    let node = Node::open(config(dir, toml)?).await?;
    let t = Instant::now();
    node.deploy(TY, wasm.to_vec()).await?;
    f.compile_in_process = t.elapsed();
    println!(
        "in-process deploy -> active, first compile   {}",
        secs_text(f.compile_in_process)
    );

    // Durable deposits: every entity touched once first (instances made,
    // entities started), then the timed runs.
    let get = node.command_from_json(TY, r#""GetBalance""#)?;
    let deposit = node.command_from_json(TY, r#"{"Deposit":{"amount":1}}"#)?;
    {
        let (node, get) = (node.clone(), get.clone());
        touch(CALLERS, ENTITIES, move |i| {
            let (node, get) = (node.clone(), get.clone());
            async move {
                node.ask(TY, &format!("acct-{i}"), get, AskOptions::default())
                    .await
                    .is_ok()
            }
        })
        .await?;
    }
    for (callers, duration) in [(CALLERS, MANY_FOR), (1, ONE_FOR)] {
        let (node2, deposit) = (node.clone(), deposit.clone());
        let load = timed(callers, duration, move |c, i| {
            let (node, deposit) = (node2.clone(), deposit.clone());
            let id = format!("acct-{}", (c + i * callers) % ENTITIES);
            async move {
                node.ask(TY, &id, deposit, AskOptions::default())
                    .await
                    .is_ok()
            }
        })
        .await?;
        println!(
            "in-process durable deposits, {callers:>2} caller(s)  {}   ({} commands, {} failed)",
            load.cell(),
            load.done,
            load.failed
        );
        if callers == 1 {
            f.in_process_one = load;
        } else {
            f.in_process_many = load;
        }
    }

    // decide and fold per call, on a behavior loaded from the node's cache.
    calls(&code_cache(&dir.join("compiled")), wasm, f)?;

    // Recovery of a 10,000-event entity, without and with a snapshot.
    write_history_of(&node, TY, "long", HISTORY).await?;
    write_history_of(&node, TY, "long-snap", HISTORY).await?;
    let state = cairn_guest::codec::encode(&bank_account::State {
        balance: SNAPSHOT_AT as i64,
        transactions: SNAPSHOT_AT,
    })?;
    let schema = node.descriptor(TY).map_or(1, |d| d.state_schema);
    node.snapshots()
        .save(
            &EntityKey::new(TY, "long-snap"),
            Snapshot {
                seq: SNAPSHOT_AT,
                schema,
                timestamp_ms: 0,
                state,
            },
            1,
        )
        .await?;
    node.shutdown(Duration::from_secs(10)).await;
    let t = Instant::now();
    let node = Node::open(config(dir, toml)?).await?;
    f.reopen_in_process = t.elapsed();
    println!(
        "in-process node open, code from the cache    {}",
        secs_text(f.reopen_in_process)
    );
    f.recovery_full = recovery_of("recovery, no snapshot", &node, TY, "long").await?;
    f.recovery_snapshot =
        recovery_of("recovery, snapshot at 9,900", &node, TY, "long-snap").await?;
    node.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// The compiled-code cache of a run: `CAIRN_BENCH_CODE_CACHE` when set (kept
/// across runs), else `fresh`.
fn code_cache(fresh: &Path) -> PathBuf {
    std::env::var_os("CAIRN_BENCH_CODE_CACHE").map_or_else(|| fresh.to_path_buf(), PathBuf::from)
}

/// The times of direct calls on a behavior, in ns per call: `decide` (a
/// deposit, then a `GetBalance`, 3,000 times each; the first 500 not
/// counted) and `fold` (one event, 2,000 times, the first 200 not counted;
/// 4,096 events in one call, 10 times, per event).
pub(super) struct CallTimes {
    pub(super) decide_deposit: Vec<u64>,
    pub(super) decide_get: Vec<u64>,
    pub(super) fold_one: Vec<u64>,
    pub(super) fold_per_event: Vec<u64>,
}

/// Times the calls of [`CallTimes`] on the bank account `b` (any language).
pub(super) fn time_calls(b: &dyn cairn_host::behavior::Behavior) -> Result<CallTimes> {
    use cairn_host::behavior::CommandContext;

    let mut state = b.initial_state()?;
    let deposit = b
        .command_from_json(r#"{"Deposit":{"amount":1}}"#)?
        .map_err(anyhow::Error::msg)?;
    let get = b
        .command_from_json(r#""GetBalance""#)?
        .map_err(anyhow::Error::msg)?;
    let (mut decide_deposit, mut decide_get) = (Vec::new(), Vec::new());
    for i in 0..3000u64 {
        let ctx = CommandContext {
            entity_id: "bench",
            next_seq: i + 1,
            timestamp_ms: 1,
        };
        let t = Instant::now();
        let d = b.decide(&ctx, &state, &deposit)?;
        let el = t.elapsed().as_nanos() as u64;
        let d = d.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        state = d.state.unwrap_or(state);
        let t = Instant::now();
        let r = b.decide(&ctx, &state, &get)?;
        let el_get = t.elapsed().as_nanos() as u64;
        r.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if i >= 500 {
            decide_deposit.push(el);
            decide_get.push(el_get);
        }
    }
    let event = cairn_guest::codec::encode(&bank_account::Event::Deposited { amount: 1 })?;
    let initial = b.initial_state()?;
    let mut one = cairn_store::PackedEvents::default();
    one.push(1, &event)?;
    let mut fold_one = Vec::new();
    for i in 0..2000 {
        let t = Instant::now();
        let r = b.fold(&initial, &one.packed)?;
        let el = t.elapsed().as_nanos() as u64;
        r.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if i >= 200 {
            fold_one.push(el);
        }
    }
    let mut many = cairn_store::PackedEvents::default();
    for s in 1..=4096 {
        many.push(s, &event)?;
    }
    let mut fold_per_event = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let r = b.fold(&initial, &many.packed)?;
        fold_per_event.push(t.elapsed().as_nanos() as u64 / 4096);
        r.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    Ok(CallTimes {
        decide_deposit,
        decide_get,
        fold_one,
        fold_per_event,
    })
}

/// [`time_calls`] on a behavior loaded through a compiled-code cache in
/// `cache`, into `f`.
fn calls(cache: &Path, wasm: &[u8], f: &mut Figures) -> Result<()> {
    use cairn_host::runtime::{GuestLimits, WasmEngine};

    let engine = WasmEngine::with_code_cache(cache)?;
    let b = engine.load(wasm, GuestLimits::default())?;
    let t = time_calls(&b)?;
    f.decide_deposit = Calls::of(t.decide_deposit);
    f.decide_get = Calls::of(t.decide_get);
    f.fold_one = Calls::of(t.fold_one);
    f.fold_per_event_call = Calls::of(t.fold_per_event);
    println!(
        "decide GetBalance (reply only)               {}",
        f.decide_get.cell()
    );
    println!(
        "decide Deposit (event encoded and folded)    {}",
        f.decide_deposit.cell()
    );
    println!(
        "fold of 1 event                              {}",
        f.fold_one.cell()
    );
    println!(
        "fold of 4,096 events in one call, per event  {}",
        f.fold_per_event_call.cell()
    );
    Ok(())
}

/// Connects as soon as the node listens, with short attempts (a QUIC
/// handshake started before the node listened would finish only at the
/// client's retransmission, about 1 s later: see `tests/compiled_cache.rs`).
async fn connect(node: &mut NodeProc, wait: Duration) -> Result<Client> {
    let deadline = Instant::now() + wait;
    let mut attempt = Duration::from_millis(100);
    loop {
        let files = cairn_client::tls::ClientFiles::in_dir(&node.certs());
        if files.ca.exists() {
            match Client::connect_within(node.addr, &files, "localhost", attempt).await {
                Ok(c) => return Ok(c),
                Err(_) => attempt = (attempt * 3 / 2).min(Duration::from_secs(2)),
            }
        }
        if let Some(status) = node.exited() {
            bail!("the node exited with {status}\n{}", node_log(node));
        }
        if Instant::now() > deadline {
            bail!(
                "the node did not listen within {wait:?}\n{}",
                node_log(node)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn node_log(node: &NodeProc) -> String {
    std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default()
}

async fn over_quic(dir: &Path, wasm: &[u8], f: &mut Figures) -> Result<()> {
    const WAIT: Duration = Duration::from_secs(600);
    let mut node = NodeProc::start(dir, &["--journal", "log"])?;
    let client = connect(&mut node, WAIT).await?;
    let t = Instant::now();
    client.deploy(TY, wasm.to_vec()).await?;
    f.compile_quic = t.elapsed();
    println!(
        "node deploy -> active, first compile (QUIC)  {}",
        secs_text(f.compile_quic)
    );
    let get = client.encode_command(TY, r#""GetBalance""#).await?;
    let deposit = client
        .encode_command(TY, r#"{"Deposit":{"amount":1}}"#)
        .await?;
    let ask = |client: Client, id: String, command: Vec<u8>| async move {
        client
            .ask(TY, &id, Payload::Bytes(command), None, None)
            .await
            .is_ok()
    };
    {
        let (client, get) = (client.clone(), get.clone());
        touch(CALLERS, ENTITIES, move |i| {
            ask(client.clone(), format!("acct-{i}"), get.clone())
        })
        .await?;
    }
    for (callers, duration) in [(CALLERS, MANY_FOR), (1, ONE_FOR)] {
        let (client, deposit) = (client.clone(), deposit.clone());
        let load = timed(callers, duration, move |c, i| {
            ask(
                client.clone(),
                format!("acct-{}", (c + i * callers) % ENTITIES),
                deposit.clone(),
            )
        })
        .await?;
        println!(
            "QUIC durable deposits, {callers:>2} stream(s)        {}   ({} commands, {} failed)",
            load.cell(),
            load.done,
            load.failed
        );
        if callers == 1 {
            f.quic_one = load;
        } else {
            f.quic_many = load;
        }
    }

    // The node's RSS before and after two steps of 1,000 new live entities.
    let pid = node.child.id();
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    settle().await;
    f.rss_base = vm_rss(pid)?;
    let mut marks = Vec::new();
    for step in 0..2 {
        let (client, get) = (client.clone(), get.clone());
        touch(CALLERS, 1000, move |i| {
            ask(
                client.clone(),
                format!("live-{}", step * 1000 + i),
                get.clone(),
            )
        })
        .await?;
        settle().await;
        marks.push(vm_rss(pid)?);
    }
    f.rss_first = marks[0];
    f.rss_second = marks[1];
    println!(
        "node RSS {:.1} MiB; +1,000 live entities {:.1} MiB; +1,000 more {:.1} MiB",
        mib(f.rss_base),
        mib(f.rss_first),
        mib(f.rss_second)
    );
    client.close().await;

    // Restart: spawn to the first answered command, code from the cache.
    let status = node.terminate()?;
    anyhow::ensure!(status.success(), "the node exited with {status} on SIGTERM");
    let log_before = node_log(&node).len();
    let t = Instant::now();
    node.restart()?;
    let client = connect(&mut node, WAIT).await?;
    client
        .ask(TY, "acct-0", Payload::Bytes(get), None, None)
        .await?;
    f.restart_quic = t.elapsed();
    f.restart_recompiled = node_log(&node)
        .get(log_before..)
        .is_some_and(|l| l.contains("component compiled"));
    println!(
        "node restart -> first reply (acct-0)         {}{}",
        secs_text(f.restart_quic),
        if f.restart_recompiled {
            " (the node compiled the component again!)"
        } else {
            ""
        }
    );
    client.close().await;
    let _ = node.terminate();
    Ok(())
}

/// `after - before` in KiB, signed (the allocator may return pages).
fn kib_delta(before: u64, after: u64) -> String {
    format!("{:.0} KiB", (after as f64 - before as f64) / 1024.0)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Prints a Markdown table's head: one column per language.
fn print_head(all: &[(&str, Figures)]) {
    let mut head = String::from("\n| |");
    let mut rule = String::from("|---|");
    for (name, _) in all {
        head.push_str(&format!(" {name} |"));
        rule.push_str("---|");
    }
    println!("{head}\n{rule}");
}

/// Prints one row of the table: `label`, then `cell` of each language.
fn print_row(all: &[(&str, Figures)], label: &str, cell: &dyn Fn(&Figures) -> String) {
    let mut line = format!("| {label} |");
    for (_, f) in all {
        line.push_str(&format!(" {} |", cell(f)));
    }
    println!("{line}");
}

/// The rows of the direct calls (`decide`, `fold`).
fn print_call_rows(all: &[(&str, Figures)]) {
    let row = |label: &str, cell: &dyn Fn(&Figures) -> String| print_row(all, label, cell);
    row("`decide` GetBalance (reply only)", &|f| f.decide_get.cell());
    row("`decide` Deposit (event + fold in the guest)", &|f| {
        f.decide_deposit.cell()
    });
    row("`fold` of 1 event (one call)", &|f| f.fold_one.cell());
    row("`fold` per event, 4,096 events in one call", &|f| {
        us_text(f.fold_per_event_call.p50)
    });
}

/// The table of a `CAIRN_BENCH_LANGUAGES_PART=calls` run.
fn print_calls_table(all: &[(&str, Figures)]) {
    print_head(all);
    print_call_rows(all);
}

fn print_table(all: &[(&str, Figures)]) {
    let row = |label: &str, cell: &dyn Fn(&Figures) -> String| print_row(all, label, cell);
    print_head(all);
    row("component", &|f| format!("{:.1} MB", f.size_mb));
    row("deploy → active, first compile, in-process", &|f| {
        secs_text(f.compile_in_process)
    });
    row("deploy → active, first compile, node over QUIC", &|f| {
        secs_text(f.compile_quic)
    });
    row(
        "node restart → first answered command (code cached)",
        &|f| {
            format!(
                "{}{}",
                secs_text(f.restart_quic),
                if f.restart_recompiled {
                    " (recompiled)"
                } else {
                    ""
                }
            )
        },
    );
    row("in-process node open (code cached)", &|f| {
        secs_text(f.reopen_in_process)
    });
    row(
        &format!("durable deposits in-process, {CALLERS} callers"),
        &|f| f.in_process_many.cell(),
    );
    row("durable deposits in-process, 1 caller", &|f| {
        f.in_process_one.cell()
    });
    row(
        &format!("durable deposits over QUIC, {CALLERS} streams"),
        &|f| f.quic_many.cell(),
    );
    row("durable deposits over QUIC, 1 stream", &|f| {
        f.quic_one.cell()
    });
    print_call_rows(all);
    row("recovery of 10,000 events, no snapshot", &|f| {
        format!(
            "{} ({} per event)",
            secs_text(f.recovery_full),
            us_text(f.recovery_full.as_secs_f64() * 1e6 / HISTORY as f64)
        )
    });
    row("recovery, snapshot at 9,900 (100 events)", &|f| {
        secs_text(f.recovery_snapshot)
    });
    row("node RSS after the deposit runs", &|f| {
        format!("{:.1} MiB", mib(f.rss_base))
    });
    row("node RSS per 1,000 live entities: first 1,000 new", &|f| {
        kib_delta(f.rss_base, f.rss_first)
    });
    row("node RSS per 1,000 live entities: next 1,000", &|f| {
        kib_delta(f.rss_first, f.rss_second)
    });
}
