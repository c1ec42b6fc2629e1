//! Decision logs of several nodes in one process over an in-memory
//! transport (a shared map id → log, with blocked pairs for partitions),
//! on real directories under the temp dir: agreement, partitions, restarts,
//! garbage rpcs and torn log tails. Every test is bounded in time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_cluster::ShardId;
use cairn_raft::{
    ClusterState, Command, Decision, DecisionLog, LogConfig, MemberState, NodeId, RaftError,
    RaftTransport, TransportError, Tuning,
};

const TEST_LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(20);
const PROPOSE: Duration = Duration::from_secs(5);

// --- harness

#[derive(Default)]
struct Net {
    nodes: Mutex<HashMap<u64, DecisionLog>>,
    blocked: Mutex<HashSet<(u64, u64)>>,
    /// The last rpc bytes sent to each node (for the garbage test).
    last_rpc: Mutex<HashMap<u64, Vec<u8>>>,
}

impl Net {
    fn blocked(&self, a: u64, b: u64) -> bool {
        self.blocked.lock().unwrap().contains(&(a, b))
    }

    fn isolate(&self, node: u64, others: &[u64]) {
        let mut b = self.blocked.lock().unwrap();
        for o in others {
            b.insert((node, *o));
            b.insert((*o, node));
        }
    }

    fn heal(&self) {
        self.blocked.lock().unwrap().clear();
    }

    fn get(&self, id: u64) -> DecisionLog {
        self.nodes.lock().unwrap()[&id].clone()
    }
}

struct MemTransport {
    me: u64,
    net: Arc<Net>,
}

impl RaftTransport for MemTransport {
    fn call(
        &self,
        target: u64,
        _addr: &str,
        rpc: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send + 'static>> {
        let (me, net) = (self.me, self.net.clone());
        Box::pin(async move {
            if net.blocked(me, target) {
                return Err(TransportError::Unreachable(format!("{me} -/-> {target}")));
            }
            let node = net.nodes.lock().unwrap().get(&target).cloned();
            let Some(node) = node else {
                return Err(TransportError::Unreachable(format!("no node {target}")));
            };
            net.last_rpc.lock().unwrap().insert(target, rpc.clone());
            let answer = node.handle(&rpc).await;
            if net.blocked(target, me) {
                return Err(TransportError::Unreachable(format!("{target} -/-> {me}")));
            }
            Ok(answer)
        })
    }
}

/// A directory under the temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("cairn-raft-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn node(&self, id: u64) -> PathBuf {
        self.0.join(format!("n{id}"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn addr(id: u64) -> String {
    format!("mem://n{id}")
}

async fn start(net: &Arc<Net>, dir: &Path, id: u64, tuning: Tuning) -> DecisionLog {
    let t = Arc::new(MemTransport {
        me: id,
        net: net.clone(),
    });
    let log = DecisionLog::open_tuned(dir, id, addr(id), t, LogConfig::default(), tuning)
        .await
        .unwrap();
    net.nodes.lock().unwrap().insert(id, log.clone());
    log
}

fn assign(shard: u32, owner: u64, epoch: u64) -> Decision {
    Decision::Assign {
        shard: ShardId(shard),
        owner: NodeId(owner),
        epoch,
        replicas: cairn_cluster::Replicas::default(),
    }
}

async fn wait_state(
    log: &DecisionLog,
    what: &str,
    cond: impl Fn(&ClusterState) -> bool,
) -> Arc<ClusterState> {
    let mut rx = log.state();
    let res = tokio::time::timeout(WAIT, async {
        loop {
            let s = rx.borrow_and_update().clone();
            if cond(&s) {
                return s;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    match res {
        Ok(s) => s,
        Err(_) => panic!(
            "node {}: timed out waiting for {what}; state {:?}",
            log.id(),
            log.state().borrow()
        ),
    }
}

/// Waits until `among` agree on a leader in `among`, and returns it.
async fn wait_leader_among(net: &Net, among: &[u64]) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let leaders: Vec<_> = among
            .iter()
            .map(|id| net.get(*id).leader().map(|l| l.0))
            .collect();
        if let Some(Some(l)) = leaders.first()
            && leaders.iter().all(|x| *x == Some(*l))
            && among.contains(l)
            && net.get(*l).is_leader()
        {
            return *l;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader among {among:?}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three nodes: 1 bootstraps, then adds 2 and 3.
async fn form_three(net: &Arc<Net>, dir: &TempDir, tuning: Tuning) -> Vec<DecisionLog> {
    let mut logs = Vec::new();
    for id in 1..=3 {
        logs.push(start(net, &dir.node(id), id, tuning.clone()).await);
    }
    logs[0].bootstrap(16).await.unwrap();
    assert!(logs[0].is_leader());
    logs[0].add_member(2, addr(2)).await.unwrap();
    logs[0].add_member(3, addr(3)).await.unwrap();
    assert_eq!(logs[0].voters(), vec![1, 2, 3]);
    assert!(logs[0].learners().is_empty());
    // Idempotent.
    logs[0].add_member(3, addr(3)).await.unwrap();
    logs[0].bootstrap(16).await.unwrap();
    assert_eq!(logs[0].voters(), vec![1, 2, 3]);
    logs
}

async fn bounded(name: &str, f: impl Future<Output = ()>) {
    let t0 = Instant::now();
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{name}: did not finish within {TEST_LIMIT:?}"));
    eprintln!("{name}: {:?}", t0.elapsed());
}

// --- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_and_skip_stale_decisions() {
    bounded("three_nodes_agree", async {
        let dir = TempDir::new("agree");
        let net = Arc::new(Net::default());
        let logs = form_three(&net, &dir, Tuning::default()).await;
        let leader = wait_leader_among(&net, &[1, 2, 3]).await;
        assert_eq!(leader, 1);
        for l in &logs {
            assert_eq!(l.leader(), Some((1, addr(1))));
        }

        // A follower refuses to propose and names the leader.
        match logs[1].propose(Command::Init { shards: 3 }, PROPOSE).await {
            Err(RaftError::NotLeader { leader }) => assert_eq!(leader, Some((1, addr(1)))),
            other => panic!("expected NotLeader, got {other:?}"),
        }
        match logs[2].add_member(9, addr(9)).await {
            Err(RaftError::NotLeader { leader }) => assert_eq!(leader, Some((1, addr(1)))),
            other => panic!("expected NotLeader, got {other:?}"),
        }

        let out = logs[0]
            .propose_outcome(
                Command::Decide(vec![assign(0, 1, 1), assign(1, 2, 2), assign(2, 3, 3)]),
                PROPOSE,
            )
            .await
            .unwrap();
        assert!(out.refused.is_empty());
        let mut states = Vec::new();
        for l in &logs {
            states.push(
                wait_state(l, "epoch 3", |s| {
                    s.table.as_ref().is_some_and(|t| t.epoch() == 3)
                })
                .await,
            );
        }
        assert!(states.iter().all(|s| s.table == states[0].table));
        let t = states[0].table.as_ref().unwrap();
        assert_eq!(t.len(), 16);
        assert_eq!(t.get(ShardId(1)).map(|a| a.owner), Some(NodeId(2)));

        // A stale decision (epoch not above the table's) is skipped on every node.
        let stale = assign(0, 3, 2);
        let out = logs[0]
            .propose_outcome(Command::Decide(vec![stale, assign(4, 3, 4)]), PROPOSE)
            .await
            .unwrap();
        assert_eq!(out.refused, vec![stale]);
        let index = out.index;
        let mut states = Vec::new();
        for l in &logs {
            states.push(wait_state(l, "the stale batch", |s| s.last_applied >= index).await);
        }
        for s in &states {
            assert_eq!(s.table, states[0].table);
            assert_eq!(s.members, states[0].members);
            let t = s.table.as_ref().unwrap();
            assert_eq!(t.epoch(), 4);
            assert_eq!(t.get(ShardId(0)).map(|a| a.owner), Some(NodeId(1)));
            assert_eq!(t.get(ShardId(4)).map(|a| a.owner), Some(NodeId(3)));
        }
        let m = &states[0].members;
        assert_eq!(m[&1].state, MemberState::Up);
        assert_eq!(m[&2].state, MemberState::Joining);
        assert_eq!(m[&3].addr, addr(3));

        // A member that moved: add_member with the new address updates the
        // raft membership and the record (its state is kept).
        logs[0]
            .propose(
                Command::Member {
                    node: 3,
                    addr: addr(3),
                    state: MemberState::Up,
                },
                PROPOSE,
            )
            .await
            .unwrap();
        logs[0]
            .add_member(3, "mem://n3-moved".into())
            .await
            .unwrap();
        let s = wait_state(&logs[2], "the new address", |s| {
            s.members[&3].addr == "mem://n3-moved"
        })
        .await;
        assert_eq!(s.members[&3].state, MemberState::Up);
        assert_eq!(logs[0].voters(), vec![1, 2, 3]);

        for l in &logs {
            l.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_cannot_commit_and_the_majority_wins() {
    bounded("partition", async {
        let dir = TempDir::new("partition");
        let net = Arc::new(Net::default());
        let logs = form_three(&net, &dir, Tuning::default()).await;
        let old = wait_leader_among(&net, &[1, 2, 3]).await;
        let idx = logs[0]
            .propose(Command::Decide(vec![assign(0, 1, 1)]), PROPOSE)
            .await
            .unwrap();
        for l in &logs {
            wait_state(l, "first decision", |s| s.last_applied >= idx).await;
        }

        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|x| *x != old).collect();
        net.isolate(old, &others);
        let t0 = Instant::now();
        let minority = net
            .get(old)
            .propose(
                Command::Decide(vec![assign(5, old, 10)]),
                Duration::from_secs(2),
            )
            .await;
        assert!(
            matches!(
                minority,
                Err(RaftError::NoQuorum(_) | RaftError::NotLeader { .. })
            ),
            "the isolated leader committed: {minority:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(4));

        let new = wait_leader_among(&net, &others).await;
        assert_ne!(new, old);
        let out = net
            .get(new)
            .propose_outcome(Command::Decide(vec![assign(6, new, 2)]), PROPOSE)
            .await
            .unwrap();
        assert!(out.refused.is_empty());
        let majority = wait_state(&net.get(new), "majority decision", |s| {
            s.last_applied >= out.index
        })
        .await;

        net.heal();
        let mut states = Vec::new();
        for id in [1, 2, 3] {
            states.push(
                wait_state(&net.get(id), "convergence after healing", |s| {
                    s.table == majority.table && s.last_applied >= out.index
                })
                .await,
            );
        }
        for s in &states {
            let t = s.table.as_ref().unwrap();
            assert_eq!(
                t.get(ShardId(5)),
                None,
                "the minority's proposal was applied"
            );
            assert_eq!(t.get(ShardId(6)).map(|a| a.owner), Some(NodeId(new)));
            assert_eq!(t.epoch(), 2);
        }
        // The cluster keeps committing, on whichever node leads now.
        let leader = wait_leader_among(&net, &[1, 2, 3]).await;
        let idx = net
            .get(leader)
            .propose(Command::Decide(vec![assign(7, 1, 3)]), PROPOSE)
            .await
            .unwrap();
        for id in [1, 2, 3] {
            wait_state(&net.get(id), "post-heal decision", |s| {
                s.last_applied >= idx
            })
            .await;
        }
        for l in &logs {
            l.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_state_and_a_new_member_gets_a_snapshot() {
    bounded("restart", async {
        let dir = TempDir::new("restart");
        let net = Arc::new(Net::default());
        // Small snapshots so that the restart reads a snapshot and a later
        // member must be sent one (the log before it is purged).
        let tuning = Tuning {
            snapshot_every: 5,
            keep_after_snapshot: 2,
        };
        let logs = form_three(&net, &dir, tuning.clone()).await;
        let mut last = 0;
        for e in 1..=20u64 {
            last = logs[0]
                .propose(
                    Command::Decide(vec![assign((e % 16) as u32, 1 + e % 3, e)]),
                    PROPOSE,
                )
                .await
                .unwrap();
        }
        let before = wait_state(&logs[0], "20 decisions", |s| s.last_applied >= last).await;
        for l in &logs {
            wait_state(l, "20 decisions", |s| s.last_applied >= last).await;
        }
        for l in &logs {
            l.shutdown().await;
        }
        net.nodes.lock().unwrap().clear();
        drop(logs);
        assert!(dir.node(1).join("snapshot").exists());

        let mut logs = Vec::new();
        for id in 1..=3 {
            logs.push(start(&net, &dir.node(id), id, tuning.clone()).await);
        }
        // Reopening a directory in use fails instead of corrupting it.
        let t = Arc::new(MemTransport {
            me: 1,
            net: net.clone(),
        });
        assert!(matches!(
            DecisionLog::open(&dir.node(1), 1, addr(1), t, LogConfig::default()).await,
            Err(RaftError::Locked(_))
        ));
        for l in &logs {
            let s = wait_state(l, "the state before the restart", |s| {
                s.table == before.table && s.members == before.members
            })
            .await;
            assert!(s.last_applied >= last);
        }
        let leader = wait_leader_among(&net, &[1, 2, 3]).await;
        let lead = net.get(leader);
        assert_eq!(lead.voters(), vec![1, 2, 3]);
        let idx = lead
            .propose(Command::Decide(vec![assign(3, 2, 21)]), PROPOSE)
            .await
            .unwrap();
        for l in &logs {
            wait_state(l, "a decision after restart", |s| s.last_applied >= idx).await;
        }

        // A fourth node joins as a learner (max_voters is 3) and gets the
        // state by snapshot.
        let four = start(&net, &dir.node(4), 4, tuning.clone()).await;
        lead.add_member(4, addr(4)).await.unwrap();
        assert_eq!(lead.voters(), vec![1, 2, 3]);
        assert_eq!(lead.learners(), vec![4]);
        let want = lead.state().borrow().table.clone();
        wait_state(&four, "the snapshot", |s| s.table == want).await;
        assert!(dir.node(4).join("snapshot").exists());
        // The leader's log was purged behind its snapshots.
        let len = std::fs::metadata(dir.node(leader).join("log"))
            .unwrap()
            .len();
        assert!(len < 1024, "the log was not purged: {len} bytes");
        assert_eq!(
            four.state().borrow().members[&4].state,
            MemberState::Joining
        );

        // Removing a voter promotes the learner.
        let victim = [1, 2, 3].into_iter().find(|v| *v != leader).unwrap();
        lead.remove_member(victim).await.unwrap();
        let mut voters = lead.voters();
        voters.sort();
        let mut expect: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|v| *v != victim).collect();
        expect.sort();
        assert_eq!(voters, expect);
        assert!(lead.learners().is_empty());
        lead.remove_member(victim).await.unwrap();
        let idx = lead
            .propose(Command::Decide(vec![assign(9, 4, 22)]), PROPOSE)
            .await
            .unwrap();
        wait_state(&four, "a decision as a voter", |s| s.last_applied >= idx).await;

        for l in logs.iter().chain([&four]) {
            l.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_rpcs_get_error_answers_and_the_node_keeps_working() {
    use rand::rngs::StdRng;
    use rand::{Rng, RngExt, SeedableRng};
    bounded("garbage", async {
        let dir = TempDir::new("garbage");
        let net = Arc::new(Net::default());
        let logs = form_three(&net, &dir, Tuning::default()).await;
        let idx = logs[0]
            .propose(Command::Decide(vec![assign(0, 2, 1)]), PROPOSE)
            .await
            .unwrap();
        wait_state(&logs[1], "first decision", |s| s.last_applied >= idx).await;
        let real = net.last_rpc.lock().unwrap()[&2].clone();
        assert_eq!(DecisionLog::reply_error(&logs[1].handle(&real).await), None);

        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let n = rng.random_range(0..200usize);
            let mut bytes = vec![0u8; n];
            rng.fill_bytes(&mut bytes);
            if rng.random_range(0..2) == 0 && bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&real[..4]);
            }
            let answer = logs[1].handle(&bytes).await;
            assert!(DecisionLog::reply_error(&answer).is_some());
        }
        for cut in 0..real.len() {
            let answer = logs[1].handle(&real[..cut]).await;
            assert!(
                DecisionLog::reply_error(&answer).is_some(),
                "truncated at {cut}"
            );
        }
        let mut flipped = real.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(DecisionLog::reply_error(&logs[1].handle(&flipped).await).is_some());
        // A valid rpc for node 2 delivered to node 3.
        let wrong = DecisionLog::reply_error(&logs[2].handle(&real).await);
        assert!(wrong.is_some_and(|e| e.contains("wrong node")));
        // Garbage answers are refused by the sender, too.
        assert!(DecisionLog::reply_error(b"junk").is_some());

        let idx = logs[0]
            .propose(Command::Decide(vec![assign(1, 3, 2)]), PROPOSE)
            .await
            .unwrap();
        for l in &logs {
            let s = wait_state(l, "a decision after garbage", |s| s.last_applied >= idx).await;
            assert_eq!(s.table.as_ref().unwrap().epoch(), 2);
        }
        assert_eq!(wait_leader_among(&net, &[1, 2, 3]).await, 1);
        for l in &logs {
            l.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_is_cut_at_open() {
    bounded("torn_tail", async {
        let dir = TempDir::new("torn");
        let net = Arc::new(Net::default());
        let path = dir.node(1);
        let log = start(&net, &path, 1, Tuning::default()).await;
        log.bootstrap(8).await.unwrap();
        for e in 1..=5 {
            log.propose(Command::Decide(vec![assign(e, 1, e as u64)]), PROPOSE)
                .await
                .unwrap();
        }
        log.shutdown().await;
        drop(log);

        // Garbage after the last record: cut, nothing lost.
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(path.join("log"))
                .unwrap();
            f.write_all(&[0xa5; 23]).unwrap();
        }
        let log = start(&net, &path, 1, Tuning::default()).await;
        log.bootstrap(8).await.unwrap();
        wait_state(&log, "all five decisions", |s| {
            s.table.as_ref().is_some_and(|t| t.epoch() == 5)
        })
        .await;
        log.propose(Command::Decide(vec![assign(6, 1, 6)]), PROPOSE)
            .await
            .unwrap();
        log.shutdown().await;
        drop(log);

        // The last record torn: cut there; the node elects itself and commits.
        let file = path.join("log");
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let log = start(&net, &path, 1, Tuning::default()).await;
        log.wait_leader(WAIT).await.unwrap();
        let s = wait_state(&log, "the decisions before the torn entry", |s| {
            s.table.as_ref().is_some_and(|t| t.epoch() >= 5)
        })
        .await;
        assert!(s.members.contains_key(&1));
        let idx = log
            .propose(Command::Decide(vec![assign(7, 1, 7)]), PROPOSE)
            .await
            .unwrap();
        let s = wait_state(&log, "a decision after the cut", |s| s.last_applied >= idx).await;
        assert_eq!(s.table.as_ref().unwrap().epoch(), 7);
        log.shutdown().await;
    })
    .await;
}
