//! The file service a node runs: the store, seeding (Kademlia provider
//! records and the part protocol's server side), downloads, the accounts
//! of what was served and bought, and what the node's API asks of it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use zennet_chain::{Address, Amount, Hash, SecretKey};
use zennet_net::NetHandle;
use zennet_net::content::stream_protocol;

use crate::api::{
    AccountView, AddRequest, Added, AddingView, FileEntryView, FileView, GetRequest, InfoView,
    OfferView, StatusView, TorrentRequest, TorrentView, TransferView, WindDownView,
};
use crate::crypt::{self, FileKey};
use crate::download::Transfer;
use crate::error::{FsError, StoreError};
use crate::metainfo::FileId;
use crate::payment::{Account, PartPayee, PartPayer};
use crate::store::{Encryption, Store, StoredFile};
use crate::wire;

/// Who may fetch files over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    /// Anyone (like a public web seed).
    Free,
    /// Only requests that carry a voucher paying for what they fetch.
    Paid,
    /// No HTTP serving.
    Off,
}

impl std::fmt::Display for HttpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HttpMode::Free => "free",
            HttpMode::Paid => "paid",
            HttpMode::Off => "off",
        })
    }
}

#[derive(Debug, Clone)]
pub struct FsConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub chain_id: u64,
    /// The genesis hash signatures on this chain are bound to.
    pub genesis: Hash,
    /// Price of files added without `--price`, base units per MiB.
    pub price_per_mib: Amount,
    /// Highest price a `get` pays without `--max-price`.
    pub max_price_per_mib: Amount,
    /// Parts served to a downloader ahead of its payment.
    pub credit_parts: u32,
    /// Parts in flight per seeder.
    pub window: usize,
    pub http: HttpMode,
    /// Upload cap over the part protocol and the peer wire, bytes per
    /// second (0: none).
    pub upload_limit: u64,
    /// BitTorrent peers connected at once, at most.
    pub bt_max_peers: usize,
    /// The host name or IP others reach this node by, for the URLs it
    /// gives out (offers, `.torrent` files); default: the listeners' IP.
    pub public_host: Option<String>,
}

impl FsConfig {
    pub fn new(dir: PathBuf, chain_id: u64, genesis: Hash) -> FsConfig {
        FsConfig {
            dir,
            max_bytes: 10 << 30,
            chain_id,
            genesis,
            price_per_mib: 0,
            max_price_per_mib: 0,
            credit_parts: 64,
            window: 16,
            http: HttpMode::Free,
            upload_limit: 0,
            bt_max_peers: 50,
            public_host: None,
        }
    }
}

/// Served to a downloader (`Earned`) or bought from a seeder (`Spent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Earned,
    Spent,
}

pub struct Fs {
    pub(crate) store: Arc<Store>,
    pub(crate) net: NetHandle,
    pub(crate) key: SecretKey,
    pub(crate) config: FsConfig,
    pub(crate) payer: Arc<dyn PartPayer>,
    pub(crate) payee: Arc<dyn PartPayee>,
    accounts: Mutex<HashMap<(Address, Role), Account>>,
    /// What each file earned as a seeder (see [`Fs::book_file`]).
    served: Mutex<HashMap<FileId, Account>>,
    transfers: Mutex<HashMap<FileId, Arc<Transfer>>>,
    /// Adds in progress by path, for `zennet fs add`'s progress bar.
    adding: Mutex<HashMap<PathBuf, AddingView>>,
    pub(crate) limiter: crate::seed::Limiter,
    http_addr: Mutex<Option<String>>,
    pub(crate) bt: Arc<crate::bittorrent::Bt>,
    /// The storage market, once started ([`crate::storage::Storage::start`]).
    storage: std::sync::OnceLock<std::sync::Weak<crate::storage::Storage>>,
}

impl Fs {
    /// Opens the store, starts serving the part protocol and re-announces
    /// the files being seeded.
    pub fn start(
        config: FsConfig,
        net: NetHandle,
        key: SecretKey,
        payer: Arc<dyn PartPayer>,
        payee: Arc<dyn PartPayee>,
    ) -> Result<Arc<Fs>, FsError> {
        let store = Arc::new(Store::open(&config.dir, config.max_bytes)?);
        let accounts = store
            .accounts()?
            .into_iter()
            .map(|(a, earned, acc)| ((a, if earned { Role::Earned } else { Role::Spent }), acc))
            .collect();
        let served = store.served()?;
        let mut incoming = net
            .streams()
            .accept(stream_protocol(wire::PROTOCOL))
            .map_err(|e| FsError::Net(e.to_string()))?;
        let bt = Arc::new(crate::bittorrent::Bt::new(config.bt_max_peers.max(1)));
        let fs = Arc::new(Fs {
            limiter: crate::seed::Limiter::new(config.upload_limit),
            store,
            net,
            key,
            config,
            payer,
            payee,
            accounts: Mutex::new(accounts),
            served: Mutex::new(served),
            transfers: Mutex::new(HashMap::new()),
            adding: Mutex::new(HashMap::new()),
            http_addr: Mutex::new(None),
            bt,
            storage: std::sync::OnceLock::new(),
        });
        for f in fs.store.list().into_iter().filter(|f| f.seeding) {
            fs.net.provide(&f.meta.id.0);
        }
        let weak = Arc::downgrade(&fs);
        tokio::spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                let Some(fs) = weak.upgrade() else { break };
                tokio::spawn(crate::seed::serve(fs, peer, stream));
            }
        });
        tracing::info!(files = fs.store.list().len(), "file service");
        Ok(fs)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn set_storage(&self, storage: std::sync::Weak<crate::storage::Storage>) {
        let _ = self.storage.set(storage);
    }

    /// The storage market, if the node runs it.
    pub fn storage(&self) -> Option<Arc<crate::storage::Storage>> {
        self.storage.get().and_then(|w| w.upgrade())
    }

    /// Whether `file` is served to `peer` for free: `peer` holds a replica
    /// of it for this node (or of a task this node holds one of).
    pub(crate) fn serves_free(&self, file: &FileId, peer: Option<Address>) -> bool {
        match (peer, self.storage()) {
            (Some(p), Some(s)) => s.serves_free(file, &p),
            _ => false,
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// Where the HTTP listener ended up (set by whoever runs it).
    pub fn set_http_addr(&self, addr: Option<String>) {
        *self.http_addr.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// The node's BitTorrent state (listener, tracker, counters).
    pub fn bittorrent(&self) -> &Arc<crate::bittorrent::Bt> {
        &self.bt
    }

    /// `http://HOST:PORT` of the HTTP listener as others reach it (None:
    /// no listener, or it listens on every interface and no
    /// `public_host` says which name to give).
    pub fn public_http(&self) -> Option<String> {
        let addr = self
            .http_addr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()?
            .parse()
            .ok()?;
        Some(format!("http://{}", self.public(addr)?))
    }

    /// `HOST:PORT` of the BitTorrent listener as others reach it.
    pub fn public_bittorrent(&self) -> Option<String> {
        self.public(self.bt.listen_addr()?)
    }

    fn public(&self, addr: std::net::SocketAddr) -> Option<String> {
        match &self.config.public_host {
            Some(h) if h.contains(':') => Some(format!("[{h}]:{}", addr.port())),
            Some(h) => Some(format!("{h}:{}", addr.port())),
            None if addr.ip().is_unspecified() => None,
            None => Some(addr.to_string()),
        }
    }

    /// Where a `.torrent` of `f` points clients: this node's tracker and
    /// its HTTP file URL as a BEP 19 web seed.
    fn torrent_sources(
        &self,
        f: &StoredFile,
        req: &TorrentRequest,
    ) -> Result<crate::bittorrent::torrent::Sources, FsError> {
        let mut sources = crate::bittorrent::torrent::Sources::default();
        if req.no_tracker && req.no_web_seed {
            return Ok(sources);
        }
        if self.config.http == HttpMode::Off {
            return Err(FsError::NoHttp);
        }
        let base = self.public_http().ok_or_else(|| FsError::NoPublicHost {
            listen: self
                .http_addr
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default(),
        })?;
        if !req.no_tracker {
            sources.announce = Some(format!("{base}/announce"));
        }
        if !req.no_web_seed && (self.config.http == HttpMode::Free || f.price_per_mib == 0) {
            sources
                .web_seeds
                .push(format!("{base}/file/{}/", f.meta.id));
        }
        Ok(sources)
    }

    /// A `.torrent` (and magnet link) for a file held here.
    pub fn torrent(&self, id: &FileId, req: &TorrentRequest) -> Result<TorrentView, FsError> {
        let f = self.store.file(id).ok_or(StoreError::Unknown(*id))?;
        let sources = self.torrent_sources(&f, req)?;
        Ok(TorrentView {
            id: *id,
            name: f.meta.name().to_string(),
            torrent: hex::encode(crate::bittorrent::torrent::torrent_file(&f.meta, &sources)),
            magnet: crate::bittorrent::torrent::magnet(&f.meta, &sources),
            announce: sources.announce,
            web_seeds: sources.web_seeds,
        })
    }

    /// Adds a file or directory and seeds it; its progress through
    /// [`Fs::adding`] meanwhile.
    pub async fn add(self: &Arc<Self>, req: AddRequest) -> Result<Added, FsError> {
        let encryption = match (req.encrypt, &req.key) {
            (false, Some(_)) => {
                return Err(FsError::Invalid("--key needs --encrypt".into()));
            }
            (false, None) => None,
            (true, key) => {
                let salt = crypt::random_salt();
                let key = match key {
                    Some(k) => FileKey::parse(k)?,
                    None => FileKey::derive(&self.key, &salt),
                };
                Some(Encryption { key, salt })
            }
        };
        let key_hex = encryption.as_ref().map(|e| e.key.hex());
        let price = req.price_per_mib.unwrap_or(self.config.price_per_mib);
        let me = self.clone();
        let path = req.path.clone();
        let added = tokio::task::spawn_blocking(move || {
            let mut report = |done, total| {
                me.adding_lock().insert(
                    path.clone(),
                    AddingView {
                        path: path.clone(),
                        done,
                        total,
                    },
                );
            };
            let added = me
                .store
                .add_path_with(&path, encryption, price, &mut report);
            me.adding_lock().remove(&path);
            added
        })
        .await;
        let meta = added.map_err(|e| FsError::Invalid(format!("add interrupted: {e}")))??;
        self.store.set_price(&meta.id, price)?;
        self.store.set_seeding(&meta.id, true)?;
        self.net.provide(&meta.id.0);
        tracing::info!(id = %meta.id, name = meta.name(), length = meta.length(), "added");
        Ok(Added {
            id: meta.id,
            magnet: meta.magnet(),
            name: meta.name().to_string(),
            length: meta.length(),
            parts: meta.piece_count(),
            price_per_mib: price,
            key: key_hex,
            seeding: true,
        })
    }

    /// The adds in progress.
    pub fn adding(&self) -> Vec<AddingView> {
        self.adding_lock().values().cloned().collect()
    }

    /// Starts (or joins) a download; progress through [`Fs::transfer`].
    pub fn get(self: &Arc<Self>, req: GetRequest) -> Result<TransferView, FsError> {
        let mut transfers = self.transfers();
        if let Some(t) = transfers.get(&req.id)
            && t.running()
        {
            return Ok(t.view());
        }
        if let Some(k) = &req.key {
            FileKey::parse(k)?;
        }
        let t = Arc::new(Transfer::new(req.id));
        transfers.insert(req.id, t.clone());
        tokio::spawn(crate::download::run(self.clone(), t.clone(), req));
        Ok(t.view())
    }

    pub fn transfer(&self, id: &FileId) -> Result<TransferView, FsError> {
        self.transfers()
            .get(id)
            .map(|t| t.view())
            .ok_or(FsError::NoTransfer(*id))
    }

    pub fn list(&self) -> Vec<FileView> {
        // One lock of the served book for the whole list (a scrape lists
        // every file).
        let served = self.served();
        self.store
            .list()
            .iter()
            .map(file_view)
            .map(|v| with_served(&served, v))
            .collect()
    }

    pub fn file(&self, id: &FileId) -> Result<FileView, FsError> {
        Ok(self.with_served(file_view(
            &self.store.file(id).ok_or(StoreError::Unknown(*id))?,
        )))
    }

    /// What is known here and what every seeder on the network offers.
    pub async fn info(&self, id: FileId) -> Result<InfoView, FsError> {
        let local = self.store.file(&id);
        let peers = self
            .net
            .providers(&id.0)
            .await
            .map_err(|e| FsError::Net(e.to_string()))?;
        let asks = peers.into_iter().map(|peer| async move {
            let address = zennet_net::peer_address(&peer);
            match crate::download::hello(self, peer, id).await {
                Ok(mut s) => {
                    let have = s.offer.have.iter().map(|b| b.count_ones()).sum();
                    let view = OfferView {
                        peer: peer.to_string(),
                        address,
                        price_per_mib: s.offer.price_per_mib,
                        have_parts: have,
                        protocols: s.offer.protocols.clone(),
                        error: None,
                    };
                    s.bye().await;
                    view
                }
                Err(e) => OfferView {
                    peer: peer.to_string(),
                    address,
                    price_per_mib: 0,
                    have_parts: 0,
                    protocols: vec![],
                    error: Some(e),
                },
            }
        });
        let seeders = futures::future::join_all(asks).await;
        Ok(InfoView {
            id,
            local: local.as_ref().map(|f| self.with_served(file_view(f))),
            seeders,
        })
    }

    /// Starts or stops seeding a file held here.
    pub fn seed(&self, id: &FileId, on: bool, price: Option<Amount>) -> Result<FileView, FsError> {
        if let Some(p) = price {
            self.store.set_price(id, p)?;
        }
        let f = self.store.set_seeding(id, on)?;
        if on {
            self.net.provide(&id.0);
        } else {
            self.net.unprovide(&id.0);
            self.bt.forget(id);
        }
        Ok(self.with_served(file_view(&f)))
    }

    pub fn remove(&self, id: &FileId) -> Result<(), FsError> {
        if self.transfers().get(id).is_some_and(|t| t.running()) {
            return Err(FsError::Busy(*id));
        }
        // The store refuses a pinned file: only then stop announcing it.
        self.store.remove(id)?;
        self.net.unprovide(&id.0);
        self.bt.forget(id);
        self.transfers().remove(id);
        Ok(())
    }

    /// Winds down every channel to a seeder now (a step: settle, or
    /// reclaim once settled). Refused while a download runs, since its
    /// seeders are paid through those channels.
    pub fn settle(&self) -> Result<Vec<WindDownView>, FsError> {
        let running = self.transfers().values().filter(|t| t.running()).count();
        if running > 0 {
            return Err(FsError::DownloadsRunning(running));
        }
        self.wind_down_idle(Duration::ZERO)
    }

    /// One wind-down step for channels idle for `idle` (the node's timer).
    pub fn wind_down_idle(&self, idle: Duration) -> Result<Vec<WindDownView>, FsError> {
        Ok(self
            .payer
            .wind_down_idle(idle)?
            .into_iter()
            .map(|w| WindDownView {
                seeder: w.seeder,
                channel: w.channel,
                paid: w.paid,
                tx: w.tx,
            })
            .collect())
    }

    pub fn status(&self) -> Result<StatusView, FsError> {
        let usage = self.store.usage()?;
        let files = self.store.list();
        let accounts: Vec<AccountView> = self
            .accounts()
            .iter()
            .map(|((address, role), a)| AccountView {
                address: *address,
                role: match role {
                    Role::Earned => "earned".into(),
                    Role::Spent => "spent".into(),
                },
                parts: a.parts,
                bytes: a.bytes,
                owed: a.owed,
                paid: a.paid,
            })
            .collect();
        let sum = |role: &str| {
            accounts
                .iter()
                .filter(|a| a.role == role)
                .map(|a| a.paid)
                .sum()
        };
        let mut transfers: Vec<TransferView> =
            self.transfers().values().map(|t| t.view()).collect();
        transfers.sort_by_key(|t| t.started_ms);
        Ok(StatusView {
            http: self
                .http_addr
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            http_mode: self.config.http.to_string(),
            used_bytes: usage.used_bytes,
            max_bytes: usage.max_bytes,
            files: files.len(),
            seeding: files.iter().filter(|f| f.seeding).count(),
            earned: sum("earned"),
            spent: sum("spent"),
            bittorrent: Some(self.bt.view(&files)),
            accounts,
            transfers,
        })
    }

    /// The account with `address` in `role`.
    pub fn account(&self, address: Address, role: Role) -> Account {
        self.accounts()
            .get(&(address, role))
            .cloned()
            .unwrap_or_default()
    }

    /// Adds to an account; persisted every 16 parts and when `flush`.
    pub(crate) fn book(&self, address: Address, role: Role, delta: Account, flush: bool) {
        let snapshot = {
            let mut accounts = self.accounts();
            let a = accounts.entry((address, role)).or_default();
            a.add(&delta);
            (flush || (delta.parts > 0 && a.parts.is_multiple_of(16))).then(|| a.clone())
        };
        if let Some(a) = snapshot
            && let Err(e) = self.store.save_account(&address, role == Role::Earned, &a)
        {
            tracing::warn!(%address, error = %e, "cannot save an account");
        }
    }

    /// Adds to what file `id` earned. Payment arrives per channel, not per
    /// file: a voucher taken in a session for `id` is booked to `id`, which
    /// is exact unless a downloader settles an older file's debt there.
    /// Persisted every 16 parts and by [`Fs::flush_file`].
    pub(crate) fn book_file(&self, id: FileId, delta: Account) {
        let snapshot = {
            let mut served = self.served();
            let a = served.entry(id).or_default();
            a.add(&delta);
            (delta.parts > 0 && a.parts.is_multiple_of(16)).then(|| a.clone())
        };
        if let Some(a) = snapshot
            && let Err(e) = self.store.save_served(&id, &a)
        {
            tracing::warn!(file = %id, error = %e, "cannot save what a file earned");
        }
    }

    fn with_served(&self, view: FileView) -> FileView {
        with_served(&self.served(), view)
    }

    /// Saves what file `id` earned, if it earned anything (a session that
    /// only fetched metainfo leaves no row).
    pub(crate) fn flush_file(&self, id: FileId) {
        let a = self.served().get(&id).cloned();
        if let Some(a) = a
            && let Err(e) = self.store.save_served(&id, &a)
        {
            tracing::warn!(file = %id, error = %e, "cannot save what a file earned");
        }
    }

    fn served(&self) -> MutexGuard<'_, HashMap<FileId, Account>> {
        self.served.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn flush_account(&self, address: Address, role: Role) {
        self.book(address, role, Account::default(), true);
    }

    fn accounts(&self) -> MutexGuard<'_, HashMap<(Address, Role), Account>> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn adding_lock(&self) -> MutexGuard<'_, HashMap<PathBuf, AddingView>> {
        self.adding.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn transfers(&self) -> MutexGuard<'_, HashMap<FileId, Arc<Transfer>>> {
        self.transfers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn with_served(served: &HashMap<FileId, Account>, mut view: FileView) -> FileView {
    if let Some(a) = served.get(&view.id) {
        view.served_parts = a.parts;
        view.served_bytes = a.bytes;
        view.served_value = a.owed;
        view.earned = a.paid;
    }
    view
}

pub(crate) fn file_view(f: &StoredFile) -> FileView {
    let m = &f.meta;
    FileView {
        id: m.id,
        name: m.name().to_string(),
        length: m.length(),
        parts: m.piece_count(),
        have_parts: f.have.count(),
        complete: f.complete(),
        seeding: f.seeding,
        encrypted: f.encrypted || crypt::salt_of(m.name()).is_some(),
        price_per_mib: f.price_per_mib,
        sha256: hex::encode(m.sha256),
        magnet: m.magnet(),
        served_parts: 0,
        served_bytes: 0,
        served_value: 0,
        earned: 0,
        files: m
            .spans()
            .into_iter()
            .filter(|s| !s.path.is_empty())
            .map(|s| FileEntryView {
                path: s.path.join("/"),
                length: s.length,
            })
            .collect(),
    }
}
