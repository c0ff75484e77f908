//! What the provider's integration tests share: a one-core task announced
//! on a `TestChain`, and a provider over a `FakeBackend` offering
//! [`machine`].

use std::path::Path;
use std::sync::Arc;

use zennet_chain::task::{CoreChoice, ImageChoice, Rates, TaskAnnouncement, VmRequirements};
use zennet_chain::testkit::{TestChain, TestLedger};
use zennet_chain::{Hash, Ledger, Role, SecretKey, TxBody, pow};
use zennet_provider::market::{Machine, MarketPolicy};
use zennet_provider::{Provider, ProviderConfig};
use zennet_testkit::FakeBackend;

pub const FUNDS: u128 = 1_000_000_000_000;
/// The manifest hash the node's image is known by.
pub const IMAGE: Hash = Hash([0x11; 32]);

/// The node's logs in the test's output (`RUST_LOG`, default info),
/// shown when a test fails.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A chain funding a publisher and a node, both registered (and the
/// test's logs on): the parties of every provider test.
pub fn parties() -> (Arc<TestChain>, Arc<TestLedger>, Arc<TestLedger>) {
    logs();
    let (p_key, n_key) = (SecretKey::generate(), SecretKey::generate());
    let chain = TestChain::new(&[(p_key.address(), FUNDS), (n_key.address(), FUNDS)]);
    let (publisher, node) = (chain.ledger(p_key), chain.ledger(n_key));
    publisher.register(Role::Publisher);
    node.register(Role::Node);
    chain.mine();
    (chain, publisher, node)
}

/// A one-core, 256 MiB task of the default image with a 3 GiB scratch
/// disk at 1 unit a second,
/// open for acceptances for `window` blocks.
pub fn task(endpoint: &str, host_key: Hash, window: u64, difficulty: u64) -> TaskAnnouncement {
    TaskAnnouncement {
        vm: VmRequirements {
            images: vec![ImageChoice {
                id: "zennet-tiny".into(),
                hash: IMAGE,
                file: None,
            }],
            min_bandwidth_mbps: 0,
            min_disk_gib: 3,
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
        endpoint: endpoint.into(),
        host_key_fingerprint: host_key,
        lease_min_secs: 60,
        lease_max_secs: 600,
        payout_interval_secs: 5,
        rates: Rates {
            base_per_second: 1,
            ..Rates::default()
        },
        acceptance_window: window,
        acceptance_difficulty: difficulty,
        prune_height: 0,
        info: String::new(),
        pow_nonce: 0,
    }
}

/// Publishes `a` (with its proof of work, pruned well after its window)
/// and mines it; returns the task's id.
pub fn announce(chain: &TestChain, publisher: &TestLedger, mut a: TaskAnnouncement) -> Hash {
    a.prune_height = chain.height() + a.acceptance_window + 400;
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

/// Four cores, 8 GiB and 100 GiB of disk at 10 compute units a core.
pub fn machine() -> Machine {
    Machine {
        cores: 4,
        memory_mib: 8192,
        disk_gib: 100,
        compute_per_core: 10,
        disk_mbps: None,
        memory_mbps: None,
    }
}

/// The provider's config with `policy` on [`machine`], a fresh node key
/// and the default image known as [`IMAGE`].
pub fn config(policy: MarketPolicy) -> ProviderConfig {
    ProviderConfig::new(
        policy,
        machine(),
        Arc::new(zennet_tunnel::keys::generate()),
        vec![("zennet-tiny".into(), IMAGE)],
    )
}

/// A provider of `node` under `dir`, its VMs on `backend` (the image
/// record installed, metered every second as the node does), and its
/// VM runtime.
pub async fn start_provider(
    dir: &Path,
    node: Arc<TestLedger>,
    config: ProviderConfig,
    backend: FakeBackend,
) -> (Arc<Provider>, Arc<zennet_vm::Runtime>) {
    let images = dir.join("images");
    zennet_testkit::fake::install_image(&images, "zennet-tiny");
    let vms = zennet_vm::Runtime::open(
        zennet_vm::RuntimeConfig::new(dir.join("agent"), images),
        Arc::new(backend),
    )
    .await
    .unwrap();
    tokio::spawn(vms.clone().meter());
    let provider = Provider::start(
        vms.clone(),
        node,
        config,
        &dir.join("contracts.db"),
        Arc::new(zennet_pay::MemoryStore::new()),
    )
    .await
    .unwrap();
    (provider, vms)
}
