//! Per-VM control groups (`cgroups-rs`), on cgroup v1 and v2 hosts.
//!
//! Each VM gets `zennet/<vm id>` with: CPU quota = cores × period (so a
//! fractional quota such as 0.5 core works), a cpuset, CPU shares
//! proportional to cores, a memory limit of guest RAM + QEMU overhead, a
//! pids limit (QEMU's threads) and optional block I/O throttling. The QEMU
//! process joins the group before it execs, so it never runs unconfined.

use std::path::PathBuf;

use cgroups_rs::CgroupPid;
use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, MaxValue, hierarchies};

use crate::error::VmError;

/// The CFS period used for quotas: 100 ms, the kernel default.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Memory QEMU itself needs beyond guest RAM (device models, TCG code
/// cache, I/O buffers, the page cache of its images, which the memory
/// controller charges too).
pub const QEMU_OVERHEAD_MIB: u64 = 192;
/// The TCG translation cache QEMU is given (`-accel tcg,tb-size=`), inside
/// [`QEMU_OVERHEAD_MIB`]: QEMU's own default (1 GiB) would not fit.
pub const TCG_CODE_CACHE_MIB: u64 = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// CPU time allowed, in cores (0.5 = half a core).
    pub cpu_cores: f64,
    /// Host CPUs the VM may run on, e.g. "0-1" (None: all).
    pub cpuset: Option<String>,
    pub memory_bytes: u64,
    pub pids: u64,
    /// Per-device block I/O throttle: (major, minor, read B/s, write B/s).
    pub blkio: Option<(u64, u64, u64, u64)>,
}

impl Limits {
    /// The defaults for a VM: quota = cores, memory = RAM + overhead.
    pub fn for_vm(cores: f64, guest_mem_mib: u64) -> Limits {
        Limits {
            cpu_cores: cores,
            cpuset: None,
            memory_bytes: (guest_mem_mib + QEMU_OVERHEAD_MIB) << 20,
            // vCPU threads, the main loop, I/O and RCU threads, with room
            // for the thread pool QEMU grows under disk load.
            pids: 64 + 4 * cores.ceil() as u64,
            blkio: None,
        }
    }
}

/// Usage read from the group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

pub struct VmCgroup {
    cgroup: Cgroup,
    path: String,
}

impl VmCgroup {
    /// Creates (or re-opens) the group for `vm_id` and applies `limits`.
    pub fn create(vm_id: &str, limits: &Limits) -> Result<VmCgroup, VmError> {
        let path = format!("zennet/{vm_id}");
        let hier = hierarchies::auto();
        let cgroup = Cgroup::new(hier, path.as_str()).map_err(|e| cg_error(&path, "create", e))?;
        let g = VmCgroup { cgroup, path };
        g.apply(limits)?;
        Ok(g)
    }

    /// Opens an existing group (recovery after an agent restart).
    pub fn load(vm_id: &str) -> VmCgroup {
        let path = format!("zennet/{vm_id}");
        VmCgroup {
            cgroup: Cgroup::load(hierarchies::auto(), path.as_str()),
            path,
        }
    }

    pub fn exists(&self) -> bool {
        self.cgroup.exists()
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The `cgroup.procs` files a process writes its own pid into to join:
    /// one per v1 controller, one on v2. Used from `pre_exec`, where only
    /// async-signal-safe work is allowed, so the paths are prepared here.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.cgroup
            .subsystems()
            .iter()
            .map(|s| s.to_controller().path().join("cgroup.procs"))
            .collect()
    }

    pub fn add_pid(&self, pid: u32) -> Result<(), VmError> {
        self.cgroup
            .add_task_by_tgid(CgroupPid::from(pid as u64))
            .map_err(|e| cg_error(&self.path, "add process to", e))
    }

    pub fn apply(&self, limits: &Limits) -> Result<(), VmError> {
        let p = &self.path;
        if let Some(cpu) = self.cgroup.controller_of::<CpuController>() {
            let quota = (limits.cpu_cores * CPU_PERIOD_US as f64)
                .round()
                .max(1000.0) as i64;
            cpu.set_cfs_quota_and_period(Some(quota), Some(CPU_PERIOD_US))
                .map_err(|e| cg_error(p, "set the CPU quota of", e))?;
            // Shares scale with the cores bought (1024 per core on v1; the
            // v2 weight is derived by cgroups-rs).
            let shares = ((limits.cpu_cores * 1024.0).round() as u64).clamp(2, 262_144);
            cpu.set_shares(shares)
                .map_err(|e| cg_error(p, "set CPU shares of", e))?;
        }
        if let Some(cpuset) = self.cgroup.controller_of::<CpuSetController>() {
            let cpus = match &limits.cpuset {
                Some(c) => c.clone(),
                None => host_cpus(),
            };
            cpuset
                .set_cpus(&cpus)
                .map_err(|e| cg_error(p, "set the cpuset of", e))?;
            // v1 needs mems before a task can join.
            let _ = cpuset.set_mems(&host_mems());
        }
        if let Some(mem) = self.cgroup.controller_of::<MemController>() {
            mem.set_limit(limits.memory_bytes as i64)
                .map_err(|e| cg_error(p, "set the memory limit of", e))?;
            // No swap beyond the limit: the RFC wants no paging of guests.
            let _ = mem.set_memswap_limit(limits.memory_bytes as i64);
        }
        if let Some(pids) = self.cgroup.controller_of::<PidController>() {
            pids.set_pid_max(MaxValue::Value(limits.pids as i64))
                .map_err(|e| cg_error(p, "set the pids limit of", e))?;
        }
        if let (Some(blkio), Some((major, minor, read, write))) =
            (self.cgroup.controller_of::<BlkIoController>(), limits.blkio)
        {
            blkio
                .throttle_read_bps_for_device(major, minor, read)
                .map_err(|e| cg_error(p, "throttle reads of", e))?;
            blkio
                .throttle_write_bps_for_device(major, minor, write)
                .map_err(|e| cg_error(p, "throttle writes of", e))?;
        }
        Ok(())
    }

    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        if let Some(acct) = self.cgroup.controller_of::<CpuAcctController>() {
            u.cpu_ns = acct.cpuacct().usage;
        } else if let Some(cpu) = self.cgroup.controller_of::<CpuController>() {
            // v2: cpu.stat has usage_usec.
            u.cpu_ns = stat_value(&cpu.cpu().stat, "usage_usec") * 1000;
        }
        if let Some(mem) = self.cgroup.controller_of::<MemController>() {
            let m = mem.memory_stat();
            u.memory_bytes = m.usage_in_bytes;
            u.memory_peak_bytes = m.max_usage_in_bytes;
        }
        if let Some(blkio) = self.cgroup.controller_of::<BlkIoController>() {
            let b = blkio.blkio();
            let services = if b.io_service_bytes_recursive.is_empty() {
                &b.io_service_bytes
            } else {
                &b.io_service_bytes_recursive
            };
            for s in services {
                u.io_read_bytes += s.read;
                u.io_write_bytes += s.write;
            }
            for s in &b.io_stat {
                u.io_read_bytes += s.rbytes;
                u.io_write_bytes += s.wbytes;
            }
        }
        u
    }

    pub fn pids(&self) -> Vec<u64> {
        self.cgroup.procs().into_iter().map(|p| p.pid).collect()
    }

    /// Kills whatever is left and removes the group.
    pub fn remove(&self) -> Result<(), VmError> {
        if !self.cgroup.exists() {
            return Ok(());
        }
        let _ = self.cgroup.kill();
        for _ in 0..50 {
            if self.cgroup.procs().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.cgroup
            .delete()
            .map_err(|e| cg_error(&self.path, "remove", e))
    }
}

fn stat_value(stat: &str, key: &str) -> u64 {
    stat.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn host_cpus() -> String {
    read_root("cpuset", &["cpuset.cpus.effective", "cpuset.cpus"])
        .unwrap_or_else(|| format!("0-{}", num_cpus().saturating_sub(1)))
}

fn host_mems() -> String {
    read_root("cpuset", &["cpuset.mems.effective", "cpuset.mems"]).unwrap_or_else(|| "0".into())
}

fn read_root(controller: &str, files: &[&str]) -> Option<String> {
    let roots = [
        format!("/sys/fs/cgroup/{controller}"),
        "/sys/fs/cgroup".to_string(),
    ];
    roots.iter().find_map(|root| {
        files.iter().find_map(|f| {
            std::fs::read_to_string(format!("{root}/{f}"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
    })
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cg_error(path: &str, what: &'static str, e: cgroups_rs::fs::error::Error) -> VmError {
    VmError::Cgroup {
        group: path.to_string(),
        action: what,
        reason: e.to_string(),
    }
}
