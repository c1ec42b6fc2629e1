//! `cairn deploy`, `rollback`, `versions` and `types`: components and their
//! deploys. A refused deploy prints the validation report and fails. On a
//! cluster, a deploy or rollback returns once the version is active on
//! every member (or says, after `--wait`, where it is still pending and
//! why).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use cairn_client::{ClientError, Deployed};
use cairn_proto::ApiError;

use crate::args::ConnArgs;
use crate::output::{fmt_time, spinner};

/// Deploys (or with `check`, only validates) a component.
pub async fn deploy(
    entity_type: &str,
    file: &Path,
    check: bool,
    wait: Duration,
    conn: &ConnArgs,
) -> Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let client = conn.connect().await?;
    let what = format!(
        "{} {} ({} KiB)",
        if check { "checking" } else { "deploying" },
        file.display(),
        wasm.len() / 1024
    );
    let spinner = spinner(&format!("{what}: sending"));
    let r = with_progress(
        &client,
        entity_type,
        &spinner,
        &what,
        client.deploy_with(entity_type, wasm, check),
    )
    .await;
    spinner.finish_and_clear();
    let d = match refused_report(r, "deploy", conn.json) {
        Ok(d) => d,
        Err(e) => {
            client.close().await;
            return Err(e);
        }
    };
    print_deployed(&d, entity_type, check, conn.json);
    let waited = match (&d.info, check) {
        (Some(t), false) => active_everywhere(&client, entity_type, &t.hash, wait, conn.json).await,
        _ => Ok(()),
    };
    client.close().await;
    waited
}

/// How often a pending deploy or rollback asks the node for its phase.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Runs `call` (a deploy, check or rollback of `entity_type`) and, while it
/// is pending, asks the node every [`PROGRESS_EVERY`] on another stream of
/// the same connection what the deploy is doing, shown as the spinner's
/// message after `what`. Asking stops at the first error (a node that
/// predates `DeployProgress` answers one); the call's own outcome is never
/// affected.
async fn with_progress<T>(
    client: &cairn_client::Client,
    entity_type: &str,
    spinner: &indicatif::ProgressBar,
    what: &str,
    call: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(call);
    loop {
        tokio::select! {
            r = &mut call => return r,
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
        }
        let progress = tokio::select! {
            r = &mut call => return r,
            p = client.deploy_progress(entity_type) => p,
        };
        match progress {
            Ok(Some(p)) => spinner.set_message(format!("{what}: {}", describe_progress(&p))),
            Ok(None) => {}
            Err(_) => return call.await,
        }
    }
}

/// A deploy's phase as the spinner shows it: "compiling 18432 KiB
/// component (12 s)", "validating against history: replaying entities, 40
/// of 100 (3 s)".
fn describe_progress(p: &cairn_client::DeployProgress) -> String {
    let counts = if p.total > 0 {
        format!(", {} of {}", p.done, p.total)
    } else {
        String::new()
    };
    format!("{}{counts} ({} s)", p.phase, p.elapsed.as_secs())
}

/// On a cluster: waits until every member runs the component `hash` for
/// the type (each fetches, validates and compiles it after the deploy is
/// committed). On a single node it returns at once. After `wait`, fails
/// naming the members still pending and what their status says of them.
async fn active_everywhere(
    client: &cairn_client::Client,
    entity_type: &str,
    hash: &str,
    wait: Duration,
    json: bool,
) -> Result<()> {
    let started = Instant::now();
    // Not a cluster member: the deploy is active here, done.
    let Ok(cairn_proto::Response::ClusterStatus(_)) =
        client.call(&cairn_proto::Request::ClusterStatus).await
    else {
        return Ok(());
    };
    let spinner = (!json).then(|| spinner("waiting for the cluster's members to activate it"));
    let pending = loop {
        let status = match client.call(&cairn_proto::Request::ClusterStatus).await {
            Ok(cairn_proto::Response::ClusterStatus(s)) => s,
            Ok(other) => return Err(anyhow!("unexpected answer to a status: {other:?}")),
            Err(e) => {
                return Err(anyhow!(
                    "the deploy is committed, but its progress is unknown: {e}"
                ));
            }
        };
        let members: Vec<&cairn_proto::MemberStatus> = status
            .members
            .iter()
            .filter(|m| matches!(m.state.as_str(), "up" | "joining"))
            .collect();
        let pending: Vec<String> = members
            .iter()
            .filter(|m| {
                !m.active
                    .iter()
                    .any(|(ty, _, h)| ty == entity_type && h == hash)
            })
            .map(|m| {
                let why = if !m.reachable {
                    "unreachable"
                } else if m.state == "joining" {
                    "joining"
                } else {
                    "fetching, validating or compiling it"
                };
                format!("{} ({why})", m.addr)
            })
            .collect();
        if let Some(s) = &spinner {
            s.set_message(format!(
                "active on {} of {} members; waiting for {}",
                members.len() - pending.len(),
                members.len(),
                pending.join(", ")
            ));
        }
        if pending.is_empty() || started.elapsed() >= wait {
            break pending;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    if pending.is_empty() {
        if !json {
            println!(
                "active on every member ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
        return Ok(());
    }
    Err(anyhow!(
        "the deploy is committed, but after {:?} it is not active yet on: {} (they activate it as soon as they can; `cairn versions {entity_type}` shows where it runs)",
        wait,
        pending.join(", ")
    ))
}

/// Activates an earlier deploy.
pub async fn rollback(
    entity_type: &str,
    to: Option<u32>,
    wait: Duration,
    conn: &ConnArgs,
) -> Result<()> {
    let client = conn.connect().await?;
    let spinner = spinner("rolling back");
    let r = with_progress(
        &client,
        entity_type,
        &spinner,
        "rolling back",
        client.rollback(entity_type, to),
    )
    .await;
    spinner.finish_and_clear();
    let d = match refused_report(r, "rollback", conn.json) {
        Ok(d) => d,
        Err(e) => {
            client.close().await;
            return Err(e);
        }
    };
    print_deployed(&d, entity_type, false, conn.json);
    let waited = match &d.info {
        Some(t) => active_everywhere(&client, entity_type, &t.hash, wait, conn.json).await,
        None => Ok(()),
    };
    client.close().await;
    waited
}

/// Lists every deploy of a type and its deploy history.
pub async fn versions(entity_type: &str, conn: &ConnArgs) -> Result<()> {
    let client = conn.connect().await?;
    let v = client.versions(entity_type).await;
    // In a cluster: which member runs which component of the type.
    let cluster = match client.call(&cairn_proto::Request::ClusterStatus).await {
        Ok(cairn_proto::Response::ClusterStatus(s)) => Some(s),
        _ => None,
    };
    client.close().await;
    let v = v?;
    let active_on = |hash: &str| -> Vec<String> {
        cluster.as_ref().map_or_else(Vec::new, |s| {
            s.members
                .iter()
                .filter(|m| {
                    m.active
                        .iter()
                        .any(|(ty, _, h)| ty == entity_type && h == hash)
                })
                .map(|m| m.addr.clone())
                .collect()
        })
    };
    if conn.json {
        for t in &v.versions {
            println!(
                "{}",
                serde_json::json!({
                    "deploy": t.deploy, "behavior_version": t.behavior_version, "hash": t.hash,
                    "deployed_ms": t.deployed_ms, "state_schema": t.state_schema,
                    "active": Some(t.deploy) == v.active,
                    "active_on": active_on(&t.hash),
                })
            );
        }
        return Ok(());
    }
    for t in &v.versions {
        println!(
            "{} #{:<3} {} {:<10} schema {}  sha256 {}  deployed {}",
            if Some(t.deploy) == v.active { "*" } else { " " },
            t.deploy,
            t.behavior,
            t.behavior_version,
            t.state_schema,
            &t.hash[..16.min(t.hash.len())],
            fmt_time(t.deployed_ms)
        );
        let on = active_on(&t.hash);
        if !on.is_empty() {
            println!("       active on {}", on.join(", "));
        }
    }
    if !v.history.is_empty() {
        println!("history:");
    }
    for r in &v.history {
        println!(
            "  {}  {:?} {}  {:?}: {}",
            fmt_time(r.at_ms),
            r.action,
            r.deploy.map_or("(new)".to_owned(), |n| format!("#{n}")),
            r.outcome,
            r.report.summary()
        );
    }
    Ok(())
}

/// Lists the deployed entity types.
pub async fn types(conn: &ConnArgs) -> Result<()> {
    let client = conn.connect().await?;
    let types = client.types().await?;
    for t in &types {
        if conn.json {
            println!(
                "{}",
                serde_json::json!({
                    "entity_type": t.entity_type, "deploy": t.deploy, "behavior": t.behavior,
                    "behavior_version": t.behavior_version, "state_schema": t.state_schema,
                    "hash": t.hash, "deployed_ms": t.deployed_ms, "live_entities": t.live_entities,
                })
            );
        } else {
            println!(
                "{:<24} #{:<3} {} {}  schema {}  sha256 {}  deployed {}  live {}",
                t.entity_type,
                t.deploy,
                t.behavior,
                t.behavior_version,
                t.state_schema,
                &t.hash[..16.min(t.hash.len())],
                fmt_time(t.deployed_ms),
                t.live_entities
            );
        }
    }
    if types.is_empty() && !conn.json {
        eprintln!("no entity types deployed");
    }
    client.close().await;
    Ok(())
}

/// Turns a refused deploy into an error that shows the report.
fn refused_report(r: Result<Deployed, ClientError>, what: &str, json: bool) -> Result<Deployed> {
    match r {
        Ok(d) => Ok(d),
        Err(ClientError::Api(ApiError::ValidationFailed(report))) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "refused": true, "report": report })
                );
            }
            let mut text = format!("{what} refused: {}", report.summary());
            for f in &report.failures {
                text.push_str(&format!(
                    "\n  entity `{}` event #{}: {}",
                    f.entity_id, f.seq, f.error
                ));
            }
            text.push_str("\nthe active version is unchanged");
            Err(anyhow!(text))
        }
        Err(e) => Err(e.into()),
    }
}

/// Prints the outcome of a deploy, check or rollback.
fn print_deployed(d: &Deployed, entity_type: &str, check: bool, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "entity_type": entity_type,
                "changed": d.changed,
                "check": check,
                "deploy": d.info.as_ref().map(|t| t.deploy),
                "behavior_version": d.info.as_ref().map(|t| t.behavior_version.clone()),
                "hash": d.info.as_ref().map(|t| t.hash.clone()),
                "state_schema": d.info.as_ref().map(|t| t.state_schema),
                "report": d.report,
            })
        );
        return;
    }
    let r = &d.report;
    if check {
        println!("check passed: {}", r.summary());
    } else if let Some(t) = &d.info {
        println!(
            "{} {} #{}: {} {} (state schema {}), sha256 {}",
            if d.changed { "deployed" } else { "unchanged:" },
            t.entity_type,
            t.deploy,
            t.behavior,
            t.behavior_version,
            t.state_schema,
            &t.hash[..16.min(t.hash.len())]
        );
        if r.sampled > 0 || r.exemplars > 0 {
            println!("validated: {}", r.summary());
        }
    }
    for diff in &r.differences {
        println!(
            "  {} at #{}: {} -> {}",
            diff.entity_id, diff.seq, diff.active, diff.candidate
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_is_shown_with_its_counts_and_time() {
        let p = cairn_client::DeployProgress {
            phase: "validating against history: replaying entities".into(),
            done: 40,
            total: 100,
            elapsed: Duration::from_millis(3_400),
        };
        assert_eq!(
            describe_progress(&p),
            "validating against history: replaying entities, 40 of 100 (3 s)"
        );
        let p = cairn_client::DeployProgress {
            phase: "compiling 18432 KiB component".into(),
            done: 0,
            total: 0,
            elapsed: Duration::from_secs(12),
        };
        assert_eq!(
            describe_progress(&p),
            "compiling 18432 KiB component (12 s)"
        );
    }
}
