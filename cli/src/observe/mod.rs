//! What the node shows an operator's monitoring: one [`Snapshot`] of its
//! state, gathered from the chain, the VM runtime, the provider's and
//! publisher's stores and the file network, and two readers of it.
//!
//! * [`metrics`]: the Prometheus text the API serves on `/metrics`.
//! * [`alerts`]: the conditions the shipped alert rules also express
//!   (`deploy/prometheus/zennet.rules.yml`), evaluated in the node and
//!   posted to `[alerts] webhook`, for operators without Prometheus.
//!
//! Both are pure functions of a snapshot (and, for alerts, of time), so
//! their tests build snapshots by hand; gathering one is the only I/O.

pub mod alerts;
pub mod metrics;

use std::path::Path;

use zennet_chain::Amount;
use zennet_fs::api::{FileView, StatusView};
use zennet_provider::ContractView;
use zennet_publisher::VmView as PublisherVm;
use zennet_vm::VmInfo;

use crate::node::Node;

/// The node's state at one moment, as monitoring reads it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub chain: ChainFacts,
    /// VMs this node runs (a provider).
    pub vms: Vec<VmInfo>,
    /// Contracts this node holds that are not over (a provider).
    pub contracts: Vec<ContractFacts>,
    /// Vouchers accepted over every contract, ended ones too.
    pub earned: Amount,
    /// VMs of this node's tasks (a publisher), not ended.
    pub publisher_vms: Vec<PublisherVm>,
    pub fs: Option<StatusView>,
    /// Files in the store, with what each earned as a seeder.
    pub files: Vec<FileView>,
    /// The filesystem the home is on.
    pub disk: Option<DiskFacts>,
}

#[derive(Debug, Clone, Default)]
pub struct ChainFacts {
    pub height: u64,
    pub tip_timestamp_ms: u64,
    pub mempool: usize,
    /// `None` when networking is off.
    pub peers: Option<usize>,
    pub mining: bool,
    pub sync: crate::sync::SyncStatus,
}

/// A contract with what the chain says of its channel.
#[derive(Debug, Clone)]
pub struct ContractFacts {
    pub view: ContractView,
    /// Paid out on chain so far (`None`: no channel on chain).
    pub claimed: Option<Amount>,
    /// Blocks until the channel expires (`None`: no channel on chain).
    pub expires_in_blocks: Option<u64>,
}

impl ContractFacts {
    /// Accrued but not covered by a voucher.
    pub fn unpaid(&self) -> Amount {
        self.view.accrued.saturating_sub(self.view.paid)
    }

    /// Vouchered but not yet claimed on chain.
    pub fn unclaimed(&self) -> Amount {
        self.view.paid.saturating_sub(self.claimed.unwrap_or(0))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DiskFacts {
    pub size_bytes: u64,
    pub free_bytes: u64,
}

impl Snapshot {
    /// Reads every service this node runs. A service that fails to answer
    /// is left out (and logged) rather than failing the whole scrape.
    pub async fn gather(node: &Node) -> Snapshot {
        let mut s = Snapshot {
            chain: {
                let chain = node.chain();
                let tip = chain.tip();
                ChainFacts {
                    height: tip.header.height,
                    tip_timestamp_ms: tip.header.timestamp_ms,
                    mempool: chain.mempool().len(),
                    peers: None,
                    mining: node.is_mining(),
                    sync: node.sync_status(),
                }
            },
            ..Snapshot::default()
        };
        if let Some(net) = node.net() {
            match net.peers().await {
                Ok(p) => s.chain.peers = Some(p.len()),
                Err(e) => tracing::debug!(error = %e, "metrics: no peer list"),
            }
        }
        if let Some(vms) = node.vms() {
            match vms.list().await {
                Ok(list) => s.vms = list,
                Err(e) => tracing::warn!(error = %e, "metrics: cannot list VMs"),
            }
        }
        if let Some(p) = node.provider() {
            match p.contracts() {
                Ok(all) => {
                    let height = p.height();
                    s.earned = all.iter().map(|c| c.paid).sum();
                    s.contracts = all
                        .into_iter()
                        .filter(|c| c.phase.active())
                        .map(|view| {
                            let ch = view.channel.and_then(|id| p.channel(&id));
                            ContractFacts {
                                claimed: ch.as_ref().map(|c| c.claimed),
                                expires_in_blocks: ch
                                    .as_ref()
                                    .map(|c| c.expiry_height.saturating_sub(height)),
                                view,
                            }
                        })
                        .collect();
                }
                Err(e) => tracing::warn!(error = %e, "metrics: cannot read contracts"),
            }
        }
        if let Some(p) = node.publisher() {
            match p.vms() {
                Ok(vms) => s.publisher_vms = vms.into_iter().filter(|v| !v.ended).collect(),
                Err(e) => tracing::warn!(error = %e, "metrics: cannot read the publisher's VMs"),
            }
        }
        if let Some(fs) = node.fs() {
            match fs.status() {
                Ok(st) => s.fs = Some(st),
                Err(e) => tracing::warn!(error = %e, "metrics: no file network status"),
            }
            s.files = fs.list();
        }
        s.disk = node.home_dir().and_then(disk_facts);
        s
    }
}

fn disk_facts(dir: &Path) -> Option<DiskFacts> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let block = st.fragment_size() as u64;
    Some(DiskFacts {
        size_bytes: st.blocks() as u64 * block,
        free_bytes: st.blocks_available() as u64 * block,
    })
}
