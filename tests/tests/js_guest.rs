//! The JavaScript bank account (`examples/js/bank-account`, built by
//! `guest-sdk/js/build.mjs` with the pinned componentize-js) on a real
//! `cairn node` process, driven with the CLI: the guide's walk-through with
//! every figure the Rust one checks (deposits, the refused withdrawal, the
//! balance replies, the journal as JSON, time travel), recovery after a
//! restart from events and then from a snapshot; a hot swap of a Rust v1
//! history to the JavaScript behavior and back, and of a Python history to
//! it, validated by the replay check; a Rust v1 history upcast by a
//! JavaScript v2, read by the Rust v2, and the rollback to v1 refused; the
//! JavaScript counter's `send` and `schedule` on a node, over a Rust
//! counter's history and back. The same structure as `python_guest.rs`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_client::{Client, Follow};
use cairn_tests::guest::{balance_of, cairn, detail_value, started};
use cairn_tests::{NodeProc, build_js, example_wasm, js_example_wasm, python_example_wasm};

const TYPE: &str = "bank-account";

/// How long a restarted node may take to answer: it compiles the JavaScript
/// component (12 MB, SpiderMonkey) before it listens, tens of seconds in a
/// debug build beside other builds (there is no compiled-code cache yet).
const START_WAIT: Duration = Duration::from_secs(600);

fn ask(node: &NodeProc, id: &str, json: &str) -> Result<String> {
    cairn(node, &["ask", TYPE, id, json])
}

fn deploy(node: &NodeProc, wasm: &std::path::Path) -> Result<(String, Duration)> {
    cairn_tests::guest::deploy(node, TYPE, wasm)
}

fn events(node: &NodeProc, id: &str) -> Result<Vec<(String, String)>> {
    cairn_tests::guest::events(node, TYPE, id)
}

async fn restart(node: &mut NodeProc) -> Result<(Client, Follow, Duration)> {
    cairn_tests::guest::restart(node, START_WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_bank_account_walk_through() -> Result<()> {
    let built = Instant::now();
    let wasm = js_example_wasm(TYPE)?;
    eprintln!(
        "build of the JavaScript bank account (or up-to-date check): {:?}, {} bytes",
        built.elapsed(),
        std::fs::metadata(&wasm)?.len()
    );
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("cairn.toml");
    std::fs::write(&config, "[entities.\"bank-account\".snapshot]\nevery = 5\n")?;
    let mut node = NodeProc::start(
        &tmp.path().join("data"),
        &["--config", config.to_str().context("path")?],
    )?;
    node.client().await?;

    let (out, took) = deploy(&node, &wasm)?;
    eprintln!("deploy of the JavaScript bank account (compile + checks): {took:?}");
    assert!(
        out.starts_with("deployed bank-account #1: bank-account 1.0.0 (state schema 1)"),
        "{out}"
    );

    // Phase 1: transactions.
    let walk = Instant::now();
    for amount in [100, 50] {
        let (ok, out, err) = node.cli(&[
            "tell",
            TYPE,
            "acct-1",
            &format!("{{\"Deposit\":{{\"amount\":{amount}}}}}"),
        ])?;
        assert!(ok && out.contains("queued"), "{out}{err}");
    }
    assert_eq!(
        ask(&node, "acct-1", r#"{"Withdraw":{"amount":30}}"#)?,
        "\"ok\""
    );
    assert_eq!(
        ask(&node, "acct-1", r#"{"Withdraw":{"amount":999}}"#)?,
        "\"insufficient funds (balance: 120)\""
    );
    assert_eq!(ask(&node, "acct-1", r#""GetBalance""#)?, "120");
    // A command the behavior refuses, and one it cannot decode.
    let (ok, _, err) = node.cli(&["ask", TYPE, "acct-1", r#"{"Deposit":{"amount":-5}}"#])?;
    assert!(
        !ok && err.contains("amount must be positive, got -5"),
        "{err}"
    );
    let (ok, _, err) = node.cli(&["ask", TYPE, "acct-1", r#"{"Steal":{"amount":5}}"#])?;
    assert!(
        !ok && err.contains("not a valid bank-account command"),
        "{err}"
    );
    // An i64 that a JS number cannot hold exactly is refused as malformed,
    // not rounded (and does not trap the behavior).
    let (ok, _, err) = node.cli(&[
        "ask",
        TYPE,
        "acct-1",
        r#"{"Deposit":{"amount":9007199254740993}}"#,
    ])?;
    assert!(
        !ok && err.contains("beyond JavaScript's safe integers"),
        "{err}"
    );

    assert_eq!(
        events(&node, "acct-1")?,
        [
            ("#1 v1.0.0", r#"{"Deposited":{"amount":100}}"#),
            ("#2 v1.0.0", r#"{"Deposited":{"amount":50}}"#),
            ("#3 v1.0.0", r#"{"Withdrawn":{"amount":30}}"#),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let state = cairn(&node, &["state", TYPE, "acct-1", "--at-seq", "2"])?;
    assert_eq!(balance_of(&state)?, 150, "{state}");
    let state = cairn(&node, &["state", TYPE, "acct-1"])?;
    let state: serde_json::Value = serde_json::from_str(state.lines().next().unwrap_or(""))?;
    assert_eq!(
        state,
        serde_json::json!({"balance": 120, "transactions": 3})
    );

    // Phase 2: the node restarts on the same data directory and recovers
    // acct-1 from its 3 events.
    let (client, mut follow, took) = restart(&mut node).await?;
    assert_eq!(ask(&node, "acct-1", r#""GetBalance""#)?, "120");
    eprintln!("restart until the JavaScript bank account answered: {took:?} + first ask");
    let detail = started(&mut follow, "acct-1", Duration::from_secs(120)).await?;
    assert_eq!(detail_value(&detail, "replayed"), "3", "{detail}");
    follow.stop();
    client.close().await;

    // Phase 3: a snapshot every 5 events; 7 deposits of 10.
    for _ in 0..7 {
        assert_eq!(
            ask(&node, "acct-2", r#"{"Deposit":{"amount":10}}"#)?,
            "\"ok\""
        );
    }
    assert_eq!(ask(&node, "acct-2", r#""GetBalance""#)?, "70");
    assert_eq!(events(&node, "acct-2")?.len(), 7);
    let (client, mut follow, _) = restart(&mut node).await?;
    assert_eq!(ask(&node, "acct-2", r#""GetBalance""#)?, "70");
    let detail = started(&mut follow, "acct-2", Duration::from_secs(120)).await?;
    assert_eq!(detail_value(&detail, "snapshot"), "5", "{detail}");
    assert_eq!(detail_value(&detail, "replayed"), "2", "{detail}");
    let state = cairn(&node, &["state", TYPE, "acct-2", "--at-seq", "5"])?;
    assert_eq!(balance_of(&state)?, 50, "{state}");
    follow.stop();
    client.close().await;
    eprintln!(
        "walk-through with the JavaScript bank account, two restarts included: {:?}",
        walk.elapsed()
    );
    let status = node.terminate()?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_history_hot_swaps_to_js_and_back() -> Result<()> {
    let rust = example_wasm(TYPE)?;
    let js = js_example_wasm(TYPE)?;
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("data"), &[])?;
    node.client().await?;
    let (out, _) = deploy(&node, &rust)?;
    assert!(out.starts_with("deployed bank-account #1"), "{out}");

    // History written by the Rust v1.
    for cmd in [
        r#"{"Deposit":{"amount":100}}"#,
        r#"{"Deposit":{"amount":50}}"#,
        r#"{"Withdraw":{"amount":30}}"#,
    ] {
        assert_eq!(ask(&node, "acct-1", cmd)?, "\"ok\"");
    }
    for _ in 0..7 {
        assert_eq!(
            ask(&node, "acct-2", r#"{"Deposit":{"amount":10}}"#)?,
            "\"ok\""
        );
    }

    // The JavaScript behavior reads every event the Rust one wrote: the deploy
    // replays both histories from #1 and checks the exemplars.
    let (ok, out, err) = node.cli(&["deploy", TYPE, js.to_str().context("path")?])?;
    assert!(ok, "deploy of the JavaScript bank account failed: {err}");
    assert!(out.starts_with("deployed bank-account #2"), "{out}");
    let (_, types, _) = node.cli(&["types"])?;
    let js_hash = sha256_prefix(&std::fs::read(&js)?);
    assert!(types.contains(&js_hash), "{types}");

    // It serves both entities, on the state the Rust version left.
    assert_eq!(
        ask(&node, "acct-1", r#"{"Withdraw":{"amount":999}}"#)?,
        "\"insufficient funds (balance: 120)\""
    );
    assert_eq!(
        ask(&node, "acct-1", r#"{"Withdraw":{"amount":20}}"#)?,
        "\"ok\""
    );
    assert_eq!(ask(&node, "acct-1", r#""GetBalance""#)?, "100");
    assert_eq!(ask(&node, "acct-2", r#""GetBalance""#)?, "70");
    // A new entity, and time travel through Rust-written events in JavaScript.
    assert_eq!(
        ask(&node, "acct-3", r#"{"Deposit":{"amount":5}}"#)?,
        "\"ok\""
    );
    let state = cairn(&node, &["state", TYPE, "acct-1", "--at-seq", "2"])?;
    assert_eq!(balance_of(&state)?, 150, "{state}");
    assert_eq!(
        events(&node, "acct-1")?
            .into_iter()
            .map(|(_, json)| json)
            .collect::<Vec<_>>(),
        [
            r#"{"Deposited":{"amount":100}}"#,
            r#"{"Deposited":{"amount":50}}"#,
            r#"{"Withdrawn":{"amount":30}}"#,
            r#"{"Withdrawn":{"amount":20}}"#,
        ]
    );

    // And back: the Rust bank account replays the events JavaScript wrote.
    let (ok, out, err) = node.cli(&["deploy", TYPE, rust.to_str().context("path")?])?;
    assert!(
        ok,
        "deploy of the Rust bank account over JavaScript failed: {err}"
    );
    assert!(out.starts_with("deployed bank-account #3"), "{out}");
    assert_eq!(ask(&node, "acct-1", r#""GetBalance""#)?, "100");
    assert_eq!(ask(&node, "acct-3", r#""GetBalance""#)?, "5");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_history_hot_swaps_to_js() -> Result<()> {
    let python = python_example_wasm(TYPE)?;
    let js = js_example_wasm(TYPE)?;
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("data"), &[])?;
    node.client().await?;
    let (out, _) = deploy(&node, &python)?;
    assert!(out.starts_with("deployed bank-account #1"), "{out}");
    for cmd in [
        r#"{"Deposit":{"amount":100}}"#,
        r#"{"Deposit":{"amount":50}}"#,
        r#"{"Withdraw":{"amount":30}}"#,
    ] {
        assert_eq!(ask(&node, "acct-1", cmd)?, "\"ok\"");
    }
    // The JavaScript behavior replays the events the Python one wrote (the
    // deploy's replay check) and goes on from the same state.
    let (out, _) = deploy(&node, &js)?;
    assert!(out.starts_with("deployed bank-account #2"), "{out}");
    assert_eq!(
        ask(&node, "acct-1", r#"{"Withdraw":{"amount":999}}"#)?,
        "\"insufficient funds (balance: 120)\""
    );
    assert_eq!(
        ask(&node, "acct-1", r#"{"Deposit":{"amount":5}}"#)?,
        "\"ok\""
    );
    assert_eq!(ask(&node, "acct-1", r#""GetBalance""#)?, "125");
    let state = cairn(&node, &["state", TYPE, "acct-1", "--at-seq", "3"])?;
    assert_eq!(balance_of(&state)?, 120, "{state}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_output_reaches_the_node_log_with_console_and_is_dropped_without() -> Result<()> {
    let root = cairn_tests::workspace_root();
    let module = root.join("tests/fixtures/js-logging/logging.js");
    let quiet = root.join("target/wasm/js/logging.wasm");
    let loud = root.join("target/wasm/js/logging-console.wasm");
    build_js(&module, &quiet, &["--no-console"])?;
    build_js(&module, &loud, &[])?;
    // By default the engine's stdio is linked: WASI the host grants,
    // nothing else.
    let imports = component_imports(&std::fs::read(&loud)?)?;
    assert!(
        imports.iter().any(|i| i.starts_with("wasi:cli/stdout@")),
        "{imports:?}"
    );
    for import in &imports {
        let base = import.split('@').next().unwrap_or(import);
        assert!(
            cairn_host::runtime::ALLOWED_IMPORTS.contains(&base),
            "{import} is not granted by the host"
        );
    }
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("data"), &[])?;
    node.client().await?;
    let log = || std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default();
    cairn(&node, &["deploy", "quiet", quiet.to_str().context("path")?])?;
    cairn(&node, &["deploy", "loud", loud.to_str().context("path")?])?;
    let say = r#"{"Say":{"text":"hello"}}"#;
    assert_eq!(cairn(&node, &["ask", "quiet", "q1", say])?, "1");
    assert_eq!(cairn(&node, &["ask", "loud", "l1", say])?, "1");
    assert_eq!(cairn(&node, &["ask", "loud", "l1", say])?, "2");
    // The guest's lines, with the command's timestamp as its clock.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(log().contains("said hello at") && log().contains("count 1")) {
        if Instant::now() > deadline {
            bail!("no guest output in the node log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines: Vec<String> = log()
        .lines()
        .filter(|l| l.contains("said hello"))
        .map(str::to_owned)
        .collect();
    // Only the default build's entity (`l1`) wrote to the log.
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.contains("\"l1\"")),
        "{lines:?}"
    );
    assert!(
        !log()
            .lines()
            .any(|l| l.contains("cairn::guest") && l.contains("\"q1\"")),
        "{}",
        log()
    );
    assert!(
        lines.iter().all(|l| !l.contains("said hello at 0")),
        "the clock read 0 in onCommand: {lines:?}"
    );
    // An exception fails the command either way; by default its text is
    // in the node's log and in the caller's error (the node quotes the line
    // above componentize-js's stack), without it the error says only
    // "unreachable".
    let fail = r#"{"Fail":{"message":"bad range 7"}}"#;
    let (ok, _, err) = node.cli(&["ask", "loud", "l2", fail])?;
    assert!(!ok && err.contains("RangeError: bad range 7"), "{err}");
    let (ok, _, err) = node.cli(&["ask", "quiet", "q2", fail])?;
    assert!(
        !ok && err.contains("unreachable") && !err.contains("bad range"),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(log().contains("about to throw") && log().contains("RangeError: bad range 7")) {
        if Instant::now() > deadline {
            bail!("no exception in the node log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cairn(&node, &["ask", "loud", "l2", say])?, "1");
    Ok(())
}

/// The JSON of an entity's events with the version that wrote each.
fn events_with_versions(node: &NodeProc, id: &str) -> Result<Vec<String>> {
    Ok(events(node, id)?
        .into_iter()
        .map(|(seq_version, json)| format!("{seq_version} {json}"))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_v1_history_upcasts_in_js_v2_rust_v2_reads_it_and_v1_is_refused() -> Result<()> {
    let v1 = example_wasm(TYPE)?;
    let v2 = example_wasm("bank-account-v2")?;
    let js_v2 = js_example_wasm("bank-account-v2")?;
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("data"), &[])?;
    node.client().await?;
    let (out, _) = deploy(&node, &v1)?;
    assert!(out.starts_with("deployed bank-account #1"), "{out}");
    assert_eq!(
        ask(&node, "acct-1", r#"{"Deposit":{"amount":150}}"#)?,
        "\"ok\""
    );

    // JavaScript v2 replays the Rust v1 event through its upcast (the deploy
    // check), shows it in the new shape, and writes its own new events.
    let (out, took) = deploy(&node, &js_v2)?;
    eprintln!("deploy of the JavaScript bank account v2: {took:?}");
    assert!(
        out.starts_with("deployed bank-account #2: bank-account 2.0.0"),
        "{out}"
    );
    assert_eq!(
        events_with_versions(&node, "acct-1")?,
        [r#"#1 v1.0.0 {"Credited":{"amount":150,"source":"deposit"}}"#]
    );
    assert_eq!(
        ask(&node, "acct-1", r#"{"Withdraw":{"amount":100}}"#)?,
        "\"ok (fee 1)\""
    );
    assert_eq!(ask(&node, "acct-1", r#""GetBalance""#)?, "49");
    assert_eq!(
        events_with_versions(&node, "acct-1")?,
        [
            r#"#1 v1.0.0 {"Credited":{"amount":150,"source":"deposit"}}"#,
            r#"#2 v2.0.0 {"Withdrawn":{"amount":100,"fee_waived":false}}"#,
            r#"#3 v2.0.0 {"FeeCharged":{"amount":1}}"#,
        ]
    );

    // Rust v2 reads what JavaScript v2 wrote.
    let (out, _) = deploy(&node, &v2)?;
    assert!(
        out.starts_with("deployed bank-account #3: bank-account 2.0.0"),
        "{out}"
    );
    assert_eq!(ask(&node, "acct-1", r#""GetBalance""#)?, "49");
    assert_eq!(
        ask(&node, "acct-1", r#"{"Deposit":{"amount":10}}"#)?,
        "\"ok\""
    );
    assert_eq!(ask(&node, "acct-1", r#""GetBalance""#)?, "59");

    // Rust v1 cannot read `Credited` or `FeeCharged`: the replay check refuses it.
    let (ok, out, err) = node.cli(&["deploy", TYPE, v1.to_str().context("path")?])?;
    assert!(!ok, "a rollback to v1 was accepted: {out}");
    assert!(err.contains("deploy refused"), "{err}");
    assert!(err.contains("unknown variant"), "{err}");
    assert_eq!(ask(&node, "acct-1", r#""GetBalance""#)?, "59");
    Ok(())
}

/// Asks a counter for its value until it is `want` (effects run after the
/// command that asked for them has replied).
fn counter_reaches(node: &NodeProc, id: &str, want: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let got = cairn(node, &["ask", "counter", id, r#""Get""#])?;
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("counter {id} is {got}, not {want}, after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_counter_sends_and_schedules_on_a_rust_counters_history() -> Result<()> {
    let rust = example_wasm("counter")?;
    let js = js_example_wasm("counter")?;
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("data"), &[])?;
    node.client().await?;
    let ask_counter = |id: &str, json: &str| cairn(&node, &["ask", "counter", id, json]);
    let out = cairn(
        &node,
        &["deploy", "counter", rust.to_str().context("path")?],
    )?;
    assert!(out.starts_with("deployed counter #1"), "{out}");
    assert_eq!(ask_counter("c1", r#"{"Increment":{"by":2}}"#)?, "2");
    assert_eq!(ask_counter("c1", r#"{"Batch":{"count":3}}"#)?, "5");

    // The JavaScript counter takes over the history the Rust one wrote.
    let out = cairn(&node, &["deploy", "counter", js.to_str().context("path")?])?;
    assert!(
        out.starts_with("deployed counter #2: counter 1.0.0"),
        "{out}"
    );
    assert_eq!(ask_counter("c1", r#""Get""#)?, "5");
    // A send: c1 replies with its value, then c2 gets Increment { by: 3 }.
    assert_eq!(
        ask_counter("c1", r#"{"Forward":{"entity_id":"c2","by":3}}"#)?,
        "5"
    );
    counter_reaches(&node, "c2", "3", Duration::from_secs(30))?;
    // A schedule: c1 increments itself by 4 after 300 ms.
    let asked = Instant::now();
    assert_eq!(
        ask_counter("c1", r#"{"IncrementLater":{"by":4,"delay_ms":300}}"#)?,
        "5"
    );
    counter_reaches(&node, "c1", "9", Duration::from_secs(30))?;
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "the timer fired early"
    );
    let (ok, _, err) = node.cli(&["ask", "counter", "c1", r#"{"Batch":{"count":0}}"#])?;
    assert!(
        !ok && err.contains("count must be between 1 and 1000"),
        "{err}"
    );

    // And back to Rust, which replays what the JavaScript counter wrote.
    let out = cairn(
        &node,
        &["deploy", "counter", rust.to_str().context("path")?],
    )?;
    assert!(out.starts_with("deployed counter #3"), "{out}");
    assert_eq!(ask_counter("c1", r#""Get""#)?, "9");
    assert_eq!(ask_counter("c2", r#""Get""#)?, "3");
    Ok(())
}

/// The first 16 hex digits of a sha256, as `cairn types` prints them.
fn sha256_prefix(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The top-level imports of a component (nested modules and components
/// are skipped).
fn component_imports(bytes: &[u8]) -> Result<Vec<String>> {
    use wasmparser::{Encoding, Parser, Payload};
    let mut depth = 0usize;
    let mut imports = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != Encoding::Component {
                    bail!("not a component");
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    imports.push(import?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(imports)
}

#[test]
fn the_js_component_imports_only_what_the_host_grants() -> Result<()> {
    let wasm = js_example_wasm(TYPE)?;
    let imports = component_imports(&std::fs::read(&wasm)?)?;
    // The entity types, and the engine's stdio (the default keeps
    // `console` output); every WASI interface one the host grants.
    assert!(
        imports.contains(&"cairn:entity/types@0.1.0".to_owned())
            && imports.iter().any(|i| i.starts_with("wasi:cli/stdout@")),
        "{}: {imports:?}",
        wasm.display()
    );
    for import in imports.iter().filter(|i| i.starts_with("wasi:")) {
        let base = import.split('@').next().unwrap_or(import);
        assert!(
            cairn_host::runtime::ALLOWED_IMPORTS.contains(&base),
            "{import} is not granted by the host"
        );
    }
    // The same reading of a std Rust guest (wasm32-wasip2) finds its WASI imports.
    let rust = component_imports(&std::fs::read(example_wasm(TYPE)?)?)?;
    assert!(rust.iter().any(|i| i.starts_with("wasi:cli/")), "{rust:?}");
    Ok(())
}
