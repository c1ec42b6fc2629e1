//! Histories of any size move (issue 28): an entity with 100 MiB of events
//! (100 events of 1 MiB) hands off when its owner leaves, then fails over
//! when the new owner is SIGKILLed; the other entities of its shard move
//! with it. History travels in chunks of bounded size (a handoff's fetch,
//! a replica's gap, a read-back), where it used to be one frame per
//! entity, capped at 64 MiB: such an entity never moved and its shard
//! stalled.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cairn_client::Client;
use cairn_tests::cluster::{Cluster, ask_type, members, owners, status, up_count, wait_status};

const TYPE: &str = "shopping-cart";

/// `GetTotal` of a cart and its sequence number, tried again while the
/// answer is a refusal (the shard moving), for up to `patience`.
async fn total(client: &Client, id: &str, patience: Duration) -> Result<(String, u64)> {
    let deadline = Instant::now() + patience;
    loop {
        match ask_type(client, TYPE, id, r#""GetTotal""#).await {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() < deadline => {
                eprintln!("{id}: {e}; again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("total of {id}: {e}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entity_of_100_mib_hands_off_and_fails_over() -> Result<()> {
    // Four members: after one leaves, a kill still leaves a majority. A
    // guest call handles a 1 MiB event (decode, fold, encode a state that
    // holds it): beside CPU burners one took over the default 1 s.
    let toml = "[entities.\"shopping-cart\".supervision]\ncall_timeout = \"20s\"\n";
    let mut c = Cluster::start_with(4, 4, Some(toml))?;
    for n in &c.nodes {
        wait_status(n, Duration::from_secs(60), "four up members", |s| {
            up_count(s) == 4
        })
        .await?;
    }
    // The joiners' shards have moved to them and the table is still.
    let mut last = 0;
    let mut still_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(c.node(0))?;
        let epoch = s["epoch"].as_u64().unwrap_or(0);
        let spread = members(&s).iter().all(|m| m["shards"].as_u64() > Some(0));
        if epoch != last || !spread {
            last = epoch;
            still_since = Instant::now();
        } else if still_since.elapsed() > Duration::from_secs(3) {
            break;
        }
        ensure!(Instant::now() < deadline, "the table never settled");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let wasm = cairn_tests::example_wasm(TYPE)?;
    let (ok, out, err) = c.node(0).cli(&["deploy", TYPE, &wasm.to_string_lossy()])?;
    ensure!(ok, "deploy failed: {out}{err}");

    // A cart the second node owns, and four more carts of its shard.
    let s = status(c.node(0))?;
    let shards = s["shards"].as_u64().context("shard count")? as u32;
    let leaver = c.node(1).addr.to_string();
    let candidates: Vec<String> = (0..2_000).map(|i| format!("cart-{i}")).collect();
    let owned = owners(&s, TYPE, &candidates);
    let big = candidates
        .iter()
        .find(|id| owned.get(*id) == Some(&leaver))
        .context("the second node owns no cart")?
        .clone();
    let shard = cairn_cluster::shard_of(TYPE, &big, shards);
    let small: Vec<String> = candidates
        .iter()
        .filter(|id| **id != big && cairn_cluster::shard_of(TYPE, id, shards) == shard)
        .take(4)
        .cloned()
        .collect();
    ensure!(small.len() == 4, "too few carts in shard {shard:?}");

    let client = c.node(0).client().await?;
    let name = "x".repeat(1 << 20);
    let started = Instant::now();
    for i in 1..=100u64 {
        let cmd = format!(r#"{{"AddItem":{{"item":{{"name":"{name}","price_cents":{i}}}}}}}"#);
        // Asked until stored once: after an error, the cart's sequence
        // number says whether it was.
        loop {
            match ask_type(&client, TYPE, &big, &cmd).await {
                Ok((_, seq)) => {
                    ensure!(seq == i, "{big}: event {i} stored at #{seq}");
                    break;
                }
                Err(e) => {
                    eprintln!("event {i} of {big}: {e}");
                    let (_, seq) = total(&client, &big, Duration::from_secs(60)).await?;
                    if seq == i {
                        break;
                    }
                    ensure!(seq == i - 1, "{big}: at #{seq} while writing event {i}");
                }
            }
        }
    }
    eprintln!(
        "{big}: 100 MiB of history written in {:.1?}",
        started.elapsed()
    );
    for (i, id) in small.iter().enumerate() {
        let cmd = format!(
            r#"{{"AddItem":{{"item":{{"name":"n","price_cents":{}}}}}}}"#,
            i + 1
        );
        ask_type(&client, TYPE, id, &cmd).await?;
    }

    // The owner leaves: its shards, the big cart's too, hand off.
    let started = Instant::now();
    let (ok, _, err) = c.node(0).cli(&["cluster", "leave", &leaver])?;
    ensure!(ok, "cluster leave failed: {err}");
    wait_status(
        c.node(0),
        Duration::from_secs(180),
        "the leaver owns no shard",
        |s| {
            members(s).iter().all(|m| {
                m["addr"].as_str() != Some(leaver.as_str()) || m["shards"].as_u64() == Some(0)
            })
        },
    )
    .await?;
    let (t, seq) = total(&client, &big, Duration::from_secs(300)).await?;
    eprintln!("handed off and served in {:.1?}", started.elapsed());
    ensure!(
        (t.as_str(), seq) == (r#"{"Total":100}"#, 100),
        "{big} after the handoff: total {t} at #{seq}"
    );
    for (i, id) in small.iter().enumerate() {
        let (t, seq) = total(&client, id, Duration::from_secs(30)).await?;
        ensure!(
            (t, seq) == (format!(r#"{{"Total":{}}}"#, i + 1), 1),
            "{id} after the handoff"
        );
    }

    // Its new owner is SIGKILLed once it reported its shards ready (its
    // replicas hold the history; before that a failover waits for it, by
    // design): a replica takes the shard over.
    wait_status(
        c.node(0),
        Duration::from_secs(300),
        "every owner reported its shards ready",
        |s| members(s).iter().all(|m| m["unready"].as_u64() == Some(0)),
    )
    .await?;
    eprintln!("shards ready {:.1?} after the handoff", started.elapsed());
    let s = status(c.node(0))?;
    let owner = owners(&s, TYPE, std::slice::from_ref(&big))
        .remove(&big)
        .context("no owner")?;
    let victim = c
        .nodes
        .iter()
        .position(|n| n.addr.to_string() == owner)
        .context("the owner is not a node of the test")?;
    let survivor = if victim == 0 { 2 } else { 0 };
    ensure!(victim != 1, "the node that left still owns the cart");
    let client = c.node(survivor).client().await?;
    let started = Instant::now();
    c.nodes[victim].kill();
    let (t, seq) = total(&client, &big, Duration::from_secs(300)).await?;
    eprintln!("failed over and served in {:.1?}", started.elapsed());
    ensure!(
        (t.as_str(), seq) == (r#"{"Total":100}"#, 100),
        "{big} after the failover: total {t} at #{seq}"
    );
    for (i, id) in small.iter().enumerate() {
        let (t, seq) = total(&client, id, Duration::from_secs(60)).await?;
        ensure!(
            (t, seq) == (format!(r#"{{"Total":{}}}"#, i + 1), 1),
            "{id} after the failover"
        );
    }
    for n in &mut c.nodes {
        n.kill();
    }
    Ok(())
}
