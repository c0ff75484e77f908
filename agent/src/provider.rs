//! The provider's market side: watch the chain for tasks, accept the ones
//! the policy likes (or the operator picks), then run each contract —
//! tunnel to the publisher, VM with the publisher's key, usage reports,
//! vouchers checked and persisted, pause when unpaid, terminate after a
//! grace period, claims on chain, channel closed at the end.
//!
//! A contract survives the node: its record (with the latest voucher) is
//! in `contracts.db`, written before the node acts on a voucher; after a
//! restart every open contract reconnects with backoff and the VM, which
//! the agent re-attached, keeps being billed.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use russh::keys::PrivateKey;
use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::task::{Rates, TaskAcceptance, TaskRecord};
use zennet_chain::{Address, Amount, Hash, Ledger, SignedVoucher, TxBody, pow};
use zennet_publisher::sshkey;
use zennet_publisher::wire::{self, Frame, Usage, UsageReport, VmPhase, VmStatus};

use crate::AgentError;
use crate::market::{self, Machine, MarketPolicy, Offer, Resources};
use crate::service::{Agent, StartVm};
use crate::tunnel::Tunnel;

pub struct ProviderConfig {
    pub policy: MarketPolicy,
    pub machine: Machine,
    /// The key the node dials publishers with (its fingerprint goes on chain).
    pub ssh_key: Arc<PrivateKey>,
    /// Built images: (id, manifest hash).
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// AcceptTask submitted, not yet mined.
    Accepting,
    /// Accepted on chain; connecting to the publisher.
    Accepted,
    Running,
    Paused,
    Ended,
    Failed,
}

/// One contract as the node keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Contract {
    pub task: Hash,
    pub publisher: Address,
    pub endpoint: String,
    pub host_key_fingerprint: Hash,
    pub image_id: String,
    pub cores: u16,
    pub memory_mib: u64,
    pub storage_gib: u32,
    pub compute_score: u32,
    pub rates: Rates,
    pub acceptance_tx: Hash,
    pub phase: Phase,
    pub channel: Option<Hash>,
    pub payout_interval_secs: i32,
    pub lease_secs: u32,
    pub vm_key: Option<String>,
    pub storage_paid: bool,
    pub vm: Option<String>,
    pub vm_host_key: Option<String>,
    pub boot_ms: u64,
    /// The publisher-side port of the last remote forward.
    pub forward_port: u16,
    pub started_ms: Option<u64>,
    /// The latest valid voucher, persisted before it counts.
    pub voucher: Option<SignedVoucher>,
    #[serde(with = "amount_str")]
    pub paid: Amount,
    #[serde(with = "amount_str")]
    pub accrued: Amount,
    pub usage: Usage,
    pub report_seq: u64,
    /// Tunnel bytes of earlier sessions.
    pub traffic_bytes: u64,
    pub claim_txs: Vec<Hash>,
    pub close_tx: Option<Hash>,
    pub end_reason: Option<String>,
}

impl Contract {
    fn needs(&self) -> Resources {
        Resources {
            cores: self.cores as u32,
            memory_mib: self.memory_mib,
            disk_gib: self.storage_gib as u64,
        }
    }
    fn active(&self) -> bool {
        !matches!(self.phase, Phase::Ended | Phase::Failed)
    }
}

/// A task on chain and what this node thinks of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskVerdict {
    pub task: Hash,
    pub publisher: Address,
    /// "acceptable", "rejected by the operator", or the policy's reason.
    pub verdict: String,
    pub contract: Option<Contract>,
}

pub struct Provider {
    agent: Arc<Agent>,
    ledger: Arc<dyn Ledger>,
    config: ProviderConfig,
    db: Mutex<Connection>,
    /// Tasks a runner is working on.
    running: Mutex<HashMap<Hash, ()>>,
    /// Serialises accept decisions (capacity is checked then taken).
    accepting: tokio::sync::Mutex<()>,
}

impl Provider {
    /// Opens the contract store, resumes open contracts and starts the
    /// market loop.
    pub async fn start(
        agent: Arc<Agent>,
        ledger: Arc<dyn Ledger>,
        config: ProviderConfig,
        db_path: &Path,
    ) -> Result<Arc<Provider>, AgentError> {
        let db = Connection::open(db_path).map_err(store_err)?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(store_err)?;
        db.pragma_update(None, "synchronous", "FULL")
            .map_err(store_err)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS contracts (task TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS rejected (task TEXT PRIMARY KEY);",
        )
        .map_err(store_err)?;
        let provider = Arc::new(Provider {
            agent,
            ledger,
            config,
            db: Mutex::new(db),
            running: Mutex::new(HashMap::new()),
            accepting: tokio::sync::Mutex::new(()),
        });
        for c in provider.contracts()? {
            if c.active() {
                tracing::info!(task = %c.task, phase = ?c.phase, "resuming contract");
                provider.spawn_runner(c.task);
            }
        }
        tokio::spawn(market_loop(Arc::downgrade(&provider)));
        Ok(provider)
    }

    pub fn ssh_key_fingerprint(&self) -> Hash {
        sshkey::fingerprint(self.config.ssh_key.public_key())
    }

    pub fn contracts(&self) -> Result<Vec<Contract>, AgentError> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT body FROM contracts")
            .map_err(store_err)?;
        let bodies: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(store_err)?
            .collect::<Result<_, _>>()
            .map_err(store_err)?;
        bodies
            .iter()
            .map(|b| {
                serde_json::from_str(b)
                    .map_err(|e| AgentError::Corrupt(format!("contract row: {e}")))
            })
            .collect()
    }

    pub fn contract(&self, task: &Hash) -> Result<Option<Contract>, AgentError> {
        let body: Option<String> = self
            .db()
            .query_row(
                "SELECT body FROM contracts WHERE task = ?1",
                [task.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(store_err)?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|e| AgentError::Corrupt(format!("contract row: {e}")))
        })
        .transpose()
    }

    /// Every task on chain with this node's verdict.
    pub fn tasks(&self) -> Result<Vec<TaskVerdict>, AgentError> {
        let contracts: HashMap<Hash, Contract> =
            self.contracts()?.into_iter().map(|c| (c.task, c)).collect();
        let free = self.free()?;
        let me = self.ledger.address();
        let height = self.ledger.height();
        Ok(self
            .ledger
            .tasks()
            .into_iter()
            .map(|t| {
                let verdict = if self.is_rejected(&t.id) {
                    "rejected by the operator".to_string()
                } else {
                    match market::evaluate(
                        &t,
                        height,
                        &me,
                        &self.config.policy,
                        &self.config.machine,
                        &free,
                        &self.config.images,
                    ) {
                        Ok(_) => "acceptable".into(),
                        Err(r) => r.to_string(),
                    }
                };
                TaskVerdict {
                    task: t.id,
                    publisher: t.publisher,
                    verdict,
                    contract: contracts.get(&t.id).cloned(),
                }
            })
            .collect())
    }

    /// Accepts a task by hand (the policy's checks still apply, except
    /// `auto_accept`).
    pub async fn accept(self: &Arc<Self>, task: &Hash) -> Result<Contract, AgentError> {
        let _guard = self.accepting.lock().await;
        if let Some(c) = self.contract(task)? {
            return Err(AgentError::Invalid(format!(
                "task {task} is already taken ({:?})",
                c.phase
            )));
        }
        let record = self
            .ledger
            .task(task)
            .ok_or_else(|| AgentError::NotFound(format!("no task {task} on chain")))?;
        let free = self.free()?;
        let offer = market::evaluate(
            &record,
            self.ledger.height(),
            &self.ledger.address(),
            &self.config.policy,
            &self.config.machine,
            &free,
            &self.config.images,
        )
        .map_err(|r| AgentError::Invalid(format!("task {task}: {r}")))?;
        self.db()
            .execute("DELETE FROM rejected WHERE task = ?1", [task.to_string()])
            .map_err(store_err)?;
        self.take(&record, &offer).await
    }

    /// Never accept this task automatically.
    pub fn reject(&self, task: &Hash) -> Result<(), AgentError> {
        self.db()
            .execute(
                "INSERT OR IGNORE INTO rejected VALUES (?1)",
                [task.to_string()],
            )
            .map_err(store_err)?;
        Ok(())
    }

    fn is_rejected(&self, task: &Hash) -> bool {
        self.db()
            .query_row(
                "SELECT 1 FROM rejected WHERE task = ?1",
                [task.to_string()],
                |_| Ok(()),
            )
            .optional()
            .ok()
            .flatten()
            .is_some()
    }

    fn free(&self) -> Result<Resources, AgentError> {
        let mut in_use = Resources::default();
        for c in self.contracts()?.iter().filter(|c| c.active()) {
            let n = c.needs();
            in_use.cores += n.cores;
            in_use.memory_mib += n.memory_mib;
            in_use.disk_gib += n.disk_gib;
        }
        Ok(self.config.policy.free(&self.config.machine, &in_use))
    }

    /// One market round: evaluate, choose, accept.
    async fn round(self: &Arc<Self>) -> Result<(), AgentError> {
        if !self.config.policy.auto_accept {
            return Ok(());
        }
        let _guard = self.accepting.lock().await;
        let contracts = self.contracts()?;
        let active: Vec<&Contract> = contracts.iter().filter(|c| c.active()).collect();
        let room = (self.config.policy.max_concurrent_tasks as usize).saturating_sub(active.len());
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
        let offers: Vec<Offer> = tasks
            .values()
            .filter(|t| !contracts.iter().any(|c| c.task == t.id) && !self.is_rejected(&t.id))
            .filter_map(|t| {
                market::evaluate(
                    t,
                    height,
                    &me,
                    &self.config.policy,
                    &self.config.machine,
                    &free,
                    &self.config.images,
                )
                .map_err(|r| tracing::debug!(task = %t.id, reason = %r, "task passed over"))
                .ok()
            })
            .collect();
        for offer in market::choose(&offers, &free, &held, room) {
            if let Some(record) = tasks.get(&offer.task)
                && let Err(e) = self.take(record, &offer).await
            {
                tracing::warn!(task = %offer.task, error = %e, "could not accept");
            }
        }
        Ok(())
    }

    /// Solves the acceptance proof of work, submits it and starts the runner.
    async fn take(
        self: &Arc<Self>,
        record: &TaskRecord,
        offer: &Offer,
    ) -> Result<Contract, AgentError> {
        let me = self.ledger.address();
        let mut acceptance = TaskAcceptance {
            task: record.id,
            image: offer.image,
            cores: offer.cores,
            ssh_key_fingerprint: self.ssh_key_fingerprint(),
            compute_score: self.config.machine.compute_per_core,
            pow_nonce: 0,
        };
        let difficulty = record.announcement.acceptance_difficulty;
        let acceptance = tokio::task::spawn_blocking(move || {
            let nonce = pow::search(0, u64::MAX, difficulty, |n| {
                acceptance.pow_nonce = n;
                acceptance.pow_hash(&me)
            });
            acceptance.pow_nonce = nonce.expect("a nonce meets any difficulty within 2^64 tries");
            acceptance
        })
        .await
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
        let tx = self
            .ledger
            .submit(TxBody::AcceptTask { acceptance })
            .map_err(|e| AgentError::Invalid(format!("AcceptTask for {}: {e}", record.id)))?;
        let a = &record.announcement;
        let c = Contract {
            task: record.id,
            publisher: record.publisher,
            endpoint: a.endpoint.clone(),
            host_key_fingerprint: a.host_key_fingerprint,
            image_id: offer.image_id.clone(),
            cores: offer.cores,
            memory_mib: offer.cores as u64 * a.vm.memory_mib_per_core as u64,
            storage_gib: a.vm.persistent_storage_gib,
            compute_score: self.config.machine.compute_per_core,
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
            voucher: None,
            paid: 0,
            accrued: 0,
            usage: Usage::default(),
            report_seq: 0,
            traffic_bytes: 0,
            claim_txs: vec![],
            close_tx: None,
            end_reason: None,
        };
        self.save(&c)?;
        tracing::info!(task = %c.task, publisher = %c.publisher, cores = c.cores, %tx, "task accepted");
        self.spawn_runner(c.task);
        Ok(c)
    }

    fn save(&self, c: &Contract) -> Result<(), AgentError> {
        let body = serde_json::to_string(c).map_err(|e| AgentError::Store(e.to_string()))?;
        self.db()
            .execute(
                "INSERT OR REPLACE INTO contracts VALUES (?1, ?2)",
                params![c.task.to_string(), body],
            )
            .map_err(store_err)?;
        Ok(())
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn_runner(self: &Arc<Self>, task: Hash) {
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.insert(task, ()).is_some() {
                return;
            }
        }
        let p = self.clone();
        tokio::spawn(async move {
            p.run_contract(task).await;
            p.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&task);
        });
    }

    /// Runs a contract to its end, reconnecting with backoff.
    async fn run_contract(self: &Arc<Self>, task: Hash) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let outcome = self.session(task).await;
            let c = match self.contract(&task) {
                Ok(Some(c)) => c,
                _ => return,
            };
            match outcome {
                Ok(()) if !c.active() => return,
                Ok(()) => backoff = Duration::from_secs(1),
                Err(Session::Fatal(reason)) => {
                    tracing::error!(%task, %reason, "contract aborted");
                    let _ = self.finish(c, Phase::Failed, &reason, None).await;
                    return;
                }
                Err(Session::Retry(reason)) if self.over_without_publisher(&c) => {
                    tracing::info!(%task, %reason, "task over while the publisher is unreachable; closing");
                    let _ = self
                        .finish(c, Phase::Ended, "task cancelled or lease over", None)
                        .await;
                    return;
                }
                Err(Session::Retry(reason)) => {
                    tracing::warn!(%task, %reason, retry_in = ?backoff, "publisher session lost");
                    // Settlement and expiry do not wait for the publisher.
                    let mut c = c;
                    if let Err(e) = self.watch_channel(&mut c) {
                        tracing::warn!(%task, error = %e, "channel watch");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// A contract can end without the publisher: its task was cancelled
    /// (or pruned) on chain, or its lease ran out.
    fn over_without_publisher(&self, c: &Contract) -> bool {
        let lease_over = c
            .started_ms
            .is_some_and(|s| now_ms() >= s + c.lease_secs as u64 * 1000);
        let cancelled = self
            .ledger
            .task(&c.task)
            .is_none_or(|t| t.cancelled_at.is_some());
        c.phase != Phase::Accepting && (lease_over || cancelled)
    }

    /// One connection to the publisher, from dial to disconnect or end.
    async fn session(self: &Arc<Self>, task: Hash) -> Result<(), Session> {
        let mut c = self
            .contract(&task)
            .map_err(retry)?
            .ok_or_else(|| Session::Fatal("contract vanished".into()))?;
        if c.phase == Phase::Accepting {
            loop {
                if self.ledger.included_at(&c.acceptance_tx).is_some() {
                    break;
                }
                if !self.ledger.pending(&c.acceptance_tx) {
                    return Err(Session::Fatal(
                        "the acceptance was not mined (task full or expired?)".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            c.phase = Phase::Accepted;
            self.save(&c).map_err(retry)?;
        }
        let traffic = Arc::new(AtomicU64::new(0));
        let tunnel = Tunnel::dial(
            &c.endpoint,
            c.host_key_fingerprint,
            self.config.ssh_key.clone(),
            traffic.clone(),
        )
        .await
        .map_err(|e| {
            if e.is_fatal() {
                Session::Fatal(e.to_string())
            } else {
                Session::Retry(e.to_string())
            }
        })?;
        let mut pay = wire::PayStream::new(tunnel.open_pay().await.map_err(retry)?);
        pay.send(&Frame::Join {
            version: wire::PROTOCOL_VERSION,
            task,
        })
        .await
        .map_err(retry)?;
        let terms = {
            match tokio::time::timeout(Duration::from_secs(180), pay.recv()).await {
                Err(_) => {
                    return Err(Session::Retry(
                        "publisher sent no terms within 180 s".into(),
                    ));
                }
                Ok(Err(e)) => return Err(retry(e)),
                Ok(Ok(Frame::Terms(t))) => t,
                Ok(Ok(Frame::Bye { reason })) => {
                    if c.vm.is_some() || c.voucher.is_some() {
                        self.finish(c, Phase::Ended, &reason, None)
                            .await
                            .map_err(retry)?;
                        return Ok(());
                    }
                    return Err(Session::Fatal(format!("publisher refused: {reason}")));
                }
                Ok(Ok(other)) => {
                    return Err(Session::Retry(format!("expected terms, got {other:?}")));
                }
            }
        };
        // The channel must be the publisher's, to this node, on chain.
        let ch = self.ledger.channel(&terms.channel).ok_or_else(|| {
            Session::Retry(format!(
                "channel {} is not on chain here yet",
                terms.channel
            ))
        })?;
        if ch.payer != c.publisher || ch.payee != self.ledger.address() {
            return Err(Session::Fatal(format!(
                "channel {} is not from the publisher to this node",
                terms.channel
            )));
        }
        if c.channel.is_some_and(|old| old != terms.channel) {
            return Err(Session::Fatal(
                "the publisher switched channels mid-contract".into(),
            ));
        }
        c.channel = Some(terms.channel);
        c.payout_interval_secs = terms.payout_interval_secs;
        c.lease_secs = terms.lease_secs;
        c.vm_key = Some(terms.vm_key.clone());
        c.storage_paid = terms.storage_paid;
        self.save(&c).map_err(retry)?;

        let vm_id = match &c.vm {
            Some(id) => id.clone(),
            None => {
                let started = Instant::now();
                let vm = self
                    .agent
                    .start(StartVm {
                        image: c.image_id.clone(),
                        cores: c.cores as u32,
                        cpu_quota: None,
                        mem_mib: c.memory_mib,
                        volume: (c.storage_gib > 0).then(|| volume_name(&task)),
                        volume_gib: (c.storage_gib > 0).then_some(c.storage_gib),
                        authorized_key: terms.vm_key.clone(),
                    })
                    .await
                    .map_err(|e| Session::Fatal(format!("VM launch: {e}")))?;
                c.vm = Some(vm.id.clone());
                c.started_ms = Some(now_ms());
                c.phase = Phase::Running;
                self.save(&c).map_err(retry)?;
                c.vm_host_key = self
                    .agent
                    .wait_ready(&vm.id, Duration::from_secs(180))
                    .await
                    .map_err(|e| Session::Fatal(e.to_string()))?;
                c.boot_ms = started.elapsed().as_millis() as u64;
                self.save(&c).map_err(retry)?;
                tracing::info!(%task, vm = %vm.id, boot_ms = c.boot_ms, "VM ready");
                vm.id
            }
        };
        let info = self
            .agent
            .info(&vm_id)
            .await
            .map_err(|e| Session::Fatal(e.to_string()))?;
        if !matches!(
            info.state,
            crate::store::VmState::Running | crate::store::VmState::Paused
        ) {
            return Err(Session::Fatal(format!("VM {vm_id} is {:?}", info.state)));
        }
        c.forward_port = tunnel
            .forward(info.ssh_port, c.forward_port)
            .await
            .map_err(retry)?;
        self.save(&c).map_err(retry)?;
        let phase = if c.phase == Phase::Paused {
            VmPhase::Paused
        } else {
            VmPhase::Running
        };
        let status = VmStatus {
            phase,
            host_key: c.vm_host_key.clone(),
            boot_ms: c.boot_ms,
        };
        pay.send(&Frame::Status(status)).await.map_err(retry)?;

        let result = self.serve(&mut c, &mut pay, &vm_id, &traffic).await;
        c.traffic_bytes += traffic.load(Ordering::Relaxed);
        let _ = self.save(&c);
        match result {
            Ok(reason) => {
                self.finish(c, Phase::Ended, &reason, Some(&mut pay))
                    .await
                    .map_err(retry)?;
                tunnel.close().await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The metering loop of a connected contract; returns why it ends.
    async fn serve(
        &self,
        c: &mut Contract,
        pay: &mut wire::PayStream,
        vm_id: &str,
        traffic: &AtomicU64,
    ) -> Result<String, Session> {
        let interval = Duration::from_secs(c.payout_interval_secs.unsigned_abs().max(1) as u64);
        let prepay = c.payout_interval_secs < 0;
        let late_after =
            interval.mul_f64(self.config.pause_after_intervals) + Duration::from_secs(1);
        let lease_end = c.started_ms.unwrap_or_else(now_ms) + c.lease_secs as u64 * 1000;
        // Reports not yet covered by a voucher: (accrued, sent at).
        let mut outstanding: VecDeque<(Amount, Instant)> = VecDeque::new();
        let mut covered_at = Instant::now();
        let mut paused_at: Option<Instant> = (c.phase == Phase::Paused).then(Instant::now);
        let mut next_report = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                frame = pay.recv() => match frame {
                    Ok(Frame::Voucher(v)) => {
                        if let Err(reason) = self.take_voucher(c, v) {
                            tracing::warn!(task = %c.task, %reason, "voucher refused");
                        }
                        while outstanding.front().is_some_and(|(a, _)| *a <= c.paid) {
                            covered_at = outstanding.pop_front().expect("front").1;
                        }
                        if outstanding.is_empty() {
                            covered_at = Instant::now();
                        }
                    }
                    Ok(Frame::Bye { reason }) => return Ok(reason),
                    Ok(Frame::Terms(t)) if t.storage_paid != c.storage_paid => {
                        tracing::info!(task = %c.task, storage_paid = t.storage_paid, "publisher changed storage payment");
                        c.storage_paid = t.storage_paid;
                        self.save(c).map_err(retry)?;
                    }
                    Ok(other) => tracing::debug!(?other, "ignored frame"),
                    Err(e) => return Err(retry(e)),
                },
                _ = tick.tick() => {}
            }
            if let Ok(info) = self.agent.info(vm_id).await {
                if !matches!(
                    info.state,
                    crate::store::VmState::Running | crate::store::VmState::Paused
                ) {
                    return Ok(format!("the VM stopped ({:?})", info.state));
                }
                c.usage = metered(c, &info.usage, traffic.load(Ordering::Relaxed));
                c.accrued = wire::price(&c.rates, c.compute_score, &c.usage);
            }
            if Instant::now() >= next_report {
                next_report = Instant::now() + interval;
                c.report_seq += 1;
                let report = UsageReport {
                    seq: c.report_seq,
                    usage: c.usage.clone(),
                    accrued: c.accrued,
                    last: false,
                };
                pay.send(&Frame::Usage(report)).await.map_err(retry)?;
                outstanding.push_back((c.accrued, Instant::now()));
                self.save(c).map_err(retry)?;
            }
            let late = if prepay {
                c.accrued > c.paid
            } else {
                covered_at.elapsed() > late_after
            };
            match (late, paused_at) {
                (true, None) => {
                    tracing::warn!(task = %c.task, accrued = %c.accrued, paid = %c.paid, "unpaid: pausing the VM");
                    self.set_paused(c, pay, vm_id, true).await?;
                    paused_at = Some(Instant::now());
                }
                (false, Some(_)) => {
                    tracing::info!(task = %c.task, "paid: resuming the VM");
                    self.set_paused(c, pay, vm_id, false).await?;
                    paused_at = None;
                }
                (true, Some(at)) if at.elapsed() > self.config.grace => {
                    return Ok("terminated: unpaid past the grace period".into());
                }
                _ => {}
            }
            if now_ms() >= lease_end {
                return Ok("lease ended".into());
            }
            self.watch_channel(c).map_err(retry)?;
        }
    }

    /// Pauses (QMP stop) or resumes the VM, records it and tells the publisher.
    async fn set_paused(
        &self,
        c: &mut Contract,
        pay: &mut wire::PayStream,
        vm_id: &str,
        paused: bool,
    ) -> Result<(), Session> {
        let done = match paused {
            true => self.agent.pause(vm_id).await,
            false => self.agent.resume(vm_id).await,
        };
        done.map_err(|e| Session::Retry(e.to_string()))?;
        c.phase = if paused {
            Phase::Paused
        } else {
            Phase::Running
        };
        self.save(c).map_err(retry)?;
        let phase = if paused {
            VmPhase::Paused
        } else {
            VmPhase::Running
        };
        let s = VmStatus {
            phase,
            host_key: None,
            boot_ms: 0,
        };
        pay.send(&Frame::Status(s)).await.map_err(retry)
    }

    /// Checks a voucher (signature by the channel's payer, this channel and
    /// chain, monotonic, within the confirmed deposit) and persists it
    /// before it counts as paid.
    fn take_voucher(&self, c: &mut Contract, v: SignedVoucher) -> Result<(), String> {
        let channel = c.channel.ok_or("no channel yet")?;
        let ch = self
            .ledger
            .channel(&channel)
            .ok_or("channel is not on chain")?;
        if !check_voucher(c.voucher.as_ref(), &v, &ch, self.ledger.chain_id())? {
            return Ok(());
        }
        let mut next = c.clone();
        next.paid = v.voucher.cumulative;
        next.voucher = Some(v);
        // Stored first: a voucher counts only once it survives a crash.
        self.save(&next).map_err(|e| e.to_string())?;
        tracing::debug!(task = %c.task, paid = %next.paid, delta = %(next.paid - c.paid), "voucher stored");
        *c = next;
        Ok(())
    }

    /// Claims when the payer starts settling or the channel nears expiry.
    fn watch_channel(&self, c: &mut Contract) -> Result<(), AgentError> {
        let (Some(channel), Some(v)) = (c.channel, &c.voucher) else {
            return Ok(());
        };
        let Some(ch) = self.ledger.channel(&channel) else {
            return Ok(());
        };
        let urgent = ch.settle_at.is_some()
            || self.ledger.height() + self.config.claim_margin_blocks >= ch.expiry_height;
        let pending = c.claim_txs.last().is_some_and(|t| self.ledger.pending(t));
        if urgent && v.voucher.cumulative > ch.claimed && !pending {
            match self
                .ledger
                .submit(TxBody::ChannelClaim { voucher: v.clone() })
            {
                Ok(tx) => {
                    tracing::info!(%channel, %tx, amount = %v.voucher.cumulative, "claimed");
                    c.claim_txs.push(tx);
                    self.save(c)?;
                }
                Err(e) => tracing::warn!(%channel, error = %e, "claim refused"),
            }
        }
        Ok(())
    }

    /// Stops the VM, sends the last report (when connected) and waits
    /// briefly for the last voucher, then closes the channel on chain.
    async fn finish(
        &self,
        mut c: Contract,
        phase: Phase,
        reason: &str,
        pay: Option<&mut wire::PayStream>,
    ) -> Result<(), AgentError> {
        if let Some(vm) = &c.vm {
            let _ = self.agent.stop(vm).await;
            if let Ok(info) = self.agent.info(vm).await {
                c.usage = metered(&c, &info.usage, 0);
                c.accrued = wire::price(&c.rates, c.compute_score, &c.usage);
            }
        }
        if let Some(pay) = pay {
            c.report_seq += 1;
            let report = UsageReport {
                seq: c.report_seq,
                usage: c.usage.clone(),
                accrued: c.accrued,
                last: true,
            };
            if pay.send(&Frame::Usage(report)).await.is_ok() {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while let Ok(Ok(frame)) = tokio::time::timeout_at(deadline, pay.recv()).await {
                    if let Frame::Voucher(v) = frame {
                        if let Err(reason) = self.take_voucher(&mut c, v) {
                            tracing::warn!(task = %c.task, %reason, "final voucher refused");
                        }
                        break;
                    }
                }
                let _ = pay
                    .send(&Frame::Bye {
                        reason: reason.to_string(),
                    })
                    .await;
            }
        }
        c.phase = phase;
        c.end_reason = Some(reason.to_string());
        self.save(&c)?;
        // A volume nobody pays for is not kept.
        if c.storage_gib > 0 && !c.storage_paid {
            let name = volume_name(&c.task);
            match self.agent.remove_volume(&name) {
                Ok(()) => tracing::info!(task = %c.task, volume = %name, "unpaid volume removed"),
                Err(e) => {
                    tracing::warn!(task = %c.task, error = %e, "could not remove the unpaid volume")
                }
            }
        }
        if let Some(channel) = c.channel
            && let Some(ch) = self.ledger.channel(&channel)
        {
            let voucher = c
                .voucher
                .clone()
                .filter(|v| v.voucher.cumulative > ch.claimed && v.voucher.seq > ch.last_seq);
            match self
                .ledger
                .submit(TxBody::ChannelClose { channel, voucher })
            {
                Ok(tx) => {
                    c.close_tx = Some(tx);
                    self.save(&c)?;
                    tracing::info!(task = %c.task, %channel, %tx, paid = %c.paid, %reason, "contract over; closing the channel");
                }
                Err(e) => tracing::error!(%channel, error = %e, "could not close the channel"),
            }
        }
        Ok(())
    }
}

enum Session {
    /// Retry after a backoff (connection trouble).
    Retry(String),
    /// The contract cannot go on.
    Fatal(String),
}

fn retry(e: impl std::fmt::Display) -> Session {
    Session::Retry(e.to_string())
}

/// The payee's check of a voucher against the channel on chain: this
/// chain and channel, signed by the payer, seq above and cumulative not
/// below the voucher held, within the deposit. `Ok(false)`: the voucher
/// held again (nothing new).
pub fn check_voucher(
    held: Option<&SignedVoucher>,
    v: &SignedVoucher,
    channel: &zennet_chain::Channel,
    chain_id: u64,
) -> Result<bool, String> {
    let vv = &v.voucher;
    if vv.chain_id != chain_id || vv.channel != channel.id {
        return Err(format!(
            "voucher for chain {} channel {}",
            vv.chain_id, vv.channel
        ));
    }
    if let Some(h) = held {
        let (seq, cumulative) = (h.voucher.seq, h.voucher.cumulative);
        if vv.seq <= seq {
            return if vv.seq == seq && vv.cumulative == cumulative {
                Ok(false)
            } else {
                Err(format!("seq {} is not above {seq}", vv.seq))
            };
        }
        if vv.cumulative < cumulative {
            return Err(format!(
                "cumulative {} went down from {cumulative}",
                vv.cumulative
            ));
        }
    }
    if vv.cumulative > channel.deposit {
        return Err(format!(
            "cumulative {} exceeds the deposit {}",
            vv.cumulative, channel.deposit
        ));
    }
    match v.signer() {
        Ok(s) if s == channel.payer => Ok(true),
        _ => Err(format!("not signed by the payer {}", channel.payer)),
    }
}

/// A contract's billable usage from its VM's metered counters; `session_traffic`
/// is what the current tunnel carried on top of earlier sessions.
fn metered(c: &Contract, counters: &crate::store::UsageCounters, session_traffic: u64) -> Usage {
    let secs = counters.seconds.max(0.0);
    Usage {
        wall_ms: (secs * 1000.0) as u64,
        cpu_ms: counters.cpu_ns / 1_000_000,
        memory_mib_secs: (c.memory_mib as f64 * secs) as u64,
        storage_gib_secs: if c.storage_paid {
            (c.storage_gib as f64 * secs) as u64
        } else {
            0
        },
        traffic_bytes: c.traffic_bytes + session_traffic,
    }
}

/// The persistent volume a task's VM keeps on this node.
fn volume_name(task: &Hash) -> String {
    format!("task-{}", &task.to_string()[2..14])
}

fn store_err(e: rusqlite::Error) -> AgentError {
    AgentError::Store(e.to_string())
}

async fn market_loop(provider: std::sync::Weak<Provider>) {
    let mut last_height = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(p) = provider.upgrade() else { return };
        let height = p.ledger.height();
        if height == last_height {
            continue;
        }
        last_height = height;
        if let Err(e) = p.round().await {
            tracing::warn!(error = %e, "market round failed");
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zennet_chain::{Channel, SecretKey, Voucher};

    fn voucher(key: &SecretKey, channel: Hash, seq: u64, cumulative: Amount) -> SignedVoucher {
        Voucher {
            chain_id: 7,
            channel,
            seq,
            cumulative,
        }
        .sign(key)
    }

    #[test]
    fn payee_checks_every_voucher_rule() {
        let payer = SecretKey::generate();
        let ch = Channel {
            id: Hash([1; 32]),
            payer: payer.address(),
            payee: SecretKey::generate().address(),
            deposit: 1000,
            claimed: 0,
            last_seq: 0,
            expiry_height: 100,
            settle_at: None,
        };
        let first = voucher(&payer, ch.id, 1, 100);
        assert_eq!(check_voucher(None, &first, &ch, 7), Ok(true));
        let held = Some(&first);
        assert_eq!(
            check_voucher(held, &first, &ch, 7),
            Ok(false),
            "a repeat is not new"
        );
        assert_eq!(
            check_voucher(held, &voucher(&payer, ch.id, 2, 150), &ch, 7),
            Ok(true)
        );
        let bad = [
            (voucher(&payer, ch.id, 2, 150), 8, "chain"),
            (voucher(&payer, Hash([2; 32]), 2, 150), 7, "channel"),
            (voucher(&payer, ch.id, 1, 150), 7, "seq"),
            (voucher(&payer, ch.id, 3, 50), 7, "went down"),
            (voucher(&payer, ch.id, 3, 1001), 7, "deposit"),
            (voucher(&SecretKey::generate(), ch.id, 3, 200), 7, "payer"),
        ];
        for (v, chain_id, why) in bad {
            let err = check_voucher(held, &v, &ch, chain_id).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
