//! Blocks, headers and the Merkle roots they commit to.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, hex_bytes};
use crate::crypto::{Address, Hash, keccak256, keccak256_concat};
use crate::error::ChainError;
use crate::tx::SignedTx;

pub const MAX_EXTRA_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Header {
    pub parent: Hash,
    pub height: u64,
    pub timestamp_ms: u64,
    pub tx_root: Hash,
    pub state_root: Hash,
    pub difficulty: u64,
    pub miner: Address,
    #[serde(with = "hex_bytes")]
    pub extra: Vec<u8>,
    pub mix_digest: Hash,
    pub nonce: u64,
}

/// The header without its seal: what Ethash is computed over.
#[derive(BorshSerialize)]
struct Unsealed<'a> {
    parent: &'a Hash,
    height: u64,
    timestamp_ms: u64,
    tx_root: &'a Hash,
    state_root: &'a Hash,
    difficulty: u64,
    miner: &'a Address,
    extra: &'a Vec<u8>,
}

impl Header {
    pub fn hash(&self) -> Hash {
        keccak256(&encode(self))
    }

    pub fn seal_hash(&self) -> Hash {
        keccak256(&encode(&Unsealed {
            parent: &self.parent,
            height: self.height,
            timestamp_ms: self.timestamp_ms,
            tx_root: &self.tx_root,
            state_root: &self.state_root,
            difficulty: self.difficulty,
            miner: &self.miner,
            extra: &self.extra,
        }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Block {
    pub header: Header,
    pub txs: Vec<SignedTx>,
}

impl Block {
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Block, ChainError> {
        decode(bytes, max_len, "block")
    }

    pub fn computed_tx_root(&self) -> Hash {
        let hashes: Vec<Hash> = self.txs.iter().map(SignedTx::hash).collect();
        tx_root(&hashes)
    }
}

/// A block as a node stores it: announcements past their prune height are
/// reduced to their hash, which still lets the header's transaction root be
/// checked. This is also what sync serves, so a node can join a chain whose
/// old announcements are pruned everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct StoredBlock {
    pub header: Header,
    pub txs: Vec<StoredTx>,
    /// Only the header is known: the block lies at or below the snapshot
    /// this node's state was installed from (`txs` is then empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub header_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StoredTx {
    Full { hash: Hash, tx: Box<SignedTx> },
    Pruned { hash: Hash },
}

impl StoredTx {
    pub fn hash(&self) -> Hash {
        match self {
            StoredTx::Full { hash, .. } | StoredTx::Pruned { hash } => *hash,
        }
    }
}

impl StoredBlock {
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<StoredBlock, ChainError> {
        decode(bytes, max_len, "stored block")
    }

    /// Whether some transaction body is gone (pruned or never known).
    pub fn is_partial(&self) -> bool {
        self.header_only
            || self
                .txs
                .iter()
                .any(|t| matches!(t, StoredTx::Pruned { .. }))
    }

    /// The stateless checks a partial block still allows: every full
    /// transaction hashes to its slot and the slots give the tx root.
    pub fn check_tx_root(&self) -> bool {
        !self.header_only
            && self.txs.iter().all(|t| match t {
                StoredTx::Full { hash, tx } => tx.hash() == *hash,
                StoredTx::Pruned { .. } => true,
            })
            && self.computed_tx_root() == self.header.tx_root
    }

    pub fn computed_tx_root(&self) -> Hash {
        let hashes: Vec<Hash> = self.txs.iter().map(StoredTx::hash).collect();
        tx_root(&hashes)
    }

    /// The full block, if nothing in it was pruned.
    pub fn into_block(self) -> Option<Block> {
        if self.header_only {
            return None;
        }
        let txs = self
            .txs
            .into_iter()
            .map(|t| match t {
                StoredTx::Full { tx, .. } => Some(*tx),
                StoredTx::Pruned { .. } => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Block {
            header: self.header,
            txs,
        })
    }
}

/// Merkle root of transaction hashes.
pub fn tx_root(hashes: &[Hash]) -> Hash {
    merkle_root(
        hashes
            .iter()
            .map(|h| keccak256_concat(&[&[0u8], &h.0]))
            .collect(),
    )
}

/// Binary Merkle root over already-hashed leaves. Inner nodes are tagged
/// differently from leaves (second-preimage safety); an odd node is carried up.
pub fn merkle_root(mut level: Vec<Hash>) -> Hash {
    if level.is_empty() {
        return keccak256(b"");
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [a, b] => keccak256_concat(&[&[1u8], &a.0, &b.0]),
                [a] => *a,
                _ => unreachable!("chunks(2)"),
            })
            .collect();
    }
    level[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merkle_root_depends_on_order_and_content() {
        let a = keccak256(b"a");
        let b = keccak256(b"b");
        let c = keccak256(b"c");
        assert_ne!(tx_root(&[a, b]), tx_root(&[b, a]));
        assert_ne!(tx_root(&[a, b]), tx_root(&[a, b, c]));
        assert_ne!(tx_root(&[a]), tx_root(&[]));
        assert_eq!(tx_root(&[a, b, c]), tx_root(&[a, b, c]));
    }

    #[test]
    fn seal_hash_ignores_the_seal_only() {
        let mut h = Header {
            parent: Hash::ZERO,
            height: 1,
            timestamp_ms: 5,
            tx_root: Hash::ZERO,
            state_root: Hash::ZERO,
            difficulty: 10,
            miner: Address::ZERO,
            extra: vec![],
            mix_digest: Hash::ZERO,
            nonce: 0,
        };
        let s = h.seal_hash();
        let full = h.hash();
        h.nonce = 9;
        h.mix_digest = Hash([1; 32]);
        assert_eq!(h.seal_hash(), s);
        assert_ne!(h.hash(), full);
        h.timestamp_ms = 6;
        assert_ne!(h.seal_hash(), s);
    }
}
