//! The chain: block import with fork choice by total difficulty, reorgs that
//! roll the state back through per-block undo data, the mempool, block
//! templates for miners, and queries.
//!
//! Rules that keep it standing under hostile peers:
//! * a fork whose point is deeper than the reorg horizon (a genesis
//!   parameter) — or below the snapshot this node's state came from — is
//!   refused before anything is stored;
//! * a side block that would become the tip is executed, with every block
//!   of its branch, before anything of it is written; the rest are checked
//!   statelessly (header, seal, roots, signatures) and deleted once they are
//!   behind the horizon;
//! * announcement bodies and undo data are dropped only behind the horizon
//!   (and behind the two newest snapshot heights), so pruning never stops a
//!   reorg or a fast-syncing node;
//! * after every tip change each sender's pending transactions are checked
//!   again, and a transaction that can no longer execute leaves the pool
//!   with the ones queued after it.
//!
//! Signatures of a block's transactions are recovered on all cores (rayon).
//!
//! The state trie is written to the store when the chain closes
//! ([`Chain::flush_trie`], also on drop), not per block; a block writes its
//! state rows only. See [`crate::store`] for why and for what a crash costs.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use crate::block::{Block, Header, StoredBlock, tx_root};
use crate::channel::Channel;
use crate::crypto::{Address, Hash};
use crate::error::{BlockError, ChainError, MempoolError, Result};
use crate::execute::{BlockContext, apply_tx, end_block};
use crate::genesis::Genesis;
use crate::identity::Role;
use crate::mempool::{DEFAULT_MAX_TXS, Mempool};
use crate::seal::Ethash;
use crate::state::{Account, Changes, IdentityRecord, Overlay, Pending, State, StateRead, Undo};
use crate::store::{BlockMeta, BlockStatus, Store, StoreTx, TxLocation};
use crate::task::TaskRecord;
use crate::trie::{Child, NodeSource, NodeWrites, Prefix, Update};
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
    /// Height of the snapshot the state was installed from (0: none).
    snapshot_base: u64,
    ethash: Arc<Ethash>,
    mempool: Mempool,
    trie_table: TrieTable,
}

/// How the store's trie table stands against the tree in memory.
enum TrieTable {
    /// It holds the tree as it was when last written; these prefixes
    /// changed since.
    Behind(HashSet<Prefix>),
    /// It holds some other tree (the one in memory was rebuilt from the
    /// rows on open): the next flush writes the whole tree.
    Foreign,
}

impl TrieTable {
    fn note(&mut self, writes: &NodeWrites) {
        if let TrieTable::Behind(dirty) = self {
            dirty.extend(writes.keys().copied());
        }
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        if let Err(e) = self.flush_trie() {
            // Nothing is lost: the next open rebuilds the tree from the rows.
            tracing::warn!(error = %e, "could not write the state trie on close");
        }
    }
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
                let changes: Changes = state.iter().map(|(k, v)| (*k, Some(v.clone()))).collect();
                let update = crate::state::trie_update(&State::default(), &changes);
                let root = update.root.root_hash();
                store.write(|w| {
                    w.insert_block(
                        &genesis_block,
                        genesis.consensus.initial_difficulty as u128,
                        BlockStatus::Side,
                    )?;
                    w.make_canonical(&genesis_hash, 0, &[])?;
                    w.set_undo(&genesis_hash, &vec![])?;
                    write_rows(w, &changes)?;
                    write_nodes(w, update.writes.iter().map(|(p, n)| (p, n.as_ref())))?;
                    w.set_trie_root(&root)?;
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
        let (state, trie_table) = load_state(&store, &tip)?;
        let root = state.root();
        if root != tip.header.state_root {
            return Err(ChainError::Corrupt(format!(
                "the state rows hash to {root}, but tip {tip_hash} (height {}) commits to {}: the database is damaged; restore it from a backup or a snapshot (`zennet chain snapshot import`)",
                tip.header.height, tip.header.state_root
            )));
        }
        let snapshot_base = store.meta_u64("snapshot_base")?.unwrap_or(0);
        Ok(Chain {
            genesis,
            genesis_hash,
            store,
            state,
            tip,
            snapshot_base,
            ethash: Arc::new(ethash),
            mempool: Mempool::new(DEFAULT_MAX_TXS),
            trie_table,
        })
    }

    /// Rebuilds the state trie from the rows and writes it whole: the
    /// repair for a trie table that `verify_state` found damaged while
    /// the rows are sound.
    pub fn rebuild_trie(&mut self) -> Result<usize> {
        let (state, table) = rebuilt(self.store.state_under(&Prefix::ROOT)?)?;
        if state.root() != self.tip.header.state_root {
            return Err(ChainError::Corrupt(format!(
                "the state rows hash to {}, but the tip commits to {}: the rows themselves are damaged",
                state.root(),
                self.tip.header.state_root
            )));
        }
        self.state = state;
        self.trie_table = table;
        self.flush_trie()
    }

    /// Writes the state trie's changed nodes to the store (the whole tree
    /// after a rebuild), so the next open loads it instead of rebuilding
    /// it from the rows. Returns the nodes written. Runs on drop; call it
    /// to bound what a later crash costs.
    pub fn flush_trie(&mut self) -> Result<usize> {
        let root = self.state.root();
        let trie = self.state.trie();
        let (clear, prefixes): (bool, Vec<Prefix>) = match &self.trie_table {
            TrieTable::Behind(dirty) if dirty.is_empty() => return Ok(0),
            TrieTable::Behind(dirty) => (false, dirty.iter().copied().collect()),
            TrieTable::Foreign => (true, trie.nodes().map(|(p, _)| *p).collect()),
        };
        self.store.write(|w| {
            if clear {
                w.clear_trie()?;
            }
            write_nodes(w, prefixes.iter().map(|p| (p, trie.node(p))))?;
            w.set_trie_root(&root)
        })?;
        self.trie_table = TrieTable::Behind(HashSet::new());
        tracing::debug!(
            nodes = prefixes.len(),
            whole = clear,
            "wrote the state trie"
        );
        Ok(prefixes.len())
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

    /// Height of the snapshot this node's state was installed from (0: the
    /// state was computed from genesis).
    pub fn snapshot_base(&self) -> u64 {
        self.snapshot_base
    }

    /// The lowest height a fork may branch from: the reorg horizon below
    /// the tip, and never below the snapshot base (no undo data there).
    pub fn fork_floor(&self) -> u64 {
        self.tip
            .header
            .height
            .saturating_sub(self.genesis.consensus.reorg_horizon)
            .max(self.snapshot_base)
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

    /// Every task still in the state (not yet pruned).
    pub fn tasks(&self) -> Vec<TaskRecord> {
        self.state.tasks().cloned().collect()
    }

    pub fn storage(&self, id: &Hash) -> Option<crate::storage::StorageRecord> {
        self.state.storage(id)
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
        let sender = tx.as_ref().and_then(|t| {
            crate::crypto::recover_address(&t.tx.signing_hash(&self.genesis_hash), &t.signature)
                .ok()
        });
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
        check_header(&self.genesis, &self.ethash, header, parent, now_ms)
    }

    /// Checks a chain of headers that follows `parent`: linkage, the header
    /// rules, and every seal (on all cores). Returns how many passed and the
    /// first failure, so a caller can keep the good prefix — a header from a
    /// peer whose clock is ahead is `TimestampInFuture`, not a lie.
    pub fn verify_headers(
        &self,
        parent: &Header,
        headers: &[Header],
        now_ms: u64,
    ) -> (usize, Option<BlockError>) {
        verify_header_chain(&self.genesis, &self.ethash, parent, headers, now_ms)
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
            &self.genesis_hash,
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
        if parent.hash != self.tip.hash {
            self.check_fork_depth(&parent)?;
        }
        check_header(
            &self.genesis,
            &self.ethash,
            &block.header,
            &parent.header,
            now_ms,
        )?;
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
            return self.extend(block, vtxs, total_difficulty);
        }
        if total_difficulty > self.tip.total_difficulty {
            return self.reorganize(block, vtxs, total_difficulty);
        }
        self.store
            .write(|w| w.insert_block(&block, total_difficulty, BlockStatus::Side))?;
        Ok(ImportOutcome::SideChain { hash })
    }

    fn extend(
        &mut self,
        block: Block,
        vtxs: Vec<VerifiedTx>,
        total_difficulty: u128,
    ) -> Result<ImportOutcome> {
        let hash = block.hash();
        let (changes, update) = match self.execute(&self.state, &block.header, &vtxs) {
            Ok(c) => c,
            Err(e) => {
                self.mark_invalid(&block, self.tip.total_difficulty)?;
                return Err(e.into());
            }
        };
        let undo = self.state.undo_for(&changes);
        let height = block.header.height;
        let tx_hashes: Vec<Hash> = vtxs.iter().map(|t| t.hash).collect();
        let consensus = self.genesis.consensus.clone();
        self.store.write(|w| {
            w.insert_block(&block, total_difficulty, BlockStatus::Side)?;
            w.make_canonical(&hash, height, &tx_hashes)?;
            w.set_undo(&hash, &undo)?;
            write_rows(w, &changes)?;
            w.set_meta("tip", &hash.0)?;
            maintain(w, &consensus, height)
        })?;
        self.trie_table.note(&update.writes);
        self.state.apply(changes, update.root, update.writes);
        self.tip = BlockMeta {
            hash,
            header: block.header,
            total_difficulty,
            status: BlockStatus::Canonical,
            has_body: true,
        };
        self.after_tip_change();
        tracing::debug!(%hash, height, txs = vtxs.len(), "extended chain");
        Ok(ImportOutcome::Extended { hash, height })
    }

    /// Refuses a block whose fork from the canonical chain branches below
    /// the floor; walks at most the horizon's worth of side ancestors.
    fn check_fork_depth(&self, parent: &BlockMeta) -> Result<()> {
        let floor = self.fork_floor();
        let mut cursor = parent.clone();
        loop {
            if cursor.header.height < floor {
                return Err(BlockError::ForkTooDeep {
                    fork_height: cursor.header.height,
                    floor,
                }
                .into());
            }
            if cursor.status == BlockStatus::Canonical {
                return Ok(());
            }
            // A side ancestor may already be deleted: it was behind the horizon.
            cursor = match self.store.block_meta(&cursor.header.parent)? {
                Some(m) => m,
                None => {
                    return Err(BlockError::ForkTooDeep {
                        fork_height: cursor.header.height.saturating_sub(1),
                        floor,
                    }
                    .into());
                }
            };
        }
    }

    fn next_context(&self, miner: Address) -> BlockContext {
        BlockContext {
            height: self.tip.header.height + 1,
            miner,
            genesis_hash: self.genesis_hash,
        }
    }

    /// Stateless body checks: transaction root, signatures (recovered in
    /// parallel on all cores), duplicates.
    fn check_body(&self, block: &Block) -> Result<Vec<VerifiedTx>> {
        if block.computed_tx_root() != block.header.tx_root {
            return Err(BlockError::BadTxRoot.into());
        }
        let chain_id = self.genesis.chain_id;
        let max = self.genesis.limits.max_tx_bytes as usize;
        let genesis_hash = self.genesis_hash;
        let verified: Vec<Result<VerifiedTx, BlockError>> = block
            .txs
            .par_iter()
            .enumerate()
            .map(|(index, tx)| {
                tx.clone()
                    .verify(chain_id, &genesis_hash, max)
                    .map_err(|e| BlockError::BadTx {
                        index,
                        hash: tx.hash(),
                        reason: e.to_string(),
                    })
            })
            .collect();
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(verified.len());
        for vtx in verified {
            let vtx = vtx?;
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
        base: &dyn StateRead,
        header: &Header,
        txs: &[VerifiedTx],
    ) -> Result<(Changes, Update), BlockError> {
        let ctx = BlockContext {
            height: header.height,
            miner: header.miner,
            genesis_hash: self.genesis_hash,
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
        let update = overlay.update();
        let computed = update.root.root_hash();
        if computed != header.state_root {
            return Err(BlockError::BadStateRoot {
                header: header.state_root,
                computed,
            });
        }
        Ok((overlay.into_changes(), update))
    }

    fn mark_invalid(&mut self, block: &Block, parent_td: u128) -> Result<()> {
        let hash = block.hash();
        let td = parent_td + block.header.difficulty as u128;
        self.store.write(|w| {
            w.insert_block(block, td, BlockStatus::Invalid)?;
            w.set_status(&hash, BlockStatus::Invalid)
        })
    }

    /// Makes the fork ending in `new_block` (not yet stored) the canonical
    /// chain: rolls the state back to the fork point through undo data and
    /// applies the fork's blocks, all on a [`Pending`] view. Only when every
    /// block of the fork has executed is anything written, in one SQL
    /// transaction; a failing block is remembered as invalid and the current
    /// chain stays exactly as it was.
    fn reorganize(
        &mut self,
        new_block: Block,
        new_vtxs: Vec<VerifiedTx>,
        total_difficulty: u128,
    ) -> Result<ImportOutcome> {
        let new_hash = new_block.hash();
        let new_height = new_block.header.height;
        // The side ancestors of the new block, newest first, down to the fork.
        let mut branch: Vec<BlockMeta> = Vec::new();
        let mut cursor = self
            .store
            .block_meta(&new_block.header.parent)?
            .ok_or(BlockError::UnknownParent(new_block.header.parent))?;
        while cursor.status != BlockStatus::Canonical {
            let parent = cursor.header.parent;
            branch.push(cursor);
            cursor = self
                .store
                .block_meta(&parent)?
                .ok_or_else(|| ChainError::Corrupt(format!("ancestor {parent} is not stored")))?;
        }
        let fork_height = cursor.header.height;

        let mut pending = Pending::new(&self.state);
        let mut old_blocks: Vec<(Hash, StoredBlock)> = Vec::new();
        for height in (fork_height + 1..=self.tip.header.height).rev() {
            let hash = self
                .store
                .canonical_hash(height)?
                .ok_or_else(|| ChainError::Corrupt(format!("no canonical block at {height}")))?;
            let undo = self.store.undo(&hash)?.ok_or_else(|| {
                ChainError::Corrupt(format!(
                    "no undo data for block {hash} at {height}, inside the reorg horizon"
                ))
            })?;
            pending.revert(&undo);
            let stored = self
                .store
                .stored_block(&hash)?
                .ok_or_else(|| ChainError::Corrupt(format!("block {hash} is not stored")))?;
            old_blocks.push((hash, stored));
        }

        let mut applied: Vec<(Block, Vec<Hash>, Undo, bool)> = Vec::new();
        let mut td = cursor.total_difficulty;
        for meta in branch.iter().rev() {
            let block = self
                .store
                .stored_block(&meta.hash)?
                .ok_or_else(|| ChainError::Corrupt(format!("block {} vanished", meta.hash)))?
                .into_block()
                .ok_or(BlockError::Pruned)?;
            let vtxs = self.check_body(&block)?;
            match self.execute(&pending, &block.header, &vtxs) {
                Ok((changes, update)) => {
                    let undo = pending.commit(changes, update);
                    td = meta.total_difficulty;
                    applied.push((block, vtxs.iter().map(|t| t.hash).collect(), undo, false));
                }
                Err(e) => {
                    self.store
                        .write(|w| w.set_status(&meta.hash, BlockStatus::Invalid))?;
                    return Err(e.into());
                }
            }
        }
        match self.execute(&pending, &new_block.header, &new_vtxs) {
            Ok((changes, update)) => {
                let undo = pending.commit(changes, update);
                applied.push((
                    new_block,
                    new_vtxs.iter().map(|t| t.hash).collect(),
                    undo,
                    true,
                ));
            }
            Err(e) => {
                self.mark_invalid(&new_block, td)?;
                return Err(e.into());
            }
        }

        let (changes, writes, top) = pending.into_parts();
        let consensus = self.genesis.consensus.clone();
        self.store.write(|w| {
            for (hash, stored) in &old_blocks {
                let txs: Vec<Hash> = stored.txs.iter().map(|t| t.hash()).collect();
                w.make_side(hash, stored.header.height, &txs)?;
            }
            for (block, txs, undo, is_new) in &applied {
                let hash = block.hash();
                if *is_new {
                    w.insert_block(block, total_difficulty, BlockStatus::Side)?;
                }
                w.make_canonical(&hash, block.header.height, txs)?;
                w.set_undo(&hash, undo)?;
            }
            write_rows(w, &changes)?;
            w.set_meta("tip", &new_hash.0)?;
            maintain(w, &consensus, new_height)
        })?;
        self.apply_pending(changes, top, writes);
        let (tip_block, ..) = applied.last().expect("the new block was applied");
        self.tip = BlockMeta {
            hash: new_hash,
            header: tip_block.header.clone(),
            total_difficulty,
            status: BlockStatus::Canonical,
            has_body: true,
        };
        // Transactions only the old branch had go back to the mempool.
        let included: HashSet<Hash> = applied
            .iter()
            .flat_map(|(_, txs, ..)| txs.iter().copied())
            .collect();
        let returning: Vec<SignedTx> = old_blocks
            .iter()
            .rev()
            .flat_map(|(_, b)| b.txs.iter())
            .filter_map(|t| match t {
                crate::block::StoredTx::Full { hash, tx } if !included.contains(hash) => {
                    Some((**tx).clone())
                }
                _ => None,
            })
            .collect();
        self.after_tip_change();
        for tx in returning {
            let _ = self.submit_tx(tx);
        }
        tracing::info!(%new_hash, height = new_height, rolled_back = old_blocks.len(), applied = applied.len(), "reorganized");
        Ok(ImportOutcome::Reorganized {
            hash: new_hash,
            height: new_height,
            rolled_back: old_blocks.len(),
            applied: applied.len(),
        })
    }

    fn apply_pending(&mut self, changes: Changes, top: Child, writes: NodeWrites) {
        self.trie_table.note(&writes);
        self.state.apply(changes, top, writes);
    }

    /// The mempool follows the tip: what the new state cannot execute goes.
    fn after_tip_change(&mut self) {
        let ctx = self.next_context(Address::ZERO);
        self.mempool.revalidate(&self.state, &self.genesis, &ctx);
    }

    /// Replaces the state with a verified snapshot at `base`, whose header
    /// chain `headers` (from our tip's child to `base`, seals and linkage
    /// already checked) becomes canonical without bodies. See
    /// [`crate::snapshot`].
    pub(crate) fn install(
        &mut self,
        headers: &[Header],
        state: State,
        state_writes: impl FnOnce(&StoreTx<'_>) -> Result<()>,
    ) -> Result<()> {
        let base = headers
            .last()
            .ok_or_else(|| ChainError::NotFound("a header to install the snapshot at".into()))?
            .clone();
        let mut td = self.tip.total_difficulty;
        let consensus = self.genesis.consensus.clone();
        let base_hash = base.hash();
        let tds: Vec<u128> = headers
            .iter()
            .map(|h| {
                td += h.difficulty as u128;
                td
            })
            .collect();
        self.store.write(|w| {
            for (h, td) in headers.iter().zip(&tds) {
                w.insert_header(h, *td)?;
            }
            w.clear_state()?;
            state_writes(w)?;
            w.set_trie_root(&base.state_root)?;
            w.set_meta("tip", &base_hash.0)?;
            w.set_meta_u64("snapshot_base", base.height)?;
            maintain(w, &consensus, base.height)
        })?;
        self.state = state;
        self.trie_table = TrieTable::Behind(HashSet::new());
        self.snapshot_base = base.height;
        self.tip = BlockMeta {
            hash: base_hash,
            header: base,
            total_difficulty: *tds.last().expect("one header at least"),
            status: BlockStatus::Canonical,
            has_body: false,
        };
        self.after_tip_change();
        Ok(())
    }
}

/// Writes state changes in path order, so SQLite walks the B-tree once
/// from left to right instead of jumping between random pages.
fn write_rows(w: &StoreTx<'_>, changes: &Changes) -> Result<()> {
    let mut rows: Vec<_> = changes.iter().map(|(k, v)| (k.path(), k, v)).collect();
    rows.sort_unstable_by_key(|(path, ..)| *path);
    for (_, k, v) in rows {
        w.write_state(k, v.as_ref())?;
    }
    Ok(())
}

/// Writes trie nodes (`None` deletes), in key order for the same reason.
fn write_nodes<'a>(
    w: &StoreTx<'_>,
    nodes: impl Iterator<Item = (&'a Prefix, Option<&'a crate::trie::Node>)>,
) -> Result<()> {
    let mut nodes: Vec<_> = nodes.map(|(p, n)| (p.encode(), p, n)).collect();
    nodes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (_, prefix, node) in nodes {
        w.write_trie(prefix, node)?;
    }
    Ok(())
}

/// The state at `tip` from the store: the stored tree when the trie table
/// holds the tip's, else one rebuilt from the rows (after a crash, or when
/// the table does not hash to what its marker says).
fn load_state(store: &Store, tip: &BlockMeta) -> Result<(State, TrieTable)> {
    let rows = store.state_under(&Prefix::ROOT)?;
    if store.trie_root()? == Some(tip.header.state_root) {
        let state = State::from_rows(rows, Some(store.load_trie()?));
        if state.root() == tip.header.state_root {
            return Ok((state, TrieTable::Behind(HashSet::new())));
        }
        tracing::warn!(
            stored = %state.root(),
            tip = %tip.header.state_root,
            "the stored state trie does not hash to the root it is marked with; rebuilding it"
        );
        return rebuilt(store.state_under(&Prefix::ROOT)?);
    }
    rebuilt(rows)
}

fn rebuilt(
    rows: Vec<(Hash, crate::state::StateKey, crate::state::StateValue)>,
) -> Result<(State, TrieTable)> {
    let started = std::time::Instant::now();
    let entries = rows.len();
    let state = State::from_rows(rows, None);
    tracing::info!(
        entries,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rebuilt the state trie from the state rows (the stored one was behind the tip)"
    );
    Ok((state, TrieTable::Foreign))
}

/// Housekeeping behind the horizon after the tip reached `tip`.
fn maintain(w: &StoreTx<'_>, c: &crate::genesis::Consensus, tip: u64) -> Result<()> {
    let pruned = w.prune(c.retain_floor(tip), tip)?;
    let deleted = w.delete_side_blocks(tip.saturating_sub(c.reorg_horizon))?;
    if pruned + deleted > 0 {
        tracing::debug!(pruned, deleted, tip, "pruned behind the horizon");
    }
    Ok(())
}

fn check_header(
    genesis: &Genesis,
    ethash: &Ethash,
    header: &Header,
    parent: &Header,
    now_ms: u64,
) -> Result<(), BlockError> {
    check_header_rules(genesis, header, parent, now_ms)?;
    ethash.verify(header)
}

/// Every header rule but the seal.
fn check_header_rules(
    genesis: &Genesis,
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
    let expected = next_difficulty(genesis, parent, header.timestamp_ms);
    if header.difficulty != expected {
        return Err(BlockError::BadDifficulty {
            expected,
            got: header.difficulty,
        });
    }
    if header.extra.len() > crate::block::MAX_EXTRA_BYTES {
        return Err(BlockError::ExtraTooLong(header.extra.len()));
    }
    // Last: a block from a peer whose clock runs ahead is otherwise valid.
    if header.timestamp_ms > now_ms + genesis.consensus.max_future_ms {
        return Err(BlockError::TimestampInFuture {
            now: now_ms,
            got: header.timestamp_ms,
        });
    }
    Ok(())
}

/// See [`Chain::verify_headers`]; seals are checked in parallel after the
/// cheap rules have run in order.
pub fn verify_header_chain(
    genesis: &Genesis,
    ethash: &Ethash,
    parent: &Header,
    headers: &[Header],
    now_ms: u64,
) -> (usize, Option<BlockError>) {
    let mut good = 0;
    let mut failure = None;
    let mut prev = parent;
    for h in headers {
        if h.parent != prev.hash() {
            failure = Some(BlockError::UnknownParent(h.parent));
            break;
        }
        if let Err(e) = check_header_rules(genesis, h, prev, now_ms) {
            failure = Some(e);
            break;
        }
        good += 1;
        prev = h;
    }
    let seals: Vec<Result<(), BlockError>> = headers[..good]
        .par_iter()
        .map(|h| ethash.verify(h))
        .collect();
    if let Some(bad) = seals.iter().position(Result::is_err) {
        let e = seals[bad].clone().unwrap_err();
        return (bad, Some(e));
    }
    (good, failure)
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
