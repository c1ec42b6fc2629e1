//! Old data stays readable: a v1 node data directory (journal, snapshots,
//! registry and the v1 component), committed in `tests/fixtures`, is opened
//! by today's host; the v1 component it holds serves from it, and today's
//! later bank-account versions replay its events.

use std::path::Path;

use anyhow::Result;
use cairn_host::config::{Config, JournalBackend};
use cairn_host::node::{AskOptions, Node, NodeError};
use cairn_store::JournalError;
use cairn_tests::{example_bytes, workspace_root};

const TYPE: &str = "bank-account";

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

async fn balance(node: &Node, id: &str) -> Result<String> {
    let r = node
        .ask_json(TYPE, id, r#""GetBalance""#, AskOptions::default())
        .await?;
    Ok(r.reply.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_data_directory_is_served_and_replayed_by_later_versions() -> Result<()> {
    let fixture = workspace_root().join("tests/fixtures/bank-account-v1");
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    copy_dir(&fixture, &data)?;
    let mut config = Config::load(&fixture.join("cairn.toml"))?;
    config.node.data_dir = data.clone();

    // Opened as the wrong kind of journal, it is refused and left alone.
    let mut wrong = config.clone();
    wrong.node.journal = JournalBackend::Log;
    let err = Node::open(wrong)
        .await
        .err()
        .expect("a SQLite data dir opened as a log");
    assert!(
        matches!(&err, NodeError::Storage(JournalError::Invalid(m)) if m.contains("journal = \"sqlite\"")),
        "{err}"
    );
    assert!(!data.join("events.log").exists(), "no empty log was made");

    let node = Node::open(config).await?;

    // Opening restores the v1 component stored in the fixture's registry.
    let restored = node.deployments();
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].behavior_version, "1.0.0");
    assert_eq!(balance(&node, "acct-1").await?, "120");
    assert_eq!(balance(&node, "acct-2").await?, "70");
    let events = node.events(TYPE, "acct-1", 1, u64::MAX, 100).await?;
    let json: Vec<String> = events
        .iter()
        .map(|e| node.event_to_json(TYPE, &e.payload))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        json,
        [
            r#"{"Deposited":{"amount":100}}"#,
            r#"{"Deposited":{"amount":50}}"#,
            r#"{"Withdrawn":{"amount":30}}"#,
        ]
    );
    assert!(events.iter().all(|e| e.version == "1.0.0"));

    // Today's v2 (same state schema: the v1 snapshot carries over) and v3
    // (new state schema: rebuilt from events) replay every v1 event.
    for (example, version) in [("bank-account-v2", 2), ("bank-account-v3", 3)] {
        let r = node
            .deploy_checked(TYPE, example_bytes(example)?, false)
            .await?;
        assert!(r.report.passed(), "{example}: {}", r.report.summary());
        assert_eq!(r.report.sampled, 2);
        assert_eq!(r.deployment.map(|d| d.deploy), Some(version));
        assert_eq!(balance(&node, "acct-1").await?, "120");
        assert_eq!(balance(&node, "acct-2").await?, "70");
    }
    // v3 started acct-2 from its events, not from the schema-1 snapshot.
    let (state, seq) = node.state(TYPE, "acct-2").await?;
    assert_eq!(seq, 7);
    assert!(node.state_to_json(TYPE, &state)?.contains("\"cents\":7000"));
    node.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}
