//! Hot swap against a real node process and real components: a deploy under
//! load loses nothing, versions that cannot replay history are refused with a
//! report, rollback is validated the same way, and versions and the deploy
//! history survive a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use cairn_client::{Client, ClientError};
use cairn_host::api::{ApiError, DeployAction, DeployOutcome, Payload};
use cairn_tests::{NodeProc, example_bytes, example_wasm};

const TYPE: &str = "bank-account";

async fn deposit(c: &Client, id: &str, amount: i64) -> Result<String, ClientError> {
    let (reply, _) = c
        .ask_json(TYPE, id, &format!(r#"{{"Deposit":{{"amount":{amount}}}}}"#))
        .await?;
    Ok(reply.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_under_load_loses_no_command() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("data"), &[])?;
    let client = node.client().await?;
    client.deploy(TYPE, example_bytes("bank-account")?).await?;
    let v2 = example_bytes("bank-account-v2")?;

    // 1,000 entities, 16 concurrent senders, until a while after the deploy.
    const ENTITIES: usize = 1000;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..16 {
        let c = client.clone();
        let stop = stop.clone();
        senders.push(tokio::spawn(async move {
            // (entity, amount, reply) of every command sent.
            let mut sent: Vec<(usize, i64, Result<String, String>)> = Vec::new();
            let mut i = s;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let e = i % ENTITIES;
                let amount = (i % 7 + 1) as i64;
                let r = deposit(&c, &format!("h{e}"), amount).await;
                sent.push((e, amount, r.map_err(|e| e.to_string())));
                i += 16;
            }
            sent
        }));
    }
    // Let every entity get some v1 history first.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let deployer = node.client().await?;
    let t = Instant::now();
    let d = deployer.deploy_with(TYPE, v2, false).await?;
    let took = t.elapsed();
    assert!(d.changed);
    assert_eq!(d.info.as_ref().map(|i| i.deploy), Some(2));
    assert!(d.report.passed(), "{}", d.report.summary());
    assert!(d.report.sampled > 0, "validation replayed nothing");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut expected: HashMap<usize, (usize, i64)> = HashMap::new();
    let mut total = 0;
    for s in senders {
        for (e, amount, r) in s.await? {
            total += 1;
            let reply = r.unwrap_or_else(|err| panic!("a command failed during the swap: {err}"));
            assert_eq!(reply, "\"ok\"");
            let x = expected.entry(e).or_default();
            x.0 += 1;
            x.1 += amount;
        }
    }
    assert!(total > ENTITIES, "too little load: {total} commands");
    eprintln!("{total} commands, deploy took {took:?}");

    // Every acknowledged deposit is in the journal exactly once, balances
    // match, and after the cutover events carry the new version.
    let (mut v1_events, mut v2_events) = (0, 0);
    for (e, (count, sum)) in &expected {
        let id = format!("h{e}");
        let events = client.events(TYPE, &id, 1, u64::MAX, 100_000).await?;
        assert_eq!(events.len(), *count, "{id}");
        let mut seen_v2 = false;
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(ev.seq, i as u64 + 1);
            let json = ev.json.as_deref().unwrap_or("");
            match ev.behavior_version.as_str() {
                "1.0.0" => {
                    assert!(!seen_v2, "{id}: a v1 event after a v2 event");
                    assert!(json.contains("Deposited") || json.contains("Credited"));
                    v1_events += 1;
                }
                "2.0.0" => {
                    seen_v2 = true;
                    v2_events += 1;
                }
                other => panic!("unexpected version {other}"),
            }
        }
        let (reply, _) = client.ask_json(TYPE, &id, r#""GetBalance""#).await?;
        assert_eq!(reply.as_deref(), Some(sum.to_string().as_str()), "{id}");
    }
    assert!(
        v1_events > 0 && v2_events > 0,
        "{v1_events} v1, {v2_events} v2"
    );
    // A new deposit is a v2 event, rendered in v2's shape.
    deposit(&client, "h0", 1).await?;
    let last = client.events(TYPE, "h0", 1, u64::MAX, 100_000).await?;
    let last = last.last().expect("events");
    assert_eq!(last.behavior_version, "2.0.0");
    assert!(last.json.as_deref().unwrap_or("").contains("Credited"));
    client.close().await;
    deployer.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_that_cannot_replay_history_are_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("data"), &[])?;
    let client = node.client().await?;
    client.deploy(TYPE, example_bytes("bank-account")?).await?;
    // "a-fine": deposits only. "b-withdrew": a withdrawal, which the broken
    // version cannot decode. "c-thirteen": a deposit of 13, on which the
    // broken version traps.
    deposit(&client, "a-fine", 5).await?;
    deposit(&client, "b-withdrew", 100).await?;
    client
        .ask_json(TYPE, "b-withdrew", r#"{"Withdraw":{"amount":30}}"#)
        .await?;
    deposit(&client, "c-thirteen", 1).await?;
    deposit(&client, "c-thirteen", 13).await?;

    let broken = example_bytes("bank-account-broken")?;
    let report = match client.deploy_with(TYPE, broken.clone(), false).await {
        Err(ClientError::Api(ApiError::ValidationFailed(r))) => r,
        other => panic!("the broken version was not refused: {other:?}"),
    };
    assert_eq!(report.sampled, 3);
    assert_eq!(report.failed, 2, "{report:?}");
    let failure = |id: &str| {
        report
            .failures
            .iter()
            .find(|f| f.entity_id == id)
            .unwrap_or_else(|| panic!("no failure for {id}: {report:?}"))
    };
    let decode = failure("b-withdrew");
    assert_eq!(decode.seq, 2);
    assert!(decode.error.contains("Withdrawn"), "{}", decode.error);
    let trap = failure("c-thirteen");
    assert_eq!(trap.seq, 2);
    assert!(trap.error.contains("trap"), "{}", trap.error);

    // The active version stays and serves.
    let v = client.versions(TYPE).await?;
    assert_eq!(v.active, Some(1));
    assert_eq!(v.versions.len(), 1);
    let refused = v.history.last().expect("history");
    assert_eq!(refused.outcome, DeployOutcome::Refused);
    assert_eq!(refused.report.failed, 2);
    assert_eq!(deposit(&client, "a-fine", 1).await?, "\"ok\"");
    let events = client.events(TYPE, "a-fine", 1, u64::MAX, 10).await?;
    assert_eq!(
        events.last().map(|e| e.behavior_version.as_str()),
        Some("1.0.0")
    );

    // The CLI says so too, with a non-zero exit, and names the entity.
    let path = example_wasm("bank-account-broken")?;
    let (ok, _, err) = node.cli(&["deploy", TYPE, path.to_str().unwrap()])?;
    assert!(!ok);
    assert!(
        err.contains("deploy refused") && err.contains("b-withdrew"),
        "{err}"
    );

    // A dry run of a good version passes and changes nothing.
    let v2 = example_wasm("bank-account-v2")?;
    let (ok, out, err) = node.cli(&["deploy", "--check", TYPE, v2.to_str().unwrap()])?;
    assert!(ok, "{err}");
    assert!(out.contains("check passed"), "{out}");
    assert_eq!(client.versions(TYPE).await?.active, Some(1));
    client.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_is_validated_and_versions_survive_a_restart() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut node = NodeProc::start(&tmp.path().join("data"), &[])?;
    let v1 = example_wasm("bank-account")?;
    let v2 = example_wasm("bank-account-v2")?;
    let (v1, v2) = (v1.to_str().unwrap(), v2.to_str().unwrap());
    // Connecting waits for the node to be up (and its certificates made).
    let client = node.client().await?;
    for (ty, file) in [(TYPE, v1), (TYPE, v2), ("quiet", v1), ("quiet", v2)] {
        let (ok, _, err) = node.cli(&["deploy", ty, file])?;
        assert!(ok, "{err}");
    }
    // Identical bytes change nothing.
    let same = client.deploy_with(TYPE, std::fs::read(v2)?, false).await?;
    assert!(!same.changed);
    assert_eq!(same.info.map(|i| i.deploy), Some(2));

    // v2 writes a fee, an event v1 has never heard of: rolling back to v1
    // would break that entity, so the rollback is refused with a report.
    deposit(&client, "fee", 150).await?;
    let (reply, _) = client
        .ask_json(TYPE, "fee", r#"{"Withdraw":{"amount":100}}"#)
        .await?;
    assert_eq!(reply.as_deref(), Some("\"ok (fee 1)\""));
    match client.rollback(TYPE, None).await {
        Err(ClientError::Api(ApiError::ValidationFailed(r))) => {
            assert_eq!(r.failures[0].entity_id, "fee");
            assert_eq!(r.failures[0].seq, 1, "{r:?}");
        }
        other => panic!("rollback over unknown events was not refused: {other:?}"),
    }
    // A type whose history v1 can read rolls back.
    let (ok, out, err) = node.cli(&["rollback", "quiet"])?;
    assert!(ok, "{err}");
    assert!(out.contains("deployed quiet #1"), "{out}");
    client
        .ask(
            "quiet",
            "q",
            Payload::Json(r#"{"Deposit":{"amount":2}}"#.into()),
            None,
            None,
        )
        .await?;
    let e = client.events("quiet", "q", 1, 10, 10).await?;
    assert_eq!(e[0].behavior_version, "1.0.0");
    client.close().await;

    // Everything survives a restart.
    node.terminate()?;
    node.restart()?;
    let client = node.client().await?;
    let v = client.versions(TYPE).await?;
    assert_eq!(v.active, Some(2));
    assert_eq!(v.versions.len(), 2);
    let kinds: Vec<(DeployAction, Option<u32>, DeployOutcome)> = v
        .history
        .iter()
        .map(|r| (r.action, r.deploy, r.outcome))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (DeployAction::Deploy, Some(1), DeployOutcome::Activated),
            (DeployAction::Deploy, Some(2), DeployOutcome::Activated),
            (DeployAction::Rollback, Some(1), DeployOutcome::Refused),
        ]
    );
    let q = client.versions("quiet").await?;
    assert_eq!(q.active, Some(1));
    assert_eq!(
        q.history.last().map(|r| (r.action, r.outcome)),
        Some((DeployAction::Rollback, DeployOutcome::Activated))
    );
    // The rolled-back type serves v1 after the restart.
    let (reply, _) = client.ask_json("quiet", "q", r#""GetBalance""#).await?;
    assert_eq!(reply.as_deref(), Some("2"));
    let (ok, out, _) = node.cli(&["versions", "quiet"])?;
    assert!(ok && out.lines().any(|l| l.starts_with("* #1")), "{out}");
    client.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_state_schema_rebuilds_state_from_events() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("cairn.toml");
    std::fs::write(&config, "[defaults.snapshot]\nevery = 5\n")?;
    let node = NodeProc::start(
        &tmp.path().join("data"),
        &["--config", config.to_str().unwrap()],
    )?;
    let client = node.client().await?;
    client.deploy(TYPE, example_bytes("bank-account")?).await?;
    for _ in 0..7 {
        deposit(&client, "s", 10).await?;
    }
    // v1 left a snapshot at #5 (state schema 1): time travel starts from it.
    let at5 = client
        .state(TYPE, "s", cairn_host::api::StateAt::Seq(5))
        .await?;
    assert_eq!(at5.replayed, 0, "no snapshot at #5");

    // v3 keeps the balance in cents (state schema 2).
    let d = client
        .deploy_with(TYPE, example_bytes("bank-account-v3")?, false)
        .await?;
    assert!(d.changed);
    assert_eq!(d.info.as_ref().map(|i| i.state_schema), Some(2));
    assert_eq!(d.report.from_snapshot, 0, "an old-schema snapshot was used");
    assert_eq!(d.report.differing, 1, "{:?}", d.report);
    assert!(d.report.differences[0].candidate.contains("\"cents\":7000"));

    // The live entity is rebuilt from its events, not from the old snapshot.
    let mut lifecycle = client.follow_lifecycle().await?;
    let (reply, _) = client.ask_json(TYPE, "s", r#""GetBalance""#).await?;
    assert_eq!(reply.as_deref(), Some("70"));
    let detail = loop {
        let next = tokio::time::timeout(Duration::from_secs(30), lifecycle.next()).await?;
        match next {
            Some(Ok(cairn_host::api::Response::Lifecycle {
                kind,
                entity_id,
                detail,
                ..
            })) if kind == "started" && entity_id.as_deref() == Some("s") => break detail,
            Some(Ok(_)) => {}
            other => panic!("lifecycle stream: {other:?}"),
        }
    };
    assert!(
        detail.contains("replayed=7") && detail.contains("snapshot=none"),
        "{detail}"
    );
    let now = client
        .state(TYPE, "s", cairn_host::api::StateAt::Now)
        .await?;
    assert!(now.json.contains("\"cents\":7000"), "{}", now.json);
    lifecycle.stop();
    client.close().await;
    Ok(())
}

/// A node whose bank accounts snapshot every 5 events (the README's
/// configuration), with `extra` lines added to its `[node]` section.
fn snapshotting_node(tmp: &std::path::Path, node_keys: &str) -> Result<NodeProc> {
    let config = tmp.join("cairn.toml");
    std::fs::write(
        &config,
        format!("[node]\n{node_keys}\n[entities.\"bank-account\".snapshot]\nevery = 5\n"),
    )?;
    NodeProc::start(&tmp.join("data"), &["--config", config.to_str().unwrap()])
}

fn refused(r: Result<cairn_client::Deployed, ClientError>) -> cairn_host::api::ValidationReport {
    match r {
        Err(ClientError::Api(ApiError::ValidationFailed(r))) => *r,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_does_not_hide_events_the_new_version_cannot_read() -> Result<()> {
    // The README's hot-swap walk-through with snapshots on: the withdrawal
    // (#2) lies behind the snapshot at #5, and the broken version cannot
    // decode it.
    let tmp = tempfile::tempdir()?;
    let node = snapshotting_node(tmp.path(), "")?;
    let client = node.client().await?;
    client.deploy(TYPE, example_bytes("bank-account")?).await?;
    deposit(&client, "acct-1", 150).await?;
    client
        .ask_json(TYPE, "acct-1", r#"{"Withdraw":{"amount":20}}"#)
        .await?;
    for _ in 0..3 {
        deposit(&client, "acct-1", 1).await?;
    }
    let at5 = client
        .state(TYPE, "acct-1", cairn_host::api::StateAt::Seq(5))
        .await?;
    assert_eq!(at5.replayed, 0, "no snapshot at #5: the test shows nothing");

    let report = refused(
        client
            .deploy_with(TYPE, example_bytes("bank-account-broken")?, false)
            .await,
    );
    assert_eq!(report.failed, 1, "{report:?}");
    assert_eq!(report.failures[0].entity_id, "acct-1");
    assert_eq!(report.failures[0].seq, 2, "{report:?}");
    assert!(report.failures[0].error.contains("Withdrawn"), "{report:?}");
    assert_eq!(
        report.from_snapshot, 0,
        "a failed entity checks no snapshot"
    );
    assert_eq!(client.versions(TYPE).await?.active, Some(1));

    // v2 reads everything: it replays all five events from #1, checks the
    // state it folds against the snapshot at #5, and decodes the exemplars
    // (v1's Deposited and Withdrawn).
    let ok = client
        .deploy_with(TYPE, example_bytes("bank-account-v2")?, true)
        .await?;
    assert_eq!(
        (
            ok.report.sampled,
            ok.report.events,
            ok.report.from_snapshot,
            ok.report.exemplars
        ),
        (1, 5, 1, 2),
        "{:?}",
        ok.report
    );
    // The CLI prints what was checked.
    let v2 = example_wasm("bank-account-v2")?;
    let (ok, out, err) = node.cli(&["deploy", "--check", TYPE, v2.to_str().unwrap()])?;
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "replayed 5 events of 1 entities from #1 (1 snapshots checked) and decoded 2 exemplars"
        ),
        "{out}"
    );
    client.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_over_a_snapshot_is_refused() -> Result<()> {
    // The README's rollback with snapshots on: v2 writes FeeCharged (#4),
    // one more deposit makes the snapshot at #5, and v1 cannot read #4.
    let tmp = tempfile::tempdir()?;
    let node = snapshotting_node(tmp.path(), "")?;
    let client = node.client().await?;
    client.deploy(TYPE, example_bytes("bank-account")?).await?;
    deposit(&client, "acct-1", 150).await?;
    client
        .ask_json(TYPE, "acct-1", r#"{"Withdraw":{"amount":20}}"#)
        .await?;
    client
        .deploy(TYPE, example_bytes("bank-account-v2")?)
        .await?;
    let (reply, seq) = client
        .ask_json(TYPE, "acct-1", r#"{"Withdraw":{"amount":40}}"#)
        .await?;
    assert_eq!((reply.as_deref(), seq), (Some("\"ok (fee 1)\""), 4));
    deposit(&client, "acct-1", 1).await?;

    let report = refused(client.rollback(TYPE, Some(1)).await);
    let f = &report.failures[0];
    assert_eq!((f.entity_id.as_str(), f.seq), ("acct-1", 4), "{report:?}");
    assert!(f.error.contains("FeeCharged"), "{report:?}");
    assert_eq!(client.versions(TYPE).await?.active, Some(2));
    // The CLI's rollback says so, naming the entity and the event.
    let (ok, _, err) = node.cli(&["rollback", TYPE, "--to", "1"])?;
    assert!(!ok);
    assert!(
        err.contains("rollback refused") && err.contains("acct-1") && err.contains("#4"),
        "{err}"
    );
    client.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_no_sampled_entity_holds_is_found_through_the_exemplars() -> Result<()> {
    // 1,000 accounts, one of which withdrew; a sample of 10 almost never
    // draws it, but the exemplar of v1's Withdrawn events is always decoded.
    let tmp = tempfile::tempdir()?;
    let node = snapshotting_node(tmp.path(), "deploy_sample = 10")?;
    let client = Arc::new(node.client().await?);
    client.deploy(TYPE, example_bytes("bank-account")?).await?;
    let mut tasks = Vec::new();
    for part in 0..8 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (part..1000).step_by(8) {
                deposit(&c, &format!("acct-{i:04}"), 10).await?;
            }
            Ok::<_, ClientError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    client
        .ask_json(TYPE, "acct-0777", r#"{"Withdraw":{"amount":5}}"#)
        .await?;

    let report = refused(
        client
            .deploy_with(TYPE, example_bytes("bank-account-broken")?, false)
            .await,
    );
    assert_eq!(report.sampled, 10, "{report:?}");
    assert_eq!(report.exemplars, 2, "v1 wrote two kinds: {report:?}");
    let f = report
        .failures
        .iter()
        .find(|f| f.entity_id == "acct-0777")
        .unwrap_or_else(|| panic!("the withdrawal was not found: {report:?}"));
    assert_eq!(f.seq, 2);
    assert!(f.error.contains("Withdrawn"), "{report:?}");
    assert_eq!(client.versions(TYPE).await?.active, Some(1));

    // The exemplars survive a restart of the node (kept in exemplars.json),
    // and a scan after it finds only what is new.
    let exemplars = std::fs::read_to_string(tmp.path().join("data").join("exemplars.json"))?;
    assert!(exemplars.contains("Withdrawn"), "{exemplars}");
    client.close().await;
    Ok(())
}
