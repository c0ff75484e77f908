//! The provider's acceptance path against a hostile announcement, on an
//! in-memory chain (`TestChain`) with a VM backend that only keeps books
//! (`FakeBackend`): an announcement asking for the hardest proof of work
//! there is (2^64 − 1) must not stall another task's acceptance or the
//! operator's `agent accept`, its search ends when the task's acceptance
//! window closes, and a node shutting down stops every search at once.

use std::time::Duration;

use zennet_chain::testkit::{TestChain, TestLedger};
use zennet_chain::{Hash, Ledger};
use zennet_provider::ProviderError;
use zennet_provider::market::MarketPolicy;
use zennet_testkit::FakeBackend;

mod common;

/// Announces a one-core task asking for `acceptance_difficulty`, open for
/// `window` blocks.
fn announce(
    chain: &TestChain,
    publisher: &TestLedger,
    acceptance_difficulty: u64,
    window: u64,
) -> Hash {
    let a = common::task(
        "127.0.0.1:9",
        Hash([0x22; 32]),
        window,
        acceptance_difficulty,
    );
    common::announce(chain, publisher, a)
}

fn accepted_by(ledger: &TestLedger, task: &Hash) -> bool {
    let me = ledger.address();
    ledger
        .task(task)
        .is_some_and(|t| t.acceptances.iter().any(|a| a.node == me))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_acceptance_difficulty_stalls_nothing_and_is_given_up() {
    let (chain, publisher, node) = common::parties();

    // The worst case: an operator who lifted the cap on acceptance work.
    let policy = MarketPolicy {
        max_acceptance_difficulty: u64::MAX,
        ..MarketPolicy::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (provider, _vms) = common::start_provider(
        dir.path(),
        node.clone(),
        common::config(policy),
        FakeBackend::new(),
    )
    .await;

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

/// A volume kept from an ended task is held by no contract, but it is on
/// the disk: the free disk is measured before each acceptance, so a kept
/// volume bigger than the disk (sparse, 15 TiB) leaves no room for a
/// task, and removing it gives the room back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_volume_counts_against_the_disk_before_a_task_is_accepted() {
    let (chain, publisher, node) = common::parties();
    let policy = MarketPolicy {
        auto_accept: false,
        ..MarketPolicy::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (provider, _vms) = common::start_provider(
        dir.path(),
        node.clone(),
        common::config(policy),
        FakeBackend::new(),
    )
    .await;
    let volumes = dir.path().join("agent/volumes");
    std::fs::create_dir_all(&volumes).unwrap();
    let kept = volumes.join("task-0123456789ab.img");
    std::fs::File::create(&kept)
        .unwrap()
        .set_len(15 << 40)
        .unwrap();

    let task = announce(&chain, &publisher, 2, 30);
    match provider.accept(&task).await {
        Err(ProviderError::Refused {
            reason: zennet_provider::market::Rejection::NoCapacity { free, .. },
            ..
        }) => assert!(free.contains(" 0 GiB disk"), "{free}"),
        other => panic!("a task was taken onto a full disk: {other:?}"),
    }
    let verdict = provider
        .tasks()
        .unwrap()
        .into_iter()
        .find(|t| t.task == task)
        .unwrap()
        .verdict;
    assert!(verdict.contains("0 GiB disk"), "{verdict}");

    std::fs::remove_file(&kept).unwrap();
    let taken = provider.accept(&task).await.expect("room again");
    assert_eq!(taken.task, task);
    provider.shutdown();
}
