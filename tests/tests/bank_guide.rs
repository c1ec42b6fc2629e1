//! Check 1: the reference guide's three phases, to the number, on a real node
//! with the bank-account component and the SQLite journal.

use std::time::Duration;

use anyhow::Result;
use cairn_host::node::{AskOptions, LifecycleEvent};
use cairn_store::EntityKey;
use cairn_tests::{start_node, wait_for};
use serde_json::{Value, json};

const TOML: &str = "[entities.\"bank-account\".snapshot]\nevery = 5\n";

async fn ask(node: &cairn_host::node::Node, id: &str, cmd: Value) -> Result<Value> {
    let r = node
        .ask_json("bank-account", id, &cmd.to_string(), AskOptions::default())
        .await?;
    Ok(serde_json::from_str(
        &r.reply.unwrap_or_else(|| "null".into()),
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_guide_three_phases() -> Result<()> {
    let dir = tempfile::tempdir()?;

    // Phase 1: transactions.
    {
        let node = start_node(dir.path(), TOML, &["bank-account"]).await?;
        assert_eq!(
            ask(&node, "acct-1", json!({"Deposit": {"amount": 100}})).await?,
            json!("ok")
        );
        assert_eq!(
            ask(&node, "acct-1", json!({"Deposit": {"amount": 50}})).await?,
            json!("ok")
        );
        assert_eq!(
            ask(&node, "acct-1", json!({"Withdraw": {"amount": 30}})).await?,
            json!("ok")
        );
        assert_eq!(
            ask(&node, "acct-1", json!({"Withdraw": {"amount": 999}})).await?,
            json!("insufficient funds (balance: 120)")
        );
        assert_eq!(ask(&node, "acct-1", json!("GetBalance")).await?, json!(120));

        let events = node
            .events("bank-account", "acct-1", 1, u64::MAX, 100)
            .await?;
        let rendered: Vec<(u64, Value)> = events
            .iter()
            .map(|e| {
                let j = node.event_to_json("bank-account", &e.payload).unwrap();
                (e.seq, serde_json::from_str(&j).unwrap())
            })
            .collect();
        assert_eq!(
            rendered,
            vec![
                (1, json!({"Deposited": {"amount": 100}})),
                (2, json!({"Deposited": {"amount": 50}})),
                (3, json!({"Withdrawn": {"amount": 30}})),
            ]
        );
        assert!(
            events
                .iter()
                .all(|e| e.version == "1.0.0" && e.timestamp_ms > 0)
        );
        node.shutdown(Duration::from_secs(5)).await;
    }

    // Phase 2: a fresh node on the same data directory recovers 120.
    {
        let node = start_node(dir.path(), TOML, &["bank-account"]).await?;
        let mut lc = node.lifecycle();
        assert_eq!(ask(&node, "acct-1", json!("GetBalance")).await?, json!(120));
        let ev = wait_for(&mut lc, Duration::from_secs(5), |e| {
            matches!(e, LifecycleEvent::Started { .. })
        })
        .await?;
        assert!(
            matches!(
                ev,
                LifecycleEvent::Started {
                    snapshot_seq: None,
                    replayed: 3,
                    seq: 3,
                    ..
                }
            ),
            "{ev:?}"
        );
        node.shutdown(Duration::from_secs(5)).await;
    }

    // Phase 3: snapshot every 5 events; 7 deposits of 10.
    {
        let node = start_node(dir.path(), TOML, &["bank-account"]).await?;
        for _ in 0..7 {
            assert_eq!(
                ask(&node, "acct-2", json!({"Deposit": {"amount": 10}})).await?,
                json!("ok")
            );
        }
        assert_eq!(ask(&node, "acct-2", json!("GetBalance")).await?, json!(70));
        let schema = node.descriptor("bank-account").unwrap().state_schema;
        let snap = node
            .snapshots()
            .load(&EntityKey::new("bank-account", "acct-2"), u64::MAX, schema)
            .await?
            .expect("a snapshot");
        assert_eq!(snap.seq, 5);
        let state: Value = serde_json::from_str(&node.state_to_json("bank-account", &snap.state)?)?;
        assert_eq!(state, json!({"balance": 50, "transactions": 5}));
        assert_eq!(
            node.events("bank-account", "acct-2", 1, u64::MAX, 100)
                .await?
                .len(),
            7
        );
        node.shutdown(Duration::from_secs(5)).await;
    }
    {
        let node = start_node(dir.path(), TOML, &["bank-account"]).await?;
        let mut lc = node.lifecycle();
        assert_eq!(ask(&node, "acct-2", json!("GetBalance")).await?, json!(70));
        let ev = wait_for(&mut lc, Duration::from_secs(5), |e| {
            matches!(e, LifecycleEvent::Started { .. })
        })
        .await?;
        assert!(
            matches!(
                ev,
                LifecycleEvent::Started {
                    snapshot_seq: Some(5),
                    replayed: 2,
                    seq: 7,
                    ..
                }
            ),
            "recovery must replay only 2 events: {ev:?}"
        );
        node.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}
