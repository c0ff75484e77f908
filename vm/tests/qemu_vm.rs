//! Real VMs under emulation: the QEMU backend launches the default image in
//! a cgroup, as an unprivileged seccomp-confined process, reachable by the
//! stock OpenSSH client; CPU quotas and memory limits hold.
//!
//! Needs root, QEMU and OpenSSH (scripts/setup.sh installs them). The image
//! is built once into `$ZENNET_IMAGE_CACHE` (default
//! /var/tmp/zennet-images-test), shared with the images crate's tests.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use zennet_testkit::{free_port, image, ssh_keygen as ssh_key};
use zennet_vm::cgroup::VmCgroup;
use zennet_vm::qemu::launch as qemu;
use zennet_vm::qemu::{Accel, QemuConfig};
use zennet_vm::{NetworkSpec, VmSpec};

/// VM tests share two cores; one at a time keeps timings meaningful.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spec(
    id: &str,
    image: &zennet_images::Image,
    public_key: &str,
    cores: u32,
    quota: f64,
    mem_mib: u64,
) -> VmSpec {
    VmSpec {
        id: id.into(),
        cores,
        cpu_quota: quota,
        mem_mib,
        kernel: image.kernel(),
        initramfs: image.initramfs(),
        kernel_args: image.kernel_args(&[public_key]).unwrap(),
        scratch_gib: 1,
        persistent: None,
        ssh_port: free_port(),
        network: NetworkSpec::UserNat,
        run_as: None,
    }
}

fn wait_ready(serial: &Path) {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(serial).unwrap_or_default();
        if log.contains(zennet_images::READY_MARKER) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "guest not ready; serial log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ssh(key: &Path, port: u16, command: &str) -> String {
    let out = Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(["-o", "ConnectTimeout=20", "-o", "BatchMode=yes", "-i"])
        .arg(key)
        .args(["-p", &port.to_string(), "root@127.0.0.1", command])
        .output()
        .expect("ssh runs");
    assert!(
        out.status.success(),
        "ssh {command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_boots_confined_and_answers_ssh() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(dir.path());
    let spec = spec(
        &format!("t-boot-{}", std::process::id()),
        &image,
        &public,
        1,
        1.0,
        256,
    );
    let config = QemuConfig {
        accel: Accel::Tcg,
        ..QemuConfig::default()
    };
    let started = Instant::now();
    let (vm, qmp) = qemu::launch(&config, &spec, &dir.path().join("vm"))
        .await
        .unwrap();
    wait_ready(&vm.serial_log);
    eprintln!("launch to ready: {:?}", started.elapsed());

    assert_eq!(
        ssh(&key, spec.ssh_port, "echo hello from $(uname -n)").trim(),
        "hello from zennet"
    );
    assert!(qmp.status().await.unwrap().running);

    // Confinement: unprivileged uid, seccomp filter, inside the VM's cgroup.
    assert_eq!(
        status_field(vm.pid, "Uid").split_whitespace().next(),
        Some("65534")
    );
    assert_eq!(status_field(vm.pid, "Seccomp"), "2");
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", vm.pid)).unwrap();
    assert!(
        cgroups.contains(&format!("zennet/{}", spec.id)),
        "{cgroups}"
    );
    assert!(qemu::is_alive(vm.pid, &spec.id));

    // Pause and resume through QMP.
    qmp.stop().await.unwrap();
    assert!(!qmp.status().await.unwrap().running);
    qmp.cont().await.unwrap();
    assert!(qmp.status().await.unwrap().running);

    qemu::shutdown(&spec.id, vm.pid, Some(&qmp), Duration::from_secs(10)).await;
    assert!(!qemu::is_alive(vm.pid, &spec.id));
    assert!(!VmCgroup::load(&spec.id).exists(), "cgroup removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_core_quota_holds_for_a_busy_guest() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(dir.path());
    let spec = spec(
        &format!("t-cpu-{}", std::process::id()),
        &image,
        &public,
        1,
        0.5,
        256,
    );
    let (vm, qmp) = qemu::launch(&QemuConfig::default(), &spec, &dir.path().join("vm"))
        .await
        .unwrap();
    wait_ready(&vm.serial_log);
    ssh(
        &key,
        spec.ssh_port,
        "setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &",
    );
    let cgroup = VmCgroup::load(&spec.id);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (t0, c0) = (Instant::now(), cgroup.usage().cpu_ns);
    assert!(c0 > 0, "the cgroup accounts the VM's boot");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cores = (cgroup.usage().cpu_ns - c0) as f64 / t0.elapsed().as_nanos() as f64;
    qemu::shutdown(&spec.id, vm.pid, Some(&qmp), Duration::from_secs(10)).await;
    assert!(
        (0.45..=0.55).contains(&cores),
        "busy guest used {cores:.3} cores under a 0.5 quota"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_memory_stays_within_the_cgroup_limit() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(dir.path());
    let mem_mib = 256;
    let spec = spec(
        &format!("t-mem-{}", std::process::id()),
        &image,
        &public,
        1,
        1.0,
        mem_mib,
    );
    let (vm, qmp) = qemu::launch(&QemuConfig::default(), &spec, &dir.path().join("vm"))
        .await
        .unwrap();
    wait_ready(&vm.serial_log);
    // Fill a tmpfs well past guest RAM: the guest runs out, not the host.
    let _ = Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(["-o", "BatchMode=yes", "-i"])
        .arg(&key)
        .args(["-p", &spec.ssh_port.to_string(), "root@127.0.0.1"])
        .arg("mount -t tmpfs -o size=1g tmpfs /mnt && dd if=/dev/zero of=/mnt/fill bs=1M count=600")
        .output();
    let limit = zennet_vm::cgroup::Limits::for_vm(1.0, mem_mib).memory_bytes;
    let usage = VmCgroup::load(&spec.id).usage();
    qemu::shutdown(&spec.id, vm.pid, Some(&qmp), Duration::from_secs(10)).await;
    assert!(
        usage.memory_peak_bytes <= limit,
        "peak {} > limit {limit}",
        usage.memory_peak_bytes
    );
    assert!(
        usage.memory_peak_bytes > (mem_mib << 20) / 2,
        "the guest did touch its memory"
    );
}
