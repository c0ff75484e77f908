//! Paid replicas over real libp2p swarms on loopback, in one process, on
//! an in-memory chain ([`zennet_chain::testkit::TestChain`]) and the
//! file network's payment channels: the owner announces a storage task,
//! storage nodes accept it on chain, fetch the parts (for free: the owner
//! sells the file at a price they do not pay), pass challenges and are paid
//! per pass; a node whose stored data rots fails its next challenge, is
//! released on chain and paid no more, and the spare node takes its slot.
//! A node whose policy finds the price too low never accepts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zennet_chain::testkit::{TestChain, TestLedger};
use zennet_chain::{Address, Amount, Ledger, Role, SecretKey};
use zennet_fs::api::{ReplicaView, StoreRequest};
use zennet_fs::channels::{ChannelTerms, Channels};
use zennet_fs::storage::{Storage, StoreConfig};
use zennet_fs::{FileId, Fs, FsConfig};
use zennet_net::{Multiaddr, NetHandle};
use zennet_pay::MemoryStore;

mod common;

use common::miner;

/// One base unit per GiB-second.
const PRICE: Amount = 3600;

struct Node {
    net: NetHandle,
    key: SecretKey,
    addr: Multiaddr,
    ledger: Arc<TestLedger>,
}

async fn node(chain: &Arc<TestChain>, key: SecretKey, bootstrap: &[Multiaddr]) -> Node {
    let common::Node { net, key, addr } = common::node_keyed(key, bootstrap).await;
    Node {
        net,
        ledger: chain.ledger(key.clone()),
        key,
        addr,
    }
}

fn start(n: &Node, dir: &Path, store: StoreConfig) -> (Arc<Fs>, Arc<Storage>) {
    let pay = Arc::new(Channels::new(
        n.ledger.clone(),
        n.key.clone(),
        Arc::new(MemoryStore::new()),
        ChannelTerms {
            min_deposit: 0,
            expiry_step_blocks: 1000,
            mined_within: Duration::from_secs(30),
            claim_margin_blocks: 5,
        },
    ));
    let mut config = FsConfig::new(
        dir.to_path_buf(),
        n.ledger.chain_id(),
        n.ledger.genesis_hash(),
    );
    // The owner sells the file; storage nodes fetch paying nothing.
    config.price_per_mib = 1000;
    let fs = Fs::start(config, n.net.clone(), n.key.clone(), pay.clone(), pay).unwrap();
    let storage = Storage::start(fs.clone(), n.ledger.clone(), store).unwrap();
    (fs, storage)
}

async fn until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    for _ in 0..secs * 10 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cond(), "not within {secs} s: {what}");
}

fn replicas(owner: &Storage, file: &FileId) -> Vec<ReplicaView> {
    owner.view(Some(file)).tasks[0].replicas.clone()
}

fn replica(owner: &Storage, file: &FileId, node: &Address) -> ReplicaView {
    replicas(owner, file)
        .into_iter()
        .find(|r| r.node == *node)
        .expect("a replica of that node")
}

fn holding(owner: &Storage, file: &FileId, passed: u32) -> Vec<Address> {
    replicas(owner, file)
        .iter()
        .filter(|r| r.state == "holding" && r.passed >= passed)
        .map(|r| r.node)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_filled_challenged_paid_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<SecretKey> = (0..5).map(|_| SecretKey::generate()).collect();
    let funded: Vec<_> = keys.iter().map(|k| (k.address(), 1u128 << 60)).collect();
    let chain = TestChain::new(&funded);
    let o = node(&chain, keys[0].clone(), &[]).await;
    let boot = [o.addr.clone()];
    let mut nodes = Vec::new();
    for k in &keys[1..] {
        nodes.push(node(&chain, k.clone(), &boot).await);
    }
    o.ledger.register(Role::Publisher);
    for n in &nodes {
        n.ledger.register(Role::Node);
    }
    chain.mine();
    let mining = miner(&chain);

    let owner_config = StoreConfig {
        answer_secs: 3,
        fetch_secs: 30,
        acceptance_difficulty: 4,
        ..StoreConfig::default()
    };
    let (owner_fs, owner) = start(&o, &dir.path().join("o"), owner_config);
    let holder_config = StoreConfig {
        enabled: true,
        min_price_per_gib_hour: PRICE,
        ..StoreConfig::default()
    };
    let mut holders = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut c = holder_config.clone();
        if i == 3 {
            // Too dear for this task: it never accepts.
            c.min_price_per_gib_hour = PRICE + 1;
        }
        holders.push(start(n, &dir.path().join(format!("n{i}")), c));
    }

    let path = dir.path().join("kept.bin");
    let mut data = vec![0u8; (1 << 20) + 7];
    getrandom::fill(&mut data).unwrap();
    std::fs::write(&path, &data).unwrap();
    let file = common::add(&owner_fs, &path).await;
    let task = owner
        .store(StoreRequest {
            id: file,
            replicas: 2,
            duration_secs: 3600,
            price_per_gib_hour: PRICE,
            challenge_secs: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(task.size, data.len() as u64);

    until("two replicas passing", 60, || {
        holding(&owner, &file, 2).len() == 2
    })
    .await;
    let first = holding(&owner, &file, 2);
    let index = |a: &Address| nodes.iter().position(|n| n.key.address() == *a).unwrap();
    let spare = (0..3)
        .find(|i| !first.iter().any(|a| index(a) == *i))
        .unwrap();
    for a in &first {
        let (fs, storage) = &holders[index(a)];
        let f = fs.store().file(&file).expect("the replica's file");
        assert!(f.complete());
        assert!(fs.store().pinned(&file));
        assert!(fs.remove(&file).is_err(), "pinned while under contract");
        let held = &storage.view(None).held[0];
        assert_eq!(held.state, "holding");
        assert_eq!(held.owner, o.key.address());
    }
    let dear = &holders[3].1;
    assert!(
        dear.view(None).held.is_empty(),
        "the dear node never accepted"
    );
    until("payments", 30, || {
        replicas(&owner, &file)
            .iter()
            .all(|r| r.paid > 0 && r.paid == r.owed)
    })
    .await;

    // The first holder's data rots on disk: every part flipped.
    let victim = first[0];
    let (vfs, vstorage) = &holders[index(&victim)];
    let parts = vfs.store().dir().join("parts");
    for sub in std::fs::read_dir(&parts).unwrap() {
        for p in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = p.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            for x in b.iter_mut() {
                *x ^= 0x5a;
            }
            std::fs::write(&p, b).unwrap();
        }
    }
    until("the victim released", 30, || {
        replica(&owner, &file, &victim).state == "released"
    })
    .await;
    let failed = replica(&owner, &file, &victim);
    assert!(
        failed
            .failure
            .as_deref()
            .unwrap()
            .contains("does not prove"),
        "{failed:?}"
    );
    let rec = o.ledger.storage(&task.task).unwrap();
    assert!(!rec.holds(&victim), "released on chain");
    let spare_addr = nodes[spare].key.address();
    until("the spare holding", 60, || {
        holding(&owner, &file, 1).contains(&spare_addr)
    })
    .await;
    until("the victim dropping it", 10, || {
        vstorage.view(None).held[0].state == "dropped"
    })
    .await;
    assert!(!vfs.store().pinned(&file));
    assert!(vfs.store().file(&file).is_none(), "its copy is deleted");
    // Paid nothing more after the failure, while the others go on.
    let spare_passed = replica(&owner, &file, &spare_addr).passed;
    until("more rounds", 20, || {
        replica(&owner, &file, &spare_addr).passed >= spare_passed + 2
    })
    .await;
    assert_eq!(replica(&owner, &file, &victim).paid, failed.paid);
    // The holders took the same vouchers the owner signed (one may be on
    // its way).
    until("the holders' counts to match", 10, || {
        replicas(&owner, &file)
            .iter()
            .all(|r| holders[index(&r.node)].1.view(Some(&file)).held[0].paid == r.paid)
    })
    .await;
    mining.abort();
}
