//! The provider's hardware bench: what this machine can sell, measured
//! rather than declared, as a [`CapacityProfile`].
//!
//! Every figure is a measurement taken here and now; when something cannot
//! be measured honestly (a scratch directory on tmpfs, a filesystem that
//! refuses direct I/O) the figure is absent and [`CapacityProfile::notes`]
//! says why. The machine is usually not idle, so the profile also records
//! the load average seen before the run.
//!
//! * CPU: sysbench's prime workload, one thread and one thread per CPU, in
//!   sysbench's own unit (events per second), so the two can be compared
//!   side by side. The compute unit (CU) is defined on it:
//!   1 CU = [`EVENTS_PER_COMPUTE_UNIT`] events/s on one thread.
//! * Memory: sequential read, write and copy over buffers far larger than
//!   any cache.
//! * Disk: sequential write and read, and 4 KiB random reads, all with
//!   `O_DIRECT` so the page cache does not answer for the disk.
//! * GPUs: what `/sys/class/drm` lists.
//! * VM (optional): boot time of the default image and the ratio of a CPU
//!   workload's speed inside the guest to the same workload, same binary, on
//!   the host. The guest runs through [`zennet_vm::Backend`], so it is
//!   measured under the backend the node's VMs run under.
//!
//! The CPU workload is compiled into this crate, so an unoptimised (debug)
//! build understates the CPU; [`CapacityProfile::optimised_build`] flags it.

use std::alloc::{self, Layout};
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::hint::black_box;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zennet_vm::{Backend, Instance, NetworkSpec, VmError, VmSpec};

/// Version of the [`CapacityProfile`] layout; bumped on incompatible change.
pub const PROFILE_FORMAT: u32 = 1;

/// The CPU workload's prime limit, as sysbench's `--cpu-max-prime` (whose
/// default is also 10000).
pub const PRIME_LIMIT: u64 = 10_000;

/// Primes below [`PRIME_LIMIT`]: π(10000). Every event's result is checked
/// against it, so a miscomputing CPU or build fails the bench instead of
/// producing a score.
const PRIMES_BELOW_LIMIT: u64 = 1229;

/// Events per second of the single-thread prime workload that make one
/// compute unit (CU). A core that runs `sysbench cpu --cpu-max-prime=10000
/// --threads=1` at 5,000 events/s is worth 5 CU.
pub const EVENTS_PER_COMPUTE_UNIT: f64 = 1000.0;

/// Direct I/O wants buffers, offsets and sizes aligned to the device's
/// logical block; 4 KiB covers both 512-byte and 4K-native devices.
const DIRECT_IO_ALIGN: usize = 4096;

/// How long to wait for the guest's ready marker. TCG on a loaded two-core
/// host boots in a few seconds; this only bounds a guest that never will.
const VM_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Shell commands printing the guest's wall clock in nanoseconds since
/// 1970, best first. Debian's busybox `date` lacks `%N`, but its
/// `adjtimex` reports the time to the microsecond.
const GUEST_CLOCKS: [&str; 2] = [
    "busybox date +%s%N",
    "busybox adjtimex | busybox awk '/tv_sec/ { s = $2 } /tv_usec/ { u = $2 } \
     END { printf \"%d%06d000\", s, u }'",
];

/// Upper bound for one ssh command, in-guest workload included.
const SSH_TIMEOUT: Duration = Duration::from_secs(120);

/// The in-guest and host workload stops doubling here (MiB hashed).
const MAX_HASH_MIB: u64 = 4096;

/// Why the bench could not produce a profile.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot read MemTotal from /proc/meminfo")]
    NoMemTotal,
    #[error(
        "the prime workload miscounted ({found} primes in {events} events, expected {PRIMES_BELOW_LIMIT} each): this CPU or build computes wrongly"
    )]
    Miscounted { found: u64, events: u64 },
    #[error("{path}: block {block} read back is not the block written")]
    DiskMismatch { path: PathBuf, block: u64 },
    #[error("{0}: NUL in path")]
    NulInPath(PathBuf),
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: &'static str,
        source: io::Error,
    },
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("ssh {0:?} timed out")]
    SshTimeout(String),
    #[error("bench guest not ready ({why} after {after:?}); serial log ends: {tail}")]
    GuestNotReady {
        why: &'static str,
        after: Duration,
        tail: String,
    },
    #[error("unexpected output from the guest workload: {0:?}")]
    GuestOutput(String),
    #[error("the guest workload took no measurable time beyond an ssh round trip")]
    NoGuestTime,
    #[error("kernel arguments: {0}")]
    KernelArgs(zennet_images::ImageError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("i/o: {0}")]
    Other(#[from] io::Error),
}

/// What to measure and where.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Short runs (~0.3–0.5 s per figure, smaller buffers and files) for
    /// tests and a first look; the default runs take ~1–3 s per figure.
    pub quick: bool,
    /// Where the disk figures are taken (a temporary file, removed after)
    /// and the VM's run directory lives. Put it on the disk VMs will use.
    pub scratch_dir: PathBuf,
    /// Boot a VM and measure it too.
    pub vm: Option<VmBench>,
}

/// The VM part of the bench: which backend and image to boot.
#[derive(Clone)]
pub struct VmBench {
    pub backend: Arc<dyn Backend>,
    pub image: zennet_images::Image,
    /// The niceness the backend runs VMs at (the host side of the
    /// workload runs at the same).
    pub nice: i32,
}

impl std::fmt::Debug for VmBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBench")
            .field("backend", &self.backend.name())
            .field("image", &self.image.manifest.id)
            .finish()
    }
}

/// The capacity profile: the bench's output (JSON via serde).
///
/// Units: "GB" and "MB" are decimal (10^9 and 10^6 bytes); times are
/// milliseconds; rates are per second of wall-clock time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityProfile {
    /// [`PROFILE_FORMAT`] of the code that wrote it.
    pub format: u32,
    /// When the bench started, Unix time in milliseconds.
    pub timestamp_ms: u64,
    pub hostname: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// `model name` from /proc/cpuinfo, when there is one.
    pub cpu_model: Option<String>,
    /// CPUs this process may use (`available_parallelism`: affinity and
    /// cgroup quota included), i.e. the all-threads worker count.
    pub cores: u32,
    /// `MemTotal` from /proc/meminfo, in bytes.
    pub memory_bytes: u64,
    /// 1-minute load average before the bench: the machine was not idle
    /// if this is well above zero, and the figures are shares of it.
    pub load_average_1m: Option<f64>,
    /// Whether this was a quick run ([`BenchOptions::quick`]).
    pub quick: bool,
    /// False for a debug build, whose CPU figures understate the machine
    /// (the prime workload is compiled into this crate).
    pub optimised_build: bool,
    /// Single-thread prime events/s ÷ [`EVENTS_PER_COMPUTE_UNIT`].
    pub compute_units_per_core: f64,
    /// All-threads prime events/s ÷ [`EVENTS_PER_COMPUTE_UNIT`]: what the
    /// whole machine delivers, which is less than `cores` ×
    /// `compute_units_per_core` when cores share a physical core or the
    /// machine is busy.
    pub compute_units_total: f64,
    pub cpu: CpuFigures,
    pub memory: MemoryFigures,
    /// Absent when the scratch directory cannot be measured as a disk
    /// (see `notes`).
    pub disk: Option<DiskFigures>,
    pub gpus: Vec<Gpu>,
    /// Present when the VM part ran.
    pub vm: Option<VmFigures>,
    /// Why a figure is missing, or what to keep in mind reading one.
    pub notes: Vec<String>,
}

/// The prime workload: one "event" counts the primes below `prime_limit`
/// by trial division exactly as sysbench 1.0's cpu test does (64-bit
/// integer division up to the square root), so events/s here and
/// sysbench's "events per second" measure the same thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuFigures {
    pub prime_limit: u64,
    /// Events/s of one thread.
    pub single_thread_events_per_sec: f64,
    /// Events/s summed over one thread per CPU (`threads`), all running at
    /// the same time.
    pub all_threads_events_per_sec: f64,
    pub threads: u32,
    /// How long each of the two runs lasted.
    pub run_ms: u64,
}

/// Sequential memory bandwidth over buffers of `buffer_bytes`, far larger
/// than the caches (quick runs too: they take fewer passes instead). Each figure is the best of repeated passes (as STREAM
/// reports), because slower passes measure other tenants, not the memory.
/// The loops are glibc's `memchr`, `memset` and `memcpy`, which are
/// vectorised, so the figures are the memory's limit rather than a loop's.
/// One thread runs them: this is what one vCPU can pull; a many-core
/// server's memory delivers more to all cores together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryFigures {
    /// Size of each buffer: at least twice `largest_cache_bytes`.
    pub buffer_bytes: u64,
    /// The largest CPU cache sysfs reports (usually the shared L3).
    pub largest_cache_bytes: Option<u64>,
    /// Bytes read per second (a scan for a byte that is not there).
    pub read_gb_per_sec: f64,
    /// Bytes written per second (filling the buffer).
    pub write_gb_per_sec: f64,
    /// Bytes copied per second between two such buffers; each byte is
    /// read once and written once, so memory traffic is twice this.
    pub copy_gb_per_sec: f64,
}

/// Disk throughput in the scratch directory with `O_DIRECT`, so neither
/// write-back nor read hits in this kernel's page cache count. Whatever
/// sits below (a hypervisor's cache for a virtual disk, a RAID
/// controller's) is part of what the disk is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskFigures {
    /// Size of the test file.
    pub file_bytes: u64,
    /// Request size of the sequential passes.
    pub sequential_block_bytes: u64,
    /// Writing the file front to back (pseudo-random data, so compressing
    /// or deduplicating storage cannot shortcut it), `fdatasync` included.
    pub sequential_write_mb_per_sec: f64,
    /// Reading it back front to back; each block is checked to be the one
    /// written.
    pub sequential_read_mb_per_sec: f64,
    /// 4 KiB reads at random aligned offsets in the file, one at a time
    /// (queue depth 1): the latency-bound figure a small guest sees.
    pub random_read_4k_iops: f64,
    /// How long the random-read run lasted.
    pub random_read_ms: u64,
}

/// A GPU (DRM card) from /sys/class/drm/cardN/device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// `card0`, ...
    pub card: String,
    /// The device's sysfs name, e.g. the PCI address `0000:01:00.0`.
    pub bus_id: Option<String>,
    /// As sysfs gives them, e.g. `0x10de`; absent for non-PCI devices.
    pub vendor_id: Option<String>,
    pub device_id: Option<String>,
    /// A readable vendor name for the common ids.
    pub vendor: Option<String>,
    /// The kernel driver bound to it, e.g. `amdgpu`.
    pub driver: Option<String>,
}

/// Figures of a real guest of the default image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmFigures {
    pub image_id: String,
    /// The backend's accelerator (`kvm`, `tcg`, `xen`).
    pub accel: String,
    /// vCPUs of the bench guest (and CPUs the host side of the workload
    /// may use).
    pub vcpus: u32,
    /// From the start of the backend's launch (disk creation, cgroup,
    /// QEMU start) to the guest's ready marker on its serial console, i.e.
    /// until sshd accepts connections. Polled every 50 ms.
    pub launch_to_ready_ms: u64,
    /// The workload, the same shell pipeline on both sides.
    pub workload: String,
    /// Which binary ran the workload on the host.
    pub host_binary: HostBinary,
    /// How the guest's run was timed.
    pub guest_timing: GuestTiming,
    /// MB hashed per second inside the guest.
    pub guest_mb_per_sec: f64,
    /// MB hashed per second on the host, pinned to one CPU at the guest's
    /// nice level.
    pub host_mb_per_sec: f64,
    /// `guest_mb_per_sec / host_mb_per_sec`: the share of a host CPU a
    /// vCPU delivers (near 1 with KVM, far less under TCG emulation).
    pub efficiency: f64,
}

/// The host side's binary in [`VmFigures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostBinary {
    /// The guest's own static busybox, copied out of the guest: the same
    /// code on both sides, so the ratio is the virtualisation alone.
    GuestBusybox,
    /// The host's `dd` and `sha256sum` (when the guest's busybox cannot
    /// run here); a different SHA-256 implementation skews the ratio.
    HostCoreutils,
}

/// How the guest side in [`VmFigures`] was timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestTiming {
    /// The guest's own clock around the workload (`date +%s%N`, or
    /// busybox `adjtimex` to the microsecond where `date` lacks `%N`).
    GuestClock,
    /// Host wall time of the ssh command minus the fastest of three ssh
    /// round trips running `true` (when the guest has no nanosecond
    /// clock, or its clock disagrees with the host's).
    HostWallMinusSsh,
}

/// Runs the bench. `progress` hears a short line as each part starts.
///
/// CPU, memory and disk run on tokio's blocking pool one after another
/// (never side by side, which would measure their contention); the VM part
/// is async. Needs a tokio runtime; the VM part also needs root (cgroups),
/// QEMU, `qemu-img`, `ssh` and `ssh-keygen`.
pub async fn run(
    opts: &BenchOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<CapacityProfile, BenchError> {
    let timestamp_ms = unix_ms();
    let load_average_1m = load_average();
    let quick = opts.quick;
    let mut notes = Vec::new();
    let optimised_build = !cfg!(debug_assertions);
    if !optimised_build {
        notes
            .push("unoptimised (debug) build: the CPU figures understate this machine".to_string());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_run = if quick {
        Duration::from_millis(400)
    } else {
        Duration::from_secs(2)
    };

    progress("cpu: prime workload, one thread");
    let single = blocking(move || prime_rate(1, cpu_run)).await?;
    progress(&format!("cpu: prime workload, {threads} threads"));
    let all = blocking(move || prime_rate(threads, cpu_run)).await?;
    let cpu = CpuFigures {
        prime_limit: PRIME_LIMIT,
        single_thread_events_per_sec: round(single, 2),
        all_threads_events_per_sec: round(all, 2),
        threads: threads as u32,
        run_ms: cpu_run.as_millis() as u64,
    };
    tracing::info!(
        single = cpu.single_thread_events_per_sec,
        all = cpu.all_threads_events_per_sec,
        threads,
        "bench: cpu"
    );

    progress("memory: sequential read, write, copy");
    let memory = blocking(move || memory_bandwidth(quick)).await;
    if let Some(cache) = memory.largest_cache_bytes
        && memory.buffer_bytes < 2 * cache
    {
        notes.push(format!(
            "memory: buffers of {} MiB are not far larger than the {} MiB cache \
             (RAM is small); the figures may be partly the cache's",
            memory.buffer_bytes >> 20,
            cache >> 20
        ));
    }
    tracing::info!(
        read = memory.read_gb_per_sec,
        write = memory.write_gb_per_sec,
        copy = memory.copy_gb_per_sec,
        "bench: memory GB/s"
    );

    progress("disk: sequential and 4 KiB random, direct I/O");
    fs::create_dir_all(&opts.scratch_dir).map_err(|e| io_at(&opts.scratch_dir, e))?;
    let scratch = opts.scratch_dir.clone();
    let disk = match blocking(move || disk_bench(&scratch, quick)).await? {
        DiskOutcome::Measured(d) => {
            tracing::info!(
                write = d.sequential_write_mb_per_sec,
                read = d.sequential_read_mb_per_sec,
                iops = d.random_read_4k_iops,
                "bench: disk"
            );
            Some(d)
        }
        DiskOutcome::Skipped(why) => {
            tracing::warn!(%why, "bench: disk not measured");
            notes.push(why);
            None
        }
    };

    progress("gpus");
    let gpus = list_gpus(Path::new("/sys/class/drm"));

    let vm = match &opts.vm {
        Some(vm) => Some(vm_bench(vm, &opts.scratch_dir, quick, progress, &mut notes).await?),
        None => None,
    };

    Ok(CapacityProfile {
        format: PROFILE_FORMAT,
        timestamp_ms,
        hostname: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
        kernel_release: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        cpu_model: cpu_model(),
        cores: threads as u32,
        memory_bytes: mem_total_bytes().ok_or(BenchError::NoMemTotal)?,
        load_average_1m,
        quick,
        optimised_build,
        compute_units_per_core: round(single / EVENTS_PER_COMPUTE_UNIT, 3),
        compute_units_total: round(all / EVENTS_PER_COMPUTE_UNIT, 3),
        cpu,
        memory,
        disk,
        gpus,
        vm,
        notes,
    })
}

/// The single-thread prime workload for `duration`, in compute units: the
/// figure a node's claim is made of, for whoever wants to check one (the
/// publisher calibrates its in-guest measurement with it). Blocking.
pub fn compute_units_per_core(duration: Duration) -> Result<f64, BenchError> {
    Ok(prime_rate(1, duration)? / EVENTS_PER_COMPUTE_UNIT)
}

/// Runs a measurement on the blocking pool; a panic in it stays a panic.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("bench task cancelled: {e}"),
    }
}

// ---------------------------------------------------------------- CPU

/// Primes below `limit`, by sysbench's trial division: for each candidate
/// `c`, divide by 2, 3, ... while the divisor is ≤ √c (compared as
/// doubles, as sysbench does). sysbench starts at 3 and so never counts 2;
/// it is added here so the result is the textbook π(limit), which makes
/// it checkable.
///
/// The work per call is sysbench's event as the machine code of Debian's
/// sysbench (gcc -O2) executes it, which is what makes the two comparable:
/// gcc turns the division by 2 into a bit test, and divides by the rest
/// with a 64-bit `div`, whereas LLVM would use a 32-bit `div` whenever the
/// operands fit, which on the Xeon this was written on made the same loop
/// run 1.46× as many events per second as sysbench. Hence the peeled
/// bit test and [`rem_u64`].
fn count_primes(limit: u64) -> u64 {
    if limit <= 2 {
        return 0;
    }
    let mut count = 1; // 2
    let mut c = 3u64;
    while c < limit {
        let t = (c as f64).sqrt();
        let mut l = 2u64;
        if l as f64 <= t && c & 1 == 1 {
            l = 3;
            while l as f64 <= t {
                if rem_u64(c, l) == 0 {
                    break;
                }
                l += 1;
            }
        }
        if l as f64 > t {
            count += 1;
        }
        c += 1;
    }
    count
}

/// `a % b` with the x86-64 64-bit `div` instruction, as gcc emits it for
/// sysbench (see [`count_primes`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn rem_u64(a: u64, b: u64) -> u64 {
    // A zero divisor would fault in `div`; trial division starts at 3.
    assert!(b != 0);
    let rem: u64;
    // SAFETY: `div` divides rdx:rax (here 0:a) by a non-zero register;
    // with rdx = 0 the quotient fits, so it cannot fault. It touches no
    // memory and no stack.
    unsafe {
        std::arch::asm!(
            "div {divisor}",
            divisor = in(reg) b,
            inout("rax") a => _,
            inout("rdx") 0u64 => rem,
            options(pure, nomem, nostack),
        );
    }
    rem
}

/// Elsewhere there is one division instruction, which both compilers use.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn rem_u64(a: u64, b: u64) -> u64 {
    a % b
}

/// Prime events per second summed over `threads` workers running for
/// `duration` together (a barrier starts them at once).
fn prime_rate(threads: usize, duration: Duration) -> Result<f64, BenchError> {
    let barrier = Barrier::new(threads);
    let results: Vec<(u64, u64, Duration)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    let (mut events, mut found) = (0u64, 0u64);
                    // black_box keeps the compiler from computing the
                    // constant answer once and reusing it.
                    while start.elapsed() < duration {
                        found += black_box(count_primes(black_box(PRIME_LIMIT)));
                        events += 1;
                    }
                    (events, found, start.elapsed())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut rate = 0.0;
    for (events, found, took) in results {
        if found != events * PRIMES_BELOW_LIMIT {
            return Err(BenchError::Miscounted { found, events });
        }
        rate += events as f64 / took.as_secs_f64();
    }
    Ok(rate)
}

// ------------------------------------------------------------- memory

fn memory_bandwidth(quick: bool) -> MemoryFigures {
    let largest_cache = largest_cache_bytes();
    let len = memory_buffer_len(largest_cache, mem_total_bytes());
    // Quick runs take fewer passes, never smaller buffers: a buffer that
    // fits in the cache measures the cache.
    let (min_passes, budget) = if quick {
        (2, Duration::from_millis(100))
    } else {
        (3, Duration::from_millis(800))
    };
    // Non-zero contents: a fresh zeroed allocation maps every page to the
    // shared zero page, and reading that would measure the cache. Filling
    // them also takes the page faults before any pass is timed.
    let src = vec![0xa5u8; len];
    let mut dst = vec![0x5au8; len];

    let read = best_pass(min_passes, budget, || {
        // SAFETY: `src` is a live allocation of `len` bytes.
        let hit = unsafe { libc::memchr(src.as_ptr().cast(), 0, len) };
        // No zero byte exists, so memchr read all of it.
        assert!(hit.is_null());
    });
    let mut byte = 0u8;
    let write = best_pass(min_passes, budget, || {
        byte = byte.wrapping_add(1);
        // SAFETY: `dst` is a live allocation of `len` bytes. write_bytes
        // is memset whatever the build's optimisation level.
        unsafe { std::ptr::write_bytes(dst.as_mut_ptr(), byte, len) };
        black_box(dst.as_slice());
    });
    let copy = best_pass(min_passes, budget, || {
        dst.copy_from_slice(&src);
        black_box(dst.as_slice());
    });
    let gb_per_sec = |d: Duration| round(len as f64 / d.as_secs_f64() / 1e9, 3);
    MemoryFigures {
        buffer_bytes: len as u64,
        largest_cache_bytes: largest_cache,
        read_gb_per_sec: gb_per_sec(read),
        write_gb_per_sec: gb_per_sec(write),
        copy_gb_per_sec: gb_per_sec(copy),
    }
}

/// How large the memory buffers are: twice the largest cache and at
/// least 256 MiB, so that they dwarf the last-level cache (on the cloud
/// Xeon this was written on, with a 480 MiB L3, 64 MiB buffers read at
/// 30 GB/s and 256 MiB ones at 12); at most an eighth of RAM each.
fn memory_buffer_len(largest_cache: Option<u64>, mem_total: Option<u64>) -> usize {
    const MIN: u64 = 256 << 20;
    const STEP: u64 = 64 << 20;
    let want = largest_cache
        .map_or(0, |c| 2 * c)
        .max(MIN)
        .next_multiple_of(STEP);
    let cap = mem_total.map_or(u64::MAX, |m| (m / 8).max(STEP));
    want.min(cap) as usize
}

/// The largest data or unified CPU cache, from sysfs.
fn largest_cache_bytes() -> Option<u64> {
    fs::read_dir("/sys/devices/system/cpu/cpu0/cache")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("index"))
        .filter(|e| read_trimmed(e.path().join("type")).as_deref() != Some("Instruction"))
        .filter_map(|e| parse_cache_size(&read_trimmed(e.path().join("size"))?))
        .max()
}

/// Sysfs cache sizes: `48K`, `2048K`, `32M`.
fn parse_cache_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok().map(|n| n << shift)
}

/// Fastest of at least `min_passes` timed passes of `pass`, and as many
/// more as fit in `budget`.
fn best_pass(min_passes: u32, budget: Duration, mut pass: impl FnMut()) -> Duration {
    let started = Instant::now();
    let mut best = Duration::MAX;
    let mut passes = 0;
    while passes < min_passes || started.elapsed() < budget {
        let t = Instant::now();
        pass();
        best = best.min(t.elapsed());
        passes += 1;
    }
    best
}

// --------------------------------------------------------------- disk

enum DiskOutcome {
    Measured(DiskFigures),
    /// Why there is no figure, for the profile's notes.
    Skipped(String),
}

fn disk_bench(dir: &Path, quick: bool) -> Result<DiskOutcome, BenchError> {
    // Since Linux 6.6 tmpfs accepts O_DIRECT, so refusing it is no longer
    // the tell: ask the filesystem type.
    if let Some(fs_name) = memory_filesystem(dir)? {
        return Ok(DiskOutcome::Skipped(format!(
            "disk not measured: {} is on {fs_name}, which is memory, not a disk",
            dir.display()
        )));
    }
    let refused = || {
        DiskOutcome::Skipped(format!(
            "disk not measured: the filesystem of {} refuses direct I/O (O_DIRECT), \
             and figures through the page cache would be the memory's",
            dir.display()
        ))
    };
    let path = dir.join(format!(
        ".zennet-bench-{}-{}.tmp",
        std::process::id(),
        unix_ms()
    ));
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(refused()),
        Err(e) => return Err(io_at(&path, e)),
    };
    let _remove = RemoveOnDrop(&path);

    let block = 1usize << 20;
    let file_bytes: u64 = if quick { 64 << 20 } else { 256 << 20 };
    let blocks = file_bytes / block as u64;
    let mut buf = AlignedBuf::new(block);
    fill_pseudo_random(buf.as_mut_slice(), 0x9e37_79b9_7f4a_7c15);

    let started = Instant::now();
    for i in 0..blocks {
        // A distinct block each time, and a stamp the read pass checks.
        buf.as_mut_slice()[..8].copy_from_slice(&i.to_le_bytes());
        match file.write_all_at(buf.as_slice(), i * block as u64) {
            Ok(()) => {}
            // Some filesystems (FUSE, some network ones) accept the flag at
            // open and refuse the first direct write.
            Err(e) if i == 0 && e.raw_os_error() == Some(libc::EINVAL) => return Ok(refused()),
            Err(e) => return Err(io_at(&path, e)),
        }
    }
    file.sync_data().map_err(|e| io_at(&path, e))?;
    let write = started.elapsed();

    let started = Instant::now();
    for i in 0..blocks {
        file.read_exact_at(buf.as_mut_slice(), i * block as u64)
            .map_err(|e| io_at(&path, e))?;
        if buf.as_slice()[..8] != i.to_le_bytes() {
            return Err(BenchError::DiskMismatch {
                path: path.clone(),
                block: i,
            });
        }
    }
    let read = started.elapsed();

    let random_run = if quick {
        Duration::from_millis(300)
    } else {
        Duration::from_millis(1500)
    };
    let pages = file_bytes / DIRECT_IO_ALIGN as u64;
    let mut page = AlignedBuf::new(DIRECT_IO_ALIGN);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut ops = 0u64;
    let started = Instant::now();
    while started.elapsed() < random_run {
        let offset = (rng.next() % pages) * DIRECT_IO_ALIGN as u64;
        file.read_exact_at(page.as_mut_slice(), offset)
            .map_err(|e| io_at(&path, e))?;
        ops += 1;
    }
    let random = started.elapsed();

    let mb_per_sec = |d: Duration| round(file_bytes as f64 / d.as_secs_f64() / 1e6, 1);
    Ok(DiskOutcome::Measured(DiskFigures {
        file_bytes,
        sequential_block_bytes: block as u64,
        sequential_write_mb_per_sec: mb_per_sec(write),
        sequential_read_mb_per_sec: mb_per_sec(read),
        random_read_4k_iops: round(ops as f64 / random.as_secs_f64(), 0),
        random_read_ms: random.as_millis() as u64,
    }))
}

/// The name of `dir`'s filesystem when it lives in memory.
fn memory_filesystem(dir: &Path) -> Result<Option<&'static str>, BenchError> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let c_path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| BenchError::NulInPath(dir.to_path_buf()))?;
    // SAFETY: statfs fills the zeroed struct we own from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io_at(dir, io::Error::last_os_error()));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(match st.f_type as i64 {
        TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    })
}

/// A heap buffer aligned for direct I/O (a `Vec<u8>` only guarantees
/// byte alignment).
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        assert!(len > 0);
        let layout = Layout::from_size_align(len, DIRECT_IO_ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` owns `layout.size()` initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove bench file");
        }
    }
}

/// xorshift64: fast, deterministic, and good enough to pick offsets and
/// make data incompressible. Not for anything secret.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn fill_pseudo_random(buf: &mut [u8], seed: u64) {
    let mut rng = XorShift(seed);
    for chunk in buf.chunks_mut(8) {
        let bytes = rng.next().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

// --------------------------------------------------------------- GPUs

/// The DRM cards under `drm` (normally /sys/class/drm). Connectors
/// (`card0-HDMI-A-1`) and render nodes are not cards; a missing directory
/// means no GPUs, and unreadable attributes are left out rather than
/// failing the bench.
fn list_gpus(drm: &Path) -> Vec<Gpu> {
    let Ok(entries) = fs::read_dir(drm) else {
        return Vec::new();
    };
    let mut cards: Vec<(u32, Gpu)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let card = e.file_name().to_string_lossy().into_owned();
            let number: u32 = card.strip_prefix("card")?.parse().ok()?;
            let device = e.path().join("device");
            if !device.exists() {
                return None;
            }
            let attr = |name: &str| read_trimmed(device.join(name));
            let vendor_id = attr("vendor");
            let file_name = |p: PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned());
            Some((
                number,
                Gpu {
                    card,
                    bus_id: fs::canonicalize(&device).ok().and_then(file_name),
                    vendor: vendor_id
                        .as_deref()
                        .and_then(vendor_name)
                        .map(str::to_string),
                    vendor_id,
                    device_id: attr("device"),
                    driver: fs::read_link(device.join("driver"))
                        .ok()
                        .and_then(file_name),
                },
            ))
        })
        .collect();
    cards.sort_by_key(|(n, _)| *n);
    cards.into_iter().map(|(_, gpu)| gpu).collect()
}

fn vendor_name(id: &str) -> Option<&'static str> {
    Some(match id {
        "0x10de" => "NVIDIA",
        "0x1002" => "AMD",
        "0x8086" => "Intel",
        "0x1af4" => "virtio",
        "0x1234" => "QEMU (bochs)",
        "0x15ad" => "VMware",
        "0x1a03" => "ASPEED",
        "0x1b36" => "Red Hat (QEMU)",
        _ => return None,
    })
}

// ----------------------------------------------------------------- VM

async fn vm_bench(
    vm: &VmBench,
    scratch_dir: &Path,
    quick: bool,
    progress: &mut (dyn FnMut(&str) + Send),
    notes: &mut Vec<String>,
) -> Result<VmFigures, BenchError> {
    let work = tempfile::Builder::new()
        .prefix("zennet-bench-vm-")
        .tempdir_in(scratch_dir)
        .map_err(|e| io_at(scratch_dir, e))?;
    let key = work.path().join("id_ed25519");
    // A throwaway key: the guest lets in whoever is on its command line.
    let keygen = tokio::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "zennet-bench", "-f"])
        .arg(&key)
        .output()
        .await
        .map_err(|source| BenchError::Spawn {
            program: "ssh-keygen",
            source,
        })?;
    if !keygen.status.success() {
        return Err(BenchError::Failed {
            what: "ssh-keygen".into(),
            detail: String::from_utf8_lossy(&keygen.stderr).trim().to_string(),
        });
    }
    let public_key = fs::read_to_string(key.with_extension("pub"))?;
    let kernel_args = vm
        .image
        .kernel_args(&[public_key.trim()])
        .map_err(BenchError::KernelArgs)?;
    let vcpus = 1;
    let spec = VmSpec {
        id: format!("bench-{}-{}", std::process::id(), unix_ms()),
        cores: vcpus,
        cpu_quota: vcpus as f64,
        mem_mib: 256,
        kernel: vm.image.kernel(),
        initramfs: vm.image.initramfs(),
        kernel_sha256: None,
        initramfs_sha256: None,
        image_disks: Vec::new(),
        kernel_args,
        scratch_gib: 1,
        persistent: None,
        ssh_port: free_port()?,
        network: NetworkSpec::UserNat,
        run_as: None,
    };

    progress(&format!(
        "vm: booting {} ({})",
        vm.image.manifest.id,
        vm.backend.accelerator()
    ));
    let started = Instant::now();
    let instance = vm.backend.launch(&spec, &work.path().join("run")).await?;
    // Whatever happens from here on, the VM goes down before we return,
    // and is killed if the bench is dropped half-way.
    let mut guard = KillOnDrop {
        instance: instance.as_ref(),
        armed: true,
    };
    let measured = async {
        wait_ready(instance.as_ref()).await?;
        let launch_to_ready = started.elapsed();
        tracing::info!(vm = %spec.id, ?launch_to_ready, "bench: guest ready");
        progress("vm: in-guest CPU workload");
        let ssh = Ssh {
            key: key.clone(),
            port: spec.ssh_port,
        };
        let target = if quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(2)
        };
        let (guest_mib, guest_time, guest_timing) = guest_hash_run(&ssh, target).await?;
        if guest_timing == GuestTiming::HostWallMinusSsh {
            notes.push(
                "vm: the guest had no usable nanosecond clock; its workload was timed from the host"
                    .to_string(),
            );
        }
        progress("vm: the same workload on the host");
        let host_busybox = copy_guest_busybox(&ssh, work.path()).await;
        if let Err(why) = &host_busybox {
            notes.push(format!(
                "vm: the guest's busybox does not run on the host ({why}); \
                 the host side used its own dd and sha256sum"
            ));
        }
        let host_busybox = host_busybox.ok();
        let (host_mib, host_time) = host_hash_run(host_busybox.as_deref(), vm.nice, target).await?;
        Ok::<_, BenchError>((
            launch_to_ready,
            guest_mib as f64 * 1_048_576.0 / guest_time.as_secs_f64() / 1e6,
            guest_timing,
            host_mib as f64 * 1_048_576.0 / host_time.as_secs_f64() / 1e6,
            host_busybox.is_some(),
        ))
    }
    .await;
    instance.shutdown(Duration::from_secs(10)).await;
    guard.armed = false;
    let (launch_to_ready, guest_mbps, guest_timing, host_mbps, same_binary) = measured?;
    let figures = VmFigures {
        image_id: vm.image.manifest.id.clone(),
        accel: vm.backend.accelerator().to_string(),
        vcpus,
        launch_to_ready_ms: launch_to_ready.as_millis() as u64,
        workload: hash_pipeline("busybox ", "N"),
        host_binary: if same_binary {
            HostBinary::GuestBusybox
        } else {
            HostBinary::HostCoreutils
        },
        guest_timing,
        guest_mb_per_sec: round(guest_mbps, 2),
        host_mb_per_sec: round(host_mbps, 2),
        efficiency: round(guest_mbps / host_mbps, 3),
    };
    tracing::info!(
        ready_ms = figures.launch_to_ready_ms,
        guest = figures.guest_mb_per_sec,
        host = figures.host_mb_per_sec,
        efficiency = figures.efficiency,
        "bench: vm"
    );
    Ok(figures)
}

/// Kills the bench VM when the bench future is dropped before its orderly
/// shutdown (QEMU runs in its own session and would outlive us). Only a
/// kill fits in `drop`; what the backend set up (the cgroup) stays behind.
struct KillOnDrop<'a> {
    instance: &'a dyn Instance,
    armed: bool,
}

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed && self.instance.is_alive() {
            tracing::warn!(
                pid = self.instance.process().pid,
                "bench dropped; killing its VM"
            );
            self.instance.kill();
        }
    }
}

/// Waits for the ready marker on the guest's serial log, or for the VM to
/// die, or for [`VM_READY_TIMEOUT`].
async fn wait_ready(instance: &dyn Instance) -> Result<(), BenchError> {
    let serial_log = &instance.process().serial_log;
    let started = Instant::now();
    loop {
        let log = tokio::fs::read_to_string(serial_log)
            .await
            .unwrap_or_default();
        if log.contains(zennet_images::READY_MARKER) {
            return Ok(());
        }
        let failed = if !instance.is_alive() {
            "the VM exited"
        } else if started.elapsed() > VM_READY_TIMEOUT {
            "timed out"
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(BenchError::GuestNotReady {
            why: failed,
            after: started.elapsed(),
            tail: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
}

/// The workload: hash `mib` MiB of zeros. `bb` prefixes each command
/// (`"busybox "`, a quoted path plus space, or nothing).
fn hash_pipeline(bb: &str, mib: &str) -> String {
    format!("{bb}dd if=/dev/zero bs=1048576 count={mib} 2>/dev/null | {bb}sha256sum >/dev/null")
}

/// The stock OpenSSH client against the guest's forwarded sshd.
struct Ssh {
    key: PathBuf,
    port: u16,
}

impl Ssh {
    /// Runs `command` in the guest; its stdout and the wall time taken.
    async fn run(&self, command: &str) -> Result<(Vec<u8>, Duration), BenchError> {
        let started = Instant::now();
        let out = tokio::process::Command::new("ssh")
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
            .args(["-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=30", "-i"])
            .arg(&self.key)
            .args(["-p", &self.port.to_string(), "root@127.0.0.1", command])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(SSH_TIMEOUT, out)
            .await
            .map_err(|_| BenchError::SshTimeout(command.to_string()))?
            .map_err(|source| BenchError::Spawn {
                program: "ssh",
                source,
            })?;
        let took = started.elapsed();
        if !out.status.success() {
            return Err(BenchError::Failed {
                what: format!("ssh {command:?}"),
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok((out.stdout, took))
    }
}

/// Times the workload in the guest, doubling its size until one run takes
/// at least `target`: (MiB, time, how it was timed).
async fn guest_hash_run(
    ssh: &Ssh,
    target: Duration,
) -> Result<(u64, Duration, GuestTiming), BenchError> {
    // The first contact doubles as the clock check. The ready marker
    // follows sshd's start, but give a slow guest a few tries anyway.
    let mut attempt = 0;
    let mut clock = None;
    for candidate in GUEST_CLOCKS {
        let out = loop {
            match ssh.run(candidate).await {
                Ok((out, _)) => break String::from_utf8_lossy(&out).trim().to_string(),
                Err(e) if attempt < 3 => {
                    tracing::debug!(error = %e, "bench: ssh not answering yet");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        };
        // Nanoseconds since 1970 have 19 digits; an unsupported `%N`
        // comes back literally.
        if out.len() >= 16 && out.bytes().all(|b| b.is_ascii_digit()) {
            clock = Some(candidate);
            break;
        }
        tracing::debug!(clock = candidate, output = %out, "bench: guest clock unusable");
    }
    if let Some(clock) = clock {
        // One ssh session runs the doubling loop; each size is timed by
        // the guest's clock around the pipeline alone.
        let script = format!(
            "n=1; while :; do s=$({clock}); {}; e=$({clock}); \
             d=$((e - s)); if [ $d -ge {} ] || [ $n -ge {MAX_HASH_MIB} ]; then echo $n $d; exit 0; fi; \
             n=$((n * 2)); done",
            hash_pipeline("busybox ", "$n"),
            target.as_nanos()
        );
        let (out, wall) = ssh.run(&script).await?;
        let text = String::from_utf8_lossy(&out);
        let parsed = text
            .split_whitespace()
            .map(|w| w.parse::<u64>().ok())
            .collect::<Option<Vec<u64>>>();
        let Some([mib, ns]) = parsed.as_deref() else {
            return Err(BenchError::GuestOutput(text.into_owned()));
        };
        let guest = Duration::from_nanos(*ns);
        // The guest's interval lies inside the ssh command's; if its clock
        // says otherwise, it is not to be trusted.
        if *ns > 0 && guest <= wall {
            return Ok((*mib, guest, GuestTiming::GuestClock));
        }
        tracing::warn!(
            ?guest,
            ?wall,
            "bench: guest clock disagrees with the host's"
        );
    }
    let mut round_trip = Duration::MAX;
    for _ in 0..3 {
        round_trip = round_trip.min(ssh.run("true").await?.1);
    }
    let mut mib = 1;
    loop {
        let (_, wall) = ssh
            .run(&hash_pipeline("busybox ", &mib.to_string()))
            .await?;
        let took = wall.saturating_sub(round_trip);
        if took >= target || mib >= MAX_HASH_MIB {
            if took.is_zero() {
                return Err(BenchError::NoGuestTime);
            }
            return Ok((mib, took, GuestTiming::HostWallMinusSsh));
        }
        mib *= 2;
    }
}

/// Copies the guest's static busybox to `dir` and checks it runs here.
async fn copy_guest_busybox(ssh: &Ssh, dir: &Path) -> Result<PathBuf, BenchError> {
    let (binary, _) = ssh.run("cat /bin/busybox").await?;
    let path = dir.join("busybox");
    fs::write(&path, &binary).map_err(|e| io_at(&path, e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(|e| io_at(&path, e))?;
    let check = tokio::process::Command::new(&path)
        .arg("true")
        .status()
        .await
        .map_err(|e| io_at(&path, e))?;
    if !check.success() {
        return Err(BenchError::Failed {
            what: "`busybox true`".into(),
            detail: check.to_string(),
        });
    }
    Ok(path)
}

/// Times the workload on the host, doubling its size until one run takes
/// at least `target`: (MiB, time). It runs on one CPU (the guest has one
/// vCPU) at the VM's nice level, with `busybox` when given.
async fn host_hash_run(
    busybox: Option<&Path>,
    nice: i32,
    target: Duration,
) -> Result<(u64, Duration), BenchError> {
    let cpu = one_cpu();
    let mut mib = 1;
    loop {
        let (program, prefix) = match busybox {
            Some(bb) => (bb.as_os_str().to_owned(), format!("{} ", shell_quote(bb))),
            None => ("sh".into(), String::new()),
        };
        let mut command = tokio::process::Command::new(program);
        if busybox.is_some() {
            command.arg("sh");
        }
        command
            .arg("-c")
            .arg(hash_pipeline(&prefix, &mib.to_string()))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        // SAFETY: sched_setaffinity and setpriority are async-signal-safe
        // system calls on data prepared before fork.
        unsafe {
            command.pre_exec(move || {
                if let Some(set) = &cpu {
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
                }
                libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                Ok(())
            });
        }
        let started = Instant::now();
        let status = command.status().await.map_err(|source| BenchError::Spawn {
            program: "the host workload",
            source,
        })?;
        let took = started.elapsed();
        if !status.success() {
            return Err(BenchError::Failed {
                what: "the host workload".into(),
                detail: status.to_string(),
            });
        }
        if took >= target || mib >= MAX_HASH_MIB {
            return Ok((mib, took));
        }
        mib *= 2;
    }
}

/// A CPU set holding the last CPU this process may run on (the first is
/// more likely to be busy with interrupts).
fn one_cpu() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; the calls fill or read what we own.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return None;
        }
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &allowed))?;
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        Some(one)
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ------------------------------------------------------------ helpers

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn cpu_model() -> Option<String> {
    fs::read_to_string("/proc/cpuinfo")
        .ok()?
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
}

fn mem_total_bytes() -> Option<u64> {
    fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

fn load_average() -> Option<f64> {
    read_trimmed("/proc/loadavg")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Rounds to `places` decimals: more digits would be noise, and short
/// decimals survive a JSON round trip exactly.
fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

fn io_at(path: &Path, source: io::Error) -> BenchError {
    BenchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prime_workload_is_deterministic_and_right() {
        assert_eq!(count_primes(PRIME_LIMIT), PRIMES_BELOW_LIMIT);
        assert_eq!(PRIMES_BELOW_LIMIT, 1229);
        assert_eq!(count_primes(PRIME_LIMIT), count_primes(PRIME_LIMIT));
        for (limit, primes) in [(0, 0), (2, 0), (3, 1), (4, 2), (11, 4), (12, 5), (100, 25)] {
            assert_eq!(count_primes(limit), primes, "primes below {limit}");
        }
        // The plain definition agrees on every limit up to 1000.
        let is_prime = |n: u64| {
            n >= 2
                && (2..n)
                    .take_while(|d| d * d <= n)
                    .all(|d| !n.is_multiple_of(d))
        };
        let mut below = 0;
        for n in 0..=1000 {
            assert_eq!(count_primes(n), below, "primes below {n}");
            below += u64::from(is_prime(n));
        }
        assert_eq!(rem_u64(10, 3), 1);
        assert_eq!(rem_u64(u64::MAX, 7), u64::MAX % 7);
    }

    #[test]
    fn prime_rate_counts_events() {
        let rate = prime_rate(1, Duration::from_millis(100)).unwrap();
        assert!(rate > 0.0);
    }

    #[test]
    fn gpu_listing_does_not_fail_here() {
        // Zero on a headless VM; whatever it is, listing must not panic.
        let gpus = list_gpus(Path::new("/sys/class/drm"));
        for gpu in &gpus {
            assert!(gpu.card.starts_with("card"));
        }
        assert!(list_gpus(Path::new("/nonexistent/drm")).is_empty());
    }

    #[test]
    fn gpu_listing_reads_a_sysfs_tree() {
        let root = tempfile::tempdir().unwrap();
        let pci = root.path().join("devices/pci0000:00/0000:01:00.0");
        fs::create_dir_all(&pci).unwrap();
        fs::write(pci.join("vendor"), "0x10de\n").unwrap();
        fs::write(pci.join("device"), "0x2204\n").unwrap();
        let driver = root.path().join("drivers/nvidia");
        fs::create_dir_all(&driver).unwrap();
        std::os::unix::fs::symlink(&driver, pci.join("driver")).unwrap();
        let drm = root.path().join("class/drm");
        for name in ["card1", "card1-HDMI-A-1", "renderD128"] {
            fs::create_dir_all(drm.join(name)).unwrap();
            std::os::unix::fs::symlink(&pci, drm.join(name).join("device")).unwrap();
        }
        // A card without a device link (a virtual one) is not listed.
        fs::create_dir_all(drm.join("card0")).unwrap();

        assert_eq!(
            list_gpus(&drm),
            vec![Gpu {
                card: "card1".into(),
                bus_id: Some("0000:01:00.0".into()),
                vendor_id: Some("0x10de".into()),
                device_id: Some("0x2204".into()),
                vendor: Some("NVIDIA".into()),
                driver: Some("nvidia".into()),
            }]
        );
    }

    #[test]
    fn disk_bench_declines_memory_filesystems() {
        let shm = Path::new("/dev/shm");
        if memory_filesystem(shm).ok().flatten().is_none() {
            return; // no tmpfs here to try it on
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        match disk_bench(dir.path(), true).unwrap() {
            DiskOutcome::Skipped(why) => assert!(why.contains("tmpfs"), "{why}"),
            DiskOutcome::Measured(d) => panic!("measured memory as a disk: {d:?}"),
        }
    }

    #[test]
    fn memory_buffers_dwarf_the_cache() {
        const MIB: u64 = 1 << 20;
        assert_eq!(parse_cache_size("491520K"), Some(480 * MIB));
        assert_eq!(parse_cache_size("32M"), Some(32 * MIB));
        assert_eq!(parse_cache_size("x"), None);
        let len = |cache: Option<u64>, ram: Option<u64>| memory_buffer_len(cache, ram) as u64;
        assert_eq!(len(None, None), 256 * MIB);
        assert_eq!(len(Some(32 * MIB), Some(24 << 30)), 256 * MIB);
        assert_eq!(len(Some(480 * MIB), Some(24 << 30)), 960 * MIB);
        // A small machine caps the buffers at an eighth of its RAM.
        assert_eq!(len(Some(480 * MIB), Some(2 << 30)), 256 * MIB);
        assert_eq!(len(Some(480 * MIB), Some(1 << 30)), 128 * MIB);
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        let mut b = AlignedBuf::new(DIRECT_IO_ALIGN * 3);
        assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_IO_ALIGN, 0);
        assert_eq!(b.as_mut_slice().len(), DIRECT_IO_ALIGN * 3);
        assert!(b.as_slice().iter().all(|&x| x == 0));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
