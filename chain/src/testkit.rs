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
    g.ethash.epoch_length = 1000;
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
    .sign(key, &chain.genesis_hash())
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
    tip: tokio::sync::watch::Sender<u64>,
}

impl TestChain {
    /// A fresh chain on [`fast_genesis`] with `funded` accounts.
    pub fn new(funded: &[(Address, Amount)]) -> std::sync::Arc<TestChain> {
        let chain = Chain::in_memory(fast_genesis(funded)).expect("an in-memory chain opens");
        std::sync::Arc::new(TestChain {
            chain: std::sync::Mutex::new(chain),
            miner: SecretKey::generate().address(),
            tip: tokio::sync::watch::channel(0).0,
        })
    }

    /// A ledger signing with `key` on this chain.
    pub fn ledger(self: &std::sync::Arc<Self>, key: SecretKey) -> std::sync::Arc<TestLedger> {
        std::sync::Arc::new(TestLedger {
            chain: self.clone(),
            key,
        })
    }

    /// Mines one block with whatever the mempool holds; the ledgers' tip
    /// watches wake.
    pub fn mine(&self) -> Block {
        let block = mine(&mut self.chain(), self.miner);
        self.tip.send_replace(block.header.height);
        block
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

    /// Mines this key's identity for `role` and submits its registration
    /// (mined with the next block).
    pub fn register(&self, role: crate::Role) -> crate::Hash {
        let params = self.chain.chain().genesis().pow.clone();
        let identity = crate::identity::mine(
            role,
            self.key.public_key(),
            &params,
            0,
            &AtomicBool::new(false),
            |_| {},
        )
        .expect("identity mined");
        crate::Ledger::submit(self, TxBody::RegisterIdentity { identity })
            .expect("registration admitted")
    }
    pub fn test_chain(&self) -> &std::sync::Arc<TestChain> {
        &self.chain
    }
}

impl crate::Ledger for TestLedger {
    fn genesis(&self) -> Genesis {
        self.chain.chain().genesis().clone()
    }
    fn genesis_hash(&self) -> crate::Hash {
        self.chain.chain().genesis_hash()
    }
    fn address(&self) -> Address {
        self.key.address()
    }
    fn height(&self) -> u64 {
        self.chain.height()
    }
    fn tip(&self) -> tokio::sync::watch::Receiver<u64> {
        self.chain.tip.subscribe()
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
    fn storage(&self, id: &crate::Hash) -> Option<crate::StorageRecord> {
        self.chain.chain().storage(id)
    }
    fn storages(&self) -> Vec<crate::StorageRecord> {
        self.chain.chain().state().storages().cloned().collect()
    }
    fn block_hash(&self, height: u64) -> Option<crate::Hash> {
        self.chain
            .chain()
            .store()
            .canonical_hash(height)
            .ok()
            .flatten()
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

/// A deterministic mix of every kind of transaction, block after block, so
/// that a test chain's state holds accounts, identities, tasks (some with
/// acceptances, some pruned) and open, claimed and closed channels.
pub struct Activity {
    pub keys: Vec<SecretKey>,
    publisher: Option<usize>,
    nodes: Vec<usize>,
    tasks: Vec<crate::crypto::Hash>,
    channels: Vec<(crate::crypto::Hash, usize, usize, u64)>,
    step: u64,
}

impl Activity {
    /// `keys` must be funded in the genesis.
    pub fn new(keys: Vec<SecretKey>) -> Activity {
        assert!(keys.len() >= 4, "activity needs four funded keys");
        Activity {
            keys,
            publisher: None,
            nodes: vec![],
            tasks: vec![],
            channels: vec![],
            step: 0,
        }
    }

    /// Submits this block's transactions to `chain`'s mempool.
    pub fn submit(&mut self, chain: &mut Chain) {
        use crate::identity::{self, Role};
        use crate::task::{
            CoreChoice, ImageChoice, Rates, TaskAcceptance, TaskAnnouncement, VmRequirements,
        };
        let step = self.step;
        self.step += 1;
        let height = chain.tip().header.height + 1;
        let n = self.keys.len();
        let mut txs = Vec::new();
        let key = |i: usize| self.keys[i % n].clone();
        // Transfers to fresh accounts: the state keeps growing.
        let fresh = crate::crypto::keccak256(&step.to_be_bytes());
        txs.push((
            key(step as usize),
            TxBody::Transfer {
                to: Address::from_slice(&fresh.0[..20]).expect("20 bytes"),
                amount: 1 + step as u128 % 1000,
            },
        ));
        let stop = AtomicBool::new(false);
        match step {
            0 => {
                self.publisher = Some(0);
                let id = identity::mine(
                    Role::Publisher,
                    key(0).public_key(),
                    &chain.genesis().pow,
                    0,
                    &stop,
                    |_| {},
                )
                .expect("mined");
                txs.push((key(0), TxBody::RegisterIdentity { identity: id }));
            }
            1 | 2 => {
                let i = step as usize;
                self.nodes.push(i);
                let id = identity::mine(
                    Role::Node,
                    key(i).public_key(),
                    &chain.genesis().pow,
                    0,
                    &stop,
                    |_| {},
                )
                .expect("mined");
                txs.push((key(i), TxBody::RegisterIdentity { identity: id }));
            }
            _ => {}
        }
        if step >= 3 && step.is_multiple_of(5) {
            let publisher = key(self.publisher.expect("registered"));
            let mut a = TaskAnnouncement {
                vm: VmRequirements {
                    images: vec![ImageChoice {
                        id: "zennet-tiny".into(),
                        hash: crate::crypto::Hash([0x11; 32]),
                        file: None,
                    }],
                    min_bandwidth_mbps: 10,
                    min_disk_gib: 1,
                    min_disk_mbps: 50,
                    persistent_storage_gib: 0,
                    cores: vec![CoreChoice {
                        cores: 1,
                        min_compute_per_core: 1,
                    }],
                    max_compute_per_core: 1000,
                    memory_mib_per_core: 256,
                    min_memory_mbps: 100,
                },
                min_instances: 1,
                max_instances: 2,
                endpoint: "127.0.0.1:7522".into(),
                host_key_fingerprint: crate::crypto::Hash([0x22; 32]),
                lease_min_secs: 60,
                lease_max_secs: 3600,
                payout_interval_secs: 5,
                rates: Rates {
                    base_per_second: 1,
                    ..Rates::default()
                },
                acceptance_window: 20,
                acceptance_difficulty: 2,
                // Some tasks live long, most are pruned soon.
                prune_height: height + if step.is_multiple_of(3) { 400 } else { 24 },
                info: format!("https://example.org/{step}"),
                pow_nonce: 0,
            };
            let d = chain.genesis().pow.min_announcement_difficulty;
            let addr = publisher.address();
            a.pow_nonce = crate::pow::search(0, u64::MAX, d, |nonce| {
                a.pow_nonce = nonce;
                a.pow_hash(&addr)
            })
            .expect("solved");
            txs.push((publisher, TxBody::AnnounceTask { announcement: a }));
        }
        if step % 5 == 2
            && let Some(task) = self.tasks.last().copied()
            && let Some(t) = chain.task(&task)
            && t.accept_until() >= height
        {
            let node = key(self.nodes[(step as usize / 5) % self.nodes.len()]);
            if !t.acceptances.iter().any(|a| a.node == node.address()) {
                let mut acc = TaskAcceptance {
                    task,
                    image: t.announcement.vm.images[0].hash,
                    cores: 1,
                    ssh_key_fingerprint: crate::crypto::Hash([0x33; 32]),
                    compute_score: 10,
                    pow_nonce: 0,
                };
                let addr = node.address();
                acc.pow_nonce = crate::pow::search(
                    0,
                    u64::MAX,
                    t.announcement.acceptance_difficulty,
                    |nonce| {
                        acc.pow_nonce = nonce;
                        acc.pow_hash(&addr)
                    },
                )
                .expect("solved");
                txs.push((node, TxBody::AcceptTask { acceptance: acc }));
            }
        }
        if step % 7 == 3 {
            let (payer, payee) = (step as usize % n, (step as usize + 1) % n);
            txs.push((
                key(payer),
                TxBody::ChannelOpen {
                    payee: key(payee).address(),
                    deposit: 10_000,
                    expiry_height: height + 5_000,
                },
            ));
        }
        if step % 7 == 5
            && let Some(&(channel, payer, payee, seq)) = self.channels.last()
            && chain.channel(&channel).is_some()
        {
            let voucher = crate::channel::Voucher {
                chain_id: chain.genesis().chain_id,
                channel,
                seq: seq + 1,
                cumulative: 100 * (seq as u128 + 1),
            }
            .sign(&key(payer), &chain.genesis_hash());
            let body = if step % 21 == 19 {
                TxBody::ChannelClose {
                    channel,
                    voucher: Some(voucher),
                }
            } else {
                TxBody::ChannelClaim { voucher }
            };
            txs.push((key(payee), body));
            if let Some(last) = self.channels.last_mut() {
                last.3 += 1;
            }
        }
        for (k, body) in txs {
            let kind = body.kind();
            let tx = signed(chain, &k, body);
            let hash = tx.hash();
            if chain.submit_tx(tx).is_ok() {
                match kind {
                    "announce_task" => self.tasks.push(hash),
                    "channel_open" => {
                        let payer = self
                            .keys
                            .iter()
                            .position(|x| x.address() == k.address())
                            .expect("ours");
                        self.channels.push((hash, payer, (payer + 1) % n, 0));
                    }
                    _ => {}
                }
            }
        }
    }
}
