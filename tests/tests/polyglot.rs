//! One entity type through three languages on a real `cairn node` process:
//! the Rust bank account v1 writes history; under a load of deposits it is
//! hot-swapped to the Python v2 (`examples/python/bank-account-v2`: v1's
//! `Deposited` upcast to `Credited`, a new event `FeeCharged`), which then
//! writes fees only v2 knows; then to the JavaScript v3
//! (`examples/js/bank-account-v3`: state in cents, state schema 2, rebuilt
//! from the events, never from v2's snapshots). Every acknowledged command
//! is in the journal exactly once and in the balances; a rollback to the
//! Rust v1 is refused, naming the event it cannot read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_client::{Client, ClientError};
use cairn_host::api::{ApiError, Payload, StateAt};
use cairn_tests::{NodeProc, example_bytes, js_example_wasm, python_example_wasm};

const TYPE: &str = "bank-account";
/// The accounts under load.
const LOADED: usize = 8;
/// An account with v1 history and then only a v2 fee: the first event v1
/// cannot read in it is `FeeCharged`.
const FEES: &str = "fees";

/// What the journal of one account must hold.
#[derive(Debug, Default)]
struct Expected {
    balance: i64,
    events: usize,
    fees: u64,
}

/// Asks with a 60 s deadline: the test checks that no command is lost in a
/// swap, not how long one waits while a large component is compiled and
/// instantiated on a busy machine (the default 5 s deadline ran out there,
/// in CI beside other work, during the swap to Python).
async fn ask(c: &Client, id: &str, json: &str) -> Result<String, ClientError> {
    let r = c
        .ask(
            TYPE,
            id,
            Payload::Json(json.to_owned()),
            None,
            Some(Duration::from_secs(60)),
        )
        .await?;
    Ok(match r.reply {
        Some(Payload::Json(j)) => j,
        _ => String::new(),
    })
}

async fn deposit(c: &Client, id: &str, amount: i64) -> Result<String, ClientError> {
    ask(c, id, &format!(r#"{{"Deposit":{{"amount":{amount}}}}}"#)).await
}

async fn withdraw(c: &Client, id: &str, amount: i64) -> Result<String, ClientError> {
    ask(c, id, &format!(r#"{{"Withdraw":{{"amount":{amount}}}}}"#)).await
}

fn acct(i: usize) -> String {
    format!("acct-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_v1_hot_swaps_to_python_v2_under_load_then_to_js_v3_and_refuses_the_rollback()
-> Result<()> {
    let python_v2 = std::fs::read(python_example_wasm("bank-account-v2")?)?;
    let js_v3 = std::fs::read(js_example_wasm("bank-account-v3")?)?;
    let tmp = tempfile::tempdir()?;
    // Snapshots every 5 events: v2 checks v1's, v3 must ignore v2's.
    let config = tmp.path().join("cairn.toml");
    std::fs::write(&config, "[entities.\"bank-account\".snapshot]\nevery = 5\n")?;
    let node = NodeProc::start(
        &tmp.path().join("data"),
        &["--config", config.to_str().context("path")?],
    )?;
    let client = node.client().await?;
    let v1 = client.deploy(TYPE, example_bytes("bank-account")?).await?;
    assert_eq!((v1.deploy, v1.behavior_version.as_str()), (1, "1.0.0"));

    // v1 history: a deposit and a withdrawal in every loaded account, one
    // deposit in FEES.
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    for i in 0..LOADED {
        assert_eq!(deposit(&client, &acct(i), 300).await?, "\"ok\"");
        assert_eq!(withdraw(&client, &acct(i), 50).await?, "\"ok\"");
        expected.insert(
            acct(i),
            Expected {
                balance: 250,
                events: 2,
                fees: 0,
            },
        );
    }
    assert_eq!(deposit(&client, FEES, 150).await?, "\"ok\"");
    expected.insert(
        FEES.into(),
        Expected {
            balance: 150,
            events: 1,
            fees: 0,
        },
    );

    // Deposits from 4 senders until a while after the swap to Python v2.
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..4 {
        let c = client.clone();
        let stop = stop.clone();
        senders.push(tokio::spawn(async move {
            // (account, amount, reply) of every command sent.
            let mut sent: Vec<(usize, i64, Result<String, String>)> = Vec::new();
            let mut i = s;
            while !stop.load(Ordering::Relaxed) {
                let e = i % LOADED;
                let amount = (i % 7 + 1) as i64;
                let r = deposit(&c, &acct(e), amount).await;
                sent.push((e, amount, r.map_err(|e| e.to_string())));
                i += 4;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deployer = node.client().await?;
    let started = Instant::now();
    let d = deployer.deploy_with(TYPE, python_v2, false).await?;
    let took = started.elapsed();
    assert!(d.changed);
    let info = d.info.as_ref().context("no active deploy")?;
    assert_eq!(
        (
            info.deploy,
            info.behavior_version.as_str(),
            info.state_schema
        ),
        (2, "2.0.0", 1)
    );
    assert!(d.report.passed(), "{}", d.report.summary());
    assert!(
        d.report.sampled as usize > LOADED && d.report.from_snapshot > 0,
        "Python v2 checked too little: {}",
        d.report.summary()
    );
    // Load goes on over Python v2 for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = 0;
    for s in senders {
        for (e, amount, r) in s.await? {
            let reply = r.unwrap_or_else(|err| panic!("a deposit was lost in the swap: {err}"));
            assert_eq!(reply, "\"ok\"", "acct-{e}");
            acknowledged += 1;
            let x = expected.get_mut(&acct(e)).context("account")?;
            x.balance += amount;
            x.events += 1;
        }
    }
    eprintln!("{acknowledged} deposits acknowledged under load; the Python deploy took {took:?}");
    assert!(acknowledged > 2 * LOADED, "too little load: {acknowledged}");

    // Events only v2 knows: withdrawals leaving less than 100 cost a fee.
    assert_eq!(withdraw(&client, FEES, 100).await?, "\"ok (fee 1)\"");
    for id in [FEES.to_owned(), acct(0), acct(1), acct(2)] {
        let x = expected.get_mut(&id).context("account")?;
        if id != FEES {
            let amount = x.balance - 50;
            assert_eq!(
                withdraw(&client, &id, amount).await?,
                "\"ok (fee 1)\"",
                "{id}"
            );
            x.balance = 50 - 1;
        } else {
            x.balance = 49;
        }
        x.events += 2;
        x.fees += 1;
    }
    assert_eq!(ask(&client, FEES, r#""GetBalance""#).await?, "49");

    // JavaScript v3: a new state schema, so state is rebuilt from the events
    // (v2's snapshots are not used).
    let d = client.deploy_with(TYPE, js_v3, false).await?;
    let info = d.info.as_ref().context("no active deploy")?;
    assert_eq!(
        (
            info.deploy,
            info.behavior_version.as_str(),
            info.state_schema
        ),
        (3, "3.0.0", 2)
    );
    assert!(d.report.passed(), "{}", d.report.summary());
    assert_eq!(d.report.from_snapshot, 0, "an old-schema snapshot was used");
    // Every account's state is a new shape: the report shows it differing.
    assert_eq!(
        d.report.differing as usize,
        expected.len(),
        "{}",
        d.report.summary()
    );

    // No command lost, none doubled: every account's journal and balance.
    let (mut by_v1, mut by_v2) = (0, 0);
    for (id, x) in &expected {
        let events = client.events(TYPE, id, 1, u64::MAX, 100_000).await?;
        assert_eq!(events.len(), x.events, "{id}: events");
        let mut versions = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(ev.seq, i as u64 + 1, "{id}");
            let json = ev.json.as_deref().unwrap_or("");
            // v3 renders v1's deposits through the upcast.
            assert!(!json.contains("Deposited"), "{id} #{}: {json}", ev.seq);
            match ev.behavior_version.as_str() {
                "1.0.0" => by_v1 += 1,
                "2.0.0" => by_v2 += 1,
                other => bail!("{id} #{}: written by {other}", ev.seq),
            }
            if versions.last() != Some(&ev.behavior_version) {
                versions.push(ev.behavior_version.clone());
            }
        }
        assert!(
            versions.len() <= 2 && versions.first().map(String::as_str) == Some("1.0.0"),
            "{id}: versions out of order: {versions:?}"
        );
        let balance = ask(&client, id, r#""GetBalance""#).await?;
        assert_eq!(balance, x.balance.to_string(), "{id}: balance");
        let state = client.state(TYPE, id, StateAt::Now).await?;
        let want = format!(
            r#"{{"cents":{},"transactions":{},"fees_paid":{}}}"#,
            x.balance * 100,
            x.events,
            x.fees
        );
        assert_eq!(state.json, want, "{id}: state");
    }
    // The load ran over both sides of the swap.
    let history = 2 * LOADED + 1;
    assert!(
        by_v1 > history && by_v2 > 4 * 2,
        "{by_v1} v1 events ({history} of history), {by_v2} v2 events"
    );
    let fees = client.events(TYPE, FEES, 1, u64::MAX, 100).await?;
    let fees: Vec<(String, String)> = fees
        .into_iter()
        .map(|e| (e.behavior_version, e.json.unwrap_or_default()))
        .collect();
    assert_eq!(
        fees,
        [
            ("1.0.0", r#"{"Credited":{"amount":150,"source":"deposit"}}"#),
            (
                "2.0.0",
                r#"{"Withdrawn":{"amount":100,"fee_waived":false}}"#
            ),
            ("2.0.0", r#"{"FeeCharged":{"amount":1}}"#),
        ]
        .map(|(v, j)| (v.to_owned(), j.to_owned()))
    );
    // v3 writes on.
    assert_eq!(deposit(&client, FEES, 1).await?, "\"ok\"");
    let last = client.events(TYPE, FEES, 4, 4, 1).await?;
    assert_eq!(
        last.first().map(|e| e.behavior_version.as_str()),
        Some("3.0.0")
    );

    // Rust v1 cannot read FeeCharged: the rollback is refused and names it.
    let report = match client.rollback(TYPE, Some(1)).await {
        Err(ClientError::Api(ApiError::ValidationFailed(r))) => *r,
        other => panic!("the rollback to Rust v1 was not refused: {other:?}"),
    };
    let f = report
        .failures
        .iter()
        .find(|f| f.entity_id == FEES)
        .unwrap_or_else(|| panic!("{FEES} is not among the failures: {report:?}"));
    assert_eq!(f.seq, 3, "{report:?}");
    assert!(f.error.contains("FeeCharged"), "{}", f.error);
    assert_eq!(client.versions(TYPE).await?.active, Some(3));
    let (ok, _, err) = node.cli(&["rollback", TYPE, "--to", "1"])?;
    assert!(!ok && err.contains("rollback refused"), "{err}");
    assert_eq!(ask(&client, FEES, r#""GetBalance""#).await?, "50");
    client.close().await;
    deployer.close().await;
    Ok(())
}
