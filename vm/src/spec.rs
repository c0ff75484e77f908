//! What a VM is, independent of the backend that runs it: the spec given
//! to [`crate::Backend::launch`] and persisted with the VM, and the facts
//! about a launched process that find it again after a restart.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    pub id: String,
    pub cores: u32,
    /// CPU time granted, in cores; at most `cores` (e.g. 0.5 for half a core).
    pub cpu_quota: f64,
    pub mem_mib: u64,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_args: Vec<String>,
    /// Size of the VM's scratch disk (a fresh qcow2 per launch).
    pub scratch_gib: u32,
    /// The persistent volume kept by the node across launches, and its size.
    pub persistent: Option<(PathBuf, u32)>,
    /// Loopback port on the host that reaches the guest's sshd.
    pub ssh_port: u16,
    /// How the guest reaches the network.
    #[serde(default)]
    pub network: NetworkSpec,
    /// The identity the VM process runs as (None: the backend's default
    /// unprivileged uid).
    #[serde(default)]
    pub run_as: Option<RunAs>,
}

/// The guest's network. Today: user-mode NAT with a loopback forward of
/// the guest's sshd to [`VmSpec::ssh_port`]. An isolated per-VM network
/// (namespace, tap, firewall, shaping) is a variant of its own here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum NetworkSpec {
    #[default]
    UserNat,
}

/// A uid/gid for one VM's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// A launched VM process: enough to find it again after a node restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// The VM's private directory (scratch disk, control socket, logs).
    pub run_dir: PathBuf,
    /// The backend's control endpoint (QEMU: the QMP socket).
    #[serde(alias = "qmp_socket")]
    pub control: PathBuf,
    /// The guest's serial console, where it prints its ready marker.
    pub serial_log: PathBuf,
}
