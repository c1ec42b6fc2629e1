//! The membership view: who is in the cluster, in which state, and whether
//! the failure detector can reach them. Gossip produces it; it decides
//! nothing by itself (the coordinator does, through the decision log).

/// A node of the cluster.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// Where a member is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum MemberState {
    /// Announced itself; owns nothing yet.
    Joining,
    /// Serving; may be given shards.
    Up,
    /// Leaving gracefully: its shards hand off, it gets no new ones.
    Leaving,
    /// Its shards are gone; it is about to stop.
    Exiting,
    /// Declared dead (failure detector); its shards stay its own until it
    /// comes back, as their history is on its disk only (no replicas yet).
    Down,
    /// Gone for good.
    Removed,
}

/// One member as the coordinator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node.
    pub id: NodeId,
    /// Its state.
    pub state: MemberState,
    /// Whether the failure detector hears from it.
    pub reachable: bool,
}

impl Member {
    /// An up, reachable member.
    pub fn up(id: NodeId) -> Member {
        Member {
            id,
            state: MemberState::Up,
            reachable: true,
        }
    }

    /// May it be given shards?
    pub fn can_own(&self) -> bool {
        self.state == MemberState::Up && self.reachable
    }

    /// Does it count for the "no rebalance while a member is unreachable" rule
    /// (a member that is down or removed no longer does)?
    pub fn is_unreachable_member(&self) -> bool {
        !self.reachable
            && matches!(
                self.state,
                MemberState::Joining
                    | MemberState::Up
                    | MemberState::Leaving
                    | MemberState::Exiting
            )
    }
}
