//! Hostile Python guests on a real `cairn node` process
//! (`tests/fixtures/python/hostile/hostile.py`, built by
//! `guest-sdk/python/build.py` like any behavior), beside the Python bank
//! account: an infinite loop, unbounded allocation, TCP and UDP sockets and
//! a name lookup (the component asks for deny-all socket stubs: every use
//! fails), an import that needs the file system, an uncaught exception, a
//! print loop; and the same module built with its WASI imports but without
//! asking for the stubs, refused at deploy. Each fails only its own command
//! (or deploy), with a clear message; a failing command's traceback and a
//! print's output land in the node's log, bounded; the hostile entity serves
//! its next command; the bank account keeps answering, also while a loop
//! runs; the node's log shows no panic.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_tests::guest::{loop_beside_deposits, node_log, print_flood, wait_for_output};
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
    node_log(node)
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
    // The same module with componentize-py's WASI imports, without the
    // section that asks for deny-all socket stubs.
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
    let (err, answered, slowest) =
        loop_beside_deposits(&client, "hostile", "h-loop", r#""Loop""#, "acct-2").await?;
    eprintln!(
        "hostile Loop: {err}; bank-account answered {answered} deposits meanwhile, the slowest in {slowest:?}"
    );
    assert!(err.contains("exceeded its deadline"), "{err}");
    assert!(answered >= 2, "{answered} deposits while the loop ran");

    // Unbounded allocation: the memory cap (64 MiB by default) stops it.
    let (err, _) = hostile_fails(&node, "h-alloc", r#""Allocate""#)?;
    assert!(err.contains("exceeded its memory limit"), "{err}");

    // Sockets: linked to deny-all stubs, so each use raises in Python; the
    // SDK writes the traceback and ends the call, and the error quotes the
    // exception.
    let (err, _) = hostile_fails(&node, "h-net", r#""Connect""#)?;
    assert!(
        err.contains("guest trapped")
            && err.contains("PermissionError: [Errno 2] Permission denied"),
        "{err}"
    );
    let (err, _) = hostile_fails(&node, "h-udp", r#""SendUdp""#)?;
    assert!(err.contains("PermissionError"), "{err}");
    let (err, _) = hostile_fails(&node, "h-dns", r#"{"Resolve":{"host":"example.com"}}"#)?;
    assert!(err.contains("socket.gaierror"), "{err}");

    // An import of a module not snapshotted at build time (no file system).
    let (err, _) = hostile_fails(&node, "h-import", r#"{"ImportLate":{"module":"sqlite3"}}"#)?;
    assert!(
        err.contains("ModuleNotFoundError: No module named 'sqlite3'"),
        "{err}"
    );

    // An uncaught exception: the command fails naming it, and what the
    // command printed and the traceback are in the node's log.
    let (err, _) = hostile_fails(&node, "h-fail", r#"{"Fail":{"message":"boom 42"}}"#)?;
    assert!(err.contains("ValueError: boom 42"), "{err}");
    let fail_log = wait_for_output(&node, "h-fail")?;
    for wanted in [
        "about to fail with boom 42",
        "Traceback (most recent call last):",
        "hostile.py\", line",
        "in on_command",
        "ValueError: boom 42",
    ] {
        assert!(fail_log.contains(wanted), "{wanted:?} not in {fail_log}");
    }
    // The socket failure's traceback too.
    let net_log = wait_for_output(&node, "h-net")?;
    assert!(net_log.contains("PermissionError"), "{net_log}");

    // A print loop: the command does what its logic says; the node's log
    // gets the start and the end of its output and a count of the rest,
    // not 5,000 lines (about 120 KB; 20,000 lines ran past what the 1 s
    // deadline allows a debug node's nice-10 guest pool beside two CPU
    // burners).
    let started = Instant::now();
    assert_eq!(
        cairn(
            &node,
            &["ask", "hostile", "h-print", r#"{"Print":{"lines":5000}}"#]
        )?,
        "\"printed\""
    );
    eprintln!("5,000 prints took {:?}", started.elapsed());
    let print_log = wait_for_output(&node, "h-print")?;
    assert!(
        print_log.contains("hostile prints line 0\n")
            && print_log.contains("hostile prints line 4999")
            && print_log.contains(" bytes not kept ...]")
            && !print_log.contains("hostile prints line 2500\n"),
        "{print_log}"
    );
    assert!(print_log.len() < 6 * 1024, "{} bytes", print_log.len());
    // A flood of printing commands: the log's rate limit holds.
    print_flood(&client, &node).await?;

    // Every hostile entity serves again (supervision restarted it from its
    // journal), h-1 kept its event, and the bank account has every deposit.
    for id in [
        "h-loop", "h-alloc", "h-net", "h-udp", "h-dns", "h-import", "h-fail", "h-print",
    ] {
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

    // A component that imports WASI sockets without asking for the deny-all
    // stubs is refused at deploy, naming the interfaces; nothing changes.
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
            && err.contains("which Cairn does not grant")
            && err.contains("cairn:deny-by-default"),
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
