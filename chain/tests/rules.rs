//! Every ledger rule: a valid transaction goes in, and each violation is
//! rejected with its own reason while the state stays untouched.

mod common;

use common::*;
use zennet_chain::crypto::SecretKey;
use zennet_chain::identity::Role;
use zennet_chain::task::ImageChoice;
use zennet_chain::{Hash, MempoolError, Signature, Transaction, TxBody, TxError, Voucher};

#[test]
fn transfer_moves_funds_and_charges_fee_per_byte() {
    let mut w = World::new();
    let to = SecretKey::generate().address();
    let tx = w.tx(&w.alice, TxBody::Transfer { to, amount: 1000 });
    let size = tx.encode().len() as u128;
    let before = w.chain.account(&w.alice.address()).balance;
    zennet_chain::testkit::include(&mut w.chain, w.miner, tx);
    assert_eq!(w.chain.account(&to).balance, 1000);
    assert_eq!(
        w.chain.account(&w.alice.address()).balance,
        before - 1000 - size
    );
    assert_eq!(w.chain.account(&w.alice.address()).nonce, 1);
    let reward = w.chain.genesis().economics.block_reward;
    assert_eq!(w.chain.account(&w.miner).balance, reward + size);
}

#[test]
fn general_rules_reject() {
    let mut w = World::new();
    let to = w.bob.address();
    let root = w.chain.state().root();

    // wrong chain id
    let tx = Transaction {
        chain_id: 1,
        nonce: 0,
        fee_per_byte: 1,
        body: TxBody::Transfer { to, amount: 1 },
    }
    .sign(&w.alice, &w.chain.genesis_hash());
    assert!(matches!(
        reject_reason(w.chain.submit_tx(tx).unwrap_err()),
        TxError::WrongChain {
            expected: 98765,
            got: 1
        }
    ));

    // fee below minimum
    let tx = Transaction {
        chain_id: 98765,
        nonce: 0,
        fee_per_byte: 0,
        body: TxBody::Transfer { to, amount: 1 },
    }
    .sign(&w.alice, &w.chain.genesis_hash());
    assert!(matches!(
        reject_reason(w.chain.submit_tx(tx).unwrap_err()),
        TxError::FeeTooLow { min: 1, got: 0 }
    ));

    // insufficient balance
    assert!(matches!(
        w.rejects(&w.alice.clone(), TxBody::Transfer { to, amount: FUNDS }),
        TxError::InsufficientBalance { .. }
    ));

    // zero amount
    assert_eq!(
        w.rejects(&w.alice.clone(), TxBody::Transfer { to, amount: 0 }),
        TxError::ZeroAmount
    );

    // too large (checked before anything else)
    let mut a = w.announcement(&w.alice.address());
    a.info = "x".repeat(5000);
    assert!(matches!(
        w.rejects(&w.alice.clone(), TxBody::AnnounceTask { announcement: a }),
        TxError::TooLarge { .. }
    ));

    // bad signature
    let mut tx = w.tx(&w.alice, TxBody::Transfer { to, amount: 1 });
    tx.signature = Signature([0; 65]);
    assert!(matches!(
        w.chain.submit_tx(tx).unwrap_err(),
        zennet_chain::ChainError::BadSignature(_)
    ));

    // a stale nonce (already used in the chain)
    w.ok(&w.alice.clone(), TxBody::Transfer { to, amount: 1 });
    let root = {
        let _ = root;
        w.chain.state().root()
    };
    let stale = Transaction {
        chain_id: 98765,
        nonce: 0,
        fee_per_byte: 1,
        body: TxBody::Transfer { to, amount: 2 },
    }
    .sign(&w.alice, &w.chain.genesis_hash());
    assert!(matches!(
        reject_reason(w.chain.submit_tx(stale).unwrap_err()),
        TxError::BadNonce {
            expected: 1,
            got: 0,
            ..
        }
    ));

    // a nonce gap
    let gap = Transaction {
        chain_id: 98765,
        nonce: 5,
        fee_per_byte: 1,
        body: TxBody::Transfer { to, amount: 2 },
    }
    .sign(&w.alice, &w.chain.genesis_hash());
    assert!(matches!(
        w.chain.submit_tx(gap).unwrap_err(),
        zennet_chain::ChainError::Mempool(MempoolError::NonceGap {
            next: 1,
            got: 5,
            ..
        })
    ));

    assert_eq!(
        w.chain.state().root(),
        root,
        "rejections leave the state untouched"
    );
    assert!(w.chain.mempool().is_empty());
}

#[test]
fn mempool_counts_pending_spends() {
    let mut w = World::new();
    let to = w.bob.address();
    let half = FUNDS / 2;
    w.chain
        .submit_tx(w.tx(&w.alice, TxBody::Transfer { to, amount: half }))
        .unwrap();
    // The second spend would only fit without the first.
    assert!(matches!(
        w.rejects(&w.alice.clone(), TxBody::Transfer { to, amount: half }),
        TxError::InsufficientBalance { .. }
    ));
    let dup = Transaction {
        chain_id: 98765,
        nonce: 0,
        fee_per_byte: 1,
        body: TxBody::Transfer { to, amount: half },
    }
    .sign(&w.alice, &w.chain.genesis_hash());
    assert!(matches!(
        w.chain.submit_tx(dup).unwrap_err(),
        zennet_chain::ChainError::Mempool(MempoolError::Duplicate(_))
    ));
}

#[test]
fn identity_rules() {
    let mut w = World::new();
    let alice = w.alice.clone();
    let mut id = mine_identity(&w.chain, &alice, Role::Publisher);

    // someone else's key
    assert_eq!(
        w.rejects(
            &w.bob.clone(),
            TxBody::RegisterIdentity {
                identity: id.clone()
            }
        ),
        TxError::IdentityKeyMismatch(w.bob.address())
    );

    // proof of work not met
    let good_nonce = id.nonce;
    id.nonce += 1;
    while id.meets(&w.chain.genesis().pow) {
        id.nonce += 1;
    }
    assert!(matches!(
        w.rejects(
            &alice,
            TxBody::RegisterIdentity {
                identity: id.clone()
            }
        ),
        TxError::IdentityPow {
            role: "publisher",
            ..
        }
    ));

    id.nonce = good_nonce;
    w.ok(
        &alice,
        TxBody::RegisterIdentity {
            identity: id.clone(),
        },
    );
    assert!(
        w.chain
            .identity(&alice.address(), Role::Publisher)
            .is_some()
    );
    assert!(w.chain.identity(&alice.address(), Role::Node).is_none());

    // twice
    assert_eq!(
        w.rejects(&alice, TxBody::RegisterIdentity { identity: id }),
        TxError::IdentityExists(alice.address(), "publisher")
    );
    // a node identity is separate
    w.register(&alice, Role::Node);
}

#[test]
fn announcement_rules() {
    let mut w = World::new();
    let alice = w.alice.clone();

    // no publisher identity yet
    let a = w.announcement(&alice.address());
    assert_eq!(
        w.rejects(&alice, TxBody::AnnounceTask { announcement: a }),
        TxError::NoIdentity(alice.address(), "publisher")
    );
    w.register(&alice, Role::Publisher);

    // oversized (under the tx limit, over the announcement cap)
    let mut a = w.announcement(&alice.address());
    a.vm.images = (0..4)
        .map(|i| ImageChoice {
            id: format!("{i}").repeat(32),
            hash: Hash([i; 32]),
            file: Some(zennet_chain::FileHash([i; 20])),
        })
        .collect();
    a.info = "i".repeat(96);
    a.endpoint = format!("{}:22", "h".repeat(60));
    assert!(matches!(
        w.rejects(&alice, TxBody::AnnounceTask { announcement: a }),
        TxError::AnnouncementTooLarge { max: 512, .. }
    ));

    // each field rule
    let base = w.announcement(&alice.address());
    let field_cases: Vec<fn(&mut zennet_chain::TaskAnnouncement)> = vec![
        |a| a.vm.images.clear(),
        |a| a.vm.cores.clear(),
        |a| a.vm.cores[0].cores = 0,
        |a| a.vm.memory_mib_per_core = 0,
        |a| a.min_instances = 0,
        |a| a.max_instances = 0,
        |a| a.endpoint = "not-an-endpoint".into(),
        |a| a.lease_min_secs = a.lease_max_secs + 1,
        |a| a.payout_interval_secs = 0,
        |a| a.acceptance_window = 0,
        |a| a.acceptance_difficulty = 0,
        |a| a.info = "u".repeat(97),
        |a| a.acceptance_window = 10_001,
        |a| a.prune_height = 1,
        |a| a.prune_height = 1_000_000,
    ];
    for (i, change) in field_cases.iter().enumerate() {
        let mut a = base.clone();
        change(&mut a);
        solve_announcement(&w.chain, &alice.address(), &mut a);
        match w.rejects(&alice, TxBody::AnnounceTask { announcement: a }) {
            TxError::BadAnnouncement(_) => {}
            other => panic!("case {i}: expected BadAnnouncement, got {other:?}"),
        }
    }

    // proof of work
    let mut a = base.clone();
    while a.pow_hash(&alice.address()) == base.pow_hash(&alice.address())
        || zennet_chain::pow::meets(&a.pow_hash(&alice.address()), 4)
    {
        a.pow_nonce += 1;
    }
    assert_eq!(
        w.rejects(&alice, TxBody::AnnounceTask { announcement: a }),
        TxError::TaskPow(4)
    );

    // and a valid one becomes an open task keyed by its tx hash
    let id = w.ok(
        &alice,
        TxBody::AnnounceTask {
            announcement: base.clone(),
        },
    );
    let task = w.chain.task(&id).unwrap();
    assert_eq!(task.publisher, alice.address());
    assert_eq!(task.announcement, base);
}

#[test]
fn acceptance_and_cancel_rules() {
    let mut w = World::new();
    let (alice, bob, carol) = (w.alice.clone(), w.bob.clone(), w.carol.clone());
    w.register(&alice, Role::Publisher);
    let a = w.announcement(&alice.address());
    let task = w.ok(&alice, TxBody::AnnounceTask { announcement: a });

    // no node identity
    let acc = w.acceptance(&bob.address(), task);
    assert_eq!(
        w.rejects(&bob, TxBody::AcceptTask { acceptance: acc }),
        TxError::NoIdentity(bob.address(), "node")
    );
    w.register(&bob, Role::Node);
    w.register(&carol, Role::Node);

    // unknown task
    let mut acc = w.acceptance(&bob.address(), task);
    acc.task = Hash([9; 32]);
    assert_eq!(
        w.rejects(&bob, TxBody::AcceptTask { acceptance: acc }),
        TxError::UnknownTask(Hash([9; 32]))
    );

    // configuration not offered / too slow
    let mut acc = w.acceptance(&bob.address(), task);
    acc.image = Hash([0x99; 32]);
    solve_acceptance(&bob.address(), 4, &mut acc);
    assert!(matches!(
        w.rejects(&bob, TxBody::AcceptTask { acceptance: acc }),
        TxError::BadAcceptance(_)
    ));
    let mut acc = w.acceptance(&bob.address(), task);
    acc.cores = 3;
    solve_acceptance(&bob.address(), 4, &mut acc);
    assert!(matches!(
        w.rejects(&bob, TxBody::AcceptTask { acceptance: acc }),
        TxError::BadAcceptance(_)
    ));
    let mut acc = w.acceptance(&bob.address(), task);
    acc.compute_score = 99;
    solve_acceptance(&bob.address(), 4, &mut acc);
    assert!(matches!(
        w.rejects(&bob, TxBody::AcceptTask { acceptance: acc }),
        TxError::BadAcceptance(_)
    ));
    // A node claiming more compute than the task pays for (4e9 per core):
    // the chain refuses it, so no publisher's bound ever rests on it.
    let mut acc = w.acceptance(&bob.address(), task);
    acc.compute_score = 4_000_000_000;
    solve_acceptance(&bob.address(), 4, &mut acc);
    assert!(matches!(
        w.rejects(&bob, TxBody::AcceptTask { acceptance: acc }),
        TxError::BadAcceptance(m) if m.contains("above the task's maximum")
    ));

    // proof of work below the task's target
    let mut acc = w.acceptance(&bob.address(), task);
    acc.pow_nonce += 1;
    while zennet_chain::pow::meets(&acc.pow_hash(&bob.address()), 4) {
        acc.pow_nonce += 1;
    }
    assert_eq!(
        w.rejects(&bob, TxBody::AcceptTask { acceptance: acc }),
        TxError::AcceptancePow(4)
    );

    // accepted, then not twice
    let acc = w.acceptance(&bob.address(), task);
    w.ok(
        &bob,
        TxBody::AcceptTask {
            acceptance: acc.clone(),
        },
    );
    assert_eq!(
        w.chain.task(&task).unwrap().acceptances[0].node,
        bob.address()
    );
    assert_eq!(
        w.chain.task(&task).unwrap().acceptances[0].ssh_key_fingerprint,
        Hash([0x33; 32])
    );
    let again = w.acceptance(&bob.address(), task);
    assert!(matches!(
        w.rejects(&bob, TxBody::AcceptTask { acceptance: again }),
        TxError::AlreadyAccepted { .. }
    ));

    // cancel: only the publisher, only once; then no acceptances
    assert!(matches!(
        w.rejects(&bob, TxBody::CancelTask { task }),
        TxError::NotAllowed { .. }
    ));
    w.ok(&alice, TxBody::CancelTask { task });
    assert_eq!(
        w.rejects(&alice, TxBody::CancelTask { task }),
        TxError::TaskCancelled(task)
    );
    let acc = w.acceptance(&carol.address(), task);
    assert_eq!(
        w.rejects(&carol, TxBody::AcceptTask { acceptance: acc }),
        TxError::TaskCancelled(task)
    );
}

#[test]
fn acceptance_window_and_instance_limit() {
    let mut w = World::new();
    let (alice, bob, carol) = (w.alice.clone(), w.bob.clone(), w.carol.clone());
    w.register(&alice, Role::Publisher);
    w.register(&bob, Role::Node);
    w.register(&carol, Role::Node);
    let mut a = w.announcement(&alice.address());
    a.max_instances = 1;
    solve_announcement(&w.chain, &alice.address(), &mut a);
    let full_task = w.ok(&alice, TxBody::AnnounceTask { announcement: a });
    let acc = w.acceptance(&bob.address(), full_task);
    w.ok(&bob, TxBody::AcceptTask { acceptance: acc });
    let acc = w.acceptance(&carol.address(), full_task);
    assert_eq!(
        w.rejects(&carol, TxBody::AcceptTask { acceptance: acc }),
        TxError::TaskFull(full_task)
    );

    let a = w.announcement(&alice.address());
    let window = a.acceptance_window;
    let task = w.ok(&alice, TxBody::AnnounceTask { announcement: a });
    let acc = w.acceptance(&carol.address(), task);
    w.mine_blocks(window);
    assert!(matches!(
        w.rejects(&carol, TxBody::AcceptTask { acceptance: acc }),
        TxError::TaskExpired { .. }
    ));
}

fn voucher(w: &World, channel: Hash, seq: u64, cumulative: u128) -> zennet_chain::SignedVoucher {
    Voucher {
        chain_id: 98765,
        channel,
        seq,
        cumulative,
    }
    .sign(&w.alice, &w.chain.genesis_hash())
}

#[test]
fn channel_lifecycle_with_claim_in_challenge_period_and_reclaim_after() {
    let mut w = World::new();
    let (alice, bob) = (w.alice.clone(), w.bob.clone());
    let expiry = w.height() + 200;
    let open = TxBody::ChannelOpen {
        payee: bob.address(),
        deposit: 10_000,
        expiry_height: expiry,
    };
    let channel = w.ok(&alice, open);
    let c = w.chain.channel(&channel).unwrap();
    assert_eq!(
        (c.payer, c.payee, c.deposit, c.claimed),
        (alice.address(), bob.address(), 10_000, 0)
    );

    // top-up adds deposit and may push the expiry later
    w.ok(
        &alice,
        TxBody::ChannelTopUp {
            channel,
            amount: 5_000,
            expiry_height: expiry + 10,
        },
    );
    assert_eq!(w.chain.channel(&channel).unwrap().deposit, 15_000);

    // a claim pays the difference and keeps the channel open
    let bob_before = w.chain.account(&bob.address()).balance;
    let claim = w.tx(
        &bob,
        TxBody::ChannelClaim {
            voucher: voucher(&w, channel, 1, 4_000),
        },
    );
    let claim_fee = claim.encode().len() as u128;
    zennet_chain::testkit::include(&mut w.chain, w.miner, claim);
    assert_eq!(
        w.chain.account(&bob.address()).balance,
        bob_before + 4_000 - claim_fee
    );
    let claim = w.tx(
        &bob,
        TxBody::ChannelClaim {
            voucher: voucher(&w, channel, 3, 6_000),
        },
    );
    let claim_fee2 = claim.encode().len() as u128;
    zennet_chain::testkit::include(&mut w.chain, w.miner, claim);
    assert_eq!(
        w.chain.account(&bob.address()).balance,
        bob_before + 6_000 - claim_fee - claim_fee2
    );
    assert_eq!(w.chain.channel(&channel).unwrap().claimed, 6_000);

    // payer settles: the challenge period starts
    w.ok(&alice, TxBody::ChannelSettle { channel });
    let settle_at = w.chain.channel(&channel).unwrap().settle_at.unwrap();
    assert_eq!(
        settle_at,
        w.height() + w.chain.genesis().economics.channel_challenge_period
    );
    assert_eq!(
        w.rejects(&alice, TxBody::ChannelSettle { channel }),
        TxError::AlreadySettling(channel)
    );
    assert_eq!(
        w.rejects(&alice, TxBody::ChannelReclaim { channel }),
        TxError::ReclaimTooEarly {
            channel,
            height: settle_at
        }
    );
    // no top-up while settling
    assert_eq!(
        w.rejects(
            &alice,
            TxBody::ChannelTopUp {
                channel,
                amount: 1,
                expiry_height: expiry + 10
            }
        ),
        TxError::AlreadySettling(channel)
    );

    // the payee can still claim during the challenge period
    w.ok(
        &bob,
        TxBody::ChannelClaim {
            voucher: voucher(&w, channel, 4, 9_000),
        },
    );
    assert_eq!(w.chain.channel(&channel).unwrap().claimed, 9_000);

    // after it, claims fail and the payer reclaims the rest
    while w.height() + 1 < settle_at {
        w.mine_blocks(1);
    }
    let late = voucher(&w, channel, 5, 10_000);
    assert!(matches!(
        w.rejects(&bob, TxBody::ChannelClaim { voucher: late }),
        TxError::ChannelExpired {
            what: "settlement",
            ..
        }
    ));
    let alice_before = w.chain.account(&alice.address()).balance;
    let reclaim = w.tx(&alice, TxBody::ChannelReclaim { channel });
    let fee = reclaim.encode().len() as u128;
    zennet_chain::testkit::include(&mut w.chain, w.miner, reclaim);
    assert_eq!(
        w.chain.account(&alice.address()).balance,
        alice_before + 6_000 - fee
    );
    assert!(w.chain.channel(&channel).is_none());
    assert_eq!(
        w.rejects(&alice, TxBody::ChannelReclaim { channel }),
        TxError::UnknownChannel(channel)
    );
}

#[test]
fn channel_close_by_payee_refunds_the_rest() {
    let mut w = World::new();
    let (alice, bob) = (w.alice.clone(), w.bob.clone());
    let channel = w.ok(
        &alice,
        TxBody::ChannelOpen {
            payee: bob.address(),
            deposit: 1_000,
            expiry_height: 500,
        },
    );
    let alice_before = w.chain.account(&alice.address()).balance;
    let bob_before = w.chain.account(&bob.address()).balance;
    let close = w.tx(
        &bob,
        TxBody::ChannelClose {
            channel,
            voucher: Some(voucher(&w, channel, 1, 300)),
        },
    );
    let fee = close.encode().len() as u128;
    zennet_chain::testkit::include(&mut w.chain, w.miner, close);
    assert_eq!(
        w.chain.account(&bob.address()).balance,
        bob_before + 300 - fee
    );
    assert_eq!(
        w.chain.account(&alice.address()).balance,
        alice_before + 700
    );
    assert!(w.chain.channel(&channel).is_none());
}

#[test]
fn channel_rules_reject() {
    let mut w = World::new();
    let (alice, bob, carol) = (w.alice.clone(), w.bob.clone(), w.carol.clone());
    let h = w.height();
    assert!(matches!(
        w.rejects(
            &alice,
            TxBody::ChannelOpen {
                payee: alice.address(),
                deposit: 1,
                expiry_height: h + 10
            }
        ),
        TxError::BadChannel(_)
    ));
    assert_eq!(
        w.rejects(
            &alice,
            TxBody::ChannelOpen {
                payee: bob.address(),
                deposit: 0,
                expiry_height: h + 10
            }
        ),
        TxError::ZeroAmount
    );
    assert!(matches!(
        w.rejects(
            &alice,
            TxBody::ChannelOpen {
                payee: bob.address(),
                deposit: 1,
                expiry_height: h + 1
            }
        ),
        TxError::BadChannel(_)
    ));
    let expiry = h + 12;
    let channel = w.ok(
        &alice,
        TxBody::ChannelOpen {
            payee: bob.address(),
            deposit: 1_000,
            expiry_height: expiry,
        },
    );

    // top-up: payer only, expiry never earlier, must change something
    assert!(matches!(
        w.rejects(
            &carol,
            TxBody::ChannelTopUp {
                channel,
                amount: 1,
                expiry_height: expiry
            }
        ),
        TxError::NotAllowed { .. }
    ));
    assert!(matches!(
        w.rejects(
            &alice,
            TxBody::ChannelTopUp {
                channel,
                amount: 1,
                expiry_height: expiry - 1
            }
        ),
        TxError::BadChannel(_)
    ));
    assert!(matches!(
        w.rejects(
            &alice,
            TxBody::ChannelTopUp {
                channel,
                amount: 0,
                expiry_height: expiry
            }
        ),
        TxError::BadChannel(_)
    ));

    // claims: payee only, and every voucher rule
    let good = voucher(&w, channel, 1, 100);
    assert!(matches!(
        w.rejects(
            &carol,
            TxBody::ChannelClaim {
                voucher: good.clone()
            }
        ),
        TxError::NotAllowed { .. }
    ));
    let mut wrong_chain = Voucher {
        chain_id: 1,
        channel,
        seq: 1,
        cumulative: 100,
    }
    .sign(&alice, &w.chain.genesis_hash());
    assert!(matches!(
        w.rejects(
            &bob,
            TxBody::ChannelClaim {
                voucher: wrong_chain.clone()
            }
        ),
        TxError::BadVoucher(_)
    ));
    wrong_chain.voucher.chain_id = 98765; // signature no longer matches the payer
    assert!(matches!(
        w.rejects(
            &bob,
            TxBody::ChannelClaim {
                voucher: wrong_chain
            }
        ),
        TxError::BadVoucher(_)
    ));
    let other_signer = Voucher {
        chain_id: 98765,
        channel,
        seq: 1,
        cumulative: 100,
    }
    .sign(&carol, &w.chain.genesis_hash());
    assert!(matches!(
        w.rejects(
            &bob,
            TxBody::ChannelClaim {
                voucher: other_signer
            }
        ),
        TxError::BadVoucher(_)
    ));
    let over = voucher(&w, channel, 1, 1_001);
    assert!(matches!(
        w.rejects(&bob, TxBody::ChannelClaim { voucher: over }),
        TxError::BadVoucher(_)
    ));
    let mut other_channel = voucher(&w, channel, 1, 100);
    other_channel.voucher.channel = Hash([5; 32]);
    assert_eq!(
        w.rejects(
            &bob,
            TxBody::ChannelClaim {
                voucher: other_channel
            }
        ),
        TxError::UnknownChannel(Hash([5; 32]))
    );
    w.ok(&bob, TxBody::ChannelClaim { voucher: good });
    let same_seq = voucher(&w, channel, 1, 200);
    assert!(matches!(
        w.rejects(&bob, TxBody::ChannelClaim { voucher: same_seq }),
        TxError::BadVoucher(_)
    ));
    let same_amount = voucher(&w, channel, 2, 100);
    assert!(matches!(
        w.rejects(
            &bob,
            TxBody::ChannelClaim {
                voucher: same_amount
            }
        ),
        TxError::BadVoucher(_)
    ));

    // settle/reclaim/close: right party only
    assert!(matches!(
        w.rejects(&bob, TxBody::ChannelSettle { channel }),
        TxError::NotAllowed { .. }
    ));
    assert!(matches!(
        w.rejects(&bob, TxBody::ChannelReclaim { channel }),
        TxError::NotAllowed { .. }
    ));
    assert!(matches!(
        w.rejects(
            &alice,
            TxBody::ChannelClose {
                channel,
                voucher: None
            }
        ),
        TxError::NotAllowed { .. }
    ));

    // past expiry: no claims, but the payer may reclaim without settling
    while w.height() + 1 < expiry {
        w.mine_blocks(1);
    }
    let late = voucher(&w, channel, 2, 200);
    assert!(matches!(
        w.rejects(&bob, TxBody::ChannelClaim { voucher: late }),
        TxError::ChannelExpired { what: "expiry", .. }
    ));
    w.ok(&alice, TxBody::ChannelReclaim { channel });
    assert!(w.chain.channel(&channel).is_none());
}
