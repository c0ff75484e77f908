//! The SQLite store: blocks (canonical and side), the canonical index, the
//! transaction index, per-block undo data, the state (one row per trie leaf,
//! keyed by its path) and the state trie's internal nodes.
//!
//! WAL mode; every block import or reorg is one SQL transaction, so a crash
//! (even `kill -9`) leaves either the block fully applied — state rows,
//! undo data and tip — or not at all. The schema is versioned with
//! `PRAGMA user_version` and migrated on open.
//!
//! The trie table is derived data, written when the chain closes, not per
//! block: the meta key `trie_root` names the root whose tree it holds. A
//! block changes about 1.8 internal nodes per changed key at random
//! prefixes, and with a million accounts those upserts cost 13 of a
//! 500-transaction block's 59 ms (`zennet-bench chain`). The rows alone
//! determine the tree, so when the table is behind the tip (a crash,
//! `kill -9`) the chain rebuilds the tree from the rows on open and checks
//! it against the tip header.
//!
//! Checkpoints (copying committed WAL pages back into the database file)
//! run on a thread of their own ([`Checkpointer`]), not inside the commit
//! that happens to cross SQLite's 1,000-page threshold. With a large state
//! a block dirties thousands of scattered pages (its state rows and trie
//! nodes sit at random paths), so a checkpoint per commit had become most
//! of a block's import time. Durability is unchanged: a commit is in the
//! WAL either way, and SQLite replays the WAL after a crash.
//!
//! State rows are keyed by their trie path, so a snapshot chunk (every leaf
//! under one prefix) is one range scan, served from a separate read
//! connection ([`Store::reader`]) that sees one consistent tip while the
//! node keeps importing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::block::{Block, Header, StoredBlock, StoredTx};
use crate::codec::{decode, encode};
use crate::crypto::Hash;
use crate::error::{ChainError, Result};
use crate::state::{StateKey, StateValue, Undo};
use crate::trie::{Node, Prefix};
use crate::tx::SignedTx;

/// The meta key naming the state root the trie table's tree is of.
const TRIE_ROOT: &str = "trie_root";

/// Migrations, in order; `user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
     CREATE TABLE blocks (
        hash BLOB PRIMARY KEY,
        parent BLOB NOT NULL,
        height INTEGER NOT NULL,
        total_difficulty BLOB NOT NULL,
        header BLOB NOT NULL,
        status INTEGER NOT NULL,
        undo BLOB
     );
     CREATE INDEX blocks_parent ON blocks(parent);
     CREATE TABLE canonical (height INTEGER PRIMARY KEY, hash BLOB NOT NULL);
     CREATE TABLE block_txs (
        block BLOB NOT NULL,
        idx INTEGER NOT NULL,
        hash BLOB NOT NULL,
        body BLOB,
        prune_height INTEGER,
        PRIMARY KEY (block, idx)
     );
     CREATE INDEX block_txs_prunable ON block_txs(prune_height) WHERE body IS NOT NULL AND prune_height IS NOT NULL;
     CREATE TABLE tx_index (hash BLOB PRIMARY KEY, block BLOB NOT NULL, height INTEGER NOT NULL, idx INTEGER NOT NULL);
     CREATE TABLE state (key BLOB PRIMARY KEY, value BLOB NOT NULL);",
    // 2: the state trie (state root format 2): state rows keyed by trie
    // path, the trie's internal nodes, header-only blocks below a snapshot.
    "DROP TABLE state;
     CREATE TABLE state (path BLOB PRIMARY KEY, key BLOB NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;
     CREATE TABLE trie (prefix BLOB PRIMARY KEY, node BLOB NOT NULL) WITHOUT ROWID;
     ALTER TABLE blocks ADD COLUMN has_body INTEGER NOT NULL DEFAULT 1;
     CREATE INDEX blocks_height ON blocks(height);",
];

/// Upper bound on any stored blob we decode (a block is the largest).
const MAX_BLOB: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStatus {
    /// Header and body valid as far as checked; not on the best chain.
    Side = 0,
    Canonical = 1,
    /// Failed execution; never tried again.
    Invalid = 2,
}

impl BlockStatus {
    fn from_i64(v: i64) -> Result<BlockStatus> {
        match v {
            0 => Ok(BlockStatus::Side),
            1 => Ok(BlockStatus::Canonical),
            2 => Ok(BlockStatus::Invalid),
            _ => Err(ChainError::Corrupt(format!("unknown block status {v}"))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BlockMeta {
    pub hash: Hash,
    pub header: Header,
    pub total_difficulty: u128,
    pub status: BlockStatus,
    /// False for headers installed with a snapshot (no transactions known).
    pub has_body: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxLocation {
    pub block: Hash,
    pub height: u64,
    pub index: u32,
}

pub struct Store {
    // First, so its thread has stopped before `conn` closes (the last
    // connection to close checkpoints and removes the WAL).
    checkpointer: Option<Checkpointer>,
    conn: Connection,
    path: Option<PathBuf>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        let mut store = Self::with_connection(conn, Some(path.to_path_buf()))?;
        // The commit path checkpoints only as a backstop (a WAL of 64 MiB),
        // for when the checkpointer cannot keep up or a reader holds it back.
        store
            .conn
            .pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES)?;
        store.checkpointer = Some(Checkpointer::start(path)?);
        Ok(store)
    }

    pub fn in_memory() -> Result<Store> {
        Self::with_connection(Connection::open_in_memory()?, None)
    }

    /// A second, read-only connection to the same database file, for work
    /// that must not hold the chain (serving snapshots). WAL lets it read a
    /// consistent state while the writer goes on.
    pub fn reader(&self) -> Result<Store> {
        let path = self.path.as_ref().ok_or_else(|| {
            ChainError::NotFound("a reader connection (the chain is in memory)".into())
        })?;
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Store {
            conn,
            path: Some(path.clone()),
            checkpointer: None,
        })
    }

    fn with_connection(mut conn: Connection, path: Option<PathBuf>) -> Result<Store> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // 64 MiB of page cache at most (a negative size is in KiB; used
        // only as the database grows):
        // with a million accounts the state rows alone are ~20,000 pages,
        // and a block's upserts land on random ones of them.
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Store {
            conn,
            path,
            checkpointer: None,
        })
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Runs `f` in one SQL transaction: all of it is written, or none.
    pub fn write<T>(&mut self, f: impl FnOnce(&StoreTx<'_>) -> Result<T>) -> Result<T> {
        let tx = StoreTx {
            tx: self.conn.transaction()?,
        };
        let out = f(&tx)?;
        tx.tx.commit()?;
        if let Some(c) = &self.checkpointer {
            c.nudge();
        }
        Ok(out)
    }

    /// Runs `f` inside one read transaction, so every query sees the same
    /// committed state.
    pub fn read<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let out = f(self)?;
        tx.commit()?;
        Ok(out)
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn meta_hash(&self, key: &str) -> Result<Option<Hash>> {
        self.meta(key)?.map(|b| Hash::from_slice(&b)).transpose()
    }

    pub fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
        self.meta(key)?
            .map(|b| {
                let arr: [u8; 8] = b.as_slice().try_into().map_err(|_| {
                    ChainError::Corrupt(format!("meta {key} is not an 8-byte number"))
                })?;
                Ok(u64::from_be_bytes(arr))
            })
            .transpose()
    }

    pub fn block_meta(&self, hash: &Hash) -> Result<Option<BlockMeta>> {
        self.conn
            .prepare_cached(
                "SELECT header, total_difficulty, status, has_body FROM blocks WHERE hash = ?1",
            )?
            .query_row([&hash.0[..]], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })
            .optional()?
            .map(|(header, td, status, has_body)| {
                Ok(BlockMeta {
                    hash: *hash,
                    header: decode(&header, MAX_BLOB, "stored header")?,
                    total_difficulty: decode_td(&td)?,
                    status: BlockStatus::from_i64(status)?,
                    has_body,
                })
            })
            .transpose()
    }

    pub fn canonical_hash(&self, height: u64) -> Result<Option<Hash>> {
        self.conn
            .prepare_cached("SELECT hash FROM canonical WHERE height = ?1")?
            .query_row([height as i64], |r| r.get::<_, Vec<u8>>(0))
            .optional()?
            .map(|b| Hash::from_slice(&b))
            .transpose()
    }

    pub fn stored_block(&self, hash: &Hash) -> Result<Option<StoredBlock>> {
        let Some(meta) = self.block_meta(hash)? else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT hash, body FROM block_txs WHERE block = ?1 ORDER BY idx")?;
        let rows = stmt.query_map([&hash.0[..]], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
        })?;
        let mut txs = Vec::new();
        for row in rows {
            let (h, body) = row?;
            let hash = Hash::from_slice(&h)?;
            txs.push(match body {
                Some(b) => StoredTx::Full {
                    hash,
                    tx: Box::new(decode(&b, MAX_BLOB, "stored transaction")?),
                },
                None => StoredTx::Pruned { hash },
            });
        }
        Ok(Some(StoredBlock {
            header: meta.header,
            txs,
            header_only: !meta.has_body,
        }))
    }

    /// The block's undo record; `None` once pruned (behind the horizon).
    pub fn undo(&self, hash: &Hash) -> Result<Option<Undo>> {
        let blob: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT undo FROM blocks WHERE hash = ?1")?
            .query_row([&hash.0[..]], |r| r.get(0))
            .optional()?
            .flatten();
        blob.map(|b| decode(&b, MAX_BLOB, "undo data")).transpose()
    }

    pub fn tx_location(&self, hash: &Hash) -> Result<Option<TxLocation>> {
        self.conn
            .prepare_cached("SELECT block, height, idx FROM tx_index WHERE hash = ?1")?
            .query_row([&hash.0[..]], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()?
            .map(|(b, h, i)| {
                Ok(TxLocation {
                    block: Hash::from_slice(&b)?,
                    height: h as u64,
                    index: i as u32,
                })
            })
            .transpose()
    }

    /// The stored body of a transaction (None if unknown or pruned).
    pub fn tx_body(&self, loc: &TxLocation) -> Result<Option<SignedTx>> {
        let body: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT body FROM block_txs WHERE block = ?1 AND idx = ?2",
                params![&loc.block.0[..], loc.index as i64],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        body.map(|b| decode(&b, MAX_BLOB, "stored transaction"))
            .transpose()
    }

    /// Number of transaction bodies still stored (not pruned), for tests and stats.
    pub fn stored_bodies(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM block_txs WHERE body IS NOT NULL",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Blocks stored off the canonical chain (side and invalid).
    pub fn side_blocks(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM blocks WHERE status != 1", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// Hashes of the children of `parent` that are not known invalid.
    pub fn children(&self, parent: &Hash) -> Result<Vec<Hash>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT hash FROM blocks WHERE parent = ?1 AND status != 2")?;
        let rows = stmt.query_map([&parent.0[..]], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| Hash::from_slice(&r?)).collect()
    }

    /// The stored trie nodes. They are the tree of the root
    /// [`Store::trie_root`] names, which may be behind the state rows.
    pub fn load_trie(&self) -> Result<HashMap<Prefix, Node>> {
        let mut stmt = self.conn.prepare("SELECT prefix, node FROM trie")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut nodes = HashMap::new();
        for row in rows {
            let (p, n) = row?;
            let prefix = Prefix::decode(&p)
                .ok_or_else(|| ChainError::Corrupt("a trie node's prefix is malformed".into()))?;
            nodes.insert(prefix, decode::<Node>(&n, MAX_BLOB, "trie node")?);
        }
        Ok(nodes)
    }

    /// The state root whose tree the trie table holds (`None`: the table
    /// was never written, or is from before this marker existed).
    pub fn trie_root(&self) -> Result<Option<Hash>> {
        self.meta_hash(TRIE_ROOT)
    }

    /// Every state entry whose path lies under `prefix`, in path order.
    pub fn state_under(&self, prefix: &Prefix) -> Result<Vec<(Hash, StateKey, StateValue)>> {
        let mut out = Vec::new();
        self.for_each_state_under(prefix, |path, key, value| {
            out.push((path, key, value));
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with every state entry under `prefix`, in path order.
    pub fn for_each_state_under(
        &self,
        prefix: &Prefix,
        mut f: impl FnMut(Hash, StateKey, StateValue) -> Result<()>,
    ) -> Result<()> {
        let start = prefix.first_path();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT path, key, value FROM state WHERE path >= ?1 ORDER BY path")?;
        let mut rows = stmt.query([&start.0[..]])?;
        while let Some(r) = rows.next()? {
            let path: Vec<u8> = r.get(0)?;
            let p = Hash::from_slice(&path)?;
            if !prefix.contains(&p) {
                break;
            }
            let (key, value) =
                decode_entry(&path, &r.get::<_, Vec<u8>>(1)?, &r.get::<_, Vec<u8>>(2)?)?;
            f(p, key, value)?;
        }
        Ok(())
    }

    pub fn state_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM state", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Writes a compact copy of the whole database to `path` (which must
    /// not exist): a chain built in memory is saved in one pass.
    pub fn save_to(&self, path: &Path) -> Result<()> {
        let target = path
            .to_str()
            .ok_or_else(|| ChainError::NotFound(format!("a UTF-8 path for {}", path.display())))?;
        self.conn.execute("VACUUM INTO ?1", [target])?;
        Ok(())
    }

    /// Checks SQLite's own view of the file.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

/// Writes inside one SQL transaction (see [`Store::write`]).
pub struct StoreTx<'a> {
    tx: Transaction<'a>,
}

impl StoreTx<'_> {
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn set_meta_u64(&self, key: &str, value: u64) -> Result<()> {
        self.set_meta(key, &value.to_be_bytes())
    }

    pub fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
        let v: Option<Vec<u8>> = self
            .tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    pub fn insert_block(
        &self,
        block: &Block,
        total_difficulty: u128,
        status: BlockStatus,
    ) -> Result<()> {
        let hash = block.hash();
        self.insert_row(&block.header, total_difficulty, status, true)?;
        let mut stmt = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO block_txs (block, idx, hash, body, prune_height) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (i, tx) in block.txs.iter().enumerate() {
            let prune_height = tx.tx.body.prune_height().map(|h| h as i64);
            stmt.execute(params![
                &hash.0[..],
                i as i64,
                &tx.hash().0[..],
                tx.encode(),
                prune_height
            ])?;
        }
        Ok(())
    }

    /// A canonical block known by its header only (below a snapshot).
    pub fn insert_header(&self, header: &Header, total_difficulty: u128) -> Result<()> {
        self.insert_row(header, total_difficulty, BlockStatus::Canonical, false)?;
        self.tx.execute(
            "INSERT INTO canonical (height, hash) VALUES (?1, ?2)
             ON CONFLICT(height) DO UPDATE SET hash = excluded.hash",
            params![header.height as i64, &header.hash().0[..]],
        )?;
        Ok(())
    }

    fn insert_row(
        &self,
        header: &Header,
        total_difficulty: u128,
        status: BlockStatus,
        has_body: bool,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO blocks (hash, parent, height, total_difficulty, header, status, has_body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                &header.hash().0[..],
                &header.parent.0[..],
                header.height as i64,
                &total_difficulty.to_be_bytes()[..],
                encode(header),
                status as i64,
                has_body
            ])?;
        Ok(())
    }

    pub fn set_status(&self, hash: &Hash, status: BlockStatus) -> Result<()> {
        self.tx
            .prepare_cached("UPDATE blocks SET status = ?2 WHERE hash = ?1")?
            .execute(params![&hash.0[..], status as i64])?;
        Ok(())
    }

    pub fn set_undo(&self, hash: &Hash, undo: &Undo) -> Result<()> {
        self.tx
            .prepare_cached("UPDATE blocks SET undo = ?2 WHERE hash = ?1")?
            .execute(params![&hash.0[..], encode(undo)])?;
        Ok(())
    }

    /// Makes `block` the canonical block at its height and indexes its
    /// transactions (given by hash: a rolled-back block's pruned ones too).
    pub fn make_canonical(&self, hash: &Hash, height: u64, txs: &[Hash]) -> Result<()> {
        let height = height as i64;
        self.tx
            .prepare_cached(
                "INSERT INTO canonical (height, hash) VALUES (?1, ?2)
                 ON CONFLICT(height) DO UPDATE SET hash = excluded.hash",
            )?
            .execute(params![height, &hash.0[..]])?;
        self.set_status(hash, BlockStatus::Canonical)?;
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO tx_index (hash, block, height, idx) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(hash) DO UPDATE SET block = excluded.block, height = excluded.height, idx = excluded.idx",
        )?;
        for (i, tx) in txs.iter().enumerate() {
            stmt.execute(params![&tx.0[..], &hash.0[..], height, i as i64])?;
        }
        Ok(())
    }

    /// Takes a rolled-back block off the canonical chain.
    pub fn make_side(&self, hash: &Hash, height: u64, txs: &[Hash]) -> Result<()> {
        self.tx.execute(
            "DELETE FROM canonical WHERE height = ?1 AND hash = ?2",
            params![height as i64, &hash.0[..]],
        )?;
        self.set_status(hash, BlockStatus::Side)?;
        let mut stmt = self
            .tx
            .prepare_cached("DELETE FROM tx_index WHERE hash = ?1 AND block = ?2")?;
        for tx in txs {
            stmt.execute(params![&tx.0[..], &hash.0[..]])?;
        }
        Ok(())
    }

    pub fn write_state(&self, key: &StateKey, value: Option<&StateValue>) -> Result<()> {
        let path = key.path();
        match value {
            Some(v) => self
                .tx
                .prepare_cached(
                    "INSERT INTO state (path, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(path) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![&path.0[..], encode(key), encode(v)])?,
            None => self
                .tx
                .prepare_cached("DELETE FROM state WHERE path = ?1")?
                .execute(params![&path.0[..]])?,
        };
        Ok(())
    }

    pub fn write_trie(&self, prefix: &Prefix, node: Option<&Node>) -> Result<()> {
        match node {
            Some(n) => self
                .tx
                .prepare_cached(
                    "INSERT INTO trie (prefix, node) VALUES (?1, ?2)
                     ON CONFLICT(prefix) DO UPDATE SET node = excluded.node",
                )?
                .execute(params![prefix.encode(), encode(n)])?,
            None => self
                .tx
                .prepare_cached("DELETE FROM trie WHERE prefix = ?1")?
                .execute(params![prefix.encode()])?,
        };
        Ok(())
    }

    /// Marks the trie table as holding the tree of state root `root`.
    pub fn set_trie_root(&self, root: &Hash) -> Result<()> {
        self.set_meta(TRIE_ROOT, &root.0)
    }

    /// Removes every trie node (before the whole tree is written again).
    pub fn clear_trie(&self) -> Result<()> {
        self.tx.execute_batch("DELETE FROM trie;")?;
        Ok(())
    }

    /// Removes every state row and trie node (before a snapshot goes in).
    pub fn clear_state(&self) -> Result<()> {
        self.tx
            .execute_batch("DELETE FROM state; DELETE FROM trie;")?;
        Ok(())
    }

    /// Drops what blocks at or below `floor` no longer need: the bodies of
    /// announcements whose prune height `tip` has reached (their hashes
    /// stay, so transaction roots still check) and undo data. `floor` is
    /// behind the reorg horizon, so nothing dropped is ever needed to roll
    /// back or re-apply a block.
    pub fn prune(&self, floor: u64, tip: u64) -> Result<usize> {
        let bodies = self
            .tx
            .prepare_cached(
                "UPDATE block_txs SET body = NULL
                 WHERE body IS NOT NULL AND prune_height IS NOT NULL AND prune_height <= ?1
                   AND EXISTS (SELECT 1 FROM blocks b WHERE b.hash = block_txs.block
                               AND b.status = 1 AND b.height <= ?2)",
            )?
            .execute(params![tip as i64, floor as i64])?;
        let done = self.meta_u64("undo_pruned_to")?.unwrap_or(0);
        if floor > done {
            self.tx
                .prepare_cached(
                    "UPDATE blocks SET undo = NULL WHERE height > ?1 AND height <= ?2 AND undo IS NOT NULL",
                )?
                .execute(params![done as i64, floor as i64])?;
            self.set_meta_u64("undo_pruned_to", floor)?;
        }
        Ok(bodies)
    }

    /// Deletes side and invalid blocks at heights up to `height`: their fork
    /// point lies behind the horizon, so they can never become canonical.
    pub fn delete_side_blocks(&self, height: u64) -> Result<usize> {
        let done = self.meta_u64("side_deleted_to")?.unwrap_or(0);
        if height <= done {
            return Ok(0);
        }
        let range = params![done as i64, height as i64];
        self.tx.execute(
            "DELETE FROM block_txs WHERE block IN
               (SELECT hash FROM blocks WHERE height > ?1 AND height <= ?2 AND status != 1)",
            range,
        )?;
        let n = self.tx.execute(
            "DELETE FROM blocks WHERE height > ?1 AND height <= ?2 AND status != 1",
            range,
        )?;
        self.set_meta_u64("side_deleted_to", height)?;
        Ok(n)
    }
}

/// WAL pages past which a commit checkpoints by itself (64 MiB of 4 KiB
/// pages): only when the [`Checkpointer`] falls behind or a long read holds
/// it back.
const BACKSTOP_PAGES: i64 = 16_384;

/// At most one checkpoint per interval, so a burst of imports (a sync)
/// shares one and the pages they all touch are copied once.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// A thread with its own connection that runs a passive checkpoint after
/// commits. Passive: it copies what no reader still needs and never blocks
/// the writer or a reader.
struct Checkpointer {
    shared: Arc<(Mutex<Wanted>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Wanted {
    checkpoint: bool,
    stop: bool,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let shared = Arc::new((Mutex::new(Wanted::default()), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("chain-checkpoint".into())
            .spawn(move || checkpoint_loop(&conn, &theirs))?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    fn nudge(&self) {
        let (wanted, cv) = &*self.shared;
        wanted.lock().unwrap_or_else(|e| e.into_inner()).checkpoint = true;
        cv.notify_one();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (wanted, cv) = &*self.shared;
        wanted.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn checkpoint_loop(conn: &Connection, shared: &(Mutex<Wanted>, Condvar)) {
    let (wanted, cv) = shared;
    let lock = || wanted.lock().unwrap_or_else(|e| e.into_inner());
    let mut last: Option<Instant> = None;
    loop {
        let mut w = cv
            .wait_while(lock(), |w| !w.checkpoint && !w.stop)
            .unwrap_or_else(|e| e.into_inner());
        if let Some(rest) = last.and_then(|t| CHECKPOINT_EVERY.checked_sub(t.elapsed())) {
            w = cv
                .wait_timeout_while(w, rest, |w| !w.stop)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if w.stop {
            return;
        }
        w.checkpoint = false;
        drop(w);
        last = Some(Instant::now());
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "chain WAL checkpoint failed; the next one retries");
        }
    }
}

fn decode_entry(path: &[u8], key: &[u8], value: &[u8]) -> Result<(StateKey, StateValue)> {
    let key: StateKey = decode(key, MAX_BLOB, "state key")?;
    let value: StateValue = decode(value, MAX_BLOB, "state value")?;
    if key.path().0[..] != *path || !value.fits(&key) {
        return Err(ChainError::Corrupt(format!(
            "state row {key:?} is not where its key says or holds another kind of value"
        )));
    }
    Ok((key, value))
}

fn decode_td(bytes: &[u8]) -> Result<u128> {
    let arr: [u8; 16] = bytes
        .try_into()
        .map_err(|_| ChainError::Corrupt("total difficulty is not 16 bytes".into()))?;
    Ok(u128::from_be_bytes(arr))
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version as usize > MIGRATIONS.len() {
        return Err(ChainError::Corrupt(format!(
            "database schema version {version} is newer than this zennet ({}); upgrade zennet",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        if i == 1 {
            // The state root format changed with the trie: a chain written
            // before cannot be carried over (its headers commit to the old
            // roots). Dev chains only: start a fresh one.
            let blocks: i64 = tx.query_row("SELECT COUNT(*) FROM blocks", [], |r| r.get(0))?;
            if blocks > 0 {
                return Err(ChainError::Corrupt(
                    "this chain database was written by an older zennet whose state root format is gone; \
                     move the home's chain/ directory away and sync the chain again"
                        .into(),
                ));
            }
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::debug!(version = i + 1, "migrated chain database");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_database_with_blocks_is_refused_and_an_empty_one_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO blocks (hash, parent, height, total_difficulty, header, status) VALUES (x'00', x'00', 0, x'00', x'00', 1)",
                [],
            )
            .unwrap();
        }
        let err = Store::open(&path).err().expect("refused");
        assert!(err.to_string().contains("older zennet"), "{err}");
        let empty = dir.path().join("empty.db");
        {
            let conn = Connection::open(&empty).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let store = Store::open(&empty).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    }

    /// Commits far below the backstop reach the database file anyway: the
    /// checkpoint thread copies them, not the commit.
    #[test]
    fn the_checkpoint_thread_copies_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chain.db");
        let mut store = Store::open(&path).unwrap();
        let wal = dir.path().join("chain.db-wal");
        let db_len = || std::fs::metadata(&path).unwrap().len();
        let before = db_len();
        store
            .write(|w| {
                for i in 0..2_000u32 {
                    let key = StateKey::Account(
                        crate::crypto::Address::from_slice(
                            &crate::crypto::keccak256(&i.to_be_bytes()).0[..20],
                        )
                        .unwrap(),
                    );
                    let value = StateValue::Account(crate::state::Account {
                        balance: i as u128,
                        nonce: 0,
                    });
                    w.write_state(&key, Some(&value))?;
                }
                Ok(())
            })
            .unwrap();
        let pages = std::fs::metadata(&wal).unwrap().len() / 4096;
        assert!(
            pages < BACKSTOP_PAGES as u64,
            "the commit stays below the backstop ({pages} pages)"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while db_len() <= before {
            assert!(Instant::now() < deadline, "no checkpoint within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Shutting down joins the thread; the data is there on reopening.
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.state_count().unwrap(), 2_000);
    }
}
