//! The Python bank account (`examples/python/bank-account`, built by
//! `guest-sdk/python/build.py` with the pinned componentize-py) on a real
//! `cairn node` process, driven with the CLI: the guide's walk-through with
//! every figure the Rust one checks (deposits, the refused withdrawal, the
//! balance replies, the journal as JSON, time travel), recovery after a
//! restart from events and then from a snapshot; and a hot swap of a Rust v1
//! history to the Python behavior and back, validated by the replay check.

use std::time::Duration;

use anyhow::{Context, Result};
use cairn_client::{Client, Follow};
use cairn_tests::guest::{balance_of, cairn, detail_value, started};
use cairn_tests::{NodeProc, example_wasm, python_example_wasm};

const TYPE: &str = "bank-account";

/// How long a restarted node may take to answer. It loads the Python
/// component's compiled code from its cache (well under 1 s,
/// `tests/tests/compiled_cache.rs`); the bound stays generous, as without a
/// usable cache it compiles the 19 MB component before it listens: 25 s in
/// a debug build on 2 idle cores, over 60 s beside other builds.
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
async fn python_bank_account_walk_through() -> Result<()> {
    let wasm = python_example_wasm(TYPE)?;
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("cairn.toml");
    std::fs::write(&config, "[entities.\"bank-account\".snapshot]\nevery = 5\n")?;
    let mut node = NodeProc::start(
        &tmp.path().join("data"),
        &["--config", config.to_str().context("path")?],
    )?;
    node.client().await?;

    let (out, took) = deploy(&node, &wasm)?;
    eprintln!("deploy of the Python bank account (compile + checks): {took:?}");
    assert!(
        out.starts_with("deployed bank-account #1: bank-account 1.0.0 (state schema 1)"),
        "{out}"
    );

    // Phase 1: transactions.
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
    eprintln!("restart until the Python bank account answered: {took:?} + first ask");
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
    let status = node.terminate()?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_history_hot_swaps_to_python_and_back() -> Result<()> {
    let rust = example_wasm(TYPE)?;
    let python = python_example_wasm(TYPE)?;
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

    // The Python behavior reads every event the Rust one wrote: the deploy
    // replays both histories from #1 and checks the exemplars.
    let (ok, out, err) = node.cli(&["deploy", TYPE, python.to_str().context("path")?])?;
    assert!(ok, "deploy of the Python bank account failed: {err}");
    assert!(out.starts_with("deployed bank-account #2"), "{out}");
    let (_, types, _) = node.cli(&["types"])?;
    let python_hash = sha256_prefix(&std::fs::read(&python)?);
    assert!(types.contains(&python_hash), "{types}");

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
    // A new entity, and time travel through Rust-written events in Python.
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

    // And back: the Rust bank account replays the events Python wrote.
    let (ok, out, err) = node.cli(&["deploy", TYPE, rust.to_str().context("path")?])?;
    assert!(
        ok,
        "deploy of the Rust bank account over Python failed: {err}"
    );
    assert!(out.starts_with("deployed bank-account #3"), "{out}");
    assert_eq!(ask(&node, "acct-1", r#""GetBalance""#)?, "100");
    assert_eq!(ask(&node, "acct-3", r#""GetBalance""#)?, "5");
    Ok(())
}

/// The first 16 hex digits of a sha256, as `cairn types` prints them.
fn sha256_prefix(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A component whose imports are `names`, each an instance with no exports.
fn component_importing(names: &[&str]) -> Vec<u8> {
    let mut imports = vec![names.len() as u8];
    for name in names {
        imports.extend_from_slice(&[0x00, name.len() as u8]);
        imports.extend_from_slice(name.as_bytes());
        imports.extend_from_slice(&[0x05, 0x00]); // an instance of type 0
    }
    let mut c = b"\0asm\x0d\0\x01\0".to_vec();
    c.extend_from_slice(&[0x07, 0x03, 0x01, 0x42, 0x00]); // type 0: instance {}
    c.push(0x0a);
    c.push(imports.len() as u8);
    c.extend_from_slice(&imports);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_the_host_does_not_grant_is_refused_by_name() -> Result<()> {
    use cairn_host::deploy::DeployError;
    use cairn_host::node::RegisterError;
    use cairn_host::runtime::LoadError;

    let dir = tempfile::tempdir()?;
    let node = cairn_tests::start_node(dir.path(), "", &[]).await?;
    // What componentize-py imports without --stub-wasi (sockets, WASI 0.2.9).
    let r = node
        .deploy(
            "py",
            component_importing(&[
                "wasi:cli/stdout@0.2.9",
                "wasi:sockets/tcp@0.2.9",
                "wasi:sockets/udp@0.2.9",
            ]),
        )
        .await;
    let msg = r
        .as_ref()
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string());
    assert!(
        matches!(
            r,
            Err(DeployError::Register(RegisterError::Load(
                LoadError::ForbiddenImports(_)
            )))
        ),
        "{msg}"
    );
    assert!(
        msg.contains("`wasi:sockets/tcp@0.2.9`, `wasi:sockets/udp@0.2.9`"),
        "{msg}"
    );
    assert!(!msg.contains("stdout"), "{msg}");
    // The same imports with a `cairn:deny-by-default` section naming the
    // socket interfaces (what build.py appends) pass the import check:
    // sockets are then linked to stubs that deny every use (this
    // component then lacks the behavior export). Naming only TCP leaves
    // UDP refused.
    let asking = |names: &str| {
        let mut c = component_importing(&[
            "wasi:cli/stdout@0.2.9",
            "wasi:sockets/tcp@0.2.9",
            "wasi:sockets/udp@0.2.9",
        ]);
        let name = cairn_host::runtime::DENY_BY_DEFAULT_SECTION;
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(names.as_bytes());
        c.extend_from_slice(&[0x00, body.len() as u8]);
        c.extend_from_slice(&body);
        c
    };
    let r = node
        .deploy("py", asking("wasi:sockets/tcp\nwasi:sockets/udp\n"))
        .await;
    assert!(
        matches!(
            r,
            Err(DeployError::Register(RegisterError::Load(
                LoadError::WrongWorld(_)
            )))
        ),
        "{r:?}"
    );
    let r = node.deploy("py", asking("wasi:sockets/tcp")).await;
    let msg = r
        .as_ref()
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string());
    assert!(
        msg.contains("component imports `wasi:sockets/udp@0.2.9`, which"),
        "{msg}"
    );
    // A granted WASI interface at another 0.2.x version than the host's
    // passes the import check (this one then lacks the behavior export).
    let r = node
        .deploy("py", component_importing(&["wasi:random/random@0.2.3"]))
        .await;
    assert!(
        matches!(
            r,
            Err(DeployError::Register(RegisterError::Load(
                LoadError::WrongWorld(_)
            )))
        ),
        "{r:?}"
    );
    node.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
