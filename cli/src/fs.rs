//! The file network in the node and the CLI: the `[fs]` config section,
//! starting [`zennet_fs::Fs`] with its payment channels and HTTP listener,
//! and the `zennet fs …` commands that call the node's `/v1/fs/` routes
//! (`api/fs.rs`).
//!
//! The file network's channels are kept in their own `fs/pay.db`, apart
//! from the VM market's: a downloader reuses one channel per seeder
//! across files, and must never pick (and top up) a channel a VM
//! contract opened to the same node, which that contract's end closes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use zennet_chain::SecretKey;
use zennet_chain::codec::amount_str;
use zennet_fs::api::{
    AddRequest, Added, AddingView, FileView, GetRequest, InfoView, SeedRequest, StatusView,
    TorrentRequest, TorrentView, TransferState, TransferView, WindDownView,
};
use zennet_fs::channels::{ChannelTerms, Channels};
use zennet_fs::crypt::{self, FileKey, Sealer};
use zennet_fs::{FileId, Fs, FsConfig, HttpMode};
use zennet_net::NetHandle;

use crate::client::Client;
use crate::commands::Output;
use crate::home::Home;
use crate::ledger::NodeLedger;

/// `[fs]` in config.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsSection {
    /// Store quota in GiB (parts held plus downloads in progress).
    pub max_gib: f64,
    /// HTTP listener for `GET /file/{id}` (port 0: any free port; see `fs status`).
    pub http_listen: String,
    /// Who HTTP serves: `free` (anyone), `paid` (requests carrying a voucher), `off`.
    pub http: HttpMode,
    /// Price of files added without `--price`, base units per MiB.
    #[serde(with = "amount_str")]
    pub price_per_mib: u128,
    /// Highest price per MiB `fs get` pays without `--max-price`.
    #[serde(with = "amount_str")]
    pub max_price_per_mib: u128,
    /// Parts a downloader may owe before it is cut off.
    pub credit_parts: u32,
    /// Least deposit of a channel this node opens (or tops up) to pay a
    /// seeder; it is reused across files until spent.
    #[serde(with = "amount_str")]
    pub channel_deposit: u128,
    /// Parts in flight per seeder.
    pub window: usize,
    /// Upload cap over the part protocol in MiB/s (0: none).
    pub upload_limit_mib_s: f64,
    /// Wind down a channel to a seeder after this many seconds without a
    /// voucher on it (0: only `fs settle` or expiry): the seeder claims
    /// what it was paid and the rest of the deposit comes back.
    pub settle_idle_secs: u64,
    /// BitTorrent peer listener for stock clients (`off`: none; then
    /// `fs get` takes no parts from BitTorrent peers either). Loopback
    /// and any free port by default, like `http_listen`: the tracker and
    /// the web seed on the HTTP listener tell clients where it is, so
    /// no fixed port (6881) is needed, and a node exposes nothing to the
    /// network until its operator opens both listeners.
    pub bt_listen: String,
    /// BitTorrent peers connected at once, at most (inbound and dialled).
    pub bt_max_peers: usize,
    /// The host name or IP clients reach this node by, for the URLs in
    /// offers and `.torrent` files (default: the listeners' own IP; needed
    /// when they listen on 0.0.0.0).
    pub public_host: Option<String>,
    /// `[fs.store]`: paid replicas (holding others' files; challenging
    /// this node's own replicas).
    pub store: zennet_fs::storage::StoreConfig,
}

impl Default for FsSection {
    fn default() -> Self {
        FsSection {
            max_gib: 10.0,
            http_listen: "127.0.0.1:0".into(),
            http: HttpMode::Free,
            price_per_mib: 0,
            max_price_per_mib: 0,
            credit_parts: 64,
            channel_deposit: 0,
            window: 16,
            upload_limit_mib_s: 0.0,
            settle_idle_secs: 600,
            bt_listen: "127.0.0.1:0".into(),
            bt_max_peers: 50,
            public_host: None,
            store: Default::default(),
        }
    }
}

#[derive(Subcommand)]
pub enum FsCmd {
    /// Add a file or directory to the store and seed it; prints its id
    /// (the BitTorrent info-hash) and a magnet link.
    Add {
        path: PathBuf,
        /// Encrypt each part (AES-256-GCM) before hashing; seeders hold ciphertext only.
        #[arg(long)]
        encrypt: bool,
        /// With --encrypt: this file key (64 hex digits) instead of one derived from your key.
        #[arg(long, requires = "encrypt")]
        key: Option<String>,
        /// Price in base units per MiB (default: [fs] price_per_mib).
        #[arg(long)]
        price: Option<String>,
    },
    /// Download a file by id or magnet link from every seeder at once,
    /// paying each per verified part.
    Get {
        id: String,
        /// Output path (default: ./NAME).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Highest price per MiB to pay (default: [fs] max_price_per_mib).
        #[arg(long)]
        max_price: Option<String>,
        /// The file key of an encrypted file (default: derived from your key).
        #[arg(long)]
        key: Option<String>,
        /// Also ask this tracker for stock BitTorrent seeders (repeatable;
        /// the Zennet seeders' trackers are asked anyway).
        #[arg(long = "tracker", value_name = "URL")]
        trackers: Vec<String>,
        /// Also fetch from this BEP 19 web seed (repeatable).
        #[arg(long = "web-seed", value_name = "URL")]
        web_seeds: Vec<String>,
        /// Take parts only over this protocol: zennet (the part protocol,
        /// paid), bittorrent or http (repeatable; default: all).
        #[arg(long = "protocol", value_name = "NAME", value_parser = ["zennet", "bittorrent", "http"])]
        protocols: Vec<String>,
    },
    /// Write a .torrent of a file held here: this node's tracker as
    /// `announce`, its HTTP file URL as a BEP 19 web seed (`url-list`).
    /// Stock clients (aria2c, transmission) download it from this node.
    Torrent {
        id: String,
        /// Where to write it (default: ./NAME.torrent).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Leave out the tracker (clients then use the web seed only).
        #[arg(long)]
        no_tracker: bool,
        /// Leave out the web seed (clients then use BitTorrent peers only).
        #[arg(long)]
        no_web_seed: bool,
    },
    /// A magnet link of a file held here, with this node's tracker and
    /// web seed.
    Magnet {
        id: String,
        #[arg(long)]
        no_tracker: bool,
        #[arg(long)]
        no_web_seed: bool,
    },
    /// Files in this node's store.
    Ls,
    /// A file's metainfo here and what each seeder on the network offers.
    Info { id: String },
    /// Seed a file held here (announce it, serve its parts), or stop.
    Seed {
        id: String,
        #[arg(long)]
        stop: bool,
        /// New price in base units per MiB.
        #[arg(long)]
        price: Option<String>,
    },
    /// Remove a file from the store (parts no other file uses are deleted).
    Rm { id: String },
    /// Transfers, what was earned and spent, the store and the HTTP address.
    Status,
    /// A link that downloads the file in a web browser from this node's
    /// HTTP file server (and the nodes given with --node): the page checks
    /// every part and decrypts in the browser. The key rides in the link's
    /// #fragment, which browsers never send to a server.
    Link {
        id: String,
        /// The file key of an encrypted file (default: derived from your key).
        #[arg(long)]
        key: Option<String>,
        /// Another node serving the file over HTTP (http://host:port); repeatable.
        #[arg(long = "node", value_name = "URL")]
        nodes: Vec<String>,
        /// This node's file server as browsers reach it (default: its listen address).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// The page saves the file as soon as it is assembled.
        #[arg(long)]
        save: bool,
    },
    /// Wind down the channels to seeders now (no download may be running):
    /// each seeder claims what it was paid, the rest of each deposit comes
    /// back after the challenge period (run again then to reclaim it).
    Settle,
    /// Pay nodes to keep replicas of a file (announced on chain), each
    /// challenged at random for Merkle proofs and paid per passed challenge.
    Store(crate::storage::StoreArgs),
    /// This node's storage tasks with their replicas (holder, challenges
    /// passed and failed, paid, state), and the replicas it holds for others.
    Replicas { id: Option<String> },
    /// Challenge every replica of a file now.
    Prove { id: String },
}

/// Starts the file service and its HTTP listener.
pub async fn start(
    home: &Home,
    net: &NetHandle,
    ledger: Arc<NodeLedger>,
    key: &SecretKey,
    chain_id: u64,
) -> Result<Arc<Fs>> {
    let section = home.config()?.fs;
    let mut config = FsConfig::new(
        home.fs_dir(),
        chain_id,
        zennet_chain::Ledger::genesis_hash(&*ledger),
    );
    config.max_bytes = (section.max_gib * (1u64 << 30) as f64) as u64;
    config.price_per_mib = section.price_per_mib;
    config.max_price_per_mib = section.max_price_per_mib;
    config.credit_parts = section.credit_parts.max(1);
    config.window = section.window.max(1);
    config.http = section.http;
    config.upload_limit = (section.upload_limit_mib_s * (1u64 << 20) as f64) as u64;
    config.bt_max_peers = section.bt_max_peers.max(1);
    config.public_host = section.public_host.clone();
    std::fs::create_dir_all(home.fs_dir())
        .with_context(|| format!("cannot create {}", home.fs_dir().display()))?;
    let pay_store = zennet_pay::SqliteStore::open(&home.fs_dir().join("pay.db"))
        .context("cannot open the file network's payment store")?;
    let terms = ChannelTerms {
        min_deposit: section.channel_deposit,
        ..ChannelTerms::default()
    };
    let mut tip = zennet_chain::Ledger::tip(&*ledger);
    let channels = Arc::new(Channels::new(
        ledger.clone(),
        key.clone(),
        Arc::new(pay_store),
        terms,
    ));
    let fs = Fs::start(
        config,
        net.clone(),
        key.clone(),
        channels.clone(),
        channels.clone(),
    )
    .context("cannot start the file service")?;
    // The file service only refers to the storage market (it refers
    // back); the task below owns it for the node's lifetime.
    let storage =
        zennet_fs::storage::Storage::start(fs.clone(), ledger.clone(), section.store.clone())
            .context("cannot start the storage market")?;
    // Held vouchers are claimed when a payer settles or expiry nears, and
    // looked at on every block: a settling channel is claimable only for
    // its challenge period, which on a fast chain is a few seconds.
    // Channels idle for settle_idle_secs are wound down, step by step.
    let idle = Duration::from_secs(section.settle_idle_secs);
    let winding = fs.clone();
    tokio::spawn(async move {
        let _storage = storage;
        const AT_LEAST: Duration = Duration::from_secs(5);
        let mut wound_at = tokio::time::Instant::now();
        loop {
            if let Ok(Err(_)) = tokio::time::timeout(AT_LEAST, tip.changed()).await {
                // The chain is gone: the node is shutting down.
                tokio::time::sleep(AT_LEAST).await;
            }
            if let Err(e) = channels.claim_due() {
                tracing::warn!(error = %e, "claiming file vouchers failed");
            }
            if !idle.is_zero() && wound_at.elapsed() >= AT_LEAST {
                wound_at = tokio::time::Instant::now();
                if let Err(e) = winding.wind_down_idle(idle) {
                    tracing::warn!(error = %e, "winding down idle channels failed");
                }
            }
        }
    });
    if section.http != HttpMode::Off {
        let listener = tokio::net::TcpListener::bind(&section.http_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for HTTP file serving; change [fs] http_listen",
                    section.http_listen
                )
            })?;
        let addr = listener.local_addr()?;
        fs.set_http_addr(Some(addr.to_string()));
        tracing::info!(%addr, mode = %section.http, "serving files over HTTP");
        // The tracker needs each announcing peer's address.
        let router = zennet_fs::http::router(fs.clone())
            .merge(zennet_fs::bittorrent::router(fs.clone()))
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "HTTP file server failed");
            }
        });
    }
    if section.bt_listen != "off" {
        let listener = tokio::net::TcpListener::bind(&section.bt_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for BitTorrent peers; change [fs] bt_listen (or set it to \"off\")",
                    section.bt_listen
                )
            })?;
        zennet_fs::bittorrent::listen(&fs, listener)?;
    }
    Ok(fs)
}

/// Runs a `zennet fs …` command against the home's running node.
pub async fn run(home: &Home, cmd: FsCmd, out: Output) -> Result<()> {
    // Arguments are checked before the node is asked anything.
    let client = || -> Result<Client> { home.client() };
    match cmd {
        FsCmd::Add {
            path,
            encrypt,
            key,
            price,
        } => {
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let req = AddRequest {
                path,
                encrypt,
                key,
                price_per_mib: price.as_deref().map(amount).transpose()?,
            };
            let client = client()?;
            let added = add_with_progress(&client, &req, progress_bar(out)).await?;
            out.print(&added, || {
                let mut s = format!(
                    "id     {}\nname   {} ({} bytes, {} parts)\nprice  {} per MiB\nmagnet {}",
                    added.id,
                    added.name,
                    added.length,
                    added.parts,
                    added.price_per_mib,
                    added.magnet
                );
                if let Some(k) = &added.key {
                    s.push_str(&format!(
                        "\nkey    {k}  (share it with who may read the file)"
                    ));
                }
                s
            });
        }
        FsCmd::Get {
            id,
            out: path,
            max_price,
            key,
            trackers,
            web_seeds,
            protocols,
        } => {
            let file = FileId::parse(&id)?;
            let max = max_price.as_deref().map(amount).transpose()?;
            let cwd = std::env::current_dir()?;
            let out_path = path.map(|p| if p.is_absolute() { p } else { cwd.join(p) });
            if let Some(p) = &out_path
                && p.symlink_metadata().is_ok()
            {
                bail!("{} exists; choose another output with -o", p.display());
            }
            let req = GetRequest {
                id: file,
                out: out_path,
                dir: cwd,
                max_price_per_mib: max,
                key,
                trackers,
                web_seeds,
                protocols,
                max_length: None,
            };
            let client = client()?;
            let mut view: TransferView = client.post("/v1/fs/get", &req).await?;
            let bar = progress_bar(out);
            loop {
                if let Some(bar) = &bar {
                    bar.set_length(view.length.max(1));
                    bar.set_position(view.have_bytes);
                    bar.set_message(format!(
                        "{} seeders, {:.1} MiB/s",
                        view.seeders.iter().filter(|s| s.state == "using").count(),
                        view.rate / (1u64 << 20) as f64
                    ));
                }
                if !matches!(
                    view.state,
                    TransferState::Finding | TransferState::Downloading
                ) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                view = client.get(&format!("/v1/fs/transfers/{file}")).await?;
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if view.state == TransferState::Failed {
                bail!("{}", view.error.unwrap_or_else(|| "download failed".into()));
            }
            out.print(&view, || {
                let used = view.seeders.iter().filter(|s| s.parts > 0).count();
                let mut by: Vec<(String, u32)> = Vec::new();
                for s in view.seeders.iter().filter(|s| s.parts > 0) {
                    match by.iter_mut().find(|(p, _)| *p == s.protocol) {
                        Some((_, n)) => *n += s.parts,
                        None => by.push((s.protocol.clone(), s.parts)),
                    }
                }
                let by = by
                    .iter()
                    .map(|(p, n)| format!("{n} {p}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "got {} ({} bytes) → {}\n{} parts fetched from {used} sources ({by}), {} resumed, {:.1} MiB/s, paid {}",
                    view.name,
                    view.length,
                    view.output.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    view.fetched_parts,
                    view.resumed_parts,
                    view.rate / (1u64 << 20) as f64,
                    view.spent
                )
            });
        }
        FsCmd::Torrent {
            id,
            out: path,
            no_tracker,
            no_web_seed,
        } => {
            let t = torrent_of(&client()?, &id, no_tracker, no_web_seed).await?;
            let path = path.unwrap_or_else(|| PathBuf::from(format!("{}.torrent", t.name)));
            let bytes =
                hex::decode(&t.torrent).context("the node sent a torrent that is not hex")?;
            write_new(&path, &bytes)?;
            out.print(&t, || {
                format!(
                    "wrote {} ({} bytes)\nannounce {}\nweb seed {}",
                    path.display(),
                    bytes.len(),
                    t.announce.as_deref().unwrap_or("-"),
                    if t.web_seeds.is_empty() {
                        "-".to_string()
                    } else {
                        t.web_seeds.join(" ")
                    }
                )
            });
        }
        FsCmd::Magnet {
            id,
            no_tracker,
            no_web_seed,
        } => {
            let t = torrent_of(&client()?, &id, no_tracker, no_web_seed).await?;
            out.print(&t, || t.magnet.clone());
        }
        FsCmd::Ls => {
            let files: Vec<FileView> = client()?.get("/v1/fs/files").await?;
            out.print(&files, || {
                if files.is_empty() {
                    return "no files".into();
                }
                files
                    .iter()
                    .map(|f| {
                        format!(
                            "{}  {:>12}  {:>5}/{:<5} {:<8} served {:>6} parts earned {:<8} {}",
                            f.id,
                            f.length,
                            f.have_parts,
                            f.parts,
                            if f.seeding { "seeding" } else { "-" },
                            f.served_parts,
                            f.earned,
                            f.name
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        FsCmd::Info { id } => {
            let file = FileId::parse(&id)?;
            let info: InfoView = client()?.get(&format!("/v1/fs/files/{file}/info")).await?;
            out.print(&info, || {
                let mut s = match &info.local {
                    Some(f) => format!(
                        "{}  {} ({} bytes, {} parts, {} held here)",
                        f.id, f.name, f.length, f.parts, f.have_parts
                    ),
                    None => format!("{}  (metainfo not held here)", info.id),
                };
                s.push_str(&format!("\n{} seeders", info.seeders.len()));
                for o in &info.seeders {
                    match &o.error {
                        Some(e) => s.push_str(&format!("\n  {}  unusable: {e}", o.peer)),
                        None => s.push_str(&format!(
                            "\n  {}  {} per MiB  {} parts  [{}]",
                            o.peer,
                            o.price_per_mib,
                            o.have_parts,
                            o.protocols.join(",")
                        )),
                    }
                }
                s
            });
        }
        FsCmd::Seed { id, stop, price } => {
            let file = FileId::parse(&id)?;
            let req = SeedRequest {
                seeding: !stop,
                price_per_mib: price.as_deref().map(amount).transpose()?,
            };
            let f: FileView = client()?
                .post(&format!("/v1/fs/files/{file}/seed"), &req)
                .await?;
            out.print(&f, || {
                format!(
                    "{} {} at {} per MiB",
                    if f.seeding { "seeding" } else { "not seeding" },
                    f.id,
                    f.price_per_mib
                )
            });
        }
        FsCmd::Rm { id } => {
            let file = FileId::parse(&id)?;
            let v: serde_json::Value = client()?
                .post(&format!("/v1/fs/files/{file}/rm"), &serde_json::json!({}))
                .await?;
            out.print(&v, || format!("removed {file}"));
        }
        FsCmd::Settle => {
            let v: Vec<WindDownView> = client()?
                .post("/v1/fs/settle", &serde_json::json!({}))
                .await?;
            out.print(&v, || {
                if v.is_empty() {
                    return "nothing to wind down".to_string();
                }
                v.iter()
                    .map(|w| {
                        format!(
                            "{} to {}: {} paid, tx {}",
                            w.channel, w.seeder, w.paid, w.tx
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        FsCmd::Store(args) => crate::storage::store(home, args, out).await?,
        FsCmd::Replicas { id } => crate::storage::replicas(home, id, out).await?,
        FsCmd::Prove { id } => crate::storage::prove(home, id, out).await?,
        FsCmd::Link {
            id,
            key,
            nodes,
            url,
            save,
        } => {
            let file = FileId::parse(&id)?;
            let key = key.as_deref().map(FileKey::parse).transpose()?;
            let nodes = nodes
                .iter()
                .map(|n| node_url(n))
                .collect::<Result<Vec<_>>>()?;
            let url = url.as_deref().map(node_url).transpose()?;
            let link = link(home, &client()?, file, key, nodes, url, save).await?;
            out.print(&link, || match &link.key {
                Some(_) => format!(
                    "{}\n(the link carries the file key: share it only with who may read the file)",
                    link.url
                ),
                None => link.url.clone(),
            });
        }
        FsCmd::Status => {
            let s: StatusView = client()?.get("/v1/fs/status").await?;
            out.print(&s, || {
                let mut t = format!(
                    "store   {} of {} MiB, {} files, {} seeding\nhttp    {} ({})\nearned  {}\nspent   {}",
                    s.used_bytes >> 20,
                    s.max_bytes >> 20,
                    s.files,
                    s.seeding,
                    s.http.clone().unwrap_or_else(|| "off".into()),
                    s.http_mode,
                    s.earned,
                    s.spent
                );
                if let Some(bt) = &s.bittorrent {
                    t.push_str(&format!(
                        "\nbittorrent {} ({} of {} peers, {} MiB served, {} dropped)",
                        bt.listen.clone().unwrap_or_else(|| "off".into()),
                        bt.peers,
                        bt.max_peers,
                        bt.served_bytes >> 20,
                        bt.dropped
                    ));
                }
                for tr in &s.transfers {
                    t.push_str(&format!(
                        "\n{:?} {} {}/{} parts {:.1} MiB/s",
                        tr.state,
                        tr.id,
                        tr.have_parts,
                        tr.parts,
                        tr.rate / (1u64 << 20) as f64
                    ));
                }
                for a in &s.accounts {
                    t.push_str(&format!(
                        "\n{} {} parts {} owed {} paid {}",
                        a.role, a.address, a.parts, a.owed, a.paid
                    ));
                }
                t
            });
        }
    }
    Ok(())
}

/// The node's `.torrent` and magnet link of file `id`.
async fn torrent_of(
    client: &Client,
    id: &str,
    no_tracker: bool,
    no_web_seed: bool,
) -> Result<TorrentView> {
    let file = FileId::parse(id)?;
    let req = TorrentRequest {
        no_tracker,
        no_web_seed,
    };
    client
        .post(&format!("/v1/fs/files/{file}/torrent"), &req)
        .await
}

/// Writes `bytes` to a new file (an existing one is kept).
fn write_new(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (choose another with -o)", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What `fs link` prints.
#[derive(Serialize)]
struct LinkView {
    url: String,
    id: FileId,
    encrypted: bool,
    key: Option<String>,
}

/// The `/app#ID[:KEY][&node=URL]…[&save]` link (format: `zennet_fs::app`).
/// An encrypted file's key must open its first part here, so a link that
/// cannot work is refused now rather than in the reader's browser.
async fn link(
    home: &Home,
    client: &Client,
    file: FileId,
    key: Option<FileKey>,
    nodes: Vec<String>,
    url: Option<String>,
    save: bool,
) -> Result<LinkView> {
    let f: FileView = client.get(&format!("/v1/fs/files/{file}")).await?;
    let status: StatusView = client.get("/v1/fs/status").await?;
    let local = status.http.as_deref().map(local_url).context(
        "this node does not serve files over HTTP ([fs] http = \"off\"): set [fs] http = \"free\"",
    )?;
    let key = match (crypt::salt_of(&f.name), key) {
        (None, Some(_)) => bail!("{file} is not encrypted; drop --key"),
        (None, None) => None,
        (Some(salt), key) => {
            let key = match key {
                Some(k) => k,
                None => FileKey::derive(&home.key()?, &salt),
            };
            let resp = reqwest::get(format!("{local}/file/{file}/chunk/0"))
                .await
                .with_context(|| format!("cannot read {file}'s first part from {local}"))?;
            if !resp.status().is_success() {
                bail!(
                    "{local} does not serve {file}'s first part ({}): the browser could not either",
                    resp.status()
                );
            }
            let mut part = resp.bytes().await?.to_vec();
            if !Sealer::new(&key, &salt).open(0, &mut part) {
                bail!("this key does not open {file} (added with --key? pass that key with --key)");
            }
            Some(key.hex())
        }
    };
    let base = url.unwrap_or(local);
    let mut fragment = file.hex();
    if let Some(k) = &key {
        fragment.push(':');
        fragment.push_str(k);
    }
    for n in nodes.iter().filter(|n| **n != base) {
        // The page splits fields on '&' and percent-decodes each URL.
        fragment.push_str("&node=");
        fragment.push_str(&n.replace('%', "%25").replace('&', "%26"));
    }
    if save {
        fragment.push_str("&save");
    }
    Ok(LinkView {
        url: format!("{base}/app#{fragment}"),
        id: file,
        encrypted: key.is_some(),
        key,
    })
}

/// A node's file server URL as `http(s)://host[:port][/prefix]`.
fn node_url(s: &str) -> Result<String> {
    let u =
        reqwest::Url::parse(s).with_context(|| format!("{s:?} is not a URL (http://host:port)"))?;
    if !matches!(u.scheme(), "http" | "https")
        || u.query().is_some()
        || u.fragment().is_some()
        || !u.username().is_empty()
    {
        bail!("{s:?} is not a node's file server URL (http://host:port)");
    }
    Ok(u.as_str().trim_end_matches('/').to_string())
}

/// This node's file server URL from its listen address (an unspecified
/// address is reached on loopback).
fn local_url(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(mut a) if a.ip().is_unspecified() => {
            a.set_ip(match a {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
            format!("http://{a}")
        }
        _ => format!("http://{addr}"),
    }
}

fn amount(s: &str) -> Result<u128> {
    amount_str::parse_amount(s).map_err(anyhow::Error::msg)
}

/// Adds through the node, drawing how far its hashing is on `bar`.
async fn add_with_progress(
    client: &Client,
    req: &AddRequest,
    bar: Option<indicatif::ProgressBar>,
) -> Result<Added> {
    let post = client.post("/v1/fs/files", req);
    let Some(bar) = bar else { return post.await };
    bar.set_message(format!("adding {}", req.path.display()));
    tokio::pin!(post);
    let added = loop {
        tokio::select! {
            added = &mut post => break added,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                // The bar is a courtesy: a failed poll leaves it as it was.
                if let Ok(adds) = client.get::<Vec<AddingView>>("/v1/fs/adding").await
                    && let Some(a) = adds.iter().find(|a| a.path == req.path)
                {
                    bar.set_length(a.total.max(1));
                    bar.set_position(a.done);
                }
            }
        }
    };
    bar.finish_and_clear();
    added
}

fn progress_bar(out: Output) -> Option<indicatif::ProgressBar> {
    if out.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .expect("a valid template"),
    );
    Some(bar)
}
