//! Appends/s of the SQLite journal alone: N concurrent tasks each appending
//! one-event writes to their own entities, acknowledged after fsync.
//!
//! Run: `cargo run --release -p cairn-store --example append_bench [TASKS] [TOTAL] [log]`
//! (`log` measures the append-only log backend instead of SQLite).

use std::time::Instant;

use std::sync::Arc;

use cairn_store::{EntityKey, EventRecord, Journal, LogStore, SqliteOptions, SqliteStore, Write};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let tasks = args.first().copied().unwrap_or(256);
    let total = args.get(1).copied().unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("cairn-append-bench-{}", std::process::id()));
    let use_log = std::env::args().any(|a| a == "log");
    let (store, sqlite): (Arc<dyn Journal>, Option<Arc<SqliteStore>>) = if use_log {
        (LogStore::open(&dir, 4096)?, None)
    } else {
        let s = SqliteStore::open(&dir, SqliteOptions::default())?;
        (s.clone(), Some(s))
    };
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let per = total / tasks;
        handles.push(tokio::spawn(async move {
            for i in 0..per {
                let key = EntityKey::new("bench", format!("e-{t}-{}", i % 40));
                let w = Write {
                    key,
                    events: vec![EventRecord {
                        seq: (i / 40 + 1) as u64,
                        timestamp_ms: 1,
                        version: "1.0.0".into(),
                        payload: vec![0x81, 0xa9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                    }],
                    ..Write::default()
                };
                store.append(w).await.expect("append");
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}, {tasks} tasks: {:.0} durable appends/s ({total} in {secs:.2} s)",
        if use_log { "log" } else { "sqlite" },
        total as f64 / secs
    );
    if let Some(sqlite) = sqlite {
        let st = sqlite.stats();
        println!(
            "{} commits, {:.1} writes per commit, {:.0} µs per commit (insert + fsync), writer busy {:.0}%",
            st.commits,
            st.writes as f64 / st.commits.max(1) as f64,
            st.busy_us as f64 / st.commits.max(1) as f64,
            st.busy_us as f64 / 1e6 / secs * 100.0
        );
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
