//! The Zennet ledger.
//!
//! Ethereum-style secp256k1 accounts; borsh-encoded transactions and blocks
//! signed over a domain that names the chain (id and genesis hash);
//! Ethash-sealed blocks with most-total-difficulty fork choice inside a reorg
//! horizon; a state of accounts, mined identities, task announcements,
//! storage tasks and payment channels committed to by a sparse Merkle trie
//! root in every header; a mempool that follows the tip; a SQLite store
//! that imports each block in one SQL transaction; and verifiable state
//! snapshots for fast sync, audits and offline seeding.
//!
//! # Map
//! * [`chain`] — [`Chain`]: import, fork choice, reorgs, pruning and side
//!   blocks behind the horizon, templates, queries.
//! * [`execute`] — everything a transaction may do to the state.
//! * [`tx`], [`task`], [`channel`], [`identity`] — what transactions carry;
//!   [`storage`] — storage tasks: paid replicas of a file (announce, accept,
//!   release, cancel).
//! * [`state`] — the state map, overlays and pending reorg views.
//! * [`trie`] — the hexary sparse Merkle tree: O(log n) roots, summaries.
//! * [`snapshot`] — manifests and chunks (checked one by one), the snapshot
//!   file, `verify`.
//! * [`store`] — the SQLite schema, migrations, reads for snapshots.
//! * [`mempool`] — pending transactions, revalidated after every tip change.
//! * [`seal`], [`pow`] — Ethash seals and difficulty arithmetic.
//! * [`genesis`] — chain parameters (reorg horizon, snapshot interval…).
//! * [`crypto`], [`codec`] — keys, hashes, signing domain, canonical encoding.
//! * [`ledger`] — the seam market services use to read and submit.
//! * `testkit` (feature) — cheap genesis, one-call mining, an activity generator.
//!
//! Parallelism: signatures of a block's transactions and the seals of a
//! header chain are checked on all cores with `rayon` (a well-kept
//! work-stealing pool; scoped threads would need chunking by hand).

pub mod block;
pub mod chain;
pub mod channel;
pub mod codec;
pub mod crypto;
pub mod error;
pub mod execute;
pub mod genesis;
pub mod identity;
pub mod ledger;
pub mod mempool;
pub mod pow;
pub mod seal;
pub mod snapshot;
pub mod state;
pub mod storage;
pub mod store;
pub mod task;
pub mod trie;
pub mod tx;

pub use block::{Block, Header, StoredBlock, StoredTx};
pub use chain::{Chain, ImportOutcome, TxInfo};
pub use channel::{Channel, SignedVoucher, Voucher};
pub use crypto::{Address, FileHash, Hash, PublicKey, SecretKey, Signature};
pub use error::{BlockError, ChainError, MempoolError, TxError};
pub use genesis::Genesis;
pub use identity::{Identity, Role};
pub use ledger::Ledger;
pub use storage::{StorageAcceptance, StorageAnnouncement, StorageRecord, StorageReplica};
pub use task::{TaskAcceptance, TaskAnnouncement, TaskRecord};
pub use tx::{Amount, SignedTx, Transaction, TxBody, VerifiedTx};

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
