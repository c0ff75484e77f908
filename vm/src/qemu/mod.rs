//! The QEMU backend: q35 guests booted straight into a PVH `vmlinux`,
//! confined before they run ([`launch`]), controlled over QMP ([`qmp`]),
//! on KVM where a canary guest shows it works and TCG otherwise
//! ([`accel`]). Usage comes from the VM's cgroup (CPU, memory, host block
//! I/O) and QMP's block statistics (guest disk traffic).

pub mod accel;
pub mod launch;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Exit, Instance, Sample};
use crate::cgroup::VmCgroup;
use crate::error::VmError;
use crate::spec::{Process, VmSpec};
use qmp::Qmp;

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Host-wide settings of the QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub accel: Accel,
    /// Unprivileged identity QEMU runs as, unless a VM's spec names one.
    pub uid: u32,
    pub gid: u32,
    /// Scheduling niceness of VM processes.
    pub nice: i32,
    /// Block I/O ceiling per VM disk in bytes/s (QEMU's own throttling,
    /// which works on any host filesystem, unlike per-device cgroup limits).
    pub disk_bps: Option<u64>,
}

impl Default for QemuConfig {
    fn default() -> QemuConfig {
        QemuConfig {
            binary: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            uid: 65534, // nobody
            gid: 65534, // nogroup
            nice: 5,
            disk_bps: None,
        }
    }
}

/// [`Backend`] over QEMU.
pub struct QemuBackend {
    pub config: QemuConfig,
}

impl QemuBackend {
    pub fn new(config: QemuConfig) -> QemuBackend {
        QemuBackend { config }
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn accelerator(&self) -> &'static str {
        self.config.accel.name()
    }

    async fn launch(&self, spec: &VmSpec, run_dir: &Path) -> Result<Box<dyn Instance>, VmError> {
        let vm = launch::launch(&self.config, spec, run_dir).await?;
        Ok(Box::new(QemuInstance {
            id: spec.id.clone(),
            process: vm.process,
            qmp: vm.qmp,
            _console: vm.console,
        }))
    }

    async fn attach(
        &self,
        spec: &VmSpec,
        process: &Process,
    ) -> Result<Option<Box<dyn Instance>>, VmError> {
        if !launch::is_alive(process.pid, &spec.id) {
            return Ok(None);
        }
        match Qmp::connect(&process.control, Duration::from_secs(5)).await {
            Ok(qmp) => Ok(Some(Box::new(QemuInstance {
                id: spec.id.clone(),
                process: process.clone(),
                qmp,
                _console: launch::reattach_console(process),
            }))),
            Err(e) => {
                tracing::warn!(vm = %spec.id, error = %e, "VM alive but QMP unreachable; killing it");
                launch::shutdown(&spec.id, process.pid, None, Duration::from_secs(1)).await;
                Ok(None)
            }
        }
    }

    async fn destroy(&self, spec: &VmSpec, process: &Process, grace: Duration) {
        launch::shutdown(&spec.id, process.pid, None, grace).await;
    }
}

/// A live QEMU VM, its QMP connection and its console feeds.
pub struct QemuInstance {
    id: String,
    process: Process,
    qmp: Qmp,
    _console: launch::Feeds,
}

#[async_trait]
impl Instance for QemuInstance {
    fn process(&self) -> &Process {
        &self.process
    }

    fn is_alive(&self) -> bool {
        launch::is_alive(self.process.pid, &self.id)
    }

    fn exit(&self) -> Option<Exit> {
        launch::exit_status(self.process.pid).map(|clean| match clean {
            true => Exit::Clean,
            false => Exit::Crashed,
        })
    }

    async fn pause(&self) -> Result<(), VmError> {
        self.qmp.stop().await
    }

    async fn resume(&self) -> Result<(), VmError> {
        self.qmp.cont().await
    }

    async fn sample(&self) -> Result<Sample, VmError> {
        let cg = VmCgroup::load(&self.id).usage();
        // A VM whose QMP is busy still has its cgroup figures.
        let disks = self.qmp.block_stats().await.unwrap_or_default();
        Ok(Sample {
            cpu_ns: cg.cpu_ns,
            memory_bytes: cg.memory_bytes,
            io_read_bytes: cg.io_read_bytes,
            io_write_bytes: cg.io_write_bytes,
            disk_read_bytes: disks.iter().map(|d| d.stats.rd_bytes).sum(),
            disk_write_bytes: disks.iter().map(|d| d.stats.wr_bytes).sum(),
        })
    }

    async fn shutdown(&self, grace: Duration) {
        launch::shutdown(&self.id, self.process.pid, Some(&self.qmp), grace).await;
    }

    fn kill(&self) {
        if self.is_alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.process.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
