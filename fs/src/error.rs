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
    #[error("a download of {0} is already running")]
    Busy(FileId),
    #[error("{0} downloads are running and pay through these channels; settle when they end")]
    DownloadsRunning(usize),
    #[error("{0}")]
    Invalid(String),
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
