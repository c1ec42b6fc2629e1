//! Logs written before closing markers existed still open: the committed
//! `fixtures/events-v2.log` (format 2, written by the log as it was before
//! clean closes wrote a closing marker), and the same records as format 1
//! (no batch markers), built from it.

use cairn_store::{EntityKey, Journal, JournalError, LogStore, SnapshotStore};

const FIXTURE: &[u8] = include_bytes!("fixtures/events-v2.log");

/// Record frames `(start, end)` after the 12-byte header.
fn frames(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 12;
    while pos + 8 <= b.len() {
        let len = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push((pos, pos + 8 + len));
        pos += 8 + len;
    }
    out
}

async fn check_contents(dir: &std::path::Path) {
    let s = LogStore::open(dir, 16).unwrap();
    let a = EntityKey::new("bank-account", "acct-1");
    let b = EntityKey::new("bank-account", "acct-2");
    let payloads = |k: &EntityKey| {
        let s = s.clone();
        let k = k.clone();
        async move {
            s.read(&k, 1, u64::MAX, usize::MAX)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.seq, String::from_utf8(e.payload).unwrap()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        payloads(&a).await,
        [(1, "open"), (2, "deposit 100"), (3, "withdraw 30")].map(|(q, p)| (q, p.to_owned()))
    );
    // acct-2 was truncated after #2.
    assert_eq!(
        payloads(&b).await,
        [(1, "open"), (2, "deposit 5")].map(|(q, p)| (q, p.to_owned()))
    );
    let snap = s.load(&a, u64::MAX, 1).await.unwrap().unwrap();
    assert_eq!((snap.seq, snap.state), (2, b"balance=100".to_vec()));
    assert!(
        s.pending_timers().await.unwrap().is_empty(),
        "timer 7 was removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_2_log_without_a_closing_marker_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.log");
    std::fs::write(&path, FIXTURE).unwrap();
    check_contents(dir.path()).await;
    // Reopened after this build closed it: the same, now with a closing marker.
    check_contents(dir.path()).await;
    // Damage before its last batch is refused, as before.
    let mut bad = FIXTURE.to_vec();
    let (first, _) = frames(FIXTURE)[1];
    bad[first + 9] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let e = LogStore::open(dir.path(), 16).err().expect("refused");
    assert!(
        matches!(&e, JournalError::Damaged(d) if d.offset == first as u64),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_log_opens_and_continues() {
    let mut v1 = b"CAIRNLOG".to_vec();
    v1.extend_from_slice(&1u32.to_le_bytes());
    for (s, e) in frames(FIXTURE) {
        // Format 1 had no batch markers (9-byte bodies of kind 3).
        if !(e - s == 17 && FIXTURE[s + 8] == 3) {
            v1.extend_from_slice(&FIXTURE[s..e]);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("events.log"), &v1).unwrap();
    check_contents(dir.path()).await;
    check_contents(dir.path()).await;
}
