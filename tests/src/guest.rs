//! What the guest tests (Python, JavaScript) do with a node through the
//! CLI and the lifecycle stream: run `cairn`, deploy with a timing, read
//! events as JSON, wait for an entity's start, restart the node; and read
//! the node's log: its guest-output entries, without colours.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_client::{Client, Follow};
use cairn_host::api::Response;

use crate::NodeProc;

/// Runs `cairn ARGS` against the node; returns its stdout, trimmed, or
/// fails with the CLI's error and the node's log.
pub fn cairn(node: &NodeProc, args: &[&str]) -> Result<String> {
    let (ok, out, err) = node.cli(args)?;
    if !ok {
        let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default();
        bail!("cairn {} failed: {err}\nnode log:\n{log}", args.join(" "));
    }
    Ok(out.trim().to_owned())
}

/// Deploys `wasm` as `entity_type`; returns the CLI's line and how long
/// the deploy took (the node compiles the component).
pub fn deploy(
    node: &NodeProc,
    entity_type: &str,
    wasm: &std::path::Path,
) -> Result<(String, Duration)> {
    let started = Instant::now();
    let out = cairn(
        node,
        &["deploy", entity_type, wasm.to_str().context("path")?],
    )?;
    Ok((out, started.elapsed()))
}

/// The events of an entity as the CLI prints them (`#N time vX json`):
/// ("#N vX", json) per event.
pub fn events(node: &NodeProc, entity_type: &str, id: &str) -> Result<Vec<(String, String)>> {
    let out = cairn(node, &["events", entity_type, id])?;
    out.lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [seq, _time, version, json @ ..] => {
                    Ok((format!("{seq} {version}"), json.join(" ").trim().to_owned()))
                }
                _ => bail!("unexpected events line {line:?}"),
            }
        })
        .collect()
}

/// Waits on a lifecycle follow, at most `within` for each event, for the
/// `started` event of `id`; returns its detail.
pub async fn started(follow: &mut Follow, id: &str, within: Duration) -> Result<String> {
    loop {
        let next = tokio::time::timeout(within, follow.next())
            .await
            .with_context(|| format!("no started event within {within:?}"))?;
        match next {
            Some(Ok(Response::Lifecycle {
                kind,
                entity_id,
                detail,
                ..
            })) if kind == "started" && entity_id.as_deref() == Some(id) => return Ok(detail),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the lifecycle stream ended"),
        }
    }
}

/// Reads `key=value` from a lifecycle detail ("" when absent).
pub fn detail_value<'a>(detail: &'a str, key: &str) -> &'a str {
    detail
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("")
}

/// SIGTERM, start again on the same directory, waiting at most `wait` for
/// it to answer; a client following the lifecycle, and how long the node
/// took to answer.
pub async fn restart(node: &mut NodeProc, wait: Duration) -> Result<(Client, Follow, Duration)> {
    let status = node.terminate()?;
    anyhow::ensure!(status.success(), "the node exited with {status} on SIGTERM");
    let started = Instant::now();
    node.restart()?;
    let client = node.client_within(wait).await?;
    let follow = client.follow_lifecycle().await?;
    Ok((client, follow, started.elapsed()))
}

/// The `balance` of a bank account's JSON state.
pub fn balance_of(state: &str) -> Result<i64> {
    let v: serde_json::Value =
        serde_json::from_str(state).with_context(|| format!("state {state}"))?;
    v["balance"].as_i64().context("no balance in the state")
}

/// The node's log (`DIR/node.log`), or "" if it cannot be read.
pub fn node_log(node: &NodeProc) -> String {
    std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default()
}

/// Every guest-output entry of the node's log (the entry's line and the
/// guest's lines that follow it), in order, without colours.
pub fn guest_outputs(node: &NodeProc) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    for line in strip_ansi(&node_log(node)).lines() {
        // An entry starts with its timestamp ("2026-12-07T..."); a guest's
        // output spans the lines up to the next entry.
        if line.len() > 20 && line.as_bytes()[4] == b'-' && line.as_bytes()[10] == b'T' {
            entries.push(line.to_owned());
        } else if let Some(last) = entries.last_mut() {
            last.push('\n');
            last.push_str(line);
        }
    }
    entries.retain(|e| e.contains(" guest output "));
    entries
}

/// The node's last guest-output entry for entity `id`, if any.
pub fn guest_output(node: &NodeProc, id: &str) -> Option<String> {
    guest_outputs(node)
        .into_iter()
        .rev()
        .find(|e| e.contains(&format!("entity_id=\"{id}\"")))
}

/// Waits (up to 30 s) for [`guest_output`] of `id`.
pub fn wait_for_output(node: &NodeProc, id: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(entry) = guest_output(node, id) {
            return Ok(entry);
        }
        if Instant::now() > deadline {
            bail!(
                "no guest output of {id} in the node log:\n{}",
                node_log(node)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `text` without ANSI colour codes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Asks `entity_type`/`id` `json` with the CLI (a 60 s client timeout),
/// which must fail; returns the CLI's error, trimmed, and how long the
/// ask took.
pub fn ask_fails(
    node: &NodeProc,
    entity_type: &str,
    id: &str,
    json: &str,
) -> Result<(String, Duration)> {
    let started = Instant::now();
    let (ok, out, err) = node.cli(&["ask", entity_type, id, json, "--timeout", "60s"])?;
    let took = started.elapsed();
    if ok {
        bail!("{entity_type} {id} {json} succeeded: {out}");
    }
    eprintln!("{entity_type} {json} failed after {took:?}: {}", err.trim());
    Ok((err.trim().to_owned(), took))
}

/// Asks `entity_type` `id` for `command`, which must not return (a loop the
/// call's deadline ends), and meanwhile deposits 1 into the bank account
/// `bank_id`, one deposit after the other over the same client (so the same
/// QUIC connection), each answered `"ok"`. Returns the looping command's
/// error, how many deposits were answered meanwhile and the slowest.
pub async fn loop_beside_deposits(
    client: &Client,
    entity_type: &str,
    id: &str,
    command: &str,
    bank_id: &str,
) -> Result<(String, usize, Duration)> {
    let looping = {
        let client = client.clone();
        let (ty, id, command) = (entity_type.to_owned(), id.to_owned(), command.to_owned());
        tokio::spawn(async move { client.ask_json(&ty, &id, &command).await })
    };
    let (mut answered, mut slowest) = (0, Duration::ZERO);
    while !looping.is_finished() {
        let started = Instant::now();
        let (reply, _) = client
            .ask_json("bank-account", bank_id, r#"{"Deposit":{"amount":1}}"#)
            .await?;
        slowest = slowest.max(started.elapsed());
        anyhow::ensure!(
            reply.as_deref() == Some("\"ok\""),
            "deposit to {bank_id} answered {reply:?}"
        );
        answered += 1;
    }
    let err = match looping.await? {
        Ok(reply) => bail!("{entity_type} {id} {command} returned {reply:?}"),
        Err(e) => format!("{e:#}"),
    };
    Ok((err, answered, slowest))
}

/// A flood of printing commands, 100 at once to the `hostile` type's
/// entities `h-flood-N` (`{"Print":{"lines":50}}`, answered `"printed"`):
/// at most 20 output entries a second per behavior reach the node's log
/// (the rest are counted), each under 6 KiB.
pub async fn print_flood(client: &Client, node: &NodeProc) -> Result<()> {
    let started = Instant::now();
    let asks: Vec<_> = (0..100)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .ask_json(
                        "hostile",
                        &format!("h-flood-{i}"),
                        r#"{"Print":{"lines":50}}"#,
                    )
                    .await
            })
        })
        .collect();
    for ask in asks {
        let (reply, _) = ask.await??;
        anyhow::ensure!(reply.as_deref() == Some("\"printed\""), "{reply:?}");
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flood: Vec<String> = guest_outputs(node)
        .into_iter()
        .filter(|e| e.contains("entity_id=\"h-flood-"))
        .collect();
    let windows = took.as_secs() + 2;
    eprintln!(
        "100 printing commands in {took:?}: {} output entries in the log",
        flood.len()
    );
    anyhow::ensure!(
        !flood.is_empty() && flood.len() as u64 <= 20 * windows,
        "{} entries in {took:?}",
        flood.len()
    );
    anyhow::ensure!(
        flood.iter().all(|e| e.len() < 6 * 1024),
        "an output entry above 6 KiB"
    );
    Ok(())
}
