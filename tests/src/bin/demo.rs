//! The bank-account walk-through of the reference event-sourcing guide, on a
//! real node: the bank-account component built from `examples/`, the embedded
//! SQLite journal with fsync, recovery by a fresh node, and snapshots.
//!
//! Run: `cargo run --release -p cairn-tests --bin cairn-demo`

use std::time::Duration;

use anyhow::{Context, Result};
use cairn_host::config::Config;
use cairn_host::node::{AskOptions, LifecycleEvent, Node};
use cairn_store::EntityKey;

const TYPE: &str = "bank-account";

async fn open(config: &Config, wasm: &[u8]) -> Result<Node> {
    let node = Node::open(config.clone())?;
    node.register_component(TYPE, wasm.to_vec()).await?;
    Ok(node)
}

async fn ask(node: &Node, id: &str, json: &str) -> Result<String> {
    let r = node
        .ask_json(TYPE, id, json, AskOptions::default())
        .await
        .with_context(|| format!("ask {json}"))?;
    Ok(r.reply.unwrap_or_default())
}

/// Renders a reply such as `"ok"` the way the guide prints it: without quotes.
fn plain(json: &str) -> String {
    serde_json::from_str::<String>(json).unwrap_or_else(|_| json.to_owned())
}

/// Waits for the `Started` event of an entity and returns (snapshot seq, replayed).
async fn started(
    events: &mut tokio::sync::broadcast::Receiver<LifecycleEvent>,
    id: &str,
) -> Result<(Option<u64>, u64)> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await?? {
            LifecycleEvent::Started {
                entity_id,
                snapshot_seq,
                replayed,
                ..
            } if entity_id == id => return Ok((snapshot_seq, replayed)),
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    println!("Building the bank-account component from examples/ ...");
    let wasm = cairn_tests::example_bytes(TYPE)?;
    let dir = cairn_tests::workspace_root()
        .join("target")
        .join("cairn-demo");
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config::parse("[entities.\"bank-account\".snapshot]\nevery = 5\n")?;
    config.node.data_dir = dir.clone();
    println!(
        "Data directory: {} (SQLite journal, WAL, fsync per batch)\n",
        dir.display()
    );

    println!("── Phase 1: transactions ──");
    {
        let node = open(&config, &wasm).await?;
        for amount in [100, 50] {
            println!("  Depositing {amount}");
            node.tell(
                TYPE,
                "acct-1",
                node.command_from_json(TYPE, &format!("{{\"Deposit\":{{\"amount\":{amount}}}}}"))?,
            )
            .await?;
        }
        println!("  Withdrawing 30");
        let r = ask(&node, "acct-1", r#"{"Withdraw":{"amount":30}}"#).await?;
        println!("  Withdraw result: {}", plain(&r));
        let r = ask(&node, "acct-1", r#"{"Withdraw":{"amount":999}}"#).await?;
        println!("  Withdraw result: {}", plain(&r));
        let r = ask(&node, "acct-1", r#""GetBalance""#).await?;
        println!("  Balance: {r}");
        let events = node.events(TYPE, "acct-1", 1, u64::MAX, 1000).await?;
        println!("\n── Journal has {} events ──", events.len());
        for e in &events {
            println!("  #{}: {}", e.seq, node.event_to_json(TYPE, &e.payload)?);
        }
        node.shutdown(Duration::from_secs(5)).await;
    }

    println!("\n── Phase 2: recovery (a fresh node on the same data directory) ──");
    {
        let node = open(&config, &wasm).await?;
        let mut lifecycle = node.lifecycle();
        let r = ask(&node, "acct-1", r#""GetBalance""#).await?;
        let (_, replayed) = started(&mut lifecycle, "acct-1").await?;
        println!("  Recovered balance: {r} (replayed {replayed} events)");
        node.shutdown(Duration::from_secs(5)).await;
    }

    println!("\n── Phase 3: snapshot recovery ──");
    {
        let node = open(&config, &wasm).await?;
        for _ in 0..7 {
            println!("  Depositing 10");
            ask(&node, "acct-2", r#"{"Deposit":{"amount":10}}"#).await?;
        }
        let r = ask(&node, "acct-2", r#""GetBalance""#).await?;
        println!("  Balance after 7 deposits: {r}");
        let key = EntityKey::new(TYPE, "acct-2");
        let schema = node.descriptor(TYPE).map_or(1, |d| d.state_schema);
        let snap = node.snapshots().load(&key, u64::MAX, schema).await?;
        let events = node.events(TYPE, "acct-2", 1, u64::MAX, 1000).await?;
        match &snap {
            Some(s) => {
                let behavior_json = node.state_to_json(TYPE, &s.state)?;
                println!("  Snapshot at seq #{}: {behavior_json}", s.seq);
            }
            None => println!("  No snapshot"),
        }
        println!("  Journal has {} events total", events.len());
        node.shutdown(Duration::from_secs(5)).await;
    }
    {
        let node = open(&config, &wasm).await?;
        let mut lifecycle = node.lifecycle();
        let r = ask(&node, "acct-2", r#""GetBalance""#).await?;
        let (snap, replayed) = started(&mut lifecycle, "acct-2").await?;
        println!(
            "  Recovery (fresh node) started from snapshot #{} and replayed only {replayed} events: balance {r}",
            snap.unwrap_or(0)
        );
        node.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}
