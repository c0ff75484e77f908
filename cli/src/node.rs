//! The node runtime: the chain behind a lock, the HTTP API, miner threads,
//! sync (with snapshot fast sync for a new home), and a reporter that prints
//! each new block with the balances it touched.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use zennet_chain::seal::Ethash;
use zennet_chain::{Address, Block, Chain, ChainError, Hash, ImportOutcome, SignedTx};
use zennet_net::{Multiaddr, NetConfig, NetHandle, Network};

use crate::api;
use crate::home::{Home, NodeFile};

/// Shared by the API handlers, miners and reporter.
pub struct Node {
    chain: Mutex<Chain>,
    /// The tip's height, for services that react to new blocks.
    tip: tokio::sync::watch::Sender<u64>,
    /// Bumped whenever the tip or the mempool changes, so miners rebuild
    /// their templates and the reporter wakes up.
    generation: AtomicU64,
    mining: AtomicBool,
    shutdown: AtomicBool,
    net: Option<NetHandle>,
    vms: std::sync::OnceLock<Arc<zennet_vm::Runtime>>,
    publisher: std::sync::OnceLock<Arc<zennet_publisher::Publisher>>,
    apps: std::sync::OnceLock<Arc<crate::apps::Apps>>,
    provider: std::sync::OnceLock<Arc<zennet_provider::Provider>>,
    fs: std::sync::OnceLock<Arc<zennet_fs::Fs>>,
    /// Web dashboard login codes and sessions.
    dashboard: crate::dashboard::Sessions,
    /// The provider's earnings over time, for the dashboard.
    earnings: crate::dashboard::history::Earnings,
    /// The home this node runs from (for the disk-space metrics).
    home_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// What catching up is doing (shown by `chain sync`, the dashboard).
    sync_progress: crate::sync::Progress,
    /// One chain sync at a time.
    pub(crate) sync_lock: tokio::sync::Mutex<()>,
    /// Take the state from a snapshot when far behind (default: when the
    /// home's chain is empty, or when full sync meets pruned bodies).
    fast_sync: AtomicBool,
    /// False when the operator turned fast sync off.
    fast_sync_allowed: bool,
    peers: Mutex<crate::sync::peers::PeerBook>,
    hold: Mutex<crate::sync::peers::HoldBack>,
    /// A read-only connection for serving snapshots without the chain lock.
    reader: Mutex<Option<zennet_chain::store::Store>>,
    /// The last manifest computed (height, block, encoded bytes).
    manifest: Mutex<Option<Manifest>>,
    /// Transactions submitted here, gossiped again until mined.
    rebroadcast: Mutex<crate::sync::Rebroadcast>,
}

/// A snapshot manifest as served: its height, its block, its encoding.
type Manifest = (u64, Hash, Arc<Vec<u8>>);

impl Node {
    /// `fast_sync`: `None` is on for an empty chain (and when full sync
    /// meets pruned bodies), `Some` forces it on or off.
    pub fn with_sync(chain: Chain, net: Option<NetHandle>, fast_sync: Option<bool>) -> Arc<Node> {
        let fast_sync_allowed = fast_sync != Some(false);
        let fast_sync = fast_sync.unwrap_or(chain.tip().header.height == 0);
        let c = &chain.genesis().consensus;
        let peers = crate::sync::peers::PeerBook::new(
            c.reorg_horizon as usize,
            c.reorg_horizon * c.block_time_ms,
        );
        let reader = chain.store().reader().ok();
        let height = chain.tip().header.height;
        Arc::new(Node {
            tip: tokio::sync::watch::channel(height).0,
            chain: Mutex::new(chain),
            generation: AtomicU64::new(0),
            mining: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            net,
            vms: std::sync::OnceLock::new(),
            publisher: std::sync::OnceLock::new(),
            apps: std::sync::OnceLock::new(),
            provider: std::sync::OnceLock::new(),
            fs: std::sync::OnceLock::new(),
            home_dir: std::sync::OnceLock::new(),
            dashboard: Default::default(),
            earnings: Default::default(),
            sync_progress: Default::default(),
            sync_lock: tokio::sync::Mutex::new(()),
            fast_sync: AtomicBool::new(fast_sync),
            fast_sync_allowed,
            peers: Mutex::new(peers),
            hold: Mutex::new(Default::default()),
            reader: Mutex::new(reader),
            manifest: Mutex::new(None),
            rebroadcast: Mutex::new(Default::default()),
        })
    }

    pub(crate) fn sync_progress(&self) -> &crate::sync::Progress {
        &self.sync_progress
    }

    pub fn sync_status(&self) -> crate::sync::SyncStatus {
        self.sync_progress.get(self.net.is_some())
    }

    pub(crate) fn fast_sync(&self) -> bool {
        self.fast_sync.load(Ordering::Relaxed)
    }

    /// Full sync met blocks it cannot execute (pruned bodies): take the
    /// state from a snapshot, unless the operator said no.
    pub(crate) fn need_snapshot(&self) {
        if self.fast_sync_allowed {
            self.fast_sync.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn peers(&self) -> MutexGuard<'_, crate::sync::peers::PeerBook> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn hold(&self) -> MutexGuard<'_, crate::sync::peers::HoldBack> {
        self.hold.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the read-only snapshot connection (never the chain lock).
    pub(crate) fn with_reader<T>(
        &self,
        f: impl FnOnce(&zennet_chain::store::Store) -> Result<T, ChainError>,
    ) -> Result<T> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let store = reader
            .as_ref()
            .context("this node keeps its chain in memory and serves no snapshots")?;
        Ok(f(store)?)
    }

    /// The encoded snapshot manifest at `height`, computed once per block.
    pub(crate) fn manifest(&self, height: u64) -> Result<Arc<Vec<u8>>> {
        let block = self
            .chain()
            .store()
            .canonical_hash(height)?
            .context("no canonical block at that height")?;
        if let Some((h, b, bytes)) = &*self.manifest.lock().unwrap_or_else(|p| p.into_inner())
            && *h == height
            && *b == block
        {
            return Ok(bytes.clone());
        }
        let started = Instant::now();
        let manifest = self.with_reader(|store| {
            store.read(|s| zennet_chain::snapshot::Source::new(s, height)?.manifest())
        })?;
        let bytes = Arc::new(manifest.encode());
        tracing::info!(
            height,
            chunks = manifest.chunks(),
            ms = started.elapsed().as_millis() as u64,
            "computed snapshot manifest"
        );
        *self.manifest.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((height, manifest.block, bytes.clone()));
        Ok(bytes)
    }

    pub fn net(&self) -> Option<&NetHandle> {
        self.net.as_ref()
    }

    pub fn vms(&self) -> Option<&Arc<zennet_vm::Runtime>> {
        self.vms.get()
    }

    pub fn publisher(&self) -> Option<&Arc<zennet_publisher::Publisher>> {
        self.publisher.get()
    }

    /// The web app proxy (publisher nodes).
    pub fn apps(&self) -> Option<&Arc<crate::apps::Apps>> {
        self.apps.get()
    }

    pub fn provider(&self) -> Option<&Arc<zennet_provider::Provider>> {
        self.provider.get()
    }

    pub fn fs(&self) -> Option<&Arc<zennet_fs::Fs>> {
        self.fs.get()
    }

    pub fn dashboard(&self) -> &crate::dashboard::Sessions {
        &self.dashboard
    }

    pub fn earnings(&self) -> &crate::dashboard::history::Earnings {
        &self.earnings
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    pub fn home_dir(&self) -> Option<&std::path::Path> {
        self.home_dir.get().map(|p| p.as_path())
    }

    pub fn chain(&self) -> MutexGuard<'_, Chain> {
        // A panic while holding the lock cannot leave the chain half-updated
        // (imports are atomic), so a poisoned lock is still usable.
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a transaction submitted here and gossips it.
    pub fn submit_tx(&self, tx: SignedTx) -> Result<Hash, ChainError> {
        let bytes = tx.encode();
        let nonce = tx.tx.nonce;
        let hash = self.submit_remote_tx(tx)?;
        if let Some(net) = &self.net {
            net.publish_tx(bytes.clone());
            self.rebroadcast
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .published(hash, nonce, bytes, Instant::now());
        }
        Ok(hash)
    }

    /// Gossips again those of our transactions still waiting to be mined
    /// (see `sync::rebroadcast`).
    pub(crate) fn rebroadcast(&self) {
        let Some(net) = &self.net else { return };
        let due = {
            let chain = self.chain();
            let mempool = chain.mempool();
            self.rebroadcast
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .due(Instant::now(), |h| mempool.contains(h))
        };
        if !due.is_empty() {
            tracing::debug!(txs = due.len(), "gossiping our pending transactions again");
        }
        for bytes in due {
            net.publish_tx(bytes);
        }
    }

    /// Admits a transaction that arrived by gossip (which propagates it).
    pub fn submit_remote_tx(&self, tx: SignedTx) -> Result<Hash, ChainError> {
        let hash = self.chain().submit_tx(tx)?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(%hash, "transaction admitted");
        Ok(hash)
    }

    /// Imports a block from anywhere; wakes miners and the reporter when the
    /// tip moved.
    pub fn import_block(&self, block: Block) -> Result<ImportOutcome, ChainError> {
        let (outcome, height) = {
            let mut chain = self.chain();
            let outcome = chain.import_block(block, now_ms())?;
            (outcome, chain.tip().header.height)
        };
        if !matches!(
            outcome,
            ImportOutcome::AlreadyKnown | ImportOutcome::SideChain { .. }
        ) {
            self.generation.fetch_add(1, Ordering::SeqCst);
            self.tip.send_replace(height);
        }
        Ok(outcome)
    }

    /// Imports a block mined here and gossips it if it became the tip.
    fn import_mined_block(&self, block: Block) -> Result<ImportOutcome, ChainError> {
        let bytes = block.encode();
        let outcome = self.import_block(block)?;
        if let (Some(net), ImportOutcome::Extended { .. }) = (&self.net, &outcome) {
            net.publish_block(bytes);
        }
        Ok(outcome)
    }

    /// Wakes miners, the reporter and tip watchers (the tip moved, e.g. a
    /// snapshot was imported).
    pub(crate) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let height = self.chain().tip().header.height;
        self.tip.send_replace(height);
    }

    /// A watch of the tip's height.
    pub fn tip(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tip.subscribe()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn is_mining(&self) -> bool {
        self.mining.load(Ordering::Relaxed)
    }
}

pub struct NodeOptions {
    pub mine: bool,
    /// Overrides `config.toml`'s API address.
    pub api: Option<String>,
    /// Overrides `config.toml`'s p2p listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Added to `config.toml`'s bootstrap addresses.
    pub bootstrap: Vec<Multiaddr>,
    /// Print each new block and balances to stdout.
    pub report: bool,
    /// Run the provider agent (VMs, market, contracts) in this node.
    pub provide: bool,
    /// Run the publisher (SSH server, payer) in this node.
    pub publish: bool,
    /// Snapshot fast sync: `None` means on for a home whose chain is empty.
    pub fast_sync: Option<bool>,
}

/// A started node; [`NodeHandle::stop`] shuts it down cleanly.
pub struct NodeHandle {
    pub node: Arc<Node>,
    home: Home,
    miners: Vec<JoinHandle<()>>,
    server: tokio::task::JoinHandle<()>,
    stop_server: oneshot::Sender<()>,
    _lock: std::fs::File,
}

impl NodeHandle {
    pub async fn start(home: Home, opts: NodeOptions) -> Result<NodeHandle> {
        let lock = home.lock_node()?;
        let genesis = home.genesis()?;
        let key = home.key()?;
        let config = home.config()?;
        let chain_dir = home.chain_dir();
        let chain = tokio::task::spawn_blocking(move || Chain::open(&chain_dir, genesis))
            .await?
            .context("cannot open the chain database")?;
        tracing::info!(
            height = chain.tip().header.height,
            tip = %chain.tip().hash,
            genesis = %chain.genesis_hash(),
            "chain opened"
        );
        // The VM runtime comes up (and re-attaches its VMs) before the API
        // announces the node.
        let vms = match opts.provide {
            true => Some(crate::services::start_vms(&home).await?),
            false => None,
        };
        let (net, net_events) = start_network(&config, &opts, &key, chain.genesis_hash()).await?;
        let node = Node::with_sync(chain, Some(net.clone()), opts.fast_sync);
        let _ = node.home_dir.set(home.dir().to_path_buf());
        if node.fast_sync() {
            tracing::info!(
                "fast sync on: the state comes from a verified snapshot when peers are far ahead"
            );
        }
        let ledger = crate::ledger::NodeLedger::new(node.clone(), key.clone());
        if let Some(vms) = vms {
            tokio::spawn(vms.clone().meter());
            let _ = node.vms.set(vms.clone());
            let provider = crate::services::start_provider(&home, vms, ledger.clone()).await?;
            let _ = node.provider.set(provider);
            tokio::spawn(crate::dashboard::history::run(node.clone()));
        }
        if opts.publish {
            let publisher = crate::services::start_publisher(&home, ledger.clone()).await?;
            tracing::info!(endpoint = publisher.endpoint(), host_key = %publisher.host_key_fingerprint(), "publisher");
            let apps = crate::apps::Apps::start(
                publisher.clone(),
                home.dir().join("publisher"),
                &home.config()?.publisher.apps_listen,
            )
            .await?;
            let _ = node.apps.set(apps);
            let _ = node.publisher.set(publisher);
        }
        let chain_id = node.chain().genesis().chain_id;
        let fs = crate::fs::start(&home, &net, ledger.clone(), &key, chain_id).await?;
        if let Some(provider) = node.provider.get() {
            let images = crate::image_share::FsImages::new(fs.clone(), home.images_dir());
            provider.set_image_source(Arc::new(images));
        }
        let _ = node.fs.set(fs);
        tokio::spawn(crate::sync::run(node.clone(), net, net_events));
        if let Some(webhook) = config.alerts.webhook.clone() {
            let unpaid_after = config
                .alerts
                .unpaid_after_secs
                .map_or(crate::observe::alerts::UNPAID_AFTER, Duration::from_secs);
            tokio::spawn(crate::observe::alerts::run(
                node.clone(),
                key.address(),
                webhook,
                unpaid_after,
            ));
        }

        let api = opts.api.unwrap_or(config.node.api.clone());
        let listener = TcpListener::bind(&api)
            .await
            .with_context(|| format!("cannot listen on {api} for the API"))?;
        let api_addr = listener.local_addr()?;
        // The token exists before node.json says where the API is.
        let token = home.load_or_create_api_token()?;
        home.write_node_file(&NodeFile {
            api: api_addr.to_string(),
            pid: std::process::id(),
        })?;
        tracing::info!(%api_addr, "API listening");

        let (stop_server, stopped) = oneshot::channel::<()>();
        let router = api::router(node.clone(), token);
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "API server failed");
            }
        });

        let mut miners = Vec::new();
        if opts.mine {
            node.mining.store(true, Ordering::Relaxed);
            for i in 0..config.node.mining_threads.max(1) {
                let node = node.clone();
                let miner = key.address();
                let share = f64::from(config.node.mining_cpu_percent) / 100.0;
                miners.push(
                    std::thread::Builder::new()
                        .name(format!("miner-{i}"))
                        .spawn(move || mine_loop(&node, miner, share))?,
                );
            }
            tracing::info!(miner = %key.address(), threads = miners.len(), "mining");
        }
        if opts.report {
            tokio::spawn(report(node.clone(), key.address()));
        }
        Ok(NodeHandle {
            node,
            home,
            miners,
            server,
            stop_server,
            _lock: lock,
        })
    }

    pub async fn stop(self) -> Result<()> {
        self.node.shutdown.store(true, Ordering::SeqCst);
        if let Some(p) = self.node.provider() {
            p.shutdown();
        }
        let _ = self.stop_server.send(());
        let _ = self.server.await;
        for m in self.miners {
            let _ = tokio::task::spawn_blocking(move || m.join()).await;
        }
        // Here rather than on drop: tasks may still hold the node, and the
        // next start should load the trie, not rebuild it from the rows.
        let node = self.node.clone();
        match tokio::task::spawn_blocking(move || node.chain().flush_trie()).await {
            Ok(Ok(nodes)) => tracing::debug!(nodes, "wrote the state trie"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not write the state trie; the next start rebuilds it")
            }
            Err(e) => tracing::warn!(error = %e, "the state trie writer panicked"),
        }
        self.home.remove_node_file();
        tracing::info!("node stopped");
        Ok(())
    }
}

async fn start_network(
    config: &crate::home::Config,
    opts: &NodeOptions,
    key: &zennet_chain::SecretKey,
    genesis: Hash,
) -> Result<(
    NetHandle,
    tokio::sync::mpsc::UnboundedReceiver<zennet_net::NetEvent>,
)> {
    let parse = |list: &[String]| -> Result<Vec<Multiaddr>> {
        list.iter()
            .map(|a| {
                a.parse()
                    .with_context(|| format!("{a:?} in config.toml is not a multiaddr"))
            })
            .collect()
    };
    let listen = if opts.listen.is_empty() {
        parse(&config.node.p2p_listen)?
    } else {
        opts.listen.clone()
    };
    let mut bootstrap = parse(&config.node.bootstrap)?;
    bootstrap.extend(opts.bootstrap.iter().cloned());
    let (net, events) = Network::start(NetConfig {
        secret: key.clone(),
        genesis,
        listen,
        bootstrap,
        max_peers: config.node.max_peers,
    })
    .await
    .context("cannot start networking")?;
    tracing::info!(peer_id = %net.local_peer_id, "p2p identity");
    Ok((net, events))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Mines on the current tip until shutdown. The template is rebuilt when the
/// tip or mempool changes, and every second so the timestamp (and with it
/// the difficulty) stays current. `share` (0-1] of the thread's time is
/// spent hashing (see [`Throttle`]).
fn mine_loop(node: &Node, miner: Address, share: f64) {
    const BATCH: u64 = 128;
    const REFRESH: Duration = Duration::from_secs(1);
    let never = AtomicBool::new(false);
    let mut throttle = Throttle::new(share);
    while !node.shutdown.load(Ordering::SeqCst) {
        let generation = node.generation();
        let (mut block, ethash): (Block, Arc<Ethash>) = {
            let chain = node.chain();
            (chain.template(miner, now_ms()), chain.ethash_handle())
        };
        let built = Instant::now();
        let mut nonce = random_u64();
        let sealed = loop {
            if node.shutdown.load(Ordering::SeqCst)
                || node.generation() != generation
                || built.elapsed() > REFRESH
            {
                break None;
            }
            let hashing = Instant::now();
            let found = ethash.search(&block.header, nonce, BATCH, &never);
            let rest = throttle.after_batch(hashing.elapsed(), found.is_some());
            if let Some((n, mix)) = found {
                block.header.nonce = n;
                block.header.mix_digest = mix;
                break Some(block);
            }
            if let Some(rest) = rest {
                std::thread::sleep(rest);
            }
            nonce = nonce.wrapping_add(BATCH);
        };
        if let Some(block) = sealed {
            let height = block.header.height;
            match node.import_mined_block(block) {
                Ok(ImportOutcome::Extended { hash, .. }) => {
                    tracing::debug!(height, %hash, "mined block");
                }
                Ok(other) => tracing::debug!(?other, "mined block not on the tip"),
                Err(e) => tracing::warn!(height, error = %e, "own block rejected"),
            }
        }
    }
}

/// A miner's CPU share: after each [`Throttle::SLICE`] of hashing the
/// thread sleeps in proportion. The rest is slept only between batches that
/// found nothing, so a found block is imported at once; the time owed
/// carries over, but never more than one slice of it. A chain whose
/// difficulty is low enough that nearly every batch finds a block would
/// otherwise run up minutes of debt and then stop mining for them (it did:
/// a test chain sat still for over four minutes). Difficulty rises until
/// batches fail again, so the cap costs little of the share.
struct Throttle {
    share: f64,
    busy: Duration,
}

impl Throttle {
    const SLICE: Duration = Duration::from_millis(20);

    fn new(share: f64) -> Throttle {
        Throttle {
            share,
            busy: Duration::ZERO,
        }
    }

    /// Counts one batch of hashing; the time to sleep after it, if any.
    fn after_batch(&mut self, hashing: Duration, found: bool) -> Option<Duration> {
        if self.share >= 1.0 {
            return None;
        }
        self.busy = (self.busy + hashing).min(Self::SLICE.max(hashing));
        if found || self.busy < Self::SLICE {
            return None;
        }
        let rest = self.busy.mul_f64((1.0 - self.share) / self.share);
        self.busy = Duration::ZERO;
        Some(rest)
    }
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| now_ms())
}
/// Prints one line per new canonical block: height, hash, transactions,
/// difficulty, and the balances of this node's account, the block's miner
/// and every transfer recipient in it.
async fn report(node: Arc<Node>, me: Address) {
    let mut printed: Option<u64> = None;
    while !node.shutdown.load(Ordering::SeqCst) {
        let lines = {
            let chain = node.chain();
            let tip = chain.tip().header.height;
            // After a reorg the new branch is printed from the fork on.
            let from = printed.map_or(tip, |p| (p + 1).min(tip));
            let mut lines = Vec::new();
            if printed != Some(tip) {
                for height in from..=tip {
                    if let Ok(Some(block)) = chain.block_by_height(height) {
                        lines.push(block_line(&chain, &block, me));
                    }
                }
                printed = Some(tip);
            }
            lines
        };
        for line in lines {
            println!("{line}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn block_line(chain: &Chain, block: &zennet_chain::StoredBlock, me: Address) -> String {
    let mut accounts = vec![me];
    if block.header.height > 0 && block.header.miner != me {
        accounts.push(block.header.miner);
    }
    for t in &block.txs {
        if let zennet_chain::StoredTx::Full { tx, .. } = t
            && let zennet_chain::TxBody::Transfer { to, .. } = &tx.tx.body
            && !accounts.contains(to)
        {
            accounts.push(*to);
        }
    }
    let balances: Vec<String> = accounts
        .iter()
        .map(|a| format!("{}={}", short(&a.to_string()), chain.account(a).balance))
        .collect();
    format!(
        "block {:>5} {} txs {} difficulty {} | {}",
        block.header.height,
        short(&block.header.hash().to_string()),
        block.txs.len(),
        block.header.difficulty,
        balances.join(" ")
    )
}

fn short(hex: &str) -> String {
    format!("{}…", &hex[..hex.len().min(10)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_miner_sleeps_its_share_and_never_owes_more_than_a_slice() {
        let ms = Duration::from_millis;
        // Batches that find nothing: 25% of the time hashing.
        let mut t = Throttle::new(0.25);
        let (mut hashing, mut slept) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..400 {
            hashing += ms(5);
            slept += t.after_batch(ms(5), false).unwrap_or_default();
        }
        let share = hashing.as_secs_f64() / (hashing + slept).as_secs_f64();
        assert!((share - 0.25).abs() < 0.01, "{share}");

        // The cheat on ourselves: a chain so easy that every batch for
        // ten minutes finds a block, then one batch that does not. The
        // sleep is one slice's rest, not half an hour.
        let mut t = Throttle::new(0.25);
        for _ in 0..60_000 {
            assert_eq!(t.after_batch(ms(10), true), None);
        }
        let rest = t.after_batch(ms(10), false).unwrap();
        assert!(rest <= Throttle::SLICE * 3, "{rest:?}");

        // One batch longer than a slice is owed in full; a full share
        // never sleeps.
        let mut t = Throttle::new(0.5);
        assert_eq!(t.after_batch(ms(100), false), Some(ms(100)));
        assert_eq!(Throttle::new(1.0).after_batch(ms(100), false), None);
    }
}
