//! A host process under load, for the crash-safety test: it runs concurrent
//! commands against real components on a real journal and prints one line per
//! acknowledged command, `ACK <entity-id> <seq>`, until it is killed.
//!
//! Usage: `crash-load DATA_DIR COUNTER_WASM WORKERS ENTITIES`
//! Each command is `{"Batch":{"count":3}}` to the `counter` behavior, which
//! persists three events at once, so a partial batch would show as a sequence
//! number that is not a multiple of 3.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_host::config::Config;
use cairn_host::node::{AskOptions, Node};

async fn futures_never(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, wasm, workers, entities, journal] = args.as_slice() else {
        anyhow::bail!("usage: crash-load DATA_DIR COUNTER_WASM WORKERS ENTITIES sqlite|log");
    };
    let workers: usize = workers.parse().context("WORKERS")?;
    let entities: usize = entities.parse().context("ENTITIES")?;
    let mut config = Config::parse(&format!("[node]\njournal = \"{journal}\"\n"))?;
    config.node.data_dir = PathBuf::from(dir);
    let node = Node::open(config).await?;
    node.deploy("counter", std::fs::read(wasm).context("COUNTER_WASM")?)
        .await?;
    let command = node.command_from_json("counter", r#"{"Batch":{"count":3}}"#)?;
    println!("READY");
    let mut tasks = Vec::new();
    for w in 0..workers {
        let node = node.clone();
        let command = command.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            loop {
                let id = format!("c-{}", i % entities);
                i += workers;
                if let Ok(r) = node
                    .ask("counter", &id, command.clone(), AskOptions::default())
                    .await
                {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "ACK {id} {}", r.seq);
                    let _ = out.flush();
                }
            }
        }));
    }
    // The workers never finish: this process runs until it is killed.
    futures_never(tasks).await;
    Ok(())
}
