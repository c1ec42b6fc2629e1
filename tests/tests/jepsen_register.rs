//! A Jepsen-style linearizability test against a 5-node cluster of real
//! `cairn node` processes (`replicas = 2`, `min_acks = 1`, the defaults,
//! written out in every node's `cairn.toml`).
//!
//! Workload "register": one register per entity (a `bank-account`). Its
//! value is the pair (sequence number, balance). A read is `GetBalance`
//! (the reply carries both). A write is a `Deposit` of a random amount
//! carrying the expected sequence number the client last saw for the key:
//! a compare-and-set on the entity's history. It lands at `expected + 1`
//! (ok), is refused with a `Conflict` naming the entity's sequence number
//! (the write did not happen, and the entity was at `actual`: the checker
//! treats that as a read of the sequence number), is refused otherwise
//! (fail: an error saying it was not applied, `ApiError::may_have_applied`
//! false: it never takes effect), or gets no definite answer (info:
//! `Indeterminate`, `Timeout`, `ShuttingDown`, a lost connection, no answer
//! within the client's patience: it may take effect at any time after its
//! invocation, or never). Ten clients (two per member at the start; a
//! client moves to the next member when its connection fails) on 8 keys at
//! a time: a new set of keys every 10 s, so each key's history stays a few
//! hundred operations long, and one operation in ten on an older key, so
//! old keys live through later faults too.
//!
//! The checker (Wing & Gong's search with Lowe's memoization of
//! (linearized set, state), as in Knossos and Porcupine; P-compositionality:
//! one register per key, each checked alone) looks for a linearization of
//! each key's history: every ok operation takes effect once between its
//! invocation and its completion, an info write at most once at any time
//! after its invocation, a failed write never; a read's answer is the
//! register's value at its point, a conflict's `actual` the sequence
//! number at its point.
//!
//! The nemesis, round after round, overlapping faults (clients read and
//! write throughout, so reads and writes land during every fault), in
//! turn:
//! 0. a 2|3 partition, and during it a SIGKILL (of the decision log's
//!    leader if it is on the chosen side, else of a member of that side;
//!    the minority and the majority side in turn), a restart while the
//!    partition holds, then the heal;
//! 1. `cairn cluster leave` of a member (never node 0, the first seed),
//!    and a SIGSTOP of another member during the handoff of its shards
//!    (2 to 8 s: shorter than the failure detection or longer than a
//!    failover), then SIGCONT; the member hands its shards off and exits;
//! 2. a new member joins (a new node on an empty directory, 127.0.0.N),
//!    and once it is up, a SIGSTOP of another member (2 to 8 s) while
//!    shards move to it, then SIGCONT;
//! 3. a SIGSTOP of one member, a 1|rest partition of another and, during
//!    both, a SIGKILL of a third; restart, SIGCONT (the pause lasts 4.5 to
//!    8.5 s), heal.
//!
//! So membership goes 5, 4, 5, 5 members per cycle of four rounds. After
//! every round (within 120 s), exactly the members are up and reachable
//! and every node that left is `removed`, before the next round.
//! At the end: a read of every key through the first member, then through
//! the newest (every key must be served within 120 s of the heal), then
//! the checker per key; every node's `node.log` (those that left included)
//! must hold no `panicked` (nor a runtime abort: `overflowed its stack`,
//! `fatal runtime error`); every live member's journal one history per
//! entity. A failure keeps the nodes' directory (with the whole history
//! in `history.txt`) and prints the key's history around the operation
//! that could not be placed (with its time on the node logs' clock), each
//! node's journal length of the key, the log lines about its shard and the
//! members at the end.
//!
//! `CAIRN_JEPSEN_ROUNDS` sets the number of rounds (20 by default: five
//! cycles, about 4 minutes on a 2-core machine; the documented longer run
//! is `CAIRN_JEPSEN_ROUNDS=100`, about 25 minutes). `CAIRN_JEPSEN_SEED`
//! fixes the clients' and the nemesis's random choices (printed otherwise;
//! the timing of a run is not reproducible). `CAIRN_TEST_KEEP=1` keeps the
//! nodes' directories and logs. `--nocapture` shows the figures.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cairn_client::tls::ClientFiles;
use cairn_client::{Client, ClientError};
use cairn_host::api::{ApiError, Payload, Request, Response};
use cairn_tests::cluster::*;
use serde_json::Value;

// ---------------------------------------------------------------------------
// The history and the checker.
// ---------------------------------------------------------------------------

/// What a client asked of a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// Read the value.
    Read,
    /// Add `amount` if the entity is at sequence number `expected`.
    Cas { expected: u64, amount: i64 },
}

/// What the client was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ret {
    /// A read's answer: the value (sequence number, balance).
    Read { seq: u64, value: i64 },
    /// The write landed: the entity is at `seq` after it.
    Written { seq: u64 },
    /// The write was refused: the entity was at `actual` (not applied).
    Conflict { actual: u64 },
    /// Not applied, and never will be (the error).
    Fail(String),
    /// The outcome is unknown (the error, or why the client gave up).
    Info(String),
}

/// One operation: who, on which key, what, what came back, and when
/// (nanoseconds from the start of the run).
#[derive(Clone, Debug)]
struct Op {
    client: usize,
    key: String,
    call: Call,
    ret: Ret,
    invoke: u64,
    complete: u64,
}

impl Op {
    fn kind(&self) -> &'static str {
        match self.call {
            Call::Read => "read",
            Call::Cas { .. } => "cas",
        }
    }

    /// ok, fail or info, as in the figures (a conflict is a fail: not
    /// applied).
    fn outcome(&self) -> &'static str {
        match self.ret {
            Ret::Read { .. } | Ret::Written { .. } => "ok",
            Ret::Conflict { .. } | Ret::Fail(_) => "fail",
            Ret::Info(_) => "info",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |ns: u64| ns as f64 / 1e6;
        write!(
            f,
            "[{:>10.3} .. {:>10.3} ms] client {:>2} ",
            ms(self.invoke),
            ms(self.complete),
            self.client
        )?;
        match self.call {
            Call::Read => write!(f, "read")?,
            Call::Cas { expected, amount } => write!(f, "cas(expected #{expected}, +{amount})")?,
        }
        match &self.ret {
            Ret::Read { seq, value } => write!(f, " -> (#{seq}, {value})"),
            Ret::Written { seq } => write!(f, " -> ok at #{seq}"),
            Ret::Conflict { actual } => write!(f, " -> conflict, entity at #{actual}"),
            Ret::Fail(e) => write!(f, " -> fail: {e}"),
            Ret::Info(e) => write!(f, " -> info: {e}"),
        }
    }
}

/// The register's state: (sequence number, balance).
type State = (u64, i64);

/// The register model: the state after `op` at `state`, if `op` can take
/// effect there with the answer it got. An info write is taken as applied
/// (the search may also leave it out: it never took effect).
fn step(state: State, call: Call, ret: &Ret) -> Option<State> {
    match (call, ret) {
        (Call::Read, Ret::Read { seq, value }) => (state == (*seq, *value)).then_some(state),
        (Call::Cas { expected, amount }, Ret::Written { seq }) => {
            (state.0 == expected && *seq == expected + 1).then_some((*seq, state.1 + amount))
        }
        (Call::Cas { expected, .. }, Ret::Conflict { actual }) => {
            (state.0 != expected && state.0 == *actual).then_some(state)
        }
        (Call::Cas { expected, amount }, Ret::Info(_)) => {
            (state.0 == expected).then_some((expected + 1, state.1 + amount))
        }
        _ => None,
    }
}

/// How much of the search one key may take before the checker gives up
/// (giving up is a failure, never a pass).
const SEARCH_BUDGET: u64 = 2_000_000;

/// Why a key's history is not linearizable, with what the search got to.
#[derive(Debug)]
struct NotLinearizable {
    /// The longest prefix of a linearization found, by index in `ops`.
    prefix: Vec<usize>,
    /// The state after it.
    state: State,
    /// The first ok operation (by completion) the search could not place
    /// after that prefix.
    stuck: Option<usize>,
    /// Whether the search ran out of budget instead.
    gave_up: bool,
}

/// The checker's search over one key's history (the operations that take
/// part: ok ones, conflicts and info writes).
struct Search<'a> {
    ops: &'a [Op],
    /// Must be linearized (ok and conflicts); info writes may be left out.
    must: Vec<bool>,
    /// Linearized so far, as a bit set.
    done: Vec<u64>,
    /// The ok operations not yet linearized, by (completion, index).
    pending: BTreeSet<(u64, usize)>,
    /// (linearized set, state) pairs already explored without success.
    seen: HashSet<(Vec<u64>, State)>,
    visited: u64,
    path: Vec<usize>,
    best: (Vec<usize>, State),
}

impl Search<'_> {
    fn is_done(&self, i: usize) -> bool {
        self.done[i / 64] & (1 << (i % 64)) != 0
    }

    fn flip(&mut self, i: usize) {
        self.done[i / 64] ^= 1 << (i % 64);
    }

    /// Whether a linearization of what is left exists from `state`; `Err`
    /// when the budget ran out.
    fn go(&mut self, state: State) -> Result<bool, ()> {
        let Some(&(horizon, _)) = self.pending.first() else {
            return Ok(true);
        };
        if !self.seen.insert((self.done.clone(), state)) {
            return Ok(false);
        }
        self.visited += 1;
        if self.visited > SEARCH_BUDGET {
            return Err(());
        }
        if self.path.len() > self.best.0.len() {
            self.best = (self.path.clone(), state);
        }
        // Candidates: invoked before every pending ok operation completed
        // (no pending operation precedes them in real time). `ops` is
        // sorted by invocation.
        for i in 0..self.ops.len() {
            let op = &self.ops[i];
            if op.invoke > horizon {
                break;
            }
            if self.is_done(i) {
                continue;
            }
            let Some(next) = step(state, op.call, &op.ret) else {
                continue;
            };
            self.flip(i);
            if self.must[i] {
                self.pending.remove(&(op.complete, i));
            }
            self.path.push(i);
            let found = self.go(next)?;
            self.path.pop();
            if self.must[i] {
                self.pending.insert((op.complete, i));
            }
            self.flip(i);
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// What the checker did for one key.
#[derive(Debug, Default, Clone, Copy)]
struct Checked {
    /// Operations that took part in the search.
    ops: usize,
    /// (linearized set, state) pairs explored.
    visited: u64,
}

/// Checks one key's history (any order; every operation of one key).
/// Reads that failed or whose outcome is unknown and failed writes take no
/// part: a read that got no answer says nothing, a failed write never
/// happened (if it did, the values read later cannot be explained).
fn check_register(history: &[Op]) -> Result<Checked, (Vec<Op>, NotLinearizable)> {
    let mut ops: Vec<Op> = history
        .iter()
        .filter(|o| {
            !matches!(
                (&o.call, &o.ret),
                (_, Ret::Fail(_)) | (Call::Read, Ret::Info(_))
            )
        })
        .cloned()
        .collect();
    ops.sort_by_key(|o| (o.invoke, o.complete));
    let must: Vec<bool> = ops.iter().map(|o| !matches!(o.ret, Ret::Info(_))).collect();
    let pending = ops
        .iter()
        .enumerate()
        .filter(|(i, _)| must[*i])
        .map(|(i, o)| (o.complete, i))
        .collect();
    let mut s = Search {
        ops: &ops,
        must,
        done: vec![0; ops.len().div_ceil(64)],
        pending,
        seen: HashSet::new(),
        visited: 0,
        path: Vec::new(),
        best: (Vec::new(), (0, 0)),
    };
    let r = s.go((0, 0));
    let visited = s.visited;
    match r {
        Ok(true) => Ok(Checked {
            ops: ops.len(),
            visited,
        }),
        r => {
            let (prefix, state) = s.best.clone();
            let placed: HashSet<usize> = prefix.iter().copied().collect();
            let stuck = (0..ops.len())
                .filter(|i| s.must[*i] && !placed.contains(i))
                .min_by_key(|i| ops[*i].complete);
            Err((
                ops.clone(),
                NotLinearizable {
                    prefix,
                    state,
                    stuck,
                    gave_up: r.is_err(),
                },
            ))
        }
    }
}

/// A report of a key whose history is not linearizable: the end of the
/// longest linearizable prefix found, the state there, the operation that
/// could not be placed and every operation around it.
fn report(key: &str, ops: &[Op], nl: &NotLinearizable, wall_start_ms: u128) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{key}: {} ({} operations; the longest linearizable prefix found has {}, ending at state (#{}, {}))",
        if nl.gave_up {
            "the search ran out of its budget"
        } else {
            "NOT linearizable"
        },
        ops.len(),
        nl.prefix.len(),
        nl.state.0,
        nl.state.1
    );
    let _ = writeln!(out, "  the prefix ends with:");
    for i in nl.prefix.iter().rev().take(8).rev() {
        let _ = writeln!(out, "    {}", ops[*i]);
    }
    if let Some(s) = nl.stuck {
        let stuck = &ops[s];
        let _ = writeln!(out, "  cannot be placed after it: {stuck}");
        let _ = writeln!(
            out,
            "  (invoked at {} UTC, completed at {} UTC, the node logs' clock)",
            utc(wall_start_ms + u128::from(stuck.invoke / 1_000_000)),
            utc(wall_start_ms + u128::from(stuck.complete / 1_000_000))
        );
        let (from, to) = (
            stuck.invoke.saturating_sub(3_000_000_000),
            stuck.complete.saturating_add(3_000_000_000),
        );
        let _ = writeln!(out, "  the key's history from 3 s before to 3 s after it:");
        for (i, o) in ops.iter().enumerate() {
            if o.complete >= from && o.invoke <= to {
                let mark = if i == s {
                    ">>"
                } else if nl.prefix.contains(&i) {
                    " +"
                } else {
                    "  "
                };
                let _ = writeln!(out, "  {mark} {o}");
            }
        }
    }
    out
}

/// The time of day of a Unix time in milliseconds, `HH:MM:SS.mmm` (UTC).
fn utc(ms: u128) -> String {
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// Checks every key (each in its own search, on a thread with room for
/// the recursion): the keys found linearizable, and a report for each key
/// that is not. `wall_start_ms`: the Unix time of the history's time 0,
/// for the reports.
fn check_all(
    history: &[Op],
    wall_start_ms: u128,
) -> Result<(BTreeMap<String, Checked>, BTreeMap<String, String>)> {
    let mut by_key: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for o in history {
        by_key.entry(o.key.clone()).or_default().push(o.clone());
    }
    let results = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            by_key
                .into_iter()
                .map(|(k, ops)| {
                    let r = check_register(&ops)
                        .map_err(|(ops, nl)| report(&k, &ops, &nl, wall_start_ms));
                    (k, r)
                })
                .collect::<Vec<_>>()
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the checker panicked"))?;
    let mut bad = BTreeMap::new();
    let mut good = BTreeMap::new();
    for (k, r) in results {
        match r {
            Ok(c) => {
                good.insert(k, c);
            }
            Err(e) => {
                bad.insert(k, e);
            }
        }
    }
    Ok((good, bad))
}

#[cfg(test)]
mod checker {
    use super::*;

    const MS: u64 = 1_000_000;

    fn op(client: usize, call: Call, ret: Ret, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            key: "k".into(),
            call,
            ret,
            invoke: invoke * MS,
            complete: complete * MS,
        }
    }

    fn read(seq: u64, value: i64, invoke: u64, complete: u64) -> Op {
        op(9, Call::Read, Ret::Read { seq, value }, invoke, complete)
    }

    fn cas(expected: u64, amount: i64, ret: Ret, invoke: u64, complete: u64) -> Op {
        op(1, Call::Cas { expected, amount }, ret, invoke, complete)
    }

    fn info() -> Ret {
        Ret::Info("outcome unknown".into())
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_rejected() {
        let h = vec![
            cas(0, 5, Ret::Written { seq: 1 }, 0, 10),
            // Acknowledged at 10 ms; a read from 20 ms on must see it.
            read(0, 0, 20, 30),
        ];
        let (ops, nl) = check_register(&h).unwrap_err();
        assert!(!nl.gave_up);
        let r = report("k", &ops, &nl, 0);
        eprintln!("{r}");
        assert!(r.contains("(invoked at 00:00:00.020 UTC"), "{r}");
        assert!(r.contains("NOT linearizable"), "{r}");
        assert!(r.contains(">> [") && r.contains("read -> (#0, 0)"), "{r}");
        // While the write runs, the old value may still be read.
        let h = vec![
            cas(0, 5, Ret::Written { seq: 1 }, 0, 10),
            read(0, 0, 5, 8),
            read(1, 5, 6, 9),
        ];
        check_register(&h).unwrap();
        // But not the old value after the new one was read.
        let h = vec![
            cas(0, 5, Ret::Written { seq: 1 }, 0, 100),
            read(1, 5, 5, 8),
            read(0, 0, 20, 30),
        ];
        check_register(&h).unwrap_err();
    }

    #[test]
    fn an_unknown_outcome_may_take_effect_late_or_never() {
        // The info write is seen long after the client gave up on it.
        let h = vec![
            cas(0, 5, Ret::Written { seq: 1 }, 0, 10),
            cas(1, 7, info(), 20, 30),
            read(1, 5, 40, 50),
            read(2, 12, 60, 70),
            cas(2, 1, Ret::Written { seq: 3 }, 80, 90),
            read(3, 13, 95, 99),
        ];
        let c = check_register(&h).unwrap();
        assert_eq!(c.ops, 6);
        // Or never.
        let h = vec![
            cas(0, 5, Ret::Written { seq: 1 }, 0, 10),
            cas(1, 7, info(), 20, 30),
            cas(1, 2, Ret::Written { seq: 2 }, 40, 50),
            read(2, 7, 60, 70),
        ];
        check_register(&h).unwrap();
        // But not before it was invoked.
        let h = vec![
            cas(0, 5, Ret::Written { seq: 1 }, 0, 10),
            read(2, 12, 12, 15),
            cas(1, 7, info(), 20, 30),
        ];
        check_register(&h).unwrap_err();
        // Nor twice (the same write cannot explain two steps).
        let h = vec![
            cas(0, 7, info(), 0, 1),
            read(1, 7, 10, 11),
            read(2, 14, 20, 21),
        ];
        check_register(&h).unwrap_err();
    }

    #[test]
    fn a_refused_write_that_took_effect_and_a_wrong_conflict_are_rejected() {
        // Told "not applied", yet its amount shows up.
        let h = vec![
            cas(0, 5, Ret::Written { seq: 1 }, 0, 10),
            cas(1, 7, Ret::Fail("storage: min_acks".into()), 20, 30),
            read(2, 12, 40, 50),
        ];
        check_register(&h).unwrap_err();
        // A conflict names where the entity is: it reads the sequence number.
        let h = vec![
            cas(0, 5, Ret::Written { seq: 1 }, 0, 10),
            cas(0, 7, Ret::Conflict { actual: 1 }, 20, 30),
        ];
        check_register(&h).unwrap();
        let h = vec![
            cas(0, 5, Ret::Written { seq: 1 }, 0, 10),
            cas(1, 7, Ret::Conflict { actual: 0 }, 20, 30),
        ];
        check_register(&h).unwrap_err();
        // Two writes at the same expected number cannot both land.
        let h = vec![
            cas(0, 5, Ret::Written { seq: 1 }, 0, 10),
            cas(0, 7, Ret::Written { seq: 1 }, 5, 15),
        ];
        check_register(&h).unwrap_err();
    }

    #[test]
    fn concurrent_operations_are_ordered_as_needed() {
        // Three writers race on #0..#2 and readers overlap them: the
        // search must find the one order that fits.
        let h = vec![
            cas(0, 1, Ret::Written { seq: 1 }, 0, 50),
            cas(1, 2, Ret::Written { seq: 2 }, 0, 50),
            cas(2, 4, Ret::Written { seq: 3 }, 0, 50),
            cas(0, 8, Ret::Conflict { actual: 2 }, 0, 50),
            read(3, 7, 10, 60),
            read(1, 1, 0, 60),
            read(3, 7, 70, 80),
        ];
        check_register(&h).unwrap();
        // The checker runs through every key alone.
        let mut h2 = h.clone();
        for o in &mut h2 {
            o.key = "other".into();
        }
        h2.push(read(0, 0, 0, 1));
        h2[7].key = "third".into();
        let all: Vec<Op> = h.into_iter().chain(h2).collect();
        let (good, bad) = check_all(&all, 0).unwrap();
        assert_eq!((good.len(), bad.len()), (3, 0));
    }

    #[test]
    fn a_long_history_with_many_unknown_outcomes_is_checked_quickly() {
        // 3 writers and 3 readers on one key, 600 operations, a third of
        // the writes unknown (half of those applied), all overlapping.
        let mut h = Vec::new();
        let (mut seq, mut value, mut t) = (0u64, 0i64, 0u64);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..100 {
            let amount = 1 + (next() % 1000) as i64;
            let r = next() % 6;
            let ret = if r < 2 {
                // Unknown: applied or not.
                info()
            } else {
                Ret::Written { seq: seq + 1 }
            };
            let applied = r >= 2 || r == 0;
            h.push(cas(seq, amount, ret, t, t + 30));
            // A stale writer, refused with where the entity is (before or
            // after the write, whichever fits).
            h.push(cas(
                seq + 5,
                amount + 1,
                Ret::Conflict {
                    actual: if applied { seq + 1 } else { seq },
                },
                t + 1,
                t + 31,
            ));
            if applied {
                seq += 1;
                value += amount;
            }
            h.push(read(seq, value, t + 20, t + 40));
            h.push(read(seq, value, t + 21, t + 41));
            h.push(cas(
                seq + 7,
                3,
                Ret::Fail("unavailable: moving".into()),
                t + 2,
                t + 3,
            ));
            h.push(op(4, Call::Read, info(), t + 5, t + 6));
            t += 35;
        }
        let started = Instant::now();
        let c = check_register(&h).unwrap();
        assert_eq!(c.ops, 400);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // The same history with the first acknowledged write missing
        // from every later read (a lost write) is rejected.
        let i = h
            .iter()
            .position(|o| matches!(o.ret, Ret::Written { .. }))
            .unwrap();
        let (lost_at, Call::Cas { amount: lost, .. }) = (h[i].complete, h[i].call) else {
            unreachable!()
        };
        for o in &mut h {
            if let Ret::Read { value, .. } = &mut o.ret
                && o.invoke > lost_at
            {
                *value -= lost;
            }
        }
        check_register(&h).unwrap_err();
    }
}

// ---------------------------------------------------------------------------
// The cluster run.
// ---------------------------------------------------------------------------

const TOML: &str = "[defaults.replication]\nreplicas = 2\nmin_acks = 1\n";
/// Members at the start (and after every join).
const NODES: usize = 5;
/// Clients per member at the start.
const CLIENTS_PER_NODE: usize = 2;
/// Keys in use at a time.
const KEYS: usize = 8;
/// How long a set of keys is in use (then a new one: a key's history
/// stays a few hundred operations long, however long a round lasts).
const GENERATION: Duration = Duration::from_secs(10);
/// One operation in this many goes to an older key, so that
/// old keys see later faults too.
const OLD_KEY_ONE_IN: usize = 10;
/// How long a client waits for one answer (the node's own timeout is
/// shorter, so most waits end with its answer).
const PATIENCE: Duration = Duration::from_secs(8);
/// A pause lasts from 2 s to 2 s + this (in ms): from shorter than the
/// failure detection to longer than a failover, so a paused owner wakes up
/// before or after another member took its shards.
const PAUSE_SPREAD_MS: usize = 6_000;

/// A pause's length.
fn pause_len(rng: &mut Rng) -> Duration {
    Duration::from_millis(2_000 + rng.below(PAUSE_SPREAD_MS + 1) as u64)
}

/// What a node's log says when it crashed: a panic, or the runtime's abort
/// (a stack overflow is not a panic).
const CRASHES: [&str; 3] = ["panicked", "overflowed its stack", "fatal runtime error"];

/// The client number of the last reads, after healing (98: through the
/// first member, 99: through the newest).
const FINAL_READER: usize = 98;

fn key(generation: usize, k: usize) -> String {
    format!("reg-{generation}-{k}")
}

/// A xorshift generator (the runs print their seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What the clients share with the nemesis.
struct Shared {
    start: Instant,
    /// The members clients may talk to.
    addrs: Mutex<Vec<SocketAddr>>,
    generation: AtomicUsize,
    stop: AtomicBool,
    history: Mutex<Vec<Op>>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn addr(&self, i: usize) -> SocketAddr {
        let a = self.addrs.lock().unwrap_or_else(|p| p.into_inner());
        a[i % a.len()]
    }
}

/// One client: reads and compare-and-sets on the current generation's
/// keys, through one member at a time (the next one after a failure of the
/// connection), until `stop`.
async fn client(i: usize, seed: u64, certs: std::path::PathBuf, shared: Arc<Shared>) {
    let files = ClientFiles::in_dir(&certs);
    let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut target = i;
    let mut conn: Option<Client> = None;
    let mut known: HashMap<String, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(7200);
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let Some(cl) = &conn else {
            let addr = shared.addr(target);
            match tokio::time::timeout(
                Duration::from_secs(2),
                Client::connect(addr, &files, "localhost"),
            )
            .await
            {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    target += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        };
        let mut generation = shared.generation.load(Ordering::Relaxed);
        if generation > 0 && rng.below(OLD_KEY_ONE_IN) == 0 {
            generation = rng.below(generation);
        }
        let key = key(generation, rng.below(KEYS));
        let call = if rng.below(2) == 0 {
            Call::Read
        } else {
            Call::Cas {
                expected: known.get(&key).copied().unwrap_or(0),
                amount: 1 + rng.below(1 << 30) as i64,
            }
        };
        let (command, expected_seq) = match call {
            Call::Read => (r#""GetBalance""#.to_owned(), None),
            Call::Cas { expected, amount } => (
                format!(r#"{{"Deposit":{{"amount":{amount}}}}}"#),
                Some(expected),
            ),
        };
        let req = Request::Ask {
            entity_type: "bank-account".into(),
            entity_id: key.clone(),
            command: Payload::Json(command),
            expected_seq,
            timeout_ms: Some(6_000),
        };
        let invoke = shared.now();
        let answer = tokio::time::timeout(PATIENCE, cl.call(&req)).await;
        let complete = shared.now();
        let ret = match answer {
            Ok(Ok(Response::Reply { reply, seq })) => match call {
                Call::Read => match reply.as_ref().map(|p| match p {
                    Payload::Json(j) => j.trim().parse::<i64>().ok(),
                    _ => None,
                }) {
                    Some(Some(value)) => Ret::Read { seq, value },
                    _ => Ret::Info(format!("unexpected read reply {reply:?}")),
                },
                Call::Cas { .. } => Ret::Written { seq },
            },
            Ok(Ok(other)) => Ret::Info(format!("unexpected response {other:?}")),
            Ok(Err(ClientError::Api(ApiError::Conflict { actual, .. }))) => {
                Ret::Conflict { actual }
            }
            Ok(Err(e)) => {
                let applied = e.may_have_applied();
                if !matches!(e, ClientError::Api(_)) {
                    conn = None;
                    target += 1;
                }
                if applied {
                    Ret::Info(e.to_string())
                } else {
                    Ret::Fail(e.to_string())
                }
            }
            Err(_) => {
                conn = None;
                target += 1;
                Ret::Info(format!("no answer within {PATIENCE:?}"))
            }
        };
        match &ret {
            Ret::Read { seq, .. } | Ret::Written { seq } | Ret::Conflict { actual: seq } => {
                known.insert(key.clone(), *seq);
            }
            Ret::Fail(_) | Ret::Info(_) => {}
        }
        let failed = matches!(ret, Ret::Fail(_) | Ret::Info(_));
        shared
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Op {
                client: i,
                key,
                call,
                ret,
                invoke,
                complete,
            });
        let pause = if failed {
            100
        } else {
            5 + rng.below(25) as u64
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Cuts `a` from `b` and `b` from `a` (each node's fault file lists the
/// other side).
fn partition(c: &Cluster, a: &[usize], b: &[usize]) -> Result<()> {
    let addrs = |s: &[usize]| s.iter().map(|i| c.node(*i).addr).collect::<Vec<_>>();
    for i in a {
        cut(c.node(*i), &addrs(b))?;
    }
    for i in b {
        cut(c.node(*i), &addrs(a))?;
    }
    Ok(())
}

/// Lifts every cut of the `live` members.
fn heal(c: &Cluster, live: &[usize]) -> Result<()> {
    for i in live {
        cut(c.node(*i), &[])?;
    }
    Ok(())
}

/// The index (in `c.nodes`) of the decision log's leader, per `s`.
fn leader(c: &Cluster, s: &Value) -> Option<usize> {
    let id = s["leader"].as_u64()?;
    let m = members(s)
        .into_iter()
        .find(|m| m["id"].as_u64() == Some(id))?;
    let addr = m["addr"].as_str()?;
    c.nodes.iter().position(|n| n.addr.to_string() == addr)
}

/// Picks `n` distinct members of `from` (none of `except`).
fn pick(rng: &mut Rng, from: &[usize], except: &[usize], n: usize) -> Vec<usize> {
    let mut pool: Vec<usize> = from
        .iter()
        .copied()
        .filter(|i| !except.contains(i))
        .collect();
    let mut out = Vec::new();
    while out.len() < n && !pool.is_empty() {
        out.push(pool.remove(rng.below(pool.len())));
    }
    out
}

/// Waits until exactly the `live` members are up and reachable, and every
/// other member the status lists (those that left) is `removed`, as the
/// first member sees it (it is never paused when this is called).
async fn healed(c: &Cluster, live: &[usize], what: &str) -> Result<()> {
    let want: BTreeSet<String> = live.iter().map(|i| c.node(*i).addr.to_string()).collect();
    wait_status(c.node(live[0]), Duration::from_secs(120), what, |s| {
        let mut up = BTreeSet::new();
        for m in members(s) {
            let addr = m["addr"].as_str().unwrap_or("").to_owned();
            if want.contains(&addr) {
                if m["state"] == "up" && m["reachable"] == true {
                    up.insert(addr);
                }
            } else if m["state"] != "removed" {
                return false;
            }
        }
        up == want
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_per_key_stays_linearizable_under_overlapping_faults_on_five_nodes() -> Result<()>
{
    let began = Instant::now();
    let rounds: usize = std::env::var("CAIRN_JEPSEN_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CAIRN_JEPSEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let wall_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    eprintln!(
        "seed {seed} (CAIRN_JEPSEN_SEED), {rounds} rounds; run started at unix ms {wall_start}"
    );
    let mut rng = Rng(seed);
    let mut c = Cluster::start_with(NODES, NODES, Some(TOML))?;
    for n in &c.nodes {
        wait_status(n, Duration::from_secs(60), "five up members", |s| {
            up_count(s) == NODES
        })
        .await?;
    }
    wait_status(
        c.node(0),
        Duration::from_secs(30),
        "shards allocated",
        |s| shards(s).values().sum::<u64>() == 256,
    )
    .await?;
    deploy(&c).await?;
    let formed = began.elapsed();
    eprintln!("cluster formed and deployed in {formed:.1?}");

    // Time 0 of the history, and its Unix time (to find an operation in
    // the node logs).
    let wall_zero = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let shared = Arc::new(Shared {
        start: Instant::now(),
        addrs: Mutex::new(c.nodes.iter().map(|n| n.addr).collect()),
        generation: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        history: Mutex::new(Vec::new()),
    });
    let mut clients = Vec::new();
    for i in 0..NODES * CLIENTS_PER_NODE {
        let (certs, shared) = (c.certs.clone(), shared.clone());
        clients.push(tokio::spawn(client(i, seed, certs, shared)));
    }
    // A new set of keys every GENERATION.
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(GENERATION).await;
                shared.generation.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // The nemesis. `live`: the members (indexes in `c.nodes`); node 0, the
    // first seed, never leaves.
    let mut live: Vec<usize> = (0..NODES).collect();
    let mut log: Vec<String> = Vec::new();
    let mut kills_in_minority = true;
    let mut failures: Vec<String> = Vec::new();
    let nemesis: Result<()> = async {
        for round in 0..rounds {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let t0 = Instant::now();
            let at = shared.now() as f64 / 1e9;
            let what = match round % 4 {
                0 => {
                    // A 2|3 partition, and a kill on one side during it.
                    let minority = pick(&mut rng, &live, &[], 2);
                    let majority: Vec<usize> = live
                        .iter()
                        .copied()
                        .filter(|i| !minority.contains(i))
                        .collect();
                    let side = if kills_in_minority {
                        &minority
                    } else {
                        &majority
                    };
                    kills_in_minority = !kills_in_minority;
                    let lead = status(c.node(side[0]))
                        .ok()
                        .and_then(|s| leader(&c, &s))
                        .filter(|l| side.contains(l));
                    let victim = lead.unwrap_or_else(|| side[rng.below(side.len())]);
                    partition(&c, &minority, &majority)?;
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    c.nodes[victim].kill();
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    c.nodes[victim].restart()?;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    heal(&c, &live)?;
                    format!(
                        "partition {minority:?}|{majority:?}, kill of {victim}{} in it, restart, heal",
                        if lead.is_some() { " (the leader)" } else { "" }
                    )
                }
                1 if live.len() == NODES => {
                    // A member leaves; another is paused during the handoff.
                    let leaver = pick(&mut rng, &live, &[0], 1)[0];
                    let paused = pick(&mut rng, &live, &[leaver], 1)[0];
                    let (ok, out, err) = c.nodes[leaver].cli(&["cluster", "leave"])?;
                    ensure!(ok, "cluster leave of {leaver} failed: {out} {err}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let pid = c.nodes[paused].child.id();
                    let pause = pause_len(&mut rng);
                    signal(pid, "-STOP")?;
                    tokio::time::sleep(pause).await;
                    signal(pid, "-CONT")?;
                    let deadline = Instant::now() + Duration::from_secs(180);
                    let exit = loop {
                        if let Some(s) = c.nodes[leaver].exited() {
                            break s;
                        }
                        ensure!(
                            Instant::now() < deadline,
                            "round {round}: {leaver} did not exit within 180 s of its leave"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    };
                    ensure!(exit.success(), "round {round}: {leaver} left with {exit}");
                    live.retain(|i| *i != leaver);
                    let addr = c.nodes[leaver].addr;
                    shared
                        .addrs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .retain(|a| *a != addr);
                    format!(
                        "leave of {leaver}, pause of {paused} for {pause:.1?} during it; it exited after {:.1?}",
                        t0.elapsed()
                    )
                }
                2 if live.len() < NODES => {
                    // A new member joins; another is paused while shards move
                    // to it.
                    let new = c.nodes.len();
                    c.add(new, NODES)?;
                    let addr = c.nodes[new].addr.to_string();
                    wait_status(
                        c.node(0),
                        Duration::from_secs(180),
                        "the new member up",
                        |s| {
                            members(s)
                                .iter()
                                .any(|m| m["addr"] == addr.as_str() && m["state"] == "up")
                        },
                    )
                    .await
                    .with_context(|| format!("round {round}"))?;
                    let up_after = t0.elapsed();
                    let paused = pick(&mut rng, &live, &[], 1)[0];
                    let pid = c.nodes[paused].child.id();
                    let pause = pause_len(&mut rng);
                    signal(pid, "-STOP")?;
                    tokio::time::sleep(pause).await;
                    signal(pid, "-CONT")?;
                    live.push(new);
                    shared
                        .addrs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(c.nodes[new].addr);
                    format!(
                        "join of {new} (up after {up_after:.1?}), pause of {paused} for {pause:.1?} while shards move to it"
                    )
                }
                _ => {
                    // A pause, a 1|rest partition and a kill at once.
                    let three = pick(&mut rng, &live, &[], 3);
                    let (paused, cut_off, victim) = (three[0], three[1], three[2]);
                    let rest: Vec<usize> = live.iter().copied().filter(|i| *i != cut_off).collect();
                    let pid = c.nodes[paused].child.id();
                    signal(pid, "-STOP")?;
                    partition(&c, &[cut_off], &rest)?;
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    c.nodes[victim].kill();
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    c.nodes[victim].restart()?;
                    let extra = Duration::from_millis(rng.below(4_001) as u64);
                    tokio::time::sleep(extra).await;
                    signal(pid, "-CONT")?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    heal(&c, &live)?;
                    format!(
                        "pause of {paused} for {:.1?}, partition of {cut_off} from the rest, kill of {victim} during both; restart, resume, heal",
                        Duration::from_millis(4_500) + extra
                    )
                }
            };
            healed(&c, &live, &format!("round {round}: every member up"))
                .await
                .with_context(|| format!("round {round} ({what})"))?;
            let line = format!(
                "round {round} at {at:.1} s: {what}; healed after {:.1?}; {} operations so far",
                t0.elapsed(),
                shared
                    .history
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len()
            );
            eprintln!("{line}");
            log.push(line);
        }
        Ok(())
    }
    .await;
    if let Err(e) = nemesis {
        failures.push(format!(
            "seed {seed}: the nemesis stopped: {e:#}\nthe rounds before:\n{}",
            log.join("\n")
        ));
        // Leave no fault behind: resume, heal, restart what was killed.
        for i in &live {
            let _ = signal(c.nodes[*i].child.id(), "-CONT");
        }
        let _ = heal(&c, &live);
        for i in &live {
            if let Some(status) = c.nodes[*i].exited() {
                failures.push(format!(
                    "node {i} ({}) had exited by itself ({status}): started again",
                    c.nodes[*i].addr
                ));
                let _ = c.nodes[*i].restart();
            }
        }
        if let Err(e) = healed(&c, &live, "after the nemesis stopped").await {
            failures.push(format!("{e:#}"));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for cl in clients.into_iter().chain([ticker]) {
        cl.await?;
    }
    let workload = shared.start.elapsed();

    // A last read of every key, through the first member, then (a few
    // seconds later) through the newest one.
    let mut history =
        std::mem::take(&mut *shared.history.lock().unwrap_or_else(|p| p.into_inner()));
    let keys: BTreeSet<String> = history.iter().map(|o| o.key.clone()).collect();
    let mut unserved: Vec<String> = Vec::new();
    for (pass, via) in [live[0], live[live.len() - 1]].into_iter().enumerate() {
        if pass > 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let reader = match c.node(via).client_within(Duration::from_secs(30)).await {
            Ok(r) => r,
            Err(e) => {
                unserved.push(format!("no client for node {via}: {e:#}"));
                continue;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        for k in &keys {
            let mut last = String::from("not tried: the pass ran out of time");
            while Instant::now() < deadline {
                let invoke = shared.now();
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    ask(&reader, k, r#""GetBalance""#),
                )
                .await;
                let complete = shared.now();
                match r {
                    Ok(Ok((j, seq))) => {
                        history.push(Op {
                            client: FINAL_READER + pass,
                            key: k.clone(),
                            call: Call::Read,
                            ret: Ret::Read {
                                seq,
                                value: j.trim().parse()?,
                            },
                            invoke,
                            complete,
                        });
                        last.clear();
                        break;
                    }
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "no answer within 10 s".into(),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !last.is_empty() {
                unserved.push(format!("{k} through node {via}: {last}"));
            }
        }
        reader.close().await;
    }
    if !unserved.is_empty() {
        failures.push(format!(
            "{} keys not served within 120 s after healing (every member up and reachable):\n  {}",
            unserved.len(),
            unserved.join("\n  ")
        ));
    }

    // The figures.
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut errors: BTreeMap<(&str, &str, String), usize> = BTreeMap::new();
    let mut conflicts = 0;
    for o in &history {
        *counts.entry((o.kind(), o.outcome())).or_default() += 1;
        match &o.ret {
            Ret::Fail(e) | Ret::Info(e) => {
                let kind = e.split(':').next().unwrap_or(e).to_owned();
                *errors.entry((o.kind(), o.outcome(), kind)).or_default() += 1;
            }
            Ret::Conflict { .. } => conflicts += 1,
            _ => {}
        }
    }
    let per_key: BTreeMap<&str, usize> = history.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o.key.as_str()).or_default() += 1;
        m
    });
    eprintln!(
        "{} operations over {} keys ({} to {} per key) in {workload:.1?}:",
        history.len(),
        keys.len(),
        per_key.values().min().unwrap_or(&0),
        per_key.values().max().unwrap_or(&0)
    );
    for kind in ["read", "cas"] {
        eprintln!(
            "  {kind}: {} ok, {} fail{}, {} info",
            counts.get(&(kind, "ok")).unwrap_or(&0),
            counts.get(&(kind, "fail")).unwrap_or(&0),
            if kind == "cas" {
                format!(" ({conflicts} of them conflicts)")
            } else {
                String::new()
            },
            counts.get(&(kind, "info")).unwrap_or(&0)
        );
    }
    for ((kind, outcome, e), n) in &errors {
        eprintln!("    {kind} {outcome}: {n} × {e}");
    }

    // The checks: linearizability per key, panics, one history per entity.
    let checking = Instant::now();
    let (per_key, bad) = check_all(&history, wall_zero)?;
    let visited: u64 = per_key.values().map(|c| c.visited).sum();
    let most = per_key.values().map(|c| c.visited).max().unwrap_or(0);
    eprintln!(
        "linearizability: {} of {} keys linearizable, checked in {:.2?} ({visited} search states, at most {most} for one key)",
        per_key.len(),
        per_key.len() + bad.len(),
        checking.elapsed()
    );
    // Where the keys that failed live now (their shard's owner), and the
    // members as the first one sees them.
    let last_status = status(c.node(live[0])).ok();
    let owner = last_status.as_ref().map_or_else(HashMap::new, |s| {
        owners(s, "bank-account", &bad.keys().cloned().collect::<Vec<_>>())
    });
    if !bad.is_empty() {
        failures.push(format!(
            "seed {seed}: {}\nthe rounds:\n{}",
            bad.values().cloned().collect::<Vec<_>>().join("\n"),
            log.join("\n")
        ));
    }
    let mut panics = Vec::new();
    // The nodes' own word that copies of a history diverged (reported; the
    // checker and the journal check judge).
    let mut two_histories = 0;
    for n in &c.nodes {
        let text = std::fs::read_to_string(n.dir.join("node.log")).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            if CRASHES.iter().any(|m| line.contains(m)) {
                panics.push(format!("{}/node.log:{}: {line}", n.dir.display(), i + 1));
            }
            if line.contains("two histories") {
                two_histories += 1;
            }
        }
    }
    eprintln!(
        "node logs: {} lines with {CRASHES:?}, {two_histories} with `two histories`",
        panics.len()
    );
    if !panics.is_empty() {
        failures.push(format!(
            "panics or crashes in the node logs:\n{}",
            panics.join("\n")
        ));
    }
    for i in &live {
        c.nodes[*i].kill();
    }
    let ids: Vec<String> = keys.iter().cloned().collect();
    let live_nodes: Vec<_> = live.iter().map(|i| &c.nodes[*i]).collect();
    match one_history(&live_nodes, &ids).await {
        Ok(()) => eprintln!(
            "journals: one history per entity on the {} members",
            live_nodes.len()
        ),
        Err(e) => failures.push(format!("journals: {e:#}")),
    }
    eprintln!(
        "{rounds} rounds, {:.1?} in all ({formed:.1?} to form the cluster)",
        began.elapsed()
    );
    if !bad.is_empty() {
        failures.push(diagnose(&c, &bad, &owner).await);
    }
    if !failures.is_empty()
        && let Some(s) = &last_status
    {
        let mut text = String::from("the members at the end, as node 0 saw them:\n");
        for m in members(s) {
            let _ = writeln!(
                text,
                "  {} id {} {} reachable {} shards {}",
                m["addr"].as_str().unwrap_or("?"),
                m["id"],
                m["state"].as_str().unwrap_or("?"),
                m["reachable"],
                m["shards"]
            );
        }
        failures.push(text);
    }
    if !failures.is_empty() {
        c.root.disable_cleanup(true);
        // The whole history, for a look beside the nodes' logs.
        let mut text = format!("time 0 = unix ms {wall_zero}\n");
        for o in &history {
            let _ = writeln!(text, "{} {o}", o.key);
        }
        let _ = std::fs::write(c.root.path().join("history.txt"), text);
        bail!(
            "{}\n\nthe cluster's directory is kept: {}",
            failures.join("\n\n"),
            c.root.path().display()
        );
    }
    Ok(())
}

/// What the nodes hold of the keys that failed the check (the nodes
/// stopped): each node's journal length per key, the key's shard and
/// owner, and the node log lines about that shard.
async fn diagnose(
    c: &Cluster,
    bad: &BTreeMap<String, String>,
    owner: &HashMap<String, String>,
) -> String {
    let ids: Vec<String> = bad.keys().cloned().collect();
    let mut out = String::new();
    let mut shards_of = BTreeMap::new();
    for id in &ids {
        let shard = cairn_cluster::shard_of("bank-account", id, 256).0;
        shards_of.insert(shard, id.clone());
        let _ = writeln!(
            out,
            "{id}: shard {shard}, owner now {}",
            owner.get(id).map_or("?", String::as_str)
        );
        for (i, n) in c.nodes.iter().enumerate() {
            let held = match read_journal(&n.dir, std::slice::from_ref(id)).await {
                Ok(j) => j
                    .get(id)
                    .map_or("nothing".to_owned(), |h| format!("#1..#{}", h.len())),
                Err(e) => format!("unreadable: {e:#}"),
            };
            let _ = writeln!(out, "  node {i} ({}): {held}", n.addr);
        }
    }
    // The logs name members by id.
    for (i, n) in c.nodes.iter().enumerate() {
        let id = std::fs::read_to_string(n.dir.join("cluster").join("node-id")).unwrap_or_default();
        let _ = writeln!(out, "node {i}: {}, id {}", n.addr, id.trim());
    }
    for (i, n) in c.nodes.iter().enumerate() {
        let text = std::fs::read_to_string(n.dir.join("node.log")).unwrap_or_default();
        // A fetch that waits logs every 300 ms: the first few of a run.
        let (mut retries, mut skipped) = (0, 0);
        for line in text.lines() {
            let plain = strip_ansi(line);
            let about = shards_of.keys().any(|s| {
                plain.contains(&format!("shard={s} "))
                    || plain.ends_with(&format!("shard={s}"))
                    || plain.contains(&format!("shard {s} "))
            }) || ids.iter().any(|id| plain.contains(id.as_str()));
            if !about {
                continue;
            }
            if plain.contains("not fetched yet") {
                retries += 1;
                if retries > 3 {
                    skipped += 1;
                    continue;
                }
            } else {
                if skipped > 0 {
                    let _ = writeln!(out, "  node {i}: ({skipped} more such lines)");
                }
                (retries, skipped) = (0, 0);
            }
            let _ = writeln!(out, "  node {i}: {plain}");
        }
        if skipped > 0 {
            let _ = writeln!(out, "  node {i}: ({skipped} more such lines)");
        }
    }
    out
}

/// [`one_history_per_entity`] over some of the cluster's nodes: every copy
/// of an entity's history contiguous from 1, and the copies agree.
async fn one_history(nodes: &[&cairn_tests::NodeProc], ids: &[String]) -> Result<()> {
    let mut first: HashMap<String, (std::path::PathBuf, History)> = HashMap::new();
    for n in nodes {
        for (id, h) in read_journal(&n.dir, ids).await? {
            for (i, (seq, _)) in h.iter().enumerate() {
                ensure!(
                    *seq == i as u64 + 1,
                    "{id} in {}: sequence numbers not contiguous",
                    n.dir.display()
                );
            }
            match first.get(&id) {
                None => {
                    first.insert(id, (n.dir.clone(), h));
                }
                Some((dir, f)) => {
                    for (a, b) in f.iter().zip(h.iter()) {
                        ensure!(
                            a == b,
                            "{id}: two histories at #{} ({} and {})",
                            a.0,
                            dir.display(),
                            n.dir.display()
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
