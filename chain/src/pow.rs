//! Difficulty arithmetic shared by Ethash seals, identity mining and
//! transaction proof of work: a hash meets difficulty `d` when, read as a
//! big-endian 256-bit number, it is at most 2^256 / d.

use primitive_types::U256;

use crate::crypto::Hash;

/// The largest hash value that meets `difficulty` (difficulty 0 counts as 1).
pub fn target(difficulty: u64) -> U256 {
    if difficulty <= 1 {
        return U256::MAX;
    }
    U256::MAX / U256::from(difficulty)
}

pub fn meets(hash: &Hash, difficulty: u64) -> bool {
    U256::from_big_endian(&hash.0) <= target(difficulty)
}

/// Searches nonces from `start` (at most `tries` of them) for one whose
/// `hash_of(nonce)` meets `difficulty`.
pub fn search(
    start: u64,
    tries: u64,
    difficulty: u64,
    mut hash_of: impl FnMut(u64) -> Hash,
) -> Option<u64> {
    let target = target(difficulty);
    (0..tries)
        .map(|i| start.wrapping_add(i))
        .find(|&n| U256::from_big_endian(&hash_of(n).0) <= target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difficulty_one_accepts_everything_and_high_difficulty_rejects_max() {
        assert!(meets(&Hash([0xff; 32]), 1));
        assert!(!meets(&Hash([0xff; 32]), 2));
        assert!(meets(&Hash([0; 32]), u64::MAX));
        let mut half = [0u8; 32];
        half[0] = 0x7f;
        half[1..].fill(0xff);
        assert!(meets(&Hash(half), 2));
    }
}
