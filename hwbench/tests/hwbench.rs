//! The hardware bench on this machine: quick runs, checked for plausible
//! and self-consistent figures rather than exact values (the machine is
//! shared, so figures move from run to run).
//!
//! The VM test needs root, QEMU and OpenSSH like tests/qemu_vm.rs, and the
//! default image built into `$ZENNET_IMAGE_CACHE` (default
//! /var/tmp/zennet-images-test).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zennet_hwbench::{
    self as hwbench, BenchOptions, CapacityProfile, GuestTiming, HostBinary, VmBench,
};
use zennet_testkit::image;
use zennet_vm::qemu::{Accel, QemuBackend, QemuConfig};

/// Benches measure the machine; two at once would measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bench's VM part under the default QEMU backend (TCG).
fn qemu_bench() -> VmBench {
    let config = QemuConfig::default();
    VmBench {
        nice: config.nice,
        backend: Arc::new(QemuBackend::new(config)),
        image: image(),
    }
}

/// A directory on a real disk filesystem (not tmpfs, which the bench
/// declines to measure as a disk).
fn disk_scratch() -> tempfile::TempDir {
    tempfile::tempdir_in("/var/tmp").unwrap()
}

async fn quick_bench(scratch: &Path, vm: Option<VmBench>) -> (CapacityProfile, Vec<String>) {
    let opts = BenchOptions {
        quick: true,
        scratch_dir: scratch.to_path_buf(),
        vm,
    };
    let mut steps = Vec::new();
    let profile = hwbench::run(&opts, &mut |s: &str| steps.push(s.to_string()))
        .await
        .unwrap();
    (profile, steps)
}

fn assert_round_trips(profile: &CapacityProfile) {
    let json = serde_json::to_string_pretty(profile).unwrap();
    let back: CapacityProfile = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, profile, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_bench_gives_plausible_consistent_figures() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scratch = disk_scratch();
    let started = std::time::Instant::now();
    let (p, steps) = quick_bench(scratch.path(), None).await;
    eprintln!(
        "quick bench in {:?}:\n{}",
        started.elapsed(),
        serde_json::to_string_pretty(&p).unwrap()
    );

    assert_eq!(p.format, hwbench::PROFILE_FORMAT);
    assert!(p.quick);
    assert!(p.timestamp_ms > 1_700_000_000_000);
    assert!(!p.kernel_release.is_empty());
    assert!(p.memory_bytes > 64 << 20);
    assert!(p.cores >= 1);
    assert!(!steps.is_empty(), "progress was reported");

    // CPU: positive, and all threads at least about one thread's worth.
    // On a shared machine the other tenants can take a core's share, so
    // equality within noise is all that can be promised.
    let cpu = &p.cpu;
    assert_eq!(cpu.prime_limit, 10_000);
    assert_eq!(cpu.threads, p.cores);
    assert!(cpu.single_thread_events_per_sec > 0.0);
    assert!(
        cpu.all_threads_events_per_sec >= 0.9 * cpu.single_thread_events_per_sec,
        "{cpu:?}"
    );
    assert!(
        cpu.all_threads_events_per_sec
            <= 1.2 * cpu.single_thread_events_per_sec * cpu.threads as f64,
        "more than linear scaling: {cpu:?}"
    );
    let cu = cpu.single_thread_events_per_sec / hwbench::EVENTS_PER_COMPUTE_UNIT;
    assert!((p.compute_units_per_core - cu).abs() < 0.001);
    assert!(
        (p.compute_units_total - cpu.all_threads_events_per_sec / hwbench::EVENTS_PER_COMPUTE_UNIT)
            .abs()
            < 0.001
    );

    // Memory: at least a few hundred MB/s, and below anything that exists
    // (which would mean the pass was optimised away or hit a cache).
    let m = &p.memory;
    assert!(m.buffer_bytes >= 256 << 20);
    if let Some(cache) = m.largest_cache_bytes {
        assert!(m.buffer_bytes >= 2 * cache, "{m:?}");
    }
    for gbps in [m.read_gb_per_sec, m.write_gb_per_sec, m.copy_gb_per_sec] {
        assert!((0.2..2000.0).contains(&gbps), "{m:?}");
    }

    // Disk on /var/tmp: measured, positive.
    let d = p
        .disk
        .as_ref()
        .unwrap_or_else(|| panic!("no disk figures: {:?}", p.notes));
    assert_eq!(d.file_bytes, 64 << 20);
    assert!(d.sequential_write_mb_per_sec > 0.0, "{d:?}");
    assert!(d.sequential_read_mb_per_sec > 0.0, "{d:?}");
    assert!(d.random_read_4k_iops > 0.0, "{d:?}");
    assert!(
        std::fs::read_dir(scratch.path()).unwrap().next().is_none(),
        "the bench file was removed"
    );

    assert!(p.vm.is_none());
    assert_eq!(p.optimised_build, !cfg!(debug_assertions));
    assert_round_trips(&p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_on_tmpfs_has_no_disk_figures_and_says_why() {
    let _one = ONE_AT_A_TIME.lock().await;
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return;
    }
    let scratch = tempfile::tempdir_in(shm).unwrap();
    let (p, _) = quick_bench(scratch.path(), None).await;
    assert!(p.disk.is_none());
    assert!(
        p.notes.iter().any(|n| n.contains("disk not measured")),
        "{:?}",
        p.notes
    );
    assert_round_trips(&p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_with_a_vm_measures_boot_and_efficiency() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scratch = disk_scratch();
    let vm = qemu_bench();
    let (p, steps) = quick_bench(scratch.path(), Some(vm)).await;
    eprintln!("{}", serde_json::to_string_pretty(&p).unwrap());

    let vm = p.vm.as_ref().expect("VM figures");
    assert_eq!(vm.accel, Accel::Tcg.name());
    assert_eq!(vm.image_id, zennet_images::DEFAULT_IMAGE_ID);
    assert!(vm.launch_to_ready_ms > 0 && vm.launch_to_ready_ms < 120_000);
    assert!(vm.guest_mb_per_sec > 0.0 && vm.host_mb_per_sec > 0.0);
    // Emulation is slower than the host; it cannot be much faster.
    assert!((0.0..1.3).contains(&vm.efficiency), "{vm:?}");
    assert_eq!(vm.host_binary, HostBinary::GuestBusybox, "{:?}", p.notes);
    assert_eq!(vm.guest_timing, GuestTiming::GuestClock, "{:?}", p.notes);
    assert!(steps.iter().any(|s| s.starts_with("vm:")));
    assert!(
        std::fs::read_dir(scratch.path()).unwrap().next().is_none(),
        "the VM's work directory was removed"
    );
    assert_round_trips(&p);
}

/// The full (not quick) bench with the VM part, to see this machine's
/// profile: `cargo test --release -p zennet-hwbench --test hwbench --
/// --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about half a minute; run by hand for the full profile"]
async fn full_bench_profile() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scratch = disk_scratch();
    let opts = BenchOptions {
        quick: false,
        scratch_dir: scratch.path().to_path_buf(),
        vm: Some(qemu_bench()),
    };
    let started = std::time::Instant::now();
    let p = hwbench::run(&opts, &mut |s: &str| {
        eprintln!("[{:>5.1?}] {s}", started.elapsed())
    })
    .await
    .unwrap();
    eprintln!("full bench in {:?}", started.elapsed());
    println!("{}", serde_json::to_string_pretty(&p).unwrap());
    assert!(p.disk.is_some() && p.vm.is_some());
    assert_round_trips(&p);
}

/// The bench can run as a spawned task (a `Send` future), as the agent's
/// service would run it.
#[test]
fn run_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let opts = BenchOptions {
        quick: true,
        scratch_dir: PathBuf::from("/nonexistent"),
        vm: None,
    };
    let mut progress = |_: &str| {};
    let future = hwbench::run(&opts, &mut progress);
    assert_send(&future);
}
