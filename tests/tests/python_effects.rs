//! The Python standing order (`examples/python/standing-order`, and its
//! version 2 in `standing-order-v2`) on a real `cairn node` process beside
//! the Rust bank account, driven with the CLI:
//!
//! - its timers fire (`schedule`) and each payment's `send` arrives at the
//!   target bank account, exactly once (the balances equal what the
//!   standing orders paid);
//! - a hot swap to version 2 replays version 1's `Scheduled` events through
//!   the upcast (the state schema changed, so state is rebuilt from
//!   events), `cairn events` shows them upcast, and a timer armed by
//!   version 1 keeps an order paying on version 2;
//! - after a restart, the entities recover from the mixed history through
//!   the upcast again.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_tests::guest::cairn;
use cairn_tests::{NodeProc, example_wasm, python_example_wasm};

const ORDER: &str = "standing-order";
const BANK: &str = "bank-account";

/// How long a restarted node may take to answer: it compiles the deployed
/// Python component before it listens (no compiled-code cache yet).
const START_WAIT: Duration = Duration::from_secs(600);

/// How long a chain of timers and sends may take to show its effect.
const EFFECT_WAIT: Duration = Duration::from_secs(60);

fn ask(node: &NodeProc, ty: &str, id: &str, json: &str) -> Result<String> {
    cairn(node, &["ask", ty, id, json])
}

fn balance(node: &NodeProc, id: &str) -> Result<i64> {
    let out = ask(node, BANK, id, r#""GetBalance""#)?;
    out.parse().with_context(|| format!("balance {out:?}"))
}

/// The events of an entity as (version, JSON), as `cairn events` prints them.
fn events(node: &NodeProc, ty: &str, id: &str) -> Result<Vec<(String, String)>> {
    let out = cairn(node, &["events", ty, id])?;
    out.lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [_seq, _time, version, json @ ..] => {
                    Ok(((*version).to_owned(), json.join(" ").trim().to_owned()))
                }
                _ => bail!("unexpected events line {line:?}"),
            }
        })
        .collect()
}

/// Polls `probe` until it returns `Some`, up to `wait`.
fn eventually<T>(
    what: &str,
    wait: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn deploy(node: &NodeProc, ty: &str, wasm: &std::path::Path) -> Result<String> {
    let started = Instant::now();
    let out = cairn(node, &["deploy", ty, wasm.to_str().context("path")?])?;
    eprintln!("deploy {ty} {}: {:?}", wasm.display(), started.elapsed());
    Ok(out)
}

/// The "paid N in total" figure of a `Status` reply.
fn paid_in_status(status: &str) -> Result<i64> {
    let n = status
        .rsplit("paid ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .context("no paid figure")?;
    n.parse().with_context(|| format!("status {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_timers_and_sends_reach_the_bank_account_and_v1_events_upcast() -> Result<()> {
    let v1 = python_example_wasm("standing-order")?;
    let v2 = python_example_wasm("standing-order-v2")?;
    let bank = example_wasm(BANK)?;
    let tmp = tempfile::tempdir()?;
    let mut node = NodeProc::start(&tmp.path().join("data"), &[])?;
    node.client().await?;
    deploy(&node, BANK, &bank)?;
    let out = deploy(&node, ORDER, &v1)?;
    assert!(
        out.starts_with("deployed standing-order #1: standing-order 1.0.0 (state schema 1)"),
        "{out}"
    );

    // Two payments of 10 to acct-1, one second apart: two timers, two sends.
    assert_eq!(
        ask(
            &node,
            ORDER,
            "so-1",
            r#"{"Arrange":{"to":"acct-1","amount":10,"every_s":1,"times":2}}"#
        )?,
        "\"ok\""
    );
    // A long order, still paying when version 2 arrives.
    assert_eq!(
        ask(
            &node,
            ORDER,
            "so-2",
            r#"{"Arrange":{"to":"acct-2","amount":5,"every_s":1,"times":1000}}"#
        )?,
        "\"ok\""
    );
    let (ok, _, err) = node.cli(&[
        "ask",
        ORDER,
        "so-1",
        r#"{"Arrange":{"to":"acct-9","amount":1,"every_s":1,"times":1}}"#,
    ])?;
    assert!(!ok && err.contains("an order is active"), "{err}");

    let started = Instant::now();
    eventually("acct-1 receives both payments", EFFECT_WAIT, || {
        Ok((balance(&node, "acct-1")? == 20).then_some(()))
    })?;
    eprintln!(
        "two 1 s timers and their sends landed in {:?}",
        started.elapsed()
    );
    assert_eq!(
        events(&node, ORDER, "so-1")?,
        [
            (
                "v1.0.0",
                r#"{"Scheduled":{"to":"acct-1","amount":10,"every_s":1,"times":2}}"#
            ),
            ("v1.0.0", r#"{"Paid":{"to":"acct-1","amount":10}}"#),
            ("v1.0.0", r#"{"Paid":{"to":"acct-1","amount":10}}"#),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(
        events(&node, BANK, "acct-1")?
            .into_iter()
            .map(|(_, json)| json)
            .collect::<Vec<_>>(),
        [r#"{"Deposited":{"amount":10}}"#; 2]
    );
    assert_eq!(
        ask(&node, ORDER, "so-1", r#""Status""#)?,
        "\"no active order; paid 20 in total\""
    );
    // No third payment: the last one armed no timer.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(balance(&node, "acct-1")?, 20);
    eventually("so-2 pays", EFFECT_WAIT, || {
        Ok((balance(&node, "acct-2")? > 0).then_some(()))
    })?;

    // Hot swap to version 2: the deploy replays so-1 and so-2 from #1
    // through the upcast (a legacy event left unconverted would refuse it).
    let out = deploy(&node, ORDER, &v2)?;
    assert!(
        out.starts_with("deployed standing-order #2: standing-order 2.0.0 (state schema 2)"),
        "{out}"
    );
    let so1 = events(&node, ORDER, "so-1")?;
    assert_eq!(
        so1[0],
        (
            "v1.0.0".to_owned(),
            r#"{"Arranged":{"to":"acct-1","amount":10,"every_ms":1000,"times":2}}"#.to_owned()
        ),
        "version 1's event, shown through version 2's upcast"
    );
    let state = cairn(&node, &["state", ORDER, "so-1"])?;
    let state: serde_json::Value = serde_json::from_str(state.lines().next().unwrap_or(""))?;
    assert_eq!(
        state,
        serde_json::json!({"to": "acct-1", "amount": 10, "every_ms": 1000, "remaining": 0, "paid": 20})
    );
    let state = cairn(&node, &["state", ORDER, "so-1", "--at-seq", "2"])?;
    assert!(
        state.contains("\"remaining\":1") && state.contains("\"paid\":10"),
        "{state}"
    );
    assert_eq!(
        ask(&node, ORDER, "so-1", r#""Status""#)?,
        "\"no active order; paid 20 in total\""
    );

    // The timer chain version 1 started goes on under version 2.
    let started = Instant::now();
    eventually("so-2 pays under version 2", EFFECT_WAIT, || {
        Ok(events(&node, ORDER, "so-2")?
            .iter()
            .any(|(v, json)| v == "v2.0.0" && json.starts_with(r#"{"Paid""#))
            .then_some(()))
    })?;
    eprintln!(
        "so-2's first payment by version 2 after {:?}",
        started.elapsed()
    );
    assert_eq!(ask(&node, ORDER, "so-2", r#""Cancel""#)?, "\"ok\"");
    let paid = paid_in_status(&ask(&node, ORDER, "so-2", r#""Status""#)?)?;
    let so2 = events(&node, ORDER, "so-2")?;
    let payments = so2
        .iter()
        .filter(|(_, j)| j.starts_with(r#"{"Paid""#))
        .count() as i64;
    assert_eq!(paid, 5 * payments, "{so2:?}");
    assert!(so2[0].1.starts_with(r#"{"Arranged""#), "{so2:?}");
    // Every payment arrives exactly once: the bank account ends at what
    // the order paid (the last send may still be on its way).
    eventually("acct-2 receives every payment", EFFECT_WAIT, || {
        Ok((balance(&node, "acct-2")? == paid).then_some(()))
    })?;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        balance(&node, "acct-2")?,
        paid,
        "a payment after the cancel, or a duplicate"
    );
    assert_eq!(events(&node, BANK, "acct-2")?.len() as i64, payments);

    // Version 2's own timers, in milliseconds.
    assert_eq!(
        ask(
            &node,
            ORDER,
            "so-3",
            r#"{"Arrange":{"to":"acct-3","amount":1,"every_ms":100,"times":5}}"#
        )?,
        "\"ok\""
    );
    let started = Instant::now();
    eventually("acct-3 receives 5 payments", EFFECT_WAIT, || {
        Ok((balance(&node, "acct-3")? == 5).then_some(()))
    })?;
    eprintln!(
        "five 100 ms timers and their sends landed in {:?}",
        started.elapsed()
    );

    // A restart: so-1 and so-2 recover from version 1 and 2 events.
    let status = node.terminate()?;
    assert!(status.success(), "the node exited with {status} on SIGTERM");
    let started = Instant::now();
    node.restart()?;
    node.client_within(START_WAIT).await?;
    eprintln!("restart until the node answered: {:?}", started.elapsed());
    assert_eq!(
        ask(&node, ORDER, "so-1", r#""Status""#)?,
        "\"no active order; paid 20 in total\""
    );
    assert_eq!(
        paid_in_status(&ask(&node, ORDER, "so-2", r#""Status""#)?)?,
        paid
    );
    assert_eq!(balance(&node, "acct-2")?, paid);
    assert_eq!(balance(&node, "acct-3")?, 5);
    let log = std::fs::read_to_string(node.dir.join("node.log"))?;
    assert!(!log.contains("panicked"), "a panic in the node log:\n{log}");
    let status = node.terminate()?;
    assert!(status.success(), "{status}");
    Ok(())
}
