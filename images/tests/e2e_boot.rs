//! End to end: build `zennet-tiny` from Debian packages, boot it under QEMU
//! (TCG), log in with the stock OpenSSH client, and check that `/data`
//! survives a power cycle.
//!
//! Needs the host packages in images/HOST-PACKAGES and apt's package lists
//! (`apt-get update`). The image is cached in `$ZENNET_IMAGE_CACHE`, or
//! /var/tmp/zennet-images-test, so later runs skip the build. Run with
//! `CARGO_TARGET_DIR=/work/target-images cargo test -p zennet-images --test e2e_boot -- --nocapture`
//! to see the timings.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zennet_images::{
    DATA_DISK_SERIAL, FW_CFG_AUTHORIZED_KEYS, HOST_KEY_MARKER, Image, READY_MARKER, default_recipe,
};

/// Hard limit from QEMU launch to the ready marker; a healthy boot under TCG
/// takes about 2.5 s on 2 cores, so this only catches a hung guest.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const SSH_TIMEOUT: Duration = Duration::from_secs(60);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);

/// Keeps the tests of this file from running at once: they share the image
/// cache, and a build beside a TCG guest would skew its boot time.
static SERIAL: Mutex<()> = Mutex::new(());

fn cache_dir() -> PathBuf {
    std::env::var_os("ZENNET_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/zennet-images-test"))
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "zennet_images=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn require_tools(tools: &[&str]) {
    for tool in tools {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "`{tool}` is not installed; install the packages in images/HOST-PACKAGES"
        );
    }
}

fn timed_build(dir: &Path) -> (Image, Duration) {
    let started = Instant::now();
    let image = zennet_images::build(&default_recipe(), dir).expect("image build");
    (image, started.elapsed())
}

#[test]
fn build_is_cached_and_reproducible() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init_logs();
    let dir = cache_dir();
    let (image, first) = timed_build(&dir);
    eprintln!(
        "build into {}: {first:.2?} (cold only on a first run)",
        dir.display()
    );
    image.verify().expect("built files match the manifest");

    let inputs = image.dir.join("inputs");
    let before = fs::metadata(&inputs).unwrap().modified().unwrap();
    let (again, cached) = timed_build(&dir);
    eprintln!("cached build: {cached:.2?}");
    assert_eq!(again.manifest, image.manifest);
    assert_eq!(
        fs::metadata(&inputs).unwrap().modified().unwrap(),
        before,
        "a build with unchanged inputs must not rewrite the image"
    );

    // Build again from scratch in another directory, reusing only the
    // downloaded .deb files (the network is not what is under test), and
    // expect the very same bytes.
    let fresh = tempfile::tempdir().unwrap();
    let debs = fresh.path().join(".cache/debs");
    fs::create_dir_all(&debs).unwrap();
    for deb in fs::read_dir(dir.join(".cache/debs")).unwrap() {
        let deb = deb.unwrap();
        fs::hard_link(deb.path(), debs.join(deb.file_name()))
            .or_else(|_| fs::copy(deb.path(), debs.join(deb.file_name())).map(drop))
            .unwrap();
    }
    let (rebuilt, warm) = timed_build(fresh.path());
    eprintln!("rebuild from cached .debs: {warm:.2?}");
    assert_eq!(rebuilt.manifest.hash, image.manifest.hash);
    assert_eq!(rebuilt.manifest, image.manifest);

    assert_eq!(zennet_images::list(&dir).unwrap(), vec![image.clone()]);
    assert_eq!(zennet_images::load(&dir, "zennet-tiny").unwrap(), image);
}

#[test]
fn boots_to_ssh_and_keeps_data_across_reboots() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init_logs();
    require_tools(&["qemu-system-x86_64", "ssh", "ssh-keygen"]);
    let (image, build_time) = timed_build(&cache_dir());
    eprintln!(
        "image {} ({}) ready in {build_time:.2?}",
        image.manifest.id, image.manifest.hash
    );

    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e@zennet", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success(), "ssh-keygen failed");
    let public_key_path = key.with_extension("pub");
    let public_key = fs::read_to_string(&public_key_path).unwrap();

    // A blank persistent volume, as a provider would hand out, and a scratch
    // disk in front of it so the volume is the second virtio disk.
    let data = work.path().join("data.img");
    fs::File::create(&data).unwrap().set_len(256 << 20).unwrap();
    let scratch = work.path().join("scratch.img");
    fs::File::create(&scratch)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();

    // Boot 1: key on the kernel command line, volume found as /dev/vdb.
    let args = image.kernel_args(&[public_key.trim()]).unwrap();
    let mut vm = Vm::launch(
        &image,
        work.path(),
        "boot1",
        &args,
        &[drive(&scratch, "scratch", None), drive(&data, "data", None)],
    );
    let boot1 = vm.wait_ready();
    eprintln!("boot 1 (blank volume, formatted at boot): launch to {READY_MARKER} in {boot1:.2?}");
    let host_key = vm.host_key();

    let hello = ssh(&key, vm.port, &Trust::Any, "echo hello");
    assert_eq!(hello, "hello\n");

    // From here on the guest's host key is pinned to what it printed on the
    // console, as a provider would do.
    let pinned = Trust::Pinned {
        known_hosts: work.path().join("known_hosts"),
        host_key: host_key.clone(),
    };
    let nonce = format!(
        "persisted-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let out = ssh(
        &key,
        vm.port,
        &pinned,
        &format!(
            "grep -q ' /data ext4 ' /proc/mounts && echo {nonce} > /data/marker && sync && cat /data/marker"
        ),
    );
    assert_eq!(out.trim(), nonce, "writing /data");
    vm.power_off(&key, &pinned);

    // Boot 2: the same volume alone, marked by its serial, and the key only
    // through fw_cfg.
    let args = image.kernel_args(&[]).unwrap();
    let mut vm = Vm::launch(
        &image,
        work.path(),
        "boot2",
        &args,
        &[
            drive(&data, "data", Some(DATA_DISK_SERIAL)),
            vec![
                "-fw_cfg".into(),
                format!(
                    "name={FW_CFG_AUTHORIZED_KEYS},file={}",
                    public_key_path.display()
                ),
            ],
        ],
    );
    let boot2 = vm.wait_ready();
    eprintln!("boot 2 (existing volume): launch to {READY_MARKER} in {boot2:.2?}");
    assert_eq!(vm.host_key(), host_key, "the host key lives on /data");
    let out = ssh(&key, vm.port, &pinned, "cat /data/marker");
    assert_eq!(out.trim(), nonce, "/data/marker after the power cycle");
    vm.power_off(&key, &pinned);
}

fn drive(file: &Path, id: &str, serial: Option<&str>) -> Vec<String> {
    let mut device = format!("virtio-blk-pci,drive={id}");
    if let Some(serial) = serial {
        device.push_str(&format!(",serial={serial}"));
    }
    vec![
        "-drive".into(),
        format!("if=none,id={id},file={},format=raw", file.display()),
        "-device".into(),
        device,
    ]
}

/// A QEMU guest, killed if the test ends before it powers off.
struct Vm {
    child: Child,
    console: PathBuf,
    port: u16,
    launched: Instant,
}

impl Vm {
    fn launch(
        image: &Image,
        dir: &Path,
        name: &str,
        args: &[String],
        extra: &[Vec<String>],
    ) -> Self {
        let console = dir.join(format!("{name}-console.log"));
        let port = free_port();
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-M", "q35", "-accel", "tcg", "-m", "256", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-nographic"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(image.kernel())
            .arg("-initrd")
            .arg(image.initramfs())
            .arg("-append")
            .arg(args.join(" "))
            .arg("-netdev")
            .arg(format!("user,id=n,hostfwd=tcp:127.0.0.1:{port}-:22"))
            .args(["-device", "virtio-net-pci,netdev=n"])
            // Seeds the guest's RNG at once; without it the host key waits
            // about a second for the kernel's own entropy.
            .args(["-device", "virtio-rng-pci"]);
        for piece in extra {
            command.args(piece);
        }
        let launched = Instant::now();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 starts");
        Self {
            child,
            console,
            port,
            launched,
        }
    }

    fn console_text(&self) -> String {
        fs::read(&self.console)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    fn console_tail(&self) -> String {
        let text = self.console_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Time from launch to the ready marker, or a panic with the console.
    fn wait_ready(&mut self) -> Duration {
        loop {
            if self
                .console_text()
                .lines()
                .any(|l| l.trim() == READY_MARKER)
            {
                return self.launched.elapsed();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!(
                    "QEMU exited ({status}) before {READY_MARKER}: {stderr}\nconsole:\n{}",
                    self.console_tail()
                );
            }
            assert!(
                self.launched.elapsed() < READY_TIMEOUT,
                "no {READY_MARKER} within {READY_TIMEOUT:?}; console:\n{}",
                self.console_tail()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// The host key the guest printed (`ssh-ed25519 AAAA...`, no comment).
    fn host_key(&self) -> String {
        let text = self.console_text();
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(HOST_KEY_MARKER))
            .unwrap_or_else(|| {
                panic!(
                    "no {HOST_KEY_MARKER} line; console:\n{}",
                    self.console_tail()
                )
            });
        let fields: Vec<&str> = line.split_whitespace().take(2).collect();
        assert_eq!(fields.len(), 2, "malformed host key line {line:?}");
        fields.join(" ")
    }

    /// Powers the guest off from inside and waits for QEMU to exit.
    fn power_off(&mut self, key: &Path, trust: &Trust) {
        let started = Instant::now();
        // The shutdown may cut the session, so only QEMU's exit counts.
        let _ = run_ssh(&mut ssh_command(key, self.port, trust, "poweroff"));
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < POWEROFF_TIMEOUT,
                "guest did not power off within {POWEROFF_TIMEOUT:?}; console:\n{}",
                self.console_tail()
            );
            sleep(Duration::from_millis(50));
        }
        eprintln!("guest powered off in {:.2?}", started.elapsed());
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Which host key an ssh login accepts.
enum Trust {
    /// Any: the brief's plain `StrictHostKeyChecking=no` login.
    Any,
    /// Only this one (`ssh-ed25519 AAAA...`).
    Pinned {
        known_hosts: PathBuf,
        host_key: String,
    },
}

fn ssh_command(key: &Path, port: u16, trust: &Trust, remote: &str) -> Command {
    let mut command = Command::new("ssh");
    command
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"]);
    match trust {
        Trust::Any => {
            command.args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ]);
        }
        Trust::Pinned {
            known_hosts,
            host_key,
        } => {
            fs::write(known_hosts, format!("[127.0.0.1]:{port} {host_key}\n")).unwrap();
            command
                .args(["-o", "StrictHostKeyChecking=yes"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()));
        }
    }
    command.arg("root@127.0.0.1").arg(remote);
    command
}

/// Runs `remote` in the guest and returns its stdout; panics on failure.
fn ssh(key: &Path, port: u16, trust: &Trust, remote: &str) -> String {
    let (ok, stdout, stderr) = run_ssh(&mut ssh_command(key, port, trust, remote));
    assert!(ok, "ssh `{remote}` failed: {stderr}");
    stdout
}

/// Runs ssh with a deadline; returns (success, stdout, stderr).
fn run_ssh(command: &mut Command) -> (bool, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SSH_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    match status {
        Some(status) => (status.success(), stdout, stderr),
        None => (
            false,
            stdout,
            format!("timed out after {SSH_TIMEOUT:?}; {stderr}"),
        ),
    }
}
