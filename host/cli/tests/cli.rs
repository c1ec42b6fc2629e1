//! The `cairn` binary's offline commands. (Having an integration test here
//! also makes `cargo test --workspace` build the binary that the black-box
//! tests in `tests/` drive.)

use std::process::Command;

fn cairn(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("run cairn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_command() {
    let (ok, out, _) = cairn(&["--help"]);
    assert!(ok);
    for cmd in [
        "node", "deploy", "ask", "tell", "events", "state", "types", "tail", "certs", "bench",
        "journal",
    ] {
        assert!(out.contains(cmd), "--help does not mention {cmd}:\n{out}");
    }
}

#[test]
fn certs_init_creates_files_and_refuses_to_overwrite() {
    let dir = std::env::temp_dir().join(format!("cairn-cli-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let (ok, _, err) = cairn(&["certs", "init", "--dir", d, "--name", "node-a"]);
    assert!(ok, "{err}");
    for f in [
        "ca.pem",
        "ca.key",
        "node/ca.pem",
        "node/node.pem",
        "node/node.key",
        "client/ca.pem",
        "client/client.pem",
        "client/client.key",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    assert!(!dir.join("node/ca.key").exists() && !dir.join("client/ca.key").exists());
    // One more node, with the id it is given, and one more client.
    let n2 = dir.join("n2");
    let (ok, out, err) = cairn(&[
        "certs",
        "node",
        "--ca",
        d,
        "--out",
        n2.to_str().unwrap(),
        "--id",
        "77",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("node 77"), "{out}");
    assert!(n2.join("node.pem").exists() && !n2.join("ca.key").exists());
    let (ok, _, err) = cairn(&[
        "certs",
        "node",
        "--ca",
        d,
        "--out",
        n2.to_str().unwrap(),
        "--id",
        "78",
    ]);
    assert!(!ok && err.contains("already holds certificates"), "{err}");
    let c2 = dir.join("c2");
    let (ok, _, err) = cairn(&["certs", "client", "--ca", d, "--out", c2.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(c2.join("client.key").exists());
    let (ok, _, err) = cairn(&["certs", "init", "--dir", d]);
    assert!(!ok);
    assert!(err.contains("already holds certificates"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn client_commands_without_a_node_fail_clearly() {
    let dir = std::env::temp_dir().join(format!("cairn-cli-none-{}", std::process::id()));
    let (ok, _, err) = cairn(&["types", "--certs", dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("no certificates"), "{err}");
}

#[test]
fn bench_probes_the_disk_only_when_asked() {
    let (ok, out, _) = cairn(&["bench", "--help"]);
    assert!(ok);
    assert!(
        out.contains("--probe-disk") && out.contains("Benchmark only"),
        "{out}"
    );
    // --fsync-dir only means something with --probe-disk.
    let (ok, _, err) = cairn(&["bench", "--fsync-dir", "."]);
    assert!(!ok);
    assert!(err.contains("--probe-disk"), "{err}");
}

/// A log closed cleanly, then a bit flipped in its last batch: the node's
/// store refuses it naming the offset; `journal check` reports the damage
/// and fails; `journal cut` refuses a wrong offset and a log in use, then
/// makes a backup, cuts, and lists what was lost; the log opens again.
#[test]
fn journal_check_and_cut_a_damaged_log() {
    use cairn_store::{EntityKey, EventRecord, Journal, JournalError, LogStore, Write};
    let dir = std::env::temp_dir().join(format!("cairn-cli-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let key = |id: &str| EntityKey::new("bank-account", id);
    let write = |id: &str, seq: u64| Write {
        key: key(id),
        events: vec![EventRecord {
            seq,
            timestamp_ms: seq,
            version: "v1".into(),
            payload: vec![7; 16],
        }],
        ..Write::default()
    };
    let mut ends = Vec::new();
    rt.block_on(async {
        let s = LogStore::open(&dir, 16).unwrap();
        for (id, seq) in [("a", 1), ("a", 2), ("b", 1)] {
            s.append(write(id, seq)).await.unwrap();
            ends.push(std::fs::metadata(s.path()).unwrap().len());
        }
    });
    let path = dir.join("events.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let data: Vec<u64> = frame_starts(&bytes);
    // The last write (b #1) is the record after the last batch marker.
    let last = data[data.len() - 2] as usize;
    // A bit of its payload (its last 8 bytes are its timer counts).
    bytes[data[data.len() - 1] as usize - 12] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let e = LogStore::open(&dir, 16).err().expect("refused");
    assert!(
        matches!(&e, JournalError::Damaged(d) if d.offset == last as u64),
        "{e}"
    );
    let d = dir.to_str().unwrap();
    let (ok, out, err) = cairn(&["journal", "check", "--data-dir", d]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("damaged at byte {last}")), "{out}");
    assert!(err.contains(&format!("--at {last}")), "{err}");

    let (ok, _, err) = cairn(&["journal", "cut", "--data-dir", d, "--at", "12"]);
    assert!(!ok);
    assert!(
        err.contains(&format!("the damage is at byte {last}")),
        "{err}"
    );
    // A process holding the log (a node) blocks the cut.
    {
        let holder = std::fs::File::open(&path).unwrap();
        holder.lock_shared().unwrap();
        let (ok, _, err) = cairn(&["journal", "cut", "--data-dir", d, "--at", &last.to_string()]);
        assert!(!ok);
        assert!(err.contains("in use by another process"), "{err}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut");

    let (ok, out, err) = cairn(&["journal", "cut", "--data-dir", d, "--at", &last.to_string()]);
    assert!(ok, "{err}");
    let backup = out
        .lines()
        .find_map(|l| l.strip_prefix("backup: "))
        .and_then(|l| l.split(" (").next())
        .expect("the backup is named");
    assert_eq!(
        std::fs::read(backup).unwrap(),
        bytes,
        "the backup is the whole file"
    );
    assert!(out.contains("bank-account/b (event #1)"), "{out}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), last as u64);

    let (ok, out, err) = cairn(&["journal", "check", "--data-dir", d]);
    assert!(ok, "{out}{err}");
    rt.block_on(async {
        let s = LogStore::open(&dir, 16).unwrap();
        assert_eq!(s.highest_seq(&key("a")).await.unwrap(), 2);
        assert_eq!(s.highest_seq(&key("b")).await.unwrap(), 0);
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Offsets of the records of a log image (frames `[u32 len][u32 crc][body]`
/// after a 12-byte header), up to the first zero frame.
fn frame_starts(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push(pos as u64);
        pos += 8 + len;
    }
    out
}
