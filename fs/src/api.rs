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

/// An add in progress: bytes hashed and stored so far of `total`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddingView {
    pub path: PathBuf,
    pub done: u64,
    pub total: u64,
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
    /// Trackers to ask for stock BitTorrent seeders, beside those the
    /// Zennet seeders name.
    #[serde(default)]
    pub trackers: Vec<String>,
    /// BEP 19 web seeds (URLs of the file, or of a directory of files).
    #[serde(default)]
    pub web_seeds: Vec<String>,
    /// Take parts only over these protocols (`zennet`, `bittorrent`,
    /// `http`); empty: all. Zennet seeders are asked for the metainfo
    /// either way.
    #[serde(default)]
    pub protocols: Vec<String>,
    /// Refuse the file, before fetching a part, if its metainfo says it
    /// is longer than this many bytes (a provider fetching a task's image
    /// caps what a publisher can make it download).
    #[serde(default)]
    pub max_length: Option<u64>,
}

impl GetRequest {
    /// Whether parts may come over `protocol`.
    pub fn allows(&self, protocol: &str) -> bool {
        self.protocols.is_empty() || self.protocols.iter().any(|p| p == protocol)
    }

    /// A download of `id` to `out`, everything else as configured.
    pub fn new(id: FileId, out: PathBuf) -> GetRequest {
        GetRequest {
            id,
            dir: out.parent().map(PathBuf::from).unwrap_or_default(),
            out: Some(out),
            max_price_per_mib: None,
            key: None,
            trackers: vec![],
            web_seeds: vec![],
            protocols: vec![],
            max_length: None,
        }
    }
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
    /// A Zennet seeder's peer id, a BitTorrent peer's address, a web
    /// seed's URL.
    pub peer: String,
    /// `zennet` (the part protocol, paid), `bittorrent` or `http`.
    #[serde(default)]
    pub protocol: String,
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
    /// The BitTorrent listener and tracker.
    #[serde(default)]
    pub bittorrent: Option<BtView>,
}

/// Stock BitTorrent clients served by this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BtView {
    /// The peer listener (None: `[fs] bt_listen = "off"`).
    pub listen: Option<String>,
    /// This node's client prefix in its peer ids.
    pub peer_id: String,
    /// Peers connected now, and the cap.
    pub peers: usize,
    pub max_peers: usize,
    /// Blocks and bytes served to stock clients.
    pub served_bytes: u64,
    pub served_blocks: u64,
    /// Connections closed at once because every slot was taken.
    pub refused_over_cap: u64,
    /// Peers dropped for breaking the protocol (the last reason below).
    pub dropped: u64,
    pub last_drop: Option<String>,
    /// What the tracker knows of each file seeded here.
    pub swarms: Vec<SwarmView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmView {
    pub id: FileId,
    pub seeders: usize,
    pub leechers: usize,
}

/// What `.torrent` to make of a file held here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TorrentRequest {
    /// Leave out this node's tracker.
    #[serde(default)]
    pub no_tracker: bool,
    /// Leave out this node's HTTP web seed.
    #[serde(default)]
    pub no_web_seed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TorrentView {
    pub id: FileId,
    pub name: String,
    pub announce: Option<String>,
    pub web_seeds: Vec<String>,
    pub magnet: String,
    /// The `.torrent` file, hex.
    pub torrent: String,
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

/// `fs store`: pay nodes to keep replicas of a file held here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreRequest {
    pub id: FileId,
    pub replicas: u16,
    /// How long the replicas are kept (and paid for).
    pub duration_secs: u64,
    /// The price offered per GiB-hour (the most this pays).
    #[serde(with = "amount_str")]
    pub price_per_gib_hour: u128,
    /// Mean seconds between challenges (default `[fs.store] challenge_secs`).
    #[serde(default)]
    pub challenge_secs: Option<u32>,
}

/// The storage tasks this node announced and the contracts it holds for
/// others (`fs replicas`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageView {
    pub tasks: Vec<StorageTaskView>,
    pub held: Vec<HeldView>,
}

/// A storage task this node announced, with its replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageTaskView {
    pub task: zennet_chain::Hash,
    pub file: FileId,
    /// The file's name if it is still in the store here.
    pub name: String,
    pub size: u64,
    pub merkle_root: zennet_chain::Hash,
    pub replicas_wanted: u16,
    #[serde(with = "amount_str")]
    pub price_per_gib_hour: u128,
    pub ends_at_ms: u64,
    pub challenge_secs: u32,
    /// `announcing`, `open`, `cancelled`, `ended` or `lost` (never mined).
    pub state: String,
    /// Replicas that passed a challenge and are challenged on.
    pub holding: usize,
    pub replicas: Vec<ReplicaView>,
}

/// One replica as its owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaView {
    pub node: Address,
    /// `fetching`, `holding`, `failed`, `released` or `ended`.
    pub state: String,
    pub since_ms: u64,
    /// Challenges sent.
    pub rounds: u32,
    pub passed: u32,
    /// Answered "still fetching" within the fetch allowance.
    pub not_ready: u32,
    pub failed: u32,
    /// What its passes earned, and what was vouched of it.
    #[serde(with = "amount_str")]
    pub owed: u128,
    #[serde(with = "amount_str")]
    pub paid: u128,
    pub failure: Option<String>,
    pub release_tx: Option<zennet_chain::Hash>,
    /// The last rounds: block, leaves asked, outcome, what each paid.
    pub history: Vec<crate::replica::Round>,
}

/// A contract this node holds for another node's file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldView {
    pub task: zennet_chain::Hash,
    pub file: FileId,
    pub owner: Address,
    /// `accepting`, `fetching`, `holding`, `dropped` or `ended`.
    pub state: String,
    pub size: u64,
    #[serde(with = "amount_str")]
    pub price_per_gib_hour: u128,
    pub ends_at_ms: u64,
    pub held_since_ms: Option<u64>,
    /// Earned by holding, and paid by the owner's vouchers.
    #[serde(with = "amount_str")]
    pub accrued: u128,
    #[serde(with = "amount_str")]
    pub paid: u128,
    /// Challenges answered with proofs, and vouchers taken for them.
    pub answered: u32,
    pub receipts: u32,
    pub reason: Option<String>,
}
