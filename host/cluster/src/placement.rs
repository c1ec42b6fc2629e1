//! Which shards to give to whom. Unowned shards go to the members with the
//! fewest shards; shards of a leaving member move away; otherwise shards
//! move from the most to the least loaded member until they differ by at
//! most one. Moves (as opposed to first allocations) are bounded per round
//! and never planned while a member is unreachable: a member that cannot be
//! heard may still be serving, and its shards' history lives on its disk.
//! Shards of a down member stay its own (no replicas yet to promote).

use std::collections::{BTreeMap, BTreeSet};

use crate::member::{Member, MemberState, NodeId};
use crate::shard::ShardId;
use crate::table::ShardTable;

/// One planned change of owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    /// The shard.
    pub shard: ShardId,
    /// Its owner now (`None`: never allocated).
    pub from: Option<NodeId>,
    /// Its owner after the move.
    pub to: NodeId,
}

/// Plans the next round of moves. `busy` shards (a handoff in progress)
/// are left alone; at most `max_moves` shards change owner, not counting
/// first allocations.
pub fn plan(
    table: &ShardTable,
    members: &[Member],
    busy: &BTreeSet<ShardId>,
    max_moves: usize,
) -> Vec<Move> {
    let mut load: BTreeMap<NodeId, usize> = members
        .iter()
        .filter(|m| m.can_own())
        .map(|m| (m.id, 0))
        .collect();
    if load.is_empty() {
        return Vec::new();
    }
    for (_, a) in table.iter() {
        if let Some(a) = a
            && let Some(n) = load.get_mut(&a.owner)
        {
            *n += 1;
        }
    }
    let least = |load: &BTreeMap<NodeId, usize>| {
        load.iter()
            .min_by_key(|(id, n)| (**n, **id))
            .map(|(id, _)| *id)
    };
    let mut moves = Vec::new();
    for (shard, a) in table.iter() {
        if a.is_none()
            && let Some(to) = least(&load)
        {
            moves.push(Move {
                shard,
                from: None,
                to,
            });
            *load.entry(to).or_default() += 1;
        }
    }
    if members.iter().any(Member::is_unreachable_member) {
        return moves;
    }
    let state: BTreeMap<NodeId, MemberState> = members.iter().map(|m| (m.id, m.state)).collect();
    let mut budget = max_moves;
    let mut moved: BTreeSet<ShardId> = BTreeSet::new();
    // Shards of leaving members go first.
    for (shard, a) in table.iter() {
        if budget == 0 {
            break;
        }
        let Some(a) = a else { continue };
        let leaving = matches!(
            state.get(&a.owner),
            Some(MemberState::Leaving | MemberState::Exiting)
        );
        if leaving
            && !busy.contains(&shard)
            && let Some(to) = least(&load)
        {
            moves.push(Move {
                shard,
                from: Some(a.owner),
                to,
            });
            *load.entry(to).or_default() += 1;
            moved.insert(shard);
            budget -= 1;
        }
    }
    // Then even out the owners.
    while budget > 0 {
        let (Some((&most, &hi)), Some(to)) = (
            load.iter()
                .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id))),
            least(&load),
        ) else {
            break;
        };
        if hi <= load[&to] + 1 {
            break;
        }
        let Some(shard) = table
            .iter()
            .find(|(s, a)| {
                a.is_some_and(|a| a.owner == most) && !busy.contains(s) && !moved.contains(s)
            })
            .map(|(s, _)| s)
        else {
            break;
        };
        moves.push(Move {
            shard,
            from: Some(most),
            to,
        });
        *load.entry(most).or_default() -= 1;
        *load.entry(to).or_default() += 1;
        moved.insert(shard);
        budget -= 1;
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Decision;

    fn owned(t: &ShardTable, n: u64) -> usize {
        t.owned_by(NodeId(n))
    }

    fn apply(t: &mut ShardTable, moves: &[Move]) {
        for m in moves {
            let epoch = t.epoch() + 1;
            t.apply(Decision::Assign {
                shard: m.shard,
                owner: m.to,
                epoch,
                replicas: crate::table::Replicas::default(),
            })
            .unwrap();
        }
    }

    #[test]
    fn first_allocation_is_even_and_a_new_member_gets_a_bounded_share() {
        let mut t = ShardTable::new(256);
        let mut members = vec![
            Member::up(NodeId(1)),
            Member::up(NodeId(2)),
            Member::up(NodeId(3)),
        ];
        let m = plan(&t, &members, &BTreeSet::new(), 8);
        assert_eq!(m.len(), 256);
        apply(&mut t, &m);
        assert_eq!((owned(&t, 1), owned(&t, 2), owned(&t, 3)), (86, 85, 85));
        members.push(Member::up(NodeId(4)));
        let m = plan(&t, &members, &BTreeSet::new(), 8);
        assert_eq!(m.len(), 8, "moves are bounded");
        assert!(m.iter().all(|m| m.to == NodeId(4) && m.from.is_some()));
        apply(&mut t, &m);
        while !plan(&t, &members, &BTreeSet::new(), 8).is_empty() {
            let m = plan(&t, &members, &BTreeSet::new(), 8);
            apply(&mut t, &m);
        }
        let counts: Vec<usize> = (1..=4).map(|n| owned(&t, n)).collect();
        assert_eq!(counts, [64, 64, 64, 64]);
    }

    #[test]
    fn nothing_moves_while_a_member_is_unreachable_and_down_members_keep_their_shards() {
        let mut t = ShardTable::new(16);
        let members = [Member::up(NodeId(1)), Member::up(NodeId(2))];
        let m = plan(&t, &members, &BTreeSet::new(), 16);
        apply(&mut t, &m);
        let unreachable = [
            Member::up(NodeId(1)),
            Member {
                reachable: false,
                ..Member::up(NodeId(2))
            },
            Member::up(NodeId(3)),
        ];
        assert!(plan(&t, &unreachable, &BTreeSet::new(), 16).is_empty());
        let down = [
            Member::up(NodeId(1)),
            Member {
                state: MemberState::Down,
                reachable: false,
                ..Member::up(NodeId(2))
            },
        ];
        assert!(plan(&t, &down, &BTreeSet::new(), 16).is_empty());
    }

    #[test]
    fn a_leaving_member_hands_off_only_its_own_shards() {
        let mut t = ShardTable::new(12);
        let mut members = vec![
            Member::up(NodeId(1)),
            Member::up(NodeId(2)),
            Member::up(NodeId(3)),
        ];
        let m = plan(&t, &members, &BTreeSet::new(), 12);
        apply(&mut t, &m);
        members[2].state = MemberState::Leaving;
        let m = plan(&t, &members, &BTreeSet::new(), 12);
        assert_eq!(m.len(), 4);
        assert!(
            m.iter()
                .all(|m| m.from == Some(NodeId(3)) && m.to != NodeId(3))
        );
    }
}
