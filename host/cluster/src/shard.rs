//! Entity id → shard: FNV-1a (64 bit) over the entity type, a 0xff
//! separator (a byte no UTF-8 string holds) and the id, modulo the type's
//! shard count. The function is frozen: changing it would move every entity
//! of every running cluster, so test vectors pin it.

/// A shard of an entity type, `0..shard_count`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ShardId(pub u32);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

/// Default number of shards per entity type.
pub const DEFAULT_SHARDS: u32 = 256;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// A stable 64-bit hash of an entity's key (FNV-1a of type, 0xff, id):
/// the same on every build and machine, so it may be stored.
pub fn key_hash(entity_type: &str, entity_id: &str) -> u64 {
    let h = fnv1a(FNV_OFFSET, entity_type.as_bytes());
    let h = fnv1a(h, &[0xff]);
    fnv1a(h, entity_id.as_bytes())
}

/// The shard of an entity; `shard_count` 0 counts as 1.
pub fn shard_of(entity_type: &str, entity_id: &str, shard_count: u32) -> ShardId {
    let h = key_hash(entity_type, entity_id);
    ShardId((h % u64::from(shard_count.max(1))) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frozen: these must never change.
    #[test]
    fn the_hash_is_stable() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        let v: Vec<u32> = ["alice", "bob", "acct-1", ""]
            .iter()
            .map(|id| shard_of("bank-account", id, DEFAULT_SHARDS).0)
            .collect();
        assert_eq!(v, FROZEN);
    }

    const FROZEN: [u32; 4] = [234, 21, 143, 42];

    #[test]
    fn ids_spread_over_the_shards() {
        let mut counts = vec![0u32; DEFAULT_SHARDS as usize];
        for i in 0..100_000 {
            counts[shard_of("t", &format!("e-{i}"), DEFAULT_SHARDS).0 as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        // 390 expected per shard; a fair hash stays well within ±30%.
        assert!(*min > 270 && *max < 510, "min {min}, max {max}");
        assert_eq!(shard_of("t", "x", 0), ShardId(0));
    }
}
