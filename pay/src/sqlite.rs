//! The SQLite [`PayStore`]: one row per channel and side, the record as
//! JSON, WAL with `synchronous = FULL` so a stored voucher survives power
//! loss as well as `kill -9`.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension};
use zennet_chain::Hash;

use crate::store::{Incoming, Outgoing, PayStore, StoreError};

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS outgoing (channel TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS incoming (channel TEXT PRIMARY KEY, body TEXT NOT NULL);",
        )?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        channel: &Hash,
    ) -> Result<Option<T>, StoreError> {
        let body: Option<String> = self
            .conn()
            .query_row(
                &format!("SELECT body FROM {table} WHERE channel = ?1"),
                [channel.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        body.map(|b| parse(&channel.to_string(), &b)).transpose()
    }

    fn all<T: serde::de::DeserializeOwned>(&self, table: &str) -> Result<Vec<T>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT channel, body FROM {table}"))?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.iter().map(|(c, b)| parse(c, b)).collect()
    }

    fn put<T: serde::Serialize>(
        &self,
        table: &str,
        channel: &Hash,
        value: &T,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(value).expect("records serialise");
        self.conn().execute(
            &format!("INSERT OR REPLACE INTO {table} (channel, body) VALUES (?1, ?2)"),
            [channel.to_string(), body],
        )?;
        Ok(())
    }
}

fn parse<T: serde::de::DeserializeOwned>(channel: &str, body: &str) -> Result<T, StoreError> {
    serde_json::from_str(body).map_err(|source| StoreError::Corrupt {
        channel: channel.to_string(),
        source,
    })
}

impl PayStore for SqliteStore {
    fn outgoing(&self, channel: &Hash) -> Result<Option<Outgoing>, StoreError> {
        self.get("outgoing", channel)
    }
    fn outgoing_all(&self) -> Result<Vec<Outgoing>, StoreError> {
        self.all("outgoing")
    }
    fn put_outgoing(&self, o: &Outgoing) -> Result<(), StoreError> {
        self.put("outgoing", &o.channel, o)
    }
    fn incoming(&self, channel: &Hash) -> Result<Option<Incoming>, StoreError> {
        self.get("incoming", channel)
    }
    fn incoming_all(&self) -> Result<Vec<Incoming>, StoreError> {
        self.all("incoming")
    }
    fn put_incoming(&self, i: &Incoming) -> Result<(), StoreError> {
        self.put("incoming", &i.channel, i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zennet_chain::{Address, SecretKey, Voucher};

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pay.db");
        let key = SecretKey::generate();
        let v = Voucher {
            chain_id: 1,
            channel: Hash([3; 32]),
            seq: 2,
            cumulative: 99,
        }
        .sign(&key);
        let inc = Incoming {
            channel: Hash([3; 32]),
            payer: key.address(),
            voucher: Some(v.clone()),
            claim_txs: vec![Hash([4; 32])],
            close_tx: None,
        };
        let out = Outgoing {
            channel: Hash([5; 32]),
            payee: Address::ZERO,
            deposit: u128::MAX,
            expiry_height: 7,
            seq: 2,
            paid: 99,
            voucher: Some(v),
            top_ups: vec![],
            wind_down_tx: None,
        };
        {
            let s = SqliteStore::open(&path).unwrap();
            s.put_incoming(&inc).unwrap();
            s.put_outgoing(&out).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.incoming(&inc.channel).unwrap(), Some(inc.clone()));
        assert_eq!(s.outgoing_all().unwrap(), vec![out]);
        assert_eq!(s.incoming(&Hash([9; 32])).unwrap(), None);
        assert_eq!(s.incoming_all().unwrap()[0].paid(), 99);
    }
}
