//! Choosing the accelerator. `/dev/kvm` existing is not enough: under
//! nested virtualisation it can exist while guests hang. So a canary guest
//! (the default image, no disks) boots under KVM with a hard timeout; KVM is
//! used only if it reaches its ready marker. The verdict is cached per
//! kernel release and QEMU version, so the probe runs once per host setup.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::qemu::Accel;

pub const PROBE_TIMEOUT: Duration = Duration::from_secs(25);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Verdict {
    kernel: String,
    qemu: String,
    accel: Accel,
    reason: String,
}

/// The accelerator to use, from the cache in `cache_file` or by probing
/// with the image's `kernel` and `initramfs`.
pub fn choose(qemu: &Path, kernel: &Path, initramfs: &Path, cache_file: &Path) -> Accel {
    let key = (kernel_release(), qemu_version(qemu));
    if let Some(v) = std::fs::read(cache_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Verdict>(&b).ok())
        .filter(|v| (v.kernel.clone(), v.qemu.clone()) == key)
    {
        return v.accel;
    }
    let (accel, reason) = probe(qemu, kernel, initramfs);
    tracing::info!(accel = accel.name(), %reason, "accelerator probe");
    let verdict = Verdict {
        kernel: key.0,
        qemu: key.1,
        accel,
        reason,
    };
    if let Some(dir) = cache_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(
        cache_file,
        serde_json::to_vec_pretty(&verdict).expect("serialisable"),
    );
    accel
}

fn probe(qemu: &Path, kernel: &Path, initramfs: &Path) -> (Accel, String) {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return (Accel::Tcg, "/dev/kvm is missing or not accessible".into());
    }
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return (Accel::Tcg, format!("no temp dir for the canary: {e}")),
    };
    let serial = dir.path().join("serial.log");
    let mut command = Command::new(qemu);
    command
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-machine",
            "q35,accel=kvm",
        ])
        .args(["-cpu", "host", "-smp", "1", "-m", "128M", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe; the canary must not outlive us.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = command.spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (Accel::Tcg, format!("cannot run {}: {e}", qemu.display())),
    };
    let started = Instant::now();
    let verdict = loop {
        if std::fs::read_to_string(&serial).is_ok_and(|s| s.contains(zennet_images::READY_MARKER)) {
            break (
                Accel::Kvm,
                format!("canary booted in {:?}", started.elapsed()),
            );
        }
        if let Ok(Some(status)) = child.try_wait() {
            break (Accel::Tcg, format!("canary exited under KVM ({status})"));
        }
        if started.elapsed() > PROBE_TIMEOUT {
            break (
                Accel::Tcg,
                format!("canary did not boot under KVM within {PROBE_TIMEOUT:?}"),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    verdict
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn qemu_version(qemu: &Path) -> String {
    Command::new(qemu)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}
