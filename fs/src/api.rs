//! The file service's requests and views, as the node's JSON API carries
//! them (the CLI uses the same types on its side). Amounts are decimal
//! strings of the base unit.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zennet_chain::Address;
use zennet_chain::codec::amount_str;

use crate::metainfo::FileId;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRequest {
    /// An absolute path the node can read.
    pub path: PathBuf,
    #[serde(default)]
    pub encrypt: bool,
    /// A file key (64 hex digits) instead of one derived from the chain key.
    #[serde(default)]
    pub key: Option<String>,
    /// Base units per MiB (default: `[fs] price_per_mib`).
    #[serde(default, with = "opt_amount")]
    pub price_per_mib: Option<u128>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Added {
    pub id: FileId,
    pub magnet: String,
    pub name: String,
    pub length: u64,
    pub parts: u32,
    #[serde(with = "amount_str")]
    pub price_per_mib: u128,
    /// The file key of an encrypted file, to share with who may read it.
    pub key: Option<String>,
    pub seeding: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    pub id: FileId,
    /// Output path; default `dir/NAME`.
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// Where the output goes when `out` is not given (the caller's cwd).
    pub dir: PathBuf,
    /// Highest price per MiB to pay any seeder (default `[fs] max_price_per_mib`).
    #[serde(default, with = "opt_amount")]
    pub max_price_per_mib: Option<u128>,
    /// The file key of an encrypted file (default: derived from this node's key).
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    Finding,
    Downloading,
    Done,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferView {
    pub id: FileId,
    pub name: String,
    pub state: TransferState,
    pub length: u64,
    pub parts: u32,
    /// Parts held, from before (resumed) and fetched now.
    pub have_parts: u32,
    pub have_bytes: u64,
    /// Held when the transfer started (an earlier run, or deduplicated).
    pub resumed_parts: u32,
    /// Verified parts fetched in this run (endgame copies not counted).
    pub fetched_parts: u32,
    /// Second copies that arrived in the endgame.
    pub duplicate_parts: u32,
    pub started_ms: u64,
    pub elapsed_ms: u64,
    /// When parts started to flow: seeders found, offers and metainfo checked.
    pub found_ms: u64,
    /// Bytes per second fetched in this run.
    pub rate: f64,
    pub eta_secs: Option<f64>,
    #[serde(with = "amount_str")]
    pub spent: u128,
    pub seeders: Vec<SeederView>,
    pub output: Option<PathBuf>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeederView {
    pub peer: String,
    pub address: Option<Address>,
    #[serde(with = "amount_str")]
    pub price_per_mib: u128,
    /// Parts it offered.
    pub offered_parts: u32,
    /// Verified parts it delivered.
    pub parts: u32,
    pub bytes: u64,
    #[serde(with = "amount_str")]
    pub paid: u128,
    /// `using`, `done`, or why it is not used.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileView {
    pub id: FileId,
    pub name: String,
    pub length: u64,
    pub parts: u32,
    pub have_parts: u32,
    pub complete: bool,
    pub seeding: bool,
    pub encrypted: bool,
    #[serde(with = "amount_str")]
    pub price_per_mib: u128,
    pub sha256: String,
    pub magnet: String,
    /// As a seeder: parts and bytes served to downloaders,
    #[serde(default)]
    pub served_parts: u64,
    #[serde(default)]
    pub served_bytes: u64,
    /// what they cost at the prices offered,
    #[serde(default, with = "amount_str")]
    pub served_value: u128,
    /// and the vouchers taken for them.
    #[serde(default, with = "amount_str")]
    pub earned: u128,
    pub files: Vec<FileEntryView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntryView {
    pub path: String,
    pub length: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfoView {
    pub id: FileId,
    /// Known here (metainfo fetched or added).
    pub local: Option<FileView>,
    pub seeders: Vec<OfferView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferView {
    pub peer: String,
    pub address: Option<Address>,
    #[serde(with = "amount_str")]
    pub price_per_mib: u128,
    pub have_parts: u32,
    pub protocols: Vec<String>,
    /// Why it could not be asked or trusted, if so.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountView {
    pub address: Address,
    /// `earned`: this node served them; `spent`: this node bought from them.
    pub role: String,
    pub parts: u64,
    pub bytes: u64,
    #[serde(with = "amount_str")]
    pub owed: u128,
    #[serde(with = "amount_str")]
    pub paid: u128,
}

/// A channel to a seeder that `fs settle` (or the idle timer) started to
/// wind down: a settle, or the reclaim after the challenge period.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindDownView {
    pub seeder: Address,
    pub channel: zennet_chain::Hash,
    /// What the vouchers signed on it pay: what the seeder can claim.
    #[serde(with = "amount_str")]
    pub paid: zennet_chain::Amount,
    pub tx: zennet_chain::Hash,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub http: Option<String>,
    pub http_mode: String,
    pub used_bytes: u64,
    pub max_bytes: u64,
    pub files: usize,
    pub seeding: usize,
    pub transfers: Vec<TransferView>,
    pub accounts: Vec<AccountView>,
    #[serde(with = "amount_str")]
    pub earned: u128,
    #[serde(with = "amount_str")]
    pub spent: u128,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedRequest {
    pub seeding: bool,
    #[serde(default, with = "opt_amount")]
    pub price_per_mib: Option<u128>,
}

/// `Option<u128>` as an optional decimal string.
pub mod opt_amount {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u128>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u128>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}
