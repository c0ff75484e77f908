//! The chain sync request-response protocol. Payloads (headers, blocks,
//! hashes, snapshot manifests and chunks) are borsh bytes carried as CBOR
//! byte strings (`serde_bytes`), not as arrays of integers, which keeps them
//! compact and fast to decode.
//!
//! Blocks are served as the node stores them (`StoredBlock`): a block whose
//! old announcements are pruned still travels as its header, its
//! transaction hashes and the bodies that remain, so a joining node can
//! check what is left and take the state from a snapshot instead.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use zennet_chain::Hash;

pub const SYNC_PROTOCOL: &str = "/zennet/sync/1";

/// Most headers one response carries.
pub const MAX_HEADERS: u32 = 512;
/// Most blocks one request may ask for.
pub const MAX_BLOCKS: usize = 64;
/// Upper bound on a response: `MAX_BLOCKS` full blocks.
pub const MAX_RESPONSE_BYTES: u64 = 80 << 20;
pub const MAX_REQUEST_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// The peer's chain: genesis, tip and total difficulty.
    Status,
    /// Canonical headers after the newest `locator` hash the peer knows.
    /// The locator lists our canonical hashes from the tip back to genesis
    /// with growing gaps, so the fork point is found in one round trip.
    Headers { locator: Vec<ByteBuf>, max: u32 },
    /// Blocks by hash (at most [`MAX_BLOCKS`]), as stored: pruned bodies
    /// are left as hashes.
    Blocks { hashes: Vec<ByteBuf> },
    /// The state snapshot manifest at `height` (see `zennet_chain::snapshot`).
    SnapshotManifest { height: u64 },
    /// Every state entry under chunk `index` of a `depth`-nibble manifest.
    SnapshotChunk { height: u64, depth: u8, index: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    Status(Status),
    /// Borsh-encoded headers, oldest first.
    Headers(Vec<ByteBuf>),
    /// Borsh-encoded `StoredBlock`s in the order asked (unknown ones left out).
    Blocks(Vec<ByteBuf>),
    /// A borsh-encoded snapshot manifest.
    Manifest(ByteBuf),
    /// A borsh-encoded snapshot chunk.
    Chunk(ByteBuf),
    /// The request could not be served.
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub genesis: ByteBuf,
    pub height: u64,
    pub tip: ByteBuf,
    /// u128, big-endian.
    pub total_difficulty: ByteBuf,
    /// Height of the snapshot the peer's state came from (0: from genesis):
    /// it serves snapshots at or above it only.
    #[serde(default)]
    pub snapshot_base: u64,
}

impl Status {
    pub fn new(genesis: Hash, height: u64, tip: Hash, total_difficulty: u128) -> Status {
        Status {
            genesis: ByteBuf::from(genesis.0.to_vec()),
            height,
            tip: ByteBuf::from(tip.0.to_vec()),
            total_difficulty: ByteBuf::from(total_difficulty.to_be_bytes().to_vec()),
            snapshot_base: 0,
        }
    }

    pub fn genesis(&self) -> Option<Hash> {
        Hash::from_slice(&self.genesis).ok()
    }

    pub fn tip(&self) -> Option<Hash> {
        Hash::from_slice(&self.tip).ok()
    }

    pub fn total_difficulty(&self) -> Option<u128> {
        let arr: [u8; 16] = self.total_difficulty.as_slice().try_into().ok()?;
        Some(u128::from_be_bytes(arr))
    }
}

pub fn hash_bytes(h: &Hash) -> ByteBuf {
    ByteBuf::from(h.0.to_vec())
}

/// Hashes from a request, refusing any that is not 32 bytes.
pub fn parse_hashes(list: &[ByteBuf]) -> Option<Vec<Hash>> {
    list.iter().map(|b| Hash::from_slice(b).ok()).collect()
}
