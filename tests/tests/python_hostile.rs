//! Hostile Python guests on a real `cairn node` process
//! (`tests/fixtures/python/hostile/hostile.py`, built by
//! `guest-sdk/python/build.py` like any behavior), beside the Python bank
//! account: an infinite loop, unbounded allocation, a socket connection
//! (a WASI call the host does not grant: the component is built with WASI
//! stubbed), an import that needs the file system, a print loop; and the
//! same module built with its WASI imports, refused at deploy. Each fails
//! only its own command (or deploy), with a clear message; the hostile entity
//! serves its next command; the bank account keeps answering, also while a
//! loop runs; the node's log shows no panic.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_tests::{NodeProc, python_example_wasm, python_module_wasm, workspace_root};

/// Runs `cairn ARGS`; returns its stdout, trimmed, or fails with the log.
fn cairn(node: &NodeProc, args: &[&str]) -> Result<String> {
    let (ok, out, err) = node.cli(args)?;
    if !ok {
        bail!(
            "cairn {} failed: {err}\nnode log:\n{}",
            args.join(" "),
            log(node)
        );
    }
    Ok(out.trim().to_owned())
}

fn log(node: &NodeProc) -> String {
    std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default()
}

/// Asks the hostile guest `json`, which must fail; returns the error and
/// how long it took.
fn hostile_fails(node: &NodeProc, id: &str, json: &str) -> Result<(String, Duration)> {
    let started = Instant::now();
    let (ok, out, err) = node.cli(&["ask", "hostile", id, json, "--timeout", "60s"])?;
    let took = started.elapsed();
    if ok {
        bail!("hostile {json} succeeded: {out}");
    }
    eprintln!("hostile {json} failed after {took:?}: {}", err.trim());
    Ok((err.trim().to_owned(), took))
}

fn bank_deposit(node: &NodeProc, id: &str) -> Result<()> {
    let out = cairn(
        node,
        &["ask", "bank-account", id, r#"{"Deposit":{"amount":1}}"#],
    )?;
    if out != "\"ok\"" {
        bail!("bank-account {id} answered {out}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_python_guests_fail_only_their_own_commands() -> Result<()> {
    let module = workspace_root()
        .join("tests")
        .join("fixtures")
        .join("python")
        .join("hostile")
        .join("hostile.py");
    let hostile = python_module_wasm(&module, "hostile", &[])?;
    // The same module with componentize-py's WASI imports left in.
    let unstubbed = python_module_wasm(&module, "hostile-wasi", &["--wasi=import"])?;
    let bank = python_example_wasm("bank-account")?;
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("data"), &[])?;
    let client = node.client().await?;
    for (ty, wasm) in [("bank-account", &bank), ("hostile", &hostile)] {
        let started = Instant::now();
        let out = cairn(&node, &["deploy", ty, wasm.to_str().context("path")?])?;
        eprintln!("{out} in {:?}", started.elapsed());
    }
    bank_deposit(&node, "acct-1")?;
    assert_eq!(
        cairn(&node, &["ask", "hostile", "h-1", r#""Ping""#])?,
        "\"pong 1\""
    );

    // An infinite loop: the call's deadline (1 s by default) ends it. The
    // bank account answers meanwhile.
    let looping = {
        let client = client.clone();
        tokio::spawn(async move { client.ask_json("hostile", "h-loop", r#""Loop""#).await })
    };
    // Deposits (over the same QUIC connection) while the looping ask is out.
    let (mut answered, mut slowest) = (0, Duration::ZERO);
    while !looping.is_finished() {
        let started = Instant::now();
        let (reply, _) = client
            .ask_json("bank-account", "acct-2", r#"{"Deposit":{"amount":1}}"#)
            .await?;
        slowest = slowest.max(started.elapsed());
        assert_eq!(reply.as_deref(), Some("\"ok\""));
        answered += 1;
    }
    let err = match looping.await? {
        Ok(reply) => panic!("the loop returned {reply:?}"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!(
        "hostile Loop: {err}; bank-account answered {answered} deposits meanwhile, the slowest in {slowest:?}"
    );
    assert!(err.contains("exceeded its deadline"), "{err}");
    assert!(answered >= 2, "{answered} deposits while the loop ran");

    // Unbounded allocation: the memory cap (64 MiB by default) stops it.
    let (err, _) = hostile_fails(&node, "h-alloc", r#""Allocate""#)?;
    assert!(err.contains("exceeded its memory limit"), "{err}");

    // A socket: WASI is stubbed in the component, so the call traps. (The
    // message cannot say more: the stub is an `unreachable`, and the
    // guest's stderr is stubbed too; see guest-sdk/python/README.md.)
    let (err, _) = hostile_fails(&node, "h-net", r#""Connect""#)?;
    assert!(err.contains("guest trapped"), "{err}");

    // An import of a module not snapshotted at build time.
    let (err, _) = hostile_fails(&node, "h-import", r#"{"ImportLate":{"module":"sqlite3"}}"#)?;
    assert!(err.contains("guest trapped"), "{err}");

    // A print loop: the output goes to a sink; the command does what its
    // logic says.
    assert_eq!(
        cairn(
            &node,
            &["ask", "hostile", "h-print", r#"{"Print":{"lines":20000}}"#]
        )?,
        "\"printed\""
    );

    // Every hostile entity serves again (supervision restarted it from its
    // journal), h-1 kept its event, and the bank account has every deposit.
    for id in ["h-loop", "h-alloc", "h-net", "h-import", "h-print"] {
        assert_eq!(
            cairn(&node, &["ask", "hostile", id, r#""Ping""#])?,
            "\"pong 1\"",
            "{id}"
        );
    }
    assert_eq!(
        cairn(&node, &["ask", "hostile", "h-1", r#""Ping""#])?,
        "\"pong 2\""
    );
    assert_eq!(
        cairn(&node, &["ask", "bank-account", "acct-2", r#""GetBalance""#])?,
        answered.to_string()
    );
    bank_deposit(&node, "acct-1")?;
    assert_eq!(
        cairn(&node, &["ask", "bank-account", "acct-1", r#""GetBalance""#])?,
        "2"
    );

    // A component that imports WASI sockets is refused at deploy, naming
    // the interface; nothing changes.
    let started = Instant::now();
    let (ok, out, err) = node.cli(&[
        "deploy",
        "hostile-wasi",
        unstubbed.to_str().context("path")?,
    ])?;
    eprintln!(
        "deploy of the unstubbed component: {:?}: {}",
        started.elapsed(),
        err.trim()
    );
    assert!(
        !ok,
        "a component importing WASI sockets was deployed: {out}"
    );
    assert!(
        err.contains("component imports `wasi:sockets/network@0.2.9`")
            && err.contains("`wasi:sockets/tcp@0.2.9`")
            && err.contains("which Cairn does not grant"),
        "{err}"
    );
    let types = cairn(&node, &["types"])?;
    assert!(!types.contains("hostile-wasi"), "{types}");
    assert_eq!(
        cairn(&node, &["ask", "bank-account", "acct-1", r#""GetBalance""#])?,
        "2"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = log(&node);
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    assert!(
        !log.contains("panicked"),
        "a panic in the node log:\n{tail:?}"
    );
    assert!(
        !log.contains("backtrace"),
        "a backtrace in the node log:\n{tail:?}"
    );
    eprintln!(
        "node log: {} bytes, {} lines",
        log.len(),
        log.lines().count()
    );
    Ok(())
}
