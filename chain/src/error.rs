//! Errors of the chain crate. Every message names what was wrong and, where
//! there is one, what to do about it.

use crate::crypto::{Address, Hash};
use crate::tx::Amount;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("malformed input: {0}")]
    Malformed(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("transaction rejected: {0}")]
    Tx(#[from] TxError),
    #[error("block rejected: {0}")]
    Block(#[from] BlockError),
    #[error("mempool rejected the transaction: {0}")]
    Mempool(#[from] MempoolError),
    #[error("genesis: {0}")]
    Genesis(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("chain database: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("chain database is inconsistent: {0}")]
    Corrupt(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

/// Why a transaction is invalid against the current state. Each rule of the
/// ledger has its own variant so callers and tests can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("chain id {got} does not match this chain ({expected})")]
    WrongChain { expected: u64, got: u64 },
    #[error("transaction is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("nonce {got} is wrong for {sender}: expected {expected}")]
    BadNonce {
        sender: Address,
        expected: u64,
        got: u64,
    },
    #[error("fee {got} per byte is below the minimum {min}")]
    FeeTooLow { min: u64, got: u64 },
    #[error("insufficient balance in {account}: has {balance}, needs {needed}")]
    InsufficientBalance {
        account: Address,
        balance: Amount,
        needed: Amount,
    },
    #[error("amount must be greater than zero")]
    ZeroAmount,
    #[error("amount overflows")]
    Overflow,
    #[error("identity proof of work does not meet the {role} difficulty {difficulty}")]
    IdentityPow { role: &'static str, difficulty: u64 },
    #[error("identity public key does not belong to the sender {0}")]
    IdentityKeyMismatch(Address),
    #[error("{0} already has a {1} identity")]
    IdentityExists(Address, &'static str),
    #[error("{0} has no registered {1} identity (run `zennet id mine --role {1}`)")]
    NoIdentity(Address, &'static str),
    #[error("announcement is {size} bytes; the limit is {max}")]
    AnnouncementTooLarge { size: usize, max: usize },
    #[error("announcement invalid: {0}")]
    BadAnnouncement(String),
    #[error("task proof of work does not meet difficulty {0}")]
    TaskPow(u64),
    #[error("no open task {0}")]
    UnknownTask(Hash),
    #[error("task {0} was cancelled")]
    TaskCancelled(Hash),
    #[error("task {task} stopped accepting at height {expired_at}")]
    TaskExpired { task: Hash, expired_at: u64 },
    #[error("task {0} already has its maximum number of instances")]
    TaskFull(Hash),
    #[error("node {node} already accepted task {task}")]
    AlreadyAccepted { task: Hash, node: Address },
    #[error("acceptance invalid: {0}")]
    BadAcceptance(String),
    #[error("acceptance proof of work does not meet the task's difficulty {0}")]
    AcceptancePow(u64),
    #[error("only {expected} may do this (sender was {got})")]
    NotAllowed { expected: Address, got: Address },
    #[error("no open channel {0}")]
    UnknownChannel(Hash),
    #[error("channel invalid: {0}")]
    BadChannel(String),
    #[error("voucher invalid: {0}")]
    BadVoucher(String),
    #[error("channel {channel} is past its {what} height {height}")]
    ChannelExpired {
        channel: Hash,
        what: &'static str,
        height: u64,
    },
    #[error("channel {channel} cannot be reclaimed before height {height}")]
    ReclaimTooEarly { channel: Hash, height: u64 },
    #[error("channel {0} is already settling")]
    AlreadySettling(Hash),
    #[error("storage announcement invalid: {0}")]
    BadStorage(String),
    #[error("storage announcement proof of work does not meet difficulty {0}")]
    StoragePow(u64),
    #[error("no storage task {0}")]
    UnknownStorage(Hash),
    #[error("storage task {0} was cancelled")]
    StorageCancelled(Hash),
    #[error("storage task {task} stopped accepting at height {closed_at}")]
    StorageClosed { task: Hash, closed_at: u64 },
    #[error("storage task {0} already has all the replicas it asked for")]
    StorageFull(Hash),
    #[error("storage task {task} has taken its {max} acceptances; announce it again")]
    StorageExhausted { task: Hash, max: usize },
    #[error("the owner of storage task {0} cannot hold its own replica")]
    OwnStorage(Hash),
    #[error("node {node} already took storage task {task} (a released node may not return)")]
    AlreadyReplica { task: Hash, node: Address },
    #[error("storage acceptance proof of work does not meet the task's difficulty {0}")]
    StorageAcceptancePow(u64),
    #[error("{node} holds no replica of storage task {task}")]
    NotAReplica { task: Hash, node: Address },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("parent {0} is unknown")]
    UnknownParent(Hash),
    #[error("block {0} is already known to be invalid")]
    KnownInvalid(Hash),
    #[error("height {got} does not follow its parent (expected {expected})")]
    BadHeight { expected: u64, got: u64 },
    #[error("timestamp {got} is not after its parent's {parent}")]
    TimestampNotAfterParent { parent: u64, got: u64 },
    #[error("timestamp {got} is too far in the future (now {now})")]
    TimestampInFuture { now: u64, got: u64 },
    #[error("difficulty {got} is wrong; expected {expected}")]
    BadDifficulty { expected: u64, got: u64 },
    #[error("extra data is {0} bytes; the limit is 32")]
    ExtraTooLong(usize),
    #[error("block is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("transaction root does not match the header")]
    BadTxRoot,
    #[error("state root does not match: header {header}, computed {computed}")]
    BadStateRoot { header: Hash, computed: Hash },
    #[error("seal: {0}")]
    BadSeal(String),
    #[error("transaction {index} ({hash}): {reason}")]
    BadTx {
        index: usize,
        hash: Hash,
        reason: String,
    },
    #[error("transaction {0} appears twice")]
    DuplicateTx(Hash),
    #[error("block has pruned transactions and cannot be executed")]
    Pruned,
    #[error(
        "fork from height {fork_height} is deeper than the reorg horizon (oldest fork point allowed: {floor})"
    )]
    ForkTooDeep { fork_height: u64, floor: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    #[error("transaction {0} is already pending")]
    Duplicate(Hash),
    #[error("transaction {0} is already in the chain")]
    AlreadyMined(Hash),
    #[error("nonce {got} leaves a gap for {sender}: the next nonce is {next}")]
    NonceGap {
        sender: Address,
        next: u64,
        got: u64,
    },
    #[error("mempool is full and the fee is not higher than the cheapest pending transaction")]
    Full,
    #[error("sender {0} has too many pending transactions")]
    SenderLimit(Address),
    #[error("{0}")]
    Invalid(TxError),
}

pub type Result<T, E = ChainError> = std::result::Result<T, E>;
