//! The chain read as an adversary: reorgs across pruned announcements,
//! forks deeper than the horizon, spam side chains, the loser of a race for
//! a task, replay from another dev chain, and the cost of a state root on a
//! big state.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use zennet_chain::crypto::SecretKey;
use zennet_chain::identity::Role;
use zennet_chain::mempool::Dropped;
use zennet_chain::seal::seal;
use zennet_chain::state::{Account, StateKey, StateValue};
use zennet_chain::testkit::{fast_genesis, mine, sealed_template, signed};
use zennet_chain::trie::{self, NodeSource, Prefix};
use zennet_chain::{
    Block, BlockError, Chain, ChainError, Genesis, Hash, ImportOutcome, TxBody, TxError, Voucher,
};

fn small_horizon(g: &mut Genesis) {
    g.consensus.reorg_horizon = 10;
    g.consensus.snapshot_interval = 10;
}

/// `n` blocks built on a copy of `chain` (same blocks imported), with
/// timestamps skewed so they differ from the original's.
fn branch(chain: &Chain, upto: u64, n: usize, skew: u64) -> Vec<Block> {
    let mut c = Chain::in_memory(chain.genesis().clone()).unwrap();
    for h in 1..=upto {
        let b = chain
            .block_by_height(h)
            .unwrap()
            .unwrap()
            .into_block()
            .unwrap();
        c.import_block(b, u64::MAX / 2).unwrap();
    }
    let miner = SecretKey::generate().address();
    let mut out = Vec::new();
    for _ in 0..n {
        let b = sealed_template(&c, miner, skew);
        c.import_block(b.clone(), u64::MAX / 2).unwrap();
        out.push(b);
    }
    out
}

fn import_all(chain: &mut Chain, blocks: &[Block]) -> Vec<ImportOutcome> {
    blocks
        .iter()
        .map(|b| chain.import_block(b.clone(), u64::MAX / 2).unwrap())
        .collect()
}

#[test]
fn reorg_across_a_pruned_announcement_and_back() {
    let mut w = World::with(small_horizon);
    w.register(&w.alice.clone(), Role::Publisher);
    w.mine_blocks(1);
    let fork_height = w.height();
    // The smallest prune height the rules allow: the end of its window.
    let mut a = w.announcement(&w.alice.address());
    a.prune_height = w.height() + 1 + a.acceptance_window;
    solve_announcement(&w.chain, &w.alice.address(), &mut a);
    let task = w.ok(
        &w.alice.clone(),
        TxBody::AnnounceTask {
            announcement: a.clone(),
        },
    );
    while w.height() < a.prune_height + 2 {
        w.mine_blocks(1);
    }
    assert!(w.chain.task(&task).is_none(), "the task left the state");
    let announced_at = w
        .chain
        .tx_info(&task)
        .unwrap()
        .unwrap()
        .location
        .unwrap()
        .height;
    assert!(
        w.chain
            .block_by_height(announced_at)
            .unwrap()
            .unwrap()
            .into_block()
            .is_some(),
        "inside the horizon the body is kept, however small its prune height"
    );
    let a_tip = w.height();
    let original: Vec<Block> = (1..=a_tip)
        .map(|h| {
            w.chain
                .block_by_height(h)
                .unwrap()
                .unwrap()
                .into_block()
                .unwrap()
        })
        .collect();

    // A heavier fork from before the announcement: the node rolls the
    // announcement's block back.
    let other = branch(&w.chain, fork_height, (a_tip - fork_height) as usize + 1, 7);
    let outcomes = import_all(&mut w.chain, &other);
    assert!(matches!(
        outcomes.last().unwrap(),
        ImportOutcome::Reorganized { .. }
    ));
    assert_eq!(w.chain.tip().hash, other.last().unwrap().hash());
    assert!(w.chain.tx_info(&task).unwrap().is_none_or(|i| i.pending));

    // And back to the announcement's branch once it is heavier again: its
    // block is re-applied from the body that was kept.
    let mut replica = Chain::in_memory(w.chain.genesis().clone()).unwrap();
    import_all(&mut replica, &original);
    let longer = branch(&replica, a_tip, 3, 0);
    let outcomes = import_all(&mut w.chain, &longer);
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, ImportOutcome::Reorganized { .. })),
        "{outcomes:?}"
    );
    import_all(&mut replica, &longer);
    assert_eq!(w.chain.tip().hash, replica.tip().hash);
    assert_eq!(w.chain.state(), replica.state());
    assert_eq!(
        w.chain
            .tx_info(&task)
            .unwrap()
            .unwrap()
            .location
            .unwrap()
            .height,
        announced_at
    );
}

#[test]
fn a_fork_deeper_than_the_horizon_is_refused_and_stores_nothing() {
    let mut w = World::with(small_horizon);
    let genesis = w.chain.genesis().clone();
    // The attacker's chain from genesis is longer (heavier) but forks at 0.
    let mut attacker = Chain::in_memory(genesis).unwrap();
    let mut spam = Vec::new();
    let attacker_miner = SecretKey::generate().address();
    for _ in 0..40 {
        spam.push(mine(&mut attacker, attacker_miner));
    }
    w.mine_blocks(25);
    let tip = w.chain.tip().hash;
    for b in &spam {
        match w.chain.import_block(b.clone(), u64::MAX / 2) {
            Err(ChainError::Block(BlockError::ForkTooDeep {
                fork_height: 0,
                floor: 15,
            })) => {}
            Err(ChainError::Block(BlockError::UnknownParent(_))) => {}
            other => panic!("deep fork block accepted: {other:?}"),
        }
    }
    assert_eq!(w.chain.tip().hash, tip);
    assert_eq!(w.chain.store().side_blocks().unwrap(), 0, "nothing stored");
}

#[test]
fn side_blocks_are_deleted_once_behind_the_horizon() {
    let mut w = World::with(small_horizon);
    w.mine_blocks(5);
    let side = branch(&w.chain, 3, 2, 11);
    w.mine_blocks(2);
    let outcomes = import_all(&mut w.chain, &side);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, ImportOutcome::SideChain { .. }))
    );
    assert_eq!(w.chain.store().side_blocks().unwrap(), 2);
    w.mine_blocks(10);
    assert_eq!(w.chain.store().side_blocks().unwrap(), 0);
    // Their children can no longer attach.
    let late = branch(&w.chain, 3, 1, 13);
    assert!(matches!(
        w.chain.import_block(late[0].clone(), u64::MAX / 2),
        Err(ChainError::Block(BlockError::ForkTooDeep { .. }))
    ));
}

#[test]
fn a_side_block_that_would_win_is_executed_before_anything_is_written() {
    let mut w = World::with(small_horizon);
    w.mine_blocks(3);
    let root = w.chain.state().root();
    let tip = w.chain.tip().hash;
    let mut fork = branch(&w.chain, 1, 3, 9);
    // The third block (the one that makes the fork heavier) lies about its
    // state root under a valid seal.
    let mut bad = fork.pop().unwrap();
    bad.header.state_root = Hash([5; 32]);
    assert!(seal(w.chain.ethash(), &mut bad, 0, &AtomicBool::new(false)));
    import_all(&mut w.chain, &fork);
    let err = w.chain.import_block(bad.clone(), u64::MAX / 2).unwrap_err();
    assert!(
        matches!(err, ChainError::Block(BlockError::BadStateRoot { .. })),
        "{err}"
    );
    assert_eq!(w.chain.tip().hash, tip);
    assert_eq!(w.chain.state().root(), root);
    assert!(matches!(
        w.chain.import_block(bad, u64::MAX / 2),
        Err(ChainError::Block(BlockError::KnownInvalid(_)))
    ));
    // The stored copy of the state was not touched either.
    let rows = w.chain.store().state_under(&Prefix::ROOT).unwrap();
    let reopened = zennet_chain::state::State::from_rows(rows, None);
    assert_eq!(reopened.root(), root);
}

#[test]
fn the_loser_of_a_race_for_the_last_instance_keeps_transacting() {
    let mut w = World::new();
    let (alice, bob, carol) = (w.alice.clone(), w.bob.clone(), w.carol.clone());
    w.register(&alice, Role::Publisher);
    w.register(&bob, Role::Node);
    w.register(&carol, Role::Node);
    let mut a = w.announcement(&alice.address());
    a.min_instances = 1;
    a.max_instances = 1;
    solve_announcement(&w.chain, &alice.address(), &mut a);
    let task = w.ok(&alice, TxBody::AnnounceTask { announcement: a });

    // Both accept; only one fits. Bob's goes first (it pays more).
    let bob_acc = w.acceptance(&bob.address(), task);
    let mut bob_tx = w.tx(
        &bob,
        TxBody::AcceptTask {
            acceptance: bob_acc,
        },
    );
    bob_tx.tx.fee_per_byte = 5;
    let bob_tx = bob_tx.tx.sign(&bob, &w.chain.genesis_hash());
    w.chain.submit_tx(bob_tx).unwrap();
    let carol_acc = w.acceptance(&carol.address(), task);
    let lost = w.tx(
        &carol,
        TxBody::AcceptTask {
            acceptance: carol_acc,
        },
    );
    let lost_hash = lost.hash();
    w.chain.submit_tx(lost).unwrap();
    w.mine_blocks(1);
    assert_eq!(w.chain.task(&task).unwrap().acceptances.len(), 1);
    assert!(
        !w.chain.mempool().contains(&lost_hash),
        "an acceptance that can never be mined leaves the pool"
    );
    assert!(matches!(
        w.chain.mempool().dropped(&lost_hash),
        Some(Dropped::Invalid(TxError::TaskFull(_)))
    ));

    // Carol's next transaction takes the freed nonce and is mined.
    let later = w.tx(
        &carol,
        TxBody::Transfer {
            to: alice.address(),
            amount: 7,
        },
    );
    assert_eq!(later.tx.nonce, w.chain.account(&carol.address()).nonce);
    let later_hash = later.hash();
    w.chain.submit_tx(later).unwrap();
    w.mine_blocks(2);
    assert!(
        w.chain
            .tx_info(&later_hash)
            .unwrap()
            .unwrap()
            .location
            .is_some(),
        "the loser's later transaction was mined"
    );
}

#[test]
fn a_sender_whose_queued_spend_became_unaffordable_is_not_stuck() {
    let mut w = World::new();
    let (alice, bob) = (w.alice.clone(), w.bob.clone());
    // Two spends queued; then a block (from elsewhere) empties the account
    // with an equal-nonce transaction that pays a higher fee.
    let first = w.tx(
        &alice,
        TxBody::Transfer {
            to: bob.address(),
            amount: 1,
        },
    );
    w.chain.submit_tx(first.clone()).unwrap();
    let second = w.tx(
        &alice,
        TxBody::Transfer {
            to: bob.address(),
            amount: 2,
        },
    );
    w.chain.submit_tx(second.clone()).unwrap();
    let mut other = Chain::in_memory(w.chain.genesis().clone()).unwrap();
    let balance = other.account(&alice.address()).balance;
    let probe = signed(
        &other,
        &alice,
        TxBody::Transfer {
            to: bob.address(),
            amount: balance,
        },
    );
    let fee = probe.encode().len() as u128;
    let drain = signed(
        &other,
        &alice,
        TxBody::Transfer {
            to: bob.address(),
            amount: balance - fee,
        },
    );
    other.submit_tx(drain).unwrap();
    let block = mine(&mut other, w.miner);
    w.chain.import_block(block, u64::MAX / 2).unwrap();
    assert!(!w.chain.mempool().contains(&second.hash()));
    assert!(!w.chain.mempool().contains(&first.hash()));
    assert_eq!(w.chain.next_nonce(&alice.address()), 1);
}

#[test]
fn a_transaction_signed_on_one_dev_chain_is_invalid_on_another() {
    let alice = SecretKey::generate();
    let bob = SecretKey::generate();
    let funded = [(alice.address(), FUNDS), (bob.address(), FUNDS)];
    let mut ga = fast_genesis(&funded);
    ga.name = "devnet-a".into();
    let mut gb = fast_genesis(&funded);
    gb.name = "devnet-b".into();
    assert_eq!(
        ga.chain_id, gb.chain_id,
        "same chain id: only the genesis differs"
    );
    let mut a = Chain::in_memory(ga).unwrap();
    let mut b = Chain::in_memory(gb).unwrap();

    let tx = signed(
        &a,
        &alice,
        TxBody::Transfer {
            to: bob.address(),
            amount: 5,
        },
    );
    a.submit_tx(tx.clone()).unwrap();
    let err = b.submit_tx(tx.clone()).unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::Mempool(zennet_chain::MempoolError::Invalid(
                TxError::InsufficientBalance { .. } | TxError::BadNonce { .. }
            )) | ChainError::BadSignature(_)
        ),
        "devnet B took a devnet A transaction: {err}"
    );
    assert!(b.mempool().is_empty());
    // Nor does it go in inside a block.
    let mut block = b.template(
        SecretKey::generate().address(),
        b.tip().header.timestamp_ms + 2000,
    );
    block.txs = vec![tx];
    block.header.tx_root = block.computed_tx_root();
    assert!(seal(b.ethash(), &mut block, 0, &AtomicBool::new(false)));
    let err = b.import_block(block, u64::MAX / 2).unwrap_err();
    assert!(
        matches!(err, ChainError::Block(BlockError::BadTx { .. })),
        "{err}"
    );

    // A voucher is a signature a payee redeems on chain: the same rule.
    let open = signed(
        &b,
        &alice,
        TxBody::ChannelOpen {
            payee: bob.address(),
            deposit: 1000,
            expiry_height: 100,
        },
    );
    let channel = open.hash();
    zennet_chain::testkit::include(&mut b, SecretKey::generate().address(), open);
    let voucher = Voucher {
        chain_id: a.genesis().chain_id,
        channel,
        seq: 1,
        cumulative: 10,
    }
    .sign(&alice, &a.genesis_hash());
    let claim = signed(&b, &bob, TxBody::ChannelClaim { voucher });
    assert!(matches!(
        reject_reason(b.submit_tx(claim).unwrap_err()),
        TxError::BadVoucher(_)
    ));
}

/// Counts the trie nodes an update reads.
struct Counting<'a> {
    inner: &'a trie::Trie,
    reads: AtomicUsize,
}

impl NodeSource for Counting<'_> {
    fn node(&self, prefix: &Prefix) -> Option<&trie::Node> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.node(prefix)
    }
}

#[test]
fn a_state_root_reads_only_the_changed_paths() {
    let state = zennet_chain::state::State::from_entries((0..50_000u32).map(|i| {
        let mut a = [0u8; 20];
        a[..4].copy_from_slice(&i.to_be_bytes());
        (
            StateKey::Account(zennet_chain::Address(a)),
            StateValue::Account(Account {
                balance: i as u128,
                nonce: 0,
            }),
        )
    }));
    let counting = Counting {
        inner: state.trie(),
        reads: AtomicUsize::new(0),
    };
    let key = StateKey::Account(zennet_chain::Address([9; 20]));
    let value = StateValue::Account(Account {
        balance: 1,
        nonce: 1,
    });
    let change = [(key.path(), Some(value.hash()))];
    let update = trie::update(&counting, state.trie().root(), &change);
    assert!(
        counting.reads.load(Ordering::Relaxed) <= 8,
        "one change on 50,000 leaves read {} nodes",
        counting.reads.load(Ordering::Relaxed)
    );
    assert!(
        update.writes.len() <= 8,
        "{} node writes",
        update.writes.len()
    );
    let mut direct = state.clone();
    let mut changes = zennet_chain::state::Changes::new();
    changes.insert(key, Some(value));
    direct.commit(changes);
    assert_eq!(update.root.root_hash(), direct.root());
}

#[test]
fn parallel_recovery_reports_the_first_bad_transaction() {
    let w = World::new();
    let mut block = sealed_template(&w.chain, w.miner, 0);
    let keys: Vec<SecretKey> = (0..64).map(|_| SecretKey::generate()).collect();
    block.txs = keys
        .iter()
        .map(|k| {
            signed(
                &w.chain,
                k,
                TxBody::Transfer {
                    to: w.bob.address(),
                    amount: 1,
                },
            )
        })
        .collect();
    // Two forged signatures; the lower index is the one reported.
    block.txs[40].signature.0[64] = 9;
    block.txs[17].signature.0[64] = 9;
    block.header.tx_root = block.computed_tx_root();
    assert!(seal(
        w.chain.ethash(),
        &mut block,
        0,
        &AtomicBool::new(false)
    ));
    let mut chain = w.chain;
    let err = chain.import_block(block, u64::MAX / 2).unwrap_err();
    assert!(
        matches!(err, ChainError::Block(BlockError::BadTx { index: 17, .. })),
        "{err}"
    );
}
