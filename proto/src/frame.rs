//! The `zennet-pay` frames: what a node and a publisher say to each other
//! inside the SSH subsystem of that name.
//!
//! A contract runs: node `Join` → publisher `Terms` (the channel is open on
//! chain by then; interval and lease must be the announcement's) → node
//! `Status` once the VM is up → node `Usage` every payout interval,
//! publisher `Voucher` in answer (and new `Terms` when what it pays for
//! changes) → either side `Bye`, after which the node sends a final
//! `Usage`, gets a final `Voucher` and closes the channel on chain.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use zennet_chain::{Amount, Hash, SignedVoucher};

use crate::price::Usage;

/// SSH subsystem name.
pub const SUBSYSTEM: &str = "zennet-pay";

/// The SSH subsystem that carries a VM's private-network NIC to the
/// publisher's switch: QEMU's stream framing (a 4-byte big-endian length,
/// then one Ethernet frame), unchanged, both ways.
pub const LAN_SUBSYSTEM: &str = "zennet-lan";

/// The MAC a VM's private-network NIC boots with (the provider's VM
/// runtime sets it, `zennet_vm::LAN_MAC`); the publisher finds the NIC in
/// the guest by it.
pub const LAN_BOOT_MAC: &str = "02:7a:6e:ff:ff:fe";
pub const PROTOCOL_VERSION: u16 = 1;

/// The publisher's `Bye` to a `Join` for a contract whose session is still
/// open. Only the contract's own node gets this far, so the open session is
/// its previous one, not yet torn down: the node dials again later.
pub const BYE_SESSION_OPEN: &str = "a session for this contract is already open";

#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub enum Frame {
    /// Node → publisher, first frame: the task this connection serves.
    Join { version: u16, task: Hash },
    /// Publisher → node: the contract's terms; the channel is on chain.
    Terms(Terms),
    /// Node → publisher: the VM's state changed.
    Status(VmStatus),
    /// Node → publisher: metered usage so far and what it comes to.
    Usage(UsageReport),
    /// Publisher → node: a payment.
    Voucher(SignedVoucher),
    /// Either side: the contract is ending (or refused), with the reason.
    Bye { reason: String },
}

#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub struct Terms {
    pub channel: Hash,
    /// Seconds between usage reports; negative: prepay that many seconds.
    pub payout_interval_secs: i32,
    pub lease_secs: u32,
    /// OpenSSH public key line the VM must let in as root.
    pub vm_key: String,
    /// Whether the publisher pays for the persistent volume.
    pub storage_paid: bool,
    /// The compute units per core the publisher pays compute at: the
    /// node's on-chain claim until the publisher has measured the VM, then
    /// no more than the measurement allows. Sent again when it changes.
    pub compute_per_core: u32,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum VmPhase {
    Booting,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub struct VmStatus {
    pub phase: VmPhase,
    /// The VM's SSH host key (OpenSSH line), so the publisher can pin it.
    pub host_key: Option<String>,
    /// Launch to sshd ready, in milliseconds.
    pub boot_ms: u64,
}

#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub struct UsageReport {
    pub seq: u64,
    pub usage: Usage,
    /// What the usage comes to at the task's rates, by [`crate::price()`].
    pub accrued: Amount,
    /// The last report: the VM has stopped.
    pub last: bool,
}
