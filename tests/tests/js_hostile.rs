//! Hostile JavaScript guests on a real `cairn node` process
//! (`tests/fixtures/js/hostile/hostile.js`, built by `guest-sdk/js/build.mjs`
//! like any behavior, console kept), beside the JavaScript bank account:
//! an infinite loop, a busy wait on the clock (which shows the command's
//! timestamp, so it never moves), unbounded allocation, unbounded recursion,
//! an uncaught exception, `fetch` (its HTTP imports are trapping stubs: the
//! build disables the engine's `http` feature) and `require` (no module
//! loader: the bundler's shim throws; the component imports no WASI
//! sockets, so the host has nothing to stub), a console.log loop and a flood of them. Each fails only
//! its own command with a clear message (the deadline, the memory cap, the
//! exception's text); a failing command's console output and exception and a
//! print loop's output land in the node's log, bounded; the hostile entity
//! serves its next command; the bank account keeps answering, also while a
//! loop runs; the node's log shows no panic. The JavaScript counterpart of
//! `python_hostile.rs`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_tests::guest::{
    ask_fails, cairn, loop_beside_deposits, node_log, print_flood, wait_for_output,
};
use cairn_tests::{NodeProc, js_example_wasm, js_module_wasm, workspace_root};

/// Asks the hostile guest `json`, which must fail; returns the error and
/// how long it took.
fn hostile_fails(node: &NodeProc, id: &str, json: &str) -> Result<(String, Duration)> {
    ask_fails(node, "hostile", id, json)
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
async fn hostile_js_guests_fail_only_their_own_commands() -> Result<()> {
    let module = workspace_root()
        .join("tests")
        .join("fixtures")
        .join("js")
        .join("hostile")
        .join("hostile.js");
    let started = Instant::now();
    let hostile = js_module_wasm(&module, "hostile", &[])?;
    let bank = js_example_wasm("bank-account")?;
    eprintln!("builds (or up-to-date checks): {:?}", started.elapsed());
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
    // bank account answers meanwhile, over the same QUIC connection.
    let (err, answered, slowest) =
        loop_beside_deposits(&client, "hostile", "h-loop", r#""Loop""#, "acct-2").await?;
    eprintln!(
        "hostile Loop: {err}; bank-account answered {answered} deposits meanwhile, the slowest in {slowest:?}"
    );
    assert!(err.contains("exceeded its deadline"), "{err}");
    assert!(answered >= 2, "{answered} deposits while the loop ran");

    // A busy wait for the clock: Date.now() is the command's timestamp
    // throughout onCommand, so it never moves and the deadline ends it.
    let (err, _) = hostile_fails(&node, "h-spin", r#""Spin""#)?;
    assert!(err.contains("exceeded its deadline"), "{err}");

    // Unbounded allocation: the memory cap (64 MiB by default) stops it.
    let (err, _) = hostile_fails(&node, "h-alloc", r#""Allocate""#)?;
    assert!(err.contains("exceeded its memory limit"), "{err}");

    // Unbounded recursion: SpiderMonkey's stack limit raises an exception,
    // which fails the command like any other.
    let (err, _) = hostile_fails(&node, "h-recurse", r#""Recurse""#)?;
    assert!(
        err.contains("guest trapped") && err.contains("too much recursion"),
        "{err}"
    );

    // No network and no module loader. `fetch` is defined by the engine,
    // but the build disables its `http` feature, whose WASI imports
    // componentize-js replaces with stubs that trap: the call ends at once,
    // with nothing to quote. There is no `require`: the bundler turns the
    // call into a shim that throws.
    let (err, _) = hostile_fails(
        &node,
        "h-fetch",
        r#"{"Fetch":{"url":"http://127.0.0.1:9/"}}"#,
    )?;
    assert!(
        err.contains("guest trapped: unreachable code reached"),
        "{err}"
    );
    let (err, _) = hostile_fails(&node, "h-require", r#"{"Require":{"module":"fs"}}"#)?;
    assert!(
        err.contains("Calling `require` for \"fs\" in an environment that doesn't expose the `require` function"),
        "{err}"
    );

    // An uncaught exception: the command fails naming it, and what the
    // command logged and the exception are in the node's log.
    let (err, _) = hostile_fails(&node, "h-fail", r#"{"Fail":{"message":"boom 42"}}"#)?;
    assert!(
        err.contains("guest trapped") && err.contains("TypeError: boom 42"),
        "{err}"
    );
    let fail_log = wait_for_output(&node, "h-fail")?;
    for wanted in ["about to fail with boom 42", "TypeError: boom 42", "Stack:"] {
        assert!(fail_log.contains(wanted), "{wanted:?} not in {fail_log}");
    }

    // A console.log loop: the command does what its logic says; the node's
    // log gets the start and the end of its output and a count of the rest,
    // not 5,000 lines (each line is one host call: 20,000 can pass the 1 s
    // deadline of a debug node on a busy machine).
    let started = Instant::now();
    assert_eq!(
        cairn(
            &node,
            &["ask", "hostile", "h-print", r#"{"Print":{"lines":5000}}"#]
        )?,
        "\"printed\""
    );
    eprintln!("5,000 console.log lines took {:?}", started.elapsed());
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
        "h-loop",
        "h-spin",
        "h-alloc",
        "h-recurse",
        "h-fetch",
        "h-require",
        "h-fail",
        "h-print",
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

    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = node_log(&node);
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
