//! The replicated state machine's data: the commands committed through the
//! log and the cluster state they build. Application is a pure function of
//! the state and the command, so every node that applies the same log
//! reaches the same state.

use std::collections::BTreeMap;

use cairn_cluster::{Decision, MemberState, ShardTable};
use serde::{Deserialize, Serialize};

/// A change committed through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// First entry: fixes the shard count of the cluster's table. Ignored
    /// once a table exists.
    Init {
        /// Number of shards of the table.
        shards: u32,
    },
    /// A batch of the coordinator's decisions, applied in order; a decision
    /// whose epoch is not above the table's is skipped (recorded as refused
    /// in the response), so application is deterministic.
    Decide(Vec<Decision>),
    /// A member's lifecycle state (Joining/Up/Leaving/Exiting/Down/Removed)
    /// and its address.
    Member {
        /// The node.
        node: u64,
        /// Where it is reachable.
        addr: String,
        /// Its state.
        state: MemberState,
    },
    /// A deploy committed cluster-wide (the component is fetched by hash).
    Deploy(DeployEntry),
    /// A node reports it runs `deploy` of `entity_type` (for "where is each
    /// version active").
    Activated {
        /// The node.
        node: u64,
        /// The entity type.
        entity_type: String,
        /// The deploy number it runs (numbers are per node).
        deploy: u32,
        /// The sha256 of the component it runs.
        sha256: String,
    },
    /// The owners of these shards hold their whole history (after a first
    /// allocation, a handoff or a failover), as (shard, allocation epoch):
    /// only such a shard may fail over from its owner.
    Ready(Vec<(u32, u64)>),
    /// The owner of `shard` under the allocation of `epoch` gave these
    /// members the shard's whole history: they are its replica set from
    /// now on. Skipped (`ignored`) if the shard has moved or its set has
    /// changed since (`changes`), or if a member named is not `up`.
    Replicas {
        /// The shard.
        shard: u32,
        /// The allocation epoch the owner made the change under.
        epoch: u64,
        /// The allocation's count of changes the owner started from.
        changes: u32,
        /// The new replica set.
        replicas: cairn_cluster::Replicas,
    },
    /// The table's epoch rises to `epoch` (if below) without moving any
    /// shard: a decision of that epoch or below not applied yet never
    /// applies. Committed for a move whose commit failed (its batch may
    /// still be in the log), so that its old owner serves its shards again
    /// only once the move's fate is decided (`Router::settle`).
    Settle {
        /// The epoch of the undecided move.
        epoch: u64,
    },
}

/// A deploy committed cluster-wide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployEntry {
    /// The entity type deployed.
    pub entity_type: String,
    /// Its deploy number (per entity type).
    pub deploy: u32,
    /// SHA-256 (hex) of the component, by which nodes fetch it.
    pub sha256: String,
    /// The behavior version the component declares.
    pub behavior_version: String,
    /// Whether this deploy is a rollback to an earlier component.
    pub rollback: bool,
}

/// A member as the log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Where it is reachable.
    pub addr: String,
    /// Its lifecycle state.
    pub state: MemberState,
}

/// The state machine: what every node applies, in log order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The shard table; `None` before `Init`.
    pub table: Option<ShardTable>,
    /// Members by node id (a removed member stays, in state `Removed`).
    pub members: BTreeMap<u64, MemberRecord>,
    /// Deploys in commit order.
    pub deploys: Vec<DeployEntry>,
    /// `(entity_type, node)` → the deploy running there: its number on
    /// that node and the component's sha256.
    pub active: BTreeMap<(String, u64), (u32, String)>,
    /// Shard → the newest allocation epoch whose owner reported it holds
    /// the shard's whole history.
    pub ready: BTreeMap<u32, u64>,
    /// Shard → the allocation its current one replaced: where its new
    /// owner reads the history from (the old owner, or on failover the
    /// old owner's committed replica set), even if that node never saw
    /// the old allocation applied (it was behind the log).
    pub previous: BTreeMap<u32, cairn_cluster::Allocation>,
    /// Log index of the last applied entry (0 = none; index 0 itself is
    /// openraft's initial membership entry, which carries no command).
    pub last_applied: u64,
}

/// What applying one log entry did; the response of [`crate::DecisionLog::propose_outcome`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The entry's log index.
    pub index: u64,
    /// Decisions of a `Decide` that were skipped (stale epoch, no such
    /// shard, or no table yet), in order.
    pub refused: Vec<Decision>,
    /// The command changed nothing (`Init` on an existing table, a deploy
    /// already recorded).
    pub ignored: bool,
}

/// Why a member's proposal is refused by [`ClusterState::may_propose`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposalRefused {
    /// The command (`Init`, the coordinator's decisions) is only ever
    /// proposed by the leader itself.
    #[error("only the decision log's leader commits this command")]
    LeaderOnly,
    /// The command speaks for another member than its sender.
    #[error("node {sender} cannot speak for node {named}")]
    NotItself {
        /// The member that sent the proposal (by its certificate).
        sender: u64,
        /// The member the command names.
        named: u64,
    },
    /// A member may only mark itself leaving or removed.
    #[error("a member cannot propose the state {0:?} for itself")]
    State(MemberState),
    /// The command is about a shard allocation the sender does not own.
    #[error("node {sender} does not own shard {shard} under epoch {epoch}")]
    NotOwner {
        /// The sender.
        sender: u64,
        /// The shard.
        shard: u32,
        /// The epoch claimed.
        epoch: u64,
    },
}

impl ClusterState {
    /// Whether the leader commits `cmd` proposed by member `sender` (the
    /// node id of the sender's certificate): a member speaks for itself
    /// only. It may deploy, report what it runs, mark itself leaving or
    /// removed, and report readiness or a replica-set change of a shard
    /// it owns under the epoch named (a report for an allocation already
    /// replaced is left to [`ClusterState::apply`], which ignores it; one
    /// for an epoch not committed yet is refused). The coordinator's
    /// decisions, `Init` and every other member state are the leader's own.
    pub fn may_propose(&self, sender: u64, cmd: &Command) -> Result<(), ProposalRefused> {
        let owns = |shard: u32, epoch: u64| {
            let current = self
                .table
                .as_ref()
                .and_then(|t| t.get(cairn_cluster::ShardId(shard)));
            match current {
                Some(a) if a.epoch < epoch => false,
                Some(a) if a.epoch == epoch => a.owner.0 == sender,
                Some(_) => true,
                None => false,
            }
        };
        let not_owner = |shard, epoch| ProposalRefused::NotOwner {
            sender,
            shard,
            epoch,
        };
        match cmd {
            Command::Init { .. } | Command::Decide(_) => Err(ProposalRefused::LeaderOnly),
            // Any member: a settle only decides that a pending move can no
            // longer commit (an old owner's overdue release).
            Command::Deploy(_) | Command::Settle { .. } => Ok(()),
            Command::Member { node, state, .. } => {
                if *node != sender {
                    Err(ProposalRefused::NotItself {
                        sender,
                        named: *node,
                    })
                } else if matches!(state, MemberState::Leaving | MemberState::Removed) {
                    Ok(())
                } else {
                    Err(ProposalRefused::State(*state))
                }
            }
            Command::Activated { node, .. } if *node != sender => Err(ProposalRefused::NotItself {
                sender,
                named: *node,
            }),
            Command::Activated { .. } => Ok(()),
            Command::Ready(shards) => match shards.iter().find(|(s, e)| !owns(*s, *e)) {
                Some((s, e)) => Err(not_owner(*s, *e)),
                None => Ok(()),
            },
            Command::Replicas { shard, epoch, .. } if !owns(*shard, *epoch) => {
                Err(not_owner(*shard, *epoch))
            }
            Command::Replicas { .. } => Ok(()),
        }
    }

    /// Applies `cmd`, committed at log index `index`. Deterministic: the
    /// same state and command give the same result on every node.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Outcome {
        let mut out = Outcome {
            index,
            ..Outcome::default()
        };
        match cmd {
            Command::Init { shards } => {
                if self.table.is_some() {
                    out.ignored = true;
                } else {
                    self.table = Some(ShardTable::new(*shards));
                }
            }
            Command::Decide(decisions) => {
                for d in decisions {
                    let shard = match *d {
                        cairn_cluster::Decision::Assign { shard, .. } => Some(shard),
                        _ => None,
                    };
                    let ok = match self.table.as_mut() {
                        Some(t) => {
                            let was = shard.and_then(|s| t.get(s));
                            let ok = t.apply(*d).is_ok();
                            if ok && let (Some(s), Some(was)) = (shard, was) {
                                self.previous.insert(s.0, was);
                            }
                            ok
                        }
                        None => false,
                    };
                    if !ok {
                        out.refused.push(*d);
                    }
                }
            }
            Command::Member { node, addr, state } => {
                self.members.insert(
                    *node,
                    MemberRecord {
                        addr: addr.clone(),
                        state: *state,
                    },
                );
            }
            Command::Deploy(d) => {
                // The same deploy committed twice in a row (a retried
                // proposal) changes nothing; a rollback to an earlier
                // component is a new entry.
                if self.latest_deploy(&d.entity_type) == Some(d) {
                    out.ignored = true;
                } else {
                    self.deploys.push(d.clone());
                }
            }
            Command::Activated {
                node,
                entity_type,
                deploy,
                sha256,
            } => {
                self.active
                    .insert((entity_type.clone(), *node), (*deploy, sha256.clone()));
            }
            Command::Settle { epoch } => {
                out.ignored = !self.table.as_mut().is_some_and(|t| t.raise_epoch(*epoch));
            }
            Command::Ready(shards) => {
                for (shard, epoch) in shards {
                    let e = self.ready.entry(*shard).or_default();
                    *e = (*e).max(*epoch);
                }
            }
            Command::Replicas {
                shard,
                epoch,
                changes,
                replicas,
            } => {
                // A member that is leaving (or gone) never joins a set: it
                // may exit as soon as no set names it.
                let up = replicas.as_slice().iter().all(|n| {
                    self.members
                        .get(&n.0)
                        .is_some_and(|r| r.state == cairn_cluster::MemberState::Up)
                });
                let applied = match self.table.as_mut() {
                    Some(t) if up => t
                        .change_replicas(
                            cairn_cluster::ShardId(*shard),
                            *epoch,
                            *changes,
                            *replicas,
                        )
                        .is_ok(),
                    _ => false,
                };
                out.ignored = !applied;
            }
        }
        self.last_applied = index;
        out
    }

    /// Shards `node` owns whose current allocation it has not reported
    /// ready (section 9.5 of docs/ARCHITECTURE.md: no failover of them
    /// until it does).
    pub fn unready(&self, node: u64) -> usize {
        let Some(t) = &self.table else { return 0 };
        let me = cairn_cluster::NodeId(node);
        t.iter()
            .filter(|(shard, a)| {
                a.as_ref().is_some_and(|a| {
                    a.owner == me && self.ready.get(&shard.0).is_none_or(|e| *e < a.epoch)
                })
            })
            .count()
    }

    /// Shards for which `node` holds data the cluster still needs: it owns
    /// them or is in their committed replica set, or it owned or
    /// replicated the allocation a shard's current one replaced and the
    /// new owner has not reported the shard ready (it may still read the
    /// history from there). A member leaving for good waits until none.
    pub fn holds_data(&self, node: u64) -> usize {
        let Some(t) = &self.table else { return 0 };
        let me = cairn_cluster::NodeId(node);
        t.iter()
            .filter(|(shard, a)| {
                let Some(a) = a else { return false };
                let names =
                    |a: &cairn_cluster::Allocation| a.owner == me || a.replicas.contains(me);
                let ready = self.ready.get(&shard.0).is_some_and(|e| *e >= a.epoch);
                names(a) || (!ready && self.previous.get(&shard.0).is_some_and(names))
            })
            .count()
    }

    /// The newest deploy of `entity_type`, if any.
    pub fn latest_deploy(&self, entity_type: &str) -> Option<&DeployEntry> {
        self.deploys
            .iter()
            .rev()
            .find(|d| d.entity_type == entity_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_cluster::{NodeId, ShardId};

    fn assign(shard: u32, owner: u64, epoch: u64) -> Decision {
        Decision::Assign {
            shard: ShardId(shard),
            owner: NodeId(owner),
            epoch,
            replicas: cairn_cluster::Replicas::new([NodeId(owner + 1)]),
        }
    }

    #[test]
    fn application_is_deterministic_and_skips_stale_decisions() {
        let mut s = ClusterState::default();
        let early = s.apply(1, &Command::Decide(vec![assign(0, 1, 1)]));
        assert_eq!(early.refused, vec![assign(0, 1, 1)]);
        assert!(!s.apply(2, &Command::Init { shards: 4 }).ignored);
        assert!(s.apply(3, &Command::Init { shards: 8 }).ignored);
        let out = s.apply(
            4,
            &Command::Decide(vec![assign(0, 1, 1), assign(1, 2, 2), assign(2, 2, 2)]),
        );
        assert_eq!(out.refused, vec![assign(2, 2, 2)]);
        let table = s.table.as_ref().unwrap();
        assert_eq!(table.len(), 4);
        assert_eq!(table.epoch(), 2);
        // A replica change under the shard's allocation applies; one made
        // under an older one is skipped.
        let set = cairn_cluster::Replicas::new([NodeId(3)]);
        let change = |epoch| Command::Replicas {
            shard: 1,
            epoch,
            changes: 0,
            replicas: set,
        };
        assert!(s.apply(4, &change(1)).ignored);
        assert!(s.apply(4, &change(2)).ignored, "node 3 is not a member");
        s.apply(
            4,
            &Command::Member {
                node: 3,
                addr: "a".into(),
                state: cairn_cluster::MemberState::Up,
            },
        );
        assert!(!s.apply(4, &change(2)).ignored);
        assert!(s.apply(4, &change(2)).ignored, "a second time: superseded");
        let table = s.table.as_ref().unwrap();
        assert_eq!(table.get(ShardId(1)).map(|a| a.replicas), Some(set));
        let d = DeployEntry {
            entity_type: "t".into(),
            deploy: 1,
            sha256: "ab".into(),
            behavior_version: "1".into(),
            rollback: false,
        };
        assert!(!s.apply(5, &Command::Deploy(d.clone())).ignored);
        assert!(s.apply(6, &Command::Deploy(d.clone())).ignored);
        s.apply(
            7,
            &Command::Activated {
                node: 2,
                entity_type: "t".into(),
                deploy: 1,
                sha256: "ab".into(),
            },
        );
        assert_eq!(
            s.active.get(&("t".to_string(), 2)),
            Some(&(1, "ab".to_string()))
        );
        assert_eq!(s.latest_deploy("t"), Some(&d));
        assert_eq!(s.last_applied, 7);
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<ClusterState>(&bytes).unwrap(), s);
    }

    #[test]
    fn a_member_proposes_for_itself_only() {
        let mut s = ClusterState::default();
        s.apply(1, &Command::Init { shards: 4 });
        s.apply(2, &Command::Decide(vec![assign(1, 2, 5)]));
        let member = |node, state| Command::Member {
            node,
            addr: "a".into(),
            state,
        };
        assert_eq!(s.may_propose(2, &member(2, MemberState::Leaving)), Ok(()));
        assert_eq!(s.may_propose(2, &member(2, MemberState::Removed)), Ok(()));
        assert_eq!(
            s.may_propose(2, &member(3, MemberState::Removed)),
            Err(ProposalRefused::NotItself {
                sender: 2,
                named: 3
            })
        );
        assert_eq!(
            s.may_propose(2, &member(2, MemberState::Up)),
            Err(ProposalRefused::State(MemberState::Up))
        );
        assert!(s.may_propose(2, &Command::Init { shards: 4 }).is_err());
        assert!(
            s.may_propose(2, &Command::Decide(vec![assign(1, 2, 6)]))
                .is_err()
        );
        let activated = |node| Command::Activated {
            node,
            entity_type: "t".into(),
            deploy: 1,
            sha256: "ab".into(),
        };
        assert_eq!(s.may_propose(3, &activated(3)), Ok(()));
        assert!(s.may_propose(3, &activated(2)).is_err());
        // Readiness of shard 1: its owner under epoch 5 only; an older
        // epoch is harmless (apply keeps the newest), a newer one refused.
        assert_eq!(s.may_propose(2, &Command::Ready(vec![(1, 5)])), Ok(()));
        assert_eq!(
            s.may_propose(3, &Command::Ready(vec![(1, 5)])),
            Err(ProposalRefused::NotOwner {
                sender: 3,
                shard: 1,
                epoch: 5
            })
        );
        assert_eq!(s.may_propose(3, &Command::Ready(vec![(1, 4)])), Ok(()));
        assert!(s.may_propose(2, &Command::Ready(vec![(1, 6)])).is_err());
        assert!(
            s.may_propose(2, &Command::Ready(vec![(0, 1)])).is_err(),
            "unallocated"
        );
        let replicas = |epoch| Command::Replicas {
            shard: 1,
            epoch,
            changes: 0,
            replicas: cairn_cluster::Replicas::new([NodeId(3)]),
        };
        assert_eq!(s.may_propose(2, &replicas(5)), Ok(()));
        assert!(s.may_propose(3, &replicas(5)).is_err());
        // Any member may have a move settled: the table's epoch rises, a
        // decision of that epoch committed later is refused, nothing moves.
        assert_eq!(s.may_propose(3, &Command::Settle { epoch: 7 }), Ok(()));
        assert!(!s.apply(8, &Command::Settle { epoch: 7 }).ignored);
        assert!(s.apply(9, &Command::Settle { epoch: 6 }).ignored);
        let late = s.apply(10, &Command::Decide(vec![assign(1, 3, 7)]));
        assert_eq!(late.refused, vec![assign(1, 3, 7)]);
        let t = s.table.as_ref().unwrap();
        assert_eq!(
            (t.epoch(), t.get(ShardId(1)).map(|a| a.owner)),
            (7, Some(NodeId(2)))
        );
        assert!(
            s.apply(11, &Command::Decide(vec![assign(1, 3, 8)]))
                .refused
                .is_empty()
        );
    }
}
