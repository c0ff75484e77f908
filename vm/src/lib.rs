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
//! * [`spec`]: what a VM is, backend-neutral ([`VmSpec`], with room for a
//!   per-VM network and uid), and the [`Process`] facts that find it again.
//! * [`runtime`]: [`Runtime`] — start/stop/pause/resume/list, readiness,
//!   volumes, per-VM traffic counters.
//! * [`meter`]: one-second sampling into the persisted usage, tunnel bytes
//!   included.
//! * [`recover`]: reconcile the store with reality on start.
//! * [`store`]: the SQLite store ([`store::VmRow`], [`UsageCounters`]).
//! * [`error`]: the error type, [`VmError`].

pub mod backend;
pub mod cgroup;
pub mod error;
pub mod meter;
pub mod qemu;
pub mod recover;
pub mod runtime;
pub mod spec;
pub mod store;
pub mod xen;

pub use backend::{Backend, Instance, Sample};
pub use error::VmError;
pub use runtime::{MAX_VOLUME_GIB, Runtime, RuntimeConfig, StartVm, VmInfo};
pub use spec::{NetworkSpec, Process, RunAs, VmSpec};
pub use store::{UsageCounters, VmState};
