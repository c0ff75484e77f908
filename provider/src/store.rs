//! The provider's contract store (`contracts.db`): one row per accepted
//! task, and the tasks the operator rejected. The row is what survives the
//! node; vouchers themselves are in the payee's store (`zennet-pay`), and
//! the VM's usage in the VM runtime's.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::task::Rates;
use zennet_chain::{Address, Amount, Hash};
use zennet_proto::Usage;

use crate::contract::Phase;
use crate::market::Resources;

/// One contract as `contracts.db` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContractRow {
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
    /// What the payee's held voucher pays (a copy; the payee's store is
    /// the truth and is written first).
    #[serde(with = "amount_str")]
    pub paid: Amount,
    #[serde(with = "amount_str")]
    pub accrued: Amount,
    pub usage: Usage,
    pub report_seq: u64,
    pub end_reason: Option<String>,
}

impl ContractRow {
    pub fn needs(&self) -> Resources {
        Resources {
            cores: self.cores as u32,
            memory_mib: self.memory_mib,
            disk_gib: self.storage_gib as u64,
        }
    }

    pub fn active(&self) -> bool {
        self.phase.active()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("contract store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "contract store: the row of task {task} does not parse ({source}); the database is damaged"
    )]
    Corrupt {
        task: String,
        source: serde_json::Error,
    },
}

pub struct ContractStore {
    db: Mutex<Connection>,
}

impl ContractStore {
    pub fn open(path: &Path) -> Result<ContractStore, StoreError> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS contracts (task TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS rejected (task TEXT PRIMARY KEY);",
        )?;
        Ok(ContractStore { db: Mutex::new(db) })
    }

    pub fn all(&self) -> Result<Vec<ContractRow>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT task, body FROM contracts")?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.iter().map(|(t, b)| parse(t, b)).collect()
    }

    pub fn get(&self, task: &Hash) -> Result<Option<ContractRow>, StoreError> {
        let body: Option<String> = self
            .db()
            .query_row(
                "SELECT body FROM contracts WHERE task = ?1",
                [task.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        body.map(|b| parse(&task.to_string(), &b)).transpose()
    }

    pub fn put(&self, c: &ContractRow) -> Result<(), StoreError> {
        let body = serde_json::to_string(c).expect("rows serialise");
        self.db().execute(
            "INSERT OR REPLACE INTO contracts VALUES (?1, ?2)",
            params![c.task.to_string(), body],
        )?;
        Ok(())
    }

    pub fn reject(&self, task: &Hash) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT OR IGNORE INTO rejected VALUES (?1)",
            [task.to_string()],
        )?;
        Ok(())
    }

    pub fn unreject(&self, task: &Hash) -> Result<(), StoreError> {
        self.db()
            .execute("DELETE FROM rejected WHERE task = ?1", [task.to_string()])?;
        Ok(())
    }

    pub fn is_rejected(&self, task: &Hash) -> Result<bool, StoreError> {
        Ok(self
            .db()
            .query_row(
                "SELECT 1 FROM rejected WHERE task = ?1",
                [task.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn parse(task: &str, body: &str) -> Result<ContractRow, StoreError> {
    serde_json::from_str(body).map_err(|source| StoreError::Corrupt {
        task: task.to_string(),
        source,
    })
}
