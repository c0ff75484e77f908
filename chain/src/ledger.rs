//! What a market participant (publisher or provider) needs from its node:
//! read the state at the tip, hear of each new tip, and submit
//! transactions signed with the node's key. The node runtime implements it
//! over its chain; the publisher's payer and the provider's payee only see
//! this trait.

use crate::channel::Channel;
use crate::crypto::{Address, Hash};
use crate::error::ChainError;
use crate::genesis::Genesis;
use crate::storage::StorageRecord;
use crate::task::TaskRecord;
use crate::tx::{Amount, TxBody};

pub trait Ledger: Send + Sync + 'static {
    fn genesis(&self) -> Genesis;
    fn chain_id(&self) -> u64 {
        self.genesis().chain_id
    }
    /// The genesis hash every signature on this chain is bound to (pass it
    /// to `Transaction::sign`, `Voucher::sign` and `SignedVoucher::signer`).
    fn genesis_hash(&self) -> Hash {
        self.genesis().hash()
    }
    /// The account this node signs with.
    fn address(&self) -> Address;
    fn height(&self) -> u64;
    /// The tip's height as a watch: `changed()` wakes once the tip moves,
    /// so services react to chain events instead of polling.
    fn tip(&self) -> tokio::sync::watch::Receiver<u64>;
    fn balance(&self, address: &Address) -> Amount;
    fn task(&self, id: &Hash) -> Option<TaskRecord>;
    /// Every task still in the state (not yet pruned).
    fn tasks(&self) -> Vec<TaskRecord>;
    fn channel(&self, id: &Hash) -> Option<Channel>;
    /// A storage task still in the state. (Ledgers of services that use
    /// no storage tasks need not implement the storage methods.)
    fn storage(&self, _id: &Hash) -> Option<StorageRecord> {
        None
    }
    /// Every storage task still in the state (not yet pruned).
    fn storages(&self) -> Vec<StorageRecord> {
        Vec::new()
    }
    /// The hash of the canonical block at `height` (challenges of the
    /// file network's proofs of storage are drawn from it).
    fn block_hash(&self, _height: u64) -> Option<Hash> {
        None
    }
    /// Signs `body` at this account's next nonce, admits it to the mempool
    /// and gossips it; returns the transaction hash.
    fn submit(&self, body: TxBody) -> Result<Hash, ChainError>;
    /// Height of the canonical block that holds `tx`, if any.
    fn included_at(&self, tx: &Hash) -> Option<u64>;
    /// Whether `tx` is still waiting in this node's mempool.
    fn pending(&self, tx: &Hash) -> bool;
}
