//! The quick start: the bank-account walk-through of the reference
//! event-sourcing guide over the network. It builds the example behaviors to
//! wasm and the `cairn` binary, starts `cairn node` on the embedded default
//! (the log journal, synced before every reply; development certificates made on first start),
//! and drives it with the `cairn` CLI: deploy, the guide's transactions, the
//! journal, a node restart with recovery, then snapshots. Every figure the
//! guide states is checked; a mismatch ends the program with an error.
//!
//! Run: `cargo run -p cairn-tests --bin cairn-demo`

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_client::{Client, Follow};
use cairn_tests::NodeProc;
use cairn_tests::guest::started;

const TYPE: &str = "bank-account";

/// Runs `cairn ARGS` against the node, prints the command and what it wrote
/// to stdout, and returns that.
fn cairn(node: &NodeProc, args: &[&str]) -> Result<String> {
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(['{', '"', ' ']) {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    println!("  $ cairn {}", shown.join(" "));
    let (ok, out, err) = node.cli(args)?;
    if !ok {
        bail!("cairn {} failed: {err}", args.join(" "));
    }
    for line in out.lines().chain(err.lines()) {
        println!("    {line}");
    }
    Ok(out.trim().to_owned())
}

fn expect(what: &str, got: &str, want: &str) -> Result<()> {
    if got != want {
        bail!("{what}: expected {want}, got {got}");
    }
    Ok(())
}

/// Reads `key=value` from a lifecycle detail.
fn detail_value<'a>(detail: &'a str, key: &str) -> &'a str {
    detail
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("")
}

/// Restarts the node cleanly (SIGTERM, then start again) and connects a
/// client that follows lifecycle events.
async fn restart(node: &mut NodeProc) -> Result<(Client, Follow)> {
    println!("  (SIGTERM: the node drains its mailboxes, flushes the journal and exits)");
    let status = node.terminate()?;
    if !status.success() {
        bail!("the node exited with {status} on SIGTERM");
    }
    node.restart()?;
    let client = node.client().await?;
    let follow = client.follow_lifecycle().await?;
    println!("  (node restarted on the same data directory)");
    Ok((client, follow))
}

#[tokio::main]
async fn main() -> Result<()> {
    println!("Building the example behaviors (wasm32-wasip2 components) ...");
    let wasm = cairn_tests::example_wasm(TYPE)?;
    println!("Building the cairn binary ...");
    let bin = cairn_tests::build_cairn_bin()?;
    let dir = cairn_tests::workspace_root()
        .join("target")
        .join("cairn-demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("cairn.toml");
    std::fs::write(&config, "[entities.\"bank-account\".snapshot]\nevery = 5\n")?;
    let mut node = NodeProc::start(
        &dir.join("data"),
        &["--config", config.to_str().context("path")?],
    )?;
    let _client = node.client().await?;
    println!(
        "\nA node is running: {} node --config {} --data-dir {} --listen {}",
        show(&bin),
        show(&config),
        show(&node.dir),
        node.addr
    );
    println!(
        "  (log: {}; it made development certificates in {}; the CLI below is\n   pointed at it with --node {} --certs {}, or CAIRN_NODE / CAIRN_CERTS)",
        show(&node.dir.join("node.log")),
        show(&node.certs()),
        node.addr,
        show(&node.certs())
    );

    println!("\n── Deploy ──");
    let wasm_arg = wasm.to_str().context("path")?.to_owned();
    cairn(&node, &["deploy", TYPE, &wasm_arg])?;
    cairn(&node, &["types"])?;

    println!("\n── Phase 1: transactions ──");
    for amount in [100, 50] {
        println!("  Depositing {amount}");
        cairn(
            &node,
            &[
                "tell",
                TYPE,
                "acct-1",
                &format!("{{\"Deposit\":{{\"amount\":{amount}}}}}"),
            ],
        )?;
    }
    println!("  Withdrawing 30");
    let r = cairn(
        &node,
        &["ask", TYPE, "acct-1", r#"{"Withdraw":{"amount":30}}"#],
    )?;
    println!("  Withdraw result: {}", plain(&r));
    expect("first withdrawal", &plain(&r), "ok")?;
    println!("  Withdrawing 999");
    let r = cairn(
        &node,
        &["ask", TYPE, "acct-1", r#"{"Withdraw":{"amount":999}}"#],
    )?;
    println!("  Withdraw result: {}", plain(&r));
    expect(
        "second withdrawal",
        &plain(&r),
        "insufficient funds (balance: 120)",
    )?;
    let r = cairn(&node, &["ask", TYPE, "acct-1", r#""GetBalance""#])?;
    println!("  Balance: {r}");
    expect("balance", &r, "120")?;

    let out = cairn(&node, &["events", TYPE, "acct-1"])?;
    let lines: Vec<&str> = out.lines().collect();
    println!("\n── Journal has {} events ──", lines.len());
    let want = [
        r#"{"Deposited":{"amount":100}}"#,
        r#"{"Deposited":{"amount":50}}"#,
        r#"{"Withdrawn":{"amount":30}}"#,
    ];
    if lines.len() != want.len() {
        bail!("expected 3 events, got {}", lines.len());
    }
    for (i, (line, event)) in lines.iter().zip(want).enumerate() {
        println!("  #{}: {event}", i + 1);
        if !line.starts_with(&format!("#{} ", i + 1)) || !line.ends_with(event) {
            bail!("event #{}: expected {event}, got {line}", i + 1);
        }
    }
    println!("  Time travel: the state after event #2, replayed through the behavior");
    let r = cairn(&node, &["state", TYPE, "acct-1", "--at-seq", "2"])?;
    expect("balance at #2", &balance_of(&r)?, "150")?;

    println!("\n── Phase 2: recovery (the node restarts on the same data directory) ──");
    let (client, mut follow) = restart(&mut node).await?;
    let r = cairn(&node, &["ask", TYPE, "acct-1", r#""GetBalance""#])?;
    let detail = started(&mut follow, "acct-1", Duration::from_secs(30)).await?;
    let replayed = detail_value(&detail, "replayed");
    println!("  Recovered balance: {r} (replayed {replayed} events)");
    expect("recovered balance", &r, "120")?;
    expect("events replayed", replayed, "3")?;
    follow.stop();
    client.close().await;

    println!("\n── Phase 3: snapshot recovery (a snapshot every 5 events) ──");
    for _ in 0..7 {
        println!("  Depositing 10");
        cairn(
            &node,
            &["ask", TYPE, "acct-2", r#"{"Deposit":{"amount":10}}"#],
        )?;
    }
    let r = cairn(&node, &["ask", TYPE, "acct-2", r#""GetBalance""#])?;
    println!("  Balance after 7 deposits: {r}");
    expect("balance after 7 deposits", &r, "70")?;
    let out = cairn(&node, &["events", TYPE, "acct-2"])?;
    let count = out.lines().count();
    println!("  Journal has {count} events total");
    expect("events of acct-2", &count.to_string(), "7")?;
    let (client, mut follow) = restart(&mut node).await?;
    let r = cairn(&node, &["ask", TYPE, "acct-2", r#""GetBalance""#])?;
    let detail = started(&mut follow, "acct-2", Duration::from_secs(30)).await?;
    let (snap, replayed) = (
        detail_value(&detail, "snapshot"),
        detail_value(&detail, "replayed"),
    );
    println!(
        "  Recovery started from the snapshot at #{snap} and replayed only {replayed} events: balance {r}"
    );
    expect("snapshot sequence number", snap, "5")?;
    expect("events replayed after the snapshot", replayed, "2")?;
    expect("recovered balance", &r, "70")?;
    println!("  The snapshot's state, read back (0 events replayed on top of it):");
    let r = cairn(&node, &["state", TYPE, "acct-2", "--at-seq", "5"])?;
    expect("balance at the snapshot", &balance_of(&r)?, "50")?;
    follow.stop();
    client.close().await;

    let status = node.terminate()?;
    println!("\nDone: every figure matches the guide. The node stopped ({status}).");
    println!("Its data stays in {}.", show(&node.dir));
    Ok(())
}

/// Renders a reply such as `"ok"` the way the guide prints it: without quotes.
fn plain(json: &str) -> String {
    serde_json::from_str::<String>(json).unwrap_or_else(|_| json.to_owned())
}

/// The `balance` field of a bank-account state rendered as JSON.
fn balance_of(state: &str) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(state).with_context(|| format!("state {state}"))?;
    Ok(v["balance"].to_string())
}

/// A path relative to the workspace root when it is inside it.
fn show(p: &Path) -> String {
    let root = cairn_tests::workspace_root();
    p.strip_prefix(&root).unwrap_or(p).display().to_string()
}
