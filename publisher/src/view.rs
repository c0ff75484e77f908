//! What the publisher shows through the node's API.

use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::task::TaskRecord;
use zennet_chain::{Address, Amount, Hash};
use zennet_proto::{Usage, VmPhase};

/// One VM as the publisher sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmView {
    /// The acceptance transaction hash.
    pub id: Hash,
    pub task: Hash,
    pub node: Address,
    pub phase: VmPhase,
    pub connected: bool,
    /// Loopback port on this host that reaches the VM's sshd.
    pub ssh_port: Option<u16>,
    pub host_key: Option<String>,
    pub boot_ms: u64,
    pub channel: Option<Hash>,
    #[serde(with = "amount_str")]
    pub paid: Amount,
    #[serde(with = "amount_str")]
    pub reported: Amount,
    pub usage: Usage,
    pub ended: bool,
    pub end_reason: Option<String>,
    /// The VM's address on its task's private network (see
    /// [`crate::lan`]), once it has one.
    #[serde(default)]
    pub lan_address: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    pub id: Hash,
    pub paying: bool,
    pub storage_paid: bool,
    /// The on-chain record (None once pruned).
    pub record: Option<TaskRecord>,
}

/// A task that serves HTTP (its task file's `web_port`), as the app proxy
/// routes it: `http://{app}.zennet.localhost:PORT/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    /// The task id's first 12 hex digits (a DNS label).
    pub app: String,
    pub task: Hash,
    pub web_port: u16,
    /// The task's VMs that can take a request now.
    pub vms: Vec<VmView>,
}

/// This host's place on a task's private network (`zennet job` runs the
/// job's host-side programs there: `ip netns exec NETNS …`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LanHostView {
    pub task: Hash,
    /// The network namespace holding this host's end of the network.
    pub netns: String,
    /// This host's address there (the VMs reach it at this address).
    pub address: std::net::Ipv4Addr,
}

/// The app id of `task`.
pub fn app_id(task: &Hash) -> String {
    task.0[..6].iter().map(|b| format!("{b:02x}")).collect()
}
