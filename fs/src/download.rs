//! The multi-source downloader: find the seeders of a file (Kademlia),
//! take each one's signed offer, fetch and check the metainfo, then run one
//! session per usable seeder with several parts in flight, scheduled by
//! [`crate::schedule`]. Every part is verified by SHA-1 before it is
//! written or paid for; a seeder that sends a bad part is dropped and not
//! paid for it; the bitfield is persisted as parts land, so a rerun after
//! `kill -9` resumes where the last one stopped.
//!
//! One download takes parts over several protocols at once: each source
//! is a [`PartSource`] (the part protocol's [`ZennetSource`] here, stock
//! BitTorrent peers found through trackers in `bittorrent::fetch`, BEP 19
//! web seeds in `webseed`), run by the same [`session`] loop and fed by
//! the same scheduler, every part verified the same way. Only Zennet
//! seeders are paid; web seeds are taken only from seeders that offer the
//! file for free (a priced seeder is paid over the part protocol, never
//! fetched from for free), or from `--web-seed`.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::AsyncReadExt;
use futures::io::{ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use zennet_chain::{Address, Amount, SignedVoucher};
use zennet_net::PeerId;
use zennet_net::content::{Stream, stream_protocol};

use crate::api::{GetRequest, SeederView, TransferState, TransferView};
use crate::bitfield::Bitfield;
use crate::bittorrent::fetch as bt_fetch;
use crate::crypt::{self, FileKey};
use crate::error::{CryptError, FsError, PaymentError, StoreError, WireError};
use crate::metainfo::{FileId, Metainfo, PIECE_LEN};
use crate::payment::Account;
use crate::payment::part_cost;
use crate::schedule::{Delivery, Dropped, ScheduleConfig, Scheduler};
use crate::service::{Fs, Role};
use crate::store::{ExportTarget, now_ms};
use crate::webseed::WebSeed;
use crate::wire::{self, Frame, Offer, PROTOCOL_BITTORRENT};

/// Opening a stream and getting the offer.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A seeder that sends nothing for this long while asked is given up.
const SILENCE: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(250);
/// Verified parts per voucher (see [`Owed`]).
const PAY_EVERY: usize = 8;

/// One download's progress, shared with the API.
pub struct Transfer {
    view: Mutex<TransferView>,
    started: Instant,
}

impl Transfer {
    pub(crate) fn new(id: FileId) -> Transfer {
        Transfer {
            view: Mutex::new(TransferView {
                id,
                name: String::new(),
                state: TransferState::Finding,
                length: 0,
                parts: 0,
                have_parts: 0,
                have_bytes: 0,
                resumed_parts: 0,
                fetched_parts: 0,
                duplicate_parts: 0,
                started_ms: now_ms(),
                elapsed_ms: 0,
                found_ms: 0,
                rate: 0.0,
                eta_secs: None,
                spent: 0,
                seeders: vec![],
                output: None,
                error: None,
            }),
            started: Instant::now(),
        }
    }

    pub fn view(&self) -> TransferView {
        let mut v = self.lock().clone();
        if matches!(v.state, TransferState::Finding | TransferState::Downloading) {
            v.elapsed_ms = self.started.elapsed().as_millis() as u64;
        }
        let fetched: u64 = v.seeders.iter().map(|s| s.bytes).sum();
        let secs = v.elapsed_ms as f64 / 1000.0;
        v.rate = if secs > 0.0 {
            fetched as f64 / secs
        } else {
            0.0
        };
        let left = v.length.saturating_sub(v.have_bytes);
        v.eta_secs =
            (v.rate > 0.0 && v.state == TransferState::Downloading).then(|| left as f64 / v.rate);
        v
    }

    pub(crate) fn running(&self) -> bool {
        matches!(
            self.lock().state,
            TransferState::Finding | TransferState::Downloading
        )
    }

    fn lock(&self) -> MutexGuard<'_, TransferView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A seeder that answered the hello.
pub(crate) struct Source {
    pub(crate) peer: PeerId,
    pub(crate) address: Option<Address>,
    pub(crate) offer: Offer,
    rd: ReadHalf<Stream>,
    wr: WriteHalf<Stream>,
}

impl Source {
    pub(crate) async fn bye(&mut self) {
        let _ = wire::write(&mut self.wr, &Frame::Bye).await;
        let _ = wire::flush(&mut self.wr).await;
    }
}

/// Opens the part protocol with `peer` for `file` and checks its offer:
/// for this file, signed by the peer's own key.
pub(crate) async fn hello(fs: &Fs, peer: PeerId, file: FileId) -> Result<Source, String> {
    let attempt = async {
        let stream = fs
            .net
            .streams()
            .open_stream(peer, stream_protocol(wire::PROTOCOL))
            .await
            .map_err(|e| format!("cannot open a part stream: {e}"))?;
        let (mut rd, mut wr) = stream.split();
        wire::write(&mut wr, &Frame::Hello { file })
            .await
            .map_err(|e| e.to_string())?;
        wire::flush(&mut wr).await.map_err(|e| e.to_string())?;
        let offer = match wire::read(&mut rd).await.map_err(|e| e.to_string())? {
            Frame::Offer(o) => o,
            Frame::NotHere { reason } | Frame::Refused { reason } => return Err(reason),
            other => return Err(format!("answered hello with {other:?}")),
        };
        Ok((rd, wr, offer))
    };
    let (rd, wr, offer) = tokio::time::timeout(HELLO_TIMEOUT, attempt)
        .await
        .map_err(|_| "no offer within 10 s".to_string())??;
    let address = zennet_net::peer_address(&peer);
    if offer.file != file {
        return Err(format!("offered {} instead", offer.file));
    }
    if offer.signer(fs.config.chain_id, &fs.config.genesis) != address || address.is_none() {
        return Err("its offer is not signed by its own key".into());
    }
    Ok(Source {
        peer,
        address,
        offer,
        rd,
        wr,
    })
}

pub(crate) async fn run(fs: Arc<Fs>, t: Arc<Transfer>, req: GetRequest) {
    let result = download(&fs, &t, &req).await;
    let mut v = t.lock();
    v.elapsed_ms = t.started.elapsed().as_millis() as u64;
    match result {
        Ok(out) => {
            tracing::info!(id = %req.id, out = %out.display(), "download complete");
            v.state = TransferState::Done;
            v.output = Some(out);
        }
        Err(e) => {
            tracing::warn!(id = %req.id, error = %e, "download failed");
            v.state = TransferState::Failed;
            v.error = Some(e.to_string());
        }
    }
}

async fn download(fs: &Arc<Fs>, t: &Arc<Transfer>, req: &GetRequest) -> Result<PathBuf, FsError> {
    let id = req.id;
    let known = fs.store.file(&id);
    if !known.as_ref().is_some_and(|f| f.complete()) {
        fetch(fs, t, req, known.map(|f| f.meta)).await?;
    } else {
        let f = known.expect("checked");
        let mut v = t.lock();
        v.name = f.meta.name().to_string();
        v.length = f.meta.length();
        v.parts = f.meta.piece_count();
        v.have_parts = v.parts;
        v.resumed_parts = v.parts;
        v.have_bytes = v.length;
    }
    let meta = fs.store.file(&id).ok_or(StoreError::Unknown(id))?.meta;
    let key = match (crypt::salt_of(meta.name()), &req.key) {
        (None, Some(_)) => return Err(CryptError::NotEncrypted(id).into()),
        (None, None) => None,
        (Some(_), Some(k)) => Some(FileKey::parse(k)?),
        (Some(salt), None) => Some(FileKey::derive(&fs.key, &salt)),
    };
    let store = fs.store.clone();
    let target = ExportTarget {
        path: req.out.clone(),
        dir: req.dir.clone(),
    };
    tokio::task::spawn_blocking(move || store.export(&id, &target, key.as_ref()))
        .await
        .map_err(|e| FsError::Invalid(format!("export interrupted: {e}")))?
        .map_err(Into::into)
}

/// Fetches every missing part of `id` from the network into the store.
async fn fetch(
    fs: &Arc<Fs>,
    t: &Arc<Transfer>,
    req: &GetRequest,
    known: Option<Arc<Metainfo>>,
) -> Result<(), FsError> {
    let id = req.id;
    let max_price = req.max_price_per_mib.unwrap_or(fs.config.max_price_per_mib);
    let peers = fs
        .net
        .providers(&id.0)
        .await
        .map_err(|e| FsError::Net(e.to_string()))?;
    if peers.is_empty() {
        return Err(FsError::NoSeeders(id));
    }
    let hellos = futures::future::join_all(peers.iter().map(|p| hello(fs, *p, id))).await;
    let mut refused: Vec<String> = Vec::new();
    let mut sources: Vec<Source> = Vec::new();
    for (peer, h) in peers.iter().zip(hellos) {
        match h {
            Err(why) => refused.push(format!("{}: {why}", short(peer))),
            Ok(s) if s.offer.price_per_mib > max_price => refused.push(format!(
                "{}: asks {} per MiB, above --max-price {max_price}",
                short(peer),
                s.offer.price_per_mib
            )),
            Ok(s) if !s.offer.protocols.iter().any(|p| p == wire::PROTOCOL_ZENNET) => {
                refused.push(format!("{}: does not serve the part protocol", short(peer)))
            }
            Ok(s) => sources.push(s),
        }
    }
    let no_usable = |refused: &[String]| FsError::NoUsableSeeder {
        file: id,
        reasons: refused.join("; "),
    };
    if sources.is_empty() {
        return Err(no_usable(&refused));
    }
    // The metainfo, from the first seeder whose copy matches the id.
    let meta = match known {
        Some(m) => m,
        None => {
            let mut found = None;
            let mut rest = Vec::new();
            for mut s in sources.drain(..) {
                if found.is_some() {
                    rest.push(s);
                    continue;
                }
                match fetch_meta(&mut s, &id).await {
                    Ok(m) => {
                        found = Some(Arc::new(m));
                        rest.push(s);
                    }
                    Err(why) => refused.push(format!("{}: {why}", short(&s.peer))),
                }
            }
            sources = rest;
            found.ok_or_else(|| no_usable(&refused))?
        }
    };
    if let Some(max) = req.max_length
        && meta.length() > max
    {
        return Err(FsError::TooLarge {
            file: id,
            length: meta.length(),
            max,
        });
    }
    // Offers whose bitfield does not fit the metainfo are not trusted.
    let mut usable = Vec::new();
    for s in sources {
        match Bitfield::from_bytes(&s.offer.have, meta.piece_count()) {
            Ok(b) => usable.push((s, b)),
            Err(e) => refused.push(format!("{}: {e}", short(&s.peer))),
        }
    }
    if usable.is_empty() {
        return Err(no_usable(&refused));
    }
    let stored = fs.store.insert_metainfo(&meta)?;
    // Parts already on disk (another file's, or written before a crash).
    let store = fs.store.clone();
    let missing: Vec<u32> = (0..meta.piece_count())
        .filter(|i| !stored.have.get(*i))
        .collect();
    tokio::task::spawn_blocking(move || {
        for i in missing {
            let _ = store.adopt_local(&id, i);
        }
    })
    .await
    .map_err(|e| FsError::Invalid(format!("resume interrupted: {e}")))?;
    let have = fs.store.file(&id).ok_or(StoreError::Unknown(id))?.have;
    {
        let mut v = t.lock();
        v.name = meta.name().to_string();
        v.length = meta.length();
        v.parts = meta.piece_count();
        v.have_parts = have.count();
        v.resumed_parts = have.count();
        v.have_bytes = have.ones().map(|i| meta.piece_len(i)).sum();
        v.state = TransferState::Downloading;
        v.found_ms = t.started.elapsed().as_millis() as u64;
        v.seeders = usable
            .iter()
            .map(|(s, b)| SeederView {
                peer: s.peer.to_string(),
                protocol: wire::PROTOCOL_ZENNET.into(),
                address: s.address,
                price_per_mib: s.offer.price_per_mib,
                offered_parts: b.count(),
                parts: 0,
                bytes: 0,
                paid: 0,
                state: "using".into(),
            })
            .collect();
    }
    tracing::info!(%id, seeders = usable.len(), have = have.count(), parts = meta.piece_count(), "downloading");
    if have.is_complete() {
        return Ok(());
    }
    // Web seeds and trackers the free seeders name, and those asked for.
    let others = Others::gather(fs, req, &usable);
    // Channels to the seeders that charge, ready for what they may serve.
    let prepared = futures::future::join_all(usable.iter().map(|(s, b)| {
        let price = s.offer.price_per_mib;
        let budget: Amount = b
            .ones()
            .filter(|i| !have.get(*i))
            .map(|i| part_cost(price, meta.piece_len(i)))
            .sum::<Amount>()
            + part_cost(price, PIECE_LEN) * 8;
        let payer = fs.payer.clone();
        let address = s.address;
        let price = if req.allows(wire::PROTOCOL_ZENNET) {
            price
        } else {
            0
        };
        async move {
            match (price, address) {
                (0, _) => Ok(()),
                (_, Some(a)) => payer.prepare(a, budget).await,
                (_, None) => Err(PaymentError::NoAddress.into()),
            }
        }
    }))
    .await;

    let shared = Arc::new(Shared {
        fs: fs.clone(),
        meta: meta.clone(),
        sched: Mutex::new(Scheduler::new(have, ScheduleConfig::default())),
        notify: Notify::new(),
        t: t.clone(),
        start: Instant::now(),
        connecting: AtomicUsize::new(0),
    });
    let mut sessions = JoinSet::new();
    for (key, ((s, bits), ready)) in usable.into_iter().zip(prepared).enumerate() {
        if !req.allows(wire::PROTOCOL_ZENNET) {
            t.lock().seeders[key].state = "not asked for parts (--protocol)".into();
            continue;
        }
        if let Err(e) = ready {
            refused.push(format!("{}: {e}", short(&s.peer)));
            t.lock().seeders[key].state = e.to_string();
            continue;
        }
        let source = ZennetSource::new(s, fs.config.window);
        shared.add_source(key, bits);
        sessions.spawn(session(shared.clone(), source, key));
    }
    for w in others.web_seeds {
        let (key, bits) = shared.join(&w.url, wire::PROTOCOL_HTTP, Some(w.bits));
        shared.add_source(key, bits);
        let source = WebSeed::new(w.url, meta.clone());
        sessions.spawn(session(shared.clone(), source, key));
    }
    // Stock BitTorrent seeders, found through trackers as the download runs.
    let (found_tx, mut found) = mpsc::channel::<SocketAddr>(64);
    let finder = others.trackers.map(|trackers| {
        AbortOnDrop(tokio::spawn(bt_fetch::find_peers(
            shared.clone(),
            trackers,
            found_tx,
        )))
    });
    let mut bt_peers: HashSet<SocketAddr> = others.skip;
    let mut fatal = None;
    loop {
        tokio::select! {
            done = sessions.join_next() => match done {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    fatal = Some(e);
                    sessions.abort_all();
                }
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => {
                    fatal = Some(FsError::Invalid(format!("a download session failed: {e}")));
                    sessions.abort_all();
                }
            },
            Some(addr) = found.recv() => {
                if !bt_peers.insert(addr) || bt_peers.len() > MAX_BT_PEERS + 64 || shared.sched().is_complete() {
                    continue;
                }
                let (key, bits) = shared.join(&addr.to_string(), PROTOCOL_BITTORRENT, None);
                shared.add_source(key, bits);
                shared.connecting.fetch_add(1, Ordering::SeqCst);
                sessions.spawn(bt_fetch::session(shared.clone(), addr, key));
            }
            _ = tokio::time::sleep(TICK) => {
                let now = shared.now();
                let slow = shared.sched().expire(now);
                for key in slow {
                    t.lock().seeders[key].state = Dropped::Slow.to_string();
                }
                shared.notify.notify_waiters();
                if shared.connecting.load(Ordering::SeqCst) == 0 && shared.sched().stalled() {
                    sessions.abort_all();
                }
            }
        }
    }
    drop(finder);
    if let Some(e) = fatal {
        return Err(e);
    }
    let sched = shared.sched();
    if sched.is_complete() {
        return Ok(());
    }
    for (key, why) in sched.drop_reasons() {
        let peer = t.lock().seeders[key].peer.clone();
        refused.push(format!("{}: {why}", &peer[peer.len().saturating_sub(8)..]));
    }
    Err(FsError::Stalled {
        file: id,
        missing: sched.missing(),
        reasons: refused.join("; "),
    })
}

/// Stock BitTorrent peers used at once per download, at most.
const MAX_BT_PEERS: usize = 16;

/// Sources beside the Zennet seeders: BEP 19 web seeds and the trackers
/// that find stock BitTorrent peers.
struct Others {
    web_seeds: Vec<WebSeedUrl>,
    /// None: no BitTorrent (no listener here, or not allowed).
    trackers: Option<Vec<String>>,
    /// Peer addresses not to dial: the Zennet seeders' own BitTorrent
    /// listeners (they serve over the part protocol already) and ours.
    skip: HashSet<SocketAddr>,
}

struct WebSeedUrl {
    url: String,
    bits: Bitfield,
}

impl Others {
    /// Web seeds of free offers (a priced seeder is paid over the part
    /// protocol, never fetched from for free), the trackers the offers
    /// name, and what the request adds.
    fn gather(fs: &Fs, req: &GetRequest, usable: &[(Source, Bitfield)]) -> Others {
        let mut others = Others {
            web_seeds: vec![],
            trackers: None,
            skip: HashSet::new(),
        };
        let n = usable.first().map_or(0, |(_, b)| b.len());
        let mut trackers = req.trackers.clone();
        for (s, bits) in usable {
            if let Some(url) = s.offer.endpoint(wire::PROTOCOL_HTTP)
                && s.offer.price_per_mib == 0
            {
                others.web_seeds.push(WebSeedUrl {
                    url: url.to_string(),
                    bits: bits.clone(),
                });
            }
            if let Some(url) = s.offer.endpoint(wire::PROTOCOL_TRACKER) {
                trackers.push(url.to_string());
            }
            if let Some(addr) = s
                .offer
                .endpoint(PROTOCOL_BITTORRENT)
                .and_then(|a| a.parse().ok())
            {
                others.skip.insert(addr);
            }
        }
        for url in &req.web_seeds {
            others.web_seeds.push(WebSeedUrl {
                url: url.clone(),
                bits: Bitfield::full(n),
            });
        }
        trackers.sort();
        trackers.dedup();
        if !req.allows(wire::PROTOCOL_HTTP) {
            others.web_seeds.clear();
        }
        if !req.allows(PROTOCOL_BITTORRENT) {
            return others;
        }
        if let Some(own) = fs.bt.listen_addr() {
            others.skip.insert(own);
            others.trackers = Some(trackers);
        } else if !trackers.is_empty() {
            tracing::info!("no BitTorrent listener here ([fs] bt_listen): trackers not asked");
        }
        others
    }
}

/// Fetches every missing part of `id` into the store, paying no seeder
/// more than `max_price_per_mib`, without exporting it: a storage node
/// filling a replica.
pub(crate) async fn fetch_into_store(
    fs: &Arc<Fs>,
    id: FileId,
    max_price_per_mib: Amount,
) -> Result<(), FsError> {
    let req = GetRequest {
        id,
        out: None,
        dir: PathBuf::new(),
        max_price_per_mib: Some(max_price_per_mib),
        key: None,
        trackers: vec![],
        web_seeds: vec![],
        protocols: vec![],
        max_length: None,
    };
    let known = fs.store.file(&id).map(|f| f.meta);
    fetch(fs, &Arc::new(Transfer::new(id)), &req, known).await
}

async fn fetch_meta(s: &mut Source, id: &FileId) -> Result<Metainfo, String> {
    let ask = async {
        wire::write(&mut s.wr, &Frame::GetMeta).await?;
        wire::flush(&mut s.wr).await?;
        wire::read(&mut s.rd).await
    };
    match tokio::time::timeout(SILENCE, ask).await {
        Err(_) => Err("sent no metainfo within 30 s".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(Frame::Meta(bytes))) => {
            Metainfo::from_network(&bytes, id).map_err(|e| format!("sent bad metainfo: {e}"))
        }
        Ok(Ok(other)) => Err(format!("answered get-meta with {other:?}")),
    }
}

/// What every session of one download shares.
pub(crate) struct Shared {
    pub(crate) fs: Arc<Fs>,
    pub(crate) meta: Arc<Metainfo>,
    sched: Mutex<Scheduler<usize>>,
    notify: Notify,
    t: Arc<Transfer>,
    start: Instant,
    /// BitTorrent peers being connected to: the download is not stalled
    /// while one may still bring missing parts.
    pub(crate) connecting: AtomicUsize,
}

impl Shared {
    fn sched(&self) -> MutexGuard<'_, Scheduler<usize>> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Bytes still missing (what a tracker announce calls `left`).
    pub(crate) fn left(&self) -> u64 {
        let v = self.t.lock();
        v.length.saturating_sub(v.have_bytes)
    }

    pub(crate) fn give_up(&self, key: usize, why: Dropped) {
        tracing::info!(seeder = %self.t.lock().seeders[key].peer, reason = %why, "seeder dropped");
        self.t.lock().seeders[key].state = why.to_string();
        self.sched().drop_peer(key, why);
        self.notify.notify_waiters();
    }

    /// A new source's row in the transfer: its key and what it holds
    /// (`bits`, or nothing until it says).
    fn join(&self, peer: &str, protocol: &str, bits: Option<Bitfield>) -> (usize, Bitfield) {
        let bits = bits.unwrap_or_else(|| Bitfield::new(self.meta.piece_count()));
        let mut v = self.t.lock();
        v.seeders.push(SeederView {
            peer: peer.to_string(),
            protocol: protocol.to_string(),
            address: None,
            price_per_mib: 0,
            offered_parts: bits.count(),
            parts: 0,
            bytes: 0,
            paid: 0,
            state: "using".into(),
        });
        (v.seeders.len() - 1, bits)
    }

    /// Starts scheduling for source `key` (each starts in its own place).
    fn add_source(&self, key: usize, bits: Bitfield) {
        let offset = (self.meta.piece_count() / 3).saturating_mul(key as u32);
        self.sched().add_peer(key, bits, offset);
    }
}

/// What a source reports to its session.
pub(crate) enum Event {
    /// A whole part, not verified yet.
    Part(u32, Vec<u8>),
    /// It holds these parts now.
    Has(Vec<u32>),
    /// These parts it was asked for will not come (it choked us).
    Lost(Vec<u32>),
    /// Nothing to act on (e.g. it unchoked us).
    Ready,
}

/// A transport that delivers whole parts: the part protocol
/// ([`ZennetSource`]), the BitTorrent peer wire
/// ([`bt_fetch::BtSource`]), an HTTP web seed ([`WebSeed`]). A new
/// transport is one more implementation; [`session`] runs them all the
/// same way (scheduling, SHA-1 verification, storing, counting).
pub(crate) trait PartSource: Send {
    /// Parts that may be in flight now (0 while it will not serve).
    fn room(&self) -> usize;
    /// Asks for part `index` (sent at the latest by [`PartSource::flush`]).
    fn ask(&mut self, index: u32) -> impl Future<Output = Result<(), Dropped>> + Send;
    fn flush(&mut self) -> impl Future<Output = Result<(), Dropped>> + Send;
    /// What the source sent next. Cancel-safe: the session also waits for
    /// other things.
    fn recv(&mut self) -> impl Future<Output = Result<Event, Dropped>> + Send;
    /// Part `index` from this source verified; a source that charges is
    /// paid here. `idle`: nothing else is in flight. The outer error ends
    /// the whole download (the payer failing).
    fn verified(
        &mut self,
        _sh: &Arc<Shared>,
        _key: usize,
        _len: u64,
        _idle: bool,
    ) -> impl Future<Output = Result<Result<(), Dropped>, FsError>> + Send {
        async { Ok(Ok(())) }
    }
    /// It sent a corrupt part and is about to be dropped.
    fn corrupt(&mut self, _sh: &Arc<Shared>, _key: usize) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The download is complete.
    fn done(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The session ends, however it ended.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// One source: keep it asked as much as it takes, verify each part that
/// arrives, store it, count it (and pay for it), ask for the next. `Err`
/// only for what ends the whole download (the local store or the payer
/// failing).
pub(crate) async fn session<S: PartSource>(
    sh: Arc<Shared>,
    mut s: S,
    key: usize,
) -> Result<(), FsError> {
    let result = run_session(&sh, &mut s, key).await;
    s.close().await;
    result
}

async fn run_session<S: PartSource>(
    sh: &Arc<Shared>,
    s: &mut S,
    key: usize,
) -> Result<(), FsError> {
    let mut asked: HashSet<u32> = HashSet::new();
    loop {
        if sh.sched().dropped(key).is_some() {
            return Ok(());
        }
        while asked.len() < s.room() {
            let Some(i) = sh.sched().next(key, sh.now()) else {
                break;
            };
            if let Err(why) = s.ask(i).await {
                sh.give_up(key, why);
                return Ok(());
            }
            asked.insert(i);
        }
        if let Err(why) = s.flush().await {
            sh.give_up(key, why);
            return Ok(());
        }
        if asked.is_empty() && sh.sched().is_complete() {
            s.done().await;
            sh.t.lock().seeders[key].state = "done".into();
            return Ok(());
        }
        let event = if asked.is_empty() {
            // Nothing to ask it now: wait for work, or for it to say
            // something (a BitTorrent peer's have or unchoke).
            tokio::select! {
                _ = sh.notify.notified() => continue,
                _ = tokio::time::sleep(TICK) => continue,
                e = s.recv() => e,
            }
        } else {
            tokio::select! {
                e = s.recv() => e,
                why = given_up(sh, key) => {
                    if let Some(why) = why {
                        sh.give_up(key, why);
                    }
                    return Ok(());
                }
            }
        };
        let (index, bytes) = match event {
            Err(why) => {
                sh.give_up(key, why);
                return Ok(());
            }
            Ok(Event::Ready) => continue,
            Ok(Event::Has(parts)) => {
                let mut sched = sh.sched();
                let new = parts.into_iter().filter(|i| sched.has(key, *i)).count();
                drop(sched);
                sh.t.lock().seeders[key].offered_parts += new as u32;
                sh.notify.notify_waiters();
                continue;
            }
            Ok(Event::Lost(parts)) => {
                let mut sched = sh.sched();
                for i in parts {
                    asked.remove(&i);
                    sched.release(key, i);
                }
                continue;
            }
            Ok(Event::Part(index, bytes)) => (index, bytes),
        };
        if !asked.remove(&index) {
            sh.give_up(key, Dropped::Protocol(format!("sent part {index} unasked")));
            return Ok(());
        }
        let len = bytes.len() as u64;
        let store = sh.fs.store.clone();
        let id = sh.meta.id;
        let put = tokio::task::spawn_blocking(move || store.put_part(&id, index, &bytes))
            .await
            .map_err(|e| FsError::Invalid(format!("storing a part was interrupted: {e}")))?;
        match put {
            Ok(_) => {}
            Err(StoreError::BadPart { .. }) => {
                // Not written, not paid for; the good parts before it are.
                s.corrupt(sh, key).await;
                sh.give_up(key, Dropped::Corrupt(index));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let delivery = sh.sched().delivered(key, index, len, sh.now());
        {
            let mut v = sh.t.lock();
            let seeder = &mut v.seeders[key];
            seeder.parts += 1;
            seeder.bytes += len;
            match delivery {
                Delivery::First => {
                    v.fetched_parts += 1;
                    v.have_parts += 1;
                    v.have_bytes += len;
                }
                Delivery::Duplicate => v.duplicate_parts += 1,
            }
        }
        if let Err(why) = s.verified(sh, key, len, asked.is_empty()).await? {
            sh.give_up(key, why);
            return Ok(());
        }
        sh.notify.notify_waiters();
    }
}

/// A Zennet seeder on the part protocol, paid per verified part.
struct ZennetSource {
    address: Option<Address>,
    price: Amount,
    wr: WriteHalf<Stream>,
    /// Frames read by a task of their own, so waiting for one is
    /// cancel-safe.
    frames: mpsc::Receiver<Result<Frame, WireError>>,
    _reader: AbortOnDrop<()>,
    /// Parts asked, in the order the seeder answers them.
    asked: VecDeque<u32>,
    window: usize,
    pay_every: usize,
    owed: Owed,
}

impl ZennetSource {
    fn new(s: Source, window: usize) -> ZennetSource {
        let window = window
            .min((s.offer.credit_parts as usize / 2).max(1))
            .max(1);
        // What the seeder may see unpaid: the window in flight, a batch
        // whose voucher is being signed and one being gathered; all fit
        // in its credit.
        let pay_every = PAY_EVERY
            .min((s.offer.credit_parts as usize).saturating_sub(window) / 2)
            .max(1);
        let (tx, frames) = mpsc::channel(2);
        let mut rd = s.rd;
        let reader = tokio::spawn(async move {
            loop {
                let f = wire::read(&mut rd).await;
                let end = f.is_err();
                if tx.send(f).await.is_err() || end {
                    return;
                }
            }
        });
        ZennetSource {
            address: s.address,
            price: s.offer.price_per_mib,
            wr: s.wr,
            frames,
            _reader: AbortOnDrop(reader),
            asked: VecDeque::new(),
            window,
            pay_every,
            owed: Owed::default(),
        }
    }
}

impl PartSource for ZennetSource {
    fn room(&self) -> usize {
        self.window
    }

    async fn ask(&mut self, index: u32) -> Result<(), Dropped> {
        wire::write(&mut self.wr, &Frame::Get { index })
            .await
            .map_err(|e| Dropped::Gone(e.to_string()))?;
        self.asked.push_back(index);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Dropped> {
        wire::flush(&mut self.wr)
            .await
            .map_err(|e| Dropped::Gone(e.to_string()))
    }

    async fn recv(&mut self) -> Result<Event, Dropped> {
        match self.frames.recv().await {
            Some(Ok(Frame::Part { index, bytes })) if self.asked.front() == Some(&index) => {
                self.asked.pop_front();
                Ok(Event::Part(index, bytes))
            }
            Some(Ok(Frame::Part { index, .. })) => {
                Err(Dropped::Protocol(format!("sent part {index} unasked")))
            }
            Some(Ok(Frame::Refused { reason })) => Err(Dropped::Gone(format!("refused: {reason}"))),
            Some(Ok(other)) => Err(Dropped::Protocol(format!("sent {other:?}"))),
            None | Some(Err(WireError::Closed)) => Err(Dropped::Gone("closed the stream".into())),
            Some(Err(e)) => Err(Dropped::Protocol(e.to_string())),
        }
    }

    async fn verified(
        &mut self,
        sh: &Arc<Shared>,
        key: usize,
        len: u64,
        idle: bool,
    ) -> Result<Result<(), Dropped>, FsError> {
        let cost = part_cost(self.price, len);
        if cost > 0 {
            let payee = self.address.expect("paid offers come from chain addresses");
            sh.fs
                .book(payee, Role::Spent, Account::served(1, len, cost), false);
            self.owed.add(cost);
        }
        // Nothing in flight: the seeder is idle or done, so settle now
        // rather than leave verified parts unpaid.
        let paid = if idle {
            self.owed
                .settle(sh, &mut self.wr, self.address, key)
                .await?
        } else if self.owed.parts >= self.pay_every {
            self.owed.start(sh, &mut self.wr, self.address, key).await?
        } else {
            self.owed.send_if_ready(&mut self.wr).await?
        };
        Ok(paid.map_err(|e| Dropped::Gone(e.to_string())))
    }

    async fn corrupt(&mut self, sh: &Arc<Shared>, key: usize) {
        let _ = self.owed.settle(sh, &mut self.wr, self.address, key).await;
    }

    async fn done(&mut self) {
        let _ = wire::write(&mut self.wr, &Frame::Bye).await;
        let _ = wire::flush(&mut self.wr).await;
    }

    async fn close(&mut self) {
        // A voucher signed (so recorded and booked as paid) but not sent
        // yet goes out however the session ended, or the seeder could
        // claim less than this side counts as paid until the next
        // transfer to it.
        if self.owed.signing.is_some() {
            let _ = tokio::time::timeout(HELLO_TIMEOUT, self.owed.finish(&mut self.wr)).await;
        }
    }
}

/// Verified parts from one seeder not paid for yet. Vouchers go out every
/// [`PAY_EVERY`] parts, not one per part: each is a signature and a
/// synchronous SQLite commit on both sides. Signing runs beside the
/// transfer (one voucher at a time): the session keeps reading parts while
/// the commit that must precede the send reaches the disk, and sends the
/// voucher as soon as it is recorded. The batch shrinks so that the window
/// plus the batch being signed plus the batch being gathered fit in the
/// seeder's credit (`credit_parts`, 64 by default), so neither batching
/// nor signing aside ever gets a paying downloader cut off.
#[derive(Default)]
struct Owed {
    parts: usize,
    amount: Amount,
    /// The voucher being signed and recorded (booked when it is).
    signing: Option<tokio::task::JoinHandle<Result<SignedVoucher, FsError>>>,
}

type Writer = WriteHalf<Stream>;

impl Owed {
    fn add(&mut self, cost: Amount) {
        self.parts += 1;
        self.amount += cost;
    }

    /// Starts signing a voucher for everything owed (waiting first for
    /// the one before, which is sent). The outer error is the payer
    /// failing, which ends the download; the inner one is the seeder's
    /// stream failing.
    async fn start(
        &mut self,
        sh: &Arc<Shared>,
        wr: &mut Writer,
        payee: Option<Address>,
        key: usize,
    ) -> Result<Result<(), WireError>, FsError> {
        if let Err(e) = self.finish(wr).await? {
            return Ok(Err(e));
        }
        if self.amount == 0 {
            return Ok(Ok(()));
        }
        let payee = payee.expect("paid offers come from chain addresses");
        let cost = std::mem::take(&mut self.amount);
        self.parts = 0;
        let sh = sh.clone();
        // Signed is paid: the voucher is recorded and booked here, even if
        // the session ends before it is sent (the next one, or a resend,
        // carries it).
        self.signing = Some(tokio::task::spawn_blocking(move || {
            let v = sh.fs.payer.pay(payee, cost)?;
            sh.fs.book(payee, Role::Spent, Account::paid(cost), true);
            let mut t = sh.t.lock();
            t.seeders[key].paid += cost;
            t.spent += cost;
            Ok(v)
        }));
        Ok(Ok(()))
    }

    /// Sends the voucher being signed if it is recorded already.
    async fn send_if_ready(&mut self, wr: &mut Writer) -> Result<Result<(), WireError>, FsError> {
        if self.signing.as_ref().is_some_and(|h| h.is_finished()) {
            return self.finish(wr).await;
        }
        Ok(Ok(()))
    }

    /// Waits for the voucher being signed, then sends it.
    async fn finish(&mut self, wr: &mut Writer) -> Result<Result<(), WireError>, FsError> {
        let Some(signing) = self.signing.take() else {
            return Ok(Ok(()));
        };
        let v = signing
            .await
            .map_err(|e| FsError::Invalid(format!("signing a voucher was interrupted: {e}")))??;
        let sent = async {
            wire::write(wr, &Frame::Pay(Box::new(v))).await?;
            wire::flush(wr).await
        };
        Ok(sent.await)
    }

    /// Pays everything owed now and sends it.
    async fn settle(
        &mut self,
        sh: &Arc<Shared>,
        wr: &mut Writer,
        payee: Option<Address>,
        key: usize,
    ) -> Result<Result<(), WireError>, FsError> {
        if let Err(e) = self.start(sh, wr, payee, key).await? {
            return Ok(Err(e));
        }
        self.finish(wr).await
    }
}

/// Resolves when this seeder is to be abandoned: dropped by the scheduler
/// (`None`: the reason is recorded already) or silent for [`SILENCE`].
async fn given_up(sh: &Shared, key: usize) -> Option<Dropped> {
    let since = Instant::now();
    loop {
        tokio::time::sleep(TICK).await;
        if sh.sched().dropped(key).is_some() {
            return None;
        }
        if since.elapsed() > SILENCE {
            return Some(Dropped::Gone("silent for 30 s".into()));
        }
    }
}

/// A task aborted when its handle is dropped.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn short(peer: &PeerId) -> String {
    let s = peer.to_string();
    format!("seeder …{}", &s[s.len().saturating_sub(8)..])
}
