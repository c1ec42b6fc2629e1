//! Commands a cluster produces itself, on real node processes: entity-to-
//! entity sends and durable timers go through the same routing as a
//! client's command, so only the owner of an entity's shard ever starts it
//! or writes for it, and timers move with their shards (issue 28).
//!
//! The `counter` example: `Forward { entity_id, by }` replies and sends
//! `Increment { by }` to another counter; `IncrementLater { by, delay_ms }`
//! arms a durable timer. Both write no event: their write holds timers
//! only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cairn_client::Client;
use cairn_tests::NodeProc;
use cairn_tests::cluster::{
    Cluster, ask_type, cut, id_of, members, start_all_up, status, wait_status,
};

/// The cluster tests start several node processes each: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Deploys `counter` through node 0: `cairn deploy` returns once every
/// member runs it (checked right after, on each node).
async fn deploy_counter(c: &Cluster) -> Result<()> {
    let wasm = cairn_tests::example_wasm("counter")?;
    let (ok, out, err) = c
        .node(0)
        .cli(&["deploy", "counter", &wasm.to_string_lossy()])?;
    ensure!(ok, "deploy failed: {err}");
    ensure!(out.contains("active on every member"), "deploy said: {out}");
    for n in &c.nodes {
        let (ok, out, err) = n.cli(&["types"])?;
        ensure!(
            ok && out.contains("counter"),
            "{} does not run the deploy that `cairn deploy` reported active everywhere: {out}{err}",
            n.addr
        );
    }
    Ok(())
}

/// Three nodes up, `counter` active on each.
async fn three_with_counter() -> Result<Cluster> {
    let c = start_all_up(3, None).await?;
    deploy_counter(&c).await?;
    Ok(c)
}

/// A counter's value, read through `client` (routed to its owner). A read
/// changes nothing, so one refused while a shard moves (`unavailable`,
/// `busy`) is tried again, for up to 15 s.
async fn value(client: &Client, id: &str) -> Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match ask_type(client, "counter", id, r#""Get""#).await {
            Ok((j, _)) => return Ok(j.trim().parse()?),
            Err(e) if Instant::now() < deadline => {
                eprintln!("reading {id}: {e}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("value of {id}: {e}")),
        }
    }
}

/// A write that must happen once: tried again only while the answer says
/// it was not applied (the error contract), for up to 15 s.
async fn write_once(client: &Client, id: &str, json: &str) -> Result<()> {
    use cairn_client::ClientError;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match ask_type(client, "counter", id, json).await {
            Ok(_) => return Ok(()),
            Err(ClientError::Api(e)) if !e.may_have_applied() && Instant::now() < deadline => {
                eprintln!("{id}: {e}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("{id} <- {json}: {e}")),
        }
    }
}

/// Reads every counter until two rounds 1 s apart agree (sends and timers
/// still on their way have landed), at most `patience`.
async fn settled(client: &Client, ids: &[String], patience: Duration) -> Result<Vec<i64>> {
    let deadline = Instant::now() + patience;
    let mut last: Option<Vec<i64>> = None;
    loop {
        let mut now = Vec::with_capacity(ids.len());
        for id in ids {
            now.push(value(client, id).await?);
        }
        if last.as_ref() == Some(&now) || Instant::now() > deadline {
            return Ok(now);
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every copy of every counter in the stopped nodes' journals: sequence
/// numbers contiguous from 1, and all copies agree where they overlap.
async fn one_history_per_counter(nodes: &[NodeProc], ids: &[String]) -> Result<()> {
    use cairn_store::{EntityKey, Journal};
    let mut first: HashMap<String, Vec<(u64, Vec<u8>)>> = HashMap::new();
    for n in nodes {
        let journal = cairn_store::LogStore::open(&n.dir, 64)?;
        for id in ids {
            let key = EntityKey::new("counter", id.clone());
            let h: Vec<(u64, Vec<u8>)> = journal
                .read(&key, 1, i64::MAX as u64, usize::MAX)
                .await?
                .into_iter()
                .map(|e| (e.seq, e.payload))
                .collect();
            for (i, (seq, _)) in h.iter().enumerate() {
                ensure!(
                    *seq == i as u64 + 1,
                    "{id}: sequence numbers not contiguous"
                );
            }
            match first.get(id) {
                None => {
                    first.insert(id.clone(), h);
                }
                Some(f) => {
                    for (a, b) in f.iter().zip(h.iter()) {
                        ensure!(a == b, "{id}: two histories at #{}", a.0);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Live entities on each node, from its own status.
fn live_entities(c: &Cluster) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for n in &c.nodes {
        let s = status(n)?;
        let me = s["node"].as_u64().unwrap_or(0);
        let live = members(&s)
            .iter()
            .find(|m| m["id"].as_u64() == Some(me))
            .and_then(|m| m["live_entities"].as_u64())
            .unwrap_or(0);
        out.push(live);
    }
    Ok(out)
}

/// The issue's report: 400 `Forward`s from 50 senders to 200 counters
/// through every node, beside 400 direct increments of the same counters
/// through other nodes. Before, non-owners started copies of the targets
/// and wrote to them (sequence conflicts, lost sends, two histories).
/// Now: every acknowledged increment and every send is applied exactly
/// once, only owners run entities, and each counter has one history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_and_commands_run_only_on_owners_and_apply_once() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = three_with_counter().await?;
    let mut clients = Vec::new();
    for n in &c.nodes {
        clients.push(Arc::new(n.client().await?));
    }
    let targets: Vec<String> = (0..200).map(|i| format!("c-{i}")).collect();
    let senders: Vec<String> = (0..50).map(|i| format!("s-{i}")).collect();

    // (target, forwards acked, forwards failed, directs acked, directs failed)
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let clients = clients.clone();
        let (targets, senders) = (targets.clone(), senders.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally: HashMap<String, [u64; 4]> = HashMap::new();
            for k in (w..400).step_by(8) {
                let target = &targets[k % 200];
                let sender = &senders[k % 50];
                let fwd = format!(r#"{{"Forward":{{"entity_id":"{target}","by":1}}}}"#);
                let r = ask_type(&clients[k % 3], "counter", sender, &fwd).await;
                tally.entry(target.clone()).or_default()[usize::from(r.is_err())] += 1;
                if let Err(e) = r {
                    eprintln!("forward through node {} failed: {e}", k % 3);
                }
                let inc = r#"{"Increment":{"by":1000}}"#;
                let r = ask_type(&clients[(k + 1) % 3], "counter", target, inc).await;
                tally.entry(target.clone()).or_default()[2 + usize::from(r.is_err())] += 1;
                if let Err(e) = r {
                    eprintln!("increment through node {} failed: {e}", (k + 1) % 3);
                }
            }
            tally
        }));
    }
    let mut tally: HashMap<String, [u64; 4]> = HashMap::new();
    for t in tasks {
        for (id, n) in t.await? {
            let e = tally.entry(id).or_default();
            for i in 0..4 {
                e[i] += n[i];
            }
        }
    }
    let failed: u64 = tally.values().map(|t| t[1] + t[3]).sum();
    eprintln!("commands failed: {failed} of 800");
    ensure!(failed <= 40, "{failed} of 800 commands failed");

    let values = settled(&clients[0], &targets, Duration::from_secs(30)).await?;
    for (id, v) in targets.iter().zip(&values) {
        let t = tally.get(id).copied().unwrap_or_default();
        let (direct, forwarded) = (v / 1000, v % 1000);
        ensure!(
            (t[2]..=t[2] + t[3]).contains(&(direct as u64)),
            "{id} = {v}: {} direct increments acknowledged, {} failed",
            t[2],
            t[3]
        );
        ensure!(
            (t[0]..=t[0] + t[1]).contains(&(forwarded as u64)),
            "{id} = {v}: {} forwards acknowledged, {} failed: a send was lost or applied twice",
            t[0],
            t[1]
        );
    }
    // Only owners started entities: 250 live in all (none passivated yet).
    let live = live_entities(&c)?;
    eprintln!("live entities per node: {live:?}");
    ensure!(
        live.iter().sum::<u64>() == 250,
        "{live:?} live entities on the nodes, 250 entities exist: a non-owner started copies"
    );
    for n in &mut c.nodes {
        n.kill();
    }
    one_history_per_counter(&c.nodes, &targets).await?;
    Ok(())
}

/// Timers armed on 100 counters, then a member joins and another leaves
/// (`cairn cluster leave`) while they are pending: each fires exactly once,
/// on the owner of its counter's shard at the time. Before, timers armed
/// before a leave were lost and timers armed before a join fired on the
/// old owner, writing a second history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_move_with_their_shards_and_fire_once() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = three_with_counter().await?;
    let client = c.node(0).client().await?;
    let ids: Vec<String> = (0..100).map(|i| format!("t-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let through = c.node(i % 3).client().await?;
        // Due 6 to 16 s from now: some during the moves, most after.
        let delay = 6_000 + (i as u64 % 10) * 1_000;
        let cmd = format!(r#"{{"IncrementLater":{{"by":1,"delay_ms":{delay}}}}}"#);
        write_once(&through, id, &cmd).await?;
        through.close().await;
    }
    // A fourth member joins: shards (and their timers) move to it.
    c.add(3, 3)?;
    let joined = c.node(3).addr.to_string();
    wait_status(
        c.node(0),
        Duration::from_secs(60),
        "the new member owns shards",
        |s| {
            members(s).iter().any(|m| {
                m["addr"].as_str() == Some(joined.as_str()) && m["shards"].as_u64() > Some(20)
            })
        },
    )
    .await?;
    // The second member leaves for good: its shards and timers move.
    let leaving = c.node(1).addr.to_string();
    let (ok, _, err) = c.node(0).cli(&["cluster", "leave", &leaving])?;
    ensure!(ok, "cluster leave failed: {err}");
    wait_status(
        c.node(0),
        Duration::from_secs(60),
        "the leaver owns no shard",
        |s| {
            members(s).iter().all(|m| {
                m["addr"].as_str() != Some(leaving.as_str()) || m["shards"].as_u64() == Some(0)
            })
        },
    )
    .await?;
    // Every timer is due by now + 16 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let values = settled(&client, &ids, Duration::from_secs(30)).await?;
    let wrong: Vec<(&String, i64)> = ids.iter().zip(values).filter(|(_, v)| *v != 1).collect();
    ensure!(
        wrong.is_empty(),
        "{} of 100 timers did not fire exactly once: {wrong:?}",
        wrong.len()
    );
    for n in &mut c.nodes {
        n.kill();
    }
    one_history_per_counter(&c.nodes, &ids).await?;
    Ok(())
}

/// Timers are on their shard's replicas: 60 timers armed on counters of
/// one node's shards, then that node is SIGKILLed before they are due; a
/// replica takes the shards over and each timer fires exactly once there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_survive_the_failover_of_their_owner() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = three_with_counter().await?;
    // Counters whose shard node 1 (not the seed) owns.
    let s = status(c.node(0))?;
    let victim = c.node(1).addr.to_string();
    let candidates: Vec<String> = (0..2_000).map(|i| format!("f-{i}")).collect();
    let owned = cairn_tests::cluster::owners(&s, "counter", &candidates);
    let ids: Vec<String> = candidates
        .into_iter()
        .filter(|id| owned.get(id) == Some(&victim))
        .take(60)
        .collect();
    ensure!(
        ids.len() == 60,
        "node 1 owns too few counters: {}",
        ids.len()
    );
    let client = c.node(0).client().await?;
    for id in &ids {
        let cmd = r#"{"IncrementLater":{"by":1,"delay_ms":9000}}"#;
        write_once(&client, id, cmd).await?;
    }
    c.nodes[1].kill();
    // Failover within a few seconds, then every timer due by 9 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let values = settled(&client, &ids, Duration::from_secs(30)).await?;
    let wrong: Vec<(&String, i64)> = ids.iter().zip(values).filter(|(_, v)| *v != 1).collect();
    ensure!(
        wrong.is_empty(),
        "{} of 60 timers did not fire exactly once after the failover: {wrong:?}",
        wrong.len()
    );
    for n in &mut c.nodes {
        n.kill();
    }
    one_history_per_counter(&c.nodes, &ids).await?;
    Ok(())
}

/// A `Forward` asked until it is answered: tried again while the answer
/// says nothing was applied, for up to 30 s. Ok(true): acknowledged;
/// Ok(false): it may or may not have been applied (its send with it).
async fn forward(client: &Client, sender: &str, target: &str) -> Result<bool> {
    use cairn_client::ClientError;
    let json = format!(r#"{{"Forward":{{"entity_id":"{target}","by":1}}}}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ask_type(client, "counter", sender, &json).await {
            Ok(_) => return Ok(true),
            Err(ClientError::Api(e)) if !e.may_have_applied() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(ClientError::Api(e)) if e.may_have_applied() => {
                eprintln!("{sender} -> {target}: {e}");
                return Ok(false);
            }
            Err(e) => return Err(anyhow::anyhow!("{sender} -> {target}: {e}")),
        }
    }
}

/// Sends are journaled with their sender's command and applied exactly
/// once: 600 `Forward`s from 30 senders to 60 counters spread over the
/// members, while the member owning a third of both is SIGKILLed (its
/// replicas take over the senders' outboxes and the receivers' records of
/// what they applied) and then a fourth member joins (shards of both
/// move). Every acknowledged forward's increment lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_apply_exactly_once_across_failover_and_handoff() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = three_with_counter().await?;
    let targets: Vec<String> = (0..60).map(|i| format!("x-{i}")).collect();
    let senders: Vec<String> = (0..30).map(|i| format!("y-{i}")).collect();
    let s = status(c.node(0))?;
    let victim = c.node(1).addr.to_string();
    let on_victim = |ids: &[String]| {
        let owned = cairn_tests::cluster::owners(&s, "counter", ids);
        ids.iter()
            .filter(|id| owned.get(*id) == Some(&victim))
            .count()
    };
    let (vs, vt) = (on_victim(&senders), on_victim(&targets));
    eprintln!("the victim owns {vs} of 30 senders and {vt} of 60 targets");
    ensure!(vs > 0 && vt > 0, "the victim owns no sender or no target");

    // Through the members that stay up.
    let clients = [
        Arc::new(c.node(0).client().await?),
        Arc::new(c.node(2).client().await?),
    ];
    let mut tasks = Vec::new();
    for w in 0..6usize {
        let clients = clients.clone();
        let (targets, senders) = (targets.clone(), senders.clone());
        tasks.push(tokio::spawn(async move {
            // target -> (acknowledged, outcome unknown)
            let mut tally: HashMap<String, (u64, u64)> = HashMap::new();
            for k in (w..600).step_by(6) {
                let (sender, target) = (&senders[k % 30], &targets[(k * 7) % 60]);
                let acked = forward(&clients[k % 2], sender, target).await?;
                let t = tally.entry(target.clone()).or_default();
                if acked {
                    t.0 += 1;
                } else {
                    t.1 += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(tally)
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.nodes[1].kill();
    eprintln!("killed {victim}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    c.add(3, 3)?;
    eprintln!("a fourth member joins");
    let mut tally: HashMap<String, (u64, u64)> = HashMap::new();
    for t in tasks {
        for (id, (a, u)) in t.await?? {
            let e = tally.entry(id).or_default();
            e.0 += a;
            e.1 += u;
        }
    }
    let unknown: u64 = tally.values().map(|t| t.1).sum();
    eprintln!("forwards with an unknown outcome: {unknown} of 600");
    ensure!(
        unknown <= 30,
        "{unknown} of 600 forwards had an unknown outcome"
    );

    let values = settled(&clients[0], &targets, Duration::from_secs(60)).await?;
    let mut wrong = Vec::new();
    for (id, v) in targets.iter().zip(&values) {
        let (acked, unknown) = tally.get(id).copied().unwrap_or_default();
        if !(acked..=acked + unknown).contains(&(*v as u64)) {
            wrong.push(format!(
                "{id} = {v} ({acked} acknowledged, {unknown} unknown)"
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "sends lost or applied twice: {}",
        wrong.join(", ")
    );
    for n in &mut c.nodes {
        n.kill();
    }
    let all: Vec<String> = targets.iter().chain(&senders).cloned().collect();
    one_history_per_counter(&c.nodes, &all).await?;
    Ok(())
}

/// A timer armed by a command that writes no event, on a replica set split
/// in two (4 nodes, `replicas = 2`, `min_acks = 1`, the decision log's
/// leader outside the owner's set so the owner keeps its lease): 20
/// counters of owner O get `IncrementLater` while O is cut from its
/// replica B (the arming reaches replica A only), then `Increment` while O
/// is cut from A instead (the write with an event reaches B only), then O
/// is SIGKILLed. B must not take the later write without the arming (it
/// gets the timers whole), so whichever replica takes over, each counter
/// ends at 2: its increment and its timer's, once. Before the write of
/// timers carried its position, B took it, and the longer copy's timers
/// replaced the other's: every timer was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timer_armed_without_events_survives_a_split_replica_set_and_a_failover() -> Result<()> {
    use cairn_cluster::NodeId;
    let _serial = SERIAL.lock().await;
    let toml = "[defaults.replication]\nreplicas = 2\nmin_acks = 1\n";
    let mut c = start_all_up(4, Some(toml)).await?;
    deploy_counter(&c).await?;
    let s = wait_status(c.node(0), Duration::from_secs(30), "a leader", |s| {
        s["leader"].as_u64().is_some()
    })
    .await?;
    let ids: Vec<u64> = c
        .nodes
        .iter()
        .map(|n| id_of(&s, n.addr))
        .collect::<Result<_>>()?;
    let index_of = |id: NodeId| {
        ids.iter()
            .position(|x| *x == id.0)
            .expect("a member of the ring")
    };
    let mut ring: Vec<NodeId> = ids.iter().map(|i| NodeId(*i)).collect();
    ring.sort();
    let leader = s["leader"].as_u64().expect("a leader");
    // O follows the leader in the ring, so its set is the two after it.
    let at = ring
        .iter()
        .position(|n| n.0 == leader)
        .expect("the leader is a member");
    let o = index_of(ring[(at + 1) % ring.len()]);
    let set = cairn_cluster::replication::replica_set(&ring, NodeId(ids[o]), 2);
    let [a, b] = [index_of(set[0]), index_of(set[1])];
    let l = index_of(NodeId(leader));
    eprintln!("O = node {o}, its replicas A = node {a} and B = node {b}, the leader node {l}");
    let candidates: Vec<String> = (0..4_000).map(|i| format!("s-{i}")).collect();
    let owned = cairn_tests::cluster::owners(&s, "counter", &candidates);
    let o_addr = c.node(o).addr.to_string();
    let counters: Vec<String> = candidates
        .into_iter()
        .filter(|id| owned.get(id) == Some(&o_addr))
        .take(20)
        .collect();
    ensure!(counters.len() == 20, "O owns too few counters");
    let client = c.node(l).client().await?;
    cut(c.node(o), &[c.node(b).addr])?;
    for id in &counters {
        write_once(
            &client,
            id,
            r#"{"IncrementLater":{"by":1,"delay_ms":20000}}"#,
        )
        .await?;
    }
    cut(c.node(o), &[c.node(a).addr])?;
    for id in &counters {
        write_once(&client, id, r#"{"Increment":{"by":1}}"#).await?;
    }
    c.nodes[o].kill();
    // The failover takes a few seconds; every timer is due 20 s after it
    // was armed.
    tokio::time::sleep(Duration::from_secs(24)).await;
    let values = settled(&client, &counters, Duration::from_secs(30)).await?;
    let wrong: Vec<(&String, i64)> = counters
        .iter()
        .zip(values)
        .filter(|(_, v)| *v != 2)
        .collect();
    ensure!(
        wrong.is_empty(),
        "{} of 20 counters do not hold their increment and their timer's once: {wrong:?}",
        wrong.len()
    );
    for n in &mut c.nodes {
        n.kill();
    }
    one_history_per_counter(&c.nodes, &counters).await?;
    Ok(())
}

/// A receiver that cannot be reached holds back only the messages sent to
/// it: 3 nodes without replicas (so the shards of a killed node wait for
/// it), a sender on node 0 forwards to a counter of node 2, which is
/// SIGKILLed first, then to five counters of node 1. The five get their
/// increments while node 2 is still down; once it is back, its counter gets
/// its own, once. (Before, a sender's messages went one at a time in send
/// order, and the five waited for node 2.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_cannot_be_reached_holds_back_only_its_own_messages() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let toml = "[defaults.replication]\nreplicas = 0\nmin_acks = 0\n";
    let mut c = start_all_up(3, Some(toml)).await?;
    deploy_counter(&c).await?;
    let s = status(c.node(0))?;
    let candidates: Vec<String> = (0..2_000).map(|i| format!("h-{i}")).collect();
    let owned = cairn_tests::cluster::owners(&s, "counter", &candidates);
    let on = |i: usize| {
        let addr = c.node(i).addr.to_string();
        candidates
            .iter()
            .filter(|id| owned.get(*id) == Some(&addr))
            .cloned()
            .collect::<Vec<String>>()
    };
    let (on0, on1, on2) = (on(0), on(1), on(2));
    ensure!(
        !on0.is_empty() && on1.len() >= 5 && !on2.is_empty(),
        "too few counters per node"
    );
    let (sender, far) = (&on0[0], &on2[0]);
    let near = &on1[..5];
    let client = c.node(0).client().await?;
    c.nodes[2].kill();
    ensure!(
        forward(&client, sender, far).await?,
        "the forward to node 2's counter was not acknowledged"
    );
    for t in near {
        ensure!(
            forward(&client, sender, t).await?,
            "the forward to {t} was not acknowledged"
        );
    }
    // Each lands within 30 s (its delivery is not waiting on node 2), and
    // stays at 1.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut values = Vec::new();
        for t in near {
            values.push(value(&client, t).await?);
        }
        if values.iter().all(|v| *v == 1) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "with node 2 down, the sends to node 1's counters did not all land once: {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.nodes[2].restart()?;
    let far_value = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = value(&client, far).await;
            match v {
                Ok(1) => break 1,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => break other?,
            }
        }
    };
    ensure!(far_value == 1, "node 2's counter holds {far_value}, not 1");
    let values = settled(&client, near, Duration::from_secs(10)).await?;
    ensure!(
        values.iter().all(|v| *v == 1),
        "node 1's counters changed after node 2 came back: {values:?}"
    );
    let mut all: Vec<String> = near.to_vec();
    all.push(far.clone());
    all.push(sender.clone());
    for n in &mut c.nodes {
        n.kill();
    }
    one_history_per_counter(&c.nodes, &all).await?;
    Ok(())
}
