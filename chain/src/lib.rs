//! The Zennet ledger.
//!
//! Ethereum-style secp256k1 accounts; borsh-encoded transactions and blocks;
//! Ethash-sealed blocks with most-total-difficulty fork choice; a state of
//! accounts, mined identities, task announcements and payment channels
//! committed to by a Merkle root in every header; a mempool; and a SQLite
//! store that imports each block in one SQL transaction.
//!
//! The entry point is [`Chain`]. Everything a transaction may do is in
//! [`execute`]; what it may carry is in [`tx`], [`task`] and [`channel`].

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
pub mod store;
pub mod task;
pub mod trie;
pub mod tx;

pub use block::{Block, Header, StoredBlock, StoredTx};
pub use chain::{Chain, ImportOutcome, TxInfo};
pub use channel::{Channel, SignedVoucher, Voucher};
pub use crypto::{Address, Hash, PublicKey, SecretKey, Signature};
pub use error::{BlockError, ChainError, MempoolError, TxError};
pub use genesis::Genesis;
pub use identity::{Identity, Role};
pub use ledger::Ledger;
pub use task::{TaskAcceptance, TaskAnnouncement, TaskRecord};
pub use tx::{Amount, SignedTx, Transaction, TxBody, VerifiedTx};

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
