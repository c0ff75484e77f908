//! Blocks: header and body rules, fork choice and reorgs, pruning, and the
//! store surviving a reopen.

mod common;

use std::sync::atomic::AtomicBool;

use common::*;
use zennet_chain::crypto::SecretKey;
use zennet_chain::identity::Role;
use zennet_chain::seal::seal;
use zennet_chain::testkit::{fast_genesis, mine, sealed_template, signed};
use zennet_chain::{Block, BlockError, Chain, ChainError, Hash, ImportOutcome, StoredTx, TxBody};

fn block_error(e: ChainError) -> BlockError {
    match e {
        ChainError::Block(b) => b,
        other => panic!("expected a block rejection, got {other}"),
    }
}

/// Re-seals a block whose header was changed so that only the change is wrong.
fn reseal(chain: &Chain, mut block: Block) -> Block {
    assert!(seal(chain.ethash(), &mut block, 0, &AtomicBool::new(false)));
    block
}

/// What a rejected block's error must look like.
type Expect = fn(&BlockError) -> bool;

#[test]
fn header_and_body_rules_reject_and_leave_the_chain_alone() {
    let mut w = World::new();
    w.mine_blocks(2);
    let tip = w.chain.tip().hash;
    let root = w.chain.state().root();
    let good = sealed_template(&w.chain, w.miner, 0);
    let now = good.header.timestamp_ms;
    let mut cases: Vec<(&str, Block, Expect)> = Vec::new();

    let mut b = good.clone();
    b.header.parent = Hash([1; 32]);
    cases.push(("unknown parent", reseal(&w.chain, b), |e| {
        matches!(e, BlockError::UnknownParent(_))
    }));

    let mut b = good.clone();
    b.header.height += 1;
    cases.push(("height", reseal(&w.chain, b), |e| {
        matches!(e, BlockError::BadHeight { .. })
    }));

    let mut b = good.clone();
    b.header.timestamp_ms = w.chain.tip().header.timestamp_ms;
    cases.push(("timestamp", reseal(&w.chain, b), |e| {
        matches!(e, BlockError::TimestampNotAfterParent { .. })
    }));

    let mut b = good.clone();
    b.header.timestamp_ms = now + 60_000;
    b.header.difficulty = w
        .chain
        .next_difficulty(&w.chain.tip().header, b.header.timestamp_ms);
    cases.push(("future", reseal(&w.chain, b), |e| {
        matches!(e, BlockError::TimestampInFuture { .. })
    }));

    let mut b = good.clone();
    b.header.difficulty += 1;
    cases.push(("difficulty", reseal(&w.chain, b), |e| {
        matches!(e, BlockError::BadDifficulty { .. })
    }));

    let mut b = good.clone();
    b.header.extra = vec![0; 33];
    cases.push(("extra", reseal(&w.chain, b), |e| {
        matches!(e, BlockError::ExtraTooLong(33))
    }));

    let mut b = good.clone();
    b.header.mix_digest = Hash([7; 32]);
    cases.push(("seal", b, |e| matches!(e, BlockError::BadSeal(_))));

    let mut b = good.clone();
    b.header.state_root = Hash([3; 32]);
    cases.push(("state root", reseal(&w.chain, b), |e| {
        matches!(e, BlockError::BadStateRoot { .. })
    }));

    let tx = signed(
        &w.chain,
        &w.alice,
        TxBody::Transfer {
            to: w.bob.address(),
            amount: 5,
        },
    );
    let mut b = good.clone();
    b.txs.push(tx.clone());
    cases.push(("tx root", reseal(&w.chain, b), |e| {
        matches!(e, BlockError::BadTxRoot)
    }));

    let mut b = good.clone();
    b.txs = vec![tx.clone(), tx.clone()];
    b.header.tx_root = b.computed_tx_root();
    cases.push(("duplicate tx", reseal(&w.chain, b), |e| {
        matches!(e, BlockError::DuplicateTx(_))
    }));

    let broke = signed(
        &w.chain,
        &SecretKey::generate(),
        TxBody::Transfer {
            to: w.bob.address(),
            amount: 5,
        },
    );
    let mut b = good.clone();
    b.txs = vec![broke];
    b.header.tx_root = b.computed_tx_root();
    cases.push(("invalid tx", reseal(&w.chain, b), |e| {
        matches!(e, BlockError::BadTx { index: 0, .. })
    }));

    for (name, block, expected) in cases {
        let err = block_error(w.chain.import_block(block, now).unwrap_err());
        assert!(expected(&err), "{name}: unexpected {err:?}");
        assert_eq!(w.chain.tip().hash, tip, "{name}: tip moved");
        assert_eq!(w.chain.state().root(), root, "{name}: state changed");
    }

    // A block that failed execution is remembered and not retried.
    let mut b = good.clone();
    b.header.state_root = Hash([4; 32]);
    let b = reseal(&w.chain, b);
    w.chain.import_block(b.clone(), now).unwrap_err();
    assert!(matches!(
        block_error(w.chain.import_block(b, now).unwrap_err()),
        BlockError::KnownInvalid(_)
    ));

    // And the good block still goes in.
    assert!(matches!(
        w.chain.import_block(good, now).unwrap(),
        ImportOutcome::Extended { .. }
    ));
}

#[test]
fn oversized_and_undecodable_blocks_are_refused() {
    let w = World::new();
    let max = w.chain.genesis().limits.max_block_bytes as usize;
    let junk = vec![0xffu8; 100];
    assert!(matches!(
        Block::decode(&junk, max),
        Err(ChainError::Malformed(_))
    ));
    let big = vec![0u8; max + 1];
    assert!(matches!(
        Block::decode(&big, max),
        Err(ChainError::Malformed(_))
    ));
    let mut ok = sealed_template(&w.chain, w.miner, 0).encode();
    ok.push(0);
    assert!(
        Block::decode(&ok, max).is_err(),
        "trailing bytes are refused"
    );
}

/// Builds `n` blocks on a fresh chain's copy of `base`, with its own transfers.
fn fork(
    genesis: &zennet_chain::Genesis,
    blocks: &[Block],
    payer: &SecretKey,
    n: usize,
    skew: u64,
) -> Vec<Block> {
    let mut c = Chain::in_memory(genesis.clone()).unwrap();
    for b in blocks {
        c.import_block(b.clone(), b.header.timestamp_ms).unwrap();
    }
    let miner = SecretKey::generate().address();
    let mut out = Vec::new();
    for i in 0..n {
        let to = SecretKey::generate().address();
        c.submit_tx(signed(
            &c,
            payer,
            TxBody::Transfer {
                to,
                amount: 10 + i as u128,
            },
        ))
        .unwrap();
        let b = sealed_template(&c, miner, skew);
        c.import_block(b.clone(), b.header.timestamp_ms).unwrap();
        out.push(b);
    }
    out
}

#[test]
fn reorg_to_heavier_fork_gives_exactly_the_state_of_a_node_that_only_saw_it() {
    let payer = SecretKey::generate();
    let genesis = fast_genesis(&[(payer.address(), 1_000_000)]);
    let common_prefix = fork(&genesis, &[], &payer, 3, 0);
    // Fork A: 3 blocks; fork B: 5 blocks (heavier at equal difficulty), different timestamps.
    let a = fork(&genesis, &common_prefix, &payer, 3, 0);
    let b = fork(&genesis, &common_prefix, &payer, 5, 7);
    assert_ne!(a[0].hash(), b[0].hash());

    let mut node = Chain::in_memory(genesis.clone()).unwrap();
    for blk in common_prefix.iter().chain(&a) {
        node.import_block(blk.clone(), u64::MAX / 2).unwrap();
    }
    let a_tip = node.tip().hash;
    let mut outcomes = Vec::new();
    for blk in &b {
        outcomes.push(node.import_block(blk.clone(), u64::MAX / 2).unwrap());
    }
    assert!(matches!(outcomes[0], ImportOutcome::SideChain { .. }));
    assert!(
        matches!(outcomes[2], ImportOutcome::SideChain { .. }),
        "equal weight does not switch"
    );
    assert!(
        matches!(
            outcomes[3],
            ImportOutcome::Reorganized {
                rolled_back: 3,
                applied: 4,
                ..
            }
        ),
        "{:?}",
        outcomes[3]
    );
    assert!(matches!(outcomes[4], ImportOutcome::Extended { .. }));

    let mut only_b = Chain::in_memory(genesis).unwrap();
    for blk in common_prefix.iter().chain(&b) {
        only_b.import_block(blk.clone(), u64::MAX / 2).unwrap();
    }
    assert_eq!(node.tip().hash, only_b.tip().hash);
    assert_eq!(node.tip().total_difficulty, only_b.tip().total_difficulty);
    assert_eq!(node.state(), only_b.state());
    assert_eq!(node.state().root(), only_b.state().root());
    // The index follows the canonical chain.
    for (h, blk) in common_prefix.iter().chain(&b).enumerate() {
        assert_eq!(
            node.block_by_height(h as u64 + 1).unwrap().unwrap().header,
            blk.header
        );
    }
    let a_tx = a[0].txs[0].hash();
    assert!(
        node.tx_info(&a_tx).unwrap().is_none_or(|i| i.pending),
        "fork A's transactions are no longer indexed as mined"
    );
    assert_eq!(
        node.block_by_hash(&a_tip).unwrap().unwrap().header,
        a[2].header,
        "fork A stays stored"
    );
}

#[test]
fn reorg_back_and_forth_and_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let payer = SecretKey::generate();
    let genesis = fast_genesis(&[(payer.address(), 1_000_000)]);
    let a = fork(&genesis, &[], &payer, 2, 0);
    let b = fork(&genesis, &[], &payer, 3, 5);
    let mut a_long = a.clone();
    a_long.extend(fork(&genesis, &a, &payer, 2, 0));
    {
        let mut node = Chain::open(dir.path(), genesis.clone()).unwrap();
        for blk in a.iter().chain(&b).chain(&a_long[2..]) {
            node.import_block(blk.clone(), u64::MAX / 2).unwrap();
        }
        assert_eq!(node.tip().hash, a_long[3].hash());
    }
    let reopened = Chain::open(dir.path(), genesis.clone()).unwrap();
    let mut only_a = Chain::in_memory(genesis.clone()).unwrap();
    for blk in &a_long {
        only_a.import_block(blk.clone(), u64::MAX / 2).unwrap();
    }
    assert_eq!(reopened.tip().hash, only_a.tip().hash);
    assert_eq!(reopened.state(), only_a.state());
    assert_eq!(reopened.store().integrity_check().unwrap(), "ok");

    // Another genesis cannot open this database.
    let other = fast_genesis(&[]);
    assert!(matches!(
        Chain::open(dir.path(), other),
        Err(ChainError::Genesis(_))
    ));
}

#[test]
fn pruned_announcements_are_gone_but_blocks_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let alice = SecretKey::generate();
    let mut genesis = fast_genesis(&[(alice.address(), FUNDS)]);
    genesis.consensus.reorg_horizon = 5;
    genesis.consensus.snapshot_interval = 5;
    let mut chain = Chain::open(dir.path(), genesis).unwrap();
    let miner = SecretKey::generate().address();
    let id = mine_identity(&chain, &alice, Role::Publisher);
    let tx = signed(&chain, &alice, TxBody::RegisterIdentity { identity: id });
    zennet_chain::testkit::include(&mut chain, miner, tx);

    let w = World {
        chain,
        alice: alice.clone(),
        bob: SecretKey::generate(),
        carol: SecretKey::generate(),
        miner,
    };
    let announcement = w.announcement(&alice.address());
    let prune_height = announcement.prune_height;
    let mut chain = w.chain;
    let tx = signed(&chain, &alice, TxBody::AnnounceTask { announcement });
    let task = tx.hash();
    let block = zennet_chain::testkit::include(&mut chain, miner, tx);
    let height = block.header.height;
    assert!(chain.task(&task).is_some());
    let bodies_before = chain.store().stored_bodies().unwrap();

    while chain.tip().header.height < prune_height {
        mine(&mut chain, miner);
    }
    assert!(
        chain.task(&task).is_none(),
        "the task leaves the state at its prune height"
    );
    assert_eq!(
        chain.store().stored_bodies().unwrap(),
        bodies_before,
        "the body stays while its block could still be rolled back"
    );
    let consensus = chain.genesis().consensus.clone();
    while consensus.retain_floor(chain.tip().header.height) < height {
        mine(&mut chain, miner);
    }
    assert_eq!(chain.store().stored_bodies().unwrap(), bodies_before - 1);
    let stored = chain.block_by_height(height).unwrap().unwrap();
    assert!(matches!(stored.txs[0], StoredTx::Pruned { hash } if hash == task));
    assert_eq!(stored.computed_tx_root(), stored.header.tx_root);
    chain.ethash().verify(&stored.header).unwrap();
    let info = chain.tx_info(&task).unwrap().unwrap();
    assert!(info.tx.is_none() && info.location.is_some());

    // Restart: still pruned, still consistent.
    let genesis = chain.genesis().clone();
    drop(chain);
    let chain = Chain::open(dir.path(), genesis).unwrap();
    let stored = chain.block_by_height(height).unwrap().unwrap();
    assert_eq!(stored.computed_tx_root(), stored.header.tx_root);
    assert!(stored.into_block().is_none());
}

#[test]
fn difficulty_retargets_toward_block_time() {
    let w = World::new();
    let g = w.chain.genesis();
    let mut parent = w.chain.tip().header.clone();
    parent.difficulty = 16_000;
    let t = g.consensus.block_time_ms;
    let fast = w
        .chain
        .next_difficulty(&parent, parent.timestamp_ms + t / 4);
    let on_time = w.chain.next_difficulty(&parent, parent.timestamp_ms + t);
    let slow = w
        .chain
        .next_difficulty(&parent, parent.timestamp_ms + t * 5);
    assert!(fast > 16_000, "{fast}");
    assert_eq!(on_time, 16_000);
    assert!(slow < 16_000, "{slow}");
    parent.difficulty = 1;
    assert_eq!(
        w.chain
            .next_difficulty(&parent, parent.timestamp_ms + t * 100),
        g.consensus.min_difficulty
    );
}
