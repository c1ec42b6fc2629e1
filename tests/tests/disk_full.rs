//! A node's disk fails under load, in a 3-node cluster of real processes
//! (replicas 2, `min_acks` 1): issue 19's disk faults, each repeated.
//!
//! - **Full:** node 1's data directory is a small tmpfs mounted by the
//!   test; a filler file takes the rest of it.
//! - **Read-only:** node 1's data directory is an ext4 file system on a
//!   loop device (a file of the test's), mounted `errors=remount-ro`; the
//!   test makes ext4 record an error (`/sys/fs/ext4/<dev>/trigger_fs_error`),
//!   so the kernel turns it read-only under the running node, as it does
//!   on a failing disk.
//!
//! Both need root (mount, losetup), as CI has. Commands for node 1's shards
//! then fail with a clear error and are never acknowledged (its replicas
//! may hold them: the entity is read back from them before its next
//! write); the other shards keep serving, node 1 being one of their two
//! replicas. Node 1's log refuses every write after a failed sync until it
//! is reopened; if its decision log's storage fails too, the node stops
//! (fail-stop) and its shards fail over. Then the disk is healed (filler
//! removed; or unmounted, `e2fsck`, mounted again), node 1 restarted, and
//! its shards serve again. Checked at the end: every acknowledged deposit
//! is there, none beyond the indeterminate ones, and every node's journal
//! holds one history per entity.
//!
//! A restarted log zero-fills its next 256 KiB while there is space, and
//! writes into those allocated blocks rightly succeed on a full disk: the
//! load goes on until node 1's shards fail, bounded in count and time.
//!
//! Rounds: `CAIRN_DISK_ROUNDS` (20 of each fault). Every loop is bounded in
//! count and time.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cairn_client::{Client, ClientError};
use cairn_tests::cluster::*;

/// Runs a command of the test's disk setup; its output on failure.
fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {args:?} failed (the test needs root): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// How node 1's disk fails.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Full,
    ReadOnly,
}

/// Node 1's data directory on a file system of the test's, unmounted
/// (and its loop device detached) when dropped.
struct Disk {
    dir: PathBuf,
    /// The loop device and its image (read-only fault).
    r#loop: Option<(String, PathBuf)>,
    filler: PathBuf,
}

impl Disk {
    fn mount(dir: &Path, fault: Fault) -> Result<Disk> {
        std::fs::create_dir_all(dir)?;
        let d = dir.to_string_lossy().into_owned();
        let mut disk = Disk {
            dir: dir.to_owned(),
            r#loop: None,
            filler: dir.join("filler"),
        };
        match fault {
            Fault::Full => {
                run("mount", &["-t", "tmpfs", "-o", "size=64m", "tmpfs", &d])?;
            }
            Fault::ReadOnly => {
                let image = dir.with_extension("img");
                std::fs::File::create(&image)?.set_len(64 << 20)?;
                let img = image.to_string_lossy().into_owned();
                run("mkfs.ext4", &["-q", "-F", &img])?;
                let dev = run("losetup", &["-f", "--show", &img])?;
                // A loop device may keep a read-only flag from an earlier user.
                run("blockdev", &["--setrw", &dev])?;
                disk.r#loop = Some((dev, image));
                disk.mount_ext4()?;
            }
        }
        // The node's log goes beside the failing disk (`NodeProc` opens
        // `node.log`, which follows the link), so that its last lines are kept.
        std::os::unix::fs::symlink(dir.with_extension("log"), dir.join("node.log"))?;
        Ok(disk)
    }

    fn mount_ext4(&self) -> Result<()> {
        let (dev, _) = self.r#loop.as_ref().context("not a loop device")?;
        let d = self.dir.to_string_lossy().into_owned();
        run("mount", &["-o", "errors=remount-ro", dev, &d])?;
        Ok(())
    }

    /// Makes writes fail: fills the disk, or turns it read-only.
    fn break_it(&self, fault: Fault) -> Result<String> {
        match fault {
            Fault::Full => Ok(format!(
                "disk full ({} bytes of filler)",
                fill(&self.filler)?
            )),
            Fault::ReadOnly => {
                let (dev, _) = self.r#loop.as_ref().context("not a loop device")?;
                // The harness copied node 1's certificates without an
                // fsync; the node's own writes are its business.
                let tls = self.dir.join("tls");
                let mut paths = vec![self.dir.clone(), tls.clone()];
                for f in std::fs::read_dir(&tls)? {
                    paths.push(f?.path());
                }
                let paths: Vec<String> = paths
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
                run("sync", &paths)?;
                let name = dev.trim_start_matches("/dev/");
                std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "1")
                    .context("triggering an ext4 error")?;
                Ok("disk read-only".into())
            }
        }
    }

    /// Space again, or writable again (node 1 is stopped).
    fn heal(&self, fault: Fault) -> Result<()> {
        match fault {
            Fault::Full => Ok(std::fs::remove_file(&self.filler)?),
            Fault::ReadOnly => {
                let (_, image) = self.r#loop.as_ref().context("not a loop device")?;
                run("umount", &[&self.dir.to_string_lossy()])?;
                // e2fsck exits 1 when it fixed something, as it does here.
                let st = std::process::Command::new("e2fsck")
                    .arg("-fy")
                    .arg(image)
                    .output()?;
                ensure!(
                    matches!(st.status.code(), Some(0 | 1)),
                    "e2fsck failed: {st:?}"
                );
                self.mount_ext4()
            }
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        if let Some((dev, _)) = &self.r#loop {
            let _ = std::process::Command::new("losetup")
                .args(["-d", dev])
                .status();
        }
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
/// refused (the error says it was not applied: a final balance above the
/// acknowledged and indeterminate deposits would show one that was), None
/// indeterminate; the error text if any.
async fn deposit(client: &Client, id: &str) -> (Option<bool>, Option<String>) {
    let op = ask(client, id, r#"{"Deposit":{"amount":1}}"#);
    match tokio::time::timeout(Duration::from_secs(5), op).await {
        Ok(Ok(_)) => (Some(true), None),
        // Refused by the error contract: never applied, now or later (a
        // write every replica stored nothing of is one).
        Ok(Err(ClientError::Api(e))) if !e.may_have_applied() => (Some(false), Some(e.to_string())),
        Ok(Err(e)) => (None, Some(e.to_string())),
        Err(_) => (None, Some("no answer within 5 s".into())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_commands_and_loses_nothing_acknowledged() -> Result<()> {
    disk_fault(Fault::Full).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_disk_fails_commands_and_loses_nothing_acknowledged() -> Result<()> {
    disk_fault(Fault::ReadOnly).await
}

/// One cluster at a time: two would share the machine's two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn disk_fault(fault: Fault) -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let rounds: usize = std::env::var("CAIRN_DISK_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut c = Cluster::start_with(0, 3, None)?;
    let n1 = c.root.path().join("n1");
    let disk = Disk::mount(&n1, fault)?;
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
        let what = disk.break_it(fault)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut failed_n1, mut ok_others, mut first_error) = (0, 0, None);
        let (mut sent, mut ok_n1, started) = (0, 0, Instant::now());
        let mut other_errors = HashMap::new();
        let mut stopped = None;
        while (failed_n1 < 20 || ok_others < 20) && Instant::now() < deadline && sent < 50_000 {
            // Fail-stop: a node whose decision log's storage failed stops;
            // its shards then fail over, so they need not fail for long.
            stopped = stopped.or_else(|| c.nodes[0].exited());
            if stopped.is_some() && ok_others >= 20 {
                break;
            }
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
                    } else {
                        ok_n1 += 1;
                    }
                } else if r == Some(true) {
                    ok_others += 1;
                } else {
                    let e: String = err.unwrap_or_default().chars().take(90).collect();
                    *other_errors.entry(e).or_insert(0usize) += 1;
                }
            }
        }
        ensure!(
            failed_n1 >= 20 || stopped.is_some(),
            "round {round}: {what} on node 1 but its shards kept acknowledging: {ok_n1} ok, {failed_n1} failed, {sent} sent in {:?}; the other shards: {ok_others} ok, failures {other_errors:?}",
            started.elapsed()
        );
        ensure!(
            ok_others >= 20,
            "round {round}: the other shards stopped serving while node 1's disk failed"
        );
        eprintln!(
            "round {round}: {what}: {failed_n1} commands of node 1's shards failed, first: {}{}",
            first_error.unwrap_or_default(),
            match stopped {
                Some(st) => format!("; node 1 stopped ({st}) and its shards failed over"),
                None => String::new(),
            }
        );

        // The disk healed and node 1 restarted (its log refuses every write
        // after a failed sync until it is reopened, as the kernel may have
        // dropped those pages): node 1's shards serve again.
        c.nodes[0].kill();
        disk.heal(fault)?;
        c.nodes[0].restart()?;
        wait_status(c.node(1), Duration::from_secs(60), "node 1 back", |s| {
            up_count(s) == 3
        })
        .await?;
        // Each of them acknowledges a deposit again (shards move back to
        // node 1 meanwhile, so one pass need not find all of them serving).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut waiting: HashMap<&String, String> = on_n1
            .iter()
            .map(|id| (id, "not asked yet".to_owned()))
            .collect();
        while !waiting.is_empty() {
            ensure!(
                Instant::now() < deadline,
                "round {round}: {} of node 1's entities do not serve 60 s after the disk healed: {waiting:?}",
                waiting.len()
            );
            let ids: Vec<&String> = waiting.keys().copied().collect();
            for id in ids {
                let (r, err) = deposit(&client, id).await;
                record(id, r);
                if r == Some(true) {
                    waiting.remove(id);
                } else {
                    waiting.insert(id, err.unwrap_or_default());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("round {round}: disk healed, node 1's shards serve");
    }

    // Every acknowledged deposit is there; nothing beyond the indeterminate.
    for id in &ids {
        // A read changes nothing: one refused while shards still move back
        // to node 1 is asked again.
        let deadline = Instant::now() + Duration::from_secs(15);
        let b = loop {
            match balance(&client, id).await {
                Ok(b) => break b,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("balance of {id}: {e:#}; again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        };
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
