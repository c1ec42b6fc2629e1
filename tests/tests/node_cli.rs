//! A real `cairn node` process driven over QUIC: the CLI end to end, restarts
//! (clean and SIGKILL), mutual TLS, bad frames, and the limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use cairn_client::tls::ClientFiles;
use cairn_client::{Client, ClientError};
use cairn_host::api::{ApiError, Payload, Request, Response, StateAt};
use cairn_tests::{NodeProc, example_wasm};

const TYPE: &str = "bank-account";

fn deploy(node: &NodeProc) -> Result<()> {
    let wasm = example_wasm(TYPE)?;
    let (ok, out, err) = node.cli(&["deploy", TYPE, wasm.to_str().unwrap()])?;
    assert!(ok, "deploy failed: {err}");
    assert!(out.contains("deployed bank-account #1"), "{out}");
    Ok(())
}

fn ask(node: &NodeProc, id: &str, json: &str) -> Result<String> {
    let (ok, out, err) = node.cli(&["ask", TYPE, id, json])?;
    assert!(ok, "ask {json} failed: {err}");
    Ok(out.trim().to_owned())
}

/// Name and scheduling policy (`/proc/PID/task/TID/stat`, field 41) of
/// each thread of process `pid`.
fn threads(pid: u32) -> Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        // The name is in parentheses and may hold spaces; fields 3.. follow.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let policy = fields
            .get(41 - 3)
            .and_then(|p| p.parse().ok())
            .unwrap_or(u32::MAX);
        out.push((stat[open + 1..close].to_owned(), policy));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_end_to_end() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(tmp.path(), &["--keep-awake-us", "1000"])?;
    node.client().await?; // wait until it is up
    deploy(&node)?;
    // With keep-awake on, one thread keeps a CPU awake after requests, under
    // SCHED_IDLE (policy 5) so that it never takes CPU from real work.
    let awake: Vec<u32> = threads(node.child.id())?
        .into_iter()
        .filter(|(name, _)| name == "cairn-awake")
        .map(|(_, policy)| policy)
        .collect();
    assert_eq!(awake, [5], "keep-awake threads and their policies");

    assert_eq!(ask(&node, "a", r#"{"Deposit":{"amount":100}}"#)?, "\"ok\"");
    let t1 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(ask(&node, "a", r#"{"Deposit":{"amount":50}}"#)?, "\"ok\"");
    assert_eq!(ask(&node, "a", r#"{"Withdraw":{"amount":30}}"#)?, "\"ok\"");
    assert_eq!(
        ask(&node, "a", r#"{"Withdraw":{"amount":999}}"#)?,
        "\"insufficient funds (balance: 120)\""
    );

    let (ok, out, _) = node.cli(&["tell", TYPE, "b", r#"{"Deposit":{"amount":7}}"#])?;
    assert!(ok && out.contains("queued"), "{out}");

    let (ok, out, err) = node.cli(&["events", TYPE, "a"])?;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("#1") && lines[0].contains("Deposited") && lines[0].contains("100")
    );
    assert!(
        lines[2].starts_with("#3") && lines[2].contains("Withdrawn") && lines[2].contains("30")
    );
    let (_, out, _) = node.cli(&["events", TYPE, "a", "--from", "2", "--limit", "1", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    assert_eq!(v["seq"], 2);
    assert_eq!(v["event"]["Deposited"]["amount"], 50);

    let (ok, out, _) = node.cli(&["state", TYPE, "a", "--json"])?;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    assert_eq!(v["seq"], 3);
    assert!(out.contains("120"), "{out}");
    let (_, out, _) = node.cli(&["state", TYPE, "a", "--at-seq", "1", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    assert_eq!(
        (v["seq"].as_u64(), v["replayed"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(out.contains("100") && !out.contains("150"), "{out}");
    let (_, out, _) = node.cli(&["state", TYPE, "a", "--at", &t1.to_string(), "--json"])?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    assert_eq!(v["seq"], 1, "state at a time between #1 and #2: {out}");

    let (ok, out, _) = node.cli(&["types"])?;
    assert!(
        ok && out.contains("bank-account") && out.contains("#1"),
        "{out}"
    );

    // The type's event feed from the beginning: a's 3 events and b's 1.
    let (ok, out, err) = node.cli(&["tail", TYPE, "--from", "0", "--count", "4", "--json"])?;
    assert!(ok, "{err}");
    let feed: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(feed.len(), 4, "{out}");
    let a: Vec<u64> = feed
        .iter()
        .filter(|e| e["entity_id"] == "a")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(a, vec![1, 2, 3]);

    // Lifecycle tail sees an entity start.
    let bin = cairn_tests::cairn_bin()?;
    let tail = std::process::Command::new(bin)
        .args(["tail", "--count", "1", "--json", "--node"])
        .arg(node.addr.to_string())
        .arg("--certs")
        .arg(node.certs())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Wait until it is subscribed: it says so on stderr.
    let mut tail = tail;
    let mut stderr = std::io::BufReader::new(tail.stderr.take().expect("piped"));
    let mut line = String::new();
    while !line.contains("following") {
        line.clear();
        if std::io::BufRead::read_line(&mut stderr, &mut line)? == 0 {
            panic!("cairn tail ended before following");
        }
    }
    ask(&node, "c", r#"{"Deposit":{"amount":1}}"#)?;
    let out = tail.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"started\"") && text.contains("\"c\""),
        "{text}"
    );

    // Errors: clear, non-zero exit.
    let (ok, _, err) = node.cli(&["ask", "no-such-type", "x", "{}"])?;
    assert!(!ok && err.contains("unknown entity type"), "{err}");
    let (ok, _, err) = node.cli(&["ask", TYPE, "a", r#"{"Bogus":1}"#])?;
    assert!(!ok && err.contains("malformed command"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_every_acknowledged_event() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut node = NodeProc::start(tmp.path(), &[])?;
    node.client().await?;
    deploy(&node)?;
    assert_eq!(ask(&node, "r", r#"{"Deposit":{"amount":10}}"#)?, "\"ok\"");

    // Clean stop (SIGTERM) and restart: the deployment and the state are back.
    let status = node.terminate()?;
    assert!(status.success(), "node exited with {status}");
    node.restart()?;
    let client = node.client().await?;
    let s = client.state(TYPE, "r", StateAt::Now).await?;
    assert_eq!(s.seq, 1);
    assert!(s.json.contains("10"), "{}", s.json);

    // SIGKILL under concurrent load.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let client = client.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("k{}", (w * 7 + i) % 40);
                i += 1;
                match client
                    .ask(
                        TYPE,
                        &id,
                        Payload::Json(r#"{"Deposit":{"amount":1}}"#.into()),
                        None,
                        None,
                    )
                    .await
                {
                    Ok(r) => {
                        let mut m = acked.lock().unwrap();
                        let e = m.entry(id).or_default();
                        *e = (*e).max(r.seq);
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.values().sum::<u64>() > 50,
        "too little load: {acked:?}"
    );

    node.restart()?;
    let client = node.client().await?; // clients reconnect to the restarted node
    for (id, seq) in &acked {
        let events = client.events(TYPE, id, 1, u64::MAX, 10_000).await?;
        assert!(
            events.len() as u64 >= *seq,
            "{id}: acked #{seq}, journal has {}",
            events.len()
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1, "{id}: gap in sequence numbers");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_of_the_ca_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("node"), &[])?;
    node.client().await?;
    // A complete setup from another CA: its client certificate is not trusted.
    let other = tmp.path().join("other");
    cairn_client::tls::init(&other, &[])?;
    let mixed = ClientFiles {
        ca: node.certs().join("ca.pem"),
        cert: other.join("client/client.pem"),
        key: other.join("client/client.key"),
    };
    let r = Client::connect(node.addr, &mixed, "localhost").await;
    assert!(r.is_err(), "a foreign client certificate was accepted");
    // And a client that does not trust the node's CA refuses the node.
    let r = Client::connect(
        node.addr,
        &ClientFiles::in_dir(&other.join("client")),
        "localhost",
    )
    .await;
    assert!(r.is_err(), "a node with an unknown CA was trusted");
    // The node still serves a proper client.
    node.client().await?.types().await?;
    Ok(())
}

async fn raw_connection(node: &NodeProc) -> Result<quinn::Connection> {
    let config = cairn_client::tls::client_config(&ClientFiles::in_dir(&node.certs()))?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(config);
    Ok(ep.connect(node.addr, "localhost")?.await?)
}

/// Sends raw bytes on a new stream and returns what came back (a decoded
/// response, or None if the stream was just closed).
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<Option<Response>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        cairn_client::frame::read_frame::<Response>(&mut recv, cairn_host::api::MAX_FRAME),
    )
    .await?;
    Ok(r.ok())
}

/// A frame's announced size is admitted against the node's frame budget
/// (4 largest frames, 256 MiB) before its body is read: four streams that
/// announce 60 MiB and send 1 KiB hold 240 MiB of it; a fifth is answered
/// `busy` at once, unread; once the four are reset, frames fit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_admitted_against_the_memory_budget_before_they_are_read() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(tmp.path(), &[])?;
    node.client().await?;
    let conn = raw_connection(&node).await?;
    let announce = |len: u32| {
        let mut b = len.to_le_bytes().to_vec();
        b.extend_from_slice(&[0u8; 1024]);
        b
    };
    let mut held = Vec::new();
    for _ in 0..4 {
        let (mut send, recv) = conn.open_bi().await?;
        send.write_all(&announce(60 << 20)).await?;
        held.push((send, recv));
    }
    // Let the node read the four headers (and take their share).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&announce(60 << 20)).await?;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        cairn_client::frame::read_frame::<Response>(&mut recv, cairn_host::api::MAX_FRAME),
    )
    .await??;
    assert!(
        matches!(&r, Response::Error(ApiError::Busy(m)) if m.contains("budget")),
        "{r:?}"
    );
    for (mut send, _) in held {
        send.reset(0u32.into())?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The budget is back: a whole frame of the same size is read and answered.
    let frame = cairn_host::api::encode(&Request::Types)?;
    let r = raw_exchange(&conn, &frame).await?;
    assert!(matches!(r, Some(Response::Types(_))), "{r:?}");
    node.client().await?.types().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_the_node_keeps_serving() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(tmp.path(), &[])?;
    let good = node.client().await?;
    deploy(&node)?;
    let conn = raw_connection(&node).await?;
    // Keep-awake is off by default: no thread spins.
    assert!(
        threads(node.child.id())?
            .iter()
            .all(|(name, _)| name != "cairn-awake"),
        "a keep-awake thread runs by default"
    );

    // Garbage: a length prefix, then bytes that are no message.
    let mut garbage = 8u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 8]);
    let r = raw_exchange(&conn, &garbage).await?;
    assert!(
        matches!(r, Some(Response::Error(ApiError::BadRequest(_)))),
        "{r:?}"
    );
    // Truncated: announces 100 bytes, sends 10, ends the stream.
    let mut truncated = 100u32.to_le_bytes().to_vec();
    truncated.extend_from_slice(&[1; 10]);
    let r = raw_exchange(&conn, &truncated).await?;
    assert!(
        matches!(r, None | Some(Response::Error(ApiError::BadRequest(_)))),
        "{r:?}"
    );
    // Oversized: announces 3 GiB.
    let r = raw_exchange(&conn, &(3u32 << 30).to_le_bytes()).await?;
    assert!(
        matches!(r, Some(Response::Error(ApiError::BadRequest(_)))),
        "{r:?}"
    );
    // Unknown operation: a variant index no request has.
    let r = raw_exchange(&conn, &[1, 0, 0, 0, 99]).await?;
    assert!(
        matches!(r, Some(Response::Error(ApiError::BadRequest(_)))),
        "{r:?}"
    );
    // A well-formed request for an unknown type, and a malformed JSON command.
    let ask = |ty: &str, json: &str| Request::Ask {
        entity_type: ty.into(),
        entity_id: "x".into(),
        command: Payload::Json(json.into()),
        expected_seq: None,
        timeout_ms: None,
    };
    let frame = cairn_host::api::encode(&ask("nope", "{}"))?;
    let r = raw_exchange(&conn, &frame).await?;
    assert!(
        matches!(r, Some(Response::Error(ApiError::UnknownEntityType(_)))),
        "{r:?}"
    );
    let frame = cairn_host::api::encode(&ask(TYPE, "{not json"))?;
    let r = raw_exchange(&conn, &frame).await?;
    assert!(
        matches!(r, Some(Response::Error(ApiError::MalformedCommand(_)))),
        "{r:?}"
    );

    // Other clients, and this connection, keep being served.
    let (reply, seq) = good
        .ask_json(TYPE, "ok", r#"{"Deposit":{"amount":5}}"#)
        .await?;
    assert_eq!((reply.as_deref(), seq), (Some("\"ok\""), 1));
    let frame = cairn_host::api::encode(&Request::Types)?;
    assert!(matches!(
        raw_exchange(&conn, &frame).await?,
        Some(Response::Types(_))
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_busy_instead_of_falling_over() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("cairn.toml");
    std::fs::write(
        &config,
        "[node]\nmax_connections = 2\nmax_in_flight = 4\nworkers = 3\nkeep_awake_us = 0\n",
    )?;
    let node = NodeProc::start(
        &tmp.path().join("data"),
        &["--config", config.to_str().unwrap()],
    )?;
    let c1 = node.client().await?;
    // `workers` sizes the node's runtime (tokio names its threads);
    // `keep_awake_us = 0` means no keep-awake thread.
    let names = threads(node.child.id())?;
    let count = |n: &str| names.iter().filter(|(name, _)| name == n).count();
    assert_eq!(count("tokio-rt-worker"), 3, "runtime threads: {names:?}");
    assert_eq!(count("cairn-awake"), 0, "keep-awake threads: {names:?}");
    deploy(&node)?; // a short-lived connection of its own
    let _c2 = node.client().await?;
    // A third connection is over the limit.
    let files = ClientFiles::in_dir(&node.certs());
    let r = Client::connect(node.addr, &files, "localhost").await;
    match r {
        Err(e) => assert!(e.to_string().contains("busy"), "{e}"),
        Ok(_) => panic!("a connection over the limit was accepted"),
    }

    // 200 concurrent asks on one connection with 4 allowed in flight: some
    // are answered busy, none is lost silently, and the node goes on.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = c1.clone();
        tasks.push(tokio::spawn(async move {
            c.ask(
                TYPE,
                &format!("l{}", i % 20),
                Payload::Json(r#"{"Deposit":{"amount":1}}"#.into()),
                None,
                None,
            )
            .await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match t.await? {
            Ok(_) => ok += 1,
            Err(ClientError::Api(ApiError::Busy(_))) => busy += 1,
            Err(e) => panic!("unexpected failure: {e}"),
        }
    }
    assert_eq!(ok + busy, 200);
    assert!(busy > 0, "no request was answered busy");
    assert!(ok > 0, "no request got through");
    // The deposits that were accepted are exactly those in the journal.
    let mut stored = 0;
    for i in 0..20 {
        stored += c1
            .events(TYPE, &format!("l{i}"), 1, u64::MAX, 1000)
            .await?
            .len();
    }
    assert_eq!(stored, ok);
    Ok(())
}

/// Reads a follow stream until `want` events have arrived; returns them with
/// the cursor after each batch.
async fn read_feed(
    follow: &mut cairn_client::Follow,
    want: usize,
) -> Result<Vec<(cairn_host::api::EventView, u64)>> {
    let mut got = Vec::new();
    while got.len() < want {
        let next = tokio::time::timeout(Duration::from_secs(30), follow.next()).await?;
        match next {
            Some(Ok(Response::Feed { events, next })) => {
                got.extend(events.into_iter().map(|e| (e, next)));
            }
            other => panic!("unexpected on the feed: {other:?}"),
        }
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_has_no_gaps_and_resumes_from_a_cursor() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("data"), &[])?;
    let client = node.client().await?;
    client
        .deploy(TYPE, std::fs::read(example_wasm(TYPE)?)?)
        .await?;
    // Subscribe from the beginning, then write concurrently: 4 writers, 5
    // entities each, 10 deposits per entity.
    let mut follow = client.follow_events(TYPE, 0).await?;
    let mut writers = Vec::new();
    for w in 0..4 {
        let c = client.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..10 {
                for e in 0..5 {
                    c.ask_json(
                        TYPE,
                        &format!("f{w}-{e}"),
                        &format!(r#"{{"Deposit":{{"amount":{}}}}}"#, round + 1),
                    )
                    .await?;
                }
            }
            Ok::<_, ClientError>(())
        }));
    }
    let got = read_feed(&mut follow, 200).await?;
    for w in writers {
        w.await??;
    }
    follow.stop();
    assert_eq!(got.len(), 200);
    // Every entity's events arrive once each, in sequence order, no gaps.
    let mut per_entity: HashMap<String, Vec<u64>> = HashMap::new();
    for (e, _) in &got {
        assert_eq!(e.entity_type, TYPE);
        assert!(e.json.as_deref().is_some_and(|j| j.contains("Deposited")));
        per_entity
            .entry(e.entity_id.clone())
            .or_default()
            .push(e.seq);
    }
    assert_eq!(per_entity.len(), 20);
    for (id, seqs) in &per_entity {
        assert_eq!(seqs, &(1..=10).collect::<Vec<u64>>(), "{id}");
    }
    // Resuming from the cursor after some batch yields exactly the rest.
    let boundaries: Vec<usize> = (1..got.len())
        .filter(|&i| got[i - 1].1 != got[i].1)
        .collect();
    let mid = boundaries.get(boundaries.len() / 2).copied().unwrap_or(0);
    let cursor = if mid == 0 { 0 } else { got[mid - 1].1 };
    let mut resumed = client.follow_events(TYPE, cursor).await?;
    let rest = read_feed(&mut resumed, got.len() - mid).await?;
    resumed.stop();
    let key = |e: &cairn_host::api::EventView| (e.entity_id.clone(), e.seq);
    assert_eq!(
        rest.iter().map(|(e, _)| key(e)).collect::<Vec<_>>(),
        got[mid..].iter().map(|(e, _)| key(e)).collect::<Vec<_>>()
    );
    // An unknown type is an error, not a silent empty stream.
    match client.follow_events("no-such-type", 0).await {
        Err(ClientError::Api(ApiError::UnknownEntityType(_))) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("following an unknown type succeeded"),
    }
    client.close().await;
    Ok(())
}

/// The number after `label` in `line`, e.g. `p50` in "sequential   p50 180 µs".
fn figure(out: &str, line: &str, label: &str) -> Option<f64> {
    let l = out.lines().find(|l| l.starts_with(line))?;
    let mut words = l.split_whitespace();
    words.find(|w| *w == label)?;
    words.next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_a_node_and_prints_its_figures() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(&tmp.path().join("data"), &["--journal", "log"])?;
    node.client().await?;
    deploy(&node)?;
    let probes = tmp.path().join("probes");
    std::fs::create_dir(&probes)?;
    let (ok, out, err) = node.cli(&[
        "bench",
        "--streams",
        "4",
        "--entities",
        "20",
        "--commands",
        "400",
        "--probe-disk",
        "--fsync-dir",
        probes.to_str().unwrap(),
    ])?;
    assert!(ok, "bench failed: {err}");
    assert!(
        out.contains("400 commands over 4 streams on 20 entities"),
        "{out}"
    );
    assert!(out.contains("(0 failed"), "{out}");
    for (line, label) in [
        ("throughput", "throughput"),
        ("latency", "p50"),
        ("latency", "p99.9"),
        ("sequential", "p50"),
        ("fsync", "p50"),
        ("log sync", "p50"),
        ("round trip", "p50"),
    ] {
        let v = figure(&out, line, label);
        assert!(
            v.is_some_and(|v| v > 0.0),
            "{line} {label}: {v:?} in\n{out}"
        );
    }
    // The probes clean up after themselves.
    assert_eq!(std::fs::read_dir(&probes)?.count(), 0, "probe files left");
    // The deposits are real: the 2,000 sequential ones went to 100 entities.
    let (ok, events, err) = node.cli(&["events", TYPE, "bench-seq-7"])?;
    assert!(ok, "{err}");
    assert_eq!(events.lines().count(), 20, "{events}");
    let (ok, state, err) = node.cli(&["state", TYPE, "bench-3"])?;
    assert!(ok, "{err}");
    // Stream 3 of 4 cycles through entities 3, 7, 11, 15, 19, and no other
    // stream reaches them: 100 / 5 = 20 deposits of 1 each.
    assert!(
        state.contains(r#""balance":20,"transactions":20"#),
        "{state}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_command_fails_fast_when_no_node_answers() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = NodeProc::start(tmp.path(), &[])?;
    node.client().await?; // its certificates exist
    // A loopback port where nothing listens: QUIC gets no refusal, so only
    // the connect timeout ends the wait.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let certs = node.certs();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(cairn_tests::cairn_bin()?)
        .args([
            "ask",
            "bank-account",
            "a",
            r#""GetBalance""#,
            "--node",
            &addr,
        ])
        .args([
            "--certs",
            certs.to_str().unwrap(),
            "--connect-timeout",
            "1s",
        ])
        .output()?;
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "no node answering at {addr} (no answer within 1s)"
        )),
        "{err}"
    );
    println!("`cairn ask` with no node at {addr}: failed after {took:?}");
    // The default bound is said in the error too.
    let out = std::process::Command::new(cairn_tests::cairn_bin()?)
        .args(["types", "--node", &addr, "--certs", certs.to_str().unwrap()])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no answer within 3s"), "{err}");
    Ok(())
}
