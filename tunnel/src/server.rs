//! The publisher's SSH server (russh). Clients get in only with a key the
//! [`Gate`] admits (for the publisher: the key an on-chain `AcceptTask`
//! names); any other key is refused at authentication. An admitted
//! connection may open the subsystems the server was started with
//! (`zennet-pay`, `zennet-lan`; each stream goes to the owner as a
//! [`Connection`] naming its subsystem) and ask
//! for remote port forwards (`tcpip-forward`), which bind on the server's
//! loopback only, so `ssh -p PORT root@127.0.0.1` reaches the VM's sshd.
//! Nothing else is offered: no shell, no exec, no direct-tcpip.
//!
//! The server is open to the internet, so what an unauthenticated client
//! can hold is bounded ([`Limits`]): a few connections per source address,
//! a total, and a deadline to authenticate by (like OpenSSH's
//! `PerSourceMaxStartups`, `MaxStartups` and `LoginGraceTime`), and a rate
//! of new connections per source address (OpenSSH's `PerSourcePenalties`
//! in spirit): a key exchange costs the server more than the client, so a
//! client that opens, exchanges keys and hangs up in a loop (DHEat,
//! CVE-2002-20001) is held to a few a second without holding any slot. A
//! flood from one address costs it its own slots and rate only; the accept
//! loop is ours (russh's `run_on_socket` has no such limits), each
//! connection then runs through `russh::server::run_stream`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Server as _, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelStream, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zennet_chain::Hash;

use crate::keys::fingerprint;

/// Decides which client keys get in (by SHA-256 fingerprint).
pub trait Gate: Send + Sync + 'static {
    fn admits(&self, key: &Hash) -> bool;
}

/// An admitted client's subsystem stream, with the loopback ports its
/// session forwards.
pub struct Connection {
    /// Fingerprint of the key the client authenticated with.
    pub key: Hash,
    /// Which of the server's subsystems the stream is.
    pub subsystem: &'static str,
    pub peer: Option<SocketAddr>,
    /// The subsystem's byte stream.
    pub stream: ChannelStream<Msg>,
    pub forwards: Forwards,
}

/// Loopback ports bound for one SSH session's remote forwards; they close
/// with the session.
#[derive(Clone, Default)]
pub struct Forwards(Arc<Mutex<Vec<u16>>>);

impl Forwards {
    pub fn ports(&self) -> Vec<u16> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn add(&self, port: u16) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(port);
    }
}

/// Algorithm preferences for both ends of the tunnel: AES-GCM first (the
/// CPU does it in hardware almost everywhere; ChaCha20 stays as fallback
/// for clients that prefer it, such as OpenSSH). Key exchange is only the
/// post-quantum hybrid ML-KEM-768 + X25519 and plain curve25519 (no
/// finite-field or NIST-curve Diffie-Hellman, no SHA-1), with OpenSSH's
/// strict-kex extension against prefix truncation; MACs (used only with a
/// non-AEAD cipher) are encrypt-then-MAC SHA-2 ones. Every OpenSSH since
/// 7.4 speaks a pair of these.
pub fn preferred() -> russh::Preferred {
    use russh::kex;
    russh::Preferred {
        kex: std::borrow::Cow::Borrowed(&[
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::EXTENSION_SUPPORT_AS_CLIENT,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]),
        cipher: std::borrow::Cow::Borrowed(&[
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_GCM,
            russh::cipher::CHACHA20_POLY1305,
        ]),
        mac: std::borrow::Cow::Borrowed(&[
            russh::mac::HMAC_SHA512_ETM,
            russh::mac::HMAC_SHA256_ETM,
        ]),
        ..Default::default()
    }
}

/// Bounds on what clients that have not authenticated yet may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Unauthenticated connections from one source address.
    pub per_source: usize,
    /// Unauthenticated connections in all.
    pub total: usize,
    /// A client not authenticated this long after connecting is dropped.
    pub auth_timeout: Duration,
    /// New connections one source address may open per second, on
    /// average; more are closed before the key exchange.
    pub new_per_source_per_sec: f64,
    /// New connections one source address may open at once after being
    /// quiet (the bucket's size).
    pub new_per_source_burst: f64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_source: 10,
            total: 100,
            auth_timeout: Duration::from_secs(20),
            // A node redials about once a second at most; ssh-audit's
            // DHEat check wants fewer than 20 a second per source.
            new_per_source_per_sec: 5.0,
            new_per_source_burst: 10.0,
        }
    }
}

/// A running server.
pub struct SshServer {
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SshServer {
    /// Listens on `listen` and hands each stream of one of the
    /// `subsystems` to the returned receiver.
    pub async fn start(
        listen: &str,
        host_key: PrivateKey,
        gate: Arc<dyn Gate>,
        subsystems: &'static [&'static str],
    ) -> std::io::Result<(SshServer, mpsc::Receiver<Connection>)> {
        Self::start_with(listen, host_key, gate, subsystems, Limits::default()).await
    }

    /// [`SshServer::start`] with explicit [`Limits`].
    pub async fn start_with(
        listen: &str,
        host_key: PrivateKey,
        gate: Arc<dyn Gate>,
        subsystems: &'static [&'static str],
        limits: Limits,
    ) -> std::io::Result<(SshServer, mpsc::Receiver<Connection>)> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        let config = Arc::new(russh::server::Config {
            methods,
            keys: vec![host_key],
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: Some(Duration::from_secs(120)),
            keepalive_interval: Some(Duration::from_secs(15)),
            nodelay: true,
            // Bigger than the defaults (2 MiB, 32 KiB): fewer window
            // adjustments and packets for bulk traffic through the forward.
            window_size: 16 << 20,
            maximum_packet_size: 65535,
            preferred: preferred(),
            ..Default::default()
        });
        let (tx, rx) = mpsc::channel(64);
        let mut server = Acceptor {
            gate,
            tx,
            subsystems,
        };
        let pending = Arc::new(Mutex::new(Pending::default()));
        let mut rate =
            NewConnections::new(limits.new_per_source_per_sec, limits.new_per_source_burst);
        let task = tokio::spawn(async move {
            loop {
                let (socket, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: pass, don't spin.
                        tracing::warn!(error = %e, "SSH accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if !rate.admit(peer.ip(), tokio::time::Instant::now()) {
                    tracing::debug!(%peer, "SSH connection refused: too many new ones from its address");
                    continue;
                }
                let Some(slot) = Slot::take(&pending, peer.ip(), &limits) else {
                    tracing::debug!(%peer, "SSH connection refused: too many unauthenticated");
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let slot = Arc::new(Mutex::new(Some(slot)));
                let mut handler = server.new_client(Some(peer));
                handler.unauthenticated = Some(slot.clone());
                tokio::spawn(serve(
                    config.clone(),
                    socket,
                    handler,
                    slot,
                    limits.auth_timeout,
                ));
            }
        });
        tracing::info!(%local_addr, "SSH server listening");
        Ok((SshServer { local_addr, task }, rx))
    }
}

/// One connection: dropped unless it authenticates within `timeout`.
async fn serve(
    config: Arc<russh::server::Config>,
    socket: tokio::net::TcpStream,
    handler: SessionHandler,
    slot: Arc<Mutex<Option<Slot>>>,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let authenticated = || slot.lock().unwrap_or_else(|p| p.into_inner()).is_none();
    let session =
        match tokio::time::timeout_at(deadline, russh::server::run_stream(config, socket, handler))
            .await
        {
            Ok(Ok(s)) => s,
            _ => return,
        };
    let handle = session.handle();
    tokio::pin!(session);
    loop {
        if authenticated() {
            let _ = session.await;
            return;
        }
        tokio::select! {
            _ = &mut session => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if !authenticated() && tokio::time::Instant::now() >= deadline {
                    tracing::debug!("SSH client did not authenticate in time");
                    let _ = handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "authentication timeout".into(),
                            String::new(),
                        )
                        .await;
                    return;
                }
            }
        }
    }
}

/// New connections per source: a token bucket each, refilled at
/// `per_sec` up to `burst`. A source is an IPv4 address or an IPv6 /64
/// (one subscriber's prefix: a single host can use any address in it).
/// The map is bounded: a full bucket is the same as none, so those are
/// forgotten once it reaches [`TRACKED_SOURCES`]; when every tracked
/// source is still drawing (more sources than that within a refill time,
/// which no honest set of nodes does), newcomers are refused until the
/// next sweep finds room — the held slots stay bounded by [`Limits`]
/// either way, and nodes redial.
struct NewConnections {
    per_sec: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, tokio::time::Instant)>,
    /// When full buckets were last forgotten (a sweep scans the map, so
    /// a full map is swept at most every [`SWEEP_EVERY`]).
    swept: Option<tokio::time::Instant>,
}

/// Sources tracked at once.
const TRACKED_SOURCES: usize = 4096;
const SWEEP_EVERY: Duration = Duration::from_millis(50);

impl NewConnections {
    fn new(per_sec: f64, burst: f64) -> NewConnections {
        NewConnections {
            per_sec,
            burst: burst.max(1.0),
            buckets: HashMap::new(),
            swept: None,
        }
    }

    /// Whether `ip` may open a connection at `now` (and takes its token).
    fn admit(&mut self, ip: IpAddr, now: tokio::time::Instant) -> bool {
        let source = source_of(ip);
        let (per_sec, burst) = (self.per_sec, self.burst);
        if !self.buckets.contains_key(&source) && self.buckets.len() >= TRACKED_SOURCES {
            if self
                .swept
                .is_some_and(|at| now.duration_since(at) < SWEEP_EVERY)
            {
                return false;
            }
            self.swept = Some(now);
            self.buckets
                .retain(|_, (tokens, at)| refill(*tokens, *at, now, per_sec, burst) < burst);
            if self.buckets.len() >= TRACKED_SOURCES {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(source).or_insert((burst, now));
        *tokens = refill(*tokens, *at, now, per_sec, burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The source a connection counts against: an IPv4 address (IPv4-mapped
/// IPv6 included) or the /64 of an IPv6 one.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

fn refill(
    tokens: f64,
    at: tokio::time::Instant,
    now: tokio::time::Instant,
    per_sec: f64,
    burst: f64,
) -> f64 {
    (tokens + now.duration_since(at).as_secs_f64() * per_sec).min(burst)
}

/// Unauthenticated connections held, per source and in all.
#[derive(Default)]
struct Pending {
    by_source: HashMap<IpAddr, usize>,
    total: usize,
}

/// One unauthenticated connection's place; freed when dropped (on
/// authentication, or when the connection ends).
struct Slot {
    pending: Arc<Mutex<Pending>>,
    ip: IpAddr,
}

impl Slot {
    fn take(pending: &Arc<Mutex<Pending>>, ip: IpAddr, limits: &Limits) -> Option<Slot> {
        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
        let here = p.by_source.get(&ip).copied().unwrap_or(0);
        if here >= limits.per_source || p.total >= limits.total {
            return None;
        }
        p.by_source.insert(ip, here + 1);
        p.total += 1;
        Some(Slot {
            pending: pending.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.total -= 1;
        if let Some(n) = p.by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                p.by_source.remove(&self.ip);
            }
        }
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Acceptor {
    gate: Arc<dyn Gate>,
    tx: mpsc::Sender<Connection>,
    subsystems: &'static [&'static str],
}

impl russh::server::Server for Acceptor {
    type Handler = SessionHandler;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> SessionHandler {
        SessionHandler {
            gate: self.gate.clone(),
            tx: self.tx.clone(),
            subsystems: self.subsystems,
            peer,
            key: None,
            channels: HashMap::new(),
            forwards: Forwards::default(),
            listeners: Vec::new(),
            unauthenticated: None,
        }
    }

    fn handle_session_error(&mut self, error: russh::Error) {
        tracing::debug!(%error, "SSH session ended");
    }
}

struct SessionHandler {
    gate: Arc<dyn Gate>,
    tx: mpsc::Sender<Connection>,
    subsystems: &'static [&'static str],
    peer: Option<SocketAddr>,
    /// Set once the client authenticated.
    key: Option<Hash>,
    /// Session channels opened but not yet bound to a subsystem.
    channels: HashMap<ChannelId, Channel<Msg>>,
    forwards: Forwards,
    listeners: Vec<JoinHandle<()>>,
    /// The connection's unauthenticated slot, freed on authentication.
    unauthenticated: Option<Arc<Mutex<Option<Slot>>>>,
}

impl Drop for SessionHandler {
    fn drop(&mut self) {
        // The forwarded ports live exactly as long as the session.
        for l in &self.listeners {
            l.abort();
        }
    }
}

impl russh::server::Handler for SessionHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.gate.admits(&fingerprint(offer.public_key)) {
            true => Auth::Accept,
            false => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = fingerprint(key.public_key);
        if self.gate.admits(&fp) {
            tracing::info!(key = %fp, peer = ?self.peer, "node admitted");
            self.key = Some(fp);
            if let Some(slot) = self.unauthenticated.take() {
                slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
            Ok(Auth::Accept)
        } else {
            tracing::info!(key = %fp, peer = ?self.peer, "refused: no acceptance on chain names this key");
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.key.is_some() && self.channels.len() < 4 {
            self.channels.insert(channel.id(), channel);
            reply.accept().await;
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let subsystem = self.subsystems.iter().find(|s| **s == name);
        let (Some(key), Some(&subsystem)) = (self.key, subsystem) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        let Some(channel) = self.channels.remove(&id) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        session.channel_success(id)?;
        let conn = Connection {
            key,
            subsystem,
            peer: self.peer,
            stream: channel.into_stream(),
            forwards: self.forwards.clone(),
        };
        if self.tx.send(conn).await.is_err() {
            tracing::warn!(subsystem, "the owner is gone; dropping a subsystem stream");
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if self.key.is_none() || self.listeners.len() >= 4 {
            return Ok(false);
        }
        // Whatever address the node names, the port opens on loopback
        // only: it is the publisher's way in, nobody else's.
        let requested = u16::try_from(*port).unwrap_or(0);
        let listener = match TcpListener::bind(("127.0.0.1", requested)).await {
            Ok(l) => l,
            Err(_) if requested != 0 => match TcpListener::bind(("127.0.0.1", 0)).await {
                Ok(l) => l,
                Err(_) => return Ok(false),
            },
            Err(_) => return Ok(false),
        };
        let bound = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        *port = bound as u32;
        self.forwards.add(bound);
        let handle = session.handle();
        // Clients match forwarded channels by the address they asked for.
        let address = address.to_string();
        self.listeners.push(tokio::spawn(async move {
            while let Ok((mut tcp, from)) = listener.accept().await {
                let handle = handle.clone();
                let address = address.clone();
                tokio::spawn(async move {
                    let opened = handle
                        .channel_open_forwarded_tcpip(
                            address,
                            bound as u32,
                            from.ip().to_string(),
                            from.port() as u32,
                        )
                        .await;
                    match opened {
                        Ok(channel) => {
                            let mut stream = channel.into_stream();
                            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "node refused a forwarded connection")
                        }
                    }
                });
            }
        }));
        tracing::info!(port = bound, "remote forward bound on loopback");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    //! The new-connection rate, in virtual time: the flooder's address
    //! runs dry, everyone else's does not, and the map stays bounded.

    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_gets_its_burst_then_its_rate_and_no_more() {
        let mut r = NewConnections::new(5.0, 10.0);
        let t0 = tokio::time::Instant::now();
        let first = (0..100).filter(|_| r.admit(ip(1), t0)).count();
        assert_eq!(first, 10, "the burst");
        // Hammering for 10 s more gets the rate, 5 a second, not the attempts.
        let mut later = 0;
        for ms in (10..=10_000).step_by(10) {
            later += usize::from(r.admit(ip(1), t0 + Duration::from_millis(ms)));
        }
        assert!((49..=51).contains(&later), "{later} in 10 s");
        // Another address was never touched by that.
        assert_eq!((0..10).filter(|_| r.admit(ip(2), t0)).count(), 10);
        // A quiet source is whole again.
        let quiet = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| r.admit(ip(1), quiet)).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spoofed_spread_of_addresses_does_not_grow_the_map_without_end() {
        let mut r = NewConnections::new(5.0, 10.0);
        let t0 = tokio::time::Instant::now();
        for n in 0..100_000 {
            // One connection each; a second later all are full again.
            let now = t0 + Duration::from_millis(n as u64 * 20);
            assert!(r.admit(ip(n), now));
            assert!(r.buckets.len() <= TRACKED_SOURCES, "{}", r.buckets.len());
        }
    }

    /// The spread the sweep cannot thin: more sources than the map holds,
    /// all within a refill time. The map stays at its bound, newcomers
    /// wait for room, and a source already tracked keeps its own rate.
    #[tokio::test(start_paused = true)]
    async fn a_spread_faster_than_buckets_refill_is_held_at_the_bound() {
        let mut r = NewConnections::new(5.0, 10.0);
        let t0 = tokio::time::Instant::now();
        assert!(r.admit(ip(0), t0));
        let admitted = (1..100_000u32)
            .filter(|n| r.admit(ip(*n), t0 + Duration::from_micros(u64::from(*n))))
            .count();
        assert_eq!(r.buckets.len(), TRACKED_SOURCES);
        assert_eq!(admitted, TRACKED_SOURCES - 1);
        let soon = t0 + Duration::from_millis(150);
        assert!(r.admit(ip(0), soon), "a tracked source lost its own tokens");
        // Once the flood's buckets are full again, there is room.
        assert!(r.admit(ip(200_000), t0 + Duration::from_secs(2)));
        assert!(r.buckets.len() <= TRACKED_SOURCES);
    }

    /// One IPv6 host can pick any address of its /64: they are one source.
    #[tokio::test(start_paused = true)]
    async fn an_ipv6_prefix_is_one_source() {
        let mut r = NewConnections::new(5.0, 10.0);
        let t0 = tokio::time::Instant::now();
        let host = |n: u64| {
            IpAddr::V6(std::net::Ipv6Addr::from(
                (0x2001_0db8_u128 << 96) | u128::from(n),
            ))
        };
        let admitted = (0..1000).filter(|n| r.admit(host(*n), t0)).count();
        assert_eq!(admitted, 10, "a /64 got more than one burst");
        assert_eq!(r.buckets.len(), 1);
        let next_prefix = IpAddr::V6(std::net::Ipv6Addr::from((0x2001_0db8_0000_0001_u128) << 64));
        assert!(r.admit(next_prefix, t0));
        // An IPv4-mapped address counts as its IPv4 address.
        assert!(r.admit(ip(7), t0));
        let mapped = match ip(7) {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        };
        assert_eq!(source_of(mapped), ip(7));
    }
}
