//! `cairn cluster status` and `cairn cluster leave`: the cluster as one
//! node sees it, and asking a node to leave gracefully.

use anyhow::{Result, bail};
use cairn_proto::{Request, Response};

use crate::args::{ClusterCommand, ConnArgs};

/// Runs a `cluster` subcommand.
pub async fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status { conn } => status(&conn).await,
        ClusterCommand::Leave { addr, conn } => {
            let mut conn = conn;
            if let Some(a) = addr {
                conn.node = a;
            }
            leave(&conn).await
        }
    }
}

async fn status(conn: &ConnArgs) -> Result<()> {
    let client = conn.connect().await?;
    let r = client.call(&Request::ClusterStatus).await?;
    client.close().await;
    let s = match r {
        Response::ClusterStatus(s) => s,
        Response::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if conn.json {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id, "addr": m.addr, "state": m.state, "reachable": m.reachable,
                    "phi": m.phi, "shards": m.shards, "unready": m.unready, "voter": m.voter,
                    "live_entities": m.live_entities,
                    "active": m.active.iter().map(|(ty, deploy, hash)| serde_json::json!({
                        "entity_type": ty, "deploy": deploy, "hash": hash,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "node": s.node, "leader": s.leader, "shards": s.shards, "epoch": s.epoch,
                "members": members, "owners": s.owners,
            })
        );
        return Ok(());
    }
    println!(
        "node {}  leader {}  shards {}  epoch {}",
        s.node,
        s.leader.map_or("none".to_owned(), |l| l.to_string()),
        s.shards,
        s.epoch
    );
    println!(
        "{:<20} {:<22} {:<8} {:<10} {:>6} {:>7} {:>7} {:>6} {:>6}",
        "ID", "ADDR", "STATE", "REACHABLE", "PHI", "SHARDS", "UNREADY", "VOTER", "LIVE"
    );
    for m in &s.members {
        println!(
            "{:<20} {:<22} {:<8} {:<10} {:>6.2} {:>7} {:>7} {:>6} {:>6}",
            m.id,
            m.addr,
            m.state,
            if m.reachable { "yes" } else { "no" },
            m.phi,
            m.shards,
            m.unready,
            if m.voter { "yes" } else { "no" },
            m.live_entities.map_or("?".to_owned(), |n| n.to_string()),
        );
        for (ty, deploy, hash) in &m.active {
            println!(
                "{:<20} runs {ty} #{deploy} ({})",
                "",
                &hash[..16.min(hash.len())]
            );
        }
    }
    Ok(())
}

async fn leave(conn: &ConnArgs) -> Result<()> {
    let client = conn.connect().await?;
    let r = client.call(&Request::ClusterLeave).await?;
    client.close().await;
    match r {
        Response::Leaving => {
            println!("{} is leaving: its shards move, then it stops", conn.node);
            Ok(())
        }
        Response::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}
