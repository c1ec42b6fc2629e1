//! One replication message per replica per batch: a primary's writes to
//! the same replica that are waiting while an earlier message is in
//! flight leave together in one [`PeerRequest::ReplicateBatch`], and each
//! gets its own answer from the [`PeerResponse::Batch`]. The replica
//! appends the writes of a batch concurrently, so its journal's group
//! commit makes them durable with one fsync.
//!
//! One batch is in flight per replica at a time: while it is, the next
//! one gathers (like a group commit), so an entity's writes reach the
//! replica in the order they were sent. Which writes join a batch is the
//! sans-IO rule `cairn_cluster::batch::Gather` (bounded in writes and
//! bytes, at most one write of an entity, the queue's order kept).
//! Each write's outcome is its own: a refusal (fenced, a gap) answers that
//! write only; a lost call fails every write of the batch with the same
//! error (each may have been applied: the caller treats it as unknown). A
//! write its writer gave up on while it waited in the queue is not sent;
//! one already sent goes on (with the gap fill it may need), as before.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_cluster::batch::{Gather, Limits, Offer};
use tokio::sync::{mpsc, oneshot};

use crate::peer::{PeerError, PeerRequest, PeerResponse, Peers};

type Answer = Result<PeerResponse, PeerError>;

struct Item {
    req: PeerRequest,
    bytes: usize,
    done: oneshot::Sender<Answer>,
    /// Set by the writer when it gives the write up.
    withdrawn: Option<Arc<AtomicBool>>,
}

impl Item {
    /// Given up while it waited: not sent (answered as not sent).
    fn withdrawn(&self) -> bool {
        self.done.is_closed()
            || self
                .withdrawn
                .as_ref()
                .is_some_and(|w| w.load(Ordering::Relaxed))
    }
}

/// The primary's batching of replica writes, one queue per replica address.
pub(crate) struct Batcher {
    peers: Arc<Peers>,
    timeout: Duration,
    queues: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Item>>>,
}

impl Batcher {
    /// A batcher sending through `peers`; each batch's call may take up to
    /// `timeout`.
    pub(crate) fn new(peers: Arc<Peers>, timeout: Duration) -> Batcher {
        Batcher {
            peers,
            timeout,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `req` (a [`PeerRequest::Replicate`]) to `addr` with the writes
    /// queued beside it, and returns its own answer. Once `withdrawn` is
    /// set, a write still waiting in the queue is not sent (one already
    /// sent is not recalled).
    pub(crate) async fn call(
        &self,
        addr: SocketAddr,
        req: PeerRequest,
        withdrawn: Option<Arc<AtomicBool>>,
    ) -> Answer {
        let bytes = write_bytes(&req);
        let (done, answer) = oneshot::channel();
        let mut item = Item {
            req,
            bytes,
            done,
            withdrawn,
        };
        for _ in 0..2 {
            let queue = {
                let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                queues
                    .entry(addr)
                    .or_insert_with(|| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        tokio::spawn(run(self.peers.clone(), addr, self.timeout, rx));
                        tx
                    })
                    .clone()
            };
            match queue.send(item) {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(PeerError::NoAnswer(addr, "the batch was dropped".into()))
                    });
                }
                // Its task ended (a runtime shutting down): start another.
                Err(mpsc::error::SendError(back)) => {
                    item = back;
                    if let Ok(mut queues) = self.queues.lock() {
                        queues.remove(&addr);
                    }
                }
            }
        }
        Err(PeerError::Unreachable(addr, "no batch queue".into()))
    }
}

/// The bytes of events a write carries.
fn write_bytes(req: &PeerRequest) -> usize {
    match req {
        PeerRequest::Replicate {
            events, add_timers, ..
        } => {
            events.iter().map(|e| e.3.len() + 64).sum::<usize>()
                + add_timers.iter().map(|t| t.2.len() + 24).sum::<usize>()
                + 128
        }
        _ => 128,
    }
}

/// A hash of the entity a write is for. Two entities that share a hash
/// only split a batch that could have held both.
fn entity_of(req: &PeerRequest) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    match req {
        PeerRequest::Replicate {
            entity_type,
            entity_id,
            ..
        } => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (entity_type, entity_id).hash(&mut h);
            Some(h.finish())
        }
        _ => None,
    }
}

/// Answers a withdrawn write: it was never sent.
fn not_sent(addr: SocketAddr, item: Item) {
    let _ = item.done.send(Err(PeerError::Unreachable(
        addr,
        "not sent: its write was given up".into(),
    )));
}

/// One replica's queue: gathers what waits, sends it, hands out the answers.
async fn run(
    peers: Arc<Peers>,
    addr: SocketAddr,
    timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<Item>,
) {
    let mut carry: Option<Item> = None;
    loop {
        let first = match carry.take() {
            Some(i) => i,
            None => match rx.recv().await {
                Some(i) => i,
                None => return,
            },
        };
        // Withdrawn by its writer (the write was given up): not sent.
        if first.withdrawn() {
            not_sent(addr, first);
            continue;
        }
        let mut gather = Gather::start(Limits::default(), entity_of(&first.req), first.bytes);
        let mut items = vec![first];
        loop {
            match rx.try_recv() {
                Ok(i) if i.withdrawn() => not_sent(addr, i),
                Ok(i) => match gather.offer(entity_of(&i.req), i.bytes) {
                    Offer::Join => items.push(i),
                    Offer::Next => {
                        carry = Some(i);
                        break;
                    }
                },
                Err(_) => break,
            }
        }
        send(&peers, addr, timeout, items).await;
    }
}

async fn send(peers: &Peers, addr: SocketAddr, timeout: Duration, mut items: Vec<Item>) {
    if items.len() == 1 {
        let Some(i) = items.pop() else { return };
        let answer = peers.call(addr, &i.req, timeout).await;
        let _ = i.done.send(answer);
        return;
    }
    let (reqs, dones): (Vec<PeerRequest>, Vec<oneshot::Sender<Answer>>) =
        items.into_iter().map(|i| (i.req, i.done)).unzip();
    let n = reqs.len();
    match peers
        .call(addr, &PeerRequest::ReplicateBatch(reqs), timeout)
        .await
    {
        Ok(PeerResponse::Batch(answers)) if answers.len() == n => {
            for (done, a) in dones.into_iter().zip(answers) {
                let _ = done.send(Ok(a));
            }
        }
        Ok(other) => {
            let why = format!("a batch of {n} writes answered {other:?}");
            for done in dones {
                let _ = done.send(Err(PeerError::Protocol(addr, why.clone())));
            }
        }
        Err(e) => {
            for done in dones {
                let _ = done.send(Err(e.again()));
            }
        }
    }
}
