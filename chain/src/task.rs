//! Task announcements and acceptances (RFC "Task Details").
//!
//! An announcement is small by design (a size cap is enforced) and prunable:
//! after its prune height a node drops the body and keeps only its hash,
//! which is all the block's transaction root needs.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::codec::{amount_str, encode};
use crate::crypto::{Address, FileHash, Hash, keccak256_concat};
use crate::error::TxError;
use crate::tx::Amount;

pub const MAX_IMAGE_CHOICES: usize = 4;
pub const MAX_CORE_CHOICES: usize = 4;
pub const MAX_IMAGE_ID_LEN: usize = 32;
pub const MAX_ENDPOINT_LEN: usize = 64;
pub const MAX_INFO_LEN: usize = 96;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct ImageChoice {
    /// Manifest id, e.g. `zennet-tiny`.
    pub id: String,
    /// Hash of the image manifest.
    pub hash: Hash,
    /// The image as published on the file network (`zennet image
    /// publish`): a node that has not built it may fetch it by this id,
    /// verify it against `hash` and run it. `None`: only nodes that built
    /// the image themselves can take the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileHash>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct CoreChoice {
    pub cores: u16,
    /// Minimum benchmarked compute units per core.
    pub min_compute_per_core: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct VmRequirements {
    pub images: Vec<ImageChoice>,
    pub min_bandwidth_mbps: u32,
    pub min_disk_gib: u32,
    pub min_disk_mbps: u32,
    pub persistent_storage_gib: u32,
    pub cores: Vec<CoreChoice>,
    /// The most compute units per core the publisher pays for: an
    /// acceptance may not claim more, so the publisher's bound never rests
    /// on the node's word alone.
    pub max_compute_per_core: u32,
    pub memory_mib_per_core: u32,
    pub min_memory_mbps: u32,
}

/// Prices per unit, in base units.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, BorshSerialize, BorshDeserialize,
)]
pub struct Rates {
    #[serde(with = "amount_str")]
    pub per_compute_unit_second: Amount,
    #[serde(with = "amount_str")]
    pub per_memory_gib_hour: Amount,
    #[serde(with = "amount_str")]
    pub per_storage_gib_hour: Amount,
    #[serde(with = "amount_str")]
    pub per_traffic_gb: Amount,
    #[serde(with = "amount_str")]
    pub base_per_second: Amount,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct TaskAnnouncement {
    pub vm: VmRequirements,
    pub min_instances: u32,
    pub max_instances: u32,
    /// Publisher `host:port` for the SSH tunnel.
    pub endpoint: String,
    /// SHA-256 fingerprint of the publisher's SSH host key.
    pub host_key_fingerprint: Hash,
    pub lease_min_secs: u32,
    pub lease_max_secs: u32,
    /// Seconds between vouchers; negative means prepay by that many seconds.
    pub payout_interval_secs: i32,
    pub rates: Rates,
    /// Blocks after the announcement during which it may be accepted.
    pub acceptance_window: u64,
    /// Difficulty an `AcceptTask` for this task must meet.
    pub acceptance_difficulty: u64,
    /// Height after which nodes may drop this announcement's body.
    pub prune_height: u64,
    /// A short URL describing the task.
    pub info: String,
    pub pow_nonce: u64,
}

impl TaskAnnouncement {
    /// The proof-of-work hash binds the announcement to its sender.
    pub fn pow_hash(&self, sender: &Address) -> Hash {
        keccak256_concat(&[b"zennet:announce", &sender.0, &encode(self)])
    }

    pub fn encoded_len(&self) -> usize {
        encode(self).len()
    }

    /// Field rules that need no state.
    pub fn check_fields(&self) -> Result<(), TxError> {
        let bad = |m: String| Err(TxError::BadAnnouncement(m));
        let vm = &self.vm;
        if vm.images.is_empty() || vm.images.len() > MAX_IMAGE_CHOICES {
            return bad(format!(
                "between 1 and {MAX_IMAGE_CHOICES} image choices required"
            ));
        }
        if let Some(i) = vm
            .images
            .iter()
            .find(|i| i.id.is_empty() || i.id.len() > MAX_IMAGE_ID_LEN)
        {
            return bad(format!(
                "image id {:?} must be 1 to {MAX_IMAGE_ID_LEN} bytes",
                i.id
            ));
        }
        if vm.cores.is_empty() || vm.cores.len() > MAX_CORE_CHOICES {
            return bad(format!(
                "between 1 and {MAX_CORE_CHOICES} core choices required"
            ));
        }
        if vm.cores.iter().any(|c| c.cores == 0) {
            return bad("a core choice has 0 cores".into());
        }
        if let Some(c) = vm
            .cores
            .iter()
            .find(|c| c.min_compute_per_core > vm.max_compute_per_core)
        {
            return bad(format!(
                "max_compute_per_core {} is below a core choice's minimum {}",
                vm.max_compute_per_core, c.min_compute_per_core
            ));
        }
        if vm.memory_mib_per_core == 0 {
            return bad("memory_mib_per_core must be positive".into());
        }
        if self.min_instances == 0 || self.max_instances < self.min_instances {
            return bad("instances: need 1 <= min_instances <= max_instances".into());
        }
        if !valid_endpoint(&self.endpoint) {
            return bad(format!(
                "endpoint {:?} is not host:port (at most {MAX_ENDPOINT_LEN} bytes)",
                self.endpoint
            ));
        }
        if self.lease_max_secs == 0 || self.lease_min_secs > self.lease_max_secs {
            return bad(
                "lease: need lease_min_secs <= lease_max_secs and lease_max_secs > 0".into(),
            );
        }
        if self.payout_interval_secs == 0 {
            return bad("payout_interval_secs must not be 0 (negative means prepay)".into());
        }
        if self.acceptance_window == 0 {
            return bad("acceptance_window must be at least 1 block".into());
        }
        if self.acceptance_difficulty == 0 {
            return bad("acceptance_difficulty must be at least 1".into());
        }
        if self.info.len() > MAX_INFO_LEN {
            return bad(format!("info is longer than {MAX_INFO_LEN} bytes"));
        }
        Ok(())
    }
}

fn valid_endpoint(endpoint: &str) -> bool {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return false;
    }
    match endpoint.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        }
        None => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct TaskAcceptance {
    /// The announcement's transaction hash.
    pub task: Hash,
    /// Hash of the chosen image (one of the announcement's choices).
    pub image: Hash,
    /// Chosen core count (one of the announcement's choices).
    pub cores: u16,
    /// SHA-256 fingerprint of the SSH key the node will dial the publisher with.
    pub ssh_key_fingerprint: Hash,
    /// The node's benchmarked compute units per core.
    pub compute_score: u32,
    pub pow_nonce: u64,
}

impl TaskAcceptance {
    pub fn pow_hash(&self, sender: &Address) -> Hash {
        keccak256_concat(&[b"zennet:accept", &sender.0, &encode(self)])
    }
}

/// A task as the state keeps it while it may still be pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct TaskRecord {
    pub id: Hash,
    pub publisher: Address,
    pub announcement: TaskAnnouncement,
    pub announced_at: u64,
    pub cancelled_at: Option<u64>,
    pub acceptances: Vec<Acceptance>,
}

impl TaskRecord {
    /// Last height at which an acceptance is still valid.
    pub fn accept_until(&self) -> u64 {
        self.announced_at
            .saturating_add(self.announcement.acceptance_window)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Acceptance {
    pub node: Address,
    pub tx: Hash,
    pub height: u64,
    pub image: Hash,
    pub cores: u16,
    pub ssh_key_fingerprint: Hash,
    pub compute_score: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(valid_endpoint("127.0.0.1:2222"));
        assert!(valid_endpoint("example.org:22"));
        assert!(valid_endpoint("[::1]:22"));
        assert!(!valid_endpoint("nohost"));
        assert!(!valid_endpoint(":22"));
        assert!(!valid_endpoint("h:0"));
        assert!(!valid_endpoint("h:99999"));
        assert!(!valid_endpoint("a b:22"));
    }
}
