//! What a VM is, independent of the backend that runs it: the spec given
//! to [`crate::Backend::launch`] and persisted with the VM, and the facts
//! about a launched process that find it again after a restart.
//!
//! A VM has its network interface ([`VmSpec::network`]), under QEMU a
//! second one on its task's private network ([`Process::lan_socket`]),
//! and two disks (scratch, persistent). Read-only image disks go in as
//! their own field beside these (`disks: Vec<…>`, with `#[serde(default)]`
//! so older records still parse); the QEMU backend builds each device with
//! its own function in `qemu::launch`.

use std::net::Ipv4Addr;
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
    /// SHA-256 (hex) the kernel and initramfs must have; checked on the
    /// very descriptors handed to the hypervisor, before every launch.
    /// `None` only in records written before the check existed.
    #[serde(default)]
    pub kernel_sha256: Option<String>,
    #[serde(default)]
    pub initramfs_sha256: Option<String>,
    pub kernel_args: Vec<String>,
    /// The image's own disks (a read-only root disk, say), attached
    /// read-only under their serials after their SHA-256 is checked on the
    /// very descriptors handed over, like the kernel's.
    #[serde(default)]
    pub image_disks: Vec<ImageDiskSpec>,
    /// Size of the VM's scratch disk (a fresh qcow2 per launch, of exactly
    /// this virtual size: the guest cannot write past it).
    pub scratch_gib: u32,
    /// The persistent volume kept by the node across launches, and its size.
    pub persistent: Option<(PathBuf, u32)>,
    /// Loopback port on the host that reaches the guest's sshd (the node's
    /// own proxy into the VM's network namespace, or QEMU's forward for
    /// [`NetworkSpec::UserNat`]).
    pub ssh_port: u16,
    /// How the guest reaches the network.
    #[serde(default)]
    pub network: NetworkSpec,
    /// The identity the VM process runs as (None: the backend's default
    /// unprivileged uid).
    #[serde(default)]
    pub run_as: Option<RunAs>,
}

/// One of the image's disks, as the VM gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDiskSpec {
    pub path: PathBuf,
    /// SHA-256 (hex) from the image's manifest.
    pub sha256: String,
    /// The virtio serial the guest finds it by.
    pub serial: String,
}

/// The guest's network interface.
///
/// The guest side is the same in every mode, and is what the default
/// image's init sets up unless told otherwise: `eth0` at
/// [`GUEST_IP`]/24 with [`GATEWAY`] as its router.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum NetworkSpec {
    /// QEMU's user-mode network with `restrict=on` (the guest reaches
    /// nothing) and a forward of the guest's sshd to [`VmSpec::ssh_port`]
    /// on the host's loopback. What the node's own benchmark guest uses,
    /// and what records of earlier nodes say (a relaunch moves those to
    /// the operator's policy).
    #[default]
    UserNat,
    /// A network namespace of its own holding only the VM's tap device:
    /// no route leads anywhere, and the node reaches the guest's sshd with
    /// sockets made inside the namespace.
    Isolated { netns: String },
    /// As [`NetworkSpec::Isolated`], plus a veth pair to the host that
    /// NATs the guest's traffic to public addresses only, shaped to
    /// `bandwidth_mbps` each way and metered by the kernel's counters.
    Internet {
        netns: String,
        /// The host's end of the veth pair (its counters are the VM's
        /// traffic).
        host_if: String,
        /// The host's address on the pair (a /30), and the namespace's.
        host_ip: Ipv4Addr,
        ns_ip: Ipv4Addr,
        bandwidth_mbps: u32,
    },
}

impl NetworkSpec {
    /// The VM's network namespace, in the modes that have one.
    pub fn netns(&self) -> Option<&str> {
        match self {
            NetworkSpec::UserNat => None,
            NetworkSpec::Isolated { netns } | NetworkSpec::Internet { netns, .. } => Some(netns),
        }
    }
}

/// The guest's own address, in every mode.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The guest's router: the tap device's address inside the VM's namespace.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

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
    /// The guest's serial console as the node keeps it (capped and
    /// rotated; see [`crate::console`]), where it prints its ready marker.
    pub serial_log: PathBuf,
    /// Where the node reads the console from (QEMU: a listening socket the
    /// node connects to, again after a restart). `None`: the backend writes
    /// `serial_log` itself.
    #[serde(default)]
    pub serial_socket: Option<PathBuf>,
    /// The guest's second NIC, on its task's private network (QEMU: a
    /// listening socket speaking QEMU's stream netdev framing, which the
    /// node connects to the publisher's switch; see [`LAN_MAC`]). `None`:
    /// the backend gives the guest no such NIC.
    #[serde(default)]
    pub lan_socket: Option<PathBuf>,
}

/// The MAC the guest's private-network NIC comes up with: the same in
/// every VM, so the publisher finds the interface by it and then gives it
/// the address and MAC of its place on the task's network.
pub const LAN_MAC: &str = "02:7a:6e:ff:ff:fe";
