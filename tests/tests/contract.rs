//! The behavior contract, shared by every language a bank account is
//! written in: one scenario table ([`SCENARIO`]) run against each bank
//! account of [`contract!`] on a real `cairn node` process, over QUIC.
//!
//! The table covers commands (ask and tell), rejections (by the behavior,
//! and a command it cannot decode), effects (commands sent to the bank
//! account by another entity: the Python standing order, paying on its
//! timers), recovery from events and from a snapshot after a restart,
//! time travel (by sequence number and by time), and the codecs: the JSON
//! tooling codecs (commands in, replies, events and state out) and the
//! default codec's bytes (`docs/CODEC.md`: a command sent as bytes, the
//! reply and the stored events as bytes), which must be the same in every
//! language so that one's history replays in another.
//!
//! A bank account in another language joins with one line in
//! [`contract!`]: its name and how to build its component.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cairn_client::{Client, Follow};
use cairn_host::api::{Payload, Response, StateAt};
use cairn_tests::{NodeProc, example_wasm, python_example_wasm};

/// The bank accounts under contract, one line each:
/// `language: expression returning Result<PathBuf> (the component)`.
macro_rules! contract {
    ($($language:ident: $component:expr,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $language() -> Result<()> {
            run(stringify!($language), $component).await
        }
    )*};
}

contract! {
    rust: example_wasm("bank-account"),
    python: python_example_wasm("bank-account"),
    javascript: cairn_tests::js_example_wasm("bank-account"),
}

const BANK: &str = "bank-account";
/// The entity type of the sender of the effects steps.
const ORDER: &str = "standing-order";

/// A snapshot every 5 events, so that the recovery steps see one.
const CONFIG: &str = "[entities.\"bank-account\".snapshot]\nevery = 5\n";

/// How long a (re)started node may take to answer: it compiles the
/// deployed Python components before it listens (no compiled-code cache yet).
const START_WAIT: Duration = Duration::from_secs(600);

/// One step of the contract. Ids are bank-account entities; JSON is
/// compared as values (so key order and spacing do not matter).
#[derive(Debug)]
enum Step {
    /// `ask(id, command)` replies `reply`.
    Ask(&'static str, &'static str, &'static str),
    /// `ask` `times` times, each replying `reply`.
    Repeat(u32, &'static str, &'static str, &'static str),
    /// `tell(id, command)` is queued.
    Tell(&'static str, &'static str),
    /// `ask(id, command)` fails with an error containing the text.
    Refused(&'static str, &'static str, &'static str),
    /// `ask` with the command's bytes (hex of the default codec); the
    /// reply's bytes (hex).
    AskBytes(&'static str, &'static str, &'static str),
    /// The events of `id`, as JSON, in order (#1 first).
    Events(&'static str, &'static [&'static str]),
    /// The stored bytes (hex) of event `seq` of `id`.
    EventBytes(&'static str, u64, &'static str),
    /// The state of `id` now, as JSON.
    State(&'static str, &'static str),
    /// The state of `id` right after event `seq`.
    StateAtSeq(&'static str, u64, &'static str),
    /// The state of `id` at the time event `seq` was stored.
    StateAtTimeOf(&'static str, u64, &'static str),
    /// Wait (e.g. so that two events get different times).
    Pause(u64),
    /// A standing order `order` pays `amount` into `to` `times` times, one
    /// timer apart (each payment a send); the account ends at `balance`.
    Payments {
        order: &'static str,
        to: &'static str,
        amount: i64,
        times: u32,
        balance: i64,
    },
    /// Stop the node (SIGTERM) and start it again on the same directory.
    Restart,
    /// `ask(id, command)` replies `reply`, and the entity's `started`
    /// lifecycle event says it recovered from the snapshot at `snapshot`
    /// ("none" for none) and replayed `replayed` events.
    Recovered {
        id: &'static str,
        command: &'static str,
        reply: &'static str,
        snapshot: &'static str,
        replayed: u64,
    },
}

use Step::*;

/// The contract: the reference guide's bank account.
const SCENARIO: &[Step] = &[
    // Commands, replies and the JSON codecs.
    Ask("acct-1", r#"{"Deposit":{"amount":100}}"#, r#""ok""#),
    Tell("acct-1", r#"{"Deposit":{"amount":50}}"#),
    Ask("acct-1", r#"{"Withdraw":{"amount":30}}"#, r#""ok""#),
    Ask(
        "acct-1",
        r#"{"Withdraw":{"amount":999}}"#,
        r#""insufficient funds (balance: 120)""#,
    ),
    Ask("acct-1", r#""GetBalance""#, "120"),
    // Rejections: by the behavior, and a command it cannot decode.
    Refused(
        "acct-1",
        r#"{"Deposit":{"amount":-5}}"#,
        "amount must be positive, got -5",
    ),
    Refused(
        "acct-1",
        r#"{"Withdraw":{"amount":0}}"#,
        "amount must be positive, got 0",
    ),
    Refused(
        "acct-1",
        r#"{"Steal":{"amount":5}}"#,
        "not a valid bank-account command",
    ),
    Events(
        "acct-1",
        &[
            r#"{"Deposited":{"amount":100}}"#,
            r#"{"Deposited":{"amount":50}}"#,
            r#"{"Withdrawn":{"amount":30}}"#,
        ],
    ),
    State("acct-1", r#"{"balance":120,"transactions":3}"#),
    // The default codec's bytes: {"Deposited":{"amount":100}}, and
    // {"Deposit":{"amount":10}} → "ok".
    EventBytes("acct-1", 1, "81a94465706f736974656481a6616d6f756e7464"),
    EventBytes("acct-1", 3, "81a957697468647261776e81a6616d6f756e741e"),
    AskBytes("acct-5", "81a74465706f73697481a6616d6f756e740a", "a26f6b"),
    Ask("acct-5", r#""GetBalance""#, "10"),
    // Time travel.
    StateAtSeq("acct-1", 2, r#"{"balance":150,"transactions":2}"#),
    StateAtSeq("acct-1", 1, r#"{"balance":100,"transactions":1}"#),
    Ask("acct-3", r#"{"Deposit":{"amount":1}}"#, r#""ok""#),
    Pause(20),
    Ask("acct-3", r#"{"Deposit":{"amount":2}}"#, r#""ok""#),
    StateAtTimeOf("acct-3", 1, r#"{"balance":1,"transactions":1}"#),
    StateAtTimeOf("acct-3", 2, r#"{"balance":3,"transactions":2}"#),
    // Effects: commands sent by another entity on its timers arrive once.
    Payments {
        order: "so-1",
        to: "acct-4",
        amount: 5,
        times: 3,
        balance: 15,
    },
    Events(
        "acct-4",
        &[
            r#"{"Deposited":{"amount":5}}"#,
            r#"{"Deposited":{"amount":5}}"#,
            r#"{"Deposited":{"amount":5}}"#,
        ],
    ),
    // Snapshots: 7 events, a snapshot at #5.
    Repeat(7, "acct-2", r#"{"Deposit":{"amount":10}}"#, r#""ok""#),
    Ask("acct-2", r#""GetBalance""#, "70"),
    // Recovery from events (acct-1) and from a snapshot (acct-2).
    Restart,
    Recovered {
        id: "acct-1",
        command: r#""GetBalance""#,
        reply: "120",
        snapshot: "none",
        replayed: 3,
    },
    Recovered {
        id: "acct-2",
        command: r#""GetBalance""#,
        reply: "70",
        snapshot: "5",
        replayed: 2,
    },
    StateAtSeq("acct-2", 5, r#"{"balance":50,"transactions":5}"#),
    State("acct-2", r#"{"balance":70,"transactions":7}"#),
    Ask("acct-4", r#""GetBalance""#, "15"),
    Ask("acct-1", r#"{"Withdraw":{"amount":20}}"#, r#""ok""#),
    Ask("acct-1", r#""GetBalance""#, "100"),
];

fn json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("hex"))
        .collect()
}

/// A node with the bank account under contract and the standing order.
struct Harness {
    language: &'static str,
    node: NodeProc,
    client: Client,
    follow: Option<Follow>,
}

impl Harness {
    async fn ask(&self, id: &str, command: &str) -> Result<serde_json::Value> {
        let (reply, _) = self.client.ask_json(BANK, id, command).await?;
        json(reply.as_deref().unwrap_or("null"))
    }

    async fn balance(&self, id: &str) -> Result<i64> {
        self.ask(id, r#""GetBalance""#)
            .await?
            .as_i64()
            .context("a balance that is not a number")
    }

    async fn step(&mut self, step: &Step) -> Result<()> {
        match *step {
            Ask(id, command, reply) => {
                let got = self.ask(id, command).await?;
                ensure!(got == json(reply)?, "replied {got}, expected {reply}");
            }
            Repeat(times, id, command, reply) => {
                for _ in 0..times {
                    let got = self.ask(id, command).await?;
                    ensure!(got == json(reply)?, "replied {got}, expected {reply}");
                }
            }
            Tell(id, command) => {
                self.client
                    .tell(BANK, id, Payload::Json(command.to_owned()))
                    .await?;
            }
            Refused(id, command, containing) => {
                match self.client.ask_json(BANK, id, command).await {
                    Ok((reply, seq)) => bail!("accepted: reply {reply:?} at #{seq}"),
                    Err(e) => {
                        let msg = format!("{e:#}");
                        ensure!(msg.contains(containing), "refused with {msg:?}");
                    }
                }
            }
            AskBytes(id, command, reply) => {
                let r = self
                    .client
                    .ask(BANK, id, Payload::Bytes(unhex(command)?), None, None)
                    .await?;
                match r.reply {
                    Some(Payload::Bytes(b)) => {
                        ensure!(
                            hex(&b) == reply,
                            "replied bytes {}, expected {reply}",
                            hex(&b)
                        )
                    }
                    other => bail!("replied {other:?}, expected bytes {reply}"),
                }
            }
            Events(id, expected) => {
                let events = self.client.events(BANK, id, 1, u64::MAX, 1000).await?;
                let got: Vec<serde_json::Value> = events
                    .iter()
                    .map(|e| json(e.json.as_deref().unwrap_or("null")))
                    .collect::<Result<_>>()?;
                let want: Vec<serde_json::Value> =
                    expected.iter().map(|j| json(j)).collect::<Result<_>>()?;
                ensure!(got == want, "events {got:?}");
                let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
                ensure!(
                    seqs == (1..=expected.len() as u64).collect::<Vec<_>>(),
                    "sequence numbers {seqs:?}"
                );
            }
            EventBytes(id, seq, bytes) => {
                let events = self.client.events(BANK, id, seq, seq, 1).await?;
                let e = events.first().context("no such event")?;
                ensure!(hex(&e.bytes) == bytes, "stored bytes {}", hex(&e.bytes));
            }
            State(id, expected) => {
                let s = self.client.state(BANK, id, StateAt::Now).await?;
                ensure!(json(&s.json)? == json(expected)?, "state {}", s.json);
            }
            StateAtSeq(id, seq, expected) => {
                let s = self.client.state(BANK, id, StateAt::Seq(seq)).await?;
                ensure!(json(&s.json)? == json(expected)?, "state {}", s.json);
                ensure!(s.seq == seq, "state at #{}", s.seq);
            }
            StateAtTimeOf(id, seq, expected) => {
                let events = self.client.events(BANK, id, seq, seq, 1).await?;
                let at = events.first().context("no such event")?.timestamp_ms;
                let s = self.client.state(BANK, id, StateAt::Time(at)).await?;
                ensure!(
                    json(&s.json)? == json(expected)?,
                    "state at {at}: {}",
                    s.json
                );
            }
            Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Payments {
                order,
                to,
                amount,
                times,
                balance,
            } => {
                let arrange = format!(
                    r#"{{"Arrange":{{"to":"{to}","amount":{amount},"every_ms":50,"times":{times}}}}}"#
                );
                let (reply, _) = self.client.ask_json(ORDER, order, &arrange).await?;
                ensure!(
                    reply.as_deref() == Some("\"ok\""),
                    "arrange replied {reply:?}"
                );
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let got = self.balance(to).await?;
                    if got == balance {
                        break;
                    }
                    ensure!(got < balance, "balance {got}: a payment arrived twice");
                    ensure!(Instant::now() < deadline, "balance {got} after 60 s");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // No payment after the last one, and none twice.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let got = self.balance(to).await?;
                ensure!(got == balance, "balance {got} after the payments settled");
            }
            Restart => {
                if let Some(f) = self.follow.take() {
                    f.stop();
                }
                self.client.close().await;
                let status = self.node.terminate()?;
                ensure!(status.success(), "the node exited with {status} on SIGTERM");
                let started = Instant::now();
                self.node.restart()?;
                self.client = self.node.client_within(START_WAIT).await?;
                self.follow = Some(self.client.follow_lifecycle().await?);
                eprintln!("{}: restarted in {:?}", self.language, started.elapsed());
            }
            Recovered {
                id,
                command,
                reply,
                snapshot,
                replayed,
            } => {
                let got = self.ask(id, command).await?;
                ensure!(got == json(reply)?, "replied {got}, expected {reply}");
                let follow = self.follow.as_mut().context("Recovered before Restart")?;
                let detail = started(follow, id).await?;
                let value = |key: &str| {
                    detail
                        .split_whitespace()
                        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                        .unwrap_or("")
                        .to_owned()
                };
                ensure!(
                    value("snapshot") == snapshot && value("replayed") == replayed.to_string(),
                    "started with {detail}"
                );
            }
        }
        Ok(())
    }
}

/// Waits on a lifecycle follow for the `started` event of `id`; its detail.
async fn started(follow: &mut Follow, id: &str) -> Result<String> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), follow.next())
            .await
            .context("no started event within 60 s")?;
        match next {
            Some(Ok(Response::Lifecycle {
                kind,
                entity_id,
                entity_type,
                detail,
                ..
            })) if kind == "started" && entity_type == BANK && entity_id.as_deref() == Some(id) => {
                return Ok(detail);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the lifecycle stream ended"),
        }
    }
}

/// Runs [`SCENARIO`] against the bank account `component`, written in `language`.
async fn run(language: &'static str, component: Result<PathBuf>) -> Result<()> {
    let bank = component.with_context(|| format!("building the {language} bank account"))?;
    let order = python_example_wasm("standing-order-v2")?;
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("cairn.toml");
    std::fs::write(&config, CONFIG)?;
    let node = NodeProc::start(
        &tmp.path().join("data"),
        &["--config", config.to_str().context("path")?],
    )?;
    let client = node.client().await?;
    for (ty, wasm) in [(BANK, &bank), (ORDER, &order)] {
        let started = Instant::now();
        client
            .deploy(ty, std::fs::read(wasm)?)
            .await
            .with_context(|| format!("{language}: deploying {}", wasm.display()))?;
        eprintln!("{language}: deployed {ty} in {:?}", started.elapsed());
    }
    let mut h = Harness {
        language,
        node,
        client,
        follow: None,
    };
    let started = Instant::now();
    for (i, step) in SCENARIO.iter().enumerate() {
        if let Err(e) = h.step(step).await {
            let log = std::fs::read_to_string(h.node.dir.join("node.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>();
            bail!(
                "the {language} bank account breaks the contract at step {i}, {step:?}: {e:#}\nnode log (last lines first):\n{}",
                tail.join("\n")
            );
        }
    }
    eprintln!(
        "{language}: {} contract steps in {:?}",
        SCENARIO.len(),
        started.elapsed()
    );
    let log = std::fs::read_to_string(h.node.dir.join("node.log")).unwrap_or_default();
    ensure!(!log.contains("panicked"), "a panic in the node log:\n{log}");
    if let Some(f) = h.follow.take() {
        f.stop();
    }
    h.client.close().await;
    let status = h.node.terminate()?;
    ensure!(status.success(), "{status}");
    Ok(())
}
