//! The chain: block import with fork choice by total difficulty, reorgs that
//! roll the state back through per-block undo data, the mempool, block
//! templates for miners, and queries.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::block::{Block, Header, StoredBlock, tx_root};
use crate::channel::Channel;
use crate::crypto::{Address, Hash};
use crate::error::{BlockError, ChainError, MempoolError, Result};
use crate::execute::{BlockContext, apply_tx, end_block};
use crate::genesis::Genesis;
use crate::identity::Role;
use crate::mempool::{DEFAULT_MAX_TXS, Mempool};
use crate::seal::Ethash;
use crate::state::{Account, IdentityRecord, Overlay, State, StateKey, StateValue};
use crate::store::{BlockMeta, BlockStatus, Store, TxLocation};
use crate::task::TaskRecord;
use crate::tx::{SignedTx, VerifiedTx};

/// Bytes kept free in a block for its header and encoding overhead.
const BLOCK_OVERHEAD: usize = 1024;

pub const DB_FILE: &str = "chain.db";
pub const ETHASH_DIR: &str = "ethash";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The block extended the best chain.
    Extended {
        hash: Hash,
        height: u64,
    },
    /// The block made a heavier fork the best chain.
    Reorganized {
        hash: Hash,
        height: u64,
        rolled_back: usize,
        applied: usize,
    },
    /// Stored on a fork that is not (yet) heavier.
    SideChain {
        hash: Hash,
    },
    AlreadyKnown,
}

/// A transaction as the API shows it.
#[derive(Debug, Clone)]
pub struct TxInfo {
    pub hash: Hash,
    pub tx: Option<SignedTx>,
    pub sender: Option<Address>,
    pub location: Option<TxLocation>,
    pub pending: bool,
}

pub struct Chain {
    genesis: Genesis,
    genesis_hash: Hash,
    store: Store,
    state: State,
    tip: BlockMeta,
    ethash: Arc<Ethash>,
    mempool: Mempool,
}

impl Chain {
    /// Opens (or creates) the chain in `dir`: `chain.db` and the Ethash caches.
    pub fn open(dir: &Path, genesis: Genesis) -> Result<Chain> {
        std::fs::create_dir_all(dir)?;
        let store = Store::open(&dir.join(DB_FILE))?;
        let ethash = Ethash::new(genesis.ethash.clone(), Some(dir.join(ETHASH_DIR)));
        Chain::with_store(store, genesis, ethash)
    }

    /// A chain kept only in memory (tests, benchmarks).
    pub fn in_memory(genesis: Genesis) -> Result<Chain> {
        let ethash = Ethash::new(genesis.ethash.clone(), None);
        Chain::with_store(Store::in_memory()?, genesis, ethash)
    }

    fn with_store(mut store: Store, genesis: Genesis, ethash: Ethash) -> Result<Chain> {
        genesis.validate()?;
        let genesis_block = genesis.block();
        let genesis_hash = genesis_block.hash();
        match store.meta_hash("genesis")? {
            Some(h) if h != genesis_hash => {
                return Err(ChainError::Genesis(format!(
                    "the database belongs to chain {h}, not to this genesis ({genesis_hash}); use another home or the matching genesis"
                )));
            }
            Some(_) => {}
            None => {
                let state = genesis.state();
                store.write(|w| {
                    w.insert_block(
                        &genesis_block,
                        genesis.consensus.initial_difficulty as u128,
                        BlockStatus::Side,
                    )?;
                    w.make_canonical(&genesis_block)?;
                    w.set_undo(&genesis_hash, &vec![])?;
                    for (k, v) in state.iter() {
                        w.write_state(k, Some(v))?;
                    }
                    w.set_meta("genesis", &genesis_hash.0)?;
                    w.set_meta("tip", &genesis_hash.0)
                })?;
            }
        }
        let tip_hash = store
            .meta_hash("tip")?
            .ok_or_else(|| ChainError::Corrupt("no tip recorded".into()))?;
        let tip = store
            .block_meta(&tip_hash)?
            .ok_or_else(|| ChainError::Corrupt(format!("tip {tip_hash} is not stored")))?;
        let state = store.load_state()?;
        let root = state.root();
        if root != tip.header.state_root {
            return Err(ChainError::Corrupt(format!(
                "stored state root {root} does not match tip {tip_hash} (height {})",
                tip.header.height
            )));
        }
        Ok(Chain {
            genesis,
            genesis_hash,
            store,
            state,
            tip,
            ethash: Arc::new(ethash),
            mempool: Mempool::new(DEFAULT_MAX_TXS),
        })
    }

    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    pub fn genesis_hash(&self) -> Hash {
        self.genesis_hash
    }

    pub fn tip(&self) -> &BlockMeta {
        &self.tip
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn mempool(&self) -> &Mempool {
        &self.mempool
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn ethash(&self) -> &Ethash {
        &self.ethash
    }

    /// A shared handle, so a miner can search without holding the chain.
    pub fn ethash_handle(&self) -> Arc<Ethash> {
        self.ethash.clone()
    }

    pub fn account(&self, address: &Address) -> Account {
        self.state.account(address)
    }

    /// The nonce for the sender's next transaction, counting pending ones.
    pub fn next_nonce(&self, address: &Address) -> u64 {
        self.mempool.next_nonce(&self.state, address)
    }

    pub fn identity(&self, address: &Address, role: Role) -> Option<IdentityRecord> {
        self.state.identity(address, role)
    }

    pub fn task(&self, id: &Hash) -> Option<TaskRecord> {
        self.state.task(id)
    }

    pub fn channel(&self, id: &Hash) -> Option<Channel> {
        self.state.channel(id)
    }

    /// The difficulty a child of `parent` stamped `timestamp_ms` must have.
    pub fn next_difficulty(&self, parent: &Header, timestamp_ms: u64) -> u64 {
        next_difficulty(&self.genesis, parent, timestamp_ms)
    }

    pub fn block_by_height(&self, height: u64) -> Result<Option<StoredBlock>> {
        match self.store.canonical_hash(height)? {
            Some(h) => self.store.stored_block(&h),
            None => Ok(None),
        }
    }

    pub fn block_by_hash(&self, hash: &Hash) -> Result<Option<StoredBlock>> {
        self.store.stored_block(hash)
    }

    pub fn tx_info(&self, hash: &Hash) -> Result<Option<TxInfo>> {
        if let Some(v) = self.mempool.get(hash) {
            return Ok(Some(TxInfo {
                hash: *hash,
                tx: Some(v.signed.clone()),
                sender: Some(v.sender),
                location: None,
                pending: true,
            }));
        }
        let Some(loc) = self.store.tx_location(hash)? else {
            return Ok(None);
        };
        let tx = self.store.tx_body(&loc)?;
        let sender = tx
            .as_ref()
            .and_then(|t| crate::crypto::recover_address(&t.tx.signing_hash(), &t.signature).ok());
        Ok(Some(TxInfo {
            hash: *hash,
            tx,
            sender,
            location: Some(loc),
            pending: false,
        }))
    }

    /// A stored header by hash (any branch), unless known invalid.
    pub fn header(&self, hash: &Hash) -> Result<Option<Header>> {
        Ok(self
            .store
            .block_meta(hash)?
            .filter(|m| m.status != BlockStatus::Invalid)
            .map(|m| m.header))
    }

    /// Header rules that need only the parent: height, timestamp, difficulty,
    /// extra data and the Ethash seal. Lets a syncing node check a chain of
    /// headers before downloading any body.
    pub fn verify_header(
        &self,
        header: &Header,
        parent: &Header,
        now_ms: u64,
    ) -> Result<(), BlockError> {
        if header.parent != parent.hash() {
            return Err(BlockError::UnknownParent(header.parent));
        }
        self.check_header(header, parent, now_ms)
    }

    /// Canonical hashes from the tip back to genesis, dense near the tip and
    /// doubling the step after ten: a peer finds our fork point from it.
    pub fn locator(&self) -> Result<Vec<Hash>> {
        let mut out = Vec::new();
        let mut height = self.tip.header.height;
        let mut step = 1u64;
        loop {
            if let Some(h) = self.store.canonical_hash(height)? {
                out.push(h);
            }
            if height == 0 {
                break;
            }
            if out.len() >= 10 {
                step *= 2;
            }
            height = height.saturating_sub(step);
        }
        Ok(out)
    }

    /// Up to `max` canonical headers after the newest locator hash that is
    /// on our canonical chain (after genesis if none is).
    pub fn headers_after(&self, locator: &[Hash], max: usize) -> Result<Vec<Header>> {
        let mut start = 1;
        for hash in locator {
            if let Some(meta) = self.store.block_meta(hash)?
                && meta.status == BlockStatus::Canonical
            {
                start = meta.header.height + 1;
                break;
            }
        }
        let mut out = Vec::new();
        for height in start..=self.tip.header.height {
            if out.len() >= max {
                break;
            }
            match self.store.canonical_hash(height)? {
                Some(h) => match self.store.block_meta(&h)? {
                    Some(meta) => out.push(meta.header),
                    None => break,
                },
                None => break,
            }
        }
        Ok(out)
    }

    /// Checks a transaction and admits it to the mempool.
    pub fn submit_tx(&mut self, tx: SignedTx) -> Result<Hash> {
        let vtx = tx.verify(
            self.genesis.chain_id,
            self.genesis.limits.max_tx_bytes as usize,
        )?;
        if self.store.tx_location(&vtx.hash)?.is_some() {
            return Err(MempoolError::AlreadyMined(vtx.hash).into());
        }
        let ctx = self.next_context(Address::ZERO);
        Ok(self.mempool.add(vtx, &self.state, &self.genesis, &ctx)?)
    }

    /// An unsealed block on the current tip with the best-paying pending
    /// transactions; a miner fills in `nonce` and `mix_digest`.
    pub fn template(&self, miner: Address, now_ms: u64) -> Block {
        let parent = &self.tip.header;
        let timestamp_ms = now_ms.max(parent.timestamp_ms + 1);
        let ctx = self.next_context(miner);
        let max_bytes =
            (self.genesis.limits.max_block_bytes as usize).saturating_sub(BLOCK_OVERHEAD);
        let txs = self
            .mempool
            .select(&self.state, &self.genesis, &ctx, max_bytes);
        let mut overlay = Overlay::new(&self.state);
        let mut fees = 0;
        for tx in &txs {
            fees += apply_tx(&mut overlay, &self.genesis, &ctx, tx)
                .expect("select only returns executable txs");
        }
        end_block(&mut overlay, &self.genesis, &ctx, fees);
        let hashes: Vec<Hash> = txs.iter().map(|t| t.hash).collect();
        Block {
            header: Header {
                parent: self.tip.hash,
                height: ctx.height,
                timestamp_ms,
                tx_root: tx_root(&hashes),
                state_root: overlay.root(),
                difficulty: self.next_difficulty(parent, timestamp_ms),
                miner,
                extra: b"zennet".to_vec(),
                mix_digest: Hash::ZERO,
                nonce: 0,
            },
            txs: txs.into_iter().map(|t| t.signed).collect(),
        }
    }

    /// Validates and stores a block, switching to its fork if that is now
    /// the heaviest. `now_ms` bounds how far in the future its timestamp may be.
    pub fn import_block(&mut self, block: Block, now_ms: u64) -> Result<ImportOutcome> {
        let hash = block.hash();
        if let Some(meta) = self.store.block_meta(&hash)? {
            if meta.status == BlockStatus::Invalid {
                return Err(BlockError::KnownInvalid(hash).into());
            }
            return Ok(ImportOutcome::AlreadyKnown);
        }
        let size = block.encode().len();
        let max = self.genesis.limits.max_block_bytes as usize;
        if size > max {
            return Err(BlockError::TooLarge { size, max }.into());
        }
        let parent = self
            .store
            .block_meta(&block.header.parent)?
            .ok_or(BlockError::UnknownParent(block.header.parent))?;
        if parent.status == BlockStatus::Invalid {
            return Err(BlockError::KnownInvalid(parent.hash).into());
        }
        self.check_header(&block.header, &parent.header, now_ms)?;
        // A header hash names a block only together with the body its
        // transaction root commits to; a wrong body must not taint the hash.
        if block.computed_tx_root() != block.header.tx_root {
            return Err(BlockError::BadTxRoot.into());
        }
        // The seal is valid and binds the body from here on, so remembering an
        // invalid block is worth the row: producing another costs real work.
        let vtxs = match self.check_body(&block) {
            Ok(v) => v,
            Err(e) => {
                self.mark_invalid(&block, parent.total_difficulty)?;
                return Err(e);
            }
        };
        let total_difficulty = parent.total_difficulty + block.header.difficulty as u128;

        if parent.hash == self.tip.hash {
            let changes = match self.execute(&self.state, &block.header, &vtxs) {
                Ok(c) => c,
                Err(e) => {
                    self.mark_invalid(&block, parent.total_difficulty)?;
                    return Err(e.into());
                }
            };
            let undo = self.state.undo_for(&changes);
            self.store.write(|w| {
                w.insert_block(&block, total_difficulty, BlockStatus::Side)?;
                w.make_canonical(&block)?;
                w.set_undo(&hash, &undo)?;
                for (k, v) in &changes {
                    w.write_state(k, v.as_ref())?;
                }
                w.set_meta("tip", &hash.0)?;
                w.prune(block.header.height)?;
                Ok(())
            })?;
            self.state.commit(changes);
            let height = block.header.height;
            self.tip = BlockMeta {
                hash,
                header: block.header,
                total_difficulty,
                status: BlockStatus::Canonical,
            };
            self.mempool.prune(&self.state);
            tracing::debug!(%hash, height, txs = vtxs.len(), "extended chain");
            return Ok(ImportOutcome::Extended { hash, height });
        }

        self.store
            .write(|w| w.insert_block(&block, total_difficulty, BlockStatus::Side))?;
        if total_difficulty > self.tip.total_difficulty {
            return self.reorganize_to(hash);
        }
        Ok(ImportOutcome::SideChain { hash })
    }

    fn next_context(&self, miner: Address) -> BlockContext {
        BlockContext {
            height: self.tip.header.height + 1,
            miner,
        }
    }

    fn check_header(
        &self,
        header: &Header,
        parent: &Header,
        now_ms: u64,
    ) -> Result<(), BlockError> {
        if header.height != parent.height + 1 {
            return Err(BlockError::BadHeight {
                expected: parent.height + 1,
                got: header.height,
            });
        }
        if header.timestamp_ms <= parent.timestamp_ms {
            return Err(BlockError::TimestampNotAfterParent {
                parent: parent.timestamp_ms,
                got: header.timestamp_ms,
            });
        }
        if header.timestamp_ms > now_ms + self.genesis.consensus.max_future_ms {
            return Err(BlockError::TimestampInFuture {
                now: now_ms,
                got: header.timestamp_ms,
            });
        }
        let expected = self.next_difficulty(parent, header.timestamp_ms);
        if header.difficulty != expected {
            return Err(BlockError::BadDifficulty {
                expected,
                got: header.difficulty,
            });
        }
        if header.extra.len() > crate::block::MAX_EXTRA_BYTES {
            return Err(BlockError::ExtraTooLong(header.extra.len()));
        }
        self.ethash.verify(header)
    }

    /// Stateless body checks: transaction root, signatures, duplicates.
    fn check_body(&self, block: &Block) -> Result<Vec<VerifiedTx>> {
        if block.computed_tx_root() != block.header.tx_root {
            return Err(BlockError::BadTxRoot.into());
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(block.txs.len());
        for (index, tx) in block.txs.iter().enumerate() {
            let vtx = tx
                .clone()
                .verify(
                    self.genesis.chain_id,
                    self.genesis.limits.max_tx_bytes as usize,
                )
                .map_err(|e| BlockError::BadTx {
                    index,
                    hash: tx.hash(),
                    reason: e.to_string(),
                })?;
            if !seen.insert(vtx.hash) {
                return Err(BlockError::DuplicateTx(vtx.hash).into());
            }
            out.push(vtx);
        }
        Ok(out)
    }

    /// Executes a block's transactions on `base`; the state root must match.
    fn execute(
        &self,
        base: &State,
        header: &Header,
        txs: &[VerifiedTx],
    ) -> Result<BTreeMap<StateKey, Option<StateValue>>, BlockError> {
        let ctx = BlockContext {
            height: header.height,
            miner: header.miner,
        };
        let mut overlay = Overlay::new(base);
        let mut fees = 0u128;
        for (index, tx) in txs.iter().enumerate() {
            let fee =
                apply_tx(&mut overlay, &self.genesis, &ctx, tx).map_err(|e| BlockError::BadTx {
                    index,
                    hash: tx.hash,
                    reason: e.to_string(),
                })?;
            fees += fee;
        }
        end_block(&mut overlay, &self.genesis, &ctx, fees);
        let computed = overlay.root();
        if computed != header.state_root {
            return Err(BlockError::BadStateRoot {
                header: header.state_root,
                computed,
            });
        }
        Ok(overlay.into_changes())
    }

    fn mark_invalid(&mut self, block: &Block, parent_td: u128) -> Result<()> {
        let hash = block.hash();
        let td = parent_td + block.header.difficulty as u128;
        self.store.write(|w| {
            w.insert_block(block, td, BlockStatus::Invalid)?;
            w.set_status(&hash, BlockStatus::Invalid)
        })
    }

    /// Rolls the state back to the fork point and applies the fork up to
    /// `new_tip`. Everything is computed on a copy first and written in one
    /// SQL transaction, so a failure (an invalid block on the fork) leaves
    /// the current chain exactly as it was.
    fn reorganize_to(&mut self, new_tip: Hash) -> Result<ImportOutcome> {
        let mut branch = Vec::new();
        let mut cursor = self
            .store
            .block_meta(&new_tip)?
            .ok_or_else(|| ChainError::Corrupt(format!("block {new_tip} vanished")))?;
        while cursor.status != BlockStatus::Canonical {
            let parent = cursor.header.parent;
            branch.push(cursor);
            cursor = self
                .store
                .block_meta(&parent)?
                .ok_or_else(|| ChainError::Corrupt(format!("ancestor {parent} is not stored")))?;
        }
        let fork_height = cursor.header.height;
        let mut state = self.state.clone();
        let mut old_blocks = Vec::new();
        let mut touched: BTreeSet<StateKey> = BTreeSet::new();
        for height in (fork_height + 1..=self.tip.header.height).rev() {
            let hash = self
                .store
                .canonical_hash(height)?
                .ok_or_else(|| ChainError::Corrupt(format!("no canonical block at {height}")))?;
            let undo = self.store.undo(&hash)?;
            touched.extend(undo.iter().map(|(k, _)| *k));
            state.revert(&undo);
            old_blocks.push(self.full_block(&hash)?);
        }
        let mut new_blocks = Vec::new();
        for meta in branch.iter().rev() {
            let block = self.full_block(&meta.hash)?;
            let vtxs = self.check_body(&block)?;
            let changes = match self.execute(&state, &block.header, &vtxs) {
                Ok(c) => c,
                Err(e) => {
                    self.store
                        .write(|w| w.set_status(&meta.hash, BlockStatus::Invalid))?;
                    return Err(e.into());
                }
            };
            touched.extend(changes.keys().copied());
            let undo = state.commit(changes);
            new_blocks.push((block, undo));
        }
        let tip_meta = branch
            .first()
            .cloned()
            .expect("a heavier fork has at least one block");
        self.store.write(|w| {
            for b in &old_blocks {
                w.make_side(b)?;
            }
            for (b, undo) in &new_blocks {
                w.make_canonical(b)?;
                w.set_undo(&b.hash(), undo)?;
            }
            for key in &touched {
                w.write_state(key, state.get(key))?;
            }
            w.set_meta("tip", &new_tip.0)?;
            w.prune(tip_meta.header.height)?;
            Ok(())
        })?;
        self.state = state;
        let height = tip_meta.header.height;
        self.tip = BlockMeta {
            status: BlockStatus::Canonical,
            ..tip_meta
        };
        // Transactions only the old branch had go back to the mempool.
        let included: HashSet<Hash> = new_blocks
            .iter()
            .flat_map(|(b, _)| b.txs.iter().map(SignedTx::hash))
            .collect();
        self.mempool.prune(&self.state);
        for b in &old_blocks {
            for tx in &b.txs {
                if !included.contains(&tx.hash()) {
                    let _ = self.submit_tx(tx.clone());
                }
            }
        }
        tracing::info!(%new_tip, height, rolled_back = old_blocks.len(), applied = new_blocks.len(), "reorganized");
        Ok(ImportOutcome::Reorganized {
            hash: new_tip,
            height,
            rolled_back: old_blocks.len(),
            applied: new_blocks.len(),
        })
    }

    fn full_block(&self, hash: &Hash) -> Result<Block> {
        self.store
            .stored_block(hash)?
            .ok_or_else(|| ChainError::Corrupt(format!("block {hash} is not stored")))?
            .into_block()
            .ok_or_else(|| BlockError::Pruned.into())
    }
}

/// Homestead-style retarget toward the genesis block time: each block moves
/// difficulty by parent/divisor per window of 2/3 block time it is away from
/// the target, up by one step when fast, down by up to 99 steps when slow.
pub fn next_difficulty(genesis: &Genesis, parent: &Header, timestamp_ms: u64) -> u64 {
    let c = &genesis.consensus;
    let window = (c.block_time_ms * 2 / 3).max(1);
    let elapsed = timestamp_ms.saturating_sub(parent.timestamp_ms);
    let factor = (1 - (elapsed / window).min(100) as i128).max(-99);
    let step = (parent.difficulty / c.difficulty_divisor).max(1) as i128;
    let next = parent.difficulty as i128 + step * factor;
    next.clamp(c.min_difficulty as i128, u64::MAX as i128) as u64
}
