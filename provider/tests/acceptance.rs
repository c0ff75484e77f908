//! The provider's acceptance path against a hostile announcement, on an
//! in-memory chain (`TestChain`) with a VM backend that only keeps books
//! (`FakeBackend`): an announcement asking for the hardest proof of work
//! there is (2^64 − 1) must not stall another task's acceptance or the
//! operator's `agent accept`, its search ends when the task's acceptance
//! window closes, and a node shutting down stops every search at once.

use std::sync::Arc;
use std::time::Duration;

use zennet_chain::task::{CoreChoice, ImageChoice, Rates, TaskAnnouncement, VmRequirements};
use zennet_chain::testkit::{TestChain, TestLedger};
use zennet_chain::{Hash, Ledger, Role, SecretKey, TxBody, pow};
use zennet_provider::market::{Machine, MarketPolicy};
use zennet_provider::{Provider, ProviderConfig, ProviderError};
use zennet_testkit::FakeBackend;

const FUNDS: u128 = 1_000_000_000_000;
const IMAGE: Hash = Hash([0x11; 32]);

/// Announces a one-core task asking for `acceptance_difficulty`, open for
/// `window` blocks.
fn announce(
    chain: &TestChain,
    publisher: &TestLedger,
    acceptance_difficulty: u64,
    window: u64,
) -> Hash {
    let height = chain.height();
    let mut a = TaskAnnouncement {
        vm: VmRequirements {
            images: vec![ImageChoice {
                id: "zennet-tiny".into(),
                hash: IMAGE,
            }],
            min_bandwidth_mbps: 0,
            min_disk_gib: 1,
            min_disk_mbps: 0,
            persistent_storage_gib: 0,
            cores: vec![CoreChoice {
                cores: 1,
                min_compute_per_core: 1,
            }],
            max_compute_per_core: 100,
            memory_mib_per_core: 256,
            min_memory_mbps: 0,
        },
        min_instances: 1,
        max_instances: 1,
        endpoint: "127.0.0.1:9".into(),
        host_key_fingerprint: Hash([0x22; 32]),
        lease_min_secs: 60,
        lease_max_secs: 600,
        payout_interval_secs: 5,
        rates: Rates {
            base_per_second: 1,
            ..Rates::default()
        },
        acceptance_window: window,
        acceptance_difficulty,
        prune_height: height + window + 400,
        info: String::new(),
        pow_nonce: 0,
    };
    let me = publisher.address();
    let d = publisher.genesis().pow.min_announcement_difficulty;
    a.pow_nonce = pow::search(0, u64::MAX, d, |n| {
        a.pow_nonce = n;
        a.pow_hash(&me)
    })
    .unwrap();
    let task = publisher
        .submit(TxBody::AnnounceTask { announcement: a })
        .unwrap();
    chain.mine();
    task
}

fn accepted_by(ledger: &TestLedger, task: &Hash) -> bool {
    let me = ledger.address();
    ledger
        .task(task)
        .is_some_and(|t| t.acceptances.iter().any(|a| a.node == me))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_acceptance_difficulty_stalls_nothing_and_is_given_up() {
    let (p_key, n_key) = (SecretKey::generate(), SecretKey::generate());
    let chain = TestChain::new(&[(p_key.address(), FUNDS), (n_key.address(), FUNDS)]);
    let (publisher, node) = (chain.ledger(p_key), chain.ledger(n_key));
    publisher.register(Role::Publisher);
    node.register(Role::Node);
    chain.mine();

    // The worst case: an operator who lifted the cap on acceptance work.
    let policy = MarketPolicy {
        max_acceptance_difficulty: u64::MAX,
        ..MarketPolicy::default()
    };
    let machine = Machine {
        cores: 4,
        memory_mib: 8192,
        disk_gib: 100,
        compute_per_core: 10,
        disk_mbps: None,
        memory_mbps: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let vms = zennet_vm::Runtime::open(
        zennet_vm::RuntimeConfig::new(dir.path().join("agent"), dir.path().join("images")),
        Arc::new(FakeBackend::new()),
    )
    .await
    .unwrap();
    let provider = Provider::start(
        vms,
        node.clone(),
        ProviderConfig::new(
            policy,
            machine,
            Arc::new(zennet_tunnel::keys::generate()),
            vec![("zennet-tiny".into(), IMAGE)],
        ),
        &dir.path().join("contracts.db"),
        Arc::new(zennet_pay::MemoryStore::new()),
    )
    .await
    .unwrap();

    // The hostile task comes first and its search starts at once.
    let hostile = announce(&chain, &publisher, u64::MAX, 30);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An honest task after it is still accepted by the market.
    let honest = announce(&chain, &publisher, 2, 30);
    let started = std::time::Instant::now();
    while !accepted_by(&node, &honest) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the honest task was never accepted beside a hostile search"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        chain.mine();
    }
    // The operator's own accept answers at once, not after the search.
    let e = tokio::time::timeout(Duration::from_secs(2), provider.accept(&hostile))
        .await
        .expect("agent accept is not stalled by a running search")
        .unwrap_err();
    assert!(
        matches!(e, ProviderError::BeingAccepted(t) if t == hostile),
        "{e}"
    );

    // Past the acceptance window the search is given up and its
    // capacity freed: accepting now is refused for the closed window.
    chain.mine_blocks(31);
    let started = std::time::Instant::now();
    loop {
        match provider.accept(&hostile).await {
            Err(ProviderError::Refused { .. }) => break,
            Err(ProviderError::BeingAccepted(_)) => {}
            other => panic!("expected the window to be closed, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the search outlived its acceptance window"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!accepted_by(&node, &hostile));

    // A second hostile task, then the node stops: the search ends, and
    // so does the test (a search still running would keep the runtime,
    // like the node's process, from shutting down).
    let second = announce(&chain, &publisher, u64::MAX, 1000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    provider.shutdown();
    let started = std::time::Instant::now();
    loop {
        match provider.accept(&second).await {
            // The running search ended; a new one gives up at once.
            Err(ProviderError::PowCancelled { .. }) => break,
            Err(ProviderError::BeingAccepted(_)) => {}
            other => panic!("expected the search to be given up, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a search kept running after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
