//! The guest network: one Linux network namespace per VM, holding the
//! VM's tap device (its descriptor is handed to the hypervisor, which
//! never opens a path) and nothing else unless the operator allows the
//! internet.
//!
//! # Why a namespace and a tap, not QEMU's user network
//!
//! QEMU's user network (slirp) runs the guest's TCP/IP inside the QEMU
//! process and connects out from the host's own network namespace: the
//! guest reaches the host's loopback (the node's API, every local
//! service), the LAN and link-local metadata, and its traffic shows in no
//! kernel counter. `restrict=on` stops all of that, but then a guest with
//! internet needs a separate egress path anyway, and the host still
//! listens on a loopback port for it. A namespace per VM puts the guest
//! behind the kernel's own mechanisms instead: routing (there is no route
//! out in [`GuestNetwork::Isolated`] mode), nftables (what may pass),
//! `tc` (how fast) and the interface counters (how much), all per VM, all
//! gone with the namespace.
//!
//! # Layout of one VM
//!
//! * Namespace `zennet-<tag>` ([`names`]): `lo`, `tap0` at [`GATEWAY`]/24
//!   (the guest is [`GUEST_IP`], the image's default), IPv6 off, the
//!   ruleset of [`rules::vm_ruleset`]: input takes only replies to the
//!   node's own connections, so nothing answers the guest at all.
//! * The node reaches the guest's sshd with sockets made inside the
//!   namespace ([`connect`]), so nothing on the host listens for the guest.
//! * With [`GuestNetwork::Internet`]: a veth pair, `zn<tag>` on the host
//!   and `eth0` in the namespace, on a /30 out of the operator's pool
//!   ([`Subnet`]); the namespace forwards the guest's IPv4 to public
//!   addresses only and masquerades it; the host's table
//!   ([`rules::host_ruleset`]) drops anything from a VM uplink addressed
//!   to the host itself or to another VM and masquerades the rest behind
//!   the host. `tc` shapes the uplink's egress (upload) and the tap's
//!   egress (download, the node's own connections exempt) to the
//!   bandwidth the task bought; the host end's counters are the bytes
//!   each way ([`counters`]).
//!
//! Every change runs under a host-wide lock (several nodes may share a
//! host), with `ip`, `nft` and `tc` (iproute2, nftables: in
//! `images/HOST-PACKAGES`), each applied as one batch.

pub mod rules;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::spec::{GATEWAY, GUEST_IP, NetworkSpec};
use rules::{HOST_IF_PREFIX, TAP, UPLINK};

/// The operator's network policy for guests (`[provider] guest_network`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestNetwork {
    /// The guest reaches nothing; the node reaches its sshd.
    #[default]
    Isolated,
    /// The guest reaches public addresses only, shaped and metered.
    Internet,
}

impl fmt::Display for GuestNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuestNetwork::Isolated => "isolated",
            GuestNetwork::Internet => "internet",
        })
    }
}

/// How the runtime gives VMs their network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPolicy {
    pub mode: GuestNetwork,
    /// Where VM uplinks take their /30s from (internet mode).
    pub pool: Subnet,
    /// The resolver the guest is told about (internet mode); it must be a
    /// public address, since the guest reaches nothing else.
    pub dns: Ipv4Addr,
    /// Bandwidth, each way, of a VM whose task bought none.
    pub bandwidth_mbps: u32,
}

impl Default for NetPolicy {
    fn default() -> NetPolicy {
        NetPolicy {
            mode: GuestNetwork::Isolated,
            pool: Subnet {
                base: Ipv4Addr::new(10, 213, 0, 0),
                prefix: 16,
            },
            dns: Ipv4Addr::new(1, 1, 1, 1),
            bandwidth_mbps: 100,
        }
    }
}

/// An IPv4 prefix such as `10.213.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// How many VM uplinks (/30s) fit.
    pub fn slots(&self) -> u32 {
        if self.prefix > 30 {
            0
        } else {
            1u32 << (30 - self.prefix)
        }
    }

    /// The (host, namespace) addresses of uplink `slot`.
    pub fn pair(&self, slot: u32) -> (Ipv4Addr, Ipv4Addr) {
        let start = u32::from(self.base) + slot * 4;
        (Ipv4Addr::from(start + 1), Ipv4Addr::from(start + 2))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        u32::from(ip) & mask == u32::from(self.base) & mask
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let bad = || format!("{s:?} is not an IPv4 prefix such as 10.213.0.0/16");
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        if prefix > 30 {
            return Err(format!(
                "{s:?} is too small: VM uplinks need at least a /30"
            ));
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        if u32::from(base) & !mask != 0 {
            return Err(format!(
                "{s:?} has host bits set; write {}/{prefix}",
                Ipv4Addr::from(u32::from(base) & mask)
            ));
        }
        Ok(Subnet { base, prefix })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subnet, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Bytes a VM's guest sent and received over its uplink, since the
/// uplink was created (kernel counters of the host end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetBytes {
    pub from_guest: u64,
    pub to_guest: u64,
}

/// Prefix of every VM namespace's name.
pub const NETNS_PREFIX: &str = "zennet-";

/// The (namespace, host interface) names of VM `id`: a short tag, since
/// interface names have at most 15 bytes.
pub fn names(id: &str) -> (String, String) {
    let tag = if id.len() <= 12 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        id.to_string()
    } else {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(id.as_bytes()))[..12].to_string()
    };
    (
        format!("{NETNS_PREFIX}{tag}"),
        format!("{HOST_IF_PREFIX}{tag}"),
    )
}

/// The network spec for a new VM `id` under `policy`; for internet, takes
/// a free /30 of the pool (free on this host, whichever node holds the
/// others).
pub fn plan(
    policy: &NetPolicy,
    id: &str,
    mode: GuestNetwork,
    bandwidth_mbps: u32,
) -> Result<NetworkSpec, VmError> {
    let (netns, host_if) = names(id);
    match mode {
        GuestNetwork::Isolated => Ok(NetworkSpec::Isolated { netns }),
        GuestNetwork::Internet => {
            let _lock = HostLock::take()?;
            let used = host_addresses()?;
            let slot = (0..policy.pool.slots())
                .find(|&s| !used.contains(&policy.pool.pair(s).0))
                .ok_or(VmError::NoUplink {
                    pool: policy.pool.to_string(),
                })?;
            let (host_ip, ns_ip) = policy.pool.pair(slot);
            Ok(NetworkSpec::Internet {
                netns,
                host_if,
                host_ip,
                ns_ip,
                bandwidth_mbps: bandwidth_mbps.max(1),
            })
        }
    }
}

/// Builds the VM's namespace and, for internet, its uplink, the host's
/// table and the upload shaping. Leftovers of an earlier launch are
/// removed first, so this is also how a relaunch starts.
pub fn setup(spec: &NetworkSpec, pool: &Subnet) -> Result<(), VmError> {
    let Some(netns) = spec.netns() else {
        return Ok(());
    };
    let _lock = HostLock::take()?;
    remove(spec);
    run("ip", &["netns", "add", netns], None, None)?;
    let internet = matches!(spec, NetworkSpec::Internet { .. });
    let ns = open_netns(netns)?;
    in_netns(&ns, move || {
        // IPv6 off before any device has an address; IPv4 forwarding
        // only where the guest may go somewhere.
        for (key, value) in [
            ("net/ipv6/conf/all/disable_ipv6", "1"),
            ("net/ipv6/conf/default/disable_ipv6", "1"),
            ("net/ipv4/ip_forward", if internet { "1" } else { "0" }),
        ] {
            write_sysctl(key, value)?;
        }
        Ok(())
    })?;
    run(
        "nft",
        &["-f", "-"],
        Some(&rules::vm_ruleset(internet)),
        Some(&ns),
    )?;
    let mut inside = vec!["link set lo up".to_string()];
    if let NetworkSpec::Internet {
        host_if,
        host_ip,
        ns_ip,
        bandwidth_mbps,
        ..
    } = spec
    {
        run(
            "ip",
            &["-batch", "-"],
            Some(&format!(
                "link add {host_if} type veth peer name {UPLINK} netns {netns}\n\
                 addr add {host_ip}/30 dev {host_if}\n\
                 link set {host_if} up\n"
            )),
            None,
        )?;
        inside.push(format!("addr add {ns_ip}/30 dev {UPLINK}"));
        inside.push(format!("link set {UPLINK} up"));
        inside.push(format!("route add default via {host_ip}"));
        run(
            "ip",
            &["-n", netns, "-batch", "-"],
            Some(&(inside.join("\n") + "\n")),
            None,
        )?;
        run(
            "tc",
            &["-n", netns, "-batch", "-"],
            Some(&rules::upload_shaping(*bandwidth_mbps)),
            None,
        )?;
        ensure_host_table(pool)?;
    } else {
        run(
            "ip",
            &["-n", netns, "-batch", "-"],
            Some(&(inside.join("\n") + "\n")),
            None,
        )?;
    }
    tracing::debug!(%netns, internet, "guest network set up");
    Ok(())
}

/// Creates the VM's tap in its namespace and returns its descriptor for
/// the hypervisor: a non-persistent tap, so it goes when the hypervisor
/// (the last holder) exits. Addresses it and shapes the guest's download.
pub fn open_tap(spec: &NetworkSpec) -> Result<OwnedFd, VmError> {
    let netns = spec.netns().ok_or_else(|| VmError::ToolFailed {
        program: "open_tap".into(),
        stderr: "this VM has no network namespace".into(),
    })?;
    let ns = open_netns(netns)?;
    let fd = in_netns(&ns, create_tap)?;
    run(
        "ip",
        &["-n", netns, "-batch", "-"],
        Some(&format!(
            "addr add {GATEWAY}/24 dev {TAP}\nlink set {TAP} up\n"
        )),
        None,
    )?;
    if let NetworkSpec::Internet { bandwidth_mbps, .. } = spec {
        run(
            "tc",
            &["-n", netns, "-batch", "-"],
            Some(&rules::download_shaping(*bandwidth_mbps)),
            None,
        )?;
    }
    Ok(fd)
}

/// Removes what [`setup`] made for the VM (the hypervisor must be gone);
/// when no VM uplink is left on the host, the host's table too.
pub fn teardown(spec: &NetworkSpec) {
    if spec.netns().is_none() {
        return;
    }
    let _lock = HostLock::take();
    remove(spec);
    prune_host_table();
}

/// Whether the namespace `netns` exists.
pub fn exists(netns: &str) -> bool {
    netns_path(netns).exists()
}

/// VM namespaces present on this host (of any node).
pub fn namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(NETNS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// A TCP connection to the guest's `port`, made from inside its
/// namespace (the socket stays there; the thread that made it is gone).
pub fn connect(netns: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let ns = File::open(netns_path(netns))?;
    let addr = SocketAddr::V4(SocketAddrV4::new(GUEST_IP, port));
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            TcpStream::connect_timeout(&addr, timeout)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("connect thread panicked")))
    })
}

/// The uplink's byte counters (zero without an uplink, or once it is gone).
pub fn counters(spec: &NetworkSpec) -> NetBytes {
    let NetworkSpec::Internet { host_if, .. } = spec else {
        return NetBytes::default();
    };
    let read = |name: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{host_if}/statistics/{name}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    // The host end receives what the guest sends.
    NetBytes {
        from_guest: read("rx_bytes"),
        to_guest: read("tx_bytes"),
    }
}

/// Where the namespace `netns` is pinned (what `ip netns` uses).
pub fn netns_path(netns: &str) -> PathBuf {
    Path::new("/run/netns").join(netns)
}

fn remove(spec: &NetworkSpec) {
    if let Some(netns) = spec.netns()
        && exists(netns)
        && let Err(e) = run("ip", &["netns", "del", netns], None, None)
    {
        tracing::warn!(%netns, error = %e, "cannot remove the VM's network namespace");
    }

    if let NetworkSpec::Internet { host_if, .. } = spec
        && Path::new("/sys/class/net").join(host_if).exists()
    {
        // Namespace cleanup is asynchronous in the kernel; the host end
        // goes now.
        let _ = run("ip", &["link", "del", host_if], None, None);
    }
}

/// Marks that a node turned the host's IPv4 forwarding on (so the last
/// one out turns it off again). In /run: gone on reboot, as the setting.
const FORWARDING_MARK: &str = "/run/zennet/ip_forward";

fn ensure_host_table(pool: &Subnet) -> Result<(), VmError> {
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    if !forwarding {
        write_sysctl("net/ipv4/ip_forward", "1")?;
        std::fs::write(FORWARDING_MARK, b"1\n")?;
        tracing::info!(
            "IPv4 forwarding turned on for VM uplinks (other forwarded traffic is dropped)"
        );
    }
    let guard = Path::new(FORWARDING_MARK).exists();
    run(
        "nft",
        &["-f", "-"],
        Some(&rules::host_ruleset(pool, guard)),
        None,
    )?;
    Ok(())
}

/// Deletes the host's table when no VM uplink is left on this host.
fn prune_host_table() {
    let uplinks = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with(HOST_IF_PREFIX))
        })
        .unwrap_or(false);
    if uplinks {
        return;
    }
    let script = "table inet zennet {}\ndelete table inet zennet\n\
                  table ip zennet_nat {}\ndelete table ip zennet_nat\n";
    if let Err(e) = run("nft", &["-f", "-"], Some(script), None) {
        tracing::debug!(error = %e, "no host table to remove");
    }
    if std::fs::remove_file(FORWARDING_MARK).is_ok() {
        let _ = write_sysctl("net/ipv4/ip_forward", "0");
        tracing::info!("IPv4 forwarding turned off again (no VM uplink left)");
    }
}

/// IPv4 addresses configured on the host's interfaces.
fn host_addresses() -> Result<Vec<Ipv4Addr>, VmError> {
    let out = run("ip", &["-4", "-o", "addr", "show"], None, None)?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

/// Held while the host's network configuration changes: nodes sharing a
/// host allocate uplinks and edit the host's table one at a time.
struct HostLock(#[expect(dead_code, reason = "held for its lock")] File);

impl HostLock {
    fn take() -> Result<HostLock, VmError> {
        let dir = Path::new("/run/zennet");
        std::fs::create_dir_all(dir)?;
        let path = dir.join("net.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| VmError::File {
                action: "open",
                path: path.clone(),
                source,
            })?;
        file.lock().map_err(|source| VmError::File {
            action: "lock",
            path,
            source,
        })?;
        Ok(HostLock(file))
    }
}

fn open_netns(netns: &str) -> Result<File, VmError> {
    let path = netns_path(netns);
    File::open(&path).map_err(|source| VmError::File {
        action: "open",
        path,
        source,
    })
}

/// Runs `f` on a thread inside the namespace `ns`.
fn in_netns<T: Send>(
    ns: &File,
    f: impl FnOnce() -> Result<T, VmError> + Send,
) -> Result<T, VmError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                VmError::ToolFailed {
                    program: "setns(CLONE_NEWNET)".into(),
                    stderr: e.to_string(),
                }
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(VmError::ToolFailed {
                program: "namespace thread".into(),
                stderr: "panicked".into(),
            })
        })
    })
}

/// Writes a sysctl of the calling thread's network namespace
/// (`/proc/sys/net` follows the opener's namespace).
fn write_sysctl(key: &str, value: &str) -> Result<(), VmError> {
    let path = Path::new("/proc/sys").join(key);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| VmError::File {
            action: "write",
            path,
            source,
        })
}

/// `/dev/net/tun` opened and attached to a new tap named [`TAP`] in the
/// calling thread's namespace, with virtio-net headers (so the guest's
/// offloads pass through).
fn create_tap() -> Result<OwnedFd, VmError> {
    let path = Path::new("/dev/net/tun");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| VmError::File {
            action: "open",
            path: path.to_path_buf(),
            source,
        })?;
    // SAFETY: ifreq is plain data; zeroed is its valid empty value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(TAP.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq we own, on a descriptor we own.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(VmError::File {
            action: "create the tap device with",
            path: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(OwnedFd::from(file))
}

/// Runs a host tool to completion; `stdin` is fed to it, `netns` (an open
/// namespace file) is entered before exec. Returns its stdout.
fn run(
    program: &'static str,
    args: &[&str],
    stdin: Option<&str>,
    netns: Option<&File>,
) -> Result<String, VmError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ns) = netns {
        let fd = ns.as_raw_fd();
        // SAFETY: setns is a plain system call on a descriptor opened
        // before fork; nothing is allocated in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let hint = match program {
        "nft" => "install nftables",
        _ => "install iproute2",
    };
    let spawn = |source| VmError::Spawn {
        program: program.into(),
        hint,
        source,
    };
    let mut child = cmd.spawn().map_err(spawn)?;
    if let Some(text) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(VmError::ToolFailed {
            program: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let mut stdout = String::new();
    out.stdout.as_slice().read_to_string(&mut stdout).ok();
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_hand_out_disjoint_pairs() {
        let pool: Subnet = "10.213.0.0/16".parse().unwrap();
        assert_eq!(pool.slots(), 16384);
        assert_eq!(
            pool.pair(0),
            (Ipv4Addr::new(10, 213, 0, 1), Ipv4Addr::new(10, 213, 0, 2))
        );
        assert_eq!(pool.pair(1).0, Ipv4Addr::new(10, 213, 0, 5));
        assert!(pool.contains(Ipv4Addr::new(10, 213, 255, 254)));
        assert!(!pool.contains(Ipv4Addr::new(10, 214, 0, 1)));
        assert_eq!(pool.to_string(), "10.213.0.0/16");
        for bad in ["10.213.0.1/16", "10.213.0.0", "10.213.0.0/31", "x/8"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_fit_interface_limits() {
        let (ns, host) = names("0123456789ab");
        assert_eq!(
            (ns.as_str(), host.as_str()),
            ("zennet-0123456789ab", "zn0123456789ab")
        );
        let (ns, host) = names("t-a-very-long-test-vm-id");
        assert!(host.len() <= 15 && ns.starts_with(NETNS_PREFIX));
        assert_ne!(names("t-a").0, names("t-b").0);
    }
}
