//! Who gets through the publisher's SSH server: only a key that an
//! on-chain acceptance of one of this publisher's tasks names.

use std::sync::Arc;

use zennet_chain::{Address, Hash, Ledger};
use zennet_tunnel::Gate;

/// Admits keys that an acceptance of one of `me`'s tasks names.
pub struct ChainGate {
    pub ledger: Arc<dyn Ledger>,
    pub me: Address,
}

impl Gate for ChainGate {
    fn admits(&self, key: &Hash) -> bool {
        // Cancelled tasks too: a node under contract must be able to come
        // back to report its last usage and be paid for it.
        self.ledger.tasks().iter().any(|t| {
            t.publisher == self.me && t.acceptances.iter().any(|a| a.ssh_key_fingerprint == *key)
        })
    }
}
