//! Launching QEMU: a q35 guest booted straight into the image's PVH
//! `vmlinux`, confined before it runs.
//!
//! Launch order, all before `exec`: a new session (so the node's death or
//! signals do not reach the VM), join the VM's cgroup, raise RLIMIT_MEMLOCK
//! when guest memory is to be locked, lower priority, drop to an
//! unprivileged uid/gid with no supplementary groups. QEMU then enables its
//! seccomp sandbox. It never sees a path it could not open itself: every
//! file it needs is opened by the node and handed over as a file
//! descriptor — the kernel, the initramfs and the image's own read-only
//! disks as `/proc/self/fd/N` (their SHA-256 checked on those very
//! descriptors first), the VM's disks, the QMP
//! and serial sockets as listening fds, the tap device of the VM's network
//! namespace — so the VM directories can stay private to the node (0700)
//! and the VM's disks owned by the VM's own uid.
//!
//! The console never goes to a file QEMU writes: the serial port is a
//! socket the node reads (QEMU drops output while nobody listens, so a
//! dead node never blocks the guest), QEMU's own stdout and stderr a pipe
//! the node reads, both into the capped log of [`crate::console`].

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cgroup::{Limits, VmCgroup};
use crate::console::{self, CappedLog, SharedLog};
use crate::error::VmError;
use crate::qemu::qmp::Qmp;
use crate::qemu::{Accel, QemuConfig};
use crate::spec::{NetworkSpec, Process, VmSpec};

/// A VM just launched: its process facts, its QMP connection and the
/// tasks that feed its console log.
pub struct Launched {
    pub process: Process,
    pub qmp: Qmp,
    pub console: Feeds,
}

/// Tasks copying a VM's console into its log; they stop with the VM (end
/// of file) or when this is dropped.
#[derive(Default)]
pub struct Feeds(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Feeds {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the VM and returns once QMP answers.
pub async fn launch(
    config: &QemuConfig,
    spec: &VmSpec,
    run_dir: &Path,
) -> Result<Launched, VmError> {
    make_private_dir(run_dir)?;
    let qmp_dir = run_dir.join("qmp");
    make_private_dir(&qmp_dir)?;
    let qmp_socket = qmp_dir.join("qmp.sock");
    let listener = listen(&qmp_socket)?;
    let serial_socket = qmp_dir.join("serial.sock");
    let serial_listener = listen(&serial_socket)?;
    let lan_socket = qmp_dir.join("lan.sock");
    let lan_listener = listen(&lan_socket)?;

    let (uid, gid) = spec
        .run_as
        .map_or((config.uid, config.gid), |r| (r.uid, r.gid));
    let kernel = open_read(&spec.kernel)?;
    let initramfs = open_read(&spec.initramfs)?;
    let image_disks = spec
        .image_disks
        .iter()
        .map(|d| open_read(&d.path))
        .collect::<Result<Vec<File>, VmError>>()?;
    let mut digests = vec![
        (
            &kernel,
            spec.kernel.as_path(),
            spec.kernel_sha256.as_deref(),
        ),
        (
            &initramfs,
            spec.initramfs.as_path(),
            spec.initramfs_sha256.as_deref(),
        ),
    ];
    for (file, disk) in image_disks.iter().zip(&spec.image_disks) {
        digests.push((file, disk.path.as_path(), Some(disk.sha256.as_str())));
    }
    check_digests(&digests).await?;
    let scratch_path = run_dir.join("scratch.qcow2");
    create_scratch(&scratch_path, spec.scratch_gib)?;
    let scratch = open_vm_disk(&scratch_path, (uid, gid))?;
    let persistent = match &spec.persistent {
        Some((path, gib)) => Some(open_persistent(path, *gib, (uid, gid))?),
        None => None,
    };
    let serial_log = run_dir.join("serial.log");
    let log = CappedLog::open(&serial_log, console::LOG_CAP)?.shared();
    let tap = match &spec.network {
        NetworkSpec::UserNat => None,
        network => {
            let network = network.clone();
            Some(
                tokio::task::spawn_blocking(move || crate::net::open_tap(&network))
                    .await
                    .map_err(|e| VmError::Io(std::io::Error::other(e)))??,
            )
        }
    };
    let (out_rx, out_tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| VmError::Io(e.into()))?;

    let limits = Limits::for_vm(spec.cpu_quota.min(spec.cores as f64), spec.mem_mib);
    let cgroup = VmCgroup::create(&spec.id, &limits)?;
    let memlock = memlock_hard_limit(spec.mem_mib).map(|hard| (memlock_bytes(spec.mem_mib), hard));
    let lock_memory = memlock.is_some();
    if !lock_memory {
        tracing::info!(vm = %spec.id, "RLIMIT_MEMLOCK too low to lock guest memory; running without mem-lock");
    }

    let mut fds = Fds::default();
    let passed = PassedFds {
        kernel: fds.pass(&kernel),
        initramfs: fds.pass(&initramfs),
        scratch: fds.pass(&scratch),
        persistent: persistent.as_ref().map(|f| fds.pass(f)),
        image_disks: image_disks.iter().map(|f| fds.pass(f)).collect(),
        qmp: fds.pass(&listener),
        serial: fds.pass(&serial_listener),
        lan: fds.pass(&lan_listener),
        tap: tap.as_ref().map(|t| fds.pass(t)),
    };
    let args = qemu_args(config, spec, &passed, lock_memory);

    let procs_files: Vec<std::ffi::CString> = cgroup
        .procs_files()
        .iter()
        .map(|p| {
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                .expect("no NUL in cgroup paths")
        })
        .collect();
    let nice = config.nice;
    let pass_fds = fds.0.clone();
    let mut command = Command::new(&config.binary);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_tx.try_clone()?))
        .stderr(Stdio::from(out_tx));
    // SAFETY: the closure only makes async-signal-safe system calls
    // (setsid, open/write/close, setrlimit, setpriority, fcntl, setgroups,
    // setgid, setuid, prctl) on data prepared before fork.
    unsafe {
        command.pre_exec(move || confine(&procs_files, &pass_fds, memlock, nice, uid, gid));
    }
    let spawned = command.spawn();
    // The write end lives in QEMU only, so the pipe ends when QEMU does.
    drop(command);
    let child = spawned.map_err(|source| {
        let _ = cgroup.remove();
        VmError::Spawn {
            program: config.binary.display().to_string(),
            hint: "install qemu-system-x86",
            source,
        }
    })?;
    let pid = child.id();
    // The VM outlives this handle; recovery finds it by pid.
    drop(child);
    drop((listener, serial_listener, lan_listener, tap));
    let output = tokio::spawn(console::pump(
        tokio::net::unix::pipe::Receiver::from_owned_fd(out_rx)?,
        log.clone(),
    ));
    let serial = read_serial(&serial_socket, log);

    let qmp = match Qmp::connect(&qmp_socket, Duration::from_secs(15)).await {
        Ok(q) => q,
        Err(e) => {
            // QEMU's last words are in the pipe; let them land.
            let _ = tokio::time::timeout(Duration::from_secs(2), output).await;
            let text = console::read(&serial_log);
            let _ = cgroup.remove();
            return Err(VmError::NoStart {
                vm: spec.id.clone(),
                reason: Box::new(e),
                tail: text.lines().rev().take(5).collect::<Vec<_>>().join(" | "),
            });
        }
    };
    tracing::info!(vm = %spec.id, pid, uid, accel = config.accel.name(), "VM launched");
    Ok(Launched {
        process: Process {
            pid,
            run_dir: run_dir.to_path_buf(),
            control: qmp_socket,
            serial_log,
            serial_socket: Some(serial_socket),
            lan_socket: Some(lan_socket),
        },
        qmp,
        console: Feeds(vec![output, serial]),
    })
}

/// Reconnects the console of a VM launched by an earlier node process
/// (QEMU's stdout pipe died with that process; the serial socket stays).
pub fn reattach_console(process: &Process) -> Feeds {
    let Some(socket) = &process.serial_socket else {
        return Feeds::default();
    };
    match CappedLog::open(&process.serial_log, console::LOG_CAP) {
        Ok(log) => Feeds(vec![read_serial(socket, log.shared())]),
        Err(e) => {
            tracing::warn!(log = %process.serial_log.display(), error = %e, "cannot reopen the console log");
            Feeds::default()
        }
    }
}

/// Connects to QEMU's serial socket and copies the console into `log`.
fn read_serial(socket: &Path, log: SharedLog) -> tokio::task::JoinHandle<()> {
    let socket = socket.to_path_buf();
    tokio::spawn(async move {
        match tokio::net::UnixStream::connect(&socket).await {
            Ok(stream) => console::pump(stream, log).await,
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "cannot read the VM's console")
            }
        }
    })
}

fn listen(path: &Path) -> Result<UnixListener, VmError> {
    let _ = fs::remove_file(path);
    UnixListener::bind(path).map_err(|source| VmError::File {
        action: "create",
        path: path.to_path_buf(),
        source,
    })
}

/// Hashes each opened file (the descriptor QEMU gets, so what was checked
/// is what boots) against the SHA-256 its spec names.
async fn check_digests(files: &[(&File, &Path, Option<&str>)]) -> Result<(), VmError> {
    let mut jobs = Vec::new();
    for (file, path, expected) in files {
        let Some(expected) = expected else { continue };
        let mut file = file.try_clone()?;
        let (path, expected) = (path.to_path_buf(), expected.to_string());
        jobs.push(tokio::task::spawn_blocking(move || {
            let actual = sha256(&mut file).map_err(|source| VmError::File {
                action: "read",
                path: path.clone(),
                source,
            })?;
            file.rewind()?;
            match actual == expected {
                true => Ok(()),
                false => Err(VmError::ImageCorrupt {
                    path,
                    expected,
                    actual,
                }),
            }
        }));
    }
    for job in jobs {
        job.await
            .map_err(|e| VmError::Io(std::io::Error::other(e)))??;
    }
    Ok(())
}

fn sha256(file: &mut File) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Descriptors handed to QEMU, by role.
struct PassedFds {
    kernel: RawFd,
    initramfs: RawFd,
    scratch: RawFd,
    persistent: Option<RawFd>,
    image_disks: Vec<RawFd>,
    qmp: RawFd,
    serial: RawFd,
    /// A listening socket for the private network's frames.
    lan: RawFd,
    /// The tap device in the VM's network namespace (none for user NAT).
    tap: Option<RawFd>,
}

/// The QEMU command line for `spec`.
fn qemu_args(
    config: &QemuConfig,
    spec: &VmSpec,
    fds: &PassedFds,
    lock_memory: bool,
) -> Vec<String> {
    let throttle = config
        .disk_bps
        .map(|bps| format!(",throttling.bps-total={bps}"))
        .unwrap_or_default();
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("zennet-{},process=zennet-{}", spec.id, spec.id),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-machine".into(),
        "q35".into(),
        "-accel".into(),
        match config.accel {
            Accel::Kvm => "kvm".into(),
            // QEMU's TCG code cache defaults to 1 GiB; left so, a busy
            // guest grows past its cgroup's memory limit and is OOM-killed
            // mid-job (the chaos test saw it). Bounded, it fits the overhead.
            Accel::Tcg => format!("tcg,tb-size={}", crate::cgroup::TCG_CODE_CACHE_MIB),
        },
        "-cpu".into(),
        match config.accel {
            Accel::Kvm => "host".into(),
            Accel::Tcg => "max".into(),
        },
        "-smp".into(),
        spec.cores.to_string(),
        "-m".into(),
        format!("{}M", spec.mem_mib),
        "-kernel".into(),
        format!("/proc/self/fd/{}", fds.kernel),
        "-initrd".into(),
        format!("/proc/self/fd/{}", fds.initramfs),
        "-append".into(),
        spec.kernel_args.join(" "),
        "-drive".into(),
        format!(
            "file=/proc/self/fd/{},if=none,id=scratch,format=qcow2,discard=unmap{throttle}",
            fds.scratch
        ),
        "-device".into(),
        "virtio-blk-pci,drive=scratch".into(),
        "-netdev".into(),
        netdev(spec, fds.tap),
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
        // The task's private network: QEMU's stream netdev listens on a
        // socket the node connects to the publisher's switch. Frames pass
        // nowhere on this host; a guest on a node that never connects it
        // has a NIC with no link partner.
        "-netdev".into(),
        format!("stream,id=lan0,server=on,addr.type=fd,addr.str={}", fds.lan),
        "-device".into(),
        format!("virtio-net-pci,netdev=lan0,mac={}", crate::spec::LAN_MAC),
        // Entropy, so the guest's host key generation does not stall.
        "-device".into(),
        "virtio-rng-pci".into(),
        "-chardev".into(),
        format!("socket,id=serial0,fd={},server=on,wait=off", fds.serial),
        "-serial".into(),
        "chardev:serial0".into(),
        "-chardev".into(),
        format!("socket,id=qmp,fd={},server=on,wait=off", fds.qmp),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
    ];
    if let Some(fd) = fds.persistent {
        args.extend([
            "-drive".into(),
            format!("file=/proc/self/fd/{fd},if=none,id=data,format=raw{throttle}"),
            "-device".into(),
            "virtio-blk-pci,drive=data,serial=zennet-data".into(),
        ]);
    }
    // The image's disks: read-only to the guest, shared by every VM of
    // the image, found by serial.
    for (i, (fd, disk)) in fds.image_disks.iter().zip(&spec.image_disks).enumerate() {
        args.extend([
            "-drive".into(),
            format!("file=/proc/self/fd/{fd},if=none,id=image{i},format=raw,read-only=on"),
            "-device".into(),
            format!("virtio-blk-pci,drive=image{i},serial={}", disk.serial),
        ]);
    }
    if lock_memory {
        args.extend(["-overcommit".into(), "mem-lock=on".into()]);
    }
    args
}

/// The guest's NIC backend: the tap QEMU was handed, or user NAT with
/// nothing reachable but the forward to the guest's sshd.
fn netdev(spec: &VmSpec, tap: Option<RawFd>) -> String {
    match (&spec.network, tap) {
        (NetworkSpec::UserNat, _) | (_, None) => format!(
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{}-:22",
            spec.ssh_port
        ),
        (_, Some(fd)) => format!("tap,id=net0,fd={fd}"),
    }
}

/// Whether `pid` is still the QEMU process of `vm_id`.
pub fn is_alive(pid: u32, vm_id: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let needle = format!("zennet-{vm_id},");
            c.split(|b| *b == 0)
                .any(|arg| arg.starts_with(needle.as_bytes()))
        })
        .unwrap_or(false)
}

/// Stops a VM: QMP quit, then SIGKILL after `grace`, then removes its cgroup.
pub async fn shutdown(vm_id: &str, pid: u32, qmp: Option<&Qmp>, grace: Duration) {
    if let Some(q) = qmp {
        let _ = q.quit().await;
    }
    let started = std::time::Instant::now();
    while is_alive(pid, vm_id) && started.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if is_alive(pid, vm_id) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        tracing::warn!(vm = %vm_id, pid, "QEMU did not quit; killed");
    }
    reap(pid).await;
    if let Err(e) = VmCgroup::load(vm_id).remove() {
        tracing::warn!(vm = %vm_id, error = %e, "cannot remove cgroup");
    }
}

/// How the VM's process ended, if it was this process's child and has
/// ended: `Some(true)` for a clean exit (the guest powered off, or QEMU
/// was asked to quit), `Some(false)` for a crash or a kill. Collects it.
pub fn exit_status(pid: u32) -> Option<bool> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    match waitpid(
        nix::unistd::Pid::from_raw(pid as i32),
        Some(WaitPidFlag::WNOHANG),
    ) {
        Ok(WaitStatus::Exited(_, code)) => Some(code == 0),
        Ok(WaitStatus::Signaled(..)) => Some(false),
        _ => None,
    }
}

/// Collects the exit status if the VM was launched by this process (after
/// an agent restart it is not our child, and there is nothing to collect),
/// so no zombie is left behind.
pub async fn reap(pid: u32) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let started = std::time::Instant::now();
    loop {
        match waitpid(
            nix::unistd::Pid::from_raw(pid as i32),
            Some(WaitPidFlag::WNOHANG),
        ) {
            Ok(WaitStatus::StillAlive) if started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return,
        }
    }
}

/// File descriptors to keep open across exec.
#[derive(Default)]
struct Fds(Vec<RawFd>);

impl Fds {
    fn pass(&mut self, f: &impl AsRawFd) -> RawFd {
        let fd = f.as_raw_fd();
        self.0.push(fd);
        fd
    }
}

fn confine(
    procs_files: &[std::ffi::CString],
    pass_fds: &[RawFd],
    memlock: Option<(u64, u64)>,
    nice: i32,
    uid: u32,
    gid: u32,
) -> std::io::Result<()> {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setsid, setuid};
    setsid().map_err(std::io::Error::from)?;
    // Join the cgroup: write our pid to each controller's procs file.
    // No allocation here: the parent is multi-threaded, so the allocator's
    // lock may be held by a thread that does not exist in this child.
    let mut digits = [0u8; 20];
    let pid = format_pid(std::process::id(), &mut digits);
    for f in procs_files {
        // SAFETY: a NUL-terminated path prepared before fork; plain syscalls.
        let fd = unsafe { libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = unsafe { libc::write(fd, pid.as_ptr().cast(), pid.len()) };
        unsafe { libc::close(fd) };
        if written < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if let Some((soft, hard)) = memlock {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK, soft, hard)
            .map_err(std::io::Error::from)?;
    }
    // SAFETY: setpriority has no memory-safety preconditions.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    for &fd in pass_fds {
        // SAFETY: fcntl on an fd we own; clearing FD_CLOEXEC keeps it across exec.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    setgroups(&[]).map_err(std::io::Error::from)?;
    setgid(Gid::from_raw(gid)).map_err(std::io::Error::from)?;
    setuid(Uid::from_raw(uid)).map_err(std::io::Error::from)?;
    Ok(())
}

fn format_pid(pid: u32, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = pid;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

fn make_private_dir(dir: &Path) -> Result<(), VmError> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

fn open_read(path: &Path) -> Result<File, VmError> {
    File::open(path).map_err(|source| VmError::File {
        action: "open",
        path: path.to_path_buf(),
        source,
    })
}

fn create_scratch(path: &Path, gib: u32) -> Result<(), VmError> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(format!("{gib}G"))
        .output()
        .map_err(|source| VmError::Spawn {
            program: "qemu-img".into(),
            hint: "install qemu-utils",
            source,
        })?;
    if !out.status.success() {
        return Err(VmError::ToolFailed {
            program: "qemu-img create".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Opens a disk read-write for the VM's uid: QEMU reopens it through
/// /proc/self/fd, which checks the file's own permissions.
fn open_vm_disk(path: &Path, (uid, gid): (u32, u32)) -> Result<File, VmError> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// The persistent volume: created sparse on first use, kept afterwards.
fn open_persistent(path: &Path, gib: u32, owner: (u32, u32)) -> Result<File, VmError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let size = (gib as u64) << 30;
    if f.metadata()?.len() < size {
        f.set_len(size)?;
    }
    drop(f);
    open_vm_disk(path, owner)
}

/// Locking guest RAM needs RLIMIT_MEMLOCK above it. The child raises its
/// soft limit up to the hard one; raising the hard limit would need
/// CAP_SYS_RESOURCE, which even root lacks in many containers.
fn memlock_hard_limit(mem_mib: u64) -> Option<u64> {
    let need = memlock_bytes(mem_mib);
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .ok()
        .map(|(_, hard)| hard)
        .filter(|hard| *hard >= need)
}

fn memlock_bytes(mem_mib: u64) -> u64 {
    (mem_mib + 64) << 20
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tampered image disk (say, a provider's host that rewrote the
    /// shared root disk) is refused before QEMU starts.
    #[tokio::test]
    async fn a_disk_that_is_not_what_its_manifest_says_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.ext4");
        std::fs::write(&path, b"a tampered root disk").unwrap();
        let file = File::open(&path).unwrap();
        let expected = "0".repeat(64);
        let err = check_digests(&[(&file, path.as_path(), Some(expected.as_str()))])
            .await
            .unwrap_err();
        assert!(matches!(err, VmError::ImageCorrupt { .. }), "{err}");
    }

    #[test]
    fn command_line_confines_and_wires_everything() {
        let spec = VmSpec {
            id: "v1".into(),
            cores: 2,
            cpu_quota: 1.0,
            mem_mib: 512,
            kernel: "/k".into(),
            initramfs: "/i".into(),
            kernel_sha256: None,
            initramfs_sha256: None,
            image_disks: vec![crate::spec::ImageDiskSpec {
                path: "/images/root.ext4".into(),
                sha256: "00".into(),
                serial: "zennet-root".into(),
            }],
            kernel_args: vec!["console=ttyS0".into(), "zennet.authorized_key=QQ==".into()],
            scratch_gib: 1,
            persistent: Some(("/vol".into(), 1)),
            ssh_port: 2200,
            network: NetworkSpec::UserNat,
            run_as: None,
        };
        let config = QemuConfig {
            disk_bps: Some(50_000_000),
            ..QemuConfig::default()
        };
        let fds = PassedFds {
            kernel: 10,
            initramfs: 11,
            scratch: 12,
            persistent: Some(13),
            image_disks: vec![17],
            qmp: 14,
            serial: 15,
            lan: 16,
            tap: None,
        };
        let args = qemu_args(&config, &spec, &fds, true).join(" ");
        for expected in [
            // The image's disk: read-only, found by its serial.
            "-drive file=/proc/self/fd/17,if=none,id=image0,format=raw,read-only=on \
             -device virtio-blk-pci,drive=image0,serial=zennet-root",
            "-nodefaults -no-user-config",
            "-machine q35 -accel tcg,tb-size=64",
            "-smp 2 -m 512M",
            "-kernel /proc/self/fd/10 -initrd /proc/self/fd/11",
            "-append console=ttyS0 zennet.authorized_key=QQ==",
            "file=/proc/self/fd/12,if=none,id=scratch,format=qcow2,discard=unmap,throttling.bps-total=50000000",
            "file=/proc/self/fd/13,if=none,id=data,format=raw,throttling.bps-total=50000000",
            "serial=zennet-data",
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2200-:22",
            "socket,id=qmp,fd=14,server=on,wait=off",
            "socket,id=serial0,fd=15,server=on,wait=off -serial chardev:serial0",
            "stream,id=lan0,server=on,addr.type=fd,addr.str=16 -device virtio-net-pci,netdev=lan0,mac=02:7a:6e:ff:ff:fe",
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-overcommit mem-lock=on",
        ] {
            assert!(args.contains(expected), "missing {expected:?} in {args}");
        }
        let no_lock = qemu_args(&QemuConfig::default(), &spec, &fds, false).join(" ");
        assert!(!no_lock.contains("mem-lock") && !no_lock.contains("throttling"));

        // In a namespace, the guest's NIC is the tap the node opened, and
        // QEMU's user network (with its host-side sockets) is not there.
        let isolated = VmSpec {
            network: NetworkSpec::Isolated {
                netns: "zennet-v1".into(),
            },
            ..spec
        };
        let tap = PassedFds {
            tap: Some(16),
            ..fds
        };
        let args = qemu_args(&config, &isolated, &tap, false).join(" ");
        assert!(args.contains("-netdev tap,id=net0,fd=16"), "{args}");
        assert!(
            !args.contains("user,") && !args.contains("hostfwd"),
            "{args}"
        );
    }
}
