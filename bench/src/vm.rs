//! VM figures (TCG here; KVM where it works):
//! * launch → sshd ready through the node's QEMU backend (cgroup, uid drop,
//!   seccomp, fd passing, QMP, guest memory locked where RLIMIT_MEMLOCK
//!   allows) vs the same image booted by a bare `qemu-system-x86_64`
//!   command line, and by that command with the same memory lock;
//! * the guest network's policy (the VM namespace's nftables filter and
//!   `tc` shaping, the host's forward guard) on vs off, in one VM with
//!   internet: a download from a stand-in internet inside the guest, and
//!   the node's path to the guest's sshd (what the tunnel carries);
//! * the node's own CPU use while it runs and meters two VMs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zennet_testkit::internet::{INTERNET_IP, INTERNET_PORT, Internet};
use zennet_vm::qemu::{QemuBackend, QemuConfig};
use zennet_vm::{Backend, GuestNetwork, NetworkSpec, VmSpec};

use crate::{row, single};

pub fn run(quick: bool) {
    println!("== VMs ==");
    let image = zennet_testkit::image();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rounds = if quick { 1 } else { 5 };
    let (mut ours, mut bare, mut bare_locked) = (Vec::new(), Vec::new(), Vec::new());
    let mut locked = false;
    for i in 0..rounds {
        let (t, mem_lock) = runtime.block_on(launch_ours(&image, i));
        ours.push(t);
        locked |= mem_lock;
        bare.push(launch_bare(&image, &[]));
        if mem_lock {
            bare_locked.push(launch_bare(&image, &["-overcommit", "mem-lock=on"]));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ours = median(ours);
    row(
        "VM launch → sshd ready (node, TCG)",
        ours,
        "bare qemu-system-x86_64",
        median(bare),
        "s",
    );
    // The node locks guest memory where RLIMIT_MEMLOCK allows (no paging
    // of a tenant's memory), which faults all of it in at start: the
    // same bare command with the same lock is the like-for-like anchor.
    if locked {
        row(
            "VM launch → sshd ready (node, TCG)",
            ours,
            "bare, -overcommit mem-lock=on",
            median(bare_locked),
            "s",
        );
    }
    runtime.block_on(guest_network(quick));
    agent_cpu(if quick { 5 } else { 15 });
}

/// Seconds to the guest's ready marker, and whether QEMU was told to lock
/// guest memory.
async fn launch_ours(image: &zennet_images::Image, round: usize) -> (f64, bool) {
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
        image_disks: Vec::new(),
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
    let mem_lock = std::fs::read(format!("/proc/{}/cmdline", vm.process().pid))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"mem-lock=on"));
    vm.shutdown(Duration::from_secs(5)).await;
    (t, mem_lock)
}

fn launch_bare(image: &zennet_images::Image, extra: &[&str]) -> f64 {
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
        .args(extra)
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

/// Shaped at 10 Gbit/s: the shaper works but never limits.
const BANDWIDTH_MBPS: u32 = 10_000;

/// One VM with internet: its throughput with the policy on, and with the
/// policy taken off the kernel (the namespace keeps only its NAT), in
/// turns.
async fn guest_network(quick: bool) {
    let _internet = Internet::up();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = zennet_testkit::ssh_keygen(dir.path());
    let mut config =
        zennet_vm::RuntimeConfig::new(dir.path().join("agent"), zennet_testkit::image_cache());
    config.network.mode = GuestNetwork::Internet;
    config.network.bandwidth_mbps = BANDWIDTH_MBPS;
    let vms = zennet_vm::Runtime::open(config, Arc::new(QemuBackend::new(QemuConfig::default())))
        .await
        .expect("VM runtime opens");
    let vm = vms
        .start(zennet_vm::StartVm {
            image: zennet_images::DEFAULT_IMAGE_ID.into(),
            cores: 1,
            cpu_quota: None,
            mem_mib: 256,
            volume: None,
            volume_gib: None,
            scratch_gib: Some(1),
            network: None,
            bandwidth_mbps: None,
            authorized_key: public,
        })
        .await
        .expect("VM starts");
    vms.wait_ready(&vm.id, Duration::from_secs(180))
        .await
        .expect("VM ready");
    let netns = vm
        .netns
        .clone()
        .expect("a VM with internet has a namespace");
    let size: u64 = if quick { 8 << 20 } else { 32 << 20 };
    let rounds = if quick { 1 } else { 5 };
    // Interleaved, so drift on this shared machine hits both sides alike.
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        on.push((
            guest_download(&key, vm.ssh_port, size),
            sshd_stream(&key, vm.ssh_port, size / 2),
        ));
        let saved = policy_off(&netns);
        off.push((
            guest_download(&key, vm.ssh_port, size),
            sshd_stream(&key, vm.ssh_port, size / 2),
        ));
        policy_on(&netns, &saved, BANDWIDTH_MBPS);
    }
    let median = |v: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = v.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let on = (median(&on, |m| m.0), median(&on, |m| m.1));
    let off = (median(&off, |m| m.0), median(&off, |m| m.1));
    let _ = vms.stop(&vm.id).await;
    row(
        "guest download ← internet, policy on",
        on.0,
        "policy off (no nft filter, tc)",
        off.0,
        "MB/s",
    );
    row(
        "node → guest sshd stream, policy on",
        on.1,
        "policy off (no nft filter, tc)",
        off.1,
        "MB/s",
    );
}

/// MB/s of an HTTP download of `size` bytes from the stand-in internet,
/// timed by the guest's own clock.
fn guest_download(key: &Path, port: u16, size: u64) -> f64 {
    let out = guest_ssh(
        key,
        port,
        &format!(
            "a=$(cut -d' ' -f1 /proc/uptime); \
             printf 'GET /bytes/{size} HTTP/1.0\\r\\n\\r\\n' | nc -w 30 {INTERNET_IP} {INTERNET_PORT} >/dev/null; \
             b=$(cut -d' ' -f1 /proc/uptime); echo $a $b"
        ),
    );
    let t: Vec<f64> = String::from_utf8_lossy(&out)
        .split_whitespace()
        .map(|v| v.parse().expect("uptime"))
        .collect();
    size as f64 / (t[1] - t[0]) / 1e6
}

/// MB/s of `size` bytes streamed out of the guest's sshd to the host's
/// OpenSSH client, net of an empty session's setup.
fn sshd_stream(key: &Path, port: u16, size: u64) -> f64 {
    let started = Instant::now();
    guest_ssh(key, port, "true");
    let setup = started.elapsed();
    let started = Instant::now();
    let out = guest_ssh(key, port, &format!("head -c {size} /dev/zero"));
    assert_eq!(out.len() as u64, size, "the guest's stream came short");
    size as f64 / started.elapsed().saturating_sub(setup).as_secs_f64() / 1e6
}

fn guest_ssh(key: &Path, port: u16, command: &str) -> Vec<u8> {
    let out = zennet_testkit::guest_ssh(key, port, command);
    assert!(
        out.status.success(),
        "ssh {command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The filter tables [`policy_off`] took out, to be put back.
struct Policy {
    host: String,
    namespace: String,
}

/// Takes the guest network's policy off the kernel: the namespace's
/// filter table and both shapers, and the host's forward guard. The NAT
/// tables stay: without them nothing would flow at all.
fn policy_off(netns: &str) -> Policy {
    let in_ns = ["netns", "exec", netns, "nft"];
    let nft = |prefix: &[&str], args: &[&str]| {
        let mut command = match prefix {
            [] => Command::new("nft"),
            _ => Command::new("ip"),
        };
        let out = command.args(prefix).args(args).output().expect("nft runs");
        assert!(out.status.success(), "nft {prefix:?} {args:?}");
        String::from_utf8(out.stdout).expect("nft prints text")
    };
    let list = ["list", "table", "inet", "zennet"];
    let saved = Policy {
        host: nft(&[], &list),
        namespace: nft(&in_ns, &list),
    };
    let delete = ["delete", "table", "inet", "zennet"];
    nft(&[], &delete);
    nft(&in_ns, &delete);
    for dev in [zennet_vm::net::rules::TAP, zennet_vm::net::rules::UPLINK] {
        let ok = Command::new("tc")
            .args(["-n", netns, "qdisc", "del", "dev", dev, "root"])
            .status()
            .expect("tc runs");
        assert!(ok.success(), "no shaper on {dev}");
    }
    saved
}

/// Puts back what [`policy_off`] took out.
fn policy_on(netns: &str, saved: &Policy, mbps: u32) {
    use std::io::Write;
    use zennet_vm::net::rules;
    let feed = |program: &str, args: &[&str], text: &str| {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("runs");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("fed");
        drop(stdin);
        assert!(child.wait().expect("ends").success(), "{program} {args:?}");
    };
    feed("nft", &["-f", "-"], &saved.host);
    feed(
        "ip",
        &["netns", "exec", netns, "nft", "-f", "-"],
        &saved.namespace,
    );
    let shapers = rules::upload_shaping(mbps) + &rules::download_shaping(mbps);
    feed("tc", &["-n", netns, "-batch", "-"], &shapers);
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
