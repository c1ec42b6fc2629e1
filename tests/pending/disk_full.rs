//! NOT IN THE SUITE YET (cargo does not build `tests/pending/`): move it
//! to `tests/tests/` once it passes every round. What it found so far: the
//! first two rounds pass (a clear `No space left on device` error, nothing
//! acknowledged, the other shards serving, node 1 serving again after
//! space and a restart). The third fails because node 1's shards keep
//! acknowledging on a 100% full tmpfs. That is correct: a restarted log
//! zero-fills its next 256 KiB while there is space, and writes into those
//! allocated blocks are durable. So the test must write past that region
//! before it expects failures (more writes, or a longer window; a round
//! here takes ~4 s per pass because some asks wait out their 5 s timeout,
//! which is worth a look too). A replica also once refused a different
//! event at a sequence number it held: the divergence check working, but
//! the primary should have read that event back after its restart.
//!
//! A node's disk fills up under load, in a 3-node cluster of real
//! processes (replicas 2, `min_acks` 1). Node 1's data directory is a small
//! tmpfs mounted by the test (it runs as root, as CI does); a filler file
//! takes the rest of it. Commands for node 1's shards then fail with a
//! clear error and are never acknowledged (its replicas may hold them: the
//! entity is read back from them before its next write); the other shards
//! keep serving, node 1 being one of their two replicas. Node 1's log
//! refuses every write after a failed sync until it is reopened, so once
//! the filler is removed node 1 is restarted, and its shards serve again. Checked at the end: every
//! acknowledged deposit is there, none beyond the indeterminate ones, and
//! every node's journal holds one history per entity.
//!
//! Rounds: `CAIRN_DISK_ROUNDS` (3). Every loop is bounded in count and time.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cairn_host::api::ApiError;
use cairn_host::client::{Client, ClientError};
use cairn_tests::cluster::*;

/// A tmpfs mounted for the test, lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .context("running mount")?;
        ensure!(
            out.status.success(),
            "mount tmpfs on {} failed (the test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if std::env::var_os("CAIRN_TEST_KEEP").is_some() {
            let _ = std::fs::copy(self.0.join("node.log"), self.0.with_extension("log"));
        }
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `dir` with `path` until a write fails.
fn fill(path: &Path) -> Result<u64> {
    let mut f = std::fs::File::create(path)?;
    let mut n = 0u64;
    for chunk in [1 << 20, 4 << 10, 512] {
        let buf = vec![0xa5u8; chunk];
        // Bounded: the tmpfs is small.
        for _ in 0..10_000 {
            if f.write_all(&buf).and_then(|()| f.sync_data()).is_err() {
                break;
            }
            n += chunk as u64;
        }
    }
    Ok(n)
}

/// What became of the deposits to one entity.
#[derive(Default, Debug)]
struct Tally {
    ok: i64,
    maybe: i64,
}

/// One deposit through `client`: Some(true) acknowledged, Some(false)
/// refused before it ran, None indeterminate; the error text if any.
async fn deposit(client: &Client, id: &str) -> (Option<bool>, Option<String>) {
    let op = ask(client, id, r#"{"Deposit":{"amount":1}}"#);
    match tokio::time::timeout(Duration::from_secs(5), op).await {
        Ok(Ok(_)) => (Some(true), None),
        Ok(Err(ClientError::Api(e @ (ApiError::Busy(_) | ApiError::NotOwner { .. })))) => {
            (Some(false), Some(e.to_string()))
        }
        Ok(Err(e)) => (None, Some(e.to_string())),
        Err(_) => (None, Some("no answer within 5 s".into())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_commands_and_loses_nothing_acknowledged() -> Result<()> {
    let rounds: usize = std::env::var("CAIRN_DISK_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut c = Cluster::start_with(0, 3, None)?;
    let n1 = c.root.path().join("n1");
    let _disk = Tmpfs::mount(&n1, "64m")?;
    for i in 0..3 {
        c.add(i, 3)?;
    }
    for n in &c.nodes {
        wait_status(n, Duration::from_secs(30), "three up members", |s| {
            up_count(s) == 3
        })
        .await?;
    }
    wait_status(
        c.node(1),
        Duration::from_secs(10),
        "shards allocated",
        |s| shards(s).values().sum::<u64>() == 256,
    )
    .await?;
    deploy(&c).await?;

    let ids: Vec<String> = (0..60).map(|k| format!("d-{k}")).collect();
    let client = std::sync::Arc::new(c.node(1).client().await?);
    let mut tally: HashMap<String, Tally> = HashMap::new();
    let mut record = |id: &str, r: Option<bool>| {
        let t = tally.entry(id.to_owned()).or_default();
        match r {
            Some(true) => t.ok += 1,
            Some(false) => {}
            None => t.maybe += 1,
        }
    };
    let filler = n1.join("filler");
    for round in 0..rounds {
        // The entities node 1 owns now (after a restart it gets shards
        // back by rebalancing).
        let deadline = Instant::now() + Duration::from_secs(60);
        let on_n1: Vec<String> = loop {
            let s = status(c.node(1))?;
            let owner = owners(&s, "bank-account", &ids);
            let mine: Vec<String> = ids
                .iter()
                .filter(|id| owner[*id] == c.node(0).addr.to_string())
                .cloned()
                .collect();
            if mine.len() >= 5 {
                break mine;
            }
            ensure!(
                Instant::now() < deadline,
                "round {round}: node 1 owns {} of the entities",
                mine.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The disk fills up: node 1's shards fail, the others serve.
        let filled = fill(&filler)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut failed_n1, mut ok_others, mut first_error) = (0, 0, None);
        let mut sent = 0;
        while (failed_n1 < 20 || ok_others < 20) && Instant::now() < deadline && sent < 50_000 {
            // One deposit to every entity at once: a command that waits
            // (its shard held) does not hold up the others.
            let mut tasks = tokio::task::JoinSet::new();
            for id in ids.iter().cloned() {
                let client = client.clone();
                tasks.spawn(async move {
                    let (r, err) = deposit(&client, &id).await;
                    (id, r, err)
                });
            }
            while let Some(done) = tasks.join_next().await {
                let (id, r, err) = done?;
                let id = &id;
                sent += 1;
                record(id, r);
                if on_n1.contains(id) {
                    if r != Some(true) {
                        failed_n1 += 1;
                        first_error = first_error.or(err);
                    }
                } else if r == Some(true) {
                    ok_others += 1;
                }
            }
        }
        ensure!(
            failed_n1 >= 20,
            "round {round}: node 1's disk is full ({filled} bytes of filler) but its shards kept acknowledging"
        );
        ensure!(
            ok_others >= 20,
            "round {round}: the other shards stopped serving while node 1's disk was full"
        );
        eprintln!(
            "round {round}: disk full ({filled} bytes of filler): {failed_n1} commands of node 1's shards failed, first: {}",
            first_error.unwrap_or_default()
        );

        // Space again, and node 1 restarted (its log refuses every write
        // after a failed sync until it is reopened, as the kernel may have
        // dropped those pages): node 1's shards serve again.
        std::fs::remove_file(&filler)?;
        c.nodes[0].kill();
        c.nodes[0].restart()?;
        wait_status(c.node(1), Duration::from_secs(60), "node 1 back", |s| {
            up_count(s) == 3
        })
        .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < on_n1.len() {
            ensure!(
                Instant::now() < deadline,
                "round {round}: node 1's shards do not serve 60 s after the disk has space again"
            );
            served = 0;
            for id in &on_n1 {
                let (r, _) = deposit(&client, id).await;
                record(id, r);
                if r == Some(true) {
                    served += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("round {round}: space again, node 1's shards serve");
    }

    // Every acknowledged deposit is there; nothing beyond the indeterminate.
    for id in &ids {
        let b = balance(&client, id).await?;
        let t = tally.get(id.as_str()).map_or((0, 0), |t| (t.ok, t.maybe));
        ensure!(
            b >= t.0 && b <= t.0 + t.1,
            "{id}: balance {b}, acknowledged {}, indeterminate {}",
            t.0,
            t.1
        );
    }
    client.close().await;

    // One history per entity in every journal.
    for n in &mut c.nodes {
        n.kill();
    }
    one_history_per_entity(&c.nodes, &ids).await
}
