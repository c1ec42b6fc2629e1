//! Drives the membership state machine ([`cairn_cluster::membership`],
//! SWIM over `foca`) and the phi-accrual heartbeats on the peer transport:
//! datagrams in, datagrams and timers out, on the node's clock. Publishes
//! what changes into the cluster's view and as lifecycle events.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_cluster::membership::{Membership, MembershipEvent, MembershipTimer, PeerId};
use cairn_cluster::phi::{PhiConfig, PhiDetector};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Inner;
use cairn_host::types::MemberChange;

/// First byte of a datagram: a gossip message.
pub(crate) const TAG_GOSSIP: u8 = 0;
/// First byte of a datagram: a heartbeat (then the sender's id, 8 bytes LE).
pub(crate) const TAG_HEARTBEAT: u8 = 1;
/// How often every member is sent a heartbeat.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(500);

/// What the gossip task is given.
pub(crate) enum GossipInput {
    /// A datagram from a peer (tag stripped), with the node id its
    /// certificate names.
    Data(u64, Vec<u8>),
    /// Announce this node to a member found by `Hello`.
    Join(PeerId),
    /// Leave the cluster (tell the others), then stop.
    Leave,
}

struct Due(Instant, u64, MembershipTimer);

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

/// Runs membership until [`GossipInput::Leave`] or the channel closes.
pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<GossipInput>) {
    let id = PeerId {
        node: inner.id,
        boot: inner.boot.load(std::sync::atomic::Ordering::Relaxed),
        addr: inner.addr,
    };
    let mut m = Membership::new(id, 5, inner.id ^ id.boot);
    let mut timers: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut n = 0u64;
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = timers
            .peek()
            .map(|Reverse(d)| d.0)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            input = rx.recv() => match input {
                Some(GossipInput::Data(peer, d)) => {
                    if let Err(e) = m.handle_data_from(&d, peer) {
                        tracing::debug!(error = %e, "gossip datagram refused");
                    }
                }
                Some(GossipInput::Join(seed)) => {
                    if let Err(e) = m.join(seed) {
                        tracing::debug!(error = %e, "announce failed");
                    }
                }
                Some(GossipInput::Leave) | None => {
                    for (to, data) in m.leave() {
                        send(&inner, to.addr, TAG_GOSSIP, data).await;
                    }
                    return;
                }
            },
            _ = tokio::time::sleep_until(next) => {
                while timers.peek().is_some_and(|Reverse(d)| d.0 <= Instant::now()) {
                    if let Some(Reverse(Due(_, _, t))) = timers.pop()
                        && let Err(e) = m.handle_timer(t)
                    {
                        tracing::debug!(error = %e, "gossip timer");
                    }
                }
            }
            _ = beat.tick() => heartbeats(&inner).await,
        }
        // Declared down while it was paused, foca rejoins under a renewed
        // identity: `Hello` must give that one to whoever announces to us.
        inner
            .boot
            .store(m.identity().boot, std::sync::atomic::Ordering::Relaxed);
        while let Some((to, data)) = m.poll_transmit() {
            let inner = inner.clone();
            tokio::spawn(async move { send(&inner, to.addr, TAG_GOSSIP, data).await });
        }
        while let Some((delay, t)) = m.poll_timer() {
            n += 1;
            timers.push(Reverse(Due(Instant::now() + delay, n, t)));
        }
        let peers = m.peers();
        while let Some(ev) = m.poll_event() {
            match ev {
                MembershipEvent::MemberUp(node) => {
                    let addr = peers.iter().find(|p| p.node == node.0).map(|p| p.addr);
                    member_up(&inner, node.0, addr);
                }
                MembershipEvent::MemberDown(node) => member_down(&inner, node.0),
                _ => {}
            }
        }
    }
}

async fn send(inner: &Inner, addr: SocketAddr, tag: u8, data: Vec<u8>) {
    let mut d = Vec::with_capacity(data.len() + 1);
    d.push(tag);
    d.extend_from_slice(&data);
    inner.peers.datagram(addr, d).await;
}

fn member_up(inner: &Inner, node: u64, addr: Option<SocketAddr>) {
    let addr = {
        let mut v = inner.view();
        v.live.insert(node);
        v.down.remove(&node);
        if let Some(a) = addr {
            v.addrs.insert(node, a);
        }
        v.addrs.get(&node).copied()
    };
    inner.refresh_down();
    tracing::info!(node, ?addr, "member up");
    inner.node.emit_member(
        MemberChange::Up,
        node,
        addr.map(|a| a.to_string()).unwrap_or_default(),
    );
}

fn member_down(inner: &Inner, node: u64) {
    let addr = {
        let mut v = inner.view();
        v.live.remove(&node);
        v.down.insert(node);
        v.addrs.get(&node).copied()
    };
    inner.refresh_down();
    let leaving = inner.member_state(node).is_some_and(|s| {
        matches!(
            s,
            cairn_cluster::MemberState::Leaving
                | cairn_cluster::MemberState::Exiting
                | cairn_cluster::MemberState::Removed
        )
    });
    tracing::warn!(node, ?addr, leaving, "member down");
    inner.node.emit_member(
        if leaving {
            MemberChange::Left
        } else {
            MemberChange::Down
        },
        node,
        addr.map(|a| a.to_string()).unwrap_or_default(),
    );
}

/// Sends a heartbeat to every known member and re-evaluates reachability.
async fn heartbeats(inner: &Arc<Inner>) {
    let targets: Vec<SocketAddr> = {
        let v = inner.view();
        v.addrs
            .iter()
            .filter(|(id, _)| **id != inner.id)
            .map(|(_, a)| *a)
            .collect()
    };
    for addr in targets {
        let inner = inner.clone();
        tokio::spawn(async move {
            send(&inner, addr, TAG_HEARTBEAT, inner.id.to_le_bytes().to_vec()).await;
        });
    }
    let now = inner.started.elapsed();
    let mut changes = Vec::new();
    {
        let mut v = inner.view();
        let ids: Vec<u64> = v.phi.keys().copied().collect();
        for id in ids {
            let reachable = v.phi.get(&id).is_none_or(|d| d.reachable(now));
            let was = !v.unreachable.contains(&id);
            if reachable != was {
                if reachable {
                    v.unreachable.remove(&id);
                } else {
                    v.unreachable.insert(id);
                }
                changes.push((id, reachable, v.addrs.get(&id).copied()));
            }
        }
    }
    if !changes.is_empty() {
        inner.refresh_down();
    }
    for (node, reachable, addr) in changes {
        tracing::info!(node, reachable, "reachability changed");
        inner.node.emit_member(
            if reachable {
                MemberChange::Reachable
            } else {
                MemberChange::Unreachable
            },
            node,
            addr.map(|a| a.to_string()).unwrap_or_default(),
        );
    }
}

/// A heartbeat datagram arrived from member `peer` (by its certificate);
/// one naming another node is dropped.
pub(crate) fn heartbeat(inner: &Inner, data: &[u8], peer: u64) {
    let Ok(bytes) = <[u8; 8]>::try_from(data) else {
        return;
    };
    let node = u64::from_le_bytes(bytes);
    if node != peer {
        tracing::debug!(peer, node, "a heartbeat naming another node dropped");
        return;
    }
    let now = inner.started.elapsed();
    inner
        .view()
        .phi
        .entry(node)
        .or_insert_with(|| PhiDetector::new(PhiConfig::default()))
        .heartbeat(now);
}
