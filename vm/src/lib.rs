//! The VM runtime of a provider node: VMs started, paused, metered and
//! stopped through a [`Backend`], kept in a store that survives the node,
//! and re-attached or relaunched after a restart. No chain, no SSH: what a
//! VM is for (a contract) is the provider's business.
//!
//! # Layout
//! * [`backend`]: the [`Backend`] trait (launch, attach, destroy) and the
//!   live [`Instance`] it returns (pause, resume, sample, shutdown).
//! * [`qemu`]: the QEMU backend — [`qemu::launch`] (confinement before
//!   exec, fd-passed files, seccomp), [`qemu::qmp`], [`qemu::accel`]
//!   (KVM-or-TCG by a canary guest).
//! * [`xen`]: the Xen backend over `xl` (config generation unit-tested; not
//!   run here, this machine has no Xen).
//! * [`cgroup`]: per-VM control groups on cgroup v1 and v2 hosts.
//! * [`net`]: the guest network — a namespace per VM with its tap,
//!   `isolated` (reaches nothing) or `internet` (public addresses only,
//!   NAT, nftables, `tc` shaping, kernel byte counters); why this and not
//!   QEMU's user network is written there.
//! * [`console`]: the guest's console log, capped and rotated, fed by the
//!   node (the hypervisor never writes it).
//! * [`spec`]: what a VM is, backend-neutral ([`VmSpec`]: its network,
//!   its uid, its files' digests), and the [`Process`] facts that find it
//!   again.
//! * [`runtime`]: [`Runtime`] — start/stop/pause/resume/list, readiness,
//!   volumes, per-VM traffic counters, connections into the guest; what
//!   VMs hold against the machine ([`Capacity`]), one uid per VM.
//! * [`meter`]: one-second sampling into the persisted usage, tunnel and
//!   uplink bytes included; a guest that powers off stops its VM.
//! * [`recover`]: reconcile the store with reality on start, and remove
//!   what stopped VMs left on the host.
//! * [`store`]: the SQLite store ([`store::VmRow`], [`UsageCounters`]).
//! * [`error`]: the error type, [`VmError`].

pub mod backend;
pub mod cgroup;
pub mod console;
pub mod error;
pub mod meter;
pub mod net;
pub mod qemu;
pub mod recover;
pub mod runtime;
pub mod spec;
pub mod store;
pub mod xen;

pub use backend::{Backend, Exit, Instance, Sample};
pub use error::VmError;
pub use net::{GuestNetwork, NetPolicy, Subnet};
pub use runtime::{
    Capacity, DEFAULT_SCRATCH_GIB, DEFAULT_UIDS, MAX_VOLUME_GIB, Runtime, RuntimeConfig, StartVm,
    VmInfo,
};
pub use spec::{GATEWAY, GUEST_IP, ImageDiskSpec, LAN_MAC, NetworkSpec, Process, RunAs, VmSpec};
pub use store::{UsageCounters, VmState};
