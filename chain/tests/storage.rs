//! Storage tasks on chain: every rule, played from the cheating side
//! (over-accepting, accepting twice, the owner as its own replica, a
//! stranger releasing, a wrong task id…), pruning, and the state root and
//! snapshots covering the records.

mod common;

use common::{World, mine_identity};
use zennet_chain::identity::Role;
use zennet_chain::storage::MAX_REPLACEMENTS;
use zennet_chain::{
    Address, FileHash, Hash, SecretKey, StorageAcceptance, StorageAnnouncement, TxBody, TxError,
    pow,
};

/// A valid storage announcement from `owner` as of the next block.
fn announcement(w: &World, owner: &Address) -> StorageAnnouncement {
    let mut a = StorageAnnouncement {
        file: FileHash([0xf1; 20]),
        size: 3 << 20,
        merkle_root: Hash([0x77; 32]),
        replicas: 2,
        price_per_gib_hour: 1_000,
        ends_at_ms: 1_800_000_000_000,
        challenge_secs: 60,
        acceptance_window: 20,
        acceptance_difficulty: 4,
        prune_height: w.height() + 1 + 40,
        pow_nonce: 0,
    };
    solve(w, owner, &mut a);
    a
}

fn solve(w: &World, owner: &Address, a: &mut StorageAnnouncement) {
    let d = w.chain.genesis().pow.min_announcement_difficulty;
    a.pow_nonce = pow::search(0, u64::MAX, d, |n| {
        a.pow_nonce = n;
        a.pow_hash(owner)
    })
    .unwrap();
}

fn acceptance(node: &Address, task: Hash, difficulty: u64) -> StorageAcceptance {
    let mut a = StorageAcceptance { task, pow_nonce: 0 };
    a.pow_nonce = pow::search(0, u64::MAX, difficulty, |n| {
        a.pow_nonce = n;
        a.pow_hash(node)
    })
    .unwrap();
    a
}

fn accept(node: &SecretKey, task: Hash) -> TxBody {
    TxBody::AcceptStorage {
        acceptance: acceptance(&node.address(), task, 4),
    }
}

/// A world where alice is a publisher and bob and carol are nodes.
fn world() -> World {
    let mut w = World::new();
    let (alice, bob, carol) = (w.alice.clone(), w.bob.clone(), w.carol.clone());
    w.register(&alice, Role::Publisher);
    w.register(&bob, Role::Node);
    w.register(&carol, Role::Node);
    w
}

/// A funded node with a node identity.
fn new_node(w: &mut World) -> SecretKey {
    let k = SecretKey::generate();
    let alice = w.alice.clone();
    w.ok(
        &alice,
        TxBody::Transfer {
            to: k.address(),
            amount: 1_000_000,
        },
    );
    let id = mine_identity(&w.chain, &k, Role::Node);
    w.ok(&k, TxBody::RegisterIdentity { identity: id });
    k
}

#[test]
fn announcement_rules() {
    let mut w = World::new();
    let alice = w.alice.clone();
    let a = announcement(&w, &alice.address());
    assert_eq!(
        w.rejects(
            &alice,
            TxBody::AnnounceStorage {
                announcement: a.clone()
            }
        ),
        TxError::NoIdentity(alice.address(), "publisher")
    );
    w.register(&alice, Role::Publisher);

    let base = announcement(&w, &alice.address());
    let cases: Vec<fn(&mut StorageAnnouncement)> = vec![
        |a| a.size = 0,
        |a| a.replicas = 0,
        |a| a.replicas = 17,
        |a| a.challenge_secs = 0,
        |a| a.ends_at_ms = 0,
        |a| a.acceptance_window = 0,
        |a| a.acceptance_difficulty = 0,
        |a| a.acceptance_window = 10_001,
        |a| a.prune_height = 1,
        |a| a.prune_height = 1_000_000,
    ];
    for (i, change) in cases.iter().enumerate() {
        let mut a = base.clone();
        change(&mut a);
        solve(&w, &alice.address(), &mut a);
        match w.rejects(&alice, TxBody::AnnounceStorage { announcement: a }) {
            TxError::BadStorage(_) => {}
            other => panic!("case {i}: expected BadStorage, got {other:?}"),
        }
    }
    // Proof of work below the network's minimum.
    let mut a = base.clone();
    a.pow_nonce += 1;
    while pow::meets(&a.pow_hash(&alice.address()), 4) {
        a.pow_nonce += 1;
    }
    assert_eq!(
        w.rejects(&alice, TxBody::AnnounceStorage { announcement: a }),
        TxError::StoragePow(4)
    );
    // The work is bound to its sender: bob cannot replay alice's.
    let bob = w.bob.clone();
    w.register(&bob, Role::Publisher);
    let stolen = base.clone();
    if !pow::meets(&stolen.pow_hash(&bob.address()), 4) {
        assert_eq!(
            w.rejects(
                &bob,
                TxBody::AnnounceStorage {
                    announcement: stolen
                }
            ),
            TxError::StoragePow(4)
        );
    }
    let task = w.ok(
        &alice,
        TxBody::AnnounceStorage {
            announcement: base.clone(),
        },
    );
    let rec = w.chain.storage(&task).unwrap();
    assert_eq!(rec.owner, alice.address());
    assert_eq!(rec.announcement, base);
    assert!(rec.replicas.is_empty());
}

#[test]
fn acceptance_rules_refuse_every_cheat() {
    let mut w = world();
    let (alice, bob, carol) = (w.alice.clone(), w.bob.clone(), w.carol.clone());
    let a = announcement(&w, &alice.address());
    let task = w.ok(&alice, TxBody::AnnounceStorage { announcement: a });

    // A wrong task id.
    let wrong = Hash([9; 32]);
    assert_eq!(
        w.rejects(&bob, accept(&bob, wrong)),
        TxError::UnknownStorage(wrong)
    );
    // A VM task's id is not a storage task.
    assert_eq!(
        w.rejects(&bob, accept(&bob, Hash::ZERO)),
        TxError::UnknownStorage(Hash::ZERO)
    );
    // The owner as its own replica (it would pay itself for nothing).
    let id = mine_identity(&w.chain, &alice, Role::Node);
    w.ok(&alice, TxBody::RegisterIdentity { identity: id });
    assert_eq!(
        w.rejects(&alice, accept(&alice, task)),
        TxError::OwnStorage(task)
    );
    // No node identity.
    let stranger = SecretKey::generate();
    w.ok(
        &alice,
        TxBody::Transfer {
            to: stranger.address(),
            amount: 1_000_000,
        },
    );
    assert_eq!(
        w.rejects(&stranger, accept(&stranger, task)),
        TxError::NoIdentity(stranger.address(), "node")
    );
    // Proof of work below the task's difficulty.
    let mut weak = acceptance(&bob.address(), task, 4);
    weak.pow_nonce += 1;
    while pow::meets(&weak.pow_hash(&bob.address()), 4) {
        weak.pow_nonce += 1;
    }
    assert_eq!(
        w.rejects(&bob, TxBody::AcceptStorage { acceptance: weak }),
        TxError::StorageAcceptancePow(4)
    );
    // Carol's work does not count for bob.
    let carols = acceptance(&carol.address(), task, 4);
    if !pow::meets(&carols.pow_hash(&bob.address()), 4) {
        assert_eq!(
            w.rejects(&bob, TxBody::AcceptStorage { acceptance: carols }),
            TxError::StorageAcceptancePow(4)
        );
    }

    // Two replicas; the record carries each node's identity key.
    w.ok(&bob, accept(&bob, task));
    assert_eq!(
        w.rejects(&bob, accept(&bob, task)),
        TxError::AlreadyReplica {
            task,
            node: bob.address()
        }
    );
    w.ok(&carol, accept(&carol, task));
    let rec = w.chain.storage(&task).unwrap();
    assert_eq!(rec.active().count(), 2);
    assert_eq!(
        rec.replica(&bob.address()).unwrap().public_key,
        bob.public_key()
    );
    // Over-accepting: a third node finds it full.
    let dave = new_node(&mut w);
    assert_eq!(
        w.rejects(&dave, accept(&dave, task)),
        TxError::StorageFull(task)
    );
}

#[test]
fn only_the_owner_releases_and_a_released_node_does_not_return() {
    let mut w = world();
    let (alice, bob, carol) = (w.alice.clone(), w.bob.clone(), w.carol.clone());
    let a = announcement(&w, &alice.address());
    let task = w.ok(&alice, TxBody::AnnounceStorage { announcement: a });
    w.ok(&bob, accept(&bob, task));
    w.ok(&carol, accept(&carol, task));
    let release = |node: &SecretKey| TxBody::ReleaseStorage {
        task,
        node: node.address(),
    };

    // A stranger (or a replica, or another) cannot release.
    for cheat in [&carol, &bob] {
        assert_eq!(
            w.rejects(cheat, release(&bob)),
            TxError::NotAllowed {
                expected: alice.address(),
                got: cheat.address()
            }
        );
    }
    // Releasing a node that holds no replica, or a wrong task.
    let dave = new_node(&mut w);
    assert_eq!(
        w.rejects(&alice, release(&dave)),
        TxError::NotAReplica {
            task,
            node: dave.address()
        }
    );
    assert_eq!(
        w.rejects(
            &alice,
            TxBody::ReleaseStorage {
                task: Hash([5; 32]),
                node: bob.address()
            }
        ),
        TxError::UnknownStorage(Hash([5; 32]))
    );

    // The owner releases bob: his slot is free for dave, not for bob.
    w.ok(&alice, release(&bob));
    let rec = w.chain.storage(&task).unwrap();
    assert_eq!(
        rec.replica(&bob.address()).unwrap().released_at,
        Some(w.height())
    );
    assert!(!rec.holds(&bob.address()));
    assert_eq!(
        w.rejects(&alice, release(&bob)),
        TxError::NotAReplica {
            task,
            node: bob.address()
        },
        "not released twice"
    );
    assert_eq!(
        w.rejects(&bob, accept(&bob, task)),
        TxError::AlreadyReplica {
            task,
            node: bob.address()
        }
    );
    w.ok(&dave, accept(&dave, task));
    let rec = w.chain.storage(&task).unwrap();
    let active: Vec<Address> = rec.active().map(|r| r.node).collect();
    assert_eq!(active, vec![carol.address(), dave.address()]);
}

#[test]
fn replacements_are_bounded_so_the_record_stays_small() {
    let mut w = world();
    let alice = w.alice.clone();
    let mut a = announcement(&w, &alice.address());
    a.replicas = 1;
    a.acceptance_window = 1000;
    a.prune_height = w.height() + 1 + 2000;
    solve(&w, &alice.address(), &mut a);
    let task = w.ok(&alice, TxBody::AnnounceStorage { announcement: a });
    for _ in 0..=MAX_REPLACEMENTS {
        let n = new_node(&mut w);
        w.ok(&n, accept(&n, task));
        w.ok(
            &alice,
            TxBody::ReleaseStorage {
                task,
                node: n.address(),
            },
        );
    }
    let n = new_node(&mut w);
    assert_eq!(
        w.rejects(&n, accept(&n, task)),
        TxError::StorageExhausted {
            task,
            max: 1 + MAX_REPLACEMENTS
        }
    );
}

#[test]
fn cancel_closes_it_and_the_window_and_prune_height_end_it() {
    let mut w = world();
    let (alice, bob, carol) = (w.alice.clone(), w.bob.clone(), w.carol.clone());
    let a = announcement(&w, &alice.address());
    let task = w.ok(&alice, TxBody::AnnounceStorage { announcement: a });
    assert!(matches!(
        w.rejects(&bob, TxBody::CancelStorage { task }),
        TxError::NotAllowed { .. }
    ));
    w.ok(&alice, TxBody::CancelStorage { task });
    assert_eq!(
        w.rejects(&alice, TxBody::CancelStorage { task }),
        TxError::StorageCancelled(task)
    );
    assert_eq!(
        w.rejects(&bob, accept(&bob, task)),
        TxError::StorageCancelled(task)
    );

    // The acceptance window closes; the record leaves at the prune height.
    let a = announcement(&w, &alice.address());
    let (window, prune) = (a.acceptance_window, a.prune_height);
    let task = w.ok(&alice, TxBody::AnnounceStorage { announcement: a });
    let announced = w.height();
    w.ok(&bob, accept(&bob, task));
    while w.height() < announced + window {
        w.mine_blocks(1);
    }
    assert_eq!(
        w.rejects(&carol, accept(&carol, task)),
        TxError::StorageClosed {
            task,
            closed_at: announced + window
        }
    );
    while w.height() < prune - 1 {
        w.mine_blocks(1);
    }
    assert!(w.chain.storage(&task).is_some());
    w.mine_blocks(1);
    assert!(w.chain.storage(&task).is_none(), "pruned at its height");
    assert_eq!(
        w.rejects(
            &alice,
            TxBody::ReleaseStorage {
                task,
                node: bob.address()
            }
        ),
        TxError::UnknownStorage(task)
    );
}

#[test]
fn the_state_root_and_a_snapshot_cover_storage_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = world();
    let (alice, bob, carol) = (w.alice.clone(), w.bob.clone(), w.carol.clone());
    let a = announcement(&w, &alice.address());
    let task = w.ok(&alice, TxBody::AnnounceStorage { announcement: a });
    let root_before = w.chain.tip().header.state_root;
    w.ok(&bob, accept(&bob, task));
    let after_accept = w.chain.tip().header.state_root;
    assert_ne!(root_before, after_accept);
    w.ok(&carol, accept(&carol, task));
    w.ok(
        &alice,
        TxBody::ReleaseStorage {
            task,
            node: bob.address(),
        },
    );
    let rec = w.chain.storage(&task).unwrap();

    // The snapshot file carries the record; a chain installed from it
    // has the same state root and the same record.
    let mut bytes = Vec::new();
    let height = w.height();
    let info = w.chain.export_snapshot(Some(height), &mut bytes).unwrap();
    assert_eq!(info.state_root, w.chain.state().root());
    let mut fresh = zennet_chain::Chain::open(dir.path(), w.chain.genesis().clone()).unwrap();
    fresh
        .import_snapshot(&mut &bytes[..], u64::MAX / 2)
        .unwrap();
    assert_eq!(fresh.state().root(), w.chain.state().root());
    assert_eq!(fresh.storage(&task), Some(rec));
}
