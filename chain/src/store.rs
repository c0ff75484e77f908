//! The SQLite store: blocks (canonical and side), the canonical index, the
//! transaction index, per-block undo data and a mirror of the state.
//!
//! WAL mode; every block import or reorg is one SQL transaction, so a crash
//! (even `kill -9`) leaves either the block fully applied or not at all.
//! The schema is versioned with `PRAGMA user_version` and migrated on open.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::block::{Block, Header, StoredBlock, StoredTx};
use crate::codec::{decode, encode};
use crate::crypto::Hash;
use crate::error::{ChainError, Result};
use crate::state::{State, StateKey, StateValue, Undo};
use crate::tx::{SignedTx, TxBody};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxLocation {
    pub block: Hash,
    pub height: u64,
    pub index: u32,
}

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        Self::with_connection(conn)
    }

    pub fn in_memory() -> Result<Store> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(mut conn: Connection) -> Result<Store> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Store { conn })
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

    pub fn block_meta(&self, hash: &Hash) -> Result<Option<BlockMeta>> {
        self.conn
            .query_row(
                "SELECT header, total_difficulty, status FROM blocks WHERE hash = ?1",
                [&hash.0[..]],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()?
            .map(|(header, td, status)| {
                Ok(BlockMeta {
                    hash: *hash,
                    header: decode(&header, MAX_BLOB, "stored header")?,
                    total_difficulty: decode_td(&td)?,
                    status: BlockStatus::from_i64(status)?,
                })
            })
            .transpose()
    }

    pub fn canonical_hash(&self, height: u64) -> Result<Option<Hash>> {
        self.conn
            .query_row(
                "SELECT hash FROM canonical WHERE height = ?1",
                [height as i64],
                |r| r.get::<_, Vec<u8>>(0),
            )
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
        }))
    }

    pub fn undo(&self, hash: &Hash) -> Result<Undo> {
        let blob: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT undo FROM blocks WHERE hash = ?1",
                [&hash.0[..]],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let blob =
            blob.ok_or_else(|| ChainError::Corrupt(format!("no undo data for block {hash}")))?;
        decode(&blob, MAX_BLOB, "undo data")
    }

    pub fn tx_location(&self, hash: &Hash) -> Result<Option<TxLocation>> {
        self.conn
            .query_row(
                "SELECT block, height, idx FROM tx_index WHERE hash = ?1",
                [&hash.0[..]],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
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

    /// Hashes of the children of `parent` that are not known invalid.
    pub fn children(&self, parent: &Hash) -> Result<Vec<Hash>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT hash FROM blocks WHERE parent = ?1 AND status != 2")?;
        let rows = stmt.query_map([&parent.0[..]], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| Hash::from_slice(&r?)).collect()
    }

    pub fn load_state(&self) -> Result<State> {
        let mut stmt = self.conn.prepare("SELECT key, value FROM state")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut state = State::default();
        for row in rows {
            let (k, v) = row?;
            let key: StateKey = decode(&k, MAX_BLOB, "state key")?;
            let value: StateValue = decode(&v, MAX_BLOB, "state value")?;
            state.insert(key, value);
        }
        Ok(state)
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

    pub fn insert_block(
        &self,
        block: &Block,
        total_difficulty: u128,
        status: BlockStatus,
    ) -> Result<()> {
        let hash = block.hash();
        self.tx.execute(
            "INSERT OR IGNORE INTO blocks (hash, parent, height, total_difficulty, header, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                &hash.0[..],
                &block.header.parent.0[..],
                block.header.height as i64,
                &total_difficulty.to_be_bytes()[..],
                encode(&block.header),
                status as i64
            ],
        )?;
        let mut stmt = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO block_txs (block, idx, hash, body, prune_height) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (i, tx) in block.txs.iter().enumerate() {
            let prune_height = match &tx.tx.body {
                TxBody::AnnounceTask { announcement } => Some(announcement.prune_height as i64),
                _ => None,
            };
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

    pub fn set_status(&self, hash: &Hash, status: BlockStatus) -> Result<()> {
        self.tx.execute(
            "UPDATE blocks SET status = ?2 WHERE hash = ?1",
            params![&hash.0[..], status as i64],
        )?;
        Ok(())
    }

    pub fn set_undo(&self, hash: &Hash, undo: &Undo) -> Result<()> {
        self.tx.execute(
            "UPDATE blocks SET undo = ?2 WHERE hash = ?1",
            params![&hash.0[..], encode(undo)],
        )?;
        Ok(())
    }

    /// Makes `block` the canonical block at its height and indexes its transactions.
    pub fn make_canonical(&self, block: &Block) -> Result<()> {
        let hash = block.hash();
        let height = block.header.height as i64;
        self.tx.execute(
            "INSERT INTO canonical (height, hash) VALUES (?1, ?2)
             ON CONFLICT(height) DO UPDATE SET hash = excluded.hash",
            params![height, &hash.0[..]],
        )?;
        self.set_status(&hash, BlockStatus::Canonical)?;
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO tx_index (hash, block, height, idx) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(hash) DO UPDATE SET block = excluded.block, height = excluded.height, idx = excluded.idx",
        )?;
        for (i, tx) in block.txs.iter().enumerate() {
            stmt.execute(params![&tx.hash().0[..], &hash.0[..], height, i as i64])?;
        }
        Ok(())
    }

    /// Takes a rolled-back block off the canonical chain.
    pub fn make_side(&self, block: &Block) -> Result<()> {
        let hash = block.hash();
        self.tx.execute(
            "DELETE FROM canonical WHERE height = ?1 AND hash = ?2",
            params![block.header.height as i64, &hash.0[..]],
        )?;
        self.set_status(&hash, BlockStatus::Side)?;
        let mut stmt = self
            .tx
            .prepare_cached("DELETE FROM tx_index WHERE hash = ?1 AND block = ?2")?;
        for tx in &block.txs {
            stmt.execute(params![&tx.hash().0[..], &hash.0[..]])?;
        }
        Ok(())
    }

    pub fn write_state(&self, key: &StateKey, value: Option<&StateValue>) -> Result<()> {
        match value {
            Some(v) => self.tx.execute(
                "INSERT INTO state (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![encode(key), encode(v)],
            )?,
            None => self
                .tx
                .execute("DELETE FROM state WHERE key = ?1", params![encode(key)])?,
        };
        Ok(())
    }

    /// Drops the bodies of canonical announcements whose prune height is at
    /// or below `height`. Their hashes stay, so transaction roots still check.
    pub fn prune(&self, height: u64) -> Result<usize> {
        Ok(self.tx.execute(
            "UPDATE block_txs SET body = NULL
             WHERE body IS NOT NULL AND prune_height IS NOT NULL AND prune_height <= ?1
               AND block IN (SELECT hash FROM canonical)",
            [height as i64],
        )?)
    }
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
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::debug!(version = i + 1, "migrated chain database");
    }
    Ok(())
}
