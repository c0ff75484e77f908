//! Wires the market into the node: the [`Ledger`] both sides use, the
//! publisher service (`--publish`) and the provider's market and
//! contracts (`--provide`).

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use zennet_agent::market::Machine;
use zennet_agent::provider::{Provider, ProviderConfig};
use zennet_chain::task::TaskRecord;
use zennet_chain::{
    Address, Amount, ChainError, Channel, Genesis, Hash, Ledger, SecretKey, Transaction, TxBody,
};
use zennet_publisher::{Publisher, PublisherConfig};

use crate::home::Home;
use crate::node::Node;

/// The node's chain seen as a [`Ledger`], signing with the home's key.
pub struct NodeLedger {
    node: Arc<Node>,
    key: SecretKey,
    /// Nonce choice and admission happen as one step.
    submit_lock: Mutex<()>,
}

impl NodeLedger {
    pub fn new(node: Arc<Node>, key: SecretKey) -> Arc<NodeLedger> {
        Arc::new(NodeLedger {
            node,
            key,
            submit_lock: Mutex::new(()),
        })
    }
}

impl Ledger for NodeLedger {
    fn genesis(&self) -> Genesis {
        self.node.chain().genesis().clone()
    }
    fn chain_id(&self) -> u64 {
        self.node.chain().genesis().chain_id
    }
    fn address(&self) -> Address {
        self.key.address()
    }
    fn height(&self) -> u64 {
        self.node.chain().tip().header.height
    }
    fn balance(&self, address: &Address) -> Amount {
        self.node.chain().account(address).balance
    }
    fn task(&self, id: &Hash) -> Option<TaskRecord> {
        self.node.chain().task(id)
    }
    fn tasks(&self) -> Vec<TaskRecord> {
        self.node.chain().state().tasks().cloned().collect()
    }
    fn channel(&self, id: &Hash) -> Option<Channel> {
        self.node.chain().channel(id)
    }
    fn submit(&self, body: TxBody) -> Result<Hash, ChainError> {
        let _guard = self.submit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let tx = {
            let chain = self.node.chain();
            Transaction {
                chain_id: chain.genesis().chain_id,
                nonce: chain.next_nonce(&self.key.address()),
                fee_per_byte: chain.genesis().economics.min_fee_per_byte,
                body,
            }
        }
        .sign(&self.key);
        self.node.submit_tx(tx)
    }
    fn included_at(&self, tx: &Hash) -> Option<u64> {
        self.node
            .chain()
            .store()
            .tx_location(tx)
            .ok()
            .flatten()
            .map(|l| l.height)
    }
    fn pending(&self, tx: &Hash) -> bool {
        self.node.chain().mempool().contains(tx)
    }
}

pub async fn start_publisher(home: &Home, ledger: Arc<NodeLedger>) -> Result<Arc<Publisher>> {
    let config = home.config()?;
    Publisher::start(
        PublisherConfig {
            dir: home.dir().join("publisher"),
            ssh_listen: config.publisher.ssh_listen.clone(),
            endpoint: config.publisher.endpoint.clone(),
            images_dir: home.images_dir(),
        },
        ledger.clone(),
        ledger.key.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot start the publisher (SSH server on {}; change [publisher] ssh_listen in config.toml)",
            config.publisher.ssh_listen
        )
    })
}

pub async fn start_provider(
    home: &Home,
    agent: Arc<zennet_agent::Agent>,
    ledger: Arc<NodeLedger>,
) -> Result<Arc<Provider>> {
    let config = home.config()?;
    let machine = machine(home, &config.provider)?;
    let ssh_key = zennet_publisher::sshkey::load_or_create(&home.agent_dir().join("ssh_key"))?;
    let images = zennet_images::list(&home.images_dir())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| Some((i.manifest.id.clone(), i.manifest.hash.parse().ok()?)))
        .collect();
    let mut provider =
        ProviderConfig::new(config.market.clone(), machine, Arc::new(ssh_key), images);
    if let Some(g) = config.provider.grace_secs {
        provider.grace = std::time::Duration::from_secs(g);
    }
    tracing::info!(
        cores = machine.cores,
        memory_mib = machine.memory_mib,
        compute_per_core = machine.compute_per_core,
        auto_accept = config.market.auto_accept,
        "provider market"
    );
    Provider::start(
        agent,
        ledger,
        provider,
        &home.agent_dir().join("contracts.db"),
    )
    .await
    .context("cannot start the provider market")
}

/// What the machine offers: config.toml overrides, else the capacity
/// profile from `zennet bench`, else what the host reports (compute 1 CU
/// per core until benchmarked).
fn machine(home: &Home, over: &crate::home::ProviderSection) -> Result<Machine> {
    let profile: Option<zennet_agent::hwbench::CapacityProfile> =
        std::fs::read(home.dir().join("capacity.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
    let host_cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let host_mem = meminfo_total_mib().unwrap_or(1024);
    let disk_gib = nix::sys::statvfs::statvfs(&home.agent_dir())
        .map(|s| (s.blocks_available() * s.fragment_size()) >> 30)
        .unwrap_or(8);
    Ok(Machine {
        cores: over
            .cores
            .or(profile.as_ref().map(|p| p.cores))
            .unwrap_or(host_cores),
        memory_mib: over
            .memory_mib
            .or(profile.as_ref().map(|p| p.memory_bytes >> 20))
            .unwrap_or(host_mem),
        disk_gib: over.disk_gib.unwrap_or(disk_gib),
        compute_per_core: over
            .compute_per_core
            .or(profile
                .as_ref()
                .map(|p| p.compute_units_per_core.floor().max(1.0) as u32))
            .unwrap_or(1),
        disk_mbps: None,
        memory_mbps: None,
    })
}

fn meminfo_total_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
