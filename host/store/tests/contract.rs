//! The contract suite of `cairn_store::testkit` against the backends it can
//! reach cheaply here; the event log also runs on the simulated disk, which
//! shows that the disk behaves as a file does (the crash tests rely on it).
//! `tests/tests/journal.rs` runs it against every backend.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cairn_store::testkit::{self, SimDisk};
use cairn_store::{LogStore, MemoryStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_keeps_the_contract() {
    testkit::run_all(|_| MemoryStore::new(), false).await;
}

/// One simulated disk per directory, so that reopening finds the data.
fn sim_opener(direct: bool) -> impl Fn(&Path) -> Arc<LogStore> {
    let disks: Mutex<HashMap<PathBuf, SimDisk>> = Mutex::default();
    move |dir| {
        let disk = disks
            .lock()
            .unwrap()
            .entry(dir.to_owned())
            .or_default()
            .clone();
        LogStore::open_sim(&disk, 4096, direct).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_on_a_simulated_disk_keeps_the_contract() {
    testkit::run_all(sim_opener(true), true).await;
    testkit::run_all(sim_opener(false), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_keeps_the_contract() {
    testkit::run_all(|dir| LogStore::open(dir, 4096).unwrap(), true).await;
}
