//! Membership and failure detection: who is in the cluster and who stopped
//! answering, by SWIM with Lifeguard's refinements (the `foca` crate, which
//! is sans-IO: it takes datagrams and timer events and asks for datagrams
//! to be sent and timers to be set). This module adapts it to the shape of
//! the other state machines here: `handle_*` inputs, `poll_*` outputs, time
//! given as input by the driver. Gossip reports liveness; it decides
//! nothing (the coordinator does, through the decision log).

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, OwnedNotification, PostcardCodec, Timer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::member::NodeId;

/// A membership timer, to hand back to [`Membership::handle_timer`] when due.
pub type MembershipTimer = Timer<PeerId>;

/// A node's identity in the gossip: its id and which run of it this is. A
/// restarted node comes back with a higher `boot`, which wins over the old
/// identity (so a node declared down can rejoin at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerId {
    /// The node.
    pub node: u64,
    /// Its run: larger for a later start.
    pub boot: u64,
    /// Where its peer endpoint listens.
    pub addr: std::net::SocketAddr,
}

impl foca::Identity for PeerId {
    type Addr = u64;

    fn renew(&self) -> Option<Self> {
        Some(PeerId {
            boot: self.boot + 1,
            ..*self
        })
    }

    fn addr(&self) -> u64 {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.boot > adversary.boot
    }
}

/// A change of membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipEvent {
    /// The node is a live member.
    MemberUp(NodeId),
    /// The node stopped answering probes (directly and through others) and
    /// was declared down.
    MemberDown(NodeId),
}

/// Why membership could not handle an input (e.g. an undecodable datagram).
#[derive(Debug, thiserror::Error)]
#[error("membership: {0}")]
pub struct MembershipError(String);

/// One node's membership state machine.
pub struct Membership {
    foca: Foca<PeerId, PostcardCodec, StdRng, foca::NoCustomBroadcast>,
    out: AccumulatingRuntime<PeerId>,
    events: Vec<MembershipEvent>,
}

impl Membership {
    /// A node `id` expecting about `cluster_size` members, with
    /// [`Membership::config`] and a seeded random source.
    pub fn new(id: PeerId, cluster_size: u32, seed: u64) -> Membership {
        let config = Membership::config(cluster_size);
        Membership {
            foca: Foca::new(id, config, StdRng::seed_from_u64(seed), PostcardCodec),
            out: AccumulatingRuntime::new(),
            events: Vec::new(),
        }
    }

    /// The settings: foca's LAN settings with a probe every 500 ms (a probe
    /// answered within 150 ms, else asked through others) and a suspect
    /// declared down after 1 s, so a dead node is declared down within
    /// about 3 s on a local network (the cluster issue's bound).
    pub fn config(cluster_size: u32) -> Config {
        let size = NonZeroU32::new(cluster_size.max(1)).unwrap_or(NonZeroU32::MIN);
        let mut config = Config::new_lan(size);
        config.probe_period = Duration::from_millis(500);
        config.probe_rtt = Duration::from_millis(150);
        config.suspect_to_down_after = Duration::from_secs(1);
        config
    }

    /// Asks `seed` to let this node in.
    pub fn join(&mut self, seed: PeerId) -> Result<(), MembershipError> {
        let r = self.foca.announce(seed, &mut self.out);
        self.collect();
        r.map_err(|e| MembershipError(e.to_string()))
    }

    /// A datagram from the peer whose certificate names node `sender`: it
    /// is refused unless its header names that node as its source (a peer
    /// speaks for itself only; what it says of others is hearsay, which
    /// SWIM weighs by itself). Garbage is refused, nothing else changes.
    pub fn handle_data_from(&mut self, data: &[u8], sender: u64) -> Result<(), MembershipError> {
        let header = foca::Codec::<PeerId>::decode_header(&mut PostcardCodec, data)
            .map_err(|e| MembershipError(format!("undecodable header: {e}")))?;
        if header.src.node != sender {
            return Err(MembershipError(format!(
                "a datagram from node {sender} claims to come from node {}",
                header.src.node
            )));
        }
        self.handle_data(data)
    }

    /// A datagram from a peer. Garbage is refused, nothing else changes.
    pub fn handle_data(&mut self, data: &[u8]) -> Result<(), MembershipError> {
        let r = self.foca.handle_data(data, &mut self.out);
        self.collect();
        r.map_err(|e| MembershipError(e.to_string()))
    }

    /// A timer set by [`Membership::poll_timer`] is due.
    pub fn handle_timer(&mut self, timer: Timer<PeerId>) -> Result<(), MembershipError> {
        let r = self.foca.handle_timer(timer, &mut self.out);
        self.collect();
        r.map_err(|e| MembershipError(e.to_string()))
    }

    /// Leaves the cluster gracefully (tells the others).
    pub fn leave(self) -> Vec<(PeerId, Vec<u8>)> {
        let Membership {
            mut foca, mut out, ..
        } = self;
        let _ = foca.leave_cluster(&mut out);
        let mut sent = Vec::new();
        while let Some((to, data)) = out.to_send() {
            sent.push((to, data.to_vec()));
        }
        sent
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Vec<u8>)> {
        self.out.to_send().map(|(to, data)| (to, data.to_vec()))
    }

    /// The next timer to set: deliver it to [`Membership::handle_timer`] after the delay.
    pub fn poll_timer(&mut self) -> Option<(Duration, Timer<PeerId>)> {
        self.out.to_schedule()
    }

    /// The next membership change.
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// The nodes this node holds as live members (itself not included).
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.foca
            .iter_members()
            .map(|m| NodeId(m.id().node))
            .collect()
    }

    /// The identities of the live members (itself not included).
    pub fn peers(&self) -> Vec<PeerId> {
        self.foca.iter_members().map(|m| *m.id()).collect()
    }

    /// This node's current identity (a renewed one after it was declared down).
    pub fn identity(&self) -> PeerId {
        *self.foca.identity()
    }

    fn collect(&mut self) {
        while let Some(n) = self.out.to_notify() {
            match n {
                OwnedNotification::MemberUp(p) => {
                    self.events.push(MembershipEvent::MemberUp(NodeId(p.node)))
                }
                OwnedNotification::MemberDown(p) => self
                    .events
                    .push(MembershipEvent::MemberDown(NodeId(p.node))),
                _ => {}
            }
        }
    }
}
