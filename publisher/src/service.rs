//! The publisher service: announces tasks, runs the SSH server, and pays.
//!
//! Each admitted node gets a channel (opened on chain before the terms go
//! out) and a voucher for every usage report, for no more than the
//! publisher's own bound: the most the accepted VM could have used since
//! the contract started, at the task's rates. A negative payout interval
//! prepays that many seconds ahead. Payment stops on cancel, lease end, or
//! when the operator switches it off; a channel the node never closes is
//! settled and reclaimed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::PrivateKey;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use zennet_chain::codec::amount_str;
use zennet_chain::task::{Acceptance, TaskRecord};
use zennet_chain::{Address, Amount, Hash, Ledger, SecretKey, SignedVoucher, TxBody, Voucher, pow};

use crate::server::{Connection, Gate, SshServer};
use crate::sshkey;
use crate::store::{ContractRow, Store, TaskRow};
use crate::taskfile::TaskFile;
use crate::wire::{self, Frame, Terms, Usage, UsageReport, VmPhase};

pub struct PublisherConfig {
    /// Holds publisher.db, host_key, vm_key.
    pub dir: PathBuf,
    /// Where the SSH server listens.
    pub ssh_listen: String,
    /// `host:port` put in announcements (default: the address listened on).
    pub endpoint: Option<String>,
    /// Built images, to resolve image hashes in task files.
    pub images_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Chain(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Key(#[from] sshkey::KeyError),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("SSH server: {0}")]
    Io(#[from] std::io::Error),
}

/// One VM as the publisher sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmView {
    /// The acceptance transaction hash.
    pub id: Hash,
    pub task: Hash,
    pub node: Address,
    pub phase: VmPhase,
    pub connected: bool,
    /// Loopback port on this host that reaches the VM's sshd.
    pub ssh_port: Option<u16>,
    pub host_key: Option<String>,
    pub boot_ms: u64,
    pub channel: Option<Hash>,
    #[serde(with = "amount_str")]
    pub paid: Amount,
    #[serde(with = "amount_str")]
    pub reported: Amount,
    pub usage: Usage,
    pub ended: bool,
    pub end_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    pub id: Hash,
    pub paying: bool,
    pub storage_paid: bool,
    /// The on-chain record (None once pruned).
    pub record: Option<TaskRecord>,
}

pub struct Publisher {
    ledger: Arc<dyn Ledger>,
    key: SecretKey,
    store: Mutex<Store>,
    endpoint: String,
    host_key_fp: Hash,
    vm_key_path: PathBuf,
    vm_key_line: String,
    images_dir: PathBuf,
    live: Mutex<HashMap<(Hash, Address), Live>>,
    _server: SshServer,
}

struct Live {
    end: mpsc::UnboundedSender<String>,
    ports: crate::server::Forwards,
}

/// Seconds a node has to close after the contract ended before the
/// publisher starts settling the channel itself.
const CLOSE_PATIENCE_MS: u64 = 60_000;

impl Publisher {
    pub async fn start(
        config: PublisherConfig,
        ledger: Arc<dyn Ledger>,
        key: SecretKey,
    ) -> Result<Arc<Publisher>, PublisherError> {
        std::fs::create_dir_all(&config.dir)?;
        let store = Store::open(&config.dir.join("publisher.db"))?;
        let host_key = sshkey::load_or_create(&config.dir.join("host_key"))?;
        let host_key_fp = sshkey::fingerprint(host_key.public_key());
        let vm_key_path = config.dir.join("vm_key");
        let vm_key: PrivateKey = sshkey::load_or_create(&vm_key_path)?;
        let gate = Arc::new(ChainGate {
            ledger: ledger.clone(),
            me: key.address(),
        });
        let (server, mut incoming) = SshServer::start(&config.ssh_listen, host_key, gate).await?;
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| server.local_addr.to_string());
        let publisher = Arc::new(Publisher {
            ledger,
            key,
            store: Mutex::new(store),
            endpoint,
            host_key_fp,
            vm_key_path,
            vm_key_line: sshkey::public_line(vm_key.public_key()),
            images_dir: config.images_dir,
            live: Mutex::new(HashMap::new()),
            _server: server,
        });
        let p = publisher.clone();
        tokio::spawn(async move {
            while let Some(conn) = incoming.recv().await {
                let p = p.clone();
                tokio::spawn(async move {
                    let key = conn.key;
                    if let Err(e) = p.serve(conn).await {
                        tracing::warn!(node_key = %key, error = %e, "contract session ended");
                    }
                });
            }
        });
        tokio::spawn(housekeeping(publisher.clone()));
        Ok(publisher)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn host_key_fingerprint(&self) -> Hash {
        self.host_key_fp
    }

    /// The private key `zennet vm ssh` logs into VMs with.
    pub fn vm_key_path(&self) -> &std::path::Path {
        &self.vm_key_path
    }

    /// Builds the announcement from a task file, solves its proof of work
    /// and submits it. Returns the task id (the transaction hash).
    pub async fn announce(&self, mut file: TaskFile) -> Result<Hash, PublisherError> {
        for image in &mut file.images {
            if image.hash.is_none() {
                let built = zennet_images::load(&self.images_dir, &image.id).map_err(|e| {
                    PublisherError::Invalid(format!(
                        "image {} has no hash in the task file and is not built here: {e}",
                        image.id
                    ))
                })?;
                image.hash = Some(built.manifest.hash.parse().map_err(|e| {
                    PublisherError::Invalid(format!("image {} manifest hash: {e}", image.id))
                })?);
            }
        }
        let genesis = self.ledger.genesis();
        let height = self.ledger.height();
        let lease_blocks =
            (file.lease_max_secs as u64 * 1000).div_ceil(genesis.consensus.block_time_ms);
        let prune_height = (height + file.acceptance_window + lease_blocks + 100)
            .min(height + genesis.limits.max_prune_horizon);
        let mut a = file
            .announcement(&self.endpoint, self.host_key_fp, prune_height)
            .map_err(|e| PublisherError::Invalid(e.to_string()))?;
        let size = a.encoded_len();
        if size > genesis.limits.max_announcement_bytes as usize {
            return Err(PublisherError::Invalid(format!(
                "the announcement is {size} bytes; the network limit is {} (shorten info or drop choices)",
                genesis.limits.max_announcement_bytes
            )));
        }
        let me = self.key.address();
        let difficulty = genesis.pow.min_announcement_difficulty;
        let a = tokio::task::spawn_blocking(move || {
            let nonce = pow::search(0, u64::MAX, difficulty, |n| {
                a.pow_nonce = n;
                a.pow_hash(&me)
            });
            a.pow_nonce = nonce.expect("a nonce meets any difficulty within 2^64 tries");
            a
        })
        .await
        .map_err(|e| PublisherError::Chain(e.to_string()))?;
        let task = self
            .ledger
            .submit(TxBody::AnnounceTask { announcement: a })
            .map_err(|e| PublisherError::Chain(e.to_string()))?;
        self.store().put_task(&TaskRow {
            task,
            paying: true,
            storage_paid: true,
            announced_ms: now_ms(),
        })?;
        tracing::info!(%task, "task announced");
        Ok(task)
    }

    pub fn tasks(&self) -> Result<Vec<TaskView>, PublisherError> {
        Ok(self
            .store()
            .tasks()?
            .into_iter()
            .map(|t| TaskView {
                id: t.task,
                paying: t.paying,
                storage_paid: t.storage_paid,
                record: self.ledger.task(&t.task),
            })
            .collect())
    }

    /// Cancels on chain and ends every contract of the task.
    pub fn cancel(&self, task: &Hash) -> Result<Hash, PublisherError> {
        self.own_task(task)?;
        let tx = self
            .ledger
            .submit(TxBody::CancelTask { task: *task })
            .map_err(|e| PublisherError::Chain(e.to_string()))?;
        self.end_where(|(t, _)| t == task, "task cancelled");
        Ok(tx)
    }

    /// Switches payment for a task on or off, and storage payment.
    pub fn set_paying(
        &self,
        task: &Hash,
        paying: Option<bool>,
        storage: Option<bool>,
    ) -> Result<TaskRow, PublisherError> {
        let mut row = self.own_task(task)?;
        if let Some(p) = paying {
            row.paying = p;
        }
        if let Some(s) = storage {
            row.storage_paid = s;
        }
        self.store().put_task(&row)?;
        Ok(row)
    }

    pub fn vms(&self) -> Result<Vec<VmView>, PublisherError> {
        let live = self.live();
        Ok(self
            .store()
            .contracts()?
            .into_iter()
            .map(|c| {
                let l = live.get(&(c.task, c.node));
                VmView {
                    id: c.acceptance,
                    task: c.task,
                    node: c.node,
                    phase: c.phase,
                    connected: l.is_some(),
                    ssh_port: l.and_then(|l| l.ports.ports().last().copied()),
                    host_key: c.host_key,
                    boot_ms: c.boot_ms,
                    channel: c.channel,
                    paid: c.paid,
                    reported: c.reported,
                    usage: c.usage,
                    ended: c.ended_ms.is_some(),
                    end_reason: c.end_reason,
                }
            })
            .collect())
    }

    /// Finds a VM by its id or a unique prefix of it.
    pub fn vm(&self, id: &str) -> Result<VmView, PublisherError> {
        let id = id.trim_start_matches("0x").to_ascii_lowercase();
        let matches: Vec<VmView> = self
            .vms()?
            .into_iter()
            .filter(|v| v.id.to_string().trim_start_matches("0x").starts_with(&id))
            .collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one")),
            0 => Err(PublisherError::NotFound(format!(
                "no VM {id} (see `zennet vm list`)"
            ))),
            n => Err(PublisherError::Invalid(format!(
                "{n} VMs start with {id}; give more digits"
            ))),
        }
    }

    /// Ends one VM's contract: the node stops it and closes the channel.
    pub fn stop_vm(&self, id: &str) -> Result<VmView, PublisherError> {
        let vm = self.vm(id)?;
        if !self.end_where(|k| *k == (vm.task, vm.node), "stopped by the publisher") {
            return Err(PublisherError::Invalid(format!(
                "VM {} is not connected; it stops when its node reconnects or its lease ends",
                vm.id
            )));
        }
        Ok(vm)
    }

    fn end_where(&self, pred: impl Fn(&(Hash, Address)) -> bool, reason: &str) -> bool {
        let mut any = false;
        for (k, l) in self.live().iter() {
            if pred(k) {
                any |= l.end.send(reason.to_string()).is_ok();
            }
        }
        any
    }

    fn own_task(&self, task: &Hash) -> Result<TaskRow, PublisherError> {
        self.store().task(task)?.ok_or_else(|| {
            PublisherError::NotFound(format!("task {task} was not announced by this node"))
        })
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> MutexGuard<'_, HashMap<(Hash, Address), Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One node's `zennet-pay` session.
    async fn serve(self: Arc<Self>, conn: Connection) -> Result<(), PublisherError> {
        let mut pay = wire::PayStream::new(conn.pay);
        let first = tokio::time::timeout(Duration::from_secs(30), pay.recv())
            .await
            .map_err(|_| PublisherError::Invalid("node sent no Join within 30 s".into()))??;
        let Frame::Join { task, .. } = first else {
            return Err(PublisherError::Invalid("first frame was not Join".into()));
        };
        let refuse = |reason: String| Frame::Bye { reason };
        let (record, acceptance) = match self.contract_for(&task, &conn.key) {
            Ok(x) => x,
            Err(e) => {
                let _ = pay.send(&refuse(e.to_string())).await;
                return Err(e);
            }
        };
        let node = acceptance.node;
        let existing = self.store().contract(&task, &node)?;
        let known = existing.is_some();
        let mut c = match existing {
            Some(c) => c,
            None => ContractRow {
                task,
                node,
                acceptance: acceptance.tx,
                channel: None,
                deposit: 0,
                seq: 0,
                paid: 0,
                voucher: None,
                reported: 0,
                usage: Usage::default(),
                phase: VmPhase::Booting,
                host_key: None,
                boot_ms: 0,
                started_ms: now_ms(),
                ended_ms: None,
                end_reason: None,
            },
        };
        // A node whose contract was under way when the task was cancelled
        // still gets its last usage paid; a new one is turned away.
        if record.cancelled_at.is_some() && known && c.ended_ms.is_none() {
            c.end_reason.get_or_insert_with(|| "task cancelled".into());
        }
        if c.ended_ms.is_some() || (record.cancelled_at.is_some() && !known) {
            let reason = c
                .end_reason
                .clone()
                .unwrap_or_else(|| "task cancelled".into());
            pay.send(&refuse(reason)).await.ok();
            return Ok(());
        }
        let a = &record.announcement;
        let storage_gib = a.vm.persistent_storage_gib;
        let mem = acceptance.cores as u64 * a.vm.memory_mib_per_core as u64;
        let per_sec = wire::max_price_per_sec(
            &a.rates,
            acceptance.compute_score,
            acceptance.cores as u32,
            mem,
            storage_gib,
        );
        let interval = a.payout_interval_secs;
        let lease_secs = a.lease_max_secs;
        if c.channel.is_none() {
            let genesis = self.ledger.genesis();
            let deposit = per_sec * (lease_secs as u128 + interval.unsigned_abs() as u128 + 30);
            let lease_blocks = (lease_secs as u64 * 1000).div_ceil(genesis.consensus.block_time_ms);
            let expiry_height = self.ledger.height()
                + 2 * lease_blocks
                + 2 * genesis.economics.channel_challenge_period
                + 50;
            let channel = self
                .ledger
                .submit(TxBody::ChannelOpen {
                    payee: node,
                    deposit,
                    expiry_height,
                })
                .map_err(|e| {
                    PublisherError::Chain(format!("cannot open a channel to {node}: {e}"))
                })?;
            c.channel = Some(channel);
            c.deposit = deposit;
            self.store().put_contract(&c)?;
            tracing::info!(%task, %node, %channel, deposit = %deposit, "channel opened");
        }
        let channel = c.channel.expect("set above");
        self.wait_channel(&channel).await?;
        let task_row = self.own_task(&task)?;
        let mut terms = Terms {
            channel,
            payout_interval_secs: interval,
            lease_secs,
            vm_key: self.vm_key_line.clone(),
            storage_paid: task_row.storage_paid,
        };
        pay.send(&Frame::Terms(terms.clone())).await?;
        if let Some(v) = &c.voucher {
            // A reconnecting node gets the last voucher again.
            let v: SignedVoucher =
                borsh::from_slice(v).map_err(|e| PublisherError::Invalid(e.to_string()))?;
            let _ = pay.send(&Frame::Voucher(v)).await;
        } else if interval < 0 {
            // Prepay: the first |interval| seconds before any work.
            let ahead = (per_sec * interval.unsigned_abs() as u128).min(c.deposit);
            let v = self.sign_voucher(&mut c, ahead)?;
            let _ = pay.send(&Frame::Voucher(v)).await;
        }

        let (end_tx, mut end_rx) = mpsc::unbounded_channel();
        self.live().insert(
            (task, node),
            Live {
                end: end_tx,
                ports: conn.forwards.clone(),
            },
        );
        let lease_end = tokio::time::Instant::now()
            + Duration::from_millis(
                (c.started_ms + lease_secs as u64 * 1000).saturating_sub(now_ms()),
            );
        // A contract that was ending when the node dropped ends now.
        let mut ending = c.end_reason.is_some();
        if let Some(reason) = c.end_reason.clone() {
            let _ = pay.send(&Frame::Bye { reason }).await;
        }
        let result = loop {
            let frame = tokio::select! {
                f = pay.recv() => f,
                Some(reason) = end_rx.recv(), if !ending => {
                    ending = true;
                    c.end_reason = Some(reason.clone());
                    self.store().put_contract(&c)?;
                    let _ = pay.send(&Frame::Bye { reason }).await;
                    continue;
                }
                _ = tokio::time::sleep_until(lease_end), if !ending => {
                    ending = true;
                    c.end_reason = Some("lease ended".into());
                    let _ = pay.send(&Frame::Bye { reason: "lease ended".into() }).await;
                    continue;
                }
            };
            match frame {
                Ok(Frame::Status(s)) => {
                    c.phase = s.phase;
                    if s.host_key.is_some() {
                        c.host_key = s.host_key;
                    }
                    if s.boot_ms > 0 {
                        c.boot_ms = s.boot_ms;
                    }
                    self.store().put_contract(&c)?;
                    tracing::info!(%task, %node, phase = ?c.phase, "VM status");
                }
                Ok(Frame::Usage(mut r)) => {
                    let row = self.own_task(&task)?;
                    if row.storage_paid != terms.storage_paid {
                        // The node stops (or starts) billing the volume.
                        terms.storage_paid = row.storage_paid;
                        pay.send(&Frame::Terms(terms.clone())).await?;
                    }
                    if !row.storage_paid {
                        let storage = wire::Usage {
                            storage_gib_secs: r.usage.storage_gib_secs,
                            ..Default::default()
                        };
                        let cost = wire::price(&a.rates, acceptance.compute_score, &storage);
                        r.accrued = r.accrued.saturating_sub(cost);
                    }
                    if let Some(v) =
                        self.answer_usage(&mut c, &r, row.paying, ending, per_sec, interval)?
                    {
                        pay.send(&Frame::Voucher(v)).await?;
                    }
                    if r.last {
                        c.phase = VmPhase::Stopped;
                        self.store().put_contract(&c)?;
                    }
                }
                Ok(Frame::Bye { reason }) => {
                    c.ended_ms = Some(now_ms());
                    c.end_reason.get_or_insert(reason.clone());
                    c.phase = VmPhase::Stopped;
                    self.store().put_contract(&c)?;
                    tracing::info!(%task, %node, %reason, paid = %c.paid, "contract ended");
                    break Ok(());
                }
                Ok(other) => {
                    break Err(PublisherError::Invalid(format!(
                        "unexpected frame from the node: {other:?}"
                    )));
                }
                Err(e) => {
                    tracing::info!(%task, %node, error = %e, "node disconnected; waiting for it to come back");
                    break Ok(());
                }
            }
        };
        self.live().remove(&(task, node));
        result
    }

    /// The on-chain task (ours, not pruned) and the acceptance naming `key`.
    fn contract_for(
        &self,
        task: &Hash,
        key: &Hash,
    ) -> Result<(TaskRecord, Acceptance), PublisherError> {
        let record = self
            .ledger
            .task(task)
            .filter(|t| t.publisher == self.key.address())
            .ok_or_else(|| {
                PublisherError::NotFound(format!(
                    "task {task} is not one of this publisher's live tasks"
                ))
            })?;
        let acceptance = record
            .acceptances
            .iter()
            .find(|a| a.ssh_key_fingerprint == *key)
            .cloned()
            .ok_or_else(|| {
                PublisherError::Invalid(format!("no acceptance of task {task} names this SSH key"))
            })?;
        Ok((record, acceptance))
    }

    async fn wait_channel(&self, channel: &Hash) -> Result<(), PublisherError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if self.ledger.included_at(channel).is_some() && self.ledger.channel(channel).is_some()
            {
                return Ok(());
            }
            if self.ledger.included_at(channel).is_some() || tokio::time::Instant::now() > deadline
            {
                return Err(PublisherError::Chain(format!(
                    "channel {channel} is not open on chain"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The voucher answering a usage report, if one is due: no more than
    /// reported, no more than the bound, no more than the deposit.
    fn answer_usage(
        &self,
        c: &mut ContractRow,
        r: &UsageReport,
        paying: bool,
        ending: bool,
        per_sec: Amount,
        interval: i32,
    ) -> Result<Option<SignedVoucher>, PublisherError> {
        c.reported = r.accrued;
        c.usage = r.usage.clone();
        if !paying {
            self.store().put_contract(c)?;
            return Ok(None);
        }
        let elapsed_secs = (now_ms().saturating_sub(c.started_ms) / 1000) as u128
            + interval.unsigned_abs() as u128
            + 5;
        let mut target = r.accrued.min(per_sec * elapsed_secs);
        if interval < 0 && !ending && !r.last {
            target += per_sec * interval.unsigned_abs() as u128;
        }
        let target = target.min(c.deposit);
        if target > c.paid {
            return self.sign_voucher(c, target).map(Some);
        }
        self.store().put_contract(c)?;
        // A final report always gets an answer, so the node can close.
        match (&c.voucher, r.last) {
            (Some(v), true) => Ok(Some(
                borsh::from_slice(v).map_err(|e| PublisherError::Invalid(e.to_string()))?,
            )),
            _ => Ok(None),
        }
    }

    /// Signs the next voucher and records it before it is sent.
    fn sign_voucher(
        &self,
        c: &mut ContractRow,
        cumulative: Amount,
    ) -> Result<SignedVoucher, PublisherError> {
        let v = Voucher {
            chain_id: self.ledger.chain_id(),
            channel: c.channel.expect("a channel is open"),
            seq: c.seq + 1,
            cumulative,
        }
        .sign(&self.key);
        c.seq += 1;
        c.paid = cumulative;
        c.voucher = Some(borsh::to_vec(&v).expect("encodes"));
        self.store().put_contract(c)?;
        Ok(v)
    }

    /// Ends contracts whose task was cancelled on chain, and settles then
    /// reclaims channels that nodes left open.
    fn tick(&self) -> Result<(), PublisherError> {
        for t in self.store().tasks()? {
            if let Some(r) = self.ledger.task(&t.task)
                && r.cancelled_at.is_some()
            {
                self.end_where(|(task, _)| *task == t.task, "task cancelled");
            }
        }
        let height = self.ledger.height();
        for c in self.store().contracts()? {
            let (Some(channel), Some(ended)) = (c.channel, c.ended_ms) else {
                continue;
            };
            let Some(ch) = self.ledger.channel(&channel) else {
                continue;
            };
            if now_ms() < ended + CLOSE_PATIENCE_MS {
                continue;
            }
            let body = match ch.settle_at {
                None if height < ch.expiry_height => TxBody::ChannelSettle { channel },
                Some(at) if height < at && height < ch.expiry_height => continue,
                _ => TxBody::ChannelReclaim { channel },
            };
            match self.ledger.submit(body) {
                Ok(tx) => tracing::info!(%channel, %tx, "settling a channel the node left open"),
                Err(e) => tracing::debug!(%channel, error = %e, "settle/reclaim not accepted yet"),
            }
        }
        Ok(())
    }
}

async fn housekeeping(p: Arc<Publisher>) {
    let weak = Arc::downgrade(&p);
    drop(p);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(p) = weak.upgrade() else { return };
        if let Err(e) = p.tick() {
            tracing::warn!(error = %e, "publisher housekeeping");
        }
    }
}

/// Admits keys that an acceptance of one of this publisher's tasks names.
struct ChainGate {
    ledger: Arc<dyn Ledger>,
    me: Address,
}

impl Gate for ChainGate {
    fn admits(&self, key: &Hash) -> bool {
        // Cancelled tasks too: a node under contract must be able to come
        // back to report its last usage and be paid for it.
        self.ledger.tasks().iter().any(|t| {
            t.publisher == self.me && t.acceptances.iter().any(|a| a.ssh_key_fingerprint == *key)
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
