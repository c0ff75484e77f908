//! Starts the node's services from its home: the VM runtime and the
//! provider's market and contracts (`--provide`), the publisher
//! (`--publish`). Each service is a crate; this file only wires them.

use std::sync::Arc;

use anyhow::{Context, Result};
use zennet_provider::market::Machine;
use zennet_provider::{Provider, ProviderConfig};
use zennet_publisher::{Publisher, PublisherConfig};
use zennet_vm::Runtime;
use zennet_vm::qemu::{QemuBackend, QemuConfig};

use crate::home::Home;
use crate::ledger::NodeLedger;

pub async fn start_publisher(home: &Home, ledger: Arc<NodeLedger>) -> Result<Arc<Publisher>> {
    let config = home.config()?;
    Publisher::start(
        PublisherConfig {
            dir: home.dir().join("publisher"),
            capacity_tolerance: config.publisher.capacity_tolerance,
            ssh_listen: config.publisher.ssh_listen.clone(),
            endpoint: config.publisher.endpoint.clone(),
            images_dir: home.images_dir(),
        },
        ledger.clone(),
        ledger.key.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot start the publisher (SSH server on {}; change [publisher] ssh_listen in config.toml)",
            config.publisher.ssh_listen
        )
    })
}

/// The VM runtime: VMs from this home's images, run under QEMU with the
/// accelerator the host really supports.
pub async fn start_vms(home: &Home) -> Result<Arc<Runtime>> {
    let images_dir = home.images_dir();
    let image =
        zennet_images::load(&images_dir, zennet_images::DEFAULT_IMAGE_ID).with_context(|| {
            format!(
                "--provide needs the default image; build it with `zennet --home {} image build`",
                home.dir().display()
            )
        })?;
    let qemu = qemu_config(home, &image).await?;
    tracing::info!(accel = qemu.accel.name(), "VM runtime");
    let config = home.config()?;
    let mut runtime = zennet_vm::RuntimeConfig::new(home.agent_dir(), images_dir);
    let over = &config.provider;
    let machine = machine(home, over)?;
    runtime.capacity = Some(zennet_vm::Capacity {
        cores: machine.cores,
        memory_mib: machine.memory_mib,
        disk_gib: machine.disk_gib,
    });
    if let Some(range) = &over.vm_uid_range {
        runtime.uids = parse_uid_range(range)?;
    }
    if let Some(mode) = over.guest_network {
        runtime.network.mode = mode;
    }
    if let Some(pool) = over.guest_subnet {
        runtime.network.pool = pool;
    }
    if let Some(dns) = over.guest_dns {
        runtime.network.dns = dns;
    }
    if let Some(mbps) = over.guest_bandwidth_mbps {
        runtime.network.bandwidth_mbps = mbps;
    }
    tracing::info!(network = %runtime.network.mode, uids = ?runtime.uids, "guest isolation");
    Runtime::open(runtime, Arc::new(QemuBackend::new(qemu)))
        .await
        .context("cannot start the VM runtime")
}

/// `[provider] vm_uid_range` as `FIRST-LAST`.
fn parse_uid_range(s: &str) -> Result<std::ops::RangeInclusive<u32>> {
    let bad = || {
        anyhow::anyhow!(
            "[provider] vm_uid_range {s:?} is not FIRST-LAST, e.g. 2100000000-2100009999 (uids no account uses)"
        )
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u32, u32) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

/// QEMU settings with the accelerator this host really supports (probed
/// once with the image as canary, then cached).
pub async fn qemu_config(home: &Home, image: &zennet_images::Image) -> Result<QemuConfig> {
    let mut qemu = QemuConfig::default();
    let cache = accel_cache_file(home);
    let (binary, kernel, initramfs) = (qemu.binary.clone(), image.kernel(), image.initramfs());
    qemu.accel = tokio::task::spawn_blocking(move || {
        zennet_vm::qemu::accel::choose(&binary, &kernel, &initramfs, &cache)
    })
    .await?;
    Ok(qemu)
}

/// The accelerator verdict belongs to the host, not to one home.
fn accel_cache_file(home: &Home) -> std::path::PathBuf {
    let host = std::path::Path::new("/var/cache/zennet");
    if std::fs::create_dir_all(host).is_ok() {
        host.join("accel.json")
    } else {
        home.agent_dir().join("accel.json")
    }
}

pub async fn start_provider(
    home: &Home,
    vms: Arc<Runtime>,
    ledger: Arc<NodeLedger>,
) -> Result<Arc<Provider>> {
    let config = home.config()?;
    let machine = machine(home, &config.provider)?;
    let ssh_key = zennet_tunnel::keys::load_or_create(&home.agent_dir().join("ssh_key"))?;
    let images = zennet_images::list(&home.images_dir())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| Some((i.manifest.id.clone(), i.manifest.hash.parse().ok()?)))
        .collect();
    let mut provider =
        ProviderConfig::new(config.market.clone(), machine, Arc::new(ssh_key), images);
    if let Some(g) = config.provider.grace_secs {
        provider.grace = std::time::Duration::from_secs(g);
    }
    tracing::info!(
        cores = machine.cores,
        memory_mib = machine.memory_mib,
        compute_per_core = machine.compute_per_core,
        auto_accept = config.market.auto_accept,
        "provider market"
    );
    let pay_store = zennet_pay::SqliteStore::open(&home.agent_dir().join("pay.db"))
        .context("cannot open the provider's payment store")?;
    Provider::start(
        vms,
        ledger,
        provider,
        &home.agent_dir().join("contracts.db"),
        Arc::new(pay_store),
    )
    .await
    .context("cannot start the provider market")
}

/// What the machine offers: config.toml overrides, else the capacity
/// profile from `zennet bench`, else what the host reports (compute 1 CU
/// per core until benchmarked).
fn machine(home: &Home, over: &crate::home::ProviderSection) -> Result<Machine> {
    let profile: Option<zennet_hwbench::CapacityProfile> =
        std::fs::read(home.dir().join("capacity.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
    let host_cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let host_mem = meminfo_total_mib().unwrap_or(1024);
    let disk_gib = nix::sys::statvfs::statvfs(&home.agent_dir())
        .map(|s| (s.blocks_available() * s.fragment_size()) >> 30)
        .unwrap_or(8);
    Ok(Machine {
        cores: over
            .cores
            .or(profile.as_ref().map(|p| p.cores))
            .unwrap_or(host_cores),
        memory_mib: over
            .memory_mib
            .or(profile.as_ref().map(|p| p.memory_bytes >> 20))
            .unwrap_or(host_mem),
        disk_gib: over.disk_gib.unwrap_or(disk_gib),
        compute_per_core: over
            .compute_per_core
            // What a vCPU delivers, not the bare host: publishers measure
            // inside the VM and pay no more than they measure.
            .or(profile.as_ref().map(|p| {
                let efficiency = p.vm.as_ref().map_or(1.0, |v| v.efficiency.min(1.0));
                (p.compute_units_per_core * efficiency).floor().max(1.0) as u32
            }))
            .unwrap_or(1),
        disk_mbps: None,
        memory_mbps: None,
    })
}

fn meminfo_total_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
