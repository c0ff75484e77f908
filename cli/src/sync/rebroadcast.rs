//! Our own transactions are gossiped again until they are mined.
//!
//! Gossip is best effort: a publish can find no peer yet, a busy
//! connection's queue can drop it, and a peer may have refused it on an
//! older view of the chain. A node that sent a transaction once and then
//! waited for it would wait forever (a channel settle that never reaches a
//! miner leaves the deposit locked until expiry), so, like Bitcoin Core's
//! wallet and geth, the node publishes its own pending transactions again
//! every [`EVERY`] until they leave the mempool, lowest nonce first (a
//! peer refuses a nonce beyond the next it expects, so one lost in order
//! would otherwise strand every later one). Peers that already hold
//! one ignore the repeat (`Verdict::Ignore`, no penalty), and gossipsub
//! gives each publish a fresh message id, so a repeat is never deduplicated
//! away at the gossip layer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use zennet_chain::Hash;

/// How long a transaction of ours waits in the mempool before it is
/// published again.
pub const EVERY: Duration = Duration::from_secs(10);

/// Transactions submitted here, with when they were last published.
#[derive(Default)]
pub struct Rebroadcast {
    txs: HashMap<Hash, Pending>,
}

struct Pending {
    nonce: u64,
    bytes: Vec<u8>,
    published: Instant,
}

impl Rebroadcast {
    /// A transaction of ours was just published for the first time.
    pub fn published(&mut self, hash: Hash, nonce: u64, bytes: Vec<u8>, now: Instant) {
        self.txs.insert(
            hash,
            Pending {
                nonce,
                bytes,
                published: now,
            },
        );
    }

    /// The transactions to publish again now, by nonce. Those no longer
    /// `pending` (mined, replaced or dropped) are forgotten, so the book is
    /// never larger than our share of the mempool.
    pub fn due(&mut self, now: Instant, pending: impl Fn(&Hash) -> bool) -> Vec<Vec<u8>> {
        self.txs.retain(|hash, _| pending(hash));
        let mut due: Vec<&mut Pending> = self
            .txs
            .values_mut()
            .filter(|p| now.saturating_duration_since(p.published) >= EVERY)
            .collect();
        due.sort_by_key(|p| p.nonce);
        due.into_iter()
            .map(|p| {
                p.published = now;
                p.bytes.clone()
            })
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.txs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> Hash {
        Hash([n; 32])
    }

    #[test]
    fn a_pending_transaction_is_published_again_every_interval_until_mined() {
        let t0 = Instant::now();
        let mut book = Rebroadcast::default();
        book.published(hash(1), 1, vec![1], t0);
        book.published(hash(2), 2, vec![2], t0 + Duration::from_secs(5));
        let all = |_: &Hash| true;
        assert!(book.due(t0 + Duration::from_secs(9), all).is_empty());
        assert_eq!(book.due(t0 + EVERY, all), vec![vec![1]]);
        // Each transaction keeps its own clock.
        assert_eq!(book.due(t0 + Duration::from_secs(15), all), vec![vec![2]]);
        assert!(book.due(t0 + Duration::from_secs(19), all).is_empty());
        assert_eq!(book.due(t0 + Duration::from_secs(20), all), vec![vec![1]]);
        // Mined: forgotten, never published again.
        let only_2 = |h: &Hash| *h == hash(2);
        assert_eq!(
            book.due(t0 + Duration::from_secs(25), only_2),
            vec![vec![2]]
        );
        assert_eq!(book.len(), 1);
        assert!(book.due(t0 + Duration::from_secs(60), |_| false).is_empty());
        assert_eq!(book.len(), 0);
    }

    #[test]
    fn due_transactions_go_out_lowest_nonce_first() {
        let t0 = Instant::now();
        let mut book = Rebroadcast::default();
        for n in [7u8, 3, 9, 1, 5] {
            book.published(hash(n), u64::from(n), vec![n], t0);
        }
        let due = book.due(t0 + EVERY, |_| true);
        assert_eq!(due, vec![vec![1], vec![3], vec![5], vec![7], vec![9]]);
    }
}
