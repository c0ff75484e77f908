//! The multi-source downloader: find the seeders of a file (Kademlia),
//! take each one's signed offer, fetch and check the metainfo, then run one
//! session per usable seeder with several parts in flight, scheduled by
//! [`crate::schedule`]. Every part is verified by SHA-1 before it is
//! written or paid for; a seeder that sends a bad part is dropped and not
//! paid for it; the bitfield is persisted as parts land, so a rerun after
//! `kill -9` resumes where the last one stopped.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::AsyncReadExt;
use futures::io::{ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use zennet_chain::{Address, Amount, SignedVoucher};
use zennet_net::PeerId;
use zennet_net::content::{Stream, stream_protocol};

use crate::api::{GetRequest, SeederView, TransferState, TransferView};
use crate::bitfield::Bitfield;
use crate::crypt::{self, FileKey};
use crate::error::{CryptError, FsError, PaymentError, StoreError, WireError};
use crate::metainfo::{FileId, Metainfo, PIECE_LEN};
use crate::payment::Account;
use crate::payment::part_cost;
use crate::schedule::{Delivery, Dropped, ScheduleConfig, Scheduler};
use crate::service::{Fs, Role};
use crate::store::{ExportTarget, now_ms};
use crate::wire::{self, Frame, Offer};

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
    });
    let mut sessions = JoinSet::new();
    for (key, ((s, bits), ready)) in usable.into_iter().zip(prepared).enumerate() {
        if let Err(e) = ready {
            refused.push(format!("{}: {e}", short(&s.peer)));
            t.lock().seeders[key].state = e.to_string();
            continue;
        }
        let offset = (meta.piece_count() / 3).saturating_mul(key as u32);
        shared.sched().add_peer(key, bits, offset);
        sessions.spawn(session(shared.clone(), s, key));
    }
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
            _ = tokio::time::sleep(TICK) => {
                let now = shared.now();
                let slow = shared.sched().expire(now);
                for key in slow {
                    t.lock().seeders[key].state = Dropped::Slow.to_string();
                }
                shared.notify.notify_waiters();
                if shared.sched().stalled() {
                    sessions.abort_all();
                }
            }
        }
    }
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

struct Shared {
    fs: Arc<Fs>,
    meta: Arc<Metainfo>,
    sched: Mutex<Scheduler<usize>>,
    notify: Notify,
    t: Arc<Transfer>,
    start: Instant,
}

impl Shared {
    fn sched(&self) -> MutexGuard<'_, Scheduler<usize>> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn give_up(&self, key: usize, why: Dropped) {
        tracing::info!(seeder = %self.t.lock().seeders[key].peer, reason = %why, "seeder dropped");
        self.t.lock().seeders[key].state = why.to_string();
        self.sched().drop_peer(key, why);
        self.notify.notify_waiters();
    }
}

/// One seeder: keep up to `window` parts asked, verify each one that
/// arrives, store it, pay for it, ask for the next. `Err` only for what
/// ends the whole download (the local store or the payer failing).
async fn session(sh: Arc<Shared>, mut s: Source, key: usize) -> Result<(), FsError> {
    let mut owed = Owed::default();
    let result = run_session(&sh, &mut s, key, &mut owed).await;
    // A voucher signed (so recorded and booked as paid) but not sent yet
    // goes out however the session ended, or the seeder could claim less
    // than this side counts as paid until the next transfer to it.
    if owed.signing.is_some() {
        let _ = tokio::time::timeout(HELLO_TIMEOUT, owed.finish(&mut s)).await;
    }
    result
}

async fn run_session(
    sh: &Arc<Shared>,
    s: &mut Source,
    key: usize,
    owed: &mut Owed,
) -> Result<(), FsError> {
    let price = s.offer.price_per_mib;
    let window = sh
        .fs
        .config
        .window
        .min((s.offer.credit_parts as usize / 2).max(1))
        .max(1);
    // What the seeder may see unpaid: the window in flight, a batch whose
    // voucher is being signed and one being gathered; all fit in its credit.
    let pay_every = PAY_EVERY
        .min((s.offer.credit_parts as usize).saturating_sub(window) / 2)
        .max(1);
    let mut asked: VecDeque<u32> = VecDeque::new();
    loop {
        if sh.sched().dropped(key).is_some() {
            return Ok(());
        }
        while asked.len() < window {
            let Some(i) = sh.sched().next(key, sh.now()) else {
                break;
            };
            if let Err(e) = wire::write(&mut s.wr, &Frame::Get { index: i }).await {
                sh.give_up(key, Dropped::Gone(e.to_string()));
                return Ok(());
            }
            asked.push_back(i);
        }
        if let Err(e) = wire::flush(&mut s.wr).await {
            sh.give_up(key, Dropped::Gone(e.to_string()));
            return Ok(());
        }
        if asked.is_empty() {
            if sh.sched().is_complete() {
                s.bye().await;
                sh.t.lock().seeders[key].state = "done".into();
                return Ok(());
            }
            tokio::select! {
                _ = sh.notify.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            continue;
        }
        let frame = tokio::select! {
            f = wire::read(&mut s.rd) => f,
            why = given_up(sh, key) => {
                if let Some(why) = why {
                    sh.give_up(key, why);
                }
                return Ok(());
            }
        };
        let (index, bytes) = match frame {
            Ok(Frame::Part { index, bytes }) if asked.front() == Some(&index) => (index, bytes),
            Ok(Frame::Part { index, .. }) => {
                sh.give_up(key, Dropped::Protocol(format!("sent part {index} unasked")));
                return Ok(());
            }
            Ok(Frame::Refused { reason }) => {
                sh.give_up(key, Dropped::Gone(format!("refused: {reason}")));
                return Ok(());
            }
            Ok(other) => {
                sh.give_up(key, Dropped::Protocol(format!("sent {other:?}")));
                return Ok(());
            }
            Err(WireError::Closed) => {
                sh.give_up(key, Dropped::Gone("closed the stream".into()));
                return Ok(());
            }
            Err(e) => {
                sh.give_up(key, Dropped::Protocol(e.to_string()));
                return Ok(());
            }
        };
        asked.pop_front();
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
                let _ = owed.settle(sh, s, key).await;
                sh.give_up(key, Dropped::Corrupt(index));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let delivery = sh.sched().delivered(key, index, len, sh.now());
        let cost = part_cost(price, len);
        if cost > 0 {
            let payee = s.address.expect("paid offers come from chain addresses");
            sh.fs
                .book(payee, Role::Spent, Account::served(1, len, cost), false);
            owed.add(cost);
        }
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
        // Nothing in flight: the seeder is idle or done, so settle now
        // rather than leave verified parts unpaid.
        let paid = if asked.is_empty() {
            owed.settle(sh, s, key).await?
        } else if owed.parts >= pay_every {
            owed.start(sh, s, key).await?
        } else {
            owed.send_if_ready(s).await?
        };
        if let Err(e) = paid {
            sh.give_up(key, Dropped::Gone(e.to_string()));
            return Ok(());
        }
        sh.notify.notify_waiters();
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
        s: &mut Source,
        key: usize,
    ) -> Result<Result<(), WireError>, FsError> {
        if let Err(e) = self.finish(s).await? {
            return Ok(Err(e));
        }
        if self.amount == 0 {
            return Ok(Ok(()));
        }
        let payee = s.address.expect("paid offers come from chain addresses");
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
    async fn send_if_ready(&mut self, s: &mut Source) -> Result<Result<(), WireError>, FsError> {
        if self.signing.as_ref().is_some_and(|h| h.is_finished()) {
            return self.finish(s).await;
        }
        Ok(Ok(()))
    }

    /// Waits for the voucher being signed, then sends it.
    async fn finish(&mut self, s: &mut Source) -> Result<Result<(), WireError>, FsError> {
        let Some(signing) = self.signing.take() else {
            return Ok(Ok(()));
        };
        let v = signing
            .await
            .map_err(|e| FsError::Invalid(format!("signing a voucher was interrupted: {e}")))??;
        let sent = async {
            wire::write(&mut s.wr, &Frame::Pay(Box::new(v))).await?;
            wire::flush(&mut s.wr).await
        };
        Ok(sent.await)
    }

    /// Pays everything owed now and sends it.
    async fn settle(
        &mut self,
        sh: &Arc<Shared>,
        s: &mut Source,
        key: usize,
    ) -> Result<Result<(), WireError>, FsError> {
        if let Err(e) = self.start(sh, s, key).await? {
            return Ok(Err(e));
        }
        self.finish(s).await
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

fn short(peer: &PeerId) -> String {
    let s = peer.to_string();
    format!("seeder …{}", &s[s.len().saturating_sub(8)..])
}
