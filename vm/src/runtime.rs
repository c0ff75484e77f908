//! The VM runtime: starts, lists, pauses and stops VMs through its
//! [`Backend`], keeps them in its store, meters them ([`crate::meter`])
//! and reconciles the store with reality on start ([`crate::recover`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex as AsyncMutex;
use zennet_images::ImageError;

use crate::backend::{Backend, Instance};
use crate::error::VmError;
use crate::spec::{NetworkSpec, VmSpec};
use crate::store::{UsageCounters, VmRow, VmState, VmStore};

/// Largest persistent volume one VM may ask for.
pub const MAX_VOLUME_GIB: u32 = 1024;
const QUIT_GRACE: Duration = Duration::from_secs(10);

pub struct RuntimeConfig {
    /// Holds agent.db (the VM store), vms/ and volumes/.
    pub dir: PathBuf,
    pub images_dir: PathBuf,
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

/// A VM this process has a live handle for.
pub(crate) struct Live {
    pub(crate) instance: Box<dyn Instance>,
    /// Counter reading at the last sample (a relaunch starts from zero).
    pub(crate) last_cpu_ns: u64,
    pub(crate) last_sample: Instant,
}

pub struct Runtime {
    pub(crate) config: RuntimeConfig,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) store: Mutex<VmStore>,
    pub(crate) live: AsyncMutex<HashMap<String, Live>>,
    /// Per-VM tunnel byte counters (see [`Runtime::traffic_counter`]).
    pub(crate) traffic: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Runtime {
    /// Opens the runtime over `backend` and reconciles its VMs.
    pub async fn open(
        config: RuntimeConfig,
        backend: Arc<dyn Backend>,
    ) -> Result<Arc<Runtime>, VmError> {
        std::fs::create_dir_all(&config.dir)?;
        let store = VmStore::open(&config.dir.join("agent.db"))?;
        let runtime = Arc::new(Runtime {
            config,
            backend,
            store: Mutex::new(store),
            live: AsyncMutex::new(HashMap::new()),
            traffic: Mutex::new(HashMap::new()),
        });
        runtime.recover().await?;
        Ok(runtime)
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The byte counter of VM `id`'s traffic: whoever carries its traffic
    /// (the tunnel's forward) adds to it; metering drains it into the VM's
    /// persisted usage every second. It lives as long as the runtime, so
    /// a tunnel that reconnects keeps adding to the same VM.
    pub fn traffic_counter(&self, id: &str) -> Arc<AtomicU64> {
        self.traffic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub async fn start(&self, req: StartVm) -> Result<VmInfo, VmError> {
        if req.cores == 0 || req.cores > 64 {
            return Err(VmError::BadCores {
                got: req.cores,
                max: 64,
            });
        }
        if req.mem_mib < 64 {
            return Err(VmError::TooLittleMemory {
                got: req.mem_mib,
                min: 64,
            });
        }
        let quota = req.cpu_quota.unwrap_or(req.cores as f64);
        if !(quota > 0.0 && quota <= req.cores as f64) {
            return Err(VmError::BadQuota {
                quota,
                cores: req.cores,
            });
        }
        let volume = match &req.volume {
            Some(name) => {
                if name.is_empty()
                    || name.len() > 64
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(VmError::BadVolumeName(name.clone()));
                }
                let gib = req.volume_gib.unwrap_or(1);
                if gib == 0 || gib > MAX_VOLUME_GIB {
                    return Err(VmError::BadVolumeSize {
                        got: gib,
                        max: MAX_VOLUME_GIB,
                    });
                }
                if self.volume_in_use(name)? {
                    return Err(VmError::VolumeInUse(name.clone()));
                }
                Some((
                    self.config.dir.join("volumes").join(format!("{name}.img")),
                    gib,
                ))
            }
            None => None,
        };
        let image =
            zennet_images::load(&self.config.images_dir, &req.image).map_err(VmError::Image)?;
        let kernel_args = image
            .kernel_args(&[req.authorized_key.trim()])
            .map_err(|e: ImageError| VmError::BadKey(e))?;
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
            network: NetworkSpec::UserNat,
            run_as: None,
        };
        let record = VmRow {
            spec,
            backend: self.backend.name().to_string(),
            image: req.image.clone(),
            volume: req.volume.clone(),
            state: VmState::Failed,
            process: None,
            created_ms: now_ms(),
        };
        self.launch(record).await?;
        self.info(&id).await
    }

    pub async fn stop(&self, id: &str) -> Result<VmInfo, VmError> {
        let mut record = self
            .store()
            .get(id)?
            .ok_or_else(|| VmError::NoSuchVm(id.to_string()))?;
        let live = self.live.lock().await.remove(id);
        match (&live, &record.process) {
            (Some(l), _) => l.instance.shutdown(QUIT_GRACE).await,
            (None, Some(p)) => self.backend.destroy(&record.spec, p, QUIT_GRACE).await,
            (None, None) => {}
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
    pub async fn wait_ready(&self, id: &str, timeout: Duration) -> Result<Option<String>, VmError> {
        let record = self
            .store()
            .get(id)?
            .ok_or_else(|| VmError::NoSuchVm(id.to_string()))?;
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
                return Err(VmError::NotReady {
                    vm: id.to_string(),
                    marker: zennet_images::READY_MARKER,
                    secs: timeout.as_secs(),
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes a persistent volume that no running VM holds.
    pub fn remove_volume(&self, name: &str) -> Result<(), VmError> {
        if self.volume_in_use(name)? {
            return Err(VmError::VolumeInUse(name.to_string()));
        }
        let path = self.config.dir.join("volumes").join(format!("{name}.img"));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Pauses the guest's vCPUs (QMP stop); it keeps its memory.
    pub async fn pause(&self, id: &str) -> Result<(), VmError> {
        {
            let live = self.live.lock().await;
            live.get(id)
                .ok_or_else(|| not_running(id))?
                .instance
                .pause()
                .await?;
        }
        self.set_state(id, VmState::Paused)
    }

    pub async fn resume(&self, id: &str) -> Result<(), VmError> {
        {
            let live = self.live.lock().await;
            live.get(id)
                .ok_or_else(|| not_running(id))?
                .instance
                .resume()
                .await?;
        }
        self.set_state(id, VmState::Running)
    }

    pub async fn list(&self) -> Result<Vec<VmInfo>, VmError> {
        let records = self.store().all()?;
        let mut out = Vec::new();
        for r in records {
            out.push(self.info(&r.spec.id).await?);
        }
        Ok(out)
    }

    pub async fn info(&self, id: &str) -> Result<VmInfo, VmError> {
        let r = self
            .store()
            .get(id)?
            .ok_or_else(|| VmError::NoSuchVm(id.to_string()))?;
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

    fn set_state(&self, id: &str, state: VmState) -> Result<(), VmError> {
        let store = self.store();
        if let Some(mut r) = store.get(id)? {
            r.state = state;
            store.put(&r)?;
        }
        Ok(())
    }

    fn volume_in_use(&self, name: &str) -> Result<bool, VmError> {
        Ok(self.store().all()?.iter().any(|r| {
            r.volume.as_deref() == Some(name)
                && matches!(r.state, VmState::Running | VmState::Paused)
        }))
    }

    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, VmStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn images_dir(&self) -> &Path {
        &self.config.images_dir
    }
}

fn not_running(id: &str) -> VmError {
    VmError::NotRunning(id.to_string())
}

fn new_vm_id() -> String {
    format!(
        "{:012x}",
        getrandom::u64().unwrap_or_else(|_| now_ms()) & 0xffff_ffff_ffff
    )
}

fn free_port() -> Result<u16, VmError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
