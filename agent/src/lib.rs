//! Zennet provider agent: the machine side of a provider.
//!
//! * [`cgroup`]: per-VM control groups (CPU quota and cpuset, shares,
//!   memory limit, pids, block I/O) on cgroup v1 and v2 hosts.
//! * [`qemu`] + [`qmp`]: the QEMU backend (q35, PVH direct boot, fd-passed
//!   files, unprivileged uid, seccomp) and its QMP control.
//! * [`xen`]: `xl` configuration for Xen hosts (generated and unit-tested;
//!   it has not run on Xen here).
//! * [`accel`]: KVM-or-TCG decision by a canary guest, cached per host.
//! * [`service`]: the agent itself — start/stop/pause VMs, per-second
//!   metering into SQLite ([`store`]), recovery after a restart.
//! * [`hwbench`]: the hardware benchmark behind `zennet bench` and the
//!   capacity profile (compute units per core).
//!
//! Still to come (see DESIGN.md, "Provider agent"): market policy and the payee.

pub mod accel;
pub mod cgroup;
pub mod hwbench;
pub mod market;
pub mod provider;
pub mod qemu;
pub mod qmp;
pub mod service;
pub mod store;
pub mod tunnel;
pub mod xen;

pub use service::{Agent, AgentConfig, StartVm, VmInfo};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Cgroup(String),
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("VM launch: {0}")]
    Launch(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("agent database: {0}")]
    Store(String),
    #[error("agent database is inconsistent: {0}")]
    Corrupt(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
