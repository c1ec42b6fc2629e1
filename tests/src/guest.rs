//! What the guest tests (Python, JavaScript) do with a node through the
//! CLI and the lifecycle stream: run `cairn`, deploy with a timing, read
//! events as JSON, wait for an entity's start, restart the node.

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
