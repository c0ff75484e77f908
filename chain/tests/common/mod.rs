#![allow(dead_code)]

use std::sync::atomic::AtomicBool;

use zennet_chain::crypto::SecretKey;
use zennet_chain::identity::{self, Identity, Role};
use zennet_chain::task::{
    CoreChoice, ImageChoice, Rates, TaskAcceptance, TaskAnnouncement, VmRequirements,
};
use zennet_chain::testkit::{fast_genesis, include, mine, signed};
use zennet_chain::{
    Address, Chain, ChainError, Hash, MempoolError, SignedTx, TxBody, TxError, pow,
};

pub const FUNDS: u128 = 1_000_000_000;

pub struct World {
    pub chain: Chain,
    pub alice: SecretKey,
    pub bob: SecretKey,
    pub carol: SecretKey,
    pub miner: Address,
}

impl World {
    pub fn new() -> World {
        World::with(|_| {})
    }

    /// A world whose genesis `tweak` adjusts (horizon, interval…).
    pub fn with(tweak: impl FnOnce(&mut zennet_chain::Genesis)) -> World {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let carol = SecretKey::generate();
        let mut genesis = fast_genesis(&[
            (alice.address(), FUNDS),
            (bob.address(), FUNDS),
            (carol.address(), FUNDS),
        ]);
        tweak(&mut genesis);
        World {
            chain: Chain::in_memory(genesis).unwrap(),
            alice,
            bob,
            carol,
            miner: SecretKey::generate().address(),
        }
    }

    pub fn tx(&self, key: &SecretKey, body: TxBody) -> SignedTx {
        signed(&self.chain, key, body)
    }

    /// Submits and mines; the transaction must be included.
    pub fn ok(&mut self, key: &SecretKey, body: TxBody) -> Hash {
        let tx = self.tx(key, body);
        let hash = tx.hash();
        include(&mut self.chain, self.miner, tx);
        hash
    }

    /// Submits; the transaction must be rejected with a ledger rule.
    pub fn rejects(&mut self, key: &SecretKey, body: TxBody) -> TxError {
        let tx = self.tx(key, body);
        reject_reason(
            self.chain
                .submit_tx(tx)
                .expect_err("transaction must be rejected"),
        )
    }

    pub fn mine_blocks(&mut self, n: u64) {
        for _ in 0..n {
            mine(&mut self.chain, self.miner);
        }
    }

    pub fn height(&self) -> u64 {
        self.chain.tip().header.height
    }

    pub fn register(&mut self, key: &SecretKey, role: Role) {
        let identity = mine_identity(&self.chain, key, role);
        self.ok(key, TxBody::RegisterIdentity { identity });
    }

    /// A valid announcement from `publisher` (PoW solved) as of the next block.
    pub fn announcement(&self, publisher: &Address) -> TaskAnnouncement {
        let mut a = TaskAnnouncement {
            vm: VmRequirements {
                images: vec![ImageChoice {
                    id: "zennet-tiny".into(),
                    hash: Hash([0x11; 32]),
                    file: None,
                }],
                min_bandwidth_mbps: 10,
                min_disk_gib: 1,
                min_disk_mbps: 50,
                persistent_storage_gib: 0,
                cores: vec![CoreChoice {
                    cores: 1,
                    min_compute_per_core: 100,
                }],
                max_compute_per_core: 1000,
                memory_mib_per_core: 256,
                min_memory_mbps: 1000,
            },
            min_instances: 1,
            max_instances: 2,
            endpoint: "127.0.0.1:2222".into(),
            host_key_fingerprint: Hash([0x22; 32]),
            lease_min_secs: 60,
            lease_max_secs: 3600,
            payout_interval_secs: 10,
            rates: Rates {
                per_compute_unit_second: 3,
                base_per_second: 1,
                ..Rates::default()
            },
            acceptance_window: 5,
            acceptance_difficulty: 4,
            prune_height: self.height() + 1 + 8,
            info: "https://example.org/task".into(),
            pow_nonce: 0,
        };
        solve_announcement(&self.chain, publisher, &mut a);
        a
    }

    pub fn acceptance(&self, node: &Address, task: Hash) -> TaskAcceptance {
        let t = self.chain.task(&task).expect("task is open");
        let mut a = TaskAcceptance {
            task,
            image: t.announcement.vm.images[0].hash,
            cores: t.announcement.vm.cores[0].cores,
            ssh_key_fingerprint: Hash([0x33; 32]),
            compute_score: 150,
            pow_nonce: 0,
        };
        solve_acceptance(node, t.announcement.acceptance_difficulty, &mut a);
        a
    }
}

pub fn mine_identity(chain: &Chain, key: &SecretKey, role: Role) -> Identity {
    identity::mine(
        role,
        key.public_key(),
        &chain.genesis().pow,
        0,
        &AtomicBool::new(false),
        |_| {},
    )
    .expect("identity mined")
}

pub fn solve_announcement(chain: &Chain, publisher: &Address, a: &mut TaskAnnouncement) {
    let d = chain.genesis().pow.min_announcement_difficulty;
    a.pow_nonce = pow::search(0, u64::MAX, d, |n| {
        a.pow_nonce = n;
        a.pow_hash(publisher)
    })
    .unwrap();
}

pub fn solve_acceptance(node: &Address, difficulty: u64, a: &mut TaskAcceptance) {
    a.pow_nonce = pow::search(0, u64::MAX, difficulty, |n| {
        a.pow_nonce = n;
        a.pow_hash(node)
    })
    .unwrap();
}

/// The ledger rule behind a rejection, wherever it was caught.
pub fn reject_reason(e: ChainError) -> TxError {
    match e {
        ChainError::Tx(t) => t,
        ChainError::Mempool(MempoolError::Invalid(t)) => t,
        other => panic!("expected a ledger rule rejection, got: {other}"),
    }
}
