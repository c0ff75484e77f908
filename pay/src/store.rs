//! What each side keeps about its channels, behind a small trait so a node
//! keeps it in SQLite ([`crate::SqliteStore`]) and a test in memory
//! ([`MemoryStore`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::{Address, Amount, Hash, SignedVoucher};

/// The payer's record of a channel it funds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The channel id (its `ChannelOpen` transaction hash).
    pub channel: Hash,
    pub payee: Address,
    /// Deposited so far (open plus top-ups submitted).
    #[serde(with = "amount_str")]
    pub deposit: Amount,
    pub expiry_height: u64,
    /// Seq of the last voucher signed (0: none).
    pub seq: u64,
    /// Cumulative of the last voucher signed.
    #[serde(with = "amount_str")]
    pub paid: Amount,
    /// The last voucher signed, so it can be sent again.
    pub voucher: Option<SignedVoucher>,
    /// `ChannelTopUp` transactions submitted.
    pub top_ups: Vec<Hash>,
    /// The last `ChannelSettle` or `ChannelReclaim` submitted.
    pub wind_down_tx: Option<Hash>,
}

/// The payee's record of a channel that pays it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    pub channel: Hash,
    pub payer: Address,
    /// The best voucher received, stored before it counted.
    pub voucher: Option<SignedVoucher>,
    /// `ChannelClaim` transactions submitted.
    pub claim_txs: Vec<Hash>,
    /// The `ChannelClose` submitted, if any.
    pub close_tx: Option<Hash>,
}

impl Incoming {
    /// What the held voucher pays in all.
    pub fn paid(&self) -> Amount {
        self.voucher.as_ref().map_or(0, |v| v.voucher.cumulative)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("payment store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "payment store: the record of channel {channel} does not parse ({source}); the database is damaged"
    )]
    Corrupt {
        channel: String,
        source: serde_json::Error,
    },
}

/// Where a node keeps its channel records. Each `put` is durable when it
/// returns (the payee relies on it: a voucher counts once stored).
pub trait PayStore: Send + Sync + 'static {
    fn outgoing(&self, channel: &Hash) -> Result<Option<Outgoing>, StoreError>;
    fn outgoing_all(&self) -> Result<Vec<Outgoing>, StoreError>;
    fn put_outgoing(&self, o: &Outgoing) -> Result<(), StoreError>;
    fn incoming(&self, channel: &Hash) -> Result<Option<Incoming>, StoreError>;
    fn incoming_all(&self) -> Result<Vec<Incoming>, StoreError>;
    fn put_incoming(&self, i: &Incoming) -> Result<(), StoreError>;
}

/// Records in memory, for tests (and benchmarks that must not measure a disk).
#[derive(Default)]
pub struct MemoryStore {
    outgoing: Mutex<BTreeMap<Hash, Outgoing>>,
    incoming: Mutex<BTreeMap<Hash, Incoming>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PayStore for MemoryStore {
    fn outgoing(&self, channel: &Hash) -> Result<Option<Outgoing>, StoreError> {
        Ok(lock(&self.outgoing).get(channel).cloned())
    }
    fn outgoing_all(&self) -> Result<Vec<Outgoing>, StoreError> {
        Ok(lock(&self.outgoing).values().cloned().collect())
    }
    fn put_outgoing(&self, o: &Outgoing) -> Result<(), StoreError> {
        lock(&self.outgoing).insert(o.channel, o.clone());
        Ok(())
    }
    fn incoming(&self, channel: &Hash) -> Result<Option<Incoming>, StoreError> {
        Ok(lock(&self.incoming).get(channel).cloned())
    }
    fn incoming_all(&self) -> Result<Vec<Incoming>, StoreError> {
        Ok(lock(&self.incoming).values().cloned().collect())
    }
    fn put_incoming(&self, i: &Incoming) -> Result<(), StoreError> {
        lock(&self.incoming).insert(i.channel, i.clone());
        Ok(())
    }
}
