//! Check 7: mailbox overflow strategies, passivation then reactivation with
//! state intact, an optimistic-concurrency conflict, a timer that fires after a
//! restart; and check 3 at the node level: a snapshot of another state-schema
//! version is ignored, a matching one is used.

use std::time::Duration;

use anyhow::Result;
use cairn_host::clock::ManualClock;
use cairn_host::node::{AskError, AskOptions, LifecycleEvent, Node, ReadError};
use cairn_store::{EntityKey, Snapshot};
use cairn_tests::{start_node, start_node_with_clock, wait_for};

const OVERFLOW_TOML: &str = r#"
[defaults.supervision]
call_timeout = "600ms"
[entities.faulty-new.mailbox]
capacity = 2
overflow = "drop_new"
[entities.faulty-old.mailbox]
capacity = 2
overflow = "drop_oldest"
[entities.faulty-bp.mailbox]
capacity = 1
overflow = "backpressure"
"#;

/// Asks `"Ok"` of `ty` `id` on a task. It may wait behind a loop that runs
/// until its 600 ms deadline, which counts the guest's CPU time: on a busy
/// machine (the guest pool runs at nice 10) that is up to ten times as
/// long in wall time, so the ask waits up to 30 s.
fn ask_ok(
    node: &Node,
    ty: &str,
    id: &str,
) -> tokio::task::JoinHandle<Result<Option<String>, ReadError>> {
    let (node, ty, id) = (node.clone(), ty.to_owned(), id.to_owned());
    let opts = AskOptions {
        timeout: Duration::from_secs(30),
        ..AskOptions::default()
    };
    tokio::spawn(async move {
        node.ask_json(&ty, &id, r#""Ok""#, opts)
            .await
            .map(|r| r.reply)
    })
}

/// Occupies the entity with a command that runs until its deadline, so
/// that later commands queue behind it.
async fn occupy(node: &Node, ty: &str) -> Result<()> {
    let cmd = node.command_from_json(ty, r#""Loop""#)?;
    node.tell(ty, "e", cmd).await?;
    queued(node, ty, 0).await
}

/// Waits until entity `e` of `ty` is busy with `n` commands queued behind
/// the one it runs (an event to wait for, not a guess of how long it takes).
async fn queued(node: &Node, ty: &str, n: usize) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = node.mailbox(ty, "e");
        if m.is_some_and(|m| m.busy && m.queued == n) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{ty}/e never had {n} queued commands: {m:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_overflow_strategies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(
        dir.path(),
        OVERFLOW_TOML,
        &["faulty-new=faulty", "faulty-old=faulty", "faulty-bp=faulty"],
    )
    .await?;
    let mut lc = node.lifecycle();

    // drop_new: the third queued command is refused at once.
    occupy(&node, "faulty-new").await?;
    let (a, b) = (
        ask_ok(&node, "faulty-new", "e"),
        ask_ok(&node, "faulty-new", "e"),
    );
    queued(&node, "faulty-new", 2).await?;
    let c = node
        .ask_json("faulty-new", "e", r#""Ok""#, AskOptions::default())
        .await;
    assert!(
        matches!(c, Err(ReadError::Ask(AskError::MailboxFull))),
        "{c:?}"
    );
    assert_eq!(a.await??.as_deref(), Some("\"ok\""));
    assert_eq!(b.await??.as_deref(), Some("\"ok\""));
    wait_for(&mut lc, Duration::from_secs(2), |e| matches!(e, LifecycleEvent::DeadLetter { entity_type, .. } if entity_type == "faulty-new")).await?;

    // drop_oldest: the oldest queued command is dropped, the newer ones run.
    occupy(&node, "faulty-old").await?;
    let a = ask_ok(&node, "faulty-old", "e");
    queued(&node, "faulty-old", 1).await?;
    let b = ask_ok(&node, "faulty-old", "e");
    queued(&node, "faulty-old", 2).await?;
    let c = ask_ok(&node, "faulty-old", "e");
    let ra = a.await?;
    assert!(
        matches!(ra, Err(ReadError::Ask(AskError::MailboxFull))),
        "{ra:?}"
    );
    assert_eq!(b.await??.as_deref(), Some("\"ok\""));
    assert_eq!(c.await??.as_deref(), Some("\"ok\""));

    // backpressure: the sender waits for room; nothing is dropped.
    occupy(&node, "faulty-bp").await?;
    // The mailbox holds one: `a` fills it, `b` and `c` wait for room.
    let a = ask_ok(&node, "faulty-bp", "e");
    queued(&node, "faulty-bp", 1).await?;
    let b = ask_ok(&node, "faulty-bp", "e");
    let c = ask_ok(&node, "faulty-bp", "e");
    for h in [a, b, c] {
        assert_eq!(h.await??.as_deref(), Some("\"ok\""));
    }
    let count = node
        .ask_json("faulty-bp", "e", r#""Count""#, AskOptions::default())
        .await?;
    assert_eq!(count.reply.as_deref(), Some("3"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivation_then_reactivation_keeps_state() -> Result<()> {
    // On a virtual clock: an hour of idleness passes when the test says so.
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new();
    let toml = "[entities.bank-account.passivation]\nidle_after = \"1h\"\n";
    let node = start_node_with_clock(dir.path(), toml, &["bank-account"], clock.clone()).await?;
    let mut lc = node.lifecycle();
    let opts = AskOptions::default();
    node.ask_json("bank-account", "p", r#"{"Deposit":{"amount":42}}"#, opts)
        .await?;
    assert_eq!(node.live_entities("bank-account"), 1);
    // Sweeps run (every 100 ms of real time) but the entity is not idle yet.
    clock.advance(Duration::from_secs(59 * 60));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        node.live_entities("bank-account"),
        1,
        "idle 59 of 60 minutes"
    );
    clock.advance(Duration::from_secs(2 * 60));
    wait_for(
        &mut lc,
        Duration::from_secs(5),
        |e| matches!(e, LifecycleEvent::Passivated { entity_id, .. } if entity_id == "p"),
    )
    .await?;
    assert_eq!(node.live_entities("bank-account"), 0);
    let r = node
        .ask_json("bank-account", "p", r#""GetBalance""#, opts)
        .await?;
    assert_eq!(r.reply.as_deref(), Some("42"));
    let ev = wait_for(
        &mut lc,
        Duration::from_secs(5),
        |e| matches!(e, LifecycleEvent::Started { entity_id, .. } if entity_id == "p"),
    )
    .await?;
    assert!(
        matches!(ev, LifecycleEvent::Started { replayed: 1, .. }),
        "{ev:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_concurrency_conflict() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path(), "", &["bank-account"]).await?;
    let deposit = node.command_from_json("bank-account", r#"{"Deposit":{"amount":5}}"#)?;
    let at = |seq| AskOptions {
        expected_seq: Some(seq),
        ..AskOptions::default()
    };
    let r = node
        .ask("bank-account", "o", deposit.clone(), at(0))
        .await?;
    assert_eq!(r.seq, 1);
    let r = node.ask("bank-account", "o", deposit.clone(), at(0)).await;
    assert_eq!(
        r,
        Err(AskError::Conflict {
            expected: 0,
            actual: 1
        })
    );
    let r = node.ask("bank-account", "o", deposit, at(1)).await?;
    assert_eq!(r.seq, 2);
    assert_eq!(
        node.events("bank-account", "o", 1, u64::MAX, 10)
            .await?
            .len(),
        2
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_fires_after_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let node = start_node(dir.path(), "", &["counter"]).await?;
        node.ask_json(
            "counter",
            "t",
            r#"{"IncrementLater":{"by":5,"delay_ms":1500}}"#,
            AskOptions::default(),
        )
        .await?;
        let pending = node.journal().pending_timers().await?;
        assert_eq!(pending.len(), 1, "the timer is journaled");
        node.shutdown(Duration::from_secs(1)).await;
        assert!(
            node.events("counter", "t", 1, u64::MAX, 10)
                .await?
                .is_empty(),
            "the first node stopped before the timer fired"
        );
    }
    // A fresh node: the timer was never delivered by the first one.
    let node = start_node(dir.path(), "", &["counter"]).await?;
    let get = |node: Node| async move {
        node.ask_json("counter", "t", r#""Get""#, AskOptions::default())
            .await
            .map(|r| r.reply)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if get(node.clone()).await?.as_deref() == Some("5") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timer never fired after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        node.journal().pending_timers().await?.is_empty(),
        "a fired timer is removed"
    );
    Ok(())
}

/// An `ask` runs its command on the caller's task when the entity is idle.
/// A caller that gives up half-way (here: its `ask` is polled once, which
/// decides the command and submits its write, then dropped) must leave a
/// whole entity behind: the write lands, the timer it journaled is still
/// armed, and the entity serves the next command from the journal.
/// A timer whose command writes no event (it only sends) is kept as a
/// tombstone, never armed again, until the entity's next write with events
/// removes it: a restart does not fire it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fired_timer_without_events_is_a_tombstone_until_the_next_event() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = EntityKey::new("counter", "src");
    let get = |node: Node, id: &'static str| async move {
        node.ask_json("counter", id, r#""Get""#, AskOptions::default())
            .await
            .map(|r| r.reply)
    };
    let timer_id = {
        let node = start_node(dir.path(), "", &["counter"]).await?;
        node.ask_json(
            "counter",
            "src",
            r#"{"ForwardLater":{"entity_id":"dst","by":3,"delay_ms":100}}"#,
            AskOptions::default(),
        )
        .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while get(node.clone(), "dst").await?.as_deref() != Some("3") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the timer never fired"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // What stays of the timer is its tombstone (due never); the
        // outbox entry of its send goes once delivered.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let timers = loop {
            let timers = node.journal().entity_timers(&key).await?;
            let behavior_timers: Vec<_> = timers.iter().filter(|t| t.timer_id < 1 << 62).collect();
            if timers
                .iter()
                .all(|t| t.timer_id < 1 << 62 || t.timer_id >= 1 << 63)
                && behavior_timers.len() == 1
            {
                break timers;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no tombstone alone: {timers:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let tomb = timers
            .iter()
            .find(|t| t.timer_id < 1 << 62)
            .expect("the tombstone");
        assert_eq!(tomb.fire_at_ms, i64::MAX as u64, "due never: {tomb:?}");
        node.shutdown(Duration::from_secs(1)).await;
        tomb.timer_id
    };
    // A restart arms what the journal holds: the tombstone is not armed.
    let node = start_node(dir.path(), "", &["counter"]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get(node.clone(), "dst").await?.as_deref(),
        Some("3"),
        "fired once"
    );
    assert!(
        node.journal()
            .entity_timers(&key)
            .await?
            .iter()
            .any(|t| t.timer_id == timer_id),
        "the tombstone stays until a write with events"
    );
    // The restart noted the tombstone when it armed the entity's timers;
    // the entity's next write with events removes it.
    node.ask_json(
        "counter",
        "src",
        r#"{"Increment":{"by":1}}"#,
        AskOptions::default(),
    )
    .await?;
    let timers = node.journal().entity_timers(&key).await?;
    assert!(
        timers.iter().all(|t| t.timer_id != timer_id),
        "the write with events removed the tombstone: {timers:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_ask_still_finishes_its_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The log journal answers every write from its writer thread, never
    // within the poll that submits it.
    let node = start_node(dir.path(), "[node]\njournal = \"log\"\n", &["counter"]).await?;
    let get = |id: &'static str| {
        let node = node.clone();
        async move {
            node.ask_json("counter", id, r#""Get""#, AskOptions::default())
                .await
                .map(|r| r.reply)
        }
    };
    // One idle, loaded entity per abandoned command, so that each one runs
    // on its caller's task (a busy entity would queue it for a runner).
    let abandoned = [
        ("a", r#"{"Increment":{"by":10}}"#),
        ("c", r#"{"IncrementLater":{"by":5,"delay_ms":200}}"#),
    ];
    for (id, _) in abandoned {
        assert_eq!(get(id).await?.as_deref(), Some("0"), "{id} is loaded");
    }
    for (id, json) in abandoned {
        let mut ask = Box::pin(node.ask_json("counter", id, json, AskOptions::default()));
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(ask.as_mut().poll(cx))).await;
        assert!(
            first.is_pending(),
            "the write cannot be durable within one poll: {first:?}"
        );
        drop(ask);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (a, c) = (get("a").await?, get("c").await?);
        if a.as_deref() == Some("10") && c.as_deref() == Some("5") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "abandoned commands did not all finish: a = {a:?} (want 10), c = {c:?} (want 5)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in ["a", "c"] {
        let seqs: Vec<u64> = node
            .events("counter", id, 1, u64::MAX, 10)
            .await?
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1], "{id}: one event, stored once");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_send_to_another_entity() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path(), "", &["counter"]).await?;
    node.ask_json(
        "counter",
        "a",
        r#"{"Forward":{"entity_id":"b","by":7}}"#,
        AskOptions::default(),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = node
            .ask_json("counter", "b", r#""Get""#, AskOptions::default())
            .await?;
        if r.reply.as_deref() == Some("7") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sent command never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_another_schema_are_ignored() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = EntityKey::new("bank-account", "s");
    let schema;
    {
        let node = start_node(
            dir.path(),
            "[defaults.snapshot]\nevery = 0\n",
            &["bank-account"],
        )
        .await?;
        for _ in 0..3 {
            node.ask_json(
                "bank-account",
                "s",
                r#"{"Deposit":{"amount":10}}"#,
                AskOptions::default(),
            )
            .await?;
        }
        schema = node.descriptor("bank-account").unwrap().state_schema;
        // Garbage under another schema at the newest position: must be ignored.
        let garbage = Snapshot {
            seq: 3,
            schema: schema + 1,
            timestamp_ms: 1,
            state: vec![0xde, 0xad],
        };
        node.snapshots().save(&key, garbage, 5).await?;
        node.shutdown(Duration::from_secs(1)).await;
    }
    {
        let node = start_node(dir.path(), "", &["bank-account"]).await?;
        let mut lc = node.lifecycle();
        let r = node
            .ask_json(
                "bank-account",
                "s",
                r#""GetBalance""#,
                AskOptions::default(),
            )
            .await?;
        assert_eq!(r.reply.as_deref(), Some("30"));
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
                    ..
                }
            ),
            "{ev:?}"
        );
        // A matching snapshot at #2 is used: its state, then only event #3.
        let state = cairn_guest::codec::encode(&bank_account::State {
            balance: 1000,
            transactions: 2,
        })?;
        let good = Snapshot {
            seq: 2,
            schema,
            timestamp_ms: 1,
            state,
        };
        node.snapshots().save(&key, good, 5).await?;
        node.shutdown(Duration::from_secs(1)).await;
    }
    let node = start_node(dir.path(), "", &["bank-account"]).await?;
    let mut lc = node.lifecycle();
    let r = node
        .ask_json(
            "bank-account",
            "s",
            r#""GetBalance""#,
            AskOptions::default(),
        )
        .await?;
    assert_eq!(r.reply.as_deref(), Some("1010"));
    let ev = wait_for(&mut lc, Duration::from_secs(5), |e| {
        matches!(e, LifecycleEvent::Started { .. })
    })
    .await?;
    assert!(
        matches!(
            ev,
            LifecycleEvent::Started {
                snapshot_seq: Some(2),
                replayed: 1,
                ..
            }
        ),
        "{ev:?}"
    );
    Ok(())
}

/// A node that outlives the tokio runtime it first ran on (its parked mailbox
/// runners end with that runtime) still serves its entities on another one.
#[test]
fn a_node_serves_on_a_second_runtime() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    let increment = r#"{"Increment":{"by":1}}"#;
    let first = runtime()?;
    let node = first.block_on(async {
        let node = start_node(dir.path(), "", &["counter"]).await?;
        for id in ["a", "b"] {
            node.ask_json("counter", id, increment, AskOptions::default())
                .await?;
        }
        anyhow::Ok(node)
    })?;
    drop(first);
    let second = runtime()?;
    second.block_on(async {
        for id in ["a", "b"] {
            let r = node
                .ask_json("counter", id, increment, AskOptions::default())
                .await?;
            assert_eq!(r.seq, 2, "entity {id}: the second increment is event #2");
        }
        node.shutdown(Duration::from_secs(5)).await;
        anyhow::Ok(())
    })
}

/// Messages between entities, exactly once (issue 28): the receiver
/// applies each send of a sender once, whatever the order of the copies it
/// is handed (as after a lost answer, a crash or a failover), and still
/// knows what it applied after a restart. A send that cannot be delivered
/// is a dead letter with its reason, and leaves its sender's outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_apply_once_and_undeliverable_ones_are_dead_letters() -> Result<()> {
    for toml in ["", "[node]\njournal = \"sqlite\"\n"] {
        sends_apply_once(toml).await?;
    }
    undeliverable_sends_are_dead_letters().await
}

/// Six copies of three sends of two senders, then a restart.
async fn sends_apply_once(toml: &str) -> Result<()> {
    use cairn_host::placement::SendId;
    let dir = tempfile::tempdir()?;
    let wait = Duration::from_secs(5);
    let send = |id: &str, seq: u64| SendId {
        from: EntityKey::new("counter", id),
        seq,
    };
    let get = |node: Node| async move {
        node.ask_json("counter", "r", r#""Get""#, AskOptions::default())
            .await
            .map(|r| r.reply)
    };
    {
        let node = start_node(dir.path(), toml, &["counter"]).await?;
        let inc = node.command_from_json("counter", r#"{"Increment":{"by":5}}"#)?;
        for (sender, seq) in [("s", 1), ("s", 1), ("s", 2), ("s", 1), ("t", 1), ("s", 2)] {
            node.deliver_send("counter", "r", inc.clone(), send(sender, seq), wait)
                .await?;
        }
        assert_eq!(
            get(node.clone()).await?.as_deref(),
            Some("15"),
            "three distinct sends of six copies"
        );
        node.shutdown(Duration::from_secs(1)).await;
    }
    let node = start_node(dir.path(), toml, &["counter"]).await?;
    let inc = node.command_from_json("counter", r#"{"Increment":{"by":5}}"#)?;
    node.deliver_send("counter", "r", inc.clone(), send("s", 2), wait)
        .await?;
    node.deliver_send("counter", "r", inc, send("s", 3), wait)
        .await?;
    assert_eq!(
        get(node.clone()).await?.as_deref(),
        Some("20"),
        "after a restart a copy of send 2 is recognised, send 3 applies"
    );
    node.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

/// `relay` runs the counter, whose `Forward` sends to type `counter`,
/// which the node does not have: a dead letter, out of the outbox.
async fn undeliverable_sends_are_dead_letters() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path(), "", &["relay=counter"]).await?;
    let mut events = node.lifecycle();
    node.ask_json(
        "relay",
        "a",
        r#"{"Forward":{"entity_id":"b","by":1}}"#,
        AskOptions::default(),
    )
    .await?;
    let dead = wait_for(&mut events, Duration::from_secs(10), |e| {
        matches!(e, LifecycleEvent::DeadLetter { .. })
    })
    .await?;
    let LifecycleEvent::DeadLetter {
        entity_type,
        entity_id,
        reason,
    } = dead
    else {
        unreachable!("matched above")
    };
    assert_eq!((entity_type.as_str(), entity_id.as_str()), ("counter", "b"));
    assert!(
        reason.contains("from relay/a") && reason.contains("unknown entity type `counter`"),
        "{reason}"
    );
    let key = EntityKey::new("relay", "a");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let timers = node.journal().entity_timers(&key).await?;
        // What stays is the sender's count of sends (a mark, id 2^63 and
        // above), not its outbox entry (2^62 + n).
        if timers.iter().all(|t| t.timer_id >= 1 << 63) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead letter stayed in the outbox: {timers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
