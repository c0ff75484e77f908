//! The private network between a task's VMs: an Ethernet switch in the
//! publisher, one port per VM.
//!
//! Each VM has a second NIC (QEMU's stream netdev, booting with
//! [`zennet_proto::LAN_BOOT_MAC`]); its node carries that NIC's frames over the SSH
//! connection it already holds to us (the `zennet-lan` subsystem, after a
//! 32-byte task id), so the network needs no port on any host, no
//! N² forwards, and its traffic is metered like the tunnel's. Only VMs of
//! one task share a segment; the provider's host and other tenants are
//! never on it.
//!
//! The publisher assigns the addresses: the VM at place `n` of its task
//! is [`address`]`(n)` on `10.88.0.0/24` with MAC [`mac`]`(n)`, set in the
//! guest over ssh ([`guest_setup`]). The switch does not learn: it knows
//! each port's MAC, drops every frame whose source is not its port's own
//! (a guest, or the node carrying it, cannot pose as another VM to draw its
//! traffic), sends unicast only to the port owning the destination and
//! floods broadcast and multicast to the others. Frames are size-checked;
//! each port's queue is bounded and a full one drops frames, as a real
//! switch does, so one slow VM never holds the others.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use zennet_chain::{Address, Hash};

/// The largest frame a port may send (a jumbo frame); a longer length
/// prefix is not a frame and costs the port its link.
pub const MAX_FRAME: usize = 9216;
/// An Ethernet header: destination, source, type.
const MIN_FRAME: usize = 14;
/// Frames queued towards one port before the switch drops them.
const QUEUE: usize = 256;
/// The publisher's own place on every task's network (see
/// [`crate::lan_host`]).
pub const HOST_PLACE: u8 = 1;
/// Places on a segment: `.2` to `.254` (`.1` is the publisher's).
const FIRST_PLACE: u8 = 2;
const LAST_PLACE: u8 = 254;

/// The VM at `place`'s address on its task's network.
pub fn address(place: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 0, place)
}

/// The VM at `place`'s MAC (locally administered, unicast).
pub fn mac(place: u8) -> [u8; 6] {
    [0x02, 0x7a, 0x6e, 0x88, 0x00, place]
}

/// The guest shell command that gives the VM's private NIC (found by the
/// MAC it boots with, or the one it was given before) its place.
pub fn guest_setup(place: u8) -> String {
    let m = mac_text(&mac(place));
    let boot = zennet_proto::LAN_BOOT_MAC;
    format!(
        "dev=; for i in /sys/class/net/*; do case \"$(cat $i/address)\" in {boot}|{m}) dev=${{i##*/}};; esac; done; \
         [ -n \"$dev\" ] || {{ echo 'no private network NIC' >&2; exit 1; }}; \
         ip link set \"$dev\" down && ip link set \"$dev\" address {m} && ip addr flush dev \"$dev\" && \
         ip addr add {addr}/24 dev \"$dev\" && ip link set \"$dev\" up && echo \"$dev\"",
        addr = address(place),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error("task {task} has no room for another VM on its private network")]
    Full { task: Hash },
    #[error("a private-network frame of {0} bytes (at most {MAX_FRAME}, at least {MIN_FRAME})")]
    BadLength(usize),
    #[error("private-network link: {0}")]
    Io(#[from] std::io::Error),
    #[error("the publisher's place on a private network needs CAP_NET_ADMIN: run the node as root")]
    NeedsNetAdmin,
    #[error("`{command}` failed: {reason}")]
    HostCommand { command: String, reason: String },
}

/// What the switch does with one frame from a port.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// To these places.
    To(Vec<u8>),
    /// Nowhere, and why.
    Drop(&'static str),
}

/// Every task's segment.
#[derive(Default)]
pub struct Lan {
    segments: Mutex<HashMap<Hash, Segment>>,
}

#[derive(Default)]
struct Segment {
    /// Each node's place, kept while the publisher runs (a VM that
    /// reconnects keeps its address).
    places: HashMap<Address, u8>,
    /// Connected ports by place: where frames to it are queued, and which
    /// connection that is (a newer one replaces it).
    ports: HashMap<u8, (u64, mpsc::Sender<Vec<u8>>)>,
}

impl Lan {
    /// The place of `node`'s VM on `task`'s network, assigned on first ask.
    pub fn place(&self, task: Hash, node: Address) -> Result<u8, LanError> {
        let mut segments = self.lock();
        let seg = segments.entry(task).or_default();
        if let Some(p) = seg.places.get(&node) {
            return Ok(*p);
        }
        let taken: std::collections::HashSet<u8> = seg.places.values().copied().collect();
        let place = (FIRST_PLACE..=LAST_PLACE)
            .find(|p| !taken.contains(p))
            .ok_or(LanError::Full { task })?;
        seg.places.insert(node, place);
        Ok(place)
    }

    /// The place `node`'s VM has on `task`'s network, if any yet.
    pub fn assigned(&self, task: &Hash, node: &Address) -> Option<u8> {
        self.lock().get(task)?.places.get(node).copied()
    }

    /// Where a frame from `from` on `task`'s network goes.
    pub fn route(&self, task: &Hash, from: u8, frame: &[u8]) -> Route {
        match self.lock().get(task) {
            Some(seg) => seg.route(from, frame),
            None => Route::Drop("no such network"),
        }
    }

    /// Runs one VM's port: `link` carries its NIC's frames (QEMU's stream
    /// framing). Returns when the link closes or breaks its framing.
    pub async fn serve<S>(
        self: &Arc<Self>,
        task: Hash,
        node: Address,
        link: S,
    ) -> Result<(), LanError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let place = self.place(task, node)?;
        let (mut port, mut rx) = self.plug(task, place);
        tracing::info!(%task, %node, place, address = %address(place), "private network: VM plugged in");
        let (mut read, mut write) = tokio::io::split(link);
        // However this ends (the link closes or breaks, or the caller drops
        // this future when the contract ends), the port goes with it.
        port.writer = Some(tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let mut out = Vec::with_capacity(4 + frame.len());
                out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
                out.extend_from_slice(&frame);
                if write.write_all(&out).await.is_err() {
                    break;
                }
            }
        }));
        loop {
            let Some(frame) = read_frame(&mut read).await? else {
                return Ok(());
            };
            if let Err(why) = self.forward(&task, place, frame) {
                tracing::trace!(%task, place, why, "private network: frame dropped");
            }
        }
    }

    /// Runs the publisher's own port on `task`'s network: the TAP in the
    /// task's namespace ([`crate::lan_host`]). Returns only on a device
    /// error; dropping the future unplugs it.
    pub async fn serve_host(
        self: &Arc<Self>,
        task: Hash,
        net: &crate::lan_host::HostNet,
    ) -> Result<(), LanError> {
        let (_port, mut rx) = self.plug(task, HOST_PLACE);
        loop {
            tokio::select! {
                frame = net.recv() => {
                    if let Err(why) = self.forward(&task, HOST_PLACE, frame?) {
                        tracing::trace!(%task, why, "private network: host frame dropped");
                    }
                }
                Some(frame) = rx.recv() => net.send(&frame).await?,
            }
        }
    }

    /// Connects a port at `place` of `task`'s network (replacing an older
    /// connection there): frames for it arrive on the receiver, and it is
    /// unplugged when the returned guard drops.
    fn plug(self: &Arc<Self>, task: Hash, place: u8) -> (Plugged, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let id = next_id();
        self.lock()
            .entry(task)
            .or_default()
            .ports
            .insert(place, (id, tx));
        let port = Plugged {
            lan: self.clone(),
            task,
            place,
            id,
            writer: None,
        };
        (port, rx)
    }

    /// Routes and queues one frame under one lock (the per-frame path).
    fn forward(&self, task: &Hash, from: u8, frame: Vec<u8>) -> Result<(), &'static str> {
        let segments = self.lock();
        let seg = segments.get(task).ok_or("no such network")?;
        let places = match seg.route(from, &frame) {
            Route::To(places) => places,
            Route::Drop(why) => return Err(why),
        };
        for p in places {
            if let Some((_, tx)) = seg.ports.get(&p) {
                // A full queue drops the frame; TCP in the guests recovers.
                let _ = tx.try_send(frame.clone());
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash, Segment>> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Segment {
    fn route(&self, from: u8, frame: &[u8]) -> Route {
        if frame.len() < MIN_FRAME {
            return Route::Drop("shorter than an Ethernet header");
        }
        let (dst, src) = (&frame[0..6], &frame[6..12]);
        if src != mac(from) {
            return Route::Drop("source MAC is not the port's own");
        }
        if dst[0] & 1 == 1 {
            // Broadcast and multicast: every other connected port.
            let mut to: Vec<u8> = self.ports.keys().copied().filter(|p| *p != from).collect();
            to.sort_unstable();
            return Route::To(to);
        }
        match self
            .ports
            .keys()
            .copied()
            .find(|p| *p != from && mac(*p) == dst)
        {
            Some(p) => Route::To(vec![p]),
            None => Route::Drop("no port has the destination MAC"),
        }
    }
}

/// A connected port; unplugs it (and stops writing to its link) when
/// dropped.
struct Plugged {
    lan: Arc<Lan>,
    task: Hash,
    place: u8,
    id: u64,
    writer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Plugged {
    fn drop(&mut self) {
        if let Some(writer) = &self.writer {
            writer.abort();
        }
        let mut segments = self.lan.lock();
        if let Some(seg) = segments.get_mut(&self.task)
            && seg
                .ports
                .get(&self.place)
                .is_some_and(|(i, _)| *i == self.id)
        {
            seg.ports.remove(&self.place);
        }
        tracing::info!(task = %self.task, place = self.place, "private network: port unplugged");
    }
}

/// One frame of QEMU's stream framing; `None` at a clean end.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, LanError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
        return Err(LanError::BadLength(len));
    }
    let mut frame = vec![0; len];
    r.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::DuplexStream;

    fn frame(dst: [u8; 6], src: [u8; 6], body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(body);
        f
    }

    const BROADCAST: [u8; 6] = [0xff; 6];

    /// Plugs `node`'s VM into `task`'s network; our end of its link.
    async fn plug(lan: &Arc<Lan>, task: Hash, node: u8) -> (u8, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let node = Address([node; 20]);
        let place = lan.place(task, node).unwrap();
        let switch = lan.clone();
        tokio::spawn(async move { switch.serve(task, node, theirs).await });
        // The port is connected once the switch has its queue.
        for _ in 0..100 {
            if lan_has_port(lan, &task, place) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (place, ours)
    }

    fn lan_has_port(lan: &Lan, task: &Hash, place: u8) -> bool {
        lan.lock()
            .get(task)
            .is_some_and(|s| s.ports.contains_key(&place))
    }

    async fn send(link: &mut DuplexStream, f: &[u8]) {
        link.write_all(&(f.len() as u32).to_be_bytes())
            .await
            .unwrap();
        link.write_all(f).await.unwrap();
    }

    async fn recv(link: &mut DuplexStream) -> Option<Vec<u8>> {
        tokio::time::timeout(Duration::from_millis(200), read_frame(link))
            .await
            .ok()
            .and_then(|r| r.unwrap())
    }

    #[test]
    fn places_are_kept_per_node_and_bounded() {
        let lan = Lan::default();
        let t = Hash([1; 32]);
        let a = lan.place(t, Address([1; 20])).unwrap();
        assert_eq!(a, FIRST_PLACE);
        assert_eq!(lan.place(t, Address([1; 20])).unwrap(), a);
        assert_eq!(lan.place(t, Address([2; 20])).unwrap(), a + 1);
        // Another task's network starts over.
        assert_eq!(lan.place(Hash([2; 32]), Address([2; 20])).unwrap(), a);
        for n in 3..=253u8 {
            lan.place(t, Address([n; 20])).unwrap();
        }
        assert!(matches!(
            lan.place(t, Address([254; 20])),
            Err(LanError::Full { .. })
        ));
        assert_eq!(address(2).to_string(), "10.88.0.2");
        assert!(guest_setup(2).contains("02:7a:6e:88:00:02"));
        assert!(guest_setup(2).contains(zennet_proto::LAN_BOOT_MAC));
    }

    #[tokio::test]
    async fn frames_reach_their_task_only_and_a_guest_cannot_pose_as_another() {
        let lan = Arc::new(Lan::default());
        let (t, u) = (Hash([1; 32]), Hash([2; 32]));
        let (a, mut la) = plug(&lan, t, 1).await;
        let (b, mut lb) = plug(&lan, t, 2).await;
        let (c, mut lc) = plug(&lan, t, 3).await;
        // Another task's VM, at the same place number as `a`.
        let (x, mut lx) = plug(&lan, u, 1).await;
        assert_eq!(x, a);

        // Broadcast (ARP): every other port of the task, not the sender,
        // not the other task.
        let arp = frame(BROADCAST, mac(a), b"who has 10.88.0.3");
        send(&mut la, &arp).await;
        assert_eq!(recv(&mut lb).await.as_deref(), Some(&arp[..]));
        assert_eq!(recv(&mut lc).await.as_deref(), Some(&arp[..]));
        assert_eq!(recv(&mut la).await, None);
        assert_eq!(recv(&mut lx).await, None);

        // Unicast: only its owner.
        let to_b = frame(mac(b), mac(a), b"hello b");
        send(&mut la, &to_b).await;
        assert_eq!(recv(&mut lb).await.as_deref(), Some(&to_b[..]));
        assert_eq!(recv(&mut lc).await, None);

        // The other task's VM addresses `b`'s MAC: its network has no `b`.
        send(&mut lx, &frame(mac(b), mac(x), b"over the wall")).await;
        assert_eq!(recv(&mut lb).await, None);

        // `c` poses as `a` (to draw or forge its traffic): dropped.
        send(&mut lc, &frame(mac(b), mac(a), b"forged")).await;
        assert_eq!(recv(&mut lb).await, None);
        assert_eq!(
            lan.route(&t, c, &frame(mac(b), mac(a), b"")),
            Route::Drop("source MAC is not the port's own")
        );
        // A runt is not a frame.
        assert_eq!(
            lan.route(&t, a, &[0; 10]),
            Route::Drop("shorter than an Ethernet header")
        );
        // The switch still works for everyone after all that.
        let to_c = frame(mac(c), mac(b), b"still here");
        send(&mut lb, &to_c).await;
        assert_eq!(recv(&mut lc).await.as_deref(), Some(&to_c[..]));
    }

    #[tokio::test]
    async fn a_link_that_breaks_the_framing_is_unplugged_and_others_go_on() {
        let lan = Arc::new(Lan::default());
        let t = Hash([1; 32]);
        let (a, mut la) = plug(&lan, t, 1).await;
        let (b, mut lb) = plug(&lan, t, 2).await;
        // A length prefix far past any frame (the switch must not buffer it).
        la.write_all(&(64u32 << 20).to_be_bytes()).await.unwrap();
        for _ in 0..100 {
            if !lan_has_port(&lan, &t, a) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!lan_has_port(&lan, &t, a), "the port stays plugged in");
        assert!(lan_has_port(&lan, &t, b));
        // `a` reconnects (a redialling node) and keeps its place.
        let (again, mut la2) = plug(&lan, t, 1).await;
        assert_eq!(again, a);
        let f = frame(mac(a), mac(b), b"welcome back");
        send(&mut lb, &f).await;
        assert_eq!(recv(&mut la2).await.as_deref(), Some(&f[..]));
    }

    #[tokio::test]
    async fn a_slow_port_drops_frames_instead_of_holding_the_switch() {
        let lan = Arc::new(Lan::default());
        let t = Hash([1; 32]);
        let (a, mut la) = plug(&lan, t, 1).await;
        // `b` never reads; its link's buffer and queue fill.
        let (b, _lb) = plug(&lan, t, 2).await;
        let (c, mut lc) = plug(&lan, t, 3).await;
        let big = frame(mac(b), mac(a), &[7; 1500]);
        for _ in 0..(QUEUE * 4) {
            send(&mut la, &big).await;
        }
        let f = frame(mac(c), mac(a), b"not stuck behind b");
        send(&mut la, &f).await;
        assert_eq!(recv(&mut lc).await.as_deref(), Some(&f[..]));
    }
}
