//! The provider: watches the chain for tasks, accepts the ones the policy
//! likes (or the operator picks), and runs a session loop per contract
//! ([`crate::session`]).
//!
//! A contract survives the node: its row is in `contracts.db` and its
//! vouchers in the payee's store, each written before the node acts on
//! it; after a restart every open contract reconnects with backoff and the
//! VM, which the VM runtime re-attached, keeps being billed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::PrivateKey;
use zennet_chain::task::{TaskAcceptance, TaskRecord};
use zennet_chain::{Address, Hash, Ledger, TxBody, pow};
use zennet_pay::{PayStore, Payee};
use zennet_proto::Usage;
use zennet_vm::Runtime;
use zennet_vm::runtime::DEFAULT_SCRATCH_GIB;

use crate::contract::Phase;
use crate::error::ProviderError;
use crate::images::{ImageSource, Images};
use crate::market::{self, Machine, MarketPolicy, Offer, Resources};
use crate::stats::ProviderStats;
use crate::store::{ContractRow, ContractStore};
use crate::view::{ContractView, TaskVerdict};

pub struct ProviderConfig {
    pub policy: MarketPolicy,
    pub machine: Machine,
    /// The key the node dials publishers with (its fingerprint goes on chain).
    pub ssh_key: Arc<PrivateKey>,
    /// Built images: (id, manifest hash). Images fetched later are added
    /// (see [`crate::images`]).
    pub images: Vec<(String, Hash)>,
    /// Pause the VM when payment is this many payout intervals late.
    pub pause_after_intervals: f64,
    /// Terminate a VM that stayed paused for lack of payment this long.
    pub grace: Duration,
    /// Claim when the channel is this many blocks from expiry.
    pub claim_margin_blocks: u64,
}

impl ProviderConfig {
    pub fn new(
        policy: MarketPolicy,
        machine: Machine,
        ssh_key: Arc<PrivateKey>,
        images: Vec<(String, Hash)>,
    ) -> Self {
        ProviderConfig {
            policy,
            machine,
            ssh_key,
            images,
            pause_after_intervals: 1.5,
            grace: Duration::from_secs(10),
            claim_margin_blocks: 20,
        }
    }
}

pub struct Provider {
    pub(crate) vms: Arc<Runtime>,
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) config: ProviderConfig,
    pub(crate) store: ContractStore,
    pub(crate) payee: Payee,
    /// Tasks a runner is working on.
    pub(crate) running: Mutex<HashMap<Hash, ()>>,
    /// Serialises accept decisions (capacity is checked, then reserved).
    accepting: tokio::sync::Mutex<()>,
    /// Capacity reserved for acceptances whose proof of work is being
    /// searched (outside the lock, so one hard search stalls nothing).
    reserved: Mutex<HashMap<Hash, Resources>>,
    /// Set by [`Provider::shutdown`] (or when the provider goes away):
    /// searches stop.
    stopping: Arc<AtomicBool>,
    pub(crate) stats: ProviderStats,
    /// Each running contract's pause deadline (wall-clock ms) as its
    /// runner last computed it, for the views.
    pub(crate) pause_at: Mutex<HashMap<Hash, u64>>,
    /// Images that can be booted, and fetches of the ones that cannot yet.
    images: Images,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

/// Nonces tried between checks of the cancel flag.
const POW_CHUNK: u64 = 1 << 14;

impl Provider {
    /// Opens the contract store (`db_path`), resumes open contracts and
    /// starts the market loop. Vouchers are kept in `pay_store`.
    pub async fn start(
        vms: Arc<Runtime>,
        ledger: Arc<dyn Ledger>,
        config: ProviderConfig,
        db_path: &Path,
        pay_store: Arc<dyn PayStore>,
    ) -> Result<Arc<Provider>, ProviderError> {
        let store = ContractStore::open(db_path)?;
        let images = Images::new(config.images.clone());
        let provider = Arc::new(Provider {
            vms,
            payee: Payee::new(ledger.clone(), pay_store, config.claim_margin_blocks),
            ledger,
            config,
            store,
            running: Mutex::new(HashMap::new()),
            accepting: tokio::sync::Mutex::new(()),
            reserved: Mutex::new(HashMap::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            stats: ProviderStats::default(),
            pause_at: Mutex::new(HashMap::new()),
            images,
        });
        for c in provider.store.all()? {
            if c.active() {
                tracing::info!(task = %c.task, phase = ?c.phase, "resuming contract");
                provider.spawn_runner(c.task);
            }
        }
        tokio::spawn(market_loop(Arc::downgrade(&provider)));
        Ok(provider)
    }

    /// The machine as offered (benchmark and `[provider]` overrides) and
    /// what of it is free for new tasks now.
    pub fn capacity(&self) -> Result<(Machine, Resources), ProviderError> {
        Ok((self.config.machine, self.free()?))
    }

    /// Suggested `[market]` minimums from the last day of tasks on chain.
    pub fn prices(&self) -> crate::prices::PriceSuggestion {
        let genesis = self.ledger.genesis();
        let day_blocks = 86_400_000 / genesis.consensus.block_time_ms.max(1);
        crate::prices::Market {
            tasks: &self.ledger.tasks(),
            height: self.ledger.height(),
            window_blocks: day_blocks,
            me: self.ledger.address(),
            policy: &self.config.policy,
            machine: &self.config.machine,
            images: &self.images.built(),
        }
        .suggest()
    }

    /// What the provider measures as it runs (for `/metrics`).
    pub fn stats(&self) -> &ProviderStats {
        &self.stats
    }

    /// What the chain says of a contract's channel, for the views that
    /// show claimed amounts and expiry (`None` before it is mined or
    /// after it closed).
    pub fn channel(&self, id: &Hash) -> Option<zennet_chain::Channel> {
        self.ledger.channel(id)
    }

    /// The chain height this provider last saw.
    pub fn height(&self) -> u64 {
        self.ledger.height()
    }

    pub fn ssh_key_fingerprint(&self) -> Hash {
        zennet_tunnel::keys::fingerprint(self.config.ssh_key.public_key())
    }

    /// Every contract, as the API shows it.
    pub fn contracts(&self) -> Result<Vec<ContractView>, ProviderError> {
        self.store.all()?.iter().map(|c| self.view(c)).collect()
    }

    pub fn contract(&self, task: &Hash) -> Result<Option<ContractView>, ProviderError> {
        self.store.get(task)?.map(|c| self.view(&c)).transpose()
    }

    fn view(&self, c: &ContractRow) -> Result<ContractView, ProviderError> {
        let pay = match c.channel {
            Some(ch) => self.payee.record(&ch).ok(),
            None => None,
        };
        let mut view = ContractView::new(c, pay.as_ref());
        view.pause_at_ms = self
            .pause_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c.task)
            .copied();
        Ok(view)
    }

    /// Every task on chain with this node's verdict.
    pub fn tasks(&self) -> Result<Vec<TaskVerdict>, ProviderError> {
        let contracts: HashMap<Hash, ContractView> =
            self.contracts()?.into_iter().map(|c| (c.task, c)).collect();
        let free = self.free()?;
        let me = self.ledger.address();
        let height = self.ledger.height();
        self.ledger
            .tasks()
            .into_iter()
            .map(|t| {
                let verdict = if self.store.is_rejected(&t.id)? {
                    "rejected by the operator".to_string()
                } else {
                    match self.evaluate(&t, height, &me, &free) {
                        Ok(_) => "acceptable".into(),
                        Err(r) => r.to_string(),
                    }
                };
                Ok(TaskVerdict {
                    task: t.id,
                    publisher: t.publisher,
                    verdict,
                    contract: contracts.get(&t.id).cloned(),
                })
            })
            .collect()
    }

    /// Accepts a task by hand (the policy's checks still apply, except
    /// `auto_accept`).
    pub async fn accept(self: &Arc<Self>, task: &Hash) -> Result<ContractView, ProviderError> {
        let (record, offer) = {
            let _guard = self.accepting.lock().await;
            if let Some(c) = self.store.get(task)? {
                return Err(ProviderError::AlreadyTaken {
                    task: *task,
                    phase: c.phase,
                });
            }
            if self.reserved().contains_key(task) {
                return Err(ProviderError::BeingAccepted(*task));
            }
            let record = self
                .ledger
                .task(task)
                .ok_or(ProviderError::NoSuchTask(*task))?;
            let free = self.free()?;
            let offer = self
                .evaluate(&record, self.ledger.height(), &self.ledger.address(), &free)
                .map_err(|reason| ProviderError::Refused {
                    task: *task,
                    reason,
                })?;
            self.store.unreject(task)?;
            self.reserved().insert(offer.task, offer.needs);
            (record, offer)
        };
        let c = self.take(&record, &offer).await?;
        self.view(&c)
    }

    /// Never accept this task automatically.
    pub fn reject(&self, task: &Hash) -> Result<(), ProviderError> {
        Ok(self.store.reject(task)?)
    }

    /// Stops every acceptance proof-of-work search. A search holds the
    /// provider alive while it runs, so dropping the last handle is not
    /// enough: the node calls this before its runtime goes, or a search
    /// for a hostile difficulty would keep the process from exiting.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Plugs in where images named by file id come from (the node's file
    /// network, which starts after the provider). False if one is set.
    pub fn set_image_source(&self, source: Arc<dyn ImageSource>) -> bool {
        self.images.set_source(source)
    }

    /// The task against the policy with the images here; if none of its
    /// images is here but one it names by file id could be fetched, the
    /// task is evaluated as if that one were, and the rejection says the
    /// image is to be fetched (or is being fetched, or failed), so a task
    /// the policy would refuse anyway never triggers a download.
    fn evaluate(
        &self,
        t: &TaskRecord,
        height: u64,
        me: &Address,
        free: &Resources,
    ) -> Result<Offer, market::Rejection> {
        let policy = &self.config.policy;
        let can_fetch = policy.fetch_images && self.images.source().is_some();
        self.images
            .evaluate(&t.announcement.vm.images, can_fetch, |images| {
                market::evaluate(t, height, me, policy, &self.config.machine, free, images)
            })
    }

    /// Starts fetching image `id` of task `t`, unless it is here, being
    /// fetched or failed before.
    fn fetch_image(self: &Arc<Self>, t: &TaskRecord, id: &str) {
        let Some(source) = self.images.source() else {
            return;
        };
        let Some(choice) = t
            .announcement
            .vm
            .images
            .iter()
            .find(|c| c.id == id && c.file.is_some() && self.images.state(c).is_none())
            .cloned()
        else {
            return;
        };
        if !self.images.begin(&choice) {
            return;
        }
        tracing::info!(task = %t.id, image = %choice.id, file = ?choice.file, "fetching the task's image");
        let max_bytes = self.config.policy.max_image_mib.saturating_mul(1 << 20);
        let provider = Arc::downgrade(self);
        tokio::spawn(async move {
            let result = source.fetch(choice.clone(), max_bytes).await;
            let Some(p) = provider.upgrade() else { return };
            match &result {
                Ok(()) => {
                    tracing::info!(image = %choice.id, hash = %choice.hash, "image fetched and checked")
                }
                Err(e) => {
                    tracing::warn!(image = %choice.id, error = %e, "image fetch failed; not retried")
                }
            }
            p.images.finish(&choice, result.map_err(|e| e.to_string()));
        });
    }

    /// What the node can still take: the machine less the operator's
    /// reservations and what contracts and acceptances in flight hold,
    /// with disk capped by the disk as measured now (so volumes kept from
    /// ended tasks, which no contract holds, count too): the filesystem's
    /// free space beyond what running VMs and kept volumes may still grow
    /// into, less what contracts whose VM has not started yet will take.
    fn free(&self) -> Result<Resources, ProviderError> {
        let mut in_use = Resources::default();
        let mut not_started_gib = 0;
        let held = self.store.all()?;
        let active = held.iter().filter(|c| c.active());
        let reserved: Vec<Resources> = self.reserved().values().copied().collect();
        // A contract holds its volume (its row) and its scratch disk (its
        // announcement; the default once the task is pruned).
        let scratch = |c: &ContractRow| {
            self.ledger.task(&c.task).map_or(DEFAULT_SCRATCH_GIB, |t| {
                market::scratch_gib(&t.announcement.vm)
            })
        };
        for (n, started) in active
            .map(|c| {
                let mut n = c.needs();
                n.disk_gib += u64::from(scratch(c));
                (n, c.vm.is_some())
            })
            .chain(reserved.into_iter().map(|r| (r, false)))
        {
            in_use.cores += n.cores;
            in_use.memory_mib += n.memory_mib;
            in_use.disk_gib += n.disk_gib;
            if !started {
                not_started_gib += n.disk_gib;
            }
        }
        let mut free = self.config.policy.free(&self.config.machine, &in_use);
        let measured = self
            .vms
            .disk_headroom_gib()?
            .saturating_sub(not_started_gib);
        free.disk_gib = free.disk_gib.min(measured);
        Ok(free)
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, HashMap<Hash, Resources>> {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One market round: evaluate, choose, reserve; each acceptance's
    /// proof of work is then searched in its own task.
    async fn round(self: &Arc<Self>) -> Result<(), ProviderError> {
        if !self.config.policy.auto_accept {
            return Ok(());
        }
        let _guard = self.accepting.lock().await;
        let reserved: Vec<Hash> = self.reserved().keys().copied().collect();
        let contracts = self.store.all()?;
        let active: Vec<&ContractRow> = contracts.iter().filter(|c| c.active()).collect();
        let room = (self.config.policy.max_concurrent_tasks as usize)
            .saturating_sub(active.len() + reserved.len());
        if room == 0 {
            return Ok(());
        }
        let mut held: HashMap<Address, u32> = HashMap::new();
        for c in &active {
            *held.entry(c.publisher).or_default() += 1;
        }
        let free = self.free()?;
        let me = self.ledger.address();
        let height = self.ledger.height();
        let tasks: HashMap<Hash, TaskRecord> =
            self.ledger.tasks().into_iter().map(|t| (t.id, t)).collect();
        let mut offers = Vec::new();
        for t in tasks.values() {
            if contracts.iter().any(|c| c.task == t.id)
                || reserved.contains(&t.id)
                || self.store.is_rejected(&t.id)?
            {
                continue;
            }
            match self.evaluate(t, height, &me, &free) {
                Ok(o) => offers.push(o),
                Err(market::Rejection::ImageToFetch { id }) => self.fetch_image(t, &id),
                Err(r) => tracing::debug!(task = %t.id, reason = %r, "task passed over"),
            }
        }
        for offer in market::choose(&offers, &free, &held, room) {
            let Some(record) = tasks.get(&offer.task).cloned() else {
                continue;
            };
            self.reserved().insert(offer.task, offer.needs);
            let p = self.clone();
            tokio::spawn(async move {
                if let Err(e) = p.take(&record, &offer).await {
                    tracing::warn!(task = %offer.task, error = %e, "could not accept");
                }
            });
        }
        Ok(())
    }

    /// Solves the acceptance proof of work (on the blocking pool, outside
    /// any lock; given up when the provider shuts down or the task's
    /// acceptance window has closed, since a late acceptance cannot be
    /// mined), submits it and starts the runner. The capacity reserved
    /// for `offer` is released.
    async fn take(
        self: &Arc<Self>,
        record: &TaskRecord,
        offer: &Offer,
    ) -> Result<ContractRow, ProviderError> {
        let taken = self.take_reserved(record, offer).await;
        self.reserved().remove(&record.id);
        taken
    }

    async fn take_reserved(
        self: &Arc<Self>,
        record: &TaskRecord,
        offer: &Offer,
    ) -> Result<ContractRow, ProviderError> {
        let me = self.ledger.address();
        let a = &record.announcement;
        let acceptance = TaskAcceptance {
            task: record.id,
            image: offer.image,
            cores: offer.cores,
            ssh_key_fingerprint: self.ssh_key_fingerprint(),
            // Never more than the task pays for: the chain would refuse it.
            compute_score: self
                .config
                .machine
                .compute_per_core
                .min(a.vm.max_compute_per_core),
            pow_nonce: 0,
        };
        let difficulty = a.acceptance_difficulty;
        let (stopping, ledger, until) = (
            self.stopping.clone(),
            self.ledger.clone(),
            record.accept_until(),
        );
        let give_up = move || stopping.load(Ordering::Relaxed) || ledger.height() > until;
        let acceptance =
            tokio::task::spawn_blocking(move || solve(acceptance, &me, difficulty, give_up))
                .await
                .ok()
                .flatten()
                .ok_or(ProviderError::PowCancelled { task: record.id })?;
        let tx = self
            .ledger
            .submit(TxBody::AcceptTask {
                acceptance: acceptance.clone(),
            })
            .map_err(|source| ProviderError::Accept {
                task: record.id,
                source,
            })?;
        let c = ContractRow {
            task: record.id,
            publisher: record.publisher,
            endpoint: a.endpoint.clone(),
            host_key_fingerprint: a.host_key_fingerprint,
            image_id: offer.image_id.clone(),
            cores: offer.cores,
            memory_mib: offer.cores as u64 * a.vm.memory_mib_per_core as u64,
            storage_gib: a.vm.persistent_storage_gib,
            compute_score: acceptance.compute_score,
            rates: a.rates.clone(),
            acceptance_tx: tx,
            phase: Phase::Accepting,
            channel: None,
            payout_interval_secs: a.payout_interval_secs,
            lease_secs: a.lease_max_secs,
            vm_key: None,
            storage_paid: false,
            vm: None,
            vm_host_key: None,
            boot_ms: 0,
            forward_port: 0,
            started_ms: None,
            paid: 0,
            accrued: 0,
            usage: Usage::default(),
            report_seq: 0,
            end_reason: None,
        };
        self.store.put(&c)?;
        tracing::info!(task = %c.task, publisher = %c.publisher, cores = c.cores, %tx, "task accepted");
        self.spawn_runner(c.task);
        Ok(c)
    }
}

/// Searches the acceptance's proof of work in chunks, asking `give_up`
/// between chunks.
fn solve(
    mut acceptance: TaskAcceptance,
    me: &Address,
    difficulty: u64,
    give_up: impl Fn() -> bool,
) -> Option<TaskAcceptance> {
    let mut start = 0u64;
    while !give_up() {
        if let Some(n) = pow::search(start, POW_CHUNK, difficulty, |n| {
            acceptance.pow_nonce = n;
            acceptance.pow_hash(me)
        }) {
            acceptance.pow_nonce = n;
            return Some(acceptance);
        }
        start = start.wrapping_add(POW_CHUNK);
    }
    None
}

/// A market round at every new tip (and none in between).
async fn market_loop(provider: std::sync::Weak<Provider>) {
    let Some(mut tip) = provider.upgrade().map(|p| p.ledger.tip()) else {
        return;
    };
    loop {
        {
            let Some(p) = provider.upgrade() else { return };
            if let Err(e) = p.round().await {
                tracing::warn!(error = %e, "market round failed");
            }
        }
        if tip.changed().await.is_err() {
            return;
        }
    }
}
