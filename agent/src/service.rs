//! The agent service: starts, lists and stops VMs, meters them every
//! second, and on start reconciles its database with reality — VMs still
//! alive are re-attached (pid + QMP socket), dead ones with a persistent
//! volume are relaunched, the rest are marked failed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex as AsyncMutex;

use crate::AgentError;
use crate::cgroup::VmCgroup;
use crate::qemu::{self, QemuConfig, VmSpec};
use crate::qmp::Qmp;
use crate::store::{AgentStore, UsageCounters, VmRecord, VmState};

/// Largest persistent volume one VM may ask for.
pub const MAX_VOLUME_GIB: u32 = 1024;
const QUIT_GRACE: Duration = Duration::from_secs(10);

pub struct AgentConfig {
    /// Holds agent.db, vms/ and volumes/.
    pub dir: PathBuf,
    pub images_dir: PathBuf,
    pub qemu: QemuConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartVm {
    pub image: String,
    pub cores: u32,
    /// CPU time in cores (default: `cores`).
    pub cpu_quota: Option<f64>,
    pub mem_mib: u64,
    /// A persistent volume kept by the node under this name; reusing a
    /// name attaches the same volume again.
    pub volume: Option<String>,
    pub volume_gib: Option<u32>,
    /// OpenSSH public key line allowed to log in as root.
    pub authorized_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    pub state: VmState,
    pub image: String,
    pub pid: Option<u32>,
    pub ssh_port: u16,
    pub cores: u32,
    pub cpu_quota: f64,
    pub mem_mib: u64,
    pub volume: Option<String>,
    pub usage: UsageCounters,
}

struct Live {
    pid: u32,
    qmp: Qmp,
    /// Cgroup reading at the last sample (a relaunch starts a new group).
    last_cpu_ns: u64,
    last_sample: Instant,
}

pub struct Agent {
    config: AgentConfig,
    store: Mutex<AgentStore>,
    live: AsyncMutex<HashMap<String, Live>>,
}

impl Agent {
    /// Opens the agent and reconciles its VMs.
    pub async fn open(config: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        std::fs::create_dir_all(&config.dir)?;
        let store = AgentStore::open(&config.dir.join("agent.db"))?;
        let agent = Arc::new(Agent {
            config,
            store: Mutex::new(store),
            live: AsyncMutex::new(HashMap::new()),
        });
        agent.recover().await?;
        Ok(agent)
    }

    pub async fn start(&self, req: StartVm) -> Result<VmInfo, AgentError> {
        if req.cores == 0 || req.cores > 64 {
            return Err(AgentError::Invalid("cores must be between 1 and 64".into()));
        }
        if req.mem_mib < 64 {
            return Err(AgentError::Invalid("mem-mib must be at least 64".into()));
        }
        let quota = req.cpu_quota.unwrap_or(req.cores as f64);
        if !(quota > 0.0 && quota <= req.cores as f64) {
            return Err(AgentError::Invalid(format!(
                "cpu quota {quota} must be above 0 and at most the {} cores",
                req.cores
            )));
        }
        let volume = match &req.volume {
            Some(name) => {
                if name.is_empty()
                    || name.len() > 64
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(AgentError::Invalid(format!(
                        "volume name {name:?} must be 1-64 letters, digits, '-' or '_'"
                    )));
                }
                let gib = req.volume_gib.unwrap_or(1);
                if gib == 0 || gib > MAX_VOLUME_GIB {
                    return Err(AgentError::Invalid(format!(
                        "disk-gib must be 1 to {MAX_VOLUME_GIB}"
                    )));
                }
                if self.volume_in_use(name)? {
                    return Err(AgentError::Invalid(format!(
                        "volume {name} is attached to a running VM"
                    )));
                }
                Some((
                    self.config.dir.join("volumes").join(format!("{name}.img")),
                    gib,
                ))
            }
            None => None,
        };
        let image = zennet_images::load(&self.config.images_dir, &req.image).map_err(|e| {
            AgentError::Invalid(format!("{e} (build it with `zennet image build`)"))
        })?;
        let kernel_args = image
            .kernel_args(&[req.authorized_key.trim()])
            .map_err(|e| AgentError::Invalid(format!("authorized key: {e}")))?;
        let id = new_vm_id();
        let spec = VmSpec {
            id: id.clone(),
            cores: req.cores,
            cpu_quota: quota,
            mem_mib: req.mem_mib,
            kernel: image.kernel(),
            initramfs: image.initramfs(),
            kernel_args,
            scratch_gib: 2,
            persistent: volume,
            ssh_port: free_port()?,
        };
        let record = VmRecord {
            spec,
            image: req.image.clone(),
            volume: req.volume.clone(),
            state: VmState::Failed,
            process: None,
            created_ms: now_ms(),
        };
        self.launch(record).await?;
        self.info(&id).await
    }

    pub async fn stop(&self, id: &str) -> Result<VmInfo, AgentError> {
        let mut record = self
            .store()
            .get(id)?
            .ok_or_else(|| AgentError::NotFound(format!("no VM {id}")))?;
        let live = self.live.lock().await.remove(id);
        let pid = live
            .as_ref()
            .map(|l| l.pid)
            .or(record.process.as_ref().map(|p| p.pid));
        if let Some(pid) = pid {
            qemu::shutdown(id, pid, live.as_ref().map(|l| &l.qmp), QUIT_GRACE).await;
        }
        if let Some(p) = &record.process {
            // The scratch disk goes with the VM; the persistent volume stays.
            let _ = std::fs::remove_dir_all(&p.run_dir);
        }
        record.state = VmState::Stopped;
        record.process = None;
        self.store().put(&record)?;
        self.info(id).await
    }

    /// Waits until the guest prints its ready marker on the serial console
    /// (sshd is up) and returns the SSH host key it announced, if any.
    pub async fn wait_ready(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<String>, AgentError> {
        let record = self
            .store()
            .get(id)?
            .ok_or_else(|| AgentError::NotFound(format!("no VM {id}")))?;
        let log = record
            .process
            .map(|p| p.serial_log)
            .ok_or_else(|| not_running(id))?;
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(zennet_images::READY_MARKER) {
                let host_key = text.lines().find_map(|l| {
                    l.trim()
                        .strip_prefix(zennet_images::HOST_KEY_MARKER)
                        .map(|k| k.trim().to_string())
                });
                return Ok(host_key);
            }
            if Instant::now() > deadline {
                return Err(AgentError::Launch(format!(
                    "VM {id} printed no {} within {}s (serial log {})",
                    zennet_images::READY_MARKER,
                    timeout.as_secs(),
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes a persistent volume that no running VM holds.
    pub fn remove_volume(&self, name: &str) -> Result<(), AgentError> {
        if self.volume_in_use(name)? {
            return Err(AgentError::Invalid(format!(
                "volume {name} is attached to a running VM"
            )));
        }
        let path = self.config.dir.join("volumes").join(format!("{name}.img"));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Pauses the guest's vCPUs (QMP stop); it keeps its memory.
    pub async fn pause(&self, id: &str) -> Result<(), AgentError> {
        {
            let live = self.live.lock().await;
            live.get(id)
                .ok_or_else(|| not_running(id))?
                .qmp
                .stop()
                .await?;
        }
        self.set_state(id, VmState::Paused)
    }

    pub async fn resume(&self, id: &str) -> Result<(), AgentError> {
        {
            let live = self.live.lock().await;
            live.get(id)
                .ok_or_else(|| not_running(id))?
                .qmp
                .cont()
                .await?;
        }
        self.set_state(id, VmState::Running)
    }

    pub async fn list(&self) -> Result<Vec<VmInfo>, AgentError> {
        let records = self.store().all()?;
        let mut out = Vec::new();
        for r in records {
            out.push(self.info(&r.spec.id).await?);
        }
        Ok(out)
    }

    pub async fn info(&self, id: &str) -> Result<VmInfo, AgentError> {
        let r = self
            .store()
            .get(id)?
            .ok_or_else(|| AgentError::NotFound(format!("no VM {id}")))?;
        let usage = self.store().usage(id)?;
        Ok(VmInfo {
            id: r.spec.id.clone(),
            state: r.state,
            image: r.image,
            pid: r.process.map(|p| p.pid),
            ssh_port: r.spec.ssh_port,
            cores: r.spec.cores,
            cpu_quota: r.spec.cpu_quota,
            mem_mib: r.spec.mem_mib,
            volume: r.volume,
            usage,
        })
    }

    /// Samples every live VM once a second, for as long as the agent runs: cgroup CPU,
    /// memory and block I/O, QMP block statistics; integrates them into the
    /// persisted counters. A VM whose process died is recovered.
    pub async fn meter(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Err(e) = self.sample_all().await {
                tracing::warn!(error = %e, "metering failed");
            }
        }
    }

    async fn sample_all(&self) -> Result<(), AgentError> {
        let mut dead = Vec::new();
        let mut live = self.live.lock().await;
        for (id, vm) in live.iter_mut() {
            if !qemu::is_alive(vm.pid, id) {
                dead.push(id.clone());
                continue;
            }
            let cg = VmCgroup::load(id).usage();
            let disks = vm.qmp.block_stats().await.unwrap_or_default();
            let now = Instant::now();
            let dt = now.duration_since(vm.last_sample).as_secs_f64();
            vm.last_sample = now;
            let store = self.store();
            let mut u = store.usage(id)?;
            u.cpu_ns += cg.cpu_ns.saturating_sub(vm.last_cpu_ns);
            vm.last_cpu_ns = cg.cpu_ns;
            u.memory_bytes = cg.memory_bytes;
            u.memory_byte_seconds += cg.memory_bytes as f64 * dt;
            u.io_read_bytes = u.io_read_bytes.max(cg.io_read_bytes);
            u.io_write_bytes = u.io_write_bytes.max(cg.io_write_bytes);
            u.disk_read_bytes = u
                .disk_read_bytes
                .max(disks.iter().map(|d| d.stats.rd_bytes).sum());
            u.disk_write_bytes = u
                .disk_write_bytes
                .max(disks.iter().map(|d| d.stats.wr_bytes).sum());
            u.seconds += dt;
            store.put_usage(id, &u, now_ms())?;
        }
        for id in &dead {
            if let Some(vm) = live.remove(id) {
                qemu::reap(vm.pid).await;
            }
        }
        drop(live);
        for id in dead {
            tracing::warn!(vm = %id, "QEMU process died");
            let record = self.store().get(&id)?;
            if let Some(r) = record {
                self.recover_one(r).await?;
            }
        }
        Ok(())
    }

    async fn recover(&self) -> Result<(), AgentError> {
        let records = self.store().all()?;
        for r in records {
            if matches!(r.state, VmState::Running | VmState::Paused) {
                self.recover_one(r).await?;
            }
        }
        Ok(())
    }

    async fn recover_one(&self, mut r: VmRecord) -> Result<(), AgentError> {
        let id = r.spec.id.clone();
        if let Some(p) = r.process.clone()
            && qemu::is_alive(p.pid, &id)
        {
            match Qmp::connect(&p.qmp_socket, Duration::from_secs(5)).await {
                Ok(qmp) => {
                    tracing::info!(vm = %id, pid = p.pid, "re-attached running VM");
                    let last_cpu_ns = VmCgroup::load(&id).usage().cpu_ns;
                    self.live.lock().await.insert(
                        id,
                        Live {
                            pid: p.pid,
                            qmp,
                            last_cpu_ns,
                            last_sample: Instant::now(),
                        },
                    );
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(vm = %id, error = %e, "VM alive but QMP unreachable; restarting it");
                    qemu::shutdown(&id, p.pid, None, Duration::from_secs(1)).await;
                }
            }
        }
        if r.spec.persistent.is_some() {
            tracing::info!(vm = %id, "relaunching VM with a persistent volume");
            return self.launch(r).await;
        }
        r.state = VmState::Failed;
        r.process = None;
        self.store().put(&r)?;
        let _ = VmCgroup::load(&id).remove();
        Ok(())
    }

    async fn launch(&self, mut r: VmRecord) -> Result<(), AgentError> {
        let id = r.spec.id.clone();
        let run_dir = self.config.dir.join("vms").join(&id);
        let _ = std::fs::remove_dir_all(&run_dir);
        match qemu::launch(&self.config.qemu, &r.spec, &run_dir).await {
            Ok((process, qmp)) => {
                let pid = process.pid;
                r.state = VmState::Running;
                r.process = Some(process);
                self.store().put(&r)?;
                self.live.lock().await.insert(
                    id,
                    Live {
                        pid,
                        qmp,
                        last_cpu_ns: 0,
                        last_sample: Instant::now(),
                    },
                );
                Ok(())
            }
            Err(e) => {
                r.state = VmState::Failed;
                r.process = None;
                self.store().put(&r)?;
                Err(e)
            }
        }
    }

    fn set_state(&self, id: &str, state: VmState) -> Result<(), AgentError> {
        let store = self.store();
        if let Some(mut r) = store.get(id)? {
            r.state = state;
            store.put(&r)?;
        }
        Ok(())
    }

    fn volume_in_use(&self, name: &str) -> Result<bool, AgentError> {
        Ok(self.store().all()?.iter().any(|r| {
            r.volume.as_deref() == Some(name)
                && matches!(r.state, VmState::Running | VmState::Paused)
        }))
    }

    fn store(&self) -> std::sync::MutexGuard<'_, AgentStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn images_dir(&self) -> &Path {
        &self.config.images_dir
    }
}

fn not_running(id: &str) -> AgentError {
    AgentError::NotFound(format!("no running VM {id}"))
}

fn new_vm_id() -> String {
    format!(
        "{:012x}",
        getrandom::u64().unwrap_or_else(|_| now_ms()) & 0xffff_ffff_ffff
    )
}

fn free_port() -> Result<u16, AgentError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
