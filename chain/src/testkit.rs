//! Helpers for tests and benchmarks: a genesis whose seals cost almost
//! nothing, and one-call signing and mining. Real code paths throughout —
//! blocks built here go through the same template, seal and import as a
//! node's.

use std::sync::atomic::AtomicBool;

use crate::block::Block;
use crate::chain::{Chain, ImportOutcome};
use crate::crypto::{Address, SecretKey};
use crate::genesis::{Allocation, Genesis};
use crate::seal::seal;
use crate::tx::{Amount, SignedTx, Transaction, TxBody};

/// Dev parameters with difficulty 1 and a 4 KiB Ethash cache, funding `funded`.
pub fn fast_genesis(funded: &[(Address, Amount)]) -> Genesis {
    let mut g = Genesis::dev(Address::ZERO, 1_700_000_000_000);
    g.consensus.initial_difficulty = 1;
    g.consensus.min_difficulty = 1;
    g.ethash.cache_bytes = 4096;
    g.ethash.cache_growth_bytes = 64;
    g.ethash.dataset_bytes = 64 * 1024;
    g.ethash.epoch_length = 50;
    g.pow.publisher_identity_difficulty = 8;
    g.pow.node_identity_difficulty = 4;
    g.pow.min_announcement_difficulty = 4;
    g.alloc = funded
        .iter()
        .map(|(address, balance)| Allocation {
            address: *address,
            balance: *balance,
        })
        .collect();
    g
}

/// Signs `body` from `key` with its next nonce on `chain` and the minimum fee.
pub fn signed(chain: &Chain, key: &SecretKey, body: TxBody) -> SignedTx {
    Transaction {
        chain_id: chain.genesis().chain_id,
        nonce: chain.next_nonce(&key.address()),
        fee_per_byte: chain.genesis().economics.min_fee_per_byte,
        body,
    }
    .sign(key)
}

/// Builds, seals and imports the next block (with whatever the mempool
/// holds), one block time after the tip.
pub fn mine(chain: &mut Chain, miner: Address) -> Block {
    let block = sealed_template(chain, miner, 0);
    let now = block.header.timestamp_ms;
    match chain.import_block(block.clone(), now) {
        Ok(ImportOutcome::Extended { .. }) => block,
        other => panic!("mined block did not extend the chain: {other:?}"),
    }
}

/// A sealed block on the current tip, `skew_ms` later than one block time
/// after it (different skews give distinct sibling blocks).
pub fn sealed_template(chain: &Chain, miner: Address, skew_ms: u64) -> Block {
    let tip = &chain.tip().header;
    let now = tip.timestamp_ms + chain.genesis().consensus.block_time_ms + skew_ms;
    let mut block = chain.template(miner, now);
    assert!(seal(chain.ethash(), &mut block, 0, &AtomicBool::new(false)));
    block
}

/// Submits `tx`, mines it, and panics if it was not included.
pub fn include(chain: &mut Chain, miner: Address, tx: SignedTx) -> Block {
    let hash = chain.submit_tx(tx).expect("transaction admitted");
    let block = mine(chain, miner);
    assert!(
        block.txs.iter().any(|t| t.hash() == hash),
        "transaction was not mined"
    );
    block
}
