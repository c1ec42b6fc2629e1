//! Check 4: a host process under concurrent load is killed with SIGKILL;
//! after restart every acknowledged event is present, sequence numbers are
//! contiguous and no partial batch is visible.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_store::{EntityKey, EventRecord, Journal, LogStore, SqliteOptions, SqliteStore, Write};

/// Entities the load spreads over.
const ENTITIES: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_event_sqlite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let acked = kill_under_load(dir.path(), "sqlite")?;
    let store = SqliteStore::open(dir.path(), SqliteOptions::default())?;
    check(&*store, &acked).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_event_log() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let acked = kill_under_load(dir.path(), "log")?;
    let store = LogStore::open(dir.path(), 4096)?;
    check(&*store, &acked).await?;
    // Appends continue where the recovered log ends, and survive a reopen.
    let key = EntityKey::new("counter", "c-0");
    let next = store.highest_seq(&key).await? + 1;
    store
        .append(Write {
            key: key.clone(),
            events: vec![EventRecord {
                seq: next,
                timestamp_ms: 0,
                version: "t".into(),
                payload: vec![1],
            }],
            ..Write::default()
        })
        .await?;
    drop(store);
    let store = LogStore::open(dir.path(), 4096)?;
    assert_eq!(store.highest_seq(&key).await?, next);
    Ok(())
}

/// Runs `crash-load` on `journal` in `dir` until enough commands were
/// acknowledged, kills it with SIGKILL, and returns the highest acknowledged
/// sequence number per entity.
fn kill_under_load(dir: &Path, journal: &str) -> Result<HashMap<String, u64>> {
    let wasm = cairn_tests::example_wasm("counter")?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-load"))
        .arg(dir)
        .arg(&wasm)
        .args(["32", &ENTITIES.to_string(), journal])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting crash-load")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut count = 0usize;
    let start = Instant::now();
    // Kill while the load runs, once a good number of commands were acknowledged.
    while count < 3000 && start.elapsed() < Duration::from_secs(60) {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let (id, seq) = rest.split_once(' ').context("ACK line")?;
                    let seq: u64 = seq.parse()?;
                    let e = acked.entry(id.to_owned()).or_default();
                    *e = (*e).max(seq);
                    count += 1;
                }
            }
            Err(_) => break,
        }
    }
    child.kill().context("SIGKILL")?; // std's kill sends SIGKILL on Unix
    let status = child.wait()?;
    assert!(
        !status.success(),
        "the load process was killed, not finished"
    );
    reader.join().ok();
    // Acknowledgements printed before the kill are still in the pipe.
    for line in rx.try_iter() {
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (id, seq) = rest.split_once(' ').context("ACK line")?;
            let seq: u64 = seq.parse()?;
            let e = acked.entry(id.to_owned()).or_default();
            *e = (*e).max(seq);
            count += 1;
        }
    }
    assert!(count >= 1000, "the load acknowledged only {count} commands");
    println!("{count} commands acknowledged before SIGKILL");
    Ok(acked)
}

/// Every acknowledged event is in `store`, contiguous from 1, and no partial
/// batch (each command writes 3 events) is visible.
async fn check(store: &dyn Journal, acked: &HashMap<String, u64>) -> Result<()> {
    let mut total = 0u64;
    for i in 0..ENTITIES {
        let id = format!("c-{i}");
        let key = EntityKey::new("counter", &id);
        let highest = store.highest_seq(&key).await?;
        let events = store.read(&key, 1, u64::MAX, usize::MAX).await?;
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=highest).collect::<Vec<_>>(),
            "{id}: contiguous from 1"
        );
        assert_eq!(
            highest % 3,
            0,
            "{id}: a partial batch is visible (highest #{highest})"
        );
        let acked_seq = acked.get(&id).copied().unwrap_or(0);
        assert!(
            highest >= acked_seq,
            "{id}: acknowledged #{acked_seq}, journal has #{highest}"
        );
        total += highest;
    }
    println!("{total} events in the journal after SIGKILL");
    Ok(())
}
