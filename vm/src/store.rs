//! The VM runtime's SQLite database: the VMs it runs (enough to find them
//! again after a restart) and their metered usage. WAL mode; every change
//! is one SQL transaction. Rows hold the backend-neutral [`VmSpec`] and
//! [`Process`] (JSON) and the name of the backend that launched the VM.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::spec::{Process, VmSpec};

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE vms (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        volume TEXT,
        image TEXT NOT NULL,
        state TEXT NOT NULL,
        process TEXT,
        created_ms INTEGER NOT NULL
     );
     CREATE TABLE usage (
        vm_id TEXT PRIMARY KEY,
        cpu_ns INTEGER NOT NULL,
        memory_byte_seconds REAL NOT NULL,
        memory_bytes INTEGER NOT NULL,
        io_read_bytes INTEGER NOT NULL,
        io_write_bytes INTEGER NOT NULL,
        disk_read_bytes INTEGER NOT NULL,
        disk_write_bytes INTEGER NOT NULL,
        seconds REAL NOT NULL,
        updated_ms INTEGER NOT NULL
     );",
    "ALTER TABLE vms ADD COLUMN backend TEXT NOT NULL DEFAULT 'qemu';
     ALTER TABLE usage ADD COLUMN traffic_bytes INTEGER NOT NULL DEFAULT 0;",
    "ALTER TABLE usage ADD COLUMN net_from_guest_bytes INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE usage ADD COLUMN net_to_guest_bytes INTEGER NOT NULL DEFAULT 0;",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    Paused,
    Stopped,
    Failed,
}

impl VmState {
    fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
            VmState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> VmState {
        match s {
            "running" => VmState::Running,
            "paused" => VmState::Paused,
            "stopped" => VmState::Stopped,
            _ => VmState::Failed,
        }
    }
}

/// One VM as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRow {
    pub spec: VmSpec,
    /// [`crate::Backend::name`] of the backend that runs it.
    pub backend: String,
    pub image: String,
    pub volume: Option<String>,
    pub state: VmState,
    pub process: Option<Process>,
    pub created_ms: u64,
}

/// Counters integrated from one-second samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageCounters {
    /// CPU time, from the VM's cgroup.
    pub cpu_ns: u64,
    /// Memory held, integrated over time (for GiB-hour pricing).
    pub memory_byte_seconds: f64,
    /// Memory held at the last sample.
    pub memory_bytes: u64,
    /// Host block I/O, from the cgroup.
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    /// Guest disk traffic, from QMP block statistics.
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    /// Wall-clock seconds metered.
    pub seconds: f64,
    /// Bytes the VM's tunnel forward carried (from its traffic counter).
    #[serde(default)]
    pub traffic_bytes: u64,
    /// Bytes the guest sent to / received from the internet over its
    /// uplink (the kernel's counters; zero in isolated mode).
    #[serde(default)]
    pub net_from_guest_bytes: u64,
    #[serde(default)]
    pub net_to_guest_bytes: u64,
}

pub struct VmStore {
    conn: Connection,
}

impl VmStore {
    pub fn open(path: &Path) -> Result<VmStore, VmError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(VmStore { conn })
    }

    pub fn put(&self, r: &VmRow) -> Result<(), VmError> {
        self.conn.execute(
            "INSERT INTO vms (id, spec, volume, image, state, process, created_ms, backend)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET spec = excluded.spec, volume = excluded.volume,
                   image = excluded.image, state = excluded.state, process = excluded.process,
                   backend = excluded.backend",
            params![
                r.spec.id,
                serde_json::to_string(&r.spec).expect("serialisable"),
                r.volume,
                r.image,
                r.state.as_str(),
                r.process
                    .as_ref()
                    .map(|p| serde_json::to_string(p).expect("serialisable")),
                r.created_ms as i64,
                r.backend
            ],
        )?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<VmRow>, VmError> {
        self.conn
            .query_row(
                "SELECT spec, volume, image, state, process, created_ms, backend FROM vms WHERE id = ?1",
                [id],
                row_to_record,
            )
            .optional()
            ?
            .transpose()
    }

    pub fn all(&self) -> Result<Vec<VmRow>, VmError> {
        let mut stmt = self
            .conn
            .prepare("SELECT spec, volume, image, state, process, created_ms, backend FROM vms ORDER BY created_ms")
            ?;
        let rows = stmt.query_map([], row_to_record)?;
        rows.map(|r| r?).collect()
    }

    pub fn usage(&self, id: &str) -> Result<UsageCounters, VmError> {
        Ok(self
            .conn
            .query_row(
                "SELECT cpu_ns, memory_byte_seconds, memory_bytes, io_read_bytes, io_write_bytes,
                        disk_read_bytes, disk_write_bytes, seconds, traffic_bytes,
                        net_from_guest_bytes, net_to_guest_bytes
                 FROM usage WHERE vm_id = ?1",
                [id],
                |r| {
                    Ok(UsageCounters {
                        cpu_ns: r.get::<_, i64>(0)? as u64,
                        memory_byte_seconds: r.get(1)?,
                        memory_bytes: r.get::<_, i64>(2)? as u64,
                        io_read_bytes: r.get::<_, i64>(3)? as u64,
                        io_write_bytes: r.get::<_, i64>(4)? as u64,
                        disk_read_bytes: r.get::<_, i64>(5)? as u64,
                        disk_write_bytes: r.get::<_, i64>(6)? as u64,
                        seconds: r.get(7)?,
                        traffic_bytes: r.get::<_, i64>(8)? as u64,
                        net_from_guest_bytes: r.get::<_, i64>(9)? as u64,
                        net_to_guest_bytes: r.get::<_, i64>(10)? as u64,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    pub fn put_usage(&self, id: &str, u: &UsageCounters, now_ms: u64) -> Result<(), VmError> {
        self.conn
            .execute(
                "INSERT INTO usage (vm_id, cpu_ns, memory_byte_seconds, memory_bytes, io_read_bytes,
                    io_write_bytes, disk_read_bytes, disk_write_bytes, seconds, updated_ms,
                    traffic_bytes, net_from_guest_bytes, net_to_guest_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT(vm_id) DO UPDATE SET cpu_ns = excluded.cpu_ns,
                   memory_byte_seconds = excluded.memory_byte_seconds, memory_bytes = excluded.memory_bytes,
                   io_read_bytes = excluded.io_read_bytes, io_write_bytes = excluded.io_write_bytes,
                   disk_read_bytes = excluded.disk_read_bytes, disk_write_bytes = excluded.disk_write_bytes,
                   seconds = excluded.seconds, updated_ms = excluded.updated_ms,
                   traffic_bytes = excluded.traffic_bytes,
                   net_from_guest_bytes = excluded.net_from_guest_bytes,
                   net_to_guest_bytes = excluded.net_to_guest_bytes",
                params![
                    id,
                    u.cpu_ns as i64,
                    u.memory_byte_seconds,
                    u.memory_bytes as i64,
                    u.io_read_bytes as i64,
                    u.io_write_bytes as i64,
                    u.disk_read_bytes as i64,
                    u.disk_write_bytes as i64,
                    u.seconds,
                    now_ms as i64,
                    u.traffic_bytes as i64,
                    u.net_from_guest_bytes as i64,
                    u.net_to_guest_bytes as i64
                ],
            )
            ?;
        Ok(())
    }
}

type RowResult = Result<VmRow, VmError>;

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowResult> {
    let spec: String = r.get(0)?;
    let process: Option<String> = r.get(4)?;
    let vm = || {
        serde_json::from_str::<VmSpec>(&spec)
            .ok()
            .map_or_else(|| "?".to_string(), |s| s.id)
    };
    let corrupt = |source| VmError::Corrupt { vm: vm(), source };
    Ok((|| {
        Ok(VmRow {
            spec: serde_json::from_str(&spec).map_err(corrupt)?,
            volume: r.get(1)?,
            image: r.get(2)?,
            state: VmState::parse(&r.get::<_, String>(3)?),
            process: process
                .map(|p| serde_json::from_str(&p))
                .transpose()
                .map_err(corrupt)?,
            created_ms: r.get::<_, i64>(5)? as u64,
            backend: r.get(6)?,
        })
    })())
}
