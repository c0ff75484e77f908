//! A [`Backend`] without a hypervisor: each "VM" is a record in memory
//! whose CPU time grows with (tokio) time while it runs and stops growing
//! while it is paused. Launch writes the guest's ready marker and a host
//! key line to the VM's serial log, so the runtime's readiness check works
//! unchanged. Tests drive it in virtual time (`tokio::time::pause`) and
//! watch or break it: [`FakeBackend::is_paused`], [`FakeBackend::crash`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use zennet_vm::{Backend, Instance, Process, Sample, VmError, VmSpec};

/// The SSH host key line the fake guest announces.
pub const FAKE_HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake";

#[derive(Default)]
struct Guest {
    alive: bool,
    paused: bool,
    /// CPU time accrued up to `since`.
    cpu: Duration,
    since: Option<Instant>,
    cores: u32,
}

impl Guest {
    fn cpu_now(&self) -> Duration {
        match (self.alive && !self.paused, self.since) {
            (true, Some(t)) => self.cpu + t.elapsed() * self.cores,
            _ => self.cpu,
        }
    }
    fn settle(&mut self) {
        self.cpu = self.cpu_now();
        self.since = Some(Instant::now());
    }
}

/// A hypervisor that only keeps books. Clones share the same guests.
#[derive(Clone, Default)]
pub struct FakeBackend {
    guests: Arc<Mutex<HashMap<String, Guest>>>,
}

impl FakeBackend {
    pub fn new() -> FakeBackend {
        FakeBackend::default()
    }

    /// Whether VM `id` is paused (false for an unknown VM).
    pub fn is_paused(&self, id: &str) -> bool {
        self.guests().get(id).is_some_and(|g| g.paused)
    }

    /// Whether VM `id` is running (alive and not paused).
    pub fn is_running(&self, id: &str) -> bool {
        self.guests().get(id).is_some_and(|g| g.alive && !g.paused)
    }

    /// Kills VM `id` as a crash would.
    pub fn crash(&self, id: &str) {
        if let Some(g) = self.guests().get_mut(id) {
            g.settle();
            g.alive = false;
        }
    }

    /// Ids of the VMs alive now.
    pub fn alive(&self) -> Vec<String> {
        self.guests()
            .iter()
            .filter(|(_, g)| g.alive)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn guests(&self) -> std::sync::MutexGuard<'_, HashMap<String, Guest>> {
        self.guests.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn accelerator(&self) -> &'static str {
        "none"
    }

    /// No guest, so no network namespace (and no root needed).
    fn uses_netns(&self) -> bool {
        false
    }

    async fn launch(&self, spec: &VmSpec, run_dir: &Path) -> Result<Box<dyn Instance>, VmError> {
        std::fs::create_dir_all(run_dir)?;
        let serial_log = run_dir.join("serial.log");
        std::fs::write(
            &serial_log,
            format!(
                "{} {FAKE_HOST_KEY}\n{}\n",
                zennet_images::HOST_KEY_MARKER,
                zennet_images::READY_MARKER
            ),
        )?;
        self.guests().insert(
            spec.id.clone(),
            Guest {
                alive: true,
                paused: false,
                cpu: Duration::ZERO,
                since: Some(Instant::now()),
                cores: spec.cores,
            },
        );
        Ok(Box::new(FakeVm {
            id: spec.id.clone(),
            process: Process {
                pid: 0,
                run_dir: run_dir.to_path_buf(),
                control: run_dir.join("control"),
                serial_log,
                serial_socket: None,
                lan_socket: None,
            },
            backend: self.clone(),
        }))
    }

    async fn attach(
        &self,
        spec: &VmSpec,
        process: &Process,
    ) -> Result<Option<Box<dyn Instance>>, VmError> {
        let alive = self.guests().get(&spec.id).is_some_and(|g| g.alive);
        Ok(alive.then(|| {
            Box::new(FakeVm {
                id: spec.id.clone(),
                process: process.clone(),
                backend: self.clone(),
            }) as Box<dyn Instance>
        }))
    }

    async fn destroy(&self, spec: &VmSpec, _process: &Process, _grace: Duration) {
        self.crash(&spec.id);
    }
}

struct FakeVm {
    id: String,
    process: Process,
    backend: FakeBackend,
}

impl FakeVm {
    fn with<T>(&self, f: impl FnOnce(&mut Guest) -> T) -> Result<T, VmError> {
        match self.backend.guests().get_mut(&self.id) {
            Some(g) if g.alive => Ok(f(g)),
            _ => Err(VmError::NotRunning(self.id.clone())),
        }
    }
}

#[async_trait]
impl Instance for FakeVm {
    fn process(&self) -> &Process {
        &self.process
    }
    fn is_alive(&self) -> bool {
        self.with(|_| ()).is_ok()
    }
    async fn pause(&self) -> Result<(), VmError> {
        self.with(|g| {
            g.settle();
            g.paused = true;
        })
    }
    async fn resume(&self) -> Result<(), VmError> {
        self.with(|g| {
            g.settle();
            g.paused = false;
        })
    }
    async fn sample(&self) -> Result<Sample, VmError> {
        self.with(|g| Sample {
            cpu_ns: g.cpu_now().as_nanos() as u64,
            memory_bytes: 64 << 20,
            ..Sample::default()
        })
    }
    async fn shutdown(&self, _grace: Duration) {
        self.backend.crash(&self.id);
    }
    fn kill(&self) {
        self.backend.crash(&self.id);
    }
}

/// Writes an image record `id` into `images_dir` whose files are empty:
/// enough for the VM runtime to start a [`FakeBackend`] guest from it
/// (only a real hypervisor reads, and hash-checks, the files).
pub fn install_image(images_dir: &Path, id: &str) {
    use zennet_images::{FileRole, ImageFile, MANIFEST_FORMAT, Manifest};
    // SHA-256 of no bytes.
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let dir = images_dir.join(id);
    std::fs::create_dir_all(&dir).expect("image directory");
    let file = |role, name: &str| {
        std::fs::write(dir.join(name), b"").expect("image file");
        ImageFile {
            role,
            name: name.into(),
            sha256: EMPTY.into(),
            size: 0,
        }
    };
    let mut manifest = Manifest {
        id: id.into(),
        format: MANIFEST_FORMAT,
        kernel_release: "fake".into(),
        boot_args: Vec::new(),
        files: vec![
            file(FileRole::Kernel, "vmlinuz"),
            file(FileRole::Initramfs, "initramfs.cpio.gz"),
        ],
        disks: Vec::new(),
        packages: Vec::new(),
        min_memory_mib: 64,
        hash: String::new(),
    };
    manifest.hash = manifest.compute_hash();
    let json = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
    std::fs::write(dir.join("manifest.json"), json).expect("manifest written");
}
