//! What the QEMU tests of this crate share: the image cache, a guest
//! launched straight with `qemu-system-x86_64` (TCG), and logins with the
//! stock OpenSSH client. The VM runtime lives in another crate; these tests
//! launch QEMU themselves so they show what the image needs, nothing more.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use zennet_images::{HOST_KEY_MARKER, Image, READY_MARKER};

pub const SSH_TIMEOUT: Duration = Duration::from_secs(60);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);

/// Where images are built and kept between runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ZENNET_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/zennet-images-test"))
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "zennet_images=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn require_tools(tools: &[&str]) {
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

/// A fresh ed25519 key pair in `dir`: the private key's path and the
/// public key line.
pub fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e@zennet", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success(), "ssh-keygen failed");
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_owned())
}

/// `-drive`/`-device` arguments for a raw virtio disk.
pub fn drive(file: &Path, id: &str, serial: Option<&str>) -> Vec<String> {
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

/// The guest's size and what else it gets besides the image's kernel and
/// initramfs.
pub struct Spec<'a> {
    pub memory_mib: u32,
    pub cpus: u32,
    /// Extra QEMU arguments, in groups.
    pub extra: &'a [Vec<String>],
    /// Descriptors QEMU inherits under their own numbers (for
    /// `file=/proc/self/fd/N`).
    pub pass_fds: &'a [RawFd],
}

/// A QEMU guest, killed if the test ends before it powers off.
pub struct Vm {
    child: Child,
    console: PathBuf,
    pub port: u16,
    launched: Instant,
}

impl Vm {
    pub fn launch(image: &Image, dir: &Path, name: &str, args: &[String], spec: &Spec) -> Self {
        let console = dir.join(format!("{name}-console.log"));
        let port = free_port();
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-M", "q35", "-accel", "tcg"])
            .args(["-m", &spec.memory_mib.to_string()])
            .args(["-smp", &spec.cpus.to_string()])
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
        for piece in spec.extra {
            command.args(piece);
        }
        let pass_fds = spec.pass_fds.to_vec();
        // SAFETY: between fork and exec only fcntl runs, which is
        // async-signal-safe, on descriptors this process owns.
        unsafe {
            command.pre_exec(move || {
                for &fd in &pass_fds {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
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

    pub fn console_text(&self) -> String {
        fs::read(&self.console)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    pub fn console_tail(&self) -> String {
        let text = self.console_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Time from launch to the ready marker, or a panic with the console.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
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
                self.launched.elapsed() < timeout,
                "no {READY_MARKER} within {timeout:?}; console:\n{}",
                self.console_tail()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// The host key the guest printed (`ssh-ed25519 AAAA...`, no comment).
    pub fn host_key(&self) -> String {
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
    pub fn power_off(&mut self, key: &Path, trust: &Trust) {
        let started = Instant::now();
        // The shutdown may cut the session, so only QEMU's exit counts.
        let _ = run_ssh(
            &mut ssh_command(key, self.port, trust, "poweroff"),
            SSH_TIMEOUT,
        );
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Which host key an ssh login accepts.
pub enum Trust {
    /// Any: the brief's plain `StrictHostKeyChecking=no` login.
    Any,
    /// Only this one (`ssh-ed25519 AAAA...`).
    Pinned {
        known_hosts: PathBuf,
        host_key: String,
    },
}

pub fn ssh_command(key: &Path, port: u16, trust: &Trust, remote: &str) -> Command {
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
pub fn ssh(key: &Path, port: u16, trust: &Trust, remote: &str) -> String {
    ssh_within(key, port, trust, remote, SSH_TIMEOUT)
}

/// [`ssh`] with its own deadline, for slow guest commands.
pub fn ssh_within(key: &Path, port: u16, trust: &Trust, remote: &str, timeout: Duration) -> String {
    let (ok, stdout, stderr) = run_ssh(&mut ssh_command(key, port, trust, remote), timeout);
    assert!(ok, "ssh `{remote}` failed: {stderr}{stdout}");
    stdout
}

/// Runs ssh with a deadline; returns (success, stdout, stderr).
pub fn run_ssh(command: &mut Command, timeout: Duration) -> (bool, String, String) {
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
        if started.elapsed() > timeout {
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
            format!("timed out after {timeout:?}; {stderr}"),
        ),
    }
}
