//! The publisher's own place on a task's private network (`.1`): a TAP
//! device in a network namespace of the task's own, plugged into the
//! switch ([`crate::lan`]) as one more port.
//!
//! Programs the publisher runs for the task (a Spark master and driver, a
//! Dask scheduler and client) run in that namespace (`ip netns exec`), so
//! they reach the task's VMs at their private addresses and the VMs reach
//! them at [`crate::lan::address`]`(`[`crate::lan::HOST_PLACE`]`)` — and
//! nothing else: the namespace has no route to the publisher's other
//! networks, so a VM cannot reach the publisher's host through it. Each
//! task's namespace is its own, so every task can use the same subnet.
//!
//! Making the namespace and the device needs CAP_NET_ADMIN (a node run as
//! root, as `zennet devnet` and the systemd unit do). The TAP is opened
//! from a thread that entered the namespace (a namespace is per thread),
//! then handed back: the descriptor stays bound to its device. iproute2's
//! `ip` does the rest, as the provider's guest network does.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use tokio::io::unix::AsyncFd;
use zennet_chain::Hash;

use crate::lan::{LanError, MAX_FRAME};

/// The TAP's name inside its namespace.
const DEVICE: &str = "zlan0";

/// A task's namespace and the TAP in it. Deleting the namespace (on drop)
/// takes the device with it.
pub struct HostNet {
    netns: String,
    tap: AsyncFd<File>,
}

impl HostNet {
    /// Makes `task`'s namespace (replacing one a crashed node left) with a
    /// TAP at the publisher's place, up and addressed.
    pub fn open(task: &Hash) -> Result<HostNet, LanError> {
        // A name per opening: an earlier one being dropped (its future
        // aborted, its namespace deleted on some runtime thread later)
        // never deletes this one. What a crashed node left goes first.
        let prefix = format!("{}-", netns_name(task));
        for stale in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = stale.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
        let netns = format!("{prefix}{}", next_opening());
        ip(&["netns", "add", &netns])?;
        // From here on, dropping `net` deletes the namespace again.
        let fd = std::thread::scope(|s| s.spawn(|| open_tap_in(&netns)).join())
            .map_err(|_| LanError::Io(io::Error::other("the TAP-opening thread panicked")))?;
        let fd = match fd {
            Ok(fd) => fd,
            Err(e) => {
                let _ = ip(&["netns", "del", &netns]);
                return Err(e);
            }
        };
        // SAFETY: the File owns the descriptor and the AsyncFd owns the
        // File, so the descriptor stays open and the same while registered.
        let tap = unsafe { AsyncFd::register(File::from(fd)) }.map_err(|e| e.into_parts().1)?;
        let net = HostNet { netns, tap };
        let mac = crate::lan::mac_text(&crate::lan::mac(crate::lan::HOST_PLACE));
        let addr = format!("{}/24", crate::lan::address(crate::lan::HOST_PLACE));
        let n = net.netns.as_str();
        ip(&["-n", n, "link", "set", DEVICE, "address", &mac])?;
        ip(&["-n", n, "addr", "add", &addr, "dev", DEVICE])?;
        ip(&["-n", n, "link", "set", DEVICE, "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        tracing::info!(%task, netns = n, address = %addr, "private network: the publisher's place is up");
        Ok(net)
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The next frame the host sent out of the TAP.
    pub async fn recv(&self) -> Result<Vec<u8>, LanError> {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let mut ready = self.tap.readable().await?;
            match ready.try_io(|fd| fd.get_ref().read(&mut buf)) {
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Hands one frame to the host; a frame the device refuses (say, a
    /// jumbo frame above its MTU) is dropped, as a real NIC would.
    pub async fn send(&self, frame: &[u8]) -> Result<(), LanError> {
        loop {
            let mut ready = self.tap.writable().await?;
            match ready.try_io(|fd| fd.get_ref().write(frame)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }
}

impl Drop for HostNet {
    fn drop(&mut self) {
        // A later opening for the same task may have deleted it already.
        if !std::path::Path::new("/run/netns")
            .join(&self.netns)
            .exists()
        {
            return;
        }
        if let Err(e) = ip(&["netns", "del", &self.netns]) {
            tracing::warn!(netns = %self.netns, error = %e, "private network: namespace left behind");
        }
    }
}

/// The start of `task`'s namespaces' names (then `-N`, one per opening):
/// short enough for any tool, unique enough per host.
pub fn netns_name(task: &Hash) -> String {
    format!("zn-lan-{}", crate::view::app_id(task))
}

fn next_opening() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Runs `ip ARGS`; its stderr is the error.
fn ip(args: &[&str]) -> Result<(), LanError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| LanError::HostCommand {
            command: format!("ip {}", args.join(" ")),
            reason: format!("cannot run ip (install iproute2): {e}"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        return Err(LanError::NeedsNetAdmin);
    }
    Err(LanError::HostCommand {
        command: format!("ip {}", args.join(" ")),
        reason: stderr,
    })
}

/// On this (scoped, short-lived) thread: enter `netns`, open a TAP there.
fn open_tap_in(netns: &str) -> Result<OwnedFd, LanError> {
    let ns = File::open(std::path::Path::new("/run/netns").join(netns))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| match e {
        nix::errno::Errno::EPERM => LanError::NeedsNetAdmin,
        e => LanError::Io(e.into()),
    })?;
    let path = CString::new("/dev/net/tun").expect("no NUL");
    // SAFETY: a plain open(2) of a NUL-terminated path.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: `raw` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(DEVICE.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and fills in) one ifreq we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EPERM) {
            LanError::NeedsNetAdmin
        } else {
            e.into()
        });
    }
    Ok(fd)
}
