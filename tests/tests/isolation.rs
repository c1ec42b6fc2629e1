//! Check 5: a guest that panics, one that loops forever and one that
//! allocates without bound each fail only that command with a clear error
//! (a panic's message and location quoted in it); the
//! entity serves again afterwards; 100 other entities keep answering throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use cairn_host::behavior::GuestFault;
use cairn_host::clock::ManualClock;
use cairn_host::node::{AskError, AskOptions, LifecycleEvent, Node, ReadError};
use cairn_tests::{start_node, start_node_with_clock, wait_for};

const TOML: &str = r#"
[entities.faulty.supervision]
call_timeout = "300ms"
memory_limit_mib = 32
max_restarts = 10
"#;

async fn ask(node: &Node, id: &str, json: &str) -> Result<String, ReadError> {
    node.ask_json("faulty", id, json, AskOptions::default())
        .await
        .map(|r| r.reply.unwrap_or_default())
}

fn guest_error(r: Result<String, ReadError>) -> GuestFault {
    match r {
        Err(ReadError::Ask(AskError::Guest(fault))) => fault,
        other => panic!("expected a guest failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_stay_in_their_command() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path(), TOML, &["faulty", "bank-account"]).await?;
    let mut lc = node.lifecycle();

    // 100 other entities answer throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut bystanders = Vec::new();
    for i in 0..100 {
        let (node, stop, answered) = (node.clone(), stop.clone(), answered.clone());
        bystanders.push(tokio::spawn(async move {
            let id = format!("bystander-{i}");
            let mut mine = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = node
                    .ask_json(
                        "bank-account",
                        &id,
                        r#"{"Deposit":{"amount":1}}"#,
                        AskOptions::default(),
                    )
                    .await;
                assert_eq!(
                    r.expect("a bystander must keep answering").reply.as_deref(),
                    Some("\"ok\"")
                );
                mine += 1;
                answered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (id, mine)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(ask(&node, "f-1", r#""Ok""#).await?, "\"ok\"");
    // The SDK's panic hook writes the message and its location to stderr;
    // the host quotes that line in the trap.
    let panic = guest_error(ask(&node, "f-1", r#""Panic""#).await);
    assert!(
        matches!(&panic, GuestFault::Trap(m) if m.starts_with("unreachable code reached")
            && m.contains("the guest's last output: panic at examples/faulty/src/lib.rs:")
            && m.ends_with(": faulty behavior panics on purpose")),
        "{panic}"
    );
    wait_for(
        &mut lc,
        Duration::from_secs(5),
        |e| matches!(e, LifecycleEvent::Restarted { entity_id, .. } if entity_id == "f-1"),
    )
    .await?;
    assert_eq!(ask(&node, "f-1", r#""Ok""#).await?, "\"ok\"");

    let before = answered.load(Ordering::Relaxed);
    let looped = guest_error(ask(&node, "f-1", r#""Loop""#).await);
    assert!(matches!(looped, GuestFault::Deadline(_)), "{looped}");
    assert!(
        answered.load(Ordering::Relaxed) > before,
        "bystanders answered while a guest looped"
    );
    assert_eq!(ask(&node, "f-1", r#""Ok""#).await?, "\"ok\"");

    let oom = guest_error(ask(&node, "f-1", r#""Alloc""#).await);
    assert!(matches!(oom, GuestFault::MemoryLimit(_)), "{oom}");
    assert_eq!(ask(&node, "f-1", r#""Ok""#).await?, "\"ok\"");

    // Nothing was lost: three Done events, contiguous.
    assert_eq!(ask(&node, "f-1", r#""Count""#).await?, "4");
    let events = node.events("faulty", "f-1", 1, u64::MAX, 100).await?;
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    stop.store(true, Ordering::Relaxed);
    for b in bystanders {
        let (id, mine) = b.await?;
        assert!(mine > 0, "{id} never answered");
        let highest = node
            .journal()
            .highest_seq(&cairn_store::EntityKey::new("bank-account", &id))
            .await?;
        assert_eq!(
            highest, mine,
            "{id}: every acknowledged deposit is in the journal"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_limit_stops_an_entity_that_keeps_failing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let toml = "[entities.faulty.supervision]\nmax_restarts = 2\nwindow = \"1m\"\n";
    let node = start_node(dir.path(), toml, &["faulty"]).await?;
    let mut lc = node.lifecycle();
    for _ in 0..3 {
        guest_error(ask(&node, "f-2", r#""Panic""#).await);
    }
    wait_for(
        &mut lc,
        Duration::from_secs(5),
        |e| matches!(e, LifecycleEvent::Stopped { entity_id, .. } if entity_id == "f-2"),
    )
    .await?;
    let r = ask(&node, "f-2", r#""Ok""#).await;
    assert!(
        matches!(r, Err(ReadError::Ask(AskError::EntityStopped(_)))),
        "{r:?}"
    );
    // Other entities of the type are untouched.
    assert_eq!(ask(&node, "f-3", r#""Ok""#).await?, "\"ok\"");
    // An operator can let it run again.
    assert!(node.resume("faulty", "f-2"));
    assert_eq!(ask(&node, "f-2", r#""Ok""#).await?, "\"ok\"");
    Ok(())
}

/// The restart window is measured on the node's clock: failures spread
/// wider than the window never stop the entity, three within it do. On a
/// virtual clock, so the test does not depend on the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_outside_the_window_are_forgotten() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new();
    let toml = "[entities.faulty.supervision]\nmax_restarts = 2\nwindow = \"1m\"\n";
    let node = start_node_with_clock(dir.path(), toml, &["faulty"], clock.clone()).await?;
    for _ in 0..6 {
        guest_error(ask(&node, "f-4", r#""Panic""#).await);
        clock.advance(Duration::from_secs(31));
    }
    assert_eq!(ask(&node, "f-4", r#""Ok""#).await?, "\"ok\"");
    clock.advance(Duration::from_secs(61));
    for _ in 0..3 {
        guest_error(ask(&node, "f-4", r#""Panic""#).await);
    }
    let r = ask(&node, "f-4", r#""Ok""#).await;
    assert!(
        matches!(r, Err(ReadError::Ask(AskError::EntityStopped(_)))),
        "{r:?}"
    );
    Ok(())
}

/// An `ask` gives up after its timeout even while the entity is still busy
/// with an earlier command (here a guest call that loops until its 300 ms
/// deadline); the entity then answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_times_out_while_its_entity_is_busy() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path(), TOML, &["faulty"]).await?;
    let looping = {
        let node = node.clone();
        tokio::spawn(async move { ask(&node, "f-busy", r#""Loop""#).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let opts = AskOptions {
        timeout: Duration::from_millis(40),
        expected_seq: None,
    };
    let t = std::time::Instant::now();
    let r = node.ask_json("faulty", "f-busy", r#""Count""#, opts).await;
    let took = t.elapsed();
    assert!(
        matches!(r, Err(ReadError::Ask(AskError::Timeout(d))) if d == opts.timeout),
        "expected a timeout, got {r:?}"
    );
    assert!(
        took >= opts.timeout && !looping.is_finished(),
        "the timeout fired after {took:?}, the looping command finished: {}",
        looping.is_finished()
    );
    let fault = guest_error(looping.await?);
    assert!(matches!(fault, GuestFault::Deadline(_)), "{fault}");
    assert_eq!(ask(&node, "f-busy", r#""Count""#).await?, "0");
    Ok(())
}
