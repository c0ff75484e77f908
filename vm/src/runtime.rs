//! The VM runtime: starts, lists, pauses and stops VMs through its
//! [`Backend`], keeps them in its store, meters them ([`crate::meter`])
//! and reconciles the store with reality on start ([`crate::recover`]).
//!
//! What a start takes is checked against the machine first
//! ([`Capacity`]): cores, memory and disk of every running VM and every
//! kept volume, and the disk's free space measured again at each start,
//! so neither the operator (`agent vm start`) nor the market can
//! oversubscribe the host. Each VM gets a uid of its own from the
//! operator's range and, on backends that use one, a network namespace of
//! its own ([`crate::net`]); everything a VM had on the host (run
//! directory, namespace, uplink) is removed whenever it stops, whichever
//! way it stops.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex as AsyncMutex;
use zennet_images::ImageError;

use crate::backend::{Backend, Instance};
use crate::error::VmError;
use crate::net::{self, GuestNetwork, NetBytes, NetPolicy};
use crate::spec::{NetworkSpec, RunAs, VmSpec};
use crate::store::{UsageCounters, VmRow, VmState, VmStore};

/// Largest persistent volume one VM may ask for.
pub const MAX_VOLUME_GIB: u32 = 1024;
/// Largest scratch disk one VM may ask for.
pub const MAX_SCRATCH_GIB: u32 = 1024;
/// Scratch disk of a VM that asks for none.
pub const DEFAULT_SCRATCH_GIB: u32 = 2;
const QUIT_GRACE: Duration = Duration::from_secs(10);

pub struct RuntimeConfig {
    /// Holds agent.db (the VM store), vms/ and volumes/.
    pub dir: PathBuf,
    pub images_dir: PathBuf,
    /// What VMs may hold in all (None: unchecked; for tests of what drives
    /// the runtime).
    pub capacity: Option<Capacity>,
    /// Uids (and gids) VM processes run as, one per VM.
    pub uids: RangeInclusive<u32>,
    pub network: NetPolicy,
}

impl RuntimeConfig {
    /// Defaults: no capacity check, [`DEFAULT_UIDS`], isolated guests.
    pub fn new(dir: PathBuf, images_dir: PathBuf) -> RuntimeConfig {
        RuntimeConfig {
            dir,
            images_dir,
            capacity: None,
            uids: DEFAULT_UIDS,
            network: NetPolicy::default(),
        }
    }
}

/// The uids VMs run as unless the operator picks others
/// (`[provider] vm_uid_range`): far above any range Debian hands to users,
/// system accounts or subordinate-id maps.
pub const DEFAULT_UIDS: RangeInclusive<u32> = 2_100_000_000..=2_100_009_999;

/// Cores, memory and disk: what the machine offers VMs, or what they hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Capacity {
    pub fn plus(&self, o: &Capacity) -> Capacity {
        Capacity {
            cores: self.cores + o.cores,
            memory_mib: self.memory_mib + o.memory_mib,
            disk_gib: self.disk_gib + o.disk_gib,
        }
    }
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
    /// Scratch disk size (default [`DEFAULT_SCRATCH_GIB`]).
    #[serde(default)]
    pub scratch_gib: Option<u32>,
    /// The guest network (default: the operator's `guest_network`).
    #[serde(default)]
    pub network: Option<GuestNetwork>,
    /// Bandwidth each way with internet: at least this (what the task
    /// bought), or the operator's per-VM figure when that is higher or
    /// this is unset.
    #[serde(default)]
    pub bandwidth_mbps: Option<u32>,
    /// OpenSSH public key line allowed to log in as root.
    pub authorized_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    pub state: VmState,
    pub image: String,
    pub pid: Option<u32>,
    /// Loopback port of the guest's sshd (`ssh -p PORT root@127.0.0.1`).
    pub ssh_port: u16,
    pub cores: u32,
    pub cpu_quota: f64,
    pub mem_mib: u64,
    pub scratch_gib: u32,
    pub volume: Option<String>,
    /// "isolated", "internet" or "user" (QEMU's restricted user network).
    pub network: String,
    /// The VM's network namespace, if it has one.
    pub netns: Option<String>,
    pub uid: Option<u32>,
    pub usage: UsageCounters,
    /// Cores the VM kept busy over the last metering second (its live
    /// load; `usage.cpu_ns` is the total billed). Zero when not running.
    #[serde(default)]
    pub cpu_cores_now: f64,
}

/// A VM this process has a live handle for.
pub(crate) struct Live {
    pub(crate) instance: Box<dyn Instance>,
    pub(crate) network: NetworkSpec,
    /// Counter readings at the last sample (a relaunch starts from zero).
    pub(crate) last_cpu_ns: u64,
    pub(crate) last_net: NetBytes,
    pub(crate) last_sample: Instant,
    /// The loopback port into the VM's namespace, for the operator.
    pub(crate) _proxy: Option<Proxy>,
}

pub struct Runtime {
    pub(crate) config: RuntimeConfig,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) store: Mutex<VmStore>,
    pub(crate) live: AsyncMutex<HashMap<String, Live>>,
    /// Per-VM tunnel byte counters (see [`Runtime::traffic_counter`]).
    pub(crate) traffic: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Each live VM's load over the last metering second, in cores. In
    /// memory only: a rate, not something billed or recovered.
    pub(crate) cpu_now: Mutex<HashMap<String, f64>>,
    /// One start at a time: what it takes is checked, then taken.
    starting: AsyncMutex<()>,
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
            cpu_now: Mutex::new(HashMap::new()),
            starting: AsyncMutex::new(()),
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

    /// A connection to the guest's TCP `port`: made inside the VM's
    /// network namespace, or to QEMU's loopback forward for a user-NAT VM.
    pub async fn connect(&self, id: &str, port: u16) -> Result<tokio::net::TcpStream, VmError> {
        let spec = self
            .store()
            .get(id)?
            .ok_or_else(|| VmError::NoSuchVm(id.to_string()))?
            .spec;
        connect_guest(&spec, port).await.map_err(VmError::Io)
    }

    /// A connection to VM `id`'s private-network NIC (frames in QEMU's
    /// stream framing: a 4-byte big-endian length, then the Ethernet
    /// frame); `Ok(None)` if its backend gives it none.
    pub async fn connect_lan(&self, id: &str) -> Result<Option<tokio::net::UnixStream>, VmError> {
        let row = self
            .store()
            .get(id)?
            .ok_or_else(|| VmError::NoSuchVm(id.to_string()))?;
        let Some(path) = row.process.and_then(|p| p.lan_socket) else {
            return Ok(None);
        };
        tokio::net::UnixStream::connect(&path)
            .await
            .map(Some)
            .map_err(|source| VmError::File {
                action: "connect to",
                path,
                source,
            })
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
        let scratch_gib = req.scratch_gib.unwrap_or(DEFAULT_SCRATCH_GIB);
        if scratch_gib == 0 || scratch_gib > MAX_SCRATCH_GIB {
            return Err(VmError::BadScratchSize {
                got: scratch_gib,
                max: MAX_SCRATCH_GIB,
            });
        }
        let volume = match &req.volume {
            Some(name) => {
                check_volume_name(name)?;
                let gib = req.volume_gib.unwrap_or(1);
                if gib == 0 || gib > MAX_VOLUME_GIB {
                    return Err(VmError::BadVolumeSize {
                        got: gib,
                        max: MAX_VOLUME_GIB,
                    });
                }
                Some((self.volume_path(name), gib))
            }
            None => None,
        };
        let image =
            zennet_images::load(&self.config.images_dir, &req.image).map_err(VmError::Image)?;
        let digest = |role| {
            image
                .manifest
                .file(role)
                .map(|f: &zennet_images::ImageFile| f.sha256.clone())
        };
        let mode = req.network.unwrap_or(self.config.network.mode);
        let mut kernel_args = image
            .kernel_args(&[req.authorized_key.trim()])
            .map_err(|e: ImageError| VmError::BadKey(e))?;
        if mode == GuestNetwork::Internet {
            kernel_args.push(format!("zennet.dns={}", self.config.network.dns));
        }

        let _one_at_a_time = self.starting.lock().await;
        if let Some(name) = &req.volume
            && self.volume_in_use(name)?
        {
            return Err(VmError::VolumeInUse(name.clone()));
        }
        let wants = Capacity {
            cores: req.cores,
            memory_mib: req.mem_mib,
            // A volume already on disk is counted as kept already.
            disk_gib: u64::from(scratch_gib)
                + volume
                    .as_ref()
                    .filter(|(path, _)| !path.exists())
                    .map_or(0, |(_, gib)| u64::from(*gib)),
        };
        self.check_room(&wants)?;
        let id = new_vm_id();
        let uid = self.free_uid()?;
        let network = if self.backend.uses_netns() {
            let (policy, id) = (self.config.network.clone(), id.clone());
            let bandwidth = req.bandwidth_mbps.map_or(policy.bandwidth_mbps, |bought| {
                bought.max(policy.bandwidth_mbps)
            });
            tokio::task::spawn_blocking(move || net::plan(&policy, &id, mode, bandwidth))
                .await
                .map_err(|e| VmError::Io(std::io::Error::other(e)))??
        } else {
            NetworkSpec::UserNat
        };
        let spec = VmSpec {
            id: id.clone(),
            cores: req.cores,
            cpu_quota: quota,
            mem_mib: req.mem_mib,
            kernel: image.kernel(),
            initramfs: image.initramfs(),
            kernel_sha256: digest(zennet_images::FileRole::Kernel),
            initramfs_sha256: digest(zennet_images::FileRole::Initramfs),
            kernel_args,
            image_disks: image
                .manifest
                .disks
                .iter()
                .map(|d| crate::spec::ImageDiskSpec {
                    path: image.disk_path(d),
                    sha256: d.sha256.clone(),
                    serial: d.serial(),
                })
                .collect(),
            scratch_gib,
            persistent: volume,
            ssh_port: free_port()?,
            network,
            run_as: Some(RunAs { uid, gid: uid }),
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
        // Recorded before anything is made on the host, so a node killed
        // half-way finds (and removes) what it made.
        self.store().put(&record)?;
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
        drop(live);
        record.state = VmState::Stopped;
        self.release(&mut record).await;
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
            let text = crate::console::read(&log);
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
        check_volume_name(name)?;
        if self.volume_in_use(name)? {
            return Err(VmError::VolumeInUse(name.to_string()));
        }
        match std::fs::remove_file(self.volume_path(name)) {
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
        let network = match &r.spec.network {
            NetworkSpec::UserNat => "user",
            NetworkSpec::Isolated { .. } => "isolated",
            NetworkSpec::Internet { .. } => "internet",
        };
        Ok(VmInfo {
            id: r.spec.id.clone(),
            state: r.state,
            image: r.image,
            pid: r.process.map(|p| p.pid),
            ssh_port: r.spec.ssh_port,
            cores: r.spec.cores,
            cpu_quota: r.spec.cpu_quota,
            mem_mib: r.spec.mem_mib,
            scratch_gib: r.spec.scratch_gib,
            volume: r.volume,
            network: network.to_string(),
            netns: r.spec.network.netns().map(str::to_string),
            uid: r.spec.run_as.map(|r| r.uid),
            usage,
            cpu_cores_now: if matches!(r.state, VmState::Running) {
                self.cpu_now
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(id)
                    .copied()
                    .unwrap_or(0.0)
            } else {
                0.0
            },
        })
    }

    /// What running VMs and kept volumes hold: cores and memory of every
    /// running or paused VM, its scratch disk, and the full size of every
    /// volume on disk, attached or kept for later.
    pub fn committed(&self) -> Result<Capacity, VmError> {
        let mut held = Capacity::default();
        let records = self.store().all()?;
        for r in records {
            if matches!(r.state, VmState::Running | VmState::Paused) {
                held.cores += r.spec.cores;
                held.memory_mib += r.spec.mem_mib;
                held.disk_gib += u64::from(r.spec.scratch_gib);
            }
        }
        held.disk_gib += self
            .volumes()
            .iter()
            .map(|v| v.size.div_ceil(1 << 30))
            .sum::<u64>();
        Ok(held)
    }

    /// Disk still free for new VMs, measured now: the filesystem's free
    /// space, less what running VMs' scratch disks and the volumes may
    /// still grow into (they count at full size, but sparse files take
    /// only what the guest wrote so far).
    pub fn disk_headroom_gib(&self) -> Result<u64, VmError> {
        let fs = nix::sys::statvfs::statvfs(&self.config.dir).map_err(|e| VmError::File {
            action: "measure free space of",
            path: self.config.dir.clone(),
            source: e.into(),
        })?;
        let free = fs.blocks_available() as u64 * fs.fragment_size() as u64;
        let mut promised: u64 = 0;
        let mut allocated: u64 = 0;
        let records = self.store().all()?;
        for r in records {
            if let (VmState::Running | VmState::Paused, Some(p)) = (r.state, &r.process) {
                promised += u64::from(r.spec.scratch_gib) << 30;
                allocated += allocated_bytes(&p.run_dir.join("scratch.qcow2"));
            }
        }
        for v in self.volumes() {
            promised += v.size;
            allocated += v.allocated;
        }
        Ok((free + allocated).saturating_sub(promised) >> 30)
    }

    /// Refuses `wants` when it does not fit beside what is committed, or
    /// in the disk's measured headroom.
    pub fn check_room(&self, wants: &Capacity) -> Result<(), VmError> {
        let Some(cap) = self.config.capacity else {
            return Ok(());
        };
        let held = self.committed()?;
        let after = held.plus(wants);
        let refuse =
            |what: &'static str, want: u64, free: u64| Err(VmError::NoRoom { what, want, free });
        if after.cores > cap.cores {
            return refuse(
                "cores",
                wants.cores.into(),
                cap.cores.saturating_sub(held.cores).into(),
            );
        }
        if after.memory_mib > cap.memory_mib {
            return refuse(
                "MiB of memory",
                wants.memory_mib,
                cap.memory_mib.saturating_sub(held.memory_mib),
            );
        }
        let headroom = self.disk_headroom_gib()?;
        let free_disk = cap.disk_gib.saturating_sub(held.disk_gib).min(headroom);
        if wants.disk_gib > free_disk {
            return refuse("GiB of disk", wants.disk_gib, free_disk);
        }
        Ok(())
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

    fn volume_path(&self, name: &str) -> PathBuf {
        self.config.dir.join("volumes").join(format!("{name}.img"))
    }

    /// The volume files on disk: nominal size and bytes allocated.
    fn volumes(&self) -> Vec<VolumeFile> {
        std::fs::read_dir(self.config.dir.join("volumes"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| VolumeFile {
                        size: m.len(),
                        allocated: m.blocks() * 512,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The lowest uid of the operator's range that no VM of this node
    /// holds and no process on the host runs as.
    fn free_uid(&self) -> Result<u32, VmError> {
        let mut taken: Vec<u32> = self
            .store()
            .all()?
            .iter()
            .filter(|r| matches!(r.state, VmState::Running | VmState::Paused))
            .filter_map(|r| r.spec.run_as.map(|a| a.uid))
            .collect();
        taken.extend(process_uids());
        self.config
            .uids
            .clone()
            .find(|u| !taken.contains(u))
            .ok_or_else(|| VmError::NoUid {
                range: format!("{}-{}", self.config.uids.start(), self.config.uids.end()),
            })
    }

    /// Frees what a VM that no longer runs had on the host: its run
    /// directory (scratch disk, sockets, console log), its network, and
    /// the VM uid's ownership of its volume.
    pub(crate) async fn release(&self, r: &mut VmRow) {
        let run_dir = r
            .process
            .take()
            .map(|p| p.run_dir)
            .unwrap_or_else(|| self.run_dir(&r.spec.id));
        if let Err(e) = std::fs::remove_dir_all(&run_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(vm = %r.spec.id, dir = %run_dir.display(), error = %e, "cannot remove the run directory");
        }
        if let Some((path, _)) = &r.spec.persistent
            && path.exists()
        {
            let _ = std::os::unix::fs::chown(path, Some(0), Some(0));
        }
        let network = r.spec.network.clone();
        let _ = tokio::task::spawn_blocking(move || net::teardown(&network)).await;
    }

    pub(crate) fn run_dir(&self, id: &str) -> PathBuf {
        self.config.dir.join("vms").join(id)
    }

    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, VmStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn images_dir(&self) -> &Path {
        &self.config.images_dir
    }
}

struct VolumeFile {
    size: u64,
    allocated: u64,
}

/// A loopback listener whose connections go to the guest's sshd inside
/// its namespace: how the operator logs in (`ssh -p PORT root@127.0.0.1`).
/// It listens on the host's loopback, which the guest cannot reach.
pub(crate) struct Proxy(tokio::task::JoinHandle<()>);

impl Drop for Proxy {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Proxy {
    pub(crate) async fn start(spec: &VmSpec) -> Option<Proxy> {
        spec.network.netns()?;
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", spec.ssh_port)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(vm = %spec.id, port = spec.ssh_port, error = %e, "cannot listen for the VM's sshd on loopback");
                return None;
            }
        };
        let spec = spec.clone();
        Some(Proxy(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let spec = spec.clone();
                tokio::spawn(async move {
                    match connect_guest(&spec, 22).await {
                        Ok(mut guest) => {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut guest).await;
                        }
                        Err(e) => {
                            tracing::debug!(vm = %spec.id, error = %e, "guest sshd unreachable")
                        }
                    }
                });
            }
        })))
    }
}

async fn connect_guest(spec: &VmSpec, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let stream = match spec.network.netns() {
        Some(netns) => {
            let netns = netns.to_string();
            tokio::task::spawn_blocking(move || net::connect(&netns, port, Duration::from_secs(10)))
                .await
                .map_err(std::io::Error::other)??
        }
        None => std::net::TcpStream::connect(("127.0.0.1", spec.ssh_port))?,
    };
    stream.set_nonblocking(true)?;
    let stream = tokio::net::TcpStream::from_std(stream)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn check_volume_name(name: &str) -> Result<(), VmError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(VmError::BadVolumeName(name.to_string()));
    }
    Ok(())
}

fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Real uids of the processes running on this host (from their status:
/// a process that changed its uid is not dumpable, and its /proc entry is
/// owned by root).
fn process_uids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
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
