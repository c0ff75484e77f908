//! The publisher's own place on a task's private network, for real: a TAP
//! in the task's namespace, plugged into the switch beside a VM's port (an
//! in-process link speaking QEMU's stream framing, played by the test).
//! A program in the namespace reaches the VM (ARP, then UDP), the VM's
//! answer reaches the program, the namespace routes nowhere else, and it
//! is gone once the publisher leaves. Needs root (CAP_NET_ADMIN), as the
//! publisher's place does.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use zennet_chain::{Address, Hash};
use zennet_publisher::lan::{self, HOST_PLACE, Lan};
use zennet_publisher::lan_host::HostNet;

const VM_PORT: u16 = 4000;
const HOST_PORT: u16 = 5000;

#[tokio::test]
async fn the_publishers_place_reaches_its_vms_and_routes_nowhere_else() {
    let task = Hash([0x5a; 32]);
    let lan = Arc::new(Lan::default());
    let net = HostNet::open(&task).expect("the namespace and TAP (run as root)");
    let netns = net.netns().to_string();
    let serving = tokio::spawn({
        let lan = lan.clone();
        async move { lan.serve_host(task, &net).await }
    });
    let (mut vm, link) = tokio::io::duplex(1 << 16);
    tokio::spawn({
        let lan = lan.clone();
        async move { lan.serve(task, Address([2; 20]), link).await }
    });
    // The first VM of a task is at place 2.
    let (vm_ip, vm_mac) = (lan::address(2), lan::mac(2));
    let (host_ip, host_mac) = (lan::address(HOST_PLACE), lan::mac(HOST_PLACE));

    // A program in the namespace sends to the VM and waits for its answer.
    let program = std::thread::spawn({
        let netns = netns.clone();
        move || {
            enter(&netns);
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, HOST_PORT)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut buf = [0u8; 64];
            for _ in 0..20 {
                sock.send_to(b"hello vm", (vm_ip, VM_PORT)).unwrap();
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    return (buf[..n].to_vec(), from);
                }
            }
            panic!("no answer from the VM");
        }
    });

    // The VM sees the host's ARP request, answers it, then gets the datagram.
    let arp = recv_until(&mut vm, |f| {
        f[12..14] == [0x08, 0x06] && f[38..42] == vm_ip.octets()
    })
    .await;
    assert_eq!(arp[6..12], host_mac, "the host speaks with its own MAC");
    send(&mut vm, &arp_reply(vm_mac, vm_ip, host_mac, host_ip)).await;
    let udp = recv_until(&mut vm, |f| {
        f[12..14] == [0x08, 0x00] && f[23] == 17 && f[30..34] == vm_ip.octets()
    })
    .await;
    assert_eq!(&udp[42..50], b"hello vm");
    assert_eq!(udp[26..30], host_ip.octets(), "from the publisher's place");
    // The VM answers; the host (which learnt the VM's MAC) gets it.
    send(
        &mut vm,
        &udp_frame(
            vm_mac,
            host_mac,
            vm_ip,
            host_ip,
            VM_PORT,
            HOST_PORT,
            b"hello host",
        ),
    )
    .await;
    let (answer, from) = tokio::task::spawn_blocking(move || program.join().unwrap())
        .await
        .unwrap();
    assert_eq!(answer, b"hello host");
    assert_eq!(from, (vm_ip, VM_PORT).into());

    // Nothing else: no default route, no forwarding, one network.
    let routes = ip(&["-n", &netns, "route", "show"]);
    assert!(!routes.contains("default"), "{routes}");
    assert_eq!(routes.lines().count(), 1, "{routes}");
    let forward = std::thread::spawn({
        let netns = netns.clone();
        move || {
            enter(&netns);
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
        }
    })
    .join()
    .unwrap();
    assert_eq!(forward.trim(), "0", "the namespace forwards nothing");

    // Leaving the network takes the namespace (and the TAP) away.
    serving.abort();
    let _ = serving.await;
    assert!(
        !std::path::Path::new("/run/netns").join(&netns).exists(),
        "namespace {netns} left behind"
    );
}

/// Enters the network namespace `netns` on this thread.
fn enter(netns: &str) {
    let ns = std::fs::File::open(std::path::Path::new("/run/netns").join(netns)).unwrap();
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn send(link: &mut DuplexStream, frame: &[u8]) {
    link.write_all(&(frame.len() as u32).to_be_bytes())
        .await
        .unwrap();
    link.write_all(frame).await.unwrap();
}

/// Reads frames until one matches (others, like IPv6 chatter, are skipped).
async fn recv_until(link: &mut DuplexStream, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let mut len = [0u8; 4];
            link.read_exact(&mut len).await.unwrap();
            let mut frame = vec![0; u32::from_be_bytes(len) as usize];
            link.read_exact(&mut frame).await.unwrap();
            if frame.len() >= 42 && wanted(&frame) {
                return frame;
            }
        }
    })
    .await
    .expect("the frame within 20 s")
}

fn arp_reply(mac: [u8; 6], ip: Ipv4Addr, to_mac: [u8; 6], to_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&to_ip.octets());
    f
}

#[allow(clippy::too_many_arguments)]
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    body: &[u8],
) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + 8 + body.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    // UDP over IPv4 may leave its checksum out (zero).
    ip.extend_from_slice(&sport.to_be_bytes());
    ip.extend_from_slice(&dport.to_be_bytes());
    ip.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(body);
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
