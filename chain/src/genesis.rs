//! Genesis: the parameters a chain is born with, and its initial balances.
//!
//! A genesis file is TOML. The `dev` preset is a fast single-machine chain:
//! chain id 98765, ~2 s blocks, a 1 MiB Ethash cache, one prefunded key.

use std::path::Path;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::block::{Block, Header};
use crate::codec::{amount_str, encode};
use crate::crypto::{Address, Hash, keccak256};
use crate::error::ChainError;
use crate::state::{Account, State, StateKey, StateValue};
use crate::tx::Amount;

pub const DEV_CHAIN_ID: u64 = 98765;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    pub chain_id: u64,
    /// Unix time of the genesis block, in milliseconds.
    pub timestamp_ms: u64,
    /// Free text that makes two otherwise equal chains distinct.
    pub name: String,
    pub consensus: Consensus,
    pub ethash: EthashParams,
    pub pow: PowParams,
    pub limits: Limits,
    pub economics: Economics,
    #[serde(default)]
    pub alloc: Vec<Allocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(deny_unknown_fields)]
pub struct Consensus {
    /// Target time between blocks; difficulty retargets toward it.
    pub block_time_ms: u64,
    pub initial_difficulty: u64,
    pub min_difficulty: u64,
    /// Each block moves difficulty by parent/divisor per step away from target.
    pub difficulty_divisor: u64,
    /// How far ahead of the local clock a block's timestamp may be.
    pub max_future_ms: u64,
    /// Blocks this deep below the tip are final: a fork whose point is
    /// deeper is refused, and only behind this depth are announcement
    /// bodies pruned and side blocks deleted.
    #[serde(default = "default_reorg_horizon")]
    pub reorg_horizon: u64,
    /// State snapshots for fast sync are taken at multiples of this height
    /// (the newest one at least `reorg_horizon` below the tip).
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval: u64,
}

fn default_reorg_horizon() -> u64 {
    100
}

fn default_snapshot_interval() -> u64 {
    100
}

impl Consensus {
    /// The newest height a snapshot is served at when the tip is `tip`:
    /// the highest multiple of the interval at least the horizon below it.
    pub fn snapshot_height(&self, tip: u64) -> Option<u64> {
        let final_height = tip.checked_sub(self.reorg_horizon)?;
        let h = final_height / self.snapshot_interval * self.snapshot_interval;
        (h > 0).then_some(h)
    }

    /// Blocks at or below this height keep neither announcement bodies nor
    /// undo data: behind the horizon, and behind the two newest snapshot
    /// heights, so a node fast-syncing from either can apply every block
    /// after it.
    pub fn retain_floor(&self, tip: u64) -> u64 {
        self.snapshot_height(tip)
            .map_or(0, |h| h.saturating_sub(self.snapshot_interval))
    }
}

/// Ethash sizes. Mainnet Ethereum uses a 16 MiB cache and a 1 GiB dataset
/// growing per 30000-block epoch; a dev chain uses far smaller ones so that a
/// light client can mine and verify quickly. Sizes are rounded down to whole
/// 64-byte cache items and 128-byte mix pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(deny_unknown_fields)]
pub struct EthashParams {
    pub epoch_length: u64,
    pub cache_bytes: u64,
    pub cache_growth_bytes: u64,
    pub dataset_bytes: u64,
    pub dataset_growth_bytes: u64,
}

/// Three of the four difficulty parameters; the fourth (what an acceptance
/// must meet) is set by each announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(deny_unknown_fields)]
pub struct PowParams {
    pub publisher_identity_difficulty: u64,
    pub node_identity_difficulty: u64,
    pub min_announcement_difficulty: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_tx_bytes: u32,
    pub max_block_bytes: u32,
    pub max_announcement_bytes: u32,
    pub max_acceptance_window: u64,
    /// An announcement's prune height may be at most this far ahead.
    pub max_prune_horizon: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(deny_unknown_fields)]
pub struct Economics {
    #[serde(with = "amount_str")]
    pub block_reward: Amount,
    pub min_fee_per_byte: u64,
    /// Blocks between a payer's `ChannelSettle` and when it may reclaim.
    pub channel_challenge_period: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    pub address: Address,
    #[serde(with = "amount_str")]
    pub balance: Amount,
}

impl Genesis {
    /// The dev preset, prefunding `prefund` (a new home's own key).
    pub fn dev(prefund: Address, timestamp_ms: u64) -> Genesis {
        Genesis {
            chain_id: DEV_CHAIN_ID,
            timestamp_ms,
            name: "zennet-dev".into(),
            consensus: Consensus {
                block_time_ms: 2_000,
                initial_difficulty: 1_500,
                min_difficulty: 100,
                difficulty_divisor: 16,
                max_future_ms: 15_000,
                reorg_horizon: 100,
                snapshot_interval: 100,
            },
            ethash: EthashParams {
                epoch_length: 1_000,
                cache_bytes: 1 << 20,
                cache_growth_bytes: 1 << 12,
                dataset_bytes: 32 << 20,
                dataset_growth_bytes: 1 << 16,
            },
            pow: PowParams {
                publisher_identity_difficulty: 20_000,
                node_identity_difficulty: 5_000,
                min_announcement_difficulty: 2_000,
            },
            limits: Limits {
                max_tx_bytes: 4_096,
                max_block_bytes: 1 << 20,
                max_announcement_bytes: 512,
                max_acceptance_window: 10_000,
                max_prune_horizon: 100_000,
            },
            economics: Economics {
                block_reward: 5_000_000_000,
                min_fee_per_byte: 1,
                channel_challenge_period: 20,
            },
            alloc: vec![Allocation {
                address: prefund,
                balance: 1_000_000_000_000_000,
            }],
        }
    }

    pub fn from_toml(text: &str) -> Result<Genesis, ChainError> {
        let g: Genesis = toml::from_str(text)
            .map_err(|e| ChainError::Genesis(format!("not a genesis file: {e}")))?;
        g.validate()?;
        Ok(g)
    }

    pub fn load(path: &Path) -> Result<Genesis, ChainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ChainError::Genesis(format!("cannot read {}: {e}", path.display())))?;
        Genesis::from_toml(&text)
            .map_err(|e| ChainError::Genesis(format!("{}: {e}", path.display())))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("genesis serialises")
    }

    /// Rejects parameters under which the chain could not run.
    pub fn validate(&self) -> Result<(), ChainError> {
        let bad = |m: &str| Err(ChainError::Genesis(m.to_string()));
        let c = &self.consensus;
        if c.block_time_ms == 0 || c.difficulty_divisor == 0 {
            return bad("consensus.block_time_ms and difficulty_divisor must be positive");
        }
        if c.reorg_horizon == 0 || c.snapshot_interval == 0 {
            return bad("consensus.reorg_horizon and snapshot_interval must be positive");
        }
        if c.min_difficulty == 0 || c.initial_difficulty < c.min_difficulty {
            return bad(
                "consensus.min_difficulty must be positive and not above initial_difficulty",
            );
        }
        let e = &self.ethash;
        if e.epoch_length == 0 || e.cache_bytes < 1024 || e.dataset_bytes < e.cache_bytes {
            return bad(
                "ethash: epoch_length > 0, cache_bytes >= 1024 and dataset_bytes >= cache_bytes",
            );
        }
        let p = &self.pow;
        if p.publisher_identity_difficulty == 0
            || p.node_identity_difficulty == 0
            || p.min_announcement_difficulty == 0
        {
            return bad("pow difficulties must be at least 1");
        }
        let l = &self.limits;
        if l.max_tx_bytes < 256
            || l.max_block_bytes < l.max_tx_bytes
            || l.max_announcement_bytes == 0
        {
            return bad("limits: max_tx_bytes >= 256 and max_block_bytes >= max_tx_bytes");
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.alloc {
            if !seen.insert(a.address) {
                return bad(&format!("alloc lists {} twice", a.address));
            }
        }
        Ok(())
    }

    /// The initial state: the allocations.
    pub fn state(&self) -> State {
        State::from_entries(self.alloc.iter().map(|a| {
            (
                StateKey::Account(a.address),
                StateValue::Account(Account {
                    balance: a.balance,
                    nonce: 0,
                }),
            )
        }))
    }

    /// Block 0. Its `extra` commits to every genesis parameter, so two chains
    /// that differ in any parameter have different genesis hashes.
    pub fn block(&self) -> Block {
        let header = Header {
            parent: Hash::ZERO,
            height: 0,
            timestamp_ms: self.timestamp_ms,
            tx_root: crate::block::tx_root(&[]),
            state_root: self.state().root(),
            difficulty: self.consensus.initial_difficulty,
            miner: Address::ZERO,
            extra: keccak256(&encode(self)).0.to_vec(),
            mix_digest: Hash::ZERO,
            nonce: 0,
        };
        Block {
            header,
            txs: vec![],
        }
    }

    pub fn hash(&self) -> Hash {
        self.block().header.hash()
    }
}

#[cfg(test)]
mod snapshot_height_tests {
    use super::*;

    #[test]
    fn snapshot_heights_stay_behind_the_horizon() {
        let c = Genesis::dev(Address::ZERO, 0).consensus;
        assert_eq!(c.snapshot_height(150), None);
        assert_eq!(c.snapshot_height(200), Some(100));
        assert_eq!(c.snapshot_height(299), Some(100));
        assert_eq!(c.snapshot_height(300), Some(200));
        assert_eq!(c.retain_floor(299), 0);
        assert_eq!(c.retain_floor(300), 100);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_keeps_the_hash() {
        let g = Genesis::dev(Address([7; 20]), 1_700_000_000_000);
        let text = g.to_toml();
        let back = Genesis::from_toml(&text).unwrap();
        assert_eq!(back, g);
        assert_eq!(back.hash(), g.hash());
    }

    #[test]
    fn parameters_change_the_hash() {
        let a = Genesis::dev(Address([7; 20]), 1);
        let mut b = a.clone();
        b.economics.channel_challenge_period += 1;
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn rejects_unknown_fields_and_bad_params() {
        let g = Genesis::dev(Address([7; 20]), 1);
        let text = g.to_toml().replace("chain_id", "chain_idd");
        assert!(Genesis::from_toml(&text).is_err());
        let mut bad = g.clone();
        bad.consensus.block_time_ms = 0;
        assert!(bad.validate().is_err());
        let mut dup = g;
        dup.alloc.push(dup.alloc[0].clone());
        assert!(dup.validate().is_err());
    }
}
