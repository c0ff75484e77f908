//! Helpers for tests and benchmarks: a genesis whose seals cost almost
//! nothing, one-call signing and mining, and [`TestChain`]: an in-memory
//! chain shared by in-process parties through [`Ledger`](crate::Ledger)s,
//! mined on demand. Real code paths throughout —
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

/// An in-memory chain that several in-process parties share, each through
/// its own [`Ledger`](crate::Ledger) (its own key). Nothing is mined until
/// a test says so ([`TestChain::mine`]), so tests decide exactly when a
/// transaction lands. Real code paths: the mempool, execution and import
/// are a node's.
pub struct TestChain {
    chain: std::sync::Mutex<Chain>,
    miner: Address,
}

impl TestChain {
    /// A fresh chain on [`fast_genesis`] with `funded` accounts.
    pub fn new(funded: &[(Address, Amount)]) -> std::sync::Arc<TestChain> {
        let chain = Chain::in_memory(fast_genesis(funded)).expect("an in-memory chain opens");
        std::sync::Arc::new(TestChain {
            chain: std::sync::Mutex::new(chain),
            miner: SecretKey::generate().address(),
        })
    }

    /// A ledger signing with `key` on this chain.
    pub fn ledger(self: &std::sync::Arc<Self>, key: SecretKey) -> std::sync::Arc<TestLedger> {
        std::sync::Arc::new(TestLedger {
            chain: self.clone(),
            key,
        })
    }

    /// Mines one block with whatever the mempool holds.
    pub fn mine(&self) -> Block {
        mine(&mut self.chain(), self.miner)
    }

    /// Mines `n` blocks.
    pub fn mine_blocks(&self, n: u64) {
        for _ in 0..n {
            self.mine();
        }
    }

    pub fn height(&self) -> u64 {
        self.chain().tip().header.height
    }

    /// The chain itself, for what the [`Ledger`](crate::Ledger) does not show.
    pub fn chain(&self) -> std::sync::MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One party's view of a [`TestChain`].
pub struct TestLedger {
    chain: std::sync::Arc<TestChain>,
    key: SecretKey,
}

impl TestLedger {
    pub fn key(&self) -> &SecretKey {
        &self.key
    }
    pub fn test_chain(&self) -> &std::sync::Arc<TestChain> {
        &self.chain
    }
}

impl crate::Ledger for TestLedger {
    fn genesis(&self) -> Genesis {
        self.chain.chain().genesis().clone()
    }
    fn address(&self) -> Address {
        self.key.address()
    }
    fn height(&self) -> u64 {
        self.chain.height()
    }
    fn balance(&self, address: &Address) -> Amount {
        self.chain.chain().account(address).balance
    }
    fn task(&self, id: &crate::Hash) -> Option<crate::TaskRecord> {
        self.chain.chain().task(id)
    }
    fn tasks(&self) -> Vec<crate::TaskRecord> {
        self.chain.chain().state().tasks().cloned().collect()
    }
    fn channel(&self, id: &crate::Hash) -> Option<crate::Channel> {
        self.chain.chain().channel(id)
    }
    fn submit(&self, body: TxBody) -> Result<crate::Hash, crate::ChainError> {
        let mut chain = self.chain.chain();
        let tx = signed(&chain, &self.key, body);
        chain.submit_tx(tx)
    }
    fn included_at(&self, tx: &crate::Hash) -> Option<u64> {
        self.chain
            .chain()
            .store()
            .tx_location(tx)
            .ok()
            .flatten()
            .map(|l| l.height)
    }
    fn pending(&self, tx: &crate::Hash) -> bool {
        self.chain.chain().mempool().contains(tx)
    }
}
