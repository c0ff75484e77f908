//! BitTorrent on the node: stock clients (aria2c, transmission, …)
//! download what `zennet fs seed` seeds, and `zennet fs get` takes parts
//! from stock seeders beside Zennet seeders and web seeds.
//!
//! # Layout
//! - [`wire`]: the peer wire (BEP 3) over `librqbit-peer-protocol`, with
//!   the length cap checked before a body is read.
//! - [`tracker`]: announce parsing, the swarm book and the bencoded
//!   answers (BEP 3, BEP 23 compact peers), pure.
//! - [`torrent`]: `.torrent` files (tracker + BEP 19 web seed outside the
//!   info dict, so the id stays) and magnet links.
//! - `seed`: the listener (`[fs] bt_listen`) and the serving side of a
//!   peer connection, inbound or dialled after an announce.
//! - `fetch`: the downloading side, a part source for `download`, and the
//!   tracker client.
//! - this file: the node's BitTorrent state ([`Bt`]) and the `/announce`
//!   route.
//!
//! # Choices
//! - The codec is `librqbit-peer-protocol` 9.1 (rqbit's, Apache-2.0, kept
//!   with rqbit). Its 9.x line no longer links OpenSSL: librqbit-core's
//!   SHA-1 backend is optional and not enabled here (the `rust-tls`
//!   feature of older versions is gone), so nothing is needed to avoid it.
//!   It parses; it does not bound what it is given, so [`wire`] checks the
//!   length prefix first and refuses extension messages (this node sets
//!   no reserved bit) before the crate's bencode parser can see them.
//! - The tracker is a route on the node's HTTP listener (the same
//!   address as the web seed), written here: a query parser and a map.
//! - Serving: every interested peer is unchoked (the peer cap bounds
//!   them; a seed-only node has no reason to play tit-for-tat). Only files
//!   priced 0 are served to stock clients: they cannot pay, and a priced
//!   file's parts are sold over the part protocol.
//! - The seeder dials every stock leecher that announces (transmission
//!   3.00 was seen never to dial tracker peers on loopback), as the
//!   initiator of the handshake. It dials only the address the announce
//!   came from (the `ip` parameter is ignored), once per announce, not
//!   again within [`REDIAL`], and within the peer cap: nobody can aim it
//!   at a third party. Zennet nodes (peer id `-ZN…`) are not dialled: they
//!   fetch over the part protocol.

pub mod torrent;
pub mod tracker;
pub mod wire;

#[cfg(feature = "node")]
pub(crate) mod fetch;
#[cfg(feature = "node")]
pub(crate) mod seed;

#[cfg(feature = "node")]
pub use node::*;

/// Azureus-style client prefix of this node's peer ids.
pub const PEER_ID_PREFIX: &[u8; 8] = b"-ZN0100-";

#[cfg(feature = "node")]
mod node {
    use std::collections::{HashMap, HashSet};
    use std::net::{IpAddr, SocketAddr};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::extract::{ConnectInfo, RawQuery, State};
    use axum::http::{HeaderMap, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use tokio::sync::{OwnedSemaphorePermit, Semaphore};

    use super::tracker::{self, Swarms};
    use super::{PEER_ID_PREFIX, seed};
    use crate::api::{BtView, SwarmView};
    use crate::error::TrackerError;
    use crate::metainfo::FileId;
    use crate::service::Fs;
    use crate::store::StoredFile;

    /// A leecher dialled after an announce is not dialled again before this.
    pub const REDIAL: Duration = Duration::from_secs(20);

    /// The node's BitTorrent state: its peer id, the peer cap, the swarm
    /// book of its tracker, and counters for `fs status`.
    pub struct Bt {
        pub(crate) peer_id: [u8; 20],
        slots: Arc<Semaphore>,
        max_peers: usize,
        listen: Mutex<Option<SocketAddr>>,
        swarms: Mutex<Swarms>,
        epoch: Instant,
        /// (file, remote address) of every live session, so an announce
        /// does not dial a peer already connected.
        connected: Mutex<HashSet<(FileId, SocketAddr)>>,
        dialled: Mutex<HashMap<SocketAddr, Instant>>,
        pub(crate) served_bytes: AtomicU64,
        pub(crate) served_blocks: AtomicU64,
        pub(crate) refused_full: AtomicU64,
        pub(crate) dropped: AtomicU64,
        last_drop: Mutex<Option<String>>,
    }

    impl Bt {
        pub fn new(max_peers: usize) -> Bt {
            let mut peer_id = [0u8; 20];
            peer_id[..8].copy_from_slice(PEER_ID_PREFIX);
            getrandom::fill(&mut peer_id[8..]).expect("the OS has randomness");
            Bt {
                peer_id,
                slots: Arc::new(Semaphore::new(max_peers)),
                max_peers,
                listen: Mutex::new(None),
                swarms: Mutex::new(Swarms::default()),
                epoch: Instant::now(),
                connected: Mutex::new(HashSet::new()),
                dialled: Mutex::new(HashMap::new()),
                served_bytes: AtomicU64::new(0),
                served_blocks: AtomicU64::new(0),
                refused_full: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                last_drop: Mutex::new(None),
            }
        }

        /// Where the peer listener is (None: not listening).
        pub fn listen_addr(&self) -> Option<SocketAddr> {
            *lock(&self.listen)
        }

        /// A slot under the peer cap, or None when every slot is taken.
        pub(crate) fn slot(&self) -> Option<OwnedSemaphorePermit> {
            let permit = self.slots.clone().try_acquire_owned().ok();
            if permit.is_none() {
                self.refused_full.fetch_add(1, Ordering::Relaxed);
            }
            permit
        }

        /// Marks a session with `addr` on `file` live until the guard drops.
        pub(crate) fn connect(self: &Arc<Self>, file: FileId, addr: SocketAddr) -> Connected {
            lock(&self.connected).insert((file, addr));
            Connected {
                bt: self.clone(),
                key: (file, addr),
            }
        }

        /// Logs and counts a peer dropped for `why`.
        pub(crate) fn drop_peer(&self, addr: SocketAddr, why: &str) {
            tracing::info!(peer = %addr, reason = why, "BitTorrent peer dropped");
            self.dropped.fetch_add(1, Ordering::Relaxed);
            *lock(&self.last_drop) = Some(format!("{addr}: {why}"));
        }

        /// Peers recorded by this node's tracker for `file` (the
        /// downloader asks its own tracker too).
        pub(crate) fn tracked_peers(&self, file: &FileId) -> Vec<SocketAddr> {
            lock(&self.swarms).peers(&file.0, self.epoch.elapsed())
        }

        pub(crate) fn forget(&self, file: &FileId) {
            lock(&self.swarms).forget(&file.0);
        }

        pub(crate) fn view(&self, files: &[StoredFile]) -> BtView {
            let now = self.epoch.elapsed();
            let swarms = lock(&self.swarms);
            BtView {
                listen: self.listen_addr().map(|a| a.to_string()),
                peer_id: String::from_utf8_lossy(&self.peer_id[..8]).into_owned(),
                peers: self.max_peers - self.slots.available_permits(),
                max_peers: self.max_peers,
                served_bytes: self.served_bytes.load(Ordering::Relaxed),
                served_blocks: self.served_blocks.load(Ordering::Relaxed),
                refused_over_cap: self.refused_full.load(Ordering::Relaxed),
                dropped: self.dropped.load(Ordering::Relaxed),
                last_drop: lock(&self.last_drop).clone(),
                swarms: files
                    .iter()
                    .filter(|f| f.seeding)
                    .map(|f| {
                        let (seeders, leechers) = swarms.counts(&f.meta.id.0, now);
                        SwarmView {
                            id: f.meta.id,
                            seeders,
                            leechers,
                        }
                    })
                    .collect(),
            }
        }

        /// Whether `addr` may be dialled now (not connected on `file`, not
        /// dialled within [`REDIAL`]); records the dial.
        fn may_dial(&self, file: FileId, addr: SocketAddr) -> bool {
            if lock(&self.connected).contains(&(file, addr)) {
                return false;
            }
            let mut dialled = lock(&self.dialled);
            let now = Instant::now();
            dialled.retain(|_, at| now.duration_since(*at) < REDIAL);
            if dialled.contains_key(&addr) {
                return false;
            }
            dialled.insert(addr, now);
            true
        }
    }

    /// A live session's entry in [`Bt`]'s connected set.
    pub(crate) struct Connected {
        bt: Arc<Bt>,
        key: (FileId, SocketAddr),
    }

    impl Drop for Connected {
        fn drop(&mut self) {
            lock(&self.bt.connected).remove(&self.key);
        }
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether stock clients are served `f` (seeded here and free).
    pub(crate) fn served(f: &StoredFile) -> bool {
        f.seeding && f.price_per_mib == 0
    }

    /// Starts accepting peers on `listener` (`[fs] bt_listen`).
    pub fn listen(fs: &Arc<Fs>, listener: tokio::net::TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        *lock(&fs.bt.listen) = Some(addr);
        tracing::info!(%addr, max_peers = fs.bt.max_peers, "serving BitTorrent peers");
        tokio::spawn(seed::accept(Arc::downgrade(fs), listener));
        Ok(addr)
    }

    /// `GET /announce` and `GET /scrape` (BEP 48): the tracker. Served on
    /// the node's HTTP listener, which must be run with connect info (the
    /// announcing peer's address is the one its request came from).
    pub fn router(fs: Arc<Fs>) -> Router {
        Router::new()
            .route("/announce", get(announce))
            .route("/scrape", get(scrape))
            .with_state(fs)
    }

    async fn scrape(State(fs): State<Arc<Fs>>, RawQuery(query): RawQuery) -> Response {
        let answer = match tracker::parse_scrape(query.as_deref().unwrap_or("")) {
            Ok(hashes) => {
                let now = fs.bt.epoch.elapsed();
                let swarms = lock(&fs.bt.swarms);
                let files: Vec<_> = hashes
                    .into_iter()
                    .filter_map(|h| {
                        let f = fs.store().file(&FileId(h)).filter(|f| f.seeding)?;
                        let (seeders, leechers) = swarms.counts(&h, now);
                        Some((h, seeders + usize::from(served(&f)), leechers))
                    })
                    .collect();
                tracker::encode_scrape(&files)
            }
            Err(e) => tracker::encode_failure(&e.to_string()),
        };
        ([(header::CONTENT_TYPE, "text/plain")], answer).into_response()
    }

    async fn announce(
        State(fs): State<Arc<Fs>>,
        ConnectInfo(remote): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
        RawQuery(query): RawQuery,
    ) -> Response {
        let answer = match answer(&fs, remote, &headers, query.as_deref().unwrap_or("")) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(peer = %remote, error = %e, "announce refused");
                tracker::encode_failure(&e.to_string())
            }
        };
        // Failures too are 200: clients read `failure reason` from the body.
        ([(header::CONTENT_TYPE, "text/plain")], answer).into_response()
    }

    fn answer(
        fs: &Arc<Fs>,
        remote: SocketAddr,
        headers: &HeaderMap,
        query: &str,
    ) -> Result<Vec<u8>, TrackerError> {
        let a = tracker::parse_announce(query)?;
        let file = FileId(a.info_hash);
        let f = fs
            .store()
            .file(&file)
            .filter(|f| f.seeding)
            .ok_or(TrackerError::NotTracked(file))?;
        let ip = remote.ip().to_canonical();
        let own = if served(&f) {
            own_addr(fs.bt.listen_addr(), headers, ip)
        } else {
            None
        };
        let outcome = lock(&fs.bt.swarms).announce(&a, ip, own, fs.bt.epoch.elapsed());
        tracing::debug!(peer = %SocketAddr::new(ip, a.port), %file, event = ?a.event, left = ?a.left, "announce");
        if let Some(addr) = outcome.dial
            && own.is_some()
            && !a.peer_id.starts_with(&PEER_ID_PREFIX[..3])
            && fs.bt.may_dial(file, addr)
        {
            tokio::spawn(seed::dial(fs.clone(), addr, file));
        }
        Ok(tracker::encode_answer(&outcome))
    }

    /// This node's peer address as the announcing client can reach it:
    /// the listener's own IP, or, when it listens on every interface, the
    /// IP the client used to reach the tracker (its `Host` header).
    fn own_addr(
        listen: Option<SocketAddr>,
        headers: &HeaderMap,
        remote: IpAddr,
    ) -> Option<SocketAddr> {
        let listen = listen?;
        if !listen.ip().is_unspecified() {
            return Some(listen);
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                h.parse::<SocketAddr>()
                    .map(|s| s.ip())
                    .or_else(|_| h.parse::<IpAddr>())
                    .ok()
            });
        let ip = host.or_else(|| remote.is_loopback().then_some(remote))?;
        Some(SocketAddr::new(ip, listen.port()))
    }
}
