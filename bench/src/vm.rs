//! VM figures (TCG here; KVM where it works):
//! * launch → sshd ready through the node's QEMU backend (cgroup, uid drop,
//!   seccomp, fd passing, QMP) vs the same image booted by a bare
//!   `qemu-system-x86_64` command line;
//! * the node's own CPU use while it runs and meters two VMs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zennet_vm::qemu::{QemuBackend, QemuConfig};
use zennet_vm::{Backend, NetworkSpec, VmSpec};

use crate::{row, single};

pub fn run(quick: bool) {
    println!("== VMs ==");
    let cache = std::env::var_os("ZENNET_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/zennet-images-test"));
    let image =
        zennet_images::build(&zennet_images::default_recipe(), &cache).expect("image builds");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rounds = if quick { 1 } else { 3 };
    let mut ours = Vec::new();
    let mut bare = Vec::new();
    for i in 0..rounds {
        ours.push(runtime.block_on(launch_ours(&image, i)));
        bare.push(launch_bare(&image));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    row(
        "VM launch → sshd ready (node, TCG)",
        median(ours),
        "bare qemu-system-x86_64",
        median(bare),
        "s",
    );
    agent_cpu(if quick { 5 } else { 15 });
}

async fn launch_ours(image: &zennet_images::Image, round: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let spec = VmSpec {
        id: format!("bench-{}-{round}", std::process::id()),
        cores: 1,
        cpu_quota: 1.0,
        mem_mib: 256,
        kernel: image.kernel(),
        initramfs: image.initramfs(),
        kernel_sha256: None,
        initramfs_sha256: None,
        kernel_args: image.kernel_args(&[]).unwrap(),
        scratch_gib: 1,
        persistent: None,
        ssh_port: free_port(),
        network: NetworkSpec::UserNat,
        run_as: None,
    };
    let backend = QemuBackend::new(QemuConfig::default());
    let started = Instant::now();
    let vm = backend
        .launch(&spec, &dir.path().join("vm"))
        .await
        .expect("VM launches");
    wait_marker(&vm.process().serial_log);
    let t = started.elapsed().as_secs_f64();
    vm.shutdown(Duration::from_secs(5)).await;
    t
}

fn launch_bare(image: &zennet_images::Image) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let scratch = dir.path().join("scratch.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&scratch)
        .arg("1G")
        .status()
        .unwrap();
    assert!(ok.success());
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-machine",
            "q35,accel=tcg",
        ])
        .args(["-cpu", "max", "-smp", "1", "-m", "256M", "-kernel"])
        .arg(image.kernel())
        .arg("-initrd")
        .arg(image.initramfs())
        .arg("-append")
        .arg(image.kernel_args(&[]).unwrap().join(" "))
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=d,format=qcow2",
            scratch.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=d"])
        .args([
            "-netdev",
            &format!("user,id=n,hostfwd=tcp:127.0.0.1:{}-:22", free_port()),
        ])
        .args([
            "-device",
            "virtio-net-pci,netdev=n",
            "-device",
            "virtio-rng-pci",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_marker(&serial);
    let t = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    t
}

/// Runs a node with --provide and two VMs, and measures the node
/// process's own CPU time while it meters them.
fn agent_cpu(seconds: u64) {
    let zennet = std::env::current_exe().unwrap().with_file_name("zennet");
    assert!(
        zennet.exists(),
        "build zennet first: cargo build --release -p zennet-cli"
    );
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let run = |args: &[&str]| {
        let out = Command::new(&zennet)
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "zennet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["init"]);
    // A provider node needs the image in its own home.
    run(&["image", "build"]);
    let key = dir.path().join("key");
    let _ = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status();
    let mut node = Node(
        Command::new(&zennet)
            .arg("--home")
            .arg(&home)
            .args([
                "node",
                "run",
                "--provide",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while Command::new(&zennet)
        .arg("--home")
        .arg(&home)
        .args(["chain", "info"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "node did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let public = key.with_extension("pub");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = run(&[
            "agent",
            "vm",
            "start",
            "--authorized-key",
            public.to_str().unwrap(),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // Let both guests finish booting, then measure steady-state metering.
    std::thread::sleep(Duration::from_secs(8));
    let pid = node.0.id();
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let used = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    for id in &ids {
        run(&["agent", "vm", "stop", id]);
    }
    node.0.kill().ok();
    single(
        "node CPU while running + metering 2 VMs",
        used * 100.0,
        "% of a core",
    );
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name: utime is 14th, stime 15th overall.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks
}

fn wait_marker(serial: &Path) {
    let started = Instant::now();
    while !std::fs::read_to_string(serial).is_ok_and(|s| s.contains(zennet_images::READY_MARKER)) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "guest did not become ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
