//! Messages between entities, exactly once, as rules without I/O.
//!
//! Two rules make an at-least-once delivery an exactly-once application:
//! - a sender's [`Outbox`] hands out its pending sends to each target
//!   oldest first, one at a time: the next send to a target is delivered
//!   only once the one before it to that target was answered (sends to
//!   different targets go side by side, so a slow receiver holds back only
//!   its own messages);
//! - a receiver's [`Inbox`] keeps, for each sender, the highest send it
//!   applied, and applies send `n` only if it is above that.
//!
//! Because sends are numbered per sender and each target gets its sends in
//! order, when send `n` arrives every earlier one to the same receiver was
//! applied (or refused for good), so the highest number is all a receiver
//! needs to remember. The node keeps both durably in the entity's journal,
//! written atomically with the events (the host's `outbox` module), and
//! runs its delivery with these types; the seeded simulation below runs
//! them across lost, repeated and late messages, crashes, failovers and
//! handoffs of senders and receivers, and paused owners that keep
//! delivering.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use crate::fence::{Mutant, is_mutant};

/// What a receiver applied: the highest send of each sender.
#[derive(Clone, Debug)]
pub struct Inbox<S> {
    highest: HashMap<S, u64>,
}

impl<S> Default for Inbox<S> {
    fn default() -> Self {
        Inbox {
            highest: HashMap::new(),
        }
    }
}

impl<S: Eq + Hash + Clone> Inbox<S> {
    /// Was send `n` of `sender` applied already (so a copy of it must not
    /// run again)?
    pub fn applied(&self, sender: &S, n: u64) -> bool {
        if is_mutant(Mutant::SendWithoutDedup) {
            return false;
        }
        self.highest.get(sender).is_some_and(|&h| n <= h)
    }

    /// Records that send `n` of `sender` was applied (with the events it
    /// caused, atomically).
    pub fn record(&mut self, sender: S, n: u64) {
        let h = self.highest.entry(sender).or_default();
        *h = (*h).max(n);
    }

    /// The highest send of `sender` applied (0: none).
    pub fn highest(&self, sender: &S) -> u64 {
        self.highest.get(sender).copied().unwrap_or(0)
    }
}

/// A sender's pending sends, by number, each with its target and what its
/// delivery needs, and the send out now to each target.
#[derive(Clone, Debug)]
pub struct Outbox<K, T> {
    pending: BTreeMap<u64, (K, T)>,
    out: BTreeMap<K, u64>,
}

impl<K, T> Default for Outbox<K, T> {
    fn default() -> Self {
        Outbox {
            pending: BTreeMap::new(),
            out: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, T> Outbox<K, T> {
    /// Adds send `n` for `target` (a copy of one already here is ignored).
    pub fn add(&mut self, n: u64, target: K, item: T) {
        self.pending.entry(n).or_insert((target, item));
    }

    /// The sends to deliver now, ascending, each marked out until it is
    /// [`Outbox::done`]: for each target with no send out, its oldest
    /// pending send, oldest first, while fewer than `max_out` are out.
    pub fn take_ready(&mut self, max_out: usize) -> Vec<u64> {
        let mut first: BTreeMap<&K, u64> = BTreeMap::new();
        for (n, (target, _)) in &self.pending {
            if self.out.contains_key(target) {
                continue;
            }
            if is_mutant(Mutant::SendsOutOfOrder) {
                first.insert(target, *n);
            } else {
                first.entry(target).or_insert(*n);
            }
        }
        let mut ready: Vec<(K, u64)> = first.into_iter().map(|(t, n)| (t.clone(), n)).collect();
        ready.sort_by_key(|(_, n)| *n);
        ready.truncate(max_out.saturating_sub(self.out.len()));
        for (target, n) in &ready {
            self.out.insert(target.clone(), *n);
        }
        ready.into_iter().map(|(_, n)| n).collect()
    }

    /// Send `n`'s target and what its delivery needs.
    pub fn get(&self, n: u64) -> Option<(&K, &T)> {
        self.pending.get(&n).map(|(k, t)| (k, t))
    }

    /// Send `n` was answered: it leaves the outbox, and its target may
    /// take the next.
    pub fn done(&mut self, n: u64) -> Option<T> {
        let (target, item) = self.pending.remove(&n)?;
        if self.out.get(&target) == Some(&n) {
            self.out.remove(&target);
        }
        Some(item)
    }

    /// Nothing pending?
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The numbers of the pending sends, ascending.
    pub fn numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::Outbox;

    #[test]
    fn one_send_out_per_target_and_a_bound_on_all() {
        let mut o: Outbox<&str, ()> = Outbox::default();
        for (n, t) in [(1, "a"), (2, "a"), (3, "b"), (4, "c"), (5, "b")] {
            o.add(n, t, ());
        }
        assert_eq!(o.take_ready(2), vec![1, 3]);
        assert_eq!(o.take_ready(2), Vec::<u64>::new());
        o.done(3);
        assert_eq!(o.take_ready(2), vec![4]);
        o.done(1);
        o.done(4);
        assert_eq!(o.take_ready(8), vec![2, 5]);
        assert_eq!(o.numbers().collect::<Vec<_>>(), vec![2, 5]);
    }
}

#[cfg(test)]
mod sim {
    //! Three nodes; three senders and three receivers, each owned by one
    //! node at a time. Sends are decided (durably, in the sender's
    //! journal), delivered by the sender's owner through a network that
    //! loses, repeats and delays messages, applied by the receiver's owner
    //! (with its inbox record, atomically) and forgotten by the sender's
    //! owner once answered (a write fenced by the sender's epoch). Nodes
    //! crash and restart; entities fail over and hand off, and a deposed
    //! owner may keep delivering from its memory for a while (a paused
    //! process) without being able to write. Checked on every step: no
    //! receiver applied a send twice; at the end, after the faults heal,
    //! every decided send was applied exactly once, at its target.
    //! `CAIRN_SIM_SEED=N` replays one seed.

    use std::collections::{BTreeMap, BTreeSet};

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::{Inbox, Outbox};
    use crate::fence::{Mutant, set_mutant};

    const NODES: usize = 3;
    const SENDERS: usize = 3;
    const RECEIVERS: usize = 3;
    const STEPS: usize = 200;
    /// Sends a sender has out at once (fewer than its receivers, so the
    /// bound is exercised).
    const MAX_OUT: usize = 2;
    /// Steps a delivery waits for its answer before it is sent again.
    const PATIENCE: usize = 4;

    enum Msg {
        /// Send `n` of `sender` for `target`, from the node `from` (under
        /// its epoch of the sender).
        Deliver {
            from: usize,
            epoch: u64,
            sender: usize,
            n: u64,
            target: usize,
        },
        /// The answer, back to `to`.
        Ack {
            to: usize,
            epoch: u64,
            sender: usize,
            n: u64,
        },
    }

    /// A node's memory of a sender it serves (or served: a deposed owner
    /// keeps delivering until it notices).
    struct Delivering {
        epoch: u64,
        queue: Outbox<usize, ()>,
        /// The sends out (one per target at most) and when each was last
        /// sent.
        outstanding: BTreeMap<u64, usize>,
        /// A deposed owner notices after this step.
        zombie_until: Option<usize>,
    }

    struct World {
        rng: StdRng,
        step: usize,
        alive: [bool; NODES],
        /// Sender: owner and epoch. Receiver: owner.
        sender_owner: [(usize, u64); SENDERS],
        receiver_owner: [usize; RECEIVERS],
        /// Sender journals: the count of sends and the durable outbox.
        count: [u64; SENDERS],
        durable: [BTreeMap<u64, usize>; SENDERS],
        /// Every send decided: (sender, n) -> target.
        decided: BTreeMap<(usize, u64), usize>,
        /// Receiver journals: what was applied, and the inbox record.
        applied: [Vec<(usize, u64)>; RECEIVERS],
        inbox: [Inbox<usize>; RECEIVERS],
        /// Node -> sender -> its delivery state.
        delivering: [BTreeMap<usize, Delivering>; NODES],
        net: Vec<(usize, Msg)>,
        faults: bool,
    }

    impl World {
        fn new(seed: u64) -> World {
            let mut rng = StdRng::seed_from_u64(seed);
            let sender_owner = std::array::from_fn(|_| (rng.random_range(0..NODES), 1));
            let receiver_owner = std::array::from_fn(|_| rng.random_range(0..NODES));
            let mut w = World {
                rng,
                step: 0,
                alive: [true; NODES],
                sender_owner,
                receiver_owner,
                count: [0; SENDERS],
                durable: std::array::from_fn(|_| BTreeMap::new()),
                decided: BTreeMap::new(),
                applied: std::array::from_fn(|_| Vec::new()),
                inbox: std::array::from_fn(|_| Inbox::default()),
                delivering: std::array::from_fn(|_| BTreeMap::new()),
                net: Vec::new(),
                faults: true,
            };
            for s in 0..SENDERS {
                w.take_over(s);
            }
            w
        }

        /// The sender's owner reads its outbox from the journal.
        fn take_over(&mut self, s: usize) {
            let (node, epoch) = self.sender_owner[s];
            let mut queue = Outbox::default();
            for (n, t) in &self.durable[s] {
                queue.add(*n, *t, ());
            }
            self.delivering[node].insert(
                s,
                Delivering {
                    epoch,
                    queue,
                    outstanding: BTreeMap::new(),
                    zombie_until: None,
                },
            );
        }

        fn other_alive(&mut self, not: usize) -> Option<usize> {
            let alive: Vec<usize> = (0..NODES).filter(|n| *n != not && self.alive[*n]).collect();
            if alive.is_empty() {
                None
            } else {
                Some(alive[self.rng.random_range(0..alive.len())])
            }
        }

        /// Moves sender `s` to another node; the old one may go on
        /// delivering for a few steps.
        fn move_sender(&mut self, s: usize) {
            let (old, epoch) = self.sender_owner[s];
            let Some(new) = self.other_alive(old) else {
                return;
            };
            let zombie = self.faults && self.rng.random_bool(0.5);
            if zombie {
                let until = self.step + self.rng.random_range(1..6);
                if let Some(d) = self.delivering[old].get_mut(&s) {
                    d.zombie_until = Some(until);
                }
            } else {
                self.delivering[old].remove(&s);
            }
            self.sender_owner[s] = (new, epoch + 1);
            self.take_over(s);
        }

        fn act(&mut self) {
            self.step += 1;
            let roll = self.rng.random_range(0..100);
            match roll {
                // A sender decides a send (durably, on its serving owner);
                // after the faults heal, nothing new is sent.
                0..=19 if self.faults => {
                    let s = self.rng.random_range(0..SENDERS);
                    let (node, epoch) = self.sender_owner[s];
                    if !self.alive[node] {
                        return;
                    }
                    let t = self.rng.random_range(0..RECEIVERS);
                    self.count[s] += 1;
                    let n = self.count[s];
                    self.durable[s].insert(n, t);
                    self.decided.insert((s, n), t);
                    if let Some(d) = self.delivering[node].get_mut(&s)
                        && d.epoch == epoch
                    {
                        d.queue.add(n, t, ());
                    }
                }
                // Delivery workers send their next message.
                0..=44 => self.work(),
                // The network hands over a message.
                45..=79 => self.network(),
                // Faults.
                80..=85 if self.faults => {
                    let s = self.rng.random_range(0..SENDERS);
                    self.move_sender(s);
                }
                86..=91 if self.faults => {
                    let r = self.rng.random_range(0..RECEIVERS);
                    if let Some(n) = self.other_alive(self.receiver_owner[r]) {
                        self.receiver_owner[r] = n;
                    }
                }
                92..=95 if self.faults => {
                    // A crash: its memory is gone; what it owned fails over.
                    let node = self.rng.random_range(0..NODES);
                    if (0..NODES).filter(|n| self.alive[*n]).count() < 2 {
                        return;
                    }
                    self.alive[node] = false;
                    self.delivering[node].clear();
                    for s in 0..SENDERS {
                        if self.sender_owner[s].0 == node {
                            self.move_sender(s);
                        }
                    }
                    for r in 0..RECEIVERS {
                        if self.receiver_owner[r] == node
                            && let Some(n) = self.other_alive(node)
                        {
                            self.receiver_owner[r] = n;
                        }
                    }
                }
                96..=99 if self.faults => {
                    let node = self.rng.random_range(0..NODES);
                    self.alive[node] = true;
                }
                _ => self.network(),
            }
        }

        fn work(&mut self) {
            for node in 0..NODES {
                if !self.alive[node] {
                    continue;
                }
                let step = self.step;
                let mut sends = Vec::new();
                self.delivering[node].retain(|_, d| d.zombie_until.is_none_or(|u| step <= u));
                for (s, d) in self.delivering[node].iter_mut() {
                    // Sends out without an answer for a while go again.
                    let mut due: Vec<u64> = d
                        .outstanding
                        .iter()
                        .filter(|(_, at)| step > **at + PATIENCE)
                        .map(|(n, _)| *n)
                        .collect();
                    due.extend(d.queue.take_ready(MAX_OUT));
                    for n in due {
                        let Some((t, _)) = d.queue.get(n) else {
                            continue;
                        };
                        d.outstanding.insert(n, step);
                        sends.push(Msg::Deliver {
                            from: node,
                            epoch: d.epoch,
                            sender: *s,
                            n,
                            target: *t,
                        });
                    }
                }
                for m in sends {
                    let at = self.step + self.rng.random_range(0..3);
                    self.net.push((at, m));
                }
            }
        }

        /// Hands over a few messages (all that are due once faults heal).
        fn network(&mut self) {
            let n = if self.faults { 3 } else { self.net.len() };
            for _ in 0..n {
                self.hand_over();
            }
        }

        fn hand_over(&mut self) {
            if self.net.is_empty() {
                return;
            }
            let i = self.rng.random_range(0..self.net.len());
            if self.net[i].0 > self.step {
                return;
            }
            let (_, msg) = self.net.swap_remove(i);
            if self.faults && self.rng.random_bool(0.1) {
                return; // lost
            }
            match msg {
                Msg::Deliver {
                    from,
                    epoch,
                    sender,
                    n,
                    target,
                } => {
                    if self.faults && self.rng.random_bool(0.1) {
                        // Delivered twice (a resend crossing the first).
                        self.net.push((
                            self.step + 2,
                            Msg::Deliver {
                                from,
                                epoch,
                                sender,
                                n,
                                target,
                            },
                        ));
                    }
                    let owner = self.receiver_owner[target];
                    if !self.alive[owner] {
                        return;
                    }
                    if !self.inbox[target].applied(&sender, n) {
                        // Applied, with its inbox record, in one write.
                        self.applied[target].push((sender, n));
                        self.inbox[target].record(sender, n);
                    }
                    self.net.push((
                        self.step + 1,
                        Msg::Ack {
                            to: from,
                            epoch,
                            sender,
                            n,
                        },
                    ));
                }
                Msg::Ack {
                    to,
                    epoch,
                    sender,
                    n,
                } => {
                    if !self.alive[to] {
                        return;
                    }
                    let Some(d) = self.delivering[to].get_mut(&sender) else {
                        return;
                    };
                    if d.epoch != epoch || d.outstanding.remove(&n).is_none() {
                        return;
                    }
                    d.queue.done(n);
                    // The forget is a write of the sender: fenced.
                    if self.sender_owner[sender] == (to, epoch) {
                        self.durable[sender].remove(&n);
                    }
                }
            }
        }

        fn check_at_most_once(&self) -> Result<(), String> {
            for (r, applied) in self.applied.iter().enumerate() {
                let mut seen = BTreeSet::new();
                for a in applied {
                    if !seen.insert(*a) {
                        return Err(format!("receiver {r} applied send {a:?} twice"));
                    }
                    if self.decided.get(a) != Some(&r) {
                        return Err(format!("receiver {r} applied {a:?}, not sent to it"));
                    }
                }
            }
            Ok(())
        }

        fn check_exactly_once(&self) -> Result<(), String> {
            for ((s, n), t) in &self.decided {
                if !self.applied[*t].contains(&(*s, *n)) {
                    return Err(format!(
                        "send {n} of sender {s} never applied at {t} (still in the outbox: {}; \
                         the receiver's highest from it: {}; owner {:?}, queues {:?})",
                        self.durable[*s].contains_key(n),
                        self.inbox[*t].highest(s),
                        self.sender_owner[*s],
                        (0..NODES)
                            .map(|node| self.delivering[node].get(s).map(|d| (
                                d.epoch,
                                d.queue.numbers().collect::<Vec<_>>(),
                                d.outstanding.clone()
                            )))
                            .collect::<Vec<_>>(),
                    ));
                }
            }
            Ok(())
        }
    }

    fn run(seed: u64) -> Result<(), String> {
        let mut w = World::new(seed);
        for _ in 0..STEPS {
            w.act();
            w.check_at_most_once()
                .map_err(|e| format!("step {}: {e}", w.step))?;
        }
        // Heal: every node up, no loss, no zombies; deliver until quiet.
        w.faults = false;
        w.alive = [true; NODES];
        for node in 0..NODES {
            w.delivering[node].retain(|_, d| d.zombie_until.is_none());
        }
        for s in 0..SENDERS {
            let (node, epoch) = w.sender_owner[s];
            if w.delivering[node].get(&s).map(|d| d.epoch) != Some(epoch) {
                w.take_over(s);
            }
        }
        for _ in 0..2_000 {
            let quiet = w.net.is_empty() && w.durable.iter().all(|d| d.is_empty());
            if quiet {
                break;
            }
            w.act();
            w.check_at_most_once()
                .map_err(|e| format!("step {}: {e}", w.step))?;
        }
        w.check_exactly_once()
    }

    fn seeds() -> Vec<u64> {
        match std::env::var("CAIRN_SIM_SEED") {
            Ok(s) => vec![s.parse().expect("CAIRN_SIM_SEED is a number")],
            Err(_) => (0..10_000).collect(),
        }
    }

    #[test]
    fn every_send_is_applied_exactly_once() {
        set_mutant(None);
        for seed in seeds() {
            if let Err(e) = run(seed) {
                panic!("seed {seed}: {e} (replay with CAIRN_SIM_SEED={seed})");
            }
        }
    }

    #[test]
    fn broken_message_rules_are_caught() {
        for m in [Mutant::SendWithoutDedup, Mutant::SendsOutOfOrder] {
            set_mutant(Some(m));
            let caught = (0..2_000u64).find(|seed| run(*seed).is_err());
            set_mutant(None);
            assert!(caught.is_some(), "{m:?} was not caught in 2,000 seeds");
            eprintln!("{m:?} caught by seed {caught:?}");
        }
    }
}
