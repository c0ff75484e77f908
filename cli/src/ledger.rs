//! The node's chain seen as a [`Ledger`]: what the publisher, the provider
//! and the payment channels use to read the state and submit transactions
//! signed with the home's key.

use std::sync::{Arc, Mutex};

use zennet_chain::task::TaskRecord;
use zennet_chain::{
    Address, Amount, ChainError, Channel, Genesis, Hash, Ledger, SecretKey, StorageRecord,
    Transaction, TxBody,
};

use crate::node::Node;

/// The node's chain seen as a [`Ledger`], signing with the home's key.
pub struct NodeLedger {
    node: Arc<Node>,
    pub(crate) key: SecretKey,
    /// Nonce choice and admission happen as one step.
    submit_lock: Mutex<()>,
}

impl NodeLedger {
    pub fn new(node: Arc<Node>, key: SecretKey) -> Arc<NodeLedger> {
        Arc::new(NodeLedger {
            node,
            key,
            submit_lock: Mutex::new(()),
        })
    }
}

impl Ledger for NodeLedger {
    fn genesis(&self) -> Genesis {
        self.node.chain().genesis().clone()
    }
    fn chain_id(&self) -> u64 {
        self.node.chain().genesis().chain_id
    }
    fn genesis_hash(&self) -> Hash {
        self.node.chain().genesis_hash()
    }
    fn address(&self) -> Address {
        self.key.address()
    }
    fn height(&self) -> u64 {
        self.node.chain().tip().header.height
    }
    fn tip(&self) -> tokio::sync::watch::Receiver<u64> {
        self.node.tip()
    }
    fn balance(&self, address: &Address) -> Amount {
        self.node.chain().account(address).balance
    }
    fn task(&self, id: &Hash) -> Option<TaskRecord> {
        self.node.chain().task(id)
    }
    fn tasks(&self) -> Vec<TaskRecord> {
        self.node.chain().state().tasks().cloned().collect()
    }
    fn channel(&self, id: &Hash) -> Option<Channel> {
        self.node.chain().channel(id)
    }
    fn storage(&self, id: &Hash) -> Option<StorageRecord> {
        self.node.chain().storage(id)
    }
    fn storages(&self) -> Vec<StorageRecord> {
        self.node.chain().state().storages().cloned().collect()
    }
    fn block_hash(&self, height: u64) -> Option<Hash> {
        self.node
            .chain()
            .store()
            .canonical_hash(height)
            .ok()
            .flatten()
    }
    fn submit(&self, body: TxBody) -> Result<Hash, ChainError> {
        let _guard = self.submit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let tx = {
            let chain = self.node.chain();
            Transaction {
                chain_id: chain.genesis().chain_id,
                nonce: chain.next_nonce(&self.key.address()),
                fee_per_byte: chain.genesis().economics.min_fee_per_byte,
                body,
            }
            .sign(&self.key, &chain.genesis_hash())
        };
        self.node.submit_tx(tx)
    }
    fn included_at(&self, tx: &Hash) -> Option<u64> {
        self.node
            .chain()
            .store()
            .tx_location(tx)
            .ok()
            .flatten()
            .map(|l| l.height)
    }
    fn pending(&self, tx: &Hash) -> bool {
        self.node.chain().mempool().contains(tx)
    }
}
