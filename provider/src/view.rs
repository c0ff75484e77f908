//! What the provider shows through the node's API: its contracts and its
//! verdict on every task. API types only; they change without touching the
//! store or the session loop.

use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::{Address, Amount, Hash, SignedVoucher};
use zennet_proto::Usage;

use crate::contract::Phase;
use crate::store::ContractRow;

/// One contract as `zennet agent status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContractView {
    pub task: Hash,
    pub publisher: Address,
    pub endpoint: String,
    pub phase: Phase,
    pub acceptance_tx: Hash,
    pub image_id: String,
    pub cores: u16,
    pub memory_mib: u64,
    pub storage_gib: u32,
    pub storage_paid: bool,
    pub channel: Option<Hash>,
    pub vm: Option<String>,
    pub boot_ms: u64,
    pub started_ms: Option<u64>,
    #[serde(with = "amount_str")]
    pub accrued: Amount,
    #[serde(with = "amount_str")]
    pub paid: Amount,
    pub usage: Usage,
    /// The voucher held (the payee's store).
    pub voucher: Option<SignedVoucher>,
    pub claim_txs: Vec<Hash>,
    pub close_tx: Option<Hash>,
    pub end_reason: Option<String>,
    /// When the VM is paused unless a voucher comes first (Unix ms): the
    /// runner's payment clock. `None`: paid up, already paused, or over.
    #[serde(default)]
    pub pause_at_ms: Option<u64>,
}

impl ContractView {
    pub fn new(c: &ContractRow, pay: Option<&zennet_pay::Incoming>) -> ContractView {
        ContractView {
            task: c.task,
            publisher: c.publisher,
            endpoint: c.endpoint.clone(),
            phase: c.phase,
            acceptance_tx: c.acceptance_tx,
            image_id: c.image_id.clone(),
            cores: c.cores,
            memory_mib: c.memory_mib,
            storage_gib: c.storage_gib,
            storage_paid: c.storage_paid,
            channel: c.channel,
            vm: c.vm.clone(),
            boot_ms: c.boot_ms,
            started_ms: c.started_ms,
            accrued: c.accrued,
            paid: pay.map_or(c.paid, |p| p.paid()),
            usage: c.usage.clone(),
            voucher: pay.and_then(|p| p.voucher.clone()),
            claim_txs: pay.map(|p| p.claim_txs.clone()).unwrap_or_default(),
            close_tx: pay.and_then(|p| p.close_tx),
            end_reason: c.end_reason.clone(),
            pause_at_ms: None,
        }
    }
}

/// A task on chain and what this node thinks of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskVerdict {
    pub task: Hash,
    pub publisher: Address,
    /// "acceptable", "rejected by the operator", or the policy's reason.
    pub verdict: String,
    pub contract: Option<ContractView>,
}
