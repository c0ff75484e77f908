//! Paid replicas: the storage market of the file network, both sides.
//!
//! * **Owner** ([`Storage::store`]): computes the file's Merkle root
//!   ([`crate::merkle`]), announces a storage task on chain (proof of work
//!   solved), and for every replica the chain shows runs a
//!   [`Replica`] state machine: challenges it at random intervals over
//!   `/zennet/fs-pos/1` ([`crate::pos`]), checks the proofs against the
//!   root, pays a voucher per passed challenge on the one channel it keeps
//!   to that node (the file network's channels, [`PartPayer`]), and
//!   releases a replica that fails on chain, so another node takes its
//!   slot. The owner serves the file to its replicas for free.
//! * **Storage node** (`[fs.store] enabled`): watches the chain for storage
//!   tasks, accepts those its policy takes ([`evaluate`]), fetches the
//!   parts through the downloader (from the owner and other replicas, who
//!   serve replicas of the same task for free), checks the announced root
//!   against what it fetched, keeps the file pinned (`fs rm` refuses it)
//!   and answers challenges; its [`Held`] state machine stops holding data
//!   the owner does not pay for.
//!
//! Both sides keep their contracts in `storage.db` (SQLite), each row the
//! state machine's own record as JSON: one writer, read back only at start.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::{AsyncReadExt, StreamExt};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::storage::MAX_REPLICAS;
use zennet_chain::{
    Address, Amount, FileHash, Hash, Ledger, StorageAcceptance, StorageAnnouncement, StorageRecord,
    TxBody, pow,
};
use zennet_net::PeerId;
use zennet_net::content::{Stream, stream_protocol};

use crate::api::{HeldView, ReplicaView, StorageTaskView, StorageView, StoreRequest};
use crate::error::{FsError, StorageError, StoreError, WireError};
use crate::merkle::{self, LEAF, Proof, Tree, TreeFile};
use crate::metainfo::{FileId, PIECE_LEN};
use crate::pos::{self, Challenge, Frame, LEAVES_PER_CHALLENGE};
use crate::replica::{
    Action, Answer, Held, HeldAction, HeldState, Replica, ReplicaState, Terms, Timing, Verdict,
};
use crate::service::Fs;
use crate::store::{Store, now_ms};

/// `[fs.store]`: the policy for holding other owners' files, and this
/// node's settings as an owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Accept storage tasks and hold others' files for pay.
    pub enabled: bool,
    /// Lowest price per GiB-hour taken.
    #[serde(with = "amount_str")]
    pub min_price_per_gib_hour: Amount,
    /// Most GiB held for others at once.
    pub max_gib: f64,
    /// The hardest acceptance proof of work this node searches for.
    pub max_acceptance_difficulty: u64,
    /// As an owner: mean seconds between challenges (`fs store` without
    /// `--challenge-secs`).
    pub challenge_secs: u32,
    /// As an owner: an answer later than this fails the replica.
    pub answer_secs: u64,
    /// As an owner: a replica must pass its first challenge within this
    /// long of accepting (it fetches the file meanwhile).
    pub fetch_secs: u64,
    /// As an owner: the proof of work the acceptances of this node's
    /// storage tasks must carry.
    pub acceptance_difficulty: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            enabled: false,
            min_price_per_gib_hour: 0,
            max_gib: 1.0,
            max_acceptance_difficulty: 1_000_000,
            challenge_secs: 300,
            answer_secs: 30,
            fetch_secs: 600,
            acceptance_difficulty: 1000,
        }
    }
}

impl StoreConfig {
    fn timing(&self) -> Timing {
        Timing {
            answer_ms: self.answer_secs.max(1) * 1000,
            fetch_ms: self.fetch_secs.max(1) * 1000,
        }
    }

    fn max_bytes(&self) -> u64 {
        (self.max_gib.max(0.0) * (1u64 << 30) as f64) as u64
    }
}

/// Why a storage node passes over a storage task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pass {
    #[error("[fs.store] enabled is off")]
    Disabled,
    #[error("this node announced it")]
    Own,
    #[error("the owner cancelled it")]
    Cancelled,
    #[error("its acceptance window closed at height {0}")]
    Closed(u64),
    #[error("the contract ended")]
    Ended,
    #[error("all its replicas are taken")]
    Full,
    #[error("this node took it before")]
    Taken,
    #[error("its price {offered} per GiB-hour is below [fs.store] min_price_per_gib_hour {min}")]
    Cheap { offered: Amount, min: Amount },
    #[error("it needs {need} bytes; [fs.store] max_gib leaves {free}")]
    TooBig { need: u64, free: u64 },
    #[error("it wants acceptance proof of work {needed}; [fs.store] searches at most {max}")]
    PowTooHard { needed: u64, max: u64 },
}

/// Whether a storage node with `policy`, holding `held_bytes` for others,
/// takes storage task `rec` at `height` and `now` (Unix ms).
pub fn evaluate(
    policy: &StoreConfig,
    rec: &StorageRecord,
    me: &Address,
    held_bytes: u64,
    height: u64,
    now: u64,
) -> Result<(), Pass> {
    let a = &rec.announcement;
    if !policy.enabled {
        return Err(Pass::Disabled);
    }
    if rec.owner == *me {
        return Err(Pass::Own);
    }
    if rec.cancelled_at.is_some() {
        return Err(Pass::Cancelled);
    }
    if height >= rec.accept_until() {
        return Err(Pass::Closed(rec.accept_until()));
    }
    if now >= a.ends_at_ms {
        return Err(Pass::Ended);
    }
    if rec.replica(me).is_some() {
        return Err(Pass::Taken);
    }
    if rec.active().count() >= a.replicas as usize {
        return Err(Pass::Full);
    }
    if a.price_per_gib_hour < policy.min_price_per_gib_hour {
        return Err(Pass::Cheap {
            offered: a.price_per_gib_hour,
            min: policy.min_price_per_gib_hour,
        });
    }
    let free = policy.max_bytes().saturating_sub(held_bytes);
    if a.size > free {
        return Err(Pass::TooBig { need: a.size, free });
    }
    if a.acceptance_difficulty > policy.max_acceptance_difficulty {
        return Err(Pass::PowTooHard {
            needed: a.acceptance_difficulty,
            max: policy.max_acceptance_difficulty,
        });
    }
    Ok(())
}

/// How often the contracts are looked at when nothing wakes them.
const TICK: Duration = Duration::from_secs(1);
/// A storage node waiting for a challenge's voucher, or an owner for
/// the receipt.
const PAY_WAIT: Duration = Duration::from_secs(30);
/// A failed fetch of a replica is retried after this.
const FETCH_RETRY: Duration = Duration::from_secs(3);
/// A channel to a replica is funded for this much of its contract ahead.
const FUND_AHEAD_MS: u64 = 24 * 3_600_000;

/// A storage task this node announced.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Owned {
    task: Hash,
    file: FileId,
    announcement: StorageAnnouncement,
    created_ms: u64,
    /// `announcing`, `open`, `cancelled`, `ended` or `lost`.
    state: String,
}

pub struct Storage {
    fs: Arc<Fs>,
    ledger: Arc<dyn Ledger>,
    config: StoreConfig,
    db: Mutex<Connection>,
    trees: PathBuf,
    owned: Mutex<HashMap<Hash, Owned>>,
    replicas: Mutex<HashMap<(Hash, Address), Replica>>,
    held: Mutex<HashMap<Hash, Held>>,
    /// Challenges in flight (owner) and fetches running (storage node).
    busy: Mutex<HashSet<(Hash, Address)>>,
    /// Per file, the replicas this node serves for free (its own tasks'
    /// and those of the tasks it holds a replica of).
    free: Mutex<HashMap<FileId, HashSet<Address>>>,
    wake: tokio::sync::Notify,
}

impl Storage {
    /// Opens `storage.db` beside the store, pins what this node holds
    /// under contract, serves challenges and starts the loop that runs
    /// both sides.
    pub fn start(
        fs: Arc<Fs>,
        ledger: Arc<dyn Ledger>,
        config: StoreConfig,
    ) -> Result<Arc<Storage>, FsError> {
        let dir = fs.store.dir().to_path_buf();
        let trees = dir.join("trees");
        std::fs::create_dir_all(&trees).map_err(|e| StoreError::Io {
            path: trees.clone(),
            source: e,
        })?;
        let db = Connection::open(dir.join("storage.db")).map_err(StoreError::from)?;
        migrate(&db).map_err(StoreError::from)?;
        let (owned, replicas, held) = load(&db).map_err(StoreError::from)?;
        for h in held.values().filter(|h| h.pins()) {
            fs.store.pin(&h.terms.file);
        }
        let mut incoming = fs
            .net
            .streams()
            .accept(stream_protocol(pos::PROTOCOL))
            .map_err(|e| FsError::Net(e.to_string()))?;
        let s = Arc::new(Storage {
            fs: fs.clone(),
            ledger,
            config,
            db: Mutex::new(db),
            trees,
            owned: Mutex::new(owned),
            replicas: Mutex::new(replicas),
            held: Mutex::new(held),
            busy: Mutex::new(HashSet::new()),
            free: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
        });
        fs.set_storage(Arc::downgrade(&s));
        let weak = Arc::downgrade(&s);
        tokio::spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                let Some(s) = weak.upgrade() else { break };
                tokio::spawn(async move { s.serve(peer, stream).await });
            }
        });
        tokio::spawn(run(Arc::downgrade(&s), s.ledger.tip()));
        tracing::info!(
            enabled = s.config.enabled,
            tasks = s.owned().len(),
            held = s.held().len(),
            "storage market"
        );
        Ok(s)
    }

    /// Announces a storage task for a file held here (complete).
    pub async fn store(&self, req: StoreRequest) -> Result<StorageTaskView, FsError> {
        let f = self
            .fs
            .store
            .file(&req.id)
            .ok_or(StoreError::Unknown(req.id))?;
        if !f.complete() {
            return Err(StorageError::Incomplete {
                file: req.id,
                have: f.have.count(),
                parts: f.meta.piece_count(),
            }
            .into());
        }
        let size = f.meta.length();
        if size == 0 {
            return Err(StorageError::Empty(req.id).into());
        }
        if req.replicas == 0 || req.replicas > MAX_REPLICAS {
            return Err(StorageError::Replicas(MAX_REPLICAS).into());
        }
        let genesis = self.ledger.genesis();
        let block_ms = genesis.consensus.block_time_ms.max(1);
        let duration_ms = req.duration_secs.saturating_mul(1000);
        let blocks = duration_ms.div_ceil(block_ms).max(1);
        // The record must outlive the contract (replicas read releases and
        // cancellation from it), with slack for a late inclusion.
        let slack = 100;
        let horizon = genesis.limits.max_prune_horizon;
        if blocks + 2 * slack > horizon {
            return Err(StorageError::TooLong {
                secs: req.duration_secs,
                blocks: horizon - 2 * slack,
                block_ms,
            }
            .into());
        }
        let challenge_secs = req
            .challenge_secs
            .unwrap_or(self.config.challenge_secs)
            .max(1);
        let store = self.fs.store.clone();
        let id = req.id;
        let tree = tokio::task::spawn_blocking(move || tree_of(&store, &id))
            .await
            .map_err(|_| StorageError::Interrupted("hashing the file"))??;
        let height = self.ledger.height();
        let mut a = StorageAnnouncement {
            file: FileHash(req.id.0),
            size,
            merkle_root: Hash(tree.root()),
            replicas: req.replicas,
            price_per_gib_hour: req.price_per_gib_hour,
            ends_at_ms: now_ms() + duration_ms,
            challenge_secs,
            acceptance_window: blocks.min(genesis.limits.max_acceptance_window),
            acceptance_difficulty: self.config.acceptance_difficulty.max(1),
            prune_height: height + blocks + slack,
            pow_nonce: 0,
        };
        let me = self.ledger.address();
        let difficulty = genesis.pow.min_announcement_difficulty;
        a = tokio::task::spawn_blocking(move || {
            a.pow_nonce = pow::search(0, u64::MAX, difficulty, |n| {
                a.pow_nonce = n;
                a.pow_hash(&me)
            })
            .unwrap_or(0);
            a
        })
        .await
        .map_err(|_| StorageError::Interrupted("the proof of work"))?;
        let task = self
            .ledger
            .submit(TxBody::AnnounceStorage {
                announcement: a.clone(),
            })
            .map_err(|e| StorageError::Refused {
                what: "the storage task",
                why: e.to_string(),
            })?;
        let o = Owned {
            task,
            file: req.id,
            announcement: a,
            created_ms: now_ms(),
            state: "announcing".into(),
        };
        self.save_owned(&o);
        self.owned().insert(task, o.clone());
        tracing::info!(%task, file = %req.id, replicas = req.replicas, "storage task announced");
        self.wake.notify_one();
        Ok(self.task_view(&o))
    }

    /// Cancels this node's storage tasks of `file` on chain.
    pub fn cancel(&self, file: &FileId) -> Result<Vec<Hash>, FsError> {
        let tasks: Vec<Hash> = self
            .owned()
            .values()
            .filter(|o| o.file == *file && matches!(o.state.as_str(), "announcing" | "open"))
            .map(|o| o.task)
            .collect();
        if tasks.is_empty() {
            return Err(StorageError::NoTask(*file).into());
        }
        let mut txs = Vec::new();
        for task in tasks {
            let tx = self
                .ledger
                .submit(TxBody::CancelStorage { task })
                .map_err(|e| StorageError::Refused {
                    what: "the cancellation",
                    why: e.to_string(),
                })?;
            txs.push(tx);
        }
        Ok(txs)
    }

    /// The tasks announced here (of `file`, or all) and the contracts held.
    pub fn view(&self, file: Option<&FileId>) -> StorageView {
        let mut owned: Vec<Owned> = self
            .owned()
            .values()
            .filter(|o| file.is_none_or(|f| o.file == *f))
            .cloned()
            .collect();
        owned.sort_by_key(|o| o.created_ms);
        let now = now_ms();
        let mut held: Vec<HeldView> = self
            .held()
            .values()
            .filter(|h| file.is_none_or(|f| h.terms.file == *f))
            .map(|h| held_view(h, now))
            .collect();
        held.sort_by_key(|h| h.task);
        StorageView {
            tasks: owned.iter().map(|o| self.task_view(o)).collect(),
            held,
        }
    }

    /// Challenges every live replica of `file` now and waits (up to the
    /// answer time) for the outcomes.
    pub async fn prove(&self, file: &FileId) -> Result<StorageView, FsError> {
        let now = now_ms();
        let keys: Vec<(Hash, Address, u32)> = {
            let owned = self.owned();
            let mut replicas = self.replicas();
            replicas
                .iter_mut()
                .filter(|((task, _), r)| {
                    r.live() && owned.get(task).is_some_and(|o| o.file == *file)
                })
                .map(|(k, r)| {
                    if r.asked.is_none() {
                        r.next_ms = now;
                    }
                    (k.0, k.1, r.round)
                })
                .collect()
        };
        if keys.is_empty() {
            return Err(StorageError::NoLiveReplica(*file).into());
        }
        self.wake.notify_one();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.config.timing().answer_ms)
            + PAY_WAIT;
        while tokio::time::Instant::now() < deadline {
            let done = {
                let replicas = self.replicas();
                keys.iter().all(|(t, n, round)| {
                    replicas
                        .get(&(*t, *n))
                        .is_none_or(|r| !r.live() || (r.round > *round && r.asked.is_none()))
                })
            };
            if done && self.busy().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(self.view(Some(file)))
    }

    /// Whether this node serves `file` to `peer` for free: `peer` holds a
    /// replica of it for this node, or of a task this node holds one of.
    pub fn serves_free(&self, file: &FileId, peer: &Address) -> bool {
        self.free().get(file).is_some_and(|s| s.contains(peer))
    }

    // ----- the loop -----

    fn step(self: &Arc<Self>, now: u64) {
        self.step_owner(now);
        self.step_holder(now);
        self.refresh_free();
    }

    fn step_owner(self: &Arc<Self>, now: u64) {
        let tasks: Vec<Owned> = self.owned().values().cloned().collect();
        for mut o in tasks {
            if matches!(o.state.as_str(), "cancelled" | "ended" | "lost") {
                continue;
            }
            let state = match self.ledger.storage(&o.task) {
                Some(rec) => {
                    self.adopt_replicas(&rec, now);
                    if rec.cancelled_at.is_some() {
                        self.end_replicas(&o.task);
                        "cancelled"
                    } else if now >= o.announcement.ends_at_ms {
                        "ended"
                    } else {
                        "open"
                    }
                }
                None if self.ledger.included_at(&o.task).is_some() => {
                    self.end_replicas(&o.task);
                    "ended"
                }
                None if self.ledger.pending(&o.task) => "announcing",
                None => "lost",
            };
            if o.state != state {
                tracing::info!(task = %o.task, from = %o.state, to = state, "storage task");
                o.state = state.to_string();
                self.save_owned(&o);
                self.owned().insert(o.task, o);
            }
        }
        let keys: Vec<(Hash, Address)> = self.replicas().keys().copied().collect();
        for key in keys {
            let action = {
                let mut replicas = self.replicas();
                let Some(r) = replicas.get_mut(&key) else {
                    continue;
                };
                // A release the chain dropped is submitted again.
                if r.state == ReplicaState::Failed
                    && let Some(tx) = r.release_tx
                    && !self.ledger.pending(&tx)
                    && self.ledger.included_at(&tx).is_none()
                {
                    r.release_lost();
                }
                if self.busy().contains(&key) && r.asked.is_none() {
                    None
                } else {
                    r.poll(now)
                }
            };
            match action {
                Some(Action::Challenge) if self.busy().insert(key) => {
                    let s = self.clone();
                    tokio::spawn(async move { s.challenge(key).await });
                }
                Some(Action::Release) => self.release(key),
                _ => {}
            }
        }
    }

    /// Starts a [`Replica`] for each replica of `rec` the chain shows that
    /// is not known here; marks released the ones the chain released.
    fn adopt_replicas(self: &Arc<Self>, rec: &StorageRecord, now: u64) {
        for r in &rec.replicas {
            let key = (rec.id, r.node);
            let mut replicas = self.replicas();
            match replicas.get_mut(&key) {
                Some(known) if r.released_at.is_some() && known.state != ReplicaState::Released => {
                    known.released();
                    self.save_replica(known);
                    tracing::info!(task = %rec.id, node = %r.node, "replica released on chain");
                }
                None if r.released_at.is_none() => {
                    let terms = Terms::of(rec, r.node);
                    let replica = Replica::new(terms, self.config.timing(), now, random());
                    self.save_replica(&replica);
                    tracing::info!(task = %rec.id, node = %r.node, "new replica");
                    // Fund the channel to it ahead, so that passes are paid at once.
                    let budget = replica.terms.cost(
                        replica
                            .terms
                            .ends_at_ms
                            .saturating_sub(now)
                            .min(FUND_AHEAD_MS),
                    );
                    replicas.insert(key, replica);
                    let payer = self.fs.payer.clone();
                    let node = r.node;
                    tokio::spawn(async move {
                        if budget > 0
                            && let Err(e) = payer.prepare_ahead(node, budget, budget).await
                        {
                            tracing::warn!(%node, error = %e, "cannot fund the channel to a replica");
                        }
                    });
                }
                _ => {}
            }
        }
    }

    fn end_replicas(&self, task: &Hash) {
        for ((t, _), r) in self.replicas().iter_mut() {
            if t == task && r.live() {
                r.end();
                self.save_replica(r);
            }
        }
    }

    fn release(&self, key: (Hash, Address)) {
        let (task, node) = key;
        match self.ledger.submit(TxBody::ReleaseStorage { task, node }) {
            Ok(tx) => {
                let mut replicas = self.replicas();
                if let Some(r) = replicas.get_mut(&key) {
                    tracing::warn!(%task, %node, failure = ?r.failure, %tx, "releasing a failed replica");
                    r.release_submitted(tx);
                    self.save_replica(r);
                }
            }
            Err(e) => tracing::warn!(%task, %node, error = %e, "cannot release a replica"),
        }
    }

    /// One challenge to one replica: send, judge, pay.
    async fn challenge(self: Arc<Self>, key: (Hash, Address)) {
        self.challenge_round(key).await;
        self.busy().remove(&key);
        self.wake.notify_one();
    }

    async fn challenge_round(&self, key: (Hash, Address)) {
        let (task, node) = key;
        let peer = self
            .ledger
            .storage(&task)
            .and_then(|rec| rec.replica(&node).map(|r| r.public_key))
            .and_then(|k| zennet_net::peer_id_of(&k));
        let height = self.ledger.height();
        let (Some(peer), Some(block)) = (peer, self.ledger.block_hash(height)) else {
            // Not on this node's chain (yet): look again in a second.
            if let Some(r) = self.replicas().get_mut(&key) {
                r.next_ms = now_ms() + 1000;
            }
            return;
        };
        let (ch, deadline) = {
            let mut replicas = self.replicas();
            let Some(r) = replicas.get_mut(&key) else {
                return;
            };
            let ch = r.challenge(now_ms(), height, block);
            self.save_replica(r);
            (ch, Duration::from_millis(r.timing.answer_ms))
        };
        let round = ch.round;
        let ask = async {
            let stream = open(&self.fs, peer).await;
            let (mut rd, mut wr) = stream.split();
            pos::write(&mut wr, &Frame::Challenge(ch)).await?;
            let answer = pos::read(&mut rd).await?;
            Ok::<_, WireError>((answer, rd, wr))
        };
        let (answer, mut rd, mut wr) = match tokio::time::timeout(deadline, ask).await {
            // The replica's poll fails it for the timeout.
            Err(_) => return,
            Ok(Err(e)) => {
                self.judge(key, round, Answer::Gone(e.to_string()));
                return;
            }
            Ok(Ok(x)) => x,
        };
        let answer = match answer {
            Frame::Proof { round: r, proofs } if r == round => Answer::Proofs(proofs),
            Frame::NotReady {
                round: r,
                have_parts,
                parts,
            } if r == round => Answer::NotReady { have_parts, parts },
            Frame::Refused { reason } => Answer::Refused(reason),
            other => Answer::Gone(format!("answered round {round} with {other:?}")),
        };
        let Verdict::Pass { pay } = self.judge(key, round, answer) else {
            return;
        };
        if pay == 0 {
            return;
        }
        let ahead = self.replicas().get(&key).map_or(0, |r| {
            r.terms.cost(
                r.terms
                    .ends_at_ms
                    .saturating_sub(now_ms())
                    .min(FUND_AHEAD_MS),
            )
        });
        let voucher = match self.pay(node, pay, ahead).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(%task, %node, error = %e, "cannot pay a passed challenge; it is owed");
                return;
            }
        };
        if let Some(r) = self.replicas().get_mut(&key) {
            r.paid(round, pay);
            self.save_replica(r);
        }
        let sent = async {
            pos::write(
                &mut wr,
                &Frame::Pay {
                    task,
                    round,
                    voucher: Box::new(voucher),
                },
            )
            .await?;
            pos::read(&mut rd).await
        };
        match tokio::time::timeout(PAY_WAIT, sent).await {
            Ok(Ok(Frame::Receipt { paid, .. })) => {
                tracing::debug!(%task, %node, round, %pay, %paid, "replica paid");
            }
            Ok(Ok(Frame::Refused { reason })) => {
                tracing::warn!(%task, %node, round, %reason, "the replica refused its voucher")
            }
            other => tracing::debug!(%task, %node, round, ?other, "no receipt for a voucher"),
        }
    }

    fn judge(&self, key: (Hash, Address), round: u32, answer: Answer) -> Verdict {
        let mut replicas = self.replicas();
        let Some(r) = replicas.get_mut(&key) else {
            return Verdict::Stale;
        };
        let v = r.answer(now_ms(), round, answer, random());
        match &v {
            Verdict::Fail(f) => {
                tracing::warn!(task = %key.0, node = %key.1, failure = %f, "replica failed")
            }
            Verdict::Pass { pay } => {
                tracing::info!(task = %key.0, node = %key.1, round, %pay, "challenge passed")
            }
            _ => {}
        }
        self.save_replica(r);
        v
    }

    /// A voucher paying `node` `amount` more, on the channel to it
    /// (funded ahead; topped up by `ahead` if a long contract spent it).
    async fn pay(
        &self,
        node: Address,
        amount: Amount,
        ahead: Amount,
    ) -> Result<zennet_chain::SignedVoucher, FsError> {
        self.fs.payer.prepare_ahead(node, amount, ahead).await?;
        let payer = self.fs.payer.clone();
        tokio::task::spawn_blocking(move || payer.pay(node, amount))
            .await
            .map_err(|_| StorageError::Interrupted("signing a voucher"))?
    }

    fn step_holder(self: &Arc<Self>, now: u64) {
        let me = self.ledger.address();
        let records: HashMap<Hash, StorageRecord> = self
            .ledger
            .storages()
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        let tasks: Vec<Hash> = self.held().keys().copied().collect();
        for task in tasks {
            let rec = records.get(&task);
            let (drop, fetch, lost) = {
                let mut held = self.held();
                let Some(h) = held.get_mut(&task) else {
                    continue;
                };
                let before = h.clone();
                let pinned = h.pins();
                let mut lost = false;
                let mut drop = None;
                match (h.state, rec) {
                    (HeldState::Accepting, Some(rec)) if rec.holds(&me) => h.accepted(),
                    (HeldState::Accepting, Some(rec)) if rec.replica(&me).is_some() => {
                        drop = Some("released by the owner".to_string())
                    }
                    (HeldState::Accepting, _) => {
                        if let Some(tx) = h.accept_tx
                            && !self.ledger.pending(&tx)
                            && self.ledger.included_at(&tx).is_none()
                        {
                            // Lost the race for a slot: forgotten, so the
                            // task may be taken again when one frees up.
                            lost = true;
                        }
                    }
                    (HeldState::Fetching | HeldState::Holding, None) => {
                        drop = Some("the storage task left the chain".into())
                    }
                    (HeldState::Fetching | HeldState::Holding, Some(rec)) => {
                        if rec.cancelled_at.is_some() {
                            drop = Some("cancelled by the owner".into());
                        } else if !rec.holds(&me) {
                            drop = Some("released by the owner".into());
                        }
                    }
                    _ => {}
                }
                if drop.is_none()
                    && let Some(HeldAction::Drop(why)) = h.poll(now)
                {
                    drop = Some(why);
                }
                let fetch = drop.is_none() && h.state == HeldState::Fetching;
                if *h != before {
                    self.save_held(h);
                }
                (drop.map(|why| (why, pinned)), fetch, lost)
            };
            if lost {
                tracing::info!(%task, "our acceptance was not mined");
                self.forget_held(&task);
            } else if let Some((why, pinned)) = drop {
                self.drop_held(&task, why, pinned);
            } else if fetch && self.busy().insert((task, me)) {
                let s = self.clone();
                tokio::spawn(async move {
                    s.fill(task).await;
                    s.busy().remove(&(task, me));
                });
            }
        }
        if !self.config.enabled {
            return;
        }
        let held_bytes: u64 = self
            .held()
            .values()
            .filter(|h| h.pins())
            .map(|h| h.terms.size)
            .sum();
        let height = self.ledger.height();
        let mut held_bytes = held_bytes;
        for rec in records.values() {
            if self.held().contains_key(&rec.id) {
                continue;
            }
            match evaluate(&self.config, rec, &me, held_bytes, height, now) {
                Ok(()) => {
                    held_bytes += rec.announcement.size;
                    self.accept(rec.clone(), now);
                }
                Err(why) => tracing::trace!(task = %rec.id, %why, "storage task passed over"),
            }
        }
    }

    /// Takes a storage task: records it (pinned), then solves the
    /// acceptance's proof of work and submits it.
    fn accept(self: &Arc<Self>, rec: StorageRecord, now: u64) {
        let me = self.ledger.address();
        let terms = Terms::of(&rec, me);
        let file = terms.file;
        let had = self.fs.store.file(&file).is_some_and(|f| f.complete());
        let h = Held::new(terms, None, now, had);
        self.fs.store.pin(&file);
        self.save_held(&h);
        self.held().insert(rec.id, h);
        tracing::info!(task = %rec.id, %file, owner = %rec.owner, "taking a storage task");
        let s = self.clone();
        tokio::spawn(async move {
            let difficulty = rec.announcement.acceptance_difficulty;
            let task = rec.id;
            let solved = tokio::task::spawn_blocking(move || {
                let mut a = StorageAcceptance { task, pow_nonce: 0 };
                pow::search(0, u64::MAX, difficulty, |n| {
                    a.pow_nonce = n;
                    a.pow_hash(&me)
                })
                .map(|_| a)
            })
            .await
            .ok()
            .flatten();
            let submitted = match solved {
                Some(acceptance) => s
                    .ledger
                    .submit(TxBody::AcceptStorage { acceptance })
                    .map_err(|e| e.to_string()),
                None => Err("no proof of work found".into()),
            };
            match submitted {
                Ok(tx) => {
                    if let Some(h) = s.held().get_mut(&task) {
                        h.accept_tx = Some(tx);
                        s.save_held(h);
                    }
                    tracing::info!(%task, %tx, "storage task accepted");
                }
                Err(e) => {
                    tracing::info!(%task, error = %e, "cannot accept a storage task");
                    s.forget_held(&task);
                }
            }
        });
    }

    /// Fetches a replica's parts, checks its root, and holds it.
    async fn fill(self: &Arc<Self>, task: Hash) {
        let Some(terms) = self.held().get(&task).map(|h| h.terms.clone()) else {
            return;
        };
        let file = terms.file;
        let complete = self.fs.store.file(&file).is_some_and(|f| f.complete());
        if !complete && let Err(e) = crate::download::fetch_into_store(&self.fs, file, 0).await {
            tracing::info!(%task, %file, error = %e, "fetching a replica; retrying");
            tokio::time::sleep(FETCH_RETRY).await;
            return;
        }
        let store = self.fs.store.clone();
        let path = self.tree_path(&file);
        let checked = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let f = store.file(&file).ok_or("the file left the store")?;
            if f.meta.length() != terms.size {
                return Err(format!(
                    "the file is {} bytes, the announcement says {}",
                    f.meta.length(),
                    terms.size
                ));
            }
            let tree = tree_of(&store, &file).map_err(|e| e.to_string())?;
            if tree.root() != terms.root.0 {
                return Err("the announced Merkle root does not match the file".into());
            }
            tree.write(&path)
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match checked {
            Ok(()) => {
                if let Some(h) = self.held().get_mut(&task) {
                    h.fetched(now_ms());
                    self.save_held(h);
                }
                let price = Some(self.fs.config.price_per_mib);
                if let Err(e) = self.fs.seed(&file, true, price) {
                    tracing::warn!(%file, error = %e, "cannot seed a replica");
                }
                tracing::info!(%task, %file, "holding a replica");
            }
            Err(why) => {
                let pinned = self.held().get(&task).is_some_and(|h| h.pins());
                self.drop_held(&task, why, pinned);
            }
        }
    }

    /// Stops holding `task`'s file: unpinned (if `pinned`: it held the
    /// pin until now), and deleted unless it was here before the contract
    /// (or another contract pins it).
    fn drop_held(&self, task: &Hash, why: String, pinned: bool) {
        let (file, had) = {
            let mut held = self.held();
            let Some(h) = held.get_mut(task) else {
                return;
            };
            h.drop_for(why.clone());
            self.save_held(h);
            if !pinned {
                return;
            }
            (h.terms.file, h.had_file)
        };
        tracing::warn!(%task, %file, reason = %why, "no longer holding a replica");
        self.release_file(&file, had);
    }

    /// An acceptance that never made it: the contract is forgotten.
    fn forget_held(&self, task: &Hash) {
        let Some(h) = self.held().remove(task) else {
            return;
        };
        if let Err(e) = self
            .db()
            .execute("DELETE FROM held WHERE task = ?1", params![&task.0[..]])
        {
            tracing::warn!(%task, error = %e, "cannot forget a contract");
        }
        self.release_file(&h.terms.file, h.had_file);
    }

    fn release_file(&self, file: &FileId, had: bool) {
        self.fs.store.unpin(file);
        if had || self.fs.store.pinned(file) {
            return;
        }
        let _ = std::fs::remove_file(self.tree_path(file));
        match self.fs.remove(file) {
            Ok(()) | Err(FsError::Store(StoreError::Unknown(_))) => {}
            Err(e) => tracing::warn!(%file, error = %e, "cannot remove a dropped replica"),
        }
    }

    fn refresh_free(&self) {
        let me = self.ledger.address();
        let mut tasks: HashSet<Hash> = self
            .owned()
            .values()
            .filter(|o| o.state == "open")
            .map(|o| o.task)
            .collect();
        tasks.extend(
            self.held()
                .values()
                .filter(|h| h.pins())
                .map(|h| h.terms.task),
        );
        let mut free: HashMap<FileId, HashSet<Address>> = HashMap::new();
        for task in tasks {
            if let Some(rec) = self.ledger.storage(&task) {
                free.entry(FileId(rec.announcement.file.0))
                    .or_default()
                    .extend(rec.active().map(|r| r.node).filter(|n| *n != me));
            }
        }
        *self.free() = free;
    }

    // ----- the storage node's side of the protocol -----

    async fn serve(self: Arc<Self>, peer: PeerId, stream: Stream) {
        let Some(owner) = zennet_net::peer_address(&peer) else {
            return;
        };
        let (mut rd, mut wr) = stream.split();
        let ch = match tokio::time::timeout(PAY_WAIT, pos::read(&mut rd)).await {
            Ok(Ok(Frame::Challenge(c))) => c,
            _ => return,
        };
        let reply = self.answer(&owner, &ch).await;
        let proved = matches!(reply, Frame::Proof { .. });
        if pos::write(&mut wr, &reply).await.is_err() || !proved {
            return;
        }
        let (task, round, voucher) = match tokio::time::timeout(PAY_WAIT, pos::read(&mut rd)).await
        {
            Ok(Ok(Frame::Pay {
                task,
                round,
                voucher,
            })) if task == ch.task => (task, round, voucher),
            _ => return,
        };
        let payee = self.fs.payee.clone();
        let received = tokio::task::spawn_blocking(move || payee.receive(owner, *voucher))
            .await
            .map_err(|_| FsError::from(StorageError::Interrupted("checking a voucher")))
            .and_then(|r| r);
        let reply = match received {
            Ok(delta) => {
                let mut held = self.held();
                match held.get_mut(&task) {
                    Some(h) => {
                        h.voucher(delta);
                        self.save_held(h);
                        tracing::debug!(%task, round, %delta, paid = %h.paid, "paid for a challenge");
                        Frame::Receipt {
                            round,
                            paid: h.paid,
                        }
                    }
                    None => Frame::Refused {
                        reason: format!("no contract {task} here"),
                    },
                }
            }
            Err(e) => Frame::Refused {
                reason: format!("voucher refused: {e}"),
            },
        };
        let _ = pos::write(&mut wr, &reply).await;
    }

    /// This node's answer to `owner`'s challenge.
    async fn answer(&self, owner: &Address, ch: &Challenge) -> Frame {
        let refuse = |reason: String| Frame::Refused { reason };
        let Some(h) = self.held().get(&ch.task).cloned() else {
            return refuse(format!("no storage contract {} here", ch.task));
        };
        if h.terms.owner != *owner {
            return refuse(format!("storage task {} is not yours", ch.task));
        }
        match h.state {
            HeldState::Holding => {}
            HeldState::Accepting | HeldState::Fetching => {
                let (have, parts) = self
                    .fs
                    .store
                    .file(&h.terms.file)
                    .map_or((0, 0), |f| (f.have.count(), f.meta.piece_count()));
                return Frame::NotReady {
                    round: ch.round,
                    have_parts: have,
                    parts,
                };
            }
            HeldState::Dropped | HeldState::Ended => {
                return refuse(format!(
                    "not held: {}",
                    h.reason.unwrap_or_else(|| h.state.to_string())
                ));
            }
        }
        let me = self.ledger.address();
        let store = self.fs.store.clone();
        let tree = self.tree_path(&h.terms.file);
        let asked = ch.clone();
        let proofs =
            tokio::task::spawn_blocking(move || prove(&store, &tree, &h.terms, &me, &asked)).await;
        match proofs {
            Ok(Ok(proofs)) => {
                if let Some(h) = self.held().get_mut(&ch.task) {
                    h.answered += 1;
                    self.save_held(h);
                }
                Frame::Proof {
                    round: ch.round,
                    proofs,
                }
            }
            Ok(Err(e)) => refuse(e),
            Err(e) => refuse(e.to_string()),
        }
    }

    fn tree_path(&self, file: &FileId) -> PathBuf {
        self.trees.join(format!("{file}.tree"))
    }

    // ----- views and records -----

    fn task_view(&self, o: &Owned) -> StorageTaskView {
        let a = &o.announcement;
        let replicas = self.replicas();
        let mut rs: Vec<&Replica> = replicas
            .iter()
            .filter(|((t, _), _)| *t == o.task)
            .map(|(_, r)| r)
            .collect();
        rs.sort_by_key(|r| r.since_ms);
        StorageTaskView {
            task: o.task,
            file: o.file,
            name: self
                .fs
                .store
                .file(&o.file)
                .map(|f| f.meta.name().to_string())
                .unwrap_or_default(),
            size: a.size,
            merkle_root: a.merkle_root,
            replicas_wanted: a.replicas,
            price_per_gib_hour: a.price_per_gib_hour,
            ends_at_ms: a.ends_at_ms,
            challenge_secs: a.challenge_secs,
            state: o.state.clone(),
            holding: rs
                .iter()
                .filter(|r| r.state == ReplicaState::Holding)
                .count(),
            replicas: rs.into_iter().map(replica_view).collect(),
        }
    }

    fn save_owned(&self, o: &Owned) {
        let json = serde_json::to_string(o).expect("a record encodes");
        if let Err(e) = self.db().execute(
            "INSERT INTO owned (task, row) VALUES (?1, ?2)
             ON CONFLICT(task) DO UPDATE SET row = excluded.row",
            params![&o.task.0[..], json],
        ) {
            tracing::warn!(task = %o.task, error = %e, "cannot save a storage task");
        }
    }

    fn save_replica(&self, r: &Replica) {
        let json = serde_json::to_string(r).expect("a record encodes");
        if let Err(e) = self.db().execute(
            "INSERT INTO replicas (task, node, row) VALUES (?1, ?2, ?3)
             ON CONFLICT(task, node) DO UPDATE SET row = excluded.row",
            params![&r.terms.task.0[..], &r.terms.node.0[..], json],
        ) {
            tracing::warn!(task = %r.terms.task, error = %e, "cannot save a replica");
        }
    }

    fn save_held(&self, h: &Held) {
        let json = serde_json::to_string(h).expect("a record encodes");
        if let Err(e) = self.db().execute(
            "INSERT INTO held (task, row) VALUES (?1, ?2)
             ON CONFLICT(task) DO UPDATE SET row = excluded.row",
            params![&h.terms.task.0[..], json],
        ) {
            tracing::warn!(task = %h.terms.task, error = %e, "cannot save a held contract");
        }
    }

    /// When the loop must look again: the earliest replica deadline.
    fn next_wake(&self, now: u64) -> Duration {
        let at = self
            .replicas()
            .values()
            .filter_map(|r| r.wake_at())
            .min()
            .unwrap_or(u64::MAX);
        Duration::from_millis(at.saturating_sub(now)).clamp(Duration::from_millis(20), TICK)
    }

    fn owned(&self) -> MutexGuard<'_, HashMap<Hash, Owned>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn replicas(&self) -> MutexGuard<'_, HashMap<(Hash, Address), Replica>> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(&self) -> MutexGuard<'_, HashMap<Hash, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn busy(&self) -> MutexGuard<'_, HashSet<(Hash, Address)>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn free(&self) -> MutexGuard<'_, HashMap<FileId, HashSet<Address>>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn run(weak: Weak<Storage>, mut tip: tokio::sync::watch::Receiver<u64>) {
    loop {
        let Some(s) = weak.upgrade() else { break };
        let now = now_ms();
        s.step(now);
        let wait = s.next_wake(now);
        let woken = async {
            tokio::select! {
                _ = s.wake.notified() => {}
                changed = tip.changed() => {
                    if changed.is_err() {
                        // The chain is gone: the node is stopping.
                        tokio::time::sleep(TICK).await;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        };
        woken.await;
    }
}

/// Opens the proof-of-storage protocol with `peer`, retrying a failed dial
/// (the caller bounds how long).
async fn open(fs: &Fs, peer: PeerId) -> Stream {
    loop {
        match fs
            .net
            .streams()
            .open_stream(peer, stream_protocol(pos::PROTOCOL))
            .await
        {
            Ok(s) => return s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot reach a replica yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The Merkle tree over a complete file's content, read part by part.
pub fn tree_of(store: &Store, id: &FileId) -> Result<Tree, StoreError> {
    let f = store.file(id).ok_or(StoreError::Unknown(*id))?;
    let per_part = (PIECE_LEN / LEAF) as usize;
    let mut leaves = Vec::with_capacity(f.meta.piece_count() as usize * per_part);
    for i in 0..f.meta.piece_count() {
        let part = store.read_part(id, i)?;
        leaves.extend(part.chunks(LEAF as usize).map(merkle::hash_leaf));
    }
    Ok(Tree::from_leaves(leaves))
}

/// The proofs of the leaves `ch` asks `me` for: each leaf read from the
/// store and its path from the tree file.
pub fn prove(
    store: &Store,
    tree: &std::path::Path,
    terms: &Terms,
    me: &Address,
    ch: &Challenge,
) -> Result<Vec<Proof>, String> {
    let tree = TreeFile::open(tree).map_err(|e| format!("{}: {e}", tree.display()))?;
    let leaves = pos::challenge_leaves(
        &ch.block,
        &ch.task,
        me,
        ch.round,
        merkle::leaf_count(terms.size),
        LEAVES_PER_CHALLENGE,
    );
    leaves
        .into_iter()
        .map(|index| {
            let len = merkle::leaf_len(terms.size, index);
            let leaf = store
                .read_range(&terms.file, index * LEAF, len)
                .map_err(|e| e.to_string())?;
            let siblings = tree.siblings(index).map_err(|e| e.to_string())?;
            Ok(Proof {
                index,
                leaf,
                siblings,
            })
        })
        .collect()
}

fn replica_view(r: &Replica) -> ReplicaView {
    ReplicaView {
        node: r.terms.node,
        state: r.state.to_string(),
        since_ms: r.since_ms,
        rounds: r.round,
        passed: r.passed,
        not_ready: r.not_ready,
        failed: r.failure.is_some() as u32,
        owed: r.owed,
        paid: r.paid,
        failure: r.failure.as_ref().map(|f| f.to_string()),
        release_tx: r.release_tx,
        history: r.history.iter().cloned().collect(),
    }
}

fn held_view(h: &Held, now: u64) -> HeldView {
    HeldView {
        task: h.terms.task,
        file: h.terms.file,
        owner: h.terms.owner,
        state: h.state.to_string(),
        size: h.terms.size,
        price_per_gib_hour: h.terms.price_per_gib_hour,
        ends_at_ms: h.terms.ends_at_ms,
        held_since_ms: h.held_since_ms,
        accrued: h.accrued(now),
        paid: h.paid,
        answered: h.answered,
        receipts: h.receipts,
        reason: h.reason.clone(),
    }
}

fn random() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source");
    u64::from_le_bytes(b)
}

type Loaded = (
    HashMap<Hash, Owned>,
    HashMap<(Hash, Address), Replica>,
    HashMap<Hash, Held>,
);

fn migrate(db: &Connection) -> rusqlite::Result<()> {
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "NORMAL")?;
    let version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < 1 {
        db.execute_batch(
            "CREATE TABLE owned (task BLOB PRIMARY KEY, row TEXT NOT NULL);
             CREATE TABLE replicas (task BLOB NOT NULL, node BLOB NOT NULL, row TEXT NOT NULL,
                                    PRIMARY KEY (task, node));
             CREATE TABLE held (task BLOB PRIMARY KEY, row TEXT NOT NULL);
             PRAGMA user_version = 1;",
        )?;
    }
    Ok(())
}

fn load(db: &Connection) -> rusqlite::Result<Loaded> {
    fn rows<T: serde::de::DeserializeOwned>(
        db: &Connection,
        table: &str,
    ) -> rusqlite::Result<Vec<T>> {
        let mut stmt = db.prepare(&format!("SELECT row FROM {table}"))?;
        stmt.query_map([], |r| r.get::<_, String>(0))?
            .filter_map(|row| match row.map(|j| serde_json::from_str(&j)) {
                Ok(Ok(v)) => Some(Ok(v)),
                Ok(Err(e)) => {
                    tracing::warn!(table, error = %e, "skipping an unreadable storage record");
                    None
                }
                Err(e) => Some(Err(e)),
            })
            .collect()
    }
    let owned = rows::<Owned>(db, "owned")?
        .into_iter()
        .map(|o| (o.task, o))
        .collect();
    let replicas = rows::<Replica>(db, "replicas")?
        .into_iter()
        .map(|r| ((r.terms.task, r.terms.node), r))
        .collect();
    let held = rows::<Held>(db, "held")?
        .into_iter()
        .map(|h| (h.terms.task, h))
        .collect();
    Ok((owned, replicas, held))
}
