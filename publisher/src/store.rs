//! The publisher's SQLite: its tasks (with payment switches) and one
//! contract per (task, node) — its channel, what the node reported, the
//! VM's state. Vouchers are the payer's (`zennet-pay`), which records each
//! seq and cumulative before the voucher leaves.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::{Address, Amount, Hash};

use zennet_proto::{Usage, VmPhase};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    pub task: Hash,
    /// Vouchers are sent only while this is on.
    pub paying: bool,
    /// Whether the persistent volume is paid for.
    pub storage_paid: bool,
    pub announced_ms: u64,
    /// The port the task's VMs serve HTTP on, for the app proxy.
    pub web_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContractRow {
    pub task: Hash,
    pub node: Address,
    pub acceptance: Hash,
    pub channel: Option<Hash>,
    #[serde(with = "amount_str")]
    pub reported: Amount,
    pub usage: Usage,
    pub phase: VmPhase,
    pub host_key: Option<String>,
    pub boot_ms: u64,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub end_reason: Option<String>,
    /// Compute units per core the VM measured at (the capacity check).
    #[serde(default)]
    pub measured_cu: Option<f64>,
    /// Compute units per core the publisher pays compute at.
    #[serde(default)]
    pub paid_score: u32,
    /// Whether the node has joined (a contract under way when its task is
    /// cancelled is still paid its last usage).
    #[serde(default)]
    pub joined: bool,
}

pub struct Store {
    conn: Connection,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("publisher database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("publisher database: a {what} row does not parse ({reason}); the database is damaged")]
    Corrupt { what: &'static str, reason: String },
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tasks (
                task TEXT PRIMARY KEY, paying INTEGER NOT NULL, storage_paid INTEGER NOT NULL,
                announced_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS contracts (
                task TEXT NOT NULL, node TEXT NOT NULL, body TEXT NOT NULL,
                PRIMARY KEY (task, node));",
        )?;
        // Stores from before web apps lack the column.
        let has_web_port: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = 'web_port'")?
            .exists([])?;
        if !has_web_port {
            conn.execute_batch("ALTER TABLE tasks ADD COLUMN web_port INTEGER")?;
        }
        Ok(Store { conn })
    }

    pub fn put_task(&self, t: &TaskRow) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO tasks (task, paying, storage_paid, announced_ms, web_port)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                t.task.to_string(),
                t.paying,
                t.storage_paid,
                t.announced_ms as i64,
                t.web_port
            ],
        )?;
        Ok(())
    }

    pub fn task(&self, task: &Hash) -> Result<Option<TaskRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT paying, storage_paid, announced_ms, web_port FROM tasks WHERE task = ?1",
                [task.to_string()],
                |r| {
                    Ok(TaskRow {
                        task: *task,
                        paying: r.get(0)?,
                        storage_paid: r.get(1)?,
                        announced_ms: r.get::<_, i64>(2)? as u64,
                        web_port: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn tasks(&self) -> Result<Vec<TaskRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT task FROM tasks ORDER BY announced_ms")?;
        let ids: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for id in ids {
            let hash: Hash =
                id.parse()
                    .map_err(|e: zennet_chain::ChainError| StoreError::Corrupt {
                        what: "task",
                        reason: e.to_string(),
                    })?;
            out.extend(self.task(&hash)?);
        }
        Ok(out)
    }

    pub fn put_contract(&self, c: &ContractRow) -> Result<(), StoreError> {
        let body = serde_json::to_string(c).expect("rows serialise");
        self.conn.execute(
            "INSERT OR REPLACE INTO contracts VALUES (?1, ?2, ?3)",
            params![c.task.to_string(), c.node.to_string(), body],
        )?;
        Ok(())
    }

    pub fn contract(&self, task: &Hash, node: &Address) -> Result<Option<ContractRow>, StoreError> {
        self.conn
            .query_row(
                "SELECT body FROM contracts WHERE task = ?1 AND node = ?2",
                [task.to_string(), node.to_string()],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(|b| parse_contract(&b))
            .transpose()
    }

    pub fn contracts(&self) -> Result<Vec<ContractRow>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT body FROM contracts")?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        rows.iter().map(|b| parse_contract(b)).collect()
    }
}

fn parse_contract(body: &str) -> Result<ContractRow, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
        what: "contract",
        reason: e.to_string(),
    })
}
