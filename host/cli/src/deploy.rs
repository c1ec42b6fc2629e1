//! `cairn deploy`, `rollback`, `versions` and `types`: components and their
//! deploys. A refused deploy prints the validation report and fails.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use cairn_client::{ClientError, Deployed};
use cairn_proto::ApiError;

use crate::args::ConnArgs;
use crate::output::{fmt_time, spinner};

/// Deploys (or with `check`, only validates) a component.
pub async fn deploy(entity_type: &str, file: &Path, check: bool, conn: &ConnArgs) -> Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let client = conn.connect().await?;
    let spinner = spinner(&format!(
        "{} {} ({} KiB): compiling, checking, replaying history",
        if check { "checking" } else { "deploying" },
        file.display(),
        wasm.len() / 1024
    ));
    let r = client.deploy_with(entity_type, wasm, check).await;
    spinner.finish_and_clear();
    client.close().await;
    let d = refused_report(r, "deploy", conn.json)?;
    print_deployed(&d, entity_type, check, conn.json);
    Ok(())
}

/// Activates an earlier deploy.
pub async fn rollback(entity_type: &str, to: Option<u32>, conn: &ConnArgs) -> Result<()> {
    let client = conn.connect().await?;
    let spinner = spinner("rolling back: replaying history");
    let r = client.rollback(entity_type, to).await;
    spinner.finish_and_clear();
    client.close().await;
    let d = refused_report(r, "rollback", conn.json)?;
    print_deployed(&d, entity_type, false, conn.json);
    Ok(())
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
