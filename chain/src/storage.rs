//! Storage tasks (RFC "ZenFS": "a timeout-prunable task announcement ...
//! nodes storing such parts connect to B and begin the PPS process").
//!
//! A file's owner announces that it pays `replicas` nodes to keep a file
//! (named by its BitTorrent v1 info-hash, with its size and the SHA-256
//! Merkle root the owner checks proofs of storage against) at a price per
//! GiB-hour until `ends_at_ms`. Storage nodes with a mined node identity
//! accept it on chain, each taking one replica slot. The proofs themselves
//! and the payments per passed challenge are off chain (the file network
//! and payment channels); the chain holds only who holds which replica, so
//! that everyone agrees how many slots are free. When a replica fails its
//! challenges the owner releases it ([`StorageReplica::released_at`]), which
//! frees its slot for a replacement; a released node may not take the task
//! again.
//!
//! Like VM announcements, a storage announcement carries proof of work,
//! needs a publisher identity, has an acceptance window, and is dropped
//! from the state at its prune height.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::codec::{amount_str, encode};
use crate::crypto::{Address, FileHash, Hash, PublicKey, keccak256_concat};
use crate::error::TxError;
use crate::tx::Amount;

/// Replicas one task may ask for.
pub const MAX_REPLICAS: u16 = 16;
/// Acceptances a task may take beyond its replica count over its life
/// (replacements of released replicas): the record in the state stays
/// bounded however often an owner releases.
pub const MAX_REPLACEMENTS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct StorageAnnouncement {
    /// The file's id: its BitTorrent v1 info-hash.
    pub file: FileHash,
    /// Bytes of the file's content (what the Merkle tree covers).
    pub size: u64,
    /// Root of the SHA-256 Merkle tree over the content's 16 KiB leaves
    /// (BEP 52's layout); challenges are answered with proofs against it.
    pub merkle_root: Hash,
    /// Replicas wanted at once.
    pub replicas: u16,
    #[serde(with = "amount_str")]
    pub price_per_gib_hour: Amount,
    /// When the contract ends (Unix milliseconds).
    pub ends_at_ms: u64,
    /// Mean time between the owner's challenges to each replica.
    pub challenge_secs: u32,
    /// Blocks after the announcement during which replicas (and
    /// replacements) may accept.
    pub acceptance_window: u64,
    /// Difficulty a `StorageAcceptance` must meet.
    pub acceptance_difficulty: u64,
    /// Height after which nodes may drop the announcement.
    pub prune_height: u64,
    pub pow_nonce: u64,
}

impl StorageAnnouncement {
    /// The proof-of-work hash binds the announcement to its sender.
    pub fn pow_hash(&self, sender: &Address) -> Hash {
        keccak256_concat(&[b"zennet:announce-storage", &sender.0, &encode(self)])
    }

    /// Field rules that need no state.
    pub fn check_fields(&self) -> Result<(), TxError> {
        let bad = |m: &str| Err(TxError::BadStorage(m.to_string()));
        if self.size == 0 {
            return bad("size is 0: an empty file needs no storage");
        }
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return bad(&format!("replicas must be 1 to {MAX_REPLICAS}"));
        }
        if self.challenge_secs == 0 {
            return bad("challenge_secs must be at least 1");
        }
        if self.ends_at_ms == 0 {
            return bad("ends_at_ms must be set");
        }
        if self.acceptance_window == 0 {
            return bad("acceptance_window must be at least 1 block");
        }
        if self.acceptance_difficulty == 0 {
            return bad("acceptance_difficulty must be at least 1");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct StorageAcceptance {
    /// The announcement's transaction hash.
    pub task: Hash,
    pub pow_nonce: u64,
}

impl StorageAcceptance {
    pub fn pow_hash(&self, sender: &Address) -> Hash {
        keccak256_concat(&[b"zennet:accept-storage", &sender.0, &encode(self)])
    }
}

/// A storage task as the state keeps it until its prune height.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct StorageRecord {
    pub id: Hash,
    pub owner: Address,
    pub announcement: StorageAnnouncement,
    pub announced_at: u64,
    pub cancelled_at: Option<u64>,
    /// Every acceptance, released ones included, in the order mined.
    pub replicas: Vec<StorageReplica>,
}

impl StorageRecord {
    /// Last height at which an acceptance is still valid.
    pub fn accept_until(&self) -> u64 {
        self.announced_at
            .saturating_add(self.announcement.acceptance_window)
    }

    /// Replicas not released.
    pub fn active(&self) -> impl Iterator<Item = &StorageReplica> {
        self.replicas.iter().filter(|r| r.released_at.is_none())
    }

    /// `node`'s acceptance, released or not.
    pub fn replica(&self, node: &Address) -> Option<&StorageReplica> {
        self.replicas.iter().find(|r| r.node == *node)
    }

    /// Whether `node` holds a replica now.
    pub fn holds(&self, node: &Address) -> bool {
        self.replica(node).is_some_and(|r| r.released_at.is_none())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct StorageReplica {
    pub node: Address,
    /// The node identity's key (from its registration): the owner reaches
    /// the replica's libp2p peer, whose id is derived from this key.
    pub public_key: PublicKey,
    /// The acceptance's transaction hash.
    pub tx: Hash,
    pub accepted_at: u64,
    /// Height of the owner's `ReleaseStorage`, if released.
    pub released_at: Option<u64>,
}
