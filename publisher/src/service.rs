//! The publisher service: announces tasks, runs the SSH server nodes dial
//! into, and pays each admitted node ([`crate::session`]) through its
//! [`Payer`]. Housekeeping ends contracts whose task was cancelled on
//! chain and winds down channels that nodes left open.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::PrivateKey;
use tokio::sync::mpsc;
use zennet_chain::task::{Acceptance, TaskRecord};
use zennet_chain::{Address, Amount, Hash, Ledger, SecretKey, TxBody, pow};
use zennet_pay::{Payer, SqliteStore};
use zennet_proto::{Usage, VmPhase};
use zennet_tunnel::{Forwards, SshServer, keys as sshkey};

use crate::admission::ChainGate;
use crate::error::PublisherError;
use crate::store::{ContractRow, Store, TaskRow};
use crate::taskfile::TaskFile;
use crate::view::{AppView, LanHostView, TaskView, VmView, app_id};

pub struct PublisherConfig {
    /// Holds publisher.db, pay.db, host_key, vm_key.
    pub dir: PathBuf,
    /// Compute is paid at no more than the VM's measured compute units
    /// per core × this; a node below half of its claim even so is dropped
    /// (see [`crate::capacity`]).
    pub capacity_tolerance: f64,
    /// Where the SSH server listens.
    pub ssh_listen: String,
    /// `host:port` put in announcements (default: the address listened on).
    pub endpoint: Option<String>,
    /// Built images, to resolve image hashes in task files.
    pub images_dir: PathBuf,
}

pub struct Publisher {
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) key: SecretKey,
    pub(crate) payer: Payer,
    store: Mutex<Store>,
    endpoint: String,
    host_key_fp: Hash,
    vm_key_path: PathBuf,
    pub(crate) vm_key_line: String,
    images_dir: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) capacity_tolerance: f64,
    live: Mutex<HashMap<(Hash, Address), Live>>,
    /// One contract row and channel per acceptance: creating them is one
    /// step at a time, whether a block or a node's `Join` asks first.
    opening: Mutex<()>,
    /// This host's calibration for the capacity check, once made.
    pub(crate) calibration: Arc<tokio::sync::Mutex<Option<(f64, f64)>>>,
    /// The tasks' private networks.
    pub(crate) lan: Arc<crate::lan::Lan>,
    /// The tasks whose network this host is on, and the port serving it
    /// (aborted when dropped).
    lan_hosts: Mutex<HashMap<Hash, LanHost>>,
    _server: SshServer,
}

/// A connected node's session, as the rest of the publisher reaches it.
pub(crate) struct Live {
    pub(crate) end: mpsc::UnboundedSender<String>,
    pub(crate) ports: Forwards,
    /// Terms sent (before: the session is being set up).
    pub(crate) joined: bool,
}

/// This host's port on a task's network; dropping it stops the port (and
/// with it the namespace).
struct LanHost {
    view: LanHostView,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for LanHost {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// How long a node has to close after the contract ended before the
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
        let pay_store =
            SqliteStore::open(&config.dir.join("pay.db")).map_err(zennet_pay::PayError::from)?;
        let host_key = sshkey::load_or_create(&config.dir.join("host_key"))?;
        let host_key_fp = sshkey::fingerprint(host_key.public_key());
        let vm_key_path = config.dir.join("vm_key");
        let vm_key: PrivateKey = sshkey::load_or_create(&vm_key_path)?;
        let gate = Arc::new(ChainGate {
            ledger: ledger.clone(),
            me: key.address(),
        });
        let (server, mut incoming) = SshServer::start(
            &config.ssh_listen,
            host_key,
            gate,
            &[zennet_proto::SUBSYSTEM, zennet_proto::LAN_SUBSYSTEM],
        )
        .await?;
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| server.local_addr.to_string());
        let publisher = Arc::new(Publisher {
            payer: Payer::new(ledger.clone(), key.clone(), Arc::new(pay_store)),
            ledger,
            key,
            store: Mutex::new(store),
            endpoint,
            host_key_fp,
            vm_key_path,
            vm_key_line: sshkey::public_line(vm_key.public_key()),
            images_dir: config.images_dir,
            dir: config.dir,
            capacity_tolerance: config.capacity_tolerance,
            live: Mutex::new(HashMap::new()),
            opening: Mutex::new(()),
            calibration: Arc::new(tokio::sync::Mutex::new(None)),
            lan: Arc::default(),
            lan_hosts: Mutex::new(HashMap::new()),
            _server: server,
        });
        let p = publisher.clone();
        tokio::spawn(async move {
            while let Some(conn) = incoming.recv().await {
                let p = p.clone();
                tokio::spawn(async move {
                    let (key, subsystem) = (conn.key, conn.subsystem);
                    let result = match subsystem {
                        zennet_proto::LAN_SUBSYSTEM => p.serve_lan(conn).await,
                        _ => p.serve(conn).await,
                    };
                    if let Err(e) = result {
                        tracing::warn!(node_key = %key, subsystem, error = %e, "contract session ended");
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

    pub(crate) fn calibration_handle(&self) -> Arc<tokio::sync::Mutex<Option<(f64, f64)>>> {
        self.calibration.clone()
    }

    /// The private key `zennet vm ssh` logs into VMs with.
    pub fn vm_key_path(&self) -> &std::path::Path {
        &self.vm_key_path
    }

    /// Builds the announcement from a task file, solves its proof of work
    /// and submits it. Returns the task id (the transaction hash).
    pub async fn announce(&self, mut file: TaskFile) -> Result<Hash, PublisherError> {
        if file.web_port == Some(0) {
            return Err(PublisherError::BadWebPort);
        }
        for image in &mut file.images {
            if image.hash.is_none() {
                let built = zennet_images::load(&self.images_dir, &image.id).map_err(|source| {
                    PublisherError::ImageNotBuilt {
                        id: image.id.clone(),
                        source,
                    }
                })?;
                image.hash = Some(built.manifest.hash.parse().map_err(|source| {
                    PublisherError::BadImageHash {
                        id: image.id.clone(),
                        source,
                    }
                })?);
            }
        }
        let genesis = self.ledger.genesis();
        let height = self.ledger.height();
        let lease_blocks =
            (file.lease_max_secs as u64 * 1000).div_ceil(genesis.consensus.block_time_ms);
        let prune_height = (height + file.acceptance_window + lease_blocks + 100)
            .min(height + genesis.limits.max_prune_horizon);
        let mut a = file.announcement(&self.endpoint, self.host_key_fp, prune_height)?;
        let size = a.encoded_len();
        if size > genesis.limits.max_announcement_bytes as usize {
            return Err(PublisherError::TooLarge {
                size,
                limit: genesis.limits.max_announcement_bytes,
            });
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
        .map_err(|_| PublisherError::PowCancelled)?;
        let task = self
            .ledger
            .submit(TxBody::AnnounceTask { announcement: a })
            .map_err(|source| PublisherError::Chain {
                what: "the announcement",
                source,
            })?;
        self.store().put_task(&TaskRow {
            task,
            paying: true,
            storage_paid: true,
            announced_ms: now_ms(),
            web_port: file.web_port,
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
            .map_err(|source| PublisherError::Chain {
                what: "the cancellation",
                source,
            })?;
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
        let contracts = self.store().contracts()?;
        contracts
            .into_iter()
            .map(|c| {
                let l = live.get(&(c.task, c.node)).filter(|l| l.joined);
                let paid = match c.channel {
                    Some(ch) => self.payer.channel(&ch).map_or(0, |o| o.paid),
                    None => 0,
                };
                Ok(VmView {
                    id: c.acceptance,
                    task: c.task,
                    node: c.node,
                    phase: c.phase,
                    connected: l.is_some(),
                    ssh_port: l.and_then(|l| l.ports.ports().last().copied()),
                    host_key: c.host_key,
                    boot_ms: c.boot_ms,
                    channel: c.channel,
                    paid,
                    reported: c.reported,
                    usage: c.usage,
                    ended: c.ended_ms.is_some(),
                    end_reason: c.end_reason,
                    lan_address: self.lan.assigned(&c.task, &c.node).map(crate::lan::address),
                })
            })
            .collect()
    }

    /// The tasks that serve HTTP, with the VMs that can take a request.
    pub fn apps(&self) -> Result<Vec<AppView>, PublisherError> {
        let vms = self.vms()?;
        let tasks = self.store().tasks()?;
        Ok(tasks
            .into_iter()
            .filter_map(|t| {
                Some(AppView {
                    app: app_id(&t.task),
                    task: t.task,
                    web_port: t.web_port?,
                    vms: vms
                        .iter()
                        .filter(|v| {
                            v.task == t.task
                                && v.connected
                                && !v.ended
                                && v.phase == VmPhase::Running
                                && v.ssh_port.is_some()
                        })
                        .cloned()
                        .collect(),
                })
            })
            .collect())
    }

    /// The app `id` (see [`app_id`]).
    pub fn app(&self, id: &str) -> Result<AppView, PublisherError> {
        self.apps()?
            .into_iter()
            .find(|a| a.app == id)
            .ok_or_else(|| PublisherError::NoSuchApp(id.to_string()))
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
            0 => Err(PublisherError::NoSuchVm(id)),
            count => Err(PublisherError::AmbiguousVm { count, prefix: id }),
        }
    }

    /// Ends one VM's contract: the node stops it and closes the channel.
    pub fn stop_vm(&self, id: &str) -> Result<VmView, PublisherError> {
        let vm = self.vm(id)?;
        if !self.end_where(|k| *k == (vm.task, vm.node), "stopped by the publisher") {
            return Err(PublisherError::NotConnected(vm.id));
        }
        Ok(vm)
    }

    /// Puts this host on `task`'s private network at `.1` (see
    /// [`crate::lan_host`]), or says where it already is: programs run in
    /// the returned namespace reach the task's VMs.
    pub fn join_lan(&self, task: &Hash) -> Result<LanHostView, PublisherError> {
        self.own_task(task)?;
        let mut hosts = self.lan_hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = hosts.get(task).filter(|h| !h.serving.is_finished()) {
            return Ok(h.view.clone());
        }
        hosts.remove(task);
        let net = crate::lan_host::HostNet::open(task)?;
        let view = LanHostView {
            task: *task,
            netns: net.netns().to_string(),
            address: crate::lan::address(crate::lan::HOST_PLACE),
        };
        let (lan, task_id) = (self.lan.clone(), *task);
        let serving = tokio::spawn(async move {
            if let Err(e) = lan.serve_host(task_id, &net).await {
                tracing::warn!(task = %task_id, error = %e, "private network: the publisher's port failed");
            }
        });
        hosts.insert(
            *task,
            LanHost {
                view: view.clone(),
                serving,
            },
        );
        Ok(view)
    }

    /// Takes this host off `task`'s private network (its namespace goes
    /// too); whether it was on it.
    pub fn leave_lan(&self, task: &Hash) -> bool {
        let host = self
            .lan_hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task);
        host.is_some()
    }

    pub(crate) fn end_where(&self, pred: impl Fn(&(Hash, Address)) -> bool, reason: &str) -> bool {
        let mut any = false;
        for (k, l) in self.live().iter() {
            if pred(k) {
                any |= l.end.send(reason.to_string()).is_ok();
            }
        }
        any
    }

    pub(crate) fn own_task(&self, task: &Hash) -> Result<TaskRow, PublisherError> {
        self.store()
            .task(task)?
            .ok_or(PublisherError::NotOurTask(*task))
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn live(&self) -> MutexGuard<'_, HashMap<(Hash, Address), Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The contract row of an accepted node, created (with its channel
    /// opened on chain) the first time — as soon as the acceptance is
    /// mined, so the channel is ready when the node dials.
    pub(crate) fn ensure_contract(
        &self,
        record: &TaskRecord,
        acceptance: &Acceptance,
    ) -> Result<ContractRow, PublisherError> {
        let _one = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = match self.store().contract(&record.id, &acceptance.node)? {
            Some(c) => c,
            None => ContractRow {
                task: record.id,
                node: acceptance.node,
                acceptance: acceptance.tx,
                channel: None,
                reported: 0,
                usage: Usage::default(),
                phase: VmPhase::Booting,
                host_key: None,
                boot_ms: 0,
                started_ms: now_ms(),
                ended_ms: None,
                end_reason: None,
                measured_cu: None,
                paid_score: self.paid_score(record, acceptance, None),
                joined: false,
            },
        };
        if c.channel.is_none() && c.ended_ms.is_none() && record.cancelled_at.is_none() {
            let a = &record.announcement;
            let genesis = self.ledger.genesis();
            let per_sec = self.per_sec(record, acceptance, c.paid_score);
            let lease_secs = a.lease_max_secs as u128;
            let deposit =
                per_sec * (lease_secs + a.payout_interval_secs.unsigned_abs() as u128 + 30);
            let lease_blocks =
                (a.lease_max_secs as u64 * 1000).div_ceil(genesis.consensus.block_time_ms);
            let expiry_height = self.ledger.height()
                + 2 * lease_blocks
                + 2 * genesis.economics.channel_challenge_period
                + 50;
            let o = self.payer.open(acceptance.node, deposit, expiry_height)?;
            c.channel = Some(o.channel);
            tracing::info!(task = %record.id, node = %acceptance.node, channel = %o.channel, %deposit, "channel opened for a mined acceptance");
        }
        self.store().put_contract(&c)?;
        Ok(c)
    }

    /// What the publisher pays compute at: the claim, never above the
    /// announcement's maximum, never above the measurement allows.
    pub(crate) fn paid_score(
        &self,
        record: &TaskRecord,
        acceptance: &Acceptance,
        measured: Option<f64>,
    ) -> u32 {
        crate::capacity::paid_score(
            acceptance.compute_score,
            record.announcement.vm.max_compute_per_core,
            measured,
            self.capacity_tolerance,
        )
    }

    /// The most the accepted VM can cost per second at `score`.
    pub(crate) fn per_sec(
        &self,
        record: &TaskRecord,
        acceptance: &Acceptance,
        score: u32,
    ) -> Amount {
        let a = &record.announcement;
        let mem = acceptance.cores as u64 * a.vm.memory_mib_per_core as u64;
        zennet_proto::max_price_per_sec(
            &a.rates,
            score,
            acceptance.cores as u32,
            mem,
            a.vm.persistent_storage_gib,
        )
    }

    /// Opens the channel of every acceptance of our live tasks that has
    /// none yet.
    fn open_accepted(&self) -> Result<(), PublisherError> {
        // Bound first: a guard in a `for` head lives for the whole loop,
        // and the body takes the store lock again.
        let tasks = self.store().tasks()?;
        for t in tasks {
            let Some(record) = self.ledger.task(&t.task) else {
                continue;
            };
            if record.cancelled_at.is_some() || record.publisher != self.key.address() {
                continue;
            }
            for acceptance in &record.acceptances {
                let known = self
                    .store()
                    .contract(&record.id, &acceptance.node)?
                    .is_some_and(|c| c.channel.is_some() || c.ended_ms.is_some());
                if !known && let Err(e) = self.ensure_contract(&record, acceptance) {
                    tracing::warn!(task = %record.id, node = %acceptance.node, error = %e, "cannot open the channel yet");
                }
            }
        }
        Ok(())
    }

    /// Ends contracts whose task was cancelled on chain, winds down
    /// (settle, then reclaim) channels that nodes left open, and reclaims
    /// channels of nodes that vanished once they expire.
    fn tick(&self) -> Result<(), PublisherError> {
        let tasks = self.store().tasks()?;
        for t in tasks {
            if let Some(r) = self.ledger.task(&t.task)
                && r.cancelled_at.is_some()
            {
                self.end_where(|(task, _)| *task == t.task, "task cancelled");
            }
        }
        let contracts = self.store().contracts()?;
        for c in contracts {
            let (Some(channel), Some(ended)) = (c.channel, c.ended_ms) else {
                continue;
            };
            if now_ms() < ended + CLOSE_PATIENCE_MS {
                continue;
            }
            match self.payer.wind_down(&channel) {
                Ok(Some(tx)) => {
                    tracing::info!(%channel, %tx, "winding down a channel the node left open")
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(%channel, error = %e, "settle/reclaim not accepted yet"),
            }
        }
        match self.payer.reclaim_expired() {
            Ok(txs) if !txs.is_empty() => {
                tracing::info!(count = txs.len(), "reclaiming expired channels")
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "reclaim not accepted yet"),
        }
        Ok(())
    }
}

/// At every new tip: open the channels of new acceptances; every 2 s (and
/// at every tip): cancellations, channels left open, expired channels.
async fn housekeeping(p: Arc<Publisher>) {
    let mut tip = p.ledger.tip();
    let weak = Arc::downgrade(&p);
    drop(p);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            changed = tip.changed() => if changed.is_err() { return },
        }
        let Some(p) = weak.upgrade() else { return };
        if let Err(e) = p.open_accepted() {
            tracing::warn!(error = %e, "opening channels");
        }
        if let Err(e) = p.tick() {
            tracing::warn!(error = %e, "publisher housekeeping");
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
