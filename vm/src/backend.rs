//! The seam between the VM runtime and a hypervisor.
//!
//! A [`Backend`] launches a [`VmSpec`] and re-attaches to a VM it launched
//! earlier (maybe in a previous life of the node); what it returns is an
//! [`Instance`]: a live VM it can pause, resume, sample and shut down. The
//! runtime ([`crate::Runtime`]) keeps the state (its store), the metering
//! and the recovery; a backend keeps none of that, so a second backend is
//! one folder (`qemu/`, `xen/`) and one `impl`.
//!
//! Time-based decisions (when to pause, when to give up) are the caller's;
//! a backend only does what it is told, with timeouts on its own I/O.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::VmError;
use crate::spec::{Process, VmSpec};

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Persisted with each VM, so a node never re-attaches another
    /// backend's VM ("qemu", "xen").
    fn name(&self) -> &'static str;
    /// What accelerates guests here ("kvm", "tcg", "xen").
    fn accelerator(&self) -> &'static str;
    /// Whether the runtime gives each VM a network namespace of its own
    /// ([`crate::net`]) for the backend to attach the guest to. A backend
    /// that says no gets [`crate::NetworkSpec::UserNat`] specs.
    fn uses_netns(&self) -> bool {
        true
    }
    /// Starts `spec` with its private files under `run_dir`; returns once
    /// the VM's control channel answers.
    async fn launch(&self, spec: &VmSpec, run_dir: &Path) -> Result<Box<dyn Instance>, VmError>;
    /// Re-attaches a VM launched earlier. `None`: it is gone (a VM that is
    /// alive but does not answer its control channel is killed first).
    async fn attach(
        &self,
        spec: &VmSpec,
        process: &Process,
    ) -> Result<Option<Box<dyn Instance>>, VmError>;
    /// Stops a VM this node has no live handle for (a stray process).
    async fn destroy(&self, spec: &VmSpec, process: &Process, grace: Duration);
}

/// A live VM.
#[async_trait]
pub trait Instance: Send + Sync {
    fn process(&self) -> &Process;
    /// Whether the VM's process still runs.
    fn is_alive(&self) -> bool;
    /// How a VM that is no longer alive ended, where the backend can tell
    /// (QEMU: only for a process this node launched; `None` otherwise).
    fn exit(&self) -> Option<Exit> {
        None
    }
    /// Stops the guest's vCPUs; it keeps its memory.
    async fn pause(&self) -> Result<(), VmError>;
    async fn resume(&self) -> Result<(), VmError>;
    /// Counters since the VM's process (or its control group) started.
    async fn sample(&self) -> Result<Sample, VmError>;
    /// Asks the VM to quit, kills it after `grace`, and frees what the
    /// backend set up for it.
    async fn shutdown(&self, grace: Duration);
    /// Kills the VM now, without waiting (for `Drop` guards).
    fn kill(&self);
}

/// How a VM's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It quit on its own terms: the guest powered off.
    Clean,
    /// It crashed or was killed.
    Crashed,
}

/// One reading of a VM's counters; totals since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    /// Host block I/O.
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    /// Guest disk traffic as the hypervisor counts it.
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
}
