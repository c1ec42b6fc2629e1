//! Membership in a deterministic harness: five nodes exchange datagrams
//! through in-memory queues with random delays on a virtual clock, with
//! knobs to drop, partition and kill. Checked: the cluster forms from one
//! seed; a killed node is declared down by every survivor within a bound;
//! a restarted node (a new boot) rejoins and is seen up again; a partition
//! 2|3 makes each side declare the other down, and healing reunites them.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

use cairn_cluster::NodeId;
use cairn_cluster::membership::{Membership, MembershipEvent, PeerId};
use foca::Timer;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

enum Event {
    Deliver {
        from: u64,
        to: u64,
        data: Vec<u8>,
    },
    Timer {
        node: u64,
        boot: u64,
        timer: Timer<PeerId>,
    },
}

struct Net {
    now: Duration,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: std::collections::HashMap<u64, Event>,
    next: u64,
    nodes: Vec<Option<Membership>>,
    group: Vec<u32>,
    rng: StdRng,
    log: Vec<(Duration, u64, MembershipEvent)>,
}

impl Net {
    fn new(n: usize, seed: u64) -> Net {
        let mut net = Net {
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            events: Default::default(),
            next: 0,
            nodes: (0..n).map(|_| None).collect(),
            group: vec![0; n],
            rng: StdRng::seed_from_u64(seed),
            log: Vec::new(),
        };
        for i in 0..n {
            net.start(i as u64, 0);
        }
        for i in 1..n {
            let seed_peer = net.nodes[0].as_ref().map(|m| m.identity());
            if let (Some(node), Some(seed_peer)) = (net.nodes[i].as_mut(), seed_peer) {
                node.join(seed_peer).expect("announce");
            }
            net.flush(i as u64);
        }
        net
    }

    fn start(&mut self, node: u64, boot: u64) {
        let seed = self.rng.random();
        self.nodes[node as usize] = Some(Membership::new(
            PeerId {
                node,
                boot,
                addr: addr(node),
            },
            5,
            seed,
        ));
    }

    fn push(&mut self, at: Duration, e: Event) {
        self.next += 1;
        self.queue.push(Reverse((at, self.next)));
        self.events.insert(self.next, e);
    }

    /// Moves what node `i` wants to send and schedule onto the queue.
    fn flush(&mut self, i: u64) {
        let Some(m) = self.nodes[i as usize].as_mut() else {
            return;
        };
        let boot = m.identity().boot;
        let mut sends = Vec::new();
        while let Some(s) = m.poll_transmit() {
            sends.push(s);
        }
        let mut timers = Vec::new();
        while let Some(t) = m.poll_timer() {
            timers.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = m.poll_event() {
            events.push(e);
        }
        for e in events {
            self.log.push((self.now, i, e));
        }
        for (to, data) in sends {
            let same_side = self.group[i as usize] == self.group[to.node as usize];
            if same_side {
                let delay = Duration::from_micros(self.rng.random_range(50..2_000));
                self.push(
                    self.now + delay,
                    Event::Deliver {
                        from: i,
                        to: to.node,
                        data,
                    },
                );
            }
        }
        for (after, timer) in timers {
            self.push(
                self.now + after,
                Event::Timer {
                    node: i,
                    boot,
                    timer,
                },
            );
        }
    }

    /// Runs the clock to `until`.
    fn run_until(&mut self, until: Duration) {
        while let Some(Reverse((at, id))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let Some(e) = self.events.remove(&id) else {
                continue;
            };
            let node = match e {
                Event::Deliver { from, to, data } => {
                    if let Some(m) = self.nodes[to as usize].as_mut() {
                        // A datagram for an earlier run of the node is refused, like garbage.
                        // The sender is the one its certificate names, as on the wire.
                        let _ = m.handle_data_from(&data, from);
                    }
                    to
                }
                Event::Timer { node, boot, timer } => {
                    if let Some(m) = self.nodes[node as usize].as_mut()
                        && m.identity().boot == boot
                    {
                        let _ = m.handle_timer(timer);
                    }
                    node
                }
            };
            self.flush(node);
        }
        self.now = until;
    }

    fn members_of(&self, i: usize) -> BTreeSet<NodeId> {
        self.nodes[i]
            .as_ref()
            .map(|m| m.members())
            .unwrap_or_default()
    }

    /// When each of `observers` last reported `target` down, at or after `since`.
    fn down_at(&self, observers: &[u64], target: u64, since: Duration) -> Option<Duration> {
        observers
            .iter()
            .map(|o| {
                self.log
                    .iter()
                    .find(|(t, who, e)| {
                        *t >= since && who == o && *e == MembershipEvent::MemberDown(NodeId(target))
                    })
                    .map(|(t, ..)| *t)
            })
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max())
    }
}

fn ids(v: &[u64]) -> BTreeSet<NodeId> {
    v.iter().map(|&n| NodeId(n)).collect()
}

#[test]
fn a_cluster_forms_detects_a_kill_and_takes_the_node_back() {
    let mut detections = Vec::new();
    for seed in 0..20 {
        let mut net = Net::new(5, seed);
        net.run_until(Duration::from_secs(5));
        for i in 0..5 {
            let others: Vec<u64> = (0..5).filter(|&j| j != i as u64).collect();
            assert_eq!(
                net.members_of(i),
                ids(&others),
                "seed {seed}: node {i} after 5 s"
            );
        }
        // SIGKILL node 3: it sends nothing more.
        let killed_at = net.now;
        net.nodes[3] = None;
        net.run_until(killed_at + Duration::from_secs(30));
        let down = net
            .down_at(&[0, 1, 2, 4], 3, killed_at)
            .unwrap_or_else(|| panic!("seed {seed}: node 3 was not declared down by everyone"));
        let took = down - killed_at;
        detections.push(took);
        let false_downs: Vec<_> = net
            .log
            .iter()
            .filter(|(_, _, e)| matches!(e, MembershipEvent::MemberDown(n) if n.0 != 3))
            .collect();
        assert!(
            false_downs.is_empty(),
            "seed {seed}: live nodes declared down: {false_downs:?}"
        );
        assert!(
            took <= Duration::from_secs(3),
            "seed {seed}: declared down after {took:?}"
        );
        // Restarted with a new boot, it rejoins through node 0.
        net.start(3, 1);
        let seed_peer = net.nodes[0].as_ref().map(|m| m.identity()).expect("node 0");
        net.nodes[3]
            .as_mut()
            .expect("started")
            .join(seed_peer)
            .expect("announce");
        net.flush(3);
        net.run_until(net.now + Duration::from_secs(10));
        for i in [0usize, 1, 2, 4] {
            assert!(
                net.members_of(i).contains(&NodeId(3)),
                "seed {seed}: node {i} sees 3 again"
            );
        }
        assert_eq!(net.members_of(3), ids(&[0, 1, 2, 4]), "seed {seed}");
    }
    detections.sort();
    println!(
        "a killed node declared down by all four survivors after {:?} (median) to {:?} (max), 20 seeds",
        detections[detections.len() / 2],
        detections[detections.len() - 1]
    );
}

#[test]
fn a_partition_splits_the_view_and_healing_mends_it() {
    for seed in 0..10 {
        let mut net = Net::new(5, 100 + seed);
        net.run_until(Duration::from_secs(5));
        net.group = vec![0, 0, 1, 1, 1];
        let split = net.now;
        net.run_until(split + Duration::from_secs(30));
        assert_eq!(net.members_of(0), ids(&[1]), "seed {seed}");
        assert_eq!(net.members_of(4), ids(&[2, 3]), "seed {seed}");
        net.group = vec![0; 5];
        // Down members are announced to periodically; healing takes up to a
        // few of those periods.
        net.run_until(net.now + Duration::from_secs(200));
        for i in 0..5 {
            let others: Vec<u64> = (0..5).filter(|&j| j != i as u64).collect();
            assert_eq!(
                net.members_of(i),
                ids(&others),
                "seed {seed}: node {i} after healing"
            );
        }
    }
}

#[test]
fn garbage_is_refused_and_changes_nothing() {
    let mut m = Membership::new(
        PeerId {
            node: 1,
            boot: 0,
            addr: addr(1),
        },
        3,
        7,
    );
    for junk in [&b""[..], b"\xff\xff\xff\xff", b"hello, world", &[0u8; 2000]] {
        assert!(m.handle_data(junk).is_err());
    }
    assert!(m.members().is_empty());
}

#[test]
fn a_datagram_claiming_another_sender_is_refused() {
    let mut a = Membership::new(
        PeerId {
            node: 1,
            boot: 0,
            addr: addr(1),
        },
        3,
        7,
    );
    let mut b = Membership::new(
        PeerId {
            node: 2,
            boot: 0,
            addr: addr(2),
        },
        3,
        8,
    );
    a.join(b.identity()).unwrap();
    let (to, data) = a.poll_transmit().expect("an announce");
    assert_eq!(to.node, 2);
    // Relayed by node 3 (or forged by it): refused, nothing learned.
    assert!(b.handle_data_from(&data, 3).is_err());
    assert!(b.members().is_empty());
    // From node 1 itself: node 1 is learned.
    b.handle_data_from(&data, 1).unwrap();
    assert!(b.members().contains(&NodeId(1)), "{:?}", b.members());
}

fn addr(node: u64) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + node as u16))
}
