//! Zennet provider agent: the machine side of a provider.
//!
//! * [`cgroup`]: per-VM control groups (CPU quota and cpuset, shares,
//!   memory limit, pids, block I/O) on cgroup v1 and v2 hosts.
//!
//! Still to come (see DESIGN.md, "Provider agent"): bench, market policy,
//! the QEMU and Xen runtimes, metering, the payee and recovery.

pub mod cgroup;
pub mod qemu;
pub mod qmp;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Cgroup(String),
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("VM launch: {0}")]
    Launch(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
