//! Errors, one enum per layer and one variant per failure; each message
//! names the thing and, where there is one, the fix.

use crate::metainfo::FileId;

#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    #[error("{0}")]
    BadId(String),
    #[error("metainfo is {len} bytes, above the {max}-byte cap")]
    TooLarge { len: usize, max: usize },
    #[error("metainfo does not match its id: asked for {expected}, its SHA-1 is {got}")]
    HashMismatch { expected: FileId, got: FileId },
    #[error("invalid metainfo: {0}")]
    Invalid(String),
    #[error("metainfo names an unsafe path component {0:?}")]
    UnsafePath(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the store is full: {what} needs {need_mib} MiB but only {free_mib} MiB of [fs] max_gib = {max_gib} are free; raise max_gib or `zennet fs rm` a file"
    )]
    Quota {
        what: String,
        need_mib: u64,
        free_mib: u64,
        max_gib: f64,
    },
    #[error("file {0} is not in this node's store")]
    Unknown(FileId),
    #[error("part {index} of {file} is not in this node's store")]
    MissingPart { file: FileId, index: u32 },
    #[error("part {index} of {file} does not match its SHA-1")]
    BadPart { file: FileId, index: u32 },
    #[error("{0}")]
    Metainfo(#[from] MetainfoError),
    #[error("{0}")]
    Crypt(#[from] CryptError),
    #[error("{path} is {what}; fs add takes regular files and directories")]
    NotRegular {
        path: std::path::PathBuf,
        what: &'static str,
    },
    #[error("{0} exists; choose another output with -o")]
    OutputExists(std::path::PathBuf),
    #[error(
        "{0} is held for a storage contract until it ends (see `zennet fs replicas`); it cannot be removed"
    )]
    Pinned(FileId),
}

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error(
        "cannot decrypt {0}: wrong key (the AES-GCM tag of part 0 does not verify); pass the owner's key with --key"
    )]
    WrongKey(FileId),
    #[error("cannot decrypt part {index} of {file}: its AES-GCM tag does not verify")]
    BadPart { file: FileId, index: u32 },
    #[error("a key is 64 hex digits (32 bytes), not {0:?}")]
    BadKey(String),
    #[error("--encrypt takes a single file; pack a directory first (e.g. tar)")]
    NotAFile,
    #[error("{0} is not encrypted (its name is not SALT.zenc); drop --key")]
    NotEncrypted(FileId),
    #[error("decrypted header of {0} is malformed")]
    BadHeader(FileId),
}

/// Why a part-protocol frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("peer closed the part stream")]
    Closed,
    #[error("part stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("{kind} frame of {len} bytes is over its {max}-byte cap")]
    TooLarge {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("malformed {kind} frame: {why}")]
    Malformed { kind: &'static str, why: String },
    #[error("timed out waiting for the peer")]
    Timeout,
}

/// Why a BitTorrent peer's bytes were refused (the peer is dropped).
#[derive(Debug, thiserror::Error)]
pub enum PeerWireError {
    #[error("peer closed the connection")]
    Closed,
    #[error("peer connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for the peer")]
    Timeout,
    #[error("bad handshake: {0}")]
    BadHandshake(String),
    #[error("message of {len} bytes is over the {max}-byte cap")]
    TooLarge { len: usize, max: usize },
    #[error("message id {0} was not negotiated (this node sets no extension bits)")]
    UnknownMessage(u8),
    #[error("malformed message (id {id}): {why}")]
    Malformed { id: u8, why: String },
}

/// Why a tracker request was refused (its text is the `failure reason`),
/// or why a tracker's answer was not usable.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("the query is {0} bytes, over the tracker's 2048-byte cap")]
    TooLong(usize),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{0} is given twice (one file per announce)")]
    Repeated(&'static str),
    #[error("info_hash is {0} bytes; it must be the 20 bytes of the SHA-1, percent-encoded")]
    BadInfoHash(usize),
    #[error("peer_id is {0} bytes; it must be 20")]
    BadPeerId(usize),
    #[error("port {0:?} is not a port number (1-65535)")]
    BadPort(String),
    #[error("{key} {value:?} is not a non-negative integer")]
    BadNumber { key: &'static str, value: String },
    #[error("event {0:?} is none of started, completed, stopped")]
    BadEvent(String),
    #[error("{0} is not seeded here")]
    NotTracked(FileId),
    #[error("the tracker refused: {0}")]
    Failure(String),
    #[error("the tracker's answer is unusable: {0}")]
    BadAnswer(String),
}

/// Failures of the file service (what the node's API reports).
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Metainfo(#[from] MetainfoError),
    #[error("{0}")]
    Crypt(#[from] CryptError),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("network: {0}")]
    Net(String),
    #[error("no seeder of {0} found on the network")]
    NoSeeders(FileId),
    #[error("no seeder of {file} is usable: {reasons}")]
    NoUsableSeeder { file: FileId, reasons: String },
    #[error("download of {file} stalled with {missing} parts missing: {reasons}")]
    Stalled {
        file: FileId,
        missing: u32,
        reasons: String,
    },
    #[error("payment: {0}")]
    Payment(#[from] PaymentError),
    #[error("no transfer {0}")]
    NoTransfer(FileId),
    #[error(
        "{file} is {length} bytes, more than the {max} this download takes; nothing was fetched"
    )]
    TooLarge { file: FileId, length: u64, max: u64 },
    #[error("a download of {0} is already running")]
    Busy(FileId),
    #[error("{0} downloads are running and pay through these channels; settle when they end")]
    DownloadsRunning(usize),
    #[error(
        "this node serves no HTTP ([fs] http = \"off\"), so it has no tracker or web seed to name"
    )]
    NoHttp,
    #[error(
        "the HTTP listener is on {listen}, which clients cannot dial; set [fs] public_host to the name or IP they reach this node by"
    )]
    NoPublicHost { listen: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// Why a storage request (`fs store`, `fs prove`, `fs store --stop`) was
/// refused.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{file} is not complete here ({have} of {parts} parts); fetch it first")]
    Incomplete { file: FileId, have: u32, parts: u32 },
    #[error("{0} is empty: there is nothing to store")]
    Empty(FileId),
    #[error("--replicas must be 1 to {0}")]
    Replicas(u16),
    #[error(
        "--for {secs} s is longer than this chain keeps a storage task ({blocks} blocks of {block_ms} ms); store for less and announce again later"
    )]
    TooLong {
        secs: u64,
        blocks: u64,
        block_ms: u64,
    },
    #[error("the chain refused {what}: {why}")]
    Refused { what: &'static str, why: String },
    #[error("no open storage task of {0} was announced here")]
    NoTask(FileId),
    #[error("no live replica of {0} to challenge (see `zennet fs replicas {0}`)")]
    NoLiveReplica(FileId),
    #[error("{0} was interrupted")]
    Interrupted(&'static str),
}

/// Paying for parts or being paid for them.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("{0} asks to be paid and this node has no payment channels")]
    CannotPay(zennet_chain::Address),
    #[error("this node takes no vouchers (from {0})")]
    TakesNoVouchers(zennet_chain::Address),
    #[error("the seeder has no chain address to be paid at")]
    NoAddress,
    #[error("no channel was prepared to pay {0}")]
    NotPrepared(zennet_chain::Address),
    #[error("the channel {channel} to {payee} is spent; the next transfer tops it up")]
    Spent {
        payee: zennet_chain::Address,
        channel: zennet_chain::Hash,
    },
    #[error("the chain will not open channel {0} (check the balance with `zennet wallet balance`)")]
    OpenFailed(zennet_chain::Hash),
    #[error(
        "channel {channel} was not mined within {secs} s; is the node synced and a miner reachable?"
    )]
    NotMined {
        channel: zennet_chain::Hash,
        secs: u64,
    },
    #[error("{0}")]
    Pay(#[from] zennet_pay::PayError),
}

impl From<zennet_pay::PayError> for FsError {
    fn from(e: zennet_pay::PayError) -> FsError {
        FsError::Payment(PaymentError::Pay(e))
    }
}
